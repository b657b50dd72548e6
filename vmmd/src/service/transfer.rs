//! SmartOS's `vmadm send` and `vmadm receive`: a guest as one stream (see
//! [`hull_cowstore::send`]) from this host to another.
//!
//! Send stops the guest (as SmartOS does) and keeps it; the stream holds its record, then a
//! zone's root tree and delegated dataset, or a microVM's disks. Receive reads the record
//! first and refuses, before writing anything, a uuid this host has, an image it has not
//! installed, a nic tag it lacks, MACs or IPs in use; then it shows the guest as `receiving`
//! (in memory only: a crash leaves storage without a record, which the next start removes)
//! while the data lands in the guest's directory, and records it `stopped` once every
//! section and the end marker verified. Any error destroys what was written.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hull_cowstore::archive::Compression;
use hull_cowstore::archive::Listing;
use hull_cowstore::send::{self, Header, Reader, Section, SectionKind, Since, StreamError, Writer};
use hull_cowstore::store::StoreError;
use hull_spec::api::EventKind;
use hull_spec::{ValidationReport, Vm, VmState};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::images::{ChunkReader, ChunkWriter, store_error};
use super::{
    Record, Result, Service, ServiceError, best_effort, blocking, convert, now, read, write,
};

/// The largest record section a receiver reads.
const MAX_RECORD: u64 = 16 << 20;

/// The largest list of removed paths a receiver reads.
const MAX_REMOVALS: u64 = 256 << 20;

fn stream_error(e: StreamError) -> ServiceError {
    match e {
        StreamError::Read(e) => ServiceError::BadRequest(format!(
            "the stream could not be read: {}",
            hull_sys::chain(&e)
        )),
        other => ServiceError::BadRequest(other.to_string()),
    }
}

/// Errors of the blocking side of a receive: the stream's, or the store's.
enum Failed {
    Stream(StreamError),
    Store(StoreError),
    /// The stream is whole but not what this hull receives.
    Refused(String),
}

impl From<Failed> for ServiceError {
    fn from(f: Failed) -> ServiceError {
        match f {
            Failed::Stream(e) => stream_error(e),
            Failed::Store(e) => store_error(e),
            Failed::Refused(m) => ServiceError::BadRequest(m),
        }
    }
}

/// Why a send stopped after its first byte.
enum SendFailed {
    /// Writing the stream (the client went away).
    Io(std::io::Error),
    /// Reading the guest's storage.
    Store(StoreError),
}

impl From<std::io::Error> for SendFailed {
    fn from(e: std::io::Error) -> SendFailed {
        SendFailed::Io(e)
    }
}

/// The file name a hull-made disk has in its guest's directory.
fn disk_name(vm: &Vm, i: usize, guests_dir: &Path) -> Option<String> {
    let path = Path::new(vm.disks.get(i)?.path.as_deref()?);
    let rest = path
        .strip_prefix(guests_dir.join(vm.uuid.to_string()))
        .ok()?;
    let name = rest.to_str()?;
    hull_cowstore::store::is_disk_name(name).then(|| name.to_string())
}

/// An empty listing (a base that every entry differs from).
static EMPTY_LISTING: std::sync::LazyLock<Listing> = std::sync::LazyLock::new(Listing::default);

/// What a send streams, worked out before its first byte.
struct Plan {
    sections: Vec<Section>,
    since: Option<Since>,
    /// Incremental zones: the snapshot's listing and the paths removed since.
    base: Option<Listing>,
    removed: Vec<PathBuf>,
}

fn section(kind: SectionKind, index: Option<usize>, size: Option<u64>) -> Section {
    Section { kind, index, size }
}

/// A disk's copy in snapshot `snapshot` (where [`hull_cowstore::store::Store::snapshot_disks`]
/// put it).
fn snapshot_disk(
    cow: &hull_cowstore::store::Store,
    uuid: Uuid,
    snapshot: Option<&str>,
    disk: &Path,
) -> PathBuf {
    cow.guest_dir(uuid)
        .join(hull_cowstore::backend::SNAPSHOTS_DIR)
        .join(snapshot.unwrap_or_default())
        .join(disk.file_name().unwrap_or_default())
}

/// The sections of a send of `vm` (since snapshot `since` if given) and, incremental, the
/// base's fingerprints: the snapshot's root listing, or each disk's copy read whole.
fn plan_send(
    cow: &hull_cowstore::store::Store,
    vm: &Vm,
    since: Option<&str>,
    guests_dir: &Path,
    range: Option<(u32, u32)>,
) -> Result<Plan> {
    let uuid = vm.uuid;
    let store = |e: StoreError| store_error(e);
    let mut plan = Plan {
        sections: vec![section(SectionKind::Record, None, None)],
        since: since.map(|s| Since {
            snapshot: s.to_string(),
            root: None,
            disks: Vec::new(),
        }),
        base: None,
        removed: Vec::new(),
    };
    if vm.brand.is_microvm() {
        for (i, d) in vm.disks.iter().enumerate() {
            if disk_name(vm, i, guests_dir).is_none() {
                return Err(ServiceError::Conflict(format!(
                    "VM {uuid}'s disk {i} ({}) is a file hull did not make, which it does \
                     not send; copy it to the other host yourself",
                    d.path.as_deref().unwrap_or("no path")
                )));
            }
            let path = PathBuf::from(d.path.as_deref().unwrap_or_default());
            let io = |what: &'static str, p: &Path| {
                let p = p.to_path_buf();
                move |e| ServiceError::Storage(StoreError::Io(hull_sys::IoError::new(what, p, e)))
            };
            let size = std::fs::metadata(&path)
                .map_err(io("read the size of", &path))?
                .len();
            let kind = match plan.since.as_mut() {
                None => SectionKind::Disk,
                Some(base) => {
                    let snap = snapshot_disk(cow, uuid, Some(&base.snapshot), &path);
                    if !snap.is_file() {
                        return Err(ServiceError::Conflict(format!(
                            "VM {uuid}'s disk {i} is not in snapshot {:?} (added since?): send \
                             the whole VM",
                            base.snapshot
                        )));
                    }
                    base.disks
                        .push(send::disk_fingerprint(&snap).map_err(io("read", &snap))?);
                    SectionKind::DiskChanges
                }
            };
            plan.sections.push(section(kind, Some(i), Some(size)));
        }
        return Ok(plan);
    }
    if vm.image_uuid.is_none() {
        return Err(ServiceError::Conflict(format!(
            "VM {uuid} has no root made from an image to send"
        )));
    }
    match plan.since.as_mut() {
        None => plan.sections.push(section(SectionKind::Root, None, None)),
        Some(since) => {
            let base = cow
                .root_listing(uuid, Some(&since.snapshot), range)
                .map_err(store)?;
            let now = cow.root_listing(uuid, None, range).map_err(store)?;
            since.root = Some(base.fingerprint());
            plan.removed = base.removed(&now);
            plan.base = Some(base);
            plan.sections
                .push(section(SectionKind::Removed, None, None));
            plan.sections
                .push(section(SectionKind::RootChanges, None, None));
        }
    }
    // The delegated dataset and the volumes are outside the root's snapshots: sent whole
    // every time.
    if vm.delegate_dataset {
        plan.sections.push(section(SectionKind::Data, None, None));
    }
    let volumes = cow.volumes_dir(uuid);
    for (i, _) in convert::volumes(vm, &volumes) {
        plan.sections
            .push(section(SectionKind::Volume, Some(i), None));
    }
    Ok(plan)
}

impl Service {
    /// Streams guest `uuid` to `tx` (see the module docs); a running guest is stopped first
    /// and stays stopped. The checks run before the first byte; an error after it ends the
    /// stream with an error, which the receiver sees as a cut.
    pub async fn send(
        &self,
        uuid: Uuid,
        since: Option<String>,
        tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<()> {
        let lock = self.guest_lock(uuid);
        let guard = lock.lock_owned().await;
        let mut current = self.get(uuid)?;
        match current.vm.state {
            VmState::Stopped => {}
            VmState::Running => current = self.stop_locked(current, false, None).await?,
            other => {
                return Err(ServiceError::Conflict(format!(
                    "VM {uuid} is {}: only a running or stopped guest can be sent",
                    other.as_str()
                )));
            }
        }
        let vm = current.vm.clone();
        let guests_dir = self.data_root.join("guests");
        if let Some(name) = &since
            && !vm.snapshots.iter().any(|s| &s.name == name)
        {
            return Err(ServiceError::BadRequest(format!(
                "VM {uuid} has no snapshot {name:?} to send the changes since"
            )));
        }
        // Files carry the guest's own ids in the stream, whatever range it has here.
        let range = self.zones.id_range(uuid);
        let plan = {
            let (vm, cow, guests_dir) = (vm.clone(), self.cow.clone(), guests_dir.clone());
            blocking(move || plan_send(&cow, &vm, since.as_deref(), &guests_dir, range)).await?
        };
        let header = Header {
            version: send::VERSION,
            uuid,
            guests_dir: guests_dir.to_string_lossy().into_owned(),
            images_dir: self.data_root.join("images").to_string_lossy().into_owned(),
            sections: plan.sections,
            since: plan.since,
        };
        let record =
            serde_json::to_vec(&vm).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let cow = self.cow.clone();
        let (base, removed) = (plan.base, plan.removed);
        let snapshot = header.since.as_ref().map(|s| s.snapshot.clone());
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let out = ChunkWriter { tx: tx.clone() };
            let out = std::io::BufWriter::with_capacity(send::MAX_CHUNK + 64, out);
            let disk = |i: usize| PathBuf::from(vm.disks[i].path.as_deref().unwrap_or_default());
            let disk_err = |path: PathBuf| {
                move |e| {
                    SendFailed::Store(StoreError::Io(hull_sys::IoError::new(
                        "send the disk",
                        path,
                        e,
                    )))
                }
            };
            let result = (|| -> std::result::Result<(), SendFailed> {
                let mut w = Writer::new(out, &header)?;
                for s in &header.sections {
                    w.section(s, |out| -> std::result::Result<(), SendFailed> {
                        let i = s.index.unwrap_or_default();
                        match s.kind {
                            SectionKind::Record => out.write_all(&record)?,
                            SectionKind::Root => {
                                cow.pack_root(uuid, Compression::None, out, range)
                                    .map_err(SendFailed::Store)?;
                            }
                            SectionKind::Data => {
                                cow.pack_data(uuid, out, range).map_err(SendFailed::Store)?;
                            }
                            SectionKind::Volume => {
                                cow.pack_volume(uuid, volume_name(&vm, i), out, range)
                                    .map_err(SendFailed::Store)?;
                            }
                            SectionKind::Disk => {
                                send::write_extents(&disk(i), out).map_err(disk_err(disk(i)))?;
                            }
                            SectionKind::Removed => {
                                out.write_all(&hull_cowstore::archive::encode_removals(&removed))?;
                            }
                            SectionKind::RootChanges => {
                                let base = base.as_ref().unwrap_or(&EMPTY_LISTING);
                                cow.pack_root_changes(uuid, base, range, out)
                                    .map_err(SendFailed::Store)?;
                            }
                            SectionKind::DiskChanges => {
                                let snap = snapshot_disk(&cow, uuid, snapshot.as_deref(), &disk(i));
                                send::write_disk_delta(&snap, &disk(i), out)
                                    .map_err(disk_err(disk(i)))?;
                            }
                        }
                        Ok(())
                    })?;
                }
                w.finish()?;
                Ok(())
            })();
            if let Err(e) = result {
                let why = match e {
                    SendFailed::Io(e) => hull_sys::chain(&e),
                    SendFailed::Store(e) => hull_sys::chain(&e),
                };
                tracing::warn!(%uuid, "send failed: {why}");
                let _ = tx.blocking_send(Err(std::io::Error::other(why)));
            }
        });
        Ok(())
    }

    /// Receives a guest from `src` (see the module docs).
    pub async fn receive(&self, src: ChunkReader) -> Result<Arc<Record>> {
        // The record first, read whole and verified: nothing is written before the checks.
        let (reader, header, vm) = blocking(move || {
            let mut reader = Reader::open(src).map_err(Failed::Stream)?;
            let header = reader.header().clone();
            match reader.next_section().map_err(Failed::Stream)? {
                Some(s) if s.kind == SectionKind::Record => {}
                _ => {
                    return Err(Failed::Stream(StreamError::Corrupt(
                        "it does not start with the guest's record".into(),
                    )));
                }
            }
            let mut json = Vec::new();
            reader
                .body()
                .take(MAX_RECORD + 1)
                .read_to_end(&mut json)
                .map_err(|e| Failed::Stream(send::unwrap_stream_error(e)))?;
            if json.len() as u64 > MAX_RECORD {
                return Err(Failed::Stream(StreamError::Corrupt(format!(
                    "its record is over {MAX_RECORD} bytes"
                ))));
            }
            // Read to the section's end, so the record is verified before it is used.
            std::io::copy(&mut reader.body(), &mut std::io::sink())
                .map_err(|e| Failed::Stream(send::unwrap_stream_error(e)))?;
            let vm: Vm = serde_json::from_slice(&json).map_err(|e| {
                Failed::Refused(format!(
                    "the stream's record is not a guest record this hull reads: {e}"
                ))
            })?;
            Ok::<_, Failed>((reader, header, vm))
        })
        .await?;
        if header.since.is_some() {
            return self.receive_changes(reader, header, vm).await;
        }
        let index = self.index_lock.lock().await;
        let vm = self.check_received(&header, vm, None)?;
        let uuid = vm.uuid;
        let lock = self.guest_lock(uuid);
        let guard = lock.lock_owned().await;
        let mut receiving = vm.clone();
        receiving.state = VmState::Receiving;
        receiving.zone_state = VmState::Receiving.zone_state();
        write(&self.records).insert(Arc::new(Record::new(receiving)));
        drop(index);
        let cow = self.cow.clone();
        let planned = vm.clone();
        let landed = blocking(move || receive_sections(&cow, reader, &planned)).await;
        let mut vm = vm;
        let done = match landed {
            Ok(()) => self.finish_received(&mut vm).await,
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            let storage = self.storage.clone();
            best_effort(move || storage.destroy_guest(uuid)).await;
            write(&self.records).remove(uuid);
            drop(guard);
            self.forget_lock(uuid);
            return Err(e);
        }
        let record = Arc::new(Record::new(vm));
        write(&self.records).insert(record.clone());
        self.emit(EventKind::Create, &record, Vec::new());
        drop(guard);
        Ok(record)
    }

    /// Rolls back guests whose incremental receive was cut by a crash (their receive
    /// snapshot is still there: a finished receive deletes it), so each is as it was before.
    pub async fn undo_interrupted_changes(&self) -> Result<Vec<Uuid>> {
        let guests: Vec<(Uuid, Vec<PathBuf>)> = read(&self.records)
            .vms
            .values()
            .filter(|r| {
                self.cow
                    .guest_dir(r.uuid)
                    .join(hull_cowstore::backend::SNAPSHOTS_DIR)
                    .join(hull_cowstore::store::RECEIVE_SNAPSHOT)
                    .exists()
            })
            .map(|r| {
                let disks = match r.brand.is_microvm() {
                    true => r
                        .disks
                        .iter()
                        .filter_map(|d| d.path.as_deref().map(PathBuf::from))
                        .collect(),
                    false => Vec::new(),
                };
                (r.uuid, disks)
            })
            .collect();
        let cow = self.cow.clone();
        blocking(move || {
            for (uuid, disks) in &guests {
                cow.end_changes(*uuid, disks, false)?;
            }
            Ok::<_, StoreError>(guests.into_iter().map(|(u, _)| u).collect())
        })
        .await
    }

    /// The received record checked against this host (as a create payload is) and made this
    /// host's: paths rebased onto this data root, run state cleared; no snapshots, or for an
    /// incremental stream the snapshots of `existing`, this host's copy.
    fn check_received(&self, header: &Header, mut vm: Vm, existing: Option<&Vm>) -> Result<Vm> {
        let uuid = vm.uuid;
        let bad = |m: String| ServiceError::BadRequest(format!("the stream is corrupt: {m}"));
        if uuid != header.uuid {
            return Err(bad(format!(
                "its record is of VM {uuid}, its header of VM {}",
                header.uuid
            )));
        }
        // The sections must be what the record needs: a zone's root (and dataset), or every
        // disk of a microVM in order.
        let kinds: Vec<(SectionKind, Option<usize>)> =
            header.sections.iter().map(|s| (s.kind, s.index)).collect();
        let mut want = vec![(SectionKind::Record, None)];
        let changes = header.since.is_some();
        if vm.brand.is_microvm() {
            let kind = if changes {
                SectionKind::DiskChanges
            } else {
                SectionKind::Disk
            };
            want.extend((0..vm.disks.len()).map(|i| (kind, Some(i))));
        } else {
            if changes {
                want.push((SectionKind::Removed, None));
                want.push((SectionKind::RootChanges, None));
            } else {
                want.push((SectionKind::Root, None));
            }
            if vm.delegate_dataset {
                want.push((SectionKind::Data, None));
            }
            let theirs = convert::guest_volumes(Path::new(&header.guests_dir), uuid);
            want.extend(
                convert::volumes(&vm, &theirs).map(|(i, _)| (SectionKind::Volume, Some(i))),
            );
        }
        if kinds != want {
            return Err(bad(format!(
                "its sections ({kinds:?}) are not those a {} guest's record needs",
                vm.brand
            )));
        }
        // A disk's bytes are what its record says, to the MiB it is counted in.
        let disk_sections = header
            .sections
            .iter()
            .filter(|s| matches!(s.kind, SectionKind::Disk | SectionKind::DiskChanges));
        for s in disk_sections {
            let i = s.index.unwrap_or_default();
            let mib = vm.disks.get(i).and_then(|d| d.size);
            if let (Some(mib), Some(bytes)) = (mib, s.size)
                && bytes >> 20 != mib
            {
                return Err(bad(format!(
                    "disk {i} is {bytes} bytes in its section and {mib} MiB in its record"
                )));
            }
        }
        let mut report = ValidationReport::default();
        if existing.is_none() && read(&self.records).vms.contains_key(&uuid) {
            report.bad_value("uuid", format!("a VM with uuid {uuid} already exists"));
        }
        // Its volumes are made here, in its directory: their sources are rebased onto it.
        let (theirs, ours) = (
            convert::guest_volumes(Path::new(&header.guests_dir), uuid),
            convert::volumes_dir(&self.data_root, uuid),
        );
        let volumes: Vec<(usize, String)> = convert::volumes(&vm, &theirs)
            .map(|(i, name)| (i, name.to_string()))
            .collect();
        for (i, name) in &volumes {
            vm.filesystems[*i].source = ours.join(name).to_string_lossy().into_owned();
        }
        let mut value = serde_json::to_value(&vm).unwrap_or(Value::Null);
        if let Some(nics) = value.get("nics").and_then(Value::as_array) {
            let mine = existing.map(|_| uuid);
            self.check_nics_on_host(&mut report, "nics", nics, mine)?;
        }
        // The host directories it binds must be here; its volumes come with it.
        if let Some(list) = value.get_mut("filesystems").and_then(Value::as_array_mut) {
            for (i, _) in volumes.iter().rev() {
                list.remove(*i);
            }
        }
        super::create::check_filesystem_sources(&mut report, &value);
        if let Some(image) = vm.image_uuid.filter(|_| !vm.brand.is_microvm()) {
            self.check_image(&mut report, "image_uuid", image, vm.brand)?;
        }
        let guests_from = PathBuf::from(&header.guests_dir);
        let guest_dir = self.data_root.join("guests").join(uuid.to_string());
        for i in 0..vm.disks.len() {
            if let Some(image) = vm.disks[i].image_uuid {
                self.check_image(
                    &mut report,
                    &format!("disks.{i}.image_uuid"),
                    image,
                    vm.brand,
                )?;
            }
            match disk_name(&vm, i, &guests_from) {
                Some(name) => {
                    vm.disks[i].path = Some(guest_dir.join(name).to_string_lossy().into_owned());
                }
                None => report.bad_value(
                    format!("disks.{i}.path"),
                    "not a disk hull made in the sender's guest directory",
                ),
            }
        }
        // Boot files from the sender's images are this host's copies of them.
        let images_from = PathBuf::from(&header.images_dir);
        let images_here = self.data_root.join("images");
        for (name, file) in [("kernel", &mut vm.kernel), ("initrd", &mut vm.initrd)] {
            let Some(path) = file.as_ref().map(PathBuf::from) else {
                continue;
            };
            let here = match path.strip_prefix(&images_from) {
                Ok(rest) => images_here.join(rest),
                Err(_) => path,
            };
            if !here.is_file() {
                report.bad_value(
                    name,
                    format!("{} is not a file on this host", here.display()),
                );
            }
            *file = Some(here.to_string_lossy().into_owned());
        }
        if !report.is_empty() {
            return Err(ServiceError::Invalid(report));
        }
        vm.state = VmState::Stopped;
        vm.zone_state = VmState::Stopped.zone_state();
        vm.pid = None;
        vm.exit_status = None;
        vm.failure = None;
        vm.snapshots = existing.map(|e| e.snapshots.clone()).unwrap_or_default();
        vm.last_modified = now();
        Ok(vm)
    }

    /// Receives an incremental stream into this host's copy of the guest, which must be
    /// stopped and be what the sender's snapshot was (its fingerprints), and must not have
    /// run here since it was received (a zone's files would carry this host's ids). The copy
    /// is snapshotted first and rolled back to if the stream fails: it is either as it was
    /// or as the sender's guest is.
    async fn receive_changes(
        &self,
        reader: Reader<ChunkReader>,
        header: Header,
        vm: Vm,
    ) -> Result<Arc<Record>> {
        let uuid = vm.uuid;
        let since = header.since.clone().unwrap_or_else(|| Since {
            snapshot: String::new(),
            root: None,
            disks: Vec::new(),
        });
        let lock = self.guest_lock(uuid);
        let guard = lock.lock_owned().await;
        let current = self.get(uuid).map_err(|_| {
            ServiceError::BadRequest(format!(
                "the stream holds VM {uuid}'s changes since snapshot {:?}, and this host has no \
                 VM {uuid}: receive the whole VM first",
                since.snapshot
            ))
        })?;
        if current.vm.state != VmState::Stopped {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} is {} here: stop it before receiving its changes",
                current.vm.state.as_str()
            )));
        }
        if current.vm.brand != vm.brand {
            return Err(ServiceError::BadRequest(format!(
                "the stream's VM {uuid} is a {} guest, this host's a {} one",
                vm.brand, current.vm.brand
            )));
        }
        let vm = self.check_received(&header, vm, Some(&current.vm))?;
        let disks: Vec<PathBuf> = match current.vm.brand.is_microvm() {
            true => current
                .vm
                .disks
                .iter()
                .filter_map(|d| d.path.as_deref().map(PathBuf::from))
                .collect(),
            false => Vec::new(),
        };
        let theirs = vm
            .disks
            .iter()
            .map(|d| d.path.as_deref().map(PathBuf::from));
        if current.vm.brand.is_microvm() && !theirs.eq(disks.iter().cloned().map(Some)) {
            return Err(ServiceError::BadRequest(format!(
                "the stream's VM {uuid} has other disks than this host's copy: receive the \
                 whole VM"
            )));
        }
        let cow = self.cow.clone();
        let range = self.zones.id_range(uuid);
        let shifted = self.zones.dir(uuid).join(zoned::config::files::SHIFTED);
        {
            let (cow, disks, since) = (cow.clone(), disks.clone(), since.clone());
            blocking(move || check_base(&cow, uuid, &since, &disks, range, &shifted)).await?;
        }
        let mut receiving = current.vm.clone();
        receiving.state = VmState::Receiving;
        receiving.zone_state = VmState::Receiving.zone_state();
        write(&self.records).insert(Arc::new(Record::new(receiving)));
        let planned = vm.clone();
        let landed = blocking(move || apply_changes(&cow, reader, &planned, &disks)).await;
        let mut vm = vm;
        let done = match landed {
            Ok(()) => self.finish_received(&mut vm).await,
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            write(&self.records).insert(current);
            return Err(e);
        }
        let record = Arc::new(Record::new(vm));
        write(&self.records).insert(record.clone());
        self.emit(EventKind::Modify, &record, Vec::new());
        drop(guard);
        Ok(record)
    }

    /// After the data: the quota applied and the record written.
    async fn finish_received(&self, vm: &mut Vm) -> Result<()> {
        if vm.quota > 0 && !vm.brand.is_microvm() {
            vm.warnings
                .retain(|w| !matches!(w, hull_spec::warning::Warning::Quota(_)));
            let storage = self.storage.clone();
            let (uuid, gib) = (vm.uuid, vm.quota);
            let warning = blocking(move || storage.set_quota(uuid, gib)).await?;
            vm.warnings.extend(warning);
        }
        self.persist(vm).await
    }
}

/// The name of the volume `filesystems[index]` of `vm` (the file name of its source, in the
/// guest's volumes directory; checked by the store: one plain name).
fn volume_name(vm: &Vm, index: usize) -> &str {
    vm.filesystems
        .get(index)
        .and_then(|f| Path::new(&f.source).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// The file name, in the guest's directory, of the disk a disk section carries (checked by
/// the store: `disk<N>.img`).
fn disk_file<'a>(vm: &'a Vm, s: &Section) -> &'a str {
    vm.disks
        .get(s.index.unwrap_or_default())
        .and_then(|d| d.path.as_deref())
        .and_then(|p| Path::new(p).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// The blocking side of a receive: every section after the record into the guest's new
/// directory, then the verified end.
fn receive_sections(
    cow: &hull_cowstore::store::Store,
    mut reader: Reader<ChunkReader>,
    vm: &Vm,
) -> std::result::Result<(), Failed> {
    let uuid = vm.uuid;
    cow.create_guest(uuid).map_err(Failed::Store)?;
    while let Some(s) = reader.next_section().map_err(Failed::Stream)? {
        let body = reader.body();
        match s.kind {
            SectionKind::Record
            | SectionKind::Removed
            | SectionKind::RootChanges
            | SectionKind::DiskChanges => {
                return Err(Failed::Stream(StreamError::Corrupt(format!(
                    "it holds a {:?} section where it holds a whole guest",
                    s.kind
                ))));
            }
            SectionKind::Root => {
                let image = vm.image_uuid.unwrap_or_default();
                cow.receive_root(uuid, image, body)
                    .and_then(|_| mark_relative(cow, uuid))
            }
            SectionKind::Data => cow.receive_data(uuid, body).map(drop),
            SectionKind::Volume => cow
                .receive_volume(uuid, volume_name(vm, s.index.unwrap_or_default()), body)
                .map(drop),
            SectionKind::Disk => cow
                .receive_disk(uuid, disk_file(vm, &s), s.size.unwrap_or_default(), body)
                .map(drop),
        }
        .map_err(|e| match send::find_stream_error(&e) {
            Some(cut) => Failed::Stream(cut),
            None => Failed::Store(e),
        })?;
    }
    Ok(())
}

/// A received layered root's upper layer holds the zone's own ids: marked for zoned, which
/// shifts them into the zone's range at its first start here (a btrfs root is id-mapped as
/// it is).
fn mark_relative(cow: &hull_cowstore::store::Store, uuid: Uuid) -> Result<(), StoreError> {
    if let Some(hull_cowstore::backend::RootSource::Overlay { upper, .. }) =
        cow.root_source(uuid)?
    {
        let marker = zoned::rootfs::relative_ids_marker(&upper);
        hull_sys::fs::write_atomic(&marker, b"received\n")?;
    }
    Ok(())
}

/// The receiver's copy must be what the sender's snapshot was, and must not have run here
/// since it was received: a layered root still carries its zone-relative marker, a
/// directory root was never shifted.
fn check_base(
    cow: &hull_cowstore::store::Store,
    uuid: Uuid,
    since: &Since,
    disks: &[PathBuf],
    range: Option<(u32, u32)>,
    shifted: &Path,
) -> std::result::Result<(), Failed> {
    let differs = |what: &str| {
        Failed::Refused(format!(
            "VM {uuid} here is not what snapshot {:?} was on the sender ({what} differ): \
             receive the whole VM, or send the changes since the snapshot this copy was sent at",
            since.snapshot
        ))
    };
    if disks.is_empty() {
        let ran = match cow.root_source(uuid).map_err(Failed::Store)? {
            Some(hull_cowstore::backend::RootSource::Overlay { upper, .. }) => {
                !zoned::rootfs::relative_ids_marker(&upper).exists()
            }
            _ => shifted.exists(),
        };
        if ran {
            return Err(Failed::Refused(format!(
                "VM {uuid} has run on this host, so its files carry this host's ids: \
                 changes apply only to a received copy that has not run here (receive the \
                 whole VM again)"
            )));
        }
        let print = cow
            .root_listing(uuid, None, range)
            .map_err(Failed::Store)?
            .fingerprint();
        if since.root.as_deref() != Some(print.as_str()) {
            return Err(differs("its root's files"));
        }
        return Ok(());
    }
    if since.disks.len() != disks.len() {
        return Err(differs("its disks"));
    }
    for (i, (disk, want)) in disks.iter().zip(&since.disks).enumerate() {
        let have = send::disk_fingerprint(disk)
            .map_err(|e| Failed::Store(StoreError::Io(hull_sys::IoError::new("read", disk, e))))?;
        if &have != want {
            return Err(differs(&format!("disk {i}'s blocks")));
        }
    }
    Ok(())
}

/// The blocking side of an incremental receive: the copy snapshotted, every section's
/// changes applied, the end verified; then kept, or rolled back on any error.
fn apply_changes(
    cow: &hull_cowstore::store::Store,
    mut reader: Reader<ChunkReader>,
    vm: &Vm,
    disks: &[PathBuf],
) -> std::result::Result<(), Failed> {
    let uuid = vm.uuid;
    cow.begin_changes(uuid, disks).map_err(Failed::Store)?;
    let applied = (|| -> std::result::Result<(), Failed> {
        let mut removed = Vec::new();
        while let Some(s) = reader.next_section().map_err(Failed::Stream)? {
            let body = reader.body();
            let store = match s.kind {
                SectionKind::Removed => {
                    let mut bytes = Vec::new();
                    body.take(MAX_REMOVALS + 1)
                        .read_to_end(&mut bytes)
                        .map_err(|e| Failed::Stream(send::unwrap_stream_error(e)))?;
                    if bytes.len() as u64 > MAX_REMOVALS {
                        return Err(Failed::Stream(StreamError::Corrupt(format!(
                            "its removed paths are over {MAX_REMOVALS} bytes"
                        ))));
                    }
                    removed = hull_cowstore::archive::decode_removals(&bytes)
                        .map_err(|m| Failed::Stream(StreamError::Corrupt(m)))?;
                    Ok(())
                }
                SectionKind::RootChanges => cow.apply_root_changes(uuid, &removed, body).map(drop),
                SectionKind::Data => cow.stage_data(uuid, body).map(drop),
                SectionKind::Volume => cow
                    .stage_volume(uuid, volume_name(vm, s.index.unwrap_or_default()), body)
                    .map(drop),
                SectionKind::DiskChanges => cow.apply_disk_changes(
                    uuid,
                    disk_file(vm, &s),
                    s.size.unwrap_or_default(),
                    body,
                ),
                other => {
                    return Err(Failed::Stream(StreamError::Corrupt(format!(
                        "it holds a {other:?} section where it holds changes"
                    ))));
                }
            };
            store.map_err(|e| match send::find_stream_error(&e) {
                Some(cut) => Failed::Stream(cut),
                None => Failed::Store(e),
            })?;
        }
        Ok(())
    })();
    let ended = cow.end_changes(uuid, disks, applied.is_ok());
    applied?;
    ended.map_err(Failed::Store)
}
