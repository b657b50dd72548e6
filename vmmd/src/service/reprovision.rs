//! SmartOS's `vmadm reprovision`: a zone's root made anew from an image, keeping what is the
//! guest's rather than its image's (uuid, NICs, metadata, the delegated dataset at /data).

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
    /// autoboot set (SmartOS's reprovision boots it too).
    pub async fn reprovision(&self, uuid: Uuid, image: Uuid) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let guard = lock.lock().await;
        let mut current = self.get(uuid)?;
        if current.vm.brand.is_microvm() {
            return Err(ServiceError::NotImplemented(format!(
                "reprovision re-images a zone's root; re-imaging a microVM's disks is not built \
                 yet (VM {uuid} is brand {})",
                current.vm.brand
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
        if current.vm.state == VmState::Running {
            current = self.stop_locked(current, false, None).await?;
        }
        let storage = self.storage.clone();
        blocking(move || storage.reprovision_root(uuid, image)).await?;
        let mut next = current.vm.clone();
        next.image_uuid = Some(image);
        next.snapshots.clear();
        next.autoboot = true;
        // The new root is provisioned afresh: its first boot writes resolv.conf.
        next.boot_timestamp = None;
        if next.quota > 0 {
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
