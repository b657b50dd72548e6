//! Zones that run an OCI runtime bundle (`oci_bundle`, issue 20's ground floor), as root
//! (tier 2): a bundle umoci (software hull did not write) unpacks from the busybox tree,
//! its config.json edited as containerd's default spec differs from umoci's, run as a zone;
//! and the bundles a zone cannot honour refused naming the field, leaving nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hull_tests::Daemon;
use hull_tests::zone::{busybox, ok, refused, text, wait_stopped};
use serde_json::{Value, json};

/// `umoci unpack` of an empty image into `dir/bundle`, the busybox tree put in its rootfs:
/// the bundle's path.
fn umoci_bundle(dir: &Path) -> PathBuf {
    let run = |args: &[&str]| {
        let o = Command::new("umoci")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("umoci (scripts/packages.txt)");
        assert!(o.status.success(), "umoci {args:?}: {}", text(&o));
    };
    run(&["init", "--layout", "oci"]);
    run(&["new", "--image", "oci:b"]);
    run(&["unpack", "--image", "oci:b", "bundle"]);
    let bundle = dir.join("bundle");
    let o = Command::new("tar")
        .arg("-xzf")
        .arg(&busybox().1)
        .arg("-C")
        .arg(bundle.join("rootfs"))
        .output()
        .expect("tar");
    assert!(o.status.success(), "{}", text(&o));
    bundle
}

fn config(bundle: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("config.json"))
        .expect("config.json")
}

fn write_config(bundle: &Path, c: &Value) {
    std::fs::write(bundle.join("config.json"), c.to_string()).expect("config.json");
}

/// What the process reports: its ids, groups, open-file limit, capabilities, whether /run
/// and /dev/mqueue are mounted, the bundle's two masked paths (a file and a directory hull
/// leaves visible otherwise), its hostname and its delegated dataset; and it writes a file
/// into its root.
const PROBE: &str = "echo hello from $GREETING in $(pwd); id -u; id -G; ulimit -n; \
                     grep CapEff /proc/self/status; grep -c ' /run tmpfs ' /proc/mounts; \
                     grep -c ' /dev/mqueue mqueue ' /proc/mounts; wc -c < /proc/cpuinfo; \
                     ls /sys/devices | wc -l; hostname; ls -d /data; cat /etc/hosts; \
                     echo x 2>/dev/null >> /etc/hosts || echo hosts-ro; echo s > /srv/shared/f; \
                     echo written > /written-by-zone; exit 5";

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_an_oci_bundle_runs_as_a_zone() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = umoci_bundle(dir.path());
    let mut c = config(&bundle);
    // umoci's spec, made containerd's: no cgroup fs at /sys/fs/cgroup (a zone's /sys is its
    // runtime's), a /run tmpfs, pipes rather than a terminal, ctr's env and groups.
    let mounts = c["mounts"].as_array_mut().expect("mounts");
    mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
    mounts.push(
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    );
    // Binds of what the bundle holds: a file read-only (CRI's /etc/hosts), a directory
    // writable.
    std::fs::write(bundle.join("hosts"), "10.0.0.9 bundled-host\n").expect("hosts");
    std::fs::create_dir(bundle.join("shared")).expect("shared");
    mounts.push(
        json!({"destination": "/etc/hosts", "type": "bind", "source": "hosts",
        "options": ["rbind", "ro"]}),
    );
    mounts.push(json!({"destination": "/srv/shared", "type": "bind",
        "source": bundle.join("shared").display().to_string(), "options": ["rbind", "rw"]}));
    c["process"]["terminal"] = json!(false);
    c["process"]["args"] = json!(["/bin/sh", "-c", PROBE]);
    c["process"]["env"] = json!(["PATH=/bin:/usr/bin", "GREETING=a-bundle"]);
    c["process"]["cwd"] = json!("/tmp");
    c["process"]["user"]["additionalGids"] = json!([10, 20]);
    c["process"]["capabilities"]
        .as_object_mut()
        .expect("caps")
        .remove("ambient");
    c["hostname"] = json!("bundled");
    c["linux"]["maskedPaths"]
        .as_array_mut()
        .expect("maskedPaths")
        .extend([json!("/proc/cpuinfo"), json!("/sys/devices")]);
    c["linux"]["resources"]["memory"] = json!({"limit": 200 << 20});
    write_config(&bundle, &c);

    let payload = json!({"brand": "lx", "kernel_version": "4.3.0", "alias": "b1",
        "oci_bundle": bundle.display().to_string(), "delegate_dataset": true});
    ok(&d.vmadm(&["create"], Some(&payload.to_string())));
    let uuid = ok(&d.run("vmadm", &["lookup", "-1", "alias=b1"], None))
        .trim()
        .to_string();
    let vm = wait_stopped(&d, &uuid);
    assert_eq!(vm["exit_status"], 5, "{vm}");
    assert_eq!(vm["oci_bundle"], bundle.display().to_string(), "{vm}");
    assert_eq!(vm["docker"], true, "{vm}");
    assert_eq!(
        vm["max_physical_memory"], 200,
        "the bundle's memory limit: {vm}"
    );
    assert!(vm.get("image_uuid").is_none(), "{vm}");
    let logs = ok(&d.vmadm(&["logs", &uuid], None));
    let lines: Vec<&str> = logs.lines().collect();
    // CAP_KILL (5), CAP_NET_BIND_SERVICE (10) and CAP_AUDIT_WRITE (29): umoci's three.
    assert_eq!(
        lines,
        [
            "hello from a-bundle in /tmp",
            "0",
            "0 10 20",
            "1024",
            "CapEff:\t0000000020000420",
            "1",
            "1",
            "0",
            "0",
            "bundled",
            "/data",
            "10.0.0.9 bundled-host",
            "hosts-ro",
        ],
        "{logs}"
    );
    // What the zone's root wrote is in the bundle's rootfs, the host root's (id-mapped).
    let written = bundle.join("rootfs/written-by-zone");
    assert_eq!(
        std::fs::read_to_string(&written).expect("written"),
        "written\n"
    );
    assert_eq!(std::fs::metadata(&written).expect("meta").uid(), 0);
    assert_eq!(
        std::fs::read_to_string(bundle.join("shared/f")).expect("shared"),
        "s\n"
    );
    // It starts again from the bundle, and its root is not the image store's.
    ok(&d.vmadm(&["start", &uuid], None));
    assert_eq!(wait_stopped(&d, &uuid)["exit_status"], 5);
    refused(
        &d.vmadm(&["create-snapshot", &uuid, "s1"], None),
        "OCI bundle",
    );
    ok(&d.vmadm(&["delete", &uuid], None));
    assert!(
        bundle.join("rootfs/bin/busybox").exists() && written.exists(),
        "the delete left the bundle alone"
    );

    // What a zone cannot honour: refused at create naming the field, nothing made.
    let cases: &[(&str, Value, &str)] = &[
        (
            "/process/capabilities",
            json!({"bounding": ["CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"],
                "permitted": ["CAP_SYS_ADMIN"]}),
            "CAP_SYS_ADMIN",
        ),
        ("/process/user/uid", json!(70000), "process.user.uid"),
        (
            "/linux/devices",
            json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]),
            "device node /dev/sda is not supported",
        ),
        (
            "/mounts/0",
            json!({"destination": "/host-etc", "type": "bind", "source": "/etc",
                "options": ["rbind", "rw"]}),
            "a bundle binds only what it holds",
        ),
        (
            "/mounts/0",
            json!({"destination": "/up", "type": "bind", "source": "shared/../..",
                "options": ["rbind"]}),
            "a bundle binds only what it holds",
        ),
        ("/process/bogus", json!(1), "process.bogus"),
        ("/root/path", json!("no-such-root"), "no-such-root"),
        ("/root/path", json!("/etc"), "lies outside the bundle"),
        (
            "/root/path",
            json!("rootfs/../.."),
            "lies outside the bundle",
        ),
    ];
    for (pointer, value, naming) in cases {
        let mut bad = c.clone();
        let (parent, last) = pointer.rsplit_once('/').expect("pointer");
        match bad.pointer_mut(parent).expect(pointer) {
            Value::Object(o) => {
                o.insert(last.to_string(), value.clone());
            }
            Value::Array(a) => a[last.parse::<usize>().expect("index")] = value.clone(),
            other => panic!("{pointer}: {other}"),
        }
        write_config(&bundle, &bad);
        refused(&d.vmadm(&["create"], Some(&payload.to_string())), naming);
        assert_eq!(
            ok(&d.vmadm(&["list", "-H", "-o", "uuid"], None)),
            "",
            "{pointer} left a guest"
        );
    }
    // Both an image and a bundle: one root too many.
    let both = json!({"brand": "lx", "kernel_version": "4.3.0", "oci_bundle": "/x",
        "image_uuid": hull_tests::zone::image_uuid()});
    refused(
        &d.vmadm(&["validate", "create"], Some(&both.to_string())),
        "give one",
    );
}
