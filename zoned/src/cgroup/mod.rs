//! Zone cgroups on cgroup v2, pure v1 and the hybrid layout (v1 controllers beside an empty
//! cgroup2 mount). This module owns creating, limiting, populating, killing and removing one
//! zone's cgroup directories. It never touches cgroups it was not named for, never uses the v1
//! cpuset hierarchy, and never signals pid 0, negative pids or its own process.
//!
//! Mount points come from mountinfo text and are carried by [`Layout`], so unit tests point
//! the code at a temporary tree of plain files that mimics cgroupfs.
//!
//! What every version shares (names, directories, cgroup.procs, removal, the kill loop) is
//! here; what differs sits behind the private [`Version`] trait, implemented once in `v1`
//! and once in `v2`. The hybrid layout is v1: its cgroup2 mount holds no controller and is
//! only reported.

mod v1;
mod v2;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Display;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use hull_sys::IoError;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// CFS period in microseconds; a cap of N percent is a quota of N * 1000 per period.
const CPU_PERIOD_US: u64 = 100_000;
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const RMDIR_TIMEOUT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);

/// Resource limits of a zone, in SmartOS terms. `None` means unlimited or the kernel default.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// max_physical_memory: v2 `memory.max`, v1 `memory.limit_in_bytes`.
    pub memory_bytes: Option<u64>,
    /// max_swap, RAM plus swap: v1 `memory.memsw.limit_in_bytes` (raised to at least the
    /// memory limit; with no memory limit it also becomes the memory limit), v2
    /// `memory.swap.max` = swap_bytes - memory_bytes (saturating).
    pub swap_bytes: Option<u64>,
    /// cpu_cap: percent of one CPU (100 = one CPU). `None` or 0 is unlimited.
    pub cpu_cap_pct: Option<u32>,
    /// cpu_shares: v1 `cpu.shares` (2..=262144), v2 `cpu.weight` scaled to 1..=10000.
    pub cpu_shares: Option<u32>,
    /// max_lwps: `pids.max`.
    pub max_lwps: Option<u64>,
    /// zfs_io_priority: v2 `io.weight` (1..=10000) or `io.bfq.weight`; v1 `blkio.weight`
    /// (10..=1000) or `blkio.bfq.weight`. Missing files give a note, not an error.
    pub io_weight: Option<u32>,
}

/// One mounted v1 hierarchy and the controllers hull uses from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mount: PathBuf,
    /// The controllers hull uses from it, e.g. `["cpu", "cpuacct"]` when co-mounted.
    pub controllers: Vec<String>,
}

/// Which cgroup layout the host has, with the mount points to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Unified hierarchy only: every controller lives under `mount`.
    V2 { mount: PathBuf },
    /// v1 controller hierarchies; `unified` is the controller-less cgroup2 mount of the
    /// hybrid layout, if any (it is not used, only reported).
    V1 {
        hierarchies: Vec<Hierarchy>,
        unified: Option<PathBuf>,
    },
}

impl Layout {
    /// Detects the layout of this host from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Layout, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        Layout::detect_at(&read(path)?)
    }

    /// Detects the layout described by mountinfo text. Any v1 hierarchy carrying a controller
    /// hull uses makes it v1 (hybrid if a cgroup2 mount exists too); otherwise a cgroup2
    /// mount (`/sys/fs/cgroup` preferred) makes it v2. The first mount of each controller wins.
    pub fn detect_at(mountinfo: &str) -> Result<Layout, CgroupError> {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        let mut unified: Option<PathBuf> = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount) = left.split(' ').nth(4).map(unescape) else {
                continue;
            };
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or_default();
            let options = right.nth(1).unwrap_or_default();
            if fstype == "cgroup2" {
                if unified.is_none() || mount == Path::new("/sys/fs/cgroup") {
                    unified = Some(mount);
                }
            } else if fstype == "cgroup" {
                let taken: BTreeSet<&str> = hierarchies
                    .iter()
                    .flat_map(|h| h.controllers.iter().map(String::as_str))
                    .collect();
                let controllers: Vec<String> = options
                    .split(',')
                    .filter(|o| v1::CONTROLLERS.contains(o) && !taken.contains(o))
                    .map(str::to_owned)
                    .collect();
                if !controllers.is_empty() {
                    hierarchies.push(Hierarchy { mount, controllers });
                }
            }
        }
        match (hierarchies.is_empty(), unified) {
            (false, unified) => Ok(Layout::V1 {
                hierarchies,
                unified,
            }),
            (true, Some(mount)) => Ok(Layout::V2 { mount }),
            (true, None) => Err(CgroupError::NoMounts),
        }
    }

    /// `"v2"`, `"v1"` or `"hybrid"`.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "v2",
            Layout::V1 { unified: None, .. } => "v1",
            Layout::V1 { .. } => "hybrid",
        }
    }
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo path.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, b| n.wrapping_mul(8) + (b - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Errors of cgroup management; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup or cgroup2 file system is mounted")]
    NoMounts,
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid pid {0}: only positive pids can join a cgroup")]
    InvalidPid(i32),
    #[error("cgroup {} does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("cannot set a {0} limit: no v1 {0} hierarchy is mounted")]
    NoController(&'static str),
    #[error("cannot set a limit: {} does not exist (controller not enabled here?)", .0.display())]
    MissingFile(PathBuf),
    #[error("{0}")]
    Unsupported(String),
    /// Reading, creating, renaming or removing a cgroup file or directory.
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("cannot write {value} to {}", path.display())]
    Write {
        value: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot send SIGKILL to process {pid} of {}", path.display())]
    Signal {
        pid: i32,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("processes {pids:?} are still in {} after {secs} s of SIGKILL", path.display())]
    Survivors {
        path: PathBuf,
        pids: Vec<i32>,
        secs: u64,
    },
}

fn read(path: &Path) -> Result<String, CgroupError> {
    Ok(fs::read_to_string(path).map_err(IoError::wrap("read", path))?)
}

/// What differs between cgroup versions, implemented once per version: `v1::V1` (also the
/// hybrid layout) and `v2::V2`. [`Cgroup`] holds the directories and calls these.
trait Version: std::fmt::Debug + Sync {
    /// The directory of `dirs` holding `controller` (on v2, the one directory).
    fn dir<'a>(&self, dirs: &'a [Dir], controller: &str) -> Option<&'a Path>;
    /// Readies `parent` before a directory is made in it (v2 delegates the controllers).
    fn before_mkdir(&self, parent: &Path) -> Result<(), CgroupError>;
    /// Applies `limits` (see [`Cgroup::set_limits`]).
    fn set_limits(&self, cg: &Cgroup, limits: &Limits) -> Result<Vec<String>, CgroupError>;
    /// Kills every process at once where the kernel can (v2 `cgroup.kill`); false if not.
    fn kill(&self, cg: &Cgroup) -> Result<bool, CgroupError>;
    /// Freezes or thaws the cgroup, if this host can; false when it has no freezer.
    fn freeze(&self, cg: &Cgroup, frozen: bool) -> Result<bool, CgroupError>;
    /// OOM kills so far, if known.
    fn oom_kills(&self, cg: &Cgroup) -> Option<u64>;
    /// CPU time used in nanoseconds, if known.
    fn cpu_usage_ns(&self, cg: &Cgroup) -> Option<u64>;
}

/// A cap of N percent of one CPU as a CFS quota per [`CPU_PERIOD_US`]; `None` is unlimited.
fn cpu_quota_us(limits: &Limits) -> Option<u64> {
    limits
        .cpu_cap_pct
        .filter(|&pct| pct > 0)
        .map(|pct| u64::from(pct) * 1000)
}

/// One directory of the cgroup: the whole cgroup on v2, one hierarchy's part of it on v1.
#[derive(Debug, Clone)]
struct Dir {
    path: PathBuf,
    mount: PathBuf,
    controllers: Vec<String>,
}

/// One zone's cgroup: a directory per hierarchy used.
#[derive(Debug, Clone)]
pub struct Cgroup {
    v2: bool,
    dirs: Vec<Dir>,
}

impl Cgroup {
    /// What differs for this cgroup's version.
    fn version(&self) -> &'static dyn Version {
        match self.v2 {
            true => &v2::V2,
            false => &v1::V1,
        }
    }

    /// Creates `name` (a relative path like `"hull/<uuid>"`) in every hierarchy used,
    /// enabling the needed controllers in every v2 ancestor, and applies `limits`. An
    /// existing cgroup is reused and its limits re-applied. On error, removes the
    /// directories it created. Returns the cgroup and notes about limits this host cannot
    /// apply.
    pub fn create(
        layout: &Layout,
        name: &str,
        limits: &Limits,
    ) -> Result<(Cgroup, Vec<String>), CgroupError> {
        let cgroup = Cgroup::at(layout, name)?;
        let mut created = Vec::new();
        let result = (cgroup.make_dirs(&mut created)).and_then(|()| cgroup.set_limits(limits));
        match result {
            Ok(notes) => Ok((cgroup, notes)),
            Err(e) => {
                for dir in created.iter().rev() {
                    let _ = rmdir_retry(dir);
                }
                Err(e)
            }
        }
    }

    /// Takes over the v1 cgroup `spare`, made earlier by a spare zoned that moved itself into
    /// it (see `zoned spare`): renames it to `name` in every hierarchy (a sibling of `spare`;
    /// cgroupfs v1 renames within one parent) and applies `limits`. A process cloned by the
    /// spare from then on starts inside the zone's cgroup, without the cgroup.procs write
    /// that waits for an RCU grace period. A leftover empty `name` is removed first. On error
    /// every directory is renamed back. Cgroup v2 cannot rename (it has CLONE_INTO_CGROUP).
    pub fn adopt(
        layout: &Layout,
        spare: &str,
        name: &str,
        limits: &Limits,
    ) -> Result<(Cgroup, Vec<String>), CgroupError> {
        let from = Cgroup::at(layout, spare)?;
        let to = Cgroup::at(layout, name)?;
        if to.v2 {
            let name = name.to_owned();
            let reason = "cgroup v2 cannot rename a cgroup; the zone's init is cloned into it";
            return Err(CgroupError::InvalidName { name, reason });
        }
        if Path::new(spare).parent() != Path::new(name).parent() {
            let name = name.to_owned();
            let reason = "a spare cgroup can only be renamed within its parent";
            return Err(CgroupError::InvalidName { name, reason });
        }
        let notes = v1::adopt(&from, &to, limits)?;
        Ok((to, notes))
    }

    /// Moves `pid` out of this cgroup into its parent, in every hierarchy (a spare zoned
    /// leaving the zone's cgroup once init runs in it; v1 lets a parent hold processes).
    pub fn move_to_parent(&self, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            return Err(CgroupError::InvalidPid(pid));
        }
        for dir in &self.dirs {
            let parent = dir.path.parent().unwrap_or(&dir.mount);
            write_file(&parent.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Whether every directory of this cgroup lists `pid` in its cgroup.procs.
    pub fn holds(&self, pid: i32) -> bool {
        let listed = |d: &Dir| {
            fs::read_to_string(d.path.join("cgroup.procs"))
                .is_ok_and(|t| t.lines().any(|l| l.trim().parse() == Ok(pid)))
        };
        self.dirs.iter().all(listed)
    }

    /// Opens an existing cgroup (after a daemon restart); [`CgroupError::NotFound`] names the
    /// first of its directories that is missing.
    pub fn open(layout: &Layout, name: &str) -> Result<Cgroup, CgroupError> {
        let cgroup = Cgroup::at(layout, name)?;
        match cgroup.dirs.iter().find(|d| !d.path.is_dir()) {
            Some(d) => Err(CgroupError::NotFound(d.path.clone())),
            None => Ok(cgroup),
        }
    }

    /// The cgroup `name` would be, without touching the file system.
    pub fn at(layout: &Layout, name: &str) -> Result<Cgroup, CgroupError> {
        let bad = |c: &str| c.is_empty() || c == "." || c == "..";
        if name.starts_with('/') || name.split('/').any(bad) {
            let reason = "must be a relative path without empty, \".\" or \"..\" components";
            let name = name.to_owned();
            return Err(CgroupError::InvalidName { name, reason });
        }
        let dir = |mount: &PathBuf, controllers: &[String]| Dir {
            path: mount.join(name),
            mount: mount.clone(),
            controllers: controllers.to_vec(),
        };
        let (v2, dirs): (bool, Vec<Dir>) = match layout {
            Layout::V2 { mount } => (true, vec![dir(mount, &[])]),
            Layout::V1 { hierarchies, .. } => {
                let mut seen = BTreeSet::new();
                let hierarchies = hierarchies.iter().filter(|h| seen.insert(&h.mount));
                (
                    false,
                    hierarchies.map(|h| dir(&h.mount, &h.controllers)).collect(),
                )
            }
        };
        match dirs.is_empty() {
            true => Err(CgroupError::NoMounts),
            false => Ok(Cgroup { v2, dirs }),
        }
    }

    /// Makes every missing directory from each mount down, recording those it made.
    fn make_dirs(&self, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let relative = dir.path.strip_prefix(&dir.mount).unwrap_or(&dir.path);
            let mut parent = dir.mount.clone();
            for component in relative.components() {
                self.version().before_mkdir(&parent)?;
                let child = parent.join(component);
                if !child.is_dir() {
                    fs::create_dir(&child).map_err(IoError::wrap("create", &child))?;
                    created.push(child.clone());
                    copy_cpuset(&parent, &child)?;
                }
                parent = child;
            }
            // The zone's own directory readable by all (zoned's umask makes it 0700), so that
            // the zone's root, which is not the host's, can read it where it is mounted in
            // the zone (the directories above stay closed to the host's other users).
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755))
                .map_err(IoError::wrap("open to the zone", &dir.path))?;
        }
        Ok(())
    }

    /// Applies `limits` to the live cgroup; `None` fields go back to unlimited or the default.
    /// Returns notes about limits this host cannot apply (missing swap or io weight files).
    pub fn set_limits(&self, limits: &Limits) -> Result<Vec<String>, CgroupError> {
        self.version().set_limits(self, limits)
    }

    /// The directory holding `controller` (on v2, the one directory).
    fn dir(&self, controller: &str) -> Option<&Path> {
        self.version().dir(&self.dirs, controller)
    }

    /// Writes `value`, or `default` when there is none, to `file` beside `controller`. A
    /// missing controller or file is an error only when a value was given.
    fn put(
        &self,
        controller: &'static str,
        file: &str,
        value: Option<impl Display>,
        default: &str,
    ) -> Result<(), CgroupError> {
        let required = value.is_some();
        let text = value.map_or_else(|| default.to_owned(), |v| v.to_string());
        if self.offer(controller, file, &text)? || !required {
            return Ok(());
        }
        Err(match self.dir(controller) {
            Some(dir) => CgroupError::MissingFile(dir.join(file)),
            None => CgroupError::NoController(controller),
        })
    }

    /// Writes `value` to `file` beside `controller` if both exist; says whether it did.
    fn offer(&self, controller: &str, file: &str, value: &str) -> Result<bool, CgroupError> {
        match self.dir(controller).map(|d| d.join(file)) {
            Some(path) if path.exists() => write_file(&path, value).map(|()| true),
            _ => Ok(false),
        }
    }

    /// Moves `pid` (and its threads) into the cgroup, in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            return Err(CgroupError::InvalidPid(pid));
        }
        for dir in &self.dirs {
            write_file(&dir.path.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Every process in the cgroup or its descendants, in any hierarchy, sorted.
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = BTreeSet::new();
        for dir in &self.dirs {
            if !dir.path.is_dir() {
                return Err(CgroupError::NotFound(dir.path.clone()));
            }
            for sub in subtree(&dir.path) {
                let path = sub.join("cgroup.procs");
                match fs::read_to_string(&path) {
                    Ok(text) => {
                        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(IoError::new("read", path, e).into()),
                }
            }
        }
        Ok(pids.into_iter().filter(|&p| p > 0).collect())
    }

    /// Kills every process in the cgroup: v2 `cgroup.kill` where the kernel has it, else
    /// freeze, SIGKILL each process, thaw, until empty. Gives up after 5 s naming survivors.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        let me = nix::unistd::getpid().as_raw();
        let path = self
            .dirs
            .first()
            .map(|d| d.path.clone())
            .unwrap_or_default();
        loop {
            // The caller itself may sit in the cgroup (a spare zoned before it leaves).
            let pids: Vec<i32> = self.procs()?.into_iter().filter(|&p| p != me).collect();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let secs = KILL_TIMEOUT.as_secs();
                return Err(CgroupError::Survivors { path, pids, secs });
            }
            if !self.version().kill(self)? {
                // Never freeze the caller: it would not wake to thaw.
                let inside = self.procs()?.contains(&me);
                if !inside {
                    let _ = self.freeze(true)?;
                }
                // Re-read once frozen: children forked before the freeze are caught here.
                let killed = self.procs().and_then(|pids| {
                    let mut others = pids.into_iter().filter(|&pid| pid != me);
                    others.try_for_each(|pid| match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                        Ok(()) | Err(Errno::ESRCH) => Ok(()),
                        Err(source) => {
                            let path = path.clone();
                            Err(CgroupError::Signal { pid, path, source })
                        }
                    })
                });
                if !inside {
                    let _ = self.freeze(false)?;
                }
                killed?;
            }
            sleep(POLL);
        }
    }

    /// Freezes or thaws through `cgroup.freeze` (v2) or `freezer.state` (v1), if present.
    fn freeze(&self, frozen: bool) -> Result<bool, CgroupError> {
        self.version().freeze(self, frozen)
    }

    /// Pauses (freezes) or resumes (thaws) every process of the zone: an error on a host
    /// without a freezer, rather than a pause that did nothing.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        match self.freeze(frozen)? {
            true => Ok(()),
            false => Err(CgroupError::Unsupported(
                "this host's cgroups have no freezer (cgroup.freeze or freezer.state)".into(),
            )),
        }
    }

    /// Removes the cgroup and any descendants in every hierarchy, retrying while exiting
    /// tasks keep it busy (about 1 s). An absent cgroup is fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut subs = self.dirs.iter().flat_map(|d| subtree(&d.path));
        subs.try_for_each(|sub| rmdir_retry(&sub))
    }

    /// OOM kills so far: v2 `memory.events` oom_kill, v1 `memory.oom_control`; 0 if unknown.
    pub fn oom_kills(&self) -> u64 {
        self.version().oom_kills(self).unwrap_or(0)
    }

    /// CPU time used in nanoseconds: v2 `cpu.stat` usage_usec, v1 `cpuacct.usage`.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        self.version().cpu_usage_ns(self)
    }

    /// Reads the number after `key` in a "key value" per line file.
    fn read_key(&self, controller: &str, file: &str, key: &str) -> Option<u64> {
        let text = read(&self.dir(controller)?.join(file)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// One number in `file` beside `controller`; "max" (no limit) and a missing file are
    /// `None`.
    fn read_number(&self, controller: &str, file: &str) -> Option<u64> {
        read(&self.dir(controller)?.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The zone's figures: CPU time, memory, processes, OOM events (v2 files, or v1's
    /// cpuacct, memory and pids where those are what the host has).
    pub fn usage(&self) -> hull_vmm_proto::Usage {
        let us = |n: Option<u64>| n.and_then(|n| n.checked_mul(1000));
        if self.v2 {
            // A v2 limit file says "max" when there is none: read_number makes that None.
            return hull_vmm_proto::Usage {
                cpu_usage_ns: us(self.read_key("cpu", "cpu.stat", "usage_usec")),
                cpu_user_ns: us(self.read_key("cpu", "cpu.stat", "user_usec")),
                cpu_system_ns: us(self.read_key("cpu", "cpu.stat", "system_usec")),
                cpu_periods: self.read_key("cpu", "cpu.stat", "nr_periods"),
                cpu_throttled_periods: self.read_key("cpu", "cpu.stat", "nr_throttled"),
                cpu_throttled_ns: us(self.read_key("cpu", "cpu.stat", "throttled_usec")),
                memory_bytes: self.read_number("memory", "memory.current"),
                memory_limit_bytes: self.read_number("memory", "memory.max"),
                memory_anon_bytes: self.read_key("memory", "memory.stat", "anon"),
                memory_file_bytes: self.read_key("memory", "memory.stat", "file"),
                swap_bytes: self.read_number("memory", "memory.swap.current"),
                swap_limit_bytes: self.read_number("memory", "memory.swap.max"),
                pids: self.read_number("pids", "pids.current"),
                pids_limit: self.read_number("pids", "pids.max"),
                memory_limit_hits: self.read_key("memory", "memory.events", "max"),
                oom_kills: self.oom_kills_known(),
            };
        }
        // v1: "no limit" is a huge number there (PAGE_COUNTER_MAX pages).
        let limit = |n: Option<u64>| n.filter(|&n| n < (1 << 62));
        let mem = self.read_number("memory", "memory.usage_in_bytes");
        let memsw = self.read_number("memory", "memory.memsw.usage_in_bytes");
        hull_vmm_proto::Usage {
            cpu_usage_ns: self.read_number("cpuacct", "cpuacct.usage"),
            cpu_user_ns: self.read_number("cpuacct", "cpuacct.usage_user"),
            cpu_system_ns: self.read_number("cpuacct", "cpuacct.usage_sys"),
            cpu_periods: self.read_key("cpu", "cpu.stat", "nr_periods"),
            cpu_throttled_periods: self.read_key("cpu", "cpu.stat", "nr_throttled"),
            cpu_throttled_ns: self.read_key("cpu", "cpu.stat", "throttled_time"),
            memory_bytes: mem,
            memory_limit_bytes: limit(self.read_number("memory", "memory.limit_in_bytes")),
            memory_anon_bytes: self.read_key("memory", "memory.stat", "rss"),
            memory_file_bytes: self.read_key("memory", "memory.stat", "cache"),
            swap_bytes: memsw.zip(mem).map(|(sw, m)| sw.saturating_sub(m)),
            swap_limit_bytes: None,
            pids: self.read_number("pids", "pids.current"),
            pids_limit: self.read_number("pids", "pids.max"),
            memory_limit_hits: self.read_number("memory", "memory.failcnt"),
            oom_kills: self.oom_kills_known(),
        }
    }

    fn oom_kills_known(&self) -> Option<u64> {
        self.version().oom_kills(self)
    }

    /// Whether this is a cgroup v2 cgroup (one directory holding every controller).
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// Forks the calling process with the extra clone `flags` (namespaces), the child born
    /// inside this cgroup: clone3(CLONE_INTO_CGROUP), cgroup v2 only. No cgroup.procs write,
    /// so no wait for the RCU grace period a migration takes. Returns the child's pid in the
    /// parent and 0 in the child, like fork(2).
    ///
    /// # Safety
    /// As fork(2): the caller must be single-threaded, and the child must only do what is
    /// safe after fork before it execs or exits.
    pub unsafe fn clone_into(&self, flags: u64) -> io::Result<i32> {
        let dir = match (self.v2, self.dirs.first()) {
            (true, Some(d)) => &d.path,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        // SAFETY: the caller's contract is this function's.
        unsafe { v2::clone_into(dir, flags) }
    }

    /// Every directory of this cgroup, one per hierarchy used.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }
}

/// A new v1 cpuset directory starts empty and refuses tasks; give it its parent's sets. (Done
/// on either version, wherever a cpuset file sits beside the new directory.)
fn copy_cpuset(parent: &Path, child: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let (from, to) = (parent.join(file), child.join(file));
        if to.exists() && from.exists() {
            write_file(&to, read(&from)?.trim())?;
        }
    }
    Ok(())
}

/// Writes `value` in one write(2), never creating the file (cgroupfs files are fixed).
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let file = OpenOptions::new().write(true).truncate(true).open(path);
    (file.and_then(|mut f| f.write_all(value.as_bytes()))).map_err(|source| CgroupError::Write {
        value: value.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// `dir` and every directory below it, deepest first (the order rmdir needs).
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(subtree(&entry.path()));
        }
    }
    if dir.is_dir() {
        out.push(dir.to_owned());
    }
    out
}

/// rmdir, retrying EBUSY for a while (tasks still exiting); an absent directory is fine.
fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    loop {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                sleep(POLL)
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(IoError::new("remove", dir, e).into());
            }
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::*;
    use v2::tests::v2_tree;

    /// Creates `dir` holding `files` ("name=value", separated by ';').
    pub(super) fn fake(dir: &Path, files: &str) {
        fs::create_dir_all(dir).unwrap();
        for (name, value) in files.split(';').filter_map(|f| f.split_once('=')) {
            fs::write(dir.join(name.trim()), value).unwrap();
        }
    }

    /// The contents of the space-separated `files` in `dir`, joined with '|'.
    pub(super) fn snap(dir: &Path, files: &str) -> String {
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        files
            .split(' ')
            .map(|f| read(f).trim().to_owned())
            .collect::<Vec<_>>()
            .join("|")
    }

    fn hierarchies(layout: &Layout) -> Vec<String> {
        let Layout::V1 { hierarchies, .. } = layout else {
            panic!("not v1: {layout:?}")
        };
        let show = |h: &Hierarchy| format!("{}={}", h.mount.display(), h.controllers.join("+"));
        hierarchies.iter().map(show).collect()
    }

    #[test]
    fn detects_hybrid_v1_and_v2() {
        let controllers = "cpu cpuacct cpuset memory devices freezer name=systemd";
        let line = |c| format!("9 1 0:9 / /sys/fs/cgroup/{c} rw - cgroup cgroup rw,{c}\n");
        let mut host: String = controllers.split(' ').map(line).collect();
        host += "41 1 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let layout = Layout::detect_at(&host).unwrap();
        assert_eq!(layout.name(), "hybrid");
        let want = "cpu=cpu cpuacct=cpuacct memory=memory freezer=freezer";
        let want: Vec<_> = want
            .split(' ')
            .map(|h| format!("/sys/fs/cgroup/{h}"))
            .collect();
        assert_eq!(hierarchies(&layout), want);

        // Co-mounted controllers, an escaped mount point, a second mount of memory.
        let v1 = "1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpuacct,cpu\n\
                  2 0 0:2 / /my\\040cg/memory rw shared:5 - cgroup none rw,memory\n\
                  3 0 0:3 / /other/memory rw - cgroup none rw,memory\n";
        let layout = Layout::detect_at(v1).unwrap();
        assert_eq!(layout.name(), "v1");
        let want = "/sys/fs/cgroup/cpu,cpuacct=cpuacct+cpu|/my cg/memory=memory";
        assert_eq!(hierarchies(&layout).join("|"), want);

        let v2 = "1 0 0:1 / /run/other rw - cgroup2 cgroup2 rw\n\
                  2 0 0:2 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n\
                  3 0 0:3 / /run/systemd rw - cgroup cgroup rw,name=systemd\n";
        let layout = Layout::detect_at(v2).unwrap();
        assert_eq!(layout.name(), "v2");
        assert!(matches!(layout, Layout::V2 { mount } if mount == Path::new("/sys/fs/cgroup")));
        let none = Layout::detect_at("1 0 0:1 / / rw - ext4 /dev/vda rw\ngarbage\n");
        assert!(matches!(none, Err(CgroupError::NoMounts)), "{none:?}");
    }

    #[test]
    fn rejects_bad_names_and_pids() {
        let layout = Layout::V2 {
            mount: "/nonexistent".into(),
        };
        for name in ["", "/abs", "a/../b", "a//b", ".", "a/"] {
            let err = Cgroup::at(&layout, name).unwrap_err();
            assert!(matches!(err, CgroupError::InvalidName { .. }), "{name:?}");
        }
        let cg = Cgroup::at(&layout, "hull/z").unwrap();
        assert!(matches!(cg.add_pid(0), Err(CgroupError::InvalidPid(0))));
        let err = Cgroup::open(&layout, "hull/z").unwrap_err();
        assert_eq!(err.to_string(), "cgroup /nonexistent/hull/z does not exist");
    }

    #[test]
    fn failed_create_removes_what_it_made_and_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = v2_tree(tmp.path());
        let limits = Limits {
            max_lwps: Some(1),
            ..Limits::default()
        };
        let err = Cgroup::create(&layout, "hull/new/zone", &limits).unwrap_err();
        let file = tmp.path().join("hull/new/zone/pids.max");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert!(!tmp.path().join("hull/new").exists());
        assert!(
            tmp.path().join("hull").exists(),
            "pre-existing parents stay"
        );

        // Without limits nothing is required: the bare directories are created and removed.
        let (cg, _) = Cgroup::create(&layout, "hull/new/zone", &Limits::default()).unwrap();
        fs::create_dir(cg.paths()[0].join("child")).unwrap();
        cg.remove().unwrap();
        assert!(!cg.paths()[0].exists());
        cg.remove().unwrap();
    }

    /// Kills and removes the test's top cgroup (and the child) even when an assertion fails.
    struct Guard(Layout, String, Option<std::process::Child>);

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(child) = &mut self.2 {
                let _ = (child.kill(), child.wait());
            }
            if let Ok(cg) = Cgroup::at(&self.0, &self.1) {
                let _ = (cg.kill_all(), cg.remove());
            }
        }
    }

    /// A guard for a fresh top cgroup name, and the zone's name below it.
    fn root_setup() -> (Guard, String) {
        let nanos = std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
        let top = format!("hull-test-{}-{nanos}", std::process::id());
        let zone = format!("{top}/zone");
        (Guard(Layout::detect().unwrap(), top, None), zone)
    }

    /// As [`root_setup`], on this host's cgroup2 mount even where it is the controller-less
    /// one of the hybrid layout; `None` without one.
    fn root_setup_v2() -> Option<(Guard, String)> {
        let (mut guard, zone) = root_setup();
        if let Layout::V1 { unified, .. } = &guard.0 {
            guard.0 = Layout::V2 {
                mount: unified.clone()?,
            };
        }
        Some((guard, zone))
    }

    /// Checks "file=value" pairs (';'-separated) of a real cgroup; "memory.max" is looked up
    /// beside the memory controller, "cpu.shares" beside cpu, and so on.
    pub(super) fn check(cg: &Cgroup, want: &str) {
        for (file, value) in want.split(';').filter_map(|f| f.split_once('=')) {
            let controller = file.split('.').next().unwrap();
            assert_eq!(snap(cg.dir(controller).unwrap(), file), value, "{file}");
        }
    }

    #[test]
    #[ignore = "needs root and cgroups: run with --run-ignored"]
    fn root_detect_matches_mountinfo() {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        fn fs_opts(line: &str) -> Option<(&str, &str)> {
            let mut right = line.split_once(" - ")?.1.split(' ');
            Some((right.next()?, right.nth(1)?))
        }
        let mounts: Vec<_> = info.lines().filter_map(fs_opts).collect();
        let memory = |o: &str| o.split(',').any(|c| c == "memory");
        let v1 = mounts.iter().any(|(t, o)| *t == "cgroup" && memory(o));
        let v2 = mounts.iter().any(|(t, _)| *t == "cgroup2");
        let layout = Layout::detect().unwrap();
        let want = [["v2", "v2"], ["v1", "hybrid"]][usize::from(v1)][usize::from(v2)];
        assert_eq!(layout.name(), want, "{layout:?}");
        if let Layout::V1 {
            unified: Some(path),
            ..
        } = &layout
        {
            assert!(path.join("cgroup.procs").exists(), "{layout:?}");
        }
    }

    #[test]
    #[ignore = "needs root and cgroups: run with --run-ignored"]
    fn root_lifecycle_limits_kill_remove() {
        let (mut guard, zone) = root_setup();
        let mut limits = Limits::default();
        (limits.memory_bytes, limits.cpu_cap_pct) = (Some(64 << 20), Some(50));
        limits.max_lwps = Some(20);
        let (cg, notes) = Cgroup::create(&guard.0, &zone, &limits).unwrap();
        eprintln!(
            "{} layout, notes {notes:?}, paths {:?}",
            guard.0.name(),
            cg.paths()
        );
        check(
            &cg,
            match cg.v2 {
                true => "pids.max=20;memory.max=67108864;cpu.max=50000 100000",
                false => "pids.max=20;memory.limit_in_bytes=67108864;cpu.cfs_quota_us=50000",
            },
        );
        if !cg.v2 {
            check(&cg, "cpu.cfs_period_us=100000");
        }
        assert_eq!((cg.oom_kills(), cg.cpu_usage_ns().is_some()), (0, true));
        fork_kill_remove(&mut guard, &cg, &zone);
    }

    /// The v2 mechanics (cgroup.kill, nested creation) on whatever cgroup2 mount this host
    /// has, even the controller-less one of the hybrid layout.
    #[test]
    #[ignore = "needs root and cgroups: run with --run-ignored"]
    fn root_v2_kill_on_the_cgroup2_mount() {
        let Some((mut guard, zone)) = root_setup_v2() else {
            return eprintln!("SKIP: no cgroup2 mount");
        };
        let (cg, notes) = Cgroup::create(&guard.0, &zone, &Limits::default()).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        fork_kill_remove(&mut guard, &cg, &zone);
    }

    /// clone3(CLONE_INTO_CGROUP) on whatever cgroup2 mount this host has: the child is
    /// born in the cgroup, with the namespaces asked for.
    #[test]
    #[ignore = "needs root and cgroups: run with --run-ignored"]
    fn root_clone_into_a_v2_cgroup() {
        let Some((guard, zone)) = root_setup_v2() else {
            return eprintln!("SKIP: no cgroup2 mount");
        };
        let (cg, _) = Cgroup::create(&guard.0, &zone, &Limits::default()).unwrap();
        let host = Cgroup::at(&Layout::detect().unwrap(), &zone).unwrap();
        if !host.is_v2() {
            // SAFETY: refused before any clone on v1.
            let e = unsafe { host.clone_into(0) }.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        }
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the test's child only reads a file, writes a pipe and _exits.
        let pid = unsafe { cg.clone_into(libc::CLONE_NEWUTS as u64) }.unwrap();
        if pid == 0 {
            let cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let line = cgroup.lines().find(|l| l.starts_with("0::")).unwrap_or("");
            let uts = fs::read_link("/proc/self/ns/uts").unwrap_or_default();
            let text = format!("{line} {}", uts.display());
            let _ = nix::unistd::write(&w, text.as_bytes());
            // SAFETY: ends the child without running the test harness's code.
            unsafe { libc::_exit(0) };
        }
        drop(w);
        let mut line = String::new();
        std::io::Read::read_to_string(&mut fs::File::from(r), &mut line).unwrap();
        let status = nix::sys::wait::waitpid(Pid::from_raw(pid), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(Pid::from_raw(pid), 0)
        );
        let (cgroup, uts) = line.split_once(' ').unwrap();
        assert_eq!(cgroup, format!("0::/{zone}"));
        let ours = fs::read_link("/proc/self/ns/uts").unwrap();
        assert_ne!(uts, ours.display().to_string(), "no new uts namespace");
        cg.remove().unwrap();
    }

    /// A spare cgroup holding a process becomes the zone's by rename, with limits; what the
    /// process forks then starts inside; the process leaves to the parent; bad renames undo.
    #[test]
    #[ignore = "needs root and cgroups: run with --run-ignored"]
    fn root_adopt_a_spare_then_leave_it() {
        let (mut guard, zone) = root_setup();
        if guard.0.name() == "v2" {
            let r = Cgroup::adopt(&guard.0, "a", "b", &Limits::default());
            return assert!(matches!(r, Err(CgroupError::InvalidName { .. })), "{r:?}");
        }
        let spare = format!("{}/.spare-x", guard.1);
        let (sp, _) = Cgroup::create(&guard.0, &spare, &Limits::default()).unwrap();
        let pid = shell_in(&mut guard, &sp, "read go; sleep 100 & wait");
        // Not a sibling: refused, nothing renamed.
        let r = Cgroup::adopt(&guard.0, &spare, "elsewhere/zone", &Limits::default());
        assert!(matches!(r, Err(CgroupError::InvalidName { .. })), "{r:?}");
        // The zone's name is taken (a cgroup with a child) in the last hierarchy: the
        // directories renamed before it are renamed back.
        let last = Cgroup::at(&guard.0, &zone).unwrap().paths().pop().unwrap();
        fs::create_dir_all(last.join("busy")).unwrap();
        let r = Cgroup::adopt(&guard.0, &spare, &zone, &Limits::default());
        assert!(matches!(r, Err(CgroupError::Io(_))), "{r:?}");
        assert!(sp.holds(pid) && sp.paths().iter().all(|p| p.is_dir()));
        fs::remove_dir(last.join("busy")).unwrap();
        fs::remove_dir(&last).unwrap();

        let limits = Limits {
            max_lwps: Some(50),
            ..Limits::default()
        };
        let (cg, _) = Cgroup::adopt(&guard.0, &spare, &zone, &limits).unwrap();
        assert!(sp.paths().iter().all(|p| !p.exists()));
        assert!(cg.holds(pid));
        check(&cg, "pids.max=50");
        let child = guard.2.as_mut().unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while cg.procs().unwrap().len() < 2 && Instant::now() < deadline {
            sleep(POLL);
        }
        cg.move_to_parent(pid).unwrap();
        let procs = cg.procs().unwrap();
        assert!(procs.len() == 1 && !procs.contains(&pid), "{procs:?}");
        let parent = Cgroup::open(&guard.0, &guard.1).unwrap();
        assert!(parent.holds(pid));
        cg.kill_all().unwrap();
        cg.remove().unwrap();
    }

    /// Starts `sh -c script` (the guard kills it), moves it into `cg`; returns its pid. The
    /// script reads its stdin, so it can wait for "go" until it is inside.
    fn shell_in(guard: &mut Guard, cg: &Cgroup, script: &str) -> i32 {
        let child = std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .spawn();
        let child = guard.2.insert(child.unwrap());
        let pid = i32::try_from(child.id()).unwrap();
        cg.add_pid(pid).unwrap();
        pid
    }

    /// Runs a shell in `cg` that forks two sleeps once inside, kills them all, removes `cg`.
    fn fork_kill_remove(guard: &mut Guard, cg: &Cgroup, zone: &str) {
        use std::os::unix::process::ExitStatusExt;
        let pid = shell_in(guard, cg, "read go; sleep 100 & sleep 100 & wait");
        assert_eq!(cg.procs().unwrap(), [pid]);
        let child = guard.2.as_mut().unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while cg.procs().unwrap().len() < 3 && Instant::now() < deadline {
            sleep(POLL);
        }
        let procs = Cgroup::open(&guard.0, zone).unwrap().procs().unwrap();
        assert!(procs.len() == 3 && procs.contains(&pid), "{procs:?}");

        cg.kill_all().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        guard.2 = None;
        assert!(cg.procs().unwrap().is_empty());
        cg.remove().unwrap();
        for path in cg.paths() {
            assert!(!path.exists(), "{} is still there", path.display());
        }
        let gone = Cgroup::open(&guard.0, zone);
        assert!(matches!(gone, Err(CgroupError::NotFound(_))), "{gone:?}");
    }

    #[test]
    #[ignore = "needs root and cgroups: run with --run-ignored"]
    fn root_set_limits_live_update() {
        let (guard, zone) = root_setup();
        let mut limits = Limits::default();
        (limits.memory_bytes, limits.swap_bytes) = (Some(64 << 20), Some(128 << 20));
        let (cg, notes) = Cgroup::create(&guard.0, &zone, &limits).unwrap();
        let memsw = !cg.v2 && notes.is_empty();
        (limits.cpu_cap_pct, limits.cpu_shares) = (Some(150), Some(512));
        (limits.max_lwps, limits.io_weight) = (Some(100), Some(200));
        // Lower RAM and raise swap, then raise RAM above the old RAM+swap limit.
        for (mem, swap) in [(32u64 << 20, 256u64 << 20), (512 << 20, 512 << 20)] {
            (limits.memory_bytes, limits.swap_bytes) = (Some(mem), Some(swap));
            eprintln!("notes {:?}", cg.set_limits(&limits).unwrap());
            check(
                &cg,
                &match cg.v2 {
                    true => format!("memory.max={mem};cpu.max=150000 100000;cpu.weight=20"),
                    false => format!(
                        "memory.limit_in_bytes={mem};cpu.cfs_quota_us=150000;cpu.shares=512"
                    ),
                },
            );
            check(&cg, "pids.max=100");
            if memsw {
                check(&cg, &format!("memory.memsw.limit_in_bytes={swap}"));
            }
            let io = [
                "io.weight",
                "io.bfq.weight",
                "blkio.weight",
                "blkio.bfq.weight",
            ];
            let dir = cg.dir(if cg.v2 { "io" } else { "blkio" }).unwrap();
            if let Some(f) = io.iter().find(|f| dir.join(f).exists()) {
                assert!(snap(dir, f).ends_with("200"), "{f}");
            }
        }
        cg.set_limits(&Limits::default()).unwrap();
        check(
            &cg,
            match cg.v2 {
                true => "pids.max=max;memory.max=max;cpu.max=max 100000",
                false => "pids.max=max;cpu.cfs_quota_us=-1;cpu.shares=1024",
            },
        );
        if !cg.v2 {
            let limit: u64 = snap(cg.dir("memory").unwrap(), "memory.limit_in_bytes")
                .parse()
                .unwrap();
            assert!(limit > 1 << 60, "memory limit {limit} is not unlimited");
        }
        drop(guard);
        assert!(
            cg.paths().iter().all(|p| !p.exists()),
            "the guard removes the test cgroups"
        );
    }
}
