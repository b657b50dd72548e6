//! What a guest's metadata requests mean, as SmartOS's metadata agent answers them: reads
//! from the guest's record, and the update payload a write becomes. Pure: the record is a
//! value, the answer a value.
//!
//! - A plain key is `customer_metadata[key]`; one that ends in `_pw` or whose prefix before
//!   `:` is in `internal_metadata_namespaces` is `internal_metadata[key]` instead.
//! - `sdc:nics`, `sdc:resolvers`, `sdc:tmpfs` are JSON; `sdc:routes` is SmartOS's list of
//!   `{linklocal, dst, gateway}`; `sdc:operator-script` is internal_metadata's; any other
//!   `sdc:X` is property X of the record (a dotted path), text if it is a string, number or
//!   boolean, `FAILURE` if it is an object. `sdc:server_uuid` and `sdc:datacenter_name` come
//!   from the host.
//! - A guest writes customer_metadata only (and, as on SmartOS, `*_pw` keys and
//!   `operator-script` into internal_metadata); never `sdc:` keys or a namespace the
//!   operator reserved.

use hull_mdata::Answer;
use serde_json::{Map, Value, json};

/// Facts about the host that SmartOS serves as `sdc:` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The host's uuid (SmartOS: the compute node's).
    pub server_uuid: Option<String>,
    /// The operator's name for the site (`vmmd --datacenter-name`).
    pub datacenter_name: Option<String>,
}

/// The answer to `GET key` for the guest whose record is `vm`.
pub fn get(vm: &Value, host: &HostFacts, key: &str) -> Answer {
    match key.strip_prefix("sdc:") {
        Some(property) => sdc(vm, host, property),
        None => match vm.get(store_of(vm, key)).and_then(|m| m.get(key)) {
            Some(Value::String(v)) => Answer::Value(v.clone()),
            Some(_) | None => Answer::NotFound,
        },
    }
}

fn sdc(vm: &Value, host: &HostFacts, property: &str) -> Answer {
    let json = |v: Option<&Value>| match v {
        Some(v) => Answer::Value(v.to_string()),
        None => Answer::NotFound,
    };
    match property {
        "nics" | "resolvers" | "tmpfs" => json(vm.get(property)),
        "routes" => match vm.get("routes") {
            Some(routes) => Answer::Value(smartos_routes(vm, routes).to_string()),
            None => Answer::NotFound,
        },
        "operator-script" => text(
            vm.get("internal_metadata")
                .and_then(|m| m.get("operator-script")),
        ),
        "server_uuid" if host.server_uuid.is_some() => {
            Answer::Value(host.server_uuid.clone().unwrap_or_default())
        }
        "datacenter_name" if host.datacenter_name.is_some() => {
            Answer::Value(host.datacenter_name.clone().unwrap_or_default())
        }
        _ => text(hull_spec::flatten::lookup(vm, property).first().copied()),
    }
}

/// A property as SmartOS's agent returns it: strings as they are, numbers and booleans as
/// text, null or missing as not found, anything else refused.
fn text(v: Option<&Value>) -> Answer {
    match v {
        Some(Value::String(s)) => Answer::Value(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Answer::Value(v.to_string()),
        Some(Value::Null) | None => Answer::NotFound,
        Some(_) => Answer::Failure(String::new()),
    }
}

/// `routes` (`{"dst": "gateway" | "nics[N]"}`) as SmartOS's `sdc:routes`: a route through a
/// NIC's own address is link-local; one through a NIC without a static address is left out.
fn smartos_routes(vm: &Value, routes: &Value) -> Value {
    let Some(routes) = routes.as_object() else {
        return json!([]);
    };
    let mut out = Vec::new();
    for (dst, via) in routes {
        let Some(via) = via.as_str() else { continue };
        let nic = via
            .strip_prefix("nics[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<usize>().ok());
        match nic {
            None => out.push(json!({"linklocal": false, "dst": dst, "gateway": via})),
            Some(i) => {
                if let Some(ip) = vm.get("nics").and_then(|n| n.get(i)).and_then(nic_address) {
                    out.push(json!({"linklocal": true, "dst": dst, "gateway": ip}));
                }
            }
        }
    }
    Value::Array(out)
}

/// A NIC's static address (its legacy `ip`, else the first of its `ips`), without a prefix.
fn nic_address(nic: &Value) -> Option<String> {
    let legacy = nic.get("ip").and_then(Value::as_str);
    let listed = nic
        .get("ips")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().filter_map(Value::as_str).find(|s| s.contains('/')));
    let ip = legacy.or(listed)?;
    let addr = ip.split('/').next().unwrap_or(ip);
    (addr != "dhcp" && addr != "addrconf").then(|| addr.to_string())
}

/// The answer to `KEYS`: customer_metadata's keys, then internal_metadata's `*_pw` and
/// namespaced ones, one per line.
pub fn keys(vm: &Value) -> Answer {
    let keys_of = |store: &str| -> Vec<String> {
        vm.get(store)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut out: Vec<String> = keys_of("customer_metadata")
        .into_iter()
        .filter(|k| store_of(vm, k) == "customer_metadata")
        .collect();
    out.extend(
        keys_of("internal_metadata")
            .into_iter()
            .filter(|k| store_of(vm, k) == "internal_metadata"),
    );
    Answer::Value(out.join("\n"))
}

/// The most metadata (keys and values of customer_metadata and internal_metadata together)
/// a guest's own writes may leave in its record: a guest that keeps writing cannot grow its
/// record, and vmmd's memory, without bound. The operator's writes are not limited by it.
pub const MAX_GUEST_METADATA: usize = 1 << 20;

/// The `vmadm update` payload for a guest's PUT (`value` Some, an empty value removes the
/// key as on SmartOS) or DELETE (`value` None), or the reason it is refused.
pub fn write(vm: &Value, key: &str, value: Option<&str>) -> Result<Value, String> {
    if key.starts_with("sdc:") {
        return Err("Cannot update the \"sdc\" Namespace.".into());
    }
    if let Some(ns) = namespace(vm, key) {
        return Err(format!("Cannot update the \"{ns}\" Namespace."));
    }
    let which = if key.ends_with("_pw") || key == "operator-script" {
        "internal_metadata"
    } else {
        "customer_metadata"
    };
    let payload = match value.filter(|v| !v.is_empty()) {
        Some(v) if stored_bytes(vm, key) + key.len() + v.len() > MAX_GUEST_METADATA => {
            return Err(format!(
                "the guest's metadata would exceed {MAX_GUEST_METADATA} bytes"
            ));
        }
        Some(v) => {
            let mut set = Map::new();
            set.insert(key.to_string(), Value::String(v.to_string()));
            json!({ format!("set_{which}"): set })
        }
        None => json!({ format!("remove_{which}"): [key] }),
    };
    Ok(payload)
}

/// Bytes of metadata the record holds, without `key`'s current entry (a PUT replaces it).
fn stored_bytes(vm: &Value, key: &str) -> usize {
    ["customer_metadata", "internal_metadata"]
        .iter()
        .filter_map(|store| vm.get(*store).and_then(Value::as_object))
        .flat_map(|m| m.iter())
        .filter(|(k, _)| k.as_str() != key)
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum()
}

/// Which metadata store a plain key lives in.
fn store_of(vm: &Value, key: &str) -> &'static str {
    if key.ends_with("_pw") || namespace(vm, key).is_some() {
        "internal_metadata"
    } else {
        "customer_metadata"
    }
}

/// The operator's namespace a key is in (`internal_metadata_namespaces`), if any.
fn namespace<'a>(vm: &Value, key: &'a str) -> Option<&'a str> {
    let (prefix, _) = key.split_once(':')?;
    vm.get("internal_metadata_namespaces")?
        .as_array()?
        .iter()
        .any(|ns| ns.as_str() == Some(prefix))
        .then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Value {
        json!({
            "uuid": "9f4c2d1e-0000-4000-8000-000000000001",
            "hostname": "web",
            "alias": "web01",
            "ram": 512,
            "autoboot": true,
            "tags": {"role": "db"},
            "resolvers": ["192.0.2.53"],
            "nics": [
                {"interface": "net0", "mac": "02:00:00:00:00:01", "ips": ["192.0.2.10/24"], "primary": true},
                {"interface": "net1", "mac": "02:00:00:00:00:02", "ips": ["dhcp"]}
            ],
            "routes": {"10.0.0.0/8": "192.0.2.1", "198.51.100.0/24": "nics[0]", "203.0.113.0/24": "nics[1]"},
            "customer_metadata": {"user-script": "#!/bin/sh\necho hi", "root_pw": "leak", "acme:x": "1", "plain": "v"},
            "internal_metadata": {"admin_pw": "secret", "acme:key": "k", "operator-script": "echo op", "other": "hidden"},
            "internal_metadata_namespaces": ["acme"]
        })
    }

    #[test]
    fn plain_keys_read_customer_metadata_and_pw_or_namespaced_ones_internal() {
        let h = HostFacts::default();
        assert_eq!(get(&vm(), &h, "plain"), Answer::Value("v".into()));
        assert_eq!(
            get(&vm(), &h, "user-script"),
            Answer::Value("#!/bin/sh\necho hi".into())
        );
        assert_eq!(get(&vm(), &h, "admin_pw"), Answer::Value("secret".into()));
        // customer_metadata's root_pw is not what a `_pw` key reads.
        assert_eq!(get(&vm(), &h, "root_pw"), Answer::NotFound);
        assert_eq!(get(&vm(), &h, "acme:key"), Answer::Value("k".into()));
        assert_eq!(get(&vm(), &h, "acme:x"), Answer::NotFound);
        assert_eq!(get(&vm(), &h, "other"), Answer::NotFound);
        assert_eq!(get(&vm(), &h, "missing"), Answer::NotFound);
    }

    #[test]
    fn sdc_keys_are_properties_of_the_record_and_the_host() {
        let h = HostFacts {
            server_uuid: Some("00000000-0000-4000-8000-00000000abcd".into()),
            datacenter_name: None,
        };
        let v = vm();
        assert_eq!(
            get(&v, &h, "sdc:uuid"),
            Answer::Value("9f4c2d1e-0000-4000-8000-000000000001".into())
        );
        assert_eq!(get(&v, &h, "sdc:hostname"), Answer::Value("web".into()));
        assert_eq!(get(&v, &h, "sdc:alias"), Answer::Value("web01".into()));
        assert_eq!(get(&v, &h, "sdc:ram"), Answer::Value("512".into()));
        assert_eq!(get(&v, &h, "sdc:autoboot"), Answer::Value("true".into()));
        assert_eq!(
            get(&v, &h, "sdc:nics.0.interface"),
            Answer::Value("net0".into())
        );
        assert_eq!(get(&v, &h, "sdc:tags"), Answer::Failure(String::new()));
        assert_eq!(get(&v, &h, "sdc:dns_domain"), Answer::NotFound);
        assert_eq!(
            get(&v, &h, "sdc:server_uuid"),
            Answer::Value("00000000-0000-4000-8000-00000000abcd".into())
        );
        assert_eq!(get(&v, &h, "sdc:datacenter_name"), Answer::NotFound);
        assert_eq!(
            get(&v, &h, "sdc:operator-script"),
            Answer::Value("echo op".into())
        );
        let Answer::Value(nics) = get(&v, &h, "sdc:nics") else {
            panic!("nics")
        };
        let nics: Value = serde_json::from_str(&nics).expect("json");
        assert_eq!(nics, v["nics"]);
        assert_eq!(
            get(&v, &h, "sdc:resolvers"),
            Answer::Value("[\"192.0.2.53\"]".into())
        );
    }

    #[test]
    fn routes_are_smartos_shaped_and_skip_nics_without_an_address() {
        let Answer::Value(routes) = get(&vm(), &HostFacts::default(), "sdc:routes") else {
            panic!("routes")
        };
        let routes: Value = serde_json::from_str(&routes).expect("json");
        assert_eq!(
            routes,
            json!([
                {"linklocal": false, "dst": "10.0.0.0/8", "gateway": "192.0.2.1"},
                {"linklocal": true, "dst": "198.51.100.0/24", "gateway": "192.0.2.10"}
            ])
        );
    }

    #[test]
    fn keys_list_what_a_guest_may_read() {
        assert_eq!(
            keys(&vm()),
            Answer::Value("plain\nuser-script\nacme:key\nadmin_pw".into())
        );
        assert_eq!(keys(&json!({})), Answer::Value(String::new()));
    }

    #[test]
    fn writes_become_update_payloads_and_never_touch_sdc_or_namespaces() {
        let v = vm();
        assert_eq!(
            write(&v, "k", Some("v")),
            Ok(json!({"set_customer_metadata": {"k": "v"}}))
        );
        assert_eq!(
            write(&v, "k", Some("")),
            Ok(json!({"remove_customer_metadata": ["k"]}))
        );
        assert_eq!(
            write(&v, "k", None),
            Ok(json!({"remove_customer_metadata": ["k"]}))
        );
        assert_eq!(
            write(&v, "root_pw", Some("x")),
            Ok(json!({"set_internal_metadata": {"root_pw": "x"}}))
        );
        assert_eq!(
            write(&v, "sdc:uuid", Some("x")),
            Err("Cannot update the \"sdc\" Namespace.".into())
        );
        assert_eq!(
            write(&v, "acme:key", None),
            Err("Cannot update the \"acme\" Namespace.".into())
        );
        // A guest cannot grow its record without bound; replacing a value counts once.
        let big = "x".repeat(MAX_GUEST_METADATA / 2);
        let full = json!({"customer_metadata": {"a": big}});
        assert!(write(&full, "a", Some(&big)).is_ok());
        let e = write(&full, "b", Some(&big)).expect_err("too much");
        assert!(e.contains("would exceed"), "{e}");
        assert!(
            write(&full, "b", None).is_ok(),
            "removing is always allowed"
        );
    }
}
