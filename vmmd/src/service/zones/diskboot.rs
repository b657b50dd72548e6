//! The kernel a microVM with no kernel of its own boots: the one its boot disk's own config
//! names, found at every start (a guest's `apt upgrade` replaces its kernel, and the next boot
//! must use the new one). The search runs in its own process, `vmm --find-boot`, with no
//! capabilities and under seccomp (the disk is the guest's), into a fresh directory; what it
//! found then replaces the zone's `boot/` files, except files whose bytes did not change,
//! which keep their inode so that the vmlinux extracted from the kernel stays cached
//! ([`Zones::boot_kernel`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_vmm_proto::found::{BOOT, INITRD, KERNEL};
use hull_vmm_proto::{FoundBoot, VmmArgs};
use uuid::Uuid;

use super::{Zones, set_mode};

/// How long one search may take: it reads at most 1 GiB (hull-bootdisk's limit).
const FIND_WAIT: Duration = Duration::from_secs(120);
/// The most of the searcher's stderr kept (its last line is the reason).
const STDERR_MAX: u64 = 16 << 10;

/// What a boot disk gave: the files to boot and the entry that named them.
#[derive(Debug, Clone)]
pub struct DiskBoot {
    pub found: FoundBoot,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
}

impl Zones {
    /// Where the zone's boot files are: the kernel, initrd and record its disk gave.
    fn boot_dir(&self, uuid: Uuid) -> PathBuf {
        self.dir(uuid).join("boot")
    }

    /// Whether `vm` (as planned for a start) boots the kernel its disk gave.
    pub(super) fn boots_from_disk(&self, vm: &hull_spec::Vm) -> bool {
        vm.kernel.as_deref().map(Path::new) == Some(&self.boot_dir(vm.uuid).join(KERNEL))
    }

    /// Finds what `disk` (a microVM's boot disk) says to boot and puts it in the zone's
    /// `boot/` directory. The error is the reason, for the guest's record.
    pub fn find_boot(&self, uuid: Uuid, disk: &Path) -> Result<DiskBoot, String> {
        let dir = self.dir(uuid);
        let (boot, new) = (self.boot_dir(uuid), dir.join("boot.new"));
        let _ = std::fs::remove_dir_all(&new);
        for d in [&dir, &boot, &new] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            set_mode(d, 0o700);
        }
        let result = self.search(disk, &new).and_then(|()| install(&new, &boot));
        let _ = std::fs::remove_dir_all(&new);
        result
    }

    fn search(&self, disk: &Path, out: &Path) -> Result<(), String> {
        let args = VmmArgs {
            find_boot: Some(disk.to_path_buf()),
            boot_out: Some(out.to_path_buf()),
            ..VmmArgs::default()
        };
        let mut child = Command::new(&self.vmm)
            .args(args.to_os_argv())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.vmm.display()))?;
        let stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(s) = stderr {
                let _ = s.take(STDERR_MAX).read_to_string(&mut text);
            }
            text
        });
        let deadline = Instant::now() + FIND_WAIT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let text = reader.join().unwrap_or_default();
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        let reason = last.strip_prefix("vmm: error: ").unwrap_or(last);
        match status {
            Some(st) if st.success() => Ok(()),
            Some(_) if !reason.is_empty() => Err(reason.to_owned()),
            Some(st) => Err(format!("the boot-disk reader failed ({st})")),
            None => Err(format!(
                "reading the boot disk took more than {} s",
                FIND_WAIT.as_secs()
            )),
        }
    }
}

/// Moves what a search left in `new` into `boot`: the record, and each file whose bytes
/// changed (an unchanged one keeps its inode).
fn install(new: &Path, boot: &Path) -> Result<DiskBoot, String> {
    let record = std::fs::read(new.join(BOOT))
        .map_err(|e| format!("the boot-disk reader left no {BOOT}: {e}"))?;
    let found: FoundBoot = serde_json::from_slice(&record)
        .map_err(|e| format!("the boot-disk reader's {BOOT} is not valid: {e}"))?;
    let mut paths = Vec::new();
    for name in [KERNEL, INITRD] {
        let (from, to) = (new.join(name), boot.join(name));
        let bytes =
            std::fs::read(&from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        if std::fs::read(&to).ok().as_deref() != Some(bytes.as_slice()) {
            std::fs::rename(&from, &to)
                .map_err(|e| format!("cannot move {} into place: {e}", from.display()))?;
        }
        paths.push((to, bytes.is_empty()));
    }
    std::fs::rename(new.join(BOOT), boot.join(BOOT))
        .map_err(|e| format!("cannot move {BOOT} into place: {e}"))?;
    let [(kernel, _), (initrd, no_initrd)] = <[_; 2]>::try_from(paths)
        .map_err(|_| "the boot files are not a kernel and an initrd".to_owned())?;
    Ok(DiskBoot {
        found,
        kernel,
        initrd: (!no_initrd).then_some(initrd),
    })
}
