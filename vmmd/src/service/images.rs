//! Images through the service: the one place where wire manifests become cowstore's
//! [`ImageSpec`], installs run off the async runtime, and deletes check vmmd's own records
//! as well as the store's clone bookkeeping.

use bytes::Bytes;
use hull_cowstore::archive::{Compression, Expected};
use hull_cowstore::store::{ImageKind, ImageSpec, StoreError};
use hull_spec::{ImageManifest, ImageType, ValidationReport, validate_manifest};
use serde_json::Value;
use std::io::Read;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Service, ServiceError, blocking, read};

/// The wire manifest as cowstore's image spec: the one place the two meet. (A function, not
/// `TryFrom`: both types are foreign to vmmd.)
pub fn image_spec(m: &ImageManifest, raw: &Value) -> Result<ImageSpec, ValidationReport> {
    {
        let mut r = ValidationReport::default();
        let Some(file) = m.files.first() else {
            r.missing("files", "the manifest lists no file");
            return Err(r);
        };
        let Some(compression) = Compression::parse(&file.compression) else {
            r.bad_value(
                "files.0.compression",
                "files.0.compression must be none, gzip, xz, zstd or bzip2",
            );
            return Err(r);
        };
        let kind = match m.image_type {
            ImageType::ZoneDataset | ImageType::LxDataset => ImageKind::Tree,
            ImageType::Zvol => ImageKind::Disk,
            ImageType::Docker => ImageKind::Layer,
        };
        Ok(ImageSpec {
            uuid: m.uuid,
            kind,
            file: Expected {
                sha1: file.sha1.to_ascii_lowercase(),
                digest: file.digest.clone(),
                uncompressed_digest: file.uncompressed_digest.clone(),
                size: file.size,
                compression,
            },
            manifest: serde_json::to_vec_pretty(raw).unwrap_or_default(),
            origin: m.origin,
            boot_files: boot_files(m),
        })
    }
}

/// hull's manifest extension for microVM disks: `"hull": {"kernel": "/boot/vmlinuz",
/// "initrd": "/boot/initrd.img", "cmdline": "..."}` names files inside the disk to take out
/// at install, so a guest created from the image boots without naming them itself.
fn boot_files(m: &ImageManifest) -> Vec<(String, String)> {
    if m.image_type != ImageType::Zvol {
        return Vec::new();
    }
    let hull = m.extra.get("hull");
    [("kernel", "vmlinuz"), ("initrd", "initrd.img")]
        .into_iter()
        .filter_map(|(key, name)| {
            hull.and_then(|h| h.get(key))
                .and_then(Value::as_str)
                .map(|p| (p.to_string(), name.to_string()))
        })
        .collect()
}

/// A blocking reader over chunks sent from the async side (the HTTP body).
pub struct ChunkReader {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    current: Bytes,
}

impl ChunkReader {
    /// A reader and the sender that feeds it.
    pub fn channel() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, ChunkReader) {
        let (tx, rx) = mpsc::channel(16);
        (
            tx,
            ChunkReader {
                rx,
                current: Bytes::new(),
            },
        )
    }
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader").finish_non_exhaustive()
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// A blocking writer that sends what it is given to the async side (an HTTP body).
pub(super) struct ChunkWriter {
    pub(super) tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Service {
    /// Installed images.
    pub fn images(&self) -> Result<Vec<ImageManifest>, ServiceError> {
        Ok(self.images.list()?)
    }

    /// One installed image.
    pub fn image(&self, uuid: Uuid) -> Result<ImageManifest, ServiceError> {
        self.images
            .get(uuid)?
            .ok_or(ServiceError::ImageNotFound(uuid))
    }

    /// Validates a manifest for install: well-formed and not installed yet.
    pub fn check_manifest(&self, raw: &Value) -> Result<(ImageManifest, ImageSpec), ServiceError> {
        let m = validate_manifest(raw).map_err(ServiceError::Invalid)?;
        let spec = image_spec(&m, raw).map_err(ServiceError::Invalid)?;
        if self.cow.is_installed(m.uuid) {
            return Err(ServiceError::Already(format!(
                "image {} is already installed",
                m.uuid
            )));
        }
        Ok((m, spec))
    }

    /// Installs an image whose file arrives through `reader` (run on a blocking thread).
    pub async fn install_image(
        &self,
        manifest: ImageManifest,
        spec: ImageSpec,
        reader: ChunkReader,
    ) -> Result<ImageManifest, ServiceError> {
        let store = self.cow.clone();
        blocking(move || store.install(&spec, reader, &mut |_| {})).await?;
        tracing::info!(uuid = %manifest.uuid, name = %manifest.name, "image installed");
        Ok(manifest)
    }

    /// Streams a stopped zone's root as a tar (`compression`ed) into `tx`, chunk by chunk,
    /// from a blocking thread. Errors before the first byte are returned; a failure later
    /// ends the stream with an error item.
    pub fn export_root(
        &self,
        uuid: Uuid,
        compression: &str,
        tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), ServiceError> {
        let vm = self.get(uuid)?;
        let Some(c) = Compression::parse(compression) else {
            return Err(ServiceError::BadRequest(format!(
                "compression {compression:?} is not none, gzip, xz, zstd or bzip2"
            )));
        };
        if vm.brand.is_microvm() || vm.image_uuid.is_none() {
            return Err(ServiceError::NotImplemented(format!(
                "images are made from zone roots; images of microVM disks are not built yet (VM {uuid})"
            )));
        }
        if !matches!(vm.state, hull_spec::VmState::Stopped) {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} is {}: an image is made from a stopped guest",
                vm.state.as_str()
            )));
        }
        let cow = self.cow.clone();
        let range = self.zones.id_range(uuid);
        tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter { tx: tx.clone() };
            if let Err(e) = cow.pack_root(uuid, c, &mut w, range) {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        });
        Ok(())
    }

    /// Removes guest storage that no record owns: what a crash between provisioning and
    /// writing the record left behind.
    pub async fn remove_orphan_storage(&self) -> Result<Vec<Uuid>, ServiceError> {
        let known: std::collections::BTreeSet<Uuid> =
            read(&self.records).vms.keys().copied().collect();
        let cow = self.cow.clone();
        blocking(move || {
            let orphans = cow.orphan_guests(&known)?;
            for g in &orphans {
                cow.destroy_guest(*g)?;
            }
            Ok::<_, StoreError>(orphans)
        })
        .await
    }

    /// Guests (by vmmd's records) that use an image.
    fn image_users(&self, uuid: Uuid) -> Vec<String> {
        read(&self.records)
            .vms
            .values()
            .filter(|r| {
                r.image_uuid == Some(uuid) || r.disks.iter().any(|d| d.image_uuid == Some(uuid))
            })
            .map(|r| format!("VM {}", r.uuid))
            .collect()
    }

    /// Deletes an image no guest uses.
    pub async fn delete_image(&self, uuid: Uuid) -> Result<(), ServiceError> {
        let _index = self.index_lock.lock().await;
        if !self.cow.is_installed(uuid) {
            return Err(ServiceError::ImageNotFound(uuid));
        }
        let users = self.image_users(uuid);
        if !users.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "image {uuid} is used by {}",
                users.join(", ")
            )));
        }
        let store = self.cow.clone();
        blocking(move || store.delete(uuid)).await
    }

    /// Deletes every image no guest uses.
    pub async fn vacuum_images(&self) -> Result<Vec<Uuid>, ServiceError> {
        let _index = self.index_lock.lock().await;
        let store = self.cow.clone();
        blocking(move || store.vacuum()).await
    }
}

/// cowstore's errors as service errors: refusals of the input are 4xx, the rest 5xx.
impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        store_error(e)
    }
}

pub fn store_error(e: StoreError) -> ServiceError {
    match e {
        StoreError::Archive { .. } | StoreError::WrongKind { .. } | StoreError::BootFile { .. } => {
            let mut r = ValidationReport::default();
            r.bad_value("file", hull_sys::chain(&e));
            ServiceError::Invalid(r)
        }
        StoreError::Exists(_) | StoreError::InUse { .. } | StoreError::GuestExists(_) => {
            ServiceError::Conflict(e.to_string())
        }
        StoreError::NotInstalled(u) => ServiceError::ImageNotFound(u),
        StoreError::Received { .. } => ServiceError::BadRequest(hull_sys::chain(&e)),
        StoreError::Io(_) | StoreError::Backend { .. } => ServiceError::Storage(e),
    }
}
