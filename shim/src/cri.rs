//! The files containerd's CRI plugin hands a pod's containers: /etc/hosts, /etc/hostname and
//! /etc/resolv.conf it wrote for the pod (under its root, `.../io.containerd.grpc.v1.cri/
//! sandboxes/<sandbox id>/`), and the pod's /dev/shm (under its state directory). vmmd binds
//! into a zone only what lies in the bundle, so the shim binds each of those files into the
//! bundle's `hull-cri` directory and points the config at it; /dev/shm becomes the zone's
//! own tmpfs (each container of a pod has its own: the pod's IPC namespace is shared, its
//! POSIX shared memory files are not). Any other source outside the bundle is left as it is,
//! for vmmd to refuse naming it: the shim vouches only for what containerd made for this pod.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// Where in the bundle the pod's files are bound.
const DIR: &str = "hull-cri";

/// containerd's CRI plugin's directory name, under its root and its state directory.
const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";

/// The annotation that names a container's pod sandbox (the sandbox's own id on it).
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The files of a pod's sandbox directory a container may be given.
const POD_FILES: [&str; 3] = ["hosts", "hostname", "resolv.conf"];

/// What `source` is of the pod `sandbox`'s, if it is one of containerd's files for it: its
/// real path and its name in the sandbox's directory. The whole path must be root's and
/// writable by root alone (or sticky, as /tmp is: no one else may replace root's entries),
/// so that no one else can have placed a file there.
fn pod_file(source: &Path, sandbox: &str) -> Option<(PathBuf, String)> {
    let real = std::fs::canonicalize(source).ok()?;
    let parts: Vec<&str> = real
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .collect();
    let [.., cri, sandboxes, id, name] = parts.as_slice() else {
        return None;
    };
    if *cri != CRI_PLUGIN || *sandboxes != "sandboxes" || *id != sandbox {
        return None;
    }
    let root_only = |p: &Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
    };
    let root_dir = |p: &Path| {
        root_only(p)
            || std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o1000 != 0)
    };
    let mut dirs = real.ancestors().skip(1);
    let shm = *name == "shm" && real.is_dir();
    let file = POD_FILES.contains(name) && real.is_file() && root_only(&real);
    ((shm || file) && dirs.all(root_dir)).then(|| (real.clone(), name.to_string()))
}

/// Binds the pod's files that `config`'s mounts name into `bundle` and rewrites those
/// mounts (the pod's /dev/shm into the zone's own tmpfs); true when it changed the config.
/// On an error, what it bound is unbound again.
pub fn files_into_bundle(bundle: &Path, config: &mut Value) -> Result<bool, String> {
    let Some(sandbox) = config
        .pointer(&format!("/annotations/{}", SANDBOX_ID.replace('/', "~1")))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_string)
    else {
        return Ok(false);
    };
    let Some(mounts) = config.get_mut("mounts").and_then(Value::as_array_mut) else {
        return Ok(false);
    };
    let mut changed = false;
    for m in mounts.iter_mut() {
        let Some(source) = m.get("source").and_then(Value::as_str) else {
            continue;
        };
        let source = Path::new(source);
        if !source.is_absolute() || source.starts_with(bundle) {
            continue;
        }
        let Some((real, name)) = pod_file(source, &sandbox) else {
            continue;
        };
        if name == "shm" {
            if m.get("destination").and_then(Value::as_str) != Some("/dev/shm") {
                continue;
            }
            *m = serde_json::json!({
                "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777"],
            });
            changed = true;
            continue;
        }
        let dir = bundle.join(DIR);
        let target = dir.join(&name);
        let bound = std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
            })
            .map_err(|e| format!("{}: {e}", target.display()))
            .and_then(|_| {
                nix::mount::mount(
                    Some(&real),
                    &target,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| format!("bind {} at {}: {e}", real.display(), target.display()))
            });
        if let Err(e) = bound {
            unmount(bundle);
            return Err(e);
        }
        m["source"] = Value::String(format!("{DIR}/{name}"));
        changed = true;
    }
    Ok(changed)
}

/// Unbinds what [`files_into_bundle`] bound in `bundle` (lazily: a zone's mount namespace
/// may still hold it for a moment).
pub fn unmount(bundle: &Path) {
    for name in POD_FILES {
        let _ = nix::mount::umount2(
            &bundle.join(DIR).join(name),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_pods_own_files_are_bound_into_the_bundle() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod = tmp.path().join(CRI_PLUGIN).join("sandboxes").join("abc123");
        std::fs::create_dir_all(pod.join("shm")).expect("pod dir");
        std::fs::write(pod.join("hosts"), "127.0.0.1 localhost\n").expect("hosts");
        std::fs::write(pod.join("passwd"), "").expect("passwd");
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir(&bundle).expect("bundle");
        let mount = |src: &Path, dst: &str| json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro"]});
        let mut config = json!({
            "annotations": {SANDBOX_ID: "abc123"},
            "mounts": [mount(&pod.join("shm"), "/dev/shm"), mount(&pod.join("passwd"), "/etc/passwd"),
                mount(Path::new("/etc"), "/host")],
        });
        // The files are root's only when the test runs as root: otherwise nothing is the
        // pod's (another user could have made them).
        let root = nix::unistd::geteuid().is_root();
        assert_eq!(files_into_bundle(&bundle, &mut config), Ok(root));
        let kind = if root { "tmpfs" } else { "bind" };
        assert_eq!(config["mounts"][0]["type"], kind, "{config}");
        // A file of the pod's directory that is not one containerd gives, and a host
        // directory: left for vmmd to refuse.
        assert_eq!(config["mounts"][1]["source"], json!(pod.join("passwd")));
        assert_eq!(config["mounts"][2]["source"], "/etc");
        // Another pod's files are not this one's.
        let mut other = json!({"annotations": {SANDBOX_ID: "def456"},
            "mounts": [mount(&pod.join("shm"), "/dev/shm")]});
        assert!(!files_into_bundle(&bundle, &mut other).expect("unchanged"));
        // Without the annotation nothing is the pod's.
        let mut plain = json!({"mounts": [mount(&pod.join("shm"), "/dev/shm")]});
        assert!(!files_into_bundle(&bundle, &mut plain).expect("unchanged"));
    }
}
