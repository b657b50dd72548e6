//! Docker import benchmark (issue 19), run as root: the median time to import a ~100 MiB
//! three-layer OCI image with hull (`imgadm import -q oci-archive:IMG.tar` into a vmmd whose
//! data root is on a btrfs loop filesystem made here), next to what an Incus or podman user
//! does to get the same image onto disk (`skopeo copy oci-archive:… oci:…` then `umoci
//! unpack`, on the same filesystem), in one run.
//!
//! Run: `cargo build --release --workspace && sudo target/release/bench-docker [runs]`
//! (default 5 runs; `bench-docker RUNS start` times only the docker zone's start). Needs umoci and skopeo (scripts/packages.txt). Prints a Markdown table
//! for docs/PERFORMANCE.md and the ratio hull / peer (target <= 0.5). vmmd and imgadm are
//! the ones next to this binary ([`hull_tests::bin`]), so build the whole workspace in
//! release: a debug vmmd next to a release bench would time the wrong thing. Writes about
//! 0.4 GiB to build the image (in /var/tmp, removed after) and about 0.3 GiB per run on an
//! 8 GiB sparse loop file (about 2 GiB in all at the default 5 runs).
//!
//! The image is built once with umoci (as tests/docker/build-images does): layer 1 is the
//! busybox image's tree and 40 MiB of random data, layer 2 40 MiB more and 500 files of
//! 4 KiB, layer 3 20 MiB and the config; random so that no compression helps either path.
//! Every run starts from a synced filesystem holding none of the image: the peer's layout
//! and bundle are deleted after its run, and hull's images vacuumed (and btrfs's cleaner
//! waited for), so every run writes all three layers. The archive is read from the page
//! cache by both. The two paths alternate run by run, so that load on this shared machine
//! falls on both alike.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hull_tests::oci_peer::{
    CPU_SHARES, MEMORY_MIB, PIDS, enter_mount_ns, hybrid_with_v2_controllers, masked_cgroup2,
    oci_config,
};
use hull_tests::{Daemon, LoopFs};

/// The archive's tag.
const TAG: &str = "bench";

type Res<T> = Result<T, String>;

/// Runs `cmd` to its end, its output captured; an error (naming the command and holding its
/// stderr) unless it succeeded.
fn run(cmd: &mut Command) -> Res<Output> {
    let what = format!("{cmd:?}");
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    check(&what, o)
}

/// `o` if its command succeeded, else an error holding its stderr.
fn check(what: &str, o: Output) -> Res<Output> {
    if o.status.success() {
        Ok(o)
    } else {
        Err(format!(
            "{what} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

fn io<T>(what: impl std::fmt::Display, r: std::io::Result<T>) -> Res<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Writes `bytes` of incompressible data (from /dev/urandom, as `head -c` would) to `path`.
fn random_file(path: &Path, bytes: u64) -> Res<()> {
    let mut urandom = io("/dev/urandom", std::fs::File::open("/dev/urandom"))?.take(bytes);
    let mut f = io(path.display(), std::fs::File::create(path))?;
    let n = io(path.display(), std::io::copy(&mut urandom, &mut f))?;
    if n != bytes {
        return Err(format!("{}: wrote {n} of {bytes} bytes", path.display()));
    }
    Ok(())
}

/// `count` files of 4 KiB of random data in the new directory `dir`.
fn small_files(dir: &Path, count: usize) -> Res<()> {
    io(dir.display(), std::fs::create_dir_all(dir))?;
    let mut urandom = io("/dev/urandom", std::fs::File::open("/dev/urandom"))?;
    let mut block = [0u8; 4096];
    for i in 0..count {
        io("/dev/urandom", urandom.read_exact(&mut block))?;
        let path = dir.join(format!("f{i:03}"));
        let mut f = io(path.display(), std::fs::File::create(&path))?;
        io(path.display(), f.write_all(&block))?;
    }
    Ok(())
}

/// Builds the three-layer image in `work` with umoci and writes it as an oci-archive with
/// skopeo; returns the archive.
fn build_image(work: &Path) -> Res<PathBuf> {
    let busybox = &hull_tests::zone::busybox().1;
    let layout = work.join("oci");
    let l = layout.display();
    let image = |tag: &str| format!("{l}:{tag}");
    run(&mut cmd("umoci", &["init", "--layout", &l.to_string()]))?;
    run(&mut cmd("umoci", &["new", "--image", &image("base")]))?;
    // (the tag to start from, the tag made, what goes into the new layer)
    type Fill<'a> = Box<dyn Fn(&Path) -> Res<()> + 'a>;
    let layers: [(&str, &str, Fill); 3] = [
        (
            "base",
            "layer1",
            Box::new(|root| {
                run(Command::new("tar")
                    .arg("-xzf")
                    .arg(busybox)
                    .arg("-C")
                    .arg(root))?;
                random_file(&root.join("blob1"), 40 << 20)
            }),
        ),
        (
            "layer1",
            "layer2",
            Box::new(|root| {
                random_file(&root.join("blob2"), 40 << 20)?;
                small_files(&root.join("small"), 500)
            }),
        ),
        (
            "layer2",
            TAG,
            Box::new(|root| random_file(&root.join("blob3"), 20 << 20)),
        ),
    ];
    for (from, to, fill) in &layers {
        let bundle = work.join(format!("bundle-{to}"));
        let b = bundle.display().to_string();
        run(&mut cmd("umoci", &["unpack", "--image", &image(from), &b]))?;
        fill(&bundle.join("rootfs"))?;
        run(&mut cmd("umoci", &["repack", "--image", &image(to), &b]))?;
        io(&b, std::fs::remove_dir_all(&bundle))?;
    }
    run(&mut cmd(
        "umoci",
        &["config", "--image", &image(TAG), "--config.cmd", "/bin/sh"],
    ))?;
    let archive = work.join("image.oci.tar");
    run(&mut cmd(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "-q",
            &format!("oci:{}", image(TAG)),
            &format!("oci-archive:{}:{TAG}", archive.display()),
        ],
    ))?;
    io(&l, std::fs::remove_dir_all(&layout))?;
    Ok(archive)
}

fn sync() -> Res<()> {
    run(&mut Command::new("sync")).map(drop)
}

fn remove(path: &Path) -> Res<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Where the image comes from: the oci-archive, or the local registry at this address.
#[derive(Debug, Clone, Copy)]
enum From<'a> {
    Archive(&'a Path),
    Registry(&'a str),
}

/// The peer: `skopeo copy` into an OCI layout, then `umoci unpack` into a bundle, both under
/// `root`; timed, then deleted.
fn peer(root: &Path, from: From<'_>) -> Res<Duration> {
    let layout = root.join("peer-oci");
    let bundle = root.join("peer-bundle");
    remove(&layout)?;
    remove(&bundle)?;
    sync()?;
    let t = Instant::now();
    unpack(from, &layout, &bundle)?;
    let d = t.elapsed();
    remove(&layout)?;
    remove(&bundle)?;
    Ok(d)
}

/// What the peer does: `skopeo copy` of the image into the OCI layout `layout`, then
/// `umoci unpack` of it into the bundle `bundle`.
fn unpack(from: From<'_>, layout: &Path, bundle: &Path) -> Res<()> {
    let (src, tls): (String, &[&str]) = match from {
        From::Archive(a) => (format!("oci-archive:{}:{TAG}", a.display()), &[]),
        From::Registry(addr) => (
            format!("docker://{addr}/bench/img:{TAG}"),
            &["--src-tls-verify=false"],
        ),
    };
    let mut args = vec!["--insecure-policy", "copy", "-q"];
    args.extend_from_slice(tls);
    let dest = format!("oci:{}:{TAG}", layout.display());
    args.extend_from_slice(&[src.as_str(), dest.as_str()]);
    run(&mut cmd("skopeo", &args))?;
    run(&mut cmd(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{TAG}", layout.display()),
            &bundle.display().to_string(),
        ],
    ))
    .map(drop)
}

/// hull: `imgadm import` of the archive, or from the registry (a docker source); timed,
/// then every image vacuumed.
fn hull(daemon: &Daemon, from: From<'_>) -> Res<Duration> {
    sync()?;
    let source = match from {
        From::Archive(a) => format!("oci-archive:{}", a.display()),
        From::Registry(_) => format!("bench/img:{TAG}"),
    };
    let what = format!("imgadm import -q {source}");
    let t = Instant::now();
    let o = daemon.run("imgadm", &["import", "-q", &source], None);
    let d = t.elapsed();
    check(&what, o)?;
    check(
        "imgadm vacuum -f",
        daemon.run("imgadm", &["vacuum", "-f"], None),
    )?;
    let list = check(
        "imgadm list -j",
        daemon.run("imgadm", &["list", "-j"], None),
    )?;
    let left: serde_json::Value =
        serde_json::from_slice(&list.stdout).map_err(|e| format!("imgadm list -j: {e}"))?;
    if left.as_array().is_none_or(|a| !a.is_empty()) {
        return Err(format!("images are left after imgadm vacuum -f: {left}"));
    }
    // btrfs deletes the subvolumes in the background: let it finish before the next run.
    let _ = Command::new("btrfs")
        .args(["subvolume", "sync"])
        .arg(daemon.data_root().join("images"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Ok(d)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn version(program: &str) -> Res<String> {
    let o = run(&mut cmd(program, &["--version"]))
        .map_err(|e| format!("{e}\n(bench-docker needs umoci and skopeo)"))?;
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn bench(runs: usize, only_start: bool) -> Res<()> {
    let versions = format!("{}, {}", version("skopeo")?, version("umoci")?);
    let work = io(
        "a temp dir in /var/tmp",
        tempfile::Builder::new()
            .prefix("hull-bench-docker")
            .tempdir_in("/var/tmp"),
    )?;
    eprintln!("building the image in {}", work.path().display());
    let archive = build_image(work.path())?;
    let size = io(archive.display(), std::fs::metadata(&archive))?.len();
    println!(
        "image: oci-archive of three layers, {size} bytes ({:.1} MiB); peer: {versions}",
        size as f64 / (1 << 20) as f64
    );
    // Dropped in reverse: the daemon before its filesystem.
    let fs = LoopFs::new("btrfs", 8 << 30);
    let daemon = Daemon::start_on(&fs.mountpoint);
    let registry = Registry::start(work.path())?;
    push(&archive, &registry.addr)?;
    check(
        "imgadm sources -t docker -a",
        daemon.run(
            "imgadm",
            &[
                "sources",
                "-t",
                "docker",
                "-a",
                &format!("http://{}", registry.addr),
            ],
            None,
        ),
    )?;
    let imports = [
        ("from the oci-archive", From::Archive(&archive)),
        (
            "from the local registry (docker-registry, plain http)",
            From::Registry(&registry.addr),
        ),
    ];
    for (title, from) in imports.into_iter().filter(|_| !only_start) {
        println!("\n### {title}\n");
        compare(runs, &fs.mountpoint, &daemon, from)?;
    }
    start_bench(runs, &fs.mountpoint, &daemon, &archive)
}

/// Debian's docker-registry on 127.0.0.1 over plain http, its storage under `dir`.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Res<Registry> {
        let port = io(
            "a free port",
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()),
        )?
        .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        io(
            config.display(),
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                    dir.join("registry").display()
                ),
            ),
        )?;
        let child = io(
            "docker-registry (Debian's docker-registry package)",
            Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn(),
        )?;
        let t = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if t.elapsed() > Duration::from_secs(20) {
                return Err(format!("docker-registry did not listen on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Registry { child, addr })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// skopeo pushes the archive's image to the registry as bench/img:TAG.
fn push(archive: &Path, addr: &str) -> Res<()> {
    run(&mut cmd(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}:{TAG}", archive.display()),
            &format!("docker://{addr}/bench/img:{TAG}"),
        ],
    ))
    .map(drop)
}

/// The import, hull next to the peer, from `from`: prints the table.
fn compare(runs: usize, root: &Path, daemon: &Daemon, from: From<'_>) -> Res<()> {
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for r in 0..runs {
        for k in 0..2 {
            let m = (r + k) % 2;
            let d = if m == 0 {
                peer(root, from)?
            } else {
                hull(daemon, from)?
            };
            times[m].push(d);
        }
        eprintln!(
            "run {} of {runs}: peer {} s, hull {} s",
            r + 1,
            secs(times[0][r]),
            secs(times[1][r])
        );
    }
    let names = ["skopeo copy + umoci unpack", "imgadm import"];
    table(&names, &times, false)
}

/// A docker zone's create + start until its process has run (`/bin/true`; the record
/// stopped, exit status 0), next to `crun run` of the umoci-unpacked bundle running the
/// same: prints the table.
fn start_bench(runs: usize, root: &Path, daemon: &Daemon, archive: &Path) -> Res<()> {
    println!("\n### a docker zone's create + start, to its process's exit\n");
    let o = check(
        "imgadm import",
        daemon.run(
            "imgadm",
            &[
                "import",
                "-q",
                "-j",
                &format!("oci-archive:{}", archive.display()),
            ],
            None,
        ),
    )?;
    let top: serde_json::Value =
        serde_json::from_slice(&o.stdout).map_err(|e| format!("imgadm import -j: {e}"))?;
    let image = top["uuid"]
        .as_str()
        .ok_or("no uuid from imgadm import")?
        .to_string();
    // The peer's bundle: umoci's config, its process made /bin/true without a terminal.
    let layout = root.join("start-oci");
    let bundle = root.join("start-bundle");
    remove(&layout)?;
    remove(&bundle)?;
    unpack(From::Archive(archive), &layout, &bundle)?;
    let cfg_path = bundle.join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_slice(&io(cfg_path.display(), std::fs::read(&cfg_path))?)
            .map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    // The namespaces, id map and limits a zone gets, as bench-zones gives crun; the
    // container's root (host id OCI_HOST_ID) must reach its rootfs through these.
    for dir in [root.parent(), Some(root), Some(bundle.as_path())]
        .into_iter()
        .flatten()
    {
        use std::os::unix::fs::PermissionsExt;
        io(
            dir.display(),
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)),
        )?;
    }
    let cfg = oci_config(&cfg, None, &["/bin/true"], true);
    io(
        cfg_path.display(),
        std::fs::write(&cfg_path, cfg.to_string()),
    )?;
    // On the hybrid cgroup layout with controllers on its v2 part, crun refuses to run
    // ("cgroups in hybrid mode not supported"): it runs in one mount namespace, made once,
    // where that part's controller list reads empty.
    let masked = match hybrid_with_v2_controllers() {
        true => Some(masked_cgroup2()?),
        false => None,
    };
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut creates = Vec::new();
    let mut restarts = Vec::new();
    let mut exits = Vec::new();
    let stopped = Stopped::subscribe(daemon)?;
    for r in 0..runs {
        for k in 0..2 {
            let m = (r + k) % 2;
            let d = if m == 0 {
                let id = format!("hull-bench-{r}");
                let mut c = Command::new("crun");
                c.args(["run", "--bundle"]).arg(&bundle).arg(&id);
                if let Some(ns) = &masked {
                    enter_mount_ns(&mut c, ns);
                }
                let t = Instant::now();
                run(&mut c)?;
                t.elapsed()
            } else {
                let uuid = uuid::Uuid::new_v4().to_string();
                let payload = serde_json::json!({"brand": "lx", "image_uuid": image,
                    "uuid": uuid, "alias": format!("bench-{r}"), "kernel_version": "4.3.0",
                    "max_physical_memory": MEMORY_MIB, "max_swap": MEMORY_MIB,
                    "max_lwps": PIDS, "cpu_shares": CPU_SHARES,
                    "internal_metadata": {"docker:cmd": "[\"/bin/true\"]"}});
                let t = Instant::now();
                check(
                    "vmadm create",
                    daemon.run("vmadm", &["create"], Some(&payload.to_string())),
                )?;
                let created = t.elapsed();
                stopped.wait_for(&uuid)?;
                let d = t.elapsed();
                creates.push(created);
                exits.push(d - created);
                let o = check("vmadm get", daemon.run("vmadm", &["get", &uuid], None))?;
                let vm: serde_json::Value =
                    serde_json::from_slice(&o.stdout).map_err(|e| format!("vmadm get: {e}"))?;
                if vm["state"] != "stopped" || vm["exit_status"] != 0 {
                    return Err(format!("the docker zone did not run /bin/true: {vm}"));
                }
                // The same zone started again: no record or root made.
                let t = Instant::now();
                check("vmadm start", daemon.run("vmadm", &["start", &uuid], None))?;
                stopped.wait_for(&uuid)?;
                restarts.push(t.elapsed());
                check(
                    "vmadm delete",
                    daemon.run("vmadm", &["delete", &uuid], None),
                )?;
                d
            };
            times[m].push(d);
        }
    }
    table(
        &[
            "crun run (umoci's bundle)",
            "vmadm create + start (docker zone), to the stop event",
        ],
        &times,
        true,
    )?;
    println!(
        "\nof which `vmadm create` (returns once the process has started): median {} ms",
        ms(median(creates))
    );
    println!(
        "from `vmadm create`'s return to the stop event: median {} ms",
        ms(median(exits))
    );
    println!(
        "`vmadm start` of the stopped docker zone again, to the stop event: median {} ms",
        ms(median(restarts))
    );
    Ok(())
}

/// The guests whose state events said stopped, from one `GET /v1/events` subscription held
/// for the whole benchmark (subscribed before the first create, so that no event is missed).
struct Stopped {
    rx: std::sync::mpsc::Receiver<String>,
}

impl Stopped {
    fn subscribe(daemon: &Daemon) -> Res<Stopped> {
        let client = daemon.client();
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = client.events(
                None,
                false,
                || {
                    let _ = ready_tx.send(());
                },
                |line| {
                    let Ok(e) = serde_json::from_str::<hull_spec::Event>(line) else {
                        return true;
                    };
                    // A create's event says stopped too (the record before its start).
                    if e.kind == hull_spec::EventKind::State
                        && e.state == Some(hull_spec::VmState::Stopped)
                    {
                        return tx.send(e.uuid.to_string()).is_ok();
                    }
                    true
                },
            );
            if let Err(e) = r {
                eprintln!("bench-docker: the event stream ended: {e}");
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "vmmd's event stream did not start".to_string())?;
        Ok(Stopped { rx })
    }

    /// Waits (up to a minute) for the stop of `uuid`.
    fn wait_for(&self, uuid: &str) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(u) if u == uuid => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(format!("no stop event for the docker zone {uuid}")),
            }
        }
    }
}

/// The table of two paths' times, and their ratio.
fn table(names: &[&str; 2], times: &[Vec<Duration>; 2], in_ms: bool) -> Res<()> {
    let (label, unit): (&str, fn(Duration) -> String) = match in_ms {
        true => ("ms", ms),
        false => ("s", secs),
    };
    println!("| path | median ({label}) | min | max |");
    println!("|---|---|---|---|");
    let mut medians = [Duration::ZERO; 2];
    for (m, name) in names.iter().enumerate() {
        let v = &times[m];
        let (min, max) = (v.iter().min(), v.iter().max());
        medians[m] = median(v.clone());
        println!(
            "| {name} | {} | {} | {} |",
            unit(medians[m]),
            min.map_or("n/a".to_string(), |d| unit(*d)),
            max.map_or("n/a".to_string(), |d| unit(*d)),
        );
    }
    let ratio = medians[1].as_secs_f64() / medians[0].as_secs_f64();
    println!("\nhull / peer = {ratio:.2}");
    Ok(())
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    assert!(
        hull_tests::is_root(),
        "bench-docker mounts a loop filesystem and runs umoci unpack: run it as root"
    );
    // Errors come back here rather than panicking (release builds abort on panic), so that
    // vmmd is stopped and the loop filesystem unmounted before the exit.
    let only_start = std::env::args().nth(2).as_deref() == Some("start");
    if let Err(e) = bench(runs, only_start) {
        eprintln!("bench-docker: {e}");
        std::process::exit(1);
    }
}
