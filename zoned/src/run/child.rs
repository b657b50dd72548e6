//! The zone's init between clone and exec, run in the child zoned cloned: it waits for
//! zoned's go, enters the zone's root and becomes the zone's root user, populates /dev,
//! hands the console to zoned, pivots, writes the zone's /etc, drops privileges and execs
//! the zone's init. Nothing here returns to zoned's code: a failure is written to the error
//! pipe and the child exits. Also the steps `zoned exec` shares ([`become_zone_root`],
//! [`reset_signals`]).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use hull_sys::{IoError, chain};
use nix::sys::signal::SigSet;

use super::Zone;
use crate::config::ZoneConfig;
use crate::{rootfs, security};

/// Why a zone process failed between clone (or fork) and exec: the zone's init here, a
/// `zoned exec` command in `exec`. The child sends it as text ([`hull_sys::chain`]) to
/// whoever waits for it: zoned through the error pipe, zlogin's stderr.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChildError {
    #[error("zoned went away before the zone started")]
    ZonedGone,
    #[error("cannot become the zone's user")]
    Login(#[source] nix::Error),
    #[error(transparent)]
    Mount(#[from] rootfs::MountError),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error(transparent)]
    File(#[from] IoError),
    #[error("cannot clear groups")]
    ClearGroups(#[source] nix::Error),
    #[error("cannot become the zone's root")]
    BecomeRoot(#[source] nix::Error),
    #[error("cannot hand the console to zoned")]
    SendConsole(#[source] nix::Error),
    #[error("cannot make the pipe for the process's output")]
    OutputPipe(#[source] nix::Error),
    #[error("cannot set the hostname {name:?}")]
    Hostname {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot enter /")]
    EnterRoot(#[source] nix::Error),
    #[error("cannot bring up the zone's loopback")]
    Loopback(#[source] std::io::Error),
    #[error("cannot enter the working directory {0}")]
    Cwd(String, #[source] nix::Error),
    #[error("cannot start a session")]
    Session(#[source] nix::Error),
    #[error("cannot make /dev/console the controlling terminal")]
    ControllingTerminal(#[source] std::io::Error),
    #[error("cannot attach stdio to /dev/console or the output pipe")]
    AttachConsole(#[source] std::io::Error),
    #[error("cannot set up descriptor {fd}")]
    Stdio {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot unshare the cgroup namespace")]
    CgroupNamespace(#[source] nix::Error),
    #[error("cannot unblock signals")]
    UnblockSignals(#[source] nix::Error),
    #[error("cannot pass a TAP to the VMM")]
    PassTap(#[source] std::io::Error),
    #[error("the init command holds a NUL byte")]
    NulInInit,
    #[error("the init command is empty")]
    EmptyInit,
    #[error("{0}: command not found in the zone")]
    NotFound(String),
    #[error("bad command path")]
    BadPath,
    #[error("{0}")]
    User(String),
    #[error("cannot enter the working directory {dir:?}")]
    Workdir {
        dir: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0} is not a capability a zone's process may keep")]
    Capability(String),
    #[error("{0} is not a resource limit")]
    RlimitKind(String),
    #[error("cannot set {kind} to {soft}/{hard}")]
    Rlimit {
        kind: String,
        soft: u64,
        hard: u64,
        #[source]
        source: nix::Error,
    },
    #[error("cannot run {cmd}")]
    Exec {
        cmd: String,
        #[source]
        source: nix::Error,
    },
}

/// The zone's init, between clone and exec: pid 1 of the new namespaces, owner of them all
/// until it drops its privileges.
/// Any failure is written to `err` for zoned to report, and the process exits.
pub(super) fn init_child(
    zone: &Zone,
    go: OwnedFd,
    err: OwnedFd,
    fd_sock: UnixStream,
    taps: &[OwnedFd],
) -> ! {
    let e = match setup_init(zone, go, fd_sock, taps) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let _ = nix::unistd::write(&err, chain(&e).as_bytes());
    // SAFETY: _exit ends this child without running the parent's destructors.
    unsafe { libc::_exit(127) }
}

fn setup_init(
    zone: &Zone,
    go: OwnedFd,
    fd_sock: UnixStream,
    taps: &[OwnedFd],
) -> Result<std::convert::Infallible, ChildError> {
    let cfg = &zone.cfg;
    die_with_zoned();
    let wait_for = |want: u8| {
        let mut b = [0u8; 1];
        match nix::unistd::read(&go, &mut b) {
            Ok(1) if b[0] == want => Ok(()),
            _ => Err(ChildError::ZonedGone),
        }
    };
    wait_for(b'g')?;
    // zoned has written the id map. Enter the root as the host ids we were cloned with,
    // then become the zone's root, with every capability in the zone's user namespace
    // until `drop_privileges`: what is made from here on is the zone's.
    rootfs::enter_root(&zone.rootfs)?;
    become_zone_root()?;
    // The uid change cleared the parent-death signal: set it again. (zoned dying before
    // this shows as EOF on `go` below.)
    die_with_zoned();
    let root = Path::new(".");
    let master = rootfs::populate(root, cfg.is_vmm(), &cfg.masked_paths, &cfg.read_only_paths)?;
    // A docker process without a terminal (Docker's default; `docker:tty` asks for one)
    // writes to a pipe, which zoned reads as it reads a console: no line discipline, no
    // "\r" added, and `isatty` false, as under Docker.
    // Its stdin is /dev/null, or with `open_stdin` a second pipe whose writing end zoned
    // gets after the output's reading end.
    let pipe = match cfg.process.as_ref().filter(|p| !p.tty) {
        Some(p) => {
            let (r, w) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ChildError::OutputPipe)?;
            send_fd(&fd_sock, r.as_raw_fd()).map_err(ChildError::SendConsole)?;
            let stdin = match p.open_stdin {
                true => {
                    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                        .map_err(ChildError::OutputPipe)?;
                    send_fd(&fd_sock, w.as_raw_fd()).map_err(ChildError::SendConsole)?;
                    Some(r)
                }
                false => None,
            };
            Some((w, stdin))
        }
        None => {
            send_fd(&fd_sock, master.as_raw_fd()).map_err(ChildError::SendConsole)?;
            None
        }
    };
    drop(master);
    drop(fd_sock);
    // A zone that joined another's UTS namespace (a pod's container) keeps the name that
    // zone gave it (containerd's CRI names the pod in its sandbox's config only).
    let hostname = match cfg.join {
        Some(_) => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| cfg.hostname.clone()),
        None => {
            nix::unistd::sethostname(&cfg.hostname).map_err(|source| ChildError::Hostname {
                name: cfg.hostname.clone(),
                source,
            })?;
            cfg.hostname.clone()
        }
    };
    rootfs::pivot(root)?;
    // SAFETY: umask has no preconditions; zoned's own is 077.
    unsafe { libc::umask(0o022) };
    write_etc(cfg, &hostname, zone.state.boots <= 1)?;
    if cfg.read_only_root {
        rootfs::remount_read_only(Path::new("/"))?;
    }
    match &pipe {
        Some((w, stdin)) => attach_pipe(w, stdin.as_ref())?,
        None => attach_console()?,
    }
    drop(pipe);
    // In the zone's cgroup from here on (zoned moved us): its namespace is rooted there.
    wait_for(b'c')?;
    drop(go);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(ChildError::CgroupNamespace)?;
    if cfg.cgroup_fs {
        rootfs::mount_cgroups()?;
    }
    // Its loopback up, whether or not it has NICs (a container without a network still
    // has localhost), while it holds CAP_NET_ADMIN over its network namespace.
    loopback_up().map_err(ChildError::Loopback)?;
    reset_signals()?;
    let asked = match cfg.process.as_ref().and_then(|p| p.caps.as_ref()) {
        Some(names) => Some(kept_caps(names)?),
        None => None,
    };
    // The VMM needs no capability: its files and /dev/kvm belong to the zone's root.
    let keep = cfg.kept_caps();
    if let Some(p) = &cfg.process {
        set_rlimits(&p.rlimits)?;
    }
    security::drop_privileges(&keep)?;
    // A process given its own capabilities: the bounding set now, the rest once it has its
    // user's ids (taking them needs CAP_SETUID and CAP_SETGID, which it may not keep).
    if let Some(caps) = &asked {
        security::narrow_caps(caps, true)?;
    }
    let (path, env) = match &cfg.process {
        Some(p) => {
            let setup = process_setup(p, &cfg.init)?;
            if let Some(caps) = &asked {
                security::narrow_caps(caps, false)?;
            }
            setup
        }
        None => (
            cfg.init.first().cloned().unwrap_or_default(),
            [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=vt100",
                "HOME=/",
                "container=hull",
            ]
            .map(str::to_string)
            .to_vec(),
        ),
    };
    security::close_inherited_fds()?;
    pass_fds(taps)?;
    let cstrings = |v: &[String]| -> Result<Vec<CString>, ChildError> {
        v.iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| ChildError::NulInInit)
    };
    let argv = cstrings(&cfg.init)?;
    let env = cstrings(&env)?;
    if argv.is_empty() {
        return Err(ChildError::EmptyInit);
    }
    let path = CString::new(path).map_err(|_| ChildError::NulInInit)?;
    security::apply_filters(&zone.filters)?;
    let source = nix::unistd::execve(&path, &argv, &env).unwrap_err();
    Err(ChildError::Exec {
        cmd: cfg.init[0].clone(),
        source,
    })
}

/// A docker zone's process: takes its user's ids (the kernel drops every capability with
/// uid 0) and its directory, and returns the program's path (argv[0] looked up in its
/// PATH) and its environment (PATH and HOME defaulted when absent, as Docker does).
fn process_setup(
    p: &crate::config::ProcessSpec,
    init: &[String],
) -> Result<(String, Vec<String>), ChildError> {
    use crate::exec::{DEFAULT_PATH, Login, resolve_in};
    let login = match &p.user {
        Some(u) => Some(Login::for_docker(u).map_err(|e| ChildError::User(e.to_string()))?),
        None => None,
    };
    let login = match (login, &p.groups) {
        (Some(mut l), Some(groups)) => {
            l.groups = groups.clone();
            Some(l)
        }
        (None, Some(groups)) => Some(crate::exec::Login {
            name: "root".into(),
            uid: 0,
            gid: 0,
            groups: groups.clone(),
            home: "/root".into(),
            shell: "/bin/sh".into(),
        }),
        (login, None) => login,
    };
    if let Some(l) = &login {
        l.become_user().map_err(ChildError::Login)?;
    }
    let cwd = p.cwd.as_deref().filter(|c| !c.is_empty()).unwrap_or("/");
    nix::unistd::chdir(cwd).map_err(|source| ChildError::Workdir {
        dir: cwd.to_string(),
        source,
    })?;
    let mut env = p.env.clone();
    let has = |env: &[String], k: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(n, _)| n == k))
    };
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        let home = match &login {
            Some(l) => l.home.clone(),
            None => "/root".to_string(),
        };
        env.push(format!("HOME={home}"));
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let cmd = init.first().ok_or(ChildError::EmptyInit)?;
    let path = resolve_in(cmd, &path_var).ok_or_else(|| ChildError::NotFound(cmd.clone()))?;
    Ok((path.to_string_lossy().into_owned(), env))
}

/// The capabilities named (`CAP_KILL`), each within the zone's ceiling.
fn kept_caps(names: &[String]) -> Result<Vec<caps::Capability>, ChildError> {
    names
        .iter()
        .map(|n| {
            n.parse::<caps::Capability>()
                .ok()
                .filter(|c| security::KEPT_CAPS.contains(c))
                .ok_or_else(|| ChildError::Capability(n.clone()))
        })
        .collect()
}

/// Sets the process's resource limits (before it drops its privileges: lowering a hard
/// limit needs none, raising one past zoned's is refused by the kernel and said).
fn set_rlimits(limits: &[crate::config::RlimitSpec]) -> Result<(), ChildError> {
    use nix::sys::resource::{Resource, setrlimit};
    for l in limits {
        let r = match l.kind.as_str() {
            "RLIMIT_AS" => Resource::RLIMIT_AS,
            "RLIMIT_CORE" => Resource::RLIMIT_CORE,
            "RLIMIT_CPU" => Resource::RLIMIT_CPU,
            "RLIMIT_DATA" => Resource::RLIMIT_DATA,
            "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
            "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
            "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
            "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
            "RLIMIT_NICE" => Resource::RLIMIT_NICE,
            "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
            "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
            "RLIMIT_RSS" => Resource::RLIMIT_RSS,
            "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
            "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
            "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
            "RLIMIT_STACK" => Resource::RLIMIT_STACK,
            other => return Err(ChildError::RlimitKind(other.to_string())),
        };
        setrlimit(r, l.soft, l.hard).map_err(|source| ChildError::Rlimit {
            kind: l.kind.clone(),
            soft: l.soft,
            hard: l.hard,
            source,
        })?;
    }
    Ok(())
}

/// Puts `fds` at 3, 4... without close-on-exec (everything else from 3 up closes at exec):
/// first out of the way above them, so that no move overwrites one still to be moved.
fn pass_fds(fds: &[OwnedFd]) -> Result<(), ChildError> {
    let high: Vec<RawFd> = fds
        .iter()
        .map(|fd| {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold returns a new one.
            let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
            match n {
                n if n >= 0 => Ok(n),
                _ => Err(ChildError::PassTap(std::io::Error::last_os_error())),
            }
        })
        .collect::<Result<_, _>>()?;
    for (i, fd) in high.into_iter().enumerate() {
        // SAFETY: dup2 onto a descriptor number this process owns from now on; the copy at
        // `fd` closes at exec.
        if unsafe { libc::dup2(fd, 3 + i as RawFd) } < 0 {
            return Err(ChildError::PassTap(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The zone dies with zoned: SIGKILL when the parent exits. Best effort: the kernel clears
/// the setting at every uid or gid change (set again after them) and at an exec that gains
/// capabilities; vmmd kills what is left of a zone whose zoned died (at once, or when it
/// starts again if it was down too).
fn die_with_zoned() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
}

/// Sets uid, gid and groups to the zone's root (the calling process is in its user
/// namespace, with all capabilities there).
pub(crate) fn become_zone_root() -> Result<(), ChildError> {
    nix::unistd::setgroups(&[]).map_err(ChildError::ClearGroups)?;
    let g = nix::unistd::Gid::from_raw(0);
    let u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(g, g, g).map_err(ChildError::BecomeRoot)?;
    nix::unistd::setresuid(u, u, u).map_err(ChildError::BecomeRoot)
}

/// Unblocks every signal and restores default dispositions (zoned blocks some and Rust
/// ignores SIGPIPE); exec keeps both otherwise.
pub(crate) fn reset_signals() -> Result<(), ChildError> {
    SigSet::empty()
        .thread_set_mask()
        .map_err(ChildError::UnblockSignals)?;
    // SAFETY: restoring the default disposition of SIGPIPE has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    Ok(())
}

fn write_etc(cfg: &ZoneConfig, hostname: &str, first_boot: bool) -> Result<(), ChildError> {
    let etc = Path::new("/etc");
    if !etc.is_dir() {
        return Ok(());
    }
    // A file the zone's config binds in (an OCI bundle's /etc/hosts, say) is that file's.
    let bound = |name: &str| cfg.mounts.iter().any(|m| m.at == etc.join(name));
    let w = |name: &str, text: String| {
        let path = etc.join(name);
        match bound(name) {
            true => Ok(()),
            false => std::fs::write(&path, text).map_err(|e| IoError::new("write", path, e)),
        }
    };
    w("hostname", format!("{hostname}\n"))?;
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if !hosts
        .lines()
        .any(|l| l.split_whitespace().skip(1).any(|n| n == hostname))
    {
        let mut text = hosts;
        if !text.contains("localhost") {
            text.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
        }
        text.push_str(&format!("127.0.1.1\t{hostname}\n"));
        w("hosts", text)?;
    }
    let resolv = crate::config::resolv_conf(&cfg.resolvers, cfg.dns_domain.as_deref());
    if let Some(text) = resolv.filter(|_| first_boot || cfg.maintain_resolvers) {
        w("resolv.conf", text)?;
    }
    Ok(())
}

/// Brings up `lo` in this process's network namespace (SIOCSIFFLAGS on a socket of it).
pub(super) fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a socket we own and close; ifreq is plain data, zeroed then named "lo"; the
    // ioctls read and write only that struct.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if req.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A new session with /dev/console as controlling terminal and stdin, stdout and stderr.
fn attach_console() -> Result<(), ChildError> {
    nix::unistd::setsid().map_err(ChildError::Session)?;
    let con = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(IoError::wrap("open", Path::new("/dev/console")))?;
    // SAFETY: TIOCSCTTY on a terminal we just opened; dup2 onto the standard descriptors.
    unsafe {
        if libc::ioctl(con.as_raw_fd(), libc::TIOCSCTTY, 0) != 0 {
            let e = std::io::Error::last_os_error();
            return Err(ChildError::ControllingTerminal(e));
        }
        for fd in 0..3 {
            if libc::dup2(con.as_raw_fd(), fd) < 0 {
                let e = std::io::Error::last_os_error();
                return Err(ChildError::AttachConsole(e));
            }
        }
    }
    Ok(())
}

/// A new session without a terminal: stdin /dev/null, stdout and stderr the pipe `out`.
fn attach_pipe(out: &OwnedFd, stdin: Option<&OwnedFd>) -> Result<(), ChildError> {
    nix::unistd::setsid().map_err(ChildError::Session)?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .open("/dev/null")
        .map_err(IoError::wrap("open", Path::new("/dev/null")))?;
    let input = stdin.map_or(null.as_raw_fd(), |s| s.as_raw_fd());
    // SAFETY: dup2 of descriptors this process owns onto the standard descriptors.
    unsafe {
        for (from, fd) in [(input, 0), (out.as_raw_fd(), 1), (out.as_raw_fd(), 2)] {
            if libc::dup2(from, fd) < 0 {
                let e = std::io::Error::last_os_error();
                return Err(ChildError::AttachConsole(e));
            }
        }
    }
    Ok(())
}

fn send_fd(sock: &UnixStream, fd: RawFd) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd];
    let iov = [std::io::IoSlice::new(b"c")];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the child writes to zoned's error pipe: each cause once, after the step.
    #[test]
    fn child_errors_read_as_one_line_with_their_cause() {
        let e = ChildError::Exec {
            cmd: "/sbin/init".into(),
            source: nix::Error::ENOENT,
        };
        assert_eq!(
            chain(&e),
            format!("cannot run /sbin/init: {}", nix::Error::ENOENT)
        );
        let os = || std::io::Error::from_raw_os_error(libc::EROFS);
        let e = ChildError::from(IoError::new("write", "/etc/hostname", os()));
        assert_eq!(chain(&e), format!("cannot write /etc/hostname: {}", os()));
        let e = ChildError::Mount(rootfs::MountError {
            action: "mount proc on".into(),
            path: "/proc".into(),
            source: os(),
        });
        assert_eq!(chain(&e), format!("cannot mount proc on /proc: {}", os()));
        assert_eq!(
            chain(&ChildError::ZonedGone),
            ChildError::ZonedGone.to_string()
        );
    }
}
