//! What `vmm --find-boot DISK --boot-out DIR` leaves in `DIR` when the disk's own boot config
//! names a kernel it can boot: [`KERNEL`], [`INITRD`] when the entry names any, and
//! [`BOOT`], a [`FoundBoot`] in JSON, written last. On any refusal the VMM exits 1 with the
//! reason on its last stderr line and `DIR` may hold part of this: the caller reads `BOOT`
//! only after exit status 0.

use serde::{Deserialize, Serialize};

/// The kernel image, as read from the disk.
pub const KERNEL: &str = "kernel";
/// The initrds the entry names, concatenated as GRUB loads them.
pub const INITRD: &str = "initrd";
/// The [`FoundBoot`] record.
pub const BOOT: &str = "boot.json";

/// What hull appends to the entry's own options: its serial console last (the kernel makes
/// the last `console=` /dev/console), reset through the keyboard controller, and no PCI bus
/// to probe (the VMM has none; its virtio devices are MMIO, listed in ACPI).
pub const CMDLINE_TAIL: &str = "console=ttyS0 reboot=k pci=off";

/// The boot entry a disk's config chose and where its files came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundBoot {
    /// The config that chose it (`/boot/grub/grub.cfg`, a loader entry's path).
    pub config: String,
    /// The partition that config is on (Linux's number: `vda1` is 1; 0 is a bare disk).
    pub partition: u32,
    /// The entry's menu title.
    pub title: String,
    /// The kernel path the entry names, and the partition it was read from.
    pub kernel: String,
    pub kernel_partition: u32,
    /// What the kernel is, as the VMM checked it ("bzImage, 64-bit entry", "ELF x86-64").
    pub kernel_format: String,
    /// The initrd paths the entry names, in order.
    pub initrd: Vec<String>,
    /// The entry's kernel command line.
    pub options: String,
}

impl FoundBoot {
    /// The command line the guest boots with, as GRUB makes it: `BOOT_IMAGE=` the kernel's
    /// path first (tools in the guest read it), the entry's options, then [`CMDLINE_TAIL`].
    pub fn cmdline(&self) -> String {
        [
            format!("BOOT_IMAGE={}", self.kernel),
            self.options.trim().to_owned(),
            CMDLINE_TAIL.to_owned(),
        ]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_the_entry_s_then_hull_s_console() {
        let mut f = FoundBoot {
            config: "/boot/grub/grub.cfg".into(),
            partition: 1,
            title: "Debian GNU/Linux".into(),
            kernel: "/boot/vmlinuz-6.1.0-28-cloud-amd64".into(),
            kernel_partition: 1,
            kernel_format: "bzImage, 64-bit entry".into(),
            initrd: vec!["/boot/initrd.img-6.1.0-28-cloud-amd64".into()],
            options: " root=UUID=0f5d ro console=tty0 console=ttyS0,115200 ".into(),
        };
        assert_eq!(
            f.cmdline(),
            "BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-cloud-amd64 root=UUID=0f5d ro console=tty0 \
             console=ttyS0,115200 console=ttyS0 reboot=k pci=off"
        );
        f.options.clear();
        assert_eq!(
            f.cmdline(),
            format!("BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-cloud-amd64 {CMDLINE_TAIL}")
        );
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<FoundBoot>(&json).unwrap(), f);
    }
}
