//! The vmlinux inside a bzImage, decompressed once so that guests need not do it at every
//! boot.
//!
//! A distribution's vmlinuz is a bzImage: real-mode setup code, then a decompressor and the
//! kernel, compressed. Booted as it is, every VM first runs that decompressor: Debian's 6.1
//! kernel spends ~5 s of its 8.5 s nested boot here in it (its 8 MiB xz payload becomes a
//! 64 MiB ELF), and ~0.5 s on hardware. The ELF boots through the same 64-bit entry with the
//! same zero page (`boot::load`), which is how Firecracker boots x86 kernels. vmmd keeps one
//! extracted copy per kernel file (`vmm --extract-vmlinux`).
//!
//! The input is untrusted (a kernel may come from an image): the header is checked field by
//! field, the output is capped at [`MAX_VMLINUX`], and the CLI runs the decompressor under a
//! seccomp filter that allows nothing but reading and writing its open files.

use std::io::Write;

/// The largest vmlinux accepted; distribution kernels are 40-70 MiB.
pub const MAX_VMLINUX: u64 = 512 << 20;

/// How the payload is compressed (the formats distributions use; lz4, lzma, lzo and bzip2
/// kernels boot as bzImages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
}

/// Why there is nothing to extract, or extracting failed.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Not a bzImage with a payload this module decompresses: boot the file as it is.
    #[error("nothing to extract: {0}")]
    NotExtractable(String),
    #[error("the bzImage's payload is damaged: {0}")]
    Damaged(String),
    #[error("the payload decompresses to more than {} MiB", MAX_VMLINUX >> 20)]
    TooLarge,
    #[error("cannot write the vmlinux")]
    Write(#[source] std::io::Error),
}

/// The compressed kernel inside `image`, if it is a bzImage (boot protocol 2.08 or later,
/// which records the payload's place) with a gzip, xz or zstd payload.
pub fn payload(image: &[u8]) -> Result<(Compression, &[u8]), ExtractError> {
    let not = |why: &str| ExtractError::NotExtractable(why.to_string());
    let u16_at = |o: usize| {
        image
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if image.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(not("no bzImage header (HdrS)"));
    }
    let version = u16_at(0x206).ok_or_else(|| not("short header"))?;
    if version < 0x208 {
        return Err(not("boot protocol before 2.08 has no payload fields"));
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = u32_at(0x248).ok_or_else(|| not("short header"))? as usize;
    let length = u32_at(0x24c).ok_or_else(|| not("short header"))? as usize;
    let start = (setup_sects + 1)
        .checked_mul(512)
        .and_then(|s| s.checked_add(offset))
        .ok_or_else(|| not("payload offset overflows"))?;
    let data = start
        .checked_add(length)
        .and_then(|end| image.get(start..end))
        .ok_or_else(|| not("payload outside the file"))?;
    let kind = if data.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        return Err(not(
            "payload compressed with a format other than gzip, xz or zstd",
        ));
    };
    Ok((kind, data))
}

/// Why the writer side of [`extract`] stopped the decompressor.
#[derive(Debug)]
enum Stop {
    NotElf,
    TooLarge,
    Write(std::io::Error),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Stop {}

/// Passes the decompressed bytes on, checking the ELF header first and the size always.
struct Checked<'a> {
    out: &'a mut dyn Write,
    head: Vec<u8>,
    total: u64,
}

impl Checked<'_> {
    fn stop(s: Stop) -> std::io::Error {
        std::io::Error::other(s)
    }

    /// ELF magic, 64-bit, little-endian, executable, x86-64.
    fn elf(h: &[u8]) -> bool {
        h.starts_with(b"\x7fELF")
            && h[4] == 2
            && h[5] == 1
            && u16::from_le_bytes([h[16], h[17]]) == 2
            && u16::from_le_bytes([h[18], h[19]]) == 62
    }
}

impl Write for Checked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.total += buf.len() as u64;
        if self.total > MAX_VMLINUX {
            return Err(Self::stop(Stop::TooLarge));
        }
        if self.head.len() < 20 {
            let take = buf.len().min(20 - self.head.len());
            self.head.extend_from_slice(&buf[..take]);
            if self.head.len() == 20 && !Self::elf(&self.head) {
                return Err(Self::stop(Stop::NotElf));
            }
        }
        self.out
            .write_all(buf)
            .map_err(|e| Self::stop(Stop::Write(e)))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush().map_err(|e| Self::stop(Stop::Write(e)))
    }
}

/// Decompresses `image`'s payload into `out`, checking that it is an x86-64 ELF; returns
/// its size. The decoders are pure Rust (no C in the `vmm` binary). The kernel build appends
/// the uncompressed size after an xz or zstd stream; those 4 bytes are not part of it.
pub fn extract(image: &[u8], out: &mut dyn Write) -> Result<u64, ExtractError> {
    let (kind, data) = payload(image)?;
    let mut sink = Checked {
        out,
        head: Vec::with_capacity(20),
        total: 0,
    };
    let stream = match kind {
        Compression::Gzip => data,
        Compression::Xz | Compression::Zstd => &data[..data.len().saturating_sub(4)],
    };
    let result: Result<(), std::io::Error> = match kind {
        Compression::Gzip => {
            std::io::copy(&mut flate2::read::GzDecoder::new(stream), &mut sink).map(|_| ())
        }
        Compression::Xz => {
            std::io::copy(&mut liblzma::read::XzDecoder::new(stream), &mut sink).map(|_| ())
        }
        Compression::Zstd => ruzstd::decoding::StreamingDecoder::new(stream)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|mut d| std::io::copy(&mut d, &mut sink).map(|_| ())),
    };
    if let Err(e) = result {
        return Err(match e.get_ref().and_then(|i| i.downcast_ref::<Stop>()) {
            Some(Stop::TooLarge) => ExtractError::TooLarge,
            Some(Stop::NotElf) => {
                ExtractError::Damaged("it does not decompress to an x86-64 ELF kernel".into())
            }
            Some(Stop::Write(w)) => {
                ExtractError::Write(std::io::Error::new(w.kind(), w.to_string()))
            }
            None => ExtractError::Damaged(e.to_string()),
        });
    }
    if sink.head.len() < 20 {
        return Err(ExtractError::Damaged(
            "it does not decompress to an x86-64 ELF kernel".into(),
        ));
    }
    sink.flush().map_err(ExtractError::Write)?;
    Ok(sink.total)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An x86-64 ELF header and some body.
    pub fn fake_elf(len: usize) -> Vec<u8> {
        let mut e = vec![0u8; len];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[16..18].copy_from_slice(&2u16.to_le_bytes());
        e[18..20].copy_from_slice(&62u16.to_le_bytes());
        for (i, b) in e.iter_mut().enumerate().skip(64) {
            *b = (i * 7 % 251) as u8;
        }
        e
    }

    fn compress(kind: Compression, data: &[u8]) -> Vec<u8> {
        match kind {
            Compression::Gzip => {
                let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            Compression::Xz => {
                let mut w = liblzma::write::XzEncoder::new(Vec::new(), 1);
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
        }
    }

    /// A bzImage-shaped file: 2 setup sectors plus the boot sector, then the payload at
    /// `payload_offset` into the protected-mode part, with the size the kernel appends.
    pub fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 3 * 512];
        img[0x1f1] = 2;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        let offset = 0x40u32;
        img[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
        img.resize(3 * 512 + offset as usize, 0x90);
        img.extend_from_slice(payload);
        img.extend_from_slice(&0x1234u32.to_le_bytes());
        img
    }

    #[test]
    fn each_format_gives_back_the_elf() {
        let elf = fake_elf(300_000);
        for kind in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let image = fake_bzimage(&compress(kind, &elf));
            assert_eq!(payload(&image).unwrap().0, kind);
            let mut out = Vec::new();
            assert_eq!(
                extract(&image, &mut out).unwrap(),
                elf.len() as u64,
                "{kind:?}"
            );
            assert_eq!(out, elf, "{kind:?}");
        }
    }

    #[test]
    fn other_files_have_nothing_to_extract() {
        let not = |img: &[u8]| matches!(payload(img), Err(ExtractError::NotExtractable(_)));
        assert!(not(&fake_elf(4096)));
        assert!(not(b"short"));
        // An lz4 payload (images/kernel's) boots as a bzImage.
        assert!(not(&fake_bzimage(&[0x02, 0x21, 0x4c, 0x18, 0, 0])));
        // Old boot protocol, payload past the end of the file.
        let mut old = fake_bzimage(&compress(Compression::Gzip, &fake_elf(100)));
        old[0x206..0x208].copy_from_slice(&0x207u16.to_le_bytes());
        assert!(not(&old));
        let mut past = fake_bzimage(&compress(Compression::Gzip, &fake_elf(100)));
        past[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(not(&past));
    }

    #[test]
    fn damaged_or_foreign_payloads_are_refused() {
        let mut bad = compress(Compression::Xz, &fake_elf(10_000));
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let e = extract(&fake_bzimage(&bad), &mut Vec::new()).unwrap_err();
        assert!(matches!(e, ExtractError::Damaged(_)), "{e}");
        // Decompresses fine, but to something that is not an x86-64 kernel.
        let text = compress(Compression::Zstd, &[b'x'; 5000]);
        let e = extract(&fake_bzimage(&text), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("x86-64 ELF"), "{e}");
    }

    #[test]
    fn a_payload_that_decompresses_past_the_cap_is_stopped() {
        // 600 MiB of zeros behind an ELF header compress to about 0.6 MiB with zstd.
        let mut w = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        w.write_all(&fake_elf(64)).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..600 {
            w.write_all(&zeros).unwrap();
        }
        let bomb = w.finish().unwrap();
        let mut sink = std::io::sink();
        let e = extract(&fake_bzimage(&bomb), &mut sink).unwrap_err();
        assert!(matches!(e, ExtractError::TooLarge), "{e}");
    }
}
