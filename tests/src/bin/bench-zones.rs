//! Zone benchmark (issue 4), run as root, in two modes:
//!
//! - `start [runs]` (default 21): `vmadm start` of a busybox zone (until the zone's init
//!   runs) and `vmadm create` with autoboot from the image, next to `crun run` and
//!   `runc run` of `/bin/true` in the same busybox root tree with equivalent namespaces
//!   (pid, mount, uts, ipc, network, cgroup, user) and limits (256 MiB memory and swap,
//!   1024 pids, 100 cpu shares), alternating, each a fresh process.
//! - `density [zones]` (default 500): that many running zones with a sleeping init; host
//!   memory per zone (MemAvailable before and after, and the RSS/PSS of zoned and init),
//!   `vmadm list` at that count, and how long deleting them all takes.
//!
//! Run: `cargo build --release -p hull-tests -p vmmd -p hull-zoned -p hull-cli &&
//! sudo target/release/bench-zones start 21 && sudo target/release/bench-zones density 500`.
//! Prints Markdown tables for docs/PERFORMANCE.md. Leaves no zones, containers or temp dirs
//! behind, also when a step fails (the release profile aborts on panic, so failures after
//! the first zone exists are errors that are cleaned up after, not panics).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hull_tests::oci_peer::{
    CPU_SHARES, MEMORY_MIB, OCI_HOST_ID, PIDS, enter_mount_ns, hybrid_with_v2_controllers,
    masked_cgroup2, oci_config,
};
use hull_tests::{Daemon, bin};
use serde_json::{Value, json};

type Res<T> = Result<T, String>;

/// What a container reports about its limits and ids (cgroup v1 or v2 files).
const PROBE: &str = "m=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null); \
    p=$(cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null); \
    c=$(cat /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu.weight 2>/dev/null); \
    echo memory=${m:-?} pids=${p:-?} cpu=${c:-?} uid_map=$(cat /proc/self/uid_map)";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: f64) -> String {
    format!("{:.2}", kib / 1024.0)
}

fn text(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout);
    format!("exit {:?}: {}{}", o.status.code(), err.trim(), out.trim())
}

/// Runs a command to the end with stdin closed; an error unless it exits 0.
fn run(cmd: &mut Command) -> Res<Output> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if o.status.success() {
        Ok(o)
    } else {
        Err(format!("{:?} failed, {}", cmd.get_program(), text(&o)))
    }
}

/// Wall time of a command run to the end (it must exit 0).
fn timed(cmd: &mut Command) -> Res<(Duration, Output)> {
    let t = Instant::now();
    let o = run(cmd)?;
    Ok((t.elapsed(), o))
}

fn first_line(cmd: &str) -> String {
    Command::new(cmd)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("?")
                .to_string()
        })
        .unwrap_or_else(|e| format!("{cmd} not runnable: {e}"))
}

/// The busybox image (images/busybox/build into its default target/images/busybox), built
/// under the lock the zone tests use. Returns (manifest, image file, image uuid).
fn busybox() -> Res<(PathBuf, PathBuf, String)> {
    let (manifest, file) = hull_tests::recipe_image("busybox", None, "busybox.tar.gz")?;
    let m: Value = std::fs::read(&manifest)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("unreadable manifest {}", manifest.display()))?;
    let uuid = m["uuid"]
        .as_str()
        .ok_or("manifest without uuid")?
        .to_string();
    Ok((manifest, file, uuid))
}

/// A vmmd with the busybox image installed, and the zones made through it; `finish`
/// deletes them (force-stopping running ones).
struct Hull {
    d: Daemon,
    image: String,
    image_file: PathBuf,
    zones: Vec<String>,
}

impl Hull {
    fn new(d: Daemon) -> Res<Hull> {
        let (manifest, file, image) = busybox()?;
        let o = d.imgadm_install(&manifest, &file);
        if !o.status.success() {
            return Err(format!("imgadm install: {}", text(&o)));
        }
        Ok(Hull {
            d,
            image,
            image_file: file,
            zones: Vec::new(),
        })
    }

    fn vmadm(&self) -> Command {
        let mut c = Command::new(bin("vmadm"));
        c.env("HULL_SOCKET", self.d.socket());
        c
    }

    /// The create payload: the busybox image with the limits the OCI side also gets.
    fn payload(&self, autoboot: bool, extra: Value) -> String {
        let mut p = json!({"brand": "joyent-minimal", "image_uuid": self.image,
            "autoboot": autoboot, "max_physical_memory": MEMORY_MIB, "max_swap": MEMORY_MIB,
            "max_lwps": PIDS, "cpu_shares": CPU_SHARES});
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        p.to_string()
    }

    /// Timed `vmadm create` (payload on stdin); records the new zone for cleanup.
    fn create(&mut self, payload: &str) -> Res<(Duration, String)> {
        let t = Instant::now();
        let o = self.d.vmadm(&["create"], Some(payload));
        let took = t.elapsed();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let uuid = all
            .split_whitespace()
            .find(|w| uuid::Uuid::parse_str(w).is_ok())
            .map(str::to_string);
        if let Some(u) = &uuid {
            self.zones.push(u.clone());
        }
        match (o.status.success(), uuid) {
            (true, Some(u)) => Ok((took, u)),
            _ => Err(format!("vmadm create: {}", text(&o))),
        }
    }

    fn state_file(&self, uuid: &str) -> Option<Value> {
        let p = self
            .d
            .data_root()
            .join("zones")
            .join(uuid)
            .join("state.json");
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    }

    /// Deletes one zone; if vmadm cannot, kills its zoned (vmmd then clears the zone's
    /// processes and cgroup) and tries again.
    fn delete(&mut self, uuid: &str) -> Res<()> {
        let first = run(self.vmadm().args(["delete", uuid]));
        let result = first.or_else(|e| {
            let pid = self
                .state_file(uuid)
                .and_then(|s| s["zoned_pid"].as_i64())
                .ok_or(e)?;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let t = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(100));
                match run(self.vmadm().args(["delete", uuid])) {
                    Ok(o) => return Ok(o),
                    Err(e) if t.elapsed() > Duration::from_secs(15) => return Err(e),
                    Err(_) => {}
                }
            }
        });
        if result.is_ok() {
            self.zones.retain(|z| z != uuid);
        }
        result.map(|_| ())
    }

    /// Deletes every zone still recorded; returns how long it took and what failed.
    fn finish(&mut self) -> (Duration, Vec<String>) {
        let t = Instant::now();
        let mut failed = Vec::new();
        for uuid in self.zones.clone() {
            if let Err(e) = self.delete(&uuid) {
                failed.push(format!("{uuid}: {e}"));
            }
        }
        let took = t.elapsed();
        for f in &failed {
            eprintln!("WARNING: zone left behind: {f}");
        }
        (took, failed)
    }

    /// zoned processes serving this daemon's data root.
    fn zoned_processes(&self) -> usize {
        let root = self.d.data_root().to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("zoned") && c.contains(&root)
                })
            })
            .count()
    }
}

/// Memory of one process from /proc: (VmRSS, Pss) in KiB.
fn rss_pss(pid: i64) -> (u64, u64) {
    let field = |file: &str, key: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

/// MemAvailable (KiB) after dropping clean caches, so page cache does not count.
fn mem_available() -> Res<u64> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| e.to_string())?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no MemAvailable in /proc/meminfo".into())
}

// ---------------------------------------------------------------------------------------
// OCI side

/// An OCI runtime and how it runs the bundle on this host.
struct Runtime {
    name: &'static str,
    bundle: PathBuf,
    /// A mount namespace in which cgroup v2 shows no controllers (see [`masked_cgroup2`]).
    mount_ns: Option<File>,
    config: String,
    ids: Vec<String>,
}

impl Runtime {
    fn command(&self) -> Command {
        let mut c = Command::new(self.name);
        if let Some(ns) = &self.mount_ns {
            enter_mount_ns(&mut c, ns);
        }
        c
    }

    /// `RUNTIME run -b BUNDLE ID` to the end; timed.
    fn run(&mut self, id: String) -> Res<(Duration, Output)> {
        self.ids.push(id.clone());
        let mut c = self.command();
        c.arg("run").arg("-b").arg(&self.bundle).arg(&id);
        timed(&mut c)
    }

    /// Removes what a failed run may have left (untimed).
    fn clean(&mut self) {
        for id in std::mem::take(&mut self.ids) {
            let _ = self
                .command()
                .args(["delete", "-f", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    fn write_config(&self, config: &Value) -> Res<()> {
        let path = self.bundle.join("config.json");
        let bytes = serde_json::to_vec_pretty(config).map_err(|e| e.to_string())?;
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Finds a configuration in which `rt` runs `/bin/true` with exit 0, in the order: as
/// specified; with cgroup v2's controllers masked (hybrid hosts); without the user
/// namespace; both. Leaves that configuration in the bundle and describes it in
/// `rt.config` (with what the container saw of its limits).
fn settle(rt: &mut Runtime, base: &Value, rootfs: &Path) -> Res<()> {
    let mut notes = Vec::new();
    let masks: &[bool] = if hybrid_with_v2_controllers() {
        &[false, true]
    } else {
        &[false]
    };
    for userns in [true, false] {
        for &mask in masks {
            rt.mount_ns = if mask { Some(masked_cgroup2()?) } else { None };
            let what = format!(
                "{}user namespace{}",
                if userns { "" } else { "NO " },
                if mask {
                    ", started in a private mount namespace with /dev/null over \
                     /sys/fs/cgroup/unified/cgroup.controllers (limits in the v1 hierarchies)"
                } else {
                    ""
                }
            );
            rt.write_config(&oci_config(
                base,
                Some(rootfs),
                &["/bin/sh", "-c", PROBE],
                userns,
            ))?;
            let id = format!("hull-bench-{}-{}-probe", std::process::id(), rt.name);
            match rt.run(id) {
                Ok((_, o)) => {
                    rt.write_config(&oci_config(base, Some(rootfs), &["/bin/true"], userns))?;
                    let id = format!("hull-bench-{}-{}-check", std::process::id(), rt.name);
                    rt.run(id)?;
                    rt.clean();
                    notes.push(format!(
                        "ran with {what}; inside: {}",
                        String::from_utf8_lossy(&o.stdout).trim()
                    ));
                    rt.config = notes.join("; ");
                    return Ok(());
                }
                Err(e) => {
                    rt.clean();
                    let first = e.lines().next().unwrap_or_default().to_string();
                    notes.push(format!("FAILED with {what}: {first}"));
                }
            }
        }
    }
    rt.mount_ns = None;
    Err(format!(
        "{} runs in no configuration: {}",
        rt.name,
        notes.join("; ")
    ))
}

/// Median time of spawning `/bin/true` with and without the setns(2) into the masked mount
/// namespace: what the masking adds to each timed crun/runc run.
fn setns_cost(ns: &File, runs: usize) -> Res<Duration> {
    let with = Runtime {
        name: "true",
        bundle: PathBuf::new(),
        mount_ns: Some(ns.try_clone().map_err(|e| e.to_string())?),
        config: String::new(),
        ids: Vec::new(),
    };
    let mut plain = Vec::new();
    let mut entered = Vec::new();
    for _ in 0..runs {
        plain.push(timed(&mut Command::new("true"))?.0);
        entered.push(timed(&mut with.command())?.0);
    }
    Ok(median(entered).saturating_sub(median(plain)))
}

// ---------------------------------------------------------------------------------------
// start

struct Series {
    name: &'static str,
    times: Vec<Duration>,
}

impl Series {
    fn row(&self) -> String {
        let mut v = self.times.clone();
        v.sort();
        format!(
            "| {} | {} | {} | {} |",
            self.name,
            ms(median(v.clone())),
            ms(v[0]),
            ms(v[v.len() - 1])
        )
    }
}

fn start(runs: usize) -> Res<()> {
    let mut hull = Hull::new(Daemon::start())?;
    let work = tempfile::Builder::new()
        .prefix("hull-bench-oci")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let mut runtimes: Vec<Runtime> = ["crun", "runc"]
        .into_iter()
        .map(|name| Runtime {
            name,
            bundle: work.path().join(name),
            mount_ns: None,
            config: String::new(),
            ids: Vec::new(),
        })
        .collect();
    let result = start_runs(&mut hull, &mut runtimes, work.path(), runs);
    for rt in &mut runtimes {
        rt.clean();
    }
    let (_, left) = hull.finish();
    let left_oci: Vec<String> = ["crun", "runc"]
        .iter()
        .filter_map(|r| Command::new(r).args(["list", "-q"]).output().ok())
        .flat_map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with(&format!("hull-bench-{}-", std::process::id())))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    if !left_oci.is_empty() {
        eprintln!("WARNING: containers left behind: {left_oci:?}");
    }
    result?;
    if !left.is_empty() {
        return Err(format!("{} zones could not be deleted", left.len()));
    }
    Ok(())
}

fn start_runs(hull: &mut Hull, rts: &mut [Runtime], work: &Path, runs: usize) -> Res<()> {
    // The root tree: the image's tarball, as it is; readable for the user namespace's ids.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let rootfs = work.join("rootfs");
    std::fs::create_dir(&rootfs).map_err(|e| e.to_string())?;
    run(Command::new("tar")
        .args(["--numeric-owner", "-xzf"])
        .arg(&hull.image_file)
        .arg("-C")
        .arg(&rootfs))?;
    let base_dir = work.join("spec");
    std::fs::create_dir(&base_dir).map_err(|e| e.to_string())?;
    run(Command::new("crun").arg("spec").current_dir(&base_dir))?;
    let base: Value = std::fs::read(base_dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("crun spec wrote no readable config.json")?;
    for rt in rts.iter_mut() {
        std::fs::create_dir(&rt.bundle).map_err(|e| e.to_string())?;
        settle(rt, &base, &rootfs)?;
    }

    let (_, uuid) = hull.create(&hull.payload(false, json!({"alias": "bench-start"})))?;
    // One untimed start: the zone's own limits and ids as its processes see them.
    run(hull.vmadm().args(["start", &uuid]))?;
    let seen = run(Command::new(bin("zlogin"))
        .env("HULL_SOCKET", hull.d.socket())
        .args([uuid.as_str(), "sh", "-c", PROBE]))
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_else(|e| format!("(zlogin failed: {e})"));
    let host_side = zone_cgroup(&uuid);
    run(hull.vmadm().args(["stop", "-F", &uuid]))?;

    let mut series = [
        "hull: `vmadm start` (until init runs)",
        "hull: `vmadm create` + start from the image",
        "`crun run` /bin/true",
        "`runc run` /bin/true",
    ]
    .map(|name| Series {
        name,
        times: Vec::new(),
    });
    let pid = std::process::id();
    for i in 0..runs {
        let (t, _) = timed(hull.vmadm().args(["start", &uuid]))?;
        series[0].times.push(t);
        run(hull.vmadm().args(["stop", "-F", &uuid]))?;
        for (k, rt) in rts.iter_mut().enumerate() {
            let (t, _) = rt.run(format!("hull-bench-{pid}-{}-{i}", rt.name))?;
            series[2 + k].times.push(t);
            rt.ids.pop();
        }
        let (t, created) = hull.create(&hull.payload(true, json!({"alias": "bench-create"})))?;
        series[1].times.push(t);
        hull.delete(&created)?;
    }

    let m = |s: &Series| median(s.times.clone()).as_secs_f64();
    println!("{}; {}", first_line("crun"), first_line("runc"));
    println!("{runs} runs each, alternating; wall time of a fresh process, ms.\n");
    println!("| measurement | median | min | max |");
    println!("|---|---|---|---|");
    for s in &series {
        println!("{}", s.row());
    }
    println!();
    println!(
        "hull start / crun run: **{:.2}x** (target <= 0.6x); hull start / runc run: **{:.2}x**",
        m(&series[0]) / m(&series[2]),
        m(&series[0]) / m(&series[3])
    );
    println!();
    println!(
        "- OCI bundle: `crun spec` defaults (mounts /proc, /dev tmpfs, /dev/pts newinstance, \
         /dev/shm, /dev/mqueue, /sys ro, /sys/fs/cgroup ro; masked/readonly paths; no \
         seccomp), read-only root = the image tarball extracted, namespaces pid, mount, uts, \
         ipc, network, cgroup, user (0 -> host {OCI_HOST_ID:#x}, 65536 ids), memory = swap = \
         {MEMORY_MIB} MiB, pids {PIDS}, cpu shares {CPU_SHARES}, no cgroupsPath."
    );
    for rt in rts.iter() {
        println!("- {}: {}", rt.name, rt.config);
        if let Some(ns) = &rt.mount_ns {
            println!(
                "  (entering that mount namespace costs {} ms per run, included in its times)",
                ms(setns_cost(ns, runs)?)
            );
        }
    }
    println!(
        "- hull zone: joyent-minimal from the busybox image, max_physical_memory = max_swap = \
         {MEMORY_MIB}, max_lwps {PIDS}, cpu_shares {CPU_SHARES} (zoned adds an id-mapped \
         overlay root, a console pty and a seccomp filter); its cgroup on the host: \
         {host_side}; inside: {seen}"
    );
    Ok(())
}

/// The limits in a running zone's cgroup (`hull/UUID`), read on the host (v1 or v2 files).
fn zone_cgroup(uuid: &str) -> String {
    let read = |controller: &str, v1: &str, v2: &str| {
        [
            format!("/sys/fs/cgroup/{controller}/hull/{uuid}/{v1}"),
            format!("/sys/fs/cgroup/hull/{uuid}/{v2}"),
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map_or_else(|| "?".to_string(), |v| v.trim().to_string())
    };
    format!(
        "memory={} memsw={} pids={} cpu={}",
        read("memory", "memory.limit_in_bytes", "memory.max"),
        read("memory", "memory.memsw.limit_in_bytes", "memory.swap.max"),
        read("pids", "pids.max", "pids.max"),
        read("cpu", "cpu.shares", "cpu.weight"),
    )
}

// ---------------------------------------------------------------------------------------
// density

fn density(n: usize) -> Res<()> {
    let data = tempfile::Builder::new()
        .prefix("hull-bench-density")
        .tempdir_in("/var/tmp")
        .map_err(|e| format!("tempdir in /var/tmp: {e}"))?;
    let mut hull = Hull::new(Daemon::start_on(data.path()))?;
    let result = density_runs(&mut hull, n);
    let (took, left) = hull.finish();
    if result.is_err() {
        eprintln!("deleted the zones in {:.1} s", took.as_secs_f64());
    }
    let report = result?;
    // Without vmmd its spare zoned goes too; a zoned still running a zone stays.
    hull.d.kill9();
    let mut leftover = hull.zoned_processes();
    let t = Instant::now();
    while leftover > 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        leftover = hull.zoned_processes();
    }
    println!("{report}");
    println!(
        "| delete all {n} zones (`vmadm delete` each, serial) | {:.1} s ({} ms per zone) |",
        took.as_secs_f64(),
        ms(took / n.max(1) as u32)
    );
    println!("| zoned processes left after deleting | {leftover} |");
    if !left.is_empty() || leftover > 0 {
        return Err(format!(
            "{} zones not deleted, {leftover} zoned processes left",
            left.len()
        ));
    }
    Ok(())
}

/// Creates and starts `n` zones, measures, and returns the table (without the deletion).
fn density_runs(hull: &mut Hull, n: usize) -> Res<String> {
    let vmmd_pid = i64::from(hull.d.child.as_ref().ok_or("no vmmd")?.id());
    let vmmd_before = rss_pss(vmmd_pid);
    let before = mem_available()?;
    let t = Instant::now();
    let mut creates = Vec::new();
    let mut failure = None;
    for i in 0..n {
        let payload = hull.payload(
            true,
            json!({"alias": format!("dense{i}"), "init_name": "/bin/sleep 1000000"}),
        );
        match hull.create(&payload) {
            Ok((took, _)) => creates.push(took),
            Err(e) => {
                failure = Some(format!("zone {} of {n} failed: {e}", i + 1));
                break;
            }
        }
        if (i + 1) % 100 == 0 {
            eprintln!("{} zones running", i + 1);
        }
    }
    let create_all = t.elapsed();
    let running = creates.len();
    let tenth = (running / 10).max(1);
    let (first, last) = (
        median(creates[..tenth].to_vec()),
        median(creates[running - tenth..].to_vec()),
    );
    if running == 0 {
        return Err(failure.unwrap_or_else(|| "no zones".into()));
    }
    let after = mem_available()?;
    let (mut zoned, mut init) = ((0u64, 0u64), (0u64, 0u64));
    for uuid in &hull.zones {
        let st = hull
            .state_file(uuid)
            .ok_or_else(|| format!("no state.json for {uuid}"))?;
        for (key, sum) in [("zoned_pid", &mut zoned), ("init_pid", &mut init)] {
            let pid = st[key]
                .as_i64()
                .ok_or_else(|| format!("{uuid}: no {key}"))?;
            let (rss, pss) = rss_pss(pid);
            sum.0 += rss;
            sum.1 += pss;
        }
    }
    let charged: u64 = hull
        .zones
        .iter()
        .filter_map(|u| {
            [
                format!("/sys/fs/cgroup/memory/hull/{u}/memory.usage_in_bytes"),
                format!("/sys/fs/cgroup/hull/{u}/memory.current"),
            ]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
        })
        .sum();
    let vmmd_after = rss_pss(vmmd_pid);
    let mut lists = Vec::new();
    for _ in 0..11 {
        let (took, o) = timed(hull.vmadm().arg("list"))?;
        let rows = String::from_utf8_lossy(&o.stdout).lines().count();
        if rows != running + 1 {
            return Err(format!(
                "vmadm list showed {rows} lines for {running} zones"
            ));
        }
        lists.push(took);
    }

    let per = |kib: u64| kib as f64 / running as f64;
    // Signed: with few zones, other activity on the host can outweigh them.
    let total = (before as f64 - after as f64) / running as f64;
    let mut out = String::new();
    if let Some(f) = &failure {
        out += &format!("**Stopped early: {running} of {n} zones ran.** {f}\n\n");
    }
    out += &format!(
        "{running} running busybox zones, init `/bin/sleep 1000000`, data root on /var/tmp \
         (overlay backend). MiB per zone unless noted.\n\n"
    );
    out += "| measurement | value |\n|---|---|\n";
    let mut row = |k: &str, v: String| out += &format!("| {k} | {v} |\n");
    row(
        "create + start all (`vmadm create`, autoboot, serial)",
        format!(
            "{:.1} s (median {} ms per zone; first tenth {} ms, last tenth {} ms)",
            create_all.as_secs_f64(),
            ms(median(creates)),
            ms(first),
            ms(last)
        ),
    );
    row(
        "host memory used per zone (MemAvailable before - after, caches dropped)",
        mib(total),
    );
    row(
        "zoned RSS / PSS per zone",
        format!("{} / {}", mib(per(zoned.0)), mib(per(zoned.1))),
    );
    row(
        "init RSS / PSS per zone",
        format!("{} / {}", mib(per(init.0)), mib(per(init.1))),
    );
    row("(zoned + init) RSS per zone", mib(per(zoned.0 + init.0)));
    row(
        "memory charged to the zone's cgroup per zone (init, its page tables, kernel objects)",
        mib(per(charged / 1024)),
    );
    row(
        "vmmd RSS growth per zone",
        mib(per(vmmd_after.0.saturating_sub(vmmd_before.0))),
    );
    row(
        "**beyond the init process** (host per zone - init RSS; target <= 2 MiB)",
        format!(
            "**{}** ({} using init PSS)",
            mib(total - per(init.0)),
            mib(total - per(init.1))
        ),
    );
    row(
        &format!("`vmadm list` at {running} zones (median of 11, ms)"),
        ms(median(lists)),
    );
    Ok(out.trim_end().to_string())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let count = args.next().map(|s| s.parse::<usize>());
    let result = match (mode.as_str(), count) {
        (_, Some(Err(e))) => Err(format!("the count: {e}")),
        (_, Some(Ok(0))) => Err("the count must be at least 1".into()),
        ("start", c) => start(c.and_then(Result::ok).unwrap_or(21)),
        ("density", c) => density(c.and_then(Result::ok).unwrap_or(500)),
        _ => Err("usage: bench-zones start [RUNS] | bench-zones density [ZONES]".into()),
    };
    if let Err(e) = result {
        eprintln!("bench-zones: {e}");
        std::process::exit(1);
    }
}
