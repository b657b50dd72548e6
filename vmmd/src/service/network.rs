//! vmmd's side of the virtual switch on this host: naming this data root's ports. Which ports
//! a record has is [`super::convert::ports`]'s (pure); the switch makes them
//! ([`hull_vswitch::Switch`], through [`super::seams::Switch`]).

/// Names this vmmd's data root in the aliases of its switch ports (device and inode of the
/// data root, as for spare zoneds), so vmmds on other data roots keep theirs.
pub fn owner_tag(data_root: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(data_root)
        .map(|m| format!("{:x}{:x}", m.dev(), m.ino()))
        .unwrap_or_else(|_| "unknown".into())
}
