//! `vmadm`: SmartOS's VM tool. One module per verb (or per family of verbs that share all
//! their code); this file only parses arguments and dispatches.

pub mod console;
mod create;
mod events;
mod get;
mod lifecycle;
mod list;
mod snapshot;
mod transfer;
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
    #[command(visible_alias = "json")]
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
    #[command(visible_alias = "boot")]
    Start {
        /// The VM.
        uuid: String,
    },
    /// Stop a VM.
    #[command(visible_alias = "halt")]
    Stop {
        /// The VM.
        uuid: String,
        /// Stop at once.
        #[arg(short = 'F')]
        force: bool,
        /// Seconds to wait for a graceful stop (default 60 for a zone, 180 for a hardware VM).
        #[arg(short = 't')]
        timeout: Option<u64>,
        /// Leave autoboot set (hull's: how a host's own shutdown stops its guests); a stop
        /// clears it otherwise, as SmartOS's does.
        #[arg(long)]
        keep_autoboot: bool,
    },
    /// Reboot a VM.
    Reboot {
        /// The VM.
        uuid: String,
        /// Reboot at once.
        #[arg(short = 'F')]
        force: bool,
    },
    /// Send a signal to a VM's init (default SIGTERM); `-s NAME`, `-NAME` or `-NUMBER`.
    Kill {
        /// Signal name (HUP, SIGHUP...) or number.
        #[arg(short = 's')]
        signal: Option<String>,
        /// The VM.
        uuid: String,
    },
    /// Delete a VM.
    #[command(visible_alias = "destroy")]
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
    /// Make a zone's root anew from the image_uuid of a payload (-f FILE or stdin), keeping
    /// its uuid, NICs, metadata and delegated dataset.
    Reprovision {
        /// The VM.
        uuid: String,
        /// The payload file.
        #[arg(short = 'f')]
        file: Option<PathBuf>,
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
    /// Print a docker zone's output (its process's stdout and stderr, kept across its
    /// runs; the last 1 to 2 MiB).
    Logs {
        /// The docker zone.
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
    /// Send a VM as a stream on stdout (a running VM is stopped first and stays stopped).
    Send {
        /// The VM.
        uuid: String,
        /// Only the changes since this snapshot (not built yet).
        #[arg(long)]
        since: Option<String>,
    },
    /// Receive a VM stream on stdin.
    #[command(visible_alias = "recv")]
    Receive,
}

/// vmadm's arguments with SmartOS's `vmadm kill -NAME` and `-NUMBER` (`-HUP`, `-SIGHUP`,
/// `-9`) spelled as `-s NAME`, which the parser takes; everything else as given.
pub fn smartos_argv<I: IntoIterator<Item = std::ffi::OsString>>(
    argv: I,
) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut in_kill = false;
    for a in argv {
        let spelled = a.to_str().and_then(|s| s.strip_prefix('-')).filter(|name| {
            let bare = name.strip_prefix("SIG").unwrap_or(name);
            !bare.is_empty()
                && name.len() <= 12
                && (bare
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    && bare.as_bytes()[0].is_ascii_uppercase()
                    || name.bytes().all(|b| b.is_ascii_digit()))
        });
        match spelled {
            Some(name) if in_kill => {
                out.push("-s".into());
                out.push(name.into());
            }
            _ => {
                // The verb, not the program's own name.
                in_kill |= a == "kill" && !out.is_empty();
                out.push(a);
            }
        }
    }
    out
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
            keep_autoboot,
        } => lifecycle::stop(socket, &uuid, force, timeout, keep_autoboot),
        Command::Reboot { uuid, force } => lifecycle::reboot(socket, &uuid, force),
        Command::Kill { signal, uuid } => lifecycle::kill(socket, &uuid, signal),
        Command::Delete { uuid } => lifecycle::delete(socket, &uuid),
        Command::Update {
            uuid,
            file,
            properties,
        } => update::run(socket, &uuid, file.as_ref(), &properties),
        Command::Reprovision { uuid, file } => update::reprovision(socket, &uuid, file.as_ref()),
        Command::Events {
            full,
            json,
            ready,
            uuid,
        } => events::run(socket, full, json, ready, uuid.as_deref()),
        Command::Info { uuid, types } => get::info(socket, &uuid, &types),
        Command::Console { uuid } => console::console(socket, &uuid),
        Command::Logs { uuid } => console::logs(socket, &uuid),
        Command::CreateSnapshot { uuid, name } => snapshot::create(socket, &uuid, &name),
        Command::RollbackSnapshot { uuid, name } => snapshot::rollback(socket, &uuid, &name),
        Command::DeleteSnapshot { uuid, name } => snapshot::delete(socket, &uuid, &name),
        Command::Send { uuid, since } => transfer::send(socket, &uuid, since.as_deref()),
        Command::Receive => transfer::receive(socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        smartos_argv(args.iter().map(std::ffi::OsString::from))
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn kill_takes_smartos_signal_spellings() {
        for (given, want) in [
            (
                &["vmadm", "kill", "-HUP", "U"][..],
                &["vmadm", "kill", "-s", "HUP", "U"][..],
            ),
            (
                &["vmadm", "kill", "-SIGUSR1", "U"],
                &["vmadm", "kill", "-s", "SIGUSR1", "U"],
            ),
            (
                &["vmadm", "kill", "-9", "U"],
                &["vmadm", "kill", "-s", "9", "U"],
            ),
            (
                &["vmadm", "kill", "-s", "TERM", "U"],
                &["vmadm", "kill", "-s", "TERM", "U"],
            ),
            (&["vmadm", "kill", "U"], &["vmadm", "kill", "U"]),
            // Only kill's arguments: other verbs' flags are theirs.
            (
                &["vmadm", "list", "-H", "-p"],
                &["vmadm", "list", "-H", "-p"],
            ),
            (&["vmadm", "stop", "-F", "U"], &["vmadm", "stop", "-F", "U"]),
        ] {
            assert_eq!(argv(given), want, "{given:?}");
        }
        let cli = Cli::try_parse_from(smartos_argv(
            ["vmadm", "kill", "-KILL", "U"].map(Into::into),
        ))
        .expect("parses");
        assert!(matches!(cli.command, Command::Kill { signal: Some(s), .. } if s == "KILL"));
    }

    #[test]
    fn smartos_verb_aliases_parse() {
        for (alias, verb) in [
            ("boot", "start"),
            ("halt", "stop"),
            ("destroy", "delete"),
            ("json", "get"),
        ] {
            let cli = Cli::try_parse_from(["vmadm", alias, "U"]).expect(alias);
            let name = format!("{:?}", cli.command).to_lowercase();
            assert!(name.starts_with(verb), "{alias}: {name}");
        }
        assert!(matches!(
            Cli::try_parse_from(["vmadm", "recv"])
                .expect("recv")
                .command,
            Command::Receive
        ));
    }
}
