//! `GET /v1/metrics`: the host's and every guest's figures in Prometheus's text exposition
//! format (version 0.0.4), named as node_exporter (the host) and cAdvisor (each guest's
//! cgroup and NICs) name theirs, so existing dashboards and alerts read them. Each guest's
//! series carry `uuid` (its id); `hull_guest_info` adds its alias and brand.
//!
//! Sources: the guest's cgroup through its zoned (what `GET /v1/vms/{uuid}/usage` gives), each
//! NIC's host end (a zone's veth, a microVM's TAP) in /sys/class/net (what the host end
//! receives the guest sent), /proc for the host. Nothing is kept between scrapes: counters
//! are the kernel's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hull_spec::api::Usage;
use hull_spec::{Vm, VmState};

use super::convert::ports;
use super::{Result, Service};

/// Counter or gauge: the two types hull exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// The series of one exposition, grouped by family as the format requires (one HELP and
/// TYPE line, then all of its samples), families in the order first written.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: String,
}

impl Exposition {
    /// Adds a sample of family `name` (declared with `kind` and `help` the first time).
    pub fn sample(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        let s = &mut self.families[at].samples;
        s.push_str(name);
        if !labels.is_empty() {
            s.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{k}=\"{}\"", escape(v));
            }
            s.push('}');
        }
        let _ = writeln!(s, " {value}");
    }

    /// The text: `# HELP`, `# TYPE`, the samples, for each family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            out.push_str(&f.samples);
        }
        out
    }
}

/// A label value as the format writes it: backslash, double quote and line feed escaped.
/// (Aliases are the user's: any bytes of valid UTF-8.)
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One guest's series: its info and state, then (running) its cgroup's figures and its NICs'.
pub fn guest(e: &mut Exposition, vm: &Vm, usage: Option<&Usage>, nics: &[(String, NicCounters)]) {
    use Kind::{Counter, Gauge};
    let uuid = vm.uuid.to_string();
    let id = [("uuid", uuid.as_str())];
    let brand = vm.brand.to_string();
    let alias = vm.alias.clone().unwrap_or_default();
    e.sample(
        "hull_guest_info",
        Gauge,
        "A guest of this host (always 1), with its alias and brand.",
        &[("uuid", &uuid), ("alias", &alias), ("brand", &brand)],
        1.0,
    );
    e.sample(
        "hull_guest_state",
        Gauge,
        "The guest's state (always 1, in the label).",
        &[("uuid", &uuid), ("state", vm.state.as_str())],
        1.0,
    );
    e.sample(
        "hull_guest_running",
        Gauge,
        "1 while the guest runs, else 0.",
        &id,
        f64::from(u8::from(vm.state == VmState::Running)),
    );
    if let Some(u) = usage {
        let ns = |v: Option<u64>| v.map(|n| n as f64 / 1e9);
        let mut put = |name, kind, help, v: Option<f64>| {
            if let Some(v) = v {
                e.sample(name, kind, help, &id, v);
            }
        };
        let n = |v: Option<u64>| v.map(|n| n as f64);
        put(
            "container_cpu_usage_seconds_total",
            Counter,
            "CPU time the guest used, user and system.",
            ns(u.cpu_usage_ns),
        );
        put(
            "container_cpu_user_seconds_total",
            Counter,
            "CPU time the guest used in user mode.",
            ns(u.cpu_user_ns),
        );
        put(
            "container_cpu_system_seconds_total",
            Counter,
            "CPU time the guest used in kernel mode.",
            ns(u.cpu_system_ns),
        );
        put(
            "container_cpu_cfs_periods_total",
            Counter,
            "Scheduler periods under the guest's CPU cap.",
            n(u.cpu_periods),
        );
        put(
            "container_cpu_cfs_throttled_periods_total",
            Counter,
            "Periods in which the CPU cap throttled the guest.",
            n(u.cpu_throttled_periods),
        );
        put(
            "container_cpu_cfs_throttled_seconds_total",
            Counter,
            "Time the CPU cap throttled the guest.",
            ns(u.cpu_throttled_ns),
        );
        put(
            "container_memory_usage_bytes",
            Gauge,
            "Memory the guest uses (anonymous, page cache, kernel).",
            n(u.memory_bytes),
        );
        put(
            "container_spec_memory_limit_bytes",
            Gauge,
            "The guest's memory limit (max_physical_memory).",
            n(u.memory_limit_bytes),
        );
        put(
            "container_memory_rss",
            Gauge,
            "The guest's anonymous memory.",
            n(u.memory_anon_bytes),
        );
        put(
            "container_memory_cache",
            Gauge,
            "The guest's page cache.",
            n(u.memory_file_bytes),
        );
        put(
            "container_memory_swap",
            Gauge,
            "Swap the guest uses.",
            n(u.swap_bytes),
        );
        put(
            "container_memory_failcnt",
            Counter,
            "Times the guest reached its memory limit.",
            n(u.memory_limit_hits),
        );
        put(
            "container_oom_events_total",
            Counter,
            "Processes of the guest the kernel's OOM killer ended.",
            n(u.oom_kills),
        );
        put(
            "container_threads",
            Gauge,
            "The guest's processes and threads.",
            n(u.pids),
        );
        put(
            "container_threads_max",
            Gauge,
            "Their limit (max_lwps).",
            n(u.pids_limit),
        );
    }
    for (interface, c) in nics {
        let labels = [("uuid", uuid.as_str()), ("interface", interface.as_str())];
        for (name, help, v) in [
            (
                "container_network_receive_bytes_total",
                "Bytes the guest's NIC received.",
                c.received_bytes,
            ),
            (
                "container_network_transmit_bytes_total",
                "Bytes the guest's NIC sent.",
                c.sent_bytes,
            ),
            (
                "container_network_receive_packets_total",
                "Packets the guest's NIC received.",
                c.received_packets,
            ),
            (
                "container_network_transmit_packets_total",
                "Packets the guest's NIC sent.",
                c.sent_packets,
            ),
        ] {
            e.sample(name, Counter, help, &labels, v as f64);
        }
    }
}

/// A guest NIC's counters, seen from the guest (its host end's, turned round).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    pub received_bytes: u64,
    pub sent_bytes: u64,
    pub received_packets: u64,
    pub sent_packets: u64,
}

/// The counters of host link `link` (a guest's port), turned round: what the port sent the
/// guest received. None when the link is not there (a guest between start and plumbing).
fn port_counters(link: &str) -> Option<NicCounters> {
    let dir = Path::new("/sys/class/net").join(link).join("statistics");
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(NicCounters {
        received_bytes: read("tx_bytes")?,
        sent_bytes: read("rx_bytes")?,
        received_packets: read("tx_packets")?,
        sent_packets: read("rx_packets")?,
    })
}

/// The host's figures, named as node_exporter names them: load, memory, CPU time by mode,
/// the data root's file system and each network device's counters.
pub fn host(e: &mut Exposition, data_root: &Path) {
    use Kind::{Counter, Gauge};
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let mut it = load
            .split_whitespace()
            .filter_map(|v| v.parse::<f64>().ok());
        for name in ["node_load1", "node_load5", "node_load15"] {
            if let Some(v) = it.next() {
                e.sample(name, Gauge, "The host's load average.", &[], v);
            }
        }
    }
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
        let field = |key: &str| {
            info.lines().find_map(|l| {
                let rest = l.strip_prefix(key)?.strip_prefix(':')?;
                let kib: f64 = rest.trim().trim_end_matches(" kB").parse().ok()?;
                Some(kib * 1024.0)
            })
        };
        for (name, key) in [
            ("node_memory_MemTotal_bytes", "MemTotal"),
            ("node_memory_MemAvailable_bytes", "MemAvailable"),
            ("node_memory_SwapTotal_bytes", "SwapTotal"),
            ("node_memory_SwapFree_bytes", "SwapFree"),
        ] {
            if let Some(v) = field(key) {
                e.sample(name, Gauge, "The host's memory (/proc/meminfo).", &[], v);
            }
        }
    }
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        const MODES: [&str; 8] = [
            "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
        ];
        for line in stat.lines() {
            let mut it = line.split_whitespace();
            let Some(cpu) = it.next().and_then(|c| c.strip_prefix("cpu")) else {
                continue;
            };
            if cpu.is_empty() {
                continue;
            }
            for (mode, ticks) in MODES.iter().zip(it) {
                if let Ok(t) = ticks.parse::<f64>() {
                    e.sample(
                        "node_cpu_seconds_total",
                        Counter,
                        "Seconds the host's CPUs spent in each mode.",
                        &[("cpu", cpu), ("mode", mode)],
                        t / hz,
                    );
                }
            }
        }
    }
    if let Ok(fs) = nix::sys::statvfs::statvfs(data_root) {
        let block = fs.fragment_size() as f64;
        let at = data_root.display().to_string();
        let labels = [("mountpoint", at.as_str())];
        e.sample(
            "node_filesystem_size_bytes",
            Gauge,
            "Size of the file system of hull's data root.",
            &labels,
            fs.blocks() as f64 * block,
        );
        e.sample(
            "node_filesystem_avail_bytes",
            Gauge,
            "Space of the data root's file system left to unprivileged users.",
            &labels,
            fs.blocks_available() as f64 * block,
        );
    }
    if let Ok(dev) = std::fs::read_to_string("/proc/net/dev") {
        for line in dev.lines().skip(2) {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let v: Vec<f64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 16 {
                continue;
            }
            let labels = [("device", name.trim())];
            for (metric, help, value) in [
                (
                    "node_network_receive_bytes_total",
                    "Bytes the host's network device received.",
                    v[0],
                ),
                (
                    "node_network_receive_packets_total",
                    "Packets the host's network device received.",
                    v[1],
                ),
                (
                    "node_network_transmit_bytes_total",
                    "Bytes the host's network device sent.",
                    v[8],
                ),
                (
                    "node_network_transmit_packets_total",
                    "Packets the host's network device sent.",
                    v[9],
                ),
            ] {
                e.sample(metric, Counter, help, &labels, value);
            }
        }
    }
}

impl Service {
    /// The exposition of `GET /v1/metrics`: the host, then every guest (a running one with
    /// its cgroup's figures and its NICs' counters).
    pub async fn metrics(&self) -> Result<String> {
        let mut e = Exposition::default();
        host(&mut e, &self.data_root);
        let tags = self.nictags().unwrap_or_else(|_| BTreeMap::new());
        for rec in self.list(&[]) {
            let vm = &rec.vm;
            let running = vm.state == VmState::Running;
            // A guest that stops between the list and the question has no figures: not an
            // error of the scrape.
            let usage = match running {
                true => self.usage(vm.uuid).await.ok(),
                false => None,
            };
            let nics: Vec<(String, NicCounters)> = match running {
                true => ports::guarded_ports(vm, &tags)
                    .into_iter()
                    .zip(&vm.nics)
                    .enumerate()
                    .filter_map(|(i, ((link, _), nic))| {
                        let name = nic.interface.clone().unwrap_or_else(|| format!("net{i}"));
                        Some((name, port_counters(&link)?))
                    })
                    .collect(),
                false => Vec::new(),
            };
            guest(&mut e, vm, usage.as_ref(), &nics);
        }
        Ok(e.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_and_label_values_escaped() {
        let mut e = Exposition::default();
        e.sample("a_total", Kind::Counter, "A.", &[("x", "1")], 1.0);
        e.sample("b", Kind::Gauge, "B.", &[], 2.5);
        e.sample("a_total", Kind::Counter, "A.", &[("x", "a\"b\\c\nd")], 3.0);
        assert_eq!(
            e.render(),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\n\
             a_total{x=\"a\\\"b\\\\c\\nd\"} 3\n# HELP b B.\n# TYPE b gauge\nb 2.5\n"
        );
    }

    #[test]
    fn a_guest_has_info_and_state_and_running_figures() {
        use crate::service::convert::{Context, MacPool, new_record};
        let payload = serde_json::json!({"brand": "joyent", "alias": "web",
            "image_uuid": "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01"});
        let mut vm = new_record(
            hull_spec::validate_create(&payload).expect("valid"),
            &Context::fixed(),
            &mut MacPool::new(&|_| false),
        )
        .expect("converts");
        vm.state = VmState::Running;
        let u = format!("uuid=\"{}\"", vm.uuid);
        let usage = Usage {
            cpu_usage_ns: Some(1_500_000_000),
            memory_bytes: Some(4096),
            ..Default::default()
        };
        let nic = NicCounters {
            received_bytes: 10,
            sent_bytes: 20,
            received_packets: 1,
            sent_packets: 2,
        };
        let mut e = Exposition::default();
        guest(&mut e, &vm, Some(&usage), &[("net0".into(), nic)]);
        let text = e.render();
        for line in [
            format!("hull_guest_running{{{u}}} 1"),
            format!("container_cpu_usage_seconds_total{{{u}}} 1.5"),
            format!("container_memory_usage_bytes{{{u}}} 4096"),
            format!("container_network_transmit_bytes_total{{{u},interface=\"net0\"}} 20"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(
            !text.contains("container_memory_swap"),
            "no figure, no sample"
        );
    }
}
