//! `vmadm get`.

use std::path::Path;

use crate::{CmdResult, Failure, client, parse_uuid};

pub fn run(socket: Option<&Path>, uuid: &str) -> CmdResult {
    let vm = client(socket)?.get_vm(parse_uuid(uuid)?)?;
    let text = serde_json::to_string_pretty(&vm).map_err(|e| Failure::new(e.to_string()))?;
    crate::outln!("{text}");
    Ok(())
}
