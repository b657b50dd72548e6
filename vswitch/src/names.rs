//! Names and aliases: what every link the switch makes is called, so that a crash can
//! always be cleaned up from the link names alone, and the aliases that say whose it is.
//!
//! Pure functions of their arguments, stable across builds and hosts (FNV, never std's
//! hasher): a name must never change meaning between versions, or the sweep of a newer
//! vmmd would miss what an older one left. Nothing here talks to the kernel.

/// Linux's interface name limit (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Prefix of a zone NIC's host end.
pub(crate) const HOST_PREFIX: &str = "hv";
/// Prefix of a zone NIC's other end while it was made on the host (earlier versions; swept).
pub(crate) const PEER_PREFIX: &str = "hp";
/// Prefix of a microVM NIC's TAP.
pub(crate) const TAP_PREFIX: &str = "ht";
/// Prefix of a port's IFB (the cap on what its guest sends).
pub(crate) const IFB_PREFIX: &str = "hi";
/// Hex digits of the guest uuid in port names.
const UUID_DIGITS: usize = 10;

/// The bridge of a (nic tag, VLAN) segment: `hb-<tag>[.<vlan>]`, or `hb-` and a hash of both
/// when that does not fit in an interface name.
pub fn bridge_name(tag: &str, vlan: Option<u16>) -> String {
    let plain = match vlan {
        Some(v) if v > 0 => format!("hb-{tag}.{v}"),
        _ => format!("hb-{tag}"),
    };
    if plain.len() <= IFNAME_MAX && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return plain;
    }
    format!("hb-{:012x}", fnv(&plain) & 0xffff_ffff_ffff)
}

/// The 802.1Q sub-interface carrying VLAN `vlan` of `iface`.
pub fn vlan_name(iface: &str, vlan: u16) -> String {
    let plain = format!("{iface}.{vlan}");
    if plain.len() <= IFNAME_MAX {
        return plain;
    }
    format!("hu{:08x}.{vlan}", fnv(iface) & 0xffff_ffff)
}

/// FNV-1a: stable across builds and hosts (std's hasher is not).
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The TAP of a microVM's NIC number `n` (the VMM gets it open from zoned).
pub fn tap_name(uuid: &str, n: usize) -> String {
    port_name(TAP_PREFIX, uuid, n)
}

/// The host end of NIC number `n` of guest `uuid` (hyphens ignored).
pub fn host_port_name(uuid: &str, n: usize) -> String {
    port_name(HOST_PREFIX, uuid, n)
}

/// The IFB of NIC number `n` of guest `uuid`.
pub fn ifb_name(uuid: &str, n: usize) -> String {
    port_name(IFB_PREFIX, uuid, n)
}

pub(crate) fn port_name(prefix: &str, uuid: &str, n: usize) -> String {
    format!("{prefix}{}{n}", port_key(uuid))
}

/// The uuid digits port names carry for guest `uuid`.
pub fn port_key(uuid: &str) -> String {
    uuid.chars()
        .filter(char::is_ascii_hexdigit)
        .take(UUID_DIGITS)
        .collect()
}

/// The alias of a guest's port: whose vmmd (its data root) and which guest.
pub(crate) fn port_alias(owner: &str, uuid: &str) -> String {
    format!("hull:{owner}:{uuid}")
}

/// The alias of what a nic tag's segments are made of (bridges, VLAN sub-interfaces).
pub(crate) fn tag_alias(owner: &str, tag: &str) -> String {
    format!("hull-tag:{owner}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_an_interface_name_and_are_stable() {
        assert_eq!(bridge_name("admin", None), "hb-admin");
        assert_eq!(bridge_name("admin", Some(0)), "hb-admin");
        assert_eq!(bridge_name("admin", Some(42)), "hb-admin.42");
        let long = bridge_name("a-very-long-tag", Some(4094));
        assert!(long.len() <= IFNAME_MAX, "{long}");
        assert_eq!(long, bridge_name("a-very-long-tag", Some(4094)));
        assert_ne!(long, bridge_name("a-very-long-tag", Some(4093)));
        let uuid = "1a2b3c4d-5e6f-4a1b-9c2d-3e4f5a6b7c8d";
        assert_eq!(host_port_name(uuid, 0), "hv1a2b3c4d5e0");
        assert_eq!(host_port_name(uuid, 9).len(), 13);
        assert!(port_name(PEER_PREFIX, uuid, 99).len() <= IFNAME_MAX);
        assert_eq!(ifb_name(uuid, 1), "hi1a2b3c4d5e1");
        assert_eq!(port_key(uuid), "1a2b3c4d5e");
        assert_eq!(vlan_name("eth0", 7), "eth0.7");
        let v = vlan_name("enp0s31f6abcdef", 4094);
        assert!(v.len() <= IFNAME_MAX && v.ends_with(".4094"), "{v}");
    }
}
