//! The image store's on-disk layout under the data root, and the operations on it:
//!
//! ```text
//! images/<uuid>/manifest.json   the manifest, as given (bytes kept verbatim)
//! images/<uuid>/root            a tree image (btrfs: a read-only subvolume)
//! images/<uuid>/disk.img        a disk image (sparse)
//! images/.staging-<uuid>        an install in flight; renamed into place only when whole
//! images/.deleting-<uuid>       a delete in flight
//! guests/<uuid>/origin.json     which images the guest was cloned from
//! guests/<uuid>/root|upper|work the guest's root clone (backend-specific)
//! guests/<uuid>/disk<N>.img     the guest's disks
//! ```
//!
//! Install and delete are all-or-nothing: an install lands by one rename of a staging
//! directory, a delete starts with one; leftovers of a crash are removed by [`Store::open`].
//! This module never interprets manifests beyond what it is given in [`ImageSpec`].

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hull_sys::IoError;
use hull_sys::fs::sync_dir;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::archive::{self, ArchiveError, Expected, Limits, Stats};
use crate::backend::{self, Backend, BackendError, BackendKind, CloneCost, RootSource};

mod transfer;
pub use transfer::{RECEIVE_SNAPSHOT, is_disk_name};

/// What an image holds, as the store needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// A root tree (a tar archive).
    Tree,
    /// A raw disk.
    Disk,
    /// An OCI image layer: a tar applied, OCI whiteouts included, onto a copy of its origin
    /// image's tree (a btrfs snapshot, sharing its blocks), or onto nothing for a base
    /// layer; installed, it is a tree like any other. Its file is named by its sha256
    /// digest. Setuid files are kept (the image's directory is root's alone; a zone sees
    /// them owned by its own ids).
    Layer,
}

/// An image to install: its identity, kind, the expected file, and the manifest bytes to keep.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The image's uuid.
    pub uuid: Uuid,
    /// Tree or disk.
    pub kind: ImageKind,
    /// The file as the manifest describes it.
    pub file: Expected,
    /// The manifest, stored verbatim as manifest.json.
    pub manifest: Vec<u8>,
    /// The image this one was made from, if any (deleting that one is then refused).
    pub origin: Option<Uuid>,
    /// For disk images: files to copy out of the disk's ext4 filesystem at install, as
    /// (path inside the disk, name in the image folder), e.g. the kernel and initrd a
    /// microVM boots directly.
    pub boot_files: Vec<(String, String)>,
}

/// The largest boot file (kernel, initrd) taken out of a disk image.
/// A guest's record of the images its storage came from.
const ORIGIN: &str = "origin.json";
/// A guest's delegated dataset, in its directory.
const DATA_DIR: &str = "data";
/// A zone's volumes (SmartOS's zones/<uuid>/volumes/<name>), in its directory.
const VOLUMES_DIR: &str = "volumes";

/// The volume `name` in `dir`: one plain file name, or an error saying so (`action` on it).
fn volume_in(dir: &Path, name: &str, action: &'static str) -> Result<PathBuf, StoreError> {
    let path = dir.join(name);
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io(action, &path)(std::io::Error::other(
            "a volume's name is one plain file name",
        )));
    }
    Ok(path)
}
/// The directory beside a guest's where `reprovision_root` stages the new root.
const REPROVISION_SUFFIX: &str = ".reprovision";

const MAX_BOOT_FILE: u64 = 512 << 20;

/// Names a boot file may take in an image folder.
pub const BOOT_FILE_NAMES: [&str; 2] = ["vmlinuz", "initrd.img"];

/// Store configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data root.
    pub root: PathBuf,
    /// Force a backend instead of detecting one from the filesystem.
    pub backend: Option<BackendKind>,
    /// Limits applied to every archive.
    pub limits: Limits,
}

/// Failures of the store. Each leaves the data root as it was.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The image file was refused.
    #[error("image {uuid} was refused")]
    Archive {
        /// The image.
        uuid: Uuid,
        /// Why.
        #[source]
        source: ArchiveError,
    },
    /// The backend failed.
    #[error("the {backend} backend failed")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// The image is already installed.
    #[error("image {0} is already installed")]
    Exists(Uuid),
    /// The image is not installed.
    #[error("image {0} is not installed")]
    NotInstalled(Uuid),
    /// The image is of the wrong kind for the operation.
    #[error("image {uuid} is a {actual} image, not a {wanted} image")]
    WrongKind {
        /// The image.
        uuid: Uuid,
        /// What it is.
        actual: &'static str,
        /// What was needed.
        wanted: &'static str,
    },
    /// Guests or images still clone the image.
    #[error("image {uuid} is in use by {users}")]
    InUse {
        /// The image.
        uuid: Uuid,
        /// Who uses it.
        users: String,
    },
    /// A boot file named by the manifest could not be taken out of the disk.
    #[error("image {uuid} was refused: {why}")]
    BootFile {
        /// The image.
        uuid: Uuid,
        /// Why.
        why: String,
    },
    /// A guest already has storage.
    #[error("guest {0} already has storage")]
    GuestExists(Uuid),
    /// Part of a received guest (a send stream's section) was refused.
    #[error("the {what} of guest {guest} in the stream was refused")]
    Received {
        /// The guest.
        guest: Uuid,
        /// Which part.
        what: &'static str,
        /// Why.
        #[source]
        source: ArchiveError,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io(IoError::new(action, path, source))
}

/// Which images a guest clones.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Origin {
    images: Vec<Uuid>,
}

/// What a guest's disk cost to make.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskMade {
    /// The disk file.
    pub path: PathBuf,
    /// How it was made.
    pub cost: CloneCost,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    images: PathBuf,
    guests: PathBuf,
    backend: Box<dyn Backend>,
    limits: Limits,
}

fn kind_name(k: ImageKind) -> &'static str {
    match k {
        ImageKind::Tree => "tree",
        ImageKind::Disk => "disk",
        ImageKind::Layer => "layer",
    }
}

impl Store {
    /// Opens the store under `config.root`, detecting the backend unless one is forced, and
    /// removes what a crash left half-done.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let images = config.root.join("images");
        let guests = config.root.join("guests");
        for d in [&images, &guests] {
            fs::create_dir_all(d).map_err(io("create", d))?;
        }
        let kind = match config.backend {
            Some(k) => k,
            None => backend::detect(&images).map_err(|source| StoreError::Backend {
                backend: "detected",
                source,
            })?,
        };
        let store = Store {
            root: config.root,
            images,
            guests,
            backend: backend::open(kind),
            limits: config.limits,
        };
        store.clean_leftovers()?;
        store.finish_reprovisions()?;
        Ok(store)
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// The data root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn backend_err(&self) -> impl FnOnce(BackendError) -> StoreError + '_ {
        move |source| StoreError::Backend {
            backend: self.backend.kind().as_str(),
            source,
        }
    }

    fn clean_leftovers(&self) -> Result<(), StoreError> {
        for entry in fs::read_dir(&self.images).map_err(io("read", &self.images))? {
            let entry = entry.map_err(io("read", &self.images))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".staging-") || name.starts_with(".deleting-") {
                self.remove_image_dir(&entry.path())?;
            }
        }
        Ok(())
    }

    fn remove_image_dir(&self, dir: &Path) -> Result<(), StoreError> {
        let tree = dir.join("root");
        if tree.symlink_metadata().is_ok() {
            self.backend
                .remove_image_tree(&tree)
                .map_err(self.backend_err())?;
        }
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", dir)(e)),
        }
        Ok(sync_dir(&self.images)?)
    }

    /// The directory of an installed image.
    pub fn image_dir(&self, uuid: Uuid) -> PathBuf {
        self.images.join(uuid.to_string())
    }

    /// Whether an image is installed.
    pub fn is_installed(&self, uuid: Uuid) -> bool {
        self.image_dir(uuid).join("manifest.json").exists()
    }

    /// The kind of an installed image.
    pub fn image_kind(&self, uuid: Uuid) -> Result<ImageKind, StoreError> {
        let dir = self.image_dir(uuid);
        if !dir.join("manifest.json").exists() {
            return Err(StoreError::NotInstalled(uuid));
        }
        Ok(if dir.join("disk.img").exists() {
            ImageKind::Disk
        } else {
            ImageKind::Tree
        })
    }

    /// Installs an image from its file, verifying it against `spec.file` as it streams.
    /// All or nothing: on any error nothing is left under the data root.
    pub fn install(
        &self,
        spec: &ImageSpec,
        src: impl Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Stats, StoreError> {
        let final_dir = self.image_dir(spec.uuid);
        if final_dir.exists() {
            return Err(StoreError::Exists(spec.uuid));
        }
        let staging = self.images.join(format!(
            ".staging-{}-{}",
            spec.uuid,
            Uuid::new_v4().simple()
        ));
        fs::create_dir(&staging).map_err(io("create", &staging))?;
        if spec.kind == ImageKind::Layer {
            // Root's alone: a layer keeps the setuid files its image holds.
            fs::set_permissions(&staging, fs::Permissions::from_mode(0o700))
                .map_err(io("chmod", &staging))?;
        }
        let result = self.fill_staging(spec, src, &staging, progress);
        let result = result.and_then(|stats| {
            fs::rename(&staging, &final_dir).map_err(io("move into place", &final_dir))?;
            sync_dir(&self.images)?;
            Ok(stats)
        });
        if result.is_err() {
            // Best effort: the original error is what the caller needs to see; a leftover
            // is also removed at the next open.
            let _ = self.remove_image_dir(&staging);
        }
        result
    }

    fn fill_staging(
        &self,
        spec: &ImageSpec,
        src: impl Read,
        staging: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Stats, StoreError> {
        let archive_err = |source| StoreError::Archive {
            uuid: spec.uuid,
            source,
        };
        let stats = match spec.kind {
            ImageKind::Tree => {
                let tree = staging.join("root");
                self.backend
                    .create_image_tree(&tree)
                    .map_err(self.backend_err())?;
                let stats = archive::unpack_tree(src, &spec.file, &tree, &self.limits, progress)
                    .map_err(archive_err)?;
                self.backend
                    .seal_image_tree(&tree)
                    .map_err(self.backend_err())?;
                stats
            }
            ImageKind::Layer => {
                let tree = staging.join("root");
                match spec.origin {
                    Some(parent) => {
                        if self.image_kind(parent)? == ImageKind::Disk {
                            return Err(StoreError::WrongKind {
                                uuid: parent,
                                actual: "disk",
                                wanted: "tree",
                            });
                        }
                        self.backend
                            .derive_image_tree(&self.image_dir(parent).join("root"), &tree)
                    }
                    None => self.backend.create_image_tree(&tree),
                }
                .map_err(self.backend_err())?;
                let limits = Limits {
                    allow_setuid: true,
                    ..self.limits.clone()
                };
                let stats = archive::unpack_layer_onto(src, &spec.file, &tree, &limits, progress)
                    .map_err(archive_err)?;
                self.backend
                    .seal_image_tree(&tree)
                    .map_err(self.backend_err())?;
                stats
            }
            ImageKind::Disk => {
                let disk = staging.join("disk.img");
                let stats = archive::unpack_raw(src, &spec.file, &disk, &self.limits, progress)
                    .map_err(archive_err)?;
                File::open(&disk)
                    .and_then(|f| f.sync_all())
                    .map_err(io("fsync", &disk))?;
                for (inside, name) in &spec.boot_files {
                    extract_boot_file(&disk, inside, &staging.join(name), spec.uuid)?;
                }
                stats
            }
        };
        if let Some(origin) = spec.origin {
            let o = staging.join("origin");
            fs::write(&o, origin.to_string()).map_err(io("write", &o))?;
        }
        let m = staging.join("manifest.json");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&m)
            .map_err(io("create", &m))?;
        f.write_all(&spec.manifest).map_err(io("write", &m))?;
        f.sync_all().map_err(io("fsync", &m))?;
        sync_dir(staging)?;
        Ok(stats)
    }

    /// Installed image uuids.
    pub fn images(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.images).map_err(io("read", &self.images))? {
            let entry = entry.map_err(io("read", &self.images))?;
            if let Some(u) = entry
                .file_name()
                .to_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                && entry.path().join("manifest.json").exists()
            {
                out.push(u);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Who uses an image: guests that clone it and images made from it.
    pub fn users(&self, uuid: Uuid) -> Result<Vec<String>, StoreError> {
        let mut users = Vec::new();
        for g in self.guest_ids()? {
            if self.origin(g)?.images.contains(&uuid) {
                users.push(format!("guest {g}"));
            }
        }
        for i in self.images()? {
            let o = self.image_dir(i).join("origin");
            if fs::read_to_string(&o).is_ok_and(|s| s.trim() == uuid.to_string()) {
                users.push(format!("image {i}"));
            }
        }
        Ok(users)
    }

    /// Deletes an image nobody uses.
    pub fn delete(&self, uuid: Uuid) -> Result<(), StoreError> {
        let dir = self.image_dir(uuid);
        if !dir.join("manifest.json").exists() {
            return Err(StoreError::NotInstalled(uuid));
        }
        let users = self.users(uuid)?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                uuid,
                users: users.join(", "),
            });
        }
        let doomed = self.images.join(format!(".deleting-{uuid}"));
        fs::rename(&dir, &doomed).map_err(io("move aside", &dir))?;
        sync_dir(&self.images)?;
        self.remove_image_dir(&doomed)
    }

    /// Deletes every image nobody uses; returns their uuids.
    pub fn vacuum(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut removed = Vec::new();
        // Deleting an image can free the image it was made from: repeat until stable.
        loop {
            let before = removed.len();
            for uuid in self.images()? {
                if self.users(uuid)?.is_empty() {
                    self.delete(uuid)?;
                    removed.push(uuid);
                }
            }
            if removed.len() == before {
                return Ok(removed);
            }
        }
    }

    fn guest_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.guests).map_err(io("read", &self.guests))? {
            let entry = entry.map_err(io("read", &self.guests))?;
            if let Some(u) = entry
                .file_name()
                .to_str()
                .and_then(|s| Uuid::parse_str(s).ok())
            {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// A guest's directory.
    pub fn guest_dir(&self, guest: Uuid) -> PathBuf {
        self.guests.join(guest.to_string())
    }

    fn origin(&self, guest: Uuid) -> Result<Origin, StoreError> {
        let p = self.guest_dir(guest).join(ORIGIN);
        match fs::read(&p) {
            Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Origin::default()),
            Err(e) => Err(io("read", &p)(e)),
        }
    }

    fn add_origin(&self, guest: Uuid, image: Uuid) -> Result<(), StoreError> {
        let mut o = self.origin(guest)?;
        if !o.images.contains(&image) {
            o.images.push(image);
        }
        let dir = self.guest_dir(guest);
        let bytes = serde_json::to_vec(&o).unwrap_or_default();
        hull_sys::fs::write_atomic(&dir.join(ORIGIN), &bytes)?;
        Ok(())
    }

    /// Starts a guest's storage (its directory). Fails if it already exists.
    pub fn create_guest(&self, guest: Uuid) -> Result<PathBuf, StoreError> {
        let dir = self.guest_dir(guest);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StoreError::GuestExists(guest))
            }
            Err(e) => Err(io("create", &dir)(e)),
        }
    }

    /// Clones a tree image as the guest's root, in O(1).
    pub fn clone_root(&self, guest: Uuid, image: Uuid) -> Result<RootSource, StoreError> {
        self.want(image, ImageKind::Tree)?;
        let dir = self.guest_dir(guest);
        self.add_origin(guest, image)?;
        self.backend
            .clone_tree(&self.image_dir(image).join("root"), &dir)
            .map_err(self.backend_err())
    }

    /// Where a zone's delegated dataset lives: `<guest dir>/data`, beside its root and
    /// outside the root's snapshots (SmartOS's zones/<uuid>/data).
    pub fn data_dir(&self, guest: Uuid) -> PathBuf {
        self.guest_dir(guest).join(DATA_DIR)
    }

    /// Makes the guest's delegated dataset, empty (btrfs: a subvolume of its own; other
    /// backends: a directory, which the guest's project quota covers on xfs).
    pub fn create_data(&self, guest: Uuid) -> Result<PathBuf, StoreError> {
        let data = self.data_dir(guest);
        self.backend
            .create_image_tree(&data)
            .map_err(self.backend_err())?;
        Ok(data)
    }

    /// Where a zone's volumes live: `<guest dir>/volumes`, one tree per volume beside the
    /// root, outside the root's snapshots (SmartOS's zones/<uuid>/volumes, which a
    /// `filesystems` entry whose source is a uuid makes).
    pub fn volumes_dir(&self, guest: Uuid) -> PathBuf {
        self.guest_dir(guest).join(VOLUMES_DIR)
    }

    /// Makes the zone's volume `name` (one plain file name), empty: a subvolume of its own
    /// on btrfs, a directory on the other backends (inside the guest's project quota on xfs).
    pub fn create_volume(&self, guest: Uuid, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self.volumes_dir(guest);
        let path = volume_in(&dir, name, "make the volume")?;
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        self.backend
            .create_image_tree(&path)
            .map_err(self.backend_err())?;
        sync_dir(&dir)?;
        Ok(path)
    }

    /// Fills the zone's new volume `name` with what the tree image `image` holds at `at` (an
    /// absolute path in the image), as SmartOS fills a volume from the zone's image and Docker
    /// a new volume from its container's: when every component of `at` is a directory in the
    /// image (no symlink is followed), its entries and its own owner and mode are copied
    /// (reflinked where the pool can). Returns whether there was anything to copy.
    pub fn seed_volume(
        &self,
        guest: Uuid,
        name: &str,
        image: Uuid,
        at: &str,
    ) -> Result<bool, StoreError> {
        self.want(image, ImageKind::Tree)?;
        let mut src = self.image_dir(image).join("root");
        for part in Path::new(at).components() {
            match part {
                std::path::Component::RootDir => {}
                std::path::Component::Normal(p) => {
                    src.push(p);
                    match fs::symlink_metadata(&src) {
                        Ok(m) if m.is_dir() => {}
                        _ => return Ok(false),
                    }
                }
                _ => return Ok(false),
            }
        }
        if src == self.image_dir(image).join("root") {
            return Ok(false);
        }
        let volume = volume_in(&self.volumes_dir(guest), name, "fill the volume")?;
        crate::backend::copy_into(&src, &volume).map_err(self.backend_err())?;
        Ok(true)
    }

    /// Replaces a guest's root with a fresh clone of the tree image `image` (SmartOS's
    /// reprovision): the old root and its snapshots go, the delegated dataset and disks stay.
    /// The new root is cloned beside the guest first (`<uuid>.reprovision`), so a failed
    /// clone leaves the old root as it was; a crash between removing the old root and moving
    /// the new one in is finished by the next [`Store::open`].
    pub fn reprovision_root(&self, guest: Uuid, image: Uuid) -> Result<RootSource, StoreError> {
        self.want(image, ImageKind::Tree)?;
        let dir = self.guest_dir(guest);
        if !dir.is_dir() {
            return Err(io("find", &dir)(std::io::ErrorKind::NotFound.into()));
        }
        let staging = self.reprovision_dir(guest);
        self.remove_staged(&staging)?;
        fs::create_dir(&staging).map_err(io("create", &staging))?;
        if let Err(e) = self
            .backend
            .clone_tree(&self.image_dir(image).join("root"), &staging)
        {
            let _ = self.remove_staged(&staging);
            return Err(self.backend_err()(e));
        }
        // The origin names the new image from here on; the old image is no longer used.
        let mut origin = self.origin(guest)?;
        let mut images = Vec::new();
        for i in origin.images {
            if self.image_kind(i).ok() != Some(ImageKind::Tree) {
                images.push(i);
            }
        }
        images.push(image);
        origin.images = images;
        let bytes = serde_json::to_vec(&origin).unwrap_or_default();
        hull_sys::fs::write_atomic(&staging.join(ORIGIN), &bytes)?;
        self.backend
            .destroy_tree(&dir)
            .map_err(self.backend_err())?;
        self.move_staged(guest)?;
        self.root_source(guest)?
            .ok_or_else(|| io("find the new root in", &dir)(std::io::ErrorKind::NotFound.into()))
    }

    /// Replaces a microVM's disk file `disk` (one hull made, in the guest's directory) with
    /// a clone of the disk image `image`, keeping its size (an image larger than the disk is
    /// refused): cloned beside it, then renamed over it, so the disk is the old one or the
    /// new one, never half of each.
    pub fn reprovision_disk(
        &self,
        guest: Uuid,
        image: Uuid,
        disk: &Path,
    ) -> Result<(), StoreError> {
        let (_, file) = self
            .guest_disk_files(guest, &[disk.to_path_buf()])?
            .pop()
            .ok_or_else(|| io("find", disk)(std::io::ErrorKind::NotFound.into()))?;
        let have = fs::metadata(disk).map_err(io("stat", disk))?.len();
        let image_file = self.image_dir(image).join("disk.img");
        let want = fs::metadata(&image_file)
            .map_err(io("stat", &image_file))?
            .len();
        if want > have {
            return Err(StoreError::Io(IoError::new(
                "reprovision",
                disk,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "image {image} ({} MiB) is larger than the disk ({} MiB)",
                        want >> 20,
                        have >> 20
                    ),
                ),
            )));
        }
        let mut tmp_name = std::ffi::OsString::from(".reprovision-");
        tmp_name.push(&file);
        let tmp = disk.with_file_name(tmp_name);
        let _ = fs::remove_file(&tmp);
        let made = self
            .clone_disk(guest, image, &tmp, Some(have.div_ceil(1 << 20)))
            .and_then(|_| fs::rename(&tmp, disk).map_err(io("put in place", disk)));
        if made.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        made?;
        Ok(sync_dir(&self.guest_dir(guest))?)
    }

    fn reprovision_dir(&self, guest: Uuid) -> PathBuf {
        self.guests.join(format!("{guest}{REPROVISION_SUFFIX}"))
    }

    /// Removes a staged root (a clone made by the backend, or a half-made one).
    fn remove_staged(&self, staging: &Path) -> Result<(), StoreError> {
        if !staging.exists() {
            return Ok(());
        }
        self.backend
            .destroy_tree(staging)
            .map_err(self.backend_err())?;
        fs::remove_dir_all(staging).map_err(io("remove", staging))?;
        Ok(sync_dir(&self.guests)?)
    }

    /// Moves every entry of the staged root into the guest's directory (the old root is
    /// gone), its origin last, then removes the staging directory.
    fn move_staged(&self, guest: Uuid) -> Result<(), StoreError> {
        let staging = self.reprovision_dir(guest);
        let dir = self.guest_dir(guest);
        for entry in fs::read_dir(&staging).map_err(io("read", &staging))? {
            let entry = entry.map_err(io("read", &staging))?;
            if entry.file_name() == ORIGIN {
                continue;
            }
            let to = dir.join(entry.file_name());
            fs::rename(entry.path(), &to).map_err(io("move the new root to", &to))?;
        }
        let origin = staging.join(ORIGIN);
        if origin.exists() {
            fs::rename(&origin, dir.join(ORIGIN)).map_err(io("move", &origin))?;
        }
        sync_dir(&dir)?;
        fs::remove_dir(&staging).map_err(io("remove", &staging))?;
        Ok(sync_dir(&self.guests)?)
    }

    /// Finishes or undoes reprovisions a crash cut short: a complete staged root (its origin
    /// written last) is moved in where the old root is already gone; otherwise the staging
    /// is discarded and the guest keeps its old root.
    fn finish_reprovisions(&self) -> Result<(), StoreError> {
        for entry in fs::read_dir(&self.guests).map_err(io("read", &self.guests))? {
            let entry = entry.map_err(io("read", &self.guests))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(guest) = name
                .strip_suffix(REPROVISION_SUFFIX)
                .and_then(|g| Uuid::parse_str(g).ok())
            else {
                continue;
            };
            let complete = entry.path().join(ORIGIN).exists();
            let old_root = match self.root_source(guest) {
                Ok(Some(RootSource::Dir(root))) => root.exists(),
                Ok(Some(RootSource::Overlay { upper, .. })) => upper.exists(),
                _ => true,
            };
            if complete && self.guest_dir(guest).is_dir() && !old_root {
                self.move_staged(guest)?;
            } else {
                self.remove_staged(&entry.path())?;
            }
        }
        Ok(())
    }

    /// The guest root's source, for the zone runtime to mount.
    pub fn root_source(&self, guest: Uuid) -> Result<Option<RootSource>, StoreError> {
        let o = self.origin(guest)?;
        for image in o.images {
            if self.image_kind(image)? == ImageKind::Tree {
                return Ok(Some(self.backend.root_source(
                    &self.image_dir(image).join("root"),
                    &self.guest_dir(guest),
                )));
            }
        }
        Ok(None)
    }

    fn want(&self, image: Uuid, kind: ImageKind) -> Result<(), StoreError> {
        let actual = self.image_kind(image)?;
        if actual != kind {
            return Err(StoreError::WrongKind {
                uuid: image,
                actual: kind_name(actual),
                wanted: kind_name(kind),
            });
        }
        Ok(())
    }

    /// Makes a guest disk at `path` from a disk image (a reflink where the filesystem has
    /// them, a sparse copy otherwise), grown to `size_mib` when that is larger.
    pub fn clone_disk(
        &self,
        guest: Uuid,
        image: Uuid,
        path: &Path,
        size_mib: Option<u64>,
    ) -> Result<DiskMade, StoreError> {
        self.want(image, ImageKind::Disk)?;
        self.add_origin(guest, image)?;
        let cost = self
            .backend
            .clone_file(&self.image_dir(image).join("disk.img"), path)
            .map_err(self.backend_err())?;
        if let Some(mib) = size_mib {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io("open", path))?;
            let want = mib * 1024 * 1024;
            let have = f.metadata().map_err(io("stat", path))?.len();
            if want > have {
                f.set_len(want).map_err(io("grow", path))?;
            }
            f.sync_all().map_err(io("fsync", path))?;
        }
        Ok(DiskMade {
            path: path.to_path_buf(),
            cost,
        })
    }

    /// Makes a blank sparse disk of `size_mib` at `path`.
    pub fn blank_disk(&self, path: &Path, size_mib: u64) -> Result<DiskMade, StoreError> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io("create", path))?;
        f.set_len(size_mib * 1024 * 1024)
            .map_err(io("size", path))?;
        f.sync_all().map_err(io("fsync", path))?;
        Ok(DiskMade {
            path: path.to_path_buf(),
            cost: CloneCost::Copied { bytes: 0 },
        })
    }

    /// Removes everything a guest's storage holds: root clone, snapshots, disks, folder.
    pub fn destroy_guest(&self, guest: Uuid) -> Result<(), StoreError> {
        let dir = self.guest_dir(guest);
        if !dir.exists() {
            return Ok(());
        }
        self.backend
            .destroy_tree(&dir)
            .map_err(self.backend_err())?;
        let data = self.data_dir(guest);
        if data.symlink_metadata().is_ok() {
            self.backend
                .remove_image_tree(&data)
                .map_err(self.backend_err())?;
        }
        let volumes = self.volumes_dir(guest);
        if volumes.is_dir() {
            for entry in fs::read_dir(&volumes).map_err(io("list", &volumes))? {
                let path = entry.map_err(io("list", &volumes))?.path();
                self.backend
                    .remove_image_tree(&path)
                    .map_err(self.backend_err())?;
            }
        }
        fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        Ok(sync_dir(&self.guests)?)
    }

    /// Snapshots a stopped guest's root.
    pub fn snapshot(&self, guest: Uuid, name: &str) -> Result<(), StoreError> {
        self.backend
            .snapshot(&self.guest_dir(guest), name)
            .map_err(self.backend_err())
    }

    /// Rolls a stopped guest's root back to a snapshot.
    pub fn rollback(&self, guest: Uuid, name: &str) -> Result<(), StoreError> {
        self.backend
            .rollback(&self.guest_dir(guest), name)
            .map_err(self.backend_err())
    }

    /// Deletes a snapshot.
    pub fn delete_snapshot(&self, guest: Uuid, name: &str) -> Result<(), StoreError> {
        self.backend
            .delete_snapshot(&self.guest_dir(guest), name)
            .map_err(self.backend_err())
    }

    /// Snapshots a stopped microVM's disks (files in its directory) as
    /// `snapshots/<name>/<file name>`: reflinks on btrfs and xfs (O(1), the extents shared),
    /// sparse copies on an overlay data root. All or nothing.
    pub fn snapshot_disks(
        &self,
        guest: Uuid,
        name: &str,
        disks: &[PathBuf],
    ) -> Result<(), StoreError> {
        let dir = self.disk_snapshot_dir(guest, name)?;
        if dir.symlink_metadata().is_ok() {
            return Err(self.backend_err()(BackendError::SnapshotExists {
                name: name.to_owned(),
                guest_dir: self.guest_dir(guest),
            }));
        }
        let files = self.guest_disk_files(guest, disks)?;
        let parent = self.guest_dir(guest).join(backend::SNAPSHOTS_DIR);
        fs::create_dir_all(&parent).map_err(io("create", &parent))?;
        let tmp = parent.join(format!("{name}~tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(io("create", &tmp))?;
        let made = (|| {
            for (disk, file) in &files {
                self.backend
                    .clone_file(disk, &tmp.join(file))
                    .map_err(self.backend_err())?;
            }
            sync_dir(&tmp)?;
            fs::rename(&tmp, &dir).map_err(io("name the snapshot", &dir))?;
            Ok(sync_dir(&parent)?)
        })();
        if made.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        made
    }

    /// Puts a stopped microVM's disks back as the snapshot `name` holds them: each is cloned
    /// from the snapshot beside itself and renamed over it, so a disk is either the old one
    /// or the snapshot's, never half of each. The snapshot stays.
    pub fn rollback_disks(
        &self,
        guest: Uuid,
        name: &str,
        disks: &[PathBuf],
    ) -> Result<(), StoreError> {
        let dir = self.existing_disk_snapshot(guest, name)?;
        for (disk, file) in self.guest_disk_files(guest, disks)? {
            let from = dir.join(&file);
            if !from.is_file() {
                return Err(io("find the disk in the snapshot", &from)(
                    std::io::ErrorKind::NotFound.into(),
                ));
            }
            let mut tmp_name = std::ffi::OsString::from(".rollback-");
            tmp_name.push(&file);
            let tmp = disk.with_file_name(tmp_name);
            let _ = fs::remove_file(&tmp);
            self.backend
                .clone_file(&from, &tmp)
                .map_err(self.backend_err())?;
            fs::rename(&tmp, &disk).map_err(io("put back", &disk))?;
        }
        Ok(sync_dir(&self.guest_dir(guest))?)
    }

    /// Deletes a microVM's disk snapshot.
    pub fn delete_disk_snapshot(&self, guest: Uuid, name: &str) -> Result<(), StoreError> {
        let dir = self.existing_disk_snapshot(guest, name)?;
        fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        Ok(sync_dir(
            &self.guest_dir(guest).join(backend::SNAPSHOTS_DIR),
        )?)
    }

    /// The directory of disk snapshot `name`, which must exist.
    fn existing_disk_snapshot(&self, guest: Uuid, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self.disk_snapshot_dir(guest, name)?;
        if !dir.is_dir() {
            return Err(self.backend_err()(BackendError::SnapshotNotFound {
                name: name.to_owned(),
                guest_dir: self.guest_dir(guest),
            }));
        }
        Ok(dir)
    }

    fn disk_snapshot_dir(&self, guest: Uuid, name: &str) -> Result<PathBuf, StoreError> {
        backend::validate_snapshot_name(name).map_err(self.backend_err())?;
        Ok(self
            .guest_dir(guest)
            .join(backend::SNAPSHOTS_DIR)
            .join(name))
    }

    /// Each disk with its file name, all of them files hull made in the guest's directory:
    /// a disk the user brought from elsewhere is theirs, and is refused naming it.
    fn guest_disk_files(
        &self,
        guest: Uuid,
        disks: &[PathBuf],
    ) -> Result<Vec<(PathBuf, std::ffi::OsString)>, StoreError> {
        let dir = self.guest_dir(guest);
        disks
            .iter()
            .map(|d| match (d.parent(), d.file_name()) {
                (Some(p), Some(f)) if p == dir && d.is_file() => Ok((d.clone(), f.to_owned())),
                _ => Err(StoreError::Io(IoError::new(
                    "snapshot",
                    d,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a disk hull made in the guest's directory (a disk brought from \
                         elsewhere is snapshotted where it lives)",
                    ),
                ))),
            })
            .collect()
    }

    /// A guest's snapshots.
    pub fn snapshots(&self, guest: Uuid) -> Result<Vec<String>, StoreError> {
        self.backend
            .snapshots(&self.guest_dir(guest))
            .map_err(self.backend_err())
    }

    /// Sets (or with `None` removes) a guest's quota, live.
    pub fn set_quota(&self, guest: Uuid, bytes: Option<u64>) -> Result<(), StoreError> {
        self.backend
            .set_quota(&self.guest_dir(guest), bytes)
            .map_err(self.backend_err())
    }

    /// Writes a stopped guest's root tree as a `compression`ed tar to `out` (what `imgadm
    /// create` makes an image of). An overlay root is packed through a read-only overlay of
    /// its layers, mounted privately for the duration and unmounted after.
    ///
    /// `range` is the guest's host id range, if it has one: files carrying its ids are packed
    /// with the ids the guest sees (see [`archive::pack_tree_ids`]).
    pub fn pack_root(
        &self,
        guest: Uuid,
        compression: archive::Compression,
        out: impl Write,
        range: Option<(u32, u32)>,
    ) -> Result<u64, StoreError> {
        self.with_root_view(guest, None, |view| {
            archive::pack_tree_ids(view, compression, out, range).map_err(|source| {
                StoreError::Archive {
                    uuid: guest,
                    source,
                }
            })
        })
    }

    /// Runs `f` on a read-only view of a stopped guest's root tree, or of its snapshot
    /// `snapshot`: the directory itself (btrfs), or a read-only overlay of its layers mounted
    /// privately at `<guest>/.pack-view` for the duration and unmounted after.
    pub(crate) fn with_root_view<T>(
        &self,
        guest: Uuid,
        snapshot: Option<&str>,
        f: impl FnOnce(&Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let snapshot_dir = |name: &str| -> Result<PathBuf, StoreError> {
            backend::validate_snapshot_name(name).map_err(self.backend_err())?;
            let dir = self
                .guest_dir(guest)
                .join(backend::SNAPSHOTS_DIR)
                .join(name);
            if !dir.is_dir() {
                return Err(self.backend_err()(BackendError::SnapshotNotFound {
                    name: name.to_owned(),
                    guest_dir: self.guest_dir(guest),
                }));
            }
            Ok(dir)
        };
        match self.root_source(guest)? {
            None => Err(StoreError::Io(IoError::new(
                "find the root tree of",
                self.guest_dir(guest),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ))),
            Some(RootSource::Dir(dir)) => match snapshot {
                None => f(&dir),
                Some(name) => f(&snapshot_dir(name)?),
            },
            Some(RootSource::Overlay { lower, upper, .. }) => {
                let top = match snapshot {
                    None => upper,
                    Some(name) => snapshot_dir(name)?,
                };
                let view = self.guest_dir(guest).join(".pack-view");
                fs::create_dir_all(&view).map_err(io("create", &view))?;
                // Two lower layers and no upper: a read-only merged view that changes nothing.
                let ro = RootSource::Overlay {
                    lower: PathBuf::from(format!("{}:{}", top.display(), lower.display())),
                    upper: PathBuf::new(),
                    work: PathBuf::new(),
                };
                mount_readonly_overlay(&ro, &view)?;
                let done = f(&view);
                let unmounted = backend::unmount_root(&view).map_err(self.backend_err());
                let _ = fs::remove_dir(&view);
                let value = done?;
                unmounted?;
                Ok(value)
            }
        }
    }

    /// Guests with storage that `known` does not list (crash leftovers of a create).
    pub fn orphan_guests(&self, known: &BTreeSet<Uuid>) -> Result<Vec<Uuid>, StoreError> {
        Ok(self
            .guest_ids()?
            .into_iter()
            .filter(|g| !known.contains(g))
            .collect())
    }
}

fn mount_readonly_overlay(src: &RootSource, target: &Path) -> Result<(), StoreError> {
    use nix::mount::{MsFlags, mount};
    let RootSource::Overlay { lower, .. } = src else {
        return Ok(());
    };
    let data = format!("lowerdir={}", lower.display());
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| {
        let op = "mount a read-only view of the guest root at";
        StoreError::Io(IoError::new(op, target, std::io::Error::from(e)))
    })
}

/// Copies one file out of an ext4 disk image with debugfs, which reads the filesystem in user
/// space: an untrusted image is never mounted by the host kernel, and debugfs runs as nobody
/// with no new privileges, reading the disk through its stdin-less argument and writing only
/// to a pipe that hull bounds.
fn extract_boot_file(disk: &Path, inside: &str, dest: &Path, uuid: Uuid) -> Result<(), StoreError> {
    use std::process::{Command, Stdio};
    let bad = |why: String| StoreError::BootFile { uuid, why };
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if !BOOT_FILE_NAMES.contains(&name) {
        return Err(bad(format!("{name:?} is not a boot file name hull keeps")));
    }
    let sane = inside.starts_with('/')
        && inside.len() < 256
        && inside
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
        && !inside.split('/').any(|c| c == "..");
    if !sane {
        return Err(bad(format!(
            "boot file path {inside:?} is not a plain absolute path"
        )));
    }
    // debugfs reads the image as nobody: let nobody read it for the extraction.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(disk, fs::Permissions::from_mode(0o644)).map_err(io("chmod", disk))?;
    // As root, drop to nobody first; an unprivileged caller is unprivileged already.
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ])
        .arg("debugfs");
        c
    } else {
        Command::new("debugfs")
    };
    let mut child = cmd
        .arg("-R")
        .arg(format!("cat {inside}"))
        .arg(disk)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("run debugfs (e2fsprogs) on", disk))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(io("create", dest))?;
    let stdout = child.stdout.take();
    let copied = stdout.map(|s| std::io::copy(&mut s.take(MAX_BOOT_FILE + 1), &mut out));
    let status = child.wait().map_err(io("wait for debugfs on", disk))?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let copied = match copied {
        Some(Ok(n)) => n,
        Some(Err(e)) => return Err(io("write", dest)(e)),
        None => 0,
    };
    // debugfs says "File not found" on stderr and still exits 0.
    if !status.success() || copied == 0 || err.contains("not found") {
        return Err(bad(format!(
            "the disk has no {inside} to boot from (debugfs: {})",
            err.lines()
                .filter(|l| !l.starts_with("debugfs "))
                .collect::<Vec<_>>()
                .join(" ")
        )));
    }
    if copied > MAX_BOOT_FILE {
        return Err(bad(format!(
            "{inside} is larger than {MAX_BOOT_FILE} bytes"
        )));
    }
    out.sync_all().map_err(io("fsync", dest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &Path) -> Store {
        Store::open(StoreConfig {
            root: root.to_path_buf(),
            backend: Some(BackendKind::Overlay),
            limits: Limits::default(),
        })
        .expect("open")
    }

    #[test]
    fn open_removes_what_a_crash_left_half_done() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let images = tmp.path().join("images");
        let staging = images.join(format!(".staging-{}-abc", Uuid::new_v4()));
        let deleting = images.join(format!(".deleting-{}", Uuid::new_v4()));
        for d in [&staging, &deleting] {
            fs::create_dir_all(d.join("root/etc")).expect("mkdir");
            fs::write(d.join("root/etc/half"), b"x").expect("write");
        }
        let s = store(tmp.path());
        assert!(!staging.exists() && !deleting.exists());
        assert!(s.images().expect("list").is_empty());
    }

    #[test]
    fn install_is_all_or_nothing_and_delete_respects_users() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(tmp.path());
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("etc")).expect("mkdir");
        fs::write(src.join("etc/hostname"), b"t\n").expect("write");
        let mut tar = Vec::new();
        archive::pack_tree(&src, archive::Compression::Gzip, &mut tar).expect("pack");
        let (sha1, size) = archive::digest(&tar[..]).expect("digest");
        let uuid = Uuid::new_v4();
        let mut spec = ImageSpec {
            uuid,
            kind: ImageKind::Tree,
            file: Expected {
                sha1: "0".repeat(40),
                size,
                digest: None,
                uncompressed_digest: None,
                compression: archive::Compression::Gzip,
            },
            manifest: b"{}".to_vec(),
            origin: None,
            boot_files: Vec::new(),
        };
        assert!(matches!(
            s.install(&spec, &tar[..], &mut |_| {}),
            Err(StoreError::Archive { .. })
        ));
        let left: Vec<_> = fs::read_dir(tmp.path().join("images"))
            .expect("dir")
            .collect();
        assert!(left.is_empty(), "a refused install left {left:?}");
        spec.file.sha1 = sha1;
        s.install(&spec, &tar[..], &mut |_| {}).expect("install");
        assert!(matches!(
            s.install(&spec, &tar[..], &mut |_| {}),
            Err(StoreError::Exists(_))
        ));
        let guest = Uuid::new_v4();
        s.create_guest(guest).expect("guest");
        s.clone_root(guest, uuid).expect("clone");
        assert!(matches!(s.delete(uuid), Err(StoreError::InUse { .. })));
        assert!(s.vacuum().expect("vacuum").is_empty());
        s.destroy_guest(guest).expect("destroy");
        assert_eq!(s.vacuum().expect("vacuum"), vec![uuid]);
        assert!(matches!(s.delete(uuid), Err(StoreError::NotInstalled(_))));
    }

    /// An uncompressed layer tar of (path, content) files and its sha256 digest.
    fn layer_of(files: &[(&str, &[u8], u32)]) -> (Vec<u8>, String) {
        use sha2::Digest as _;
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            b.append_data(&mut h, path, *data).expect("append");
        }
        let tar = b.into_inner().expect("tar");
        let d = sha2::Sha256::digest(&tar);
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        (tar, format!("sha256:{hex}"))
    }

    fn layer_spec(uuid: Uuid, tar: &[u8], digest: &str, origin: Option<Uuid>) -> ImageSpec {
        ImageSpec {
            uuid,
            kind: ImageKind::Layer,
            file: Expected {
                sha1: String::new(),
                size: tar.len() as u64,
                digest: Some(digest.to_string()),
                uncompressed_digest: Some(digest.to_string()),
                compression: archive::Compression::None,
            },
            manifest: b"{}".to_vec(),
            origin,
            boot_files: Vec::new(),
        }
    }

    #[test]
    fn layers_stack_on_their_origin_and_keep_setuid_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(tmp.path());
        let (base, d1) = layer_of(&[("bin/su", b"su", 0o4755), ("etc/gone", b"x", 0o644)]);
        let (top, d2) = layer_of(&[("etc/.wh.gone", b"", 0o644), ("etc/new", b"n", 0o644)]);
        let (b, t) = (Uuid::new_v4(), Uuid::new_v4());
        // The top layer without its base installed: refused, nothing left.
        assert!(matches!(
            s.install(&layer_spec(t, &top, &d2, Some(b)), &top[..], &mut |_| {}),
            Err(StoreError::NotInstalled(u)) if u == b
        ));
        s.install(&layer_spec(b, &base, &d1, None), &base[..], &mut |_| {})
            .expect("base");
        let mode = fs::metadata(s.image_dir(b))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "a layer's directory is root's alone");
        // A wrong digest: refused, nothing left.
        let bad = layer_spec(t, &top, &d1, Some(b));
        assert!(s.install(&bad, &top[..], &mut |_| {}).is_err());
        assert!(!s.is_installed(t));
        s.install(&layer_spec(t, &top, &d2, Some(b)), &top[..], &mut |_| {})
            .expect("top");
        let root = s.image_dir(t).join("root");
        assert_eq!(fs::read(root.join("bin/su")).expect("su"), b"su");
        let su = fs::metadata(root.join("bin/su"))
            .expect("su")
            .permissions()
            .mode();
        assert_eq!(su & 0o7777, 0o4755);
        assert!(!root.join("etc/gone").exists());
        assert!(
            s.image_dir(b).join("root/etc/gone").exists(),
            "the base is untouched"
        );
        assert_eq!(s.image_kind(t).expect("kind"), ImageKind::Tree);
        assert!(matches!(s.delete(b), Err(StoreError::InUse { .. })));
        assert_eq!(s.vacuum().expect("vacuum").len(), 2);
        let left: Vec<_> = fs::read_dir(tmp.path().join("images"))
            .expect("dir")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Installs a tree image holding `/etc/release` with `release` in it.
    fn install_tree(s: &Store, scratch: &Path, release: &str) -> Uuid {
        let src = scratch.join(release);
        fs::create_dir_all(src.join("etc")).expect("mkdir");
        fs::write(src.join("etc/release"), release).expect("write");
        let mut tar = Vec::new();
        archive::pack_tree(&src, archive::Compression::Gzip, &mut tar).expect("pack");
        let (sha1, size) = archive::digest(&tar[..]).expect("digest");
        let uuid = Uuid::new_v4();
        let spec = ImageSpec {
            uuid,
            kind: ImageKind::Tree,
            file: Expected {
                sha1,
                size,
                digest: None,
                uncompressed_digest: None,
                compression: archive::Compression::Gzip,
            },
            manifest: b"{}".to_vec(),
            origin: None,
            boot_files: Vec::new(),
        };
        s.install(&spec, &tar[..], &mut |_| {}).expect("install");
        uuid
    }

    fn lower(src: Option<RootSource>) -> PathBuf {
        match src {
            Some(RootSource::Overlay { lower, .. }) => lower,
            other => panic!("not an overlay root: {other:?}"),
        }
    }

    #[test]
    fn reprovision_replaces_the_root_and_keeps_the_data() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(&tmp.path().join("pool"));
        let (old, new) = (
            install_tree(&s, tmp.path(), "old"),
            install_tree(&s, tmp.path(), "new"),
        );
        let guest = Uuid::new_v4();
        let dir = s.create_guest(guest).expect("guest");
        s.clone_root(guest, old).expect("clone");
        let data = s.create_data(guest).expect("data");
        let volume = s.create_volume(guest, "v1").expect("volume");
        assert_eq!(volume, dir.join("volumes/v1"));
        for bad in ["", ".", "..", "a/b"] {
            assert!(s.create_volume(guest, bad).is_err(), "volume {bad:?}");
        }
        // A volume is filled from the image at its target when that is a directory there.
        let etc = s.create_volume(guest, "etc").expect("volume");
        assert!(s.seed_volume(guest, "etc", old, "/etc/").expect("seed"));
        assert_eq!(fs::read(etc.join("release")).expect("seeded"), b"old");
        for at in ["/etc/release", "/nosuch", "/", "/etc/../etc"] {
            assert!(!s.seed_volume(guest, "v1", old, at).expect("seed"), "{at}");
        }
        assert_eq!(fs::read_dir(&volume).expect("v1").count(), 0);
        fs::write(dir.join("upper/root-file"), b"r").expect("write root");
        fs::write(data.join("kept"), b"d").expect("write data");
        fs::write(volume.join("kept"), b"v").expect("write volume");
        s.snapshot(guest, "before").expect("snapshot");
        assert!(matches!(
            s.reprovision_root(guest, guest),
            Err(StoreError::NotInstalled(_))
        ));
        s.reprovision_root(guest, new).expect("reprovision");
        assert!(
            !dir.join("upper/root-file").exists(),
            "the old root's files went"
        );
        assert_eq!(fs::read(data.join("kept")).expect("data"), b"d");
        assert_eq!(fs::read(volume.join("kept")).expect("volume"), b"v");
        assert!(
            s.snapshots(guest).expect("list").is_empty(),
            "the old root's snapshots went"
        );
        assert_eq!(
            lower(s.root_source(guest).expect("source")),
            s.image_dir(new).join("root")
        );
        assert!(
            !tmp.path()
                .join(format!("pool/guests/{guest}{REPROVISION_SUFFIX}"))
                .exists()
        );
        // The old image is free; the new one is the guest's.
        assert!(matches!(s.delete(new), Err(StoreError::InUse { .. })));
        assert_eq!(s.vacuum().expect("vacuum"), vec![old]);
        s.destroy_guest(guest).expect("destroy");
        assert!(!dir.exists());
    }

    #[test]
    fn open_finishes_a_reprovision_only_once_the_old_root_is_gone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pool = tmp.path().join("pool");
        let s = store(&pool);
        let (old, new) = (
            install_tree(&s, tmp.path(), "old"),
            install_tree(&s, tmp.path(), "new"),
        );
        let stage = |guest: Uuid| {
            let staging = s.reprovision_dir(guest);
            fs::create_dir(&staging).expect("staging");
            s.backend
                .clone_tree(&s.image_dir(new).join("root"), &staging)
                .expect("clone");
            let origin = serde_json::to_vec(&Origin { images: vec![new] }).expect("json");
            fs::write(staging.join(ORIGIN), origin).expect("origin");
        };
        // Cut before the old root was removed: the old root stays.
        let kept = Uuid::new_v4();
        s.create_guest(kept).expect("guest");
        s.clone_root(kept, old).expect("clone");
        stage(kept);
        // Cut after: the new root moves in.
        let moved = Uuid::new_v4();
        s.create_guest(moved).expect("guest");
        s.clone_root(moved, old).expect("clone");
        stage(moved);
        s.backend
            .destroy_tree(&s.guest_dir(moved))
            .expect("destroy");
        drop(s);
        let s = store(&pool);
        assert_eq!(
            lower(s.root_source(kept).expect("kept")),
            s.image_dir(old).join("root")
        );
        assert_eq!(
            lower(s.root_source(moved).expect("moved")),
            s.image_dir(new).join("root")
        );
        assert!(s.guest_dir(moved).join("upper").is_dir());
        for g in [kept, moved] {
            assert!(!s.reprovision_dir(g).exists());
        }
    }

    #[test]
    fn disk_snapshots_roll_back_every_disk_and_refuse_a_brought_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(&tmp.path().join("pool"));
        let guest = Uuid::new_v4();
        let dir = s.create_guest(guest).expect("guest");
        let disks = [dir.join("disk0.img"), dir.join("disk1.img")];
        for (i, d) in disks.iter().enumerate() {
            fs::write(d, format!("before {i}")).expect("disk");
        }
        s.snapshot_disks(guest, "one", &disks).expect("snapshot");
        assert!(matches!(
            s.snapshot_disks(guest, "one", &disks),
            Err(StoreError::Backend {
                source: BackendError::SnapshotExists { .. },
                ..
            })
        ));
        for d in &disks {
            fs::write(d, "after").expect("write");
        }
        s.rollback_disks(guest, "one", &disks).expect("rollback");
        for (i, d) in disks.iter().enumerate() {
            assert_eq!(fs::read_to_string(d).expect("disk"), format!("before {i}"));
        }
        assert_eq!(s.snapshots(guest).expect("list"), ["one"]);
        let brought = tmp.path().join("brought.img");
        fs::write(&brought, "mine").expect("brought");
        let e = s
            .snapshot_disks(guest, "two", &[disks[0].clone(), brought])
            .expect_err("a brought disk");
        assert!(e.to_string().contains("snapshot"), "{e}");
        assert_eq!(
            s.snapshots(guest).expect("list"),
            ["one"],
            "nothing half-made"
        );
        s.delete_disk_snapshot(guest, "one").expect("delete");
        assert!(s.snapshots(guest).expect("list").is_empty());
        assert!(s.rollback_disks(guest, "one", &disks).is_err());
    }
}
