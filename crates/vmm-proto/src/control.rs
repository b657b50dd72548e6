//! The control socket's messages: one JSON line per request, one per reply.
//!
//! ```text
//! {"cmd":"pause"}    -> {"ok":true}
//! {"cmd":"resume"}   -> {"ok":true}
//! {"cmd":"power_button"} -> {"ok":true}        (ACPI power button: the guest decides)
//! {"cmd":"ctrl_alt_del"} -> {"ok":true}        (typed on the i8042 keyboard)
//! {"cmd":"shutdown"} -> {"ok":true}            (stops at once; the VMM exits with status 0)
//! {"cmd":"stats"}    -> {"ok":true,"stats":{"vcpus":[..],"devices":[..],"pit":false,..}}
//! {"cmd":"resize_disk","index":0} -> {"ok":true,"disk":{"index":0,"old_bytes":..,"new_bytes":..}}
//! {"cmd":"balloon","target_mib":512} -> {"ok":true}  (the guest is asked to give up 512 MiB)
//! anything refused   -> {"ok":false,"error":"..."}
//! ```
//!
//! Requests are strict (the VMM refuses an unknown command or argument); replies are read
//! leniently (a client ignores fields it does not know).

use serde::{Deserialize, Serialize};

use crate::stats::StatsReport;

/// A request line: `{"cmd": ...}` plus the command's own arguments, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "cmd", deny_unknown_fields)]
// Empty struct variants, not unit ones: serde lets extra fields past a tagged unit variant,
// and a misspelt argument must be an error.
pub enum ControlRequest {
    /// Park the vCPUs.
    Pause {},
    /// Run them again.
    Resume {},
    /// Press the ACPI power button.
    PowerButton {},
    /// Type Ctrl-Alt-Del on the i8042 keyboard.
    CtrlAltDel {},
    /// Stop at once; the VMM exits with status 0.
    Shutdown {},
    /// Report the counters ([`ControlReply::stats`]).
    Stats {},
    /// The host grew the image of `--disk` number `index` (0 is vda): take its new size.
    ResizeDisk { index: usize },
    /// Ask the guest's balloon (`--balloon`) to hold `target_mib` MiB; 0 gives it all back.
    Balloon { target_mib: u64 },
}

impl ControlRequest {
    /// The command's name, as `cmd` carries it.
    pub fn cmd(&self) -> &'static str {
        match self {
            ControlRequest::Pause {} => "pause",
            ControlRequest::Resume {} => "resume",
            ControlRequest::PowerButton {} => "power_button",
            ControlRequest::CtrlAltDel {} => "ctrl_alt_del",
            ControlRequest::Shutdown {} => "shutdown",
            ControlRequest::Stats {} => "stats",
            ControlRequest::ResizeDisk { .. } => "resize_disk",
            ControlRequest::Balloon { .. } => "balloon",
        }
    }

    /// The request as it goes on the socket: JSON and a newline.
    pub fn to_line(&self) -> String {
        let mut line =
            serde_json::to_string(self).expect("a request is plain data and always encodes");
        line.push('\n');
        line
    }
}

/// What a `resize_disk` changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskResized {
    pub index: usize,
    pub old_bytes: u64,
    pub new_bytes: u64,
}

/// A reply line. `error` is set when `ok` is false; `stats` and `disk` answer their commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskResized>,
}

impl ControlReply {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        ControlReply {
            ok: true,
            error: None,
            stats: None,
            disk: None,
        }
    }

    /// `{"ok":false,"error":msg}`.
    pub fn err(msg: String) -> Self {
        ControlReply {
            ok: false,
            error: Some(msg),
            stats: None,
            disk: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_lines_the_vmm_reads() {
        for (req, line) in [
            (ControlRequest::Pause {}, r#"{"cmd":"pause"}"#),
            (ControlRequest::Resume {}, r#"{"cmd":"resume"}"#),
            (ControlRequest::PowerButton {}, r#"{"cmd":"power_button"}"#),
            (ControlRequest::CtrlAltDel {}, r#"{"cmd":"ctrl_alt_del"}"#),
            (ControlRequest::Shutdown {}, r#"{"cmd":"shutdown"}"#),
            (ControlRequest::Stats {}, r#"{"cmd":"stats"}"#),
            (
                ControlRequest::ResizeDisk { index: 2 },
                r#"{"cmd":"resize_disk","index":2}"#,
            ),
            (
                ControlRequest::Balloon { target_mib: 64 },
                r#"{"cmd":"balloon","target_mib":64}"#,
            ),
        ] {
            assert_eq!(req.to_line(), format!("{line}\n"));
            assert_eq!(serde_json::from_str::<ControlRequest>(line).unwrap(), req);
            assert!(line.starts_with(&format!(r#"{{"cmd":"{}""#, req.cmd())));
        }
    }

    #[test]
    fn replies_leave_out_what_they_do_not_carry() {
        let s = |r: &ControlReply| serde_json::to_string(r).unwrap();
        assert_eq!(s(&ControlReply::ok()), r#"{"ok":true}"#);
        assert_eq!(
            s(&ControlReply::err("no".into())),
            r#"{"ok":false,"error":"no"}"#
        );
        let r: ControlReply = serde_json::from_str(
            r#"{"ok":true,"disk":{"index":0,"old_bytes":1,"new_bytes":2},"new":1}"#,
        )
        .unwrap();
        assert_eq!(
            r.disk,
            Some(DiskResized {
                index: 0,
                old_bytes: 1,
                new_bytes: 2
            })
        );
    }
}
