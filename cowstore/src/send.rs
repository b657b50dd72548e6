//! The send stream: one guest (its record, root tree, delegated dataset and disks) as a
//! single byte stream that `vmadm send` writes and `vmadm receive` reads on another host.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! stream  := MAGIC(8) VERSION(u32) len(u32) header-json  section*  'E' chain(32)
//! section := 'S' len(u32) section-json  chunk*  0(u32)  blake3(32)
//! chunk   := len(u32, 1..=MAX_CHUNK) bytes
//! ```
//!
//! Each section's body is hashed (BLAKE3) and checked at its end before the reader reports
//! the end of the body, so a consumer that reads a body to its end has read verified bytes
//! (what it wrote before then is staging its caller discards on error). The end marker
//! carries a BLAKE3 hash over the header and every section's header and hash, in order: a stream
//! cut between sections, sections reordered, dropped or repeated, or bytes after the end are
//! all refused. The header lists the sections the stream holds.
//!
//! Disk sections carry a disk's allocated extents ([`write_extents`]): holes are not sent.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use blake3::Hasher;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The stream's first bytes.
pub const MAGIC: &[u8; 8] = b"HULLSEND";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;
/// The largest chunk a writer makes and a reader accepts.
pub const MAX_CHUNK: usize = 1 << 20;
/// The largest header (stream or section) a reader accepts.
pub const MAX_HEADER: usize = 1 << 20;

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SectionKind {
    /// The guest's record (JSON, the sender's API form).
    Record,
    /// A zone's root tree (an uncompressed tar).
    Root,
    /// A zone's delegated dataset (an uncompressed tar).
    Data,
    /// One of a zone's volumes (an uncompressed tar); `index` is its entry in the record's
    /// `filesystems`.
    Volume,
    /// A microVM's disk (extents, see [`write_extents`]).
    Disk,
    /// Incremental: the root's paths removed since the base (NUL-terminated paths, see
    /// [`crate::archive::encode_removals`]).
    Removed,
    /// Incremental: the root's entries changed since the base (an uncompressed tar).
    RootChanges,
    /// Incremental: a disk's blocks changed since the base (see [`write_disk_delta`]).
    DiskChanges,
}

/// One section's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// What it holds.
    pub kind: SectionKind,
    /// Disk sections: the disk's index in the record; volume sections: the volume's index in
    /// the record's `filesystems`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Disk sections: the disk's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// The stream's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The format version (also in the fixed prefix).
    pub version: u32,
    /// The guest.
    pub uuid: Uuid,
    /// The sender's directory of guests (`<data root>/guests`): paths in the record under
    /// it are rebased onto the receiver's.
    pub guests_dir: String,
    /// The sender's directory of images, rebased the same way.
    pub images_dir: String,
    /// The sections that follow, in order.
    pub sections: Vec<Section>,
    /// Incremental streams: what the receiver's copy must be for the changes to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
}

/// The base of an incremental stream: the sender's snapshot, and the fingerprints its root
/// (see [`crate::archive::Listing::fingerprint`]) or disks (see [`disk_fingerprint`]) have,
/// which the receiver's copy must have now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    /// The sender's snapshot.
    pub snapshot: String,
    /// A zone's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// A microVM's disks, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
}

/// Why a stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The source ended early.
    #[error("the stream is truncated ({0})")]
    Truncated(String),
    /// The bytes are not a send stream this code reads, or were altered.
    #[error("the stream is corrupt: {0}")]
    Corrupt(String),
    /// Reading the source failed.
    #[error("could not read the stream")]
    Read(#[source] io::Error),
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> io::Error {
        match e {
            StreamError::Read(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// The [`StreamError`] an `io::Error` from [`Body`] carries, recovered.
pub fn unwrap_stream_error(e: io::Error) -> StreamError {
    if !e.get_ref().is_some_and(|i| i.is::<StreamError>()) {
        return StreamError::Read(e);
    }
    match e.into_inner().map(|inner| inner.downcast::<StreamError>()) {
        Some(Ok(s)) => *s,
        Some(Err(other)) => StreamError::Read(io::Error::other(other)),
        None => StreamError::Read(io::Error::other("an error without a cause")),
    }
}

/// The stream's own failure (a cut, a checksum) somewhere in `e`'s chain of causes, if that
/// is what `e` is: what a consumer of a section's body (a tar reader) reports for a broken
/// stream, recovered so the stream's failure is named rather than the section's content.
pub fn find_stream_error(e: &(dyn std::error::Error + 'static)) -> Option<StreamError> {
    let mut at = Some(e);
    while let Some(err) = at {
        if let Some(s) = err.downcast_ref::<StreamError>() {
            return match s {
                StreamError::Truncated(m) => Some(StreamError::Truncated(m.clone())),
                StreamError::Corrupt(m) => Some(StreamError::Corrupt(m.clone())),
                StreamError::Read(_) => None,
            };
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = find_stream_error(inner)
        {
            return Some(found);
        }
        at = err.source();
    }
    None
}

/// Writes a stream: [`Writer::section`] for each section the header lists, then
/// [`Writer::finish`].
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    chain: Hasher,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Writes the prefix and the header.
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        let json = serde_json::to_vec(header).map_err(io::Error::other)?;
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_be_bytes())?;
        write_len(&mut out, json.len())?;
        out.write_all(&json)?;
        let mut chain = Hasher::new();
        chain.update(&json);
        Ok(Writer {
            out,
            chain,
            buf: Vec::with_capacity(MAX_CHUNK),
        })
    }

    /// Writes one section whose body `body` writes; returns what `body` returned.
    pub fn section<T, E: From<io::Error>>(
        &mut self,
        section: &Section,
        body: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<T, E> {
        let json = serde_json::to_vec(section).map_err(io::Error::other)?;
        self.out.write_all(b"S")?;
        write_len(&mut self.out, json.len())?;
        self.out.write_all(&json)?;
        self.chain.update(&json);
        let mut w = SectionWriter {
            out: &mut self.out,
            buf: &mut self.buf,
            hash: Hasher::new(),
        };
        let value = body(&mut w)?;
        w.flush_chunk()?;
        let hash = *w.hash.finalize().as_bytes();
        self.out.write_all(&0u32.to_be_bytes())?;
        self.out.write_all(&hash)?;
        self.chain.update(&hash);
        Ok(value)
    }

    /// Writes the end marker and flushes; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"E")?;
        self.out.write_all(self.chain.finalize().as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn write_len(out: &mut impl Write, len: usize) -> io::Result<()> {
    let len = u32::try_from(len).map_err(|_| io::Error::other("a header over 4 GiB"))?;
    out.write_all(&len.to_be_bytes())
}

/// A section's body: buffered into chunks of [`MAX_CHUNK`], hashed.
struct SectionWriter<'a, W: Write> {
    out: &'a mut W,
    buf: &'a mut Vec<u8>,
    hash: Hasher,
}

impl<W: Write> SectionWriter<'_, W> {
    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.hash.update(&self.buf[..]);
        write_len(self.out, self.buf.len())?;
        self.out.write_all(self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Write for SectionWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a stream: [`Reader::open`], then [`Reader::next_section`] and [`Reader::body`] until
/// `next_section` answers `None` (the end marker, verified, and nothing after it).
#[derive(Debug)]
pub struct Reader<R: Read> {
    src: R,
    header: Header,
    chain: Hasher,
    /// The section being read, if its body is not finished.
    open: Option<Open>,
    /// Sections read so far.
    seen: usize,
}

#[derive(Debug)]
struct Open {
    kind: SectionKind,
    hash: Hasher,
    /// Bytes left in the current chunk.
    left: usize,
    /// Body bytes so far.
    bytes: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the prefix and the header.
    pub fn open(mut src: R) -> Result<Self, StreamError> {
        let mut magic = [0u8; 8];
        read_exact(&mut src, &mut magic, "in its first bytes")?;
        if &magic != MAGIC {
            return Err(StreamError::Corrupt(
                "it does not start as a hull send stream (made by vmadm send)".into(),
            ));
        }
        let mut v = [0u8; 4];
        read_exact(&mut src, &mut v, "in its version")?;
        let version = u32::from_be_bytes(v);
        if version != VERSION {
            return Err(StreamError::Corrupt(format!(
                "it is version {version} of the send format; this hull reads version {VERSION}"
            )));
        }
        let json = read_header(&mut src, "the stream header")?;
        let header: Header = serde_json::from_slice(&json)
            .map_err(|e| StreamError::Corrupt(format!("its header is not valid: {e}")))?;
        if header.version != VERSION {
            return Err(StreamError::Corrupt(
                "its header's version differs from its prefix's".into(),
            ));
        }
        let mut chain = Hasher::new();
        chain.update(&json);
        Ok(Reader {
            src,
            header,
            chain,
            open: None,
            seen: 0,
        })
    }

    /// The stream's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next section's header, or `None` at the verified end. The previous section's body
    /// is read to its end (and verified) first if its reader stopped early.
    pub fn next_section(&mut self) -> Result<Option<Section>, StreamError> {
        if self.open.is_some() {
            io::copy(&mut self.body(), &mut io::sink()).map_err(unwrap_stream_error)?;
            self.open = None;
        }
        let mut tag = [0u8; 1];
        read_exact(&mut self.src, &mut tag, "before its end marker")?;
        match tag[0] {
            b'S' => {}
            b'E' => {
                let mut want = [0u8; 32];
                read_exact(&mut self.src, &mut want, "in its end marker")?;
                if self.seen != self.header.sections.len() {
                    return Err(StreamError::Corrupt(format!(
                        "it ends after {} of the {} sections its header lists",
                        self.seen,
                        self.header.sections.len()
                    )));
                }
                if self.chain.finalize().as_bytes() != &want {
                    return Err(StreamError::Corrupt(
                        "its end marker does not match its sections".into(),
                    ));
                }
                let mut extra = [0u8; 1];
                match self.src.read(&mut extra) {
                    Ok(0) => return Ok(None),
                    Ok(_) => {
                        return Err(StreamError::Corrupt("bytes follow its end marker".into()));
                    }
                    Err(e) => return Err(StreamError::Read(e)),
                }
            }
            other => {
                return Err(StreamError::Corrupt(format!(
                    "byte {other:#04x} where a section or the end should start"
                )));
            }
        }
        let json = read_header(&mut self.src, "a section header")?;
        let section: Section = serde_json::from_slice(&json)
            .map_err(|e| StreamError::Corrupt(format!("a section header is not valid: {e}")))?;
        if self.header.sections.get(self.seen) != Some(&section) {
            return Err(StreamError::Corrupt(format!(
                "section {} is not the one its header lists there",
                self.seen + 1
            )));
        }
        self.chain.update(&json);
        self.seen += 1;
        self.open = Some(Open {
            kind: section.kind,
            hash: Hasher::new(),
            left: 0,
            bytes: 0,
            done: false,
        });
        Ok(Some(section))
    }

    /// The current section's body: its reads end (`Ok(0)`) only once the section's hash
    /// matched; a mismatch, a cut or a malformed chunk is an `InvalidData` error naming it.
    pub fn body(&mut self) -> Body<'_, R> {
        Body { reader: self }
    }

    fn read_body(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        let Some(open) = self.open.as_mut() else {
            return Ok(0);
        };
        if open.done || buf.is_empty() {
            return Ok(0);
        }
        let what =
            |open: &Open| format!("in the {:?} section, after {} bytes", open.kind, open.bytes);
        if open.left == 0 {
            let mut len = [0u8; 4];
            read_exact(&mut self.src, &mut len, &what(open))?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                let mut want = [0u8; 32];
                read_exact(&mut self.src, &mut want, &what(open))?;
                let got = *open.hash.finalize().as_bytes();
                if got != want {
                    return Err(StreamError::Corrupt(format!(
                        "the {:?} section's checksum does not match its {} bytes",
                        open.kind, open.bytes
                    )));
                }
                self.chain.update(&got);
                open.done = true;
                return Ok(0);
            }
            if len > MAX_CHUNK {
                return Err(StreamError::Corrupt(format!(
                    "a chunk of {len} bytes (at most {MAX_CHUNK}) {}",
                    what(open)
                )));
            }
            open.left = len;
        }
        let want = open.left.min(buf.len());
        let n = match self.src.read(&mut buf[..want]) {
            Ok(0) => return Err(StreamError::Truncated(what(open))),
            Ok(n) => n,
            Err(e) => return Err(StreamError::Read(e)),
        };
        open.hash.update(&buf[..n]);
        open.left -= n;
        open.bytes += n as u64;
        Ok(n)
    }
}

/// A section's body as a reader (see [`Reader::body`]).
#[derive(Debug)]
pub struct Body<'a, R: Read> {
    reader: &'a mut Reader<R>,
}

impl<R: Read> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read_body(buf).map_err(io::Error::from)
    }
}

fn read_exact(src: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), StreamError> {
    src.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => StreamError::Truncated(what.to_string()),
        _ => StreamError::Read(e),
    })
}

fn read_header(src: &mut impl Read, what: &str) -> Result<Vec<u8>, StreamError> {
    let mut len = [0u8; 4];
    read_exact(src, &mut len, &format!("in {what}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(StreamError::Corrupt(format!(
            "{what} of {len} bytes (at most {MAX_HEADER})"
        )));
    }
    let mut json = vec![0u8; len];
    read_exact(src, &mut json, &format!("in {what}"))?;
    Ok(json)
}

/// The end-of-extents marker's offset.
const EXTENTS_END: u64 = u64::MAX;

/// Writes the allocated extents of the file at `path` (found with `SEEK_DATA`/`SEEK_HOLE`)
/// as `offset(u64) len(u64) bytes` records, then `u64::MAX size(u64)`; returns the bytes of
/// data sent.
pub fn write_extents(path: &Path, out: &mut dyn Write) -> io::Result<u64> {
    use nix::unistd::{Whence, lseek};
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut pos: u64 = 0;
    let mut sent = 0u64;
    let off = |v: u64| i64::try_from(v).map_err(io::Error::other);
    while pos < size {
        let start = match lseek(f.as_fd(), off(pos)?, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = (lseek(f.as_fd(), off(start)?, Whence::SeekHole)? as u64).min(size);
        out.write_all(&start.to_be_bytes())?;
        out.write_all(&(end - start).to_be_bytes())?;
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf[..n], at)?;
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
        sent += end - start;
        pos = end;
    }
    out.write_all(&EXTENTS_END.to_be_bytes())?;
    out.write_all(&size.to_be_bytes())?;
    let _ = f.flush();
    Ok(sent)
}

/// The block size of disk deltas and fingerprints.
const BLOCK: usize = 1 << 20;

/// Writes the blocks of the disk `now` that differ from the disk `base` (a snapshot of it)
/// as [`write_extents`] does, adjacent blocks merged into one extent, then the end record
/// with `now`'s size; returns the bytes of data sent. A block past `base`'s end is compared
/// with zeros (what a disk grown by truncation holds there).
pub fn write_disk_delta(base: &Path, now: &Path, out: &mut dyn Write) -> io::Result<u64> {
    let (b, n) = (std::fs::File::open(base)?, std::fs::File::open(now)?);
    let size = n.metadata()?.len();
    let (mut bb, mut nb) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut sent = 0u64;
    let mut run: Option<(u64, Vec<u8>)> = None;
    let flush = |run: &mut Option<(u64, Vec<u8>)>, out: &mut dyn Write| -> io::Result<u64> {
        let Some((at, data)) = run.take() else {
            return Ok(0);
        };
        out.write_all(&at.to_be_bytes())?;
        out.write_all(&(data.len() as u64).to_be_bytes())?;
        out.write_all(&data)?;
        Ok(data.len() as u64)
    };
    let mut at = 0u64;
    while at < size {
        let len = usize::try_from(size - at).unwrap_or(BLOCK).min(BLOCK);
        read_block(&n, &mut nb[..len], at)?;
        read_block(&b, &mut bb[..len], at)?;
        if nb[..len] != bb[..len] {
            match run.as_mut() {
                Some((start, data))
                    if *start + data.len() as u64 == at && data.len() < 64 * BLOCK =>
                {
                    data.extend_from_slice(&nb[..len]);
                }
                _ => {
                    sent += flush(&mut run, out)?;
                    run = Some((at, nb[..len].to_vec()));
                }
            }
        }
        at += len as u64;
    }
    sent += flush(&mut run, out)?;
    out.write_all(&EXTENTS_END.to_be_bytes())?;
    out.write_all(&size.to_be_bytes())?;
    Ok(sent)
}

/// Reads `buf.len()` bytes at `at`, zeros past the file's end.
fn read_block(f: &std::fs::File, buf: &mut [u8], at: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[got..].fill(0);
    Ok(())
}

/// A disk's content fingerprint: a BLAKE3 hash over its size and each 1 MiB block's hash (a
/// block of zeros, read or a hole, counts as zeros however it is stored). Holes are not
/// read.
pub fn disk_fingerprint(path: &Path) -> io::Result<String> {
    use nix::unistd::{Whence, lseek};
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut h = Hasher::new();
    h.update(&size.to_le_bytes());
    let zero = *blake3::hash(&vec![0u8; BLOCK]).as_bytes();
    let mut buf = vec![0u8; BLOCK];
    let mut at = 0u64;
    let off = |v: u64| i64::try_from(v).map_err(io::Error::other);
    while at < size {
        let len = usize::try_from(size - at).unwrap_or(BLOCK).min(BLOCK);
        let data = match lseek(f.as_fd(), off(at)?, Whence::SeekData) {
            Ok(d) => (d as u64) < at + len as u64,
            Err(nix::errno::Errno::ENXIO) => false,
            Err(e) => return Err(e.into()),
        };
        if data {
            read_block(&f, &mut buf[..len], at)?;
        } else {
            buf[..len].fill(0);
        }
        if len == BLOCK && buf.iter().all(|b| *b == 0) {
            h.update(&zero);
        } else {
            h.update(blake3::hash(&buf[..len]).as_bytes());
        }
        at += len as u64;
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Reads what [`write_extents`] wrote into a new file at `path` (refused if it exists) of
/// `size` bytes: extents in order, inside the size, not overlapping; the end record must
/// name `size`. On error the file is left for the caller to remove.
pub fn read_extents(src: &mut dyn Read, path: &Path, size: u64) -> io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    extents_into(src, &f, size)
}

/// [`read_extents`] onto the existing file at `path` (a disk delta from
/// [`write_disk_delta`]): the extents overwrite it, and it takes the end record's size.
pub fn read_extents_onto(src: &mut dyn Read, path: &Path, size: u64) -> io::Result<u64> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    extents_into(src, &f, size)
}

fn extents_into(src: &mut dyn Read, f: &std::fs::File, size: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let bad = |why: String| io::Error::from(StreamError::Corrupt(why));
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut next: u64 = 0;
    let mut written = 0u64;
    loop {
        let mut rec = [0u8; 16];
        src.read_exact(&mut rec)
            .map_err(|e| eof_is_corrupt(e, "a disk extent"))?;
        let offset = u64::from_be_bytes(rec[..8].try_into().unwrap_or_default());
        let len = u64::from_be_bytes(rec[8..].try_into().unwrap_or_default());
        if offset == EXTENTS_END {
            if len != size {
                return Err(bad(format!(
                    "a disk's extents end at size {len}, its header says {size}"
                )));
            }
            break;
        }
        if offset < next || offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(bad(format!(
                "a disk extent at {offset} of {len} bytes overlaps another or lies outside \
                 the disk's {size} bytes"
            )));
        }
        let mut at = offset;
        while at < offset + len {
            let n = usize::try_from(offset + len - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            src.read_exact(&mut buf[..n])
                .map_err(|e| eof_is_corrupt(e, "a disk extent"))?;
            f.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        written += len;
        next = offset + len;
    }
    // A section's body ends only after its hash was checked: read to that end.
    let mut rest = [0u8; 1];
    if src.read(&mut rest)? != 0 {
        return Err(bad("bytes follow a disk's last extent".into()));
    }
    f.set_len(size)?;
    f.sync_all()?;
    Ok(written)
}

/// A body that ends inside a record is a corrupt section (the framing's own cut is reported
/// by the body reader before this).
fn eof_is_corrupt(e: io::Error, what: &str) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        StreamError::Corrupt(format!("{what} is cut short inside its section")).into()
    } else {
        e
    }
}

#[cfg(test)]
mod tests;
