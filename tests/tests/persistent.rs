//! Data that outlives a zone's root, as root (tier 2): the delegated dataset at /data, host
//! directories bound in (`filesystems`, lofs), the zone's volumes (`filesystems` from a
//! uuid), the /tmp tmpfs, and `vmadm reprovision`,
//! which makes the root anew and keeps the rest (SmartOS's).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hull_tests::Daemon;
use hull_tests::zone::{create, image_uuid, install, ok, refused};

/// A volume's name in a payload (SmartOS's: a uuid as the source of a filesystem).
const VOLUME: &str = "5b1d3a0e-2c4f-4e6a-8b9c-0d1e2f3a4b5c";

fn data_outlives_the_root(d: &Daemon) {
    install(d);
    let host = tempfile::tempdir().expect("host dirs");
    let (ro, rw) = (host.path().join("ro"), host.path().join("rw"));
    for dir in [&ro, &rw] {
        std::fs::create_dir(dir).expect("host dir");
    }
    std::fs::write(ro.join("hello"), "from the host\n").expect("host file");
    let s = |p: &Path| p.display().to_string();
    let uuid = create(
        d,
        serde_json::json!({
            "delegate_dataset": true,
            "tmpfs": 64,
            "filesystems": [
                {"type": "lofs", "source": s(&ro), "target": "/mnt/ro", "options": ["ro", "nodevice"]},
                {"type": "lofs", "source": s(&rw), "target": "/srv/rw"},
                {"type": "lofs", "source": VOLUME, "target": "/hello", "options": []}
            ]
        }),
    );
    let rec: serde_json::Value =
        serde_json::from_str(&ok(&d.vmadm(&["get", &uuid], None))).expect("record");
    assert_eq!(rec["delegate_dataset"], true, "{rec}");
    assert_eq!(rec["tmpfs"], 64, "{rec}");
    assert_eq!(rec["filesystems"][0]["options"][0], "ro", "{rec}");
    // A uuid source is a volume of the zone's own, made by the create; the record names it
    // by its path, as SmartOS's names zones/<uuid>/volumes/<source>.
    let volume = d
        .data_root()
        .join("guests")
        .join(&uuid)
        .join("volumes")
        .join(VOLUME);
    assert_eq!(rec["filesystems"][2]["source"], s(&volume), "{rec}");
    let out = ok(&d.zlogin(
        &uuid,
        "stat -c %u /hello && echo vol > /hello/file && stat -c %u /hello/file",
    ));
    assert_eq!(out, "0\n0\n", "the volume is the zone root's");
    assert_eq!(
        std::fs::read_to_string(volume.join("file")).expect("volume file"),
        "vol\n"
    );

    let inside = "echo kept > /data/file && echo gone > /root-file && stat -c %u /data; \
                  cat /mnt/ro/hello; if touch /mnt/ro/x 2>/dev/null; then echo RO-WRITABLE; fi; \
                  echo zone > /srv/rw/from-zone && stat -c %u /srv/rw/from-zone; \
                  grep ' /tmp ' /proc/mounts | grep -o 'tmpfs /tmp tmpfs [a-z,]*nosuid,nodev[^ ]*size=65536k'";
    let out = ok(&d.zlogin(&uuid, inside));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(
        lines[0], "0",
        "the delegated dataset is the zone root's: {out}"
    );
    assert_eq!(lines[1], "from the host", "{out}");
    assert_eq!(
        lines[2], "0",
        "a write through the rw bind is the zone root's: {out}"
    );
    assert!(lines[3].starts_with("tmpfs /tmp tmpfs"), "{out}");
    assert!(
        !out.contains("RO-WRITABLE"),
        "the ro bind took a write: {out}"
    );
    // On the host: the zone's write through the id-mapped bind is host root's (the zone's
    // root is host root there), and the data sits in the guest's dataset.
    let written = rw.join("from-zone");
    assert_eq!(
        std::fs::read_to_string(&written).expect("from-zone"),
        "zone\n"
    );
    assert_eq!(std::fs::metadata(&written).expect("meta").uid(), 0);
    let data = d.data_root().join("guests").join(&uuid).join("data");
    assert_eq!(
        std::fs::read_to_string(data.join("file")).expect("data"),
        "kept\n"
    );
    let entries = std::fs::read_dir(&data).expect("data dir").count();
    assert_eq!(entries, 1, "only the zone's file is in its dataset");

    // reprovision: refused while indestructible_zoneroot, then the root is new and /data kept.
    let payload = serde_json::json!({"image_uuid": image_uuid()}).to_string();
    ok(&d.vmadm(&["update", &uuid, "indestructible_zoneroot=true"], None));
    refused(
        &d.vmadm(&["reprovision", &uuid], Some(&payload)),
        "indestructible_zoneroot",
    );
    ok(&d.vmadm(&["update", &uuid, "indestructible_zoneroot=false"], None));
    refused(
        &d.vmadm(&["reprovision", &uuid], Some("{}")),
        "missing image_uuid",
    );
    ok(&d.vmadm(&["reprovision", &uuid], Some(&payload)));
    let rec: serde_json::Value =
        serde_json::from_str(&ok(&d.vmadm(&["get", &uuid], None))).expect("record");
    assert_eq!(
        rec["state"], "running",
        "reprovision starts the zone: {rec}"
    );
    let out = ok(&d.zlogin(
        &uuid,
        "cat /data/file; if [ -e /root-file ]; then echo ROOT-KEPT; fi; cat /mnt/ro/hello \
         /hello/file",
    ));
    assert_eq!(out, "kept\nfrom the host\nvol\n", "after reprovision");

    // indestructible_delegated guards the dataset as SmartOS's does.
    ok(&d.vmadm(&["update", &uuid, "indestructible_delegated=true"], None));
    refused(
        &d.vmadm(&["delete", &uuid], None),
        "indestructible_delegated",
    );
    ok(&d.vmadm(&["update", &uuid, "indestructible_delegated=false"], None));
    ok(&d.vmadm(&["delete", &uuid], None));
    assert!(!data.exists(), "the dataset went with the guest");
    assert!(!volume.exists(), "the volume went with the guest");
    assert_eq!(
        std::fs::read_to_string(&written).expect("host file"),
        "zone\n",
        "a host directory outlives the zone"
    );
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_data_outlives_its_root() {
    data_outlives_the_root(&Daemon::start());
}

/// The same on btrfs, where the dataset is a subvolume of its own beside the root's.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_data_outlives_its_root_on_btrfs() {
    let fs = hull_tests::LoopFs::new("btrfs", 1 << 30);
    let d = Daemon::start_on(&fs.mountpoint);
    data_outlives_the_root(&d);
    drop(d);
}

/// Bad binds are refused before anything is made: a type hull does not bind, a target over
/// what the runtime mounts, a host directory that does not exist (at the first start, which
/// the create then undoes).
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_filesystems_refusals_leave_nothing() {
    let d = Daemon::start();
    install(&d);
    let payload = |fs: serde_json::Value| {
        serde_json::json!({"brand": "joyent-minimal", "image_uuid": image_uuid(),
            "filesystems": [fs]})
        .to_string()
    };
    let o = d.vmadm(
        &["create"],
        Some(&payload(
            serde_json::json!({"type": "ufs", "source": "/tmp", "target": "/x"}),
        )),
    );
    refused(&o, "filesystems.0.type");
    let o = d.vmadm(
        &["create"],
        Some(&payload(
            serde_json::json!({"type": "lofs", "source": "/tmp", "target": "/proc/x"}),
        )),
    );
    refused(&o, "filesystems.0.target");
    let o = d.vmadm(
        &["create"],
        Some(&payload(
            serde_json::json!({"type": "lofs", "source": "/nonexistent/hull", "target": "/x"}),
        )),
    );
    refused(&o, "/nonexistent/hull");
    let list = ok(&d.vmadm(&["list", "-p", "-o", "uuid"], None));
    assert_eq!(list.trim(), "", "no guest is left: {list}");
    let guests = std::fs::read_dir(d.data_root().join("guests"))
        .expect("guests")
        .count();
    assert_eq!(guests, 0, "no storage is left");
}
