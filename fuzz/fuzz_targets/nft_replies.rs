//! Bytes as the kernel's nfnetlink replies (acks, errors with extended-ack attributes, set
//! element dumps) through the vswitch's decoder: any input may be refused, none may panic,
//! and every element it yields must be re-encodable.
#![no_main]

use hull_vswitch::nft;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(replies) = nft::parse_replies(data) {
        for r in replies {
            if let nft::Reply::Elems { elems, .. } = r {
                let _ = nft::elements("t", "s", &elems);
            }
        }
    }
    for a in nft::attrs(data) {
        if a.is_err() {
            break;
        }
    }
});
