//! Copy-on-write backends: how an image tree becomes a guest's root in constant time, how a
//! disk file is cloned, how a guest's writable layer is snapshotted and limited.
//!
//! Three backends implement [`Backend`], one file each:
//! - [`btrfs`]: images are read-only subvolumes, guest roots writable snapshots, quotas qgroups;
//! - [`reflink`]: a filesystem with `FICLONE` (xfs `reflink=1`): guest roots are overlayfs with
//!   the image as lowerdir (copy-up reflinks), disks are reflinked, quotas are project quotas;
//! - [`overlay`]: anything else: overlayfs roots, disks copied sparse and that cost reported.
//!
//! This module owns the backend choice ([`detect`]), the public types, snapshot-name rules and
//! the mounting of a [`RootSource`]. It works only on paths it is given: it never chooses where
//! the data root is, never reads manifests or archives (that is `archive` and the store), and
//! never decides whether a guest is running; callers stop a guest before snapshot and rollback.

pub mod btrfs;
mod fsutil;
pub mod overlay;
pub mod reflink;

use std::path::{Path, PathBuf};

use hull_sys::IoError;

/// Which copy-on-write mechanism a data root uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// btrfs subvolumes and snapshots.
    Btrfs,
    /// A filesystem with `FICLONE` (xfs with `reflink=1`): overlayfs roots, reflinked files.
    Reflink,
    /// Any filesystem: overlayfs roots, sparse copies of files.
    Overlay,
}

impl BackendKind {
    /// The name used in configuration and output: `btrfs`, `reflink` or `overlay`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Btrfs => "btrfs",
            BackendKind::Reflink => "reflink",
            BackendKind::Overlay => "overlay",
        }
    }

    /// Parses [`BackendKind::as_str`]'s names; `xfs` is accepted for `reflink`.
    pub fn parse(s: &str) -> Option<BackendKind> {
        match s {
            "btrfs" => Some(BackendKind::Btrfs),
            "reflink" | "xfs" => Some(BackendKind::Reflink),
            "overlay" => Some(BackendKind::Overlay),
            _ => None,
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Picks the backend for the filesystem holding `dir`: btrfs gives [`BackendKind::Btrfs`]; a
/// filesystem where `FICLONE` works (probed by reflinking an unnamed temporary file inside
/// `dir`, which leaves nothing behind) gives [`BackendKind::Reflink`]; anything else
/// [`BackendKind::Overlay`].
pub fn detect(dir: &Path) -> Result<BackendKind, BackendError> {
    if fsutil::is_btrfs(dir)? {
        return Ok(BackendKind::Btrfs);
    }
    if fsutil::reflink_works(dir)? {
        return Ok(BackendKind::Reflink);
    }
    Ok(BackendKind::Overlay)
}

/// The backend object for `kind`.
pub fn open(kind: BackendKind) -> Box<dyn Backend> {
    match kind {
        BackendKind::Btrfs => Box::new(btrfs::BtrfsBackend),
        BackendKind::Reflink => Box::new(reflink::ReflinkBackend),
        BackendKind::Overlay => Box::new(overlay::OverlayBackend),
    }
}

/// Where a guest's root filesystem comes from, for the zone runtime to mount.
#[derive(Debug, Clone, PartialEq)]
pub enum RootSource {
    /// A directory to bind-mount (btrfs: a writable subvolume).
    Dir(PathBuf),
    /// An overlayfs: the image tree below, the guest's writable layer above.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
}

/// What a file clone cost (reported to the user for the overlay backend's copies).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CloneCost {
    /// The clone shares every block with its source.
    Reflink,
    /// The data was copied; holes were skipped. `bytes` is the data copied.
    Copied { bytes: u64 },
}

/// What went wrong in a backend operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A system call or filesystem operation failed: `cannot <op> <path>`, the OS error its
    /// source.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The backend cannot do this at all (e.g. a quota on the overlay backend).
    #[error("{what} is not supported by the {backend} backend")]
    Unsupported { what: String, backend: &'static str },
    /// A snapshot name broke the naming rules (see [`validate_snapshot_name`]).
    #[error("invalid snapshot name {name:?}: {reason}")]
    InvalidSnapshotName { name: String, reason: &'static str },
    /// The named snapshot does not exist.
    #[error("snapshot {name:?} does not exist in {}", guest_dir.display())]
    SnapshotNotFound { name: String, guest_dir: PathBuf },
    /// A snapshot of that name exists already.
    #[error("snapshot {name:?} already exists in {}", guest_dir.display())]
    SnapshotExists { name: String, guest_dir: PathBuf },
    /// A path that must not exist yet does.
    #[error("{} already exists", path.display())]
    AlreadyExists { path: PathBuf },
    /// A path cannot be used (no file name, not absolute where required, unusable characters).
    #[error("the path {} cannot be used: {reason}", path.display())]
    InvalidPath { path: PathBuf, reason: &'static str },
    /// The btrfs backend was given a path on another filesystem.
    #[error("{} is not on a btrfs filesystem", path.display())]
    NotBtrfs { path: PathBuf },
    /// The filesystem has no (project) quota enforcement turned on.
    #[error(
        "quotas are not enabled on the filesystem holding {}: {hint}",
        path.display()
    )]
    QuotaNotEnabled {
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl BackendError {
    pub(crate) fn io(action: &'static str, path: &Path, source: impl Into<std::io::Error>) -> Self {
        BackendError::Io(IoError::new(action, path, source.into()))
    }

    /// The errno of the underlying system call, when there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BackendError::Io(IoError { source, .. })
            | BackendError::QuotaNotEnabled { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A copy-on-write backend. All paths are absolute or relative to the caller's cwd; the
/// backend never invents paths outside `image`, `guest_dir` and the files it is given.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// An empty image tree to unpack into (btrfs: a new subvolume; others: a directory).
    /// `path` must not exist; its parent must.
    fn create_image_tree(&self, path: &Path) -> Result<(), BackendError>;
    /// An image tree at `path` (which must not exist) that starts as a copy of the image
    /// tree `parent`, for a layer to be unpacked onto (btrfs: a writable snapshot, sharing
    /// every block; others: a copy of the tree, its files reflinked where the filesystem
    /// can). Sealed by [`Backend::seal_image_tree`] like a new tree.
    fn derive_image_tree(&self, parent: &Path, path: &Path) -> Result<(), BackendError> {
        fsutil::copy_tree(parent, path).map(|_| ())
    }
    /// Makes an unpacked image tree read-only (btrfs: the subvolume's read-only flag; others:
    /// nothing, see the backend's docs).
    fn seal_image_tree(&self, path: &Path) -> Result<(), BackendError>;
    /// Removes an image tree (btrfs: deletes the subvolume, clearing read-only first).
    fn remove_image_tree(&self, path: &Path) -> Result<(), BackendError>;
    /// Makes a guest's root from an image tree inside `guest_dir` (an existing directory) in
    /// constant time (btrfs: a writable snapshot at `guest_dir/root`; reflink and overlay:
    /// `guest_dir/upper` and `guest_dir/work`, with the image as lowerdir). Returns how to
    /// mount it.
    fn clone_tree(&self, image: &Path, guest_dir: &Path) -> Result<RootSource, BackendError>;
    /// The root source of an existing guest clone (the same as `clone_tree` returned).
    fn root_source(&self, image: &Path, guest_dir: &Path) -> RootSource;
    /// Removes what `clone_tree` and `snapshot` made in `guest_dir`, leaving `guest_dir`.
    fn destroy_tree(&self, guest_dir: &Path) -> Result<(), BackendError>;
    /// Snapshots the guest's writable layer as `guest_dir/snapshots/<name>` (btrfs: a
    /// read-only snapshot; others: a copy of upper, reflinked where possible). The guest must
    /// be stopped (its root not mounted).
    fn snapshot(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError>;
    /// Replaces the guest's writable layer with the named snapshot's content; the snapshot
    /// stays. The guest must be stopped.
    fn rollback(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError>;
    /// Deletes the named snapshot.
    fn delete_snapshot(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError>;
    /// The guest's snapshot names, sorted.
    fn snapshots(&self, guest_dir: &Path) -> Result<Vec<String>, BackendError>;
    /// Clones a disk file to `dst` (which must not exist): `FICLONE` on btrfs and reflink;
    /// a sparse copy (`SEEK_DATA`/`SEEK_HOLE`) on overlay, reporting the bytes copied.
    fn clone_file(&self, src: &Path, dst: &Path) -> Result<CloneCost, BackendError>;
    /// Limits the guest's writable space to `bytes` (btrfs: qgroup exclusive limit on the
    /// root subvolume; reflink: project quota on `guest_dir`; overlay: `Unsupported`). `None`
    /// removes the limit (on overlay there is none, so `None` succeeds). Works on a running
    /// guest.
    fn set_quota(&self, guest_dir: &Path, bytes: Option<u64>) -> Result<(), BackendError>;
}

/// The directory holding a guest's snapshots, in every backend.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// The longest snapshot name accepted.
pub const SNAPSHOT_NAME_MAX: usize = 64;

/// Copies what the directory `src` holds into the existing directory `dst`, exactly (see
/// [`fsutil::copy_into`]: reflinked where the file system can); the bytes copied.
pub(crate) fn copy_into(src: &Path, dst: &Path) -> Result<u64, BackendError> {
    fsutil::copy_into(src, dst)
}

/// Checks a snapshot name: 1 to 64 characters from `[A-Za-z0-9-_.:%]`, and not `.` or `..`.
/// (SmartOS's snapshot names follow ZFS's rules, which allow the same set.)
pub fn validate_snapshot_name(name: &str) -> Result<(), BackendError> {
    let bad = |reason| {
        Err(BackendError::InvalidSnapshotName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > SNAPSHOT_NAME_MAX {
        return bad("it is longer than 64 characters");
    }
    if name == "." || name == ".." {
        return bad("it is a relative directory name");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'%'))
    {
        return bad("only letters, digits and - _ . : % are allowed");
    }
    Ok(())
}

/// Lists valid snapshot names under `guest_dir/snapshots` (temporary entries, whose names are
/// never valid snapshot names, are skipped), sorted.
fn list_snapshots(guest_dir: &Path) -> Result<Vec<String>, BackendError> {
    let dir = guest_dir.join(SNAPSHOTS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BackendError::io("list snapshots in", &dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BackendError::io("list snapshots in", &dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && validate_snapshot_name(name).is_ok()
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Mounts a [`RootSource`] at `target` (an existing directory): an overlayfs for
/// [`RootSource::Overlay`], a bind mount for [`RootSource::Dir`].
pub fn mount_root(src: &RootSource, target: &Path) -> Result<(), BackendError> {
    use nix::mount::{MsFlags, mount};
    match src {
        RootSource::Dir(dir) => mount(
            Some(dir.as_path()),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| BackendError::io("bind-mount a guest root on", target, e)),
        RootSource::Overlay { lower, upper, work } => {
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                overlay_option_path(lower)?,
                overlay_option_path(upper)?,
                overlay_option_path(work)?
            );
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(data.as_str()),
            )
            .map_err(|e| BackendError::io("mount an overlay guest root on", target, e))
        }
    }
}

/// Unmounts what [`mount_root`] mounted at `target`.
pub fn unmount_root(target: &Path) -> Result<(), BackendError> {
    nix::mount::umount2(target, nix::mount::MntFlags::UMOUNT_NOFOLLOW)
        .map_err(|e| BackendError::io("unmount the guest root at", target, e))
}

/// A path as overlayfs's mount options need it: `,`, `:` and `\` escaped with `\`; a path that
/// is not UTF-8 or holds a newline is refused rather than guessed at.
fn overlay_option_path(path: &Path) -> Result<String, BackendError> {
    let invalid = |reason| BackendError::InvalidPath {
        path: path.to_path_buf(),
        reason,
    };
    let s = path
        .to_str()
        .ok_or_else(|| invalid("overlay mount options need UTF-8 paths"))?;
    if s.contains('\n') {
        return Err(invalid("overlay mount options cannot hold a newline"));
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

/// Splits `path` into its parent directory and final name, refusing `..`-style endings.
fn parent_and_name(path: &Path) -> Result<(&Path, &std::ffi::OsStr), BackendError> {
    let name = path.file_name().ok_or_else(|| BackendError::InvalidPath {
        path: path.to_path_buf(),
        reason: "it has no final name",
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in [
            BackendKind::Btrfs,
            BackendKind::Reflink,
            BackendKind::Overlay,
        ] {
            assert_eq!(BackendKind::parse(kind.as_str()), Some(kind));
            assert_eq!(open(kind).kind(), kind);
        }
        assert_eq!(BackendKind::parse("xfs"), Some(BackendKind::Reflink));
        assert_eq!(BackendKind::parse("zfs"), None);
    }

    #[test]
    fn snapshot_names_are_checked() {
        for bad in [
            "",
            ".",
            "..",
            "/",
            "a/b",
            "a b",
            "é",
            "x\n",
            &"a".repeat(65),
        ] {
            let err = validate_snapshot_name(bad).expect_err(bad);
            assert!(
                matches!(err, BackendError::InvalidSnapshotName { .. }),
                "{bad:?}: {err}"
            );
        }
        for good in [
            "a",
            "before-upgrade",
            "2026-11-21T08:00:00",
            "x_y.z%1",
            "...",
            &"a".repeat(64),
        ] {
            validate_snapshot_name(good).expect(good);
        }
    }

    #[test]
    fn overlay_paths_are_escaped() {
        assert_eq!(
            overlay_option_path(Path::new("/a,b:c\\d")).expect("valid"),
            "/a\\,b\\:c\\\\d"
        );
        assert!(overlay_option_path(Path::new("/a\nb")).is_err());
    }

    #[test]
    fn detect_on_a_tempdir_matches_the_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kind = detect(dir.path()).expect("detect");
        // What the probe found must agree with the filesystem type.
        let fs = nix::sys::statfs::statfs(dir.path()).expect("statfs");
        let magic = fs.filesystem_type();
        use nix::sys::statfs::{BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
        if magic == BTRFS_SUPER_MAGIC {
            assert_eq!(kind, BackendKind::Btrfs);
        } else if magic == EXT4_SUPER_MAGIC || magic == TMPFS_MAGIC {
            assert_eq!(kind, BackendKind::Overlay);
        } else if magic == XFS_SUPER_MAGIC {
            assert_ne!(kind, BackendKind::Btrfs);
        }
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0);
    }

    #[test]
    fn detect_on_tmpfs_says_overlay() {
        // /dev/shm is a tmpfs on every Linux host we run on; tmpfs has no FICLONE.
        let shm = Path::new("/dev/shm");
        let Ok(fs) = nix::sys::statfs::statfs(shm) else {
            return;
        };
        if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
            return;
        }
        let Ok(dir) = tempfile::tempdir_in(shm) else {
            return;
        };
        assert_eq!(detect(dir.path()).expect("detect"), BackendKind::Overlay);
    }

    #[test]
    fn detect_reports_a_missing_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = detect(&dir.path().join("missing")).expect_err("missing dir");
        assert!(matches!(err, BackendError::Io(_)), "{err}");
    }
}
