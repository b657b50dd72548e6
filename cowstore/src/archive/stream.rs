//! The reading side: stored bytes (hashed, counted, capped at the manifest's size), the
//! decompressor, and the decompressed feed the tar reader consumes (bounded between entries).
//! Each layer records what went wrong in a shared state, so an `io::Error` coming out of the
//! stack can be mapped to the refusal that caused it.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};

use sha1::{Digest, Sha1};
use sha2::Sha256;

use super::{ArchiveError, Compression, Expected, MAX_HEADER_BYTES, hex};

/// xz memory limit: enough for `xz -9e` (64 MiB dictionary), far below what a hostile header
/// could ask for.
const XZ_MEMLIMIT: u64 = 512 << 20;

/// What the stored-bytes reader saw.
#[derive(Debug)]
pub(super) struct Tally {
    expected_size: u64,
    /// Whether the size and sha1 are the manifest's to check; `false` for a stream whose
    /// integrity its caller checks (a send stream's section): unbounded, not hashed.
    checked: bool,
    count: Cell<u64>,
    hasher: RefCell<Sha1>,
    /// Whether the sha1 is wanted (an OCI layer has only its sha256 digest).
    want_sha1: Cell<bool>,
    /// sha256 of the stored bytes, when a digest names them.
    sha256: RefCell<Option<Sha256>>,
    over: Cell<bool>,
    eof: Cell<bool>,
    failed: Cell<bool>,
}

impl Tally {
    pub(super) fn new(expected_size: u64) -> Self {
        Tally {
            expected_size,
            checked: true,
            count: Cell::new(0),
            hasher: RefCell::new(Sha1::new()),
            want_sha1: Cell::new(true),
            sha256: RefCell::new(None),
            over: Cell::new(false),
            eof: Cell::new(false),
            failed: Cell::new(false),
        }
    }

    /// A tally checking what `expected` names: its size, its sha1 when given, its sha256
    /// digest when given.
    pub(super) fn of(expected: &Expected) -> Self {
        let t = Tally::new(expected.size);
        if expected.digest.is_some() {
            *t.sha256.borrow_mut() = Some(Sha256::new());
        }
        t.want_sha1.set(!expected.sha1.trim().is_empty());
        t
    }

    /// A tally of a stream whose size and integrity the caller checks.
    pub(super) fn unchecked() -> Self {
        Tally {
            checked: false,
            ..Tally::new(u64::MAX)
        }
    }

    /// The refusal the stored stream explains, if any: it takes precedence over whatever the
    /// layers above made of it (a truncated file is reported as truncated, not as a corrupt
    /// tar).
    fn explains(&self) -> Option<ArchiveError> {
        if self.over.get() {
            return Some(ArchiveError::TooLong {
                expected: self.expected_size,
            });
        }
        if self.checked && self.eof.get() && self.count.get() < self.expected_size {
            return Some(ArchiveError::Truncated {
                expected: self.expected_size,
                actual: self.count.get(),
            });
        }
        None
    }

    fn verify(&self, expected: Option<&Expected>) -> Result<u64, ArchiveError> {
        let count = self.count.get();
        let Some(expected) = expected.filter(|_| self.checked) else {
            return Ok(count);
        };
        if count != expected.size {
            return Err(ArchiveError::Truncated {
                expected: expected.size,
                actual: count,
            });
        }
        let sha1 = expected.sha1.trim();
        let sha256 = self.sha256.borrow().clone().map(|h| hex(&h.finalize()));
        let want256 = expected
            .digest
            .as_deref()
            .map(|d| d.strip_prefix("sha256:").unwrap_or("").to_ascii_lowercase());
        if sha1.is_empty() && want256.is_none() {
            return Err(ArchiveError::NoChecksum("none was given".to_string()));
        }
        if !sha1.is_empty() {
            let actual = hex(&self.hasher.borrow().clone().finalize());
            if !actual.eq_ignore_ascii_case(sha1) {
                return Err(ArchiveError::ChecksumMismatch {
                    expected: expected.sha1.clone(),
                    actual,
                });
            }
        }
        if let (Some(want), Some(actual)) = (want256, sha256)
            && (want.len() != 64 || want != actual)
        {
            return Err(ArchiveError::DigestMismatch {
                expected: expected.digest.clone().unwrap_or_default(),
                actual: format!("sha256:{actual}"),
            });
        }
        Ok(count)
    }
}

/// The stored bytes: hashed and counted as they pass, never more than the manifest's size
/// plus one byte read from the source (the one that proves the file too long).
pub(super) struct Stored<'a> {
    inner: &'a mut dyn Read,
    tally: &'a Tally,
    progress: &'a mut dyn FnMut(u64),
}

impl<'a> Stored<'a> {
    pub(super) fn new(
        inner: &'a mut dyn Read,
        tally: &'a Tally,
        progress: &'a mut dyn FnMut(u64),
    ) -> Self {
        Stored {
            inner,
            tally,
            progress,
        }
    }
}

impl Read for Stored<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.tally.over.get() {
            return Err(io::Error::other(
                "the image file is longer than its manifest says",
            ));
        }
        let count = self.tally.count.get();
        let room = self
            .tally
            .expected_size
            .saturating_sub(count)
            .saturating_add(1);
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n.min(want),
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.tally.failed.set(true);
                }
                return Err(e);
            }
        };
        if n == 0 {
            self.tally.eof.set(true);
            return Ok(0);
        }
        let total = count.saturating_add(n as u64);
        if total > self.tally.expected_size {
            self.tally.over.set(true);
            return Err(io::Error::other(
                "the image file is longer than its manifest says",
            ));
        }
        if self.tally.checked {
            if self.tally.want_sha1.get() {
                self.tally.hasher.borrow_mut().update(&buf[..n]);
            }
            if let Some(h) = self.tally.sha256.borrow_mut().as_mut() {
                h.update(&buf[..n]);
            }
        }
        self.tally.count.set(total);
        (self.progress)(total);
        Ok(n)
    }
}

/// Wraps the stored bytes in the decompressor the manifest names.
pub(super) fn decoder<'a>(
    compression: Compression,
    stored: Stored<'a>,
) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    Ok(match compression {
        // Buffered: the tar reader reads 512-byte headers one at a time.
        Compression::None => Box::new(io::BufReader::with_capacity(64 << 10, stored)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stored)),
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(|e| ArchiveError::Decompress {
                compression,
                source: e.into(),
            })?;
            Box::new(liblzma::read::XzDecoder::new_stream(stored, stream))
        }
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(stored)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(stored).map_err(|source| {
                ArchiveError::Decompress {
                    compression,
                    source,
                }
            })?)
        }
    })
}

/// What the decompressed feed saw.
#[derive(Debug)]
pub(super) struct FeedState {
    /// Cap on all decompressed bytes read (a CPU bound on bombs made of skipped data).
    cap: u64,
    total: Cell<u64>,
    in_data: Cell<bool>,
    between: Cell<u64>,
    eof: Cell<bool>,
    decode_failed: Cell<bool>,
    over_cap: Cell<bool>,
    over_headers: Cell<bool>,
}

impl FeedState {
    pub(super) fn new(cap: u64) -> Self {
        FeedState {
            cap,
            total: Cell::new(0),
            in_data: Cell::new(false),
            between: Cell::new(0),
            eof: Cell::new(false),
            decode_failed: Cell::new(false),
            over_cap: Cell::new(false),
            over_headers: Cell::new(false),
        }
    }

    /// The unpacker is about to read an entry's data (not bounded by [`MAX_HEADER_BYTES`]).
    pub(super) fn enter_data(&self) {
        self.in_data.set(true);
    }

    /// The unpacker is done with an entry: what the tar reader reads next is headers.
    pub(super) fn leave_data(&self) {
        self.in_data.set(false);
        self.between.set(0);
    }

    /// Whether the decompressed stream ended (the tar reader asked for more and got none).
    pub(super) fn eof(&self) -> bool {
        self.eof.get()
    }
}

/// The decompressed bytes, as the tar reader consumes them.
pub(super) struct Feed<'a> {
    inner: Box<dyn Read + 'a>,
    state: &'a FeedState,
}

impl<'a> Feed<'a> {
    pub(super) fn new(inner: Box<dyn Read + 'a>, state: &'a FeedState) -> Self {
        Feed { inner, state }
    }
}

impl Read for Feed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let st = self.state;
        let n = match self.inner.read(buf) {
            Ok(n) => n.min(buf.len()),
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    st.decode_failed.set(true);
                }
                return Err(e);
            }
        };
        if n == 0 {
            st.eof.set(true);
            return Ok(0);
        }
        let total = st.total.get().saturating_add(n as u64);
        st.total.set(total);
        if total > st.cap {
            st.over_cap.set(true);
            return Err(io::Error::other(
                "the archive decompresses to too many bytes",
            ));
        }
        if !st.in_data.get() {
            let between = st.between.get().saturating_add(n as u64);
            st.between.set(between);
            if between > MAX_HEADER_BYTES {
                st.over_headers.set(true);
                return Err(io::Error::other(
                    "too many header bytes between two entries",
                ));
            }
        }
        Ok(n)
    }
}

/// Maps an error from the reading stack to the refusal that caused it: the stored stream
/// first (too long, truncated, unreadable), then the feed's bounds, then the decompressor;
/// what is left of an `ArchiveError::Tar` is the tar reader's own complaint.
pub(super) fn refine(
    err: ArchiveError,
    tally: &Tally,
    feed: Option<&FeedState>,
    compression: Compression,
    max_unpacked_bytes: u64,
) -> ArchiveError {
    if let Some(e) = tally.explains() {
        return e;
    }
    let io_err = match err {
        ArchiveError::Tar(e) => e,
        other => return other,
    };
    if tally.failed.get() {
        return ArchiveError::Read(io_err);
    }
    if let Some(feed) = feed {
        if feed.over_cap.get() {
            return ArchiveError::TooLarge {
                limit: max_unpacked_bytes,
            };
        }
        if feed.over_headers.get() {
            return ArchiveError::HeadersTooLarge {
                limit: MAX_HEADER_BYTES,
            };
        }
        if !feed.decode_failed.get() {
            return ArchiveError::Tar(io_err);
        }
    }
    if compression == Compression::None {
        ArchiveError::Tar(io_err)
    } else {
        ArchiveError::Decompress {
            compression,
            source: io_err,
        }
    }
}

/// Reads what is left of the stored file (bytes after the compressed stream or the tar's end
/// are hashed too: the sha1 covers the whole file) and checks its size and sha1.
pub(super) fn finish(
    src: &mut dyn Read,
    tally: &Tally,
    expected: Option<&Expected>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ArchiveError> {
    let mut stored = Stored::new(src, tally, progress);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stored.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(tally.explains().unwrap_or(ArchiveError::Read(e)));
            }
        }
    }
    tally.verify(expected)
}
