//! Replacing a file whole: the new bytes go to a temp file in the same directory, which is
//! renamed over the target, so a reader or a crash sees the old content or the new, never
//! a torn file.
//!
//! Two strengths, chosen by the caller ([`WriteOptions::durable`]): durable (the temp file
//! fsynced before the rename and the directory fsynced after it, so the new content survives
//! a host crash once the call returns) and runtime (no fsync: a process crash still leaves
//! one version whole, and after a host crash the state it describes is gone anyway). Which
//! files need which, and their modes, are the callers' business, never this module's.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::IoError;

/// How [`write_atomic_with`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits of the new file, before the umask (0o666, as `File::create`, in
    /// [`WriteOptions::DURABLE`] and [`WriteOptions::RUNTIME`]).
    pub mode: u32,
    /// Fsync the file before the rename and the directory after it; otherwise neither, and
    /// the file is put in place with [`swap_into_place`].
    pub durable: bool,
}

impl WriteOptions {
    /// Survives a host crash once written.
    pub const DURABLE: WriteOptions = WriteOptions {
        mode: 0o666,
        durable: true,
    };
    /// Atomic for readers and process crashes only.
    pub const RUNTIME: WriteOptions = WriteOptions {
        mode: 0o666,
        durable: false,
    };

    /// These options with the new file's permission bits set to `mode`.
    pub const fn mode(self, mode: u32) -> WriteOptions {
        WriteOptions { mode, ..self }
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new content whole, and the
/// new content survives a host crash once this returns ([`WriteOptions::DURABLE`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    write_atomic_with(path, bytes, WriteOptions::DURABLE)
}

/// Writes `bytes` to `path` through a temp file in the same directory (`.<name>.tmp-<pid>.<n>`,
/// removed again on failure), renamed over `path`.
///
/// Errors name the step: `create`, `write` and `fsync` the temp file, `rename into place`
/// the target, `fsync directory` its directory.
pub fn write_atomic_with(path: &Path, bytes: &[u8], opts: WriteOptions) -> Result<(), IoError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = temp_path(dir, path)?;
    let result = (|| {
        // Not create_new: a temp file a crash left under this very name (same pid, same
        // count, after a reboot) is reused rather than failing the write. No symlink is
        // followed there.
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(opts.mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(IoError::wrap("create", &tmp))?;
        f.write_all(bytes).map_err(IoError::wrap("write", &tmp))?;
        if !opts.durable {
            return swap_into_place(&tmp, path).map_err(IoError::wrap("rename into place", path));
        }
        f.sync_all().map_err(IoError::wrap("fsync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(IoError::wrap("rename into place", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A temp name beside `path`, unique in this process and among live processes.
fn temp_path(dir: &Path, path: &Path) -> Result<PathBuf, IoError> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name");
        return Err(IoError::new("create", path, e));
    };
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp-{}.{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(dir.join(tmp))
}

/// Fsyncs a directory so that the creations, renames and removals in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(IoError::wrap("fsync directory", dir))
}

/// Puts the file `tmp` in the place of `target` atomically, as rename(2) does, but without
/// making the file system flush `tmp`'s data first: ext4 and btrfs do that on a rename over an
/// existing file (ext4 auto_da_alloc; cost in docs/PERFORMANCE.md, "Figures behind design
/// choices"), and runtime state needs no such care. Exchanges the two names (RENAME_EXCHANGE,
/// so readers see the old or the new file whole) and removes the old one; a plain rename when
/// `target` is absent or the file system cannot exchange.
pub fn swap_into_place(tmp: &Path, target: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (from, to) = (c(tmp)?, c(target)?);
    // SAFETY: renameat2 with two NUL-terminated paths that live across the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return std::fs::remove_file(tmp);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            std::fs::rename(tmp, target)
        }
        _ => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_creates_and_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.json");
        for opts in [WriteOptions::DURABLE, WriteOptions::RUNTIME] {
            write_atomic_with(&p, b"one", opts).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"one");
            write_atomic_with(&p, b"two", opts).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"two");
            assert_eq!(names(dir.path()), ["vm.json"]);
            std::fs::remove_file(&p).unwrap();
        }
        write_atomic(&p, b"three").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
    }

    #[test]
    fn the_new_file_has_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("private");
        write_atomic_with(&p, b"x", WriteOptions::DURABLE.mode(0o600)).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_write_names_the_step_and_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory in the target's place: the rename fails.
        let p = dir.path().join("busy");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"").unwrap();
        // (Durable only: RENAME_EXCHANGE would swap a file and a directory.)
        let e = write_atomic(&p, b"x").unwrap_err();
        assert_eq!(e.op, "rename into place");
        assert_eq!(e.path, p);
        assert_eq!(
            e.to_string(),
            format!("cannot rename into place {}", p.display())
        );
        assert_eq!(names(dir.path()), ["busy"]);
        for opts in [WriteOptions::DURABLE, WriteOptions::RUNTIME] {
            let e = write_atomic_with(&dir.path().join("no/such/dir"), b"x", opts).unwrap_err();
            assert_eq!(e.op, "create");
            assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
        }
        let e = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert_eq!(e.source.to_string(), "no file name");
    }

    #[test]
    fn sync_dir_names_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        sync_dir(dir.path()).unwrap();
        let gone = dir.path().join("gone");
        let e = sync_dir(&gone).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot fsync directory {}", gone.display())
        );
    }

    #[test]
    fn swap_into_place_replaces_and_creates() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, target) = (dir.path().join("t.tmp"), dir.path().join("state.json"));
        std::fs::write(&tmp, "one").unwrap();
        swap_into_place(&tmp, &target).unwrap();
        std::fs::write(&tmp, "two").unwrap();
        swap_into_place(&tmp, &target).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "two");
        assert!(!tmp.exists());
        let missing = swap_into_place(&dir.path().join("nope"), &target);
        assert!(missing.is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "two");
    }
}
