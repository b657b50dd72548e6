//! A qcow2 file as an image's author may shape it: the reader must refuse it or yield
//! exactly the disk size its header says, never panic, never read outside the file, never
//! allocate beyond one table and one cluster.
#![no_main]

use std::io::{Read, Write};

use hull_cowstore::archive::Qcow2Reader;
use libfuzzer_sys::fuzz_target;

/// Disks above this are refused by the reader (the limit imgadm's store passes).
const MAX: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("hull-fuzz-qcow2-{}", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else {
        return;
    };
    if f.write_all(data).is_err() {
        return;
    }
    let Ok(f) = std::fs::File::open(&path) else {
        return;
    };
    if let Ok(mut disk) = Qcow2Reader::new(&f, MAX) {
        let size = disk.header().size;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match disk.read(&mut buf) {
                Ok(0) => {
                    assert_eq!(total, size);
                    break;
                }
                Ok(n) => total += n as u64,
                Err(_) => break,
            }
        }
    }
});
