//! `imgadm`: SmartOS's image tool. Reading the installed images works now; the verbs that
//! change the store need cowstore and say so.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::table::{fields, render, sort};
use crate::{CmdResult, Failure, client, parse_uuid};

/// Manage hull's images the way SmartOS's imgadm does.
#[derive(Debug, Parser)]
#[command(name = "imgadm", version)]
pub struct Cli {
    /// vmmd's socket (default: $HULL_SOCKET or /run/hull/vmmd.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List installed images.
    List {
        /// JSON output.
        #[arg(short = 'j')]
        json: bool,
        /// No header.
        #[arg(short = 'H')]
        no_header: bool,
        /// Columns.
        #[arg(short = 'o')]
        fields: Option<String>,
        /// Sort fields.
        #[arg(short = 's', allow_hyphen_values = true)]
        sort: Option<String>,
        /// Filters: FIELD=VALUE or FIELD=~SUBSTRING.
        filters: Vec<String>,
    },
    /// Print an installed image's manifest.
    Get {
        /// The image.
        uuid: String,
    },
    /// Print an image's manifest (installed images).
    Show {
        /// The image.
        uuid: String,
    },
    /// Install an image from a manifest and a file.
    Install {
        /// The manifest.
        #[arg(short = 'm')]
        manifest: PathBuf,
        /// The image file.
        #[arg(short = 'f')]
        file: PathBuf,
    },
    /// Import an image from the configured sources.
    Import {
        /// The image.
        uuid: String,
    },
    /// Manage image sources.
    Sources {
        /// Add a source.
        #[arg(short = 'a')]
        add: Option<String>,
        /// Delete a source.
        #[arg(short = 'd')]
        delete: Option<String>,
    },
    /// List images available from the sources.
    Avail,
    /// Delete an installed image.
    Delete {
        /// The image.
        uuid: String,
    },
    /// Delete images no guest uses.
    Vacuum {
        /// Do not ask.
        #[arg(short = 'f')]
        force: bool,
    },
    /// Create an image from a stopped guest.
    Create {
        /// Arguments as SmartOS takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

const NOT_BUILT: &str = "needs the image store (cowstore), which is not built yet";

fn filter_matches(row: &Value, f: &str) -> Result<bool, Failure> {
    let (k, v) = f
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Failure::usage(format!("{f:?} is not FIELD=VALUE or FIELD=~SUBSTRING")))?;
    let cell = crate::table::cell(row, k);
    Ok(match v.strip_prefix('~') {
        Some(sub) => cell.contains(sub),
        None => cell == v,
    })
}

/// Runs imgadm.
pub fn run(cli: Cli) -> CmdResult {
    let socket = cli.socket.as_deref();
    match cli.command {
        Command::List {
            json,
            no_header,
            fields: cols,
            sort: by,
            filters,
        } => {
            let images = client(socket)?.list_images()?;
            let mut rows = Vec::new();
            for m in images {
                let row = serde_json::to_value(&m).map_err(|e| Failure::new(e.to_string()))?;
                let mut keep = true;
                for f in &filters {
                    keep &= filter_matches(&row, f)?;
                }
                if keep {
                    rows.push(row);
                }
            }
            let by =
                fields(by.as_deref().unwrap_or("published_at,name")).map_err(Failure::usage)?;
            sort(&mut rows, &by);
            if json {
                let text =
                    serde_json::to_string_pretty(&rows).map_err(|e| Failure::new(e.to_string()))?;
                crate::outln!("{text}");
            } else {
                let cols = fields(
                    cols.as_deref()
                        .unwrap_or("uuid,name,version,os,type,published_at"),
                )
                .map_err(Failure::usage)?;
                crate::out!("{}", render(&rows, &cols, !no_header, false));
            }
            Ok(())
        }
        Command::Get { uuid } | Command::Show { uuid } => {
            let uuid = parse_uuid(&uuid)?;
            match client(socket)?.get_image(uuid) {
                Ok(m) => {
                    let text = serde_json::to_string_pretty(&m)
                        .map_err(|e| Failure::new(e.to_string()))?;
                    crate::outln!("{text}");
                    Ok(())
                }
                Err(e) if e.api_body().is_some_and(|b| b.code == "NotFound") => Err(Failure {
                    code: 3,
                    ..Failure::from(e)
                }),
                Err(e) => Err(e.into()),
            }
        }
        Command::Install { .. } => Err(Failure::new(format!("install {NOT_BUILT}"))),
        Command::Import { .. } => Err(Failure::new(format!("import {NOT_BUILT}"))),
        Command::Sources { .. } => Err(Failure::new(format!("sources {NOT_BUILT}"))),
        Command::Avail => Err(Failure::new(format!("avail {NOT_BUILT}"))),
        Command::Delete { .. } => Err(Failure::new(format!("delete {NOT_BUILT}"))),
        Command::Vacuum { .. } => Err(Failure::new(format!("vacuum {NOT_BUILT}"))),
        Command::Create { .. } => Err(Failure::new(format!("create {NOT_BUILT}"))),
    }
}
