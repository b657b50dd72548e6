//! hull's zone runtime. `zoned run` is the small supervising process of one zone: it creates
//! the zone's cgroup, namespaces (user, mount, pid, uts, ipc, net, cgroup), root and console,
//! starts the zone's init, reaps, and keeps running if vmmd dies. `zoned exec` joins a running
//! zone to run one command (zlogin). Plain config types only: vmmd converts its spec here.

pub mod cgroup;
pub mod config;
pub mod exec;
pub mod rctls;
pub mod rootfs;
pub mod run;
pub mod security;
