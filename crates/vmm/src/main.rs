//! `vmm`: runs one microVM in the foreground. Exit status 0 when the guest resets, powers off
//! or is shut down on request; 1 on a VMM error (bad input included); 2 when the guest faulted
//! (triple fault, KVM internal error...). The last stderr line, and the `--exit-file` record
//! when asked for, say which.
//!
//! `#![no_main]`: the C `main` below is the entry point, which skips std's runtime start-up for
//! the main thread. On Linux that start-up reads /proc/self/maps to find the main stack's guard
//! page and installs a SIGSEGV/SIGBUS handler with an alternate signal stack, in this thread
//! and in every thread spawned later: a dozen syscalls at every launch (timed in
//! docs/PERFORMANCE.md, "Figures behind design choices"), for a nicer message on stack overflow
//! (which still kills the VMM, by SIGSEGV). What std would have done and the VMM needs, `main`
//! does itself: ignore SIGPIPE, flush stdout.

// Test builds keep the test harness's own main.
#![cfg_attr(not(test), no_main)]

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use hull_vmm::config::{ConsoleConfig, DiskConfig, NetConfig, VmConfig, usable_mac};
use hull_vmm::exit_file::ExitFile;
use hull_vmm::{StopReason, run};
use hull_vmm_proto::{
    Console, DEFAULT_CMDLINE, DEFAULT_MEM_MIB, DEFAULT_VCPUS, DhcpLease, Disk, DiskIo, ExitReason,
    ExitRecord, MacAddr, NetIo, VmmArgs,
};

/// Run one microVM on KVM until the guest stops.
#[derive(Debug, Parser)]
#[command(name = "vmm", version)]
struct Args {
    /// Kernel to boot: an x86-64 ELF vmlinux or a bzImage.
    #[arg(long, required_unless_present_any = ["save_cpuid", "find_boot"])]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (virtio_mmio.device= entries are appended).
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = DEFAULT_MEM_MIB)]
    mem_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = DEFAULT_VCPUS)]
    vcpus: u8,
    /// Raw disk image, PATH or PATH,ro; repeatable.
    #[arg(long = "disk")]
    disks: Vec<DiskConfig>,
    /// Open TAP fd (no vnet header) for a NIC; repeatable.
    #[arg(long = "tap-fd")]
    tap_fds: Vec<i32>,
    /// TAP device to open by name for a NIC; repeatable.
    #[arg(long = "tap")]
    taps: Vec<String>,
    /// MAC address of a NIC (aa:bb:cc:dd:ee:ff), in the NICs' order (--tap-fd ones, then
    /// --tap ones); NICs without one get a generated local address.
    #[arg(long = "mac", value_parser = usable_mac)]
    macs: Vec<MacAddr>,
    /// Console: stdio, pty or unix:PATH.
    #[arg(long, default_value = "stdio")]
    console: ConsoleConfig,
    /// Control socket path (JSON lines: pause, resume, shutdown, stats).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Write {"reason":..,"detail":..} here (atomically) right before exiting.
    #[arg(long)]
    exit_file: Option<PathBuf>,
    /// The VM's uuid: its SMBIOS tables give it as the system's uuid and serial number.
    #[arg(long, value_parser = parse_uuid)]
    uuid: Option<String>,
    /// Listen on this Unix socket for the guest metadata agent, the far end of the guest's
    /// second serial port (COM2, 0x2f8, IRQ 3). Without it the guest has no COM2.
    #[arg(long)]
    metadata: Option<PathBuf>,
    /// Answer DHCP on a NIC with this lease (JSON: nic, address, prefix, routers, dns,
    /// hostname, domain, routes, mtu, lease_secs); repeatable, one per NIC.
    #[arg(long)]
    dhcp: Vec<DhcpLease>,
    /// Give the guest a virtio-balloon (free page reporting included), asking it for MIB of
    /// its memory at first (0: nothing yet). The control socket's `balloon` request changes
    /// the target; `stats` shows what the guest gave back.
    #[arg(long, value_name = "MIB")]
    balloon: Option<u64>,
    /// How the disks' data moves: io_uring (a batch of requests in flight at once, the ring
    /// restricted to reads, writes and flushes of the disks' files), threads (a batch done
    /// side by side by 4 worker threads), or auto (io_uring where the kernel gives one, else
    /// threads; `stats` says which).
    #[arg(long, value_name = "auto|io_uring|threads")]
    disk_io: Option<DiskIo>,
    /// How the NICs' frames move: vhost (the host kernel's vhost-net moves them between the
    /// TAP and the guest, no VMM thread on the way), vmm (the VMM's I/O thread), or auto
    /// (vhost where /dev/vhost-net opens, for NICs whose TAP carries a vnet header and whose
    /// DHCP the VMM does not answer; `stats` names the vhost NICs).
    #[arg(long, value_name = "auto|vhost|vmm")]
    net_io: Option<NetIo>,
    /// KVM's supported CPUID as --save-cpuid wrote it on this host, instead of asking KVM
    /// (which costs ~60 host CPUID instructions). Stale tables are the caller's to avoid:
    /// vmmd keeps one per host boot and KVM module state.
    #[arg(long)]
    cpuid: Option<PathBuf>,
    /// Save KVM's supported CPUID to PATH (atomically) for later --cpuid runs, and exit.
    #[arg(long, value_name = "PATH", conflicts_with = "cpuid")]
    save_cpuid: Option<PathBuf>,
    /// Write the vmlinux inside the --kernel bzImage (gzip, xz or zstd payload) to PATH, a
    /// new file, and exit: 0 when written, 3 when there is nothing to extract (boot the
    /// bzImage; PATH is not created), 1 on an error (PATH may hold part of it: write to a
    /// temporary name). Decompresses under a seccomp filter that allows only writing the
    /// open output.
    #[arg(
        long,
        value_name = "PATH",
        requires = "kernel",
        conflicts_with = "save_cpuid"
    )]
    extract_vmlinux: Option<PathBuf>,
    /// Find the kernel this boot disk's own config names (GPT or MBR; /boot on ext4; GRUB's
    /// grub.cfg default or the loader entries'), check that it is an x86-64 bzImage or ELF,
    /// write `kernel`, `initrd` and `boot.json` (the entry, options included) into the
    /// --boot-out directory, new files, and exit: 0 when written, 1 with the reason
    /// otherwise. Reads the disk with no capabilities, under a seccomp filter that allows
    /// reading it at offsets and writing the open outputs.
    #[arg(long, value_name = "DISK", requires = "boot_out")]
    find_boot: Option<PathBuf>,
    /// The directory --find-boot writes into.
    #[arg(long, value_name = "DIR", requires = "find_boot")]
    boot_out: Option<PathBuf>,
}

/// Parses an argv (the program name first) into the [`VmmArgs`] it says: the one place the
/// clap parser's result becomes the contract type that vmmd writes argvs from. A flag left
/// at its default is `None`, as the argv had it.
fn parse_args<I, T>(argv: I) -> Result<VmmArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = Args::command();
    let matches = cmd.try_get_matches_from_mut(argv)?;
    let args = Args::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    let given = |id: &str| matches.value_source(id) != Some(ValueSource::DefaultValue);
    Ok(VmmArgs {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: given("cmdline").then_some(args.cmdline),
        mem_mib: given("mem_mib").then_some(args.mem_mib),
        vcpus: given("vcpus").then_some(args.vcpus),
        cpuid: args.cpuid,
        disks: args
            .disks
            .into_iter()
            .map(|d| Disk {
                path: d.path,
                read_only: d.read_only,
            })
            .collect(),
        tap_fds: args.tap_fds,
        taps: args.taps,
        macs: args.macs,
        console: given("console").then_some(match args.console {
            ConsoleConfig::Stdio => Console::Stdio,
            ConsoleConfig::Pty => Console::Pty,
            ConsoleConfig::Unix(path) => Console::Unix(path),
        }),
        control: args.control,
        exit_file: args.exit_file,
        uuid: args.uuid,
        metadata: args.metadata,
        dhcp: args.dhcp,
        balloon: args.balloon,
        disk_io: args.disk_io,
        net_io: args.net_io,
        save_cpuid: args.save_cpuid,
        extract_vmlinux: args.extract_vmlinux,
        find_boot: args.find_boot,
        boot_out: args.boot_out,
    })
}

/// The VM that `args` asks for, booting `kernel`, with the defaults filled in.
fn vm_config(args: VmmArgs, kernel: PathBuf) -> VmConfig {
    let nets = args
        .tap_fds
        .iter()
        .map(|fd| NetConfig::Fd(*fd))
        .chain(args.taps.into_iter().map(NetConfig::Tap))
        .collect();
    VmConfig {
        kernel,
        initrd: args.initrd,
        cmdline: args.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.into()),
        mem_mib: args.mem_mib.unwrap_or(DEFAULT_MEM_MIB),
        vcpus: args.vcpus.unwrap_or(DEFAULT_VCPUS),
        disks: args
            .disks
            .into_iter()
            .map(|d| DiskConfig {
                path: d.path,
                read_only: d.read_only,
            })
            .collect(),
        nets,
        macs: args.macs,
        console: match args.console.unwrap_or_default() {
            Console::Stdio => ConsoleConfig::Stdio,
            Console::Pty => ConsoleConfig::Pty,
            Console::Unix(path) => ConsoleConfig::Unix(path),
        },
        control: args.control,
        cpuid: args.cpuid,
        uuid: args
            .uuid
            .as_deref()
            .and_then(|u| hull_vmm::boot::smbios::uuid_bytes(u).ok()),
        metadata: args.metadata,
        dhcp: args.dhcp,
        balloon: args.balloon,
        disk_io: args.disk_io.unwrap_or_default(),
        net_io: args.net_io.unwrap_or_default(),
    }
}

/// `--uuid`: a uuid in its usual text form.
fn parse_uuid(s: &str) -> Result<String, String> {
    hull_vmm::boot::smbios::uuid_bytes(s)
        .map(|_| s.to_ascii_lowercase())
        .map_err(|e| e.to_string())
}

/// `--extract-vmlinux`: see [`Args::extract_vmlinux`].
fn extract_vmlinux(kernel: &std::path::Path, out: &std::path::Path) -> u8 {
    use hull_vmm::boot::vmlinux::{ExtractError, extract};
    let image = match std::fs::read(kernel) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "vmm: error: cannot read the kernel {}: {e}",
                kernel.display()
            );
            return 1;
        }
    };
    if let Err(e @ ExtractError::NotExtractable(_)) = hull_vmm::boot::vmlinux::payload(&image) {
        eprintln!("vmm: {e}");
        return 3;
    }
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vmm: error: cannot create {}: {e}", out.display());
            return 1;
        }
    };
    // From here on the untrusted payload is parsed and decompressed: nothing but the
    // memory allocator, writing the open output and exiting is allowed.
    if let Err(e) = hull_vmm::seccomp::apply(hull_vmm::seccomp::ThreadRole::Extract) {
        eprintln!("vmm: error: {:#}", anyhow::Error::from(e));
        return 1;
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    match extract(&image, &mut w).and_then(|n| {
        w.flush().map_err(ExtractError::Write)?;
        Ok(n)
    }) {
        Ok(_) => 0,
        Err(e @ ExtractError::NotExtractable(_)) => {
            eprintln!("vmm: {e}");
            3
        }
        Err(e) => {
            eprintln!("vmm: error: {:#}", anyhow::Error::from(e));
            1
        }
    }
}

/// Drops every capability of this (single-threaded) process and sets no_new_privs.
fn drop_capabilities() -> std::io::Result<()> {
    // struct __user_cap_header_struct {version: _LINUX_CAPABILITY_VERSION_3, pid: 0 (self)},
    // then two __user_cap_data_struct {effective, permitted, inheritable}, all zero.
    let header: [u32; 2] = [0x2008_0522, 0];
    let data = [0u32; 6];
    // SAFETY: capset reads the header and the data array, which live across the call.
    if unsafe { libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `--find-boot`: see [`Args::find_boot`].
fn find_boot(disk: &std::path::Path, dir: &std::path::Path) -> u8 {
    use hull_vmm::boot::found::{BootOut, DiskFile, find};
    use hull_vmm_proto::found::{BOOT, INITRD, KERNEL};
    let fail = |what: String, e: &dyn std::fmt::Display| {
        eprintln!("vmm: error: {what}: {e}");
        1
    };
    let file = match std::fs::File::open(disk).and_then(DiskFile::new) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open the boot disk {}", disk.display()), &e),
    };
    let create = |name: &str| {
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))
    };
    let out = match (create(KERNEL), create(INITRD), create(BOOT)) {
        (Ok(kernel), Ok(initrd), Ok(boot)) => BootOut {
            kernel,
            initrd,
            boot,
        },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("vmm: error: {e}");
            return 1;
        }
    };
    // From here on the disk's bytes are parsed: no capabilities, and nothing but reading the
    // disk at offsets, writing the open outputs, the memory allocator and exiting.
    if let Err(e) = drop_capabilities() {
        return fail("cannot drop capabilities".into(), &e);
    }
    if let Err(e) = hull_vmm::seccomp::apply(hull_vmm::seccomp::ThreadRole::FindBoot) {
        return fail(
            "cannot confine the boot-disk reader".into(),
            &anyhow::Error::from(e),
        );
    }
    match find(&file, &hull_bootdisk::Limits::default(), out) {
        Ok(found) => {
            eprintln!(
                "vmm: {} on partition {} of the boot disk boots {} ({})",
                found.config, found.partition, found.kernel, found.kernel_format
            );
            0
        }
        Err(e) => {
            eprintln!("vmm: error: {:#}", anyhow::Error::from(e));
            1
        }
    }
}

/// Exit status, exit-file reason and the last stderr line (without `vmm: `) for an outcome.
fn outcome(result: anyhow::Result<StopReason>) -> (u8, ExitReason, String) {
    match result {
        Ok(StopReason::Reset) => (0, ExitReason::Reset, "guest reset".into()),
        Ok(StopReason::PowerOff) => (0, ExitReason::Poweroff, "guest powered off".into()),
        Ok(StopReason::Requested(why)) => (0, ExitReason::Stopped, format!("stopped: {why}")),
        Ok(StopReason::GuestFault(msg)) => (
            2,
            ExitReason::Fault,
            format!("guest stopped abnormally: {msg}"),
        ),
        Ok(StopReason::VmmFailure(msg)) => (1, ExitReason::Error, format!("error: {msg}")),
        Err(e) => (1, ExitReason::Error, format!("error: {e:#}")),
    }
}

/// The process entry point (see the module doc); returns the exit status.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // A console reader or TAP peer that goes away must be an error, not a kill: std's
    // start-up would ignore SIGPIPE too.
    // SAFETY: setting a signal's disposition to SIG_IGN, before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let status = vmm_main();
    let _ = std::io::stdout().flush();
    libc::c_int::from(status)
}

// Only the C main above calls it, which test builds leave out.
#[cfg_attr(test, allow(dead_code))]
fn vmm_main() -> u8 {
    // One malloc arena for all threads: the VMM's threads allocate little, and a thread's own
    // arena costs a 64 MiB reservation (mmap, munmap, mprotect) and page faults when it
    // first allocates, at every launch.
    // SAFETY: mallopt only sets an allocator parameter; no allocation is in flight.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let args = match parse_args(std::env::args_os()) {
        Ok(a) => a,
        // --help and --version exit 0; usage errors are bad input, status 1 like the rest.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            let _ = e.print();
            return 1;
        }
    };
    if let Some(path) = &args.save_cpuid {
        return match hull_vmm::vm::save_supported_cpuid(path) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vmm: error: {:#}", anyhow::Error::from(e));
                1
            }
        };
    }
    if let (Some(out), Some(kernel)) = (&args.extract_vmlinux, &args.kernel) {
        return extract_vmlinux(kernel, out);
    }
    if let (Some(disk), Some(dir)) = (&args.find_boot, &args.boot_out) {
        return find_boot(disk, dir);
    }
    let Some(kernel) = args.kernel.clone() else {
        eprintln!("vmm: error: --kernel is required");
        return 1;
    };
    let mut exit_file = match args.exit_file.as_deref().map(ExitFile::create).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vmm: error: {:#}", anyhow::Error::from(e));
            return 1;
        }
    };
    let config = vm_config(args, kernel);
    let result = run(&config, exit_file.as_ref()).context("vmm failed");
    if let Some(p) = &config.control {
        let _ = std::fs::remove_file(p);
    }
    // One line on stderr (and the exit file) says how the VM ended, so a supervisor can tell a
    // guest reboot (restart it) from a power-off without parsing the console.
    let (status, reason, detail) = outcome(result);
    if let Some(f) = exit_file.as_mut()
        && let Err(e) = f.commit(&ExitRecord {
            reason,
            detail: detail.clone(),
        })
    {
        eprintln!("vmm: {:#}", anyhow::Error::from(e));
    }
    // One write(2): stderr is unbuffered and eprintln! would write each piece.
    let _ = std::io::stderr().write_all(format!("vmm: {detail}\n").as_bytes());
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_status_reason_and_line() {
        let cases = [
            (Ok(StopReason::Reset), 0, ExitReason::Reset, "guest reset"),
            (
                Ok(StopReason::PowerOff),
                0,
                ExitReason::Poweroff,
                "guest powered off",
            ),
            (
                Ok(StopReason::Requested("SIGINT received".into())),
                0,
                ExitReason::Stopped,
                "stopped: SIGINT received",
            ),
            (
                Ok(StopReason::GuestFault("triple fault".into())),
                2,
                ExitReason::Fault,
                "guest stopped abnormally: triple fault",
            ),
            (
                Ok(StopReason::VmmFailure("event loop failed".into())),
                1,
                ExitReason::Error,
                "error: event loop failed",
            ),
            (
                Err(anyhow::anyhow!("cause").context("vmm failed")),
                1,
                ExitReason::Error,
                "error: vmm failed: cause",
            ),
        ];
        for (result, status, reason, line) in cases {
            assert_eq!(outcome(result), (status, reason, line.to_owned()));
        }
    }

    /// `vmm` and its argv: the program name, then what `args` says.
    fn argv(args: &VmmArgs) -> Vec<String> {
        let mut argv = vec!["vmm".to_string()];
        argv.extend(args.to_argv());
        argv
    }

    #[test]
    fn vmm_args_round_trip_through_the_parser() {
        let full = VmmArgs::every_option();
        assert_eq!(parse_args(argv(&full)).expect("full argv"), full);
        let minimal = VmmArgs {
            kernel: Some("/k".into()),
            ..VmmArgs::default()
        };
        assert_eq!(parse_args(argv(&minimal)).expect("minimal argv"), minimal);
        let save = VmmArgs {
            save_cpuid: Some("/t".into()),
            ..VmmArgs::default()
        };
        assert_eq!(parse_args(argv(&save)).expect("save argv"), save);
        // Defaults given explicitly stay given (vmmd's argv says --vcpus 1 and stdio).
        for console in [Console::Stdio, Console::Pty] {
            let explicit = VmmArgs {
                cmdline: Some(DEFAULT_CMDLINE.into()),
                mem_mib: Some(DEFAULT_MEM_MIB),
                vcpus: Some(DEFAULT_VCPUS),
                console: Some(console),
                ..minimal.clone()
            };
            assert_eq!(parse_args(argv(&explicit)).expect("explicit"), explicit);
        }
    }

    #[test]
    fn left_out_flags_take_the_defaults() {
        let args = parse_args(["vmm", "--kernel", "/k"]).expect("argv");
        let c = vm_config(args, "/k".into());
        assert_eq!(
            (c.cmdline.as_str(), c.mem_mib, c.vcpus, c.console),
            (
                "console=ttyS0 reboot=k panic=1 pci=off",
                128,
                1,
                ConsoleConfig::Stdio
            )
        );
        let args = parse_args([
            "vmm",
            "--kernel",
            "/k",
            "--tap-fd",
            "5",
            "--tap",
            "t0",
            "--mac",
            "02:00:00:00:00:01",
        ])
        .expect("argv");
        let c = vm_config(args, "/k".into());
        assert_eq!(c.nets, [NetConfig::Fd(5), NetConfig::Tap("t0".into())]);
        assert_eq!(c.macs, [MacAddr::new([2, 0, 0, 0, 0, 1])]);
        assert!(parse_args(["vmm", "--kernel", "/k", "--mac", "01:00:00:00:00:01"]).is_err());
    }
}
