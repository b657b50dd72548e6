//! hull's wire types: every JSON payload, request, reply, event and manifest that crosses
//! the API socket, plus the validation that turns an untrusted payload into typed values or
//! a SmartOS-shaped report.
//!
//! This crate does no I/O and depends on no other workspace crate. Checks that need the
//! host's state (duplicate uuid, an IP used by another guest, image present, nic tag known)
//! live in vmmd's service layer, which adds its findings to the same [`ValidationReport`].
#![forbid(unsafe_code)]

/// A type that serialises as a string gets the string's schema, inline (the OpenAPI
/// document shows it as the `string` it is on the wire).
macro_rules! schema_as_string {
    ($t:ty) => {
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                String::schema_name()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                String::json_schema(generator)
            }

            fn inline_schema() -> bool {
                true
            }
        }
    };
}

pub mod api;
pub mod docker;
pub mod flatten;
pub mod image;
pub mod net;
pub mod oci_bundle;
pub mod validate;
pub mod vm;
pub mod warning;

pub use api::{ApiErrorBody, Event, EventKind, NicTag, Ping};
pub use image::{ImageManifest, ImageType, validate_manifest};
pub use validate::{Problem, ValidationReport, validate_create, validate_update};
pub use vm::{Brand, DiskSpec, Filesystem, NicSpec, Vm, VmCreate, VmState, VmUpdate, ZoneState};
