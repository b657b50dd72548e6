//! Untrusted payload bytes through JSON parsing, SmartOS validation (create and update for
//! every brand) and image manifest validation: any input may be refused, none may panic.
#![no_main]

use hull_spec::{Brand, validate_create, validate_manifest, validate_update};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Err(report) = validate_create(&value) {
        let _ = report.summary();
    }
    for brand in Brand::ALL {
        let _ = validate_update(&value, brand);
    }
    let _ = validate_manifest(&value);
});
