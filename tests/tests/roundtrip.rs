//! Acceptance 3: create/get/list/lookup/update/delete round-trip through vmadm and through
//! curl on the socket; filters, -o/-s/-H/-p and lookup -j -1 behave as documented.

use std::process::Command;

use hull_tests::{Daemon, stderr, stdout};
use serde_json::{Value, json};

const IMG: &str = "11111111-2222-4333-8444-555555555555";

fn created_uuid(o: &std::process::Output) -> String {
    let err = stderr(o);
    assert!(o.status.success(), "create failed: {err}");
    err.trim()
        .strip_prefix("Successfully created VM ")
        .unwrap_or_else(|| panic!("unexpected create output {err:?}"))
        .to_string()
}

fn setup() -> (Daemon, Vec<String>) {
    let d = Daemon::start();
    d.install_image(IMG, "zone-dataset");
    assert!(
        d.run("nictagadm", &["add", "-l", "admin"], None)
            .status
            .success()
    );
    let payloads = [
        json!({"brand": "joyent", "image_uuid": IMG, "alias": "web01", "autoboot": false,
               "max_physical_memory": 1024, "tags": {"role": "web"},
               "nics": [{"nic_tag": "admin", "ips": ["192.0.2.11/24"]}]}),
        json!({"brand": "joyent", "image_uuid": IMG, "alias": "web02", "autoboot": false,
               "max_physical_memory": 512, "tags": {"role": "web"},
               "nics": [{"nic_tag": "admin", "ip": "192.0.2.12", "netmask": "255.255.255.0"}]}),
        json!({"brand": "kvm", "alias": "db01", "autoboot": false, "ram": 2048,
               "tags": {"role": "db"}}),
    ];
    let uuids = payloads
        .iter()
        .map(|p| created_uuid(&d.vmadm(&["create"], Some(&p.to_string()))))
        .collect();
    (d, uuids)
}

#[test]
fn vmadm_round_trip() {
    let (d, uuids) = setup();
    // get
    let o = d.vmadm(&["get", &uuids[0]], None);
    assert!(o.status.success());
    let vm: Value = serde_json::from_str(&stdout(&o)).expect("get prints JSON");
    assert_eq!(vm["alias"], "web01");
    assert_eq!(vm["max_physical_memory"], 1024);
    assert_eq!(vm["quota"], 10, "SmartOS default quota");
    assert_eq!(vm["nics"][0]["interface"], "net0");
    assert_eq!(vm["nics"][0]["primary"], true);

    // list: default columns and sort (ram, then uuid)
    let o = d.vmadm(&["list"], None);
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["UUID", "TYPE", "RAM", "STATE", "ALIAS"]
    );
    let aliases: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().last().unwrap_or(""))
        .collect();
    assert_eq!(aliases, ["web02", "web01", "db01"]);
    // -o -s -H -p and filters
    let o = d.vmadm(&["list", "-H", "-o", "alias,ram", "-s", "-ram"], None);
    assert_eq!(stdout(&o), "db01   2048\nweb01  1024\nweb02  512\n");
    let o = d.vmadm(
        &[
            "list",
            "-p",
            "-o",
            "alias,nics.0.ips.0,tags.role",
            "alias=~^web",
            "-s",
            "alias",
        ],
        None,
    );
    assert_eq!(stdout(&o), "web01:192.0.2.11/24:web\nweb02:-:web\n");
    let o = d.vmadm(
        &["list", "-Hp", "-o", "alias", "nics.0.ip=192.0.2.12"],
        None,
    );
    assert_eq!(stdout(&o), "web02\n");
    let o = d.vmadm(
        &["list", "-Hp", "-o", "alias", "type=KVM", "tags.role=db"],
        None,
    );
    assert_eq!(stdout(&o), "db01\n");
    let o = d.vmadm(&["list", "-Hp", "-o", "alias", "alias=~("], None);
    assert_eq!(o.status.code(), Some(1), "a bad regex is an error");
    assert!(
        stderr(&o).contains("invalid regular expression"),
        "{}",
        stderr(&o)
    );
    // A key that names nothing a record can hold is a usage error naming it, not an empty
    // table: a filter, a column, a sort key, and lookup's -o.
    for (args, key) in [
        (vec!["list", "nosuchkey=1"], "nosuchkey"),
        (vec!["list", "nics.0.nosuch=~x"], "nics.0.nosuch"),
        (vec!["list", "-o", "uuid,rma"], "rma"),
        (vec!["list", "-s", "-nosuch"], "nosuch"),
        (vec!["lookup", "-j", "-o", "uuid,aliass"], "aliass"),
        (vec!["lookup", "nosuchkey=web"], "nosuchkey"),
    ] {
        let o = d.vmadm(&args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("{key:?}")) && stderr(&o).contains("dotted path"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // Keys no guest has yet, but that a record can hold, still filter (to nothing).
    for filter in ["customer_metadata.none=1", "tags.nope=1", "disks.3.size=1"] {
        let o = d.vmadm(&["list", "-H", filter], None);
        assert!(o.status.success(), "{filter}: {}", stderr(&o));
        assert_eq!(stdout(&o).trim(), "", "{filter}");
    }

    // lookup
    let o = d.vmadm(&["lookup", "tags.role=web"], None);
    let mut found: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    found.sort();
    let mut want = vec![uuids[0].clone(), uuids[1].clone()];
    want.sort();
    assert_eq!(found, want);
    let o = d.vmadm(&["lookup", "-1", "tags.role=web"], None);
    assert_eq!(o.status.code(), Some(1), "two matches with -1");
    let o = d.vmadm(
        &["lookup", "-j", "-1", "-o", "uuid,ram", "alias=db01"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v, json!([{"uuid": uuids[2], "ram": 2048}]));

    // update by file and by property=value, then the verbs
    let o = d.vmadm(
        &["update", &uuids[0]],
        Some(r#"{"set_tags": {"tier": 1}, "remove_tags": ["role"]}"#),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.vmadm(&["update", &uuids[0], "alias=web-one", "cpu_cap=150"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let vm: Value =
        serde_json::from_str(&stdout(&d.vmadm(&["get", &uuids[0]], None))).expect("json");
    assert_eq!(
        (
            vm["alias"].clone(),
            vm["cpu_cap"].clone(),
            vm["tags"].clone()
        ),
        (json!("web-one"), json!(150), json!({"tier": 1}))
    );
    let o = d.vmadm(&["update", &uuids[0], "brand=kvm"], None);
    assert_eq!(o.status.code(), Some(1), "brand cannot change");

    // delete
    let o = d.vmadm(&["delete", &uuids[1]], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.vmadm(&["get", &uuids[1]], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not exist"));
    // usage errors exit 2
    assert_eq!(d.vmadm(&["frobnicate"], None).status.code(), Some(2));
    assert_eq!(d.vmadm(&["get"], None).status.code(), Some(2));
}

fn curl(d: &Daemon, args: &[&str]) -> (u16, Value) {
    let o = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(d.socket())
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test installs it)");
    let text = stdout(&o);
    let (body, code) = text.rsplit_once('\n').expect("status line");
    let body = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).expect("JSON body")
    };
    (code.parse().expect("status"), body)
}

/// `PATCH /v1/vms/{uuid}` with a JSON body, through curl.
fn patch(d: &Daemon, uuid: &str, body: &str) -> (u16, Value) {
    curl(
        d,
        &[
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &format!("http://vmmd/v1/vms/{uuid}"),
        ],
    )
}

#[test]
fn curl_round_trip() {
    let (d, uuids) = setup();
    let (code, ping) = curl(&d, &["http://vmmd/v1/ping"]);
    assert_eq!((code, ping["ok"].clone()), (200, json!(true)));
    let (code, list) = curl(&d, &["http://vmmd/v1/vms?filter=alias%3D~%5Eweb"]);
    assert_eq!(code, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    for query in ["filter=nosuch%3D1", "fields=uuid,nosuch"] {
        let (code, err) = curl(&d, &[&format!("http://vmmd/v1/vms?{query}")]);
        assert_eq!(code, 400, "{query}: {err}");
        assert!(
            err["message"]
                .as_str()
                .is_some_and(|m| m.contains("\"nosuch\"")),
            "{err}"
        );
    }
    let payload = json!({"brand": "bhyve", "alias": "c1", "autoboot": false}).to_string();
    let (code, vm) = curl(
        &d,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &payload,
            "http://vmmd/v1/vms",
        ],
    );
    assert_eq!(code, 201, "{vm}");
    let uuid = vm["uuid"].as_str().expect("uuid").to_string();
    // A microVM has no root of its own to hold to a quota: stored, and the record says so.
    let quota_warning = |vm: &Value| {
        vm["warnings"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w.as_str()
                    .is_some_and(|w| w.starts_with("quota: stored but not enforced"))
            })
        })
    };
    assert!(!quota_warning(&vm), "{vm}");
    let (code, vm) = patch(&d, &uuid, r#"{"quota": 5}"#);
    assert_eq!(code, 200, "{vm}");
    assert!(quota_warning(&vm), "{vm}");
    let (code, vm) = patch(&d, &uuid, r#"{"ram": 1024}"#);
    assert_eq!(
        (code, vm["ram"].clone(), vm["max_physical_memory"].clone()),
        (200, json!(1024), json!(2048))
    );
    let (code, vm) = curl(&d, &[&format!("http://vmmd/v1/vms/{uuid}")]);
    assert_eq!((code, vm["alias"].clone()), (200, json!("c1")));
    // The CLI sees what curl made, and curl sees what the CLI made.
    let o = d.vmadm(&["get", &uuid], None);
    assert!(o.status.success());
    let (code, vm) = curl(&d, &[&format!("http://vmmd/v1/vms/{}", uuids[2])]);
    assert_eq!((code, vm["alias"].clone()), (200, json!("db01")));
    let (code, _) = curl(&d, &["-X", "DELETE", &format!("http://vmmd/v1/vms/{uuid}")]);
    assert_eq!(code, 200);
    let (code, err) = curl(&d, &[&format!("http://vmmd/v1/vms/{uuid}")]);
    assert_eq!((code, err["code"].clone()), (404, json!("NotFound")));
    // Lifecycle verbs answer with real state checks and say what is not built yet. A stop
    // or reboot of a stopped guest has nothing to do: the API says so with its own code,
    // and vmadm says it and exits 0, as SmartOS's does (scripts rely on it).
    for verb in ["stop", "reboot"] {
        let (code, err) = curl(
            &d,
            &[
                "-X",
                "POST",
                &format!("http://vmmd/v1/vms/{}/{verb}", uuids[2]),
            ],
        );
        assert_eq!(
            (code, err["code"].clone()),
            (409, json!("AlreadyInState")),
            "{err}"
        );
        let o = d.vmadm(&[verb, &uuids[2]], None);
        let said = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{said}");
        assert!(said.contains("is already stopped; nothing to"), "{said}");
    }
    // indestructible_zoneroot: delete is refused while it is set, by name, and the guest is
    // left as it was; cleared by an update, the delete goes through.
    let o = d.vmadm(
        &["create"],
        Some(r#"{"brand": "kvm", "autoboot": false, "indestructible_zoneroot": "true"}"#),
    );
    let said = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{said}");
    let kept = said
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    let o = d.vmadm(&["delete", &kept], None);
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(said.contains("indestructible_zoneroot set"), "{said}");
    let (code, vm) = curl(&d, &[&format!("http://vmmd/v1/vms/{kept}")]);
    assert_eq!(
        (code, vm["indestructible_zoneroot"].clone()),
        (200, json!(true))
    );
    let o = d.vmadm(&["update", &kept, "indestructible_zoneroot=false"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = d.vmadm(&["delete", &kept], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // SmartOS's spellings: halt for stop, -NAME for kill's signal.
    let o = d.vmadm(&["halt", &uuids[2]], None);
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{said}");
    // Other verbs on a stopped guest are still refused (the signal parsed: not a usage error).
    for sig in ["-HUP", "-9"] {
        let o = d.vmadm(&["kill", sig, &uuids[2]], None);
        let said = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{said}");
        assert!(said.contains("not running"), "{said}");
    }
    let o = d.vmadm(&["kill", &uuids[2]], None);
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{said}");
    let (code, err) = curl(
        &d,
        &[
            "-X",
            "POST",
            &format!("http://vmmd/v1/vms/{}/start", uuids[2]),
        ],
    );
    assert_eq!(
        (code, err["code"].clone()),
        (409, json!("Conflict")),
        "{err}"
    );
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains("no kernel"), "{err}");
    // A microVM with autoboot is created even when its first boot fails, and the error
    // says both (SmartOS semantics).
    let before = d.client().list_vms(&[]).expect("list").len();
    let (code, err) = curl(
        &d,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"brand": "kvm"}"#,
            "http://vmmd/v1/vms",
        ],
    );
    assert_eq!((code, err["code"].clone()), (409, json!("Conflict")));
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("was created") && message.contains("no kernel"),
        "{err}"
    );
    assert_eq!(d.client().list_vms(&[]).expect("list").len(), before + 1);
}

#[test]
fn events_stream_reports_changes() {
    let (d, uuids) = setup();
    let socket = d.socket();
    let mut child = std::process::Command::new(hull_tests::bin("vmadm"))
        .args(["events", "-j", "-r", &uuids[0]])
        .env("HULL_SOCKET", &socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("events");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("ready line");
    assert_eq!(line.trim(), r#"{"type":"ready"}"#);
    assert!(
        d.vmadm(&["update", &uuids[1], "alias=other"], None)
            .status
            .success()
    );
    assert!(
        d.vmadm(&["update", &uuids[0], "alias=mine"], None)
            .status
            .success()
    );
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).expect("event line");
    let ev: Value = serde_json::from_str(&line).expect("event JSON");
    assert_eq!(ev["type"], "modify");
    assert_eq!(
        ev["uuid"],
        uuids[0].as_str(),
        "only the watched VM's events"
    );
    assert_eq!(ev["changes"], json!(["alias"]));
    let _ = child.kill();
    let _ = child.wait();
}
