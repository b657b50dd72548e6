//! The microVM kit: what a microVM's zone holds besides the guest's files. The VMM binary's
//! shared libraries (found once), the host's saved KVM CPUID table (made again when KVM's
//! answer may have changed) and the kernels extracted from bzImages in the background.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hull_vmm_proto::VmmArgs;

use super::{Zones, set_mode};

/// Why the VMM's shared libraries cannot be found (a microVM's zone must hold them).
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// The VMM binary cannot be read.
    #[error("cannot read the VMM {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The VMM binary is not an ELF file hull can read.
    #[error("the VMM {} is not a usable ELF file: {why}", path.display())]
    NotElf { path: PathBuf, why: &'static str },
    /// Its ELF interpreter cannot be run.
    #[error("cannot run {} --list on the VMM {}", interp.display(), path.display())]
    RunInterpreter {
        interp: PathBuf,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Its ELF interpreter could not list the libraries (its stderr).
    #[error("cannot list the libraries of the VMM {}: {stderr}", path.display())]
    List { path: PathBuf, stderr: String },
    /// A library it needs is not on this host (the interpreter's line).
    #[error("the VMM {} needs a library this host lacks: {line}", path.display())]
    Missing { path: PathBuf, line: String },
}

impl Zones {
    /// The host's saved KVM CPUID table, which every VMM reads instead of asking KVM (~60
    /// host CPUID instructions, each a trap on a nested host). Made again with `vmm
    /// --save-cpuid` whenever what KVM's answer depends on has changed ([`kvm_state_key`]);
    /// `None` when it cannot be made: each VMM then asks KVM itself, and reports any problem
    /// with /dev/kvm.
    pub(super) fn cpuid_table(&self) -> Option<PathBuf> {
        let table = self.root.join(".kvm-cpuid");
        let key_file = self.root.join(".kvm-cpuid.key");
        let key = kvm_state_key();
        let _one = self.cpuid_lock.lock().unwrap_or_else(|e| e.into_inner());
        if table.exists() && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
            return Some(table);
        }
        let _ = std::fs::create_dir_all(&self.root);
        let save = VmmArgs {
            save_cpuid: Some(table.clone()),
            ..VmmArgs::default()
        };
        let saved = Command::new(&self.vmm)
            .args(save.to_os_argv())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !saved {
            return None;
        }
        // The table is right for now; without its key (not written, or lost or torn by a host
        // crash: no fsync) it is made again next time.
        let runtime = hull_sys::fs::WriteOptions::RUNTIME;
        let _ = hull_sys::fs::write_atomic_with(&key_file, key.as_bytes(), runtime);
        Some(table)
    }

    /// The kernel file a microVM boots: the vmlinux extracted from its bzImage when vmmd has
    /// one, else the file itself while a background thread extracts it for the next start (`vmm
    /// --extract-vmlinux`, far cheaper than the decompressor every guest boot skips; figures in
    /// docs/PERFORMANCE.md, "Figures behind design choices"). Extracted kernels live in
    /// `<zones>/.kernels/<dev>-<inode>-<size>-<mtime>-<ctime>.vmlinux`, so a replaced or
    /// rewritten kernel file gets a new one (and its old one is removed); a file with nothing
    /// to extract (an ELF, an lz4 bzImage) gets an empty `.none` marker instead.
    pub(super) fn boot_kernel(&self, kernel: &Path) -> PathBuf {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(kernel) else {
            return kernel.to_path_buf();
        };
        let dir = self.root.join(".kernels");
        let file = format!("{:x}-{:x}-", meta.dev(), meta.ino());
        let key = format!(
            "{file}{:x}-{}.{:09}-{}.{:09}",
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        let elf = dir.join(format!("{key}.vmlinux"));
        if elf.is_file() {
            return elf;
        }
        if dir.join(format!("{key}.none")).exists() {
            return kernel.to_path_buf();
        }
        let mut busy = self.extracting.lock().unwrap_or_else(|e| e.into_inner());
        if busy.insert(key.clone()) {
            let (vmm, kernel_path) = (self.vmm.clone(), kernel.to_path_buf());
            let extracting = self.extracting.clone();
            std::thread::spawn(move || {
                extract_kernel(&vmm, &kernel_path, &dir, &file, &key);
                extracting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            });
        }
        kernel.to_path_buf()
    }
}

/// The shared libraries and ELF interpreter `binary` loads, as its interpreter resolves them
/// (`ld.so --list`, what ldd runs; none for a static binary): a microVM's zone holds them at
/// The mdata tool to bind into zones, if `path` is one a zone can run: it must exist and be
/// linked statically (a zone's userland may have no C library, or another one). Otherwise
/// the reason, which vmmd logs; zones then get the metadata socket without the tools.
pub fn mdata_tools(path: &Path) -> Result<PathBuf, String> {
    match elf_interpreter(path) {
        Ok(None) => Ok(path.to_path_buf()),
        Ok(Some(interp)) => Err(format!(
            "{} is linked dynamically (interpreter {}); build it with scripts/build-mdata",
            path.display(),
            interp.display()
        )),
        Err(e) => Err(hull_sys::chain(&e)),
    }
}

/// the same paths, read-only. No ldd needed (a live image has none).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, KitError> {
    let Some(interp) = elf_interpreter(binary)? else {
        return Ok(Vec::new());
    };
    let o = Command::new(&interp)
        .arg("--list")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| KitError::RunInterpreter {
            interp: interp.clone(),
            path: binary.to_path_buf(),
            source,
        })?;
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return Err(KitError::List {
            path: binary.to_path_buf(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(KitError::Missing {
                path: binary.to_path_buf(),
                line: line.to_string(),
            });
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The ELF interpreter (PT_INTERP) of a 64-bit little-endian ELF `binary`, if it has one.
fn elf_interpreter(binary: &Path) -> Result<Option<PathBuf>, KitError> {
    use std::os::unix::ffi::OsStrExt;
    let bad = |why: &'static str| KitError::NotElf {
        path: binary.to_path_buf(),
        why,
    };
    let bytes = std::fs::read(binary).map_err(|source| KitError::Read {
        path: binary.to_path_buf(),
        source,
    })?;
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(bad("not a 64-bit little-endian ELF"));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(bad("truncated header"));
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(phnum) {
        let ph = (phoff as usize).saturating_add(i * usize::from(phentsize));
        if u32_at(ph) != Some(PT_INTERP) {
            continue;
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            return Err(bad("truncated program header"));
        };
        let name = bytes
            .get(off as usize..off.saturating_add(size) as usize)
            .ok_or_else(|| bad("interpreter outside the file"))?;
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        return Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(name))));
    }
    Ok(None)
}

/// Extracts `kernel`'s vmlinux into `dir` as `<key>.vmlinux` (or marks it `<key>.none`),
/// through a temporary file renamed into place, then removes the entries of older versions
/// of the same file (`<file>...`). Failures leave nothing behind: the next start tries again.
fn extract_kernel(vmm: &Path, kernel: &Path, dir: &Path, file: &str, key: &str) {
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    set_mode(dir, 0o700);
    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let extract = VmmArgs {
        kernel: Some(kernel.to_path_buf()),
        extract_vmlinux: Some(tmp.clone()),
        ..VmmArgs::default()
    };
    let status = Command::new(vmm)
        .args(extract.to_os_argv())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let kept = match status.map(|s| s.code()) {
        Ok(Some(0)) => {
            let elf = dir.join(format!("{key}.vmlinux"));
            std::fs::rename(&tmp, &elf).is_ok().then_some(elf)
        }
        Ok(Some(3)) => {
            let none = dir.join(format!("{key}.none"));
            std::fs::write(&none, b"").is_ok().then_some(none)
        }
        _ => None,
    };
    let _ = std::fs::remove_file(&tmp);
    let Some(kept) = kept else { return };
    // Older versions of the same file go, and so do copies of the same bytes under another
    // inode (same size and mtime: the live image's kit kernel, unpacked again at each boot),
    // so the directory holds one entry per kernel.
    let same_bytes = |name: &str| {
        let ours: Vec<&str> = key.split('-').collect();
        let theirs: Vec<&str> = name.split('-').collect();
        ours.len() >= 4 && theirs.len() >= 4 && ours[2..4] == theirs[2..4]
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with(file) || same_bytes(&name)) && entry.path() != kept {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What KVM's supported CPUID depends on, as far as user space can tell: the boot (kernel,
/// CPU microcode, firmware settings) and the version and parameters of each loaded KVM
/// module (`nested`, `enable_pmu`...). Equal keys mean a saved table still holds.
pub fn kvm_state_key() -> String {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut key = String::new();
    for f in [
        "/proc/sys/kernel/random/boot_id",
        "/proc/sys/kernel/osrelease",
    ] {
        key.push_str(read(Path::new(f)).trim());
        key.push('\n');
    }
    let mut modules: Vec<PathBuf> = std::fs::read_dir("/sys/module")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kvm"))
        .map(|e| e.path())
        .collect();
    modules.sort();
    for m in modules {
        key.push_str(&format!(
            "{} {}",
            m.display(),
            read(&m.join("srcversion")).trim()
        ));
        let mut params: Vec<PathBuf> = std::fs::read_dir(m.join("parameters"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        params.sort();
        for p in params {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            key.push_str(&format!(" {name}={}", read(&p).trim()));
        }
        key.push('\n');
    }
    key
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use zoned::config::RootIds;

    #[test]
    fn kernels_are_extracted_once_in_the_background_and_again_when_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        // A stand-in for `vmm --kernel K --extract-vmlinux OUT`: files named *.elf have
        // nothing to extract, others "decompress" to their own bytes behind an ELF magic.
        let vmm = d.path().join("vmm");
        std::fs::write(
            &vmm,
            "#!/bin/sh\ncase \"$2\" in *.elf) exit 3;; esac\n\
             { printf '\\177ELF'; cat \"$2\"; } > \"$4\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let zones = Zones::new(
            d.path(),
            crate::service::Runtimes {
                zoned: PathBuf::from("/bin/false"),
                vmm,
                mdata: None,
            },
            RootIds::Auto,
        );
        let kernels = d.path().join("zones/.kernels");
        let entries = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&kernels)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let settle = |want: &dyn Fn(&[String]) -> bool| {
            let until = Instant::now() + Duration::from_secs(10);
            while !want(&entries()) {
                assert!(Instant::now() < until, "no extraction: {:?}", entries());
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let bz = d.path().join("vmlinuz");
        std::fs::write(&bz, b"one").unwrap();
        // First start: the file itself, while it is extracted for the next.
        assert_eq!(zones.boot_kernel(&bz), bz);
        settle(&|e| e.len() == 1 && e[0].ends_with(".vmlinux"));
        let elf = zones.boot_kernel(&bz);
        assert_eq!(elf.parent(), Some(kernels.as_path()));
        assert_eq!(std::fs::read(&elf).unwrap(), b"\x7fELFone");
        // The file is replaced: its old extraction goes once the new one is there.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&bz, b"two").unwrap();
        assert_eq!(zones.boot_kernel(&bz), bz);
        settle(&|e| e.len() == 1 && e[0].ends_with(".vmlinux") && kernels.join(&e[0]) != elf);
        assert_eq!(
            std::fs::read(zones.boot_kernel(&bz)).unwrap(),
            b"\x7fELFtwo"
        );
        // Nothing to extract: a marker, and the file is booted as it is from then on.
        let plain = d.path().join("kernel.elf");
        std::fs::write(&plain, b"x").unwrap();
        assert_eq!(zones.boot_kernel(&plain), plain);
        settle(&|e| e.iter().any(|n| n.ends_with(".none")));
        assert_eq!(zones.boot_kernel(&plain), plain);
        // A missing kernel is passed on as it is (vm_config and the VMM report it).
        let missing = d.path().join("missing");
        assert_eq!(zones.boot_kernel(&missing), missing);
    }

    #[test]
    fn the_kvm_state_key_is_stable_and_names_the_boot() {
        let key = kvm_state_key();
        assert_eq!(key, kvm_state_key());
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert!(key.starts_with(boot.trim()), "{key}");
        // Each loaded KVM module is in it, with its parameters.
        if Path::new("/sys/module/kvm/parameters").exists() {
            assert!(key.contains("/sys/module/kvm "), "{key}");
        }
    }

    #[test]
    fn shared_libraries_of_a_dynamic_binary_and_of_a_missing_one() {
        let sh = shared_libraries(Path::new("/bin/sh")).expect("libraries of /bin/sh");
        assert!(
            sh.iter().any(|l| l.to_string_lossy().contains("ld-linux")),
            "the interpreter is listed: {sh:?}"
        );
        assert!(
            sh.iter().any(|l| l
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc"))),
            "{sh:?}"
        );
        assert!(sh.iter().all(|l| l.is_absolute() && l.exists()), "{sh:?}");
        let missing = shared_libraries(Path::new("/nonexistent/vmm"));
        assert!(missing.is_err(), "{missing:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\n").expect("write");
        let e = shared_libraries(&script).unwrap_err();
        assert!(e.to_string().contains("not a usable ELF"), "{e}");
        // A static ELF (no PT_INTERP): a header with no program headers.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let static_bin = dir.path().join("static");
        std::fs::write(&static_bin, &elf).expect("write");
        let none = shared_libraries(&static_bin).expect("a static ELF");
        assert!(none.is_empty(), "{none:?}");
    }
}
