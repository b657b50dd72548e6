//! Raw mode for a terminal on the VMM's stdin while the guest owns the console: the guest runs
//! its own line discipline (echo, line editing, Ctrl-C), so the host's must step aside, or the
//! guest would see whole lines, twice echoed, and Ctrl-C would kill the VMM instead of reaching
//! the guest. Output processing stays on, so the VMM's own `\n`-terminated messages still start
//! at column 0. The saved settings come back when the guard drops, on every exit path that
//! returns through `vm::run` (guest reset or power-off, stop on request or signal, errors).
//!
//! Uses `TCGETS`/`TCSETS` directly rather than tcgetattr/tcsetattr, so the restore at exit is
//! exactly one `ioctl(fd, TCSETS)`, which is what the main thread's seccomp filter allows.

use std::os::fd::RawFd;

/// The kernel's `struct termios` (asm-generic/termbits.h, x86): glibc's `struct termios`
/// (libc::termios) is longer (c_cc[32] and speed fields), so the ioctls get this one.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelTermios {
    pub c_iflag: libc::tcflag_t,
    pub c_oflag: libc::tcflag_t,
    pub c_cflag: libc::tcflag_t,
    pub c_lflag: libc::tcflag_t,
    pub c_line: libc::cc_t,
    pub c_cc: [libc::cc_t; 19],
}

/// Reads the settings of terminal `fd`.
pub fn get(fd: RawFd) -> std::io::Result<KernelTermios> {
    let mut t = KernelTermios::default();
    // SAFETY: TCGETS writes one kernel termios into `t`, which has exactly that layout.
    if unsafe { libc::ioctl(fd, libc::TCGETS, &mut t as *mut KernelTermios) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(t)
}

/// Applies `t` to terminal `fd` at once (TCSANOW).
pub fn set(fd: RawFd, t: &KernelTermios) -> std::io::Result<()> {
    // SAFETY: TCSETS reads one kernel termios from `t`, which has exactly that layout.
    if unsafe { libc::ioctl(fd, libc::TCSETS, t as *const KernelTermios) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// cfmakeraw(3) without its output part: no input translation, no echo, no canonical mode, no
/// signals from control characters, 8-bit characters, reads return after one byte.
pub fn make_raw(t: &mut KernelTermios) {
    t.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON);
    t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    t.c_cflag &= !(libc::CSIZE | libc::PARENB);
    t.c_cflag |= libc::CS8;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
}

/// A terminal in raw mode; its saved settings are restored on drop.
#[derive(Debug)]
pub struct RawTerminal {
    fd: RawFd,
    saved: KernelTermios,
}

impl RawTerminal {
    /// Puts `fd` in raw mode when it is a terminal; `None` (and nothing changed) otherwise.
    pub fn enter(fd: RawFd) -> std::io::Result<Option<Self>> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        let saved = get(fd)?;
        let mut raw = saved;
        make_raw(&mut raw);
        set(fd, &raw)?;
        Ok(Some(RawTerminal { fd, saved }))
    }

    /// The fd whose settings this guard restores (the seccomp filter names it).
    pub fn fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // Nothing better to do if the terminal went away meanwhile.
        let _ = set(self.fd, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn pty() -> (OwnedFd, OwnedFd) {
        let (mut m, mut s) = (-1, -1);
        // SAFETY: openpty writes two new fds into the locals; name, termios and winsize are
        // optional and null.
        let r = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds are new and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
    }

    #[test]
    fn a_pty_goes_raw_and_comes_back() {
        let (_master, slave) = pty();
        let fd = slave.as_raw_fd();
        let before = get(fd).unwrap();
        assert_ne!(before.c_lflag & libc::ICANON, 0, "a new pty is canonical");
        let guard = RawTerminal::enter(fd)
            .unwrap()
            .expect("a pty is a terminal");
        let raw = get(fd).unwrap();
        assert_eq!(
            raw.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN),
            0
        );
        assert_eq!(raw.c_iflag & (libc::ICRNL | libc::IXON), 0);
        assert_eq!(raw.c_cflag & libc::CSIZE, libc::CS8);
        assert_eq!(raw.c_cc[libc::VMIN], 1);
        // Output processing stays, so host messages keep their line starts.
        assert_eq!(raw.c_oflag, before.c_oflag);
        drop(guard);
        assert_eq!(get(fd).unwrap(), before);
    }

    #[test]
    fn a_pipe_is_left_alone() {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two new fds into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are new and owned by nobody else.
        let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        assert!(RawTerminal::enter(r.as_raw_fd()).unwrap().is_none());
    }
}
