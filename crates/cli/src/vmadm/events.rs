//! `vmadm events [-f] [-j] [-r] [UUID]`.

use std::path::Path;

use hull_spec::Event;

use crate::{CmdResult, client, parse_uuid};

pub fn run(
    socket: Option<&Path>,
    full: bool,
    json: bool,
    ready: bool,
    uuid: Option<&str>,
) -> CmdResult {
    let uuid = uuid.map(parse_uuid).transpose()?;
    let c = client(socket)?;
    c.events(
        uuid,
        full,
        || {
            if ready {
                if json {
                    crate::outln!("{{\"type\":\"ready\"}}");
                } else {
                    crate::outln!("ready");
                }
            }
        },
        |line| {
            if json {
                crate::outln!("{line}");
                return true;
            }
            match serde_json::from_str::<Event>(line) {
                Ok(ev) => {
                    let kind = serde_json::to_value(ev.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let state = ev.state.map(|s| s.as_str()).unwrap_or("-");
                    let mut text = format!(
                        "[{}] {} ({}) {kind} {state}",
                        ev.timestamp,
                        ev.uuid,
                        ev.alias.as_deref().unwrap_or("-")
                    );
                    if !ev.changes.is_empty() {
                        text.push_str(&format!(" [{}]", ev.changes.join(",")));
                    }
                    crate::outln!("{text}");
                    if let Some(vm) = ev.vm.filter(|_| full) {
                        crate::outln!("{}", serde_json::to_string_pretty(&vm).unwrap_or_default());
                    }
                }
                Err(_) => crate::outln!("{line}"),
            }
            true
        },
    )?;
    Ok(())
}
