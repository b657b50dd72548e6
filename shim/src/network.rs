//! A hull NIC for a container, named by OCI annotations (`ctr run --annotation`, or a pod's
//! annotations containerd passes on): the zone gets a NIC on a nic tag, plumbed by vmmd's
//! virtual switch with its anti-spoofing, in place of a network namespace made outside hull
//! (CNI's). Containers that join that zone's namespaces (a pod's) share the NIC.
//!
//! - `io.hull.nic.tag`: the nic tag (required for a NIC);
//! - `io.hull.nic.ips`: its addresses, comma-separated CIDRs, or `dhcp`;
//! - `io.hull.nic.gateways`: comma-separated (optional);
//! - `io.hull.nic.vlan_id`: a VLAN on the tag (optional).
//!
//! Any other `io.hull.` annotation is refused by name, as is a NIC for a container that also
//! names a network namespace to join. vmmd checks the values as it checks any payload's
//! `nics`.

use serde_json::{Map, Value, json};

const PREFIX: &str = "io.hull.";
const TAG: &str = "io.hull.nic.tag";
const IPS: &str = "io.hull.nic.ips";
const GATEWAYS: &str = "io.hull.nic.gateways";
const VLAN: &str = "io.hull.nic.vlan_id";

/// The payload's `nics` that `config`'s annotations ask for, if any.
pub fn nics(config: &Value) -> Result<Option<Value>, String> {
    let empty = Map::new();
    let notes = config
        .get("annotations")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let get = |k: &str| notes.get(k).and_then(Value::as_str);
    if let Some(k) = notes
        .keys()
        .find(|k| k.starts_with(PREFIX) && ![TAG, IPS, GATEWAYS, VLAN].contains(&k.as_str()))
    {
        return Err(format!(
            "annotation {k} is not one hull knows (a NIC takes {TAG}, {IPS}, {GATEWAYS}, {VLAN})"
        ));
    }
    let Some(tag) = get(TAG) else {
        return match notes.keys().find(|k| k.starts_with(PREFIX)) {
            Some(k) => Err(format!("annotation {k} needs {TAG} (the NIC's nic tag)")),
            None => Ok(None),
        };
    };
    let joins_network = config
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.get("type") == Some(&json!("network")) && n.get("path").is_some())
        });
    if joins_network {
        return Err(format!(
            "annotation {TAG} gives the container a hull NIC, but it also names a network \
             namespace to join (linux.namespaces): one or the other"
        ));
    }
    let list = |v: Option<&str>| -> Vec<String> {
        v.unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut nic = json!({"nic_tag": tag, "primary": true, "ips": list(get(IPS))});
    let gateways = list(get(GATEWAYS));
    if !gateways.is_empty() {
        nic["gateways"] = json!(gateways);
    }
    if let Some(v) = get(VLAN) {
        let id: u16 = v
            .parse()
            .map_err(|_| format!("annotation {VLAN} {v:?} is not a VLAN id (1-4094)"))?;
        nic["vlan_id"] = json!(id);
    }
    Ok(Some(json!([nic])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_name_a_hull_nic_or_are_refused_by_name() {
        let with = |a: Value| json!({"annotations": a});
        assert_eq!(nics(&json!({})), Ok(None));
        assert_eq!(nics(&with(json!({"org.example": "x"}))), Ok(None));
        assert_eq!(
            nics(&with(
                json!({TAG: "external", IPS: "192.0.2.5/24, 2001:db8::5/64",
                GATEWAYS: "192.0.2.1", VLAN: "12"})
            )),
            Ok(Some(json!([{"nic_tag": "external", "primary": true,
                "ips": ["192.0.2.5/24", "2001:db8::5/64"], "gateways": ["192.0.2.1"],
                "vlan_id": 12}])))
        );
        for (a, named) in [
            (json!({"io.hull.nic.tg": "x"}), "io.hull.nic.tg"),
            (json!({IPS: "dhcp"}), TAG),
            (json!({TAG: "x", VLAN: "many"}), VLAN),
        ] {
            let e = nics(&with(a)).expect_err("refused");
            assert!(e.contains(named), "{e}");
        }
        let joined = json!({"annotations": {TAG: "x"},
            "linux": {"namespaces": [{"type": "network", "path": "/run/netns/cni-1"}]}});
        assert!(
            nics(&joined)
                .expect_err("both")
                .contains("one or the other")
        );
    }
}
