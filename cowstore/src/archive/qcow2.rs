//! Reading a qcow2 disk image (QEMU's format, versions 2 and 3) as the raw disk it stands for,
//! so that `imgadm install` can take a distribution's `.qcow2` cloud image for a zvol image.
//!
//! The file is untrusted bytes. The reader follows the format's two-level table (L1 entries
//! point at L2 tables, L2 entries at data clusters, compressed or not) and yields the guest's
//! bytes in order, zeros where nothing is allocated. It refuses, naming the feature, what a
//! standalone image cannot need or hull does not read: a backing file, encryption, an
//! external data file, extended L2 entries, a "corrupt" mark, unknown incompatible features.
//! Every table and cluster offset is checked against the file's length before it is read; a
//! virtual size above the caller's limit is refused before anything is written; nothing in
//! the file can make the reader loop or allocate more than one L2 table, one cluster and the
//! L1 table the virtual size calls for. The refcount tables and snapshots are not read: the
//! active L1 table says what the guest sees.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// The first four bytes of every qcow2 file.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Largest cluster QEMU makes (2 MiB) and the smallest (512 bytes).
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
/// Bits 9-55 of an L1 or standard L2 entry hold a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
/// Incompatible feature bits (version 3).
const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// How compressed clusters are compressed (header byte 104, version 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClusterCompression {
    Deflate,
    Zstd,
}

/// An error in or a feature of the file that the reader will not go past.
fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The header fields the reader uses.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    /// The guest disk's size in bytes.
    pub size: u64,
    l1_entries: u64,
    l1_offset: u64,
    compression: ClusterCompression,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(v)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

impl Header {
    /// Parses and checks the header of a file of `file_len` bytes; refuses a virtual size
    /// above `max_size`.
    pub fn parse(h: &[u8; 112], file_len: u64, max_size: u64) -> io::Result<Header> {
        if h[..4] != MAGIC {
            return Err(bad("not a qcow2 file (no QFI\\xfb magic)"));
        }
        let version = be32(h, 4);
        if version != 2 && version != 3 {
            return Err(bad(format!("qcow2 version {version} (hull reads 2 and 3)")));
        }
        if be64(h, 8) != 0 {
            return Err(bad(
                "the qcow2 image has a backing file; convert it to a standalone image first (qemu-img convert -O qcow2)",
            ));
        }
        let cluster_bits = be32(h, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(format!(
                "qcow2 cluster_bits {cluster_bits} out of 9..=21"
            )));
        }
        let size = be64(h, 24);
        if size > max_size {
            return Err(bad(format!(
                "the qcow2 disk is {size} bytes, above the {max_size}-byte limit"
            )));
        }
        if be32(h, 32) != 0 {
            return Err(bad("the qcow2 image is encrypted"));
        }
        let l1_entries = u64::from(be32(h, 36));
        let l1_offset = be64(h, 40);
        let mut compression = ClusterCompression::Deflate;
        if version == 3 {
            let incompat = be64(h, 72);
            let known = INCOMPAT_DIRTY
                | INCOMPAT_CORRUPT
                | INCOMPAT_DATA_FILE
                | INCOMPAT_COMPRESSION
                | INCOMPAT_EXTL2;
            if incompat & !known != 0 {
                return Err(bad(format!(
                    "the qcow2 image has unknown incompatible features {:#x}",
                    incompat & !known
                )));
            }
            if incompat & INCOMPAT_CORRUPT != 0 {
                return Err(bad("the qcow2 image is marked corrupt"));
            }
            if incompat & INCOMPAT_DATA_FILE != 0 {
                return Err(bad("the qcow2 image keeps its data in an external file"));
            }
            if incompat & INCOMPAT_EXTL2 != 0 {
                return Err(bad(
                    "the qcow2 image has extended L2 entries (subclusters), which hull does not read",
                ));
            }
            let header_len = be32(h, 100);
            if incompat & INCOMPAT_COMPRESSION != 0 {
                if header_len <= 104 {
                    return Err(bad(
                        "the qcow2 header names a compression type it does not hold",
                    ));
                }
                compression = match h[104] {
                    0 => ClusterCompression::Deflate,
                    1 => ClusterCompression::Zstd,
                    t => return Err(bad(format!("qcow2 compression type {t} is unknown"))),
                };
            }
        }
        let cluster = 1u64 << cluster_bits;
        // Each L2 table covers (cluster / 8) clusters; the L1 table needs this many entries.
        let per_l2 = (cluster / 8) * cluster;
        let needed = size.div_ceil(per_l2);
        if l1_entries < needed {
            return Err(bad(format!(
                "the qcow2 L1 table has {l1_entries} entries, {needed} are needed for {size} bytes"
            )));
        }
        if !l1_offset.is_multiple_of(cluster) || l1_offset.saturating_add(needed * 8) > file_len {
            return Err(bad(format!(
                "the qcow2 L1 table at {l1_offset} is unaligned or past the end of the file"
            )));
        }
        Ok(Header {
            version,
            cluster_bits,
            size,
            l1_entries: needed,
            l1_offset,
            compression,
        })
    }
}

/// The guest's bytes of a qcow2 file, in order.
#[derive(Debug)]
pub struct Qcow2Reader<'a> {
    file: &'a File,
    file_len: u64,
    header: Header,
    l1: Vec<u64>,
    /// The L2 table loaded, by L1 index.
    l2: Option<(u64, Vec<u64>)>,
    /// The cluster in `buf`, by guest cluster index.
    loaded: Option<u64>,
    buf: Vec<u8>,
    pos: u64,
}

impl<'a> Qcow2Reader<'a> {
    /// Opens the qcow2 image in `file`; refuses a virtual size above `max_size`.
    pub fn new(file: &'a File, max_size: u64) -> io::Result<Qcow2Reader<'a>> {
        let file_len = file.metadata()?.len();
        let mut h = [0u8; 112];
        read_exact_at(file, &mut h[..72], 0, file_len)
            .map_err(|_| bad("the qcow2 header is truncated"))?;
        if be32(&h, 4) == 3 {
            read_exact_at(file, &mut h[72..], 72, file_len)
                .map_err(|_| bad("the qcow2 version 3 header is truncated"))?;
        }
        let header = Header::parse(&h, file_len, max_size)?;
        let mut raw = vec![0u8; (header.l1_entries * 8) as usize];
        read_exact_at(file, &mut raw, header.l1_offset, file_len)?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        Ok(Qcow2Reader {
            file,
            file_len,
            buf: vec![0u8; 1 << header.cluster_bits],
            header,
            l1,
            l2: None,
            loaded: None,
            pos: 0,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn cluster_size(&self) -> u64 {
        1 << self.header.cluster_bits
    }

    /// The L2 entry for guest cluster `c` (0 for none).
    fn l2_entry(&mut self, c: u64) -> io::Result<u64> {
        let per_l2 = self.cluster_size() / 8;
        let (i, j) = (c / per_l2, (c % per_l2) as usize);
        let l1e = self.l1.get(i as usize).copied().unwrap_or(0);
        let offset = l1e & OFFSET_MASK;
        if offset == 0 {
            return Ok(0);
        }
        if self.l2.as_ref().map(|(k, _)| *k) != Some(i) {
            if !offset.is_multiple_of(self.cluster_size()) {
                return Err(bad(format!("qcow2 L2 table offset {offset} is unaligned")));
            }
            let mut raw = vec![0u8; self.cluster_size() as usize];
            read_exact_at(self.file, &mut raw, offset, self.file_len)?;
            self.l2 = Some((i, raw.chunks_exact(8).map(|c| be64(c, 0)).collect()));
        }
        Ok(self
            .l2
            .as_ref()
            .and_then(|(_, t)| t.get(j).copied())
            .unwrap_or(0))
    }

    /// Fills `buf` with guest cluster `c`.
    fn load(&mut self, c: u64) -> io::Result<()> {
        let entry = self.l2_entry(c)?;
        let cluster = self.cluster_size();
        if entry & L2_COMPRESSED != 0 {
            // Bits 0..x-1 the host offset, x..61 the count of further 512-byte sectors.
            let x = 62 - (self.header.cluster_bits - 8);
            let offset = entry & ((1u64 << x) - 1);
            let sectors = ((entry & ((1u64 << 62) - 1)) >> x) + 1;
            let len = (sectors * 512 - (offset & 511)).min(2 * cluster);
            if offset >= self.file_len {
                return Err(bad(format!(
                    "qcow2 compressed cluster at {offset} is past the end of the file"
                )));
            }
            // The last compressed cluster may end before its last sector does.
            let len = len.min(self.file_len - offset) as usize;
            let mut packed = vec![0u8; len];
            read_exact_at(self.file, &mut packed, offset, self.file_len)?;
            self.inflate(&packed, c)
        } else if (entry & L2_ZERO != 0 && self.header.version == 3) || entry & OFFSET_MASK == 0 {
            self.buf.fill(0);
            Ok(())
        } else {
            let offset = entry & OFFSET_MASK;
            if !offset.is_multiple_of(cluster) || offset >= self.file_len {
                return Err(bad(format!(
                    "qcow2 data cluster at {offset} is unaligned or past the end of the file"
                )));
            }
            // A file may end inside its last cluster: what is missing reads as zeros, as
            // QEMU reads it.
            let have = (self.file_len - offset).min(cluster) as usize;
            let (head, tail) = self.buf.split_at_mut(have);
            self.file.read_exact_at(head, offset)?;
            tail.fill(0);
            Ok(())
        }
    }

    fn inflate(&mut self, packed: &[u8], c: u64) -> io::Result<()> {
        let short = || {
            bad(format!(
                "qcow2 compressed cluster {c} does not inflate to a cluster"
            ))
        };
        match self.header.compression {
            ClusterCompression::Deflate => {
                let mut d = flate2::Decompress::new(false);
                d.decompress(packed, &mut self.buf, flate2::FlushDecompress::Finish)
                    .map_err(|e| bad(format!("qcow2 compressed cluster {c}: {e}")))?;
                if d.total_out() != self.buf.len() as u64 {
                    return Err(short());
                }
            }
            ClusterCompression::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(packed)
                    .map_err(|e| bad(format!("qcow2 compressed cluster {c}: {e}")))?;
                dec.read_exact(&mut self.buf).map_err(|_| short())?;
            }
        }
        Ok(())
    }
}

impl Read for Qcow2Reader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.header.size || out.is_empty() {
            return Ok(0);
        }
        let c = self.pos >> self.header.cluster_bits;
        if self.loaded != Some(c) {
            self.loaded = None;
            self.load(c)?;
            self.loaded = Some(c);
        }
        let within = (self.pos - (c << self.header.cluster_bits)) as usize;
        let left = (self.header.size - self.pos).min((self.buf.len() - within) as u64) as usize;
        let n = left.min(out.len());
        out[..n].copy_from_slice(&self.buf[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads `buf.len()` bytes at `offset`, refusing a range past `file_len` by name.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64, file_len: u64) -> io::Result<()> {
    if offset.saturating_add(buf.len() as u64) > file_len {
        return Err(bad(format!(
            "qcow2 structure at {offset} ({} bytes) is past the end of the {file_len}-byte file",
            buf.len()
        )));
    }
    file.read_exact_at(buf, offset)
}
