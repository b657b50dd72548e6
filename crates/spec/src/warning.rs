//! A guest record's warnings: what the host could not enforce or apply at once, named.
//!
//! On the wire and on disk a warning is one string, as it always was; in memory it is a
//! [`Warning`], so that vmmd replaces the kind it means ("the host's notes", "what waits for
//! the next boot") by matching a variant, not by comparing string prefixes. A string that
//! starts with no known prefix (an older vmmd's wording, a cost such as a copied disk) is
//! [`Warning::Other`] and comes back out unchanged.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One warning of a guest record. `Display` (and serde) give the text users see.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Warning {
    /// `quota: ...`: the guest's quota is not enforced (the text says why).
    Quota(String),
    /// `nics: changed while it runs; ...`: a running microVM's NICs change at its next boot.
    NicsAtNextBoot(String),
    /// `memory: changed while it runs; ...`: a running microVM's memory changes at its next
    /// boot.
    MemoryAtNextBoot(String),
    /// `changed while it runs, takes effect at its next boot: PROPERTY`.
    AtNextBoot(String),
    /// `this host: ...`: a limit the host could not apply when the guest started or was updated.
    HostNote(String),
    /// `its nics are not plumbed...`: written by vmmd before the switch existed; a start drops it.
    NicsNotPlumbed(String),
    /// `stored only: PROPERTY: why`: a SmartOS property kept in the record that hull has
    /// nothing to apply it to (ZFS tuning, QEMU tuning, lx's emulated kernel version).
    Stored(String),
    /// Anything else, kept as it is.
    Other(String),
}

/// The prefix of each kind, and the text that follows it, joined by one space.
const QUOTA: &str = "quota:";
const NICS_AT_NEXT_BOOT: &str =
    "nics: changed while it runs; the changes take effect at its next boot:";
const MEMORY_AT_NEXT_BOOT: &str =
    "memory: changed while it runs; the change takes effect at its next boot:";
const AT_NEXT_BOOT: &str = "changed while it runs, takes effect at its next boot:";
const HOST_NOTE: &str = "this host:";
const NICS_NOT_PLUMBED: &str = "its nics are not plumbed";
const STORED: &str = "stored only:";

impl Warning {
    /// True when `self` waits for the guest's next boot (any of the `*AtNextBoot` kinds): a
    /// start makes it moot.
    pub fn waits_for_boot(&self) -> bool {
        matches!(
            self,
            Warning::NicsAtNextBoot(_) | Warning::MemoryAtNextBoot(_) | Warning::AtNextBoot(_)
        )
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, rest) = match self {
            Warning::Quota(r) => (QUOTA, r),
            Warning::NicsAtNextBoot(r) => (NICS_AT_NEXT_BOOT, r),
            Warning::MemoryAtNextBoot(r) => (MEMORY_AT_NEXT_BOOT, r),
            Warning::AtNextBoot(r) => (AT_NEXT_BOOT, r),
            Warning::HostNote(r) => (HOST_NOTE, r),
            Warning::Stored(r) => (STORED, r),
            Warning::NicsNotPlumbed(r) => return write!(f, "{NICS_NOT_PLUMBED}{r}"),
            Warning::Other(r) => return f.write_str(r),
        };
        write!(f, "{prefix} {rest}")
    }
}

impl From<String> for Warning {
    fn from(s: String) -> Warning {
        let after = |prefix: &str| s.strip_prefix(prefix)?.strip_prefix(' ').map(str::to_owned);
        if let Some(r) = after(QUOTA) {
            Warning::Quota(r)
        } else if let Some(r) = after(NICS_AT_NEXT_BOOT) {
            Warning::NicsAtNextBoot(r)
        } else if let Some(r) = after(MEMORY_AT_NEXT_BOOT) {
            Warning::MemoryAtNextBoot(r)
        } else if let Some(r) = after(AT_NEXT_BOOT) {
            Warning::AtNextBoot(r)
        } else if let Some(r) = after(HOST_NOTE) {
            Warning::HostNote(r)
        } else if let Some(r) = after(STORED) {
            Warning::Stored(r)
        } else if let Some(r) = s.strip_prefix(NICS_NOT_PLUMBED) {
            Warning::NicsNotPlumbed(r.to_owned())
        } else {
            Warning::Other(s)
        }
    }
}

impl From<Warning> for String {
    fn from(w: Warning) -> String {
        w.to_string()
    }
}

schema_as_string!(Warning);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_as_itself_and_as_the_same_text() {
        let texts = [
            "quota: not enforced by the overlay backend on this data root (why); use btrfs",
            "nics: changed while it runs; the changes take effect at its next boot: the VM runs",
            "memory: changed while it runs; the change takes effect at its next boot: it keeps",
            "changed while it runs, takes effect at its next boot: hostname",
            "this host: swap limit not supported here (no memory.swap.max)",
            "its nics are not plumbed (vmmd started before the switch)",
            "disk /data/x/disk0: copied 1024 bytes (the overlay backend cannot reflink)",
            "stored only: zfs_root_recsize: ZFS tuning",
        ];
        let kinds: Vec<Warning> = texts.iter().map(|t| Warning::from(t.to_string())).collect();
        assert!(matches!(kinds[0], Warning::Quota(_)));
        assert!(matches!(kinds[1], Warning::NicsAtNextBoot(_)));
        assert!(matches!(kinds[2], Warning::MemoryAtNextBoot(_)));
        assert_eq!(kinds[3], Warning::AtNextBoot("hostname".into()));
        assert!(matches!(kinds[4], Warning::HostNote(_)));
        assert!(matches!(kinds[5], Warning::NicsNotPlumbed(_)));
        assert!(matches!(kinds[6], Warning::Other(_)));
        assert_eq!(
            kinds[7],
            Warning::Stored("zfs_root_recsize: ZFS tuning".into())
        );
        for (t, k) in texts.iter().zip(&kinds) {
            assert_eq!(k.to_string(), *t);
        }
        let json = serde_json::to_string(&kinds).expect("serialises");
        assert_eq!(json, serde_json::to_string(&texts).expect("serialises"));
        let back: Vec<Warning> = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, kinds);
    }

    #[test]
    fn a_prefix_without_its_space_or_inside_a_word_is_other() {
        for t in [
            "quota:x",
            "quotas: none",
            "this host:",
            "changed while it runs",
        ] {
            assert_eq!(
                Warning::from(t.to_string()),
                Warning::Other(t.into()),
                "{t}"
            );
        }
        assert!(Warning::AtNextBoot("ram".into()).waits_for_boot());
        assert!(!Warning::HostNote("x".into()).waits_for_boot());
    }

    #[test]
    fn the_schema_is_a_string() {
        let schema = schemars::schema_for!(Vec<Warning>);
        let v = serde_json::to_value(&schema).expect("schema serialises");
        assert_eq!(v["items"]["type"], "string", "{v}");
    }
}
