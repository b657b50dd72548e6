//! `vmadm create`.

use std::path::{Path, PathBuf};

use crate::{CmdResult, client, read_payload};

pub fn run(socket: Option<&Path>, file: Option<&PathBuf>) -> CmdResult {
    let payload = read_payload(file)?;
    let vm = client(socket)?.create_vm(&payload)?;
    // SmartOS prints this on stderr, keeping stdout clean for scripts.
    eprintln!("Successfully created VM {}", vm.uuid);
    Ok(())
}
