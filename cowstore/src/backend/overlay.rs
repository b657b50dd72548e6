//! The overlay backend, for filesystems with neither btrfs subvolumes nor reflinks (ext4,
//! tmpfs, ...), and the overlayfs guest-root layout it shares with the reflink backend.
//!
//! Layout of a guest directory: `upper/` (the guest's writable layer), `work/` (overlayfs's
//! scratch directory, same filesystem as upper) and `snapshots/<name>/` (copies of upper).
//! An image tree is a plain directory used only as a lowerdir. Sealing it does nothing: it is
//! never handed out writable (overlayfs never writes to a lowerdir), and changing its modes or
//! setting the immutable flag would change what guests see (overlayfs copies such flags up).
//!
//! VM disks are never put on an overlay (overlayfs copies a whole file up on its first write):
//! `clone_file` makes a sparse copy and reports the bytes it copied. Quotas are not available
//! and say so. This module must never mount anything itself (that is [`super::mount_root`],
//! called by the zone runtime) and never touches a guest that is running: callers stop it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::fsutil;
use super::{
    Backend, BackendError, BackendKind, CloneCost, RootSource, SNAPSHOTS_DIR, list_snapshots,
    validate_snapshot_name,
};

/// The overlay backend. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct OverlayBackend;

const UPPER: &str = "upper";
const WORK: &str = "work";
/// Rollback builds the new upper here, then swaps it in. `~` never appears in valid names.
const UPPER_NEW: &str = "upper.new~";
const UPPER_OLD: &str = "upper.old~";

impl Backend for OverlayBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Overlay
    }
    fn create_image_tree(&self, path: &Path) -> Result<(), BackendError> {
        create_image_dir(path)
    }
    fn seal_image_tree(&self, path: &Path) -> Result<(), BackendError> {
        check_image_dir(path)
    }
    fn remove_image_tree(&self, path: &Path) -> Result<(), BackendError> {
        fsutil::remove_tree(path)
    }
    fn clone_tree(&self, image: &Path, guest_dir: &Path) -> Result<RootSource, BackendError> {
        clone_layered(image, guest_dir)
    }
    fn root_source(&self, image: &Path, guest_dir: &Path) -> RootSource {
        layered_root_source(image, guest_dir)
    }
    fn destroy_tree(&self, guest_dir: &Path) -> Result<(), BackendError> {
        destroy_layered(guest_dir)
    }
    fn snapshot(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError> {
        snapshot_layered(guest_dir, name)
    }
    fn rollback(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError> {
        rollback_layered(guest_dir, name)
    }
    fn delete_snapshot(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError> {
        delete_snapshot_layered(guest_dir, name)
    }
    fn snapshots(&self, guest_dir: &Path) -> Result<Vec<String>, BackendError> {
        list_snapshots(guest_dir)
    }
    fn clone_file(&self, src: &Path, dst: &Path) -> Result<CloneCost, BackendError> {
        fsutil::sparse_copy_file(src, dst)
    }
    /// `Some(_)` is refused as [`BackendError::Unsupported`]; `None` (no limit) is what the
    /// overlay backend always has, so it succeeds.
    fn set_quota(&self, _guest_dir: &Path, bytes: Option<u64>) -> Result<(), BackendError> {
        match bytes {
            None => Ok(()),
            Some(_) => Err(BackendError::Unsupported {
                what: "a quota on a guest's writable space".to_owned(),
                backend: BackendKind::Overlay.as_str(),
            }),
        }
    }
}

/// An image tree for the overlay-based backends: a plain directory (parent must exist).
pub(crate) fn create_image_dir(path: &Path) -> Result<(), BackendError> {
    fsutil::create_dir(path)
}

/// Checks that an image tree exists and is a directory.
pub(crate) fn check_image_dir(path: &Path) -> Result<(), BackendError> {
    let meta = std::fs::metadata(path).map_err(|e| BackendError::io("inspect", path, e))?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(BackendError::InvalidPath {
            path: path.to_path_buf(),
            reason: "an image tree must be a directory",
        })
    }
}

/// The overlay root of a guest: the image below `guest_dir/upper`.
pub(crate) fn layered_root_source(image: &Path, guest_dir: &Path) -> RootSource {
    RootSource::Overlay {
        lower: image.to_path_buf(),
        upper: guest_dir.join(UPPER),
        work: guest_dir.join(WORK),
    }
}

/// Creates `guest_dir/upper` and `guest_dir/work`: two empty directories, whatever the image's
/// size. The upper directory takes the image root's owner and mode, since overlayfs shows the
/// upper root's attributes as the guest's `/`.
pub(crate) fn clone_layered(image: &Path, guest_dir: &Path) -> Result<RootSource, BackendError> {
    let image_meta =
        std::fs::metadata(image).map_err(|e| BackendError::io("inspect the image", image, e))?;
    if !image_meta.is_dir() {
        return Err(BackendError::InvalidPath {
            path: image.to_path_buf(),
            reason: "an image tree must be a directory",
        });
    }
    let upper = guest_dir.join(UPPER);
    let work = guest_dir.join(WORK);
    fsutil::create_dir(&upper)?;
    let made = (|| {
        std::os::unix::fs::chown(&upper, Some(image_meta.uid()), Some(image_meta.gid()))
            .map_err(|e| BackendError::io("set the owner of", &upper, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            &upper,
            std::fs::Permissions::from_mode(image_meta.mode() & 0o7777),
        )
        .map_err(|e| BackendError::io("set the mode of", &upper, e))?;
        fsutil::create_dir(&work)
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_dir(&upper);
        return Err(e);
    }
    // The caller records the guest next; the layers it points at must survive a crash.
    fsutil::sync_dir(guest_dir)?;
    Ok(layered_root_source(image, guest_dir))
}

/// Removes upper, work, snapshots and any leftovers of an interrupted rollback.
pub(crate) fn destroy_layered(guest_dir: &Path) -> Result<(), BackendError> {
    for name in [UPPER, WORK, SNAPSHOTS_DIR, UPPER_NEW, UPPER_OLD] {
        fsutil::remove_tree(&guest_dir.join(name))?;
    }
    Ok(())
}

/// The path of snapshot `name`, after checking the name.
fn snapshot_path(guest_dir: &Path, name: &str) -> Result<std::path::PathBuf, BackendError> {
    validate_snapshot_name(name)?;
    Ok(guest_dir.join(SNAPSHOTS_DIR).join(name))
}

/// Copies upper to `snapshots/<name>` (reflinked where the filesystem can), through a
/// temporary name so a crash never leaves a half snapshot under a valid name.
pub(crate) fn snapshot_layered(guest_dir: &Path, name: &str) -> Result<(), BackendError> {
    let dst = snapshot_path(guest_dir, name)?;
    let upper = guest_dir.join(UPPER);
    if std::fs::symlink_metadata(&dst).is_ok() {
        return Err(BackendError::SnapshotExists {
            name: name.to_owned(),
            guest_dir: guest_dir.to_path_buf(),
        });
    }
    let snapshots = guest_dir.join(SNAPSHOTS_DIR);
    fsutil::ensure_dir(&snapshots)?;
    let tmp = snapshots.join(format!("{name}~tmp"));
    fsutil::remove_tree(&tmp)?;
    if let Err(e) = fsutil::copy_tree(&upper, &tmp) {
        let _ = fsutil::remove_tree(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dst).map_err(|e| BackendError::io("name the snapshot", &dst, e))?;
    fsutil::sync_dir(&snapshots)
}

/// Replaces upper with a copy of `snapshots/<name>` and empties work.
pub(crate) fn rollback_layered(guest_dir: &Path, name: &str) -> Result<(), BackendError> {
    let snap = snapshot_path(guest_dir, name)?;
    if std::fs::symlink_metadata(&snap).is_err() {
        return Err(BackendError::SnapshotNotFound {
            name: name.to_owned(),
            guest_dir: guest_dir.to_path_buf(),
        });
    }
    let upper = guest_dir.join(UPPER);
    let new = guest_dir.join(UPPER_NEW);
    let old = guest_dir.join(UPPER_OLD);
    fsutil::remove_tree(&new)?;
    // After a crash between the renames below, upper may sit at `old` only; keep it until
    // the new upper is in place.
    let has_upper = std::fs::symlink_metadata(&upper).is_ok();
    if has_upper {
        fsutil::remove_tree(&old)?;
    }
    if let Err(e) = fsutil::copy_tree(&snap, &new) {
        let _ = fsutil::remove_tree(&new);
        return Err(e);
    }
    if has_upper {
        std::fs::rename(&upper, &old).map_err(|e| BackendError::io("move aside", &upper, e))?;
    }
    if let Err(e) = std::fs::rename(&new, &upper) {
        let _ = std::fs::rename(&old, &upper);
        return Err(BackendError::io("put the snapshot's copy at", &upper, e));
    }
    fsutil::sync_dir(guest_dir)?;
    fsutil::remove_tree(&old)?;
    // Overlayfs's scratch space belongs to the layer it served.
    let work = guest_dir.join(WORK);
    fsutil::remove_tree(&work)?;
    fsutil::create_dir(&work)
}

/// Removes `snapshots/<name>`.
pub(crate) fn delete_snapshot_layered(guest_dir: &Path, name: &str) -> Result<(), BackendError> {
    let snap = snapshot_path(guest_dir, name)?;
    if std::fs::symlink_metadata(&snap).is_err() {
        return Err(BackendError::SnapshotNotFound {
            name: name.to_owned(),
            guest_dir: guest_dir.to_path_buf(),
        });
    }
    fsutil::remove_tree(&snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshot bookkeeping on the upper layer works unprivileged (no mount needed).
    #[test]
    fn snapshot_rollback_and_delete_on_upper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("image");
        let guest = dir.path().join("guest");
        std::fs::create_dir(&guest).expect("guest dir");
        let b = OverlayBackend;
        b.create_image_tree(&image).expect("image");
        std::fs::write(image.join("etc-motd"), "image").expect("write");
        b.seal_image_tree(&image).expect("seal");
        let src = b.clone_tree(&image, &guest).expect("clone");
        assert_eq!(src, b.root_source(&image, &guest));
        let RootSource::Overlay { upper, .. } = src else {
            panic!("overlay backend gave {src:?}");
        };
        std::fs::write(upper.join("a"), "one").expect("write");
        b.snapshot(&guest, "s1").expect("snapshot");
        let err = b.snapshot(&guest, "s1").expect_err("duplicate");
        assert!(matches!(err, BackendError::SnapshotExists { .. }), "{err}");
        let err = b.snapshot(&guest, "../x").expect_err("bad name");
        assert!(
            matches!(err, BackendError::InvalidSnapshotName { .. }),
            "{err}"
        );
        std::fs::write(upper.join("a"), "two").expect("write");
        std::fs::write(upper.join("b"), "new").expect("write");
        b.rollback(&guest, "s1").expect("rollback");
        assert_eq!(
            std::fs::read_to_string(upper.join("a")).expect("read"),
            "one"
        );
        assert!(!upper.join("b").exists());
        assert_eq!(b.snapshots(&guest).expect("list"), vec!["s1".to_owned()]);
        // A crash between rollback's renames leaves upper only at its temporary name.
        std::fs::rename(&upper, guest.join(UPPER_OLD)).expect("simulate a crash");
        b.rollback(&guest, "s1").expect("rollback after a crash");
        assert_eq!(
            std::fs::read_to_string(upper.join("a")).expect("read"),
            "one"
        );
        assert!(!guest.join(UPPER_OLD).exists());
        let err = b.rollback(&guest, "nope").expect_err("missing");
        assert!(
            matches!(err, BackendError::SnapshotNotFound { .. }),
            "{err}"
        );
        b.delete_snapshot(&guest, "s1").expect("delete");
        assert!(b.snapshots(&guest).expect("list").is_empty());
        b.destroy_tree(&guest).expect("destroy");
        assert_eq!(std::fs::read_dir(&guest).expect("read").count(), 0);
        b.remove_image_tree(&image).expect("remove image");
        assert!(!image.exists());
    }

    #[test]
    fn quota_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = OverlayBackend
            .set_quota(dir.path(), Some(1 << 30))
            .expect_err("overlay has no quota");
        assert!(
            matches!(
                err,
                BackendError::Unsupported {
                    backend: "overlay",
                    ..
                }
            ),
            "{err}"
        );
        OverlayBackend
            .set_quota(dir.path(), None)
            .expect("no limit is fine");
    }

    #[test]
    fn clone_file_reports_the_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("disk");
        std::fs::write(&src, vec![7u8; 8192]).expect("write");
        let cost = OverlayBackend
            .clone_file(&src, &dir.path().join("copy"))
            .expect("clone");
        assert_eq!(cost, CloneCost::Copied { bytes: 8192 });
    }
}
