//! The kernel a guest's own boot disk says to boot, found as pvgrub finds it: for a kvm-brand
//! microVM whose disk is a distribution cloud image (Debian genericcloud, Fedora Cloud...),
//! hull boots the kernel, initrd and command line the disk's boot config names instead of
//! one of its own. This crate is the parser only: bytes in, [`Found`] out, no mounting.
//!
//! What is read, in order ([`find_boot`]):
//! 1. The partition table ([`partitions`]): GPT (primary header at LBA 1 of 512-byte or
//!    4 KiB sectors, header and entry-array CRC32 checked, at most [`MAX_GPT_ENTRIES`] entries
//!    of 128..=1024 bytes), else the MBR's four primary entries (extended partitions are
//!    skipped), else the whole disk as one bare filesystem. Every partition must lie inside
//!    the disk.
//! 2. Each partition's first bytes, to tell ext2/3/4, FAT and xfs from the rest (btrfs, swap,
//!    LVM, LUKS, BIOS boot, empty). Those three are read, in partition order; one that fails
//!    to open is skipped, and its error returned only when no other partition holds a config.
//!    - ext2/3/4 ([`Ext4`]): extents (uninitialized ones read as zeros), ext2/3 block maps,
//!      inline data, fast symlinks, linear and htree directories (read linearly), 32- and
//!      64-bit group descriptors, `meta_bg`. Encrypted files are refused; a journal needing
//!      recovery is not replayed (what is read is what is on disk); metadata checksums are
//!      not verified (a hostile image can forge them, and no bound depends on them).
//!    - FAT12/16/32 ([`Fat`]): an ESP or XBOOTLDR partition (systemd-boot's loader entries
//!      and kernels, a grub.cfg under `/EFI`); names compare case-insensitively, long (VFAT)
//!      names and 8.3 names alike; cluster chains are walked with loop detection.
//!    - xfs ([`Xfs`]): a separate /boot as RHEL, Rocky and Alma cloud images have, symbolic
//!      links followed, version 4 and 5; the log is not replayed.
//!
//!    btrfs, LVM and LUKS are recognised and named in the error, not read.
//! 3. On each of those filesystems in partition order: `/boot/grub/grub.cfg`,
//!    `/grub/grub.cfg` (a separate /boot), `/boot/grub2/grub.cfg`, `/grub2/grub.cfg`, each
//!    with the `grubenv` beside it; then `/boot/loader/entries/*.conf` and
//!    `/loader/entries/*.conf`. The first config found decides; its errors are returned, not
//!    skipped. A grub.cfg with no menuentry (Fedora's, which runs `blscfg`) hands over to the
//!    loader entries.
//! 4. The kernel and initrd paths the chosen entry names: first on the filesystem that held
//!    the config (also under `/boot` when the config was under `/boot`, since GRUB's `root`
//!    is then the root filesystem), then on the other filesystems in partition order, as
//!    written and under `/boot`. Symbolic links are followed inside each filesystem (ext4,
//!    xfs).
//! 5. Beside a kernel named `vmlinuz-<ver>` (or `vmlinux-`, `bzImage-`), on the filesystem it
//!    was read from: `config-<ver>`, its build config, as Debian, Ubuntu and Fedora ship it
//!    ([`Found::kernel_config`], at most [`MAX_KERNEL_CONFIG`] bytes, advisory).
//!
//! Documented choices in reading grub.cfg ([`grub_default_entry`]): the script is tokenized
//! with GRUB's quoting rules (`'...'`, `"..."`, `\`, comments) but not run. `if`/`else` are
//! not evaluated: a variable (and `default`) takes the last non-empty value assigned at top
//! level, seeded from grubenv; `${next_entry}` (a one-shot choice) is ignored; unset
//! variables expand to nothing (so `$vt_handoff` disappears, as it would in GRUB with it
//! unset). `default` may be an index (submenus count as one entry), a title, an `--id`, or a
//! `>`-separated path into submenus (`1>2`, or ids); `saved` and `${saved_entry}` use
//! grubenv's `saved_entry`. A value that names nothing falls back to the first entry (GRUB
//! does the same); a submenu chosen without a further part boots its first entry. Within the
//! entry the first `linux`/`linux16`/`linuxefi` line gives the kernel and the command line
//! (arguments joined by spaces), the first `initrd` line all initrds, in order: [`find_boot`]
//! concatenates them, each at a 4-byte boundary, as GRUB loads them. GRUB device prefixes
//! (`(hd0,gpt1)`, `($root)`) are dropped from paths. Loader entries: see
//! [`bls_default_entry`] (grubenv's `saved_entry`, else the highest `version`).
//!
//! A hostile image gets an error, never a panic, a read outside the disk or unbounded work:
//! all reads of one [`find_boot`] call together stop at [`Limits::max_read`]; a kernel above
//! [`Limits::max_file`] is refused, and so are initrds adding up to more; configs above
//! [`MAX_CONFIG`] or with a line above [`MAX_LINE`], directories above [`MAX_DIR_ENTRIES`]
//! entries scanned, extent trees deeper than [`MAX_EXTENT_DEPTH`] or with more than
//! [`MAX_EXTENT_ENTRIES`] entries, paths above [`MAX_PATH`] bytes and more than
//! [`MAX_SYMLINKS`] symbolic links in one lookup are errors, as are grub.cfg files with more
//! than [`MAX_WORDS`] words or variables expanding to more than [`MAX_EXPANDED`] bytes.
//! FAT cluster chains stop at a cluster seen before (a loop) and at the filesystem's cluster
//! count. The only recursion, over ext4 extent trees and indirect blocks and xfs block-map
//! btrees, is bounded by their depth.
#![forbid(unsafe_code)]

mod bls;
mod bytes;
mod crc;
mod disk;
mod ext4;
mod fat;
mod grub;
mod table;
mod xfs;

#[cfg(test)]
mod tests;

use std::io;

pub use bls::{
    MAX_ENTRIES as MAX_LOADER_ENTRIES, MAX_ENTRY as MAX_LOADER_ENTRY, bls_default_entry,
};
pub use disk::{Disk, ReadError};
pub use ext4::{
    DirEntry, Ext4, Ext4Error, FileKind, Inode, MAX_COMPONENTS, MAX_DIR_ENTRIES, MAX_EXTENT_DEPTH,
    MAX_EXTENT_ENTRIES, MAX_LISTED, MAX_NAME, MAX_PATH, MAX_SYMLINKS, ROOT_INO,
};
pub use fat::{Fat, FatError};
pub use grub::{
    BootEntry, ConfigError, MAX_CONFIG, MAX_EXPANDED, MAX_LINE, MAX_NESTING, MAX_WORDS,
    grub_default_entry,
};
pub use table::{MAX_GPT_ENTRIES, Partition, TableError, partitions};
pub use xfs::{Xfs, XfsError};

use disk::{Metered, is_read_limit};

/// Largest grubenv file read (GRUB writes 1 KiB).
pub const MAX_GRUBENV: u64 = 64 << 10;
/// Largest kernel build config read ([`Found::kernel_config`]); a larger one is ignored.
pub const MAX_KERNEL_CONFIG: u64 = 1 << 20;

const GRUB_DIRS: [&str; 4] = ["/boot/grub", "/grub", "/boot/grub2", "/grub2"];
const BLS_DIRS: [&str; 2] = ["/boot/loader/entries", "/loader/entries"];
/// GPT type of a BIOS boot partition (21686148-6449-6E6F-744E-656564454649), as stored.
const BIOS_BOOT_GUID: [u8; 16] = *b"Hah!IdontNeedEFI";

/// Bounds on one [`find_boot`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from the disk in all, metadata included.
    pub max_read: u64,
    /// Largest kernel, and largest sum of the initrds.
    pub max_file: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_read: 1 << 30,
            max_file: 256 << 20,
        }
    }
}

/// What a boot disk says to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The partition whose filesystem held the config ([`Partition::index`]).
    pub partition: u32,
    /// The config's path on that filesystem (a grub.cfg, or the chosen loader entry).
    pub config: String,
    /// The chosen entry; its `options` are the kernel command line.
    pub entry: BootEntry,
    /// The partition the kernel was read from.
    pub kernel_partition: u32,
    /// The kernel image.
    pub kernel: Vec<u8>,
    /// The kernel's build config (`config-<ver>` beside `vmlinuz-<ver>`, `vmlinux-<ver>` or
    /// `bzImage-<ver>`, on the filesystem the kernel was read from), if there is one of at
    /// most [`MAX_KERNEL_CONFIG`] bytes. Advisory: a caller may refuse a kernel built
    /// without what it needs (`CONFIG_VIRTIO_MMIO=y`).
    pub kernel_config: Option<Vec<u8>>,
    /// The initrds, concatenated (each at a 4-byte boundary), if the entry names any.
    pub initrd: Option<Vec<u8>>,
}

/// Why no kernel was found.
#[derive(Debug, thiserror::Error)]
pub enum BootDiskError {
    #[error("cannot use the partition table")]
    Table(#[source] TableError),
    #[error("cannot read {partition}")]
    Read {
        partition: String,
        #[source]
        source: io::Error,
    },
    #[error("{fs} on {partition}")]
    Fs {
        /// "ext4", "FAT" or "xfs".
        fs: &'static str,
        partition: String,
        #[source]
        source: FsError,
    },
    #[error("{config} on {partition}")]
    Config {
        partition: String,
        config: String,
        #[source]
        source: ConfigError,
    },
    #[error(
        "no /boot/grub/grub.cfg or loader entries on any ext4, FAT or xfs partition (found: {found}){note}"
    )]
    NoConfig { found: String, note: String },
    #[error("the {what} {path} named by {config} is on no partition hull reads (ext4, FAT, xfs)")]
    Missing {
        what: &'static str,
        path: String,
        config: String,
    },
    #[error("stopped after reading {0} bytes, the limit for one boot disk")]
    ReadLimit(u64),
}

/// What a partition holds, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ext4,
    Fat,
    Xfs,
    Btrfs,
    Swap,
    Lvm,
    Luks,
    BiosBoot,
    Empty,
    Unknown,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ext4 => "ext4",
            Kind::Fat => "FAT",
            Kind::Xfs => "xfs",
            Kind::Btrfs => "btrfs",
            Kind::Swap => "swap",
            Kind::Lvm => "LVM",
            Kind::Luks => "LUKS",
            Kind::BiosBoot => "BIOS boot",
            Kind::Empty => "empty",
            Kind::Unknown => "unknown",
        }
    }
}

fn read_error(part: &Partition, source: io::Error, limits: &Limits) -> BootDiskError {
    if is_read_limit(&source) {
        BootDiskError::ReadLimit(limits.max_read)
    } else {
        BootDiskError::Read {
            partition: part.to_string(),
            source,
        }
    }
}

/// Why a filesystem hull reads could not be read: the reader's own error.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// From the ext2/3/4 reader.
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    /// From the FAT reader.
    #[error(transparent)]
    Fat(#[from] FatError),
    /// From the xfs reader.
    #[error(transparent)]
    Xfs(#[from] XfsError),
}

/// What an [`FsError`] means to the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing at the path, or a component before the last is no directory.
    Absent,
    /// The path names something other than a regular file (a directory...).
    NotAFile,
    /// The file is larger than the limit asked for.
    TooLarge,
    /// The read allowance of this call is spent.
    ReadLimit,
    /// Anything else: corruption, unsupported features, bad paths.
    Other,
}

impl FsError {
    fn failure(&self) -> Failure {
        match self {
            FsError::Ext4(Ext4Error::NotFound { .. } | Ext4Error::NotADirectory { .. })
            | FsError::Fat(FatError::NotFound { .. } | FatError::NotADirectory { .. })
            | FsError::Xfs(XfsError::NotFound { .. } | XfsError::NotADirectory { .. }) => {
                Failure::Absent
            }
            FsError::Ext4(Ext4Error::NotAFile { .. })
            | FsError::Fat(FatError::NotAFile { .. })
            | FsError::Xfs(XfsError::NotAFile { .. }) => Failure::NotAFile,
            FsError::Ext4(Ext4Error::TooLarge { .. })
            | FsError::Fat(FatError::TooLarge { .. })
            | FsError::Xfs(XfsError::TooLarge { .. }) => Failure::TooLarge,
            FsError::Ext4(Ext4Error::ReadLimit)
            | FsError::Fat(FatError::ReadLimit)
            | FsError::Xfs(XfsError::ReadLimit) => Failure::ReadLimit,
            _ => Failure::Other,
        }
    }
}

/// One filesystem hull reads, opened on its partition.
enum Fs<'a> {
    Ext4(Ext4<'a>),
    Fat(Fat<'a>),
    Xfs(Xfs<'a>),
}

impl<'a> Fs<'a> {
    /// The filesystem of a partition `probe` found to be `kind`, or `None` for a kind hull
    /// does not read.
    fn open(kind: Kind, disk: &'a dyn Disk, part: &Partition) -> Option<Result<Fs<'a>, FsError>> {
        Some(match kind {
            Kind::Ext4 => Ext4::open(disk, part).map(Fs::Ext4).map_err(FsError::from),
            Kind::Fat => Fat::open(disk, part).map(Fs::Fat).map_err(FsError::from),
            Kind::Xfs => Xfs::open(disk, part).map(Fs::Xfs).map_err(FsError::from),
            _ => return None,
        })
    }

    fn partition(&self) -> &Partition {
        match self {
            Fs::Ext4(fs) => fs.partition(),
            Fs::Fat(fs) => fs.partition(),
            Fs::Xfs(fs) => fs.partition(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Fs::Ext4(_) => Kind::Ext4.name(),
            Fs::Fat(_) => Kind::Fat.name(),
            Fs::Xfs(_) => Kind::Xfs.name(),
        }
    }

    /// The regular file at `path` (symbolic links followed where the filesystem has them),
    /// at most `max` bytes.
    fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, FsError> {
        Ok(match self {
            Fs::Ext4(fs) => fs.read_file(path, max)?,
            Fs::Fat(fs) => fs.read_file(path, max)?,
            Fs::Xfs(fs) => fs.read_file(path, max)?,
        })
    }

    /// The names in the directory at `path`, without `.` and `..`.
    fn read_dir(&self, path: &str) -> Result<Vec<String>, FsError> {
        Ok(match self {
            Fs::Ext4(fs) => fs.read_dir(path)?.into_iter().map(|e| e.name).collect(),
            Fs::Fat(fs) => fs.read_dir(path)?,
            Fs::Xfs(fs) => fs.read_dir(path)?,
        })
    }

    fn error(&self, source: FsError, limits: &Limits) -> BootDiskError {
        fs_error(self.name(), self.partition(), source, limits)
    }

    /// The regular file at `path`, or `None` when nothing is there; anything else there
    /// (a directory) is an error.
    fn read(
        &self,
        path: &str,
        max: u64,
        limits: &Limits,
    ) -> Result<Option<Vec<u8>>, BootDiskError> {
        match self.read_file(path, max) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.failure() == Failure::Absent => Ok(None),
            Err(e) => Err(self.error(e, limits)),
        }
    }

    /// The regular file at `path`, or `None` when there is nothing (or no regular file)
    /// there.
    fn read_optional(
        &self,
        path: &str,
        max: u64,
        limits: &Limits,
    ) -> Result<Option<Vec<u8>>, BootDiskError> {
        match self.read_file(path, max) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if matches!(e.failure(), Failure::Absent | Failure::NotAFile) => Ok(None),
            Err(e) => Err(self.error(e, limits)),
        }
    }

    /// The names in the directory at `path`, or `None` when no directory is there.
    fn list(&self, path: &str, limits: &Limits) -> Result<Option<Vec<String>>, BootDiskError> {
        match self.read_dir(path) {
            Ok(names) => Ok(Some(names)),
            Err(e) if e.failure() == Failure::Absent => Ok(None),
            Err(e) => Err(self.error(e, limits)),
        }
    }
}

fn fs_error(fs: &'static str, part: &Partition, source: FsError, limits: &Limits) -> BootDiskError {
    if source.failure() == Failure::ReadLimit {
        BootDiskError::ReadLimit(limits.max_read)
    } else {
        BootDiskError::Fs {
            fs,
            partition: part.to_string(),
            source,
        }
    }
}

fn probe(disk: &dyn Disk, part: &Partition, limits: &Limits) -> Result<Kind, BootDiskError> {
    if part.type_guid == Some(BIOS_BOOT_GUID) {
        return Ok(Kind::BiosBoot);
    }
    let mut head = vec![0u8; part.len.min(4096) as usize];
    disk.read_at(&mut head, part.start)
        .map_err(|e| read_error(part, e, limits))?;
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let kind = if at(0x438, &[0x53, 0xEF]) {
        Kind::Ext4
    } else if at(0, b"XFSB") {
        Kind::Xfs
    } else if at(0, b"LUKS\xba\xbe") {
        Kind::Luks
    } else if at(510, &[0x55, 0xAA]) && (at(54, b"FAT") || at(82, b"FAT32")) {
        Kind::Fat
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        Kind::Swap
    } else if at(512, b"LABELONE") {
        Kind::Lvm
    } else if part.len >= 0x10048 && {
        let mut magic = [0u8; 8];
        disk.read_at(&mut magic, part.start + 0x10040)
            .map_err(|e| read_error(part, e, limits))?;
        &magic == b"_BHRfS_M"
    } {
        Kind::Btrfs
    } else if head.iter().all(|&b| b == 0) {
        Kind::Empty
    } else {
        Kind::Unknown
    };
    Ok(kind)
}

/// "1 BIOS boot, 1 FAT, 1 ext4": what the partitions hold, in order of first appearance.
fn summary(kinds: &[Kind]) -> String {
    let mut counts: Vec<(Kind, usize)> = Vec::new();
    for &k in kinds {
        match counts.iter_mut().find(|(c, _)| *c == k) {
            Some((_, n)) => *n += 1,
            None => counts.push((k, 1)),
        }
    }
    if counts.is_empty() {
        return "no partitions".into();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} {}", k.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unread_note(kinds: &[Kind]) -> String {
    let mut note = String::new();
    if kinds.contains(&Kind::Btrfs) {
        note.push_str("; btrfs is not read yet");
    }
    if kinds.contains(&Kind::Lvm) || kinds.contains(&Kind::Luks) {
        note.push_str("; LVM and LUKS volumes are not opened");
    }
    note
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The config on `fs` and the entry it chooses, if `fs` holds one.
fn find_config(fs: &Fs<'_>, limits: &Limits) -> Result<Option<(String, BootEntry)>, BootDiskError> {
    let part = fs.partition();
    for dir in GRUB_DIRS {
        let path = format!("{dir}/grub.cfg");
        let Some(cfg) = fs.read_optional(&path, MAX_CONFIG as u64, limits)? else {
            continue;
        };
        let env = fs
            .read_optional(&format!("{dir}/grubenv"), MAX_GRUBENV, limits)?
            .map(|b| lossy(&b));
        return match grub_default_entry(&lossy(&cfg), env.as_deref()) {
            Ok(entry) => Ok(Some((path, entry))),
            Err(source @ ConfigError::NoEntry { .. }) => {
                match find_bls(fs, env.as_deref(), limits)? {
                    Some(found) => Ok(Some(found)),
                    None => Err(BootDiskError::Config {
                        partition: part.to_string(),
                        config: path,
                        source,
                    }),
                }
            }
            Err(source) => Err(BootDiskError::Config {
                partition: part.to_string(),
                config: path,
                source,
            }),
        };
    }
    find_bls(fs, None, limits)
}

/// `name` if it is a loader entry's file name (`*.conf`, not hidden), with its suffix in
/// lower case where the filesystem ignores case (FAT), as systemd-boot takes them.
fn entry_name(fs: &Fs<'_>, name: String) -> Option<String> {
    if name.starts_with('.') {
        return None;
    }
    if name.ends_with(".conf") {
        return Some(name);
    }
    if !matches!(fs, Fs::Fat(_)) {
        return None;
    }
    let cut = name.len().checked_sub(5)?;
    let (stem, suffix) = (name.get(..cut)?, name.get(cut..)?);
    suffix
        .eq_ignore_ascii_case(".conf")
        .then(|| format!("{stem}.conf"))
}

fn find_bls(
    fs: &Fs<'_>,
    grubenv: Option<&str>,
    limits: &Limits,
) -> Result<Option<(String, BootEntry)>, BootDiskError> {
    let part = fs.partition();
    for dir in BLS_DIRS {
        let Some(list) = fs.list(dir, limits)? else {
            continue;
        };
        let mut names: Vec<String> = list.into_iter().filter_map(|n| entry_name(fs, n)).collect();
        names.sort();
        names.dedup();
        names.truncate(MAX_LOADER_ENTRIES);
        let mut files = Vec::new();
        for name in names {
            let path = format!("{dir}/{name}");
            if let Some(text) = fs.read_optional(&path, MAX_LOADER_ENTRY as u64, limits)? {
                files.push((name, lossy(&text)));
            }
        }
        if files.is_empty() {
            continue;
        }
        let entry = bls_default_entry(&files, grubenv).map_err(|source| BootDiskError::Config {
            partition: part.to_string(),
            config: dir.to_owned(),
            source,
        })?;
        let config = format!("{dir}/{}.conf", entry.id.as_deref().unwrap_or_default());
        return Ok(Some((config, entry)));
    }
    Ok(None)
}

/// A file the entry names, as read.
struct Fetched {
    bytes: Vec<u8>,
    /// Index of the filesystem it was read from.
    fs: usize,
    /// The path it was read at on that filesystem.
    path: String,
}

/// Where the config on `filesystems[home]` and its entry put a file.
struct Resolver<'f, 'a> {
    filesystems: &'f [Fs<'a>],
    home: usize,
    /// The config was under /boot: its paths may be relative to a /boot partition.
    under_boot: bool,
    config: &'f str,
    limits: &'f Limits,
}

impl Resolver<'_, '_> {
    /// The file at `path` (a kernel or initrd): on the config's filesystem first, then on
    /// the others in partition order.
    fn fetch(&self, what: &'static str, path: &str, max: u64) -> Result<Fetched, BootDiskError> {
        let others = (0..self.filesystems.len()).filter(|&j| j != self.home);
        for j in std::iter::once(self.home).chain(others) {
            let Some(fs) = self.filesystems.get(j) else {
                continue;
            };
            let mut tries = vec![path.to_owned()];
            if !path.starts_with("/boot/") && (self.under_boot || j != self.home) {
                tries.push(format!("/boot{path}"));
            }
            for p in tries {
                if let Some(bytes) = fs.read(&p, max, self.limits)? {
                    return Ok(Fetched {
                        bytes,
                        fs: j,
                        path: p,
                    });
                }
            }
        }
        Err(BootDiskError::Missing {
            what,
            path: path.to_owned(),
            config: self.config.to_owned(),
        })
    }
}

/// The path of the build config beside a kernel read at `kernel_path` and named
/// `entry_kernel` by its entry: `config-<ver>` for `vmlinuz-<ver>`, `vmlinux-<ver>` and
/// `bzImage-<ver>`, in the directory the kernel was read from.
fn kernel_config_path(kernel_path: &str, entry_kernel: &str) -> Option<String> {
    let name = entry_kernel.rsplit('/').next()?;
    let ver = ["vmlinuz-", "vmlinux-", "bzImage-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .filter(|ver| !ver.is_empty())?;
    let (dir, _) = kernel_path.rsplit_once('/')?;
    Some(format!("{dir}/config-{ver}"))
}

/// The kernel's build config, if it lies beside the kernel: advisory, so a missing, too
/// large or unreadable one is `None`; only the read limit is an error.
fn read_kernel_config(
    fs: &Fs<'_>,
    kernel_path: &str,
    entry_kernel: &str,
    limits: &Limits,
) -> Result<Option<Vec<u8>>, BootDiskError> {
    let Some(path) = kernel_config_path(kernel_path, entry_kernel) else {
        return Ok(None);
    };
    match fs.read_file(&path, MAX_KERNEL_CONFIG) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.failure() == Failure::ReadLimit => {
            Err(BootDiskError::ReadLimit(limits.max_read))
        }
        Err(_) => Ok(None),
    }
}

/// Finds the boot config on `disk`, chooses its default entry and reads the kernel and
/// initrd it names, within `limits`. See the crate docs for what is read and chosen.
pub fn find_boot(disk: &dyn Disk, limits: &Limits) -> Result<Found, BootDiskError> {
    let metered = Metered::new(disk, limits.max_read);
    let disk: &dyn Disk = &metered;
    let parts = partitions(disk).map_err(|e| match e {
        TableError::ReadLimit => BootDiskError::ReadLimit(limits.max_read),
        e => BootDiskError::Table(e),
    })?;
    let mut kinds = Vec::new();
    let mut filesystems = Vec::new();
    let mut unreadable = None;
    for part in &parts {
        let kind = probe(disk, part, limits)?;
        kinds.push(kind);
        match Fs::open(kind, disk, part) {
            None => {}
            Some(Ok(fs)) => filesystems.push(fs),
            Some(Err(e)) if e.failure() == Failure::ReadLimit => {
                return Err(BootDiskError::ReadLimit(limits.max_read));
            }
            // Another partition may still hold the config: this error is only returned
            // when none does.
            Some(Err(e)) => {
                unreadable.get_or_insert_with(|| fs_error(kind.name(), part, e, limits));
            }
        }
    }
    for (home, fs) in filesystems.iter().enumerate() {
        let Some((config, entry)) = find_config(fs, limits)? else {
            continue;
        };
        let resolver = Resolver {
            filesystems: &filesystems,
            home,
            under_boot: config.starts_with("/boot/"),
            config: &config,
            limits,
        };
        let kernel = resolver.fetch("kernel", &entry.kernel, limits.max_file)?;
        let kernel_fs = filesystems
            .get(kernel.fs)
            .ok_or_else(|| BootDiskError::Missing {
                what: "kernel",
                path: entry.kernel.clone(),
                config: config.clone(),
            })?;
        let kernel_config = read_kernel_config(kernel_fs, &kernel.path, &entry.kernel, limits)?;
        let initrd = if entry.initrd.is_empty() {
            None
        } else {
            let mut all: Vec<u8> = Vec::new();
            for path in &entry.initrd {
                // GRUB loads each initrd at a 4-byte boundary; the kernel skips the zeros
                // between cpio archives.
                all.resize(all.len().next_multiple_of(4), 0);
                let left = limits.max_file.saturating_sub(all.len() as u64);
                let fetched = resolver.fetch("initrd", path, left)?;
                all.extend_from_slice(&fetched.bytes);
            }
            Some(all)
        };
        return Ok(Found {
            partition: fs.partition().index,
            config,
            entry,
            kernel_partition: kernel_fs.partition().index,
            kernel: kernel.bytes,
            kernel_config,
            initrd,
        });
    }
    if let Some(e) = unreadable {
        return Err(e);
    }
    Err(BootDiskError::NoConfig {
        found: summary(&kinds),
        note: unread_note(&kinds),
    })
}
