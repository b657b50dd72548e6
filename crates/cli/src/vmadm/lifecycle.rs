//! `vmadm start|stop|reboot|kill|delete`.

use std::path::Path;

use hull_spec::api::{KillRequest, RebootRequest, StopRequest};

use crate::{CmdResult, client, parse_uuid};

pub fn start(socket: Option<&Path>, uuid: &str) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    client(socket)?.start_vm(uuid)?;
    eprintln!("Started VM {uuid}");
    Ok(())
}

pub fn stop(socket: Option<&Path>, uuid: &str, force: bool, timeout: Option<u64>) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    client(socket)?.stop_vm(uuid, &StopRequest { force, timeout })?;
    eprintln!("Successfully completed stop for VM {uuid}");
    Ok(())
}

pub fn reboot(socket: Option<&Path>, uuid: &str, force: bool) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    client(socket)?.reboot_vm(uuid, &RebootRequest { force })?;
    eprintln!("Successfully completed reboot for VM {uuid}");
    Ok(())
}

pub fn kill(socket: Option<&Path>, uuid: &str, signal: Option<String>) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    client(socket)?.kill_vm(uuid, &KillRequest { signal })?;
    eprintln!("Successfully sent signal to VM {uuid}");
    Ok(())
}

pub fn delete(socket: Option<&Path>, uuid: &str) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    client(socket)?.delete_vm(uuid)?;
    eprintln!("Successfully deleted VM {uuid}");
    Ok(())
}
