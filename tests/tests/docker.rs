//! Docker images (issue 19, tier 2, root): OCI archives that umoci and skopeo made
//! (tests/docker/build-images) imported with `imgadm import oci-archive:` and
//! `docker-archive:`, their layers stacked as images of type docker sharing their base, and
//! a docker zone running the image's command with its Env, WorkingDir and User, its output
//! kept for `vmadm logs` and its exit status in the record.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use hull_tests::Daemon;
use hull_tests::zone::{busybox, ok, refused, text, wait_stopped};
use serde_json::Value;

/// The archives, built once per test process.
fn archives() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = top.join("target/images/docker-tests");
        // One build at a time (nextest runs each test in its own process), kept while whole.
        std::fs::create_dir_all(top.join("target/images")).expect("target/images");
        let lock =
            std::fs::File::create(top.join("target/images/.docker-tests.lock")).expect("lock file");
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock");
        if !out.join("other.oci.tar").exists() {
            let o = Command::new(top.join("tests/docker/build-images"))
                .arg(&busybox().1)
                .arg(&out)
                .output()
                .expect("tests/docker/build-images (needs umoci and skopeo: scripts/packages.txt)");
            assert!(o.status.success(), "{}", text(&o));
        }
        out
    })
}

fn archive(name: &str) -> String {
    archives().join(name).display().to_string()
}

/// `imgadm list -j` as (uuid, manifest) pairs.
fn images(d: &Daemon) -> Vec<Value> {
    let o = d.run("imgadm", &["list", "-j"], None);
    serde_json::from_str(&ok(&o)).expect("imgadm list -j")
}

fn import(d: &Daemon, what: &str) -> Value {
    let o = d.run("imgadm", &["import", "-q", "-j", what], None);
    serde_json::from_str(&ok(&o)).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

/// `btrfs filesystem du -s`'s figures for `path`: (total, exclusive, set shared) bytes.
fn du(path: &Path) -> (u64, u64, u64) {
    let o = Command::new("btrfs")
        .args(["filesystem", "du", "-s", "--raw"])
        .arg(path)
        .output()
        .expect("btrfs filesystem du");
    let out = ok(&o);
    let line = out.lines().nth(1).expect("a figures line");
    let n: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().unwrap_or_else(|_| panic!("figures in {out}")))
        .collect();
    (n[0], n[1], n[2])
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_docker_archives_import_as_layers_that_share_their_base() {
    let fs = hull_tests::LoopFs::new("btrfs", 2 << 30);
    let d = Daemon::start_on(&fs.mountpoint);
    let top = import(&d, &format!("oci-archive:{}", archive("app.oci.tar")));
    assert_eq!(top["type"], "docker");
    // No repository in an OCI archive skopeo wrote (its ref.name is the tag alone).
    assert!(
        top["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("docker-")),
        "{top}"
    );
    assert_eq!(top["version"], "app", "{top}");
    let cfg = &top["tags"]["docker:config"];
    assert_eq!(cfg["Cmd"], serde_json::json!(["/bin/app"]), "{top}");
    let all = images(&d);
    assert_eq!(all.len(), 2, "two layers, two images: {all:?}");
    let base = top["origin"]
        .as_str()
        .expect("the top layer has an origin")
        .to_string();
    // The same image as a docker-archive: the same layers (chain ids from diff_ids), and a
    // repository and tag this time; nothing installed twice.
    let again = import(&d, &format!("docker-archive:{}", archive("app.docker.tar")));
    assert_eq!(again["origin"], top["origin"], "{again}");
    // Another image on the same base: one more layer only.
    let other = import(&d, &format!("oci-archive:{}", archive("other.oci.tar")));
    assert_eq!(other["origin"].as_str(), Some(base.as_str()));
    let n = images(&d).len();
    assert!(n <= 4, "the base is installed once: {n} images");
    // Importing it again is a no-op that succeeds, as imgadm's is.
    import(&d, &format!("oci-archive:{}", archive("other.oci.tar")));
    assert_eq!(images(&d).len(), n);
    // Space: three trees (the base and two images on it) hold the base's 16 MiB of random
    // data, and the disk holds it once.
    let (total, exclusive, shared) = du(&d.data_root().join("images"));
    assert!(
        total >= 3 * (16 << 20) && exclusive + shared < 20 << 20,
        "the images refer to {total} bytes and hold {exclusive} + {shared}"
    );
    // The base cannot go while images stand on it; vacuum takes them all once unused.
    refused(&d.run("imgadm", &["delete", &base], None), "in use");
    let o = d.run("imgadm", &["vacuum", "-f"], None);
    ok(&o);
    assert!(images(&d).is_empty(), "{:?}", images(&d));
    drop(d);
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_docker_zone_runs_the_images_command_and_keeps_its_output() {
    let d = Daemon::start();
    let top = import(&d, &format!("oci-archive:{}", archive("app.oci.tar")));
    let image = top["uuid"].as_str().expect("uuid");
    let payload = serde_json::json!({"brand": "lx", "image_uuid": image, "alias": "app",
        "kernel_version": "4.3.0", "autoboot": true});
    let o = d.vmadm(&["create"], Some(&payload.to_string()));
    ok(&o);
    let uuid = d.run("vmadm", &["lookup", "-1", "alias=app"], None);
    let uuid = ok(&uuid).trim().to_string();
    let vm = wait_stopped(&d, &uuid);
    assert_eq!(vm["docker"], true, "{vm}");
    assert_eq!(vm["exit_status"], 7, "{vm}");
    assert_eq!(vm["internal_metadata"]["docker:workdir"], "/srv", "{vm}");
    let logs = ok(&d.vmadm(&["logs", &uuid], None));
    assert!(
        logs.contains("hello from docker in /srv as 1000:1000"),
        "{logs}"
    );
    assert!(!logs.contains("FAILED"), "{logs}");
    assert!(logs.contains("setuid kept"), "{logs}");
    assert_eq!(
        logs.lines().find(|l| l.trim() == "new").map(str::trim),
        Some("new"),
        "the replaced directory holds only the top layer's file: {logs}"
    );
    assert!(!logs.lines().any(|l| l.trim() == "old"), "{logs}");
    // The image's VOLUME is a volume of the zone's own, filled from the image (so the
    // listing above read it there), as Docker's anonymous volumes are.
    let fs = vm["filesystems"].as_array().expect("filesystems");
    assert_eq!(fs.len(), 1, "{vm}");
    assert_eq!(fs[0]["target"], "/var/cache/app", "{vm}");
    let volume = PathBuf::from(fs[0]["source"].as_str().expect("source"));
    assert_eq!(
        volume.parent(),
        Some(
            d.data_root()
                .join("guests")
                .join(&uuid)
                .join("volumes")
                .as_path()
        ),
        "{vm}"
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("new")).expect("seeded"),
        "new\n"
    );
    // The payload overrides the image's command; a second run appends to the logs.
    let upd = serde_json::json!({"set_internal_metadata": {
        "docker:cmd": "[\"/bin/sh\", \"-c\", \"echo second run; exit 3\"]"}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    ok(&d.vmadm(&["start", &uuid], None));
    let vm = wait_stopped(&d, &uuid);
    assert_eq!(vm["exit_status"], 3, "{vm}");
    let logs = ok(&d.vmadm(&["logs", &uuid], None));
    assert!(
        logs.contains("hello from docker") && logs.contains("second run"),
        "{logs}"
    );
    // Without docker:tty, as Docker without -t: stdout and stderr one pipe (no "\r", not a
    // terminal), stdin /dev/null; with docker:tty "true" a terminal.
    let probe = "if [ -t 1 ]; then echo out-tty; else echo out-pipe; fi; echo err-line >&2; \
                 [ -t 0 ] || { read x || echo stdin-eof; }";
    let upd = serde_json::json!({"set_internal_metadata": {
        "docker:cmd": serde_json::json!(["/bin/sh", "-c", probe]).to_string()}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    ok(&d.vmadm(&["start", &uuid], None));
    assert_eq!(wait_stopped(&d, &uuid)["exit_status"], 0);
    let logs = ok(&d.vmadm(&["logs", &uuid], None));
    let tail = &logs[logs.rfind("second run").expect("second run")..];
    assert!(
        tail.contains("out-pipe\nerr-line\nstdin-eof\n") && !tail.contains('\r'),
        "{tail:?}"
    );
    let upd = serde_json::json!({"set_internal_metadata": {"docker:tty": "true"}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    ok(&d.vmadm(&["start", &uuid], None));
    wait_stopped(&d, &uuid);
    let logs = ok(&d.vmadm(&["logs", &uuid], None));
    assert!(logs.contains("out-tty\r\n"), "{logs:?}");
    let upd = serde_json::json!({"set_internal_metadata": {"docker:tty": "yes"}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    refused(&d.vmadm(&["start", &uuid], None), "docker:tty");
    let upd = serde_json::json!({"remove_internal_metadata": ["docker:tty"],
        "set_internal_metadata": {"docker:openstdin": "maybe"}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    refused(&d.vmadm(&["start", &uuid], None), "docker:openstdin");
    let upd = serde_json::json!({"remove_internal_metadata": ["docker:openstdin"],
        "set_internal_metadata": {
            "docker:cmd": "[\"/bin/sh\", \"-c\", \"echo second run; exit 3\"]"}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    // Restart policy on-failure:2: the failing process runs three times in all, then the
    // zone stays stopped; the record counts the restarts.
    let upd =
        serde_json::json!({"set_internal_metadata": {"docker:restartpolicy": "on-failure:2"}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    ok(&d.vmadm(&["start", &uuid], None));
    let t = std::time::Instant::now();
    let vm = loop {
        let vm: Value = serde_json::from_str(&ok(&d.vmadm(&["get", &uuid], None))).expect("get");
        if vm["init_restarts"] == 2 && vm["state"] == "stopped" {
            break vm;
        }
        assert!(t.elapsed().as_secs() < 60, "no second restart: {vm}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    let after: Value = serde_json::from_str(&ok(&d.vmadm(&["get", &uuid], None))).expect("get");
    assert_eq!(after["state"], "stopped", "no third restart: {after}");
    assert_eq!(vm["exit_status"], 3);
    let logs = ok(&d.vmadm(&["logs", &uuid], None));
    assert_eq!(logs.matches("second run").count(), 4, "{logs}");
    // A start by hand begins the count anew (as `docker start`): three more runs.
    ok(&d.vmadm(&["start", &uuid], None));
    let t = std::time::Instant::now();
    loop {
        let logs = ok(&d.vmadm(&["logs", &uuid], None));
        let vm: Value = serde_json::from_str(&ok(&d.vmadm(&["get", &uuid], None))).expect("get");
        if logs.matches("second run").count() == 7 && vm["state"] == "stopped" {
            assert_eq!(vm["init_restarts"], 2, "{vm}");
            break;
        }
        assert!(
            t.elapsed().as_secs() < 60,
            "not three more runs: {vm}\n{logs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let upd = serde_json::json!({"set_internal_metadata": {"docker:restartpolicy": "sometimes"}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    refused(&d.vmadm(&["start", &uuid], None), "docker:restartpolicy");
    let upd = serde_json::json!({"remove_internal_metadata": ["docker:restartpolicy"]});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    // A command that is not there: the start fails naming it.
    let upd = serde_json::json!({"set_internal_metadata": {"docker:cmd": "[\"nosuch\"]"}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    refused(&d.vmadm(&["start", &uuid], None), "nosuch");
    // Bad metadata: refused naming the key.
    let upd = serde_json::json!({"set_internal_metadata": {"docker:cmd": "echo hi"}});
    ok(&d.vmadm(&["update", &uuid], Some(&upd.to_string())));
    refused(&d.vmadm(&["start", &uuid], None), "docker:cmd");
    // Logs are a docker zone's; a joyent zone has none.
    hull_tests::zone::install(&d);
    let z = hull_tests::zone::create(&d, serde_json::json!({"autoboot": false}));
    refused(&d.vmadm(&["logs", &z], None), "not a docker zone");
    // docker: true on a non-docker image, and on a joyent zone: refused by name.
    let bad = serde_json::json!({"brand": "lx", "image_uuid": hull_tests::zone::image_uuid(),
        "docker": true, "kernel_version": "4.3.0"});
    refused(&d.vmadm(&["create"], Some(&bad.to_string())), "docker");
    let bad = serde_json::json!({"brand": "joyent", "image_uuid": image, "docker": true});
    refused(&d.vmadm(&["create"], Some(&bad.to_string())), "docker");
    for u in [&uuid, &z] {
        ok(&d.vmadm(&["delete", u], None));
    }
    assert!(!volume.exists(), "the volume went with the zone");
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_broken_archives_are_refused_and_leave_nothing() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // `archive` with its bytes changed by `spoil`, imported as `transport`: refused naming
    // `naming`, and no image left.
    let spoilt = |archive: &str, transport: &str, spoil: &dyn Fn(&mut Vec<u8>), naming: &str| {
        let mut bytes = std::fs::read(archives().join(archive)).expect("archive");
        spoil(&mut bytes);
        let path = dir.path().join("spoilt.tar");
        std::fs::write(&path, &bytes).expect("write");
        let what = format!("{transport}:{}", path.display());
        refused(&d.run("imgadm", &["import", "-q", &what], None), naming);
        assert!(images(&d).is_empty(), "{:?}", images(&d));
    };
    let flip = |b: &mut Vec<u8>| {
        let at = find_layer_middle(b);
        b[at] ^= 0x55;
    };
    // A flipped byte inside the big base layer (random data, stored as gzip): its gzip
    // check fails before its digest can.
    spoilt("app.oci.tar", "oci-archive", &flip, "corrupt");
    // The same in a docker-archive, whose layers are plain tars named by their diff_id: the
    // tar still reads, and the digest check refuses it.
    spoilt("app.docker.tar", "docker-archive", &flip, "digest");
    // Cut short: what the cut took is named missing.
    spoilt(
        "app.oci.tar",
        "oci-archive",
        &|b| b.truncate(b.len() / 2),
        "missing",
    );
    // Not an archive at all, and a missing file.
    refused(
        &d.run("imgadm", &["import", "oci-archive:/nonexistent.tar"], None),
        "/nonexistent.tar",
    );
    let leftovers: Vec<_> = std::fs::read_dir(d.data_root().join("images"))
        .expect("images dir")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// An offset in the middle of the largest member of an uncompressed tar.
fn find_layer_middle(tar: &[u8]) -> usize {
    let mut a = tar::Archive::new(tar);
    let mut best = (0u64, 0u64);
    for e in a.entries().expect("entries") {
        let e = e.expect("entry");
        if e.size() > best.1 {
            best = (e.raw_file_position(), e.size());
        }
    }
    (best.0 + best.1 / 2) as usize
}

/// Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1 with TLS from a
/// test CA and basic auth (htpasswd, bcrypt), its storage in `dir`; killed when dropped.
struct Registry {
    child: std::process::Child,
    addr: String,
    ca: PathBuf,
    certs: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let (ca, cert, key) = hull_tests::test_pki(dir);
        let o = Command::new("htpasswd")
            .args(["-Bbn", "hull", "s3cret"])
            .output()
            .expect("htpasswd (apache2-utils)");
        std::fs::write(dir.join("htpasswd"), ok(&o)).expect("htpasswd file");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\n\
             auth:\n  htpasswd:\n    realm: hull-test\n    path: {}\n",
            dir.join("data").display(),
            cert.display(),
            key.display(),
            dir.join("htpasswd").display()
        );
        std::fs::write(dir.join("config.yml"), config).expect("config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian's docker-registry package)");
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                t.elapsed().as_secs() < 20,
                "the registry did not listen on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // skopeo takes a CA from a directory of *.crt files.
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).expect("certs dir");
        std::fs::copy(&ca, certs.join("ca.crt")).expect("ca.crt");
        Registry {
            child,
            addr,
            ca,
            certs,
        }
    }

    /// skopeo copies `src` (a transport:path) to NAME:TAG in this registry.
    fn push(&self, src: &str, name: &str) {
        let o = Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--insecure-policy",
                "--dest-creds",
                "hull:s3cret",
            ])
            .arg("--dest-cert-dir")
            .arg(&self.certs)
            .arg(src)
            .arg(format!("docker://{}/{name}", self.addr))
            .output()
            .expect("skopeo");
        ok(&o);
    }

    /// curl against the registry with its credentials: (status line's code, body).
    fn curl(&self, args: &[&str]) -> Vec<u8> {
        let o = Command::new("curl")
            .args(["-sf", "-u", "hull:s3cret", "--cacert"])
            .arg(&self.ca)
            .args(args)
            .output()
            .expect("curl");
        assert!(o.status.success(), "curl {args:?}: {}", text(&o));
        o.stdout
    }

    /// An OCI index at NAME:TAG claiming `amd64` and `arm64` are the manifests of the images
    /// at NAME:A and NAME:B (both pushed first): a test of the platform choice.
    fn push_index(&self, name: &str, amd64: &str, arm64: &str, tag: &str) {
        use sha2::Digest as _;
        let mut entries = Vec::new();
        for (t, arch) in [(amd64, "amd64"), (arm64, "arm64")] {
            let m = self.curl(&[
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
                "-D",
                "/dev/null",
                &format!("https://{}/v2/{name}/manifests/{t}", self.addr),
            ]);
            let doc: Value = serde_json::from_slice(&m).expect("manifest");
            let hex: String = sha2::Sha256::digest(&m)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            entries.push(serde_json::json!({
                "mediaType": doc["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json"),
                "digest": format!("sha256:{hex}"), "size": m.len(),
                "platform": {"os": "linux", "architecture": arch}}));
        }
        // arm64 first: a client taking the first entry would get it wrong.
        entries.reverse();
        let index = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
        self.curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.index.v1+json",
            "--data-binary",
            &index.to_string(),
            &format!("https://{}/v2/{name}/manifests/{tag}", self.addr),
        ]);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_docker_registry_pulls_with_tls_and_basic_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(dir.path());
    reg.push(
        &format!("oci-archive:{}", archive("app.oci.tar")),
        "hull/app:v1",
    );
    reg.push(
        &format!("oci-archive:{}", archive("other.oci.tar")),
        "hull/multi:b",
    );
    reg.push(
        &format!("oci-archive:{}", archive("app.oci.tar")),
        "hull/multi:a",
    );
    reg.push_index("hull/multi", "a", "b", "v1");
    let d = Daemon::start();
    let url = format!("https://{}", reg.addr);
    let imgadm = |args: &[&str], stdin: Option<&str>| d.run("imgadm", args, stdin);
    let add = |extra: &[&str], password: Option<&str>| {
        let _ = imgadm(&["sources", "-d", &url], None);
        let mut args = vec!["sources", "-t", "docker", "-a", url.as_str()];
        args.extend_from_slice(extra);
        imgadm(&args, password)
    };
    let ca = reg.ca.display().to_string();
    // No credentials, wrong ones, a CA the host does not know: each refused naming why,
    // nothing installed.
    ok(&add(&["--ca-cert", &ca], None));
    refused(
        &imgadm(&["import", "-q", "hull/app:v1"], None),
        "wants credentials",
    );
    ok(&add(&["--ca-cert", &ca, "--user", "hull"], Some("wrong\n")));
    refused(
        &imgadm(&["import", "-q", "hull/app:v1"], None),
        "refused user \"hull\"",
    );
    ok(&add(&["--user", "hull"], Some("s3cret\n")));
    refused(
        &imgadm(&["import", "-q", "hull/app:v1"], None),
        "UnknownIssuer",
    );
    assert!(images(&d).is_empty(), "{:?}", images(&d));
    // The password is never shown.
    ok(&add(
        &["--ca-cert", &ca, "--user", "hull"],
        Some("s3cret\n"),
    ));
    let get = hull_tests::request("GET", "/v1/sources", None, b"");
    let (_, listed) = hull_tests::raw_http(&d.socket(), &get);
    assert!(
        listed.contains("(set)") && !listed.contains("s3cret"),
        "{listed}"
    );
    // The pull: two layers, the same identity as the same image from its archive.
    let o = imgadm(&["import", "-q", "-j", "hull/app:v1"], None);
    let top: Value = serde_json::from_str(&ok(&o)).expect("manifest");
    assert_eq!(top["name"], format!("{}/hull/app", reg.addr));
    assert_eq!(top["version"], "v1");
    assert_eq!(images(&d).len(), 2);
    let o = imgadm(
        &[
            "import",
            "-q",
            &format!("oci-archive:{}", archive("app.oci.tar")),
        ],
        None,
    );
    assert!(
        ok(&o).contains("already installed")
            || String::from_utf8_lossy(&o.stderr).contains("already installed"),
        "{}",
        text(&o)
    );
    assert_eq!(
        images(&d).len(),
        2,
        "the archive's layers are the pulled ones"
    );
    // Pinned by digest: the same image.
    let digest = top["tags"]["docker:digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let o = imgadm(&["import", "-q", &format!("hull/app@{digest}")], None);
    assert!(o.status.success(), "{}", text(&o));
    // A manifest list offering arm64 first and amd64: the amd64 image (app) comes.
    let o = imgadm(&["import", "-q", "-j", "hull/multi:v1"], None);
    let multi: Value = serde_json::from_str(&ok(&o)).expect("manifest");
    assert_eq!(
        multi["tags"]["docker:config"]["Cmd"],
        serde_json::json!(["/bin/app"]),
        "{multi}"
    );
    // A tag that is not there: named.
    refused(&imgadm(&["import", "-q", "hull/app:nosuch"], None), "404");
    // And it runs.
    let payload = serde_json::json!({"brand": "lx", "image_uuid": top["uuid"], "alias": "pulled",
        "kernel_version": "4.3.0"});
    ok(&d.vmadm(&["create"], Some(&payload.to_string())));
    let uuid = ok(&d.run("vmadm", &["lookup", "-1", "alias=pulled"], None))
        .trim()
        .to_string();
    let vm = wait_stopped(&d, &uuid);
    assert_eq!(vm["exit_status"], 7, "{vm}");
    assert!(ok(&d.vmadm(&["logs", &uuid], None)).contains("hello from docker"));
    ok(&d.vmadm(&["delete", &uuid], None));
}

/// A crafted layer entry: (name, type, link target, data), written as given.
type Entry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A docker-archive (`docker save`'s layout) of one layer made of `entries` (raw tar headers:
/// names are written as given, `..` and all), with a config naming its diff_id.
fn hostile_archive(entries: &[Entry<'_>]) -> Vec<u8> {
    archive_of(entries, false)
}

/// The same, its layer gzip-compressed (`docker save` of a compressed layer) when `gzip`.
fn archive_of(entries: &[Entry<'_>], gzip: bool) -> Vec<u8> {
    use sha2::Digest as _;
    let mut layer = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        layer.append(&h, *data).expect("append");
    }
    let layer = layer.into_inner().expect("layer");
    let hex = |b: &[u8]| -> String {
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&layer))]}})
    .to_string();
    let config_name = format!("{}.json", hex(config.as_bytes()));
    let layer = match gzip {
        true => {
            use std::io::Write as _;
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(&layer).expect("gzip");
            z.finish().expect("gzip")
        }
        false => layer,
    };
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["hostile:1"],
        "Layers": ["layer.tar"]}])
    .to_string();
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", manifest.as_bytes()),
        (config_name.as_str(), config.as_bytes()),
        ("layer.tar", &layer[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(1_600_000_000);
        outer.append_data(&mut h, name, data).expect("append");
    }
    outer.into_inner().expect("archive")
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_hostile_layers_are_refused_and_leave_nothing() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let try_import = |bytes: &[u8], naming: &str| {
        let path = dir.path().join("hostile.tar");
        std::fs::write(&path, bytes).expect("write");
        let what = format!("docker-archive:{}", path.display());
        refused(&d.run("imgadm", &["import", "-q", &what], None), naming);
        assert!(images(&d).is_empty(), "{:?}", images(&d));
        let left: Vec<_> = std::fs::read_dir(d.data_root().join("images"))
            .expect("images dir")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    };
    let file = tar::EntryType::Regular;
    // A path climbing out of the root.
    try_import(&hostile_archive(&[(b"../evil", file, b"", b"x")]), "..");
    // A file written through a symlink to the host's root: the symlink may stand (it
    // resolves inside the zone), nothing may be written through it.
    try_import(
        &hostile_archive(&[
            (b"etc", tar::EntryType::Symlink, b"/etc", b""),
            (b"etc/passwd", file, b"", b"root::0:0::/:/bin/sh\n"),
        ]),
        "symlink",
    );
    // A device node.
    try_import(
        &hostile_archive(&[(b"dev/sda", tar::EntryType::Block, b"", b"")]),
        "block",
    );
    // A whiteout of nothing usable.
    try_import(
        &hostile_archive(&[(b"etc/.wh.", file, b"", b"")]),
        "whiteout",
    );
    // A manifest.json over 4 MiB.
    let mut big = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let huge = format!("[{{\"Config\": \"{}\"}}]", "x".repeat(5 << 20));
    h.set_size(huge.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(file);
    big.append_data(&mut h, "manifest.json", huge.as_bytes())
        .expect("append");
    try_import(&big.into_inner().expect("archive"), "4 MiB");
}

/// A decompression bomb: a 120 KiB gzip layer holding 96 MiB of zeros, against a vmmd that
/// lets an image unpack to 64 MiB (`--max-unpacked-mib`), is refused as it streams, naming
/// the limit, and leaves nothing; the same archive lands under the default limit.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_a_decompression_bomb_is_refused_by_its_unpacked_size() {
    let zeros = vec![0u8; 96 << 20];
    let bomb = archive_of(
        &[(b"zeros", tar::EntryType::Regular, b"", &zeros[..])],
        true,
    );
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bomb.tar");
    std::fs::write(&path, &bomb).expect("write");
    let what = format!("docker-archive:{}", path.display());
    let d = Daemon::start_with(&["--max-unpacked-mib", "64"]);
    refused(
        &d.run("imgadm", &["import", "-q", &what], None),
        &format!("unpacks to more than {} bytes", 64u64 << 20),
    );
    assert!(images(&d).is_empty(), "{:?}", images(&d));
    let left: Vec<_> = std::fs::read_dir(d.data_root().join("images"))
        .expect("images dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(d);
    let d = Daemon::start();
    ok(&d.run("imgadm", &["import", "-q", &what], None));
    assert_eq!(images(&d).len(), 1);
}
