//! Acceptance 2: `vmadm validate create` on payloads for each brand, valid and invalid,
//! prints reports naming exactly the offending properties (host checks included).

use hull_tests::{Daemon, stderr, stdout};
use serde_json::{Value, json};

const ZONE_IMG: &str = "11111111-2222-4333-8444-555555555555";
const LX_IMG: &str = "11111111-2222-4333-8444-666666666666";
const DISK_IMG: &str = "11111111-2222-4333-8444-777777777777";

fn daemon() -> Daemon {
    let d = Daemon::start();
    d.install_image(ZONE_IMG, "zone-dataset");
    d.install_image(LX_IMG, "lx-dataset");
    d.install_image(DISK_IMG, "zvol");
    let o = d.run("nictagadm", &["add", "-l", "admin"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    d
}

fn validate(d: &Daemon, payload: &Value) -> (i32, String, String) {
    let o = d.vmadm(&["validate", "create"], Some(&payload.to_string()));
    (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
}

fn sorted(v: &Value, key: &str) -> Vec<String> {
    let mut l: Vec<String> = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is a list in {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect();
    l.sort();
    l
}

fn report(d: &Daemon, payload: Value) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (code, out, err) = validate(d, &payload);
    assert_eq!(code, 1, "invalid payload must exit 1: {out} {err}");
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("report is JSON ({e}): {out}"));
    (
        sorted(&v, "bad_values"),
        sorted(&v, "bad_properties"),
        sorted(&v, "missing_properties"),
    )
}

#[test]
fn valid_payloads_for_every_brand() {
    let d = daemon();
    let nic = json!([{"nic_tag": "admin", "ips": ["192.0.2.10/24"], "gateways": ["192.0.2.1"]}]);
    let cases = [
        (
            "joyent",
            json!({"brand": "joyent", "image_uuid": ZONE_IMG, "nics": nic}),
        ),
        (
            "joyent-minimal",
            json!({"brand": "joyent-minimal", "image_uuid": ZONE_IMG}),
        ),
        (
            "lx",
            json!({"brand": "lx", "image_uuid": LX_IMG, "nics": nic}),
        ),
        (
            "kvm",
            json!({"brand": "kvm", "ram": 512, "disks": [{"image_uuid": DISK_IMG, "boot": true}], "nics": nic}),
        ),
        (
            "bhyve",
            json!({"brand": "bhyve", "vcpus": 2, "disks": [{"size": 1024}]}),
        ),
    ];
    for (brand, payload) in cases {
        let (code, out, err) = validate(&d, &payload);
        assert_eq!(code, 0, "{brand}: {out} {err}");
        assert_eq!(
            out.trim(),
            format!("VALID 'create' payload for {brand} brand VMs.")
        );
    }
}

#[test]
fn invalid_payloads_name_exactly_the_offenders() {
    let d = daemon();
    // Wrong types and out of range.
    assert_eq!(
        report(
            &d,
            json!({"brand": "joyent", "image_uuid": ZONE_IMG, "autoboot": "yes", "max_physical_memory": 0, "cpu_cap": -5, "quota": "big"})
        ),
        (
            vec![
                "autoboot".into(),
                "cpu_cap".into(),
                "max_physical_memory".into(),
                "quota".into()
            ],
            vec![],
            vec![]
        )
    );
    // Unknown and unsupported properties.
    assert_eq!(
        report(
            &d,
            json!({"brand": "lx", "image_uuid": LX_IMG, "flux_capacitor": 1, "spice_port": 5900})
        ),
        (
            vec![],
            vec!["flux_capacitor".into(), "spice_port".into()],
            vec![]
        )
    );
    // Missing image_uuid (zones) and a missing nic tag.
    assert_eq!(
        report(
            &d,
            json!({"brand": "joyent", "nics": [{"ips": ["192.0.2.3/24"]}]})
        ),
        (
            vec![],
            vec![],
            vec!["image_uuid".into(), "nics.0.nic_tag".into()]
        )
    );
    // Two primary NICs, a bad IP, a bad MAC.
    assert_eq!(
        report(
            &d,
            json!({"brand": "kvm", "nics": [
            {"nic_tag": "admin", "primary": true, "ips": ["192.0.2.300/24"]},
            {"nic_tag": "admin", "primary": true, "mac": "00:11:22:33:44"}]})
        ),
        (
            vec![
                "nics.0.ips.0".into(),
                "nics.1.mac".into(),
                "nics.1.primary".into()
            ],
            vec![],
            vec![]
        )
    );
    // Nested customer_metadata.
    assert_eq!(
        report(
            &d,
            json!({"brand": "joyent", "image_uuid": ZONE_IMG, "customer_metadata": {"a": {"b": "c"}}})
        ),
        (vec!["customer_metadata".into()], vec![], vec![])
    );
    // Host checks: an image that is not installed, one of the wrong type, an unknown tag.
    assert_eq!(
        report(
            &d,
            json!({"brand": "joyent", "image_uuid": "99999999-2222-4333-8444-555555555555",
            "nics": [{"nic_tag": "nosuch"}]})
        ),
        (
            vec!["image_uuid".into(), "nics.0.nic_tag".into()],
            vec![],
            vec![]
        )
    );
    assert_eq!(
        report(
            &d,
            json!({"brand": "kvm", "disks": [{"image_uuid": ZONE_IMG}]})
        ),
        (vec!["disks.0.image_uuid".into()], vec![], vec![])
    );
    // An unknown brand has SmartOS's own shape.
    let (code, out, _) = validate(&d, &json!({"brand": "zvm"}));
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["bad_brand"], "zvm");
}

#[test]
fn host_checks_see_other_guests_addresses_and_uuids() {
    let d = daemon();
    let first = json!({"brand": "kvm", "autoboot": false, "uuid": "aaaaaaaa-2222-4333-8444-555555555555",
        "nics": [{"nic_tag": "admin", "mac": "02:00:00:00:00:01", "ips": ["192.0.2.50/24"]}]});
    let o = d.vmadm(&["create"], Some(&first.to_string()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        report(&d, first),
        (
            vec!["nics.0.ips".into(), "nics.0.mac".into(), "uuid".into()],
            vec![],
            vec![]
        )
    );
    // validate update checks the payload for a brand.
    let o = d.vmadm(
        &["validate", "update", "joyent"],
        Some(r#"{"alias": "x", "set_tags": {"a": 1}}"#),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "VALID 'update' payload for joyent brand VMs."
    );
    let o = d.vmadm(
        &["validate", "update", "joyent"],
        Some(r#"{"brand": "kvm", "vcpus": 2}"#),
    );
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(sorted(&v, "bad_properties"), ["brand", "vcpus"]);
}

/// Acceptance 5 for NICs added by `vmadm update`: an unknown tag, an address or MAC another
/// guest has, and a malformed CIDR are refused, each by its property; nothing changes.
#[test]
fn add_nics_is_checked_like_a_create() {
    let d = daemon();
    let other = json!({"brand": "kvm", "autoboot": false,
        "nics": [{"nic_tag": "admin", "mac": "02:00:00:00:00:51", "ips": ["192.0.2.51/24"]}]});
    let o = d.vmadm(&["create"], Some(&other.to_string()));
    assert!(o.status.success(), "{}", stderr(&o));
    let vm = d
        .client()
        .create_vm(&json!({"brand": "kvm", "autoboot": false}))
        .expect("create");
    let bad = |payload: Value| -> Vec<String> {
        match d.client().update_vm(vm.uuid, &payload) {
            Ok(v) => panic!("accepted: {v:?}"),
            Err(hull_client::ClientError::Api { status, body }) => {
                assert_eq!(status, 422, "{body:?}");
                let r = body.report.expect("a validation report");
                let mut named: Vec<String> = r
                    .bad_values
                    .into_iter()
                    .chain(r.bad_properties)
                    .chain(r.missing_properties)
                    .collect();
                named.sort();
                named
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        bad(json!({"add_nics": [
            {"nic_tag": "nosuch"},
            {"nic_tag": "admin", "ips": ["192.0.2.51/24"]},
            {"nic_tag": "admin", "mac": "02:00:00:00:00:51"}]})),
        ["add_nics.0.nic_tag", "add_nics.1.ips", "add_nics.2.mac"]
    );
    assert_eq!(
        bad(json!({"add_nics": [
            {"nic_tag": "admin", "ips": ["192.0.2.7/33"]},
            {"nic_tag": "admin", "ips": ["192.0.2.8"]},
            {"nic_tag": "admin", "allowed_ips": ["198.51.100.0/40"]}]})),
        [
            "add_nics.0.ips.0",
            "add_nics.1.ips.0",
            "add_nics.2.allowed_ips.0"
        ]
    );
    assert!(d.client().get_vm(vm.uuid).expect("get").nics.is_empty());
}
