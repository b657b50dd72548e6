//! virtio-rng: fills guest buffers from the host's getrandom(2). Every descriptor of a
//! request must be device-writable; a request is capped so one notify cannot make the VMM
//! produce unbounded randomness.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{ChainError, TYPE_RNG, VirtioDevice, add_used, collect_chain};
use crate::memory::GuestMemory;
use crate::stats::DeviceStats;

const QUEUE_SIZE: u16 = 256;
const MAX_REQUEST_BYTES: u64 = 64 << 10;

/// Source of random bytes, a seam for tests.
pub trait Entropy: Send {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

/// The host kernel's CSPRNG.
#[derive(Debug, Default)]
pub struct GetRandom;

impl Entropy for GetRandom {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: the pointer and length describe `rest`, a live, writable slice.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += n as usize;
        }
        Ok(())
    }
}

/// The rng device.
pub struct Rng {
    source: Box<dyn Entropy>,
    stats: Arc<DeviceStats>,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rng")
    }
}

impl Rng {
    pub fn new(source: Box<dyn Entropy>, stats: Arc<DeviceStats>) -> Self {
        Rng { source, stats }
    }

    fn serve(&mut self, descs: &[super::Desc], mem: &GuestMemory) -> Result<u32, ChainError> {
        if let Some(i) = descs.iter().position(|d| !d.write_only) {
            return Err(ChainError::Direction { index: i });
        }
        let mut total = 0u32;
        let mut buf = Vec::new();
        for d in descs {
            buf.resize(d.len as usize, 0);
            if self.source.fill(&mut buf).is_err()
                || mem.write_slice(&buf, GuestAddress(d.addr)).is_err()
            {
                break;
            }
            total += d.len;
        }
        Ok(total)
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> bool {
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = collect_chain(chain, mem, MAX_REQUEST_BYTES)
                .and_then(|d| self.serve(&d, mem))
                .unwrap_or_else(|_| {
                    DeviceStats::add(&self.stats.errors, 1);
                    0
                });
            DeviceStats::add(&self.stats.requests, 1);
            DeviceStats::add(&self.stats.read_bytes, u64::from(len));
            used |= add_used(queue, mem, head, len);
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testutil::*;

    struct Fixed(u8);
    impl Entropy for Fixed {
        fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(self.0);
            Ok(())
        }
    }

    fn dev() -> Rng {
        Rng::new(Box::new(Fixed(0xab)), Arc::new(DeviceStats::default()))
    }

    fn run(r: &mut Rng, t: &TestQueue, m: &GuestMemory) -> bool {
        let mut qs = vec![t.queue()];
        r.process_queue(0, &mut qs, m)
    }

    #[test]
    fn fills_every_writable_buffer() {
        let m = mem();
        let mut r = dev();
        let mut t = TestQueue::new(&m);
        t.add_chain(&[(0x8000, 64, F_WRITE), (0x9000, 32, F_WRITE)]);
        t.add_chain(&[(0xa000, 16, F_WRITE)]);
        assert!(run(&mut r, &t, &m));
        assert_eq!(t.used_idx(), 2);
        assert_eq!(t.used(0).1, 96);
        assert_eq!(t.used(1).1, 16);
        assert_eq!(read(&m, 0x9000, 32), vec![0xab; 32]);
    }

    #[test]
    fn readable_oversized_or_bad_buffers_get_nothing() {
        let m = mem();
        let mut r = dev();
        for c in [
            vec![(0x8000u64, 64u32, 0u16)],
            vec![(0x8000, 64, F_WRITE), (0x9000, 64, 0)],
            vec![(0x8000, (MAX_REQUEST_BYTES + 1) as u32, F_WRITE)],
            vec![(0xffff_ffff_0000, 64, F_WRITE)],
        ] {
            let mut t = TestQueue::new(&m);
            write(&m, 0x8000, &[0; 64]);
            t.add_chain(&c);
            run(&mut r, &t, &m);
            assert_eq!(t.used(0).1, 0);
            assert_eq!(read(&m, 0x8000, 64), vec![0; 64]);
        }
    }

    #[test]
    fn host_getrandom_works() {
        let mut b = [0u8; 64];
        GetRandom.fill(&mut b).unwrap();
        assert!(b.iter().filter(|x| **x != 0).count() > 16);
    }
}
