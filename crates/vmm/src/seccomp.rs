//! Per-thread seccomp allow-lists. Each thread of the VMM installs the filter for its role once
//! its setup is done; any other syscall kills the whole process, so a guest that takes over a
//! device emulation path still cannot open files, create sockets or spawn processes. A launch
//! compiles one BPF program per thread: one per vCPU, one for the main thread and, with
//! disks, one for their I/O thread. Setting `HULL_VMM_NO_SECCOMP=1` skips the filters and
//! `HULL_VMM_SECCOMP_DISCOVER=1` turns kills into ENOSYS (debugging only).
//!
//! The allow-lists are compiled here into a balanced binary search over syscall numbers
//! ([`compile`]); seccompiler installs them and, in the tests, compiles the same lists its own
//! way as the reference every verdict is checked against. Why not seccompiler's program: it
//! tests the syscall number against each allowed one in turn, 5 instructions per syscall, and
//! `seccomp(2)` costs grow with both the program's length and its paths (the kernel converts
//! and JIT-compiles the program, then runs it for every syscall number to build its allow
//! cache, with interrupts off). The trees of the same lists are about half as long, with at
//! most ~9 tests per syscall number, and install in about half the time (figures in
//! docs/PERFORMANCE.md, "Figures behind design choices").

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{BpfProgram, sock_filter};

/// ioctl numbers a vCPU thread may issue: running, and what putting the PIT in on the
/// guest's first use of it takes (see [`crate::pit`]).
const KVM_RUN: u32 = 0xae80;
const KVM_GET_REGS: u32 = 0x8090_ae81;
const KVM_SET_REGS: u32 = 0x4090_ae82;
const KVM_CREATE_PIT2: u32 = 0x4040_ae77;
const KVM_TRANSLATE: u32 = 0xc018_ae85;
/// Reading a vCPU's state to say where a guest died (see [`crate::vcpu`]).
const KVM_GET_SREGS: u32 = 0x8138_ae83;
const KVM_GET_VCPU_EVENTS: u32 = 0x8040_ae9f;
/// Ending serial batching when the guest enables UART interrupts (see
/// [`crate::devices::serial::batch`]).
const KVM_UNREGISTER_COALESCED_MMIO: u32 = 0x4010_ae68;
use crate::devices::virtio::net::TUNSETOFFLOAD;
use vhost::vhost_kern::vhost_binding as vb;
/// What a NIC on vhost-net issues at the driver's DRIVER_OK, on a vCPU thread: the features,
/// each ring's size, start, addresses and interrupt, and the TAP in or out (see
/// [`crate::devices::virtio::net::vhost`]). All act on the vhost fd only: what they can
/// make vhost touch is this process's own memory and fds.
const VHOST_AT_DRIVER_OK: [fn() -> libc::c_ulong; 6] = [
    vb::VHOST_SET_FEATURES,
    vb::VHOST_SET_VRING_NUM,
    vb::VHOST_SET_VRING_BASE,
    vb::VHOST_SET_VRING_ADDR,
    vb::VHOST_SET_VRING_CALL,
    vb::VHOST_NET_SET_BACKEND,
];

/// What a thread does, which decides what it may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// Runs KVM_RUN and device emulation (TAP writes, console output).
    Vcpu,
    /// Serves the disks' queues and the NICs' transmit queues: waits on their notifies, reads
    /// and writes the disks' open images at offsets, flushes, punches holes and zeroes ranges
    /// in them, writes frames to the TAPs (and reads the ones a DHCP answer goes out with).
    Io,
    /// After setup, the event loop: signals, console input, TAP readiness, the control socket
    /// (which kicks and parks vCPUs), the stop; then flushes, restores and exits.
    Main,
    /// A disk worker (where there is no io_uring): reads and writes the disks' open images
    /// at offsets and flushes them, nothing else.
    DiskWorker,
    /// `vmm --extract-vmlinux` once both files are open: decompressing untrusted bytes into
    /// the output, and nothing else (COMMON's memory, futex, write and exit calls).
    Extract,
    /// `vmm --find-boot` once the disk and the outputs are open: reading the untrusted disk
    /// at offsets and writing the open outputs, and nothing else.
    FindBoot,
}

/// Host resources the main thread still touches after confinement, each allowed narrowly.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MainExtras {
    /// A terminal in raw mode whose settings are restored at exit: `ioctl(fd, TCSETS)` only.
    pub terminal: Option<RawFd>,
    /// The exit file's directory: `renameat(fd, _, fd, _)` only.
    pub exit_dir: Option<RawFd>,
}

/// Errors from building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp filter for the {0:?} thread does not fit BPF's jump range")]
    TooLarge(ThreadRole),
    #[error("cannot install the seccomp filter for the {0:?} thread")]
    Install(ThreadRole, #[source] seccompiler::Error),
}

/// Syscalls every thread needs: memory management, futexes, signal return, exit, time.
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_restart_syscall,
    libc::SYS_write,
    libc::SYS_getrandom,
];

fn role_syscalls(role: ThreadRole) -> &'static [libc::c_long] {
    match role {
        ThreadRole::Vcpu => &[
            libc::SYS_read,
            libc::SYS_sendto,
            // A frame out of guest memory to the TAP.
            libc::SYS_writev,
            // Whatever a device path drops (debug builds check fds with F_GETFD before
            // closing). Closing grants nothing; the thread no longer tears its vCPU down.
            libc::SYS_close,
            libc::SYS_fcntl,
        ],
        ThreadRole::Io => &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            // The notify eventfds, and TAP frames.
            libc::SYS_read,
            libc::SYS_sendto,
            libc::SYS_writev,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            // Write-zeroes where the file system cannot zero a range.
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            // The disks' ring: submitting and waiting only (setting it up and registering
            // happen before any filter; the ring itself is restricted, see
            // devices::virtio::block::uring).
            libc::SYS_io_uring_enter,
            libc::SYS_close,
            libc::SYS_fcntl,
        ],
        // Closing the files at the end grants nothing (debug builds check an fd with F_GETFD
        // before closing it).
        ThreadRole::Extract => &[libc::SYS_close, libc::SYS_fcntl],
        ThreadRole::FindBoot => &[libc::SYS_pread64, libc::SYS_close, libc::SYS_fcntl],
        ThreadRole::DiskWorker => &[
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            libc::SYS_close,
            libc::SYS_fcntl,
        ],
        ThreadRole::Main => &[
            // A NIC's frames: received ones from the TAP, and (when a receive finds the
            // transmit queue added to) frames out of guest memory to it.
            libc::SYS_writev,
            // The event loop.
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_accept4,
            libc::SYS_close,
            libc::SYS_fcntl,
            // Kicking vCPUs out of KVM_RUN to pause them (pthread_kill), and waiting for it.
            libc::SYS_tgkill,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            // A disk's new size, on the control socket's resize_disk (fstat of an fd it
            // already holds: nothing is opened).
            libc::SYS_fstat,
            // Removing the control socket at exit.
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ],
    }
}

/// `SECCOMP_RET_*` verdicts.
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// Kill the process, or with `HULL_VMM_SECCOMP_DISCOVER=1` fail the call with ENOSYS so that
/// `strace -f` shows which syscall a filter is missing (debugging only).
fn mismatch_action() -> u32 {
    if std::env::var_os("HULL_VMM_SECCOMP_DISCOVER").is_some_and(|v| v == "1") {
        RET_ERRNO | libc::ENOSYS as u32
    } else {
        RET_KILL_PROCESS
    }
}

/// A rule: allowed when every `(argument index, value)` pair matches, comparing the low 32 bits
/// of the argument (ioctl requests and fds are ints).
pub type ArgRule = Vec<(u8, u32)>;

/// What a role may call: syscall number to its rules, where no rules means always.
pub type Policy = BTreeMap<u32, Vec<ArgRule>>;

/// The allow-list of `role`; `extras` only widen the main thread's.
pub fn policy(role: ThreadRole, extras: &MainExtras) -> Policy {
    let nr = |s: libc::c_long| s as u32;
    let mut p = Policy::new();
    for s in COMMON.iter().chain(role_syscalls(role)) {
        p.insert(nr(*s), vec![]);
    }
    match role {
        ThreadRole::Vcpu => {
            p.insert(
                nr(libc::SYS_ioctl),
                vec![
                    vec![(1, KVM_RUN)],
                    vec![(1, KVM_GET_REGS)],
                    vec![(1, KVM_SET_REGS)],
                    vec![(1, KVM_CREATE_PIT2)],
                    vec![(1, KVM_TRANSLATE)],
                    vec![(1, KVM_UNREGISTER_COALESCED_MMIO)],
                    vec![(1, KVM_GET_SREGS)],
                    vec![(1, KVM_GET_VCPU_EVENTS)],
                    // The offloads a NIC's driver took, told to its TAP at DRIVER_OK.
                    vec![(1, TUNSETOFFLOAD as u32)],
                ]
                .into_iter()
                .chain(VHOST_AT_DRIVER_OK.map(|req| vec![(1, req() as u32)]))
                .collect(),
            );
        }
        ThreadRole::Io => {
            // A disk's discard and write-zeroes: punching holes and zeroing ranges of an
            // image already open, never growing it (KEEP_SIZE in both).
            p.insert(
                nr(libc::SYS_fallocate),
                vec![
                    vec![(
                        1,
                        (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32,
                    )],
                    vec![(
                        1,
                        (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) as u32,
                    )],
                ],
            );
        }
        ThreadRole::Extract | ThreadRole::FindBoot | ThreadRole::DiskWorker => {}
        ThreadRole::Main => {
            if let Some(fd) = extras.terminal {
                p.insert(
                    nr(libc::SYS_ioctl),
                    vec![vec![(0, fd as u32), (1, libc::TCSETS as u32)]],
                );
            }
            if let Some(fd) = extras.exit_dir {
                p.insert(
                    nr(libc::SYS_renameat),
                    vec![vec![(0, fd as u32), (2, fd as u32)]],
                );
            }
        }
    }
    p
}

/// The BPF program for `role`.
pub fn filter(role: ThreadRole) -> Result<BpfProgram, SeccompError> {
    filter_with(role, &MainExtras::default())
}

/// The BPF program for `role`; `extras` only widen the main thread's.
pub fn filter_with(role: ThreadRole, extras: &MainExtras) -> Result<BpfProgram, SeccompError> {
    compile(&policy(role, extras), mismatch_action()).ok_or(SeccompError::TooLarge(role))
}

// Classic BPF opcodes (linux/bpf_common.h) and the seccomp_data layout.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// Low 32 bits of `args[i]` (x86-64 is little-endian).
const fn data_arg_low(i: u8) -> u32 {
    16 + 8 * i as u32
}
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Syscalls tested one after the other at the bottom of the tree.
const LEAF: usize = 4;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: usize, jf: usize) -> Option<sock_filter> {
    Some(sock_filter {
        code,
        jt: u8::try_from(jt).ok()?,
        jf: u8::try_from(jf).ok()?,
        k,
    })
}

/// What follows a matched syscall number: allow, or check its argument rules in turn.
fn handler(rules: &[ArgRule], mismatch: u32) -> Option<Vec<sock_filter>> {
    if rules.is_empty() {
        return Some(vec![stmt(RET_K, RET_ALLOW)]);
    }
    let mut out = Vec::new();
    for rule in rules {
        // On a mismatch, skip the rest of this rule's block (its loads, tests and allow).
        for (j, &(arg, value)) in rule.iter().enumerate() {
            out.push(stmt(LD_W_ABS, data_arg_low(arg)));
            out.push(jump(JEQ_K, value, 0, 2 * (rule.len() - 1 - j) + 1)?);
        }
        out.push(stmt(RET_K, RET_ALLOW));
    }
    out.push(stmt(RET_K, mismatch));
    Some(out)
}

/// Binary search over `entries` (sorted by number), the number in the accumulator.
fn tree(entries: &[(u32, Vec<sock_filter>)], mismatch: u32) -> Option<Vec<sock_filter>> {
    if entries.len() <= LEAF {
        let mut out = Vec::new();
        for (nr, h) in entries {
            out.push(jump(JEQ_K, *nr, 0, h.len())?);
            out.extend_from_slice(h);
        }
        out.push(stmt(RET_K, mismatch));
        return Some(out);
    }
    let (low, high) = entries.split_at(entries.len() / 2);
    let left = tree(low, mismatch)?;
    let right = tree(high, mismatch)?;
    let mut out = vec![jump(JGE_K, high[0].0, left.len(), 0)?];
    out.extend(left);
    out.extend(right);
    Some(out)
}

/// Compiles `policy` for x86-64: other architectures (i386 and x32 calls included: their
/// numbers are never in the tree) are killed, unlisted syscalls get `mismatch`. `None` when a
/// jump would not fit in 8 bits (the allow-lists here are far from it).
pub fn compile(policy: &Policy, mismatch: u32) -> Option<BpfProgram> {
    let entries = policy
        .iter()
        .map(|(nr, rules)| Some((*nr, handler(rules, mismatch)?)))
        .collect::<Option<Vec<_>>>()?;
    let mut prog = vec![
        stmt(LD_W_ABS, DATA_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0)?,
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, DATA_NR),
    ];
    prog.extend(tree(&entries, mismatch)?);
    Some(prog)
}

/// Whether filters are switched off for debugging.
pub fn disabled() -> bool {
    std::env::var_os("HULL_VMM_NO_SECCOMP").is_some_and(|v| v == "1")
}

/// Installs `role`'s filter on the calling thread.
pub fn apply(role: ThreadRole) -> Result<(), SeccompError> {
    apply_with(role, &MainExtras::default())
}

/// Installs `role`'s filter, with `extras` for the main thread, on the calling thread.
pub fn apply_with(role: ThreadRole, extras: &MainExtras) -> Result<(), SeccompError> {
    if disabled() {
        return Ok(());
    }
    let prog = filter_with(role, extras)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(role, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// seccompiler's program for the same policy: the reference.
    fn reference(p: &Policy, mismatch: u32) -> BpfProgram {
        use seccompiler::{
            SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
            SeccompRule, TargetArch,
        };
        let rules = p
            .iter()
            .map(|(nr, rules)| {
                let rules = rules
                    .iter()
                    .map(|r| {
                        let conds = r
                            .iter()
                            .map(|&(i, v)| {
                                SeccompCondition::new(
                                    i,
                                    SeccompCmpArgLen::Dword,
                                    SeccompCmpOp::Eq,
                                    u64::from(v),
                                )
                                .unwrap()
                            })
                            .collect();
                        SeccompRule::new(conds).unwrap()
                    })
                    .collect();
                (i64::from(*nr), rules)
            })
            .collect();
        let action = if mismatch == RET_KILL_PROCESS {
            SeccompAction::KillProcess
        } else {
            SeccompAction::Errno(mismatch & 0xffff)
        };
        SeccompFilter::new(rules, action, SeccompAction::Allow, TargetArch::x86_64)
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// A classic BPF interpreter for what both compilers emit: the verdict for one call.
    fn verdict(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let load = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
                8 | 12 => 0,
                o if (16..64).contains(&o) && o % 4 == 0 => {
                    let a = args[((o - 16) / 8) as usize];
                    if o % 8 == 0 {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                o => panic!("load from offset {o}"),
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = load(i.k),
                JEQ_K | JGE_K | 0x25 | 0x45 => {
                    let taken = match i.code {
                        JEQ_K => acc == i.k,
                        JGE_K => acc >= i.k,
                        0x25 => acc > i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x05 => pc += i.k as usize, // BPF_JA
                0x54 => acc &= i.k,         // BPF_ALU | BPF_AND | BPF_K
                RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    /// Argument vectors worth trying for syscall `nr` under `p`: none, each rule's match, and
    /// each rule with one value off or with junk in the upper half.
    fn probes(p: &Policy, nr: u32) -> Vec<[u64; 6]> {
        let mut out = vec![[0; 6], [u64::MAX; 6]];
        for rule in p.get(&nr).into_iter().flatten() {
            let mut a = [0u64; 6];
            for &(i, v) in rule {
                a[usize::from(i)] = u64::from(v);
            }
            out.push(a);
            let mut high = a;
            for &(i, _) in rule {
                high[usize::from(i)] |= 0xdead_0000_0000;
            }
            out.push(high);
            for &(i, _) in rule {
                let mut off = a;
                off[usize::from(i)] ^= 1;
                out.push(off);
            }
        }
        out
    }

    #[test]
    fn the_tree_decides_like_seccompiler_for_every_call() {
        let extras = [
            MainExtras::default(),
            MainExtras {
                terminal: Some(0),
                exit_dir: Some(9),
            },
        ];
        for role in [
            ThreadRole::Vcpu,
            ThreadRole::Io,
            ThreadRole::Main,
            ThreadRole::Extract,
            ThreadRole::FindBoot,
            ThreadRole::DiskWorker,
        ] {
            for extras in &extras {
                for mismatch in [RET_KILL_PROCESS, RET_ERRNO | libc::ENOSYS as u32] {
                    let p = policy(role, extras);
                    let ours = compile(&p, mismatch).unwrap();
                    let theirs = reference(&p, mismatch);
                    assert!(
                        ours.len() < theirs.len(),
                        "{} vs {}",
                        ours.len(),
                        theirs.len()
                    );
                    let x32 = 0x4000_0000;
                    for nr in (0..520).chain([x32, x32 | 1, x32 | 16, u32::MAX]) {
                        for arch in [AUDIT_ARCH_X86_64, 0x4000_0003] {
                            for args in probes(&p, nr) {
                                assert_eq!(
                                    verdict(&ours, arch, nr, args),
                                    verdict(&theirs, arch, nr, args),
                                    "{role:?} {extras:?} arch {arch:#x} nr {nr} args {args:x?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_extractor_may_write_its_output_and_nothing_more() {
        let p = policy(ThreadRole::Extract, &MainExtras::default());
        let prog = compile(&p, RET_KILL_PROCESS).unwrap();
        let v = |nr: libc::c_long| verdict(&prog, AUDIT_ARCH_X86_64, nr as u32, [3, 0, 0, 0, 0, 0]);
        for ok in [
            libc::SYS_write,
            libc::SYS_mmap,
            libc::SYS_close,
            libc::SYS_exit_group,
        ] {
            assert_eq!(v(ok), RET_ALLOW, "{ok}");
        }
        for banned in [
            libc::SYS_read,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_ioctl,
            libc::SYS_unlink,
            libc::SYS_clone3,
        ] {
            assert_eq!(v(banned), RET_KILL_PROCESS, "{banned}");
        }
    }

    #[test]
    fn the_boot_finder_may_read_at_offsets_and_write_and_nothing_more() {
        let p = policy(ThreadRole::FindBoot, &MainExtras::default());
        let prog = compile(&p, RET_KILL_PROCESS).unwrap();
        let v = |nr: libc::c_long| verdict(&prog, AUDIT_ARCH_X86_64, nr as u32, [3, 0, 0, 0, 0, 0]);
        for ok in [
            libc::SYS_pread64,
            libc::SYS_write,
            libc::SYS_mmap,
            libc::SYS_exit_group,
        ] {
            assert_eq!(v(ok), RET_ALLOW, "{ok}");
        }
        for banned in [
            libc::SYS_read,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_lseek,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_ioctl,
            libc::SYS_capset,
            libc::SYS_ptrace,
            libc::SYS_clone3,
        ] {
            assert_eq!(v(banned), RET_KILL_PROCESS, "{banned}");
        }
    }

    #[test]
    fn verdicts_are_the_intended_ones() {
        let p = policy(ThreadRole::Vcpu, &MainExtras::default());
        let prog = compile(&p, RET_KILL_PROCESS).unwrap();
        let v = |nr: libc::c_long, args| verdict(&prog, AUDIT_ARCH_X86_64, nr as u32, args);
        let ioctl = |req: u32| [3, u64::from(req), 0, 0, 0, 0];
        assert_eq!(v(libc::SYS_ioctl, ioctl(KVM_RUN)), RET_ALLOW);
        assert_eq!(v(libc::SYS_ioctl, ioctl(KVM_GET_REGS)), RET_ALLOW);
        // The PIT made on first use: create it, rewind the vCPU, read its instruction.
        for req in [
            KVM_SET_REGS,
            KVM_CREATE_PIT2,
            KVM_TRANSLATE,
            KVM_UNREGISTER_COALESCED_MMIO,
            KVM_GET_SREGS,
            KVM_GET_VCPU_EVENTS,
            TUNSETOFFLOAD as u32,
        ] {
            assert_eq!(v(libc::SYS_ioctl, ioctl(req)), RET_ALLOW, "{req:#x}");
        }
        // The read-only state ioctls are _IOR of the structs kvm-bindings declares.
        let ior = |nr: u32, size: usize| (2 << 30) | ((size as u32) << 16) | (0xae << 8) | nr;
        assert_eq!(
            KVM_GET_SREGS,
            ior(0x83, size_of::<kvm_bindings::kvm_sregs>())
        );
        assert_eq!(
            KVM_GET_VCPU_EVENTS,
            ior(0x9f, size_of::<kvm_bindings::kvm_vcpu_events>())
        );
        // vhost-net at DRIVER_OK: SET_FEATURES, SET_VRING_NUM/BASE, SET_VRING_ADDR (a 40-byte
        // struct), SET_VRING_CALL, NET_SET_BACKEND.
        for req in [
            0x4008_af00u32,
            0x4008_af10,
            0x4008_af12,
            0x4028_af11,
            0x4008_af21,
            0x4008_af30,
        ] {
            assert_eq!(v(libc::SYS_ioctl, ioctl(req)), RET_ALLOW, "{req:#x}");
        }
        // vhost's owner, memory table and notifies are set before the vCPUs run:
        // SET_OWNER, RESET_OWNER, SET_MEM_TABLE, SET_VRING_KICK.
        for req in [0xaf01u32, 0xaf02, 0x4008_af03, 0x4008_af20] {
            assert_eq!(v(libc::SYS_ioctl, ioctl(req)), RET_KILL_PROCESS, "{req:#x}");
        }
        // KVM_SET_SREGS, KVM_SET_USER_MEMORY_REGION, KVM_CREATE_VCPU stay with setup.
        for req in [0x4138_ae84u32, 0x4020_ae46, 0xae41] {
            assert_eq!(v(libc::SYS_ioctl, ioctl(req)), RET_KILL_PROCESS, "{req:#x}");
        }
        assert_eq!(v(libc::SYS_ioctl, ioctl(0xae81)), RET_KILL_PROCESS);
        // Disk I/O is the I/O thread's: a vCPU taken over cannot read or change images.
        for banned in [
            libc::SYS_pread64,
            libc::SYS_pwritev,
            libc::SYS_fallocate,
            libc::SYS_fdatasync,
        ] {
            assert_eq!(v(banned, [3, 0, 0, 0, 0, 0]), RET_KILL_PROCESS, "{banned}");
        }
        for banned in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
        ] {
            assert_eq!(v(banned, [0; 6]), RET_KILL_PROCESS, "{banned}");
        }
        // The same number from the i386 ABI is killed whatever it is.
        assert_eq!(
            verdict(&prog, 0x4000_0003, libc::SYS_read as u32, [0; 6]),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn the_io_thread_may_do_disk_and_tap_io_and_nothing_more() {
        let p = policy(ThreadRole::Io, &MainExtras::default());
        let prog = compile(&p, RET_KILL_PROCESS).unwrap();
        let v = |nr: libc::c_long, args| verdict(&prog, AUDIT_ARCH_X86_64, nr as u32, args);
        for ok in [
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            libc::SYS_epoll_wait,
            libc::SYS_read,
            libc::SYS_sendto,
        ] {
            assert_eq!(v(ok, [3, 0, 0, 0, 0, 0]), RET_ALLOW, "{ok}");
        }
        // fallocate only punches holes or zeroes ranges, never grows the image.
        let fa = |mode: libc::c_int| [3, mode as u64, 0, 4096, 0, 0];
        for mode in [
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        ] {
            assert_eq!(v(libc::SYS_fallocate, fa(mode)), RET_ALLOW, "{mode:#x}");
        }
        for mode in [
            0,
            libc::FALLOC_FL_ZERO_RANGE,
            libc::FALLOC_FL_COLLAPSE_RANGE,
        ] {
            assert_eq!(
                v(libc::SYS_fallocate, fa(mode)),
                RET_KILL_PROCESS,
                "{mode:#x}"
            );
        }
        for banned in [
            libc::SYS_ioctl,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_ftruncate,
            libc::SYS_execve,
            libc::SYS_clone3,
        ] {
            assert_eq!(v(banned, [3, 0, 0, 0, 0, 0]), RET_KILL_PROCESS, "{banned}");
        }
    }

    /// Runs `f` in a forked child with `role`'s filter and returns its wait status.
    fn in_filtered_child(role: ThreadRole, f: fn()) -> libc::c_int {
        in_child_with(filter(role).unwrap(), f)
    }

    /// Runs `f` in a forked child with filter `prog` and returns its wait status.
    fn in_child_with(prog: BpfProgram, f: fn()) -> libc::c_int {
        // SAFETY: the child only installs the prebuilt filter (prctl + seccomp), runs `f`
        // (raw syscalls, no allocation) and _exits; the parent waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if seccompiler::apply_filter(&prog).is_err() {
                    libc::_exit(99);
                }
                f();
                libc::_exit(0);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            status
        }
    }

    fn killed_by_sigsys(status: libc::c_int) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    #[test]
    fn vcpu_thread_dies_on_socket_or_open() {
        let st = in_filtered_child(ThreadRole::Vcpu, || {
            // SAFETY: a plain syscall with constant arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        });
        assert!(killed_by_sigsys(st), "status {st:#x}");
        let st = in_filtered_child(ThreadRole::Vcpu, || {
            // SAFETY: a plain syscall on a static NUL-terminated path.
            unsafe { libc::openat(libc::AT_FDCWD, c"/etc/passwd".as_ptr(), libc::O_RDONLY) };
        });
        assert!(killed_by_sigsys(st), "status {st:#x}");
    }

    #[test]
    fn vcpu_ioctls_are_limited_to_kvm_run() {
        let st = in_filtered_child(ThreadRole::Vcpu, || {
            // SAFETY: ioctl on an invalid fd; the filter decides before the kernel looks.
            unsafe { libc::ioctl(-1, libc::TIOCSTI, 0) };
        });
        assert!(killed_by_sigsys(st), "status {st:#x}");
        let st = in_filtered_child(ThreadRole::Vcpu, || {
            // SAFETY: KVM_RUN on an invalid fd fails with EBADF, which is fine.
            unsafe { libc::ioctl(-1, KVM_RUN as _, 0) };
        });
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "status {st:#x}"
        );
    }

    #[test]
    fn every_thread_that_may_run_a_nics_transmit_queue_may_writev_and_no_other_does_disk_io() {
        // The I/O thread (its notifies), a vCPU (a receive notify whose re-arm finds transmit
        // entries) and the main thread (a TAP readable, the same): a frame goes out with
        // writev from any of them.
        for role in [ThreadRole::Vcpu, ThreadRole::Io, ThreadRole::Main] {
            let prog = compile(&policy(role, &MainExtras::default()), RET_KILL_PROCESS).unwrap();
            let v = |nr: libc::c_long| verdict(&prog, AUDIT_ARCH_X86_64, nr as u32, [3; 6]);
            assert_eq!(v(libc::SYS_writev), RET_ALLOW, "{role:?}");
            let disk = v(libc::SYS_preadv) == RET_ALLOW;
            assert_eq!(disk, role == ThreadRole::Io, "{role:?} preadv");
        }
    }

    #[test]
    fn allowed_calls_pass_and_exec_is_refused_everywhere() {
        for role in [ThreadRole::Vcpu, ThreadRole::Io, ThreadRole::Main] {
            let st = in_filtered_child(role, || {
                let mut b = [0u8; 8];
                // SAFETY: getrandom into a local buffer.
                unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
            });
            assert!(
                libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                "{role:?}: {st:#x}"
            );
            let st = in_filtered_child(role, || {
                // SAFETY: execve of a static path with empty argv/envp; never returns if allowed.
                unsafe { libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null()) };
            });
            assert!(killed_by_sigsys(st), "{role:?}: {st:#x}");
        }
    }

    fn exited_ok(status: libc::c_int) -> bool {
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    /// TCSETS with a null termios: the kernel fails it, only the filter's verdict counts.
    fn tcsets(fd: libc::c_int, req: libc::c_ulong) {
        // SAFETY: an ioctl with a null argument, which the kernel refuses with EFAULT.
        unsafe { libc::ioctl(fd, req, std::ptr::null::<u8>()) };
    }

    /// renameat of names that do not exist relative to two directory fds.
    fn renameat(from: libc::c_int, to: libc::c_int) {
        // SAFETY: renameat with static NUL-terminated names; it fails (EBADF/ENOENT).
        unsafe {
            libc::syscall(
                libc::SYS_renameat,
                from,
                c"/nonexistent/a".as_ptr(),
                to,
                c"b".as_ptr(),
            )
        };
    }

    #[test]
    fn main_extras_allow_one_terminal_ioctl_and_one_rename_directory() {
        let extras = MainExtras {
            terminal: Some(0),
            exit_dir: Some(7),
        };
        let main = || filter_with(ThreadRole::Main, &extras).unwrap();
        let st = in_child_with(main(), || tcsets(0, libc::TCSETS));
        assert!(exited_ok(st), "TCSETS on the terminal: {st:#x}");
        let st = in_child_with(main(), || tcsets(1, libc::TCSETS));
        assert!(killed_by_sigsys(st), "TCSETS on another fd: {st:#x}");
        let st = in_child_with(main(), || tcsets(0, libc::TIOCSTI));
        assert!(killed_by_sigsys(st), "another ioctl: {st:#x}");
        let st = in_child_with(main(), || renameat(7, 7));
        assert!(exited_ok(st), "renameat in the exit directory: {st:#x}");
        let st = in_child_with(main(), || renameat(libc::AT_FDCWD, 7));
        assert!(killed_by_sigsys(st), "renameat from elsewhere: {st:#x}");
        // Without extras the main thread has neither.
        let st = in_filtered_child(ThreadRole::Main, || renameat(7, 7));
        assert!(killed_by_sigsys(st), "{st:#x}");
        let st = in_filtered_child(ThreadRole::Main, || tcsets(0, libc::TCSETS));
        assert!(killed_by_sigsys(st), "{st:#x}");
    }
}
