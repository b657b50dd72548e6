//! Virtual switch benchmark (issue 5), run as root, in one run:
//!
//! - zone-to-zone TCP throughput (iperf3, one stream, median of runs, the three set-ups
//!   alternating): through hull's switch with anti-spoofing on (two ports plumbed by
//!   `hull_vswitch::Switch::plumb_zone` on one bridge, the guard table loaded), next to a plain
//!   Linux bridge without rules and a raw veth pair between the two namespaces;
//! - NIC setup time per zone: `plumb_zone` of one NIC (veth pair, bridge port, MAC, MTU,
//!   address, route, anti-spoofing entries) for zone 1, 2, ... N (default 500) on one
//!   bridge, reported for the first and the last 20, next to the same plumbing done with an
//!   `ip` script (five commands) and with two `ip -batch` calls, at 1 and at N zones.
//!
//! A zone here is what its network is: a network namespace, held by a sleeping process
//! (`unshare -n`); the zone runtime is bench-zones' business. Everything happens in a
//! network namespace of the benchmark's own (the switch's "host"), and in namespaces it
//! makes: the host's own namespace is never touched, and all of it goes when the benchmark
//! exits. Addresses come from the documentation ranges.
//!
//! Run: `cargo build --release -p hull-tests && sudo target/release/bench-net [runs] [zones]`
//! (default 5 runs of 5 s each, 500 zones). Prints Markdown for docs/PERFORMANCE.md.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_vswitch::{Guard, PortConfig, Segment, Switch, ZoneNic, bridge_name};

type Res<T> = Result<T, String>;

const OWNER: &str = "bench";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Network namespaces held by sleeping processes, killed when dropped.
#[derive(Default)]
struct Holders(Vec<Child>);

impl Holders {
    fn netns(&mut self) -> Res<u32> {
        // Killed with the benchmark, however it ends.
        let child = Command::new("setpriv")
            .args([
                "--pdeathsig",
                "KILL",
                "--",
                "unshare",
                "-n",
                "sleep",
                "infinity",
            ])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let pid = child.id();
        self.0.push(child);
        // The namespace exists once unshare has exec'd sleep.
        let mine = std::fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
        for _ in 0..1000 {
            let ns =
                std::fs::read_link(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if ns != mine && exe.to_string_lossy().ends_with("sleep") {
                return Ok(pid);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(format!(
            "process {pid} never got a network namespace of its own"
        ))
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn run(args: &[&str]) -> Res<String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !o.status.success() {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn in_ns(pid: u32, args: &[&str]) -> Res<String> {
    let p = pid.to_string();
    let mut v = vec!["nsenter", "-n", "-t", &p, "--"];
    v.extend_from_slice(args);
    run(&v)
}

fn batch(prefix: &[&str], script: &str) -> Res<()> {
    let mut c = Command::new(prefix[0]);
    c.args(&prefix[1..]).args(["ip", "-batch", "-"]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip -batch: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

/// The i-th documentation address (192.0.2.x, then 198.51.100.x, then 203.0.113.x).
fn address(i: usize) -> Res<Ipv4Addr> {
    let nets = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];
    let net = nets
        .get(i / 250)
        .ok_or("at most 750 zones (the documentation ranges)")?;
    Ok(Ipv4Addr::new(net[0], net[1], net[2], (i % 250 + 1) as u8))
}

fn uuid(i: usize, salt: u8) -> String {
    format!("{salt:02x}{i:06x}-0000-4000-8000-000000000000")
}

/// One NIC as vmmd would give it: anti-spoofing on (its MAC, its address).
fn nic(tag: &str, uuid: &str, i: usize, ip: Ipv4Addr) -> ZoneNic {
    let mac = [0x02, 0x42, (i >> 16) as u8, (i >> 8) as u8, i as u8, 1];
    ZoneNic {
        port: PortConfig {
            uuid: uuid.to_string(),
            number: 0,
            segment: Segment {
                tag: tag.to_string(),
                bridge: bridge_name(tag, None),
                uplink: None,
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

/// iperf3 from namespace `client` to `server_ip` in namespace `server`: Gbit/s received.
fn iperf(client: u32, server: u32, server_ip: &str, secs: u32) -> Res<f64> {
    let s = server.to_string();
    let mut srv = Command::new("nsenter")
        .args(["-n", "-t", &s, "--", "iperf3", "-s", "-1", "-p", "5202"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 -s: {e}"))?;
    let t = secs.to_string();
    let mut last = String::new();
    for _ in 0..100 {
        match in_ns(
            client,
            &["iperf3", "-c", server_ip, "-p", "5202", "-t", &t, "-J"],
        ) {
            // iperf3 may exit 0 with an error in its report (a server not listening yet).
            Ok(out)
                if serde_json::from_str::<serde_json::Value>(&out)
                    .is_ok_and(|v| v["end"]["sum_received"]["bits_per_second"].is_f64()) =>
            {
                let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
                // A one-off server ends after its test, or is ended.
                for _ in 0..100 {
                    if srv.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = srv.kill();
                let _ = srv.wait();
                return v["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .map(|b| b / 1e9)
                    .ok_or_else(|| format!("no rate in iperf3's report: {out}"));
            }
            Ok(out) | Err(out) => {
                let e = out;
                if let Ok(Some(st)) = srv.try_wait() {
                    return Err(format!(
                        "iperf3 -s in {server} ended ({st}) before a client came: {e}"
                    ));
                }
                last = e
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = format!(
        "{} {}",
        in_ns(server, &["ss", "-ltnp"]).unwrap_or_default(),
        in_ns(server, &["ip", "-br", "addr"]).unwrap_or_default()
    );
    let _ = srv.kill();
    let _ = srv.wait();
    Err(format!(
        "iperf3 never connected: {last}; the server's side: {seen}"
    ))
}

fn throughput(h: &mut Holders, switch: &Switch, runs: usize, secs: u32) -> Res<()> {
    // hull: two ports on one switch, guarded.
    let (a, b) = (h.netns()?, h.netns()?);
    let (ua, ub) = (uuid(1, 0xaa), uuid(2, 0xaa));
    let (ia, ib) = (Ipv4Addr::new(192, 0, 2, 201), Ipv4Addr::new(192, 0, 2, 202));
    switch
        .plumb_zone(&ua, a as i32, &[nic("tput", &ua, 1, ia)], &[])
        .map_err(|e| format!("plumb: {e}"))?;
    switch
        .plumb_zone(&ub, b as i32, &[nic("tput", &ub, 2, ib)], &[])
        .map_err(|e| format!("plumb: {e}"))?;
    // A plain bridge without rules, in a namespace of its own (no nf_tables there).
    let host = h.netns()?;
    let (c, d) = (h.netns()?, h.netns()?);
    in_ns(host, &["ip", "link", "add", "br0", "type", "bridge"])?;
    in_ns(host, &["ip", "link", "set", "br0", "up"])?;
    for (ns, end, ip) in [(c, "pc", "192.0.2.211/24"), (d, "pd", "192.0.2.212/24")] {
        let n = ns.to_string();
        in_ns(
            host,
            &[
                "ip", "link", "add", end, "type", "veth", "peer", "name", "net0", "netns", &n,
            ],
        )?;
        in_ns(host, &["ip", "link", "set", end, "master", "br0", "up"])?;
        in_ns(ns, &["ip", "addr", "add", ip, "dev", "net0"])?;
        in_ns(ns, &["ip", "link", "set", "net0", "up"])?;
    }
    // A raw veth pair between two namespaces.
    let (e, f) = (h.netns()?, h.netns()?);
    let fs = f.to_string();
    in_ns(
        e,
        &[
            "ip", "link", "add", "net0", "type", "veth", "peer", "name", "net0", "netns", &fs,
        ],
    )?;
    for (ns, ip) in [(e, "192.0.2.221/24"), (f, "192.0.2.222/24")] {
        in_ns(ns, &["ip", "addr", "add", ip, "dev", "net0"])?;
        in_ns(ns, &["ip", "link", "set", "net0", "up"])?;
    }
    let setups = [
        ("hull vswitch, anti-spoofing on", a, b, "192.0.2.202"),
        ("plain bridge, no rules", c, d, "192.0.2.212"),
        ("raw veth pair", e, f, "192.0.2.222"),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for run in 0..runs {
        for (k, (what, cl, sv, ip)) in setups.iter().enumerate() {
            let r = iperf(*cl, *sv, ip, secs)?;
            eprintln!("run {run}: {what}: {r:.2} Gbit/s");
            rates[k].push(r);
        }
    }
    let bridge = median(rates[1].clone());
    println!("### Zone-to-zone TCP ({runs} runs of {secs} s, iperf3, one stream, medians)\n");
    println!("| set-up | Gbit/s | vs plain bridge |");
    println!("|---|---:|---:|");
    for (k, (what, ..)) in setups.iter().enumerate() {
        let m = median(rates[k].clone());
        println!("| {what} | {m:.2} | {:.2} |", m / bridge);
    }
    println!();
    Ok(())
}

/// The `ip` way of plumbing one NIC into namespace `pid` on bridge `br`: five commands, or
/// two batches.
fn peer_setup(pid: u32, br: &str, name: &str, ip: Ipv4Addr, batched: bool) -> Res<Duration> {
    let p = pid.to_string();
    let cidr = format!("{ip}/24");
    let t = Instant::now();
    if batched {
        batch(
            &["env"],
            &format!(
                "link add {name} type veth peer name net0 netns {p}\nlink set {name} master {br}\nlink set {name} up\n"
            ),
        )?;
        batch(
            &["nsenter", "-n", "-t", &p, "--"],
            &format!("link set net0 up\naddr add {cidr} dev net0\n"),
        )?;
    } else {
        run(&[
            "ip", "link", "add", name, "type", "veth", "peer", "name", "net0", "netns", &p,
        ])?;
        run(&["ip", "link", "set", name, "master", br])?;
        run(&["ip", "link", "set", name, "up"])?;
        in_ns(pid, &["ip", "link", "set", "net0", "up"])?;
        in_ns(pid, &["ip", "addr", "add", &cidr, "dev", "net0"])?;
    }
    Ok(t.elapsed())
}

fn ms(v: &[Duration]) -> String {
    let m = median(v.iter().map(Duration::as_secs_f64).collect());
    format!("{:.2}", m * 1000.0)
}

fn setup(h: &mut Holders, switch: &Switch, zones: usize) -> Res<()> {
    let reps = 11;
    run(&["ip", "link", "add", "brpeer", "type", "bridge"])?;
    run(&["ip", "link", "set", "brpeer", "up"])?;
    let peer = |h: &mut Holders, batched: bool, salt: usize| -> Res<Vec<Duration>> {
        (0..reps)
            .map(|r| {
                let pid = h.netns()?;
                let ip = address(700 + (r % 40))?;
                peer_setup(pid, "brpeer", &format!("pp{salt}x{r}"), ip, batched)
            })
            .collect()
    };
    let script_1 = peer(h, false, 1)?;
    let batch_1 = peer(h, true, 2)?;
    let mut hull = Vec::with_capacity(zones);
    for i in 0..zones {
        let pid = h.netns()?;
        let u = uuid(i, 0xbe);
        let n = nic("bench", &u, i, address(i)?);
        let t = Instant::now();
        switch
            .plumb_zone(&u, pid as i32, &[n], &[])
            .map_err(|e| format!("plumb zone {i}: {}", hull_sys::chain(&e)))?;
        hull.push(t.elapsed());
    }
    let script_n = peer(h, false, 3)?;
    let batch_n = peer(h, true, 4)?;
    let first = &hull[..hull.len().min(20)];
    let last = &hull[hull.len().saturating_sub(20)..];
    println!("### NIC setup per zone (medians; zones on one bridge)\n");
    println!("| how | at 1 zone (ms) | at {zones} zones (ms) |");
    println!("|---|---:|---:|");
    println!(
        "| hull `plumb_zone` (veth, port, MAC, address, route, anti-spoofing) | {} | {} |",
        ms(first),
        ms(last)
    );
    println!(
        "| `ip` script, 5 commands (veth into the netns, master, up, up, address) | {} | {} |",
        ms(&script_1),
        ms(&script_n)
    );
    println!(
        "| two `ip -batch` calls (host side, zone side) | {} | {} |",
        ms(&batch_1),
        ms(&batch_n)
    );
    println!();
    println!(
        "hull: zones 1-{} median {} ms, zones {}-{zones} median {} ms, slowest {:.2} ms",
        first.len(),
        ms(first),
        zones - last.len() + 1,
        ms(last),
        hull.iter().max().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs = args.next().map_or(Ok(5), |s| s.parse::<usize>());
    let zones = args.next().map_or(Ok(500), |s| s.parse::<usize>());
    let (Ok(runs @ 1..), Ok(zones @ 1..)) = (runs, zones) else {
        eprintln!("usage: bench-net [RUNS] [ZONES] (both at least 1)");
        std::process::exit(2);
    };
    // A namespace of the benchmark's own is the switch's host: before any thread exists,
    // so every netlink worker runs in it.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        eprintln!("bench-net: cannot make a network namespace (run as root): {e}");
        std::process::exit(1);
    }
    let _ = run(&["ip", "link", "set", "lo", "up"]);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}\n", load.trim());
    let mut h = Holders::default();
    let switch = Switch::new(OWNER);
    let result = throughput(&mut h, &switch, runs, 5).and_then(|()| setup(&mut h, &switch, zones));
    drop(h);
    if let Err(e) = result {
        eprintln!("bench-net: {e}");
        std::process::exit(1);
    }
}
