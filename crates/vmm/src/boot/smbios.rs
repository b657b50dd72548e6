//! SMBIOS 3.0 tables: how a guest (cloud-init, SmartOS's guest tools, `dmidecode`) learns
//! what it runs on. Type 0 (firmware: a virtual machine), type 1 (system: manufacturer
//! "Joyent", product "SmartDC HVM", family "Virtual Machine", serial number and uuid the VM's
//! uuid, as SmartOS's KVM gives them) and the end-of-table marker, behind a 64-bit entry
//! point at [`SMBIOS_START`], where Linux looks for one on a machine without EFI (a 16-byte
//! aligned `_SM3_` anywhere in 0xF0000-0xFFFFF).

use vm_memory::{Bytes, GuestAddress};

use crate::memory::{GuestMemory, MPTABLE_START};

/// The entry point's guest address: above the MP table, below 1 MiB.
pub const SMBIOS_START: u64 = MPTABLE_START + 0x8000;
/// Where the structure table starts, after the 24-byte entry point.
const TABLE_OFFSET: u64 = 0x20;

pub const MANUFACTURER: &str = "Joyent";
pub const PRODUCT: &str = "SmartDC HVM";
pub const FAMILY: &str = "Virtual Machine";

/// Errors from the SMBIOS tables.
#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    #[error("{0:?} is not a uuid (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
    Uuid(String),
    #[error("cannot write the SMBIOS tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The 16 bytes of a uuid in its text form, in text order.
pub fn uuid_bytes(s: &str) -> Result<[u8; 16], SmbiosError> {
    let bad = || SmbiosError::Uuid(s.to_owned());
    let groups: Vec<&str> = s.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return Err(bad());
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        if !pair.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *b = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// One structure: its formatted part (type, length and handle filled in here) and strings.
fn structure(kind: u8, handle: u16, body: &[u8], strings: &[&str]) -> Vec<u8> {
    let mut out = vec![kind, (4 + body.len()) as u8];
    out.extend_from_slice(&handle.to_le_bytes());
    out.extend_from_slice(body);
    for s in strings {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    if strings.is_empty() {
        out.push(0);
    }
    out.push(0);
    out
}

/// The structure table and its entry point, for an entry point at guest address `base`.
pub fn build(base: u64, uuid: Option<[u8; 16]>) -> Vec<u8> {
    let mut table = Vec::new();
    // Type 0, BIOS information: strings 1 vendor, 2 version, 3 release date.
    let mut t0 = vec![1, 2];
    t0.extend_from_slice(&0u16.to_le_bytes()); // no BIOS starting segment
    t0.push(3);
    t0.push(0); // ROM size
    t0.extend_from_slice(&(1u64 << 3).to_le_bytes()); // characteristics not supported
    t0.push(0); // extension byte 1
    t0.push(1 << 4); // extension byte 2: this is a virtual machine
    t0.extend_from_slice(&[0, 0, 0xff, 0xff]); // BIOS 0.0, no embedded controller
    table.extend(structure(
        0,
        0,
        &t0,
        &["hull", env!("CARGO_PKG_VERSION"), "01/01/2026"],
    ));
    // Type 1, system information: strings 1 manufacturer, 2 product, 3 version, 4 serial,
    // 5 SKU, 6 family. SMBIOS 2.6 and later store the uuid's first three fields little
    // endian, which is how Linux reads them back into the text form.
    let text = uuid.map(|u| {
        let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    });
    let mut wire = uuid.unwrap_or([0; 16]);
    wire[..4].reverse();
    wire[4..6].reverse();
    wire[6..8].reverse();
    let mut t1 = vec![1, 2, 3, 4];
    t1.extend_from_slice(&wire);
    t1.extend_from_slice(&[6, 5, 6]); // woken by the power switch; SKU; family
    let serial = text.as_deref().unwrap_or("");
    table.extend(structure(
        1,
        1,
        &t1,
        &[
            MANUFACTURER,
            PRODUCT,
            "hull",
            serial,
            "hull-microvm",
            FAMILY,
        ],
    ));
    table.extend(structure(127, 2, &[], &[]));

    let mut entry = Vec::with_capacity(24);
    entry.extend_from_slice(b"_SM3_");
    entry.push(0); // checksum, below
    entry.push(0x18);
    entry.extend_from_slice(&[3, 0, 0]); // SMBIOS 3.0.0
    entry.push(1); // entry point revision
    entry.push(0);
    entry.extend_from_slice(&(table.len() as u32).to_le_bytes());
    entry.extend_from_slice(&(base + TABLE_OFFSET).to_le_bytes());
    let sum = entry.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    entry[5] = sum.wrapping_neg();

    let mut out = entry;
    out.resize(TABLE_OFFSET as usize, 0);
    out.extend(table);
    out
}

/// Writes the tables into guest memory at [`SMBIOS_START`].
pub fn setup(mem: &GuestMemory, uuid: Option<[u8; 16]>) -> Result<(), SmbiosError> {
    mem.write_slice(&build(SMBIOS_START, uuid), GuestAddress(SMBIOS_START))
        .map_err(SmbiosError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings_of(table: &[u8], at: usize) -> (Vec<String>, usize) {
        let mut p = at + table[at + 1] as usize;
        let mut out = Vec::new();
        loop {
            let end = p + table[p..].iter().position(|b| *b == 0).expect("NUL");
            if end == p {
                // The set ends with a second NUL (or, with no strings, two).
                let next = if out.is_empty() { p + 2 } else { p + 1 };
                return (out, next);
            }
            out.push(String::from_utf8(table[p..end].to_vec()).expect("text"));
            p = end + 1;
        }
    }

    #[test]
    fn the_entry_point_sums_to_zero_and_points_at_the_table() {
        let t = build(SMBIOS_START, None);
        assert_eq!(&t[..5], b"_SM3_");
        assert_eq!(t[..24].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let len = u32::from_le_bytes(t[12..16].try_into().expect("4")) as usize;
        let addr = u64::from_le_bytes(t[16..24].try_into().expect("8"));
        assert_eq!(addr, SMBIOS_START + TABLE_OFFSET);
        assert_eq!(t.len(), TABLE_OFFSET as usize + len);
        assert!(SMBIOS_START + t.len() as u64 <= 0x10_0000);
        assert_eq!(SMBIOS_START % 16, 0, "Linux scans 16-byte steps");
    }

    #[test]
    fn the_system_is_smartdc_hvm_with_the_vms_uuid() {
        let text = "9f4c2d1e-0a0b-4c0d-8e0f-102030405060";
        let uuid = uuid_bytes(text).expect("uuid");
        let t = build(SMBIOS_START, Some(uuid));
        let table = &t[TABLE_OFFSET as usize..];
        assert_eq!(table[0], 0, "type 0 first");
        let (s0, next) = strings_of(table, 0);
        assert_eq!(s0[0], "hull");
        assert_eq!(table[0x13] & (1 << 4), 1 << 4, "a virtual machine");
        assert_eq!(table[next], 1, "then type 1");
        let t1 = &table[next..];
        assert_eq!(t1[1], 0x1b, "the SMBIOS 2.4+ length of type 1");
        let (s1, end) = strings_of(table, next);
        assert_eq!(
            s1,
            [MANUFACTURER, PRODUCT, "hull", text, "hull-microvm", FAMILY]
        );
        assert_eq!(&t1[4..8], &[1, 2, 3, 4], "string numbers");
        assert_eq!(
            &t1[8..12],
            &[0x1e, 0x2d, 0x4c, 0x9f],
            "time_low little endian"
        );
        assert_eq!(&t1[12..14], &[0x0b, 0x0a]);
        assert_eq!(&t1[14..16], &[0x0d, 0x4c]);
        assert_eq!(&t1[16..24], &uuid[8..]);
        assert_eq!(&table[end..end + 2], &[127, 4], "then the end marker");
        assert_eq!(table.len(), end + 6);
    }

    #[test]
    fn uuids_must_be_whole() {
        assert!(uuid_bytes("9f4c2d1e-0a0b-4c0d-8e0f-102030405060").is_ok());
        for bad in [
            "",
            "9f4c2d1e0a0b4c0d8e0f102030405060",
            "9f4c2d1e-0a0b-4c0d-8e0f-10203040506",
            "9f4c2d1e-0a0b-4c0d-8e0f-1020304050zz",
            "+f4c2d1e-0a0b-4c0d-8e0f-102030405060",
        ] {
            assert!(uuid_bytes(bad).is_err(), "{bad}");
        }
    }
}
