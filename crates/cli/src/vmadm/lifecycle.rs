//! `vmadm start|stop|reboot|kill|delete`.

use std::path::Path;

use hull_spec::api::{KillRequest, RebootRequest, StopRequest, codes};

use crate::{CmdResult, client, parse_uuid};

/// Says `done` on success; a guest already where the verb would take it (vmmd's
/// `AlreadyInState`) is said as vmmd put it and is no failure, as in SmartOS's vmadm.
fn said<T>(r: Result<T, hull_client::ClientError>, done: String) -> CmdResult {
    match r {
        Ok(_) => eprintln!("{done}"),
        Err(hull_client::ClientError::Api { body, .. }) if body.code == codes::ALREADY => {
            eprintln!("{}", body.message);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

pub fn start(socket: Option<&Path>, uuid: &str) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    said(client(socket)?.start_vm(uuid), format!("Started VM {uuid}"))
}

pub fn stop(
    socket: Option<&Path>,
    uuid: &str,
    force: bool,
    timeout: Option<u64>,
    keep_autoboot: bool,
) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    let req = StopRequest {
        force,
        timeout,
        keep_autoboot,
    };
    said(
        client(socket)?.stop_vm(uuid, &req),
        format!("Successfully completed stop for VM {uuid}"),
    )
}

pub fn reboot(socket: Option<&Path>, uuid: &str, force: bool) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    said(
        client(socket)?.reboot_vm(uuid, &RebootRequest { force }),
        format!("Successfully completed reboot for VM {uuid}"),
    )
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
