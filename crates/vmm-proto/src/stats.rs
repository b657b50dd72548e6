//! What a `stats` request answers: vCPU exits by kind and bytes moved per device, a snapshot
//! of the VMM's counters.

use serde::{Deserialize, Serialize};

/// Snapshot of one VM's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub vcpus: Vec<VcpuReport>,
    pub devices: Vec<DeviceReport>,
    /// Whether the guest has used the PIT (the VMM creates it on first use).
    pub pit: bool,
    /// Serial bytes KVM queued without an exit.
    pub serial_batched: u64,
    /// The exits that reached the VMM, by kind and address, summed over the vCPUs, most
    /// frequent first (absent from VMMs that predate it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exits: Vec<ExitCount>,
    /// How the disks' data moves: `io_uring`, or `thread` (the VMM's I/O thread, one
    /// request after another); absent without disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_io: Option<String>,
    /// The NICs whose frames the host kernel's vhost-net moves (`net0`...): the VMM never
    /// sees them, so their device counters stay at 0 (the TAP's own count them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vhost_nets: Vec<String>,
    /// The balloon, for VMs that have one (`--balloon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonReport>,
}

/// What a VM's balloon holds and has given back to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonReport {
    /// What the host asked the guest to give up.
    pub target_bytes: u64,
    /// What the guest says its balloon holds now.
    pub actual_bytes: u64,
    /// Freed by inflation, and taken back by deflation, since the VM started.
    pub inflated_bytes: u64,
    pub deflated_bytes: u64,
    /// Free memory the guest reported (free page reporting) and the host freed, in total.
    pub reported_bytes: u64,
    /// Requests refused (malformed, or naming memory outside the guest's RAM).
    pub errors: u64,
}

/// How many exits of one kind, at one port or MMIO address, reached the VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCount {
    /// `io_in`, `io_out`, `mmio_read`, `mmio_write`, or the name of another exit
    /// (`intr`, `shutdown`, `system_event`...).
    pub kind: String,
    /// The port or guest-physical address; absent for exits without one, and for the one row
    /// per kind that counts the addresses past the VMM's bound on distinct addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
    pub count: u64,
}

/// Exits of one vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuReport {
    pub id: usize,
    pub exits_io: u64,
    pub exits_mmio: u64,
    pub exits_other: u64,
}

/// Traffic of one device. For block devices `read` is disk to guest; for net, `read` is
/// host to guest (RX) and `written` guest to host (TX).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    pub name: String,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub requests: u64,
    pub errors: u64,
    /// Size in bytes the guest sees, for devices that have one (disks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back() {
        let text = r#"{"vcpus":[{"id":0,"exits_io":1,"exits_mmio":2,"exits_other":3}],"devices":[{"name":"vda","read_bytes":512,"written_bytes":0,"requests":1,"errors":0,"capacity_bytes":4096},{"name":"eth0","read_bytes":0,"written_bytes":0,"requests":0,"errors":0}],"pit":false,"serial_batched":7}"#;
        let r: StatsReport = serde_json::from_str(text).unwrap();
        assert_eq!(r.devices[0].capacity_bytes, Some(4096));
        assert_eq!(r.devices[1].capacity_bytes, None);
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
        assert!(r.exits.is_empty());
        let text = r#"{"vcpus":[],"devices":[],"pit":true,"serial_batched":0,"exits":[{"kind":"io_out","addr":1016,"count":9},{"kind":"intr","count":2}]}"#;
        let r: StatsReport = serde_json::from_str(text).unwrap();
        assert_eq!(r.exits[0].addr, Some(0x3f8));
        assert_eq!(r.exits[1].addr, None);
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
    }
}
