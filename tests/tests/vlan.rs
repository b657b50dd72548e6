//! A VLAN segment on an uplink, through hull_vswitch alone (no vmmd: this binary also runs
//! under Debian's kernel in QEMU TCG, tests/nested/vlan, where 802.1Q exists; this host's
//! kernel has none). A veth pair stands in for the physical interface, its other end in a
//! namespace holding the peer, which speaks VLAN 5 and, untagged, the native segment.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use hull_vswitch::{Guard, PortConfig, Segment, Switch, Uplink, ZoneNic, bridge_name};

const OWNER: &str = "vlantest";
const UUID: &str = "5a5a5a5a-0000-4000-8000-000000000005";

/// A network namespace held by a sleeping process, killed when dropped.
struct Netns(Child);

impl Netns {
    fn new() -> Netns {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "1000"])
            .spawn()
            .expect("unshare");
        // Dropped (killed and reaped) on every way out of here.
        let child = Netns(child);
        let pid = child.pid();
        let mine = std::fs::read_link("/proc/self/ns/net").expect("my netns");
        for _ in 0..2000 {
            // unshare made it (sleep may be busybox: the namespace is the sign).
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("its netns");
            if ns != mine {
                return child;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("process {pid} never got a network namespace");
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-n", "-t", &self.pid().to_string(), "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    fn must(&self, args: &[&str]) {
        let o = self.run(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}: {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn host(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("ip")
}

fn kernel_has_8021q() -> bool {
    let probe = Netns::new();
    // A veth pair to hang it on: some kernels (this host's) have no dummy devices.
    probe.must(&[
        "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    probe
        .run(&[
            "ip", "link", "add", "link", "d0", "name", "d0.5", "type", "vlan", "id", "5",
        ])
        .status
        .success()
}

fn nic(vlan: u16, ip: Ipv4Addr) -> ZoneNic {
    let mac = [0x02, 0x5a, 0, 0, 0, 5];
    ZoneNic {
        port: PortConfig {
            uuid: UUID.into(),
            number: 0,
            segment: Segment {
                tag: "vlt".into(),
                bridge: bridge_name("vlt", Some(vlan)),
                uplink: Some(Uplink {
                    iface: "vlt-up".into(),
                    vlan: Some(vlan),
                }),
            },
            mtu: None,
            guard: Guard {
                mac,
                ipv4: Some(vec![(ip, 32)]),
                ipv6: Some(vec![]),
                any_mac: false,
                dhcp_server: false,
                any_ethertype: false,
                blocked_ports: Vec::new(),
            },
            cap_mbps: None,
        },
        name: "net0".into(),
        mac,
        addrs: vec![(IpAddr::V4(ip), 24)],
        gateways: Vec::new(),
        primary: true,
        vrrp: false,
    }
}

/// A zone NIC on VLAN 5 of an uplink reaches the peer's VLAN 5 and not its untagged
/// segment; where the kernel has no 802.1Q, the plumbing fails naming 8021q and leaves no
/// link. Removing the ports and the tag leaves no sub-interface or bridge.
#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_a_vlan_segment_rides_an_8021q_sub_interface() {
    let peer = Netns::new();
    let zone = Netns::new();
    let _ = host(&["link", "del", "vlt-up"]);
    let o = host(&[
        "link",
        "add",
        "vlt-up",
        "type",
        "veth",
        "peer",
        "name",
        "vlt-peer",
        "netns",
        &peer.pid().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    peer.must(&["ip", "addr", "add", "203.0.113.100/24", "dev", "vlt-peer"]);
    peer.must(&["ip", "link", "set", "vlt-peer", "up"]);
    let ip = Ipv4Addr::new(203, 0, 113, 55);
    let switch = Switch::new(OWNER);
    let plumbed = switch.plumb_zone(UUID, zone.pid() as i32, &[nic(5, ip)], &[]);
    if kernel_has_8021q() {
        plumbed.unwrap_or_else(|e| panic!("plumb: {e:?}"));
        let reaches = |target: &str| {
            (0..4).any(|_| {
                zone.run(&["ping", "-c", "1", "-W", "1", target])
                    .status
                    .success()
            })
        };
        // The peer only on the untagged segment: out of the zone's reach.
        assert!(
            !reaches("203.0.113.100"),
            "VLAN 5 must not reach the peer's untagged segment"
        );
        // The peer on VLAN 5, and off the untagged segment (the same subnet: its replies
        // would leave untagged).
        peer.must(&["ip", "addr", "del", "203.0.113.100/24", "dev", "vlt-peer"]);
        peer.must(&[
            "ip",
            "link",
            "add",
            "link",
            "vlt-peer",
            "name",
            "vlt-peer.5",
            "type",
            "vlan",
            "id",
            "5",
        ]);
        peer.must(&["ip", "addr", "add", "203.0.113.105/24", "dev", "vlt-peer.5"]);
        peer.must(&["ip", "link", "set", "vlt-peer.5", "up"]);
        if !reaches("203.0.113.105") {
            let show = |o: Output| text(&o);
            panic!(
                "VLAN 5 does not reach the peer's VLAN 5\nping: {}\nhost: {}\nzone: {}\npeer: {}\nnft: {}",
                show(zone.run(&["ping", "-c", "1", "-W", "1", "203.0.113.105"])),
                show(host(&["-d", "-s", "link"])),
                show(zone.run(&["ip", "-s", "addr"])),
                show(peer.run(&["ip", "-s", "addr"])),
                show(
                    Command::new("nft")
                        .args(["list", "ruleset"])
                        .output()
                        .expect("nft")
                ),
            );
        }
        // The guard holds here too (this kernel's nf_tables takes hull's messages): a
        // forged source address does not get out.
        zone.must(&["ip", "addr", "add", "203.0.113.99/24", "dev", "net0"]);
        zone.must(&["ip", "neigh", "flush", "all"]);
        peer.must(&["ip", "neigh", "flush", "all"]);
        let forged = (0..3).any(|_| {
            zone.run(&[
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                "203.0.113.99",
                "203.0.113.105",
            ])
            .status
            .success()
        });
        assert!(!forged, "a forged source address got out");
        let links = hull_vswitch::host_links().expect("links");
        assert!(links.iter().any(|l| l == "vlt-up.5"), "{links:?}");
        println!("vlan: carried over 802.1Q");
    } else {
        let e = plumbed.expect_err("a VLAN without 8021q must fail");
        let msg = format!("{e}");
        assert!(msg.contains("802.1Q") && msg.contains("8021q"), "{msg}");
        let links = hull_vswitch::host_links().expect("links");
        assert!(
            !links.iter().any(|l| l.contains("vlt-up.")
                || l.starts_with("hb-vlt")
                || l.starts_with("hv5a5a")),
            "nothing half-made: {links:?}"
        );
        println!("vlan: this kernel has no 802.1Q; refused, nothing left");
    }
    switch.remove_ports(UUID).expect("remove ports");
    switch
        .release_tag("vlt", Some("vlt-up"))
        .expect("release the tag");
    let links = hull_vswitch::host_links().expect("links");
    assert!(
        !links
            .iter()
            .any(|l| l.contains("vlt-up.") || l.starts_with("hb-vlt")),
        "what the tag made is gone: {links:?}"
    );
    let tables = Command::new("nft").args(["list", "tables"]).output();
    if let Ok(t) = tables {
        let t = String::from_utf8_lossy(&t.stdout).into_owned();
        assert!(!t.contains(&format!("hull_{OWNER}")), "no table left: {t}");
    }
    let _ = host(&["link", "del", "vlt-up"]);
}
