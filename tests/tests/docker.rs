//! Docker images (issue 19, tier 2, root): OCI archives that umoci and skopeo made
//! (tests/docker/build-images) imported with `imgadm import oci-archive:` and
//! `docker-archive:`, their layers stacked as images of type docker sharing their base, and
//! a docker zone running the image's command with its Env, WorkingDir and User, its output
//! kept for `vmadm logs` and its exit status in the record.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use hull_tests::Daemon;
use hull_tests::zone::{busybox, ok, refused, text};
use serde_json::Value;

/// The archives, built once per test process.
fn archives() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = top.join("target/images/docker-tests");
        // One build at a time (nextest runs each test in its own process), kept while whole.
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

/// What a zone's record says, once it stopped (at most 60 s).
fn wait_stopped(d: &Daemon, uuid: &str) -> Value {
    let t = std::time::Instant::now();
    loop {
        let vm: Value = serde_json::from_str(&ok(&d.vmadm(&["get", uuid], None))).expect("get");
        if vm["state"] == "stopped" {
            return vm;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "the docker zone still runs: {vm}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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
