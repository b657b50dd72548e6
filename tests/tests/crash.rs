//! Acceptance 5: vmmd killed with SIGKILL at random points during a stream of creates,
//! updates and deletes, then restarted, 50 times: every guest record is whole or absent, and
//! vmmd starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hull_tests::Daemon;
use serde_json::{Value, json};

/// A small xorshift generator; the seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_at_random_points_never_tears_a_record() {
    let seed = std::env::var("HULL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash test seed: {seed} (replay with HULL_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let mut d = Daemon::start();
    let vms_dir = d.data_root().join("vms");
    for round in 0..50 {
        // Writers hammer the daemon from two threads while the main thread picks a moment.
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let socket = d.socket();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let Ok(c) = hull_client::Client::new(&socket) else { return };
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let alias = format!("r{round}w{w}n{n}");
                        // An update writes alias and the tag together: a torn or partial
                        // update would show them disagreeing.
                        let Ok(vm) = c.create_vm(&json!({"brand": "kvm", "autoboot": false,
                            "alias": alias, "tags": {"alias": alias}, "customer_metadata": {"pad": "x".repeat(4096)}})) else { break };
                        let next = format!("{alias}-u");
                        if c.update_vm(vm.uuid, &json!({"alias": next, "set_tags": {"alias": next}})).is_err() {
                            break;
                        }
                        if n.is_multiple_of(2) && c.delete_vm(vm.uuid).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(2_000 + rng.next() % 60_000));
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer");
        }
        // Every file on disk is a whole record, before vmmd even looks at it.
        for entry in std::fs::read_dir(&vms_dir).expect("vms dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            if name.ends_with(".json") && !name.starts_with('.') {
                let bytes = std::fs::read(&path).expect("read record");
                let v: Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("round {round}: torn record {name}: {e}"));
                assert_eq!(
                    v["alias"], v["tags"]["alias"],
                    "round {round}: half-applied update in {name}"
                );
            }
        }
        d.spawn();
        let vms = d.client().list_vms(&[]).expect("list after restart");
        for vm in &vms {
            assert_eq!(
                vm.alias.as_deref().map(|a| serde_json::json!(a)),
                vm.tags
                    .get("alias")
                    .map(|t| serde_json::to_value(t).expect("tag"))
            );
        }
        assert!(
            !vms_dir.join("corrupt").exists(),
            "round {round}: a record was quarantined\n{}",
            d.log()
        );
        let leftovers = std::fs::read_dir(&vms_dir)
            .expect("vms dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .count();
        assert_eq!(leftovers, 0, "round {round}: temp files survive a restart");
    }
}
