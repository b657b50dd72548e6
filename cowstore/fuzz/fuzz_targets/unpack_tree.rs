//! Untrusted image bytes through `unpack_tree` (and `unpack_raw`): any input may be refused,
//! none may panic, and none may write outside the destination or create a device or FIFO.
//!
//! Run from cowstore/fuzz (its own workspace, nightly):
//!     cargo +nightly fuzz run unpack_tree -- -max_total_time=60
//! Seeds worth adding to corpus/unpack_tree: small tar files (`tar cf - dir`), gzip-compressed
//! ones. The first input byte picks the mode, the rest is the file:
//!   mode % 4 == 0: the bytes as an uncompressed tar;
//!   mode % 4 == 1: the bytes as a gzip stream (decoder and tar behind it);
//!   mode % 4 == 2: the bytes gzip-compressed here, then unpacked as gzip (the tar parser
//!                  through the gzip path);
//!   mode % 4 == 3: the bytes as a raw disk image (none, or gzip when bit 2 is set).
//! Bit 3 makes the manifest's size one byte short, bit 4 allows setuid files. The manifest's
//! sha1 is always right, so the input reaches the layers behind the checksum. Limits are
//! small (1 MiB, 64 entries) so bombs are cut short quickly.
#![no_main]

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use hull_cowstore::archive::{Compression, Expected, Limits, digest, unpack_raw, unpack_tree};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let gzipped;
    let (stored, compression): (&[u8], Compression) = match mode % 4 {
        0 => (body, Compression::None),
        1 => (body, Compression::Gzip),
        2 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).expect("writing to a Vec");
            gzipped = e.finish().expect("writing to a Vec");
            (&gzipped[..], Compression::Gzip)
        }
        _ if mode & 4 != 0 => (body, Compression::Gzip),
        _ => (body, Compression::None),
    };
    let (sha1, mut size) = digest(stored).expect("reading a slice");
    if mode & 8 != 0 {
        size = size.saturating_sub(1);
    }
    let expected = Expected {
        sha1,
        size,
        compression,
    };
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 64,
        allow_setuid: mode & 16 != 0,
    };
    let parent = tempfile::tempdir().expect("a tempdir");
    let dest = parent.path().join("root");
    let result = if mode % 4 == 3 {
        unpack_raw(stored, &expected, &dest, &limits, &mut |_| {}).map(|_| ())
    } else {
        fs::create_dir(&dest).expect("the destination");
        unpack_tree(stored, &expected, &dest, &limits, &mut |_| {}).map(|_| ())
    };
    if let Err(e) = &result {
        // Messages and cause chains must render.
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            text.push_str(&c.to_string());
            cause = c.source();
        }
        assert!(!text.is_empty());
    }
    // Nothing next to the destination, and nothing special inside it.
    let siblings: Vec<_> = fs::read_dir(parent.path())
        .expect("read the tempdir")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert!(
        siblings.len() <= 1,
        "wrote outside the destination: {siblings:?}"
    );
    if dest.is_dir() {
        check_tree(&dest);
    }
});

fn check_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let meta = fs::symlink_metadata(&path).expect("metadata of an unpacked entry");
        let ft = meta.file_type();
        assert!(
            !(ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket()),
            "special file unpacked: {path:?}"
        );
        if ft.is_dir() {
            check_tree(&path);
        }
    }
}
