//! Serial output without a VM exit per byte, while the guest drives the UART by polling.
//!
//! Every exit to user space costs a KVM_RUN round trip, and on a nested host the MSR accesses
//! of `vcpu_load`/`vcpu_put` trap to the outer hypervisor (the cost per byte is in
//! docs/PERFORMANCE.md, "Figures behind design choices"). KVM can queue port writes in its
//! coalesced I/O ring instead, which the VMM empties later. That is safe for the transmit
//! register only as long as the guest does not wait for what such a write would have caused at
//! once, that is, a transmit-empty or loopback receive interrupt. So:
//!
//! - the ring covers the transmit register (0x3f8) from the start, and KVM queues those
//!   writes (the divisor latch shares the port and is queued too, in order);
//! - every exit of every vCPU first empties the ring into the UART, so any other UART access
//!   (a status poll, a control write) sees the bytes before it, in program order;
//! - the first write that enables a UART interrupt (IER non-zero) or loopback (MCR bit 4)
//!   ends batching for good: the zone is unregistered and the ring emptied before that write
//!   reaches the UART. Linux's 8250 driver does that when it probes the port;
//! - the event loop also empties the ring every [`IDLE_DRAIN`] while batching is on, for a
//!   guest that writes and then runs without exits (spins, or halts for good).
//!
//! A full ring makes KVM exit as before, so no byte is ever lost.

use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{KVM_COALESCED_MMIO_PAGE_OFFSET, kvm_coalesced_mmio};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};

use super::{COM1_BASE, Serial};
use crate::bus::{BusDevice, lock};
use crate::stats::Stats;

/// How often the event loop empties the ring while batching is on.
pub const IDLE_DRAIN: Duration = Duration::from_millis(20);

/// The UART's interrupt enable and modem control registers, as ports.
const IER: u16 = COM1_BASE as u16 + 1;
const MCR: u16 = COM1_BASE as u16 + 4;
const MCR_LOOP: u8 = 0x10;

/// Whether a write of `value` to `port` ends batching: it enables a UART interrupt or
/// loopback, after which the guest may wait for the effect of each transmitted byte.
pub fn ends_batching(port: u16, value: u8) -> bool {
    (port == IER && value != 0) || (port == MCR && value & MCR_LOOP != 0)
}

/// The ring page KVM shares through a vCPU fd: `first` (ours), `last` (KVM's), then entries.
struct RingPage {
    base: NonNull<u8>,
    len: usize,
    entries: u32,
}

// SAFETY: the page is process-wide shared memory; `first` and `last` are accessed atomically
// and entries only below `last`, which KVM has finished writing (see `Ring::drain`).
unsafe impl Send for RingPage {}
// SAFETY: as above; consumers are serialised by `TxBatch::consume`.
unsafe impl Sync for RingPage {}

impl RingPage {
    fn map(vcpu: RawFd) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let len = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("no page size"))?;
        let offset = libc::off_t::try_from(KVM_COALESCED_MMIO_PAGE_OFFSET as usize * len)
            .map_err(|_| std::io::Error::other("ring offset"))?;
        // SAFETY: maps the coalesced I/O page of a live vCPU fd, shared with the kernel; the
        // mapping is checked and owned by the returned value.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu,
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let entries = ((len - 8) / std::mem::size_of::<kvm_coalesced_mmio>()) as u32;
        Ok(RingPage {
            base: NonNull::new(p.cast()).ok_or_else(|| std::io::Error::other("null map"))?,
            len,
            entries,
        })
    }

    fn first(&self) -> &AtomicU32 {
        // SAFETY: offset 0 of the page-aligned mapping, aligned for u32 and live for `self`.
        unsafe { &*self.base.as_ptr().cast::<AtomicU32>() }
    }

    fn last(&self) -> &AtomicU32 {
        // SAFETY: offset 4 of the mapping, aligned for u32 and live for `self`.
        unsafe { &*self.base.as_ptr().add(4).cast::<AtomicU32>() }
    }

    fn entry(&self, i: u32) -> kvm_coalesced_mmio {
        debug_assert!(i < self.entries);
        let at = 8 + i as usize * std::mem::size_of::<kvm_coalesced_mmio>();
        // SAFETY: `i` is below the ring's entry count, so the entry lies inside the mapping;
        // KVM wrote it before publishing `last` past it. Read unaligned-safe and by value.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(at).cast::<kvm_coalesced_mmio>()) }
    }
}

impl Drop for RingPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Batched transmit-register writes of COM1, shared by the vCPUs and the event loop.
pub struct TxBatch {
    vm: Arc<VmFd>,
    ring: RingPage,
    serial: Arc<Mutex<Serial>>,
    consume: Mutex<()>,
    active: AtomicBool,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for TxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxBatch")
            .field("active", &self.active())
            .finish()
    }
}

impl TxBatch {
    /// Starts batching, or returns `None` where KVM has no coalesced port I/O (every exit
    /// then reaches the UART directly, as before).
    pub fn start(
        kvm: &Kvm,
        vm: &Arc<VmFd>,
        vcpu: &VcpuFd,
        serial: Arc<Mutex<Serial>>,
        stats: Arc<Stats>,
    ) -> Option<Arc<Self>> {
        if !kvm.check_extension(Cap::CoalescedPio) {
            return None;
        }
        let ring = RingPage::map(vcpu.as_raw_fd()).ok()?;
        vm.register_coalesced_mmio(IoEventAddress::Pio(COM1_BASE), 1)
            .ok()?;
        Some(Arc::new(TxBatch {
            vm: vm.clone(),
            ring,
            serial,
            consume: Mutex::new(()),
            active: AtomicBool::new(true),
            stats,
        }))
    }

    /// Whether KVM still queues transmit writes.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Hands every queued byte to the UART, oldest first.
    pub fn drain(&self) {
        let ring = &self.ring;
        if ring.first().load(Ordering::Relaxed) == ring.last().load(Ordering::Acquire) {
            return;
        }
        let _one = lock(&self.consume);
        let mut first = ring.first().load(Ordering::Relaxed);
        let last = ring.last().load(Ordering::Acquire);
        if first >= ring.entries || last >= ring.entries {
            // Not a state KVM produces; ignore the ring rather than read outside it.
            return;
        }
        let mut serial = lock(&self.serial);
        while first != last {
            let e = ring.entry(first);
            // SAFETY: reading a plain u32 member of a union KVM filled.
            let pio = unsafe { e.__bindgen_anon_1.pio };
            if pio == 1 && e.phys_addr == COM1_BASE && (1..=8).contains(&e.len) {
                serial.write(0, &e.data[..e.len as usize]);
                self.stats.serial_batched.fetch_add(1, Ordering::Relaxed);
            }
            first = (first + 1) % ring.entries;
            // Frees the slot for KVM.
            ring.first().store(first, Ordering::Release);
        }
    }

    /// Ends batching: from here on every transmit write exits. Called on a vCPU before the
    /// write that enables an interrupt reaches the UART.
    pub fn end(&self) {
        if !self.active.swap(false, Ordering::AcqRel) {
            return;
        }
        // Should unregistering fail, KVM keeps queueing and the exits and the event loop keep
        // emptying the ring: late interrupts, never lost bytes.
        if self
            .vm
            .unregister_coalesced_mmio(IoEventAddress::Pio(COM1_BASE), 1)
            .is_err()
        {
            self.active.store(true, Ordering::Release);
        }
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interrupt_or_loopback_enables_end_batching() {
        assert!(ends_batching(0x3f9, 0x02));
        assert!(ends_batching(0x3f9, 0x01));
        assert!(!ends_batching(0x3f9, 0));
        assert!(ends_batching(0x3fc, 0x1b));
        assert!(!ends_batching(0x3fc, 0x0b));
        assert!(!ends_batching(0x3f8, 0xff));
        assert!(!ends_batching(0x3fb, 0x80));
    }
}
