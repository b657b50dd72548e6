#![no_main]
//! Arbitrary sequences of virtio-mmio register reads and writes (including notifies) against
//! an rng device, with the input also serving as guest memory.

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use hull_vmm::bus::BusDevice;
use hull_vmm::devices::virtio::mmio::{Interrupt, MmioTransport};
use hull_vmm::devices::virtio::rng::{GetRandom, Rng};
use hull_vmm::stats::DeviceStats;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let dev = Rng::new(Box::new(GetRandom), Arc::new(DeviceStats::default()));
    let Ok(irq) = Interrupt::new() else { return };
    let Ok(mut t) = MmioTransport::new(Box::new(dev), mem, irq) else {
        return;
    };
    // Each 7-byte record: kind, offset (u16), value (u32).
    for rec in data.chunks_exact(7).take(256) {
        let offset = u64::from(u16::from_le_bytes([rec[1], rec[2]])) & 0x1ff;
        let value = [rec[3], rec[4], rec[5], rec[6]];
        match rec[0] % 4 {
            0 => t.write(offset, &value),
            1 => t.write(offset, &value[..1]),
            2 => {
                let mut b = [0u8; 4];
                t.read(offset, &mut b);
            }
            _ => {
                let mut b = [0u8; 2];
                t.read(offset, &mut b);
            }
        }
    }
});
