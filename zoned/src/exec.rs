//! `zoned exec DIR [-t] -- CMD...`: runs one command in a running zone (zlogin). The process
//! joins the zone's cgroup and namespaces through a pidfd of the zone's init (checked against
//! its recorded start time, so a recycled pid is never joined), and forks the command, which
//! becomes the zone's root under the zone's capability set and seccomp filters and gets no
//! host descriptor but stdin, stdout and stderr. With `-t` the command gets a pty from the
//! zone's own devpts and this process relays the caller's terminal to it.
//!
//! This process is marked non-dumpable before it joins anything: nothing in the zone can
//! open its /proc/PID/exe or memory (the runc CVE-2019-5736 class), and the command runs from
//! the zone's own files, never from this host binary.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::wait::{WaitStatus, waitpid};

use crate::cgroup::{Cgroup, Layout};
use crate::config::{Phase, ZoneConfig, ZoneState, files, read_json, same_process};
use crate::run::{RunError, become_zone_root, reset_signals};
use crate::security;

/// The shell `zoned exec` runs when no command is given.
pub const SHELL: &[&str] = &["/bin/sh", "-l"];

fn fail(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RunError {
    let what = what.into();
    move |e| RunError::Sys {
        what,
        source: e.into(),
    }
}

/// Runs `argv` in the zone of `dir`; returns its exit status (128 + signal if killed).
pub fn exec(dir: &Path, argv: &[String], tty: bool) -> Result<i32, RunError> {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let cfg: ZoneConfig = read_json(&dir.join(files::CONFIG))?;
    let state: ZoneState = read_json(&dir.join(files::STATE))?;
    if cfg.is_vmm() {
        // The VMM's zone holds one process and no shell; a way in would only widen the hull.
        return Err(RunError::Init(format!(
            "{} is a microVM: its zone holds only its VMM; use vmadm console",
            cfg.uuid
        )));
    }
    let not_running = || RunError::Init(format!("zone {} is not running", cfg.uuid));
    let (Phase::Running, Some(pid), Some(start)) = (state.phase, state.init_pid, state.init_start)
    else {
        return Err(not_running());
    };
    let pidfd = crate::config::pidfd(pid).map_err(|_| not_running())?;
    // Checked after opening: the pidfd now pins this very process.
    if !same_process(pid, start) {
        return Err(not_running());
    }
    let layout = Layout::detect()?;
    Cgroup::open(&layout, &cfg.cgroup)?.add_pid(std::process::id() as i32)?;
    let filters = security::filters()?;
    let argv = if argv.is_empty() {
        SHELL.iter().map(|s| s.to_string()).collect()
    } else {
        argv.to_vec()
    };
    let c_argv: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| RunError::Init("an argument holds a NUL byte".into()))?;
    let flags = nix::sched::CloneFlags::CLONE_NEWUSER
        | nix::sched::CloneFlags::CLONE_NEWNS
        | nix::sched::CloneFlags::CLONE_NEWPID
        | nix::sched::CloneFlags::CLONE_NEWUTS
        | nix::sched::CloneFlags::CLONE_NEWIPC
        | nix::sched::CloneFlags::CLONE_NEWNET
        | nix::sched::CloneFlags::CLONE_NEWCGROUP;
    nix::sched::setns(&pidfd, flags).map_err(fail("enter the zone's namespaces"))?;
    drop(pidfd);
    let pty = if tty { Some(open_pty()?) } else { None };
    // SAFETY: this process is single-threaded; the child only sets itself up and execs.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(RunError::Sys {
            what: "fork the command".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    if child == 0 {
        let e = child_exec(&c_argv, &argv[0], pty.as_ref().map(|p| &p.1), &filters);
        eprintln!("zlogin: {e}");
        // SAFETY: _exit ends the child without the parent's destructors.
        unsafe { libc::_exit(127) };
    }
    let child = nix::unistd::Pid::from_raw(child);
    if let Some((master, peer)) = pty {
        drop(peer);
        relay(&master);
    } else {
        // Terminal signals reach the command directly (same process group).
        // SAFETY: ignoring SIGINT and SIGQUIT in this waiting parent has no preconditions.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        }
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(fail("wait for the command")(e)),
        }
    }
}

/// A pty from the zone's devpts (this process is in the zone's mount namespace): master and
/// slave.
fn open_pty() -> Result<(OwnedFd, OwnedFd), RunError> {
    use std::os::unix::fs::OpenOptionsExt;
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")
        .map_err(|source| RunError::Sys {
            what: "open the zone's /dev/ptmx".into(),
            source,
        })?;
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK with a pointer to a live integer, then TIOCGPTPEER, on our master.
    let peer = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) != 0 {
            -1
        } else {
            libc::ioctl(
                master.as_raw_fd(),
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY,
            )
        }
    };
    if peer < 0 {
        return Err(RunError::Sys {
            what: "open a pty in the zone".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // Copy the caller's window size.
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a pointer to a live winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
    // SAFETY: a fresh descriptor from the kernel.
    Ok((OwnedFd::from(master), unsafe { OwnedFd::from_raw_fd(peer) }))
}

fn child_exec(
    argv: &[CString],
    cmd: &str,
    tty: Option<&OwnedFd>,
    filters: &security::Filters,
) -> String {
    let r = (|| -> Result<std::convert::Infallible, String> {
        become_zone_root()?;
        // SAFETY: umask has no preconditions.
        unsafe { libc::umask(0o022) };
        nix::unistd::chdir("/").map_err(|e| format!("cannot enter /: {e}"))?;
        if let Some(slave) = tty {
            nix::unistd::setsid().map_err(|e| format!("cannot start a session: {e}"))?;
            // SAFETY: TIOCSCTTY and dup2 on the pty slave we hold.
            unsafe {
                libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0);
                for fd in 0..3 {
                    libc::dup2(slave.as_raw_fd(), fd);
                }
            }
        }
        reset_signals()?;
        security::drop_privileges(security::KEPT_CAPS).map_err(|e| e.to_string())?;
        security::close_inherited_fds().map_err(|e| e.to_string())?;
        let path = resolve(cmd).ok_or_else(|| format!("{cmd}: command not found in the zone"))?;
        let path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| "bad command path".to_string())?;
        let env = [
            c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            c"HOME=/root",
            c"TERM=xterm",
            c"LOGNAME=root",
            c"USER=root",
        ];
        security::apply_filters(filters).map_err(|e| e.to_string())?;
        let e = nix::unistd::execve(&path, argv, &env).unwrap_err();
        Err(format!("cannot run {cmd}: {e}"))
    })();
    match r {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// A command name looked up in the zone's PATH (the process is in the zone's root).
fn resolve(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        return Some(PathBuf::from(cmd));
    }
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(cmd))
    .find(|p| p.is_file())
}

/// Copies the caller's terminal to the pty master and back until the command closes it,
/// with the caller's terminal in raw mode meanwhile.
fn relay(master: &OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::termios;
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(stdin.as_fd()).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
    }
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (m, i) = (ready(0), ready(1));
        if m {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = nix::unistd::write(std::io::stdout(), &buf[..n]);
                }
            }
        }
        if i {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let _ = nix::unistd::write(master, &buf[..n]);
                }
            }
        }
    }
    if let Some(t) = &saved {
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, t);
    }
}
