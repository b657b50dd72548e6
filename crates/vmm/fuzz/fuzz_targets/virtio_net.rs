#![no_main]
//! TX and RX chains built from arbitrary guest memory; the host side answers every read
//! with a frame taken from the input's tail. The input's first byte picks whether the host
//! side carries a vnet header (offloads offered) and which features the driver took
//! (mergeable receive buffers among them).

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use hull_vmm::devices::virtio::VirtioDevice;
use hull_vmm::devices::virtio::net::{FrameIo, Net};
use hull_vmm::stats::DeviceStats;
use libfuzzer_sys::fuzz_target;

struct Loop {
    frame: Vec<u8>,
    left: usize,
    vnet: bool,
}

impl FrameIo for Loop {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        self.left -= 1;
        let n = self.frame.len().min(buf.len());
        buf[..n].copy_from_slice(&self.frame[..n]);
        Ok(n)
    }
    fn send(&mut self, _frame: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        -1
    }
    fn vnet_hdr(&self) -> bool {
        self.vnet
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let frame = data.get(common::MEM..).unwrap_or_default().to_vec();
    let pick = data.first().copied().unwrap_or(0);
    let io = Loop {
        frame,
        left: 4,
        vnet: pick & 1 != 0,
    };
    let mut dev = Net::new(
        Box::new(io),
        [2, 0, 0, 0, 0, 1],
        Arc::new(DeviceStats::default()),
    );
    // Bit 1: mergeable receive buffers; bit 2: every offload offered.
    let offered = dev.features();
    let mut acked = 0;
    if pick & 2 != 0 {
        acked |= 1 << 15;
    }
    if pick & 4 != 0 {
        acked |= offered;
    }
    dev.ack_features(acked & offered);
    // Both queues share the same rings: every chain is tried as RX and as TX.
    let mut queues = [common::queue(), common::queue()];
    dev.process_queue(1, &mut queues, &mem);
    dev.process_queue(0, &mut queues, &mem);
    dev.process_host_event(&mut queues, &mem);
});
