//! The contract between the `vmm` process and the programs that run it (vmmd builds its
//! command line, zoned and vmmd talk to its control socket, zoned reads its exit file):
//!
//! - [`args`]: [`VmmArgs`], every flag `vmm` takes, typed, and the argv that says it;
//! - [`control`]: [`ControlRequest`] and [`ControlReply`], one JSON line each way on the
//!   control socket;
//! - [`exit`]: [`ExitRecord`], the `--exit-file` JSON;
//! - [`found`]: [`FoundBoot`], what `--find-boot` leaves for the caller;
//! - [`stats`]: [`StatsReport`], what a `stats` request answers.
//!
//! Both ends use these types, so the bytes on the wire and on disk are defined once, here.
//! This crate owns only the shapes and their encodings: it must never do I/O, depend on
//! a workspace crate other than hull-spec (whose [`MacAddr`] it uses, so a MAC is parsed by
//! one piece of code from payload to VMM), pull in clap (vmm keeps its own parser and converts into
//! [`VmmArgs`]) or use `unsafe`. What a value means to the VMM (ranges, which MACs a NIC may
//! own) is checked by the VMM, not here.
#![forbid(unsafe_code)]

pub mod args;
pub mod control;
pub mod dhcp;
pub mod exit;
pub mod found;
pub mod stats;

pub use args::{
    ArgvError, Console, DEFAULT_CMDLINE, DEFAULT_MEM_MIB, DEFAULT_VCPUS, Disk, DiskIo, MacAddr,
    NetIo, VmmArgs,
};
pub use control::{ControlReply, ControlRequest, DiskResized};
pub use dhcp::{DhcpLease, DhcpRoute};
pub use exit::{ExitReason, ExitRecord};
pub use found::FoundBoot;
/// What zoned reports of a zone's cgroup (vmmd's `GET /v1/vms/{uuid}/usage`).
pub use hull_spec::api::Usage;
pub use stats::{BalloonReport, DeviceReport, ExitCount, StatsReport, VcpuReport};
