//! Metadata benchmark (issue 15), run as root: the round trip of one `GET` through vmmd's
//! agent on a running zone's metadata socket (the socket the zone sees at
//! /.zonecontrol/metadata.sock), for a 1 KiB and a 64 KiB value, on a kept connection and
//! with a fresh connection per request (connect, `NEGOTIATE V2`, `GET`: what one `mdata-get`
//! does), next to the floor: the same request and reply bytes echoed by a bare Unix socket
//! server in this process.
//!
//! The agent lets a guest make 200 requests a second after a burst of 400
//! (vmmd::metadata::RATE): each timed phase stays inside the burst (a fresh connection costs
//! two requests, NEGOTIATE and GET) and starts after a pause that refills it, so this
//! measures the agent, not its limiter.
//!
//! Run: `cargo build --release -p hull-tests -p vmmd -p hull-zoned -p hull-cli &&
//! scripts/build-mdata && sudo target/release/bench-mdata [requests]` (default 180, at
//! most 190).
//!
//! `bench-mdata com2 [requests]` (default 180; needs /dev/kvm and the test guest) times the
//! same GET from inside a microVM instead: the test guest sends it on COM2 and waits for the
//! answer, through the VMM's UART and socket and vmmd's agent, each round trip timed with
//! the TSC (calibrated against the PIT), and prints p50 and p99.
//! Prints a Markdown table for docs/PERFORMANCE.md; deletes its zone.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_mdata::client::{self, Call, Reply};
use hull_tests::Daemon;
use hull_tests::zone::{create, install};
use serde_json::json;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// One GET on `s`: writes the request, reads the reply line.
fn get(r: &mut BufReader<UnixStream>, key: &str, id: u32) -> String {
    let req = client::encode(id, Call::Get(key));
    r.get_mut().write_all(req.as_bytes()).expect("write");
    let mut line = String::new();
    r.read_line(&mut line).expect("read");
    line
}

fn negotiated(path: &Path) -> BufReader<UnixStream> {
    let mut r = BufReader::new(UnixStream::connect(path).expect("connect"));
    r.get_mut().write_all(b"NEGOTIATE V2\n").expect("write");
    let mut line = String::new();
    r.read_line(&mut line).expect("read");
    assert_eq!(line, "V2_OK\n");
    r
}

/// Times `n` GETs of `key`: on one connection, and each on a fresh one. `expect_len`:
/// check each reply answers its request with a value that long (the floor's replies are
/// one fixed line).
fn run(
    path: &Path,
    key: &str,
    n: usize,
    expect_len: Option<usize>,
) -> (Vec<Duration>, Vec<Duration>) {
    let refill = Duration::from_millis(2200);
    std::thread::sleep(refill);
    let mut kept = Vec::with_capacity(n);
    let mut r = negotiated(path);
    for i in 0..n {
        let t = Instant::now();
        let line = get(&mut r, key, i as u32);
        kept.push(t.elapsed());
        if let Some(len) = expect_len {
            match client::decode(line.trim_end(), i as u32) {
                Ok(Reply::Success(v)) => assert_eq!(v.len(), len),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
    std::thread::sleep(refill);
    let mut fresh = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let mut r = negotiated(path);
        let line = get(&mut r, key, i as u32);
        fresh.push(t.elapsed());
        assert!(line.contains(" SUCCESS "), "{line}");
    }
    (kept, fresh)
}

/// A server that answers each request line with the agent's reply bytes for it.
fn echo_floor(dir: &Path, reply: String) -> PathBuf {
    let path = dir.join("floor.sock");
    let l = UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let reply = reply.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let out = if line.starts_with("NEGOTIATE") {
                        "V2_OK\n"
                    } else {
                        reply.as_str()
                    };
                    if r.get_mut().write_all(out.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    path
}

/// The COM2 round trip, timed by the test guest in a microVM that vmmd runs: `sdc:uuid`,
/// then a 1 KiB and a 64 KiB customer_metadata value (at most 10 GETs of that one: each
/// moves about 87 000 bytes through the UART, two port exits a byte).
fn com2(n: usize) {
    let d = Daemon::start();
    let image = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a64";
    d.install_image(image, "zvol");
    for (key, count) in [("sdc:uuid", n), ("small", n), ("large", n.min(10))] {
        let payload = json!({"brand": "kvm", "alias": "mdbench", "ram": 64, "autoboot": true,
            "kernel": hull_tests::testguest().to_string_lossy(),
            "cmdline": format!("console=ttyS0 testguest.mdata=1 testguest.mdata_bench={count} testguest.mdata_key={key} testguest.hold=kbd"),
            "customer_metadata": {"small": "s".repeat(1024), "large": "l".repeat(64 * 1024)},
            "disks": [{"image_uuid": image, "boot": true}]});
        let vm = d.client().create_vm(&payload).expect("create");
        let rt = d.client().runtime(vm.uuid).expect("runtime");
        let seen = hull_tests::console_until(&rt.console, "testguest: waiting for ctrl-alt-del");
        let line = seen
            .lines()
            .find(|l| l.contains("mdata bench:"))
            .unwrap_or("no bench line");
        println!("{key}: {}", line.trim_start_matches("testguest: "));
        let o = d.vmadm(&["delete", &vm.uuid.to_string()], None);
        assert!(o.status.success(), "delete: {o:?}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("com2") {
        let n = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(180);
        return com2(n);
    }
    let n: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(180)
        .min(190);
    let d = Daemon::start();
    install(&d);
    let small = "s".repeat(1024);
    let large = "l".repeat(64 * 1024);
    let zone = create(
        &d,
        json!({"customer_metadata": {"small": small, "large": large}}),
    );
    let rt = d
        .client()
        .runtime(uuid::Uuid::parse_str(&zone).expect("uuid"))
        .expect("runtime");
    let sock = Path::new(&rt.dir).join("zonecontrol/metadata.sock");
    let tmp = tempfile::tempdir().expect("tempdir");
    println!("| value | connection | hull p50 µs | hull p99 µs | floor p50 µs | floor p99 µs |");
    println!("|---|---|---|---|---|---|");
    for (key, len) in [("small", 1024), ("large", 64 * 1024)] {
        let mut r = negotiated(&sock);
        let reply = get(&mut r, key, 0);
        drop(r);
        let floor = echo_floor(tmp.path(), reply);
        let (mut kept, mut fresh) = run(&sock, key, n, Some(len));
        let (mut fkept, mut ffresh) = run(&floor, key, n, None);
        let _ = std::fs::remove_file(&floor);
        for (what, h, f) in [
            ("kept", &mut kept, &mut fkept),
            ("fresh per GET", &mut fresh, &mut ffresh),
        ] {
            println!(
                "| {} KiB | {what} | {} | {} | {} | {} |",
                len / 1024,
                us(percentile(h, 0.5)),
                us(percentile(h, 0.99)),
                us(percentile(f, 0.5)),
                us(percentile(f, 0.99)),
            );
        }
    }
    let o = d.vmadm(&["delete", &zone], None);
    assert!(o.status.success(), "delete: {o:?}");
}
