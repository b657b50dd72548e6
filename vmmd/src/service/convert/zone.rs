//! Record -> the zoned config of a zone guest (brands joyent, joyent-minimal, lx): its root,
//! init, hostname, cgroup and limits. Pure: the id range and the root come from the caller.

use std::path::{Path, PathBuf};

use hull_cowstore::backend::RootSource;
use hull_spec::oci_bundle::BundleConfig;
use hull_spec::{Brand, Vm};
use zoned::cgroup::Limits;
use zoned::config::{
    GuestFile, MetadataMount, ProcessSpec, RlimitSpec, RootFile, RootIds, RootSpec, TmpfsSpec,
    ZoneConfig, ZoneMount,
};

/// What a zone's storage hands its runtime: what its root is mounted from, and its
/// delegated dataset when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneRoot {
    pub source: RootSource,
    pub data: Option<PathBuf>,
    /// The zone's volumes directory: binds of what is in it are the zone's own data.
    pub volumes: PathBuf,
    /// The OCI bundle's config, read at this start, for a zone that runs one (its root is
    /// then the bundle's, `source`).
    pub bundle: Option<BundleConfig>,
}

/// Where a zone sees its delegated dataset.
pub const DATA_AT: &str = "/data";

/// A zone guest as zoned runs it: the record, its storage and the first host id of its id
/// range.
#[derive(Debug)]
pub struct GuestZone<'a> {
    pub vm: &'a Vm,
    pub root: ZoneRoot,
    pub id_base: u32,
    /// The static mdata tool to bind in as /usr/sbin/mdata-get and its siblings.
    pub mdata: Option<&'a Path>,
}

/// The mdata tools a zone gets, all one binary that picks its verb from its name.
pub const MDATA_TOOLS: [&str; 4] = ["mdata-get", "mdata-put", "mdata-delete", "mdata-list"];

/// Where an lx zone's cloud-init finds its NoCloud seed.
pub const NOCLOUD_SEED: &str = "/var/lib/cloud/seed/nocloud";

/// Where the guest finds its metadata service and tools: SmartOS's places, under /native
/// in lx zones (whose /usr belongs to the distribution). An lx zone also gets a NoCloud
/// seed for its cloud-init, which cannot tell it runs on SmartOS there (its SmartOS
/// datasource looks at `uname -v`): see [`nocloud_seed`].
pub fn metadata_mount(vm: &Vm, mdata: Option<&Path>) -> MetadataMount {
    let brand = vm.brand;
    let base = if brand == Brand::Lx { "/native" } else { "" };
    MetadataMount {
        at: PathBuf::from(format!("{base}/.zonecontrol")),
        tools: mdata
            .into_iter()
            .flat_map(|host| {
                MDATA_TOOLS.iter().map(move |name| RootFile {
                    host: host.to_path_buf(),
                    at: PathBuf::from(format!("{base}/usr/sbin/{name}")),
                    writable: false,
                })
            })
            .collect(),
        seed: match brand {
            Brand::Lx => nocloud_seed(vm),
            _ => Vec::new(),
        },
    }
}

/// cloud-init's NoCloud seed, from the record (written at every start, so a metadata change
/// reaches the guest at its next boot): `meta-data` with the uuid as instance id (cloud-init
/// runs its once-per-instance steps once), the hostname and `root_authorized_keys`;
/// `user-data` from `cloud-init:user-data`, else the `user-script` (cloud-init runs a `#!`
/// user-data once); `network-config` saying the network is not cloud-init's to configure
/// (vmmd has made the zone's NICs). meta-data is JSON, which is YAML.
pub fn nocloud_seed(vm: &Vm) -> Vec<GuestFile> {
    let md = &vm.customer_metadata;
    let mut meta = serde_json::json!({
        "instance-id": vm.uuid.to_string(),
        "local-hostname": vm.hostname.clone().unwrap_or_else(|| vm.uuid.to_string()),
    });
    if let Some(keys) = md.get("root_authorized_keys") {
        meta["public-keys"] = serde_json::Value::String(keys.clone());
    }
    let user_data = md
        .get("cloud-init:user-data")
        .or_else(|| md.get("user-script"))
        .cloned()
        .unwrap_or_default();
    let file = |name: &str, content: String| GuestFile {
        at: PathBuf::from(format!("{NOCLOUD_SEED}/{name}")),
        content,
    };
    vec![
        file("meta-data", format!("{meta}\n")),
        file("user-data", user_data),
        file("network-config", "{\"config\": \"disabled\"}\n".to_string()),
    ]
}

/// Whether this boot writes the zone's resolv.conf: its first (no boot recorded yet, also
/// after a reprovision) or any with maintain_resolvers.
pub fn writes_resolv_conf(vm: &Vm) -> bool {
    vm.maintain_resolvers || vm.boot_timestamp.is_none()
}

/// SmartOS's locked-memory and System V IPC limits of a zone (MiB figures in bytes); the
/// locked-memory limit defaults to max_physical_memory, as SmartOS's does.
pub fn rctls(vm: &Vm) -> zoned::rctls::Rctls {
    const MIB: u64 = 1 << 20;
    zoned::rctls::Rctls {
        locked_memory_bytes: Some(
            vm.max_locked_memory
                .unwrap_or(vm.max_physical_memory)
                .saturating_mul(MIB),
        ),
        shm_bytes: vm.max_shm_memory.map(|m| m.saturating_mul(MIB)),
        shm_ids: vm.max_shm_ids,
        msg_ids: vm.max_msg_ids,
        sem_ids: vm.max_sem_ids,
    }
}

/// The resource limits of a guest record.
pub fn limits(vm: &Vm) -> Limits {
    const MIB: u64 = 1 << 20;
    Limits {
        memory_bytes: Some(vm.max_physical_memory * MIB),
        swap_bytes: Some(vm.max_swap.max(vm.max_physical_memory) * MIB),
        cpu_cap_pct: vm.cpu_cap.filter(|c| *c > 0),
        cpu_shares: Some(vm.cpu_shares),
        max_lwps: Some(vm.max_lwps),
        io_weight: Some(vm.zfs_io_priority),
    }
}

/// A docker zone's process, from its internal_metadata `docker:*` keys (SmartOS's, which
/// Triton's docker API fills from the image's config): argv is `docker:entrypoint` then
/// `docker:cmd` (JSON arrays of strings), with `docker:env` (a JSON array of `NAME=value`),
/// `docker:workdir` and `docker:user`. `None` for other guests; an error names the key that
/// cannot be used.
pub fn docker_process(vm: &Vm) -> Result<Option<(Vec<String>, ProcessSpec)>, String> {
    // A bundle's zone runs the bundle's process (see `bundle_process`).
    if !vm.docker || vm.oci_bundle.is_some() {
        return Ok(None);
    }
    let md = &vm.internal_metadata;
    let list = |key: &str| -> Result<Vec<String>, String> {
        match md.get(key) {
            None => Ok(Vec::new()),
            Some(s) => serde_json::from_str::<Vec<String>>(s).map_err(|_| {
                format!("internal_metadata {key} must be a JSON array of strings, not {s:?}")
            }),
        }
    };
    let mut argv = list("docker:entrypoint")?;
    argv.extend(list("docker:cmd")?);
    if argv.first().is_none_or(String::is_empty) {
        return Err(
            "the docker zone has no command: its image has no Entrypoint or Cmd, and \
                    internal_metadata has no docker:cmd"
                .to_string(),
        );
    }
    let env = list("docker:env")?;
    if let Some(bad) = env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        return Err(format!(
            "internal_metadata docker:env: {bad:?} is not NAME=value"
        ));
    }
    RestartPolicy::of(vm)?;
    let text = |key: &str| md.get(key).filter(|v| !v.is_empty()).cloned();
    let cwd = text("docker:workdir");
    if let Some(c) = &cwd
        && !c.starts_with('/')
    {
        return Err(format!(
            "internal_metadata docker:workdir must be an absolute path, not {c:?}"
        ));
    }
    // Triton's keys for `docker run -t` (a terminal as the process's stdio; pipes
    // otherwise) and `-i` (its stdin open).
    let tty = docker_flag(vm, "docker:tty")?;
    let open_stdin = docker_flag(vm, "docker:openstdin")?;
    Ok(Some((
        argv,
        ProcessSpec {
            env,
            cwd,
            user: text("docker:user"),
            tty,
            open_stdin,
            ..ProcessSpec::default()
        },
    )))
}

/// A boolean of internal_metadata (`docker:tty`, `docker:openstdin`): "true" or "false"
/// (or empty, false), as Triton writes them.
pub fn docker_flag(vm: &Vm, key: &str) -> Result<bool, String> {
    match vm.internal_metadata.get(key).map(String::as_str) {
        None | Some("" | "false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!(
            "internal_metadata {key} must be \"true\" or \"false\", not {other:?}"
        )),
    }
}

/// An OCI bundle's process as zoned runs it: its argv, and its environment, directory, user
/// (uid:gid and its groups), terminal, capabilities and resource limits.
pub fn bundle_process(b: &BundleConfig) -> (Vec<String>, ProcessSpec) {
    (
        b.args.clone(),
        ProcessSpec {
            env: b.env.clone(),
            cwd: Some(b.cwd.clone()),
            user: Some(format!("{}:{}", b.uid, b.gid)),
            tty: b.terminal,
            groups: Some(b.groups.clone()),
            caps: b.capabilities.clone(),
            rlimits: b
                .rlimits
                .iter()
                .map(|l| RlimitSpec {
                    kind: l.kind.clone(),
                    soft: l.soft,
                    hard: l.hard,
                })
                .collect(),
            oom_score_adj: b.oom_score_adj,
            open_stdin: false,
        },
    )
}

/// A docker zone's restart policy (internal_metadata `docker:restartpolicy`, Docker's
/// `--restart`): whether its process starts again when it ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// `no` (the default).
    Never,
    /// `always` and `unless-stopped` (a `vmadm stop` is never undone either way).
    Always,
    /// `on-failure[:N]`: after a non-zero exit, at most N times when N is given.
    OnFailure(Option<u32>),
}

impl RestartPolicy {
    /// The policy internal_metadata names; an error names a value Docker does not take.
    pub fn of(vm: &Vm) -> Result<RestartPolicy, String> {
        let Some(p) = vm.internal_metadata.get("docker:restartpolicy") else {
            return Ok(RestartPolicy::Never);
        };
        match p.as_str() {
            "" | "no" => Ok(RestartPolicy::Never),
            "always" | "unless-stopped" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure(None)),
            other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
                Some(Ok(n)) => Ok(RestartPolicy::OnFailure(Some(n))),
                _ => Err(format!(
                    "internal_metadata docker:restartpolicy must be no, always, unless-stopped, \
                     on-failure or on-failure:N, not {other:?}"
                )),
            },
        }
    }

    /// Whether a process that ended with `status`, restarted `restarts` times so far, starts
    /// again.
    pub fn restarts(self, status: Option<i32>, restarts: u32) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure(max) => status != Some(0) && max.is_none_or(|n| restarts < n),
        }
    }
}

/// The zoned config of a zone guest.
impl From<GuestZone<'_>> for ZoneConfig {
    fn from(z: GuestZone<'_>) -> ZoneConfig {
        let GuestZone {
            vm,
            root,
            id_base,
            mdata,
        } = z;
        let ZoneRoot {
            source,
            data,
            volumes,
            bundle,
        } = root;
        let root = match source {
            RootSource::Dir(dir) => RootSpec::Bind { dir },
            RootSource::Overlay { lower, upper, work } => RootSpec::Overlay { lower, upper, work },
        };
        let data = data.map(|host| ZoneMount {
            host,
            at: PathBuf::from(DATA_AT),
            writable: true,
            owned: true,
        });
        // A bundle's binds (vmmd found each in the bundle), id-mapped as host directories are.
        let bundle_binds: Vec<ZoneMount> = bundle
            .iter()
            .flat_map(|b| &b.binds)
            .map(|b| ZoneMount {
                host: PathBuf::from(&b.source),
                at: PathBuf::from(&b.at),
                writable: !b.read_only,
                owned: false,
            })
            .collect();
        let binds = vm.filesystems.iter().map(|f| {
            let host = PathBuf::from(&f.source);
            ZoneMount {
                // A volume is the zone's own, as its delegated dataset is.
                owned: host.parent() == Some(volumes.as_path()),
                host,
                at: PathBuf::from(f.target.trim_end_matches('/')),
                writable: !f.read_only(),
            }
        });
        let init = vm
            .init_name
            .clone()
            .unwrap_or_else(|| "/sbin/init".to_string());
        // Checked before a start: see `docker_process`.
        let docker = match &bundle {
            // containerd's stdin FIFO, which the shim says it has (`docker:openstdin`).
            Some(b) => Some(bundle_process(b)).map(|(argv, mut p)| {
                p.open_stdin = !p.tty && docker_flag(vm, "docker:openstdin").unwrap_or(false);
                (argv, p)
            }),
            None => docker_process(vm).ok().flatten(),
        };
        let (init, process) = match docker {
            Some((argv, process)) => (argv, Some(process)),
            None => (init.split_whitespace().map(str::to_string).collect(), None),
        };
        ZoneConfig {
            uuid: vm.uuid.to_string(),
            hostname: vm.hostname.clone().unwrap_or_else(|| vm.uuid.to_string()),
            root,
            init,
            id_base,
            cgroup: format!("hull/{}", vm.uuid),
            limits: limits(vm),
            // SmartOS writes the guest's resolv.conf when it is provisioned, and again at
            // each boot only with maintain_resolvers: otherwise the guest's edits stand.
            resolvers: match writes_resolv_conf(vm) {
                true => vm.resolvers.clone(),
                false => Vec::new(),
            },
            dns_domain: vm.dns_domain.clone().filter(|_| writes_resolv_conf(vm)),
            stop_timeout_s: hull_spec::vm::defaults::stop_timeout(vm.brand),
            // lx images run their distribution's init: sysvinit shuts down on SIGPWR (with the
            // `powerwait` inittab entry LXC and Incus also rely on) and ignores SIGTERM; zoned
            // sends systemd its own signal. joyent zones run busybox-style inits: SIGTERM.
            // A docker zone's process gets SIGTERM, as `docker stop` sends.
            stop_signal: (vm.brand == Brand::Lx && !vm.docker).then_some(libc::SIGPWR),
            // A bundle's root is not hull's: id-mapped, or the start fails; never chowned.
            root_ids: match bundle {
                Some(_) => RootIds::Idmap,
                None => RootIds::Auto,
            },
            taps: Vec::new(),
            metadata: Some(metadata_mount(vm, mdata)),
            maintain_resolvers: vm.maintain_resolvers,
            mounts: data.into_iter().chain(binds).chain(bundle_binds).collect(),
            tmpfs_mib: vm.tmpfs,
            tmpfs_mounts: bundle
                .iter()
                .flat_map(|b| &b.tmpfs)
                .map(|t| TmpfsSpec {
                    at: PathBuf::from(&t.at),
                    size: t.size,
                    mode: t.mode,
                    read_only: t.read_only,
                })
                .collect(),
            masked_paths: bundle.iter().flat_map(|b| b.masked.clone()).collect(),
            read_only_paths: bundle.iter().flat_map(|b| b.read_only.clone()).collect(),
            rctls: rctls(vm),
            reset_ends: false,
            process,
            console_log: vm.docker,
            join: None,
            netns: None,
            read_only_root: bundle.as_ref().is_some_and(|b| b.read_only_root),
            cgroup_fs: bundle.as_ref().is_some_and(|b| b.cgroup_fs),
            // Its VRRP daemon raises and lowers the VRRP NIC's link.
            net_admin: vm.nics.iter().any(|n| n.is_vrrp()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lx_zones_get_a_nocloud_seed_and_tools_under_native() {
        let vm = super::super::test_record(serde_json::json!({
            "brand": "lx", "image_uuid": "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a60",
            "hostname": "deb",
            "customer_metadata": {"root_authorized_keys": "ssh-ed25519 AAAA k1\nssh-ed25519 BBBB k2",
                "user-script": "#!/bin/sh\ntouch /ran"}
        }));
        let m = metadata_mount(&vm, Some(Path::new("/opt/mdata")));
        assert_eq!(m.at, PathBuf::from("/native/.zonecontrol"));
        assert_eq!(m.tools[0].at, PathBuf::from("/native/usr/sbin/mdata-get"));
        let file = |name: &str| {
            m.seed
                .iter()
                .find(|f| f.at == Path::new(NOCLOUD_SEED).join(name))
                .map(|f| f.content.clone())
                .expect("seed file")
        };
        let meta: serde_json::Value = serde_json::from_str(&file("meta-data")).expect("json");
        assert_eq!(meta["instance-id"], vm.uuid.to_string());
        assert_eq!(meta["local-hostname"], "deb");
        assert_eq!(
            meta["public-keys"],
            "ssh-ed25519 AAAA k1\nssh-ed25519 BBBB k2"
        );
        assert_eq!(file("user-data"), "#!/bin/sh\ntouch /ran");
        assert_eq!(file("network-config"), "{\"config\": \"disabled\"}\n");
        // cloud-init:user-data wins over the user-script; joyent zones get no seed.
        let mut with = vm.clone();
        with.customer_metadata
            .insert("cloud-init:user-data".into(), "#cloud-config\n{}".into());
        assert!(
            nocloud_seed(&with)
                .iter()
                .any(|f| f.content == "#cloud-config\n{}")
        );
        with.brand = Brand::Joyent;
        let m = metadata_mount(&with, None);
        assert!(m.seed.is_empty() && m.tools.is_empty());
        assert_eq!(m.at, PathBuf::from("/.zonecontrol"));
    }
}
