//! Zone helpers the root suites share: the bundled busybox image, and a zone made from it
//! through vmadm.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use crate::Daemon;

/// An image from a recipe under images/ (built once, cached).
pub fn built_image(recipe: &str, out: Option<&Path>, file: &str) -> (PathBuf, PathBuf) {
    crate::recipe_image(recipe, out, file).expect("image recipe")
}

/// The busybox image, built once per test process.
pub fn busybox() -> &'static (PathBuf, PathBuf) {
    static IMAGE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = top.join("target/images/busybox-tests");
        built_image("busybox", Some(&out), "busybox.tar.gz")
    })
}

/// A command's status and output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A command's stdout, once it is seen to succeed.
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a command failed and that its stderr names `naming`.
pub fn refused(o: &Output, naming: &str) {
    assert!(!o.status.success(), "expected a refusal: {}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(naming),
        "the refusal names {naming}: {}",
        text(o)
    );
}

/// The busybox image's uuid.
pub fn image_uuid() -> String {
    manifest_uuid(&busybox().0)
}

/// The uuid a manifest file names.
pub fn manifest_uuid(manifest: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).expect("manifest")).expect("json");
    m["uuid"].as_str().expect("uuid").to_string()
}

/// Installs the busybox image.
pub fn install(d: &Daemon) {
    install_image(d, busybox());
}

/// Installs an image (manifest, file) with imgadm.
pub fn install_image(d: &Daemon, (m, f): &(PathBuf, PathBuf)) {
    let o = d.imgadm_install(m, f);
    assert!(o.status.success(), "{}", text(&o));
}

/// Creates (and with autoboot starts) a busybox zone; returns its uuid.
pub fn create(d: &Daemon, extra: serde_json::Value) -> String {
    let mut p = serde_json::json!({"brand": "joyent-minimal", "image_uuid": image_uuid(),
        "alias": "ztest", "hostname": "ztest"});
    if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    let o = d.vmadm(&["create"], Some(&p.to_string()));
    assert!(o.status.success(), "{}\nlog: {}", text(&o), d.log());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let line = format!("{out}{err}");
    line.split_whitespace()
        .find(|w| uuid::Uuid::parse_str(w).is_ok())
        .expect("uuid in vmadm create's output")
        .to_string()
}

/// What a zone's record says once it stopped (a docker or bundle zone whose process ended),
/// waiting at most 60 s.
pub fn wait_stopped(d: &Daemon, uuid: &str) -> serde_json::Value {
    let t = std::time::Instant::now();
    loop {
        let vm: serde_json::Value =
            serde_json::from_str(&ok(&d.vmadm(&["get", uuid], None))).expect("get");
        if vm["state"] == "stopped" {
            return vm;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "the zone still runs: {vm}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
