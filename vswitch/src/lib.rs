//! hull's virtual switch (SmartOS's Crossbow, on Linux): one bridge per (nic tag, VLAN)
//! segment, carried by a physical uplink (untagged, or an 802.1Q sub-interface per VLAN)
//! or by nothing (an internal switch, SmartOS's etherstub); a veth pair per zone NIC (host
//! end on the bridge, the other end made inside the zone's network namespace, named there,
//! with the NIC's MAC, MTU, addresses and routes); a TAP per microVM NIC;
//! anti-spoofing rules per port ([`guard`], nf_tables) and bandwidth caps ([`tc`]).
//! Everything goes through netlink; no `ip`, `tc` or `nft` is spawned.
//!
//! Naming, so that a crash can always be cleaned up from the link names alone:
//! - bridges `hb-<tag>` or `hb-<tag>.<vlan>` (a hash when that exceeds 15 bytes);
//! - a zone NIC's host end `hv<first 10 hex digits of the guest uuid><n>` (n: the NIC's
//!   number, as in net<n>), its IFB (for a cap on what the guest sends) `hi...`; `hp...`
//!   named the zone's end before it moved there in an earlier version (still swept);
//! - a microVM NIC's TAP `ht...` (persistent, made by vmmd; zoned hands it to the VMM);
//! - an uplink's VLAN sub-interface `<uplink>.<vlan>` (or `hu<hash>.<vlan>`).
//!
//! Every host end, TAP and IFB carries the alias `hull:<owner>:<uuid>`, where the owner
//! names the vmmd's data root: several vmmds on one host (tests, a second data root) never
//! sweep each other's ports. Bridges and VLAN sub-interfaces carry `hull-tag:<owner>:<tag>`
//! so that deleting a nic tag removes what it made.
//!
//! A zone's veth pairs go away with its network namespace (the kernel deletes both ends when
//! the zone's last process exits, from a work queue); [`remove_ports`] deletes them at once
//! with what a failed or interrupted setup left, and [`sweep`] does it for every guest.
//!
//! Each operation runs on a thread of its own with a one-thread tokio runtime (rtnetlink is
//! asynchronous), entering the zone's network namespace with setns(2) where it must: callers
//! are synchronous.

pub mod guard;
pub mod nft;
pub mod tc;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{
    Handle, LinkBridge, LinkIfb, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVlan,
    RouteMessageBuilder,
};

pub use guard::Guard;

/// Linux's interface name limit (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Prefix of a zone NIC's host end.
const HOST_PREFIX: &str = "hv";
/// Prefix of a zone NIC's other end while it was made on the host (earlier versions; swept).
const PEER_PREFIX: &str = "hp";
/// Prefix of a microVM NIC's TAP.
const TAP_PREFIX: &str = "ht";
/// Prefix of a port's IFB (the cap on what its guest sends).
const IFB_PREFIX: &str = "hi";
/// Hex digits of the guest uuid in port names.
const UUID_DIGITS: usize = 10;

/// Errors of the virtual switch, naming the link and the step.
#[derive(Debug, thiserror::Error)]
pub enum VswitchError {
    #[error("cannot {what}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot {what}")]
    Nft {
        what: String,
        #[source]
        source: nft::NftError,
    },
    #[error("cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The host kernel lacks something a segment needs.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> VswitchError {
    let what = what.into();
    move |source| VswitchError::Netlink { what, source }
}

fn nf(what: impl Into<String>) -> impl FnOnce(nft::NftError) -> VswitchError {
    let what = what.into();
    move |source| VswitchError::Nft { what, source }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// What carries a segment out of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// The physical interface (or anything standing in for one).
    pub iface: String,
    /// The segment's VLAN on it; `None`: untagged, the interface itself joins the bridge.
    pub vlan: Option<u16>,
}

/// A (nic tag, VLAN) segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The nic tag.
    pub tag: String,
    /// The bridge ([`bridge_name`]).
    pub bridge: String,
    /// `None`: an internal switch.
    pub uplink: Option<Uplink>,
}

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

fn port_name(prefix: &str, uuid: &str, n: usize) -> String {
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
fn port_alias(owner: &str, uuid: &str) -> String {
    format!("hull:{owner}:{uuid}")
}

/// The alias of what a nic tag's segments are made of (bridges, VLAN sub-interfaces).
fn tag_alias(owner: &str, tag: &str) -> String {
    format!("hull-tag:{owner}:{tag}")
}

/// What an operation works with: rtnetlink and nf_tables in the host's namespace.
struct Ctx {
    h: Handle,
    nf: nft::Socket,
}

impl Ctx {
    /// Enters the network namespace of process `pid` (for the rest of this thread) and
    /// returns an rtnetlink handle there; the host's handles stay in the host's.
    async fn enter(&self, pid: i32) -> Result<Handle, VswitchError> {
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
        connect()
    }
}

fn connect() -> Result<Handle, VswitchError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| VswitchError::Sys {
        what: "open a netlink socket".into(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Runs `f` on a thread of its own with rtnetlink and nf_tables handles in the host's
/// network namespace (the thread may enter a zone's with [`Ctx::enter`]).
fn run<T, F, Fut>(f: F) -> Result<T, VswitchError>
where
    T: Send + 'static,
    F: FnOnce(Ctx) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, VswitchError>>,
{
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| VswitchError::Sys {
                what: "start a netlink runtime".into(),
                source,
            })?;
        rt.block_on(async move {
            let h = connect()?;
            let nf = nft::Socket::open().map_err(nf("reach nf_tables (the kernel's nftables)"))?;
            f(Ctx { h, nf }).await
        })
    });
    worker
        .join()
        .map_err(|_| VswitchError::Invalid("a netlink worker thread panicked".into()))?
}

/// The index of link `name`, if it exists.
async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, VswitchError> {
    Ok(link_by_name(h, name).await?.map(|m| m.header.index))
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, VswitchError> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
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

fn link_alias(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

fn link_controller(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(c) => Some(*c),
        _ => None,
    })
}

/// Deletes link `name` if it exists; returns whether it did.
async fn delete_link(h: &Handle, name: &str) -> Result<bool, VswitchError> {
    let Some(ix) = index_of(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(ix).execute().await {
        Ok(()) => Ok(true),
        // Gone meanwhile (deleting one end of a veth pair deletes the other).
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl(format!("delete {name}"))(e)),
    }
}

/// Sets the alias of link `ix` (the kernel ignores one given when a link is made).
async fn set_alias(h: &Handle, ix: u32, name: &str, alias: String) -> Result<(), VswitchError> {
    h.link()
        .set(LinkUnspec::new_with_index(ix).alias(alias).build())
        .execute()
        .await
        .map_err(nl(format!("name the owner of {name} in its alias")))
}

/// Keeps the host out of a segment: no IPv6 on the bridge, a port's host end or a VLAN
/// sub-interface, so the host never sends its own router solicitations or MLD reports into
/// the guests' segment. A host without IPv6 has nothing to turn off.
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

/// Makes the segment's bridge (up) unless it exists, with its uplink on it; returns the
/// bridge's index. A bridge made here is removed again when its uplink cannot join, so a
/// failure leaves nothing.
async fn ensure_segment(h: &Handle, owner: &str, seg: &Segment) -> Result<u32, VswitchError> {
    let (br, made) = match index_of(h, &seg.bridge).await? {
        Some(i) => (i, false),
        None => {
            let bridge = LinkBridge::new(&seg.bridge).up().build();
            match h.link().add(bridge).execute().await {
                Ok(()) => {}
                // Another start made it meanwhile.
                Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl(format!("create the bridge {}", seg.bridge))(e)),
            }
            let i = index_of(h, &seg.bridge).await?.ok_or_else(|| {
                VswitchError::Invalid(format!("the bridge {} vanished", seg.bridge))
            })?;
            set_alias(h, i, &seg.bridge, tag_alias(owner, &seg.tag)).await?;
            (i, true)
        }
    };
    quiet(&seg.bridge)?;
    let Some(up) = &seg.uplink else {
        return Ok(br);
    };
    match join_uplink(h, owner, seg, up, br).await {
        Ok(()) => Ok(br),
        Err(e) => {
            if made {
                let _ = h.link().del(br).execute().await;
            }
            Err(e)
        }
    }
}

async fn join_uplink(
    h: &Handle,
    owner: &str,
    seg: &Segment,
    up: &Uplink,
    bridge: u32,
) -> Result<(), VswitchError> {
    let base = link_by_name(h, &up.iface).await?.ok_or_else(|| {
        VswitchError::Invalid(format!(
            "the uplink {} of nic tag {:?} does not exist on this host",
            up.iface, seg.tag
        ))
    })?;
    let (member, member_ix) = match up.vlan.filter(|v| *v > 0) {
        None => {
            if link_controller(&base).is_none() {
                refuse_if_addressed(h, &base, &up.iface, seg).await?;
            }
            (up.iface.clone(), base.header.index)
        }
        Some(vid) => {
            let sub = vlan_name(&up.iface, vid);
            let ix = match index_of(h, &sub).await? {
                Some(ix) => ix,
                None => {
                    let vlan = LinkVlan::new(&sub, base.header.index, vid).build();
                    match h.link().add(vlan).execute().await {
                        Ok(()) => {}
                        Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
                        Err(e) if errno_of(&e) == Some(libc::EOPNOTSUPP) => {
                            return Err(VswitchError::Unsupported(format!(
                                "nic tag {:?} carries VLAN {vid} on {}, but this host's kernel \
                                 has no 802.1Q VLAN devices (CONFIG_VLAN_8021Q, module 8021q)",
                                seg.tag, up.iface
                            )));
                        }
                        Err(e) => {
                            return Err(nl(format!(
                                "create the VLAN {vid} sub-interface {sub} of {}",
                                up.iface
                            ))(e));
                        }
                    }
                    quiet(&sub)?;
                    let ix = index_of(h, &sub)
                        .await?
                        .ok_or_else(|| VswitchError::Invalid(format!("{sub} vanished")))?;
                    set_alias(h, ix, &sub, tag_alias(owner, &seg.tag)).await?;
                    ix
                }
            };
            // The sub-interface only carries frames while its base is up.
            h.link()
                .set(LinkUnspec::new_with_index(base.header.index).up().build())
                .execute()
                .await
                .map_err(nl(format!("bring up the uplink {}", up.iface)))?;
            (sub, ix)
        }
    };
    let current = link_by_name(h, &member)
        .await?
        .and_then(|m| link_controller(&m));
    match current {
        Some(c) if c == bridge => return Ok(()),
        Some(_) => {
            return Err(VswitchError::Invalid(format!(
                "the uplink {member} of nic tag {:?} is already a port of another bridge",
                seg.tag
            )));
        }
        None => {}
    }
    h.link()
        .set(
            LinkUnspec::new_with_index(member_ix)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!(
            "put the uplink {member} on the bridge {}",
            seg.bridge
        )))
}

/// An interface that carries the host's own addresses is not taken: on the bridge they
/// would stop working (hull does not move them).
async fn refuse_if_addressed(
    h: &Handle,
    link: &LinkMessage,
    name: &str,
    seg: &Segment,
) -> Result<(), VswitchError> {
    let addrs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(link.header.index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("list the addresses of {name}")))?;
    let host: Vec<String> = addrs
        .iter()
        .flat_map(|m| m.attributes.iter())
        .filter_map(|a| match a {
            AddressAttribute::Address(ip) if !is_link_local(ip) => Some(ip.to_string()),
            _ => None,
        })
        .collect();
    if host.is_empty() {
        return Ok(());
    }
    Err(VswitchError::Invalid(format!(
        "the uplink {name} of nic tag {:?} carries the host's addresses ({}): on the bridge {} \
         they would stop working; move them to the bridge, or use a VLAN of {name}",
        seg.tag,
        host.join(", "),
        seg.bridge
    )))
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Puts link `name` (index `ix`) on its segment's bridge with the guest's alias and MTU,
/// up, and applies its guard and cap.
async fn join_port(
    ctx: &mut Ctx,
    owner: &str,
    name: &str,
    ix: u32,
    port: &PortConfig,
) -> Result<(), VswitchError> {
    let bridge = ensure_segment(&ctx.h, owner, &port.segment).await?;
    quiet(name)?;
    // Up at once: nothing crosses it before the guard below is in, since its other side
    // has no carrier yet (a zone's end comes up after this returns; a TAP has carrier only
    // once the VMM holds it).
    let mut link = LinkUnspec::new_with_index(ix)
        .controller(bridge)
        .alias(port_alias(owner, &port.uuid))
        .up();
    if let Some(mtu) = port.mtu {
        link = link.mtu(mtu);
    }
    ctx.h
        .link()
        .set(link.build())
        .execute()
        .await
        .map_err(nl(format!(
            "attach {name} to the bridge {}",
            port.segment.bridge
        )))?;
    add_guard(&mut ctx.nf, owner, ix, &port.guard)
        .map_err(nf(format!("set up anti-spoofing for {name}")))?;
    // A new port has no qdisc of hull's: only a cap needs work.
    if port.cap_mbps.is_some() {
        set_cap(&ctx.h, owner, name, ix, port).await?;
    }
    Ok(())
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

/// Plumbs `nics` of zone `uuid`, whose init is `init_pid`: per NIC a veth pair whose zone
/// end is made inside the zone (name, MAC, MTU), the host end on its segment's bridge
/// (guarded, capped), then in the zone loopback, the NICs up with their addresses, and the
/// primary NIC's default routes. Used at start (all of a zone's NICs) and by add_nics (the
/// new ones). On an error none of these NICs' links is left on the host.
pub fn plumb_zone(
    owner: &str,
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
    let (owner, nics, routes) = (owner.to_string(), nics.to_vec(), routes.to_vec());
    run(move |mut ctx| async move {
        let result = plumb(&mut ctx, &owner, init_pid, &nics, Some(&routes)).await;
        if result.is_err() {
            for nic in &nics {
                let _ = remove_port_links(&ctx.h, &nic.port).await;
            }
            let _ = collect_guards(&mut ctx, &owner).await;
        }
        result
    })
}

async fn remove_port_links(h: &Handle, port: &PortConfig) -> Result<(), VswitchError> {
    for name in [port.host(), port.peer(), port.ifb(), port.tap()] {
        delete_link(h, &name).await?;
    }
    Ok(())
}

async fn plumb(
    ctx: &mut Ctx,
    owner: &str,
    init_pid: i32,
    nics: &[ZoneNic],
    routes: Option<&[ZoneRoute]>,
) -> Result<(), VswitchError> {
    for nic in nics {
        let port = &nic.port;
        let host = port.host();
        // What an earlier start left under this name (a crash mid-setup) goes first.
        delete_link(&ctx.h, &host).await?;
        // The zone's end is made inside the zone, named, with its MAC and MTU: moving a
        // link between namespaces costs an RCU grace period or two (15-20 ms here), making
        // it there costs nothing more than making it. (It cannot be up before its pair is
        // whole; it comes up below.)
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
        join_port(ctx, owner, &host, host_ix, port).await?;
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
        zone.link()
            .set(LinkUnspec::new_with_index(ix).up().build())
            .execute()
            .await
            .map_err(nl(format!("bring up {} in the zone", nic.name)))?;
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

/// Attaches a microVM's TAP (made by vmmd, persistent) to its segment's bridge, guarded
/// and capped. On an error the TAP is deleted.
pub fn attach_tap(owner: &str, port: &PortConfig) -> Result<(), VswitchError> {
    let (owner, port) = (owner.to_string(), port.clone());
    run(move |mut ctx| async move {
        let name = port.tap();
        let result = async {
            let ix = index_of(&ctx.h, &name)
                .await?
                .ok_or_else(|| VswitchError::Invalid(format!("there is no link {name}")))?;
            join_port(&mut ctx, &owner, &name, ix, &port).await
        }
        .await;
        if result.is_err() {
            let _ = remove_port_links(&ctx.h, &port).await;
            let _ = collect_guards(&mut ctx, &owner).await;
        }
        result
    })
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

/// Applies `change` to the running zone whose init is `init_pid`: removed NICs' links are
/// deleted (with their elements, qdiscs and IFBs), added ones plumbed, changed ones moved
/// to their new segment, their MTU, addresses, guard (in one nf_tables transaction) and
/// cap set, and the routes set again when the primary NIC, its gateways or the static routes
/// changed.
pub fn update_zone(owner: &str, init_pid: i32, change: &ZoneChange) -> Result<(), VswitchError> {
    check_names(&change.added)?;
    let (owner, change) = (owner.to_string(), change.clone());
    run(move |mut ctx| async move {
        for nic in &change.removed {
            remove_port_links(&ctx.h, &nic.port).await?;
        }
        collect_guards(&mut ctx, &owner).await?;
        for (old, new) in &change.changed {
            change_port(
                &mut ctx,
                &owner,
                &new.port.host(),
                old.port.clone(),
                &new.port,
            )
            .await?;
        }
        // The new NICs without routes: those are set below, once, for the whole zone.
        let plumbed = plumb(&mut ctx, &owner, init_pid, &change.added, None).await;
        if plumbed.is_err() {
            for nic in &change.added {
                let _ = remove_port_links(&ctx.h, &nic.port).await;
            }
            let _ = collect_guards(&mut ctx, &owner).await;
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

/// The host side of a changed port (`name`, a veth host end or a TAP): segment, MTU, guard
/// and cap.
async fn change_port(
    ctx: &mut Ctx,
    owner: &str,
    name: &str,
    old: PortConfig,
    new: &PortConfig,
) -> Result<(), VswitchError> {
    let ix = index_of(&ctx.h, name)
        .await?
        .ok_or_else(|| VswitchError::Invalid(format!("the port {name} does not exist")))?;
    if old.segment != new.segment || old.mtu != new.mtu {
        let bridge = ensure_segment(&ctx.h, owner, &new.segment).await?;
        let mut link = LinkUnspec::new_with_index(ix).controller(bridge);
        if let Some(mtu) = new.mtu {
            link = link.mtu(mtu);
        }
        ctx.h
            .link()
            .set(link.build())
            .execute()
            .await
            .map_err(nl(format!(
                "move {name} to the bridge {}",
                new.segment.bridge
            )))?;
    }
    if old.guard != new.guard {
        let _loaded = loaded();
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

/// Changes a microVM's TAP on the host (segment, MTU, guard, cap): what can change
/// without the guest (its addresses are its own business).
pub fn update_tap(owner: &str, old: &PortConfig, new: &PortConfig) -> Result<(), VswitchError> {
    let (owner, old, new) = (owner.to_string(), old.clone(), new.clone());
    run(move |mut ctx| async move { change_port(&mut ctx, &owner, &new.tap(), old, &new).await })
}

/// The owners whose anti-spoofing table this process has loaded. Held across every change
/// to a table's life (load, delete) and every port added, so that a table is never deleted
/// under a port being added; nothing awaits while holding it.
static LOADED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

fn loaded() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    // The set is only ever inserted into or removed from: a panic cannot leave it torn.
    LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds a port's elements, loading `owner`'s table first when this process has not (the
/// first port since vmmd started without running guests, or since the last one went).
fn add_guard(nf: &mut nft::Socket, owner: &str, ix: u32, g: &Guard) -> Result<(), nft::NftError> {
    let mut loaded = loaded();
    if !loaded.contains(owner) {
        guard::install(nf, owner, &[])?;
        loaded.insert(owner.to_string());
    }
    match guard::add(nf, owner, ix, g) {
        // The table went behind vmmd's back (nft flush ruleset): load it again.
        Err(e) if e.errno() == Some(libc::ENOENT) => {
            guard::install(nf, owner, &[])?;
            guard::add(nf, owner, ix, g)
        }
        other => other,
    }
}

/// Deletes the elements of ports that no longer exist from `owner`'s anti-spoofing table,
/// and the table itself when no port is left in it (no rule outlives the last guest). The
/// links are listed through the host's handle, whatever namespace this thread is in.
async fn collect_guards(ctx: &mut Ctx, owner: &str) -> Result<usize, VswitchError> {
    let what = "remove the anti-spoofing entries of ports that are gone";
    let snap = guard::snapshot(&mut ctx.nf, owner).map_err(nf(what))?;
    let mut n = 0;
    if snap.iter().any(|(_, e)| !e.is_empty()) {
        let live: BTreeSet<u32> = all_links(&ctx.h)
            .await?
            .iter()
            .map(|m| m.header.index)
            .collect();
        n = guard::delete_stale(&mut ctx.nf, owner, &snap, &live).map_err(nf(what))?;
    }
    let mut loaded = loaded();
    if guard::is_unused(&mut ctx.nf, owner).map_err(nf(what))? {
        guard::uninstall(&mut ctx.nf, owner)
            .map_err(nf("remove the unused anti-spoofing table"))?;
        loaded.remove(owner);
    }
    Ok(n)
}

/// Deletes the ports of guest `uuid` left in the host's namespace (a zone's own go with its
/// network namespace), their IFBs, and the anti-spoofing entries of every port of
/// `owner`'s that no longer exists; returns the names of the links removed.
pub fn remove_ports(owner: &str, uuid: &str) -> Result<Vec<String>, VswitchError> {
    let key = port_key(uuid);
    let prefixes: Vec<String> = [HOST_PREFIX, PEER_PREFIX, TAP_PREFIX, IFB_PREFIX]
        .iter()
        .map(|p| format!("{p}{key}"))
        .collect();
    remove_where(owner, move |name, _| {
        prefixes.iter().any(|p| name.starts_with(p.as_str()))
    })
}

/// Deletes the links of the ports `ports` (a zone's NICs removed while it runs, or what a
/// failed start made) and their anti-spoofing entries.
pub fn remove_named_ports(owner: &str, ports: &[PortConfig]) -> Result<(), VswitchError> {
    let (owner, ports) = (owner.to_string(), ports.to_vec());
    run(move |mut ctx| async move {
        for p in &ports {
            remove_port_links(&ctx.h, p).await?;
        }
        collect_guards(&mut ctx, &owner).await.map(|_| ())
    })
}

/// At vmmd start: deletes every port of `owner`'s in the host's namespace whose guest
/// `keep` does not name (given the guest's uuid), what a vmmd that died mid-setup left,
/// then loads `owner`'s anti-spoofing table afresh with the entries of `running` (the
/// ports of running guests, by link name; those that do not exist are skipped). A veth
/// pair that never got its alias (a crash between its creation and its attachment) goes
/// when its guest starts again or is deleted ([`remove_ports`]). Returns the names of the
/// links removed.
pub fn sweep(
    owner: &str,
    keep: impl Fn(&str) -> bool + Send + 'static,
    running: Vec<(String, Guard)>,
) -> Result<Vec<String>, VswitchError> {
    let prefix = format!("hull:{owner}:");
    let removed = remove_where(owner, move |_, alias| {
        alias
            .and_then(|a| a.strip_prefix(prefix.as_str()))
            .is_some_and(|uuid| !keep(uuid))
    })?;
    let owner = owner.to_string();
    run(move |mut ctx| async move {
        let mut ports = Vec::new();
        for (name, g) in running {
            if let Some(ix) = index_of(&ctx.h, &name).await? {
                ports.push((ix, g));
            }
        }
        let mut loaded = loaded();
        if ports.is_empty() {
            // No guest runs: no table until one starts.
            guard::uninstall(&mut ctx.nf, &owner)
                .map_err(nf("remove the unused anti-spoofing table"))?;
            loaded.remove(&owner);
            return Ok(());
        }
        guard::install(&mut ctx.nf, &owner, &ports).map_err(nf(
            "load the anti-spoofing table (nf_tables, bridge family)",
        ))?;
        loaded.insert(owner.clone());
        Ok(())
    })?;
    Ok(removed)
}

fn remove_where(
    owner: &str,
    doomed: impl Fn(&str, Option<&str>) -> bool + Send + 'static,
) -> Result<Vec<String>, VswitchError> {
    let owner = owner.to_string();
    run(move |mut ctx| async move {
        let links = all_links(&ctx.h).await?;
        let mut removed = Vec::new();
        for msg in links {
            let Some(name) = link_name(&msg).map(str::to_string) else {
                continue;
            };
            if !doomed(&name, link_alias(&msg)) {
                continue;
            }
            match ctx.h.link().del(msg.header.index).execute().await {
                Ok(()) => removed.push(name),
                // Deleting one end of a veth pair deleted the other.
                Err(e) if errno_of(&e) == Some(libc::ENODEV) => {}
                Err(e) => return Err(nl(format!("delete {name}"))(e)),
            }
        }
        collect_guards(&mut ctx, &owner).await?;
        Ok(removed)
    })
}

/// The names of the links in the host's network namespace (for checks and tests).
pub fn host_links() -> Result<Vec<String>, VswitchError> {
    run(|ctx| async move {
        let links = all_links(&ctx.h).await?;
        Ok(links
            .iter()
            .filter_map(|m| link_name(m).map(str::to_string))
            .collect())
    })
}

/// Deletes the bridge `name` if it exists and has no port left.
pub fn remove_bridge_if_unused(name: &str) -> Result<bool, VswitchError> {
    let name = name.to_string();
    run(move |ctx| async move {
        let Some(ix) = index_of(&ctx.h, &name).await? else {
            return Ok(false);
        };
        let links = all_links(&ctx.h).await?;
        if links.iter().any(|m| link_controller(m) == Some(ix)) {
            return Ok(false);
        }
        ctx.h
            .link()
            .del(ix)
            .execute()
            .await
            .map_err(nl(format!("delete the bridge {name}")))?;
        Ok(true)
    })
}

/// When nic tag `tag` is deleted: removes the bridges and VLAN sub-interfaces `owner`'s
/// vmmd made for it, and takes `uplink` (if any) off its bridge. A bridge that still has a
/// guest's port is an error (nothing is removed then).
pub fn release_tag(
    owner: &str,
    tag: &str,
    uplink: Option<&str>,
) -> Result<Vec<String>, VswitchError> {
    let alias = tag_alias(owner, tag);
    let (uplink, tag) = (uplink.map(str::to_string), tag.to_string());
    run(move |ctx| async move {
        let links = all_links(&ctx.h).await?;
        let ours: Vec<&LinkMessage> = links
            .iter()
            .filter(|m| link_alias(m) == Some(alias.as_str()))
            .collect();
        let ours_ix: BTreeSet<u32> = ours.iter().map(|m| m.header.index).collect();
        let up_ix = uplink.as_deref().and_then(|u| {
            links
                .iter()
                .find(|m| link_name(m) == Some(u))
                .map(|m| m.header.index)
        });
        for m in &links {
            let Some(c) = link_controller(m) else {
                continue;
            };
            let foreign = !ours_ix.contains(&m.header.index) && Some(m.header.index) != up_ix;
            if ours_ix.contains(&c) && foreign {
                return Err(VswitchError::Invalid(format!(
                    "a bridge of nic tag {tag:?} still has the port {}",
                    link_name(m).unwrap_or("?")
                )));
            }
        }
        if let Some(ix) = up_ix
            && links.iter().any(|m| {
                m.header.index == ix && link_controller(m).is_some_and(|c| ours_ix.contains(&c))
            })
        {
            ctx.h
                .link()
                .set(LinkUnspec::new_with_index(ix).nocontroller().build())
                .execute()
                .await
                .map_err(nl(format!(
                    "take {} off its bridge",
                    uplink.as_deref().unwrap_or("?")
                )))?;
        }
        let mut removed = Vec::new();
        for m in ours {
            match ctx.h.link().del(m.header.index).execute().await {
                Ok(()) => removed.push(link_name(m).unwrap_or("?").to_string()),
                Err(e) if errno_of(&e) == Some(libc::ENODEV) => {}
                Err(e) => return Err(nl(format!("delete {}", link_name(m).unwrap_or("?")))(e)),
            }
        }
        Ok(removed)
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
        assert_eq!(ifb_name(uuid, 1), "hi1a2b3c4d5e1");
        assert_eq!(port_key(uuid), "1a2b3c4d5e");
        assert_eq!(vlan_name("eth0", 7), "eth0.7");
        let v = vlan_name("enp0s31f6abcdef", 4094);
        assert!(v.len() <= IFNAME_MAX && v.ends_with(".4094"), "{v}");
    }

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
