//! The spare zoned: on cgroup v1 hosts (vmmd as root) a `zoned spare` is started ahead of
//! the next zone start and waits in a cgroup of its own, so a start skips making the cgroup
//! hierarchies (the slow part there). A start that finds none runs `zoned run` itself.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Starting, Zones, read_byte, wait_readable};

/// Longest wait for a spare zoned to be ready.
const SPARE_WAIT: Duration = Duration::from_secs(5);

/// A `zoned spare` process, already in a cgroup of its own, waiting for a zone's directory.
#[derive(Debug)]
pub(super) struct Spare {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Zones {
    /// Makes a spare zoned in the background if there is none (and none on the way). The
    /// first call also removes spare cgroups an earlier vmmd on this data root left.
    pub fn refill(self: &Arc<Self>) {
        if !self.spares || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        std::thread::spawn(move || {
            if me.spare_seq.load(Ordering::Acquire) == 0 {
                me.sweep_spares();
            }
            // Made without holding the lock: a start meanwhile runs without a spare rather
            // than waiting for this one.
            let empty = me.spare_slot().is_none();
            let made = if empty { me.make_spare() } else { None };
            let extra = made.and_then(|spare| me.spare_slot().replace(spare));
            if let Some(extra) = extra {
                // Cannot happen with one refill at a time; an extra spare would just go.
                drop(extra.stdin);
                let mut child = extra.child;
                std::thread::spawn(move || child.wait());
            }
            me.refilling.store(false, Ordering::Release);
        });
    }

    fn spare_slot(&self) -> std::sync::MutexGuard<'_, Option<Spare>> {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spare_prefix(&self) -> String {
        format!(".spare-{}-", self.spare_tag)
    }

    /// Starts `zoned spare` and waits until it sits in its cgroup.
    fn make_spare(&self) -> Option<Spare> {
        let n = self.spare_seq.fetch_add(1, Ordering::AcqRel);
        let name = format!("hull/{}{}-{n}", self.spare_prefix(), std::process::id());
        let _ = std::fs::create_dir_all(&self.root);
        let spawned = Command::new(&self.zoned)
            .arg("spare")
            .arg(&self.root)
            .arg(&name)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot start a spare zoned: {e}");
                return None;
            }
        };
        let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return None;
        };
        if wait_readable(&stdout, SPARE_WAIT) && read_byte(&mut stdout).is_some() {
            return Some(Spare {
                child,
                stdin,
                stdout,
            });
        }
        tracing::warn!("a spare zoned did not get ready; zones start without one");
        drop(stdin);
        let _ = child.kill();
        std::thread::spawn(move || child.wait());
        None
    }

    /// Kills and removes spare cgroups of this data root that no live spare of ours holds.
    fn sweep_spares(&self) {
        let Ok(layout) = zoned::cgroup::Layout::detect() else {
            return;
        };
        let zoned::cgroup::Layout::V1 { hierarchies, .. } = &layout else {
            return;
        };
        let prefix = self.spare_prefix();
        let mine = format!("{prefix}{}-", std::process::id());
        let names: std::collections::BTreeSet<String> = hierarchies
            .iter()
            .flat_map(|h| {
                std::fs::read_dir(h.mount.join("hull"))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix) && !n.starts_with(&mine))
            .collect();
        for name in names {
            let Ok(cg) = zoned::cgroup::Cgroup::at(&layout, &format!("hull/{name}")) else {
                continue;
            };
            // A hierarchy may lack it (a spare killed half-made): remove the rest anyway.
            let _ = cg.kill_all();
            if let Err(e) = cg.remove() {
                tracing::warn!("cannot remove an old spare cgroup: {e}");
            }
        }
    }

    /// Hands the spare, if there is one, the zone in `dir`: returns its process and the
    /// pipe on which it says that init runs. A spare that died meanwhile is collected.
    pub(super) fn take_spare(&self, dir: &Path) -> Option<Starting> {
        let spare = self.spare_slot().take()?;
        let Spare {
            mut child,
            mut stdin,
            stdout,
        } = spare;
        let line = format!("{}\n", dir.display());
        if stdin.write_all(line.as_bytes()).is_ok() {
            return Some((child, stdin, stdout));
        }
        let _ = child.kill();
        std::thread::spawn(move || child.wait());
        None
    }
}
