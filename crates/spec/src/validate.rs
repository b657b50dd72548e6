//! Validation of create and update payloads into SmartOS's report shape:
//! `{"bad_values":[..],"bad_properties":[..],"missing_properties":[..]}` (or `bad_brand`).
//!
//! A payload is untrusted JSON. It is walked property by property, so one report names
//! every offender (serde alone would stop at the first); only a payload with an empty report
//! is then deserialized into the typed [`VmCreate`] / [`VmUpdate`]. Property names follow
//! SmartOS (`nics.0.ip`, `disks.1.size`). Each finding also carries a sentence in
//! `details`, which SmartOS lacks and scripts may ignore.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::net::{Cidr, MacAddr, is_hostname, netmask_prefix, parse_ip};
use crate::vm::{Brand, NicSpec, VmCreate, VmUpdate};

/// One finding: which property, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    /// SmartOS-style property path (`nics.0.ip`).
    pub property: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

/// SmartOS's validation report, plus hull's `details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ValidationReport {
    /// Set (alone) when the brand is not one hull knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_brand: Option<String>,
    /// Properties whose value is wrong.
    #[serde(default)]
    pub bad_values: Vec<String>,
    /// Properties that are unknown, unsupported or not allowed here.
    #[serde(default)]
    pub bad_properties: Vec<String>,
    /// Required properties that are absent.
    #[serde(default)]
    pub missing_properties: Vec<String>,
    /// A sentence per finding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Problem>,
}

impl ValidationReport {
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.bad_brand.is_none()
            && self.bad_values.is_empty()
            && self.bad_properties.is_empty()
            && self.missing_properties.is_empty()
    }

    /// Records a property whose value is wrong.
    pub fn bad_value(&mut self, property: impl Into<String>, message: impl Into<String>) {
        push(
            &mut self.bad_values,
            &mut self.details,
            property.into(),
            message.into(),
        );
    }

    /// Records a property that may not appear.
    pub fn bad_property(&mut self, property: impl Into<String>, message: impl Into<String>) {
        push(
            &mut self.bad_properties,
            &mut self.details,
            property.into(),
            message.into(),
        );
    }

    /// Records a required property that is absent.
    pub fn missing(&mut self, property: impl Into<String>, message: impl Into<String>) {
        push(
            &mut self.missing_properties,
            &mut self.details,
            property.into(),
            message.into(),
        );
    }

    /// One line naming every offender, for error messages.
    pub fn summary(&self) -> String {
        if let Some(b) = &self.bad_brand {
            return format!("unknown brand {b:?}");
        }
        self.details
            .iter()
            .map(|p| format!("{}: {}", p.property, p.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

fn push(list: &mut Vec<String>, details: &mut Vec<Problem>, property: String, message: String) {
    if !list.contains(&property) {
        list.push(property.clone());
    }
    details.push(Problem { property, message });
}

/// Which guests a property applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    Zones,
    MicroVms,
}

impl Scope {
    fn allows(self, brand: Option<Brand>) -> bool {
        match (self, brand) {
            (Scope::All, _) | (_, None) => true,
            (Scope::Zones, Some(b)) => !b.is_microvm(),
            (Scope::MicroVms, Some(b)) => b.is_microvm(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scope::All => "all brands",
            Scope::Zones => "zones (joyent, joyent-minimal, lx)",
            Scope::MicroVms => "microVMs (kvm, bhyve)",
        }
    }
}

type Check = fn(&mut ValidationReport, &str, &Value);

/// What a property's value is: a whole number in a range, a boolean (both of which SmartOS
/// also takes spelled as strings, see [`coerce`]), or anything else with its own check.
#[derive(Clone, Copy)]
enum Kind {
    Int(u64, u64),
    /// A power of two in a range (ZFS record and block sizes).
    Pow2(u64, u64),
    Bool,
    Other(Check),
}

impl Kind {
    fn check(self, r: &mut ValidationReport, p: &str, v: &Value) {
        match self {
            Kind::Int(min, max) => check_int(r, p, v, min, max),
            Kind::Pow2(min, max) => {
                check_int(r, p, v, min, max);
                if v.as_u64().is_some_and(|n| !n.is_power_of_two()) {
                    r.bad_value(p, format!("{p} must be a power of two"));
                }
            }
            Kind::Bool => check_bool(r, p, v),
            Kind::Other(check) => check(r, p, v),
        }
    }

    /// SmartOS's loose spellings: a whole number as a decimal string (`"512"`), a boolean as
    /// `"true"`/`"false"`, `"1"`/`"0"` or 1/0. Anything else is left for the check to refuse.
    fn coerce(self, v: &mut Value) {
        let new = match (self, &*v) {
            (Kind::Int(..) | Kind::Pow2(..), Value::String(s))
                if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.parse::<u64>().ok().map(Value::from)
            }
            (Kind::Bool, Value::String(s)) => match s.as_str() {
                "true" | "1" => Some(Value::Bool(true)),
                "false" | "0" => Some(Value::Bool(false)),
                _ => None,
            },
            (Kind::Bool, Value::Number(n)) => match n.as_u64() {
                Some(1) => Some(Value::Bool(true)),
                Some(0) => Some(Value::Bool(false)),
                _ => None,
            },
            _ => None,
        };
        if let Some(new) = new {
            *v = new;
        }
    }
}

/// A top-level property: its name, the guests it applies to, its kind, and whether
/// `vmadm update` may change it.
struct Prop {
    name: &'static str,
    scope: Scope,
    kind: Kind,
    updatable: bool,
}

const fn prop(name: &'static str, scope: Scope, kind: Kind, updatable: bool) -> Prop {
    Prop {
        name,
        scope,
        kind,
        updatable,
    }
}

const MIB_MAX: u64 = 1 << 20; // 1 TiB in MiB
/// The most System V IPC ids of one kind a zone may be given (the kernel's IPCMNI is 32768,
/// 16 Mi with ipcmni_extend).
const IPC_IDS_MAX: u64 = 1 << 24;
const PROPS: &[Prop] = &[
    prop("uuid", Scope::All, Kind::Other(check_uuid), false),
    prop("alias", Scope::All, Kind::Other(check_alias), true),
    prop("brand", Scope::All, Kind::Other(check_nothing), false),
    prop("hostname", Scope::All, Kind::Other(check_hostname), true),
    prop("autoboot", Scope::All, Kind::Bool, true),
    prop("indestructible_zoneroot", Scope::All, Kind::Bool, true),
    prop("delegate_dataset", Scope::Zones, Kind::Bool, false),
    prop("indestructible_delegated", Scope::Zones, Kind::Bool, true),
    prop(
        "filesystems",
        Scope::Zones,
        Kind::Other(check_filesystems),
        false,
    ),
    // A /tmp tmpfs of this many MiB in the zone (0: none).
    prop("tmpfs", Scope::Zones, Kind::Int(0, MIB_MAX), true),
    prop("do_not_inventory", Scope::All, Kind::Bool, true),
    // Create only: hull's create never waits for in-guest provisioning.
    prop("nowait", Scope::All, Kind::Bool, false),
    prop("archive_on_delete", Scope::All, Kind::Bool, true),
    prop("maintain_resolvers", Scope::All, Kind::Bool, true),
    // A docker zone runs its image's command (internal_metadata docker:*) as its init.
    prop("docker", Scope::Zones, Kind::Bool, false),
    // hull: an OCI runtime bundle (its config.json and root) in place of an image.
    prop(
        "oci_bundle",
        Scope::Zones,
        Kind::Other(check_abs_path),
        false,
    ),
    prop("max_locked_memory", Scope::All, Kind::Int(0, MIB_MAX), true),
    prop("max_shm_memory", Scope::All, Kind::Int(0, MIB_MAX), true),
    prop("max_shm_ids", Scope::All, Kind::Int(0, IPC_IDS_MAX), true),
    prop("max_msg_ids", Scope::All, Kind::Int(0, IPC_IDS_MAX), true),
    prop("max_sem_ids", Scope::All, Kind::Int(0, IPC_IDS_MAX), true),
    prop(
        "disk_driver",
        Scope::MicroVms,
        Kind::Other(check_model),
        true,
    ),
    prop(
        "cpu_type",
        Scope::MicroVms,
        Kind::Other(check_cpu_type),
        true,
    ),
    prop(
        "nic_driver",
        Scope::MicroVms,
        Kind::Other(check_model),
        true,
    ),
    prop(
        "flexible_disk_size",
        Scope::All,
        Kind::Int(0, 16 * MIB_MAX),
        true,
    ),
    prop(
        "fs_allowed",
        Scope::Zones,
        Kind::Other(check_fs_allowed),
        true,
    ),
    prop(
        "zfs_root_recsize",
        Scope::All,
        Kind::Pow2(512, 1 << 20),
        true,
    ),
    prop(
        "zfs_data_recsize",
        Scope::Zones,
        Kind::Pow2(512, 1 << 20),
        true,
    ),
    prop(
        "zfs_root_compression",
        Scope::All,
        Kind::Other(check_compression),
        true,
    ),
    prop(
        "zfs_data_compression",
        Scope::Zones,
        Kind::Other(check_compression),
        true,
    ),
    prop("zpool", Scope::All, Kind::Other(check_zpool), false),
    prop(
        "zfs_filesystem_limit",
        Scope::Zones,
        Kind::Int(0, u32::MAX as u64),
        true,
    ),
    prop(
        "zfs_snapshot_limit",
        Scope::All,
        Kind::Int(0, u32::MAX as u64),
        true,
    ),
    prop(
        "virtio_txburst",
        Scope::MicroVms,
        Kind::Int(1, 1 << 20),
        true,
    ),
    prop(
        "virtio_txtimer",
        Scope::MicroVms,
        Kind::Int(1, u32::MAX as u64),
        true,
    ),
    prop("image_uuid", Scope::Zones, Kind::Other(check_uuid), false),
    prop(
        "max_physical_memory",
        Scope::All,
        Kind::Int(16, MIB_MAX),
        true,
    ),
    // SmartOS's minimum (proptable.js: min 256), the default's floor too (defaults::MIN_SWAP).
    prop("max_swap", Scope::All, Kind::Int(256, MIB_MAX), true),
    prop("ram", Scope::All, Kind::Int(16, MIB_MAX), true),
    prop("vcpus", Scope::MicroVms, Kind::Int(1, 64), true),
    prop("cpu_cap", Scope::All, Kind::Int(0, 6400), true),
    prop("cpu_shares", Scope::All, Kind::Int(1, 65535), true),
    prop("max_lwps", Scope::All, Kind::Int(1, 4_194_304), true),
    prop("quota", Scope::All, Kind::Int(0, 1 << 20), true),
    prop("zfs_io_priority", Scope::All, Kind::Int(1, 1000), true),
    prop("resolvers", Scope::All, Kind::Other(check_resolvers), true),
    prop("dns_domain", Scope::All, Kind::Other(check_hostname), true),
    prop("routes", Scope::All, Kind::Other(check_routes), false),
    prop(
        "customer_metadata",
        Scope::All,
        Kind::Other(check_metadata),
        false,
    ),
    prop(
        "internal_metadata",
        Scope::All,
        Kind::Other(check_metadata),
        false,
    ),
    prop(
        "internal_metadata_namespaces",
        Scope::All,
        Kind::Other(check_namespaces),
        true,
    ),
    prop("tags", Scope::All, Kind::Other(check_tags), false),
    prop("nics", Scope::All, Kind::Other(check_nics), false),
    prop("disks", Scope::MicroVms, Kind::Other(check_disks), false),
    prop("kernel", Scope::MicroVms, Kind::Other(check_abs_path), true),
    prop("initrd", Scope::MicroVms, Kind::Other(check_abs_path), true),
    prop("cmdline", Scope::MicroVms, Kind::Other(check_cmdline), true),
    prop("init_name", Scope::Zones, Kind::Other(check_abs_path), true),
    // lx only (checked with the brand below); SmartOS requires it for lx, hull does not.
    prop(
        "kernel_version",
        Scope::Zones,
        Kind::Other(check_kernel_version),
        true,
    ),
    prop("owner_uuid", Scope::All, Kind::Other(check_uuid), true),
    prop("billing_id", Scope::All, Kind::Other(check_uuid), true),
    prop(
        "package_name",
        Scope::All,
        Kind::Other(check_short_string),
        true,
    ),
    prop(
        "package_version",
        Scope::All,
        Kind::Other(check_short_string),
        true,
    ),
];

/// Update-only verbs.
const UPDATE_VERBS: &[Prop] = &[
    prop("set_tags", Scope::All, Kind::Other(check_tags), true),
    prop("remove_tags", Scope::All, Kind::Other(check_key_list), true),
    prop(
        "set_customer_metadata",
        Scope::All,
        Kind::Other(check_metadata),
        true,
    ),
    prop(
        "remove_customer_metadata",
        Scope::All,
        Kind::Other(check_key_list),
        true,
    ),
    prop(
        "set_internal_metadata",
        Scope::All,
        Kind::Other(check_metadata),
        true,
    ),
    prop(
        "remove_internal_metadata",
        Scope::All,
        Kind::Other(check_key_list),
        true,
    ),
    prop("set_routes", Scope::All, Kind::Other(check_routes), true),
    prop(
        "remove_routes",
        Scope::All,
        Kind::Other(check_key_list),
        true,
    ),
    prop("add_nics", Scope::All, Kind::Other(check_nics), true),
    prop(
        "update_nics",
        Scope::All,
        Kind::Other(check_update_nics),
        true,
    ),
    prop("remove_nics", Scope::All, Kind::Other(check_mac_list), true),
    prop("add_disks", Scope::MicroVms, Kind::Other(check_disks), true),
    prop(
        "update_disks",
        Scope::MicroVms,
        Kind::Other(check_update_disks),
        true,
    ),
    prop(
        "remove_disks",
        Scope::MicroVms,
        Kind::Other(check_path_list),
        true,
    ),
];

/// SmartOS properties hull knows of but cannot honour: named in the error, never dropped.
const UNSUPPORTED: &[&str] = &[
    "add_filesystems",
    "add_pci_devices",
    "bhyve_extra_opts",
    "boot",
    "bootrom",
    "com1",
    "com2",
    "create_only",
    "dataset_uuid",
    "datasets",
    "default_gateway",
    "firewall_enabled",
    "hvm",
    "limit_priv",
    "mdata_exec_timeout",
    "pci_devices",
    "qemu_extra_opts",
    "qemu_opts",
    "remove_filesystems",
    "remove_pci_devices",
    "restart_init",
    "spice_opts",
    "spice_password",
    "spice_port",
    "transition",
    "update_filesystems",
    "update_pci_devices",
    "v",
    "vga",
    "vnc_password",
    "vnc_port",
    "zfs_filesystem",
    "zfs_storage_pool_name",
    "zlog_max_size",
    "zlog_mode",
    "zone_dataset_uuid",
];

/// Properties of a record that hull sets; a payload may not.
const READ_ONLY: &[&str] = &[
    "allowed_address",
    "app_svc_dependent",
    "boot_timestamp",
    "create_timestamp",
    "datacenter_name",
    "debug_id",
    "exit_status",
    "exit_timestamp",
    "failed",
    "failure",
    "free_space",
    "headnode_id",
    "init_restarts",
    "ip_type",
    "last_modified",
    "missing",
    "paused",
    "pid",
    "platform_buildstamp",
    "provisioning",
    "server_uuid",
    "snapshots",
    "state",
    "transition_expire",
    "transition_to",
    "type",
    "vm_autoboot",
    "warnings",
    "zlog_name",
    "zone_state",
    "zonename",
    "zonepath",
];

fn unknown_property(report: &mut ValidationReport, path: &str, name: &str) {
    if UNSUPPORTED.contains(&name) {
        report.bad_property(
            path,
            format!("SmartOS property {name} is not supported by hull"),
        );
    } else if READ_ONLY.contains(&name) {
        report.bad_property(path, format!("{name} is set by hull and cannot be given"));
    } else {
        report.bad_property(path, format!("unknown property {name}"));
    }
}

/// SmartOS's type coercions, made on a payload before it is checked, so that what SmartOS's
/// vmadm takes hull's does too: whole numbers and booleans spelled as strings (`"ram":
/// "512"`, `"autoboot": "true"`, a NIC's `"primary": "1"`, `"mtu": "1500"`) at the top level
/// and in NICs and disks (`Kind::coerce` says which spellings), `"alias": null` as no alias,
/// and metadata values that are numbers or booleans kept as their strings (`"port": 8080`
/// is `"8080"`). Other values are left as they are for the checks to name.
pub fn coerce(payload: &Value) -> Value {
    let mut out = payload.clone();
    let Some(obj) = out.as_object_mut() else {
        return out;
    };
    if obj.get("alias") == Some(&Value::Null) {
        obj.remove("alias");
    }
    // SmartOS takes fs_allowed as a list or a comma-separated string and keeps the string
    // (a list whose items hold commas is refused, as SmartOS refuses it).
    if let Some(Value::Array(list)) = obj.get("fs_allowed")
        && let Some(names) = list.iter().map(Value::as_str).collect::<Option<Vec<_>>>()
        && !names.iter().any(|n| n.contains(','))
    {
        let joined = Value::String(names.join(","));
        obj.insert("fs_allowed".into(), joined);
    }
    let in_objects = |v: &mut Value, table: &[(&str, Kind)]| {
        for item in v.as_array_mut().into_iter().flatten() {
            for (k, val) in item.as_object_mut().into_iter().flatten() {
                if let Some((_, kind)) = table.iter().find(|(n, _)| n == k) {
                    kind.coerce(val);
                }
            }
        }
    };
    for (name, v) in obj.iter_mut() {
        if let Some(p) = PROPS.iter().chain(UPDATE_VERBS).find(|p| p.name == name) {
            p.kind.coerce(v);
        }
        match name.as_str() {
            "nics" | "add_nics" | "update_nics" => in_objects(v, NIC_PROPS),
            "disks" | "add_disks" | "update_disks" => in_objects(v, DISK_PROPS),
            "customer_metadata"
            | "internal_metadata"
            | "set_customer_metadata"
            | "set_internal_metadata" => {
                for val in v.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                    if val.is_number() || val.is_boolean() {
                        *val = Value::String(val.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Validates a `vmadm create` payload (after SmartOS's coercions, see [`coerce`]; a payload
/// without a brand is a joyent zone's, as in SmartOS). On success the typed payload is
/// returned; otherwise a report naming every offending property.
pub fn validate_create(payload: &Value) -> Result<VmCreate, ValidationReport> {
    let mut report = ValidationReport::default();
    let mut payload = coerce(payload);
    let Some(obj) = payload.as_object_mut() else {
        report.bad_value("payload", "the payload must be a JSON object");
        return Err(report);
    };
    obj.entry("brand")
        .or_insert_with(|| Value::String(Brand::Joyent.to_string()));
    resolve_mac_routes(obj);
    let obj = &*obj;
    let brand = match obj.get("brand") {
        None => None,
        Some(Value::String(s)) => match Brand::parse(s) {
            Some(b) => Some(b),
            None => {
                return Err(ValidationReport {
                    bad_brand: Some(s.clone()),
                    details: vec![Problem {
                        property: "brand".into(),
                        message: format!(
                            "unknown brand {s:?}; hull knows joyent, joyent-minimal, lx, kvm and bhyve"
                        ),
                    }],
                    ..ValidationReport::default()
                });
            }
        },
        Some(_) => {
            report.bad_value("brand", "brand must be a string");
            None
        }
    };
    for (name, value) in obj {
        match PROPS.iter().find(|p| p.name == name) {
            None if UPDATE_VERBS.iter().any(|p| p.name == name) => report.bad_property(
                name,
                format!("{name} changes an existing VM: it is for vmadm update, not create"),
            ),
            None => unknown_property(&mut report, name, name),
            Some(p) if !p.scope.allows(brand) => {
                let hint = if name == "image_uuid" {
                    "; microVMs name their image in disks.N.image_uuid"
                } else {
                    ""
                };
                report.bad_property(
                    name,
                    format!("{name} applies only to {}{hint}", p.scope.describe()),
                );
            }
            Some(p) => p.kind.check(&mut report, name, value),
        }
    }
    if let Some(b) = brand
        && b != Brand::Lx
        && !b.is_microvm()
        && obj.contains_key("kernel_version")
    {
        report.bad_property("kernel_version", "kernel_version applies only to brand lx");
    }
    if let Some(b) = brand {
        let bundle = obj.contains_key("oci_bundle");
        if !b.is_microvm() && !obj.contains_key("image_uuid") && !bundle {
            report.missing(
                "image_uuid",
                format!("image_uuid is required for brand {b} (or oci_bundle)"),
            );
        }
        if bundle && obj.contains_key("image_uuid") {
            report.bad_property(
                "image_uuid",
                "image_uuid and oci_bundle both name the zone's root: give one",
            );
        }
        check_memory_consistency(&mut report, b, obj);
    }
    if let Some(Value::Array(nics)) = obj.get("nics") {
        check_nic_set(&mut report, "nics", nics);
        if obj.get("autoboot") != Some(&Value::Bool(false)) {
            check_startable_macs(
                &mut report,
                "nics",
                nics,
                " (SmartOS creates such a VM only with autoboot false, and cannot boot it either)",
            );
        }
        if let Some(b) = brand {
            check_interface_names(&mut report, b, nics);
        }
    }
    if let Some(Value::Array(disks)) = obj.get("disks") {
        check_boot_disks(&mut report, "disks", disks);
        check_flexible_disk_size(&mut report, obj, disks);
    }
    if let Some(Value::Object(routes)) = obj.get("routes") {
        let none = Vec::new();
        let nics = obj.get("nics").and_then(Value::as_array).unwrap_or(&none);
        check_route_targets(&mut report, "routes", routes, nics);
    }
    if !report.is_empty() {
        return Err(report);
    }
    let create: VmCreate = serde_json::from_value(payload).map_err(|e| {
        let mut r = ValidationReport::default();
        r.bad_value(
            "payload",
            format!("the payload does not match the VM schema: {e}"),
        );
        r
    })?;
    check_vrrp_nics(
        &mut report,
        "nics",
        create.nics.as_deref().unwrap_or_default(),
    );
    match report.is_empty() {
        true => Ok(create),
        false => Err(report),
    }
}

/// Validates a `vmadm update` payload for a guest of `brand`. Checks that need the current
/// record (does this MAC exist?) belong to the caller.
pub fn validate_update(payload: &Value, brand: Brand) -> Result<VmUpdate, ValidationReport> {
    let mut report = ValidationReport::default();
    let payload = coerce(payload);
    let Some(obj) = payload.as_object() else {
        report.bad_value("payload", "the payload must be a JSON object");
        return Err(report);
    };
    if obj.is_empty() {
        report.bad_value("payload", "the update payload changes nothing");
    }
    for (name, value) in obj {
        let found = PROPS.iter().chain(UPDATE_VERBS).find(|p| p.name == name);
        match found {
            None => unknown_property(&mut report, name, name),
            Some(p) if !p.updatable => {
                let hint = match name.as_str() {
                    "tags" | "customer_metadata" | "internal_metadata" | "routes" => {
                        format!("; use set_{name} and remove_{name}")
                    }
                    "nics" | "disks" => {
                        format!("; use add_{name}, update_{name} and remove_{name}")
                    }
                    _ => String::new(),
                };
                report.bad_property(name, format!("{name} cannot be changed by update{hint}"));
            }
            Some(p) if !p.scope.allows(Some(brand)) => {
                report.bad_property(
                    name,
                    format!("{name} applies only to {}", p.scope.describe()),
                );
            }
            Some(p) => p.kind.check(&mut report, name, value),
        }
    }
    if let Some(Value::Array(nics)) = obj.get("add_nics") {
        check_nic_set(&mut report, "add_nics", nics);
        check_startable_macs(&mut report, "add_nics", nics, "");
    }
    if brand != Brand::Lx && !brand.is_microvm() && obj.contains_key("kernel_version") {
        report.bad_property("kernel_version", "kernel_version applies only to brand lx");
    }
    if !report.is_empty() {
        return Err(report);
    }
    serde_json::from_value(payload).map_err(|e| {
        let mut r = ValidationReport::default();
        r.bad_value(
            "payload",
            format!("the payload does not match the update schema: {e}"),
        );
        r
    })
}

fn check_nothing(_: &mut ValidationReport, _: &str, _: &Value) {}

fn check_uuid(r: &mut ValidationReport, p: &str, v: &Value) {
    let ok = v.as_str().is_some_and(is_uuid);
    if !ok {
        r.bad_value(
            p,
            format!("{p} must be a UUID like 6a4f5e3c-1d2b-4c8a-9e7f-0a1b2c3d4e5f"),
        );
    }
}

/// True for the canonical lower-case hyphenated UUID form SmartOS uses.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// Checks a snapshot's name as SmartOS does (at most 64 characters of `[A-Za-z0-9-_.:%]`),
/// so that a name the storage backend cannot hold (a `/`, a space) is a 400 that names the
/// property instead of a failure deep in the backend.
pub fn validate_snapshot_name(name: &str) -> Result<(), ValidationReport> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:%".contains(&c));
    if ok {
        return Ok(());
    }
    let mut r = ValidationReport::default();
    r.bad_value(
        "name",
        format!("snapshot name {name:?} must be 1 to 64 characters of [A-Za-z0-9-_.:%]"),
    );
    Err(r)
}

fn check_alias(r: &mut ValidationReport, p: &str, v: &Value) {
    match v.as_str() {
        Some(s) if !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control) => {}
        _ => r.bad_value(p, format!("{p} must be 1 to 256 printable characters")),
    }
}

/// A Linux version as SmartOS's lx takes it: dot-separated numbers (`4.3.0`, `5.10`).
fn check_kernel_version(r: &mut ValidationReport, p: &str, v: &Value) {
    let ok = v.as_str().is_some_and(|s| {
        s.len() <= 32
            && s.split('.').count() >= 2
            && s.split('.')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if !ok {
        r.bad_value(p, format!("{p} must be a Linux version such as 4.3.0"));
    }
}

/// The lofs options hull takes (SmartOS's spellings); every bind is nosuid and nodev anyway.
const FILESYSTEM_OPTIONS: &[&str] = &["ro", "rw", "nodevice", "nodevices", "nosetuid", "nosuid"];

/// Places in a zone a host directory may not cover: what the zone's runtime mounts itself.
const FILESYSTEM_RESERVED: &[&str] = &["/proc", "/sys", "/dev", "/native"];

/// What validation finds in a `filesystems` list (at `filesystems`), for lists a create
/// builds itself (a docker image's volumes): empty when a payload could name it.
pub fn check_filesystem_list(list: &Value) -> ValidationReport {
    let mut r = ValidationReport::default();
    check_filesystems(&mut r, "filesystems", list);
    r
}

/// SmartOS's `filesystems`: host directories bound into a zone (`type: "lofs"`, `source` on
/// the host, `target` in the zone, `options` such as `ro`), or the zone's own volumes
/// (`source` a uuid: SmartOS makes zones/<uuid>/volumes/<source> at create, as Triton's
/// docker volumes are).
fn check_filesystems(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        r.bad_value(p, format!("{p} must be a list of filesystem objects"));
        return;
    };
    let mut targets: Vec<&str> = Vec::new();
    let mut volumes: Vec<&str> = Vec::new();
    for (i, fs) in list.iter().enumerate() {
        let path = format!("{p}.{i}");
        let Some(obj) = fs.as_object() else {
            r.bad_value(&path, format!("{path} must be an object"));
            continue;
        };
        for k in obj.keys() {
            if k == "raw" {
                r.bad_property(
                    format!("{path}.raw"),
                    "SmartOS filesystem property raw (zonecfg's raw mount options) is not supported by hull",
                );
            } else if !["type", "source", "target", "options"].contains(&k.as_str()) {
                r.bad_property(
                    format!("{path}.{k}"),
                    format!("unknown filesystem property {k}; hull takes type, source, target and options"),
                );
            }
        }
        let volume = obj
            .get("source")
            .and_then(Value::as_str)
            .filter(|s| is_uuid(s));
        match obj.get("type").and_then(Value::as_str) {
            Some("lofs") => {}
            // SmartOS's newer spelling of a volume (a ZFS dataset there).
            Some("zfs") if volume.is_some() => {}
            Some(t) => r.bad_value(
                format!("{path}.type"),
                format!(
                    "{path}.type {t:?} is not supported: hull binds host directories and the \
                     zone's volumes (lofs; zfs for a volume) only"
                ),
            ),
            None => r.missing(
                format!("{path}.type"),
                format!("{path} needs type \"lofs\""),
            ),
        }
        match (obj.get("source"), volume) {
            (Some(_), Some(v)) => {
                if volumes.contains(&v) {
                    r.bad_value(
                        format!("{path}.source"),
                        format!("{path}.source: two filesystems name the volume {v}"),
                    );
                }
                volumes.push(v);
            }
            (Some(s), None) => check_abs_path(r, &format!("{path}.source"), s),
            (None, _) => r.missing(
                format!("{path}.source"),
                format!("{path} needs a source (a host directory, or a uuid naming a volume)"),
            ),
        }
        match obj.get("target") {
            Some(t) => {
                let tp = format!("{path}.target");
                check_abs_path(r, &tp, t);
                if let Some(t) = t.as_str() {
                    let t = t.trim_end_matches('/');
                    if t.is_empty() || t.split('/').skip(1).any(|c| c.is_empty() || c == ".") {
                        r.bad_value(
                            &tp,
                            format!("{tp} must name a directory below / in plain names"),
                        );
                    } else if let Some(res) = FILESYSTEM_RESERVED
                        .iter()
                        .find(|res| t == **res || t.starts_with(&format!("{res}/")))
                    {
                        r.bad_value(
                            &tp,
                            format!("{tp} {t} lies in {res}, which the zone's runtime mounts"),
                        );
                    } else if targets.contains(&t) {
                        r.bad_value(&tp, format!("{tp}: two filesystems target {t}"));
                    } else {
                        targets.push(t);
                    }
                }
            }
            None => r.missing(
                format!("{path}.target"),
                format!("{path} needs a target (a directory in the zone)"),
            ),
        }
        if let Some(opts) = obj.get("options") {
            let op = format!("{path}.options");
            match opts.as_array() {
                Some(list) => {
                    let names: Vec<_> = list.iter().filter_map(Value::as_str).collect();
                    if names.len() != list.len() {
                        r.bad_value(&op, format!("{op} must be a list of strings"));
                    }
                    for n in &names {
                        if !FILESYSTEM_OPTIONS.contains(n) {
                            r.bad_value(
                                &op,
                                format!(
                                    "{op}: option {n:?} is not supported; hull takes {}",
                                    FILESYSTEM_OPTIONS.join(", ")
                                ),
                            );
                        }
                    }
                    if names.contains(&"ro") && names.contains(&"rw") {
                        r.bad_value(&op, format!("{op} says both ro and rw"));
                    }
                }
                None => r.bad_value(&op, format!("{op} must be a list of strings")),
            }
        }
    }
}

/// SmartOS's `fs_allowed`: file system type names, comma-separated (a list is joined by
/// [`coerce`]).
fn check_fs_allowed(r: &mut ValidationReport, p: &str, v: &Value) {
    let ok = v.as_str().is_some_and(|s| {
        s.len() <= 1024
            && s.split(',').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
    });
    if !ok {
        r.bad_value(
            p,
            format!("{p} must be file system type names separated by commas (\"ufs,pcfs\")"),
        );
    }
}

/// A ZFS compression setting, as SmartOS takes it.
fn check_compression(r: &mut ValidationReport, p: &str, v: &Value) {
    let ok = v.as_str().is_some_and(|s| {
        matches!(s, "on" | "off" | "lzjb" | "zle" | "lz4" | "gzip" | "zstd")
            || s.strip_prefix("gzip-")
                .is_some_and(|n| matches!(n, "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9"))
    });
    if !ok {
        r.bad_value(
            p,
            format!("{p} must be a ZFS compression setting (on, off, lzjb, zle, lz4, gzip, gzip-1..9, zstd)"),
        );
    }
}

/// SmartOS's kvm `cpu_type`: "host" is what hull's VMM gives a guest (the host's CPU, its
/// CPUID filtered); QEMU's "qemu64" baseline model is not one hull emulates.
fn check_cpu_type(r: &mut ValidationReport, p: &str, v: &Value) {
    match v.as_str() {
        Some("host") => {}
        Some("qemu64") => r.bad_property(
            p,
            "cpu_type \"qemu64\" is not supported by hull: its VMM gives guests the host's CPU \
             (CPUID filtered), not QEMU's baseline model",
        ),
        _ => r.bad_value(p, format!("{p} must be \"host\" or \"qemu64\"")),
    }
}

/// SmartOS's pool: hull has one, its data root, which payloads call "zones" (SmartOS's
/// default pool).
fn check_zpool(r: &mut ValidationReport, p: &str, v: &Value) {
    match v.as_str() {
        Some("zones") => {}
        Some(other) => r.bad_property(
            p,
            format!(
                "zpool {other:?} is not supported by hull: its one pool is its data root, \
                 which payloads name \"zones\""
            ),
        ),
        None => r.bad_value(p, format!("{p} must be a pool name")),
    }
}

fn check_short_string(r: &mut ValidationReport, p: &str, v: &Value) {
    match v.as_str() {
        Some(s) if s.len() <= 256 && !s.chars().any(char::is_control) => {}
        _ => r.bad_value(
            p,
            format!("{p} must be a string of at most 256 printable characters"),
        ),
    }
}

fn check_hostname(r: &mut ValidationReport, p: &str, v: &Value) {
    if !v.as_str().is_some_and(is_hostname) {
        r.bad_value(
            p,
            format!("{p} must be a host name (letters, digits, inner hyphens, dot-separated)"),
        );
    }
}

fn check_bool(r: &mut ValidationReport, p: &str, v: &Value) {
    if !v.is_boolean() {
        r.bad_value(p, format!("{p} must be true or false"));
    }
}

fn check_int(r: &mut ValidationReport, p: &str, v: &Value, min: u64, max: u64) {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => {}
        Some(n) => r.bad_value(p, format!("{p} must be from {min} to {max}, not {n}")),
        None => r.bad_value(p, format!("{p} must be a whole number from {min} to {max}")),
    }
}

fn check_abs_path(r: &mut ValidationReport, p: &str, v: &Value) {
    match v.as_str() {
        Some(s)
            if s.starts_with('/')
                && s.len() < 4096
                && !s.contains('\0')
                && !s.split('/').any(|c| c == "..") => {}
        _ => r.bad_value(p, format!("{p} must be an absolute path without '..'")),
    }
}

fn check_cmdline(r: &mut ValidationReport, p: &str, v: &Value) {
    match v.as_str() {
        Some(s) if s.len() < 2048 && !s.chars().any(char::is_control) => {}
        _ => r.bad_value(p, format!("{p} must be at most 2047 printable characters")),
    }
}

fn check_resolvers(r: &mut ValidationReport, p: &str, v: &Value) {
    match v.as_array() {
        Some(list) if list.len() <= 16 => {
            for (i, item) in list.iter().enumerate() {
                if item.as_str().and_then(parse_ip).is_none() {
                    r.bad_value(format!("{p}.{i}"), format!("{p}.{i} must be an IP address"));
                }
            }
        }
        _ => r.bad_value(p, format!("{p} must be a list of at most 16 IP addresses")),
    }
}

fn is_route_target(s: &str) -> bool {
    parse_ip(s).is_some() || nic_route_index(s).is_some()
}

/// The NIC index of a route gateway written `nics[N]`.
pub fn nic_route_index(s: &str) -> Option<usize> {
    let inner = s.strip_prefix("nics[")?.strip_suffix(']')?;
    if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    inner.parse().ok()
}

fn check_routes(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(map) = v.as_object() else {
        r.bad_value(
            p,
            format!("{p} must be an object of destination -> gateway"),
        );
        return;
    };
    for (dest, gw) in map {
        let dest_ip = parse_ip(dest).or_else(|| Cidr::parse(dest).map(|c| c.addr));
        let gw_ok = gw.as_str().is_some_and(is_route_target);
        if dest_ip.is_none() || !gw_ok {
            r.bad_value(
                format!("{p}.{dest}"),
                format!(
                    "route {dest:?} needs an IP or CIDR destination and an IP or nics[N] gateway"
                ),
            );
        } else if let (Some(d), Some(g)) = (dest_ip, gw.as_str().and_then(parse_ip))
            && d.is_ipv4() != g.is_ipv4()
        {
            r.bad_value(
                format!("{p}.{dest}"),
                format!("route {dest:?} and its gateway {g} are of different IP families"),
            );
        }
    }
}

fn check_route_targets(
    r: &mut ValidationReport,
    p: &str,
    routes: &Map<String, Value>,
    nics: &[Value],
) {
    for (dest, gw) in routes {
        let Some(i) = gw.as_str().and_then(nic_route_index) else {
            continue;
        };
        match nics.get(i) {
            None => r.bad_value(
                format!("{p}.{dest}"),
                format!("route {dest:?} names nics[{i}], but the payload has {} NICs", nics.len()),
            ),
            // As SmartOS: a route through a NIC that leases its address is refused.
            Some(nic) if leases_its_address(nic) => r.bad_value(
                format!("{p}.{dest}"),
                format!("route {dest:?} goes through nics[{i}], which has no static address (dhcp or addrconf)"),
            ),
            Some(_) => {}
        }
    }
}

/// Whether a NIC object takes its addresses from DHCP or SLAAC only.
fn leases_its_address(nic: &Value) -> bool {
    let leased = |s: &str| s == "dhcp" || s == "addrconf";
    match (
        nic.get("ip").and_then(Value::as_str),
        nic.get("ips").and_then(Value::as_array),
    ) {
        (Some(ip), _) => leased(ip),
        (None, Some(ips)) => !ips.is_empty() && ips.iter().all(|i| i.as_str().is_some_and(leased)),
        (None, None) => false,
    }
}

/// SmartOS's `macs[MAC]` route gateway, for the NIC with that MAC: rewritten as hull's
/// `nics[N]` where a NIC of the payload has it (left as it is, for the check to name,
/// otherwise).
fn resolve_mac_routes(obj: &mut Map<String, Value>) {
    let macs: Vec<Option<MacAddr>> = obj
        .get("nics")
        .and_then(Value::as_array)
        .map(|l| l.iter().map(nic_mac).collect())
        .unwrap_or_default();
    let Some(Value::Object(routes)) = obj.get_mut("routes") else {
        return;
    };
    for gw in routes.values_mut() {
        let Some(mac) = gw
            .as_str()
            .and_then(|s| s.strip_prefix("macs[")?.strip_suffix(']'))
            .and_then(|m| m.parse::<MacAddr>().ok())
        else {
            continue;
        };
        if let Some(i) = macs.iter().position(|m| *m == Some(mac)) {
            *gw = Value::String(format!("nics[{i}]"));
        }
    }
}

fn check_metadata(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(map) = v.as_object() else {
        r.bad_value(p, format!("{p} must be an object of string values"));
        return;
    };
    for (k, val) in map {
        if k.is_empty() || k.len() > 256 {
            r.bad_value(p, format!("{p} key {k:?} must be 1 to 256 bytes"));
        } else if !val.is_string() {
            r.bad_value(
                p,
                format!("{p}.{k} must be a string (nested values are not allowed)"),
            );
        }
    }
}

fn check_tags(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(map) = v.as_object() else {
        r.bad_value(p, format!("{p} must be an object"));
        return;
    };
    for (k, val) in map {
        if k.is_empty() || k.len() > 256 {
            r.bad_value(p, format!("{p} key {k:?} must be 1 to 256 bytes"));
        } else if !(val.is_string() || val.is_number() || val.is_boolean()) {
            r.bad_value(p, format!("{p}.{k} must be a string, number or boolean"));
        }
    }
}

/// Namespace names: what comes before `:` in a metadata key (no `:` itself, not `sdc`, which
/// the guest reads from the record).
fn check_namespaces(r: &mut ValidationReport, p: &str, v: &Value) {
    let ok = v.as_array().is_some_and(|l| {
        l.iter().all(|i| {
            i.as_str()
                .is_some_and(|s| !s.is_empty() && s.len() <= 64 && !s.contains(':') && s != "sdc")
        })
    });
    if !ok {
        r.bad_value(
            p,
            format!("{p} must be a list of names (1 to 64 bytes, no ':', not \"sdc\")"),
        );
    }
}

fn check_key_list(r: &mut ValidationReport, p: &str, v: &Value) {
    let ok = v
        .as_array()
        .is_some_and(|l| l.iter().all(|i| i.as_str().is_some_and(|s| !s.is_empty())));
    if !ok {
        r.bad_value(p, format!("{p} must be a list of keys"));
    }
}

fn check_mac_list(r: &mut ValidationReport, p: &str, v: &Value) {
    let ok = v
        .as_array()
        .is_some_and(|l| l.iter().all(|i| mac_of(i).is_some()));
    if !ok {
        r.bad_value(p, format!("{p} must be a list of MAC addresses"));
    }
}

fn check_path_list(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        r.bad_value(p, format!("{p} must be a list of disk paths"));
        return;
    };
    for (i, item) in list.iter().enumerate() {
        check_abs_path(r, &format!("{p}.{i}"), item);
    }
}

/// NIC properties: name, check, and whether `update_nics` may change it.
const NIC_PROPS: &[(&str, Kind)] = &[
    ("nic_tag", Kind::Other(check_nic_tag)),
    ("mac", Kind::Other(check_mac)),
    ("ip", Kind::Other(check_legacy_ip)),
    ("netmask", Kind::Other(check_netmask)),
    ("gateway", Kind::Other(check_ip)),
    ("gateways", Kind::Other(check_ip_list)),
    ("ips", Kind::Other(check_ips)),
    ("vlan_id", Kind::Int(0, 4094)),
    ("primary", Kind::Bool),
    ("mtu", Kind::Int(576, 9000)),
    ("model", Kind::Other(check_model)),
    ("allow_ip_spoofing", Kind::Bool),
    ("allow_mac_spoofing", Kind::Bool),
    ("allow_dhcp_spoofing", Kind::Bool),
    ("allow_restricted_traffic", Kind::Bool),
    ("allowed_ips", Kind::Other(check_allowed_ips)),
    ("max_bandwidth", Kind::Int(1, 100_000)),
    ("network_uuid", Kind::Other(check_uuid)),
    ("dhcp_server", Kind::Bool),
    ("blocked_outgoing_ports", Kind::Other(check_port_list)),
    ("vrrp_vrid", Kind::Int(0, 255)),
    ("vrrp_primary_ip", Kind::Other(check_ipv4)),
];

/// A list of TCP/UDP port numbers (1 to 65535), numbers or their decimal strings.
fn check_port_list(r: &mut ValidationReport, p: &str, v: &Value) {
    let ok = v.as_array().is_some_and(|l| {
        l.len() <= 1024
            && l.iter()
                .all(|i| i.as_u64().is_some_and(|n| (1..=65535).contains(&n)))
    });
    if !ok {
        r.bad_value(
            p,
            format!("{p} must be a list of port numbers (1 to 65535)"),
        );
    }
}

/// SmartOS NIC properties hull knows of but does not honour yet: named in the error.
const UNSUPPORTED_NIC: &[&str] = &["allow_unfiltered_promisc", "allowed_dhcp_cids"];

/// True for a nic tag name: what nictagadm accepts.
pub fn is_nic_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 31
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_nic_tag(r: &mut ValidationReport, p: &str, v: &Value) {
    if !v.as_str().is_some_and(is_nic_tag) {
        r.bad_value(
            p,
            format!("{p} must be a nic tag name (1-31 letters, digits, _ or -)"),
        );
    }
}

fn check_mac(r: &mut ValidationReport, p: &str, v: &Value) {
    match mac_of(v) {
        // A multicast MAC is kept as SmartOS keeps it (its VM.create takes one); a guest
        // that would start with it is refused by `check_startable_macs`, and its start by
        // vmmd.
        Some(mac) if mac.bytes() != [0; 6] => {}
        Some(_) => r.bad_value(p, format!("{p} must not be all zeros")),
        None => r.bad_value(
            p,
            format!("{p} must be a MAC address like 02:00:5e:10:00:01"),
        ),
    }
}

fn check_ip(r: &mut ValidationReport, p: &str, v: &Value) {
    if v.as_str().and_then(parse_ip).is_none() {
        r.bad_value(p, format!("{p} must be an IP address"));
    }
}

fn check_ipv4(r: &mut ValidationReport, p: &str, v: &Value) {
    if v.as_str()
        .is_none_or(|s| s.parse::<std::net::Ipv4Addr>().is_err())
    {
        r.bad_value(p, format!("{p} must be an IPv4 address"));
    }
}

fn check_legacy_ip(r: &mut ValidationReport, p: &str, v: &Value) {
    let ok = v
        .as_str()
        .is_some_and(|s| s == "dhcp" || s.parse::<std::net::Ipv4Addr>().is_ok());
    if !ok {
        r.bad_value(p, format!("{p} must be an IPv4 address or \"dhcp\""));
    }
}

fn check_netmask(r: &mut ValidationReport, p: &str, v: &Value) {
    if v.as_str().and_then(netmask_prefix).is_none() {
        r.bad_value(
            p,
            format!("{p} must be a contiguous dotted netmask like 255.255.255.0"),
        );
    }
}

fn check_ip_list(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        r.bad_value(p, format!("{p} must be a list of IP addresses"));
        return;
    };
    for (i, item) in list.iter().enumerate() {
        check_ip(r, &format!("{p}.{i}"), item);
    }
}

fn check_ips(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        r.bad_value(p, format!("{p} must be a list of CIDR addresses"));
        return;
    };
    for (i, item) in list.iter().enumerate() {
        let ok = item
            .as_str()
            .is_some_and(|s| s == "dhcp" || s == "addrconf" || Cidr::parse(s).is_some());
        if !ok {
            r.bad_value(
                format!("{p}.{i}"),
                format!("{p}.{i} must be an address in CIDR form (192.0.2.5/24), dhcp or addrconf"),
            );
        }
    }
}

fn check_allowed_ips(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        r.bad_value(p, format!("{p} must be a list of IP or CIDR addresses"));
        return;
    };
    for (i, item) in list.iter().enumerate() {
        let ok = item
            .as_str()
            .is_some_and(|s| parse_ip(s).is_some() || Cidr::parse(s).is_some());
        if !ok {
            r.bad_value(
                format!("{p}.{i}"),
                format!("{p}.{i} must be an IP or CIDR address"),
            );
        }
    }
}

fn check_model(r: &mut ValidationReport, p: &str, v: &Value) {
    if v.as_str() != Some("virtio") {
        r.bad_value(
            p,
            format!(
                "{p} {v} is not supported by hull: \"virtio\" is the only device model it emulates"
            ),
        );
    }
}

fn check_nic_object(r: &mut ValidationReport, path: &str, v: &Value, need_tag: bool) {
    let Some(obj) = v.as_object() else {
        r.bad_value(path, format!("{path} must be an object"));
        return;
    };
    for (k, val) in obj {
        let p = format!("{path}.{k}");
        match NIC_PROPS.iter().find(|(n, _)| n == k) {
            Some((_, kind)) => kind.check(r, &p, val),
            // Checked against the NIC's place by validate_create: hull names interfaces.
            None if k == "interface" && !need_tag => {
                r.bad_property(p, "interface names are assigned by hull (net0, net1, ...)")
            }
            None if k == "interface" => {
                if !val.as_str().is_some_and(|s| s.len() <= 15 && !s.is_empty()) {
                    r.bad_value(p, "a NIC's interface must be a name such as net0")
                }
            }
            None if UNSUPPORTED_NIC.contains(&k.as_str()) => r.bad_property(
                p,
                format!("SmartOS NIC property {k} is not supported by hull"),
            ),
            None => r.bad_property(p, format!("unknown NIC property {k}")),
        }
    }
    if need_tag && !obj.contains_key("nic_tag") {
        r.missing(format!("{path}.nic_tag"), "every NIC needs a nic_tag");
    }
    // In update_nics the mac is the NIC's key (its MAC then follows the new VRID).
    if let Some(vrid) = obj.get("vrrp_vrid").and_then(Value::as_u64)
        && need_tag
        && let Some(mac) = nic_mac(v)
        && u8::try_from(vrid).is_ok_and(|id| mac != MacAddr::vrrp(id))
    {
        r.bad_value(
            format!("{path}.mac"),
            "Cannot set both mac and vrrp_vrid: a VRRP NIC's MAC is its router's \
             (00:00:5e:00:01:VRID)",
        );
    }
    let static_ip = obj
        .get("ip")
        .and_then(Value::as_str)
        .is_some_and(|s| s != "dhcp");
    if obj.contains_key("ip") && obj.contains_key("ips") {
        r.bad_value(
            format!("{path}.ip"),
            "give either ip/netmask or ips, not both",
        );
    } else if static_ip && !obj.contains_key("netmask") {
        r.missing(format!("{path}.netmask"), "a static ip needs a netmask");
    } else if obj.contains_key("netmask") && !obj.contains_key("ip") {
        r.bad_value(format!("{path}.netmask"), "netmask is given without ip");
    }
}

fn check_nics(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        r.bad_value(p, format!("{p} must be a list of NIC objects"));
        return;
    };
    if list.len() > 32 {
        r.bad_value(p, format!("{p} may hold at most 32 NICs"));
    }
    for (i, nic) in list.iter().enumerate() {
        check_nic_object(r, &format!("{p}.{i}"), nic, true);
    }
}

/// Checks that hold across a payload's NICs: at most one primary, no MAC or IP twice.
fn check_nic_set(r: &mut ValidationReport, p: &str, nics: &[Value]) {
    let mut primary_seen = false;
    let mut macs = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for (i, nic) in nics.iter().enumerate() {
        if nic.get("primary").and_then(Value::as_bool) == Some(true) {
            if primary_seen {
                r.bad_value(format!("{p}.{i}.primary"), "only one NIC may be primary");
            }
            primary_seen = true;
        }
        if let Some(mac) = nic_mac(nic)
            && !macs.insert(mac)
        {
            r.bad_value(
                format!("{p}.{i}.mac"),
                "this MAC is already used by another NIC",
            );
        }
        for addr in nic_addresses(nic) {
            if !ips.insert(addr) {
                r.bad_value(
                    format!("{p}.{i}.ip"),
                    format!("{addr} is already used by another NIC"),
                );
            }
        }
    }
}

/// SmartOS's rules for a guest's VRRP NICs (`vrrp_vrid`), checked on the NICs it would have
/// (a create's, or the record's after an update; `p` is what the paths start with): each
/// names a `vrrp_primary_ip` that is the address of one of the guest's NICs that is not a
/// VRRP NIC, no VRID twice, not only VRRP NICs, and (hull's) a VRRP NIC has a static
/// address (the virtual router's) and is not the primary NIC (its link is down until the
/// guest's VRRP daemon raises it). The messages are SmartOS's where it has one.
pub fn check_vrrp_nics(r: &mut ValidationReport, p: &str, nics: &[NicSpec]) {
    if !nics
        .iter()
        .any(|n| n.is_vrrp() || n.vrrp_primary_ip.is_some())
    {
        return;
    }
    let addrs = |n: &NicSpec| -> Vec<std::net::IpAddr> {
        let listed = n
            .ips
            .iter()
            .flatten()
            .filter_map(|s| Cidr::parse(s))
            .map(|c| c.addr);
        n.ip.as_deref()
            .and_then(parse_ip)
            .into_iter()
            .chain(listed)
            .collect()
    };
    let vrrp_addrs: BTreeSet<std::net::IpAddr> = nics
        .iter()
        .filter(|n| n.is_vrrp())
        .flat_map(addrs)
        .collect();
    let other_addrs: BTreeSet<std::net::IpAddr> = nics
        .iter()
        .filter(|n| !n.is_vrrp())
        .flat_map(addrs)
        .collect();
    let mut vrids = BTreeSet::new();
    for (i, nic) in nics.iter().enumerate() {
        if let Some(vrid) = nic.vrrp_vrid {
            if !vrids.insert(vrid) {
                r.bad_value(
                    format!("{p}.{i}.vrrp_vrid"),
                    format!("Cannot add multiple NICs with the same VRID: {vrid}"),
                );
            }
            if nic.vrrp_primary_ip.is_none() {
                r.missing(
                    format!("{p}.{i}.vrrp_primary_ip"),
                    "vrrp_vrid set but not vrrp_primary_ip: a VRRP NIC sends its \
                     advertisements from the address of another of the guest's NICs",
                );
            }
            if addrs(nic).is_empty() {
                r.missing(
                    format!("{p}.{i}.ip"),
                    "a VRRP NIC needs a static address (ip and netmask, or ips): the virtual \
                     router's, which no DHCP server hands out",
                );
            }
            if nic.primary == Some(true) {
                r.bad_value(
                    format!("{p}.{i}.primary"),
                    "a VRRP NIC cannot be the primary NIC: its link is down until the guest's \
                     VRRP daemon raises it, so the default route goes through another NIC",
                );
            }
        }
        let Some(primary) = nic.vrrp_primary_ip.as_deref().and_then(parse_ip) else {
            continue;
        };
        if vrrp_addrs.contains(&primary) {
            r.bad_value(
                format!("{p}.{i}.vrrp_primary_ip"),
                "Cannot set vrrp_primary_ip to the IP of a VRRP nic",
            );
        } else if !other_addrs.contains(&primary) {
            r.bad_value(
                format!("{p}.{i}.vrrp_primary_ip"),
                format!(
                    "vrrp_primary_ip must belong to the same VM: {primary} is not the address \
                     of any of its NICs"
                ),
            );
        }
    }
    if !nics.is_empty() && nics.iter().all(NicSpec::is_vrrp) {
        r.bad_value(p, "VM cannot contain only VRRP nics");
    }
}

/// A payload may name its NICs' interfaces (SmartOS's records do) as long as it names them
/// as hull does: by place, net0... (eth0... in lx zones).
fn check_interface_names(r: &mut ValidationReport, brand: Brand, nics: &[Value]) {
    for (i, nic) in nics.iter().enumerate() {
        let want = brand.interface_name(i);
        if let Some(given) = nic.get("interface").and_then(Value::as_str)
            && given != want
        {
            r.bad_value(
                format!("nics.{i}.interface"),
                format!(
                    "interface names are assigned by hull by place: nics.{i} is {want}, not {given}"
                ),
            );
        }
    }
}

/// Refuses a multicast MAC among `nics` (at `p`): no NIC can own one (Linux refuses it as a
/// device address, as illumos's mac layer does), so a guest with one cannot start. Called
/// where the guest would start with it: a create with autoboot, and add_nics.
fn check_startable_macs(r: &mut ValidationReport, p: &str, nics: &[Value], why: &str) {
    for (i, nic) in nics.iter().enumerate() {
        if let Some(mac) = nic_mac(nic).filter(|m| m.bytes() != [0; 6] && !m.is_usable()) {
            r.bad_value(
                format!("{p}.{i}.mac"),
                format!(
                    "{p}.{i}.mac {mac} is a multicast address, which no NIC can own: a guest \
                     with it cannot start{why}"
                ),
            );
        }
    }
}

/// The MAC a NIC object (payload or record) names, if it names a well-formed one.
pub fn nic_mac(nic: &Value) -> Option<MacAddr> {
    nic.get("mac").and_then(mac_of)
}

fn mac_of(v: &Value) -> Option<MacAddr> {
    v.as_str()?.parse().ok()
}

/// The static addresses a NIC object (payload or record) claims.
pub fn nic_addresses(nic: &Value) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    if let Some(ip) = nic.get("ip").and_then(Value::as_str).and_then(parse_ip) {
        out.push(ip);
    }
    if let Some(list) = nic.get("ips").and_then(Value::as_array) {
        out.extend(
            list.iter()
                .filter_map(Value::as_str)
                .filter_map(Cidr::parse)
                .map(|c| c.addr),
        );
    }
    out
}

fn check_update_nics(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        r.bad_value(
            p,
            format!("{p} must be a list of NIC objects, each with its mac"),
        );
        return;
    };
    for (i, nic) in list.iter().enumerate() {
        let path = format!("{p}.{i}");
        check_nic_object(r, &path, nic, false);
        if nic.is_object() && nic.get("mac").is_none() {
            r.missing(
                format!("{path}.mac"),
                "update_nics finds each NIC by its mac",
            );
        }
    }
}

const DISK_PROPS: &[(&str, Kind)] = &[
    ("image_uuid", Kind::Other(check_uuid)),
    ("size", Kind::Int(1, 16 * MIB_MAX)),
    ("boot", Kind::Bool),
    ("model", Kind::Other(check_model)),
    ("path", Kind::Other(check_abs_path)),
    ("read_only", Kind::Bool),
    ("image_size", Kind::Int(1, 16 * MIB_MAX)),
    ("image_name", Kind::Other(check_short_string)),
    ("uuid", Kind::Other(check_uuid)),
    ("block_size", Kind::Pow2(512, 1 << 17)),
    ("refreservation", Kind::Int(0, 16 * MIB_MAX)),
    ("media", Kind::Other(check_media)),
    ("compression", Kind::Other(check_compression)),
];

/// Disk properties `update_disks` cannot change.
const DISK_CREATE_ONLY: &[&str] = &[
    "image_size",
    "image_name",
    "uuid",
    "block_size",
    "refreservation",
    "media",
    "compression",
];

/// A disk's media: "disk"; a "cdrom" needs the firmware boot hull does not have.
fn check_media(r: &mut ValidationReport, p: &str, v: &Value) {
    match v.as_str() {
        Some("disk") => {}
        Some("cdrom") => r.bad_property(
            p,
            format!("{p} \"cdrom\" is not supported by hull: microVMs boot a kernel or a disk, with no firmware to boot a CD"),
        ),
        _ => r.bad_value(p, format!("{p} must be \"disk\"")),
    }
}

fn check_disk_object(r: &mut ValidationReport, path: &str, v: &Value, updating: bool) {
    let Some(obj) = v.as_object() else {
        r.bad_value(path, format!("{path} must be an object"));
        return;
    };
    for (k, val) in obj {
        let p = format!("{path}.{k}");
        match DISK_PROPS.iter().find(|(n, _)| n == k) {
            Some(_) if updating && k == "image_uuid" => {
                r.bad_property(p, "a disk's image cannot be changed")
            }
            Some(_) if updating && DISK_CREATE_ONLY.contains(&k.as_str()) => {
                r.bad_property(p, format!("a disk's {k} is set when the disk is made"))
            }
            Some((_, kind)) => kind.check(r, &p, val),
            None if UNSUPPORTED_DISK.contains(&k.as_str()) => r.bad_property(
                p,
                format!("SmartOS disk property {k} is not supported by hull"),
            ),
            None => r.bad_property(p, format!("unknown disk property {k}")),
        }
    }
    if !updating
        && !["image_uuid", "size", "path"]
            .iter()
            .any(|k| obj.contains_key(*k))
    {
        r.missing(
            format!("{path}.size"),
            "a disk needs an image_uuid, a size or a path",
        );
    }
}

const UNSUPPORTED_DISK: &[&str] = &[
    "dangerous_allow_shrink",
    "guest_block_size",
    "nocreate",
    "notrim",
    "pci_slot",
    "zfs_filesystem",
    "zonexml_size",
    "zpool",
];

fn check_disks(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        r.bad_value(p, format!("{p} must be a list of disk objects"));
        return;
    };
    if list.len() > 16 {
        r.bad_value(p, format!("{p} may hold at most 16 disks"));
    }
    for (i, disk) in list.iter().enumerate() {
        check_disk_object(r, &format!("{p}.{i}"), disk, false);
    }
}

/// SmartOS's flexible_disk_size bounds what a VM's disks add up to (their given sizes).
fn check_flexible_disk_size(r: &mut ValidationReport, obj: &Map<String, Value>, disks: &[Value]) {
    let Some(limit) = obj.get("flexible_disk_size").and_then(Value::as_u64) else {
        return;
    };
    let total: u64 = disks
        .iter()
        .filter_map(|d| d.get("size").and_then(Value::as_u64))
        .sum();
    if total > limit {
        r.bad_value(
            "flexible_disk_size",
            format!("the disks add up to {total} MiB, more than flexible_disk_size ({limit} MiB)"),
        );
    }
}

fn check_boot_disks(r: &mut ValidationReport, p: &str, disks: &[Value]) {
    let mut seen = false;
    for (i, d) in disks.iter().enumerate() {
        if d.get("boot").and_then(Value::as_bool) == Some(true) {
            if seen {
                r.bad_value(
                    format!("{p}.{i}.boot"),
                    "only one disk may be the boot disk",
                );
            }
            seen = true;
        }
    }
}

fn check_update_disks(r: &mut ValidationReport, p: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        r.bad_value(
            p,
            format!("{p} must be a list of disk objects, each with its path"),
        );
        return;
    };
    for (i, disk) in list.iter().enumerate() {
        let path = format!("{p}.{i}");
        check_disk_object(r, &path, disk, true);
        if disk.is_object() && disk.get("path").is_none() {
            r.missing(
                format!("{path}.path"),
                "update_disks finds each disk by its path",
            );
        }
    }
}

/// ram, max_physical_memory and max_swap must agree with each other.
fn check_memory_consistency(r: &mut ValidationReport, brand: Brand, obj: &Map<String, Value>) {
    let get = |k: &str| obj.get(k).and_then(Value::as_u64);
    let (ram, mpm, swap) = (get("ram"), get("max_physical_memory"), get("max_swap"));
    if brand.is_microvm() {
        if let (Some(ram), Some(mpm)) = (ram, mpm)
            && mpm < ram
        {
            r.bad_value(
                "max_physical_memory",
                format!("max_physical_memory ({mpm}) must be at least ram ({ram})"),
            );
        }
    } else if let (Some(ram), Some(mpm)) = (ram, mpm)
        && ram != mpm
    {
        r.bad_value(
            "ram",
            format!("for zones ram is max_physical_memory; {ram} != {mpm}"),
        );
    }
    // A max_swap below the memory limit is raised to it when the record is made, as
    // SmartOS's vmadm does (with a warning in its log): not an error.
    let _ = swap;
}

/// The names of every top-level create property, for documentation and completion.
pub fn create_property_names() -> impl Iterator<Item = &'static str> {
    PROPS.iter().map(|p| p.name)
}

/// Adds another report's findings (the host checks vmmd makes) to `into`.
pub fn merge(into: &mut ValidationReport, other: ValidationReport) {
    if into.bad_brand.is_none() {
        into.bad_brand = other.bad_brand;
    }
    for p in other.bad_values {
        if !into.bad_values.contains(&p) {
            into.bad_values.push(p);
        }
    }
    for p in other.bad_properties {
        if !into.bad_properties.contains(&p) {
            into.bad_properties.push(p);
        }
    }
    for p in other.missing_properties {
        if !into.missing_properties.contains(&p) {
            into.missing_properties.push(p);
        }
    }
    into.details.extend(other.details);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IMG: &str = "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01";

    fn report(v: Value) -> ValidationReport {
        validate_create(&v).expect_err("payload should be invalid")
    }

    fn lists(r: &ValidationReport) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
        fn s(l: &[String]) -> Vec<&str> {
            l.iter().map(String::as_str).collect()
        }
        (
            s(&r.bad_values),
            s(&r.bad_properties),
            s(&r.missing_properties),
        )
    }

    #[test]
    fn valid_payloads_for_every_brand() {
        for brand in ["joyent", "joyent-minimal", "lx"] {
            let v = json!({
                "brand": brand, "image_uuid": IMG, "alias": "web", "hostname": "web01",
                "max_physical_memory": 512, "quota": 20, "cpu_cap": 100, "max_lwps": 500,
                "resolvers": ["192.0.2.53", "2001:db8::53"], "tags": {"role": "web", "n": 2, "b": true},
                "customer_metadata": {"user-script": "#!/bin/sh"},
                "routes": {"198.51.100.0/24": "192.0.2.1", "203.0.113.9": "nics[0]"},
                "nics": [{"nic_tag": "admin", "ip": "192.0.2.10", "netmask": "255.255.255.0",
                          "gateway": "192.0.2.1", "primary": true},
                         {"nic_tag": "internal", "ips": ["198.51.100.4/24", "2001:db8::4/64"],
                          "vlan_id": 12, "mac": "02:00:00:00:00:04", "mtu": 9000}]
            });
            let c = validate_create(&v).unwrap_or_else(|r| panic!("{brand}: {r}"));
            assert_eq!(c.brand.map(Brand::as_str), Some(brand));
        }
        for brand in ["kvm", "bhyve"] {
            let v = json!({
                "brand": brand, "ram": 1024, "vcpus": 2, "max_physical_memory": 2048,
                "disks": [{"image_uuid": IMG, "boot": true, "model": "virtio"}, {"size": 10240}],
                "kernel": "/var/lib/hull/kernels/vmlinuz", "cmdline": "console=ttyS0",
                "nics": [{"nic_tag": "admin", "ips": ["dhcp"], "model": "virtio"}]
            });
            let c = validate_create(&v).unwrap_or_else(|r| panic!("{brand}: {r}"));
            assert_eq!(c.vcpus, Some(2));
        }
    }

    #[test]
    fn wrong_types_and_ranges_name_each_property() {
        let r = report(json!({
            "brand": "joyent", "image_uuid": IMG, "autoboot": "yes", "max_physical_memory": -1,
            "cpu_shares": 0, "quota": "10G", "alias": 5, "max_lwps": 1.5
        }));
        let (mut bad, props, missing) = lists(&r);
        bad.sort_unstable();
        assert_eq!(
            bad,
            [
                "alias",
                "autoboot",
                "cpu_shares",
                "max_lwps",
                "max_physical_memory",
                "quota"
            ]
        );
        assert!(props.is_empty() && missing.is_empty(), "{r:?}");
        assert_eq!(r.details.len(), 6);
    }

    #[test]
    fn unknown_unsupported_and_read_only_properties() {
        let r = report(json!({
            "brand": "joyent", "image_uuid": IMG, "frobnicate": 1, "limit_priv": "default",
            "state": "running", "vcpus": 2
        }));
        let (bad, mut props, missing) = lists(&r);
        props.sort_unstable();
        assert_eq!(props, ["frobnicate", "limit_priv", "state", "vcpus"]);
        assert!(bad.is_empty() && missing.is_empty());
        assert!(
            r.summary().contains("not supported by hull"),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn missing_brand_image_and_nic_tag() {
        // No brand is a joyent zone's payload, as in SmartOS: its image is what is missing.
        let r = report(json!({"alias": "x"}));
        assert_eq!(lists(&r).2, ["image_uuid"]);
        let r = report(json!({"brand": "lx", "nics": [{"ip": "dhcp"}]}));
        let (bad, props, mut missing) = lists(&r);
        missing.sort_unstable();
        assert_eq!(missing, ["image_uuid", "nics.0.nic_tag"]);
        assert!(bad.is_empty() && props.is_empty());
    }

    #[test]
    fn smartos_spellings_of_numbers_and_booleans_are_taken() {
        let image = "8f3c5c8e-4b64-11ea-9f6e-000000000001";
        let vm = validate_create(&json!({
            "image_uuid": image, "alias": null, "ram": "512", "max_lwps": "2000",
            "autoboot": "false", "cpu_shares": 100,
            "nics": [{"nic_tag": "admin", "ips": ["10.0.0.5/24"], "primary": "1", "mtu": "1500",
                      "vlan_id": "0", "allow_ip_spoofing": 0}],
            "customer_metadata": {"port": 8080, "debug": true, "name": "web"}
        }))
        .expect("SmartOS takes it");
        let v = serde_json::to_value(&vm).expect("serializes");
        assert_eq!(v["brand"], "joyent", "no brand is joyent: {v}");
        assert_eq!(v["ram"], 512);
        assert_eq!(v["max_lwps"], 2000);
        assert_eq!(v["autoboot"], false);
        assert!(v.get("alias").is_none_or(Value::is_null), "{v}");
        assert_eq!(v["nics"][0]["primary"], true);
        assert_eq!(v["nics"][0]["mtu"], 1500);
        assert_eq!(v["nics"][0]["allow_ip_spoofing"], false);
        assert_eq!(v["customer_metadata"]["port"], "8080");
        assert_eq!(v["customer_metadata"]["debug"], "true");
        assert_eq!(v["customer_metadata"]["name"], "web");
        // A microVM's disks and an update's NICs and figures, likewise.
        let vm = validate_create(&json!({"brand": "kvm", "vcpus": "2",
            "disks": [{"size": "64", "boot": "true"}]}))
        .expect("SmartOS takes it");
        let v = serde_json::to_value(&vm).expect("serializes");
        assert_eq!(
            (&v["vcpus"], &v["disks"][0]["size"]),
            (&json!(2), &json!(64))
        );
        assert_eq!(v["disks"][0]["boot"], true);
        let up = validate_update(
            &json!({"ram": "1024", "update_nics": [{"mac": "02:00:00:00:00:01", "primary": "true"}],
                    "set_customer_metadata": {"n": 1}}),
            Brand::Joyent,
        )
        .expect("SmartOS takes it");
        let v = serde_json::to_value(&up).expect("serializes");
        assert_eq!(v["ram"], 1024);
        assert_eq!(v["update_nics"][0]["primary"], true);
        assert_eq!(v["set_customer_metadata"]["n"], "1");
    }

    #[test]
    fn spellings_smartos_refuses_stay_refused_by_name() {
        let r = report(
            json!({"brand": "joyent", "image_uuid": "8f3c5c8e-4b64-11ea-9f6e-000000000001",
            "ram": "512MB", "vcpus_x": 1, "autoboot": "yes", "max_lwps": "-5", "cpu_cap": " 100",
            "nics": [{"nic_tag": "admin", "primary": 2, "mtu": "1.5e3"}],
            "customer_metadata": {"nested": {"a": 1}}}),
        );
        let (mut bad, _, _) = lists(&r);
        bad.sort_unstable();
        assert_eq!(
            bad,
            [
                "autoboot",
                "cpu_cap",
                "customer_metadata",
                "max_lwps",
                "nics.0.mtu",
                "nics.0.primary",
                "ram"
            ]
        );
        // And a brand that is not a string is still its own error, not joyent.
        let r = report(json!({"brand": 7, "image_uuid": "8f3c5c8e-4b64-11ea-9f6e-000000000001"}));
        assert_eq!(lists(&r).0, ["brand"]);
    }

    #[test]
    fn every_smartos_property_is_known_by_name() {
        // SmartOS's whole property table (testdata/smartos-properties.txt says where from):
        // each is honoured, refused as not supported, or refused as the host's to set, and
        // the refusal names it; none is "unknown".
        let names = include_str!("../testdata/smartos-properties.txt");
        let mut checked = 0;
        for name in names
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (payloads, unknown): (Vec<Value>, String) = match name.split_once(".*.") {
                None => (
                    ["joyent", "kvm"]
                        .map(|b| json!({"brand": b, name: 1}))
                        .to_vec(),
                    format!("unknown property {name}"),
                ),
                Some(("nics", k)) => (
                    vec![json!({"brand": "joyent", "nics": [{k: 1}]})],
                    format!("unknown NIC property {k}"),
                ),
                Some(("disks", k)) => (
                    vec![json!({"brand": "kvm", "disks": [{k: 1}]})],
                    format!("unknown disk property {k}"),
                ),
                // Their lists are refused whole, by name.
                Some((list, _)) => (
                    vec![json!({"brand": "joyent", list: []})],
                    format!("unknown property {list}"),
                ),
            };
            for payload in payloads {
                let text = match validate_create(&payload) {
                    Ok(_) => continue,
                    Err(r) => serde_json::to_string(&r).expect("serializes"),
                };
                assert!(!text.contains(&unknown), "{name}: {text}");
            }
            checked += 1;
        }
        assert_eq!(checked, 187, "the table's 187 names");
    }

    #[test]
    fn lx_takes_a_kernel_version_and_other_brands_are_told_it_is_lx_only() {
        let lx = |v: Value| json!({"brand": "lx", "image_uuid": IMG, "kernel_version": v});
        let c = validate_create(&lx(json!("4.3.0"))).expect("lx takes it");
        assert_eq!(c.kernel_version.as_deref(), Some("4.3.0"));
        for bad in [
            json!("4"),
            json!("4.x"),
            json!("linux-4.3"),
            json!(4.3),
            json!(""),
        ] {
            let r = report(lx(bad.clone()));
            assert_eq!(lists(&r).0, ["kernel_version"], "{bad}");
        }
        let r = report(json!({"brand": "joyent", "image_uuid": IMG, "kernel_version": "4.3.0"}));
        assert_eq!(lists(&r).1, ["kernel_version"]);
        let r = report(json!({"brand": "kvm", "kernel_version": "4.3.0"}));
        assert_eq!(lists(&r).1, ["kernel_version"], "one refusal, not two");
        assert!(validate_update(&json!({"kernel_version": "5.10.0"}), Brand::Lx).is_ok());
        assert!(validate_update(&json!({"kernel_version": "5.10.0"}), Brand::Joyent).is_err());
    }

    #[test]
    fn max_swap_is_at_least_256_as_in_smartos() {
        let r = report(json!({"brand": "joyent", "image_uuid": IMG, "max_swap": 128}));
        assert_eq!(lists(&r).0, ["max_swap"]);
        assert!(r.summary().contains("from 256"), "{}", r.summary());
        let r = report(json!({"brand": "joyent", "image_uuid": IMG, "max_swap": "128"}));
        assert_eq!(
            lists(&r).0,
            ["max_swap"],
            "a spelled number is held to it too"
        );
        assert!(
            validate_create(&json!({"brand": "joyent", "image_uuid": IMG, "max_swap": 256}))
                .is_ok()
        );
        assert!(validate_update(&json!({"max_swap": 200}), Brand::Joyent).is_err());
    }

    #[test]
    fn smartos_properties_hull_does_not_honour_are_refused_naming_them() {
        let r = report(
            json!({"brand": "joyent", "image_uuid": IMG, "limit_priv": "default",
            "nics": [{"nic_tag": "admin", "allowed_dhcp_cids": ["01"]}], "server_uuid": IMG}),
        );
        let text = serde_json::to_string(&r).expect("serializes");
        for said in [
            "SmartOS property limit_priv is not supported by hull",
            "SmartOS NIC property allowed_dhcp_cids is not supported by hull",
            "server_uuid is set by hull and cannot be given",
        ] {
            assert!(text.contains(said), "{said}: {text}");
        }
    }

    /// SmartOS's VRRP rules (its test-vrrp-nics.js cases), on create and on the NICs an
    /// update leaves.
    #[test]
    fn vrrp_nics_follow_smartos_rules() {
        let nic = |extra: Value| {
            let mut n =
                json!({"nic_tag": "external", "ip": "172.18.1.101", "netmask": "255.255.255.0"});
            for (k, v) in extra.as_object().expect("object") {
                n[k] = v.clone();
            }
            n
        };
        let plain = |ip: &str| json!({"nic_tag": "external", "ip": ip, "netmask": "255.255.255.0"});
        let create = |nics: Vec<Value>| {
            validate_create(&json!({"brand": "joyent-minimal", "image_uuid": IMG, "nics": nics}))
        };
        let said = |r: Result<VmCreate, ValidationReport>, path: &str, words: &str| {
            let r = r.expect_err("refused");
            let p = r.details.iter().find(|p| p.property == path);
            assert!(
                p.is_some_and(|p| p.message.contains(words)),
                "{path}: {words}: {:?}",
                r.details
            );
        };
        let good = create(vec![
            nic(json!({"vrrp_vrid": 1, "vrrp_primary_ip": "172.18.1.2"})),
            nic(json!({"vrrp_vrid": "2", "ip": "172.18.1.102", "vrrp_primary_ip": "172.18.1.2"})),
            plain("172.18.1.2"),
        ])
        .expect("SmartOS's VRRP payload");
        let nics = good.nics.expect("nics");
        assert_eq!((nics[0].vrrp_vrid, nics[1].vrrp_vrid), (Some(1), Some(2)));
        said(
            create(vec![nic(json!({"vrrp_vrid": 1})), plain("172.18.1.2")]),
            "nics.0.vrrp_primary_ip",
            "vrrp_vrid set but not vrrp_primary_ip",
        );
        said(
            create(vec![
                nic(json!({"vrrp_vrid": 1, "vrrp_primary_ip": "172.18.1.254"})),
                plain("172.18.1.2"),
            ]),
            "nics.0.vrrp_primary_ip",
            "vrrp_primary_ip must belong to the same VM",
        );
        said(
            create(vec![
                nic(json!({"vrrp_vrid": 1, "vrrp_primary_ip": "172.18.1.101"})),
                plain("172.18.1.2"),
            ]),
            "nics.0.vrrp_primary_ip",
            "Cannot set vrrp_primary_ip to the IP of a VRRP nic",
        );
        said(
            create(vec![
                nic(json!({"vrrp_vrid": 4, "vrrp_primary_ip": "172.18.1.2"})),
                nic(json!({"vrrp_vrid": 4, "ip": "172.18.1.103", "vrrp_primary_ip": "172.18.1.2"})),
                plain("172.18.1.2"),
            ]),
            "nics.1.vrrp_vrid",
            "Cannot add multiple NICs with the same VRID: 4",
        );
        said(
            create(vec![nic(
                json!({"vrrp_vrid": 1, "vrrp_primary_ip": "172.18.1.2"}),
            )]),
            "nics",
            "VM cannot contain only VRRP nics",
        );
        said(
            create(vec![
                nic(json!({"vrrp_vrid": 4, "mac": "52:31:98:52:5d:07"})),
                plain("172.18.1.2"),
            ]),
            "nics.0.mac",
            "Cannot set both mac and vrrp_vrid",
        );
        said(
            create(vec![nic(json!({"vrrp_vrid": 256})), plain("172.18.1.2")]),
            "nics.0.vrrp_vrid",
            "",
        );
        said(
            create(vec![
                json!({"nic_tag": "external", "ip": "dhcp", "vrrp_vrid": 5,
                       "vrrp_primary_ip": "172.18.1.2"}),
                plain("172.18.1.2"),
            ]),
            "nics.0.ip",
            "static address",
        );
        said(
            create(vec![
                nic(json!({"vrrp_vrid": 5, "vrrp_primary_ip": "172.18.1.2", "primary": true})),
                plain("172.18.1.2"),
            ]),
            "nics.0.primary",
            "cannot be the primary NIC",
        );
        // update_nics finds a NIC by its MAC; a new VRID is taken (the MAC follows it).
        let u = validate_update(
            &json!({"update_nics": [{"mac": "00:00:5e:00:01:01", "vrrp_vrid": 3}]}),
            Brand::Joyent,
        )
        .expect("vrrp_vrid is updatable");
        assert_eq!(u.update_nics.expect("nics")[0].vrrp_vrid, Some(3));
        let u = validate_update(
            &json!({"update_nics": [{"mac": "00:00:5e:00:01:01", "vrrp_primary_ip": "172.18.1.3"}]}),
            Brand::Joyent,
        )
        .expect("vrrp_primary_ip is updatable");
        assert_eq!(
            u.update_nics.expect("nics")[0].vrrp_primary_ip.as_deref(),
            Some("172.18.1.3")
        );
    }

    #[test]
    fn unknown_brand_is_reported_alone() {
        let r = report(json!({"brand": "solaris10", "bogus": 1}));
        assert_eq!(r.bad_brand.as_deref(), Some("solaris10"));
        let text = serde_json::to_value(&r).expect("serializes");
        assert_eq!(text["bad_brand"], "solaris10");
    }

    #[test]
    fn two_primary_nics_bad_ip_and_bad_mac() {
        let r = report(json!({"brand": "joyent", "image_uuid": IMG, "nics": [
            {"nic_tag": "admin", "primary": true, "ip": "192.0.2.300", "netmask": "255.255.255.0"},
            {"nic_tag": "admin", "primary": true, "mac": "02:00:00:00:00:zz"},
            {"nic_tag": "admin", "ips": ["192.0.2.5"], "mac": "01:00:5e:00:00:01"}
        ]}));
        let (mut bad, props, missing) = lists(&r);
        bad.sort_unstable();
        assert_eq!(
            bad,
            [
                "nics.0.ip",
                "nics.1.mac",
                "nics.1.primary",
                "nics.2.ips.0",
                "nics.2.mac"
            ]
        );
        assert!(props.is_empty() && missing.is_empty(), "{r:?}");
    }

    #[test]
    fn a_multicast_mac_is_kept_only_for_a_guest_that_does_not_start_with_it() {
        let nics = json!([{"nic_tag": "admin", "mac": "01:02:03:04:05:06", "ips": ["dhcp"]}]);
        // SmartOS's own tests create such VMs with autoboot false.
        let kept = validate_create(&json!({"brand": "joyent", "image_uuid": IMG,
            "autoboot": "false", "nics": nics}));
        assert!(kept.is_ok(), "{kept:?}");
        for autoboot in [json!(true), json!("true"), Value::Null] {
            let mut p = json!({"brand": "joyent", "image_uuid": IMG, "nics": nics});
            if !autoboot.is_null() {
                p["autoboot"] = autoboot;
            }
            let r = validate_create(&p).unwrap_err();
            assert_eq!(r.bad_values, ["nics.0.mac"], "{r:?}");
            assert!(r.summary().contains("multicast"), "{}", r.summary());
        }
        let r = validate_update(&json!({"add_nics": nics}), Brand::Joyent).unwrap_err();
        assert_eq!(r.bad_values, ["add_nics.0.mac"], "{r:?}");
        // update_nics finds a NIC by its mac: a multicast one is found, not set.
        let found = validate_update(
            &json!({"update_nics": [{"mac": "01:02:03:04:05:06", "mtu": 1400}]}),
            Brand::Joyent,
        );
        assert!(found.is_ok(), "{found:?}");
        let zero = validate_create(&json!({"brand": "joyent", "image_uuid": IMG,
            "autoboot": false, "nics": [{"nic_tag": "admin", "mac": "00:00:00:00:00:00"}]}));
        assert_eq!(zero.unwrap_err().bad_values, ["nics.0.mac"]);
    }

    #[test]
    fn metadata_namespaces_are_plain_names_and_never_sdc() {
        for bad in [
            json!(["sdc"]),
            json!(["a:b"]),
            json!([""]),
            json!("acme"),
            json!([1]),
        ] {
            let r = validate_create(&json!({"brand": "joyent", "image_uuid": IMG,
                "internal_metadata_namespaces": bad}))
            .expect_err("refused");
            assert_eq!(r.bad_values, ["internal_metadata_namespaces"], "{r}");
        }
        let ok = validate_update(
            &json!({"internal_metadata_namespaces": ["acme"]}),
            Brand::Joyent,
        )
        .expect("updatable");
        assert_eq!(
            ok.internal_metadata_namespaces,
            Some(vec!["acme".to_string()])
        );
    }

    #[test]
    fn nested_customer_metadata_is_a_bad_value() {
        let r = report(json!({"brand": "joyent", "image_uuid": IMG,
            "customer_metadata": {"a": {"nested": true}}, "internal_metadata": {"ok": "yes"}}));
        assert_eq!(lists(&r).0, ["customer_metadata"]);
    }

    #[test]
    fn duplicate_addresses_and_macs_within_a_payload() {
        let r = report(json!({"brand": "kvm", "nics": [
            {"nic_tag": "a", "ips": ["192.0.2.9/24"], "mac": "02:00:00:00:00:01"},
            {"nic_tag": "b", "ip": "192.0.2.9", "netmask": "255.255.255.0", "mac": "02:00:00:00:00:01"}
        ]}));
        let (mut bad, _, _) = lists(&r);
        bad.sort_unstable();
        assert_eq!(bad, ["nics.1.ip", "nics.1.mac"]);
    }

    #[test]
    fn brand_scoped_properties() {
        let r = report(json!({"brand": "kvm", "image_uuid": IMG, "init_name": "/sbin/init"}));
        let (_, mut props, _) = lists(&r);
        props.sort_unstable();
        assert_eq!(props, ["image_uuid", "init_name"]);
        let r = report(json!({"brand": "joyent", "image_uuid": IMG, "disks": [{"size": 1}]}));
        assert_eq!(lists(&r).1, ["disks"]);
    }

    #[test]
    fn nic_and_disk_field_rules() {
        let r = report(json!({"brand": "kvm",
            "nics": [{"nic_tag": "x", "ip": "192.0.2.1"}, {"nic_tag": "x", "ip": "dhcp", "ips": ["dhcp"]},
                     {"nic_tag": "bad tag", "model": "e1000", "vlan_id": 4095, "interface": "net7"}],
            "disks": [{"boot": true}, {"size": 0, "boot": true, "media": "cdrom"}]}));
        let (mut bad, mut props, mut missing) = lists(&r);
        bad.sort_unstable();
        props.sort_unstable();
        missing.sort_unstable();
        assert_eq!(
            bad,
            [
                "disks.1.boot",
                "disks.1.size",
                "nics.1.ip",
                "nics.2.interface",
                "nics.2.model",
                "nics.2.nic_tag",
                "nics.2.vlan_id"
            ]
        );
        assert_eq!(props, ["disks.1.media"]);
        assert_eq!(missing, ["disks.0.size", "nics.0.netmask"]);
    }

    #[test]
    fn memory_properties_must_agree() {
        let r = report(json!({"brand": "kvm", "ram": 2048, "max_physical_memory": 1024}));
        assert_eq!(lists(&r).0, ["max_physical_memory"]);
        // A swap limit below the memory limit is raised when the record is made (SmartOS's).
        validate_create(
            &json!({"brand": "joyent", "image_uuid": IMG, "max_physical_memory": 1024, "max_swap": 512}),
        )
        .unwrap_or_else(|r| panic!("{r}"));
    }

    #[test]
    fn routes_across_families_are_bad() {
        let r = report(json!({"brand": "joyent", "image_uuid": IMG,
            "routes": {"198.51.100.0/24": "2001:db8::1", "2001:db8:1::/48": "2001:db8::1"}}));
        let (bad, _, _) = lists(&r);
        assert_eq!(bad, ["routes.198.51.100.0/24"]);
    }

    #[test]
    fn routes_via_missing_nic_are_bad() {
        let r = report(json!({"brand": "joyent", "image_uuid": IMG,
            "routes": {"198.51.100.0/24": "nics[1]", "bogus": "192.0.2.1"}, "nics": [{"nic_tag": "a"}]}));
        let (mut bad, _, _) = lists(&r);
        bad.sort_unstable();
        assert_eq!(bad, ["routes.198.51.100.0/24", "routes.bogus"]);
    }

    #[test]
    fn non_object_payload_is_rejected() {
        assert_eq!(lists(&report(json!([1, 2]))).0, ["payload"]);
    }

    #[test]
    fn update_accepts_verbs_and_refuses_fixed_properties() {
        let ok = validate_update(
            &json!({"alias": "new", "set_tags": {"a": 1}, "remove_customer_metadata": ["k"],
                    "add_nics": [{"nic_tag": "admin", "ips": ["192.0.2.7/24"]}],
                    "update_nics": [{"mac": "02:00:00:00:00:01", "mtu": 1400}],
                    "remove_nics": ["02:00:00:00:00:02"]}),
            Brand::Joyent,
        )
        .expect("valid update");
        assert_eq!(ok.alias.as_deref(), Some("new"));
        let r = validate_update(
            &json!({"brand": "kvm", "uuid": IMG, "tags": {}, "nics": [], "update_nics": [{"mtu": 1}],
                    "remove_nics": ["nope"], "add_disks": [{"size": 1}]}),
            Brand::Joyent,
        )
        .expect_err("invalid update");
        let (mut bad, mut props, missing) = lists(&r);
        bad.sort_unstable();
        props.sort_unstable();
        assert_eq!(bad, ["remove_nics", "update_nics.0.mtu"]);
        assert_eq!(props, ["add_disks", "brand", "nics", "tags", "uuid"]);
        assert_eq!(missing, ["update_nics.0.mac"]);
        assert!(r.summary().contains("use set_tags"), "{}", r.summary());
        assert!(validate_update(&json!({}), Brand::Kvm).is_err());
    }

    #[test]
    fn every_table_property_deserializes_into_the_typed_payload() {
        // A payload using every create property must pass both the walker and serde, so the
        // table and the struct cannot drift apart.
        let zone = json!({
            "uuid": IMG, "alias": "a", "brand": "joyent", "hostname": "h", "autoboot": false,
            "indestructible_zoneroot": false, "delegate_dataset": true,
            "indestructible_delegated": true, "tmpfs": 64, "do_not_inventory": true,
            "filesystems": [{"type": "lofs", "source": "/srv/a", "target": "/a", "options": ["ro"]}],
            "image_uuid": IMG, "max_physical_memory": 256, "max_swap": 512, "ram": 256,
            "cpu_cap": 50, "cpu_shares": 10, "max_lwps": 100, "quota": 1, "zfs_io_priority": 5,
            "resolvers": ["192.0.2.53"], "dns_domain": "example.com", "routes": {},
            "customer_metadata": {}, "internal_metadata": {}, "tags": {}, "nics": [],
            "internal_metadata_namespaces": ["acme"],
            "init_name": "/sbin/init", "owner_uuid": IMG, "billing_id": IMG,
            "package_name": "p", "package_version": "1"
        });
        let more = json!({
            "nowait": true, "archive_on_delete": true, "maintain_resolvers": true,
            "max_locked_memory": 256, "max_shm_memory": 64, "max_shm_ids": 64,
            "max_msg_ids": 64, "max_sem_ids": 64, "flexible_disk_size": 1024,
            "fs_allowed": ["ufs", "pcfs"], "zfs_root_recsize": 8192, "zfs_data_recsize": 16384,
            "zfs_root_compression": "lz4", "zfs_data_compression": "gzip-3", "zpool": "zones",
            "zfs_filesystem_limit": 10, "zfs_snapshot_limit": 10
        });
        let mut zone = zone;
        if let (Some(z), Some(m)) = (zone.as_object_mut(), more.as_object()) {
            z.extend(m.clone());
        }
        let c = validate_create(&zone).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(
            c.fs_allowed.as_deref(),
            Some("ufs,pcfs"),
            "a list is kept as SmartOS's string"
        );
        let vm = json!({"brand": "kvm", "vcpus": 1, "kernel": "/k", "initrd": "/i", "cmdline": "",
            "disk_driver": "virtio", "nic_driver": "virtio", "cpu_type": "host", "virtio_txburst": 128, "virtio_txtimer": 200000,
            "disks": [{"image_uuid": IMG, "image_size": 10240, "image_name": "ubuntu", "uuid": IMG,
                "block_size": "8192", "refreservation": 0, "media": "disk", "compression": "off"}],
            "nics": [{"nic_tag": "admin", "ip": "dhcp", "network_uuid": IMG, "dhcp_server": true,
                "interface": "net0"}]});
        validate_create(&vm).unwrap_or_else(|r| panic!("{r}"));
        let lx =
            json!({"brand": "lx", "image_uuid": IMG, "kernel_version": "4.3.0", "docker": true});
        let c = validate_create(&lx).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(c.kernel_version.as_deref(), Some("4.3.0"));
        assert_eq!(c.docker, Some(true));
        let bundle = json!({"brand": "lx", "oci_bundle": "/run/containerd/b1"});
        let c = validate_create(&bundle).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(c.oci_bundle.as_deref(), Some("/run/containerd/b1"));
        let used: BTreeSet<&str> = zone
            .as_object()
            .into_iter()
            .chain(vm.as_object())
            .chain(lx.as_object())
            .chain(bundle.as_object())
            .flat_map(|o| o.keys().map(String::as_str))
            .collect();
        let table: BTreeSet<&str> = create_property_names().collect();
        assert_eq!(used, table);
    }

    #[test]
    fn filesystems_are_lofs_binds_of_plain_paths() {
        let zone = |fs: Value| json!({"brand": "joyent", "image_uuid": IMG, "filesystems": fs});
        let c = validate_create(&zone(json!([
            {"type": "lofs", "source": "/srv/www", "target": "/var/www/", "options": ["rw", "nosetuid"]},
            {"type": "lofs", "source": "/srv/ro", "target": "/opt/ro", "options": ["ro"]}
        ])))
        .unwrap_or_else(|r| panic!("{r}"));
        let fs = c.filesystems.expect("filesystems");
        assert!(!fs[0].read_only() && fs[1].read_only());
        for (bad, property, why) in [
            (
                json!({"type": "zfs", "source": "/a", "target": "/b"}),
                "filesystems.0.type",
                "lofs",
            ),
            (
                json!({"type": "lofs", "source": "a", "target": "/b"}),
                "filesystems.0.source",
                "absolute",
            ),
            (
                json!({"type": "lofs", "source": "/a", "target": "/"}),
                "filesystems.0.target",
                "below /",
            ),
            (
                json!({"type": "lofs", "source": "/a", "target": "/proc/x"}),
                "filesystems.0.target",
                "runtime",
            ),
            (
                json!({"type": "lofs", "source": "/a", "target": "/b/../c"}),
                "filesystems.0.target",
                "'..'",
            ),
            (
                json!({"type": "lofs", "source": "/a", "target": "/b", "options": ["ro", "rw"]}),
                "filesystems.0.options",
                "both",
            ),
            (
                json!({"type": "lofs", "source": "/a", "target": "/b", "options": ["setuid"]}),
                "filesystems.0.options",
                "setuid",
            ),
            (
                json!({"type": "lofs", "source": "/a", "target": "/b", "raw": "x"}),
                "filesystems.0.raw",
                "not supported by hull",
            ),
            (
                json!({"type": "lofs", "source": "/a", "target": "/b", "size": 1}),
                "filesystems.0.size",
                "unknown",
            ),
            (
                json!({"source": "/a", "target": "/b"}),
                "filesystems.0.type",
                "lofs",
            ),
        ] {
            let r = validate_create(&zone(json!([bad]))).expect_err("refused");
            let p = r.details.iter().find(|p| p.property == property);
            assert!(
                p.is_some_and(|p| p.message.contains(why)),
                "{property} ({why}): {r}"
            );
        }
        let r = validate_create(&zone(json!([
            {"type": "lofs", "source": "/a", "target": "/x"},
            {"type": "lofs", "source": "/b", "target": "/x/"}
        ])))
        .expect_err("two on one target");
        assert!(r.summary().contains("two filesystems target /x"), "{r}");
        // A uuid source is a volume of the zone's own (SmartOS's, Triton's docker volumes),
        // lofs or SmartOS's newer zfs; one volume is bound once.
        const VOL: &str = "5b1d3a0e-2c4f-4e6a-8b9c-0d1e2f3a4b5c";
        let c = validate_create(&zone(json!([
            {"type": "lofs", "source": VOL, "target": "/hello", "options": []},
            {"type": "zfs", "source": "6b1d3a0e-2c4f-4e6a-8b9c-0d1e2f3a4b5c", "target": "/v2"}
        ])))
        .expect("volumes");
        assert_eq!(c.filesystems.expect("filesystems")[0].source, VOL);
        let r = validate_create(&zone(json!([
            {"type": "lofs", "source": VOL, "target": "/a"},
            {"type": "lofs", "source": VOL, "target": "/b"}
        ])))
        .expect_err("one volume twice");
        assert_eq!(r.bad_values, ["filesystems.1.source"], "{r}");
        assert!(
            r.summary().contains("two filesystems name the volume"),
            "{r}"
        );
        let r = report(
            json!({"brand": "kvm", "filesystems": [], "delegate_dataset": true, "tmpfs": 1}),
        );
        let (_, mut props, _) = lists(&r);
        props.sort_unstable();
        assert_eq!(
            props,
            ["delegate_dataset", "filesystems", "tmpfs"],
            "zones only"
        );
        assert!(
            validate_update(
                &json!({"tmpfs": 128, "indestructible_delegated": true}),
                Brand::Lx
            )
            .is_ok()
        );
        assert!(validate_update(&json!({"delegate_dataset": true}), Brand::Joyent).is_err());
    }

    #[test]
    fn snapshot_names_are_smartos_shaped() {
        for good in ["a", "before-upgrade_2026.12:01%", &"x".repeat(64)] {
            assert!(validate_snapshot_name(good).is_ok(), "{good}");
        }
        for bad in ["", "bad/name", "a b", "ü", "..\\x", &"x".repeat(65)] {
            let r = validate_snapshot_name(bad).expect_err(bad);
            assert_eq!(r.bad_values, ["name"], "{bad}");
            assert!(r.summary().contains("64 characters"), "{}", r.summary());
        }
    }
}
