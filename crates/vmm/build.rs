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

/// Links GCC's unwinder statically into the `vmm` binary (what `gcc -static-libgcc` does for C
/// programs) instead of loading libgcc_s.so at every start: std needs an unwinder for
/// backtraces, and loading libgcc_s costs CPU at every launch (docs/PERFORMANCE.md, "Figures
/// behind design choices": a shared object to map and relocate, and a constructor that runs
/// CPUID, which traps under nested virtualization). Whole-archive, so the unwinder's symbols
/// are defined before std's references reach the shared library; `--as-needed` then drops
/// libgcc_s. Skipped (libgcc_s stays) when the C compiler has no libgcc_eh.a or the target
/// links statically anyway.
fn link_static_unwinder() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("CARGO_CFG_TARGET_FEATURE")
            .split(',')
            .any(|f| f == "crt-static")
    {
        return;
    }
    let Ok(out) = Command::new("cc")
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_absolute() || !path.exists() {
        println!("cargo:warning=no libgcc_eh.a: the vmm binary loads libgcc_s.so");
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=vmm=-Wl,--push-state,--whole-archive,{},--pop-state",
        path.display()
    );
}

fn main() {
    link_static_unwinder();
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
