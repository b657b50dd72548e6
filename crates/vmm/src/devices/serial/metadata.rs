//! The guest's second UART (COM2, 0x2f8, IRQ 3) as the far end of the metadata agent, as
//! SmartOS's KVM guests have it: the VMM listens on a Unix socket (`--metadata`) and the
//! agent in vmmd connects; bytes the guest writes go to the agent, the agent's bytes go to
//! the guest. It is never a console.
//!
//! The VMM only carries bytes, within bounds: what the guest writes while no agent is
//! connected waits ([`TX_MAX`], then it is dropped, as a UART without flow control drops
//! it), so a guest that talks during a vmmd restart is answered when the agent is back; what
//! the agent sends is fed into the 64-byte receive FIFO as the guest drains it (each guest
//! read of the UART tops it up), so tens of KiB of user-data arrive at the guest's pace; and
//! the VMM stops reading the agent's socket while [`RX_MAX`] bytes wait for the guest.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vm_superio::Serial as Uart;
use vm_superio::serial::NoEvents;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, lock};
use crate::devices::IrqTrigger;

pub const COM2_BASE: u64 = 0x2f8;
pub const COM2_LEN: u64 = 8;
pub const COM2_IRQ: u32 = 3;
/// Guest bytes kept while no agent listens.
pub const TX_MAX: usize = 64 << 10;
/// Agent bytes read ahead of the guest.
pub const RX_MAX: usize = 256 << 10;

/// The agent's connection, shared by the UART's writer (vCPU threads) and the event loop.
pub type Agent = Arc<Mutex<Option<UnixStream>>>;

/// Where the guest's bytes go: the agent, or a bounded queue until there is one.
#[derive(Debug)]
pub struct ToAgent {
    agent: Agent,
    pending: VecDeque<u8>,
}

impl ToAgent {
    /// Sends what waits to the agent, as much as its socket takes now; an agent that has
    /// gone is forgotten.
    pub fn flush_pending(&mut self) {
        let mut agent = lock(&self.agent);
        let Some(stream) = agent.as_mut() else {
            return;
        };
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            match stream.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    *agent = None;
                    break;
                }
            }
        }
    }
}

impl Write for ToAgent {
    /// Protocol requests are lines: bytes go to the agent at a newline (or once 1 KiB
    /// waits), one write(2) per request rather than one per byte the guest puts in the UART.
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = TX_MAX.saturating_sub(self.pending.len());
        self.pending.extend(&data[..data.len().min(room)]);
        if data.contains(&b'\n') || self.pending.len() >= 1024 {
            self.flush_pending();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// COM2 on the port bus.
pub struct MetadataPort {
    uart: Uart<IrqTrigger, NoEvents, ToAgent>,
    /// Agent bytes not yet in the FIFO.
    rx: VecDeque<u8>,
    /// The event loop stopped reading the agent (rx full); `resume` tells it to go on.
    paused: bool,
    resume: Arc<EventFd>,
}

impl std::fmt::Debug for MetadataPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataPort")
            .field("rx", &self.rx.len())
            .field("paused", &self.paused)
            .finish()
    }
}

impl MetadataPort {
    pub fn new(irq: IrqTrigger, agent: Agent, resume: Arc<EventFd>) -> MetadataPort {
        let out = ToAgent {
            agent,
            pending: VecDeque::new(),
        };
        MetadataPort {
            uart: Uart::new(irq, out),
            rx: VecDeque::new(),
            paused: false,
            resume,
        }
    }

    /// Takes bytes from the agent; false when no more should be read until `resume` fires.
    pub fn from_agent(&mut self, data: &[u8]) -> bool {
        self.rx.extend(data);
        self.top_up();
        self.paused = self.rx.len() >= RX_MAX;
        !self.paused
    }

    /// How many more agent bytes may be read now.
    pub fn room(&self) -> usize {
        RX_MAX.saturating_sub(self.rx.len())
    }

    /// A new agent connected: what the guest wrote meanwhile goes to it.
    pub fn agent_connected(&mut self) {
        self.paused = false;
        self.uart.writer_mut().flush_pending();
    }

    /// Moves waiting agent bytes into the receive FIFO, as far as it has room.
    fn top_up(&mut self) {
        while !self.rx.is_empty() && self.uart.fifo_capacity() > 0 {
            let (a, _) = self.rx.as_slices();
            let n = a.len().min(self.uart.fifo_capacity());
            match self.uart.enqueue_raw_bytes(&a[..n]) {
                Ok(done) if done > 0 => {
                    self.rx.drain(..done);
                }
                _ => break,
            }
        }
        if self.paused && self.rx.len() < RX_MAX / 2 {
            self.paused = false;
            let _ = self.resume.write(1);
        }
    }
}

impl BusDevice for MetadataPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
        self.top_up();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            let _ = self.uart.write(off, *v);
        }
    }
}

/// Reads what the agent sent into the port; false when the agent has gone.
pub fn read_agent(port: &Mutex<MetadataPort>, stream: &mut UnixStream) -> ReadOutcome {
    let mut buf = [0u8; 4096];
    let room = lock(port).room().min(buf.len());
    if room == 0 {
        return ReadOutcome::Paused;
    }
    match stream.read(&mut buf[..room]) {
        Ok(0) => ReadOutcome::Gone,
        Ok(n) => match lock(port).from_agent(&buf[..n]) {
            true => ReadOutcome::More,
            false => ReadOutcome::Paused,
        },
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            ReadOutcome::More
        }
        Err(_) => ReadOutcome::Gone,
    }
}

/// What [`read_agent`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Keep reading.
    More,
    /// Stop reading until the port's resume event.
    Paused,
    /// The agent closed its end.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> (MetadataPort, Agent, Arc<EventFd>) {
        let agent: Agent = Arc::new(Mutex::new(None));
        let resume = Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let irq = IrqTrigger::new().expect("irq");
        (
            MetadataPort::new(irq, agent.clone(), resume.clone()),
            agent,
            resume,
        )
    }

    fn guest_reads(p: &mut MetadataPort, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            let mut lsr = [0u8];
            p.read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut b = [0u8];
            p.read(0, &mut b);
            out.push(b[0]);
        }
        out
    }

    #[test]
    fn guest_bytes_wait_for_an_agent_and_then_reach_it() {
        let (mut p, agent, _) = port();
        for b in b"NEGOTIATE V2\n" {
            p.write(0, &[*b]);
        }
        let (mine, theirs) = UnixStream::pair().expect("pair");
        theirs.set_nonblocking(true).expect("nonblocking");
        *lock(&agent) = Some(theirs);
        p.agent_connected();
        let mut got = vec![0u8; 13];
        let mut mine = mine;
        mine.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"NEGOTIATE V2\n");
    }

    #[test]
    fn agent_bytes_flow_at_the_guests_pace_and_pause_when_too_many_wait() {
        let (mut p, _, resume) = port();
        let reply = vec![b'x'; 1000];
        assert!(p.from_agent(&reply));
        // The FIFO holds 64; every read tops it up, so the guest gets all of it in order.
        let got = guest_reads(&mut p, 2000);
        assert_eq!(got.len(), 1000);
        // Too much waiting (beyond what the FIFO took) pauses the reader until the guest
        // drains half of it.
        assert!(!p.from_agent(&vec![b'y'; RX_MAX + 64]));
        assert_eq!(p.room(), 0);
        let _ = guest_reads(&mut p, RX_MAX / 2 + 100);
        assert_eq!(resume.read().expect("resumed"), 1);
        assert!(p.room() > 0);
    }

    #[test]
    fn without_an_agent_the_guest_loses_only_what_is_past_the_bound() {
        let (mut p, agent, _) = port();
        for _ in 0..TX_MAX + 10 {
            p.write(0, b"z");
        }
        let (mut mine, theirs) = UnixStream::pair().expect("pair");
        theirs.set_nonblocking(true).expect("nonblocking");
        *lock(&agent) = Some(theirs);
        p.agent_connected();
        mine.set_nonblocking(true).expect("nonblocking");
        let mut all = Vec::new();
        let _ = mine.read_to_end(&mut all);
        assert_eq!(all.len(), TX_MAX);
    }
}
