//! A DHCP server of one lease, on one NIC, inside the VMM (as SmartOS's KVM answered DHCP
//! for its guests): the guest's DISCOVER and REQUEST frames never leave the VMM; the answer
//! goes into the guest's receive queue. It answers only the NIC's own MAC, only with the
//! lease the record gives, and refuses (NAK) a request for any other address, so it cannot
//! hand out an address the switch's anti-spoofing would drop.
//!
//! Frames from the guest are untrusted: every length is checked before it is used.

use std::net::Ipv4Addr;

use hull_vmm_proto::DhcpLease;

const ETH_HDR: usize = 14;
const BOOTP_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// The MAC the replies come from: locally administered, not any NIC's.
const SERVER_MAC: [u8; 6] = [0x02, 0x68, 0x75, 0x6c, 0xff, 0xfe];

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// What a guest frame is to the DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a DHCP client message: it goes to the network.
    NotDhcp,
    /// A DHCP client message, kept from the network; the answer, if there is one.
    Answer(Option<Vec<u8>>),
}

/// Looks at a frame the guest sent on NIC `mac` with `lease`.
pub fn handle(frame: &[u8], mac: [u8; 6], lease: &DhcpLease) -> Verdict {
    let Some(udp) = client_udp(frame) else {
        return Verdict::NotDhcp;
    };
    Verdict::Answer(answer(udp, mac, lease))
}

/// The UDP payload of an IPv4 frame from port 68 to port 67, if it is one.
fn client_udp(frame: &[u8]) -> Option<&[u8]> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(ETH_HDR..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if *ip.first()? >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let udp = ip.get(ihl..total.min(ip.len()))?;
    let (src, dst) = (
        u16::from_be_bytes([*udp.first()?, *udp.get(1)?]),
        u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]),
    );
    (src == 68 && dst == 67).then(|| udp.get(8..)).flatten()
}

fn answer(msg: &[u8], mac: [u8; 6], lease: &DhcpLease) -> Option<Vec<u8>> {
    // op 1 (request), Ethernet, 6-byte addresses, the NIC's own MAC, the magic cookie.
    if msg.len() < BOOTP_FIXED + 4
        || msg[0] != 1
        || msg[1] != 1
        || msg[2] != 6
        || msg[28..34] != mac
        || msg[BOOTP_FIXED..BOOTP_FIXED + 4] != MAGIC
    {
        return None;
    }
    let mut kind = None;
    let mut requested = None;
    let mut opts = &msg[BOOTP_FIXED + 4..];
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            0 => opts = rest,
            255 => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                match (code, value) {
                    (53, [k]) => kind = Some(*k),
                    (50, [a, b, c, d]) => requested = Some(Ipv4Addr::new(*a, *b, *c, *d)),
                    _ => {}
                }
                opts = &rest[usize::from(len)..];
            }
        }
    }
    let ciaddr = Ipv4Addr::new(msg[12], msg[13], msg[14], msg[15]);
    let reply_kind = match kind? {
        DISCOVER => OFFER,
        REQUEST => {
            let asked = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr));
            match asked {
                Some(a) if a != lease.address => NAK,
                _ => ACK,
            }
        }
        // DECLINE, RELEASE, INFORM: nothing to say.
        _ => return None,
    };
    Some(frame_for(msg, mac, lease, reply_kind, ciaddr))
}

/// The server's own address as the guest sees it: the first router, else the lease's.
fn server_id(lease: &DhcpLease) -> Ipv4Addr {
    lease.routers.first().copied().unwrap_or(lease.address)
}

fn frame_for(req: &[u8], mac: [u8; 6], lease: &DhcpLease, kind: u8, ciaddr: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![0u8; BOOTP_FIXED];
    m[0] = 2; // reply
    m[1] = 1;
    m[2] = 6;
    m[4..8].copy_from_slice(&req[4..8]); // xid
    m[10..12].copy_from_slice(&req[10..12]); // flags
    if kind != NAK {
        m[12..16].copy_from_slice(&ciaddr.octets());
        m[16..20].copy_from_slice(&lease.address.octets()); // yiaddr
    }
    m[24..28].copy_from_slice(&req[24..28]); // giaddr
    m[28..44].copy_from_slice(&req[28..44]); // chaddr
    m.extend_from_slice(&MAGIC);
    let mut opt = |code: u8, value: &[u8]| {
        // Options longer than 255 bytes are cut (a long domain or many routes).
        let value = &value[..value.len().min(255)];
        m.push(code);
        m.push(value.len() as u8);
        m.extend_from_slice(value);
    };
    opt(53, &[kind]);
    opt(54, &server_id(lease).octets());
    if kind != NAK {
        let secs = lease.lease_secs.max(60);
        opt(51, &secs.to_be_bytes());
        opt(58, &(secs / 2).to_be_bytes());
        opt(59, &(secs / 8 * 7).to_be_bytes());
        let mask = u32::MAX
            .checked_shl(32 - u32::from(lease.prefix))
            .unwrap_or(0);
        opt(1, &mask.to_be_bytes());
        if !lease.routers.is_empty() {
            let r: Vec<u8> = lease.routers.iter().flat_map(|a| a.octets()).collect();
            opt(3, &r);
        }
        if !lease.dns.is_empty() {
            let d: Vec<u8> = lease.dns.iter().flat_map(|a| a.octets()).collect();
            opt(6, &d);
        }
        if let Some(h) = &lease.hostname {
            opt(12, h.as_bytes());
        }
        if let Some(d) = &lease.domain {
            opt(15, d.as_bytes());
        }
        if let Some(mtu) = lease.mtu {
            opt(26, &mtu.to_be_bytes());
        }
        if !lease.routes.is_empty() {
            // RFC 3442: prefix length, the significant octets of the destination, router.
            // A client that takes option 121 ignores option 3, so the default route is
            // listed here too.
            let mut v = Vec::new();
            for r in &lease.routes {
                v.push(r.prefix);
                let n = usize::from(r.prefix).div_ceil(8);
                v.extend_from_slice(&r.dest.octets()[..n]);
                v.extend_from_slice(&r.via.octets());
            }
            if let Some(gw) = lease.routers.first() {
                v.push(0);
                v.extend_from_slice(&gw.octets());
            }
            opt(121, &v);
        }
    }
    m.push(255);
    // BOOTP's minimum message; some clients drop shorter ones.
    if m.len() < 300 {
        m.resize(300, 0);
    }
    // To the client's MAC; to its address when renewing, else broadcast.
    let dst_ip = match ciaddr.is_unspecified() || kind == NAK {
        true => Ipv4Addr::BROADCAST,
        false => ciaddr,
    };
    ethernet_udp(mac, server_id(lease), dst_ip, &m)
}

/// An Ethernet + IPv4 + UDP (67 -> 68) frame around `payload`.
fn ethernet_udp(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(ETH_HDR + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&67u16.to_be_bytes());
    f.extend_from_slice(&68u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (optional over IPv4)
    f.extend_from_slice(payload);
    f
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x31];

    fn lease() -> DhcpLease {
        DhcpLease::example()
    }

    /// A client message as a DHCP client writes it, in a broadcast frame.
    fn client(kind: u8, mac: [u8; 6], options: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; BOOTP_FIXED];
        m[0] = 1;
        m[1] = 1;
        m[2] = 6;
        m[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        m[10] = 0x80; // broadcast flag
        m[28..34].copy_from_slice(&mac);
        m.extend_from_slice(&MAGIC);
        m.extend_from_slice(&[53, 1, kind]);
        m.extend_from_slice(options);
        m.push(255);
        let mut f = ethernet_udp([0xff; 6], Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &m);
        f[6..12].copy_from_slice(&mac);
        // Client to server ports.
        f[34..36].copy_from_slice(&68u16.to_be_bytes());
        f[36..38].copy_from_slice(&67u16.to_be_bytes());
        f
    }

    fn options(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let m = &reply[ETH_HDR + 28..];
        let mut out = Vec::new();
        let mut o = &m[BOOTP_FIXED + 4..];
        while let [code, rest @ ..] = o {
            if *code == 255 {
                break;
            }
            let len = usize::from(rest[0]);
            out.push((*code, rest[1..1 + len].to_vec()));
            o = &rest[1 + len..];
        }
        out
    }

    fn opt(reply: &[u8], code: u8) -> Option<Vec<u8>> {
        options(reply)
            .into_iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v)
    }

    #[test]
    fn a_discover_gets_an_offer_of_the_lease_with_its_network() {
        let Verdict::Answer(Some(r)) = handle(&client(DISCOVER, MAC, &[]), MAC, &lease()) else {
            panic!("no offer");
        };
        assert_eq!(&r[..6], &MAC, "to the client's MAC");
        assert_eq!(&r[ETH_HDR + 16..ETH_HDR + 20], &[255, 255, 255, 255]);
        assert_eq!(
            checksum(&r[ETH_HDR..ETH_HDR + 20]),
            0,
            "IPv4 header checksum"
        );
        let m = &r[ETH_HDR + 28..];
        assert_eq!(m[0], 2);
        assert_eq!(&m[4..8], &[0xde, 0xad, 0xbe, 0xef], "the client's xid");
        assert_eq!(&m[16..20], &[192, 0, 2, 31], "yiaddr");
        assert_eq!(opt(&r, 53), Some(vec![OFFER]));
        assert_eq!(opt(&r, 1), Some(vec![255, 255, 255, 0]));
        assert_eq!(opt(&r, 3), Some(vec![192, 0, 2, 1]));
        assert_eq!(opt(&r, 6), Some(vec![192, 0, 2, 53]));
        assert_eq!(opt(&r, 12), Some(b"web".to_vec()));
        assert_eq!(opt(&r, 15), Some(b"example.com".to_vec()));
        assert_eq!(opt(&r, 26), Some(1400u16.to_be_bytes().to_vec()));
        assert_eq!(opt(&r, 51), Some(3600u32.to_be_bytes().to_vec()));
        assert_eq!(
            opt(&r, 121),
            Some(vec![8, 10, 192, 0, 2, 254, 0, 192, 0, 2, 1]),
            "RFC 3442, the default route included"
        );
    }

    #[test]
    fn a_request_is_acked_for_the_lease_and_nakked_for_anything_else() {
        let mine = client(REQUEST, MAC, &[50, 4, 192, 0, 2, 31]);
        let Verdict::Answer(Some(r)) = handle(&mine, MAC, &lease()) else {
            panic!("no ack");
        };
        assert_eq!(opt(&r, 53), Some(vec![ACK]));
        let other = client(REQUEST, MAC, &[50, 4, 192, 0, 2, 99]);
        let Verdict::Answer(Some(r)) = handle(&other, MAC, &lease()) else {
            panic!("no nak");
        };
        assert_eq!(opt(&r, 53), Some(vec![NAK]));
        assert_eq!(&r[ETH_HDR + 28 + 16..ETH_HDR + 28 + 20], &[0, 0, 0, 0]);
    }

    #[test]
    fn other_macs_other_traffic_and_junk_are_not_answered() {
        let stranger = [0x02, 9, 9, 9, 9, 9];
        assert_eq!(
            handle(&client(DISCOVER, stranger, &[]), MAC, &lease()),
            Verdict::Answer(None),
            "kept from the network, not answered"
        );
        let mut not_dhcp = client(DISCOVER, MAC, &[]);
        not_dhcp[37] = 53; // to port 53
        assert_eq!(handle(&not_dhcp, MAC, &lease()), Verdict::NotDhcp);
        assert_eq!(handle(&[0u8; 10], MAC, &lease()), Verdict::NotDhcp);
        // Truncated and lying lengths never panic.
        let full = client(DISCOVER, MAC, &[12, 200, b'x']);
        for cut in 0..full.len() {
            let _ = handle(&full[..cut], MAC, &lease());
        }
        assert_eq!(handle(&full, MAC, &lease()), Verdict::Answer(None));
    }
}
