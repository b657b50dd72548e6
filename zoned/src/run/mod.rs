//! `zoned run DIR`: the supervising process of one zone. It builds the zone (cgroup, user
//! namespace, id-mapped root in a private mount namespace), starts init as pid 1 of new
//! pid, mount, uts, ipc, net and cgroup namespaces, and then serves the console and control
//! sockets and reaps until the zone stops. It is single-threaded: the zone's processes are
//! cloned from it. What the cloned init runs before its exec is in `child`.

mod child;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_sys::chain;
use hull_sys::process::{same_process, start_time};
use hull_vmm_proto::{ControlReply, ControlRequest, ExitReason, ExitRecord};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cgroup::{Cgroup, Layout};
use crate::config::{
    InitExit, Phase, Reply, Request, ZoneConfig, ZoneState, files, read_json, write_runtime_json,
};
use crate::{rootfs, security};

pub(crate) use child::{ChildError, become_zone_root, reset_signals};

/// How much console output is kept for a client that attaches later.
const BACKLOG: usize = 64 << 10;
/// How large the console log grows before it is moved to `console.log.1` (one previous
/// generation kept).
const CONSOLE_LOG_MAX: u64 = 1 << 20;

/// Why a zone could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    File(#[from] crate::config::FileError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Mount(#[from] rootfs::MountError),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error("cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another zoned already runs the zone in {0}")]
    Busy(String),
    #[error("the zone's init did not start: {0}")]
    Init(String),
    #[error("a spare zoned needs cgroup v1 hierarchies (on v2 init is cloned into its cgroup)")]
    SpareNeedsV1,
    #[error("its starter ended the start before the zone's init ran")]
    NotReleased,
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RunError {
    let what = what.into();
    move |e| RunError::Sys {
        what,
        source: e.into(),
    }
}

fn sys_io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Sys { what, source }
}

/// A graceful stop or reboot under way.
#[derive(Debug)]
struct Stopping {
    deadline: Instant,
    reboot: bool,
    killed: bool,
}

/// The console: the pty master of the current boot, its backlog and one attached client.
#[derive(Debug, Default)]
struct Console {
    master: Option<OwnedFd>,
    /// A slave descriptor kept open so the master never hangs up between openers.
    peer: Option<OwnedFd>,
    backlog: VecDeque<u8>,
    client: Option<UnixStream>,
    /// The writing end of the process's stdin pipe (`open_stdin`, without a terminal),
    /// non-blocking, and what the client sent that it has not taken yet (the client is not
    /// read while this holds anything). Closed when the client ends: the process's EOF.
    input: Option<OwnedFd>,
    pending_input: Vec<u8>,
    /// The console log (`console.log` in the zone's directory) and its size, when the
    /// zone keeps one ([`ZoneConfig::console_log`]).
    log: Option<(std::fs::File, u64, PathBuf)>,
}

impl Console {
    /// Appends every console byte to `path` from now on, moving a full log aside first.
    fn keep_log(&mut self, path: PathBuf) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        let size = f.metadata()?.len();
        self.log = Some((f, size, path));
        Ok(())
    }

    fn write_log(&mut self, data: &[u8]) {
        let Some((f, size, path)) = self.log.as_mut() else {
            return;
        };
        if *size >= CONSOLE_LOG_MAX {
            let old = path.with_extension("log.1");
            let reopened = std::fs::rename(&*path, &old).and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&*path)
            });
            match reopened {
                Ok(n) => (*f, *size) = (n, 0),
                Err(_) => {
                    // A log that cannot turn over stops; the console goes on.
                    self.log = None;
                    return;
                }
            }
        }
        if f.write_all(data).is_ok() {
            *size += data.len() as u64;
        }
    }

    fn output(&mut self, data: &[u8]) {
        self.write_log(data);
        self.backlog.extend(data);
        let excess = self.backlog.len().saturating_sub(BACKLOG);
        self.backlog.drain(..excess);
        if let Some(c) = self.client.as_mut()
            && c.write_all(data).is_err()
        {
            self.drop_client();
        }
    }

    fn attach(&mut self, mut client: UnixStream) {
        let _ = client.set_write_timeout(Some(Duration::from_millis(500)));
        let (a, b) = self.backlog.as_slices();
        if client.write_all(a).is_ok() && client.write_all(b).is_ok() {
            self.client = Some(client);
        } else {
            self.drop_client();
        }
    }

    /// The client is gone (it left, or could not take what the zone wrote): so is the
    /// process's stdin, once what it sent has been taken (`Zone::flush_input` closes it
    /// then), however the end was noticed.
    fn drop_client(&mut self) {
        self.client = None;
        if self.pending_input.is_empty() {
            self.input = None;
        }
    }
}

/// One zone under supervision.
#[derive(Debug)]
struct Zone {
    dir: PathBuf,
    cfg: ZoneConfig,
    cgroup: Cgroup,
    rootfs: PathBuf,
    filters: security::Filters,
    state: ZoneState,
    init: Option<Pid>,
    stopping: Option<Stopping>,
    console: Console,
    /// zoned itself sits in the zone's cgroup (a spare that adopted it) until init runs.
    joined: bool,
    /// The helper moving zoned out of the zone's cgroup, while it runs.
    leaver: Option<Pid>,
    /// Where the starter releases the first boot's init (see [`run`]), until it has.
    hold: Option<std::fs::File>,
    /// The zone's metadata listener, held open for vmmd and never read here (see
    /// [`metadata_service`]).
    _metadata: Option<UnixListener>,
}

/// Listens on the zone's metadata socket and binds its directory and the mdata tools into
/// the zone's root. zoned never accepts on it: vmmd copies the descriptor (its number is in
/// the state file) and answers, and since zoned holds it, a guest that connects while vmmd
/// restarts waits in the backlog instead of being refused.
fn metadata_service(
    dir: &Path,
    rootfs: &Path,
    m: &crate::config::MetadataMount,
    id_base: u32,
) -> Result<UnixListener, RunError> {
    use std::os::unix::fs::PermissionsExt;
    let control = dir.join(files::ZONECONTROL);
    if !control.is_dir() {
        std::fs::create_dir(&control).map_err(sys_io(format!("create {}", control.display())))?;
    }
    // The zone's users reach it through the bind; the host's only through vmmd's 0700
    // zones directory.
    let mode = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(sys_io(format!("set the mode of {}", p.display())))
    };
    mode(&control, 0o755)?;
    let sock = control.join(files::METADATA_SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).map_err(sys_io(format!("listen on {}", sock.display())))?;
    mode(&sock, 0o666)?;
    rootfs::bind_into_zone(rootfs, &control, &m.at, false, id_base)?;
    for tool in &m.tools {
        rootfs::bind_into_zone(rootfs, &tool.host, &tool.at, true, id_base)?;
    }
    for file in &m.seed {
        rootfs::write_into_zone(rootfs, &file.at, file.content.as_bytes(), id_base)?;
    }
    Ok(listener)
}

/// Runs the zone in `dir` until it stops. Returns the zone's final state.
///
/// With `hold` (`zoned run --hold DIR`), the first boot's init waits, its namespaces made
/// and its pid in the state file, before it runs anything of the zone's: zoned says so with
/// one byte `h` on stdout and waits for one byte `r` on stdin, which the starter sends once
/// it has plumbed the zone's network into them. Anything else (EOF: the starter could not,
/// or went away) ends the start, and the zone never ran without its NICs.
pub fn run(dir: &Path, hold: bool) -> Result<ZoneState, RunError> {
    // SAFETY: umask has no preconditions; sockets and files made here are root's only.
    unsafe { libc::umask(0o077) };
    let _ = nix::unistd::setsid();
    let hold = match hold {
        true => Some(take_stdin()?),
        false => None,
    };
    run_zone(dir, None, hold)
}

/// zoned's stdin as a file of its own (close-on-exec), with /dev/null in its place: what
/// the starter sends after the start is read from it, and no child inherits the pipe.
fn take_stdin() -> Result<std::fs::File, RunError> {
    let fd = nix::fcntl::fcntl(std::io::stdin(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(sys("take the starter's pipe"))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor, owned here from now on.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let null = std::fs::File::open("/dev/null").map_err(sys_io("open /dev/null"))?;
    // SAFETY: dup2 of a descriptor we own onto stdin.
    unsafe { libc::dup2(null.as_raw_fd(), 0) };
    Ok(file)
}

/// Tells the starter that init waits for the zone's network, then waits for its release.
fn held(hold: std::fs::File) -> Result<(), RunError> {
    let _ = nix::unistd::write(std::io::stdout(), b"h");
    let mut b = [0u8; 1];
    match (&hold).read(&mut b) {
        Ok(1) if b[0] == b'r' => Ok(()),
        _ => Err(RunError::NotReleased),
    }
}

/// `zoned spare ZONES NAME`: a zoned started ahead of any zone, on cgroup v1. It makes the
/// empty cgroup NAME (e.g. `hull/.spare-...`), moves itself into it (the write that waits
/// for an RCU grace period, paid here instead of at start), says so with one byte `s` on
/// stdout, and waits for a zone's directory, which must be in ZONES, as one line on stdin.
/// It then runs that zone as `zoned run --hold` would (see [`run`]), renaming NAME to the
/// zone's cgroup, so that init is cloned inside it. EOF or anything else instead (vmmd went
/// away) leaves and removes NAME. Returns `None` in that case.
pub fn spare(zones: &Path, name: &str) -> Result<Option<ZoneState>, RunError> {
    // SAFETY: umask has no preconditions; sockets and files made here are root's only.
    unsafe { libc::umask(0o077) };
    let _ = nix::unistd::setsid();
    let layout = Layout::detect()?;
    if !matches!(layout, Layout::V1 { .. }) {
        return Err(RunError::SpareNeedsV1);
    }
    let me = std::process::id() as i32;
    let (cgroup, _) = Cgroup::create(&layout, name, &crate::cgroup::Limits::default())?;
    let leave = || {
        let _ = cgroup.move_to_parent(me);
        let _ = cgroup.remove();
    };
    if let Err(e) = cgroup.add_pid(me) {
        leave();
        return Err(e.into());
    }
    let _ = nix::unistd::write(std::io::stdout(), b"s");
    let mut line = String::new();
    let got = std::io::stdin().read_line(&mut line);
    let dir = PathBuf::from(line.trim_end_matches('\n'));
    let in_zones = dir.parent() == Some(zones) && dir.file_name().is_some();
    if got.is_err() || !zones.is_absolute() || !in_zones {
        leave();
        return Ok(None);
    }
    // Nothing follows the line until zoned says its init is held: no byte of the release
    // is in stdin's buffer.
    let hold = take_stdin();
    redirect_stdio(&dir);
    let result = hold.and_then(|hold| run_zone(&dir, Some(name), Some(hold)));
    // Still named NAME: the zone never took it over (busy, bad config).
    if Cgroup::open(&layout, name).is_ok() {
        leave();
    }
    result.map(Some)
}

/// A spare's stdin becomes /dev/null and its stderr the zone's log, as `zoned run` has them.
fn redirect_stdio(dir: &Path) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(files::LOG));
    let null = std::fs::File::open("/dev/null");
    // SAFETY: dup2 of descriptors we own onto stdin and stderr.
    unsafe {
        if let Ok(null) = &null {
            libc::dup2(null.as_raw_fd(), 0);
        }
        if let Ok(log) = &log {
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

fn run_zone(
    dir: &Path,
    spare: Option<&str>,
    hold: Option<std::fs::File>,
) -> Result<ZoneState, RunError> {
    let lock_path = dir.join("zoned.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(sys_io(format!("create {}", lock_path.display())))?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| RunError::Busy(dir.display().to_string()))
        .map(|held| {
            // Held for the life of the process.
            std::mem::forget(held);
        })?;
    let cfg: ZoneConfig = read_json(&dir.join(files::CONFIG))?;
    let me = std::process::id() as i32;
    let mut state = ZoneState {
        phase: Phase::Starting,
        zoned_pid: me,
        zoned_start: start_time(me).unwrap_or(0),
        init_pid: None,
        init_start: None,
        cgroup_layout: String::new(),
        boots: 0,
        last_exit: None,
        error: None,
        notes: Vec::new(),
        metadata_fd: None,
        reset: false,
        frozen: false,
    };
    write_runtime_json(&dir.join(files::STATE), &state)?;
    let result = match build(dir, cfg, &mut state, spare) {
        Ok(mut zone) => {
            zone.hold = hold;
            zone.supervise()
        }
        Err(e) => {
            state.phase = Phase::Stopped;
            state.error = Some(chain(&e));
            let _ = write_runtime_json(&dir.join(files::STATE), &state);
            Err(e)
        }
    };
    if result.is_err() {
        notify_failed();
    }
    result
}

fn build(
    dir: &Path,
    cfg: ZoneConfig,
    state: &mut ZoneState,
    spare: Option<&str>,
) -> Result<Zone, RunError> {
    let layout = Layout::detect()?;
    state.cgroup_layout = layout.name().to_owned();
    // A spare and its leaving helper count in pids.max until init runs and the spare
    // leaves: two more until then.
    let mut limits = cfg.limits.clone();
    limits.max_lwps = limits.max_lwps.map(|n| n.saturating_add(2));
    let adopted = spare.map(|name| Cgroup::adopt(&layout, name, &cfg.cgroup, &limits));
    let (cgroup, notes, joined) = match adopted {
        Some(Ok((cg, notes))) => (cg, notes, true),
        other => {
            if let Some(Err(e)) = other {
                let e = chain(&e);
                eprintln!("zoned: cannot take over the spare cgroup: {e}; making the zone's");
            }
            let (cg, notes) = Cgroup::create(&layout, &cfg.cgroup, &cfg.limits)?;
            (cg, notes, false)
        }
    };
    state.notes = notes;
    let zone = (|| {
        rootfs::private_mount_namespace()?;
        // This user namespace only describes the id mapping of the root's id-mapped mount;
        // each boot's init gets a new one with the same map (see `boot`).
        let userns = rootfs::make_user_namespace(cfg.id_base)?;
        let rootfs = dir.join(files::ROOTFS);
        let ids = rootfs::mount_root(
            &cfg.root,
            &dir.join(files::BASE),
            &rootfs,
            &userns,
            cfg.id_base,
            cfg.root_ids,
            &dir.join(files::SHIFTED),
        )?;
        if ids == crate::config::RootIds::Shift {
            state.notes.push(
                "the zone's files are shifted into its id range on disk (no id-mapped mounts)"
                    .into(),
            );
        }
        if !cfg.is_vmm() {
            rootfs::mount_extras(
                &rootfs,
                &cfg.mounts,
                cfg.tmpfs_mib,
                &cfg.tmpfs_mounts,
                &userns,
                cfg.id_base,
                ids,
            )?;
        }
        let metadata = match &cfg.metadata {
            Some(m) if !cfg.is_vmm() => Some(metadata_service(dir, &rootfs, m, cfg.id_base)?),
            _ => None,
        };
        Ok::<_, RunError>((rootfs, metadata))
    })();
    let (rootfs, metadata) = match zone {
        Ok(z) => z,
        Err(e) => {
            if joined {
                let _ = cgroup.move_to_parent(std::process::id() as i32);
            }
            let _ = cgroup.remove();
            return Err(e);
        }
    };
    state.metadata_fd = metadata.as_ref().map(AsRawFd::as_raw_fd);
    let mut console = Console::default();
    if cfg.console_log {
        let path = dir.join(files::CONSOLE_LOG);
        console
            .keep_log(path.clone())
            .map_err(sys_io(format!("open {}", path.display())))?;
    }
    Ok(Zone {
        dir: dir.to_owned(),
        _metadata: metadata,
        filters: security::filters()?,
        cfg,
        cgroup,
        rootfs,
        state: state.clone(),
        init: None,
        stopping: None,
        console,
        joined,
        leaver: None,
        hold: None,
    })
}

/// Signals zoned handles through its signalfd.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

impl Zone {
    fn save(&self) {
        if let Err(e) = write_runtime_json(&self.dir.join(files::STATE), &self.state) {
            eprintln!("zoned: {}", chain(&e));
        }
    }

    fn supervise(mut self) -> Result<ZoneState, RunError> {
        let set = handled_signals();
        let setup = (|| {
            set.thread_block().map_err(sys("block signals"))?;
            let sigfd = SignalFd::with_flags(
                &set,
                nix::sys::signalfd::SfdFlags::SFD_CLOEXEC
                    | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
            )
            .map_err(sys("create a signalfd"))?;
            let ctl = bind(&self.dir.join(files::CONTROL))?;
            let con = bind(&self.dir.join(files::CONSOLE))?;
            Ok::<_, RunError>((sigfd, ctl, con))
        })();
        // Every way out before init runs leaves the state file saying why (`run_zone` then
        // tells the starter to read it), and the cgroup removed.
        let (sigfd, ctl, con) = match setup {
            Ok(s) => s,
            Err(e) => {
                self.finish(Some(chain(&e)));
                return Err(e);
            }
        };
        if let Err(e) = self.boot() {
            self.finish(Some(chain(&e)));
            return Err(e);
        }
        notify_started();
        self.leave_cgroup();
        loop {
            let timeout = match &self.stopping {
                Some(s) if !s.killed => {
                    let left = s.deadline.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                        .unwrap_or(PollTimeout::NONE)
                }
                _ => PollTimeout::NONE,
            };
            let master = self.console.master.as_ref().map(|m| m.as_raw_fd());
            // While the process's stdin holds input it has not taken, its pipe is waited on
            // for room and the client is not read.
            let input = self
                .console
                .input
                .as_ref()
                .filter(|_| !self.console.pending_input.is_empty())
                .map(|i| i.as_raw_fd());
            let client = match input {
                Some(_) => None,
                None => self.console.client.as_ref().map(|c| c.as_raw_fd()),
            };
            let (sig_ev, ctl_ev, con_ev, master_ev, client_ev, input_ev) = {
                // SAFETY: the descriptors are owned by `self` and live across the poll.
                let b = |fd: RawFd| unsafe { BorrowedFd::borrow_raw(fd) };
                let mut fds = vec![
                    PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
                    PollFd::new(con.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(m) = master {
                    fds.push(PollFd::new(b(m), PollFlags::POLLIN));
                }
                if let Some(c) = client {
                    fds.push(PollFd::new(b(c), PollFlags::POLLIN));
                }
                if let Some(i) = input {
                    fds.push(PollFd::new(b(i), PollFlags::POLLOUT));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::Error::EINTR) => {}
                    Err(e) => return Err(sys("poll")(e)),
                }
                let ev = |i: usize| {
                    fds.get(i)
                        .and_then(|f| f.revents())
                        .is_some_and(|r| !r.is_empty())
                };
                let mi = 3;
                let ci = 3 + usize::from(master.is_some());
                let ii = ci + usize::from(client.is_some());
                (
                    ev(0),
                    ev(1),
                    ev(2),
                    master.is_some() && ev(mi),
                    client.is_some() && ev(ci),
                    input.is_some() && ev(ii),
                )
            };
            if master_ev {
                let _ = self.pump_output();
            }
            if client_ev {
                self.pump_input();
            }
            if input_ev {
                self.flush_input();
            }
            if con_ev && let Ok((s, _)) = con.accept() {
                self.console.attach(s);
            }
            if ctl_ev && let Ok((s, _)) = ctl.accept() {
                self.control(s);
            }
            if sig_ev {
                while let Ok(Some(info)) = sigfd.read_signal() {
                    let sig = info.ssi_signo as i32;
                    if sig != libc::SIGCHLD {
                        let t = self.cfg.stop_timeout_s;
                        self.stop(t, false, false);
                    }
                }
            }
            if let Some(s) = &mut self.stopping
                && !s.killed
                && Instant::now() >= s.deadline
            {
                s.killed = true;
                self.kill_all();
            }
            if let Some(exit) = self.reap() {
                let vmm_exit = self.vmm_exit();
                let reboot = match (&self.stopping, &vmm_exit) {
                    (Some(s), _) => s.reboot,
                    // A guest that resets itself reboots, as on a real machine (or ends the
                    // zone for vmmd to start anew, with `reset_ends`).
                    (None, Some(e)) if e.reason == ExitReason::Reset => {
                        self.state.reset = self.cfg.reset_ends;
                        !self.cfg.reset_ends
                    }
                    (None, Some(_)) => false,
                    // A zone that reboots itself: reboot(2) in a pid namespace ends init
                    // with SIGHUP (SIGINT for halt and power-off).
                    (None, None) => exit.signal == Some(libc::SIGHUP),
                };
                if let Some(e) =
                    vmm_exit.filter(|e| matches!(e.reason, ExitReason::Fault | ExitReason::Error))
                {
                    self.state.error =
                        Some(format!("the VMM reported a {}: {}", e.reason, e.detail));
                }
                self.state.last_exit = Some(exit);
                self.state.init_pid = None;
                self.state.init_start = None;
                self.kill_all();
                self.drain_output();
                // What a kill left frozen (its init gone) is thawed: nothing stays paused.
                if std::mem::take(&mut self.state.frozen) {
                    let _ = self.cgroup.set_frozen(false);
                }
                if reboot {
                    self.stopping = None;
                    if let Err(e) = self.boot() {
                        self.finish(Some(chain(&e)));
                        return Err(e);
                    }
                    continue;
                }
                self.finish(None);
                return Ok(self.state);
            }
        }
    }

    /// The VMM's report of why it ended, when this zone holds one that wrote it. The file is
    /// the VMM's, so it is read as untrusted: no symlink, 4 KiB at most, strict JSON.
    fn vmm_exit(&self) -> Option<ExitRecord> {
        if !self.cfg.is_vmm() {
            return None;
        }
        let path = self.dir.join(files::VMM_DIR).join(files::VMM_EXIT);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .ok()?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return None;
        }
        let mut text = String::new();
        file.take(4096).read_to_string(&mut text).ok()?;
        let _ = std::fs::remove_file(&path);
        match serde_json::from_str::<ExitRecord>(&text) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("zoned: the VMM's exit report is not valid: {e}");
                None
            }
        }
    }

    /// Reaps children; returns how init ended if it did.
    fn reap(&mut self) -> Option<InitExit> {
        let mut ended = None;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if Some(pid) == self.init => {
                    ended = Some(InitExit {
                        code: Some(code),
                        signal: None,
                    });
                    self.init = None;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if Some(pid) == self.init => {
                    ended = Some(InitExit {
                        code: None,
                        signal: Some(sig as i32),
                    });
                    self.init = None;
                }
                Ok(WaitStatus::Exited(pid, code)) if Some(pid) == self.leaver => {
                    self.left_cgroup(code == 0);
                }
                Ok(WaitStatus::Signaled(pid, _, _)) if Some(pid) == self.leaver => {
                    self.left_cgroup(false);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return ended,
                Ok(_) => {}
            }
        }
    }

    /// A spare that adopted the zone's cgroup leaves it for the parent once init runs in it.
    /// The migration waits for an RCU grace period (docs/PERFORMANCE.md, "Figures behind design
    /// choices"), and zoned must not stop draining the console that long (an init that flushes
    /// its terminal, as sysvinit does, would lose what zoned had not read yet): a forked helper
    /// moves zoned, and `reap` completes the leave when the helper exits.
    fn leave_cgroup(&mut self) {
        if !self.joined || self.leaver.is_some() {
            return;
        }
        let me = std::process::id() as i32;
        // SAFETY: zoned is single-threaded; the child writes one cgroup file and _exits.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                let code = i32::from(self.cgroup.move_to_parent(me).is_err());
                // SAFETY: ends the helper without running zoned's destructors.
                unsafe { libc::_exit(code) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => self.leaver = Some(child),
            Err(_) => {
                let left = self.cgroup.move_to_parent(me).is_ok();
                self.left_cgroup(left);
            }
        }
    }

    /// Records how the leave ended; pids.max drops back to the zone's own limit.
    fn left_cgroup(&mut self, left: bool) {
        self.leaver = None;
        if !left {
            return eprintln!("zoned: cannot leave the zone's cgroup");
        }
        self.joined = false;
        if let Err(e) = self.cgroup.set_limits(&self.cfg.limits) {
            eprintln!("zoned: {}", chain(&e));
        }
    }

    /// Before the cgroup goes: waits for a leave under way, or leaves at once.
    fn leave_cgroup_now(&mut self) {
        if let Some(pid) = self.leaver {
            let ok = matches!(waitpid(pid, None), Ok(WaitStatus::Exited(_, 0)));
            self.left_cgroup(ok);
        }
        if self.joined {
            let left = self
                .cgroup
                .move_to_parent(std::process::id() as i32)
                .is_ok();
            self.left_cgroup(left);
        }
    }

    /// Kills every process of the zone. zoned leaves the cgroup first: the v1 kill freezes
    /// the cgroup, and a zoned still inside would freeze itself.
    fn kill_all(&mut self) {
        self.leave_cgroup_now();
        if let Err(e) = self.cgroup.kill_all() {
            eprintln!("zoned: {}", chain(&e));
        }
    }

    fn finish(&mut self, error: Option<String>) {
        self.kill_all();
        if let Err(e) = self.cgroup.remove() {
            eprintln!("zoned: {}", chain(&e));
        }
        for f in [files::CONTROL, files::CONSOLE] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        self.state.phase = Phase::Stopped;
        self.state.init_pid = None;
        self.state.init_start = None;
        if error.is_some() {
            self.state.error = error;
        }
        self.save();
    }

    fn stop(&mut self, timeout_s: u64, force: bool, reboot: bool) {
        let Some(init) = self.init else { return };
        // A paused zone is thawed first: a frozen init would never see its stop signal.
        if self.state.frozen {
            if let Err(e) = self.cgroup.set_frozen(false) {
                eprintln!("zoned: cannot resume the paused zone to stop it: {e}");
            }
            self.state.frozen = false;
        }
        if self.stopping.is_none() {
            self.state.phase = Phase::Stopping;
            self.save();
        }
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        let s = self.stopping.get_or_insert(Stopping {
            deadline,
            reboot,
            killed: false,
        });
        s.reboot |= reboot;
        if force || timeout_s == 0 {
            s.killed = true;
            self.kill_all();
        } else {
            s.deadline = s.deadline.min(deadline);
            if !(self.cfg.is_vmm() && self.vmm_power_off()) {
                // SAFETY: kill(2) with a pid and a signal number.
                unsafe { libc::kill(init.as_raw(), self.stop_signal(init)) };
            }
        }
    }

    /// Asks a microVM's guest to power off through its VMM's control socket: the ACPI power
    /// button, then Ctrl-Alt-Del on the i8042 (a guest listens to one or the other; while
    /// stopping, a guest that resets counts as stopped). The guest gets the stop's whole
    /// timeout, where the VMM's own SIGTERM grace is 3 s. False when the VMM cannot be
    /// reached (not listening yet): the caller signals it instead.
    fn vmm_power_off(&self) -> bool {
        let path = self.dir.join(files::VMM_DIR).join(files::VMM_CONTROL);
        let ask = |req: ControlRequest| -> bool {
            let Ok(mut s) = UnixStream::connect(&path) else {
                return false;
            };
            let limit = Some(Duration::from_millis(500));
            let _ = s.set_read_timeout(limit);
            let _ = s.set_write_timeout(limit);
            if s.write_all(req.to_line().as_bytes()).is_err() {
                return false;
            }
            let mut reply = String::new();
            let _ = BufReader::new(s.take(4096)).read_line(&mut reply);
            serde_json::from_str::<ControlReply>(&reply).is_ok_and(|r| r.ok)
        };
        let pressed = ask(ControlRequest::PowerButton {});
        ask(ControlRequest::CtrlAltDel {}) || pressed
    }

    /// The signal that asks this init to shut down: systemd halts on SIGRTMIN+3 (SIGTERM
    /// only makes it re-execute itself); others get the configured one, SIGTERM by default
    /// (busybox init and most others shut down on it; sysvinit needs SIGPWR and an inittab
    /// `powerwait` entry, which the lx brand configures).
    fn stop_signal(&self, init: Pid) -> i32 {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", init.as_raw()));
        if comm.is_ok_and(|c| c.trim_end() == "systemd") {
            return libc::SIGRTMIN() + 3;
        }
        self.cfg.stop_signal.unwrap_or(libc::SIGTERM)
    }

    fn control(&mut self, stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        let mut line = String::new();
        if BufReader::new(stream.take(64 << 10))
            .read_line(&mut line)
            .is_err()
        {
            return;
        }
        let ok = |notes| Reply {
            ok: true,
            error: None,
            state: None,
            notes,
            usage: None,
        };
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Reply {
                ok: false,
                error: Some(format!("bad request: {e}")),
                ..ok(vec![])
            },
            Ok(Request::Resize { rows, cols }) => match &self.console.master {
                Some(m) => {
                    let size = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ on the pty master we hold, with a live winsize.
                    match unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &size) } {
                        0 => ok(vec![]),
                        _ => Reply {
                            ok: false,
                            error: Some(format!(
                                "cannot resize the console: {}",
                                std::io::Error::last_os_error()
                            )),
                            ..ok(vec![])
                        },
                    }
                }
                None => Reply {
                    ok: false,
                    error: Some(
                        "the zone has no console terminal (its process writes to a pipe)".into(),
                    ),
                    ..ok(vec![])
                },
            },
            Ok(Request::Usage) => Reply {
                usage: Some(self.cgroup.usage()),
                ..ok(vec![])
            },
            Ok(Request::Status) => Reply {
                state: Some(self.state.clone()),
                ..ok(vec![])
            },
            Ok(Request::Stop { timeout_s, force }) => {
                self.stop(timeout_s.unwrap_or(self.cfg.stop_timeout_s), force, false);
                ok(vec![])
            }
            Ok(Request::Reboot { timeout_s }) => {
                self.stop(timeout_s.unwrap_or(self.cfg.stop_timeout_s), false, true);
                ok(vec![])
            }
            Ok(Request::Kill { signal }) => match (self.init, Signal::try_from(signal)) {
                (Some(pid), Ok(sig)) => match nix::sys::signal::kill(pid, sig) {
                    Ok(()) => ok(vec![]),
                    Err(e) => Reply {
                        ok: false,
                        error: Some(format!("cannot signal the zone's init: {e}")),
                        ..ok(vec![])
                    },
                },
                (None, _) => Reply {
                    ok: false,
                    error: Some("the zone's init is not running".into()),
                    ..ok(vec![])
                },
                (_, Err(_)) => Reply {
                    ok: false,
                    error: Some(format!("{signal} is not a signal")),
                    ..ok(vec![])
                },
            },
            Ok(Request::Freeze { frozen }) => match (self.init, &self.stopping) {
                (None, _) => Reply {
                    ok: false,
                    error: Some("the zone's init is not running".into()),
                    ..ok(vec![])
                },
                (_, Some(_)) => Reply {
                    ok: false,
                    error: Some("the zone is stopping".into()),
                    ..ok(vec![])
                },
                _ => match self.cgroup.set_frozen(frozen) {
                    Ok(()) => {
                        self.state.frozen = frozen;
                        self.save();
                        ok(vec![])
                    }
                    Err(e) => Reply {
                        ok: false,
                        error: Some(format!(
                            "cannot {} the zone: {e}",
                            if frozen { "pause" } else { "resume" }
                        )),
                        ..ok(vec![])
                    },
                },
            },
            Ok(Request::Update { limits }) => match self.cgroup.set_limits(&limits) {
                Ok(notes) => {
                    self.cfg.limits = limits;
                    ok(notes)
                }
                Err(e) => Reply {
                    ok: false,
                    error: Some(e.to_string()),
                    ..ok(vec![])
                },
            },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.push('\n');
        let _ = out.write_all(text.as_bytes());
    }

    /// Moves what the console (or output pipe) holds to the backlog, log and client; true
    /// when it read something.
    fn pump_output(&mut self) -> bool {
        let Some(m) = &self.console.master else {
            return false;
        };
        let mut buf = [0u8; 4096];
        match nix::unistd::read(m, &mut buf) {
            Ok(0) | Err(nix::Error::EIO) => {
                self.console.master = None;
                false
            }
            Ok(n) => {
                self.console.output(&buf[..n]);
                true
            }
            Err(_) => false,
        }
    }

    /// Takes everything the zone's processes wrote before they ended (the console is
    /// non-blocking: until it is empty), so that its end never loses its last output.
    fn drain_output(&mut self) {
        let mut budget = CONSOLE_LOG_MAX / 4096 + 1;
        while budget > 0 && self.pump_output() {
            budget -= 1;
        }
    }

    fn pump_input(&mut self) {
        let Some(c) = self.console.client.as_mut() else {
            return;
        };
        let mut buf = [0u8; 1024];
        match c.read(&mut buf) {
            // The end of a process's stdin: EOF once what it sent is taken.
            Ok(0) | Err(_) => self.console.drop_client(),
            Ok(n) => match &self.console.input {
                Some(_) => {
                    self.console.pending_input.extend_from_slice(&buf[..n]);
                    self.flush_input();
                }
                None => {
                    if let Some(m) = &self.console.master {
                        let _ = nix::unistd::write(m, &buf[..n]);
                    }
                }
            },
        }
    }

    /// Writes what the client sent into the process's stdin pipe, as much as it takes now;
    /// closes it when the client has ended and all of it is taken, or the process closed its
    /// end.
    fn flush_input(&mut self) {
        let c = &mut self.console;
        let Some(i) = &c.input else {
            c.pending_input.clear();
            return;
        };
        match nix::unistd::write(i, &c.pending_input) {
            Ok(n) => {
                c.pending_input.drain(..n);
            }
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(_) => {
                c.pending_input.clear();
                c.input = None;
            }
        }
        if c.pending_input.is_empty() && c.client.is_none() {
            c.input = None;
        }
    }

    /// Starts init in fresh namespaces and waits until it has exec'd (or failed).
    fn boot(&mut self) -> Result<(), RunError> {
        self.state.phase = Phase::Starting;
        self.state.boots += 1;
        // The first boot's "starting" is on disk already (`run_zone` wrote it).
        if self.state.boots > 1 {
            self.save();
        }
        if self.cfg.is_vmm() {
            // Each boot's VMM reports afresh; its directory is the zone root's to write in.
            let vmm_dir = self.dir.join(files::VMM_DIR);
            let _ = std::fs::remove_file(vmm_dir.join(files::VMM_EXIT));
            let _ = std::fs::remove_file(vmm_dir.join(files::VMM_CONTROL));
        }
        // The VMM's TAPs, open here (the child inherits them) and handed over as 3, 4...
        let taps = self
            .cfg
            .taps
            .iter()
            .map(|name| {
                hull_sys::tun::open(name).map_err(|source| RunError::Sys {
                    what: format!("open the TAP {name}"),
                    source,
                })
            })
            .collect::<Result<Vec<OwnedFd>, RunError>>()?;
        let (go_r, go_w) = nix::unistd::pipe().map_err(sys("make a pipe"))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("make a pipe"))?;
        let (fd_parent, fd_child) = UnixStream::pair().map_err(sys_io("make a socket pair"))?;
        // init inherits zoned's locked-memory limit, which zoned (root of the host's user
        // namespace) may raise and a process in the zone's may not: set here, it is the
        // limit of everything the zone runs.
        let memlock = self
            .cfg
            .rctls
            .limit_locked_memory()
            .map_err(sys_io("set the zone's locked-memory limit"))?;
        if let Some(note) = memlock
            && !self.state.notes.contains(&note)
        {
            self.state.notes.push(note);
        }
        // The user namespace comes first in one clone, so it owns the others (as in crun
        // and runc): the zone's root has its kept capabilities there, e.g. CAP_SYS_BOOT to
        // halt or reboot the zone with reboot(2). It still cannot mount (seccomp) nor set
        // the hostname or configure the network (no CAP_SYS_ADMIN, no CAP_NET_ADMIN).
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWNET;
        // On cgroup v2 init is born in the zone's cgroup; on v1 it joins below, unless a
        // spare zoned that adopted the cgroup clones it from inside. A zone joining another's
        // namespaces is cloned by a helper and joins its cgroup below too.
        let join = self.cfg.join;
        let helped = join.is_some() || self.cfg.netns.is_some();
        let born_inside = (self.cgroup.is_v2() || self.joined) && !helped;
        // SAFETY: fork-like clones (no new stack) of this single-threaded process; the child
        // runs `init_child`, which never returns.
        let cloned = unsafe {
            match (helped, self.cgroup.is_v2()) {
                (true, _) => clone_joined(join, self.cfg.netns.as_deref()),
                (false, true) => self.cgroup.clone_into(flags as u64),
                (false, false) => {
                    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
                    match libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) {
                        p if p < 0 => Err(std::io::Error::last_os_error()),
                        p => Ok(p as i32),
                    }
                }
            }
        };
        let pid = cloned.map_err(|source| RunError::Sys {
            what: "clone the zone's init".into(),
            source,
        })?;
        if pid == 0 {
            drop(go_w);
            drop(err_r);
            drop(fd_parent);
            child::init_child(self, go_r, err_w, fd_child, &taps);
        }
        drop(taps);
        drop(go_r);
        drop(err_w);
        drop(fd_child);
        let pid = Pid::from_raw(pid);
        self.init = Some(pid);
        let started = (|| {
            // A joined user namespace is mapped already, and its IPC namespace limited, by
            // the zone that made them.
            if join.is_none() {
                rootfs::write_id_maps(pid.as_raw(), self.cfg.id_base)?;
                // Before init runs anything of the zone's: its IPC namespace's limits.
                self.cfg
                    .rctls
                    .limit_ipc(pid.as_raw(), self.cfg.id_base)
                    .map_err(sys_io("set the zone's System V IPC limits"))?;
            }
            // As the host's root (the zone's cannot lower it): its OOM adjustment, which
            // what init runs inherits.
            if let Some(adj) = self.cfg.process.as_ref().and_then(|p| p.oom_score_adj) {
                let path = format!("/proc/{pid}/oom_score_adj");
                std::fs::write(&path, adj.to_string()).map_err(|e| {
                    let why = match e.kind() {
                        std::io::ErrorKind::PermissionDenied => {
                            " (lowering it needs CAP_SYS_RESOURCE, which this host does not give \
                             hull; containerd's restrict_oom_score_adj keeps its CRI's within reach)"
                        }
                        _ => "",
                    };
                    sys_io(format!("set the OOM score adjustment {adj}{why}: {path}"))(e)
                })?;
            }
            // Init that ended already said why on its error pipe: that is the reason.
            let release = |b: &[u8]| {
                nix::unistd::write(&go_w, b).map(drop).map_err(|e| {
                    let mut msg = String::new();
                    if let Ok(fd) = err_r.try_clone() {
                        let _ = std::fs::File::from(fd).read_to_string(&mut msg);
                    }
                    match msg.is_empty() {
                        true => sys("release the zone's init")(e),
                        false => RunError::Init(msg),
                    }
                })
            };
            release(b"g")?;
            // Joining the cgroup can take milliseconds (a v1 migration waits for an RCU
            // grace period): it runs while init mounts its /dev and /proc, and init waits
            // for the second byte before it runs anything of the zone's.
            if !born_inside {
                self.cgroup.add_pid(pid.as_raw())?;
            }
            // The first boot of a held start waits here for its network (see [`run`]).
            if let Some(hold) = self.hold.take() {
                self.state.init_pid = Some(pid.as_raw());
                self.save();
                held(hold)?;
            }
            release(b"c")?;
            let master = recv_fd(&fd_parent);
            let input = match self.cfg.process.as_ref() {
                Some(p) if !p.tty && p.open_stdin => recv_fd(&fd_parent),
                _ => None,
            };
            // Hold a slave open at once: an init that writes to /dev/console and closes it
            // (sysvinit does) before anyone else holds the slave would hang up the pty.
            if let Some(m) = &master {
                // SAFETY: TIOCGPTPEER on our pty master returns a new slave descriptor.
                let peer = unsafe {
                    libc::ioctl(
                        m.as_raw_fd(),
                        libc::TIOCGPTPEER,
                        libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                    )
                };
                // SAFETY: a fresh descriptor from the kernel, owned here from now on.
                self.console.peer = (peer >= 0).then(|| unsafe { OwnedFd::from_raw_fd(peer) });
            }
            let mut msg = String::new();
            let _ = std::fs::File::from(err_r).read_to_string(&mut msg);
            if !msg.is_empty() {
                return Err(RunError::Init(msg));
            }
            let master = master
                .ok_or_else(|| RunError::Init("it ended before handing over its console".into()))?;
            Ok((master, input))
        })();
        match started {
            Ok((master, input)) => {
                if let Some(i) = &input {
                    nix::fcntl::fcntl(
                        i,
                        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                    )
                    .map_err(sys("make the process's stdin non-blocking"))?;
                }
                self.console.input = input;
                self.console.pending_input.clear();
                nix::fcntl::fcntl(
                    &master,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )
                .map_err(sys("make the console non-blocking"))?;
                self.console.master = Some(master);
                self.state.phase = Phase::Running;
                self.state.init_pid = Some(pid.as_raw());
                self.state.init_start = start_time(pid.as_raw());
                self.state.error = None;
                self.save();
                Ok(())
            }
            Err(e) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                self.init = None;
                Err(e)
            }
        }
    }
}

/// Clones the init of a zone that joins another's namespaces ([`ZoneConfig::join`]): a
/// helper forked here enters that zone's user, network, IPC and UTS namespaces through a
/// pidfd of its init (checked against its start time, so a recycled pid is never joined),
/// clones init with new mount and PID namespaces (owned by the joined user namespace) as
/// zoned's own child (CLONE_PARENT), reports its pid and exits. Returns 0 in init, as a
/// clone does.
///
/// # Safety
/// As fork: this process must be single-threaded.
unsafe fn clone_joined(
    join: Option<crate::config::JoinSpec>,
    netns: Option<&Path>,
) -> std::io::Result<i32> {
    let pidfd = match join {
        Some(j) => {
            let gone = || {
                std::io::Error::other(format!(
                    "the zone it joins (init pid {}) is not running",
                    j.pid
                ))
            };
            let fd = hull_sys::process::pidfd(j.pid).map_err(|_| gone())?;
            if !same_process(j.pid, j.start) {
                return Err(gone());
            }
            Some(fd)
        }
        None => None,
    };
    let netfd = match netns {
        Some(p) => Some(
            std::fs::File::open(p)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    // SAFETY: fork of this single-threaded process (the caller's contract).
    let helper = unsafe { libc::fork() };
    if helper < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if helper == 0 {
        drop(r);
        // The outside network namespace first, while this is still the host's root (a
        // zone's user namespace has no power over it): its loopback up, its ports below
        // 1024 open to the zone's root. Then the joined zone's namespaces, then init.
        let entered = (|| -> std::io::Result<()> {
            if let Some(f) = &netfd {
                // SAFETY: setns with a namespace file we hold.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                child::loopback_up()?;
                std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")?;
            }
            if let Some(fd) = &pidfd {
                let mut ns = libc::CLONE_NEWUSER | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
                if netfd.is_none() {
                    ns |= libc::CLONE_NEWNET;
                }
                // SAFETY: setns with a pidfd we hold.
                if unsafe { libc::setns(fd.as_raw_fd(), ns) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })();
        let mut flags = libc::CLONE_PARENT | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::SIGCHLD;
        if pidfd.is_none() {
            // Only the network is another's: the rest is the zone's own, as at any start.
            flags |= libc::CLONE_NEWUSER | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
        }
        let pid = match &entered {
            // SAFETY: clone without a new stack (fork-like) of this single-threaded helper.
            Ok(()) => unsafe {
                libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0, 0, 0, 0) as i32
            },
            Err(_) => -1,
        };
        if pid == 0 {
            return Ok(0);
        }
        let report = match (pid, entered) {
            (p, _) if p > 0 => format!("{p}"),
            (_, Err(e)) => format!("e{e}"),
            _ => format!("e{}", std::io::Error::last_os_error()),
        };
        let _ = nix::unistd::write(&w, report.as_bytes());
        // SAFETY: _exit ends the helper without the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(w);
    let mut report = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut report);
    let _ = waitpid(Pid::from_raw(helper), None);
    match report.parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(std::io::Error::other(format!(
            "cannot enter the namespaces of the zone it joins: {}",
            report.strip_prefix('e').unwrap_or("the helper ended")
        ))),
    }
}

/// Tells whoever started zoned that the zone did not start and that its state file now
/// says why (stopped, with the error): one byte `e` on stdout. Without it the starter sees
/// only EOF, which comes while this process is still tearing down its namespaces, before
/// it is a zombie: vmmd would take that for a start that hangs and report a timeout instead
/// of the error (a failed exec of init, say). After a start stdout is /dev/null and the
/// byte goes nowhere.
fn notify_failed() {
    let _ = nix::unistd::write(std::io::stdout(), b"e");
}

/// Tells whoever started zoned that the zone's init runs: one byte on stdout (vmmd holds the
/// pipe's other end and waits for it; EOF instead means zoned ended), then stdout becomes
/// /dev/null so that nothing later writes to a pipe nobody reads.
fn notify_started() {
    let _ = nix::unistd::write(std::io::stdout(), b"r");
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 of a descriptor we own onto stdout.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

fn bind(path: &Path) -> Result<UnixListener, RunError> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(sys_io(format!("listen on {}", path.display())))?;
    l.set_nonblocking(true)
        .map_err(sys_io(format!("set up {}", path.display())))?;
    Ok(l)
}

fn recv_fd(sock: &UnixStream) -> Option<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel installed this descriptor for us with SCM_RIGHTS.
            return Some(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    None
}
