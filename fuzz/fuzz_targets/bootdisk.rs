//! A guest's boot disk as a hostile image may shape it: finding its kernel must end in a
//! result or an error, never a panic, never a read outside the disk, never more reading
//! than the limit; grub.cfg text likewise.
#![no_main]

use hull_bootdisk::{Limits, find_boot, grub_default_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_read: 16 << 20,
        max_file: 4 << 20,
    };
    let disk = data.to_vec();
    if let Ok(found) = find_boot(&disk, &limits) {
        assert!(found.kernel.len() as u64 <= limits.max_file);
        assert!(found.initrd.map_or(0, |i| i.len()) as u64 <= limits.max_file);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = grub_default_entry(text, None);
        let _ = grub_default_entry(text, Some(text));
    }
});
