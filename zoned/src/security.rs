//! What a zone process may do beyond its namespaces: the capability set it keeps, the
//! syscalls its seccomp filters refuse, and the last steps before it runs the zone's code
//! (no_new_privs, no inherited file descriptors).
//!
//! A zone's root is root only inside the zone's user namespace, which owns the zone's other
//! namespaces (mount, pid, net, uts, ipc, cgroup). The capability bounding set keeps what
//! Docker keeps by default, so without CAP_SYS_ADMIN and CAP_NET_ADMIN the zone cannot
//! change its hostname or configure its network, and the seccomp filter refuses the mount
//! API outright. CAP_SYS_BOOT is kept: in the zone's pid namespace `reboot(2)` only ends the
//! zone's init (the kernel turns it into SIGHUP for a restart, SIGINT for a halt), which is
//! how a zone reboots or halts itself, never the host.

use std::collections::BTreeMap;

use caps::{CapSet, Capability};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors from setting up a zone process's privileges.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot build the zone seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot install the zone seccomp filter")]
    Install(#[source] seccompiler::Error),
    #[error("cannot {what}")]
    Caps {
        what: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot {what}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The capabilities a zone keeps (bounding, permitted, effective and inheritable sets).
pub const KEPT_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_SYS_BOOT,
];

/// A zone's capabilities: [`KEPT_CAPS`], with CAP_NET_ADMIN for a zone that configures its
/// own links (a VRRP NIC's daemon).
pub fn zone_caps(net_admin: bool) -> Vec<Capability> {
    let mut caps = KEPT_CAPS.to_vec();
    if net_admin {
        caps.push(Capability::CAP_NET_ADMIN);
    }
    caps
}

/// Syscalls refused with EPERM: kernel modules and kexec, eBPF, perf, the kernel keyring,
/// clocks, swap, accounting, raw I/O ports, the mount API, namespace changes, file handles
/// (the "shocker" escape), userfaultfd and the kernel log.
const DENIED: &[libc::c_long] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_bpf,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_settimeofday,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_init_module,
    libc::SYS_ioperm,
    libc::SYS_iopl,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_request_key,
    libc::SYS_lookup_dcookie,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_perf_event_open,
    libc::SYS_pivot_root,
    libc::SYS_quotactl,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_uselib,
    libc::SYS_userfaultfd,
    libc::SYS_vhangup,
    libc::SYS_nfsservctl,
    libc::SYS__sysctl,
];

/// clone(2) flags that make namespaces; a clone asking for any of them is refused.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
    0x80, // CLONE_NEWTIME
];

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(not(target_arch = "aarch64"))]
    TargetArch::x86_64
}

/// The seccomp programs a zone process runs under, installed in order.
pub type Filters = [BpfProgram; 3];

/// The filters a zone process runs under: the deny list (EPERM); clone3 answered with ENOSYS
/// so that libc falls back to clone(2), whose flags the first filter can see; and terminal
/// output flushes turned into no-ops (see `keep_console_output`).
pub fn filters() -> Result<Filters, SecurityError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in DENIED {
        rules.insert(*s, vec![]);
    }
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let flag = *flag as u64;
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(SecurityError::Build)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(SecurityError::Build)?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    // netfilter's netlink (nf_tables, the ground of most user-namespace escapes): a zone
    // that holds CAP_NET_ADMIN over its own network (a VRRP NIC's) gets its links,
    // addresses and routes, not a packet filter.
    let netfilter = vec![
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_NETLINK as u64,
        )
        .map_err(SecurityError::Build)?,
        SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::NETLINK_NETFILTER as u64,
        )
        .map_err(SecurityError::Build)?,
    ];
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(netfilter).map_err(SecurityError::Build)?],
    );
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )
    .map_err(SecurityError::Build)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )
    .map_err(SecurityError::Build)?;
    Ok([
        deny.try_into().map_err(SecurityError::Build)?,
        clone3.try_into().map_err(SecurityError::Build)?,
        keep_console_output()?
            .try_into()
            .map_err(SecurityError::Build)?,
    ])
}

/// `tcflush(fd, TCOFLUSH)` and `tcflush(fd, TCIOFLUSH)` succeed without discarding anything.
///
/// zoned reads the zone's console pty asynchronously, and a flush on the slave discards what it
/// has not read yet: sysvinit prints its banner and, milliseconds later (docs/PERFORMANCE.md),
/// its first child flushes the console (TCIOFLUSH), so under load the banner was lost from the
/// console and its replay. A terminal that drains at once has no pending output to discard,
/// which is what the zone sees now; input-only flushes (TCIFLUSH, getty's and login's
/// type-ahead discard) still work.
fn keep_console_output() -> Result<SeccompFilter, SecurityError> {
    let flush = |queue: u64| -> Result<SeccompRule, SecurityError> {
        let conds = vec![
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::TCFLSH)
                .map_err(SecurityError::Build)?,
            SeccompCondition::new(2, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, queue)
                .map_err(SecurityError::Build)?,
        ];
        SeccompRule::new(conds).map_err(SecurityError::Build)
    };
    SeccompFilter::new(
        BTreeMap::from([(
            libc::SYS_ioctl,
            vec![
                flush(libc::TCOFLUSH as u64)?,
                flush(libc::TCIOFLUSH as u64)?,
            ],
        )]),
        SeccompAction::Allow,
        SeccompAction::Errno(0),
        arch(),
    )
    .map_err(SecurityError::Build)
}

/// Reduces the calling thread's capabilities to `keep` ([`KEPT_CAPS`] for a zone, none for a
/// microVM's VMM) in every set, bounding set included, ambient set emptied, and sets
/// no_new_privs, so that nothing it executes can gain more.
pub fn drop_privileges(keep: &[Capability]) -> Result<(), SecurityError> {
    let caps_err = |what| move |source| SecurityError::Caps { what, source };
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("drop a capability from the bounding set"))?;
        }
    }
    let kept: caps::CapsHashSet = keep.iter().copied().collect();
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clear the ambient capabilities"))?;
    caps::set(None, CapSet::Inheritable, &kept)
        .map_err(caps_err("set the inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &kept)
        .map_err(caps_err("set the effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &kept)
        .map_err(caps_err("set the permitted capabilities"))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SecurityError::Sys {
            what: "set no_new_privs",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Narrows a zone process's capabilities (after [`drop_privileges`]) to `keep`: the
/// bounding set first (`before_user`, while CAP_SETPCAP is still held), then, once it has
/// taken its user's ids, its permitted, effective and inheritable sets to what of `keep`
/// it still holds (a user other than the zone's root holds none by then).
pub fn narrow_caps(keep: &[Capability], before_user: bool) -> Result<(), SecurityError> {
    let caps_err = |what| move |source| SecurityError::Caps { what, source };
    if before_user {
        for cap in KEPT_CAPS.iter().filter(|c| !keep.contains(c)) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(caps_err("drop a capability from the bounding set"))?;
        }
        return Ok(());
    }
    let held = caps::read(None, CapSet::Permitted).map_err(caps_err("read the capabilities"))?;
    let kept: caps::CapsHashSet = keep.iter().filter(|c| held.contains(c)).copied().collect();
    caps::set(None, CapSet::Inheritable, &kept)
        .map_err(caps_err("set the inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &kept)
        .map_err(caps_err("set the effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("set the permitted capabilities"))
}

/// Installs the zone filters on the calling thread (after [`drop_privileges`]).
pub fn apply_filters(filters: &Filters) -> Result<(), SecurityError> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(SecurityError::Install)?;
    }
    Ok(())
}

/// Marks every descriptor from 3 up close-on-exec, so the zone's code starts with stdin,
/// stdout and stderr only.
pub fn close_inherited_fds() -> Result<(), SecurityError> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        return Err(SecurityError::Sys {
            what: "mark inherited descriptors close-on-exec",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child under the zone filters; returns its exit code.
    fn in_filtered_child(f: fn() -> i32) -> i32 {
        let progs = filters().unwrap();
        // SAFETY: the child sets no_new_privs, installs prebuilt filters, runs `f` (raw
        // syscalls only) and _exits; the parent waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for p in &progs {
                    if seccompiler::apply_filter(p).is_err() {
                        libc::_exit(99);
                    }
                }
                libc::_exit(f());
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status), "child died: {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn denied_calls_fail_with_eperm_and_others_work() {
        let code = in_filtered_child(|| {
            // SAFETY: raw syscalls with harmless arguments; each is refused by the filter.
            unsafe {
                if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
                    return 1;
                }
                if libc::unshare(libc::CLONE_NEWUSER) != -1 || errno() != libc::EPERM {
                    return 2;
                }
                if libc::syscall(libc::SYS_bpf, 0, 0, 0) != -1 || errno() != libc::EPERM {
                    return 3;
                }
                if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                    return 4;
                }
                let flags = (libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_ulong;
                if libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) != -1 || errno() != libc::EPERM
                {
                    return 5;
                }
                // A plain fork still works.
                let pid =
                    libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid < 0 || libc::getpid() <= 0 {
                    return 6;
                }
                // netfilter's netlink is closed; the routing one stays open.
                let nf = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_NETFILTER);
                if nf != -1 || errno() != libc::EPERM {
                    return 7;
                }
                let route = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE);
                if route < 0 {
                    return 8;
                }
                libc::close(route);
            }
            0
        });
        assert_eq!(code, 0);
    }

    /// Output flushes keep what was written (zoned reads it later); input flushes discard.
    #[test]
    fn terminal_output_flushes_keep_the_output() {
        let code = in_filtered_child(|| {
            // SAFETY: a pty pair of this child's, written, flushed and read with raw calls.
            unsafe {
                let (mut master, mut slave) = (-1, -1);
                let (name, term, size) = (std::ptr::null_mut(), std::ptr::null(), std::ptr::null());
                if libc::openpty(&mut master, &mut slave, name, term, size) != 0 {
                    return 1;
                }
                let readable = |fd: i32, ms: i32| {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    libc::poll(&mut p, 1, ms) == 1
                };
                for queue in [libc::TCOFLUSH, libc::TCIOFLUSH] {
                    if libc::write(slave, b"kept\n".as_ptr().cast(), 5) != 5 {
                        return 2;
                    }
                    if libc::tcflush(slave, queue) != 0 || !readable(master, 5000) {
                        return 3;
                    }
                    let mut buf = [0u8; 64];
                    let n = libc::read(master, buf.as_mut_ptr().cast(), buf.len());
                    if n <= 0 || !buf[..n as usize].starts_with(b"kept") {
                        return 4;
                    }
                }
                // Input typed on the master, readable on the slave, then discarded.
                if libc::write(master, b"typed\n".as_ptr().cast(), 6) != 6 || !readable(slave, 5000)
                {
                    return 5;
                }
                if libc::tcflush(slave, libc::TCIFLUSH) != 0 || readable(slave, 0) {
                    return 6;
                }
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn kept_capabilities_leave_out_the_dangerous_ones() {
        for cap in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
        ] {
            assert!(!KEPT_CAPS.contains(&cap), "{cap}");
        }
    }
}
