//! The control socket: JSON lines over a Unix stream socket, one request per line, one reply
//! line each. vmmd uses it for stop, pause and info. Requests are untrusted input: anything
//! that is not a known command gets an error reply, never a crash.
//!
//! ```text
//! {"cmd":"pause"}    -> {"ok":true}
//! {"cmd":"resume"}   -> {"ok":true}
//! {"cmd":"power_button"} -> {"ok":true}        (ACPI power button: the guest decides)
//! {"cmd":"ctrl_alt_del"} -> {"ok":true}        (typed on the i8042 keyboard)
//! {"cmd":"shutdown"} -> {"ok":true}            (stops at once; the VMM exits with status 0)
//! {"cmd":"stats"}    -> {"ok":true,"stats":{"vcpus":[..],"devices":[..]}}
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::stats::{Stats, StatsReport};
use crate::vcpu::{RunState, StopReason};
use crate::vm::PowerButton;

/// Longest request line accepted.
const MAX_LINE: u64 = 4096;

/// A request line: `{"cmd": ...}` and nothing else.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub cmd: Request,
}

/// A command.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Pause,
    Resume,
    PowerButton,
    CtrlAltDel,
    Shutdown,
    Stats,
}

/// A reply.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsReport>,
}

impl Reply {
    fn ok() -> Self {
        Reply {
            ok: true,
            error: None,
            stats: None,
        }
    }

    fn err(msg: String) -> Self {
        Reply {
            ok: false,
            error: Some(msg),
            stats: None,
        }
    }
}

/// Errors from setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created.
    #[error("cannot listen on control socket {path}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Something that is not a socket is in the way.
    #[error("control socket path {0} exists and is not a socket")]
    NotASocket(String),
}

/// What the control socket acts on.
pub struct Controller {
    pub state: Arc<RunState>,
    pub stats: Arc<Stats>,
    pub vcpus: usize,
    pub button: Arc<PowerButton>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("vcpus", &self.vcpus)
            .finish()
    }
}

impl Controller {
    /// Handles one request line. A shutdown is not done here but returned, so that the
    /// caller writes the reply before the VMM exits (the process ends soon after the stop).
    pub fn handle_line(&self, line: &str) -> (Reply, Option<StopReason>) {
        let req = match serde_json::from_str::<Envelope>(line.trim()) {
            Ok(r) => r.cmd,
            Err(e) => return (Reply::err(format!("bad request: {e}")), None),
        };
        let reply = match req {
            Request::Pause => {
                if self.state.pause(self.vcpus) {
                    Reply::ok()
                } else {
                    Reply::err("vCPUs did not pause within 2 s".into())
                }
            }
            Request::Resume => {
                self.state.resume();
                Reply::ok()
            }
            Request::PowerButton => {
                self.button.press();
                Reply::ok()
            }
            Request::CtrlAltDel => {
                self.button.ctrl_alt_del();
                Reply::ok()
            }
            Request::Shutdown => {
                let why = StopReason::Requested("control socket shutdown".into());
                return (Reply::ok(), Some(why));
            }
            Request::Stats => Reply {
                stats: Some(self.stats.report()),
                ..Reply::ok()
            },
        };
        (reply, None)
    }

    fn serve(&self, stream: UnixStream) {
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            match (&mut reader).take(MAX_LINE).read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let (reply, stop) = if line.ends_with('\n') {
                self.handle_line(&line)
            } else {
                (
                    Reply::err(format!("request longer than {MAX_LINE} bytes")),
                    None,
                )
            };
            let mut text = serde_json::to_string(&reply)
                .unwrap_or_else(|_| r#"{"ok":false,"error":"cannot encode reply"}"#.to_owned());
            text.push('\n');
            let written = out.write_all(text.as_bytes());
            if let Some(why) = stop {
                self.state.stop(why);
            }
            if written.is_err() || !line.ends_with('\n') {
                return;
            }
        }
    }
}

/// Binds the socket (replacing a stale one) and serves it on a thread of its own.
pub fn spawn(path: &Path, controller: Controller) -> Result<(), ControlError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket(path.display().to_string()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.display().to_string(),
        source,
    })?;
    std::thread::Builder::new()
        .name("vmm-control".into())
        .spawn(move || {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadRole::Control) {
                controller
                    .state
                    .stop(StopReason::VmmFailure(format!("control thread: {e}")));
                return;
            }
            for stream in listener.incoming().flatten() {
                controller.serve(stream);
            }
        })
        .map_err(|source| ControlError::Bind {
            path: path.display().to_string(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (Controller, std::sync::mpsc::Receiver<StopReason>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            Controller {
                state: RunState::new(tx),
                stats: Arc::new(Stats::new(1)),
                vcpus: 0,
                button: Arc::new(PowerButton::for_tests()),
            },
            rx,
        )
    }

    #[test]
    fn commands_parse_and_act() {
        let (c, rx) = controller();
        assert!(c.handle_line(r#"{"cmd":"pause"}"#).0.ok);
        assert!(c.state.paused());
        assert!(c.handle_line(r#"{"cmd":"resume"}"#).0.ok);
        assert!(!c.state.paused());
        let (s, _) = c.handle_line(r#"{"cmd":"stats"}"#);
        assert_eq!(s.stats.unwrap().vcpus.len(), 1);
        assert!(c.handle_line(r#"{"cmd":"power_button"}"#).0.ok);
        assert!(c.handle_line(r#"{"cmd":"ctrl_alt_del"}"#).0.ok);
        assert_eq!(c.button.pending(), 1);
        // The shutdown is handed back, to be done once the reply is out.
        let (r, stop) = c.handle_line(r#"{"cmd":"shutdown"}"#);
        assert!(r.ok);
        assert!(matches!(stop, Some(StopReason::Requested(_))));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn junk_gets_an_error_reply() {
        let (c, _rx) = controller();
        for bad in [
            "",
            "{",
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"pause","x":1}"#,
            "\u{0}",
        ] {
            let (r, stop) = c.handle_line(bad);
            assert!(stop.is_none());
            assert!(!r.ok, "{bad:?}");
            assert!(r.error.unwrap().starts_with("bad request"));
        }
    }

    #[test]
    fn socket_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (c, _rx) = controller();
        spawn(&path, c).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"cmd\":\"stats\"}\nnot json\n").unwrap();
        let mut r = BufReader::new(s);
        let mut l1 = String::new();
        r.read_line(&mut l1).unwrap();
        let mut l2 = String::new();
        r.read_line(&mut l2).unwrap();
        assert!(
            l1.contains("\"ok\":true") && l1.contains("\"vcpus\""),
            "{l1}"
        );
        assert!(l2.contains("\"ok\":false"), "{l2}");
        // A regular file in the way is not replaced.
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let (c, _rx) = controller();
        assert!(matches!(spawn(&f, c), Err(ControlError::NotASocket(_))));
    }
}
