//! Debian's containerd running containers as hull zones through containerd-shim-hull-v2
//! (issue 20), as root (tier 2): containerd started by the test on its own root, state and
//! socket, an OCI image the test builds with umoci imported by `ctr image import`, and
//! `ctr run --rm --runtime io.containerd.hull.v2` (of the image, and with `--rootfs DIR`)
//! printing the container's output and passing its exit status, leaving no zone and no
//! mount behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use hull_tests::Daemon;
use hull_tests::zone::{busybox, ok, text};

/// An OCI image layout of the busybox tree whose command prints and exits 3, as a tar
/// `ctr image import` reads.
fn image(dir: &Path) -> PathBuf {
    let run = |prog: &str, args: &[&str]| {
        let o = Command::new(prog)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("{prog}: {e} (scripts/packages.txt)"));
        assert!(o.status.success(), "{prog} {args:?}: {}", text(&o));
    };
    run("umoci", &["init", "--layout", "oci"]);
    run("umoci", &["new", "--image", "oci:hello"]);
    run("umoci", &["unpack", "--image", "oci:hello", "b"]);
    run(
        "tar",
        &["-xzf", &busybox().1.display().to_string(), "-C", "b/rootfs"],
    );
    run("umoci", &["repack", "--image", "oci:hello", "b"]);
    run(
        "umoci",
        &[
            "config",
            "--image",
            "oci:hello",
            "--config.cmd",
            "/bin/sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "echo hello from a hull zone; id -u; exit 3",
        ],
    );
    // A pod's sandbox image (tag `pause`): a process that waits to be killed.
    run(
        "umoci",
        &[
            "config",
            "--image",
            "oci:hello",
            "--tag",
            "pause",
            "--config.cmd",
            "/bin/sleep",
            "--config.cmd",
            "999999999",
        ],
    );
    // One whose user is outside a zone's 65536 ids (tag `stranger`).
    run(
        "umoci",
        &[
            "config",
            "--image",
            "oci:hello",
            "--tag",
            "stranger",
            "--config.user",
            "70000:70000",
        ],
    );
    run("tar", &["-C", "oci", "-cf", "hello.tar", "."]);
    dir.join("hello.tar")
}

/// containerd on its own root, state and socket, finding the shim in the build's binaries
/// and vmmd at `vmmd`'s socket.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    /// More of containerd's config (TOML), after its root, state and socket.
    extra: String,
}

impl Containerd {
    fn start(vmmd: &Daemon) -> Containerd {
        let extra = "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n";
        Containerd::start_with(vmmd, |_| extra.to_string())
    }

    /// containerd with more config, which `extra` writes given containerd's directory.
    fn start_with(vmmd: &Daemon, extra: impl FnOnce(&Path) -> String) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let extra = extra(dir.path());
        let child = Containerd::spawn(dir.path(), vmmd, &extra);
        let c = Containerd { child, dir, extra };
        c.wait_ready();
        c
    }

    /// Kills containerd (SIGKILL; its shims live on) and starts it again on the same root,
    /// state and socket.
    fn restart(&mut self, vmmd: &Daemon) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Containerd::spawn(self.dir.path(), vmmd, &self.extra);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while !self.ctr(&["version"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "containerd did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(d: &Path, vmmd: &Daemon, extra: &str) -> Child {
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n{extra}\
             [grpc]\n  address = \"{sock}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("config");
        let bins = hull_tests::bin("vmmd")
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let path = format!(
            "{}:{}",
            bins.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .expect("log");
        Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("HULL_SOCKET", vmmd.socket())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("containerd (scripts/packages.txt)")
    }

    /// `ctr run --runtime io.containerd.hull.v2 ARGS...`.
    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["run", "--runtime", "io.containerd.hull.v2"];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in("hull-test", args)
    }

    /// `ctr` in containerd namespace `ns` (`k8s.io` is its CRI plugin's).
    fn ctr_in(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(["--namespace", ns])
            .args(args)
            .output()
            .expect("ctr")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Mounts still held under containerd's directories.
    fn mounts(&self) -> Vec<String> {
        let me = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&me))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims a failed test left (they outlive containerd by design).
        let address = self.dir.path().join("c.sock").display().to_string();
        for pid in std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            if args
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == address.as_bytes())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for m in self.mounts().iter().rev() {
            if let Some(at) = m.split_whitespace().nth(4) {
                let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// vmmd, containerd and the test image imported (its reference); the image's work
/// directory lives as long as the test holds it.
fn setup() -> (Daemon, Containerd, tempfile::TempDir, String) {
    let d = Daemon::start();
    let c = Containerd::start(&d);
    let work = tempfile::tempdir().expect("tempdir");
    let image = import(&c, "hull-test", work.path());
    (d, c, work, image)
}

/// Imports the test image into `c`'s namespace `ns`; its reference (the `pause` tag is
/// CRI's sandbox image).
fn import(c: &Containerd, ns: &str, work: &Path) -> String {
    let tar = image(work);
    let o = c.ctr_in(
        ns,
        &[
            "image",
            "import",
            "--base-name",
            "hull.test/hello",
            &tar.display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    let images = ok(&c.ctr_in(ns, &["image", "ls", "-q"]));
    images
        .lines()
        .find(|l| l.starts_with("hull.test/hello:hello"))
        .unwrap_or_else(|| panic!("no image: {images}"))
        .to_string()
}

/// `cmd` started with its stdin, stdout and stderr pipes of the test's.
fn piped(cmd: &mut Command) -> Child {
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/packages.txt)"))
}

/// The host pids of task `id`'s processes, as `ctr task ps` lists them (its own first).
fn task_pids(c: &Containerd, id: &str) -> Vec<u32> {
    let ps = ok(&c.ctr(&["task", "ps", id]));
    let pids: Vec<u32> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!pids.is_empty(), "no pid: {ps}");
    pids
}

/// Nothing of the tasks left: no zone, no task, no mount of a rootfs.
fn assert_nothing_left(c: &Containerd, d: &Daemon) {
    assert_eq!(ok(&d.vmadm(&["list", "-H", "-o", "uuid"], None)), "");
    assert_eq!(ok(&c.ctr(&["task", "ls", "-q"])), "");
    assert!(
        c.mounts().iter().all(|m| !m.contains("rootfs")),
        "{:?}",
        c.mounts()
    );
}

/// Waits until `ctr task ls` shows task `id` in `status` (RUNNING, STOPPED...), or that
/// it is gone when `status` is empty.
fn await_task(c: &Containerd, id: &str, status: &str) {
    let t = Instant::now();
    loop {
        let ls = ok(&c.ctr(&["task", "ls"]));
        let line = ls.lines().find(|l| l.split_whitespace().next() == Some(id));
        match line {
            Some(l) if !status.is_empty() && l.contains(status) => return,
            None if status.is_empty() => return,
            _ => {}
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "task {id} not {status:?}: {ls}\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root and containerd: run with --run-ignored"]
fn root_ctr_runs_a_container_as_a_hull_zone() {
    let (d, c, work, image) = setup();
    let o = c.run(&["--rm", &image, "c1"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(3),
        "the container's exit status: {}\ncontainerd: {}\nvmmd: {}",
        text(&o),
        c.log(),
        d.log()
    );
    assert_eq!(out, "hello from a hull zone\n0\n", "{}", text(&o));
    // `--rootfs DIR`: a tree of the host's (here the image's, unpacked by umoci) as root.
    let o = c.run(&[
        "--rm",
        "--rootfs",
        &work.path().join("b/rootfs").display().to_string(),
        "c2",
        "/bin/sh",
        "-c",
        "echo from a rootfs; exit 4",
    ]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}
{}",
        text(&o),
        c.log()
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from a rootfs\n");
    // Stdin without a terminal: what ctr is given reaches the process through a pipe, and
    // its end is the process's EOF.
    let mut ctr = piped(
        Command::new("ctr")
            .arg("--address")
            .arg(c.dir.path().join("c.sock"))
            .args(["--namespace", "hull-test", "run", "--rm", "--runtime"])
            .args(["io.containerd.hull.v2", &image, "c8", "/bin/sh", "-c"])
            .arg("read line; echo got $line; cat; echo eof"),
    );
    {
        use std::io::Write;
        let mut input = ctr.stdin.take().expect("stdin");
        input.write_all(b"first\nthe rest\n").expect("write");
    }
    let o = ctr.wait_with_output().expect("ctr");
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).as_ref()),
        (Some(0), "got first\nthe rest\neof\n"),
        "{}\n{}",
        text(&o),
        c.log()
    );
    // `ctr run -t`: the process has the zone's console terminal, which the shim relays
    // both ways (ctr needs a terminal of its own: script(1) gives it one).
    let ctr = format!(
        "ctr --address {} --namespace hull-test run -t --rm --runtime io.containerd.hull.v2 \
         {image} c7 /bin/sh -c 'tty; read line; echo got $line; exit 6'",
        c.dir.path().join("c.sock").display()
    );
    let mut script = piped(Command::new("script").args(["-qec", &ctr, "/dev/null"]));
    {
        use std::io::Write;
        let mut input = script.stdin.take().expect("stdin");
        input.write_all(b"hello\r").expect("write");
        // Kept open until the task ends: an EOF would reach ctr's terminal as a hang-up.
        let o = script.wait_with_output().expect("script");
        drop(input);
        let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
        assert_eq!(o.status.code(), Some(6), "{out}\n{}", c.log());
        assert!(out.contains("/dev/console\n"), "{out}");
        assert!(out.contains("got hello\n"), "{out}");
    }
    // Detached: `ctr task ps` names its process and `ctr task kill -s` signals it (SIGKILL:
    // as under runc, the zone's pid 1 ignores a SIGTERM it has no handler for).
    let o = c.run(&["-d", &image, "c3", "/bin/sleep", "600"]);
    assert!(
        o.status.success(),
        "{}
{}",
        text(&o),
        c.log()
    );
    let pid = task_pids(&c, "c3")[0];
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "sleep", "ctr task ps names the zone's process");
    // `ctr task exec`: a further process in the zone, in the directory and as the user it
    // names, its output and exit status passed through.
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        "c3",
        "/bin/sh",
        "-c",
        "echo $(pwd) $(id -u):$(id -g); echo to stderr >&2; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}\n{}", text(&o), c.log());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/tmp 1000:1000\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "to stderr\n");
    // `ctr task exec -t`: a terminal of the zone's whose window is ctr's (ctr sends its
    // size as a ResizePty of the exec just after its start, as it does for runc, so the
    // command waits for it: busybox's `stty size` prints nothing while the size is 0;
    // script(1) gives ctr a terminal, sized by stty).
    let ctr = format!(
        "stty rows 33 cols 111; ctr --address {} --namespace hull-test task exec -t \
         --exec-id t1 c3 /bin/sh -c 'tty; for i in $(seq 50); do s=$(stty size 2>/dev/null); \
         [ -n \"$s\" ] && echo $s && exit; sleep 0.1; done'",
        c.dir.path().join("c.sock").display()
    );
    let o = Command::new("script")
        .args(["-qec", &ctr, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (bsdutils)");
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert!(o.status.success(), "{out}\n{}", c.log());
    assert!(out.contains("/dev/pts/"), "the exec's terminal: {out}");
    assert!(
        out.contains("33 111\n"),
        "the exec's window size: {out}\n{}",
        c.log()
    );
    // A detached exec is a second process of the task, which `ctr task kill --exec-id`
    // ends (SIGKILL reaches the command itself, not zoned's relay).
    ok(&c.ctr(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "e2",
        "c3",
        "/bin/sleep",
        "300",
    ]));
    let pids = task_pids(&c, "c3");
    assert_eq!(pids.len(), 2, "the task's process and its exec: {pids:?}");
    let e2 = pids[1];
    let comm = std::fs::read_to_string(format!("/proc/{e2}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "sleep", "{pids:?}");
    ok(&c.ctr(&["task", "kill", "--exec-id", "e2", "-s", "SIGKILL", "c3"]));
    let t = Instant::now();
    while Path::new(&format!("/proc/{e2}")).exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "exec e2 still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    // `ctr task pause`/`resume`: the zone's cgroup frozen and thawed (v1's freezer.state
    // or v2's cgroup.events, whichever this host has).
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let (file, frozen_line, thawed_line) = match cgroup
        .lines()
        .find_map(|l| l.split_once(":freezer:").map(|(_, p)| p.to_string()))
    {
        Some(p) => (
            format!("/sys/fs/cgroup/freezer{p}/freezer.state"),
            "FROZEN",
            "THAWED",
        ),
        None => {
            let p = cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/");
            (
                format!("/sys/fs/cgroup{p}/cgroup.events"),
                "frozen 1",
                "frozen 0",
            )
        }
    };
    let frozen = |want: bool| {
        let line = if want { frozen_line } else { thawed_line };
        let t = Instant::now();
        loop {
            let ev = std::fs::read_to_string(&file).unwrap_or_default();
            if ev.lines().any(|l| l == line) {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{file}: {ev}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    ok(&c.ctr(&["task", "pause", "c3"]));
    frozen(true);
    await_task(&c, "c3", "PAUSED");
    ok(&c.ctr(&["task", "resume", "c3"]));
    frozen(false);
    await_task(&c, "c3", "RUNNING");
    // `ctr task metrics`: the zone's cgroup figures (its processes, its memory in use).
    let m = ok(&c.ctr(&["task", "metrics", "--format", "json", "c3"]));
    let m: serde_json::Value = serde_json::from_str(&m).unwrap_or_else(|e| panic!("{e}: {m}"));
    let pids_now = m.pointer("/pids/current").and_then(|v| v.as_u64());
    assert!(pids_now.is_some_and(|n| n >= 1), "{m}");
    let mem = m.pointer("/memory/usage").and_then(|v| v.as_u64());
    assert!(mem.is_some_and(|n| n > 0), "{m}");
    ok(&c.ctr(&["task", "kill", "-s", "SIGKILL", "c3"]));
    await_task(&c, "c3", "STOPPED");
    let o = c.ctr(&["task", "delete", "c3"]);
    assert!(o.status.success(), "{}", text(&o));
    ok(&c.ctr(&["container", "delete", "c3"]));
    // Nothing left: no zone, no task, no mount of its rootfs.
    assert_nothing_left(&c, &d);
}

/// The shim processes of task `id`: (keeper, worker). The keeper is the one containerd
/// started, serving its socket; its child, the worker, serves the task on `<socket>.worker`.
fn shim_of(id: &str) -> (Option<i32>, Option<i32>) {
    let (mut keeper, mut worker) = (None, None);
    for pid in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
    {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let ours = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-hull-v2"))
            && args
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == id.as_bytes());
        if !ours {
            continue;
        }
        let is_worker = args
            .windows(2)
            .any(|w| w[0] == b"-socket" && w[1].ends_with(b".worker"));
        match is_worker {
            true => worker = Some(pid),
            false => keeper = Some(pid),
        }
    }
    (keeper, worker)
}

fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

/// Kills task `id`'s shim worker and waits for its keeper to have started another.
fn kill_shim_worker(c: &Containerd, id: &str) {
    let (keeper, worker) = shim_of(id);
    let (keeper, worker) = (
        keeper.expect("the shim's keeper"),
        worker.expect("the shim's worker"),
    );
    sigkill(worker);
    let t = Instant::now();
    loop {
        match shim_of(id) {
            (Some(k), Some(w)) if w != worker => {
                assert_eq!(k, keeper, "the keeper changed");
                break;
            }
            _ => {}
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no new worker for {id}: {}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 20's acceptance 3: a task runs on through a restart of vmmd, one of containerd and
/// the death of the shim's worker (its keeper, which holds containerd's connection, starts
/// another, which takes the task up), and its exit status arrives once it ends, to a
/// `ctr run` that was waiting through the worker's death too. The shim's keeper killed is
/// containerd's to clean up (containerd 1.6 runs `shim delete` for a shim whose connection
/// dropped and forgets the task), which leaves nothing of the zone behind.
#[test]
#[ignore = "needs root and containerd: run with --run-ignored"]
fn root_a_task_outlives_restarts_of_vmmd_containerd_and_its_shim() {
    let (mut d, mut c, _work, image) = setup();
    let o = c.run(&[
        "-d",
        &image,
        "c5",
        "/bin/sh",
        "-c",
        "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 7",
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    await_task(&c, "c5", "RUNNING");
    d.kill9();
    std::thread::sleep(Duration::from_secs(1));
    d.spawn();
    await_task(&c, "c5", "RUNNING");
    c.restart(&d);
    await_task(&c, "c5", "RUNNING");
    kill_shim_worker(&c, "c5");
    await_task(&c, "c5", "RUNNING");
    let pids = task_pids(&c, "c5");
    // Through the restarts the shim still runs execs in it, and hears it end.
    let o = c.ctr(&["task", "exec", "--exec-id", "go", "c5", "touch", "/tmp/go"]);
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    await_task(&c, "c5", "STOPPED");
    assert!(!pids.is_empty());
    // ctr 1.6 reports a task's non-zero exit status at its delete as a warning.
    let o = c.ctr(&["task", "delete", "c5"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stderr).contains("exit code 7"),
        "the exit status: {}",
        text(&o)
    );
    ok(&c.ctr(&["container", "delete", "c5"]));

    // `ctr run` waiting (its Wait pending in the worker) while the worker is killed: the
    // keeper asks the next worker again, and the exit status reaches ctr.
    let mut waiting = piped(
        Command::new("ctr")
            .arg("--address")
            .arg(c.dir.path().join("c.sock"))
            .args(["--namespace", "hull-test", "run", "--rm"])
            .args(["--runtime", "io.containerd.hull.v2", &image, "c7"])
            .args(["/bin/sh", "-c"])
            .arg("while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 9"),
    );
    let t = Instant::now();
    while !ok(&c.ctr(&["task", "ls"])).contains("RUNNING") {
        if waiting.try_wait().expect("ctr run").is_some() {
            let o = waiting.wait_with_output().expect("ctr run");
            panic!("ctr run ended: {}\n{}", text(&o), c.log());
        }
        assert!(t.elapsed() < Duration::from_secs(30), "c7 did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    kill_shim_worker(&c, "c7");
    await_task(&c, "c7", "RUNNING");
    let o = c.ctr(&["task", "exec", "--exec-id", "go", "c7", "touch", "/tmp/go"]);
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = waiting.try_wait().expect("ctr run") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "ctr run did not end: {}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(9), "{}", c.log());
    await_task(&c, "c7", "");

    // The keeper killed: containerd cleans up through `shim delete`, which ends the zone.
    let o = c.run(&["-d", &image, "c6", "/bin/sleep", "600"]);
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    await_task(&c, "c6", "RUNNING");
    sigkill(shim_of("c6").0.expect("c6's shim keeper"));
    await_task(&c, "c6", "");
    let t = Instant::now();
    while !ok(&d.vmadm(&["list", "-H", "-o", "uuid"], None)).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(30), "c6's zone is left");
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(&c.ctr(&["container", "delete", "c6"]));
    // No shim process is left of any of them.
    for id in ["c5", "c6", "c7"] {
        let t = Instant::now();
        while shim_of(id) != (None, None) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{id}'s shim is left (keeper, worker): {:?}",
                shim_of(id)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        c.mounts().iter().all(|m| !m.contains("rootfs")),
        "{:?}",
        c.mounts()
    );
}

/// Issue 20's acceptance 5 through containerd: what hull cannot give a container safely is
/// refused naming it, and the refusal leaves no zone, task or mount behind.
#[test]
#[ignore = "needs root and containerd: run with --run-ignored"]
fn root_unsafe_containers_are_refused_naming_why() {
    let (d, c, _work, image) = setup();
    for (i, (flags, named)) in [
        (&["--privileged"][..], "privileged"),
        (&["--device", "/dev/kvm"], "/dev/kvm"),
        (
            &["--mount", "type=bind,src=/etc,dst=/host,options=rbind:ro"],
            "/etc",
        ),
        (
            &["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"],
            "uidMappings",
        ),
        (&["--annotation", "io.hull.nic.tg=x"], "io.hull.nic.tg"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("bad{i}");
        let mut args = vec!["--rm"];
        args.extend_from_slice(flags);
        args.extend([image.as_str(), id.as_str(), "/bin/true"]);
        let o = c.run(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{flags:?} ran: {}", text(&o));
        assert!(
            err.contains(named),
            "{flags:?}: the error names {named}: {err}"
        );
        let _ = c.ctr(&["container", "delete", &id]);
    }
    // An image whose user is outside the zone's ids.
    let stranger = image.replace(":hello", ":stranger");
    let o = c.run(&["--rm", &stranger, "bad-user", "/bin/true"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains("process.user.uid"),
        "the error names process.user.uid: {}",
        text(&o)
    );
    let _ = c.ctr(&["container", "delete", "bad-user"]);
    assert_nothing_left(&c, &d);
}

/// A pod as containerd names one (`ctr run --with-ns`, as its CRI does for a sandbox's
/// containers): a second container joins the first's network, IPC and UTS namespaces and
/// reaches it on localhost, while its root is its own; a path that is no zone's init is
/// refused naming it.
#[test]
#[ignore = "needs root and containerd: run with --run-ignored"]
fn root_containers_of_a_pod_share_a_zones_network() {
    let (d, c, _work, image) = setup();
    let o = c.run(&[
        "-d",
        &image,
        "sandbox",
        "/bin/sh",
        "-c",
        "mkdir -p /www && echo from the sandbox > /www/index.html && \
         exec httpd -f -p 127.0.0.1:8080 -h /www",
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    await_task(&c, "sandbox", "RUNNING");
    let pid = task_pids(&c, "sandbox")[0];
    let with = |kind: &str, file: &str| format!("{kind}:/proc/{pid}/ns/{file}");
    let (net, ipc, uts) = (
        with("network", "net"),
        with("ipc", "ipc"),
        with("uts", "uts"),
    );
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do \
                  wget -qO- http://127.0.0.1:8080/index.html && break; sleep 0.2; done; \
                  test -e /www && echo shared root || echo own root";
    let o = c.run(&[
        "--rm",
        "--with-ns",
        &net,
        "--with-ns",
        &ipc,
        "--with-ns",
        &uts,
        &image,
        "app",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(o.status.success(), "{}\n{}\n{}", text(&o), c.log(), d.log());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from the sandbox\nown root\n",
        "{}",
        text(&o)
    );
    // A process that is not a zone's init (the test itself) cannot be joined.
    let me = std::process::id();
    let o = c.run(&[
        "--rm",
        "--with-ns",
        &format!("network:/proc/{me}/ns/net"),
        &image,
        "intruder",
        "/bin/true",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("process {me}")) && err.contains("not the init of a running zone"),
        "{err}"
    );
    let _ = c.ctr(&["container", "delete", "intruder"]);
    ok(&c.ctr(&["task", "kill", "-s", "SIGKILL", "sandbox"]));
    await_task(&c, "sandbox", "STOPPED");
    ok(&c.ctr(&["task", "delete", "sandbox"]));
    ok(&c.ctr(&["container", "delete", "sandbox"]));

    // As containerd's CRI makes a pod with a network: the sandbox and its containers in the
    // network namespace CNI made (here `ip netns add`, with a link of its own), the
    // containers in the sandbox's IPC and UTS namespaces. The zone's root may use ports
    // below 1024 there.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let ns = Netns(format!("hullpod{}", std::process::id()));
    let ip = |args: &[&str]| {
        let o = Command::new("ip").args(args).output().expect("ip");
        assert!(o.status.success(), "ip {args:?}: {}", text(&o));
    };
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n", &ns.0, "link", "add", "podlink0", "type", "veth", "peer", "name", "podlink1",
    ]);
    let path = format!("network:/run/netns/{}", ns.0);
    let o = c.run(&[
        "-d",
        "--with-ns",
        &path,
        &image,
        "sandbox2",
        "/bin/sh",
        "-c",
        "mkdir -p /www && cut -d: -f1 /proc/net/dev | tr -d ' ' > /www/index.html && \
         exec httpd -f -p 127.0.0.1:80 -h /www",
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    await_task(&c, "sandbox2", "RUNNING");
    let pid2 = task_pids(&c, "sandbox2")[0];
    let (ipc2, uts2) = (
        format!("ipc:/proc/{pid2}/ns/ipc"),
        format!("uts:/proc/{pid2}/ns/uts"),
    );
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do \
                  wget -qO- http://127.0.0.1:80/index.html && break; sleep 0.2; done";
    let o = c.run(&[
        "--rm",
        "--with-ns",
        &path,
        "--with-ns",
        &ipc2,
        "--with-ns",
        &uts2,
        &image,
        "app2",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(o.status.success(), "{}\n{}\n{}", text(&o), c.log(), d.log());
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        listed.lines().any(|l| l == "podlink0") && listed.lines().any(|l| l == "lo"),
        "the sandbox's links are the netns's: {listed}"
    );
    ok(&c.ctr(&["task", "kill", "-s", "SIGKILL", "sandbox2"]));
    await_task(&c, "sandbox2", "STOPPED");
    ok(&c.ctr(&["task", "delete", "sandbox2"]));
    ok(&c.ctr(&["container", "delete", "sandbox2"]));
    // The host's own network namespace is never joined (named as `ip netns` would).
    let host = Netns(format!("hullhost{}", std::process::id()));
    ip(&["netns", "attach", &host.0, &std::process::id().to_string()]);
    let host_net = format!("network:/run/netns/{}", host.0);
    let o = c.run(&[
        "--rm",
        "--with-ns",
        &host_net,
        &image,
        "hostnet",
        "/bin/true",
    ]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("is the host's"),
        "{}",
        text(&o)
    );
    let _ = c.ctr(&["container", "delete", "hostnet"]);
    assert_eq!(ok(&d.vmadm(&["list", "-H", "-o", "uuid"], None)), "");
}

/// A container's hull NIC, named by its annotations (`ctr run --annotation io.hull.nic.*`):
/// two containers on one nic tag reach each other at the addresses they were given, through
/// vmmd's virtual switch; a NIC together with a network namespace to join is refused.
#[test]
#[ignore = "needs root and containerd: run with --run-ignored"]
fn root_a_container_gets_a_hull_nic_from_its_annotations() {
    let (d, c, _work, image) = setup();
    let tag = "ctdnic1";
    let o = d.run("nictagadm", &["add", "-l", tag], None);
    assert!(o.status.success(), "{}", text(&o));
    let nic = |ip: &str| {
        [
            "--annotation".to_string(),
            format!("io.hull.nic.tag={tag}"),
            "--annotation".to_string(),
            format!("io.hull.nic.ips={ip}/24"),
        ]
    };
    let server = nic("192.0.2.71");
    let mut args: Vec<&str> = server.iter().map(String::as_str).collect();
    args.extend([
        "-d",
        image.as_str(),
        "web",
        "/bin/sh",
        "-c",
        "mkdir -p /www && echo from web > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    let o = c.run(&args);
    assert!(o.status.success(), "{}\n{}\n{}", text(&o), c.log(), d.log());
    await_task(&c, "web", "RUNNING");
    let client = nic("192.0.2.72");
    let mut args: Vec<&str> = client.iter().map(String::as_str).collect();
    args.extend([
        "--rm",
        image.as_str(),
        "client",
        "/bin/sh",
        "-c",
        "ip -o -4 addr show | grep -c 192.0.2.72/24; for i in $(seq 1 50); do \
         wget -qO- http://192.0.2.71:8080/index.html && exit 0; sleep 0.2; done; exit 1",
    ]);
    let o = c.run(&args);
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).as_ref()),
        (Some(0), "1\nfrom web\n"),
        "{}\n{}",
        text(&o),
        d.log()
    );
    // A NIC and a network namespace to join: one or the other.
    let pid = task_pids(&c, "web")[0];
    let joined = format!("network:/proc/{pid}/ns/net");
    let mut args: Vec<&str> = client.iter().map(String::as_str).collect();
    args.extend([
        "--rm",
        "--with-ns",
        &joined,
        image.as_str(),
        "both",
        "/bin/true",
    ]);
    let o = c.run(&args);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("one or the other"),
        "{}",
        text(&o)
    );
    let _ = c.ctr(&["container", "delete", "both"]);
    ok(&c.ctr(&["task", "kill", "-s", "SIGKILL", "web"]));
    await_task(&c, "web", "STOPPED");
    ok(&c.ctr(&["task", "delete", "web"]));
    ok(&c.ctr(&["container", "delete", "web"]));
    assert_nothing_left(&c, &d);
    let o = d.run("nictagadm", &["delete", tag], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// A CRI client on containerd's socket (shared with the CRI benchmark).
#[path = "../cri/client.rs"]
mod cri;

/// Issue 20's acceptance 4: containerd's CRI plugin, with a `hull` runtime handler and a
/// CNI bridge network, driven as kubelet drives it: a pod sandbox whose two containers reach
/// each other on localhost, ExecSync, ContainerStats, UpdateContainerResources, then
/// StopPodSandbox and RemovePodSandbox leaving no zone, mount, network namespace or link.
#[test]
#[ignore = "needs root, containerd and CNI's plugins: run with --run-ignored"]
fn root_cri_runs_a_pod_of_two_containers_as_hull_zones() {
    use cri::*;
    let d = Daemon::start();
    // The CNI network: a bridge of the test's own, host-local addresses kept in the test's
    // directory; CNI's loopback plugin (which containerd adds) brings up each pod's lo.
    let bridge = format!("hullcri{}", std::process::id() % 100_000);
    struct Link(String);
    impl Drop for Link {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _bridge = Link(bridge.clone());
    let netns_before = netns_names();
    let c = Containerd::start_with(&d, |dir| {
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni).expect("cni dir");
        let conf = serde_json::json!({
            "cniVersion": "0.4.0", "name": "hull-cri-test",
            "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": true,
                "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                    "ranges": [[{"subnet": "10.231.77.0/24"}]]}}],
        });
        std::fs::write(cni.join("10-hull.conflist"), conf.to_string()).expect("conflist");
        format!(
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20 sandbox_image = \"hull.test/hello:pause\"\n\
             \x20 disable_apparmor = true\n\
             \x20 restrict_oom_score_adj = true\n\
             \x20 stream_server_address = \"127.0.0.1\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
             \x20 bin_dir = \"/usr/lib/cni\"\n\
             \x20 conf_dir = \"{}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
             \x20 default_runtime_name = \"hull\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull]\n\
             \x20 runtime_type = \"io.containerd.hull.v2\"\n",
            cni.display()
        )
    });
    let work = tempfile::tempdir().expect("tempdir");
    let image = import(&c, "k8s.io", work.path());
    let socket = c.dir.path().join("c.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut rs = connect(&socket).await;
        let fail = |what: &str, e: tonic::Status| -> ! {
            panic!("{what}: {e}\ncontainerd: {}\nvmmd: {}", c.log(), d.log())
        };
        let sandbox_config = pod_config("web", "0b5c8f1e-hull-cri-test", "hullpod");
        let pod = rs
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: "hull".into(),
            })
            .await
            .unwrap_or_else(|e| fail("RunPodSandbox", e))
            .into_inner()
            .pod_sandbox_id;
        let status = rs
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| fail("PodSandboxStatus", e))
            .into_inner()
            .status
            .expect("status");
        assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        assert!(ip.starts_with("10.231.77."), "the pod's CNI address: {ip:?}");

        // kubelet's volumes for the pod, laid out as kubelet lays them out: an emptyDir both
        // containers share (0777, as kubelet makes it) and a configMap the client reads.
        let kubelet_pod = work
            .path()
            .join("kubelet/pods/0b5c8f1e-4a1d-4c2e-9f3a-0c1e00000001/volumes");
        let empty_dir = kubelet_pod.join("kubernetes.io~empty-dir/shared");
        let config_map = kubelet_pod.join("kubernetes.io~configmap/conf");
        std::fs::create_dir_all(&empty_dir).expect("emptyDir");
        std::fs::set_permissions(&empty_dir, std::fs::Permissions::from_mode(0o777))
            .expect("emptyDir mode");
        std::fs::create_dir_all(&config_map).expect("configMap");
        std::fs::write(config_map.join("greeting"), "hello from a configMap\n").expect("key");
        let volume = |host: &Path, at: &str, readonly: bool| Mount {
            container_path: at.into(),
            host_path: host.display().to_string(),
            readonly,
            ..Default::default()
        };
        let mut ids = Vec::new();
        for (name, script) in [
            (
                "server",
                "mkdir -p /www && hostname > /www/index.html && \
                 echo from the server > /shared/note && \
                 exec httpd -f -p 127.0.0.1:8080 -h /www",
            ),
            ("client", "exec sleep 600"),
        ] {
            let mut config = container_config(name, &image, script);
            config.mounts.push(volume(&empty_dir, "/shared", false));
            if name == "client" {
                config.mounts.push(volume(&config_map, "/conf", true));
            }
            let id = rs
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config.clone()),
                })
                .await
                .unwrap_or_else(|e| fail("CreateContainer", e))
                .into_inner()
                .container_id;
            rs.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| fail("StartContainer", e));
            ids.push(id);
        }
        let (server, client) = (ids[0].clone(), ids[1].clone());
        let exec = |cmd: &str| ExecSyncRequest {
            container_id: client.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            timeout: 30,
        };
        // The client reaches the server on the pod's localhost; the pod's hostname and
        // /etc/hosts are the ones containerd wrote for it.
        let r = rs
            .exec_sync(exec(
                "for i in $(seq 1 50); do wget -qO- http://127.0.0.1:8080/index.html && exit 0; \
                 sleep 0.2; done; exit 1",
            ))
            .await
            .unwrap_or_else(|e| fail("ExecSync", e))
            .into_inner();
        assert_eq!(
            (r.exit_code, String::from_utf8_lossy(&r.stdout).as_ref()),
            (0, "hullpod\n"),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        // The emptyDir carries the server's file to the client; the configMap is read-only.
        let r = rs
            .exec_sync(exec(
                "cat /shared/note /conf/greeting; touch /conf/x 2>/dev/null && echo writable",
            ))
            .await
            .unwrap_or_else(|e| fail("ExecSync", e))
            .into_inner();
        assert_eq!(
            String::from_utf8_lossy(&r.stdout),
            "from the server\nhello from a configMap\n",
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let r = rs
            .exec_sync(exec("cat /etc/hostname /etc/hosts; echo to stderr >&2; exit 3"))
            .await
            .unwrap_or_else(|e| fail("ExecSync", e))
            .into_inner();
        assert_eq!(r.exit_code, 3);
        // containerd 1.6 gives a pod a copy of the node's /etc/hosts.
        let hosts = std::fs::read_to_string("/etc/hosts").expect("/etc/hosts");
        assert_eq!(
            String::from_utf8_lossy(&r.stdout),
            format!("hullpod\n{hosts}")
        );
        assert_eq!(String::from_utf8_lossy(&r.stderr), "to stderr\n");
        // The container's own cgroups at /sys/fs/cgroup (read-only), its memory limit the
        // one asked for (cgroup v1's memory hierarchy or v2's memory.max).
        let r = rs
            .exec_sync(exec(
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || \
                 cat /sys/fs/cgroup/memory.max; touch /sys/fs/cgroup/x 2>/dev/null && echo writable",
            ))
            .await
            .unwrap_or_else(|e| fail("ExecSync", e))
            .into_inner();
        assert_eq!(
            String::from_utf8_lossy(&r.stdout),
            format!("{}\n", 256 << 20),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );

        // ContainerStats: the zone's cgroup figures.
        let stats = rs
            .container_stats(ContainerStatsRequest {
                container_id: server.clone(),
            })
            .await
            .unwrap_or_else(|e| fail("ContainerStats", e))
            .into_inner()
            .stats
            .expect("stats");
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value);
        assert!(memory.is_some_and(|b| b > 0), "{memory:?}");
        assert!(stats.cpu.is_some(), "cpu figures");

        // UpdateContainerResources: the zone's limits change (vmmd's record says so).
        let zone_of = |alias: &str| -> serde_json::Value {
            let all = ok(&d.vmadm(&["lookup", "-j", &format!("alias={alias}")], None));
            let all: serde_json::Value = serde_json::from_str(&all).expect("vmadm lookup -j");
            all[0].clone()
        };
        assert_eq!(zone_of(&server)["max_physical_memory"], 256);
        rs.update_container_resources(UpdateContainerResourcesRequest {
            container_id: server.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| fail("UpdateContainerResources", e));
        let zone = zone_of(&server);
        assert_eq!(
            (&zone["max_physical_memory"], &zone["cpu_shares"]),
            (&serde_json::json!(128), &serde_json::json!(512)),
            "{zone}"
        );

        rs.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap_or_else(|e| fail("StopPodSandbox", e));
        rs.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap_or_else(|e| fail("RemovePodSandbox", e));
        let left = rs
            .list_containers(ListContainersRequest::default())
            .await
            .unwrap_or_else(|e| fail("ListContainers", e))
            .into_inner()
            .containers;
        assert!(left.is_empty(), "{left:?}");
        let pods = rs
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap_or_else(|e| fail("ListPodSandbox", e))
            .into_inner()
            .items;
        assert!(pods.is_empty(), "{pods:?}");
    });
    // Nothing left: no zone, no mount under containerd's directories, no network namespace
    // CNI made, no port on the bridge.
    assert_eq!(ok(&d.vmadm(&["list", "-H", "-o", "uuid"], None)), "");
    assert!(c.mounts().is_empty(), "{:?}", c.mounts());
    assert_eq!(netns_names(), netns_before);
    let ports = Command::new("ip")
        .args(["-o", "link", "show", "master", &bridge])
        .output()
        .expect("ip");
    assert!(
        ports.status.success(),
        "CNI made {bridge}: {}",
        text(&ports)
    );
    assert_eq!(
        String::from_utf8_lossy(&ports.stdout),
        "",
        "links left on {bridge}"
    );
}

/// The names of the network namespaces containerd's CRI plugin made (/run/netns/cni-*); the
/// others belong to tests running beside this one (the pod test's `hullpod<pid>`).
fn netns_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string()))
        .filter(|n| n.starts_with("cni-"))
        .collect();
    names.sort();
    names
}
