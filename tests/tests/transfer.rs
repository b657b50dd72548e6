//! `vmadm send | vmadm receive` between two vmmd on two data roots (tier 2, root): a zone
//! with a delegated dataset between btrfs and an overlay data root both ways, refusals that
//! leave the receiver as it was, and streams cut or altered anywhere.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use hull_tests::Daemon;
use hull_tests::zone::{create, install, ok, refused, text};

/// `vmadm send UUID` on `from` piped into `vmadm receive` on `to`: (send's, receive's) output.
fn pipe(from: &Daemon, to: &Daemon, uuid: &str) -> (Output, Output) {
    let mut send = Command::new(hull_tests::bin("vmadm"))
        .args(["send", uuid])
        .env("HULL_SOCKET", from.socket())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmadm send");
    let stream = send.stdout.take().expect("send's stdout");
    let receive = Command::new(hull_tests::bin("vmadm"))
        .arg("receive")
        .env("HULL_SOCKET", to.socket())
        .stdin(Stdio::from(stream))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmadm receive");
    let r = receive.wait_with_output().expect("receive's output");
    let s = send.wait_with_output().expect("send's output");
    (s, r)
}

/// `vmadm send UUID [ARGS]` on `d` into memory.
fn send_to_memory(d: &Daemon, uuid: &str) -> Vec<u8> {
    send_args(d, &[uuid])
}

/// `vmadm send ARGS` on `d` into memory.
fn send_args(d: &Daemon, args: &[&str]) -> Vec<u8> {
    let o = Command::new(hull_tests::bin("vmadm"))
        .arg("send")
        .args(args)
        .env("HULL_SOCKET", d.socket())
        .stdin(Stdio::null())
        .output()
        .expect("vmadm send");
    assert!(o.status.success(), "{}", text(&o));
    o.stdout
}

/// `vmadm receive` on `d` of `bytes`.
fn receive_bytes(d: &Daemon, bytes: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(hull_tests::bin("vmadm"))
        .arg("receive")
        .env("HULL_SOCKET", d.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmadm receive");
    let mut stdin = child.stdin.take().expect("stdin");
    // The receiver may refuse early and stop reading: a broken pipe here is its answer.
    let _ = stdin.write_all(bytes);
    drop(stdin);
    child.wait_with_output().expect("receive's output")
}

fn state(d: &Daemon, uuid: &str) -> String {
    let vm = d.client().get_vm(uuid.parse().expect("uuid")).expect("get");
    vm.state.as_str().to_string()
}

/// What the receiver holds: its VMs and the entries of its guests directory.
fn holdings(d: &Daemon) -> (usize, Vec<String>) {
    let vms = d.client().list_vms(&[]).expect("list").len();
    let mut dirs: Vec<String> = std::fs::read_dir(d.data_root().join("guests"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    (vms, dirs)
}

/// Inside the zone: the files the test wrote and their hashes, and what it deleted.
const CHECK: &str = "cat /root/note; sha256sum /data/blob /root/blob /vol/blob | cut -d' ' -f1; \
                     ls -d /var/log /tmp 2>&1 | grep -c 'No such file'; ls /var; \
                     stat -c %u:%g /root/blob /data/blob /var/mine /vol/blob";

/// A zone's volume (a filesystem whose source is a uuid), sent with it.
fn with_volume(mut payload: serde_json::Value) -> serde_json::Value {
    payload["filesystems"] = serde_json::json!([
        {"type": "lofs", "source": "5b1d3a0e-2c4f-4e6a-8b9c-0d1e2f3a4b5c", "target": "/vol"}
    ]);
    payload
}

/// A zone with a delegated dataset goes from `a` to `b` and back, its files intact, what it
/// deleted from its image still deleted; the sender keeps it, stopped.
fn zone_round_trip(a: &Daemon, b: &Daemon) {
    install(a);
    install(b);
    let uuid = create(
        a,
        with_volume(serde_json::json!({"delegate_dataset": true, "quota": 2})),
    );
    ok(&a.zlogin(
        &uuid,
        "echo moved > /root/note && dd if=/dev/urandom of=/data/blob bs=64k count=40 2>/dev/null \
         && dd if=/dev/urandom of=/root/blob bs=64k count=24 2>/dev/null \
         && dd if=/dev/urandom of=/vol/blob bs=64k count=8 2>/dev/null \
         && rm -rf /var/log /tmp && echo mine > /var/mine \
         && chown 1234:4321 /root/blob && chown 77:0 /data/blob && chown 5:6 /vol/blob",
    ));
    let before = ok(&a.zlogin(&uuid, CHECK));
    let lines: Vec<&str> = before.lines().collect();
    assert_eq!(lines[0], "moved", "{before}");
    assert_eq!(lines[4], "2", "both deletions took: {before}");
    assert_eq!(
        lines[6..],
        ["1234:4321", "77:0", "0:0", "5:6"],
        "owners: {before}"
    );

    let (s, r) = pipe(a, b, &uuid);
    assert!(
        s.status.success() && r.status.success(),
        "send: {}\nreceive: {}\nsender log: {}\nreceiver log: {}",
        text(&s),
        text(&r),
        a.log(),
        b.log()
    );
    assert!(
        text(&r).contains(&format!("Successfully received VM {uuid}")),
        "{}",
        text(&r)
    );
    assert_eq!(
        state(a, &uuid),
        "stopped",
        "the sender keeps the VM, stopped"
    );
    assert_eq!(state(b, &uuid), "stopped", "received VMs arrive stopped");
    let got = b.client().get_vm(uuid.parse().expect("uuid")).expect("get");
    assert!(got.delegate_dataset && got.quota == 2, "{got:?}");
    // A snapshot taken before its first start here holds the zone's own ids, which that
    // start shifts with the root: rolled back to after it, the files are still the zone's.
    ok(&b.vmadm(&["create-snapshot", &uuid, "arrived"], None));
    ok(&b.vmadm(&["start", &uuid], None));
    assert_eq!(
        ok(&b.zlogin(&uuid, CHECK)),
        before,
        "the zone's files on the receiver"
    );
    ok(&b.vmadm(&["stop", &uuid], None));
    ok(&b.vmadm(&["rollback-snapshot", &uuid, "arrived"], None));
    ok(&b.vmadm(&["start", &uuid], None));
    assert_eq!(
        ok(&b.zlogin(&uuid, CHECK)),
        before,
        "after a rollback to the arrival"
    );
    ok(&b.zlogin(&uuid, "echo writable > /root/note2"));
    ok(&b.vmadm(&["stop", &uuid], None));
    ok(&b.vmadm(&["delete-snapshot", &uuid, "arrived"], None));

    // Back the other way, after the sender dropped its copy.
    ok(&a.vmadm(&["delete", &uuid], None));
    let (s, r) = pipe(b, a, &uuid);
    assert!(
        s.status.success() && r.status.success(),
        "{}\n{}",
        text(&s),
        text(&r)
    );
    ok(&a.vmadm(&["start", &uuid], None));
    assert_eq!(
        ok(&a.zlogin(&uuid, CHECK)),
        before,
        "the zone's files back home"
    );
    ok(&a.vmadm(&["stop", &uuid], None));

    // The receiver has the uuid now: refused, and nothing it has changes.
    let held = holdings(b);
    let (_, r) = pipe(a, b, &uuid);
    refused(&r, "already exists");
    assert_eq!(holdings(b), held);
    for d in [a, b] {
        ok(&d.vmadm(&["delete", &uuid], None));
    }
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_moves_between_btrfs_and_overlay_data_roots() {
    let fs = hull_tests::LoopFs::new("btrfs", 2 << 30);
    let a = Daemon::start_on(&fs.mountpoint);
    let b = Daemon::start();
    zone_round_trip(&a, &b);
    drop(a);
}

/// The same between btrfs and xfs (the reflink backend: a layered root on reflinks).
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_moves_between_btrfs_and_xfs_data_roots() {
    let btrfs = hull_tests::LoopFs::new("btrfs", 2 << 30);
    let xfs = hull_tests::LoopFs::new("xfs", 2 << 30);
    let a = Daemon::start_on(&btrfs.mountpoint);
    let b = Daemon::start_on(&xfs.mountpoint);
    zone_round_trip(&a, &b);
    drop((a, b));
}

/// A receiver without the zone's image, or without its nic tag, refuses the stream before
/// writing anything; a stream cut at 100 random offsets, or with a byte flipped, is refused
/// and leaves nothing behind.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_receive_refusals_and_cut_streams_leave_nothing() {
    let a = Daemon::start();
    install(&a);
    ok(&a.run("nictagadm", &["add", "-l", "sendtag"], None));
    let uuid = create(
        &a,
        with_volume(serde_json::json!({"delegate_dataset": true, "autoboot": false})),
    );
    let stream = send_to_memory(&a, &uuid);
    let tagged = create(
        &a,
        serde_json::json!({"autoboot": false,
            "nics": [{"nic_tag": "sendtag", "ip": "10.77.0.5", "netmask": "255.255.255.0"}]}),
    );
    let tagged_stream = send_to_memory(&a, &tagged);

    let b = Daemon::start();
    let empty = holdings(&b);
    let r = receive_bytes(&b, &stream);
    refused(&r, "is not installed");
    assert_eq!(holdings(&b), empty, "{}", b.log());
    install(&b);
    let empty = holdings(&b);
    let r = receive_bytes(&b, &tagged_stream);
    refused(&r, "sendtag");
    assert_eq!(holdings(&b), empty);

    // Cuts at 100 offsets (a fixed-seed generator: the same offsets every run), the ends of
    // the header and of the stream among them.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut offsets: Vec<usize> = vec![0, 8, 12, 40, stream.len() - 33, stream.len() - 1];
    while offsets.len() < 100 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        offsets.push((seed % stream.len() as u64) as usize);
    }
    for cut in offsets {
        let r = receive_bytes(&b, &stream[..cut]);
        assert!(!r.status.success(), "a stream cut at {cut} was received");
        let why = text(&r);
        assert!(
            why.contains("truncated")
                || why.contains("corrupt")
                || why.contains("hull send stream"),
            "cut at {cut}: {why}"
        );
        assert_eq!(holdings(&b), empty, "cut at {cut} left something: {why}");
    }
    for at in [
        9usize,
        200,
        stream.len() / 3,
        stream.len() / 2,
        stream.len() - 10,
    ] {
        let mut bad = stream.clone();
        bad[at] ^= 0x20;
        let r = receive_bytes(&b, &bad);
        assert!(!r.status.success(), "a flip at {at} was received");
        assert_eq!(
            holdings(&b),
            empty,
            "a flip at {at} left something: {}",
            text(&r)
        );
    }
    // The whole stream still lands.
    let r = receive_bytes(&b, &stream);
    assert!(r.status.success(), "{}\n{}", text(&r), b.log());
    assert_eq!(state(&b, &uuid), "stopped");
}

/// send refuses a snapshot the VM lacks; receive refuses bytes that are not a stream.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_send_and_receive_refuse_what_they_cannot_do() {
    let d = Daemon::start();
    install(&d);
    let uuid = create(&d, serde_json::json!({"autoboot": false}));
    let o = Command::new(hull_tests::bin("vmadm"))
        .args(["send", &uuid, "--since", "s1"])
        .env("HULL_SOCKET", d.socket())
        .output()
        .expect("vmadm send");
    refused(&o, "no snapshot \"s1\"");
    assert!(o.stdout.is_empty(), "nothing streamed");
    let r = receive_bytes(&d, b"#!/bin/sh\necho not a stream\n");
    refused(&r, "hull send stream");
    assert!(Path::new(&d.data_root().join("guests")).exists());
}

/// The sha256 of a file's bytes and how many bytes it has allocated.
fn disk_facts(path: &str) -> (String, u64) {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let bytes = std::fs::read(path).expect("disk");
    let blocks = std::fs::metadata(path).expect("disk").blocks() * 512;
    (format!("{:x}", sha2::Sha256::digest(&bytes)), blocks)
}

/// For the microVM tests: vmmd on a btrfs pool (returned, to drop after the daemons) and vmmd
/// on an overlay data root, both with the zvol `image`, and on the first a stopped microVM
/// of the test guest with two disks (its boot disk cloned from `image`).
fn two_pools_and_a_vm(image: &str) -> (hull_tests::LoopFs, Daemon, Daemon, hull_spec::Vm) {
    hull_tests::require_root_and_kvm();
    let fs = hull_tests::LoopFs::new("btrfs", 2 << 30);
    let a = Daemon::start_on(&fs.mountpoint);
    let b = Daemon::start();
    for d in [&a, &b] {
        d.install_image(image, "zvol");
    }
    let vm = hull_tests::two_disk_vm(&a, "kvm", image);
    (fs, a, b, vm)
}

/// Waits until the test guest of microVM `uuid` on `d` runs (its console says it waits).
fn guest_waits(d: &Daemon, uuid: uuid::Uuid) {
    let rt = d.client().runtime(uuid).expect("runtime");
    hull_tests::console_until(&rt.console, "testguest: waiting for ctrl-alt-del");
}

/// A running microVM with two disks (the boot disk, which the test guest writes, and a
/// sparse blank one) goes from btrfs to an overlay data root: stopped for the send, kept by
/// the sender; its disks arrive byte for byte and still sparse, and it boots there.
#[test]
#[ignore = "needs root and /dev/kvm: run with --run-ignored"]
fn kvm_root_microvm_with_two_disks_moves_between_data_roots() {
    use std::os::unix::fs::FileExt;
    let (_pool, a, b, vm) = two_pools_and_a_vm("5c0f1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f");
    let u = vm.uuid.to_string();
    let vdb = vm.disks[1].path.clone().expect("vdb");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&vdb)
        .and_then(|f| f.write_all_at(b"second disk, 5 MiB in", 5 << 20))
        .expect("write vdb");
    ok(&a.vmadm(&["start", &u], None));
    guest_waits(&a, vm.uuid);

    let (s, r) = pipe(&a, &b, &u);
    assert!(
        s.status.success() && r.status.success(),
        "send: {}\nreceive: {}\nlogs: {}\n{}",
        text(&s),
        text(&r),
        a.log(),
        b.log()
    );
    assert_eq!(state(&a, &u), "stopped", "send stopped the VM and kept it");
    let got = b.client().get_vm(vm.uuid).expect("received");
    assert_eq!(got.state.as_str(), "stopped");
    for (i, (from, to)) in vm.disks.iter().zip(&got.disks).enumerate() {
        let (from, to) = (
            from.path.clone().expect("path"),
            to.path.clone().expect("path"),
        );
        assert!(
            to.starts_with(&b.data_root().display().to_string()),
            "disk {i} lives under the receiver's data root: {to}"
        );
        let (want, _) = disk_facts(&from);
        let (have, allocated) = disk_facts(&to);
        assert_eq!(want, have, "disk {i} arrived byte for byte");
        if i == 1 {
            assert!(
                allocated < 1 << 20,
                "the blank disk arrived sparse: {allocated} bytes allocated"
            );
        }
    }
    ok(&b.vmadm(&["start", &u], None));
    guest_waits(&b, vm.uuid);
    ok(&b.vmadm(&["stop", "-F", &u], None));
    for d in [&a, &b] {
        ok(&d.vmadm(&["delete", &u], None));
    }
    drop(a);
}

/// Inside the zone after its second round of changes.
const CHECK2: &str = "cat /root/note; ls /root; sha256sum /data/blob /srv/new/file /vol/blob | cut -d' ' -f1; \
                      ls -d /var/log /etc/motd-gone 2>&1 | grep -c 'No such file'";

/// `vmadm send U --since SNAPSHOT`: a zone's changes since a snapshot its receiver's copy
/// matches, from btrfs to an overlay data root; streams cut short leave the copy as it was
/// (it takes the whole stream after); a copy that ran on the receiver, or that the receiver
/// lacks, refuses changes.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_changes_since_a_snapshot_move_alone() {
    let fs = hull_tests::LoopFs::new("btrfs", 2 << 30);
    let a = Daemon::start_on(&fs.mountpoint);
    let b = Daemon::start();
    install(&a);
    install(&b);
    let uuid = create(
        &a,
        with_volume(serde_json::json!({"delegate_dataset": true})),
    );
    ok(&a.zlogin(
        &uuid,
        "echo first > /root/note && dd if=/dev/urandom of=/root/blob bs=64k count=64 2>/dev/null \
         && echo x > /etc/motd-gone && dd if=/dev/urandom of=/data/blob bs=64k count=8 2>/dev/null \
         && dd if=/dev/urandom of=/vol/blob bs=64k count=4 2>/dev/null",
    ));
    ok(&a.vmadm(&["stop", &uuid], None));
    ok(&a.vmadm(&["create-snapshot", &uuid, "s1"], None));
    let full = send_to_memory(&a, &uuid);
    let r = receive_bytes(&b, &full);
    assert!(r.status.success(), "{}\n{}", text(&r), b.log());

    ok(&a.vmadm(&["start", &uuid], None));
    ok(&a.zlogin(
        &uuid,
        "echo second > /root/note && rm /root/blob /etc/motd-gone && rm -rf /var/log \
         && mkdir -p /srv/new && echo new > /srv/new/file \
         && dd if=/dev/urandom of=/data/blob bs=64k count=8 2>/dev/null \
         && dd if=/dev/urandom of=/vol/blob bs=64k count=4 2>/dev/null",
    ));
    let want = ok(&a.zlogin(&uuid, CHECK2));
    assert!(want.starts_with("second\n"), "{want}");
    ok(&a.vmadm(&["stop", &uuid], None));
    let changes = send_args(&a, &[&uuid, "--since", "s1"]);
    assert!(
        changes.len() * 4 < full.len(),
        "the changes ({} bytes) are a fraction of the whole ({} bytes)",
        changes.len(),
        full.len()
    );
    // Cut short: refused, the copy as it was (the whole stream applies after).
    for cut in [40, changes.len() / 3, changes.len() / 2, changes.len() - 1] {
        let r = receive_bytes(&b, &changes[..cut]);
        assert!(!r.status.success(), "a cut at {cut} was taken");
        assert_eq!(state(&b, &uuid), "stopped", "{}", text(&r));
    }
    let r = receive_bytes(&b, &changes);
    assert!(r.status.success(), "{}\n{}", text(&r), b.log());
    ok(&b.vmadm(&["start", &uuid], None));
    assert_eq!(
        ok(&b.zlogin(&uuid, CHECK2)),
        want,
        "the receiver's zone after the changes"
    );
    ok(&b.vmadm(&["stop", &uuid], None));
    // The copy has run here now: further changes are refused, naming why.
    let r = receive_bytes(&b, &changes);
    refused(&r, "has run on this host");
    // A host without the VM is told to take the whole VM first.
    let c = Daemon::start();
    install(&c);
    let r = receive_bytes(&c, &changes);
    refused(&r, "receive the whole VM first");
    assert_eq!(holdings(&c).0, 0);
    drop(a);
}

/// A microVM's disks' changes since a snapshot: only the blocks that differ travel; a cut
/// stream leaves the receiver's disks as they were.
#[test]
#[ignore = "needs root and /dev/kvm: run with --run-ignored"]
fn kvm_root_microvm_disk_changes_since_a_snapshot_move_alone() {
    use std::os::unix::fs::FileExt;
    let (_pool, a, b, vm) = two_pools_and_a_vm("6d1e2f3a-4b5c-4d6e-9f70-8192a3b4c5d6");
    let u = vm.uuid.to_string();
    let path = |d: &Daemon, i: usize| {
        d.client().get_vm(vm.uuid).expect("get").disks[i]
            .path
            .clone()
            .expect("path")
    };
    ok(&a.vmadm(&["create-snapshot", &u, "s1"], None));
    let r = receive_bytes(&b, &send_to_memory(&a, &u));
    assert!(r.status.success(), "{}", text(&r));

    std::fs::OpenOptions::new()
        .write(true)
        .open(path(&a, 1))
        .and_then(|f| f.write_all_at(b"changed since s1", 3 << 20))
        .expect("write vdb");
    ok(&a.vmadm(&["start", &u], None));
    guest_waits(&a, vm.uuid);
    ok(&a.vmadm(&["stop", "-F", &u], None));
    let changes = send_args(&a, &[&u, "--since", "s1"]);
    assert!(
        changes.len() < 4 << 20,
        "only changed blocks travel: {} bytes",
        changes.len()
    );
    let before: Vec<String> = (0..2).map(|i| disk_facts(&path(&b, i)).0).collect();
    for cut in [100, changes.len() / 2, changes.len() - 20] {
        let r = receive_bytes(&b, &changes[..cut]);
        assert!(!r.status.success(), "a cut at {cut} was taken");
        let now: Vec<String> = (0..2).map(|i| disk_facts(&path(&b, i)).0).collect();
        assert_eq!(
            now,
            before,
            "a cut at {cut} changed the disks: {}",
            text(&r)
        );
    }
    let r = receive_bytes(&b, &changes);
    assert!(r.status.success(), "{}\n{}", text(&r), b.log());
    for i in 0..2 {
        assert_eq!(
            disk_facts(&path(&b, i)).0,
            disk_facts(&path(&a, i)).0,
            "disk {i} after the changes"
        );
    }
    ok(&b.vmadm(&["start", &u], None));
    guest_waits(&b, vm.uuid);
    ok(&b.vmadm(&["stop", "-F", &u], None));
    drop(a);
}

/// An incremental receive cut by a crash (vmmd killed while the copy was half changed: its
/// receive snapshot still there) is rolled back when vmmd starts again; the snapshot name is
/// hull's own.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_an_interrupted_change_is_rolled_back_at_start() {
    let mut d = Daemon::start();
    install(&d);
    let uuid = create(&d, serde_json::json!({"autoboot": false}));
    let o = d.vmadm(&["create-snapshot", &uuid, "%receive"], None);
    refused(&o, "hull's own");
    d.kill9();
    let store = hull_cowstore::store::Store::open(hull_cowstore::store::StoreConfig {
        root: d.data_root(),
        backend: None,
        limits: hull_cowstore::archive::Limits::default(),
    })
    .expect("store");
    let guest: uuid::Uuid = uuid.parse().expect("uuid");
    store.begin_changes(guest, &[]).expect("begin");
    // Half the changes: a file written into the root's writable layer.
    let half = match store.root_source(guest).expect("root") {
        Some(hull_cowstore::backend::RootSource::Dir(dir)) => dir,
        Some(hull_cowstore::backend::RootSource::Overlay { upper, .. }) => upper,
        None => panic!("no root"),
    }
    .join("half-changed");
    std::fs::write(&half, "torn").expect("write");
    drop(store);
    d.spawn();
    assert!(
        !half.exists(),
        "the half-made change was rolled back\n{}",
        d.log()
    );
    assert!(
        !d.data_root()
            .join("guests")
            .join(&uuid)
            .join("snapshots/%receive")
            .exists(),
        "the receive snapshot is gone"
    );
    assert!(d.log().contains("rolled back a guest"), "{}", d.log());
    ok(&d.vmadm(&["start", &uuid], None));
}
