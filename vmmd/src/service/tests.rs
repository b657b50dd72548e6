//! The service's rollback paths, driven against the recording fakes of its seams: what each
//! failed step undoes, in which order, and that the record, the store and the event stream
//! show nothing of the failed operation. Unprivileged: everything lives in a tempdir.

use std::path::Path;
use std::sync::Arc;

use hull_cowstore::backend::BackendKind;
use hull_cowstore::store::{Store as CowStore, StoreConfig};
use hull_spec::{NicTag, VmState};
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

use super::fake::{self, INIT_PID, Journal};
use super::{Service, ServiceError, SnapshotVerb};

struct Host {
    tmp: TempDir,
    svc: Service,
    journal: Arc<Journal>,
    image: Uuid,
}

/// A service on a tempdir with fake seams, one nic tag ("admin") and one zone image.
async fn host() -> Host {
    let tmp = TempDir::new().expect("tempdir");
    let root = tmp.path();
    let image = Uuid::new_v4();
    let dir = root.join("images").join(image.to_string());
    std::fs::create_dir_all(&dir).expect("image dir");
    let manifest = json!({"v": 2, "uuid": image, "name": "base", "version": "1",
        "type": "zone-dataset", "os": "linux"});
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).expect("manifest");
    let cow = CowStore::open(StoreConfig {
        root: root.to_path_buf(),
        backend: Some(BackendKind::Overlay),
        limits: Default::default(),
    })
    .expect("image store");
    let (seams, journal) = fake::seams(root);
    let (svc, _) = Service::with_seams(root, Arc::new(cow), seams).expect("service");
    svc.add_nictag(NicTag {
        name: "admin".into(),
        uplink: None,
    })
    .await
    .expect("nic tag");
    Host {
        tmp,
        svc,
        journal,
        image,
    }
}

impl Host {
    /// A zone payload; each guest of the host gets its own address (10.9.1.N).
    fn zone(&self, uuid: Uuid) -> Value {
        let ip = format!("10.9.1.{}", 10 + self.svc.list(&[]).len());
        json!({
            "uuid": uuid, "brand": "joyent", "image_uuid": self.image, "autoboot": false,
            "max_physical_memory": 256,
            "nics": [{"nic_tag": "admin", "ip": ip, "netmask": "255.255.255.0"}],
        })
    }

    /// A stopped zone with one NIC; the journal starts empty after it.
    async fn stopped_zone(&self) -> Uuid {
        let uuid = Uuid::new_v4();
        self.svc.create(&self.zone(uuid)).await.expect("create");
        self.journal.take();
        uuid
    }

    /// A running zone with one NIC; the journal starts empty after it.
    async fn running_zone(&self) -> Uuid {
        let uuid = self.stopped_zone().await;
        self.svc.start(uuid).await.expect("start");
        self.journal.take();
        uuid
    }

    fn record_path(&self, uuid: Uuid) -> std::path::PathBuf {
        self.tmp.path().join("vms").join(format!("{uuid}.json"))
    }

    /// Makes the next write of `uuid`'s record fail: a non-empty directory holds its name.
    fn block_record(&self, uuid: Uuid) {
        let path = self.record_path(uuid);
        let _ = std::fs::remove_file(&path);
        std::fs::create_dir_all(path.join("blocker")).expect("block the record");
    }

    fn stored(&self, uuid: Uuid) -> Option<hull_spec::Vm> {
        let bytes = std::fs::read(self.record_path(uuid)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn calls(journal: &Journal) -> Vec<String> {
    journal.take()
}

fn no_event(rx: &mut tokio::sync::broadcast::Receiver<Arc<hull_spec::Event>>) {
    assert!(
        matches!(
            rx.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "a failed operation emitted an event"
    );
}

fn no_records(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("vms"))
        .expect("vms")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect()
}

#[tokio::test]
async fn create_whose_provisioning_fails_leaves_no_guest() {
    let h = host().await;
    let uuid = Uuid::new_v4();
    let mut events = h.svc.subscribe();
    h.journal.fail("storage.provision");
    let err = h.svc.create(&h.zone(uuid)).await.expect_err("must fail");
    assert!(matches!(err, ServiceError::Storage(_)), "{err:?}");
    assert_eq!(calls(&h.journal), [format!("storage.provision {uuid}")]);
    assert!(h.svc.list(&[]).is_empty());
    assert!(matches!(h.svc.get(uuid), Err(ServiceError::NotFound(_))));
    assert_eq!(no_records(h.tmp.path()), Vec::<String>::new());
    no_event(&mut events);
    // The uuid, MAC and IP are free again: the same payload goes through.
    h.journal.heal("storage.provision");
    h.svc.create(&h.zone(uuid)).await.expect("create again");
}

#[tokio::test]
async fn create_whose_record_cannot_be_written_removes_its_storage() {
    let h = host().await;
    let uuid = Uuid::new_v4();
    let mut events = h.svc.subscribe();
    h.block_record(uuid);
    let err = h.svc.create(&h.zone(uuid)).await.expect_err("must fail");
    assert!(matches!(err, ServiceError::Store(_)), "{err:?}");
    assert_eq!(
        calls(&h.journal),
        [
            format!("storage.provision {uuid}"),
            format!("storage.destroy_guest {uuid}"),
        ]
    );
    assert!(h.svc.list(&[]).is_empty());
    no_event(&mut events);
}

#[tokio::test]
async fn start_whose_zone_fails_removes_its_ports_and_stays_stopped() {
    let h = host().await;
    let uuid = h.stopped_zone().await;
    h.journal.fail("zones.start");
    let err = h.svc.start(uuid).await.expect_err("must fail");
    assert_eq!(err.to_string(), format!("cannot start zone {uuid}"));
    let text = hull_sys::chain(&err);
    assert!(text.contains("zones.start failed"), "{text}");
    assert_eq!(
        calls(&h.journal),
        [
            format!("storage.root_source {uuid}"),
            format!("zones.start {uuid}"),
            format!("switch.remove_ports {uuid}"),
            format!("zones.clean_up {uuid}"),
        ]
    );
    assert_eq!(h.svc.get(uuid).expect("record").state, VmState::Stopped);
    assert_eq!(h.stored(uuid).expect("stored").state, VmState::Stopped);
}

#[tokio::test]
async fn start_whose_plumbing_fails_never_runs_the_zone() {
    let h = host().await;
    let uuid = h.stopped_zone().await;
    let mut events = h.svc.subscribe();
    h.journal.fail("switch.plumb_zone");
    let err = h.svc.start(uuid).await.expect_err("must fail");
    let text = hull_sys::chain(&err);
    assert!(
        text.contains("cannot plumb its nics") && text.contains("switch.plumb_zone"),
        "{text}"
    );
    // The zone's init was held while its NICs were plumbed: no stop request, only the
    // clean-up of what the failed start left.
    assert_eq!(
        calls(&h.journal),
        [
            format!("storage.root_source {uuid}"),
            format!("zones.start {uuid}"),
            format!("switch.plumb_zone {uuid} {INIT_PID} 1"),
            format!("switch.remove_ports {uuid}"),
            format!("zones.clean_up {uuid}"),
        ]
    );
    assert_eq!(h.svc.get(uuid).expect("record").state, VmState::Stopped);
    assert!(
        !h.tmp
            .path()
            .join("zones")
            .join(uuid.to_string())
            .join("nics.json")
            .exists(),
        "a guest that did not start has no plumbed NICs noted"
    );
    no_event(&mut events);
}

#[tokio::test]
async fn a_failed_start_replies_with_what_failed_and_its_cause_chain() {
    let h = host().await;
    let uuid = h.stopped_zone().await;
    h.journal.fail("switch.plumb_zone");
    let err = h.svc.start(uuid).await.expect_err("must fail");
    let reply = crate::api::error::ApiError::from(err);
    assert_eq!(reply.status, hyper::StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body.code, hull_spec::api::codes::INTERNAL);
    assert_eq!(reply.body.message, format!("cannot start zone {uuid}"));
    // Outermost first: the start's step, the switch's operation, the kernel's (here the
    // fake's) error; no text repeats the one before it.
    assert_eq!(
        reply.body.causes,
        [
            "cannot plumb its nics",
            "cannot switch.plumb_zone",
            "switch.plumb_zone failed (injected)",
        ]
    );
}

#[tokio::test]
async fn update_whose_nic_plumbing_fails_changes_nothing() {
    let h = host().await;
    let uuid = h.running_zone().await;
    let before = h.svc.get(uuid).expect("record");
    let mut events = h.svc.subscribe();
    h.journal.fail("switch.update_zone");
    let add = json!({"add_nics": [{"nic_tag": "admin", "ip": "10.9.0.6",
        "netmask": "255.255.255.0"}]});
    let err = h.svc.update(uuid, &add).await.expect_err("must fail");
    let text = hull_sys::chain(&err);
    assert!(text.contains("cannot change its NICs"), "{text}");
    // The change, then its undo (best effort, on the same failing switch); the disks the
    // update made (none) go.
    assert_eq!(
        calls(&h.journal),
        [
            format!("switch.update_zone {INIT_PID}"),
            format!("switch.update_zone {INIT_PID}"),
            format!("storage.remove_disks {uuid} 0"),
        ]
    );
    let after = h.svc.get(uuid).expect("record");
    assert_eq!(after.json, before.json, "the record changed");
    assert_eq!(h.stored(uuid).expect("stored").nics, before.nics);
    // What vmmd guards at its next start is still the record's one NIC.
    let plumbed = h
        .tmp
        .path()
        .join("zones")
        .join(uuid.to_string())
        .join("nics.json");
    let noted: Vec<hull_spec::vm::NicSpec> =
        serde_json::from_slice(&std::fs::read(plumbed).expect("noted")).expect("nics");
    assert_eq!(noted, before.nics);
    no_event(&mut events);
    // The IP it tried to take is still free.
    h.journal.heal("switch.update_zone");
    let other = h.running_zone().await;
    let mut payload = add.clone();
    payload["add_nics"][0]["ip"] = json!("10.9.0.6");
    h.svc
        .update(other, &payload)
        .await
        .expect("the address is free");
}

#[tokio::test]
async fn update_whose_record_cannot_be_written_undoes_nics_and_limits() {
    let h = host().await;
    let uuid = h.running_zone().await;
    let before = h.svc.get(uuid).expect("record");
    let mut events = h.svc.subscribe();
    h.block_record(uuid);
    let change = json!({"max_physical_memory": 512, "add_nics": [{"nic_tag": "admin",
        "ip": "10.9.0.7", "netmask": "255.255.255.0"}]});
    let err = h.svc.update(uuid, &change).await.expect_err("must fail");
    assert!(matches!(err, ServiceError::Store(_)), "{err:?}");
    let calls = calls(&h.journal);
    let limits = |mib: u64| {
        calls.iter().position(|c| {
            c.starts_with(&format!("zones.request {uuid} {{\"cmd\":\"update\""))
                && c.contains(&format!("\"memory_bytes\":{}", mib << 20))
        })
    };
    let nics = |n: usize| {
        calls
            .iter()
            .enumerate()
            .filter(|(_, c)| *c == &format!("switch.update_zone {INIT_PID}"))
            .nth(n)
            .map(|(i, _)| i)
    };
    let (nics_on, limits_on) = (nics(0).expect("NICs applied"), limits(512).expect("limits"));
    let (nics_off, limits_off) = (nics(1).expect("NICs undone"), limits(256).expect("undone"));
    assert!(nics_on < limits_on, "{calls:#?}");
    assert!(limits_on < nics_off && limits_on < limits_off, "{calls:#?}");
    assert!(
        calls.contains(&format!("storage.remove_disks {uuid} 0")),
        "{calls:#?}"
    );
    assert_eq!(h.svc.get(uuid).expect("record").json, before.json);
    no_event(&mut events);
}

#[tokio::test]
async fn snapshot_whose_record_cannot_be_written_is_deleted_again() {
    let h = host().await;
    let uuid = h.stopped_zone().await;
    h.block_record(uuid);
    let err = h
        .svc
        .snapshot(uuid, "before", SnapshotVerb::Create)
        .await
        .expect_err("must fail");
    assert!(matches!(err, ServiceError::Store(_)), "{err:?}");
    assert_eq!(
        calls(&h.journal),
        [
            format!("storage.snapshot {uuid} before"),
            format!("storage.delete_snapshot {uuid} before"),
        ]
    );
    assert!(h.svc.get(uuid).expect("record").snapshots.is_empty());
}

#[tokio::test]
async fn delete_of_a_running_guest_stops_it_then_removes_everything() {
    let h = host().await;
    let uuid = h.running_zone().await;
    h.svc.delete(uuid).await.expect("delete");
    assert_eq!(
        calls(&h.journal),
        [
            format!("zones.request {uuid} {{\"cmd\":\"stop\",\"timeout_s\":60,\"force\":true}}"),
            format!("zones.wait_stopped {uuid}"),
            format!("zones.clean_up {uuid}"),
            format!("switch.remove_ports {uuid}"),
            format!("storage.destroy_guest {uuid}"),
            format!("zones.forget {uuid}"),
        ]
    );
    assert!(h.stored(uuid).is_none());
    assert!(matches!(h.svc.get(uuid), Err(ServiceError::NotFound(_))));
}

#[tokio::test]
async fn a_microvm_whose_disk_names_nothing_bootable_records_why_and_never_starts() {
    let h = host().await;
    let uuid = Uuid::new_v4();
    h.svc
        .create(
            &json!({"uuid": uuid, "brand": "kvm", "ram": 128, "autoboot": false,
            "disks": [{"size": 64, "boot": true}]}),
        )
        .await
        .expect("create");
    h.journal.take();
    let err = h.svc.start(uuid).await.expect_err("must fail");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("VM {uuid} cannot boot from its disk: ")),
        "{text}"
    );
    assert!(text.contains("reads no boot disk"), "{text}");
    let calls = calls(&h.journal);
    assert_eq!(
        calls,
        [format!("zones.find_boot {uuid}")],
        "no zone started"
    );
    let stored = h.stored(uuid).expect("stored");
    assert_eq!(stored.state, VmState::Stopped);
    let failure = stored.failure.expect("the record says why");
    assert!(
        failure.starts_with("cannot boot from its disk: "),
        "{failure}"
    );
    assert_eq!(h.svc.get(uuid).expect("record").failure, Some(failure));
}

#[tokio::test]
async fn a_multicast_mac_kept_from_create_refuses_the_start_naming_it_and_touches_nothing() {
    let h = host().await;
    let uuid = Uuid::new_v4();
    let mut payload = h.zone(uuid);
    payload["nics"][0]["mac"] = json!("01:02:03:04:05:06");
    let vm = h
        .svc
        .create(&payload)
        .await
        .expect("create with autoboot false");
    let warned: Vec<String> = vm.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warned
            .iter()
            .any(|w| w.contains("nics.0.mac 01:02:03:04:05:06") && w.contains("cannot start")),
        "{warned:?}"
    );
    h.journal.take();
    let err = h.svc.start(uuid).await.expect_err("must fail");
    let text = hull_sys::chain(&err);
    assert!(
        text.contains("nics.0.mac 01:02:03:04:05:06 is a multicast address"),
        "{text}"
    );
    assert!(
        calls(&h.journal).is_empty(),
        "nothing made for a start refused"
    );
    assert_eq!(h.svc.get(uuid).expect("record").state, VmState::Stopped);
}
