//! Unpacking a tar archive into a directory, entry by entry, under the rules in the module
//! documentation. Paths are checked on the archive's bytes and every parent is looked at with
//! `symlink_metadata` before anything is created under it: the only writer in `dest` is this
//! code, so a parent that is a real directory when checked stays one.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::stream::{self, Feed, FeedState, Stored, Tally};
use super::{ArchiveError, Expected, Limits, Stats, lossy, write_err};

/// A tree image (zone-dataset, lx-dataset): a tar archive, compressed as `expected` says,
/// unpacked into `dest` (an existing, empty directory: anything else is refused). `progress`
/// is called with the number of stored bytes consumed so far.
///
/// On error `dest` is left partly written (directories 0755, files as far as they got): the
/// caller must remove it. Success means every entry was unpacked and the whole stored file
/// matched the manifest's size and sha1.
pub fn unpack_tree(
    src: impl Read,
    expected: &Expected,
    dest: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
) -> Result<Stats, ArchiveError> {
    unpack(src, Some(expected), dest, limits, progress)
}

/// An uncompressed tar whose integrity the caller checks as it reads `src` (a section of a
/// send stream, hashed by its framing), unpacked into `dest` by the same rules as
/// [`unpack_tree`]: an existing, empty directory, left partly written on error.
pub fn unpack_tree_unchecked(
    src: impl Read,
    dest: &Path,
    limits: &Limits,
) -> Result<Stats, ArchiveError> {
    unpack(src, None, dest, limits, &mut |_| {})
}

/// An OCI image layer (a tar, compressed as `expected` says, named by its sha256 digest
/// there) applied onto `dest`, its parent layer's tree: entries replace what is there (a
/// file may replace a directory of the layers below, and a directory a file), and OCI's
/// whiteouts remove what the layers below hold: `.wh.NAME` removes NAME beside it,
/// `.wh..wh..opq` empties its directory of everything this layer did not put there. The
/// whiteouts themselves are never created. Otherwise the rules of [`unpack_tree`].
pub fn unpack_layer_onto(
    src: impl Read,
    expected: &Expected,
    dest: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
) -> Result<Stats, ArchiveError> {
    unpack_into(src, Some(expected), dest, limits, progress, Mode::Layer)
}

/// [`unpack_tree_unchecked`] over an existing tree (an incremental send's changes): entries
/// replace or merge with what is there by the same rules as a later entry of one archive
/// does with an earlier one; a hard link may only name a file this archive unpacked.
pub fn unpack_tree_onto(
    src: impl Read,
    dest: &Path,
    limits: &Limits,
) -> Result<Stats, ArchiveError> {
    unpack_into(src, None, dest, limits, &mut |_| {}, Mode::Onto)
}

/// Where an archive is unpacked.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Into an empty directory.
    Empty,
    /// Over an existing tree, by the rules of later entries of one archive.
    Onto,
    /// Over its parent layer's tree, with OCI whiteouts.
    Layer,
}

fn unpack(
    src: impl Read,
    expected: Option<&Expected>,
    dest: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
) -> Result<Stats, ArchiveError> {
    unpack_into(src, expected, dest, limits, progress, Mode::Empty)
}

fn unpack_into(
    src: impl Read,
    expected: Option<&Expected>,
    dest: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
    mode: Mode,
) -> Result<Stats, ArchiveError> {
    let mut src = src;
    let compression = expected.map_or(super::Compression::None, |e| e.compression);
    // An empty directory: anything already there could pass for an unpacked entry (a hard
    // link target, a parent directory).
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(write_err(dest)(io::Error::other(
                "the destination is not a directory",
            )));
        }
        Err(e) => return Err(write_err(dest)(e)),
    }
    if mode == Mode::Empty
        && fs::read_dir(dest)
            .map_err(write_err(dest))?
            .next()
            .is_some()
    {
        return Err(write_err(dest)(io::Error::other(
            "the destination is not empty",
        )));
    }
    let tally = expected.map_or_else(Tally::unchecked, Tally::of);
    // Every entry costs at least a 512-byte header; allow 4 KiB per entry for long names,
    // pax headers and padding, plus one gap's worth of headers.
    let cap = limits
        .max_unpacked_bytes
        .saturating_add(limits.max_entries.saturating_mul(4096))
        .saturating_add(super::MAX_HEADER_BYTES);
    let feed = FeedState::new(cap);
    let mut unpacker = Unpacker {
        dest,
        limits,
        as_root: nix::unistd::geteuid().is_root(),
        dirs: Vec::new(),
        stats: Stats::default(),
        buf: vec![0u8; 128 << 10],
        layer: (mode == Mode::Layer).then(HashSet::new),
    };
    let plain = expected
        .and_then(|e| e.uncompressed_digest.as_ref())
        .map(|_| RefCell::new(Sha256::new()));
    let read = {
        let stored = Stored::new(&mut src, &tally, progress);
        stream::decoder(compression, stored).and_then(|d| {
            let d: Box<dyn Read + '_> = match &plain {
                Some(h) => Box::new(Hashing {
                    inner: d,
                    hasher: h,
                }),
                None => d,
            };
            unpacker.run(Feed::new(d, &feed), &feed)
        })
    };
    read.map_err(|e| {
        stream::refine(
            e,
            &tally,
            Some(&feed),
            compression,
            limits.max_unpacked_bytes,
        )
    })?;
    unpacker.stats.stored_bytes = stream::finish(&mut src, &tally, expected, progress)?;
    if let (Some(h), Some(want)) = (plain, expected.and_then(|e| e.uncompressed_digest.as_ref())) {
        let actual = format!("sha256:{}", super::hex(&h.into_inner().finalize()));
        if !actual.eq_ignore_ascii_case(want) {
            return Err(ArchiveError::UncompressedDigestMismatch {
                expected: want.clone(),
                actual,
            });
        }
    }
    unpacker.apply_dirs()?;
    Ok(unpacker.stats)
}

/// Mode, owner and mtime of a directory entry, applied after all entries.
#[derive(Debug)]
struct DirAttrs {
    rel: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

/// What is at a path already.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Existing {
    Nothing,
    Dir,
    File,
    Symlink,
    Other,
}

impl Existing {
    fn name(self) -> &'static str {
        match self {
            Existing::Nothing => "nothing",
            Existing::Dir => "directory",
            Existing::File => "file",
            Existing::Symlink => "symlink",
            Existing::Other => "special file",
        }
    }
}

fn existing(host: &Path) -> Result<Existing, ArchiveError> {
    match fs::symlink_metadata(host) {
        Ok(m) => {
            let ft = m.file_type();
            Ok(if ft.is_symlink() {
                Existing::Symlink
            } else if ft.is_dir() {
                Existing::Dir
            } else if ft.is_file() {
                Existing::File
            } else {
                Existing::Other
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Existing::Nothing),
        Err(e) => Err(write_err(host)(e)),
    }
}

/// Why an archive path was refused, before it is attached to an entry or a link.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PathProblem {
    Empty,
    Nul,
    Absolute,
    DotDot,
}

/// An archive path as components under the root: `.` and empty components dropped,
/// absolute paths, `..` and NUL refused. An empty result is the root itself.
fn parse_path(raw: &[u8]) -> Result<PathBuf, PathProblem> {
    if raw.is_empty() {
        return Err(PathProblem::Empty);
    }
    if raw.contains(&0) {
        return Err(PathProblem::Nul);
    }
    if raw.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    let mut rel = PathBuf::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(PathProblem::DotDot),
            c => rel.push(OsStr::from_bytes(c)),
        }
    }
    Ok(rel)
}

/// Whether a relative symlink target, followed lexically from the link's directory (at
/// `depth` components below the root), stays inside the root.
fn relative_target_stays_inside(depth: usize, target: &[u8]) -> bool {
    let mut depth = depth;
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

fn mtime_of(secs: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

fn timespec_of(secs: u64) -> TimeSpec {
    match libc::time_t::try_from(secs) {
        Ok(s) => TimeSpec::new(s, 0),
        Err(_) => TimeSpec::UTIME_OMIT,
    }
}

/// Sets a path's mtime without following a symlink at its end.
fn set_mtime_nofollow(host: &Path, secs: u64) -> Result<(), ArchiveError> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        host,
        &TimeSpec::UTIME_OMIT,
        &timespec_of(secs),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| write_err(host)(e.into()))
}

/// The decompressed bytes, hashed as the tar reader takes them (an OCI layer's diff_id).
struct Hashing<'h, R> {
    inner: R,
    hasher: &'h RefCell<Sha256>,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// Removes what is at `host`, never following a symlink: a directory with all it holds.
fn remove_any(host: &Path) -> Result<(), ArchiveError> {
    match existing(host)? {
        Existing::Nothing => Ok(()),
        Existing::Dir => fs::remove_dir_all(host).map_err(write_err(host)),
        _ => fs::remove_file(host).map_err(write_err(host)),
    }
}

/// The header fields every entry needs.
#[derive(Debug)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

fn meta_of(header: &tar::Header, shown: &str) -> Result<Meta, ArchiveError> {
    let bad = |field: &'static str| {
        move |source: io::Error| ArchiveError::BadHeader {
            path: shown.to_string(),
            field,
            source,
        }
    };
    let id = |v: u64, field: &'static str| {
        u32::try_from(v).map_err(|_| ArchiveError::BadHeader {
            path: shown.to_string(),
            field,
            source: io::Error::other("the value does not fit in 32 bits"),
        })
    };
    Ok(Meta {
        mode: header.mode().map_err(bad("mode"))? & 0o7777,
        uid: id(header.uid().map_err(bad("uid"))?, "uid")?,
        gid: id(header.gid().map_err(bad("gid"))?, "gid")?,
        mtime: header.mtime().map_err(bad("mtime"))?,
    })
}

struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    as_root: bool,
    dirs: Vec<DirAttrs>,
    stats: Stats,
    buf: Vec<u8>,
    /// Applying an OCI layer: the paths this layer put in place so far (a whiteout or an
    /// opaque directory removes only what the layers below left).
    layer: Option<HashSet<PathBuf>>,
}

impl Unpacker<'_> {
    fn run(&mut self, feed: Feed<'_>, state: &FeedState) -> Result<(), ArchiveError> {
        let mut archive = tar::Archive::new(feed);
        let entries = archive.entries().map_err(ArchiveError::Tar)?;
        for entry in entries {
            let mut entry = entry.map_err(ArchiveError::Tar)?;
            self.stats.entries += 1;
            if self.stats.entries > self.limits.max_entries {
                return Err(ArchiveError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            state.enter_data();
            let done = self.entry(&mut entry);
            state.leave_data();
            done?;
        }
        if state.eof() {
            return Err(ArchiveError::TarTruncated);
        }
        // Drain the rest of the decompressed stream (the second end block, record padding)
        // so the decompressor checks its own end; bounded like headers.
        let mut feed = archive.into_inner();
        loop {
            match feed.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ArchiveError::Tar(e)),
            }
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let raw = entry.path_bytes().into_owned();
        let shown = lossy(&raw);
        let mut kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        // Old (pre-POSIX) archives mark directories with a trailing slash on a regular entry.
        if kind == EntryType::Regular && raw.last() == Some(&b'/') && entry.size() == 0 {
            kind = EntryType::Directory;
        }
        let rel = parse_path(&raw).map_err(|p| match p {
            PathProblem::Empty => ArchiveError::EmptyName,
            PathProblem::Nul => ArchiveError::NulInName {
                path: shown.clone(),
            },
            PathProblem::Absolute => ArchiveError::AbsolutePath {
                path: shown.clone(),
            },
            PathProblem::DotDot => ArchiveError::DotDot {
                path: shown.clone(),
            },
        })?;
        if rel.as_os_str().is_empty() && kind != EntryType::Directory {
            return Err(ArchiveError::EmptyName);
        }
        if self.layer.is_some() {
            let name = rel.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                return self.whiteout(&rel, hidden, &shown);
            }
        }
        let done = match kind {
            EntryType::Regular | EntryType::Continuous => self.file(entry, &rel, &shown),
            EntryType::Directory => self.dir(entry.header(), &rel, &shown),
            EntryType::Symlink => self.symlink(entry, &rel, &shown),
            EntryType::Link => self.hard_link(entry, &rel, &shown),
            EntryType::Char => Err(ArchiveError::Device {
                path: shown,
                kind: "character",
            }),
            EntryType::Block => Err(ArchiveError::Device {
                path: shown,
                kind: "block",
            }),
            EntryType::Fifo => Err(ArchiveError::Fifo { path: shown }),
            other => Err(ArchiveError::UnsupportedEntry {
                path: shown,
                kind: format!("{other:?}"),
            }),
        };
        if done.is_ok()
            && let Some(created) = self.layer.as_mut()
        {
            created.insert(rel);
        }
        done
    }

    /// An OCI whiteout at `rel`: `.wh..wh..opq` empties its directory of what the layers
    /// below left there; `.wh.NAME` removes NAME (a file, a symlink or a whole directory,
    /// never followed) unless this layer put it there.
    fn whiteout(&mut self, rel: &Path, hidden: &[u8], shown: &str) -> Result<(), ArchiveError> {
        let host = self.parents(rel, shown)?;
        let dir = host.parent().unwrap_or(self.dest).to_path_buf();
        let dir_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let created = self.layer.as_ref();
        let keep = |p: &Path| created.is_some_and(|c| c.contains(p));
        if hidden == b".wh..opq" {
            for entry in fs::read_dir(&dir).map_err(write_err(&dir))? {
                let entry = entry.map_err(write_err(&dir))?;
                if !keep(&dir_rel.join(entry.file_name())) {
                    remove_any(&entry.path())?;
                }
            }
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.starts_with(b".wh.") {
            return Err(ArchiveError::UnsupportedEntry {
                path: shown.to_string(),
                kind: "whiteout of no usable name".to_string(),
            });
        }
        let name = OsStr::from_bytes(hidden);
        if !keep(&dir_rel.join(name)) {
            remove_any(&dir.join(name))?;
        }
        Ok(())
    }

    /// Checks every parent of `rel` as unpacked so far, creating missing ones 0755, and
    /// returns the host path of `rel`. Refuses a parent that is a symlink or not a directory.
    fn parents(&self, rel: &Path, shown: &str) -> Result<PathBuf, ArchiveError> {
        let mut host = self.dest.to_path_buf();
        let mut comps = rel.components().peekable();
        while let Some(comp) = comps.next() {
            host.push(comp);
            if comps.peek().is_none() {
                break;
            }
            match existing(&host)? {
                Existing::Dir => {}
                Existing::Nothing => DirBuilder::new()
                    .mode(0o755)
                    .create(&host)
                    .map_err(write_err(&host))?,
                Existing::Symlink => {
                    return Err(ArchiveError::ThroughSymlink {
                        path: shown.to_string(),
                        symlink: self.shown_host(&host),
                    });
                }
                Existing::File | Existing::Other => {
                    return Err(ArchiveError::ParentNotDirectory {
                        path: shown.to_string(),
                        parent: self.shown_host(&host),
                    });
                }
            }
        }
        Ok(host)
    }

    /// Whether `host` is an entry of the layers below, which this layer may replace.
    fn is_below(&self, host: &Path) -> bool {
        let rel = host.strip_prefix(self.dest).unwrap_or(host);
        self.layer.as_ref().is_some_and(|c| !c.contains(rel))
    }

    fn shown_host(&self, host: &Path) -> String {
        host.strip_prefix(self.dest)
            .unwrap_or(host)
            .to_string_lossy()
            .into_owned()
    }

    /// Clears the way for a non-directory at `host`: an earlier file or symlink is removed
    /// (the later entry wins), a directory is kept and the entry refused.
    fn make_room(&self, host: &Path, shown: &str, new: &'static str) -> Result<(), ArchiveError> {
        match existing(host)? {
            Existing::Nothing => Ok(()),
            Existing::Dir if self.is_below(host) => remove_any(host),
            Existing::Dir => Err(ArchiveError::Conflict {
                path: shown.to_string(),
                existing: Existing::Dir.name(),
                new,
            }),
            Existing::File | Existing::Symlink | Existing::Other => {
                fs::remove_file(host).map_err(write_err(host))
            }
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let meta = meta_of(entry.header(), shown)?;
        if meta.mode & 0o6000 != 0 && !self.limits.allow_setuid {
            return Err(ArchiveError::Setuid {
                path: shown.to_string(),
                mode: meta.mode,
            });
        }
        let size = entry.size();
        let limit = self.limits.max_unpacked_bytes;
        match self.stats.unpacked_bytes.checked_add(size) {
            Some(total) if total <= limit => {}
            _ => return Err(ArchiveError::TooLarge { limit }),
        }
        let host = self.parents(rel, shown)?;
        self.make_room(&host, shown, "file")?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&host)
            .map_err(write_err(&host))?;
        let mut copied = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArchiveError::Tar(e)),
            };
            let chunk = self.buf.get(..n).unwrap_or(&self.buf);
            file.write_all(chunk).map_err(write_err(&host))?;
            copied += chunk.len() as u64;
        }
        if copied != size {
            return Err(ArchiveError::EntryTruncated {
                path: shown.to_string(),
                expected: size,
                actual: copied,
            });
        }
        self.stats.unpacked_bytes += copied;
        // chown before chmod: chown clears setuid/setgid bits.
        if self.as_root {
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                .map_err(write_err(&host))?;
        }
        file.set_permissions(Permissions::from_mode(meta.mode))
            .map_err(write_err(&host))?;
        if let Some(t) = mtime_of(meta.mtime) {
            file.set_modified(t).map_err(write_err(&host))?;
        }
        Ok(())
    }

    fn dir(&mut self, header: &tar::Header, rel: &Path, shown: &str) -> Result<(), ArchiveError> {
        let meta = meta_of(header, shown)?;
        if !rel.as_os_str().is_empty() {
            let host = self.parents(rel, shown)?;
            match existing(&host)? {
                Existing::Dir => {}
                Existing::Nothing => DirBuilder::new()
                    .mode(0o755)
                    .create(&host)
                    .map_err(write_err(&host))?,
                Existing::File | Existing::Symlink | Existing::Other if self.is_below(&host) => {
                    remove_any(&host)?;
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&host)
                        .map_err(write_err(&host))?;
                }
                other => {
                    return Err(ArchiveError::Conflict {
                        path: shown.to_string(),
                        existing: other.name(),
                        new: "directory",
                    });
                }
            }
        }
        self.dirs.push(DirAttrs {
            rel: rel.to_path_buf(),
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
        });
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let meta = meta_of(entry.header(), shown)?;
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        if target.is_empty() {
            return Err(ArchiveError::UnsupportedEntry {
                path: shown.to_string(),
                kind: "symlink without a target".to_string(),
            });
        }
        if target.contains(&0) {
            return Err(ArchiveError::NulInName {
                path: shown.to_string(),
            });
        }
        let depth = rel.components().count().saturating_sub(1);
        if target.first() != Some(&b'/') && !relative_target_stays_inside(depth, &target) {
            return Err(ArchiveError::SymlinkEscape {
                path: shown.to_string(),
                target: lossy(&target),
            });
        }
        let host = self.parents(rel, shown)?;
        self.make_room(&host, shown, "symlink")?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &host).map_err(write_err(&host))?;
        if self.as_root {
            std::os::unix::fs::lchown(&host, Some(meta.uid), Some(meta.gid))
                .map_err(write_err(&host))?;
        }
        set_mtime_nofollow(&host, meta.mtime)
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let target_raw = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let refuse = |reason: &'static str| ArchiveError::HardLink {
            path: shown.to_string(),
            target: lossy(&target_raw),
            reason,
        };
        let target_rel = parse_path(&target_raw).map_err(|p| {
            refuse(match p {
                PathProblem::Empty => "it has no target",
                PathProblem::Nul => "the target contains a NUL byte",
                PathProblem::Absolute => "the target is an absolute path",
                PathProblem::DotDot => "the target has a '..' component",
            })
        })?;
        if target_rel.as_os_str().is_empty() {
            return Err(refuse("the target is the image root"));
        }
        if target_rel == rel {
            return Err(refuse("the target is the link itself"));
        }
        let mut target_host = self.dest.to_path_buf();
        let mut comps = target_rel.components().peekable();
        while let Some(comp) = comps.next() {
            target_host.push(comp);
            let last = comps.peek().is_none();
            match (existing(&target_host)?, last) {
                (Existing::Dir, false) => {}
                (Existing::Symlink, false) => {
                    return Err(refuse("the target is reached through a symlink"));
                }
                (Existing::File, true) => {}
                (Existing::Nothing, _) => {
                    return Err(refuse("the target was not unpacked before the link"));
                }
                (Existing::Symlink, true) => return Err(refuse("the target is a symlink")),
                (Existing::Dir, true) => return Err(refuse("the target is a directory")),
                (Existing::File | Existing::Other, _) => {
                    return Err(refuse("the target is not a regular file"));
                }
            }
        }
        let host = self.parents(rel, shown)?;
        self.make_room(&host, shown, "hard link")?;
        fs::hard_link(&target_host, &host).map_err(write_err(&host))
    }

    /// Applies directory modes, owners and mtimes, deepest first, so a read-only directory
    /// does not block its children; a later entry for the same directory wins.
    fn apply_dirs(&mut self) -> Result<(), ArchiveError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Stable sort: for duplicates the later entry is applied last.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.rel.components().count()));
        for d in dirs {
            let host = self.dest.join(&d.rel);
            if existing(&host)? != Existing::Dir {
                continue;
            }
            if self.as_root {
                std::os::unix::fs::lchown(&host, Some(d.uid), Some(d.gid))
                    .map_err(write_err(&host))?;
            }
            fs::set_permissions(&host, Permissions::from_mode(d.mode)).map_err(write_err(&host))?;
            set_mtime_nofollow(&host, d.mtime)?;
        }
        Ok(())
    }
}
