//! A read-only FAT12/16/32 reader (with VFAT long names): enough to walk paths, list
//! directories and read files, as on an EFI system partition.
//!
//! Every number it takes from the disk is checked before use: the boot sector's geometry
//! against the partition (the FATs, the root directory and every cluster lie inside it),
//! cluster numbers against the cluster count, offsets with checked arithmetic. Cluster chains
//! are walked one link at a time and stop at a cluster seen before (a loop), at a cluster out
//! of range, at the number of clusters in the filesystem, and at what the file's size or the
//! directory cap needs. The FAT is read lazily, a sector at a time through a small cache, so
//! a large FAT32 partition costs only the FAT sectors its chains use. It never writes.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::ControlFlow;

use crate::bytes::{byte, le16, le32};
use crate::disk::{self, Disk, ReadError};
use crate::ext4::{MAX_COMPONENTS, MAX_DIR_ENTRIES, MAX_LISTED, MAX_PATH};
use crate::table::Partition;

/// Bytes in one directory entry.
const ENTRY: usize = 32;
/// Attribute bits.
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
/// A long-name entry has these four attribute bits, and neither directory nor archive.
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_LONG_NAME_MASK: u8 = 0x3F;
/// First name byte of a deleted entry, and of the entry after the directory's last.
const DELETED: u8 = 0xE5;
const END: u8 = 0x00;
/// Long-name entry ordinal flag: the last (first stored) entry of a name.
const LAST_LONG_ENTRY: u8 = 0x40;
/// UTF-16 units in one long-name entry.
const LFN_UNITS: usize = 13;
/// Long-name entries in one name (255 units / 13, rounded up).
const MAX_LFN_ENTRIES: u8 = 20;
/// NT case bits (byte 12 of a short entry): the base name, or the extension, is lowercase.
const NT_LOWER_BASE: u8 = 0x08;
const NT_LOWER_EXT: u8 = 0x10;
/// FAT sectors kept in the cache.
const FAT_CACHE_SECTORS: usize = 8;
/// Largest cluster number a FAT32 filesystem may use (0x0FFFFFF7 marks a bad cluster).
const FAT32_MAX_CLUSTER: u32 = 0x0FFF_FFF6;

/// Why a FAT filesystem, path or file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the read limit was reached")]
    ReadLimit,
    #[error("the partition lies outside the disk")]
    PartitionOutsideDisk,
    #[error("a read of {len} bytes at byte {offset} of the partition lies outside it")]
    OutsidePartition { offset: u64, len: usize },
    #[error("boot sector: {0}")]
    BootSector(String),
    #[error("{path}: cluster {cluster}: {why}")]
    Chain {
        path: String,
        cluster: u32,
        why: String,
    },
    #[error("directory {path}: {why}")]
    Dir { path: String, why: String },
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: a component is not a directory")]
    NotADirectory { path: String },
    #[error("{path}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("{path} is a directory, not a regular file")]
    NotAFile { path: String },
    #[error("{path} is {size} bytes, more than the limit of {max}")]
    TooLarge { path: String, size: u64, max: u64 },
}

type Result<T, E = FatError> = std::result::Result<T, E>;

/// Which FAT, as decided by the cluster count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

/// The geometry the boot sector gives, all checked against the partition.
#[derive(Debug, Clone)]
struct Bpb {
    kind: Kind,
    bytes_per_sector: u64,
    cluster_size: u64,
    /// Byte offset (in the partition) of the FAT in use.
    fat_start: u64,
    /// FAT12/16: byte offset of the fixed root directory and its number of entries.
    root_start: u64,
    root_entries: u64,
    /// Byte offset of cluster 2.
    data_start: u64,
    /// Data clusters: valid cluster numbers are 2..clusters + 2.
    clusters: u32,
    /// FAT32: the root directory's first cluster.
    root_cluster: u32,
}

impl Bpb {
    fn last_cluster(&self) -> u32 {
        // clusters <= FAT32_MAX_CLUSTER - 1 (checked at open): no overflow.
        self.clusters + 1
    }
}

/// Where a directory's entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// The fixed root directory region of FAT12/16.
    FixedRoot,
    /// A cluster chain from this cluster (FAT32's root, and every subdirectory).
    Chain(u32),
}

/// What a path names.
#[derive(Debug, Clone, Copy)]
enum Node {
    Dir(Dir),
    File { cluster: u32, size: u32 },
}

/// One live directory entry, its long name joined to it.
#[derive(Debug, Clone)]
struct Entry {
    long: Option<String>,
    short: String,
    attr: u8,
    cluster: u32,
    size: u32,
}

impl Entry {
    fn name(&self) -> &str {
        self.long.as_deref().unwrap_or(&self.short)
    }

    fn matches(&self, name: &str) -> bool {
        self.short.eq_ignore_ascii_case(name)
            || self
                .long
                .as_deref()
                .is_some_and(|l| l.eq_ignore_ascii_case(name))
    }
}

/// The long name being collected from the entries before a short entry.
#[derive(Debug, Default)]
struct LongName {
    units: Vec<u16>,
    /// The ordinal the next long entry must have; 0 once complete.
    expect: u8,
    checksum: u8,
    active: bool,
}

impl LongName {
    fn reset(&mut self) {
        self.active = false;
        self.units.clear();
    }

    fn push(&mut self, raw: &[u8]) {
        let ord = byte(raw, 0);
        let checksum = byte(raw, 13);
        if ord & LAST_LONG_ENTRY != 0 {
            let n = ord & !LAST_LONG_ENTRY;
            if n == 0 || n > MAX_LFN_ENTRIES {
                self.reset();
                return;
            }
            self.units.clear();
            self.units.resize(usize::from(n) * LFN_UNITS, 0xFFFF);
            self.expect = n;
            self.checksum = checksum;
            self.active = true;
        } else if !self.active || ord != self.expect || checksum != self.checksum {
            self.reset();
            return;
        }
        // expect is 1..=MAX_LFN_ENTRIES here, and units holds expect * 13 units.
        let base = usize::from(self.expect - 1) * LFN_UNITS;
        let offsets = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain([28, 30]);
        for (k, off) in offsets.enumerate() {
            if let Some(u) = self.units.get_mut(base + k) {
                *u = le16(raw, off);
            }
        }
        self.expect -= 1;
    }

    /// The name, when a complete sequence precedes the short entry `short11`.
    fn take(&mut self, short11: &[u8]) -> Option<String> {
        let done = self.active && self.expect == 0 && self.checksum == checksum(short11);
        let name = done.then(|| {
            let end = self
                .units
                .iter()
                .position(|&u| u == 0)
                .unwrap_or(self.units.len());
            String::from_utf16_lossy(self.units.get(..end).unwrap_or_default())
        });
        self.reset();
        name.filter(|n| !n.is_empty())
    }
}

/// The checksum of an 8.3 name that its long-name entries carry.
fn checksum(short11: &[u8]) -> u8 {
    short11
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// "NAME.EXT" (or "NAME") from the 11 name bytes and the NT case bits; bytes outside ASCII
/// (an OEM code page) become U+FFFD.
fn short_name(raw: &[u8]) -> String {
    let nt = byte(raw, 12);
    let text = |bytes: &[u8], lower: bool| -> String {
        let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
        bytes
            .get(..end)
            .unwrap_or_default()
            .iter()
            .map(|&b| {
                if b.is_ascii() {
                    let c = char::from(b);
                    if lower { c.to_ascii_lowercase() } else { c }
                } else {
                    char::REPLACEMENT_CHARACTER
                }
            })
            .collect()
    };
    let mut base = raw.get(..8).unwrap_or_default().to_vec();
    if let Some(b) = base.first_mut()
        && *b == 0x05
    {
        // 0x05 stands for a name starting with 0xE5 (which would mean deleted).
        *b = DELETED;
    }
    let mut name = text(&base, nt & NT_LOWER_BASE != 0);
    let ext = text(raw.get(8..11).unwrap_or_default(), nt & NT_LOWER_EXT != 0);
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&ext);
    }
    name
}

/// FAT sectors read so far: a few, replaced in turn.
#[derive(Debug, Default)]
struct FatCache {
    sectors: Vec<(u64, Vec<u8>)>,
    next: usize,
}

/// A read-only FAT12/16/32 filesystem inside one partition.
pub struct Fat<'a> {
    disk: &'a dyn Disk,
    part: Partition,
    bpb: Bpb,
    cache: RefCell<FatCache>,
    /// Directory entries scanned in one directory ([`MAX_DIR_ENTRIES`]; lowered by tests).
    max_dir_entries: u64,
    /// Names listed by [`Fat::read_dir`] ([`MAX_LISTED`]; lowered by tests).
    max_listed: usize,
}

impl fmt::Debug for Fat<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fat")
            .field("part", &self.part)
            .field("bpb", &self.bpb)
            .finish_non_exhaustive()
    }
}

fn boot_sector(why: impl Into<String>) -> FatError {
    FatError::BootSector(why.into())
}

fn chain_err(path: &str, cluster: u32, why: impl Into<String>) -> FatError {
    FatError::Chain {
        path: path.to_owned(),
        cluster,
        why: why.into(),
    }
}

fn dir_err(path: &str, why: impl Into<String>) -> FatError {
    FatError::Dir {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// A cluster chain, walked one link at a time.
struct ChainWalk<'f, 'a> {
    fs: &'f Fat<'a>,
    path: &'f str,
    /// The cluster the next call returns, once checked.
    next: Option<u32>,
    /// The cluster last returned, whose FAT entry leads on.
    cur: Option<u32>,
    seen: HashSet<u32>,
}

impl<'f, 'a> ChainWalk<'f, 'a> {
    fn new(fs: &'f Fat<'a>, path: &'f str, first: u32) -> Result<Self> {
        fs.check_cluster(path, first, "the chain starts at")?;
        Ok(ChainWalk {
            fs,
            path,
            next: Some(first),
            cur: None,
            seen: HashSet::new(),
        })
    }

    /// The next cluster, or `None` after the end-of-chain mark.
    fn step(&mut self) -> Result<Option<u32>> {
        if let Some(cur) = self.cur {
            self.next = self.fs.fat_next(self.path, cur)?;
        }
        let Some(c) = self.next else {
            return Ok(None);
        };
        if !self.seen.insert(c) {
            return Err(chain_err(
                self.path,
                c,
                "the chain comes back to this cluster (a loop)",
            ));
        }
        // Distinct clusters, each in range: the chain cannot be longer than the filesystem.
        self.cur = Some(c);
        Ok(Some(c))
    }
}

impl<'a> Fat<'a> {
    /// Opens the FAT filesystem in `part` of `disk`: its boot sector must give 512..=4096
    /// bytes per sector (a power of two), a power-of-two number of sectors per cluster, and
    /// clusters of at most 64 KiB; FAT12, FAT16 or FAT32 is decided by the cluster count as
    /// Microsoft's specification says, and the FATs, root directory and data area must all lie
    /// inside the partition.
    pub fn open(disk: &'a dyn Disk, part: &Partition) -> Result<Self> {
        if part
            .start
            .checked_add(part.len)
            .is_none_or(|end| end > disk.len())
        {
            return Err(FatError::PartitionOutsideDisk);
        }
        let mut fs = Fat {
            disk,
            part: part.clone(),
            bpb: Bpb {
                kind: Kind::Fat12,
                bytes_per_sector: 512,
                cluster_size: 512,
                fat_start: 0,
                root_start: 0,
                root_entries: 0,
                data_start: 0,
                clusters: 0,
                root_cluster: 0,
            },
            cache: RefCell::new(FatCache::default()),
            max_dir_entries: MAX_DIR_ENTRIES,
            max_listed: MAX_LISTED,
        };
        if part.len < 512 {
            return Err(boot_sector(format!(
                "the partition ({} bytes) is smaller than a boot sector",
                part.len
            )));
        }
        let mut raw = [0u8; 512];
        fs.read(0, &mut raw)?;
        fs.bpb = parse_bpb(&raw, part.len)?;
        Ok(fs)
    }

    /// The partition this filesystem is in.
    pub fn partition(&self) -> &Partition {
        &self.part
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let outside = || FatError::OutsidePartition { offset, len };
        let end = offset.checked_add(len as u64).ok_or_else(outside)?;
        if end > self.part.len {
            return Err(outside());
        }
        let abs = self.part.start.checked_add(offset).ok_or_else(outside)?;
        Ok(disk::read_at(self.disk, buf, abs).map_err(|_| FatError::ReadLimit)??)
    }

    fn check_cluster(&self, path: &str, c: u32, what: &str) -> Result<()> {
        let last = self.bpb.last_cluster();
        if c < 2 || c > last {
            return Err(chain_err(
                path,
                c,
                format!("{what} a cluster outside 2..={last}"),
            ));
        }
        Ok(())
    }

    /// Byte offset of cluster `c` (checked to be in range).
    fn cluster_offset(&self, c: u32) -> u64 {
        self.bpb.data_start + u64::from(c - 2) * self.bpb.cluster_size
    }

    /// Bytes of the FAT in use from `offset` (from the FAT's start), through the cache.
    fn fat_bytes(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let bps = self.bpb.bytes_per_sector;
        for (k, slot) in out.iter_mut().enumerate() {
            let at = offset + k as u64;
            let sector = self.bpb.fat_start + at / bps * bps;
            let within = (at % bps) as usize;
            *slot = self.fat_sector_byte(sector, within)?;
        }
        Ok(())
    }

    fn fat_sector_byte(&self, sector: u64, within: usize) -> Result<u8> {
        if let Ok(cache) = self.cache.try_borrow()
            && let Some((_, bytes)) = cache.sectors.iter().find(|(s, _)| *s == sector)
        {
            return Ok(byte(bytes, within));
        }
        let mut bytes = vec![0u8; self.bpb.bytes_per_sector as usize];
        self.read(sector, &mut bytes)?;
        let b = byte(&bytes, within);
        if let Ok(mut cache) = self.cache.try_borrow_mut() {
            let next = cache.next;
            if cache.sectors.len() < FAT_CACHE_SECTORS {
                cache.sectors.push((sector, bytes));
            } else if let Some(slot) = cache.sectors.get_mut(next) {
                *slot = (sector, bytes);
            }
            cache.next = (next + 1) % FAT_CACHE_SECTORS;
        }
        Ok(b)
    }

    /// The cluster after `c` (in range) in its chain, or `None` at the end-of-chain mark.
    fn fat_next(&self, path: &str, c: u32) -> Result<Option<u32>> {
        let n = u64::from(c);
        let (value, end, bad) = match self.bpb.kind {
            Kind::Fat12 => {
                let mut b = [0u8; 2];
                self.fat_bytes(n + n / 2, &mut b)?;
                let v = u16::from_le_bytes(b);
                let v = if c % 2 == 1 { v >> 4 } else { v & 0xFFF };
                (u32::from(v), 0xFF8, 0xFF7)
            }
            Kind::Fat16 => {
                let mut b = [0u8; 2];
                self.fat_bytes(n * 2, &mut b)?;
                (u32::from(u16::from_le_bytes(b)), 0xFFF8, 0xFFF7)
            }
            Kind::Fat32 => {
                let mut b = [0u8; 4];
                self.fat_bytes(n * 4, &mut b)?;
                (
                    u32::from_le_bytes(b) & 0x0FFF_FFFF,
                    0x0FFF_FFF8,
                    0x0FFF_FFF7,
                )
            }
        };
        if value >= end {
            return Ok(None);
        }
        let why = if value == 0 {
            "its FAT entry says free, in the middle of a chain".to_owned()
        } else if value == bad {
            "its FAT entry marks it bad, in the middle of a chain".to_owned()
        } else if value == 1 || value > self.bpb.last_cluster() {
            format!(
                "its FAT entry points to cluster {value}, outside 2..={}",
                self.bpb.last_cluster()
            )
        } else {
            return Ok(Some(value));
        };
        Err(chain_err(path, c, why))
    }

    /// Calls `f` with each live entry of directory `dir` (named `path` in errors), `.` and
    /// `..` included, until it breaks or the end-of-directory mark.
    fn scan_dir(
        &self,
        dir: Dir,
        path: &str,
        f: &mut dyn FnMut(&Entry) -> ControlFlow<()>,
    ) -> Result<()> {
        let mut long = LongName::default();
        let mut count = 0u64;
        match dir {
            Dir::FixedRoot => {
                let bps = self.bpb.bytes_per_sector;
                let mut buf = vec![0u8; bps as usize];
                let mut left = self.bpb.root_entries * ENTRY as u64;
                let mut at = self.bpb.root_start;
                while left > 0 {
                    self.read(at, &mut buf)?;
                    let used = buf.get(..left.min(bps) as usize).unwrap_or_default();
                    if self
                        .scan_entries(path, used, &mut long, &mut count, f)?
                        .is_break()
                    {
                        break;
                    }
                    left = left.saturating_sub(bps);
                    at += bps;
                }
            }
            Dir::Chain(first) => {
                let mut buf = vec![0u8; self.bpb.cluster_size as usize];
                let mut chain = ChainWalk::new(self, path, first)?;
                while let Some(c) = chain.step()? {
                    self.read(self.cluster_offset(c), &mut buf)?;
                    if self
                        .scan_entries(path, &buf, &mut long, &mut count, f)?
                        .is_break()
                    {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Walks the 32-byte entries of one sector or cluster of a directory; breaks at the
    /// end-of-directory mark or when `f` does.
    fn scan_entries(
        &self,
        path: &str,
        buf: &[u8],
        long: &mut LongName,
        count: &mut u64,
        f: &mut dyn FnMut(&Entry) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        for raw in buf.chunks_exact(ENTRY) {
            *count += 1;
            if *count > self.max_dir_entries {
                return Err(dir_err(
                    path,
                    format!("has more than {} entries", self.max_dir_entries),
                ));
            }
            let first = byte(raw, 0);
            let attr = byte(raw, 11);
            if first == END {
                return Ok(ControlFlow::Break(()));
            }
            if first == DELETED {
                long.reset();
                continue;
            }
            if attr & ATTR_LONG_NAME_MASK == ATTR_LONG_NAME {
                long.push(raw);
                continue;
            }
            let short11 = raw.get(..11).unwrap_or_default();
            let name = long.take(short11);
            if attr & ATTR_VOLUME_ID != 0 {
                continue;
            }
            let hi = match self.bpb.kind {
                Kind::Fat32 => u32::from(le16(raw, 20)) << 16,
                Kind::Fat12 | Kind::Fat16 => 0,
            };
            let entry = Entry {
                long: name,
                short: short_name(raw),
                attr,
                cluster: hi | u32::from(le16(raw, 26)),
                size: le32(raw, 28),
            };
            if f(&entry).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    fn root(&self) -> Dir {
        match self.bpb.kind {
            Kind::Fat32 => Dir::Chain(self.bpb.root_cluster),
            Kind::Fat12 | Kind::Fat16 => Dir::FixedRoot,
        }
    }

    /// What `path` names, from the root (a relative path is taken as absolute); names are
    /// compared ASCII-case-insensitively with both the long and the 8.3 name.
    fn lookup(&self, path: &str) -> Result<Node> {
        if path.len() > MAX_PATH {
            return Err(FatError::BadPath {
                path: path.chars().take(64).collect::<String>() + "...",
                why: "longer than 4096 bytes",
            });
        }
        if path.split('/').count() > MAX_COMPONENTS {
            return Err(FatError::BadPath {
                path: path.to_owned(),
                why: "has more than 4096 '/'-separated parts",
            });
        }
        let root = self.root();
        let mut cur = Node::Dir(root);
        let mut walked = String::new();
        for name in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let Node::Dir(dir) = cur else {
                return Err(FatError::NotADirectory {
                    path: path.to_owned(),
                });
            };
            let here = if walked.is_empty() { "/" } else { &walked };
            if name == ".." && dir == root {
                continue;
            }
            let mut found = None;
            self.scan_dir(dir, here, &mut |e| {
                if e.matches(name) {
                    found = Some(e.clone());
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
            let entry = found.ok_or_else(|| FatError::NotFound {
                path: path.to_owned(),
            })?;
            walked.push('/');
            walked.push_str(entry.name());
            cur = if entry.attr & ATTR_DIRECTORY != 0 {
                if entry.cluster == 0 {
                    if entry.short == ".." {
                        Node::Dir(root)
                    } else {
                        return Err(dir_err(&walked, "has no first cluster"));
                    }
                } else {
                    Node::Dir(Dir::Chain(entry.cluster))
                }
            } else {
                Node::File {
                    cluster: entry.cluster,
                    size: entry.size,
                }
            };
        }
        Ok(cur)
    }

    /// The contents of the regular file at absolute `path` ('/'-separated), refused when
    /// larger than `max` bytes. Names are compared ASCII-case-insensitively with both the
    /// long (VFAT) name, decoded lossily from UTF-16, and the 8.3 name.
    pub fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let (cluster, size) = match self.lookup(path)? {
            Node::File { cluster, size } => (cluster, size),
            Node::Dir(_) => {
                return Err(FatError::NotAFile {
                    path: path.to_owned(),
                });
            }
        };
        let size = u64::from(size);
        if size > max {
            return Err(FatError::TooLarge {
                path: path.to_owned(),
                size,
                max,
            });
        }
        self.data(path, cluster, size)
    }

    /// The first `size` bytes of the chain from `first` (`size` is at most 4 GiB - 1).
    fn data(&self, path: &str, first: u32, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let cs = self.bpb.cluster_size;
        let needed = size.div_ceil(cs);
        if needed > u64::from(self.bpb.clusters) {
            return Err(chain_err(
                path,
                first,
                format!(
                    "the file's {size} bytes need {needed} clusters, more than the filesystem's {}",
                    self.bpb.clusters
                ),
            ));
        }
        let len = usize::try_from(size)
            .map_err(|_| chain_err(path, first, format!("{size} bytes do not fit in memory")))?;
        let mut out = vec![0u8; len];
        let mut chain = ChainWalk::new(self, path, first)?;
        // Runs of consecutive clusters are read at once: (first cluster, file cluster, count).
        let mut run: Option<(u32, u64, u64)> = None;
        for k in 0..needed {
            let c = chain.step()?.ok_or_else(|| {
                chain_err(
                    path,
                    first,
                    format!(
                        "the chain ends after {k} clusters, but the file's {size} bytes need {needed}"
                    ),
                )
            })?;
            run = match run {
                Some((start, at, n)) if u64::from(start) + n == u64::from(c) => {
                    Some((start, at, n + 1))
                }
                Some(done) => {
                    self.read_run(&mut out, done)?;
                    Some((c, k, 1))
                }
                None => Some((c, k, 1)),
            };
        }
        if let Some(done) = run {
            self.read_run(&mut out, done)?;
        }
        Ok(out)
    }

    /// Reads `n` clusters from cluster `start` into `out` from file cluster `at`, cut at its
    /// end.
    fn read_run(&self, out: &mut [u8], (start, at, n): (u32, u64, u64)) -> Result<()> {
        let cs = self.bpb.cluster_size;
        let size = out.len() as u64;
        // at + n <= needed = size / cs rounded up: the start is inside `out`.
        let from = (at * cs).min(size) as usize;
        let to = ((at + n) * cs).min(size) as usize;
        let dst = out.get_mut(from..to).unwrap_or_default();
        self.read(self.cluster_offset(start), dst)
    }

    /// The names in the directory at `path`: long names where present, else 8.3 names as
    /// "NAME.EXT" (lowercased where the entry's NT case bits say so), without `.`, `..`,
    /// deleted entries and volume labels; more than [`MAX_LISTED`] is an error.
    pub fn read_dir(&self, path: &str) -> Result<Vec<String>> {
        let Node::Dir(dir) = self.lookup(path)? else {
            return Err(FatError::NotADirectory {
                path: path.to_owned(),
            });
        };
        let mut out = Vec::new();
        let mut too_many = false;
        self.scan_dir(dir, path, &mut |e| {
            if e.short == "." || e.short == ".." {
                return ControlFlow::Continue(());
            }
            if out.len() >= self.max_listed {
                too_many = true;
                return ControlFlow::Break(());
            }
            out.push(e.name().to_owned());
            ControlFlow::Continue(())
        })?;
        if too_many {
            return Err(dir_err(
                path,
                format!("has more than {} entries to list", self.max_listed),
            ));
        }
        Ok(out)
    }
}

fn parse_bpb(raw: &[u8], part_len: u64) -> Result<Bpb> {
    if raw.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return Err(boot_sector("no 0x55 0xaa signature at byte 510"));
    }
    let bps = u64::from(le16(raw, 11));
    if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
        return Err(boot_sector(format!(
            "{bps} bytes per sector is not a power of two between 512 and 4096"
        )));
    }
    let spc = u64::from(byte(raw, 13));
    if !spc.is_power_of_two() {
        return Err(boot_sector(format!(
            "{spc} sectors per cluster is not a power of two"
        )));
    }
    let cluster_size = bps * spc;
    if cluster_size > 64 << 10 {
        return Err(boot_sector(format!(
            "clusters of {cluster_size} bytes are larger than 64 KiB"
        )));
    }
    let reserved = u64::from(le16(raw, 14));
    if reserved == 0 {
        return Err(boot_sector("0 reserved sectors"));
    }
    let fats = u64::from(byte(raw, 16));
    if fats == 0 {
        return Err(boot_sector("0 FATs"));
    }
    let root_entries = u64::from(le16(raw, 17));
    let total16 = u64::from(le16(raw, 19));
    let total = if total16 != 0 {
        total16
    } else {
        u64::from(le32(raw, 32))
    };
    if total == 0 {
        return Err(boot_sector("0 sectors in all"));
    }
    let fat16_sectors = u64::from(le16(raw, 22));
    let fat_sectors = if fat16_sectors != 0 {
        fat16_sectors
    } else {
        u64::from(le32(raw, 36))
    };
    if fat_sectors == 0 {
        return Err(boot_sector("FATs of 0 sectors"));
    }
    // All fields are at most 32 bits and bps at most 4096: none of this overflows.
    let fs_bytes = total * bps;
    if fs_bytes > part_len {
        return Err(boot_sector(format!(
            "the filesystem's {total} sectors of {bps} bytes do not fit in its partition of {part_len} bytes"
        )));
    }
    let root_sectors = (root_entries * ENTRY as u64).div_ceil(bps);
    let meta = reserved + fats * fat_sectors + root_sectors;
    let data_sectors = total.checked_sub(meta).ok_or_else(|| {
        boot_sector(format!(
            "the reserved sectors, FATs and root directory ({meta} sectors) do not fit in the filesystem's {total}"
        ))
    })?;
    let clusters = data_sectors / spc;
    let kind = if clusters < 4085 {
        Kind::Fat12
    } else if clusters < 65525 {
        Kind::Fat16
    } else {
        Kind::Fat32
    };
    if clusters == 0 {
        return Err(boot_sector("no data clusters"));
    }
    if kind != Kind::Fat32 && root_entries == 0 {
        return Err(boot_sector(format!(
            "{clusters} clusters make it FAT12/16, but it has no root directory entries"
        )));
    }
    let bits = match kind {
        Kind::Fat12 => 12,
        Kind::Fat16 => 16,
        Kind::Fat32 => 32,
    };
    let fat_len = fat_sectors * bps;
    let fat_needs = ((clusters + 2) * bits).div_ceil(8);
    if fat_needs > fat_len {
        return Err(boot_sector(format!(
            "FATs of {fat_len} bytes cannot hold the entries of {clusters} clusters"
        )));
    }
    let mut active = 0;
    let mut root_cluster = 0;
    if kind == Kind::Fat32 {
        if clusters > u64::from(FAT32_MAX_CLUSTER - 1) {
            return Err(boot_sector(format!(
                "{clusters} clusters, more than FAT32 can number"
            )));
        }
        if root_entries != 0 || fat16_sectors != 0 {
            return Err(boot_sector(format!(
                "{clusters} clusters make it FAT32, but it has a FAT12/16 root directory or FAT size"
            )));
        }
        let flags = le16(raw, 40);
        if flags & 0x80 != 0 {
            // FAT mirroring is off: only the FAT numbered in the low bits is in use.
            active = u64::from(flags & 0x0F);
            if active >= fats {
                return Err(boot_sector(format!(
                    "the active FAT is number {active} of {fats}"
                )));
            }
        }
        root_cluster = le32(raw, 44);
        if root_cluster < 2 || u64::from(root_cluster) > clusters + 1 {
            return Err(boot_sector(format!(
                "the root directory's cluster {root_cluster} is outside 2..={}",
                clusters + 1
            )));
        }
    }
    Ok(Bpb {
        kind,
        bytes_per_sector: bps,
        cluster_size,
        fat_start: (reserved + active * fat_sectors) * bps,
        root_start: (reserved + fats * fat_sectors) * bps,
        root_entries,
        data_start: meta * bps,
        // Below FAT32_MAX_CLUSTER (FAT32) or 65525 (FAT12/16).
        clusters: clusters as u32,
        root_cluster,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::fs::{self, File};
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::disk::Metered;

    const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

    /// Deterministic bytes, none of them zero.
    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u8) | 1
            })
            .collect()
    }

    fn run(cmd: &mut Command) {
        let out = cmd
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (mtools and util-linux are needed)"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A FAT image built by mtools in a temporary directory.
    struct Image {
        dir: tempfile::TempDir,
        path: PathBuf,
        /// What mtools' `-i` takes: the file, or `file@@offset` for a partition.
        target: String,
        dirs: HashSet<String>,
        seq: usize,
    }

    impl Image {
        /// A `size`-byte file formatted by `mformat` with `args`.
        fn new(size: u64, args: &[&str]) -> Image {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("fat.img");
            File::create(&path)
                .and_then(|f| f.set_len(size))
                .expect("create image");
            let target = path.display().to_string();
            Image::format(dir, path, target, args)
        }

        fn format(dir: tempfile::TempDir, path: PathBuf, target: String, args: &[&str]) -> Image {
            run(Command::new("mformat")
                .arg("-i")
                .arg(&target)
                .args(args)
                .arg("::"));
            Image {
                dir,
                path,
                target,
                dirs: HashSet::new(),
                seq: 0,
            }
        }

        fn mkdirs(&mut self, path: &str) {
            let mut at = String::new();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                at.push('/');
                at.push_str(part);
                if self.dirs.insert(at.clone()) {
                    run(Command::new("mmd")
                        .arg("-i")
                        .arg(&self.target)
                        .arg(format!("::{at}")));
                }
            }
        }

        /// Writes `bytes` at `path`, making its directories.
        fn put(&mut self, path: &str, bytes: &[u8]) {
            if let Some((parent, _)) = path.rsplit_once('/') {
                self.mkdirs(parent);
            }
            self.seq += 1;
            let local = self.dir.path().join(format!("file{}", self.seq));
            fs::write(&local, bytes).expect("write");
            run(Command::new("mcopy")
                .arg("-i")
                .arg(&self.target)
                .arg(&local)
                .arg(format!("::{path}")));
        }

        fn del(&self, path: &str) {
            run(Command::new("mdel")
                .arg("-i")
                .arg(&self.target)
                .arg(format!("::{path}")));
        }

        fn bytes(&self) -> Vec<u8> {
            fs::read(&self.path).expect("read image")
        }
    }

    fn whole(disk: &dyn Disk) -> Partition {
        Partition {
            index: 0,
            start: 0,
            len: disk.len(),
            type_guid: None,
            mbr_type: None,
            name: String::new(),
        }
    }

    fn fat12() -> Image {
        Image::new(1440 << 10, &["-f", "1440"])
    }

    fn fat16() -> Image {
        Image::new(16 << 20, &["-T", "32768", "-h", "64", "-s", "32"])
    }

    fn fat32() -> Image {
        Image::new(40 << 20, &["-F"])
    }

    fn open(disk: &dyn Disk) -> Fat<'_> {
        Fat::open(disk, &whole(disk)).expect("open")
    }

    /// The clusters of the chain from `first`, walked until its end.
    fn clusters_of(fs: &Fat<'_>, first: u32) -> Vec<u32> {
        let mut chain = ChainWalk::new(fs, "test", first).expect("chain");
        let mut out = Vec::new();
        while let Some(c) = chain.step().expect("step") {
            out.push(c);
        }
        out
    }

    fn file_node(fs: &Fat<'_>, path: &str) -> (u32, u32) {
        match fs.lookup(path).expect("lookup") {
            Node::File { cluster, size } => (cluster, size),
            Node::Dir(d) => panic!("{path} is a directory {d:?}"),
        }
    }

    fn dir_cluster(fs: &Fat<'_>, path: &str) -> u32 {
        match fs.lookup(path).expect("lookup") {
            Node::Dir(Dir::Chain(c)) => c,
            other => panic!("{path} is {other:?}"),
        }
    }

    /// Sets the FAT entry of `cluster` to `value` in the first FAT of `img`.
    fn set_fat(img: &mut [u8], bpb: &Bpb, cluster: u32, value: u32) {
        let n = cluster as usize;
        let start = bpb.fat_start as usize;
        match bpb.kind {
            Kind::Fat12 => {
                let at = start + n + n / 2;
                let old = u16::from_le_bytes([img[at], img[at + 1]]);
                let v = (value & 0xFFF) as u16;
                let new = if n % 2 == 1 {
                    (old & 0x000F) | (v << 4)
                } else {
                    (old & 0xF000) | v
                };
                img[at..at + 2].copy_from_slice(&new.to_le_bytes());
            }
            Kind::Fat16 => {
                let at = start + 2 * n;
                img[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes());
            }
            Kind::Fat32 => {
                let at = start + 4 * n;
                img[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
    }

    /// The offset of the directory entry whose 8.3 name is `short11` (unique in the image).
    fn entry_at(img: &[u8], short11: &[u8; 11]) -> usize {
        let hits: Vec<usize> = img
            .windows(11)
            .enumerate()
            .filter(|(i, w)| i % ENTRY == 0 && *w == short11)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(hits.len(), 1, "{:?}", String::from_utf8_lossy(short11));
        hits[0]
    }

    /// The live entries of `dir`, `.` and `..` included.
    fn entries(fs: &Fat<'_>, dir: Dir) -> Vec<Entry> {
        let mut out = Vec::new();
        fs.scan_dir(dir, "test", &mut |e| {
            out.push(e.clone());
            ControlFlow::Continue(())
        })
        .expect("scan");
        out
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn fat12_floppy_reads_entries_across_fat_sector_boundaries() {
        let mut img = fat12();
        let big = pattern(1, 300_000);
        let cfg = b"set default=0\n".to_vec();
        img.put("/EFI/BOOT/BOOTX64.EFI", &big);
        img.put("/EFI/BOOT/grub.cfg", &cfg);
        img.put("/README", b"hello");
        let bytes = img.bytes();
        let fs = open(&bytes);
        assert_eq!(fs.bpb.kind, Kind::Fat12);
        assert_eq!(
            fs.read_file("/EFI/BOOT/BOOTX64.EFI", 1 << 20)
                .expect("read"),
            big
        );
        assert_eq!(fs.read_file("/efi/boot/grub.cfg", 100).expect("read"), cfg);
        assert_eq!(fs.read_file("readme", 100).expect("read"), b"hello");
        // One cluster per sector: the big file's chain crosses FAT sector boundaries,
        // including entries whose 12 bits straddle two sectors.
        let (first, _) = file_node(&fs, "/EFI/BOOT/BOOTX64.EFI");
        let chain = clusters_of(&fs, first);
        assert_eq!(chain.len(), 300_000usize.div_ceil(512));
        assert!(
            chain.iter().any(|&c| (c + c / 2) % 512 == 511),
            "no entry straddles a sector: {chain:?}"
        );
        assert_eq!(sorted(fs.read_dir("/").expect("dir")), ["EFI", "README"]);
        assert_eq!(
            sorted(fs.read_dir("/EFI/BOOT").expect("dir")),
            ["BOOTX64.EFI", "grub.cfg"]
        );
    }

    #[test]
    fn fat16_long_names_case_and_deep_directories() {
        let mut img = fat16();
        let entry = b"title Debian\nlinux /vmlinuz-6.1.0-28-cloud-amd64\n".to_vec();
        let long = "A very long name that needs several LFN entries, well beyond thirteen \
                    characters, \u{e9}t\u{e9} included.conf";
        img.put("/loader/entries/debian-6.1.0-28-cloud-amd64.conf", &entry);
        img.put(&format!("/loader/{long}"), b"long");
        img.put("/a/b/c/d/e/f/g/deep.txt", b"deep");
        img.put("/a/empty", b"");
        let bytes = img.bytes();
        let fs = open(&bytes);
        assert_eq!(fs.bpb.kind, Kind::Fat16);
        let path = "/loader/entries/debian-6.1.0-28-cloud-amd64.conf";
        assert_eq!(fs.read_file(path, 4096).expect("read"), entry);
        assert_eq!(
            fs.read_file(&path.to_uppercase(), 4096).expect("read"),
            entry
        );
        assert_eq!(
            fs.read_file("//Loader/./ENTRIES//Debian-6.1.0-28-Cloud-AMD64.conf", 4096)
                .expect("read"),
            entry
        );
        assert_eq!(
            fs.read_dir("/loader/entries").expect("dir"),
            ["debian-6.1.0-28-cloud-amd64.conf"]
        );
        assert!(long.encode_utf16().count() > 3 * LFN_UNITS);
        assert_eq!(
            fs.read_file(&format!("/loader/{long}"), 10).expect("read"),
            b"long"
        );
        assert_eq!(
            sorted(fs.read_dir("/loader").expect("dir")),
            [long.to_owned(), "entries".to_owned()]
        );
        // The 8.3 alias mtools made finds the same file.
        let alias = entries(&fs, Dir::Chain(dir_cluster(&fs, "/loader")))
            .into_iter()
            .find(|e| e.long.as_deref() == Some(long))
            .map(|e| e.short)
            .expect("short name");
        assert!(alias.contains('~'), "{alias}");
        assert_eq!(
            fs.read_file(&format!("/LOADER/{}", alias.to_lowercase()), 10)
                .expect("read"),
            b"long"
        );
        assert_eq!(
            fs.read_file("/a/b/c/d/e/f/g/deep.txt", 10).expect("read"),
            b"deep"
        );
        assert_eq!(
            fs.read_file("/a/b/c/../c/d/e/f/g/DEEP.TXT", 10)
                .expect("read"),
            b"deep"
        );
        assert_eq!(fs.read_file("/../a/empty", 0).expect("read"), b"");
        // "/a/.." is the root: its ".." entry says cluster 0.
        assert_eq!(fs.read_file("/a/../a/empty", 0).expect("read"), b"");
        assert_eq!(sorted(fs.read_dir("/a").expect("dir")), ["b", "empty"]);
        assert_eq!(fs.read_dir("/a/b/c/d/e/f/g").expect("dir"), ["deep.txt"]);
    }

    #[test]
    fn fat32_esp_with_large_files() {
        let mut img = fat32();
        let shim = pattern(2, 1 << 20);
        let grub = pattern(3, 700_001);
        img.put("/EFI/BOOT/BOOTX64.EFI", &shim);
        img.put("/EFI/debian/grubx64.efi", &grub);
        img.put("/EFI/debian/grub.cfg", b"search.fs_uuid x root\n");
        let bytes = img.bytes();
        let fs = open(&bytes);
        assert_eq!(fs.bpb.kind, Kind::Fat32);
        assert_eq!(
            fs.read_file("/EFI/BOOT/BOOTX64.EFI", 1 << 20)
                .expect("read"),
            shim
        );
        assert_eq!(
            fs.read_file("/efi/DEBIAN/GRUBX64.EFI", 1 << 20)
                .expect("read"),
            grub
        );
        assert_eq!(
            sorted(fs.read_dir("/EFI/debian").expect("dir")),
            ["grub.cfg", "grubx64.efi"]
        );
        assert_eq!(
            sorted(fs.read_dir("/EFI").expect("dir")),
            ["BOOT", "debian"]
        );
        assert_eq!(fs.read_dir("").expect("dir"), ["EFI"]);
    }

    #[test]
    fn fragmented_file() {
        let mut img = fat16();
        let a = pattern(4, 20_000);
        let b = pattern(5, 20_000);
        let c = pattern(6, 100_000);
        img.put("/a", &a);
        img.put("/b", &b);
        img.del("/a");
        img.put("/c", &c);
        let bytes = img.bytes();
        let fs = open(&bytes);
        let (first, size) = file_node(&fs, "/c");
        assert_eq!(size, 100_000);
        let chain = clusters_of(&fs, first);
        assert!(
            chain.windows(2).any(|w| w[1] != w[0] + 1),
            "not fragmented: {chain:?}"
        );
        assert_eq!(fs.read_file("/c", 1 << 20).expect("read"), c);
        assert_eq!(fs.read_file("/b", 1 << 20).expect("read"), b);
        assert_eq!(sorted(fs.read_dir("/").expect("dir")), ["b", "c"]);
    }

    #[test]
    fn fat32_in_a_gpt_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        File::create(&path)
            .and_then(|f| f.set_len(48 << 20))
            .expect("create disk");
        let mut child = Command::new("sfdisk")
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(&path)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sfdisk");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("label: gpt\nstart=2048, size=90112, type={ESP}\n").as_bytes())
            .expect("script");
        let out = child.wait_with_output().expect("sfdisk");
        assert!(
            out.status.success(),
            "sfdisk: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let target = format!("{}@@{}", path.display(), 2048 * 512);
        let mut img = Image::format(dir, path, target, &["-F", "-T", "90112"]);
        let grub = pattern(7, 200_000);
        img.put("/EFI/debian/grubx64.efi", &grub);
        let disk = img.bytes();
        let parts = crate::partitions(&disk).expect("partitions");
        assert_eq!(parts.len(), 1);
        let part = &parts[0];
        assert_eq!(
            (part.index, part.start, part.len),
            (1, 1 << 20, 90112 * 512)
        );
        let fs = Fat::open(&disk, part).expect("open");
        assert_eq!(fs.partition(), part);
        assert_eq!(fs.bpb.kind, Kind::Fat32);
        assert_eq!(
            fs.read_file("/EFI/debian/grubx64.efi", 1 << 20)
                .expect("read"),
            grub
        );
        // Read as the whole disk, there is no boot sector at byte 0.
        assert!(matches!(
            Fat::open(&disk, &whole(&disk)),
            Err(FatError::BootSector(_))
        ));
    }

    /// An error from `r`, which must have failed.
    fn fails<T>(r: Result<T>) -> FatError {
        match r {
            Ok(_) => panic!("succeeded"),
            Err(e) => e,
        }
    }

    #[test]
    fn path_errors() {
        let mut img = fat16();
        img.put("/EFI/debian/grubx64.efi", &pattern(8, 5000));
        let bytes = img.bytes();
        let fs = open(&bytes);
        let e = fails(fs.read_file("/EFI/debian/grubx64.efi", 4999));
        assert!(
            matches!(
                &e,
                FatError::TooLarge {
                    size: 5000,
                    max: 4999,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "/EFI/debian/grubx64.efi is 5000 bytes, more than the limit of 4999"
        );
        let e = fails(fs.read_file("/EFI/fedora/grubx64.efi", 1 << 20));
        assert!(matches!(&e, FatError::NotFound { path } if path == "/EFI/fedora/grubx64.efi"));
        let e = fails(fs.read_file("/EFI/debian/grubx64.efi/x", 1 << 20));
        assert!(matches!(e, FatError::NotADirectory { .. }), "{e}");
        let e = fails(fs.read_dir("/EFI/debian/grubx64.efi"));
        assert!(matches!(e, FatError::NotADirectory { .. }), "{e}");
        let e = fails(fs.read_file("/EFI/debian", 1 << 20));
        assert_eq!(
            e.to_string(),
            "/EFI/debian is a directory, not a regular file"
        );
        let e = fails(fs.read_file("/", 1 << 20));
        assert!(matches!(e, FatError::NotAFile { .. }), "{e}");
        let long = "/a".repeat(MAX_PATH / 2 + 1);
        let e = fails(fs.read_file(&long, 1));
        assert!(
            matches!(&e, FatError::BadPath { why, .. } if why.contains("longer")),
            "{e}"
        );
        // Within MAX_PATH bytes only empty parts can exceed MAX_COMPONENTS.
        let many = "/".repeat(MAX_PATH);
        let e = fails(fs.read_dir(&many));
        assert!(
            matches!(&e, FatError::BadPath { why, .. } if why.contains("parts")),
            "{e}"
        );
        assert_eq!(
            fs.read_dir(&"/".repeat(MAX_COMPONENTS - 1)).expect("dir"),
            ["EFI"]
        );
    }

    #[test]
    fn looping_file_chain() {
        for mut img in [fat12(), fat16(), fat32()] {
            img.put("/LOOP.BIN", &pattern(9, 10_000));
            let mut bytes = img.bytes();
            let (bpb, first, chain) = {
                let fs = open(&bytes);
                let (first, _) = file_node(&fs, "/LOOP.BIN");
                (fs.bpb.clone(), first, clusters_of(&fs, first))
            };
            assert!(chain.len() >= 3);
            // The third cluster leads back to the first: the chain never ends.
            set_fat(&mut bytes, &bpb, chain[2], first);
            let fs = open(&bytes);
            let e = fails(fs.read_file("/loop.bin", 1 << 20));
            assert!(
                matches!(&e, FatError::Chain { cluster, why, .. }
                    if *cluster == first && why.contains("loop")),
                "{:?}: {e}",
                bpb.kind
            );
        }
    }

    #[test]
    fn looping_directory_chain() {
        let mut img = fat32();
        for k in 0..40 {
            img.put(&format!("/boot/file{k}"), b"x");
        }
        img.put("/boot/last", b"x");
        let mut bytes = img.bytes();
        let (bpb, first, chain) = {
            let fs = open(&bytes);
            let first = dir_cluster(&fs, "/boot");
            (fs.bpb.clone(), first, clusters_of(&fs, first))
        };
        // 43 entries of 32 bytes in 512-byte clusters.
        assert!(chain.len() >= 3, "{chain:?}");
        // The last cluster, full of live entries, leads back to the first.
        let last = *chain.last().expect("cluster");
        set_fat(&mut bytes, &bpb, last, first);
        let off = bpb.data_start as usize + (last as usize - 2) * bpb.cluster_size as usize;
        bytes[off..off + bpb.cluster_size as usize].fill(b'Z');
        let fs = open(&bytes);
        let e = fails(fs.read_dir("/boot"));
        assert!(
            matches!(&e, FatError::Chain { why, .. } if why.contains("loop")),
            "{e}"
        );
        let e = fails(fs.read_file("/boot/nothere", 10));
        assert!(matches!(e, FatError::Chain { .. }), "{e}");
        // A name before the loop is still found.
        assert_eq!(fs.read_file("/boot/file0", 10).expect("read"), b"x");
    }

    #[test]
    fn clusters_out_of_range() {
        let mut img = fat16();
        img.put("/FIRST.BIN", &pattern(10, 3000));
        img.put("/NEXT.BIN", &pattern(11, 3000));
        img.put("/FREE.BIN", &pattern(12, 3000));
        let mut bytes = img.bytes();
        let (bpb, next, free) = {
            let fs = open(&bytes);
            let next = clusters_of(&fs, file_node(&fs, "/NEXT.BIN").0);
            let free = clusters_of(&fs, file_node(&fs, "/FREE.BIN").0);
            (fs.bpb.clone(), next, free)
        };
        let past = bpb.last_cluster() + 1;
        // A directory entry's first cluster past the end.
        let at = entry_at(&bytes, b"FIRST   BIN");
        bytes[at + 26..at + 28].copy_from_slice(&(past as u16).to_le_bytes());
        // A FAT entry pointing past the end, and one saying free in mid-chain.
        set_fat(&mut bytes, &bpb, next[1], past);
        set_fat(&mut bytes, &bpb, free[1], 0);
        let fs = open(&bytes);
        let e = fails(fs.read_file("/FIRST.BIN", 1 << 20));
        assert!(
            matches!(&e, FatError::Chain { cluster, why, .. }
                if *cluster == past && why.contains("outside")),
            "{e}"
        );
        let e = fails(fs.read_file("/NEXT.BIN", 1 << 20));
        assert!(
            matches!(&e, FatError::Chain { cluster, why, .. }
                if *cluster == next[1] && why.contains(&format!("points to cluster {past}"))),
            "{e}"
        );
        let e = fails(fs.read_file("/FREE.BIN", 1 << 20));
        assert!(
            matches!(&e, FatError::Chain { why, .. } if why.contains("free")),
            "{e}"
        );
        // Cluster 0 for a file with bytes.
        bytes[at + 26..at + 28].fill(0);
        let fs = open(&bytes);
        let e = fails(fs.read_file("/FIRST.BIN", 1 << 20));
        assert!(matches!(e, FatError::Chain { cluster: 0, .. }), "{e}");
    }

    #[test]
    fn size_beyond_the_chain() {
        let mut img = fat12();
        img.put("/SHORT.BIN", &pattern(13, 1500));
        let mut bytes = img.bytes();
        let at = entry_at(&bytes, b"SHORT   BIN");
        bytes[at + 28..at + 32].copy_from_slice(&5000u32.to_le_bytes());
        let fs = open(&bytes);
        let e = fails(fs.read_file("/SHORT.BIN", 1 << 20));
        assert!(
            matches!(&e, FatError::Chain { why, .. } if why.contains("ends after 3 clusters")),
            "{e}"
        );
        // More clusters than the filesystem has.
        bytes[at + 28..at + 32].copy_from_slice(&u32::MAX.to_le_bytes());
        let fs = open(&bytes);
        let e = fails(fs.read_file("/SHORT.BIN", u64::MAX));
        assert!(
            matches!(&e, FatError::Chain { why, .. } if why.contains("more than the filesystem")),
            "{e}"
        );
    }

    #[test]
    fn bad_boot_sectors() {
        let bytes = fat16().bytes();
        let patched = |off: usize, val: &[u8]| {
            let mut b = bytes.clone();
            b[off..off + val.len()].copy_from_slice(val);
            b
        };
        let boot_err = |b: &Vec<u8>| match Fat::open(b, &whole(b)) {
            Err(FatError::BootSector(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(boot_err(&patched(13, &[0])).contains("0 sectors per cluster"));
        assert!(boot_err(&patched(13, &[3])).contains("power of two"));
        assert!(boot_err(&patched(11, &300u16.to_le_bytes())).contains("300 bytes per sector"));
        assert!(boot_err(&patched(11, &8192u16.to_le_bytes())).contains("8192"));
        // 128 sectors of 4096 bytes: clusters of 512 KiB.
        let mut big = patched(11, &4096u16.to_le_bytes());
        big[13] = 128;
        assert!(boot_err(&big).contains("larger than 64 KiB"));
        assert!(boot_err(&patched(510, &[0, 0])).contains("signature"));
        assert!(boot_err(&patched(14, &[0, 0])).contains("reserved"));
        assert!(boot_err(&patched(16, &[0])).contains("0 FATs"));
        assert!(boot_err(&patched(22, &[0xFF, 0xFF])).contains("do not fit"));
        // FAT16 without root directory entries.
        let why = boot_err(&patched(17, &[0, 0]));
        assert!(why.contains("no root directory"), "{why}");
        // More sectors than the partition holds.
        let mut part = whole(&bytes);
        part.len -= 512;
        match Fat::open(&bytes, &part) {
            Err(FatError::BootSector(why)) => assert!(why.contains("do not fit in its partition")),
            other => panic!("{other:?}"),
        }
        // A FAT too small for the clusters.
        assert!(boot_err(&patched(22, &[8, 0])).contains("cannot hold"));
        let bytes32 = fat32().bytes();
        let mut b = bytes32.clone();
        b[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(boot_err(&b).contains("root directory's cluster"));
        let mut b = bytes32.clone();
        b[40..42].copy_from_slice(&0x83u16.to_le_bytes());
        assert!(boot_err(&b).contains("active FAT"));
        // Too short to hold a boot sector.
        let tiny = vec![0u8; 100];
        assert!(boot_err(&tiny).contains("smaller than a boot sector"));
    }

    #[test]
    fn partition_past_the_disk() {
        let bytes = fat12().bytes();
        let mut part = whole(&bytes);
        part.len += 512;
        assert!(matches!(
            Fat::open(&bytes, &part),
            Err(FatError::PartitionOutsideDisk)
        ));
        part.start = u64::MAX;
        assert!(matches!(
            Fat::open(&bytes, &part),
            Err(FatError::PartitionOutsideDisk)
        ));
    }

    #[test]
    fn read_limit_and_lazy_fat() {
        let mut img = fat32();
        img.put("/EFI/BOOT/BOOTX64.EFI", &pattern(14, 1 << 20));
        img.put("/EFI/BOOT/grub.cfg", b"configfile x\n");
        let bytes = img.bytes();
        let fat_bytes = {
            let fs = open(&bytes);
            fs.bpb.data_start - fs.bpb.fat_start
        };
        assert!(fat_bytes > 256 << 10, "{fat_bytes}");
        // A small file costs a few FAT sectors, not the FAT.
        let metered = Metered::new(&bytes, 8 << 10);
        let fs = Fat::open(&metered, &whole(&bytes)).expect("open");
        assert_eq!(
            fs.read_file("/EFI/BOOT/grub.cfg", 100).expect("read"),
            b"configfile x\n"
        );
        // A megabyte does not fit in what is left.
        let e = fails(fs.read_file("/EFI/BOOT/BOOTX64.EFI", 2 << 20));
        assert!(matches!(e, FatError::ReadLimit), "{e}");
        let metered = Metered::new(&bytes, 100);
        assert!(matches!(
            Fat::open(&metered, &whole(&bytes)),
            Err(FatError::ReadLimit)
        ));
    }

    #[test]
    fn directory_caps() {
        let mut img = fat16();
        for k in 0..20 {
            img.put(&format!("/d/f{k}"), b"x");
        }
        let bytes = img.bytes();
        let mut fs = open(&bytes);
        assert_eq!(fs.read_dir("/d").expect("dir").len(), 20);
        fs.max_listed = 19;
        let e = fails(fs.read_dir("/d"));
        assert!(
            matches!(&e, FatError::Dir { why, .. } if why.contains("more than 19 entries to list")),
            "{e}"
        );
        fs.max_listed = MAX_LISTED;
        // "." and ".." and 20 short names, each alone: 22 slots scanned to reach f19.
        fs.max_dir_entries = 21;
        let e = fails(fs.read_file("/d/f19", 10));
        assert!(
            matches!(&e, FatError::Dir { path, why } if path == "/d" && why.contains("more than 21")),
            "{e}"
        );
        assert_eq!(fs.read_file("/d/f18", 10).expect("read"), b"x");
    }

    #[test]
    fn long_name_checksum_mismatch_falls_back_to_the_short_name() {
        let mut img = fat12();
        img.put("/debian-6.1.0-28-cloud-amd64.conf", b"x");
        let mut bytes = img.bytes();
        let fs = open(&bytes);
        let short = entries(&fs, Dir::FixedRoot)
            .into_iter()
            .map(|e| e.short)
            .next()
            .expect("short name");
        let (base, ext) = short.split_once('.').expect("an extension");
        let raw = format!("{base:<8}{ext:<3}");
        let raw: [u8; 11] = raw.as_bytes().try_into().expect("8.3");
        let first = raw[0];
        // The short entry's first name byte changes: the long entries no longer match it.
        let at = entry_at(&bytes, &raw);
        bytes[at] = if first == b'X' { b'Y' } else { b'X' };
        let fs = open(&bytes);
        let names = fs.read_dir("/").expect("dir");
        assert_eq!(names.len(), 1);
        assert!(!names[0].starts_with("debian"), "{names:?}");
        assert!(matches!(
            fs.read_file("/debian-6.1.0-28-cloud-amd64.conf", 10),
            Err(FatError::NotFound { .. })
        ));
    }
}
