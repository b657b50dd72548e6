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

/// `vmadm reprovision UUID [-f FILE]`: the payload's image_uuid is the new root's image
/// (SmartOS's reprovision reads nothing else from it; other keys are named and ignored).
pub fn reprovision(socket: Option<&Path>, uuid: &str, file: Option<&PathBuf>) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    let payload = read_payload(file)?;
    let (image, ignored) = reprovision_image(&payload)?;
    if !ignored.is_empty() {
        eprintln!(
            "Warning: reprovision takes only image_uuid; ignored: {}",
            ignored.join(", ")
        );
    }
    client(socket)?.reprovision_vm(uuid, image)?;
    eprintln!("Successfully reprovisioned VM {uuid}");
    Ok(())
}

/// The image_uuid of a reprovision payload, and the other keys it holds.
fn reprovision_image(payload: &Value) -> Result<(uuid::Uuid, Vec<String>), Failure> {
    let obj = payload
        .as_object()
        .ok_or_else(|| Failure::usage("the reprovision payload must be a JSON object"))?;
    let image = match obj.get("image_uuid") {
        None => return Err(Failure::usage("payload is missing image_uuid")),
        Some(v) => v
            .as_str()
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .ok_or_else(|| Failure::usage(format!("image_uuid {v} is not a uuid")))?,
    };
    let ignored = obj.keys().filter(|k| *k != "image_uuid").cloned().collect();
    Ok((image, ignored))
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

    #[test]
    fn reprovision_reads_the_image_and_names_what_it_ignores() {
        let img = "7a1f0c2e-8f3b-4d5a-9c6e-1b2d3e4f5a60";
        let (u, ignored) =
            reprovision_image(&serde_json::json!({"image_uuid": img, "alias": "x"})).expect("ok");
        assert_eq!(u.to_string(), img);
        assert_eq!(ignored, ["alias"]);
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"image_uuid": "nope"}),
            serde_json::json!([img]),
        ] {
            assert!(reprovision_image(&bad).is_err(), "{bad}");
        }
    }
}
