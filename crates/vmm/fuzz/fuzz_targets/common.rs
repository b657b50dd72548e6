#![allow(dead_code)] // each target uses a different part
//! Shared setup: the fuzz input becomes the first 64 KiB of guest memory, holding a
//! 16-entry split queue (descriptors at 0x0, avail ring at 0x100, used ring at 0x200) and
//! whatever buffers the descriptors point at.

use hull_vmm::memory::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub const MEM: usize = 0x1_0000;

pub fn memory(data: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).expect("64 KiB of memory");
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0))
        .expect("in range");
    mem
}

pub fn queue() -> Queue {
    let mut q = Queue::new(16).expect("valid size");
    q.set_size(16);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x100), Some(0));
    q.set_used_ring_address(Some(0x200), Some(0));
    q.set_ready(true);
    q
}
