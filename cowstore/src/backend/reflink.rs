//! The reflink backend, for filesystems with `FICLONE` but no subvolumes (xfs made with
//! `-m reflink=1`).
//!
//! Guest roots use the overlayfs layout of [`super::overlay`] (image as lowerdir; overlayfs
//! reflinks a file from the image on copy-up, since both layers share the filesystem), VM disks
//! and snapshot copies of upper are reflinked with `FICLONE`. Image trees are plain
//! directories; sealing does nothing, for the reasons the overlay module gives.
//!
//! Quotas are project quotas on the guest directory, set directly with `FS_IOC_FSSETXATTR`
//! (project id + `FS_XFLAG_PROJINHERIT` on `guest_dir` and every directory and regular file
//! under it) and `quotactl_fd(Q_XSETQLIM)`; no tool is spawned. The project id is the guest
//! directory's inode number folded to 32 bits (stable across renames; two guest directories
//! could in principle fold to the same id, which would make them share one limit). The limit
//! covers everything under `guest_dir`: upper, work and the snapshot copies, whose reflinked
//! blocks xfs charges to each file that holds them. The filesystem must be mounted with
//! `prjquota` (ext4 made with `-O project,quota` works too); otherwise `set_quota` fails with
//! [`BackendError::QuotaNotEnabled`]. Symlinks and device nodes cannot carry a project id
//! through this interface and are left in project 0 (they hold no data blocks worth limiting).
//!
//! This module must never copy a disk file in full: a clone that cannot be a reflink fails.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;

use super::fsutil::{self, ior, iow};
use super::{Backend, BackendError, BackendKind, CloneCost, RootSource, list_snapshots, overlay};

/// The reflink backend. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReflinkBackend;

impl Backend for ReflinkBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Reflink
    }
    fn create_image_tree(&self, path: &Path) -> Result<(), BackendError> {
        overlay::create_image_dir(path)
    }
    fn seal_image_tree(&self, path: &Path) -> Result<(), BackendError> {
        overlay::check_image_dir(path)
    }
    fn remove_image_tree(&self, path: &Path) -> Result<(), BackendError> {
        fsutil::remove_tree(path)
    }
    fn clone_tree(&self, image: &Path, guest_dir: &Path) -> Result<RootSource, BackendError> {
        overlay::clone_layered(image, guest_dir)
    }
    fn root_source(&self, image: &Path, guest_dir: &Path) -> RootSource {
        overlay::layered_root_source(image, guest_dir)
    }
    fn destroy_tree(&self, guest_dir: &Path) -> Result<(), BackendError> {
        overlay::destroy_layered(guest_dir)
    }
    fn snapshot(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError> {
        overlay::snapshot_layered(guest_dir, name)
    }
    fn rollback(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError> {
        overlay::rollback_layered(guest_dir, name)
    }
    fn delete_snapshot(&self, guest_dir: &Path, name: &str) -> Result<(), BackendError> {
        overlay::delete_snapshot_layered(guest_dir, name)
    }
    fn snapshots(&self, guest_dir: &Path) -> Result<Vec<String>, BackendError> {
        list_snapshots(guest_dir)
    }
    fn clone_file(&self, src: &Path, dst: &Path) -> Result<CloneCost, BackendError> {
        fsutil::reflink_file(src, dst)
    }
    fn set_quota(&self, guest_dir: &Path, bytes: Option<u64>) -> Result<(), BackendError> {
        let dir = open_nofollow(guest_dir, true)?;
        let meta = dir
            .metadata()
            .map_err(|e| BackendError::io("inspect", guest_dir, e))?;
        let projid = project_id(meta.ino());
        if bytes.is_some() {
            assign_project(guest_dir, &dir, true, projid)?;
            walk_assign(guest_dir, projid)?;
        }
        set_project_limit(&dir, guest_dir, projid, bytes)
    }
}

/// `struct fsxattr` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

const FS_IOC_FSGETXATTR: libc::Ioctl = ior::<FsXattr>(b'X', 31);
const FS_IOC_FSSETXATTR: libc::Ioctl = iow::<FsXattr>(b'X', 32);
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

/// `struct fs_disk_quota` from `<linux/dqblk_xfs.h>` (the quotactl `Q_XSETQLIM` argument).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsDiskQuota {
    version: i8,
    flags: i8,
    fieldmask: u16,
    id: u32,
    blk_hardlimit: u64,
    blk_softlimit: u64,
    ino_hardlimit: u64,
    ino_softlimit: u64,
    bcount: u64,
    icount: u64,
    itimer: i32,
    btimer: i32,
    iwarns: u16,
    bwarns: u16,
    itimer_hi: i8,
    btimer_hi: i8,
    rtbtimer_hi: i8,
    padding2: i8,
    rtb_hardlimit: u64,
    rtb_softlimit: u64,
    rtbcount: u64,
    rtbtimer: i32,
    rtbwarns: u16,
    padding3: i16,
    padding4: [u8; 8],
}

const FS_DQUOT_VERSION: i8 = 1;
const FS_PROJ_QUOTA: i8 = 2;
const FS_DQ_BSOFT: u16 = 1 << 2;
const FS_DQ_BHARD: u16 = 1 << 3;
/// `QCMD(Q_XSETQLIM, PRJQUOTA)`: `Q_XSETQLIM` is `('X' << 8) + 4`, `PRJQUOTA` is 2.
const Q_XSETQLIM_PRJ: u32 = ((((b'X' as u32) << 8) + 4) << 8) | 2;

/// The project id of a guest directory: its inode number folded to 32 bits, never 0 (project 0
/// is "no project").
fn project_id(ino: u64) -> u32 {
    let folded = (ino as u32) ^ ((ino >> 32) as u32);
    if folded == 0 { 1 } else { folded }
}

fn open_nofollow(path: &Path, dir: bool) -> Result<File, BackendError> {
    let mut flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| BackendError::io("open", path, e))
}

/// Puts the open file or directory `file` (at `path`) into project `projid`; directories also
/// get `FS_XFLAG_PROJINHERIT` so what is created in them later joins the project.
fn assign_project(path: &Path, file: &File, is_dir: bool, projid: u32) -> Result<(), BackendError> {
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr`, which `FsXattr` mirrors exactly
    // (repr(C), 28 bytes); `attr` outlives the call and the descriptor is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FSGETXATTR, &mut attr) };
    Errno::result(rc).map_err(|e| quota_setup_error("read the project of", path, e))?;
    let want_flags = if is_dir {
        attr.xflags | FS_XFLAG_PROJINHERIT
    } else {
        attr.xflags
    };
    if attr.projid == projid && attr.xflags == want_flags {
        return Ok(());
    }
    attr.projid = projid;
    attr.xflags = want_flags;
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` from `attr`, which lives across the
    // call; the descriptor is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FSSETXATTR, &attr) };
    Errno::result(rc).map_err(|e| quota_setup_error("set the project of", path, e))?;
    Ok(())
}

/// Assigns `projid` to every directory and regular file below `dir`, directories first so that
/// files a running guest creates meanwhile inherit it.
fn walk_assign(dir: &Path, projid: u32) -> Result<(), BackendError> {
    let entries = std::fs::read_dir(dir).map_err(|e| BackendError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BackendError::io("list", dir, e))?;
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(|e| BackendError::io("inspect", &path, e))?;
        if !(ft.is_dir() || ft.is_file()) {
            continue;
        }
        let file = match open_nofollow(&path, ft.is_dir()) {
            Ok(f) => f,
            // A running guest may remove files while we walk.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        assign_project(&path, &file, ft.is_dir(), projid)?;
        if ft.is_dir() {
            walk_assign(&path, projid)?;
        }
    }
    Ok(())
}

/// Sets (or with `None` clears) the block hard limit of project `projid` on the filesystem
/// holding `dir`.
fn set_project_limit(
    dir: &File,
    path: &Path,
    projid: u32,
    bytes: Option<u64>,
) -> Result<(), BackendError> {
    let blocks = bytes.map_or(0, |b| b.div_ceil(512)); // quota blocks are 512-byte units
    let quota = FsDiskQuota {
        version: FS_DQUOT_VERSION,
        flags: FS_PROJ_QUOTA,
        fieldmask: FS_DQ_BHARD | FS_DQ_BSOFT,
        id: projid,
        blk_hardlimit: blocks,
        blk_softlimit: 0,
        ..FsDiskQuota::default()
    };
    // SAFETY: quotactl_fd(fd, cmd, id, addr) with Q_XSETQLIM reads one `struct fs_disk_quota`
    // from `addr`, which `FsDiskQuota` mirrors exactly (repr(C)); `quota` lives across the call
    // and the descriptor is open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            dir.as_raw_fd(),
            Q_XSETQLIM_PRJ,
            projid,
            &quota as *const FsDiskQuota,
        )
    };
    match Errno::result(rc) {
        Ok(_) => Ok(()),
        Err(e) => Err(quota_setup_error("set the project quota of", path, e)),
    }
}

/// Maps the errnos that mean "no project quotas here" to [`BackendError::QuotaNotEnabled`].
fn quota_setup_error(action: &'static str, path: &Path, e: Errno) -> BackendError {
    let hint = match e {
        Errno::ESRCH => "mount it with -o prjquota",
        Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::ENOTTY => {
            "the kernel or filesystem has no project quota support here (xfs: mount with -o \
             prjquota on a kernel with XFS quota; ext4: mkfs with -O project,quota and mount \
             with -o prjquota)"
        }
        _ => return BackendError::io(action, path, e),
    };
    BackendError::QuotaNotEnabled {
        path: path.to_path_buf(),
        hint,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_struct_layouts() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::size_of::<FsDiskQuota>(), 112);
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f as libc::Ioctl);
        assert_eq!(FS_IOC_FSSETXATTR, 0x401c_5820 as libc::Ioctl);
        assert_eq!(Q_XSETQLIM_PRJ, 0x0058_0402);
    }

    #[test]
    fn project_ids_are_never_zero() {
        assert_eq!(project_id(0), 1);
        assert_eq!(project_id(131), 131);
        assert_eq!(project_id(0x1_0000_0001), 1);
        assert_eq!(project_id(0x2_0000_0001), 3);
    }

    #[test]
    fn reflink_clone_fails_rather_than_copies() {
        let dir = tempfile::tempdir().expect("tempdir");
        if fsutil::reflink_works(dir.path()).expect("probe") {
            return; // a reflink filesystem: the root tier covers it
        }
        let src = dir.path().join("disk");
        std::fs::write(&src, [1u8; 4096]).expect("write");
        let dst = dir.path().join("clone");
        let err = ReflinkBackend
            .clone_file(&src, &dst)
            .expect_err("no FICLONE here");
        assert!(matches!(err, BackendError::Io(_)), "{err}");
        assert!(!dst.exists(), "a failed clone leaves nothing");
    }
}
