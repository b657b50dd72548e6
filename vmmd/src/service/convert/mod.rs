//! The service's conversions, in one place: wire types and records in, runtime configs out.
//! Each is pure (the caller supplies the clock, the host's files, the nic tags) and is where
//! semantic checks that validation cannot make live, with a typed error naming the problem.
//!
//! - here: validated payload -> record (SmartOS's defaults, generated uuid and MACs,
//!   interface names, the primary NIC, disk paths);
//! - [`zone`]: record -> the zoned config of a zone guest;
//! - [`microvm`]: record -> the zoned config of a microVM's VMM zone and the VMM's arguments;
//! - [`ports`]: record NICs and routes -> switch ports and zone routes.

pub mod microvm;
pub mod ports;
pub mod zone;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use hull_spec::net::MacAddr;
use hull_spec::vm::defaults;
use hull_spec::{Brand, DiskSpec, NicSpec, Vm, VmCreate, VmState};
use uuid::Uuid;

/// What a conversion needs from outside.
#[derive(Debug, Clone)]
pub struct Context {
    /// The current time, RFC 3339.
    pub now: String,
    /// The data root (disk paths live under it).
    pub data_root: PathBuf,
}

/// The MACs a new NIC may not take: other guests' (asked through `others`, so the caller's
/// index answers without copying) and those given out by this operation.
pub struct MacPool<'a> {
    others: &'a dyn Fn(&MacAddr) -> bool,
    local: HashSet<MacAddr>,
}

impl std::fmt::Debug for MacPool<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacPool")
            .field("local", &self.local)
            .finish()
    }
}

impl<'a> MacPool<'a> {
    /// A pool where `others` says whether another guest owns a MAC.
    pub fn new(others: &'a dyn Fn(&MacAddr) -> bool) -> MacPool<'a> {
        MacPool {
            others,
            local: HashSet::new(),
        }
    }

    /// Whether the MAC is in use.
    pub fn taken(&self, mac: &MacAddr) -> bool {
        self.local.contains(mac) || (self.others)(mac)
    }

    /// Marks a MAC as used by this operation.
    pub fn claim(&mut self, mac: MacAddr) {
        self.local.insert(mac);
    }
}

impl Context {
    /// A context with a fixed clock and an empty host, for tests.
    #[cfg(test)]
    pub fn fixed() -> Context {
        Context {
            now: "2026-01-01T00:00:00.000Z".into(),
            data_root: PathBuf::from("/var/lib/hull"),
        }
    }
}

/// Why a payload could not become a record.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The payload has no brand (validation should have said so).
    #[error("the payload has no brand")]
    NoBrand,
    /// No free MAC could be generated (astronomically unlikely).
    #[error("no free MAC address could be generated for NIC {0}")]
    NoFreeMac(usize),
}

/// Builds the record for a new guest from a validated create payload.
pub fn new_record(c: VmCreate, ctx: &Context, pool: &mut MacPool<'_>) -> Result<Vm, ConvertError> {
    let brand = c.brand.ok_or(ConvertError::NoBrand)?;
    let uuid = c.uuid.unwrap_or_else(Uuid::new_v4);
    let (ram, max_physical_memory, vcpus) = if brand.is_microvm() {
        let ram = c.ram.unwrap_or(defaults::VM_RAM);
        let mpm = c
            .max_physical_memory
            .unwrap_or(ram + defaults::VM_MEMORY_OVERHEAD);
        (ram, mpm, Some(c.vcpus.unwrap_or(defaults::VM_VCPUS)))
    } else {
        let mpm = c
            .max_physical_memory
            .or(c.ram)
            .unwrap_or(defaults::ZONE_MAX_PHYSICAL_MEMORY);
        (mpm, mpm, None)
    };
    // SmartOS raises a max_swap below the memory limit to it.
    let max_swap = c
        .max_swap
        .unwrap_or(defaults::MIN_SWAP)
        .max(max_physical_memory);
    let nics = finish_nics(uuid, brand, c.nics.unwrap_or_default(), pool, 0)?;
    let disks = finish_disks(uuid, c.disks.unwrap_or_default(), &ctx.data_root, 0);
    Ok(Vm {
        uuid,
        zonename: uuid.to_string(),
        alias: c.alias,
        brand,
        vm_type: brand.vm_type().to_string(),
        hostname: c.hostname,
        autoboot: c.autoboot.unwrap_or(true),
        indestructible_zoneroot: c.indestructible_zoneroot.unwrap_or(false),
        delegate_dataset: c.delegate_dataset.unwrap_or(false),
        indestructible_delegated: c.indestructible_delegated.unwrap_or(false),
        filesystems: finish_filesystems(uuid, c.filesystems.unwrap_or_default(), &ctx.data_root),
        tmpfs: c.tmpfs.filter(|&mib| mib > 0),
        do_not_inventory: c.do_not_inventory.unwrap_or(false),
        archive_on_delete: c.archive_on_delete.unwrap_or(false),
        maintain_resolvers: c.maintain_resolvers.unwrap_or(false),
        // SmartOS clamps the locked-memory limit to the memory limit.
        max_locked_memory: c.max_locked_memory.map(|m| m.min(max_physical_memory)),
        max_shm_memory: c.max_shm_memory,
        max_shm_ids: c.max_shm_ids,
        max_msg_ids: c.max_msg_ids,
        max_sem_ids: c.max_sem_ids,
        disk_driver: c.disk_driver,
        cpu_type: c.cpu_type,
        nic_driver: c.nic_driver,
        flexible_disk_size: c.flexible_disk_size,
        fs_allowed: c.fs_allowed,
        zfs_root_recsize: c.zfs_root_recsize,
        zfs_data_recsize: c.zfs_data_recsize,
        zfs_root_compression: c.zfs_root_compression,
        zfs_data_compression: c.zfs_data_compression,
        zpool: c.zpool,
        zfs_filesystem_limit: c.zfs_filesystem_limit,
        zfs_snapshot_limit: c.zfs_snapshot_limit,
        virtio_txburst: c.virtio_txburst,
        virtio_txtimer: c.virtio_txtimer,
        image_uuid: c.image_uuid,
        state: VmState::Configured,
        zone_state: VmState::Configured.zone_state(),
        failure: None,
        max_physical_memory,
        max_swap,
        ram,
        vcpus,
        cpu_cap: c.cpu_cap,
        cpu_shares: c.cpu_shares.unwrap_or(defaults::CPU_SHARES),
        max_lwps: c.max_lwps.unwrap_or(defaults::MAX_LWPS),
        quota: c.quota.unwrap_or(defaults::QUOTA),
        zfs_io_priority: c.zfs_io_priority.unwrap_or(defaults::ZFS_IO_PRIORITY),
        resolvers: c.resolvers.unwrap_or_default(),
        dns_domain: c.dns_domain,
        routes: c.routes.unwrap_or_default(),
        customer_metadata: c.customer_metadata.unwrap_or_default(),
        internal_metadata: c.internal_metadata.unwrap_or_default(),
        internal_metadata_namespaces: c.internal_metadata_namespaces.unwrap_or_default(),
        tags: c.tags.unwrap_or_default(),
        nics,
        disks,
        kernel: c.kernel,
        initrd: c.initrd,
        cmdline: c.cmdline,
        init_name: c.init_name,
        kernel_version: c.kernel_version,
        // A bundle's process is the zone's, as a docker image's command is.
        docker: c.docker.unwrap_or(false) || c.oci_bundle.is_some(),
        oci_bundle: c.oci_bundle,
        owner_uuid: c.owner_uuid,
        billing_id: c.billing_id,
        package_name: c.package_name,
        package_version: c.package_version,
        create_timestamp: ctx.now.clone(),
        last_modified: ctx.now.clone(),
        pid: None,
        boot_timestamp: None,
        paused: false,
        exit_status: None,
        init_restarts: None,
        snapshots: Vec::new(),
        warnings: Vec::new(),
    })
}

/// Fills in MACs, interface names and the primary flag for NICs appended after `existing`
/// NICs. Interface names follow array order: net0, net1... (eth0... in lx zones).
pub fn finish_nics(
    uuid: Uuid,
    brand: Brand,
    nics: Vec<NicSpec>,
    pool: &mut MacPool<'_>,
    existing: usize,
) -> Result<Vec<NicSpec>, ConvertError> {
    let mut out = Vec::with_capacity(nics.len());
    for (offset, mut nic) in nics.into_iter().enumerate() {
        let index = existing + offset;
        let mac = match (nic.mac, nic.vrrp_vrid) {
            (Some(mac), _) => mac,
            // A VRRP NIC's MAC is its virtual router's (validation refused another one).
            (None, Some(vrid)) => MacAddr::vrrp(vrid),
            (None, None) => {
                generate_mac(uuid, index, pool).ok_or(ConvertError::NoFreeMac(index))?
            }
        };
        pool.claim(mac);
        nic.mac = Some(mac);
        nic.interface = Some(interface_name(brand, index));
        out.push(nic);
    }
    if existing == 0 && !out.iter().any(|n| n.primary == Some(true)) {
        default_primary(&mut out);
    }
    Ok(out)
}

/// Makes the first NIC that is not a VRRP NIC the primary one (a VRRP NIC's link is down
/// until the guest's VRRP daemon raises it): for a guest whose payload named none.
pub fn default_primary(nics: &mut [NicSpec]) {
    if let Some(first) = nics.iter_mut().find(|n| !n.is_vrrp()) {
        first.primary = Some(true);
    }
}

/// Names the NICs that have no interface name yet (added by an update) with the lowest
/// numbers the others leave free. A NIC keeps its name for life: removing net1 leaves net2
/// as it is, inside a running zone and in its switch port's name.
pub fn number_new_nics(brand: Brand, nics: &mut [NicSpec]) {
    let mut used: std::collections::BTreeSet<usize> =
        nics.iter().filter_map(interface_number).collect();
    for nic in nics.iter_mut().filter(|n| n.interface.is_none()) {
        let n = (0..).find(|n| !used.contains(n)).unwrap_or(0);
        used.insert(n);
        nic.interface = Some(interface_name(brand, n));
    }
}

/// The number in a NIC's interface name (net<n>, eth<n>).
pub fn interface_number(nic: &NicSpec) -> Option<usize> {
    let name = nic.interface.as_deref()?;
    let digits = name
        .strip_prefix("net")
        .or_else(|| name.strip_prefix("eth"))?;
    (!digits.is_empty() && digits.len() <= 3 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn interface_name(brand: Brand, index: usize) -> String {
    brand.interface_name(index)
}

/// A locally administered unicast MAC derived from the guest's uuid and the NIC's index, so
/// that the same guest gets the same MACs; a salt walks past MACs already in use.
fn generate_mac(uuid: Uuid, index: usize, pool: &MacPool<'_>) -> Option<MacAddr> {
    (0u32..1024).find_map(|salt| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let bytes = uuid
            .as_bytes()
            .iter()
            .copied()
            .chain((index as u64).to_le_bytes())
            .chain(salt.to_le_bytes());
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let b = h.to_le_bytes();
        let mac = MacAddr::new([0x02, b[0], b[1], b[2], b[3], b[4]]);
        (!pool.taken(&mac)).then_some(mac)
    })
}

/// Where guest `uuid`'s volumes live under `data_root` (cowstore's `volumes_dir`).
pub fn volumes_dir(data_root: &std::path::Path, uuid: Uuid) -> PathBuf {
    guest_volumes(&data_root.join("guests"), uuid)
}

/// Where guest `uuid`'s volumes live in the guests directory `guests` (a sender's too).
pub fn guest_volumes(guests: &std::path::Path, uuid: Uuid) -> PathBuf {
    guests.join(uuid.to_string()).join("volumes")
}

/// Gives each volume (a `filesystems` entry whose source is a uuid) the host path the create
/// makes it at, as SmartOS rewrites its source to the dataset's mount point.
fn finish_filesystems(
    uuid: Uuid,
    mut list: Vec<hull_spec::vm::Filesystem>,
    data_root: &std::path::Path,
) -> Vec<hull_spec::vm::Filesystem> {
    for f in &mut list {
        if hull_spec::validate::is_uuid(&f.source) {
            f.source = volumes_dir(data_root, uuid)
                .join(&f.source)
                .to_string_lossy()
                .into_owned();
        }
    }
    list
}

/// The volumes of `vm` (its own, which its create made): the index of each in its
/// `filesystems` and its name, the file name of its source in `volumes` (the guest's
/// volumes directory).
pub fn volumes<'a>(
    vm: &'a Vm,
    volumes: &'a std::path::Path,
) -> impl Iterator<Item = (usize, &'a str)> {
    vm.filesystems.iter().enumerate().filter_map(move |(i, f)| {
        let source = std::path::Path::new(&f.source);
        (source.parent() == Some(volumes))
            .then(|| Some((i, source.file_name()?.to_str()?)))
            .flatten()
    })
}

/// Gives disks without a path the one hull will create them at, under the guest's folder.
pub fn finish_disks(
    uuid: Uuid,
    disks: Vec<DiskSpec>,
    data_root: &std::path::Path,
    existing: usize,
) -> Vec<DiskSpec> {
    disks
        .into_iter()
        .enumerate()
        .map(|(i, mut d)| {
            if d.path.is_none() {
                let p = data_root
                    .join("guests")
                    .join(uuid.to_string())
                    .join(format!("disk{}.img", existing + i));
                d.path = Some(p.to_string_lossy().into_owned());
            }
            d
        })
        .collect()
}

/// The metadata maps' shared update rule: set keys, then remove keys.
pub fn set_remove<V: Clone>(
    map: &mut BTreeMap<String, V>,
    set: Option<&BTreeMap<String, V>>,
    remove: Option<&Vec<String>>,
) -> bool {
    let before = map.len();
    let mut changed = false;
    if let Some(set) = set {
        for (k, v) in set {
            map.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    if let Some(remove) = remove {
        for k in remove {
            changed |= map.remove(k).is_some();
        }
    }
    changed || map.len() != before
}

/// The record a valid payload becomes (tests of the conversions).
#[cfg(test)]
pub(crate) fn test_record(v: serde_json::Value) -> Vm {
    let c = hull_spec::validate_create(&v).unwrap_or_else(|r| panic!("{r}"));
    new_record(c, &Context::fixed(), &mut MacPool::new(&|_| false)).expect("converts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(v: serde_json::Value) -> Vm {
        test_record(v)
    }

    #[test]
    fn zone_defaults_are_smartos_defaults() {
        let vm = create(
            json!({"brand": "joyent", "image_uuid": "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01"}),
        );
        assert_eq!(
            (
                vm.max_physical_memory,
                vm.quota,
                vm.max_lwps,
                vm.cpu_shares,
                vm.zfs_io_priority
            ),
            (256, 10, 2000, 100, 100)
        );
        assert_eq!((vm.ram, vm.max_swap, vm.vcpus), (256, 256, None));
        assert!(vm.autoboot);
        assert_eq!(vm.vm_type, "OS");
        assert_eq!(vm.state, VmState::Configured);
    }

    #[test]
    fn an_lx_kernel_version_is_kept_and_said_to_be_only_stored() {
        let mut vm = create(json!({"brand": "lx", "kernel_version": "4.3.0",
            "image_uuid": "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01"}));
        assert_eq!(vm.kernel_version.as_deref(), Some("4.3.0"));
        super::super::note_stored(&mut vm);
        super::super::note_stored(&mut vm);
        let said: Vec<String> = vm.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 1, "once: {said:?}");
        assert!(
            said[0].starts_with("stored only: kernel_version:"),
            "{said:?}"
        );
        vm.kernel_version = None;
        super::super::note_stored(&mut vm);
        assert!(vm.warnings.is_empty(), "gone with it");
        // An older vmmd's wording goes too, and ZFS tuning is named as stored.
        vm.warnings.push(hull_spec::warning::Warning::Other(
            "kernel_version: stored; the zone runs on this host's kernel and so on".into(),
        ));
        vm.zfs_root_recsize = Some(8192);
        super::super::note_stored(&mut vm);
        let said: Vec<String> = vm.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("stored only: zfs_root_recsize"),
            "{said:?}"
        );
    }

    #[test]
    fn a_record_given_back_to_create_is_refused_naming_only_record_properties() {
        // `vmadm get U | vmadm create`: refused as SmartOS's validation refuses it, each
        // property a record has and a payload may not give named; none called unknown.
        for payload in [
            json!({"brand": "joyent", "image_uuid": "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01",
                   "nics": [{"nic_tag": "admin", "ips": ["192.0.2.5/24"]}]}),
            json!({"brand": "kvm", "ram": 512, "disks": [{"size": 64, "boot": true}],
                   "nics": [{"nic_tag": "admin", "ips": ["dhcp"]}]}),
        ] {
            let record = serde_json::to_value(create(payload)).expect("serializes");
            let report = hull_spec::validate::validate_create(&record).expect_err("refused");
            let text = serde_json::to_string(&report).expect("serializes");
            assert!(!text.contains("unknown"), "{text}");
            assert!(report.bad_properties.iter().any(|p| p == "state"), "{text}");
        }
    }

    #[test]
    fn microvm_defaults_are_smartos_defaults() {
        let vm = create(json!({"brand": "kvm", "ram": 512}));
        assert_eq!(
            (vm.ram, vm.vcpus, vm.max_physical_memory),
            (512, Some(1), 1536)
        );
        let vm = create(json!({"brand": "bhyve"}));
        assert_eq!(
            (vm.ram, vm.vcpus, vm.max_physical_memory),
            (256, Some(1), 1280)
        );
        assert_eq!(vm.vm_type, "BHYVE");
    }

    #[test]
    fn nics_get_stable_macs_names_and_one_primary() {
        let uuid = "5b0d3c1e-2f4a-4e6b-9c8d-7a6b5c4d3e2f";
        let payload = json!({"brand": "lx", "uuid": uuid, "image_uuid": uuid,
            "nics": [{"nic_tag": "a"}, {"nic_tag": "b", "mac": "02:00:00:00:00:09"}]});
        let vm = create(payload.clone());
        assert_eq!(vm.nics[0].interface.as_deref(), Some("eth0"));
        assert_eq!(vm.nics[1].interface.as_deref(), Some("eth1"));
        assert_eq!(vm.nics[0].primary, Some(true));
        assert_eq!(vm.nics[1].primary, None);
        assert_eq!(
            vm.nics[1].mac.map(|m| m.to_string()).as_deref(),
            Some("02:00:00:00:00:09")
        );
        let again = create(payload);
        assert_eq!(vm.nics[0].mac, again.nics[0].mac, "MACs are stable");
        let mac = vm.nics[0].mac.expect("mac");
        assert_eq!(mac.bytes()[0], 0x02, "locally administered unicast");
        let taken = move |m: &MacAddr| *m == mac;
        let other = generate_mac(vm.uuid, 0, &MacPool::new(&taken)).expect("free mac");
        assert_ne!(other, mac);
    }

    #[test]
    fn disks_get_paths_under_the_data_root() {
        let vm = create(json!({"brand": "kvm", "disks": [{"size": 10}, {"path": "/srv/d.img"}]}));
        let p0 = vm.disks[0].path.as_deref().expect("path");
        assert!(
            p0.starts_with("/var/lib/hull/guests/") && p0.ends_with("/disk0.img"),
            "{p0}"
        );
        assert_eq!(vm.disks[1].path.as_deref(), Some("/srv/d.img"));
    }
}
