//! Per-thread seccomp allow-lists (seccompiler). Each thread of the VMM installs the filter for
//! its role once its setup is done; any other syscall kills the whole process, so a guest
//! that takes over a device emulation path still cannot open files, create sockets or spawn
//! processes. There are two roles, so two BPF programs for the kernel to compile (one per
//! vCPU thread plus one for the main thread): each `seccomp(2)` install costs ~0.1-0.2 ms
//! here, compiled for the calling thread alone. Setting `HULL_VMM_NO_SECCOMP=1` skips the filters and
//! `HULL_VMM_SECCOMP_DISCOVER=1` turns kills into ENOSYS (debugging only).

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// ioctl numbers a vCPU thread may issue.
const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// What a thread does, which decides what it may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// Runs KVM_RUN and device emulation (block I/O, TAP writes, console output).
    Vcpu,
    /// After setup, the event loop: signals, console input, TAP readiness, the control socket
    /// (which kicks and parks vCPUs), the stop; then flushes, restores and exits.
    Main,
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
    #[error("cannot build the seccomp filter for the {0:?} thread")]
    Build(ThreadRole, #[source] seccompiler::BackendError),
    #[error("cannot compile the seccomp filter for the {0:?} thread")]
    Compile(ThreadRole, #[source] seccompiler::BackendError),
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
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            libc::SYS_sendto,
            // Whatever a device path drops (debug builds check fds with F_GETFD before
            // closing). Closing grants nothing; the thread no longer tears its vCPU down.
            libc::SYS_close,
            libc::SYS_fcntl,
        ],
        ThreadRole::Main => &[
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
            // Removing the control socket at exit.
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ],
    }
}

/// Kill the process, or with `HULL_VMM_SECCOMP_DISCOVER=1` fail the call with ENOSYS so that
/// `strace -f` shows which syscall a filter is missing (debugging only).
fn mismatch_action() -> SeccompAction {
    if std::env::var_os("HULL_VMM_SECCOMP_DISCOVER").is_some_and(|v| v == "1") {
        SeccompAction::Errno(libc::ENOSYS as u32)
    } else {
        SeccompAction::KillProcess
    }
}

/// The BPF program for `role`.
pub fn filter(role: ThreadRole) -> Result<BpfProgram, SeccompError> {
    filter_with(role, &MainExtras::default())
}

/// A rule matching when every `(argument index, value)` pair is equal.
fn args_equal(role: ThreadRole, args: &[(u8, u64)]) -> Result<SeccompRule, SeccompError> {
    let conds = args
        .iter()
        .map(|&(i, v)| SeccompCondition::new(i, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SeccompError::Build(role, e))?;
    SeccompRule::new(conds).map_err(|e| SeccompError::Build(role, e))
}

/// The BPF program for `role`; `extras` only widen the main thread's.
pub fn filter_with(role: ThreadRole, extras: &MainExtras) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in COMMON.iter().chain(role_syscalls(role)) {
        rules.insert(*s, vec![]);
    }
    if role == ThreadRole::Vcpu {
        rules.insert(
            libc::SYS_ioctl,
            vec![
                args_equal(role, &[(1, KVM_RUN)])?,
                args_equal(role, &[(1, KVM_GET_REGS)])?,
            ],
        );
    }
    if role == ThreadRole::Main {
        if let Some(fd) = extras.terminal {
            rules.insert(
                libc::SYS_ioctl,
                vec![args_equal(role, &[(0, fd as u64), (1, libc::TCSETS)])?],
            );
        }
        if let Some(fd) = extras.exit_dir {
            rules.insert(
                libc::SYS_renameat,
                vec![args_equal(role, &[(0, fd as u64), (2, fd as u64)])?],
            );
        }
    }
    let f = SeccompFilter::new(
        rules,
        mismatch_action(),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(role, e))?;
    f.try_into().map_err(|e| SeccompError::Compile(role, e))
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
    fn allowed_calls_pass_and_exec_is_refused_everywhere() {
        for role in [ThreadRole::Vcpu, ThreadRole::Main] {
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
