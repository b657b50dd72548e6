//! Filesystem helpers shared by the backends: filesystem identification, the `FICLONE` probe
//! and call, sparse copies, faithful tree copies (for snapshots of an overlay upper layer,
//! whiteouts and `trusted.overlay.*` xattrs included) and tree removal.
//!
//! Everything here works on the paths it is given and nothing else; it never follows a
//! symlink inside a tree it copies or removes, and never spawns a process.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;

use super::{BackendError, CloneCost};

/// Linux's `_IOC` encoding of an ioctl request number (x86-64, arm64 and most others).
pub(crate) const fn ioc(dir: u64, ty: u8, nr: u8, size: usize) -> libc::Ioctl {
    ((dir << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64) as libc::Ioctl
}
/// `_IOW`.
pub(crate) const fn iow<T>(ty: u8, nr: u8) -> libc::Ioctl {
    ioc(1, ty, nr, std::mem::size_of::<T>())
}
/// `_IOR`.
pub(crate) const fn ior<T>(ty: u8, nr: u8) -> libc::Ioctl {
    ioc(2, ty, nr, std::mem::size_of::<T>())
}
/// `_IOWR`.
pub(crate) const fn iowr<T>(ty: u8, nr: u8) -> libc::Ioctl {
    ioc(3, ty, nr, std::mem::size_of::<T>())
}

/// Whether `path` is on btrfs.
pub(crate) fn is_btrfs(path: &Path) -> Result<bool, BackendError> {
    let fs = nix::sys::statfs::statfs(path)
        .map_err(|e| BackendError::io("find the filesystem of", path, e))?;
    Ok(fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Opens an unnamed read-write temporary file in `dir` (`O_TMPFILE`), or, where the filesystem
/// lacks it, a named one that is unlinked at once. Either way nothing is left behind.
fn temp_file_in(dir: &Path) -> Result<File, BackendError> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
    {
        Ok(f) => return Ok(f),
        Err(e)
            if !matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            return Err(BackendError::io("create a temporary file in", dir, e));
        }
        Err(_) => {}
    }
    for n in 0..100u32 {
        let path = dir.join(format!(".hull-probe.{}.{n}", std::process::id()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)
                    .map_err(|e| BackendError::io("remove the temporary file", &path, e))?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(BackendError::io("create a temporary file in", dir, e)),
        }
    }
    Err(BackendError::io(
        "create a temporary file in",
        dir,
        io::Error::from(io::ErrorKind::AlreadyExists),
    ))
}

/// Whether `FICLONE` works on the filesystem holding `dir`, found by reflinking one block
/// between two temporary files there.
pub(crate) fn reflink_works(dir: &Path) -> Result<bool, BackendError> {
    let src = temp_file_in(dir)?;
    let dst = temp_file_in(dir)?;
    src.write_all_at(&[0x5a; 4096], 0)
        .map_err(|e| BackendError::io("write a probe file in", dir, e))?;
    match ficlone(&src, &dst) {
        Ok(()) => Ok(true),
        Err(e) if not_supported(e) => Ok(false),
        Err(e) => Err(BackendError::io("probe reflink support in", dir, e)),
    }
}

/// Whether an errno from `FICLONE` or `copy_file_range` means "not here", as opposed to a
/// real failure.
fn not_supported(e: Errno) -> bool {
    matches!(
        e,
        Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::EINVAL | Errno::EXDEV | Errno::ENOSYS
    )
}

/// `ioctl(dst, FICLONE, src)`: makes `dst` share all of `src`'s blocks.
pub(crate) fn ficlone(src: &File, dst: &File) -> Result<(), Errno> {
    // SAFETY: FICLONE takes the source descriptor as an integer argument; both descriptors are
    // owned by live `File`s for the duration of the call and no memory is passed.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    Errno::result(rc).map(drop)
}

/// Creates `dst` (which must not exist) with `src`'s permission bits, removing it again if
/// `fill` fails.
fn create_and_fill<T>(
    src: &Path,
    dst: &Path,
    fill: impl FnOnce(&File, &File) -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    let input = File::open(src).map_err(|e| BackendError::io("open", src, e))?;
    let meta = input
        .metadata()
        .map_err(|e| BackendError::io("inspect", src, e))?;
    if !meta.is_file() {
        return Err(BackendError::InvalidPath {
            path: src.to_path_buf(),
            reason: "only regular files can be cloned",
        });
    }
    let output = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.mode() & 0o7777)
        .open(dst)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(BackendError::AlreadyExists {
                path: dst.to_path_buf(),
            });
        }
        Err(e) => return Err(BackendError::io("create", dst, e)),
    };
    match fill(&input, &output) {
        Ok(v) => Ok(v),
        Err(e) => {
            drop(output);
            let _ = std::fs::remove_file(dst);
            Err(e)
        }
    }
}

/// Reflinks `src` to a new file `dst`; fails (leaving no `dst`) where `FICLONE` does not work.
pub(crate) fn reflink_file(src: &Path, dst: &Path) -> Result<CloneCost, BackendError> {
    create_and_fill(src, dst, |input, output| {
        ficlone(input, output).map_err(|e| BackendError::io("reflink a file to", dst, e))?;
        Ok(CloneCost::Reflink)
    })
}

/// Copies `src` to a new file `dst`, copying only the data segments `SEEK_DATA`/`SEEK_HOLE`
/// report so holes stay holes. Returns the bytes of data copied.
pub(crate) fn sparse_copy_file(src: &Path, dst: &Path) -> Result<CloneCost, BackendError> {
    create_and_fill(src, dst, |input, output| {
        let bytes = sparse_copy(input, output, src, dst)?;
        Ok(CloneCost::Copied { bytes })
    })
}

/// Reflinks where the filesystem can, copies sparse where it cannot.
pub(crate) fn clone_or_copy_file(src: &Path, dst: &Path) -> Result<CloneCost, BackendError> {
    create_and_fill(src, dst, |input, output| match ficlone(input, output) {
        Ok(()) => Ok(CloneCost::Reflink),
        Err(e) if not_supported(e) => {
            let bytes = sparse_copy(input, output, src, dst)?;
            Ok(CloneCost::Copied { bytes })
        }
        Err(e) => Err(BackendError::io("reflink a file to", dst, e)),
    })
}

/// The data-copying half of [`sparse_copy_file`], on open files (`output` empty).
fn sparse_copy(input: &File, output: &File, src: &Path, dst: &Path) -> Result<u64, BackendError> {
    use nix::unistd::{Whence, lseek};
    let size = input
        .metadata()
        .map_err(|e| BackendError::io("inspect", src, e))?
        .len();
    let size = i64::try_from(size).map_err(|_| BackendError::InvalidPath {
        path: src.to_path_buf(),
        reason: "the file is too large",
    })?;
    let mut copied = 0u64;
    let mut pos: i64 = 0;
    while pos < size {
        let start = match lseek(input, pos, Whence::SeekData) {
            Ok(start) => start,
            Err(Errno::ENXIO) => break, // only a hole remains
            // No SEEK_DATA on this filesystem: everything is data.
            Err(Errno::EINVAL) => pos,
            Err(e) => return Err(BackendError::io("find data in", src, e)),
        };
        let end = match lseek(input, start, Whence::SeekHole) {
            Ok(end) => end.min(size),
            Err(Errno::EINVAL) => size,
            Err(e) => return Err(BackendError::io("find holes in", src, e)),
        };
        copy_range(input, output, start, end, src, dst)?;
        copied += (end - start) as u64;
        pos = end;
    }
    output
        .set_len(size as u64)
        .map_err(|e| BackendError::io("set the size of", dst, e))?;
    Ok(copied)
}

/// Copies bytes `[start, end)` of `input` to the same offsets of `output`: in the kernel with
/// `copy_file_range`, falling back to reads and writes where that is unavailable.
fn copy_range(
    input: &File,
    output: &File,
    start: i64,
    end: i64,
    src: &Path,
    dst: &Path,
) -> Result<(), BackendError> {
    const CHUNK: usize = 1 << 20;
    let mut off = start;
    while off < end {
        let len = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let (mut off_in, mut off_out) = (off, off);
        match nix::fcntl::copy_file_range(input, Some(&mut off_in), output, Some(&mut off_out), len)
        {
            Ok(0) => break, // the source shrank under us
            Ok(n) => off += n as i64,
            Err(Errno::EINTR) => {}
            Err(e) if not_supported(e) => break,
            Err(e) => return Err(BackendError::io("copy data to", dst, e)),
        }
    }
    let mut buf = vec![0u8; CHUNK];
    while off < end {
        let want = usize::try_from(end - off).unwrap_or(CHUNK).min(CHUNK);
        let n = input
            .read_at(&mut buf[..want], off as u64)
            .map_err(|e| BackendError::io("read", src, e))?;
        if n == 0 {
            break;
        }
        output
            .write_all_at(&buf[..n], off as u64)
            .map_err(|e| BackendError::io("write", dst, e))?;
        off += n as i64;
    }
    Ok(())
}

/// Copies the tree at `src` to `dst` (which must not exist) exactly: directories, regular
/// files, symlinks, device nodes (overlay whiteouts are 0/0 character devices), fifos and
/// sockets; regular files reflinked where the filesystem can, copied sparse where not; hard
/// links within the tree; ownership, permission bits, all extended attributes
/// (overlay's `trusted.overlay.*` included) and access/modification times. Symlinks are copied
/// as links, never followed. Returns the bytes of file data that had to be copied rather than
/// reflinked.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<u64, BackendError> {
    let mut links = HashMap::new();
    let mut copied = 0;
    copy_entry(src, dst, &mut links, &mut copied)?;
    Ok(copied)
}

/// Copies what the directory `src` holds into the existing directory `dst` (its entries as
/// [`copy_tree`] copies a tree), then `src`'s own owner, mode, xattrs and times onto `dst`.
/// Returns the bytes of file data copied rather than reflinked.
pub(crate) fn copy_into(src: &Path, dst: &Path) -> Result<u64, BackendError> {
    let mut links = HashMap::new();
    let mut copied = 0;
    let entries = std::fs::read_dir(src).map_err(|e| BackendError::io("list", src, e))?;
    for entry in entries {
        let name = entry
            .map_err(|e| BackendError::io("list", src, e))?
            .file_name();
        copy_entry(&src.join(&name), &dst.join(&name), &mut links, &mut copied)?;
    }
    let meta = std::fs::symlink_metadata(src).map_err(|e| BackendError::io("inspect", src, e))?;
    copy_metadata(&meta, src, dst)?;
    Ok(copied)
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
    copied: &mut u64,
) -> Result<(), BackendError> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    use std::os::unix::fs::DirBuilderExt;
    let meta = std::fs::symlink_metadata(src).map_err(|e| BackendError::io("inspect", src, e))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dst)
            .map_err(|e| BackendError::io("create the directory", dst, e))?;
        let entries = std::fs::read_dir(src).map_err(|e| BackendError::io("list", src, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BackendError::io("list", src, e))?;
            let name = entry.file_name();
            copy_entry(&src.join(&name), &dst.join(&name), links, copied)?;
        }
    } else if ft.is_file() {
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                return std::fs::hard_link(first, dst)
                    .map_err(|e| BackendError::io("create a hard link at", dst, e));
            }
            links.insert((meta.dev(), meta.ino()), dst.to_path_buf());
        }
        if let CloneCost::Copied { bytes } = clone_or_copy_file(src, dst)? {
            *copied += bytes;
        }
    } else if ft.is_symlink() {
        let target =
            std::fs::read_link(src).map_err(|e| BackendError::io("read the link", src, e))?;
        std::os::unix::fs::symlink(&target, dst)
            .map_err(|e| BackendError::io("create the symlink", dst, e))?;
    } else {
        let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
        mknod(
            dst,
            kind,
            Mode::from_bits_truncate(0o600),
            meta.rdev() as libc::dev_t,
        )
        .map_err(|e| BackendError::io("create the special file", dst, e))?;
    }
    copy_metadata(&meta, src, dst)
}

/// Copies ownership, permission bits, xattrs and times from `src` (whose metadata is `meta`)
/// to `dst`, in the order that keeps them all: chown first (it clears setuid bits), then
/// chmod, then xattrs (ACLs agree with the mode already), then times.
fn copy_metadata(meta: &std::fs::Metadata, src: &Path, dst: &Path) -> Result<(), BackendError> {
    let is_link = meta.file_type().is_symlink();
    let dst_meta =
        std::fs::symlink_metadata(dst).map_err(|e| BackendError::io("inspect", dst, e))?;
    if dst_meta.uid() != meta.uid() || dst_meta.gid() != meta.gid() {
        std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| BackendError::io("set the owner of", dst, e))?;
    }
    if !is_link {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| BackendError::io("set the mode of", dst, e))?;
    }
    let names = match xattr::list(src) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            return set_times(meta, dst);
        }
        Err(e) => return Err(BackendError::io("list the extended attributes of", src, e)),
    };
    for name in names {
        let Some(value) =
            xattr::get(src, &name).map_err(|e| BackendError::io("read an xattr of", src, e))?
        else {
            continue;
        };
        xattr::set(dst, &name, &value).map_err(|e| BackendError::io("set an xattr on", dst, e))?;
    }
    set_times(meta, dst)
}

fn set_times(meta: &std::fs::Metadata, dst: &Path) -> Result<(), BackendError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| BackendError::io("set the times of", dst, e))
}

/// Removes `path` and everything under it without following symlinks; a missing path is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<(), BackendError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackendError::io("inspect", path, e)),
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(path).map_err(|e| BackendError::io("remove", path, e))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| BackendError::io("remove", path, e)),
    }
}

/// Creates the directory `path` with mode 0755; `AlreadyExists` if it is there.
pub(crate) fn create_dir(path: &Path) -> Result<(), BackendError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(BackendError::AlreadyExists {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(BackendError::io("create the directory", path, e)),
    }
}

/// Creates `path` if it is missing.
pub(crate) fn ensure_dir(path: &Path) -> Result<(), BackendError> {
    match create_dir(path) {
        Err(BackendError::AlreadyExists { .. }) => Ok(()),
        other => other,
    }
}

/// Fsyncs the directory `dir`, so a rename or creation in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    hull_sys::fs::sync_dir(dir).map_err(|e| BackendError::io("sync the directory", dir, e.source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        assert_eq!(iow::<libc::c_int>(0x94, 9), libc::FICLONE);
        // FS_IOC_FSGETXATTR = _IOR('X', 31, struct fsxattr) (28 bytes).
        assert_eq!(ior::<[u8; 28]>(b'X', 31), 0x801c_581f as libc::Ioctl);
        // BTRFS_IOC_QUOTA_CTL = _IOWR(0x94, 40, 16 bytes).
        assert_eq!(iowr::<[u64; 2]>(0x94, 40), 0xc010_9428 as libc::Ioctl);
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("disk");
        let f = File::create(&src).expect("create");
        let size: u64 = 64 << 20;
        f.set_len(size).expect("truncate");
        let pattern: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&pattern, 0).expect("write head");
        f.write_all_at(&pattern, 32 << 20).expect("write middle");
        f.write_all_at(b"tail", size - 4).expect("write tail");
        f.sync_all().expect("sync");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).expect("chmod");

        let dst = dir.path().join("copy");
        let cost = sparse_copy_file(&src, &dst).expect("copy");
        let CloneCost::Copied { bytes } = cost else {
            panic!("expected a copy, got {cost:?}");
        };
        // Data segments are at least what was written and far less than the file.
        assert!(bytes >= 2 * (1 << 20) + 4, "copied {bytes}");
        assert!(bytes < 8 << 20, "copied {bytes}: holes were copied");
        assert_eq!(
            std::fs::read(&src).expect("src"),
            std::fs::read(&dst).expect("dst")
        );
        let meta = std::fs::metadata(&dst).expect("meta");
        assert_eq!(meta.len(), size);
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert!(meta.blocks() * 512 < 16 << 20, "the copy is not sparse");

        // dst must not exist.
        let err = sparse_copy_file(&src, &dst).expect_err("exists");
        assert!(matches!(err, BackendError::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn sparse_copy_of_an_all_hole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("empty");
        File::create(&src)
            .expect("create")
            .set_len(10 << 20)
            .expect("truncate");
        let dst = dir.path().join("copy");
        assert_eq!(
            sparse_copy_file(&src, &dst).expect("copy"),
            CloneCost::Copied { bytes: 0 }
        );
        assert_eq!(std::fs::metadata(&dst).expect("meta").len(), 10 << 20);
    }

    #[test]
    fn copy_tree_is_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).expect("mkdir");
        let mut f = File::create(src.join("a/file")).expect("create");
        f.write_all(b"hello").expect("write");
        std::fs::hard_link(src.join("a/file"), src.join("a/b/link")).expect("link");
        std::os::unix::fs::symlink("../file", src.join("a/b/sym")).expect("symlink");
        std::os::unix::fs::symlink("/nonexistent", src.join("dangling")).expect("symlink");
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .expect("mkfifo");
        std::fs::set_permissions(src.join("a/b"), std::fs::Permissions::from_mode(0o710))
            .expect("chmod");
        // user.* xattrs work on ext4 and tmpfs; skip the check where they do not.
        let with_xattr = xattr::set(src.join("a/file"), "user.hull", b"v").is_ok();

        let dst = dir.path().join("dst");
        copy_tree(&src, &dst).expect("copy");
        assert_eq!(std::fs::read(dst.join("a/b/link")).expect("read"), b"hello");
        let a = std::fs::metadata(dst.join("a/file")).expect("meta");
        let b = std::fs::metadata(dst.join("a/b/link")).expect("meta");
        assert_eq!(a.ino(), b.ino(), "hard link kept");
        assert_eq!(
            std::fs::read_link(dst.join("a/b/sym")).expect("readlink"),
            Path::new("../file")
        );
        assert_eq!(
            std::fs::read_link(dst.join("dangling")).expect("readlink"),
            Path::new("/nonexistent")
        );
        use std::os::unix::fs::FileTypeExt;
        assert!(
            std::fs::symlink_metadata(dst.join("fifo"))
                .expect("fifo")
                .file_type()
                .is_fifo()
        );
        let bm = std::fs::metadata(dst.join("a/b")).expect("meta");
        assert_eq!(bm.mode() & 0o7777, 0o710);
        let sm = std::fs::metadata(src.join("a/b")).expect("meta");
        assert_eq!(bm.mtime(), sm.mtime());
        assert_eq!(bm.mtime_nsec(), sm.mtime_nsec());
        if with_xattr {
            assert_eq!(
                xattr::get(dst.join("a/file"), "user.hull").expect("get"),
                Some(b"v".to_vec())
            );
        }
        remove_tree(&dst).expect("remove");
        assert!(!dst.exists());
        remove_tree(&dst).expect("removing a missing tree is fine");
    }
}
