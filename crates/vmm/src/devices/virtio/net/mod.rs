//! virtio-net on a TAP fd (or any fd that keeps frame boundaries, e.g. a datagram socket in
//! tests). A TAP opened with a vnet header (`IFF_VNET_HDR`, as vswitch's TAPs are) carries the
//! guest's 12-byte virtio-net header both ways, so checksum and segmentation offloads are
//! offered (CSUM, HOST_TSO4/6/ECN for what the guest sends; GUEST_CSUM, GUEST_TSO4/6/ECN for
//! what it receives) and the host kernel is told which the guest took (`TUNSETOFFLOAD`): a TCP
//! stream then crosses the device in frames of up to 64 KiB instead of 1.5 KiB. Without one
//! the header is stripped on TX and zeroed on RX, and no offload is offered. Mergeable
//! receive buffers (MRG_RXBUF) are offered either way: a frame is spread over as many of the
//! guest's buffers as it needs, and waits until enough are there. The header's fields from
//! the guest go to the host kernel's tun driver, which checks them as it checks any
//! process's. TX runs on the notifying vCPU; RX runs when the event loop sees the fd readable
//! or the guest adds RX buffers.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub mod dhcp;
pub mod vhost;

use super::{
    ChainError, Desc, TYPE_NET, VirtioDevice, add_used, collect_chain, guest_iovecs, read_chain,
    read_config_bytes, skip_iovecs,
};
use crate::memory::GuestMemory;
use crate::stats::DeviceStats;

const QUEUE_SIZE: u16 = 256;
/// DHCP answers waiting for the guest's receive buffers, at most.
const MAX_INJECTED: usize = 8;
const RX_QUEUE: usize = 0;
/// The transmit queue, whose notifies the I/O thread takes.
pub const TX_QUEUE: usize = 1;
/// virtio_net_hdr_v1 (with num_buffers), what VIRTIO_F_VERSION_1 mandates.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame we move: 64 KiB of payload plus Ethernet and VLAN headers.
const MAX_FRAME: usize = 65_562;
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_GUEST_ECN: u64 = 1 << 9;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_HOST_ECN: u64 = 1 << 13;
const F_MRG_RXBUF: u64 = 1 << 15;
/// What a TAP with a vnet header lets the device offer.
const OFFLOADS: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// Sets what the host may hand the TAP's reader unsegmented or without checksums.
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: u32 = 1;
const TUN_F_TSO4: u32 = 2;
const TUN_F_TSO6: u32 = 4;
const TUN_F_TSO_ECN: u32 = 8;

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
    /// Writes one frame given as buffers in guest memory, with one `writev` on
    /// [`Self::raw_fd`]: the kernel reads them (and answers EFAULT for a bad one), no copy
    /// is made here.
    fn send_iovecs(&mut self, iovs: &[libc::iovec]) -> std::io::Result<()> {
        let count = libc::c_int::try_from(iovs.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: writev only reads the iovec array (a live slice) and the memory it points
        // to, which the kernel checks; nothing in this process is written.
        if unsafe { libc::writev(self.raw_fd(), iovs.as_ptr(), count) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    /// The fd the event loop waits on.
    fn raw_fd(&self) -> RawFd;
    /// Whether frames both ways carry the 12-byte virtio-net header.
    fn vnet_hdr(&self) -> bool {
        false
    }
    /// Tells the host which offloads (`TUN_F_*`) the guest takes.
    fn set_offload(&self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// A non-blocking fd used frame by frame.
#[derive(Debug)]
pub struct Tap {
    file: File,
    vnet_hdr: bool,
}

/// Whether the TAP behind `fd` was attached with a vnet header; if so its size is set to the
/// 12 bytes of virtio 1's header. Any other fd (a socket in tests) has none.
fn setup_vnet_hdr(fd: RawFd) -> bool {
    let mut ifr = [0u8; 40];
    // SAFETY: TUNGETIFF writes a struct ifreq (40 bytes on x86-64) into `ifr`; on an fd that
    // is not a TAP it fails and writes nothing.
    if unsafe { libc::ioctl(fd, TUNGETIFF, ifr.as_mut_ptr()) } != 0 {
        return false;
    }
    let flags = libc::c_short::from_ne_bytes([ifr[16], ifr[17]]);
    if flags & IFF_VNET_HDR == 0 {
        return false;
    }
    let size = NET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer, a local that outlives the call.
    unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ, &size) == 0 }
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
        let vnet_hdr = setup_vnet_hdr(owned.as_raw_fd());
        Ok(Tap {
            file: File::from(owned),
            vnet_hdr,
        })
    }

    /// Opens (or creates) the TAP `name` without packet info, with a vnet header.
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
        ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq; `ifr` is 40 bytes, the size of
        // ifreq on x86-64, and lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
        if rc < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        set_nonblocking(file.as_raw_fd()).map_err(err)?;
        let vnet_hdr = setup_vnet_hdr(file.as_raw_fd());
        Ok(Tap { file, vnet_hdr })
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

    fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        if !self.vnet_hdr {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its flags as the integer argument.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The tun offloads matching the features the guest took: what the host may hand it
/// without checksums or unsegmented.
fn tun_offloads(acked: u64) -> u32 {
    if acked & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = TUN_F_CSUM;
    for (bit, tun) in [
        (F_GUEST_TSO4, TUN_F_TSO4),
        (F_GUEST_TSO6, TUN_F_TSO6),
        (F_GUEST_ECN, TUN_F_TSO_ECN),
    ] {
        if acked & bit != 0 {
            f |= tun;
        }
    }
    f
}

/// The net device.
pub struct Net {
    io: Box<dyn FrameIo>,
    config: [u8; 8],
    /// The features the driver took (0 until DRIVER_OK).
    acked: u64,
    /// The length of the packet for the guest waiting in `rx_buf` (virtio-net header first)
    /// for buffers.
    pending: Option<usize>,
    /// The lease the VMM's DHCP server gives this NIC, if it answers DHCP on it.
    dhcp: Option<hull_vmm_proto::DhcpLease>,
    /// Frames made here for the guest (DHCP answers), delivered before the TAP's.
    injected: std::collections::VecDeque<Vec<u8>>,
    rx_buf: Vec<u8>,
    stats: Arc<DeviceStats>,
    /// The kernel's vhost-net, when it moves this NIC's frames instead of the VMM.
    vhost: Option<vhost::VhostNet>,
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
            acked: 0,
            pending: None,
            dhcp: None,
            injected: std::collections::VecDeque::new(),
            rx_buf: vec![0; NET_HDR_LEN + MAX_FRAME],
            stats,
            vhost: None,
        }
    }

    /// Whether vhost-net can move this NIC's frames: the TAP carries the guest's virtio-net
    /// header (vhost hands it over as it is) and no frame needs the VMM (DHCP answered here
    /// must see the guest's requests, which vhost would send past it).
    pub fn vhost_capable(&self) -> bool {
        self.io.vnet_hdr() && self.dhcp.is_none()
    }

    /// Lets the kernel's vhost-net move this NIC's frames from the driver's DRIVER_OK on.
    pub fn with_vhost(mut self, vhost: vhost::VhostNet) -> Self {
        self.vhost = Some(vhost);
        self
    }

    /// The queues' notify eventfds vhost waits on, for KVM's ioeventfds (vhost NICs only).
    pub fn vhost_kicks(&self) -> Option<&[vmm_sys_util::eventfd::EventFd; 2]> {
        self.vhost.as_ref().map(vhost::VhostNet::kicks)
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
        if let Some(index) = descs.iter().position(|d| d.write_only) {
            return Err(ChainError::Direction { index });
        }
        let total: usize = descs.iter().map(|d| d.len as usize).sum();
        if total < NET_HDR_LEN {
            return Err(ChainError::Malformed(
                "TX buffer shorter than the virtio-net header",
            ));
        }
        // A frame that could be DHCP (no larger than an untagged or tagged Ethernet frame)
        // is looked at when this NIC answers DHCP; every other goes out from guest memory as
        // it is, with the header where the TAP takes one.
        if self.dhcp.is_none() || total > NET_HDR_LEN + 1522 {
            let mut iovs = guest_iovecs(descs, mem)
                .ok_or(ChainError::Malformed("TX buffer outside guest RAM"))?;
            if !self.io.vnet_hdr() {
                skip_iovecs(&mut iovs, NET_HDR_LEN);
            }
            if self.io.send_iovecs(&iovs).is_ok() {
                DeviceStats::add(&self.stats.written_bytes, (total - NET_HDR_LEN) as u64);
            } else {
                DeviceStats::add(&self.stats.errors, 1);
            }
            return Ok(());
        }
        let buf = read_chain(descs, mem)?;
        let frame = buf.get(NET_HDR_LEN..).ok_or(ChainError::Malformed(
            "TX buffer shorter than the virtio-net header",
        ))?;
        // With a vnet header the TAP takes the guest's header too (checksum and segmentation
        // requests for the host kernel).
        let packet = if self.io.vnet_hdr() { &buf[..] } else { frame };
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
        if self.io.send(packet).is_ok() {
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

    /// Puts the next packet for the guest into `rx_buf`, header first, and returns its
    /// length: an injected answer, else one from the backend (whose header comes with it
    /// where the TAP has one).
    fn next_packet(&mut self) -> Option<usize> {
        if let Some(frame) = self.injected.pop_front() {
            let n = (NET_HDR_LEN + frame.len()).min(self.rx_buf.len());
            self.rx_buf[..NET_HDR_LEN].fill(0);
            self.rx_buf[NET_HDR_LEN..n].copy_from_slice(&frame[..n - NET_HDR_LEN]);
            return Some(n);
        }
        if self.io.vnet_hdr() {
            loop {
                match self.io.recv(&mut self.rx_buf) {
                    Ok(n) if n >= NET_HDR_LEN => return Some(n),
                    // A runt without a whole header is not a packet.
                    Ok(_) => DeviceStats::add(&self.stats.errors, 1),
                    // WouldBlock, or a broken backend: nothing to deliver now.
                    Err(_) => return None,
                }
            }
        } else {
            let n = self.io.recv(&mut self.rx_buf[NET_HDR_LEN..]).ok()?;
            self.rx_buf[..NET_HDR_LEN].fill(0);
            Some(NET_HDR_LEN + n)
        }
    }

    /// Moves waiting packets into guest RX buffers until either runs out: each into one
    /// buffer chain, or with mergeable buffers over as many as it needs (the header's
    /// num_buffers says how many). A packet that finds too few buffers waits for more, the
    /// ones it looked at left on the ring.
    fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mergeable = self.acked & F_MRG_RXBUF != 0;
        let mut used = false;
        loop {
            if self.pending.is_none() {
                self.pending = self.next_packet();
            }
            let Some(len) = self.pending else {
                break;
            };
            let need = len as u64;
            let start = queue.next_avail();
            let mut chains = Vec::new();
            let mut cap = 0u64;
            let mut bad = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let descs = collect_chain(chain, mem, u64::from(u32::MAX))
                    .ok()
                    .filter(|d| d.iter().all(|x| x.write_only));
                match descs {
                    Some(d) => {
                        cap += d.iter().map(|x| u64::from(x.len)).sum::<u64>();
                        chains.push((head, d));
                    }
                    None => {
                        chains.push((head, Vec::new()));
                        bad = true;
                    }
                }
                if bad || !mergeable || cap >= need {
                    break;
                }
            }
            if chains.is_empty() || (!bad && cap < need && mergeable) {
                // Not enough buffers yet: give back what was looked at, and wait.
                queue.set_next_avail(start);
                break;
            }
            self.pending = None;
            if bad || cap < need {
                // The packet is dropped with the bad or short buffer; the guest gets its
                // buffers back empty.
                DeviceStats::add(&self.stats.errors, 1);
                for (head, _) in chains {
                    used |= add_used(queue, mem, head, 0);
                }
                continue;
            }
            let n = chains.len() as u16;
            self.rx_buf[10..12].copy_from_slice(&n.to_le_bytes());
            let mut rest = &self.rx_buf[..len];
            for (head, descs) in chains {
                let room: u64 = descs.iter().map(|x| u64::from(x.len)).sum();
                let take = rest.len().min(room as usize);
                let len = if scatter(&descs, mem, &rest[..take]) {
                    take as u32
                } else {
                    DeviceStats::add(&self.stats.errors, 1);
                    0
                };
                rest = &rest[take..];
                used |= add_used(queue, mem, head, len);
            }
            DeviceStats::add(&self.stats.read_bytes, (len - NET_HDR_LEN) as u64);
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
        let offloads = if self.io.vnet_hdr() { OFFLOADS } else { 0 };
        F_MAC | F_MRG_RXBUF | offloads
    }

    fn event_idx(&self) -> bool {
        true
    }

    /// The transmit queue is drained whenever it runs (the default). The receive queue is
    /// not: its buffers wait for frames, so a notify is wanted only while a frame waits for
    /// buffers, and then for the first buffer past those already there (too few for it).
    fn rearm(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        if index != RX_QUEUE {
            return queue.enable_notification(mem).unwrap_or(false);
        }
        if self.pending.is_none() {
            return false;
        }
        let start = queue.next_avail();
        let Ok(seen) = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) else {
            return false;
        };
        // enable_notification asks for a notify at next_avail and says whether the driver
        // is past it: asked at the ring's current end, it means "buffers were added since".
        queue.set_next_avail(seen.0);
        let more = queue.enable_notification(mem).unwrap_or(false);
        queue.set_next_avail(start);
        more
    }

    fn ack_features(&mut self, acked: u64) {
        self.acked = acked;
        // A host that refuses leaves offloads off: the guest then gets only whole, summed
        // frames, which it always takes.
        if self.io.set_offload(tun_offloads(acked)).is_err() {
            DeviceStats::add(&self.stats.errors, 1);
        }
    }

    fn activate(
        &mut self,
        queues: &[Queue],
        interrupt: &crate::devices::virtio::mmio::Interrupt,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let Some(v) = &mut self.vhost else {
            return Ok(false);
        };
        v.start(self.acked, queues, self.io.raw_fd(), &interrupt.irqfd)?;
        Ok(true)
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
        if let Some(v) = &mut self.vhost {
            v.stop();
        }
        self.pending = None;
        self.injected.clear();
        if self.acked != 0 {
            self.acked = 0;
            let _ = self.io.set_offload(0);
        }
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
        // The header and the frame in one buffer, and a header split over two.
        let mut one = vec![0u8; NET_HDR_LEN];
        one.extend_from_slice(b"one-buffer");
        write(&m, 0xb000, &one);
        tx.add_chain(&[(0xb000, one.len() as u32, 0)]);
        write(&m, 0xc000, &[0u8; 5]);
        write(&m, 0xd000, b"\0\0\0\0\0\0\0split");
        tx.add_chain(&[(0xc000, 5, 0), (0xd000, 12, 0)]);
        let mut q = tx.queue();
        q.set_next_avail(1);
        q.set_next_used(1);
        let mut qs = vec![rx.queue(), q];
        assert!(net.process_queue(TX_QUEUE, &mut qs, &m));
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one-buffer");
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"split");
        assert_eq!(tx.used_idx(), 3);
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

    /// A datagram socket standing in for a TAP with a vnet header, recording the offloads
    /// the device sets.
    struct VnetPeer {
        sock: UnixDatagram,
        offloads: Arc<std::sync::Mutex<Vec<u32>>>,
    }

    impl FrameIo for VnetPeer {
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.sock.recv(buf)
        }
        fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
            self.sock.send(frame).map(|_| ())
        }
        fn raw_fd(&self) -> RawFd {
            self.sock.as_raw_fd()
        }
        fn vnet_hdr(&self) -> bool {
            true
        }
        fn set_offload(&self, flags: u32) -> std::io::Result<()> {
            self.offloads.lock().unwrap().push(flags);
            Ok(())
        }
    }

    fn vnet_pair() -> (Net, UnixDatagram, Arc<std::sync::Mutex<Vec<u32>>>) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let offloads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let io = VnetPeer {
            sock: a,
            offloads: offloads.clone(),
        };
        let net = Net::new(
            Box::new(io),
            [2, 0, 0, 0, 0, 1],
            Arc::new(DeviceStats::default()),
        );
        (net, b, offloads)
    }

    /// A header as a guest or the host kernel writes it: NEEDS_CSUM, TCPv4 GSO, lengths.
    fn gso_header() -> [u8; NET_HDR_LEN] {
        let mut h = [0u8; NET_HDR_LEN];
        h[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
        h[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        h[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
        h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
        h
    }

    #[test]
    fn offloads_are_offered_only_over_a_vnet_header_and_follow_what_the_guest_took() {
        let (plain, _peer) = pair();
        assert_eq!(plain.features(), F_MAC | F_MRG_RXBUF);
        let (mut net, _peer, offloads) = vnet_pair();
        assert_eq!(net.features(), F_MAC | F_MRG_RXBUF | OFFLOADS);
        // What Linux takes: checksums and TSO both ways.
        net.ack_features(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_CSUM | F_HOST_TSO4);
        // A guest that sums its own receive checksums gets no segments either.
        net.ack_features(F_GUEST_TSO4 | F_CSUM);
        net.ack_features(F_GUEST_CSUM | F_GUEST_ECN);
        net.reset();
        assert_eq!(
            *offloads.lock().unwrap(),
            [
                TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
                0,
                TUN_F_CSUM | TUN_F_TSO_ECN,
                0
            ]
        );
    }

    #[test]
    fn a_vnet_header_crosses_the_device_both_ways() {
        let m = mem();
        let (mut net, peer, _) = vnet_pair();
        let mut rx = TestQueue::new(&m);
        let mut tx = TestQueue::new_at(&m, 0x40000);
        // TX: the guest's header goes to the TAP with the frame.
        write(&m, 0x8000, &gso_header());
        write(&m, 0x9000, b"a-big-tcp-segment");
        tx.add_chain(&[(0x8000, NET_HDR_LEN as u32, 0), (0x9000, 17, 0)]);
        let mut qs = queues(&rx, &tx);
        assert!(net.process_queue(TX_QUEUE, &mut qs, &m));
        let mut buf = [0u8; 64];
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(buf[..NET_HDR_LEN], gso_header());
        assert_eq!(&buf[NET_HDR_LEN..n], b"a-big-tcp-segment");
        // RX: the host's header reaches the guest, num_buffers set.
        let mut pkt = gso_header().to_vec();
        pkt.extend_from_slice(b"from-the-host");
        peer.send(&pkt).unwrap();
        // A runt shorter than a header is dropped, not delivered.
        peer.send(&[1, 2, 3]).unwrap();
        rx.add_chain(&[(0xa000, 100, F_WRITE)]);
        let mut qs = queues(&rx, &tx);
        assert!(net.process_host_event(&mut qs, &m));
        assert_eq!(rx.used_idx(), 1);
        assert_eq!(rx.used(0).1, pkt.len() as u32);
        let got = read(&m, 0xa000, pkt.len());
        assert_eq!(got[..10], gso_header()[..10]);
        assert_eq!(got[10..12], [1, 0]);
        assert_eq!(&got[NET_HDR_LEN..], b"from-the-host");
        assert_eq!(
            net.stats.errors.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn mergeable_buffers_take_a_large_packet_and_it_waits_for_enough_of_them() {
        let m = mem();
        let tx_m = mem();
        let (mut net, peer, _) = vnet_pair();
        net.ack_features(F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4);
        let tx = TestQueue::new(&tx_m);
        let mut rx = TestQueue::new(&m);
        let mut pkt = gso_header().to_vec();
        pkt.extend((0..5000).map(|i| (i % 253) as u8));
        peer.send(&pkt).unwrap();
        // Two 2 KiB buffers hold 4096 of its 5012 bytes: nothing is used, both stay.
        rx.add_chain(&[(0x10000, 2048, F_WRITE)]);
        rx.add_chain(&[(0x20000, 2048, F_WRITE)]);
        let mut qs = queues(&rx, &tx);
        assert!(!net.process_host_event(&mut qs, &m));
        assert_eq!(rx.used_idx(), 0);
        assert_eq!(
            qs[0].next_avail(),
            0,
            "the buffers looked at are back on the ring"
        );
        // A third buffer: the packet goes out over three, num_buffers 3.
        rx.add_chain(&[(0x30000, 2048, F_WRITE)]);
        assert!(net.process_queue(RX_QUEUE, &mut qs, &m));
        assert_eq!(rx.used_idx(), 3);
        assert_eq!(
            [rx.used(0).1, rx.used(1).1, rx.used(2).1],
            [2048, 2048, 5012 - 4096]
        );
        assert_eq!(read(&m, 0x10000 + 10, 2), [3, 0]);
        let mut got = read(&m, 0x10000, 2048);
        got.extend(read(&m, 0x20000, 2048));
        got.extend(read(&m, 0x30000, 5012 - 4096));
        assert!(got[NET_HDR_LEN..] == pkt[NET_HDR_LEN..], "payload differs");
        // A small packet next takes one buffer.
        let mut small = [0u8; NET_HDR_LEN].to_vec();
        small.extend_from_slice(b"ping");
        peer.send(&small).unwrap();
        rx.add_chain(&[(0x40000, 2048, F_WRITE)]);
        assert!(net.process_queue(RX_QUEUE, &mut qs, &m));
        assert_eq!(rx.used_idx(), 4);
        assert_eq!(read(&m, 0x40000 + 10, 6), [1, 0, b'p', b'i', b'n', b'g']);
    }

    /// Used rings of the transport test, away from virtio-queue's mock layout (which lays
    /// its used ring over the avail ring's used_event).
    const RX_USED: u64 = 0x1800;
    const TX_USED: u64 = 0x40800;

    fn u16_at(m: &GuestMemory, at: u64) -> u16 {
        u16::from_le_bytes(read(m, at, 2).try_into().unwrap())
    }

    /// A used ring's avail_event: where the device wants the driver's next notify.
    fn avail_event(m: &GuestMemory, used: u64) -> u16 {
        u16_at(m, used + 4 + 8 * u64::from(QSIZE))
    }

    #[test]
    fn with_event_idx_rx_wants_a_notify_only_while_a_frame_waits_and_tx_at_its_next_entry() {
        use super::super::mmio::{Interrupt, MmioTransport};
        let m = mem();
        let (net, peer, _) = vnet_pair();
        let mut rx = TestQueue::new(&m);
        let mut tx = TestQueue::new_at(&m, 0x40000);
        let irq = Interrupt::new().unwrap();
        let mut t = MmioTransport::new(Box::new(net), m.clone(), irq.clone()).unwrap();
        let features =
            super::super::VIRTIO_F_VERSION_1 | super::super::VIRTIO_RING_F_EVENT_IDX | F_MRG_RXBUF;
        let rings = |q: &TestQueue, used| [q.mock.desc_table_addr().0, q.mock.avail_addr().0, used];
        t.start_for_test(features, &[rings(&rx, RX_USED), rings(&tx, TX_USED)], QSIZE);

        // A 5000-byte packet and one 2 KiB buffer: the packet waits, and the device wants a
        // notify when the driver adds the next buffer (index 1), not at the one it has.
        let mut pkt = [0u8; NET_HDR_LEN].to_vec();
        pkt.extend(std::iter::repeat_n(7u8, 5000));
        peer.send(&pkt).unwrap();
        rx.add_chain(&[(0x10000, 2048, F_WRITE)]);
        t.host_event();
        assert_eq!(u16_at(&m, RX_USED + 2), 0);
        assert_eq!(avail_event(&m, RX_USED), 1);
        assert!(irq.irqfd.read().is_err());
        // Two more buffers and the notify they asked for: delivered over three, one interrupt.
        rx.add_chain(&[(0x20000, 2048, F_WRITE)]);
        rx.add_chain(&[(0x30000, 2048, F_WRITE)]);
        t.notify(RX_QUEUE as u32);
        assert_eq!(u16_at(&m, RX_USED + 2), 3);
        assert_eq!(irq.irqfd.read().unwrap(), 1);
        // Nothing waits now: no notify is wanted for buffers the driver adds.
        rx.add_chain(&[(0x50000, 2048, F_WRITE)]);
        t.notify(RX_QUEUE as u32);
        assert_eq!(
            avail_event(&m, RX_USED),
            1,
            "re-armed with no frame waiting"
        );

        // TX is drained and re-armed at its next entry.
        write(&m, 0x60000, &[0u8; NET_HDR_LEN + 4]);
        tx.add_chain(&[(0x60000, NET_HDR_LEN as u32 + 4, 0)]);
        t.notify(TX_QUEUE as u32);
        assert_eq!(u16_at(&m, TX_USED + 2), 1);
        assert_eq!(avail_event(&m, TX_USED), 1);
        let mut buf = [0u8; 64];
        assert_eq!(peer.recv(&mut buf).unwrap(), NET_HDR_LEN + 4);
    }

    #[test]
    #[ignore = "needs root (CAP_NET_ADMIN): run with --run-ignored"]
    fn root_a_tap_opened_with_a_vnet_header_takes_offloads() {
        let name = format!("hullvt{}", std::process::id() % 100_000);
        let tap = Tap::open_named(&name).unwrap();
        assert!(tap.vnet_hdr());
        tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            .unwrap();
        // The kernel refuses segmentation without checksum offload: its answer, not ours.
        assert!(tap.set_offload(TUN_F_TSO4).is_err());
        tap.set_offload(0).unwrap();
        // The same TAP attached by fd as zoned opens and passes it: the header is seen there.
        drop(tap);
        let fd = std::os::fd::IntoRawFd::into_raw_fd(hull_sys::tun::open(&name).unwrap());
        let tap = Tap::from_passed_fd(fd).unwrap();
        assert!(tap.vnet_hdr());
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
