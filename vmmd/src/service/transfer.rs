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
use hull_cowstore::send::{self, Header, Reader, Section, SectionKind, StreamError, Writer};
use hull_cowstore::store::StoreError;
use hull_spec::api::EventKind;
use hull_spec::{ValidationReport, Vm, VmState};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::images::{ChunkReader, ChunkWriter, store_error, with_causes};
use super::{Record, Result, Service, ServiceError, best_effort, blocking, now, read, write};

/// The largest record section a receiver reads.
const MAX_RECORD: u64 = 16 << 20;

fn stream_error(e: StreamError) -> ServiceError {
    match e {
        StreamError::Read(e) => {
            ServiceError::BadRequest(format!("the stream could not be read: {}", with_causes(&e)))
        }
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

impl Service {
    /// Streams guest `uuid` to `tx` (see the module docs); a running guest is stopped first
    /// and stays stopped. The checks run before the first byte; an error after it ends the
    /// stream with an error, which the receiver sees as a cut.
    pub async fn send(
        &self,
        uuid: Uuid,
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
        let mut sections = vec![Section {
            kind: SectionKind::Record,
            index: None,
            size: None,
        }];
        if vm.brand.is_microvm() {
            for (i, d) in vm.disks.iter().enumerate() {
                if disk_name(&vm, i, &guests_dir).is_none() {
                    return Err(ServiceError::Conflict(format!(
                        "VM {uuid}'s disk {i} ({}) is a file hull did not make, which it does \
                         not send; copy it to the other host yourself",
                        d.path.as_deref().unwrap_or("no path")
                    )));
                }
                let path = PathBuf::from(d.path.as_deref().unwrap_or_default());
                let size = std::fs::metadata(&path)
                    .map_err(|e| {
                        ServiceError::Storage(StoreError::Io(hull_sys::IoError::new(
                            "read the size of",
                            &path,
                            e,
                        )))
                    })?
                    .len();
                sections.push(Section {
                    kind: SectionKind::Disk,
                    index: Some(i),
                    size: Some(size),
                });
            }
        } else {
            if vm.image_uuid.is_none() {
                return Err(ServiceError::Conflict(format!(
                    "VM {uuid} has no root made from an image to send"
                )));
            }
            sections.push(Section {
                kind: SectionKind::Root,
                index: None,
                size: None,
            });
            if vm.delegate_dataset {
                sections.push(Section {
                    kind: SectionKind::Data,
                    index: None,
                    size: None,
                });
            }
        }
        let header = Header {
            version: send::VERSION,
            uuid,
            guests_dir: guests_dir.to_string_lossy().into_owned(),
            images_dir: self.data_root.join("images").to_string_lossy().into_owned(),
            sections,
        };
        let record =
            serde_json::to_vec(&vm).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let cow = self.cow.clone();
        // Files carry the guest's own ids in the stream, whatever range it has here.
        let range = self.zones.id_range(uuid);
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let out = ChunkWriter { tx: tx.clone() };
            let out = std::io::BufWriter::with_capacity(send::MAX_CHUNK + 64, out);
            let result = (|| -> std::result::Result<(), SendFailed> {
                let mut w = Writer::new(out, &header)?;
                for s in &header.sections {
                    w.section(s, |out| -> std::result::Result<(), SendFailed> {
                        match s.kind {
                            SectionKind::Record => out.write_all(&record)?,
                            SectionKind::Root => {
                                cow.pack_root(uuid, Compression::None, out, range)
                                    .map_err(SendFailed::Store)?;
                            }
                            SectionKind::Data => {
                                cow.pack_data(uuid, out, range).map_err(SendFailed::Store)?;
                            }
                            SectionKind::Disk => {
                                let i = s.index.unwrap_or_default();
                                let path = vm.disks[i].path.as_deref().unwrap_or_default();
                                send::write_extents(Path::new(path), out).map_err(|e| {
                                    SendFailed::Store(StoreError::Io(hull_sys::IoError::new(
                                        "send the disk",
                                        path,
                                        e,
                                    )))
                                })?;
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
                    SendFailed::Io(e) => with_causes(&e),
                    SendFailed::Store(e) => with_causes(&e),
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
        let index = self.index_lock.lock().await;
        let vm = self.check_received(&header, vm)?;
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

    /// The received record checked against this host (as a create payload is) and made this
    /// host's: paths rebased onto this data root, run state cleared, no snapshots.
    fn check_received(&self, header: &Header, mut vm: Vm) -> Result<Vm> {
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
        if vm.brand.is_microvm() {
            want.extend((0..vm.disks.len()).map(|i| (SectionKind::Disk, Some(i))));
        } else {
            want.push((SectionKind::Root, None));
            if vm.delegate_dataset {
                want.push((SectionKind::Data, None));
            }
        }
        if kinds != want {
            return Err(bad(format!(
                "its sections ({kinds:?}) are not those a {} guest's record needs",
                vm.brand
            )));
        }
        let mut report = ValidationReport::default();
        if read(&self.records).vms.contains_key(&uuid) {
            report.bad_value("uuid", format!("a VM with uuid {uuid} already exists"));
        }
        let value = serde_json::to_value(&vm).unwrap_or(Value::Null);
        if let Some(nics) = value.get("nics").and_then(Value::as_array) {
            self.check_nics_on_host(&mut report, "nics", nics, None)?;
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
        vm.snapshots.clear();
        vm.last_modified = now();
        Ok(vm)
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
            SectionKind::Record => {
                return Err(Failed::Stream(StreamError::Corrupt(
                    "it holds a second record".into(),
                )));
            }
            SectionKind::Root => {
                let image = vm.image_uuid.unwrap_or_default();
                cow.receive_root(uuid, image, body)
                    .and_then(|_| mark_relative(cow, uuid))
            }
            SectionKind::Data => cow.receive_data(uuid, body).map(drop),
            SectionKind::Disk => {
                let i = s.index.unwrap_or_default();
                let name = vm.disks[i]
                    .path
                    .as_deref()
                    .and_then(|p| Path::new(p).file_name())
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                cow.receive_disk(uuid, name, s.size.unwrap_or_default(), body)
                    .map(drop)
            }
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
