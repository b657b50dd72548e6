//! Snapshots of a stopped zone's root, or of every disk of a microVM: take, roll back,
//! delete.

use std::sync::Arc;

use hull_spec::VmState;
use hull_spec::api::EventKind;
use uuid::Uuid;

use super::{Record, Result, Service, ServiceError, best_effort, blocking, now, write};

/// The host paths of a microVM's disks.
fn disk_paths(vm: &hull_spec::Vm) -> Result<Vec<std::path::PathBuf>> {
    vm.disks
        .iter()
        .map(|d| {
            d.path
                .as_deref()
                .map(std::path::PathBuf::from)
                .ok_or_else(|| {
                    ServiceError::Conflict(format!("VM {} has a disk without a path", vm.uuid))
                })
        })
        .collect()
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

/// The checks every verb makes of the record: the name taken (create) or missing (rollback,
/// delete), and the guest's zfs_snapshot_limit.
fn check_verb(vm: &hull_spec::Vm, name: &str, verb: SnapshotVerb) -> Result<()> {
    let uuid = vm.uuid;
    let exists = vm.snapshots.iter().any(|s| s.name == name);
    match verb {
        SnapshotVerb::Create if name == hull_cowstore::store::RECEIVE_SNAPSHOT => {
            Err(ServiceError::BadRequest(format!(
                "the snapshot name {name:?} is hull's own (vmadm receive takes it while it \
                 changes a copy)"
            )))
        }
        SnapshotVerb::Create if exists => Err(ServiceError::Conflict(format!(
            "VM {uuid} already has a snapshot {name:?}"
        ))),
        SnapshotVerb::Create
            if vm
                .zfs_snapshot_limit
                .is_some_and(|limit| vm.snapshots.len() as u64 >= limit) =>
        {
            Err(ServiceError::Conflict(format!(
                "VM {uuid} has {} snapshots, its zfs_snapshot_limit; delete one first",
                vm.snapshots.len()
            )))
        }
        SnapshotVerb::Rollback | SnapshotVerb::Delete if !exists => Err(ServiceError::BadRequest(
            format!("VM {uuid} has no snapshot {name:?}"),
        )),
        _ => Ok(()),
    }
}

impl Service {
    /// Takes, rolls back to, or deletes a snapshot of a stopped zone's root, or of every
    /// disk of a microVM.
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
        let guard = lock.lock().await;
        let current = self.get(uuid)?;
        if current.brand.is_microvm() {
            return self.disk_snapshot(current, name, verb, guard).await;
        }
        if let Some(dir) = &current.oci_bundle {
            return Err(ServiceError::NotImplemented(format!(
                "VM {uuid} runs the OCI bundle {dir}: its root is the bundle's, outside hull's \
                 image store, which takes the snapshots"
            )));
        }
        if current.image_uuid.is_none() {
            return Err(ServiceError::NotImplemented(format!(
                "VM {uuid} has no root of its own to snapshot"
            )));
        }
        if matches!(current.state, VmState::Running | VmState::Stopping) {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} is {}: stop it first",
                current.state.as_str()
            )));
        }
        check_verb(&current.vm, name, verb)?;
        let mut next = current.vm.clone();
        let storage = self.storage.clone();
        let n = name.to_string();
        match verb {
            SnapshotVerb::Create => {
                blocking(move || storage.snapshot(uuid, &n)).await?;
                next.snapshots.push(hull_spec::vm::Snapshot {
                    name: name.to_string(),
                    created_at: now(),
                });
            }
            SnapshotVerb::Rollback => {
                blocking(move || storage.rollback(uuid, &n)).await?;
            }
            SnapshotVerb::Delete => {
                blocking(move || storage.delete_snapshot(uuid, &n)).await?;
                next.snapshots.retain(|s| s.name != name);
            }
        }
        let storage = self.storage.clone();
        let n = name.to_string();
        self.save_snapshots(next, verb, move || {
            let _ = storage.delete_snapshot(uuid, &n);
        })
        .await
    }

    /// Writes `next`, whose snapshots `verb` changed; a snapshot just taken is removed again
    /// (`undo`) when the record cannot be written, so none exists that the record lacks.
    async fn save_snapshots(
        &self,
        mut next: hull_spec::Vm,
        verb: SnapshotVerb,
        undo: impl FnOnce() + Send + 'static,
    ) -> Result<Arc<Record>> {
        next.last_modified = now();
        if let Err(e) = self.persist(&next).await {
            if verb == SnapshotVerb::Create {
                best_effort(undo).await;
            }
            return Err(e);
        }
        let next = Arc::new(Record::new(next));
        write(&self.records).insert(next.clone());
        self.emit(EventKind::Modify, &next, vec!["snapshots".into()]);
        Ok(next)
    }

    /// A microVM's snapshots cover every disk: taken while it is stopped, deleted at any
    /// time; a rollback as SmartOS's: the VM stopped if it runs, its disks put back, the
    /// snapshots newer than the one rolled back to deleted, and the VM started again if it
    /// ran.
    async fn disk_snapshot(
        &self,
        current: Arc<Record>,
        name: &str,
        verb: SnapshotVerb,
        guard: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Arc<Record>> {
        let uuid = current.vm.uuid;
        let running = matches!(current.vm.state, VmState::Running | VmState::Stopping);
        check_verb(&current.vm, name, verb)?;
        if verb == SnapshotVerb::Create && running {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} is {}: stop it first (a running guest's disks change under a \
                 snapshot)",
                current.vm.state.as_str()
            )));
        }
        let disks = disk_paths(&current.vm)?;
        let storage = self.storage.clone();
        let n = name.to_string();
        let mut current = current;
        let mut next = current.vm.clone();
        match verb {
            SnapshotVerb::Create => {
                blocking(move || storage.snapshot_disks(uuid, &n, &disks)).await?;
                next.snapshots.push(hull_spec::vm::Snapshot {
                    name: name.to_string(),
                    created_at: now(),
                });
            }
            SnapshotVerb::Delete => {
                blocking(move || storage.delete_disk_snapshot(uuid, &n)).await?;
                next.snapshots.retain(|s| s.name != name);
            }
            SnapshotVerb::Rollback => {
                if running {
                    current = self.stop_locked(current, false, None).await?;
                    next = current.vm.clone();
                }
                blocking(move || storage.rollback_disks(uuid, &n, &disks)).await?;
                let at = next
                    .snapshots
                    .iter()
                    .position(|s| s.name == name)
                    .map_or(next.snapshots.len(), |i| i + 1);
                let newer: Vec<String> = next.snapshots.drain(at..).map(|s| s.name).collect();
                for old in newer {
                    let storage = self.storage.clone();
                    blocking(move || storage.delete_disk_snapshot(uuid, &old)).await?;
                }
            }
        }
        let storage = self.storage.clone();
        let n = name.to_string();
        let next = self
            .save_snapshots(next, verb, move || {
                let _ = storage.delete_disk_snapshot(uuid, &n);
            })
            .await?;
        if verb == SnapshotVerb::Rollback && running {
            drop(guard);
            return self.start(uuid).await;
        }
        Ok(next)
    }
}
