//! Provisioning a guest's storage from its record: the zone root cloned from its image, the
//! microVM's disks cloned or made blank, the quota set. All or nothing: on any error what was
//! made is destroyed. Runs on a blocking thread.

use std::path::Path;

use hull_cowstore::backend::BackendError;
use hull_cowstore::store::{Store, StoreError};
use hull_spec::{DiskSpec, Vm};

/// What provisioning could not do but did not fail on: limits the backend cannot enforce,
/// named so the user sees them (SmartOS would have enforced them).
pub type Warnings = Vec<String>;

/// Sets a guest's quota (GiB, 0 = none). A backend or filesystem that cannot enforce quotas
/// is not an error but a warning that names the limitation; other failures are errors.
pub fn set_quota(store: &Store, guest: uuid::Uuid, gib: u64) -> Result<Option<String>, StoreError> {
    let bytes = (gib > 0).then_some(gib << 30);
    match store.set_quota(guest, bytes) {
        Ok(()) => Ok(None),
        Err(StoreError::Backend { backend, source }) => match source {
            BackendError::Unsupported { .. } | BackendError::QuotaNotEnabled { .. } => {
                Ok(Some(format!(
                    "quota: not enforced by the {backend} backend on this data root ({source}); \
                 use btrfs, or xfs mounted with prjquota, to enforce it"
                )))
            }
            source => Err(StoreError::Backend { backend, source }),
        },
        Err(e) => Err(e),
    }
}

/// Makes the guest's storage.
pub fn provision(store: &Store, vm: &Vm) -> Result<Warnings, StoreError> {
    store.create_guest(vm.uuid)?;
    let result = make(store, vm);
    if result.is_err() {
        // The original error is what matters; a leftover folder is also removed as an orphan
        // at the next start.
        let _ = store.destroy_guest(vm.uuid);
    }
    result
}

fn make(store: &Store, vm: &Vm) -> Result<Warnings, StoreError> {
    let mut warnings = Warnings::new();
    if let Some(image) = vm.image_uuid {
        store.clone_root(vm.uuid, image)?;
        if vm.quota > 0 {
            warnings.extend(set_quota(store, vm.uuid, vm.quota)?);
        }
    }
    let made = make_disks(store, vm, &vm.disks)?;
    warnings.extend(made);
    Ok(warnings)
}

/// Disks in `next` that `current` lacks, and the reverse (by path).
pub fn disk_changes(current: &Vm, next: &Vm) -> (Vec<DiskSpec>, Vec<DiskSpec>) {
    let has = |list: &[DiskSpec], d: &DiskSpec| list.iter().any(|x| x.path == d.path);
    let added = next
        .disks
        .iter()
        .filter(|d| !has(&current.disks, d))
        .cloned()
        .collect();
    let removed = current
        .disks
        .iter()
        .filter(|d| !has(&next.disks, d))
        .cloned()
        .collect();
    (added, removed)
}

/// Deletes the files of disks hull made (those under the guest's folder).
pub fn remove_disks(
    store: &Store,
    guest: uuid::Uuid,
    disks: &[DiskSpec],
) -> Result<(), StoreError> {
    let dir = store.guest_dir(guest);
    for d in disks {
        if let Some(p) = d
            .path
            .as_deref()
            .map(Path::new)
            .filter(|p| p.starts_with(&dir))
        {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        action: "remove the disk",
                        path: p.to_path_buf(),
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Makes `disks` of guest `vm`: clones of their images or blank sparse files; disks the user
/// brought (outside the guest's folder) must exist and are left as they are. On an error,
/// the disks made so far are removed.
pub fn make_disks(store: &Store, vm: &Vm, disks: &[DiskSpec]) -> Result<Warnings, StoreError> {
    let mut warnings = Warnings::new();
    let mut made = Vec::new();
    let result = (|| {
        for disk in disks {
            warnings.extend(make_disk(store, vm, disk)?);
            made.push(disk.clone());
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = remove_disks(store, vm.uuid, &made);
        return Err(e);
    }
    Ok(warnings)
}

fn make_disk(store: &Store, vm: &Vm, disk: &DiskSpec) -> Result<Warnings, StoreError> {
    let mut warnings = Warnings::new();
    let guest_dir = store.guest_dir(vm.uuid);
    {
        let Some(path) = disk.path.as_deref().map(Path::new) else {
            return Ok(warnings);
        };
        if !path.starts_with(&guest_dir) {
            // A disk the user brought: hull uses it as it is and never deletes it.
            if !path.exists() {
                return Err(StoreError::Io {
                    action: "use the disk",
                    path: path.to_path_buf(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            return Ok(warnings);
        }
        let made = match disk.image_uuid {
            Some(image) => store.clone_disk(vm.uuid, image, path, disk.size)?,
            None => store.blank_disk(path, disk.size.unwrap_or(0))?,
        };
        if let hull_cowstore::backend::CloneCost::Copied { bytes } = made.cost
            && disk.image_uuid.is_some()
        {
            warnings.push(format!(
                "disk {}: copied {bytes} bytes (the {} backend cannot reflink)",
                path.display(),
                store.backend().as_str()
            ));
        }
    }
    Ok(warnings)
}
