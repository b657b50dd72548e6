//! Zones that run an OCI runtime bundle (`oci_bundle`): its config.json read and checked at
//! create and again at each start (the bundle is the truth, as it is for runc and crun),
//! its root bound as the zone's.

use std::io::Read;
use std::path::{Path, PathBuf};

use hull_spec::oci_bundle::{self, BundleConfig};
use hull_spec::{ValidationReport, Vm};
use serde_json::Value;

use super::{Result, ServiceError};

/// Reads and checks the bundle at `dir`: its config and the root directory it names.
/// Refusals name the config's field (`process.user.uid`), the message says it is the
/// bundle's.
pub fn read(dir: &str) -> Result<(BundleConfig, PathBuf)> {
    let refuse = |property: &str, message: String| {
        let mut r = ValidationReport::default();
        r.bad_value(property, message);
        ServiceError::Invalid(r)
    };
    let path = Path::new(dir).join("config.json");
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(oci_bundle::MAX_CONFIG + 1).read_to_end(&mut bytes))
        .map_err(|e| refuse("oci_bundle", format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > oci_bundle::MAX_CONFIG {
        return Err(refuse(
            "oci_bundle",
            format!(
                "{} is over {} bytes",
                path.display(),
                oci_bundle::MAX_CONFIG
            ),
        ));
    }
    let config = oci_bundle::parse(&bytes).map_err(|found| {
        // The file is named once, with the first refusal.
        let mut r = ValidationReport::default();
        for (i, p) in found.details.into_iter().enumerate() {
            let message = match i {
                0 => format!(
                    "the bundle's config.json ({}): {}",
                    path.display(),
                    p.message
                ),
                _ => p.message,
            };
            r.bad_value(p.property, message);
        }
        ServiceError::Invalid(r)
    })?;
    let root = Path::new(dir).join(&config.root);
    if !std::fs::metadata(&root).is_ok_and(|m| m.is_dir()) {
        return Err(refuse(
            "root.path",
            format!(
                "the bundle's root {} is not a directory (containerd mounts it before the \
                 create)",
                root.display()
            ),
        ));
    }
    // The bundle is a host path its caller may name (paths.rs); its root must lie in it, or
    // `root.path` (or a symlink) would hand the zone any directory of the host, writable.
    // So must what it binds into the zone (containerd's CRI files are put in it by the shim).
    let inside = |p: &Path| -> Option<PathBuf> {
        let (real, bundle) = (
            std::fs::canonicalize(p).ok()?,
            std::fs::canonicalize(dir).ok()?,
        );
        (real.starts_with(&bundle) && real != bundle).then_some(real)
    };
    let Some(real) = inside(&root) else {
        return Err(refuse(
            "root.path",
            format!(
                "the bundle's root {} lies outside the bundle {dir}: it must be a directory in it \
                 (containerd's rootfs)",
                root.display()
            ),
        ));
    };
    let mut config = config;
    for (i, b) in config.binds.iter_mut().enumerate() {
        let source = Path::new(dir).join(&b.source);
        match inside(&source).filter(|p| p.is_file() || p.is_dir()) {
            Some(p) => b.source = p.to_string_lossy().into_owned(),
            None => {
                return Err(refuse(
                    &format!("mounts.{i}.source"),
                    format!(
                        "the bind source {} is not a file or directory in the bundle {dir}: a \
                         bundle binds only what it holds",
                        source.display()
                    ),
                ));
            }
        }
    }
    Ok((config, real))
}

/// A new zone takes what its bundle says where the payload says nothing: its hostname,
/// and its memory, CPU and process limits (linux.resources).
pub fn apply(vm: &mut Vm, payload: &Value, config: &BundleConfig) {
    let given = |k: &str| payload.get(k).is_some();
    if vm.hostname.is_none() {
        vm.hostname = config.hostname.clone();
    }
    if let Some(bytes) = config.memory
        && !given("max_physical_memory")
        && !given("ram")
    {
        let mib = bytes.div_ceil(1 << 20).clamp(1, 1 << 20);
        vm.max_physical_memory = mib;
        vm.ram = mib;
        if !given("max_swap") {
            vm.max_swap = vm.max_swap.max(mib);
        }
    }
    if let Some(bytes) = config.swap
        && !given("max_swap")
    {
        // Not below SmartOS's floor for max_swap (256 MiB).
        let floor = vm
            .max_physical_memory
            .max(hull_spec::vm::defaults::MIN_SWAP);
        vm.max_swap = bytes.div_ceil(1 << 20).clamp(floor, 1 << 20);
    }
    // Within what a payload may say (cgroup v1's shares go to 262144, a zone's to 65535).
    if let Some(shares) = config.cpu_shares
        && !given("cpu_shares")
    {
        vm.cpu_shares = shares.clamp(1, 65535) as u32;
    }
    if let Some((quota, period)) = config.cpu_quota
        && !given("cpu_cap")
    {
        vm.cpu_cap =
            Some(((quota as u64).saturating_mul(100).div_ceil(period)).clamp(1, 6400) as u32);
    }
    if let Some(pids) = config.pids
        && !given("max_lwps")
    {
        vm.max_lwps = (pids as u64).clamp(1, 4_194_304);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bundles_resources_are_the_zones_limits_unless_the_payload_sets_them() {
        let spec = json!({"ociVersion": "1.0.2", "process": {"args": ["/bin/true"]},
            "root": {"path": "rootfs"}, "hostname": "from-bundle",
            "linux": {"resources": {"memory": {"limit": 200_000_000i64, "swap": 400_000_000i64},
                "cpu": {"shares": 2048, "quota": 50_000, "period": 100_000},
                "pids": {"limit": 100}}}});
        let config = oci_bundle::parse(spec.to_string().as_bytes()).expect("config");
        let payload = json!({"brand": "lx", "oci_bundle": "/b"});
        let mut vm = super::super::convert::test_record(payload.clone());
        apply(&mut vm, &payload, &config);
        assert_eq!(vm.hostname.as_deref(), Some("from-bundle"));
        // 200 000 000 bytes is 190.7 MiB: the limit rounds up, never below the bundle's.
        assert_eq!((vm.max_physical_memory, vm.ram), (191, 191));
        // Memory and swap together: 381.5 MiB, rounded up.
        assert_eq!(vm.max_swap, 382);
        assert_eq!(
            (vm.cpu_shares, vm.cpu_cap, vm.max_lwps),
            (2048, Some(50), 100)
        );
        let payload = json!({"brand": "lx", "oci_bundle": "/b", "hostname": "mine",
            "max_physical_memory": 64, "cpu_shares": 10, "cpu_cap": 300, "max_lwps": 7});
        let mut vm = super::super::convert::test_record(payload.clone());
        apply(&mut vm, &payload, &config);
        assert_eq!(vm.hostname.as_deref(), Some("mine"));
        assert_eq!(
            (
                vm.max_physical_memory,
                vm.cpu_shares,
                vm.cpu_cap,
                vm.max_lwps
            ),
            (64, 10, Some(300), 7)
        );
    }
}
