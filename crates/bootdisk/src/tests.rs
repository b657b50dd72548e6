//! Disks built by the real tools (mkfs.ext4 -d, sfdisk, e2fsck -D), read back byte for byte.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

const UUID: &str = "0f5d2c5f-4a53-4bd5-9a8e-37bd1f3b5a4e";
const NEW: &str = "6.1.0-28-cloud-amd64";
const OLD: &str = "6.1.0-27-cloud-amd64";
const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Deterministic bytes that no block of which is all zeros.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (e2fsprogs and util-linux are needed)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel.trim_start_matches('/'));
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, bytes).expect("write");
}

fn link(root: &Path, rel: &str, target: &str) {
    let path = root.join(rel.trim_start_matches('/'));
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    symlink(target, path).expect("symlink");
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// An ext4 image of `size` (mkfs's syntax, e.g. `32M`) holding `root`.
fn mkfs(dir: &Path, root: &Path, size: &str, extra: &[&str]) -> Vec<u8> {
    let img = dir.join(format!("fs{}.img", SEQ.fetch_add(1, Ordering::Relaxed)));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0"])
        .args(extra)
        .arg("-d")
        .arg(root)
        .arg(&img)
        .arg(size));
    fs::read(&img).expect("read image")
}

struct Part<'a> {
    number: u32,
    start: u64,
    sectors: u64,
    kind: &'a str,
    fs: Option<&'a [u8]>,
}

/// A disk file of `mib` MiB with a `label` (gpt or dos) table written by sfdisk and each
/// partition's filesystem copied in.
fn disk(dir: &Path, mib: u64, label: &str, parts: &[Part<'_>]) -> PathBuf {
    let path = dir.join(format!("disk{}.img", SEQ.fetch_add(1, Ordering::Relaxed)));
    File::create(&path)
        .and_then(|f| f.set_len(mib << 20))
        .expect("create disk");
    let mut script = format!("label: {label}\n");
    for p in parts {
        script.push_str(&format!(
            "{}{} : start={}, size={}, type={}\n",
            path.display(),
            p.number,
            p.start,
            p.sectors,
            p.kind
        ));
    }
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sfdisk");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    let out = child.wait_with_output().expect("sfdisk");
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = File::options().write(true).open(&path).expect("open disk");
    for p in parts {
        if let Some(bytes) = p.fs {
            assert!(
                bytes.len() as u64 <= p.sectors * 512,
                "filesystem larger than partition"
            );
            f.write_all_at(bytes, p.start * 512)
                .expect("copy filesystem");
        }
    }
    path
}

fn debian_grub_cfg(prefix: &str) -> String {
    let entry = |title: &str, id: &str, ver: &str, extra: &str, indent: &str| {
        format!(
            "{indent}menuentry '{title}' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option '{id}' {{
{indent}	load_video
{indent}	insmod gzio
{indent}	if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
{indent}	insmod part_gpt
{indent}	insmod ext2
{indent}	search --no-floppy --fs-uuid --set=root {UUID}
{indent}	echo	'Loading Linux {ver} ...'
{indent}	linux	{prefix}/vmlinuz-{ver} root=UUID={UUID} ro {extra} console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0
{indent}	echo	'Loading initial ramdisk ...'
{indent}	initrd	{prefix}/initrd.img-{ver}
{indent}}}
"
        )
    };
    let mut cfg = format!(
        r#"#
# DO NOT EDIT THIS FILE
#
# It is automatically generated by grub-mkconfig using templates
# from /etc/grub.d and settings from /etc/default/grub
#

### BEGIN /etc/grub.d/00_header ###
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${{next_entry}}" ] ; then
   set default="${{next_entry}}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi

if [ x"${{feature_menuentry_id}}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi

export menuentry_id_option

if [ "${{prev_saved_entry}}" ]; then
  set saved_entry="${{prev_saved_entry}}"
  save_env saved_entry
  set prev_saved_entry=
  save_env prev_saved_entry
  set boot_once=true
fi

function savedefault {{
  if [ -z "${{boot_once}}" ]; then
    saved_entry="${{chosen}}"
    save_env saved_entry
  fi
}}
function load_video {{
  if [ x$feature_all_video_module = xy ]; then
    insmod all_video
  else
    insmod efi_gop
    insmod ieee1275_fb
    insmod vbe
    insmod vga
    insmod video_bochs
    insmod video_cirrus
  fi
}}

if [ x$feature_default_font_path = xy ] ; then
   font=unicode
else
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root {UUID}
    font="/usr/share/grub/unicode.pf2"
fi

if loadfont $font ; then
  set gfxmode=auto
  load_video
  insmod gfxterm
fi
terminal_input console serial
terminal_output gfxterm serial
if [ "${{timeout}}" = 0 ]; then
  set timeout=1
fi
### END /etc/grub.d/00_header ###

### BEGIN /etc/grub.d/10_linux ###
function gfxmode {{
	set gfxpayload="${{1}}"
	if [ "${{1}}" = "keep" ]; then
		set vt_handoff=vt.handoff=7
	else
		set vt_handoff=
	fi
}}
set linux_gfx_mode=
export linux_gfx_mode
"#
    );
    cfg += &entry(
        "Debian GNU/Linux",
        &format!("gnulinux-simple-{UUID}"),
        NEW,
        "",
        "",
    );
    cfg += &format!(
        "submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-{UUID}' {{\n"
    );
    for ver in [NEW, OLD] {
        cfg += &entry(
            &format!("Debian GNU/Linux, with Linux {ver}"),
            &format!("gnulinux-{ver}-advanced-{UUID}"),
            ver,
            "",
            "\t",
        );
        cfg += &entry(
            &format!("Debian GNU/Linux, with Linux {ver} (recovery mode)"),
            &format!("gnulinux-{ver}-recovery-{UUID}"),
            ver,
            "single",
            "\t",
        );
    }
    cfg += "}\n\n### END /etc/grub.d/10_linux ###\n\n### BEGIN /etc/grub.d/41_custom ###\nif [ -f  ${config_directory}/custom.cfg ]; then\n  source ${config_directory}/custom.cfg\nfi\n### END /etc/grub.d/41_custom ###\n";
    cfg
}

fn options(extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{extra} ")
    };
    format!(
        "root=UUID={UUID} ro {extra}console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"
    )
}

struct Kernels {
    new_kernel: Vec<u8>,
    new_initrd: Vec<u8>,
    old_kernel: Vec<u8>,
    old_initrd: Vec<u8>,
}

fn kernels() -> Kernels {
    Kernels {
        new_kernel: pattern(1, 300 * 1024 + 123),
        new_initrd: pattern(2, 200 * 1024 + 7),
        old_kernel: pattern(3, 280 * 1024),
        old_initrd: pattern(4, 190 * 1024 + 1),
    }
}

/// A Debian root tree: /boot with two kernels, grub.cfg (default `default`) and the
/// /vmlinuz and /initrd.img links.
fn debian_root(root: &Path, k: &Kernels, default: &str) {
    put(root, &format!("boot/vmlinuz-{NEW}"), &k.new_kernel);
    put(root, &format!("boot/initrd.img-{NEW}"), &k.new_initrd);
    put(root, &format!("boot/vmlinuz-{OLD}"), &k.old_kernel);
    put(root, &format!("boot/initrd.img-{OLD}"), &k.old_initrd);
    let cfg = debian_grub_cfg("/boot")
        .replace("set default=\"0\"", &format!("set default=\"{default}\""));
    put(root, "boot/grub/grub.cfg", cfg.as_bytes());
    let mut env = b"# GRUB Environment Block\n".to_vec();
    env.resize(1024, b'#');
    put(root, "boot/grub/grubenv", &env);
    put(root, "etc/debian_version", b"12.8\n");
    link(root, "vmlinuz", &format!("boot/vmlinuz-{NEW}"));
    link(root, "initrd.img", &format!("/boot/initrd.img-{NEW}"));
    link(root, "boot/grub/kernel", &format!("../vmlinuz-{NEW}"));
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn open_file(path: &Path) -> File {
    File::open(path).expect("open")
}

#[test]
fn crc32_check_value() {
    assert_eq!(crc::crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc::crc32(b""), 0);
}

/// Debian genericcloud's layout: root is partition 1 at the end, BIOS boot 14, ESP 15.
fn debian_gpt_disk(dir: &Path, k: &Kernels, default: &str) -> PathBuf {
    let root = dir.join("root");
    debian_root(&root, k, default);
    let rootfs = mkfs(dir, &root, "24M", &[]);
    disk(
        dir,
        32,
        "gpt",
        &[
            Part {
                number: 14,
                start: 2048,
                sectors: 2048,
                kind: BIOS_BOOT,
                fs: Some(&[0xEB; 4096]),
            },
            Part {
                number: 15,
                start: 4096,
                sectors: 8192,
                kind: ESP,
                fs: None,
            },
            Part {
                number: 1,
                start: 12288,
                sectors: 24 * 2048,
                kind: LINUX_FS,
                fs: Some(&rootfs),
            },
        ],
    )
}

#[test]
fn gpt_debian_cloud_layout() {
    let dir = tmp();
    let k = kernels();
    let path = debian_gpt_disk(dir.path(), &k, "0");
    let file = open_file(&path);

    let parts = partitions(&file).expect("partitions");
    let got: Vec<(u32, u64, u64)> = parts.iter().map(|p| (p.index, p.start, p.len)).collect();
    assert_eq!(
        got,
        vec![
            (1, 12288 * 512, 24 << 20),
            (14, 2048 * 512, 1 << 20),
            (15, 4096 * 512, 4 << 20)
        ]
    );
    assert_eq!(parts[1].type_guid, Some(BIOS_BOOT_GUID));

    let found = find_boot(&file, &Limits::default()).expect("find_boot");
    assert_eq!(found.partition, 1);
    assert_eq!(found.kernel_partition, 1);
    assert_eq!(found.config, "/boot/grub/grub.cfg");
    assert_eq!(found.entry.title, "Debian GNU/Linux");
    assert_eq!(
        found.entry.id.as_deref(),
        Some(&*format!("gnulinux-simple-{UUID}"))
    );
    assert_eq!(found.entry.kernel, format!("/boot/vmlinuz-{NEW}"));
    assert_eq!(found.entry.initrd, vec![format!("/boot/initrd.img-{NEW}")]);
    assert_eq!(found.entry.options, options(""));
    assert!(found.kernel == k.new_kernel, "kernel bytes differ");
    assert!(
        found.initrd.as_deref() == Some(&k.new_initrd[..]),
        "initrd bytes differ"
    );

    // Symbolic links: relative, absolute and through `..`.
    let fs = Ext4::open(&file, &parts[0]).expect("ext4");
    assert!(fs.read_file("/vmlinuz", 1 << 20).expect("vmlinuz") == k.new_kernel);
    assert!(fs.read_file("/initrd.img", 1 << 20).expect("initrd.img") == k.new_initrd);
    assert!(
        fs.read_file("/boot/grub/kernel", 1 << 20)
            .expect("kernel link")
            == k.new_kernel
    );
    assert!(
        fs.read_file("/boot/./grub/../grub//kernel", 1 << 20)
            .expect("dots")
            == k.new_kernel
    );
    assert_eq!(
        fs.read_file("/etc/debian_version", 64).expect("file"),
        b"12.8\n"
    );
    let err = fs.read_file("/boot", 1 << 20).expect_err("a directory");
    assert!(
        matches!(
            err,
            Ext4Error::NotAFile {
                kind: FileKind::Directory,
                ..
            }
        ),
        "{err}"
    );
    let err = fs.read_file("/boot/nothing", 1 << 20).expect_err("missing");
    assert!(matches!(err, Ext4Error::NotFound { .. }), "{err}");
    let err = fs
        .read_file("/etc/debian_version/x", 1 << 20)
        .expect_err("not a dir");
    assert!(matches!(err, Ext4Error::NotADirectory { .. }), "{err}");

    // The same disk as bytes in memory.
    let bytes = fs::read(&path).expect("read disk");
    let again = find_boot(&bytes, &Limits::default()).expect("find_boot on bytes");
    assert_eq!(again, found);
}

#[test]
fn submenu_default_on_mbr_disk() {
    let dir = tmp();
    let k = kernels();
    let root = dir.path().join("root");
    debian_root(
        &root,
        &k,
        &format!("gnulinux-advanced-{UUID}>gnulinux-{OLD}-advanced-{UUID}"),
    );
    let rootfs = mkfs(dir.path(), &root, "20M", &[]);
    let path = disk(
        dir.path(),
        24,
        "dos",
        &[Part {
            number: 1,
            start: 2048,
            sectors: 20 * 2048,
            kind: "83",
            fs: Some(&rootfs),
        }],
    );
    let file = open_file(&path);
    let parts = partitions(&file).expect("partitions");
    assert_eq!(parts.len(), 1);
    assert_eq!(
        (parts[0].index, parts[0].start, parts[0].mbr_type),
        (1, 1 << 20, Some(0x83))
    );
    let found = find_boot(&file, &Limits::default()).expect("find_boot");
    assert_eq!(
        found.entry.title,
        format!("Debian GNU/Linux, with Linux {OLD}")
    );
    assert!(found.kernel == k.old_kernel);
    assert!(found.initrd.as_deref() == Some(&k.old_initrd[..]));
    assert_eq!(found.entry.options, options(""));
}

#[test]
fn bare_ext4_with_4k_blocks_and_index_path_default() {
    let dir = tmp();
    let k = kernels();
    let root = dir.path().join("root");
    // 1>1: the submenu's second entry, the newest kernel's recovery mode.
    debian_root(&root, &k, "1>1");
    let rootfs = mkfs(dir.path(), &root, "16M", &["-b", "4096"]);
    let parts = partitions(&rootfs.as_slice()).expect("partitions");
    assert_eq!(
        parts,
        vec![Partition {
            index: 0,
            start: 0,
            len: 16 << 20,
            type_guid: None,
            mbr_type: None,
            name: String::new()
        }]
    );
    let found = find_boot(&rootfs, &Limits::default()).expect("find_boot");
    assert_eq!(found.partition, 0);
    assert_eq!(
        found.entry.title,
        format!("Debian GNU/Linux, with Linux {NEW} (recovery mode)")
    );
    assert_eq!(found.entry.options, options("single"));
    assert!(found.kernel == k.new_kernel);
    let fs = Ext4::open(&rootfs, &parts[0]).expect("ext4");
    assert_eq!(fs.block_size(), 4096);
}

#[test]
fn separate_boot_partition() {
    let dir = tmp();
    let k = kernels();
    let boot = dir.path().join("boot");
    put(&boot, &format!("vmlinuz-{NEW}"), &k.new_kernel);
    put(&boot, &format!("initrd.img-{NEW}"), &k.new_initrd);
    put(&boot, "grub/grub.cfg", debian_grub_cfg("").as_bytes());
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("boot")).expect("mkdir");
    put(&root, "etc/fstab", b"UUID=x /boot ext4 defaults 0 2\n");
    let bootfs = mkfs(dir.path(), &boot, "8M", &[]);
    let rootfs = mkfs(dir.path(), &root, "8M", &[]);
    let path = disk(
        dir.path(),
        20,
        "gpt",
        &[
            Part {
                number: 1,
                start: 2048,
                sectors: 8 * 2048,
                kind: LINUX_FS,
                fs: Some(&rootfs),
            },
            Part {
                number: 2,
                start: 18432,
                sectors: 8 * 2048,
                kind: LINUX_FS,
                fs: Some(&bootfs),
            },
        ],
    );
    let found = find_boot(&open_file(&path), &Limits::default()).expect("find_boot");
    assert_eq!((found.partition, found.kernel_partition), (2, 2));
    assert_eq!(found.config, "/grub/grub.cfg");
    assert_eq!(found.entry.kernel, format!("/vmlinuz-{NEW}"));
    assert!(found.kernel == k.new_kernel);
    assert!(found.initrd.as_deref() == Some(&k.new_initrd[..]));
}

#[test]
fn bls_entries_on_a_boot_partition() {
    let dir = tmp();
    let boot = dir.path().join("boot");
    let old = pattern(10, 100_000);
    let new = pattern(11, 120_000);
    let initrd = pattern(12, 50_000);
    let machine = "8c2a0d6e3b1f4e0e9a0c2b7d5e6f7a8b";
    put(&boot, "vmlinuz-6.5.6-300.fc39.x86_64", &old);
    put(&boot, "vmlinuz-6.11.4-201.fc39.x86_64", &new);
    put(&boot, "initramfs-6.11.4-201.fc39.x86_64.img", &initrd);
    put(
        &boot,
        &format!("loader/entries/{machine}-6.5.6-300.fc39.x86_64.conf"),
        b"title Fedora Linux (6.5.6-300.fc39.x86_64) 39 (Cloud Edition)\nversion 6.5.6-300.fc39.x86_64\nlinux /vmlinuz-6.5.6-300.fc39.x86_64\ninitrd /initramfs-6.5.6-300.fc39.x86_64.img\noptions root=UUID=abc ro\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class fedora\n",
    );
    put(
        &boot,
        &format!("loader/entries/{machine}-6.11.4-201.fc39.x86_64.conf"),
        b"title Fedora Linux (6.11.4-201.fc39.x86_64) 39 (Cloud Edition)\nversion 6.11.4-201.fc39.x86_64\nlinux /vmlinuz-6.11.4-201.fc39.x86_64\ninitrd /initramfs-6.11.4-201.fc39.x86_64.img\noptions $kernelopts console=ttyS0,115200n8\ngrub_class fedora\n",
    );
    put(&boot, "loader/entries/README", b"not an entry\n");
    put(
        &boot,
        "grub2/grub.cfg",
        b"set default=\"${saved_entry}\"\ninsmod blscfg\nblscfg\nif [ -f  ${config_directory}/custom.cfg ]; then\n  source ${config_directory}/custom.cfg\nfi\n",
    );
    let mut env =
        b"# GRUB Environment Block\nkernelopts=root=UUID=abc ro no_timer_check\nboot_success=1\n"
            .to_vec();
    env.resize(1024, b'#');
    put(&boot, "grub2/grubenv", &env);
    let bootfs = mkfs(dir.path(), &boot, "4M", &[]);
    let path = disk(
        dir.path(),
        8,
        "gpt",
        &[Part {
            number: 2,
            start: 2048,
            sectors: 4 * 2048,
            kind: LINUX_FS,
            fs: Some(&bootfs),
        }],
    );
    let found = find_boot(&open_file(&path), &Limits::default()).expect("find_boot");
    assert_eq!(
        found.config,
        format!("/loader/entries/{machine}-6.11.4-201.fc39.x86_64.conf")
    );
    assert_eq!(
        found.entry.options,
        "root=UUID=abc ro no_timer_check console=ttyS0,115200n8"
    );
    assert!(found.kernel == new);
    assert!(found.initrd.as_deref() == Some(&initrd[..]));
}

#[test]
fn bls_choice() {
    let entry = |v: &str| {
        (
            format!("m-{v}.conf"),
            format!(
                "title T {v}\nversion {v}\nlinux /vmlinuz-{v}\ninitrd /a-{v}\ninitrd /b-{v}\noptions a=1\noptions  b=2\n"
            ),
        )
    };
    let files = vec![
        entry("6.1.0-9"),
        entry("6.1.0-28"),
        entry("6.1.0-10"),
        ("m-x.conf".into(), "title no kernel\nversion 99\n".into()),
        ("m-y.txt".into(), "linux /y\nversion 100\n".into()),
    ];
    let e = bls_default_entry(&files, None).expect("entry");
    assert_eq!(e.kernel, "/vmlinuz-6.1.0-28");
    assert_eq!(
        e.initrd,
        vec!["/a-6.1.0-28".to_owned(), "/b-6.1.0-28".to_owned()]
    );
    assert_eq!(e.options, "a=1 b=2");
    assert_eq!(e.id.as_deref(), Some("m-6.1.0-28"));
    let e = bls_default_entry(&files, Some("saved_entry=m-6.1.0-9\n")).expect("saved");
    assert_eq!(e.kernel, "/vmlinuz-6.1.0-9");
    let err = bls_default_entry(&files[3..], None).expect_err("no linux");
    assert_eq!(err.to_string(), "loader entries: no menuentry");
    let env = format!("x={}\n", "y".repeat(40_000));
    let err = bls_default_entry(
        &[("a.conf".into(), "linux /k\noptions $x $x\n".into())],
        Some(&env),
    )
    .expect_err("expansion");
    assert_eq!(
        err.to_string(),
        "loader entry options: variables expand to more than 65536 bytes"
    );
    assert_eq!(
        bls::version_cmp("6.11.4", "6.5.6"),
        std::cmp::Ordering::Greater
    );
    assert_eq!(bls::version_cmp("1.010", "1.10"), std::cmp::Ordering::Equal);
}

fn ext4_raw_depth(inode: &Inode) -> u16 {
    u16::from_le_bytes([inode.raw[0x28 + 6], inode.raw[0x28 + 7]])
}

#[test]
fn extent_tree_with_index_nodes_holes_and_long_files() {
    let dir = tmp();
    let root = dir.path().join("root");
    // 3 KiB of data then 1 KiB of zeros, over and over: with 1 KiB blocks every data run
    // is its own extent (mkfs leaves zero blocks as holes), ~1500 extents, a 2-level tree.
    let mut frag = Vec::new();
    for i in 0..1500u64 {
        frag.extend(pattern(100 + i, 3072));
        frag.extend([0u8; 1024]);
    }
    put(&root, "frag", &frag);
    let long = pattern(7, 9 * 1024 * 1024 + 5);
    put(&root, "long", &long);
    let img = mkfs(dir.path(), &root, "24M", &["-b", "1024"]);
    let part = &partitions(&img).expect("partitions")[0];
    let fs = Ext4::open(&img, part).expect("ext4");
    let inode = fs.lookup("/frag").expect("frag");
    assert!(
        ext4_raw_depth(&inode) >= 1,
        "depth {}",
        ext4_raw_depth(&inode)
    );
    assert!(fs.read_inode(&inode, "/frag", 64 << 20).expect("read") == frag);
    assert!(fs.read_file("/long", 64 << 20).expect("long") == long);
    let err = fs.read_file("/long", 1 << 20).expect_err("limit");
    assert!(
        matches!(err, Ext4Error::TooLarge { size, max, .. } if size == long.len() as u64 && max == 1 << 20)
    );
}

#[test]
fn ext3_block_maps() {
    let dir = tmp();
    let root = dir.path().join("root");
    // With 1 KiB blocks: 12 direct, 256 single-indirect, the rest double-indirect.
    let big = pattern(21, 3 * 1024 * 1024 + 100);
    let small = pattern(22, 5000);
    put(&root, "boot/big", &big);
    put(&root, "boot/small", &small);
    link(&root, "boot/link", "big");
    let img = dir.path().join("ext3.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext3", "-b", "1024", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("8M"));
    let img = fs::read(&img).expect("read");
    let part = &partitions(&img).expect("partitions")[0];
    let fs = Ext4::open(&img, part).expect("ext3");
    let inode = fs.lookup("/boot/big").expect("big");
    assert_eq!(inode.flags() & 0x80000, 0, "extents on ext3?");
    assert!(fs.read_inode(&inode, "big", 8 << 20).expect("big") == big);
    assert!(fs.read_file("/boot/small", 8 << 20).expect("small") == small);
    assert!(fs.read_file("/boot/link", 8 << 20).expect("link") == big);
}

#[test]
fn htree_directory() {
    let dir = tmp();
    let root = dir.path().join("root");
    for i in 0..2000 {
        put(
            &root,
            &format!("boot/many/file-{i:04}-with-a-longer-name"),
            format!("{i}\n").as_bytes(),
        );
    }
    let img_path = dir.path().join("htree.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-d"])
        .arg(&root)
        .arg(&img_path)
        .arg("16M"));
    // e2fsck -D rebuilds large directories as htrees; exit 1 means "fixed", as asked.
    let status = Command::new("e2fsck")
        .args(["-f", "-y", "-D"])
        .arg(&img_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("e2fsck");
    assert!(matches!(status.code(), Some(0 | 1)), "e2fsck: {status}");
    let img = fs::read(&img_path).expect("read");
    let part = &partitions(&img).expect("partitions")[0];
    let fs = Ext4::open(&img, part).expect("ext4");
    let many = fs.lookup("/boot/many").expect("many");
    assert_ne!(many.flags() & 0x1000, 0, "not an htree (EXT4_INDEX_FL)");
    assert_eq!(
        fs.read_file("/boot/many/file-1234-with-a-longer-name", 64)
            .expect("file"),
        b"1234\n"
    );
    assert_eq!(
        fs.read_file("/boot/many/../many/file-1999-with-a-longer-name", 64)
            .expect("file"),
        b"1999\n"
    );
    let names = fs.read_dir("/boot/many").expect("list");
    assert_eq!(names.len(), 2000);
    assert!(
        names
            .iter()
            .any(|e| e.name == "file-0000-with-a-longer-name")
    );
}

#[test]
fn inline_data() {
    let dir = tmp();
    let root = dir.path().join("root");
    put(&root, "small", b"tiny file\n");
    let medium = pattern(31, 100);
    put(&root, "medium", &medium);
    put(&root, "d/a", b"a\n");
    put(&root, "d/b", b"b\n");
    link(&root, "d/up", "../medium");
    let img = mkfs(dir.path(), &root, "4M", &["-O", "inline_data", "-I", "256"]);
    let part = &partitions(&img).expect("partitions")[0];
    let fs = Ext4::open(&img, part).expect("ext4");
    let small = fs.lookup("/small").expect("small");
    assert_ne!(small.flags() & 0x1000_0000, 0, "not inline");
    assert_eq!(
        fs.read_inode(&small, "/small", 64).expect("small"),
        b"tiny file\n"
    );
    assert_eq!(fs.read_file("/medium", 1024).expect("medium"), medium);
    assert_eq!(fs.read_file("/d/a", 64).expect("a"), b"a\n");
    assert_eq!(fs.read_file("/d/up", 1024).expect("up"), medium);
    let mut names: Vec<String> = fs
        .read_dir("/d")
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "up"]);
}

#[test]
fn meta_bg_layout() {
    let dir = tmp();
    let root = dir.path().join("root");
    let data = pattern(41, 200_000);
    put(&root, "boot/vmlinuz", &data);
    for i in 0..50 {
        put(&root, &format!("d{i}/f"), &pattern(i, 3000));
    }
    let img = mkfs(
        dir.path(),
        &root,
        "64M",
        &["-b", "1024", "-O", "meta_bg,^resize_inode"],
    );
    let part = &partitions(&img).expect("partitions")[0];
    let fs = Ext4::open(&img, part).expect("ext4");
    assert!(fs.read_file("/boot/vmlinuz", 1 << 20).expect("file") == data);
    for i in 0..50 {
        assert!(fs.read_file(&format!("/d{i}/f"), 1 << 20).expect("f") == pattern(i, 3000));
    }
}

#[test]
fn symlink_loops_are_errors() {
    let dir = tmp();
    let root = dir.path().join("root");
    put(&root, "target", b"end\n");
    link(&root, "a", "b");
    link(&root, "b", "/a");
    link(&root, "self", "self/x");
    link(&root, "chain0", "target");
    for i in 1..=45 {
        link(&root, &format!("chain{i}"), &format!("chain{}", i - 1));
    }
    let img = mkfs(dir.path(), &root, "4M", &[]);
    let part = &partitions(&img).expect("partitions")[0];
    let fs = Ext4::open(&img, part).expect("ext4");
    for path in ["/a", "/self", "/chain45"] {
        let err = fs.lookup(path).expect_err(path);
        assert!(
            matches!(err, Ext4Error::SymlinkLoop { .. }),
            "{path}: {err}"
        );
    }
    assert_eq!(fs.read_file("/chain39", 64).expect("39 links"), b"end\n");
    let long = "/x".repeat(3000);
    assert!(matches!(fs.lookup(&long), Err(Ext4Error::BadPath { .. })));
    let name = format!("/{}", "n".repeat(300));
    assert!(matches!(fs.lookup(&name), Err(Ext4Error::BadPath { .. })));
}

#[test]
fn partitions_past_the_disk_end() {
    let dir = tmp();
    let k = kernels();
    let path = debian_gpt_disk(dir.path(), &k, "0");
    let full = fs::read(&path).expect("read");
    // Cut in half: the GPT is intact but partition 1 ends past the disk's end.
    let half = full[..full.len() / 2].to_vec();
    let err = partitions(&half).expect_err("past end");
    assert!(matches!(err, TableError::PastEnd { index: 1, .. }), "{err}");
    let err = find_boot(&half, &Limits::default()).expect_err("past end");
    assert!(
        chain(&err).contains("partition 1 extends past the end of the disk"),
        "{}",
        chain(&err)
    );

    // An MBR entry pointing past the end.
    let mut mbr = vec![0u8; 1 << 20];
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr[446 + 16 + 4] = 0x83;
    mbr[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[446 + 16 + 12..446 + 16 + 16].copy_from_slice(&4096u32.to_le_bytes());
    let err = find_boot(&mbr, &Limits::default()).expect_err("past end");
    assert!(
        chain(&err).contains("partition 2 extends past the end of the disk"),
        "{}",
        chain(&err)
    );
}

#[test]
fn gpt_checksums() {
    let dir = tmp();
    let k = kernels();
    let path = debian_gpt_disk(dir.path(), &k, "0");
    let full = fs::read(&path).expect("read");
    let mut bad = full.clone();
    bad[1024 + 16] ^= 1; // partition 1's unique GUID
    let err = partitions(&bad).expect_err("entries crc");
    assert!(
        err.to_string().contains("partition entry array CRC32"),
        "{err}"
    );
    let mut bad = full;
    bad[512 + 40] ^= 1; // header's first usable LBA
    let err = find_boot(&bad, &Limits::default()).expect_err("header crc");
    assert!(
        chain(&err).contains("GPT header: header CRC32"),
        "{}",
        chain(&err)
    );
}

#[test]
fn corrupt_superblock_magic() {
    let dir = tmp();
    let root = dir.path().join("root");
    put(
        &root,
        "boot/grub/grub.cfg",
        b"menuentry 'x' {\n linux /vmlinuz\n}\n",
    );
    let mut img = mkfs(dir.path(), &root, "4M", &[]);
    img[1024 + 0x38] = 0;
    img[1024 + 0x39] = 0;
    let part = &partitions(&img).expect("partitions")[0];
    let err = Ext4::open(&img, part).expect_err("magic");
    assert!(matches!(err, Ext4Error::NoSuperblock(0)), "{err}");
    let err = find_boot(&img, &Limits::default()).expect_err("no ext4");
    assert_eq!(
        err.to_string(),
        "no /boot/grub/grub.cfg or loader entries on any ext4, FAT or xfs partition (found: 1 unknown)"
    );
}

#[test]
fn grub_cfg_with_a_huge_line() {
    let dir = tmp();
    let root = dir.path().join("root");
    let mut cfg = "set default=0\n# ".to_owned();
    cfg.push_str(&"x".repeat(1 << 20));
    cfg.push_str("\nmenuentry 'x' {\n linux /vmlinuz\n}\n");
    put(&root, "boot/grub/grub.cfg", cfg.as_bytes());
    let img = mkfs(dir.path(), &root, "8M", &[]);
    let err = find_boot(&img, &Limits::default()).expect_err("long line");
    assert_eq!(
        chain(&err),
        "/boot/grub/grub.cfg on the whole disk: grub.cfg: line 2 is longer than 65536 bytes"
    );
    let big = "#\n".repeat(3 << 20);
    let err = grub_default_entry(&big, None).expect_err("too large");
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
}

#[test]
fn truncated_disks_give_errors() {
    let dir = tmp();
    let k = kernels();
    let path = debian_gpt_disk(dir.path(), &k, "0");
    let full = fs::read(&path).expect("read");
    let limits = Limits {
        max_read: 16 << 20,
        max_file: 4 << 20,
    };
    for eighth in 0..8 {
        let cut = &full[..full.len() * eighth / 8];
        assert!(find_boot(&cut, &limits).is_err(), "cut at {eighth}/8");
    }
    // A bare filesystem cut in half says more blocks than it has.
    let root = dir.path().join("small");
    put(&root, "f", b"x");
    let img = mkfs(dir.path(), &root, "4M", &[]);
    let half = &img[..img.len() / 2];
    let part = &partitions(&half).expect("partitions")[0];
    let err = Ext4::open(&half, part).expect_err("truncated");
    assert!(
        matches!(err, Ext4Error::LargerThanPartition { .. }),
        "{err}"
    );
}

#[test]
fn corrupted_filesystems_give_errors_not_panics() {
    let dir = tmp();
    // Small files, so that most bytes in use are metadata: superblock, descriptors, bitmaps,
    // inodes, directories, symlinks, grub.cfg.
    let k = Kernels {
        new_kernel: pattern(1, 3000),
        new_initrd: pattern(2, 2000),
        old_kernel: pattern(3, 1000),
        old_initrd: pattern(4, 1000),
    };
    let root = dir.path().join("root");
    debian_root(&root, &k, "0");
    for i in 0..40 {
        put(&root, &format!("boot/many/entry-{i}"), b"x");
    }
    let img = mkfs(dir.path(), &root, "2M", &["-b", "1024", "-N", "128"]);
    let limits = Limits {
        max_read: 16 << 20,
        max_file: 4 << 20,
    };
    assert!(find_boot(&img, &limits).expect("intact").kernel == k.new_kernel);
    let set: Vec<usize> = (0..img.len()).filter(|&i| img[i] != 0).collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bad = img.clone();
    let mut outcomes = (0, 0);
    for _ in 0..1000 {
        // Overwrite 3 bytes in use with random values, then put them back.
        let edits: Vec<(usize, u8)> = (0..3)
            .map(|_| (set[(next() % set.len() as u64) as usize], next() as u8))
            .collect();
        for &(at, value) in &edits {
            bad[at] = value;
        }
        match find_boot(&bad, &limits) {
            Ok(found) => {
                assert!(found.kernel.len() as u64 <= limits.max_file);
                outcomes.0 += 1;
            }
            Err(_) => outcomes.1 += 1,
        }
        for &(at, _) in &edits {
            bad[at] = img[at];
        }
    }
    eprintln!(
        "corrupted filesystems: {} found a kernel, {} gave an error",
        outcomes.0, outcomes.1
    );
    assert!(
        outcomes.1 > 20,
        "few corruptions were noticed: the edits missed the metadata"
    );
}

#[test]
fn read_and_file_limits() {
    let dir = tmp();
    let k = kernels();
    let path = debian_gpt_disk(dir.path(), &k, "0");
    let file = open_file(&path);
    let err = find_boot(
        &file,
        &Limits {
            max_read: 256 << 10,
            max_file: 1 << 20,
        },
    )
    .expect_err("read limit");
    assert!(
        matches!(err, BootDiskError::ReadLimit(n) if n == 256 << 10),
        "{}",
        chain(&err)
    );
    let err = find_boot(
        &file,
        &Limits {
            max_read: 1 << 30,
            max_file: 100 << 10,
        },
    )
    .expect_err("file limit");
    assert_eq!(
        chain(&err),
        format!(
            "ext4 on partition 1: /boot/vmlinuz-{NEW} is {} bytes, more than the limit of {}",
            k.new_kernel.len(),
            100 << 10
        )
    );
}

#[test]
fn missing_kernel_and_unknown_partitions() {
    let dir = tmp();
    let root = dir.path().join("root");
    put(
        &root,
        "boot/grub/grub.cfg",
        b"menuentry 'x' {\n linux /boot/vmlinuz-gone ro\n}\n",
    );
    let rootfs = mkfs(dir.path(), &root, "4M", &[]);
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).expect("mkdir");
    let datafs = mkfs(dir.path(), &empty, "4M", &[]);
    let path = disk(
        dir.path(),
        12,
        "gpt",
        &[
            Part {
                number: 1,
                start: 2048,
                sectors: 8192,
                kind: LINUX_FS,
                fs: Some(&datafs),
            },
            Part {
                number: 2,
                start: 10240,
                sectors: 8192,
                kind: LINUX_FS,
                fs: Some(&rootfs),
            },
        ],
    );
    let err = find_boot(&open_file(&path), &Limits::default()).expect_err("missing");
    assert_eq!(
        err.to_string(),
        "the kernel /boot/vmlinuz-gone named by /boot/grub/grub.cfg is on no partition hull reads (ext4, FAT, xfs)"
    );
    let path = disk(
        dir.path(),
        12,
        "gpt",
        &[
            Part {
                number: 1,
                start: 2048,
                sectors: 2048,
                kind: BIOS_BOOT,
                fs: None,
            },
            Part {
                number: 2,
                start: 4096,
                sectors: 8192,
                kind: ESP,
                fs: None,
            },
            Part {
                number: 3,
                start: 12288,
                sectors: 8192,
                kind: LINUX_FS,
                fs: Some(&datafs),
            },
        ],
    );
    let err = find_boot(&open_file(&path), &Limits::default()).expect_err("none");
    assert_eq!(
        err.to_string(),
        "no /boot/grub/grub.cfg or loader entries on any ext4, FAT or xfs partition (found: 1 BIOS boot, 1 empty, 1 ext4)"
    );
}

#[test]
fn xfs_without_a_config_is_listed() {
    // xfsprogs is in scripts/packages.txt: a machine without it fails here, never passes.
    let dir = tmp();
    let img = dir.path().join("xfs.img");
    File::create(&img)
        .and_then(|f| f.set_len(300 << 20))
        .expect("create");
    run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&img));
    let err = find_boot(&open_file(&img), &Limits::default()).expect_err("xfs");
    assert_eq!(
        err.to_string(),
        "no /boot/grub/grub.cfg or loader entries on any ext4, FAT or xfs partition (found: 1 xfs)"
    );
}

#[test]
fn grub_default_choices() {
    let cfg = debian_grub_cfg("/boot");
    let e = grub_default_entry(&cfg, None).expect("default");
    assert_eq!(e.title, "Debian GNU/Linux");
    assert_eq!(e.options, options(""));
    // saved: grubenv's saved_entry, here a submenu path by ids.
    let saved = cfg.replace("set default=\"0\"", "set default=\"${saved_entry}\"");
    let env = format!(
        "# GRUB Environment Block\nsaved_entry=gnulinux-advanced-{UUID}>gnulinux-{OLD}-recovery-{UUID}\nnext_entry=0\n"
    );
    let e = grub_default_entry(&saved, Some(&env)).expect("saved");
    assert_eq!(e.kernel, format!("/boot/vmlinuz-{OLD}"));
    assert_eq!(e.options, options("single"));
    // Nothing saved, or a default naming nothing: the first entry, as GRUB does.
    assert_eq!(
        grub_default_entry(&saved, None).expect("unsaved").title,
        "Debian GNU/Linux"
    );
    let nowhere = cfg.replace("set default=\"0\"", "set default=\"7\"");
    assert_eq!(
        grub_default_entry(&nowhere, None).expect("7").title,
        "Debian GNU/Linux"
    );
    // By title, and a submenu alone boots its first entry.
    let by_title = cfg.replace(
        "set default=\"0\"",
        "set default='Advanced options for Debian GNU/Linux'",
    );
    let e = grub_default_entry(&by_title, None).expect("title");
    assert_eq!(e.title, format!("Debian GNU/Linux, with Linux {NEW}"));
    let e = grub_default_entry(
        &cfg.replace("set default=\"0\"", "set default=\"1>3\""),
        None,
    )
    .expect("1>3");
    assert_eq!(
        e.title,
        format!("Debian GNU/Linux, with Linux {OLD} (recovery mode)")
    );
}

#[test]
fn grub_quoting_and_variables() {
    let cfg = r#"
set timeout=5   # a comment
set extra="quiet splash"
set default=1
menuentry "first" { linux /a }
menuentry 'It'\''s "quoted"' --class x --users "" --id second {
    set gfxpayload=keep
    linux	($root)/boot/vmlinuz-x root=/dev/vda1 "arg with space" $extra ${unset} 'lit$eral' \
        cont=1 "esc\"aped" ;  initrd (hd0,gpt1)/boot/ucode.img /boot/initrd.img-x
    linux /ignored
    initrd /ignored
}
"#;
    let e = grub_default_entry(cfg, None).expect("entry");
    assert_eq!(e.title, "It's \"quoted\"");
    assert_eq!(e.id.as_deref(), Some("second"));
    assert_eq!(e.kernel, "/boot/vmlinuz-x");
    assert_eq!(
        e.options,
        "root=/dev/vda1 \"arg with space\" quiet splash lit$eral cont=1 esc\"aped"
    );
    assert_eq!(
        e.initrd,
        vec![
            "/boot/ucode.img".to_owned(),
            "/boot/initrd.img-x".to_owned()
        ]
    );
    let by_id = cfg.replace("set default=1", "set default=second");
    assert_eq!(
        grub_default_entry(&by_id, None).expect("id").kernel,
        "/boot/vmlinuz-x"
    );
}

#[test]
fn grub_errors() {
    let err = |cfg: &str| grub_default_entry(cfg, None).expect_err(cfg).to_string();
    assert_eq!(
        err("set default=0\ninsmod blscfg\nblscfg\n"),
        "grub.cfg: no menuentry"
    );
    assert_eq!(
        err("menuentry 'x' {\n echo hi\n}\n"),
        "grub.cfg: entry 'x' has no linux line"
    );
    assert_eq!(
        err("menuentry 'x' {\n linux /a\n"),
        "grub.cfg: the block opened at line 1 is never closed"
    );
    assert_eq!(err("}\n"), "grub.cfg: line 1: '}' closes no block");
    assert_eq!(
        err("menuentry 'x {\n"),
        "grub.cfg: line 1: unterminated single quote"
    );
    let mut bomb = "set a=0123456789abcdef\n".to_owned();
    for _ in 0..30 {
        bomb.push_str("set a=\"$a$a\"\n");
    }
    bomb.push_str("menuentry x { linux /k $a }\n");
    assert_eq!(
        err(&bomb),
        "grub.cfg: variables expand to more than 16777216 bytes"
    );
    assert_eq!(
        err(&"a\n".repeat(300_000)),
        "grub.cfg: more than 262144 words"
    );
    let deep = "submenu 'a' {\n".repeat(40);
    assert_eq!(
        err(&deep),
        "grub.cfg: line 33: blocks nested deeper than 32"
    );
}

#[test]
fn disk_reads_stay_inside() {
    let bytes = vec![1u8; 100];
    let mut buf = [0u8; 10];
    assert!(bytes.read_at(&mut buf, 90).is_ok());
    assert!(bytes.read_at(&mut buf, 91).is_err());
    assert!(bytes.read_at(&mut buf, u64::MAX).is_err());
    let dir = tmp();
    let path = dir.path().join("f");
    fs::write(&path, &bytes).expect("write");
    let f = open_file(&path);
    assert_eq!(Disk::len(&f), 100);
    assert!(Disk::read_at(&f, &mut buf, 91).is_err());
    assert!(Disk::read_at(&f, &mut buf, 0).is_ok());
    let metered = disk::Metered::new(&bytes, 15);
    assert!(metered.read_at(&mut buf, 0).is_ok());
    let err = metered.read_at(&mut buf, 0).expect_err("over");
    assert!(disk::is_read_limit(&err));
}

// FAT (mtools) and xfs (mkfs.xfs -p) partitions beside ext4.

const FEDORA_VER: &str = "6.8.5-301.fc40.x86_64";
const ROCKY_VER: &str = "5.14.0-427.13.1.el9_4.x86_64";
const ROCKY_OLD: &str = "5.14.0-362.8.1.el9_3.x86_64";
const MACHINE_ID: &str = "3f1e0a7d1c2b4e5f8a9b0c1d2e3f4a5b";

fn mtools(cmd: &mut Command) {
    run(cmd.env("MTOOLS_SKIP_CHECK", "1"));
}

/// Formats FAT (mformat `args`) inside the partition of `disk` starting at sector `start`
/// and copies `files` (absolute paths) into it, making their directories.
fn fat_in(disk: &Path, start: u64, args: &[&str], files: &[(&str, &[u8])]) {
    let target = format!("{}@@{}", disk.display(), start * 512);
    mtools(
        Command::new("mformat")
            .arg("-i")
            .arg(&target)
            .args(args)
            .arg("::"),
    );
    let dir = disk.parent().expect("parent");
    let mut made = std::collections::HashSet::new();
    for (path, bytes) in files {
        let mut at = String::new();
        let parents: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in parents.iter().take(parents.len().saturating_sub(1)) {
            at.push('/');
            at.push_str(part);
            if made.insert(at.clone()) {
                mtools(
                    Command::new("mmd")
                        .arg("-i")
                        .arg(&target)
                        .arg(format!("::{at}")),
                );
            }
        }
        let local = dir.join(format!("fat{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        fs::write(&local, bytes).expect("write");
        mtools(
            Command::new("mcopy")
                .arg("-i")
                .arg(&target)
                .arg(&local)
                .arg(format!("::{path}")),
        );
    }
}

/// A node of an xfs prototype tree: a file's bytes, or a directory.
enum ProtoNode {
    File(Vec<u8>),
    Dir(std::collections::BTreeMap<String, ProtoNode>),
}

fn proto_lines(dir: &Path, tree: &std::collections::BTreeMap<String, ProtoNode>, out: &mut String) {
    for (name, node) in tree {
        match node {
            ProtoNode::File(bytes) => {
                let src = dir.join(format!("src{}", SEQ.fetch_add(1, Ordering::Relaxed)));
                fs::write(&src, bytes).expect("source");
                out.push_str(&format!("{name} ---644 0 0 {}\n", src.display()));
            }
            ProtoNode::Dir(children) => {
                out.push_str(&format!("{name} d--755 0 0\n"));
                proto_lines(dir, children, out);
                out.push_str("$\n");
            }
        }
    }
}

/// An xfs image of `mib` MiB holding `files` (absolute paths), built by mkfs.xfs from a
/// prototype file.
fn mkxfs(dir: &Path, mib: u64, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tree = std::collections::BTreeMap::new();
    for (path, bytes) in files {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let (last, parents) = parts.split_last().expect("a path");
        let mut cur = &mut tree;
        for p in parents {
            let node = cur
                .entry((*p).to_owned())
                .or_insert_with(|| ProtoNode::Dir(Default::default()));
            let ProtoNode::Dir(children) = node else {
                panic!("{p} is a file");
            };
            cur = children;
        }
        cur.insert((*last).to_owned(), ProtoNode::File(bytes.to_vec()));
    }
    let mut text = "boot\n0 0\nd--755 0 0\n".to_owned();
    proto_lines(dir, &tree, &mut text);
    text.push_str("$\n");
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let proto = dir.join(format!("proto{n}.txt"));
    fs::write(&proto, text).expect("proto");
    let img = dir.join(format!("xfs{n}.img"));
    File::create(&img)
        .and_then(|f| f.set_len(mib << 20))
        .expect("create image");
    // These tell mkfs.xfs it runs under fstests, which lifts its 300 MB minimum.
    run(Command::new("mkfs.xfs")
        .env("TEST_DIR", "1")
        .env("TEST_DEV", "1")
        .env("QA_CHECK_FS", "1")
        .args(["-q", "-f", "-p"])
        .arg(&proto)
        .arg(&img));
    fs::read(&img).expect("read image")
}

fn fedora_entry() -> String {
    format!(
        "title Fedora Linux ({FEDORA_VER}) 40 (Cloud Edition)\nversion {FEDORA_VER}\nlinux /vmlinuz-{FEDORA_VER}\ninitrd /initramfs-{FEDORA_VER}.img\noptions root=UUID={UUID} ro rootflags=subvol=root console=ttyS0\n"
    )
}

#[test]
fn systemd_boot_esp_with_loader_entries() {
    let dir = tmp();
    let kernel = pattern(11, 300 * 1024 + 5);
    let initrd = pattern(12, 100 * 1024 + 3);
    let root = dir.path().join("root");
    put(&root, "etc/fedora-release", b"Fedora release 40\n");
    fs::create_dir_all(root.join("boot")).expect("mkdir");
    let rootfs = mkfs(dir.path(), &root, "8M", &[]);
    let path = disk(
        dir.path(),
        28,
        "gpt",
        &[
            Part {
                number: 1,
                start: 2048,
                sectors: 32768,
                kind: ESP,
                fs: None,
            },
            Part {
                number: 2,
                start: 34816,
                sectors: 16384,
                kind: LINUX_FS,
                fs: Some(&rootfs),
            },
        ],
    );
    let entry_path = format!("/loader/entries/fedora-{FEDORA_VER}.conf");
    fat_in(
        &path,
        2048,
        &["-T", "32768", "-h", "64", "-s", "32"],
        &[
            ("/EFI/systemd/systemd-bootx64.efi", &pattern(13, 5000)),
            ("/loader/loader.conf", b"timeout 3\n"),
            (&entry_path, fedora_entry().as_bytes()),
            (&format!("/vmlinuz-{FEDORA_VER}"), &kernel),
            (&format!("/initramfs-{FEDORA_VER}.img"), &initrd),
        ],
    );
    let found = find_boot(&open_file(&path), &Limits::default()).expect("find_boot");
    assert_eq!(found.partition, 1);
    assert_eq!(found.config, entry_path);
    assert_eq!(found.kernel_partition, 1);
    assert_eq!(found.entry.kernel, format!("/vmlinuz-{FEDORA_VER}"));
    assert_eq!(
        found.entry.options,
        format!("root=UUID={UUID} ro rootflags=subvol=root console=ttyS0")
    );
    assert!(found.kernel == kernel, "kernel bytes differ");
    assert!(
        found.initrd.as_deref() == Some(&initrd[..]),
        "initrd bytes differ"
    );
    assert_eq!(found.kernel_config, None);
}

#[test]
fn rocky_xfs_boot_partition() {
    let dir = tmp();
    let kernel = pattern(21, 400 * 1024 + 9);
    let initrd = pattern(22, 150 * 1024 + 1);
    let config = b"# Automatically generated file; DO NOT EDIT.\nCONFIG_VIRTIO_MMIO=y\n".to_vec();
    let entry = |ver: &str| {
        format!(
            "title Rocky Linux ({ver}) 9.4 (Blue Onyx)\nversion {ver}\nlinux /vmlinuz-{ver}\ninitrd /initramfs-{ver}.img $tuned_initrd\noptions root=UUID={UUID} console=tty0 console=ttyS0,115200n8 no_timer_check net.ifnames=0 $tuned_params\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class rocky\n"
        )
    };
    let grub_cfg = "set default=\"${saved_entry}\"\nload_env -f ${config_directory}/grubenv\ninsmod blscfg\nblscfg\n";
    let env =
        format!("# GRUB Environment Block\nsaved_entry={MACHINE_ID}-{ROCKY_VER}\nboot_success=0\n");
    let new_entry = entry(ROCKY_VER);
    let old_entry = entry(ROCKY_OLD);
    let new_name = format!("/loader/entries/{MACHINE_ID}-{ROCKY_VER}.conf");
    let old_name = format!("/loader/entries/{MACHINE_ID}-{ROCKY_OLD}.conf");
    let old_kernel = pattern(23, 1000);
    let bootfs = mkxfs(
        dir.path(),
        32,
        &[
            ("/grub2/grub.cfg", grub_cfg.as_bytes()),
            ("/grub2/grubenv", env.as_bytes()),
            (&new_name, new_entry.as_bytes()),
            (&old_name, old_entry.as_bytes()),
            (&format!("/vmlinuz-{ROCKY_VER}"), &kernel),
            (&format!("/initramfs-{ROCKY_VER}.img"), &initrd),
            (&format!("/config-{ROCKY_VER}"), &config),
            (&format!("/vmlinuz-{ROCKY_OLD}"), &old_kernel),
            (&format!("/initramfs-{ROCKY_OLD}.img"), b"old"),
        ],
    );
    let root = dir.path().join("root");
    put(&root, "etc/rocky-release", b"Rocky Linux release 9.4\n");
    fs::create_dir_all(root.join("boot")).expect("mkdir");
    let rootfs = mkfs(dir.path(), &root, "8M", &[]);
    let path = disk(
        dir.path(),
        56,
        "gpt",
        &[
            Part {
                number: 1,
                start: 2048,
                sectors: 2048,
                kind: BIOS_BOOT,
                fs: None,
            },
            Part {
                number: 2,
                start: 4096,
                sectors: 8192,
                kind: ESP,
                fs: None,
            },
            Part {
                number: 3,
                start: 12288,
                sectors: 32 * 2048,
                kind: LINUX_FS,
                fs: Some(&bootfs),
            },
            Part {
                number: 4,
                start: 77824,
                sectors: 16384,
                kind: LINUX_FS,
                fs: Some(&rootfs),
            },
        ],
    );
    fat_in(
        &path,
        4096,
        &["-T", "8192", "-h", "64", "-s", "32"],
        &[(
            "/EFI/rocky/grub.cfg",
            format!("search --no-floppy --fs-uuid --set=dev {UUID}\nset prefix=($dev)/grub2\nexport $prefix\nconfigfile $prefix/grub.cfg\n").as_bytes(),
        )],
    );
    let found = find_boot(&open_file(&path), &Limits::default()).expect("find_boot");
    assert_eq!(found.partition, 3);
    assert_eq!(found.kernel_partition, 3);
    assert_eq!(found.config, new_name);
    assert_eq!(found.entry.kernel, format!("/vmlinuz-{ROCKY_VER}"));
    assert!(found.kernel == kernel, "kernel bytes differ");
    assert!(
        found.initrd.as_deref() == Some(&initrd[..]),
        "initrd bytes differ"
    );
    assert_eq!(found.kernel_config.as_deref(), Some(&config[..]));
}

/// Debian's layout with a FAT ESP holding only GRUB's stub config, and the root's /boot
/// holding `configs` (name, bytes).
fn debian_disk_with_esp(
    dir: &Path,
    k: &Kernels,
    default: &str,
    configs: &[(&str, &[u8])],
) -> PathBuf {
    let root = dir.join(format!("root{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    debian_root(&root, k, default);
    for (name, bytes) in configs {
        put(&root, &format!("boot/{name}"), bytes);
    }
    let rootfs = mkfs(dir, &root, "24M", &[]);
    let path = disk(
        dir,
        32,
        "gpt",
        &[
            Part {
                number: 14,
                start: 2048,
                sectors: 2048,
                kind: BIOS_BOOT,
                fs: Some(&[0xEB; 4096]),
            },
            Part {
                number: 15,
                start: 4096,
                sectors: 8192,
                kind: ESP,
                fs: None,
            },
            Part {
                number: 1,
                start: 12288,
                sectors: 24 * 2048,
                kind: LINUX_FS,
                fs: Some(&rootfs),
            },
        ],
    );
    fat_in(
        &path,
        4096,
        &["-T", "8192", "-h", "64", "-s", "32"],
        &[(
            "/EFI/debian/grub.cfg",
            format!("search.fs_uuid {UUID} root hd0,gpt1\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n").as_bytes(),
        ), ("/EFI/debian/grubx64.efi", &pattern(31, 3000))],
    );
    path
}

#[test]
fn debian_kernel_config_beside_the_kernel() {
    let dir = tmp();
    let k = kernels();
    let config = b"CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_BLK=y\n".to_vec();
    let big = vec![b'#'; MAX_KERNEL_CONFIG as usize + 1];
    let configs: [(&str, &[u8]); 2] = [
        (&format!("config-{NEW}"), &config),
        (&format!("config-{OLD}"), &big),
    ];
    let path = debian_disk_with_esp(dir.path(), &k, "0", &configs);
    let found = find_boot(&open_file(&path), &Limits::default()).expect("find_boot");
    assert_eq!((found.partition, found.kernel_partition), (1, 1));
    assert_eq!(found.config, "/boot/grub/grub.cfg");
    assert!(found.kernel == k.new_kernel, "kernel bytes differ");
    assert_eq!(found.kernel_config.as_deref(), Some(&config[..]));

    // The old kernel's config is over the limit: ignored, the kernel still found.
    let path = debian_disk_with_esp(dir.path(), &k, "1>2", &configs);
    let found = find_boot(&open_file(&path), &Limits::default()).expect("find_boot");
    assert!(found.kernel == k.old_kernel, "kernel bytes differ");
    assert_eq!(found.kernel_config, None);

    // No config at all.
    let path = debian_disk_with_esp(dir.path(), &k, "0", &[]);
    let found = find_boot(&open_file(&path), &Limits::default()).expect("find_boot");
    assert!(found.kernel == k.new_kernel, "kernel bytes differ");
    assert_eq!(found.kernel_config, None);
}

#[test]
fn kernel_config_names() {
    let path = |k: &str, e: &str| kernel_config_path(k, e);
    assert_eq!(
        path("/boot/vmlinuz-6.1", "/vmlinuz-6.1").as_deref(),
        Some("/boot/config-6.1")
    );
    assert_eq!(
        path("/bzImage-x", "bzImage-x").as_deref(),
        Some("/config-x")
    );
    assert_eq!(
        path("/boot/vmlinux-5", "(hd0)/boot/vmlinux-5").as_deref(),
        Some("/boot/config-5")
    );
    assert_eq!(path("/vmlinuz", "/vmlinuz"), None);
    assert_eq!(path("/vmlinuz-", "/vmlinuz-"), None);
    assert_eq!(path("/kernel-6.1", "/kernel-6.1"), None);
}

/// Partition layout of `broken_fat_and_xfs_partitions`: FAT 1, xfs 2, ext4 3 (sectors).
const BROKEN_FAT: (u64, u64) = (2048, 8192);
const BROKEN_XFS: (u64, u64) = (10240, 32 * 2048);
const BROKEN_EXT4: (u64, u64) = (75776, 24 * 2048);

#[test]
fn broken_fat_and_xfs_partitions() {
    let dir = tmp();
    let k = kernels();
    let root = dir.path().join("root");
    debian_root(&root, &k, "0");
    let rootfs = mkfs(dir.path(), &root, "24M", &[]);
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).expect("mkdir");
    let emptyfs = mkfs(dir.path(), &empty, "24M", &[]);
    let xfs = mkxfs(dir.path(), 32, &[("/etc/hostname", b"x\n")]);
    let part = |number, (start, sectors): (u64, u64), kind, fs| Part {
        number,
        start,
        sectors,
        kind,
        fs,
    };
    let path = disk(
        dir.path(),
        64,
        "gpt",
        &[
            part(1, BROKEN_FAT, ESP, None),
            part(2, BROKEN_XFS, LINUX_FS, Some(&xfs)),
            part(3, BROKEN_EXT4, LINUX_FS, Some(&rootfs)),
        ],
    );
    fat_in(
        &path,
        BROKEN_FAT.0,
        &["-T", "8192", "-h", "64", "-s", "32"],
        &[("/EFI/BOOT/BOOTX64.EFI", &pattern(41, 2000))],
    );
    let good = fs::read(&path).expect("read");
    let fat_at = (BROKEN_FAT.0 * 512) as usize;
    let xfs_at = (BROKEN_XFS.0 * 512) as usize;
    let ext4_at = (BROKEN_EXT4.0 * 512) as usize;
    let limits = Limits::default();
    assert_eq!(find_boot(&good, &limits).expect("intact").partition, 3);

    // Both unreadable: bytes per sector 0 in the FAT boot sector, block size 3 in the
    // xfs superblock. The ext4 still holds the config.
    let mut bad = good.clone();
    bad[fat_at + 11..fat_at + 13].copy_from_slice(&0u16.to_le_bytes());
    bad[xfs_at + 4..xfs_at + 8].copy_from_slice(&3u32.to_be_bytes());
    let found = find_boot(&bad, &limits).expect("found despite broken FAT and xfs");
    assert_eq!((found.partition, found.kernel_partition), (3, 3));
    assert!(found.kernel == k.new_kernel, "kernel bytes differ");

    // With no config on the ext4, the error names the first broken filesystem.
    let mut none = good.clone();
    none[ext4_at..ext4_at + emptyfs.len()].copy_from_slice(&emptyfs);
    let err = find_boot(&none, &limits).expect_err("no config");
    assert_eq!(
        err.to_string(),
        "no /boot/grub/grub.cfg or loader entries on any ext4, FAT or xfs partition (found: 1 FAT, 1 xfs, 1 ext4)"
    );
    let mut broken = none.clone();
    broken[fat_at + 11..fat_at + 13].copy_from_slice(&0u16.to_le_bytes());
    broken[xfs_at + 4..xfs_at + 8].copy_from_slice(&3u32.to_be_bytes());
    let err = find_boot(&broken, &limits).expect_err("broken FAT");
    assert!(
        matches!(err, BootDiskError::Fs { fs: "FAT", .. }),
        "{}",
        chain(&err)
    );
    assert!(
        chain(&err).starts_with("FAT on partition 1: boot sector: "),
        "{}",
        chain(&err)
    );
    let mut broken = none;
    broken[xfs_at + 4..xfs_at + 8].copy_from_slice(&3u32.to_be_bytes());
    let err = find_boot(&broken, &limits).expect_err("broken xfs");
    assert!(
        chain(&err).starts_with("xfs on partition 2: superblock: "),
        "{}",
        chain(&err)
    );
}

#[test]
fn fat_kernel_with_a_looping_cluster_chain() {
    let dir = tmp();
    let kernel = pattern(51, 300 * 1024 + 5);
    let path = disk(
        dir.path(),
        20,
        "gpt",
        &[Part {
            number: 1,
            start: 2048,
            sectors: 32768,
            kind: ESP,
            fs: None,
        }],
    );
    fat_in(
        &path,
        2048,
        &["-T", "32768", "-h", "64", "-s", "32"],
        &[
            (
                &format!("/loader/entries/fedora-{FEDORA_VER}.conf"),
                fedora_entry().as_bytes(),
            ),
            (&format!("/vmlinuz-{FEDORA_VER}"), &kernel),
            (&format!("/initramfs-{FEDORA_VER}.img"), b"initrd"),
        ],
    );
    let mut img = fs::read(&path).expect("read");
    let limits = Limits::default();
    assert!(find_boot(&img, &limits).expect("intact").kernel == kernel);
    // The FAT16 geometry, and the kernel's first cluster found by its bytes.
    let at = 2048 * 512;
    let le16 =
        |img: &[u8], off: usize| u16::from_le_bytes([img[at + off], img[at + off + 1]]) as usize;
    assert_eq!(&img[at + 54..at + 59], b"FAT16");
    let bps = le16(&img, 11);
    let cluster = bps * img[at + 13] as usize;
    let reserved = le16(&img, 14);
    let fats = img[at + 16] as usize;
    let root_entries = le16(&img, 17);
    let fat_sectors = le16(&img, 22);
    let data = at + (reserved + fats * fat_sectors) * bps + (root_entries * 32).div_ceil(bps) * bps;
    let off = img[data..]
        .windows(64)
        .position(|w| w == &kernel[..64])
        .expect("kernel bytes");
    assert_eq!(off % cluster, 0);
    let first = off / cluster + 2;
    assert!(kernel.len() > 3 * cluster);
    // The third cluster leads back to the first.
    let entry = at + reserved * bps + 2 * (first + 2);
    img[entry..entry + 2].copy_from_slice(&(first as u16).to_le_bytes());
    let err = find_boot(&img, &limits).expect_err("loop");
    let text = chain(&err);
    assert!(
        text.starts_with(&format!(
            "FAT on partition 1: /vmlinuz-{FEDORA_VER}: cluster {first}: "
        )) && text.contains("loop"),
        "{text}"
    );
}
