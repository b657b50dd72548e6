//! API envelopes: the error body every non-2xx reply carries, ping, lifecycle requests,
//! and the events streamed on `GET /v1/events`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validate::ValidationReport;
use crate::vm::VmState;

/// The body of every error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiErrorBody {
    /// A stable machine-readable code (`NotFound`, `InvalidPayload`, ...).
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The chain of underlying causes, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    /// For `InvalidPayload`: the SmartOS-shaped validation report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ValidationReport>,
}

/// Stable error codes.
pub mod codes {
    /// The request is malformed (bad JSON, bad UTF-8, bad query).
    pub const BAD_REQUEST: &str = "BadRequest";
    /// The payload failed validation; the body carries the report.
    pub const INVALID_PAYLOAD: &str = "InvalidPayload";
    /// No such resource.
    pub const NOT_FOUND: &str = "NotFound";
    /// The route exists but not with this method.
    pub const METHOD_NOT_ALLOWED: &str = "MethodNotAllowed";
    /// The operation conflicts with the resource's state.
    pub const CONFLICT: &str = "Conflict";
    /// The guest is already where the operation would take it (a start of a running guest,
    /// a stop or reboot of a stopped one): nothing was done. SmartOS's vmadm says so and
    /// exits 0, which scripts rely on; hull's does the same.
    pub const ALREADY: &str = "AlreadyInState";
    /// The body is larger than the API accepts.
    pub const PAYLOAD_TOO_LARGE: &str = "PayloadTooLarge";
    /// The body is not JSON.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UnsupportedMediaType";
    /// The caller may not use this socket.
    pub const FORBIDDEN: &str = "Forbidden";
    /// An image source failed (unreachable, error status, bad reply).
    pub const UPSTREAM: &str = "UpstreamError";
    /// The subsystem behind this operation is not built yet.
    pub const NOT_IMPLEMENTED: &str = "NotImplemented";
    /// The daemon failed (disk full, I/O error); the request was not applied.
    pub const INTERNAL: &str = "InternalError";
}

/// `GET /v1/ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Ping {
    /// Always true when the daemon answers.
    pub ok: bool,
    /// The daemon's version.
    pub version: String,
    /// The API version (`v1`).
    pub api: String,
    /// The daemon's process id.
    pub pid: u32,
}

/// `POST /v1/vms/{uuid}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Stop at once, without the graceful phase.
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for a graceful stop before forcing it (SmartOS's defaults: 60 for a
    /// zone, 180 for a hardware VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Leave autoboot as it is (hull's: the host's own shutdown stops its guests so, and they
    /// come back when it boots); a stop clears it otherwise, as SmartOS's vmadm stop does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_autoboot: bool,
}

/// `POST /v1/vms/{uuid}/reboot`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RebootRequest {
    /// Reboot at once, without the graceful phase.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/vms/{uuid}/reprovision`: a zone's root, or a microVM's boot disk, made anew
/// from an image (SmartOS's `vmadm reprovision`), its uuid, NICs, metadata, delegated
/// dataset and other disks kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReprovisionRequest {
    /// The installed image the new root (zone image) or boot disk (disk image) is cloned from.
    pub image_uuid: uuid::Uuid,
}

/// `POST /v1/vms/{uuid}/kill`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// Signal name (`KILL`, `SIGTERM`, `HUP`...) or number; default SIGTERM (SmartOS's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

/// `POST /v1/vms/{uuid}/resize`: the window size of a running zone's console terminal (its
/// foreground job gets SIGWINCH).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    /// Rows (lines), 1 to 10000.
    pub rows: u16,
    /// Columns, 1 to 10000.
    pub cols: u16,
}

/// `POST /v1/vms/validate?action=create|update`: the reply when the payload is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ValidateOk {
    /// `create` or `update`.
    pub action: String,
    /// The brand the payload was checked for.
    pub brand: String,
}

/// `POST /v1/vms` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Created {
    /// The new VM's uuid.
    pub uuid: Uuid,
}

/// `GET /v1/vms/{uuid}/runtime`: where a running zone's runtime can be reached on this host
/// (root only): `vmadm console` connects to `console`, `zlogin` runs `zoned exec DIR`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Runtime {
    /// The zone's runtime directory (config.json, state.json, sockets).
    pub dir: String,
    /// The console socket (a byte stream; output written before attaching is replayed).
    pub console: String,
}

/// The protocol `GET /v1/vms/{uuid}/console` switches to (`Upgrade: hull-console`): after
/// vmmd's 101 the connection is the console's byte stream both ways.
pub const CONSOLE_UPGRADE: &str = "hull-console";

/// `GET /v1/vms/{uuid}/usage`: what a running guest's cgroup reports (a microVM's is its
/// VMM's). Counters are cumulative since the guest started; a figure this host's cgroups do
/// not offer is absent, and an absent limit is none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// CPU time used, user and system, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage_ns: Option<u64>,
    /// CPU time used in user mode, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_user_ns: Option<u64>,
    /// CPU time used in kernel mode, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_system_ns: Option<u64>,
    /// Scheduler periods under a CPU cap (`cpu_cap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_periods: Option<u64>,
    /// Of those, the periods in which the cap throttled the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_periods: Option<u64>,
    /// Time throttled by the cap, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_ns: Option<u64>,
    /// Memory in use (anonymous, page cache, kernel), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The memory limit (`max_physical_memory`), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Anonymous memory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_anon_bytes: Option<u64>,
    /// Page cache, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file_bytes: Option<u64>,
    /// Swap in use, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_bytes: Option<u64>,
    /// The swap limit, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_limit_bytes: Option<u64>,
    /// Processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Their limit (`max_lwps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    /// Times the memory limit was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_hits: Option<u64>,
    /// Processes the kernel's OOM killer ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// What happened to a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A guest record was created.
    Create,
    /// A guest record was changed.
    Modify,
    /// A guest record was deleted.
    Delete,
    /// A guest changed state.
    State,
}

/// One line of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The guest.
    pub uuid: Uuid,
    /// The guest's alias, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The state after the event (for create, modify and state events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmState>,
    /// Changed property names (modify events).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// When (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
    /// The whole record after the event, when the subscriber asked for it (`full=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<Box<crate::vm::Vm>>,
}

/// A nic tag: a name guests' NICs join, mapped to a physical uplink or to an internal
/// switch (SmartOS's etherstub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NicTag {
    /// The tag's name.
    pub name: String,
    /// The host interface carrying the tag; absent for an internal switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
}

/// An image source: a server imgadm imports from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    /// Base URL (`http://host:port/path` or `https://...`).
    pub url: String,
    /// `imgapi` (SmartOS's image API: /images, /images/:uuid, /images/:uuid/file).
    #[serde(rename = "type", default = "imgapi")]
    pub kind: String,
    /// PEM certificates of a private CA an https source's certificate may chain to, besides
    /// the system's CAs (`imgadm sources -a URL --ca-cert FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// An https source whose certificate is not checked at all (`imgadm sources -k`, as
    /// SmartOS's `--insecure`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// A docker source's user (basic auth, or a token asked for with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A docker source's password: kept in the data root's config (root's alone), shown as
    /// `(set)` in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

fn imgapi() -> String {
    "imgapi".to_string()
}

/// `POST /v1/images/import`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The image to import from the sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Import from this source URL instead of the configured ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Or: the manifest's URL on a plain HTTP file server (with `file_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_url: Option<String>,
    /// The image file's URL on a plain HTTP file server (with `manifest_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_url: Option<String>,
    /// Or: a docker image `NAME[:TAG|@sha256:DIGEST]` from the docker sources (or `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<String>,
}

/// One line of the `POST /v1/images/import` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportProgress {
    /// Bytes of the file received so far, of `total`.
    Progress {
        /// Received.
        bytes: u64,
        /// Expected.
        total: u64,
    },
    /// The import finished: the installed manifest.
    Done(Box<crate::image::ImageManifest>),
    /// The import failed; nothing was installed.
    Error(ApiErrorBody),
}
