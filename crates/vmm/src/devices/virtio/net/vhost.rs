//! vhost-net: the host kernel moves a NIC's frames between its TAP and the guest's rings, with
//! no VMM thread on the way (rust-vmm's `vhost` crate speaks the ioctls). The driver's
//! notifies are ioeventfds KVM completes in the kernel, which vhost waits on; vhost's "used
//! buffers" signal is the transport's irqfd, so KVM raises the guest's interrupt line
//! directly. virtio-mmio's interrupt status register lives here, not in the kernel: the
//! transport keeps its "used ring" bit set while vhost serves the queues (see
//! [`crate::devices::virtio::mmio`]), and the driver, finding it set at every interrupt, looks
//! at both rings, as it does with one interrupt per queue.
//!
//! What is fixed for the VM's life is set once at start, before the VMM confines itself: the
//! owner (vhost's worker joins this process), guest memory's table and the notify eventfds.
//! At the driver's DRIVER_OK the features, ring sizes, addresses (checked to lie in guest
//! memory) and the TAP go in; a reset takes the TAP out, which stops vhost touching the rings
//! before the driver frees them. Those six ioctls are all a vCPU thread may issue on the
//! vhost fd (see [`crate::seccomp`]).

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as Kern;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// The ring features vhost-net takes part in; everything else of a NIC's features (MAC,
/// offloads) is the device's and the TAP's, never vhost's.
const RING_FEATURES: u64 = super::F_MRG_RXBUF
    | crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX
    | crate::devices::virtio::VIRTIO_F_VERSION_1;

/// Why vhost-net could not take a NIC.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// /dev/vhost-net refused an open or a setup ioctl.
    #[error("vhost-net: cannot {0}")]
    Setup(&'static str, #[source] vhost::Error),
    /// The kernel's vhost-net lacks what a NIC here needs.
    #[error("vhost-net lacks the ring features {0:#x} (it offers {1:#x})")]
    Features(u64, u64),
    /// The driver started the device without both of its rings.
    #[error("vhost-net: the driver left a ring unset")]
    NotReady,
    /// An eventfd could not be made.
    #[error("vhost-net: cannot make a notify eventfd")]
    EventFd(#[source] std::io::Error),
}

/// One NIC's vhost-net instance.
pub struct VhostNet {
    kern: Kern<Arc<GuestMemory>>,
    /// The receive and transmit queues' notifies, which KVM signals and vhost waits on.
    kicks: [EventFd; 2],
    running: bool,
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("running", &self.running)
            .finish()
    }
}

/// Whether an open of /dev/vhost-net failed because the host has none (so a NIC uses the
/// VMM's own path) rather than for a reason worth reporting.
pub fn missing(e: &VhostError) -> bool {
    match e {
        VhostError::Setup(_, vhost::Error::VhostOpen(io)) => matches!(
            io.raw_os_error(),
            Some(libc::ENOENT | libc::ENODEV | libc::ENXIO)
        ),
        _ => false,
    }
}

impl VhostNet {
    /// Opens /dev/vhost-net, makes this process its owner, gives it guest memory's table
    /// and the two notify eventfds.
    pub fn open(mem: &GuestMemory) -> Result<Self, VhostError> {
        let kern = Kern::new(Arc::new(mem.clone())).map_err(|e| VhostError::Setup("open", e))?;
        kern.set_owner()
            .map_err(|e| VhostError::Setup("become its owner", e))?;
        let offered = kern
            .get_features()
            .map_err(|e| VhostError::Setup("read its features", e))?;
        if offered & RING_FEATURES != RING_FEATURES {
            return Err(VhostError::Features(RING_FEATURES, offered));
        }
        let regions: Vec<_> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect();
        kern.set_mem_table(&regions)
            .map_err(|e| VhostError::Setup("take guest memory's table", e))?;
        let kick = || EventFd::new(libc::EFD_NONBLOCK).map_err(VhostError::EventFd);
        let kicks = [kick()?, kick()?];
        for (i, k) in kicks.iter().enumerate() {
            kern.set_vring_kick(i, k)
                .map_err(|e| VhostError::Setup("take a queue's notify", e))?;
        }
        Ok(VhostNet {
            kern,
            kicks,
            running: false,
        })
    }

    /// The receive and transmit queues' notify eventfds, for KVM's ioeventfds.
    pub fn kicks(&self) -> &[EventFd; 2] {
        &self.kicks
    }

    /// Hands the driver's rings and the TAP to vhost. `acked` is what the driver took;
    /// `call` the interrupt's eventfd. On an error vhost is left without the TAP.
    pub fn start(
        &mut self,
        acked: u64,
        queues: &[Queue],
        tap: RawFd,
        call: &EventFd,
    ) -> Result<(), VhostError> {
        self.stop();
        let k = &self.kern;
        k.set_features(acked & RING_FEATURES)
            .map_err(|e| VhostError::Setup("take the driver's features", e))?;
        // SAFETY: the TAP's fd is open for the device's life; ManuallyDrop keeps this File from
        // closing it.
        let tap = ManuallyDrop::new(unsafe { File::from_raw_fd(tap) });
        if queues.len() < 2 || queues.iter().take(2).any(|q| !q.ready()) {
            return Err(VhostError::NotReady);
        }
        for (i, q) in queues.iter().enumerate().take(2) {
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: q.desc_table(),
                used_ring_addr: q.used_ring(),
                avail_ring_addr: q.avail_ring(),
                log_addr: None,
            };
            k.set_vring_num(i, q.size())
                .map_err(|e| VhostError::Setup("take a ring's size", e))?;
            k.set_vring_base(i, q.next_avail())
                .map_err(|e| VhostError::Setup("take a ring's start", e))?;
            k.set_vring_addr(i, &ring)
                .map_err(|e| VhostError::Setup("take a ring's addresses", e))?;
            k.set_vring_call(i, call)
                .map_err(|e| VhostError::Setup("take the interrupt", e))?;
        }
        for i in 0..2 {
            if let Err(e) = k.set_backend(i, Some(&tap)) {
                self.running = true;
                self.stop();
                return Err(VhostError::Setup("take the TAP", e));
            }
        }
        self.running = true;
        Ok(())
    }

    /// Takes the TAP out of both rings: vhost stops touching guest memory.
    pub fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            for i in 0..2 {
                let _ = self.kern.set_backend(i, None);
            }
        }
    }

    pub fn running(&self) -> bool {
        self.running
    }
}
