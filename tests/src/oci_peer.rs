//! The OCI runtime peer of the zone benchmarks (bench-zones, bench-docker): a bundle config
//! with the namespaces, id map and limits a zone gets, and the mount namespace in which
//! crun runs on this host's hybrid cgroup layout.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// Host id range of the OCI containers' user namespace (zones use 0x1000_0000 + slot * 64 Ki).
pub const OCI_HOST_ID: u32 = 0x2000_0000;
const MIB: u64 = 1 << 20;
/// The limits both sides run with (a zone's payload: max_physical_memory = max_swap,
/// max_lwps, cpu_shares).
pub const MEMORY_MIB: u64 = 256;
pub const PIDS: u64 = 1024;
pub const CPU_SHARES: u64 = 100;

/// `base` (`crun spec`'s or umoci's config) with `args` as its process (no terminal),
/// namespaces pid, mount, uts, ipc, network and cgroup, the limits above and no
/// cgroupsPath; `rootfs` (read-only) replaces its root when given; with `userns`, root in
/// the container is host id [`OCI_HOST_ID`] (65536 ids).
pub fn oci_config(base: &Value, rootfs: Option<&Path>, args: &[&str], userns: bool) -> Value {
    let mut c = base.clone();
    c["process"]["args"] = json!(args);
    c["process"]["terminal"] = json!(false);
    if let Some(rootfs) = rootfs {
        c["root"] = json!({"path": rootfs, "readonly": true});
    }
    c["hostname"] = json!("bench");
    let mut kinds = vec!["pid", "mount", "uts", "ipc", "network", "cgroup"];
    if userns {
        kinds.push("user");
        let map = json!([{"containerID": 0, "hostID": OCI_HOST_ID, "size": 65536}]);
        c["linux"]["uidMappings"] = map.clone();
        c["linux"]["gidMappings"] = map;
    } else if let Some(l) = c["linux"].as_object_mut() {
        l.remove("uidMappings");
        l.remove("gidMappings");
    }
    c["linux"]["namespaces"] = kinds.iter().map(|k| json!({"type": k})).collect();
    if let Some(l) = c["linux"].as_object_mut() {
        l.remove("cgroupsPath");
    }
    let r = &mut c["linux"]["resources"];
    r["memory"] = json!({"limit": MEMORY_MIB * MIB, "swap": MEMORY_MIB * MIB});
    r["pids"] = json!({"limit": PIDS});
    r["cpu"] = json!({"shares": CPU_SHARES});
    c
}

/// True when /sys/fs/cgroup is the hybrid layout with controllers on its cgroup v2 part,
/// which crun refuses ("cgroups in hybrid mode not supported").
pub fn hybrid_with_v2_controllers() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|c| !c.trim().is_empty())
}

/// A private mount namespace (held by a descriptor) in which /dev/null is bind-mounted over
/// /sys/fs/cgroup/unified/cgroup.controllers: a runtime entered into it ([`enter_mount_ns`])
/// sees the hybrid layout with no v2 controllers and puts its limits in the v1 hierarchies
/// as usual.
pub fn masked_cgroup2() -> Result<File, String> {
    let mut helper = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind /dev/null /sys/fs/cgroup/unified/cgroup.controllers \
             && echo ready && exec sleep 60",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("unshare: {e}"))?;
    let mut line = String::new();
    if let Some(out) = helper.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let ns = File::open(format!("/proc/{}/ns/mnt", helper.id()));
    let _ = helper.kill();
    let o = helper.wait_with_output().map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!(
            "masking cgroup v2 failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    ns.map_err(|e| format!("the helper's mount namespace: {e}"))
}

/// Makes `cmd` enter the mount namespace `ns` (setns(2) between fork and exec); the caller
/// keeps `ns` open until the command has started.
pub fn enter_mount_ns(cmd: &mut Command, ns: &File) {
    let fd = ns.as_raw_fd();
    // SAFETY: between fork and exec the closure only makes the setns(2) syscall on a
    // descriptor the parent keeps open, and builds an io::Error from errno.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNS) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
