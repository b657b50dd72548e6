//! A read-only XFS reader (version 4 and 5 filesystems): enough to walk paths, list
//! directories and read files, as RHEL-family cloud images keep `/boot` on xfs.
//!
//! XFS is big-endian on disk. Every number taken from the disk is checked before use: block
//! numbers against their allocation group and the filesystem's block count (which must fit
//! in its partition), inode numbers against the allocation group geometry, offsets with
//! checked arithmetic, directory entries against their block, block-map btrees against
//! their level (each child exactly one level below its parent, at most [`MAX_BMBT_DEPTH`]
//! levels) and a count of blocks and records visited. Directories in leaf and node form are
//! read linearly through their data blocks; the hash index is ignored. Metadata checksums
//! are not verified (a hostile image can forge them, and no bound depends on them); the log
//! is not replayed.

use std::fmt;
use std::ops::ControlFlow;

use crate::disk::{self, Disk, ReadError};
use crate::ext4::{
    FileKind, MAX_COMPONENTS, MAX_DIR_ENTRIES, MAX_EXTENT_ENTRIES, MAX_LISTED, MAX_NAME, MAX_PATH,
    MAX_SYMLINKS,
};
use crate::table::Partition;

/// Deepest block-map btree taken, counting the root in the inode (levels of the root).
pub(crate) const MAX_BMBT_DEPTH: u16 = 8;
/// Block-map btree blocks read while mapping one file.
pub(crate) const MAX_BMBT_BLOCKS: u64 = 1 << 16;
/// Longest symbolic link target XFS stores.
const MAX_SYMLINK_LEN: u64 = 1024;

const SB_MAGIC: &[u8; 4] = b"XFSB";
const INODE_MAGIC: &[u8; 2] = b"IN";
const BMAP_MAGIC: &[u8; 4] = b"BMAP";
const BMAP3_MAGIC: &[u8; 4] = b"BMA3";
const DIR_BLOCK_MAGIC: &[u8; 4] = b"XD2B";
const DIR3_BLOCK_MAGIC: &[u8; 4] = b"XDB3";
const DIR_DATA_MAGIC: &[u8; 4] = b"XD2D";
const DIR3_DATA_MAGIC: &[u8; 4] = b"XDD3";
const SYMLINK3_MAGIC: &[u8; 4] = b"XSLM";

/// Directory data blocks lie below this byte offset of a directory (its leaf and free-index
/// blocks above).
const DIR_LEAF_OFFSET: u64 = 32 << 30;

const VERSION_DIRV2: u16 = 0x2000;
const VERSION_MOREBITS: u16 = 0x8000;
const FEATURES2_LAZYSBCOUNT: u32 = 0x2;
const FEATURES2_ATTR2: u32 = 0x8;
const FEATURES2_PROJID32: u32 = 0x80;
const FEATURES2_CRC: u32 = 0x100;
const FEATURES2_FTYPE: u32 = 0x200;
/// Version 4 `features2` bits the kernel accepts.
const FEATURES2_OK: u32 =
    FEATURES2_LAZYSBCOUNT | FEATURES2_ATTR2 | FEATURES2_PROJID32 | FEATURES2_FTYPE;

const INCOMPAT_FTYPE: u32 = 0x1;
const INCOMPAT_SPINODES: u32 = 0x2;
const INCOMPAT_META_UUID: u32 = 0x4;
const INCOMPAT_BIGTIME: u32 = 0x8;
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;
const INCOMPAT_NREXT64: u32 = 0x20;
const INCOMPAT_EXCHRANGE: u32 = 0x40;
const INCOMPAT_PARENT: u32 = 0x80;
/// Version 5 incompatible features this reader handles; anything else (metadir, zoned,
/// features newer than it) is refused whole.
const INCOMPAT_KNOWN: u32 = INCOMPAT_FTYPE
    | INCOMPAT_SPINODES
    | INCOMPAT_META_UUID
    | INCOMPAT_BIGTIME
    | INCOMPAT_NREXT64
    | INCOMPAT_EXCHRANGE
    | INCOMPAT_PARENT;

const FMT_LOCAL: u8 = 1;
const FMT_EXTENTS: u8 = 2;
const FMT_BTREE: u8 = 3;

const DIFLAG_REALTIME: u16 = 0x1;
const DIFLAG2_NREXT64: u64 = 0x10;

/// Inode core sizes: versions 1 and 2, and version 3.
const CORE_V2: usize = 100;
const CORE_V3: usize = 176;

/// Why an XFS filesystem, path or file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum XfsError {
    /// The disk failed a read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A metered disk's read allowance is spent.
    #[error("the read limit was reached")]
    ReadLimit,
    /// The partition given to [`Xfs::open`] is not wholly on the disk.
    #[error("the partition lies outside the disk")]
    PartitionOutsideDisk,
    /// A structure would be read from outside the partition.
    #[error("a read of {len} bytes at byte {offset} of the partition lies outside it")]
    OutsidePartition { offset: u64, len: usize },
    /// The partition does not start with "XFSB".
    #[error("no xfs superblock (magic {0:02x?}, not \"XFSB\")")]
    NoSuperblock([u8; 4]),
    /// The superblock's geometry is impossible.
    #[error("superblock: {0}")]
    Superblock(String),
    /// A feature or file this reader does not read (named).
    #[error("{0} is not supported")]
    Unsupported(String),
    /// The superblock claims more blocks than the partition holds.
    #[error("the filesystem's {fs} bytes do not fit in its partition of {part} bytes")]
    LargerThanPartition { fs: u128, part: u64 },
    /// An inode, or what it maps (extents, btree blocks, symlink blocks), is corrupt.
    #[error("inode {ino}: {why}")]
    Inode { ino: u64, why: String },
    /// A directory's entries are corrupt or too many.
    #[error("directory inode {ino}: {why}")]
    Dir { ino: u64, why: String },
    /// A path component does not exist.
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    /// A path component before the last (or the path given to `read_dir`) is no directory.
    #[error("{path}: a component is not a directory")]
    NotADirectory { path: String },
    /// More than [`MAX_SYMLINKS`] symbolic links were followed in one lookup.
    #[error("{path}: more than {MAX_SYMLINKS} symbolic links (a loop?)")]
    SymlinkLoop { path: String },
    /// The path is too long, or has too many or too long components.
    #[error("{path}: {why}")]
    BadPath { path: String, why: &'static str },
    /// The path names something other than a regular file.
    #[error("{path} is a {kind}, not a regular file")]
    NotAFile { path: String, kind: FileKind },
    /// The file is larger than the caller's limit.
    #[error("{path} is {size} bytes, more than the limit of {max}")]
    TooLarge { path: String, size: u64, max: u64 },
}

type Result<T, E = XfsError> = std::result::Result<T, E>;

fn be16(buf: &[u8], off: usize) -> u16 {
    buf.get(off..off.wrapping_add(2))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_be_bytes)
}

fn be32(buf: &[u8], off: usize) -> u32 {
    buf.get(off..off.wrapping_add(4))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

fn be64(buf: &[u8], off: usize) -> u64 {
    buf.get(off..off.wrapping_add(8))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn byte(buf: &[u8], off: usize) -> u8 {
    buf.get(off).copied().unwrap_or(0)
}

/// The `len` bytes at `off` of `buf`, or an empty slice when they are not all inside it.
fn field(buf: &[u8], off: usize, len: usize) -> &[u8] {
    off.checked_add(len)
        .and_then(|end| buf.get(off..end))
        .unwrap_or_default()
}

fn superblock(why: impl Into<String>) -> XfsError {
    XfsError::Superblock(why.into())
}

fn inode_err(ino: u64, why: impl Into<String>) -> XfsError {
    XfsError::Inode {
        ino,
        why: why.into(),
    }
}

fn dir_err(ino: u64, why: impl Into<String>) -> XfsError {
    XfsError::Dir {
        ino,
        why: why.into(),
    }
}

#[derive(Debug, Clone)]
struct Super {
    block_size: u64,
    /// Data blocks in the filesystem (`sb_dblocks`).
    blocks: u64,
    ag_blocks: u64,
    ag_count: u64,
    ag_blk_log: u32,
    inode_size: u64,
    inopb_log: u32,
    /// Directory blocks are `1 << dir_blk_log` filesystem blocks.
    dir_blk_log: u32,
    root_ino: u64,
    /// A version 5 (CRC) filesystem: v3 inodes and self-describing metadata headers.
    v5: bool,
    /// Directory entries carry a file type byte.
    ftype: bool,
}

/// One inode as read from disk.
#[derive(Debug, Clone)]
struct Inode {
    ino: u64,
    /// The whole on-disk inode (the superblock's inode size).
    raw: Vec<u8>,
}

impl Inode {
    fn kind(&self) -> FileKind {
        match be16(&self.raw, 2) & 0xF000 {
            0x8000 => FileKind::Regular,
            0x4000 => FileKind::Directory,
            0xA000 => FileKind::Symlink,
            m => FileKind::Other(m),
        }
    }

    fn version(&self) -> u8 {
        byte(&self.raw, 4)
    }

    fn format(&self) -> u8 {
        byte(&self.raw, 5)
    }

    fn size(&self) -> u64 {
        be64(&self.raw, 56)
    }

    fn flags(&self) -> u16 {
        be16(&self.raw, 90)
    }

    fn flags2(&self) -> u64 {
        if self.version() >= 3 {
            be64(&self.raw, 120)
        } else {
            0
        }
    }

    fn nextents(&self) -> u64 {
        if self.flags2() & DIFLAG2_NREXT64 != 0 {
            be64(&self.raw, 24)
        } else {
            u64::from(be32(&self.raw, 76))
        }
    }

    /// The data fork: the literal area after the core, up to the attribute fork.
    fn data_fork(&self) -> Result<&[u8]> {
        let core = if self.version() >= 3 {
            CORE_V3
        } else {
            CORE_V2
        };
        let literal = self.raw.len().saturating_sub(core);
        let forkoff = usize::from(byte(&self.raw, 82)) * 8;
        let len = if forkoff == 0 { literal } else { forkoff };
        if len > literal {
            return Err(inode_err(
                self.ino,
                format!(
                    "its attribute fork offset {forkoff} is past its {literal}-byte literal area"
                ),
            ));
        }
        Ok(field(&self.raw, core, len))
    }
}

/// A run of file blocks: `len` logical blocks from `logical` are at linear block `block`,
/// or read as zeros (an unwritten extent).
#[derive(Debug, Clone, Copy)]
struct Extent {
    logical: u64,
    block: u64,
    len: u64,
    zeros: bool,
}

/// What mapping one file may still visit.
struct Budget {
    blocks: u64,
    records: u64,
}

/// A read-only XFS filesystem inside one partition.
pub struct Xfs<'a> {
    disk: &'a dyn Disk,
    part: Partition,
    sb: Super,
}

impl fmt::Debug for Xfs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xfs")
            .field("part", &self.part)
            .field("sb", &self.sb)
            .finish_non_exhaustive()
    }
}

impl<'a> Xfs<'a> {
    /// Opens the XFS filesystem on `part` of `disk`: reads and checks its superblock (magic
    /// "XFSB", block, sector and inode sizes, allocation group geometry, version 4 or 5).
    /// Version 4 filesystems without version 2 directories, and version 5 ones with unknown
    /// incompatible features or marked as needing repair, are refused by name.
    pub fn open(disk: &'a dyn Disk, part: &Partition) -> Result<Self> {
        if part
            .start
            .checked_add(part.len)
            .is_none_or(|end| end > disk.len())
        {
            return Err(XfsError::PartitionOutsideDisk);
        }
        let mut fs = Xfs {
            disk,
            part: part.clone(),
            sb: Super {
                block_size: 4096,
                blocks: 0,
                ag_blocks: 1,
                ag_count: 0,
                ag_blk_log: 0,
                inode_size: 512,
                inopb_log: 0,
                dir_blk_log: 0,
                root_ino: 0,
                v5: true,
                ftype: true,
            },
        };
        let mut raw = [0u8; 512];
        fs.read(0, &mut raw)?;
        fs.sb = parse_super(&raw, part.len)?;
        Ok(fs)
    }

    /// The partition this filesystem is in.
    pub fn partition(&self) -> &Partition {
        &self.part
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let outside = || XfsError::OutsidePartition { offset, len };
        let end = offset.checked_add(len as u64).ok_or_else(outside)?;
        if end > self.part.len {
            return Err(outside());
        }
        let abs = self.part.start.checked_add(offset).ok_or_else(outside)?;
        Ok(disk::read_at(self.disk, buf, abs).map_err(|_| XfsError::ReadLimit)??)
    }

    /// Reads `buf.len()` bytes from linear block `block` on, all inside the filesystem.
    fn read_blocks(&self, ino: u64, block: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.sb.block_size;
        let count = (buf.len() as u64).div_ceil(bs);
        if block
            .checked_add(count)
            .is_none_or(|end| end > self.sb.blocks)
        {
            return Err(inode_err(
                ino,
                format!(
                    "points at block {block}, outside the filesystem's {} blocks",
                    self.sb.blocks
                ),
            ));
        }
        // block + count <= blocks, and blocks * block_size fits the partition.
        self.read(block * bs, buf)
    }

    /// The linear block of the `len` blocks at filesystem block number `fsb` (allocation
    /// group in the high bits, block in the group in the low `agblklog` bits), which must
    /// all lie in one allocation group inside the filesystem.
    fn fsb_to_block(&self, ino: u64, fsb: u64, len: u64) -> Result<u64> {
        let sb = &self.sb;
        let ag = fsb >> sb.ag_blk_log;
        let agbno = fsb & ((1u64 << sb.ag_blk_log) - 1);
        let block = ag
            .checked_mul(sb.ag_blocks)
            .and_then(|b| b.checked_add(agbno));
        let fits = ag < sb.ag_count
            && agbno
                .checked_add(len)
                .is_some_and(|end| end <= sb.ag_blocks)
            && block
                .and_then(|b| b.checked_add(len))
                .is_some_and(|end| end <= sb.blocks);
        match block {
            Some(block) if fits => Ok(block),
            _ => Err(inode_err(
                ino,
                format!(
                    "maps {len} blocks at block {agbno} of allocation group {ag}, outside the \
                     filesystem ({} groups of {} blocks, {} in all)",
                    sb.ag_count, sb.ag_blocks, sb.blocks
                ),
            )),
        }
    }

    /// The byte offset of inode `ino` in the partition: allocation group, block and slot
    /// from its number.
    fn inode_offset(&self, ino: u64) -> Result<u64> {
        let sb = &self.sb;
        let ag = ino.checked_shr(sb.ag_blk_log + sb.inopb_log).unwrap_or(0);
        let agbno = (ino >> sb.inopb_log) & ((1u64 << sb.ag_blk_log) - 1);
        let slot = ino & ((1u64 << sb.inopb_log) - 1);
        if ag >= sb.ag_count || agbno >= sb.ag_blocks {
            return Err(inode_err(
                ino,
                format!(
                    "names block {agbno} of allocation group {ag}, outside the filesystem's {} \
                     groups of {} blocks",
                    sb.ag_count, sb.ag_blocks
                ),
            ));
        }
        // ag < ag_count and agbno < ag_blocks: the product fits (checked against the
        // partition when the superblock was read).
        let block = ag * sb.ag_blocks + agbno;
        if block >= sb.blocks {
            return Err(inode_err(ino, "lies past the filesystem's end"));
        }
        Ok(block * sb.block_size + slot * sb.inode_size)
    }

    /// Reads inode `ino` and checks its magic, version and (v3) self-reference.
    fn inode(&self, ino: u64) -> Result<Inode> {
        let sb = &self.sb;
        let at = self.inode_offset(ino)?;
        let mut raw = vec![0u8; sb.inode_size as usize];
        self.read(at, &mut raw)?;
        let inode = Inode { ino, raw };
        if field(&inode.raw, 0, 2) != INODE_MAGIC {
            return Err(inode_err(ino, "bad magic (not \"IN\")"));
        }
        let version = inode.version();
        let ok = if sb.v5 {
            version == 3
        } else {
            version == 1 || version == 2
        };
        if !ok {
            return Err(inode_err(
                ino,
                format!(
                    "inode version {version} on a version {} filesystem",
                    if sb.v5 { 5 } else { 4 }
                ),
            ));
        }
        if version == 3 && be64(&inode.raw, 152) != ino {
            return Err(inode_err(
                ino,
                format!("says it is inode {}", be64(&inode.raw, 152)),
            ));
        }
        Ok(inode)
    }

    /// The extents of `inode`'s data fork (extents or btree format) that start below logical
    /// block `below`, clipped to it, in tree order. Holes are not reported.
    fn extents(&self, inode: &Inode, below: u64) -> Result<Vec<Extent>> {
        let ino = inode.ino;
        let fork = inode.data_fork()?;
        let mut budget = Budget {
            blocks: MAX_BMBT_BLOCKS,
            records: MAX_EXTENT_ENTRIES,
        };
        let mut out = Vec::new();
        match inode.format() {
            FMT_EXTENTS => {
                let n = inode.nextents();
                if n > (fork.len() / 16) as u64 {
                    return Err(inode_err(
                        ino,
                        format!("{n} extents do not fit in its {}-byte fork", fork.len()),
                    ));
                }
                for i in 0..n as usize {
                    self.push_extent(ino, field(fork, 16 * i, 16), below, &mut budget, &mut out)?;
                }
            }
            FMT_BTREE => {
                let level = be16(fork, 0);
                let numrecs = usize::from(be16(fork, 2));
                let maxrecs = fork.len().saturating_sub(4) / 16;
                if level == 0 || level >= MAX_BMBT_DEPTH {
                    return Err(inode_err(
                        ino,
                        format!(
                            "a block-map btree root of level {level} (1..{MAX_BMBT_DEPTH} taken)"
                        ),
                    ));
                }
                if numrecs > maxrecs {
                    return Err(inode_err(
                        ino,
                        format!(
                            "a block-map btree root of {numrecs} records, more than its {maxrecs}"
                        ),
                    ));
                }
                for i in 0..numrecs {
                    let key = be64(fork, 4 + 8 * i);
                    let ptr = be64(fork, 4 + 8 * maxrecs + 8 * i);
                    if key >= below {
                        continue;
                    }
                    self.walk_bmbt(ino, ptr, level - 1, below, &mut budget, &mut out)?;
                }
            }
            f => {
                return Err(inode_err(
                    ino,
                    format!("data fork format {f} where extents or a btree belong"),
                ));
            }
        }
        Ok(out)
    }

    /// [`Xfs::extents`] in logical order; overlapping extents are corruption (refused, so
    /// no block of a file is read twice).
    fn sorted_extents(&self, inode: &Inode, below: u64) -> Result<Vec<Extent>> {
        let mut extents = self.extents(inode, below)?;
        extents.sort_by_key(|e| e.logical);
        let mut end = 0u64;
        for e in &extents {
            if e.logical < end {
                return Err(inode_err(
                    inode.ino,
                    format!("extents overlap at logical block {}", e.logical),
                ));
            }
            // e.logical + e.len <= below (clipped): no overflow.
            end = e.logical + e.len;
        }
        Ok(extents)
    }

    /// Decodes one packed 128-bit extent record and keeps it when it starts below `below`.
    fn push_extent(
        &self,
        ino: u64,
        rec: &[u8],
        below: u64,
        budget: &mut Budget,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        if budget.records == 0 {
            return Err(inode_err(
                ino,
                format!("more than {MAX_EXTENT_ENTRIES} extent records"),
            ));
        }
        budget.records -= 1;
        let l0 = be64(rec, 0);
        let l1 = be64(rec, 8);
        let zeros = l0 >> 63 != 0;
        let logical = (l0 & ((1 << 63) - 1)) >> 9;
        let fsb = ((l0 & 0x1FF) << 43) | (l1 >> 21);
        let count = l1 & ((1 << 21) - 1);
        if count == 0 || logical >= below {
            return Ok(());
        }
        let block = self.fsb_to_block(ino, fsb, count)?;
        out.push(Extent {
            logical,
            block,
            len: count.min(below - logical),
            zeros,
        });
        Ok(())
    }

    /// Walks the block-map btree block at `fsb`, which must be at `level`; recursion is
    /// bounded by the root's level, each child being exactly one level lower.
    fn walk_bmbt(
        &self,
        ino: u64,
        fsb: u64,
        level: u16,
        below: u64,
        budget: &mut Budget,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        if budget.blocks == 0 {
            return Err(inode_err(
                ino,
                format!("block-map btree of more than {MAX_BMBT_BLOCKS} blocks"),
            ));
        }
        budget.blocks -= 1;
        let block = self.fsb_to_block(ino, fsb, 1)?;
        let bs = self.sb.block_size as usize;
        let mut buf = vec![0u8; bs];
        self.read_blocks(ino, block, &mut buf)?;
        let (magic, hdr) = if self.sb.v5 {
            (BMAP3_MAGIC, 72)
        } else {
            (BMAP_MAGIC, 24)
        };
        if field(&buf, 0, 4) != magic {
            return Err(inode_err(
                ino,
                format!("block-map btree block {fsb} has bad magic"),
            ));
        }
        let got = be16(&buf, 4);
        let numrecs = usize::from(be16(&buf, 6));
        if got != level {
            return Err(inode_err(
                ino,
                format!(
                    "block-map btree block {fsb} is at level {got} where level {level} belongs"
                ),
            ));
        }
        let maxrecs = (bs - hdr) / 16;
        if numrecs > maxrecs {
            return Err(inode_err(
                ino,
                format!("block-map btree block {fsb} has {numrecs} records, more than {maxrecs}"),
            ));
        }
        for i in 0..numrecs {
            if level == 0 {
                self.push_extent(ino, field(&buf, hdr + 16 * i, 16), below, budget, out)?;
            } else {
                let key = be64(&buf, hdr + 8 * i);
                let ptr = be64(&buf, hdr + 8 * maxrecs + 8 * i);
                if key < below {
                    self.walk_bmbt(ino, ptr, level - 1, below, budget, out)?;
                }
            }
        }
        Ok(())
    }

    /// The first `size` bytes of `inode`'s data: holes and unwritten extents read as zeros.
    /// The caller bounds `size`.
    fn data(&self, inode: &Inode, size: u64) -> Result<Vec<u8>> {
        let ino = inode.ino;
        if inode.flags() & DIFLAG_REALTIME != 0 {
            return Err(XfsError::Unsupported(format!(
                "inode {ino}: a file on the realtime device"
            )));
        }
        let len = usize::try_from(size)
            .map_err(|_| inode_err(ino, format!("size {size} does not fit in memory")))?;
        if inode.format() == FMT_LOCAL {
            let fork = inode.data_fork()?;
            return fork.get(..len).map(<[u8]>::to_vec).ok_or_else(|| {
                inode_err(
                    ino,
                    format!(
                        "its size is {size} but its inline data holds {}",
                        fork.len()
                    ),
                )
            });
        }
        let mut out = vec![0u8; len];
        let bs = self.sb.block_size;
        let nblocks = size.div_ceil(bs);
        for e in self.sorted_extents(inode, nblocks)? {
            if e.zeros {
                continue;
            }
            // e.logical < nblocks and e.len <= nblocks - e.logical, so these stay within
            // size rounded up to a block; the last block is cut to size.
            let start = e.logical * bs;
            let end = (e.logical + e.len).saturating_mul(bs).min(size);
            let dst = out
                .get_mut(start as usize..end as usize)
                .ok_or_else(|| inode_err(ino, "an extent lies outside the file"))?;
            self.read_blocks(ino, e.block, dst)?;
        }
        Ok(out)
    }

    /// Calls `f` with each live entry (name, inode) of directory `dir`, `.` and `..`
    /// included, until it breaks.
    fn scan_dir(
        &self,
        dir: &Inode,
        f: &mut dyn FnMut(&[u8], u64) -> ControlFlow<()>,
    ) -> Result<()> {
        if dir.format() == FMT_LOCAL {
            return self.scan_shortform(dir, f);
        }
        let ino = dir.ino;
        let sb = &self.sb;
        let per_dir_block = 1u64 << sb.dir_blk_log;
        let dbs = (sb.block_size << sb.dir_blk_log) as usize;
        let below = DIR_LEAF_OFFSET >> sb.block_size.trailing_zeros();
        let mut extents = self.sorted_extents(dir, below)?;
        extents.retain(|e| !e.zeros);
        let mut count = 0u64;
        let mut blocks = 0u64;
        let mut done: Option<u64> = None;
        let mut buf = vec![0u8; dbs];
        for e in &extents {
            let first = e.logical >> sb.dir_blk_log;
            // e.logical + e.len <= below: no overflow.
            let last = (e.logical + e.len - 1) >> sb.dir_blk_log;
            for db in first..=last {
                if done.is_some_and(|d| db <= d) {
                    continue;
                }
                done = Some(db);
                blocks += 1;
                if blocks > MAX_DIR_ENTRIES {
                    return Err(dir_err(
                        ino,
                        format!("has more than {MAX_DIR_ENTRIES} data blocks"),
                    ));
                }
                // A directory block may span several extents.
                for k in 0..per_dir_block {
                    let logical = (db << sb.dir_blk_log) + k;
                    // Sorted and disjoint: the last extent starting at or before `logical`
                    // is the only one that can hold it.
                    let at = extents
                        .partition_point(|x| x.logical <= logical)
                        .checked_sub(1)
                        .and_then(|i| extents.get(i))
                        .filter(|x| logical - x.logical < x.len)
                        .ok_or_else(|| dir_err(ino, format!("block {db} has a hole")))?;
                    let bs = sb.block_size as usize;
                    let off = (k as usize) * bs;
                    let dst = buf
                        .get_mut(off..off + bs)
                        .ok_or_else(|| dir_err(ino, "a directory block outside its buffer"))?;
                    self.read_blocks(ino, at.block + (logical - at.logical), dst)?;
                }
                if self.scan_data_block(ino, &buf, &mut count, f)?.is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Walks the entries of one directory data block ("XD2B"/"XDB3" single-block form, or
    /// "XD2D"/"XDD3" data block of a leaf or node directory).
    fn scan_data_block(
        &self,
        ino: u64,
        block: &[u8],
        count: &mut u64,
        f: &mut dyn FnMut(&[u8], u64) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        let magic = field(block, 0, 4);
        let (hdr, single, data) = if self.sb.v5 {
            (64usize, DIR3_BLOCK_MAGIC, DIR3_DATA_MAGIC)
        } else {
            (16usize, DIR_BLOCK_MAGIC, DIR_DATA_MAGIC)
        };
        let end = if magic == single {
            // The block form keeps its hash index and a tail (count, stale) at the end.
            let leaves = u64::from(be32(block, block.len().saturating_sub(8)));
            leaves
                .checked_mul(8)
                .and_then(|l| l.checked_add(8))
                .and_then(|t| (block.len() as u64).checked_sub(t))
                .filter(|&e| e >= hdr as u64)
                .ok_or_else(|| {
                    dir_err(
                        ino,
                        format!("a block tail of {leaves} leaf entries does not fit"),
                    )
                })? as usize
        } else if magic == data {
            block.len()
        } else {
            return Err(dir_err(
                ino,
                format!("a data block with bad magic {magic:02x?}"),
            ));
        };
        let ftype = usize::from(self.sb.ftype);
        let mut pos = hdr;
        while pos < end {
            if be16(block, pos) == 0xFFFF {
                let len = usize::from(be16(block, pos + 2));
                if len < 8 || !len.is_multiple_of(8) || pos + len > end {
                    return Err(dir_err(
                        ino,
                        format!("an unused entry of {len} bytes at {pos} does not fit its block"),
                    ));
                }
                pos += len;
                continue;
            }
            let entry = be64(block, pos);
            let name_len = usize::from(byte(block, pos + 8));
            let len = (8 + 1 + name_len + ftype + 2).next_multiple_of(8);
            if name_len == 0 || pos + len > end {
                return Err(dir_err(
                    ino,
                    format!("an entry with a {name_len}-byte name at {pos} does not fit its block"),
                ));
            }
            *count += 1;
            if *count > MAX_DIR_ENTRIES {
                return Err(dir_err(
                    ino,
                    format!("has more than {MAX_DIR_ENTRIES} entries"),
                ));
            }
            if f(field(block, pos + 9, name_len), entry).is_break() {
                return Ok(ControlFlow::Break(()));
            }
            pos += len;
        }
        Ok(ControlFlow::Continue(()))
    }

    /// A shortform directory, kept in the inode: a header (count, i8count, parent) and
    /// packed entries (name length, offset, name, file type, inode number).
    fn scan_shortform(
        &self,
        dir: &Inode,
        f: &mut dyn FnMut(&[u8], u64) -> ControlFlow<()>,
    ) -> Result<()> {
        let ino = dir.ino;
        let fork = dir.data_fork()?;
        let size = usize::try_from(dir.size()).unwrap_or(usize::MAX);
        let sf = fork.get(..size).ok_or_else(|| {
            dir_err(
                ino,
                format!(
                    "a shortform directory of {size} bytes in a {}-byte fork",
                    fork.len()
                ),
            )
        })?;
        let count = usize::from(byte(sf, 0));
        let ino_len = if byte(sf, 1) != 0 { 8 } else { 4 };
        let read_ino = |off: usize| -> Option<u64> {
            let b = field(sf, off, ino_len);
            match ino_len {
                8 => b.try_into().ok().map(u64::from_be_bytes),
                _ => b.try_into().ok().map(|b| u64::from(u32::from_be_bytes(b))),
            }
        };
        let parent = read_ino(2).ok_or_else(|| dir_err(ino, "a shortform header past its data"))?;
        if f(b".", ino).is_break() || f(b"..", parent).is_break() {
            return Ok(());
        }
        let ftype = usize::from(self.sb.ftype);
        let mut pos = 2 + ino_len;
        for _ in 0..count {
            let name_len = usize::from(byte(sf, pos));
            let name = field(sf, pos + 3, name_len);
            let entry = read_ino(pos + 3 + name_len + ftype);
            let (Some(entry), false) = (entry, name_len == 0 || name.len() != name_len) else {
                return Err(dir_err(
                    ino,
                    format!("a shortform entry at {pos} runs past its data"),
                ));
            };
            if f(name, entry).is_break() {
                return Ok(());
            }
            pos += 3 + name_len + ftype + ino_len;
        }
        Ok(())
    }

    fn find_in_dir(&self, dir: &Inode, name: &[u8]) -> Result<Option<u64>> {
        let mut found = None;
        self.scan_dir(dir, &mut |n, ino| {
            if n == name {
                found = Some(ino);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(found)
    }

    fn symlink_target(&self, link: &Inode) -> Result<Vec<u8>> {
        let ino = link.ino;
        let size = link.size();
        if size == 0 || size > MAX_SYMLINK_LEN {
            return Err(inode_err(
                ino,
                format!("a symbolic link of {size} bytes (1..={MAX_SYMLINK_LEN} taken)"),
            ));
        }
        if link.format() == FMT_LOCAL {
            return self.data(link, size);
        }
        let bs = self.sb.block_size;
        let hdr = if self.sb.v5 { 56u64 } else { 0 };
        let extents = self.sorted_extents(link, MAX_SYMLINK_LEN.div_ceil(bs) + 1)?;
        let mut out = Vec::new();
        // Each mapping holds one header (v5) and then target bytes, as the kernel reads it.
        for e in &extents {
            let left = size - out.len() as u64;
            if left == 0 {
                break;
            }
            let space = (e.len * bs).saturating_sub(hdr);
            let take = space.min(left);
            let mut buf = vec![0u8; (hdr + take) as usize];
            self.read_blocks(ino, e.block, &mut buf)?;
            if self.sb.v5 {
                if field(&buf, 0, 4) != SYMLINK3_MAGIC {
                    return Err(inode_err(
                        ino,
                        "a remote symbolic link block with bad magic",
                    ));
                }
                if u64::from(be32(&buf, 4)) != out.len() as u64 || be64(&buf, 32) != ino {
                    return Err(inode_err(
                        ino,
                        "a remote symbolic link block of another link or offset",
                    ));
                }
            }
            out.extend_from_slice(buf.get(hdr as usize..).unwrap_or_default());
        }
        if out.len() as u64 != size {
            return Err(inode_err(
                ino,
                format!(
                    "a symbolic link of {size} bytes whose blocks hold {}",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    /// The inode at `path`, resolved from the root (a relative path is taken as absolute),
    /// following symbolic links, the last component's too. Absolute link targets resolve from
    /// this filesystem's root, relative ones from the link's directory.
    fn lookup(&self, path: &str) -> Result<Inode> {
        let err_path = || path.to_owned();
        if path.len() > MAX_PATH {
            return Err(XfsError::BadPath {
                path: path.chars().take(64).collect::<String>() + "...",
                why: "longer than 4096 bytes",
            });
        }
        let mut todo: Vec<Vec<u8>> = components(path.as_bytes());
        todo.reverse();
        let root = self.inode(self.sb.root_ino)?;
        let mut cur = root.clone();
        let mut follows = 0u32;
        let mut steps = 0usize;
        let too_many = || XfsError::BadPath {
            path: err_path(),
            why: "has too many components once its symbolic links are expanded",
        };
        while let Some(name) = todo.pop() {
            steps += 1;
            if steps > MAX_COMPONENTS {
                return Err(too_many());
            }
            if name.len() > MAX_NAME {
                return Err(XfsError::BadPath {
                    path: err_path(),
                    why: "has a component longer than 255 bytes",
                });
            }
            if cur.kind() != FileKind::Directory {
                return Err(XfsError::NotADirectory { path: err_path() });
            }
            let child = self
                .find_in_dir(&cur, &name)?
                .ok_or_else(|| XfsError::NotFound { path: err_path() })?;
            let inode = self.inode(child)?;
            if inode.kind() == FileKind::Symlink {
                follows += 1;
                if follows > MAX_SYMLINKS {
                    return Err(XfsError::SymlinkLoop { path: err_path() });
                }
                let target = self.symlink_target(&inode)?;
                if target.first() == Some(&b'/') {
                    cur = root.clone();
                }
                let mut more = components(&target);
                more.reverse();
                todo.extend(more);
                if todo.len() > MAX_COMPONENTS {
                    return Err(too_many());
                }
                continue;
            }
            cur = inode;
        }
        Ok(cur)
    }

    /// The contents of the regular file at absolute `path`, symbolic links followed inside
    /// this filesystem (at most [`MAX_SYMLINKS`] per lookup; absolute targets resolve from
    /// this filesystem's root), refused when larger than `max` bytes
    /// ([`XfsError::TooLarge`]). Holes and unwritten extents read as zeros; files on the
    /// realtime device are refused.
    pub fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let inode = self.lookup(path)?;
        let kind = inode.kind();
        if kind != FileKind::Regular {
            return Err(XfsError::NotAFile {
                path: path.to_owned(),
                kind,
            });
        }
        let size = inode.size();
        if size > max {
            return Err(XfsError::TooLarge {
                path: path.to_owned(),
                size,
                max,
            });
        }
        self.data(&inode, size)
    }

    /// The names in the directory at `path` (symbolic links followed), without `.` and `..`;
    /// more than [`MAX_LISTED`] is an error.
    pub fn read_dir(&self, path: &str) -> Result<Vec<String>> {
        let dir = self.lookup(path)?;
        if dir.kind() != FileKind::Directory {
            return Err(XfsError::NotADirectory {
                path: path.to_owned(),
            });
        }
        let mut out = Vec::new();
        let mut too_many = false;
        self.scan_dir(&dir, &mut |name, _| {
            if name == b"." || name == b".." {
                return ControlFlow::Continue(());
            }
            if out.len() >= MAX_LISTED {
                too_many = true;
                return ControlFlow::Break(());
            }
            out.push(String::from_utf8_lossy(name).into_owned());
            ControlFlow::Continue(())
        })?;
        if too_many {
            return Err(dir_err(
                dir.ino,
                format!("has more than {MAX_LISTED} entries to list"),
            ));
        }
        Ok(out)
    }
}

/// Path components, without empty ones and `.`.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

/// `n` is a power of two in `lo..=hi` whose log is `log`.
fn pow2_in(n: u64, lo: u64, hi: u64, log: u8) -> bool {
    n.is_power_of_two() && (lo..=hi).contains(&n) && n.trailing_zeros() == u32::from(log)
}

fn parse_super(raw: &[u8], part_len: u64) -> Result<Super> {
    let magic: [u8; 4] = field(raw, 0, 4).try_into().unwrap_or_default();
    if &magic != SB_MAGIC {
        return Err(XfsError::NoSuperblock(magic));
    }
    let versionnum = be16(raw, 100);
    let version = versionnum & 0xF;
    // Old kernels wrote features2 at the wrong offset; the kernel merges the two copies.
    let features2 = be32(raw, 200) | be32(raw, 204);
    let incompat = be32(raw, 216);
    let (v5, ftype) = match version {
        4 => {
            if versionnum & VERSION_DIRV2 == 0 {
                return Err(XfsError::Unsupported(
                    "an xfs filesystem with version 1 directories".into(),
                ));
            }
            let f2 = if versionnum & VERSION_MOREBITS != 0 {
                features2
            } else {
                0
            };
            if f2 & FEATURES2_CRC != 0 {
                return Err(superblock("a version 4 superblock with the CRC feature"));
            }
            let unknown = f2 & !FEATURES2_OK;
            if unknown != 0 {
                return Err(XfsError::Unsupported(format!(
                    "xfs version 4 feature flags {unknown:#x}"
                )));
            }
            (false, f2 & FEATURES2_FTYPE != 0)
        }
        5 => {
            if incompat & INCOMPAT_NEEDSREPAIR != 0 {
                return Err(XfsError::Unsupported(
                    "an xfs filesystem marked as needing xfs_repair".into(),
                ));
            }
            let unknown = incompat & !INCOMPAT_KNOWN;
            if unknown != 0 {
                return Err(XfsError::Unsupported(format!(
                    "xfs incompatible feature flags {unknown:#x}"
                )));
            }
            (true, incompat & INCOMPAT_FTYPE != 0)
        }
        v => {
            return Err(XfsError::Unsupported(format!(
                "xfs superblock version {v} (4 and 5 are read)"
            )));
        }
    };
    let block_size = u64::from(be32(raw, 4));
    let block_log = byte(raw, 120);
    if !pow2_in(block_size, 512, 65536, block_log) {
        return Err(superblock(format!(
            "block size {block_size} (log {block_log}) is not a power of two between 512 and 65536"
        )));
    }
    let sect_size = u64::from(be16(raw, 102));
    if !pow2_in(sect_size, 512, block_size.min(32768), byte(raw, 121)) {
        return Err(superblock(format!(
            "sector size {sect_size} is not a power of two between 512 and the block size"
        )));
    }
    let inode_size = u64::from(be16(raw, 104));
    let min_inode = if v5 { 512 } else { 256 };
    if !pow2_in(inode_size, min_inode, block_size.min(2048), byte(raw, 122)) {
        return Err(superblock(format!(
            "inode size {inode_size} is not a power of two between {min_inode} and 2048 (and \
             the block size)"
        )));
    }
    let inopb_log = u32::from(byte(raw, 123));
    if u64::from(be16(raw, 106)) != block_size / inode_size
        || inopb_log != u32::from(block_log) - inode_size.trailing_zeros()
    {
        return Err(superblock(
            "inodes per block disagree with the block and inode sizes",
        ));
    }
    let ag_blocks = u64::from(be32(raw, 84));
    let ag_blk_log = u32::from(byte(raw, 124));
    if ag_blocks < 64 || ag_blk_log > 31 || 64 - (ag_blocks - 1).leading_zeros() != ag_blk_log {
        return Err(superblock(format!(
            "{ag_blocks} blocks per allocation group (log {ag_blk_log}; at least 64 taken)"
        )));
    }
    let ag_count = u64::from(be32(raw, 88));
    let blocks = be64(raw, 8);
    if ag_count == 0 {
        return Err(superblock("0 allocation groups"));
    }
    // ag_blocks < 2^31 and ag_count < 2^32: no overflow.
    if blocks <= (ag_count - 1) * ag_blocks || blocks > ag_count * ag_blocks {
        return Err(superblock(format!(
            "{blocks} blocks do not make {ag_count} allocation groups of {ag_blocks}"
        )));
    }
    let dir_blk_log = u32::from(byte(raw, 192));
    if dir_blk_log > 16 || block_size << dir_blk_log > 65536 {
        return Err(superblock(format!(
            "directory blocks of 2^{dir_blk_log} filesystem blocks exceed 64 KiB"
        )));
    }
    let fs_bytes = u128::from(blocks) * u128::from(block_size);
    if fs_bytes > u128::from(part_len) {
        return Err(XfsError::LargerThanPartition {
            fs: fs_bytes,
            part: part_len,
        });
    }
    Ok(Super {
        block_size,
        blocks,
        ag_blocks,
        ag_count,
        ag_blk_log,
        inode_size,
        inopb_log,
        dir_blk_log,
        root_ino: be64(raw, 56),
        v5,
        ftype,
    })
}

#[cfg(test)]
mod tests {
    //! Images built by mkfs.xfs from prototype files (no mounting), read back byte for byte,
    //! then patched into hostile shapes.

    use std::fs::{self, File};
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    use super::*;
    use crate::disk::Metered;

    const MIB: usize = 1 << 20;
    const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    /// Directory sizes built, by name.
    const DIRS: [(&str, usize); 5] = [
        ("d5", 5),
        ("d60", 60),
        ("d200", 200),
        ("d2000", 2000),
        ("d20000", 20000),
    ];

    /// Deterministic bytes that no block of which is all zeros.
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
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (xfsprogs and util-linux are needed)"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A mkfs.xfs prototype file under construction (see mkfs.xfs(8), `-p`).
    struct Proto {
        text: String,
        dir: PathBuf,
        n: usize,
    }

    impl Proto {
        fn new(dir: &Path) -> Self {
            fs::write(dir.join("empty"), b"").expect("empty");
            Proto {
                text: "boot\n0 0\nd--755 0 0\n".into(),
                dir: dir.to_owned(),
                n: 0,
            }
        }

        fn dir(&mut self, name: &str) {
            self.text.push_str(&format!("{name} d--755 0 0\n"));
        }

        fn end(&mut self) {
            self.text.push_str("$\n");
        }

        fn file(&mut self, name: &str, bytes: &[u8]) {
            self.n += 1;
            let src = self.dir.join(format!("src{}", self.n));
            fs::write(&src, bytes).expect("source");
            self.text
                .push_str(&format!("{name} ---644 0 0 {}\n", src.display()));
        }

        fn empty(&mut self, name: &str) {
            let src = self.dir.join("empty");
            self.text
                .push_str(&format!("{name} ---644 0 0 {}\n", src.display()));
        }

        fn link(&mut self, name: &str, target: &str) {
            self.text.push_str(&format!("{name} l--777 0 0 {target}\n"));
        }
    }

    /// An xfs image of `mib` MiB built from `proto` with mkfs.xfs `extra` options.
    fn mkfs(dir: &Path, proto: &Proto, mib: u64, extra: &[&str]) -> Vec<u8> {
        let proto_path = dir.join("proto.txt");
        fs::write(&proto_path, format!("{}$\n", proto.text)).expect("proto");
        let img = dir.join("fs.img");
        File::create(&img)
            .and_then(|f| f.set_len(mib << 20))
            .expect("create image");
        // These tell mkfs.xfs it runs under fstests, which lifts its 300 MB minimum.
        run(Command::new("mkfs.xfs")
            .env("TEST_DIR", "1")
            .env("TEST_DEV", "1")
            .env("QA_CHECK_FS", "1")
            .args(["-q", "-f"])
            .args(extra)
            .arg("-p")
            .arg(&proto_path)
            .arg(&img));
        fs::read(&img).expect("read image")
    }

    fn kernel() -> Vec<u8> {
        pattern(7, 12 * MIB + 1234)
    }

    fn long_target() -> String {
        format!("{}vmlinuz", "./".repeat(320))
    }

    fn names(prefix: char, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:05}")).collect()
    }

    /// The tree every image holds.
    fn standard_tree(dir: &Path) -> Proto {
        let mut p = Proto::new(dir);
        p.dir("boot");
        p.file("vmlinuz", &kernel());
        p.file("small", b"small file\n");
        p.link("initrd.img", "vmlinuz");
        p.link("abs", "/boot/vmlinuz");
        p.link("up", "../etc/outside");
        p.link("long", &long_target());
        p.link("loop1", "loop2");
        p.link("loop2", "loop1");
        p.link("dirlink", "/d200");
        p.end();
        p.dir("etc");
        p.file("outside", b"outside /boot\n");
        p.end();
        for (name, n) in DIRS {
            p.dir(name);
            for e in names('e', n) {
                p.empty(&e);
            }
            p.end();
        }
        p
    }

    fn whole(img: &[u8]) -> Partition {
        Partition {
            index: 0,
            start: 0,
            len: img.len() as u64,
            type_guid: None,
            mbr_type: None,
            name: String::new(),
        }
    }

    fn v5_image() -> &'static Vec<u8> {
        static IMG: OnceLock<Vec<u8>> = OnceLock::new();
        IMG.get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let proto = standard_tree(dir.path());
            let mut img = mkfs(dir.path(), &proto, 64, &[]);
            add_symlink_header(&mut img, "/boot/long");
            img
        })
    }

    /// mkfs.xfs 6.1 writes a v5 remote symbolic link's target without the "XSLM" header
    /// the kernel (and xfs_repair) require: put it in, as the kernel would have written it.
    fn add_symlink_header(img: &mut [u8], path: &str) {
        let (at, header) = {
            let copy = img.to_vec();
            let fs = open(&copy);
            let (parent, name) = path.rsplit_once('/').expect("a path");
            let dir = fs.lookup(parent).expect("parent");
            let ino = fs.find_in_dir(&dir, name.as_bytes()).expect("scan");
            let link = fs.inode(ino.expect("the link")).expect("inode");
            let ext = fs.extents(&link, 1).expect("extents");
            let block = ext.first().expect("one extent").block;
            let at = (block * fs.sb.block_size) as usize;
            let size = link.size() as usize;
            if img.get(at..at + 4) == Some(SYMLINK3_MAGIC.as_slice()) {
                return;
            }
            let mut header = Vec::new();
            header.extend_from_slice(SYMLINK3_MAGIC);
            header.extend_from_slice(&0u32.to_be_bytes());
            header.extend_from_slice(&(size as u32).to_be_bytes());
            header.extend_from_slice(&0u32.to_be_bytes());
            header.extend_from_slice(img.get(32..48).expect("uuid"));
            header.extend_from_slice(&link.ino.to_be_bytes());
            header.extend_from_slice(&(block * fs.sb.block_size / 512).to_be_bytes());
            header.extend_from_slice(&0u64.to_be_bytes());
            header.extend_from_slice(img.get(at..at + size).expect("target"));
            (at, header)
        };
        img.get_mut(at..at + header.len())
            .expect("block")
            .copy_from_slice(&header);
    }

    fn open(img: &Vec<u8>) -> Xfs<'_> {
        Xfs::open(img, &whole(img)).expect("open")
    }

    /// Which directory form mkfs chose for `path`.
    fn form(fs: &Xfs<'_>, path: &str) -> &'static str {
        let dir = fs.lookup(path).expect("lookup");
        if dir.format() == FMT_LOCAL {
            return "shortform";
        }
        let leaf = DIR_LEAF_OFFSET / fs.sb.block_size;
        let ext = fs.extents(&dir, u64::MAX).expect("extents");
        if ext.iter().any(|e| e.logical >= 2 * leaf) {
            "node"
        } else if ext.iter().any(|e| e.logical >= leaf) {
            "leaf"
        } else {
            "block"
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// Everything the standard tree holds, read back.
    fn check_standard_tree(fs: &Xfs<'_>) {
        let k = kernel();
        assert!(fs.read_file("/boot/vmlinuz", 64 << 20).expect("kernel") == k);
        assert_eq!(
            fs.read_file("/boot/small", 100).expect("small"),
            b"small file\n"
        );
        for link in ["/boot/initrd.img", "/boot/abs", "/boot/long", "boot//./abs"] {
            assert!(fs.read_file(link, 64 << 20).expect(link) == k, "{link}");
        }
        assert_eq!(
            fs.read_file("/boot/up", 100).expect("up"),
            b"outside /boot\n"
        );
        let long = fs.lookup("/boot").and_then(|b| {
            let ino = fs.find_in_dir(&b, b"long")?.expect("long");
            fs.inode(ino)
        });
        let long = long.expect("long link");
        assert_eq!(long.format(), FMT_EXTENTS, "a remote symbolic link");
        assert_eq!(
            fs.symlink_target(&long).expect("target"),
            long_target().as_bytes()
        );
        for (name, n) in DIRS {
            let path = format!("/{name}");
            if n > MAX_LISTED {
                assert!(matches!(fs.read_dir(&path), Err(XfsError::Dir { .. })));
                let dir = fs.lookup(&path).expect(name);
                let mut all = Vec::new();
                fs.scan_dir(&dir, &mut |n, _| {
                    all.push(String::from_utf8_lossy(n).into_owned());
                    ControlFlow::Continue(())
                })
                .expect(name);
                let mut want = names('e', n);
                want.extend([".".into(), "..".into()]);
                assert_eq!(sorted(all), sorted(want), "{name}");
                continue;
            }
            let got = sorted(fs.read_dir(&path).expect(name));
            assert_eq!(got, names('e', n), "{name}");
        }
        assert_eq!(
            sorted(fs.read_dir("/").expect("root")),
            ["boot", "d200", "d2000", "d20000", "d5", "d60", "etc"]
        );
        assert_eq!(
            sorted(fs.read_dir("/boot/dirlink").expect("dirlink")),
            names('e', 200)
        );
        for i in [0, 1, 999, 19999] {
            let path = format!("/d20000/e{i:05}");
            assert_eq!(fs.read_file(&path, 0).expect(&path), b"");
        }

        assert!(matches!(
            fs.read_file("/boot/loop1", 100),
            Err(XfsError::SymlinkLoop { .. })
        ));
        assert!(matches!(
            fs.read_file("/boot/nothing", 100),
            Err(XfsError::NotFound { .. })
        ));
        assert!(matches!(
            fs.read_file("/d20000/e99999", 100),
            Err(XfsError::NotFound { .. })
        ));
        assert!(matches!(
            fs.read_file("/boot/small/x", 100),
            Err(XfsError::NotADirectory { .. })
        ));
        assert!(matches!(
            fs.read_dir("/boot/small"),
            Err(XfsError::NotADirectory { .. })
        ));
        assert!(matches!(
            fs.read_file("/boot", 100),
            Err(XfsError::NotAFile {
                kind: FileKind::Directory,
                ..
            })
        ));
        match fs.read_file("/boot/abs", 1000) {
            Err(XfsError::TooLarge { size, max, .. }) => {
                assert_eq!((size, max), (k.len() as u64, 1000));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            fs.read_file(&"/a".repeat(3000), 100),
            Err(XfsError::BadPath { .. })
        ));
    }

    #[test]
    fn xfs_v5_files_directories_and_symlinks() {
        let img = v5_image();
        let fs = open(img);
        assert!(fs.sb.v5 && fs.sb.ftype && fs.sb.block_size == 4096);
        check_standard_tree(&fs);
        let forms: Vec<_> = DIRS
            .iter()
            .map(|(n, _)| form(&fs, &format!("/{n}")))
            .collect();
        assert_eq!(forms, ["shortform", "block", "leaf", "node", "node"]);
    }

    fn v4_image() -> &'static Vec<u8> {
        static IMG: OnceLock<Vec<u8>> = OnceLock::new();
        IMG.get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let proto = standard_tree(dir.path());
            mkfs(
                dir.path(),
                &proto,
                64,
                &["-m", "crc=0", "-n", "ftype=0,size=4096", "-b", "size=1024"],
            )
        })
    }

    #[test]
    fn xfs_v4_with_1k_blocks_and_4k_directory_blocks() {
        let img = v4_image();
        let fs = open(img);
        assert!(!fs.sb.v5 && !fs.sb.ftype);
        assert_eq!((fs.sb.block_size, fs.sb.dir_blk_log), (1024, 2));
        check_standard_tree(&fs);
        let forms: Vec<_> = DIRS
            .iter()
            .map(|(n, _)| form(&fs, &format!("/{n}")))
            .collect();
        assert_eq!(forms, ["shortform", "block", "leaf", "node", "node"]);
        let big = fs.lookup("/d20000").expect("d20000");
        assert_eq!(big.format(), FMT_BTREE, "a btree-format directory");
        let kernel = fs.lookup("/boot/vmlinuz").expect("vmlinuz");
        assert_eq!(kernel.version(), 2);
    }

    fn patch(img: &mut [u8], at: u64, bytes: &[u8]) {
        let at = at as usize;
        img.get_mut(at..at + bytes.len())
            .expect("inside the image")
            .copy_from_slice(bytes);
    }

    /// The byte offset of `path`'s inode in the image, and the inode.
    fn inode_at(img: &Vec<u8>, path: &str) -> (u64, Inode) {
        let fs = open(img);
        let inode = fs.lookup(path).expect(path);
        (fs.inode_offset(inode.ino).expect("offset"), inode)
    }

    /// The byte offset of `path`'s first data (or directory) block in the image.
    fn first_block_at(img: &Vec<u8>, path: &str) -> u64 {
        let fs = open(img);
        let inode = fs.lookup(path).expect(path);
        let mut ext = fs.extents(&inode, u64::MAX).expect("extents");
        ext.sort_by_key(|e| e.logical);
        ext.first().expect("an extent").block * fs.sb.block_size
    }

    fn sparse_copy(dst: &File, bytes: &[u8], offset: u64) {
        for (i, chunk) in bytes.chunks(1 << 16).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                dst.write_all_at(chunk, offset + (i as u64) * (1 << 16))
                    .expect("copy filesystem");
            }
        }
    }

    #[test]
    fn xfs_in_a_gpt_partition() {
        let img = v5_image();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        let file = File::create(&path).expect("create disk");
        file.set_len(img.len() as u64 + (2 << 20)).expect("size");
        let sectors = img.len() as u64 / 512;
        let mut child = Command::new("sfdisk")
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(&path)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sfdisk (util-linux is needed)");
        let script =
            format!("label: gpt\nstart=2048, size={sectors}, type={LINUX_FS}, name=boot\n");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("script");
        let out = child.wait_with_output().expect("sfdisk");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        sparse_copy(&file, img, 2048 * 512);
        drop(file);
        let disk = File::open(&path).expect("open disk");
        let parts = crate::partitions(&disk).expect("partitions");
        let part = parts.iter().find(|p| p.index == 1).expect("partition 1");
        assert_eq!((part.start, part.len), (2048 * 512, img.len() as u64));
        let fs = Xfs::open(&disk, part).expect("open");
        assert_eq!(fs.partition(), part);
        assert!(fs.read_file("/boot/abs", 64 << 20).expect("kernel") == kernel());
        assert!(
            fs.read_dir("/boot")
                .expect("boot")
                .contains(&"vmlinuz".to_owned())
        );
        assert!(format!("{fs:?}").starts_with("Xfs {"));

        let mut beyond = part.clone();
        beyond.len += 4 << 20;
        assert!(matches!(
            Xfs::open(&disk, &beyond),
            Err(XfsError::PartitionOutsideDisk)
        ));
        let mut short = part.clone();
        short.len -= 1 << 20;
        assert!(matches!(
            Xfs::open(&disk, &short),
            Err(XfsError::LargerThanPartition { .. })
        ));
    }

    #[test]
    fn xfs_unwritten_extents_and_holes_read_as_zeros() {
        let k = kernel();
        let (at, inode) = inode_at(v5_image(), "/boot/vmlinuz");
        assert_eq!((inode.format(), inode.nextents()), (FMT_EXTENTS, 1));
        let rec = at + CORE_V3 as u64;
        let l0 = be64(&inode.raw, CORE_V3);

        let mut img = v5_image().clone();
        patch(&mut img, rec, &(l0 | 1 << 63).to_be_bytes());
        let got = open(&img)
            .read_file("/boot/vmlinuz", 64 << 20)
            .expect("read");
        assert!(got.len() == k.len() && got.iter().all(|&b| b == 0));

        // The extent moved one block on: block 0 is a hole, the rest shifted.
        let mut img = v5_image().clone();
        patch(&mut img, rec, &(l0 + (1 << 9)).to_be_bytes());
        let got = open(&img)
            .read_file("/boot/vmlinuz", 64 << 20)
            .expect("read");
        assert_eq!(got.len(), k.len());
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert!(got[4096..] == k[..k.len() - 4096]);
    }

    #[test]
    fn xfs_extents_outside_the_filesystem_are_errors() {
        let base = v5_image();
        let (at, inode) = inode_at(base, "/boot/vmlinuz");
        let fs = open(base);
        let rec = at + CORE_V3 as u64;
        let l0 = be64(&inode.raw, CORE_V3);
        let l1 = be64(&inode.raw, CORE_V3 + 8);
        let count = l1 & ((1 << 21) - 1);
        let agcount = fs.sb.ag_count;
        let agblklog = fs.sb.ag_blk_log;
        let read = |img: &Vec<u8>| open(img).read_file("/boot/vmlinuz", 64 << 20);

        // Start block in allocation group `agcount`, one past the last.
        let fsb = agcount << agblklog;
        let mut img = base.clone();
        patch(&mut img, rec, &((l0 & !0x1FF) | (fsb >> 43)).to_be_bytes());
        patch(
            &mut img,
            rec + 8,
            &(((fsb & ((1 << 43) - 1)) << 21) | count).to_be_bytes(),
        );
        let err = read(&img).expect_err("past the groups");
        assert!(matches!(err, XfsError::Inode { .. }), "{err}");
        assert!(err.to_string().contains("outside the filesystem"), "{err}");

        // Running past the end of its allocation group.
        let fsb = fs.sb.ag_blocks - 2;
        let mut img = base.clone();
        patch(&mut img, rec, &(l0 & !0x1FF).to_be_bytes());
        patch(&mut img, rec + 8, &((fsb << 21) | count).to_be_bytes());
        assert!(matches!(read(&img), Err(XfsError::Inode { .. })));

        // More extents than the fork holds.
        let mut img = base.clone();
        patch(&mut img, at + 76, &1000u32.to_be_bytes());
        assert!(matches!(read(&img), Err(XfsError::Inode { .. })));

        // Two extents mapping the same blocks.
        let mut img = base.clone();
        patch(&mut img, at + 76, &2u32.to_be_bytes());
        patch(&mut img, rec + 16, &l0.to_be_bytes());
        patch(&mut img, rec + 24, &l1.to_be_bytes());
        let err = read(&img).expect_err("overlap");
        assert!(err.to_string().contains("overlap"), "{err}");

        // A realtime file.
        let mut img = base.clone();
        patch(
            &mut img,
            at + 90,
            &(inode.flags() | DIFLAG_REALTIME).to_be_bytes(),
        );
        assert!(matches!(read(&img), Err(XfsError::Unsupported(_))));

        // A bad inode magic, and an inode number outside the filesystem in a directory.
        let mut img = base.clone();
        patch(&mut img, at, b"XX");
        assert!(matches!(read(&img), Err(XfsError::Inode { .. })));
        let (d5, dir) = inode_at(base, "/d5");
        assert_eq!(dir.format(), FMT_LOCAL);
        // Header (count, i8count, 4-byte parent), then namelen, offset, "e00000", ftype.
        let ino_at = d5 + CORE_V3 as u64 + 6 + 3 + 6 + 1;
        let mut img = base.clone();
        patch(&mut img, ino_at, &u32::MAX.to_be_bytes());
        let err = open(&img)
            .read_file("/d5/e00000", 10)
            .expect_err("bad inode");
        assert!(matches!(err, XfsError::Inode { .. }), "{err}");
        // A shortform count past its data.
        let mut img = base.clone();
        patch(&mut img, d5 + CORE_V3 as u64, &[200]);
        assert!(matches!(
            open(&img).read_dir("/d5"),
            Err(XfsError::Dir { .. })
        ));
    }

    #[test]
    fn xfs_btree_child_pointing_to_itself() {
        let base = v4_image();
        let (at, dir) = inode_at(base, "/d20000");
        assert_eq!(dir.format(), FMT_BTREE);
        let fs = open(base);
        let fork = dir.data_fork().expect("fork");
        let root = at + CORE_V2 as u64;
        let maxrecs = (fork.len() - 4) / 16;
        let child_fsb = be64(fork, 4 + 8 * maxrecs);
        let child = fs.fsb_to_block(dir.ino, child_fsb, 1).expect("child") * fs.sb.block_size;
        assert_eq!(be16(fork, 0), 1, "a root over leaves");
        let node_max = (fs.sb.block_size as usize - 24) / 16;

        // The root claims two levels; its first child, now a level-1 node, points at itself.
        let mut img = base.clone();
        patch(&mut img, root, &2u16.to_be_bytes());
        patch(&mut img, child + 4, &1u16.to_be_bytes());
        patch(&mut img, child + 6, &1u16.to_be_bytes());
        patch(&mut img, child + 24, &0u64.to_be_bytes());
        patch(
            &mut img,
            child + 24 + 8 * node_max as u64,
            &child_fsb.to_be_bytes(),
        );
        let err = open(&img).read_dir("/d20000").expect_err("a loop");
        assert!(err.to_string().contains("level"), "{err}");

        // A root deeper than taken, and a root with more records than fit.
        let mut img = base.clone();
        patch(&mut img, root, &200u16.to_be_bytes());
        assert!(matches!(
            open(&img).read_dir("/d20000"),
            Err(XfsError::Inode { .. })
        ));
        let mut img = base.clone();
        patch(&mut img, root + 2, &1000u16.to_be_bytes());
        assert!(matches!(
            open(&img).read_dir("/d20000"),
            Err(XfsError::Inode { .. })
        ));
        // A leaf with bad magic.
        let mut img = base.clone();
        patch(&mut img, child, b"XXXX");
        assert!(matches!(
            open(&img).read_dir("/d20000"),
            Err(XfsError::Inode { .. })
        ));
    }

    #[test]
    fn xfs_bad_directory_entries_are_errors() {
        let base = v5_image();
        assert_eq!(form(&open(base), "/d60"), "block");
        let block = first_block_at(base, "/d60");
        let first = block + 64;
        let list = |img: &Vec<u8>| open(img).read_dir("/d60");
        let cases: [(u64, &[u8]); 5] = [
            // An entry with an empty name (its length works out to the minimum).
            (first + 8, &[0]),
            // An unused entry of length 0.
            (first, &[0xFF, 0xFF, 0, 0]),
            // An unused entry running past the block.
            (first, &[0xFF, 0xFF, 0xFF, 0xF8]),
            // A block tail claiming more leaf entries than the block holds.
            (block + 4096 - 8, &[0xFF, 0xFF, 0xFF, 0xFF]),
            // Bad magic.
            (block, b"XXXX"),
        ];
        for (at, bytes) in cases {
            let mut img = base.clone();
            patch(&mut img, at, bytes);
            let err = list(&img).expect_err("corrupt");
            assert!(matches!(err, XfsError::Dir { .. }), "{err}");
        }
        // A data block of a leaf directory with an entry running past the block.
        let block = first_block_at(base, "/d200");
        let mut img = base.clone();
        patch(&mut img, block + 64, &[0xFF, 0xFF, 0x10, 0x00]);
        assert!(matches!(
            open(&img).read_dir("/d200"),
            Err(XfsError::Dir { .. })
        ));
        // A remote symlink block that is not one (the link itself, not what it names).
        let fs = open(base);
        let boot = fs.lookup("/boot").expect("boot");
        let ino = fs.find_in_dir(&boot, b"long").expect("scan").expect("long");
        let link = fs.inode(ino).expect("link");
        let ext = fs.extents(&link, 1).expect("extents");
        let block = ext.first().expect("an extent").block * fs.sb.block_size;
        let mut img = base.clone();
        patch(&mut img, block, b"XXXX");
        assert!(matches!(
            open(&img).read_file("/boot/long", 64 << 20),
            Err(XfsError::Inode { .. })
        ));
    }

    #[test]
    fn xfs_corrupt_superblocks_are_errors() {
        let base = v5_image();
        let sb = |patches: &[(u64, &[u8])]| {
            let mut img = base.clone();
            for (at, bytes) in patches {
                patch(&mut img, *at, bytes);
            }
            Xfs::open(&img, &whole(&img)).map(|_| ())
        };
        let superblock = |r: Result<()>| matches!(r, Err(XfsError::Superblock(_)));
        let unsupported = |r: Result<()>| matches!(r, Err(XfsError::Unsupported(_)));
        assert!(matches!(
            sb(&[(0, b"XFSC")]),
            Err(XfsError::NoSuperblock(_))
        ));
        assert!(superblock(sb(&[(88, &0u32.to_be_bytes())])), "agcount 0");
        assert!(superblock(sb(&[
            (4, &(1u32 << 30).to_be_bytes()),
            (120, &[30])
        ])));
        assert!(
            superblock(sb(&[(4, &12345u32.to_be_bytes())])),
            "block size"
        );
        assert!(
            superblock(sb(&[(104, &300u16.to_be_bytes())])),
            "inode size"
        );
        assert!(
            superblock(sb(&[(102, &100u16.to_be_bytes())])),
            "sector size"
        );
        assert!(superblock(sb(&[(124, &[31])])), "agblklog");
        assert!(superblock(sb(&[(84, &10u32.to_be_bytes())])), "agblocks");
        assert!(superblock(sb(&[(8, &u64::MAX.to_be_bytes())])), "dblocks");
        assert!(superblock(sb(&[(192, &[9])])), "dirblklog");
        assert!(unsupported(sb(&[(101, &[0xA3])])), "version 3");
        assert!(unsupported(sb(&[(216, &0x8000_0000u32.to_be_bytes())])));
        assert!(unsupported(sb(&[(219, &[0x10 | 0xB])])), "needs repair");
        // A root inode outside the filesystem.
        let mut img = base.clone();
        patch(&mut img, 56, &u64::MAX.to_be_bytes());
        assert!(matches!(
            open(&img).read_file("/boot/vmlinuz", 100),
            Err(XfsError::Inode { .. })
        ));
        let empty: Vec<u8> = vec![0; 4096];
        assert!(matches!(
            Xfs::open(&empty, &whole(&empty)),
            Err(XfsError::NoSuperblock(_))
        ));
    }

    #[test]
    fn xfs_read_limit_is_reported() {
        let img = v5_image();
        let metered = Metered::new(img, 100);
        assert!(matches!(
            Xfs::open(&metered, &whole(img)),
            Err(XfsError::ReadLimit)
        ));
        let metered = Metered::new(img, 1 << 20);
        let fs = Xfs::open(&metered, &whole(img)).expect("open");
        assert_eq!(
            fs.read_file("/boot/small", 100).expect("small"),
            b"small file\n"
        );
        assert!(matches!(
            fs.read_file("/boot/vmlinuz", 64 << 20),
            Err(XfsError::ReadLimit)
        ));
    }

    #[test]
    fn xfs_v5_with_1k_blocks_and_64_bit_extent_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Proto::new(dir.path());
        p.dir("boot");
        p.file("vmlinuz", &kernel());
        p.link("long", &long_target());
        p.end();
        for (name, n) in DIRS.iter().take(3) {
            p.dir(name);
            for e in names('e', *n) {
                p.empty(&e);
            }
            p.end();
        }
        let mut img = mkfs(
            dir.path(),
            &p,
            32,
            &["-b", "size=1024", "-i", "nrext64=1", "-n", "size=8192"],
        );
        add_symlink_header(&mut img, "/boot/long");
        let fs = open(&img);
        assert_eq!((fs.sb.block_size, fs.sb.dir_blk_log), (1024, 3));
        let kernel_inode = fs.lookup("/boot/vmlinuz").expect("vmlinuz");
        assert_ne!(kernel_inode.flags2() & DIFLAG2_NREXT64, 0);
        assert!(fs.read_file("/boot/long", 64 << 20).expect("kernel") == kernel());
        for (name, n) in DIRS.iter().take(3) {
            let got = sorted(fs.read_dir(&format!("/{name}")).expect(name));
            assert_eq!(got, names('e', *n), "{name}");
        }
    }
}
