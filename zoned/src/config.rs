//! What vmmd hands a zone (config.json in the zone's runtime directory), what zoned reports
//! back (state.json), and the control requests it answers on ctl.sock.

use std::path::{Path, PathBuf};

use hull_sys::IoError;
use hull_sys::fs::WriteOptions;
use serde::{Deserialize, Serialize};

use crate::cgroup::Limits;

/// Size of each zone's uid/gid range.
pub const ID_RANGE: u32 = 65536;

/// Where the zone's root comes from. The runtime mounts it in its own mount namespace only,
/// so no mount is ever left on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RootSpec {
    /// A directory bind-mounted as the root (btrfs subvolume, reflinked tree).
    Bind { dir: PathBuf },
    /// An overlay of a read-only image tree and the zone's writable layer.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A microVM's zone, the outer hull of its VMM: an empty read-only root holding only
    /// `files` (bound from the host, id-mapped so the zone's root owns what the host's root
    /// owns) and /dev/kvm. Its init is the VMM, run without any capability.
    Vmm { files: Vec<RootFile> },
}

/// A host file or directory bound into a microVM's zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFile {
    /// The host path.
    pub host: PathBuf,
    /// Where it appears in the zone: an absolute path of plain components.
    pub at: PathBuf,
    /// Bound read-write (a disk, the VMM's runtime directory); read-only otherwise.
    #[serde(default)]
    pub writable: bool,
}

/// Everything zoned needs to run one zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneConfig {
    pub uuid: String,
    pub hostname: String,
    pub root: RootSpec,
    /// The init's argv; argv[0] is a path inside the zone.
    pub init: Vec<String>,
    /// First host uid/gid of the zone's range ([`ID_RANGE`] ids): zone uid 0 is this one.
    pub id_base: u32,
    /// The zone's cgroup, relative to each hierarchy's root (e.g. `hull/<uuid>`).
    pub cgroup: String,
    #[serde(default)]
    pub limits: Limits,
    /// Name servers written to /etc/resolv.conf (left alone when empty).
    #[serde(default)]
    pub resolvers: Vec<String>,
    /// The DNS domain, written to /etc/resolv.conf as its `search` list (SmartOS's
    /// dns_domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// Write /etc/resolv.conf at every boot of the zone (SmartOS's maintain_resolvers);
    /// otherwise only at this zoned's first, so a reboot keeps the guest's own edits.
    #[serde(default = "yes")]
    pub maintain_resolvers: bool,
    /// Seconds a graceful stop waits for init before killing the zone.
    pub stop_timeout_s: u64,
    /// The signal a graceful stop sends init (SIGTERM unless set). An init that is systemd
    /// gets SIGRTMIN+3 (its "halt") whatever this says.
    #[serde(default)]
    pub stop_signal: Option<i32>,
    /// How the root shows the zone's ids.
    #[serde(default)]
    pub root_ids: RootIds,
    /// A microVM zone's TAP devices (made by vmmd, persistent): zoned opens them when it
    /// boots the VMM, which gets them as descriptors 3, 4... (`--tap-fd`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taps: Vec<String>,
    /// The guest metadata service of an OS zone: zoned listens on
    /// `<runtime dir>/`[`files::ZONECONTROL`]`/`[`files::METADATA_SOCKET`] for the zone
    /// (vmmd takes a copy of the listener and answers; zoned keeps it across vmmd's
    /// restarts) and binds that directory and the mdata tools into the zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataMount>,
    /// Host directories mounted into an OS zone once its root is: its delegated dataset at
    /// /data and the payload's lofs `filesystems`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ZoneMount>,
    /// A tmpfs of this many MiB on the zone's /tmp (SmartOS's `tmpfs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_mib: Option<u64>,
    /// More tmpfs mounts (an OCI bundle's), after `mounts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs_mounts: Vec<TmpfsSpec>,
    /// Paths hidden in the zone beyond the runtime's own (a file behind /dev/null, a
    /// directory behind an empty read-only tmpfs; a missing one is skipped): an OCI
    /// bundle's maskedPaths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    /// Paths made read-only beyond the runtime's own: an OCI bundle's readonlyPaths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only_paths: Vec<String>,
    /// Locked-memory and System V IPC limits of an OS zone.
    #[serde(default, skip_serializing_if = "crate::rctls::Rctls::is_empty")]
    pub rctls: crate::rctls::Rctls,
    /// A microVM whose guest resets is not booted again by zoned: the zone ends with
    /// [`ZoneState::reset`] set, and vmmd starts it anew (a guest that boots what its disk
    /// says reads the disk again, as firmware does at every reset).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_ends: bool,
    /// An application's process in place of an OS's init (a docker zone's): `init` is its
    /// argv (argv[0] looked up in the process's PATH when it has no `/`), run with this
    /// environment, directory and user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSpec>,
    /// Keep the console's output in [`files::CONSOLE_LOG`] (a docker zone's logs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub console_log: bool,
    /// Another running zone whose user, network, IPC and UTS namespaces this zone's init
    /// joins (a pod's sandbox: its containers reach each other on localhost and share
    /// System V IPC); the mount, PID and cgroup namespaces, the root and the cgroup stay
    /// this zone's. [`Self::id_base`] is then that zone's, whose user namespace maps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSpec>,
    /// A network namespace made outside hull (containerd's CNI, `ip netns`) that init joins
    /// in place of [`Self::join`]'s or one of its own; its loopback is brought up and its
    /// unprivileged port floor set to 0 (the zone's root has no capability there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The root mounted read-only once init has written /etc (an OCI bundle's
    /// `root.readonly`); what is mounted on it (/dev, /proc, binds, tmpfs) is as it says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
    /// The zone's cgroups mounted read-only at /sys/fs/cgroup (an OCI bundle's `cgroup`
    /// mount there, which containerd's CRI gives every container).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cgroup_fs: bool,
    /// The zone keeps CAP_NET_ADMIN over its own network namespace (a zone with a VRRP NIC,
    /// whose VRRP daemon raises and lowers that link and its virtual address, as illumos's
    /// vrrpd does in a SmartOS zone). What leaves the zone is still held by the switch's
    /// guards outside it; netfilter stays closed (see security::filters).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub net_admin: bool,
}

/// The zone [`ZoneConfig::join`] names: its init's pid and start time (clock ticks after
/// boot), which together name that process even after pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSpec {
    pub pid: i32,
    pub start: u64,
}

/// A docker zone's process (the OCI image config's Env, WorkingDir and User).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// `NAME=value` entries; PATH and HOME get defaults when absent.
    #[serde(default)]
    pub env: Vec<String>,
    /// The directory it starts in, inside the zone (default /).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Docker's USER: `user`, `uid`, `user:group` or `uid:gid`, names from the zone's own
    /// /etc/passwd and /etc/group (default root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The console's terminal as stdin, stdout and stderr (Docker's `-t`); without it
    /// stdin is /dev/null and stdout and stderr one pipe zoned reads as the console.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Supplementary groups in place of the user's from /etc/group (an OCI bundle's
    /// `additionalGids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<u32>>,
    /// The capabilities it keeps (bounding, permitted, effective and inheritable sets),
    /// by name (`CAP_KILL`), each within the zone's ceiling (`security::KEPT_CAPS`); the
    /// whole ceiling when absent. A process that is not the zone's root holds none, as the
    /// kernel drops them at its uid change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<Vec<String>>,
    /// Resource limits set before it runs (setrlimit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<RlimitSpec>,
    /// Without a terminal: stdin a pipe zoned writes what the console's client sends into
    /// (until that client ends: the process's EOF, as `docker run -i`'s stdin), instead of
    /// /dev/null (SmartOS's `docker:openstdin`; containerd's stdin FIFO).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_stdin: bool,
    /// The OOM killer's adjustment of the process (-1000 to 1000; /proc/PID/oom_score_adj),
    /// which zoned sets as the host's root before it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
}

/// One resource limit of a zone's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitSpec {
    /// Its name, as the OCI runtime spec spells it (`RLIMIT_NOFILE`).
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// A tmpfs mounted in an OS zone (an OCI bundle's /run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsSpec {
    /// Where, in the zone: an absolute path of plain names, made as the zone's root where
    /// missing.
    pub at: PathBuf,
    /// Its size in bytes (default: half of the host's memory, the zone's limit bounding
    /// what it holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The mode of its root directory (default 1777).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// Where a zone finds its metadata service (SmartOS: `/.zonecontrol`, lx zones
/// `/native/.zonecontrol`) and the tools that speak to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataMount {
    /// Where the socket's directory appears: an absolute path of plain names.
    pub at: PathBuf,
    /// Host files bound read-only (executable) into the zone, e.g. the mdata tools at
    /// /usr/sbin/mdata-get.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<RootFile>,
    /// Files written into the zone's root at each start, owned by the zone's root (an lx
    /// zone's cloud-init NoCloud seed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seed: Vec<GuestFile>,
}

fn yes() -> bool {
    true
}

/// A host directory mounted into an OS zone (nosuid, nodev, id-mapped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneMount {
    /// The host directory (or, not `owned`, a regular file: an OCI bundle's /etc/hosts).
    pub host: PathBuf,
    /// Where it appears in the zone: an absolute path of plain names, made as the zone's
    /// root where missing (no symbolic link in the zone's root is followed).
    pub at: PathBuf,
    /// Mounted read-write; read-only otherwise.
    pub writable: bool,
    /// The zone's own data (its delegated dataset), whose files carry the zone's ids as its
    /// root's do: where the root is shifted rather than id-mapped, so is this. A host
    /// directory (`false`) is only ever id-mapped, never changed on disk.
    pub owned: bool,
}

/// A file vmmd writes into a zone's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// Where, in the zone: an absolute path of plain names.
    pub at: PathBuf,
    pub content: String,
}

impl ZoneConfig {
    /// Whether this zone holds a microVM's VMM rather than an operating system.
    pub fn is_vmm(&self) -> bool {
        matches!(self.root, RootSpec::Vmm { .. })
    }

    /// The capabilities the zone's processes keep: none for a VMM's zone, else
    /// [`crate::security::KEPT_CAPS`] and, for [`Self::net_admin`], CAP_NET_ADMIN.
    pub fn kept_caps(&self) -> Vec<caps::Capability> {
        match self.is_vmm() {
            true => Vec::new(),
            false => crate::security::zone_caps(self.net_admin),
        }
    }
}

/// How a zone's root shows files with the zone's ids (zone uid 0 = host uid `id_base`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootIds {
    /// Id-mapped mounts where the kernel and the file system have them, else `Shift`.
    #[default]
    Auto,
    /// Id-mapped mounts only: an error where they are missing.
    Idmap,
    /// The zone's files are shifted on disk into its id range once (chown; an overlay root
    /// copies up metadata only, `metacopy=on`), and the root is mounted without an id map.
    /// A zone shifted once stays shifted (the runtime directory keeps a marker).
    Shift,
}

impl std::str::FromStr for RootIds {
    type Err = String;
    fn from_str(s: &str) -> Result<RootIds, String> {
        match s {
            "auto" => Ok(RootIds::Auto),
            "idmap" => Ok(RootIds::Idmap),
            "shift" => Ok(RootIds::Shift),
            _ => Err(format!(
                "unknown zone root id mode {s:?}; use auto, idmap or shift"
            )),
        }
    }
}

/// A zone's run state as zoned reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Running,
    Stopping,
    Stopped,
}

/// How the zone's init last ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// state.json: written atomically by zoned at every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneState {
    pub phase: Phase,
    /// zoned's pid and start time (clock ticks after boot, from /proc/PID/stat), which
    /// together name the process even after pid reuse.
    pub zoned_pid: i32,
    pub zoned_start: u64,
    /// The zone's init as the host sees it, while it runs.
    pub init_pid: Option<i32>,
    pub init_start: Option<u64>,
    /// "v2", "v1" or "hybrid".
    pub cgroup_layout: String,
    /// How many times init was started (zone reboots add one).
    pub boots: u32,
    pub last_exit: Option<InitExit>,
    /// Why the zone failed to start or stopped abnormally.
    pub error: Option<String>,
    /// Things the host could not apply (e.g. an io weight without an io controller).
    #[serde(default)]
    pub notes: Vec<String>,
    /// zoned's descriptor of the zone's metadata listener, which vmmd copies with
    /// pidfd_getfd(2) at each start and after its own restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_fd: Option<i32>,
    /// The zone ended because its guest reset and [`ZoneConfig::reset_ends`] is set: its
    /// owner boots it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// The zone is paused: its cgroup frozen (a stop thaws it first).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
}

/// A request on ctl.sock (one JSON line, one reply line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "cmd", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Graceful stop: SIGTERM to init, everything killed after `timeout_s`; `force` kills at
    /// once.
    Stop {
        timeout_s: Option<u64>,
        #[serde(default)]
        force: bool,
    },
    /// Stop as above, then boot again.
    Reboot {
        timeout_s: Option<u64>,
    },
    /// A signal to the zone's init.
    Kill {
        signal: i32,
    },
    /// New resource limits, applied at once.
    Update {
        limits: Limits,
    },
    /// The console terminal's window size (its foreground job gets SIGWINCH).
    Resize {
        rows: u16,
        cols: u16,
    },
    /// The zone's cgroup figures ([`Reply::usage`]).
    Usage,
    /// Pause (freeze every process of the zone) or resume (thaw them).
    Freeze {
        frozen: bool,
    },
}

/// The reply to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ZoneState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<hull_vmm_proto::Usage>,
}

/// File names in a zone's runtime directory.
pub mod files {
    pub const CONFIG: &str = "config.json";
    pub const STATE: &str = "state.json";
    pub const CONSOLE: &str = "console.sock";
    /// The console's output, kept when [`super::ZoneConfig::console_log`] says so (a
    /// docker zone's stdout and stderr); one previous generation as `console.log.1`.
    pub const CONSOLE_LOG: &str = "console.log";
    pub const CONTROL: &str = "ctl.sock";
    pub const LOG: &str = "zoned.log";
    /// Mount point of the zone's root inside zoned's mount namespace.
    pub const ROOTFS: &str = "rootfs";
    /// Staging mount point of the root before it is id-mapped.
    pub const BASE: &str = "base";
    /// Present once the zone's files were shifted into its id range (see `RootIds::Shift`).
    pub const SHIFTED: &str = "ids-shifted";
    /// A microVM zone's directory for its VMM (the control socket and exit report), bound
    /// read-write at [`VMM_RUN`] in the zone.
    pub const VMM_DIR: &str = "vmm";
    /// Where the zone sees [`VMM_DIR`].
    pub const VMM_RUN: &str = "/run/vmm";
    /// The VMM's control socket, in [`VMM_DIR`].
    pub const VMM_CONTROL: &str = "control.sock";
    /// The VMM's exit report (`vmm --exit-file`), in [`VMM_DIR`].
    pub const VMM_EXIT: &str = "exit.json";
    /// The VMM's end of the guest's COM2 (`vmm --metadata`), in [`VMM_DIR`]: vmmd's
    /// metadata agent connects to it.
    pub const VMM_METADATA: &str = "metadata.sock";
    /// An OS zone's directory for its metadata socket, bound read-only into the zone.
    pub const ZONECONTROL: &str = "zonecontrol";
    /// The metadata socket, in [`ZONECONTROL`].
    pub const METADATA_SOCKET: &str = "metadata.sock";
}

/// Errors reading or writing the runtime directory.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{} is not valid", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads a JSON file of the runtime directory.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let bytes = std::fs::read(path).map_err(IoError::wrap("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| FileError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Writes a JSON file atomically (temp file, fsync, rename, directory fsync), so a crash
/// leaves the old or the new version, never a torn one. Skips the write when the file
/// already holds exactly these bytes (a zone's config is rewritten at every start and rarely
/// changes).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let bytes = to_json(path, value)?;
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    hull_sys::fs::write_atomic(path, &bytes)?;
    Ok(())
}

/// Writes a runtime state file atomically (temp file, rename) without fsync: a process crash
/// still leaves the old or the new version, and after a host crash the state it describes
/// (processes, pids) is gone anyway. Used for state.json, which changes at every start.
pub fn write_runtime_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let bytes = to_json(path, value)?;
    hull_sys::fs::write_atomic_with(path, &bytes, WriteOptions::RUNTIME)?;
    Ok(())
}

fn to_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, FileError> {
    serde_json::to_vec_pretty(value).map_err(|source| FileError::Json {
        path: path.to_owned(),
        source,
    })
}

/// The zone's /etc/resolv.conf as its config asks for it: the `search` domain, then one
/// `nameserver` line per resolver. `None` leaves the image's own file alone.
pub fn resolv_conf(resolvers: &[String], dns_domain: Option<&str>) -> Option<String> {
    if resolvers.is_empty() && dns_domain.is_none() {
        return None;
    }
    let search = dns_domain.iter().map(|d| format!("search {d}\n"));
    let servers = resolvers.iter().map(|r| format!("nameserver {r}\n"));
    Some(search.chain(servers).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_has_the_search_domain_then_the_servers() {
        let servers = ["192.0.2.53".to_string(), "2001:db8::53".to_string()];
        assert_eq!(
            resolv_conf(&servers, Some("example.com")).unwrap(),
            "search example.com\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
        );
        assert_eq!(
            resolv_conf(&[], Some("example.com")).unwrap(),
            "search example.com\n"
        );
        assert_eq!(resolv_conf(&[], None), None);
    }

    #[test]
    fn requests_parse_and_junk_is_refused() {
        let r: Request = serde_json::from_str(r#"{"cmd":"stop","timeout_s":5}"#).unwrap();
        assert_eq!(
            r,
            Request::Stop {
                timeout_s: Some(5),
                force: false
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"kill","signal":15}"#).unwrap();
        assert_eq!(r, Request::Kill { signal: 15 });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"kill","signal":1,"x":1}"#).is_err());
    }

    #[test]
    fn json_files_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        let s = ZoneState {
            phase: Phase::Running,
            zoned_pid: 1,
            zoned_start: 2,
            init_pid: Some(3),
            init_start: Some(4),
            cgroup_layout: "v2".into(),
            boots: 1,
            last_exit: None,
            error: None,
            notes: vec![],
            metadata_fd: None,
            reset: false,
            frozen: true,
        };
        write_json(&p, &s).unwrap();
        assert_eq!(read_json::<ZoneState>(&p).unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temp file is left");
        std::fs::write(&p, b"{").unwrap();
        assert!(
            read_json::<ZoneState>(&p)
                .unwrap_err()
                .to_string()
                .contains("not valid")
        );
    }
}
