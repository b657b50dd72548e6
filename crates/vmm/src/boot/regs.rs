//! vCPU state for the 64-bit Linux boot protocol: GDT and identity page tables in guest
//! memory, segment and control registers for long mode, general registers (entry point, zero
//! page in %rsi), FPU, boot MSRs and the LAPIC's LINT pins.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::{
    BOOT_STACK_POINTER, GDT_START, GuestMemory, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START,
};

/// The Linux boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18.
const GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 0x10: 64-bit code
    gdt_entry(0xc093, 0, 0xfffff), // 0x18: data
    gdt_entry(0x808b, 0, 0xfffff), // 0x20: TSS
];
const CODE_INDEX: usize = 2;
const DATA_INDEX: usize = 3;
const TSS_INDEX: usize = 4;
const IDT_START: u64 = GDT_START + 0x40;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors from setting up a vCPU's boot state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT or page tables into guest memory failed.
    #[error("cannot write the boot {0} into guest memory")]
    GuestWrite(&'static str, #[source] vm_memory::GuestMemoryError),
    /// A KVM ioctl for vCPU state failed.
    #[error("cannot set vCPU {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// KVM did not take all boot MSRs.
    #[error("KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
}

/// Encodes a GDT descriptor from flags (access byte low, granularity nibble high), base, limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << (56 - 24))
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << (48 - 16))
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

/// The KVM view of GDT entry `index`.
pub fn segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and a 1 GiB identity map (2 MiB pages) into guest memory.
/// Shared by all vCPUs.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), RegsError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(|e| RegsError::GuestWrite("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|e| RegsError::GuestWrite("IDT", e))?;
    let pt = |e| RegsError::GuestWrite("page tables", e);
    mem.write_obj(PDPTE_START | 3, GuestAddress(PML4_START))
        .map_err(pt)?;
    mem.write_obj(PDE_START | 3, GuestAddress(PDPTE_START))
        .map_err(pt)?;
    // One write of the whole page directory: 512 write_obj calls each walk the regions.
    let mut pd = [0u8; 4096];
    for (i, e) in pd.chunks_exact_mut(8).enumerate() {
        e.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PDE_START)).map_err(pt)?;
    Ok(())
}

/// Puts a vCPU in 64-bit mode at `entry` with %rsi pointing at the zero page.
pub fn setup_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(|e| RegsError::Kvm("sregs", e))?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let code = segment_from_gdt(GDT[CODE_INDEX], CODE_INDEX);
    let data = segment_from_gdt(GDT[DATA_INDEX], DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(GDT[TSS_INDEX], TSS_INDEX);
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("sregs", e))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Kvm("regs", e))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("FPU", e))?;
    Ok(())
}

/// Boot MSRs every vCPU gets (all except TSC start at 0).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
}

/// Sets the boot MSRs; all must be accepted.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("MSRs", e))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let Some(slot) = regs.get_mut(offset..offset + 4) else {
        return;
    };
    let mut bytes = [0u8; 4];
    for (b, s) in bytes.iter_mut().zip(slot.iter()) {
        *b = *s as u8;
    }
    let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (s, b) in slot.iter_mut().zip(v.to_le_bytes()) {
        *s = b as std::os::raw::c_char;
    }
}

/// LINT0 delivers the PIC's ExtINT, LINT1 NMIs: what an SMP Linux expects from the BIOS.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(|e| RegsError::Kvm("LAPIC", e))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit() {
        let s = segment_from_gdt(GDT[CODE_INDEX], CODE_INDEX);
        assert_eq!(s.l, 1);
        assert_eq!(s.db, 0);
        assert_eq!(s.present, 1);
        assert_eq!(s.selector, 0x10);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.type_, 0xb);
        let d = segment_from_gdt(GDT[DATA_INDEX], DATA_INDEX);
        assert_eq!(d.selector, 0x18);
        assert_eq!(d.db, 1);
        assert_eq!(d.type_, 0x3);
    }

    #[test]
    fn boot_tables_map_the_first_gib() {
        let mem = crate::memory::create_guest_memory(16).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn lvt_mode_keeps_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x10;
        regs[APIC_LVT0 + 1] = 0x01; // mask bit 16? no: bit 8 set, replaced below
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x10);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
    }
}
