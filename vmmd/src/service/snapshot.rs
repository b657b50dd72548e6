//! Snapshots of a stopped zone's root: take, roll back, delete.

use std::sync::Arc;

use hull_spec::VmState;
use hull_spec::api::EventKind;
use uuid::Uuid;

use super::{Record, Result, Service, ServiceError, best_effort, blocking, now, write};

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

impl Service {
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
        if let Some(limit) = current.zfs_snapshot_limit
            && verb == SnapshotVerb::Create
            && current.snapshots.len() as u64 >= limit
        {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} has {} snapshots, its zfs_snapshot_limit; delete one first",
                current.snapshots.len()
            )));
        }
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
        next.last_modified = now();
        if let Err(e) = self.persist(&next).await {
            if verb == SnapshotVerb::Create {
                let storage = self.storage.clone();
                let n = name.to_string();
                best_effort(move || storage.delete_snapshot(uuid, &n)).await;
            }
            return Err(e);
        }
        let next = Arc::new(Record::new(next));
        write(&self.records).insert(next.clone());
        self.emit(EventKind::Modify, &next, vec!["snapshots".into()]);
        Ok(next)
    }
}
