//! SmartOS's `vmadm reprovision`: a zone's root (a microVM's boot disk) made anew from an
//! image, keeping what is the guest's rather than its image's (uuid, NICs, metadata, the
//! delegated dataset at /data, a microVM's other disks).

use std::sync::Arc;

use hull_spec::api::EventKind;
use hull_spec::warning::Warning;
use hull_spec::{ValidationReport, VmState};
use uuid::Uuid;

use super::{Record, Result, Service, ServiceError, blocking, now, write};

impl Service {
    /// Replaces zone `uuid`'s root with a clone of `image`, as SmartOS does: refused while
    /// indestructible_zoneroot is set; a running zone is stopped first; the old root and its
    /// snapshots go; the new root gets the zone's quota; the zone is started afterwards with
    /// autoboot set (SmartOS's reprovision boots it too). A microVM's boot disk is replaced
    /// by a clone of the disk image `image`, of the same size, its other disks kept (SmartOS's
    /// bhyve reprovision of disk0); it boots the new image's kernel where it booted the old
    /// one's.
    pub async fn reprovision(&self, uuid: Uuid, image: Uuid) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let guard = lock.lock().await;
        let mut current = self.get(uuid)?;
        if let Some(dir) = &current.vm.oci_bundle {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} runs the OCI bundle {dir}: its root is the bundle's, not an image's"
            )));
        }
        if current.vm.indestructible_zoneroot {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} has indestructible_zoneroot set, so its root cannot be replaced; \
                 unset it first (vmadm update {uuid} indestructible_zoneroot=false)"
            )));
        }
        if !matches!(current.vm.state, VmState::Running | VmState::Stopped) {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} is {}: only a running or stopped zone can be reprovisioned",
                current.vm.state.as_str()
            )));
        }
        let mut report = ValidationReport::default();
        self.check_image(&mut report, "image_uuid", image, current.vm.brand)?;
        if !report.is_empty() {
            return Err(ServiceError::Invalid(report));
        }
        // A microVM's boot disk is what is re-imaged (SmartOS's bhyve reprovision: disk0,
        // which must boot); its other disks stay.
        let boot_disk = match current.vm.brand.is_microvm() {
            false => None,
            true => {
                let i = current
                    .vm
                    .disks
                    .iter()
                    .position(|d| d.boot == Some(true))
                    .ok_or_else(|| {
                        ServiceError::Conflict(format!(
                            "VM {uuid} has no boot disk to reprovision (one with boot: true)"
                        ))
                    })?;
                if !current.vm.snapshots.is_empty() {
                    return Err(ServiceError::Conflict(format!(
                        "VM {uuid} has snapshots of its disks, which a new boot disk would \
                         orphan; delete them first"
                    )));
                }
                Some(i)
            }
        };
        if current.vm.state == VmState::Running {
            current = self.stop_locked(current, false, None).await?;
        }
        let mut next = current.vm.clone();
        let storage = self.storage.clone();
        match boot_disk {
            None => {
                blocking(move || storage.reprovision_root(uuid, image)).await?;
                next.image_uuid = Some(image);
            }
            Some(i) => {
                let path = next.disks[i].path.clone().ok_or_else(|| {
                    ServiceError::Conflict(format!("VM {uuid}'s boot disk has no path"))
                })?;
                blocking(move || {
                    storage.reprovision_disk(uuid, image, std::path::Path::new(&path))
                })
                .await?;
                // The kernel it booted came from the old image: it boots the new one's.
                let old_image = next.disks[i].image_uuid.replace(image);
                if let (Some(old), Some(kernel)) = (old_image, next.kernel.clone())
                    && std::path::Path::new(&kernel).starts_with(self.storage.image_dir(old))
                {
                    next.kernel = None;
                    next.initrd = None;
                    self.boot_from_image(&mut next)?;
                }
            }
        }
        next.snapshots.clear();
        next.autoboot = true;
        // The new root is provisioned afresh: its first boot writes resolv.conf.
        next.boot_timestamp = None;
        if next.quota > 0 && !next.brand.is_microvm() {
            next.warnings.retain(|w| !matches!(w, Warning::Quota(_)));
            let storage = self.storage.clone();
            let gib = next.quota;
            let warning = blocking(move || storage.set_quota(uuid, gib)).await?;
            next.warnings.extend(warning);
        }
        next.last_modified = now();
        // The root is the new image's from here on, whatever happens to the record: a record
        // that cannot be written is an error that says so.
        self.persist(&next).await.map_err(|e| {
            ServiceError::Conflict(format!(
                "VM {uuid}'s root was replaced by image {image}, but its record could not be \
                 written ({e}): the record still names the old image"
            ))
        })?;
        let next = Arc::new(Record::new(next));
        write(&self.records).insert(next.clone());
        self.emit(
            EventKind::Modify,
            &next,
            vec!["image_uuid".into(), "snapshots".into(), "autoboot".into()],
        );
        drop(guard);
        self.start(uuid).await
    }
}
