#![no_main]
//! Block requests built from arbitrary guest memory against a small disk image: the header's
//! type is guest bytes too, so every request kind is reached (read, write, flush, get-id,
//! discard and write-zeroes with their ranges). Inputs whose first byte has bit 1 set are
//! served as the VMM's I/O thread serves a kicked disk through io_uring (the batch's chains
//! walked, their reads, writes and flushes in the ring together), the others as a vCPU's
//! notify would, one request after the other. Bit 2 makes a disk of two request queues
//! (a guest with two vCPUs) whose second one carries the requests, the first left unready.

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use hull_vmm::devices::virtio::block::{Block, DiskRing, MAX_CHAIN_BYTES};
use hull_vmm::devices::virtio::{VirtioDevice, collect_chain};
use hull_vmm::stats::DeviceStats;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let file = tempfile_disk();
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let mut dev = Block::from_file(
        file,
        64 * 512,
        read_only,
        "fuzz",
        Arc::new(DeviceStats::default()),
    );
    let multi = data.first().is_some_and(|b| b & 4 == 4);
    if multi {
        dev = dev.with_queues(2);
    }
    let index = usize::from(multi);
    let mut queues = vec![common::queue()];
    if multi {
        queues.insert(0, Queue::new(16).expect("valid size"));
    }
    if data.first().is_some_and(|b| b & 2 == 2) {
        let backend = dev.backend();
        let mut ring = DiskRing::new(&[backend.raw_fd()]).expect("io_uring on the fuzzing host");
        let mut batch = Vec::new();
        while let Some(chain) = queues[index].pop_descriptor_chain(&mem) {
            batch.push((chain.head_index(), collect_chain(chain, &mem, MAX_CHAIN_BYTES)));
        }
        let done = ring.serve(&backend, 0, batch, &mem).expect("the ring works");
        assert!(done.iter().all(|(_, len)| u64::from(*len) <= MAX_CHAIN_BYTES));
    } else {
        dev.process_queue(index, &mut queues, &mem);
    }
});

fn tempfile_disk() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("hull-fuzz-disk-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("a temp disk");
    f.set_len(64 * 512).expect("sized");
    f
}
