//! Packing a directory tree into a (compressed) tar archive, for `imgadm create` and the
//! image recipes.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header, HeaderMode};

use super::{ArchiveError, Compression};

/// Writes a tar of `root` compressed with `compression` to `out`: regular files, directories,
/// symlinks and hard links (files with several links inside the tree), with their modes,
/// uids, gids and mtimes; entries in name order, paths relative to `root` without a `./`
/// prefix, `root` itself not included. Symlinks are never followed. Device nodes, FIFOs and
/// sockets are skipped (a zone gets them from its runtime, and [`super::unpack_tree`] refuses
/// them); extended attributes are not kept. The tree must not change while it is packed (a
/// stopped guest): files are opened without following symlinks, but directories are listed
/// by path. Returns the stored (compressed) size.
pub fn pack_tree(
    root: &Path,
    compression: Compression,
    out: impl Write,
) -> Result<u64, ArchiveError> {
    pack_tree_ids(root, compression, out, None)
}

/// [`pack_tree`] of a guest's tree whose files may carry host ids of the guest's range
/// `(first, count)` (a zone's upper layer, a shifted root): such ids are written as the
/// guest's own (`id - first`), so the archive holds the ids the guest sees, whatever range
/// it had on this host. Other ids are written as they are.
pub fn pack_tree_ids(
    root: &Path,
    compression: Compression,
    out: impl Write,
    range: Option<(u32, u32)>,
) -> Result<u64, ArchiveError> {
    pack_tree_filtered(root, compression, out, range, &|_, _| true)
}

/// [`pack_tree_ids`] of the entries `include` takes (given each entry's path relative to
/// `root` and its metadata); directories it leaves out are still walked.
pub fn pack_tree_filtered(
    root: &Path,
    compression: Compression,
    out: impl Write,
    range: Option<(u32, u32)>,
    include: &dyn Fn(&Path, &fs::Metadata) -> bool,
) -> Result<u64, ArchiveError> {
    let wr = |source: io::Error| ArchiveError::PackWrite {
        compression,
        source,
    };
    let counter = Counter {
        inner: out,
        count: 0,
    };
    let mut counter = match compression {
        Compression::None => write_tar(root, counter, compression, range, include)?,
        Compression::Gzip => {
            let enc = flate2::write::GzEncoder::new(counter, flate2::Compression::default());
            write_tar(root, enc, compression, range, include)?
                .finish()
                .map_err(wr)?
        }
        Compression::Xz => {
            let enc = liblzma::write::XzEncoder::new(counter, 6);
            write_tar(root, enc, compression, range, include)?
                .finish()
                .map_err(wr)?
        }
        Compression::Zstd => {
            let enc = zstd::stream::write::Encoder::new(counter, 3).map_err(wr)?;
            write_tar(root, enc, compression, range, include)?
                .finish()
                .map_err(wr)?
        }
        Compression::Bzip2 => {
            let enc = bzip2::write::BzEncoder::new(counter, bzip2::Compression::default());
            write_tar(root, enc, compression, range, include)?
                .finish()
                .map_err(wr)?
        }
    };
    counter.flush().map_err(wr)?;
    Ok(counter.count)
}

/// Counts the bytes written through it.
struct Counter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_tar<W: Write>(
    root: &Path,
    out: W,
    compression: Compression,
    range: Option<(u32, u32)>,
    include: &dyn Fn(&Path, &fs::Metadata) -> bool,
) -> Result<W, ArchiveError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| ArchiveError::Pack { path, source }
    };
    let wr = |source: io::Error| ArchiveError::PackWrite {
        compression,
        source,
    };
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Directories still to list: a loop, not recursion, so a deep tree cannot exhaust the
    // stack. Each directory's entries come out in name order, then its subdirectories'.
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        let mut names = fs::read_dir(&dir)
            .map_err(read(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(read(&dir))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let child = rel.join(&name);
            let host = root.join(&child);
            let meta = fs::symlink_metadata(&host).map_err(read(&host))?;
            let ft = meta.file_type();
            let mut header = Header::new_gnu();
            if !include(&child, &meta) {
                if ft.is_dir() {
                    subdirs.push(child);
                }
                continue;
            }
            if ft.is_dir() {
                header.set_metadata_in_mode(&meta, HeaderMode::Complete);
                set_ids(&mut header, &meta, range);
                header.set_size(0);
                builder
                    .append_data(&mut header, &child, io::empty())
                    .map_err(wr)?;
                subdirs.push(child);
            } else if ft.is_symlink() {
                header.set_metadata_in_mode(&meta, HeaderMode::Complete);
                set_ids(&mut header, &meta, range);
                header.set_size(0);
                let target = fs::read_link(&host).map_err(read(&host))?;
                builder
                    .append_link(&mut header, &child, &target)
                    .map_err(wr)?;
            } else if ft.is_file() {
                // Metadata from the open file, so the size in the header is the one read.
                let file = open_nofollow(&host).map_err(read(&host))?;
                let meta = file.metadata().map_err(read(&host))?;
                header.set_metadata_in_mode(&meta, HeaderMode::Complete);
                set_ids(&mut header, &meta, range);
                if meta.nlink() > 1 {
                    if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                        header.set_entry_type(EntryType::Link);
                        header.set_size(0);
                        builder
                            .append_link(&mut header, &child, first)
                            .map_err(wr)?;
                        continue;
                    }
                    links.insert((meta.dev(), meta.ino()), child.clone());
                }
                let exact = Exact {
                    file,
                    left: meta.len(),
                };
                builder
                    .append_data(&mut header, &child, exact)
                    .map_err(wr)?;
            }
            // Devices, FIFOs and sockets are skipped (see pack_tree).
        }
        pending.extend(subdirs.into_iter().rev());
    }
    builder.into_inner().map_err(wr)
}

fn set_ids(header: &mut Header, meta: &fs::Metadata, range: Option<(u32, u32)>) {
    if range.is_some() {
        header.set_uid(super::relative_id(meta.uid(), range));
        header.set_gid(super::relative_id(meta.gid(), range));
    }
}

/// A file's data, exactly as long as its header says: a file that shrank while being packed
/// is an error, not a misaligned archive; one that grew is cut at the header's size.
struct Exact {
    file: File,
    left: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 && want > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being packed",
            ));
        }
        self.left -= n.min(want) as u64;
        Ok(n)
    }
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}
