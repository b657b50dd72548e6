//! `vmm --find-boot`: the real binary on disks built by the real tools (mkfs.ext4 -d,
//! sfdisk), as vmmd runs it before starting a guest that boots its disk's own kernel.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hull_vmm_proto::FoundBoot;
use hull_vmm_proto::found::{BOOT, INITRD, KERNEL};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
const VERSION: &str = "6.1.0-28-cloud-amd64";

/// An x86-64 ELF header and a body of `len` bytes in all: what the VMM boots.
fn elf(len: usize) -> Vec<u8> {
    let mut e: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[16..18].copy_from_slice(&2u16.to_le_bytes());
    e[18..20].copy_from_slice(&62u16.to_le_bytes());
    e
}

fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A GPT disk (1 MiB BIOS boot partition, then the rest ext4) whose ext4 holds `tree`.
fn gpt_disk(dir: &Path, tree: &Path) -> PathBuf {
    let fs_img = dir.join("root.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(tree)
        .arg(&fs_img)
        .arg("24M"));
    let disk = dir.join("disk.img");
    let f = fs::File::create(&disk).unwrap();
    f.set_len(27 << 20).unwrap();
    drop(f);
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: gpt\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\n\
              start=4096, size=49152, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        )
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let bytes = fs::read(&fs_img).unwrap();
    use std::os::unix::fs::FileExt;
    fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(&bytes, 4096 * 512)
        .unwrap();
    disk
}

fn find_boot(disk: &Path, out: &Path) -> Output {
    fs::create_dir_all(out).unwrap();
    Command::new(VMM)
        .arg("--find-boot")
        .arg(disk)
        .arg("--boot-out")
        .arg(out)
        .output()
        .unwrap()
}

fn grub_cfg(kernel: &str) -> String {
    format!(
        "set default=0\nmenuentry 'Debian GNU/Linux' --id debian {{\n\
         \tlinux {kernel} root=UUID=0f5d2c5f-4a53-4bd5-9a8e-37bd1f3b5a4e ro console=tty0 \
         console=ttyS0,115200\n\tinitrd /boot/initrd.img-{VERSION}\n}}\n"
    )
}

#[test]
fn the_disk_s_default_entry_is_written_with_its_kernel_and_initrd() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    let kernel = elf(300_000);
    let initrd: Vec<u8> = (0..70_001u32).map(|i| (i % 253) as u8).collect();
    put(&tree, &format!("boot/vmlinuz-{VERSION}"), &kernel);
    put(&tree, &format!("boot/initrd.img-{VERSION}"), &initrd);
    put(
        &tree,
        "boot/grub/grub.cfg",
        grub_cfg(&format!("/boot/vmlinuz-{VERSION}")).as_bytes(),
    );
    let disk = gpt_disk(d.path(), &tree);
    let out = d.path().join("out");
    let o = find_boot(&disk, &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("/boot/grub/grub.cfg on partition 2 of the boot disk boots"),
        "{stderr}"
    );
    assert_eq!(fs::read(out.join(KERNEL)).unwrap(), kernel);
    assert_eq!(fs::read(out.join(INITRD)).unwrap(), initrd);
    let found: FoundBoot = serde_json::from_slice(&fs::read(out.join(BOOT)).unwrap()).unwrap();
    assert_eq!(found.partition, 2);
    assert_eq!(found.kernel_format, "ELF x86-64");
    assert_eq!(found.title, "Debian GNU/Linux");
    assert_eq!(
        found.cmdline(),
        format!(
            "BOOT_IMAGE=/boot/vmlinuz-{VERSION} root=UUID=0f5d2c5f-4a53-4bd5-9a8e-37bd1f3b5a4e ro \
             console=tty0 console=ttyS0,115200 console=ttyS0 reboot=k pci=off"
        )
    );
    // The outputs are new files: a second search into the same directory is refused.
    let again = find_boot(&disk, &out);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("cannot create"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// Each hostile or unbootable disk: exit status 1, a last stderr line naming the problem,
/// and no boot record.
#[test]
fn disks_that_name_nothing_bootable_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let case = |name: &str, tree: &dyn Fn(&Path)| -> String {
        let dir = d.path().join(name);
        let root = dir.join("tree");
        fs::create_dir_all(&root).unwrap();
        tree(&root);
        let disk = gpt_disk(&dir, &root);
        let out = dir.join("out");
        let o = find_boot(&disk, &out);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(
            fs::read(out.join(BOOT)).unwrap_or_default(),
            b"",
            "{name}: a boot record was written"
        );
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    };
    let script = case("script", &|t| {
        put(t, "boot/vmlinuz", b"#!/bin/sh\necho not a kernel\n");
        put(
            t,
            "boot/grub/grub.cfg",
            grub_cfg("/boot/vmlinuz").as_bytes(),
        );
        put(t, &format!("boot/initrd.img-{VERSION}"), b"x");
    });
    assert!(
        script.contains(
            "the kernel /boot/vmlinuz named by /boot/grub/grub.cfg is not a Linux kernel"
        ),
        "{script}"
    );
    let pci_only = case("pci-only", &|t| {
        put(t, &format!("boot/vmlinuz-{VERSION}"), &elf(4096));
        put(
            t,
            &format!("boot/config-{VERSION}"),
            b"CONFIG_VIRTIO_PCI=y\n# CONFIG_VIRTIO_MMIO is not set\nCONFIG_VIRTIO_BLK=y\n",
        );
        put(t, &format!("boot/initrd.img-{VERSION}"), b"x");
        put(
            t,
            "boot/grub/grub.cfg",
            grub_cfg(&format!("/boot/vmlinuz-{VERSION}")).as_bytes(),
        );
    });
    assert!(
        pci_only.contains(&format!(
            "the kernel /boot/vmlinuz-{VERSION} named by /boot/grub/grub.cfg is built without \
             CONFIG_VIRTIO_MMIO"
        )),
        "{pci_only}"
    );
    let outside = case("symlink", &|t| {
        put(t, "etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n");
        fs::create_dir_all(t.join("boot")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", t.join("boot/vmlinuz")).unwrap();
        put(
            t,
            "boot/grub/grub.cfg",
            grub_cfg("/boot/vmlinuz").as_bytes(),
        );
        put(t, &format!("boot/initrd.img-{VERSION}"), b"x");
    });
    assert!(outside.contains("is not a Linux kernel"), "{outside}");
    let long_line = case("long-line", &|t| {
        let mut cfg = grub_cfg("/boot/vmlinuz");
        cfg.push_str(&format!("# {}\n", "x".repeat(1 << 20)));
        put(t, "boot/grub/grub.cfg", cfg.as_bytes());
    });
    assert!(
        long_line.contains("/boot/grub/grub.cfg on partition 2"),
        "{long_line}"
    );
    assert!(long_line.contains("longer than"), "{long_line}");
    let none = case("no-config", &|t| put(t, "etc/hostname", b"web\n"));
    assert!(
        none.contains("no /boot/grub/grub.cfg or loader entries on any ext4, FAT or xfs partition"),
        "{none}"
    );
    assert!(none.contains("1 BIOS boot, 1 ext4"), "{none}");
}

#[test]
fn a_disk_that_is_not_there_or_too_short_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let o = find_boot(&d.path().join("missing.img"), &d.path().join("out"));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot open the boot disk"));
    let tiny = d.path().join("tiny.img");
    fs::write(&tiny, b"short").unwrap();
    let o = find_boot(&tiny, &d.path().join("out2"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the boot disk names no kernel"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
