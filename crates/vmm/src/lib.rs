//! hull's microVM engine. One `vmm` process runs one VM on KVM.
//!
//! This crate owns guest memory, vCPUs, the boot path and the virtio-mmio devices. It never
//! opens network devices itself unless asked for a TAP by name (vmmd passes TAP fds in) and
//! never talks to vmmd's internals: vmmd runs the `vmm` binary as a process inside the guest's
//! zone and drives it through the control socket.
//!
//! Code map: [`config`] (what the CLI asks for), [`memory`] (guest physical layout),
//! [`boot`] (kernel loading, zero page, MP table, vCPU register state, CPUID), [`bus`] (port
//! and MMIO dispatch), [`pit`] (the PIT, made on first use), [`devices`] (serial, i8042, virtio-mmio block/net/rng), [`vcpu`] (one
//! thread per vCPU and its exit handling), [`control`] (the JSON-lines control socket),
//! [`seccomp`] (per-thread syscall filters), [`exit_file`] (the `--exit-file` record) and
//! [`vm`] (wires everything together and runs until the guest stops).

pub mod boot;
pub mod bus;
pub mod config;
pub mod control;
pub mod devices;
pub mod exit_file;
pub mod memory;
pub mod pit;
pub mod seccomp;
pub mod stats;
pub mod vcpu;
pub mod vm;

pub use config::VmConfig;
pub use vm::{StopReason, VmError, run};
