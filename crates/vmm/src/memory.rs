//! Guest physical address layout and guest RAM. Everything that picks a guest physical
//! address lives here so the layout can be read in one place:
//!
//! ```text
//! 0x0000_0500  GDT            0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack     0x0000_9000  PML4, PDPT (0xa000), PD (0xb000): 1 GiB identity map
//! 0x0002_0000  command line   0x0009_fc00  end of low RAM (EBDA onwards is not RAM)
//! 0x000e_0000  ACPI tables    0x000f_0000  MP table       0x0010_0000  kernel (ELF p_paddr or bzImage code32_start)
//! ...          initrd, at the top of RAM below 0xd000_0000 (or the kernel's limit)
//! 0xd000_0000  virtio-mmio windows, 4 KiB each     0xfec0_0000 IOAPIC   0xfee0_0000 LAPIC
//! 0x1_0000_0000  RAM above the 32-bit gap, for guests bigger than 3.25 GiB
//! ```

use std::io;
use std::ptr::null_mut;

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Guest RAM as this crate uses it.
pub type GuestMemory = GuestMemoryMmap<()>;

pub const GDT_START: u64 = 0x500;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x2_0000;
/// Longest command line (with its NUL) the layout has room for.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area: low RAM ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables (RSDP first, where Linux's legacy scan also finds it) up to the MP table.
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = MPTABLE_START;
pub const MPTABLE_START: u64 = 0xf_0000;
/// The kernel loads at 1 MiB; nothing of ours may sit above this except the initrd.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Each virtio-mmio device gets one window this size.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS on Intel: at the top of the gap, clear of IOAPIC and LAPIC.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// First IRQ for virtio devices (4 is the serial port).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// The IOAPIC has 24 pins.
pub const IRQ_MAX: u32 = 23;

// The fixed boot areas must not overlap; checked at compile time.
const _: () = {
    assert!(GDT_START + 0x48 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(EBDA_START < ACPI_START && ACPI_START < MPTABLE_START);
    assert!(MPTABLE_START < HIMEM_START);
    assert!(KVM_TSS_ADDRESS > LAPIC_START);
};

/// Errors from creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host could not map the guest's RAM.
    #[error("cannot map {mib} MiB of guest memory")]
    Map {
        mib: u64,
        #[source]
        source: io::Error,
    },
    /// vm-memory refused the mapping as a guest region.
    #[error("cannot use the {mib} MiB mapped as guest memory")]
    Region {
        mib: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The huge page size guest RAM is aligned to.
const HUGE_PAGE: usize = 2 << 20;
const RAM_PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
const RAM_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// RAM ranges for a guest of `size` bytes: below the MMIO gap first, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), (size - low) as usize));
    }
    ranges
}

/// Maps guest RAM (anonymous, private, zero-filled, reserved lazily) for huge pages, as QEMU
/// does: each range starts at a 2 MiB-aligned host address, since KVM maps a guest range with
/// one 2 MiB page only where the guest and host addresses agree modulo 2 MiB, and is advised
/// `MADV_HUGEPAGE` (hosts whose transparent huge pages are "madvise", this one's). Without
/// them every 4 KiB the guest first touches costs a nested page fault exit: 65 000 more exits
/// than QEMU's in a cloud image's boot (docs/PERFORMANCE.md).
///
/// The mappings live as long as the process (a VMM's process lives as long as its guest).
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemory, MemoryError> {
    let map_err = |source| MemoryError::Map {
        mib: mem_mib,
        source,
    };
    let region_err = |source: Box<dyn std::error::Error + Send + Sync>| MemoryError::Region {
        mib: mem_mib,
        source,
    };
    let mut regions = Vec::new();
    for (base, size) in ram_ranges(mem_mib << 20) {
        let ptr = map_huge_aligned(size).map_err(map_err)?;
        // SAFETY: `ptr` and `size` are exactly the mapping `map_huge_aligned` just made, with
        // these protections and flags; nothing unmaps it while the process lives.
        let mapping = unsafe { MmapRegion::build_raw(ptr, size, RAM_PROT, RAM_FLAGS) }
            .map_err(|e| region_err(Box::new(e)))?;
        let region = GuestRegionMmap::new(mapping, base)
            .ok_or_else(|| region_err("guest address range overflows".into()))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| region_err(Box::new(e)))
}

/// An anonymous mapping of `size` bytes at a 2 MiB-aligned address, advised for huge pages.
fn map_huge_aligned(size: usize) -> io::Result<*mut u8> {
    let len = size
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new anonymous mapping at an address the kernel picks; it aliases nothing.
    let p = unsafe { libc::mmap(null_mut(), len, RAM_PROT, RAM_FLAGS, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = p as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let head = aligned - start;
    let tail = len - head - size;
    // SAFETY: the head and tail are parts of the mapping just made that nothing uses; what
    // stays is [aligned, aligned + size).
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    // Advice only: a host without transparent huge pages refuses it and RAM works the same.
    // SAFETY: the range is the mapping made above.
    unsafe { libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
    Ok(aligned as *mut u8)
}

/// End of RAM below the MMIO gap.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_fit_below_the_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn ram_is_huge_page_aligned_and_zeroed() {
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let mem = create_guest_memory(6).unwrap();
        for r in mem.iter() {
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap();
            assert_eq!(host as usize % HUGE_PAGE, 0);
            assert_eq!(r.len(), 6 << 20);
        }
        let mut b = [1u8; 8];
        mem.read_slice(&mut b, GuestAddress((6 << 20) - 8)).unwrap();
        assert_eq!(b, [0; 8]);
        mem.write_slice(&[7; 8], GuestAddress(4096)).unwrap();
        mem.read_slice(&mut b, GuestAddress(4096)).unwrap();
        assert_eq!(b, [7; 8]);
    }

    #[test]
    fn big_guests_split_around_the_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }
}
