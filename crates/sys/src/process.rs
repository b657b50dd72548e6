//! Naming a process so that a reused pid is not mistaken for it (pid plus start time), and
//! its pidfd. Reads /proc; never signals, waits for or judges a process.

use std::os::fd::{FromRawFd, OwnedFd};

/// A process's start time in clock ticks after boot (field 22 of /proc/PID/stat), or None if
/// it does not exist.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start` (see [`start_time`]).
pub fn same_process(pid: i32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// A pidfd of `pid` (readable once the process has exited).
pub fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open with a pid and no flags.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from the kernel, owned by the caller from now on.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn start_time_names_this_process_and_not_a_missing_one() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(same_process(me, t));
        assert!(!same_process(me, t + 1));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn pidfd_opens_for_a_live_process_only() {
        assert!(pidfd(std::process::id() as i32).is_ok());
        assert!(pidfd(i32::MAX).is_err());
    }
}
