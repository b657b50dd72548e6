//! Clone benchmark (issue 3), run as root: for a 10 MiB, 1 GiB and 4 GiB image on btrfs and
//! xfs (loop-mounted, made here) and on the host's own filesystem (overlay backend), the
//! median time of hull's clones next to `cp -a`, `cp --reflink=always` and
//! `qemu-img create -f qcow2 -b`, in one run.
//!
//! Run: `cargo build --release --workspace && sudo target/release/bench-clone [runs]
//! [btrfs|xfs|ext4]...` (default 7 runs, every filesystem). Prints a Markdown table for
//! docs/PERFORMANCE.md. Writes about 15 GiB; takes minutes.
//!
//! The clones start from a settled filesystem, as an installed image does: the images'
//! writes are committed (syncfs) before their clones are timed, and btrfs has finished
//! deleting earlier snapshots (`btrfs subvolume sync`); otherwise the first snapshot of a
//! freshly written 4 GiB image pays for committing its checksums, and the later ones race
//! the cleaner, which says nothing about a clone's cost. The sizes alternate run by run, so
//! that the load of a shared machine falls on every size alike (the 4 GiB / 10 MiB ratio is
//! the figure).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_cowstore::backend::{self, Backend, BackendKind};
use hull_tests::LoopFs;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("n/a".to_string(), |d| {
        format!("{:.1}", d.as_secs_f64() * 1000.0)
    })
}

/// Writes `size` bytes of non-zero data (so copies really copy), synced.
fn fill(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).expect("create");
    let chunk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8 + 1).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).expect("write");
        left -= n as u64;
    }
    f.sync_all().expect("sync");
}

fn command(args: &[&str]) -> Option<Duration> {
    let t = Instant::now();
    let ok = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| t.elapsed())
}

/// Commits what is pending on the filesystem of `root` and, on btrfs, waits until deleted
/// subvolumes are cleaned.
fn settle(root: &Path, kind: BackendKind) {
    use std::os::fd::AsRawFd;
    if kind == BackendKind::Btrfs {
        let synced = Command::new("btrfs")
            .args(["subvolume", "sync"])
            .arg(root)
            .stdout(Stdio::null())
            .status();
        assert!(synced.is_ok_and(|s| s.success()), "btrfs subvolume sync");
    }
    let dir = std::fs::File::open(root).expect("open the filesystem");
    // SAFETY: syncfs on a descriptor we own.
    assert_eq!(unsafe { libc::syncfs(dir.as_raw_fd()) }, 0, "syncfs");
}

const SIZES: [(&str, u64); 3] = [("10 MiB", 10 << 20), ("1 GiB", 1 << 30), ("4 GiB", 4 << 30)];

/// Times `one(size index, run)` for every size, alternating the sizes run by run (each run
/// starting at another size), so that load on this shared machine falls on every size
/// alike; returns each size's median, or None for a size where a run failed.
fn alternate(
    runs: usize,
    mut one: impl FnMut(usize, usize) -> Option<Duration>,
) -> Vec<Option<Duration>> {
    let mut times: Vec<Option<Vec<Duration>>> = vec![Some(Vec::new()); SIZES.len()];
    for run in 0..runs {
        for k in 0..SIZES.len() {
            let s = (run + k) % SIZES.len();
            let d = one(s, run);
            times[s] = times[s].take().and_then(|mut v| {
                v.push(d?);
                Some(v)
            });
        }
    }
    times.into_iter().map(|v| v.map(median)).collect()
}

fn bench(label: &str, root: &Path, kind: BackendKind, runs: usize) {
    let b: Box<dyn Backend> = backend::open(kind);
    let images: Vec<_> = SIZES
        .iter()
        .map(|(_, size)| {
            let image = root.join(format!("image-{size}"));
            b.create_image_tree(&image).expect("image tree");
            fill(&image.join("disk.img"), *size);
            b.seal_image_tree(&image).expect("seal");
            image
        })
        .collect();
    settle(root, kind);
    // Clones are all made first and removed after, as guests are: removing one right after
    // making it would time btrfs's background cleaner too.
    let guest = |s: usize, run: usize| root.join(format!("guest-{}-{run}", SIZES[s].1));
    let tree = alternate(runs, |s, run| {
        let g = guest(s, run);
        std::fs::create_dir(&g).ok()?;
        let t = Instant::now();
        b.clone_tree(&images[s], &g).ok()?;
        Some(t.elapsed())
    });
    for s in 0..SIZES.len() {
        for run in 0..runs {
            let _ = b.destroy_tree(&guest(s, run));
            let _ = std::fs::remove_dir_all(guest(s, run));
        }
    }
    settle(root, kind);
    let clone = |s: usize, run: usize| root.join(format!("clone-{}-{run}.img", SIZES[s].1));
    let disk = alternate(runs, |s, run| {
        let t = Instant::now();
        b.clone_file(&images[s].join("disk.img"), &clone(s, run))
            .ok()?;
        Some(t.elapsed())
    });
    for s in 0..SIZES.len() {
        for run in 0..runs {
            let _ = std::fs::remove_file(clone(s, run));
        }
    }
    let peer = |args: &dyn Fn(&str, &str, &str) -> Vec<String>| {
        alternate(runs.min(3), |s, run| {
            let dst = root.join(format!("peer-{}-{run}", SIZES[s].1));
            let a = args(
                &images[s].to_string_lossy(),
                &images[s].join("disk.img").to_string_lossy(),
                &dst.to_string_lossy(),
            );
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            let d = command(&refs);
            let _ = Command::new("rm").arg("-rf").arg(&dst).status();
            d
        })
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cp_a = peer(&|img, _, dst| strings(&["cp", "-a", img, dst]));
    let cp_reflink = peer(&|_, f, dst| strings(&["cp", "--reflink=always", f, dst]));
    let qcow = peer(&|_, f, dst| {
        strings(&[
            "qemu-img", "create", "-q", "-f", "qcow2", "-b", f, "-F", "raw", dst,
        ])
    });
    for (s, (name, _)) in SIZES.iter().enumerate() {
        println!(
            "| {label} | {name} | {} | {} | {} | {} | {} |",
            ms(tree[s]),
            ms(disk[s]),
            ms(cp_a[s]),
            ms(cp_reflink[s]),
            ms(qcow[s])
        );
    }
    if let (Some(small), Some(large)) = (tree[0], tree[2]) {
        eprintln!(
            "{label}: root clone 4 GiB / 10 MiB = {:.2}",
            large.as_secs_f64() / small.as_secs_f64()
        );
    }
    for image in &images {
        b.remove_image_tree(image).expect("remove image");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(7);
    let only: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let wanted = |fs: &str| only.is_empty() || only.contains(&fs);
    assert!(
        hull_tests::is_root(),
        "bench-clone mounts loop filesystems: run it as root"
    );
    println!(
        "| filesystem (backend) | image | hull root clone (ms) | hull disk clone (ms) | cp -a (ms) | cp --reflink=always (ms) | qemu-img qcow2 -b (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    if wanted("btrfs") {
        let fs = LoopFs::new("btrfs", 16 << 30);
        bench("btrfs (btrfs)", &fs.mountpoint, BackendKind::Btrfs, runs);
    }
    if wanted("xfs") {
        let fs = LoopFs::new("xfs", 16 << 30);
        bench(
            "xfs reflink=1 (reflink)",
            &fs.mountpoint,
            BackendKind::Reflink,
            runs,
        );
    }
    if wanted("ext4") {
        let dir = tempfile::Builder::new()
            .prefix("hull-bench")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        bench("ext4 (overlay)", dir.path(), BackendKind::Overlay, runs);
    }
}
