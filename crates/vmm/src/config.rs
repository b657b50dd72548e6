//! What one VM is asked to be: the parsed form of the `vmm` command line. Parsing and
//! validation of user input happens here so the rest of the crate takes typed values. (The
//! command line as its writers see it, flags and defaults, is [`hull_vmm_proto::VmmArgs`].)

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use hull_vmm_proto::MacAddr;

/// Highest vCPU count the MP table and the APIC id scheme are laid out for.
pub const MAX_VCPUS: u8 = 64;

/// Errors from parsing or validating a VM configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--disk` value had an unknown option.
    #[error("disk option {option:?} in {value:?} is not supported (only \"ro\" is)")]
    DiskOption { value: String, option: String },
    /// A `--disk` value had no path.
    #[error("disk value {0:?} has no path")]
    DiskPath(String),
    /// A `--console` value was not one of the supported kinds.
    #[error("console {0:?} is not supported: use stdio, pty or unix:PATH")]
    Console(String),
    /// Memory size out of range.
    #[error("memory size {0} MiB is out of range (16 to 65536 MiB)")]
    Memory(u64),
    /// vCPU count out of range.
    #[error("vCPU count {0} is out of range (1 to {MAX_VCPUS})")]
    Vcpus(u8),
    /// A TAP fd that cannot be one: a standard stream, or given twice.
    #[error("--tap-fd {0} is a standard stream or given more than once")]
    TapFd(RawFd),
    /// A MAC that does not parse, or is multicast or all zeros.
    #[error("MAC {0:?} is not a unicast address aa:bb:cc:dd:ee:ff")]
    Mac(String),
    /// More MACs than NICs.
    #[error("{macs} MACs for {nics} NICs")]
    Macs { macs: usize, nics: usize },
    /// A balloon target larger than the guest.
    #[error("balloon target {target} MiB is more than the guest's {mem} MiB")]
    Balloon { target: u64, mem: u64 },
}

/// Parses a `--mac` value: a MAC a NIC may own (unicast, not all zeros).
pub fn usable_mac(s: &str) -> Result<MacAddr, ConfigError> {
    s.parse::<MacAddr>()
        .ok()
        .filter(|mac| mac.is_usable())
        .ok_or_else(|| ConfigError::Mac(s.to_owned()))
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(ConfigError::DiskPath(s.to_owned()));
        }
        let mut read_only = false;
        for opt in parts {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                other => {
                    return Err(ConfigError::DiskOption {
                        value: s.to_owned(),
                        option: other.to_owned(),
                    });
                }
            }
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// Where a network device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetConfig {
    /// An already open TAP (or any packet-preserving) fd, without a vnet header.
    Fd(RawFd),
    /// A TAP device the VMM opens by name (needs CAP_NET_ADMIN when it does not exist yet).
    Tap(String),
}

/// Where the 8250 console is connected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConsoleConfig {
    /// Guest output on stdout, stdin to the guest.
    #[default]
    Stdio,
    /// A new pseudo-terminal; its path is printed on stderr.
    Pty,
    /// A Unix socket the VMM listens on; one client at a time.
    Unix(PathBuf),
}

impl FromStr for ConsoleConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(ConsoleConfig::Stdio),
            "pty" => Ok(ConsoleConfig::Pty),
            _ => match s.strip_prefix("unix:") {
                Some(p) if !p.is_empty() => Ok(ConsoleConfig::Unix(PathBuf::from(p))),
                _ => Err(ConfigError::Console(s.to_owned())),
            },
        }
    }
}

/// Everything needed to run one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    /// MACs of the first NICs, in order.
    pub macs: Vec<MacAddr>,
    pub console: ConsoleConfig,
    pub control: Option<PathBuf>,
    /// KVM's supported CPUID as `vmm --save-cpuid` saved it; `None` asks KVM.
    pub cpuid: Option<PathBuf>,
    /// The VM's uuid (SMBIOS type 1), wire order as written in text.
    pub uuid: Option<[u8; 16]>,
    /// Where the metadata agent connects: the far end of COM2.
    pub metadata: Option<PathBuf>,
    /// DHCP leases the VMM answers, by NIC.
    pub dhcp: Vec<hull_vmm_proto::DhcpLease>,
    /// A virtio-balloon, and the MiB it asks the guest for at first.
    pub balloon: Option<u64>,
    /// How the disks' data moves.
    pub disk_io: DiskIo,
    /// How the NICs' frames move.
    pub net_io: NetIo,
}

pub use hull_vmm_proto::{DiskIo, NetIo};

impl VmConfig {
    /// Checks ranges the rest of the crate relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(16..=65536).contains(&self.mem_mib) {
            return Err(ConfigError::Memory(self.mem_mib));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.macs.len() > self.nets.len() {
            return Err(ConfigError::Macs {
                macs: self.macs.len(),
                nics: self.nets.len(),
            });
        }
        // Each passed fd is owned (and closed) by exactly one device.
        let mut seen = std::collections::HashSet::new();
        for n in &self.nets {
            if let NetConfig::Fd(fd) = n
                && (*fd <= 2 || !seen.insert(*fd))
            {
                return Err(ConfigError::TapFd(*fd));
            }
        }
        if let Some(target) = self.balloon.filter(|t| *t > self.mem_mib) {
            return Err(ConfigError::Balloon {
                target,
                mem: self.mem_mib,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_values_parse() {
        let d: DiskConfig = "/a/b.img,ro".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/a/b.img"));
        assert!(d.read_only);
        assert!(!"/x".parse::<DiskConfig>().unwrap().read_only);
        assert!(matches!(
            "/x,bogus".parse::<DiskConfig>(),
            Err(ConfigError::DiskOption { .. })
        ));
        assert!(matches!(
            ",ro".parse::<DiskConfig>(),
            Err(ConfigError::DiskPath(_))
        ));
    }

    #[test]
    fn console_values_parse() {
        assert_eq!(
            "stdio".parse::<ConsoleConfig>().unwrap(),
            ConsoleConfig::Stdio
        );
        assert_eq!("pty".parse::<ConsoleConfig>().unwrap(), ConsoleConfig::Pty);
        assert_eq!(
            "unix:/run/c.sock".parse::<ConsoleConfig>().unwrap(),
            ConsoleConfig::Unix(PathBuf::from("/run/c.sock"))
        );
        assert!("unix:".parse::<ConsoleConfig>().is_err());
        assert!("tcp:1".parse::<ConsoleConfig>().is_err());
    }

    #[test]
    fn macs_parse_and_must_be_unicast() {
        assert_eq!(
            usable_mac("02:00:5e:10:00:0a").expect("mac").bytes(),
            [2, 0, 0x5e, 0x10, 0, 0x0a]
        );
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:0a:01",
            "01:00:5e:10:00:0a",
            "00:00:00:00:00:00",
            "02:00:5e:10:00:0g",
            "2:00:5e:10:00:0a",
        ] {
            assert!(
                matches!(usable_mac(bad), Err(ConfigError::Mac(s)) if s == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ranges_are_checked() {
        let mut c = VmConfig {
            kernel: PathBuf::from("k"),
            initrd: None,
            cmdline: String::new(),
            mem_mib: 128,
            vcpus: 1,
            disks: vec![],
            nets: vec![],
            macs: vec![],
            console: ConsoleConfig::Stdio,
            control: None,
            cpuid: None,
            uuid: None,
            metadata: None,
            dhcp: Vec::new(),
            balloon: Some(128),
            disk_io: DiskIo::Auto,
            net_io: NetIo::Auto,
        };
        assert!(c.validate().is_ok());
        c.balloon = Some(129);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "balloon target 129 MiB is more than the guest's 128 MiB"
        );
        c.balloon = None;
        c.macs = vec![MacAddr::new([2, 0, 0, 0, 0, 1])];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Macs { macs: 1, nics: 0 })
        ));
        c.macs.clear();
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(0))));
        c.vcpus = 2;
        c.mem_mib = 1;
        assert!(matches!(c.validate(), Err(ConfigError::Memory(1))));
        c.mem_mib = 64;
        c.nets = vec![NetConfig::Fd(5), NetConfig::Fd(5)];
        assert!(matches!(c.validate(), Err(ConfigError::TapFd(5))));
        c.nets = vec![NetConfig::Fd(1)];
        assert!(matches!(c.validate(), Err(ConfigError::TapFd(1))));
        c.nets = vec![NetConfig::Fd(5), NetConfig::Tap("tap0".into())];
        assert!(c.validate().is_ok());
    }
}
