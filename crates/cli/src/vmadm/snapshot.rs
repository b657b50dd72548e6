//! `vmadm create-snapshot|rollback-snapshot|delete-snapshot UUID NAME`.

use std::path::Path;

use crate::{CmdResult, client, parse_uuid};

pub fn create(socket: Option<&Path>, uuid: &str, name: &str) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    client(socket)?.create_snapshot(uuid, name)?;
    eprintln!("Created snapshot {name} for VM {uuid}");
    Ok(())
}

pub fn rollback(socket: Option<&Path>, uuid: &str, name: &str) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    client(socket)?.rollback_snapshot(uuid, name)?;
    eprintln!("Rolled back VM {uuid} to snapshot {name}");
    Ok(())
}

pub fn delete(socket: Option<&Path>, uuid: &str, name: &str) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    client(socket)?.delete_snapshot(uuid, name)?;
    eprintln!("Deleted snapshot {name} from VM {uuid}");
    Ok(())
}
