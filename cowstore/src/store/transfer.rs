//! A guest's storage written to and made from a send stream's sections (see
//! [`crate::send`]): the delegated dataset packed, and a received root, dataset or disk made
//! in the guest's directory. The guest's directory is the staging: a receive that fails
//! anywhere is undone by [`Store::destroy_guest`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{DATA_DIR, ImageKind, Store, StoreError, VOLUMES_DIR, io, volume_in};
use crate::archive::{self, ArchiveError, Listing, Stats};
use crate::backend::RootSource;

/// The snapshot an incremental receive takes of the root (and the disks) before it changes
/// them, rolled back to if the stream fails and deleted once it is whole.
pub const RECEIVE_SNAPSHOT: &str = "%receive";

/// Where an incremental receive stages a whole new delegated dataset.
const DATA_STAGED: &str = "data.receive";
/// Where an incremental receive stages whole new volumes, one tree per volume by its name.
const VOLUMES_STAGED: &str = "volumes.receive";

/// Where an incremental receive mounts a layered root to change it.
const CHANGE_VIEW: &str = ".receive-view";

/// The overlay xattr that hides a lower directory's entries behind an upper directory.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

impl Store {
    /// Writes a stopped guest's delegated dataset as an uncompressed tar to `out` (by
    /// [`archive::pack_tree_ids`]'s rules, `range` the guest's host ids if it has some);
    /// returns the bytes written.
    pub fn pack_data(
        &self,
        guest: Uuid,
        out: impl Write,
        range: Option<(u32, u32)>,
    ) -> Result<u64, StoreError> {
        self.pack_kept(guest, &self.data_dir(guest), out, range)
    }

    /// Writes a stopped zone's volume `name` as [`Store::pack_data`] writes its dataset.
    pub fn pack_volume(
        &self,
        guest: Uuid,
        name: &str,
        out: impl Write,
        range: Option<(u32, u32)>,
    ) -> Result<u64, StoreError> {
        let volume = volume_in(&self.volumes_dir(guest), name, "send the volume")?;
        self.pack_kept(guest, &volume, out, range)
    }

    /// A tree the guest keeps beside its root (its dataset, a volume), as a tar to `out`.
    fn pack_kept(
        &self,
        guest: Uuid,
        tree: &Path,
        out: impl Write,
        range: Option<(u32, u32)>,
    ) -> Result<u64, StoreError> {
        archive::pack_tree_ids(tree, archive::Compression::None, out, range).map_err(|source| {
            StoreError::Archive {
                uuid: guest,
                source,
            }
        })
    }

    /// Makes a received zone's root from the tar `src` in the guest's directory (made by
    /// [`Store::create_guest`]), the tree image `image` as its origin. The root must equal the
    /// sent tree: on btrfs a new subvolume holds it (no extent is shared with the image);
    /// on the layered backends the tree is the upper layer, every entry of the image's top
    /// directory that it does not replace hidden (a whiteout, or an opaque directory), so
    /// files the sender had deleted do not come back from the image.
    pub fn receive_root(
        &self,
        guest: Uuid,
        image: Uuid,
        src: impl Read,
    ) -> Result<Stats, StoreError> {
        self.want(image, ImageKind::Tree)?;
        let dir = self.guest_dir(guest);
        self.add_origin(guest, image)?;
        let lower = self.image_dir(image).join("root");
        let refused = |source| StoreError::Received {
            guest,
            what: "root",
            source,
        };
        match self.backend.root_source(&lower, &dir) {
            RootSource::Dir(root) => {
                self.backend
                    .create_image_tree(&root)
                    .map_err(self.backend_err())?;
                archive::unpack_tree_unchecked(src, &root, &self.limits).map_err(refused)
            }
            RootSource::Overlay { .. } => {
                let RootSource::Overlay { lower, upper, .. } = self
                    .backend
                    .clone_tree(&lower, &dir)
                    .map_err(self.backend_err())?
                else {
                    return Err(io("clone a layered root in", &dir)(std::io::Error::other(
                        "the backend did not make a layered root",
                    )));
                };
                let stats =
                    archive::unpack_tree_unchecked(src, &upper, &self.limits).map_err(refused)?;
                hide_lower(&lower, &upper)?;
                Ok(stats)
            }
        }
    }

    /// Makes a received zone's delegated dataset from the tar `src`.
    pub fn receive_data(&self, guest: Uuid, src: impl Read) -> Result<Stats, StoreError> {
        let data = self.create_data(guest)?;
        self.unpack_kept(guest, src, &data, "delegated dataset")
    }

    /// Makes a received zone's volume `name` from the tar `src`.
    pub fn receive_volume(
        &self,
        guest: Uuid,
        name: &str,
        src: impl Read,
    ) -> Result<Stats, StoreError> {
        let volume = self.create_volume(guest, name)?;
        self.unpack_kept(guest, src, &volume, "volume")
    }

    /// Unpacks the tar `src` (a tree the guest keeps beside its root, `what`) into `tree`.
    fn unpack_kept(
        &self,
        guest: Uuid,
        src: impl Read,
        tree: &Path,
        what: &'static str,
    ) -> Result<Stats, StoreError> {
        archive::unpack_tree_unchecked(src, tree, &self.limits).map_err(|source| {
            StoreError::Received {
                guest,
                what,
                source,
            }
        })
    }

    /// Makes a received microVM disk, `name` in the guest's directory (`disk<N>.img`, the
    /// names hull gives the disks it makes), `size` bytes, from the extents in `src`.
    pub fn receive_disk(
        &self,
        guest: Uuid,
        name: &str,
        size: u64,
        mut src: impl Read,
    ) -> Result<PathBuf, StoreError> {
        let path = self.guest_dir(guest).join(name);
        if !is_disk_name(name) {
            return Err(io("receive a disk as", &path)(std::io::Error::other(
                "a received disk must be named disk<N>.img",
            )));
        }
        crate::send::read_extents(&mut src, &path, size).map_err(|e| StoreError::Received {
            guest,
            what: "disk",
            source: ArchiveError::Read(e),
        })?;
        Ok(path)
    }
}

impl Store {
    /// The listing of a stopped guest's root tree, or of its snapshot `snapshot` (ids of
    /// `range` made relative), for an incremental send's base and a receiver's check.
    pub fn root_listing(
        &self,
        guest: Uuid,
        snapshot: Option<&str>,
        range: Option<(u32, u32)>,
    ) -> Result<Listing, StoreError> {
        self.with_root_view(guest, snapshot, |view| {
            archive::list_tree(view, range).map_err(|source| StoreError::Archive {
                uuid: guest,
                source,
            })
        })
    }

    /// Writes, as an uncompressed tar, the entries of a stopped guest's root that changed
    /// since `base` (see [`Listing::changed`]).
    pub fn pack_root_changes(
        &self,
        guest: Uuid,
        base: &Listing,
        range: Option<(u32, u32)>,
        out: impl Write,
    ) -> Result<u64, StoreError> {
        self.with_root_view(guest, None, |view| {
            let changed =
                |rel: &Path, meta: &std::fs::Metadata| base.changed(view, rel, meta, range);
            archive::pack_tree_filtered(view, archive::Compression::None, out, range, &changed)
                .map_err(|source| StoreError::Archive {
                    uuid: guest,
                    source,
                })
        })
    }

    /// Starts an incremental receive into a stopped guest: a snapshot of its root (and of
    /// `disks`) to come back to.
    pub fn begin_changes(&self, guest: Uuid, disks: &[PathBuf]) -> Result<(), StoreError> {
        if disks.is_empty() {
            self.snapshot(guest, RECEIVE_SNAPSHOT)
        } else {
            self.snapshot_disks(guest, RECEIVE_SNAPSHOT, disks)
        }
    }

    /// Ends an incremental receive: kept (`whole`: the staged dataset swapped in, the
    /// snapshot deleted) or undone (rolled back to the snapshot, the staging removed).
    pub fn end_changes(
        &self,
        guest: Uuid,
        disks: &[PathBuf],
        whole: bool,
    ) -> Result<(), StoreError> {
        let dir = self.guest_dir(guest);
        let mut staged = vec![(dir.join(DATA_STAGED), dir.join(DATA_DIR))];
        let volumes = dir.join(VOLUMES_STAGED);
        if volumes.is_dir() {
            for entry in std::fs::read_dir(&volumes).map_err(io("list", &volumes))? {
                let name = entry.map_err(io("list", &volumes))?.file_name();
                staged.push((volumes.join(&name), dir.join(VOLUMES_DIR).join(&name)));
            }
        }
        for (staged, kept) in &staged {
            if !staged.exists() {
                continue;
            }
            if whole {
                if kept.exists() {
                    self.backend
                        .remove_image_tree(kept)
                        .map_err(self.backend_err())?;
                }
                std::fs::rename(staged, kept).map_err(io("put in place", kept))?;
            } else {
                self.backend
                    .remove_image_tree(staged)
                    .map_err(self.backend_err())?;
            }
        }
        if volumes.is_dir() {
            std::fs::remove_dir(&volumes).map_err(io("remove", &volumes))?;
        }
        if !whole {
            if disks.is_empty() {
                self.rollback(guest, RECEIVE_SNAPSHOT)?;
            } else {
                self.rollback_disks(guest, RECEIVE_SNAPSHOT, disks)?;
            }
        }
        if disks.is_empty() {
            self.delete_snapshot(guest, RECEIVE_SNAPSHOT)
        } else {
            self.delete_disk_snapshot(guest, RECEIVE_SNAPSHOT)
        }
    }

    /// Applies a root's changes: `removed` paths first, then the tar `src` unpacked over the
    /// tree (directly on btrfs; through a private read-write mount of the layers elsewhere,
    /// so removals of the image's files become whiteouts).
    pub fn apply_root_changes(
        &self,
        guest: Uuid,
        removed: &[PathBuf],
        src: impl Read,
    ) -> Result<Stats, StoreError> {
        let refused = |source| StoreError::Received {
            guest,
            what: "root's changes",
            source,
        };
        let apply = |root: &Path| {
            archive::apply_removals(root, removed).map_err(refused)?;
            archive::unpack_tree_onto(src, root, &self.limits).map_err(refused)
        };
        match self.root_source(guest)? {
            None => Err(io("find the root of", &self.guest_dir(guest))(
                std::io::ErrorKind::NotFound.into(),
            )),
            Some(RootSource::Dir(dir)) => apply(&dir),
            Some(layers @ RootSource::Overlay { .. }) => {
                let view = self.guest_dir(guest).join(CHANGE_VIEW);
                std::fs::create_dir_all(&view).map_err(io("create", &view))?;
                crate::backend::mount_root(&layers, &view).map_err(self.backend_err())?;
                let done = apply(&view);
                let unmounted = crate::backend::unmount_root(&view).map_err(self.backend_err());
                let _ = std::fs::remove_dir(&view);
                let stats = done?;
                unmounted?;
                Ok(stats)
            }
        }
    }

    /// Stages a whole new delegated dataset from the tar `src` (swapped in by
    /// [`Store::end_changes`]).
    pub fn stage_data(&self, guest: Uuid, src: impl Read) -> Result<Stats, StoreError> {
        let staged = self.guest_dir(guest).join(DATA_STAGED);
        self.stage_kept(guest, src, &staged, "delegated dataset")
    }

    /// Stages a whole new volume `name` from the tar `src` (swapped in by
    /// [`Store::end_changes`]).
    pub fn stage_volume(
        &self,
        guest: Uuid,
        name: &str,
        src: impl Read,
    ) -> Result<Stats, StoreError> {
        let dir = self.guest_dir(guest).join(VOLUMES_STAGED);
        let staged = volume_in(&dir, name, "stage the volume")?;
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        self.stage_kept(guest, src, &staged, "volume")
    }

    /// Makes `staged` anew (a tree of the backend's) from the tar `src`.
    fn stage_kept(
        &self,
        guest: Uuid,
        src: impl Read,
        staged: &Path,
        what: &'static str,
    ) -> Result<Stats, StoreError> {
        if staged.exists() {
            self.backend
                .remove_image_tree(staged)
                .map_err(self.backend_err())?;
        }
        self.backend
            .create_image_tree(staged)
            .map_err(self.backend_err())?;
        self.unpack_kept(guest, src, staged, what)
    }

    /// Applies a disk's changes (see [`crate::send::write_disk_delta`]) to the disk `name`
    /// in the guest's directory, which takes `size` bytes.
    pub fn apply_disk_changes(
        &self,
        guest: Uuid,
        name: &str,
        size: u64,
        mut src: impl Read,
    ) -> Result<(), StoreError> {
        let path = self.guest_dir(guest).join(name);
        if !is_disk_name(name) {
            return Err(io("receive a disk as", &path)(std::io::Error::other(
                "a received disk must be named disk<N>.img",
            )));
        }
        crate::send::read_extents_onto(&mut src, &path, size)
            .map(drop)
            .map_err(|e| StoreError::Received {
                guest,
                what: "disk's changes",
                source: ArchiveError::Read(e),
            })
    }
}

/// `disk<N>.img`: what hull names the disks it makes.
pub fn is_disk_name(name: &str) -> bool {
    name.strip_prefix("disk")
        .and_then(|n| n.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Hides every entry of `lower`'s top directory behind `upper`: an entry `upper` lacks gets
/// a whiteout (a 0/0 character device), a directory in both becomes opaque in `upper`; a
/// non-directory in `upper` already hides what is below it.
fn hide_lower(lower: &Path, upper: &Path) -> Result<(), StoreError> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let entries = std::fs::read_dir(lower).map_err(io("list", lower))?;
    for entry in entries {
        let entry = entry.map_err(io("list", lower))?;
        let above = upper.join(entry.file_name());
        match std::fs::symlink_metadata(&above) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                mknod(&above, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| io("make a whiteout at", &above)(e.into()))?;
            }
            Err(e) => return Err(io("inspect", &above)(e)),
            Ok(m) if m.is_dir() && entry.file_type().is_ok_and(|t| t.is_dir()) => {
                xattr::set(&above, OPAQUE_XATTR, b"y").map_err(io("mark opaque", &above))?;
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_disk_name;

    #[test]
    fn only_hulls_disk_names_are_received() {
        for good in ["disk0.img", "disk12.img"] {
            assert!(is_disk_name(good), "{good}");
        }
        for bad in [
            "disk.img",
            "../disk0.img",
            "disk0.img/x",
            "root",
            "diskx.img",
            "disk0.raw",
        ] {
            assert!(!is_disk_name(bad), "{bad}");
        }
    }
}
