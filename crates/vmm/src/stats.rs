//! Counters the control socket reports: vCPU exits by kind and by port or address, and bytes
//! moved per device. Plain relaxed atomics: they are statistics, not synchronisation. The
//! report they make is [`hull_vmm_proto::StatsReport`], which the control socket's clients
//! decode.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use hull_vmm_proto::{BalloonReport, DeviceReport, ExitCount, StatsReport, VcpuReport};

use crate::devices::virtio::balloon::BalloonStats;

/// Distinct (kind, address) keys one vCPU counts apart. The addresses come from the guest,
/// which could touch every port and page it likes: past this bound the exits of each kind are
/// counted together, so the table's memory stays bounded.
const MAX_EXIT_KEYS: usize = 256;

/// What made a vCPU leave KVM for the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    /// Any other exit, by name (`intr`, `shutdown`...).
    Other(&'static str),
}

impl ExitKind {
    fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Other(n) => n,
        }
    }
}

/// Exit counters of one vCPU: the table by kind and address (a lock only this vCPU and the
/// occasional report take); the totals by class are its sums.
#[derive(Debug, Default)]
pub struct VcpuStats {
    table: Mutex<HashMap<(ExitKind, Option<u64>), u64>>,
}

impl VcpuStats {
    /// Exits of port I/O, MMIO and every other kind, summed from the table.
    fn by_class(&self) -> (u64, u64, u64) {
        let (mut io, mut mmio, mut other) = (0, 0, 0);
        for ((kind, _), n) in crate::bus::lock(&self.table).iter() {
            match kind {
                ExitKind::IoIn | ExitKind::IoOut => io += n,
                ExitKind::MmioRead | ExitKind::MmioWrite => mmio += n,
                ExitKind::Other(_) => other += n,
            }
        }
        (io, mmio, other)
    }

    /// Counts one exit of `kind` at `addr` (a port or guest-physical address, if it has one).
    pub fn exit(&self, kind: ExitKind, addr: Option<u64>) {
        let mut t = crate::bus::lock(&self.table);
        let key = if t.len() < MAX_EXIT_KEYS || t.contains_key(&(kind, addr)) {
            (kind, addr)
        } else {
            (kind, None)
        };
        *t.entry(key).or_insert(0) += 1;
    }
}

/// Byte counters of one device. For block devices `read` is disk to guest; for net, `read`
/// is host to guest (RX) and `written` guest to host (TX).
#[derive(Debug, Default)]
pub struct DeviceStats {
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Size in bytes the guest sees, for devices that have one (disks): it changes when the
    /// host grows the image and the VMM is told (`resize_disk`).
    pub capacity: Option<AtomicU64>,
}

impl DeviceStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// All counters of one VM.
#[derive(Debug, Default)]
pub struct Stats {
    pub vcpus: Vec<Arc<VcpuStats>>,
    pub devices: Mutex<Vec<(String, Arc<DeviceStats>)>>,
    /// Whether the guest has used the PIT, which the VMM then created (see [`crate::pit`]).
    pub pit: AtomicBool,
    /// Serial bytes KVM queued without an exit (see [`crate::devices::serial::batch`]).
    pub serial_batched: AtomicU64,
    /// The balloon's counters, once one is made.
    pub balloon: OnceLock<Arc<BalloonStats>>,
    /// How the disks' data moves (`io_uring` or `thread`), once a VM with disks runs.
    pub disk_io: OnceLock<&'static str>,
    /// The NICs whose frames the kernel's vhost-net moves (their counters stay at 0 here).
    pub vhost_nets: Mutex<Vec<String>>,
}

impl Stats {
    pub fn new(vcpus: usize) -> Self {
        Stats {
            vcpus: (0..vcpus).map(|_| Arc::new(VcpuStats::default())).collect(),
            devices: Mutex::new(Vec::new()),
            pit: AtomicBool::new(false),
            serial_batched: AtomicU64::new(0),
            balloon: OnceLock::new(),
            disk_io: OnceLock::new(),
            vhost_nets: Mutex::new(Vec::new()),
        }
    }

    /// Registers a device and returns its counters.
    pub fn device(&self, name: String) -> Arc<DeviceStats> {
        let s = Arc::new(DeviceStats::default());
        crate::bus::lock(&self.devices).push((name, s.clone()));
        s
    }

    /// Registers a device with a capacity (a disk) and returns its counters.
    pub fn disk(&self, name: String) -> Arc<DeviceStats> {
        let s = Arc::new(DeviceStats {
            capacity: Some(AtomicU64::new(0)),
            ..DeviceStats::default()
        });
        crate::bus::lock(&self.devices).push((name, s.clone()));
        s
    }

    pub fn report(&self) -> StatsReport {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsReport {
            vcpus: self
                .vcpus
                .iter()
                .enumerate()
                .map(|(id, v)| {
                    let (io, mmio, other) = v.by_class();
                    VcpuReport {
                        id,
                        exits_io: io,
                        exits_mmio: mmio,
                        exits_other: other,
                    }
                })
                .collect(),
            devices: crate::bus::lock(&self.devices)
                .iter()
                .map(|(name, d)| DeviceReport {
                    name: name.clone(),
                    read_bytes: ld(&d.read_bytes),
                    written_bytes: ld(&d.written_bytes),
                    requests: ld(&d.requests),
                    errors: ld(&d.errors),
                    capacity_bytes: d.capacity.as_ref().map(ld),
                })
                .collect(),
            pit: self.pit.load(Ordering::Relaxed),
            disk_io: self.disk_io.get().map(|s| s.to_string()),
            vhost_nets: crate::bus::lock(&self.vhost_nets).clone(),
            serial_batched: ld(&self.serial_batched),
            exits: self.exit_table(),
            balloon: self.balloon.get().map(|b| {
                let page = |a: &AtomicU64| ld(a) * 4096;
                BalloonReport {
                    target_bytes: page(&b.target_pages),
                    actual_bytes: page(&b.actual_pages),
                    inflated_bytes: ld(&b.inflated_bytes),
                    deflated_bytes: ld(&b.deflated_bytes),
                    reported_bytes: ld(&b.reported_bytes),
                    errors: ld(&b.errors),
                }
            }),
        }
    }

    /// The vCPUs' exit tables summed, most frequent first (then by kind and address, so equal
    /// counts keep one order).
    fn exit_table(&self) -> Vec<ExitCount> {
        let mut sum: HashMap<(ExitKind, Option<u64>), u64> = HashMap::new();
        for v in &self.vcpus {
            for (k, n) in crate::bus::lock(&v.table).iter() {
                *sum.entry(*k).or_insert(0) += n;
            }
        }
        let mut out: Vec<ExitCount> = sum
            .into_iter()
            .map(|((kind, addr), count)| ExitCount {
                kind: kind.name().to_string(),
                addr,
                count,
            })
            .collect();
        out.sort_by(|a, b| (b.count, &a.kind, a.addr).cmp(&(a.count, &b.kind, b.addr)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_reflects_counters() {
        let s = Stats::new(2);
        for _ in 0..3 {
            s.vcpus[1].exit(ExitKind::IoOut, Some(0x3f8));
        }
        let d = s.device("vda".into());
        DeviceStats::add(&d.read_bytes, 512);
        let r = s.report();
        assert_eq!(r.vcpus[1].exits_io, 3);
        assert_eq!(r.devices[0].name, "vda");
        assert_eq!(r.devices[0].read_bytes, 512);
        assert_eq!(r.devices[0].capacity_bytes, None);
        let disk = s.disk("vdb".into());
        if let Some(c) = &disk.capacity {
            c.store(4096, Ordering::Relaxed);
        }
        assert_eq!(s.report().devices[1].capacity_bytes, Some(4096));
    }

    #[test]
    fn exits_are_counted_by_kind_and_address_across_vcpus() {
        let s = Stats::new(2);
        for _ in 0..3 {
            s.vcpus[0].exit(ExitKind::IoOut, Some(0x3f8));
        }
        s.vcpus[1].exit(ExitKind::IoOut, Some(0x3f8));
        s.vcpus[1].exit(ExitKind::IoIn, Some(0x3f8));
        s.vcpus[1].exit(ExitKind::MmioWrite, Some(0xd000_0050));
        s.vcpus[0].exit(ExitKind::Other("intr"), None);
        let r = s.report();
        assert_eq!(
            r.exits[0],
            ExitCount {
                kind: "io_out".into(),
                addr: Some(0x3f8),
                count: 4
            }
        );
        assert_eq!(r.exits.len(), 4);
        assert_eq!(r.vcpus[0].exits_io, 3);
        assert_eq!(r.vcpus[1].exits_io, 2);
        assert_eq!(r.vcpus[1].exits_mmio, 1);
        assert_eq!(r.vcpus[0].exits_other, 1);
        let intr = r.exits.iter().find(|e| e.kind == "intr").unwrap();
        assert_eq!((intr.addr, intr.count), (None, 1));
    }

    #[test]
    fn a_guest_touching_every_port_gets_a_bounded_table() {
        let s = Stats::new(1);
        for port in 0..=u16::MAX {
            s.vcpus[0].exit(ExitKind::IoIn, Some(u64::from(port)));
        }
        // A port counted apart before the bound keeps its own row.
        s.vcpus[0].exit(ExitKind::IoIn, Some(5));
        let r = s.report();
        assert_eq!(r.exits.len(), MAX_EXIT_KEYS + 1);
        let rest = r.exits.iter().find(|e| e.addr.is_none()).unwrap();
        assert_eq!(rest.count, 65536 - MAX_EXIT_KEYS as u64);
        let five = r.exits.iter().find(|e| e.addr == Some(5)).unwrap();
        assert_eq!(five.count, 2);
        assert_eq!(r.vcpus[0].exits_io, 65537);
    }
}
