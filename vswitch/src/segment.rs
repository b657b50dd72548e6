//! Segments: a bridge per (nic tag, VLAN), made on first use with its uplink (the
//! interface itself, untagged, or an 802.1Q sub-interface per VLAN) on it, and removed
//! with what a nic tag made when the tag is deleted ([`Switch::release_tag`]).
//!
//! It must never take an uplink that carries the host's own addresses (they would stop
//! working on the bridge), never take an interface off another bridge, and never remove a
//! bridge that still has a guest's port or that another owner made.

use std::collections::BTreeSet;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVlan};

use crate::VswitchError;
use crate::names::{tag_alias, vlan_name};
use crate::netlink::{
    all_links, errno_of, index_of, is_link_local, link_alias, link_by_name, link_controller,
    link_name, nl, quiet, run, set_alias,
};
use crate::switch::Switch;

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
    /// The bridge ([`bridge_name`](crate::bridge_name)).
    pub bridge: String,
    /// `None`: an internal switch.
    pub uplink: Option<Uplink>,
}

/// Makes the segment's bridge (up) unless it exists, with its uplink on it; returns the
/// bridge's index. A bridge made here is removed again when its uplink cannot join, so a
/// failure leaves nothing.
pub(crate) async fn ensure_segment(
    h: &Handle,
    owner: &str,
    seg: &Segment,
) -> Result<u32, VswitchError> {
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

impl Switch {
    /// When nic tag `tag` is deleted: removes the bridges and VLAN sub-interfaces the owner's
    /// vmmd made for it, and takes `uplink` (if any) off its bridge. A bridge that still has a
    /// guest's port is an error (nothing is removed then).
    pub fn release_tag(
        &self,
        tag: &str,
        uplink: Option<&str>,
    ) -> Result<Vec<String>, VswitchError> {
        let alias = tag_alias(self.owner(), tag);
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
}
