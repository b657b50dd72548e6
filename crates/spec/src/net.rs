//! Syntax of the network values payloads carry: addresses, CIDRs, netmasks, MACs,
//! hostnames. Parsing only; nothing here looks at the host.

use std::net::{IpAddr, Ipv4Addr};

/// An address with its prefix length, as in `ips: ["192.0.2.10/24"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/LEN`, rejecting lengths past the address family's width.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = s.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = len.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses an IP address (v4 or v6) in its usual text form.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// Parses a dotted IPv4 netmask and returns its prefix length; the mask must be contiguous.
pub fn netmask_prefix(s: &str) -> Option<u8> {
    let mask: Ipv4Addr = s.parse().ok()?;
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff` (hex, either case) into bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// True for a unicast MAC that is not all zeros: the only kind a NIC may own.
pub fn is_usable_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

/// Formats MAC bytes the way payloads carry them (lower case, colon separated).
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// True for an RFC 1123 host name (dot-separated labels of letters, digits and inner
/// hyphens, each at most 63 bytes, at most 253 in all).
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_v4_and_v6_and_rejects_junk() {
        assert_eq!(Cidr::parse("192.0.2.1/24").map(|c| c.prefix), Some(24));
        assert_eq!(Cidr::parse("2001:db8::1/64").map(|c| c.prefix), Some(64));
        for bad in [
            "192.0.2.1",
            "192.0.2.1/33",
            "192.0.2.1/",
            "192.0.2.1/+1",
            "x/24",
            "2001:db8::/129",
            "192.0.2.256/24",
            "192.0.2.1/024x",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn netmask_must_be_contiguous() {
        assert_eq!(netmask_prefix("255.255.255.0"), Some(24));
        assert_eq!(netmask_prefix("255.255.255.255"), Some(32));
        assert_eq!(netmask_prefix("0.0.0.0"), Some(0));
        assert_eq!(netmask_prefix("255.0.255.0"), None);
        assert_eq!(netmask_prefix("255.255.255"), None);
    }

    #[test]
    fn macs_parse_and_format_round_trip() {
        let mac = parse_mac("02:AB:cd:00:11:ff").expect("valid mac");
        assert_eq!(format_mac(mac), "02:ab:cd:00:11:ff");
        assert!(is_usable_mac(mac));
        assert!(!is_usable_mac([1, 0, 0, 0, 0, 0]), "multicast");
        assert!(!is_usable_mac([0; 6]));
        for bad in [
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "2:ab:cd:00:11:ff",
            "zz:ab:cd:00:11:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn hostnames_follow_rfc1123() {
        assert!(is_hostname("web-01"));
        assert!(is_hostname("a.example.com"));
        assert!(!is_hostname("-web"));
        assert!(!is_hostname("web_01"));
        assert!(!is_hostname(""));
        assert!(!is_hostname(&"a".repeat(64)));
    }
}
