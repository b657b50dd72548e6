//! Record -> a microVM's zone: the zoned config of the zone its VMM runs in (a root of bind
//! mounts: the VMM and its libraries, the kernel, initrd and disks) and the VMM's arguments
//! ([`VmmArgs`], its init's argv). Pure: which VMM, libraries, CPUID table and kernel file
//! the host has is the caller's ([`VmmFiles`]). Also the reverse: what a running microVM's
//! config says it booted with.

use std::path::{Path, PathBuf};

use hull_spec::Vm;
use hull_vmm_proto::{Console, Disk, VmmArgs};
use zoned::config::{RootFile, RootIds, RootSpec, ZoneConfig, files};

use super::zone::limits;

/// Why a microVM record does not make a zone config. Each message is a reason after
/// "cannot start zone <uuid>: ", so it speaks of the guest as "it".
#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    /// Neither the record nor its boot disk's image gives a kernel.
    #[error(
        "it has no kernel: give \"kernel\" (a host path) in its payload, or boot it from a disk \
         image that carries one"
    )]
    NoKernel,
    /// More vCPUs than the VMM takes.
    #[error("its {0} vCPUs are too many")]
    TooManyVcpus(u32),
    /// A disk without a host path (records get one at create).
    #[error("its disk {0} has no path")]
    NoDiskPath(usize),
    /// A NIC without a MAC (records get one at create).
    #[error("its nic {0} has no mac")]
    NoMac(usize),
    /// Its routes do not make DHCP leases.
    #[error("its DHCP leases cannot be made")]
    Dhcp(#[source] super::ports::PortsError),
}

/// Where a microVM's zone shows the VMM its files.
mod vm_paths {
    pub const VMM: &str = "/vmm";
    pub const KERNEL: &str = "/vm/kernel";
    pub const INITRD: &str = "/vm/initrd";
    pub const CPUID: &str = "/vm/cpuid";
    pub const DISKS: &str = "/vm";
}

/// The VMM a microVM's zone runs: its binary, the shared libraries it loads, and the host's
/// saved KVM CPUID table when there is one.
#[derive(Debug, Clone, Copy)]
pub struct VmmFiles<'a> {
    pub binary: &'a Path,
    pub libs: &'a [PathBuf],
    pub cpuid: Option<&'a Path>,
    /// The file to boot in place of the record's kernel (its extracted vmlinux).
    pub kernel: Option<&'a Path>,
}

/// A microVM as zoned runs it: the record, the host's VMM files, the VMM's runtime directory
/// `run` on the host (for its control socket and exit report) and the first host id of the
/// zone's id range.
#[derive(Debug, Clone, Copy)]
pub struct MicrovmZone<'a> {
    pub vm: &'a Vm,
    pub vmm: VmmFiles<'a>,
    pub run: &'a Path,
    pub id_base: u32,
}

/// The zoned config of a microVM: a zone whose root holds only the VMM binary (and the
/// shared libraries it loads, and the host's CPUID table), the kernel, the initrd, the
/// disks and the VMM's runtime directory `run` (for its control socket and exit report),
/// and whose init is the VMM with the guest on its console.
impl TryFrom<MicrovmZone<'_>> for ZoneConfig {
    type Error = MicrovmError;

    fn try_from(z: MicrovmZone<'_>) -> Result<ZoneConfig, MicrovmError> {
        let MicrovmZone {
            vm,
            vmm,
            run,
            id_base,
        } = z;
        let ro = |host: &str, at: &str| RootFile {
            host: PathBuf::from(host),
            at: PathBuf::from(at),
            writable: false,
        };
        let kernel = vm.kernel.as_deref().ok_or(MicrovmError::NoKernel)?;
        let kernel = vmm
            .kernel
            .map(|k| k.to_string_lossy().into_owned())
            .unwrap_or_else(|| kernel.to_string());
        let mut files = vec![
            ro(&vmm.binary.to_string_lossy(), vm_paths::VMM),
            ro(&kernel, vm_paths::KERNEL),
        ];
        for lib in vmm.libs {
            let lib = lib.to_string_lossy();
            files.push(ro(&lib, &lib));
        }
        let vcpus = vm.vcpus.unwrap_or(1);
        let mut args = VmmArgs {
            kernel: Some(PathBuf::from(vm_paths::KERNEL)),
            cmdline: vm.cmdline.clone(),
            mem_mib: Some(vm.ram),
            vcpus: Some(u8::try_from(vcpus).map_err(|_| MicrovmError::TooManyVcpus(vcpus))?),
            console: Some(Console::Stdio),
            control: Some(Path::new(files::VMM_RUN).join(files::VMM_CONTROL)),
            exit_file: Some(Path::new(files::VMM_RUN).join(files::VMM_EXIT)),
            // The guest's SMBIOS says SmartOS ("SmartDC HVM") with its uuid, and COM2 is the
            // metadata agent's line (vmmd connects to this socket from the host side).
            uuid: Some(vm.uuid.to_string()),
            metadata: Some(Path::new(files::VMM_RUN).join(files::VMM_METADATA)),
            ..VmmArgs::default()
        };
        if let Some(initrd) = vm.initrd.as_deref() {
            files.push(ro(initrd, vm_paths::INITRD));
            args.initrd = Some(PathBuf::from(vm_paths::INITRD));
        }
        if let Some(cpuid) = vmm.cpuid {
            files.push(ro(&cpuid.to_string_lossy(), vm_paths::CPUID));
            args.cpuid = Some(PathBuf::from(vm_paths::CPUID));
        }
        // The boot disk comes first: the guest sees it as vda.
        let mut disks: Vec<_> = vm.disks.iter().collect();
        disks.sort_by_key(|d| d.boot != Some(true));
        for (i, disk) in disks.into_iter().enumerate() {
            let host = disk.path.as_deref().ok_or(MicrovmError::NoDiskPath(i))?;
            let at = PathBuf::from(format!("{}/disk{i}", vm_paths::DISKS));
            let read_only = disk.read_only == Some(true);
            files.push(RootFile {
                host: PathBuf::from(host),
                at: at.clone(),
                writable: !read_only,
            });
            args.disks.push(Disk {
                path: at,
                read_only,
            });
        }
        files.push(RootFile {
            host: run.to_path_buf(),
            at: PathBuf::from(files::VMM_RUN),
            writable: true,
        });
        // zoned opens each TAP and hands it to the VMM as descriptor 3, 4...
        let taps: Vec<String> = vm
            .nics
            .iter()
            .enumerate()
            .map(|(i, nic)| {
                hull_vswitch::tap_name(&vm.uuid.to_string(), super::ports::nic_number(nic, i))
            })
            .collect();
        args.tap_fds = (3..).take(taps.len()).collect();
        // The guest's NICs have the record's MACs (the ones vmadm shows and the switch expects).
        for (i, nic) in vm.nics.iter().enumerate() {
            args.macs.push(nic.mac.ok_or(MicrovmError::NoMac(i))?);
        }
        // The VMM answers each NIC's DHCP with the record's address for it.
        args.dhcp = super::ports::dhcp_leases(vm).map_err(MicrovmError::Dhcp)?;
        // Every guest gets a balloon asking nothing: a Linux guest with virtio_balloon
        // reports the memory it frees (free page reporting) and the VMM gives it back to the
        // host, so an idle guest's footprint shrinks; `vmadm info UUID balloon` shows it.
        args.balloon = Some(0);
        let mut argv = vec![vm_paths::VMM.to_string()];
        argv.extend(args.to_argv());
        Ok(ZoneConfig {
            uuid: vm.uuid.to_string(),
            hostname: vm.hostname.clone().unwrap_or_else(|| vm.uuid.to_string()),
            root: RootSpec::Vmm { files },
            init: argv,
            id_base,
            cgroup: format!("hull/{}", vm.uuid),
            // The guest's RAM lives in the VMM's memory: max_physical_memory is ram plus the
            // VMM's overhead (vmadm's default: ram + 1 GiB).
            limits: limits(vm),
            resolvers: Vec::new(),
            dns_domain: None,
            stop_timeout_s: hull_spec::vm::defaults::stop_timeout(vm.brand),
            // SIGTERM makes the VMM press the guest's power button and stop it after a grace
            // period; vmmd asks over the control socket first (see Service::stop).
            stop_signal: None,
            root_ids: RootIds::Auto,
            taps,
            metadata: None,
            maintain_resolvers: false,
            mounts: Vec::new(),
            tmpfs_mib: None,
            tmpfs_mounts: Vec::new(),
            masked_paths: Vec::new(),
            read_only_paths: Vec::new(),
            rctls: Default::default(),
            reset_ends: false,
            process: None,
            console_log: false,
            join: None,
            netns: None,
            read_only_root: false,
            cgroup_fs: false,
            net_admin: false,
        })
    }
}

/// The arguments a microVM zone's VMM was started with, read back from its config's init
/// (the VMM, then [`VmmArgs::to_argv`]); `None` when they cannot be.
pub fn vmm_args(cfg: &ZoneConfig) -> Option<VmmArgs> {
    VmmArgs::from_argv(cfg.init.get(1..)?).ok()
}

/// Which `--disk` argument of a microVM zone's VMM carries the host file `disk`.
pub fn vmm_disk_index(cfg: &ZoneConfig, disk: &Path) -> Option<usize> {
    let RootSpec::Vmm { files } = &cfg.root else {
        return None;
    };
    let at = &files.iter().find(|f| f.host == disk)?.at;
    vmm_args(cfg)?.disks.iter().position(|d| d.path == *at)
}

/// The guest RAM (MiB) a running microVM's VMM was started with.
pub fn booted_ram(cfg: &ZoneConfig) -> Option<u64> {
    vmm_args(cfg)?.mem_mib
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_config(
        vm: &Vm,
        vmm: &VmmFiles,
        run: &Path,
        id_base: u32,
    ) -> Result<ZoneConfig, MicrovmError> {
        ZoneConfig::try_from(MicrovmZone {
            vm,
            vmm: *vmm,
            run,
            id_base,
        })
    }

    fn vm(extra: serde_json::Value) -> Vm {
        let mut v = serde_json::json!({"brand": "kvm", "autoboot": false, "ram": 96, "vcpus": 2,
            "kernel": "/boot/k", "initrd": "/boot/i", "cmdline": "console=ttyS0 quiet"});
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
        super::super::test_record(v)
    }

    #[test]
    fn a_microvm_zone_holds_its_files_and_runs_the_vmm() {
        let vm = vm(serde_json::json!({"disks": [
            {"path": "/data/d1.img", "read_only": true},
            {"path": "/data/boot.img", "boot": true}]}));
        let libs = [PathBuf::from("/lib64/ld-linux-x86-64.so.2")];
        let vmm = VmmFiles {
            binary: Path::new("/opt/vmm"),
            libs: &libs,
            cpuid: Some(Path::new("/data/zones/.kvm-cpuid")),
            kernel: None,
        };
        let cfg = vm_config(&vm, &vmm, Path::new("/z/vmm"), 7 << 16).expect("config");
        let RootSpec::Vmm { files } = &cfg.root else {
            panic!("a microVM gets a VMM root");
        };
        let at = |host: &str| {
            files
                .iter()
                .find(|f| f.host == Path::new(host))
                .map(|f| (f.at.to_string_lossy().into_owned(), f.writable))
        };
        assert_eq!(at("/opt/vmm"), Some(("/vmm".into(), false)));
        assert_eq!(at("/boot/k"), Some(("/vm/kernel".into(), false)));
        assert_eq!(at("/boot/i"), Some(("/vm/initrd".into(), false)));
        assert_eq!(at("/data/boot.img"), Some(("/vm/disk0".into(), true)));
        assert_eq!(at("/data/d1.img"), Some(("/vm/disk1".into(), false)));
        assert_eq!(at("/z/vmm"), Some(("/run/vmm".into(), true)));
        assert_eq!(
            at("/lib64/ld-linux-x86-64.so.2"),
            Some(("/lib64/ld-linux-x86-64.so.2".into(), false))
        );
        assert_eq!(
            at("/data/zones/.kvm-cpuid"),
            Some(("/vm/cpuid".into(), false))
        );
        assert_eq!(files.len(), 8);
        let argv = cfg.init.join(" ");
        assert_eq!(
            argv,
            format!(
                "/vmm --kernel /vm/kernel --initrd /vm/initrd --cmdline console=ttyS0 quiet \
                 --mem-mib 96 --vcpus 2 --cpuid /vm/cpuid --disk /vm/disk0 --disk /vm/disk1,ro \
                 --console stdio --control /run/vmm/control.sock --exit-file /run/vmm/exit.json \
                 --uuid {} --metadata /run/vmm/metadata.sock --balloon 0",
                vm.uuid
            )
        );
        assert_eq!(cfg.cgroup, format!("hull/{}", vm.uuid));
        assert_eq!(cfg.limits.memory_bytes, Some((96 + 1024) << 20));
        // A disk resize finds the VMM's index by host path: the boot disk went first.
        let idx = |p: &str| vmm_disk_index(&cfg, Path::new(p));
        assert_eq!(idx("/data/boot.img"), Some(0));
        assert_eq!(idx("/data/d1.img"), Some(1));
        assert_eq!(idx("/data/added-later.img"), None);
        assert_eq!(idx("/boot/k"), None, "a file that is not a disk");
        assert_eq!(booted_ram(&cfg), Some(96));
    }

    #[test]
    fn a_microvm_gets_its_nics_as_descriptors_and_macs_in_order() {
        let mut vm = vm(serde_json::json!({"vcpus": 1, "nics": [
            {"nic_tag": "a", "mac": "02:00:00:00:00:09"}, {"nic_tag": "b"}]}));
        vm.cmdline = None;
        let vmm = VmmFiles {
            binary: Path::new("/opt/vmm"),
            libs: &[],
            cpuid: None,
            kernel: None,
        };
        let cfg = vm_config(&vm, &vmm, Path::new("/z/vmm"), 0).expect("config");
        let second = vm.nics[1].mac.expect("a generated mac");
        assert_eq!(
            cfg.init.join(" "),
            format!(
                "/vmm --kernel /vm/kernel --initrd /vm/initrd --mem-mib 96 --vcpus 1 \
                 --tap-fd 3 --tap-fd 4 --mac 02:00:00:00:00:09 --mac {second} \
                 --console stdio --control /run/vmm/control.sock --exit-file /run/vmm/exit.json \
                 --uuid {} --metadata /run/vmm/metadata.sock --balloon 0",
                vm.uuid
            )
        );
        assert_eq!(cfg.taps.len(), 2);
        assert_eq!(booted_ram(&cfg), Some(96));
        // A config that is not a VMM's argv gives nothing, not a wrong answer.
        let mut odd = cfg.clone();
        odd.init.push("--mem-mib".into());
        assert_eq!(booted_ram(&odd), None);
    }

    #[test]
    fn dhcp_leases_carry_each_nics_static_ipv4_and_the_primarys_routes() {
        use std::net::Ipv4Addr;
        let vm = vm(serde_json::json!({
            "hostname": "web", "dns_domain": "example.com",
            "resolvers": ["192.0.2.53", "2001:db8::53"],
            "routes": {"10.0.0.0/8": "192.0.2.254", "198.51.100.0/24": "nics[2]"},
            "nics": [
                {"nic_tag": "a", "ips": ["2001:db8::10/64", "192.0.2.10/24"],
                 "gateways": ["192.0.2.1"], "primary": true, "mtu": 1400},
                {"nic_tag": "a", "ips": ["dhcp"]},
                {"nic_tag": "b", "ip": "203.0.113.5", "netmask": "255.255.255.128",
                 "gateway": "203.0.113.1"}
            ]
        }));
        let leases = super::super::ports::dhcp_leases(&vm).expect("leases");
        assert_eq!(leases.len(), 2, "none for the dhcp NIC: {leases:?}");
        let (a, c) = (&leases[0], &leases[1]);
        assert_eq!(
            (a.nic, a.address, a.prefix),
            (0, Ipv4Addr::new(192, 0, 2, 10), 24)
        );
        assert_eq!(a.routers, [Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(a.dns, [Ipv4Addr::new(192, 0, 2, 53)], "IPv4 resolvers only");
        assert_eq!(a.hostname.as_deref(), Some("web"));
        assert_eq!(a.domain.as_deref(), Some("example.com"));
        assert_eq!(a.mtu, Some(1400));
        assert_eq!(a.routes.len(), 1);
        assert_eq!(a.routes[0].via, Ipv4Addr::new(192, 0, 2, 254));
        assert_eq!(
            (c.nic, c.address, c.prefix),
            (2, Ipv4Addr::new(203, 0, 113, 5), 25)
        );
        assert!(
            c.routers.is_empty(),
            "only the primary NIC has the default route"
        );
        assert_eq!(c.routes.len(), 1);
        assert_eq!(
            (c.routes[0].dest, c.routes[0].prefix, c.routes[0].via),
            (Ipv4Addr::new(198, 51, 100, 0), 24, Ipv4Addr::UNSPECIFIED),
            "a route through nics[2] is on its link"
        );
    }

    #[test]
    fn a_microvm_without_a_kernel_is_refused_by_name() {
        let mut vm = vm(serde_json::json!({}));
        vm.kernel = None;
        let vmm = VmmFiles {
            binary: Path::new("/opt/vmm"),
            libs: &[],
            cpuid: None,
            kernel: None,
        };
        let e = vm_config(&vm, &vmm, Path::new("/z"), 0).unwrap_err();
        assert!(matches!(e, MicrovmError::NoKernel), "{e:?}");
        assert!(e.to_string().starts_with("it has no kernel: "), "{e}");
    }
}
