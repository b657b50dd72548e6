//! The btrfs backend: an image is a read-only subvolume, a guest root a writable snapshot of it
//! at `guest_dir/root`, a guest snapshot a read-only snapshot at `guest_dir/snapshots/<name>`,
//! a VM disk a reflinked file, and a quota a qgroup limit.
//!
//! Everything goes through btrfs ioctls directly (subvolume create, snapshot, destroy and
//! flags; quota enable, qgroup create and limit, rescan wait; a tree search to read a limit
//! back); no tool is spawned. A quota limits the guest root's *exclusive* bytes, what the guest
//! wrote on top of the image, as a ZFS quota on a SmartOS zone's clone does; quotas are turned
//! on for the whole filesystem the first time one is set, which starts a one-time rescan that
//! `set_quota` waits for.
//!
//! This module must never delete a subvolume outside the path it was given. Subvolumes a guest
//! made inside its root (btrfs lets any user create one) are deleted with the root, and are
//! not part of a snapshot (btrfs snapshots stop at subvolume boundaries).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::fsutil::{self, ioc, ior, iow, iowr};
use super::{
    Backend, BackendError, BackendKind, CloneCost, RootSource, SNAPSHOTS_DIR, list_snapshots,
    parent_and_name, validate_snapshot_name,
};

/// The btrfs backend. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct BtrfsBackend;

const ROOT: &str = "root";
/// Rollback makes the new root here and moves the old one here; `~` is never in valid names.
const ROOT_NEW: &str = "root.new~";
const ROOT_OLD: &str = "root.old~";

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` (the name arm of its last union).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args` (with `struct btrfs_qgroup_limit` inlined).
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_fs_info_args` (fields after `nodesize` folded into `rest`).
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    rest: [u8; 1020 - 32],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args`.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - std::mem::size_of::<SearchKey>()],
}

const BTRFS_IOC_TREE_SEARCH: libc::Ioctl = iowr::<SearchArgs>(0x94, 17);
const BTRFS_IOC_INO_LOOKUP: libc::Ioctl = iowr::<InoLookupArgs>(0x94, 18);
const BTRFS_IOC_SUBVOL_CREATE: libc::Ioctl = iow::<VolArgs>(0x94, 14);
const BTRFS_IOC_SNAP_DESTROY: libc::Ioctl = iow::<VolArgs>(0x94, 15);
const BTRFS_IOC_SNAP_CREATE_V2: libc::Ioctl = iow::<VolArgsV2>(0x94, 23);
const BTRFS_IOC_FS_INFO: libc::Ioctl = ior::<FsInfoArgs>(0x94, 31);
const BTRFS_IOC_SUBVOL_GETFLAGS: libc::Ioctl = ior::<u64>(0x94, 25);
const BTRFS_IOC_SUBVOL_SETFLAGS: libc::Ioctl = iow::<u64>(0x94, 26);
const BTRFS_IOC_QUOTA_CTL: libc::Ioctl = iowr::<QuotaCtlArgs>(0x94, 40);
const BTRFS_IOC_QGROUP_CREATE: libc::Ioctl = iow::<QgroupCreateArgs>(0x94, 42);
const BTRFS_IOC_QGROUP_LIMIT: libc::Ioctl = ior::<QgroupLimitArgs>(0x94, 43);
const BTRFS_IOC_QUOTA_RESCAN_WAIT: libc::Ioctl = ioc(0, 0x94, 46, 0);

const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
const BTRFS_QGROUP_LIMIT_MAX_EXCL: u64 = 1 << 1;
/// A limit of all ones clears the limit.
const QGROUP_CLEAR: u64 = u64::MAX;
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
const BTRFS_QUOTA_TREE_OBJECTID: u64 = 8;
const BTRFS_QGROUP_LIMIT_KEY: u32 = 244;
const BTRFS_ROOT_TREE_OBJECTID: u64 = 1;
const BTRFS_ROOT_ITEM_KEY: u32 = 132;
/// The xattr that keeps an image's tree two levels deep (see [`split_root`]). `trusted.*` is
/// out of reach of a guest in its own user namespace: it can neither list nor change it.
const SPLIT_XATTR: &str = "trusted.hull.split";
/// What a btrfs leaf keeps from its node size for its header (101 bytes), one item (25) and
/// the xattr's dir item (30): the largest xattr name + value is `nodesize - XATTR_OVERHEAD`.
const XATTR_OVERHEAD: usize = 101 + 25 + 30;

/// Runs `ioctl(fd, request, arg)`.
///
/// # Safety
/// `arg` must point to a live value of the exact type the kernel reads or writes for
/// `request`.
unsafe fn ioctl<T>(file: &File, request: libc::Ioctl, arg: *mut T) -> Result<libc::c_int, Errno> {
    // SAFETY: the caller guarantees `arg` matches `request`; the descriptor is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
    Errno::result(rc)
}

fn open_dir(path: &Path) -> Result<File, BackendError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| BackendError::io("open the directory", path, e))
}

/// Copies a subvolume name into a kernel name buffer, refusing names that do not fit or that
/// hold a NUL.
fn fill_name<const N: usize>(
    buf: &mut [u8; N],
    name: &OsStr,
    path: &Path,
) -> Result<(), BackendError> {
    let bytes = name.as_bytes();
    if bytes.len() >= N || bytes.contains(&0) {
        return Err(BackendError::InvalidPath {
            path: path.to_path_buf(),
            reason: "the name is too long for a btrfs subvolume",
        });
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

fn require_btrfs(path: &Path) -> Result<(), BackendError> {
    if fsutil::is_btrfs(path)? {
        Ok(())
    } else {
        Err(BackendError::NotBtrfs {
            path: path.to_path_buf(),
        })
    }
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Whether `path` is the top directory of a btrfs subvolume (inode 256 on btrfs).
fn is_subvolume(path: &Path) -> Result<bool, BackendError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| BackendError::io("inspect", path, e))?;
    Ok(meta.is_dir() && meta.ino() == BTRFS_FIRST_FREE_OBJECTID && fsutil::is_btrfs(path)?)
}

/// Creates an empty subvolume at `path`.
fn subvol_create(path: &Path) -> Result<(), BackendError> {
    let (parent, name) = parent_and_name(path)?;
    require_btrfs(parent)?;
    let dir = open_dir(parent)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    fill_name(&mut args.name, name, path)?;
    // SAFETY: BTRFS_IOC_SUBVOL_CREATE reads a `struct btrfs_ioctl_vol_args`, mirrored by
    // `VolArgs`; `args` lives across the call.
    unsafe { ioctl(&dir, BTRFS_IOC_SUBVOL_CREATE, &mut args) }.map_err(|e| match e {
        Errno::EEXIST => BackendError::AlreadyExists {
            path: path.to_path_buf(),
        },
        e => BackendError::io("create the subvolume", path, e),
    })?;
    Ok(())
}

/// Snapshots the subvolume `src` as `dst` (which must not exist), read-only if asked.
fn snap_create(src: &Path, dst: &Path, readonly: bool) -> Result<(), BackendError> {
    let source = open_dir(src)?;
    let (parent, name) = parent_and_name(dst)?;
    require_btrfs(parent)?;
    let dir = open_dir(parent)?;
    let mut args = VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    };
    fill_name(&mut args.name, name, dst)?;
    // SAFETY: BTRFS_IOC_SNAP_CREATE_V2 reads a `struct btrfs_ioctl_vol_args_v2`, mirrored by
    // `VolArgsV2`; `args` and the source descriptor it names live across the call.
    unsafe { ioctl(&dir, BTRFS_IOC_SNAP_CREATE_V2, &mut args) }.map_err(|e| match e {
        Errno::EEXIST => BackendError::AlreadyExists {
            path: dst.to_path_buf(),
        },
        Errno::EINVAL | Errno::ENOTTY | Errno::EXDEV if !is_subvolume(src).unwrap_or(true) => {
            BackendError::InvalidPath {
                path: src.to_path_buf(),
                reason: "only a btrfs subvolume on the same filesystem can be snapshotted",
            }
        }
        e => BackendError::io("create a snapshot at", dst, e),
    })?;
    Ok(())
}

/// Deletes the subvolume at `path`.
fn subvol_delete(path: &Path) -> Result<(), BackendError> {
    let (parent, name) = parent_and_name(path)?;
    let dir = open_dir(parent)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    fill_name(&mut args.name, name, path)?;
    // SAFETY: BTRFS_IOC_SNAP_DESTROY reads a `struct btrfs_ioctl_vol_args`, mirrored by
    // `VolArgs`; `args` lives across the call.
    unsafe { ioctl(&dir, BTRFS_IOC_SNAP_DESTROY, &mut args) }
        .map_err(|e| BackendError::io("delete the subvolume", path, e))?;
    Ok(())
}

/// Deletes `path` whether it is a subvolume or a plain tree; a missing path is fine. Nested
/// subvolumes inside it (any user may create one in a directory they can write) are deleted
/// first, since btrfs refuses to delete a subvolume that holds others.
fn remove_any(path: &Path) -> Result<(), BackendError> {
    if !exists(path) {
        return Ok(());
    }
    if !is_subvolume(path)? {
        for nested in nested_subvolumes(path)? {
            remove_any(&nested)?;
        }
        return fsutil::remove_tree(path);
    }
    set_readonly(path, false)?;
    match subvol_delete(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            for nested in nested_subvolumes(path)? {
                remove_any(&nested)?;
            }
            subvol_delete(path)
        }
        other => other,
    }
}

/// The subvolumes directly nested in the tree at `top` (not those nested in them): directories
/// on btrfs with inode 256 and a device number other than their parent's.
fn nested_subvolumes(top: &Path) -> Result<Vec<PathBuf>, BackendError> {
    fn walk(dir: &Path, dev: u64, out: &mut Vec<PathBuf>) -> Result<(), BackendError> {
        let entries = std::fs::read_dir(dir).map_err(|e| BackendError::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BackendError::io("list", dir, e))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| BackendError::io("inspect", &path, e))?;
            if !meta.is_dir() {
                continue;
            }
            if meta.dev() != dev {
                if meta.ino() == BTRFS_FIRST_FREE_OBJECTID {
                    out.push(path);
                }
                continue; // another subvolume or a mount: never descend
            }
            walk(&path, dev, out)?;
        }
        Ok(())
    }
    let meta = std::fs::symlink_metadata(top).map_err(|e| BackendError::io("inspect", top, e))?;
    let mut out = Vec::new();
    if meta.is_dir() {
        walk(top, meta.dev(), &mut out)?;
    }
    Ok(out)
}

fn get_flags(dir: &File, path: &Path) -> Result<u64, BackendError> {
    let mut flags = 0u64;
    // SAFETY: BTRFS_IOC_SUBVOL_GETFLAGS writes one u64 to `flags`, which lives across the call.
    unsafe { ioctl(dir, BTRFS_IOC_SUBVOL_GETFLAGS, &mut flags) }
        .map_err(|e| BackendError::io("read the subvolume flags of", path, e))?;
    Ok(flags)
}

fn set_readonly(path: &Path, readonly: bool) -> Result<(), BackendError> {
    let dir = open_dir(path)?;
    let flags = get_flags(&dir, path)?;
    let mut want = if readonly {
        flags | BTRFS_SUBVOL_RDONLY
    } else {
        flags & !BTRFS_SUBVOL_RDONLY
    };
    if want == flags {
        return Ok(());
    }
    // SAFETY: BTRFS_IOC_SUBVOL_SETFLAGS reads one u64 from `want`, which lives across the call.
    unsafe { ioctl(&dir, BTRFS_IOC_SUBVOL_SETFLAGS, &mut want) }
        .map_err(|e| BackendError::io("set the subvolume flags of", path, e))?;
    Ok(())
}

/// Whether the subvolume at `path` is read-only.
pub fn is_readonly(path: &Path) -> Result<bool, BackendError> {
    let dir = open_dir(path)?;
    Ok(get_flags(&dir, path)? & BTRFS_SUBVOL_RDONLY != 0)
}

/// The id of the subvolume holding the open directory `dir`.
fn subvol_id(dir: &File, path: &Path) -> Result<u64, BackendError> {
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: BTRFS_IOC_INO_LOOKUP reads and writes a `struct btrfs_ioctl_ino_lookup_args`,
    // mirrored by `InoLookupArgs`; `args` lives across the call.
    unsafe { ioctl(dir, BTRFS_IOC_INO_LOOKUP, &mut args) }
        .map_err(|e| BackendError::io("find the subvolume id of", path, e))?;
    Ok(args.treeid)
}

/// Sets the exclusive-bytes limit of the subvolume at `dir`'s qgroup (`QGROUP_CLEAR` clears).
fn qgroup_limit(dir: &File, max_excl: u64) -> Result<(), Errno> {
    let mut args = QgroupLimitArgs {
        qgroupid: 0, // 0: the qgroup of the subvolume `dir` is in
        flags: BTRFS_QGROUP_LIMIT_MAX_EXCL,
        max_rfer: 0,
        max_excl,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: BTRFS_IOC_QGROUP_LIMIT reads a `struct btrfs_ioctl_qgroup_limit_args`, mirrored by
    // `QgroupLimitArgs`; `args` lives across the call.
    unsafe { ioctl(dir, BTRFS_IOC_QGROUP_LIMIT, &mut args) }.map(drop)
}

/// Turns quotas on for the filesystem holding `dir` and waits for the initial rescan.
fn quota_enable(dir: &File, path: &Path) -> Result<(), BackendError> {
    let mut args = QuotaCtlArgs {
        cmd: BTRFS_QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: BTRFS_IOC_QUOTA_CTL reads and writes a `struct btrfs_ioctl_quota_ctl_args`,
    // mirrored by `QuotaCtlArgs`; `args` lives across the call.
    unsafe { ioctl(dir, BTRFS_IOC_QUOTA_CTL, &mut args) }
        .map_err(|e| BackendError::io("enable quotas on the filesystem holding", path, e))?;
    // SAFETY: BTRFS_IOC_QUOTA_RESCAN_WAIT takes no argument; the null pointer is ignored.
    unsafe { ioctl(dir, BTRFS_IOC_QUOTA_RESCAN_WAIT, std::ptr::null_mut::<u8>()) }
        .map_err(|e| BackendError::io("wait for the quota rescan of", path, e))?;
    Ok(())
}

/// Creates the level-0 qgroup of subvolume `id` (for subvolumes made before quotas were on
/// whose qgroup went missing).
fn qgroup_create(dir: &File, path: &Path, id: u64) -> Result<(), BackendError> {
    let mut args = QgroupCreateArgs {
        create: 1,
        qgroupid: id,
    };
    // SAFETY: BTRFS_IOC_QGROUP_CREATE reads a `struct btrfs_ioctl_qgroup_create_args`,
    // mirrored by `QgroupCreateArgs`; `args` lives across the call.
    unsafe { ioctl(dir, BTRFS_IOC_QGROUP_CREATE, &mut args) }
        .map_err(|e| BackendError::io("create the qgroup of", path, e))?;
    Ok(())
}

/// The exclusive-bytes limit on the subvolume at `path`, if quotas are on and one is set.
pub fn excl_limit(path: &Path) -> Result<Option<u64>, BackendError> {
    let dir = open_dir(path)?;
    let id = subvol_id(&dir, path)?;
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: BTRFS_QUOTA_TREE_OBJECTID,
            min_objectid: 0,
            max_objectid: 0,
            min_offset: id,
            max_offset: id,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: BTRFS_QGROUP_LIMIT_KEY,
            max_type: BTRFS_QGROUP_LIMIT_KEY,
            nr_items: 1,
            ..SearchKey::default()
        },
        buf: [0; 4096 - std::mem::size_of::<SearchKey>()],
    };
    // SAFETY: BTRFS_IOC_TREE_SEARCH reads and writes a `struct btrfs_ioctl_search_args`,
    // mirrored by `SearchArgs` (4096 bytes); `args` lives across the call.
    match unsafe { ioctl(&dir, BTRFS_IOC_TREE_SEARCH, &mut args) } {
        Ok(_) => {}
        // No quota tree: quotas are off.
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(BackendError::io("read the qgroup limit of", path, e)),
    }
    if args.key.nr_items == 0 {
        return Ok(None);
    }
    // A search header (transid, objectid, offset: u64; type, len: u32) then the item:
    // struct btrfs_qgroup_limit_item { flags, max_rfer, max_excl, rsv_rfer, rsv_excl }, LE.
    let le = |at: usize| -> Option<u64> {
        let bytes = args.buf.get(at..at + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let (Some(flags), Some(max_excl)) = (le(32), le(32 + 16)) else {
        return Ok(None);
    };
    Ok((flags & BTRFS_QGROUP_LIMIT_MAX_EXCL != 0).then_some(max_excl))
}

/// Applies `bytes` as the exclusive limit of the subvolume at `path`, turning quotas on (and
/// creating the subvolume's qgroup) when needed. `None` clears the limit.
fn apply_limit(path: &Path, bytes: Option<u64>) -> Result<(), BackendError> {
    let dir = open_dir(path)?;
    let value = bytes.unwrap_or(QGROUP_CLEAR);
    match qgroup_limit(&dir, value) {
        Ok(()) => return Ok(()),
        // Quotas off: there is no limit to clear.
        Err(Errno::ENOTCONN) if bytes.is_none() => return Ok(()),
        Err(Errno::ENOTCONN) => quota_enable(&dir, path)?,
        Err(Errno::ENOENT) => qgroup_create(&dir, path, subvol_id(&dir, path)?)?,
        Err(e) => return Err(BackendError::io("set the qgroup limit of", path, e)),
    }
    match qgroup_limit(&dir, value) {
        Ok(()) => Ok(()),
        Err(Errno::ENOENT) => {
            qgroup_create(&dir, path, subvol_id(&dir, path)?)?;
            qgroup_limit(&dir, value)
                .map_err(|e| BackendError::io("set the qgroup limit of", path, e))
        }
        Err(e) => Err(BackendError::io("set the qgroup limit of", path, e)),
    }
}

/// The node size of the btrfs filesystem holding `dir`.
fn nodesize(dir: &File, path: &Path) -> Result<usize, BackendError> {
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        nodesize: 0,
        rest: [0; 1020 - 32],
    };
    // SAFETY: BTRFS_IOC_FS_INFO reads and writes a `struct btrfs_ioctl_fs_info_args` (1024
    // bytes), mirrored by `FsInfoArgs`; `args` lives across the call.
    unsafe { ioctl(dir, BTRFS_IOC_FS_INFO, &mut args) }
        .map_err(|e| BackendError::io("read the btrfs node size of", path, e))?;
    Ok(args.nodesize as usize)
}

/// Makes the tree of the subvolume at `path` at least two levels deep, so its root block is a
/// node that points at a few leaves rather than a leaf that holds the items themselves.
///
/// A snapshot copies the source's root block and takes a reference on everything that block
/// points at, and the source's root is copied on write the first time after each snapshot,
/// which takes those references once more. With a leaf root that is one reference per file
/// extent in it, so a clone of an image with large files costs more than one of a small image
/// (figures in docs/PERFORMANCE.md, "Figures behind design choices"). With a node root it is
/// one per leaf whatever the files hold. One xattr as large as a leaf can hold cannot share a
/// leaf with the directory's inode, so btrfs splits the tree; an image whose tree is deep
/// already gains one leaf (a node size, 16 KiB by default).
fn split_root(path: &Path) -> Result<(), BackendError> {
    let dir = open_dir(path)?;
    let size = nodesize(&dir, path)?
        .checked_sub(XATTR_OVERHEAD + SPLIT_XATTR.len())
        .ok_or(BackendError::InvalidPath {
            path: path.to_path_buf(),
            reason: "the btrfs node size is too small to split the image's tree",
        })?;
    xattr::set(path, SPLIT_XATTR, &vec![0u8; size])
        .map_err(|e| BackendError::io("set the tree-splitting xattr on", path, e))
}

/// The level of the root block of the subvolume at `path` as last committed (0: a leaf), or
/// `None` when the root tree holds no item for it (not committed yet). Needs CAP_SYS_ADMIN.
pub fn tree_level(path: &Path) -> Result<Option<u8>, BackendError> {
    let dir = open_dir(path)?;
    let id = subvol_id(&dir, path)?;
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: BTRFS_ROOT_TREE_OBJECTID,
            min_objectid: id,
            max_objectid: id,
            min_offset: 0,
            max_offset: u64::MAX,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: BTRFS_ROOT_ITEM_KEY,
            max_type: BTRFS_ROOT_ITEM_KEY,
            nr_items: 1,
            ..SearchKey::default()
        },
        buf: [0; 4096 - std::mem::size_of::<SearchKey>()],
    };
    // SAFETY: as in `excl_limit`: a `struct btrfs_ioctl_search_args` of 4096 bytes.
    unsafe { ioctl(&dir, BTRFS_IOC_TREE_SEARCH, &mut args) }
        .map_err(|e| BackendError::io("read the root item of", path, e))?;
    if args.key.nr_items == 0 {
        return Ok(None);
    }
    // A 32-byte search header, then struct btrfs_root_item: an inode item (160 bytes),
    // generation, root_dirid, bytenr, byte_limit, bytes_used, last_snapshot, flags (u64 each),
    // refs (u32), drop_progress (a 17-byte key), drop_level (u8), then level (u8).
    const LEVEL: usize = 32 + 160 + 7 * 8 + 4 + 17 + 1;
    Ok(args.buf.get(LEVEL).copied())
}

fn snapshot_path(guest_dir: &Path, name: &str) -> Result<PathBuf, BackendError> {
    validate_snapshot_name(name)?;
    Ok(guest_dir.join(SNAPSHOTS_DIR).join(name))
}

impl Backend for BtrfsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Btrfs
    }

    fn create_image_tree(&self, path: &Path) -> Result<(), BackendError> {
        subvol_create(path)
    }

    fn derive_image_tree(&self, parent: &Path, path: &Path) -> Result<(), BackendError> {
        snap_create(parent, path, false)
    }

    fn seal_image_tree(&self, path: &Path) -> Result<(), BackendError> {
        split_root(path)?;
        set_readonly(path, true)
    }

    fn remove_image_tree(&self, path: &Path) -> Result<(), BackendError> {
        remove_any(path)
    }

    fn clone_tree(&self, image: &Path, guest_dir: &Path) -> Result<RootSource, BackendError> {
        let root = guest_dir.join(ROOT);
        snap_create(image, &root, false)?;
        Ok(RootSource::Dir(root))
    }

    fn root_source(&self, _image: &Path, guest_dir: &Path) -> RootSource {
        RootSource::Dir(guest_dir.join(ROOT))
    }

    fn destroy_tree(&self, guest_dir: &Path) -> Result<(), BackendError> {
        let snapshots = guest_dir.join(SNAPSHOTS_DIR);
        if exists(&snapshots) {
            let entries = std::fs::read_dir(&snapshots)
                .map_err(|e| BackendError::io("list", &snapshots, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| BackendError::io("list", &snapshots, e))?;
                remove_any(&entry.path())?;
            }
            fsutil::remove_tree(&snapshots)?;
        }
        for name in [ROOT_NEW, ROOT_OLD, ROOT] {
            remove_any(&guest_dir.join(name))?;
        }
        Ok(())
    }

    fn snapshot(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError> {
        let dst = snapshot_path(guest_dir, name)?;
        if exists(&dst) {
            return Err(BackendError::SnapshotExists {
                name: name.to_owned(),
                guest_dir: guest_dir.to_path_buf(),
            });
        }
        fsutil::ensure_dir(&guest_dir.join(SNAPSHOTS_DIR))?;
        snap_create(&guest_dir.join(ROOT), &dst, true)
    }

    /// Makes a writable snapshot of the snapshot, swaps it in for the root and deletes the old
    /// root; the root's quota limit moves to the new root.
    fn rollback(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError> {
        let snap = snapshot_path(guest_dir, name)?;
        if !exists(&snap) {
            return Err(BackendError::SnapshotNotFound {
                name: name.to_owned(),
                guest_dir: guest_dir.to_path_buf(),
            });
        }
        let root = guest_dir.join(ROOT);
        let new = guest_dir.join(ROOT_NEW);
        let old = guest_dir.join(ROOT_OLD);
        // After a crash between the renames below, the root may sit at `old` only.
        let limit = if exists(&root) {
            excl_limit(&root)?
        } else if exists(&old) {
            excl_limit(&old)?
        } else {
            None
        };
        remove_any(&new)?;
        if exists(&root) {
            remove_any(&old)?;
        }
        snap_create(&snap, &new, false)?;
        if let Some(bytes) = limit
            && let Err(e) = apply_limit(&new, Some(bytes))
        {
            let _ = remove_any(&new);
            return Err(e);
        }
        if exists(&root) {
            std::fs::rename(&root, &old).map_err(|e| BackendError::io("move aside", &root, e))?;
        }
        if let Err(e) = std::fs::rename(&new, &root) {
            let _ = std::fs::rename(&old, &root);
            return Err(BackendError::io("put the rolled-back root at", &root, e));
        }
        fsutil::sync_dir(guest_dir)?;
        remove_any(&old)
    }

    fn delete_snapshot(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError> {
        let snap = snapshot_path(guest_dir, name)?;
        if !exists(&snap) {
            return Err(BackendError::SnapshotNotFound {
                name: name.to_owned(),
                guest_dir: guest_dir.to_path_buf(),
            });
        }
        remove_any(&snap)
    }

    fn snapshots(&self, guest_dir: &Path) -> Result<Vec<String>, BackendError> {
        list_snapshots(guest_dir)
    }

    fn clone_file(&self, src: &Path, dst: &Path) -> Result<CloneCost, BackendError> {
        fsutil::reflink_file(src, dst)
    }

    fn set_quota(&self, guest_dir: &Path, bytes: Option<u64>) -> Result<(), BackendError> {
        apply_limit(&guest_dir.join(ROOT), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_struct_layouts() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(std::mem::size_of::<InoLookupArgs>(), 4096);
        assert_eq!(std::mem::size_of::<SearchArgs>(), 4096);
        assert_eq!(std::mem::size_of::<SearchKey>(), 104);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
        assert_eq!(std::mem::size_of::<FsInfoArgs>(), 1024);
        assert_eq!(BTRFS_IOC_FS_INFO, 0x8400_941f as libc::Ioctl);
        // Values from <linux/btrfs.h> as compiled on x86-64.
        assert_eq!(BTRFS_IOC_SNAP_CREATE_V2, 0x5000_9417 as libc::Ioctl);
        assert_eq!(BTRFS_IOC_SUBVOL_CREATE, 0x5000_940e as libc::Ioctl);
        assert_eq!(BTRFS_IOC_SNAP_DESTROY, 0x5000_940f as libc::Ioctl);
        assert_eq!(BTRFS_IOC_SUBVOL_GETFLAGS, 0x8008_9419 as libc::Ioctl);
        assert_eq!(BTRFS_IOC_SUBVOL_SETFLAGS, 0x4008_941a as libc::Ioctl);
        assert_eq!(BTRFS_IOC_QGROUP_LIMIT, 0x8030_942b as libc::Ioctl);
        assert_eq!(BTRFS_IOC_QUOTA_RESCAN_WAIT, 0x942e as libc::Ioctl);
        assert_eq!(BTRFS_IOC_TREE_SEARCH, 0xd000_9411 as libc::Ioctl);
    }

    #[test]
    fn refuses_a_non_btrfs_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        if fsutil::is_btrfs(dir.path()).expect("statfs") {
            return;
        }
        let err = BtrfsBackend
            .create_image_tree(&dir.path().join("img"))
            .expect_err("not btrfs");
        assert!(matches!(err, BackendError::NotBtrfs { .. }), "{err}");
    }
}
