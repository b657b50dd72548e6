//! CRI's UpdateContainerResources and `ctr task update`: an OCI `LinuxResources` (untrusted
//! JSON) as a vmmd update payload in SmartOS's terms. What hull has no property for is
//! refused by name, never dropped.

use serde_json::{Map, Value, json};

/// The vmmd update payload for `bytes`, an OCI LinuxResources object.
pub fn update_payload(bytes: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("resources: {e}"))?;
    let obj = v.as_object().ok_or("resources: not a JSON object")?;
    let mut out = Map::new();
    for (k, val) in obj {
        if val.is_null() {
            continue;
        }
        match k.as_str() {
            "memory" => memory(val, &mut out)?,
            "cpu" => cpu(val, &mut out)?,
            "pids" => {
                if let Some(limit) = number(val, "pids", "limit")? {
                    // A limit of 0 or below is "none" in the OCI spec.
                    out.insert("max_lwps".into(), json!(if limit > 0 { limit } else { 0 }));
                }
                only(val, "pids", &["limit"])?;
            }
            // CRI sends the container's device rules again with every update: they change
            // nothing a zone has, so long as they allow nothing a zone lacks.
            "devices" => hull_spec::oci_bundle::check_device_rules(val)
                .map_err(|r| format!("resources: {r}"))?,
            other => {
                return Err(format!(
                    "resources: {other:?} cannot be updated on a hull zone (memory, cpu shares/quota/period and pids can)"
                ));
            }
        }
    }
    if out.is_empty() {
        return Err("resources: nothing hull can update was given".into());
    }
    Ok(Value::Object(out))
}

fn number(v: &Value, section: &str, key: &str) -> Result<Option<i64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("resources: {section}.{key} is not an integer")),
    }
}

fn only(v: &Value, section: &str, known: &[&str]) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("resources: {section} is not an object"))?;
    match obj
        .iter()
        .find(|(k, v)| !v.is_null() && !known.contains(&k.as_str()))
    {
        Some((k, _)) => Err(format!(
            "resources: {section}.{k} cannot be updated on a hull zone"
        )),
        None => Ok(()),
    }
}

/// Bytes as SmartOS's MiB, rounded up (a limit is never made smaller than asked).
fn mib(bytes: i64) -> i64 {
    (bytes + (1 << 20) - 1) >> 20
}

fn memory(v: &Value, out: &mut Map<String, Value>) -> Result<(), String> {
    only(v, "memory", &["limit", "swap", "reservation"])?;
    if let Some(limit) = number(v, "memory", "limit")?.filter(|&l| l > 0) {
        out.insert("max_physical_memory".into(), json!(mib(limit)));
    }
    // OCI's swap is memory + swap, as SmartOS's max_swap is, whose floor (256 MiB, as in
    // SmartOS) it is raised to: CRI's swap equal to a smaller limit means "no swap", which
    // hull gives as at most that much more.
    if let Some(swap) = number(v, "memory", "swap")?.filter(|&s| s > 0) {
        let floor = hull_spec::vm::defaults::MIN_SWAP as i64;
        out.insert("max_swap".into(), json!(mib(swap).max(floor)));
    }
    Ok(())
}

fn cpu(v: &Value, out: &mut Map<String, Value>) -> Result<(), String> {
    only(v, "cpu", &["shares", "quota", "period"])?;
    if let Some(shares) = number(v, "cpu", "shares")?.filter(|&s| s > 0) {
        out.insert("cpu_shares".into(), json!(shares));
    }
    let quota = number(v, "cpu", "quota")?;
    let period = number(v, "cpu", "period")?
        .filter(|&p| p > 0)
        .unwrap_or(100_000);
    match quota {
        // Percent of one CPU, rounded up; -1 (or 0) is no cap.
        Some(q) if q > 0 => {
            out.insert("cpu_cap".into(), json!((q * 100 + period - 1) / period));
        }
        Some(_) => {
            out.insert("cpu_cap".into(), json!(0));
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_resources_become_smartos_properties() {
        let p = update_payload(
            br#"{"memory":{"limit":268435456,"swap":536870912},
                 "cpu":{"shares":512,"quota":50000,"period":100000},
                 "pids":{"limit":64},"devices":[{"allow":false,"access":"rwm"},
                 {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}]}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            json!({"max_physical_memory": 256, "max_swap": 512, "cpu_shares": 512,
                   "cpu_cap": 50, "max_lwps": 64})
        );
        let p = update_payload(br#"{"memory":{"limit":1},"cpu":{"quota":-1}}"#).unwrap();
        assert_eq!(p, json!({"max_physical_memory": 1, "cpu_cap": 0}));
    }

    #[test]
    fn what_hull_cannot_update_is_refused_by_name() {
        for (r, what) in [
            (&br#"{"blockIO":{"weight":10}}"#[..], "\"blockIO\""),
            (br#"{"cpu":{"cpus":"0-1"}}"#, "cpu.cpus"),
            (br#"{"memory":{"kernel":1}}"#, "memory.kernel"),
            (br#"{"memory":{"limit":"big"}}"#, "memory.limit"),
            (br#"{}"#, "nothing"),
            (
                br#"{"devices":[{"allow":true,"type":"b","major":8,"minor":0,"access":"rw"}]}"#,
                "device 8:0",
            ),
            (br#"[]"#, "not a JSON object"),
        ] {
            let e = update_payload(r).unwrap_err();
            assert!(e.contains(what), "{e}");
        }
    }
}
