//! The files containerd's CRI plugin hands a pod's containers: /etc/hosts, /etc/hostname and
//! /etc/resolv.conf it wrote for the pod (under its root, `.../io.containerd.grpc.v1.cri/
//! sandboxes/<sandbox id>/`), and the pod's /dev/shm (under its state directory). vmmd binds
//! into a zone only what lies in the bundle, so the shim binds each of those files into the
//! bundle's `hull-cri` directory and points the config at it; /dev/shm becomes the zone's
//! own tmpfs (each container of a pod has its own: the pod's IPC namespace is shared, its
//! POSIX shared memory files are not). kubelet's volumes for the pod (emptyDir, configMap,
//! secret, projected..., under its `pods/<pod uid>/` tree) are bound there the same way. Any
//! other source outside the bundle (a hostPath volume, `ctr run --mount` of a host
//! directory) is left as it is, for vmmd to refuse naming it: the shim vouches only for what
//! containerd and kubelet made for a pod, on paths only root could have made.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// Where in the bundle the pod's files are bound.
const DIR: &str = "hull-cri";

/// The prefix of a kubelet volume's name in [`DIR`] (then the mount's index).
const VOLUME: &str = "volume-";

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
    let shm = *name == "shm" && real.is_dir();
    let file = POD_FILES.contains(name) && real.is_file() && root_only(&real);
    ((shm || file) && root_placed(real.ancestors().skip(1)))
        .then(|| (real.clone(), name.to_string()))
}

/// The directories of kubelet's per-pod tree (`<kubelet root>/pods/<pod uid>/...`) whose
/// entries it hands a pod's containers: volumes (emptyDir, configMap, secret, projected...,
/// each `volumes/<plugin>/<name>`), subPath binds of them, and the termination-log files
/// under `containers/<name>/<id>`; plus the pod's `etc-hosts` file.
const KUBELET_DIRS: [&str; 3] = ["volumes", "volume-subpaths", "containers"];

/// Whether every directory of `dirs` is root's and writable by root alone, or sticky (as
/// /tmp is): no one else can have placed or replaced what is below it.
fn root_placed<'a>(mut dirs: impl Iterator<Item = &'a Path>) -> bool {
    dirs.all(|p| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| m.uid() == 0 && (m.mode() & 0o022 == 0 || m.mode() & 0o1000 != 0))
    })
}

/// What `source` is if it is one of kubelet's volumes (or files) for a pod: its real path.
/// Its shape must be `.../pods/<pod uid>/{volumes,volume-subpaths}/<plugin>/<name>[/...]`,
/// `.../pods/<pod uid>/containers/<name>/<id>` or `.../pods/<pod uid>/etc-hosts`, and the
/// path down to the volume's parent root's alone (the volume itself and its content are the
/// pod's: an emptyDir is 0777). A hostPath volume has none of these shapes: it stays refused.
fn kubelet_volume(source: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(source).ok()?;
    let parts: Vec<&std::ffi::OsStr> = real
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let at = parts.iter().rposition(|p| *p == "pods")?;
    let uid = parts.get(at + 1)?.to_str()?;
    let is_uid = !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let rest = &parts[at + 2..];
    // How many components below the pod's directory are kubelet's (the rest is the pod's).
    let kubelets = match rest.first().and_then(|k| k.to_str()) {
        Some("etc-hosts") if rest.len() == 1 && real.is_file() => 1,
        Some(k) if KUBELET_DIRS.contains(&k) && rest.len() >= 3 => 3,
        _ => return None,
    };
    let depth = at + 2 + kubelets;
    // The volume's own directory and every one above it (a file's too, as a file).
    let below = parts.len() - depth;
    let placed: Vec<&Path> = real.ancestors().skip(below + 1).collect();
    (is_uid && root_placed(placed.into_iter())).then_some(real)
}

/// Binds the pod's files that `config`'s mounts name into `bundle` and rewrites those
/// mounts (the pod's /dev/shm into the zone's own tmpfs); true when it changed the config.
/// kubelet's volumes for the pod ([`kubelet_volume`]) are bound there too, as
/// `hull-cri/volume-<n>`. On an error, what it bound is unbound again.
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
    for (n, m) in mounts.iter_mut().enumerate() {
        let Some(source) = m.get("source").and_then(Value::as_str) else {
            continue;
        };
        let source = Path::new(source);
        if !source.is_absolute() || source.starts_with(bundle) {
            continue;
        }
        let found = pod_file(source, &sandbox)
            .or_else(|| kubelet_volume(source).map(|real| (real, format!("{VOLUME}{n}"))));
        let Some((real, name)) = found else {
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
            .and_then(|()| match real.is_dir() {
                true => std::fs::create_dir_all(&target),
                false => std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
                    .map(drop),
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
    let Ok(entries) = std::fs::read_dir(bundle.join(DIR)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let ours = name.to_str().is_some_and(|n| {
            POD_FILES.contains(&n)
                || n.strip_prefix(VOLUME)
                    .is_some_and(|i| i.parse::<usize>().is_ok())
        });
        if ours {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

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

    /// kubelet's volumes for a pod are bound into the bundle; a path of another shape (a
    /// hostPath volume) or under a directory someone else may write is not.
    #[test]
    fn kubelet_volumes_are_bound_into_the_bundle() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod = tmp
            .path()
            .join("kubelet/pods/7d3c1a2b-0f4e-4c5d-8e9f-0a1b2c3d4e5f");
        let cache = pod.join("volumes/kubernetes.io~empty-dir/cache");
        std::fs::create_dir_all(&cache).expect("volume");
        let open = std::fs::Permissions::from_mode(0o777);
        std::fs::set_permissions(&cache, open.clone()).expect("emptyDir mode");
        let shared = pod.join("volumes/kubernetes.io~empty-dir");
        let loose = tmp
            .path()
            .join("loose/pods/7d3c1a2b/volumes/kubernetes.io~secret/s");
        std::fs::create_dir_all(&loose).expect("loose");
        std::fs::set_permissions(tmp.path().join("loose"), open).expect("mode");
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir(&bundle).expect("bundle");
        let mount = |src: &Path, dst: &str| json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "rprivate", "rw"]});
        let mut config = json!({
            "annotations": {SANDBOX_ID: "abc123"},
            "mounts": [mount(&cache, "/cache"), mount(&shared, "/plugin"),
                mount(&loose, "/secret"), mount(Path::new("/etc"), "/host")],
        });
        let root = nix::unistd::geteuid().is_root();
        let changed = files_into_bundle(&bundle, &mut config);
        unmount(&bundle);
        assert_eq!(changed, Ok(root));
        let sources: Vec<&str> = config["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| m["source"].as_str().expect("source"))
            .collect();
        let volume = match root {
            true => "hull-cri/volume-0".to_string(),
            false => cache.display().to_string(),
        };
        assert_eq!(
            sources,
            [
                volume.as_str(),
                &shared.display().to_string(),
                &loose.display().to_string(),
                "/etc"
            ]
        );
    }
}
