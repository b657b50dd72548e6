//! Docker (OCI) images as SmartOS's image store holds them: one image of type docker per
//! layer, each with the layer below as its origin (as Triton's IMGAPI does). What imgadm
//! sends for an archive and what vmmd installs from a registry are made here, so that a
//! layer has one identity whichever way it arrives.
//!
//! Identity: a layer's image uuid is derived from its chain id (Docker's: the diff_ids of it
//! and every layer below), so the same base arriving in two images, from an archive or a
//! registry, is one image, installed once and shared. The top layer's uuid also takes in the
//! image's config digest: two images that differ only in their config are two images. vmmd
//! checks every layer against both digests as it streams (the stored blob's and the
//! uncompressed tar's), so a uuid can never name other content than its chain says.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The largest JSON document (index, manifest, config) read from an archive or a registry.
pub const MAX_JSON: u64 = 4 << 20;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The annotation skopeo (and the OCI image layout) names an index entry by: a tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd names an index entry by: the full "repo:tag".
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 digest of `bytes`, as "sha256:<hex>".
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Whether `s` is exactly 64 lowercase hex digits.
pub fn is_hex64(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// `s`, cut to a length fit for a message (hostile strings can be megabytes long).
pub fn short(s: &str) -> String {
    const MAX: usize = 120;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The hex part of a "sha256:<64 lowercase hex>" digest.
pub fn digest_hex(digest: &str) -> Result<&str, String> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if is_hex64(hex.as_bytes()) => Ok(hex),
        Some(("sha256", _)) => Err(format!(
            "digest {:?} is not \"sha256:\" and 64 lowercase hex digits",
            short(digest)
        )),
        Some((algorithm, _)) => Err(format!(
            "digest {:?} uses {:?}; only sha256 is supported",
            short(digest),
            short(algorithm)
        )),
        None => Err(format!("{:?} is not a digest", short(digest))),
    }
}

/// An OCI content descriptor.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    pub platform: Option<Platform>,
    pub annotations: Option<HashMap<String, String>>,
}

impl Descriptor {
    /// The annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// Whether it has a platform, and that is linux/amd64 (any variant).
    pub fn is_linux_amd64(&self) -> bool {
        self.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    }

    /// How messages name it: its ref name, else its digest.
    pub fn describe(&self) -> String {
        let name = self
            .annotation(CONTAINERD_NAME)
            .or_else(|| self.annotation(REF_NAME))
            .map(short)
            .unwrap_or_else(|| short(&self.digest));
        match &self.platform {
            Some(p) => format!("{name} ({})", p.describe()),
            None => name,
        }
    }
}

/// An index entry's platform.
#[derive(Debug, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// "os/architecture[/variant]".
    pub fn describe(&self) -> String {
        let mut s = format!("{}/{}", short(&self.os), short(&self.architecture));
        if let Some(variant) = &self.variant {
            s.push('/');
            s.push_str(&short(variant));
        }
        s
    }
}

/// The platforms the entries of an index offer, for messages.
pub fn platforms(list: &[&Descriptor]) -> String {
    if list.is_empty() {
        return "nothing".to_owned();
    }
    let mut seen: Vec<String> = Vec::new();
    for d in list {
        let p = d
            .platform
            .as_ref()
            .map_or_else(|| "(no platform)".to_owned(), Platform::describe);
        if !seen.contains(&p) {
            seen.push(p);
        }
    }
    seen.join(", ")
}

/// An image index (OCI) or manifest list (docker).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: Option<u64>,
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: Option<u64>,
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The compression of a layer media type; None when it is not a layer type we take.
pub fn layer_compression(media_type: &str) -> Option<&'static str> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some("none"),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some("gzip"),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some("zstd"),
        _ => None,
    }
}

/// Checks an image config: linux/amd64, a "layers" rootfs with one diff_id per layer.
/// Returns the diff_ids.
pub fn check_config(config: &Value, layers: usize) -> Result<Vec<String>, String> {
    if !config.is_object() {
        return Err("the config is not a JSON object".to_string());
    }
    // One field that must hold one value: refused naming what it holds instead.
    let must = |v: Option<&Value>, want: &str, what: &str| match v.and_then(Value::as_str) {
        Some(got) if got == want => Ok(()),
        got => Err(format!(
            "{what} is {:?}; only {want:?} is supported",
            short(got.unwrap_or("(none)"))
        )),
    };
    must(config.get("os"), "linux", "the image's os")?;
    must(
        config.get("architecture"),
        "amd64",
        "the image's architecture",
    )?;
    let rootfs = config.get("rootfs").ok_or("the config has no rootfs")?;
    must(rootfs.get("type"), "layers", "rootfs.type")?;
    let diff_ids = rootfs
        .get("diff_ids")
        .and_then(Value::as_array)
        .ok_or("the config has no rootfs.diff_ids list")?;
    if diff_ids.len() != layers {
        return Err(format!(
            "the config lists {} rootfs.diff_ids but the image has {layers} layers",
            diff_ids.len()
        ));
    }
    diff_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let id = id
                .as_str()
                .ok_or_else(|| format!("rootfs.diff_ids[{i}] is not a string"))?;
            digest_hex(id).map_err(|e| format!("rootfs.diff_ids[{i}]: {e}"))?;
            Ok(id.to_owned())
        })
        .collect()
}

/// Picks the linux/amd64 entry of an index (or manifest list): the baseline variant when
/// there are several; an index of one entry that names no platform is that entry (its
/// config says the platform). Returns its position and descriptor.
pub fn pick_platform(index: &Index) -> Result<(usize, &Descriptor), String> {
    let amd64: Vec<(usize, &Descriptor)> = index
        .manifests
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_linux_amd64())
        .collect();
    let baseline = amd64.iter().find(|(_, d)| {
        d.platform
            .as_ref()
            .is_some_and(|p| matches!(p.variant.as_deref(), None | Some("" | "v1")))
    });
    if let Some(&pick) = baseline.or(amd64.first()) {
        return Ok(pick);
    }
    if let [only] = index.manifests.as_slice()
        && only.platform.is_none()
    {
        return Ok((0, only));
    }
    let all: Vec<&Descriptor> = index.manifests.iter().collect();
    Err(format!(
        "the index holds no linux/amd64 image; it offers: {}",
        platforms(&all)
    ))
}

/// One layer of an image: its blob as stored and what it unpacks to.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// `sha256:<hex>` of the stored blob.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the config's rootfs.diff_ids entry).
    pub diff_id: String,
    /// `none`, `gzip` or `zstd`.
    pub compression: &'static str,
    /// The stored size.
    pub size: u64,
}

/// An image: its name, digests, config and layers (base first).
#[derive(Debug, Clone)]
pub struct DockerImage {
    /// The repository, when known (`127.0.0.1:5000/app`, `library/busybox`).
    pub repo: Option<String>,
    /// The tag, when known.
    pub tag: Option<String>,
    /// `sha256:<hex>` of the image manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config.
    pub config_digest: String,
    /// The config document (`config`: Cmd, Entrypoint, Env, WorkingDir, User...).
    pub config: Value,
    /// The layers, base first.
    pub layers: Vec<Layer>,
}

/// Docker's chain ids: the first layer's is its diff_id; each next one is
/// `sha256(chain below + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[&str]) -> Vec<String> {
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
pub fn layer_uuids(img: &DockerImage) -> Vec<Uuid> {
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

/// The first 12 hex digits of a digest (Docker's short id).
fn short_id(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// The manifest of layer `i` of `img` (uuid `uuids[i]`).
pub fn layer_manifest(img: &DockerImage, uuids: &[Uuid], i: usize) -> Value {
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
                .unwrap_or_else(|| format!("docker-{}", short_id(&img.config_digest))),
            img.tag
                .clone()
                .unwrap_or_else(|| short_id(&img.manifest_digest)),
        )
    } else {
        ("docker-layer".to_string(), short_id(&chain))
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

    fn image(layers: &[&str], config_digest: &str) -> DockerImage {
        DockerImage {
            repo: Some("busybox".into()),
            tag: Some("1.36".into()),
            manifest_digest: format!("sha256:{}", "c".repeat(64)),
            config_digest: config_digest.to_string(),
            config: json!({"created": "2026-12-01T00:00:00Z",
                "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}}),
            layers: layers
                .iter()
                .map(|d| Layer {
                    digest: d.to_string(),
                    diff_id: d.to_string(),
                    compression: "none",
                    size: 10,
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
            let typed = crate::validate_manifest(&m).expect("valid");
            assert_eq!(typed.image_type, crate::ImageType::Docker);
        }
    }
}
