//! The 64-bit Linux boot path: loads a kernel (ELF vmlinux or bzImage) and an initrd into guest
//! memory, writes the command line, the zero page with its e820 map, the MP table and the
//! ACPI tables ([`acpi`]), and
//! says where the vCPUs start. The vCPU register state itself is in [`regs`], CPUID in
//! [`cpuid`]. Nothing here trusts the kernel image: every size and address it declares is
//! checked against guest memory by linux-loader or here.

pub mod acpi;
pub mod cpuid;
pub mod cpuid_table;
pub mod found;
pub mod mptable;
pub mod regs;
pub mod smbios;
pub mod vmlinux;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::{
    self, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, GuestMemory, HIMEM_START, MMIO_GAP_END,
    ZERO_PAGE_START,
};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// bzImage 64-bit entry is this far past the protected-mode kernel's load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Default highest initrd address for kernels whose header predates `initrd_addr_max`.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Errors from loading the kernel, the initrd and the boot data.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel {}", path.display())]
    KernelFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is not a loadable ELF or bzImage.
    #[error("kernel {} is not a loadable x86-64 ELF or bzImage", path.display())]
    KernelFormat {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd file could not be read.
    #[error("cannot read initrd {}", path.display())]
    InitrdFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the top of usable memory.
    #[error("initrd of {size} bytes does not fit in guest memory above the kernel")]
    InitrdTooBig { size: u64 },
    /// The command line is invalid or too long.
    #[error("kernel command line is invalid or longer than {CMDLINE_MAX_SIZE} bytes")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing boot data into guest memory failed.
    #[error("cannot write the {what} into guest memory")]
    GuestWrite {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The ACPI tables could not be built.
    #[error("cannot build the ACPI tables")]
    Acpi(#[source] acpi::AcpiError),
    /// The MP table could not be built.
    #[error("cannot build the MP table")]
    MpTable(#[source] mptable::MpTableError),
    /// The SMBIOS tables could not be written.
    #[error("cannot build the SMBIOS tables")]
    Smbios(#[source] smbios::SmbiosError),
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// 64-bit entry point, run with %rsi pointing at the zero page.
    pub entry: GuestAddress,
}

/// An initrd as placed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Builds the kernel command line from the user's string plus device declarations.
pub fn build_cmdline(base: &str, extra: &[String]) -> Result<Cmdline, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    if !base.trim().is_empty() {
        c.insert_str(base.trim()).map_err(BootError::Cmdline)?;
    }
    for e in extra {
        c.insert_str(e).map_err(BootError::Cmdline)?;
    }
    Ok(c)
}

fn guest_write<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> BootError {
    move |e| BootError::GuestWrite {
        what,
        source: Box::new(e),
    }
}

/// Loads kernel, initrd and boot data; returns the 64-bit entry point.
pub fn load(
    mem: &GuestMemory,
    mem_bytes: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
    vcpus: u8,
    acpi_layout: Option<&acpi::AcpiLayout>,
) -> Result<BootEntry, BootError> {
    let kernel_err = |source| BootError::KernelFile {
        path: kernel.to_owned(),
        source,
    };
    let mut file = File::open(kernel).map_err(kernel_err)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(kernel_err)?;
    let format_err = |source| BootError::KernelFormat {
        path: kernel.to_owned(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let (entry, kernel_end, mut params) = if magic == *b"\x7fELF" {
        let res = Elf::load(mem, None, &mut file, himem).map_err(format_err)?;
        let mut params = boot_params::default();
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        (res.kernel_load, res.kernel_end, params)
    } else {
        let res = BzImage::load(mem, None, &mut file, himem).map_err(format_err)?;
        let mut params = boot_params::default();
        if let Some(hdr) = res.setup_header {
            params.hdr = hdr;
        }
        let entry = GuestAddress(res.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET);
        (entry, res.kernel_end, params)
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;

    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(guest_write("command line"))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;

    if let Some(path) = initrd {
        let initrd_max = if params.hdr.version >= 0x203 && params.hdr.initrd_addr_max != 0 {
            u64::from(params.hdr.initrd_addr_max)
        } else {
            DEFAULT_INITRD_ADDR_MAX
        };
        let placed = load_initrd(mem, mem_bytes, path, kernel_end, initrd_max)?;
        params.hdr.ramdisk_image = placed.addr as u32;
        params.hdr.ramdisk_size = placed.size as u32;
        params.ext_ramdisk_image = (placed.addr >> 32) as u32;
        params.ext_ramdisk_size = (placed.size >> 32) as u32;
    }

    let e820 = e820_map(mem_bytes);
    params.e820_entries = e820.len() as u8;
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = addr;
        slot.size = size;
        slot.r#type = kind;
    }
    if let Some(layout) = acpi_layout {
        params.acpi_rsdp_addr = acpi::setup(mem, layout).map_err(BootError::Acpi)?;
    }
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(guest_write("zero page"))?;

    mptable::setup(mem, vcpus).map_err(BootError::MpTable)?;
    Ok(BootEntry { entry })
}

/// Places the initrd page-aligned at the top of usable low memory.
fn load_initrd(
    mem: &GuestMemory,
    mem_bytes: u64,
    path: &Path,
    kernel_end: u64,
    initrd_max: u64,
) -> Result<InitrdPlacement, BootError> {
    let file_err = |source| BootError::InitrdFile {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(file_err)?;
    let size = file.metadata().map_err(file_err)?.len();
    let placed = place_initrd(mem_bytes, size, kernel_end, initrd_max)?;
    mem.read_exact_volatile_from(GuestAddress(placed.addr), &mut file, size as usize)
        .map_err(guest_write("initrd"))?;
    Ok(placed)
}

/// Picks the initrd's address: page aligned, ending below both the top of low RAM and the
/// kernel's limit, starting above the kernel.
pub fn place_initrd(
    mem_bytes: u64,
    size: u64,
    kernel_end: u64,
    initrd_max: u64,
) -> Result<InitrdPlacement, BootError> {
    let top = memory::low_ram_end(mem_bytes).min(initrd_max.saturating_add(1));
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(HIMEM_START))
        .ok_or(BootError::InitrdTooBig { size })?;
    Ok(InitrdPlacement { addr, size })
}

/// The guest's e820 map: low RAM up to the EBDA, RAM from 1 MiB to the MMIO gap, and RAM
/// above 4 GiB for big guests. Everything else (EBDA, BIOS area, MP table, MMIO) is a hole.
pub fn e820_map(mem_bytes: u64) -> Vec<(u64, u64, u32)> {
    let low_end = memory::low_ram_end(mem_bytes);
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (HIMEM_START, low_end - HIMEM_START, E820_RAM),
    ];
    if mem_bytes > low_end {
        map.push((MMIO_GAP_END, mem_bytes - low_end, E820_RAM));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn e820_covers_ram_and_skips_holes() {
        let m = e820_map(128 << 20);
        assert_eq!(
            m,
            vec![
                (0, EBDA_START, 1),
                (HIMEM_START, (128 << 20) - HIMEM_START, 1)
            ]
        );
        let m = e820_map(5 << 30);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].0, MMIO_GAP_END);
    }

    #[test]
    fn initrd_goes_to_the_top_and_must_fit() {
        let p = place_initrd(128 << 20, 10_000, 0x20_0000, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(p.addr % 4096, 0);
        assert!(p.addr + p.size <= 128 << 20);
        assert!(p.addr >= 0x20_0000);
        assert!(matches!(
            place_initrd(16 << 20, 15 << 20, 0x20_0000, DEFAULT_INITRD_ADDR_MAX),
            Err(BootError::InitrdTooBig { .. })
        ));
        assert!(place_initrd(16 << 20, u64::MAX, 0, DEFAULT_INITRD_ADDR_MAX).is_err());
    }

    #[test]
    fn garbage_kernel_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, vec![0x42u8; 8192]).unwrap();
        let mem = create_guest_memory(16).unwrap();
        let c = build_cmdline("console=ttyS0", &[]).unwrap();
        let err = load(&mem, 16 << 20, &k, None, &c, 1, None).unwrap_err();
        assert!(matches!(err, BootError::KernelFormat { .. }), "{err}");
        let err = load(
            &mem,
            16 << 20,
            &dir.path().join("missing"),
            None,
            &c,
            1,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, BootError::KernelFile { .. }), "{err}");
    }

    #[test]
    fn cmdline_too_long_is_an_error() {
        let long = "x".repeat(CMDLINE_MAX_SIZE + 1);
        assert!(matches!(
            build_cmdline(&long, &[]),
            Err(BootError::Cmdline(_))
        ));
    }
}
