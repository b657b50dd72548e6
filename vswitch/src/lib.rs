//! hull's virtual switch (SmartOS's Crossbow, on Linux): one bridge per (nic tag, VLAN)
//! segment, a veth pair per zone NIC (host end on the bridge, the other end moved into the
//! zone's network namespace and named there), the NIC's MAC, MTU, addresses and routes set
//! inside the zone. Everything goes through rtnetlink; no `ip` is spawned.
//!
//! Naming, so that a crash can always be cleaned up from the link names alone:
//! - bridges `hb-<tag>` or `hb-<tag>.<vlan>` (a hash when that exceeds 15 bytes);
//! - a zone NIC's host end `hv<first 10 hex digits of the guest uuid><index>`, its other
//!   end `hp...` until it is moved into the zone;
//! - a microVM NIC's TAP `ht...` (persistent, made by vmmd; zoned hands it to the VMM).
//!
//! Every host end and TAP carries the alias `hull:<owner>:<uuid>`, where the owner names the
//! vmmd's data root: several vmmds on one host (tests, a second data root) never sweep each
//! other's ports.
//!
//! A zone's veth pairs go away with its network namespace (the kernel deletes both ends when
//! the zone's last process exits); [`remove_ports`] deletes what a failed or interrupted
//! setup left in the host's namespace, and [`sweep`] does it for every guest at once.
//!
//! Each operation runs on a thread of its own with a one-thread tokio runtime (rtnetlink is
//! asynchronous), entering the zone's network namespace with setns(2) where it must: callers
//! are synchronous.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Linux's interface name limit (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Prefix of a zone NIC's host end.
const HOST_PREFIX: &str = "hv";
/// Prefix of a zone NIC's other end before it moves into the zone.
const PEER_PREFIX: &str = "hp";
/// Prefix of a microVM NIC's TAP.
const TAP_PREFIX: &str = "ht";
/// Hex digits of the guest uuid in port names.
const UUID_DIGITS: usize = 10;

/// Errors of the virtual switch, naming the link and the step.
#[derive(Debug, thiserror::Error)]
pub enum VswitchError {
    #[error("cannot {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot {what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> VswitchError {
    let what = what.into();
    move |source| VswitchError::Netlink { what, source }
}

/// One NIC of a zone, as the switch plumbs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneNic {
    /// The segment's bridge ([`bridge_name`]).
    pub bridge: String,
    /// The interface name inside the zone (net0, eth0...).
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    /// Addresses with their prefix lengths.
    pub addrs: Vec<(IpAddr, u8)>,
    /// Gateways: the primary NIC's first gateway of each family is the default route.
    pub gateways: Vec<IpAddr>,
    pub primary: bool,
}

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
    // FNV-1a: stable across builds and hosts (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in plain.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("hb-{:012x}", h & 0xffff_ffff_ffff)
}

/// The TAP of a microVM's NIC `index` (the VMM gets it open from zoned).
pub fn tap_name(uuid: &str, index: usize) -> String {
    port_name(TAP_PREFIX, uuid, index)
}

/// Attaches the existing link `name` (a microVM's TAP) to `bridge` (made if missing) with
/// `mtu`, and brings it up.
pub fn attach(
    owner: &str,
    uuid: &str,
    name: &str,
    bridge: &str,
    mtu: Option<u32>,
) -> Result<(), VswitchError> {
    let alias = port_alias(owner, uuid);
    let (name, bridge) = (name.to_string(), bridge.to_string());
    run(None, move |h| async move {
        let br = ensure_bridge(&h, &bridge).await?;
        let ix = index_of(&h, &name)
            .await?
            .ok_or_else(|| VswitchError::Invalid(format!("there is no link {name}")))?;
        quiet(&name)?;
        let mut link = LinkUnspec::new_with_index(ix).controller(br).alias(alias);
        if let Some(mtu) = mtu {
            link = link.mtu(mtu);
        }
        h.link()
            .set(link.up().build())
            .execute()
            .await
            .map_err(nl(format!("attach {name} to the bridge {bridge}")))
    })
}

/// The host end of NIC `index` of guest `uuid` (hyphens ignored).
pub fn host_port_name(uuid: &str, index: usize) -> String {
    port_name(HOST_PREFIX, uuid, index)
}

fn port_name(prefix: &str, uuid: &str, index: usize) -> String {
    let hex: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(UUID_DIGITS)
        .collect();
    format!("{prefix}{hex}{index}")
}

/// Runs `f` with an rtnetlink handle on a thread of its own, inside the network namespace of
/// process `netns_pid` when given.
fn run<T, F, Fut>(netns_pid: Option<i32>, f: F) -> Result<T, VswitchError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, VswitchError>>,
{
    let worker = std::thread::spawn(move || {
        if let Some(pid) = netns_pid {
            let path = format!("/proc/{pid}/ns/net");
            let ns = std::fs::File::open(&path).map_err(|source| VswitchError::Sys {
                what: format!("open {path}"),
                source,
            })?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                VswitchError::Sys {
                    what: format!("enter the network namespace of process {pid}"),
                    source: e.into(),
                }
            })?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| VswitchError::Sys {
                what: "start a netlink runtime".into(),
                source,
            })?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|source| VswitchError::Sys {
                    what: "open a netlink socket".into(),
                    source,
                })?;
            tokio::spawn(conn);
            f(handle).await
        })
    });
    worker
        .join()
        .map_err(|_| VswitchError::Invalid("a netlink worker thread panicked".into()))?
}

/// The index of link `name`, if it exists.
async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, VswitchError> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("look up link {name}"))(e)),
    }
}

/// Every link of the namespace the handle talks to.
async fn all_links(h: &Handle) -> Result<Vec<LinkMessage>, VswitchError> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list links"))
}

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Keeps the host out of a segment: no IPv6 on the bridge or the host end of a port, so
/// the host never sends its own router solicitations or MLD reports into the guests'
/// segment. A host without IPv6 has nothing to turn off.
fn quiet(name: &str) -> Result<(), VswitchError> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VswitchError::Sys {
            what: format!("write {path}"),
            source,
        }),
    }
}

/// Makes the bridge `name` (up) unless it exists; returns its index.
async fn ensure_bridge(h: &Handle, name: &str) -> Result<u32, VswitchError> {
    if let Some(i) = index_of(h, name).await? {
        quiet(name)?;
        return Ok(i);
    }
    match h
        .link()
        .add(LinkBridge::new(name).up().build())
        .execute()
        .await
    {
        Ok(()) => {}
        // Another start made it meanwhile.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
        Err(e) => return Err(nl(format!("create the bridge {name}"))(e)),
    }
    quiet(name)?;
    index_of(h, name)
        .await?
        .ok_or_else(|| VswitchError::Invalid(format!("the bridge {name} vanished")))
}

/// Plumbs the NICs of the zone whose init is `init_pid`: per NIC a veth pair, the host end
/// on its segment's bridge, the other end moved into the zone and set up there (name, MAC,
/// MTU, addresses), then loopback and the primary NIC's default routes. On an error
/// nothing of this guest's is left on the host ([`remove_ports`]).
pub fn plumb_zone(
    owner: &str,
    uuid: &str,
    init_pid: i32,
    nics: &[ZoneNic],
) -> Result<(), VswitchError> {
    for nic in nics {
        if nic.name.is_empty() || nic.name.len() > IFNAME_MAX || nic.name.contains('/') {
            return Err(VswitchError::Invalid(format!(
                "{:?} is not a valid interface name",
                nic.name
            )));
        }
    }
    // What an earlier start of this guest left (a crash mid-setup, before any alias) goes
    // first, or the new pair would clash with it.
    remove_ports(uuid)?;
    let result = host_side(owner, uuid, init_pid, nics).and_then(|()| zone_side(init_pid, nics));
    if result.is_err() {
        let _ = remove_ports(uuid);
    }
    result
}

fn host_side(owner: &str, uuid: &str, init_pid: i32, nics: &[ZoneNic]) -> Result<(), VswitchError> {
    let alias = port_alias(owner, uuid);
    let uuid = uuid.to_string();
    let nics = nics.to_vec();
    run(None, move |h| async move {
        for (i, nic) in nics.iter().enumerate() {
            let bridge = ensure_bridge(&h, &nic.bridge).await?;
            let host = port_name(HOST_PREFIX, &uuid, i);
            let peer = port_name(PEER_PREFIX, &uuid, i);
            let mut veth = LinkVeth::new(&host, &peer);
            if let Some(mtu) = nic.mtu {
                veth = veth.mtu(mtu);
            }
            h.link()
                .add(veth.build())
                .execute()
                .await
                .map_err(nl(format!("create the veth pair {host}/{peer}")))?;
            quiet(&host)?;
            let host_ix = index_of(&h, &host)
                .await?
                .ok_or_else(|| VswitchError::Invalid(format!("the port {host} vanished")))?;
            let peer_ix = index_of(&h, &peer)
                .await?
                .ok_or_else(|| VswitchError::Invalid(format!("the port {peer} vanished")))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(host_ix)
                        .controller(bridge)
                        .alias(alias.clone())
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("attach {host} to the bridge {}", nic.bridge)))?;
            // Moved and renamed in one request: the zone never sees the temporary name.
            h.link()
                .set(
                    LinkUnspec::new_with_index(peer_ix)
                        .setns_by_pid(init_pid as u32)
                        .name(nic.name.clone())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("move {peer} into the zone as {}", nic.name)))?;
        }
        Ok(())
    })
}

fn zone_side(init_pid: i32, nics: &[ZoneNic]) -> Result<(), VswitchError> {
    let nics = nics.to_vec();
    run(Some(init_pid), move |h| async move {
        if let Some(lo) = index_of(&h, "lo").await? {
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(nl("bring up the zone's loopback"))?;
        }
        for nic in &nics {
            let ix = index_of(&h, &nic.name).await?.ok_or_else(|| {
                VswitchError::Invalid(format!("{} did not arrive in the zone", nic.name))
            })?;
            let mut link = LinkUnspec::new_with_index(ix).address(nic.mac.to_vec());
            if let Some(mtu) = nic.mtu {
                link = link.mtu(mtu);
            }
            h.link()
                .set(link.up().build())
                .execute()
                .await
                .map_err(nl(format!("set up {} in the zone", nic.name)))?;
            for (addr, prefix) in &nic.addrs {
                h.address()
                    .add(ix, *addr, *prefix)
                    .execute()
                    .await
                    .map_err(nl(format!("add {addr}/{prefix} to {}", nic.name)))?;
            }
        }
        for nic in nics.iter().filter(|n| n.primary) {
            let Some(ix) = index_of(&h, &nic.name).await? else {
                continue;
            };
            let v4 = nic.gateways.iter().find(|g| g.is_ipv4());
            let v6 = nic.gateways.iter().find(|g| g.is_ipv6());
            for gw in [v4, v6].into_iter().flatten() {
                let route = match gw {
                    IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                        .output_interface(ix)
                        .gateway(*g)
                        .build(),
                    IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                        .output_interface(ix)
                        .gateway(*g)
                        .build(),
                };
                h.route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(nl(format!("add the default route via {gw}")))?;
            }
        }
        Ok(())
    })
}

/// Deletes the ports of guest `uuid` left in the host's namespace (a zone's own go with its
/// network namespace); returns their names.
pub fn remove_ports(uuid: &str) -> Result<Vec<String>, VswitchError> {
    let key = port_key(uuid);
    let prefixes: Vec<String> = [HOST_PREFIX, PEER_PREFIX, TAP_PREFIX]
        .iter()
        .map(|p| format!("{p}{key}"))
        .collect();
    remove_where(move |name, _| prefixes.iter().any(|p| name.starts_with(p.as_str())))
}

/// Deletes every port of `owner`'s in the host's namespace whose guest `keep` does not name
/// (given the guest's uuid): what a vmmd that died mid-setup left. A veth pair that never
/// got its alias (a crash between its creation and its attachment) goes when its guest
/// starts again or is deleted ([`remove_ports`]). Returns the names removed.
pub fn sweep(
    owner: &str,
    keep: impl Fn(&str) -> bool + Send + 'static,
) -> Result<Vec<String>, VswitchError> {
    let prefix = format!("hull:{owner}:");
    remove_where(move |_, alias| {
        alias
            .and_then(|a| a.strip_prefix(prefix.as_str()))
            .is_some_and(|uuid| !keep(uuid))
    })
}

/// The alias of a host port: whose vmmd (its data root) and which guest.
fn port_alias(owner: &str, uuid: &str) -> String {
    format!("hull:{owner}:{uuid}")
}

/// The uuid digits port names carry for guest `uuid`.
pub fn port_key(uuid: &str) -> String {
    uuid.chars()
        .filter(char::is_ascii_hexdigit)
        .take(UUID_DIGITS)
        .collect()
}

fn remove_where(
    doomed: impl Fn(&str, Option<&str>) -> bool + Send + 'static,
) -> Result<Vec<String>, VswitchError> {
    run(None, move |h| async move {
        let links = all_links(&h).await?;
        let mut removed = Vec::new();
        for msg in links {
            let Some(name) = link_name(&msg).map(str::to_string) else {
                continue;
            };
            let alias = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfAlias(s) => Some(s.as_str()),
                _ => None,
            });
            if !doomed(&name, alias) {
                continue;
            }
            match h.link().del(msg.header.index).execute().await {
                Ok(()) => removed.push(name),
                // Deleting one end of a veth pair deleted the other.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(nl(format!("delete {name}"))(e)),
            }
        }
        Ok(removed)
    })
}

/// The names of the links in the host's network namespace (for checks and tests).
pub fn host_links() -> Result<Vec<String>, VswitchError> {
    run(None, |h| async move {
        let links = all_links(&h).await?;
        Ok(links
            .iter()
            .filter_map(|m| link_name(m).map(str::to_string))
            .collect())
    })
}

/// Deletes the bridge `name` if it exists and has no port left.
pub fn remove_bridge_if_unused(name: &str) -> Result<bool, VswitchError> {
    let name = name.to_string();
    run(None, move |h| async move {
        let Some(ix) = index_of(&h, &name).await? else {
            return Ok(false);
        };
        let links = all_links(&h).await?;
        let used = links.iter().any(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == ix))
        });
        if used {
            return Ok(false);
        }
        h.link()
            .del(ix)
            .execute()
            .await
            .map_err(nl(format!("delete the bridge {name}")))?;
        Ok(true)
    })
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
        assert_eq!(port_key(uuid), "1a2b3c4d5e");
    }
}
