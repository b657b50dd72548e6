//! The kernel connection every operation runs on: a worker thread with a one-thread tokio
//! runtime holding rtnetlink and nf_tables sockets in the host's network namespace ([`run`],
//! [`Ctx`]), link accessors (by name, index, alias, controller), and the error helpers
//! that name the step that failed ([`nl`], [`nf`], [`errno_of`]).
//!
//! Mechanism only: no policy about which links to make or remove. It must never enter a
//! namespace on the caller's thread (only a worker's, [`Ctx::enter`]), nor spawn `ip`,
//! `tc` or `nft`.

use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use crate::{VswitchError, nft};

/// Maps a netlink error to one naming the step (the message is `cannot <what>`).
pub(crate) fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> VswitchError {
    let what = what.into();
    move |source| VswitchError::Netlink { what, source }
}

/// Maps an nf_tables error to one naming the step.
pub(crate) fn nf(what: impl Into<String>) -> impl FnOnce(nft::NftError) -> VswitchError {
    let what = what.into();
    move |source| VswitchError::Nft { what, source }
}

/// The errno of a netlink error reply, if it is one.
pub(crate) fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// What an operation works with: rtnetlink and nf_tables in the host's namespace.
pub(crate) struct Ctx {
    pub(crate) h: Handle,
    pub(crate) nf: nft::Socket,
}

impl Ctx {
    /// Enters the network namespace of process `pid` (for the rest of this thread) and
    /// returns an rtnetlink handle there; the host's handles stay in the host's.
    pub(crate) async fn enter(&self, pid: i32) -> Result<Handle, VswitchError> {
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
pub(crate) fn run<T, F, Fut>(f: F) -> Result<T, VswitchError>
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
pub(crate) async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, VswitchError> {
    Ok(link_by_name(h, name).await?.map(|m| m.header.index))
}

pub(crate) async fn link_by_name(
    h: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, VswitchError> {
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
pub(crate) async fn all_links(h: &Handle) -> Result<Vec<LinkMessage>, VswitchError> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list links"))
}

pub(crate) fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub(crate) fn link_alias(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

pub(crate) fn link_controller(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(c) => Some(*c),
        _ => None,
    })
}

/// Deletes link `name` if it exists; returns whether it did.
pub(crate) async fn delete_link(h: &Handle, name: &str) -> Result<bool, VswitchError> {
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
pub(crate) async fn set_alias(
    h: &Handle,
    ix: u32,
    name: &str,
    alias: String,
) -> Result<(), VswitchError> {
    h.link()
        .set(LinkUnspec::new_with_index(ix).alias(alias).build())
        .execute()
        .await
        .map_err(nl(format!("name the owner of {name} in its alias")))
}

/// Keeps the host out of a segment: no IPv6 on the bridge, a port's host end or a VLAN
/// sub-interface, so the host never sends its own router solicitations or MLD reports into
/// the guests' segment. A host without IPv6 has nothing to turn off.
pub(crate) fn quiet(name: &str) -> Result<(), VswitchError> {
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

/// Whether `ip` is link-local: the kernel's own (every link gets one), never one the host
/// or a guest was configured with.
pub(crate) fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}
