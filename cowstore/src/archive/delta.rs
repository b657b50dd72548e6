//! What an incremental send needs of trees: a [`Listing`] of a tree (each entry's kind,
//! owner, mode, size and mtime, never its data), its fingerprint (what the receiver's copy
//! must match), the entries that changed since a listing (packed by
//! [`super::pack_tree_filtered`]) and the paths removed since it ([`Listing::removed`],
//! applied by [`apply_removals`]).
//!
//! A file counts as unchanged when its size, mtime (to the nanosecond), mode and owner are
//! the listing's and it has one link (rsync's quick check, finer): files with several links
//! are always sent, so the receiver's links are made from the stream, never by truncating a
//! file another name shares.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::ArchiveError;

/// What kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: (i64, i64),
    target: Option<OsString>,
    links: u64,
}

/// A tree's entries by path relative to its root (the root itself not included).
#[derive(Debug, Default, Clone)]
pub struct Listing {
    nodes: BTreeMap<PathBuf, Node>,
}

fn node(host: &Path, meta: &fs::Metadata, range: Option<(u32, u32)>) -> io::Result<Option<Node>> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        // Devices, FIFOs and sockets are never packed (see pack_tree).
        return Ok(None);
    };
    Ok(Some(Node {
        kind,
        mode: meta.mode() & 0o7777,
        uid: super::relative_id(meta.uid(), range),
        gid: super::relative_id(meta.gid(), range),
        size: if kind == Kind::File { meta.len() } else { 0 },
        mtime: (meta.mtime(), meta.mtime_nsec()),
        target: match kind {
            Kind::Symlink => Some(fs::read_link(host)?.into_os_string()),
            _ => None,
        },
        links: meta.nlink(),
    }))
}

/// Lists the tree at `root` without following symlinks (ids of `range` made relative, as
/// [`super::pack_tree_ids`] writes them).
pub fn list_tree(root: &Path, range: Option<(u32, u32)>) -> Result<Listing, ArchiveError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| ArchiveError::Pack { path, source }
    };
    let mut nodes = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).map_err(read(&dir))? {
            let entry = entry.map_err(read(&dir))?;
            let child = rel.join(entry.file_name());
            let host = root.join(&child);
            let meta = fs::symlink_metadata(&host).map_err(read(&host))?;
            if let Some(n) = node(&host, &meta, range).map_err(read(&host))? {
                if n.kind == Kind::Dir {
                    pending.push(child.clone());
                }
                nodes.insert(child, n);
            }
        }
    }
    Ok(Listing { nodes })
}

impl Listing {
    /// A BLAKE3 hash over every entry's path, kind, mode, owner, and a file's size and mtime
    /// (whole seconds: what a tar keeps) or a symlink's target; directories' and symlinks'
    /// mtimes are left out (unpacking sets them after their contents, or not at all).
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (path, n) in &self.nodes {
            h.update(path.as_os_str().as_bytes());
            h.update(&[0, n.kind as u8]);
            h.update(&n.mode.to_le_bytes());
            h.update(&n.uid.to_le_bytes());
            h.update(&n.gid.to_le_bytes());
            match n.kind {
                Kind::File => {
                    h.update(&n.size.to_le_bytes());
                    h.update(&n.mtime.0.to_le_bytes());
                }
                Kind::Symlink => {
                    h.update(n.target.as_deref().unwrap_or_default().as_bytes());
                }
                Kind::Dir => {}
            }
        }
        h.finalize().to_hex().to_string()
    }

    /// Whether the entry at `rel` (of the tree listed now, its metadata `meta`) differs from
    /// this listing's: new, or another kind, mode, owner, size, mtime or target, or a file
    /// with several links.
    pub fn changed(
        &self,
        root: &Path,
        rel: &Path,
        meta: &fs::Metadata,
        range: Option<(u32, u32)>,
    ) -> bool {
        let Ok(Some(now)) = node(&root.join(rel), meta, range) else {
            return true;
        };
        if now.kind == Kind::File && now.links > 1 {
            return true;
        }
        match self.nodes.get(rel) {
            None => true,
            Some(was) => {
                let same_links = |n: &Node| Node {
                    links: 1,
                    ..n.clone()
                };
                same_links(was) != same_links(&now)
            }
        }
    }

    /// The paths of this listing that `now` lacks or holds as another kind (to be removed
    /// before `now`'s changes are unpacked), without the ones under a removed directory.
    pub fn removed(&self, now: &Listing) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (path, n) in &self.nodes {
            if out.last().is_some_and(|gone| path.starts_with(gone)) {
                continue;
            }
            if now.nodes.get(path).is_none_or(|m| m.kind != n.kind) {
                out.push(path.clone());
            }
        }
        out
    }
}

/// Removed paths as a section body: each path's bytes and a NUL.
pub fn encode_removals(paths: &[PathBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(p.as_os_str().as_bytes());
        out.push(0);
    }
    out
}

/// The paths [`encode_removals`] wrote, each checked: relative, plain components only.
pub fn decode_removals(body: &[u8]) -> Result<Vec<PathBuf>, String> {
    let Some(body) = body.strip_suffix(&[0]) else {
        return if body.is_empty() {
            Ok(Vec::new())
        } else {
            Err("a removed path is not NUL-terminated".into())
        };
    };
    body.split(|b| *b == 0)
        .map(|p| {
            let path = PathBuf::from(OsString::from_vec(p.to_vec()));
            let plain =
                !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
            if plain {
                Ok(path)
            } else {
                Err(format!(
                    "the removed path {:?} is not a plain relative path",
                    path
                ))
            }
        })
        .collect()
}

/// Removes `paths` (from [`decode_removals`]) under `root`, never through a symlink: each
/// parent must be a directory. A path already gone is skipped.
pub fn apply_removals(root: &Path, paths: &[PathBuf]) -> Result<(), ArchiveError> {
    let write = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| ArchiveError::Write { path, source }
    };
    'paths: for rel in paths {
        let mut at = root.to_path_buf();
        let parts: Vec<_> = rel.components().collect();
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            let meta = match fs::symlink_metadata(&at) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue 'paths,
                Err(e) => return Err(write(&at)(e)),
            };
            let last = i + 1 == parts.len();
            if !last && !meta.is_dir() {
                return Err(write(&at)(io::Error::other(
                    "a removed path's parent is not a directory",
                )));
            }
            if last {
                if meta.is_dir() {
                    fs::remove_dir_all(&at).map_err(write(&at))?;
                } else {
                    fs::remove_file(&at).map_err(write(&at))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_sees_changes_removals_and_kind_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in ["a", "a/b", "gone", "turns"] {
            fs::create_dir(root.join(d)).expect("dir");
        }
        fs::write(root.join("a/keep"), "k").expect("file");
        fs::write(root.join("a/edit"), "e").expect("file");
        fs::write(root.join("gone/x"), "x").expect("file");
        std::os::unix::fs::symlink("a/keep", root.join("link")).expect("symlink");
        let base = list_tree(root, None).expect("list");
        let print = base.fingerprint();
        assert_eq!(list_tree(root, None).expect("list").fingerprint(), print);

        fs::write(root.join("a/edit"), "edited").expect("edit");
        fs::remove_dir_all(root.join("gone")).expect("rm");
        fs::remove_dir(root.join("turns")).expect("rm");
        fs::write(root.join("turns"), "now a file").expect("file");
        fs::write(root.join("a/b/new"), "n").expect("new");
        let now = list_tree(root, None).expect("list");
        assert_ne!(now.fingerprint(), print);
        assert_eq!(
            base.removed(&now),
            [PathBuf::from("gone"), PathBuf::from("turns")]
        );
        let changed: Vec<PathBuf> = now
            .nodes
            .keys()
            .filter(|p| {
                let meta = fs::symlink_metadata(root.join(p)).expect("meta");
                base.changed(root, p, &meta, None)
            })
            .cloned()
            .collect();
        assert!(changed.contains(&PathBuf::from("a/edit")), "{changed:?}");
        assert!(changed.contains(&PathBuf::from("a/b/new")), "{changed:?}");
        assert!(changed.contains(&PathBuf::from("turns")), "{changed:?}");
        assert!(!changed.contains(&PathBuf::from("a/keep")), "{changed:?}");
        assert!(!changed.contains(&PathBuf::from("link")), "{changed:?}");
    }

    #[test]
    fn removals_round_trip_and_never_leave_the_root() {
        let paths = vec![PathBuf::from("a/b"), PathBuf::from("c")];
        assert_eq!(
            decode_removals(&encode_removals(&paths)).expect("decode"),
            paths
        );
        assert_eq!(decode_removals(b"").expect("empty"), Vec::<PathBuf>::new());
        for bad in [&b"../x\0"[..], b"/etc\0", b"a/../../b\0", b"\0", b"no-nul"] {
            assert!(
                decode_removals(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("outside");
        fs::write(outside.path().join("victim"), "v").expect("victim");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("esc")).expect("symlink");
        let err = apply_removals(dir.path(), &[PathBuf::from("esc/victim")])
            .expect_err("through a symlink");
        assert!(err.to_string().contains("esc"), "{err}");
        assert!(outside.path().join("victim").exists());
        apply_removals(
            dir.path(),
            &[PathBuf::from("esc"), PathBuf::from("missing/x")],
        )
        .expect("remove");
        assert!(!dir.path().join("esc").exists() && outside.path().join("victim").exists());
    }
}
