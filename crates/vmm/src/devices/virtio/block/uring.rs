//! The disks' data path through io_uring: the I/O thread puts a whole batch of reads,
//! writes and flushes in the ring with one `io_uring_enter` and waits for them together,
//! so the kernel overlaps what it can (page-cache misses, writeback) instead of the thread
//! taking them one after the other.
//!
//! io_uring's operations do not pass through the thread's seccomp filter (the kernel runs
//! them, some on its own worker threads), so the ring is locked down before it is enabled:
//! it is made disabled, given the disks' files as fixed files, restricted to vectored read,
//! vectored write and fsync on those fixed files only (`IOSQE_FIXED_FILE` required; no
//! opcode can open, connect or touch another descriptor), and no `io_uring_register`
//! operation is allowed once it runs. The thread's filter then allows `io_uring_enter` and
//! nothing else of the family. Where the kernel has no io_uring, refuses it
//! (`kernel.io_uring_disabled`, a sandbox's filter) or lacks restrictions (before 5.10),
//! [`DiskRing::new`] fails and the VMM serves its disks on the I/O thread instead.

use std::os::fd::RawFd;

use io_uring::register::Restriction;
use io_uring::{IoUring, opcode, squeue, types};

use super::{Backend, Io};
use crate::devices::virtio::{ChainError, Desc};
use crate::memory::GuestMemory;

/// Submission entries: one queue's worth of requests (a batch never holds more than its
/// queue's size; a larger one would be submitted in parts).
const RING_ENTRIES: u32 = 256;

/// A restricted ring over the disks' files.
pub struct DiskRing {
    ring: IoUring,
}

impl std::fmt::Debug for DiskRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskRing").finish_non_exhaustive()
    }
}

impl DiskRing {
    /// A ring whose fixed file `i` is `files[i]`, restricted as the module says. Must be
    /// made before the calling thread's seccomp filter (setup and registration are
    /// syscalls no thread's filter allows).
    pub fn new(files: &[RawFd]) -> std::io::Result<Self> {
        let ring = IoUring::builder().setup_r_disabled().build(RING_ENTRIES)?;
        let sub = ring.submitter();
        sub.register_files(files)?;
        let fixed = squeue::Flags::FIXED_FILE.bits();
        sub.register_restrictions(&mut [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_flags_allowed(fixed | squeue::Flags::IO_DRAIN.bits()),
            Restriction::sqe_flags_required(fixed),
        ])?;
        sub.register_enable_rings()?;
        Ok(DiskRing { ring })
    }

    /// Serves a batch of one disk's requests (its file at fixed slot `slot`) as the I/O
    /// thread does (see [`super::serve_kicked`]): reads, writes and flushes go to the
    /// kernel together, a flush after everything before it (`IOSQE_IO_DRAIN`: a write
    /// acknowledged before the flush is on the disk when the flush is). Returns (head, used
    /// length) in the batch's order, every request's status written. An error is the
    /// ring's own (the batch's requests are then not returned).
    pub fn serve(
        &mut self,
        backend: &Backend,
        slot: u32,
        batch: Vec<(u16, Result<Vec<Desc>, ChainError>)>,
        mem: &GuestMemory,
    ) -> std::io::Result<Vec<(u16, u32)>> {
        super::serve_batch(backend, batch, mem, |ios| self.run(backend, slot, ios))
    }

    /// Does `ios` through the ring; gives each one's (status, bytes written into the
    /// guest) in their order.
    pub(super) fn run(
        &mut self,
        backend: &Backend,
        slot: u32,
        mut ios: Vec<Io>,
    ) -> std::io::Result<Vec<(u8, u32)>> {
        let mut out = Vec::with_capacity(ios.len());
        for part in ios.chunks_mut(RING_ENTRIES as usize) {
            let results = self.submit(slot, part)?;
            for (io, res) in part.iter_mut().zip(results) {
                out.push(backend.completed(io, res));
            }
        }
        Ok(out)
    }

    /// Submits `part` and waits for all of it; gives each one's result (bytes or a negative
    /// errno) in `part`'s order.
    fn submit(&mut self, slot: u32, part: &[Io]) -> std::io::Result<Vec<i32>> {
        let fd = types::Fixed(slot);
        {
            let mut sq = self.ring.submission();
            for (k, io) in part.iter().enumerate() {
                let entry = match io {
                    Io::Rw {
                        read: true,
                        start,
                        iovs,
                        ..
                    } => opcode::Readv::new(fd, iovs.as_ptr(), iovs.len() as u32)
                        .offset(*start)
                        .build(),
                    Io::Rw {
                        read: false,
                        start,
                        iovs,
                        ..
                    } => opcode::Writev::new(fd, iovs.as_ptr(), iovs.len() as u32)
                        .offset(*start)
                        .build(),
                    Io::Flush => opcode::Fsync::new(fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .flags(squeue::Flags::IO_DRAIN),
                };
                // SAFETY: the iovec arrays live in `part`, which outlives this call, and
                // every call waits below for all its entries to complete; the buffers they
                // point at are guest memory, mapped for the VM's life.
                unsafe { sq.push(&entry.user_data(k as u64)) }
                    .map_err(|_| std::io::Error::other("io_uring submission queue full"))?;
            }
        }
        let mut results: Vec<Option<i32>> = vec![None; part.len()];
        let mut left = part.len();
        while left > 0 {
            match self.ring.submit_and_wait(left) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                if let Some(r @ None) = results.get_mut(cqe.user_data() as usize) {
                    *r = Some(cqe.result());
                    left -= 1;
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(-libc::EIO))
            .collect())
    }
}

#[cfg(test)]
impl DiskRing {
    /// Submits one raw entry and gives its result (the restriction tests).
    pub(super) fn raw_result(&mut self, entry: &squeue::Entry) -> i32 {
        // SAFETY: the tests' buffers outlive the wait below.
        unsafe { self.ring.submission().push(entry) }.unwrap();
        self.ring.submit_and_wait(1).unwrap();
        self.ring.completion().next().unwrap().result()
    }

    /// Tries to swap a fixed file after the ring runs (the restriction tests).
    pub(super) fn register_files_update(&self, at: u32, fds: &[RawFd]) -> std::io::Result<usize> {
        self.ring.submitter().register_files_update(at, fds)
    }
}
