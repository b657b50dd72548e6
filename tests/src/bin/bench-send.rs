//! Send/receive benchmark (issue 18), run as root: a zone whose root holds 1 GiB of files and
//! a microVM with a 4 GiB disk full of data, moved between two btrfs pools (loop-mounted,
//! made here) by `vmadm send | vmadm receive` between two vmmd, next to `btrfs send | btrfs
//! receive` and `tar -c | tar -x` of the same data, in one run.
//!
//! Run: `cargo build --release --workspace && sudo target/release/bench-send [runs]`
//! (default 5). Prints a Markdown table for docs/PERFORMANCE.md. Writes about 15 GiB per
//! run; the pools are trimmed between runs so the loop files do not grow.
//!
//! Every method is timed from the first byte read to the receiving pool synced (syncfs), on
//! a warm page cache for the source (each run reads the same source data); the methods
//! alternate within each run, each run starting at another, so that load on this shared
//! machine falls on every method alike.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_tests::{Daemon, LoopFs};

const ZONE_BYTES: u64 = 1 << 30;
const DISK_BYTES: u64 = 4 << 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sh(script: &str) {
    let ok = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "failed: {script}");
}

fn syncfs(dir: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir).expect("open the pool");
    // SAFETY: syncfs on a descriptor we own.
    assert_eq!(unsafe { libc::syncfs(f.as_raw_fd()) }, 0, "syncfs");
}

/// Writes `size` bytes of non-zero data into `path` (files of 4 MiB when `path` is a
/// directory, one file otherwise).
fn fill(path: &Path, size: u64, as_files: bool) {
    let chunk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8 + 1).collect();
    let write = |file: &Path, bytes: u64, salt: u64| {
        let mut f = std::fs::File::create(file).expect("create");
        let mut left = bytes;
        let mut block = salt;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            // A distinct first 8 bytes per MiB: no two blocks alike (no dedup anywhere).
            f.write_all(&block.to_le_bytes()).expect("write");
            f.write_all(&chunk[8..n]).expect("write");
            block += 1;
            left -= n as u64;
        }
        f.sync_all().expect("sync");
    };
    if as_files {
        std::fs::create_dir_all(path).expect("dir");
        for i in 0..size / (4 << 20) {
            write(&path.join(format!("f{i:04}")), 4 << 20, i << 32);
        }
    } else {
        write(path, size, 0);
    }
}

struct Pools {
    a: LoopFs,
    b: LoopFs,
}

impl Pools {
    fn trim(&self) {
        for p in [&self.a.mountpoint, &self.b.mountpoint] {
            sh(&format!(
                "btrfs subvolume sync {0} && fstrim {0}",
                p.display()
            ));
        }
    }
}

/// `vmadm send U` on `from` into `vmadm receive` on `to`.
fn hull_pipe(from: &Daemon, to: &Daemon, uuid: &str) {
    let vmadm = hull_tests::bin("vmadm");
    sh(&format!(
        "HULL_SOCKET={} {v} send {uuid} 2>/dev/null | HULL_SOCKET={} {v} receive 2>/dev/null",
        from.socket().display(),
        to.socket().display(),
        v = vmadm.display()
    ));
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    assert!(hull_tests::is_root(), "run as root");
    let pools = Pools {
        a: LoopFs::new("btrfs", 20 << 30),
        b: LoopFs::new("btrfs", 20 << 30),
    };
    let (pa, pb) = (pools.a.mountpoint.clone(), pools.b.mountpoint.clone());
    let a = Daemon::start_on(&pa);
    let b = Daemon::start_on(&pb);
    for d in [&a, &b] {
        hull_tests::zone::install(d);
    }
    // The zone: busybox plus 1 GiB of files in its root, written in place (stopped).
    let zone = hull_tests::zone::create(&a, serde_json::json!({"autoboot": false}));
    let zroot = a.data_root().join("guests").join(&zone).join("root");
    fill(&zroot.join("bulk"), ZONE_BYTES, true);
    // The microVM: a 4 GiB disk, every byte data.
    let payload = serde_json::json!({"brand": "kvm", "ram": 64, "autoboot": false,
        "kernel": hull_tests::testguest().to_string_lossy(),
        "disks": [{"size": DISK_BYTES >> 20, "boot": true}]});
    let o = a.vmadm(&["create"], Some(&payload.to_string()));
    assert!(o.status.success(), "{}", hull_tests::zone::text(&o));
    let vm = a
        .client()
        .list_vms(&["brand=kvm".to_string()])
        .expect("list")
        .remove(0);
    let disk = PathBuf::from(vm.disks[0].path.clone().expect("disk path"));
    std::fs::remove_file(&disk).expect("blank disk");
    fill(&disk, DISK_BYTES, false);
    // The peers' sources: read-only snapshots (btrfs send needs them) and plain trees.
    sh(&format!(
        "btrfs subvolume create {0}/vmdisk >/dev/null && cp --reflink=always {1} {0}/vmdisk/disk0.img \
         && btrfs subvolume snapshot -r {2} {0}/zone-ro >/dev/null \
         && btrfs subvolume snapshot -r {0}/vmdisk {0}/vmdisk-ro >/dev/null",
        pa.display(),
        disk.display(),
        zroot.display()
    ));
    syncfs(&pa);
    let vm_uuid = vm.uuid.to_string();

    type Method<'a> = (&'a str, Box<dyn Fn(bool) + 'a>, Box<dyn Fn(bool) + 'a>);
    // (name, move(zone?), undo(zone?))
    let methods: Vec<Method> = vec![
        (
            "vmadm send \\| vmadm receive",
            Box::new(|is_zone| hull_pipe(&a, &b, if is_zone { &zone } else { &vm_uuid })),
            Box::new(|is_zone| {
                let u = if is_zone { &zone } else { &vm_uuid };
                let o = b.vmadm(&["delete", u], None);
                assert!(o.status.success(), "{}", hull_tests::zone::text(&o));
            }),
        ),
        (
            "btrfs send \\| btrfs receive",
            Box::new(|is_zone| {
                let src = if is_zone { "zone-ro" } else { "vmdisk-ro" };
                sh(&format!(
                    "btrfs send -q {}/{src} | btrfs receive -q {}",
                    pa.display(),
                    pb.display()
                ));
            }),
            Box::new(|is_zone| {
                let src = if is_zone { "zone-ro" } else { "vmdisk-ro" };
                sh(&format!(
                    "btrfs subvolume delete {}/{src} >/dev/null",
                    pb.display()
                ));
            }),
        ),
        (
            "tar -c \\| tar -x",
            Box::new(|is_zone| {
                let src = if is_zone { "zone-ro" } else { "vmdisk-ro" };
                sh(&format!(
                    "mkdir {1}/tar && tar -C {0}/{src} -cf - . | tar -C {1}/tar -xf -",
                    pa.display(),
                    pb.display()
                ));
            }),
            Box::new(|_| sh(&format!("rm -rf {}/tar", pb.display()))),
        ),
    ];
    let mut times: Vec<[Vec<Duration>; 2]> =
        methods.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for run in 0..runs {
        for k in 0..methods.len() {
            let m = (run + k) % methods.len();
            for (w, is_zone) in [(0, true), (1, false)] {
                pools.trim();
                let t = Instant::now();
                (methods[m].1)(is_zone);
                syncfs(&pb);
                times[m][w].push(t.elapsed());
                (methods[m].2)(is_zone);
            }
        }
        eprintln!("run {} of {runs} done", run + 1);
    }
    for (m, (name, _, _)) in methods.iter().enumerate() {
        let secs = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.2}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        eprintln!(
            "{name}: zone {} s; disk {} s",
            secs(&times[m][0]),
            secs(&times[m][1])
        );
    }
    let mib = |bytes: u64, d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let btrfs = [median(times[1][0].clone()), median(times[1][1].clone())];
    println!(
        "| method | zone, 1 GiB of files: s (MiB/s) | VM disk, 4 GiB: s (MiB/s) | vs btrfs (zone / disk) |"
    );
    println!("|---|---|---|---|");
    for (m, (name, _, _)) in methods.iter().enumerate() {
        let z = median(times[m][0].clone());
        let d = median(times[m][1].clone());
        println!(
            "| {name} | {:.2} ({:.0}) | {:.2} ({:.0}) | {:.2} / {:.2} |",
            z.as_secs_f64(),
            mib(ZONE_BYTES, z),
            d.as_secs_f64(),
            mib(DISK_BYTES, d),
            btrfs[0].as_secs_f64() / z.as_secs_f64(),
            btrfs[1].as_secs_f64() / d.as_secs_f64(),
        );
    }
    drop(methods);
    drop(a);
    drop(b);
    drop(pools);
}
