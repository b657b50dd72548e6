//! Syntax of the network values payloads carry: addresses, CIDRs, netmasks, MACs,
//! hostnames. Parsing only; nothing here looks at the host.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// A MAC address. Parsed once from `aa:bb:cc:dd:ee:ff` (hex, either case); shown and
/// serialised lower case, colon separated, as payloads and records carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMac(pub String);

impl fmt::Display for BadMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a MAC address like 02:00:5e:10:00:01",
            self.0
        )
    }
}

impl std::error::Error for BadMac {}

impl MacAddr {
    /// The address with these bytes.
    pub const fn new(bytes: [u8; 6]) -> MacAddr {
        MacAddr(bytes)
    }

    /// Its six bytes, in wire order.
    pub const fn bytes(self) -> [u8; 6] {
        self.0
    }

    /// True for a unicast address that is not all zeros: the only kind a NIC may own.
    pub fn is_usable(self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// The IPv4 VRRP virtual router MAC of router id `vrid` (RFC 5798: 00:00:5e:00:01:VRID),
    /// which SmartOS gives a NIC with `vrrp_vrid`.
    pub const fn vrrp(vrid: u8) -> MacAddr {
        MacAddr([0x00, 0x00, 0x5e, 0x00, 0x01, vrid])
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(bytes: [u8; 6]) -> MacAddr {
        MacAddr(bytes)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(mac: MacAddr) -> [u8; 6] {
        mac.0
    }
}

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<MacAddr, BadMac> {
        let bad = || BadMac(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            if !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(MacAddr(out)),
            Some(_) => Err(bad()),
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MacAddr, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// In the schema a MAC is the string it is written as.
schema_as_string!(MacAddr);

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
    fn macs_parse_once_and_show_lower_case() {
        let mac: MacAddr = "02:AB:cd:00:11:ff".parse().expect("valid mac");
        assert_eq!(mac.bytes(), [0x02, 0xab, 0xcd, 0x00, 0x11, 0xff]);
        assert_eq!(mac.to_string(), "02:ab:cd:00:11:ff");
        assert!(mac.is_usable());
        assert!(!MacAddr::new([1, 0, 0, 0, 0, 0]).is_usable(), "multicast");
        assert!(!MacAddr::new([0; 6]).is_usable());
        for bad in [
            "",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "02:ab:cd:00:11:ff:",
            "2:ab:cd:00:11:ff",
            "zz:ab:cd:00:11:ff",
            "+2:ab:cd:00:11:ff",
            "02-ab-cd-00-11-ff",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(BadMac(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn macs_serialise_as_their_string() {
        let mac = MacAddr::new([2, 0, 0x5e, 0x10, 0, 1]);
        let json = serde_json::to_value(mac).expect("serialises");
        assert_eq!(json, serde_json::json!("02:00:5e:10:00:01"));
        let back: MacAddr = serde_json::from_str("\"02:00:5E:10:00:01\"").expect("parses");
        assert_eq!(back, mac);
        let err = serde_json::from_str::<MacAddr>("\"02:00\"").expect_err("too short");
        assert!(err.to_string().contains("is not a MAC address"), "{err}");
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
