//! Boot Loader Specification entries (`/loader/entries/*.conf`), as Fedora, RHEL and
//! systemd-boot systems write them.

use std::cmp::Ordering;

use crate::grub::{BootEntry, ConfigError, expand_vars, grubenv_vars, strip_device};

/// Largest loader entry file taken.
pub const MAX_ENTRY: usize = 64 << 10;
/// Most loader entries considered.
pub const MAX_ENTRIES: usize = 256;

#[derive(Debug, Default)]
struct Bls {
    id: String,
    title: Option<String>,
    version: Option<String>,
    linux: Option<String>,
    initrd: Vec<String>,
    options: Vec<String>,
}

fn parse(name: &str, text: &str) -> Bls {
    let mut e = Bls {
        id: name.strip_suffix(".conf").unwrap_or(name).to_owned(),
        ..Bls::default()
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(|c: char| c.is_ascii_whitespace())
            .map_or((line, ""), |(k, v)| (k, v.trim()));
        match key {
            "title" => e.title = Some(value.to_owned()),
            "version" => e.version = Some(value.to_owned()),
            "linux" => e.linux = Some(value.to_owned()),
            "initrd" => e
                .initrd
                .extend(value.split_ascii_whitespace().map(str::to_owned)),
            "options" if !value.is_empty() => e.options.push(value.to_owned()),
            _ => {}
        }
    }
    e
}

/// Compares versions the way people read them: runs of digits as numbers, the rest as
/// text (`6.1.0-28` after `6.1.0-9`).
pub(crate) fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        while start < bytes.len() {
            let digit = bytes.get(start).is_some_and(u8::is_ascii_digit);
            let len = bytes
                .get(start..)
                .unwrap_or_default()
                .iter()
                .take_while(|b| b.is_ascii_digit() == digit)
                .count();
            out.push((digit, s.get(start..start + len).unwrap_or_default()));
            start += len;
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// The default of a set of loader entries, given as (file name, text) pairs; `grubenv` is
/// GRUB's environment file, if any.
///
/// Files not ending in `.conf` and entries without a `linux` key are skipped. The entry whose
/// id (file name without `.conf`) is grubenv's `saved_entry` wins; otherwise the highest
/// `version` (missing versions sort lowest), ties broken by the highest id, as
/// systemd-boot and GRUB's blscfg order them. `options` lines are joined and `$var`s in them
/// expanded from grubenv (RHEL 8's `$kernelopts`), as are those in `initrd` lines (RHEL 9's
/// `$tuned_initrd`); unknown variables expand to nothing.
pub fn bls_default_entry(
    files: &[(String, String)],
    grubenv: Option<&str>,
) -> Result<BootEntry, ConfigError> {
    let vars = grubenv_vars(grubenv);
    let mut entries = Vec::new();
    for (name, text) in files.iter().filter(|(n, _)| n.ends_with(".conf")) {
        if entries.len() >= MAX_ENTRIES {
            break;
        }
        if text.len() > MAX_ENTRY {
            return Err(ConfigError::TooLarge {
                what: "a loader entry",
                size: text.len(),
                max: MAX_ENTRY,
            });
        }
        let e = parse(name, text);
        if e.linux.is_some() {
            entries.push(e);
        }
    }
    let saved = vars.get("saved_entry");
    let chosen = entries
        .iter()
        .find(|e| Some(&e.id) == saved)
        .or_else(|| {
            entries.iter().max_by(|a, b| {
                let va = a.version.as_deref();
                let vb = b.version.as_deref();
                match (va, vb) {
                    (Some(x), Some(y)) => version_cmp(x, y),
                    (x, y) => x.is_some().cmp(&y.is_some()),
                }
                .then_with(|| version_cmp(&a.id, &b.id))
            })
        })
        .ok_or(ConfigError::NoEntry {
            what: "loader entries",
        })?;
    let options = expand_vars(&chosen.options.join(" "), &vars, MAX_ENTRY).ok_or(
        ConfigError::ExpansionTooLarge {
            what: "loader entry options",
            max: MAX_ENTRY,
        },
    )?;
    // RHEL 9 and Rocky write `initrd /initramfs-<ver>.img $tuned_initrd`: GRUB expands the
    // variable when it runs the entry, to nothing when tuned set none.
    let initrd = expand_vars(&chosen.initrd.join(" "), &vars, MAX_ENTRY).ok_or(
        ConfigError::ExpansionTooLarge {
            what: "loader entry initrds",
            max: MAX_ENTRY,
        },
    )?;
    Ok(BootEntry {
        title: chosen.title.clone().unwrap_or_else(|| chosen.id.clone()),
        id: Some(chosen.id.clone()),
        kernel: chosen
            .linux
            .as_deref()
            .map(strip_device)
            .unwrap_or_default(),
        initrd: initrd.split_ascii_whitespace().map(strip_device).collect(),
        options: options
            .split_ascii_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    })
}
