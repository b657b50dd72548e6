#![no_main]
//! Block requests built from arbitrary guest memory against a small disk image: the header's
//! type is guest bytes too, so every request kind is reached (read, write, flush, get-id,
//! discard and write-zeroes with their ranges).

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use hull_vmm::devices::virtio::VirtioDevice;
use hull_vmm::devices::virtio::block::Block;
use hull_vmm::stats::DeviceStats;
use libfuzzer_sys::fuzz_target;

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
    let mut queues = [common::queue()];
    dev.process_queue(0, &mut queues, &mem);
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
