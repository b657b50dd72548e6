//! Guest payloads and records, named and measured as SmartOS's vmadm names them
//! (MiB for memory, GiB for quota, percent of one CPU for cpu_cap).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::net::MacAddr;

/// What kind of guest a VM is. Zones share the host kernel; microVMs run their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Brand {
    /// A SmartOS-style OS zone (namespace/cgroup container).
    Joyent,
    /// A zone without the SmartOS service tree.
    JoyentMinimal,
    /// A zone running a Linux distribution's userland unmodified.
    Lx,
    /// A microVM (SmartOS's QEMU/KVM brand; hull runs its own VMM).
    Kvm,
    /// A microVM (SmartOS's bhyve brand; hull runs its own VMM).
    Bhyve,
}

impl Brand {
    /// Every brand, in the order they are documented.
    pub const ALL: [Brand; 5] = [
        Brand::Joyent,
        Brand::JoyentMinimal,
        Brand::Lx,
        Brand::Kvm,
        Brand::Bhyve,
    ];

    /// Parses a brand name as it appears in payloads.
    pub fn parse(name: &str) -> Option<Brand> {
        Brand::ALL.into_iter().find(|b| b.as_str() == name)
    }

    /// The name of the guest's NIC at `index`: net0, net1... (eth0... in lx zones, whose
    /// distributions expect Linux's names).
    pub fn interface_name(self, index: usize) -> String {
        match self {
            Brand::Lx => format!("eth{index}"),
            _ => format!("net{index}"),
        }
    }

    /// The payload name of the brand.
    pub fn as_str(self) -> &'static str {
        match self {
            Brand::Joyent => "joyent",
            Brand::JoyentMinimal => "joyent-minimal",
            Brand::Lx => "lx",
            Brand::Kvm => "kvm",
            Brand::Bhyve => "bhyve",
        }
    }

    /// True for the brands that run a hardware VM.
    pub fn is_microvm(self) -> bool {
        matches!(self, Brand::Kvm | Brand::Bhyve)
    }

    /// SmartOS's `type` column: OS for zones, KVM or BHYVE for hardware VMs.
    pub fn vm_type(self) -> &'static str {
        match self {
            Brand::Joyent | Brand::JoyentMinimal | Brand::Lx => "OS",
            Brand::Kvm => "KVM",
            Brand::Bhyve => "BHYVE",
        }
    }
}

impl std::fmt::Display for Brand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SmartOS's `state`: what an operator sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Recorded but never provisioned.
    Configured,
    /// Being created (root cloned, devices made).
    Provisioning,
    /// Running.
    Running,
    /// Being stopped.
    Stopping,
    /// Provisioned and not running.
    Stopped,
    /// Provisioning or the guest failed; see the record for why.
    Failed,
    /// Being received from another host.
    Receiving,
}

impl VmState {
    /// The matching SmartOS `zone_state`.
    pub fn zone_state(self) -> ZoneState {
        match self {
            VmState::Configured => ZoneState::Configured,
            VmState::Provisioning | VmState::Receiving => ZoneState::Incomplete,
            VmState::Running => ZoneState::Running,
            VmState::Stopping => ZoneState::ShuttingDown,
            VmState::Stopped | VmState::Failed => ZoneState::Installed,
        }
    }

    /// The payload name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Configured => "configured",
            VmState::Provisioning => "provisioning",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Failed => "failed",
            VmState::Receiving => "receiving",
        }
    }
}

/// SmartOS's lower-level `zone_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ZoneState {
    /// Recorded only.
    Configured,
    /// Partly created.
    Incomplete,
    /// Provisioned, not running.
    Installed,
    /// Running.
    Running,
    /// Shutting down.
    ShuttingDown,
}

/// A tag value: SmartOS allows strings, numbers and booleans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TagValue {
    /// A boolean tag.
    Bool(bool),
    /// A numeric tag.
    Number(serde_json::Number),
    /// A string tag.
    String(String),
}

/// One network interface in a create payload or `add_nics`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// The nic tag (switch) this NIC joins.
    pub nic_tag: String,
    /// The MAC address; generated stably when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Legacy single address (with `netmask`), or `dhcp` / `addrconf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Netmask for the legacy `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<String>,
    /// Legacy single gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<String>>,
    /// Addresses in CIDR form (v4 and v6), or `dhcp` / `addrconf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<String>>,
    /// 802.1q VLAN id (0 = untagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// Whether this NIC carries the default route and resolvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<bool>,
    /// MTU in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Device model; hull supports `virtio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Let the guest send from addresses it was not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_ip_spoofing: Option<bool>,
    /// Let the guest send from other MACs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_mac_spoofing: Option<bool>,
    /// Let the guest act as a DHCP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_dhcp_spoofing: Option<bool>,
    /// Let the guest send frames other than IPv4, ARP and IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_restricted_traffic: Option<bool>,
    /// Extra addresses the guest may send from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<String>>,
    /// hull extension: bandwidth cap in Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u32>,
    /// Interface name in the guest (net0, net1, ...); assigned by hull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The network this NIC is on, for tooling (SmartOS's NAPI network; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_uuid: Option<Uuid>,
    /// Let the guest serve DHCP (SmartOS's; the same guard as allow_dhcp_spoofing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_server: Option<bool>,
    /// TCP and UDP destination ports the guest may not send to (dropped by the switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_outgoing_ports: Option<Vec<u16>>,
    /// A VRRP NIC's virtual router id (0-255): its MAC is the router's (00:00:5e:00:01:VRID),
    /// its address the virtual one, and its link is the guest's VRRP daemon's to raise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_vrid: Option<u8>,
    /// The address (of another NIC of the guest) a VRRP NIC sends its advertisements from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_primary_ip: Option<String>,
}

impl NicSpec {
    /// Whether this is a VRRP NIC (SmartOS's `vrrp_vrid`).
    pub fn is_vrrp(&self) -> bool {
        self.vrrp_vrid.is_some()
    }
}

/// One disk of a microVM.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Image (zvol type) to clone the disk from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uuid: Option<Uuid>,
    /// Size in MiB (for a blank disk, or to grow a cloned one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Whether the guest boots from this disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<bool>,
    /// Device model; hull supports `virtio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Host path of the backing file; assigned by hull when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Size in MiB of the image the disk is cloned from (SmartOS's; checked against the installed image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u64>,
    /// Name of that image (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// The disk's own uuid (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// SmartOS's zvol block size in bytes (stored: hull's disks are files, with 512-byte sectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u64>,
    /// SmartOS's zvol reservation in MiB (stored: hull's disk files are sparse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreservation: Option<u64>,
    /// "disk" (SmartOS's; a "cdrom" is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    /// SmartOS's zvol compression (stored: the data root's file system decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// A `vmadm create` payload after validation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreate {
    /// The VM's uuid; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// A free-form name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The brand (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<Brand>,
    /// Hostname inside the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Start after create and when the host boots (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoboot: Option<bool>,
    /// Refuse `vmadm delete` while set (SmartOS's indestructible_zoneroot; default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indestructible_zoneroot: Option<bool>,
    /// A dataset of the zone's own, mounted at /data, outside the root's snapshots and kept
    /// by `vmadm reprovision` (SmartOS's zones/<uuid>/data; zones only, default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate_dataset: Option<bool>,
    /// Refuse `vmadm delete` while set, for the delegated dataset's sake (SmartOS's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indestructible_delegated: Option<bool>,
    /// Host directories bound into the zone (SmartOS's lofs `filesystems`; root only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystems: Option<Vec<Filesystem>>,
    /// Size in MiB of a tmpfs mounted on the zone's /tmp (0 or absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<u64>,
    /// Not inventoried by a headnode (SmartOS's; stored: hull has no inventory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_not_inventory: Option<bool>,
    /// Create only: do not wait for in-guest provisioning (hull's create never does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nowait: Option<bool>,
    /// On delete, keep the record under the data root's archive/ (SmartOS's archive_on_delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_on_delete: Option<bool>,
    /// Keep the guest's resolv.conf in step with `resolvers` (SmartOS's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintain_resolvers: Option<bool>,
    /// Locked memory limit in MiB (RLIMIT_MEMLOCK of a zone's processes; default max_physical_memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_locked_memory: Option<u64>,
    /// System V shared memory limit in MiB (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shm_memory: Option<u64>,
    /// System V shared memory segments (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shm_ids: Option<u64>,
    /// System V message queues (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msg_ids: Option<u64>,
    /// System V semaphore sets (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sem_ids: Option<u64>,
    /// microVM disk driver: "virtio".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_driver: Option<String>,
    /// SmartOS's kvm CPU model: "host" (what hull's VMM gives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_type: Option<String>,
    /// microVM NIC driver: "virtio".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_driver: Option<String>,
    /// The most MiB a microVM's disks may add up to (SmartOS's flexible_disk_size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flexible_disk_size: Option<u64>,
    /// File system types a zone may mount, comma-separated (SmartOS's; stored, see the warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_allowed: Option<String>,
    /// ZFS record size of the root (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_root_recsize: Option<u64>,
    /// ZFS record size of the delegated dataset (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_data_recsize: Option<u64>,
    /// ZFS compression of the root (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_root_compression: Option<String>,
    /// ZFS compression of the delegated dataset (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_data_compression: Option<String>,
    /// SmartOS's pool: "zones", hull's data root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zpool: Option<String>,
    /// Most file systems under the delegated dataset (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_filesystem_limit: Option<u64>,
    /// Most snapshots of the guest (enforced by vmadm create-snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_snapshot_limit: Option<u64>,
    /// KVM virtio-net TX burst (SmartOS's qemu tuning; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtio_txburst: Option<u64>,
    /// KVM virtio-net TX timer (SmartOS's qemu tuning; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtio_txtimer: Option<u64>,
    /// Image of the zone's root (zones only; microVMs name it per disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uuid: Option<Uuid>,
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_physical_memory: Option<u64>,
    /// Memory plus swap limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_swap: Option<u64>,
    /// Guest RAM in MiB (microVMs); for zones the default of max_physical_memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<u64>,
    /// Virtual CPUs (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// CPU cap in percent of one CPU (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cap: Option<u32>,
    /// Relative CPU weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u32>,
    /// Process/thread limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lwps: Option<u64>,
    /// Disk quota of the guest's root in GiB (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// Relative I/O weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_io_priority: Option<u32>,
    /// DNS resolvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolvers: Option<Vec<String>>,
    /// DNS search domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// Static routes: destination (IP or CIDR) -> gateway IP or `nics[N]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<BTreeMap<String, String>>,
    /// Metadata the guest can read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_metadata: Option<BTreeMap<String, String>>,
    /// Metadata for operators' tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_metadata: Option<BTreeMap<String, String>>,
    /// Prefixes (before `:`) of internal_metadata keys the guest reads through its metadata
    /// service, read-only (SmartOS's `internal_metadata_namespaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_metadata_namespaces: Option<Vec<String>>,
    /// Tags (string, number or boolean values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, TagValue>>,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics: Option<Vec<NicSpec>>,
    /// Disks (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskSpec>>,
    /// hull extension: kernel to boot directly (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// hull extension: initrd (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// hull extension: kernel command line (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The zone's init (zones; default /sbin/init).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_name: Option<String>,
    /// lx: the Linux version the zone is meant to report (SmartOS emulates it; hull stores
    /// it, and the zone sees the host's kernel: the record's warnings say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// lx: a docker zone (SmartOS's `docker`), which runs its docker image's command as its
    /// init: internal_metadata `docker:entrypoint`, `docker:cmd`, `docker:env`,
    /// `docker:workdir` and `docker:user`, filled from the image's config where the payload
    /// leaves them out. Implied by an image of type docker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<bool>,
    /// hull: an OCI runtime bundle on the host (a directory holding `config.json` and the
    /// root it names), which the zone runs as containerd's runtimes do: its root is the
    /// bundle's (bound id-mapped, never copied or chowned) and its init the bundle's process,
    /// in place of an image (`image_uuid` is not given). A host path: root callers or
    /// `vmmd --allow-path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_bundle: Option<String>,
    /// Owner, kept for tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuid: Option<Uuid>,
    /// Billing id, kept for tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_id: Option<Uuid>,
    /// Package name, kept for tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_name: Option<String>,
    /// Package version, kept for tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
}

/// A host directory bound into a zone (SmartOS's `filesystems` entry, `type: "lofs"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    /// `lofs` (a bind of a host directory), or `zfs` for a volume (SmartOS's newer spelling).
    #[serde(rename = "type")]
    pub fs_type: String,
    /// The host directory. In a create payload, a uuid instead names a volume of the zone's
    /// own, which the create makes (`<data root>/guests/<uuid>/volumes/<source>`, SmartOS's
    /// zones/<uuid>/volumes/<source>) and the record names by that path.
    pub source: String,
    /// Where it appears in the zone.
    pub target: String,
    /// `ro` or `rw` (default rw), `nodevice(s)`, `nosetuid`/`nosuid` (binds are always
    /// nosuid and nodev).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Filesystem {
    /// Whether the zone may write through it.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// One entry of `update_nics`: the NIC is found by its MAC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NicUpdate {
    /// MAC of the NIC to change.
    pub mac: MacAddr,
    /// New nic tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_tag: Option<String>,
    /// New legacy address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// New legacy netmask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<String>,
    /// New legacy gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// New gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<String>>,
    /// New addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<String>>,
    /// New VLAN id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// Make this the primary NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<bool>,
    /// New MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// New model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Spoofing switches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_ip_spoofing: Option<bool>,
    /// Spoofing switches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_mac_spoofing: Option<bool>,
    /// Spoofing switches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_dhcp_spoofing: Option<bool>,
    /// Spoofing switches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_restricted_traffic: Option<bool>,
    /// New allowed addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<String>>,
    /// New bandwidth cap in Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u32>,
    /// New network uuid (stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_uuid: Option<Uuid>,
    /// Let the guest serve DHCP (the allow_dhcp_spoofing guard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_server: Option<bool>,
    /// New blocked destination ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_outgoing_ports: Option<Vec<u16>>,
    /// New VRRP router id: the NIC's MAC becomes the router's (00:00:5e:00:01:VRID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_vrid: Option<u8>,
    /// New VRRP primary address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_primary_ip: Option<String>,
}

/// One entry of `update_disks`: the disk is found by its path.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskUpdate {
    /// Path of the disk to change.
    pub path: String,
    /// New size in MiB (grow only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Make this the boot disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<bool>,
    /// New model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// A `vmadm update` payload after validation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmUpdate {
    /// New alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// New hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New autoboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoboot: Option<bool>,
    /// Set or clear indestructible_zoneroot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indestructible_zoneroot: Option<bool>,
    /// Set or clear indestructible_delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indestructible_delegated: Option<bool>,
    /// New /tmp tmpfs size in MiB (0: none), from the next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<u64>,
    /// Not inventoried by a headnode (SmartOS's; stored: hull has no inventory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_not_inventory: Option<bool>,
    /// On delete, keep the record under the data root's archive/ (SmartOS's archive_on_delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_on_delete: Option<bool>,
    /// Keep the guest's resolv.conf in step with `resolvers` (SmartOS's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintain_resolvers: Option<bool>,
    /// Locked memory limit in MiB (RLIMIT_MEMLOCK of a zone's processes; default max_physical_memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_locked_memory: Option<u64>,
    /// System V shared memory limit in MiB (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shm_memory: Option<u64>,
    /// System V shared memory segments (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shm_ids: Option<u64>,
    /// System V message queues (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msg_ids: Option<u64>,
    /// System V semaphore sets (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sem_ids: Option<u64>,
    /// microVM disk driver: "virtio".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_driver: Option<String>,
    /// SmartOS's kvm CPU model: "host" (what hull's VMM gives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_type: Option<String>,
    /// microVM NIC driver: "virtio".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_driver: Option<String>,
    /// The most MiB a microVM's disks may add up to (SmartOS's flexible_disk_size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flexible_disk_size: Option<u64>,
    /// File system types a zone may mount, comma-separated (SmartOS's; stored, see the warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_allowed: Option<String>,
    /// ZFS record size of the root (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_root_recsize: Option<u64>,
    /// ZFS record size of the delegated dataset (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_data_recsize: Option<u64>,
    /// ZFS compression of the root (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_root_compression: Option<String>,
    /// ZFS compression of the delegated dataset (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_data_compression: Option<String>,
    /// Most file systems under the delegated dataset (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_filesystem_limit: Option<u64>,
    /// Most snapshots of the guest (enforced by vmadm create-snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_snapshot_limit: Option<u64>,
    /// KVM virtio-net TX burst (SmartOS's qemu tuning; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtio_txburst: Option<u64>,
    /// KVM virtio-net TX timer (SmartOS's qemu tuning; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtio_txtimer: Option<u64>,
    /// New memory limit (MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_physical_memory: Option<u64>,
    /// New memory+swap limit (MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_swap: Option<u64>,
    /// New RAM (MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<u64>,
    /// New vCPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// New CPU cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cap: Option<u32>,
    /// New CPU weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u32>,
    /// New process limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lwps: Option<u64>,
    /// New quota (GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// New I/O weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_io_priority: Option<u32>,
    /// New resolvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolvers: Option<Vec<String>>,
    /// New DNS search domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// New kernel path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// New initrd path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// New kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// New init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_name: Option<String>,
    /// New lx kernel_version (stored; see [`VmCreate::kernel_version`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// New owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuid: Option<Uuid>,
    /// New billing id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_id: Option<Uuid>,
    /// New package name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_name: Option<String>,
    /// New package version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
    /// Tags to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_tags: Option<BTreeMap<String, TagValue>>,
    /// Tags to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_tags: Option<Vec<String>>,
    /// Customer metadata keys to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_customer_metadata: Option<BTreeMap<String, String>>,
    /// Customer metadata keys to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_customer_metadata: Option<Vec<String>>,
    /// Internal metadata keys to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_internal_metadata: Option<BTreeMap<String, String>>,
    /// Internal metadata keys to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_internal_metadata: Option<Vec<String>>,
    /// New internal metadata namespaces (the whole list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_metadata_namespaces: Option<Vec<String>>,
    /// Routes to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_routes: Option<BTreeMap<String, String>>,
    /// Routes (destinations) to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_routes: Option<Vec<String>>,
    /// NICs to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_nics: Option<Vec<NicSpec>>,
    /// NICs to change, found by MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_nics: Option<Vec<NicUpdate>>,
    /// NICs to remove, by MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_nics: Option<Vec<MacAddr>>,
    /// Disks to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_disks: Option<Vec<DiskSpec>>,
    /// Disks to change, found by path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_disks: Option<Vec<DiskUpdate>>,
    /// Disks to remove, by path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_disks: Option<Vec<String>>,
}

/// A guest record as `vmadm get` prints it: the payload with defaults filled in, plus
/// the state hull keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The VM's uuid.
    pub uuid: Uuid,
    /// SmartOS's zonename (the uuid).
    pub zonename: String,
    /// Alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Brand.
    pub brand: Brand,
    /// OS, KVM or BHYVE.
    #[serde(rename = "type")]
    pub vm_type: String,
    /// Hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Autoboot.
    pub autoboot: bool,
    /// `vmadm delete` is refused while set (shown only when set, as SmartOS does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub indestructible_zoneroot: bool,
    /// The zone has a delegated dataset, mounted at /data (shown only when set).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delegate_dataset: bool,
    /// `vmadm delete` is refused while set (shown only when set).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub indestructible_delegated: bool,
    /// Host directories bound into the zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<Filesystem>,
    /// Size in MiB of the zone's /tmp tmpfs (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<u64>,
    /// Not inventoried by a headnode (SmartOS's; stored: hull has no inventory).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub do_not_inventory: bool,
    /// On delete, keep the record under the data root's archive/ (SmartOS's archive_on_delete).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archive_on_delete: bool,
    /// Keep the guest's resolv.conf in step with `resolvers` (SmartOS's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintain_resolvers: bool,
    /// Locked memory limit in MiB (RLIMIT_MEMLOCK of a zone's processes; default max_physical_memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_locked_memory: Option<u64>,
    /// System V shared memory limit in MiB (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shm_memory: Option<u64>,
    /// System V shared memory segments (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shm_ids: Option<u64>,
    /// System V message queues (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msg_ids: Option<u64>,
    /// System V semaphore sets (a zone's IPC namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sem_ids: Option<u64>,
    /// microVM disk driver: "virtio".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_driver: Option<String>,
    /// SmartOS's kvm CPU model: "host" (what hull's VMM gives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_type: Option<String>,
    /// microVM NIC driver: "virtio".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_driver: Option<String>,
    /// The most MiB a microVM's disks may add up to (SmartOS's flexible_disk_size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flexible_disk_size: Option<u64>,
    /// File system types a zone may mount, comma-separated (SmartOS's; stored, see the warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_allowed: Option<String>,
    /// ZFS record size of the root (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_root_recsize: Option<u64>,
    /// ZFS record size of the delegated dataset (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_data_recsize: Option<u64>,
    /// ZFS compression of the root (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_root_compression: Option<String>,
    /// ZFS compression of the delegated dataset (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_data_compression: Option<String>,
    /// SmartOS's pool: "zones", hull's data root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zpool: Option<String>,
    /// Most file systems under the delegated dataset (SmartOS's; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_filesystem_limit: Option<u64>,
    /// Most snapshots of the guest (enforced by vmadm create-snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_snapshot_limit: Option<u64>,
    /// KVM virtio-net TX burst (SmartOS's qemu tuning; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtio_txburst: Option<u64>,
    /// KVM virtio-net TX timer (SmartOS's qemu tuning; stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtio_txtimer: Option<u64>,
    /// Image of the zone root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uuid: Option<Uuid>,
    /// Current state.
    pub state: VmState,
    /// Current zone state.
    pub zone_state: ZoneState,
    /// Why the guest is failed, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Memory limit (MiB).
    pub max_physical_memory: u64,
    /// Memory+swap limit (MiB).
    pub max_swap: u64,
    /// Guest RAM (MiB); for zones equal to max_physical_memory.
    pub ram: u64,
    /// vCPUs (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// CPU cap (percent of one CPU; 0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cap: Option<u32>,
    /// CPU weight.
    pub cpu_shares: u32,
    /// Process limit.
    pub max_lwps: u64,
    /// Quota (GiB).
    pub quota: u64,
    /// I/O weight.
    pub zfs_io_priority: u32,
    /// Resolvers.
    pub resolvers: Vec<String>,
    /// DNS search domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// Routes.
    pub routes: BTreeMap<String, String>,
    /// Customer metadata.
    pub customer_metadata: BTreeMap<String, String>,
    /// Internal metadata.
    pub internal_metadata: BTreeMap<String, String>,
    /// internal_metadata key prefixes the guest may read (SmartOS's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal_metadata_namespaces: Vec<String>,
    /// Tags.
    pub tags: BTreeMap<String, TagValue>,
    /// NICs, with mac, interface and primary filled in.
    pub nics: Vec<NicSpec>,
    /// Disks, with paths filled in (microVMs).
    pub disks: Vec<DiskSpec>,
    /// Kernel path (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Initrd path (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Zone init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_name: Option<String>,
    /// lx: the Linux version the payload gave (stored; the zone sees the host's kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// lx: a docker zone (its init is its docker image's command; see [`VmCreate::docker`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub docker: bool,
    /// The OCI runtime bundle the zone runs (see [`VmCreate::oci_bundle`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_bundle: Option<String>,
    /// Owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuid: Option<Uuid>,
    /// Billing id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_id: Option<Uuid>,
    /// Package name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_name: Option<String>,
    /// Package version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
    /// When the record was created (RFC 3339, UTC).
    pub create_timestamp: String,
    /// When the record last changed (RFC 3339, UTC).
    pub last_modified: String,
    /// Process id of the guest's hull process while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the guest last started (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_timestamp: Option<String>,
    /// The running zone is paused (`POST /v1/vms/{uuid}/pause`): its processes frozen
    /// until resumed; a stop resumes it first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Exit status of the guest's last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// How many times a docker zone's process was started again by its restart policy
    /// (SmartOS's `init_restarts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_restarts: Option<u32>,
    /// Snapshots of the guest's root, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Snapshot>,
    /// Limits the host could not enforce, and costs it could not avoid, named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<crate::warning::Warning>,
}

/// A snapshot of a guest's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Its name.
    pub name: String,
    /// When it was taken (RFC 3339, UTC).
    pub created_at: String,
}

/// `POST /v1/vms/{uuid}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot's name: at most 64 characters from [A-Za-z0-9-_.:%].
    pub name: String,
}

/// SmartOS's defaults, in one place.
pub mod defaults {
    /// Zone memory limit (MiB).
    pub const ZONE_MAX_PHYSICAL_MEMORY: u64 = 256;
    /// Root quota (GiB).
    pub const QUOTA: u64 = 10;
    /// Process limit.
    pub const MAX_LWPS: u64 = 2000;
    /// CPU weight.
    pub const CPU_SHARES: u32 = 100;
    /// I/O weight.
    pub const ZFS_IO_PRIORITY: u32 = 100;
    /// microVM RAM (MiB).
    pub const VM_RAM: u64 = 256;
    /// microVM vCPUs.
    pub const VM_VCPUS: u32 = 1;
    /// microVM memory limit beyond its RAM (MiB): the VMM's overhead.
    pub const VM_MEMORY_OVERHEAD: u64 = 1024;
    /// Zones' smallest swap limit (MiB).
    pub const MIN_SWAP: u64 = 256;
    /// Seconds `vmadm stop` waits for a zone's graceful stop before killing it.
    pub const ZONE_STOP_TIMEOUT: u64 = 60;
    /// Seconds `vmadm stop` waits for a hardware VM's guest to power off (ACPI) before
    /// killing its VMM.
    pub const HVM_STOP_TIMEOUT: u64 = 180;

    /// SmartOS's graceful stop timeout for a guest of `brand`.
    pub fn stop_timeout(brand: super::Brand) -> u64 {
        match brand.is_microvm() {
            true => HVM_STOP_TIMEOUT,
            false => ZONE_STOP_TIMEOUT,
        }
    }
}
