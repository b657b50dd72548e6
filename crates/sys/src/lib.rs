//! hull-sys: the host-system helpers that several hull crates need and none should own, below
//! every subsystem (crosvm's `base` plays this part there).
//!
//! It owns mechanism only: writing a file so that a crash leaves the old or the new content
//! whole ([`fs`]), naming a process by pid and start time and opening its pidfd
//! ([`process`]), opening and making TAP devices ([`tun`]: vswitch makes a microVM's, zoned
//! opens them for its VMM), the `cannot <op> <path>` I/O error that callers wrap
//! ([`IoError`]), and an error with its causes as one line ([`chain`]).
//!
//! It must never hold policy or know about guests: no paths of hull's own, no file modes or
//! durability choices of its own (callers pass them), no zones, VMs, images or records, and
//! no dependency on another hull crate.

pub mod error;
pub mod fs;
pub mod process;
pub mod tun;

pub use error::{IoError, chain};
