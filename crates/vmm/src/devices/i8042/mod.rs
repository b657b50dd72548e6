//! The i8042 keyboard controller, as much as a guest needs for two things: resetting the
//! machine (command 0xfe on port 0x64, which ends the VM) and receiving Ctrl-Alt-Del, the
//! graceful stop for guests without ACPI. The controller answers Linux's probe (self test,
//! command byte, interface test) at once and reports no AUX port, so nothing waits for a
//! timeout; keyboard commands are acknowledged. Scancodes are set 2, untranslated.

use std::collections::VecDeque;

use crate::bus::BusDevice;
use crate::devices::IrqTrigger;
use vm_superio::Trigger;

/// First port of the controller (data); the command/status port is 4 above it.
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;
pub const I8042_IRQ: u32 = 1;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const SR_OBF: u8 = 0x01;
const SR_SYS: u8 = 0x04;
const SR_CMD: u8 = 0x08;
const SR_UNLOCKED: u8 = 0x10;

const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;

const ACK: u8 = 0xfa;
/// Ctrl, Alt, Del make codes then their break codes.
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
/// Keeps a guest that never reads from growing the buffer.
const MAX_QUEUED: usize = 64;

/// Something that wants to know the guest asked for a reset.
pub trait ResetSink: Send {
    fn reset(&self);
}

/// Something that can type Ctrl-Alt-Del.
pub trait Keyboard: Send {
    fn ctrl_alt_del(&mut self);
}

impl<S: ResetSink> Keyboard for I8042<S> {
    fn ctrl_alt_del(&mut self) {
        I8042::ctrl_alt_del(self);
    }
}

/// The controller on the port bus.
pub struct I8042<S: ResetSink> {
    sink: S,
    irq: Option<IrqTrigger>,
    ctr: u8,
    output_port: u8,
    /// Controller command waiting for its data byte.
    pending: Option<u8>,
    last_was_command: bool,
    queue: VecDeque<u8>,
}

impl<S: ResetSink> std::fmt::Debug for I8042<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("ctr", &self.ctr)
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl<S: ResetSink> I8042<S> {
    /// `irq` raises IRQ 1 when a byte is waiting (none: polling only).
    pub fn new(sink: S, irq: Option<IrqTrigger>) -> Self {
        I8042 {
            sink,
            irq,
            ctr: CTR_KBD_INT | CTR_SYS,
            output_port: 0x01,
            pending: None,
            last_was_command: false,
            queue: VecDeque::new(),
        }
    }

    fn interrupt(&self) {
        if self.ctr & CTR_KBD_INT != 0
            && let Some(irq) = &self.irq
        {
            // A full eventfd counter only means the interrupt is already pending.
            let _ = irq.trigger();
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let was_empty = self.queue.is_empty();
        for b in bytes {
            if self.queue.len() < MAX_QUEUED {
                self.queue.push_back(*b);
            }
        }
        if was_empty && !self.queue.is_empty() {
            self.interrupt();
        }
    }

    /// Types Ctrl-Alt-Del on the keyboard (graceful stop for guests without ACPI).
    pub fn ctrl_alt_del(&mut self) {
        if self.ctr & CTR_KBD_DISABLE == 0 {
            self.push(&CTRL_ALT_DEL);
        }
    }

    fn status(&self) -> u8 {
        let mut s = SR_UNLOCKED;
        if !self.queue.is_empty() {
            s |= SR_OBF;
        }
        if self.ctr & CTR_SYS != 0 {
            s |= SR_SYS;
        }
        if self.last_was_command {
            s |= SR_CMD;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let v = self.queue.pop_front().unwrap_or(0);
        if !self.queue.is_empty() {
            // One byte per interrupt: signal the next one.
            self.interrupt();
        }
        v
    }

    fn command(&mut self, cmd: u8) {
        self.pending = None;
        match cmd {
            0x20 => self.push(&[self.ctr]),
            0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => self.pending = Some(cmd),
            0xa7 => self.ctr |= CTR_AUX_DISABLE,
            0xa8 => self.ctr &= !CTR_AUX_DISABLE,
            // AUX interface test: a non-zero answer means "no AUX port".
            0xa9 => self.push(&[0x01]),
            0xaa => {
                self.ctr |= CTR_SYS;
                self.push(&[0x55]);
            }
            0xab => self.push(&[0x00]),
            0xad => self.ctr |= CTR_KBD_DISABLE,
            0xae => self.ctr &= !CTR_KBD_DISABLE,
            0xd0 => self.push(&[self.output_port]),
            // Pulse output lines: bit 0 low is the CPU reset line (0xfe is the usual one).
            0xf0..=0xff if cmd & 1 == 0 => self.sink.reset(),
            _ => {}
        }
    }

    fn data(&mut self, v: u8) {
        match self.pending.take() {
            Some(0x60) => self.ctr = v,
            Some(0xd1) => {
                self.output_port = v;
                if v & 1 == 0 {
                    self.sink.reset();
                }
            }
            Some(0xd2) => self.push(&[v]),
            // AUX loopback: answering something else than the byte says "no AUX" at once.
            Some(0xd3) => self.push(&[0x00]),
            // Writes to a mouse we do not have are dropped.
            Some(_) => {}
            None => self.keyboard_command(v),
        }
    }

    fn keyboard_command(&mut self, v: u8) {
        match v {
            // Identify: an MF2 keyboard.
            0xf2 => self.push(&[ACK, 0xab, 0x83]),
            0xee => self.push(&[0xee]),
            // Reset: ACK and self-test passed.
            0xff => self.push(&[ACK, 0xaa]),
            _ => self.push(&[ACK]),
        }
    }
}

impl<S: ResetSink> BusDevice for I8042<S> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let v = match offset {
            DATA => self.read_data(),
            COMMAND => self.status(),
            _ => 0,
        };
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(v) = data.first().copied() else {
            return;
        };
        match offset {
            DATA => {
                self.last_was_command = false;
                self.data(v);
            }
            COMMAND => {
                self.last_was_command = true;
                self.command(v);
            }
            _ => {}
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

    fn dev() -> (I8042<Count>, Arc<AtomicU32>) {
        let n = Arc::new(AtomicU32::new(0));
        (I8042::new(Count(n.clone()), None), n)
    }

    fn rd(d: &mut I8042<Count>, off: u64) -> u8 {
        let mut b = [0u8; 1];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn only_reset_commands_reset() {
        let (mut d, n) = dev();
        d.write(DATA, &[0xfe]);
        d.write(COMMAND, &[0xd1]);
        d.write(DATA, &[0x03]);
        assert_eq!(n.load(Ordering::SeqCst), 0);
        d.write(COMMAND, &[0xfe]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        d.write(COMMAND, &[0xd1]);
        d.write(DATA, &[0x02]);
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn answers_linux_probe_without_timeouts() {
        let (mut d, _) = dev();
        d.write(COMMAND, &[0xaa]);
        assert_ne!(rd(&mut d, COMMAND) & SR_OBF, 0);
        assert_eq!(rd(&mut d, DATA), 0x55);
        assert_eq!(rd(&mut d, COMMAND) & SR_OBF, 0);
        d.write(COMMAND, &[0x20]);
        let ctr = rd(&mut d, DATA);
        assert_eq!(ctr, CTR_KBD_INT | CTR_SYS);
        d.write(COMMAND, &[0x60]);
        d.write(DATA, &[ctr | CTR_KBD_DISABLE]);
        d.write(COMMAND, &[0x20]);
        assert_eq!(rd(&mut d, DATA), ctr | CTR_KBD_DISABLE);
        // AUX loopback does not echo: no AUX port.
        d.write(COMMAND, &[0xd3]);
        d.write(DATA, &[0x5a]);
        assert_ne!(rd(&mut d, DATA), 0x5a);
        d.write(COMMAND, &[0xa9]);
        assert_eq!(rd(&mut d, DATA), 0x01);
        // Keyboard identify.
        d.write(DATA, &[0xf2]);
        assert_eq!(
            [rd(&mut d, DATA), rd(&mut d, DATA), rd(&mut d, DATA)],
            [ACK, 0xab, 0x83]
        );
    }

    #[test]
    fn ctrl_alt_del_is_typed_unless_the_keyboard_is_disabled() {
        let (mut d, n) = dev();
        d.ctrl_alt_del();
        let typed: Vec<u8> = (0..CTRL_ALT_DEL.len()).map(|_| rd(&mut d, DATA)).collect();
        assert_eq!(typed, CTRL_ALT_DEL);
        assert_eq!(n.load(Ordering::SeqCst), 0);
        d.write(COMMAND, &[0xad]);
        d.ctrl_alt_del();
        assert_eq!(rd(&mut d, COMMAND) & SR_OBF, 0);
    }

    #[test]
    fn queue_is_bounded_and_odd_accesses_are_harmless() {
        let (mut d, _) = dev();
        for _ in 0..1000 {
            d.write(DATA, &[0x00]);
        }
        assert_eq!(d.queue.len(), MAX_QUEUED);
        d.write(2, &[1]);
        d.write(DATA, &[]);
        let mut wide = [0xffu8; 4];
        d.read(COMMAND, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
    }

    #[test]
    fn bytes_raise_irq_1() {
        let n = Arc::new(AtomicU32::new(0));
        let irq = IrqTrigger::new().unwrap();
        let fd = irq.0.try_clone().unwrap();
        let mut d = I8042::new(Count(n), Some(irq));
        d.ctrl_alt_del();
        assert_eq!(fd.read().unwrap(), 1);
        let _ = rd(&mut d, DATA);
        // Another byte waiting: another interrupt.
        assert_eq!(fd.read().unwrap(), 1);
    }
}
