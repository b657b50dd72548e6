//! Bandwidth caps (`nics.N.max_bandwidth`, Mbit/s), both ways, as token buckets (tc's
//! TBF) set over rtnetlink:
//! - to the guest: a TBF as the root qdisc of the port's host end (the veth end or the TAP
//!   the bridge sends into);
//! - from the guest: what the guest sends arrives as the host end's *ingress*, where Linux
//!   can police (drop) but not queue. A policer makes TCP fall well short of the rate and
//!   needs act_police, which some kernels (this project's test hosts) lack; so the port's
//!   ingress is redirected (u32 match-all, mirred) to an IFB device `hi<uuid digits><n>`
//!   whose root qdisc is the same TBF, and the frames go on into the bridge from there.
//!   Shaping on the zone's own end of the veth instead would be bypassed by a zone with
//!   CAP_NET_RAW (PACKET_QDISC_BYPASS) and would not exist for a microVM.
//!
//! TBF takes its rate in a `tc_ratespec` whose link layer is Ethernet, so no rate table is
//! needed, and its burst in bytes (TCA_TBF_BURST). Rates count whole frames (Ethernet
//! header included): TCP's goodput under a cap of R lands near 0.95 R.

use rtnetlink::Handle;
use rtnetlink::packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};

use futures_util::StreamExt;

use crate::VswitchError;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// Time the bucket holds at full rate: the burst a guest may send at line speed.
const BURST_MS: u64 = 5;
/// Queue behind the bucket, in time at the capped rate.
const QUEUE_MS: u64 = 20;
/// The burst never goes below a full GSO frame (TBF would otherwise split every one).
const MIN_BURST: u64 = 64 * 1024 + 1514;
/// Queue bound, whatever the rate.
const MAX_QUEUE: u64 = 64 * 1024 * 1024;

/// TBF's parameters for a cap of `mbps` Mbit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    /// Bytes per second.
    pub rate: u64,
    /// Bucket size in bytes.
    pub burst: u32,
    /// Queue size in bytes.
    pub limit: u32,
}

impl Tbf {
    pub fn for_mbps(mbps: u32) -> Tbf {
        let rate = u64::from(mbps) * 1_000_000 / 8;
        let burst = (rate * BURST_MS / 1000).max(MIN_BURST);
        let limit = (rate * QUEUE_MS / 1000 + burst).min(MAX_QUEUE).max(burst);
        Tbf {
            rate,
            burst: u32::try_from(burst).unwrap_or(u32::MAX),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        }
    }

    /// TCA_OPTIONS of a `tbf` qdisc.
    pub fn options(&self) -> Vec<TcOption> {
        // struct tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, rate (u32,
        // saturating: TCA_TBF_RATE64 carries the full rate past 4 GB/s).
        let mut spec = vec![0u8, TC_LINKLAYER_ETHERNET, 0, 0, 0, 0, 0, 0];
        spec.extend_from_slice(&u32::try_from(self.rate).unwrap_or(u32::MAX).to_ne_bytes());
        // struct tc_tbf_qopt: rate, peakrate (none), limit, buffer (TCA_TBF_BURST sets
        // it), mtu (only for a peak rate).
        let mut qopt = spec;
        qopt.extend_from_slice(&[0u8; 12]);
        qopt.extend_from_slice(&self.limit.to_ne_bytes());
        qopt.extend_from_slice(&0u32.to_ne_bytes());
        qopt.extend_from_slice(&0u32.to_ne_bytes());
        let mut out = vec![
            TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt)),
            TcOption::Other(DefaultNla::new(
                TCA_TBF_BURST,
                self.burst.to_ne_bytes().to_vec(),
            )),
        ];
        if self.rate > u64::from(u32::MAX) {
            out.push(TcOption::Other(DefaultNla::new(
                TCA_TBF_RATE64,
                self.rate.to_ne_bytes().to_vec(),
            )));
        }
        out
    }
}

fn tc_err(what: String) -> impl FnOnce(rtnetlink::Error) -> VswitchError {
    move |source| VswitchError::Netlink { what, source }
}

async fn send(h: &Handle, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut h = h.clone();
    let mut replies = h.request(req)?;
    while let Some(m) = replies.next().await {
        if let rtnetlink::packet_core::NetlinkPayload::Error(e) = m.payload {
            return Err(rtnetlink::Error::NetlinkError(e));
        }
    }
    Ok(())
}

/// Makes (or replaces) a TBF as the root qdisc of link `ifindex`.
pub async fn set_root_tbf(
    h: &Handle,
    ifindex: u32,
    name: &str,
    tbf: &Tbf,
) -> Result<(), VswitchError> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::ROOT;
    msg.header.handle = TcHandle { major: 1, minor: 0 };
    msg.attributes.push(TcAttribute::Kind("tbf".into()));
    msg.attributes.push(TcAttribute::Options(tbf.options()));
    send(
        h,
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .await
    .map_err(tc_err(format!(
        "set a {} Mbit/s cap on {name}",
        tbf.rate * 8 / 1_000_000
    )))
}

/// Deletes the root qdisc of `ifindex` (back to the default); none is not an error.
pub async fn del_root(h: &Handle, ifindex: u32, name: &str) -> Result<(), VswitchError> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::ROOT;
    ignore_missing(
        send(h, RouteNetlinkMessage::DelQueueDiscipline(msg), 0).await,
        format!("remove the cap on {name}"),
    )
}

/// Deletes the ingress qdisc of `ifindex` (and its filters); none is not an error.
pub async fn del_ingress(h: &Handle, ifindex: u32, name: &str) -> Result<(), VswitchError> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::INGRESS;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    ignore_missing(
        send(h, RouteNetlinkMessage::DelQueueDiscipline(msg), 0).await,
        format!("remove the ingress redirect of {name}"),
    )
}

fn ignore_missing(r: Result<(), rtnetlink::Error>, what: String) -> Result<(), VswitchError> {
    match r {
        Ok(()) => Ok(()),
        // No qdisc of that kind there (ENOENT), or only the default one (EINVAL).
        Err(rtnetlink::Error::NetlinkError(e)) if matches!(e.raw_code(), c if c == -libc::ENOENT || c == -libc::EINVAL) => {
            Ok(())
        }
        Err(e) => Err(tc_err(what)(e)),
    }
}

/// Sends everything `ifindex` receives through `ifb_index` first: an ingress qdisc with one
/// u32 match-all filter whose action is a mirred redirect. Replaces any ingress setup the
/// port had.
pub async fn redirect_ingress(
    h: &Handle,
    ifindex: u32,
    name: &str,
    ifb_index: u32,
) -> Result<(), VswitchError> {
    del_ingress(h, ifindex, name).await?;
    h.qdisc()
        .add(ifindex as i32)
        .ingress()
        .execute()
        .await
        .map_err(tc_err(format!("add an ingress qdisc to {name}")))?;
    h.traffic_filter(ifindex as i32)
        .add()
        .parent(0xffff_0000)
        // ETH_P_ALL, in network order as tc wants it.
        .protocol(0x0003u16.to_be())
        .redirect(ifb_index)
        .map_err(tc_err(format!("build the ingress redirect of {name}")))?
        .execute()
        .await
        .map_err(tc_err(format!("redirect the ingress of {name} to its IFB")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::Nla;

    #[test]
    fn tbf_parameters_follow_the_rate() {
        let t = Tbf::for_mbps(100);
        assert_eq!(t.rate, 12_500_000);
        assert_eq!(u64::from(t.burst), MIN_BURST.max(62_500));
        assert_eq!(u64::from(t.limit), 250_000 + u64::from(t.burst));
        let fast = Tbf::for_mbps(100_000);
        assert_eq!(fast.rate, 12_500_000_000);
        assert_eq!(fast.burst, 62_500_000);
        assert_eq!(u64::from(fast.limit), MAX_QUEUE.max(62_500_000));
        let slow = Tbf::for_mbps(1);
        assert_eq!(u64::from(slow.burst), MIN_BURST);
        assert!(slow.limit >= slow.burst);
    }

    #[test]
    fn tbf_options_carry_an_ethernet_ratespec_and_64_bit_rates() {
        let opts = Tbf::for_mbps(100).options();
        assert_eq!(opts.len(), 2);
        let TcOption::Other(parms) = &opts[0] else {
            panic!("{opts:?}")
        };
        assert_eq!(parms.kind(), TCA_TBF_PARMS);
        let mut buf = vec![0u8; parms.value_len()];
        parms.emit_value(&mut buf);
        assert_eq!(buf.len(), 36, "struct tc_tbf_qopt");
        assert_eq!(buf[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(&buf[8..12], &12_500_000u32.to_ne_bytes());
        assert_eq!(&buf[12..24], &[0; 12], "no peak rate");
        let opts = Tbf::for_mbps(100_000).options();
        assert_eq!(opts.len(), 3);
        assert_eq!(opts[2].kind(), TCA_TBF_RATE64);
        let TcOption::Other(parms) = &opts[0] else {
            panic!("{opts:?}")
        };
        let mut buf = vec![0u8; parms.value_len()];
        parms.emit_value(&mut buf);
        assert_eq!(
            &buf[8..12],
            &u32::MAX.to_ne_bytes(),
            "saturated; RATE64 has it"
        );
    }
}
