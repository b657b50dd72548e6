//! `zoned exec DIR [-t] -- CMD...`: runs one command in a running zone (zlogin). The process
//! joins the zone's cgroup and namespaces through a pidfd of the zone's init (checked against
//! its recorded start time, so a recycled pid is never joined), and forks the command, which
//! becomes the zone's root under the zone's capability set and seccomp filters and gets no
//! host descriptor at all: with `-t` a pty from the zone's own devpts, otherwise three pipes,
//! and this process relays the caller's terminal or stdio to them. The caller's own
//! descriptors never reach the zone (a host file, directory or socket there could be
//! reopened through /proc/self/fd, or walked with openat).
//!
//! This process is marked non-dumpable before it joins anything: nothing in the zone can
//! open its /proc/PID/exe or memory (the runc CVE-2019-5736 class), and the command runs from
//! the zone's own files, never from this host binary.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use hull_sys::process::same_process;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cgroup::{Cgroup, Layout};
use crate::config::{Phase, ZoneConfig, ZoneState, files, read_json};
use crate::run::{ChildError, RunError, become_zone_root, reset_signals};
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

/// How `zoned exec` runs its command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// A pty of the zone's own devpts rather than three pipes.
    pub tty: bool,
    /// `-u`: a user of the zone's /etc/passwd by name, or `UID[:GID]` / `NAME:GROUP` as an
    /// OCI process or Docker's USER names one (ids within the zone's range).
    pub user: Option<String>,
    /// `-e NAME=VALUE`: variables set over the login environment (PATH, HOME, TERM...).
    pub env: Vec<String>,
    /// `-w DIR`: the working directory in the zone (the user's home by default); one that
    /// does not exist is an error, as runc's.
    pub cwd: Option<String>,
}

impl ExecOptions {
    /// Parses the options before `--` or the command; returns them and the command.
    pub fn parse(mut rest: &[String]) -> Result<(ExecOptions, &[String]), String> {
        let mut o = ExecOptions::default();
        while let Some(a) = rest.first() {
            let value = || {
                rest.get(1)
                    .cloned()
                    .ok_or_else(|| format!("zoned exec: {a} takes a value"))
            };
            match a.as_str() {
                "-t" => o.tty = true,
                "-u" => o.user = Some(value()?),
                "-e" => {
                    let v = value()?;
                    match v.split_once('=') {
                        Some((k, _)) if !k.is_empty() && !k.contains('\0') => o.env.push(v),
                        _ => return Err(format!("zoned exec: -e {v:?} is not NAME=VALUE")),
                    }
                }
                "-w" => {
                    let v = value()?;
                    if !v.starts_with('/') {
                        return Err(format!("zoned exec: -w {v:?} is not an absolute path"));
                    }
                    o.cwd = Some(v);
                }
                "--" => return Ok((o, &rest[1..])),
                _ => return Ok((o, rest)),
            }
            rest = &rest[if matches!(a.as_str(), "-t") { 1 } else { 2 }..];
        }
        Ok((o, rest))
    }
}

/// Runs `argv` in the zone of `dir`; returns its exit status (128 + signal if killed).
pub fn exec(dir: &Path, argv: &[String], opts: &ExecOptions) -> Result<i32, RunError> {
    let (tty, user) = (opts.tty, opts.user.as_deref());
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // 0, 1 and 2 are open from here on (a caller may have closed one), so that no pipe made
    // below takes one of those numbers and dup2 in the child cannot clobber it.
    for fd in 0..3 {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|source| RunError::Sys {
                    what: "open /dev/null for a closed standard descriptor".into(),
                    source,
                })?;
            // Opened at the lowest free number, which is this one: keep it open.
            let _ = null.into_raw_fd();
        }
    }
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
    let pidfd = hull_sys::process::pidfd(pid).map_err(|_| not_running())?;
    // Checked after opening: the pidfd now pins this very process.
    if !same_process(pid, start) {
        return Err(not_running());
    }
    // What zlogin runs has the zone's locked-memory limit, as init's children do.
    cfg.rctls
        .limit_locked_memory()
        .map_err(|source| RunError::Sys {
            what: "set the zone's locked-memory limit".into(),
            source,
        })?;
    let layout = Layout::detect()?;
    // Joined before the fork so that the command is born in the zone's cgroup (on v1 a
    // process inherits its parent's). The relay stays there: a zone that stops kills it
    // with the command, which is also what lets the zone's cgroup be removed.
    Cgroup::open(&layout, &cfg.cgroup)?.add_pid(std::process::id() as i32)?;
    let filters = security::filters()?;
    let c_argv_for = |argv: &[String]| {
        argv.iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| RunError::Init("an argument holds a NUL byte".into()))
    };
    // Checked here, before anything of the zone's is touched: a bad argument is refused
    // with nothing made.
    c_argv_for(argv)?;
    let flags = nix::sched::CloneFlags::CLONE_NEWUSER
        | nix::sched::CloneFlags::CLONE_NEWNS
        | nix::sched::CloneFlags::CLONE_NEWPID
        | nix::sched::CloneFlags::CLONE_NEWUTS
        | nix::sched::CloneFlags::CLONE_NEWIPC
        | nix::sched::CloneFlags::CLONE_NEWNET
        | nix::sched::CloneFlags::CLONE_NEWCGROUP;
    nix::sched::setns(&pidfd, flags).map_err(fail("enter the zone's namespaces"))?;
    drop(pidfd);
    // In the zone's mount namespace from here on: its /etc/passwd names the user (`-l`).
    let login = match user {
        // `UID[:GID]` or `NAME:GROUP`, as an OCI process (containerd's exec) names its user.
        Some(spec) if spec.contains(':') || spec.parse::<u32>().is_ok() => {
            Some(Login::for_docker(spec)?)
        }
        Some(name) => Some(Login::find(name)?),
        None => None,
    };
    let argv: Vec<String> = match (argv.is_empty(), &login) {
        (false, _) => argv.to_vec(),
        (true, Some(l)) => vec![l.shell.clone(), "-l".into()],
        (true, None) => SHELL.iter().map(|s| s.to_string()).collect(),
    };
    let c_argv = c_argv_for(&argv)?;
    // Signals for the command are taken as events (signalfd) and sent on to it; the child
    // unblocks them before it execs. The signalfd is made before the fork so that no error
    // can leave a command running that nobody relays or waits for; they are blocked before the
    // pty takes the caller's window size, so that a resize from then on is not lost.
    let mut handled = nix::sys::signal::SigSet::empty();
    for sig in FORWARDED.iter().chain(&[Signal::SIGCHLD, Signal::SIGWINCH]) {
        handled.add(*sig);
    }
    handled
        .thread_block()
        .map_err(fail("block the signals zlogin forwards"))?;
    // The command never holds one of the caller's descriptors: with -t it gets a pty from
    // the zone's devpts, otherwise pipes this process owns and relays. A host file, directory
    // or socket as the caller's stdio would otherwise be reachable from the zone through
    // /proc/self/fd (reopened, truncated, or walked with openat).
    let stdio = if tty {
        Stdio::Pty(open_pty()?)
    } else {
        Stdio::Pipes(Pipes::new()?)
    };
    let signals = SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(fail("make a signalfd"))?;
    // SAFETY: this process is single-threaded; the child only sets itself up and execs.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(RunError::Sys {
            what: "fork the command".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    if child == 0 {
        let keep = cfg.kept_caps();
        let e = child_exec(
            &c_argv,
            &argv[0],
            &stdio,
            &filters,
            &keep,
            login.as_ref(),
            opts,
        );
        eprintln!("zlogin: {}", hull_sys::chain(&e));
        // SAFETY: _exit ends the child without the parent's destructors.
        unsafe { libc::_exit(127) };
    }
    let child = Pid::from_raw(child);
    let relay = match stdio {
        Stdio::Pty((master, peer)) => {
            drop(peer);
            Relay::pty(master)
        }
        Stdio::Pipes(Pipes {
            child: theirs,
            ours,
        }) => {
            drop(theirs);
            Ok(Relay::pipes(ours))
        }
    };
    // The caller's terminal is raw while the command has the pty: its keys (^C, ^Z) are
    // bytes for the pty's line discipline, which signals the zone's foreground job.
    let raw = tty.then(RawMode::enter);
    let status = match relay {
        Ok(relay) => relay.run(&signals, child),
        Err(e) => {
            // Nothing could relay its terminal: the command is ended rather than left
            // waiting on a pty nobody reads.
            eprintln!("zlogin: {}", hull_sys::chain(&e));
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            None
        }
    };
    drop(raw);
    if let Some(code) = status {
        return Ok(code);
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

/// A zone user `zlogin -l` runs as, from the zone's own /etc/passwd and /etc/group (the
/// guest's files: parsed as untrusted text, ids bounded to the zone's range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
    pub shell: String,
}

/// The most bytes of /etc/passwd or /etc/group read.
const ACCOUNTS_MAX: u64 = 4 << 20;

fn read_accounts(path: &str) -> Result<String, RunError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|source| RunError::Sys {
        what: format!("read the zone's {path}"),
        source,
    })?;
    let mut text = String::new();
    f.take(ACCOUNTS_MAX)
        .read_to_string(&mut text)
        .map_err(|source| RunError::Sys {
            what: format!("read the zone's {path}"),
            source,
        })?;
    Ok(text)
}

impl Login {
    /// The user a docker zone's process runs as, from Docker's USER (`user`, `uid`,
    /// `user:group`, `uid:gid`): names from the zone's /etc/passwd and /etc/group; a uid
    /// /etc/passwd lacks runs with gid 0 and home /, as Docker does.
    pub(crate) fn for_docker(spec: &str) -> Result<Login, RunError> {
        let passwd = read_accounts("/etc/passwd").unwrap_or_default();
        let group = read_accounts("/etc/group").unwrap_or_default();
        Login::parse_docker(spec, &passwd, &group)
    }

    fn parse_docker(spec: &str, passwd: &str, group: &str) -> Result<Login, RunError> {
        let bad = |why: String| RunError::Init(format!("docker:user {spec:?}: {why}"));
        let (user, grp) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let id = |s: &str| s.parse::<u32>().ok();
        let in_range = |n: u32, what: &str| {
            (n < crate::config::ID_RANGE)
                .then_some(n)
                .ok_or_else(|| bad(format!("{what} {n} is not an id of the zone")))
        };
        let mut login = match id(user) {
            Some(uid) => {
                let uid = in_range(uid, "uid")?;
                let line = passwd
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() == 7 && f[2].parse::<u32>().ok() == Some(uid));
                match line {
                    Some(f) => Login::parse(f[0], passwd, group).map_err(|e| bad(e.to_string()))?,
                    None => Login {
                        name: uid.to_string(),
                        uid,
                        gid: 0,
                        groups: vec![0],
                        home: "/".to_string(),
                        shell: SHELL[0].to_string(),
                    },
                }
            }
            None => Login::parse(user, passwd, group).map_err(|e| bad(e.to_string()))?,
        };
        if let Some(g) = grp {
            let gid = match id(g) {
                Some(n) => in_range(n, "gid")?,
                None => group
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() == 4 && f[0] == g)
                    .and_then(|f| f[2].parse::<u32>().ok())
                    .filter(|n| *n < crate::config::ID_RANGE)
                    .ok_or_else(|| bad(format!("no group {g:?} in the zone's /etc/group")))?,
            };
            login.gid = gid;
            login.groups = vec![gid];
        }
        Ok(login)
    }

    /// Looks `name` up in the zone's /etc/passwd and its groups in /etc/group.
    fn find(name: &str) -> Result<Login, RunError> {
        let passwd = read_accounts("/etc/passwd")?;
        let group = read_accounts("/etc/group").unwrap_or_default();
        Login::parse(name, &passwd, &group)
    }

    fn parse(name: &str, passwd: &str, group: &str) -> Result<Login, RunError> {
        let bad = |why: String| RunError::Init(format!("zlogin -l {name}: {why}"));
        if name.is_empty() || name.contains(':') || name.contains('\n') {
            return Err(bad("not a user name".into()));
        }
        let fields: Vec<&str> = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() == 7 && f[0] == name)
            .ok_or_else(|| bad("no such user in the zone's /etc/passwd".into()))?;
        let id = |s: &str, what: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n < crate::config::ID_RANGE)
                .ok_or_else(|| bad(format!("its {what} {s:?} is not an id of the zone")))
        };
        let (uid, gid) = (id(fields[2], "uid")?, id(fields[3], "gid")?);
        let mut groups = vec![gid];
        for g in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if g.len() == 4
                && g[3].split(',').any(|m| m == name)
                && let Ok(n) = id(g[2], "group id")
                && !groups.contains(&n)
            {
                groups.push(n);
            }
        }
        let home = match fields[5] {
            h if h.starts_with('/') => h.to_string(),
            _ => "/".to_string(),
        };
        let shell = match fields[6] {
            s if s.starts_with('/') => s.to_string(),
            _ => SHELL[0].to_string(),
        };
        Ok(Login {
            name: name.to_string(),
            uid,
            gid,
            groups,
            home,
            shell,
        })
    }

    /// Takes the user's groups, gid and uid (in that order: the last drops the power to).
    pub(crate) fn become_user(&self) -> nix::Result<()> {
        use nix::unistd::{Gid, Uid};
        let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups)?;
        let gid = Gid::from_raw(self.gid);
        nix::unistd::setresgid(gid, gid, gid)?;
        let uid = Uid::from_raw(self.uid);
        nix::unistd::setresuid(uid, uid, uid)
    }
}

/// Signals sent to zlogin that the command's process group gets, as a terminal would send
/// them.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// What the command gets as stdin, stdout and stderr.
enum Stdio {
    /// A pty of the zone's devpts: master (relayed here) and slave (the command's).
    Pty((OwnedFd, OwnedFd)),
    /// Three pipes.
    Pipes(Pipes),
}

/// The pipes between this process and the command. Every end is close-on-exec: the child
/// dup2s its ends onto 0, 1 and 2 (which clears the flag on those copies only).
struct Pipes {
    /// The command's ends: stdin (read), stdout and stderr (write).
    child: [OwnedFd; 3],
    /// This process's ends: stdin (write), stdout and stderr (read).
    ours: [OwnedFd; 3],
}

impl Pipes {
    fn new() -> Result<Pipes, RunError> {
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(fail("make a pipe"));
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        Ok(Pipes {
            child: [in_r, out_w, err_w],
            ours: [in_w, out_r, err_r],
        })
    }
}

/// How long the relay goes on draining output after the command has exited: until its
/// descriptors are quiet this long...
const QUIET: Duration = Duration::from_millis(100);
/// ...or this long at most. What the command wrote before it exited is in the pipe or pty
/// buffer already; a background process of its that keeps writing is not waited for.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Copies between the caller's stdio and the command's pipes or pty, forwards signals, and
/// notices the command's exit.
struct Relay {
    /// What the command writes, and the caller's descriptor (1 or 2) it goes to; `None`
    /// once it ended (EOF, or the caller stopped taking it).
    outputs: Vec<Option<(OwnedFd, i32)>>,
    /// Where the caller's stdin goes (non-blocking, so that a command that does not read
    /// cannot stop its output from being relayed).
    input: Option<OwnedFd>,
    /// The pty master with -t: signals go to its foreground process group, and the
    /// caller's window size follows SIGWINCH. Its input stays open at the caller's EOF.
    pty: Option<OwnedFd>,
}

impl Relay {
    fn pipes([to_stdin, from_stdout, from_stderr]: [OwnedFd; 3]) -> Relay {
        let _ = nix::fcntl::fcntl(&to_stdin, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        Relay {
            outputs: vec![Some((from_stdout, 1)), Some((from_stderr, 2))],
            input: Some(to_stdin),
            pty: None,
        }
    }

    fn pty(master: OwnedFd) -> Result<Relay, RunError> {
        let dup = |what: &str| {
            master.try_clone().map_err(|source| RunError::Sys {
                what: what.into(),
                source,
            })
        };
        let (output, input) = (dup("copy the pty master")?, dup("copy the pty master")?);
        // One open file: the flag holds for every copy.
        let _ = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        Ok(Relay {
            outputs: vec![Some((output, 1))],
            input: Some(input),
            pty: Some(master),
        })
    }

    /// Relays until the command has exited and its output is drained; returns its exit
    /// status (`None` if it could not be collected here).
    fn run(mut self, signals: &SignalFd, child: Pid) -> Option<i32> {
        // SAFETY: ignoring SIGPIPE has no preconditions: a caller that closed its end of
        // stdout ends that stream (the command then gets EPIPE), not zlogin.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let caller_stdin = std::io::stdin();
        let mut stdin_open = true;
        let mut pending: Vec<u8> = Vec::new();
        let mut status: Option<i32> = None;
        let mut exited_at: Option<Instant> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Until the command has exited, signals are still forwarded even when it has
            // closed its output.
            let timeout = match exited_at {
                None => PollTimeout::NONE,
                Some(_) if self.outputs.iter().all(Option::is_none) => break,
                Some(t) => match DRAIN_LIMIT.checked_sub(t.elapsed()) {
                    Some(left) => {
                        PollTimeout::try_from(left.min(QUIET)).unwrap_or(PollTimeout::ZERO)
                    }
                    None => break,
                },
            };
            let mut fds = Vec::with_capacity(5);
            let mut slots = Vec::with_capacity(5);
            fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Signals);
            for (i, o) in self.outputs.iter().enumerate() {
                if let Some((fd, _)) = o {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    slots.push(Slot::Output(i));
                }
            }
            if let Some(w) = &self.input {
                if !pending.is_empty() {
                    fds.push(PollFd::new(w.as_fd(), PollFlags::POLLOUT));
                    slots.push(Slot::InputWrite);
                } else if stdin_open {
                    fds.push(PollFd::new(caller_stdin.as_fd(), PollFlags::POLLIN));
                    slots.push(Slot::StdinRead);
                }
            }
            match poll(&mut fds, timeout) {
                // Quiet since the command exited: what is left belongs to its background
                // processes.
                Ok(0) => break,
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(_) => break,
            }
            let ready: Vec<Slot> = fds
                .iter()
                .zip(&slots)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, s)| *s)
                .collect();
            for slot in ready {
                match slot {
                    Slot::Signals => {
                        while let Ok(Some(info)) = signals.read_signal() {
                            match Signal::try_from(info.ssi_signo as i32) {
                                Ok(Signal::SIGCHLD) if status.is_none() => {
                                    status = reaped(child);
                                    if status.is_some() {
                                        exited_at = Some(Instant::now());
                                    }
                                }
                                Ok(Signal::SIGWINCH) => {
                                    if let Some(m) = &self.pty {
                                        copy_window_size(m);
                                    }
                                }
                                // Not after the exit: the group may be gone and its
                                // number reused.
                                Ok(sig) if status.is_none() => self.forward(sig, child),
                                _ => {}
                            }
                        }
                    }
                    Slot::Output(i) => {
                        let Some((fd, to)) = &self.outputs[i] else {
                            continue;
                        };
                        let done = match nix::unistd::read(fd, &mut buf) {
                            Ok(0) => true,
                            Ok(n) => write_all(*to, &buf[..n]).is_err(),
                            Err(nix::Error::EINTR | nix::Error::EAGAIN) => false,
                            // EIO: the pty's last slave closed.
                            Err(_) => true,
                        };
                        if done {
                            // Closing our end gives the command EPIPE, as a pipeline would.
                            self.outputs[i] = None;
                        }
                    }
                    Slot::StdinRead => match nix::unistd::read(caller_stdin.as_fd(), &mut buf) {
                        Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                        Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                        // EOF, or a stdin that cannot be read (a directory): the command's
                        // stdin pipe ends (a pty stays open for its output).
                        _ => {
                            stdin_open = false;
                            if pending.is_empty() && self.pty.is_none() {
                                self.input = None;
                            }
                        }
                    },
                    Slot::InputWrite => {
                        let Some(w) = &self.input else { continue };
                        match nix::unistd::write(w, &pending) {
                            Ok(n) => {
                                pending.drain(..n);
                            }
                            Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                            // The command closed its stdin: what is left is dropped.
                            Err(_) => {
                                pending.clear();
                                stdin_open = false;
                                self.input = None;
                            }
                        }
                        if pending.is_empty() && !stdin_open && self.pty.is_none() {
                            self.input = None;
                        }
                    }
                }
            }
        }
        status
    }

    /// Sends `sig` on as a terminal would: to the foreground process group of the pty, or
    /// to the command's own (it leads a session of its own), or to the command itself if
    /// it has not made its group yet. A pty without a foreground group answers 0, and
    /// killpg(0) would signal this process's own group: the command's is used then.
    fn forward(&self, sig: Signal, child: Pid) {
        let group = self
            .pty
            .as_ref()
            .and_then(|m| nix::unistd::tcgetpgrp(m).ok())
            .filter(|g| g.as_raw() > 0)
            .unwrap_or(child);
        if nix::sys::signal::killpg(group, sig).is_err() {
            let _ = nix::sys::signal::kill(child, sig);
        }
    }
}

/// The command's exit status once it has exited (128 + signal if killed).
fn reaped(child: Pid) -> Option<i32> {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Some(128 + sig as i32),
            Err(nix::Error::EINTR) => continue,
            // Still running (SIGCHLD also comes when it stops or continues).
            _ => return None,
        }
    }
}

/// What one polled descriptor is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Signals,
    Output(usize),
    StdinRead,
    InputWrite,
}

/// Writes all of `bytes` to the caller's descriptor `fd` (1 or 2), waiting for room if the
/// caller made it non-blocking.
fn write_all(fd: i32, mut bytes: &[u8]) -> Result<(), nix::Error> {
    // SAFETY: 1 and 2 are open for the life of this process (exec makes sure of it).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => {
                let _ = poll(
                    &mut [PollFd::new(fd, PollFlags::POLLOUT)],
                    PollTimeout::NONE,
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The caller's terminal in raw mode until dropped, when it gets its settings back.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
        }
        RawMode(saved)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let stdin = std::io::stdin();
            let _ =
                nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, t);
        }
    }
}

/// Gives the pty the caller's window size (the kernel then sends SIGWINCH to its
/// foreground job).
fn copy_window_size(master: &OwnedFd) {
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a pointer to a live winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
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
    let master = OwnedFd::from(master);
    copy_window_size(&master);
    // SAFETY: a fresh descriptor from the kernel.
    Ok((master, unsafe { OwnedFd::from_raw_fd(peer) }))
}

fn child_exec(
    argv: &[CString],
    cmd: &str,
    stdio: &Stdio,
    filters: &security::Filters,
    keep: &[caps::Capability],
    login: Option<&Login>,
    opts: &ExecOptions,
) -> ChildError {
    let r = (|| -> Result<std::convert::Infallible, ChildError> {
        become_zone_root()?;
        // SAFETY: umask has no preconditions.
        unsafe { libc::umask(0o022) };
        nix::unistd::chdir("/").map_err(ChildError::EnterRoot)?;
        // A session of its own: without -t it has no controlling terminal (the caller's
        // would be one more host object it could open as /dev/tty).
        nix::unistd::setsid().map_err(ChildError::Session)?;
        let targets: [i32; 3] = match stdio {
            Stdio::Pty((_, slave)) => {
                // SAFETY: TIOCSCTTY on the pty slave we hold.
                unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
                [slave.as_raw_fd(); 3]
            }
            Stdio::Pipes(p) => [
                p.child[0].as_raw_fd(),
                p.child[1].as_raw_fd(),
                p.child[2].as_raw_fd(),
            ],
        };
        for (fd, from) in targets.into_iter().enumerate() {
            // SAFETY: dup2 of a descriptor we hold onto 0, 1 or 2, replacing the caller's.
            if unsafe { libc::dup2(from, fd as i32) } < 0 {
                let source = std::io::Error::last_os_error();
                return Err(ChildError::Stdio {
                    fd: fd as i32,
                    source,
                });
            }
        }
        // Unblocks what the relay blocked. Signals the caller ignores stay ignored (exec
        // keeps SIG_IGN), as for a local child: `nohup zlogin ...` keeps its command alive.
        reset_signals()?;
        security::drop_privileges(keep)?;
        // `-l USER`: that user's ids (the kernel drops every capability with uid 0) and
        // home; root otherwise.
        let (name, home, shell) = match login {
            Some(l) => {
                l.become_user().map_err(ChildError::Login)?;
                (l.name.as_str(), l.home.as_str(), l.shell.as_str())
            }
            None => ("root", "/root", SHELL[0]),
        };
        match &opts.cwd {
            Some(dir) => {
                nix::unistd::chdir(dir.as_str()).map_err(|e| ChildError::Cwd(dir.clone(), e))?
            }
            None => {
                if nix::unistd::chdir(home).is_err() {
                    nix::unistd::chdir("/").map_err(ChildError::EnterRoot)?;
                }
            }
        }
        security::close_inherited_fds()?;
        let path = resolve(cmd).ok_or_else(|| ChildError::NotFound(cmd.to_owned()))?;
        let path =
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| ChildError::BadPath)?;
        let var =
            |k: &str, v: &str| CString::new(format!("{k}={v}")).map_err(|_| ChildError::BadPath);
        let mut env = vec![
            var(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )?,
            var("HOME", home)?,
            var("TERM", "xterm")?,
            var("LOGNAME", name)?,
            var("USER", name)?,
            var("SHELL", shell)?,
        ];
        // `-e`: over the defaults, a later one over an earlier one of the same name.
        for kv in &opts.env {
            let name = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            let prefix = format!("{name}=");
            env.retain(|e| !e.as_bytes().starts_with(prefix.as_bytes()));
            env.push(CString::new(kv.as_bytes()).map_err(|_| ChildError::BadPath)?);
        }
        security::apply_filters(filters)?;
        let source = nix::unistd::execve(&path, argv, &env).unwrap_err();
        Err(ChildError::Exec {
            cmd: cmd.to_owned(),
            source,
        })
    })();
    match r {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// The PATH a zone's processes get when nothing else gives one.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command name looked up in the zone's PATH (the process is in the zone's root).
fn resolve(cmd: &str) -> Option<PathBuf> {
    resolve_in(cmd, DEFAULT_PATH)
}

/// A command name looked up in `path` (a PATH value), as execvp does: a name with a `/` is
/// taken as it is; otherwise the first executable regular file of that name.
pub(crate) fn resolve_in(cmd: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if cmd.contains('/') {
        return Some(PathBuf::from(cmd));
    }
    if cmd.is_empty() {
        return None;
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_options_are_parsed_up_to_the_command() {
        let args: Vec<String> = [
            "-t", "-u", "1000:100", "-e", "A=1", "-w", "/tmp", "--", "sh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (o, cmd) = ExecOptions::parse(&args).unwrap();
        assert_eq!(
            o,
            ExecOptions {
                tty: true,
                user: Some("1000:100".into()),
                env: vec!["A=1".into()],
                cwd: Some("/tmp".into()),
            }
        );
        assert_eq!(cmd, ["sh"]);
        let plain: Vec<String> = vec!["ls".into(), "-t".into()];
        let (o, cmd) = ExecOptions::parse(&plain).unwrap();
        assert_eq!((o, cmd), (ExecOptions::default(), &plain[..]));
        for (bad, what) in [
            (vec!["-e", "NOVALUE"], "NAME=VALUE"),
            (vec!["-w", "rel"], "absolute"),
            (vec!["-u"], "takes a value"),
        ] {
            let bad: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            let e = ExecOptions::parse(&bad).unwrap_err();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn a_docker_user_is_a_name_or_an_id_with_an_optional_group() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      www:x:33:33:www:/var/www:/usr/sbin/nologin\n";
        let group = "root:x:0:\nwww:x:33:\nstaff:x:50:www\n";
        let l = Login::parse_docker("www", passwd, group).expect("name");
        assert_eq!((l.uid, l.gid, l.home.as_str()), (33, 33, "/var/www"));
        assert_eq!(l.groups, vec![33, 50]);
        let l = Login::parse_docker("33:staff", passwd, group).expect("uid:group");
        assert_eq!((l.uid, l.gid, l.groups.clone()), (33, 50, vec![50]));
        let l = Login::parse_docker("1000", passwd, group).expect("a uid passwd lacks");
        assert_eq!((l.uid, l.gid, l.home.as_str()), (1000, 0, "/"));
        let l = Login::parse_docker("1000:1000", passwd, group).expect("uid:gid");
        assert_eq!((l.uid, l.gid), (1000, 1000));
        for bad in ["nobody", "www:nogroup", "70000", "0:70000", ""] {
            let e = Login::parse_docker(bad, passwd, group).expect_err(bad);
            assert!(e.to_string().contains("docker:user"), "{e}");
        }
    }

    #[test]
    fn a_login_comes_from_the_zones_passwd_and_groups_within_its_range() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      alice:x:1000:100:Alice:/home/alice:/bin/bash\n\
                      bob:x:1001:1001::relative:nosh\n\
                      mallory:x:70000:0::/:/bin/sh\n\
                      short:x:5\n";
        let group = "users:x:100:\nwheel:x:10:alice,bob\nbig:x:99999:alice\n";
        let a = Login::parse("alice", passwd, group).expect("alice");
        assert_eq!(
            (
                a.uid,
                a.gid,
                a.groups.clone(),
                a.home.as_str(),
                a.shell.as_str()
            ),
            (1000, 100, vec![100, 10], "/home/alice", "/bin/bash")
        );
        let b = Login::parse("bob", passwd, group).expect("bob");
        assert_eq!((b.home.as_str(), b.shell.as_str()), ("/", "/bin/sh"));
        for (name, why) in [
            ("mallory", "not an id of the zone"),
            ("short", "no such user"),
            ("nobody", "no such user"),
            ("a:b", "not a user name"),
            ("", "not a user name"),
        ] {
            let e = Login::parse(name, passwd, group)
                .expect_err(name)
                .to_string();
            assert!(e.contains(why), "{name}: {e}");
        }
    }
}
