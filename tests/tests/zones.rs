//! Zones end to end, as root (tier 2): vmmd, zoned, vmadm, zlogin and the bundled busybox
//! image (images/busybox/build, Debian's busybox-static).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::zone::{
    built_image, create, image_uuid, install, install_image, manifest_uuid, text,
};
use hull_tests::{Daemon, bin};

fn state(d: &Daemon, uuid: &str) -> String {
    let vm = d
        .client()
        .get_vm(uuid::Uuid::parse_str(uuid).expect("uuid"))
        .expect("get");
    vm.state.as_str().to_string()
}

fn wait_state(d: &Daemon, uuid: &str, want: &str) {
    let t = Instant::now();
    while state(d, uuid) != want {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{uuid} never became {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the zone's console (which replays recent output) until it shows `want`.
fn console_shows(console: &str, want: &str) {
    hull_tests::console_until(console, want);
}

/// The host uid of the zone's init (from /proc/PID/status).
fn init_host_uid(d: &Daemon, uuid: &str) -> u32 {
    let vm = d
        .client()
        .get_vm(uuid::Uuid::parse_str(uuid).expect("uuid"))
        .expect("get");
    let pid = vm.pid.expect("init pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("uid")
}

/// zoned's state.json for the zone (it stays after the zone stops).
fn zone_state_file(d: &Daemon, uuid: &str) -> serde_json::Value {
    let path = d.data_root().join("zones").join(uuid).join("state.json");
    serde_json::from_slice(&std::fs::read(path).expect("state")).expect("json")
}

/// Waits up to 5 s for the host's traces of `uuids` to return to `before`, then asserts it.
fn assert_traces_settle(d: &Daemon, uuids: &[String], before: (usize, usize, usize)) {
    let t = Instant::now();
    while traces(&d.data_root(), uuids) != before && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(traces(&d.data_root(), uuids), before);
}

/// Host-side traces zones can leave: cgroup directories of `uuids`, zoned processes and
/// mounts naming the data root.
fn traces(data_root: &Path, uuids: &[String]) -> (usize, usize, usize) {
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|h| {
            let mut v = vec![h.path().join("hull")];
            v.push(h.path().join("unified/hull"));
            v
        })
        .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
        .filter(|e| e.path().is_dir() && uuids.iter().any(|u| e.file_name() == u.as_str()))
        .count();
    let zoned = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .is_ok_and(|c| c.contains("zoned") && c.contains(&*data_root.to_string_lossy()))
        })
        .count();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&*data_root.to_string_lossy()))
        .count();
    (cgroups, zoned, mounts)
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_lifecycle_console_zlogin_and_restart() {
    let mut d = Daemon::start();
    install(&d);
    let before = traces(&d.data_root(), &[]);
    let uuid = create(
        &d,
        serde_json::json!({"resolvers": ["192.0.2.53"], "dns_domain": "example.com"}),
    );
    let mine = [uuid.clone()];
    assert_eq!(state(&d, &uuid), "running");
    // zlogin: output, exit status, identity and hostname inside.
    let o = d.zlogin(&uuid, "id -u; hostname; cat /etc/resolv.conf; exit 7");
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("0\nztest\n"), "{out}");
    assert!(
        out.contains("search example.com\nnameserver 192.0.2.53\n"),
        "{out}"
    );
    // The console replays what init printed.
    let rt = d
        .client()
        .runtime(uuid::Uuid::parse_str(&uuid).expect("uuid"))
        .expect("runtime");
    console_shows(&rt.console, "zone ztest up");
    // The console through vmmd's API (vmadm console's way, and hull-web's): what init
    // printed, replayed, then a command typed into the shell on the console, and its answer.
    let id = uuid::Uuid::parse_str(&uuid).expect("uuid");
    let (mut con, replayed) = d.client().console(id).expect("console through the API");
    let mut seen = replayed.to_vec();
    hull_tests::stream_until(&mut con, &mut seen, "zone ztest up");
    std::io::Write::write_all(&mut con, b"hostname\n").expect("type");
    hull_tests::stream_until(&mut con, &mut seen, "hostname\r\nztest\r\n");
    drop(con);
    // Without the Upgrade header the route says what it wants.
    let r = d
        .client()
        .raw(hyper::Method::GET, &format!("/v1/vms/{uuid}/console"), None)
        .expect("raw");
    assert_eq!(r.status.as_u16(), 426, "{:?}", r.body);
    // Stop, start again, and survive a vmmd SIGKILL.
    let o = d.vmadm(&["stop", &uuid, "-t", "10"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(state(&d, &uuid), "stopped");
    let e = d
        .client()
        .console(id)
        .expect_err("a stopped zone's console");
    assert!(e.to_string().contains("not running"), "{e}");
    let o = d.vmadm(&["start", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.zlogin(&uuid, "touch /survives && echo ok");
    assert!(o.status.success(), "{}", text(&o));
    d.kill9();
    d.spawn();
    assert_eq!(state(&d, &uuid), "running", "{}", d.log());
    let o = d.zlogin(&uuid, "cat /proc/1/cmdline; ls /survives");
    assert!(o.status.success(), "{}", text(&o));
    let o = d.vmadm(&["stop", &uuid, "-F"], None);
    assert!(o.status.success(), "{}", text(&o));
    // A zone whose zoned is killed stops, and vmmd clears what it left: at once, or when it
    // is back if it was down too.
    for vmmd_down in [false, true] {
        let o = d.vmadm(&["start", &uuid], None);
        assert!(o.status.success(), "{}", text(&o));
        let st: serde_json::Value = serde_json::from_slice(
            &std::fs::read(Path::new(&rt.dir).join("state.json")).expect("state"),
        )
        .expect("json");
        let zoned_pid = st["zoned_pid"].as_i64().expect("pid") as i32;
        let init_pid = st["init_pid"].as_i64().expect("init pid") as i32;
        console_shows(&rt.console, "zone ztest up");
        if vmmd_down {
            d.kill9();
        }
        // SAFETY: kill(2) on the zone's zoned.
        unsafe { libc::kill(zoned_pid, libc::SIGKILL) };
        if vmmd_down {
            d.spawn();
        }
        wait_state(&d, &uuid, "stopped");
        let t = Instant::now();
        let alive = || {
            std::fs::read_to_string(format!("/proc/{init_pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "))
        };
        while alive() {
            assert!(t.elapsed() < Duration::from_secs(5), "init outlived zoned");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
    assert_traces_settle(&d, &mine, before);
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_is_confined() {
    let d = Daemon::start();
    install(&d);
    let uuid = create(&d, serde_json::json!({}));
    let zoned_bin = bin("zoned");
    let hash_before = std::fs::read(&zoned_bin).expect("zoned binary");
    let script = r#"
        fail=0
        check() { if "$@" >/dev/null 2>&1; then echo "ALLOWED: $*"; fail=1; fi; }
        check mount -t tmpfs none /mnt
        check sh -c 'echo 1 > /proc/sys/kernel/sysrq'
        check sh -c 'echo h > /proc/sysrq-trigger'
        check sh -c 'echo x > /sys/kernel/uevent_helper'
        check test -e /dev/kvm
        check mknod /tmp/sda b 8 0
        check hostname other
        check ip link set lo mtu 1280
        check sh -c 'echo x > /proc/self/exe'
        check cat /proc/kcore
        # The host's kernel command line (it may carry secrets) reads empty.
        [ -z "$(cat /proc/cmdline)" ] || { echo "reads the host's command line"; fail=1; }
        # Module loading is refused (EPERM), not tried and found a bad module (ENOEXEC).
        head -c 64 /dev/zero > /tmp/junk.ko
        out=$(insmod /tmp/junk.ko 2>&1)
        case "$out" in *"not permitted"*) ;; *) echo "insmod: $out"; fail=1;; esac
        n=$(ls -d /proc/[0-9]* | wc -l)
        [ "$n" -lt 10 ] || { echo "sees $n processes"; fail=1; }
        for p in /proc/[0-9]*; do
            [ "$(readlink $p/cwd)" = "${p#/proc/}" ] && continue
            case "$(readlink $p/cwd)" in /*) ;; *) echo "cwd outside: $p"; fail=1;; esac
            for f in $p/fd/*; do
                t=$(readlink $f) || continue
                case "$t" in /dev/*|pipe:*|socket:*|anon_inode:*|/proc/*) ;; *) echo "fd $f -> $t"; fail=1;; esac
            done
        done
        exit $fail
    "#;
    let o = d.zlogin(&uuid, script);
    assert!(o.status.success(), "{}", text(&o));
    // Root in the zone is an unprivileged uid on the host.
    let uid = init_host_uid(&d, &uuid);
    assert!(uid >= 0x1000_0000, "zone root is host uid {uid}");
    assert_eq!(
        std::fs::read(&zoned_bin).expect("zoned binary"),
        hash_before
    );
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// zlogin with host objects as its caller's stdio (a directory, a file, a socket): the zone's
/// process holds only pipes, and data, exit status and signals still pass.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zlogin_relay_hands_the_zone_no_host_descriptor() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::process::Stdio;
    let d = Daemon::start();
    install(&d);
    let uuid = create(&d, serde_json::json!({}));
    let zlogin = |args: &[&str]| {
        let mut c = Command::new(bin("zlogin"));
        c.env("HULL_SOCKET", d.socket()).arg(&uuid).args(args);
        c
    };
    // Every descriptor of the zone's shell, as the zone sees it.
    let out_file = d.dir.path().join("host-stdout");
    let (sock, mut peer) = UnixStream::pair().expect("socketpair");
    let status = zlogin(&[
        "sh",
        "-c",
        "for f in /proc/$$/fd/*; do echo \"$f -> $(readlink $f)\"; done",
    ])
    .stdin(Stdio::from(
        std::fs::File::open(d.dir.path()).expect("a host directory"),
    ))
    .stdout(Stdio::from(
        std::fs::File::create(&out_file).expect("a host file"),
    ))
    .stderr(Stdio::from(std::os::fd::OwnedFd::from(sock)))
    .status()
    .expect("zlogin");
    let listing = std::fs::read_to_string(&out_file).expect("output");
    peer.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut err = String::new();
    let _ = peer.read_to_string(&mut err);
    assert_eq!(status.code(), Some(0), "{listing}{err}");
    let targets: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_once(" -> ").map(|(_, t)| t))
        .collect();
    assert!(targets.len() >= 3, "{listing}");
    let host = d.dir.path().to_string_lossy().to_string();
    // The shell opens nothing of its own while it lists (the glob is read before the loop
    // and each $(...) is a pipe): a /proc path here would be a leaked descriptor too.
    for t in &targets {
        assert!(
            t.starts_with("pipe:[") || t.starts_with("/dev/pts/") || *t == "/dev/null",
            "the zone's process holds {t:?}: {listing}"
        );
        assert!(!t.contains(&host) && !t.starts_with("socket:"), "{listing}");
    }
    for fd in ["0", "1", "2"] {
        assert!(
            listing.contains(&format!("/fd/{fd} -> pipe:[")),
            "fd {fd} is not a pipe: {listing}"
        );
    }

    // Data in and out (binary, 1 MiB), stdout and stderr apart, the exit status.
    let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let mut c = zlogin(&["sh", "-c", "cat; echo err >&2; exit 7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zlogin");
    let mut stdin = c.stdin.take().expect("stdin");
    let writer = {
        let payload = payload.clone();
        std::thread::spawn(move || {
            stdin.write_all(&payload).expect("write");
        })
    };
    let o = c.wait_with_output().expect("output");
    writer.join().expect("writer");
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout == payload, "{} bytes came back", o.stdout.len());
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");

    // A command that closes its stdout early: its stderr is still relayed, and zlogin ends
    // with it rather than waiting for an EOF that already came.
    let t = Instant::now();
    let o = zlogin(&["sh", "-c", "exec >&-; sleep 0.3; echo bye >&2; exit 4"])
        .stdin(Stdio::null())
        .output()
        .expect("zlogin");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "bye\n");
    assert!(o.stdout.is_empty(), "{}", text(&o));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // SIGINT to zlogin reaches the command's process group.
    let mut c = zlogin(&["sh", "-c", "sleep 100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("zlogin");
    std::thread::sleep(Duration::from_millis(700));
    let t = Instant::now();
    // SAFETY: kill with our child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let status = c.wait().expect("wait");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "SIGINT was not forwarded"
    );
    assert_eq!(status.code(), Some(130), "{status:?}");

    // A background process that keeps the pipes open does not hold zlogin once the command
    // is done.
    let t = Instant::now();
    let o = zlogin(&["sh", "-c", "sleep 30 & echo hi"])
        .stdin(Stdio::null())
        .output()
        .expect("zlogin");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_limits_hold_and_update_live() {
    let d = Daemon::start();
    install(&d);
    let uuid = create(
        &d,
        serde_json::json!({"max_lwps": 30, "max_physical_memory": 64, "max_swap": 256, "cpu_cap": 50}),
    );
    // What zoned noted while applying the limits at start (on this kind of host, no io
    // weight) is in the record's warnings, not dropped.
    let zone_state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.data_root().join(format!("zones/{uuid}/state.json"))).expect("state"),
    )
    .expect("state.json");
    let notes: Vec<&str> = zone_state["notes"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    let record = |d: &Daemon| {
        d.client()
            .get_vm(uuid::Uuid::parse_str(&uuid).expect("uuid"))
            .expect("get")
    };
    let warnings: Vec<String> = record(&d)
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    for n in &notes {
        assert!(
            warnings.contains(&format!("this host: {n}")),
            "{n:?} not in {warnings:?}"
        );
    }
    let io_weight = ["blkio/blkio.weight", "blkio/blkio.bfq.weight"]
        .iter()
        .any(|f| Path::new("/sys/fs/cgroup").join(f).exists())
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "io"));
    if !io_weight {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("io weight not supported")),
            "this host has no io weight: {warnings:?}"
        );
    }
    // A fork bomb stops at max_lwps.
    let o = d.zlogin(
        &uuid,
        "i=0; while [ $i -lt 60 ]; do sleep 3 & i=$((i+1)); done 2>&1; wait",
    );
    let all = text(&o);
    assert!(
        all.contains("can't fork") || all.contains("Resource temporarily unavailable"),
        "{all}"
    );
    // A memory hog is killed inside the zone; the zone lives on.
    let o = d.zlogin(
        &uuid,
        "head -c 300m /dev/zero | tail -c 1 >/dev/null; echo done",
    );
    assert!(!o.status.success() || !String::from_utf8_lossy(&o.stdout).is_empty());
    assert_eq!(state(&d, &uuid), "running");
    let o = d.zlogin(&uuid, "echo alive");
    assert!(o.status.success(), "{}", text(&o));
    // cpu_cap=50: a busy loop gets half a CPU.
    let cg = Path::new("/sys/fs/cgroup/cpuacct/hull").join(&uuid);
    let v2 = Path::new("/sys/fs/cgroup/hull").join(&uuid);
    let usage = || -> u64 {
        if let Ok(s) = std::fs::read_to_string(cg.join("cpuacct.usage")) {
            return s.trim().parse().unwrap_or(0);
        }
        std::fs::read_to_string(v2.join("cpu.stat"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .map_or(0, |us| us * 1000)
    };
    let mut busy = Command::new(bin("zlogin"))
        .env("HULL_SOCKET", d.socket())
        .args([&uuid, "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("busy loop");
    std::thread::sleep(Duration::from_millis(500));
    let (u0, t0) = (usage(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let share = (usage() - u0) as f64 / t0.elapsed().as_nanos() as f64;
    // The cap is the upper bound; the lower one only says the loop ran, with room for a
    // loaded host (2 cores shared with builds).
    assert!(
        (0.20..=0.60).contains(&share),
        "busy loop got {share:.2} of a CPU"
    );
    // A live update of cpu_cap applies without a restart.
    let o = d.vmadm(&["update", &uuid, "cpu_cap=25"], None);
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(300));
    let (u0, t0) = (usage(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let share = (usage() - u0) as f64 / t0.elapsed().as_nanos() as f64;
    assert!(
        (0.08..=0.35).contains(&share),
        "busy loop got {share:.2} after cpu_cap=25"
    );
    let _ = busy.kill();
    let _ = busy.wait();
    // A hostname changed while it runs waits for the next boot, and the record says so
    // until then.
    let o = d.vmadm(&["update", &uuid, "hostname=renamed"], None);
    assert!(o.status.success(), "{}", text(&o));
    let next_boot = "changed while it runs, takes effect at its next boot: hostname";
    assert!(
        record(&d)
            .warnings
            .iter()
            .any(|w| w.to_string() == next_boot),
        "{:?}",
        record(&d).warnings
    );
    let o = d.vmadm(&["stop", &uuid, "-F"], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.vmadm(&["start", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.zlogin(&uuid, "hostname");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "renamed");
    assert!(
        !record(&d)
            .warnings
            .iter()
            .any(|w| w.to_string() == next_boot),
        "{:?}",
        record(&d).warnings
    );
    let o = d.vmadm(&["stop", &uuid, "-F"], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_hundred_zone_cycles_leave_nothing() {
    let d = Daemon::start();
    install(&d);
    let vmmd_fds = || {
        let pid = d.child.as_ref().expect("vmmd").id();
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .count()
    };
    let cycle = |mine: &mut Vec<String>| {
        let uuid = create(&d, serde_json::json!({}));
        mine.push(uuid.clone());
        let o = d.vmadm(&["stop", &uuid, "-F"], None);
        assert!(o.status.success(), "{}", text(&o));
        let o = d.vmadm(&["start", &uuid], None);
        assert!(o.status.success(), "{}", text(&o));
        let o = d.vmadm(&["delete", &uuid], None);
        assert!(o.status.success(), "{}", text(&o));
    };
    // One warm-up cycle first: vmmd opens some descriptors lazily (the
    // runtime's blocking pool, the first pidfd watcher), and those are not
    // leaks. What is measured is growth over the next hundred cycles.
    let mut mine = Vec::new();
    cycle(&mut mine);
    std::thread::sleep(Duration::from_millis(200));
    let traces_before = traces(&d.data_root(), &mine);
    let fds_before = vmmd_fds();
    for _ in 0..100 {
        cycle(&mut mine);
    }
    let t = Instant::now();
    let settled = || traces(&d.data_root(), &mine) == traces_before && vmmd_fds() <= fds_before;
    while !settled() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(traces(&d.data_root(), &mine), traces_before);
    let fds = vmmd_fds();
    assert!(
        fds <= fds_before,
        "vmmd holds {fds} descriptors, {fds_before} before the cycles"
    );
}

/// An lx zone from the Debian image (images/debian/build: debootstrap, cached outside the
/// clone): Debian's sysvinit boots on the console, zlogin runs commands, `vmadm stop` halts
/// it gracefully (SIGPWR, the inittab's powerwait, halt -> reboot(2) in the zone's pid
/// namespace), and `reboot` inside the zone restarts it.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_lx_zone_from_the_debian_image() {
    let d = Daemon::start();
    let image = built_image("debian", None, "debian.tar.gz");
    install_image(&d, &image);
    let before = traces(&d.data_root(), &[]);
    let uuid = create(
        &d,
        serde_json::json!({"brand": "lx", "image_uuid": manifest_uuid(&image.0),
            "alias": "deb", "hostname": "deb"}),
    );
    let mine = [uuid.clone()];
    let rt = d
        .client()
        .runtime(uuid::Uuid::parse_str(&uuid).expect("uuid"))
        .expect("runtime");
    console_shows(&rt.console, "INIT: version");
    console_shows(&rt.console, "deb login:");
    let o = d.zlogin(
        &uuid,
        "cat /etc/debian_version; id -u; hostname; ps -o comm= -p 1",
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("12."), "{out}");
    assert_eq!(&lines[1..], ["0", "deb", "init"], "{out}");
    // A graceful stop: sysvinit runs its rc 0 scripts and halts; the kernel ends init with
    // SIGINT, well before the 30 s after which zoned would kill it.
    let t = Instant::now();
    let o = d.vmadm(&["stop", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "stop waited for the kill"
    );
    let st = zone_state_file(&d, &uuid);
    assert_eq!(st["last_exit"]["signal"], libc::SIGINT, "{st}");
    // Start again; `reboot` inside the zone restarts it in place.
    let o = d.vmadm(&["start", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
    console_shows(&rt.console, "deb login:");
    let boots = zone_state_file(&d, &uuid)["boots"].as_u64().expect("boots");
    let _ = d.zlogin(&uuid, "reboot");
    let t = Instant::now();
    // Until the new boot runs (zlogin between boots finds no init to join).
    let rebooted =
        |st: serde_json::Value| st["boots"].as_u64() == Some(boots + 1) && st["phase"] == "running";
    while !rebooted(zone_state_file(&d, &uuid)) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the zone did not reboot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state(&d, &uuid), "running");
    let o = d.zlogin(&uuid, "test -d /etc/init.d");
    assert!(o.status.success(), "{}", text(&o));
    // The metadata service and its tools are where SmartOS's lx zones have them, after a
    // reboot in place too.
    hull_tests::require_mdata_tool();
    let o = d.zlogin(
        &uuid,
        "test -S /native/.zonecontrol/metadata.sock && /native/usr/sbin/mdata-get sdc:alias",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "deb\n", "{}", text(&o));
    // cloud-init's NoCloud seed, from the record, owned by the zone's root.
    let o = d.zlogin(
        &uuid,
        "cd /var/lib/cloud/seed/nocloud && stat -c %u meta-data && cat meta-data network-config",
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "0\n{{\"instance-id\":\"{uuid}\",\"local-hostname\":\"deb\"}}\n{{\"config\": \"disabled\"}}\n"
        ),
        "{}",
        text(&o)
    );
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
    assert_traces_settle(&d, &mine, before);
}

/// Without id-mapped mounts (forced here), a zone's files are shifted into its id range on
/// disk once: the zone sees them as its root's, the image stays as it was, and the zone
/// stays shifted across starts.
/// An lx zone from a Debian image with cloud-init: its NoCloud seed (written by zoned from
/// the record) makes cloud-init install the payload's key, write the hostname and run the
/// user-script once; mdata-get answers there too.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_lx_zone_runs_cloud_init_from_its_nocloud_seed() {
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMNhzbtYxNVb2Yok16ONGZtu7/AH/oLse+oYdP2WKN0T hull-test";
    let d = Daemon::start();
    hull_tests::require_mdata_tool();
    let image = built_image("debian-cloud", None, "debian.tar.gz");
    install_image(&d, &image);
    let uuid = create(
        &d,
        serde_json::json!({"brand": "lx", "image_uuid": manifest_uuid(&image.0),
            "alias": "cloudy", "hostname": "cloudy",
            "customer_metadata": {"root_authorized_keys": KEY,
                "user-script": "#!/bin/sh\necho ran >> /root/user-script-ran\n"}}),
    );
    let t = Instant::now();
    loop {
        // cloud-init's result of its last stage: written once the final stage is done.
        let o = d.zlogin(&uuid, "test -e /var/lib/cloud/data/result.json");
        if o.status.success() {
            break;
        }
        if t.elapsed() > Duration::from_secs(180) {
            let log = d.zlogin(&uuid, "tail -40 /var/log/hull-cloud-init.log");
            panic!("cloud-init never finished: {}", text(&log));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let o = d.zlogin(
        &uuid,
        "grep -o DataSourceNoCloud /var/lib/cloud/data/result.json | head -1; \
         cat /root/user-script-ran; cat /etc/hostname; \
         cat /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys 2>/dev/null | grep -c hull-test; \
         /native/usr/sbin/mdata-get sdc:hostname",
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    if !lines.first().is_some_and(|l| l.contains("NoCloud")) {
        // Seen once in CI: result.json there a moment before, gone here (cloud-init removes
        // it only when its init-local stage starts again). What the zone ran, for the reader.
        let more = d.zlogin(
            &uuid,
            "cat /proc/uptime; ps -ef; ls -la --full-time /var/lib/cloud/data; \
             tail -40 /var/log/hull-cloud-init.log",
        );
        panic!("{}\nthe zone then: {}", text(&o), text(&more));
    }
    assert_eq!(&lines[1..3], ["ran", "cloudy"], "{}", text(&o));
    assert!(
        lines
            .get(3)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 1),
        "the payload's key is installed: {}",
        text(&o)
    );
    assert_eq!(lines.get(4), Some(&"cloudy"), "{}", text(&o));
    // The user-script runs once per instance: cloud-init's stages run again (as at the next
    // boot) and leave it alone.
    // (Run here to its end: its own log is python's, flushed when each stage exits.)
    let o = d.zlogin(
        &uuid,
        "/usr/local/sbin/hull-cloud-init; cat /root/user-script-ran",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ran\n", "{}", text(&o));
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_with_ids_shifted_on_disk() {
    shifted_zone(&Daemon::start_with(&["--zone-root-ids", "shift"]));
}

/// The same on btrfs, where the zone's root is a snapshot shifted in place and bound.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_with_ids_shifted_on_btrfs() {
    let fs = hull_tests::LoopFs::new("btrfs", 1 << 30);
    let d = Daemon::start_on_with(&fs.mountpoint, &["--zone-root-ids", "shift"]);
    shifted_zone(&d);
    drop(d);
}

fn shifted_zone(d: &Daemon) {
    use std::os::unix::fs::MetadataExt;
    install(d);
    let before = traces(&d.data_root(), &[]);
    // Its delegated dataset is shifted with it.
    let uuid = create(d, serde_json::json!({"delegate_dataset": true}));
    let mine = [uuid.clone()];
    let inside = "id -u; stat -c %u:%g /bin/busybox /etc; touch /new; stat -c %u:%g /new; \
                  touch /data/new; stat -c %u:%g /data /data/new; \
                  if mount -t tmpfs none /mnt 2>/dev/null; then echo MOUNTED; fi";
    let o = d.zlogin(&uuid, inside);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "0\n0:0\n0:0\n0:0\n0:0\n0:0\n"
    );
    let data = d.data_root().join("guests").join(&uuid).join("data/new");
    let data_uid = std::fs::metadata(&data).expect("the dataset's file").uid();
    assert!(data_uid >= 0x1000_0000, "{data_uid}");
    let st = zone_state_file(d, &uuid);
    assert!(st["notes"].to_string().contains("shifted"), "{st}");
    // On the host: init and the zone's files are in the zone's range; the image is not.
    let host_uid = init_host_uid(d, &uuid);
    assert!(host_uid >= 0x1000_0000, "{host_uid}");
    let image = d
        .data_root()
        .join("images")
        .join(image_uuid())
        .join("root/bin/busybox");
    let meta = std::fs::metadata(&image).expect("the image's busybox");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "{}", image.display());
    // Stopped and started again, it stays shifted (no double shift, no id map).
    let o = d.vmadm(&["stop", &uuid, "-F"], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.vmadm(&["start", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.zlogin(&uuid, "stat -c %u:%g /bin/busybox /new");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "0:0\n0:0\n");
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
    assert_traces_settle(d, &mine, before);
}

/// The virtual switch with real traffic: zones on one nic tag reach each other over their
/// veth ports and the tag's bridge; a zone on another tag, or on another VLAN of the same
/// tag, cannot, though it has an address of the same subnet. Stopping the zones leaves no
/// port; ports a crash left behind are swept when vmmd starts.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zones_on_a_nic_tag_reach_each_other_and_no_one_else() {
    let mut d = Daemon::start();
    install(&d);
    for tag in ["swa", "swb"] {
        let o = d.run("nictagadm", &["add", "-l", tag], None);
        assert!(o.status.success(), "{}", text(&o));
    }
    let nic = |tag: &str, ip: &str, vlan: u16| {
        serde_json::json!({"nics": [{"nic_tag": tag, "ips": [format!("{ip}/24")],
            "vlan_id": vlan, "primary": true, "gateways": ["192.0.2.1"]}]})
    };
    let a = create(&d, nic("swa", "192.0.2.11", 0));
    let b = create(&d, nic("swa", "192.0.2.12", 0));
    let other_tag = create(&d, nic("swb", "192.0.2.13", 0));
    let other_vlan = create(&d, nic("swa", "192.0.2.14", 7));
    let mac = d
        .client()
        .get_vm(uuid::Uuid::parse_str(&a).expect("uuid"))
        .expect("get")
        .nics[0]
        .mac
        .expect("mac")
        .to_string();

    let o = d.zlogin(&a, "ip addr show net0; ip route");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.contains("inet 192.0.2.11/24"), "{out}");
    assert!(
        out.contains(&mac),
        "the zone's NIC has its MAC {mac}: {out}"
    );
    assert!(out.contains("default via 192.0.2.1"), "{out}");
    let o = d.zlogin(&a, "ping -c 2 -W 2 192.0.2.12");
    assert!(o.status.success(), "same tag: {}", text(&o));
    for (ip, what) in [
        ("192.0.2.13", "another tag"),
        ("192.0.2.14", "another VLAN"),
    ] {
        let o = d.zlogin(&a, &format!("ping -c 1 -W 1 {ip}"));
        assert!(
            !o.status.success(),
            "{what} must not be reachable: {}",
            text(&o)
        );
    }
    let links = hull_vswitch::host_links().expect("links");
    for z in [&a, &b, &other_tag, &other_vlan] {
        let port = hull_vswitch::host_port_name(z, 0);
        assert!(links.contains(&port), "no port {port} in {links:?}");
    }
    for bridge in ["hb-swa", "hb-swb", "hb-swa.7"] {
        assert!(links.iter().any(|l| l == bridge), "no bridge {bridge}");
    }

    for z in [&a, &b, &other_tag, &other_vlan] {
        let o = d.vmadm(&["stop", "-F", z], None);
        assert!(o.status.success(), "{}", text(&o));
    }
    let links = hull_vswitch::host_links().expect("links");
    for z in [&a, &b, &other_tag, &other_vlan] {
        let key = hull_vswitch::port_key(z);
        assert!(
            !links.iter().any(|l| l.contains(&key)),
            "a port of {z} outlived the zone: {links:?}"
        );
    }

    // A start cut short by a crash leaves a port on the host: the next vmmd removes it, and
    // only its own (another vmmd's, on another data root, stays).
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(d.data_root()).expect("data root");
    let owner = format!("{:x}{:x}", meta.dev(), meta.ino());
    let stray = hull_vswitch::host_port_name(&a, 5);
    let foreign = hull_vswitch::host_port_name(&b, 6);
    for (port, peer, alias) in [
        (&stray, "hp-test-peer1", format!("hull:{owner}:{a}")),
        (&foreign, "hp-test-peer2", format!("hull:another-root:{b}")),
    ] {
        let o = Command::new("ip")
            .args(["link", "add", port, "type", "veth", "peer", "name", peer])
            .output()
            .expect("ip link add");
        assert!(o.status.success(), "{}", text(&o));
        let o = Command::new("ip")
            .args(["link", "set", port, "alias", &alias])
            .output()
            .expect("ip link set alias");
        assert!(o.status.success(), "{}", text(&o));
    }
    d.kill9();
    d.spawn();
    let links = hull_vswitch::host_links().expect("links");
    let _ = Command::new("ip").args(["link", "del", &foreign]).output();
    assert!(
        !links.contains(&stray),
        "vmmd left a stray port at start: {links:?}"
    );
    assert!(
        links.contains(&foreign),
        "vmmd removed another vmmd's port: {links:?}"
    );
    for z in [&a, &b, &other_tag, &other_vlan] {
        let o = d.vmadm(&["delete", z], None);
        assert!(o.status.success(), "{}", text(&o));
    }
    // Deleting the tags removes their bridges: nothing of the test stays on the host.
    for tag in ["swa", "swb"] {
        let o = d.run("nictagadm", &["delete", tag], None);
        assert!(o.status.success(), "{}", text(&o));
    }
    let links = hull_vswitch::host_links().expect("links");
    for bridge in ["hb-swa", "hb-swb", "hb-swa.7"] {
        assert!(
            !links.iter().any(|l| l == bridge),
            "{bridge} outlived its tag"
        );
    }
}

/// A zone whose init cannot be executed (here a symlink loop) fails to start at once, with
/// the exec error, whatever its brand, and leaves nothing behind.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_init_exec_error_is_reported_at_once() {
    let d = Daemon::start();
    install(&d);
    let before = traces(&d.data_root(), &[]);
    for brand in ["joyent-minimal", "joyent", "lx"] {
        let uuid = create(&d, serde_json::json!({"brand": brand}));
        let mine = [uuid.clone()];
        let o = d.vmadm(&["stop", &uuid, "-F"], None);
        assert!(o.status.success(), "{}", text(&o));
        // The zone's writable root, as its zoned config names it.
        let cfg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.data_root().join("zones").join(&uuid).join("config.json"))
                .expect("config"),
        )
        .expect("json");
        let root = match cfg["root"]["kind"].as_str() {
            Some("bind") => cfg["root"]["dir"].as_str(),
            Some("overlay") => cfg["root"]["upper"].as_str(),
            other => panic!("root kind {other:?}: {cfg}"),
        };
        let sbin = Path::new(root.expect("root dir")).join("sbin");
        std::fs::create_dir_all(&sbin).expect("sbin");
        let _ = std::fs::remove_file(sbin.join("init"));
        std::os::unix::fs::symlink("init", sbin.join("init")).expect("symlink");
        let t = Instant::now();
        let o = d.vmadm(&["start", &uuid], None);
        let took = t.elapsed();
        assert!(!o.status.success(), "{brand}: {}", text(&o));
        assert!(took < Duration::from_secs(5), "{brand}: took {took:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("cannot run"), "{brand}: {}", text(&o));
        assert!(
            err.contains("ELOOP") || err.contains("Too many levels of symbolic links"),
            "{brand}: {}",
            text(&o)
        );
        assert_eq!(state(&d, &uuid), "stopped", "{brand}");
        assert_traces_settle(&d, &mine, before);
        let o = d.vmadm(&["delete", &uuid], None);
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// Waits up to `limit` for `c` to exit; kills it and fails the test otherwise.
fn exit_within(
    c: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = c.try_wait().expect("wait") {
            return status;
        }
        if t.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{what}: zlogin still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pty of the host's devpts, as a caller's terminal: (master, slave).
fn openpty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty with pointers to two live integers and no name, termios or size.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    // SAFETY: two fresh descriptors from openpty, owned here from now on.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Reads a pty master until EIO (zlogin and the zone let the slave go) and returns all it
/// read; with `ready`, sends once `marker` has been seen.
fn pty_reader(
    master: std::os::fd::OwnedFd,
    ready: Option<(&'static [u8], std::sync::mpsc::Sender<()>)>,
) -> std::thread::JoinHandle<String> {
    use std::io::Read;
    std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if let Some((marker, tx)) = &ready
                && out.windows(marker.len()).any(|w| w == *marker)
            {
                let _ = tx.send(());
            }
        }
        String::from_utf8_lossy(&out).to_string()
    })
}

/// zlogin with a terminal (-t): the zone's command holds only its pty from the zone's
/// devpts, not the caller's terminal nor any other descriptor of the caller's (here a
/// socket as stderr), and its status passes through.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zlogin_relay_pty_hands_the_zone_no_host_descriptor() {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::process::Stdio;
    let d = Daemon::start();
    install(&d);
    let uuid = create(&d, serde_json::json!({}));
    let (master, slave) = openpty();
    let host_tty = std::fs::read_link(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        slave.as_raw_fd()
    }))
    .expect("the test's pty");
    let (sock, _peer) = UnixStream::pair().expect("socketpair");
    let mut c = Command::new(bin("zlogin"))
        .env("HULL_SOCKET", d.socket())
        .args([
            &uuid,
            "sh",
            "-c",
            "ls -l /proc/self/fd/ /proc/$$/fd/; exit 3",
        ])
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave))
        .stderr(Stdio::from(OwnedFd::from(sock)))
        .spawn()
        .expect("zlogin");
    // The test holds no slave: the master reads EIO once zlogin and the zone let it go.
    let reader = pty_reader(master, None);
    let status = exit_within(&mut c, Duration::from_secs(20), "zlogin -t");
    let listing = reader.join().expect("reader");
    assert_eq!(status.code(), Some(3), "{listing}");
    let targets: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_once(" -> ").map(|(_, t)| t.trim_end()))
        .collect();
    assert!(targets.len() >= 6, "{listing}");
    for t in &targets {
        assert!(
            t.starts_with("/dev/pts/") || *t == "/dev/null" || t.starts_with("/proc/"),
            "the zone's process holds {t:?}: {listing}"
        );
        assert!(
            !t.starts_with("socket:") && !t.contains(&*d.dir.path().to_string_lossy()),
            "{listing}"
        );
    }
    // Its pty is the zone's own, not the test's (a /dev/pts of the host's devpts).
    let host_pts = host_tty.to_string_lossy().to_string();
    assert!(
        !listing.contains(&format!(" -> {host_pts}\r")),
        "{host_pts}: {listing}"
    );
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// zlogin with a terminal (-t): Ctrl-C typed on the caller's terminal (raw while zlogin runs,
/// so ^C is a byte for the zone's pty, whose line discipline signals the foreground job) and
/// SIGINT sent to zlogin (forwarded to that job) both interrupt the command at once.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zlogin_relay_pty_passes_ctrl_c_and_sigint() {
    use std::io::Write;
    use std::process::Stdio;
    let d = Daemon::start();
    install(&d);
    let uuid = create(&d, serde_json::json!({}));
    for how in ["a typed ^C", "SIGINT"] {
        let (master, slave) = openpty();
        let mut c = Command::new(bin("zlogin"))
            .env("HULL_SOCKET", d.socket())
            .args([&uuid, "sh", "-c", "echo ready; sleep 100; echo after"])
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("zlogin");
        let mut keys = std::fs::File::from(master.try_clone().expect("dup"));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let reader = pty_reader(master, Some((b"ready", ready_tx)));
        if ready.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = c.kill();
            panic!("{how}: the command never ran");
        }
        let t = Instant::now();
        if how == "SIGINT" {
            // SAFETY: kill with our child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        } else {
            keys.write_all(b"\x03").expect("type ^C");
        }
        let status = exit_within(&mut c, Duration::from_secs(10), how);
        let took = t.elapsed();
        drop(keys);
        let out = reader.join().expect("reader");
        assert_eq!(status.code(), Some(130), "{how}: {out}");
        assert!(took < Duration::from_secs(5), "{how}: took {took:?}");
        assert!(!out.contains("after"), "{how}: {out}");
    }
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// The relay ends when it must: a caller that stops reading ends the command with EPIPE,
/// SIGTERM reaches the command, and a background process that keeps writing does not hold
/// zlogin once the command has exited.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zlogin_relay_ends_on_epipe_sigterm_and_exit() {
    use std::io::Read;
    use std::process::Stdio;
    let d = Daemon::start();
    install(&d);
    let uuid = create(&d, serde_json::json!({}));
    let zlogin = |args: &[&str]| {
        let mut c = Command::new(bin("zlogin"));
        c.env("HULL_SOCKET", d.socket())
            .arg(&uuid)
            .args(args)
            .stdin(Stdio::null());
        c
    };
    // The caller's stdout goes away: the command's writes fail (SIGPIPE), zlogin does not
    // hang.
    let mut c = zlogin(&["yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zlogin");
    let mut out = c.stdout.take().expect("stdout");
    let mut first = [0u8; 4];
    out.read_exact(&mut first).expect("yes' output");
    assert_eq!(&first, b"y\ny\n");
    drop(out);
    let status = exit_within(&mut c, Duration::from_secs(10), "yes to a closed pipe");
    assert_eq!(status.code(), Some(128 + libc::SIGPIPE), "{status:?}");

    // SIGTERM reaches the command's process group: the shell's trap runs.
    let mut c = zlogin(&[
        "sh",
        "-c",
        "trap 'echo got TERM; exit 5' TERM; echo ready; sleep 100 & wait",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("zlogin");
    let mut out = c.stdout.take().expect("stdout");
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).expect("ready");
    assert_eq!(&ready, b"ready\n");
    // SAFETY: kill with our child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let status = exit_within(&mut c, Duration::from_secs(10), "SIGTERM");
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert_eq!(status.code(), Some(5), "{rest}");
    assert_eq!(rest, "got TERM\n");

    // A background writer that never stops keeps the pipes busy, not zlogin.
    let t = Instant::now();
    let mut c = zlogin(&[
        "sh",
        "-c",
        "(while :; do echo x; sleep 0.02; done) & echo hi",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("zlogin");
    let mut out = c.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let status = exit_within(&mut c, Duration::from_secs(10), "a background writer");
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(reader.join().expect("reader").contains("hi\n"));
    let o = d.vmadm(&["delete", &uuid], None);
    assert!(o.status.success(), "{}", text(&o));
}
