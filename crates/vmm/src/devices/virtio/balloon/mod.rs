//! virtio-balloon: lets the host take memory back from a guest that does not use it.
//!
//! Two ways, both ending in `madvise(MADV_DONTNEED)` on guest RAM (private anonymous memory:
//! the host frees the pages, and a later guest access finds them zeroed):
//! - inflation: the host sets a target (`num_pages`, through the control socket's
//!   `balloon` request) and the guest's driver gives that many 4 KiB pages, as page frame
//!   numbers on the inflate queue; it takes them back on the deflate queue (nothing to do
//!   here: a freed page faults back in on first use) and writes how many it holds to
//!   `actual`;
//! - free page reporting (`VIRTIO_BALLOON_F_PAGE_REPORTING`): the guest reports ranges of
//!   its free memory (2 MiB and up in Linux) whenever it has enough, which the host frees
//!   at once; an idle guest so gives back what its page cache released without anyone
//!   setting a target.
//!
//! Queues, as the MMIO transport numbers them: 0 inflate, 1 deflate, 2 reporting (virtio
//! numbers reporting 4, but a driver skips the absent stats and free-page-hint queues when it
//! assigns transport indexes, as Linux's virtio_mmio does). Every PFN and range is checked
//! against guest RAM before any memory is touched.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{ChainError, Desc, TYPE_BALLOON, VirtioDevice, add_used, collect_chain, read_chain};
use crate::memory::GuestMemory;

const QUEUE_SIZE: u16 = 256;
const QUEUES: [u16; 3] = [QUEUE_SIZE; 3];
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const REPORTING: usize = 2;
/// Balloon pages are 4 KiB whatever the guest's page size (VIRTIO_BALLOON_PFN_SHIFT).
const PAGE: u64 = 4096;
/// Deflate when the guest runs out of memory rather than fail its allocations.
const F_DEFLATE_ON_OOM: u64 = 1 << 2;
const F_PAGE_REPORTING: u64 = 1 << 5;
/// Bytes of PFNs one inflate or deflate chain may carry (Linux sends at most 256 PFNs).
const MAX_PFN_BYTES: u64 = 64 << 10;
/// Bytes one reporting chain may describe (Linux reports up to 32 ranges of 4 MiB at most).
const MAX_REPORT_BYTES: u64 = 1 << 30;

/// The 4 KiB balloon pages of `mib` MiB.
pub fn balloon_pages(mib: u64) -> u32 {
    u32::try_from(mib.saturating_mul(1 << 20) / PAGE).unwrap_or(u32::MAX)
}

/// What the balloon did, for the control socket's `stats`.
#[derive(Debug, Default)]
pub struct BalloonStats {
    /// Pages the host asked for.
    pub target_pages: AtomicU64,
    /// Pages the guest says it holds in the balloon (`actual`).
    pub actual_pages: AtomicU64,
    /// Bytes freed by inflation, and bytes the guest took back by deflation, in total.
    pub inflated_bytes: AtomicU64,
    pub deflated_bytes: AtomicU64,
    /// Bytes of free memory the guest reported and the host freed, in total.
    pub reported_bytes: AtomicU64,
    /// Chains refused (malformed, or naming memory outside guest RAM).
    pub errors: AtomicU64,
}

/// Where freed memory goes: the host's madvise, a seam for tests.
pub trait Release: Send {
    /// Frees guest-physical `[addr, addr + len)`, which lies inside one RAM region.
    fn release(&mut self, mem: &GuestMemory, addr: u64, len: u64) -> std::io::Result<()>;
}

/// `madvise(MADV_DONTNEED)` on the host mapping of the range.
#[derive(Debug, Default)]
pub struct DontNeed;

impl Release for DontNeed {
    fn release(&mut self, mem: &GuestMemory, addr: u64, len: u64) -> std::io::Result<()> {
        let host = mem
            .get_host_address(GuestAddress(addr))
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EFAULT))?;
        // SAFETY: `host..host + len` maps guest RAM inside one region (the caller checked it
        // with `in_one_region`); MADV_DONTNEED on private anonymous memory only drops its
        // pages, which read back as zeroes: the guest gave them up.
        let rc = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The balloon device.
pub struct Balloon {
    config: [u8; 8],
    stats: Arc<BalloonStats>,
    release: Box<dyn Release>,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("stats", &self.stats)
            .finish()
    }
}

/// Whether `[addr, addr + len)` is non-empty, page aligned and inside one RAM region.
fn in_one_region(mem: &GuestMemory, addr: u64, len: u64) -> bool {
    if len == 0 || !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return false;
    }
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    mem.find_region(GuestAddress(addr)).is_some_and(|r| {
        let start = r.start_addr().0;
        end <= start + r.len()
    })
}

impl Balloon {
    pub fn new(stats: Arc<BalloonStats>, release: Box<dyn Release>) -> Self {
        Balloon {
            config: [0; 8],
            stats,
            release,
        }
    }

    /// Sets the number of 4 KiB pages the host wants the guest to give up.
    pub fn set_target(&mut self, pages: u32) {
        self.config[..4].copy_from_slice(&pages.to_le_bytes());
        self.stats
            .target_pages
            .store(u64::from(pages), Ordering::Relaxed);
    }

    /// PFNs of an inflate or deflate chain: device-readable buffers of little-endian u32s.
    fn pfns(descs: &[Desc], mem: &GuestMemory) -> Result<Vec<u32>, ChainError> {
        let raw = read_chain(descs, mem)?;
        if !raw.len().is_multiple_of(4) {
            return Err(ChainError::Malformed(
                "PFN array not a whole number of u32s",
            ));
        }
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Frees the pages of `pfns`, runs of consecutive ones in one call. PFNs outside RAM are
    /// refused as a whole before anything is freed.
    fn inflate(&mut self, pfns: &[u32], mem: &GuestMemory) -> Result<(), ChainError> {
        let mut sorted: Vec<u64> = pfns.iter().map(|p| u64::from(*p)).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for pfn in sorted {
            match runs.last_mut() {
                Some((start, n)) if *start + *n == pfn => *n += 1,
                _ => runs.push((pfn, 1)),
            }
        }
        // A run may span two regions (RAM below and above the MMIO gap never touch, so a
        // run crossing the gap is outside RAM and refused).
        if let Some((start, n)) = runs
            .iter()
            .find(|(start, n)| !in_one_region(mem, start * PAGE, n * PAGE))
        {
            return Err(ChainError::OutOfBounds {
                addr: start * PAGE,
                len: (n * PAGE).min(u64::from(u32::MAX)) as u32,
            });
        }
        for (start, n) in runs {
            if self.release.release(mem, start * PAGE, n * PAGE).is_ok() {
                self.stats
                    .inflated_bytes
                    .fetch_add(n * PAGE, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Frees the ranges a reporting chain names: device-writable buffers, each one free range.
    fn report(&mut self, descs: &[Desc], mem: &GuestMemory) -> Result<(), ChainError> {
        if let Some(i) = descs.iter().position(|d| !d.write_only) {
            return Err(ChainError::Direction { index: i });
        }
        if let Some(d) = descs
            .iter()
            .find(|d| !in_one_region(mem, d.addr, u64::from(d.len)))
        {
            return Err(ChainError::OutOfBounds {
                addr: d.addr,
                len: d.len,
            });
        }
        for d in descs {
            if self.release.release(mem, d.addr, u64::from(d.len)).is_ok() {
                self.stats
                    .reported_bytes
                    .fetch_add(u64::from(d.len), Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUES
    }

    fn features(&self) -> u64 {
        F_DEFLATE_ON_OOM | F_PAGE_REPORTING
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    /// The driver writes `actual` (bytes 4..8); `num_pages` is the host's.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        for (i, b) in data.iter().enumerate() {
            if let Some(at) = off.checked_add(i).filter(|at| (4..8).contains(at)) {
                self.config[at] = *b;
            }
        }
        let actual = u32::from_le_bytes([
            self.config[4],
            self.config[5],
            self.config[6],
            self.config[7],
        ]);
        self.stats
            .actual_pages
            .store(u64::from(actual), Ordering::Relaxed);
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> bool {
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        let max = if index == REPORTING {
            MAX_REPORT_BYTES
        } else {
            MAX_PFN_BYTES
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let done = collect_chain(chain, mem, max).and_then(|descs| match index {
                INFLATE => {
                    let pfns = Self::pfns(&descs, mem)?;
                    self.inflate(&pfns, mem)
                }
                DEFLATE => {
                    let pfns = Self::pfns(&descs, mem)?;
                    self.stats
                        .deflated_bytes
                        .fetch_add(pfns.len() as u64 * PAGE, Ordering::Relaxed);
                    Ok(())
                }
                _ => self.report(&descs, mem),
            });
            if done.is_err() {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            used |= add_used(queue, mem, head, 0);
        }
        used
    }

    fn reset(&mut self) {
        self.config[4..].fill(0);
        self.stats.actual_pages.store(0, Ordering::Relaxed);
    }

    fn as_balloon(&mut self) -> Option<&mut Balloon> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testutil::*;

    /// Records what would be freed.
    #[derive(Default, Clone)]
    struct Rec(Arc<std::sync::Mutex<Vec<(u64, u64)>>>);

    impl Release for Rec {
        fn release(&mut self, _mem: &GuestMemory, addr: u64, len: u64) -> std::io::Result<()> {
            self.0.lock().unwrap().push((addr, len));
            Ok(())
        }
    }

    fn balloon() -> (Balloon, Rec, Arc<BalloonStats>) {
        let rec = Rec::default();
        let stats = Arc::new(BalloonStats::default());
        (
            Balloon::new(stats.clone(), Box::new(rec.clone())),
            rec,
            stats,
        )
    }

    fn put_pfns(m: &GuestMemory, at: u64, pfns: &[u32]) -> u32 {
        let raw: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        write(m, at, &raw);
        raw.len() as u32
    }

    fn run(b: &mut Balloon, index: usize, t: &TestQueue, m: &GuestMemory) -> bool {
        let mut qs = vec![t.queue(), t.queue(), t.queue()];
        b.process_queue(index, &mut qs, m)
    }

    #[test]
    fn inflate_frees_runs_of_pages_and_deflate_counts_them_back() {
        let m = mem();
        let (mut b, rec, stats) = balloon();
        let mut t = TestQueue::new(&m);
        // Pages 0x80-0x82 and 0x90, out of order and one twice.
        let len = put_pfns(&m, 0x8000, &[0x81, 0x90, 0x80, 0x82, 0x81]);
        t.add_chain(&[(0x8000, len, 0)]);
        assert!(run(&mut b, INFLATE, &t, &m));
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![(0x80 * PAGE, 3 * PAGE), (0x90 * PAGE, PAGE)]
        );
        assert_eq!(stats.inflated_bytes.load(Ordering::Relaxed), 4 * PAGE);
        assert_eq!(t.used(0).1, 0);

        let mut t = TestQueue::new(&m);
        let len = put_pfns(&m, 0x8000, &[0x80, 0x81]);
        t.add_chain(&[(0x8000, len, 0)]);
        assert!(run(&mut b, DEFLATE, &t, &m));
        assert_eq!(stats.deflated_bytes.load(Ordering::Relaxed), 2 * PAGE);
        assert_eq!(rec.0.lock().unwrap().len(), 2, "deflate frees nothing");
    }

    #[test]
    fn pfns_outside_ram_free_nothing() {
        let m = mem();
        let (mut b, rec, stats) = balloon();
        let mut t = TestQueue::new(&m);
        // Memory is 1 MiB (256 pages): 0x100 is past its end, u32::MAX far past it.
        let len = put_pfns(&m, 0x8000, &[0x80, 0x100]);
        t.add_chain(&[(0x8000, len, 0)]);
        let len = put_pfns(&m, 0x9000, &[u32::MAX]);
        t.add_chain(&[(0x9000, len, 0)]);
        // A PFN array that is not whole u32s, and one the device would have to write.
        t.add_chain(&[(0x8000, 6, 0)]);
        t.add_chain(&[(0x8000, 8, F_WRITE)]);
        assert!(run(&mut b, INFLATE, &t, &m));
        assert!(rec.0.lock().unwrap().is_empty());
        assert_eq!(stats.errors.load(Ordering::Relaxed), 4);
        assert_eq!(t.used_idx(), 4, "every chain goes back to the guest");
    }

    #[test]
    fn reported_ranges_are_freed_when_inside_ram() {
        let m = mem();
        let (mut b, rec, stats) = balloon();
        let mut t = TestQueue::new(&m);
        t.add_chain(&[(0x2_0000, 0x1_0000, F_WRITE), (0x4_0000, 0x2000, F_WRITE)]);
        assert!(run(&mut b, REPORTING, &t, &m));
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![(0x2_0000, 0x1_0000), (0x4_0000, 0x2000)]
        );
        assert_eq!(stats.reported_bytes.load(Ordering::Relaxed), 0x1_2000);
        // Unaligned, past the end of RAM, device-readable: refused whole.
        for bad in [
            (0x2_0800u64, 0x1000u32, F_WRITE),
            (0xf_f000, 0x2000, F_WRITE),
            (0x2_0000, 0x1000, 0),
        ] {
            let mut t = TestQueue::new(&m);
            t.add_chain(&[(0x3_0000, 0x1000, F_WRITE), bad]);
            run(&mut b, REPORTING, &t, &m);
        }
        assert_eq!(rec.0.lock().unwrap().len(), 2);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn target_and_actual_through_config_space() {
        let (mut b, _rec, stats) = balloon();
        b.set_target(1000);
        let mut c = [0u8; 4];
        b.read_config(0, &mut c);
        assert_eq!(u32::from_le_bytes(c), 1000);
        // The driver writes actual; it cannot move the target.
        b.write_config(4, &700u32.to_le_bytes());
        b.write_config(0, &5u32.to_le_bytes());
        b.read_config(0, &mut c);
        assert_eq!(u32::from_le_bytes(c), 1000);
        b.read_config(4, &mut c);
        assert_eq!(u32::from_le_bytes(c), 700);
        assert_eq!(stats.actual_pages.load(Ordering::Relaxed), 700);
        // Byte-wide writes, and ones past the end, are fine.
        b.write_config(7, &[1, 2, 3]);
        assert_eq!(stats.actual_pages.load(Ordering::Relaxed), 700 + (1 << 24));
        b.write_config(u64::MAX, &[1]);
        b.reset();
        assert_eq!(stats.actual_pages.load(Ordering::Relaxed), 0);
        assert_eq!(stats.target_pages.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn dont_need_gives_touched_pages_back_as_zeroes() {
        let m = crate::memory::create_guest_memory(4).unwrap();
        write(&m, 0x10_0000, &[0x5a; 8192]);
        DontNeed.release(&m, 0x10_0000, 4096).unwrap();
        assert_eq!(read(&m, 0x10_0000, 4096), vec![0u8; 4096]);
        assert_eq!(read(&m, 0x10_1000, 4), vec![0x5a; 4]);
    }

    #[test]
    fn garbage_descriptor_tables_never_panic() {
        let m = mem();
        let (mut b, _rec, _stats) = balloon();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..300 {
            let mut t = TestQueue::new(&m);
            t.garbage(&mut seed);
            write(&m, 0x8000, &seed.to_le_bytes().repeat(64));
            run(&mut b, round % 3, &t, &m);
        }
    }
}
