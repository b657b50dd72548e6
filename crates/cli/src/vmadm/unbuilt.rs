//! Verbs whose subsystem is not built yet. Each checks what it can (the VM exists) and then
//! fails with a message naming what is missing: never a fake success.

use std::path::Path;

use crate::{CmdResult, Failure, client, parse_uuid};

fn missing(socket: Option<&Path>, uuid: &str, what: &str) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    client(socket)?.get_vm(uuid)?;
    Err(Failure::new(format!("{what} (VM {uuid})")))
}

pub fn send(socket: Option<&Path>, uuid: &str) -> CmdResult {
    missing(socket, uuid, "send (a VM as a stream) is not built yet")
}

pub fn receive() -> CmdResult {
    Err(Failure::new(
        "receive (a VM from a stream) is not built yet",
    ))
}
