//! `vmadm get`.

use std::path::Path;

use crate::{CmdResult, Failure, client, parse_uuid};

pub fn run(socket: Option<&Path>, uuid: &str) -> CmdResult {
    let vm = client(socket)?.get_vm(parse_uuid(uuid)?)?;
    let text = serde_json::to_string_pretty(&vm).map_err(|e| Failure::new(e.to_string()))?;
    crate::outln!("{text}");
    Ok(())
}

/// The kinds of `vmadm info` output hull has (SmartOS's qemu-specific ones, such as vnc or
/// spice, do not apply).
const INFO_TYPES: &[&str] = &[
    "all",
    "status",
    "cpus",
    "devices",
    "disk_io",
    "vhost_nets",
    "exits",
    "balloon",
];

/// `vmadm info UUID [TYPE,...]`: a running microVM's VMM figures as JSON.
pub fn info(socket: Option<&Path>, uuid: &str, types: &[String]) -> CmdResult {
    let wanted: Vec<&str> = types
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(bad) = wanted.iter().find(|t| !INFO_TYPES.contains(t)) {
        return Err(Failure::usage(format!(
            "unknown info type {bad:?}; use {}",
            INFO_TYPES.join(", ")
        )));
    }
    let mut info = client(socket)?.info(parse_uuid(uuid)?)?;
    if !wanted.is_empty()
        && !wanted.contains(&"all")
        && let Some(map) = info.as_object_mut()
    {
        map.retain(|k, _| wanted.contains(&k.as_str()));
    }
    let text = serde_json::to_string_pretty(&info).map_err(|e| Failure::new(e.to_string()))?;
    crate::outln!("{text}");
    Ok(())
}
