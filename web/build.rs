//! Builds the browser assets (web/frontend/build: npm packages pinned by its lockfile, and
//! the console page's script) into OUT_DIR, where src/assets.rs embeds them.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = std::env::var_os("OUT_DIR").expect("OUT_DIR");
    for f in ["build", "package.json", "package-lock.json", "console.js"] {
        println!("cargo:rerun-if-changed=frontend/{f}");
    }
    let status = Command::new(dir.join("frontend/build"))
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run web/frontend/build: {e}"));
    assert!(
        status.success(),
        "web/frontend/build failed ({status}): hull-web's browser assets need npm and the npm registry (see its output above)"
    );
}
