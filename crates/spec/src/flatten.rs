//! Dotted property paths over JSON records, as vmadm's filters and `-o` columns use them:
//! `nics.0.ip`, `tags.role`, and `*` for any array index (`nics.*.ip`).

use serde_json::Value;

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
