//! Counters the control socket reports: vCPU exits by kind and bytes moved per device. Plain
//! relaxed atomics: they are statistics, not synchronisation. The report they make is
//! [`hull_vmm_proto::StatsReport`], which the control socket's clients decode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hull_vmm_proto::{DeviceReport, StatsReport, VcpuReport};

/// Exit counters of one vCPU.
#[derive(Debug, Default)]
pub struct VcpuStats {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    pub other: AtomicU64,
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
}

impl Stats {
    pub fn new(vcpus: usize) -> Self {
        Stats {
            vcpus: (0..vcpus).map(|_| Arc::new(VcpuStats::default())).collect(),
            devices: Mutex::new(Vec::new()),
            pit: AtomicBool::new(false),
            serial_batched: AtomicU64::new(0),
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
                .map(|(id, v)| VcpuReport {
                    id,
                    exits_io: ld(&v.io),
                    exits_mmio: ld(&v.mmio),
                    exits_other: ld(&v.other),
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
            serial_batched: ld(&self.serial_batched),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_reflects_counters() {
        let s = Stats::new(2);
        s.vcpus[1].io.fetch_add(3, Ordering::Relaxed);
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
}
