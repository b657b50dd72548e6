//! Builds the freestanding test guest (images/testguest) with gcc so the KVM-tier tests can boot
//! it. Its path reaches the tests as `HULL_TESTGUEST`; when gcc is missing or fails the variable
//! is empty and the KVM-tier tests fail saying so, while the library itself still builds.

use std::path::PathBuf;
use std::process::Command;

/// Keep in step with images/testguest/Makefile.
const TESTGUEST_CFLAGS: &[&str] = &[
    "-O2",
    "-m64",
    "-ffreestanding",
    "-nostdlib",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-static",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-tree-loop-distribute-patterns",
    "-fno-builtin",
    "-Wall",
    "-Wextra",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=4096",
    "-Wl,--no-warn-rwx-segments",
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let src = manifest.join("../../images/testguest");
    for f in ["entry.S", "guest.c", "linker.ld"] {
        println!("cargo:rerun-if-changed={}", src.join(f).display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("testguest.elf");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_owned());
    let status = Command::new(&cc)
        .args(TESTGUEST_CFLAGS)
        .arg(format!("-Wl,-T,{}", src.join("linker.ld").display()))
        .arg("-o")
        .arg(&out)
        .arg(src.join("entry.S"))
        .arg(src.join("guest.c"))
        .status();
    match status {
        Ok(s) if s.success() => {
            println!("cargo:rustc-env=HULL_TESTGUEST={}", out.display());
        }
        other => {
            println!("cargo:warning=could not build the test guest with {cc}: {other:?}");
            println!("cargo:rustc-env=HULL_TESTGUEST=");
        }
    }
}
