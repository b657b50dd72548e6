//! The service's seams: the three subsystems a guest operation drives, each behind a small
//! trait, so that the operations' ordering and rollback can be tested without root against
//! the recording fakes in `fake.rs` (the shape of youki's `network/traits.rs` + `fake.rs`).
//!
//! - [`GuestStorage`]: a guest's root and disk files in the image store (cowstore).
//! - [`ZoneRuntime`]: the zoned processes that run guests (see [`super::zones`]).
//! - [`Switch`]: this data root's switch ports (hull_vswitch, through netlink and nftables).
//!
//! Every method blocks (files, processes, netlink): the service calls them through
//! [`super::blocking`]. The traits carry no policy: what to undo when a step fails is the
//! service's, and the production implementations only forward.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hull_cowstore::backend::RootSource;
use hull_cowstore::store::{Store as CowStore, StoreError};
use hull_spec::warning::Warning;
use hull_spec::{DiskSpec, Vm};
use hull_vswitch::{Guard, VswitchError, ZoneChange, ZoneNic, ZoneRoute};
use uuid::Uuid;
use zoned::config::{Reply, Request, ZoneConfig, ZoneState};

use super::convert::zone::ZoneRoot;
use super::provision::{self, Grown, Warnings};
use super::zones::{DiskBoot, Plumb, ZoneError, Zones};
use hull_vmm_proto::{ControlReply, ControlRequest};

/// A guest's storage in the image store: its root, its disk files and their snapshots.
pub trait GuestStorage: Send + Sync + std::fmt::Debug {
    /// Makes the guest's root and disks (all or nothing); what the backend cannot enforce.
    fn provision(&self, vm: &Vm) -> Result<Warnings, StoreError>;
    /// Removes everything of the guest's.
    fn destroy_guest(&self, uuid: Uuid) -> Result<(), StoreError>;
    /// Sets the root's quota (GiB, 0 = none); a warning when the backend cannot enforce it.
    fn set_quota(&self, uuid: Uuid, gib: u64) -> Result<Option<Warning>, StoreError>;
    /// Makes `disks` of `vm` (all or nothing).
    fn make_disks(&self, vm: &Vm, disks: &[DiskSpec]) -> Result<Warnings, StoreError>;
    /// Deletes the files of `disks` that hull made for `uuid`.
    fn remove_disks(&self, uuid: Uuid, disks: &[DiskSpec]) -> Result<(), StoreError>;
    /// The size of a disk file, when it can be read.
    fn disk_file_bytes(&self, path: &Path) -> Option<u64>;
    /// Grows each `(path, bytes)`; on an error nothing stays grown.
    fn grow_disks(&self, wanted: &[(String, u64)]) -> Result<Vec<Grown>, StoreError>;
    /// Takes `grown` back to their old sizes; the problems met.
    fn shrink_back(&self, grown: &[Grown]) -> Vec<String>;
    /// What a zone's root is mounted from, if it has one.
    fn root_source(&self, uuid: Uuid) -> Result<Option<RootSource>, StoreError>;
    /// Where a zone's delegated dataset is (whether or not it has one).
    fn data_dir(&self, uuid: Uuid) -> PathBuf;
    /// Where a zone's volumes are (whether or not it has any).
    fn volumes_dir(&self, uuid: Uuid) -> PathBuf;
    /// Replaces a zone's root with a fresh clone of `image`, its snapshots gone, its
    /// delegated dataset kept.
    fn reprovision_root(&self, uuid: Uuid, image: Uuid) -> Result<(), StoreError>;
    /// Replaces a microVM's disk with a clone of `image`, keeping its size.
    fn reprovision_disk(&self, uuid: Uuid, image: Uuid, disk: &Path) -> Result<(), StoreError>;
    /// Where an installed image's files are.
    fn image_dir(&self, image: Uuid) -> PathBuf;
    /// Takes the snapshot `name` of the guest's root.
    fn snapshot(&self, uuid: Uuid, name: &str) -> Result<(), StoreError>;
    /// Rolls the guest's root back to the snapshot `name`.
    fn rollback(&self, uuid: Uuid, name: &str) -> Result<(), StoreError>;
    /// Deletes the snapshot `name`.
    fn delete_snapshot(&self, uuid: Uuid, name: &str) -> Result<(), StoreError>;
    /// Snapshots a stopped microVM's disks as `name`.
    fn snapshot_disks(&self, uuid: Uuid, name: &str, disks: &[PathBuf]) -> Result<(), StoreError>;
    /// Puts a stopped microVM's disks back as snapshot `name` has them.
    fn rollback_disks(&self, uuid: Uuid, name: &str, disks: &[PathBuf]) -> Result<(), StoreError>;
    /// Deletes a microVM's disk snapshot `name`.
    fn delete_disk_snapshot(&self, uuid: Uuid, name: &str) -> Result<(), StoreError>;
}

impl GuestStorage for CowStore {
    fn provision(&self, vm: &Vm) -> Result<Warnings, StoreError> {
        provision::provision(self, vm)
    }

    fn destroy_guest(&self, uuid: Uuid) -> Result<(), StoreError> {
        CowStore::destroy_guest(self, uuid)
    }

    fn set_quota(&self, uuid: Uuid, gib: u64) -> Result<Option<Warning>, StoreError> {
        provision::set_quota(self, uuid, gib)
    }

    fn make_disks(&self, vm: &Vm, disks: &[DiskSpec]) -> Result<Warnings, StoreError> {
        provision::make_disks(self, vm, disks)
    }

    fn remove_disks(&self, uuid: Uuid, disks: &[DiskSpec]) -> Result<(), StoreError> {
        provision::remove_disks(self, uuid, disks)
    }

    fn disk_file_bytes(&self, path: &Path) -> Option<u64> {
        provision::disk_file_bytes(path)
    }

    fn grow_disks(&self, wanted: &[(String, u64)]) -> Result<Vec<Grown>, StoreError> {
        provision::grow_disks(wanted)
    }

    fn shrink_back(&self, grown: &[Grown]) -> Vec<String> {
        provision::shrink_back(grown)
    }

    fn root_source(&self, uuid: Uuid) -> Result<Option<RootSource>, StoreError> {
        CowStore::root_source(self, uuid)
    }

    fn data_dir(&self, uuid: Uuid) -> PathBuf {
        CowStore::data_dir(self, uuid)
    }

    fn volumes_dir(&self, uuid: Uuid) -> PathBuf {
        CowStore::volumes_dir(self, uuid)
    }

    fn reprovision_root(&self, uuid: Uuid, image: Uuid) -> Result<(), StoreError> {
        CowStore::reprovision_root(self, uuid, image).map(drop)
    }

    fn reprovision_disk(&self, uuid: Uuid, image: Uuid, disk: &Path) -> Result<(), StoreError> {
        CowStore::reprovision_disk(self, uuid, image, disk)
    }

    fn image_dir(&self, image: Uuid) -> PathBuf {
        CowStore::image_dir(self, image)
    }

    fn snapshot(&self, uuid: Uuid, name: &str) -> Result<(), StoreError> {
        CowStore::snapshot(self, uuid, name)
    }

    fn rollback(&self, uuid: Uuid, name: &str) -> Result<(), StoreError> {
        CowStore::rollback(self, uuid, name)
    }

    fn delete_snapshot(&self, uuid: Uuid, name: &str) -> Result<(), StoreError> {
        CowStore::delete_snapshot(self, uuid, name)
    }

    fn snapshot_disks(&self, uuid: Uuid, name: &str, disks: &[PathBuf]) -> Result<(), StoreError> {
        CowStore::snapshot_disks(self, uuid, name, disks)
    }

    fn rollback_disks(&self, uuid: Uuid, name: &str, disks: &[PathBuf]) -> Result<(), StoreError> {
        CowStore::rollback_disks(self, uuid, name, disks)
    }

    fn delete_disk_snapshot(&self, uuid: Uuid, name: &str) -> Result<(), StoreError> {
        CowStore::delete_disk_snapshot(self, uuid, name)
    }
}

/// The processes that run guests: one zoned per running guest, reached through files and
/// sockets in its runtime directory.
pub trait ZoneRuntime: Send + Sync + std::fmt::Debug {
    /// The guest's runtime directory.
    fn dir(&self, uuid: Uuid) -> PathBuf;
    /// Starts the guest's zone (its VMM's for a microVM); returns once its init runs. Init
    /// runs nothing of the zone's before `plumb` has made its network (given init's pid);
    /// when `plumb` fails, init never runs and the start fails.
    fn start(
        &self,
        vm: &Vm,
        root: Option<ZoneRoot>,
        plumb: &mut Plumb<'_>,
    ) -> Result<ZoneState, ZoneError>;
    /// One request to the guest's zoned.
    fn request(&self, uuid: Uuid, req: &Request) -> Result<Reply, ZoneError>;
    /// The running zone's state, if its zoned is alive.
    fn alive(&self, uuid: Uuid) -> Option<ZoneState>;
    /// The zone's state file as zoned last wrote it.
    fn last_state(&self, uuid: Uuid) -> Option<ZoneState>;
    /// The config the running zone started with.
    fn running_config(&self, uuid: Uuid) -> Option<ZoneConfig>;
    /// The guest's host id range `(first, count)`, once it has one (from its first start
    /// until it is deleted): the ids its files may carry on disk.
    fn id_range(&self, uuid: Uuid) -> Option<(u32, u32)>;
    /// Waits up to `limit` for the zone's zoned to exit; false when it did not.
    fn wait_stopped(&self, uuid: Uuid, limit: Duration) -> bool;
    /// Removes what a zone that ended may have left (processes, cgroup); the problems met.
    fn clean_up(&self, uuid: Uuid) -> Vec<String>;
    /// Deletes a stopped zone's runtime directory.
    fn forget(&self, uuid: Uuid);
    /// One request to a running microVM's VMM; its reply, which said ok.
    fn vmm_request(&self, uuid: Uuid, req: &ControlRequest) -> Result<ControlReply, ZoneError>;
    /// Which disk of the running microVM's VMM the file `disk` is.
    fn vmm_disk_index(&self, uuid: Uuid, disk: &Path) -> Result<Option<usize>, ZoneError>;
    /// Makes a spare zoned ahead of the next start, where that helps.
    fn prepare(&self);
    /// What a microVM's boot disk `disk` says to boot (see [`Zones::find_boot`]); the error
    /// is the reason, for the guest's record.
    fn find_boot(&self, uuid: Uuid, disk: &Path) -> Result<DiskBoot, String>;
}

/// [`ZoneRuntime`] on this host: vmmd's [`Zones`].
#[derive(Debug, Clone)]
pub struct HostZones(pub Arc<Zones>);

impl ZoneRuntime for HostZones {
    fn dir(&self, uuid: Uuid) -> PathBuf {
        self.0.dir(uuid)
    }

    fn start(
        &self,
        vm: &Vm,
        root: Option<ZoneRoot>,
        plumb: &mut Plumb<'_>,
    ) -> Result<ZoneState, ZoneError> {
        self.0.start(vm, root, plumb)
    }

    fn request(&self, uuid: Uuid, req: &Request) -> Result<Reply, ZoneError> {
        self.0.request(uuid, req)
    }

    fn alive(&self, uuid: Uuid) -> Option<ZoneState> {
        self.0.alive(uuid)
    }

    fn last_state(&self, uuid: Uuid) -> Option<ZoneState> {
        self.0.last_state(uuid)
    }

    fn running_config(&self, uuid: Uuid) -> Option<ZoneConfig> {
        self.0.running_config(uuid)
    }

    fn id_range(&self, uuid: Uuid) -> Option<(u32, u32)> {
        self.0.id_range(uuid)
    }

    fn wait_stopped(&self, uuid: Uuid, limit: Duration) -> bool {
        self.0.wait_stopped(uuid, limit)
    }

    fn clean_up(&self, uuid: Uuid) -> Vec<String> {
        self.0.clean_up(uuid)
    }

    fn forget(&self, uuid: Uuid) {
        self.0.forget(uuid)
    }

    fn vmm_request(&self, uuid: Uuid, req: &ControlRequest) -> Result<ControlReply, ZoneError> {
        self.0.vmm_request(uuid, req)
    }

    fn vmm_disk_index(&self, uuid: Uuid, disk: &Path) -> Result<Option<usize>, ZoneError> {
        self.0.vmm_disk_index(uuid, disk)
    }

    fn prepare(&self) {
        self.0.refill()
    }

    fn find_boot(&self, uuid: Uuid, disk: &Path) -> Result<DiskBoot, String> {
        self.0.find_boot(uuid, disk)
    }
}

/// This data root's ports on the host's switch. Each port's alias names the data root (see
/// hull_vswitch::Switch::sweep), so an implementation serves one data root.
pub trait Switch: Send + Sync + std::fmt::Debug {
    /// Makes a microVM's TAPs (`key` is its uuid) on their bridges; all or nothing.
    fn make_taps(&self, key: &str, ports: &[ZoneNic]) -> Result<(), VswitchError>;
    /// Plumbs a running zone's NICs into its network namespace (init `pid`); all or nothing.
    fn plumb_zone(
        &self,
        key: &str,
        pid: i32,
        ports: &[ZoneNic],
        routes: &[ZoneRoute],
    ) -> Result<(), VswitchError>;
    /// Applies `change` to a running zone's NICs and routes.
    fn update_zone(&self, pid: i32, change: &ZoneChange) -> Result<(), VswitchError>;
    /// Deletes every port of the guest `key`; the links removed.
    fn remove_ports(&self, key: &str) -> Result<Vec<String>, VswitchError>;
    /// Deletes the ports of guests for which `keep` is false and loads the anti-spoofing
    /// table with `guarded`; the links removed.
    fn sweep(
        &self,
        keep: Box<dyn Fn(&str) -> bool + Send>,
        guarded: Vec<(String, Guard)>,
    ) -> Result<Vec<String>, VswitchError>;
    /// Removes a nic tag's bridges and takes `uplink` off them.
    fn release_tag(&self, tag: &str, uplink: Option<&str>) -> Result<Vec<String>, VswitchError>;
}

/// [`Switch`] on this host's kernel, for the data root its switch's owner names.
#[derive(Debug, Clone)]
pub struct HostSwitch {
    /// The switch of the data root's ports (owner: [`network::owner_tag`]); one per process.
    pub switch: hull_vswitch::Switch,
}

impl Switch for HostSwitch {
    fn make_taps(&self, key: &str, ports: &[ZoneNic]) -> Result<(), VswitchError> {
        let ports: Vec<_> = ports.iter().map(|nic| nic.port.clone()).collect();
        self.switch.add_taps(key, &ports)
    }

    fn plumb_zone(
        &self,
        key: &str,
        pid: i32,
        ports: &[ZoneNic],
        routes: &[ZoneRoute],
    ) -> Result<(), VswitchError> {
        self.switch.plumb_zone(key, pid, ports, routes)
    }

    fn update_zone(&self, pid: i32, change: &ZoneChange) -> Result<(), VswitchError> {
        self.switch.update_zone(pid, change)
    }

    fn remove_ports(&self, key: &str) -> Result<Vec<String>, VswitchError> {
        self.switch.remove_ports(key)
    }

    fn sweep(
        &self,
        keep: Box<dyn Fn(&str) -> bool + Send>,
        guarded: Vec<(String, Guard)>,
    ) -> Result<Vec<String>, VswitchError> {
        self.switch.sweep(keep, guarded)
    }

    fn release_tag(&self, tag: &str, uplink: Option<&str>) -> Result<Vec<String>, VswitchError> {
        self.switch.release_tag(tag, uplink)
    }
}
