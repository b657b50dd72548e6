//! CPUID the guest sees: KVM_GET_SUPPORTED_CPUID with the topology rewritten per vCPU (APIC
//! id, logical processor counts, leaf 0xb/0x1f levels, cache sharing) and the hypervisor bit
//! set. Each vCPU is presented as one core of one package.

use kvm_bindings::kvm_cpuid_entry2;

const AMD_EBX: u32 = 0x6874_7541; // "Auth" of AuthenticAMD
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to hold `n - 1` (the APIC id shift for a level of `n` units).
fn shift_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites `entries` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`.
pub fn filter(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8) {
    let apic = u32::from(id);
    let n = u32::from(count);
    let amd = entries.iter().any(|e| e.function == 0 && e.ebx == AMD_EBX);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | (n.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in 31:26; L3 (level 3) is shared by all.
                let level = (e.eax >> 5) & 7;
                let sharing = if level == 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((n - 1).min(63) << 26) | ((sharing & 0xfff) << 14);
            }
            0xb | 0x1f => {
                e.edx = apic;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = shift_for(n);
                        e.ebx = n;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 if amd => {
                e.ecx = (e.ecx & !0xf0ff) | (n - 1).min(255) | (shift_for(n) << 12);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    #[test]
    fn topology_is_per_vcpu() {
        let mut e = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        filter(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2].eax, 2);
        assert_eq!(e[2].ebx, 4);
        assert_eq!(e[2].ecx >> 8, LEVEL_CORE);
        assert_eq!(e[3].ecx, 2);
    }

    #[test]
    fn shifts() {
        assert_eq!(shift_for(1), 0);
        assert_eq!(shift_for(2), 1);
        assert_eq!(shift_for(3), 2);
        assert_eq!(shift_for(4), 2);
        assert_eq!(shift_for(64), 6);
    }
}
