//! virtio-blk on a raw image file: read, write, flush, get-id, discard and write-zeroes,
//! optionally read-only. Discard punches holes in the image (a cloud guest's fstrim gives its
//! host the space back); write-zeroes zeroes the range in place, or punches it where the guest
//! allows unmapping, and falls back to writing zeroes where the file system has neither.
//! A guest with several vCPUs gets a request queue for each ([`Block::with_queues`],
//! `VIRTIO_BLK_F_MQ`). In a VM the queues are served by the VMM's I/O thread, each kicked
//! through an ioeventfd of its own ([`serve_kicked`]): the notifying vCPU goes straight
//! back to the guest, which keeps queueing while the thread serves a batch, and the
//! transport's lock is not held during I/O. EVENT_IDX is offered, so a driver with a batch in flight does not notify per request
//! and the device does not interrupt per completion. [`VirtioDevice::process_queue`] serves
//! the same requests inline (the device tests use it). I/O is positioned and vectored
//! (`preadv`/`pwritev` straight into and out of guest memory, no bounce buffer), so the file
//! offset is never shared state. Sector numbers and lengths come from the guest and are
//! checked against the image size before any I/O.
//!
//! The image may grow while the guest runs: the host extends the file, then the control
//! socket's `resize_disk` makes [`VirtioDevice::host_resize`] re-read its size, and the
//! transport raises the configuration change interrupt so the guest's driver re-reads
//! `capacity`. The request path never looks at the file's size, only at `size`, so growing
//! costs it nothing.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::mmio::MmioTransport;
use super::{
    ChainError, Desc, ResizeError, Resized, TYPE_BLOCK, VirtioDevice, add_used, collect_chain,
    guest_iovecs, read_chain, read_config_bytes,
};
use crate::bus::lock;
use crate::memory::GuestMemory;
use crate::stats::DeviceStats;

mod pool;
mod uring;
pub use pool::{DiskPool, POOL_WORKERS};
pub use uring::DiskRing;

/// How the I/O thread moves a batch's data (see [`serve_kicked`]).
#[derive(Debug)]
pub enum DiskEngine {
    /// io_uring: the batch in the kernel at once.
    Ring(Box<DiskRing>),
    /// Worker threads, where there is no io_uring.
    Pool(DiskPool),
}

impl DiskEngine {
    /// The name `stats` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            DiskEngine::Ring(_) => "io_uring",
            DiskEngine::Pool(_) => "threads",
        }
    }
}

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Largest data transfer per request (and the I/O bounce buffer bound).
const MAX_REQUEST_BYTES: u64 = 4 << 20;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// Ranges one discard or write-zeroes request may carry (16 bytes each), and the sectors of
/// one range (1 GiB: the guest splits larger ones).
const MAX_RANGES: u32 = 32;
const MAX_RANGE_SECTORS: u32 = 1 << 21;
/// Discard granularity in sectors (4 KiB: what a hole can be punched in on the usual file
/// systems; the guest aligns its discards to it).
const DISCARD_ALIGN_SECTORS: u32 = 8;
/// The range flag of write-zeroes: the device may deallocate the range.
const RANGE_UNMAP: u32 = 1;
/// Layout of the configuration space (virtio 1.1, 5.2.4), up to write_zeroes_may_unmap.
const CONFIG_BYTES: usize = 60;
const CFG_NUM_QUEUES: usize = 34;
/// Request queues a disk offers at most (one per vCPU up to this; Linux maps each of its
/// CPUs to one, so a guest's CPUs do not contend for one queue's lock).
pub const MAX_QUEUES: u16 = 16;
const CFG_MAX_DISCARD_SECTORS: usize = 36;
const CFG_MAX_DISCARD_SEG: usize = 40;
const CFG_DISCARD_ALIGN: usize = 44;
const CFG_MAX_WZ_SECTORS: usize = 48;
const CFG_MAX_WZ_SEG: usize = 52;
const CFG_WZ_MAY_UNMAP: usize = 56;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const ID_BYTES: usize = 20;

/// Errors from opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened or sized.
    #[error("cannot open disk image {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A block device: its configuration space, and the backend that serves its requests.
pub struct Block {
    backend: Arc<Backend>,
    config: [u8; CONFIG_BYTES],
    /// Each request queue's size: one queue, or `VIRTIO_BLK_F_MQ` with several.
    queues: Vec<u16>,
}

/// What serving a disk's requests takes, shared by the device (on the MMIO bus) and the
/// thread that serves its queue.
pub struct Backend {
    file: File,
    /// The size requests are checked against; grows on a host resize.
    size: AtomicU64,
    read_only: bool,
    id: [u8; ID_BYTES],
    stats: Arc<DeviceStats>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("size", &self.backend.size())
            .field("read_only", &self.backend.read_only)
            .finish()
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("size", &self.size())
            .finish()
    }
}

impl Block {
    /// Opens `path`; `id` is what get-id returns (truncated to 20 bytes).
    pub fn open(
        path: &Path,
        read_only: bool,
        id: &str,
        stats: Arc<DeviceStats>,
    ) -> Result<Self, BlockError> {
        let err = |source| BlockError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        let size = file_size(&file).map_err(err)?;
        Ok(Self::from_file(file, size, read_only, id, stats))
    }

    pub fn from_file(
        file: File,
        size: u64,
        read_only: bool,
        id: &str,
        stats: Arc<DeviceStats>,
    ) -> Self {
        let mut idb = [0u8; ID_BYTES];
        for (d, s) in idb.iter_mut().zip(id.bytes()) {
            *d = s;
        }
        let mut config = [0u8; CONFIG_BYTES];
        // size_max (8..12) unused; seg_max bounds data descriptors per request.
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        for (at, v) in [
            (CFG_MAX_DISCARD_SECTORS, MAX_RANGE_SECTORS),
            (CFG_MAX_DISCARD_SEG, MAX_RANGES),
            (CFG_DISCARD_ALIGN, DISCARD_ALIGN_SECTORS),
            (CFG_MAX_WZ_SECTORS, MAX_RANGE_SECTORS),
            (CFG_MAX_WZ_SEG, MAX_RANGES),
            (CFG_WZ_MAY_UNMAP, 1),
        ] {
            config[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        let mut b = Block {
            backend: Arc::new(Backend {
                file,
                size: AtomicU64::new(0),
                read_only,
                id: idb,
                stats,
            }),
            config,
            queues: vec![QUEUE_SIZE],
        };
        b.set_size(size);
        b
    }

    /// Offers `n` request queues (1 to [`MAX_QUEUES`], clamped): with more than one,
    /// `VIRTIO_BLK_F_MQ` and `num_queues` tell the driver, which spreads its CPUs over them.
    pub fn with_queues(mut self, n: u16) -> Self {
        let n = n.clamp(1, MAX_QUEUES);
        self.queues = vec![QUEUE_SIZE; usize::from(n)];
        self.config[CFG_NUM_QUEUES..CFG_NUM_QUEUES + 2].copy_from_slice(&n.to_le_bytes());
        self
    }

    /// How many request queues the disk offers.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The backend, for the thread that serves this disk's queue.
    pub fn backend(&self) -> Arc<Backend> {
        self.backend.clone()
    }

    /// Sets the size requests are checked against and the `capacity` the guest reads (whole
    /// sectors: a partial last sector is never addressable).
    fn set_size(&mut self, size: u64) {
        self.backend.size.store(size, Ordering::Relaxed);
        self.config[..8].copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes());
        if let Some(c) = &self.backend.stats.capacity {
            c.store(size, Ordering::Relaxed);
        }
    }
}

/// The bytes of one request a disk accepts, data plus header and status.
pub const MAX_CHAIN_BYTES: u64 = MAX_REQUEST_BYTES + 4096;

/// Serves a disk's request queue `index` after a kick, from the thread that owns the
/// queue's ioeventfd: takes what the driver made available under the transport's lock, does the
/// I/O without it (a vCPU reading the interrupt status meanwhile does not wait for the
/// disk), and returns the requests under it again, until the driver has added no more.
/// With an engine (`Some((engine, slot))`; for a ring, the disk's file is its fixed file
/// `slot`) a batch's data moves all at once (see [`serve_batch`]); without one, one request
/// after the other on this thread. An engine that fails is the error.
pub fn serve_kicked(
    transport: &Mutex<MmioTransport>,
    index: usize,
    backend: &Arc<Backend>,
    mem: &GuestMemory,
    mut engine: Option<(&mut DiskEngine, u32)>,
) -> std::io::Result<()> {
    loop {
        let Some((batch, resets)) = lock(transport).take_available(index, MAX_CHAIN_BYTES) else {
            return Ok(());
        };
        let done: Vec<(u16, u32)> = match engine.as_mut() {
            Some((DiskEngine::Ring(ring), slot)) => {
                serve_batch(backend, batch, mem, |ios| ring.run(backend, *slot, ios))?
            }
            Some((DiskEngine::Pool(pool), _)) => {
                serve_batch(backend, batch, mem, |ios| pool.run(backend, ios))?
            }
            None => batch
                .into_iter()
                .map(|(head, descs)| (head, backend.handle(descs, mem)))
                .collect(),
        };
        if !lock(transport).complete(index, resets, &done) {
            return Ok(());
        }
    }
}

/// Serves a batch of one disk's requests: checks them all and serves here what moves no
/// data (get-id, discard, write-zeroes, refusals), then has `run` do the reads, writes and
/// flushes together (giving each one's status and bytes written into the guest, in
/// order); a lone one is done here, where the hand-off would cost more than it overlaps.
/// Returns (head, used length) in the batch's order, every request's status written.
fn serve_batch(
    backend: &Backend,
    batch: Vec<(u16, Result<Vec<Desc>, ChainError>)>,
    mem: &GuestMemory,
    run: impl FnOnce(Vec<Io>) -> std::io::Result<Vec<(u8, u32)>>,
) -> std::io::Result<Vec<(u16, u32)>> {
    let mut done = Vec::with_capacity(batch.len());
    let mut at = Vec::new();
    let mut ios = Vec::new();
    for (head, descs) in batch {
        let i = done.len();
        done.push((head, 0));
        match backend.start(descs, mem) {
            None => {}
            Some((addr, Work::Done(st, n))) => done[i].1 = backend.reply(mem, addr, st, n),
            Some((addr, Work::Io(io))) => {
                at.push((i, addr));
                ios.push(io);
            }
        }
    }
    let results = if ios.len() == 1 {
        ios.into_iter()
            .map(|io| backend.finish(Work::Io(io)))
            .collect()
    } else {
        run(ios)?
    };
    for ((i, addr), (st, n)) in at.into_iter().zip(results) {
        done[i].1 = backend.reply(mem, addr, st, n);
    }
    Ok(done)
}

impl Backend {
    /// The image's descriptor, for a [`DiskRing`]'s fixed files.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Serves one request whose chain was walked into `descs`: writes its status byte and
    /// returns the used length (0 for a chain too malformed to carry a status).
    pub fn handle(&self, descs: Result<Vec<Desc>, ChainError>, mem: &GuestMemory) -> u32 {
        match self.start(descs, mem) {
            Some((status_addr, work)) => {
                let (st, written) = self.finish(work);
                self.reply(mem, status_addr, st, written)
            }
            None => 0,
        }
    }

    /// Checks a request and serves what needs no data moved (get-id, discard,
    /// write-zeroes, refusals); returns where its status goes and what is left to do, or
    /// `None` for a chain too malformed to carry a status (counted as an error).
    fn start(
        &self,
        descs: Result<Vec<Desc>, ChainError>,
        mem: &GuestMemory,
    ) -> Option<(u64, Work)> {
        match descs.and_then(|d| Ok((self.plan(&d, mem)?, d))) {
            Ok((work, descs)) => Some((descs.last().map_or(0, |d| d.addr), work)),
            Err(_) => {
                DeviceStats::add(&self.stats.errors, 1);
                None
            }
        }
    }

    /// Does a request's data transfer or flush on this thread (a [`Work::Done`] is
    /// returned as it is); gives its status and the bytes written into guest buffers.
    fn finish(&self, work: Work) -> (u8, u32) {
        match work {
            Work::Done(st, written) => (st, written),
            Work::Io(Io::Flush) => self.flushed(self.file.sync_data().is_ok()),
            Work::Io(Io::Rw {
                read,
                start,
                len,
                mut iovs,
            }) => self.moved(
                read,
                len,
                vectored_io(&self.file, read, &mut iovs, start).is_ok(),
            ),
        }
    }

    /// A request's status once the ring completed its I/O with `res` (bytes moved, or a
    /// negative errno); a short transfer is finished here, as `preadv` would resume it.
    fn completed(&self, io: &mut Io, res: i32) -> (u8, u32) {
        match io {
            Io::Flush => self.flushed(res >= 0),
            Io::Rw {
                read,
                start,
                len,
                iovs,
            } => {
                let ok = match u64::try_from(res) {
                    Err(_) | Ok(0) => false,
                    Ok(n) if n >= *len => true,
                    Ok(n) => {
                        let first = skip(iovs, n as usize);
                        vectored_io(&self.file, *read, &mut iovs[first..], *start + n).is_ok()
                    }
                };
                self.moved(*read, *len, ok)
            }
        }
    }

    /// A flush's status once the image's data reached the disk (or did not).
    fn flushed(&self, ok: bool) -> (u8, u32) {
        (if ok { S_OK } else { S_IOERR }, 0)
    }

    /// A read's or write's status once its data moved (or did not), counted.
    fn moved(&self, read: bool, len: u64, ok: bool) -> (u8, u32) {
        match (ok, read) {
            (false, _) => (S_IOERR, 0),
            (true, true) => {
                DeviceStats::add(&self.stats.read_bytes, len);
                (S_OK, len as u32)
            }
            (true, false) => {
                DeviceStats::add(&self.stats.written_bytes, len);
                (S_OK, 0)
            }
        }
    }

    /// Writes a served request's status byte; returns its used length (0 when the status
    /// cannot be written).
    fn reply(&self, mem: &GuestMemory, status_addr: u64, st: u8, written: u32) -> u32 {
        if st == S_IOERR {
            DeviceStats::add(&self.stats.errors, 1);
        }
        if mem.write_obj(st, GuestAddress(status_addr)).is_ok() {
            written + 1
        } else {
            0
        }
    }

    /// Checks one request; returns what serving it takes, or an error for chains too
    /// malformed to carry a status.
    fn plan(&self, descs: &[Desc], mem: &GuestMemory) -> Result<Work, ChainError> {
        let (hdr, rest) = descs
            .split_first()
            .ok_or(ChainError::Malformed("empty chain"))?;
        let (status, data) = rest
            .split_last()
            .ok_or(ChainError::Malformed("no status descriptor"))?;
        if hdr.write_only {
            return Err(ChainError::Direction { index: 0 });
        }
        if hdr.len < 16 {
            return Err(ChainError::Malformed(
                "request header shorter than 16 bytes",
            ));
        }
        if !status.write_only {
            return Err(ChainError::Direction {
                index: descs.len() - 1,
            });
        }
        if status.len < 1 {
            return Err(ChainError::Malformed("empty status descriptor"));
        }
        let mut h = [0u8; 16];
        mem.read_slice(&mut h, GuestAddress(hdr.addr))
            .map_err(|_| ChainError::OutOfBounds {
                addr: hdr.addr,
                len: hdr.len,
            })?;
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        let data_len: u64 = data.iter().map(|d| u64::from(d.len)).sum();
        let want_write = matches!(kind, T_IN | T_GET_ID);
        if matches!(kind, T_IN | T_OUT | T_GET_ID | T_DISCARD | T_WRITE_ZEROES)
            && let Some(i) = data.iter().position(|d| d.write_only != want_write)
        {
            return Err(ChainError::Direction { index: i + 1 });
        }
        DeviceStats::add(&self.stats.requests, 1);
        Ok(match kind {
            T_IN | T_OUT => self.rw(kind == T_IN, sector, data, data_len, mem),
            T_FLUSH if self.read_only => Work::Done(S_OK, 0),
            T_FLUSH => Work::Io(Io::Flush),
            T_GET_ID => match data.first() {
                Some(d) => {
                    let n = (d.len as usize).min(ID_BYTES);
                    match mem.write_slice(&self.id[..n], GuestAddress(d.addr)) {
                        Ok(()) => Work::Done(S_OK, n as u32),
                        Err(_) => Work::Done(S_IOERR, 0),
                    }
                }
                None => Work::Done(S_IOERR, 0),
            },
            T_DISCARD | T_WRITE_ZEROES => Work::Done(self.ranges(kind, data, data_len, mem), 0),
            _ => Work::Done(S_UNSUPP, 0),
        })
    }

    /// Serves discard and write-zeroes: `data` holds 16-byte ranges (sector, sector count,
    /// flags). Every range is checked before any is acted on, so a request with one bad range
    /// changes nothing.
    fn ranges(&self, kind: u32, data: &[Desc], len: u64, mem: &GuestMemory) -> u8 {
        if self.read_only {
            return S_IOERR;
        }
        if len == 0 || !len.is_multiple_of(16) || len > u64::from(MAX_RANGES) * 16 {
            return S_UNSUPP;
        }
        let Ok(raw) = read_chain(data, mem) else {
            return S_IOERR;
        };
        let mut todo = Vec::new();
        for r in raw.chunks_exact(16) {
            let sector = u64::from_le_bytes(r[..8].try_into().unwrap_or_default());
            let count = u32::from_le_bytes(r[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(r[12..16].try_into().unwrap_or_default());
            // Discard takes no flags; write-zeroes only "unmap".
            let allowed = if kind == T_DISCARD { 0 } else { RANGE_UNMAP };
            if flags & !allowed != 0 || count > MAX_RANGE_SECTORS {
                return S_UNSUPP;
            }
            let range = sector.checked_mul(SECTOR_SIZE).and_then(|start| {
                let n = u64::from(count) * SECTOR_SIZE;
                start
                    .checked_add(n)
                    .filter(|end| *end <= self.size())
                    .map(|_| (start, n))
            });
            match range {
                Some(r) => todo.push((r, flags & RANGE_UNMAP != 0)),
                None => return S_IOERR,
            }
        }
        for ((start, n), unmap) in todo {
            let done = if kind == T_DISCARD {
                discard(&self.file, start, n)
            } else {
                write_zeroes(&self.file, start, n, unmap)
            };
            if done.is_err() {
                return S_IOERR;
            }
            if kind == T_WRITE_ZEROES {
                DeviceStats::add(&self.stats.written_bytes, n);
            }
        }
        S_OK
    }

    fn rw(&self, read: bool, sector: u64, data: &[Desc], len: u64, mem: &GuestMemory) -> Work {
        if !read && self.read_only {
            return Work::Done(S_IOERR, 0);
        }
        let Some(start) = sector.checked_mul(SECTOR_SIZE) else {
            return Work::Done(S_IOERR, 0);
        };
        if !len.is_multiple_of(SECTOR_SIZE)
            || len > MAX_REQUEST_BYTES
            || start.checked_add(len).is_none_or(|end| end > self.size())
        {
            return Work::Done(S_IOERR, 0);
        }
        match guest_iovecs(data, mem) {
            Some(iovs) => Work::Io(Io::Rw {
                read,
                start,
                len,
                iovs,
            }),
            None => Work::Done(S_IOERR, 0),
        }
    }
}

/// What a checked request still needs.
enum Work {
    /// Nothing: its status and the bytes written into guest buffers.
    Done(u8, u32),
    /// I/O on the image.
    Io(Io),
}

/// A request's I/O on the image, done on the I/O thread or through io_uring.
enum Io {
    /// Its data moved between the image at `start` and the guest's buffers.
    Rw {
        read: bool,
        start: u64,
        len: u64,
        iovs: Vec<libc::iovec>,
    },
    /// The image's data on the disk.
    Flush,
}

/// Gives the range's blocks back to the file system. Discard is a hint: a file system that
/// cannot punch holes keeps the data, and the guest is told it went well (it may read either).
fn discard(file: &File, start: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        start,
        len,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        r => r,
    }
}

/// Makes the range read as zeroes: a hole where `unmap` allows it, else zeroed blocks kept
/// allocated; where the file system offers neither, by writing zeroes.
fn write_zeroes(file: &File, start: u64, len: u64, unmap: bool) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mode = if unmap {
        libc::FALLOC_FL_PUNCH_HOLE
    } else {
        libc::FALLOC_FL_ZERO_RANGE
    };
    match fallocate(file, mode | libc::FALLOC_FL_KEEP_SIZE, start, len) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            let zeroes = vec![0u8; len.min(1 << 20) as usize];
            let mut off = start;
            while off < start + len {
                let n = (start + len - off).min(zeroes.len() as u64) as usize;
                file.write_all_at(&zeroes[..n], off)?;
                off += n as u64;
            }
            Ok(())
        }
        r => r,
    }
}

fn fallocate(file: &File, mode: libc::c_int, start: u64, len: u64) -> std::io::Result<()> {
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(start), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate on an fd we own, with plain integer arguments; the result is checked.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, n) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads the file at `off` into `iovs` (or writes them there) until all are done: one
/// `preadv`/`pwritev` per request where the kernel does it whole, resumed after a short one.
fn vectored_io(
    file: &File,
    read: bool,
    iovs: &mut [libc::iovec],
    mut off: u64,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < iovs.len() {
        let rest = &iovs[first..];
        let count = rest.len().min(1024) as libc::c_int;
        let at = libc::off_t::try_from(off)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: every iovec points into guest memory's mapping, which lives as long as the
        // VM (`mem` holds it); the kernel reads or writes only those ranges. The guest may
        // touch them meanwhile, as with any DMA.
        let n = unsafe {
            if read {
                libc::preadv(file.as_raw_fd(), rest.as_ptr(), count, at)
            } else {
                libc::pwritev(file.as_raw_fd(), rest.as_ptr(), count, at)
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        off += n as u64;
        first += skip(&mut iovs[first..], n as usize);
    }
    Ok(())
}

/// Drops the first `n` bytes of `iovs` (a transfer that got that far): returns how many
/// buffers are done whole, and shortens the one it stopped inside.
fn skip(iovs: &mut [libc::iovec], mut n: usize) -> usize {
    let mut first = 0;
    while n > 0 && first < iovs.len() {
        let v = &mut iovs[first];
        if n >= v.iov_len {
            n -= v.iov_len;
            first += 1;
        } else {
            // SAFETY: advancing within the same buffer, by less than its length.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n).cast() };
            v.iov_len -= n;
            n = 0;
        }
    }
    first
}

/// The file's size by the `fstat` syscall itself: std's `metadata` tries `statx` first and
/// glibc's `fstat` is `newfstatat` with an empty path, neither of which the main thread's
/// seccomp filter allows (a resize runs there; `fstat` takes no path, so it reveals nothing
/// beyond the fds the VMM holds).
fn file_size(file: &File) -> std::io::Result<u64> {
    // SAFETY: the fstat syscall on an fd we own, into a zeroed local stat buffer of the
    // kernel's layout (libc::stat is struct stat on x86-64); the result is checked below.
    let (rc, st) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let rc = libc::syscall(
            libc::SYS_fstat,
            file.as_raw_fd(),
            &mut st as *mut libc::stat,
        );
        (rc, st)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    u64::try_from(st.st_size).map_err(|_| std::io::Error::other("negative file size"))
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queues
    }

    fn event_idx(&self) -> bool {
        true
    }

    /// The I/O thread re-arms a disk's queue as it returns requests
    /// ([`MmioTransport::complete`]); a vCPU, whose filter has no disk I/O, never runs it
    /// (a notify KVM does not take, of another value or size, finds nothing to do).
    fn rearm(&mut self, _index: usize, _queue: &mut Queue, _mem: &GuestMemory) -> bool {
        false
    }

    fn features(&self) -> u64 {
        let mq = if self.queues.len() > 1 { F_MQ } else { 0 };
        mq | if self.backend.read_only {
            F_SEG_MAX | F_FLUSH | F_RO
        } else {
            F_SEG_MAX | F_FLUSH | F_DISCARD | F_WRITE_ZEROES
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn host_resize(&mut self) -> Result<Resized, ResizeError> {
        let old = self.backend.size();
        let new = file_size(&self.backend.file).map_err(ResizeError::Stat)?;
        if new < old {
            return Err(ResizeError::Shrunk { old, new });
        }
        self.set_size(new);
        Ok(Resized { old, new })
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> bool {
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            // The whole request (data plus header and status) must fit the transfer bound.
            let len = self
                .backend
                .handle(collect_chain(chain, mem, MAX_CHAIN_BYTES), mem);
            used |= add_used(queue, mem, head, len);
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testutil::*;
    use std::io::Write;

    const HDR: u64 = 0x8000;
    const DATA: u64 = 0x9000;
    const STATUS: u64 = 0xc000;

    fn disk(sectors: u64, ro: bool) -> (Block, tempfile::NamedTempFile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; (sectors * SECTOR_SIZE) as usize];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 512) as u8;
        }
        f.write_all(&data).unwrap();
        let b = Block::open(
            f.path(),
            ro,
            "hull-test-disk",
            Arc::new(DeviceStats::default()),
        )
        .unwrap();
        (b, f)
    }

    fn header(m: &GuestMemory, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        write(m, HDR, &h);
        write(m, STATUS, &[0xee]);
    }

    fn run(b: &mut Block, t: &TestQueue, m: &GuestMemory) -> bool {
        let mut qs = vec![t.queue()];
        b.process_queue(0, &mut qs, m)
    }

    fn status(m: &GuestMemory) -> u8 {
        read(m, STATUS, 1)[0]
    }

    /// A read of sector `sector` as request `n`: header, 512-byte buffer and status at
    /// addresses of its own.
    fn read_request(t: &mut TestQueue, m: &GuestMemory, n: u64, sector: u64) {
        let (hdr, data, status) = (0x8000 + n * 0x20, 0x20000 + n * 0x1000, 0xc000 + n);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&T_IN.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        write(m, hdr, &h);
        write(m, status, &[0xee]);
        t.add_chain(&[(hdr, 16, 0), (data, 512, F_WRITE), (status, 1, F_WRITE)]);
    }

    /// Where the transport tests put the used ring: virtio-queue's mock lays its used ring
    /// over the avail ring's used_event, which EVENT_IDX needs.
    const USED: u64 = 0x1800;

    fn u16_at(m: &GuestMemory, at: u64) -> u16 {
        u16::from_le_bytes(read(m, at, 2).try_into().unwrap())
    }

    fn used_idx(m: &GuestMemory) -> u16 {
        u16_at(m, USED + 2)
    }

    /// The length of used entry `i`.
    fn used_len(m: &GuestMemory, i: u64) -> u32 {
        u32::from_le_bytes(read(m, USED + 8 + 8 * i, 4).try_into().unwrap())
    }

    /// The used ring's avail_event: where the device asked to be notified next.
    fn avail_event(m: &GuestMemory) -> u16 {
        u16_at(m, USED + 4 + 8 * u64::from(QSIZE))
    }

    /// Sets the avail ring's used_event: where the driver wants its next interrupt.
    fn set_used_event(t: &TestQueue, m: &GuestMemory, v: u16) {
        write(
            m,
            t.mock.avail_addr().0 + 4 + 2 * u64::from(QSIZE),
            &v.to_le_bytes(),
        );
    }

    fn kicked_disk(
        m: &GuestMemory,
        t: &TestQueue,
        features: u64,
    ) -> (
        Mutex<MmioTransport>,
        Arc<Backend>,
        Arc<super::super::mmio::Interrupt>,
        tempfile::NamedTempFile,
    ) {
        let (b, f) = disk(16, false);
        let backend = b.backend();
        let irq = super::super::mmio::Interrupt::new().unwrap();
        let mut tr = MmioTransport::new(Box::new(b), m.clone(), irq.clone()).unwrap();
        let rings = [t.mock.desc_table_addr().0, t.mock.avail_addr().0, USED];
        tr.start_for_test(features, &[rings], QSIZE);
        (Mutex::new(tr), backend, irq, f)
    }

    #[test]
    fn a_kick_serves_the_batch_and_event_idx_spares_interrupts_and_notifies() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        let features = super::super::VIRTIO_F_VERSION_1 | super::super::VIRTIO_RING_F_EVENT_IDX;
        let (tr, backend, irq, _f) = kicked_disk(&m, &t, features);
        for n in 0..3 {
            read_request(&mut t, &m, n, 5 + n);
        }
        serve_kicked(&tr, 0, &backend, &m, None).unwrap();
        assert_eq!(used_idx(&m), 3);
        for n in 0..3u64 {
            assert_eq!(read(&m, 0xc000 + n, 1)[0], S_OK);
            assert!(read(&m, 0x20000 + n * 0x1000, 512) == vec![5 + n as u8; 512]);
            assert_eq!(used_len(&m, n), 513);
        }
        // The driver's used_event was 0: one interrupt for the batch, and the device asks
        // to be notified at the next entry.
        assert_eq!(irq.irqfd.read().unwrap(), 1);
        assert_eq!(avail_event(&m), 3);

        // The driver wants its next interrupt only after the 10th completion: none now.
        set_used_event(&t, &m, 9);
        read_request(&mut t, &m, 3, 1);
        serve_kicked(&tr, 0, &backend, &m, None).unwrap();
        assert_eq!(used_idx(&m), 4);
        assert!(irq.irqfd.read().is_err(), "interrupt despite used_event");
        assert_eq!(avail_event(&m), 4);
    }

    #[test]
    fn several_vcpus_get_a_request_queue_each_served_on_its_own_kick() {
        let (b, _f) = disk(16, false);
        assert_eq!(b.features() & F_MQ, 0, "one queue: no MQ");
        assert_eq!(b.queue_max_sizes(), &[QUEUE_SIZE]);
        let b = b.with_queues(2);
        assert_ne!(b.features() & F_MQ, 0);
        assert_eq!(b.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
        let mut n = [0u8; 2];
        b.read_config(CFG_NUM_QUEUES as u64, &mut n);
        assert_eq!(u16::from_le_bytes(n), 2);
        let (many, _f2) = disk(16, true);
        assert_eq!(many.with_queues(200).queue_count(), usize::from(MAX_QUEUES));

        // Two queues on one transport: a kick of queue 1 serves queue 1 and leaves queue 0's
        // request where it is, until queue 0's own kick.
        let m = mem();
        let mut q0 = TestQueue::new(&m);
        let mut q1 = TestQueue::new_at(&m, 0x4000);
        let backend = b.backend();
        let irq = super::super::mmio::Interrupt::new().unwrap();
        let mut tr = MmioTransport::new(Box::new(b), m.clone(), irq.clone()).unwrap();
        let rings = |t: &TestQueue| {
            [
                t.mock.desc_table_addr().0,
                t.mock.avail_addr().0,
                t.mock.used_addr().0,
            ]
        };
        tr.start_for_test(
            super::super::VIRTIO_F_VERSION_1,
            &[rings(&q0), rings(&q1)],
            QSIZE,
        );
        let tr = Mutex::new(tr);
        read_request(&mut q0, &m, 0, 3);
        read_request(&mut q1, &m, 4, 7);
        let used = |t: &TestQueue| u16_at(&m, t.mock.used_addr().0 + 2);
        serve_kicked(&tr, 1, &backend, &m, None).unwrap();
        assert_eq!((used(&q0), used(&q1)), (0, 1));
        assert_eq!(read(&m, 0xc004, 1)[0], S_OK);
        assert!(read(&m, 0x24000, 512) == vec![7u8; 512]);
        assert_eq!(
            read(&m, 0xc000, 1)[0],
            0xee,
            "queue 0's request was served early"
        );
        serve_kicked(&tr, 0, &backend, &m, None).unwrap();
        assert_eq!((used(&q0), used(&q1)), (1, 1));
        assert!(read(&m, 0x20000, 512) == vec![3u8; 512]);
        assert_eq!(irq.irqfd.read().unwrap(), 2);
    }

    /// A write of `fill` to sector `sector` as request `n` (addresses as `read_request`'s).
    fn write_request(t: &mut TestQueue, m: &GuestMemory, n: u64, sector: u64, fill: u8) {
        let (hdr, data, status) = (0x8000 + n * 0x20, 0x20000 + n * 0x1000, 0xc000 + n);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&T_OUT.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        write(m, hdr, &h);
        write(m, data, &[fill; 512]);
        write(m, status, &[0xee]);
        t.add_chain(&[(hdr, 16, 0), (data, 512, 0), (status, 1, F_WRITE)]);
    }

    /// A request of `kind` without data (a flush) as request `n`.
    fn bare_request(t: &mut TestQueue, m: &GuestMemory, n: u64, kind: u32) {
        let (hdr, status) = (0x8000 + n * 0x20, 0xc000 + n);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        write(m, hdr, &h);
        write(m, status, &[0xee]);
        t.add_chain(&[(hdr, 16, 0), (status, 1, F_WRITE)]);
    }

    /// The ring where this kernel gives one; `None` (the test then checks nothing more)
    /// only where io_uring is missing or switched off, which the message says.
    fn ring_for(backend: &Backend) -> Option<DiskRing> {
        match DiskRing::new(&[backend.raw_fd()]) {
            Ok(r) => Some(r),
            Err(e) => {
                let off = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                    .is_ok_and(|v| v.trim() != "0");
                assert!(
                    off || e.raw_os_error() == Some(libc::ENOSYS),
                    "io_uring is on here, but no ring: {e}"
                );
                eprintln!("no io_uring on this kernel ({e}): ring path not tested");
                None
            }
        }
    }

    /// An engine of `kind` for `backend`: the pool always (its workers under their real
    /// filter, so a call the filter lacks kills the test), the ring where the kernel has
    /// io_uring.
    fn engine(kind: &str, backend: &Backend) -> Option<DiskEngine> {
        if kind == "threads" {
            let confine = || crate::seccomp::apply(crate::seccomp::ThreadRole::DiskWorker);
            return Some(DiskEngine::Pool(
                DiskPool::new(POOL_WORKERS, confine).unwrap(),
            ));
        }
        ring_for(backend).map(|r| DiskEngine::Ring(Box::new(r)))
    }

    #[test]
    fn each_engine_serves_a_batch_of_reads_writes_and_a_flush_in_one_go() {
        for kind in ["threads", "io_uring"] {
            let m = mem();
            let mut t = TestQueue::new(&m);
            let features = super::super::VIRTIO_F_VERSION_1 | super::super::VIRTIO_RING_F_EVENT_IDX;
            let (tr, backend, irq, f) = kicked_disk(&m, &t, features);
            let Some(mut engine) = engine(kind, &backend) else {
                continue;
            };
            assert_eq!(engine.name(), kind);
            read_request(&mut t, &m, 0, 5);
            write_request(&mut t, &m, 1, 9, 0xa5);
            read_request(&mut t, &m, 2, 15);
            bare_request(&mut t, &m, 3, T_FLUSH);
            bare_request(&mut t, &m, 4, 99);
            write_request(&mut t, &m, 5, 16, 0x11);
            serve_kicked(&tr, 0, &backend, &m, Some((&mut engine, 0))).unwrap();
            assert_eq!(used_idx(&m), 6);
            let st = |n: u64| read(&m, 0xc000 + n, 1)[0];
            assert_eq!(
                (0..6).map(st).collect::<Vec<_>>(),
                [S_OK, S_OK, S_OK, S_OK, S_UNSUPP, S_IOERR],
                "{kind}: read, write, read, flush, unknown type, write past the end"
            );
            assert!(read(&m, 0x20000, 512) == vec![5; 512]);
            assert!(read(&m, 0x22000, 512) == vec![15; 512]);
            assert_eq!(
                (0..6).map(|n| used_len(&m, n)).collect::<Vec<_>>(),
                [513, 1, 513, 1, 1, 1]
            );
            let content = std::fs::read(f.path()).unwrap();
            assert_eq!(&content[9 * 512..10 * 512], &[0xa5; 512]);
            assert_eq!(
                content.len(),
                16 * 512,
                "the write past the end wrote nothing"
            );
            let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
            assert_eq!(ld(&backend.stats.read_bytes), 1024);
            assert_eq!(ld(&backend.stats.written_bytes), 512);
            assert_eq!(ld(&backend.stats.errors), 1);
            assert_eq!(irq.irqfd.read().unwrap(), 1, "one interrupt for the batch");
        }
    }

    #[test]
    fn a_pool_whose_workers_are_gone_fails_the_batch_rather_than_wait_forever() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        let (tr, backend, _irq, _f) = kicked_disk(&m, &t, super::super::VIRTIO_F_VERSION_1);
        let refused = || {
            Err(crate::seccomp::SeccompError::TooLarge(
                crate::seccomp::ThreadRole::DiskWorker,
            ))
        };
        let mut pool = DiskEngine::Pool(DiskPool::new(2, refused).unwrap());
        read_request(&mut t, &m, 0, 1);
        read_request(&mut t, &m, 1, 2);
        let e = serve_kicked(&tr, 0, &backend, &m, Some((&mut pool, 0))).unwrap_err();
        assert!(e.to_string().contains("worker threads are gone"), "{e}");
    }

    #[test]
    fn a_lone_request_with_a_ring_is_served_like_the_rest() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        let (tr, backend, _irq, f) = kicked_disk(&m, &t, super::super::VIRTIO_F_VERSION_1);
        let Some(mut ring) = ring_for(&backend).map(|r| DiskEngine::Ring(Box::new(r))) else {
            return;
        };
        write_request(&mut t, &m, 0, 2, 0x3c);
        serve_kicked(&tr, 0, &backend, &m, Some((&mut ring, 0))).unwrap();
        read_request(&mut t, &m, 1, 2);
        serve_kicked(&tr, 0, &backend, &m, Some((&mut ring, 0))).unwrap();
        assert_eq!(used_idx(&m), 2);
        assert_eq!(
            (read(&m, 0xc000, 1)[0], read(&m, 0xc001, 1)[0]),
            (S_OK, S_OK)
        );
        assert!(read(&m, 0x21000, 512) == vec![0x3c; 512]);
        assert_eq!(&std::fs::read(f.path()).unwrap()[1024..1536], &[0x3c; 512]);
    }

    #[test]
    fn a_short_transfer_from_the_ring_is_finished_on_the_thread() {
        let m = mem();
        let (b, _f) = disk(16, false);
        let backend = b.backend();
        write(&m, 0x20000, &[0; 1024]);
        let iovs = guest_iovecs(
            &[Desc {
                addr: 0x20000,
                len: 1024,
                write_only: true,
            }],
            &m,
        )
        .unwrap();
        let mut io = Io::Rw {
            read: true,
            start: 4 * SECTOR_SIZE,
            len: 1024,
            iovs,
        };
        // The ring moved the first 512 bytes (sector 4), so the buffer's first half holds
        // what it put there (zeroes here), and the rest is read from sector 5.
        assert_eq!(backend.completed(&mut io, 512), (S_OK, 1024));
        assert!(read(&m, 0x20000, 512) == vec![0; 512]);
        assert!(read(&m, 0x20200, 512) == vec![5; 512]);
        assert_eq!(backend.completed(&mut io, -libc::EIO), (S_IOERR, 0));
        assert_eq!(backend.completed(&mut io, 0), (S_IOERR, 0), "no progress");
        assert_eq!(backend.completed(&mut Io::Flush, 0), (S_OK, 0));
        assert_eq!(backend.completed(&mut Io::Flush, -libc::EIO), (S_IOERR, 0));
    }

    #[test]
    fn the_ring_refuses_other_opcodes_descriptors_and_registrations() {
        let (b, f) = disk(16, false);
        let backend = b.backend();
        let Some(mut ring) = ring_for(&backend) else {
            return;
        };
        let other = std::fs::File::open(f.path()).unwrap();
        let mut buf = [0u8; 512];
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        use io_uring::{opcode, types};
        let path = c"/etc/passwd";
        let cases = [
            (
                "readv of a descriptor not registered",
                opcode::Readv::new(types::Fd(other.as_raw_fd()), iov.as_ptr(), 1).build(),
            ),
            (
                "openat",
                opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build(),
            ),
            (
                "read (not vectored) of the disk",
                opcode::Read::new(types::Fixed(0), buf.as_mut_ptr(), 512).build(),
            ),
        ];
        for (what, entry) in cases {
            assert_eq!(ring.raw_result(&entry), -libc::EACCES, "{what}");
        }
        let ok = opcode::Readv::new(types::Fixed(0), iov.as_ptr(), 1)
            .offset(512 * 3)
            .build();
        assert_eq!(ring.raw_result(&ok), 512, "readv of the disk");
        assert_eq!(buf, [3; 512]);
        let e = ring
            .register_files_update(0, &[other.as_raw_fd()])
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    }

    #[test]
    fn without_event_idx_every_kick_that_completes_interrupts() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        let (tr, backend, irq, _f) = kicked_disk(&m, &t, super::super::VIRTIO_F_VERSION_1);
        set_used_event(&t, &m, 9);
        read_request(&mut t, &m, 0, 2);
        serve_kicked(&tr, 0, &backend, &m, None).unwrap();
        assert_eq!(used_idx(&m), 1);
        assert_eq!(irq.irqfd.read().unwrap(), 1);
        // Nothing new: no interrupt.
        serve_kicked(&tr, 0, &backend, &m, None).unwrap();
        assert!(irq.irqfd.read().is_err());
    }

    #[test]
    fn requests_taken_before_a_reset_are_not_returned_after_it() {
        let m = mem();
        let mut t = TestQueue::new(&m);
        let (tr, backend, irq, _f) = kicked_disk(&m, &t, super::super::VIRTIO_F_VERSION_1);
        read_request(&mut t, &m, 0, 2);
        let (batch, resets) = lock(&tr).take_available(0, MAX_CHAIN_BYTES).unwrap();
        assert_eq!(batch.len(), 1);
        // The driver resets the device while the request is in flight.
        crate::bus::BusDevice::write(&mut *lock(&tr), 0x70, &0u32.to_le_bytes());
        let done: Vec<_> = batch
            .into_iter()
            .map(|(h, d)| (h, backend.handle(d, &m)))
            .collect();
        assert!(!lock(&tr).complete(0, resets, &done));
        assert_eq!(used_idx(&m), 0, "a used entry written into a reset queue");
        assert!(irq.irqfd.read().is_err());
        // And a reset device takes nothing.
        assert!(lock(&tr).take_available(0, MAX_CHAIN_BYTES).is_none());
    }

    #[test]
    fn vectored_io_resumes_after_short_transfers_and_skips_empty_buffers() {
        let m = mem();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
        f.write_all(&content).unwrap();
        // Buffers of odd sizes, one empty, crossing what one call may return.
        let descs = [
            Desc {
                addr: 0x20000,
                len: 100,
                write_only: true,
            },
            Desc {
                addr: 0x30000,
                len: 0,
                write_only: true,
            },
            Desc {
                addr: 0x40000,
                len: 8000,
                write_only: true,
            },
            Desc {
                addr: 0x50000,
                len: 4188,
                write_only: true,
            },
        ];
        let mut iovs = guest_iovecs(&descs, &m).unwrap();
        assert_eq!(iovs.len(), 3);
        vectored_io(f.as_file(), true, &mut iovs, 0).unwrap();
        assert!(read(&m, 0x20000, 100) == content[..100]);
        assert!(read(&m, 0x40000, 8000) == content[100..8100]);
        assert!(read(&m, 0x50000, 4188) == content[8100..]);
        // Writes go out whole from the same buffers.
        let mut iovs = guest_iovecs(&descs, &m).unwrap();
        vectored_io(f.as_file(), false, &mut iovs, 4096).unwrap();
        let back = std::fs::read(f.path()).unwrap();
        assert!(back[4096..] == content[..], "written bytes differ");
        // Past the end of the file is an error, not a partial success.
        let mut iovs = guest_iovecs(&descs, &m).unwrap();
        assert!(vectored_io(f.as_file(), true, &mut iovs, 8192).is_err());
    }

    #[test]
    fn reads_with_one_or_many_data_descriptors() {
        let m = mem();
        let (mut b, _f) = disk(8, false);
        let mut t = TestQueue::new(&m);
        header(&m, T_IN, 2);
        t.add_chain(&[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)]);
        assert!(run(&mut b, &t, &m));
        assert_eq!(status(&m), S_OK);
        assert_eq!(read(&m, DATA, 512), vec![2u8; 512]);
        assert_eq!(t.used(0).1, 513);

        // Header, three data buffers of different sizes, status.
        let mut t = TestQueue::new(&m);
        header(&m, T_IN, 1);
        t.add_chain(&[
            (HDR, 16, 0),
            (DATA, 256, F_WRITE),
            (DATA + 0x1000, 256, F_WRITE),
            (DATA + 0x2000, 1024, F_WRITE),
            (STATUS, 1, F_WRITE),
        ]);
        run(&mut b, &t, &m);
        assert_eq!(status(&m), S_OK);
        assert_eq!(read(&m, DATA, 256), vec![1u8; 256]);
        assert_eq!(read(&m, DATA + 0x2000, 1024)[..512], [2u8; 512]);
        assert_eq!(t.used(0).1, 1537);
    }

    #[test]
    fn writes_reach_the_file_and_flush_works() {
        let m = mem();
        let (mut b, f) = disk(8, false);
        let mut t = TestQueue::new(&m);
        header(&m, T_OUT, 3);
        write(&m, DATA, &[0x5a; 512]);
        t.add_chain(&[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]);
        run(&mut b, &t, &m);
        assert_eq!(status(&m), S_OK);
        let content = std::fs::read(f.path()).unwrap();
        assert_eq!(&content[3 * 512..4 * 512], &[0x5a; 512]);
        assert_eq!(
            b.backend
                .stats
                .written_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            512
        );

        let mut t = TestQueue::new(&m);
        header(&m, T_FLUSH, 0);
        t.add_chain(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
        run(&mut b, &t, &m);
        assert_eq!(status(&m), S_OK);
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let m = mem();
        let (mut b, f) = disk(8, true);
        assert_ne!(b.features() & F_RO, 0);
        let mut t = TestQueue::new(&m);
        header(&m, T_OUT, 0);
        t.add_chain(&[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]);
        run(&mut b, &t, &m);
        assert_eq!(status(&m), S_IOERR);
        assert_eq!(std::fs::read(f.path()).unwrap()[0], 0);
    }

    #[test]
    fn get_id_and_unknown_types() {
        let m = mem();
        let (mut b, _f) = disk(8, false);
        let mut t = TestQueue::new(&m);
        header(&m, T_GET_ID, 0);
        t.add_chain(&[(HDR, 16, 0), (DATA, 20, F_WRITE), (STATUS, 1, F_WRITE)]);
        run(&mut b, &t, &m);
        assert_eq!(status(&m), S_OK);
        assert_eq!(&read(&m, DATA, 14), b"hull-test-disk");
        let mut t = TestQueue::new(&m);
        header(&m, 77, 0);
        t.add_chain(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
        run(&mut b, &t, &m);
        assert_eq!(status(&m), S_UNSUPP);
    }

    #[test]
    fn out_of_range_and_odd_sizes_are_ioerr() {
        let m = mem();
        let (mut b, _f) = disk(8, false);
        for (sector, len) in [(8u64, 512u32), (7, 1024), (u64::MAX / 4, 512), (0, 100)] {
            let mut t = TestQueue::new(&m);
            header(&m, T_IN, sector);
            t.add_chain(&[(HDR, 16, 0), (DATA, len, F_WRITE), (STATUS, 1, F_WRITE)]);
            run(&mut b, &t, &m);
            assert_eq!(status(&m), S_IOERR, "sector {sector} len {len}");
            assert_eq!(t.used(0).1, 1);
        }
    }

    #[test]
    fn malformed_chains_are_returned_unserved() {
        let m = mem();
        let (mut b, f) = disk(8, false);
        let cases: Vec<Vec<(u64, u32, u16)>> = vec![
            // Header only; no status.
            vec![(HDR, 16, 0)],
            // Header device-writable.
            vec![
                (HDR, 16, F_WRITE),
                (DATA, 512, F_WRITE),
                (STATUS, 1, F_WRITE),
            ],
            // Status device-readable.
            vec![(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, 0)],
            // Short header.
            vec![(HDR, 8, 0), (STATUS, 1, F_WRITE)],
            // Data buffer out of guest memory.
            vec![
                (HDR, 16, 0),
                (0xfff_0000, 512, F_WRITE),
                (STATUS, 1, F_WRITE),
            ],
            // Oversized data.
            vec![
                (HDR, 16, 0),
                (DATA, u32::MAX, F_WRITE),
                (STATUS, 1, F_WRITE),
            ],
            // Read into a device-readable buffer: wrong direction.
            vec![(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)],
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut t = TestQueue::new(&m);
            header(&m, T_IN, 0);
            t.add_chain(c);
            assert!(run(&mut b, &t, &m), "case {i}");
            assert_eq!(t.used_idx(), 1, "case {i}");
            assert_eq!(t.used(0).1, 0, "case {i}");
            assert_eq!(status(&m), 0xee, "case {i}: status must be untouched");
        }
        // A write through a wrong-direction buffer must not touch the file either.
        let mut t = TestQueue::new(&m);
        header(&m, T_OUT, 0);
        write(&m, DATA, &[0x77; 512]);
        t.add_chain(&[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)]);
        run(&mut b, &t, &m);
        assert_eq!(std::fs::read(f.path()).unwrap()[0], 0);
    }

    #[test]
    fn looping_chain_is_refused() {
        let m = mem();
        let (mut b, _f) = disk(8, false);
        let mut t = TestQueue::new(&m);
        header(&m, T_IN, 0);
        t.raw(0, HDR, 16, F_NEXT, 1);
        t.raw(1, DATA, 512, F_NEXT | F_WRITE, 0);
        t.offer(0);
        run(&mut b, &t, &m);
        assert_eq!(t.used(0).1, 0);
        assert_eq!(status(&m), 0xee);
    }

    #[test]
    fn indirect_chain_is_served() {
        let m = mem();
        let (mut b, _f) = disk(8, false);
        let mut t = TestQueue::new(&m);
        header(&m, T_IN, 5);
        // Indirect table at 0x20000 with three descriptors.
        let table = 0x20000u64;
        let descs = [
            (HDR, 16u32, F_NEXT, 1u16),
            (DATA, 512, F_NEXT | F_WRITE, 2),
            (STATUS, 1, F_WRITE, 0),
        ];
        for (i, (a, l, f, n)) in descs.iter().enumerate() {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&a.to_le_bytes());
            raw[8..12].copy_from_slice(&l.to_le_bytes());
            raw[12..14].copy_from_slice(&f.to_le_bytes());
            raw[14..].copy_from_slice(&n.to_le_bytes());
            write(&m, table + 16 * i as u64, &raw);
        }
        t.raw(0, table, 48, F_INDIRECT, 0);
        t.offer(0);
        run(&mut b, &t, &m);
        assert_eq!(status(&m), S_OK);
        assert_eq!(read(&m, DATA, 4), vec![5u8; 4]);
    }

    /// Puts `ranges` (sector, count, flags) at DATA and offers a discard or write-zeroes.
    fn ranges_request(b: &mut Block, m: &GuestMemory, kind: u32, ranges: &[(u64, u32, u32)]) -> u8 {
        let mut raw = Vec::new();
        for (sector, count, flags) in ranges {
            raw.extend_from_slice(&sector.to_le_bytes());
            raw.extend_from_slice(&count.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
        }
        write(m, DATA, &raw);
        let mut t = TestQueue::new(m);
        header(m, kind, 0);
        t.add_chain(&[
            (HDR, 16, 0),
            (DATA, raw.len() as u32, 0),
            (STATUS, 1, F_WRITE),
        ]);
        run(b, &t, m);
        assert_eq!(t.used(0).1, 1);
        status(m)
    }

    fn blocks(f: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(f).unwrap().blocks()
    }

    /// An image of `sectors` sectors in `dir`, every byte 0xab, fully allocated.
    fn filled(dir: &std::path::Path, sectors: u64) -> (Block, std::path::PathBuf) {
        let path = dir.join("disk.img");
        std::fs::write(&path, vec![0xabu8; (sectors * SECTOR_SIZE) as usize]).unwrap();
        let b = Block::open(&path, false, "d", Arc::new(DeviceStats::default())).unwrap();
        (b, path)
    }

    #[test]
    fn discard_punches_holes_and_write_zeroes_zeroes() {
        let m = mem();
        let dir = tempfile::tempdir().unwrap();
        let (mut b, path) = filled(dir.path(), 256);
        let f = b.features();
        assert_ne!(f & F_DISCARD, 0);
        assert_ne!(f & F_WRITE_ZEROES, 0);
        let mut c = [0u8; 4];
        b.read_config(CFG_MAX_DISCARD_SEG as u64, &mut c);
        assert_eq!(u32::from_le_bytes(c), MAX_RANGES);
        b.read_config(CFG_DISCARD_ALIGN as u64, &mut c);
        assert_eq!(u32::from_le_bytes(c), 8);
        b.read_config(CFG_WZ_MAY_UNMAP as u64, &mut c[..1]);
        assert_eq!(c[0], 1);

        // Two ranges of 32 KiB each: their blocks go back to the file system.
        let before = blocks(&path);
        assert_eq!(
            ranges_request(&mut b, &m, T_DISCARD, &[(64, 64, 0), (192, 64, 0)]),
            S_OK
        );
        assert!(
            blocks(&path) <= before - 2 * 64,
            "{} -> {}",
            before,
            blocks(&path)
        );
        let content = std::fs::read(&path).unwrap();
        assert_eq!(content.len(), 256 * 512, "the image keeps its size");
        assert!(content[64 * 512..128 * 512].iter().all(|&x| x == 0));
        assert!(content[128 * 512..192 * 512].iter().all(|&x| x == 0xab));

        // Write-zeroes without unmap keeps the blocks; with unmap it may free them.
        let before = blocks(&path);
        assert_eq!(
            ranges_request(&mut b, &m, T_WRITE_ZEROES, &[(0, 8, 0)]),
            S_OK
        );
        assert_eq!(blocks(&path), before);
        assert_eq!(
            ranges_request(&mut b, &m, T_WRITE_ZEROES, &[(8, 56, RANGE_UNMAP)]),
            S_OK
        );
        let content = std::fs::read(&path).unwrap();
        assert!(content[..64 * 512].iter().all(|&x| x == 0));
        assert!(content[128 * 512..129 * 512].iter().all(|&x| x == 0xab));
        assert_eq!(
            b.backend
                .stats
                .written_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            64 * 512
        );
    }

    #[test]
    fn write_zeroes_falls_back_to_writing_where_the_file_system_cannot_zero_ranges() {
        // tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE.
        let m = mem();
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let (mut b, path) = filled(dir.path(), 16);
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        assert_eq!(
            fallocate(&f, mode, 0, 512).unwrap_err().raw_os_error(),
            Some(libc::EOPNOTSUPP),
            "/dev/shm is expected to be tmpfs"
        );
        assert_eq!(
            ranges_request(&mut b, &m, T_WRITE_ZEROES, &[(2, 3, 0)]),
            S_OK
        );
        let content = std::fs::read(&path).unwrap();
        assert!(content[..2 * 512].iter().all(|&x| x == 0xab));
        assert!(content[2 * 512..5 * 512].iter().all(|&x| x == 0));
        assert!(content[5 * 512..].iter().all(|&x| x == 0xab));
    }

    #[test]
    fn bad_ranges_change_nothing() {
        let m = mem();
        let dir = tempfile::tempdir().unwrap();
        let (mut b, path) = filled(dir.path(), 16);
        // A good range with one past the end: IOERR, and the good one untouched.
        assert_eq!(
            ranges_request(&mut b, &m, T_DISCARD, &[(0, 8, 0), (12, 8, 0)]),
            S_IOERR
        );
        // Flags discard does not take, unknown write-zeroes flags, a huge count, a sector
        // whose byte offset wraps.
        assert_eq!(
            ranges_request(&mut b, &m, T_DISCARD, &[(0, 8, 1)]),
            S_UNSUPP
        );
        assert_eq!(
            ranges_request(&mut b, &m, T_WRITE_ZEROES, &[(0, 8, 2)]),
            S_UNSUPP
        );
        assert_eq!(
            ranges_request(&mut b, &m, T_WRITE_ZEROES, &[(0, u32::MAX, 0)]),
            S_UNSUPP
        );
        assert_eq!(
            ranges_request(&mut b, &m, T_DISCARD, &[(u64::MAX / 256, 1, 0)]),
            S_IOERR
        );
        // More ranges than the device offered.
        let many = vec![(0u64, 1u32, 0u32); MAX_RANGES as usize + 1];
        assert_eq!(ranges_request(&mut b, &m, T_DISCARD, &many), S_UNSUPP);
        // A data length that is no whole number of ranges.
        let mut t = TestQueue::new(&m);
        header(&m, T_DISCARD, 0);
        t.add_chain(&[(HDR, 16, 0), (DATA, 20, 0), (STATUS, 1, F_WRITE)]);
        run(&mut b, &t, &m);
        assert_eq!(status(&m), S_UNSUPP);
        assert!(std::fs::read(&path).unwrap().iter().all(|&x| x == 0xab));

        // Read-only disks offer neither and refuse both.
        let (mut ro, f) = disk(8, true);
        assert_eq!(ro.features() & (F_DISCARD | F_WRITE_ZEROES), 0);
        assert_eq!(
            ranges_request(&mut ro, &m, T_DISCARD, &[(0, 8, 0)]),
            S_IOERR
        );
        assert_eq!(
            ranges_request(&mut ro, &m, T_WRITE_ZEROES, &[(0, 8, 0)]),
            S_IOERR
        );
        assert_eq!(std::fs::read(f.path()).unwrap()[512], 1);
    }

    fn capacity(b: &Block) -> u64 {
        let mut c = [0u8; 8];
        b.read_config(0, &mut c);
        u64::from_le_bytes(c)
    }

    #[test]
    fn host_resize_updates_capacity_and_the_bound_on_requests() {
        let m = mem();
        let stats = Arc::new(DeviceStats {
            capacity: Some(Default::default()),
            ..DeviceStats::default()
        });
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 * 512).unwrap();
        let mut b = Block::open(f.path(), false, "d", stats.clone()).unwrap();
        assert_eq!(capacity(&b), 8);
        // seg_max is untouched by a resize.
        let mut seg = [0u8; 4];
        b.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), u32::from(QUEUE_SIZE - 2));
        let read_sector = |b: &mut Block, sector: u64| {
            let mut t = TestQueue::new(&m);
            header(&m, T_IN, sector);
            t.add_chain(&[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)]);
            run(b, &t, &m);
            status(&m)
        };
        assert_eq!(read_sector(&mut b, 8), S_IOERR);

        // Grown sparsely by the host, plus half a sector that stays out of reach.
        f.as_file().set_len(32 * 512 + 256).unwrap();
        assert_eq!(
            b.host_resize().unwrap(),
            Resized {
                old: 8 * 512,
                new: 32 * 512 + 256
            }
        );
        assert_eq!(capacity(&b), 32);
        assert_eq!(
            stats
                .capacity
                .as_ref()
                .unwrap()
                .load(std::sync::atomic::Ordering::Relaxed),
            32 * 512 + 256
        );
        assert_eq!(read_sector(&mut b, 31), S_OK);
        assert_eq!(read_sector(&mut b, 32), S_IOERR);
        b.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), u32::from(QUEUE_SIZE - 2));

        // Unchanged is not an error; shrunk is refused and the old size stays.
        assert_eq!(b.host_resize().unwrap().new, 32 * 512 + 256);
        f.as_file().set_len(4 * 512).unwrap();
        assert!(matches!(
            b.host_resize(),
            Err(ResizeError::Shrunk { new: 2048, .. })
        ));
        assert_eq!(capacity(&b), 32);
    }

    #[test]
    fn garbage_descriptor_tables_never_panic() {
        let m = mem();
        let (mut b, _f) = disk(8, false);
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..200 {
            let mut t = TestQueue::new(&m);
            t.garbage(&mut seed);
            run(&mut b, &t, &m);
        }
    }
}
