//! Dotted property paths over JSON records, as vmadm's filters and `-o` columns use them:
//! `nics.0.ip`, `tags.role`, and `*` for any array index (`nics.*.ip`).

use std::sync::LazyLock;

use serde_json::Value;

/// What a key that names no property is told, for list filters, `-o` columns and `-s` keys.
pub const RECORD_PATH_RULE: &str = "is neither a property of a VM record nor a dotted path into \
     one (customer_metadata.X, internal_metadata.X, tags.X, nics.N.X, disks.N.X, N or *)";

/// The JSON schema of a guest record, made once: the source of truth for which dotted paths
/// can name anything, so that a misspelt key is an error instead of an empty table.
static RECORD_SCHEMA: LazyLock<Value> =
    LazyLock::new(|| schemars::schema_for!(crate::vm::Vm).to_value());

/// True when `path` names a property of a guest record or a place inside one: a property,
/// a key of a free-form map (`tags.X`, `customer_metadata.X`), an index or `*` of a list
/// followed by a property of its element (`nics.0.ip`, `disks.*.size`).
pub fn is_record_path(path: &str) -> bool {
    let segs: Vec<&str> = path.split('.').collect();
    !segs.iter().any(|s| s.is_empty()) && schema_has(&RECORD_SCHEMA, &segs, 0)
}

fn schema_has(schema: &Value, segs: &[&str], depth: usize) -> bool {
    // The record's types nest a few levels; the bound only guards a recursive type.
    if depth > 16 {
        return false;
    }
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        return RECORD_SCHEMA
            .get("$defs")
            .and_then(|d| d.get(name))
            .is_some_and(|s| schema_has(s, segs, depth + 1));
    }
    let Some((first, rest)) = segs.split_first() else {
        return true;
    };
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array)
            && list.iter().any(|s| schema_has(s, segs, depth + 1))
        {
            return true;
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let found = match *first {
            "*" => props.values().any(|p| schema_has(p, rest, depth + 1)),
            key => props
                .get(key)
                .is_some_and(|p| schema_has(p, rest, depth + 1)),
        };
        if found {
            return true;
        }
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(true)) => return true,
        Some(extra @ Value::Object(_)) if schema_has(extra, rest, depth + 1) => return true,
        _ => {}
    }
    if let Some(items) = schema.get("items")
        && (*first == "*" || first.parse::<usize>().is_ok())
    {
        return schema_has(items, rest, depth + 1);
    }
    false
}

/// Every leaf of `value` keyed by its dotted path; arrays index by position. An empty object
/// or array is a leaf of its own so that it can still be printed.
pub fn flatten(value: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

fn walk<'a>(value: &'a Value, prefix: String, out: &mut Vec<(String, &'a Value)>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                walk(v, join(k), out);
            }
        }
        Value::Array(list) if !list.is_empty() => {
            for (i, v) in list.iter().enumerate() {
                walk(v, join(&i.to_string()), out);
            }
        }
        _ => out.push((prefix, value)),
    }
}

/// The values at `path` in `value`: one for a plain path, any number when the path holds a
/// `*`. A path may name an inner object or array, not only a leaf.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![value];
    for seg in path.split('.') {
        let mut next = Vec::new();
        for v in current {
            match (v, seg) {
                (Value::Array(list), "*") => next.extend(list.iter()),
                (Value::Object(map), "*") => next.extend(map.values()),
                (Value::Array(list), idx) => {
                    if let Some(item) = idx.parse::<usize>().ok().and_then(|i| list.get(i)) {
                        next.push(item);
                    }
                }
                (Value::Object(map), key) => {
                    if let Some(item) = map.get(key) {
                        next.push(item);
                    }
                }
                _ => {}
            }
        }
        current = next;
    }
    current
}

/// A value as a table cell or filter operand: strings bare, null as `-`, the rest as JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flatten_names_nested_leaves() {
        let v = json!({"a": 1, "nics": [{"ip": "192.0.2.1"}], "tags": {"role": "db"}, "e": []});
        let flat: Vec<String> = flatten(&v).into_iter().map(|(k, _)| k).collect();
        assert_eq!(flat, ["a", "e", "nics.0.ip", "tags.role"]);
    }

    #[test]
    fn record_paths_follow_the_record_schema() {
        for good in [
            "uuid",
            "ram",
            "type",
            "alias",
            "customer_metadata.user-script",
            "internal_metadata.x",
            "tags.role",
            "nics",
            "nics.0.ip",
            "nics.*.ips.0",
            "nics.1.mac",
            "disks.0.size",
            "disks.*.path",
            "snapshots.0.name",
            "resolvers.0",
            "warnings",
        ] {
            assert!(is_record_path(good), "{good} should be a record path");
        }
        for bad in [
            "",
            "nosuchfield",
            "ram.x",
            "nics.0.nosuch",
            "nics.x.ip",
            "disks..size",
            "uuid.0",
            "tags.role.deeper",
        ] {
            assert!(!is_record_path(bad), "{bad} should not be a record path");
        }
    }

    #[test]
    fn lookup_follows_indices_and_wildcards() {
        let v = json!({"nics": [{"ip": "192.0.2.1"}, {"ip": "192.0.2.2"}], "tags": {"k": true}});
        assert_eq!(lookup(&v, "nics.1.ip"), [&json!("192.0.2.2")]);
        assert_eq!(lookup(&v, "nics.*.ip").len(), 2);
        assert_eq!(lookup(&v, "tags.k"), [&json!(true)]);
        assert!(lookup(&v, "nics.9.ip").is_empty());
        assert!(lookup(&v, "nope").is_empty());
        assert_eq!(text(&json!(true)), "true");
        assert_eq!(text(&json!("x")), "x");
    }
}
