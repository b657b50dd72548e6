//! Anti-spoofing: what a guest may send into its segment, as nf_tables rules in the bridge
//! family, checked on every frame a guest port (a zone's veth host end, a microVM's TAP)
//! brings into its bridge.
//!
//! One table per vmmd (`bridge hull_<owner>`), loaded whole at vmmd start: a base chain
//! on the bridge's prerouting hook sends frames from guest ports to the `guard` chain,
//! whose fixed rules look the port up in sets. A port is only data: set elements keyed by
//! its interface index (`iif . ether_addr` in `macs`, `iif . ipv4_addr` ranges in `ip4`,
//! and so on), so plumbing a NIC is one batch of a few elements whatever the number of
//! guests, and the rules never change while guests run. Keys use the index, not the name:
//! an index is never handed out again soon, so elements a crash left behind cannot grant
//! anything to a later port of the same name; they are collected ([`delete_stale`]) when ports
//! go and when vmmd starts ([`install`]).
//!
//! What a guarded port may send (each check lifted by the NIC's property in brackets):
//! - frames from its MAC only, ARP with its MAC as sender, DHCP requests with its MAC as
//!   client hardware address, IPv6 neighbour discovery with its MAC in the link-layer
//!   option (`allow_mac_spoofing`);
//! - IPv4 from its addresses and `allowed_ips` only, ARP with one of them (or 0.0.0.0, a
//!   probe) as sender; from 0.0.0.0 only DHCP requests (`allow_ip_spoofing`). A NIC whose
//!   IPv4 address comes from DHCP and that names no IPv4 `allowed_ips` is not held to an
//!   IPv4 source: hull cannot know the lease;
//! - IPv6 from its addresses, `allowed_ips` and the EUI-64 link-local address of its MAC;
//!   neighbour advertisements only for those; from :: only neighbour solicitations (DAD)
//!   and MLDv2 reports (`allow_ip_spoofing`; `addrconf` without IPv6 `allowed_ips` as for
//!   DHCP above);
//! - no DHCP or DHCPv6 server replies, no router advertisements (`allow_dhcp_spoofing`);
//! - only IPv4, ARP and IPv6 frames (`allow_restricted_traffic`), never 802.1Q or 802.1ad
//!   tagged ones: a guest cannot hop onto another VLAN of an uplink;
//! - no TCP or UDP to the destination ports in `blocked_outgoing_ports` (SmartOS's), over
//!   IPv4 or IPv6.
//!
//! This module must never touch another vmmd's table, nor flush or replace rules while
//! guests run (a new vmmd replaces the whole table in one transaction).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::nft::{
    self, Attrs, Base, Batch, Elem, Expr, F_APPEND, F_CREATE, F_EXCL, MetaKey, MsgType, Netfilter,
    REG_1, SET_CONCAT, SET_INTERVAL, SET_MAP, Verdict, attr, reg32,
};

/// What a port may send. Built by vmmd from a NIC's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The NIC's MAC.
    pub mac: [u8; 6],
    /// The IPv4 prefixes the guest may send from; `None`: any (the check is off).
    pub ipv4: Option<Vec<(Ipv4Addr, u8)>>,
    /// The IPv6 prefixes the guest may send from, besides its MAC's link-local address;
    /// `None`: any.
    pub ipv6: Option<Vec<(Ipv6Addr, u8)>>,
    /// Any source MAC (`allow_mac_spoofing`).
    pub any_mac: bool,
    /// DHCP server replies and router advertisements (`allow_dhcp_spoofing`).
    pub dhcp_server: bool,
    /// Frames other than IPv4, ARP and IPv6 (`allow_restricted_traffic`).
    pub any_ethertype: bool,
    /// TCP and UDP destination ports the guest may not send to (`blocked_outgoing_ports`).
    pub blocked_ports: Vec<u16>,
}

/// The table of vmmd `owner`.
pub fn table_name(owner: &str) -> String {
    format!("hull_{owner}")
}

// nft's datatype numbers, so that `nft list` shows keys as addresses and names.
const T_IFINDEX: u32 = 20;
const T_IPV4: u32 = 7;
const T_IPV6: u32 = 8;
const T_ETHER: u32 = 9;
const T_INET_SERVICE: u32 = 13;

struct SetDef {
    name: &'static str,
    id: u32,
    key_type: u32,
    key_len: u32,
    interval_fields: &'static [u32],
}

const PORTS: &str = "ports";
const MAC_FREE: &str = "mac_free";
const IP4_FREE: &str = "ip4_free";
const IP6_FREE: &str = "ip6_free";
const DHCP_OK: &str = "dhcp_ok";
const ANY_PROTO: &str = "any_proto";
const MACS: &str = "macs";
const IP4: &str = "ip4";
const IP4_NETS: &str = "ip4_nets";
const IP6: &str = "ip6";
const IP6_NETS: &str = "ip6_nets";
const BLOCKED: &str = "blocked_ports";

const fn flag_set(name: &'static str, id: u32) -> SetDef {
    SetDef {
        name,
        id,
        key_type: T_IFINDEX,
        key_len: 4,
        interval_fields: &[],
    }
}

const SETS: &[SetDef] = &[
    flag_set(PORTS, 1),
    flag_set(MAC_FREE, 2),
    flag_set(IP4_FREE, 3),
    flag_set(IP6_FREE, 4),
    flag_set(DHCP_OK, 5),
    flag_set(ANY_PROTO, 6),
    SetDef {
        name: MACS,
        id: 7,
        key_type: (T_IFINDEX << 6) | T_ETHER,
        key_len: 12,
        interval_fields: &[],
    },
    // A port's own addresses (exact: one hash lookup for nearly every packet), and the
    // prefixes of its allowed_ips (ranges, looked up only when the first misses).
    SetDef {
        name: IP4,
        id: 8,
        key_type: (T_IFINDEX << 6) | T_IPV4,
        key_len: 8,
        interval_fields: &[],
    },
    SetDef {
        name: IP4_NETS,
        id: 9,
        key_type: (T_IFINDEX << 6) | T_IPV4,
        key_len: 8,
        interval_fields: &[4, 4],
    },
    SetDef {
        name: IP6,
        id: 10,
        key_type: (T_IFINDEX << 6) | T_IPV6,
        key_len: 20,
        interval_fields: &[],
    },
    SetDef {
        name: IP6_NETS,
        id: 11,
        key_type: (T_IFINDEX << 6) | T_IPV6,
        key_len: 20,
        interval_fields: &[4, 16],
    },
    // A port's blocked destination ports: the index, then the port (2 bytes, padded to 4).
    SetDef {
        name: BLOCKED,
        id: 12,
        key_type: (T_IFINDEX << 6) | T_INET_SERVICE,
        key_len: 8,
        interval_fields: &[],
    },
];

fn set_id(name: &str) -> u32 {
    SETS.iter().find(|s| s.name == name).map_or(0, |s| s.id)
}

const CHAIN_PRE: &str = "pre";
const CHAIN_GUARD: &str = "guard";
const CHAIN_TAGGED: &str = "tagged";
const CHAIN_ARP: &str = "arp";
const CHAIN_IP4: &str = "v4";
const CHAIN_UDP4: &str = "udp4";
const CHAIN_IP6: &str = "v6";
const CHAIN_ICMP6: &str = "icmp6";
const CHAIN_UDP6: &str = "udp6";
/// The verdict map from Ethernet type to chain, its set id, and nft's numbers for it.
const ETHERTYPES: &str = "ethertypes";
const ETHERTYPES_ID: u32 = 100;
const T_ETHERTYPE: u32 = 10;
/// `NFT_DATA_VERDICT`: a map whose values are verdicts.
const DATA_VERDICT: u32 = 0xffff_ff00;
/// The bridge family's prerouting hook, at the filter priority.
const HOOK_PREROUTING: u32 = 0;
const PRIORITY_FILTER: i32 = -200;

/// Ethernet types and IP protocols the rules name.
const ETH_IP: [u8; 2] = 0x0800u16.to_be_bytes();
const ETH_ARP: [u8; 2] = 0x0806u16.to_be_bytes();
const ETH_IP6: [u8; 2] = 0x86ddu16.to_be_bytes();
const ETH_8021Q: [u8; 2] = 0x8100u16.to_be_bytes();
const ETH_8021AD: [u8; 2] = 0x88a8u16.to_be_bytes();
const PROTO_UDP: u8 = 17;
const PROTO_TCP: u8 = 6;
const PROTO_ICMP6: u8 = 58;

// Building blocks of rules. Concatenated keys start in register 1 (the interface index,
// 4 bytes) and go on in the 32-bit register after it, as nft lays them out.
fn iif() -> Expr {
    Expr::Meta {
        key: MetaKey::Iif,
        dreg: REG_1,
    }
}

fn load(base: Base, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::Payload {
        base,
        offset,
        len,
        dreg,
    }
}

fn is(base: Base, offset: u32, value: &[u8]) -> [Expr; 2] {
    [
        load(base, offset, value.len() as u32, REG_1),
        Expr::Cmp {
            sreg: REG_1,
            neq: false,
            data: value.to_vec(),
        },
    ]
}

fn not(value: &[u8]) -> Expr {
    Expr::Cmp {
        sreg: REG_1,
        neq: true,
        data: value.to_vec(),
    }
}

/// The port is not in flag set `set` (its check applies).
fn held(set: &str) -> [Expr; 2] {
    [
        iif(),
        Expr::Lookup {
            set: set.into(),
            set_id: set_id(set),
            sreg: REG_1,
            inv: true,
        },
    ]
}

/// The port's index followed by `len` bytes at `offset` of `base` is not in `set`.
fn pair_not_in(set: &str, base: Base, offset: u32, len: u32) -> Vec<Expr> {
    vec![
        iif(),
        load(base, offset, len, reg32(1)),
        Expr::Lookup {
            set: set.into(),
            set_id: set_id(set),
            sreg: REG_1,
            inv: true,
        },
    ]
}

/// The port's index followed by the `len`-byte address at `offset` of `base` is in
/// neither its exact set nor its ranges.
fn addr_not_ours(exact: &str, nets: &str, base: Base, offset: u32, len: u32) -> Vec<Expr> {
    vec![
        iif(),
        load(base, offset, len, reg32(1)),
        Expr::Lookup {
            set: exact.into(),
            set_id: set_id(exact),
            sreg: REG_1,
            inv: true,
        },
        // Range sets keep the index in network order, as nft does for interval keys.
        Expr::Hton { reg: REG_1, len: 4 },
        Expr::Lookup {
            set: nets.into(),
            set_id: set_id(nets),
            sreg: REG_1,
            inv: true,
        },
    ]
}

/// The port's index followed by the TCP or UDP destination port is in [`BLOCKED`].
fn blocked_port() -> Vec<Expr> {
    vec![
        iif(),
        load(Base::Transport, 2, 2, reg32(1)),
        Expr::Lookup {
            set: BLOCKED.into(),
            set_id: set_id(BLOCKED),
            sreg: REG_1,
            inv: false,
        },
    ]
}

fn drop_rule(parts: Vec<Vec<Expr>>) -> Vec<Expr> {
    let mut v: Vec<Expr> = parts.into_iter().flatten().collect();
    v.push(Expr::Counter);
    v.push(Expr::Verdict(Verdict::Drop));
    v
}

/// Goes on in `chain` when the parts match (for good: what `chain` does not drop is let
/// through).
fn goto_rule(parts: Vec<Vec<Expr>>, chain: &str) -> Vec<Expr> {
    let mut v: Vec<Expr> = parts.into_iter().flatten().collect();
    v.push(Expr::Verdict(Verdict::Goto(chain.into())));
    v
}

/// The address at `offset` is (`eq`) or is not the all-zero `zero`.
fn saddr_is(base: Base, offset: u32, zero: &[u8], eq: bool) -> Vec<Expr> {
    vec![
        load(base, offset, zero.len() as u32, REG_1),
        Expr::Cmp {
            sreg: REG_1,
            neq: !eq,
            data: zero.to_vec(),
        },
    ]
}

/// The transport protocol is (`eq`) or is not `p`.
fn l4(p: u8, eq: bool) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            neq: !eq,
            data: vec![p],
        },
    ]
}

/// The regular chains and their rules, in order. A frame from a guest port goes through
/// `guard` (its MAC, then by Ethernet type to one chain per protocol, where the cheapest
/// test of each rule comes first), so a TCP segment meets five rules, not twenty. Each rule
/// that does not jump drops (and counts) what it matches.
fn chains() -> Vec<(&'static str, Vec<Vec<Expr>>)> {
    use Base::{Link, Network, Transport};
    let zero4 = [0u8; 4];
    let zero6 = [0u8; 16];
    vec![
        (
            CHAIN_GUARD,
            vec![
                // Its own MAC only.
                drop_rule(vec![pair_not_in(MACS, Link, 6, 6), held(MAC_FREE).to_vec()]),
                // IPv4, ARP and IPv6 go on to their chains, tagged frames are dropped
                // (`ethertypes`); anything else only with allow_restricted_traffic.
                vec![
                    load(Link, 12, 2, REG_1),
                    Expr::Vmap {
                        set: ETHERTYPES.into(),
                        set_id: ETHERTYPES_ID,
                        sreg: REG_1,
                    },
                ],
                drop_rule(vec![held(ANY_PROTO).to_vec()]),
            ],
        ),
        (
            CHAIN_TAGGED,
            // No VLAN tags from a guest: it cannot hop onto another VLAN of an uplink.
            vec![drop_rule(vec![])],
        ),
        (
            CHAIN_ARP,
            vec![
                // Ethernet and IPv4 only (a field per rule, so that `nft list` reads as
                // what it does).
                drop_rule(vec![vec![load(Network, 0, 2, REG_1), not(&[0, 1])]]),
                drop_rule(vec![vec![load(Network, 2, 2, REG_1), not(&ETH_IP)]]),
                drop_rule(vec![vec![load(Network, 4, 1, REG_1), not(&[6])]]),
                drop_rule(vec![vec![load(Network, 5, 1, REG_1), not(&[4])]]),
                // The sender is its MAC and one of its addresses (or 0.0.0.0, a probe).
                drop_rule(vec![
                    pair_not_in(MACS, Network, 8, 6),
                    held(MAC_FREE).to_vec(),
                ]),
                drop_rule(vec![
                    saddr_is(Network, 14, &zero4, false),
                    addr_not_ours(IP4, IP4_NETS, Network, 14, 4),
                    held(IP4_FREE).to_vec(),
                ]),
            ],
        ),
        (
            CHAIN_IP4,
            vec![
                // From its addresses; from 0.0.0.0 only DHCP requests (UDP 68 -> 67).
                drop_rule(vec![
                    saddr_is(Network, 12, &zero4, false),
                    addr_not_ours(IP4, IP4_NETS, Network, 12, 4),
                    held(IP4_FREE).to_vec(),
                ]),
                drop_rule(vec![
                    saddr_is(Network, 12, &zero4, true),
                    held(IP4_FREE).to_vec(),
                    l4(PROTO_UDP, false),
                ]),
                drop_rule(vec![
                    saddr_is(Network, 12, &zero4, true),
                    held(IP4_FREE).to_vec(),
                    vec![load(Transport, 0, 4, REG_1), not(&[0, 68, 0, 67])],
                ]),
                // Not to its blocked_outgoing_ports.
                drop_rule(vec![l4(PROTO_TCP, true), blocked_port()]),
                drop_rule(vec![l4(PROTO_UDP, true), blocked_port()]),
                goto_rule(vec![l4(PROTO_UDP, true)], CHAIN_UDP4),
            ],
        ),
        (
            CHAIN_UDP4,
            vec![
                // A DHCP request's client hardware address (at 28 in BOOTP) is its MAC.
                drop_rule(vec![
                    is(Transport, 0, &[0, 68, 0, 67]).to_vec(),
                    pair_not_in(MACS, Transport, 8 + 28, 6),
                    held(MAC_FREE).to_vec(),
                ]),
                // No DHCP server.
                drop_rule(vec![
                    is(Transport, 0, &67u16.to_be_bytes()).to_vec(),
                    held(DHCP_OK).to_vec(),
                ]),
            ],
        ),
        (
            CHAIN_IP6,
            vec![
                // From its addresses; from :: only DAD solicitations and MLDv2 reports.
                drop_rule(vec![
                    saddr_is(Network, 8, &zero6, false),
                    addr_not_ours(IP6, IP6_NETS, Network, 8, 16),
                    held(IP6_FREE).to_vec(),
                ]),
                drop_rule(vec![
                    saddr_is(Network, 8, &zero6, true),
                    held(IP6_FREE).to_vec(),
                    l4(PROTO_ICMP6, false),
                ]),
                drop_rule(vec![
                    saddr_is(Network, 8, &zero6, true),
                    held(IP6_FREE).to_vec(),
                    vec![load(Transport, 0, 1, REG_1), not(&[135]), not(&[143])],
                ]),
                drop_rule(vec![l4(PROTO_TCP, true), blocked_port()]),
                drop_rule(vec![l4(PROTO_UDP, true), blocked_port()]),
                goto_rule(vec![l4(PROTO_ICMP6, true)], CHAIN_ICMP6),
                goto_rule(vec![l4(PROTO_UDP, true)], CHAIN_UDP6),
            ],
        ),
        (
            CHAIN_ICMP6,
            vec![
                // Neighbour advertisements only for its own addresses.
                drop_rule(vec![
                    is(Transport, 0, &[136]).to_vec(),
                    addr_not_ours(IP6, IP6_NETS, Transport, 8, 16),
                    held(IP6_FREE).to_vec(),
                ]),
                // Its MAC in the first link-layer option of solicitations (source, at 24),
                // advertisements (target, at 24) and router solicitations (source, at 8).
                nd_option_rule(135, 24, 1),
                nd_option_rule(136, 24, 2),
                nd_option_rule(133, 8, 1),
                // No router advertisements.
                drop_rule(vec![
                    is(Transport, 0, &[134]).to_vec(),
                    held(DHCP_OK).to_vec(),
                ]),
            ],
        ),
        (
            CHAIN_UDP6,
            // No DHCPv6 server.
            vec![drop_rule(vec![
                is(Transport, 0, &547u16.to_be_bytes()).to_vec(),
                held(DHCP_OK).to_vec(),
            ])],
        ),
    ]
}

fn nd_option_rule(icmp_type: u8, option_at: u32, option_type: u8) -> Vec<Expr> {
    drop_rule(vec![
        is(Base::Transport, 0, &[icmp_type]).to_vec(),
        is(Base::Transport, option_at, &[option_type]).to_vec(),
        pair_not_in(MACS, Base::Transport, option_at + 2, 6),
        held(MAC_FREE).to_vec(),
    ])
}

/// The `ethertypes` verdict map: Ethernet type -> the chain for it (tagged frames: the
/// chain that drops them).
fn ethertypes() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (ETH_IP.to_vec(), CHAIN_IP4),
        (ETH_ARP.to_vec(), CHAIN_ARP),
        (ETH_IP6.to_vec(), CHAIN_IP6),
        (ETH_8021Q.to_vec(), CHAIN_TAGGED),
        (ETH_8021AD.to_vec(), CHAIN_TAGGED),
    ]
}

/// The batch that replaces vmmd `owner`'s table with a fresh one holding `ports` (index
/// and guard): made if missing, deleted, made again, in one transaction, so frames see
/// either the old table or the new one, never none.
pub fn table_batch(owner: &str, ports: &[(u32, Guard)]) -> Batch {
    let table = table_name(owner);
    let mut b = Batch::new();
    let mut t = Attrs::new();
    t.str(attr::TABLE_NAME, &table).u32(attr::TABLE_FLAGS, 0);
    b.push(MsgType::NewTable, F_CREATE, &t);
    let mut name = Attrs::new();
    name.str(attr::TABLE_NAME, &table);
    b.push(MsgType::DelTable, 0, &name);
    b.push(MsgType::NewTable, F_CREATE | F_EXCL, &t);
    for s in SETS {
        let mut a = Attrs::new();
        let mut flags = 0;
        if !s.interval_fields.is_empty() {
            flags |= SET_INTERVAL | SET_CONCAT;
        }
        a.str(attr::SET_TABLE, &table)
            .str(attr::SET_NAME, s.name)
            .u32(attr::SET_FLAGS, flags)
            .u32(attr::SET_KEY_TYPE, s.key_type)
            .u32(attr::SET_KEY_LEN, s.key_len)
            .u32(attr::SET_ID, s.id);
        if s.key_type == T_IFINDEX {
            // nft's user data: the key is in host byte order (so `nft list` shows names).
            a.put(attr::SET_USERDATA, &[0, 4, 1, 0, 0, 0]);
        }
        if !s.interval_fields.is_empty() {
            a.nest(attr::SET_DESC, |d| {
                d.nest(attr::SET_DESC_CONCAT, |c| {
                    for len in s.interval_fields {
                        c.nest(attr::LIST_ELEM, |f| {
                            f.u32(attr::SET_FIELD_LEN, *len);
                        });
                    }
                });
            });
        }
        b.push(MsgType::NewSet, F_CREATE | F_EXCL, &a);
    }
    let mut pre = Attrs::new();
    pre.str(attr::CHAIN_TABLE, &table)
        .str(attr::CHAIN_NAME, CHAIN_PRE)
        .nest(attr::CHAIN_HOOK, |h| {
            h.u32(attr::HOOK_HOOKNUM, HOOK_PREROUTING)
                .u32(attr::HOOK_PRIORITY, PRIORITY_FILTER as u32);
        })
        .u32(attr::CHAIN_POLICY, 1)
        .str(attr::CHAIN_TYPE, "filter");
    b.push(MsgType::NewChain, F_CREATE | F_EXCL, &pre);
    let chains = chains();
    for (name, _) in &chains {
        let mut c = Attrs::new();
        c.str(attr::CHAIN_TABLE, &table).str(attr::CHAIN_NAME, name);
        b.push(MsgType::NewChain, F_CREATE | F_EXCL, &c);
    }
    // The verdict map, after the chains its elements jump to.
    let mut m = Attrs::new();
    m.str(attr::SET_TABLE, &table)
        .str(attr::SET_NAME, ETHERTYPES)
        .u32(attr::SET_FLAGS, SET_MAP)
        .u32(attr::SET_KEY_TYPE, T_ETHERTYPE)
        .u32(attr::SET_KEY_LEN, 2)
        .u32(attr::SET_DATA_TYPE, DATA_VERDICT)
        .u32(attr::SET_ID, ETHERTYPES_ID);
    b.push(MsgType::NewSet, F_CREATE | F_EXCL, &m);
    b.push(
        MsgType::NewSetElem,
        F_CREATE | F_EXCL,
        &nft::verdict_elements(&table, ETHERTYPES, &ethertypes()),
    );
    let jump = vec![
        iif(),
        Expr::Lookup {
            set: PORTS.into(),
            set_id: set_id(PORTS),
            sreg: REG_1,
            inv: false,
        },
        Expr::Verdict(Verdict::Jump(CHAIN_GUARD.into())),
    ];
    push_rule(&mut b, &table, CHAIN_PRE, &jump);
    for (name, rules) in &chains {
        for r in rules {
            push_rule(&mut b, &table, name, r);
        }
    }
    for (ifindex, g) in ports {
        add_elements(&mut b, &table, &port_elements(*ifindex, g));
    }
    b
}

fn push_rule(b: &mut Batch, table: &str, chain: &str, exprs: &[Expr]) {
    let mut a = Attrs::new();
    a.str(attr::RULE_TABLE, table)
        .str(attr::RULE_CHAIN, chain)
        .nest(attr::RULE_EXPRESSIONS, |list| {
            for e in exprs {
                list.expr(e);
            }
        });
    b.push(MsgType::NewRule, F_CREATE | F_APPEND, &a);
}

/// The set elements that describe a port: (set, element).
pub fn port_elements(ifindex: u32, g: &Guard) -> Vec<(&'static str, Elem)> {
    let ix = ifindex.to_ne_bytes().to_vec();
    let ix_be = ifindex.to_be_bytes().to_vec();
    let flag = |set| {
        (
            set,
            Elem {
                key: ix.clone(),
                key_end: None,
            },
        )
    };
    let mut out = vec![flag(PORTS)];
    if g.any_mac {
        out.push(flag(MAC_FREE));
    }
    if g.dhcp_server {
        out.push(flag(DHCP_OK));
    }
    if g.any_ethertype {
        out.push(flag(ANY_PROTO));
    }
    let mut ports: Vec<u16> = g.blocked_ports.clone();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        let mut key = ix.clone();
        key.extend_from_slice(&port.to_be_bytes());
        key.extend_from_slice(&[0, 0]);
        out.push((BLOCKED, Elem { key, key_end: None }));
    }
    let mut mac = ix.clone();
    mac.extend_from_slice(&g.mac);
    mac.extend_from_slice(&[0, 0]);
    out.push((
        MACS,
        Elem {
            key: mac,
            key_end: None,
        },
    ));
    match &g.ipv4 {
        None => out.push(flag(IP4_FREE)),
        Some(prefixes) => {
            let prefixes = prefixes
                .iter()
                .map(|(a, p)| (u128::from(u32::from(*a)), *p.min(&32)));
            for (set, key) in addresses(&ix, &ix_be, prefixes, 32, 4, (IP4, IP4_NETS)) {
                out.push((set, key));
            }
        }
    }
    match &g.ipv6 {
        None => out.push(flag(IP6_FREE)),
        Some(prefixes) => {
            let ll = (u128::from(link_local(g.mac)), 128);
            let prefixes = prefixes
                .iter()
                .map(|(a, p)| (u128::from(*a), *p.min(&128)))
                .chain(std::iter::once(ll));
            for (set, key) in addresses(&ix, &ix_be, prefixes, 128, 16, (IP6, IP6_NETS)) {
                out.push((set, key));
            }
        }
    }
    out
}

/// The elements of a port's addresses in a `bits`-wide family: whole addresses in the
/// exact set (keyed by the index in host order), shorter prefixes merged into ranges in the
/// range set (keyed by the index in network order). `width` is the address in bytes.
fn addresses(
    ix: &[u8],
    ix_be: &[u8],
    prefixes: impl Iterator<Item = (u128, u8)>,
    bits: u32,
    width: usize,
    (exact, nets): (&'static str, &'static str),
) -> Vec<(&'static str, Elem)> {
    let bytes = |a: u128| a.to_be_bytes()[16 - width..].to_vec();
    let mut whole = BTreeSet::new();
    let mut ranges = Vec::new();
    for (a, p) in prefixes {
        if u32::from(p) == bits {
            whole.insert(a);
        } else {
            ranges.push(range(a, p, bits));
        }
    }
    let mut out: Vec<(&'static str, Elem)> = whole
        .into_iter()
        .map(|a| {
            (
                exact,
                Elem {
                    key: [ix, &bytes(a)].concat(),
                    key_end: None,
                },
            )
        })
        .collect();
    for (lo, hi) in merge(ranges.into_iter()) {
        out.push((nets, interval(ix_be, &bytes(lo), &bytes(hi))));
    }
    out
}

fn interval(ix: &[u8], lo: &[u8], hi: &[u8]) -> Elem {
    let mut key = ix.to_vec();
    key.extend_from_slice(lo);
    let mut end = ix.to_vec();
    end.extend_from_slice(hi);
    Elem {
        key,
        key_end: Some(end),
    }
}

/// The first and last address of `addr/prefix` in a `bits`-wide family.
fn range(addr: u128, prefix: u8, bits: u32) -> (u128, u128) {
    let host_bits = bits - u32::from(prefix).min(bits);
    let mask: u128 = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (addr & !mask, addr | mask)
}

/// Merges overlapping and adjacent ranges (the kernel refuses overlapping intervals).
fn merge(ranges: impl Iterator<Item = (u128, u128)>) -> Vec<(u128, u128)> {
    let mut v: Vec<(u128, u128)> = ranges.collect();
    v.sort();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// The EUI-64 link-local address of `mac` (what Linux guests make by default).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

fn add_elements(b: &mut Batch, table: &str, elems: &[(&'static str, Elem)]) {
    for s in SETS {
        let mine: Vec<Elem> = elems
            .iter()
            .filter(|(set, _)| *set == s.name)
            .map(|(_, e)| e.clone())
            .collect();
        if !mine.is_empty() {
            b.push(
                MsgType::NewSetElem,
                F_CREATE | F_EXCL,
                &nft::elements(table, s.name, &mine),
            );
        }
    }
}

fn del_elements(b: &mut Batch, table: &str, set: &str, elems: &[Elem]) {
    if !elems.is_empty() {
        b.push(MsgType::DelSetElem, 0, &nft::elements(table, set, elems));
    }
}

/// Names the messages of a batch for error reports.
fn describe(b: &Batch) -> impl Fn(usize) -> String + '_ {
    move |i| match b.msgs.get(i).map(|m| m.ty) {
        Some(MsgType::NewTable) | Some(MsgType::DelTable) => "the anti-spoofing table".into(),
        Some(MsgType::NewSet) => "an anti-spoofing set".into(),
        Some(MsgType::NewChain) => "an anti-spoofing chain".into(),
        Some(MsgType::NewRule) => "an anti-spoofing rule".into(),
        Some(MsgType::NewSetElem) => "a port's anti-spoofing entries".into(),
        Some(MsgType::DelSetElem) => "removing a port's anti-spoofing entries".into(),
        _ => format!("message {i}"),
    }
}

/// Loads vmmd `owner`'s table afresh with `ports` (the guest ports that exist now):
/// whatever the table held before, other ports' elements included, is gone.
pub fn install(
    nf: &mut dyn Netfilter,
    owner: &str,
    ports: &[(u32, Guard)],
) -> Result<(), nft::NftError> {
    let b = table_batch(owner, ports);
    nf.commit(&b, &describe(&b))
}

/// Removes vmmd `owner`'s table, if there is one (made and deleted in one transaction, so
/// a missing table is no error).
pub fn uninstall(nf: &mut dyn Netfilter, owner: &str) -> Result<(), nft::NftError> {
    let table = table_name(owner);
    let mut b = Batch::new();
    let mut t = Attrs::new();
    t.str(attr::TABLE_NAME, &table).u32(attr::TABLE_FLAGS, 0);
    b.push(MsgType::NewTable, F_CREATE, &t);
    let mut name = Attrs::new();
    name.str(attr::TABLE_NAME, &table);
    b.push(MsgType::DelTable, 0, &name);
    nf.commit(&b, &describe(&b))
}

/// Whether `owner`'s table holds no port (or does not exist).
pub fn is_unused(nf: &mut dyn Netfilter, owner: &str) -> Result<bool, nft::NftError> {
    match nf.list(&table_name(owner), PORTS) {
        Ok(e) => Ok(e.is_empty()),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Adds the elements of a new port (index `ifindex`).
pub fn add(
    nf: &mut dyn Netfilter,
    owner: &str,
    ifindex: u32,
    g: &Guard,
) -> Result<(), nft::NftError> {
    let mut b = Batch::new();
    add_elements(&mut b, &table_name(owner), &port_elements(ifindex, g));
    nf.commit(&b, &describe(&b))
}

/// The port index an element of a set belongs to (interval sets keep it in network order).
fn port_of(e: &Elem, interval: bool) -> Option<u32> {
    let ix: [u8; 4] = e.key.get(..4)?.try_into().ok()?;
    Some(if interval {
        u32::from_be_bytes(ix)
    } else {
        u32::from_ne_bytes(ix)
    })
}

/// The elements of `table` whose port index satisfies `doomed`, by set.
fn elements_where(
    nf: &mut dyn Netfilter,
    table: &str,
    doomed: &dyn Fn(u32) -> bool,
) -> Result<Vec<(&'static str, Vec<Elem>)>, nft::NftError> {
    let mut out = Vec::new();
    for s in SETS {
        let interval = !s.interval_fields.is_empty();
        let elems: Vec<Elem> = nf
            .list(table, s.name)?
            .into_iter()
            .filter(|e| port_of(e, interval).is_some_and(doomed))
            .collect();
        out.push((s.name, elems));
    }
    Ok(out)
}

/// Replaces the elements of port `ifindex` with those of `g`, in one transaction.
pub fn replace(
    nf: &mut dyn Netfilter,
    owner: &str,
    ifindex: u32,
    g: &Guard,
) -> Result<(), nft::NftError> {
    let table = table_name(owner);
    let old = elements_where(nf, &table, &|ix| ix == ifindex)?;
    let mut b = Batch::new();
    for (set, elems) in &old {
        del_elements(&mut b, &table, set, elems);
    }
    add_elements(&mut b, &table, &port_elements(ifindex, g));
    nf.commit(&b, &describe(&b))
}

/// Every element of `owner`'s table, by set (none when there is no table): the first half
/// of collecting the elements of ports that are gone. The caller lists the links that
/// exist after this (a port is made before its elements, so an element listed here belongs
/// to a link in that later list, or to one gone since) and hands both to [`delete_stale`].
pub fn snapshot(
    nf: &mut dyn Netfilter,
    owner: &str,
) -> Result<Vec<(&'static str, Vec<Elem>)>, nft::NftError> {
    match elements_where(nf, &table_name(owner), &|_| true) {
        Ok(all) => Ok(all),
        // No table (vmmd never installed it here): nothing to collect.
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Deletes the elements in `snapshot` whose port is not in `live` (the indexes of the
/// links there are), in one transaction. Returns how many went.
pub fn delete_stale(
    nf: &mut dyn Netfilter,
    owner: &str,
    snapshot: &[(&'static str, Vec<Elem>)],
    live: &BTreeSet<u32>,
) -> Result<usize, nft::NftError> {
    let table = table_name(owner);
    let mut b = Batch::new();
    let mut n = 0;
    for s in SETS {
        let interval = !s.interval_fields.is_empty();
        let Some((_, elems)) = snapshot.iter().find(|(name, _)| *name == s.name) else {
            continue;
        };
        let stale: Vec<Elem> = elems
            .iter()
            .filter(|e| port_of(e, interval).is_some_and(|ix| !live.contains(&ix)))
            .cloned()
            .collect();
        n += stale.len();
        del_elements(&mut b, &table, s.name, &stale);
    }
    nf.commit(&b, &describe(&b))?;
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A recording nf_tables: applies batches of element changes to in-memory sets the way
    /// the kernel does (all or nothing; adding an element twice or deleting a missing one
    /// fails the batch), and keeps every batch.
    #[derive(Debug, Default)]
    pub struct FakeNetfilter {
        pub sets: BTreeMap<(String, String), BTreeSet<Elem>>,
        pub batches: Vec<Batch>,
        pub tables: BTreeSet<String>,
    }

    fn decode_elems(attrs: &[u8]) -> (String, String, Vec<Elem>) {
        let mut table = String::new();
        let mut set = String::new();
        let mut elems = Vec::new();
        for a in nft::attrs(attrs) {
            let (ty, v) = a.expect("attr");
            let s = || {
                String::from_utf8_lossy(v)
                    .trim_end_matches('\0')
                    .to_string()
            };
            match ty {
                attr::SET_ELEM_LIST_TABLE => table = s(),
                attr::SET_ELEM_LIST_SET => set = s(),
                attr::SET_ELEM_LIST_ELEMENTS => {
                    let mut body = vec![7, 0, 0, 0];
                    let mut wrap = Attrs::new();
                    wrap.put(attr::SET_ELEM_LIST_ELEMENTS, v);
                    body.extend_from_slice(wrap.bytes());
                    let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
                    msg.extend_from_slice(&((10u16 << 8) | 12).to_ne_bytes());
                    msg.extend_from_slice(&[0; 10]);
                    msg.extend_from_slice(&body);
                    match nft::parse_replies(&msg).expect("elements").pop() {
                        Some(nft::Reply::Elems { elems: e, .. }) => elems = e,
                        other => panic!("{other:?}"),
                    }
                }
                _ => {}
            }
        }
        (table, set, elems)
    }

    impl Netfilter for FakeNetfilter {
        fn commit(
            &mut self,
            batch: &Batch,
            _: &dyn Fn(usize) -> String,
        ) -> Result<(), nft::NftError> {
            self.batches.push(batch.clone());
            let mut sets = self.sets.clone();
            let mut tables = self.tables.clone();
            for (i, m) in batch.msgs.iter().enumerate() {
                let refused = |errno| nft::NftError::Refused {
                    what: format!("message {i}"),
                    errno,
                    msg: None,
                };
                match m.ty {
                    MsgType::NewTable => {
                        let name = nft::attrs(&m.attrs)
                            .filter_map(Result::ok)
                            .find(|(t, _)| *t == attr::TABLE_NAME)
                            .map(|(_, v)| {
                                String::from_utf8_lossy(v)
                                    .trim_end_matches('\0')
                                    .to_string()
                            })
                            .expect("name");
                        if !tables.insert(name) && m.flags & F_EXCL != 0 {
                            return Err(refused(libc::EEXIST));
                        }
                    }
                    MsgType::DelTable => {
                        let name = nft::attrs(&m.attrs)
                            .filter_map(Result::ok)
                            .find(|(t, _)| *t == attr::TABLE_NAME)
                            .map(|(_, v)| {
                                String::from_utf8_lossy(v)
                                    .trim_end_matches('\0')
                                    .to_string()
                            })
                            .expect("name");
                        tables.remove(&name);
                        sets.retain(|(t, _), _| *t != name);
                    }
                    MsgType::NewSet => {
                        let mut t = String::new();
                        let mut n = String::new();
                        for (ty, v) in nft::attrs(&m.attrs).filter_map(Result::ok) {
                            let s = String::from_utf8_lossy(v)
                                .trim_end_matches('\0')
                                .to_string();
                            match ty {
                                attr::SET_TABLE => t = s,
                                attr::SET_NAME => n = s,
                                _ => {}
                            }
                        }
                        sets.insert((t, n), BTreeSet::new());
                    }
                    MsgType::NewSetElem => {
                        let (t, s, elems) = decode_elems(&m.attrs);
                        let set = sets.get_mut(&(t, s)).ok_or_else(|| refused(libc::ENOENT))?;
                        for e in elems {
                            if !set.insert(e) {
                                return Err(refused(libc::EEXIST));
                            }
                        }
                    }
                    MsgType::DelSetElem => {
                        let (t, s, elems) = decode_elems(&m.attrs);
                        let set = sets.get_mut(&(t, s)).ok_or_else(|| refused(libc::ENOENT))?;
                        for e in elems {
                            if !set.remove(&e) {
                                return Err(refused(libc::ENOENT));
                            }
                        }
                    }
                    _ => {}
                }
            }
            self.sets = sets;
            self.tables = tables;
            Ok(())
        }

        fn list(&mut self, table: &str, set: &str) -> Result<Vec<Elem>, nft::NftError> {
            self.sets
                .get(&(table.to_string(), set.to_string()))
                .map(|s| s.iter().cloned().collect())
                .ok_or(nft::NftError::Refused {
                    what: "list".into(),
                    errno: libc::ENOENT,
                    msg: None,
                })
        }
    }

    pub fn guard(mac: u8) -> Guard {
        Guard {
            mac: [2, 0, 0, 0, 0, mac],
            ipv4: Some(vec![("192.0.2.11".parse().expect("ip"), 32)]),
            ipv6: Some(vec![]),
            any_mac: false,
            dhcp_server: false,
            any_ethertype: false,
            blocked_ports: Vec::new(),
        }
    }

    #[test]
    fn a_default_port_is_its_mac_its_addresses_and_its_link_local() {
        let e = port_elements(7, &guard(1));
        let sets: Vec<&str> = e.iter().map(|(s, _)| *s).collect();
        assert_eq!(sets, [PORTS, MACS, IP4, IP6]);
        assert_eq!(
            e[1].1.key,
            [7u32.to_ne_bytes().to_vec(), vec![2, 0, 0, 0, 0, 1, 0, 0]].concat()
        );
        // Whole addresses go to the exact sets, keyed in host order.
        let ip = [7u32.to_ne_bytes().to_vec(), vec![192, 0, 2, 11]].concat();
        assert_eq!(
            e[2].1,
            Elem {
                key: ip,
                key_end: None
            }
        );
        let ll: Ipv6Addr = "fe80::ff:fe00:1".parse().expect("ip");
        assert_eq!(link_local([2, 0, 0, 0, 0, 1]), ll);
        let key = [7u32.to_ne_bytes().to_vec(), ll.octets().to_vec()].concat();
        assert_eq!(e[3].1.key, key);
    }

    #[test]
    fn blocked_ports_are_keyed_by_port_index_then_the_port_padded() {
        let mut g = guard(1);
        g.blocked_ports = vec![25, 5301, 25];
        let blocked: Vec<Vec<u8>> = port_elements(7, &g)
            .into_iter()
            .filter(|(s, _)| *s == BLOCKED)
            .map(|(_, e)| e.key)
            .collect();
        let key = |p: u16| {
            [
                7u32.to_ne_bytes().to_vec(),
                p.to_be_bytes().to_vec(),
                vec![0, 0],
            ]
            .concat()
        };
        assert_eq!(blocked, [key(25), key(5301)], "sorted, once each");
    }

    #[test]
    fn spoofing_flags_become_flag_elements_and_ranges_merge() {
        let mut g = guard(2);
        g.any_mac = true;
        g.dhcp_server = true;
        g.any_ethertype = true;
        g.ipv6 = None;
        g.ipv4 = Some(vec![
            ("192.0.2.11".parse().expect("ip"), 32),
            ("192.0.2.0".parse().expect("ip"), 24),
            ("198.51.100.0".parse().expect("ip"), 25),
            ("198.51.100.128".parse().expect("ip"), 25),
        ]);
        let e = port_elements(9, &g);
        let sets: Vec<&str> = e.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            sets,
            [
                PORTS, MAC_FREE, DHCP_OK, ANY_PROTO, MACS, IP4, IP4_NETS, IP4_NETS, IP6_FREE
            ]
        );
        // Prefixes become merged ranges, keyed in network order.
        let ix = 9u32.to_be_bytes();
        assert_eq!(e[6].1.key, [&ix[..], &[192, 0, 2, 0]].concat());
        assert_eq!(e[6].1.key_end, Some([&ix[..], &[192, 0, 2, 255]].concat()));
        assert_eq!(e[7].1.key, [&ix[..], &[198, 51, 100, 0]].concat());
        assert_eq!(
            e[7].1.key_end,
            Some([&ix[..], &[198, 51, 100, 255]].concat())
        );
        assert_eq!(range(0, 0, 32), (0, 0xffff_ffff));
        assert_eq!(range(u128::from(u32::MAX), 0, 32).0, 0);
        assert_eq!(range(5, 128, 128), (5, 5));
        assert_eq!(range(5, 0, 128), (0, u128::MAX));
    }

    #[test]
    fn install_add_replace_and_collect_keep_the_sets_exact() {
        let mut nf = FakeNetfilter::default();
        install(&mut nf, "o", &[(3, guard(3))]).expect("install");
        let t = table_name("o");
        assert!(nf.tables.contains(&t));
        add(&mut nf, "o", 4, &guard(4)).expect("add");
        assert_eq!(
            nf.batches.last().map(|b| b.msgs.len()),
            Some(4),
            "one message per set touched"
        );
        // Adding the same port twice is refused, whole.
        assert!(add(&mut nf, "o", 4, &guard(4)).is_err());
        let mut g = guard(4);
        g.ipv4 = Some(vec![("203.0.113.9".parse().expect("ip"), 32)]);
        g.any_mac = true;
        replace(&mut nf, "o", 4, &g).expect("replace");
        let ip4 = &nf.sets[&(t.clone(), IP4.to_string())];
        let keys: Vec<&[u8]> = ip4.iter().map(|e| &e.key[4..]).collect();
        assert_eq!(keys, [&[192, 0, 2, 11][..], &[203, 0, 113, 9][..]]);
        assert_eq!(nf.sets[&(t.clone(), MAC_FREE.to_string())].len(), 1);
        // Port 3 is gone: collect removes its elements and nothing of port 4's.
        let snap = snapshot(&mut nf, "o").expect("snapshot");
        let n = delete_stale(&mut nf, "o", &snap, &[4].into_iter().collect()).expect("collect");
        assert_eq!(n, 4);
        let ports_left = |nf: &FakeNetfilter| -> usize {
            nf.sets
                .iter()
                .filter(|((_, set), _)| set != ETHERTYPES)
                .map(|(_, e)| e.len())
                .sum()
        };
        assert_eq!(ports_left(&nf), port_elements(4, &g).len());
        assert_eq!(
            nf.sets[&(t.clone(), ETHERTYPES.to_string())].len(),
            ethertypes().len()
        );
        assert!(!is_unused(&mut nf, "o").expect("list"));
        // A fresh install keeps only the ports it is given.
        install(&mut nf, "o", &[]).expect("install");
        assert_eq!(ports_left(&nf), 0);
        assert!(is_unused(&mut nf, "o").expect("list"));
        uninstall(&mut nf, "o").expect("uninstall");
        assert!(!nf.tables.contains(&t));
        uninstall(&mut nf, "o").expect("no table is no error");
        // Another owner's table is not touched.
        install(&mut nf, "p", &[(5, guard(5))]).expect("install");
        install(&mut nf, "o", &[]).expect("install");
        assert_eq!(nf.sets[&(table_name("p"), PORTS.to_string())].len(), 1);
    }

    #[test]
    fn every_rule_drops_counted_or_jumps_to_a_chain_and_names_known_sets() {
        let chains = chains();
        let names: Vec<&str> = chains.iter().map(|(n, _)| *n).collect();
        for (_, rules) in &chains {
            for r in rules {
                match r.last() {
                    Some(Expr::Verdict(Verdict::Drop)) => {
                        assert_eq!(r.get(r.len() - 2), Some(&Expr::Counter), "{r:?}");
                    }
                    Some(Expr::Verdict(Verdict::Goto(c))) => assert!(names.contains(&c.as_str())),
                    Some(Expr::Vmap { set, .. }) => assert_eq!(set, ETHERTYPES),
                    other => panic!("a rule ends in {other:?}"),
                }
                for e in r {
                    if let Expr::Lookup {
                        set, set_id: id, ..
                    } = e
                    {
                        assert_eq!(*id, super::set_id(set), "{set}");
                        assert!(*id > 0, "{set}");
                    }
                }
            }
        }
        for (_, chain) in ethertypes() {
            assert!(names.contains(&chain), "{chain}");
        }
    }
}
