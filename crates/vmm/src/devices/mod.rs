//! Emulated devices, one folder each: the 8250 console, the i8042 (reset only), the ACPI
//! power registers and the
//! virtio-mmio transport with its block, net and rng devices. Devices see only untrusted guest
//! bytes and must turn every malformed input into an error status, never a panic.

pub mod acpi_pm;
pub mod i8042;
pub mod serial;
pub mod virtio;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// Raises an interrupt by writing an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl IrqTrigger {
    pub fn new() -> std::io::Result<Self> {
        Ok(IrqTrigger(EventFd::new(libc::EFD_NONBLOCK)?))
    }
}

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
