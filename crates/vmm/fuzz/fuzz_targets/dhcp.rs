#![no_main]
//! Frames a guest sends on a NIC whose DHCP the VMM answers: any may be passed on or kept,
//! none may panic, and every answer must be a well-formed IPv4/UDP frame to the NIC's MAC
//! carrying the lease's address or a NAK.

use hull_vmm::devices::virtio::net::dhcp::{Verdict, handle};
use hull_vmm_proto::DhcpLease;
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x31];

fuzz_target!(|data: &[u8]| {
    let lease = DhcpLease::example();
    if let Verdict::Answer(Some(reply)) = handle(data, MAC, &lease) {
        assert_eq!(&reply[..6], &MAC);
        assert_eq!(&reply[12..14], &[0x08, 0x00]);
        assert!(reply.len() >= 14 + 20 + 8 + 300);
    }
});
