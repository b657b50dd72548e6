//! SmartOS's zone resource controls that are neither cgroup files nor mounts: the locked
//! memory limit (`max_locked_memory`, RLIMIT_MEMLOCK of the zone's processes) and the
//! System V IPC limits (`max_shm_memory`, `max_shm_ids`, `max_msg_ids`, `max_sem_ids`), which
//! on Linux are sysctls of the zone's own IPC namespace.

use std::os::fd::AsFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The limits, each unset for the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rctls {
    /// RLIMIT_MEMLOCK (soft and hard) of init and of every zlogin command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_memory_bytes: Option<u64>,
    /// kernel.shmmax (bytes) and kernel.shmall (pages) of the zone's IPC namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_bytes: Option<u64>,
    /// kernel.shmmni.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_ids: Option<u64>,
    /// kernel.msgmni.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_ids: Option<u64>,
    /// SEMMNI, the fourth field of kernel.sem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sem_ids: Option<u64>,
}

impl Rctls {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Rctls::default()
    }

    /// Sets the caller's locked-memory limit (which the zone's processes inherit). Raising
    /// it above the present hard limit takes CAP_SYS_RESOURCE in the host's user namespace;
    /// where the host withholds that, the limit is held at the hard one and the returned
    /// note says so.
    pub fn limit_locked_memory(&self) -> std::io::Result<Option<String>> {
        let Some(bytes) = self.locked_memory_bytes else {
            return Ok(None);
        };
        let set = |b: u64| {
            let limit = libc::rlimit {
                rlim_cur: b,
                rlim_max: b,
            };
            // SAFETY: setrlimit with a valid rlimit.
            match unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        };
        match set(bytes) {
            Ok(()) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                let mut now = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: getrlimit into a valid rlimit.
                if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut now) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                set(now.rlim_max)?;
                Ok(Some(format!(
                    "max_locked_memory held at {} MiB, the host's hard limit (raising it takes \
                     CAP_SYS_RESOURCE, which this host withholds)",
                    now.rlim_max >> 20
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the IPC limits into the IPC namespace of process `pid` (a zone's init, not
    /// yet running anything of the zone's). The caller, host root and single-threaded,
    /// enters that namespace for the writes and returns to its own. The kernel lets only
    /// the namespace's own root (host uid `zone_root`, the zone's uid 0) write them, so the
    /// writes are made with that effective uid.
    pub fn limit_ipc(&self, pid: i32, zone_root: u32) -> std::io::Result<()> {
        if self.shm_bytes.is_none()
            && self.shm_ids.is_none()
            && self.msg_ids.is_none()
            && self.sem_ids.is_none()
        {
            return Ok(());
        }
        let own = std::fs::File::open("/proc/self/ns/ipc")?;
        let zone = std::fs::File::open(format!("/proc/{pid}/ns/ipc"))?;
        nix::sched::setns(zone.as_fd(), nix::sched::CloneFlags::CLONE_NEWIPC)?;
        let written = nix::unistd::seteuid(nix::unistd::Uid::from_raw(zone_root))
            .map_err(std::io::Error::from)
            .and_then(|()| {
                let w = self.write_ipc(Path::new("/proc/sys/kernel"));
                nix::unistd::seteuid(nix::unistd::Uid::from_raw(0))?;
                w
            });
        let back = nix::sched::setns(own.as_fd(), nix::sched::CloneFlags::CLONE_NEWIPC);
        written?;
        back?;
        Ok(())
    }

    fn write_ipc(&self, dir: &Path) -> std::io::Result<()> {
        let write = |name: &str, value: String| {
            std::fs::write(dir.join(name), value)
                .map_err(|e| std::io::Error::new(e.kind(), format!("write kernel.{name}: {e}")))
        };
        if let Some(bytes) = self.shm_bytes {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
            write("shmmax", bytes.to_string())?;
            write("shmall", bytes.div_ceil(page).to_string())?;
        }
        if let Some(n) = self.shm_ids {
            write("shmmni", n.to_string())?;
        }
        if let Some(n) = self.msg_ids {
            write("msgmni", n.to_string())?;
        }
        if let Some(n) = self.sem_ids {
            let now = std::fs::read_to_string(dir.join("sem"))?;
            write("sem", with_semmni(&now, n)?)?;
        }
        Ok(())
    }
}

/// kernel.sem ("SEMMSL SEMMNS SEMOPM SEMMNI") with SEMMNI replaced.
fn with_semmni(sem: &str, semmni: u64) -> std::io::Result<String> {
    let fields: Vec<&str> = sem.split_whitespace().collect();
    if fields.len() != 4 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("kernel.sem is {sem:?}, not four numbers"),
        ));
    }
    Ok(format!(
        "{} {} {} {semmni}",
        fields[0], fields[1], fields[2]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semmni_is_the_fourth_field() {
        assert_eq!(
            with_semmni("32000\t1024000000\t500\t32000\n", 64).expect("four"),
            "32000 1024000000 500 64"
        );
        assert!(with_semmni("1 2 3", 4).is_err());
    }

    #[test]
    fn ipc_limits_are_written_as_the_kernel_spells_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("sem"), "32000 1024000000 500 32000\n").expect("sem");
        let r = Rctls {
            shm_bytes: Some(64 << 20),
            shm_ids: Some(100),
            msg_ids: Some(200),
            sem_ids: Some(300),
            ..Rctls::default()
        };
        r.write_ipc(dir.path()).expect("writes");
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).expect(n);
        assert_eq!(read("shmmax"), (64u64 << 20).to_string());
        assert_eq!(read("shmall"), ((64u64 << 20) / 4096).to_string());
        assert_eq!(read("shmmni"), "100");
        assert_eq!(read("msgmni"), "200");
        assert_eq!(read("sem"), "32000 1024000000 500 300");
        assert!(Rctls::default().is_empty() && !r.is_empty());
    }
}
