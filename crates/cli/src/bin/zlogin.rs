//! `zlogin [-l USER] [-Q] UUID [CMD ARGS...]`: runs a command or a login shell inside a
//! running zone, as the zone's root or `-l`'s user; `zlogin -C [-E] UUID` attaches to its
//! console instead. vmmd says where the zone's runtime is; `zoned exec` (next to this binary,
//! or $HULL_ZONED) joins it. The command gets a pty when stdin and stdout are terminals, the
//! pipes that `zoned exec` relays to the caller's stdin/stdout/stderr otherwise (the zone
//! never gets a descriptor of the caller's); zlogin exits with its status.

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
    /// Run as this user of the zone (its /etc/passwd), with that user's login shell when no
    /// command is given.
    #[arg(short = 'l')]
    user: Option<String>,
    /// Quiet: hull's zlogin prints no banner anyway.
    #[arg(short = 'Q')]
    quiet: bool,
    /// Attach to the zone's console (as vmadm console; Ctrl-] detaches).
    #[arg(short = 'C')]
    console: bool,
    /// With -C, no escape character: Ctrl-] goes to the zone.
    #[arg(short = 'E')]
    no_escape: bool,
    /// The zone.
    uuid: String,
    /// The command and its arguments (default: a login shell).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn run(cli: Cli) -> CmdResult {
    let _ = cli.quiet;
    if cli.console {
        if cli.user.is_some() || !cli.command.is_empty() {
            return Err(Failure::usage(
                "-C attaches the console: it takes no -l or command",
            ));
        }
        return hull_cli::vmadm::console::attach(cli.socket.as_deref(), &cli.uuid, !cli.no_escape);
    }
    let uuid = parse_uuid(&cli.uuid)?;
    let vm = client(cli.socket.as_deref())?.get_vm(uuid)?;
    if vm.brand.is_microvm() {
        return Err(Failure::new(format!(
            "VM {uuid} is a {} microVM, not a zone; use vmadm console",
            vm.brand
        )));
    }
    let rt = client(cli.socket.as_deref())?.runtime(uuid)?;
    let zoned = match std::env::var_os("HULL_ZONED") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(|e| Failure::new(format!("cannot find zlogin's own path: {e}")))?
            .with_file_name("zoned"),
    };
    use std::io::IsTerminal;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut cmd = std::process::Command::new(&zoned);
    cmd.arg("exec").arg(&rt.dir);
    if tty {
        cmd.arg("-t");
    }
    if let Some(user) = &cli.user {
        cmd.arg("-u").arg(user);
    }
    cmd.arg("--").args(&cli.command);
    use std::os::unix::process::CommandExt;
    let e = cmd.exec();
    Err(Failure::new(format!("cannot run {}: {e}", zoned.display())))
}

fn main() -> std::process::ExitCode {
    hull_cli::finish("zlogin", run(Cli::parse()))
}
