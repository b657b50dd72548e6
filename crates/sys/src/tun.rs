//! TAP devices for microVM ports: vswitch makes a persistent TAP per NIC and attaches it to
//! its bridge, and zoned opens it when it boots the VMM, whose zone never holds
//! /dev/net/tun: the VMM gets the open descriptor and never opens a network device.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
const TUNSETPERSIST: libc::Ioctl = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// Opens the TAP `name` (no packet information header; a virtio-net header on every frame,
/// so the VMM can pass its guest's checksum and segmentation offloads through), creating it
/// when it does not exist. The flags are the opener's: the last one to attach decides.
/// Needs CAP_NET_ADMIN.
pub fn open(name: &str) -> std::io::Result<OwnedFd> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes), mirrored by `IfReq`, which lives
    // across the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor comes from the File, whose ownership moves here.
    Ok(unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(tun)) })
}

/// Makes the TAP behind `fd` outlive its last descriptor (or not).
pub fn set_persist(fd: &OwnedFd, persist: bool) -> std::io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(persist)) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the persistent TAP `name` (no error if it exists).
pub fn create_persistent(name: &str) -> std::io::Result<()> {
    set_persist(&open(name)?, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_and_bad_names() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        for bad in ["", "a-name-far-too-long", "a\0b"] {
            assert!(open(bad).is_err(), "{bad:?}");
        }
    }
}
