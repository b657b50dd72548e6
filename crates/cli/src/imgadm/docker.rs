//! `imgadm import oci-archive:FILE[:REF]` and `docker-archive:FILE[:REF]`: an OCI image
//! from a local archive (skopeo's spellings), installed as SmartOS's docker images are, one
//! image of type docker per layer, each with the layer below as its origin.
//!
//! Identity: a layer's image uuid is derived from its chain id (Docker's: the diff_ids of it
//! and every layer below), so the same base arriving in two images, or in both archive
//! formats, is one image, installed once and shared (a btrfs snapshot per layer above it).
//! The top layer's uuid also takes in the image's config digest: two images that differ
//! only in their config are two images. vmmd checks every layer against both digests as it
//! streams (the stored blob's and the uncompressed tar's) and refuses the layer on a
//! mismatch, so a uuid can never name other content than its chain says.

use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::oci::{self, ArchiveKind, OciImage};
use super::{installed, with_progress};
use crate::{CmdResult, Failure, client};

/// `sha256:<hex>` of `data`.
fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Docker's chain ids: the first layer's is its diff_id; each next one is
/// `sha256(chain below + " " + diff_id)`.
pub(super) fn chain_ids(diff_ids: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => (*d).to_string(),
            Some(below) => sha256(format!("{below} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// A uuid named by `parts` (UUID version 8: hull's own derivation, a sha256 of them).
fn derived_uuid(parts: &[&str]) -> Uuid {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The uuids of an image's layer images, base first.
pub(super) fn layer_uuids(img: &OciImage) -> Vec<Uuid> {
    let diff_ids: Vec<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
    let chains = chain_ids(&diff_ids);
    let last = chains.len().saturating_sub(1);
    chains
        .iter()
        .enumerate()
        .map(|(i, c)| match i == last {
            true => derived_uuid(&["hull docker image", c, &img.config_digest]),
            false => derived_uuid(&["hull docker layer", c]),
        })
        .collect()
}

/// The name an image is shown by: its repository's last part, or its config's digest.
fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// The manifest of layer `i` of `img` (uuid `uuids[i]`).
pub(super) fn layer_manifest(img: &OciImage, uuids: &[Uuid], i: usize) -> Value {
    let layer = &img.layers[i];
    let top = i + 1 == img.layers.len();
    let diff_ids: Vec<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
    let chain = chain_ids(&diff_ids).swap_remove(i);
    let mut tags = json!({
        "docker:id": chain,
        "docker:architecture": "amd64",
    });
    let (name, version) = if top {
        if let Some(repo) = &img.repo {
            tags["docker:repo"] = json!(repo);
        }
        if let Some(tag) = &img.tag {
            tags[format!("docker:tag:{tag}")] = json!(true);
        }
        tags["docker:digest"] = json!(img.manifest_digest);
        tags["docker:config_digest"] = json!(img.config_digest);
        tags["docker:config"] = img.config.get("config").cloned().unwrap_or(json!({}));
        (
            img.repo
                .clone()
                .unwrap_or_else(|| format!("docker-{}", short(&img.config_digest))),
            img.tag
                .clone()
                .unwrap_or_else(|| short(&img.manifest_digest)),
        )
    } else {
        ("docker-layer".to_string(), short(&chain))
    };
    let mut m = json!({
        "v": 2,
        "uuid": uuids[i],
        "name": name,
        "version": version,
        "type": "docker",
        "os": "linux",
        "description": format!("layer {} of {}: {}", i + 1, img.layers.len(), layer.diff_id),
        "files": [{
            "size": layer.size,
            "compression": layer.compression,
            "digest": layer.digest,
            "uncompressedDigest": layer.diff_id,
        }],
        "requirements": {"brand": "lx"},
        "tags": tags,
    });
    if i > 0 {
        m["origin"] = json!(uuids[i - 1]);
    }
    if top && let Some(created) = img.config.get("created").and_then(Value::as_str) {
        m["published_at"] = json!(created);
    }
    m
}

/// Imports the image `arg` names (`oci-archive:FILE[:REF]`, `docker-archive:FILE[:REF]`):
/// the layers not installed yet, base first; then reports the top one as any import.
pub(super) fn import(
    socket: Option<&Path>,
    kind: ArchiveKind,
    file: &Path,
    reference: Option<&str>,
    json: bool,
    quiet: bool,
) -> CmdResult {
    let img = oci::read_archive(file, kind, reference).map_err(Failure::new)?;
    if img.layers.is_empty() {
        return Err(Failure::new(format!(
            "{}: the image has no layers",
            file.display()
        )));
    }
    let c = client(socket)?;
    let uuids = layer_uuids(&img);
    let top = uuids.len() - 1;
    for (i, layer) in img.layers.iter().enumerate() {
        if i < top && c.get_image(uuids[i]).is_ok() {
            continue;
        }
        let manifest = layer_manifest(&img, &uuids, i);
        let what = format!("Importing layer {}/{}", i + 1, img.layers.len());
        let m = with_progress(&what, quiet || json, |progress| {
            c.install_image_part(&manifest, file, layer.offset, Some(layer.size), progress)
        });
        if i == top {
            return installed(&c, m, Some(uuids[i]), json);
        }
        match m {
            Ok(_) => {}
            // Installed by someone else meanwhile: as good.
            Err(e) if e.api_body().is_some_and(|b| b.code == "AlreadyInState") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_are_dockers() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chains = chain_ids(&[&a, &b]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], sha256(format!("{a} {b}").as_bytes()));
    }

    fn image(layers: &[&str], config_digest: &str) -> OciImage {
        OciImage {
            repo: Some("busybox".into()),
            tag: Some("1.36".into()),
            manifest_digest: format!("sha256:{}", "c".repeat(64)),
            config_digest: config_digest.to_string(),
            config: json!({"created": "2026-12-01T00:00:00Z",
                "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}}),
            layers: layers
                .iter()
                .map(|d| oci::Layer {
                    digest: d.to_string(),
                    diff_id: d.to_string(),
                    compression: "none",
                    size: 10,
                    offset: 512,
                })
                .collect(),
        }
    }

    #[test]
    fn a_shared_base_is_one_image_and_the_top_takes_the_config_in() {
        let base = format!("sha256:{}", "1".repeat(64));
        let other = format!("sha256:{}", "2".repeat(64));
        let cfg1 = format!("sha256:{}", "d".repeat(64));
        let cfg2 = format!("sha256:{}", "e".repeat(64));
        let one = layer_uuids(&image(&[&base, &other], &cfg1));
        let two = layer_uuids(&image(&[&base, &other], &cfg2));
        assert_eq!(one[0], two[0], "the shared base");
        assert_ne!(one[1], two[1], "two configs, two images");
        assert_eq!(one[1].get_version_num(), 8);
        let img = image(&[&base, &other], &cfg1);
        let m0 = layer_manifest(&img, &one, 0);
        let m1 = layer_manifest(&img, &one, 1);
        assert!(m0.get("origin").is_none());
        assert_eq!(m1["origin"], json!(one[0]));
        assert_eq!(m1["name"], "busybox");
        assert_eq!(m1["version"], "1.36");
        assert_eq!(m1["tags"]["docker:config"]["Cmd"], json!(["sh"]));
        assert_eq!(m1["tags"]["docker:tag:1.36"], json!(true));
        assert_eq!(m0["name"], "docker-layer");
        // Both are manifests vmmd takes.
        for m in [m0, m1] {
            let typed = hull_spec::validate_manifest(&m).expect("valid");
            assert_eq!(typed.image_type, hull_spec::ImageType::Docker);
        }
    }
}
