//! Naming a process so that a reused pid is not mistaken for it (pid plus start time), and
//! its pidfd. Reads /proc; never signals, waits for or judges a process.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

/// A copy of descriptor `fd` of the process behind `pidfd` (pidfd_getfd(2), Linux 5.6),
/// close-on-exec. The caller needs ptrace access to that process (root does).
pub fn getfd(pidfd: &impl AsRawFd, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd with a pidfd we hold, a descriptor number and no flags.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
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

    #[test]
    fn getfd_copies_a_descriptor_of_a_process() {
        use std::io::{Read, Write};
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = pidfd(std::process::id() as i32).unwrap();
        let copy = getfd(&me, b.as_raw_fd()).unwrap();
        drop(b);
        let mut copy = std::os::unix::net::UnixStream::from(copy);
        a.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        copy.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        assert!(getfd(&me, 999_999).is_err());
    }
}
