//! MicroVMs end to end, as root on /dev/kvm (tier 3, `kvm_root_*`): vmmd runs the `vmm`
//! binary inside a zone made for it, with the test guest (images/testguest) as the kernel and
//! a disk cloned from a zvol image; vmadm creates, starts, stops and deletes it, the console
//! shows the guest, and the VMM's confinement is checked from the host.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use hull_tests::{Daemon, bin};
use serde_json::json;

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Creates a microVM booting the test guest with `cmdline`, its disk cloned from `image`.
fn create(d: &Daemon, image: &str, cmdline: &str, autoboot: bool) -> uuid::Uuid {
    let payload = json!({"brand": "kvm", "alias": "vmtest", "ram": 64, "vcpus": 1,
        "autoboot": autoboot,
        "kernel": hull_tests::testguest().to_string_lossy(),
        "cmdline": format!("console=ttyS0 {cmdline}"),
        "disks": [{"image_uuid": image, "boot": true}]});
    let o = d.vmadm(&["create"], Some(&payload.to_string()));
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out.split_whitespace()
        .find_map(|w| uuid::Uuid::parse_str(w).ok())
        .expect("uuid in vmadm create's output")
}

fn state(d: &Daemon, uuid: uuid::Uuid) -> String {
    d.client()
        .get_vm(uuid)
        .expect("get")
        .state
        .as_str()
        .to_string()
}

fn wait_state(d: &Daemon, uuid: uuid::Uuid, want: &str, limit: Duration) {
    let t = Instant::now();
    while state(d, uuid) != want {
        assert!(
            t.elapsed() < limit,
            "{uuid} never became {want}; log: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the guest's console until it shows `want`; returns what it read.
fn console_until(d: &Daemon, uuid: uuid::Uuid, want: &str) -> String {
    let rt = d.client().runtime(uuid).expect("runtime");
    hull_tests::console_until(&rt.console, want)
}

/// The zoned state file of a guest (boots, error).
fn zone_state(d: &Daemon, uuid: uuid::Uuid) -> serde_json::Value {
    let p = d.data_root().join(format!("zones/{uuid}/state.json"));
    serde_json::from_slice(&std::fs::read(&p).expect("state.json")).expect("json")
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// What the host sees of the VMM process: no capability, no_new_privs, seccomp, an
/// unprivileged uid, namespaces of its own, a root holding only its files, its cgroup.
fn check_confinement(d: &Daemon, uuid: uuid::Uuid) {
    let vm = d.client().get_vm(uuid).expect("get");
    let pid = vm.pid.expect("the VMM's pid");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "vmm", "the guest's process is the VMM");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(pid, set),
            "0000000000000000",
            "{set}: the VMM keeps no capability"
        );
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(
        status_field(pid, "Seccomp"),
        "2",
        "the VMM runs under seccomp"
    );
    let uid: u32 = status_field(pid, "Uid")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("uid");
    assert!(
        uid >= 0x1000_0000,
        "the VMM runs as a zone's uid, not {uid}"
    );
    for ns in ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("ns");
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("ns");
        assert_ne!(mine, its, "the VMM shares the host's {ns} namespace");
    }
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("the VMM's root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Its shared libraries (if the VMM is not static) sit where the host has them.
    let allowed = [
        ".hull-dev",
        "dev",
        "lib",
        "lib64",
        "proc",
        "run",
        "sys",
        "usr",
        "vm",
        "vmm",
    ];
    assert!(
        names.iter().all(|n| allowed.contains(&n.as_str())),
        "the VMM's root holds only its own files: {names:?}"
    );
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    let mut vm_files: Vec<String> = std::fs::read_dir(root.join("vm"))
        .expect("/vm")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    vm_files.sort();
    // The host's saved KVM CPUID table, which vmmd made once and the VMM reads (read-only)
    // instead of asking KVM.
    assert_eq!(vm_files, ["cpuid", "disk0", "kernel"]);
    assert!(
        d.data_root().join("zones/.kvm-cpuid").is_file(),
        "vmmd keeps the table in its zones directory"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        cmdline
            .windows(b"--cpuid\0/vm/cpuid\0".len())
            .any(|w| w == b"--cpuid\0/vm/cpuid\0"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    assert!(
        std::fs::write(root.join("vm/cpuid"), b"x").is_err(),
        "the table is read-only in the VMM's zone"
    );
    assert_eq!(
        std::fs::read_dir(root.join(".hull-dev"))
            .expect(".hull-dev")
            .count(),
        0,
        "the KVM node's staging directory is hidden"
    );
    assert!(
        std::fs::write(root.join("vmm-was-here"), b"x").is_err(),
        "the VMM's root is read-only"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        cgroup.contains(&format!("hull/{uuid}")),
        "the VMM is in the guest's cgroup: {cgroup}"
    );
}

#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_lifecycle_console_confinement_and_stop() {
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a60";
    d.install_image(image, "zvol");
    let uuid = create(&d, image, "testguest.hold=kbd", true);
    assert_eq!(state(&d, uuid), "running");
    let seen = console_until(&d, uuid, "testguest: waiting for ctrl-alt-del");
    assert!(
        seen.contains("read sector 0, magic HULLDISK") && seen.contains("write sector 1"),
        "the guest used its disk: {seen}"
    );
    assert!(
        seen.contains("testguest: ALL PASS"),
        "the test guest reported a failure: {seen}"
    );
    check_confinement(&d, uuid);

    // vmadm info: the VMM's own figures, from its control socket.
    let o = d.vmadm(&["info", &uuid.to_string(), "cpus,devices"], None);
    assert!(o.status.success(), "{}", text(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info is JSON");
    assert_eq!(info["cpus"].as_array().map(Vec::len), Some(1), "{info}");
    let devices = info["devices"].as_array().expect("devices");
    let disk = devices
        .iter()
        .find(|d| d["name"].as_str().is_some_and(|n| n.contains("vda")))
        .unwrap_or_else(|| panic!("no vda in {info}"));
    assert!(disk["read_bytes"].as_u64() >= Some(512), "{info}");
    assert!(disk["written_bytes"].as_u64() >= Some(512), "{info}");
    assert!(info.get("status").is_none(), "only the asked types: {info}");
    // The VMM, inside its zone, moves its disk's data through io_uring where the host's
    // kernel has it on (the zone's filter leaves io_uring to the VMM's own restricted ring).
    let o = d.vmadm(&["info", &uuid.to_string(), "disk_io"], None);
    assert!(o.status.success(), "{}", text(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info is JSON");
    let io_uring_on = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map_or(true, |v| v.trim() == "0");
    assert_eq!(
        info["disk_io"],
        if io_uring_on { "io_uring" } else { "threads" },
        "{info}"
    );
    // Its exits by kind and address, and its balloon: vmmd gives every microVM one asking
    // nothing (the test guest has no balloon driver, so nothing moved).
    let o = d.vmadm(&["info", &uuid.to_string(), "exits,balloon"], None);
    assert!(o.status.success(), "{}", text(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info is JSON");
    let exits = info["exits"].as_array().expect("exits");
    assert!(
        exits.iter().any(|e| e["kind"] == "mmio_write"),
        "the guest notified its virtio queues: {info}"
    );
    assert_eq!(info["balloon"]["target_bytes"], 0, "{info}");
    assert_eq!(info["balloon"]["actual_bytes"], 0, "{info}");
    assert_eq!(info["balloon"]["errors"], 0, "{info}");
    let o = d.vmadm(&["info", &uuid.to_string(), "vnc"], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // zlogin is for zones: the VMM's zone has no way in.
    let o = std::process::Command::new(bin("zlogin"))
        .env("HULL_SOCKET", d.socket())
        .args([&uuid.to_string(), "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("zlogin");
    assert!(!o.status.success(), "zlogin into a microVM: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("microVM"),
        "{}",
        text(&o)
    );

    // A graceful stop goes through the VMM: the guest sees Ctrl-Alt-Del and resets, which
    // while stopping means stopped.
    let t = Instant::now();
    let o = d.vmadm(&["stop", &uuid.to_string()], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    assert_eq!(state(&d, uuid), "stopped");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the stop waited for its timeout instead of the guest"
    );
    let vm = d.client().get_vm(uuid).expect("get");
    assert_eq!(vm.exit_status, Some(0), "the VMM ended cleanly");
    // The guest's write is in its own disk, and the image is untouched.
    let disk = vm.disks[0].path.clone().expect("disk path");
    let bytes = std::fs::read(&disk).expect("the guest's disk");
    assert_eq!(&bytes[..8], b"HULLDISK");
    assert_eq!(&bytes[512..521], b"HULLWROTE", "the guest wrote sector 1");
    let image_disk = d.data_root().join(format!("images/{image}/disk.img"));
    let image_bytes = std::fs::read(&image_disk).expect("the image's disk");
    assert_ne!(&image_bytes[512..521], b"HULLWROTE", "the image changed");

    // Started again, it boots afresh; deleting it leaves nothing behind.
    let o = d.vmadm(&["start", &uuid.to_string()], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    console_until(&d, uuid, "testguest: waiting for ctrl-alt-del");
    let o = d.vmadm(&["stop", "-F", &uuid.to_string()], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.vmadm(&["delete", &uuid.to_string()], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!Path::new(&disk).exists(), "the disk outlived its VM");
    let leftover = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.contains(&uuid.to_string()));
    assert!(!leftover, "a mount of the VM is left on the host");
}

/// A cgroup file of the guest's zone: the v1 hierarchy of `controller`, or the v2 group.
fn zone_cgroup_file(uuid: uuid::Uuid, v1: (&str, &str), v2: &str) -> String {
    let p1 = format!("/sys/fs/cgroup/{}/hull/{uuid}/{}", v1.0, v1.1);
    let p2 = format!("/sys/fs/cgroup/hull/{uuid}/{v2}");
    std::fs::read_to_string(&p1)
        .or_else(|_| std::fs::read_to_string(&p2))
        .unwrap_or_else(|e| panic!("neither {p1} nor {p2}: {e}"))
        .trim()
        .to_string()
}

/// Limits sent to a running microVM reach its VMM's cgroup at once (CPU, pids); a memory
/// change waits for the next boot, and the record's warnings say so until then. The notes
/// the host made at start (what it cannot enforce) are warnings too, kept across a vmmd
/// restart.
#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_limits_change_live_and_memory_at_next_boot() {
    hull_tests::require_root_and_kvm();
    let mut d = Daemon::start();
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a61";
    d.install_image(image, "zvol");
    let uuid = create(&d, image, "testguest.hold=kbd", true);
    console_until(&d, uuid, "testguest: waiting for ctrl-alt-del");
    let u = uuid.to_string();
    let memory = || zone_cgroup_file(uuid, ("memory", "memory.limit_in_bytes"), "memory.max");
    let booted_memory = memory();
    // What zoned noted at start is in the record.
    let notes: Vec<String> = zone_state(&d, uuid)["notes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let warnings = texts(&d.client().get_vm(uuid).expect("get").warnings);
    for n in &notes {
        assert!(
            warnings.contains(&format!("this host: {n}")),
            "start note {n:?} missing from {warnings:?}"
        );
    }

    let o = d.vmadm(
        &[
            "update",
            &u,
            "cpu_cap=30",
            "max_lwps=77",
            "ram=96",
            "cmdline=console=ttyS0 testguest.hold=kbd hull.test=1",
        ],
        None,
    );
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    assert_eq!(
        zone_cgroup_file(uuid, ("cpu", "cpu.cfs_quota_us"), "cpu.max")
            .split_whitespace()
            .next(),
        Some("30000"),
        "cpu_cap reached the running VMM's cgroup"
    );
    assert_eq!(
        zone_cgroup_file(uuid, ("pids", "pids.max"), "pids.max"),
        "77",
        "max_lwps reached the running VMM's cgroup"
    );
    assert_eq!(
        memory(),
        booted_memory,
        "the running VMM keeps its memory limit"
    );
    let vm = d.client().get_vm(uuid).expect("get");
    assert_eq!((vm.ram, vm.cpu_cap, vm.max_lwps), (96, Some(30), 77));
    let pending = |w: &[String]| {
        w.iter()
            .any(|w| w.starts_with("memory: changed while it runs"))
    };
    let warnings = texts(&vm.warnings);
    assert!(pending(&warnings), "{warnings:?}");
    let cmdline = "changed while it runs, takes effect at its next boot: cmdline".to_string();
    assert!(warnings.contains(&cmdline), "{warnings:?}");
    // The warnings are stored with the record.
    d.kill9();
    d.spawn();
    let warnings = texts(&d.client().get_vm(uuid).expect("get").warnings);
    assert!(pending(&warnings), "after a vmmd restart: {warnings:?}");
    for n in &notes {
        assert!(
            warnings.contains(&format!("this host: {n}")),
            "{warnings:?}"
        );
    }

    // The next boot takes the new memory, and the warning goes.
    let o = d.vmadm(&["stop", "-F", &u], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.vmadm(&["start", &u], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    console_until(&d, uuid, "testguest: waiting for ctrl-alt-del");
    let warnings = texts(&d.client().get_vm(uuid).expect("get").warnings);
    assert!(!pending(&warnings), "{warnings:?}");
    assert!(!warnings.contains(&cmdline), "{warnings:?}");
    assert_ne!(
        memory(),
        booted_memory,
        "the new boot has the new memory limit"
    );
    let o = d.vmadm(&["stop", "-F", &u], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.vmadm(&["delete", &u], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// A microVM that learned its address by DHCP (answered by its VMM) reaches a zone on the
/// same nic tag: ARP and an ICMP echo through the switch, anti-spoofing on.
#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_with_a_dhcp_address_pings_a_zone_on_its_switch() {
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    hull_tests::zone::install(&d);
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a63";
    d.install_image(image, "zvol");
    let o = d.run("nictagadm", &["add", "-l", "pingsw"], None);
    assert!(o.status.success(), "{}", text(&o));
    let zone = hull_tests::zone::create(
        &d,
        json!({"nics": [{"nic_tag": "pingsw", "ips": ["192.0.2.41/24"], "primary": true}]}),
    );
    let payload = json!({"brand": "kvm", "alias": "pingvm", "ram": 64, "autoboot": true,
        "kernel": hull_tests::testguest().to_string_lossy(),
        "cmdline": "console=ttyS0 testguest.dhcp=1 testguest.ping=192.0.2.41 testguest.hold=kbd",
        "disks": [{"image_uuid": image, "boot": true}],
        "nics": [{"nic_tag": "pingsw", "ips": ["192.0.2.40/24"], "primary": true}]});
    let vm = d.client().create_vm(&payload).expect("create");
    let seen = console_until(&d, vm.uuid, "testguest: waiting for ctrl-alt-del");
    assert!(seen.contains("PASS dhcp: 192.0.2.40/24"), "{seen}");
    assert!(
        seen.contains("PASS ping: 192.0.2.41 answered our echo from the leased address"),
        "{seen}"
    );
    for uuid in [vm.uuid.to_string(), zone] {
        let o = d.vmadm(&["delete", &uuid], None);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = d.run("nictagadm", &["delete", "pingsw"], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// The guest finds SMBIOS saying SmartOS with its uuid and reads its metadata over COM2
/// from vmmd's agent, also after a vmmd restart and a reboot.
#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_reads_its_metadata_over_com2_from_vmmd() {
    hull_tests::require_root_and_kvm();
    let mut d = Daemon::start();
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a60";
    d.install_image(image, "zvol");
    let uuid = create(&d, image, "testguest.mdata=1 testguest.hold=kbd", true);
    let seen = console_until(&d, uuid, "testguest: waiting for ctrl-alt-del");
    assert!(
        seen.contains(&format!(
            "PASS smbios: Joyent SmartDC HVM, a virtual machine, serial {uuid}"
        )),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("PASS mdata: COM2 negotiated V2, sdc:uuid {uuid}")),
        "{seen}"
    );
    assert!(seen.contains("testguest: ALL PASS"), "{seen}");
    // vmmd restarts; the guest's next boot is answered by the new vmmd's agent.
    d.kill9();
    d.spawn();
    let o = d.vmadm(&["reboot", &uuid.to_string()], None);
    assert!(o.status.success(), "{}", text(&o));
    let t = Instant::now();
    loop {
        let seen = console_until(&d, uuid, "testguest: waiting for ctrl-alt-del");
        if seen.matches("PASS mdata: COM2").count() >= 2 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{seen}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = d.vmadm(&["delete", &uuid.to_string()], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// A guest that resets itself reboots (a new VMM, the zone's boot count goes up); one that
/// triple-faults is stopped with the VMM's report as its failure, and nothing else is hurt.
#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_reboots_on_reset_and_fails_on_a_fault() {
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a61";
    d.install_image(image, "zvol");

    // No hold: after its checks the guest resets through the i8042, over and over.
    let looping = create(&d, image, "", true);
    let t = Instant::now();
    while zone_state(&d, looping)["boots"].as_u64().unwrap_or(0) < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the guest did not reboot: {}; log: {}",
            zone_state(&d, looping),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(state(&d, looping), "running");

    let faulty = create(&d, image, "testguest.fault=1", true);
    wait_state(&d, faulty, "stopped", Duration::from_secs(30));
    let vm = d.client().get_vm(faulty).expect("get");
    let failure = vm.failure.clone().unwrap_or_default();
    assert!(
        failure.contains("fault"),
        "the failure names the guest's fault: {failure:?}"
    );
    assert_eq!(
        vm.exit_status,
        Some(2),
        "the VMM's status for a guest fault"
    );
    assert_eq!(state(&d, looping), "running", "the other guest carries on");

    let o = d.vmadm(&["stop", &looping.to_string()], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    assert_eq!(state(&d, looping), "stopped");
    for uuid in [looping, faulty] {
        let o = d.vmadm(&["delete", &uuid.to_string()], None);
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// A guest that feeds its block device malformed chains (a loop, a buffer outside its RAM, a
/// read-only status byte, an avail index far past the ring) and then spins with interrupts
/// off hurts only itself: the VMM refuses the chains and counts them as device errors, keeps
/// running, and is killed at its stop's deadline; another guest carries on and stops cleanly.
#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_guests_that_corrupt_queues_or_spin_hurt_only_themselves() {
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a62";
    d.install_image(image, "zvol");
    let bad = create(&d, image, "testguest.corrupt=1 testguest.spin=1", true);
    let good = create(&d, image, "testguest.hold=kbd", true);
    let seen = console_until(&d, bad, "testguest: spinning");
    assert!(
        seen.contains("avail index moved") && seen.contains("testguest: ALL PASS"),
        "the VMM answered every malformed chain and kept serving: {seen}"
    );
    assert_eq!(state(&d, bad), "running", "the VMM survived its guest");
    let o = d.vmadm(&["info", &bad.to_string(), "devices"], None);
    assert!(o.status.success(), "{}", text(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info is JSON");
    let errors = info["devices"]
        .as_array()
        .and_then(|ds| {
            ds.iter()
                .find(|d| d["name"].as_str().is_some_and(|n| n.contains("vda")))
        })
        .and_then(|d| d["errors"].as_u64());
    assert!(errors >= Some(3), "the refused chains are counted: {info}");
    console_until(&d, good, "testguest: waiting for ctrl-alt-del");

    // The spinning guest answers neither the power button nor Ctrl-Alt-Del: the stop kills
    // it at its deadline.
    let o = d.vmadm(&["stop", "-t", "2", &bad.to_string()], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    assert_eq!(state(&d, bad), "stopped");
    assert_eq!(state(&d, good), "running", "the other guest carries on");
    let o = d.vmadm(&["stop", &good.to_string()], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    let vm = d.client().get_vm(good).expect("get");
    assert_eq!(vm.exit_status, Some(0), "the other guest ended cleanly");
    for uuid in [bad, good] {
        let o = d.vmadm(&["delete", &uuid.to_string()], None);
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// Where a file system cannot id-map mounts (ramfs here; tmpfs before Linux 6.3, a live
/// image's root), the VMM's files are bound as they are: its disk is handed to the zone's
/// root, its kernel only needs to be readable.
#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_files_on_a_file_system_without_idmapped_mounts() {
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    let ramfs = d.dir.path().join("ramfs");
    std::fs::create_dir(&ramfs).expect("mkdir");
    nix::mount::mount(
        Some("ramfs"),
        &ramfs,
        Some("ramfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=755"),
    )
    .expect("mount a ramfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(&ramfs);
    let kernel = ramfs.join("testguest.elf");
    std::fs::copy(hull_tests::testguest(), &kernel).expect("kernel");
    let disk = ramfs.join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..8].copy_from_slice(b"HULLDISK");
    std::fs::write(&disk, &bytes).expect("disk");
    let payload = json!({"brand": "bhyve", "alias": "ramfs", "ram": 64, "autoboot": true,
        "kernel": kernel, "cmdline": "console=ttyS0 testguest.hold=kbd",
        "disks": [{"path": disk, "boot": true}]});
    let vm = d.client().create_vm(&payload).expect("create and start");
    console_until(&d, vm.uuid, "testguest: waiting for ctrl-alt-del");
    let seen = console_until(&d, vm.uuid, "testguest: ALL PASS");
    assert!(seen.contains("write sector 1"), "{seen}");
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&disk).expect("disk").uid();
    assert!(
        owner >= 0x1000_0000,
        "the disk was handed to the zone's root: {owner}"
    );
    let o = d.vmadm(&["stop", &vm.uuid.to_string()], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    let written = std::fs::read(&disk).expect("disk");
    assert_eq!(&written[512..521], b"HULLWROTE");
    let o = d.vmadm(&["delete", &vm.uuid.to_string()], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(disk.exists(), "a disk the user brought is never deleted");
}

/// A raw socket on a bridge (AF_PACKET, every protocol), closed when dropped.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn on(ifname: &str) -> PacketSocket {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor from socket(2), owned from here on.
        let sock = PacketSocket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let name = std::ffi::CString::new(ifname).expect("name");
        // SAFETY: if_nametoindex reads a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: bind with a sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        sock
    }

    /// The next frame within `limit` whose payload holds `needle`.
    /// The first frame holding any of `needles`, and which one it holds.
    fn wait_for_first(&self, needles: &[&[u8]], limit: Duration) -> Option<(usize, Vec<u8>)> {
        use std::os::fd::AsRawFd;
        let t = Instant::now();
        while t.elapsed() < limit {
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd we own.
            if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
                continue;
            }
            let mut buf = vec![0u8; 2048];
            // SAFETY: recv into a buffer of the length given.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                buf.truncate(n as usize);
                let hit = needles
                    .iter()
                    .position(|needle| buf.windows(needle.len()).any(|w| w == *needle));
                if let Some(i) = hit {
                    return Some((i, buf));
                }
            }
        }
        None
    }

    fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: send from a buffer of the length given.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A microVM's NIC: a TAP made by vmmd on the tag's bridge, opened by zoned and handed to the
/// VMM (whose zone has no /dev/net/tun). The guest's frame crosses the bridge, and the answer
/// sent on the bridge reaches the guest.
#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_nic_carries_frames_both_ways_over_its_bridge() {
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a62";
    d.install_image(image, "zvol");
    let o = d.run("nictagadm", &["add", "-l", "vmsw"], None);
    assert!(o.status.success(), "{}", text(&o));
    // The bridge is made here so the capture is listening before the guest boots (vswitch
    // takes a bridge that exists); one a failed run left goes first.
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "hb-vmsw"])
        .output();
    let o = std::process::Command::new("ip")
        .args(["link", "add", "hb-vmsw", "type", "bridge"])
        .output()
        .expect("ip");
    assert!(o.status.success(), "{}", text(&o));
    let o = std::process::Command::new("ip")
        .args(["link", "set", "hb-vmsw", "up"])
        .output()
        .expect("ip");
    assert!(o.status.success(), "{}", text(&o));
    // As vswitch does for its bridges: the host sends nothing of its own into the segment.
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/hb-vmsw/disable_ipv6", "1");
    let capture = PacketSocket::on("hb-vmsw");
    // The guest first leases its address by DHCP, which the VMM answers itself.
    let payload = json!({"brand": "kvm", "alias": "netvm", "ram": 64, "autoboot": true,
        "kernel": hull_tests::testguest().to_string_lossy(),
        "cmdline": "console=ttyS0 testguest.dhcp=1 testguest.net_echo=1 testguest.hold=kbd",
        "disks": [{"image_uuid": image, "boot": true}],
        "hostname": "netvm", "resolvers": ["192.0.2.53"],
        // The test guest's frames are of a local experimental type (0x88b5), which the
        // switch lets through only with allow_restricted_traffic.
        "nics": [{"nic_tag": "vmsw", "ips": ["192.0.2.40/24"], "primary": true,
            "gateways": ["192.0.2.1"], "allow_restricted_traffic": true}]});
    let vm = d.client().create_vm(&payload).expect("create");
    // DHCP's magic cookie: no DHCP frame of the guest's reaches the bridge before its ping.
    let (which, ping) = capture
        .wait_for_first(
            &[b"hull-net-test ping", &[99, 130, 83, 99]],
            Duration::from_secs(20),
        )
        .expect("the guest's frame on the bridge");
    assert_eq!(which, 0, "a DHCP frame reached the bridge: {ping:?}");
    let mut pong = Vec::new();
    pong.extend_from_slice(&ping[6..12]);
    pong.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    pong.extend_from_slice(&[0x88, 0xb5]);
    pong.extend_from_slice(b"hull-net-test pong");
    pong.resize(60, 0);
    capture.send(&pong);
    let seen = console_until(&d, vm.uuid, "testguest: waiting for ctrl-alt-del");
    assert!(
        seen.contains("received the peer's answer") && seen.contains("testguest: ALL PASS"),
        "{seen}"
    );
    assert!(
        seen.contains("PASS dhcp: 192.0.2.40/24 router 192.0.2.1 dns 192.0.2.53 hostname netvm"),
        "the guest leased its record's address: {seen}"
    );
    let mac = vm.nics[0].mac.expect("mac");
    assert!(
        seen.contains(&format!("testguest: net: mac {mac}")),
        "the guest's NIC has the record's MAC {mac}: {seen}"
    );
    assert_eq!(ping[6..12], mac.bytes());
    let tap = hull_vswitch::tap_name(&vm.uuid.to_string(), 0);
    let pid = d.client().get_vm(vm.uuid).expect("get").pid.expect("pid");
    let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).expect("the VMM's fd 3");
    assert_eq!(fd3, Path::new("/dev/net/tun"), "the VMM holds its TAP open");
    assert!(
        !Path::new(&format!("/proc/{pid}/root/dev/net")).exists(),
        "the VMM's zone has no /dev/net/tun"
    );
    let o = d.vmadm(&["stop", &vm.uuid.to_string()], None);
    assert!(o.status.success(), "{}", text(&o));
    let links = hull_vswitch::host_links().expect("links");
    assert!(!links.contains(&tap), "the TAP outlived the VM: {links:?}");
    let o = d.vmadm(&["delete", &vm.uuid.to_string()], None);
    assert!(o.status.success(), "{}", text(&o));
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "hb-vmsw"])
        .status();
}

/// `update_disks` with a size grows the disk file itself (sparsely). Stopped: the file grows,
/// a smaller size is refused naming the property, and after a vmmd restart the record says
/// what the file holds. Running: the VMM takes the new size and the test guest, waiting for
/// the configuration change interrupt, sees and uses it; a VMM that cannot be reached fails
/// the update and leaves file and record as they were.
#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_disk_grows_stopped_and_running() {
    use std::os::unix::fs::MetadataExt;
    hull_tests::require_root_and_kvm();
    let mut d = Daemon::start();
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a62";
    d.install_image(image, "zvol");
    let uuid = create(
        &d,
        image,
        "testguest.hold=kbd testguest.blk_resize=1",
        false,
    );
    let u = uuid.to_string();
    assert_eq!(state(&d, uuid), "stopped");
    let disk = d.client().get_vm(uuid).expect("get").disks[0]
        .path
        .clone()
        .expect("disk path");
    let file_len = || std::fs::metadata(&disk).expect("disk").len();
    let record_size = |d: &Daemon| d.client().get_vm(uuid).expect("get").disks[0].size;
    assert_eq!(file_len(), 4 << 20);
    let grow = |d: &Daemon, mib: u64| {
        let payload = json!({"update_disks": [{"path": disk, "size": mib}]}).to_string();
        d.vmadm(&["update", &u], Some(&payload))
    };

    // Stopped: the file grows without writing blocks.
    let o = grow(&d, 16);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    assert_eq!(file_len(), 16 << 20);
    assert_eq!(record_size(&d), Some(16));
    let meta = std::fs::metadata(&disk).expect("disk");
    assert!(
        meta.blocks() * 512 <= 8 << 20,
        "the grow wrote blocks: {} allocated",
        meta.blocks() * 512
    );
    let o = grow(&d, 8);
    assert_eq!(o.status.code(), Some(1), "a shrink: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("update_disks.0.size"),
        "{}",
        text(&o)
    );
    assert_eq!((file_len(), record_size(&d)), (16 << 20, Some(16)));

    // A file grown behind vmmd's back (as if it stopped between the grow and the store):
    // after a restart the record says what the file holds.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .and_then(|f| f.set_len(20 << 20))
        .expect("grow the file");
    d.kill9();
    d.spawn();
    assert_eq!(record_size(&d), Some(20), "log: {}", d.log());

    // Running: the guest waits for the config change after its disk checks.
    let o = d.vmadm(&["start", &u], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    console_until(&d, uuid, "blk0: waiting for a config change");
    let capacity = |d: &Daemon| {
        let o = d.vmadm(&["info", &u, "devices"], None);
        assert!(o.status.success(), "{}", text(&o));
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info");
        info["devices"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == "vda"))
            .and_then(|d| d["capacity_bytes"].as_u64())
            .unwrap_or_else(|| panic!("no vda capacity in {info}"))
    };
    assert_eq!(capacity(&d), 20 << 20);
    let o = grow(&d, 32);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    assert_eq!((file_len(), record_size(&d)), (32 << 20, Some(32)));
    assert_eq!(capacity(&d), 32 << 20);
    let seen = console_until(&d, uuid, "testguest: waiting for ctrl-alt-del");
    for line in [
        "blk0: configuration change interrupt",
        "capacity 65536 sectors",
        "blk0: read the new last sector",
        "blk0: read past the new end refused with IOERR",
        "testguest: ALL PASS",
    ] {
        assert!(seen.contains(line), "{line:?} not in:\n{seen}");
    }

    // A VMM that cannot be reached: the update fails, file and record stay at 32 MiB.
    let ctl = d.data_root().join(format!("zones/{u}/vmm/control.sock"));
    let hidden = ctl.with_extension("hidden");
    std::fs::rename(&ctl, &hidden).expect("hide the control socket");
    let o = grow(&d, 40);
    std::fs::rename(&hidden, &ctl).expect("put the control socket back");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach its VMM"),
        "{}",
        text(&o)
    );
    assert_eq!((file_len(), record_size(&d)), (32 << 20, Some(32)));
    assert_eq!(capacity(&d), 32 << 20);

    let o = d.vmadm(&["stop", "-F", &u], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.vmadm(&["delete", &u], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// A record's warnings as the text the API carries.
fn texts(warnings: &[hull_spec::warning::Warning]) -> Vec<String> {
    warnings.iter().map(ToString::to_string).collect()
}

/// A zvol image whose disk is a bare ext4 filesystem holding `tree` (its first sector, which
/// ext4 leaves unused, carries the magic the test guest checks), with no kernel in its
/// manifest: a guest created from it boots what the disk says. Returns the image's uuid.
fn disk_boot_image(d: &Daemon, uuid: &str, grub_cfg: &str, kernel: &[u8]) -> String {
    let work = d.dir.path().join(uuid);
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("boot/grub")).expect("mkdir");
    std::fs::write(tree.join("boot/grub/grub.cfg"), grub_cfg).expect("grub.cfg");
    std::fs::write(tree.join("boot/vmlinuz-test"), kernel).expect("kernel");
    let disk = work.join("disk.img");
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&disk)
        .arg("16M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(made.success());
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("disk");
    f.write_all_at(b"HULLDISK", 0).expect("magic");
    drop(f);
    let (sha1, size) =
        hull_cowstore::archive::digest(std::fs::File::open(&disk).expect("open")).expect("digest");
    let manifest = work.join("manifest.json");
    let m = json!({"v": 2, "uuid": uuid, "name": "diskboot", "version": "1", "type": "zvol",
        "os": "linux", "image_size": 16, "files": [{"sha1": sha1, "size": size, "compression": "none"}]});
    std::fs::write(&manifest, m.to_string()).expect("manifest");
    let o = d.imgadm_install(&manifest, &disk);
    assert!(o.status.success(), "{}", text(&o));
    uuid.to_string()
}

fn grub_entry(options: &str) -> String {
    format!(
        "set default=\"hull\"\nmenuentry 'other' {{\n\tlinux /boot/missing\n}}\n\
         menuentry 'hull test guest' --id hull {{\n\tlinux /boot/vmlinuz-test {options}\n}}\n"
    )
}

#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_boots_the_kernel_its_disk_names_at_every_start() {
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    let guest = std::fs::read(hull_tests::testguest()).expect("test guest");
    let image = disk_boot_image(
        &d,
        "d15cb007-0000-4000-8000-000000000001",
        &grub_entry("testguest.hold=kbd hull.entry=first"),
        &guest,
    );
    let payload = json!({"brand": "kvm", "alias": "diskboot", "ram": 64, "autoboot": true,
        "disks": [{"image_uuid": image, "boot": true}]});
    let o = d.vmadm(&["create"], Some(&payload.to_string()));
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    let uuid = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .chain(String::from_utf8_lossy(&o.stderr).split_whitespace())
        .find_map(|w| uuid::Uuid::parse_str(w).ok())
        .expect("uuid");
    let seen = console_until(&d, uuid, "testguest: waiting for ctrl-alt-del");
    assert!(
        seen.contains("BOOT_IMAGE=/boot/vmlinuz-test testguest.hold=kbd hull.entry=first console=ttyS0 reboot=k pci=off"),
        "GRUB's BOOT_IMAGE, the entry's options, then hull's console: {seen}"
    );
    assert!(seen.contains("read sector 0, magic HULLDISK"), "{seen}");
    assert!(seen.contains("testguest: ALL PASS"), "{seen}");
    let vm = d.client().get_vm(uuid).expect("get");
    assert_eq!(
        vm.kernel, None,
        "the record keeps no kernel: the disk decides each start"
    );
    let disk = vm.disks[0].path.clone().expect("disk path");
    // The guest changes its own boot config (as `apt upgrade` does; here debugfs writes it
    // while the test guest, which never reads its ext4, runs): its next boot, however it
    // comes, boots what the config says then.
    let set_entry = |entry: &str| {
        let cfg = d.dir.path().join(format!("{entry}.cfg"));
        std::fs::write(
            &cfg,
            grub_entry(&format!("testguest.hold=kbd hull.entry={entry}")),
        )
        .expect("cfg");
        for request in [
            "rm /boot/grub/grub.cfg".to_string(),
            format!("write {} /boot/grub/grub.cfg", cfg.display()),
        ] {
            let o = std::process::Command::new("debugfs")
                .args(["-w", "-R", &request])
                .arg(&disk)
                .output()
                .expect("debugfs");
            assert!(o.status.success(), "{}", text(&o));
        }
    };
    let booted_again = |since: Option<String>| {
        let t = Instant::now();
        loop {
            let vm = d.client().get_vm(uuid).expect("get");
            if vm.state.as_str() == "running" && vm.boot_timestamp != since {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "not booted again; log: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let shows = |entry: &str| {
        let seen = console_until(&d, uuid, "testguest: waiting for ctrl-alt-del");
        assert!(
            seen.contains(&format!("hull.entry={entry} console=ttyS0"))
                && seen.contains("testguest: ALL PASS"),
            "{entry}: {seen}"
        );
    };
    // 1. The guest resets itself (Ctrl-Alt-Del, which the test guest answers with a reset).
    set_entry("after-reset");
    let since = d.client().get_vm(uuid).expect("get").boot_timestamp;
    let ctl = d.data_root().join(format!("zones/{uuid}/vmm/control.sock"));
    let mut c = std::os::unix::net::UnixStream::connect(&ctl).expect("control socket");
    use std::io::Write;
    c.write_all(b"{\"cmd\":\"ctrl_alt_del\"}\n")
        .expect("ctrl_alt_del");
    booted_again(since);
    shows("after-reset");
    // 2. vmadm reboot.
    set_entry("after-reboot");
    let o = d.vmadm(&["reboot", &uuid.to_string()], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    shows("after-reboot");
    // 3. vmadm stop, then start.
    let o = d.vmadm(&["stop", "-F", &uuid.to_string()], None);
    assert!(o.status.success(), "{}", text(&o));
    wait_state(&d, uuid, "stopped", Duration::from_secs(20));
    set_entry("after-start");
    let o = d.vmadm(&["start", &uuid.to_string()], None);
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    shows("after-start");
    let o = d.vmadm(&["delete", &uuid.to_string()], None);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
#[ignore = "needs root and /dev/kvm: scripts/test runs it in tier 3"]
fn kvm_root_microvm_whose_disk_names_no_kernel_fails_with_the_reason_and_no_vmm() {
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    let cases = [
        (
            "d15cb007-0000-4000-8000-000000000002",
            grub_entry("quiet"),
            b"#!/bin/sh\n".to_vec(),
            "the kernel /boot/vmlinuz-test named by /boot/grub/grub.cfg is not a Linux kernel",
        ),
        (
            "d15cb007-0000-4000-8000-000000000003",
            format!("{}# {}\n", grub_entry("quiet"), "x".repeat(1 << 20)),
            hull_tests::testguest()
                .to_string_lossy()
                .as_bytes()
                .to_vec(),
            "longer than",
        ),
    ];
    for (image, cfg, kernel, why) in cases {
        let image = disk_boot_image(&d, image, &cfg, &kernel);
        let payload = json!({"brand": "kvm", "ram": 64, "autoboot": false,
            "disks": [{"image_uuid": image, "boot": true}]});
        let o = d.vmadm(&["create"], Some(&payload.to_string()));
        assert!(o.status.success(), "{}", text(&o));
        let uuid = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .chain(String::from_utf8_lossy(&o.stderr).split_whitespace())
            .find_map(|w| uuid::Uuid::parse_str(w).ok())
            .expect("uuid");
        let o = d.vmadm(&["start", &uuid.to_string()], None);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("cannot boot from its disk") && text(&o).contains(why),
            "{}",
            text(&o)
        );
        let vm = d.client().get_vm(uuid).expect("get");
        assert_eq!(vm.state.as_str(), "stopped");
        let failure = vm.failure.expect("the record says why");
        assert!(failure.contains(why), "{failure}");
        assert!(
            !d.data_root()
                .join(format!("zones/{uuid}/state.json"))
                .exists(),
            "a zone was started for it"
        );
        let o = d.vmadm(&["delete", &uuid.to_string()], None);
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// Snapshots of a microVM cover every disk: taken while it is stopped (reflinks on btrfs and
/// xfs, copies on an overlay data root); a rollback as SmartOS's: the running VM stopped,
/// its disks put back, newer snapshots destroyed, the VM started again.
#[test]
#[ignore = "needs root and /dev/kvm: run with --run-ignored"]
fn kvm_root_microvm_disk_snapshots_roll_back_every_disk() {
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a61";
    d.install_image(image, "zvol");
    let vm = hull_tests::two_disk_vm(&d, "kvm", image);
    let u = vm.uuid.to_string();
    let path = |i: usize| vm.disks[i].path.clone().expect("a disk path");
    let (vda, vdb) = (path(0), path(1));
    let put = |what: &str| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&vdb)
            .expect("vdb");
        f.write_all_at(format!("{what:<16}").as_bytes(), 4096)
            .expect("write");
    };
    let got = || {
        let b = std::fs::read(&vdb).expect("vdb");
        String::from_utf8_lossy(&b[4096..4112]).trim().to_string()
    };
    let ok = |args: &[&str]| {
        let o = d.vmadm(args, None);
        assert!(
            o.status.success(),
            "{args:?}: {}\nlog: {}",
            text(&o),
            d.log()
        );
    };
    put("first");
    let before = std::fs::read(&vda).expect("vda")[512..521].to_vec();
    ok(&["create-snapshot", &u, "s1"]);
    put("second");
    ok(&["create-snapshot", &u, "s2"]);
    put("third");
    ok(&["rollback-snapshot", &u, "s1"]);
    assert_eq!(got(), "first");
    let names: Vec<String> = d
        .client()
        .get_vm(vm.uuid)
        .expect("get")
        .snapshots
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1"], "the newer snapshot went with the rollback");

    // Running: the guest writes its boot disk; no snapshot of a running VM; a rollback stops
    // it, puts both disks back and starts it again.
    ok(&["start", &u]);
    console_until(&d, vm.uuid, "testguest: waiting for ctrl-alt-del");
    assert_ne!(
        std::fs::read(&vda).expect("vda")[512..521].to_vec(),
        before,
        "the guest wrote vda"
    );
    let o = d.vmadm(&["create-snapshot", &u, "s3"], None);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stop it first"),
        "{}",
        text(&o)
    );
    put("dirty");
    ok(&["rollback-snapshot", &u, "s1"]);
    assert_eq!(got(), "first", "vdb rolled back");
    assert_eq!(state(&d, vm.uuid), "running", "started again");
    ok(&["stop", "-F", &u]);
    ok(&["delete-snapshot", &u, "s1"]);
    assert!(
        d.client()
            .get_vm(vm.uuid)
            .expect("get")
            .snapshots
            .is_empty()
    );
    ok(&["delete", &u]);
}

/// `vmadm reprovision` of a microVM: its boot disk becomes a clone of the new image (same
/// size), its other disks stay, and it is started again; refused while it has snapshots.
#[test]
#[ignore = "needs root and /dev/kvm: run with --run-ignored"]
fn kvm_root_microvm_reprovision_replaces_its_boot_disk_only() {
    use std::os::unix::fs::FileExt;
    hull_tests::require_root_and_kvm();
    let d = Daemon::start();
    let (old, new) = (
        "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a62",
        "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a63",
    );
    d.install_image(old, "zvol");
    d.install_image(new, "zvol");
    let vm = hull_tests::two_disk_vm(&d, "bhyve", old);
    let u = vm.uuid.to_string();
    let path = |i: usize| vm.disks[i].path.clone().expect("a disk path");
    let mark = |p: &str, what: &[u8]| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("disk");
        f.write_all_at(what, 8192).expect("write");
    };
    let at = |p: &str| std::fs::read(p).expect("disk")[8192..8199].to_vec();
    mark(&path(0), b"OLDROOT");
    mark(&path(1), b"KEEPME!");
    let size0 = std::fs::metadata(path(0)).expect("disk0").len();
    let reprovision = || {
        d.vmadm(
            &["reprovision", &u],
            Some(&json!({"image_uuid": new}).to_string()),
        )
    };
    let o = d.vmadm(&["create-snapshot", &u, "s"], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = reprovision();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("snapshots"),
        "{}",
        text(&o)
    );
    let o = d.vmadm(&["delete-snapshot", &u, "s"], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = reprovision();
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    assert_eq!(at(&path(0)), [0u8; 7], "the boot disk is the new image's");
    assert_eq!(at(&path(1)), b"KEEPME!", "the other disk stays");
    assert_eq!(std::fs::metadata(path(0)).expect("disk0").len(), size0);
    let after = d.client().get_vm(vm.uuid).expect("get");
    assert_eq!(
        after.disks[0].image_uuid.map(|u| u.to_string()).as_deref(),
        Some(new)
    );
    assert_eq!(
        after.state.as_str(),
        "running",
        "started after, as SmartOS does"
    );
    console_until(&d, vm.uuid, "testguest: waiting for ctrl-alt-del");
    let o = d.vmadm(&["stop", "-F", &u], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.vmadm(&["delete", &u], None);
    assert!(o.status.success(), "{}", text(&o));
}
