//! virtio-net on a TAP fd (or any fd that keeps frame boundaries, e.g. a datagram socket in
//! tests). Offloads are off: the TAP carries plain Ethernet frames without a vnet header, and
//! the 12-byte virtio-net header is stripped on TX and zeroed on RX. TX runs on the notifying
//! vCPU; RX runs when the event loop sees the fd readable or the guest adds RX buffers.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub mod dhcp;

use super::{
    ChainError, Desc, TYPE_NET, VirtioDevice, add_used, collect_chain, read_chain,
    read_config_bytes,
};
use crate::memory::GuestMemory;
use crate::stats::DeviceStats;

const QUEUE_SIZE: u16 = 256;
/// DHCP answers waiting for the guest's receive buffers, at most.
const MAX_INJECTED: usize = 8;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// virtio_net_hdr_v1 (with num_buffers), what VIRTIO_F_VERSION_1 mandates.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame we move: 64 KiB of payload plus Ethernet and VLAN headers.
const MAX_FRAME: usize = 65_562;
const F_MAC: u64 = 1 << 5;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Errors from opening a network backend.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The passed fd is not open.
    #[error("fd {0} passed with --tap-fd is not open")]
    BadFd(RawFd, #[source] std::io::Error),
    /// /dev/net/tun could not be opened or the TAP not attached.
    #[error("cannot open TAP device {0:?}")]
    Tap(String, #[source] std::io::Error),
    /// The TAP name is too long for the kernel.
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    TapName(String),
}

/// A frame pipe to the host side.
pub trait FrameIo: Send {
    /// Reads one frame; WouldBlock when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// The fd the event loop waits on.
    fn raw_fd(&self) -> RawFd;
}

/// A non-blocking fd used frame by frame.
#[derive(Debug)]
pub struct Tap {
    file: File,
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL take and return plain ints.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Takes ownership of an fd passed in by the parent (vmmd or a test).
    pub fn from_passed_fd(fd: RawFd) -> Result<Self, NetError> {
        // SAFETY: F_GETFD only inspects the descriptor table entry.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(NetError::BadFd(fd, std::io::Error::last_os_error()));
        }
        // SAFETY: the fd is open (checked above) and was handed to this process for the
        // device to own; nothing else in the VMM uses it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        set_nonblocking(owned.as_raw_fd()).map_err(|e| NetError::BadFd(fd, e))?;
        Ok(Tap {
            file: File::from(owned),
        })
    }

    /// Opens (or creates) the TAP `name` without packet info or vnet header.
    pub fn open_named(name: &str) -> Result<Self, NetError> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(NetError::TapName(name.to_owned()));
        }
        let err = |e| NetError::Tap(name.to_owned(), e);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(err)?;
        // struct ifreq: 16 bytes of name, then the flags short in the union.
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq; `ifr` is 40 bytes, the size of
        // ifreq on x86-64, and lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
        if rc < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        set_nonblocking(file.as_raw_fd()).map_err(err)?;
        Ok(Tap { file })
    }
}

impl FrameIo for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.file.write(frame).map(|_| ())
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The net device.
pub struct Net {
    io: Box<dyn FrameIo>,
    config: [u8; 8],
    pending: Option<Vec<u8>>,
    /// The lease the VMM's DHCP server gives this NIC, if it answers DHCP on it.
    dhcp: Option<hull_vmm_proto::DhcpLease>,
    /// Frames made here for the guest (DHCP answers), delivered before the TAP's.
    injected: std::collections::VecDeque<Vec<u8>>,
    rx_buf: Vec<u8>,
    stats: Arc<DeviceStats>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &&self.config[..6])
            .finish()
    }
}

/// Writes `bytes` across the buffers of `descs` in order; false if they do not fit.
fn scatter(descs: &[Desc], mem: &GuestMemory, mut bytes: &[u8]) -> bool {
    for d in descs {
        if bytes.is_empty() {
            break;
        }
        let n = bytes.len().min(d.len as usize);
        if mem.write_slice(&bytes[..n], GuestAddress(d.addr)).is_err() {
            return false;
        }
        bytes = &bytes[n..];
    }
    bytes.is_empty()
}

impl Net {
    pub fn new(io: Box<dyn FrameIo>, mac: [u8; 6], stats: Arc<DeviceStats>) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        Net {
            io,
            config,
            pending: None,
            dhcp: None,
            injected: std::collections::VecDeque::new(),
            rx_buf: vec![0; MAX_FRAME],
            stats,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.io.raw_fd()
    }

    /// Answers the guest's DHCP on this NIC with `lease` (see [`dhcp`]).
    pub fn with_dhcp(mut self, lease: hull_vmm_proto::DhcpLease) -> Self {
        self.dhcp = Some(lease);
        self
    }

    fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    fn tx_one(&mut self, descs: &[Desc], mem: &GuestMemory) -> Result<(), ChainError> {
        let buf = read_chain(descs, mem)?;
        let frame = buf.get(NET_HDR_LEN..).ok_or(ChainError::Malformed(
            "TX buffer shorter than the virtio-net header",
        ))?;
        if let Some(lease) = &self.dhcp {
            match dhcp::handle(frame, self.mac(), lease) {
                dhcp::Verdict::NotDhcp => {}
                dhcp::Verdict::Answer(reply) => {
                    // A guest that floods DHCP gets a bounded backlog of answers.
                    if let Some(r) = reply.filter(|_| self.injected.len() < MAX_INJECTED) {
                        self.injected.push_back(r);
                    }
                    return Ok(());
                }
            }
        }
        // A full or vanished TAP drops the frame, as a real NIC would.
        if self.io.send(frame).is_ok() {
            DeviceStats::add(&self.stats.written_bytes, frame.len() as u64);
        } else {
            DeviceStats::add(&self.stats.errors, 1);
        }
        Ok(())
    }

    fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let res = collect_chain(chain, mem, (NET_HDR_LEN + MAX_FRAME) as u64)
                .and_then(|d| self.tx_one(&d, mem));
            if res.is_err() {
                DeviceStats::add(&self.stats.errors, 1);
            }
            DeviceStats::add(&self.stats.requests, 1);
            used |= add_used(queue, mem, head, 0);
        }
        used
    }

    /// Moves waiting frames into guest RX buffers until either runs out.
    fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used = false;
        loop {
            if self.pending.is_none() {
                self.pending = self.injected.pop_front();
            }
            if self.pending.is_none() {
                match self.io.recv(&mut self.rx_buf) {
                    Ok(n) => self.pending = Some(self.rx_buf[..n].to_vec()),
                    // WouldBlock, or a broken backend: nothing to deliver now.
                    Err(_) => break,
                }
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let frame = self.pending.take().unwrap_or_default();
            let len = collect_chain(chain, mem, u64::from(u32::MAX))
                .ok()
                .filter(|d| d.iter().all(|x| x.write_only))
                .filter(|d| {
                    let cap: u64 = d.iter().map(|x| u64::from(x.len)).sum();
                    cap >= (NET_HDR_LEN + frame.len()) as u64
                })
                .and_then(|d| {
                    let mut out = vec![0u8; NET_HDR_LEN];
                    out[10] = 1; // num_buffers
                    out.extend_from_slice(&frame);
                    scatter(&d, mem, &out).then_some(out.len() as u32)
                });
            match len {
                Some(_) => DeviceStats::add(&self.stats.read_bytes, frame.len() as u64),
                // The frame is dropped with the bad buffer; the guest gets it back empty.
                None => DeviceStats::add(&self.stats.errors, 1),
            }
            used |= add_used(queue, mem, head, len.unwrap_or(0));
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> bool {
        match (index, queues) {
            (RX_QUEUE, [rx, ..]) => self.process_rx(rx, mem),
            (TX_QUEUE, [rx, tx, ..]) => {
                let used = self.process_tx(tx, mem);
                // Answers made here go to the guest at once.
                match self.injected.is_empty() || !rx.ready() {
                    true => used,
                    false => self.process_rx(rx, mem) | used,
                }
            }
            _ => false,
        }
    }

    fn process_host_event(&mut self, queues: &mut [Queue], mem: &GuestMemory) -> bool {
        match queues.first_mut() {
            Some(rx) if rx.ready() => self.process_rx(rx, mem),
            _ => false,
        }
    }

    fn reset(&mut self) {
        self.pending = None;
        self.injected.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testutil::*;
    use std::os::unix::net::UnixDatagram;

    fn pair() -> (Net, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(a);
        let tap = Tap::from_passed_fd(fd).unwrap();
        let net = Net::new(
            Box::new(tap),
            [2, 0, 0, 0, 0, 1],
            Arc::new(DeviceStats::default()),
        );
        b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        (net, b)
    }

    fn queues(rx: &TestQueue, tx: &TestQueue) -> Vec<Queue> {
        vec![rx.queue(), tx.queue()]
    }

    #[test]
    fn tx_strips_the_header_and_sends_the_frame() {
        let m = mem();
        let rx_m = mem();
        let (mut net, peer) = pair();
        let rx = TestQueue::new(&rx_m);
        let mut tx = TestQueue::new(&m);
        write(&m, 0x8000, &[0u8; NET_HDR_LEN]);
        write(&m, 0x9000, b"frame-part-1|");
        write(&m, 0xa000, b"part-2");
        tx.add_chain(&[
            (0x8000, NET_HDR_LEN as u32, 0),
            (0x9000, 13, 0),
            (0xa000, 6, 0),
        ]);
        let mut qs = queues(&rx, &tx);
        assert!(net.process_queue(TX_QUEUE, &mut qs, &m));
        let mut buf = [0u8; 64];
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"frame-part-1|part-2");
        assert_eq!(tx.used_idx(), 1);
    }

    #[test]
    fn rx_delivers_frames_into_writable_buffers() {
        let m = mem();
        let tx_m = mem();
        let (mut net, peer) = pair();
        let mut rx = TestQueue::new(&m);
        let tx = TestQueue::new(&tx_m);
        peer.send(b"hello-guest").unwrap();
        // No buffers yet: the frame waits.
        let mut qs = queues(&rx, &tx);
        assert!(!net.process_host_event(&mut qs, &m));
        rx.add_chain(&[(0x8000, 8, F_WRITE), (0x9000, 100, F_WRITE)]);
        let mut qs = queues(&rx, &tx);
        assert!(net.process_queue(RX_QUEUE, &mut qs, &m));
        assert_eq!(rx.used(0).1, (NET_HDR_LEN + 11) as u32);
        assert_eq!(read(&m, 0x9000 + 4, 11), b"hello-guest");
        assert_eq!(read(&m, 0x8000, 8), vec![0; 8]);
    }

    #[test]
    fn malformed_rx_and_tx_chains_are_refused() {
        let m = mem();
        let (mut net, peer) = pair();
        // TX with a writable descriptor, TX shorter than the header, TX out of bounds.
        let mut tx = TestQueue::new(&m);
        tx.add_chain(&[(0x8000, 20, F_WRITE)]);
        tx.add_chain(&[(0x8000, 4, 0)]);
        tx.add_chain(&[(0xffff_0000_0000, 64, 0)]);
        let rx = TestQueue::new_at(&m, 0x40000);
        let mut qs = queues(&rx, &tx);
        net.process_queue(TX_QUEUE, &mut qs, &m);
        assert_eq!(tx.used_idx(), 3);
        peer.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert!(peer.recv(&mut buf).is_err(), "nothing may have been sent");

        // RX into a read-only buffer and into one too small: used with length 0.
        peer.send(b"frame-one").unwrap();
        peer.send(b"frame-two").unwrap();
        let m2 = mem();
        let mut rx = TestQueue::new(&m2);
        rx.add_chain(&[(0x8000, 64, 0)]);
        rx.add_chain(&[(0x9000, 8, F_WRITE)]);
        let tx = TestQueue::new_at(&m2, 0x40000);
        let mut qs = queues(&rx, &tx);
        net.process_host_event(&mut qs, &m2);
        assert_eq!(rx.used_idx(), 2);
        assert_eq!(rx.used(0).1, 0);
        assert_eq!(rx.used(1).1, 0);
    }

    #[test]
    fn bursts_wait_for_buffers_and_keep_their_order() {
        let m = mem();
        let tx_m = mem();
        let (mut net, peer) = pair();
        for i in 0..3u8 {
            peer.send(&[b'f', b'0' + i]).unwrap();
        }
        let mut rx = TestQueue::new(&m);
        let tx = TestQueue::new(&tx_m);
        // One buffer: one frame delivered, the rest wait in the socket.
        rx.add_chain(&[(0x8000, 64, F_WRITE)]);
        let mut qs = queues(&rx, &tx);
        assert!(net.process_host_event(&mut qs, &m));
        assert_eq!(rx.used_idx(), 1);
        assert_eq!(read(&m, 0x8000 + NET_HDR_LEN as u64, 2), b"f0");
        // The guest adds two more buffers and kicks RX: the next two frames, in order.
        rx.add_chain(&[(0x9000, 64, F_WRITE)]);
        rx.add_chain(&[(0xa000, 64, F_WRITE)]);
        let mut q = rx.queue();
        q.set_next_avail(1);
        q.set_next_used(1);
        let mut qs = vec![q, tx.queue()];
        assert!(net.process_queue(RX_QUEUE, &mut qs, &m));
        assert_eq!(rx.used_idx(), 3);
        assert_eq!(read(&m, 0x9000 + NET_HDR_LEN as u64, 2), b"f1");
        assert_eq!(read(&m, 0xa000 + NET_HDR_LEN as u64, 2), b"f2");
        // num_buffers is 1 in every header.
        assert_eq!(read(&m, 0xa000 + 10, 2), vec![1, 0]);
    }

    #[test]
    fn bad_fd_and_tap_names_are_errors() {
        assert!(matches!(
            Tap::from_passed_fd(987_654),
            Err(NetError::BadFd(..))
        ));
        assert!(matches!(Tap::open_named(""), Err(NetError::TapName(_))));
        assert!(matches!(
            Tap::open_named("a-name-that-is-too-long"),
            Err(NetError::TapName(_))
        ));
    }
}
