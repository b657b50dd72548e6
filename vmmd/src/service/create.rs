//! Creating a guest: the payload's validation with the host's checks (nic tags, free MACs
//! and IPs, installed images), the record, its storage, and its first boot. All or nothing:
//! a create that fails leaves no record and no storage.

use std::sync::Arc;

use hull_spec::api::EventKind;
use hull_spec::net::MacAddr;
use hull_spec::validate::{merge, nic_addresses, nic_mac};
use hull_spec::{Brand, ImageType, ValidationReport, Vm, VmCreate, VmState, validate_create};
use serde_json::Value;
use uuid::Uuid;

use super::{
    Record, Result, Service, ServiceError, best_effort, blocking, convert, microvm_quota,
    note_stored, now, read, write,
};

/// A zone's lofs `filesystems` must name host directories that exist: refused at create,
/// not at the first boot.
pub(super) fn check_filesystem_sources(report: &mut ValidationReport, payload: &Value) {
    let Some(list) = payload.get("filesystems").and_then(Value::as_array) else {
        return;
    };
    for (i, fs) in list.iter().enumerate() {
        let Some(source) = fs.get("source").and_then(Value::as_str) else {
            continue;
        };
        if !source.starts_with('/') {
            continue; // validation names it
        }
        if !std::fs::metadata(source).is_ok_and(|m| m.is_dir()) {
            report.bad_value(
                format!("filesystems.{i}.source"),
                format!("{source} is not a directory on this host"),
            );
        }
    }
}

impl Service {
    /// Checks a payload's NICs against the host: tags known, MACs and IPs free.
    pub(super) fn check_nics_on_host(
        &self,
        report: &mut ValidationReport,
        prefix: &str,
        nics: &[Value],
        except: Option<Uuid>,
    ) -> Result<()> {
        let tags = self.nictags()?;
        let index = read(&self.records);
        for (i, nic) in nics.iter().enumerate() {
            if let Some(tag) = nic.get("nic_tag").and_then(Value::as_str)
                && !tags.contains_key(tag)
            {
                let known = if tags.is_empty() {
                    "none are defined; add one with nictagadm add".to_string()
                } else {
                    format!(
                        "known tags: {}",
                        tags.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                report.bad_value(
                    format!("{prefix}.{i}.nic_tag"),
                    format!("nic tag {tag:?} does not exist ({known})"),
                );
            }
            if let Some(mac) = nic_mac(nic)
                && index.mac_owner(&mac, except).is_some()
            {
                report.bad_value(
                    format!("{prefix}.{i}.mac"),
                    "this MAC is used by another VM",
                );
            }
            // SmartOS's conflict check: one VRID per host (its MAC is the router's).
            if let Some(vrid) = nic
                .get("vrrp_vrid")
                .and_then(Value::as_u64)
                .and_then(|v| u8::try_from(v).ok())
                && let Some(owner) = index.mac_owner(&MacAddr::vrrp(vrid), except)
            {
                report.bad_value(
                    format!("{prefix}.{i}.vrrp_vrid"),
                    format!("VRID {vrid} is used by VM {owner} on this host"),
                );
            }
            for ip in nic_addresses(nic) {
                if let Some(owner) = index.ip_owner(&ip, except) {
                    let field = if nic.get("ips").is_some() {
                        "ips"
                    } else {
                        "ip"
                    };
                    report.bad_value(
                        format!("{prefix}.{i}.{field}"),
                        format!("{ip} is used by VM {owner}"),
                    );
                }
            }
        }
        Ok(())
    }

    pub(super) fn check_image(
        &self,
        report: &mut ValidationReport,
        property: &str,
        uuid: Uuid,
        brand: Brand,
    ) -> Result<()> {
        match self.images.get(uuid)? {
            None => report.bad_value(property, format!("image {uuid} is not installed")),
            Some(m) if !m.image_type.suits(brand) => report.bad_value(
                property,
                format!(
                    "image {uuid} is a {} image, which brand {brand} cannot use",
                    m.image_type.as_str()
                ),
            ),
            Some(_) => {}
        }
        Ok(())
    }

    /// Validates a create payload, host checks included. The index lock must be held by
    /// callers that go on to insert.
    pub fn validate_create(&self, payload: &Value) -> Result<VmCreate> {
        let (create, mut report) = match validate_create(payload) {
            Ok(c) => (Some(c), ValidationReport::default()),
            Err(r) if r.bad_brand.is_some() => return Err(ServiceError::Invalid(r)),
            Err(r) => (None, r),
        };
        // Host checks run even when the payload has other faults, so one report names all.
        if let Some(uuid) = payload
            .get("uuid")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            && read(&self.records).vms.contains_key(&uuid)
        {
            report.bad_value("uuid", format!("a VM with uuid {uuid} already exists"));
        }
        if let Some(nics) = payload.get("nics").and_then(Value::as_array) {
            self.check_nics_on_host(&mut report, "nics", nics, None)?;
        }
        check_filesystem_sources(&mut report, payload);
        if let Some(dir) = payload.get("oci_bundle").and_then(Value::as_str)
            && dir.starts_with('/')
        {
            match super::bundle::read(dir) {
                Ok(_) => {}
                Err(ServiceError::Invalid(r)) => merge(&mut report, r),
                Err(e) => return Err(e),
            }
        }
        let brand = payload
            .get("brand")
            .and_then(Value::as_str)
            .and_then(Brand::parse);
        if let Some(brand) = brand {
            if let Some(img) = payload
                .get("image_uuid")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                && !brand.is_microvm()
            {
                self.check_image(&mut report, "image_uuid", img, brand)?;
            }
            if let Some(disks) = payload.get("disks").and_then(Value::as_array) {
                for (i, d) in disks.iter().enumerate() {
                    if let Some(img) = d
                        .get("image_uuid")
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok())
                    {
                        self.check_image(
                            &mut report,
                            &format!("disks.{i}.image_uuid"),
                            img,
                            brand,
                        )?;
                        // SmartOS's image_size names the image's size: it must be this one's.
                        if let Some(given) = d.get("image_size").and_then(Value::as_u64)
                            && let Some(have) = self.images.get(img)?.and_then(|m| m.image_size)
                            && given != have
                        {
                            report.bad_value(
                                format!("disks.{i}.image_size"),
                                format!("image {img} is {have} MiB, not {given}"),
                            );
                        }
                    }
                }
            }
        }
        match create {
            Some(c) if report.is_empty() => Ok(c),
            _ => {
                let mut full = ValidationReport::default();
                merge(&mut full, report);
                Err(ServiceError::Invalid(full))
            }
        }
    }

    /// Creates a guest: all or nothing.
    pub async fn create(&self, payload: &Value) -> Result<Arc<Record>> {
        let _index = self.index_lock.lock().await;
        let create = self.validate_create(payload)?;
        let autoboot = create.autoboot.unwrap_or(true);
        let ctx = convert::Context {
            now: now(),
            data_root: self.data_root.clone(),
        };
        let vm = {
            let index = read(&self.records);
            let others = |m: &MacAddr| index.mac_owner(m, None).is_some();
            convert::new_record(create, &ctx, &mut convert::MacPool::new(&others))
                .map_err(|e| ServiceError::BadRequest(e.to_string()))?
        };
        let mut vm = vm;
        if let Some(dir) = vm.oci_bundle.clone() {
            let (config, _) = super::bundle::read(&dir)?;
            super::bundle::apply(&mut vm, payload, &config);
        }
        self.boot_from_image(&mut vm)?;
        self.docker_from_image(&mut vm)?;
        let storage = self.storage.clone();
        let planned = vm.clone();
        vm.warnings = blocking(move || storage.provision(&planned)).await?;
        if vm.brand.is_microvm() && payload.get("quota").is_some() {
            vm.warnings.push(microvm_quota());
        }
        note_stored(&mut vm);
        vm.state = VmState::Stopped;
        vm.zone_state = VmState::Stopped.zone_state();
        if let Err(e) = self.persist(&vm).await {
            let storage = self.storage.clone();
            let uuid = vm.uuid;
            best_effort(move || storage.destroy_guest(uuid)).await;
            return Err(e);
        }
        for w in &vm.warnings {
            tracing::warn!(uuid = %vm.uuid, "{w}");
        }
        let vm = Arc::new(Record::new(vm));
        write(&self.records).insert(vm.clone());
        self.emit(EventKind::Create, &vm, Vec::new());
        drop(_index);
        if autoboot {
            // SmartOS semantics: the guest exists even if its first boot fails; the error
            // says why and `vmadm start` retries.
            let uuid = vm.uuid;
            return self
                .start(uuid)
                .await
                .map_err(|e| ServiceError::CreatedNotBooted {
                    uuid,
                    error: Box::new(e),
                });
        }
        Ok(vm)
    }

    /// An lx zone from a docker image is a docker zone (SmartOS's `docker: true`): its init
    /// is the image's command, which internal_metadata's `docker:*` keys hold, filled from the
    /// image's config where the payload leaves them out (as Triton's docker API fills them).
    /// `docker: true` on another image needs those keys in the payload: a create that names
    /// no command is refused.
    pub(super) fn docker_from_image(&self, vm: &mut Vm) -> Result<()> {
        let Some(image) = vm.image_uuid.filter(|_| !vm.brand.is_microvm()) else {
            return Ok(());
        };
        let Some(m) = self.images.get(image)? else {
            return Ok(());
        };
        let config = match m.image_type {
            ImageType::Docker => m.tags.get("docker:config").cloned().unwrap_or_default(),
            // A docker zone on another image (SmartOS's tests run joyent-minimal ones):
            // internal_metadata must name its command.
            _ if vm.docker => Value::Null,
            _ => return Ok(()),
        };
        vm.docker = true;
        for (key, field) in [
            ("docker:entrypoint", "Entrypoint"),
            ("docker:cmd", "Cmd"),
            ("docker:env", "Env"),
            ("docker:workdir", "WorkingDir"),
            ("docker:user", "User"),
        ] {
            if vm.internal_metadata.contains_key(key) {
                continue;
            }
            let value = match config.get(field) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(v @ Value::Array(a)) if !a.is_empty() => v.to_string(),
                _ => continue,
            };
            vm.internal_metadata.insert(key.to_string(), value);
        }
        if let Err(e) = super::convert::zone::docker_process(vm) {
            let mut r = ValidationReport::default();
            r.bad_value("internal_metadata", e);
            return Err(ServiceError::Invalid(r));
        }
        self.docker_volumes(vm, image, &config)
    }

    /// The image's `Volumes` (Dockerfile's VOLUME) each get a volume of the zone's own, as
    /// Docker gives a container an anonymous volume per path and Triton's docker a
    /// `filesystems` entry from a new uuid; a path the payload already binds keeps that bind.
    /// The create fills each from the image (see `provision`).
    fn docker_volumes(&self, vm: &mut Vm, image: Uuid, config: &Value) -> Result<()> {
        let Some(paths) = config.get("Volumes").and_then(Value::as_object) else {
            return Ok(());
        };
        let volumes = super::convert::volumes_dir(&self.data_root, vm.uuid);
        for path in paths.keys() {
            let at = path.trim_end_matches('/');
            if vm
                .filesystems
                .iter()
                .any(|f| f.target.trim_end_matches('/') == at)
            {
                continue;
            }
            vm.filesystems.push(hull_spec::Filesystem {
                fs_type: "lofs".into(),
                source: volumes
                    .join(Uuid::new_v4().to_string())
                    .to_string_lossy()
                    .into_owned(),
                target: path.clone(),
                options: Vec::new(),
            });
        }
        // The image's paths must be ones a payload could name.
        let list = serde_json::to_value(&vm.filesystems).unwrap_or_default();
        let found = hull_spec::validate::check_filesystem_list(&list);
        if found.is_empty() {
            return Ok(());
        }
        let mut report = ValidationReport::default();
        for p in &found.details {
            report.bad_value(
                "image_uuid",
                format!(
                    "image {image} declares a volume hull cannot make: {}",
                    p.message
                ),
            );
        }
        Err(ServiceError::Invalid(report))
    }

    /// A microVM that names no kernel boots the one its boot disk's image carries (taken out
    /// of the disk at install), with the image's command line unless it gives its own.
    pub(super) fn boot_from_image(&self, vm: &mut Vm) -> Result<()> {
        if !vm.brand.is_microvm() || vm.kernel.is_some() {
            return Ok(());
        }
        let boot = vm
            .disks
            .iter()
            .find(|d| d.boot == Some(true))
            .or_else(|| vm.disks.first());
        let Some(image) = boot.and_then(|d| d.image_uuid) else {
            return Ok(());
        };
        let dir = self.storage.image_dir(image);
        let kernel = dir.join("vmlinuz");
        if !kernel.exists() {
            return Ok(());
        }
        vm.kernel = Some(kernel.to_string_lossy().into_owned());
        let initrd = dir.join("initrd.img");
        if vm.initrd.is_none() && initrd.exists() {
            vm.initrd = Some(initrd.to_string_lossy().into_owned());
        }
        if vm.cmdline.is_none() {
            vm.cmdline = self
                .images
                .get(image)?
                .and_then(|m| m.extra.get("hull").and_then(|h| h.get("cmdline")).cloned())
                .and_then(|c| c.as_str().map(str::to_string));
        }
        Ok(())
    }
}
