//! Virtio over MMIO: the transport in [`mmio`] and the devices it carries. A device sees its
//! queues only through [`VirtioDevice::process_queue`], with guest memory; every descriptor
//! address, length and flag it reads is untrusted and checked here before use.

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;

use virtio_queue::{Queue, QueueT};

use crate::memory::GuestMemory;

pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The driver and device tell each other where they next want an interrupt or a notify
/// (virtio 1.1, 2.6.7), instead of one per request each way.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (1 net, 2 block, 4 rng, 5 balloon).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the count is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// Whether the transport offers VIRTIO_RING_F_EVENT_IDX for this device, whose
    /// [`Self::rearm`] then says when the device wants the driver's next notify.
    fn event_idx(&self) -> bool {
        false
    }
    /// With EVENT_IDX, after the device ran: asks the driver to notify queue `index` where the
    /// device next needs it, and returns true when the driver has already added there (run
    /// the queue again). The default suits a queue the device drains whenever it runs
    /// (a disk's, a NIC's transmit queue): notify at the next entry.
    fn rearm(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        queue.enable_notification(mem).unwrap_or(false)
    }
    /// The driver set DRIVER_OK having taken `acked` (a subset of what was offered).
    fn ack_features(&mut self, _acked: u64) {}
    /// After [`Self::ack_features`]: a device whose queues the host kernel serves (a NIC on
    /// vhost-net) hands it the driver's rings and `interrupt`'s eventfd, and returns true;
    /// the transport then leaves those queues alone and keeps the "used ring" interrupt
    /// status set. An error fails the device (the driver sees DEVICE_NEEDS_RESET).
    fn activate(
        &mut self,
        _queues: &[Queue],
        _interrupt: &mmio::Interrupt,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        Ok(false)
    }
    /// Reads device config space at `offset`; bytes past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes config space at `offset` (untrusted bytes); read-only by default.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Processes what the guest made available on queue `index`. Returns true when used
    /// buffers were added (the transport then raises the interrupt).
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> bool;
    /// Processes host-side readiness (e.g. a TAP with frames); same return as above.
    fn process_host_event(&mut self, _queues: &mut [Queue], _mem: &GuestMemory) -> bool {
        false
    }
    /// The guest reset the device.
    fn reset(&mut self) {}
    /// The host changed what backs the device (a disk image grew): re-read it and update
    /// config space. Returns the old and new size in bytes; the transport raises the
    /// configuration change interrupt when they differ. Devices without a size refuse.
    fn host_resize(&mut self) -> Result<Resized, ResizeError> {
        Err(ResizeError::NotResizable(self.device_type()))
    }
    /// The device as a balloon, for the host's target; `None` for every other device.
    fn as_balloon(&mut self) -> Option<&mut balloon::Balloon> {
        None
    }
}

/// What a [`VirtioDevice::host_resize`] changed, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    pub old: u64,
    pub new: u64,
}

/// Why a device did not take a new size.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// Only disks have a size to change.
    #[error("virtio device type {0} has no size to change")]
    NotResizable(u32),
    /// The backing file could not be looked at.
    #[error("cannot read the size of the disk image")]
    Stat(#[source] std::io::Error),
    /// The backing file is smaller than what the guest was told: blocks it may hold data in
    /// are gone, and telling it so would not bring them back.
    #[error(
        "the disk image shrank from {old} to {new} bytes; the guest keeps the old size \
         (disks grow, they do not shrink)"
    )]
    Shrunk { old: u64, new: u64 },
}

/// Copies `src` config bytes at `offset` into `data`, zero past the end.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if let Some(tail) = src.get(off..) {
        let n = tail.len().min(data.len());
        data[..n].copy_from_slice(&tail[..n]);
    }
}

/// One descriptor of a chain, after the chain walk checked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write_only: bool,
}

/// Why a chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// The chain's next pointers never end (or the chain is longer than the queue).
    #[error("descriptor chain loops or is longer than the queue")]
    TooLong,
    /// A descriptor's buffer is not inside guest memory.
    #[error("descriptor buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfBounds { addr: u64, len: u32 },
    /// The chain's total length is more than this device accepts.
    #[error("descriptor chain carries more than {max} bytes")]
    Oversized { max: u64 },
    /// A descriptor has the wrong direction for its position.
    #[error("descriptor {index} of the chain has the wrong direction")]
    Direction { index: usize },
    /// The chain is too short or its fixed parts are too small.
    #[error("descriptor chain is malformed: {0}")]
    Malformed(&'static str),
}

/// Walks a chain, checking each buffer lies in guest memory and the total is at most
/// `max_total` bytes. virtio-queue's iterator stops after queue-size descriptors (its loop
/// guard); a chain whose last descriptor still has NEXT set was cut there, so it is refused.
pub fn collect_chain<M>(
    chain: virtio_queue::DescriptorChain<M>,
    mem: &GuestMemory,
    max_total: u64,
) -> Result<Vec<Desc>, ChainError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    use vm_memory::{GuestAddress, GuestMemoryBackend};
    let mut out = Vec::new();
    let mut total: u64 = 0;
    let mut last_has_next = false;
    for d in chain {
        let addr = d.addr().0;
        let len = d.len();
        if len > 0
            && mem
                .checked_offset(GuestAddress(addr), len as usize - 1)
                .is_none()
        {
            return Err(ChainError::OutOfBounds { addr, len });
        }
        // A buffer crossing from one RAM region into a hole or another region is refused
        // too: vm-memory accesses would stop at the region's end.
        if len > 0 {
            let ok = mem
                .find_region(GuestAddress(addr))
                .and_then(|r| {
                    use vm_memory::{Address, GuestMemoryRegion};
                    let end = r.start_addr().unchecked_add(r.len());
                    (addr.checked_add(u64::from(len))? <= end.0).then_some(())
                })
                .is_some();
            if !ok {
                return Err(ChainError::OutOfBounds { addr, len });
            }
        }
        total += u64::from(len);
        if total > max_total {
            return Err(ChainError::Oversized { max: max_total });
        }
        last_has_next = d.has_next();
        out.push(Desc {
            addr,
            len,
            write_only: d.is_write_only(),
        });
    }
    if last_has_next {
        return Err(ChainError::TooLong);
    }
    if out.is_empty() {
        return Err(ChainError::Malformed("empty chain"));
    }
    Ok(out)
}

/// Returns a chain to the guest, ignoring a broken used ring (the device then stops making
/// progress on that queue, which only hurts the guest that broke it).
/// The bytes of a chain's device-readable buffers, in order: every descriptor must be
/// device-readable (one that is not is named), and the total is what `collect_chain` bounded.
pub fn read_chain(descs: &[Desc], mem: &GuestMemory) -> Result<Vec<u8>, ChainError> {
    use vm_memory::{Bytes, GuestAddress};
    if let Some(index) = descs.iter().position(|d| d.write_only) {
        return Err(ChainError::Direction { index });
    }
    let mut buf = Vec::new();
    for d in descs {
        let start = buf.len();
        buf.resize(start + d.len as usize, 0);
        mem.read_slice(&mut buf[start..], GuestAddress(d.addr))
            .map_err(|_| ChainError::OutOfBounds {
                addr: d.addr,
                len: d.len,
            })?;
    }
    Ok(buf)
}

/// The host addresses of a chain's buffers, for vectored I/O straight into or out of guest
/// memory (empty buffers left out). `collect_chain` checked that each lies inside one RAM
/// region, so each is one slice of the mapping; `None` if one is not.
pub fn guest_iovecs(descs: &[Desc], mem: &GuestMemory) -> Option<Vec<libc::iovec>> {
    use vm_memory::{GuestAddress, GuestMemoryBackend};
    descs
        .iter()
        .filter(|d| d.len > 0)
        .map(|d| {
            let s = mem.get_slice(GuestAddress(d.addr), d.len as usize).ok()?;
            Some(libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            })
        })
        .collect()
}

/// Drops the first `n` bytes of `iovs` (a header the other side does not take).
pub fn skip_iovecs(iovs: &mut Vec<libc::iovec>, mut n: usize) {
    while n > 0 && !iovs.is_empty() {
        let first = &mut iovs[0];
        if first.iov_len <= n {
            n -= first.iov_len;
            iovs.remove(0);
        } else {
            // SAFETY: advancing within the same buffer, by less than its length.
            first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n).cast() };
            first.iov_len -= n;
            n = 0;
        }
    }
}

pub fn add_used(queue: &mut Queue, mem: &GuestMemory, head: u16, len: u32) -> bool {
    queue.add_used(mem, head, len).is_ok()
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Mock guest memory and queues for device tests.
    use virtio_queue::Queue;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use crate::memory::GuestMemory;

    pub const QSIZE: u16 = 16;
    pub const F_NEXT: u16 = 1;
    pub const F_WRITE: u16 = 2;
    pub const F_INDIRECT: u16 = 4;

    pub fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A queue at 0x1000 (descriptor table, rings) in `mem`.
    pub struct TestQueue<'a> {
        pub mock: MockSplitQueue<'a, GuestMemory>,
        next_desc: u16,
    }

    impl<'a> TestQueue<'a> {
        pub fn new(mem: &'a GuestMemory) -> Self {
            Self::new_at(mem, 0x1000)
        }

        /// A queue whose rings start at `base` (below 0x8000 or above 0x40000).
        pub fn new_at(mem: &'a GuestMemory, base: u64) -> Self {
            TestQueue {
                mock: MockSplitQueue::create(mem, GuestAddress(base), QSIZE),
                next_desc: 0,
            }
        }

        pub fn queue(&self) -> Queue {
            self.mock.create_queue().unwrap()
        }

        /// Adds a chain of (addr, len, flags) descriptors, linking them with NEXT unless the
        /// caller set `next` explicitly via `raw`.
        pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
            let head = self.next_desc;
            let n = descs.len() as u16;
            for (i, (addr, len, flags)) in descs.iter().enumerate() {
                let idx = head + i as u16;
                let mut f = *flags;
                if (i as u16) + 1 < n {
                    f |= F_NEXT;
                }
                let d = SplitDescriptor::new(*addr, *len, f, idx + 1);
                self.mock
                    .desc_table()
                    .store(idx, RawDescriptor::from(d))
                    .unwrap();
            }
            self.next_desc += n;
            self.offer(head);
            head
        }

        /// Stores one raw descriptor at `idx` without offering it.
        pub fn raw(&mut self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let d = SplitDescriptor::new(addr, len, flags, next);
            self.mock
                .desc_table()
                .store(idx, RawDescriptor::from(d))
                .unwrap();
            self.next_desc = self.next_desc.max(idx + 1);
        }

        /// Puts `head` on the available ring.
        pub fn offer(&mut self, head: u16) {
            let avail = self.mock.avail();
            let idx = avail.idx().load();
            avail
                .ring()
                .ref_at((idx % QSIZE) as usize)
                .unwrap()
                .store(u16::to_le(head));
            avail.idx().store(u16::to_le(idx.wrapping_add(1)));
        }

        /// Used ring entry `i` as (id, len).
        pub fn used(&self, i: u16) -> (u32, u32) {
            let e = self.mock.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        }

        pub fn used_idx(&self) -> u16 {
            self.mock.used().idx().load()
        }

        /// Fills the whole descriptor table from the xorshift state `seed` (addresses in and
        /// far out of memory, any lengths, flags and next indexes) and offers four heads,
        /// some past the table: what a hostile driver could leave for a device.
        pub fn garbage(&mut self, seed: &mut u64) {
            for i in 0..QSIZE {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                let s = *seed;
                let addr = if s & 1 == 0 { s >> 40 } else { s };
                self.raw(
                    i,
                    addr,
                    (s >> 20) as u32,
                    (s >> 8) as u16 & 7,
                    (s >> 4) as u16,
                );
            }
            for i in 0..4 {
                self.offer(((*seed >> (i * 4)) as u16) % (QSIZE + 2));
            }
        }
    }

    pub fn write(mem: &GuestMemory, addr: u64, data: &[u8]) {
        mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use virtio_queue::QueueT;

    fn walk(t: &mut TestQueue, mem: &GuestMemory, max: u64) -> Result<Vec<Desc>, ChainError> {
        let mut q = t.queue();
        let chain = q.pop_descriptor_chain(mem).expect("a chain");
        collect_chain(chain, mem, max)
    }

    #[test]
    fn well_formed_chain_is_collected() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        t.add_chain(&[
            (0x8000, 16, 0),
            (0x9000, 512, F_WRITE),
            (0xa000, 1, F_WRITE),
        ]);
        let d = walk(&mut t, &m, 1 << 20).unwrap();
        assert_eq!(d.len(), 3);
        assert!(!d[0].write_only && d[1].write_only);
        assert_eq!(d[1].len, 512);
    }

    #[test]
    fn out_of_bounds_buffers_are_refused() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        t.add_chain(&[(0xff000, 0x2000, 0)]);
        assert!(matches!(
            walk(&mut t, &m, u64::MAX),
            Err(ChainError::OutOfBounds { .. })
        ));
        let mut t = TestQueue::new(&m);
        t.add_chain(&[(u64::MAX - 4, 16, 0)]);
        assert!(matches!(
            walk(&mut t, &m, u64::MAX),
            Err(ChainError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn oversized_chains_are_refused() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        t.add_chain(&[(0x8000, 0x1000, 0), (0x9000, 0x1000, 0)]);
        assert_eq!(
            walk(&mut t, &m, 0x1000),
            Err(ChainError::Oversized { max: 0x1000 })
        );
    }

    #[test]
    fn looping_chains_are_refused() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        t.raw(0, 0x8000, 16, F_NEXT, 1);
        t.raw(1, 0x9000, 16, F_NEXT, 0);
        t.offer(0);
        assert_eq!(walk(&mut t, &m, u64::MAX), Err(ChainError::TooLong));
    }

    #[test]
    fn next_index_past_the_table_ends_the_chain_as_malformed() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        t.raw(0, 0x8000, 16, F_NEXT, 1000);
        t.offer(0);
        // virtio-queue stops at the bad index; the cut-off chain must not pass as complete.
        assert_eq!(walk(&mut t, &m, u64::MAX), Err(ChainError::TooLong));
    }

    #[test]
    fn config_reads_are_bounded() {
        let mut d = [0xaau8; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut d);
        assert_eq!(d, [2, 3, 0, 0]);
        read_config_bytes(&[1, 2, 3], u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
