//! Writing a raw disk image sparse: all-zero 4 KiB blocks are skipped, not written.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::qcow2;
use super::stream::{self, Stored, Tally};
use super::{ArchiveError, Expected, Limits, Stats, read_full, write_err};

const BLOCK: usize = 4096;

/// A disk image (zvol): raw bytes or a qcow2 file (told by its magic), compressed as
/// `expected` says, written to `dest_file` (created new, must not exist; never through a
/// symlink) as a raw disk, sparse: all-zero 4 KiB blocks are seeked over and the length set at
/// the end. The disk's size may not exceed `limits.max_unpacked_bytes`.
///
/// A qcow2 file needs random access: it is spooled, decompressed, next to `dest_file` (its name
/// plus `.qcow2`, removed before returning), checked against the manifest, and only then read
/// as a disk ([`super::qcow2`]).
///
/// On error `dest_file` is left partly written: the caller must remove it. Success means the
/// whole stored file matched the manifest's size and sha1. The file is not fsynced.
pub fn unpack_raw(
    src: impl Read,
    expected: &Expected,
    dest_file: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
) -> Result<Stats, ArchiveError> {
    let file = create_new(dest_file)?;
    let mut spool = dest_file.as_os_str().to_owned();
    spool.push(".qcow2");
    let spool = PathBuf::from(spool);
    let done = unpack(src, expected, &file, dest_file, &spool, limits, progress);
    match std::fs::remove_file(&spool) {
        Err(e) if e.kind() != io::ErrorKind::NotFound && done.is_ok() => Err(write_err(&spool)(e)),
        _ => done,
    }
}

/// What the decompressed stream turned out to be.
enum Format {
    /// A raw disk, written: its size.
    Raw(u64),
    /// A qcow2 file, spooled.
    Qcow2(File),
}

fn unpack(
    mut src: impl Read,
    expected: &Expected,
    file: &File,
    dest_file: &Path,
    spool: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
) -> Result<Stats, ArchiveError> {
    let tally = Tally::of(expected);
    let format = {
        let stored = Stored::new(&mut src, &tally, progress);
        stream::decoder(expected.compression, stored).and_then(|mut d| {
            let mut head = [0u8; 4];
            let n = read_full(&mut *d, &mut head).map_err(ArchiveError::Tar)?;
            let head = head.get(..n).unwrap_or_default();
            if head == qcow2::MAGIC {
                spool_all(&mut head.chain(d), spool, limits).map(Format::Qcow2)
            } else {
                write_sparse(&mut head.chain(d), file, dest_file, limits).map(Format::Raw)
            }
        })
    }
    .map_err(|e| {
        stream::refine(
            e,
            &tally,
            None,
            expected.compression,
            limits.max_unpacked_bytes,
        )
    })?;
    let stored_bytes = stream::finish(&mut src, &tally, Some(expected), progress)?;
    let written = match format {
        Format::Raw(n) => n,
        Format::Qcow2(spooled) => {
            let mut disk = qcow2::Qcow2Reader::new(&spooled, limits.max_unpacked_bytes)
                .map_err(ArchiveError::Qcow2)?;
            let size = disk.header().size;
            let n = write_sparse(&mut disk, file, dest_file, limits).map_err(|e| match e {
                ArchiveError::Tar(e) => ArchiveError::Qcow2(e),
                e => e,
            })?;
            if n != size {
                return Err(ArchiveError::Qcow2(io::Error::other(format!(
                    "the qcow2 disk gave {n} of its {size} bytes"
                ))));
            }
            n
        }
    };
    file.set_len(written).map_err(write_err(dest_file))?;
    Ok(Stats {
        stored_bytes,
        unpacked_bytes: written,
        entries: 0,
    })
}

/// A new file at `path` (it must not exist; never through a symlink), owner-only, open for
/// reading and writing.
fn create_new(path: &Path) -> Result<File, ArchiveError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(write_err(path))
}

/// Copies the decompressed qcow2 file to `path` (created new, never through a symlink),
/// within the size limit, and returns it open for reading.
fn spool_all(data: &mut dyn Read, path: &Path, limits: &Limits) -> Result<File, ArchiveError> {
    let mut f = create_new(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = read_full(data, &mut buf).map_err(ArchiveError::Tar)?;
        if n == 0 {
            return Ok(f);
        }
        total = total.saturating_add(n as u64);
        if total > limits.max_unpacked_bytes {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_unpacked_bytes,
            });
        }
        f.write_all(buf.get(..n).unwrap_or_default())
            .map_err(write_err(path))?;
    }
}

/// Copies the decompressed bytes, writing runs of non-zero blocks at their offsets; returns
/// the decompressed size. Read errors come back as `ArchiveError::Tar` for `refine` to sort.
fn write_sparse(
    data: &mut dyn Read,
    file: &File,
    path: &Path,
    limits: &Limits,
) -> Result<u64, ArchiveError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = read_full(data, &mut buf).map_err(ArchiveError::Tar)?;
        if n == 0 {
            return Ok(offset);
        }
        let end = offset.saturating_add(n as u64);
        if end > limits.max_unpacked_bytes {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_unpacked_bytes,
            });
        }
        let data = buf.get(..n).unwrap_or(&buf);
        let mut run_start: Option<usize> = None;
        for (i, block) in data.chunks(BLOCK).enumerate() {
            let zero = block.iter().all(|b| *b == 0);
            match (zero, run_start) {
                (false, None) => run_start = Some(i * BLOCK),
                (true, Some(start)) => {
                    write_run(file, path, data, start, i * BLOCK, offset)?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run_start {
            write_run(file, path, data, start, data.len(), offset)?;
        }
        offset = end;
    }
}

fn write_run(
    file: &File,
    path: &Path,
    data: &[u8],
    start: usize,
    end: usize,
    offset: u64,
) -> Result<(), ArchiveError> {
    let run = data.get(start..end).ok_or_else(|| ArchiveError::Write {
        path: path.to_path_buf(),
        source: io::Error::other("block run out of range"),
    })?;
    file.write_all_at(run, offset + start as u64)
        .map_err(write_err(path))
}
