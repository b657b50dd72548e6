//! What vmmd finds again after a restart or a crash: running guests to watch again, switch
//! ports nobody owns, the NICs each running guest was plumbed with.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use hull_spec::{Vm, VmState};
use hull_vswitch::Guard;
use uuid::Uuid;

use super::convert::ports;
use super::{Record, Result, Service, ServiceError, blocking, read, unblock};

impl Service {
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
            let alive = unblock(move || z.alive(uuid)).await.ok().flatten();
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

    /// Deletes the switch ports left in the host's namespace by guests that are not running
    /// (a vmmd or host crash in the middle of a start), and loads this vmmd's anti-spoofing
    /// table afresh with the entries of the running guests' ports (dropping any a crash
    /// left). Returns the names of the links removed.
    pub async fn sweep_ports(&self) -> Result<Vec<String>> {
        let tags = self.nictags()?;
        let (running, guarded) = {
            let index = read(&self.records);
            let live: Vec<&Arc<Record>> = index
                .vms
                .values()
                .filter(|vm| matches!(vm.state, VmState::Running | VmState::Stopping))
                .collect();
            let uuids: BTreeSet<String> = live.iter().map(|vm| vm.uuid.to_string()).collect();
            let guarded: Vec<(String, Guard)> = live
                .iter()
                .flat_map(|vm| ports::guarded_ports(&self.plumbed(vm), &tags))
                .collect();
            (uuids, guarded)
        };
        let switch = self.switch.clone();
        let keep = Box::new(move |uuid: &str| running.contains(uuid));
        blocking(move || switch.sweep(keep, guarded).map_err(ServiceError::Switch)).await
    }

    /// Makes a spare zoned ahead of the first zone start (on cgroup v1 hosts, as root).
    pub fn prepare_zones(&self) {
        self.zones.prepare();
    }

    /// Where a running guest's plumbed NICs are noted (its zone directory).
    pub(super) fn plumbed_path(&self, uuid: Uuid) -> PathBuf {
        self.zones.dir(uuid).join("nics.json")
    }

    /// Notes the NICs a running guest's ports were made from: what vmmd guards at its next
    /// start, which for a microVM whose record changed since its boot is not the record.
    pub(super) fn record_plumbed(&self, vm: &Vm) {
        let path = self.plumbed_path(vm.uuid);
        let written = serde_json::to_vec(&vm.nics)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                hull_sys::fs::write_atomic_with(&path, &b, hull_sys::fs::WriteOptions::RUNTIME)
                    .map_err(|e| hull_sys::chain(&e))
            });
        if let Err(e) = written {
            tracing::warn!(uuid = %vm.uuid, "cannot note its plumbed NICs: {e}");
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
}

/// Where the metadata agent reaches a running guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataEndpoint {
    /// The guest's zoned (pid and start time): the endpoint lives as long as it does.
    pub zoned_pid: i32,
    pub zoned_start: u64,
    pub kind: EndpointKind,
}

/// A zone's listener held by its zoned, or a microVM's COM2 socket in its VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointKind {
    /// zoned's descriptor of the zone's listening socket (see zoned's `metadata_service`).
    ZoneListener { fd: i32 },
    /// The VMM's `--metadata` socket, on the host side of its zone's runtime directory.
    VmmSocket { path: PathBuf },
}

impl Service {
    /// Where the agent reaches the guest's metadata line, while its zone runs.
    pub fn metadata_endpoint(&self, uuid: Uuid) -> Option<MetadataEndpoint> {
        let st = self.zones.alive(uuid)?;
        let kind = match st.metadata_fd {
            Some(fd) => EndpointKind::ZoneListener { fd },
            None if self.get(uuid).is_ok_and(|r| r.vm.brand.is_microvm()) => {
                EndpointKind::VmmSocket {
                    path: self
                        .zones
                        .dir(uuid)
                        .join(zoned::config::files::VMM_DIR)
                        .join(zoned::config::files::VMM_METADATA),
                }
            }
            None => return None,
        };
        Some(MetadataEndpoint {
            zoned_pid: st.zoned_pid,
            zoned_start: st.zoned_start,
            kind,
        })
    }
}
