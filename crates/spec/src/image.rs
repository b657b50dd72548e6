//! Image manifests (SmartOS IMGAPI manifest v2). The store that holds them is cowstore's;
//! this is only their wire shape.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validate::{ValidationReport, is_uuid};
use crate::vm::Brand;

/// What an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageType {
    /// A zone root tree (joyent, joyent-minimal).
    ZoneDataset,
    /// A Linux root tree for lx zones.
    LxDataset,
    /// A raw disk for microVMs.
    Zvol,
    /// One layer of an OCI (Docker) image, a tree on top of its origin's (SmartOS's docker
    /// images, as Triton's IMGAPI stores them).
    Docker,
}

impl ImageType {
    /// The payload name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::ZoneDataset => "zone-dataset",
            ImageType::LxDataset => "lx-dataset",
            ImageType::Zvol => "zvol",
            ImageType::Docker => "docker",
        }
    }

    /// Whether a guest of `brand` can boot from an image of this type.
    pub fn suits(self, brand: Brand) -> bool {
        match brand {
            Brand::Joyent | Brand::JoyentMinimal => self == ImageType::ZoneDataset,
            // SmartOS's lx takes lx-dataset images only; hull's zone images are Linux
            // userlands too (the bundled busybox), which an lx zone runs as well.
            Brand::Lx => matches!(
                self,
                ImageType::LxDataset | ImageType::ZoneDataset | ImageType::Docker
            ),
            Brand::Kvm | Brand::Bhyve => self == ImageType::Zvol,
        }
    }
}

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageFile {
    /// SHA-1 of the file as stored (a docker layer's may be absent: its digest names it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha1: String,
    /// `sha256:<hex>` of the file as stored (docker layers: the OCI blob digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `sha256:<hex>` of the layer's uncompressed tar (docker layers: its OCI diff_id).
    #[serde(
        default,
        rename = "uncompressedDigest",
        skip_serializing_if = "Option::is_none"
    )]
    pub uncompressed_digest: Option<String>,
    /// Size in bytes as stored.
    pub size: u64,
    /// none, gzip, xz, zstd or bzip2.
    pub compression: String,
}

/// An IMGAPI manifest, version 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageManifest {
    /// Manifest format version (2).
    pub v: u32,
    /// The image's uuid.
    pub uuid: Uuid,
    /// Owner uuid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Uuid>,
    /// Name.
    pub name: String,
    /// Version string.
    pub version: String,
    /// What the image holds.
    #[serde(rename = "type")]
    pub image_type: ImageType,
    /// Operating system (smartos, linux, ...).
    pub os: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The image's files.
    #[serde(default)]
    pub files: Vec<ImageFile>,
    /// Disk size in MiB (zvol images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u64>,
    /// When it was published (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    /// The image this one was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Uuid>,
    /// Requirements (brand, min_ram, ...), kept as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requirements: BTreeMap<String, serde_json::Value>,
    /// Tags, kept as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, serde_json::Value>,
    /// Other IMGAPI fields, kept as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The compressions image files may use.
pub const COMPRESSIONS: [&str; 5] = ["none", "gzip", "xz", "zstd", "bzip2"];

/// Validates an untrusted manifest, naming every missing or bad field (`files.0.sha1`) in a
/// SmartOS-shaped report, then returns the typed manifest.
pub fn validate_manifest(value: &serde_json::Value) -> Result<ImageManifest, ValidationReport> {
    use serde_json::Value;
    let mut r = ValidationReport::default();
    let Some(obj) = value.as_object() else {
        r.bad_value("manifest", "a manifest must be a JSON object");
        return Err(r);
    };
    for key in ["v", "uuid", "name", "version", "type", "os", "files"] {
        if !obj.contains_key(key) {
            r.missing(key, format!("the manifest has no {key}"));
        }
    }
    if let Some(v) = obj.get("v")
        && v.as_u64() != Some(2)
    {
        r.bad_value("v", "only manifest version 2 is supported");
    }
    if let Some(u) = obj.get("uuid")
        && !u.as_str().is_some_and(is_uuid)
    {
        r.bad_value("uuid", "uuid must be a lower-case UUID");
    }
    for key in ["name", "version", "os"] {
        if let Some(v) = obj.get(key) {
            let ok = v.as_str().is_some_and(|s| {
                !s.is_empty() && s.len() <= 512 && !s.chars().any(char::is_control)
            });
            if !ok {
                r.bad_value(
                    key,
                    format!("{key} must be a non-empty string of printable characters"),
                );
            }
        }
    }
    let image_type = obj.get("type").map(|t| {
        let parsed = t
            .as_str()
            .and_then(|s| serde_json::from_value::<ImageType>(Value::String(s.to_string())).ok());
        if parsed.is_none() {
            r.bad_value(
                "type",
                format!(
                    "image type {t} is not supported; hull installs zone-dataset, lx-dataset, zvol and docker"
                ),
            );
        }
        parsed
    });
    match obj.get("files") {
        Some(Value::Array(files)) if files.len() == 1 => {
            let f = &files[0];
            let docker = matches!(image_type, Some(Some(ImageType::Docker)));
            let sha_ok = match f.get("sha1") {
                // A docker layer is named by its digest; a sha1 is optional there.
                None => docker,
                Some(v) => v
                    .as_str()
                    .is_some_and(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())),
            };
            if !sha_ok {
                r.bad_value("files.0.sha1", "files.0.sha1 must be 40 hex digits");
            }
            for key in ["digest", "uncompressedDigest"] {
                match f.get(key) {
                    None if !docker => {}
                    None => r.missing(
                        format!("files.0.{key}"),
                        format!("a docker layer needs files.0.{key} (sha256:<64 hex digits>)"),
                    ),
                    Some(v) if v.as_str().is_some_and(is_sha256_digest) => {}
                    Some(_) => r.bad_value(
                        format!("files.0.{key}"),
                        format!("files.0.{key} must be sha256:<64 lower-case hex digits>"),
                    ),
                }
            }
            if docker
                && !f
                    .get("compression")
                    .and_then(Value::as_str)
                    .is_some_and(|c| ["none", "gzip", "zstd"].contains(&c))
            {
                r.bad_value(
                    "files.0.compression",
                    "a docker layer's files.0.compression must be none, gzip or zstd",
                );
            }
            if !f.get("size").is_some_and(Value::is_u64) {
                r.bad_value("files.0.size", "files.0.size must be a byte count");
            }
            let comp_ok = f
                .get("compression")
                .and_then(Value::as_str)
                .is_some_and(|c| COMPRESSIONS.contains(&c));
            if !comp_ok {
                r.bad_value(
                    "files.0.compression",
                    "files.0.compression must be none, gzip, xz, zstd or bzip2",
                );
            }
        }
        Some(_) => r.bad_value("files", "files must list exactly one file"),
        None => {}
    }
    if let Some(Some(ImageType::Zvol)) = image_type {
        match obj.get("image_size").and_then(Value::as_u64) {
            Some(n) if n > 0 => {}
            Some(_) | None if obj.contains_key("image_size") => {
                r.bad_value("image_size", "image_size must be the disk size in MiB")
            }
            _ => r.missing("image_size", "a zvol image needs image_size (MiB)"),
        }
    }
    if let Some(hull) = obj.get("hull") {
        check_hull(&mut r, hull);
    }
    if !r.is_empty() {
        return Err(r);
    }
    serde_json::from_value(value.clone()).map_err(|e| {
        let mut r = ValidationReport::default();
        r.bad_value(
            "manifest",
            format!("the manifest does not match IMGAPI v2: {e}"),
        );
        r
    })
}

/// Whether `s` is an OCI sha256 digest: `sha256:` and 64 lower-case hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// hull's manifest extension for microVM disks: files inside the disk to boot from.
fn check_hull(r: &mut ValidationReport, hull: &serde_json::Value) {
    let Some(h) = hull.as_object() else {
        r.bad_value("hull", "hull must be an object (kernel, initrd, cmdline)");
        return;
    };
    for (k, v) in h {
        let p = format!("hull.{k}");
        match k.as_str() {
            "kernel" | "initrd" => {
                if !v
                    .as_str()
                    .is_some_and(|s| s.starts_with('/') && s.len() < 256)
                {
                    r.bad_value(
                        p,
                        format!("hull.{k} must be an absolute path inside the disk"),
                    );
                }
            }
            "cmdline" => {
                let ok = v
                    .as_str()
                    .is_some_and(|c| c.len() < 2048 && !c.chars().any(char::is_control));
                if !ok {
                    r.bad_value(p, "hull.cmdline must be a kernel command line");
                }
            }
            other => r.bad_property(p, format!("unknown hull manifest property {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> serde_json::Value {
        json!({"v": 2, "uuid": "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01", "name": "busybox",
            "version": "1.36.1", "type": "zone-dataset", "os": "linux",
            "files": [{"sha1": "a".repeat(40), "size": 123, "compression": "gzip"}],
            "homepage": "https://example.invalid", "requirements": {"brand": "joyent"}})
    }

    #[test]
    fn a_good_manifest_keeps_unknown_imgapi_fields() {
        let m = validate_manifest(&good()).expect("valid");
        assert_eq!(m.image_type, ImageType::ZoneDataset);
        assert!(m.extra.contains_key("homepage"));
    }

    #[test]
    fn docker_layers_are_named_by_their_digests() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let layer = |file: serde_json::Value| {
            json!({"v": 2, "uuid": "5f0b6f3c-4a0e-8e2b-9c41-2d9a0e1f3b7a", "name": "busybox",
                "version": "latest", "type": "docker", "os": "linux", "files": [file]})
        };
        let m = validate_manifest(&layer(json!({"size": 10, "compression": "gzip",
            "digest": d, "uncompressedDigest": d})))
        .expect("valid");
        assert_eq!(m.image_type, ImageType::Docker);
        assert_eq!(m.files[0].digest.as_deref(), Some(d.as_str()));
        assert!(m.image_type.suits(Brand::Lx) && !m.image_type.suits(Brand::Joyent));
        let r = validate_manifest(&layer(json!({"size": 10, "compression": "xz",
            "digest": "sha256:AB", "sha1": "x"})))
        .expect_err("invalid");
        let mut bad = r.bad_values.clone();
        bad.sort();
        assert_eq!(
            bad,
            ["files.0.compression", "files.0.digest", "files.0.sha1"]
        );
        assert_eq!(r.missing_properties, ["files.0.uncompressedDigest"]);
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let r = validate_manifest(&json!({"v": 1, "uuid": "X", "type": "lx-docker",
            "files": [{"sha1": "zz", "size": -1, "compression": "lz4"}]}))
        .expect_err("invalid");
        let mut bad = r.bad_values.clone();
        bad.sort();
        assert_eq!(
            bad,
            [
                "files.0.compression",
                "files.0.sha1",
                "files.0.size",
                "type",
                "uuid",
                "v"
            ]
        );
        let mut missing = r.missing_properties.clone();
        missing.sort();
        assert_eq!(missing, ["name", "os", "version"]);
        let mut zvol = good();
        zvol["type"] = json!("zvol");
        let r = validate_manifest(&zvol).expect_err("zvol without size");
        assert_eq!(r.missing_properties, ["image_size"]);
        zvol["image_size"] = json!(10240);
        assert!(validate_manifest(&zvol).is_ok());
        zvol["hull"] = json!({"kernel": "boot/vmlinuz", "cmdline": "console=ttyS0", "bios": true});
        let r = validate_manifest(&zvol).expect_err("bad hull section");
        assert_eq!(
            (r.bad_values.clone(), r.bad_properties.clone()),
            (
                vec!["hull.kernel".to_string()],
                vec!["hull.bios".to_string()]
            )
        );
        zvol["hull"] = json!({"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img"});
        assert!(validate_manifest(&zvol).is_ok());
    }
}
