//! vmmd's side of the virtual switch: a guest record's nics -> the ports vswitch plumbs.
//! Blocking calls: callers use spawn_blocking.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hull_spec::net::{Cidr, netmask_prefix, parse_ip, parse_mac};
use hull_spec::{NicTag, Vm};
use hull_vswitch::{ZoneNic, bridge_name};

/// The ports of a zone's nics, in array order. A nic on a tag with a physical uplink is an
/// error naming what is missing: uplinks are not plumbed yet.
pub fn zone_nics(vm: &Vm, tags: &BTreeMap<String, NicTag>) -> Result<Vec<ZoneNic>, String> {
    let mut out = Vec::with_capacity(vm.nics.len());
    for (i, nic) in vm.nics.iter().enumerate() {
        let tag = tags
            .get(&nic.nic_tag)
            .ok_or_else(|| format!("nic {i}: nic tag {:?} does not exist", nic.nic_tag))?;
        if let Some(uplink) = &tag.uplink {
            return Err(format!(
                "nic {i}: nic tag {:?} is carried by the host interface {uplink}; uplinks are \
                 not plumbed yet (only internal switches, nictagadm add -l)",
                tag.name
            ));
        }
        let mac = nic
            .mac
            .as_deref()
            .and_then(parse_mac)
            .ok_or_else(|| format!("nic {i} has no valid mac"))?;
        let mut addrs: Vec<(IpAddr, u8)> = nic
            .ips
            .iter()
            .flatten()
            .filter_map(|s| Cidr::parse(s))
            .map(|c| (c.addr, c.prefix))
            .collect();
        if let (Some(ip), Some(prefix)) = (
            nic.ip.as_deref().and_then(parse_ip),
            nic.netmask.as_deref().and_then(netmask_prefix),
        ) {
            addrs.push((ip, prefix));
        }
        let gateways = nic
            .gateways
            .iter()
            .flatten()
            .chain(nic.gateway.iter())
            .filter_map(|g| parse_ip(g))
            .collect();
        out.push(ZoneNic {
            bridge: bridge_name(&nic.nic_tag, nic.vlan_id),
            name: nic.interface.clone().unwrap_or_else(|| format!("net{i}")),
            mac,
            mtu: nic.mtu,
            addrs,
            gateways,
            primary: nic.primary == Some(true),
        });
    }
    Ok(out)
}

/// Makes the persistent TAP of each of a microVM's `ports` (in order) and attaches it to its
/// bridge; on an error nothing of the guest's stays.
pub fn make_taps(owner: &str, uuid: &str, ports: &[ZoneNic]) -> Result<(), String> {
    let made = ports.iter().enumerate().try_for_each(|(i, port)| {
        let name = hull_vswitch::tap_name(uuid, i);
        zoned::tun::create_persistent(&name)
            .map_err(|e| format!("cannot create the TAP {name}: {e}"))?;
        hull_vswitch::attach(owner, uuid, &name, &port.bridge, port.mtu)
            .map_err(|e| zoned::run::chain(&e))
    });
    if made.is_err() {
        let _ = hull_vswitch::remove_ports(uuid);
    }
    made
}

/// Names this vmmd's data root in the aliases of its switch ports (device and inode of the
/// data root, as for spare zoneds), so vmmds on other data roots keep theirs.
pub fn owner_tag(data_root: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(data_root)
        .map(|m| format!("{:x}{:x}", m.dev(), m.ino()))
        .unwrap_or_else(|_| "unknown".into())
}
