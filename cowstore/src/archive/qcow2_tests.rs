//! qcow2 disk images, made by QEMU's own qemu-img (qemu-utils), installed as raw disks; and
//! hostile ones, qemu-img's files with their header or tables bent.

use std::fs;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use super::tests::{ALL, compress, disk_image, expected_for, limits_raw};
use super::*;

/// Runs qemu-img (the peer that writes these files); the test machine has it (qemu-utils).
fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("qemu-img (Debian's qemu-utils) is needed: {e}"));
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test disk converted by qemu-img with `opts` (qcow2 creation options, `-c` for
/// compressed clusters).
fn qcow2_of(dir: &Path, name: &str, disk: &[u8], opts: &[&str]) -> Vec<u8> {
    let raw = dir.join(format!("{name}.raw"));
    let q = dir.join(format!("{name}.qcow2"));
    fs::write(&raw, disk).unwrap();
    let (raw_s, q_s) = (raw.to_str().unwrap(), q.to_str().unwrap());
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[raw_s, q_s]);
    qemu_img(&args);
    fs::read(&q).unwrap()
}

fn install(stored: &[u8], c: Compression, dir: &Path, name: &str) -> Result<Stats, ArchiveError> {
    unpack_raw(
        stored,
        &expected_for(stored, c),
        &dir.join(name),
        &limits_raw(),
        &mut |_| {},
    )
}

#[test]
fn qcow2_files_install_as_the_raw_disk() {
    let disk = disk_image();
    let tmp = TempDir::new().unwrap();
    let variants: [(&str, &[&str]); 5] = [
        ("v3", &[]),
        ("v2", &["-o", "compat=0.10"]),
        ("small-clusters", &["-o", "cluster_size=4096"]),
        ("deflate", &["-c"]),
        ("zstd", &["-c", "-o", "compression_type=zstd"]),
    ];
    for (name, opts) in variants {
        let q = qcow2_of(tmp.path(), name, &disk, opts);
        for c in ALL {
            let stored = compress(&q, c);
            let out = format!("{name}-{c}.img");
            let stats =
                install(&stored, c, tmp.path(), &out).unwrap_or_else(|e| panic!("{name} {c}: {e}"));
            assert_eq!(stats.unpacked_bytes, disk.len() as u64, "{name} {c}");
            assert_eq!(stats.stored_bytes, stored.len() as u64, "{name} {c}");
            assert!(
                fs::read(tmp.path().join(&out)).unwrap() == disk,
                "{name} {c}: the raw disk differs from the one qemu-img converted"
            );
            assert!(
                !tmp.path().join(format!("{out}.qcow2")).exists(),
                "{name} {c}: the spool file is left"
            );
        }
    }
}

#[test]
fn a_disk_with_an_odd_size_keeps_it() {
    // Not a multiple of the cluster: the last cluster is cut at the disk's end.
    let mut disk = disk_image();
    disk.truncate((5 << 20) + 1536);
    let tmp = TempDir::new().unwrap();
    let q = qcow2_of(tmp.path(), "odd", &disk, &[]);
    install(&q, Compression::None, tmp.path(), "odd.img").unwrap();
    assert!(fs::read(tmp.path().join("odd.img")).unwrap() == disk);
}

/// A change made to a good qcow2 file.
type Bend = Box<dyn Fn(&mut Vec<u8>)>;

fn put_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_be64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn be64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// What installing `q` (uncompressed) says; the destination is the caller's to remove, but
/// the spool must be gone.
fn refusal(dir: &Path, name: &str, q: &[u8]) -> String {
    let e = install(q, Compression::None, dir, name).unwrap_err();
    assert!(
        !dir.join(format!("{name}.qcow2")).exists(),
        "{name}: the spool file is left"
    );
    e.to_string()
        + ": "
        + &std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
}

#[test]
fn hostile_qcow2_files_are_refused_by_name() {
    let disk = disk_image();
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    let good = qcow2_of(d, "good", &disk, &[]);
    let l1_offset = be64_at(&good, 40) as usize;
    let first_l2 = (be64_at(&good, l1_offset) & 0x00ff_ffff_ffff_fe00) as usize;

    // A backing file: a real one, made by qemu-img.
    let base = d.join("good.qcow2");
    let over = d.join("over.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        over.to_str().unwrap(),
    ]);
    let e = refusal(d, "backing", &fs::read(&over).unwrap());
    assert!(e.contains("backing file"), "{e}");

    let cases: Vec<(&str, Bend, &str)> = vec![
        ("version", Box::new(|q| put_be32(q, 4, 4)), "version 4"),
        ("encrypted", Box::new(|q| put_be32(q, 32, 1)), "encrypted"),
        (
            "cluster-bits",
            Box::new(|q| put_be32(q, 20, 40)),
            "cluster_bits 40",
        ),
        (
            "huge",
            Box::new(|q| put_be64(q, 24, 1 << 50)),
            "above the 16777216-byte limit",
        ),
        (
            "corrupt",
            Box::new(|q| put_be64(q, 72, 2)),
            "marked corrupt",
        ),
        (
            "data-file",
            Box::new(|q| put_be64(q, 72, 4)),
            "external file",
        ),
        ("ext-l2", Box::new(|q| put_be64(q, 72, 16)), "extended L2"),
        (
            "unknown",
            Box::new(|q| put_be64(q, 72, 1 << 40)),
            "unknown incompatible",
        ),
        (
            "l1-outside",
            Box::new(|q| put_be64(q, 40, 1 << 40)),
            "past the end of the file",
        ),
        (
            "l1-short",
            Box::new(|q| put_be32(q, 36, 0)),
            "L1 table has 0 entries",
        ),
        (
            "l2-outside",
            Box::new(move |q| put_be64(q, l1_offset, 1 << 45)),
            "past the end",
        ),
        (
            "data-outside",
            Box::new(move |q| put_be64(q, first_l2, (1 << 63) | (1 << 44))),
            "past the end of the file",
        ),
        (
            "data-unaligned",
            Box::new(move |q| put_be64(q, first_l2, (1 << 63) | 0x10200)),
            "unaligned",
        ),
        (
            "compressed-garbage",
            Box::new(move |q| {
                let at = be64_at(q, first_l2) & 0x00ff_ffff_ffff_fe00;
                put_be64(q, first_l2, (1 << 62) | at);
            }),
            "compressed cluster 0",
        ),
        ("truncated", Box::new(|q| q.truncate(300)), "past the end"),
    ];
    for (name, bend, says) in cases {
        let mut q = good.clone();
        bend(&mut q);
        let e = refusal(d, name, &q);
        assert!(e.contains("qcow2"), "{name}: {e}");
        assert!(e.contains(says), "{name}: {e} (wanted {says:?})");
    }
    // Not qcow2 at all: a raw disk that merely starts like one past its first bytes.
    let mut raw = disk.clone();
    raw[..3].copy_from_slice(b"QFI");
    install(&raw, Compression::None, d, "raw.img").unwrap();
    assert!(fs::read(d.join("raw.img")).unwrap() == raw);
}
