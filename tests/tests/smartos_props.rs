//! SmartOS properties hull honours, each observed where it acts, as root (tier 2): a zone's
//! locked-memory and System V IPC limits, maintain_resolvers, archive_on_delete,
//! zfs_snapshot_limit, and SmartOS's spellings made hull's (a `macs[...]` route gateway).

use hull_tests::Daemon;
use hull_tests::zone::{create, install, ok, refused, text};

/// Whether this process has CAP_SYS_RESOURCE (bit 24 of CapEff).
fn sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .expect("CapEff");
    eff & (1 << 24) != 0
}

/// This process's hard RLIMIT_MEMLOCK.
fn hard_memlock() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .expect("memlock line");
    let hard = line.split_whitespace().nth(4).expect("hard field");
    hard.parse().unwrap_or(u64::MAX)
}

fn record(d: &Daemon, uuid: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&d.vmadm(&["get", uuid], None))).expect("record")
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zone_rctls_resolvers_archive_and_snapshot_limit() {
    let d = Daemon::start();
    install(&d);
    let uuid = create(
        &d,
        serde_json::json!({
            "max_physical_memory": 512, "max_locked_memory": 64,
            "max_shm_memory": 32, "max_shm_ids": 100, "max_msg_ids": 200, "max_sem_ids": 300,
            "resolvers": ["192.0.2.53"], "maintain_resolvers": false,
            "archive_on_delete": true, "zfs_snapshot_limit": 1,
            "do_not_inventory": true, "zfs_root_recsize": 8192
        }),
    );
    // The zone's processes, init's and zlogin's, have the limits.
    let inside = "grep 'Max locked memory' /proc/1/limits | tr -s ' ' | cut -d' ' -f4,5; \
                  grep 'Max locked memory' /proc/self/limits | tr -s ' ' | cut -d' ' -f4,5; \
                  cat /proc/sys/kernel/shmmni /proc/sys/kernel/msgmni /proc/sys/kernel/shmmax; \
                  cut -f4 /proc/sys/kernel/sem; cat /etc/resolv.conf";
    let out = ok(&d.zlogin(&uuid, inside));
    // A host that withholds CAP_SYS_RESOURCE from root (as some sandboxes do) cannot raise
    // the limit above its hard one: the zone gets that, and its record says so.
    let (memlock, held) = match sys_resource() {
        true => (64u64 << 20, false),
        false => (
            (64u64 << 20).min(hard_memlock()),
            64u64 << 20 > hard_memlock(),
        ),
    };
    let want_bytes = memlock.to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("{want_bytes} {want_bytes}"), "{out}");
    assert_eq!(lines[1], format!("{want_bytes} {want_bytes}"), "{out}");
    assert_eq!(
        lines[2..5],
        ["100", "200", &(32u64 << 20).to_string()],
        "{out}"
    );
    assert_eq!(lines[5].trim(), "300", "{out}");
    assert!(
        out.contains("nameserver 192.0.2.53"),
        "first boot writes it: {out}"
    );
    // The host's IPC namespace is untouched.
    let host = std::fs::read_to_string("/proc/sys/kernel/msgmni").expect("host msgmni");
    assert_ne!(host.trim(), "200");
    let rec = record(&d, &uuid);
    let warnings = rec["warnings"].to_string();
    assert!(warnings.contains("stored only: zfs_root_recsize"), "{rec}");
    assert_eq!(
        warnings.contains("max_locked_memory held at"),
        held,
        "{rec}"
    );

    // maintain_resolvers false: a later boot leaves the guest's resolv.conf alone; true:
    // it is written again.
    ok(&d.zlogin(&uuid, "echo 'nameserver 198.51.100.1' > /etc/resolv.conf"));
    ok(&d.vmadm(&["update", &uuid], Some(r#"{"resolvers": ["192.0.2.54"]}"#)));
    ok(&d.vmadm(&["reboot", &uuid, "-F"], None));
    let conf = ok(&d.zlogin(&uuid, "cat /etc/resolv.conf"));
    assert_eq!(
        conf, "nameserver 198.51.100.1\n",
        "the guest's edit stands a reboot"
    );
    // As SmartOS's: vmadm stop clears autoboot (an operator's stop outlives a host reboot),
    // vmadm start sets it.
    let restart = |d: &Daemon| {
        ok(&d.vmadm(&["stop", &uuid, "-F"], None));
        assert_eq!(record(d, &uuid)["autoboot"], false);
        ok(&d.vmadm(&["start", &uuid], None));
        assert_eq!(record(d, &uuid)["autoboot"], true);
    };
    restart(&d);
    let conf = ok(&d.zlogin(&uuid, "cat /etc/resolv.conf"));
    assert_eq!(conf, "nameserver 198.51.100.1\n", "and a stop and start");
    ok(&d.vmadm(&["update", &uuid, "maintain_resolvers=true"], None));
    restart(&d);
    // The host's own shutdown stops its guests without clearing autoboot.
    ok(&d.vmadm(&["stop", "--keep-autoboot", "-F", &uuid], None));
    assert_eq!(record(&d, &uuid)["autoboot"], true);
    ok(&d.vmadm(&["start", &uuid], None));
    let conf = ok(&d.zlogin(&uuid, "cat /etc/resolv.conf"));
    assert!(conf.contains("nameserver 192.0.2.54"), "{conf}");

    // zfs_snapshot_limit: one snapshot, not two.
    ok(&d.vmadm(&["stop", &uuid, "-F"], None));
    ok(&d.vmadm(&["create-snapshot", &uuid, "one"], None));
    refused(
        &d.vmadm(&["create-snapshot", &uuid, "two"], None),
        "zfs_snapshot_limit",
    );

    // archive_on_delete keeps the record under the data root's archive/.
    ok(&d.vmadm(&["delete", &uuid], None));
    let archived = d.data_root().join("archive").join(format!("{uuid}.json"));
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&archived).expect("archived record")).expect("json");
    assert_eq!(kept["uuid"], uuid.as_str());
    assert_eq!(kept["resolvers"][0], "192.0.2.54");
}

/// zlogin as SmartOS's: `-l USER` runs as a user of the zone (its /etc/passwd), `-Q` is
/// quiet, `-C` attaches the console.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zlogin_user_quiet_and_console() {
    let d = Daemon::start();
    install(&d);
    let uuid = create(&d, serde_json::json!({}));
    ok(&d.zlogin(
        &uuid,
        "echo 'alice:x:1000:1000:Alice:/tmp:/bin/sh' >> /etc/passwd; \
         echo 'mallory:x:70000:0::/:/bin/sh' >> /etc/passwd; echo 'staff:x:50:alice' >> /etc/group",
    ));
    let o = d.run(
        "zlogin",
        &[
            "-Q",
            "-l",
            "alice",
            &uuid,
            "sh",
            "-c",
            "id -u; id -g; id -G; echo $HOME $USER; pwd",
        ],
        None,
    );
    assert_eq!(
        ok(&o),
        "1000\n1000\n1000 50\n/tmp alice\n/tmp\n",
        "{}",
        text(&o)
    );
    // A user's shell cannot take back root's powers.
    let o = d.run(
        "zlogin",
        &["-l", "alice", &uuid, "sh", "-c", "touch /etc/owned"],
        None,
    );
    assert!(!o.status.success(), "{}", text(&o));
    refused(
        &d.run("zlogin", &["-l", "nosuch", &uuid, "true"], None),
        "no such user",
    );
    refused(
        &d.run("zlogin", &["-l", "mallory", &uuid, "true"], None),
        "not an id of the zone",
    );
    // -C: the console, its output replayed; end of input ends the session.
    let o = d.run("zlogin", &["-C", &uuid], Some(""));
    assert!(o.status.success(), "{}", text(&o));
    refused(
        &d.run("zlogin", &["-C", &uuid, "ls"], None),
        "takes no -l or command",
    );
    ok(&d.vmadm(&["delete", &uuid], None));
}

/// SmartOS's payload spellings hull takes as its own, and SmartOS's limits on disks.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_smartos_spellings_and_disk_limits() {
    let d = Daemon::start();
    install(&d);
    ok(&d.run("nictagadm", &["add", "-l", "spellings"], None));
    // A route through `macs[MAC]` is the NIC with that MAC; a max_swap below the memory
    // limit is raised to it; a list fs_allowed is SmartOS's string.
    let uuid = create(
        &d,
        serde_json::json!({
            "autoboot": false, "max_physical_memory": 512, "max_swap": 256,
            "fs_allowed": ["ufs", "pcfs"],
            "nics": [{"nic_tag": "spellings", "mac": "02:aa:bb:cc:dd:01",
                      "ips": ["192.0.2.10/24"], "interface": "net0"}],
            "routes": {"198.51.100.0/24": "macs[02:AA:BB:CC:DD:01]"}
        }),
    );
    let rec = record(&d, &uuid);
    assert_eq!(rec["routes"]["198.51.100.0/24"], "nics[0]", "{rec}");
    assert_eq!(rec["max_swap"], 512, "{rec}");
    assert_eq!(rec["fs_allowed"], "ufs,pcfs", "{rec}");
    ok(&d.vmadm(&["delete", &uuid], None));
    // A route through a NIC that leases its address is refused, as SmartOS does.
    let payload = serde_json::json!({"brand": "joyent-minimal",
        "image_uuid": hull_tests::zone::image_uuid(),
        "nics": [{"nic_tag": "spellings", "ip": "dhcp"}],
        "routes": {"10.2.0.0/24": "nics[0]"}});
    refused(
        &d.vmadm(&["create"], Some(&payload.to_string())),
        "routes.10.2.0.0/24",
    );
    // flexible_disk_size bounds a microVM's disks.
    let payload = serde_json::json!({"brand": "bhyve", "flexible_disk_size": 1024,
        "disks": [{"size": 512, "boot": true}, {"size": 1024}]});
    refused(
        &d.vmadm(&["validate", "create"], Some(&payload.to_string())),
        "flexible_disk_size",
    );
}
