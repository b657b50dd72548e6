//! Recording fakes of the service's seams (see [`super::seams`]), for unit tests that run
//! without root: each call is written to one shared journal, in order, and any method can be
//! told to fail. Nothing here touches the host beyond the test's temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_cowstore::backend::RootSource;
use hull_cowstore::store::StoreError;
use hull_spec::warning::Warning;
use hull_spec::{DiskSpec, Vm};
use hull_vswitch::{Guard, VswitchError, ZoneChange, ZoneNic, ZoneRoute};
use uuid::Uuid;
use zoned::config::{Phase, Reply, Request, ZoneConfig, ZoneState};

use super::Seams;
use super::convert::zone::ZoneRoot;
use super::provision::{Grown, Warnings};
use super::seams::{GuestStorage, Switch, ZoneRuntime};
use super::zones::{ControlError, DiskBoot, Plumb, StartError, ZoneError};
use hull_vmm_proto::{ControlReply, ControlRequest};

/// The calls made to the fakes, in order, and the calls told to fail.
#[derive(Debug, Default)]
pub struct Journal {
    calls: Mutex<Vec<String>>,
    failing: Mutex<BTreeSet<&'static str>>,
}

impl Journal {
    /// Notes a call; true when `method` was told to fail.
    fn call(&self, method: &'static str, detail: impl std::fmt::Display) -> bool {
        let line = format!("{method} {detail}");
        lock(&self.calls).push(line.trim_end().to_string());
        lock(&self.failing).contains(method)
    }

    /// Makes every later call of `method` (e.g. "switch.plumb_zone") fail.
    pub fn fail(&self, method: &'static str) {
        lock(&self.failing).insert(method);
    }

    /// Makes `method` work again.
    pub fn heal(&self, method: &'static str) {
        lock(&self.failing).remove(method);
    }

    /// The calls so far, and forgets them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.calls))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn injected(method: &str) -> std::io::Error {
    std::io::Error::other(format!("{method} failed (injected)"))
}

fn storage_err(method: &str) -> StoreError {
    StoreError::Io(hull_sys::IoError::new(
        "fake",
        PathBuf::from(method),
        injected(method),
    ))
}

fn switch_err(method: &str) -> VswitchError {
    VswitchError::Sys {
        what: method.to_string(),
        source: injected(method),
    }
}

/// Fakes of all three seams, sharing one journal; `root` holds the runtime directories.
pub fn seams(root: &Path) -> (Seams, Arc<Journal>) {
    let journal = Arc::new(Journal::default());
    let seams = Seams {
        storage: Arc::new(FakeStorage {
            journal: journal.clone(),
            root: root.to_path_buf(),
        }),
        zones: Arc::new(FakeZones {
            journal: journal.clone(),
            root: root.join("zones"),
            running: Mutex::default(),
        }),
        switch: Arc::new(FakeSwitch {
            journal: journal.clone(),
        }),
    };
    (seams, journal)
}

/// [`GuestStorage`] that makes nothing: each call is journaled.
#[derive(Debug)]
pub struct FakeStorage {
    journal: Arc<Journal>,
    root: PathBuf,
}

impl GuestStorage for FakeStorage {
    fn provision(&self, vm: &Vm) -> Result<Warnings, StoreError> {
        match self.journal.call("storage.provision", vm.uuid) {
            true => Err(storage_err("storage.provision")),
            false => Ok(Warnings::new()),
        }
    }

    fn destroy_guest(&self, uuid: Uuid) -> Result<(), StoreError> {
        match self.journal.call("storage.destroy_guest", uuid) {
            true => Err(storage_err("storage.destroy_guest")),
            false => Ok(()),
        }
    }

    fn set_quota(&self, uuid: Uuid, gib: u64) -> Result<Option<Warning>, StoreError> {
        match self
            .journal
            .call("storage.set_quota", format!("{uuid} {gib}"))
        {
            true => Err(storage_err("storage.set_quota")),
            false => Ok(None),
        }
    }

    fn make_disks(&self, vm: &Vm, disks: &[DiskSpec]) -> Result<Warnings, StoreError> {
        let n = disks.len();
        match self
            .journal
            .call("storage.make_disks", format!("{} {n}", vm.uuid))
        {
            true => Err(storage_err("storage.make_disks")),
            false => Ok(Warnings::new()),
        }
    }

    fn remove_disks(&self, uuid: Uuid, disks: &[DiskSpec]) -> Result<(), StoreError> {
        let n = disks.len();
        match self
            .journal
            .call("storage.remove_disks", format!("{uuid} {n}"))
        {
            true => Err(storage_err("storage.remove_disks")),
            false => Ok(()),
        }
    }

    fn disk_file_bytes(&self, _path: &Path) -> Option<u64> {
        None
    }

    fn grow_disks(&self, wanted: &[(String, u64)]) -> Result<Vec<Grown>, StoreError> {
        if self.journal.call("storage.grow_disks", wanted.len()) {
            return Err(storage_err("storage.grow_disks"));
        }
        Ok(wanted
            .iter()
            .map(|(p, bytes)| Grown {
                path: PathBuf::from(p),
                old_bytes: 0,
                new_bytes: *bytes,
            })
            .collect())
    }

    fn shrink_back(&self, grown: &[Grown]) -> Vec<String> {
        self.journal.call("storage.shrink_back", grown.len());
        Vec::new()
    }

    fn root_source(&self, uuid: Uuid) -> Result<Option<RootSource>, StoreError> {
        match self.journal.call("storage.root_source", uuid) {
            true => Err(storage_err("storage.root_source")),
            false => Ok(Some(RootSource::Dir(
                self.root.join("roots").join(uuid.to_string()),
            ))),
        }
    }

    fn data_dir(&self, uuid: Uuid) -> PathBuf {
        self.root.join("data").join(uuid.to_string())
    }

    fn volumes_dir(&self, uuid: Uuid) -> PathBuf {
        super::convert::volumes_dir(&self.root, uuid)
    }

    fn reprovision_disk(&self, uuid: Uuid, _image: Uuid, _disk: &Path) -> Result<(), StoreError> {
        match self.journal.call("storage.reprovision_disk", uuid) {
            true => Err(storage_err("storage.reprovision_disk")),
            false => Ok(()),
        }
    }

    fn reprovision_root(&self, uuid: Uuid, _image: Uuid) -> Result<(), StoreError> {
        match self.journal.call("storage.reprovision_root", uuid) {
            true => Err(storage_err("storage.reprovision_root")),
            false => Ok(()),
        }
    }

    fn image_dir(&self, image: Uuid) -> PathBuf {
        self.root.join("images").join(image.to_string())
    }

    fn snapshot(&self, uuid: Uuid, name: &str) -> Result<(), StoreError> {
        match self
            .journal
            .call("storage.snapshot", format!("{uuid} {name}"))
        {
            true => Err(storage_err("storage.snapshot")),
            false => Ok(()),
        }
    }

    fn rollback(&self, uuid: Uuid, name: &str) -> Result<(), StoreError> {
        match self
            .journal
            .call("storage.rollback", format!("{uuid} {name}"))
        {
            true => Err(storage_err("storage.rollback")),
            false => Ok(()),
        }
    }

    fn delete_snapshot(&self, uuid: Uuid, name: &str) -> Result<(), StoreError> {
        match self
            .journal
            .call("storage.delete_snapshot", format!("{uuid} {name}"))
        {
            true => Err(storage_err("storage.delete_snapshot")),
            false => Ok(()),
        }
    }

    fn snapshot_disks(
        &self,
        uuid: Uuid,
        _name: &str,
        _disks: &[PathBuf],
    ) -> Result<(), StoreError> {
        match self.journal.call("storage.snapshot_disks", uuid) {
            true => Err(storage_err("storage.snapshot_disks")),
            false => Ok(()),
        }
    }

    fn rollback_disks(
        &self,
        uuid: Uuid,
        _name: &str,
        _disks: &[PathBuf],
    ) -> Result<(), StoreError> {
        match self.journal.call("storage.rollback_disks", uuid) {
            true => Err(storage_err("storage.rollback_disks")),
            false => Ok(()),
        }
    }

    fn delete_disk_snapshot(&self, uuid: Uuid, _name: &str) -> Result<(), StoreError> {
        match self.journal.call("storage.delete_disk_snapshot", uuid) {
            true => Err(storage_err("storage.delete_disk_snapshot")),
            false => Ok(()),
        }
    }
}

/// [`ZoneRuntime`] whose zones are entries in a map: a start makes one running (init pid
/// 4242, a zoned pid no process has), a stop request removes it.
#[derive(Debug)]
pub struct FakeZones {
    journal: Arc<Journal>,
    root: PathBuf,
    running: Mutex<BTreeMap<Uuid, ZoneState>>,
}

/// The init pid every fake zone runs.
pub const INIT_PID: i32 = 4242;

impl ZoneRuntime for FakeZones {
    fn dir(&self, uuid: Uuid) -> PathBuf {
        self.root.join(uuid.to_string())
    }

    fn start(
        &self,
        vm: &Vm,
        _root: Option<ZoneRoot>,
        plumb: &mut Plumb<'_>,
    ) -> Result<ZoneState, ZoneError> {
        if self.journal.call("zones.start", vm.uuid) {
            return Err(ZoneError::Start {
                uuid: vm.uuid,
                source: StartError::Spawn {
                    program: PathBuf::from("zoned"),
                    source: injected("zones.start"),
                },
            });
        }
        // As zoned holds init: nothing of the zone's runs before its network is made.
        if let Err(e) = plumb(INIT_PID) {
            return Err(ZoneError::Start {
                uuid: vm.uuid,
                source: StartError::Plumb(e),
            });
        }
        let dir = self.dir(vm.uuid);
        std::fs::create_dir_all(&dir).map_err(|source| ZoneError::Start {
            uuid: vm.uuid,
            source: StartError::CreateDir {
                path: dir.clone(),
                source,
            },
        })?;
        let st = ZoneState {
            phase: Phase::Running,
            // No process has this pid (above pid_max): the service's watch reports the
            // zone's end at once, which the tests' service has no reaper to act on.
            zoned_pid: i32::MAX,
            zoned_start: 0,
            init_pid: Some(INIT_PID),
            init_start: Some(0),
            cgroup_layout: "v2".into(),
            boots: 1,
            last_exit: None,
            error: None,
            notes: Vec::new(),
            metadata_fd: None,
            reset: false,
            frozen: false,
        };
        lock(&self.running).insert(vm.uuid, st.clone());
        Ok(st)
    }

    fn request(&self, uuid: Uuid, req: &Request) -> Result<Reply, ZoneError> {
        let what = serde_json::to_string(req).unwrap_or_default();
        if self.journal.call("zones.request", format!("{uuid} {what}")) {
            return Err(ZoneError::Control {
                uuid,
                source: ControlError::Send {
                    peer: "zoned",
                    source: injected("zones.request"),
                },
            });
        }
        if let Request::Stop { .. } = req {
            lock(&self.running).remove(&uuid);
        }
        Ok(Reply {
            ok: true,
            error: None,
            state: None,
            notes: Vec::new(),
            usage: None,
        })
    }

    fn alive(&self, uuid: Uuid) -> Option<ZoneState> {
        lock(&self.running).get(&uuid).cloned()
    }

    fn last_state(&self, uuid: Uuid) -> Option<ZoneState> {
        lock(&self.running).get(&uuid).cloned()
    }

    fn running_config(&self, _uuid: Uuid) -> Option<ZoneConfig> {
        None
    }

    fn id_range(&self, _uuid: Uuid) -> Option<(u32, u32)> {
        None
    }

    fn wait_stopped(&self, uuid: Uuid, _limit: Duration) -> bool {
        self.journal.call("zones.wait_stopped", uuid);
        !lock(&self.running).contains_key(&uuid)
    }

    fn clean_up(&self, uuid: Uuid) -> Vec<String> {
        self.journal.call("zones.clean_up", uuid);
        Vec::new()
    }

    fn forget(&self, uuid: Uuid) {
        self.journal.call("zones.forget", uuid);
    }

    fn vmm_request(&self, uuid: Uuid, req: &ControlRequest) -> Result<ControlReply, ZoneError> {
        match self
            .journal
            .call("zones.vmm_request", format!("{uuid} {req:?}"))
        {
            true => Err(ZoneError::Control {
                uuid,
                source: ControlError::Send {
                    peer: "VMM",
                    source: injected("zones.vmm_request"),
                },
            }),
            false => Ok(ControlReply::ok()),
        }
    }

    fn vmm_disk_index(&self, _uuid: Uuid, _disk: &Path) -> Result<Option<usize>, ZoneError> {
        Ok(None)
    }

    fn prepare(&self) {}

    fn find_boot(&self, uuid: Uuid, disk: &Path) -> Result<DiskBoot, String> {
        self.journal.call("zones.find_boot", uuid);
        Err(format!(
            "the fake zone runtime reads no boot disk ({})",
            disk.display()
        ))
    }
}

/// [`Switch`] that plumbs nothing: each call is journaled.
#[derive(Debug)]
pub struct FakeSwitch {
    journal: Arc<Journal>,
}

impl FakeSwitch {
    fn result(
        &self,
        method: &'static str,
        detail: impl std::fmt::Display,
    ) -> Result<(), VswitchError> {
        match self.journal.call(method, detail) {
            true => Err(switch_err(method)),
            false => Ok(()),
        }
    }
}

impl Switch for FakeSwitch {
    fn make_taps(&self, key: &str, ports: &[ZoneNic]) -> Result<(), VswitchError> {
        let n = ports.len();
        self.result("switch.make_taps", format!("{key} {n}"))
    }

    fn plumb_zone(
        &self,
        key: &str,
        pid: i32,
        ports: &[ZoneNic],
        _routes: &[ZoneRoute],
    ) -> Result<(), VswitchError> {
        let n = ports.len();
        self.result("switch.plumb_zone", format!("{key} {pid} {n}"))
    }

    fn update_zone(&self, pid: i32, change: &ZoneChange) -> Result<(), VswitchError> {
        let empty = if change.is_empty() { " (empty)" } else { "" };
        self.result("switch.update_zone", format!("{pid}{empty}"))
    }

    fn remove_ports(&self, key: &str) -> Result<Vec<String>, VswitchError> {
        self.result("switch.remove_ports", key).map(|()| Vec::new())
    }

    fn sweep(
        &self,
        _keep: Box<dyn Fn(&str) -> bool + Send>,
        guarded: Vec<(String, Guard)>,
    ) -> Result<Vec<String>, VswitchError> {
        self.result("switch.sweep", guarded.len())
            .map(|()| Vec::new())
    }

    fn release_tag(&self, tag: &str, _uplink: Option<&str>) -> Result<Vec<String>, VswitchError> {
        self.result("switch.release_tag", tag).map(|()| Vec::new())
    }
}
