//! The in-kernel i8254 PIT, created when the guest first touches its ports.
//!
//! A PIT made up front costs every VM a kernel thread (`kvm-pit/<pid>`) and, when the VM is
//! torn down, SRCU grace periods: `kvm_free_pit` unregisters its port devices and its
//! tick-reinjection notifiers, each a `synchronize_srcu`, a measurable part of the process's
//! exit (docs/PERFORMANCE.md, "Figures behind design choices"). Guests that boot through ACPI's
//! hardware-reduced model (the test guest; Debian's stock kernel, which calibrates on kvmclock)
//! never use a PIT, while kernels without ACPI (images/kernel's minimal one) calibrate and tick
//! on it.
//!
//! So ports 0x40-0x43 and 0x61 start unclaimed. The first access exits to the VMM, which
//! creates the PIT and makes the vCPU execute the same instruction again, now against the
//! in-kernel device (see [`crate::vcpu`]): the guest sees a PIT that was there all along.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::VmFd;

use crate::bus::lock;
use crate::stats::Stats;

/// Whether `port` belongs to the PIT: its counters and control word (0x40-0x43) and the
/// speaker/gate port 0x61, which the in-kernel PIT serves with `KVM_PIT_SPEAKER_DUMMY`.
pub fn is_pit_port(port: u16) -> bool {
    (0x40..=0x43).contains(&port) || port == 0x61
}

/// Creates the VM's PIT once, from whichever vCPU gets there first.
pub struct LazyPit {
    vm: Arc<VmFd>,
    stats: Arc<Stats>,
    creating: Mutex<()>,
    created: AtomicBool,
}

impl std::fmt::Debug for LazyPit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPit")
            .field("created", &self.created())
            .finish()
    }
}

impl LazyPit {
    pub fn new(vm: Arc<VmFd>, stats: Arc<Stats>) -> Self {
        LazyPit {
            vm,
            stats,
            creating: Mutex::new(()),
            created: AtomicBool::new(false),
        }
    }

    /// Whether the guest has used the PIT (and so has one).
    pub fn created(&self) -> bool {
        self.created.load(Ordering::Acquire)
    }

    /// Makes sure the PIT exists. Needs the irqchip, which the VM creates before any vCPU.
    pub fn ensure(&self) -> Result<(), kvm_ioctls::Error> {
        if self.created() {
            return Ok(());
        }
        let _guard = lock(&self.creating);
        if self.created() {
            return Ok(());
        }
        self.vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })?;
        self.created.store(true, Ordering::Release);
        self.stats.pit.store(true, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pit_ports_are_the_counters_the_control_word_and_the_gate() {
        let ports: Vec<u16> = (0..=0xffffu16).filter(|p| is_pit_port(*p)).collect();
        assert_eq!(ports, vec![0x40, 0x41, 0x42, 0x43, 0x61]);
    }
}
