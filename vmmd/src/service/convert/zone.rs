//! Record -> the zoned config of a zone guest (brands joyent, joyent-minimal, lx): its root,
//! init, hostname, cgroup and limits. Pure: the id range and the root come from the caller.

use std::path::{Path, PathBuf};

use hull_cowstore::backend::RootSource;
use hull_spec::{Brand, Vm};
use zoned::cgroup::Limits;
use zoned::config::{MetadataMount, RootFile, RootIds, RootSpec, ZoneConfig};

/// A zone guest as zoned runs it: the record, what its root is mounted from and the first
/// host id of its id range.
#[derive(Debug)]
pub struct GuestZone<'a> {
    pub vm: &'a Vm,
    pub root: RootSource,
    pub id_base: u32,
    /// The static mdata tool to bind in as /usr/sbin/mdata-get and its siblings.
    pub mdata: Option<&'a Path>,
}

/// The mdata tools a zone gets, all one binary that picks its verb from its name.
pub const MDATA_TOOLS: [&str; 4] = ["mdata-get", "mdata-put", "mdata-delete", "mdata-list"];

/// Where the guest finds its metadata service and tools: SmartOS's places, under /native
/// in lx zones (whose /usr belongs to the distribution).
pub fn metadata_mount(brand: Brand, mdata: Option<&Path>) -> MetadataMount {
    let base = if brand == Brand::Lx { "/native" } else { "" };
    MetadataMount {
        at: PathBuf::from(format!("{base}/.zonecontrol")),
        tools: mdata
            .into_iter()
            .flat_map(|host| {
                MDATA_TOOLS.iter().map(move |name| RootFile {
                    host: host.to_path_buf(),
                    at: PathBuf::from(format!("{base}/usr/sbin/{name}")),
                    writable: false,
                })
            })
            .collect(),
    }
}

/// The resource limits of a guest record.
pub fn limits(vm: &Vm) -> Limits {
    const MIB: u64 = 1 << 20;
    Limits {
        memory_bytes: Some(vm.max_physical_memory * MIB),
        swap_bytes: Some(vm.max_swap.max(vm.max_physical_memory) * MIB),
        cpu_cap_pct: vm.cpu_cap.filter(|c| *c > 0),
        cpu_shares: Some(vm.cpu_shares),
        max_lwps: Some(vm.max_lwps),
        io_weight: Some(vm.zfs_io_priority),
    }
}

/// The zoned config of a zone guest.
impl From<GuestZone<'_>> for ZoneConfig {
    fn from(z: GuestZone<'_>) -> ZoneConfig {
        let GuestZone {
            vm,
            root,
            id_base,
            mdata,
        } = z;
        let root = match root {
            RootSource::Dir(dir) => RootSpec::Bind { dir },
            RootSource::Overlay { lower, upper, work } => RootSpec::Overlay { lower, upper, work },
        };
        let init = vm
            .init_name
            .clone()
            .unwrap_or_else(|| "/sbin/init".to_string());
        ZoneConfig {
            uuid: vm.uuid.to_string(),
            hostname: vm.hostname.clone().unwrap_or_else(|| vm.uuid.to_string()),
            root,
            init: init.split_whitespace().map(str::to_string).collect(),
            id_base,
            cgroup: format!("hull/{}", vm.uuid),
            limits: limits(vm),
            resolvers: vm.resolvers.clone(),
            dns_domain: vm.dns_domain.clone(),
            stop_timeout_s: 30,
            // lx images run their distribution's init: sysvinit shuts down on SIGPWR (with the
            // `powerwait` inittab entry LXC and Incus also rely on) and ignores SIGTERM; zoned
            // sends systemd its own signal. joyent zones run busybox-style inits: SIGTERM.
            stop_signal: (vm.brand == Brand::Lx).then_some(libc::SIGPWR),
            root_ids: RootIds::Auto,
            taps: Vec::new(),
            metadata: Some(metadata_mount(vm.brand, mdata)),
        }
    }
}
