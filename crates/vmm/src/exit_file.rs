//! `--exit-file PATH`: one JSON object saying how the VMM ended, for a supervisor that should
//! not have to parse stderr. Written atomically (a temp file in the same directory, renamed
//! over PATH) as the last thing before the process exits.
//!
//! The temp file and a descriptor of its directory are opened at startup, before any seccomp
//! filter: afterwards no thread may open files. At exit the main thread writes the temp file
//! and renames it with `renameat` relative to that directory descriptor, the one rename its
//! filter allows. Files are created with the VMM's own credentials. The record itself is
//! [`hull_vmm_proto::ExitRecord`], which zoned reads.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hull_vmm_proto::ExitRecord;

/// Errors from preparing or writing the exit file.
#[derive(Debug, thiserror::Error)]
pub enum ExitFileError {
    #[error("exit file path {0} has no file name")]
    NoName(PathBuf),
    #[error("cannot open the exit file's directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the exit file's temp file in {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the exit file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A prepared exit file: its directory, the open temp file and the names to rename between.
#[derive(Debug)]
pub struct ExitFile {
    path: PathBuf,
    dir: OwnedFd,
    name: CString,
    tmp_name: CString,
    tmp: File,
    committed: bool,
}

fn cstring(s: &OsStr) -> CString {
    // A path component from the OS has no NUL.
    CString::new(s.as_bytes()).expect("path components have no NUL byte")
}

impl ExitFile {
    /// Opens PATH's directory and creates the temp file next to PATH (`.NAME.PID.tmp`).
    pub fn create(path: &Path) -> Result<Self, ExitFileError> {
        let name = path
            .file_name()
            .ok_or_else(|| ExitFileError::NoName(path.to_owned()))?;
        let dir_path = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir_err = |source| ExitFileError::Dir {
            path: dir_path.to_owned(),
            source,
        };
        let c_dir = cstring(dir_path.as_os_str());
        // SAFETY: a plain open of a NUL-terminated path; the result is checked.
        let dfd = unsafe {
            libc::open(
                c_dir.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if dfd < 0 {
            return Err(dir_err(std::io::Error::last_os_error()));
        }
        // SAFETY: dfd is a new fd owned by nothing else.
        let dir = unsafe { OwnedFd::from_raw_fd(dfd) };
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp_name = cstring(&tmp);
        // SAFETY: openat relative to our directory fd with a NUL-terminated name; the result
        // is checked. O_NOFOLLOW: a symlink planted at the temp name is refused.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                tmp_name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            return Err(ExitFileError::Create {
                path: dir_path.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(ExitFile {
            path: path.to_owned(),
            // SAFETY: fd is a new fd owned by nothing else.
            tmp: File::from(unsafe { OwnedFd::from_raw_fd(fd) }),
            dir,
            name: cstring(name),
            tmp_name,
            committed: false,
        })
    }

    /// The directory fd renames happen in (the main thread's filter allows exactly this one).
    pub fn dir_fd(&self) -> RawFd {
        self.dir.as_raw_fd()
    }

    /// Writes `record` and renames the temp file over PATH.
    pub fn commit(&mut self, record: &ExitRecord) -> Result<(), ExitFileError> {
        let err = |source| ExitFileError::Write {
            path: self.path.clone(),
            source,
        };
        let mut text = serde_json::to_vec(record).map_err(|e| err(std::io::Error::other(e)))?;
        text.push(b'\n');
        self.tmp.write_all(&text).map_err(err)?;
        // The raw syscall, not libc's renameat (which may pick renameat2): the main thread's
        // seccomp filter allows exactly SYS_renameat with this directory fd on both sides.
        // SAFETY: renameat between two NUL-terminated names relative to our directory fd.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat,
                self.dir.as_raw_fd(),
                self.tmp_name.as_ptr(),
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
            )
        };
        if r != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for ExitFile {
    fn drop(&mut self) {
        if !self.committed {
            // SAFETY: unlinkat of a NUL-terminated name relative to our directory fd.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.tmp_name.as_ptr(), 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_vmm_proto::ExitReason;

    fn read_json(p: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    #[test]
    fn commit_replaces_the_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        std::fs::write(&path, b"stale").unwrap();
        let mut f = ExitFile::create(&path).unwrap();
        // Until the commit, PATH keeps its old contents and the temp file sits beside it.
        assert_eq!(std::fs::read(&path).unwrap(), b"stale");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        f.commit(&ExitRecord {
            reason: ExitReason::Poweroff,
            detail: "guest powered off".into(),
        })
        .unwrap();
        let v = read_json(&path);
        assert_eq!(v["reason"], "poweroff");
        assert_eq!(v["detail"], "guest powered off");
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_uncommitted_temp_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        drop(ExitFile::create(&dir.path().join("exit.json")).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn reasons_are_lowercase_words() {
        for (r, w) in [
            (ExitReason::Reset, "\"reset\""),
            (ExitReason::Poweroff, "\"poweroff\""),
            (ExitReason::Stopped, "\"stopped\""),
            (ExitReason::Fault, "\"fault\""),
            (ExitReason::Error, "\"error\""),
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), w);
        }
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let e = ExitFile::create(Path::new("/nonexistent/hull/exit.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/hull"), "{e}");
        assert!(matches!(
            ExitFile::create(Path::new("/")),
            Err(ExitFileError::NoName(_))
        ));
    }
}
