//! Changing a guest: the update's plan ([`plan`]: the new record, pure), then what reaches a
//! running guest before the record says so (new disks, NICs, limits, grown disks), then the
//! record. All or nothing: each step that fails undoes the ones before it.

mod plan;

pub use plan::{apply, disk_growth};

use std::path::Path;
use std::sync::Arc;

use hull_spec::api::EventKind;
use hull_spec::net::MacAddr;
use hull_spec::warning::Warning;
use hull_spec::{Brand, ValidationReport, Vm, VmState, validate_update};
use serde_json::Value;
use uuid::Uuid;

use super::convert::{microvm, ports, zone};
use super::provision::{self, Grown};
use super::zones;
use super::{
    LIVE_LIMITS, MICROVM_BOOT_PROPERTIES, Record, Result, Service, ServiceError,
    ZONE_BOOT_PROPERTIES, add_host_notes, best_effort, blocking, microvm_quota, note_stored, now,
    read, unblock, write,
};
use hull_vmm_proto::ControlRequest;

impl Service {
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
            let others = |m: &MacAddr| index.mac_owner(m, Some(uuid)).is_some();
            apply(&current, &upd, &self.data_root, &others).map_err(ServiceError::Invalid)?
        };
        // A zone's capabilities are fixed when it starts: CAP_NET_ADMIN, which a VRRP NIC's
        // daemon needs, cannot reach a running zone that had no VRRP NIC.
        let vrrp = |vm: &Vm| vm.nics.iter().any(|n| n.is_vrrp());
        if !next.brand.is_microvm()
            && vrrp(&next)
            && !vrrp(&current)
            && matches!(current.state, VmState::Running | VmState::Stopping)
        {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} runs without a VRRP NIC: stop it to add its first one (a zone's \
                 processes get CAP_NET_ADMIN, which its VRRP daemon needs, when it starts)"
            )));
        }
        let growth = {
            let mut report = ValidationReport::default();
            let file = |p: &str| self.storage.disk_file_bytes(Path::new(p));
            let growth = disk_growth(&upd, &file, &mut report);
            if !report.is_empty() {
                return Err(ServiceError::Invalid(report));
            }
            growth
        };
        next.last_modified = now();
        note_stored(&mut next);
        if changes.iter().any(|c| c == "quota")
            && next.brand.is_microvm()
            && !next.warnings.contains(&microvm_quota())
        {
            next.warnings.push(microvm_quota());
        }
        if changes.iter().any(|c| c == "quota") && next.image_uuid.is_some() {
            next.warnings.retain(|w| !matches!(w, Warning::Quota(_)));
            let storage = self.storage.clone();
            let gib = next.quota;
            let warning = blocking(move || storage.set_quota(uuid, gib)).await?;
            next.warnings.extend(warning);
        }
        // Disks added or removed by the update: make the new ones before the record says they
        // exist, remove the old ones only after it no longer does.
        let (added, removed) = provision::disk_changes(&current, &next);
        if !added.is_empty() {
            let storage = self.storage.clone();
            let (vm, add) = (next.clone(), added.clone());
            let made = blocking(move || storage.make_disks(&vm, &add)).await?;
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
                    next.warnings
                        .retain(|w| !matches!(w, Warning::NicsAtNextBoot(_)));
                    next.warnings.push(Warning::NicsAtNextBoot(
                        "the VM runs with the NICs it booted with: hull's VMM has no NIC hotplug"
                            .into(),
                    ));
                }
            } else {
                match self.change_zone_nics(&current, &next).await {
                    Ok(undo) => undo_nics = undo,
                    Err(e) => {
                        let storage = self.storage.clone();
                        best_effort(move || storage.remove_disks(uuid, &added)).await;
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
                let w = Warning::AtNextBoot(c.clone());
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
            // Nothing changed: the files grown go back, the disks it made go, the NICs and
            // limits go back.
            let (storage, grown) = (self.storage.clone(), std::mem::take(&mut undo_growth));
            best_effort(move || {
                storage.shrink_back(&grown);
                storage.remove_disks(uuid, &added)
            })
            .await;
            if let Some((pid, undo)) = undo_nics {
                let switch = self.switch.clone();
                best_effort(move || switch.update_zone(pid, &undo)).await;
                self.record_plumbed(&current);
            }
            if let Some(limits) = undo_limits {
                let z = self.zones.clone();
                let req = zoned::config::Request::Update { limits };
                best_effort(move || z.request(uuid, &req)).await;
            }
            return Err(e);
        }
        if !removed.is_empty() {
            let storage = self.storage.clone();
            if let Err(e) = unblock(move || storage.remove_disks(uuid, &removed)).await? {
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
    async fn grow_disks(&self, current: &Vm, growth: Vec<(String, u64)>) -> Result<Vec<Grown>> {
        if growth.is_empty() {
            return Ok(Vec::new());
        }
        let storage = self.storage.clone();
        let grown = blocking(move || storage.grow_disks(&growth)).await?;
        if !(current.brand.is_microvm() && current.state == VmState::Running) {
            return Ok(grown);
        }
        let (z, uuid) = (self.zones.clone(), current.uuid);
        let (told, left) = unblock(move || {
            let mut grown = grown;
            for i in 0..grown.len() {
                // A disk added while the guest runs is not in its VMM: it sees the file's
                // size when it boots.
                let index = match z.vmm_disk_index(uuid, &grown[i].path) {
                    Ok(Some(index)) => index,
                    Ok(None) => continue,
                    Err(e) => return (Err(e), grown.split_off(i)),
                };
                let req = ControlRequest::ResizeDisk { index };
                if let Err(e) = z.vmm_request(uuid, &req) {
                    return (Err(e), grown.split_off(i));
                }
            }
            (Ok(()), Vec::new())
        })
        .await?;
        if let Err(e) = told {
            let storage = self.storage.clone();
            let problems = unblock(move || storage.shrink_back(&left)).await?;
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
        let mut limits = zone::limits(next);
        let mut undo = zone::limits(current);
        if next.brand.is_microvm() {
            let z = self.zones.clone();
            let booted = unblock(move || z.running_config(uuid))
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
                .retain(|w| !matches!(w, Warning::MemoryAtNextBoot(_)));
            let wanted = zone::limits(next);
            let booted_ram = microvm::booted_ram(&booted);
            if booted_ram != Some(next.ram)
                || wanted.memory_bytes != memory
                || wanted.swap_bytes != swap
            {
                let ram = booted_ram.map_or("its boot's".to_string(), |r| format!("{r} MiB of"));
                next.warnings.push(Warning::MemoryAtNextBoot(format!(
                    "the VM keeps {ram} RAM and its VMM's memory limit until it is restarted"
                )));
            }
        }
        let z = self.zones.clone();
        let req = zoned::config::Request::Update { limits };
        let reply = unblock(move || z.request(uuid, &req)).await?.map_err(|e| {
            ServiceError::Conflict(format!(
                "VM {uuid}: the new limits cannot be applied to the running guest, so \
                     nothing was changed: {}",
                hull_sys::chain(&e)
            ))
        })?;
        add_host_notes(&mut next.warnings, &reply.notes);
        Ok(Some(undo))
    }

    /// Applies the NIC changes from `current` to `next` to a running zone: new veth pairs,
    /// removed ones deleted, changed ones updated (see hull_vswitch::Switch::update_zone). On a
    /// failure what was applied is undone and nothing has changed. Returns the change that
    /// undoes it (with the zone's init pid), for when the record cannot be written.
    async fn change_zone_nics(
        &self,
        current: &Vm,
        next: &Vm,
    ) -> Result<Option<(i32, hull_vswitch::ZoneChange)>> {
        let uuid = current.uuid;
        let tags = self.nictags()?;
        let old = ports::zone_nics(current, &tags)
            .map_err(|e| ServiceError::Conflict(format!("VM {uuid}: {e}")))?;
        let new = ports::zone_nics(next, &tags)
            .map_err(|e| ServiceError::Conflict(format!("VM {uuid}: {e}")))?;
        let routes = |vm: &Vm| {
            ports::zone_routes(vm).map_err(|e| ServiceError::Conflict(format!("VM {uuid}: {e}")))
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
        let switch = self.switch.clone();
        let (c, u) = (change.clone(), undo.clone());
        let applied = unblock(move || {
            let r = switch.update_zone(pid, &c);
            if r.is_err() {
                // Back to what the record says (best effort: the error is the first one).
                let _ = switch.update_zone(pid, &u);
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
                    source: zones::ControlError::Nics(e),
                }))
            }
        }
    }
}
