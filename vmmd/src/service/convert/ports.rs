//! Record NICs -> switch ports: the segment each NIC's tag names, its anti-spoofing guard
//! and cap, its interface name inside the zone, and the record's static routes. The one
//! place where NIC specs become hull_vswitch configs. Pure: making the ports is
//! [`crate::service::network`]'s and the switch's.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use hull_spec::net::{Cidr, netmask_prefix, parse_ip};
use hull_spec::validate::nic_route_index;
use hull_spec::vm::NicSpec;
use hull_spec::{NicTag, Vm};
use hull_vmm_proto::{DhcpLease, DhcpRoute};
use hull_vswitch::{Guard, PortConfig, RouteVia, Segment, Uplink, ZoneNic, ZoneRoute, bridge_name};

use super::interface_number;

/// Why a record's NICs or routes do not make switch ports. Validation makes records whose
/// NICs and routes convert; these name what changed behind it (a deleted nic tag) or what
/// a hand-edited record broke.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    /// A NIC names a nic tag the host does not have.
    #[error("nic {index}: nic tag {tag:?} does not exist")]
    UnknownTag { index: usize, tag: String },
    /// A NIC has no MAC, or one that does not parse.
    #[error("nic {0} has no valid mac")]
    NoMac(usize),
    /// A NIC's MAC is multicast (SmartOS's create keeps one when autoboot is false).
    #[error(
        "nics.{index}.mac {mac} is a multicast address, which no NIC can own (Linux refuses it, \
         as illumos does); replace the NIC with one of a unicast mac (vmadm update: \
         remove_nics, add_nics)"
    )]
    MulticastMac {
        index: usize,
        mac: hull_spec::net::MacAddr,
    },
    /// A route's destination is neither an IP nor a CIDR.
    #[error("route {dest:?}: bad destination")]
    BadDestination { dest: String },
    /// A route leads out of a NIC the record lacks.
    #[error("route {dest:?} names nics[{index}], which the VM lacks")]
    NoSuchNic { dest: String, index: usize },
    /// A route's gateway is not an IP.
    #[error("route {dest:?}: bad gateway {gateway:?}")]
    BadGateway { dest: String, gateway: String },
}

/// The number of NIC `index` of a record (net<n>): what names its links.
pub fn nic_number(nic: &NicSpec, index: usize) -> usize {
    interface_number(nic).unwrap_or(index)
}

/// The interface name NIC `index` of a record has inside its zone (net<n>, or eth<n> for lx).
fn interface_name(nic: &NicSpec, index: usize) -> String {
    nic.interface
        .clone()
        .unwrap_or_else(|| format!("net{}", nic_number(nic, index)))
}

/// A record's static routes (`routes`: destination IP or CIDR -> gateway IP or `nics[N]`,
/// N an index into its nics) as the switch sets them in the zone. Validation made them
/// well-formed; what is not is an error naming the route.
pub fn zone_routes(vm: &Vm) -> Result<Vec<ZoneRoute>, PortsError> {
    vm.routes
        .iter()
        .map(|(dest, gw)| {
            let (dest_ip, prefix) = match Cidr::parse(dest) {
                Some(c) => (c.addr, c.prefix),
                None => {
                    let ip = parse_ip(dest)
                        .ok_or_else(|| PortsError::BadDestination { dest: dest.clone() })?;
                    (ip, if ip.is_ipv4() { 32 } else { 128 })
                }
            };
            let via = match nic_route_index(gw) {
                Some(i) => {
                    RouteVia::Interface(vm.nics.get(i).map(|n| interface_name(n, i)).ok_or_else(
                        || PortsError::NoSuchNic {
                            dest: dest.clone(),
                            index: i,
                        },
                    )?)
                }
                None => RouteVia::Gateway(parse_ip(gw).ok_or_else(|| PortsError::BadGateway {
                    dest: dest.clone(),
                    gateway: gw.clone(),
                })?),
            };
            Ok(ZoneRoute {
                dest: dest_ip,
                prefix,
                via,
            })
        })
        .collect()
}

/// How long a microVM's DHCP lease lasts: the guest renews every half hour, so an address
/// changed by `vmadm update` reaches it within that time (or at its next boot).
pub const DHCP_LEASE_SECS: u32 = 3600;

/// The DHCP leases the VMM gives a microVM's NICs (SmartOS's KVM DHCP): a NIC's first static
/// IPv4 address (`ips`, else the legacy `ip` + `netmask`), its gateways if it is the primary
/// NIC (the one default route), the guest's IPv4 resolvers, hostname and DNS domain, its
/// MTU, and the record's IPv4 static routes (a route through `nics[N]` only on that NIC, as
/// on-link). A NIC with no static IPv4 address (`dhcp`, `addrconf`, IPv6 only) gets none:
/// its network answers for it.
pub fn dhcp_leases(vm: &Vm) -> Result<Vec<DhcpLease>, PortsError> {
    let routes = zone_routes(vm)?;
    let v4 = |s: &str| match parse_ip(s) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let dns: Vec<Ipv4Addr> = vm.resolvers.iter().filter_map(|r| v4(r)).collect();
    let primary = vm
        .nics
        .iter()
        .position(|n| n.primary == Some(true))
        .unwrap_or(0);
    let mut out = Vec::new();
    for (i, nic) in vm.nics.iter().enumerate() {
        let listed = nic.ips.iter().flatten().find_map(|s| match Cidr::parse(s) {
            Some(Cidr {
                addr: IpAddr::V4(a),
                prefix,
            }) => Some((a, prefix)),
            _ => None,
        });
        let legacy = || {
            let ip = nic.ip.as_deref().and_then(v4)?;
            Some((ip, nic.netmask.as_deref().and_then(netmask_prefix)?))
        };
        // A VRRP NIC's address is the virtual router's, which the guest's VRRP daemon holds
        // only while it is the master: no lease for it.
        let Some((address, prefix)) = listed.or_else(legacy).filter(|_| !nic.is_vrrp()) else {
            continue;
        };
        let routers = match i == primary {
            true => nic
                .gateways
                .iter()
                .flatten()
                .chain(nic.gateway.iter())
                .filter_map(|g| v4(g))
                .collect(),
            false => Vec::new(),
        };
        let name = interface_name(nic, i);
        let nic_routes = routes
            .iter()
            .filter_map(|r| {
                let IpAddr::V4(dest) = r.dest else {
                    return None;
                };
                let via = match &r.via {
                    RouteVia::Interface(n) if *n == name => Ipv4Addr::UNSPECIFIED,
                    RouteVia::Gateway(IpAddr::V4(g)) if i == primary => *g,
                    _ => return None,
                };
                Some(DhcpRoute {
                    dest,
                    prefix: r.prefix,
                    via,
                })
            })
            .collect();
        out.push(DhcpLease {
            nic: i,
            address,
            prefix,
            routers,
            dns: dns.clone(),
            hostname: vm.hostname.clone(),
            domain: vm.dns_domain.clone(),
            routes: nic_routes,
            mtu: nic.mtu.and_then(|m| u16::try_from(m).ok()),
            lease_secs: DHCP_LEASE_SECS,
        });
    }
    Ok(out)
}

/// What NIC `nic` may send (see hull_vswitch::guard for the rules).
pub fn guard(nic: &NicSpec, mac: [u8; 6]) -> Guard {
    // A VRRP NIC also sends as its primary address (SmartOS's allowed-ips for it): its
    // advertisements come from there.
    let ips: Vec<&str> = nic
        .ips
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(nic.ip.as_deref())
        .chain(nic.vrrp_primary_ip.as_deref())
        .collect();
    let dhcp = ips.contains(&"dhcp");
    let addrconf = ips.contains(&"addrconf");
    let mut own: Vec<(IpAddr, u8)> = ips
        .iter()
        .filter_map(|s| Cidr::parse(s).map(|c| c.addr).or_else(|| parse_ip(s)))
        .map(|a| (a, if a.is_ipv4() { 32 } else { 128 }))
        .collect();
    let allowed: Vec<(IpAddr, u8)> = nic
        .allowed_ips
        .iter()
        .flatten()
        .filter_map(|s| {
            Cidr::parse(s)
                .map(|c| (c.addr, c.prefix))
                .or_else(|| parse_ip(s).map(|a| (a, if a.is_ipv4() { 32 } else { 128 })))
        })
        .collect();
    let spoof = nic.allow_ip_spoofing == Some(true);
    let allowed4 = allowed.iter().any(|(a, _)| a.is_ipv4());
    let allowed6 = allowed.iter().any(|(a, _)| a.is_ipv6());
    own.extend(allowed);
    // A family whose address a DHCP server or SLAAC hands out is not held to one unless
    // allowed_ips bound it: hull cannot know the lease.
    let ipv4 = (!spoof && (!dhcp || allowed4)).then(|| {
        own.iter()
            .filter_map(|(a, p)| match a {
                IpAddr::V4(a) => Some((*a, *p)),
                IpAddr::V6(_) => None,
            })
            .collect()
    });
    let ipv6 = (!spoof && (!addrconf || allowed6)).then(|| {
        own.iter()
            .filter_map(|(a, p)| match a {
                IpAddr::V6(a) => Some((*a, *p)),
                IpAddr::V4(_) => None,
            })
            .collect()
    });
    Guard {
        mac,
        ipv4,
        ipv6,
        any_mac: nic.allow_mac_spoofing == Some(true),
        // SmartOS's dhcp_server and allow_dhcp_spoofing open the same guard.
        dhcp_server: nic.allow_dhcp_spoofing == Some(true) || nic.dhcp_server == Some(true),
        any_ethertype: nic.allow_restricted_traffic == Some(true),
        blocked_ports: nic.blocked_outgoing_ports.clone().unwrap_or_default(),
    }
}

/// The ports of a guest's nics, in array order: a zone's veth NICs, or (for a microVM, whose
/// addresses are its own business) the same configs whose `port` vswitch gives its TAP.
pub fn zone_nics(vm: &Vm, tags: &BTreeMap<String, NicTag>) -> Result<Vec<ZoneNic>, PortsError> {
    let mut out = Vec::with_capacity(vm.nics.len());
    for (i, nic) in vm.nics.iter().enumerate() {
        let tag = tags
            .get(&nic.nic_tag)
            .ok_or_else(|| PortsError::UnknownTag {
                index: i,
                tag: nic.nic_tag.clone(),
            })?;
        let mac = nic.mac.ok_or(PortsError::NoMac(i))?;
        if !mac.is_usable() {
            return Err(PortsError::MulticastMac { index: i, mac });
        }
        let mac = mac.bytes();
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
        let number = nic_number(nic, i);
        let vlan = nic.vlan_id.filter(|v| *v > 0);
        out.push(ZoneNic {
            port: PortConfig {
                uuid: vm.uuid.to_string(),
                number,
                segment: Segment {
                    tag: nic.nic_tag.clone(),
                    bridge: bridge_name(&nic.nic_tag, vlan),
                    uplink: tag.uplink.as_ref().map(|iface| Uplink {
                        iface: iface.clone(),
                        vlan,
                    }),
                },
                mtu: nic.mtu,
                guard: guard(nic, mac),
                cap_mbps: nic.max_bandwidth,
            },
            name: interface_name(nic, i),
            mac,
            addrs,
            gateways,
            primary: nic.primary == Some(true),
            vrrp: nic.is_vrrp(),
        });
    }
    Ok(out)
}

/// The link name and guard of every port of `vm` (TAPs for microVMs, veth host ends for
/// zones), for the anti-spoofing table vmmd loads at start.
pub fn guarded_ports(vm: &Vm, tags: &BTreeMap<String, NicTag>) -> Vec<(String, Guard)> {
    // A record whose nics no longer convert (a tag deleted behind vmmd's back) has no port
    // to guard; its ports, if any, are swept as strays are not: they keep no entries.
    let Ok(nics) = zone_nics(vm, tags) else {
        return Vec::new();
    };
    nics.into_iter()
        .map(|n| {
            let name = if vm.brand.is_microvm() {
                n.port.tap()
            } else {
                n.port.host()
            };
            (name, n.port.guard)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(v: serde_json::Value) -> NicSpec {
        serde_json::from_value(v).expect("nic")
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn a_nic_may_send_from_its_addresses_and_allowed_ips() {
        let g = guard(
            &nic(
                serde_json::json!({"nic_tag": "a", "ips": ["192.0.2.5/24", "2001:db8::5/64"],
                "allowed_ips": ["198.51.100.0/25", "203.0.113.7", "2001:db8:1::/48"]}),
            ),
            MAC,
        );
        assert_eq!(
            g.ipv4,
            Some(vec![
                ("192.0.2.5".parse().expect("ip"), 32),
                ("198.51.100.0".parse().expect("ip"), 25),
                ("203.0.113.7".parse().expect("ip"), 32),
            ])
        );
        assert_eq!(
            g.ipv6,
            Some(vec![
                ("2001:db8::5".parse().expect("ip"), 128),
                ("2001:db8:1::".parse().expect("ip"), 48),
            ])
        );
        assert!(!g.any_mac && !g.dhcp_server && !g.any_ethertype);
        let legacy = guard(
            &nic(
                serde_json::json!({"nic_tag": "a", "ip": "192.0.2.6", "netmask": "255.255.255.0"}),
            ),
            MAC,
        );
        assert_eq!(
            legacy.ipv4,
            Some(vec![("192.0.2.6".parse().expect("ip"), 32)])
        );
        assert_eq!(legacy.ipv6, Some(vec![]), "only the link-local address");
    }

    /// SmartOS's VRRP NIC: the router's MAC, its primary address among what it may send
    /// from, left down in the zone, no DHCP lease (its address is the virtual router's), and
    /// the primary NIC the first one that is not a VRRP NIC.
    #[test]
    fn a_vrrp_nic_gets_its_router_mac_and_sends_as_its_primary_address() {
        use crate::service::convert::{Context, MacPool, new_record};
        let payload = serde_json::json!({
            "brand": "joyent-minimal", "image_uuid": "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01",
            "nics": [
                {"nic_tag": "a", "vrrp_vrid": 18, "ip": "172.18.1.101", "netmask": "255.255.255.0",
                 "vrrp_primary_ip": "172.18.1.2"},
                {"nic_tag": "a", "ip": "172.18.1.2", "netmask": "255.255.255.0",
                 "gateway": "172.18.1.1"}]});
        let vm = new_record(
            hull_spec::validate_create(&payload).expect("valid"),
            &Context::fixed(),
            &mut MacPool::new(&|_| false),
        )
        .expect("converts");
        assert_eq!(
            vm.nics[0].mac.map(|m| m.to_string()).as_deref(),
            Some("00:00:5e:00:01:12")
        );
        assert_eq!((vm.nics[0].primary, vm.nics[1].primary), (None, Some(true)));
        let tag = NicTag {
            name: "a".into(),
            uplink: None,
        };
        let tags = BTreeMap::from([("a".to_string(), tag)]);
        let nics = zone_nics(&vm, &tags).expect("ports");
        assert!(nics[0].vrrp && !nics[1].vrrp);
        let mut sends: Vec<String> = nics[0]
            .port
            .guard
            .ipv4
            .iter()
            .flatten()
            .map(|(a, _)| a.to_string())
            .collect();
        sends.sort();
        assert_eq!(sends, ["172.18.1.101", "172.18.1.2"]);
        let leases = dhcp_leases(&vm).expect("leases");
        assert_eq!(leases.iter().map(|l| l.nic).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn routes_lead_through_a_gateway_or_out_of_a_nic_by_its_interface() {
        use crate::service::convert::{Context, MacPool, new_record};
        let payload = serde_json::json!({
            "brand": "joyent", "image_uuid": "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01",
            "nics": [{"nic_tag": "a"}, {"nic_tag": "b"}],
            "routes": {"198.51.100.0/24": "192.0.2.1", "203.0.113.9": "nics[1]",
                       "2001:db8:1::/48": "2001:db8::1"}});
        let mut vm = new_record(
            hull_spec::validate_create(&payload).expect("valid"),
            &Context::fixed(),
            &mut MacPool::new(&|_| false),
        )
        .expect("converts");
        // The second NIC keeps the name it was given, whatever its place in the array.
        vm.nics[1].interface = Some("net3".into());
        let mut got = zone_routes(&vm).expect("routes");
        got.sort_by_key(|r| r.dest.to_string());
        assert_eq!(
            got,
            [
                ZoneRoute {
                    dest: "198.51.100.0".parse().expect("ip"),
                    prefix: 24,
                    via: RouteVia::Gateway("192.0.2.1".parse().expect("ip")),
                },
                ZoneRoute {
                    dest: "2001:db8:1::".parse().expect("ip"),
                    prefix: 48,
                    via: RouteVia::Gateway("2001:db8::1".parse().expect("ip")),
                },
                ZoneRoute {
                    dest: "203.0.113.9".parse().expect("ip"),
                    prefix: 32,
                    via: RouteVia::Interface("net3".into()),
                },
            ]
        );
        vm.routes.insert("192.0.2.99".into(), "nics[2]".into());
        assert_eq!(
            zone_routes(&vm).expect_err("no nics[2]").to_string(),
            "route \"192.0.2.99\" names nics[2], which the VM lacks"
        );
    }

    #[test]
    fn dhcp_and_addrconf_lift_their_family_unless_allowed_ips_bound_it() {
        let g = guard(
            &nic(serde_json::json!({"nic_tag": "a", "ips": ["dhcp", "addrconf"]})),
            MAC,
        );
        assert_eq!((g.ipv4, g.ipv6), (None, None));
        let g = guard(
            &nic(
                serde_json::json!({"nic_tag": "a", "ip": "dhcp", "allowed_ips": ["192.0.2.0/24"]}),
            ),
            MAC,
        );
        assert_eq!(g.ipv4, Some(vec![("192.0.2.0".parse().expect("ip"), 24)]));
        let g = guard(
            &nic(serde_json::json!({"nic_tag": "a", "ips": ["192.0.2.5/24"],
                "allow_ip_spoofing": true, "allow_mac_spoofing": true,
                "allow_dhcp_spoofing": true, "allow_restricted_traffic": true})),
            MAC,
        );
        assert_eq!((g.ipv4, g.ipv6), (None, None));
        assert!(g.any_mac && g.dhcp_server && g.any_ethertype);
    }
}
