//! The Intel MultiProcessor Specification 1.4 table: how an SMP guest (and the test guest)
//! learns how many CPUs there are, their APIC ids, the IOAPIC and the ISA IRQ routing, without
//! ACPI. Written at [`MPTABLE_START`], inside the BIOS area Linux scans.

use vm_memory::{Bytes, GuestAddress};

use crate::memory::{GuestMemory, IOAPIC_START, IRQ_MAX, LAPIC_START, MPTABLE_START};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature and FPU|APIC feature flags: what Linux expects of a modern CPU here.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// End of the BIOS area the table must fit in.
const BIOS_END: u64 = 0x10_0000;

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Too many vCPUs for the space below 1 MiB.
    #[error("MP table for {0} vCPUs does not fit below 1 MiB")]
    TooBig(u8),
    /// Guest memory rejected the write.
    #[error("cannot write the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer and configuration table for `vcpus` CPUs, as bytes to be
/// placed at `base`.
pub fn build(base: u64, vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[3, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HULL    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);
    mpf.extend_from_slice(&table);
    mpf
}

/// Writes the MP table for `vcpus` CPUs into guest memory.
pub fn setup(mem: &GuestMemory, vcpus: u8) -> Result<(), MpTableError> {
    let bytes = build(MPTABLE_START, vcpus);
    if MPTABLE_START + bytes.len() as u64 > BIOS_END {
        return Err(MpTableError::TooBig(vcpus));
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts_are_right() {
        for vcpus in [1u8, 2, 64] {
            let t = build(MPTABLE_START, vcpus);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_START + 16);
            let cfg = &t[16..];
            let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(sum(cfg), 0);
            let mut cpus = 0;
            let mut bsp = 0;
            let mut off = 44;
            while off < len {
                if cfg[off] == 0 {
                    cpus += 1;
                    bsp += usize::from(cfg[off + 3] & CPU_BSP != 0);
                    off += 20;
                } else {
                    off += 8;
                }
            }
            assert_eq!(cpus, usize::from(vcpus));
            assert_eq!(bsp, 1);
        }
    }

    #[test]
    fn largest_table_fits_below_1mib() {
        let mem = crate::memory::create_guest_memory(16).unwrap();
        setup(&mem, crate::config::MAX_VCPUS).unwrap();
    }
}
