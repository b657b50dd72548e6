//! A read-only ext2/3/4 reader: enough to walk paths, list directories and read files.
//!
//! Every number it takes from the disk is checked before use: block numbers against the
//! filesystem's block count (which must fit in its partition), offsets with checked
//! arithmetic, directory records against their block, extent trees against their depth and a
//! count of entries visited. It never writes and never replays the journal.

use std::fmt;
use std::ops::ControlFlow;

use crate::bytes::{byte, le16, le32};
use crate::disk::{self, Disk, ReadError};
use crate::table::Partition;

/// The root directory's inode.
pub const ROOT_INO: u32 = 2;
/// Symbolic links followed in one lookup (Linux's limit).
pub const MAX_SYMLINKS: u32 = 40;
/// Longest path (and symlink target) taken.
pub const MAX_PATH: usize = 4096;
/// Longest path component.
pub const MAX_NAME: usize = 255;
/// Path components walked in one lookup, those of symlink targets included.
pub const MAX_COMPONENTS: usize = 4096;
/// Directory entries scanned in one directory search.
pub const MAX_DIR_ENTRIES: u64 = 1 << 20;
/// Entries listed by [`Ext4::read_dir`].
pub const MAX_LISTED: usize = 4096;
/// Extent (or block-map) entries visited while mapping one file.
pub const MAX_EXTENT_ENTRIES: u64 = 1 << 20;
/// Deepest extent tree taken (the kernel builds at most 5 levels).
pub const MAX_EXTENT_DEPTH: u16 = 5;

const SUPERBLOCK: u64 = 1024;
const MAGIC: u16 = 0xEF53;
const EXTENT_MAGIC: u16 = 0xF30A;
const XATTR_MAGIC: u32 = 0xEA02_0000;

const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_EA_INODE: u32 = 0x400;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const INCOMPAT_ENCRYPT: u32 = 0x10000;
const INCOMPAT_CASEFOLD: u32 = 0x20000;
/// Incompatible features this reader handles (or, for encryption, refuses per file).
/// Anything else (compression, an external journal device, dirdata) is refused whole.
const INCOMPAT_KNOWN: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;

const FL_ENCRYPT: u32 = 0x800;
const FL_EXTENTS: u32 = 0x80000;
const FL_INLINE_DATA: u32 = 0x1000_0000;

const I_BLOCK: usize = 0x28;
const I_BLOCK_LEN: usize = 60;

/// Why an ext4 filesystem, path or file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the read limit was reached")]
    ReadLimit,
    #[error("the partition lies outside the disk")]
    PartitionOutsideDisk,
    #[error("a read of {len} bytes at byte {offset} of the partition lies outside it")]
    OutsidePartition { offset: u64, len: usize },
    #[error("no ext2/3/4 superblock (magic {0:#06x}, not 0xef53)")]
    NoSuperblock(u16),
    #[error("superblock: {0}")]
    Superblock(String),
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("the filesystem's {fs} bytes do not fit in its partition of {part} bytes")]
    LargerThanPartition { fs: u128, part: u64 },
    #[error("inode {ino}: {why}")]
    Inode { ino: u32, why: String },
    #[error("directory inode {ino}: {why}")]
    Dir { ino: u32, why: String },
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: a component is not a directory")]
    NotADirectory { path: String },
    #[error("{path}: more than {MAX_SYMLINKS} symbolic links (a loop?)")]
    SymlinkLoop { path: String },
    #[error("{path}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("{path} is a {kind}, not a regular file")]
    NotAFile { path: String, kind: FileKind },
    #[error("{path} is {size} bytes, more than the limit of {max}")]
    TooLarge { path: String, size: u64, max: u64 },
}

type Result<T, E = Ext4Error> = std::result::Result<T, E>;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    /// A device, FIFO or socket (the `S_IFMT` bits of its mode).
    Other(u16),
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::Regular => f.write_str("regular file"),
            FileKind::Directory => f.write_str("directory"),
            FileKind::Symlink => f.write_str("symbolic link"),
            FileKind::Other(m) => write!(f, "special file (mode {m:#o})"),
        }
    }
}

/// One inode as read from its table.
#[derive(Debug, Clone)]
pub struct Inode {
    pub(crate) ino: u32,
    /// The whole on-disk inode (the superblock's inode size, at least 128 bytes).
    pub(crate) raw: Vec<u8>,
}

impl Inode {
    /// Its number.
    pub fn ino(&self) -> u32 {
        self.ino
    }

    /// What it is.
    pub fn kind(&self) -> FileKind {
        match le16(&self.raw, 0) & 0xF000 {
            0x8000 => FileKind::Regular,
            0x4000 => FileKind::Directory,
            0xA000 => FileKind::Symlink,
            m => FileKind::Other(m),
        }
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        u64::from(le32(&self.raw, 0x04)) | (u64::from(le32(&self.raw, 0x6C)) << 32)
    }

    pub(crate) fn flags(&self) -> u32 {
        le32(&self.raw, 0x20)
    }

    fn i_block(&self) -> &[u8] {
        self.raw
            .get(I_BLOCK..I_BLOCK + I_BLOCK_LEN)
            .unwrap_or_default()
    }

    /// 512-byte units allocated (huge_file's block units are not needed: only compared to 0).
    fn sectors(&self) -> u64 {
        u64::from(le32(&self.raw, 0x1C)) | (u64::from(le16(&self.raw, 0x74)) << 32)
    }

    fn file_acl(&self) -> u64 {
        u64::from(le32(&self.raw, 0x68)) | (u64::from(le16(&self.raw, 0x76)) << 32)
    }
}

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name (lossily UTF-8).
    pub name: String,
    /// Its inode.
    pub ino: u32,
}

/// A run of file blocks: `len` logical blocks from `logical` are at `phys` on disk, or read
/// as zeros (an uninitialized extent).
#[derive(Debug, Clone, Copy)]
struct Run {
    logical: u64,
    phys: u64,
    len: u64,
    zeros: bool,
}

type Visit<'f> = dyn FnMut(Run) -> Result<ControlFlow<()>> + 'f;

#[derive(Debug, Clone)]
struct Super {
    block_size: u64,
    blocks: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    inodes_per_group: u64,
    inodes: u64,
    inode_size: u64,
    desc_size: u64,
    groups: u64,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    first_meta_bg: u64,
    backup_bgs: [u64; 2],
}

/// A read-only ext2/3/4 filesystem inside one partition.
pub struct Ext4<'a> {
    disk: &'a dyn Disk,
    part: Partition,
    sb: Super,
}

impl fmt::Debug for Ext4<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ext4")
            .field("part", &self.part)
            .field("sb", &self.sb)
            .finish_non_exhaustive()
    }
}

fn superblock(why: impl Into<String>) -> Ext4Error {
    Ext4Error::Superblock(why.into())
}

fn inode_err(ino: u32, why: impl Into<String>) -> Ext4Error {
    Ext4Error::Inode {
        ino,
        why: why.into(),
    }
}

fn dir_err(ino: u32, why: impl Into<String>) -> Ext4Error {
    Ext4Error::Dir {
        ino,
        why: why.into(),
    }
}

/// `n` is 1 or a power of `base`.
fn is_power_of(mut n: u64, base: u64) -> bool {
    if n == 0 {
        return false;
    }
    while n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

impl<'a> Ext4<'a> {
    /// Reads and checks the superblock of the filesystem in `part`.
    pub fn open(disk: &'a dyn Disk, part: &Partition) -> Result<Self> {
        if part
            .start
            .checked_add(part.len)
            .is_none_or(|end| end > disk.len())
        {
            return Err(Ext4Error::PartitionOutsideDisk);
        }
        let mut fs = Ext4 {
            disk,
            part: part.clone(),
            sb: Super {
                block_size: 1024,
                blocks: 0,
                first_data_block: 0,
                blocks_per_group: 1,
                inodes_per_group: 1,
                inodes: 0,
                inode_size: 128,
                desc_size: 32,
                groups: 0,
                compat: 0,
                incompat: 0,
                ro_compat: 0,
                first_meta_bg: 0,
                backup_bgs: [0; 2],
            },
        };
        let mut raw = [0u8; 1024];
        fs.read(SUPERBLOCK, &mut raw)?;
        fs.sb = parse_super(&raw, part.len)?;
        Ok(fs)
    }

    /// The partition this filesystem is in.
    pub fn partition(&self) -> &Partition {
        &self.part
    }

    /// The filesystem's block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.sb.block_size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let outside = || Ext4Error::OutsidePartition { offset, len };
        let end = offset.checked_add(len as u64).ok_or_else(outside)?;
        if end > self.part.len {
            return Err(outside());
        }
        let abs = self.part.start.checked_add(offset).ok_or_else(outside)?;
        Ok(disk::read_at(self.disk, buf, abs).map_err(|_| Ext4Error::ReadLimit)??)
    }

    /// Reads `buf.len()` bytes from block `block` on (possibly spanning several blocks), all
    /// of which must be inside the filesystem.
    fn read_blocks(&self, ino: u32, block: u64, buf: &mut [u8]) -> Result<()> {
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
        self.read(block * bs, buf)
    }

    fn has_super(&self, group: u64) -> bool {
        let sb = &self.sb;
        if group == 0 {
            return true;
        }
        if sb.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return group == sb.backup_bgs[0] || group == sb.backup_bgs[1];
        }
        if group <= 1 || sb.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        !group.is_multiple_of(2)
            && (is_power_of(group, 3) || is_power_of(group, 5) || is_power_of(group, 7))
    }

    /// The first block of `group`'s inode table, from its group descriptor.
    fn inode_table(&self, ino: u32, group: u64) -> Result<u64> {
        let sb = &self.sb;
        let per_block = sb.block_size / sb.desc_size;
        let desc_block = group / per_block;
        let block = if sb.incompat & INCOMPAT_META_BG != 0 && desc_block >= sb.first_meta_bg {
            // meta_bg: each run of `per_block` groups keeps its descriptors in its first group.
            let first = desc_block * per_block;
            let mut skip = u64::from(self.has_super(first));
            if sb.block_size == 1024 && desc_block == 0 && sb.first_data_block == 0 {
                skip += 1;
            }
            first
                .checked_mul(sb.blocks_per_group)
                .and_then(|b| b.checked_add(sb.first_data_block + skip))
        } else {
            Some(sb.first_data_block + 1 + desc_block)
        }
        .ok_or_else(|| inode_err(ino, format!("group {group}'s descriptor is out of reach")))?;
        if group >= sb.groups || block >= sb.blocks {
            return Err(inode_err(
                ino,
                format!("group {group}'s descriptor is past the filesystem's end"),
            ));
        }
        let mut desc = vec![0u8; sb.desc_size.min(64) as usize];
        // block < blocks, and blocks * block_size fits the partition: no overflow.
        let offset = block * sb.block_size + (group % per_block) * sb.desc_size;
        self.read(offset, &mut desc)?;
        let mut table = u64::from(le32(&desc, 0x08));
        if sb.incompat & INCOMPAT_64BIT != 0 && sb.desc_size >= 64 {
            table |= u64::from(le32(&desc, 0x28)) << 32;
        }
        Ok(table)
    }

    /// Reads inode `ino`.
    pub fn inode(&self, ino: u32) -> Result<Inode> {
        let sb = &self.sb;
        if ino == 0 || u64::from(ino) > sb.inodes {
            return Err(inode_err(
                ino,
                format!("is not between 1 and the filesystem's {} inodes", sb.inodes),
            ));
        }
        let index = u64::from(ino - 1);
        let group = index / sb.inodes_per_group;
        let table = self.inode_table(ino, group)?;
        let offset = (index % sb.inodes_per_group) * sb.inode_size;
        let block = table.checked_add(offset / sb.block_size);
        if block.is_none_or(|b| b >= sb.blocks) {
            return Err(inode_err(
                ino,
                format!("its group's inode table (block {table}) is past the filesystem's end"),
            ));
        }
        let mut raw = vec![0u8; sb.inode_size as usize];
        let at = table
            .checked_mul(sb.block_size)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| inode_err(ino, "its inode table is out of reach"))?;
        self.read(at, &mut raw)?;
        Ok(Inode { ino, raw })
    }

    /// Maps the first `nblocks` logical blocks of `inode` to disk, calling `visit` for each
    /// run, in tree order (not necessarily logical order). Holes are not reported.
    fn map(&self, inode: &Inode, nblocks: u64, visit: &mut Visit<'_>) -> Result<()> {
        let mut budget = MAX_EXTENT_ENTRIES;
        if inode.flags() & FL_EXTENTS != 0 {
            let root = inode.i_block().to_vec();
            // A break is the visitor's own decision: nothing is left to do either way.
            let _: ControlFlow<()> =
                self.walk_extents(inode.ino, &root, None, nblocks, &mut budget, visit)?;
        } else {
            self.walk_block_map(inode, nblocks, &mut budget, visit)?;
        }
        Ok(())
    }

    /// Clips `run` to `nblocks`, checks it lies in the filesystem and hands it on.
    fn deliver(
        &self,
        ino: u32,
        mut run: Run,
        nblocks: u64,
        visit: &mut Visit<'_>,
    ) -> Result<ControlFlow<()>> {
        if run.len == 0 || run.logical >= nblocks {
            return Ok(ControlFlow::Continue(()));
        }
        run.len = run.len.min(nblocks - run.logical);
        if run
            .phys
            .checked_add(run.len)
            .is_none_or(|end| end > self.sb.blocks)
        {
            return Err(inode_err(
                ino,
                format!(
                    "maps blocks {}..{} past the filesystem's {} blocks",
                    run.phys,
                    run.phys.saturating_add(run.len),
                    self.sb.blocks
                ),
            ));
        }
        visit(run)
    }

    fn walk_extents(
        &self,
        ino: u32,
        node: &[u8],
        want_depth: Option<u16>,
        nblocks: u64,
        budget: &mut u64,
        visit: &mut Visit<'_>,
    ) -> Result<ControlFlow<()>> {
        let bad = |why: String| inode_err(ino, format!("extent tree: {why}"));
        if le16(node, 0) != EXTENT_MAGIC {
            return Err(bad(format!("bad node magic {:#06x}", le16(node, 0))));
        }
        let entries = usize::from(le16(node, 2));
        let depth = le16(node, 6);
        if depth > MAX_EXTENT_DEPTH {
            return Err(bad(format!("depth {depth}, more than {MAX_EXTENT_DEPTH}")));
        }
        if want_depth.is_some_and(|d| d != depth) {
            return Err(bad(format!(
                "a node of depth {depth} under one that wants {want_depth:?}"
            )));
        }
        if entries > (node.len().saturating_sub(12)) / 12 {
            return Err(bad(format!("{entries} entries do not fit in their node")));
        }
        let bs = self.sb.block_size as usize;
        for i in 0..entries {
            if *budget == 0 {
                return Err(bad(format!("more than {MAX_EXTENT_ENTRIES} entries")));
            }
            *budget -= 1;
            let e = node.get(12 + 12 * i..24 + 12 * i).unwrap_or_default();
            let logical = u64::from(le32(e, 0));
            if logical >= nblocks {
                continue;
            }
            let flow = if depth == 0 {
                let raw_len = u64::from(le16(e, 4));
                let (len, zeros) = if raw_len > 32768 {
                    (raw_len - 32768, true)
                } else {
                    (raw_len, false)
                };
                let phys = (u64::from(le16(e, 6)) << 32) | u64::from(le32(e, 8));
                let run = Run {
                    logical,
                    phys,
                    len,
                    zeros,
                };
                self.deliver(ino, run, nblocks, visit)?
            } else {
                let child = (u64::from(le16(e, 8)) << 32) | u64::from(le32(e, 4));
                let mut buf = vec![0u8; bs];
                self.read_blocks(ino, child, &mut buf)?;
                self.walk_extents(ino, &buf, Some(depth - 1), nblocks, budget, visit)?
            };
            if flow.is_break() {
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// ext2/3 block maps: 12 direct pointers, then single, double and triple indirect.
    fn walk_block_map(
        &self,
        inode: &Inode,
        nblocks: u64,
        budget: &mut u64,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        let ino = inode.ino;
        let ib = inode.i_block().to_vec();
        let mut pending: Option<Run> = None;
        // Adjacent single blocks are merged so a file is read in few large reads.
        let mut push = |run: Run| -> Result<ControlFlow<()>> {
            if let Some(p) = pending.as_mut()
                && p.logical + p.len == run.logical
                && p.phys + p.len == run.phys
            {
                p.len += run.len;
                return Ok(ControlFlow::Continue(()));
            }
            if let Some(p) = pending.replace(run) {
                return self.deliver(ino, p, nblocks, visit);
            }
            Ok(ControlFlow::Continue(()))
        };
        for i in 0..12u64 {
            if i >= nblocks {
                break;
            }
            let phys = u64::from(le32(&ib, 4 * i as usize));
            if phys != 0 && push(block_run(i, phys))?.is_break() {
                return Ok(());
            }
        }
        let per = self.sb.block_size / 4;
        let mut base = 12u64;
        for level in 1..=3u32 {
            if base >= nblocks {
                break;
            }
            let ptr = u64::from(le32(&ib, 4 * (11 + level as usize)));
            if ptr != 0
                && self
                    .walk_indirect(ino, ptr, level, base, nblocks, budget, &mut push)?
                    .is_break()
            {
                return Ok(());
            }
            base = base.saturating_add(per.saturating_pow(level));
        }
        if let Some(p) = pending {
            let _: ControlFlow<()> = self.deliver(ino, p, nblocks, visit)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_indirect(
        &self,
        ino: u32,
        block: u64,
        level: u32,
        base: u64,
        nblocks: u64,
        budget: &mut u64,
        push: &mut dyn FnMut(Run) -> Result<ControlFlow<()>>,
    ) -> Result<ControlFlow<()>> {
        let per = self.sb.block_size / 4;
        let span = per.saturating_pow(level - 1);
        let mut buf = vec![0u8; self.sb.block_size as usize];
        self.read_blocks(ino, block, &mut buf)?;
        for i in 0..per {
            let logical = base.saturating_add(i.saturating_mul(span));
            if logical >= nblocks {
                break;
            }
            if *budget == 0 {
                return Err(inode_err(
                    ino,
                    format!("block map: more than {MAX_EXTENT_ENTRIES} pointers"),
                ));
            }
            *budget -= 1;
            let ptr = u64::from(le32(&buf, 4 * i as usize));
            if ptr == 0 {
                continue;
            }
            let flow = if level == 1 {
                push(block_run(logical, ptr))?
            } else {
                self.walk_indirect(ino, ptr, level - 1, logical, nblocks, budget, push)?
            };
            if flow.is_break() {
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The value of the in-inode `system.data` extended attribute (inline data past the
    /// first 60 bytes), if any.
    fn inline_tail<'i>(&self, inode: &'i Inode) -> Result<&'i [u8]> {
        let raw = &inode.raw;
        let ino = inode.ino;
        if raw.len() <= 128 {
            return Ok(&[]);
        }
        let start = 128 + usize::from(le16(raw, 0x80));
        if start + 4 > raw.len() || le32(raw, start) != XATTR_MAGIC {
            return Ok(&[]);
        }
        let first = start + 4;
        let mut pos = first;
        while pos + 4 <= raw.len() && le32(raw, pos) != 0 {
            if pos + 16 > raw.len() {
                return Err(inode_err(ino, "an extended attribute runs past the inode"));
            }
            let name_len = usize::from(byte(raw, pos));
            let index = byte(raw, pos + 1);
            let value_off = usize::from(le16(raw, pos + 2));
            let value_inum = le32(raw, pos + 4);
            let value_size = le32(raw, pos + 8) as usize;
            let name = raw
                .get(pos + 16..pos + 16 + name_len)
                .ok_or_else(|| inode_err(ino, "an extended attribute name runs past the inode"))?;
            if index == 7 && name == b"data" {
                if value_inum != 0 {
                    return Err(Ext4Error::Unsupported(format!(
                        "inode {ino}: inline data kept in an extended-attribute inode"
                    )));
                }
                return raw
                    .get(first + value_off..first + value_off + value_size)
                    .ok_or_else(|| inode_err(ino, "its inline data runs past the inode"));
            }
            pos += (16 + name_len + 3) & !3;
        }
        Ok(&[])
    }

    /// The bytes of an inline-data inode.
    fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>> {
        let size = inode.size();
        let ib = inode.i_block();
        let head = ib
            .get(..(size.min(I_BLOCK_LEN as u64) as usize))
            .unwrap_or(ib);
        let mut out = head.to_vec();
        if size > I_BLOCK_LEN as u64 {
            let need = (size - I_BLOCK_LEN as u64) as usize;
            let tail = self.inline_tail(inode)?;
            let tail = tail.get(..need).ok_or_else(|| {
                inode_err(
                    inode.ino,
                    format!("its size is {size} but its inline data holds less"),
                )
            })?;
            out.extend_from_slice(tail);
        }
        Ok(out)
    }

    /// The first `size` bytes of `inode`'s data: holes and uninitialized extents read as
    /// zeros. The caller bounds `size`.
    fn data(&self, inode: &Inode, size: u64) -> Result<Vec<u8>> {
        if inode.flags() & FL_ENCRYPT != 0 {
            return Err(Ext4Error::Unsupported(format!(
                "inode {}: an encrypted file",
                inode.ino
            )));
        }
        if inode.flags() & FL_INLINE_DATA != 0 {
            return self.inline_data(inode);
        }
        let len = usize::try_from(size)
            .map_err(|_| inode_err(inode.ino, format!("size {size} does not fit in memory")))?;
        let mut out = vec![0u8; len];
        let bs = self.sb.block_size;
        let nblocks = size.div_ceil(bs);
        let ino = inode.ino;
        self.map(inode, nblocks, &mut |run| {
            if run.zeros {
                return Ok(ControlFlow::Continue(()));
            }
            // run.logical < nblocks and run.len <= nblocks - logical (deliver clips), so these
            // stay within size rounded up to a block; the last block is cut to size.
            let start = run.logical * bs;
            let end = ((run.logical + run.len) * bs).min(size);
            let dst = out
                .get_mut(start as usize..end as usize)
                .ok_or_else(|| inode_err(ino, "an extent lies outside the file"))?;
            self.read_blocks(ino, run.phys, dst)?;
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// Calls `f` with each live entry (name, inode) of directory `dir`, `.` and `..`
    /// included, until it breaks.
    fn scan_dir(
        &self,
        dir: &Inode,
        f: &mut dyn FnMut(&[u8], u32) -> ControlFlow<()>,
    ) -> Result<()> {
        let ino = dir.ino;
        let mut count = 0u64;
        if dir.flags() & FL_INLINE_DATA != 0 {
            let ib = dir.i_block();
            let parent = le32(ib, 0);
            if f(b".", ino).is_break() || f(b"..", parent).is_break() {
                return Ok(());
            }
            let first = ib.get(4..).unwrap_or_default();
            if self.scan_records(ino, first, &mut count, f)?.is_break() {
                return Ok(());
            }
            let tail = self.inline_tail(dir)?;
            let _: ControlFlow<()> = self.scan_records(ino, tail, &mut count, f)?;
            return Ok(());
        }
        let bs = self.sb.block_size;
        let nblocks = dir.size().div_ceil(bs);
        let mut buf = vec![0u8; bs as usize];
        self.map(dir, nblocks, &mut |run| {
            if run.zeros {
                return Ok(ControlFlow::Continue(()));
            }
            for k in 0..run.len {
                self.read_blocks(ino, run.phys + k, &mut buf)?;
                if self.scan_records(ino, &buf, &mut count, f)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok(ControlFlow::Continue(()))
        })
    }

    /// Walks the directory records of one block (or inline region). htree index blocks look
    /// like one empty record covering the block, so they are skipped as such.
    fn scan_records(
        &self,
        ino: u32,
        block: &[u8],
        count: &mut u64,
        f: &mut dyn FnMut(&[u8], u32) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        let filetype = self.sb.incompat & INCOMPAT_FILETYPE != 0;
        let mut pos = 0usize;
        while pos < block.len() {
            let hdr = block
                .get(pos..pos + 8)
                .ok_or_else(|| dir_err(ino, "has a record header past its block"))?;
            let entry = le32(hdr, 0);
            let raw_rec = usize::from(le16(hdr, 4));
            let rec = if block.len() < 65536 {
                raw_rec
            } else if raw_rec == 0 || raw_rec == 65535 {
                65536
            } else {
                (raw_rec & 65532) | ((raw_rec & 3) << 16)
            };
            let name_len = if filetype {
                usize::from(byte(hdr, 6))
            } else {
                usize::from(le16(hdr, 6))
            };
            if rec < 8 || !rec.is_multiple_of(4) || pos + rec > block.len() {
                return Err(dir_err(ino, "has a record past its block"));
            }
            if 8 + name_len > rec {
                return Err(dir_err(ino, "has a name longer than its record"));
            }
            if entry != 0 {
                *count += 1;
                if *count > MAX_DIR_ENTRIES {
                    return Err(dir_err(
                        ino,
                        format!("has more than {MAX_DIR_ENTRIES} entries"),
                    ));
                }
                let name = block.get(pos + 8..pos + 8 + name_len).unwrap_or_default();
                if f(name, entry).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            pos += rec;
        }
        Ok(ControlFlow::Continue(()))
    }

    fn find_in_dir(&self, dir: &Inode, name: &[u8]) -> Result<Option<u32>> {
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
        let size = link.size();
        if size == 0 || size > MAX_PATH as u64 {
            return Err(inode_err(
                link.ino,
                format!("a symbolic link of {size} bytes (1..={MAX_PATH} taken)"),
            ));
        }
        let ea_sectors = if link.file_acl() != 0 {
            self.sb.block_size / 512
        } else {
            0
        };
        // The kernel's test: a symlink with no data blocks keeps its target in i_block.
        if link.flags() & FL_INLINE_DATA == 0 && link.sectors() == ea_sectors {
            let ib = link.i_block();
            return ib
                .get(..size as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| inode_err(link.ino, "a fast symbolic link longer than i_block"));
        }
        self.data(link, size)
    }

    /// The inode at `path`, resolved from the root (a relative path is taken as absolute),
    /// following symbolic links, the last component's too. Absolute link targets resolve from
    /// this filesystem's root, relative ones from the link's directory.
    pub fn lookup(&self, path: &str) -> Result<Inode> {
        let err_path = || path.to_owned();
        if path.len() > MAX_PATH {
            return Err(Ext4Error::BadPath {
                path: path.chars().take(64).collect::<String>() + "...",
                why: "longer than 4096 bytes",
            });
        }
        let mut todo: Vec<Vec<u8>> = components(path.as_bytes());
        todo.reverse();
        let root = self.inode(ROOT_INO)?;
        let mut cur = root.clone();
        let mut follows = 0u32;
        let mut steps = 0usize;
        while let Some(name) = todo.pop() {
            steps += 1;
            if steps > MAX_COMPONENTS {
                return Err(Ext4Error::BadPath {
                    path: err_path(),
                    why: "has too many components once its symbolic links are expanded",
                });
            }
            if name.len() > MAX_NAME {
                return Err(Ext4Error::BadPath {
                    path: err_path(),
                    why: "has a component longer than 255 bytes",
                });
            }
            if cur.kind() != FileKind::Directory {
                return Err(Ext4Error::NotADirectory { path: err_path() });
            }
            let child = self
                .find_in_dir(&cur, &name)?
                .ok_or_else(|| Ext4Error::NotFound { path: err_path() })?;
            let inode = self.inode(child)?;
            if inode.kind() == FileKind::Symlink {
                follows += 1;
                if follows > MAX_SYMLINKS {
                    return Err(Ext4Error::SymlinkLoop { path: err_path() });
                }
                let target = self.symlink_target(&inode)?;
                if target.first() == Some(&b'/') {
                    cur = root.clone();
                }
                let mut more = components(&target);
                more.reverse();
                todo.extend(more);
                if todo.len() > MAX_COMPONENTS {
                    return Err(Ext4Error::BadPath {
                        path: err_path(),
                        why: "has too many components once its symbolic links are expanded",
                    });
                }
                continue;
            }
            cur = inode;
        }
        Ok(cur)
    }

    /// The contents of the regular file at `path` (symlinks followed), refused when larger
    /// than `max` bytes.
    pub fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let inode = self.lookup(path)?;
        self.read_inode(&inode, path, max)
    }

    /// The contents of `inode`, a regular file, refused when larger than `max` bytes; `path`
    /// names it in errors.
    pub fn read_inode(&self, inode: &Inode, path: &str, max: u64) -> Result<Vec<u8>> {
        let kind = inode.kind();
        if kind != FileKind::Regular {
            return Err(Ext4Error::NotAFile {
                path: path.to_owned(),
                kind,
            });
        }
        let size = inode.size();
        if size > max {
            return Err(Ext4Error::TooLarge {
                path: path.to_owned(),
                size,
                max,
            });
        }
        self.data(inode, size)
    }

    /// The entries of the directory at `path`, without `.` and `..`; more than
    /// [`MAX_LISTED`] is an error.
    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let dir = self.lookup(path)?;
        if dir.kind() != FileKind::Directory {
            return Err(Ext4Error::NotADirectory {
                path: path.to_owned(),
            });
        }
        let mut out = Vec::new();
        let mut too_many = false;
        self.scan_dir(&dir, &mut |name, ino| {
            if name == b"." || name == b".." {
                return ControlFlow::Continue(());
            }
            if out.len() >= MAX_LISTED {
                too_many = true;
                return ControlFlow::Break(());
            }
            out.push(DirEntry {
                name: String::from_utf8_lossy(name).into_owned(),
                ino,
            });
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

fn block_run(logical: u64, phys: u64) -> Run {
    Run {
        logical,
        phys,
        len: 1,
        zeros: false,
    }
}

/// Path components, without empty ones and `.`.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

fn parse_super(raw: &[u8], part_len: u64) -> Result<Super> {
    let magic = le16(raw, 0x38);
    if magic != MAGIC {
        return Err(Ext4Error::NoSuperblock(magic));
    }
    let log = le32(raw, 0x18);
    if log > 6 {
        return Err(superblock(format!(
            "block size 2^(10+{log}) is not between 1 KiB and 64 KiB"
        )));
    }
    let block_size = 1024u64 << log;
    let incompat = le32(raw, 0x60);
    let unknown = incompat & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(Ext4Error::Unsupported(format!(
            "incompatible feature flags {unknown:#x}"
        )));
    }
    let is64 = incompat & INCOMPAT_64BIT != 0;
    let mut blocks = u64::from(le32(raw, 0x04));
    if is64 {
        blocks |= u64::from(le32(raw, 0x150)) << 32;
    }
    let first_data_block = u64::from(le32(raw, 0x14));
    if first_data_block >= blocks {
        return Err(superblock(format!(
            "first data block {first_data_block} is not below the block count {blocks}"
        )));
    }
    let blocks_per_group = u64::from(le32(raw, 0x20));
    if blocks_per_group == 0 {
        return Err(superblock("0 blocks per group"));
    }
    let inodes_per_group = u64::from(le32(raw, 0x28));
    if inodes_per_group == 0 || inodes_per_group > 8 * block_size {
        return Err(superblock(format!(
            "{inodes_per_group} inodes per group (1..={} taken)",
            8 * block_size
        )));
    }
    let inodes = u64::from(le32(raw, 0x00));
    let inode_size = if le32(raw, 0x4C) == 0 {
        128
    } else {
        u64::from(le16(raw, 0x58))
    };
    if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
        return Err(superblock(format!(
            "inode size {inode_size} is not a power of two between 128 and the block size"
        )));
    }
    let desc_size = if is64 {
        let d = u64::from(le16(raw, 0xFE));
        if !(64..=1024).contains(&d) || !d.is_power_of_two() {
            return Err(superblock(format!(
                "group descriptor size {d} is not a power of two between 64 and 1024"
            )));
        }
        d
    } else {
        32
    };
    let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
    if groups
        .checked_mul(inodes_per_group)
        .is_none_or(|n| n < inodes)
    {
        return Err(superblock(format!(
            "{inodes} inodes do not fit in {groups} groups of {inodes_per_group}"
        )));
    }
    let fs_bytes = u128::from(blocks) * u128::from(block_size);
    if fs_bytes > u128::from(part_len) {
        return Err(Ext4Error::LargerThanPartition {
            fs: fs_bytes,
            part: part_len,
        });
    }
    Ok(Super {
        block_size,
        blocks,
        first_data_block,
        blocks_per_group,
        inodes_per_group,
        inodes,
        inode_size,
        desc_size,
        groups,
        compat: le32(raw, 0x5C),
        incompat,
        ro_compat: le32(raw, 0x64),
        first_meta_bg: u64::from(le32(raw, 0x104)),
        backup_bgs: [u64::from(le32(raw, 0x24C)), u64::from(le32(raw, 0x250))],
    })
}
