//! CPUID the guest sees: KVM_GET_SUPPORTED_CPUID with the topology rewritten per vCPU (APIC
//! id, logical processor counts, leaf 0xb/0x1f levels, cache sharing) and the hypervisor bit
//! set, and the TSC-deadline timer offered where KVM emulates it (KVM_GET_SUPPORTED_CPUID
//! leaves that bit to the VMM; without it a guest programs the LAPIC timer by its initial count
//! and reads the current count back, which costs it more exits than one deadline MSR write).
//! Each vCPU is presented as one core of one package. Where KVM offers no XSAVE, the
//! features whose state only XSAVE manages (AVX and its kin, PKU, MPX) are withdrawn as
//! well, as Linux itself does when it clears XSAVE: a guest that saw AVX without XSAVE would
//! run AVX code with YMM disabled in XCR0 and fault (`#UD`) in the first module using it.

use kvm_bindings::kvm_cpuid_entry2;

const AMD_EBX: u32 = 0x6874_7541; // "Auth" of AuthenticAMD
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
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

/// Leaf 1 ECX: FMA, XSAVE, OSXSAVE, AVX, F16C.
const L1_ECX_FMA: u32 = 1 << 12;
const L1_ECX_XSAVE: u32 = 1 << 26;
const L1_ECX_OSXSAVE: u32 = 1 << 27;
const L1_ECX_AVX: u32 = 1 << 28;
const L1_ECX_F16C: u32 = 1 << 29;
/// Leaf 7.0 EBX: AVX2, MPX and the AVX-512 family.
const L7_EBX_NEEDS_XSAVE: u32 = (1 << 5) // AVX2
    | (1 << 14) // MPX
    | (1 << 16) // AVX512F
    | (1 << 17) // AVX512DQ
    | (1 << 21) // AVX512_IFMA
    | (1 << 26) // AVX512PF
    | (1 << 27) // AVX512ER
    | (1 << 28) // AVX512CD
    | (1 << 30) // AVX512BW
    | (1 << 31); // AVX512VL
/// Leaf 7.0 ECX: AVX512_VBMI, PKU, OSPKE, AVX512_VBMI2, VAES, VPCLMULQDQ, AVX512_VNNI,
/// AVX512_BITALG, AVX512_VPOPCNTDQ.
const L7_ECX_NEEDS_XSAVE: u32 = (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 6)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 14);
/// Leaf 7.0 EDX: AVX512_4VNNIW, AVX512_4FMAPS, AVX512_VP2INTERSECT, AMX_BF16, AVX512_FP16,
/// AMX_TILE, AMX_INT8.
const L7_EDX_NEEDS_XSAVE: u32 =
    (1 << 2) | (1 << 3) | (1 << 8) | (1 << 22) | (1 << 23) | (1 << 24) | (1 << 25);
/// Leaf 7.1 EAX: AVX_VNNI, AVX512_BF16.
const L7_1_EAX_NEEDS_XSAVE: u32 = (1 << 4) | (1 << 5);
/// Leaf 0x8000_0001 ECX (AMD): XOP, FMA4.
const LX1_ECX_NEEDS_XSAVE: u32 = (1 << 11) | (1 << 16);

/// Withdraws what needs XSAVE when `entries` offer no XSAVE; leaf 0xD then describes nothing.
fn without_xsave(entries: &mut [kvm_cpuid_entry2]) {
    let has_xsave = entries
        .iter()
        .any(|e| e.function == 1 && e.ecx & L1_ECX_XSAVE != 0);
    if has_xsave {
        return;
    }
    for e in entries.iter_mut() {
        match (e.function, e.index) {
            (1, _) => e.ecx &= !(L1_ECX_FMA | L1_ECX_OSXSAVE | L1_ECX_AVX | L1_ECX_F16C),
            (7, 0) => {
                e.ebx &= !L7_EBX_NEEDS_XSAVE;
                e.ecx &= !L7_ECX_NEEDS_XSAVE;
                e.edx &= !L7_EDX_NEEDS_XSAVE;
            }
            (7, 1) => e.eax &= !L7_1_EAX_NEEDS_XSAVE,
            (0xd, _) => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            (0x8000_0001, _) => e.ecx &= !LX1_ECX_NEEDS_XSAVE,
            _ => {}
        }
    }
}

/// Rewrites `entries` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`;
/// `tsc_deadline` says whether KVM has KVM_CAP_TSC_DEADLINE_TIMER.
pub fn filter(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8, tsc_deadline: bool) {
    without_xsave(entries);
    let apic = u32::from(id);
    let n = u32::from(count);
    let amd = entries.iter().any(|e| e.function == 0 && e.ebx == AMD_EBX);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | (n.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
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
        filter(&mut e, 3, 4, true);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
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

    fn cpu(leaf1_ecx: u32) -> Vec<kvm_cpuid_entry2> {
        let e = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        vec![
            e(1, 0, 0, 0, leaf1_ecx, 0),
            e(7, 0, 0, u32::MAX, u32::MAX, u32::MAX),
            e(7, 1, u32::MAX, 0, 0, 0),
            e(0xd, 0, 0x207, 0x340, 0xa88, 0),
            e(0xd, 2, 0x100, 0x240, 0, 0),
            e(0x8000_0001, 0, 0, 0, u32::MAX, 0),
        ]
    }

    #[test]
    fn without_xsave_the_features_it_manages_are_withdrawn() {
        // SSE4.2 (bit 20) and AES (bit 25) need no XSAVE; FMA, AVX, F16C do.
        let sse42_aes = (1 << 20) | (1 << 25);
        let mut e = cpu(sse42_aes | L1_ECX_FMA | L1_ECX_AVX | L1_ECX_F16C);
        filter(&mut e, 0, 1, false);
        assert_eq!(e[0].ecx, sse42_aes | ECX_HYPERVISOR);
        assert_eq!(e[1].ebx, !L7_EBX_NEEDS_XSAVE);
        assert_eq!(e[1].ebx & (1 << 5), 0, "AVX2");
        assert_ne!(e[1].ebx & (1 << 3), 0, "BMI1 stays");
        assert_eq!(e[1].ecx & ((1 << 3) | (1 << 9)), 0, "PKU, VAES");
        assert_eq!(e[1].edx, !L7_EDX_NEEDS_XSAVE);
        assert_eq!(e[2].eax, !L7_1_EAX_NEEDS_XSAVE);
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx, e[4].eax), (0, 0, 0, 0));
        assert_eq!(e[5].ecx & ((1 << 11) | (1 << 16)), 0, "XOP, FMA4");
        assert_ne!(e[5].ecx & 1, 0, "LAHF stays");
    }

    #[test]
    fn with_xsave_nothing_is_withdrawn() {
        let ecx = L1_ECX_XSAVE | L1_ECX_FMA | L1_ECX_AVX | L1_ECX_F16C;
        let mut e = cpu(ecx);
        let before: Vec<_> = e.iter().map(|x| (x.eax, x.ebx, x.ecx, x.edx)).collect();
        filter(&mut e, 0, 1, false);
        assert_eq!(e[0].ecx, ecx | ECX_HYPERVISOR);
        for (a, b) in e.iter().zip(before).skip(1) {
            assert_eq!(
                (a.eax, a.ebx, a.ecx, a.edx),
                b,
                "leaf {:#x}.{}",
                a.function,
                a.index
            );
        }
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
