//! The host facts guest validation consults: installed image manifests
//! (`<data root>/images/<uuid>/manifest.json`, written by the image store) and nic tags
//! (`<data root>/config/nictags.json`, written crash-safe here).

use std::fs;
use std::path::{Path, PathBuf};

use hull_spec::api::ImageSource;
use hull_spec::{ImageManifest, NicTag};
use uuid::Uuid;

use super::store::{StoreError, ensure_private_dir, write_atomic};

/// Failures reading or writing the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path} is not a valid {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Installed images, read from the image store's directory.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
}

impl Images {
    /// The image directory under `data_root`.
    pub fn new(data_root: &Path) -> Images {
        Images {
            dir: data_root.join("images"),
        }
    }

    /// The manifest of an installed image, if it is installed.
    pub fn get(&self, uuid: Uuid) -> Result<Option<ImageManifest>, CatalogError> {
        let path = self.dir.join(uuid.to_string()).join("manifest.json");
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| CatalogError::Parse {
                        path,
                        what: "image manifest",
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CatalogError::Read { path, source }),
        }
    }

    /// Every installed image, ordered by name then version.
    pub fn list(&self) -> Result<Vec<ImageManifest>, CatalogError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CatalogError::Read {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(uuid) = name.to_str().and_then(|s| Uuid::parse_str(s).ok()) else {
                continue;
            };
            if let Some(m) = self.get(uuid)? {
                out.push(m);
            }
        }
        out.sort_by(|a, b| (&a.name, &a.version, a.uuid).cmp(&(&b.name, &b.version, b.uuid)));
        Ok(out)
    }
}

/// A crash-safe JSON list in `<data root>/config/<file>`: the nic tag table, the image
/// sources.
#[derive(Debug)]
pub struct ConfigList<T> {
    dir: PathBuf,
    file: &'static str,
    what: &'static str,
    _items: std::marker::PhantomData<T>,
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> ConfigList<T> {
    /// The list `file` under `data_root/config`, described as `what` in errors.
    pub fn new(data_root: &Path, file: &'static str, what: &'static str) -> ConfigList<T> {
        ConfigList {
            dir: data_root.join("config"),
            file,
            what,
            _items: std::marker::PhantomData,
        }
    }

    /// Every item (none when the file does not exist yet).
    pub fn load(&self) -> Result<Vec<T>, CatalogError> {
        let path = self.dir.join(self.file);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| CatalogError::Parse {
                path,
                what: self.what,
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(CatalogError::Read { path, source }),
        }
    }

    /// Replaces the list durably.
    pub fn save(&self, items: &[T]) -> Result<(), CatalogError> {
        ensure_private_dir(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(items).map_err(|source| CatalogError::Parse {
            path: self.dir.join(self.file),
            what: self.what,
            source,
        })?;
        write_atomic(&self.dir, self.file, &bytes)?;
        Ok(())
    }
}

/// The nic tag table.
pub type NicTags = ConfigList<NicTag>;

/// The nic tag table of a data root.
pub fn nictags(data_root: &Path) -> NicTags {
    ConfigList::new(data_root, "nictags.json", "nic tag table")
}

/// The image sources.
pub type Sources = ConfigList<ImageSource>;

/// The image sources of a data root.
pub fn sources(data_root: &Path) -> Sources {
    ConfigList::new(data_root, "sources.json", "image source list")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_tags_round_trip_and_images_read_manifests() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tags = nictags(tmp.path());
        assert!(tags.load().expect("empty").is_empty());
        let t = vec![NicTag {
            name: "admin".into(),
            uplink: None,
        }];
        tags.save(&t).expect("save");
        assert_eq!(tags.load().expect("load"), t);

        let images = Images::new(tmp.path());
        assert!(images.list().expect("none").is_empty());
        let uuid = Uuid::new_v4();
        let dir = tmp.path().join("images").join(uuid.to_string());
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(
            dir.join("manifest.json"),
            serde_json::json!({"v": 2, "uuid": uuid, "name": "busybox", "version": "1.36",
                "type": "zone-dataset", "os": "linux"})
            .to_string(),
        )
        .expect("write");
        assert_eq!(images.list().expect("one").len(), 1);
        assert_eq!(
            images.get(uuid).expect("get").map(|m| m.name),
            Some("busybox".into())
        );
        fs::write(dir.join("manifest.json"), b"{").expect("write");
        assert!(matches!(images.get(uuid), Err(CatalogError::Parse { .. })));
    }
}
