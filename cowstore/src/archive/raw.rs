//! Writing a raw disk image sparse: all-zero 4 KiB blocks are skipped, not written.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::stream::{self, Stored, Tally};
use super::{ArchiveError, Expected, Limits, Stats, read_full, write_err};

const BLOCK: usize = 4096;

/// A disk image (zvol): raw bytes, compressed as `expected` says, written to `dest_file`
/// (created new, must not exist; never through a symlink), sparse: all-zero 4 KiB blocks are
/// seeked over and the length set at the end. The decompressed size may not exceed
/// `limits.max_unpacked_bytes`.
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
    let mut src = src;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dest_file)
        .map_err(write_err(dest_file))?;
    let tally = Tally::new(expected.size);
    let written = {
        let stored = Stored::new(&mut src, &tally, progress);
        stream::decoder(expected.compression, stored)
            .and_then(|mut d| write_sparse(&mut *d, &file, dest_file, limits))
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
    let stored_bytes = stream::finish(&mut src, &tally, expected, progress)?;
    file.set_len(written).map_err(write_err(dest_file))?;
    Ok(Stats {
        stored_bytes,
        unpacked_bytes: written,
        entries: 0,
    })
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
