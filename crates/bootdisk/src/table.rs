//! Partition tables: GPT (primary header only) and MBR primary entries, or no table at all.

use std::fmt;

use crate::bytes::{byte, le32, le64};
use crate::crc::crc32;
use crate::disk::{self, Disk, ReadError};

/// Most GPT entries read (sfdisk and parted write 128).
pub const MAX_GPT_ENTRIES: u32 = 256;

const GPT_SIGNATURE: &[u8] = b"EFI PART";
/// Logical sector sizes a GPT header is looked for with: 512, then 4Kn.
const SECTOR_SIZES: [u64; 2] = [512, 4096];
const MBR_SECTOR: u64 = 512;
const EXT_MAGIC_OFFSET: usize = 1024 + 0x38;

/// One partition, or the whole disk when it has no partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The number Linux gives it (`vda3` is 3): its slot in the GPT entry array or the MBR,
    /// from 1. 0 is the whole disk of a disk with no partition table.
    pub index: u32,
    /// Offset of its first byte on the disk.
    pub start: u64,
    /// Its size in bytes.
    pub len: u64,
    /// GPT partition type GUID, as stored (mixed-endian).
    pub type_guid: Option<[u8; 16]>,
    /// MBR partition type byte.
    pub mbr_type: Option<u8>,
    /// GPT partition name; empty for MBR.
    pub name: String,
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == 0 {
            f.write_str("the whole disk")
        } else {
            write!(f, "partition {}", self.index)
        }
    }
}

/// Why a partition table was refused.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the read limit was reached while reading the partition table")]
    ReadLimit,
    #[error("GPT header: {0}")]
    Gpt(String),
    #[error(
        "partition {index} extends past the end of the disk (its end is byte {end}, the disk has {disk})"
    )]
    PastEnd { index: u32, end: u128, disk: u64 },
    #[error("partition {index} ends before it starts (first LBA {first}, last LBA {last})")]
    Reversed { index: u32, first: u64, last: u64 },
}

fn read(disk: &dyn Disk, buf: &mut [u8], offset: u64) -> Result<(), TableError> {
    Ok(disk::read_at(disk, buf, offset).map_err(|_| TableError::ReadLimit)??)
}

/// The partitions of `disk`: the GPT's (when LBA 1, or LBA 1 of 4 KiB sectors, says
/// `EFI PART`), else the MBR's primary entries, else the whole disk as one partition with
/// index 0. Extended MBR partitions are skipped. Every partition lies within the disk or
/// this is an error naming it.
pub fn partitions(disk: &dyn Disk) -> Result<Vec<Partition>, TableError> {
    let size = disk.len();
    let head_len = size.min(8192) as usize;
    let mut head = vec![0u8; head_len];
    read(disk, &mut head, 0)?;
    for ss in SECTOR_SIZES {
        let at = ss as usize;
        if head.get(at..at + GPT_SIGNATURE.len()) == Some(GPT_SIGNATURE) {
            return gpt(disk, &head, ss);
        }
    }
    if let Some(parts) = mbr(&head, size)? {
        return Ok(parts);
    }
    Ok(vec![Partition {
        index: 0,
        start: 0,
        len: size,
        type_guid: None,
        mbr_type: None,
        name: String::new(),
    }])
}

fn gpt(disk: &dyn Disk, head: &[u8], ss: u64) -> Result<Vec<Partition>, TableError> {
    let bad = |why: String| TableError::Gpt(why);
    let at = ss as usize;
    let hdr = head
        .get(at..at + ss as usize)
        .ok_or_else(|| bad("the disk ends inside it".into()))?;
    let hsize = le32(hdr, 12) as usize;
    if hsize < 92 || hsize > hdr.len() {
        return Err(bad(format!(
            "header size {hsize} is not between 92 and {ss}"
        )));
    }
    let mut copy = hdr.get(..hsize).unwrap_or_default().to_vec();
    let stored = le32(&copy, 16);
    if let Some(field) = copy.get_mut(16..20) {
        field.fill(0);
    }
    let computed = crc32(&copy);
    if stored != computed {
        return Err(bad(format!(
            "header CRC32 is {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let my_lba = le64(hdr, 24);
    if my_lba != 1 {
        return Err(bad(format!(
            "the primary header says it is at LBA {my_lba}, not 1"
        )));
    }
    let entries_lba = le64(hdr, 72);
    let count = le32(hdr, 80);
    let esize = le32(hdr, 84);
    let entries_crc = le32(hdr, 88);
    if count > MAX_GPT_ENTRIES {
        return Err(bad(format!(
            "{count} partition entries, more than {MAX_GPT_ENTRIES}"
        )));
    }
    if !(128..=1024).contains(&esize) || !esize.is_multiple_of(8) {
        return Err(bad(format!(
            "partition entry size {esize} is not 128..=1024 bytes"
        )));
    }
    let total = count as usize * esize as usize;
    let offset = entries_lba
        .checked_mul(ss)
        .filter(|off| {
            off.checked_add(total as u64)
                .is_some_and(|end| end <= disk.len())
        })
        .ok_or_else(|| {
            bad(format!(
                "the partition entries at LBA {entries_lba} lie past the end of the disk"
            ))
        })?;
    let mut entries = vec![0u8; total];
    read(disk, &mut entries, offset)?;
    let computed = crc32(&entries);
    if entries_crc != computed {
        return Err(bad(format!(
            "partition entry array CRC32 is {entries_crc:#010x}, computed {computed:#010x}"
        )));
    }
    let size = disk.len();
    let mut parts = Vec::new();
    for (slot, e) in entries.chunks_exact(esize as usize).enumerate() {
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(e.get(..16).unwrap_or(&[0; 16]));
        if type_guid == [0; 16] {
            continue;
        }
        let index = slot as u32 + 1;
        let first = le64(e, 32);
        let last = le64(e, 40);
        if last < first {
            return Err(TableError::Reversed { index, first, last });
        }
        let start = u128::from(first) * u128::from(ss);
        let end = (u128::from(last) + 1) * u128::from(ss);
        if end > u128::from(size) {
            return Err(TableError::PastEnd {
                index,
                end,
                disk: size,
            });
        }
        let units: Vec<u16> = e
            .get(56..128)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| u16::from(byte(c, 0)) | (u16::from(byte(c, 1)) << 8))
            .take_while(|&u| u != 0)
            .collect();
        parts.push(Partition {
            index,
            // Both fit: end <= size, a u64.
            start: start as u64,
            len: (end - start) as u64,
            type_guid: Some(type_guid),
            mbr_type: None,
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(parts)
}

/// The MBR's primary partitions, or `None` when sector 0 does not look like an MBR (no
/// 0x55AA, a status byte other than 0x00/0x80, a FAT or ext boot sector, no entry in use).
fn mbr(head: &[u8], size: u64) -> Result<Option<Vec<Partition>>, TableError> {
    if head.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return Ok(None);
    }
    // A bare filesystem: ext keeps its magic in sector 2, FAT names itself in its BPB.
    if head.get(EXT_MAGIC_OFFSET..EXT_MAGIC_OFFSET + 2) == Some(&[0x53, 0xEF][..])
        || head.get(54..57) == Some(b"FAT")
        || head.get(82..87) == Some(b"FAT32")
    {
        return Ok(None);
    }
    let entry = |i: usize| head.get(446 + 16 * i..462 + 16 * i).unwrap_or_default();
    if (0..4).any(|i| !matches!(byte(entry(i), 0), 0x00 | 0x80)) {
        return Ok(None);
    }
    let mut parts = Vec::new();
    let mut protective = false;
    for i in 0..4 {
        let e = entry(i);
        let kind = byte(e, 4);
        let first = u64::from(le32(e, 8));
        let sectors = u64::from(le32(e, 12));
        match kind {
            0x00 => continue,
            0x05 | 0x0F | 0x85 => continue,
            0xEE => {
                protective = true;
                continue;
            }
            _ => {}
        }
        if sectors == 0 {
            continue;
        }
        let index = i as u32 + 1;
        let end = u128::from(first + sectors) * u128::from(MBR_SECTOR);
        if end > u128::from(size) {
            return Err(TableError::PastEnd {
                index,
                end,
                disk: size,
            });
        }
        parts.push(Partition {
            index,
            start: first * MBR_SECTOR,
            len: sectors * MBR_SECTOR,
            type_guid: None,
            mbr_type: Some(kind),
            name: String::new(),
        });
    }
    if parts.is_empty() {
        if protective {
            return Err(TableError::Gpt(
                "the MBR is a protective one but no GPT header follows it".into(),
            ));
        }
        return Ok(None);
    }
    Ok(Some(parts))
}
