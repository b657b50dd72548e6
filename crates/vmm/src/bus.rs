//! Port I/O and MMIO dispatch: maps a guest address to the device that owns it. vCPU threads
//! call in here on every I/O exit; accesses nobody owns read as all-ones and are dropped.

use std::sync::{Arc, Mutex, MutexGuard};

/// A device on a bus. `offset` is relative to the device's base; `data` is what the guest
/// read or wrote (1, 2, 4 or 8 bytes, untrusted).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices would share addresses.
    #[error("device range {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
    /// Zero-length or wrapping range.
    #[error("device range {base:#x}+{len:#x} is empty or wraps")]
    BadRange { base: u64, len: u64 },
}

/// Shared handle to a device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Locks a device even if a previous holder panicked: device state stays usable, and a
/// panic in one device must not take the whole VM down with a second panic.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
struct Entry {
    base: u64,
    len: u64,
    dev: SharedDevice,
}

/// An address space of devices, sorted by base.
#[derive(Clone, Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<(u64, u64)> = self.entries.iter().map(|e| (e.base, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Bus::default()
    }

    /// Adds `dev` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.push(Entry { base, len, dev });
        self.entries.sort_by_key(|e| e.base);
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let idx = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let e = self.entries.get(idx)?;
        let off = addr - e.base;
        (off.checked_add(size as u64)? <= e.len).then_some((e, off))
    }

    /// Reads from the device at `addr`; returns false (and fills all-ones) if none.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                lock(&e.dev).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; returns false if none.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                lock(&e.dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        last: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Rec {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let a = Arc::new(Mutex::new(Rec::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        assert!(bus.insert(0x3fc, 8, a.clone()).is_err());
        assert!(bus.insert(0x100, 0, a.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, a.clone()).is_err());
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d[0], 5);
        assert!(!bus.read(0x400, &mut d));
        assert_eq!(d[0], 0xff);
        // An access straddling the end of the device is not the device's.
        let mut d4 = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut d4));
        assert!(bus.write(0x3f8, &[7]));
        assert_eq!(lock(&a).last, vec![(0, vec![7])]);
    }
}
