//! `--dhcp`: the address and network a microVM's NIC is given by DHCP, which the VMM answers
//! itself on that NIC (as SmartOS's KVM did): the record's first IPv4 address, its gateways,
//! resolvers, host and domain name, static routes and MTU. Written on the command line as
//! one JSON object per NIC that has one.

use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the VMM's DHCP server hands NIC `nic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpLease {
    /// The NIC, in the VMM's NIC order.
    pub nic: usize,
    /// Its address and prefix length.
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// Default routers (option 3), the first one the default route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routers: Vec<Ipv4Addr>,
    /// Name servers (option 6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    /// Host name (option 12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// DNS domain (option 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Classless static routes (option 121); `via` 0.0.0.0 is on the link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<DhcpRoute>,
    /// Interface MTU (option 26).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Lease time in seconds: the guest renews at half of it.
    pub lease_secs: u32,
}

/// One classless static route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpRoute {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    pub via: Ipv4Addr,
}

impl FromStr for DhcpLease {
    type Err = String;

    /// The JSON `--dhcp` carries; prefixes must be 0 to 32.
    fn from_str(s: &str) -> Result<DhcpLease, String> {
        let lease: DhcpLease =
            serde_json::from_str(s).map_err(|e| format!("--dhcp {s:?} does not parse: {e}"))?;
        if lease.prefix > 32 || lease.routes.iter().any(|r| r.prefix > 32) {
            return Err(format!("--dhcp {s:?}: a prefix length past 32"));
        }
        Ok(lease)
    }
}

impl DhcpLease {
    /// The JSON `--dhcp` carries.
    pub fn to_arg(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A lease with every option set, for tests and fuzz targets of its readers:
    /// 192.0.2.31/24, router .1, resolver .53, host `web` in `example.com`, a route to
    /// 10.0.0.0/8 through .254, MTU 1400, an hour.
    #[doc(hidden)]
    pub fn example() -> DhcpLease {
        DhcpLease {
            nic: 0,
            address: Ipv4Addr::new(192, 0, 2, 31),
            prefix: 24,
            routers: vec![Ipv4Addr::new(192, 0, 2, 1)],
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
            hostname: Some("web".into()),
            domain: Some("example.com".into()),
            routes: vec![DhcpRoute {
                dest: Ipv4Addr::new(10, 0, 0, 0),
                prefix: 8,
                via: Ipv4Addr::new(192, 0, 2, 254),
            }],
            mtu: Some(1400),
            lease_secs: 3600,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip_and_bad_prefixes_are_refused() {
        let lease = DhcpLease::example();
        assert_eq!(lease.to_arg().parse::<DhcpLease>(), Ok(lease));
        assert!(
            r#"{"nic":0,"address":"192.0.2.1","prefix":33,"lease_secs":1}"#
                .parse::<DhcpLease>()
                .is_err()
        );
        assert!(r#"{"nic":0}"#.parse::<DhcpLease>().is_err());
    }
}
