//! Verification and unpacking of untrusted image files.
//!
//! An image file is untrusted bytes: this module hashes and counts them as they stream in
//! (sha1 and size against the manifest), decompresses them (none, gzip, xz, zstd, bzip2), and either
//! unpacks a tar archive into a directory ([`unpack_tree`], for zone-dataset and lx-dataset
//! images) or writes a sparse raw disk ([`unpack_raw`], for zvol images, from raw bytes or a
//! qcow2 file). It also makes
//! image files ([`pack_tree`], [`digest`]) for `imgadm create` and the image recipes.
//!
//! What it must never do: write outside the destination (no `..`, no absolute paths, never
//! through a symlink, no hard link to anything but a regular file it unpacked itself), create
//! device nodes or FIFOs, create setuid/setgid files unless [`Limits::allow_setuid`], write
//! more than [`Limits::max_unpacked_bytes`], read more stored bytes than the manifest says, or
//! panic on any input.
//!
//! On error, unpacking stops and leaves whatever it wrote so far in place: the caller removes
//! the destination (the directory, or the raw file) on any error. Success is only returned
//! after the whole stored file was read and its sha1 and size matched the manifest.
//!
//! Tree rules (documented choices):
//! - `dest` must be an existing, empty directory (anything already there could pass for an
//!   unpacked entry).
//! - The tar must end with its end-of-archive block; what follows it in the decompressed
//!   stream (the second block, record padding) is read and ignored, bounded by
//!   [`MAX_HEADER_BYTES`]. Bytes after the compressed stream are the decoder's to refuse; the
//!   sha1 covers the whole stored file either way.
//! - `./` prefixes and repeated slashes are ignored; an entry for the root itself (`.` or
//!   `./`) may only be a directory, whose mode and mtime are applied to `dest`.
//! - Missing parent directories are created 0755; directory modes and mtimes from the archive
//!   are applied after all entries, deepest first, so a read-only directory in the archive
//!   does not block its children.
//! - A later regular file, symlink or hard link replaces an earlier file or symlink at the
//!   same path (as tar does); a later directory over an earlier directory merges and takes
//!   the later mode. Replacing a directory with a non-directory or a non-directory with a
//!   directory is refused.
//! - Symlink targets may be absolute (they resolve inside the guest root at run time) but a
//!   relative target may not climb above the image root (checked lexically from the link's
//!   directory).
//! - Hard links must name a path, by the same rules, that was already unpacked as a regular
//!   file and is not reached through a symlink.
//! - Device nodes, FIFOs, GNU sparse files and any other entry type are refused; pax global
//!   headers are ignored; GNU long names and pax extended headers are applied by the tar
//!   crate (bounded to [`MAX_HEADER_BYTES`] between two entries). Extended attributes are
//!   not restored.
//! - Ownership (uid/gid) is applied only when running as root (lchown); modes are masked to
//!   0o7777. Setgid directories (e.g. /var/mail) are kept: only setuid/setgid regular files
//!   fall under [`Limits::allow_setuid`]. Full distribution trees (Debian: su, passwd,
//!   mount...) carry such files, so they install only with `allow_setuid`.

mod delta;
mod pack;
mod qcow2;
mod raw;
mod stream;
mod tree;

#[cfg(test)]
mod qcow2_tests;
#[cfg(test)]
mod tests;

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

pub use delta::{Listing, apply_removals, decode_removals, encode_removals, list_tree};
pub use pack::{pack_tree, pack_tree_filtered, pack_tree_ids};
pub use qcow2::Qcow2Reader;
pub use raw::unpack_raw;
pub use tree::{unpack_layer_onto, unpack_tree, unpack_tree_onto, unpack_tree_unchecked};

/// An id as a guest sees it: one of its host range `(first, count)` made relative (`id -
/// first`), any other as it is. What [`pack_tree_ids`] writes and a [`Listing`] compares.
pub(crate) fn relative_id(id: u32, range: Option<(u32, u32)>) -> u64 {
    match range {
        Some((first, count))
            if id >= first && u64::from(id) < u64::from(first) + u64::from(count) =>
        {
            u64::from(id - first)
        }
        _ => u64::from(id),
    }
}

/// Bytes the tar reader may consume between two entries that are not file data the unpacker
/// reads itself (headers, GNU long names, pax extended headers, data of entries it skips):
/// bounds the memory the tar crate spends on extended headers.
pub const MAX_HEADER_BYTES: u64 = 4 << 20;

/// How an image file is compressed (IMGAPI manifest `files[].compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// gzip, possibly several members (pigz).
    Gzip,
    /// xz, possibly several streams.
    Xz,
    /// zstd, possibly several frames.
    Zstd,
    /// bzip2, possibly several streams (pbzip2).
    Bzip2,
}

impl Compression {
    /// Parses the manifest spelling: "none", "gzip", "xz", "zstd" or "bzip2"; anything else
    /// is unsupported and gives `None`.
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "none" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "xz" => Some(Compression::Xz),
            "zstd" => Some(Compression::Zstd),
            "bzip2" => Some(Compression::Bzip2),
            _ => None,
        }
    }

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a file must be, from the manifest.
#[derive(Debug, Clone)]
pub struct Expected {
    /// sha1 of the stored bytes, lower-case hex (upper case is accepted too); empty when
    /// `digest` names the stored bytes instead (an OCI layer's).
    pub sha1: String,
    /// `sha256:<hex>` of the stored bytes (OCI's content digest), checked when given.
    pub digest: Option<String>,
    /// `sha256:<hex>` of the decompressed bytes (an OCI layer's diff_id), checked when given.
    pub uncompressed_digest: Option<String>,
    /// Size of the stored (compressed) bytes.
    pub size: u64,
    /// How the stored bytes are compressed.
    pub compression: Compression,
}

/// Limits that protect the host from hostile archives.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Total bytes written: file data for trees, the decompressed size for raw disks.
    pub max_unpacked_bytes: u64,
    /// Tar entries, counting every entry the tar reader returns.
    pub max_entries: u64,
    /// Whether setuid/setgid regular files may be created (false for unprivileged zones).
    pub allow_setuid: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: 64 << 30,
            max_entries: 2_000_000,
            allow_setuid: false,
        }
    }
}

/// What unpacking did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Stored bytes read and verified (equals `Expected::size` on success).
    pub stored_bytes: u64,
    /// File data written (trees) or the disk's size (raw).
    pub unpacked_bytes: u64,
    /// Tar entries processed (0 for raw disks).
    pub entries: u64,
}

/// Why an image file was refused or could not be unpacked or packed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the stored bytes failed.
    #[error("could not read the image file")]
    Read(#[source] io::Error),
    /// More stored bytes than the manifest says.
    #[error("the image file is larger than the {expected} bytes its manifest says")]
    TooLong {
        /// Size from the manifest.
        expected: u64,
    },
    /// Fewer stored bytes than the manifest says.
    #[error("the image file is truncated: {actual} of the {expected} bytes its manifest says")]
    Truncated {
        /// Size from the manifest.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
    /// The sha1 of the stored bytes differs from the manifest's.
    #[error("the image file's sha1 is {actual}, its manifest says {expected}")]
    ChecksumMismatch {
        /// sha1 from the manifest.
        expected: String,
        /// sha1 of the bytes read.
        actual: String,
    },
    /// The sha256 of the stored bytes differs from their digest (an OCI layer's).
    #[error("the image file's digest is {actual}, it should be {expected}")]
    DigestMismatch {
        /// The digest given.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// The sha256 of the decompressed bytes differs from their digest (an OCI layer's
    /// diff_id).
    #[error("the image file's uncompressed digest is {actual}, it should be {expected}")]
    UncompressedDigestMismatch {
        /// The digest given.
        expected: String,
        /// The digest of the bytes decompressed.
        actual: String,
    },
    /// Neither a sha1 nor a usable digest names the stored bytes.
    #[error("the image file has no sha1 and no sha256 digest to check it against: {0}")]
    NoChecksum(String),
    /// The decompressor failed: corrupt or truncated compressed data.
    #[error("the {compression} stream of the image file is corrupt or truncated")]
    Decompress {
        /// The compression named by the manifest.
        compression: Compression,
        /// The decompressor's error.
        #[source]
        source: io::Error,
    },
    /// A qcow2 disk image that is malformed or uses what hull does not read.
    #[error("qcow2 image: {0}")]
    Qcow2(#[source] io::Error),
    /// The tar reader refused a header.
    #[error("the tar archive is corrupt")]
    Tar(#[source] io::Error),
    /// The tar archive ends without its end-of-archive blocks.
    #[error("the tar archive is truncated: it ends without its end-of-archive marker")]
    TarTruncated,
    /// An entry's data is shorter than its header says.
    #[error("tar entry {path} is truncated: {actual} of its {expected} bytes")]
    EntryTruncated {
        /// Entry path as in the archive.
        path: String,
        /// Size from the header.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// A header field (mode, uid, gid, mtime, size) cannot be parsed.
    #[error("tar entry {path} has an unreadable {field} field")]
    BadHeader {
        /// Entry path as in the archive.
        path: String,
        /// Which field.
        field: &'static str,
        /// The tar crate's error.
        #[source]
        source: io::Error,
    },
    /// An entry with an empty name.
    #[error("a tar entry has an empty name")]
    EmptyName,
    /// A path containing a NUL byte.
    #[error("tar entry {path} contains a NUL byte")]
    NulInName {
        /// Entry path, lossily decoded.
        path: String,
    },
    /// An absolute entry path.
    #[error("tar entry {path} has an absolute path")]
    AbsolutePath {
        /// Entry path as in the archive.
        path: String,
    },
    /// An entry path with a `..` component.
    #[error("tar entry {path} has a '..' component")]
    DotDot {
        /// Entry path as in the archive.
        path: String,
    },
    /// An entry whose parent, as already unpacked, is a symlink.
    #[error("tar entry {path} would be written through the symlink {symlink}")]
    ThroughSymlink {
        /// Entry path as in the archive.
        path: String,
        /// The symlink among its parents.
        symlink: String,
    },
    /// An entry whose parent, as already unpacked, is not a directory.
    #[error("tar entry {path} has the non-directory {parent} as a parent")]
    ParentNotDirectory {
        /// Entry path as in the archive.
        path: String,
        /// The offending parent.
        parent: String,
    },
    /// An entry that would replace a directory with a non-directory or the reverse.
    #[error("tar entry {path} would replace an existing {existing} with a {new}")]
    Conflict {
        /// Entry path as in the archive.
        path: String,
        /// What is there ("directory", "file", "symlink").
        existing: &'static str,
        /// What the entry is.
        new: &'static str,
    },
    /// A symlink whose relative target climbs above the image root, or is empty.
    #[error("symlink {path} points to {target}, outside the image root")]
    SymlinkEscape {
        /// Entry path as in the archive.
        path: String,
        /// The link target.
        target: String,
    },
    /// A hard link whose target is not an already unpacked regular file inside the root.
    #[error("hard link {path} to {target} is refused: {reason}")]
    HardLink {
        /// Entry path as in the archive.
        path: String,
        /// The link target as in the archive.
        target: String,
        /// Why.
        reason: &'static str,
    },
    /// A character or block device.
    #[error("tar entry {path} is a {kind} device; a zone gets its /dev from the runtime")]
    Device {
        /// Entry path as in the archive.
        path: String,
        /// "character" or "block".
        kind: &'static str,
    },
    /// A FIFO.
    #[error("tar entry {path} is a FIFO; a zone gets those from its runtime")]
    Fifo {
        /// Entry path as in the archive.
        path: String,
    },
    /// A setuid or setgid regular file when they are not allowed.
    #[error("tar entry {path} is setuid or setgid (mode {mode:o}), refused for this image")]
    Setuid {
        /// Entry path as in the archive.
        path: String,
        /// The mode from the header.
        mode: u32,
    },
    /// Any other entry type (GNU sparse, contiguous, unknown).
    #[error("tar entry {path} has the unsupported type {kind}")]
    UnsupportedEntry {
        /// Entry path as in the archive.
        path: String,
        /// The type, as the tar crate names it.
        kind: String,
    },
    /// More entries than [`Limits::max_entries`].
    #[error("the tar archive has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// More unpacked bytes than [`Limits::max_unpacked_bytes`] (a decompression bomb).
    #[error("the image unpacks to more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Extended headers or skipped data between two entries beyond [`MAX_HEADER_BYTES`].
    #[error("the tar archive has more than {limit} bytes of headers between two entries")]
    HeadersTooLarge {
        /// The limit.
        limit: u64,
    },
    /// Writing the destination failed.
    #[error("could not write {path}")]
    Write {
        /// The host path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading the tree to pack failed.
    #[error("could not read {path} to pack it")]
    Pack {
        /// The host path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing the packed archive failed.
    #[error("could not write the {compression} archive")]
    PackWrite {
        /// The compression being written.
        compression: Compression,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Hashes and counts a file as stored, for making manifests (imgadm create) and tests.
pub fn digest(mut src: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Fills `buf` as far as the reader allows; returns the bytes read (short only at EOF).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Write {
        path: path.to_path_buf(),
        source,
    }
}
