//! Guest ports: a zone NIC's veth pair (host end on its bridge, the other end made inside
//! the zone's network namespace with its name, MAC, MTU, addresses and routes) and a
//! microVM NIC's TAP (made by vmmd, attached here); their anti-spoofing entries and caps,
//! and live changes to a running zone's NICs ([`ZoneChange`]).
//!
//! A port is all or nothing: on an error none of the links an operation made stays on the
//! host. It must never touch a link outside the guest it was given, add routes the zone
//! did not ask for, or load the anti-spoofing table other than through the [`Switch`]
//! (which knows whether it is loaded).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkIfb, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::guard::{self, Guard};
use crate::names::{
    IFB_PREFIX, IFNAME_MAX, PEER_PREFIX, host_port_name, port_alias, port_name, tap_name,
};
use crate::netlink::{
    Ctx, delete_link, errno_of, index_of, is_link_local, nf, nl, quiet, run, set_alias,
};
use crate::segment::{Segment, ensure_segment};
use crate::switch::Switch;
use crate::{VswitchError, tc};

/// One guest port: a zone NIC's host end or a microVM NIC's TAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// The guest's uuid (its first digits name the port's links).
    pub uuid: String,
    /// The NIC's number (net<n>, eth<n>).
    pub number: usize,
    pub segment: Segment,
    pub mtu: Option<u32>,
    /// What the guest may send.
    pub guard: Guard,
    /// Cap in Mbit/s, each way.
    pub cap_mbps: Option<u32>,
}

impl PortConfig {
    /// The host end of a zone NIC.
    pub fn host(&self) -> String {
        host_port_name(&self.uuid, self.number)
    }

    /// The TAP of a microVM NIC.
    pub fn tap(&self) -> String {
        tap_name(&self.uuid, self.number)
    }

    fn peer(&self) -> String {
        port_name(PEER_PREFIX, &self.uuid, self.number)
    }

    fn ifb(&self) -> String {
        port_name(IFB_PREFIX, &self.uuid, self.number)
    }
}

/// One NIC of a zone, as the switch plumbs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneNic {
    /// Its port on the host.
    pub port: PortConfig,
    /// The interface name inside the zone (net0, eth0...).
    pub name: String,
    pub mac: [u8; 6],
    /// Addresses with their prefix lengths.
    pub addrs: Vec<(IpAddr, u8)>,
    /// Gateways: the primary NIC's first gateway of each family is the default route.
    pub gateways: Vec<IpAddr>,
    pub primary: bool,
    /// A VRRP NIC (SmartOS's `vrrp_vrid`): plumbed with its addresses but left down, for the
    /// zone's VRRP daemon to raise while it is the master (as illumos's vrrpd does).
    pub vrrp: bool,
}

/// A static route of a zone (SmartOS's `routes`): to `dest`/`prefix` through a gateway, or
/// straight out of one of its NICs (`nics[N]`: the destination is on that link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneRoute {
    pub dest: IpAddr,
    pub prefix: u8,
    pub via: RouteVia,
}

/// Where a [`ZoneRoute`] leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteVia {
    /// A next hop (on one of the zone's subnets).
    Gateway(IpAddr),
    /// The zone's interface of that name (net0...): a link route.
    Interface(String),
}

/// How a running zone's NICs change: `old` as plumbed, `new` as wanted (NICs matched by
/// their port's number).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ZoneChange {
    /// NICs to plumb.
    pub added: Vec<ZoneNic>,
    /// NICs to remove (their links go, and with them the zone's end).
    pub removed: Vec<ZoneNic>,
    /// (old, new) pairs that differ.
    pub changed: Vec<(ZoneNic, ZoneNic)>,
    /// Whether the routes must be set again (the primary NIC, its gateways or the static
    /// routes changed).
    pub routes: bool,
    /// The primary NIC after the change (whose gateways make the default routes).
    pub primary: Option<ZoneNic>,
    /// The static routes after the change.
    pub static_routes: Vec<ZoneRoute>,
}

impl ZoneChange {
    pub fn between(old: &[ZoneNic], new: &[ZoneNic]) -> ZoneChange {
        let find = |list: &[ZoneNic], n: usize| list.iter().find(|x| x.port.number == n).cloned();
        let mut c = ZoneChange::default();
        for o in old {
            match find(new, o.port.number) {
                None => c.removed.push(o.clone()),
                Some(n) if n != *o => c.changed.push((o.clone(), n)),
                Some(_) => {}
            }
        }
        for n in new {
            if find(old, n.port.number).is_none() {
                c.added.push(n.clone());
            }
        }
        let gw = |list: &[ZoneNic]| -> Vec<(String, Vec<IpAddr>)> {
            list.iter()
                .filter(|n| n.primary)
                .map(|n| (n.name.clone(), n.gateways.clone()))
                .collect()
        };
        c.routes = gw(old) != gw(new);
        c.primary = new.iter().find(|n| n.primary).cloned();
        c
    }

    /// The same change with the zone's static routes going from `old` to `new`.
    pub fn routing(mut self, old: &[ZoneRoute], new: &[ZoneRoute]) -> ZoneChange {
        self.routes |= old != new;
        self.static_routes = new.to_vec();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty() && !self.routes
    }
}

impl Switch {
    /// Plumbs `nics` of zone `uuid`, whose init is `init_pid`: per NIC a veth pair whose zone
    /// end is made inside the zone (name, MAC, MTU), the host end on its segment's bridge
    /// (guarded, capped), then in the zone loopback, the NICs up with their addresses, and the
    /// primary NIC's default routes. Used at start (all of a zone's NICs) and by add_nics (the
    /// new ones). On an error none of these NICs' links is left on the host.
    pub fn plumb_zone(
        &self,
        uuid: &str,
        init_pid: i32,
        nics: &[ZoneNic],
        routes: &[ZoneRoute],
    ) -> Result<(), VswitchError> {
        check_names(nics)?;
        if let Some(other) = nics.iter().find(|n| n.port.uuid != uuid) {
            return Err(VswitchError::Invalid(format!(
                "a NIC of guest {} is not one of guest {uuid}'s",
                other.port.uuid
            )));
        }
        let (sw, nics, routes) = (self.clone(), nics.to_vec(), routes.to_vec());
        run(move |mut ctx| async move {
            let result = plumb(&mut ctx, &sw, init_pid, &nics, Some(&routes)).await;
            if result.is_err() {
                for nic in &nics {
                    let _ = remove_port_links(&ctx.h, &nic.port).await;
                }
                let _ = sw.collect_guards(&mut ctx).await;
            }
            result
        })
    }

    /// Makes the persistent TAP of each of microVM `uuid`'s `ports` (in order) and puts it on
    /// its segment's bridge, guarded and capped. All or nothing: on an error none of the
    /// guest's ports is left.
    pub fn add_taps(&self, uuid: &str, ports: &[PortConfig]) -> Result<(), VswitchError> {
        if let Some(other) = ports.iter().find(|p| p.uuid != uuid) {
            return Err(VswitchError::Invalid(format!(
                "a port of guest {} is not one of guest {uuid}'s",
                other.uuid
            )));
        }
        let made = ports.iter().try_for_each(|port| self.add_tap(port));
        if made.is_err() {
            let _ = self.remove_ports(uuid);
        }
        made
    }

    /// Makes one TAP and attaches it; on an error the TAP is deleted.
    fn add_tap(&self, port: &PortConfig) -> Result<(), VswitchError> {
        let name = port.tap();
        hull_sys::tun::create_persistent(&name).map_err(|source| VswitchError::Sys {
            what: format!("create the TAP {name}"),
            source,
        })?;
        let (sw, port) = (self.clone(), port.clone());
        run(move |mut ctx| async move {
            let result = async {
                let ix = index_of(&ctx.h, &name)
                    .await?
                    .ok_or_else(|| VswitchError::Invalid(format!("there is no link {name}")))?;
                join_port(&mut ctx, &sw, &name, ix, &port).await
            }
            .await;
            if result.is_err() {
                let _ = remove_port_links(&ctx.h, &port).await;
                let _ = sw.collect_guards(&mut ctx).await;
            }
            result
        })
    }

    /// Applies `change` to the running zone whose init is `init_pid`: removed NICs' links are
    /// deleted (with their elements, qdiscs and IFBs), added ones plumbed, changed ones moved
    /// to their new segment, their MTU, addresses, guard (in one nf_tables transaction) and
    /// cap set, and the routes set again when the primary NIC, its gateways or the static routes
    /// changed.
    pub fn update_zone(&self, init_pid: i32, change: &ZoneChange) -> Result<(), VswitchError> {
        check_names(&change.added)?;
        let (sw, change) = (self.clone(), change.clone());
        run(move |mut ctx| async move {
            for nic in &change.removed {
                remove_port_links(&ctx.h, &nic.port).await?;
            }
            sw.collect_guards(&mut ctx).await?;
            for (old, new) in &change.changed {
                change_port(&mut ctx, &sw, &new.port.host(), old.port.clone(), &new.port).await?;
            }
            // The new NICs without routes: those are set below, once, for the whole zone.
            let plumbed = plumb(&mut ctx, &sw, init_pid, &change.added, None).await;
            if plumbed.is_err() {
                for nic in &change.added {
                    let _ = remove_port_links(&ctx.h, &nic.port).await;
                }
                let _ = sw.collect_guards(&mut ctx).await;
            }
            plumbed?;
            let zone = ctx.enter(init_pid).await?;
            for (old, new) in &change.changed {
                change_in_zone(&zone, old, new).await?;
            }
            if change.routes {
                del_routes(&zone).await?;
                add_routes(&zone, change.primary.as_ref(), &change.static_routes).await?;
            }
            Ok(())
        })
    }

    /// Changes a microVM's TAP on the host (segment, MTU, guard, cap): what can change
    /// without the guest (its addresses are its own business).
    pub fn update_tap(&self, old: &PortConfig, new: &PortConfig) -> Result<(), VswitchError> {
        let (sw, old, new) = (self.clone(), old.clone(), new.clone());
        run(move |mut ctx| async move { change_port(&mut ctx, &sw, &new.tap(), old, &new).await })
    }
}

/// Puts link `name` (index `ix`) on its segment's bridge with the guest's alias and MTU,
/// up, and applies its guard and cap.
async fn join_port(
    ctx: &mut Ctx,
    sw: &Switch,
    name: &str,
    ix: u32,
    port: &PortConfig,
) -> Result<(), VswitchError> {
    let owner = sw.owner();
    let bridge = ensure_segment(&ctx.h, owner, &port.segment).await?;
    quiet(name)?;
    // Up at once: nothing crosses it before the guard below is in, since its other side
    // has no carrier yet (a zone's end comes up after this returns; a TAP has carrier only
    // once the VMM holds it).
    let link = LinkUnspec::new_with_index(ix)
        .controller(bridge)
        .alias(port_alias(owner, &port.uuid))
        .up();
    let what = format!("attach {name} to the bridge {}", port.segment.bridge);
    set_on_bridge(&ctx.h, link, port, what).await?;
    sw.add_guard(&mut ctx.nf, ix, &port.guard)
        .map_err(nf(format!("set up anti-spoofing for {name}")))?;
    // A new port has no qdisc of hull's: only a cap needs work.
    if port.cap_mbps.is_some() {
        set_cap(&ctx.h, owner, name, ix, port).await?;
    }
    Ok(())
}

/// Applies `link` (a port put on its bridge) with the port's MTU; `what` names the step in an
/// error.
async fn set_on_bridge(
    h: &Handle,
    link: LinkMessageBuilder<LinkUnspec>,
    port: &PortConfig,
    what: String,
) -> Result<(), VswitchError> {
    let link = match port.mtu {
        Some(mtu) => link.mtu(mtu),
        None => link,
    };
    h.link().set(link.build()).execute().await.map_err(nl(what))
}

/// Makes the port's caps what its config says (none: no qdisc, no IFB).
async fn set_cap(
    h: &Handle,
    owner: &str,
    name: &str,
    ix: u32,
    port: &PortConfig,
) -> Result<(), VswitchError> {
    let ifb = port.ifb();
    let Some(mbps) = port.cap_mbps else {
        tc::del_root(h, ix, name).await?;
        tc::del_ingress(h, ix, name).await?;
        delete_link(h, &ifb).await?;
        return Ok(());
    };
    let tbf = tc::Tbf::for_mbps(mbps);
    tc::set_root_tbf(h, ix, name, &tbf).await?;
    let ifb_ix = match index_of(h, &ifb).await? {
        Some(i) => i,
        None => {
            h.link()
                .add(LinkIfb::new(&ifb).up().build())
                .execute()
                .await
                .map_err(nl(format!("create the IFB {ifb} for the cap on {name}")))?;
            quiet(&ifb)?;
            let ix = index_of(h, &ifb)
                .await?
                .ok_or_else(|| VswitchError::Invalid(format!("{ifb} vanished")))?;
            set_alias(h, ix, &ifb, port_alias(owner, &port.uuid)).await?;
            ix
        }
    };
    tc::set_root_tbf(h, ifb_ix, &ifb, &tbf).await?;
    tc::redirect_ingress(h, ix, name, ifb_ix).await
}

fn check_names(nics: &[ZoneNic]) -> Result<(), VswitchError> {
    for nic in nics {
        if nic.name.is_empty() || nic.name.len() > IFNAME_MAX || nic.name.contains('/') {
            return Err(VswitchError::Invalid(format!(
                "{:?} is not a valid interface name",
                nic.name
            )));
        }
    }
    Ok(())
}

pub(crate) async fn remove_port_links(h: &Handle, port: &PortConfig) -> Result<(), VswitchError> {
    for name in [port.host(), port.peer(), port.ifb(), port.tap()] {
        delete_link(h, &name).await?;
    }
    Ok(())
}

async fn plumb(
    ctx: &mut Ctx,
    sw: &Switch,
    init_pid: i32,
    nics: &[ZoneNic],
    routes: Option<&[ZoneRoute]>,
) -> Result<(), VswitchError> {
    for nic in nics {
        let port = &nic.port;
        let host = port.host();
        // What an earlier start left under this name (a crash mid-setup) goes first.
        delete_link(&ctx.h, &host).await?;
        // The zone's end is made inside the zone, named, with its MAC and MTU: moving a link
        // between namespaces costs an RCU grace period or two (docs/PERFORMANCE.md, "Figures
        // behind design choices"), making it there costs nothing more than making it. (It
        // cannot be up before its pair is whole; it comes up below.)
        let mut peer = LinkUnspec::new_with_name(&nic.name)
            .setns_by_pid(init_pid as u32)
            .address(nic.mac.to_vec());
        if let Some(mtu) = port.mtu {
            peer = peer.mtu(mtu);
        }
        let mut veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = port.mtu {
            veth = veth.mtu(mtu);
        }
        ctx.h
            .link()
            .add(veth.build())
            .execute()
            .await
            .map_err(nl(format!(
                "create the veth pair {host}/{} (in the zone)",
                nic.name
            )))?;
        let host_ix = index_of(&ctx.h, &host)
            .await?
            .ok_or_else(|| VswitchError::Invalid(format!("the port {host} vanished")))?;
        join_port(ctx, sw, &host, host_ix, port).await?;
    }
    let zone = ctx.enter(init_pid).await?;
    if let Some(lo) = index_of(&zone, "lo").await? {
        zone.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("bring up the zone's loopback"))?;
    }
    for nic in nics {
        let ix = index_of(&zone, &nic.name).await?.ok_or_else(|| {
            VswitchError::Invalid(format!("{} did not arrive in the zone", nic.name))
        })?;
        if !nic.vrrp {
            zone.link()
                .set(LinkUnspec::new_with_index(ix).up().build())
                .execute()
                .await
                .map_err(nl(format!("bring up {} in the zone", nic.name)))?;
        }
        for (addr, prefix) in &nic.addrs {
            zone.address()
                .add(ix, *addr, *prefix)
                .execute()
                .await
                .map_err(nl(format!("add {addr}/{prefix} to {}", nic.name)))?;
        }
    }
    if let Some(routes) = routes {
        add_routes(&zone, nics.iter().find(|n| n.primary), routes).await?;
    }
    Ok(())
}

/// The zone's routes: the default routes of its primary NIC's gateways, then its static
/// routes. All carry the static protocol (rtnetlink's default), which is what
/// [`del_routes`] removes: the zone cannot add routes of its own (no CAP_NET_ADMIN).
async fn add_routes(
    zone: &Handle,
    primary: Option<&ZoneNic>,
    routes: &[ZoneRoute],
) -> Result<(), VswitchError> {
    if let Some(p) = primary {
        add_default_routes(zone, p).await?;
    }
    for r in routes {
        let invalid = |e| VswitchError::Invalid(format!("route {}/{}: {e}", r.dest, r.prefix));
        let mut msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dest, r.prefix)
            .map_err(invalid)?;
        msg = match &r.via {
            RouteVia::Gateway(gw) => msg.gateway(*gw).map_err(invalid)?,
            RouteVia::Interface(name) => {
                let ix = index_of(zone, name).await?.ok_or_else(|| {
                    VswitchError::Invalid(format!(
                        "route {}/{} leads out of {name}, which the zone does not have",
                        r.dest, r.prefix
                    ))
                })?;
                msg.output_interface(ix).scope(RouteScope::Link)
            }
        };
        let via = match &r.via {
            RouteVia::Gateway(gw) => format!("via {gw}"),
            RouteVia::Interface(name) => format!("out of {name}"),
        };
        zone.route()
            .add(msg.build())
            .execute()
            .await
            .map_err(nl(format!(
                "add the route to {}/{} {via}",
                r.dest, r.prefix
            )))?;
    }
    Ok(())
}

async fn add_default_routes(zone: &Handle, nic: &ZoneNic) -> Result<(), VswitchError> {
    let Some(ix) = index_of(zone, &nic.name).await? else {
        return Ok(());
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
        zone.route()
            .add(route)
            .execute()
            .await
            .map_err(nl(format!("add the default route via {gw}")))?;
    }
    Ok(())
}

/// Deletes the routes [`add_routes`] made (both families, main table, static protocol).
async fn del_routes(zone: &Handle) -> Result<(), VswitchError> {
    let mut doomed: Vec<RouteMessage> = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let routes: Vec<RouteMessage> = zone
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(nl("list the zone's routes"))?;
        doomed.extend(
            routes
                .into_iter()
                .filter(|r| r.header.table == 254 && r.header.protocol == RouteProtocol::Static),
        );
    }
    for r in doomed {
        match zone.route().del(r).execute().await {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(libc::ESRCH) => {}
            Err(e) => return Err(nl("delete a default route in the zone")(e)),
        }
    }
    Ok(())
}

/// The host side of a changed port (`name`, a veth host end or a TAP): segment, MTU, guard
/// and cap.
async fn change_port(
    ctx: &mut Ctx,
    sw: &Switch,
    name: &str,
    old: PortConfig,
    new: &PortConfig,
) -> Result<(), VswitchError> {
    let owner = sw.owner();
    let ix = index_of(&ctx.h, name)
        .await?
        .ok_or_else(|| VswitchError::Invalid(format!("the port {name} does not exist")))?;
    if old.segment != new.segment || old.mtu != new.mtu {
        let bridge = ensure_segment(&ctx.h, owner, &new.segment).await?;
        let link = LinkUnspec::new_with_index(ix).controller(bridge);
        let what = format!("move {name} to the bridge {}", new.segment.bridge);
        set_on_bridge(&ctx.h, link, new, what).await?;
    }
    if old.guard != new.guard {
        let _loaded = sw.loaded();
        guard::replace(&mut ctx.nf, owner, ix, &new.guard)
            .map_err(nf(format!("change the anti-spoofing entries of {name}")))?;
    }
    if old.cap_mbps != new.cap_mbps {
        set_cap(&ctx.h, owner, name, ix, new).await?;
    }
    Ok(())
}

/// The zone's side of a changed NIC: MTU and addresses.
async fn change_in_zone(zone: &Handle, old: &ZoneNic, new: &ZoneNic) -> Result<(), VswitchError> {
    let ix = index_of(zone, &old.name)
        .await?
        .ok_or_else(|| VswitchError::Invalid(format!("the zone has no {}", old.name)))?;
    if old.port.mtu != new.port.mtu
        && let Some(mtu) = new.port.mtu
    {
        zone.link()
            .set(LinkUnspec::new_with_index(ix).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl(format!("set the MTU of {} in the zone", new.name)))?;
    }
    // A new MAC (a VRRP NIC's new VRID), and a NIC that becomes (or stops being) a VRRP
    // NIC goes down for the zone's VRRP daemon (or up).
    if old.mac != new.mac || old.vrrp != new.vrrp {
        let mut link = LinkUnspec::new_with_index(ix);
        if old.mac != new.mac {
            link = link.address(new.mac.to_vec());
        }
        if old.vrrp != new.vrrp {
            link = match new.vrrp {
                true => link.down(),
                false => link.up(),
            };
        }
        zone.link()
            .set(link.build())
            .execute()
            .await
            .map_err(nl(format!(
                "set the MAC or state of {} in the zone",
                new.name
            )))?;
    }
    if old.addrs != new.addrs {
        let present: Vec<_> = zone
            .address()
            .get()
            .set_link_index_filter(ix)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("list the addresses of {}", old.name)))?;
        for msg in present {
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            let Some(addr) = addr else { continue };
            let keep = new
                .addrs
                .iter()
                .any(|(a, p)| *a == addr && *p == msg.header.prefix_len);
            if keep || is_link_local(&addr) {
                continue;
            }
            zone.address()
                .del(msg)
                .execute()
                .await
                .map_err(nl(format!("remove {addr} from {}", old.name)))?;
        }
        for (addr, prefix) in &new.addrs {
            match zone.address().add(ix, *addr, *prefix).execute().await {
                Ok(()) => {}
                Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl(format!("add {addr}/{prefix} to {}", new.name))(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(n: usize, ip: &str, primary: bool) -> ZoneNic {
        ZoneNic {
            port: PortConfig {
                uuid: "1a2b3c4d-5e6f-4a1b-9c2d-3e4f5a6b7c8d".into(),
                number: n,
                segment: Segment {
                    tag: "t".into(),
                    bridge: "hb-t".into(),
                    uplink: None,
                },
                mtu: None,
                guard: guard::tests::guard(n as u8),
                cap_mbps: None,
            },
            name: format!("net{n}"),
            mac: [2, 0, 0, 0, 0, n as u8],
            addrs: vec![(ip.parse().expect("ip"), 24)],
            gateways: vec!["192.0.2.1".parse().expect("ip")],
            primary,
            vrrp: false,
        }
    }

    #[test]
    fn a_zone_change_matches_nics_by_number() {
        let old = vec![nic(0, "192.0.2.10", true), nic(1, "192.0.2.11", false)];
        assert!(ZoneChange::between(&old, &old).is_empty());
        let mut new = vec![nic(0, "192.0.2.10", true), nic(2, "192.0.2.12", false)];
        new[0].port.cap_mbps = Some(100);
        let c = ZoneChange::between(&old, &new);
        assert_eq!(
            c.removed.iter().map(|n| n.port.number).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(
            c.added.iter().map(|n| n.port.number).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(c.changed.len(), 1);
        assert!(!c.routes);
        let mut moved = old.clone();
        moved[0].primary = false;
        moved[1].primary = true;
        assert!(ZoneChange::between(&old, &moved).routes);
        // Static routes that change set the routes again, and the change carries the new ones.
        let r = |gw: &str| ZoneRoute {
            dest: "203.0.113.0".parse().expect("ip"),
            prefix: 24,
            via: RouteVia::Gateway(gw.parse().expect("ip")),
        };
        let same = ZoneChange::between(&old, &old).routing(&[r("192.0.2.1")], &[r("192.0.2.1")]);
        assert!(same.is_empty());
        let c = ZoneChange::between(&old, &old).routing(&[r("192.0.2.1")], &[r("192.0.2.2")]);
        assert!(c.routes && !c.is_empty());
        assert_eq!(c.static_routes, [r("192.0.2.2")]);
    }
}
