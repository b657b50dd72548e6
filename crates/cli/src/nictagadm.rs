//! `nictagadm`: nic tags map a name guests' NICs join to a physical uplink or to an
//! internal switch (`-l`, SmartOS's etherstub).

use clap::{Parser, Subcommand};
use hull_spec::NicTag;
use serde_json::json;

use crate::table::{fields, render};
use crate::{CmdResult, Failure, client};

/// Manage nic tags the way SmartOS's nictagadm does.
#[derive(Debug, Parser)]
#[command(name = "nictagadm", version)]
pub struct Cli {
    #[command(flatten)]
    daemon: crate::Daemon,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add a tag: `add -l NAME` (internal switch) or `add NAME IFACE` (uplink).
    Add {
        /// An internal switch with no uplink.
        #[arg(short = 'l')]
        local: bool,
        /// The tag.
        name: String,
        /// The uplink interface.
        iface: Option<String>,
    },
    /// Delete an unused tag.
    Delete {
        /// The tag.
        name: String,
    },
    /// List tags.
    List {
        /// No header.
        #[arg(short = 'H')]
        no_header: bool,
        /// Parsable output.
        #[arg(short = 'p')]
        parsable: bool,
    },
}

/// Runs nictagadm.
pub fn run(cli: Cli) -> CmdResult {
    let socket = cli.daemon.socket.as_deref();
    match cli.command {
        Command::Add { local, name, iface } => {
            let uplink = match (local, iface) {
                (true, None) => None,
                (false, Some(i)) => Some(i),
                (true, Some(_)) => return Err(Failure::usage("-l takes a name only")),
                (false, None) => {
                    return Err(Failure::usage(
                        "usage: nictagadm add -l NAME | nictagadm add NAME IFACE",
                    ));
                }
            };
            client(socket)?.add_nictag(&NicTag { name, uplink })?;
            Ok(())
        }
        Command::Delete { name } => {
            client(socket)?.delete_nictag(&name)?;
            Ok(())
        }
        Command::List {
            no_header,
            parsable,
        } => {
            let rows: Vec<serde_json::Value> = client(socket)?
                .nictags()?
                .into_iter()
                .map(|t| {
                    let kind = if t.uplink.is_some() { "normal" } else { "etherstub" };
                    json!({"name": t.name, "link": t.uplink.unwrap_or_else(|| "-".into()), "type": kind})
                })
                .collect();
            let cols = fields("name,link,type").map_err(Failure::usage)?;
            crate::out!(
                "{}",
                render(&rows, &cols, !(no_header || parsable), parsable)
            );
            Ok(())
        }
    }
}
