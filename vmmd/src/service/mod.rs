//! The service layer: everything vmmd does to guests, independent of HTTP.
//!
//! It owns the in-memory index of guest records (loaded from the store at start), the
//! per-guest locks that serialize operations on one guest while different guests proceed in
//! parallel, the host checks validation needs, and the event stream. Every change is written
//! durably before it becomes visible, so a crash leaves each record whole or absent.
//!
//! Lock order: a guest's lock, then the index lock. Create takes only the index lock, which
//! makes "is this uuid/IP/MAC free?" and "insert" one atomic step.

mod bundle;
pub mod catalog;
pub mod convert;
mod create;
#[cfg(test)]
mod fake;
pub mod filter;
pub mod images;
mod lifecycle;
pub mod metrics;
pub mod network;
mod nictags;
pub mod paths;
pub mod provision;
mod recovery;
pub mod registry;
mod reprovision;
pub mod seams;
mod snapshot;
pub mod sources;
pub mod store;
#[cfg(test)]
mod tests;
mod transfer;
pub mod update;
pub mod zones;

pub use recovery::{EndpointKind, MetadataEndpoint};
pub use snapshot::SnapshotVerb;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use hull_spec::api::EventKind;
use hull_spec::net::MacAddr;
use hull_spec::validate::{nic_addresses, nic_mac};
use hull_spec::warning::Warning;
use hull_spec::{Event, ValidationReport, Vm};
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use catalog::{CatalogError, Images, NicTags};
use filter::Filter;
use hull_cowstore::store::Store as CowStore;
use seams::{GuestStorage, Switch, ZoneRuntime};
use store::{Loaded, Store, StoreError};

/// Why an operation was not done. Nothing was changed when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No guest with this uuid.
    #[error("VM {0} does not exist")]
    NotFound(Uuid),
    /// No image with this uuid.
    #[error("image {0} is not installed")]
    ImageNotFound(Uuid),
    /// No nic tag with this name.
    #[error("nic tag {0:?} does not exist")]
    NicTagNotFound(String),
    /// The payload failed validation.
    #[error("invalid payload: {0}")]
    Invalid(ValidationReport),
    /// The request is malformed in a way that is not a payload property.
    #[error("{0}")]
    BadRequest(String),
    /// The guest's state does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// The guest is already in the state the operation asks for; nothing was done.
    #[error("{0}")]
    Already(String),
    /// The subsystem the operation needs is not built yet.
    #[error("{0}")]
    NotImplemented(String),
    /// The record store failed; the operation was not applied.
    #[error("the guest record store failed")]
    Store(#[from] StoreError),
    /// The image or nic tag catalog failed.
    #[error("the host catalog failed")]
    Catalog(#[from] CatalogError),
    /// A blocking task died.
    #[error("an internal task failed")]
    Task(#[from] tokio::task::JoinError),
    /// An image source failed.
    #[error("an image source failed")]
    Upstream(#[source] sources::FetchError),
    /// The image store failed; the operation was not applied.
    #[error("the image store failed")]
    Storage(#[source] hull_cowstore::store::StoreError),
    #[error(transparent)]
    Zone(#[from] zones::ZoneError),
    /// The host's switch failed (netlink, nftables): the daemon's failure, not the request's.
    #[error(transparent)]
    Switch(hull_vswitch::VswitchError),
    /// `create` with autoboot made the guest, then its first boot failed. The guest stays
    /// (SmartOS semantics): `vmadm start` retries, `vmadm delete` removes it.
    #[error(
        "VM {uuid} was created but its first boot failed (vmadm start retries, vmadm delete \
         removes it): {error}"
    )]
    CreatedNotBooted {
        uuid: Uuid,
        error: Box<ServiceError>,
    },
}

/// A switch error as the service reports it: what the request asked for that the switch
/// refuses (a bridge that still has a guest's port) is a conflict; anything else is the
/// host's failure.
pub(crate) fn switch_error(e: hull_vswitch::VswitchError) -> ServiceError {
    match e {
        hull_vswitch::VswitchError::Invalid(m) => ServiceError::Conflict(m),
        e => ServiceError::Switch(e),
    }
}

/// Result alias for the service.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// A guest record as the index holds it: the typed record plus its JSON, encoded once per
/// change so that get and list never re-encode and filters never re-convert.
#[derive(Debug)]
pub struct Record {
    /// The record.
    pub vm: Vm,
    /// The record as a JSON value (for filters and field projection).
    pub value: Value,
    /// The record as JSON text (for replies).
    pub json: bytes::Bytes,
}

impl Record {
    fn new(vm: Vm) -> Record {
        let value = serde_json::to_value(&vm).unwrap_or(Value::Null);
        let json = bytes::Bytes::from(value.to_string());
        Record { vm, value, json }
    }
}

impl std::ops::Deref for Record {
    type Target = Vm;

    fn deref(&self) -> &Vm {
        &self.vm
    }
}

/// Every record, plus who owns each MAC and static IP, kept up to date on every insert and
/// removal so that "is this address free?" never scans the guests.
#[derive(Debug, Default)]
struct Index {
    vms: HashMap<Uuid, Arc<Record>>,
    macs: HashMap<MacAddr, Uuid>,
    ips: HashMap<IpAddr, Uuid>,
}

fn claims(r: &Record) -> (Vec<MacAddr>, Vec<IpAddr>) {
    let nics = r.value.get("nics").and_then(Value::as_array);
    let macs = nics.into_iter().flatten().filter_map(nic_mac).collect();
    let ips = nics.into_iter().flatten().flat_map(nic_addresses).collect();
    (macs, ips)
}

impl Index {
    fn insert(&mut self, r: Arc<Record>) {
        self.remove(r.uuid);
        let (macs, ips) = claims(&r);
        for m in macs {
            self.macs.insert(m, r.uuid);
        }
        for ip in ips {
            self.ips.insert(ip, r.uuid);
        }
        self.vms.insert(r.uuid, r);
    }

    fn remove(&mut self, uuid: Uuid) -> Option<Arc<Record>> {
        let old = self.vms.remove(&uuid)?;
        let (macs, ips) = claims(&old);
        for m in macs {
            if self.macs.get(&m) == Some(&uuid) {
                self.macs.remove(&m);
            }
        }
        for ip in ips {
            if self.ips.get(&ip) == Some(&uuid) {
                self.ips.remove(&ip);
            }
        }
        Some(old)
    }

    fn mac_owner(&self, mac: &MacAddr, except: Option<Uuid>) -> Option<Uuid> {
        self.macs.get(mac).copied().filter(|u| Some(*u) != except)
    }

    fn ip_owner(&self, ip: &IpAddr, except: Option<Uuid>) -> Option<Uuid> {
        self.ips.get(ip).copied().filter(|u| Some(*u) != except)
    }
}

/// The daemon's guest service.
#[derive(Debug)]
pub struct Service {
    data_root: PathBuf,
    db: Arc<Store>,
    /// The image store, for images (install, export, delete); a guest's own storage goes
    /// through `storage`.
    cow: Arc<CowStore>,
    storage: Arc<dyn GuestStorage>,
    switch: Arc<dyn Switch>,
    records: RwLock<Index>,
    guest_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    index_lock: tokio::sync::Mutex<()>,
    config_lock: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Arc<Event>>,
    images: Images,
    nictags: NicTags,
    sources: catalog::Sources,
    zones: Arc<dyn ZoneRuntime>,
    /// Guests whose runtime process ended (sent by the watchers, read by [`Service::reaper`]).
    exits: tokio::sync::mpsc::UnboundedSender<Uuid>,
    exit_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Uuid>>>,
}

/// The subsystems a [`Service`] drives (see [`seams`]): the host's own in [`Service::open`],
/// recording fakes in unit tests.
#[derive(Debug, Clone)]
pub struct Seams {
    /// Guests' roots and disks.
    pub storage: Arc<dyn GuestStorage>,
    /// The processes that run guests.
    pub zones: Arc<dyn ZoneRuntime>,
    /// This data root's switch ports.
    pub switch: Arc<dyn Switch>,
}

/// Properties a running zone takes only when it boots again (written into its root at start).
const ZONE_BOOT_PROPERTIES: [&str; 4] = ["hostname", "resolvers", "dns_domain", "init_name"];

/// Properties a running microVM's VMM takes only when it starts again.
const MICROVM_BOOT_PROPERTIES: [&str; 4] = ["vcpus", "kernel", "initrd", "cmdline"];

/// What a microVM's record says when its payload sets `quota`: SmartOS bounds a KVM zone's
/// own dataset with it, and a hull microVM has none (its disks' sizes bound its storage).
fn microvm_quota() -> Warning {
    Warning::Quota(
        "stored but not enforced: a microVM has no root file system of its own here; its \
         disks' sizes bound what it stores"
            .into(),
    )
}

/// The `stored only` warnings of a record: SmartOS properties it keeps that hull has
/// nothing to apply to, each named with why.
fn stored_only(vm: &hull_spec::Vm) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut say = |set: bool, text: &str| {
        if set {
            out.push(Warning::Stored(text.to_string()));
        }
    };
    say(
        vm.kernel_version.is_some(),
        "kernel_version: the zone runs on this host's kernel and its uname -r reports that one \
         (hull emulates no other Linux version)",
    );
    say(
        vm.fs_allowed.is_some(),
        "fs_allowed: a zone mounts what its user namespace lets it (tmpfs, proc, sysfs, devpts, \
         mqueue, overlay, fuse); the list is kept, not enforced beyond that",
    );
    say(
        vm.zfs_root_recsize.is_some()
            || vm.zfs_data_recsize.is_some()
            || vm.zfs_root_compression.is_some()
            || vm.zfs_data_compression.is_some(),
        "zfs_root_recsize, zfs_data_recsize, zfs_root_compression, zfs_data_compression: ZFS \
         tuning; hull's data root is btrfs, xfs or an overlay, whose own settings apply",
    );
    say(
        vm.zfs_filesystem_limit.is_some(),
        "zfs_filesystem_limit: a delegated dataset has no child datasets in hull",
    );
    say(
        vm.virtio_txburst.is_some() || vm.virtio_txtimer.is_some(),
        "virtio_txburst, virtio_txtimer: QEMU's virtio-net tuning; hull's VMM (or the kernel's \
         vhost-net) moves frames its own way",
    );
    say(
        vm.disks.iter().any(|d| {
            d.block_size.is_some() || d.compression.is_some() || d.refreservation.is_some()
        }),
        "disks: block_size, compression and refreservation are ZFS volume settings; hull's \
         disks are sparse files with 512-byte sectors",
    );
    for (i, nic) in vm.nics.iter().enumerate() {
        if let Some(mac) = nic.mac.filter(|m| !m.is_usable()) {
            out.push(Warning::Stored(format!(
                "nics.{i}.mac {mac}: a multicast address, kept as SmartOS keeps it; no NIC can \
                 own one, so the guest cannot start until the NIC is replaced (remove_nics, \
                 add_nics)"
            )));
        }
    }
    out
}

/// The text an older vmmd stored for an lx kernel_version (before `stored only`).
const OLD_KERNEL_VERSION_NOTE: &str = "kernel_version: stored; the zone runs on this host's kernel";

/// Keeps `vm`'s `stored only` warnings exactly those its properties call for.
fn note_stored(vm: &mut hull_spec::Vm) {
    vm.warnings.retain(|w| {
        !matches!(w, Warning::Stored(_))
            && !matches!(w, Warning::Other(t) if t.starts_with(OLD_KERNEL_VERSION_NOTE))
    });
    let stored = stored_only(vm);
    vm.warnings.extend(stored);
}

/// Limits a running guest's cgroup takes at once.
const LIVE_LIMITS: [&str; 7] = [
    "ram",
    "max_physical_memory",
    "max_swap",
    "cpu_cap",
    "cpu_shares",
    "max_lwps",
    "zfs_io_priority",
];

/// Adds `notes` the host made while applying a guest's limits (at start or by a live update:
/// what it cannot enforce) to `warnings`, each once. A start replaces them.
fn add_host_notes(warnings: &mut Vec<Warning>, notes: &[String]) {
    for n in notes {
        let w = Warning::HostNote(n.clone());
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
}

/// Runs blocking work (files, processes, netlink) on tokio's blocking threads; its error,
/// and a panic of the task, become a [`ServiceError`]. Every subsystem call of the service
/// goes through here.
async fn blocking<T, E>(f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    E: Into<ServiceError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?.map_err(Into::into)
}

/// [`blocking`] for work that cannot fail (its outcome is a value, not an error).
async fn unblock<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// [`blocking`] for clean-up on a path that already failed: its outcome is not the error
/// the caller reports, so it is dropped (each step logs or is best effort by itself).
async fn best_effort<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) {
    let _ = tokio::task::spawn_blocking(f).await;
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave the map half-updated (inserts and removes
    // are single calls), so a poisoned lock is still consistent.
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The binaries guests run under.
#[derive(Debug, Clone)]
pub struct Runtimes {
    /// The zone runtime (`zoned`).
    pub zoned: PathBuf,
    /// The VMM a microVM's zone runs (`vmm`).
    pub vmm: PathBuf,
    /// The mdata tools bound into every zone (a static `mdata`; see
    /// [`zones::kit::mdata_tools`]), or None to bind none.
    pub mdata: Option<PathBuf>,
}

impl Service {
    /// Opens the service on `data_root`, loading every guest record; `cow` is the image
    /// store on the same data root.
    pub fn open(
        data_root: &Path,
        cow: CowStore,
        runtimes: Runtimes,
        root_ids: zoned::config::RootIds,
    ) -> Result<(Service, Loaded)> {
        let cow = Arc::new(cow);
        let zones = zones::Zones::new(data_root, runtimes, root_ids);
        let seams = Seams {
            storage: cow.clone(),
            zones: Arc::new(seams::HostZones(Arc::new(zones))),
            switch: Arc::new(seams::HostSwitch {
                switch: hull_vswitch::Switch::new(network::owner_tag(data_root)),
            }),
        };
        Service::with_seams(data_root, cow, seams)
    }

    /// [`Service::open`] on the given subsystems.
    pub fn with_seams(
        data_root: &Path,
        cow: Arc<CowStore>,
        seams: Seams,
    ) -> Result<(Service, Loaded)> {
        let (store, mut loaded) = Store::open(data_root)?;
        let mut records = Index::default();
        for mut vm in loaded.vms.drain(..) {
            // A disk file is what its guest sees; a record that lags one (vmmd stopped
            // between growing it and storing the update) is brought in line.
            if vm.brand.is_microvm()
                && provision::disk_sizes_from_files(&mut vm)
                && let Err(e) = store.put(&vm)
            {
                tracing::warn!(uuid = %vm.uuid, error = %e, "cannot store disk sizes read from the files");
            }
            records.insert(Arc::new(Record::new(vm)));
        }
        let (events, _) = broadcast::channel(1024);
        let (exits, exit_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok((
            Service {
                data_root: data_root.to_path_buf(),
                db: Arc::new(store),
                cow,
                storage: seams.storage,
                switch: seams.switch,
                records: RwLock::new(records),
                guest_locks: Mutex::new(HashMap::new()),
                index_lock: tokio::sync::Mutex::new(()),
                config_lock: tokio::sync::Mutex::new(()),
                events,
                images: Images::new(data_root),
                nictags: catalog::nictags(data_root),
                sources: catalog::sources(data_root),
                zones: seams.zones,
                exits,
                exit_rx: Mutex::new(Some(exit_rx)),
            },
            loaded,
        ))
    }

    /// The data root.
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    /// Subscribes to guest events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    fn emit(&self, kind: EventKind, vm: &Vm, changes: Vec<String>) {
        let event = Event {
            kind,
            uuid: vm.uuid,
            alias: vm.alias.clone(),
            state: (kind != EventKind::Delete).then_some(vm.state),
            changes,
            timestamp: now(),
            vm: Some(Box::new(vm.clone())),
        };
        // No subscriber is not an error.
        let _ = self.events.send(Arc::new(event));
    }

    fn guest_lock(&self, uuid: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .guest_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(uuid).or_default().clone()
    }

    fn forget_lock(&self, uuid: Uuid) {
        let mut locks = self
            .guest_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only the map and the deleting caller hold it: nobody waits, so it can go. Anyone
        // who wants it later must take the map's mutex first and gets a fresh one.
        if locks.get(&uuid).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(&uuid);
        }
    }

    /// Every guest matching all `filters`.
    pub fn list(&self, filters: &[Filter]) -> Vec<Arc<Record>> {
        let records = read(&self.records);
        let mut out: Vec<Arc<Record>> = records
            .vms
            .values()
            .filter(|r| filters.iter().all(|f| f.matches(&r.value)))
            .cloned()
            .collect();
        out.sort_by_key(|vm| vm.uuid);
        out
    }

    /// One guest.
    pub fn get(&self, uuid: Uuid) -> Result<Arc<Record>> {
        read(&self.records)
            .vms
            .get(&uuid)
            .cloned()
            .ok_or(ServiceError::NotFound(uuid))
    }

    async fn persist(&self, vm: &Vm) -> Result<()> {
        let store = self.db.clone();
        let vm = vm.clone();
        blocking(move || store.put(&vm)).await
    }

    async fn save_state(&self, mut next: Vm) -> Result<Arc<Record>> {
        next.last_modified = now();
        let store = self.db.clone();
        let vm = next.clone();
        blocking(move || store.put_run_state(&vm)).await?;
        let next = Arc::new(Record::new(next));
        write(&self.records).insert(next.clone());
        self.emit(EventKind::State, &next, vec!["state".into()]);
        Ok(next)
    }
}
