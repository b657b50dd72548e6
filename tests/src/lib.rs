//! Helpers for the integration suites: find the built binaries, run a real vmmd on a
//! private socket and data root, run the CLIs, talk raw HTTP.
//!
//! Suites that need root are named `root_*` and marked `#[ignore]`; `scripts/test` runs
//! them (with `--run-ignored all`) only when it runs as root and says SKIPPED otherwise.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hull_client::Client;

pub mod oci_peer;
pub mod zone;

/// The directory holding the workspace's binaries: the running test's `deps/` parent, or
/// the running bench binary's own directory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let mut dir = exe
        .parent()
        .expect("binaries live in target/<profile>")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    assert!(
        dir.join("vmmd").exists() && dir.join("vmadm").exists(),
        "{} lacks vmmd/vmadm: run `cargo build --workspace --bins` first (scripts/test does)",
        dir.display()
    );
    dir
}

/// A built binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The statically linked mdata tool (scripts/build-mdata, which scripts/test runs), if
/// it was built: vmmd binds it into zones.
pub fn mdata_tool() -> Option<PathBuf> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let p = top.join(format!("target/{host}/release/mdata"));
    p.exists().then_some(p)
}

/// [`mdata_tool`], for a test that needs the tools in its zones (vmmd binds none without).
pub fn require_mdata_tool() -> PathBuf {
    mdata_tool()
        .expect("the static mdata tool is missing: run scripts/build-mdata (scripts/test does)")
}

/// A vmmd serving a private socket and data root, killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    /// The temp dir holding socket and data root.
    pub dir: tempfile::TempDir,
    /// The process.
    pub child: Option<Child>,
    /// Extra arguments it was started with.
    pub args: Vec<String>,
    /// The data root.
    root: PathBuf,
}

impl Daemon {
    /// Starts a daemon on a fresh data root.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts a daemon whose data root is under `root` (a mounted filesystem under test).
    pub fn start_on(root: &Path) -> Daemon {
        Daemon::start_on_with(root, &[])
    }

    /// Starts a daemon with extra flags whose data root is under `root`.
    pub fn start_on_with(root: &Path, args: &[&str]) -> Daemon {
        Daemon::build(args, Some(root.join("hull")))
    }

    /// Starts a daemon with extra flags.
    pub fn start_with(args: &[&str]) -> Daemon {
        Daemon::build(args, None)
    }

    fn build(args: &[&str], root: Option<PathBuf>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("hull-t")
            .tempdir()
            .expect("tempdir");
        let root = root.unwrap_or_else(|| dir.path().join("data"));
        let mut d = Daemon {
            dir,
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            root,
        };
        d.spawn();
        d
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("vmmd.sock")
    }

    /// The data root.
    pub fn data_root(&self) -> PathBuf {
        self.root.clone()
    }

    /// (Re)starts the process and waits until it answers ping.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("vmmd.log"))
            .expect("log file");
        let mut cmd = Command::new(bin("vmmd"));
        if let Some(mdata) = mdata_tool() {
            cmd.arg("--mdata-tools").arg(mdata);
        }
        let child = cmd
            .arg("--socket")
            .arg(self.socket())
            .arg("--data-root")
            .arg(self.data_root())
            .args(&self.args)
            .env("HULL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn vmmd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = self.client();
        while Instant::now() < deadline {
            if client.ping().is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("vmmd exited early ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("vmmd did not answer within 10 s; log:\n{}", self.log());
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vmmd.log")).unwrap_or_default()
    }

    /// A client for this daemon.
    pub fn client(&self) -> Client {
        Client::new(self.socket()).expect("client")
    }

    /// SIGKILLs the daemon and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a CLI tool against this daemon.
    pub fn run(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
        run_tool(tool, &self.socket(), args, stdin)
    }

    /// Runs vmadm against this daemon.
    pub fn vmadm(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.run("vmadm", args, stdin)
    }

    /// Runs the shell script `script` in zone `uuid` through zlogin (stdin empty).
    pub fn zlogin(&self, uuid: &str, script: &str) -> Output {
        self.run("zlogin", &[uuid, "sh", "-c", script], None)
    }

    /// `imgadm install -q -m MANIFEST -f FILE` against this vmmd.
    pub fn imgadm_install(&self, manifest: &Path, file: &Path) -> Output {
        self.run(
            "imgadm",
            &[
                "install",
                "-q",
                "-m",
                &manifest.to_string_lossy(),
                "-f",
                &file.to_string_lossy(),
            ],
            None,
        )
    }

    /// Makes a small real image in the test's folder and installs it with `imgadm install`:
    /// a tree (etc/, bin/, a symlink) as a gzip'd tar for zone-dataset and lx-dataset, a
    /// 4 MiB raw disk for zvol. Returns the manifest and the file.
    pub fn install_image(&self, uuid: &str, image_type: &str) -> (PathBuf, PathBuf) {
        let (manifest, file) = make_image(self.dir.path(), uuid, image_type);
        let o = self.imgadm_install(&manifest, &file);
        assert!(o.status.success(), "imgadm install failed: {}", stderr(&o));
        (manifest, file)
    }
}

/// An image from a recipe in images/ (its downloads cached outside the clone), built into
/// `out` (the recipe's default cache when None) under a lock, since tests run as parallel
/// processes: one builds, the others wait. Returns (manifest, image file named `file`).
pub fn recipe_image(
    recipe: &str,
    out: Option<&Path>,
    file: &str,
) -> Result<(PathBuf, PathBuf), String> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lock_dir = top.join("target/images");
    std::fs::create_dir_all(&lock_dir).map_err(|e| format!("{}: {e}", lock_dir.display()))?;
    let lock = std::fs::File::create(lock_dir.join(format!(".{recipe}.lock")))
        .map_err(|e| format!("image lock: {e}"))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("image lock: {e}"))?;
    let mut cmd = Command::new(top.join(format!("images/{recipe}/build")));
    if let Some(out) = out {
        cmd.arg(out);
    }
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run images/{recipe}/build: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "images/{recipe}/build failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let manifest = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    Ok((manifest.clone(), manifest.with_file_name(file)))
}

/// Reads a guest's console socket (zoned replays recent output to each client) until it
/// shows `want`, for at most 30 s; returns what it read.
pub fn console_until(console: &str, want: &str) -> String {
    let mut con = std::os::unix::net::UnixStream::connect(console).expect("console");
    let mut seen = Vec::new();
    stream_until(&mut con, &mut seen, want)
}

/// Reads a console stream into `seen` until what it holds shows `want` (at most 30 s);
/// returns all of it.
pub fn stream_until(
    con: &mut std::os::unix::net::UnixStream,
    seen: &mut Vec<u8>,
    want: &str,
) -> String {
    use std::io::Read;
    con.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    let t = std::time::Instant::now();
    while !String::from_utf8_lossy(seen).contains(want) {
        let mut buf = [0u8; 4096];
        let n = con.read(&mut buf).unwrap_or(0);
        seen.extend_from_slice(&buf[..n]);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "the console never showed {want:?}: {}",
            String::from_utf8_lossy(seen)
        );
    }
    String::from_utf8_lossy(seen).into_owned()
}

/// Panics unless this runs as root with a usable /dev/kvm (the kvm_root_* tests).
pub fn require_root_and_kvm() {
    assert!(
        is_root(),
        "this test needs root: scripts/test runs it as root"
    );
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "this test needs a usable /dev/kvm"
    );
}

/// The freestanding test guest (images/testguest), built with its Makefile under a lock
/// (tests run as parallel processes). Panics with gcc's or make's message if it cannot.
pub fn testguest() -> PathBuf {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lock_dir = top.join("target/images");
    std::fs::create_dir_all(&lock_dir).expect("target/images");
    let lock = std::fs::File::create(lock_dir.join(".testguest.lock")).expect("testguest lock");
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("testguest lock");
    let dir = top.join("images/testguest");
    let o = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&dir)
        .output()
        .expect("run make for images/testguest");
    assert!(
        o.status.success(),
        "make -C images/testguest failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    dir.join("testguest.elf")
        .canonicalize()
        .expect("the built test guest")
}

/// The first bytes of the zvol test image's disk: the test guest (images/testguest) checks
/// the `HULLDISK` magic in sector 0.
pub const TEST_DISK_HEAD: &[u8; 16] = b"HULLDISK test!!\n";

/// Makes an image (see [`Daemon::install_image`]) under `dir`: returns (manifest, file).
pub fn make_image(dir: &Path, uuid: &str, image_type: &str) -> (PathBuf, PathBuf) {
    use hull_cowstore::archive::{Compression, digest, pack_tree};
    let work = dir.join(format!("image-{uuid}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("image work dir");
    let (file, compression) = if image_type == "zvol" {
        let file = work.join("disk.raw");
        let mut bytes = vec![0u8; 4 << 20];
        bytes[..16].copy_from_slice(TEST_DISK_HEAD);
        std::fs::write(&file, &bytes).expect("disk");
        (file, "none")
    } else {
        let root = work.join("root");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::create_dir_all(root.join("bin")).expect("bin");
        std::fs::write(root.join("etc/hostname"), "test\n").expect("hostname");
        std::fs::write(root.join("bin/hello"), "#!/bin/sh\necho hello\n").expect("hello");
        std::os::unix::fs::symlink("/bin/hello", root.join("bin/hi")).expect("symlink");
        let file = work.join("root.tar.gz");
        let out = std::fs::File::create(&file).expect("archive");
        pack_tree(&root, Compression::Gzip, out).expect("pack");
        (file, "gzip")
    };
    let (sha1, size) = digest(std::fs::File::open(&file).expect("open")).expect("digest");
    let mut m = serde_json::json!({"v": 2, "uuid": uuid, "name": format!("test-{image_type}"),
        "version": "1.0.0", "type": image_type, "os": "linux",
        "files": [{"sha1": sha1, "size": size, "compression": compression}]});
    if image_type == "zvol" {
        m["image_size"] = serde_json::json!(4);
    }
    let manifest = work.join("manifest.json");
    std::fs::write(&manifest, m.to_string()).expect("manifest");
    (manifest, file)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A test that failed half-way, or that has no reason to delete its last guest,
        // leaves guests behind, and zones outlive vmmd by design: stop and delete what is
        // left while vmmd runs (a running zone whose vmmd is gone would hold its zoned,
        // cgroups and mounts until the machine stops).
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()));
        if running {
            let c = self.client();
            for vm in c.list_vms(&[]).unwrap_or_default() {
                let force = hull_spec::api::StopRequest {
                    force: true,
                    ..Default::default()
                };
                let _ = c.stop_vm(vm.uuid, &force);
                let _ = c.delete_vm(vm.uuid);
            }
        }
        self.kill9();
    }
}

/// A filesystem made in a sparse file and loop-mounted for a test; unmounted and detached
/// when dropped (drop it after the daemon using it).
#[derive(Debug)]
pub struct LoopFs {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Whether it is mounted with project quotas (xfs; some kernels lack XFS quota support).
    pub prjquota: bool,
    device: String,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// Makes and mounts a `btrfs` or `xfs` (reflink=1, prjquota) filesystem of `size` bytes.
    pub fn new(fstype: &str, size: u64) -> LoopFs {
        let dir = tempfile::Builder::new()
            .prefix("hull-fs")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .expect("sparse image");
        let (mkfs, args, opts, package): (&str, &[&str], &str, &str) = match fstype {
            "btrfs" => ("mkfs.btrfs", &["-q"], "", "btrfs-progs"),
            "xfs" => (
                "mkfs.xfs",
                &["-q", "-m", "reflink=1"],
                "prjquota",
                "xfsprogs",
            ),
            other => panic!("no loop filesystem recipe for {other}"),
        };
        let made = Command::new(mkfs)
            .args(args)
            .arg(&image)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("{mkfs} is missing ({e}): install {package} (scripts/test does)")
            });
        assert!(made.success(), "{mkfs} failed");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .expect("losetup");
        assert!(out.status.success(), "losetup: {}", stderr(&out));
        let device = stdout(&out).trim().to_string();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("mountpoint");
        let mut fs = LoopFs {
            mountpoint,
            prjquota: false,
            device,
            _dir: dir,
        };
        let mount = |opts: &str| {
            let mut m = Command::new("mount");
            if !opts.is_empty() {
                m.args(["-o", opts]);
            }
            m.arg(&fs.device)
                .arg(&fs.mountpoint)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !opts.is_empty() && mount(opts) {
            fs.prjquota = true;
        } else {
            // This host's kernel may lack XFS quota support: mount without it, and the test
            // expects the quota to be reported as not enforced.
            assert!(mount(""), "mounting {fstype} failed");
        }
        fs
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let umounted = Command::new("umount").arg(&self.mountpoint).status();
        if !umounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Runs a CLI tool with `--socket`.
pub fn run_tool(tool: &str, socket: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin(tool))
        .args(args)
        .env("HULL_SOCKET", socket)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tool");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("tool output")
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sends raw bytes as one HTTP request and returns (status, body). The connection is
/// closed by the client after writing, as curl does for a one-shot request.
pub fn raw_http(socket: &Path, request: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may answer (413) and close before reading all of a huge body.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// An HTTP request with a body and headers.
pub fn request(method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: vmmd\r\nConnection: close\r\n");
    if let Some(ct) = content_type {
        r.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// True when running as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A stopped microVM of `brand` holding the test guest: a boot disk cloned from `image` and
/// an 8 MiB blank disk.
pub fn two_disk_vm(d: &Daemon, brand: &str, image: &str) -> hull_spec::Vm {
    let payload = serde_json::json!({"brand": brand, "alias": "twodisks", "ram": 64, "autoboot": false,
        "kernel": testguest().to_string_lossy(),
        "cmdline": "console=ttyS0 testguest.hold=kbd",
        "disks": [{"image_uuid": image, "boot": true}, {"size": 8}]});
    let o = d.vmadm(&["create"], Some(&payload.to_string()));
    assert!(o.status.success(), "{}", zone::text(&o));
    d.client().list_vms(&[]).expect("list").remove(0)
}

/// A test CA and a certificate for 127.0.0.1 it signed, made with openssl in `dir`:
/// (CA certificate, server certificate, server key).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian's openssl package)");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=hull test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (p("ca.pem"), p("server.pem"), p("server.key"))
}
