use std::io::Read;

use super::*;

fn header(sections: Vec<Section>) -> Header {
    Header {
        version: VERSION,
        uuid: Uuid::nil(),
        guests_dir: "/a/guests".into(),
        images_dir: "/a/images".into(),
        sections,
        since: None,
    }
}

fn section(kind: SectionKind) -> Section {
    Section {
        kind,
        index: None,
        size: None,
    }
}

/// A stream of a record, a 2 MiB root body (two full chunks and a partial one) and an
/// empty data body.
fn sample() -> (Vec<u8>, Vec<Vec<u8>>) {
    let bodies = vec![
        br#"{"uuid":"x"}"#.to_vec(),
        (0..(2 << 20) + 17).map(|i| (i % 251) as u8).collect(),
        Vec::new(),
    ];
    let kinds = [SectionKind::Record, SectionKind::Root, SectionKind::Data];
    let h = header(kinds.iter().map(|k| section(*k)).collect());
    let mut w = Writer::new(Vec::new(), &h).expect("header");
    for (k, b) in kinds.iter().zip(&bodies) {
        w.section(&section(*k), |out| out.write_all(b))
            .expect("section");
    }
    (w.finish().expect("finish"), bodies)
}

/// Reads a whole stream, returning every body, or the first error.
fn read_all(bytes: &[u8]) -> Result<Vec<Vec<u8>>, StreamError> {
    let mut r = Reader::open(bytes)?;
    let mut out = Vec::new();
    while r.next_section()?.is_some() {
        let mut b = Vec::new();
        r.body().read_to_end(&mut b).map_err(unwrap_stream_error)?;
        out.push(b);
    }
    Ok(out)
}

#[test]
fn a_stream_reads_back_as_written() {
    let (bytes, bodies) = sample();
    assert_eq!(read_all(&bytes).expect("read"), bodies);
}

#[test]
fn a_body_left_unread_is_still_verified() {
    let (bytes, _) = sample();
    let mut r = Reader::open(&bytes[..]).expect("open");
    while r.next_section().expect("section").is_some() {}
    // A flipped byte in the unread root body is still found.
    let mut bad = bytes.clone();
    let at = bytes.len() / 2;
    bad[at] ^= 1;
    let mut r = Reader::open(&bad[..]).expect("open");
    let err = loop {
        match r.next_section() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a corrupt stream was accepted"),
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn every_cut_is_refused() {
    let (bytes, _) = sample();
    // Every prefix: the header, the section boundaries, inside chunks, the end marker.
    let mut cuts: Vec<usize> = (0..200).collect();
    cuts.extend((200..bytes.len()).step_by(16411));
    cuts.extend(bytes.len() - 40..bytes.len());
    for cut in cuts {
        let err = read_all(&bytes[..cut]).expect_err(&format!("cut at {cut} accepted"));
        assert!(
            matches!(err, StreamError::Truncated(_)),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn flipped_bytes_extra_bytes_and_reordering_are_refused() {
    let (bytes, _) = sample();
    for at in (0..bytes.len()).step_by(bytes.len() / 97) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        assert!(read_all(&bad).is_err(), "flip at {at} accepted");
    }
    let mut extra = bytes.clone();
    extra.push(0);
    let err = read_all(&extra).expect_err("extra byte");
    assert!(err.to_string().contains("follow its end"), "{err}");
    // A section the header does not list there.
    let h = header(vec![section(SectionKind::Record)]);
    let mut w = Writer::new(Vec::new(), &h).expect("header");
    w.section(&section(SectionKind::Root), |out| out.write_all(b"x"))
        .expect("section");
    let err = read_all(&w.finish().expect("finish")).expect_err("unlisted");
    assert!(
        err.to_string().contains("not the one its header lists"),
        "{err}"
    );
    // Fewer sections than listed.
    let h = header(vec![
        section(SectionKind::Record),
        section(SectionKind::Root),
    ]);
    let mut w = Writer::new(Vec::new(), &h).expect("header");
    w.section(&section(SectionKind::Record), |out| out.write_all(b"x"))
        .expect("section");
    let err = read_all(&w.finish().expect("finish")).expect_err("missing");
    assert!(err.to_string().contains("1 of the 2 sections"), "{err}");
}

#[test]
fn not_a_stream_and_other_versions_are_named() {
    let err = read_all(b"GARBAGE!and more").expect_err("garbage");
    assert!(err.to_string().contains("hull send stream"), "{err}");
    let (mut bytes, _) = sample();
    bytes[11] = 2;
    let err = read_all(&bytes).expect_err("version");
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn extents_keep_holes_and_refuse_what_lies_outside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let size: u64 = 64 << 20;
    {
        let f = std::fs::File::create(&src).expect("create");
        f.set_len(size).expect("size");
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).expect("write");
        f.write_all_at(&vec![7u8; 3 << 20], 20 << 20)
            .expect("write");
        f.write_all_at(b"tail", size - 4).expect("write");
    }
    let mut enc = Vec::new();
    let sent = write_extents(&src, &mut enc).expect("extents");
    assert!(sent < 8 << 20, "holes were sent: {sent} bytes");
    let dst = dir.path().join("dst");
    read_extents(&mut &enc[..], &dst, size).expect("read");
    assert_eq!(
        std::fs::read(&src).expect("src"),
        std::fs::read(&dst).expect("dst")
    );
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(&dst).expect("meta").blocks() * 512;
    assert!(
        blocks < 16 << 20,
        "the copy is not sparse: {blocks} bytes allocated"
    );
    // An extent past the disk's size.
    let mut bad = Vec::new();
    bad.extend_from_slice(&(size - 2).to_be_bytes());
    bad.extend_from_slice(&4u64.to_be_bytes());
    bad.extend_from_slice(b"abcd");
    bad.extend_from_slice(&u64::MAX.to_be_bytes());
    bad.extend_from_slice(&size.to_be_bytes());
    let err = read_extents(&mut &bad[..], &dir.path().join("x"), size).expect_err("outside");
    assert!(err.to_string().contains("outside"), "{err}");
    // An end record that names another size.
    let mut bad = Vec::new();
    bad.extend_from_slice(&u64::MAX.to_be_bytes());
    bad.extend_from_slice(&1u64.to_be_bytes());
    let err = read_extents(&mut &bad[..], &dir.path().join("y"), size).expect_err("size");
    assert!(err.to_string().contains("size"), "{err}");
}
