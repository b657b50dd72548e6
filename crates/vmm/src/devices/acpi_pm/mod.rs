//! The ACPI hardware-reduced power registers the FADT points at: sleep control (writing
//! SLP_EN with sleep type S5 powers the VM off), sleep status, and the reset register. On
//! port I/O so the guest reaches them without any MMIO mapping.

use crate::bus::BusDevice;

pub const ACPI_PM_BASE: u64 = 0x600;
pub const ACPI_PM_LEN: u64 = 3;
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
pub const SLEEP_STATUS_OFFSET: u64 = 1;
pub const RESET_OFFSET: u64 = 2;
pub const RESET_VALUE: u8 = 1;
/// Sleep type the DSDT's \_S5 names.
pub const SLP_TYP_S5: u8 = 5;
const SLP_EN: u8 = 1 << 5;

/// What the guest asked for.
pub trait PowerSink: Send {
    fn power_off(&self);
    fn reset(&self);
}

/// The register block.
pub struct AcpiPm<S: PowerSink> {
    sink: S,
}

impl<S: PowerSink> std::fmt::Debug for AcpiPm<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcpiPm")
    }
}

impl<S: PowerSink> AcpiPm<S> {
    pub fn new(sink: S) -> Self {
        AcpiPm { sink }
    }
}

impl<S: PowerSink> BusDevice for AcpiPm<S> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status reads as "not waking": nothing ever suspends here.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(v) = data.first().copied() else {
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET if v & SLP_EN != 0 && (v >> 2) & 7 == SLP_TYP_S5 => {
                self.sink.power_off()
            }
            RESET_OFFSET if v == RESET_VALUE => self.sink.reset(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Rec(Arc<Mutex<Vec<&'static str>>>);
    impl PowerSink for Rec {
        fn power_off(&self) {
            crate::bus::lock(&self.0).push("off");
        }
        fn reset(&self) {
            crate::bus::lock(&self.0).push("reset");
        }
    }

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let r = Rec::default();
        let mut d = AcpiPm::new(r.clone());
        d.write(SLEEP_CONTROL_OFFSET, &[SLP_TYP_S5 << 2]); // no SLP_EN
        d.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | SLP_EN]); // S3: not supported
        d.write(RESET_OFFSET, &[7]);
        d.write(SLEEP_CONTROL_OFFSET, &[]);
        assert!(crate::bus::lock(&r.0).is_empty());
        d.write(SLEEP_CONTROL_OFFSET, &[(SLP_TYP_S5 << 2) | SLP_EN]);
        d.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(*crate::bus::lock(&r.0), vec!["off", "reset"]);
    }
}
