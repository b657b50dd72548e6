//! `zlogin UUID [CMD ARGS...]`: runs a command or a shell inside a zone. The zone runtime
//! (zoned) is not built yet, so after checking the zone exists this says so and fails.

use std::path::PathBuf;

use clap::Parser;
use hull_cli::{CmdResult, Failure, client, parse_uuid};

/// Run a command or a shell inside a zone.
#[derive(Debug, Parser)]
#[command(name = "zlogin", version)]
struct Cli {
    /// vmmd's socket (default: $HULL_SOCKET or /run/hull/vmmd.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The zone.
    uuid: String,
    /// The command and its arguments (default: a login shell).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn run(cli: Cli) -> CmdResult {
    let uuid = parse_uuid(&cli.uuid)?;
    let vm = client(cli.socket.as_deref())?.get_vm(uuid)?;
    if vm.brand.is_microvm() {
        return Err(Failure::new(format!(
            "VM {uuid} is a {} microVM, not a zone; use vmadm console",
            vm.brand
        )));
    }
    Err(Failure::new(format!(
        "zlogin needs the zone runtime (zoned), which is not built yet (zone {uuid})"
    )))
}

fn main() -> std::process::ExitCode {
    hull_cli::finish("zlogin", run(Cli::parse()))
}
