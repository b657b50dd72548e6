#![no_main]
//! rng requests built from arbitrary guest memory.

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use hull_vmm::devices::virtio::VirtioDevice;
use hull_vmm::devices::virtio::rng::{Entropy, Rng};
use hull_vmm::stats::DeviceStats;
use libfuzzer_sys::fuzz_target;

struct Zeros;
impl Entropy for Zeros {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let mut dev = Rng::new(Box::new(Zeros), Arc::new(DeviceStats::default()));
    let mut queues = [common::queue()];
    dev.process_queue(0, &mut queues, &mem);
});
