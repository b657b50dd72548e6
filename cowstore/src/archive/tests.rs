//! Unit tests: archives are built here with the tar crate, hostile ones with crafted headers,
//! and unpacked into tempdirs.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tar::{EntryType, Header};
use tempfile::TempDir;

use super::*;

const MTIME: u64 = 1_600_000_000;
pub(super) const ALL: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Xz,
    Compression::Zstd,
    Compression::Bzip2,
];

pub(super) fn limits() -> Limits {
    Limits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 1000,
        allow_setuid: false,
    }
}

/// A header with raw name and link bytes (no checks, so hostile paths can be written).
fn hdr(name: &[u8], kind: EntryType, size: u64, mode: u32, link: &[u8]) -> Header {
    let mut h = Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(1234);
    h.set_gid(2345);
    h.set_cksum();
    h
}

/// A crafted entry: (name, type, mode, link target, data).
type Spec = (&'static [u8], EntryType, u32, &'static [u8], &'static [u8]);

/// An archive of crafted entries.
fn tar_of(entries: &[Spec]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, mode, link, data) in entries {
        let h = hdr(name, *kind, data.len() as u64, *mode, link);
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn file(name: &'static [u8], data: &'static [u8]) -> Spec {
    (name, EntryType::Regular, 0o644, b"", data)
}

fn dir(name: &'static [u8], mode: u32) -> Spec {
    (name, EntryType::Directory, mode, b"", b"")
}

fn symlink(name: &'static [u8], target: &'static [u8]) -> Spec {
    (name, EntryType::Symlink, 0o777, target, b"")
}

fn hardlink(name: &'static [u8], target: &'static [u8]) -> Spec {
    (name, EntryType::Link, 0o644, target, b"")
}

pub(super) fn compress(data: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
    }
}

pub(super) fn expected_for(stored: &[u8], compression: Compression) -> Expected {
    let (sha1, size) = digest(stored).unwrap();
    Expected {
        sha1,
        size,
        digest: None,
        uncompressed_digest: None,
        compression,
    }
}

/// Unpacks `stored` (described truthfully by its manifest) into a fresh tempdir.
fn unpack(
    stored: &[u8],
    c: Compression,
    limits: &Limits,
) -> (TempDir, Result<Stats, ArchiveError>) {
    let expected = expected_for(stored, c);
    unpack_as(stored, &expected, limits)
}

fn unpack_as(
    stored: &[u8],
    expected: &Expected,
    limits: &Limits,
) -> (TempDir, Result<Stats, ArchiveError>) {
    let dest = TempDir::new().unwrap();
    let r = unpack_tree(stored, expected, dest.path(), limits, &mut |_| {});
    (dest, r)
}

/// Unpacks an uncompressed archive and returns the error it must produce.
fn refused(tar: &[u8]) -> (TempDir, ArchiveError) {
    let (dest, r) = unpack(tar, Compression::None, &limits());
    match r {
        Ok(stats) => panic!("unpacked instead of refusing: {stats:?}"),
        Err(e) => (dest, e),
    }
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Makes everything under `p` writable again so the tempdir can be removed unprivileged.
fn unlock(p: &Path) {
    if let Ok(m) = fs::symlink_metadata(p)
        && m.is_dir()
    {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                unlock(&e.path());
            }
        }
    }
}

fn good_tree() -> Vec<u8> {
    tar_of(&[
        dir(b"./", 0o755),
        dir(b"./usr/", 0o755),
        dir(b"./usr/bin/", 0o755),
        (
            b"./usr/bin/busybox",
            EntryType::Regular,
            0o755,
            b"",
            b"#!busybox\x00\x01\x02",
        ),
        symlink(b"./usr/bin/sh", b"busybox"),
        hardlink(b"./usr/bin/ls", b"./usr/bin/busybox"),
        symlink(b"./bin", b"usr/bin"),
        (
            b"etc/passwd",
            EntryType::Regular,
            0o600,
            b"",
            b"root:x:0:0::/root:/bin/sh\n",
        ),
        symlink(b"etc/mtab", b"/proc/self/mounts"),
        symlink(b"etc/up", b"../usr"),
        // Implicit parents, and a read-only directory whose child comes after it.
        dir(b"ro", 0o555),
        file(b"ro/inner/f", b"inside a read-only dir"),
        dir(b"tmp", 0o1777),
        file(b"empty", b""),
    ])
}

fn check_good_tree(root: &Path) {
    let busybox = root.join("usr/bin/busybox");
    assert_eq!(fs::read(&busybox).unwrap(), b"#!busybox\x00\x01\x02");
    assert_eq!(mode_of(&busybox), 0o755);
    assert_eq!(fs::metadata(&busybox).unwrap().mtime(), MTIME as i64);
    assert_eq!(
        fs::read_link(root.join("usr/bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(
        fs::read_link(root.join("etc/mtab")).unwrap(),
        Path::new("/proc/self/mounts")
    );
    assert_eq!(
        fs::read_link(root.join("etc/up")).unwrap(),
        Path::new("../usr")
    );
    assert_eq!(
        fs::symlink_metadata(root.join("bin")).unwrap().mtime(),
        MTIME as i64
    );
    let ls = fs::metadata(root.join("usr/bin/ls")).unwrap();
    assert_eq!(ls.ino(), fs::metadata(&busybox).unwrap().ino());
    assert_eq!(ls.nlink(), 2);
    assert_eq!(
        fs::read(root.join("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(mode_of(&root.join("etc/passwd")), 0o600);
    assert_eq!(mode_of(&root.join("etc")), 0o755, "implicit parent");
    assert_eq!(mode_of(&root.join("ro")), 0o555);
    assert_eq!(fs::metadata(root.join("ro")).unwrap().mtime(), MTIME as i64);
    assert_eq!(
        fs::read(root.join("ro/inner/f")).unwrap(),
        b"inside a read-only dir"
    );
    assert_eq!(mode_of(&root.join("tmp")), 0o1777);
    assert_eq!(fs::read(root.join("empty")).unwrap(), b"");
    if nix::unistd::geteuid().is_root() {
        let m = fs::symlink_metadata(root.join("usr/bin/sh")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 2345));
        let m = fs::metadata(root.join("ro")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 2345));
    }
}

#[test]
fn unpacks_a_tree_in_every_compression() {
    let tar = good_tree();
    for c in ALL {
        let stored = compress(&tar, c);
        let expected = expected_for(&stored, c);
        let dest = TempDir::new().unwrap();
        let mut seen = Vec::new();
        let stats = unpack_tree(&stored[..], &expected, dest.path(), &limits(), &mut |n| {
            seen.push(n)
        })
        .unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(stats.stored_bytes, stored.len() as u64, "{c}");
        assert_eq!(stats.entries, 14, "{c}");
        assert_eq!(stats.unpacked_bytes, 12 + 26 + 22, "{c}");
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "{c}: progress goes backwards"
        );
        assert_eq!(seen.last(), Some(&(stored.len() as u64)), "{c}");
        check_good_tree(dest.path());
        unlock(dest.path());
    }
}

#[test]
fn root_entry_sets_the_destination_mode() {
    let tar = tar_of(&[dir(b"./", 0o750), file(b"a", b"x")]);
    let (dest, r) = unpack(&tar, Compression::None, &limits());
    r.unwrap();
    assert_eq!(mode_of(dest.path()), 0o750);
}

#[test]
fn compression_names() {
    for c in ALL {
        assert_eq!(Compression::parse(c.as_str()), Some(c));
    }
    assert_eq!(Compression::parse("lz4"), None);
    assert_eq!(Compression::parse("GZIP"), None);
    assert_eq!(Limits::default().max_unpacked_bytes, 64 << 30);
    assert_eq!(Limits::default().max_entries, 2_000_000);
    assert!(!Limits::default().allow_setuid);
}

#[test]
fn digest_hashes_and_counts() {
    let (sha1, size) = digest(&b"abc"[..]).unwrap();
    assert_eq!(sha1, "a9993e364706816aba3e25717850c26c9cd0d89d");
    assert_eq!(size, 3);
    let (sha1, size) = digest(io::repeat(7).take(200_000)).unwrap();
    assert_eq!(size, 200_000);
    assert_eq!(sha1.len(), 40);
}

#[test]
fn refuses_dotdot() {
    for name in [&b"../evil"[..], b"a/../../evil", b"./.."] {
        let (dest, e) = refused(&tar_of(&[(name, EntryType::Regular, 0o644, b"", b"x")]));
        assert!(matches!(e, ArchiveError::DotDot { .. }), "{e}");
        assert!(
            e.to_string().contains(&*String::from_utf8_lossy(name)),
            "{e}"
        );
        assert!(!dest.path().parent().unwrap().join("evil").exists());
    }
}

#[test]
fn refuses_absolute_paths() {
    let (_dest, e) = refused(&tar_of(&[file(b"/etc/evil", b"x")]));
    assert!(
        matches!(e, ArchiveError::AbsolutePath { ref path } if path == "/etc/evil"),
        "{e}"
    );
    assert!(!Path::new("/etc/evil").exists());
}

#[test]
fn refuses_empty_names() {
    let (_d, e) = refused(&tar_of(&[file(b"", b"x")]));
    assert!(matches!(e, ArchiveError::EmptyName), "{e}");
    // "." as a file is the root itself: only a directory may be that.
    let (_d, e) = refused(&tar_of(&[file(b".", b"x")]));
    assert!(matches!(e, ArchiveError::EmptyName), "{e}");
}

#[test]
fn refuses_nul_in_a_long_name() {
    // A GNU long name can carry bytes a plain header cannot: a NUL inside the name.
    let mut b = tar::Builder::new(Vec::new());
    let long = b"a\0b\0";
    b.append(
        &hdr(
            b"././@LongLink",
            EntryType::GNULongName,
            long.len() as u64,
            0o644,
            b"",
        ),
        &long[..],
    )
    .unwrap();
    b.append(
        &hdr(b"ignored", EntryType::Regular, 1, 0o644, b""),
        &b"x"[..],
    )
    .unwrap();
    let (_d, e) = refused(&b.into_inner().unwrap());
    assert!(matches!(e, ArchiveError::NulInName { .. }), "{e}");
}

#[test]
fn extension_headers_follow_the_same_rules() {
    // A pax `path` record with a '..' component.
    let record = b"16 path=../evil\n";
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &hdr(b"pax", EntryType::XHeader, record.len() as u64, 0o644, b""),
        &record[..],
    )
    .unwrap();
    b.append(
        &hdr(b"innocent", EntryType::Regular, 1, 0o644, b""),
        &b"x"[..],
    )
    .unwrap();
    let (_d, e) = refused(&b.into_inner().unwrap());
    assert!(
        matches!(e, ArchiveError::DotDot { ref path } if path == "../evil"),
        "{e}"
    );

    // A GNU long link name that climbs out of the root.
    let target = b"../../../../etc/passwd\0";
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &hdr(
            b"././@LongLink",
            EntryType::GNULongLink,
            target.len() as u64,
            0o644,
            b"",
        ),
        &target[..],
    )
    .unwrap();
    b.append(
        &hdr(b"a/b", EntryType::Symlink, 0, 0o777, b"short"),
        io::empty(),
    )
    .unwrap();
    let (_d, e) = refused(&b.into_inner().unwrap());
    assert!(
        matches!(e, ArchiveError::SymlinkEscape { ref target, .. } if target == "../../../../etc/passwd"),
        "{e}"
    );

    // A long name that is fine is used as the path.
    let name = format!("{}/file\0", "d".repeat(200));
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &hdr(
            b"././@LongLink",
            EntryType::GNULongName,
            name.len() as u64,
            0o644,
            b"",
        ),
        name.as_bytes(),
    )
    .unwrap();
    b.append(
        &hdr(b"short", EntryType::Regular, 2, 0o644, b""),
        &b"ok"[..],
    )
    .unwrap();
    let (dest, r) = unpack(&b.into_inner().unwrap(), Compression::None, &limits());
    r.unwrap();
    assert_eq!(
        fs::read(dest.path().join("d".repeat(200)).join("file")).unwrap(),
        b"ok"
    );
}

/// Fails after handing out some bytes.
struct Failing<'a>(&'a [u8]);

impl Read for Failing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the server went away",
            ));
        }
        let n = buf.len().min(self.0.len()).min(1000);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn reports_a_failing_source() {
    let tar = good_tree();
    for c in ALL {
        let stored = compress(&tar, c);
        let expected = expected_for(&stored, c);
        let dest = TempDir::new().unwrap();
        let e = unpack_tree(
            Failing(&stored[..stored.len() / 2]),
            &expected,
            dest.path(),
            &limits(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(e, ArchiveError::Read(ref io) if io.kind() == io::ErrorKind::ConnectionReset),
            "{c}: {e}"
        );
        unlock(dest.path());
        let out = dest.path().join("disk");
        let e = unpack_raw(
            Failing(&stored[..stored.len() / 2]),
            &expected,
            &out,
            &limits(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, ArchiveError::Read(_)), "{c}: {e}");
    }
}

#[test]
fn refuses_a_symlink_escaping_the_root() {
    let (_d, e) = refused(&tar_of(&[symlink(b"a/b", b"../../../etc/passwd")]));
    assert!(matches!(e, ArchiveError::SymlinkEscape { .. }), "{e}");
    assert!(
        e.to_string().contains("a/b") && e.to_string().contains("../../../etc/passwd"),
        "{e}"
    );
    // The same climb from deep enough stays inside and is fine.
    let (dest, r) = unpack(
        &tar_of(&[symlink(b"a/b/c/d", b"../../../etc/passwd")]),
        Compression::None,
        &limits(),
    );
    r.unwrap();
    assert!(
        fs::symlink_metadata(dest.path().join("a/b/c/d"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn refuses_writing_through_a_symlink() {
    let outside = TempDir::new().unwrap();
    let target = outside.path().as_os_str().as_encoded_bytes().to_vec();
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &hdr(b"link", EntryType::Symlink, 0, 0o777, &target),
        io::empty(),
    )
    .unwrap();
    b.append(
        &hdr(b"link/x", EntryType::Regular, 4, 0o644, b""),
        &b"evil"[..],
    )
    .unwrap();
    let (_d, e) = refused(&b.into_inner().unwrap());
    assert!(
        matches!(e, ArchiveError::ThroughSymlink { ref symlink, .. } if symlink == "link"),
        "{e}"
    );
    assert!(!outside.path().join("x").exists());

    // Through a symlink to a directory inside the tree too, and with the symlink deeper.
    let (_d, e) = refused(&tar_of(&[
        dir(b"d", 0o755),
        symlink(b"d/l", b".."),
        file(b"d/l/d/x", b"y"),
    ]));
    assert!(
        matches!(e, ArchiveError::ThroughSymlink { ref symlink, .. } if symlink == "d/l"),
        "{e}"
    );
    // A directory entry through a symlink as well.
    let (_d, e) = refused(&tar_of(&[symlink(b"l", b"/"), dir(b"l/etc", 0o755)]));
    assert!(matches!(e, ArchiveError::ThroughSymlink { .. }), "{e}");
}

#[test]
fn refuses_a_file_as_a_parent() {
    let (_d, e) = refused(&tar_of(&[file(b"f", b"x"), file(b"f/g", b"y")]));
    assert!(
        matches!(e, ArchiveError::ParentNotDirectory { ref parent, .. } if parent == "f"),
        "{e}"
    );
}

#[test]
fn refuses_bad_hard_links() {
    let cases: [(&[Spec], &str); 7] = [
        (&[hardlink(b"l", b"../outside")], "'..'"),
        (&[hardlink(b"l", b"/etc/passwd")], "absolute"),
        (&[hardlink(b"l", b"missing")], "not unpacked"),
        (
            &[
                file(b"d/f", b"x"),
                symlink(b"s", b"d"),
                hardlink(b"l", b"s/f"),
            ],
            "through a symlink",
        ),
        (&[dir(b"d", 0o755), hardlink(b"l", b"d")], "a directory"),
        (
            &[file(b"f", b"x"), symlink(b"s", b"f"), hardlink(b"l", b"s")],
            "is a symlink",
        ),
        (
            &[file(b"l", b"x"), hardlink(b"l", b"./l")],
            "the link itself",
        ),
    ];
    for (entries, why) in cases {
        let (_d, e) = refused(&tar_of(entries));
        assert!(matches!(e, ArchiveError::HardLink { .. }), "{e}");
        assert!(e.to_string().contains(why), "{e} (wanted {why})");
    }
    // A hard link created before its target exists is refused even if the target comes later.
    let (_d, e) = refused(&tar_of(&[hardlink(b"l", b"f"), file(b"f", b"x")]));
    assert!(matches!(e, ArchiveError::HardLink { .. }), "{e}");
}

#[test]
fn refuses_devices_and_fifos() {
    let (_d, e) = refused(&tar_of(&[(b"dev/null", EntryType::Char, 0o666, b"", b"")]));
    assert!(
        matches!(
            e,
            ArchiveError::Device {
                kind: "character",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("dev/null"), "{e}");
    let (_d, e) = refused(&tar_of(&[(b"dev/sda", EntryType::Block, 0o660, b"", b"")]));
    assert!(
        matches!(e, ArchiveError::Device { kind: "block", .. }),
        "{e}"
    );
    let (d, e) = refused(&tar_of(&[(b"fifo", EntryType::Fifo, 0o644, b"", b"")]));
    assert!(matches!(e, ArchiveError::Fifo { .. }), "{e}");
    assert!(!d.path().join("fifo").exists());
}

#[test]
fn refuses_other_entry_types() {
    let (_d, e) = refused(&tar_of(&[(
        b"weird",
        EntryType::new(b'Z'),
        0o644,
        b"",
        b"",
    )]));
    assert!(matches!(e, ArchiveError::UnsupportedEntry { .. }), "{e}");
    // (A crafted sparse header may already fail the tar crate's sparse parsing.)
    let (_d, e) = refused(&tar_of(&[(
        b"sparse",
        EntryType::GNUSparse,
        0o644,
        b"",
        b"",
    )]));
    assert!(
        matches!(
            e,
            ArchiveError::UnsupportedEntry { .. } | ArchiveError::Tar(_)
        ),
        "{e}"
    );
}

#[test]
fn setuid_files_only_when_allowed() {
    let tar = tar_of(&[
        (b"bin/su", EntryType::Regular, 0o4755, b"", b"su"),
        (b"bin/wall", EntryType::Regular, 0o2755, b"", b"wall"),
    ]);
    let (_d, e) = refused(&tar);
    assert!(
        matches!(e, ArchiveError::Setuid { mode: 0o4755, .. }),
        "{e}"
    );
    let allow = Limits {
        allow_setuid: true,
        ..limits()
    };
    let (dest, r) = unpack(&tar, Compression::None, &allow);
    r.unwrap();
    assert_eq!(mode_of(&dest.path().join("bin/su")), 0o4755);
    assert_eq!(mode_of(&dest.path().join("bin/wall")), 0o2755);
    // Setgid directories are not setgid files: kept.
    let (dest, r) = unpack(
        &tar_of(&[dir(b"var/mail", 0o2775)]),
        Compression::None,
        &limits(),
    );
    r.unwrap();
    assert_eq!(mode_of(&dest.path().join("var/mail")), 0o2775);
}

#[test]
fn refuses_a_gzip_bomb() {
    // 32 MiB of zeros in one entry: a few KiB of gzip.
    let size = 32u64 << 20;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    {
        let mut b = tar::Builder::new(&mut enc);
        b.append(
            &hdr(b"zeros", EntryType::Regular, size, 0o644, b""),
            io::repeat(0).take(size),
        )
        .unwrap();
        b.finish().unwrap();
    }
    let stored = enc.finish().unwrap();
    assert!(stored.len() < 64 << 10, "{} bytes", stored.len());
    let (dest, r) = unpack(&stored, Compression::Gzip, &limits());
    let e = r.unwrap_err();
    assert!(
        matches!(e, ArchiveError::TooLarge { limit } if limit == 1 << 20),
        "{e}"
    );
    // Refused from the header, before writing.
    assert!(!dest.path().join("zeros").exists());

    // Many small files adding up past the limit are refused too.
    let half = vec![1u8; 600 << 10];
    let mut b = tar::Builder::new(Vec::new());
    for name in [&b"a"[..], b"b"] {
        b.append(
            &hdr(name, EntryType::Regular, half.len() as u64, 0o644, b""),
            &half[..],
        )
        .unwrap();
    }
    let (_d, e) = refused(&b.into_inner().unwrap());
    assert!(matches!(e, ArchiveError::TooLarge { .. }), "{e}");
}

#[test]
fn refuses_too_many_entries() {
    let tar = tar_of(&[
        file(b"1", b""),
        file(b"2", b""),
        file(b"3", b""),
        file(b"4", b""),
    ]);
    let few = Limits {
        max_entries: 3,
        ..limits()
    };
    let (_d, r) = unpack(&tar, Compression::None, &few);
    let e = r.unwrap_err();
    assert!(
        matches!(e, ArchiveError::TooManyEntries { limit: 3 }),
        "{e}"
    );
    let (_d, r) = unpack(
        &tar,
        Compression::None,
        &Limits {
            max_entries: 4,
            ..limits()
        },
    );
    assert_eq!(r.unwrap().entries, 4);
}

#[test]
fn refuses_oversized_extended_headers() {
    // A pax header bigger than MAX_HEADER_BYTES: the tar crate would read it into memory.
    let size = MAX_HEADER_BYTES + 4096;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut b = tar::Builder::new(&mut enc);
        b.append(
            &hdr(b"pax", EntryType::XHeader, size, 0o644, b""),
            io::repeat(b'a').take(size),
        )
        .unwrap();
        b.append(&hdr(b"f", EntryType::Regular, 1, 0o644, b""), &b"x"[..])
            .unwrap();
        b.finish().unwrap();
    }
    let stored = enc.finish().unwrap();
    let big = Limits {
        max_unpacked_bytes: 1 << 30,
        ..limits()
    };
    let (_d, r) = unpack(&stored, Compression::Gzip, &big);
    let e = r.unwrap_err();
    assert!(matches!(e, ArchiveError::HeadersTooLarge { .. }), "{e}");
}

#[test]
fn refuses_truncated_compressed_streams() {
    let tar = good_tree();
    for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
        let stored = compress(&tar, c);
        let cut = &stored[..stored.len() - 10];
        // The manifest describes the whole file: the file is truncated.
        let (_d, r) = unpack_as(cut, &expected_for(&stored, c), &limits());
        let e = r.unwrap_err();
        assert!(
            matches!(e, ArchiveError::Truncated { expected, actual } if expected == stored.len() as u64 && actual == cut.len() as u64),
            "{c}: {e}"
        );
        // The manifest describes the truncated file: the stream itself is truncated.
        let (_d, r) = unpack(cut, c, &limits());
        let e = r.unwrap_err();
        assert!(
            matches!(e, ArchiveError::Decompress { compression, .. } if compression == c),
            "{c}: {e}"
        );
    }
}

#[test]
fn refuses_corrupt_compressed_streams() {
    let tar = good_tree();
    for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
        let mut stored = compress(&tar, c);
        let mid = stored.len() / 2;
        stored[mid] ^= 0x55;
        stored[mid + 1] ^= 0xaa;
        let (d, r) = unpack(&stored, c, &limits());
        let e = r.unwrap_err();
        assert!(
            matches!(
                e,
                ArchiveError::Decompress { .. }
                    | ArchiveError::Tar(_)
                    | ArchiveError::EntryTruncated { .. }
            ),
            "{c}: {e}"
        );
        unlock(d.path());
    }
    // Plain garbage with a gzip manifest.
    let (_d, r) = unpack(b"this is not gzip at all", Compression::Gzip, &limits());
    assert!(matches!(r.unwrap_err(), ArchiveError::Decompress { .. }));
}

#[test]
fn refuses_truncated_tars() {
    let tar = tar_of(&[file(b"a", b"hello"), file(b"b", &[7u8; 2000])]);
    // Without its end-of-archive blocks.
    let no_end = &tar[..tar.len() - 1024];
    let (_d, e) = refused(no_end);
    assert!(matches!(e, ArchiveError::TarTruncated), "{e}");
    // Cut in the middle of b's data.
    let short = &tar[..512 + 512 + 512 + 1000];
    let (_d, e) = refused(short);
    assert!(
        matches!(e, ArchiveError::EntryTruncated { ref path, expected: 2000, actual: 1000 } if path == "b"),
        "{e}"
    );
    // Cut in a header.
    let (_d, e) = refused(&tar[..512 + 512 + 100]);
    assert!(matches!(e, ArchiveError::Tar(_)), "{e}");
    // And through gzip, with a complete gzip stream around the short tar.
    let (_d, r) = unpack(
        &compress(short, Compression::Gzip),
        Compression::Gzip,
        &limits(),
    );
    assert!(matches!(
        r.unwrap_err(),
        ArchiveError::EntryTruncated { .. }
    ));
    // An empty file is not an empty archive.
    let (_d, e) = refused(b"");
    assert!(matches!(e, ArchiveError::TarTruncated), "{e}");
}

#[test]
fn refuses_a_checksum_mismatch() {
    let tar = good_tree();
    for c in ALL {
        let stored = compress(&tar, c);
        let mut expected = expected_for(&stored, c);
        let good = expected.sha1.clone();
        expected.sha1 = "0".repeat(40);
        let (d, r) = unpack_as(&stored, &expected, &limits());
        let e = r.unwrap_err();
        assert!(
            matches!(e, ArchiveError::ChecksumMismatch { ref actual, .. } if *actual == good),
            "{c}: {e}"
        );
        unlock(d.path());
    }
    // Upper-case hex in a manifest is the same sha1.
    let mut expected = expected_for(&tar, Compression::None);
    expected.sha1 = expected.sha1.to_uppercase();
    let (d, r) = unpack_as(&tar, &expected, &limits());
    r.unwrap();
    unlock(d.path());
}

/// Counts the bytes handed out.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[test]
fn refuses_a_file_longer_than_its_manifest() {
    let tar = good_tree();
    let mut expected = expected_for(&tar, Compression::None);
    // The manifest says the first 5000 bytes; the file goes on (a valid tar's worth of it).
    expected.size = 5000;
    let mut src = Counting {
        inner: &tar[..],
        read: 0,
    };
    let dest = TempDir::new().unwrap();
    let e = unpack_tree(&mut src, &expected, dest.path(), &limits(), &mut |_| {}).unwrap_err();
    assert!(matches!(e, ArchiveError::TooLong { expected: 5000 }), "{e}");
    assert!(
        src.read <= 5001,
        "read {} bytes past the manifest's size",
        src.read
    );

    // Bytes after the end of a valid archive count too.
    let mut longer = tar.clone();
    longer.extend_from_slice(&[0u8; 512]);
    let expected = expected_for(&tar, Compression::None);
    let (_d, r) = unpack_as(&longer, &expected, &limits());
    assert!(matches!(r.unwrap_err(), ArchiveError::TooLong { .. }));
}

#[test]
fn duplicate_entries() {
    // A later file replaces an earlier file, and a symlink.
    let tar = tar_of(&[
        file(b"f", b"old"),
        file(b"f", b"new"),
        symlink(b"s", b"/x"),
        file(b"s", b"file"),
    ]);
    let (dest, r) = unpack(&tar, Compression::None, &limits());
    r.unwrap();
    assert_eq!(fs::read(dest.path().join("f")).unwrap(), b"new");
    assert_eq!(fs::read(dest.path().join("s")).unwrap(), b"file");
    // A later symlink replaces a file, without touching what the file's hard links see.
    let tar = tar_of(&[
        file(b"f", b"data"),
        hardlink(b"h", b"f"),
        symlink(b"f", b"h"),
    ]);
    let (dest, r) = unpack(&tar, Compression::None, &limits());
    r.unwrap();
    assert_eq!(
        fs::read_link(dest.path().join("f")).unwrap(),
        Path::new("h")
    );
    assert_eq!(fs::read(dest.path().join("h")).unwrap(), b"data");
    // A later directory merges with an earlier one and its mode wins.
    let tar = tar_of(&[
        dir(b"d", 0o700),
        file(b"d/a", b""),
        dir(b"d", 0o750),
        file(b"d/b", b""),
    ]);
    let (dest, r) = unpack(&tar, Compression::None, &limits());
    r.unwrap();
    assert_eq!(mode_of(&dest.path().join("d")), 0o750);
    assert!(dest.path().join("d/a").exists() && dest.path().join("d/b").exists());
    // A directory is never replaced by a file, nor a file by a directory.
    let (_d, e) = refused(&tar_of(&[
        dir(b"d", 0o755),
        file(b"d/keep", b""),
        file(b"d", b"x"),
    ]));
    assert!(
        matches!(
            e,
            ArchiveError::Conflict {
                existing: "directory",
                new: "file",
                ..
            }
        ),
        "{e}"
    );
    let (_d, e) = refused(&tar_of(&[file(b"f", b"x"), dir(b"f", 0o755)]));
    assert!(
        matches!(
            e,
            ArchiveError::Conflict {
                existing: "file",
                new: "directory",
                ..
            }
        ),
        "{e}"
    );
    let (_d, e) = refused(&tar_of(&[symlink(b"s", b"/"), dir(b"s", 0o755)]));
    assert!(
        matches!(
            e,
            ArchiveError::Conflict {
                existing: "symlink",
                ..
            }
        ),
        "{e}"
    );
    let (_d, e) = refused(&tar_of(&[dir(b"d", 0o755), symlink(b"d", b"/")]));
    assert!(
        matches!(e, ArchiveError::Conflict { new: "symlink", .. }),
        "{e}"
    );
}

#[test]
fn refuses_a_destination_that_is_not_a_directory() {
    let tmp = TempDir::new().unwrap();
    let f = tmp.path().join("f");
    fs::write(&f, b"").unwrap();
    let tar = good_tree();
    let e = unpack_tree(
        &tar[..],
        &expected_for(&tar, Compression::None),
        &f,
        &limits(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::Write { .. }), "{e}");
    // Nor one that is not empty: what is there could pass for unpacked entries.
    fs::remove_file(&f).unwrap();
    fs::write(tmp.path().join("target"), b"host file").unwrap();
    let tar = tar_of(&[hardlink(b"l", b"target")]);
    let e = unpack_tree(
        &tar[..],
        &expected_for(&tar, Compression::None),
        tmp.path(),
        &limits(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("could not write"), "{e}");
    assert!(!tmp.path().join("l").exists());
}

/// 8 MiB, mostly zero: data at the start, at 4 MiB + 4 KiB, and 1 MiB of zeros at the end.
pub(super) fn disk_image() -> Vec<u8> {
    let mut disk = vec![0u8; 8 << 20];
    disk[..4096].fill(0xeb);
    disk[(4 << 20) + 4096 + 17] = 1;
    disk[(7 << 20) - 1] = 0x55;
    disk
}

#[test]
fn unpacks_a_raw_disk_sparse() {
    let disk = disk_image();
    for c in ALL {
        let stored = compress(&disk, c);
        let expected = expected_for(&stored, c);
        let tmp = TempDir::new().unwrap();
        let out = tmp.path().join("disk.raw");
        let mut last = 0;
        let stats = unpack_raw(&stored[..], &expected, &out, &limits_raw(), &mut |n| {
            last = n
        })
        .unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(
            stats,
            Stats {
                stored_bytes: stored.len() as u64,
                unpacked_bytes: disk.len() as u64,
                entries: 0
            }
        );
        assert_eq!(last, stored.len() as u64);
        let meta = fs::metadata(&out).unwrap();
        assert_eq!(meta.len(), disk.len() as u64, "{c}");
        assert!(fs::read(&out).unwrap() == disk, "{c}: content differs");
        // Three 4 KiB blocks of data: allow for filesystem allocation granularity.
        assert!(
            meta.blocks() * 512 <= 256 << 10,
            "{c}: {} bytes allocated",
            meta.blocks() * 512
        );
    }
}

pub(super) fn limits_raw() -> Limits {
    Limits {
        max_unpacked_bytes: 16 << 20,
        ..limits()
    }
}

#[test]
fn raw_refusals() {
    let disk = disk_image();
    let tmp = TempDir::new().unwrap();
    // Bigger than the limit (a bomb: 8 MiB of mostly zeros from a few KiB of gzip).
    let stored = compress(&disk, Compression::Gzip);
    let small = Limits {
        max_unpacked_bytes: 1 << 20,
        ..limits()
    };
    let e = unpack_raw(
        &stored[..],
        &expected_for(&stored, Compression::Gzip),
        &tmp.path().join("a"),
        &small,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::TooLarge { .. }), "{e}");
    // An existing destination, or a symlink in its place, is never written.
    let existing = tmp.path().join("exists");
    fs::write(&existing, b"keep").unwrap();
    let e = unpack_raw(
        &stored[..],
        &expected_for(&stored, Compression::Gzip),
        &existing,
        &limits_raw(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::Write { .. }), "{e}");
    assert_eq!(fs::read(&existing).unwrap(), b"keep");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), &link).unwrap();
    let e = unpack_raw(
        &stored[..],
        &expected_for(&stored, Compression::Gzip),
        &link,
        &limits_raw(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::Write { .. }), "{e}");
    assert!(!tmp.path().join("elsewhere").exists());
    // Checksum, truncation, length and stream errors as for trees.
    let mut expected = expected_for(&stored, Compression::Gzip);
    expected.sha1 = "f".repeat(40);
    let e = unpack_raw(
        &stored[..],
        &expected,
        &tmp.path().join("b"),
        &limits_raw(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::ChecksumMismatch { .. }), "{e}");
    let cut = &stored[..stored.len() - 4];
    let e = unpack_raw(
        cut,
        &expected_for(&stored, Compression::Gzip),
        &tmp.path().join("c"),
        &limits_raw(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::Truncated { .. }), "{e}");
    let e = unpack_raw(
        cut,
        &expected_for(cut, Compression::Gzip),
        &tmp.path().join("d"),
        &limits_raw(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::Decompress { .. }), "{e}");
    let mut expected = expected_for(&stored, Compression::Gzip);
    expected.size -= 100;
    let e = unpack_raw(
        &stored[..],
        &expected,
        &tmp.path().join("e"),
        &limits_raw(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::TooLong { .. }), "{e}");
}

/// A source tree with every kind pack_tree keeps, and a FIFO it skips.
fn source_tree(root: &Path) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("etc/ro")).unwrap();
    fs::write(root.join("usr/bin/busybox"), b"busybox binary").unwrap();
    fs::set_permissions(
        root.join("usr/bin/busybox"),
        fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    fs::hard_link(root.join("usr/bin/busybox"), root.join("usr/bin/ls")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("usr/bin/sh")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute", root.join("etc/dangling")).unwrap();
    let long = "l".repeat(150);
    fs::write(root.join("etc").join(&long), vec![9u8; 70_000]).unwrap();
    fs::write(root.join("etc/ro/f"), b"in ro").unwrap();
    fs::set_permissions(root.join("etc/ro"), fs::Permissions::from_mode(0o555)).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
}

/// (path, kind, mode, content or link target, mtime) of everything under `root`.
fn listing(root: &Path, rel: &Path, out: &mut Vec<(String, char, u32, Vec<u8>, i64)>) {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let child = rel.join(&n);
        let host = root.join(&child);
        let m = fs::symlink_metadata(&host).unwrap();
        let ft = m.file_type();
        let shown = child.to_string_lossy().into_owned();
        if ft.is_dir() {
            out.push((shown, 'd', m.mode() & 0o7777, Vec::new(), m.mtime()));
            listing(root, &child, out);
        } else if ft.is_symlink() {
            let t = fs::read_link(&host)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes();
            out.push((shown, 'l', 0, t, m.mtime()));
        } else if ft.is_file() {
            out.push((
                shown,
                'f',
                m.mode() & 0o7777,
                fs::read(&host).unwrap(),
                m.mtime(),
            ));
        } else {
            out.push((shown, '?', 0, Vec::new(), 0));
        }
    }
}

#[test]
fn pack_then_unpack_round_trips() {
    let src = TempDir::new().unwrap();
    source_tree(src.path());
    let mut want = Vec::new();
    listing(src.path(), Path::new(""), &mut want);
    want.retain(|e| e.0 != "fifo");
    assert_eq!(want.len(), 11);
    for c in ALL {
        let mut stored = Vec::new();
        let size = pack_tree(src.path(), c, &mut stored).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(size, stored.len() as u64, "{c}");
        let (dest, r) = unpack(&stored, c, &limits());
        let stats = r.unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(stats.entries, 11, "{c}");
        let mut got = Vec::new();
        listing(dest.path(), Path::new(""), &mut got);
        assert_eq!(got, want, "{c}");
        let a = fs::metadata(dest.path().join("usr/bin/busybox")).unwrap();
        let b = fs::metadata(dest.path().join("usr/bin/ls")).unwrap();
        assert_eq!(a.ino(), b.ino(), "{c}: hard link lost");
        unlock(dest.path());
    }
    unlock(src.path());
}

#[test]
fn pack_tree_handles_a_deep_tree() {
    let src = TempDir::new().unwrap();
    let mut deep = src.path().to_path_buf();
    for _ in 0..300 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), b"bottom").unwrap();
    let mut stored = Vec::new();
    pack_tree(src.path(), Compression::Zstd, &mut stored).unwrap();
    let (dest, r) = unpack(&stored, Compression::Zstd, &limits());
    assert_eq!(r.unwrap().entries, 301);
    let rel = deep.strip_prefix(src.path()).unwrap();
    assert_eq!(
        fs::read(dest.path().join(rel).join("leaf")).unwrap(),
        b"bottom"
    );
}

#[test]
fn pack_tree_reports_a_missing_root() {
    let tmp = TempDir::new().unwrap();
    let e = pack_tree(&tmp.path().join("nope"), Compression::None, io::sink()).unwrap_err();
    assert!(matches!(e, ArchiveError::Pack { .. }), "{e}");
}

fn sha256_of(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex(&sha2::Sha256::digest(data)))
}

/// `expected` naming `stored` by its sha256 digests only (stored and decompressed: `plain`),
/// as an OCI layer is.
fn layer_expected(stored: &[u8], plain: &[u8], compression: Compression) -> Expected {
    Expected {
        sha1: String::new(),
        size: stored.len() as u64,
        digest: Some(sha256_of(stored)),
        uncompressed_digest: Some(sha256_of(plain)),
        compression,
    }
}

/// A parent layer's tree: files, a directory with children, a symlink.
fn parent_tree() -> TempDir {
    let d = TempDir::new().unwrap();
    let base = tar_of(&[
        dir(b"etc/", 0o755),
        file(b"etc/passwd", b"root\n"),
        file(b"etc/gone", b"x"),
        dir(b"var/", 0o755),
        dir(b"var/cache/", 0o755),
        file(b"var/cache/old1", b"1"),
        file(b"var/cache/old2", b"2"),
        dir(b"opt/", 0o755),
        file(b"opt/tool", b"tool"),
        file(b"was-file", b"f"),
        symlink(b"bin", b"usr/bin"),
    ]);
    unpack_tree_unchecked(&base[..], d.path(), &limits()).unwrap();
    d
}

#[test]
fn layer_whiteouts_remove_what_the_layers_below_hold() {
    let layer = tar_of(&[
        file(b"etc/.wh.gone", b""),
        file(b"var/cache/new", b"n"),
        file(b"var/cache/.wh..wh..opq", b""),
        file(b".wh.opt", b""),
        dir(b"was-file/", 0o755),
        file(b"was-file/inside", b"i"),
        file(b"bin", b"now a file"),
        file(b"etc/passwd", b"root\nuser\n"),
    ]);
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let d = parent_tree();
        let t = d.path();
        let stored = compress(&layer, c);
        let stats = unpack_layer_onto(
            &stored[..],
            &layer_expected(&stored, &layer, c),
            t,
            &limits(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(stats.entries, 8);
        assert!(!t.join("etc/gone").exists());
        assert!(!t.join("etc/.wh.gone").exists());
        assert_eq!(fs::read(t.join("etc/passwd")).unwrap(), b"root\nuser\n");
        let cache: Vec<_> = fs::read_dir(t.join("var/cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            cache,
            vec![std::ffi::OsString::from("new")],
            "opaque dir keeps only this layer's"
        );
        assert!(
            t.join("opt").symlink_metadata().is_err(),
            "a whited-out directory goes whole"
        );
        assert_eq!(fs::read(t.join("was-file/inside")).unwrap(), b"i");
        assert!(t.join("bin").symlink_metadata().unwrap().is_file());
    }
}

#[test]
fn layer_is_refused_on_a_wrong_digest_or_an_escape() {
    let d = parent_tree();
    let layer = tar_of(&[file(b"etc/motd", b"hi")]);
    let mut e = layer_expected(&layer, &layer, Compression::None);
    e.digest = Some(format!("sha256:{}", "0".repeat(64)));
    let err = unpack_layer_onto(&layer[..], &e, d.path(), &limits(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("sha256:0000"), "{err}");
    // The stored bytes right, the decompressed ones not what the diff_id says.
    let stored = compress(&layer, Compression::Gzip);
    let mut e = layer_expected(&stored, &layer, Compression::Gzip);
    e.uncompressed_digest = Some(sha256_of(b"another layer"));
    let err = unpack_layer_onto(&stored[..], &e, d.path(), &limits(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, ArchiveError::UncompressedDigestMismatch { .. }),
        "{err}"
    );
    // A whiteout through the symlink `bin` must not reach outside.
    let layer = tar_of(&[file(b"bin/.wh.x", b"")]);
    let e = layer_expected(&layer, &layer, Compression::None);
    let err = unpack_layer_onto(&layer[..], &e, d.path(), &limits(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::ThroughSymlink { .. }), "{err}");
    for bad in [&b"../.wh.x"[..], b"etc/.wh.", b"etc/.wh..."] {
        let mut b = tar::Builder::new(Vec::new());
        let h = hdr(bad, EntryType::Regular, 0, 0o644, b"");
        b.append(&h, &b""[..]).unwrap();
        let layer = b.into_inner().unwrap();
        let e = layer_expected(&layer, &layer, Compression::None);
        assert!(unpack_layer_onto(&layer[..], &e, d.path(), &limits(), &mut |_| {}).is_err());
    }
    // Neither a sha1 nor a digest: refused.
    let layer = tar_of(&[file(b"a", b"a")]);
    let mut e = layer_expected(&layer, &layer, Compression::None);
    e.digest = None;
    let err = unpack_layer_onto(&layer[..], &e, d.path(), &limits(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::NoChecksum(_)), "{err}");
}
