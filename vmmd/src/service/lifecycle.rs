//! A guest's runs: start, stop, reboot, kill, delete, info, and the watch on each running
//! guest's zoned that marks it stopped when it ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hull_spec::api::EventKind;
use hull_spec::vm::defaults;
use hull_spec::warning::Warning;
use hull_spec::{Vm, VmState};
use serde_json::Value;
use uuid::Uuid;
use zoned::config::{Phase, Request, ZoneState};

use super::convert::ports;
use super::convert::zone::ZoneRoot;
use super::zones::{ControlError, StartError, ZoneError};
use super::{
    Record, Result, Service, ServiceError, add_host_notes, best_effort, blocking, now, read,
    unblock, write,
};
use hull_cowstore::backend::RootSource;
use hull_vmm_proto::ControlRequest;

impl Service {
    /// Starts a guest, and sets its autoboot as SmartOS's vmadm start does.
    /// A start someone asked for (`vmadm start`): as [`Service::start`], and a docker
    /// zone's restart count begins anew, as `docker start` resets Docker's.
    pub async fn start_by_hand(&self, uuid: Uuid) -> Result<Arc<Record>> {
        {
            let lock = self.guest_lock(uuid);
            let _guest = lock.lock().await;
            let vm = self.get(uuid)?;
            if vm.init_restarts.is_some() && vm.state == VmState::Stopped {
                let mut next = vm.vm.clone();
                next.init_restarts = None;
                self.save_state(next).await?;
            }
        }
        self.start(uuid).await
    }

    pub async fn start(&self, uuid: Uuid) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let vm = self.get(uuid)?;
        if vm.state == VmState::Running {
            return Err(ServiceError::Already(format!(
                "VM {uuid} is already running"
            )));
        }
        // What the zone runs: the record, with the kernel its boot disk names when it has
        // none of its own.
        let mut planned = vm.vm.clone();
        if vm.brand.is_microvm() && vm.kernel.is_none() {
            self.boot_from_disk(&vm, &mut planned).await?;
        }
        // A zone's ports are worked out before it starts: a nic the switch cannot plumb
        // fails the start, not the zone's network later.
        let ports = match vm.nics.is_empty() {
            true => Vec::new(),
            false => ports::zone_nics(&vm, &self.nictags()?)
                .map_err(|e| ServiceError::Conflict(format!("cannot start VM {uuid}: {e}")))?,
        };
        let routes = match vm.brand.is_microvm() {
            // A microVM's routes are its guest's business.
            true => Vec::new(),
            false => ports::zone_routes(&vm)
                .map_err(|e| ServiceError::Conflict(format!("cannot start VM {uuid}: {e}")))?,
        };
        if vm.brand.is_microvm() && !ports.is_empty() {
            // A microVM's TAPs exist before its VMM: zoned opens them for it.
            let (switch, taps) = (self.switch.clone(), ports.clone());
            unblock(move || switch.make_taps(&uuid.to_string(), &taps))
                .await?
                .map_err(|e| ZoneError::Start {
                    uuid,
                    source: StartError::Taps(e),
                })?;
        }
        let root = match vm.brand.is_microvm() {
            // A microVM's zone holds its VMM, kernel and disks, not a root filesystem.
            true => None,
            false => {
                // A bundle's zone: its root and process are the bundle's, read anew.
                let (source, bundle) = match vm.oci_bundle.clone() {
                    Some(dir) => {
                        let (config, root) = blocking(move || super::bundle::read(&dir)).await?;
                        (RootSource::Dir(root), Some(config))
                    }
                    None => {
                        let storage = self.storage.clone();
                        let source = blocking(move || storage.root_source(uuid))
                            .await?
                            .ok_or(ZoneError::NoRoot(uuid))?;
                        (source, None)
                    }
                };
                let data = vm.delegate_dataset.then(|| self.storage.data_dir(uuid));
                let volumes = self.storage.volumes_dir(uuid);
                Some(ZoneRoot {
                    source,
                    data,
                    volumes,
                    bundle,
                })
            }
        };
        // A zone's NICs are plumbed into its namespaces while its init waits, so that it
        // never runs without them; a microVM's VMM opens its TAPs itself.
        let (z, switch) = (self.zones.clone(), self.switch.clone());
        let zone_ports = (!vm.brand.is_microvm() && !ports.is_empty()).then_some(ports);
        let started = unblock(move || {
            let mut plumb = |pid: i32| match &zone_ports {
                Some(ports) => Ok(switch.plumb_zone(&uuid.to_string(), pid, ports, &routes)?),
                None => Ok(()),
            };
            z.start(&planned, root, &mut plumb)
        })
        .await?;
        let st = match started {
            Ok(st) => st,
            Err(e) => {
                let (z, switch) = (self.zones.clone(), self.switch.clone());
                best_effort(move || {
                    let _ = switch.remove_ports(&uuid.to_string());
                    z.clean_up(uuid)
                })
                .await;
                return Err(ServiceError::Zone(e));
            }
        };
        if !vm.nics.is_empty() {
            self.record_plumbed(&vm);
        }
        self.watch(uuid, st.zoned_pid);
        let running = self.set_running(&vm, &st).await?;
        // SmartOS's vmadm start sets autoboot (its stop clears it).
        self.set_autoboot(running, true).await
    }

    /// A microVM with no kernel boots what its boot disk's own config names (GRUB's default
    /// entry or the loader entries'), read anew at every start: `planned` gets that kernel,
    /// initrd and command line (the entry's options, the record's `cmdline` when it has one,
    /// then hull's console). When the disk names nothing bootable, the record's `failure`
    /// says why and the start fails before any VMM runs.
    async fn boot_from_disk(&self, vm: &Vm, planned: &mut Vm) -> Result<()> {
        let uuid = vm.uuid;
        let disk = vm
            .disks
            .iter()
            .find(|d| d.boot == Some(true))
            .or_else(|| vm.disks.first())
            .and_then(|d| d.path.clone());
        let Some(disk) = disk else {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} cannot boot: it has no kernel and no disk to boot from; give \
                 \"kernel\" (a host path) with vmadm update, or a boot disk whose image \
                 carries a boot loader config"
            )));
        };
        let z = self.zones.clone();
        match unblock(move || z.find_boot(uuid, std::path::Path::new(&disk))).await? {
            Ok(boot) => {
                let mut cmdline = boot.found.options.trim().to_owned();
                if let Some(own) = vm.cmdline.as_deref().filter(|c| !c.trim().is_empty()) {
                    cmdline = format!("{cmdline} {}", own.trim()).trim().to_owned();
                }
                let found = hull_vmm_proto::FoundBoot {
                    options: cmdline,
                    ..boot.found
                };
                tracing::info!(
                    %uuid,
                    "boots {} from {} on its disk's partition {} ({})",
                    found.kernel,
                    found.config,
                    found.partition,
                    found.kernel_format
                );
                planned.cmdline = Some(found.cmdline());
                planned.kernel = Some(boot.kernel.to_string_lossy().into_owned());
                planned.initrd = boot.initrd.map(|p| p.to_string_lossy().into_owned());
                Ok(())
            }
            Err(why) => {
                let why = format!("cannot boot from its disk: {why}");
                let mut next = vm.clone();
                next.failure = Some(why.clone());
                self.save_state(next).await?;
                Err(ServiceError::Conflict(format!("VM {uuid} {why}")))
            }
        }
    }

    async fn set_running(&self, current: &Vm, st: &ZoneState) -> Result<Arc<Record>> {
        let mut next = current.clone();
        next.state = VmState::Running;
        next.zone_state = VmState::Running.zone_state();
        next.pid = st.init_pid.map(|p| p as u32);
        next.boot_timestamp = Some(now());
        next.paused = false;
        next.exit_status = None;
        next.failure = None;
        // Records from before the switch carried the first warning; the second is for NIC
        // changes made while it ran, which it now has.
        // The same for memory changes made while it ran, and the host's notes, which this
        // start made anew.
        next.warnings.retain(|w| {
            !w.waits_for_boot() && !matches!(w, Warning::NicsNotPlumbed(_) | Warning::HostNote(_))
        });
        add_host_notes(&mut next.warnings, &st.notes);
        self.save_state(next).await
    }

    pub(super) async fn set_stopped(&self, current: &Vm) -> Result<Arc<Record>> {
        let uuid = current.uuid;
        let z = self.zones.clone();
        let has_nics = !current.nics.is_empty();
        let switch = self.switch.clone();
        let (last, problems) = unblock(move || {
            let last = z.last_state(uuid);
            let mut problems = z.clean_up(uuid);
            // The kernel deletes a zone's veth pairs when its network namespace goes, but
            // later, from a work queue: delete them now (with their anti-spoofing entries,
            // qdiscs and IFBs), so a stopped guest has no port.
            if has_nics && let Err(e) = switch.remove_ports(&uuid.to_string()) {
                problems.push(hull_sys::chain(&e));
            }
            (last, problems)
        })
        .await?;
        for p in problems {
            tracing::warn!(%uuid, "zone clean-up: {p}");
        }
        let _ = std::fs::remove_file(self.plumbed_path(uuid));
        let mut next = current.clone();
        next.state = VmState::Stopped;
        next.zone_state = VmState::Stopped.zone_state();
        next.pid = None;
        next.paused = false;
        if let Some(last) = last {
            next.exit_status = last
                .last_exit
                .map(|e| e.code.unwrap_or_else(|| 128 + e.signal.unwrap_or(0)));
            next.failure = last.error;
        }
        self.save_state(next).await
    }

    /// Deletes a guest record.
    pub async fn delete(&self, uuid: Uuid) -> Result<()> {
        let lock = self.guest_lock(uuid);
        let guard = lock.lock().await;
        let mut current = self.get(uuid)?;
        if current.indestructible_zoneroot {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} has indestructible_zoneroot set; unset it first \
                 (vmadm update {uuid} indestructible_zoneroot=false)"
            )));
        }
        if current.indestructible_delegated {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} has indestructible_delegated set; unset it first \
                 (vmadm update {uuid} indestructible_delegated=false)"
            )));
        }
        if matches!(current.state, VmState::Running | VmState::Stopping) {
            // As vmadm delete does: a running guest is stopped (at once) first.
            current = self.stop_locked(current, true, None).await?;
        }
        if current.vm.archive_on_delete {
            // SmartOS keeps the deleted guest's configuration under /zones/archive; hull keeps
            // its record (metadata, NICs, tags included) under the data root's archive/.
            let dir = self.data_root.join("archive");
            let bytes = current.json.clone();
            blocking(move || {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| hull_sys::IoError::new("create", &dir, e))
                    .and_then(|()| {
                        hull_sys::fs::write_atomic(&dir.join(format!("{uuid}.json")), &bytes)
                    })
                    .map_err(hull_cowstore::store::StoreError::Io)
            })
            .await?;
        }
        let store = self.db.clone();
        blocking(move || store.remove(uuid)).await?;
        let storage = self.storage.clone();
        blocking(move || storage.destroy_guest(uuid)).await?;
        let z = self.zones.clone();
        unblock(move || z.forget(uuid)).await?;
        write(&self.records).remove(uuid);
        self.emit(EventKind::Delete, &current, Vec::new());
        drop(guard);
        drop(lock);
        self.forget_lock(uuid);
        Ok(())
    }

    /// Watches a zone's zoned process and reports its end to the reaper.
    pub(super) fn watch(&self, uuid: Uuid, pid: i32) {
        let tx = self.exits.clone();
        let Ok(fd) = hull_sys::process::pidfd(pid) else {
            let _ = tx.send(uuid);
            return;
        };
        // `AsyncFd::new` is deprecated for descriptors the caller might close behind tokio's
        // back; this one is an OwnedFd moved in, so only the AsyncFd can close it.
        #[allow(deprecated)]
        let afd = tokio::io::unix::AsyncFd::new(fd);
        tokio::spawn(async move {
            if let Ok(afd) = afd {
                let _ = afd.readable().await;
            }
            let _ = tx.send(uuid);
        });
    }

    /// Marks guests whose runtime process ended as stopped (and cleans what they left).
    pub async fn reaper(self: Arc<Self>) {
        let rx = self
            .exit_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut rx) = rx else { return };
        while let Some(uuid) = rx.recv().await {
            let lock = self.guest_lock(uuid);
            let _guest = lock.lock().await;
            let Ok(vm) = self.get(uuid) else { continue };
            let z = self.zones.clone();
            let alive = unblock(move || z.alive(uuid).is_some())
                .await
                .unwrap_or(false);
            if matches!(vm.state, VmState::Running | VmState::Stopping) && !alive {
                tracing::info!(%uuid, "zone stopped");
                // A microVM booting what its disk says ends its zone when its guest resets
                // (zoned's `reset_ends`): it starts anew, reading its disk again.
                let z = self.zones.clone();
                let reset = vm.state == VmState::Running
                    && unblock(move || z.last_state(uuid).is_some_and(|st| st.reset))
                        .await
                        .unwrap_or(false);
                let stopped = match self.set_stopped(&vm).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(%uuid, error = %e, "cannot record a zone's stop");
                        continue;
                    }
                };
                // A docker zone whose process ended by itself (not by a stop: that one was
                // `stopping`) starts again as its restart policy says, after 100 ms doubling
                // with each restart up to a minute, as Docker's back-off.
                let policy = super::convert::zone::RestartPolicy::of(&stopped)
                    .unwrap_or(super::convert::zone::RestartPolicy::Never);
                let restarts = stopped.init_restarts.unwrap_or(0);
                if stopped.docker
                    && vm.state == VmState::Running
                    && policy.restarts(stopped.exit_status, restarts)
                {
                    let mut next = (*stopped).clone();
                    next.init_restarts = Some(restarts + 1);
                    if let Err(e) = self.save_state(next).await {
                        tracing::error!(%uuid, error = %e, "cannot record a restart");
                        continue;
                    }
                    drop(_guest);
                    let delay = std::time::Duration::from_millis(100 << restarts.min(10))
                        .min(std::time::Duration::from_secs(60));
                    tracing::info!(%uuid, exit_status = ?stopped.exit_status, ?delay,
                        "the docker zone's process ended: starting it again (restart policy)");
                    let svc = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        // Only if nothing changed meanwhile (a delete, a start by hand).
                        if svc.get(uuid).is_ok_and(|v| v.state == VmState::Stopped)
                            && let Err(e) = svc.start(uuid).await
                        {
                            tracing::error!(%uuid, error = %e, "cannot restart a docker zone");
                        }
                    });
                    continue;
                }
                if reset {
                    drop(_guest);
                    tracing::info!(%uuid, "the guest reset: starting it again from its disk");
                    let svc = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = svc.start(uuid).await {
                            tracing::error!(%uuid, error = %e, "cannot start a guest again after its reset");
                        }
                    });
                }
            }
        }
    }

    /// Stops a guest: gracefully (SIGTERM to init, then everything killed after `timeout`
    /// seconds, SmartOS's 60 for a zone and 180 for a hardware VM by default) or at once with
    /// `force`. As SmartOS's vmadm stop, it clears autoboot: a guest the operator stopped
    /// stays stopped when the host boots again (vmadm start sets it again).
    pub async fn stop(
        &self,
        uuid: Uuid,
        force: bool,
        timeout: Option<u64>,
        keep_autoboot: bool,
    ) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let vm = self.running(uuid, "stop")?;
        let stopped = self.stop_locked(vm, force, timeout).await?;
        match keep_autoboot {
            true => Ok(stopped),
            false => self.set_autoboot(stopped, false).await,
        }
    }

    /// Sets the record's autoboot (durably: it decides what runs after a host's reboot).
    async fn set_autoboot(&self, current: Arc<Record>, autoboot: bool) -> Result<Arc<Record>> {
        if current.vm.autoboot == autoboot {
            return Ok(current);
        }
        let mut next = current.vm.clone();
        next.autoboot = autoboot;
        next.last_modified = now();
        self.persist(&next).await?;
        let next = Arc::new(Record::new(next));
        write(&self.records).insert(next.clone());
        self.emit(EventKind::Modify, &next, vec!["autoboot".into()]);
        Ok(next)
    }

    pub(super) async fn stop_locked(
        &self,
        vm: Arc<Record>,
        force: bool,
        timeout: Option<u64>,
    ) -> Result<Arc<Record>> {
        let uuid = vm.uuid;
        let timeout = timeout.unwrap_or(defaults::stop_timeout(vm.brand));
        let z = self.zones.clone();
        let stopped = blocking(move || {
            if z.alive(uuid).is_some() {
                z.request(
                    uuid,
                    &Request::Stop {
                        timeout_s: Some(timeout),
                        force,
                    },
                )?;
            }
            Ok::<_, ZoneError>(z.wait_stopped(uuid, Duration::from_secs(timeout + 15)))
        })
        .await?;
        if !stopped {
            return Err(ServiceError::Zone(ZoneError::Control {
                uuid,
                source: ControlError::StopTimeout,
            }));
        }
        self.set_stopped(&vm).await
    }

    /// Reboots a running zone (zoned stops init and boots it again).
    pub async fn reboot(&self, uuid: Uuid, force: bool) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let guest = lock.lock().await;
        let vm = self.running(uuid, "reboot")?;
        if vm.brand.is_microvm() && vm.kernel.is_none() {
            // It boots what its disk says, which its guest may have changed: stop it and start
            // it anew, reading the disk again, as a machine's firmware would.
            let timeout = if force {
                0
            } else {
                defaults::stop_timeout(vm.brand)
            };
            self.stop_locked(vm, force, Some(timeout)).await?;
            drop(guest);
            return self.start(uuid).await;
        }
        let z = self.zones.clone();
        let st = blocking(move || {
            let before = z.alive(uuid).map(|s| s.boots).unwrap_or(0);
            let timeout = if force {
                0
            } else {
                defaults::ZONE_STOP_TIMEOUT
            };
            z.request(
                uuid,
                &Request::Reboot {
                    timeout_s: Some(timeout),
                },
            )?;
            let t = std::time::Instant::now();
            loop {
                match z.alive(uuid) {
                    Some(s) if s.boots > before && s.phase == Phase::Running => {
                        return Ok(s);
                    }
                    None => {
                        return Err(ZoneError::Control {
                            uuid,
                            source: ControlError::StoppedInReboot,
                        });
                    }
                    _ if t.elapsed() > Duration::from_secs(timeout + 45) => {
                        return Err(ZoneError::Control {
                            uuid,
                            source: ControlError::RebootTimeout,
                        });
                    }
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
        .await?;
        self.set_running(&vm, &st).await
    }

    /// Sends a signal to a running zone's init.
    pub async fn kill(&self, uuid: Uuid, signal: i32) -> Result<Arc<Record>> {
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let vm = self.running(uuid, "kill")?;
        let z = self.zones.clone();
        blocking(move || z.request(uuid, &Request::Kill { signal })).await?;
        Ok(vm)
    }

    /// Pauses (`paused`) or resumes a running zone: zoned freezes or thaws its cgroup. A
    /// zone already so is a message (exit 0 in vmadm's terms); microVMs are refused, their
    /// VMM's control socket would freeze with them.
    pub async fn pause(&self, uuid: Uuid, paused: bool) -> Result<Arc<Record>> {
        let verb = if paused { "pause" } else { "resume" };
        let lock = self.guest_lock(uuid);
        let _guest = lock.lock().await;
        let vm = self.running(uuid, verb)?;
        if vm.brand.is_microvm() {
            return Err(ServiceError::Conflict(format!(
                "cannot {verb} VM {uuid}: pausing is implemented for zones, not {} microVMs",
                vm.brand
            )));
        }
        if vm.state != VmState::Running {
            return Err(ServiceError::Conflict(format!(
                "cannot {verb} VM {uuid}: it is {}",
                vm.state.as_str()
            )));
        }
        if vm.paused == paused {
            return Err(ServiceError::Already(format!(
                "VM {uuid} is already {}",
                if paused {
                    "paused"
                } else {
                    "running (not paused)"
                }
            )));
        }
        let z = self.zones.clone();
        blocking(move || z.request(uuid, &Request::Freeze { frozen: paused })).await?;
        let mut next = (*vm).clone();
        next.paused = paused;
        self.save_state(next).await
    }

    /// Sets a running zone's console window size.
    pub async fn resize(&self, uuid: Uuid, rows: u16, cols: u16) -> Result<()> {
        let vm = self.running(uuid, "resize the console of")?;
        if vm.brand.is_microvm() {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} is a {} microVM: its console is a serial line with no window size",
                vm.brand
            )));
        }
        for (n, what) in [(rows, "rows"), (cols, "cols")] {
            if !(1..=10_000).contains(&n) {
                return Err(ServiceError::BadRequest(format!(
                    "{what} {n} is not a window size (1 to 10000)"
                )));
            }
        }
        let z = self.zones.clone();
        blocking(move || z.request(uuid, &Request::Resize { rows, cols })).await?;
        Ok(())
    }

    /// What a running guest's cgroup reports: CPU time, memory, processes, OOM kills.
    pub async fn usage(&self, uuid: Uuid) -> Result<hull_spec::api::Usage> {
        let _vm = self.running(uuid, "read the usage of")?;
        let z = self.zones.clone();
        let reply = blocking(move || z.request(uuid, &Request::Usage)).await?;
        Ok(reply.usage.unwrap_or_default())
    }

    /// `vmadm info`: what a running microVM's VMM reports on its control socket (vCPU exits
    /// per vCPU and by kind and port or address, bytes per device, how its disks' data
    /// moves), with the guest's status and pid.
    pub async fn info(&self, uuid: Uuid) -> Result<Value> {
        let vm = self.running(uuid, "get info of")?;
        if !vm.brand.is_microvm() {
            return Err(ServiceError::Conflict(format!(
                "vmadm info is for microVMs (brands kvm and bhyve); VM {uuid} is a {} zone",
                vm.brand
            )));
        }
        let z = self.zones.clone();
        let reply = blocking(move || z.vmm_request(uuid, &ControlRequest::Stats {})).await?;
        let stats = reply.stats;
        Ok(serde_json::json!({
            "status": vm.state.as_str(),
            "pid": vm.pid,
            "cpus": stats.as_ref().map(|s| &s.vcpus),
            "devices": stats.as_ref().map(|s| &s.devices),
            "disk_io": stats.as_ref().and_then(|s| s.disk_io.as_ref()),
            "vhost_nets": stats.as_ref().map(|s| &s.vhost_nets),
            "exits": stats.as_ref().map(|s| &s.exits),
            "balloon": stats.as_ref().and_then(|s| s.balloon.as_ref()),
        }))
    }

    /// Where `vmadm console` and `zlogin` reach a running zone.
    /// A docker zone's logs: its process's output on the console, as zoned keeps it (the
    /// previous generation first), at most 2 MiB. Other guests keep no log: their console
    /// is `vmadm console`'s.
    pub async fn logs(&self, uuid: Uuid) -> Result<Vec<u8>> {
        let vm = self.get(uuid)?;
        if !vm.docker {
            return Err(ServiceError::Conflict(format!(
                "VM {uuid} is not a docker zone: only docker zones keep logs (see vmadm console)"
            )));
        }
        let dir = self.zones.dir(uuid);
        unblock(move || {
            let mut out = Vec::new();
            let log = dir.join(zoned::config::files::CONSOLE_LOG);
            for p in [log.with_extension("log.1"), log] {
                match std::fs::read(&p) {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(ServiceError::Storage(hull_cowstore::store::StoreError::Io(
                            hull_sys::IoError::new("read", &p, e),
                        )));
                    }
                }
            }
            Ok(out)
        })
        .await?
    }

    pub fn runtime_dir(&self, uuid: Uuid) -> Result<PathBuf> {
        self.running(uuid, "reach")?;
        Ok(self.zones.dir(uuid))
    }

    fn running(&self, uuid: Uuid, verb: &str) -> Result<Arc<Record>> {
        let vm = self.get(uuid)?;
        // A stop or reboot of a stopped guest has nothing to do (SmartOS's vmadm exits 0).
        if vm.state == VmState::Stopped && matches!(verb, "stop" | "reboot") {
            return Err(ServiceError::Already(format!(
                "VM {uuid} is already stopped; nothing to {verb}"
            )));
        }
        if !matches!(vm.state, VmState::Running | VmState::Stopping) {
            return Err(ServiceError::Conflict(format!(
                "cannot {verb} VM {uuid}: it is {}, not running",
                vm.state.as_str()
            )));
        }
        Ok(vm)
    }

    /// Starts every guest marked autoboot; returns (uuid, error) for those that failed.
    pub async fn autoboot(&self) -> Vec<(Uuid, ServiceError)> {
        let candidates: Vec<Uuid> = read(&self.records)
            .vms
            .values()
            .filter(|vm| vm.autoboot && vm.state != VmState::Running)
            .map(|vm| vm.uuid)
            .collect();
        let mut failed = Vec::new();
        for uuid in candidates {
            if let Err(e) = self.start(uuid).await {
                failed.push((uuid, e));
            }
        }
        failed
    }
}
