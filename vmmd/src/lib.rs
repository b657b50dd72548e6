//! vmmd: hull's daemon. It serves the JSON API on a Unix socket ([`api`]) and keeps guests'
//! records and lifecycles ([`service`]). It links the subsystem libraries and launches the
//! VMM as a separate process; it never links the VMM's internals.
#![forbid(unsafe_code)]

pub mod api;
pub mod metadata;
pub mod service;
