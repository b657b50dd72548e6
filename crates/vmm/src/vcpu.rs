//! One thread per vCPU: runs KVM_RUN, dispatches port and MMIO exits to the buses, parks when
//! the VM is paused and turns every other exit into a stop reason. Nothing a guest does here
//! may panic the VMM: unknown exits end this VM with a report.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, lock};
use crate::stats::VcpuStats;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (i8042 or KVM reset event).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// The host asked (control socket shutdown, SIGTERM, SIGINT).
    Requested(String),
    /// The guest broke (triple fault, failed entry, emulation failure...).
    GuestFault(String),
    /// The VMM itself failed while running.
    VmmFailure(String),
}

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; KVM_RUN then returns EINTR when kicked.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
}

/// Shared run state of all vCPUs: stop and pause requests. The first stop reason is kept
/// and signalled on an eventfd, which the event loop on the main thread waits for.
#[derive(Debug)]
pub struct RunState {
    stopping: AtomicBool,
    paused: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    stop_evt: EventFd,
    parked: Mutex<usize>,
    cv: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl RunState {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(RunState {
            stopping: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            reason: Mutex::new(None),
            stop_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            parked: Mutex::new(0),
            cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        }))
    }

    /// Ends the VM; the first reason wins.
    pub fn stop(&self, reason: StopReason) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            *lock(&self.reason) = Some(reason);
            // A full counter cannot happen: this runs once.
            let _ = self.stop_evt.write(1);
        }
        self.cv.notify_all();
    }

    /// Readable once the VM stops.
    pub fn stop_fd(&self) -> RawFd {
        self.stop_evt.as_raw_fd()
    }

    /// The reason the VM stopped, once it has.
    pub fn reason(&self) -> Option<StopReason> {
        lock(&self.reason).clone()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    fn kick_all(&self) {
        for t in lock(&self.threads).iter() {
            // SAFETY: `t` is a vCPU thread registered by itself; those threads run until the
            // process exits, so the id is valid. The signal's handler does nothing.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Pauses all `n` vCPUs; true once every one is parked.
    pub fn pause(&self, n: usize) -> bool {
        self.paused.store(true, Ordering::SeqCst);
        for _ in 0..2000 {
            if *lock(&self.parked) >= n {
                return true;
            }
            self.kick_all();
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.cv.notify_all();
    }

    fn park(&self) {
        let mut parked = lock(&self.parked);
        *parked += 1;
        while self.paused() && !self.stopping() {
            parked = self.cv.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked -= 1;
    }
}

/// A vCPU ready to run on its own thread.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub state: Arc<RunState>,
    pub stats: Arc<VcpuStats>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("id", &self.id).finish()
    }
}

impl Vcpu {
    /// Runs until the VM stops, then waits for the process to exit.
    pub fn run(mut self) -> ! {
        // SAFETY: pthread_self has no preconditions.
        lock(&self.state.threads).push(unsafe { libc::pthread_self() });
        let id = self.id;
        match crate::seccomp::apply(crate::seccomp::ThreadRole::Vcpu) {
            Ok(()) => self.run_until_stopped(),
            Err(e) => self
                .state
                .stop(StopReason::VmmFailure(format!("vCPU {id}: {e}"))),
        }
        // The process is about to exit: tearing this vCPU down (closing its fd, unmapping its
        // run area and, with the last reference, guest memory) would only be work the
        // kernel's exit does again. Wait for the exit instead.
        loop {
            std::thread::park();
        }
    }

    fn run_until_stopped(&mut self) {
        let id = self.id;
        while !self.state.stopping() {
            if self.state.paused() {
                self.state.park();
                continue;
            }
            let stop = match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        self.stats.io.fetch_add(1, Ordering::Relaxed);
                        self.pio.read(u64::from(port), data);
                        None
                    }
                    VcpuExit::IoOut(port, data) => {
                        self.stats.io.fetch_add(1, Ordering::Relaxed);
                        self.pio.write(u64::from(port), data);
                        None
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        self.stats.mmio.fetch_add(1, Ordering::Relaxed);
                        self.mmio.read(addr, data);
                        None
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        self.stats.mmio.fetch_add(1, Ordering::Relaxed);
                        self.mmio.write(addr, data);
                        None
                    }
                    other => {
                        self.stats.other.fetch_add(1, Ordering::Relaxed);
                        classify(id, other)
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(e) => Some(StopReason::VmmFailure(format!(
                    "vCPU {id}: KVM_RUN failed: {e}"
                ))),
            };
            if let Some(mut reason) = stop {
                if let StopReason::GuestFault(msg) = &mut reason
                    && msg.contains("internal error")
                {
                    msg.push_str(&self.internal_error_detail());
                }
                self.state.stop(reason);
            }
        }
    }
}

impl Vcpu {
    /// KVM's suberror and first data words after KVM_EXIT_INTERNAL_ERROR.
    fn internal_error_detail(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, for which KVM fills the
        // `internal` member of the union; all its fields are plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(4);
        format!(
            " (suberror {}, data {:x?}, rip {:#x})",
            internal.suberror,
            &internal.data[..n],
            self.fd.get_regs().map(|r| r.rip).unwrap_or_default()
        )
    }
}

/// What a non-I/O exit means for the VM.
fn classify(id: u8, exit: VcpuExit<'_>) -> Option<StopReason> {
    match exit {
        VcpuExit::IrqWindowOpen | VcpuExit::Intr => None,
        VcpuExit::Shutdown => Some(StopReason::GuestFault(format!(
            "vCPU {id}: guest triple fault (KVM_EXIT_SHUTDOWN)"
        ))),
        VcpuExit::Hlt => Some(StopReason::GuestFault(format!(
            "vCPU {id}: guest halted with no interrupt source (KVM_EXIT_HLT)"
        ))),
        VcpuExit::FailEntry(reason, cpu) => Some(StopReason::GuestFault(format!(
            "vCPU {id}: KVM could not enter the guest (hardware reason {reason:#x}, host cpu {cpu})"
        ))),
        VcpuExit::InternalError => Some(StopReason::GuestFault(format!(
            "vCPU {id}: KVM internal error (instruction emulation failed)"
        ))),
        VcpuExit::SystemEvent(kind, _) => Some(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::PowerOff,
            KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
            KVM_SYSTEM_EVENT_CRASH => {
                StopReason::GuestFault(format!("vCPU {id}: guest crashed (system event)"))
            }
            other => StopReason::GuestFault(format!("vCPU {id}: unknown system event {other}")),
        }),
        other => Some(StopReason::GuestFault(format!(
            "vCPU {id}: unexpected exit {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_reason_wins() {
        let s = RunState::new().unwrap();
        assert_eq!(s.reason(), None);
        s.stop(StopReason::Reset);
        s.stop(StopReason::PowerOff);
        assert!(s.stopping());
        assert_eq!(s.reason(), Some(StopReason::Reset));
        // The eventfd fired once.
        assert_eq!(s.stop_evt.read().unwrap(), 1);
    }

    #[test]
    fn exits_map_to_reasons() {
        assert_eq!(classify(0, VcpuExit::Intr), None);
        assert!(
            matches!(classify(1, VcpuExit::Shutdown), Some(StopReason::GuestFault(m)) if m.contains("triple fault"))
        );
        assert_eq!(
            classify(0, VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])),
            Some(StopReason::Reset)
        );
        assert_eq!(
            classify(0, VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])),
            Some(StopReason::PowerOff)
        );
        assert!(matches!(
            classify(0, VcpuExit::InternalError),
            Some(StopReason::GuestFault(_))
        ));
        assert!(matches!(
            classify(0, VcpuExit::Unknown),
            Some(StopReason::GuestFault(_))
        ));
    }

    #[test]
    fn pause_with_no_vcpus_parks_immediately_and_resumes() {
        let s = RunState::new().unwrap();
        assert!(s.pause(0));
        assert!(s.paused());
        s.resume();
        assert!(!s.paused());
    }
}
