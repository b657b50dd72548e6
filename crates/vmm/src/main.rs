//! `vmm`: runs one microVM in the foreground. Exit status 0 when the guest resets, powers off
//! or is shut down on request; 1 on a VMM error; 2 when the guest faulted (triple fault, KVM
//! internal error...).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hull_vmm::config::{ConsoleConfig, DEFAULT_CMDLINE, DiskConfig, NetConfig, VmConfig};
use hull_vmm::{StopReason, run};

/// Run one microVM on KVM until the guest stops.
#[derive(Debug, Parser)]
#[command(name = "vmm", version)]
struct Args {
    /// Kernel to boot: an x86-64 ELF vmlinux or a bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (virtio_mmio.device= entries are appended).
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    mem_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
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
    /// Console: stdio, pty or unix:PATH.
    #[arg(long, default_value = "stdio")]
    console: ConsoleConfig,
    /// Control socket path (JSON lines: pause, resume, shutdown, stats).
    #[arg(long)]
    control: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let nets = args
        .tap_fds
        .iter()
        .map(|fd| NetConfig::Fd(*fd))
        .chain(args.taps.iter().map(|n| NetConfig::Tap(n.clone())))
        .collect();
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        disks: args.disks,
        nets,
        console: args.console,
        control: args.control,
    };
    let result = run(&config).context("vmm failed");
    if let Some(p) = &config.control {
        let _ = std::fs::remove_file(p);
    }
    // One line on stderr says how the VM ended, so a supervisor can tell a guest reboot
    // (restart it) from a power-off without parsing the console.
    match result {
        Ok(StopReason::Reset) => {
            eprintln!("vmm: guest reset");
            ExitCode::SUCCESS
        }
        Ok(StopReason::PowerOff) => {
            eprintln!("vmm: guest powered off");
            ExitCode::SUCCESS
        }
        Ok(StopReason::Requested(why)) => {
            eprintln!("vmm: stopped: {why}");
            ExitCode::SUCCESS
        }
        Ok(StopReason::GuestFault(msg)) => {
            eprintln!("vmm: guest stopped abnormally: {msg}");
            ExitCode::from(2)
        }
        Ok(StopReason::VmmFailure(msg)) => {
            eprintln!("vmm: error: {msg}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("vmm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
