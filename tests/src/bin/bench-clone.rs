//! Clone benchmark (issue 3), run as root: for a 10 MiB, 1 GiB and 4 GiB image on btrfs and
//! xfs (loop-mounted, made here) and on the host's own filesystem (overlay backend), the
//! median time of hull's clones next to `cp -a`, `cp --reflink=always` and
//! `qemu-img create -f qcow2 -b`, in one run.
//!
//! Run: `cargo build --release --workspace && sudo target/release/bench-clone [runs]
//! [btrfs|xfs|ext4]...` (default 7 runs, every filesystem). Prints a Markdown table for
//! docs/PERFORMANCE.md. Writes about 15 GiB; takes minutes.
//!
//! Each size starts from a settled filesystem, as an installed image does: the image's
//! writes are committed (syncfs) before its clones are timed, and btrfs has finished
//! deleting the previous size's snapshots (`btrfs subvolume sync`); otherwise the first
//! snapshot of a freshly written 4 GiB image pays for committing its checksums, and the
//! later ones race the cleaner, which says nothing about a clone's cost.

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

fn time_runs(runs: usize, mut one: impl FnMut(usize) -> Option<Duration>) -> Option<Duration> {
    let mut v = Vec::new();
    for i in 0..runs {
        v.push(one(i)?);
    }
    Some(median(v))
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

fn bench(label: &str, root: &Path, kind: BackendKind, runs: usize) {
    let b: Box<dyn Backend> = backend::open(kind);
    for (name, size) in [
        ("10 MiB", 10u64 << 20),
        ("1 GiB", 1 << 30),
        ("4 GiB", 4 << 30),
    ] {
        let image = root.join(format!("image-{size}"));
        b.create_image_tree(&image).expect("image tree");
        let file = image.join("disk.img");
        fill(&file, size);
        b.seal_image_tree(&image).expect("seal");
        settle(root, kind);
        // Clones are all made first and removed after, as guests are: removing one right
        // after making it would time btrfs's background cleaner too.
        let tree = time_runs(runs, |i| {
            let g = root.join(format!("guest-{size}-{i}"));
            std::fs::create_dir(&g).ok()?;
            let t = Instant::now();
            b.clone_tree(&image, &g).ok()?;
            Some(t.elapsed())
        });
        for i in 0..runs {
            let g = root.join(format!("guest-{size}-{i}"));
            let _ = b.destroy_tree(&g);
            let _ = std::fs::remove_dir_all(&g);
        }
        settle(root, kind);
        let disk = time_runs(runs, |i| {
            let dst = root.join(format!("clone-{size}-{i}.img"));
            let t = Instant::now();
            b.clone_file(&file, &dst).ok()?;
            Some(t.elapsed())
        });
        for i in 0..runs {
            let _ = std::fs::remove_file(root.join(format!("clone-{size}-{i}.img")));
        }
        let (f, img) = (
            file.to_string_lossy().into_owned(),
            image.to_string_lossy().into_owned(),
        );
        let peer = |args: &dyn Fn(&str) -> Vec<String>, cleanup: bool| {
            time_runs(runs.min(3), |i| {
                let dst = root
                    .join(format!("peer-{size}-{i}"))
                    .to_string_lossy()
                    .into_owned();
                let a = args(&dst);
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                let d = command(&refs);
                if cleanup {
                    let _ = Command::new("rm").args(["-rf", &dst]).status();
                }
                d
            })
        };
        let cp_a = peer(
            &|dst| vec!["cp".into(), "-a".into(), img.clone(), dst.into()],
            true,
        );
        let cp_reflink = peer(
            &|dst| {
                vec![
                    "cp".into(),
                    "--reflink=always".into(),
                    f.clone(),
                    dst.into(),
                ]
            },
            true,
        );
        let qcow = peer(
            &|dst| {
                vec![
                    "qemu-img".into(),
                    "create".into(),
                    "-q".into(),
                    "-f".into(),
                    "qcow2".into(),
                    "-b".into(),
                    f.clone(),
                    "-F".into(),
                    "raw".into(),
                    dst.into(),
                ]
            },
            true,
        );
        println!(
            "| {label} | {name} | {} | {} | {} | {} | {} |",
            ms(tree),
            ms(disk),
            ms(cp_a),
            ms(cp_reflink),
            ms(qcow)
        );
        b.remove_image_tree(&image).expect("remove image");
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
