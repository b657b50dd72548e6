//! `vmadm`: SmartOS's VM tool. One module per verb (or per family of verbs that share all
//! their code); this file only parses arguments and dispatches.

mod console;
mod create;
mod events;
mod get;
mod lifecycle;
mod list;
mod snapshot;
mod unbuilt;
mod update;
mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::CmdResult;

/// Manage hull's guests (zones and microVMs) the way SmartOS's vmadm does.
#[derive(Debug, Parser)]
#[command(name = "vmadm", version)]
pub struct Cli {
    #[command(flatten)]
    daemon: crate::Daemon,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a VM from a JSON payload (-f FILE or stdin).
    Create {
        /// The payload file.
        #[arg(short = 'f')]
        file: Option<PathBuf>,
    },
    /// Check a payload: `validate create [-f FILE]` or `validate update BRAND [-f FILE]`.
    Validate {
        /// create or update.
        action: String,
        /// The brand (update only).
        brand: Option<String>,
        /// The payload file.
        #[arg(short = 'f')]
        file: Option<PathBuf>,
    },
    /// Print a VM's record as JSON.
    Get {
        /// The VM.
        uuid: String,
    },
    /// List VMs in a table.
    List {
        /// Parsable output: colon-separated, no header.
        #[arg(short = 'p')]
        parsable: bool,
        /// No header.
        #[arg(short = 'H')]
        no_header: bool,
        /// Columns (comma-separated property paths).
        #[arg(short = 'o')]
        fields: Option<String>,
        /// Sort fields (comma-separated; -field for descending).
        #[arg(short = 's', allow_hyphen_values = true)]
        sort: Option<String>,
        /// Filters: key=value or key=~regex.
        filters: Vec<String>,
    },
    /// Print the uuids (or records with -j) of the VMs matching filters.
    Lookup {
        /// Print JSON records.
        #[arg(short = 'j')]
        json: bool,
        /// Fail unless exactly one VM matches.
        #[arg(short = '1')]
        unique: bool,
        /// Fields in the JSON records (with -j).
        #[arg(short = 'o')]
        fields: Option<String>,
        /// Filters: key=value or key=~regex.
        filters: Vec<String>,
    },
    /// Start a VM.
    Start {
        /// The VM.
        uuid: String,
    },
    /// Stop a VM.
    Stop {
        /// The VM.
        uuid: String,
        /// Stop at once.
        #[arg(short = 'F')]
        force: bool,
        /// Seconds to wait for a graceful stop.
        #[arg(short = 't')]
        timeout: Option<u64>,
    },
    /// Reboot a VM.
    Reboot {
        /// The VM.
        uuid: String,
        /// Reboot at once.
        #[arg(short = 'F')]
        force: bool,
    },
    /// Send a signal to a VM's processes (default SIGKILL).
    Kill {
        /// Signal name or number.
        #[arg(short = 's')]
        signal: Option<String>,
        /// The VM.
        uuid: String,
    },
    /// Delete a VM.
    Delete {
        /// The VM.
        uuid: String,
    },
    /// Update a VM from -f FILE, stdin, or property=value arguments.
    Update {
        /// The VM.
        uuid: String,
        /// The payload file.
        #[arg(short = 'f')]
        file: Option<PathBuf>,
        /// property=value pairs.
        properties: Vec<String>,
    },
    /// Follow VM events.
    Events {
        /// Include whole records.
        #[arg(short = 'f')]
        full: bool,
        /// JSON lines.
        #[arg(short = 'j')]
        json: bool,
        /// Print a ready line once subscribed.
        #[arg(short = 'r')]
        ready: bool,
        /// Only this VM.
        uuid: Option<String>,
    },
    /// Runtime information about a running microVM.
    Info {
        /// The VM.
        uuid: String,
        /// Kinds of information.
        types: Vec<String>,
    },
    /// Attach to a VM's console.
    Console {
        /// The VM.
        uuid: String,
    },
    /// Snapshot a VM.
    CreateSnapshot {
        /// The VM.
        uuid: String,
        /// Snapshot name.
        name: String,
    },
    /// Roll a VM back to a snapshot.
    RollbackSnapshot {
        /// The VM.
        uuid: String,
        /// Snapshot name.
        name: String,
    },
    /// Delete a snapshot.
    DeleteSnapshot {
        /// The VM.
        uuid: String,
        /// Snapshot name.
        name: String,
    },
    /// Send a VM as a stream on stdout.
    Send {
        /// The VM.
        uuid: String,
    },
    /// Receive a VM stream on stdin.
    Receive,
}

/// Runs vmadm.
pub fn run(cli: Cli) -> CmdResult {
    let socket = cli.daemon.socket.as_deref();
    match cli.command {
        Command::Create { file } => create::run(socket, file.as_ref()),
        Command::Validate {
            action,
            brand,
            file,
        } => validate::run(socket, &action, brand.as_deref(), file.as_ref()),
        Command::Get { uuid } => get::run(socket, &uuid),
        Command::List {
            parsable,
            no_header,
            fields,
            sort,
            filters,
        } => list::list(
            socket,
            &list::ListArgs {
                parsable,
                no_header,
                fields,
                sort,
                filters,
            },
        ),
        Command::Lookup {
            json,
            unique,
            fields,
            filters,
        } => list::lookup(socket, json, unique, fields.as_deref(), &filters),
        Command::Start { uuid } => lifecycle::start(socket, &uuid),
        Command::Stop {
            uuid,
            force,
            timeout,
        } => lifecycle::stop(socket, &uuid, force, timeout),
        Command::Reboot { uuid, force } => lifecycle::reboot(socket, &uuid, force),
        Command::Kill { signal, uuid } => lifecycle::kill(socket, &uuid, signal),
        Command::Delete { uuid } => lifecycle::delete(socket, &uuid),
        Command::Update {
            uuid,
            file,
            properties,
        } => update::run(socket, &uuid, file.as_ref(), &properties),
        Command::Events {
            full,
            json,
            ready,
            uuid,
        } => events::run(socket, full, json, ready, uuid.as_deref()),
        Command::Info { uuid, types } => get::info(socket, &uuid, &types),
        Command::Console { uuid } => console::console(socket, &uuid),
        Command::CreateSnapshot { uuid, name } => snapshot::create(socket, &uuid, &name),
        Command::RollbackSnapshot { uuid, name } => snapshot::rollback(socket, &uuid, &name),
        Command::DeleteSnapshot { uuid, name } => snapshot::delete(socket, &uuid, &name),
        Command::Send { uuid } => unbuilt::send(socket, &uuid),
        Command::Receive => unbuilt::receive(),
    }
}
