//! The service layer: everything vmmd does to guests, independent of HTTP.
//!
//! It owns the in-memory index of guest records (loaded from the store at start), the
//! per-guest locks that serialize operations on one guest while different guests proceed in
//! parallel, the host checks validation needs, and the event stream. Every change is written
//! durably before it becomes visible, so a crash leaves each record whole or absent.
//!
//! Lock order: a guest's lock, then the index lock. Create takes only the index lock, which
//! makes "is this uuid/IP/MAC free?" and "insert" one atomic step.

pub mod catalog;
pub mod convert;
pub mod filter;
pub mod images;
pub mod network;
pub mod paths;
pub mod provision;
pub mod sources;
pub mod store;
pub mod update;
pub mod zones;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use hull_spec::api::EventKind;
use hull_spec::net::parse_mac;
use hull_spec::validate::{merge, nic_addresses};
use hull_spec::{
    Brand, Event, ImageManifest, NicTag, ValidationReport, Vm, VmCreate, VmState, validate_create,
    validate_update,
};
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use catalog::{CatalogError, Images, NicTags};
use filter::Filter;
use hull_cowstore::store::Store as CowStore;
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
    Zone(zones::ZoneError),
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
    macs: HashMap<[u8; 6], Uuid>,
    ips: HashMap<IpAddr, Uuid>,
}

fn claims(r: &Record) -> (Vec<[u8; 6]>, Vec<IpAddr>) {
    let nics = r.value.get("nics").and_then(Value::as_array);
    let macs = nics
        .into_iter()
        .flatten()
        .filter_map(|n| n.get("mac").and_then(Value::as_str).and_then(parse_mac))
        .collect();
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

    fn mac_owner(&self, mac: &[u8; 6], except: Option<Uuid>) -> Option<Uuid> {
        self.macs.get(mac).copied().filter(|u| Some(*u) != except)
    }

    fn ip_owner(&self, ip: &IpAddr, except: Option<Uuid>) -> Option<Uuid> {
        self.ips.get(ip).copied().filter(|u| Some(*u) != except)
    }
}

/// What to do with a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotVerb {
    /// Take it.
    Create,
    /// Roll the root back to it.
    Rollback,
    /// Delete it.
    Delete,
}

/// The daemon's guest service.
#[derive(Debug)]
pub struct Service {
    data_root: PathBuf,
    db: Arc<Store>,
    cow: Arc<CowStore>,
    records: RwLock<Index>,
    guest_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    index_lock: tokio::sync::Mutex<()>,
    config_lock: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Arc<Event>>,
    images: Images,
    nictags: NicTags,
    sources: catalog::Sources,
    zones: Arc<zones::Zones>,
    /// Guests whose runtime process ended (sent by the watchers, read by [`Service::reaper`]).
    exits: tokio::sync::mpsc::UnboundedSender<Uuid>,
    exit_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Uuid>>>,
    /// Names this data root in the aliases of its switch ports (see hull_vswitch::sweep).
    port_owner: String,
}

/// Starts the warning of a running microVM whose NICs changed: they apply at its next boot.
const NICS_AT_NEXT_BOOT: &str =
    "nics: changed while it runs; the changes take effect at its next boot:";

/// Starts the warning of a running microVM whose memory changed: it applies at its next boot.
const MEMORY_AT_NEXT_BOOT: &str =
    "memory: changed while it runs; the change takes effect at its next boot:";

/// Starts the warning naming a property changed while the guest runs that it takes only at
/// its next boot (one warning per property).
const AT_NEXT_BOOT: &str = "changed while it runs, takes effect at its next boot:";

/// Properties a running zone takes only when it boots again (written into its root at start).
const ZONE_BOOT_PROPERTIES: [&str; 4] = ["hostname", "resolvers", "dns_domain", "init_name"];

/// Properties a running microVM's VMM takes only when it starts again.
const MICROVM_BOOT_PROPERTIES: [&str; 4] = ["vcpus", "kernel", "initrd", "cmdline"];

/// What a microVM's record says when its payload sets `quota`: SmartOS bounds a KVM zone's
/// own dataset with it, and a hull microVM has none (its disks' sizes bound its storage).
const MICROVM_QUOTA: &str = "quota: stored but not enforced: a microVM has no root file system \
     of its own here; its disks' sizes bound what it stores";

/// Starts each note the host made while applying a guest's limits (at start or by a live
/// update): what this host cannot enforce, named. Replaced at every start.
const HOST_NOTE: &str = "this host:";

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

/// Adds `notes` from the host to `warnings`, each once.
fn add_host_notes(warnings: &mut Vec<String>, notes: &[String]) {
    for n in notes {
        let w = format!("{HOST_NOTE} {n}");
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
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
                cow: Arc::new(cow),
                records: RwLock::new(records),
                guest_locks: Mutex::new(HashMap::new()),
                index_lock: tokio::sync::Mutex::new(()),
                config_lock: tokio::sync::Mutex::new(()),
                events,
                images: Images::new(data_root),
                nictags: catalog::nictags(data_root),
                sources: catalog::sources(data_root),
                zones: Arc::new(zones::Zones::new(
                    data_root,
                    runtimes.zoned,
                    runtimes.vmm,
                    root_ids,
                )),
                exits,
                exit_rx: Mutex::new(Some(exit_rx)),
                port_owner: network::owner_tag(data_root),
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

    /// Checks a payload's NICs against the host: tags known, MACs and IPs free.
    fn check_nics_on_host(
        &self,
        report: &mut ValidationReport,
        prefix: &str,
        nics: &[Value],
        except: Option<Uuid>,
    ) -> Result<()> {
        let tags = self.nictags()?;
        let index = read(&self.records);
        for (i, nic) in nics.iter().enumerate() {
            if let Some(tag) = nic.get("nic_tag").and_then(Value::as_str)
                && !tags.contains_key(tag)
            {
                let known = if tags.is_empty() {
                    "none are defined; add one with nictagadm add".to_string()
                } else {
                    format!(
                        "known tags: {}",
                        tags.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                report.bad_value(
                    format!("{prefix}.{i}.nic_tag"),
                    format!("nic tag {tag:?} does not exist ({known})"),
                );
            }
            if let Some(mac) = nic.get("mac").and_then(Value::as_str).and_then(parse_mac)
                && index.mac_owner(&mac, except).is_some()
            {
                report.bad_value(
                    format!("{prefix}.{i}.mac"),
                    "this MAC is used by another VM",
                );
            }
            for ip in nic_addresses(nic) {
                if let Some(owner) = index.ip_owner(&ip, except) {
                    let field = if nic.get("ips").is_some() {
                        "ips"
                    } else {
                        "ip"
                    };
                    report.bad_value(
                        format!("{prefix}.{i}.{field}"),
                        format!("{ip} is used by VM {owner}"),
                    );
                }
            }
        }
        Ok(())
    }

    fn check_image(
        &self,
        report: &mut ValidationReport,
        property: &str,
        uuid: Uuid,
        brand: Brand,
    ) -> Result<()> {
        match self.images.get(uuid)? {
            None => report.bad_value(property, format!("image {uuid} is not installed")),
            Some(m) if !m.image_type.suits(brand) => report.bad_value(
                property,
                format!(
                    "image {uuid} is a {} image, which brand {brand} cannot use",
                    m.image_type.as_str()
                ),
            ),
            Some(_) => {}
        }
        Ok(())
    }

    /// Validates a create payload, host checks included. The index lock must be held by
    /// callers that go on to insert.
    pub fn validate_create(&self, payload: &Value) -> Result<VmCreate> {
        let (create, mut report) = match validate_create(payload) {
            Ok(c) => (Some(c), ValidationReport::default()),
            Err(r) if r.bad_brand.is_some() => return Err(ServiceError::Invalid(r)),
            Err(r) => (None, r),
        };
        // Host checks run even when the payload has other faults, so one report names all.
        if let Some(uuid) = payload
            .get("uuid")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            && read(&self.records).vms.contains_key(&uuid)
        {
            report.bad_value("uuid", format!("a VM with uuid {uuid} already exists"));
        }
        if let Some(nics) = payload.get("nics").and_then(Value::as_array) {
            self.check_nics_on_host(&mut report, "nics", nics, None)?;
        }
        let brand = payload
            .get("brand")
            .and_then(Value::as_str)
            .and_then(Brand::parse);
        if let Some(brand) = brand {
            if let Some(img) = payload
                .get("image_uuid")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                && !brand.is_microvm()
            {
                self.check_image(&mut report, "image_uuid", img, brand)?;
            }
            if let Some(disks) = payload.get("disks").and_then(Value::as_array) {
                for (i, d) in disks.iter().enumerate() {
                    if let Some(img) = d
                        .get("image_uuid")
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok())
                    {
                        self.check_image(
                            &mut report,
                            &format!("disks.{i}.image_uuid"),
                            img,
                            brand,
                        )?;
                    }
                }
            }
        }
        match create {
            Some(c) if report.is_empty() => Ok(c),
            _ => {
                let mut full = ValidationReport::default();
                merge(&mut full, report);
                Err(ServiceError::Invalid(full))
            }
        }
    }

    /// Creates a guest: all or nothing.
    pub async fn create(&self, payload: &Value) -> Result<Arc<Record>> {
        let _index = self.index_lock.lock().await;
        let create = self.validate_create(payload)?;
        let autoboot = create.autoboot.unwrap_or(true);
        let ctx = convert::Context {
            now: now(),
            data_root: self.data_root.clone(),
        };
        let vm = {
            let index = read(&self.records);
            let others = |m: &[u8; 6]| index.mac_owner(m, None).is_some();
            convert::new_record(create, &ctx, &mut convert::MacPool::new(&others))
                .map_err(|e| ServiceError::BadRequest(e.to_string()))?
        };
        let mut vm = vm;
        self.boot_from_image(&mut vm)?;
        let cow = self.cow.clone();
        let planned = vm.clone();
        vm.warnings = tokio::task::spawn_blocking(move || provision::provision(&cow, &planned))
            .await?
            .map_err(images::store_error)?;
        if vm.brand.is_microvm() && payload.get("quota").is_some() {
            vm.warnings.push(MICROVM_QUOTA.to_string());
        }
        vm.state = VmState::Stopped;
        vm.zone_state = VmState::Stopped.zone_state();
        if let Err(e) = self.persist(&vm).await {
            let cow = self.cow.clone();
            let uuid = vm.uuid;
            let _ = tokio::task::spawn_blocking(move || cow.destroy_guest(uuid)).await;
            return Err(e);
        }
        for w in &vm.warnings {
            tracing::warn!(uuid = %vm.uuid, "{w}");
        }
        let vm = Arc::new(Record::new(vm));
        write(&self.records).insert(vm.clone());
        self.emit(EventKind::Create, &vm, Vec::new());
        drop(_index);
        if autoboot {
            // SmartOS semantics: the guest exists even if its first boot fails; the error
            // says why and `vmadm start` retries.
            let uuid = vm.uuid;
            return self
                .start(uuid)
                .await
                .map_err(|e| ServiceError::CreatedNotBooted {
                    uuid,
                    error: Box::new(e),
                });
        }
        Ok(vm)
    }

    /// A microVM that names no kernel boots the one its boot disk's image carries (taken out
    /// of the disk at install), with the image's command line unless it gives its own.
    fn boot_from_image(&self, vm: &mut Vm) -> Result<()> {
        if !vm.brand.is_microvm() || vm.kernel.is_some() {
            return Ok(());
        }
        let boot = vm
            .disks
            .iter()
            .find(|d| d.boot == Some(true))
            .or_else(|| vm.disks.first());
        let Some(image) = boot.and_then(|d| d.image_uuid) else {
            return Ok(());
        };
        let dir = self.cow.image_dir(image);
        let kernel = dir.join("vmlinuz");
        if !kernel.exists() {
            return Ok(());
        }
        vm.kernel = Some(kernel.to_string_lossy().into_owned());
        let initrd = dir.join("initrd.img");
        if vm.initrd.is_none() && initrd.exists() {
            vm.initrd = Some(initrd.to_string_lossy().into_owned());
        }
        if vm.cmdline.is_none() {
            vm.cmdline = self
                .images
                .get(image)?
                .and_then(|m| m.extra.get("hull").and_then(|h| h.get("cmdline")).cloned())
                .and_then(|c| c.as_str().map(str::to_string));
        }
        Ok(())
    }

    async fn persist(&self, vm: &Vm) -> Result<()> {
        let store = self.db.clone();
        let vm = vm.clone();
        tokio::task::spawn_blocking(move || store.put(&vm)).await??;
        Ok(())
    }

    /// Validates an update payload for guest `uuid` (or, without a guest, for `brand`).
    pub fn validate_update(&self, payload: &Value, brand: Brand) -> Result<hull_spec::VmUpdate> {
        validate_update(payload, brand).map_err(ServiceError::Invalid)
    }

    /// Applies an update: all or nothing.
    pub async fn update(&self, uuid: Uuid, payload: &Value) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let current = self.get(uuid)?;
        let upd = self.validate_update(payload, current.brand)?;
        let touches_nics =
            upd.add_nics.is_some() || upd.update_nics.is_some() || upd.remove_nics.is_some();
        let _index = if touches_nics {
            Some(self.index_lock.lock().await)
        } else {
            None
        };
        let mut report = ValidationReport::default();
        if let Some(add) = payload.get("add_nics").and_then(Value::as_array) {
            self.check_nics_on_host(&mut report, "add_nics", add, Some(uuid))?;
        }
        if let Some(upd_nics) = payload.get("update_nics").and_then(Value::as_array) {
            // The NIC's own MAC is the key, not a claim; check tags and addresses only.
            let stripped: Vec<Value> = upd_nics
                .iter()
                .map(|n| {
                    let mut n = n.clone();
                    if let Some(o) = n.as_object_mut() {
                        o.remove("mac");
                    }
                    n
                })
                .collect();
            self.check_nics_on_host(&mut report, "update_nics", &stripped, Some(uuid))?;
        }
        for (i, d) in upd.add_disks.iter().flatten().enumerate() {
            if let Some(img) = d.image_uuid {
                self.check_image(
                    &mut report,
                    &format!("add_disks.{i}.image_uuid"),
                    img,
                    current.brand,
                )?;
            }
        }
        if !report.is_empty() {
            return Err(ServiceError::Invalid(report));
        }
        let (mut next, changes) = {
            let index = read(&self.records);
            let others = |m: &[u8; 6]| index.mac_owner(m, Some(uuid)).is_some();
            update::apply(&current, &upd, &self.data_root, &others)
                .map_err(ServiceError::Invalid)?
        };
        let growth = {
            let mut report = ValidationReport::default();
            let file = |p: &str| provision::disk_file_bytes(Path::new(p));
            let growth = update::disk_growth(&upd, &file, &mut report);
            if !report.is_empty() {
                return Err(ServiceError::Invalid(report));
            }
            growth
        };
        next.last_modified = now();
        if changes.iter().any(|c| c == "quota")
            && next.brand.is_microvm()
            && !next.warnings.iter().any(|w| w == MICROVM_QUOTA)
        {
            next.warnings.push(MICROVM_QUOTA.to_string());
        }
        if changes.iter().any(|c| c == "quota") && next.image_uuid.is_some() {
            next.warnings.retain(|w| !w.starts_with("quota:"));
            let cow = self.cow.clone();
            let gib = next.quota;
            let warning =
                tokio::task::spawn_blocking(move || provision::set_quota(&cow, uuid, gib))
                    .await?
                    .map_err(images::store_error)?;
            next.warnings.extend(warning);
        }
        // Disks added or removed by the update: make the new ones before the record says they
        // exist, remove the old ones only after it no longer does.
        let (added, removed) = provision::disk_changes(&current, &next);
        if !added.is_empty() {
            let cow = self.cow.clone();
            let (vm, add) = (next.clone(), added.clone());
            let made = tokio::task::spawn_blocking(move || provision::make_disks(&cow, &vm, &add))
                .await?
                .map_err(images::store_error)?;
            next.warnings.extend(made);
        }
        // NIC and route changes reach a running zone before the record says they happened; a
        // running microVM (no NIC hotplug) gets its NICs at its next boot, and the reply says
        // so (its routes are its guest's own).
        let mut undo_nics = None;
        let nics_changed = changes.iter().any(|c| c == "nics");
        if (nics_changed || changes.iter().any(|c| c == "routes"))
            && matches!(current.state, VmState::Running | VmState::Stopping)
        {
            if next.brand.is_microvm() {
                if !nics_changed {
                    // Nothing of the switch's changes.
                } else {
                    next.warnings.retain(|w| !w.starts_with(NICS_AT_NEXT_BOOT));
                    next.warnings.push(format!(
                        "{NICS_AT_NEXT_BOOT} the VM runs with the NICs it booted with: hull's VMM \
                     has no NIC hotplug"
                    ));
                }
            } else {
                match self.change_zone_nics(&current, &next).await {
                    Ok(undo) => undo_nics = undo,
                    Err(e) => {
                        let cow = self.cow.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            provision::remove_disks(&cow, uuid, &added)
                        })
                        .await;
                        return Err(e);
                    }
                }
            }
        }
        // Limits reach a running guest's cgroup before the record says they changed, so that
        // its warnings (what the host cannot enforce, what waits for the next boot) are
        // stored with it.
        if matches!(current.state, VmState::Running | VmState::Stopping) {
            let at_boot: &[&str] = match next.brand.is_microvm() {
                true => &MICROVM_BOOT_PROPERTIES,
                false => &ZONE_BOOT_PROPERTIES,
            };
            for c in changes.iter().filter(|c| at_boot.contains(&c.as_str())) {
                let w = format!("{AT_NEXT_BOOT} {c}");
                if !next.warnings.contains(&w) {
                    next.warnings.push(w);
                }
            }
        }
        let applied = if matches!(current.state, VmState::Running)
            && changes.iter().any(|c| LIVE_LIMITS.contains(&c.as_str()))
        {
            self.apply_live_limits(&current, &mut next).await
        } else {
            Ok(None)
        };
        // Disk files grow last before the store, so that only the store's failure has to take
        // them back; what a running guest already saw stays.
        let mut undo_growth = Vec::new();
        let persisted = match applied {
            Ok(undo) => match self.grow_disks(&current, growth).await {
                Ok(g) => {
                    undo_growth = g;
                    self.persist(&next).await.map_err(|e| (e, undo))
                }
                Err(e) => Err((e, undo)),
            },
            Err(e) => Err((e, None)),
        };
        if let Err((e, undo_limits)) = persisted {
            let grown = std::mem::take(&mut undo_growth);
            let _ = tokio::task::spawn_blocking(move || provision::shrink_back(&grown)).await;
            // Nothing changed: the disks it made go, the NICs and limits go back.
            let cow = self.cow.clone();
            let _ =
                tokio::task::spawn_blocking(move || provision::remove_disks(&cow, uuid, &added))
                    .await;
            if let Some((pid, undo)) = undo_nics {
                let owner = self.port_owner.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    hull_vswitch::update_zone(&owner, pid, &undo)
                })
                .await;
                self.record_plumbed(&current);
            }
            if let Some(limits) = undo_limits {
                let z = self.zones.clone();
                let req = zoned::config::Request::Update { limits };
                let _ = tokio::task::spawn_blocking(move || z.request(uuid, &req)).await;
            }
            return Err(e);
        }
        if !removed.is_empty() {
            let cow = self.cow.clone();
            if let Err(e) =
                tokio::task::spawn_blocking(move || provision::remove_disks(&cow, uuid, &removed))
                    .await?
            {
                tracing::warn!(%uuid, error = %e, "a removed disk's file could not be deleted");
            }
        }
        let next = Arc::new(Record::new(next));
        write(&self.records).insert(next.clone());
        self.emit(EventKind::Modify, &next, changes);
        Ok(next)
    }

    /// Grows an update's disk files and, when the microVM runs, has its VMM take each new
    /// size (`resize_disk`: the guest sees it without a reboot). When the VMM refuses or
    /// cannot be reached, the files it has not taken go back to their old sizes and the update
    /// fails. Returns what may still be undone: every grown file of a stopped guest, none
    /// of a running one (its guest may already use the new blocks).
    async fn grow_disks(
        &self,
        current: &Vm,
        growth: Vec<(String, u64)>,
    ) -> Result<Vec<provision::Grown>> {
        if growth.is_empty() {
            return Ok(Vec::new());
        }
        let grown = tokio::task::spawn_blocking(move || provision::grow_disks(&growth))
            .await?
            .map_err(images::store_error)?;
        if !(current.brand.is_microvm() && current.state == VmState::Running) {
            return Ok(grown);
        }
        let (z, uuid) = (self.zones.clone(), current.uuid);
        let (told, left) = tokio::task::spawn_blocking(move || {
            let mut grown = grown;
            for i in 0..grown.len() {
                // A disk added while the guest runs is not in its VMM: it sees the file's
                // size when it boots.
                let index = match z.vmm_disk_index(uuid, &grown[i].path) {
                    Ok(Some(index)) => index,
                    Ok(None) => continue,
                    Err(e) => return (Err(e), grown.split_off(i)),
                };
                let req = hull_vmm_proto::ControlRequest::ResizeDisk { index };
                if let Err(e) = z.vmm_request(uuid, &req) {
                    return (Err(e), grown.split_off(i));
                }
            }
            (Ok(()), Vec::new())
        })
        .await?;
        if let Err(e) = told {
            let problems =
                tokio::task::spawn_blocking(move || provision::shrink_back(&left)).await?;
            for p in problems {
                tracing::warn!(%uuid, problem = %p, "a disk grown for a failed update stays grown");
            }
            return Err(ServiceError::Zone(e));
        }
        Ok(Vec::new())
    }

    /// Applies `next`'s limits to the running guest's cgroup and returns the limits that
    /// undo it. A zone takes them all. A microVM's VMM zone takes CPU, pids and io at once;
    /// its guest's RAM was allocated at boot, so its memory limit stays what it booted with
    /// and a warning says the new one waits for the next boot.
    async fn apply_live_limits(
        &self,
        current: &Vm,
        next: &mut Vm,
    ) -> Result<Option<zoned::cgroup::Limits>> {
        let uuid = current.uuid;
        let mut limits = zones::limits(next);
        let mut undo = zones::limits(current);
        if next.brand.is_microvm() {
            let z = self.zones.clone();
            let booted = tokio::task::spawn_blocking(move || z.running_config(uuid))
                .await?
                .ok_or_else(|| {
                    ServiceError::Conflict(format!(
                        "VM {uuid} is running but its zone's config cannot be read"
                    ))
                })?;
            let (memory, swap) = (booted.limits.memory_bytes, booted.limits.swap_bytes);
            (limits.memory_bytes, limits.swap_bytes) = (memory, swap);
            (undo.memory_bytes, undo.swap_bytes) = (memory, swap);
            next.warnings
                .retain(|w| !w.starts_with(MEMORY_AT_NEXT_BOOT));
            let wanted = zones::limits(next);
            let booted_ram = zones::Zones::booted_ram(&booted);
            if booted_ram != Some(next.ram)
                || wanted.memory_bytes != memory
                || wanted.swap_bytes != swap
            {
                let ram = booted_ram.map_or("its boot's".to_string(), |r| format!("{r} MiB of"));
                next.warnings.push(format!(
                    "{MEMORY_AT_NEXT_BOOT} the VM keeps {ram} RAM and its VMM's memory limit \
                     until it is restarted"
                ));
            }
        }
        let z = self.zones.clone();
        let req = zoned::config::Request::Update { limits };
        let reply = tokio::task::spawn_blocking(move || z.request(uuid, &req))
            .await?
            .map_err(|e| {
                ServiceError::Conflict(format!(
                    "VM {uuid}: the new limits cannot be applied to the running guest, so \
                     nothing was changed: {e}"
                ))
            })?;
        add_host_notes(&mut next.warnings, &reply.notes);
        Ok(Some(undo))
    }

    /// Applies the NIC changes from `current` to `next` to a running zone: new veth pairs,
    /// removed ones deleted, changed ones updated (see hull_vswitch::update_zone). On a
    /// failure what was applied is undone and nothing has changed. Returns the change that
    /// undoes it (with the zone's init pid), for when the record cannot be written.
    async fn change_zone_nics(
        &self,
        current: &Vm,
        next: &Vm,
    ) -> Result<Option<(i32, hull_vswitch::ZoneChange)>> {
        let uuid = current.uuid;
        let tags = self.nictags()?;
        let old = network::zone_nics(current, &tags)
            .map_err(|e| ServiceError::Conflict(format!("VM {uuid}: {e}")))?;
        let new = network::zone_nics(next, &tags)
            .map_err(|e| ServiceError::Conflict(format!("VM {uuid}: {e}")))?;
        let routes = |vm: &Vm| {
            network::zone_routes(vm).map_err(|e| ServiceError::Conflict(format!("VM {uuid}: {e}")))
        };
        let (old_routes, new_routes) = (routes(current)?, routes(next)?);
        let change =
            hull_vswitch::ZoneChange::between(&old, &new).routing(&old_routes, &new_routes);
        if change.is_empty() {
            return Ok(None);
        }
        let Some(pid) = current.pid.map(|p| p as i32) else {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} runs without a known init process; stop it to change its NICs"
            )));
        };
        let undo = hull_vswitch::ZoneChange::between(&new, &old).routing(&new_routes, &old_routes);
        let owner = self.port_owner.clone();
        let (c, u) = (change.clone(), undo.clone());
        let applied = tokio::task::spawn_blocking(move || {
            let r = hull_vswitch::update_zone(&owner, pid, &c);
            if r.is_err() {
                // Back to what the record says (best effort: the error is the first one).
                let _ = hull_vswitch::update_zone(&owner, pid, &u);
            }
            r
        })
        .await?;
        match applied {
            Ok(()) => {
                self.record_plumbed(next);
                Ok(Some((pid, undo)))
            }
            Err(e) => {
                self.record_plumbed(current);
                Err(ServiceError::Zone(zones::ZoneError::Control {
                    uuid,
                    reason: format!(
                        "cannot change its NICs, so the update was not applied: {}",
                        zoned::run::chain(&e)
                    ),
                }))
            }
        }
    }

    /// Where a running guest's plumbed NICs are noted (its zone directory).
    fn plumbed_path(&self, uuid: Uuid) -> PathBuf {
        self.zones.dir(uuid).join("nics.json")
    }

    /// Notes the NICs a running guest's ports were made from: what vmmd guards at its next
    /// start, which for a microVM whose record changed since its boot is not the record.
    fn record_plumbed(&self, vm: &Vm) {
        let path = self.plumbed_path(vm.uuid);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(&vm.nics)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(uuid = %vm.uuid, "cannot note its plumbed NICs in {}: {e}", path.display());
        }
    }

    /// The NICs a running guest's ports were made from (its record's when none are noted).
    fn plumbed(&self, vm: &Vm) -> Vm {
        let mut out = vm.clone();
        if let Some(nics) = std::fs::read(self.plumbed_path(vm.uuid))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            out.nics = nics;
        }
        out
    }

    /// Deletes a guest record.
    pub async fn delete(&self, uuid: Uuid) -> Result<()> {
        let lock = self.guest_lock(uuid);
        let guard = lock.lock().await;
        let mut current = self.get(uuid)?;
        if matches!(current.state, VmState::Running | VmState::Stopping) {
            // As vmadm delete does: a running guest is stopped (at once) first.
            current = self.stop_locked(current, true, None).await?;
        }
        let store = self.db.clone();
        tokio::task::spawn_blocking(move || store.remove(uuid)).await??;
        let cow = self.cow.clone();
        tokio::task::spawn_blocking(move || cow.destroy_guest(uuid))
            .await?
            .map_err(images::store_error)?;
        let z = self.zones.clone();
        tokio::task::spawn_blocking(move || z.forget(uuid)).await?;
        write(&self.records).remove(uuid);
        self.emit(EventKind::Delete, &current, Vec::new());
        drop(guard);
        drop(lock);
        self.forget_lock(uuid);
        Ok(())
    }

    /// Takes, rolls back to, or deletes a snapshot of a stopped zone's root.
    pub async fn snapshot(
        &self,
        uuid: Uuid,
        name: &str,
        verb: SnapshotVerb,
    ) -> Result<Arc<Record>> {
        // A bad name is a bad request parameter (400), as SmartOS refuses it before any work.
        hull_spec::validate::validate_snapshot_name(name)
            .map_err(|r| ServiceError::BadRequest(r.summary()))?;
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let current = self.get(uuid)?;
        if current.brand.is_microvm() || current.image_uuid.is_none() {
            return Err(ServiceError::NotImplemented(format!(
                "snapshots cover zone roots; snapshots of microVM disks are not built yet (VM {uuid})"
            )));
        }
        if matches!(current.state, VmState::Running | VmState::Stopping) {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} is {}: stop it first",
                current.state.as_str()
            )));
        }
        let exists = current.snapshots.iter().any(|s| s.name == name);
        match verb {
            SnapshotVerb::Create if exists => {
                return Err(ServiceError::Conflict(format!(
                    "VM {uuid} already has a snapshot {name:?}"
                )));
            }
            SnapshotVerb::Rollback | SnapshotVerb::Delete if !exists => {
                return Err(ServiceError::BadRequest(format!(
                    "VM {uuid} has no snapshot {name:?}"
                )));
            }
            _ => {}
        }
        let mut next = current.vm.clone();
        let cow = self.cow.clone();
        let n = name.to_string();
        match verb {
            SnapshotVerb::Create => {
                tokio::task::spawn_blocking(move || cow.snapshot(uuid, &n))
                    .await?
                    .map_err(images::store_error)?;
                next.snapshots.push(hull_spec::vm::Snapshot {
                    name: name.to_string(),
                    created_at: now(),
                });
            }
            SnapshotVerb::Rollback => {
                tokio::task::spawn_blocking(move || cow.rollback(uuid, &n))
                    .await?
                    .map_err(images::store_error)?;
            }
            SnapshotVerb::Delete => {
                tokio::task::spawn_blocking(move || cow.delete_snapshot(uuid, &n))
                    .await?
                    .map_err(images::store_error)?;
                next.snapshots.retain(|s| s.name != name);
            }
        }
        next.last_modified = now();
        if let Err(e) = self.persist(&next).await {
            if verb == SnapshotVerb::Create {
                let cow = self.cow.clone();
                let n = name.to_string();
                let _ = tokio::task::spawn_blocking(move || cow.delete_snapshot(uuid, &n)).await;
            }
            return Err(e);
        }
        let next = Arc::new(Record::new(next));
        write(&self.records).insert(next.clone());
        self.emit(EventKind::Modify, &next, vec!["snapshots".into()]);
        Ok(next)
    }

    /// Starts a guest.
    pub async fn start(&self, uuid: Uuid) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let vm = self.get(uuid)?;
        if vm.state == VmState::Running {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} is already running"
            )));
        }
        if vm.brand.is_microvm() && vm.kernel.is_none() {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} cannot boot: it has no kernel; give \"kernel\" (a host path) with \
                 vmadm update, or boot it from a disk image that carries one"
            )));
        }
        // A zone's ports are worked out before it starts: a nic the switch cannot plumb
        // fails the start, not the zone's network later.
        let ports = match vm.nics.is_empty() {
            true => Vec::new(),
            false => network::zone_nics(&vm, &self.nictags()?)
                .map_err(|e| ServiceError::Conflict(format!("cannot start VM {uuid}: {e}")))?,
        };
        let routes = match vm.brand.is_microvm() {
            // A microVM's routes are its guest's business.
            true => Vec::new(),
            false => network::zone_routes(&vm)
                .map_err(|e| ServiceError::Conflict(format!("cannot start VM {uuid}: {e}")))?,
        };
        if vm.brand.is_microvm() && !ports.is_empty() {
            // A microVM's TAPs exist before its VMM: zoned opens them for it.
            let (owner, key, taps) = (self.port_owner.clone(), uuid.to_string(), ports.clone());
            tokio::task::spawn_blocking(move || network::make_taps(&owner, &key, &taps))
                .await?
                .map_err(|reason| ServiceError::Zone(zones::ZoneError::Start { uuid, reason }))?;
        }
        let root = match vm.brand.is_microvm() {
            // A microVM's zone holds its VMM, kernel and disks, not a root filesystem.
            true => None,
            false => {
                let cow = self.cow.clone();
                let root = tokio::task::spawn_blocking(move || cow.root_source(uuid))
                    .await?
                    .map_err(images::store_error)?
                    .ok_or(ServiceError::Zone(zones::ZoneError::NoRoot(uuid)))?;
                Some(root)
            }
        };
        let z = self.zones.clone();
        let planned = vm.vm.clone();
        let started = tokio::task::spawn_blocking(move || z.start(&planned, root)).await?;
        let st = match started {
            Ok(st) => st,
            Err(e) => {
                let z = self.zones.clone();
                let owner = self.port_owner.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = hull_vswitch::remove_ports(&owner, &uuid.to_string());
                    z.clean_up(uuid)
                })
                .await;
                return Err(ServiceError::Zone(e));
            }
        };
        if let (false, false, Some(pid)) = (vm.brand.is_microvm(), ports.is_empty(), st.init_pid) {
            let (owner, key) = (self.port_owner.clone(), uuid.to_string());
            let plumbed = tokio::task::spawn_blocking(move || {
                hull_vswitch::plumb_zone(&owner, &key, pid, &ports, &routes)
            })
            .await?;
            if let Err(e) = plumbed {
                // No half-made guest: the zone goes with what was plumbed.
                let z = self.zones.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let force = zoned::config::Request::Stop {
                        timeout_s: Some(0),
                        force: true,
                    };
                    let _ = z.request(uuid, &force);
                    z.wait_stopped(uuid, std::time::Duration::from_secs(15));
                    z.clean_up(uuid)
                })
                .await;
                return Err(ServiceError::Zone(zones::ZoneError::Start {
                    uuid,
                    reason: format!("cannot plumb its nics: {}", zoned::run::chain(&e)),
                }));
            }
        }
        if !vm.nics.is_empty() {
            self.record_plumbed(&vm);
        }
        self.watch(uuid, st.zoned_pid);
        self.set_running(&vm, &st).await
    }

    async fn set_running(
        &self,
        current: &Vm,
        st: &zoned::config::ZoneState,
    ) -> Result<Arc<Record>> {
        let mut next = current.clone();
        next.state = VmState::Running;
        next.zone_state = VmState::Running.zone_state();
        next.pid = st.init_pid.map(|p| p as u32);
        next.boot_timestamp = Some(now());
        next.exit_status = None;
        next.failure = None;
        // Records from before the switch carried the first warning; the second is for NIC
        // changes made while it ran, which it now has.
        // The same for memory changes made while it ran, and the host's notes, which this
        // start made anew.
        next.warnings.retain(|w| {
            !w.starts_with("its nics are not plumbed")
                && !w.starts_with(NICS_AT_NEXT_BOOT)
                && !w.starts_with(MEMORY_AT_NEXT_BOOT)
                && !w.starts_with(AT_NEXT_BOOT)
                && !w.starts_with(HOST_NOTE)
        });
        add_host_notes(&mut next.warnings, &st.notes);
        self.save_state(next).await
    }

    async fn set_stopped(&self, current: &Vm) -> Result<Arc<Record>> {
        let uuid = current.uuid;
        let z = self.zones.clone();
        let has_nics = !current.nics.is_empty();
        let owner = self.port_owner.clone();
        let (last, problems) = tokio::task::spawn_blocking(move || {
            let last = z.last_state(uuid);
            let mut problems = z.clean_up(uuid);
            // The kernel deletes a zone's veth pairs when its network namespace goes, but
            // later, from a work queue: delete them now (with their anti-spoofing entries,
            // qdiscs and IFBs), so a stopped guest has no port.
            if has_nics && let Err(e) = hull_vswitch::remove_ports(&owner, &uuid.to_string()) {
                problems.push(zoned::run::chain(&e));
            }
            (last, problems)
        })
        .await?;
        for p in problems {
            tracing::warn!(%uuid, "zone clean-up: {p}");
        }
        let _ = std::fs::remove_file(self.plumbed_path(uuid));
        let mut next = current.clone();
        next.state = VmState::Stopped;
        next.zone_state = VmState::Stopped.zone_state();
        next.pid = None;
        if let Some(last) = last {
            next.exit_status = last
                .last_exit
                .map(|e| e.code.unwrap_or_else(|| 128 + e.signal.unwrap_or(0)));
            next.failure = last.error;
        }
        self.save_state(next).await
    }

    async fn save_state(&self, mut next: Vm) -> Result<Arc<Record>> {
        next.last_modified = now();
        let store = self.db.clone();
        let vm = next.clone();
        tokio::task::spawn_blocking(move || store.put_run_state(&vm)).await??;
        let next = Arc::new(Record::new(next));
        write(&self.records).insert(next.clone());
        self.emit(EventKind::State, &next, vec!["state".into()]);
        Ok(next)
    }

    /// Deletes the switch ports left in the host's namespace by guests that are not running
    /// (a vmmd or host crash in the middle of a start), and loads this vmmd's anti-spoofing
    /// table afresh with the entries of the running guests' ports (dropping any a crash
    /// left). Returns the names of the links removed.
    pub async fn sweep_ports(&self) -> std::result::Result<Vec<String>, String> {
        let tags = self
            .nictags()
            .map_err(|e| format!("cannot read the nic tags: {e}"))?;
        let (running, guarded) = {
            let index = read(&self.records);
            let live: Vec<&Arc<Record>> = index
                .vms
                .values()
                .filter(|vm| matches!(vm.state, VmState::Running | VmState::Stopping))
                .collect();
            let uuids: std::collections::BTreeSet<String> =
                live.iter().map(|vm| vm.uuid.to_string()).collect();
            let guarded: Vec<(String, hull_vswitch::Guard)> = live
                .iter()
                .flat_map(|vm| network::guarded_ports(&self.plumbed(vm), &tags))
                .collect();
            (uuids, guarded)
        };
        let owner = self.port_owner.clone();
        tokio::task::spawn_blocking(move || {
            hull_vswitch::sweep(&owner, move |uuid| running.contains(uuid), guarded)
        })
        .await
        .map_err(|e| format!("cannot sweep switch ports: {e}"))?
        .map_err(|e| format!("cannot sweep switch ports: {}", zoned::run::chain(&e)))
    }

    /// Makes a spare zoned ahead of the first zone start (on cgroup v1 hosts, as root).
    pub fn prepare_zones(&self) {
        self.zones.refill();
    }

    /// Watches a zone's zoned process and reports its end to the reaper.
    fn watch(&self, uuid: Uuid, pid: i32) {
        let tx = self.exits.clone();
        let Ok(fd) = zoned::config::pidfd(pid) else {
            let _ = tx.send(uuid);
            return;
        };
        // `AsyncFd::new` is deprecated for descriptors the caller might close behind tokio's
        // back; this one is an OwnedFd moved in, so only the AsyncFd can close it.
        #[allow(deprecated)]
        let afd = tokio::io::unix::AsyncFd::new(fd);
        tokio::spawn(async move {
            if let Ok(afd) = afd {
                let _ = afd.readable().await;
            }
            let _ = tx.send(uuid);
        });
    }

    /// Marks guests whose runtime process ended as stopped (and cleans what they left).
    pub async fn reaper(self: Arc<Self>) {
        let rx = self
            .exit_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut rx) = rx else { return };
        while let Some(uuid) = rx.recv().await {
            let lock = self.guest_lock(uuid);
            let _guest = lock.lock().await;
            let Ok(vm) = self.get(uuid) else { continue };
            let z = self.zones.clone();
            let alive = tokio::task::spawn_blocking(move || z.alive(uuid).is_some())
                .await
                .unwrap_or(false);
            if matches!(vm.state, VmState::Running | VmState::Stopping) && !alive {
                tracing::info!(%uuid, "zone stopped");
                if let Err(e) = self.set_stopped(&vm).await {
                    tracing::error!(%uuid, error = %e, "cannot record a zone's stop");
                }
            }
        }
    }

    /// After a vmmd restart: zones whose zoned still runs are watched again and stay
    /// running; the others are marked stopped and their leftovers removed.
    pub async fn reattach(&self) -> (usize, usize) {
        let (mut kept, mut lost) = (0, 0);
        let running: Vec<Arc<Record>> = read(&self.records)
            .vms
            .values()
            .filter(|r| matches!(r.state, VmState::Running | VmState::Stopping))
            .cloned()
            .collect();
        for vm in running {
            let uuid = vm.uuid;
            let z = self.zones.clone();
            let alive = tokio::task::spawn_blocking(move || z.alive(uuid))
                .await
                .ok()
                .flatten();
            match alive {
                Some(st) => {
                    self.watch(uuid, st.zoned_pid);
                    kept += 1;
                }
                _ => {
                    lost += 1;
                    if let Err(e) = self.set_stopped(&vm).await {
                        tracing::error!(%uuid, error = %e, "cannot record a zone's stop");
                    }
                }
            }
        }
        (kept, lost)
    }

    /// Stops a guest: gracefully (SIGTERM to init, then everything killed after `timeout`
    /// seconds) or at once with `force`.
    pub async fn stop(&self, uuid: Uuid, force: bool, timeout: Option<u64>) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let vm = self.running(uuid, "stop")?;
        self.stop_locked(vm, force, timeout).await
    }

    async fn stop_locked(
        &self,
        vm: Arc<Record>,
        force: bool,
        timeout: Option<u64>,
    ) -> Result<Arc<Record>> {
        let uuid = vm.uuid;
        let timeout = timeout.unwrap_or(30);
        let z = self.zones.clone();
        let stopped = tokio::task::spawn_blocking(move || {
            if z.alive(uuid).is_some() {
                z.request(
                    uuid,
                    &zoned::config::Request::Stop {
                        timeout_s: Some(timeout),
                        force,
                    },
                )?;
            }
            Ok::<_, zones::ZoneError>(
                z.wait_stopped(uuid, std::time::Duration::from_secs(timeout + 15)),
            )
        })
        .await?
        .map_err(ServiceError::Zone)?;
        if !stopped {
            return Err(ServiceError::Zone(zones::ZoneError::Control {
                uuid,
                reason: "it did not stop in time".into(),
            }));
        }
        self.set_stopped(&vm).await
    }

    /// Reboots a running zone (zoned stops init and boots it again).
    pub async fn reboot(&self, uuid: Uuid, force: bool) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let vm = self.running(uuid, "reboot")?;
        let z = self.zones.clone();
        let st = tokio::task::spawn_blocking(move || {
            let before = z.alive(uuid).map(|s| s.boots).unwrap_or(0);
            let timeout = if force { 0 } else { 30 };
            z.request(
                uuid,
                &zoned::config::Request::Reboot {
                    timeout_s: Some(timeout),
                },
            )?;
            let t = std::time::Instant::now();
            loop {
                match z.alive(uuid) {
                    Some(s) if s.boots > before && s.phase == zoned::config::Phase::Running => {
                        return Ok(s);
                    }
                    None => {
                        return Err(zones::ZoneError::Control {
                            uuid,
                            reason: "it stopped instead of rebooting".into(),
                        });
                    }
                    _ if t.elapsed() > std::time::Duration::from_secs(timeout + 45) => {
                        return Err(zones::ZoneError::Control {
                            uuid,
                            reason: "it did not come back up in time".into(),
                        });
                    }
                    _ => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        })
        .await?
        .map_err(ServiceError::Zone)?;
        self.set_running(&vm, &st).await
    }

    /// Sends a signal to a running zone's init.
    pub async fn kill(&self, uuid: Uuid, signal: i32) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let vm = self.running(uuid, "kill")?;
        let z = self.zones.clone();
        tokio::task::spawn_blocking(move || {
            z.request(uuid, &zoned::config::Request::Kill { signal })
        })
        .await?
        .map_err(ServiceError::Zone)?;
        Ok(vm)
    }

    /// `vmadm info`: what a running microVM's VMM reports on its control socket (vCPU exits,
    /// bytes per device), with the guest's status and pid.
    pub async fn info(&self, uuid: Uuid) -> Result<Value> {
        let vm = self.running(uuid, "get info of")?;
        if !vm.brand.is_microvm() {
            return Err(ServiceError::Conflict(format!(
                "vmadm info is for microVMs (brands kvm and bhyve); VM {uuid} is a {} zone",
                vm.brand
            )));
        }
        let z = self.zones.clone();
        let req = hull_vmm_proto::ControlRequest::Stats {};
        let reply = tokio::task::spawn_blocking(move || z.vmm_request(uuid, &req))
            .await?
            .map_err(ServiceError::Zone)?;
        let stats = reply.stats;
        Ok(serde_json::json!({
            "status": vm.state.as_str(),
            "pid": vm.pid,
            "cpus": stats.as_ref().map(|s| &s.vcpus),
            "devices": stats.as_ref().map(|s| &s.devices),
        }))
    }

    /// Where `vmadm console` and `zlogin` reach a running zone.
    pub fn runtime_dir(&self, uuid: Uuid) -> Result<PathBuf> {
        self.running(uuid, "reach")?;
        Ok(self.zones.dir(uuid))
    }

    fn running(&self, uuid: Uuid, verb: &str) -> Result<Arc<Record>> {
        let vm = self.get(uuid)?;
        if !matches!(vm.state, VmState::Running | VmState::Stopping) {
            return Err(ServiceError::Conflict(format!(
                "cannot {verb} VM {uuid}: it is {}, not running",
                vm.state.as_str()
            )));
        }
        Ok(vm)
    }

    /// Starts every guest marked autoboot; returns (uuid, error) for those that failed.
    pub async fn autoboot(&self) -> Vec<(Uuid, ServiceError)> {
        let candidates: Vec<Uuid> = read(&self.records)
            .vms
            .values()
            .filter(|vm| vm.autoboot && vm.state != VmState::Running)
            .map(|vm| vm.uuid)
            .collect();
        let mut failed = Vec::new();
        for uuid in candidates {
            if let Err(e) = self.start(uuid).await {
                failed.push((uuid, e));
            }
        }
        failed
    }

    /// Installed images.
    pub fn images(&self) -> Result<Vec<ImageManifest>> {
        Ok(self.images.list()?)
    }

    /// One installed image.
    pub fn image(&self, uuid: Uuid) -> Result<ImageManifest> {
        self.images
            .get(uuid)?
            .ok_or(ServiceError::ImageNotFound(uuid))
    }

    /// The nic tags, by name.
    pub fn nictags(&self) -> Result<BTreeMap<String, NicTag>> {
        Ok(self
            .nictags
            .load()?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect())
    }

    /// Adds a nic tag.
    pub async fn add_nictag(&self, tag: NicTag) -> Result<NicTag> {
        let _g = self.config_lock.lock().await;
        let mut report = ValidationReport::default();
        if !hull_spec::validate::is_nic_tag(&tag.name) {
            report.bad_value("name", "a nic tag name is 1-31 letters, digits, _ or -");
        }
        if let Some(up) = &tag.uplink {
            let sane =
                !up.is_empty() && up.len() < 16 && !up.contains('/') && up != "." && up != "..";
            if !sane {
                report.bad_value("uplink", format!("{up:?} is not an interface name"));
            } else if !Path::new("/sys/class/net").join(up).exists() {
                report.bad_value("uplink", format!("the host has no interface {up:?}"));
            }
        }
        if !report.is_empty() {
            return Err(ServiceError::Invalid(report));
        }
        let mut tags = self.nictags()?;
        if tags.contains_key(&tag.name) {
            return Err(ServiceError::Conflict(format!(
                "nic tag {:?} already exists",
                tag.name
            )));
        }
        tags.insert(tag.name.clone(), tag.clone());
        self.save_tags(tags).await?;
        Ok(tag)
    }

    /// Deletes a nic tag that no guest uses.
    pub async fn delete_nictag(&self, name: &str) -> Result<()> {
        let _g = self.config_lock.lock().await;
        let mut tags = self.nictags()?;
        let Some(tag) = tags.remove(name) else {
            return Err(ServiceError::NicTagNotFound(name.to_string()));
        };
        let users: Vec<String> = read(&self.records)
            .vms
            .values()
            .filter(|vm| vm.nics.iter().any(|n| n.nic_tag == name))
            .map(|vm| vm.uuid.to_string())
            .collect();
        if !users.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "nic tag {name:?} is used by VM {}",
                users.join(", ")
            )));
        }
        // Its bridges and VLAN sub-interfaces go, and its uplink leaves its bridge.
        let owner = self.port_owner.clone();
        let tag_name = name.to_string();
        tokio::task::spawn_blocking(move || {
            hull_vswitch::release_tag(&owner, &tag_name, tag.uplink.as_deref())
        })
        .await?
        .map_err(|e| ServiceError::Conflict(zoned::run::chain(&e)))?;
        self.save_tags(tags).await
    }

    async fn save_tags(&self, tags: BTreeMap<String, NicTag>) -> Result<()> {
        let root = self.data_root.clone();
        let list: Vec<NicTag> = tags.into_values().collect();
        tokio::task::spawn_blocking(move || catalog::nictags(&root).save(&list)).await??;
        Ok(())
    }
}
