//! Applying a validated update to a record. Checks that need the current record (does the
//! MAC in update_nics exist? would two NICs be primary?) are made here and reported in
//! SmartOS's shape; the record is only changed when every check passes, so an update is
//! all-or-nothing.

use std::collections::HashSet;

use hull_spec::net::MacAddr;
use hull_spec::vm::{DiskSpec, NicSpec, defaults};
use hull_spec::{ValidationReport, Vm, VmUpdate};

use super::super::convert::{
    MacPool, default_primary, finish_disks, finish_nics, number_new_nics, set_remove,
};

/// Applies `u` to a copy of `vm`. Returns the new record and the changed property names.
pub fn apply(
    vm: &Vm,
    u: &VmUpdate,
    data_root: &std::path::Path,
    macs_taken_elsewhere: &dyn Fn(&MacAddr) -> bool,
) -> Result<(Vm, Vec<String>), ValidationReport> {
    let mut next = vm.clone();
    let mut changes = Vec::new();
    let mut report = ValidationReport::default();
    macro_rules! scalar {
        ($field:ident) => {
            if let Some(v) = &u.$field {
                next.$field = v.clone().into();
                changes.push(stringify!($field).to_string());
            }
        };
    }
    scalar!(alias);
    scalar!(hostname);
    scalar!(cpu_cap);
    scalar!(dns_domain);
    scalar!(kernel);
    scalar!(initrd);
    scalar!(cmdline);
    scalar!(init_name);
    scalar!(kernel_version);
    scalar!(owner_uuid);
    scalar!(billing_id);
    scalar!(package_name);
    scalar!(package_version);
    scalar!(max_locked_memory);
    scalar!(max_shm_memory);
    scalar!(max_shm_ids);
    scalar!(max_msg_ids);
    scalar!(max_sem_ids);
    scalar!(disk_driver);
    scalar!(cpu_type);
    scalar!(nic_driver);
    scalar!(flexible_disk_size);
    scalar!(fs_allowed);
    scalar!(zfs_root_recsize);
    scalar!(zfs_data_recsize);
    scalar!(zfs_root_compression);
    scalar!(zfs_data_compression);
    scalar!(zfs_filesystem_limit);
    scalar!(zfs_snapshot_limit);
    scalar!(virtio_txburst);
    scalar!(virtio_txtimer);
    macro_rules! plain {
        ($field:ident) => {
            if let Some(v) = u.$field {
                next.$field = v;
                changes.push(stringify!($field).to_string());
            }
        };
    }
    plain!(autoboot);
    plain!(indestructible_zoneroot);
    plain!(indestructible_delegated);
    plain!(do_not_inventory);
    plain!(archive_on_delete);
    plain!(maintain_resolvers);
    if let Some(mib) = u.tmpfs {
        next.tmpfs = (mib > 0).then_some(mib);
        changes.push("tmpfs".into());
    }
    plain!(cpu_shares);
    plain!(max_lwps);
    plain!(quota);
    plain!(zfs_io_priority);
    if let Some(ns) = &u.internal_metadata_namespaces {
        next.internal_metadata_namespaces = ns.clone();
        changes.push("internal_metadata_namespaces".into());
    }
    if let Some(r) = &u.resolvers {
        next.resolvers = r.clone();
        changes.push("resolvers".into());
    }
    if let Some(v) = u.vcpus {
        next.vcpus = Some(v);
        changes.push("vcpus".into());
    }
    apply_memory(&mut next, u, &mut changes, &mut report);

    if set_remove(&mut next.tags, u.set_tags.as_ref(), u.remove_tags.as_ref()) {
        changes.push("tags".into());
    }
    if set_remove(
        &mut next.customer_metadata,
        u.set_customer_metadata.as_ref(),
        u.remove_customer_metadata.as_ref(),
    ) {
        changes.push("customer_metadata".into());
    }
    if set_remove(
        &mut next.internal_metadata,
        u.set_internal_metadata.as_ref(),
        u.remove_internal_metadata.as_ref(),
    ) {
        changes.push("internal_metadata".into());
    }
    if set_remove(
        &mut next.routes,
        u.set_routes.as_ref(),
        u.remove_routes.as_ref(),
    ) {
        changes.push("routes".into());
    }

    let nics_changed = apply_nics(&mut next, u, macs_taken_elsewhere, &mut report);
    if nics_changed {
        changes.push("nics".into());
    }
    if apply_disks(&mut next, u, data_root, &mut report) {
        changes.push("disks".into());
    }
    check_routes_still_point_at_nics(&next, &mut report);
    if report.is_empty() {
        Ok((next, changes))
    } else {
        Err(report)
    }
}

fn apply_memory(next: &mut Vm, u: &VmUpdate, changes: &mut Vec<String>, r: &mut ValidationReport) {
    if next.brand.is_microvm() {
        if let Some(ram) = u.ram {
            next.ram = ram;
            changes.push("ram".into());
            if u.max_physical_memory.is_none() {
                next.max_physical_memory = next
                    .max_physical_memory
                    .max(ram + defaults::VM_MEMORY_OVERHEAD);
            }
        }
        if let Some(m) = u.max_physical_memory {
            next.max_physical_memory = m;
            changes.push("max_physical_memory".into());
        }
        if next.max_physical_memory < next.ram {
            r.bad_value(
                "max_physical_memory",
                format!(
                    "max_physical_memory ({}) must be at least ram ({})",
                    next.max_physical_memory, next.ram
                ),
            );
        }
    } else {
        // For zones ram and max_physical_memory are one setting.
        if let (Some(a), Some(b)) = (u.ram, u.max_physical_memory)
            && a != b
        {
            r.bad_value(
                "ram",
                format!("for zones ram is max_physical_memory; {a} != {b}"),
            );
        }
        if let Some(m) = u.max_physical_memory.or(u.ram) {
            next.ram = m;
            next.max_physical_memory = m;
            changes.push("max_physical_memory".into());
        }
    }
    if let Some(s) = u.max_swap {
        next.max_swap = s;
        changes.push("max_swap".into());
    }
    // The swap limit is never below the memory limit: SmartOS raises it (a raised memory
    // limit raises it too), and so does hull.
    next.max_swap = next.max_swap.max(next.max_physical_memory);
    // And the locked-memory limit never above it: SmartOS clamps it.
    next.max_locked_memory = next
        .max_locked_memory
        .map(|m| m.min(next.max_physical_memory));
}

fn nic_index(nics: &[NicSpec], mac: MacAddr) -> Option<usize> {
    nics.iter().position(|n| n.mac == Some(mac))
}

fn apply_nics(
    next: &mut Vm,
    u: &VmUpdate,
    macs_taken_elsewhere: &dyn Fn(&MacAddr) -> bool,
    r: &mut ValidationReport,
) -> bool {
    let mut changed = false;
    if let Some(remove) = &u.remove_nics {
        for (i, mac) in remove.iter().enumerate() {
            match nic_index(&next.nics, *mac) {
                Some(idx) => {
                    next.nics.remove(idx);
                    changed = true;
                }
                None => r.bad_value(
                    format!("remove_nics.{i}"),
                    format!("the VM has no NIC {mac}"),
                ),
            }
        }
    }
    if let Some(updates) = &u.update_nics {
        for (i, upd) in updates.iter().enumerate() {
            let Some(idx) = nic_index(&next.nics, upd.mac) else {
                r.bad_value(
                    format!("update_nics.{i}.mac"),
                    format!("the VM has no NIC {}", upd.mac),
                );
                continue;
            };
            let nic = &mut next.nics[idx];
            macro_rules! set {
                ($f:ident) => {
                    if let Some(v) = &upd.$f {
                        nic.$f = Some(v.clone());
                    }
                };
            }
            set!(gateway);
            set!(gateways);
            set!(vlan_id);
            set!(mtu);
            set!(model);
            set!(allow_ip_spoofing);
            set!(allow_mac_spoofing);
            set!(allow_dhcp_spoofing);
            set!(allow_restricted_traffic);
            set!(allowed_ips);
            set!(max_bandwidth);
            set!(network_uuid);
            set!(dhcp_server);
            set!(blocked_outgoing_ports);
            set!(vrrp_primary_ip);
            // A new VRID is a new MAC: the router's (SmartOS's update does the same).
            if let Some(vrid) = upd.vrrp_vrid {
                let mac = MacAddr::vrrp(vrid);
                if nic.mac != Some(mac) && macs_taken_elsewhere(&mac) {
                    r.bad_value(
                        format!("update_nics.{i}.vrrp_vrid"),
                        format!("VRID {vrid} is in use on this host: its MAC {mac} belongs to another NIC"),
                    );
                }
                nic.vrrp_vrid = Some(vrid);
                nic.mac = Some(mac);
            }
            if let Some(tag) = &upd.nic_tag {
                nic.nic_tag = tag.clone();
            }
            if upd.ips.is_some() {
                nic.ips = upd.ips.clone();
                nic.ip = None;
                nic.netmask = None;
            }
            if upd.ip.is_some() {
                nic.ip = upd.ip.clone();
                nic.ips = None;
            }
            set!(netmask);
            if upd.primary == Some(true) {
                for (j, other) in next.nics.iter_mut().enumerate() {
                    other.primary = (j == idx).then_some(true);
                }
            }
            changed = true;
        }
    }
    if let Some(add) = &u.add_nics {
        let own: HashSet<MacAddr> = next.nics.iter().filter_map(|n| n.mac).collect();
        let in_use = |m: &MacAddr| own.contains(m) || macs_taken_elsewhere(m);
        for (i, nic) in add.iter().enumerate() {
            if let Some(mac) = nic.mac
                && in_use(&mac)
            {
                r.bad_value(format!("add_nics.{i}.mac"), "this MAC is already in use");
            } else if let Some(vrid) = nic.vrrp_vrid
                && in_use(&MacAddr::vrrp(vrid))
            {
                r.bad_value(
                    format!("add_nics.{i}.vrrp_vrid"),
                    format!(
                        "VRID {vrid} is in use on this host: its MAC {} belongs to another NIC",
                        MacAddr::vrrp(vrid)
                    ),
                );
            }
        }
        let had_primary = next.nics.iter().any(|n| n.primary == Some(true));
        let existing = next.nics.len();
        let mut pool = MacPool::new(&in_use);
        match finish_nics(next.uuid, next.brand, add.clone(), &mut pool, existing) {
            Ok(mut added) => {
                for n in &mut added {
                    n.interface = None;
                }
                if had_primary && added.iter().any(|n| n.primary == Some(true)) {
                    for n in &mut next.nics {
                        n.primary = None;
                    }
                }
                next.nics.append(&mut added);
                changed = true;
            }
            Err(e) => r.bad_value("add_nics", e.to_string()),
        }
    }
    if changed {
        number_new_nics(next.brand, &mut next.nics);
        if !next.nics.iter().any(|n| n.primary == Some(true)) {
            default_primary(&mut next.nics);
        }
        hull_spec::validate::check_vrrp_nics(r, "nics", &next.nics);
        for (i, nic) in next.nics.iter().enumerate() {
            if nic.ip.as_deref().is_some_and(|ip| ip != "dhcp") && nic.netmask.is_none() {
                r.missing(format!("nics.{i}.netmask"), "a static ip needs a netmask");
            }
        }
    }
    changed
}

fn apply_disks(
    next: &mut Vm,
    u: &VmUpdate,
    data_root: &std::path::Path,
    r: &mut ValidationReport,
) -> bool {
    let mut changed = false;
    let find =
        |disks: &[DiskSpec], path: &str| disks.iter().position(|d| d.path.as_deref() == Some(path));
    if let Some(remove) = &u.remove_disks {
        for (i, path) in remove.iter().enumerate() {
            match find(&next.disks, path) {
                Some(idx) => {
                    next.disks.remove(idx);
                    changed = true;
                }
                None => r.bad_value(
                    format!("remove_disks.{i}"),
                    format!("the VM has no disk {path}"),
                ),
            }
        }
    }
    if let Some(updates) = &u.update_disks {
        for (i, upd) in updates.iter().enumerate() {
            let Some(idx) = find(&next.disks, &upd.path) else {
                r.bad_value(
                    format!("update_disks.{i}.path"),
                    format!("the VM has no disk {}", upd.path),
                );
                continue;
            };
            let disk = &mut next.disks[idx];
            if let Some(size) = upd.size {
                if disk.size.is_some_and(|old| size < old) {
                    r.bad_value(
                        format!("update_disks.{i}.size"),
                        "disks can grow but not shrink",
                    );
                }
                disk.size = Some(size);
            }
            if upd.model.is_some() {
                disk.model = upd.model.clone();
            }
            if upd.read_only.is_some() {
                disk.read_only = upd.read_only;
            }
            if upd.boot == Some(true) {
                for (j, d) in next.disks.iter_mut().enumerate() {
                    d.boot = (j == idx).then_some(true);
                }
            }
            changed = true;
        }
    }
    if let Some(add) = &u.add_disks {
        let existing = next.disks.len();
        let mut added = finish_disks(next.uuid, add.clone(), data_root, existing);
        for (i, d) in added.iter().enumerate() {
            if next.disks.iter().any(|x| x.path == d.path) {
                r.bad_value(
                    format!("add_disks.{i}.path"),
                    "the VM already has a disk at this path",
                );
            }
        }
        next.disks.append(&mut added);
        changed = true;
    }
    if next.disks.iter().filter(|d| d.boot == Some(true)).count() > 1 {
        r.bad_value("add_disks", "only one disk may be the boot disk");
    }
    changed
}

/// The disk files an update grows, as (path, bytes), checked against the files themselves:
/// the file is what the guest sees, and a record can lag it (vmmd stopped between growing
/// a file and storing the record). A size below the file's is refused like one below the
/// record's; an unchanged size grows nothing. `file_bytes` is a disk file's size, `None` when
/// there is no file to look at.
pub fn disk_growth(
    u: &VmUpdate,
    file_bytes: &dyn Fn(&str) -> Option<u64>,
    r: &mut ValidationReport,
) -> Vec<(String, u64)> {
    let mut grow = Vec::new();
    for (i, upd) in u.update_disks.iter().flatten().enumerate() {
        let Some(mib) = upd.size else {
            continue;
        };
        let Some(want) = mib.checked_mul(1 << 20) else {
            r.bad_value(format!("update_disks.{i}.size"), "size is too large");
            continue;
        };
        match file_bytes(&upd.path) {
            Some(have) if have > want => r.bad_value(
                format!("update_disks.{i}.size"),
                format!(
                    "the disk file is {} MiB; disks can grow but not shrink",
                    have >> 20
                ),
            ),
            Some(have) if have == want => {}
            _ => grow.push((upd.path.clone(), want)),
        }
    }
    grow
}

fn check_routes_still_point_at_nics(vm: &Vm, r: &mut ValidationReport) {
    for (dest, gw) in &vm.routes {
        if let Some(i) = gw
            .strip_prefix("nics[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<usize>().ok())
            && i >= vm.nics.len()
        {
            r.bad_value(
                format!("routes.{dest}"),
                format!(
                    "route {dest:?} names nics[{i}], but the VM has {} NICs",
                    vm.nics.len()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::convert::{Context, MacPool, new_record};
    use hull_spec::Brand;
    use serde_json::json;
    use std::path::Path;

    fn vm(v: serde_json::Value) -> Vm {
        new_record(
            hull_spec::validate_create(&v).expect("valid"),
            &Context::fixed(),
            &mut MacPool::new(&|_| false),
        )
        .expect("converts")
    }

    fn upd(v: serde_json::Value, brand: Brand) -> VmUpdate {
        hull_spec::validate_update(&v, brand).unwrap_or_else(|r| panic!("{r}"))
    }

    const IMG: &str = "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01";

    #[test]
    fn scalars_and_metadata_verbs() {
        let base = vm(json!({"brand": "joyent", "image_uuid": IMG, "tags": {"a": "1", "b": "2"}}));
        let u = upd(
            json!({"alias": "x", "cpu_cap": 50, "set_tags": {"c": 3}, "remove_tags": ["a"],
                           "set_customer_metadata": {"k": "v"}}),
            Brand::Joyent,
        );
        let (next, changes) = apply(&base, &u, Path::new("/d"), &|_| false).expect("applies");
        assert_eq!(next.alias.as_deref(), Some("x"));
        assert_eq!(next.cpu_cap, Some(50));
        assert_eq!(next.tags.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(next.customer_metadata["k"], "v");
        for c in ["alias", "cpu_cap", "tags", "customer_metadata"] {
            assert!(changes.contains(&c.to_string()), "{c} in {changes:?}");
        }
    }

    #[test]
    fn zone_memory_moves_ram_and_swap_together() {
        let base = vm(json!({"brand": "joyent", "image_uuid": IMG}));
        let (next, _) = apply(
            &base,
            &upd(json!({"max_physical_memory": 1024}), Brand::Joyent),
            Path::new("/d"),
            &|_| false,
        )
        .expect("applies");
        assert_eq!(
            (next.ram, next.max_physical_memory, next.max_swap),
            (1024, 1024, 1024)
        );
        // A swap limit below the memory limit is raised to it (SmartOS's), and a locked-memory
        // limit above it clamped.
        let (next, _) = apply(
            &next,
            &upd(
                json!({"max_swap": 512, "max_locked_memory": 4096}),
                Brand::Joyent,
            ),
            Path::new("/d"),
            &|_| false,
        )
        .expect("applies");
        assert_eq!((next.max_swap, next.max_locked_memory), (1024, Some(1024)));
    }

    #[test]
    fn nic_verbs_find_nics_by_mac_and_keep_one_primary() {
        let base = vm(json!({"brand": "joyent", "image_uuid": IMG, "nics": [
            {"nic_tag": "admin", "mac": "02:00:00:00:00:01", "ips": ["192.0.2.1/24"]},
            {"nic_tag": "admin", "mac": "02:00:00:00:00:02", "ips": ["192.0.2.2/24"]}]}));
        let u = upd(
            json!({"update_nics": [{"mac": "02:00:00:00:00:02", "primary": true, "mtu": 1400}],
                           "add_nics": [{"nic_tag": "internal"}]}),
            Brand::Joyent,
        );
        let (next, _) = apply(&base, &u, Path::new("/d"), &|_| false).expect("applies");
        let prim: Vec<bool> = next.nics.iter().map(|n| n.primary == Some(true)).collect();
        assert_eq!(prim, [false, true, false]);
        assert_eq!(next.nics[2].interface.as_deref(), Some("net2"));
        let u = upd(json!({"remove_nics": ["02:00:00:00:00:01"]}), Brand::Joyent);
        let (next, _) = apply(&next, &u, Path::new("/d"), &|_| false).expect("applies");
        // A NIC keeps its name: net1 stays net1, and the next one added takes net0.
        assert_eq!(next.nics[0].interface.as_deref(), Some("net1"));
        assert_eq!(next.nics[0].mac, Some(MacAddr::new([2, 0, 0, 0, 0, 2])));
        let u = upd(
            json!({"add_nics": [{"nic_tag": "a"}, {"nic_tag": "a"}]}),
            Brand::Joyent,
        );
        let (more, _) = apply(&next, &u, Path::new("/d"), &|_| false).expect("applies");
        let names: Vec<&str> = more
            .nics
            .iter()
            .filter_map(|n| n.interface.as_deref())
            .collect();
        assert_eq!(names, ["net1", "net2", "net0", "net3"]);
        let u = upd(
            json!({"remove_nics": ["02:00:00:00:00:09"], "update_nics": [{"mac": "02:00:00:00:00:08", "mtu": 1500}]}),
            Brand::Joyent,
        );
        let r = apply(&next, &u, Path::new("/d"), &|_| false).expect_err("unknown macs");
        assert_eq!(r.bad_values, ["remove_nics.0", "update_nics.0.mac"]);
        let taken = |m: &MacAddr| *m == MacAddr::new([2, 0, 0, 0, 0, 7]);
        let u = upd(
            json!({"add_nics": [{"nic_tag": "a", "mac": "02:00:00:00:00:07"}]}),
            Brand::Joyent,
        );
        let r = apply(&next, &u, Path::new("/d"), &taken).expect_err("mac in use");
        assert_eq!(r.bad_values, ["add_nics.0.mac"]);
    }

    /// VRRP NICs through update (SmartOS's test-vrrp-nics.js): one added gets its router's
    /// MAC, a VRID another NIC of the host holds is refused, vrrp_primary_ip moves to another
    /// NIC, and what would leave a VRRP NIC without its primary address's NIC, or only VRRP
    /// NICs, is refused.
    #[test]
    fn vrrp_nics_through_update() {
        let base = vm(
            json!({"brand": "joyent-minimal", "image_uuid": IMG, "nics": [
            {"nic_tag": "a", "mac": "02:00:00:00:00:01", "ips": ["172.18.1.2/24"]},
            {"nic_tag": "a", "mac": "02:00:00:00:00:03", "ips": ["172.18.1.3/24"]}]}),
        );
        let add = upd(
            json!({"add_nics": [{"nic_tag": "a", "vrrp_vrid": 3, "ips": ["172.18.1.101/24"],
                                 "vrrp_primary_ip": "172.18.1.2"}]}),
            Brand::JoyentMinimal,
        );
        let (next, _) = apply(&base, &add, Path::new("/d"), &|_| false).expect("applies");
        assert_eq!(next.nics[2].mac, Some(MacAddr::vrrp(3)));
        assert_eq!(next.nics[0].primary, Some(true));
        let taken = |m: &MacAddr| *m == MacAddr::vrrp(3);
        let r = apply(&base, &add, Path::new("/d"), &taken).expect_err("VRID in use");
        assert_eq!(r.bad_values, ["add_nics.0.vrrp_vrid"]);
        let mv = upd(
            json!({"update_nics": [{"mac": "00:00:5e:00:01:03", "vrrp_primary_ip": "172.18.1.3"}]}),
            Brand::JoyentMinimal,
        );
        let (moved, _) = apply(&next, &mv, Path::new("/d"), &|_| false).expect("applies");
        assert_eq!(moved.nics[2].vrrp_primary_ip.as_deref(), Some("172.18.1.3"));
        // A new VRID is a new MAC, unless another NIC of the host has it.
        let renumber = upd(
            json!({"update_nics": [{"mac": "00:00:5e:00:01:03", "vrrp_vrid": 4}]}),
            Brand::JoyentMinimal,
        );
        let (renumbered, _) =
            apply(&next, &renumber, Path::new("/d"), &|_| false).expect("applies");
        assert_eq!(renumbered.nics[2].mac, Some(MacAddr::vrrp(4)));
        let taken = |m: &MacAddr| *m == MacAddr::vrrp(4);
        let r = apply(&next, &renumber, Path::new("/d"), &taken).expect_err("VRID 4 in use");
        assert_eq!(r.bad_values, ["update_nics.0.vrrp_vrid"]);
        let rm = upd(
            json!({"remove_nics": ["02:00:00:00:00:03"]}),
            Brand::JoyentMinimal,
        );
        let r = apply(&moved, &rm, Path::new("/d"), &|_| false).expect_err("primary ip gone");
        assert_eq!(r.bad_values, ["nics.1.vrrp_primary_ip"]);
        let rm = upd(
            json!({"remove_nics": ["02:00:00:00:00:01", "02:00:00:00:00:03"]}),
            Brand::JoyentMinimal,
        );
        let r = apply(&next, &rm, Path::new("/d"), &|_| false).expect_err("only VRRP");
        assert!(r.bad_values.iter().any(|p| p == "nics"), "{r}");
    }

    #[test]
    fn disk_verbs() {
        let base = vm(json!({"brand": "kvm", "disks": [{"size": 100, "boot": true}]}));
        let path = base.disks[0].path.clone().expect("path");
        let u = upd(
            json!({"add_disks": [{"size": 5}], "update_disks": [{"path": path, "size": 200}]}),
            Brand::Kvm,
        );
        let (next, _) = apply(&base, &u, Path::new("/var/lib/hull"), &|_| false).expect("applies");
        assert_eq!(next.disks.len(), 2);
        assert_eq!(next.disks[0].size, Some(200));
        let u = upd(
            json!({"update_disks": [{"path": path, "size": 1}]}),
            Brand::Kvm,
        );
        let r = apply(&next, &u, Path::new("/var/lib/hull"), &|_| false).expect_err("shrink");
        assert_eq!(r.bad_values, ["update_disks.0.size"]);
    }

    #[test]
    fn disk_growth_is_checked_against_the_files() {
        let u = upd(
            json!({"update_disks": [
                {"path": "/d/a.img", "size": 200},
                {"path": "/d/b.img", "size": 100},
                {"path": "/d/c.img", "size": 50},
                {"path": "/d/d.img", "read_only": true}]}),
            Brand::Kvm,
        );
        let files = |p: &str| match p {
            "/d/a.img" => Some(100 << 20),
            "/d/b.img" => Some(100 << 20),
            "/d/c.img" => Some(60 << 20),
            _ => None,
        };
        let mut r = ValidationReport::default();
        let grow = disk_growth(&u, &files, &mut r);
        // a grows, b is already that size, c would shrink, d has no size.
        assert_eq!(grow, [("/d/a.img".to_string(), 200 << 20)]);
        assert_eq!(r.bad_values, ["update_disks.2.size"]);
        assert!(r.to_string().contains("the disk file is 60 MiB"), "{r}");
    }
}
