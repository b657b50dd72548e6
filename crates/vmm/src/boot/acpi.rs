//! ACPI tables for guests that discover devices only through ACPI (Debian's stock kernel
//! has VIRTIO_MMIO_CMDLINE_DEVICES unset): RSDP, XSDT, a hardware-reduced FADT, MADT and a
//! DSDT declaring the console UART, each virtio-mmio device as LNRO0005, a power button and
//! the Generic Event Device that presses it. Power-off and reset go through the registers of
//! [`crate::devices::acpi_pm`]. Tables are built by acpi_tables and placed below 1 MiB.

use acpi_tables::aml::{
    self, Device, EISAName, IO, Interrupt, Memory32Fixed, Method, Name, Notify, Package, Path,
    ResourceTemplate, Scope,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::acpi_pm::{
    ACPI_PM_BASE, RESET_OFFSET, RESET_VALUE, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET, SLP_TYP_S5,
};
use crate::devices::serial::metadata::{COM2_BASE, COM2_IRQ};
use crate::devices::serial::{COM1_BASE, COM1_IRQ};
use crate::memory::{
    ACPI_END, ACPI_START, GuestMemory, IOAPIC_START, LAPIC_START, VIRTIO_MMIO_SIZE,
};

const OEM_ID: [u8; 6] = *b"HULL  ";
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const OEM_REVISION: u32 = 1;
const HYPERVISOR_ID: u64 = u64::from_le_bytes(*b"HULLVMM\0");
/// IA-PC boot architecture flags: no VGA, no CMOS RTC. Without the RTC flag Linux probes the
/// absent CMOS clock at port 0x70 and spends seconds (14 s in the nested tier) giving up.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

/// Errors from writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables outgrew their area below the MP table.
    #[error("ACPI tables need {0} bytes, more than the area below 1 MiB holds")]
    TooBig(u64),
    /// Guest memory rejected the write.
    #[error("cannot write the ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// AML already rendered to bytes, so objects built in a loop can sit in a scope together.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn render(a: &dyn Aml) -> Raw {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    Raw(v)
}

/// What the DSDT declares.
#[derive(Debug, Clone)]
pub struct AcpiLayout {
    pub vcpus: u8,
    /// (MMIO base, IRQ) of each virtio-mmio device.
    pub virtio: Vec<(u64, u32)>,
    /// IRQ of the Generic Event Device (the power button).
    pub ged_irq: u32,
    /// Whether COM2 (the metadata port) is there.
    pub com2: bool,
}

/// A 16550 UART (PNP0501) at I/O port `base` with ISA IRQ `irq`.
fn uart(name: &str, base: u64, irq: u32, uid: &dyn Aml) -> Raw {
    let io = IO::new(base as u16, base as u16, 1, 8);
    let line = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&io, &line]);
    render(&Device::new(
        name.into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), uid),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// The DSDT's AML body.
pub fn dsdt_aml(layout: &AcpiLayout) -> Vec<u8> {
    let mut devices: Vec<Raw> = Vec::new();
    devices.push(uart("COM1", COM1_BASE, COM1_IRQ, &aml::ZERO));
    if layout.com2 {
        devices.push(uart("COM2", COM2_BASE, COM2_IRQ, &2u32));
    }
    for (i, (addr, irq)) in layout.virtio.iter().enumerate() {
        let window = Memory32Fixed::new(true, *addr as u32, VIRTIO_MMIO_SIZE as u32);
        let line = Interrupt::new(true, true, false, false, *irq);
        let crs = ResourceTemplate::new(vec![&window, &line]);
        let name = format!("V{i:03X}");
        let uid = i as u32;
        devices.push(render(&Device::new(
            name.as_str().into(),
            vec![
                &Name::new("_HID".into(), &"LNRO0005"),
                &Name::new("_UID".into(), &uid),
                &Name::new("_CCA".into(), &aml::ONE),
                &Name::new("_CRS".into(), &crs),
            ],
        )));
    }
    devices.push(render(&Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    )));
    let ged_line = Interrupt::new(true, true, false, false, layout.ged_irq);
    let ged_crs = ResourceTemplate::new(vec![&ged_line]);
    let pwrb = Path::new("\\_SB_.PWRB");
    let press = Notify::new(&pwrb, &0x80u8);
    devices.push(render(&Device::new(
        "GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &ged_crs),
            &Method::new("_EVT".into(), 1, true, vec![&press]),
        ],
    )));
    let children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    let mut out = Vec::new();
    Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut out);
    // \_S5: the sleep type the guest writes to the sleep control register to power off.
    Name::new("_S5_".into(), &Package::new(vec![&SLP_TYP_S5])).to_aml_bytes(&mut out);
    out
}

fn io_reg(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

fn align(x: u64) -> u64 {
    (x + 63) & !63
}

/// Builds all tables for placement at [`ACPI_START`]; returns (address, bytes) pieces and the
/// RSDP's address.
pub fn build(layout: &AcpiLayout) -> (Vec<(u64, Vec<u8>)>, u64) {
    let rsdp_addr = ACPI_START;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(layout));
    let dsdt_bytes = dsdt.as_slice().to_vec();

    let fadt_addr = align(dsdt_addr + dsdt_bytes.len() as u64);
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton);
    fadt.sleep_control_reg = io_reg(ACPI_PM_BASE + SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io_reg(ACPI_PM_BASE + SLEEP_STATUS_OFFSET);
    fadt.reset_reg = io_reg(ACPI_PM_BASE + RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.hypervisor_vendor_identity = HYPERVISOR_ID.into();
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    let mut fadt_bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut fadt_bytes);

    let madt_addr = align(fadt_addr + fadt_bytes.len() as u64);
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_START as u32),
    );
    for id in 0..layout.vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(layout.vcpus, IOAPIC_START as u32, 0));
    let mut madt_bytes = Vec::new();
    madt.to_aml_bytes(&mut madt_bytes);

    let xsdt_addr = align(madt_addr + madt_bytes.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);

    let mut rsdp_bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp_bytes);
    (
        vec![
            (rsdp_addr, rsdp_bytes),
            (dsdt_addr, dsdt_bytes),
            (fadt_addr, fadt_bytes),
            (madt_addr, madt_bytes),
            (xsdt_addr, xsdt_bytes),
        ],
        rsdp_addr,
    )
}

/// Writes the tables; returns the RSDP address for the zero page.
pub fn setup(mem: &GuestMemory, layout: &AcpiLayout) -> Result<u64, AcpiError> {
    let (pieces, rsdp) = build(layout);
    let end = pieces
        .iter()
        .map(|(a, b)| a + b.len() as u64)
        .max()
        .unwrap_or(ACPI_START);
    if end > ACPI_END {
        return Err(AcpiError::TooBig(end - ACPI_START));
    }
    for (addr, bytes) in pieces {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(rsdp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn layout() -> AcpiLayout {
        AcpiLayout {
            vcpus: 2,
            virtio: vec![(0xd000_0000, 5), (0xd000_1000, 6)],
            ged_irq: 7,
            com2: false,
        }
    }

    #[test]
    fn tables_have_valid_checksums_and_links() {
        let (pieces, rsdp) = build(&layout());
        let find = |sig: &[u8]| {
            pieces
                .iter()
                .find(|(_, b)| b.starts_with(sig))
                .cloned()
                .unwrap()
        };
        let (ra, r) = find(b"RSD PTR ");
        assert_eq!(ra, rsdp);
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let (xa, x) = find(b"XSDT");
        assert_eq!(xa, xsdt_addr);
        for sig in [&b"XSDT"[..], b"FACP", b"APIC", b"DSDT"] {
            let (_, t) = find(sig);
            assert_eq!(sum(&t), 0, "{}", String::from_utf8_lossy(sig));
            let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, t.len(), "{}", String::from_utf8_lossy(sig));
        }
        let (fa, f) = find(b"FACP");
        assert_eq!(u64::from_le_bytes(x[36..44].try_into().unwrap()), fa);
        // FADT flags: hardware-reduced.
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        // Boot architecture flags: no CMOS RTC.
        let boot_arch = u16::from_le_bytes(f[109..111].try_into().unwrap());
        assert_ne!(boot_arch & (1 << 5), 0);
        let (da, _) = find(b"DSDT");
        assert_eq!(u64::from_le_bytes(f[140..148].try_into().unwrap()), da);
    }

    #[test]
    fn dsdt_declares_every_virtio_device_and_the_power_button() {
        let aml = dsdt_aml(&layout());
        let count = aml.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 2);
        assert!(aml.windows(8).any(|w| w == b"ACPI0013"));
        assert!(aml.windows(4).any(|w| w == b"PWRB"));
        assert!(aml.windows(4).any(|w| w == b"_S5_"));
        // Memory32Fixed descriptor with the second device's base.
        assert!(aml.windows(4).any(|w| w == 0xd000_1000u32.to_le_bytes()));
        // COM2 only with the metadata port; then as the second 16550 (PNP0501, _UID 2).
        assert!(!aml.windows(4).any(|w| w == b"COM2"));
        let with = dsdt_aml(&AcpiLayout {
            com2: true,
            ..layout()
        });
        assert!(with.windows(4).any(|w| w == b"COM2"));
        assert_eq!(with.windows(4).filter(|w| w == b"_UID").count(), 6);
    }

    #[test]
    fn tables_fit_their_area() {
        let mem = crate::memory::create_guest_memory(16).unwrap();
        let big = AcpiLayout {
            vcpus: crate::config::MAX_VCPUS,
            virtio: (0..19)
                .map(|i| (0xd000_0000 + i * 0x1000, 5 + i as u32))
                .collect(),
            ged_irq: 23,
            com2: true,
        };
        assert_eq!(setup(&mem, &big).unwrap(), ACPI_START);
    }
}
