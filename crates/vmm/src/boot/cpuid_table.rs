//! KVM_GET_SUPPORTED_CPUID saved to a file and read back, so that a host's VMMs need not each
//! ask KVM. The answer is the same for every VM on a host until KVM or the host changes, and
//! asking is slow where CPUID traps to an outer hypervisor (each of its leaves is a host CPUID;
//! figure in docs/PERFORMANCE.md, "Figures behind design choices"). vmmd keeps one table per
//! host boot and KVM module state (`vmm --save-cpuid`) and passes it to each VMM (`--cpuid`).
//!
//! Format: the magic `HULLCPU1`, a little-endian u32 entry count, then that many
//! `kvm_cpuid_entry2` records of 40 bytes (function, index, flags, eax, ebx, ecx, edx, three
//! u32 of padding), little-endian.

use std::path::Path;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};

const MAGIC: &[u8; 8] = b"HULLCPU1";
const ENTRY: usize = 40;

/// Errors reading or writing a saved table.
#[derive(Debug, thiserror::Error)]
pub enum CpuidTableError {
    #[error("cannot read the CPUID table {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the CPUID table {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a CPUID table written by `vmm --save-cpuid`: {why}")]
    Malformed { path: String, why: String },
}

/// The table as bytes.
pub fn encode(entries: &[kvm_cpuid_entry2]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + entries.len() * ENTRY);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        for v in [
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx, 0, 0, 0,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Parses a table; `Err` says what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<Vec<kvm_cpuid_entry2>, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("no HULLCPU1 magic")?;
    let (count, body) = rest.split_at_checked(4).ok_or("no entry count")?;
    let count = u32::from_le_bytes(count.try_into().unwrap_or_default()) as usize;
    if count == 0 || count > KVM_MAX_CPUID_ENTRIES {
        return Err(format!(
            "{count} entries (1 to {KVM_MAX_CPUID_ENTRIES} expected)"
        ));
    }
    if body.len() != count * ENTRY {
        return Err(format!(
            "{} bytes of entries for {count} entries of {ENTRY}",
            body.len()
        ));
    }
    Ok(body
        .chunks_exact(ENTRY)
        .map(|c| {
            let w =
                |i: usize| u32::from_le_bytes([c[i * 4], c[i * 4 + 1], c[i * 4 + 2], c[i * 4 + 3]]);
            kvm_cpuid_entry2 {
                function: w(0),
                index: w(1),
                flags: w(2),
                eax: w(3),
                ebx: w(4),
                ecx: w(5),
                edx: w(6),
                padding: [0; 3],
            }
        })
        .collect())
}

/// Reads a table saved by [`save`].
pub fn load(path: &Path) -> Result<CpuId, CpuidTableError> {
    let shown = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| CpuidTableError::Read {
        path: shown(),
        source,
    })?;
    let entries =
        decode(&bytes).map_err(|why| CpuidTableError::Malformed { path: shown(), why })?;
    CpuId::from_entries(&entries).map_err(|e| CpuidTableError::Malformed {
        path: shown(),
        why: format!("{e:?}"),
    })
}

/// Writes `cpuid` to `path` crash-safely (a temporary file in the same directory, fsynced,
/// renamed, then the directory fsynced), so a reader never sees half a table.
pub fn save(path: &Path, cpuid: &CpuId) -> Result<(), CpuidTableError> {
    hull_sys::fs::write_atomic(path, &encode(cpuid.as_slice())).map_err(|e| {
        CpuidTableError::Write {
            path: path.display().to_string(),
            source: e.source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 1,
            eax,
            ebx: 0x6874_7541,
            ecx: 0xdead_beef,
            edx: 7,
            padding: [0; 3],
        }
    }

    #[test]
    fn a_table_survives_the_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cpuid");
        let entries = vec![
            entry(0, 0, 0xd),
            entry(4, 1, 0x121),
            entry(0x4000_0001, 0, 9),
        ];
        save(&path, &CpuId::from_entries(&entries).unwrap()).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.as_slice(), entries.as_slice());
        // Only the table is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn malformed_tables_are_refused_with_the_reason() {
        let good = encode(&[entry(0, 0, 1), entry(1, 0, 2)]);
        assert_eq!(decode(&good).unwrap().len(), 2);
        assert!(decode(b"").unwrap_err().contains("magic"));
        assert!(decode(b"HULLCPU1").unwrap_err().contains("count"));
        assert!(
            decode(&good[..good.len() - 1])
                .unwrap_err()
                .contains("bytes")
        );
        let mut zero = good.clone();
        zero[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode(&zero).unwrap_err().contains("0 entries"));
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(decode(&huge).unwrap_err().contains("100000 entries"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"not a table").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("not a CPUID table"), "{e}");
        let e = load(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
