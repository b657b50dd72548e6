//! Builds one VM from a [`VmConfig`] and runs it until it stops: KVM and guest memory, the
//! in-kernel irqchip (and the PIT, once the guest uses it), the port and MMIO buses with their devices, the boot data, the
//! vCPU threads, the event loop (console input, TAP readiness, signals) and the control
//! socket. Returns why the VM stopped; the caller picks the exit status.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::acpi::AcpiLayout;
use crate::boot::{self, BootError, regs};
use crate::bus::{Bus, BusError, lock};
use crate::config::{ConfigError, ConsoleConfig, DiskIo, NetConfig, NetIo, VmConfig};
use crate::control::{ControlError, ControlServer, Controller};
use crate::devices::IrqTrigger;
use crate::devices::acpi_pm::{ACPI_PM_BASE, ACPI_PM_LEN, AcpiPm, PowerSink};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_IRQ, I8042_LEN, Keyboard, ResetSink};
use crate::devices::serial::batch::{IDLE_DRAIN, TxBatch};
use crate::devices::serial::metadata::{self, COM2_BASE, COM2_IRQ, COM2_LEN, MetadataPort};
use crate::devices::serial::terminal::RawTerminal;
use crate::devices::serial::{
    COM1_BASE, COM1_IRQ, COM1_LEN, ConsoleTarget, Serial, SharedSocketConsole,
};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::balloon::{Balloon, DontNeed, balloon_pages};
use crate::devices::virtio::block::{
    self as block, Backend, Block, BlockError, DiskEngine, DiskPool, DiskRing, POOL_WORKERS,
};
use crate::devices::virtio::mmio::{Interrupt, MmioError, MmioTransport, QUEUE_NOTIFY};
use crate::devices::virtio::net::vhost::{self, VhostError, VhostNet};
use crate::devices::virtio::net::{Net, NetError, TX_QUEUE as NET_TX_QUEUE, Tap};
use crate::devices::virtio::rng::{GetRandom, Rng};
use crate::exit_file::ExitFile;
use crate::memory::{
    self, GuestMemory, IRQ_MAX, KVM_TSS_ADDRESS, MMIO_GAP_START, MemoryError, VIRTIO_IRQ_BASE,
    VIRTIO_MMIO_SIZE,
};
use crate::pit::LazyPit;
use crate::stats::Stats;
pub use crate::vcpu::StopReason;
use crate::vcpu::{RunState, Vcpu, install_kick_handler};

/// KVM capabilities the VMM cannot run without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "IRQCHIP"),
    (Cap::UserMemory, "USER_MEMORY"),
    (Cap::SetTssAddr, "SET_TSS_ADDR"),
    (Cap::Pit2, "PIT2"),
    (Cap::PitState2, "PIT_STATE2"),
    (Cap::Irqfd, "IRQFD"),
    (Cap::ExtCpuid, "EXT_CPUID"),
];

/// Capabilities used when present (or wanted by later features), reported when missing.
const OPTIONAL_CAPS: &[(Cap, &str)] = &[
    (Cap::Xcrs, "XCRS"),
    (Cap::Xsave, "XSAVE"),
    (Cap::TscDeadlineTimer, "TSC_DEADLINE_TIMER"),
    (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
    (Cap::AdjustClock, "ADJUST_CLOCK"),
    (Cap::VcpuEvents, "VCPU_EVENTS"),
    (Cap::Debugregs, "DEBUGREGS"),
    (Cap::Ioeventfd, "IOEVENTFD"),
];

const TOKEN_SIGNAL: u64 = 1;
const TOKEN_CONSOLE_IN: u64 = 2;
const TOKEN_CONSOLE_LISTEN: u64 = 3;
const TOKEN_STOP: u64 = 4;
const TOKEN_CONTROL_LISTEN: u64 = 5;
const TOKEN_MDATA_LISTEN: u64 = 6;
const TOKEN_MDATA_IN: u64 = 7;
const TOKEN_MDATA_RESUME: u64 = 8;
/// NICs are 100 + index (IRQs run out long before 100 of them), control clients 200 + slot.
const TOKEN_NET_BASE: u64 = 100;
const TOKEN_CONTROL_BASE: u64 = 200;

/// Errors from building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("invalid VM configuration")]
    Config(#[from] ConfigError),
    #[error("cannot use /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error("KVM lacks required capabilities: {0}")]
    MissingCaps(String),
    #[error("KVM refused to {what}")]
    KvmSetup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot create guest memory")]
    Memory(#[from] MemoryError),
    #[error("cannot boot the guest")]
    Boot(#[from] BootError),
    #[error("cannot set up vCPU {id}")]
    Vcpu {
        id: u8,
        #[source]
        source: regs::RegsError,
    },
    #[error("cannot use the saved CPUID table")]
    CpuidTable(#[from] boot::cpuid_table::CpuidTableError),
    #[error("cannot place a device")]
    Bus(#[from] BusError),
    #[error("cannot open a disk")]
    Block(#[from] BlockError),
    #[error("cannot open a network device")]
    Net(#[from] NetError),
    #[error("cannot create a virtio transport")]
    Mmio(#[from] MmioError),
    #[error("too many devices: IRQs run out after {0}")]
    TooManyDevices(usize),
    #[error("NIC {0} cannot use vhost-net (--net-io vhost): {1}")]
    VhostUnfit(usize, &'static str),
    #[error("NIC {0} cannot use vhost-net (--net-io vhost)")]
    Vhost(usize, #[source] VhostError),
    #[error("cannot set up the control socket")]
    Control(#[from] ControlError),
    #[error("cannot confine the VMM")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("cannot set up the {what}")]
    Host {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Host { what, source }
}

fn kvm_setup(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::KvmSetup { what, source }
}

/// Names of optional KVM capabilities this host lacks.
pub fn missing_optional_caps(kvm: &Kvm) -> Vec<&'static str> {
    OPTIONAL_CAPS
        .iter()
        .filter(|(c, _)| !kvm.check_extension(*c))
        .map(|(_, n)| *n)
        .collect()
}

struct ResetToStop(Arc<RunState>);

impl ResetSink for ResetToStop {
    fn reset(&self) {
        self.0.stop(StopReason::Reset);
    }
}

impl PowerSink for ResetToStop {
    fn power_off(&self) {
        self.0.stop(StopReason::PowerOff);
    }

    fn reset(&self) {
        self.0.stop(StopReason::Reset);
    }
}

/// How long a guest gets to power off after SIGTERM presses its power button.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The guest's stop buttons: the ACPI power button (an edge on the Generic Event Device's
/// IRQ) and Ctrl-Alt-Del on the i8042 keyboard, for guests without ACPI.
pub struct PowerButton {
    acpi: EventFd,
    keyboard: Option<Arc<Mutex<dyn Keyboard>>>,
}

impl std::fmt::Debug for PowerButton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerButton").finish_non_exhaustive()
    }
}

impl PowerButton {
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        PowerButton {
            acpi: EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd"),
            keyboard: None,
        }
    }

    /// Presses not yet delivered (tests).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> u64 {
        self.acpi.read().unwrap_or(0)
    }

    /// Presses the ACPI power button.
    pub fn press(&self) {
        // A full counter only means a press is already pending.
        let _ = self.acpi.write(1);
    }

    /// Types Ctrl-Alt-Del.
    pub fn ctrl_alt_del(&self) {
        if let Some(k) = &self.keyboard {
            lock(k).ctrl_alt_del();
        }
    }
}

/// Registers guest RAM with KVM.
fn map_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| VmError::Host {
                what: "guest memory mapping",
                source: std::io::Error::other("region has no host address"),
            })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM (it is kept
        // by the devices and the caller until the process exits), and slots do not overlap.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_setup("map guest memory"))?;
    }
    Ok(())
}

/// Opens the console: where output goes and, for pty/unix, what to read input from. A terminal
/// on stdin goes into raw mode until the returned guard drops.
fn open_console(
    cfg: &ConsoleConfig,
) -> Result<(ConsoleTarget, ConsoleInput, Option<RawTerminal>), VmError> {
    match cfg {
        ConsoleConfig::Stdio => {
            let raw = RawTerminal::enter(libc::STDIN_FILENO).map_err(host("console terminal"))?;
            Ok((
                Arc::new(Mutex::new(Some(Box::new(std::io::stdout())))),
                ConsoleInput::Fd(libc::STDIN_FILENO),
                raw,
            ))
        }
        ConsoleConfig::Pty => {
            let (master, path) = open_pty().map_err(host("console pty"))?;
            eprintln!("vmm: console on {path}");
            let out = master.try_clone().map_err(host("console pty"))?;
            let fd = master.as_raw_fd();
            Ok((
                Arc::new(Mutex::new(Some(Box::new(out)))),
                ConsoleInput::Pty(master, fd),
                None,
            ))
        }
        ConsoleConfig::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path).map_err(host("console socket"))?;
            l.set_nonblocking(true).map_err(host("console socket"))?;
            let console = SharedSocketConsole::default();
            Ok((
                Arc::new(Mutex::new(Some(Box::new(console.clone())))),
                ConsoleInput::Listener(l, console),
                None,
            ))
        }
    }
}

fn open_pty() -> std::io::Result<(File, String)> {
    // SAFETY: plain libc calls on a fresh fd; ptsname's result is copied out at once, and
    // this runs before any other thread of ours exists (ptsname is not thread-safe).
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let f = File::from(OwnedFd::from_raw_fd(fd));
        if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let name = libc::ptsname(fd);
        if name.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let path = std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned();
        Ok((f, path))
    }
}

enum ConsoleInput {
    Fd(RawFd),
    Pty(File, RawFd),
    Listener(UnixListener, SharedSocketConsole),
}

/// Blocks SIGTERM and SIGINT in this thread (and threads spawned later) and returns a
/// signalfd for them, so the event loop handles them as ordinary events.
fn signal_fd() -> std::io::Result<File> {
    // SAFETY: sigset manipulation on a local, zero-initialised set; signalfd returns a new fd
    // that we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(File::from(OwnedFd::from_raw_fd(fd)))
    }
}

/// A device on the MMIO bus, with what the event loop needs for net devices.
struct Placed {
    transport: Arc<Mutex<MmioTransport>>,
    net: Option<NetPlace>,
}

/// Who moves a NIC's frames.
enum NetPlace {
    /// The VMM: the event loop watches the TAP, the I/O thread takes the transmit notifies.
    Vmm(RawFd),
    /// vhost-net, waiting on these notify eventfds of the receive and transmit queues.
    Vhost([EventFd; 2]),
}

/// The vhost-net instance NIC `nic` gets under `mode`: `auto` takes one where the NIC can
/// use it and /dev/vhost-net opens (another failure to open is said, and the VMM moves the
/// frames); `vhost` refuses the VM when the NIC cannot have one.
fn vhost_for(
    mode: NetIo,
    net: &Net,
    mem: &GuestMemory,
    nic: usize,
) -> Result<Option<VhostNet>, VmError> {
    match mode {
        NetIo::Vmm => Ok(None),
        NetIo::Auto if !net.vhost_capable() => Ok(None),
        NetIo::Auto => match VhostNet::open(mem) {
            Ok(v) => Ok(Some(v)),
            Err(e) if vhost::missing(&e) => Ok(None),
            Err(e) => {
                eprintln!("vmm: net{nic}: {e}; the VMM moves its frames");
                Ok(None)
            }
        },
        NetIo::Vhost if !net.vhost_capable() => Err(VmError::VhostUnfit(
            nic,
            "its TAP has no vnet header, or the VMM answers its DHCP",
        )),
        NetIo::Vhost => VhostNet::open(mem)
            .map(Some)
            .map_err(|e| VmError::Vhost(nic, e)),
    }
}

/// Asks KVM for its supported CPUID and saves it for later `--cpuid` runs
/// (see [`boot::cpuid_table`]).
pub fn save_supported_cpuid(path: &std::path::Path) -> Result<(), VmError> {
    let kvm = Kvm::new().map_err(VmError::Kvm)?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_setup("report supported CPUID"))?;
    boot::cpuid_table::save(path, &cpuid)?;
    Ok(())
}

/// Builds and runs the VM described by `config` until it stops. `exit` is the exit file the
/// caller will write afterwards: the main thread's filter lets it rename in that directory.
pub fn run(config: &VmConfig, exit: Option<&ExitFile>) -> Result<StopReason, VmError> {
    config.validate()?;
    let kvm = Kvm::new().map_err(VmError::Kvm)?;
    let missing: Vec<&str> = REQUIRED_CAPS
        .iter()
        .filter(|(c, _)| !kvm.check_extension(*c))
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(VmError::MissingCaps(missing.join(", ")));
    }
    let optional = missing_optional_caps(&kvm);
    if !optional.is_empty() {
        // Informational: nothing here depends on them yet (no XSAVE state is migrated).
        eprintln!(
            "vmm: note: KVM lacks optional capabilities: {}",
            optional.join(", ")
        );
    }
    let vm = Arc::new(kvm.create_vm().map_err(VmError::Kvm)?);
    let mem_bytes = config.mem_mib << 20;
    let mem = memory::create_guest_memory(config.mem_mib)?;
    map_memory(&vm, &mem)?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(kvm_setup("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_setup("create the irqchip"))?;

    let signals = signal_fd().map_err(host("signal handling"))?;
    install_kick_handler().map_err(|e| VmError::Host {
        what: "vCPU kick signal",
        source: std::io::Error::from_raw_os_error(e.errno()),
    })?;

    let state = RunState::new().map_err(host("stop event"))?;
    let stats = Arc::new(Stats::new(usize::from(config.vcpus)));
    let pit = Arc::new(LazyPit::new(vm.clone(), stats.clone()));

    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    // Restored when `run` returns, on the main thread: its filter allows TCSETS on this fd.
    let (console_target, console_in, raw_terminal) = open_console(&config.console)?;
    let serial_irq = IrqTrigger::new().map_err(host("serial IRQ"))?;
    vm.register_irqfd(&serial_irq.0, COM1_IRQ)
        .map_err(kvm_setup("register the serial IRQ"))?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, console_target.clone())));
    pio.insert(COM1_BASE, COM1_LEN, serial.clone())?;
    let mdata = match &config.metadata {
        Some(path) => {
            let link = MdataLink::bind(path)?;
            let irq = IrqTrigger::new().map_err(host("COM2 IRQ"))?;
            vm.register_irqfd(&irq.0, COM2_IRQ)
                .map_err(kvm_setup("register the COM2 IRQ"))?;
            let port = Arc::new(Mutex::new(MetadataPort::new(
                irq,
                link.agent.clone(),
                link.resume.clone(),
            )));
            pio.insert(COM2_BASE, COM2_LEN, port.clone())?;
            Some((link, port))
        }
        None => None,
    };
    let kbd_irq = IrqTrigger::new().map_err(host("keyboard IRQ"))?;
    vm.register_irqfd(&kbd_irq.0, I8042_IRQ)
        .map_err(kvm_setup("register the keyboard IRQ"))?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        ResetToStop(state.clone()),
        Some(kbd_irq),
    )));
    pio.insert(I8042_BASE, I8042_LEN, i8042.clone())?;
    pio.insert(
        ACPI_PM_BASE,
        ACPI_PM_LEN,
        Arc::new(Mutex::new(AcpiPm::new(ResetToStop(state.clone())))),
    )?;

    // Virtio devices: disks, then NICs, then the rng.
    let mut devices: Vec<(Box<dyn VirtioDevice>, Option<NetPlace>)> = Vec::new();
    let mut backends = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        let name = format!("vd{}", (b'a' + (i % 26) as u8) as char);
        let s = stats.disk(name.clone());
        let id = format!("hull-{name}");
        // A request queue per vCPU, as QEMU's virtio-blk gives (up to block::MAX_QUEUES).
        let disk = Block::open(&d.path, d.read_only, &id, s)?.with_queues(config.vcpus.into());
        backends.push((disk.backend(), disk.queue_count()));
        devices.push((Box::new(disk), None));
    }
    for (i, n) in config.nets.iter().enumerate() {
        let tap = match n {
            NetConfig::Fd(fd) => Tap::from_passed_fd(*fd)?,
            NetConfig::Tap(name) => Tap::open_named(name)?,
        };
        // NICs past the given MACs get a locally administered one of their own.
        let generated = [
            0x02,
            0x68,
            0x75,
            0x6c,
            (std::process::id() & 0xff) as u8,
            i as u8,
        ];
        let mac = config.macs.get(i).map_or(generated, |m| m.bytes());
        let mut net = Net::new(Box::new(tap), mac, stats.device(format!("net{i}")));
        if let Some(lease) = config.dhcp.iter().find(|l| l.nic == i) {
            net = net.with_dhcp(lease.clone());
        }
        let place = match vhost_for(config.net_io, &net, &mem, i)? {
            Some(v) => {
                let kicks = v.kicks();
                let kicks = [kicks[0].try_clone(), kicks[1].try_clone()];
                let [Ok(rx), Ok(tx)] = kicks else {
                    return Err(host("a vhost notify")(std::io::Error::last_os_error()));
                };
                lock(&stats.vhost_nets).push(format!("net{i}"));
                eprintln!("vmm: net{i}: frames moved by the kernel's vhost-net");
                net = net.with_vhost(v);
                NetPlace::Vhost([rx, tx])
            }
            None => NetPlace::Vmm(net.raw_fd()),
        };
        devices.push((Box::new(net), Some(place)));
    }
    devices.push((
        Box::new(Rng::new(Box::new(GetRandom), stats.device("rng0".into()))),
        None,
    ));
    // The balloon last, so that asking for one moves no other device.
    let balloon_index = match config.balloon {
        Some(mib) => {
            let s = stats.balloon.get_or_init(Default::default).clone();
            let mut b = Balloon::new(s, Box::new(DontNeed));
            b.set_target(balloon_pages(mib));
            devices.push((Box::new(b), None));
            Some(devices.len() - 1)
        }
        None => None,
    };

    let mut extra_cmdline = Vec::new();
    let mut placed = Vec::new();
    for (i, (dev, net)) in devices.into_iter().enumerate() {
        let irq = VIRTIO_IRQ_BASE + i as u32;
        if irq > IRQ_MAX {
            return Err(VmError::TooManyDevices(
                (IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize,
            ));
        }
        let addr = MMIO_GAP_START + i as u64 * VIRTIO_MMIO_SIZE;
        let interrupt = Interrupt::new().map_err(host("virtio IRQ"))?;
        vm.register_irqfd(&interrupt.irqfd, irq)
            .map_err(kvm_setup("register a virtio IRQ"))?;
        let transport = Arc::new(Mutex::new(MmioTransport::new(dev, mem.clone(), interrupt)?));
        mmio.insert(addr, VIRTIO_MMIO_SIZE, transport.clone())?;
        extra_cmdline.push(format!("virtio_mmio.device=4K@{addr:#x}:{irq}"));
        placed.push(Placed { transport, net });
    }

    // The queues the I/O thread serves: each disk's, and each NIC's transmit queue. Their
    // notifies become ioeventfds, writes KVM completes in the kernel: the vCPU goes straight
    // back to the guest. Disks were placed first, then NICs.
    let mut io_queues = Vec::new();
    let kick_at = |i: usize, queue: u32| -> Result<EventFd, VmError> {
        let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(host("queue notify"))?;
        let notify = MMIO_GAP_START + i as u64 * VIRTIO_MMIO_SIZE + QUEUE_NOTIFY;
        // That queue's index, written as one 32-bit value: other values and sizes still
        // reach the bus.
        vm.register_ioevent(&kick, &IoEventAddress::Mmio(notify), queue)
            .map_err(kvm_setup("register a queue's notify"))?;
        Ok(kick)
    };
    let disks = backends.len();
    let files: Vec<_> = backends.iter().map(|(b, _)| b.clone()).collect();
    let engine = disk_engine(config.disk_io, &files)?;
    if let Some(e) = &engine {
        stats.disk_io.set(e.name()).ok();
    }
    for (i, ((backend, queues), p)) in backends.into_iter().zip(&placed).enumerate() {
        for q in 0..queues {
            io_queues.push(IoQueue {
                kick: kick_at(i, q as u32)?,
                transport: p.transport.clone(),
                serve: Serve::Disk(backend.clone(), i as u32, q),
            });
        }
    }
    for (i, p) in placed.iter().enumerate().skip(disks) {
        match &p.net {
            Some(NetPlace::Vmm(_)) => io_queues.push(IoQueue {
                kick: kick_at(i, NET_TX_QUEUE as u32)?,
                transport: p.transport.clone(),
                serve: Serve::Notify(NET_TX_QUEUE as u32),
            }),
            // Both queues' notifies go to vhost's worker, never to a VMM thread.
            Some(NetPlace::Vhost(kicks)) => {
                for (q, kick) in kicks.iter().enumerate() {
                    let notify = MMIO_GAP_START + i as u64 * VIRTIO_MMIO_SIZE + QUEUE_NOTIFY;
                    vm.register_ioevent(kick, &IoEventAddress::Mmio(notify), q as u32)
                        .map_err(kvm_setup("register a vhost queue's notify"))?;
                }
            }
            None => {}
        }
    }

    let ged_irq = VIRTIO_IRQ_BASE + placed.len() as u32;
    if ged_irq > IRQ_MAX {
        return Err(VmError::TooManyDevices(placed.len()));
    }
    let button = Arc::new(PowerButton {
        acpi: EventFd::new(libc::EFD_NONBLOCK).map_err(host("power button IRQ"))?,
        keyboard: Some(i8042),
    });
    vm.register_irqfd(&button.acpi, ged_irq)
        .map_err(kvm_setup("register the power button IRQ"))?;
    let acpi_layout = AcpiLayout {
        vcpus: config.vcpus,
        virtio: (0..placed.len())
            .map(|i| {
                (
                    MMIO_GAP_START + i as u64 * VIRTIO_MMIO_SIZE,
                    VIRTIO_IRQ_BASE + i as u32,
                )
            })
            .collect(),
        ged_irq,
        com2: mdata.is_some(),
    };

    let cmdline = boot::build_cmdline(&config.cmdline, &extra_cmdline)?;
    let entry = boot::load(
        &mem,
        mem_bytes,
        &config.kernel,
        config.initrd.as_deref(),
        &cmdline,
        config.vcpus,
        Some(&acpi_layout),
    )?;
    boot::smbios::setup(&mem, config.uuid).map_err(BootError::Smbios)?;
    regs::write_boot_tables(&mem).map_err(|source| VmError::Vcpu { id: 0, source })?;

    let supported = match &config.cpuid {
        Some(path) => boot::cpuid_table::load(path)?,
        None => kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_setup("report supported CPUID"))?,
    };
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    let pio = Arc::new(pio);
    let mmio = Arc::new(mmio);
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let vcpu_err = |source| VmError::Vcpu { id, source };
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_setup("create a vCPU"))?;
        let mut cpuid = supported.clone();
        boot::cpuid::filter(cpuid.as_mut_slice(), id, config.vcpus, tsc_deadline);
        fd.set_cpuid2(&cpuid).map_err(kvm_setup("set CPUID"))?;
        regs::setup_msrs(&fd).map_err(vcpu_err)?;
        regs::setup_vcpu(&fd, entry.entry.raw_value()).map_err(vcpu_err)?;
        regs::setup_lapic(&fd).map_err(vcpu_err)?;
        vcpus.push(Vcpu {
            id,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            state: state.clone(),
            stats: stats.vcpus[usize::from(id)].clone(),
            pit: pit.clone(),
            pit_replayed: false,
            mem: mem.clone(),
            batch: None,
        });
    }
    let batch = vcpus
        .first()
        .and_then(|v| TxBatch::start(&kvm, &vm, &v.fd, serial.clone(), stats.clone()));
    for v in &mut vcpus {
        v.batch = batch.clone();
    }

    let control = match &config.control {
        Some(path) => Some(ControlServer::bind(
            path,
            Controller {
                state: state.clone(),
                stats: stats.clone(),
                vcpus: usize::from(config.vcpus),
                button: button.clone(),
                // Disks were placed first, in --disk order.
                disks: placed
                    .iter()
                    .take(config.disks.len())
                    .map(|p| p.transport.clone())
                    .collect(),
                balloon: balloon_index
                    .and_then(|i| placed.get(i))
                    .map(|p| p.transport.clone()),
                mem_mib: config.mem_mib,
            },
        )?),
        None => None,
    };

    let nets: Vec<(RawFd, Arc<Mutex<MmioTransport>>)> = placed
        .iter()
        .filter_map(|p| match p.net {
            Some(NetPlace::Vmm(fd)) => Some((fd, p.transport.clone())),
            _ => None,
        })
        .collect();
    let event_loop = EventLoop {
        epoll: Epoll::new().map_err(host("event loop"))?,
        signals,
        console_in,
        console_client: None,
        serial: serial.clone(),
        nets,
        control,
        state: state.clone(),
        button,
        stop_deadline: None,
        batch: batch.clone(),
        mdata,
    };
    event_loop.register().map_err(host("event loop"))?;

    // Threads: this one (setup, then the event loop), one per vCPU and, with disks or NICs,
    // one for their I/O. Nothing else: each thread costs a clone and, under its own seccomp filter, a
    // BPF compile in the kernel.
    if !io_queues.is_empty() {
        let io = IoThread::new(io_queues, engine, mem.clone()).map_err(host("I/O thread"))?;
        let st = state.clone();
        std::thread::Builder::new()
            .name("io".into())
            .spawn(move || io.run(&st))
            .map_err(host("I/O thread"))?;
    }
    for v in vcpus {
        let name = format!("vcpu{}", v.id);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || v.run())
            .map_err(host("vCPU thread"))?;
    }

    let extras = crate::seccomp::MainExtras {
        terminal: raw_terminal.as_ref().map(RawTerminal::fd),
        exit_dir: exit.map(ExitFile::dir_fd),
    };
    crate::seccomp::apply_with(crate::seccomp::ThreadRole::Main, &extras)?;
    let reason = event_loop.run();
    if let Some(b) = &batch {
        b.drain();
    }
    lock(&serial).flush();
    if let Some(b) = stats.report().balloon {
        // What the balloon did, for the VMM's log (vmmd keeps it with the guest's).
        let mib = |n: u64| n as f64 / f64::from(1 << 20);
        eprintln!(
            "vmm: balloon: target {:.1} MiB, held {:.1} MiB at the end; inflated {:.1} MiB, \
             deflated {:.1} MiB, free page reports {:.1} MiB, {} requests refused",
            mib(b.target_bytes),
            mib(b.actual_bytes),
            mib(b.inflated_bytes),
            mib(b.deflated_bytes),
            mib(b.reported_bytes),
            b.errors
        );
    }
    // vCPU threads may still be inside KVM_RUN: they hold guest memory and their fds until
    // the process exits, and nothing here tears the VM down (the kernel's exit does).
    drop(raw_terminal);
    Ok(reason)
}

/// How the disks' batches move, as `mode` asks (nothing without disks): for `Auto`,
/// io_uring where the kernel gives one, else worker threads (saying why on stderr); for
/// `IoUring`, io_uring or the error; for `Threads`, worker threads. The ring is made, and
/// the workers started, here: before any thread's filter.
fn disk_engine(mode: DiskIo, backends: &[Arc<Backend>]) -> Result<Option<DiskEngine>, VmError> {
    if backends.is_empty() {
        return Ok(None);
    }
    if mode != DiskIo::Threads {
        let fds: Vec<RawFd> = backends.iter().map(|b| b.raw_fd()).collect();
        match DiskRing::new(&fds) {
            Ok(ring) => return Ok(Some(DiskEngine::Ring(Box::new(ring)))),
            Err(e) if mode == DiskIo::Auto => {
                eprintln!("vmm: no io_uring for the disks ({e}); worker threads serve them");
            }
            Err(e) => return Err(host("io_uring for the disks")(e)),
        }
    }
    let pool = DiskPool::new(POOL_WORKERS, || {
        crate::seccomp::apply(crate::seccomp::ThreadRole::DiskWorker)
    })
    .map_err(host("disk worker threads"))?;
    Ok(Some(DiskEngine::Pool(pool)))
}

/// A queue the I/O thread serves, and how.
struct IoQueue {
    kick: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
    serve: Serve,
}

enum Serve {
    /// A disk's request queue (the third value): the I/O runs without the transport's lock
    /// ([`block::serve_kicked`]); the disk's file is this slot (the second) of the I/O
    /// thread's ring, when it has one.
    Disk(Arc<Backend>, u32, usize),
    /// A queue the device serves under the lock, as a vCPU's notify would (a NIC's TX).
    Notify(u32),
}

/// Device I/O off the vCPUs: waits for the notifies of the disks' queues and the NICs'
/// transmit queues and serves them, so a guest keeps running (and queueing, with EVENT_IDX
/// not notifying) while its requests are served.
struct IoThread {
    epoll: Epoll,
    queues: Vec<IoQueue>,
    /// How the disks' batches move (with disks).
    engine: Option<DiskEngine>,
    mem: GuestMemory,
}

impl IoThread {
    fn new(
        queues: Vec<IoQueue>,
        engine: Option<DiskEngine>,
        mem: GuestMemory,
    ) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        for (i, q) in queues.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                q.kick.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        Ok(IoThread {
            epoll,
            queues,
            engine,
            mem,
        })
    }

    fn run(mut self, state: &RunState) {
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadRole::Io) {
            state.stop(StopReason::VmmFailure(format!("I/O thread: {e}")));
            return;
        }
        let mut events = vec![EpollEvent::default(); self.queues.len()];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    state.stop(StopReason::VmmFailure(format!("I/O thread: {e}")));
                    return;
                }
            };
            for ev in &events[..n] {
                let Some(q) = self.queues.get(ev.data() as usize) else {
                    continue;
                };
                // The count only says "kicked"; the queue says what to do.
                let _ = q.kick.read();
                match &q.serve {
                    Serve::Disk(backend, slot, index) => {
                        let engine = self.engine.as_mut().map(|e| (e, *slot));
                        if let Err(e) =
                            block::serve_kicked(&q.transport, *index, backend, &self.mem, engine)
                        {
                            state.stop(StopReason::VmmFailure(format!("disk I/O: {e}")));
                            return;
                        }
                    }
                    Serve::Notify(index) => lock(&q.transport).notify(*index),
                }
            }
        }
    }
}

/// Host-side events, on the main thread: signals, console input, TAP readiness, the control
/// socket and the stop of the VM.
struct EventLoop {
    epoll: Epoll,
    signals: File,
    console_in: ConsoleInput,
    console_client: Option<std::os::unix::net::UnixStream>,
    serial: Arc<Mutex<Serial>>,
    nets: Vec<(RawFd, Arc<Mutex<MmioTransport>>)>,
    control: Option<ControlServer>,
    state: Arc<RunState>,
    button: Arc<PowerButton>,
    stop_deadline: Option<Instant>,
    /// Batched serial output, emptied at least every [`IDLE_DRAIN`] while batching is on.
    batch: Option<Arc<TxBatch>>,
    /// COM2 and the metadata agent's socket (`--metadata`).
    mdata: Option<(MdataLink, Arc<Mutex<MetadataPort>>)>,
}

/// The metadata agent's side of COM2: the socket it connects to, its connection (the read
/// end here, the write end shared with the port), and the port's resume event.
struct MdataLink {
    listener: std::os::unix::net::UnixListener,
    reader: Option<std::os::unix::net::UnixStream>,
    agent: metadata::Agent,
    resume: Arc<EventFd>,
}

impl MdataLink {
    fn bind(path: &std::path::Path) -> Result<MdataLink, VmError> {
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path)
            .map_err(host("listen on the metadata socket"))?;
        listener
            .set_nonblocking(true)
            .map_err(host("listen on the metadata socket"))?;
        Ok(MdataLink {
            listener,
            reader: None,
            agent: Arc::new(Mutex::new(None)),
            resume: Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(host("COM2 event"))?),
        })
    }
}

impl EventLoop {
    fn add(&self, fd: RawFd, events: EventSet, token: u64) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    fn register(&self) -> std::io::Result<()> {
        self.add(self.signals.as_raw_fd(), EventSet::IN, TOKEN_SIGNAL)?;
        self.add(self.state.stop_fd(), EventSet::IN, TOKEN_STOP)?;
        if let Some(c) = &self.control {
            self.add(c.listener_fd(), EventSet::IN, TOKEN_CONTROL_LISTEN)?;
        }
        match &self.console_in {
            // stdin may be /dev/null or a regular file, which epoll refuses: no input then.
            ConsoleInput::Fd(fd) => {
                let _ = self.add(*fd, EventSet::IN, TOKEN_CONSOLE_IN);
            }
            ConsoleInput::Pty(_, fd) => self.add(*fd, EventSet::IN, TOKEN_CONSOLE_IN)?,
            ConsoleInput::Listener(l, _) => {
                self.add(l.as_raw_fd(), EventSet::IN, TOKEN_CONSOLE_LISTEN)?
            }
        }
        if let Some((link, _)) = &self.mdata {
            self.add(link.listener.as_raw_fd(), EventSet::IN, TOKEN_MDATA_LISTEN)?;
            self.add(link.resume.as_raw_fd(), EventSet::IN, TOKEN_MDATA_RESUME)?;
        }
        for (i, (fd, _)) in self.nets.iter().enumerate() {
            // Edge-triggered: frames left in the TAP while the guest has no RX buffers are
            // picked up when it adds some, without the loop spinning meanwhile.
            self.add(
                *fd,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                TOKEN_NET_BASE + i as u64,
            )?;
        }
        Ok(())
    }

    fn console_input(&mut self) {
        let mut buf = [0u8; 64];
        let n = match &mut self.console_in {
            ConsoleInput::Fd(fd) => {
                // SAFETY: reads into a local buffer of the given length from an fd that stays
                // open for the life of the process (stdin).
                let n = unsafe { libc::read(*fd, buf.as_mut_ptr().cast(), buf.len()) };
                usize::try_from(n).unwrap_or(0)
            }
            ConsoleInput::Pty(f, _) => f.read(&mut buf).unwrap_or(0),
            ConsoleInput::Listener(..) => match &mut self.console_client {
                Some(c) => c.read(&mut buf).unwrap_or(0),
                None => 0,
            },
        };
        if n == 0 {
            // EOF or error: stop watching this source.
            let fd = match &self.console_in {
                ConsoleInput::Fd(fd) | ConsoleInput::Pty(_, fd) => Some(*fd),
                ConsoleInput::Listener(..) => self.console_client.as_ref().map(|c| c.as_raw_fd()),
            };
            if let Some(fd) = fd {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            self.console_client = None;
            if let ConsoleInput::Listener(_, console) = &self.console_in {
                lock(&console.0).detach();
            }
            return;
        }
        // A full FIFO drops input, as a UART without flow control does.
        lock(&self.serial).enqueue(&buf[..n]);
    }

    fn accept_console(&mut self) {
        let ConsoleInput::Listener(l, console) = &self.console_in else {
            return;
        };
        let Ok((stream, _)) = l.accept() else {
            return;
        };
        // One client at a time: a new one replaces the old.
        if let Some(old) = self.console_client.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                old.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        let Ok(out) = stream.try_clone() else {
            return;
        };
        lock(&console.0).attach(Box::new(out));
        if self
            .add(stream.as_raw_fd(), EventSet::IN, TOKEN_CONSOLE_IN)
            .is_ok()
        {
            self.console_client = Some(stream);
        }
    }

    /// A metadata agent connects: it replaces any other, and gets what the guest wrote
    /// while none was there.
    fn accept_mdata(&mut self) {
        let Some((link, port)) = &mut self.mdata else {
            return;
        };
        let Some(stream) = crate::control::accept_nonblocking(&link.listener) else {
            return;
        };
        if let Some(old) = link.reader.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                old.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        let Ok(writer) = stream.try_clone() else {
            return;
        };
        let fd = stream.as_raw_fd();
        link.reader = Some(stream);
        *lock(&link.agent) = Some(writer);
        lock(port).agent_connected();
        let _ = self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, TOKEN_MDATA_IN),
        );
    }

    /// The agent sent bytes (or closed): into COM2, or stop reading while the guest lags.
    fn mdata_input(&mut self) {
        let Some((link, port)) = &mut self.mdata else {
            return;
        };
        let Some(reader) = link.reader.as_mut() else {
            return;
        };
        let fd = reader.as_raw_fd();
        match metadata::read_agent(port, reader) {
            metadata::ReadOutcome::More => {}
            metadata::ReadOutcome::Paused => {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            metadata::ReadOutcome::Gone => {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                link.reader = None;
                *lock(&link.agent) = None;
            }
        }
    }

    /// The guest drained COM2's backlog: read the agent again.
    fn mdata_resume(&mut self) {
        let Some((link, _)) = &mut self.mdata else {
            return;
        };
        let _ = link.resume.read();
        if let Some(r) = &link.reader {
            let _ = self.epoll.ctl(
                ControlOperation::Add,
                r.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_MDATA_IN),
            );
        }
    }

    /// SIGTERM presses the power button, types Ctrl-Alt-Del and gives the guest [`STOP_GRACE`]
    /// to power off or reset;
    /// SIGINT or a second SIGTERM stops at once.
    fn signal(&mut self) {
        let mut info = [0u8; 128];
        if !matches!(self.signals.read(&mut info), Ok(128)) {
            return;
        }
        let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
        if signo == libc::SIGTERM as u32 && self.stop_deadline.is_none() {
            // Whichever the guest listens to: ACPI guests get the power button, others
            // Ctrl-Alt-Del.
            self.button.press();
            self.button.ctrl_alt_del();
            self.stop_deadline = Some(Instant::now() + STOP_GRACE);
            return;
        }
        let name = if signo == libc::SIGINT as u32 {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        self.state
            .stop(StopReason::Requested(format!("{name} received")));
    }

    /// Milliseconds epoll may sleep: forever, until the stop deadline, or while serial output
    /// is batched, until it is time to empty the ring.
    fn wait_timeout(&mut self) -> i32 {
        let deadline = self.deadline_timeout();
        match &self.batch {
            Some(b) if b.active() => {
                let idle = IDLE_DRAIN.as_millis() as i32;
                if deadline < 0 {
                    idle
                } else {
                    deadline.min(idle)
                }
            }
            _ => deadline,
        }
    }

    fn deadline_timeout(&mut self) -> i32 {
        match self.stop_deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    self.state.stop(StopReason::Requested(format!(
                        "SIGTERM: the guest did not power off within {} s",
                        STOP_GRACE.as_secs()
                    )));
                    self.stop_deadline = None;
                    return -1;
                }
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
            }
        }
    }

    /// Accepts pending control clients and watches them.
    fn accept_control(&mut self) {
        let Some(c) = self.control.as_mut() else {
            return;
        };
        while let Some((slot, fd)) = c.accept() {
            // Should watching fail, the client is never served: it sees no reply.
            let _ = self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, TOKEN_CONTROL_BASE + slot as u64),
            );
        }
    }

    /// Runs until the VM stops; returns why.
    fn run(mut self) -> StopReason {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let timeout = self.wait_timeout();
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.state
                        .stop(StopReason::VmmFailure(format!("event loop failed: {e}")));
                    0
                }
            };
            if let Some(b) = &self.batch {
                b.drain();
            }
            if let Some(reason) = self.state.reason() {
                return reason;
            }
            for ev in events.iter().take(n) {
                match ev.data() {
                    TOKEN_SIGNAL => self.signal(),
                    TOKEN_CONSOLE_IN => self.console_input(),
                    TOKEN_CONSOLE_LISTEN => self.accept_console(),
                    TOKEN_CONTROL_LISTEN => self.accept_control(),
                    TOKEN_MDATA_LISTEN => self.accept_mdata(),
                    TOKEN_MDATA_IN => self.mdata_input(),
                    TOKEN_MDATA_RESUME => self.mdata_resume(),
                    t if t >= TOKEN_CONTROL_BASE => {
                        if let Some(c) = self.control.as_mut() {
                            c.serve((t - TOKEN_CONTROL_BASE) as usize);
                        }
                    }
                    t if t >= TOKEN_NET_BASE => {
                        let idx = (t - TOKEN_NET_BASE) as usize;
                        if let Some((_, tr)) = self.nets.get(idx) {
                            lock(tr).host_event();
                        }
                    }
                    _ => {}
                }
            }
            // A stop from this round (signal, control shutdown) ends the loop at once.
            if let Some(reason) = self.state.reason() {
                return reason;
            }
        }
    }
}
