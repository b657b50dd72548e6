//! Image manifests (SmartOS IMGAPI manifest v2). The store that holds them is cowstore's;
//! this is only their wire shape.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
}

impl ImageType {
    /// The payload name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::ZoneDataset => "zone-dataset",
            ImageType::LxDataset => "lx-dataset",
            ImageType::Zvol => "zvol",
        }
    }

    /// Whether a guest of `brand` can boot from an image of this type.
    pub fn suits(self, brand: Brand) -> bool {
        match brand {
            Brand::Joyent | Brand::JoyentMinimal => self == ImageType::ZoneDataset,
            Brand::Lx => matches!(self, ImageType::LxDataset | ImageType::ZoneDataset),
            Brand::Kvm | Brand::Bhyve => self == ImageType::Zvol,
        }
    }
}

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageFile {
    /// SHA-1 of the file as stored.
    pub sha1: String,
    /// Size in bytes as stored.
    pub size: u64,
    /// none, gzip, xz or zstd.
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
