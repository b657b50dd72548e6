//! Cgroup v2, the unified hierarchy: one directory holds every controller, the controllers
//! are delegated down through each ancestor's `cgroup.subtree_control`, a cgroup is killed
//! through `cgroup.kill` and a process can be cloned straight into it. This module never
//! renames a cgroup (v2 cannot) and never enables a controller outside [`CONTROLLERS`].

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{CPU_PERIOD_US, Cgroup, CgroupError, Dir, Limits, Version, cpu_quota_us, read};

/// Controllers enabled in the `cgroup.subtree_control` of every v2 ancestor.
pub(super) const CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// The cgroup v2 side of [`Version`].
#[derive(Debug)]
pub(super) struct V2;

impl Version for V2 {
    fn dir<'a>(&self, dirs: &'a [Dir], _controller: &str) -> Option<&'a Path> {
        dirs.first().map(|d| d.path.as_path())
    }

    fn before_mkdir(&self, parent: &Path) -> Result<(), CgroupError> {
        enable_controllers(parent)
    }

    fn set_limits(&self, cg: &Cgroup, limits: &Limits) -> Result<Vec<String>, CgroupError> {
        let mut notes = Vec::new();
        let quota = cpu_quota_us(limits);
        let shares = limits.cpu_shares.map(|s| s.clamp(2, 262_144));
        let io = limits.io_weight;
        let (memory, lwps) = (limits.memory_bytes, limits.max_lwps);
        let swap = limits
            .swap_bytes
            .map(|s| s.saturating_sub(memory.unwrap_or(0)));
        cg.put("memory", "memory.max", memory, "max")?;
        let swap_text = swap.map_or("max".to_owned(), |s| s.to_string());
        if !cg.offer("memory", "memory.swap.max", &swap_text)? && swap.is_some() {
            notes.push("swap limit not supported here (no memory.swap.max)".to_owned());
        }
        let cpu_max = quota.map(|q| format!("{q} {CPU_PERIOD_US}"));
        cg.put("cpu", "cpu.max", cpu_max, &format!("max {CPU_PERIOD_US}"))?;
        cg.put("cpu", "cpu.weight", shares.map(shares_to_weight), "100")?;
        cg.put("pids", "pids.max", lwps, "max")?;
        let weight = io.map_or(100, |w| w.clamp(1, 10_000));
        if !cg.offer("io", "io.weight", &format!("default {weight}"))?
            && !cg.offer("io", "io.bfq.weight", &weight.min(1000).to_string())?
            && io.is_some()
        {
            notes.push("io weight not supported here (no io.weight)".to_owned());
        }
        Ok(notes)
    }

    fn kill(&self, cg: &Cgroup) -> Result<bool, CgroupError> {
        cg.offer("cgroup", "cgroup.kill", "1")
    }

    fn freeze(&self, cg: &Cgroup, frozen: bool) -> Result<bool, CgroupError> {
        cg.offer("cgroup", "cgroup.freeze", if frozen { "1" } else { "0" })
    }

    fn oom_kills(&self, cg: &Cgroup) -> Option<u64> {
        cg.read_key("memory", "memory.events", "oom_kill")
    }

    fn cpu_usage_ns(&self, cg: &Cgroup) -> Option<u64> {
        cg.read_key("cpu", "cpu.stat", "usage_usec")?
            .checked_mul(1000)
    }
}

/// v2 `cpu.weight` for v1 `cpu.shares`, the mapping runc and systemd use.
fn shares_to_weight(shares: u32) -> u64 {
    let shares = u64::from(shares.clamp(2, 262_144));
    (1 + ((shares - 2) * 9999) / 262_142).clamp(1, 10_000)
}

/// Enables the hull controllers this v2 directory offers but has not yet delegated.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let offered = dir.join("cgroup.controllers");
    if !offered.exists() {
        return Ok(());
    }
    let offered = read(&offered)?;
    let control = dir.join("cgroup.subtree_control");
    let enabled = read(&control)?;
    let listed = |text: &str, c: &str| text.split_whitespace().any(|t| t == c);
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| listed(&offered, c) && !listed(&enabled, c))
        .map(|c| format!("+{c}"))
        .collect();
    match wanted.is_empty() {
        true => Ok(()),
        false => super::write_file(&control, &wanted.join(" ")),
    }
}

/// Forks the calling process with the extra clone `flags`, the child born inside the v2
/// cgroup directory `dir`: clone3(CLONE_INTO_CGROUP). Returns the child's pid in the parent
/// and 0 in the child, like fork(2).
///
/// # Safety
/// As fork(2): the caller must be single-threaded, and the child must only do what is
/// safe after fork before it execs or exits.
pub(super) unsafe fn clone_into(dir: &Path, flags: u64) -> io::Result<i32> {
    /// struct clone_args of linux/sched.h, up to `cgroup` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let fd = fs::File::open(dir)?;
    let mut args = CloneArgs {
        flags: flags | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: fd.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a valid clone_args of the size given and no new stack: a fork
    // (the caller's contract covers the child).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        p if p < 0 => Err(io::Error::last_os_error()),
        p => Ok(p as i32),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use std::fs;
    use std::path::Path;

    use super::super::tests::{check, fake, snap};
    use super::super::{Cgroup, Layout, Limits};
    use super::shares_to_weight;

    #[test]
    fn converts_shares_to_weight() {
        let weights = [0, 2, 1024, 262_144, u32::MAX].map(shares_to_weight);
        assert_eq!(weights, [1, 1, 39, 10_000, 10_000]);
    }

    /// A v2 tree: the root offers five controllers, "hull" offers three and delegates cpu.
    pub(in crate::cgroup) fn v2_tree(root: &Path) -> Layout {
        let offered = "cpuset cpu io memory pids\n";
        fake(
            root,
            &format!("cgroup.controllers={offered};cgroup.subtree_control="),
        );
        let hull = "cgroup.controllers=cpu memory pids\n;cgroup.subtree_control=cpu\n";
        fake(&root.join("hull"), hull);
        let line = format!("9 1 0:9 / {} rw - cgroup2 cgroup2 rw\n", root.display());
        Layout::detect_at(&line).unwrap()
    }

    #[test]
    fn v2_create_writes_limits_and_resets_them() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = v2_tree(tmp.path());
        let zone = tmp.path().join("hull/z1");
        let files = "memory.max memory.swap.max cpu.max cpu.weight pids.max io.weight";
        fake(&zone, &files.replace(' ', "=junk;"));
        fake(
            &zone,
            "io.weight=;cgroup.procs=12\n7\n;memory.events=oom 3\noom_kill 2",
        );
        fake(&zone, "cpu.stat=usage_usec 1500\nuser_usec 1\n");
        fake(&zone.join("sub"), "cgroup.procs=7\n0\n-1\n");
        let limits = Limits {
            memory_bytes: Some(1 << 30),
            swap_bytes: Some(3 << 30),
            cpu_cap_pct: Some(50),
            cpu_shares: Some(262_144),
            max_lwps: Some(2000),
            io_weight: Some(20_000),
        };
        let (cg, notes) = Cgroup::create(&layout, "hull/z1", &limits).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        let delegated = "cgroup.subtree_control hull/cgroup.subtree_control";
        assert_eq!(
            snap(tmp.path(), delegated),
            "+cpu +memory +pids +io|+memory +pids"
        );
        let want = "1073741824|2147483648|50000 100000|10000|2000|default 10000";
        assert_eq!(snap(&zone, files), want);
        assert_eq!((cg.procs().unwrap(), cg.oom_kills()), (vec![7, 12], 2));
        assert_eq!(
            (cg.cpu_usage_ns(), cg.paths()),
            (Some(1_500_000), vec![zone.clone()])
        );
        cg.add_pid(42).unwrap();
        check(&cg, "cgroup.procs=42");

        let cg = Cgroup::open(&layout, "hull/z1").unwrap();
        assert!(cg.set_limits(&Limits::default()).unwrap().is_empty());
        assert_eq!(snap(&zone, files), "max|max|max 100000|100|max|default 100");
    }

    #[test]
    fn v2_io_weight_falls_back_to_bfq_then_to_a_note() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = v2_tree(tmp.path());
        fake(&tmp.path().join("hull/z2"), "io.bfq.weight=100");
        let mut limits = Limits::default();
        (limits.io_weight, limits.swap_bytes) = (Some(5000), Some(1));
        let (cg, notes) = Cgroup::create(&layout, "hull/z2", &limits).unwrap();
        check(&cg, "io.bfq.weight=1000");
        assert_eq!(
            notes,
            ["swap limit not supported here (no memory.swap.max)"]
        );
        fs::remove_file(cg.paths()[0].join("io.bfq.weight")).unwrap();
        let notes = cg.set_limits(&Limits {
            io_weight: Some(1),
            ..Limits::default()
        });
        assert_eq!(
            notes.unwrap(),
            ["io weight not supported here (no io.weight)"]
        );
    }
}
