//! `vmadm update UUID [-f FILE | property=value ...]`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{CmdResult, Failure, client, parse_uuid, read_payload};

/// `property=value` arguments become a payload; values that read as JSON numbers or
/// booleans are sent as such, the rest as strings (as SmartOS's vmadm does).
fn from_pairs(pairs: &[String]) -> Result<Value, Failure> {
    let mut m = Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| Failure::usage(format!("{p:?} is not property=value")))?;
        let value = match v {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => v
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(v.to_string())),
        };
        m.insert(k.to_string(), value);
    }
    Ok(Value::Object(m))
}

pub fn run(
    socket: Option<&Path>,
    uuid: &str,
    file: Option<&PathBuf>,
    pairs: &[String],
) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    let payload = match (file, pairs.is_empty()) {
        (Some(_), false) => return Err(Failure::usage("give -f FILE or property=value, not both")),
        (None, false) => from_pairs(pairs)?,
        (f, true) => read_payload(f)?,
    };
    let vm = client(socket)?.update_vm(uuid, &payload)?;
    eprintln!("Successfully updated VM {uuid}");
    // What the update could not do at once (NICs of a running microVM) or the host cannot
    // enforce is in the record's warnings.
    for w in &vm.warnings {
        eprintln!("Warning: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_become_typed_json() {
        let v = from_pairs(&[
            "ram=512".into(),
            "autoboot=false".into(),
            "alias=web=1".into(),
        ])
        .expect("pairs");
        assert_eq!(
            v,
            serde_json::json!({"ram": 512, "autoboot": false, "alias": "web=1"})
        );
        assert!(from_pairs(&["noequals".into()]).is_err());
    }
}
