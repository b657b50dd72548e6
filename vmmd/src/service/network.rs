//! vmmd's side of the virtual switch on this host: making a microVM's TAPs and naming this
//! data root's ports. Which ports a record has is [`super::convert::ports`]'s (pure); this
//! module makes them. Blocking calls: callers use spawn_blocking.

use hull_vswitch::ZoneNic;

/// Why a microVM's TAPs could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The kernel refused the TAP device.
    #[error("cannot create the TAP {name}")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The switch could not attach it.
    #[error(transparent)]
    Attach(#[from] hull_vswitch::VswitchError),
}

/// Makes the persistent TAP of each of a microVM's `ports` (in order) and attaches it to its
/// bridge, guarded and capped; on an error nothing of the guest's stays.
pub fn make_taps(
    switch: &hull_vswitch::Switch,
    uuid: &str,
    ports: &[ZoneNic],
) -> Result<(), TapError> {
    let made = ports.iter().try_for_each(|nic| {
        let name = nic.port.tap();
        zoned::tun::create_persistent(&name).map_err(|source| TapError::Create {
            name: name.clone(),
            source,
        })?;
        Ok(switch.attach_tap(&nic.port)?)
    });
    if made.is_err() {
        let _ = switch.remove_ports(uuid);
    }
    made
}

/// Names this vmmd's data root in the aliases of its switch ports (device and inode of the
/// data root, as for spare zoneds), so vmmds on other data roots keep theirs.
pub fn owner_tag(data_root: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(data_root)
        .map(|m| format!("{:x}{:x}", m.dev(), m.ino()))
        .unwrap_or_else(|_| "unknown".into())
}
