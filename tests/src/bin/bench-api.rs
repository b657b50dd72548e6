//! API benchmark (issue 2): with 10, 100 and 1,000 guest records, the end-to-end process
//! time of `vmadm list` and `vmadm get` (median of runs, each a fresh process talking to a
//! real vmmd), and API create/get/list throughput from one client.
//!
//! Run: `cargo build --release --workspace && target/release/bench-api [runs]`.
//! Prints a Markdown table for docs/PERFORMANCE.md.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_tests::Daemon;
use serde_json::json;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn children_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, (t.tv_usec() * 1000) as u32);
    tv(u.user_time()) + tv(u.system_time())
}

/// Median wall time and median CPU time (user+sys) of `vmadm ARGS` as a fresh process.
fn time_tool(d: &Daemon, args: &[&str], runs: usize) -> (Duration, Duration) {
    let (walls, cpus) = (0..runs)
        .map(|_| {
            let cpu = children_cpu();
            let t = Instant::now();
            let s = Command::new(hull_tests::bin("vmadm"))
                .args(args)
                .env("HULL_SOCKET", d.socket())
                .stdout(Stdio::null())
                .status()
                .expect("vmadm runs");
            let e = t.elapsed();
            assert!(s.success(), "vmadm {args:?} failed");
            (e, children_cpu() - cpu)
        })
        .unzip();
    (median(walls), median(cpus))
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(31);
    let d = Daemon::start();
    assert!(
        d.run("nictagadm", &["add", "-l", "admin"], None)
            .status
            .success()
    );
    let c = d.client();
    println!(
        "| guests | vmadm list wall / CPU (ms) | vmadm get wall / CPU (ms) | API create/s | API get/s | API list/s (table fields) | API list/s (whole records) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut created = 0usize;
    let mut last = None;
    for target in [10usize, 100, 1000] {
        let t = Instant::now();
        let n = target - created;
        for i in created..target {
            let vm = c
                .create_vm(
                    &json!({"brand": if i % 2 == 0 { "kvm" } else { "bhyve" }, "autoboot": false,
                    "alias": format!("bench{i}"), "ram": 256 + (i % 8) * 128, "tags": {"n": i},
                    "nics": [{"nic_tag": "admin", "ips": [format!("2001:db8::{:x}/64", i + 1)]}]}),
                )
                .expect("create");
            last = Some(vm.uuid);
        }
        let create_rate = n as f64 / t.elapsed().as_secs_f64();
        created = target;
        let uuid = last.expect("a guest").to_string();
        let list = time_tool(&d, &["list"], runs);
        let get = time_tool(&d, &["get", &uuid], runs);
        let u = last.expect("a guest");
        let t = Instant::now();
        let gets = 500;
        for _ in 0..gets {
            c.get_vm(u).expect("get");
        }
        let get_rate = gets as f64 / t.elapsed().as_secs_f64();
        let lists = 50;
        let table: Vec<String> = ["uuid", "type", "ram", "state", "alias"]
            .map(String::from)
            .to_vec();
        let t = Instant::now();
        for _ in 0..lists {
            c.list_values(&[], Some(&table)).expect("list");
        }
        let table_rate = lists as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..lists {
            c.list_values(&[], None).expect("list");
        }
        let list_rate = lists as f64 / t.elapsed().as_secs_f64();
        println!(
            "| {target} | {} / {} | {} / {} | {create_rate:.0} | {get_rate:.0} | {table_rate:.0} | {list_rate:.0} |",
            ms(list.0),
            ms(list.1),
            ms(get.0),
            ms(get.1)
        );
    }
}
