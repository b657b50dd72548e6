//! The command-line tools. Each tool is a clap parser plus one module per verb; all talk to
//! vmmd through hull-client and share the exit codes, error printing and table output here.
//!
//! Exit codes follow SmartOS: 0 ok, 1 error, 2 usage (clap's own), and imgadm's 3 for an
//! image that is not installed.
#![forbid(unsafe_code)]

pub mod imgadm;
pub mod nictagadm;
pub mod table;
pub mod vmadm;

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hull_client::{Client, ClientError};

/// Writes to stdout. A closed pipe (`vmadm list | head -1`) ends the process quietly
/// with the status a SIGPIPE death would give, instead of panicking as `println!` does.
pub fn write_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`write_stdout`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(&format!($($arg)*))
    };
}

/// The options every tool shares: where vmmd listens.
#[derive(Debug, clap::Args)]
pub struct Daemon {
    /// vmmd's socket (default: $HULL_SOCKET or /run/hull/vmmd.sock).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
}

/// A command's failure: what to print and which exit code to use.
#[derive(Debug)]
pub struct Failure {
    /// The message (printed after the tool's name).
    pub message: String,
    /// Extra output on stdout (a validation report).
    pub stdout: Option<String>,
    /// Exit code.
    pub code: u8,
}

impl Failure {
    /// An ordinary error (exit 1).
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            stdout: None,
            code: 1,
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            ..Failure::new(message)
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        let stdout = e
            .api_body()
            .and_then(|b| b.report.as_ref())
            .and_then(|r| serde_json::to_string_pretty(r).ok());
        if let Some(body) = e.api_body() {
            for cause in &body.causes {
                message.push_str(&format!(": {cause}"));
            }
        }
        Failure {
            message,
            stdout,
            code: 1,
        }
    }
}

/// Result of a command.
pub type CmdResult = Result<(), Failure>;

/// Prints a failure and turns it into the exit code.
pub fn finish(tool: &str, result: CmdResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(out) = &f.stdout {
                outln!("{out}");
            }
            eprintln!("{tool}: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// A client for the socket chosen by `--socket`, `HULL_SOCKET` or the default.
pub fn client(socket: Option<&Path>) -> Result<Client, Failure> {
    Ok(Client::new(hull_client::socket_path(socket))?)
}

/// Reads a JSON payload from `-f FILE` (or `-` for stdin), else from stdin when it is not
/// a terminal.
pub fn read_payload(file: Option<&PathBuf>) -> Result<serde_json::Value, Failure> {
    let (text, from) = match file {
        Some(p) if p.as_os_str() != "-" => (
            std::fs::read_to_string(p)
                .map_err(|e| Failure::new(format!("cannot read {}: {e}", p.display())))?,
            p.display().to_string(),
        ),
        _ => {
            if file.is_none() && std::io::stdin().is_terminal() {
                return Err(Failure::usage(
                    "no payload: give -f FILE or pipe the JSON payload on stdin",
                ));
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Failure::new(format!("cannot read stdin: {e}")))?;
            (s, "stdin".to_string())
        }
    };
    serde_json::from_str(&text).map_err(|e| Failure::new(format!("{from} is not valid JSON: {e}")))
}

/// Parses a full uuid argument.
pub fn parse_uuid(s: &str) -> Result<uuid::Uuid, Failure> {
    if hull_spec::validate::is_uuid(s) {
        uuid::Uuid::parse_str(s).map_err(|_| Failure::new(format!("{s:?} is not a UUID")))
    } else {
        Err(Failure::new(format!("{s:?} is not a UUID")))
    }
}
