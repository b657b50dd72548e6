//! `vmm`'s command line as a value. vmmd fills in a [`VmmArgs`] and runs `vmm` with
//! [`VmmArgs::to_argv`]; `vmm` parses its argv with clap and converts the result into a
//! [`VmmArgs`] in one place, and a test there checks that the two agree for every flag.
//!
//! Flags that `vmm` gives a default (`--cmdline`, `--mem-mib`, `--vcpus`, `--console`) are
//! `Option`s: `None` leaves the flag out and the VMM takes the default, so an argv says
//! exactly what its writer gave.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

pub use hull_spec::net::MacAddr;

/// Kernel command line the VMM uses without `--cmdline`.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// Guest memory in MiB without `--mem-mib`.
pub const DEFAULT_MEM_MIB: u64 = 128;
/// vCPUs without `--vcpus`.
pub const DEFAULT_VCPUS: u8 = 1;

/// Every flag `vmm` takes. The argv order is the field order; repeatable flags keep their
/// vector's order (the guest sees disks and NICs in it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmmArgs {
    /// `--kernel`: an x86-64 ELF vmlinux or a bzImage (required unless `save_cpuid`).
    pub kernel: Option<PathBuf>,
    /// `--initrd`.
    pub initrd: Option<PathBuf>,
    /// `--cmdline`; `None` is [`DEFAULT_CMDLINE`].
    pub cmdline: Option<String>,
    /// `--mem-mib`; `None` is [`DEFAULT_MEM_MIB`].
    pub mem_mib: Option<u64>,
    /// `--vcpus`; `None` is [`DEFAULT_VCPUS`].
    pub vcpus: Option<u8>,
    /// `--cpuid`: KVM's supported CPUID as `--save-cpuid` wrote it.
    pub cpuid: Option<PathBuf>,
    /// `--disk`, repeated: vda first.
    pub disks: Vec<Disk>,
    /// `--tap-fd`, repeated: open TAP descriptors, the first NICs.
    pub tap_fds: Vec<i32>,
    /// `--tap`, repeated: TAP devices the VMM opens by name, the NICs after the `tap_fds`.
    pub taps: Vec<String>,
    /// `--mac`, repeated: the NICs' MACs in NIC order; NICs past the end get generated ones.
    pub macs: Vec<MacAddr>,
    /// `--console`; `None` is [`Console::Stdio`].
    pub console: Option<Console>,
    /// `--control`: the control socket's path.
    pub control: Option<PathBuf>,
    /// `--exit-file`: where the [`crate::ExitRecord`] goes.
    pub exit_file: Option<PathBuf>,
    /// `--uuid`: the VM's uuid, which its SMBIOS tables give as the system's serial and uuid.
    pub uuid: Option<String>,
    /// `--metadata`: a Unix socket the VMM listens on for the metadata agent; the guest's
    /// second serial port (COM2) is the other end.
    pub metadata: Option<PathBuf>,
    /// `--dhcp`, repeated: the leases the VMM's DHCP server gives NICs.
    pub dhcp: Vec<crate::DhcpLease>,
    /// `--balloon`: give the guest a virtio-balloon, asking it for this many MiB at first
    /// (0: none yet; the control socket's `balloon` request changes it).
    pub balloon: Option<u64>,
    /// `--disk-io`: how the disks' data moves; `None` is [`DiskIo::Auto`].
    pub disk_io: Option<DiskIo>,
    /// `--net-io`: how the NICs' frames move; `None` is [`NetIo::Auto`].
    pub net_io: Option<NetIo>,
    /// `--save-cpuid`: save KVM's supported CPUID there and exit.
    pub save_cpuid: Option<PathBuf>,
    /// `--extract-vmlinux`: write the vmlinux inside the `kernel` bzImage there and exit.
    pub extract_vmlinux: Option<PathBuf>,
    /// `--find-boot`: a boot disk whose own boot config names the kernel to boot: find it,
    /// write it to `boot_out` and exit (no guest runs).
    pub find_boot: Option<PathBuf>,
    /// `--boot-out`: the directory `find_boot` writes into ([`crate::found`] says what).
    pub boot_out: Option<PathBuf>,
}

/// One `--disk`: `PATH` or `PATH,ro`. The VMM splits the value at commas, so `path` must
/// have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
}

/// `--console`: where the guest's serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Console {
    /// The VMM's stdin and stdout (`stdio`).
    #[default]
    Stdio,
    /// A new pseudo-terminal (`pty`).
    Pty,
    /// A Unix socket the VMM listens on (`unix:PATH`).
    Unix(PathBuf),
}

impl Console {
    fn to_arg(&self) -> OsString {
        match self {
            Console::Stdio => "stdio".into(),
            Console::Pty => "pty".into(),
            Console::Unix(path) => {
                let mut s = OsString::from("unix:");
                s.push(path);
                s
            }
        }
    }
}

/// Why [`VmmArgs::from_argv`] could not read an argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgvError {
    /// Not a flag `vmm` takes, or not in the `--flag VALUE` form.
    Unknown(String),
    /// A flag at the end, without its value.
    NoValue(String),
    /// A value its flag cannot take.
    BadValue { flag: String, value: String },
    /// A flag that takes one value, given twice.
    Repeated(String),
}

impl fmt::Display for ArgvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgvError::Unknown(arg) => write!(f, "{arg:?} is not a vmm flag"),
            ArgvError::NoValue(flag) => write!(f, "{flag} has no value"),
            ArgvError::BadValue { flag, value } => write!(f, "{flag} {value:?} is not valid"),
            ArgvError::Repeated(flag) => write!(f, "{flag} is given more than once"),
        }
    }
}

impl std::error::Error for ArgvError {}

/// Every flag, as [`VmmArgs::to_argv`] writes them.
const FLAGS: [&str; 23] = [
    "--kernel",
    "--initrd",
    "--cmdline",
    "--mem-mib",
    "--vcpus",
    "--cpuid",
    "--disk",
    "--tap-fd",
    "--tap",
    "--mac",
    "--console",
    "--control",
    "--exit-file",
    "--uuid",
    "--metadata",
    "--dhcp",
    "--balloon",
    "--disk-io",
    "--net-io",
    "--save-cpuid",
    "--extract-vmlinux",
    "--find-boot",
    "--boot-out",
];

/// A flag's value enum: `as_str` spells each variant, `FromStr` reads the spellings back and
/// refuses anything else naming the ones it takes (`one_of`).
macro_rules! spelled {
    ($name:ident, $one_of:literal, { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $name {
            /// The flag's spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                [$($name::$variant),+]
                    .into_iter()
                    .find(|d| d.as_str() == s)
                    .ok_or_else(|| format!("{s:?} is not {}", $one_of))
            }
        }
    };
}

/// How a microVM's disks move their data (`--disk-io`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskIo {
    /// io_uring where the kernel gives one, else worker threads.
    #[default]
    Auto,
    /// io_uring, or the VM does not start.
    IoUring,
    /// Worker threads, as where the kernel has no io_uring.
    Threads,
}

spelled!(DiskIo, "auto, io_uring or threads", {
    Auto => "auto",
    IoUring => "io_uring",
    Threads => "threads",
});

/// How a microVM's NICs move their frames (`--net-io`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetIo {
    /// The kernel's vhost-net where /dev/vhost-net opens and the NIC needs nothing of the
    /// VMM (no DHCP answered by it), else the VMM's I/O thread.
    #[default]
    Auto,
    /// vhost-net for every NIC, or the VM does not start.
    Vhost,
    /// The VMM's I/O thread for every NIC.
    Vmm,
}

spelled!(NetIo, "auto, vhost or vmm", {
    Auto => "auto",
    Vhost => "vhost",
    Vmm => "vmm",
});

fn push(out: &mut Vec<OsString>, flag: &str, value: impl Into<OsString>) {
    out.push(flag.into());
    out.push(value.into());
}

fn set_once<T>(slot: &mut Option<T>, flag: &str, value: T) -> Result<(), ArgvError> {
    if slot.replace(value).is_some() {
        return Err(ArgvError::Repeated(flag.to_owned()));
    }
    Ok(())
}

fn parse_disk(s: &str) -> Option<Disk> {
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty())?;
    let mut read_only = false;
    for opt in parts {
        read_only = match opt {
            "ro" => true,
            "rw" => false,
            _ => return None,
        };
    }
    Some(Disk {
        path: PathBuf::from(path),
        read_only,
    })
}

fn parse_console(s: &str) -> Option<Console> {
    match s {
        "stdio" => Some(Console::Stdio),
        "pty" => Some(Console::Pty),
        _ => s
            .strip_prefix("unix:")
            .filter(|p| !p.is_empty())
            .map(|p| Console::Unix(PathBuf::from(p))),
    }
}

impl VmmArgs {
    /// The arguments that say `self` to `vmm`, after the program name. Paths that are not
    /// UTF-8 are converted lossily: use [`Self::to_os_argv`] to run `vmm` with such paths.
    pub fn to_argv(&self) -> Vec<String> {
        self.to_os_argv()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// [`Self::to_argv`] with paths as they are.
    pub fn to_os_argv(&self) -> Vec<OsString> {
        let mut out = Vec::new();
        let o = &mut out;
        if let Some(p) = &self.kernel {
            push(o, "--kernel", p);
        }
        if let Some(p) = &self.initrd {
            push(o, "--initrd", p);
        }
        if let Some(c) = &self.cmdline {
            push(o, "--cmdline", c);
        }
        if let Some(m) = self.mem_mib {
            push(o, "--mem-mib", m.to_string());
        }
        if let Some(v) = self.vcpus {
            push(o, "--vcpus", v.to_string());
        }
        if let Some(p) = &self.cpuid {
            push(o, "--cpuid", p);
        }
        for d in &self.disks {
            let mut v = OsString::from(&d.path);
            if d.read_only {
                v.push(",ro");
            }
            push(o, "--disk", v);
        }
        for fd in &self.tap_fds {
            push(o, "--tap-fd", fd.to_string());
        }
        for t in &self.taps {
            push(o, "--tap", t);
        }
        for m in &self.macs {
            push(o, "--mac", m.to_string());
        }
        if let Some(c) = &self.console {
            push(o, "--console", c.to_arg());
        }
        if let Some(p) = &self.control {
            push(o, "--control", p);
        }
        if let Some(p) = &self.exit_file {
            push(o, "--exit-file", p);
        }
        if let Some(u) = &self.uuid {
            push(o, "--uuid", u);
        }
        if let Some(p) = &self.metadata {
            push(o, "--metadata", p);
        }
        for lease in &self.dhcp {
            push(o, "--dhcp", lease.to_arg());
        }
        if let Some(m) = self.balloon {
            push(o, "--balloon", m.to_string());
        }
        if let Some(d) = self.disk_io {
            push(o, "--disk-io", d.as_str());
        }
        if let Some(n) = self.net_io {
            push(o, "--net-io", n.as_str());
        }
        if let Some(p) = &self.save_cpuid {
            push(o, "--save-cpuid", p);
        }
        if let Some(p) = &self.extract_vmlinux {
            push(o, "--extract-vmlinux", p);
        }
        if let Some(p) = &self.find_boot {
            push(o, "--find-boot", p);
        }
        if let Some(p) = &self.boot_out {
            push(o, "--boot-out", p);
        }
        out
    }

    /// Reads back arguments that [`Self::to_argv`] wrote (without the program name), for a
    /// program that stored an argv and needs a value from it. Only the `--flag VALUE` form
    /// `to_argv` writes is read; `vmm` itself parses its argv with clap.
    pub fn from_argv<S: AsRef<str>>(argv: &[S]) -> Result<VmmArgs, ArgvError> {
        let mut a = VmmArgs::default();
        let mut it = argv.iter().map(AsRef::as_ref);
        while let Some(flag) = it.next() {
            if !FLAGS.contains(&flag) {
                return Err(ArgvError::Unknown(flag.to_owned()));
            }
            let value = it
                .next()
                .ok_or_else(|| ArgvError::NoValue(flag.to_owned()))?;
            let bad = || ArgvError::BadValue {
                flag: flag.to_owned(),
                value: value.to_owned(),
            };
            let path = PathBuf::from(value);
            match flag {
                "--kernel" => set_once(&mut a.kernel, flag, path)?,
                "--initrd" => set_once(&mut a.initrd, flag, path)?,
                "--cmdline" => set_once(&mut a.cmdline, flag, value.to_owned())?,
                "--mem-mib" => set_once(&mut a.mem_mib, flag, value.parse().map_err(|_| bad())?)?,
                "--vcpus" => set_once(&mut a.vcpus, flag, value.parse().map_err(|_| bad())?)?,
                "--cpuid" => set_once(&mut a.cpuid, flag, path)?,
                "--disk" => a.disks.push(parse_disk(value).ok_or_else(bad)?),
                "--tap-fd" => a.tap_fds.push(value.parse().map_err(|_| bad())?),
                "--tap" => a.taps.push(value.to_owned()),
                "--mac" => a.macs.push(value.parse().map_err(|_| bad())?),
                "--console" => {
                    set_once(&mut a.console, flag, parse_console(value).ok_or_else(bad)?)?
                }
                "--control" => set_once(&mut a.control, flag, path)?,
                "--exit-file" => set_once(&mut a.exit_file, flag, path)?,
                "--uuid" => set_once(&mut a.uuid, flag, value.to_owned())?,
                "--metadata" => set_once(&mut a.metadata, flag, path)?,
                "--dhcp" => a.dhcp.push(value.parse().map_err(|_| bad())?),
                "--balloon" => set_once(&mut a.balloon, flag, value.parse().map_err(|_| bad())?)?,
                "--disk-io" => set_once(&mut a.disk_io, flag, value.parse().map_err(|_| bad())?)?,
                "--net-io" => set_once(&mut a.net_io, flag, value.parse().map_err(|_| bad())?)?,
                "--save-cpuid" => set_once(&mut a.save_cpuid, flag, path)?,
                "--extract-vmlinux" => set_once(&mut a.extract_vmlinux, flag, path)?,
                "--find-boot" => set_once(&mut a.find_boot, flag, path)?,
                "--boot-out" => set_once(&mut a.boot_out, flag, path)?,
                _ => return Err(ArgvError::Unknown(flag.to_owned())),
            }
        }
        Ok(a)
    }
}

impl VmmArgs {
    /// Arguments with every option set (`save_cpuid` aside: it excludes `cpuid`), for tests
    /// of a reader of this argv: [`VmmArgs::from_argv`] and vmm's own parser.
    #[doc(hidden)]
    pub fn every_option() -> VmmArgs {
        VmmArgs {
            kernel: Some("/vm/kernel".into()),
            initrd: Some("/vm/initrd".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            mem_mib: Some(96),
            vcpus: Some(2),
            cpuid: Some("/vm/cpuid".into()),
            disks: vec![
                Disk {
                    path: "/vm/disk0".into(),
                    read_only: false,
                },
                Disk {
                    path: "/vm/disk1".into(),
                    read_only: true,
                },
            ],
            tap_fds: vec![3, 4],
            taps: vec!["tap0".into()],
            macs: vec![
                MacAddr::new([2, 8, 0x20, 0xab, 0, 1]),
                MacAddr::new([0x0a, 0xff, 0, 0, 0, 2]),
            ],
            console: Some(Console::Unix("/run/c.sock".into())),
            control: Some("/run/vmm/control.sock".into()),
            exit_file: Some("/run/vmm/exit.json".into()),
            uuid: Some("9f4c2d1e-0000-4000-8000-000000000001".into()),
            metadata: Some("/run/vmm/metadata.sock".into()),
            dhcp: vec![crate::DhcpLease {
                nic: 0,
                address: std::net::Ipv4Addr::new(192, 0, 2, 10),
                prefix: 24,
                routers: vec![std::net::Ipv4Addr::new(192, 0, 2, 1)],
                dns: Vec::new(),
                hostname: Some("web".into()),
                domain: None,
                routes: Vec::new(),
                mtu: None,
                lease_secs: 3600,
            }],
            balloon: Some(64),
            disk_io: Some(DiskIo::IoUring),
            net_io: Some(NetIo::Vmm),
            save_cpuid: None,
            extract_vmlinux: Some("/tmp/out".into()),
            find_boot: Some("/vm/disk0".into()),
            boot_out: Some("/tmp/boot".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_written_in_field_order_and_read_back() {
        let a = VmmArgs::every_option();
        let argv = a.to_argv();
        assert_eq!(
            argv.join(" "),
            "--kernel /vm/kernel --initrd /vm/initrd --cmdline console=ttyS0 quiet \
             --mem-mib 96 --vcpus 2 --cpuid /vm/cpuid --disk /vm/disk0 --disk /vm/disk1,ro \
             --tap-fd 3 --tap-fd 4 --tap tap0 --mac 02:08:20:ab:00:01 --mac 0a:ff:00:00:00:02 \
             --console unix:/run/c.sock --control /run/vmm/control.sock \
             --exit-file /run/vmm/exit.json --uuid 9f4c2d1e-0000-4000-8000-000000000001 \
             --metadata /run/vmm/metadata.sock \
             --dhcp {\"nic\":0,\"address\":\"192.0.2.10\",\"prefix\":24,\"routers\":[\"192.0.2.1\"],\"hostname\":\"web\",\"lease_secs\":3600} \
             --balloon 64 --disk-io io_uring --net-io vmm --extract-vmlinux /tmp/out --find-boot /vm/disk0 --boot-out /tmp/boot"
        );
        assert_eq!(VmmArgs::from_argv(&argv), Ok(a));
        let save = VmmArgs {
            save_cpuid: Some("/t".into()),
            ..VmmArgs::default()
        };
        assert_eq!(save.to_argv(), ["--save-cpuid", "/t"]);
        assert_eq!(VmmArgs::from_argv(&save.to_argv()), Ok(save));
        assert!(VmmArgs::default().to_argv().is_empty());
        for c in [Console::Stdio, Console::Pty] {
            let a = VmmArgs {
                console: Some(c),
                ..VmmArgs::default()
            };
            assert_eq!(VmmArgs::from_argv(&a.to_argv()), Ok(a));
        }
    }

    #[test]
    fn what_to_argv_never_writes_is_refused() {
        let bad = |argv: &[&str]| VmmArgs::from_argv(argv).unwrap_err().to_string();
        assert_eq!(bad(&["--mem-mib"]), "--mem-mib has no value");
        assert_eq!(bad(&["--mem-mib=5"]), "\"--mem-mib=5\" is not a vmm flag");
        assert_eq!(bad(&["/vmm"]), "\"/vmm\" is not a vmm flag");
        assert_eq!(bad(&["--frob", "1"]), "\"--frob\" is not a vmm flag");
        assert_eq!(bad(&["--vcpus", "300"]), "--vcpus \"300\" is not valid");
        assert_eq!(bad(&["--disk", "/d,rx"]), "--disk \"/d,rx\" is not valid");
        assert_eq!(bad(&["--disk", ",ro"]), "--disk \",ro\" is not valid");
        assert_eq!(
            bad(&["--mac", "2:0:0:0:0:1"]),
            "--mac \"2:0:0:0:0:1\" is not valid"
        );
        assert_eq!(
            bad(&["--console", "unix:"]),
            "--console \"unix:\" is not valid"
        );
        assert_eq!(
            bad(&["--kernel", "a", "--kernel", "b"]),
            "--kernel is given more than once"
        );
        // A disk's rw option is the default: read back, it is no option.
        let rw = VmmArgs::from_argv(&["--disk", "/d,ro,rw"]).unwrap();
        assert_eq!(
            rw.disks,
            [Disk {
                path: "/d".into(),
                read_only: false
            }]
        );
    }
}
