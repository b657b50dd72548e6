//! Provisioning a guest's storage from its record: the zone root cloned from its image, the
//! microVM's disks cloned or made blank, the quota set. All or nothing: on any error what was
//! made is destroyed. Runs on a blocking thread.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use hull_cowstore::backend::BackendError;
use hull_cowstore::store::{Store, StoreError};
use hull_spec::warning::Warning;
use hull_spec::{DiskSpec, Vm};
use hull_sys::IoError;

/// What provisioning could not do but did not fail on: limits the backend cannot enforce,
/// named so the user sees them (SmartOS would have enforced them).
pub type Warnings = Vec<Warning>;

/// Sets a guest's quota (GiB, 0 = none). A backend or filesystem that cannot enforce quotas
/// is not an error but a warning that names the limitation; other failures are errors.
pub fn set_quota(
    store: &Store,
    guest: uuid::Uuid,
    gib: u64,
) -> Result<Option<Warning>, StoreError> {
    let bytes = (gib > 0).then_some(gib << 30);
    match store.set_quota(guest, bytes) {
        Ok(()) => Ok(None),
        Err(StoreError::Backend { backend, source }) => match source {
            BackendError::Unsupported { .. } | BackendError::QuotaNotEnabled { .. } => {
                Ok(Some(Warning::Quota(format!(
                    "not enforced by the {backend} backend on this data root ({source}); use \
                     btrfs, or xfs mounted with prjquota, to enforce it"
                ))))
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
    // A zone's own data beside its root (an OCI bundle's zone has no root here, and the
    // same dataset and volumes).
    if vm.delegate_dataset {
        store.create_data(vm.uuid)?;
    }
    let volumes = store.volumes_dir(vm.uuid);
    for (i, name) in super::convert::volumes(vm, &volumes) {
        store.create_volume(vm.uuid, name)?;
        if let Some(image) = vm.image_uuid {
            store.seed_volume(vm.uuid, name, image, &vm.filesystems[i].target)?;
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
                    return Err(StoreError::Io(IoError::new("remove the disk", p, source)));
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

/// The size of the regular file at `path`; `None` when there is none (a missing disk, a
/// block device whose length is not a file's).
pub fn disk_file_bytes(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// A disk file an update grew, and the size it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    pub path: PathBuf,
    pub old_bytes: u64,
    pub new_bytes: u64,
}

/// Grows each `(path, bytes)` to `bytes` and syncs it. Sparse: `set_len` allocates nothing,
/// and it is the same call for a reflinked clone (btrfs, xfs: the new tail is the file's own,
/// shared extents stay shared) and a copied file on an overlay data root. A file that is not
/// smaller is left alone. On an error the files grown so far go back to their old size.
pub fn grow_disks(wanted: &[(String, u64)]) -> Result<Vec<Grown>, StoreError> {
    let mut grown = Vec::new();
    for (path, bytes) in wanted {
        let path = Path::new(path);
        let io =
            |action: &'static str| move |source| StoreError::Io(IoError::new(action, path, source));
        let result = (|| {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io("open the disk"))?;
            let old = f.metadata().map_err(io("stat the disk"))?.len();
            if old >= *bytes {
                return Ok(None);
            }
            f.set_len(*bytes).map_err(io("grow the disk"))?;
            let done = Grown {
                path: path.to_path_buf(),
                old_bytes: old,
                new_bytes: *bytes,
            };
            if let Err(e) = f.sync_all() {
                // Grown but not known to be durable: take it back with the others.
                grown.push(done);
                return Err(io("sync the disk")(e));
            }
            Ok(Some(done))
        })();
        match result {
            Ok(Some(g)) => grown.push(g),
            Ok(None) => {}
            Err(e) => {
                shrink_back(&grown);
                return Err(e);
            }
        }
    }
    Ok(grown)
}

/// Undoes [`grow_disks`] for a guest that never saw the new sizes; returns what could not be
/// undone, to log. Only ever cuts what the grow added, which held no data.
pub fn shrink_back(grown: &[Grown]) -> Vec<String> {
    let mut problems = Vec::new();
    for g in grown {
        let r = OpenOptions::new()
            .write(true)
            .open(&g.path)
            .and_then(|f| f.set_len(g.old_bytes).and_then(|()| f.sync_all()));
        if let Err(e) = r {
            problems.push(format!(
                "cannot shrink {} back to {} bytes: {e}",
                g.path.display(),
                g.old_bytes
            ));
        }
    }
    problems
}

/// Makes a record's disk sizes (MiB) say what the files hold: the file is what the guest
/// sees, and vmmd may have stopped between growing one and storing the record. Disks without
/// a size or a file are left. Returns whether anything changed.
pub fn disk_sizes_from_files(vm: &mut Vm) -> bool {
    let mut changed = false;
    for d in &mut vm.disks {
        let (Some(size), Some(path)) = (d.size, d.path.as_deref()) else {
            continue;
        };
        if let Some(bytes) = disk_file_bytes(Path::new(path))
            && bytes >> 20 != size
        {
            d.size = Some(bytes >> 20);
            changed = true;
        }
    }
    changed
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
                let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
                return Err(StoreError::Io(IoError::new("use the disk", path, missing)));
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
            warnings.push(Warning::Other(format!(
                "disk {}: copied {bytes} bytes (the {} backend cannot reflink)",
                path.display(),
                store.backend().as_str()
            )));
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, bytes: u64) -> String {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(bytes))
            .expect("file");
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn disks_grow_sparsely_and_can_be_taken_back() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let a = file(dir.path(), "a.img", 1 << 20);
        let b = file(dir.path(), "b.img", 4 << 20);
        let grown = grow_disks(&[(a.clone(), 64 << 20), (b.clone(), 4 << 20)]).expect("grows");
        assert_eq!(
            grown,
            [Grown {
                path: PathBuf::from(&a),
                old_bytes: 1 << 20,
                new_bytes: 64 << 20
            }]
        );
        let meta = std::fs::metadata(&a).expect("stat");
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "no blocks were written");
        assert!(shrink_back(&grown).is_empty());
        assert_eq!(disk_file_bytes(Path::new(&a)), Some(1 << 20));
        // A missing file fails the whole grow, and what it grew first goes back.
        let gone = dir.path().join("gone.img").to_string_lossy().into_owned();
        let e = grow_disks(&[(a.clone(), 8 << 20), (gone, 8 << 20)]).expect_err("missing");
        assert!(e.to_string().contains("open the disk"), "{e}");
        assert_eq!(disk_file_bytes(Path::new(&a)), Some(1 << 20));
        assert_eq!(disk_file_bytes(dir.path()), None, "not a file");
    }

    #[test]
    fn record_sizes_follow_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = file(dir.path(), "a.img", 300 << 20);
        use crate::service::convert::{Context, MacPool, new_record};
        let create = hull_spec::validate_create(&serde_json::json!({"brand": "kvm",
            "disks": [{"path": a, "size": 100}, {"path": "/nonexistent/b.img", "size": 7},
                      {"path": a}]}))
        .expect("valid");
        let mut vm =
            new_record(create, &Context::fixed(), &mut MacPool::new(&|_| false)).expect("vm");
        assert!(disk_sizes_from_files(&mut vm));
        let sizes: Vec<_> = vm.disks.iter().map(|d| d.size).collect();
        assert_eq!(sizes, [Some(300), Some(7), None]);
        assert!(!disk_sizes_from_files(&mut vm), "nothing left to change");
    }
}
