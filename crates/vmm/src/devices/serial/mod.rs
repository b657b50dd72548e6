//! The 8250 UART on 0x3f8 / IRQ 4 (vm-superio) and where its bytes go: stdout, a pty or a
//! Unix socket client. Output is line-buffered so a guest printing byte by byte does not cost
//! one write(2) per byte; input comes from the VM's event loop. A terminal on stdin is put in
//! raw mode for the VM's life ([`terminal`]).

pub mod batch;
pub mod metadata;
pub mod terminal;

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::Serial as Uart;
use vm_superio::serial::NoEvents;

use super::IrqTrigger;
use crate::bus::{BusDevice, lock};

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;
/// Flush early when a line gets this long.
const LINE_MAX: usize = 1024;

/// Where console output goes; `None` drops it (e.g. no socket client attached).
pub type ConsoleTarget = Arc<Mutex<Option<Box<dyn Write + Send>>>>;

/// Console output kept for a Unix socket console: the last [`BACKLOG`] bytes are replayed to
/// each client that attaches, so `vmadm console` shows what the guest printed before.
#[derive(Debug, Default)]
pub struct SocketConsole {
    backlog: std::collections::VecDeque<u8>,
    client: Option<Box<dyn WriteDebug>>,
}

/// How much output a socket console keeps for late clients.
pub const BACKLOG: usize = 64 << 10;

/// A writer that can be shown in debug output.
pub trait WriteDebug: Write + Send + std::fmt::Debug {}
impl<T: Write + Send + std::fmt::Debug> WriteDebug for T {}

impl SocketConsole {
    /// Attaches a client (replacing any other) and replays the backlog to it.
    pub fn attach(&mut self, mut client: Box<dyn WriteDebug>) {
        let (a, b) = self.backlog.as_slices();
        if client.write_all(a).is_ok() && client.write_all(b).is_ok() {
            self.client = Some(client);
        }
    }

    pub fn detach(&mut self) {
        self.client = None;
    }
}

impl Write for SocketConsole {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.backlog.extend(data);
        let excess = self.backlog.len().saturating_sub(BACKLOG);
        self.backlog.drain(..excess);
        if let Some(c) = self.client.as_mut()
            && c.write_all(data).is_err()
        {
            // A vanished client must not stall the guest.
            self.client = None;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A [`SocketConsole`] shared between the UART (writes) and the event loop (attaches).
#[derive(Debug, Clone, Default)]
pub struct SharedSocketConsole(pub Arc<Mutex<SocketConsole>>);

impl Write for SharedSocketConsole {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Line buffer in front of a [`ConsoleTarget`].
pub struct LineBuffer {
    buf: Vec<u8>,
    target: ConsoleTarget,
}

impl std::fmt::Debug for LineBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineBuffer")
            .field("pending", &self.buf.len())
            .finish()
    }
}

impl LineBuffer {
    pub fn new(target: ConsoleTarget) -> Self {
        LineBuffer {
            buf: Vec::with_capacity(LINE_MAX),
            target,
        }
    }

    fn push_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut t = lock(&self.target);
        if let Some(w) = t.as_mut()
            && (w.write_all(&self.buf).is_err() || w.flush().is_err())
        {
            // A vanished console client must not stall the guest; drop it.
            *t = None;
        }
        self.buf.clear();
    }
}

impl Write for LineBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if data.contains(&b'\n') || self.buf.len() >= LINE_MAX {
            self.push_out();
        }
        Ok(data.len())
    }

    /// The UART flushes after every byte; only a newline, a long line or
    /// [`Serial::flush`] push bytes out.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The UART on the port bus.
pub struct Serial {
    uart: Uart<IrqTrigger, NoEvents, LineBuffer>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Serial")
    }
}

impl Serial {
    pub fn new(irq: IrqTrigger, target: ConsoleTarget) -> Self {
        Serial {
            uart: Uart::new(irq, LineBuffer::new(target)),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// Pushes out a partial line (at VM exit).
    pub fn flush(&mut self) {
        self.uart.writer_mut().push_out();
    }

    pub fn irq_fd(&self) -> &vmm_sys_util::eventfd::EventFd {
        &self.uart.interrupt_evt().0
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // The only failure is raising the IRQ; the byte itself was handled.
            let _ = self.uart.write(off, *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default, Debug)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_is_line_buffered_and_flushable() {
        let sink = Shared::default();
        let target: ConsoleTarget = Arc::new(Mutex::new(Some(Box::new(sink.clone()))));
        let mut s = Serial::new(IrqTrigger::new().unwrap(), target);
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert!(lock(&sink.0).is_empty());
        s.write(0, b"\n");
        assert_eq!(&*lock(&sink.0), b"hi\n");
        s.write(0, b"x");
        s.flush();
        assert_eq!(&*lock(&sink.0), b"hi\nx");
    }

    #[test]
    fn socket_console_replays_its_backlog_to_late_clients() {
        let console = SharedSocketConsole::default();
        let target: ConsoleTarget = Arc::new(Mutex::new(Some(Box::new(console.clone()))));
        let mut s = Serial::new(IrqTrigger::new().unwrap(), target);
        for b in b"early line\n" {
            s.write(0, &[*b]);
        }
        let late = Shared::default();
        lock(&console.0).attach(Box::new(late.clone()));
        assert_eq!(&*lock(&late.0), b"early line\n");
        s.write(0, b"x");
        s.write(0, b"\n");
        assert_eq!(&*lock(&late.0), b"early line\nx\n");
        // The backlog is bounded.
        let mut big = SocketConsole::default();
        big.write_all(&vec![b'a'; BACKLOG + 10]).unwrap();
        assert_eq!(big.backlog.len(), BACKLOG);
    }

    #[test]
    fn input_reaches_the_receive_register() {
        let target: ConsoleTarget = Arc::new(Mutex::new(None));
        let mut s = Serial::new(IrqTrigger::new().unwrap(), target);
        assert_eq!(s.enqueue(b"a"), 1);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        s.read(0, &mut rbr);
        assert_eq!(rbr[0], b'a');
        // Huge offsets from a confused guest are ignored, not truncated onto a register.
        s.write(0x1_0000_0000, &[1]);
    }
}
