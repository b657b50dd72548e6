//! The virtio-mmio transport (virtio 1.x register layout, version 2): feature negotiation,
//! queue setup, notification and interrupt status for one device, on the MMIO bus. It owns
//! the device's queues; the device only processes them. Registers are 32-bit: other access
//! sizes below the config space are ignored, as the spec allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ChainError, Desc, ResizeError, Resized, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VirtioDevice, add_used, collect_chain,
};
use crate::bus::BusDevice;
use crate::memory::GuestMemory;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4c4c_5548; // "HULL"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
/// Where the driver writes a queue's index to notify it (for an ioeventfd on it).
pub const QUEUE_NOTIFY: u64 = REG_QUEUE_NOTIFY;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;
pub const INT_USED_RING: u32 = 1;
/// VIRTIO_MMIO_INT_CONFIG: the device's configuration space changed.
pub const INT_CONFIG: u32 = 2;

/// Interrupt line of one transport: status bits the guest reads, and the irqfd.
#[derive(Debug)]
pub struct Interrupt {
    pub status: AtomicU32,
    pub irqfd: EventFd,
}

impl Interrupt {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Interrupt {
            status: AtomicU32::new(0),
            irqfd: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    /// Signals used buffers. A full eventfd counter only means the interrupt is pending.
    pub fn signal_used(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        let _ = self.irqfd.write(1);
    }

    /// Signals a configuration change (same line, its own status bit).
    pub fn signal_config(&self) {
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        let _ = self.irqfd.write(1);
    }
}

/// One device behind one MMIO window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    /// Counts resets, so that requests taken before one are not returned after it (see
    /// [`MmioTransport::take_available`]).
    resets: u64,
    /// The host kernel serves the queues (see [`VirtioDevice::activate`]) until a reset.
    kernel_served: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .finish()
    }
}

/// Errors from creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue size the device asked for is not a valid virtqueue size.
    #[error("device asked for an invalid queue size {0}")]
    QueueSize(u16, #[source] virtio_queue::Error),
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, MmioError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|s| Queue::new(*s).map_err(|e| MmioError::QueueSize(*s, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            queues,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            resets: 0,
            kernel_served: false,
        })
    }

    fn offered_features(&self) -> u64 {
        let event_idx = if self.device.event_idx() {
            VIRTIO_RING_F_EVENT_IDX
        } else {
            0
        };
        self.device.features() | VIRTIO_F_VERSION_1 | event_idx
    }

    fn event_idx(&self) -> bool {
        self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_NEEDS_RESET == 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue setup is only allowed between FEATURES_OK and DRIVER_OK on a queue not yet
    /// ready: later changes would pull rings out from under a running device.
    fn queue_config_allowed(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0
            && self.status & STATUS_DRIVER_OK == 0
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready())
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.resets = self.resets.wrapping_add(1);
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.status.store(0, Ordering::SeqCst);
        self.kernel_served = false;
        self.device.reset();
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let was_ok = self.status & STATUS_DRIVER_OK != 0;
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // Refuse FEATURES_OK unless the driver accepted VERSION_1 and nothing unoffered.
            let ok = self.driver_features & VIRTIO_F_VERSION_1 != 0
                && self.driver_features & !self.offered_features() == 0;
            if !ok {
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if v & STATUS_DRIVER_OK != 0 && !was_ok {
            let mem = &self.mem;
            if self.queues.iter().any(|q| q.ready() && !q.is_valid(mem)) {
                self.status |= STATUS_NEEDS_RESET;
            }
            let event_idx = self.event_idx();
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            self.device.ack_features(self.driver_features);
            if self.status & STATUS_NEEDS_RESET == 0 {
                match self.device.activate(&self.queues, &self.interrupt) {
                    Ok(served) => self.kernel_served = served,
                    Err(e) => {
                        eprintln!(
                            "vmm: virtio device type {} failed at DRIVER_OK: {e}",
                            self.device.device_type()
                        );
                        self.status |= STATUS_NEEDS_RESET;
                    }
                }
            }
        }
    }

    /// Runs the device on queue `index` after a notify.
    pub fn notify(&mut self, index: u32) {
        if !self.driver_ok() || self.kernel_served {
            return;
        }
        let i = index as usize;
        if !self.queues.get(i).is_some_and(|q| q.ready()) {
            return;
        }
        let used = self.device.process_queue(i, &mut self.queues, &self.mem);
        self.finish(used);
    }

    /// After the device ran: without EVENT_IDX, the interrupt if it used buffers. With it,
    /// the interrupt if a queue's driver asked for one by now, then each ready queue is
    /// re-armed as the device says (its driver then notifies at the next entry the device
    /// waits for), and a queue the driver added to meanwhile is run again, until every queue
    /// is re-armed with nothing new: a queue left behind its re-arm would never be notified
    /// again (each round serves what the driver added, so the loop ends when the driver
    /// stops adding).
    fn finish(&mut self, used: bool) {
        if !self.event_idx() {
            if used {
                self.interrupt.signal_used();
            }
            return;
        }
        let mut used = used;
        loop {
            if used {
                let mut wanted = false;
                for q in self.queues.iter_mut().filter(|q| q.ready()) {
                    // Every queue is asked (asking resets its count of entries since the last).
                    wanted |= q.needs_notification(&self.mem).unwrap_or(true);
                }
                if wanted {
                    self.interrupt.signal_used();
                }
            }
            let mem = &self.mem;
            let again = self
                .queues
                .iter_mut()
                .enumerate()
                .filter(|(_, q)| q.ready())
                .find_map(|(j, q)| self.device.rearm(j, q, mem).then_some(j));
            match again {
                Some(j) => used = self.device.process_queue(j, &mut self.queues, &self.mem),
                None => return,
            }
        }
    }

    /// For a queue served off the vCPU threads (a disk's, kicked through an ioeventfd):
    /// takes every chain the driver made available on queue `index`, each as its head and
    /// its checked descriptors (at most `max_total` bytes), so that the I/O runs without this
    /// transport's lock. `None` when the device is not running or the queue not ready. The
    /// second value is the reset count to hand back to [`Self::complete`].
    #[allow(clippy::type_complexity)]
    pub fn take_available(
        &mut self,
        index: usize,
        max_total: u64,
    ) -> Option<(Vec<(u16, Result<Vec<Desc>, ChainError>)>, u64)> {
        if !self.driver_ok() || self.kernel_served {
            return None;
        }
        let mem = &self.mem;
        let q = self.queues.get_mut(index).filter(|q| q.ready())?;
        let mut out = Vec::new();
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            out.push((chain.head_index(), collect_chain(chain, mem, max_total)));
        }
        Some((out, self.resets))
    }

    /// Returns what [`Self::take_available`] took, as (head, bytes written) pairs, raises
    /// the interrupt where the driver wants one and re-arms notifies. Requests taken before
    /// a reset are dropped: their queue is gone. True when the driver has made more
    /// available meanwhile (take again).
    pub fn complete(&mut self, index: usize, resets: u64, done: &[(u16, u32)]) -> bool {
        if resets != self.resets || !self.driver_ok() {
            return false;
        }
        let event_idx = self.event_idx();
        let mem = &self.mem;
        let Some(q) = self.queues.get_mut(index).filter(|q| q.ready()) else {
            return false;
        };
        let mut used = false;
        for &(head, len) in done {
            used |= add_used(q, mem, head, len);
        }
        if used && (!event_idx || q.needs_notification(mem).unwrap_or(true)) {
            self.interrupt.signal_used();
        }
        q.enable_notification(mem).unwrap_or(false)
    }

    /// Runs the device for host-side readiness (TAP readable).
    pub fn host_event(&mut self) {
        if !self.driver_ok() || self.kernel_served {
            return;
        }
        let used = self.device.process_host_event(&mut self.queues, &self.mem);
        self.finish(used);
    }

    /// The host changed the device's backing (a disk image grew): the device re-reads it,
    /// and when its size changed the config generation moves on (a driver reading the
    /// 8-byte capacity in two halves retries across a change) and, once the driver is up,
    /// the configuration change interrupt is raised. Before DRIVER_OK the driver reads
    /// config space during its probe anyway. Called from the control socket; the transport's
    /// lock orders it with the vCPUs' config reads and requests.
    pub fn host_resize(&mut self) -> Result<Resized, ResizeError> {
        let r = self.device.host_resize()?;
        if r.new != r.old {
            self.config_generation = self.config_generation.wrapping_add(1);
            if self.driver_ok() {
                self.interrupt.signal_config();
            }
        }
        Ok(r)
    }

    /// Sets a balloon's target (4 KiB pages): the config generation moves on and, once the
    /// driver is up, the configuration change interrupt tells it to look. False when this
    /// transport carries no balloon.
    pub fn set_balloon_target(&mut self, pages: u32) -> bool {
        let Some(b) = self.device.as_balloon() else {
            return false;
        };
        b.set_target(pages);
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.driver_ok() {
            self.interrupt.signal_config();
        }
        true
    }

    /// Brings the device up as a driver would, through its registers: `features` acked,
    /// queue `i` at `queues[i]`'s rings (descriptor table, avail, used), DRIVER_OK.
    #[cfg(test)]
    pub(crate) fn start_for_test(&mut self, features: u64, queues: &[[u64; 3]], size: u16) {
        let w = |t: &mut Self, off: u64, v: u32| t.write_reg(off, v);
        w(self, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for sel in 0..2 {
            w(self, REG_DRIVER_FEATURES_SEL, sel);
            w(self, REG_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        w(
            self,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for (q, rings) in queues.iter().enumerate() {
            w(self, REG_QUEUE_SEL, q as u32);
            w(self, REG_QUEUE_NUM, u32::from(size));
            for (i, a) in rings.iter().enumerate() {
                let low = [REG_QUEUE_DESC_LOW, REG_QUEUE_AVAIL_LOW, REG_QUEUE_USED_LOW][i];
                w(self, low, *a as u32);
                w(self, low + 4, (*a >> 32) as u32);
            }
            w(self, REG_QUEUE_READY, 1);
        }
        w(
            self,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(self.driver_ok(), "the transport refused the test's setup");
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => {
                // The kernel raises the line without setting a bit here: the driver is told
                // to look at its rings at every interrupt.
                let served = if self.kernel_served { INT_USED_RING } else { 0 };
                self.interrupt.status.load(Ordering::SeqCst) | served
            }
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 {
                    return;
                }
                let v = u64::from(v);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NOTIFY => self.notify(v),
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(v),
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_AVAIL_LOW | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW
            | REG_QUEUE_USED_HIGH => {
                let allowed = self.queue_config_allowed();
                let ready_write = offset == REG_QUEUE_READY;
                let Some(q) = self.selected_queue() else {
                    return;
                };
                if ready_write {
                    // Clearing ready is always allowed; setting it needs the setup window.
                    if v == 0 {
                        q.set_ready(false);
                    } else if allowed {
                        q.set_ready(true);
                    }
                    return;
                }
                if !allowed {
                    return;
                }
                match offset {
                    REG_QUEUE_NUM => {
                        // Invalid sizes (not a power of two, above max) leave it unchanged and
                        // the queue then fails is_valid at DRIVER_OK.
                        let _ = q.try_set_size(v as u16);
                    }
                    REG_QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    REG_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    REG_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    REG_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    REG_QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    REG_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(v)),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        data.fill(0);
        if data.len() == 4 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Config space is the device's to take or ignore (only the balloon's `actual` is
        // writable).
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        if let Ok(b) = <[u8; 4]>::try_from(data) {
            self.write_reg(offset, u32::from_le_bytes(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testutil::mem;
    use std::sync::Mutex;

    /// Counts process calls; offers one queue of 16 and feature bit 5.
    struct Dummy(Arc<Mutex<Vec<usize>>>);

    /// A device whose size the test sets: `host_resize` reports the change.
    struct Resizable(Arc<Mutex<(u64, u64)>>);
    impl VirtioDevice for Resizable {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let cur = crate::bus::lock(&self.0).0;
            super::super::read_config_bytes(&cur.to_le_bytes(), offset, data);
        }
        fn process_queue(&mut self, _i: usize, _q: &mut [Queue], _m: &GuestMemory) -> bool {
            false
        }
        fn host_resize(&mut self) -> Result<Resized, ResizeError> {
            let mut s = crate::bus::lock(&self.0);
            let old = s.0;
            s.0 = s.1;
            Ok(Resized { old, new: s.0 })
        }
    }
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[9, 8, 7, 6], offset, data);
        }
        fn process_queue(&mut self, index: usize, _q: &mut [Queue], _m: &GuestMemory) -> bool {
            crate::bus::lock(&self.0).push(index);
            true
        }
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }
    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Vec<usize>>>) {
        let calls = Arc::new(Mutex::new(vec![]));
        let t = MmioTransport::new(
            Box::new(Dummy(calls.clone())),
            mem(),
            Interrupt::new().unwrap(),
        )
        .unwrap();
        (t, calls)
    }

    fn bring_up(t: &mut MmioTransport, features_hi: u32) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, features_hi);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    #[test]
    fn identifies_and_negotiates() {
        let (mut t, calls) = setup();
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 4);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1 << 5);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
        bring_up(&mut t, 1);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 16);
        w(&mut t, REG_QUEUE_NUM, 16);
        w(&mut t, REG_QUEUE_DESC_LOW, 0x1000);
        w(&mut t, REG_QUEUE_AVAIL_LOW, 0x2000);
        w(&mut t, REG_QUEUE_USED_LOW, 0x3000);
        w(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
        w(&mut t, REG_STATUS, 0xf);
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(*crate::bus::lock(&calls), vec![0]);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_USED_RING);
        w(&mut t, REG_INTERRUPT_ACK, INT_USED_RING);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        let mut cfg = [0u8; 2];
        t.read(CONFIG_SPACE + 2, &mut cfg);
        assert_eq!(cfg, [7, 6]);
        // Reset clears everything.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    }

    /// A device the host kernel serves from DRIVER_OK (as a vhost-net NIC), or whose hand-over
    /// fails: records the rings it was given and every call the transport still makes.
    struct KernelServed {
        calls: Arc<Mutex<Vec<String>>>,
        fail: bool,
    }
    impl VirtioDevice for KernelServed {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn activate(
            &mut self,
            queues: &[Queue],
            _interrupt: &Interrupt,
        ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
            let q = &queues[0];
            crate::bus::lock(&self.calls).push(format!(
                "activate {} {:#x} {:#x} {:#x}",
                q.size(),
                q.desc_table(),
                q.avail_ring(),
                q.used_ring()
            ));
            if self.fail {
                return Err("the kernel refused".into());
            }
            Ok(true)
        }
        fn process_queue(&mut self, i: usize, _q: &mut [Queue], _m: &GuestMemory) -> bool {
            crate::bus::lock(&self.calls).push(format!("process {i}"));
            true
        }
        fn process_host_event(&mut self, _q: &mut [Queue], _m: &GuestMemory) -> bool {
            crate::bus::lock(&self.calls).push("host event".into());
            true
        }
        fn reset(&mut self) {
            crate::bus::lock(&self.calls).push("reset".into());
        }
    }

    fn kernel_served(fail: bool) -> (MmioTransport, Arc<Mutex<Vec<String>>>) {
        let calls = Arc::new(Mutex::new(vec![]));
        let dev = KernelServed {
            calls: calls.clone(),
            fail,
        };
        let mut t = MmioTransport::new(Box::new(dev), mem(), Interrupt::new().unwrap()).unwrap();
        bring_up(&mut t, 1);
        w(&mut t, REG_QUEUE_NUM, 8);
        w(&mut t, REG_QUEUE_DESC_LOW, 0x1000);
        w(&mut t, REG_QUEUE_AVAIL_LOW, 0x2000);
        w(&mut t, REG_QUEUE_USED_LOW, 0x3000);
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_STATUS, 0xf);
        (t, calls)
    }

    #[test]
    fn a_kernel_served_device_gets_its_rings_and_the_transport_leaves_them_alone() {
        let (mut t, calls) = kernel_served(false);
        assert_eq!(
            *crate::bus::lock(&calls),
            ["activate 8 0x1000 0x2000 0x3000"],
            "the rings as the driver set them, handed over at DRIVER_OK"
        );
        // A notify that reached the bus (not the ioeventfd) and the host side do nothing.
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        t.host_event();
        assert!(t.take_available(0, 1 << 20).is_none());
        assert_eq!(crate::bus::lock(&calls).len(), 1, "{:?}", calls);
        // The driver finds the used-ring bit at every interrupt, acknowledged or not.
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_USED_RING);
        w(&mut t, REG_INTERRUPT_ACK, INT_USED_RING);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_USED_RING);
        // A reset takes the rings back: the device hears it, the bit is no longer forced.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(crate::bus::lock(&calls).last().unwrap(), "reset");
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn a_failed_hand_over_to_the_kernel_fails_the_device() {
        let (mut t, calls) = kernel_served(true);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(
            crate::bus::lock(&calls).len(),
            1,
            "no queue runs: {:?}",
            calls
        );
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn host_resize_bumps_the_generation_and_raises_the_config_interrupt() {
        let sizes = Arc::new(Mutex::new((4096u64, 4096u64)));
        let interrupt = Interrupt::new().unwrap();
        let mut t =
            MmioTransport::new(Box::new(Resizable(sizes.clone())), mem(), interrupt.clone())
                .unwrap();
        // Before DRIVER_OK: config and generation change, no interrupt (the probe reads it).
        crate::bus::lock(&sizes).1 = 8192;
        assert_eq!(
            t.host_resize().unwrap(),
            Resized {
                old: 4096,
                new: 8192
            }
        );
        assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        assert!(interrupt.irqfd.read().is_err(), "no interrupt yet");
        bring_up(&mut t, 1);
        w(&mut t, REG_STATUS, 0xf);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
        // Unchanged: nothing moves.
        t.host_resize().unwrap();
        assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        // Grown while the driver runs: bit 1 on the device's line, the new bytes readable.
        crate::bus::lock(&sizes).1 = 1 << 33;
        t.host_resize().unwrap();
        assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 2);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(interrupt.irqfd.read().unwrap(), 1);
        assert_eq!(r(&mut t, CONFIG_SPACE), 0);
        assert_eq!(r(&mut t, CONFIG_SPACE + 4), 2);
        // A used-ring interrupt on top keeps both bits until each is acknowledged.
        interrupt.signal_used();
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG | INT_USED_RING);
        w(&mut t, REG_INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_USED_RING);
        // A device without a size refuses; nothing moves.
        let (mut d, _) = setup();
        assert!(matches!(d.host_resize(), Err(ResizeError::NotResizable(4))));
        assert_eq!(r(&mut d, REG_CONFIG_GENERATION), 0);
    }

    /// A device whose driver keeps adding while it runs: its re-arm says "more" for the
    /// first `busy` rounds.
    struct Busy {
        busy: usize,
        runs: Arc<Mutex<usize>>,
    }
    impl VirtioDevice for Busy {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn event_idx(&self) -> bool {
            true
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn process_queue(&mut self, _i: usize, _q: &mut [Queue], _m: &GuestMemory) -> bool {
            *crate::bus::lock(&self.runs) += 1;
            false
        }
        fn rearm(&mut self, _i: usize, _q: &mut Queue, _m: &GuestMemory) -> bool {
            let more = self.busy > 0;
            self.busy = self.busy.saturating_sub(1);
            more
        }
    }

    #[test]
    fn a_queue_is_run_until_its_rearm_finds_nothing_new() {
        let runs = Arc::new(Mutex::new(0));
        let dev = Busy {
            busy: 20,
            runs: runs.clone(),
        };
        let m = mem();
        let mut t = MmioTransport::new(Box::new(dev), m, Interrupt::new().unwrap()).unwrap();
        t.start_for_test(
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
            &[[0x1000, 0x1100, 0x1200]],
            16,
        );
        t.notify(0);
        // The notify's run, then one per round the driver added in: none is cut short (a
        // queue left behind its re-arm would never be notified again).
        assert_eq!(*crate::bus::lock(&runs), 21);
    }

    #[test]
    fn a_balloon_target_reaches_the_driver_and_actual_comes_back() {
        use crate::devices::virtio::balloon::{Balloon, BalloonStats, DontNeed};
        let stats = Arc::new(BalloonStats::default());
        let interrupt = Interrupt::new().unwrap();
        let mut t = MmioTransport::new(
            Box::new(Balloon::new(stats.clone(), Box::new(DontNeed))),
            mem(),
            interrupt.clone(),
        )
        .unwrap();
        assert_eq!(r(&mut t, REG_DEVICE_ID), 5);
        bring_up(&mut t, 1);
        w(&mut t, REG_STATUS, 0xf);
        assert!(t.set_balloon_target(300));
        assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(interrupt.irqfd.read().unwrap(), 1);
        assert_eq!(r(&mut t, CONFIG_SPACE), 300);
        // The driver's `actual` goes through config space; num_pages stays the host's.
        t.write(CONFIG_SPACE + 4, &300u32.to_le_bytes());
        t.write(CONFIG_SPACE, &1u32.to_le_bytes());
        assert_eq!(r(&mut t, CONFIG_SPACE), 300);
        assert_eq!(stats.actual_pages.load(Ordering::Relaxed), 300);
        // Other devices have no balloon and keep their config space read-only.
        let (mut d, _) = setup();
        assert!(!d.set_balloon_target(1));
        d.write(CONFIG_SPACE + 2, &[9, 9]);
        let mut cfg = [0u8; 2];
        d.read(CONFIG_SPACE + 2, &mut cfg);
        assert_eq!(cfg, [7, 6]);
    }

    #[test]
    fn features_ok_needs_version_1_and_only_offered_bits() {
        let (mut t, _) = setup();
        bring_up(&mut t, 0);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        let (mut t, _) = setup();
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, 1 << 7);
        bring_up(&mut t, 1);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn bad_queue_setup_and_odd_accesses_are_harmless() {
        let (mut t, calls) = setup();
        // Notify before DRIVER_OK, queue select out of range, byte-wide register accesses.
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        w(&mut t, REG_QUEUE_SEL, 99);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
        w(&mut t, REG_QUEUE_READY, 1);
        t.write(REG_STATUS, &[0xff]);
        let mut b = [0u8; 1];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0]);
        w(&mut t, REG_QUEUE_NOTIFY, 7);
        // Rings outside guest memory: DRIVER_OK flags NEEDS_RESET and the queue never runs.
        w(&mut t, REG_QUEUE_SEL, 0);
        bring_up(&mut t, 1);
        w(&mut t, REG_QUEUE_NUM, 16);
        w(&mut t, REG_QUEUE_DESC_LOW, 0xffff_f000);
        w(&mut t, REG_QUEUE_DESC_HIGH, 0xffff);
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_STATUS, 0xf);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        assert!(crate::bus::lock(&calls).is_empty());
    }
}
