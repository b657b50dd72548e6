//! Acceptance 4: 200 concurrent clients mixing create/get/list/update/delete against one
//! vmmd get only the expected errors, and afterwards every record agrees with the
//! operations that succeeded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hull_client::ClientError;
use hull_tests::Daemon;
use serde_json::json;

/// What a client expects of one guest after its operations.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Present { alias: String, cpu_cap: u64 },
    Absent,
}

fn expected_error(e: &ClientError, allowed: &[&str]) -> bool {
    e.api_body()
        .is_some_and(|b| allowed.contains(&b.code.as_str()))
}

#[test]
fn two_hundred_concurrent_clients_stay_consistent() {
    let d = Daemon::start();
    assert!(
        d.run("nictagadm", &["add", "-l", "admin"], None)
            .status
            .success()
    );
    let socket = d.socket();
    let expect: Arc<Mutex<BTreeMap<String, Expect>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let threads: Vec<_> = (0..200u32)
        .map(|i| {
            let socket = socket.clone();
            let expect = expect.clone();
            let unexpected = unexpected.clone();
            std::thread::spawn(move || {
                let c = hull_client::Client::new(&socket).expect("client");
                let fail = |what: String| unexpected.lock().expect("lock").push(what);
                // Everyone creates one guest; half give the same IP on purpose, so exactly
                // one of each colliding pair may win and the loser must get InvalidPayload.
                let ip = format!("192.0.2.{}/24", 1 + (i % 100));
                let payload = json!({"brand": if i % 2 == 0 { "kvm" } else { "bhyve" },
                    "alias": format!("g{i}"), "autoboot": false,
                    "nics": [{"nic_tag": "admin", "ips": [ip]}]});
                let uuid = match c.create_vm(&payload) {
                    Ok(vm) => vm.uuid.to_string(),
                    Err(e) if expected_error(&e, &["InvalidPayload"]) => return,
                    Err(e) => return fail(format!("create g{i}: {e}")),
                };
                expect.lock().expect("lock").insert(
                    uuid.clone(),
                    Expect::Present {
                        alias: format!("g{i}"),
                        cpu_cap: 0,
                    },
                );
                let u = uuid::Uuid::parse_str(&uuid).expect("uuid");
                for round in 1..=3u64 {
                    match c.update_vm(
                        u,
                        &json!({"alias": format!("g{i}-r{round}"), "cpu_cap": round * 10}),
                    ) {
                        Ok(_) => {
                            expect.lock().expect("lock").insert(
                                uuid.clone(),
                                Expect::Present {
                                    alias: format!("g{i}-r{round}"),
                                    cpu_cap: round * 10,
                                },
                            );
                        }
                        Err(e) => fail(format!("update {uuid}: {e}")),
                    }
                    if let Err(e) = c.get_vm(u) {
                        fail(format!("get {uuid}: {e}"));
                    }
                    if let Err(e) = c.list_vms(&["alias=~^g".into()]) {
                        fail(format!("list: {e}"));
                    }
                }
                if i.is_multiple_of(3) {
                    match c.delete_vm(u) {
                        Ok(()) => {
                            expect
                                .lock()
                                .expect("lock")
                                .insert(uuid.clone(), Expect::Absent);
                        }
                        Err(e) => fail(format!("delete {uuid}: {e}")),
                    }
                    // A second delete and a get of the deleted guest: NotFound, nothing else.
                    match c.delete_vm(u) {
                        Err(e) if expected_error(&e, &["NotFound"]) => {}
                        other => fail(format!("second delete {uuid}: {other:?}")),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let unexpected = unexpected.lock().expect("lock");
    assert!(
        unexpected.is_empty(),
        "unexpected outcomes: {unexpected:#?}"
    );

    let expect = expect.lock().expect("lock").clone();
    let check = |d: &Daemon, label: &str| {
        let listed = d.client().list_vms(&[]).expect("list");
        let actual: BTreeMap<String, Expect> = listed
            .iter()
            .map(|vm| {
                (
                    vm.uuid.to_string(),
                    Expect::Present {
                        alias: vm.alias.clone().unwrap_or_default(),
                        cpu_cap: u64::from(vm.cpu_cap.unwrap_or(0)),
                    },
                )
            })
            .collect();
        let want: BTreeMap<String, Expect> = expect
            .iter()
            .filter(|(_, e)| **e != Expect::Absent)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            actual, want,
            "{label}: records disagree with the successful operations"
        );
        // Two clients claim each of 100 addresses: at least one of each pair won, and no
        // two live guests share an address.
        assert!(
            expect.len() >= 100,
            "{label}: only {} created",
            expect.len()
        );
        let mut ips: Vec<String> = listed
            .iter()
            .flat_map(|vm| {
                vm.nics
                    .iter()
                    .flat_map(|n| n.ips.clone().unwrap_or_default())
            })
            .collect();
        let total = ips.len();
        ips.sort();
        ips.dedup();
        assert_eq!(
            ips.len(),
            total,
            "{label}: two live guests share an address"
        );
    };
    let mut d = d;
    check(&d, "live");
    // The same after a restart: what was acknowledged is on disk.
    d.kill9();
    d.spawn();
    check(&d, "after restart");
}
