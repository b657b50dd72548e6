//! Little-endian fields out of on-disk structures. A field that is not wholly inside its
//! buffer reads as 0: callers size their buffers to the structure, so this only ever turns a
//! would-be panic into a value the structure's own checks refuse.

pub(crate) fn le16(buf: &[u8], off: usize) -> u16 {
    buf.get(off..off.wrapping_add(2))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

pub(crate) fn le32(buf: &[u8], off: usize) -> u32 {
    buf.get(off..off.wrapping_add(4))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

pub(crate) fn le64(buf: &[u8], off: usize) -> u64 {
    buf.get(off..off.wrapping_add(8))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

pub(crate) fn byte(buf: &[u8], off: usize) -> u8 {
    buf.get(off).copied().unwrap_or(0)
}
