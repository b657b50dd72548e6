//! `vmm --find-boot DISK --boot-out DIR`: the kernel a guest's own boot disk names, found as
//! pvgrub finds it (hull-bootdisk reads the partition table, the filesystem holding /boot and
//! GRUB's or the loader entries' default), checked to be a kernel this VMM boots, and written
//! to `DIR` for the caller (the [`hull_vmm_proto::found`] contract). The disk is the guest's:
//! every byte of it is untrusted, so `main` runs this with the disk and the three outputs
//! already open, no capabilities and a seccomp filter that allows reading at an offset and
//! writing the open files ([`crate::seccomp::ThreadRole::FindBoot`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use hull_bootdisk::{BootDiskError, Limits, find_boot};
use hull_vmm_proto::FoundBoot;

/// Why a boot disk gives nothing to boot.
#[derive(Debug, thiserror::Error)]
pub enum FindBootError {
    #[error("the boot disk names no kernel this VMM can boot")]
    Disk(#[source] BootDiskError),
    #[error("the kernel {path} named by {config} is {why}")]
    NotAKernel {
        path: String,
        config: String,
        why: String,
    },
    #[error("cannot write the {what} found on the boot disk")]
    Write {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A disk file of a size taken once, before confinement: reads are `pread`s and nothing
/// else (no `fstat` per read).
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    len: u64,
}

impl DiskFile {
    /// `file` with its size (a block device's from seeking to its end).
    pub fn new(file: File) -> io::Result<DiskFile> {
        let meta = file.metadata()?;
        let len = match meta.is_file() {
            true => meta.len(),
            false => {
                use std::io::{Seek, SeekFrom};
                let mut f = &file;
                f.seek(SeekFrom::End(0))?
            }
        };
        Ok(DiskFile { file, len })
    }
}

impl hull_bootdisk::Disk for DiskFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.file.read_exact_at(buf, offset),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} bytes at byte {offset} lie past the end of the disk ({} bytes)",
                    buf.len(),
                    self.len
                ),
            )),
        }
    }
}

/// The open outputs of one search (see [`hull_vmm_proto::found`]).
#[derive(Debug)]
pub struct BootOut {
    pub kernel: File,
    pub initrd: File,
    pub boot: File,
}

/// What `image` is, when this VMM can boot it: a bzImage with a 64-bit entry point or an
/// x86-64 ELF. Anything else is named, so that the guest's record says what was found.
pub fn kernel_format(image: &[u8]) -> Result<&'static str, String> {
    let u16_at = |off: usize| {
        image
            .get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    if image.starts_with(b"\x7fELF") {
        let class = image.get(4).copied();
        return match (class, u16_at(18)) {
            (Some(2), Some(62)) => Ok("ELF x86-64"),
            (Some(1), Some(3)) => Err("a 32-bit x86 ELF, not x86-64".into()),
            (_, Some(machine)) => Err(format!("an ELF for machine {machine}, not x86-64")),
            (_, None) => Err("a truncated ELF header".into()),
        };
    }
    if image.get(0x202..0x206) == Some(b"HdrS".as_slice()) {
        let version = u16_at(0x206).unwrap_or(0);
        if version < 0x020c {
            return Err(format!(
                "a bzImage of boot protocol {}.{:02}, older than 2.12 (no 64-bit entry point \
                 is declared)",
                version >> 8,
                version & 0xff
            ));
        }
        // xloadflags bit 0, XLF_KERNEL_64: the kernel has the 64-bit entry at +0x200.
        return match u16_at(0x236).unwrap_or(0) & 1 {
            1 => Ok("bzImage, 64-bit entry"),
            _ => Err("a 32-bit bzImage (no 64-bit entry point)".into()),
        };
    }
    if image.get(0x38..0x3c) == Some(b"ARM\x64".as_slice()) {
        return Err("an arm64 Linux kernel, not x86-64".into());
    }
    if image.starts_with(b"MZ") {
        return Err(
            "a PE/EFI executable with no Linux boot header (an EFI application such \
                    as a boot loader), not a Linux kernel"
                .into(),
        );
    }
    if image.starts_with(&[0x1f, 0x8b]) {
        return Err("gzip-compressed data, not a kernel image".into());
    }
    if image.is_empty() {
        return Err("an empty file".into());
    }
    Err("not a Linux kernel: it has neither a bzImage header nor an ELF header".into())
}

/// What the kernel's build config (the `config-<ver>` beside it, when the disk has one) says
/// against booting it here: hull's VMM has virtio devices on MMIO only (no PCI bus).
pub fn config_refusal(config: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(config);
    let set = |name: &str| {
        text.lines().any(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|v| v == "y" || v == "m")
        })
    };
    if !text.lines().any(|l| l.starts_with("CONFIG_")) {
        return None;
    }
    if !set("CONFIG_VIRTIO_MMIO") {
        return Some(
            "built without CONFIG_VIRTIO_MMIO (says the config-<version> beside it): it finds \
             virtio devices on PCI only, and hull's VMM has them on MMIO"
                .into(),
        );
    }
    if !set("CONFIG_VIRTIO_BLK") {
        return Some(
            "built without CONFIG_VIRTIO_BLK (says the config-<version> beside it): it cannot \
             read its virtio disk"
                .into(),
        );
    }
    None
}

/// Finds what `disk` says to boot within `limits`, checks the kernel and writes the kernel,
/// the initrd and the [`FoundBoot`] record (last) to `out`.
pub fn find(
    disk: &dyn hull_bootdisk::Disk,
    limits: &Limits,
    out: BootOut,
) -> Result<FoundBoot, FindBootError> {
    let found = find_boot(disk, limits).map_err(FindBootError::Disk)?;
    let kernel_format = kernel_format(&found.kernel).map_err(|why| FindBootError::NotAKernel {
        path: found.entry.kernel.clone(),
        config: found.config.clone(),
        why,
    })?;
    if let Some(why) = found.kernel_config.as_deref().and_then(config_refusal) {
        return Err(FindBootError::NotAKernel {
            path: found.entry.kernel.clone(),
            config: found.config.clone(),
            why,
        });
    }
    let write = |mut f: File, what, bytes: &[u8]| {
        f.write_all(bytes)
            .and_then(|()| f.flush())
            .map_err(|source| FindBootError::Write { what, source })
    };
    write(out.kernel, "kernel", &found.kernel)?;
    write(
        out.initrd,
        "initrd",
        found.initrd.as_deref().unwrap_or_default(),
    )?;
    let record = FoundBoot {
        config: found.config,
        partition: found.partition,
        title: found.entry.title,
        kernel: found.entry.kernel,
        kernel_partition: found.kernel_partition,
        kernel_format: kernel_format.to_owned(),
        initrd: found.entry.initrd,
        options: found.entry.options,
    };
    let json = serde_json::to_vec(&record).map_err(|e| FindBootError::Write {
        what: "boot record",
        source: e.into(),
    })?;
    write(out.boot, "boot record", &json)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::vmlinux::tests::{fake_bzimage, fake_elf};

    #[test]
    fn kernel_configs_without_virtio_mmio_or_blk_are_refused() {
        let debian = b"#\n# Linux/x86 6.1.0 Kernel Configuration\nCONFIG_VIRTIO_PCI=m\n\
            CONFIG_VIRTIO_MMIO=m\n# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\nCONFIG_VIRTIO_BLK=m\n";
        assert_eq!(config_refusal(debian), None);
        let pci_only =
            b"CONFIG_VIRTIO_PCI=y\n# CONFIG_VIRTIO_MMIO is not set\nCONFIG_VIRTIO_BLK=y\n";
        assert!(
            config_refusal(pci_only)
                .unwrap()
                .contains("without CONFIG_VIRTIO_MMIO"),
        );
        // A prefix of another option is not the option.
        let mmio_cmdline_only = b"CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_VIRTIO_BLK=y\n";
        assert!(config_refusal(mmio_cmdline_only).is_some());
        let no_blk = b"CONFIG_VIRTIO_MMIO=y\n# CONFIG_VIRTIO_BLK is not set\n";
        assert!(
            config_refusal(no_blk)
                .unwrap()
                .contains("CONFIG_VIRTIO_BLK")
        );
        // Not a config at all: nothing to say.
        assert_eq!(config_refusal(b"\x7fELF garbage"), None);
    }

    #[test]
    fn kernels_this_vmm_boots_are_told_from_everything_else() {
        assert_eq!(kernel_format(&fake_elf(256)), Ok("ELF x86-64"));
        let mut bz = fake_bzimage(b"payload");
        assert_eq!(
            kernel_format(&bz),
            Err("a 32-bit bzImage (no 64-bit entry point)".into())
        );
        let mut old = bz.clone();
        old[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        assert!(
            kernel_format(&old)
                .unwrap_err()
                .contains("2.07, older than 2.12")
        );
        bz[0x236] = 1;
        assert_eq!(kernel_format(&bz), Ok("bzImage, 64-bit entry"));
        let mut arm = vec![0u8; 64];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert!(kernel_format(&arm).unwrap_err().contains("arm64"));
        let mut elf32 = fake_elf(64);
        elf32[4] = 1;
        elf32[18..20].copy_from_slice(&3u16.to_le_bytes());
        assert!(
            kernel_format(&elf32)
                .unwrap_err()
                .contains("32-bit x86 ELF")
        );
        let mut riscv = fake_elf(64);
        riscv[18..20].copy_from_slice(&243u16.to_le_bytes());
        assert!(kernel_format(&riscv).unwrap_err().contains("machine 243"));
        assert!(kernel_format(b"MZ\x90\x00").unwrap_err().contains("PE/EFI"));
        assert!(
            kernel_format(&[0x1f, 0x8b, 8, 0])
                .unwrap_err()
                .contains("gzip")
        );
        assert!(
            kernel_format(b"#!/bin/sh\n")
                .unwrap_err()
                .contains("not a Linux kernel")
        );
        assert_eq!(kernel_format(b""), Err("an empty file".into()));
    }
}
