//! The bytes of a boot disk, and the meter that bounds how many of them one search reads.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// A disk read by offset. Reads never come back short: a range that is not wholly inside the
/// disk is an error.
pub trait Disk {
    /// The disk's size in bytes.
    fn len(&self) -> u64;

    /// Whether the disk holds no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`; a range past [`Disk::len`] is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

fn past_end(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{len} bytes at byte {offset} lie past the end of the disk ({size} bytes)"),
    )
}

fn check_range(offset: u64, len: usize, size: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(past_end(offset, len, size)),
    }
}

impl Disk for File {
    fn len(&self) -> u64 {
        match self.metadata() {
            Ok(m) if m.is_file() => m.len(),
            // A block device (a zvol) says 0 in its metadata: its end is where seeking stops.
            // Reads are positional, so moving the file offset disturbs nothing.
            _ => {
                let mut f: &File = self;
                f.seek(SeekFrom::End(0)).unwrap_or(0)
            }
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), Disk::len(self))?;
        self.read_exact_at(buf, offset)
    }
}

fn read_slice(data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let size = data.len() as u64;
    check_range(offset, buf.len(), size)?;
    let src = usize::try_from(offset)
        .ok()
        .and_then(|start| data.get(start..start.checked_add(buf.len())?))
        .ok_or_else(|| past_end(offset, buf.len(), size))?;
    buf.copy_from_slice(src);
    Ok(())
}

impl Disk for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_slice(self, buf, offset)
    }
}

impl Disk for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_slice(self, buf, offset)
    }
}

/// What a [`Metered`] disk answers once its allowance is spent.
#[derive(Debug, thiserror::Error)]
#[error("the read limit for this disk was reached")]
pub(crate) struct ReadLimitReached;

/// A read of the disk that failed: where, how much, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {len} bytes at byte {offset} of the disk")]
pub struct ReadError {
    pub offset: u64,
    pub len: usize,
    #[source]
    pub source: io::Error,
}

/// Reads `buf` at `offset`: `Ok(Err(..))` is the disk failing, `Err(ReadLimitReached)` the
/// call's read allowance spent (a [`Metered`] disk refusing).
pub(crate) fn read_at(
    disk: &dyn Disk,
    buf: &mut [u8],
    offset: u64,
) -> Result<Result<(), ReadError>, ReadLimitReached> {
    match disk.read_at(buf, offset) {
        Ok(()) => Ok(Ok(())),
        Err(source) if is_read_limit(&source) => Err(ReadLimitReached),
        Err(source) => Ok(Err(ReadError {
            offset,
            len: buf.len(),
            source,
        })),
    }
}

/// Whether `e` is a [`Metered`] disk refusing a read, not the disk failing.
pub(crate) fn is_read_limit(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<ReadLimitReached>())
}

/// A disk that refuses reads once `limit` bytes have been read through it, however they are
/// spread: one hostile image cannot make a search read more than that.
pub(crate) struct Metered<'a> {
    inner: &'a dyn Disk,
    left: Cell<u64>,
}

impl<'a> Metered<'a> {
    pub(crate) fn new(inner: &'a dyn Disk, limit: u64) -> Self {
        Metered {
            inner,
            left: Cell::new(limit),
        }
    }
}

impl Disk for Metered<'_> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let want = buf.len() as u64;
        let left = self.left.get();
        if want > left {
            return Err(io::Error::other(ReadLimitReached));
        }
        self.left.set(left - want);
        self.inner.read_at(buf, offset)
    }
}
