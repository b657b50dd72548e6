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
//! the zone's last process exits, from a work queue); [`remove_ports`](Switch::remove_ports)
//! deletes them at once with what a failed or interrupted setup left, and
//! [`sweep`](Switch::sweep) does it for every guest.
//!
//! Each operation runs on a thread of its own with a one-thread tokio runtime (rtnetlink is
//! asynchronous), entering the zone's network namespace with setns(2) where it must: callers
//! are synchronous.
//!
//! One [`Switch`] value per owner carries the operations that need the owner (making,
//! changing and removing its ports and segments, loading its anti-spoofing table); the
//! names, [`host_links`] and [`remove_bridge_if_unused`] need none. The modules: `names`
//! (link names, aliases), `netlink` (the worker thread and its sockets, link accessors),
//! `segment` (bridges, uplinks, VLAN sub-interfaces), `port` (veth and TAP ports, live
//! changes), `sweep` (removal by guest and at start), `switch` (the value and its table's
//! state), [`guard`], [`nft`] and [`tc`].

pub mod guard;
mod names;
mod netlink;
pub mod nft;
mod port;
mod segment;
mod sweep;
mod switch;
pub mod tc;

pub use guard::Guard;
pub use names::{IFNAME_MAX, bridge_name, host_port_name, ifb_name, port_key, tap_name, vlan_name};
pub use port::{PortConfig, RouteVia, ZoneChange, ZoneNic, ZoneRoute};
pub use segment::{Segment, Uplink, remove_bridge_if_unused};
pub use sweep::host_links;
pub use switch::Switch;

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
