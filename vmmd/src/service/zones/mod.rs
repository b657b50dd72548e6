//! vmmd's side of the zone runtime: starting `zoned run` as a process of its own session (so
//! it outlives vmmd), talking to its control socket and to a microVM's VMM, and finding
//! running zones again after a vmmd restart. What a zone's config says is
//! [`super::convert`]'s; the spare zoned is [`spare`]'s, a microVM's VMM kit [`kit`]'s.
//! Blocking calls: callers use spawn_blocking.

mod diskboot;
pub mod kit;
mod spare;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_spec::Vm;
use hull_sys::process::same_process;
use hull_vmm_proto::{ControlReply, ControlRequest};
use uuid::Uuid;

use zoned::config::{
    ID_RANGE, Phase, Reply, Request, RootIds, ZoneConfig, ZoneState, files, read_json, write_json,
};

use super::convert::microvm::{self, MicrovmError, MicrovmZone, VmmFiles};
use super::convert::zone::{GuestZone, ZoneRoot};

pub use diskboot::DiskBoot;
pub use kit::KitError;
use kit::shared_libraries;
use spare::Spare;

/// First host uid of the zone id ranges; zone N (a slot) gets base + N * 65536.
const ID_BASE: u32 = 0x1000_0000;
/// How many zones can run at once (slots of [`ID_RANGE`] ids below 2^32).
const SLOTS: u32 = (u32::MAX - ID_BASE) / ID_RANGE;
/// Longest wait for a zone's init to start.
const START_WAIT: Duration = Duration::from_secs(30);

/// Errors of the zone runtime as vmmd sees them. The reason is the source: the API reply's
/// `causes` and the CLI's line carry it.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The zone did not start; nothing of it runs.
    #[error("cannot start zone {uuid}")]
    Start {
        uuid: Uuid,
        #[source]
        source: StartError,
    },
    /// A request to a running zone's zoned or VMM failed, or the zone did not do what it
    /// was asked in time.
    #[error("zone {uuid}")]
    Control {
        uuid: Uuid,
        #[source]
        source: ControlError,
    },
    #[error("zone {0} has no root filesystem in the image store")]
    NoRoot(Uuid),
    #[error("no free uid range for another zone ({0} zones run)")]
    NoSlot(u32),
    #[error(transparent)]
    File(#[from] zoned::config::FileError),
}

/// A network namespace a bundle names (`/run/netns/NAME`, as CNI makes one): it must be a
/// network namespace file (nsfs) and not the host's own (vmmd's).
fn outside_netns(path: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let p = Path::new(path);
    let named = |why: &str| format!("the network namespace {path} {why}");
    let fs = nix::sys::statfs::statfs(p).map_err(|e| named(&format!("cannot be read: {e}")))?;
    if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(named("is not a namespace file"));
    }
    let (it, host) = (
        std::fs::metadata(p).map_err(|e| named(&e.to_string()))?,
        std::fs::metadata("/proc/self/ns/net").map_err(|e| named(&e.to_string()))?,
    );
    if (it.dev(), it.ino()) == (host.dev(), host.ino()) {
        return Err(named("is the host's: a zone never joins it"));
    }
    Ok(p.to_path_buf())
}

/// Why a zone did not start. Each reads after "cannot start zone <uuid>: ".
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A docker zone's internal_metadata names no usable process.
    #[error("{0}")]
    Docker(String),
    /// The zone whose namespaces a bundle's container joins is not a running zone here.
    #[error("{0}")]
    Join(String),
    /// Its runtime directory (or the VMM's in it) cannot be made.
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Its log file cannot be opened for zoned.
    #[error("cannot open {}", path.display())]
    OpenLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// zoned cannot be run.
    #[error("cannot run {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// zoned was started without the pipes the start talks over.
    #[error("zoned has no stdin or stdout pipe")]
    NoPipes,
    /// The VMM's libraries cannot be found (a microVM's zone holds them).
    #[error(transparent)]
    Kit(Arc<KitError>),
    /// The record does not make a microVM zone config.
    #[error(transparent)]
    Microvm(#[from] MicrovmError),
    /// A microVM's TAPs cannot be made.
    #[error(transparent)]
    Taps(#[from] hull_vswitch::VswitchError),
    /// The zone's network could not be made while its init was held; init never ran.
    #[error("cannot plumb its nics")]
    Plumb(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// zoned held a zone but its state names no init to plumb.
    #[error("zoned held a zone whose init it does not name")]
    NoInit,
    /// Nothing came from zoned for the whole wait; it was killed.
    #[error("its init did not start within {} s", .0.as_secs())]
    Timeout(Duration),
    /// zoned's own account of the failure (its state file's error).
    #[error("{0}")]
    Zoned(String),
    /// zoned exited without an account; the end of its log.
    #[error("zoned exited: {log_tail}")]
    Exited { log_tail: String },
}

/// Why a request to a running zone failed. Each reads after "zone <uuid>: ".
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Its control socket (zoned's, or the VMM's) cannot be connected to.
    #[error("cannot reach its {peer} at {}", path.display())]
    Reach {
        peer: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The request cannot be written.
    #[error("cannot talk to its {peer}")]
    Send {
        peer: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// No reply line came.
    #[error("no reply from its {peer}")]
    NoReply {
        peer: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The reply is not the JSON the protocol says.
    #[error("bad reply from its {peer}")]
    BadReply {
        peer: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// zoned refused the request (its reply's error).
    #[error("{0}")]
    Refused(String),
    /// The VMM replied ok=false; its error is the source.
    #[error("its VMM refused {cmd}")]
    VmmRefused {
        cmd: &'static str,
        #[source]
        source: Refusal,
    },
    /// The config the VMM was started with cannot be read.
    #[error("cannot read its VMM's disks from {}", path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: zoned::config::FileError,
    },
    /// A stop request was taken but zoned did not exit in time.
    #[error("it did not stop in time")]
    StopTimeout,
    /// A reboot ended in a stop.
    #[error("it stopped instead of rebooting")]
    StoppedInReboot,
    /// A reboot did not bring init back in time.
    #[error("it did not come back up in time")]
    RebootTimeout,
    /// The switch could not change a running zone's NICs (what it applied was undone).
    #[error("cannot change its NICs, so the update was not applied")]
    Nics(#[source] hull_vswitch::VswitchError),
}

/// A peer's refusal, in its own words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// What makes a held zone's network, given its init's host pid (see [`Zones::start`]).
pub type Plumb<'a> = dyn FnMut(i32) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + 'a;

/// A zoned being started: the process, the pipe that releases its held init, and the pipe
/// on which it reports.
type Starting = (Child, ChildStdin, ChildStdout);

/// Zones known to be running, and where zoned lives.
#[derive(Debug)]
pub struct Zones {
    root: PathBuf,
    zoned: PathBuf,
    /// The VMM binary a microVM's zone runs.
    vmm: PathBuf,
    /// The static mdata tool bound into OS zones, if any.
    mdata: Option<PathBuf>,
    /// The shared libraries it loads (found once, see [`shared_libraries`]).
    vmm_libs: std::sync::OnceLock<Result<Vec<PathBuf>, Arc<KitError>>>,
    /// Serialises making the host's saved KVM CPUID table (see [`Zones::cpuid_table`]).
    cpuid_lock: Mutex<()>,
    /// Kernels being extracted in the background (see [`Zones::boot_kernel`]), by cache key.
    extracting: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// id slot of each zone that has run: a zone keeps its range for life, since its
    /// overlay upper layer holds files owned by ids of that range.
    slots: Mutex<BTreeMap<Uuid, u32>>,
    /// How zone roots show the zone's ids (`vmmd --zone-root-ids`).
    root_ids: RootIds,
    /// A `zoned spare` ready to take the next start (cgroup v1 hosts, vmmd as root).
    spare: Mutex<Option<Spare>>,
    /// Spares are made here: a v1 layout and root.
    spares: bool,
    /// Names this vmmd's spare cgroups: `hull/.spare-<tag>-<vmmd pid>-<n>`, the tag from
    /// the data root, so that vmmds on other data roots keep theirs.
    spare_tag: String,
    spare_seq: AtomicU32,
    refilling: AtomicBool,
}

impl Zones {
    /// Opens the zones directory, reading back each zone's id range.
    pub fn new(data_root: &Path, runtimes: super::Runtimes, root_ids: RootIds) -> Zones {
        let super::Runtimes { zoned, vmm, mdata } = runtimes;
        let root = data_root.join("zones");
        let mut slots = BTreeMap::new();
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let Some(uuid) = entry
                .file_name()
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            // A zone that joined another's namespaces uses that zone's id range, which is
            // that zone's slot, not its own.
            if let Ok(cfg) = read_json::<ZoneConfig>(&entry.path().join(files::CONFIG))
                && cfg.join.is_none()
            {
                slots.insert(uuid, cfg.id_base.saturating_sub(ID_BASE) / ID_RANGE);
            }
        }
        use std::os::unix::fs::MetadataExt;
        let spare_tag = std::fs::metadata(data_root)
            .map(|m| format!("{:x}{:x}", m.dev(), m.ino()))
            .unwrap_or_default();
        let v1 = matches!(
            zoned::cgroup::Layout::detect(),
            Ok(zoned::cgroup::Layout::V1 { .. })
        );
        Zones {
            root,
            zoned,
            vmm,
            mdata,
            vmm_libs: std::sync::OnceLock::new(),
            cpuid_lock: Mutex::new(()),
            extracting: Arc::default(),
            slots: Mutex::new(slots),
            root_ids,
            spare: Mutex::new(None),
            spares: v1 && nix::unistd::geteuid().is_root() && !spare_tag.is_empty(),
            spare_tag,
            spare_seq: AtomicU32::new(0),
            refilling: AtomicBool::new(false),
        }
    }

    /// The runtime directory of a zone (config, state, sockets, log).
    pub fn dir(&self, uuid: Uuid) -> PathBuf {
        self.root.join(uuid.to_string())
    }

    /// The running zone whose init has host pid `pid`: what a zone joining it needs (its
    /// init's pid and start time, its id base). Only a zone's init qualifies: a bundle may
    /// not name any other process of the host.
    fn zone_of_init(&self, pid: i32) -> Result<(zoned::config::JoinSpec, u32), String> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| e.to_string())?;
        for e in entries.flatten() {
            let dir = e.path();
            let Ok(st) = read_json::<ZoneState>(&dir.join(files::STATE)) else {
                continue;
            };
            if st.phase != zoned::config::Phase::Running || st.init_pid != Some(pid) {
                continue;
            }
            let (Some(start), Ok(cfg)) = (
                st.init_start,
                read_json::<ZoneConfig>(&dir.join(files::CONFIG)),
            ) else {
                continue;
            };
            if cfg.is_vmm() {
                break;
            }
            return Ok((zoned::config::JoinSpec { pid, start }, cfg.id_base));
        }
        Err(format!(
            "process {pid}, whose namespaces the bundle's container joins (linux.namespaces), \
             is not the init of a running zone"
        ))
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, u32>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_slot(&self, uuid: Uuid) -> Result<u32, ZoneError> {
        let mut slots = self.slots();
        if let Some(s) = slots.get(&uuid) {
            return Ok(*s);
        }
        let used: std::collections::BTreeSet<u32> = slots.values().copied().collect();
        let free = (0..SLOTS)
            .find(|s| !used.contains(s))
            .ok_or(ZoneError::NoSlot(used.len() as u32))?;
        slots.insert(uuid, free);
        Ok(free)
    }

    /// The guest's host id range `(first, count)`, once it has a slot.
    pub fn id_range(&self, uuid: Uuid) -> Option<(u32, u32)> {
        self.slots()
            .get(&uuid)
            .map(|s| (ID_BASE + s * ID_RANGE, ID_RANGE))
    }

    /// The running zone's state, if its zoned is alive.
    pub fn alive(&self, uuid: Uuid) -> Option<ZoneState> {
        let st: ZoneState = read_json(&self.dir(uuid).join(files::STATE)).ok()?;
        (st.phase != Phase::Stopped && zoned_runs(&st)).then_some(st)
    }

    /// The config the running zone started with, as vmmd wrote it (its limits, and for a
    /// microVM the VMM's argv). A live update never changes a microVM's memory limit, so
    /// that part is still what it runs with.
    pub fn running_config(&self, uuid: Uuid) -> Option<ZoneConfig> {
        self.alive(uuid)?;
        read_json(&self.dir(uuid).join(files::CONFIG)).ok()
    }

    /// The zone's state file as zoned last wrote it.
    pub fn last_state(&self, uuid: Uuid) -> Option<ZoneState> {
        read_json(&self.dir(uuid).join(files::STATE)).ok()
    }

    /// Writes the zone's config and hands it to the spare zoned (or starts `zoned run` when
    /// there is none); returns once init runs. Then makes the next spare. A zone guest runs
    /// on `root`; a microVM (no root) runs its VMM in a zone of its own.
    ///
    /// Init is held before it runs anything of the zone's until `plumb` has made the zone's
    /// network in its namespaces (given init's host pid); when `plumb` fails, init never
    /// runs and the start fails with its error.
    pub fn start(
        self: &Arc<Self>,
        vm: &Vm,
        root: Option<ZoneRoot>,
        plumb: &mut Plumb<'_>,
    ) -> Result<ZoneState, ZoneError> {
        let uuid = vm.uuid;
        let slot = self.take_slot(uuid)?;
        let started = self.start_in_slot(vm, root, slot, plumb);
        self.refill();
        started
    }

    fn start_in_slot(
        &self,
        vm: &Vm,
        root: Option<ZoneRoot>,
        slot: u32,
        plumb: &mut Plumb<'_>,
    ) -> Result<ZoneState, ZoneError> {
        let uuid = vm.uuid;
        let start_err = |source: StartError| ZoneError::Start { uuid, source };
        let create = |path: &Path| {
            std::fs::create_dir_all(path).map_err(|source| {
                start_err(StartError::CreateDir {
                    path: path.to_path_buf(),
                    source,
                })
            })
        };
        let dir = self.dir(uuid);
        create(&dir)?;
        set_mode(&self.root, 0o700);
        set_mode(&dir, 0o700);
        let id_base = ID_BASE + slot * ID_RANGE;
        if let Err(e) = crate::service::convert::zone::docker_process(vm) {
            return Err(start_err(StartError::Docker(e)));
        }
        // A pod's container joins its sandbox zone's namespaces, in that zone's id range.
        let join = match root.as_ref().and_then(|r| r.bundle.as_ref()?.join) {
            Some(pid) => Some(
                self.zone_of_init(pid)
                    .map_err(|e| start_err(StartError::Join(e)))?,
            ),
            None => None,
        };
        // Or the network namespace CNI made for its pod.
        let netns = match root.as_ref().and_then(|r| r.bundle.as_ref()?.netns.clone()) {
            Some(p) => Some(outside_netns(&p).map_err(|e| start_err(StartError::Join(e)))?),
            None => None,
        };
        if (join.is_some() || netns.is_some()) && !vm.nics.is_empty() {
            return Err(start_err(StartError::Join(
                "a zone that joins another network namespace has no NICs of its own".into(),
            )));
        }
        let mut cfg = match root {
            Some(root) => ZoneConfig::from(GuestZone {
                vm,
                root,
                id_base,
                mdata: self.mdata.as_deref(),
            }),
            None => {
                let run = dir.join(files::VMM_DIR);
                create(&run)?;
                set_mode(&run, 0o700);
                let libs = self
                    .vmm_libs
                    .get_or_init(|| shared_libraries(&self.vmm).map_err(Arc::new))
                    .clone()
                    .map_err(|e| start_err(StartError::Kit(e)))?;
                let cpuid = self.cpuid_table();
                let kernel = vm.kernel.as_deref().map(|k| self.boot_kernel(Path::new(k)));
                let vmm = VmmFiles {
                    binary: &self.vmm,
                    libs: &libs,
                    cpuid: cpuid.as_deref(),
                    kernel: kernel.as_deref(),
                };
                let zone = MicrovmZone {
                    vm,
                    vmm,
                    run: &run,
                    id_base,
                };
                ZoneConfig::try_from(zone).map_err(|e| start_err(e.into()))?
            }
        };
        cfg.root_ids = self.root_ids;
        if let Some((spec, base)) = join {
            cfg.join = Some(spec);
            cfg.id_base = base;
        }
        cfg.netns = netns;
        // A microVM booting what its disk says is started anew by vmmd when its guest resets,
        // so that the disk is read again (see diskboot.rs).
        cfg.reset_ends =
            matches!(cfg.root, zoned::config::RootSpec::Vmm { .. }) && self.boots_from_disk(vm);
        write_json(&dir.join(files::CONFIG), &cfg)?;
        let _ = std::fs::remove_file(dir.join(files::STATE));
        let log_path = dir.join(files::LOG);
        let (mut child, release, mut ready) = match self.take_spare(&dir) {
            Some(spare) => spare,
            None => self.spawn_zoned(&dir, &log_path).map_err(start_err)?,
        };
        // zoned is vmmd's child until vmmd exits: reap it in the background so it never
        // lingers as a zombie; its state file says how the zone ended.
        let pid = child.id() as i32;
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        // Readable means a byte (`h`: init waits for its network; `r`: init runs; `e`: the
        // state file says why not) or EOF (zoned ended, perhaps still tearing down its
        // namespaces); only silence for the whole wait is a start that hangs.
        let mut answered = wait_readable(&ready, START_WAIT);
        let mut byte = answered.then(|| read_byte(&mut ready)).flatten();
        if byte == Some(b'h') {
            let init = self.last_state(uuid).filter(|st| st.zoned_pid == pid);
            match init.and_then(|st| st.init_pid).map(&mut *plumb) {
                Some(Ok(())) => {
                    let mut release = release;
                    let _ = release.write_all(b"r");
                }
                // Dropping the pipe ends the start: init never runs.
                failed => {
                    drop(release);
                    wait_gone(pid, Duration::from_secs(5));
                    return Err(start_err(match failed {
                        Some(Err(e)) => StartError::Plumb(e),
                        _ => StartError::NoInit,
                    }));
                }
            }
            answered = wait_readable(&ready, START_WAIT);
            byte = answered.then(|| read_byte(&mut ready)).flatten();
        }
        let started = byte.is_some();
        drop(ready);
        match self.last_state(uuid) {
            // `r` means init ran: a process that has ended already (a quick one, or a
            // loaded host) is a start all the same, its end the supervision's to record.
            Some(st) if byte == Some(b'r') && st.zoned_pid == pid => Ok(st),
            Some(st) if started && st.zoned_pid == pid && st.phase != Phase::Stopped => Ok(st),
            _ if !answered && !zombie(pid) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                Err(start_err(StartError::Timeout(START_WAIT)))
            }
            st => {
                // zoned still holds the zone's lock while it exits: wait, so that a retry
                // right after this error does not find the zone busy.
                wait_gone(pid, Duration::from_secs(5));
                let error = match st.filter(|st| st.zoned_pid == pid).and_then(|st| st.error) {
                    Some(error) => StartError::Zoned(error),
                    None => StartError::Exited {
                        log_tail: log_tail(&log_path),
                    },
                };
                Err(start_err(error))
            }
        }
    }

    /// Starts `zoned run --hold DIR` (no spare at hand): returns it, the pipe that releases
    /// its init and the pipe on which it says that init waits and then runs.
    fn spawn_zoned(&self, dir: &Path, log_path: &Path) -> Result<Starting, StartError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|source| StartError::OpenLog {
                path: log_path.to_path_buf(),
                source,
            })?;
        // zoned writes one byte on stdout once init runs and closes it by exiting otherwise:
        // the start waits on that pipe, not on polling state.json. It calls setsid(2) first
        // thing: it outlives vmmd in a session of its own.
        let mut child = Command::new(&self.zoned)
            .arg("run")
            .arg("--hold")
            .arg(dir)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|source| StartError::Spawn {
                program: self.zoned.clone(),
                source,
            })?;
        match (child.stdin.take(), child.stdout.take()) {
            (Some(input), Some(out)) => Ok((child, input, out)),
            _ => Err(StartError::NoPipes),
        }
    }

    /// One request to the zone's zoned.
    pub fn request(&self, uuid: Uuid, req: &Request) -> Result<Reply, ZoneError> {
        self.zoned_request(uuid, req)
            .map_err(|source| ZoneError::Control { uuid, source })
    }

    fn zoned_request(&self, uuid: Uuid, req: &Request) -> Result<Reply, ControlError> {
        const PEER: &str = "zoned";
        let path = self.dir(uuid).join(files::CONTROL);
        let mut s = UnixStream::connect(&path).map_err(|source| ControlError::Reach {
            peer: PEER,
            path: path.clone(),
            source,
        })?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut line = serde_json::to_string(req).unwrap_or_default();
        line.push('\n');
        s.write_all(line.as_bytes())
            .map_err(|source| ControlError::Send { peer: PEER, source })?;
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .map_err(|source| ControlError::NoReply { peer: PEER, source })?;
        let reply: Reply = serde_json::from_str(&reply)
            .map_err(|source| ControlError::BadReply { peer: PEER, source })?;
        if !reply.ok {
            return Err(ControlError::Refused(
                reply.error.unwrap_or_else(|| "request refused".into()),
            ));
        }
        Ok(reply)
    }

    /// One request to a microVM's VMM on its control socket; the reply, which must say ok.
    /// The VMM runs the guest and is not trusted more than it: the reply is one line of at
    /// most 1 MiB of JSON, read with a timeout.
    pub fn vmm_request(&self, uuid: Uuid, req: &ControlRequest) -> Result<ControlReply, ZoneError> {
        self.vmm_exchange(uuid, req)
            .map_err(|source| ZoneError::Control { uuid, source })
    }

    fn vmm_exchange(&self, uuid: Uuid, req: &ControlRequest) -> Result<ControlReply, ControlError> {
        use std::io::Read;
        const PEER: &str = "VMM";
        let path = self.dir(uuid).join(files::VMM_DIR).join(files::VMM_CONTROL);
        let mut s = UnixStream::connect(&path).map_err(|source| ControlError::Reach {
            peer: PEER,
            path: path.clone(),
            source,
        })?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        s.write_all(req.to_line().as_bytes())
            .map_err(|source| ControlError::Send { peer: PEER, source })?;
        let mut reply = String::new();
        BufReader::new(s.take(1 << 20))
            .read_line(&mut reply)
            .map_err(|source| ControlError::NoReply { peer: PEER, source })?;
        let reply: ControlReply = serde_json::from_str(&reply)
            .map_err(|source| ControlError::BadReply { peer: PEER, source })?;
        if !reply.ok {
            let why = reply.error.unwrap_or_else(|| "request refused".into());
            return Err(ControlError::VmmRefused {
                cmd: req.cmd(),
                source: Refusal(why),
            });
        }
        Ok(reply)
    }

    /// Which `--disk` of a running microVM's VMM the disk at host path `disk` is (0 is vda),
    /// from the zone config the VMM was started with: the record's order may have changed
    /// since, and a disk added while it runs is not in it (`None`).
    pub fn vmm_disk_index(&self, uuid: Uuid, disk: &Path) -> Result<Option<usize>, ZoneError> {
        let path = self.dir(uuid).join(files::CONFIG);
        let cfg: ZoneConfig = read_json(&path).map_err(|source| ZoneError::Control {
            uuid,
            source: ControlError::ReadConfig { path, source },
        })?;
        Ok(microvm::vmm_disk_index(&cfg, disk))
    }

    /// Waits until the zone's zoned has exited, up to `limit`.
    pub fn wait_stopped(&self, uuid: Uuid, limit: Duration) -> bool {
        let t = Instant::now();
        // Until zoned itself has exited, not just written "stopped": it holds the zone's
        // lock to the end, and a start right after a stop must not find the zone busy.
        let running = || self.last_state(uuid).is_some_and(|st| zoned_runs(&st));
        while running() {
            if t.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Removes what a zone whose zoned died (SIGKILL, host trouble) may have left: its
    /// processes and cgroup. Mounts lived in zoned's own mount namespace and are gone.
    pub fn clean_up(&self, uuid: Uuid) -> Vec<String> {
        let mut problems = Vec::new();
        if let Ok(cfg) = read_json::<ZoneConfig>(&self.dir(uuid).join(files::CONFIG))
            && let Ok(layout) = zoned::cgroup::Layout::detect()
            && let Ok(cg) = zoned::cgroup::Cgroup::open(&layout, &cfg.cgroup)
        {
            if let Err(e) = cg.kill_all() {
                problems.push(e.to_string());
            }
            if let Err(e) = cg.remove() {
                problems.push(e.to_string());
            }
        }
        for f in [files::CONTROL, files::CONSOLE] {
            let _ = std::fs::remove_file(self.dir(uuid).join(f));
        }
        problems
    }

    /// Deletes a stopped zone's runtime directory.
    pub fn forget(&self, uuid: Uuid) {
        let _ = std::fs::remove_dir_all(self.dir(uuid));
        self.slots().remove(&uuid);
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// Whether the zoned that wrote `st` still runs. A zombie does not: the pidfd watch fires
/// as zoned exits, before the thread that waits for it has reaped it.
fn zoned_runs(st: &ZoneState) -> bool {
    same_process(st.zoned_pid, st.zoned_start) && !zombie(st.zoned_pid)
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Waits up to `limit` for `fd` to become readable (data or EOF).
fn wait_readable(fd: &impl std::os::fd::AsFd, limit: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let t = Instant::now();
    loop {
        let left = limit.saturating_sub(t.elapsed());
        let timeout =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(n) if n > 0 => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            _ if t.elapsed() < limit => continue,
            _ => return false,
        }
    }
}

/// Reads one byte; `None` at EOF or on an error.
fn read_byte(r: &mut ChildStdout) -> Option<u8> {
    use std::io::Read;
    let mut b = [0u8; 1];
    matches!(r.read(&mut b), Ok(1)).then_some(b[0])
}

/// Waits up to `limit` for `pid` to exit (a zombie counts: the reaper thread collects it).
fn wait_gone(pid: i32, limit: Duration) {
    let t = Instant::now();
    while !zombie(pid) && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    if tail.is_empty() {
        "no message".into()
    } else {
        tail.join("; ")
    }
}
