//! One thread per vCPU: runs KVM_RUN, dispatches port and MMIO exits to the buses, parks when
//! the VM is paused and turns every other exit into a stop reason. Nothing a guest does here
//! may panic the VMM: unknown exits end this VM with a report.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, lock};
use crate::devices::serial::batch::{TxBatch, ends_batching};
use crate::memory::GuestMemory;
use crate::pit::{LazyPit, is_pit_port};
use crate::stats::{ExitKind, VcpuStats};

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
    /// The PIT, made on the first access to its ports (see [`crate::pit`]).
    pub pit: Arc<LazyPit>,
    /// Whether this vCPU has already replayed a port access onto the new PIT: a second PIT
    /// exit would mean KVM did not take the ports, and goes to the bus instead of looping.
    pub pit_replayed: bool,
    /// Guest memory, to read the instruction a PIT access is replayed from.
    pub mem: GuestMemory,
    /// Serial bytes KVM queued without exits, emptied before each exit is handled.
    pub batch: Option<Arc<TxBatch>>,
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
            let pit_first = !self.pit_replayed;
            let mut replay = None;
            let ran = self.fd.run();
            if let Some(b) = &self.batch {
                b.drain();
            }
            let stop = match ran {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) if pit_first && is_pit_port(port) => {
                        self.stats.exit(ExitKind::IoIn, Some(u64::from(port)));
                        replay = Some((port, data.len()));
                        None
                    }
                    VcpuExit::IoOut(port, data) if pit_first && is_pit_port(port) => {
                        self.stats.exit(ExitKind::IoOut, Some(u64::from(port)));
                        replay = Some((port, data.len()));
                        None
                    }
                    VcpuExit::IoIn(port, data) => {
                        self.stats.exit(ExitKind::IoIn, Some(u64::from(port)));
                        self.pio.read(u64::from(port), data);
                        None
                    }
                    VcpuExit::IoOut(port, data) => {
                        self.stats.exit(ExitKind::IoOut, Some(u64::from(port)));
                        if let Some(b) = &self.batch
                            && ends_batching(port, data.first().copied().unwrap_or(0))
                        {
                            b.end();
                        }
                        self.pio.write(u64::from(port), data);
                        None
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        self.stats.exit(ExitKind::MmioRead, Some(addr));
                        self.mmio.read(addr, data);
                        None
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        self.stats.exit(ExitKind::MmioWrite, Some(addr));
                        self.mmio.write(addr, data);
                        None
                    }
                    other => {
                        self.stats.exit(ExitKind::Other(exit_name(&other)), None);
                        let shutdown = matches!(other, VcpuExit::Shutdown);
                        let stop = classify(id, other);
                        if shutdown {
                            // Where the guest was when it died, for whoever reads the log.
                            eprintln!("vmm: vCPU {id} at its triple fault: {}", self.fault_state());
                        }
                        stop
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.stats.exit(ExitKind::Other("signal"), None);
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(e) => Some(StopReason::VmmFailure(format!(
                    "vCPU {id}: KVM_RUN failed: {e}"
                ))),
            };
            let stop = match (stop, replay) {
                (None, Some((port, size))) => self.replay_on_pit(port, size).err(),
                (stop, _) => stop,
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
    /// Creates the PIT and runs the port access that found none again, this time against it.
    ///
    /// KVM finishes a port access that went to userspace in the next KVM_RUN; a KVM_RUN with
    /// `immediate_exit` set does only that, without entering the guest. Where that finishing
    /// moved RIP past the instruction (KVM's fast path for IN and OUT, and emulated IN), the
    /// registers read before it put RIP and RAX back on the instruction. Where KVM had
    /// already moved RIP before the exit (an OUT through its instruction emulator, which is
    /// every OUT under PVM), RIP goes back by the length of the OUT that ends there. Either
    /// way the vCPU then executes the access again; nothing else of the guest changed.
    fn replay_on_pit(&mut self, port: u16, size: usize) -> Result<(), StopReason> {
        let id = self.id;
        let fail = |what: &str, e: kvm_ioctls::Error| {
            StopReason::VmmFailure(format!("vCPU {id}: {what} for the PIT: {e}"))
        };
        self.pit_replayed = true;
        let mut regs = self.fd.get_regs().map_err(|e| fail("KVM_GET_REGS", e))?;
        self.pit.ensure().map_err(|e| fail("KVM_CREATE_PIT2", e))?;
        self.fd.set_kvm_immediate_exit(1);
        let finished = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match finished {
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(fail("finishing the port access", e)),
            Ok(()) => {
                return Err(StopReason::VmmFailure(format!(
                    "vCPU {id}: KVM ran the guest despite immediate_exit"
                )));
            }
        }
        let after = self.fd.get_regs().map_err(|e| fail("KVM_GET_REGS", e))?;
        if after.rip == regs.rip {
            let mut before = [0u8; 3];
            for (i, b) in before.iter_mut().enumerate() {
                *b = self.guest_byte(regs.rip.wrapping_sub(3 - i as u64))?;
            }
            let len = out_len_before(&before, port, size).ok_or_else(|| {
                StopReason::GuestFault(format!(
                    "vCPU {id}: the access to PIT port {port:#x} was not an OUT the VMM can \
                     run again (bytes before RIP {:#x}: {before:02x?})",
                    regs.rip
                ))
            })?;
            regs.rip -= len;
            regs.rax = after.rax;
        }
        self.fd.set_regs(&regs).map_err(|e| fail("KVM_SET_REGS", e))
    }

    /// The guest's byte at virtual address `gva`, through the vCPU's page tables.
    fn guest_byte(&self, gva: u64) -> Result<u8, StopReason> {
        let id = self.id;
        let t = self.fd.translate_gva(gva).map_err(|e| {
            StopReason::VmmFailure(format!("vCPU {id}: KVM_TRANSLATE for the PIT: {e}"))
        })?;
        let mut b = [0u8; 1];
        if t.valid == 0
            || self
                .mem
                .read_slice(&mut b, GuestAddress(t.physical_address))
                .is_err()
        {
            return Err(StopReason::GuestFault(format!(
                "vCPU {id}: instruction bytes at {gva:#x} are not in guest memory"
            )));
        }
        Ok(b[0])
    }

    /// The registers, control registers, descriptor tables and pending event of a vCPU
    /// whose guest died, in one line (what KVM will not say is left out).
    fn fault_state(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.fd.get_regs() {
            out += &format!(
                "rip {:#x} rsp {:#x} rflags {:#x} rax {:#x} rsi {:#x} rdi {:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rsi, r.rdi
            );
        }
        if let Ok(s) = self.fd.get_sregs() {
            out += &format!(
                "; cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}; cs {:#x} (l {}, base {:#x}) ss {:#x} tr {:#x}; idt {:#x}+{:#x} gdt {:#x}+{:#x}",
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector,
                s.cs.l,
                s.cs.base,
                s.ss.selector,
                s.tr.selector,
                s.idt.base,
                s.idt.limit,
                s.gdt.base,
                s.gdt.limit
            );
        }
        if let Ok(e) = self.fd.get_vcpu_events() {
            out += &format!(
                "; exception {} (injected {}, pending {}, error {:#x}), nmi pending {}, interrupt {} (injected {})",
                e.exception.nr,
                e.exception.injected,
                e.exception.pending,
                e.exception.error_code,
                e.nmi.pending,
                e.interrupt.nr,
                e.interrupt.injected
            );
        }
        out
    }

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
/// The name an exit other than port or MMIO access is counted under.
fn exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::IrqWindowOpen => "irq_window_open",
        VcpuExit::Intr => "intr",
        VcpuExit::Shutdown => "shutdown",
        VcpuExit::Hlt => "hlt",
        VcpuExit::FailEntry(..) => "fail_entry",
        VcpuExit::InternalError => "internal_error",
        VcpuExit::SystemEvent(..) => "system_event",
        _ => "unexpected",
    }
}

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

/// The length of the OUT instruction (`out imm8` or `out dx`, with the operand-size prefix a
/// 16-bit OUT needs) that ends right before `before` does, given that it wrote `size` bytes
/// to `port`: `before` holds the three bytes preceding RIP. PIT ports are below 0x100 and
/// never 0xee/0xef, so the two forms cannot be mistaken for each other.
fn out_len_before(before: &[u8; 3], port: u16, size: usize) -> Option<u64> {
    let (imm, dx) = match size {
        1 => (0xe6, 0xee),
        2 | 4 => (0xe7, 0xef),
        _ => return None,
    };
    let prefix = u64::from(size == 2);
    let has_prefix = |at: usize| size != 2 || before[at] == 0x66;
    if port < 0x100 && before[2] == port as u8 && before[1] == imm && has_prefix(0) {
        Some(2 + prefix)
    } else if before[2] == dx && has_prefix(1) {
        Some(1 + prefix)
    } else {
        None
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
    fn out_lengths_before_rip_cover_both_forms_and_the_operand_size_prefix() {
        // out 0x43, al / out dx, al / out dx, ax / out 0x40, eax
        assert_eq!(out_len_before(&[0x90, 0xe6, 0x43], 0x43, 1), Some(2));
        assert_eq!(out_len_before(&[0x90, 0x90, 0xee], 0x43, 1), Some(1));
        assert_eq!(out_len_before(&[0x90, 0x66, 0xef], 0x42, 2), Some(2));
        assert_eq!(out_len_before(&[0x66, 0xe7, 0x40], 0x40, 2), Some(3));
        assert_eq!(out_len_before(&[0x90, 0xe7, 0x40], 0x40, 4), Some(2));
        // The wrong port, a missing prefix, not an OUT at all.
        assert_eq!(out_len_before(&[0x90, 0xe6, 0x42], 0x43, 1), None);
        assert_eq!(out_len_before(&[0x90, 0x90, 0xef], 0x42, 2), None);
        assert_eq!(out_len_before(&[0x90, 0x90, 0xec], 0x43, 1), None);
        assert_eq!(out_len_before(&[0x90, 0x90, 0xee], 0x43, 8), None);
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
