//! hull's wire types: every JSON payload, request, reply, event and manifest that crosses
//! the API socket, plus the validation that turns an untrusted payload into typed values or
//! a SmartOS-shaped report.
//!
//! This crate does no I/O and depends on no other workspace crate. Checks that need the
//! host's state (duplicate uuid, an IP used by another guest, image present, nic tag known)
//! live in vmmd's service layer, which adds its findings to the same [`ValidationReport`].
#![forbid(unsafe_code)]

pub mod api;
pub mod flatten;
pub mod image;
pub mod net;
pub mod validate;
pub mod vm;
pub mod warning;

pub use api::{ApiErrorBody, Event, EventKind, NicTag, Ping};
pub use image::{ImageManifest, ImageType, validate_manifest};
pub use validate::{Problem, ValidationReport, validate_create, validate_update};
pub use vm::{Brand, DiskSpec, NicSpec, Vm, VmCreate, VmState, VmUpdate, ZoneState};
