//! The disks' data path where there is no io_uring: a few worker threads that do a batch's
//! reads, writes and flushes side by side (`preadv`/`pwritev`/`fdatasync`), so a guest's
//! deep queue overlaps on the host as it would in the ring. The I/O thread hands a batch out
//! and waits for all of it, as with the ring. Each worker runs under a seccomp filter of
//! its own that allows those calls and nothing else beyond every thread's memory, futex and
//! exit calls (see [`crate::seccomp::ThreadRole::DiskWorker`]).

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use super::{Backend, Io, Work};
use crate::bus::lock;

/// Workers: enough to overlap a deep queue's requests on a few host CPUs; each costs a
/// thread and a filter at launch, only on hosts without io_uring.
pub const POOL_WORKERS: usize = 4;

/// A request's I/O, handed to a worker.
struct Job {
    index: usize,
    backend: Arc<Backend>,
    io: SendIo,
}

/// An [`Io`] crossing to a worker thread.
struct SendIo(Io);

// SAFETY: an Io's only non-Send part is its iovecs' raw pointers, which point into guest
// memory's mapping; that mapping lives as long as the VM (the process), and the I/O thread
// that made the iovecs waits for the worker's result before it returns the request.
unsafe impl Send for SendIo {}

/// The workers, and the channels to and from them.
pub struct DiskPool {
    jobs: Sender<Job>,
    results: Receiver<(usize, (u8, u32))>,
}

impl std::fmt::Debug for DiskPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskPool").finish_non_exhaustive()
    }
}

impl DiskPool {
    /// Starts `workers` threads named `disk-worker`, each under its filter. `confine`
    /// installs it (a failure stops the worker, and the pool then reports the batch's
    /// requests it never did as an error). Must run before the calling thread's own filter
    /// (which allows no clone).
    pub fn new(
        workers: usize,
        confine: fn() -> Result<(), crate::seccomp::SeccompError>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = channel::<Job>();
        let (done, results) = channel();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..workers {
            let queue = queue.clone();
            let done = done.clone();
            std::thread::Builder::new()
                .name("disk-worker".into())
                .spawn(move || {
                    if let Err(e) = confine() {
                        eprintln!("vmm: disk worker: {e}");
                        return;
                    }
                    loop {
                        // One worker waits for the next job, the others for the queue.
                        let job = lock(&queue).recv();
                        let Ok(job) = job else { return };
                        let r = job.backend.finish(Work::Io(job.io.0));
                        if done.send((job.index, r)).is_err() {
                            return;
                        }
                    }
                })?;
        }
        Ok(DiskPool { jobs, results })
    }

    /// Does `ios` on the workers; gives each one's (status, bytes written into the guest)
    /// in their order. An error is the pool's own: its workers are gone.
    pub(super) fn run(
        &self,
        backend: &Arc<Backend>,
        ios: Vec<Io>,
    ) -> std::io::Result<Vec<(u8, u32)>> {
        let gone = || std::io::Error::other("the disk worker threads are gone");
        let n = ios.len();
        for (index, io) in ios.into_iter().enumerate() {
            let job = Job {
                index,
                backend: backend.clone(),
                io: SendIo(io),
            };
            self.jobs.send(job).map_err(|_| gone())?;
        }
        let mut out: Vec<Option<(u8, u32)>> = vec![None; n];
        for _ in 0..n {
            let (index, r) = self.results.recv().map_err(|_| gone())?;
            if let Some(slot) = out.get_mut(index) {
                *slot = Some(r);
            }
        }
        out.into_iter().map(|r| r.ok_or_else(gone)).collect()
    }
}
