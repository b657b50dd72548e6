//! The `--exit-file` record: one JSON object saying how the VMM ended,
//! `{"reason":"poweroff","detail":"guest powered off"}`. The VMM writes it; zoned reads it
//! to tell a guest reset (boot again) from a power-off or a fault.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How the VMM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitReason {
    /// The guest reset the machine.
    Reset,
    /// The guest powered off.
    Poweroff,
    /// Stopped on request (control socket, SIGTERM, SIGINT).
    Stopped,
    /// The guest faulted.
    Fault,
    /// The VMM failed.
    Error,
}

impl ExitReason {
    /// The word the record carries.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Reset => "reset",
            ExitReason::Poweroff => "poweroff",
            ExitReason::Stopped => "stopped",
            ExitReason::Fault => "fault",
            ExitReason::Error => "error",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The exit file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub reason: ExitReason,
    /// The VMM's last stderr line without its `vmm: ` prefix.
    #[serde(default)]
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_reasons_are_their_words() {
        for r in [
            ExitReason::Reset,
            ExitReason::Poweroff,
            ExitReason::Stopped,
            ExitReason::Fault,
            ExitReason::Error,
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        let rec = ExitRecord {
            reason: ExitReason::Fault,
            detail: "guest stopped abnormally: \"x\"".into(),
        };
        let text = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            text,
            r#"{"reason":"fault","detail":"guest stopped abnormally: \"x\""}"#
        );
        assert_eq!(serde_json::from_str::<ExitRecord>(&text).unwrap(), rec);
        let bare: ExitRecord = serde_json::from_str(r#"{"reason":"reset"}"#).unwrap();
        assert_eq!(bare.detail, "");
        assert!(serde_json::from_str::<ExitRecord>(r#"{"reason":"Reset"}"#).is_err());
    }
}
