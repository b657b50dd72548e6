//! The i8042 keyboard controller, only as far as a guest uses it to reset the machine (command
//! 0xfe on port 0x64). A reset ends the VM: hull restarts guests from the outside.

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;

/// First port of the controller (data); the command port is 4 above it.
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;

/// Something that wants to know the guest asked for a reset.
pub trait ResetSink: Send {
    fn reset(&self);
}

struct Sink<S>(S);

impl<S: ResetSink> Trigger for Sink<S> {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.reset();
        Ok(())
    }
}

/// The controller on the port bus.
pub struct I8042<S: ResetSink> {
    inner: I8042Device<Sink<S>>,
}

impl<S: ResetSink> std::fmt::Debug for I8042<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("I8042")
    }
}

impl<S: ResetSink> I8042<S> {
    pub fn new(sink: S) -> Self {
        I8042 {
            inner: I8042Device::new(Sink(sink)),
        }
    }
}

impl<S: ResetSink> BusDevice for I8042<S> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.inner.read(offset as u8);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(v) = data.first() {
            let Ok(()) = self.inner.write(offset as u8, *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Count(Arc<AtomicU32>);
    impl ResetSink for Count {
        fn reset(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn only_command_0xfe_on_0x64_resets() {
        let n = Arc::new(AtomicU32::new(0));
        let mut d = I8042::new(Count(n.clone()));
        d.write(0, &[0xfe]);
        d.write(4, &[0xd1]);
        assert_eq!(n.load(Ordering::SeqCst), 0);
        d.write(4, &[0xfe]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let mut b = [0xffu8; 1];
        d.read(4, &mut b);
        assert_eq!(b[0], 0);
    }
}
