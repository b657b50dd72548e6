//! Cgroup v1, alone or in the hybrid layout: one directory per mounted hierarchy, each
//! holding some of the controllers, a cgroup killed by freezing it and signalling each
//! process, and a spare cgroup renamed into a zone's. This module never uses the cpuset
//! hierarchy (see [`CONTROLLERS`]) and never touches the hybrid layout's cgroup2 mount.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{
    CPU_PERIOD_US, Cgroup, CgroupError, Dir, Limits, Version, cpu_quota_us, read, rmdir_retry,
};
use hull_sys::IoError;

/// The v1 controllers hull uses; cpuset is left out on purpose (an empty cpuset refuses tasks).
pub(super) const CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "memory", "pids", "freezer", "blkio"];

/// The cgroup v1 side of [`Version`].
#[derive(Debug)]
pub(super) struct V1;

impl Version for V1 {
    fn dir<'a>(&self, dirs: &'a [Dir], controller: &str) -> Option<&'a Path> {
        let has = |d: &&Dir| d.controllers.iter().any(|c| c == controller);
        dirs.iter().find(has).map(|d| d.path.as_path())
    }

    fn before_mkdir(&self, _parent: &Path) -> Result<(), CgroupError> {
        Ok(())
    }

    fn set_limits(&self, cg: &Cgroup, limits: &Limits) -> Result<Vec<String>, CgroupError> {
        let mut notes = Vec::new();
        let quota = cpu_quota_us(limits);
        let shares = limits.cpu_shares.map(|s| s.clamp(2, 262_144));
        let (io, lwps) = (limits.io_weight, limits.max_lwps);
        set_memory(cg, limits, &mut notes)?;
        let period = quota.map(|_| CPU_PERIOD_US);
        cg.put(
            "cpu",
            "cpu.cfs_period_us",
            period,
            &CPU_PERIOD_US.to_string(),
        )?;
        cg.put("cpu", "cpu.cfs_quota_us", quota, "-1")?;
        cg.put("cpu", "cpu.shares", shares, "1024")?;
        cg.put("pids", "pids.max", lwps, "max")?;
        let weight = io.map_or(500, |w| w.clamp(10, 1000)).to_string();
        let bfq = io.map_or(100, |w| w.clamp(1, 1000)).to_string();
        if !cg.offer("blkio", "blkio.weight", &weight)?
            && !cg.offer("blkio", "blkio.bfq.weight", &bfq)?
            && io.is_some()
        {
            notes.push("io weight not supported here (no blkio.weight)".to_owned());
        }
        Ok(notes)
    }

    fn kill(&self, _cg: &Cgroup) -> Result<bool, CgroupError> {
        Ok(false)
    }

    fn freeze(&self, cg: &Cgroup, frozen: bool) -> Result<bool, CgroupError> {
        let state = if frozen { "FROZEN" } else { "THAWED" };
        let can = cg.offer("freezer", "freezer.state", state)?;
        if can && frozen {
            let path = cg
                .dir("freezer")
                .map(|d| d.join("freezer.state"))
                .unwrap_or_default();
            // FREEZING can last while a task sleeps uninterruptibly; SIGKILL goes on anyway.
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline && read(&path).is_ok_and(|s| s.trim() != "FROZEN") {
                sleep(Duration::from_millis(5));
            }
        }
        Ok(can)
    }

    fn oom_kills(&self, cg: &Cgroup) -> Option<u64> {
        cg.read_key("memory", "memory.oom_control", "oom_kill")
    }

    fn cpu_usage_ns(&self, cg: &Cgroup) -> Option<u64> {
        read(&cg.dir("cpuacct")?.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// v1 memory: the RAM+swap limit may never be below the RAM limit, so when writing the
/// RAM limit first fails, the RAM+swap limit is written first instead.
fn set_memory(cg: &Cgroup, limits: &Limits, notes: &mut Vec<String>) -> Result<(), CgroupError> {
    const LIMIT: &str = "memory.limit_in_bytes";
    const MEMSW: &str = "memory.memsw.limit_in_bytes";
    let limit = limits.memory_bytes.or(limits.swap_bytes);
    let memsw = limits.swap_bytes.map(|s| s.max(limit.unwrap_or(0)));
    if !cg.dir("memory").is_some_and(|d| d.join(MEMSW).exists()) {
        cg.put("memory", LIMIT, limit, "-1")?;
        if memsw.is_some() {
            notes.push(format!("swap limit not supported here (no {MEMSW})"));
        }
    } else if cg.put("memory", LIMIT, limit, "-1").is_ok() {
        cg.put("memory", MEMSW, memsw, "-1")?;
    } else {
        cg.put("memory", MEMSW, memsw, "-1")?;
        cg.put("memory", LIMIT, limit, "-1")?;
    }
    Ok(())
}

/// Renames the cgroup `from` to `to` in every hierarchy, removing a leftover empty `to`
/// first, then applies `limits` to it (see [`Cgroup::adopt`]). On error every directory
/// renamed so far is renamed back.
pub(super) fn adopt(
    from: &Cgroup,
    to: &Cgroup,
    limits: &Limits,
) -> Result<Vec<String>, CgroupError> {
    let mut renamed: Vec<(&Path, &Path)> = Vec::new();
    let undo = |renamed: &[(&Path, &Path)]| {
        for (a, b) in renamed.iter().rev() {
            let _ = fs::rename(b, a);
        }
    };
    for (f, t) in from.dirs.iter().zip(&to.dirs) {
        let moved = rmdir_retry(&t.path).and_then(|()| {
            fs::rename(&f.path, &t.path).map_err(|e| IoError::new("rename", &f.path, e).into())
        });
        if let Err(e) = moved {
            undo(&renamed);
            return Err(e);
        }
        renamed.push((&f.path, &t.path));
    }
    to.set_limits(limits).inspect_err(|_| undo(&renamed))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fs;

    use super::super::tests::{check, fake};
    use super::super::{Cgroup, Layout, Limits};

    #[test]
    fn v1_create_writes_every_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().display();
        let mut text = format!("1 0 0:1 / {root}/unified rw - cgroup2 cgroup2 rw\n");
        for (i, ctl) in ["cpu,cpuacct", "memory", "pids", "freezer", "blkio"]
            .iter()
            .enumerate()
        {
            text += &format!("{i} 0 0:{i} / {root}/{ctl} rw - cgroup cgroup rw,{ctl}\n");
            fake(&tmp.path().join(ctl).join("zone"), "");
        }
        let layout = Layout::detect_at(&text).unwrap();
        assert_eq!(layout.name(), "hybrid");
        let cg = Cgroup::open(&layout, "zone").unwrap();
        let [cpu, memory, pids, _, blkio] = &cg.paths()[..] else {
            panic!("{cg:?}")
        };
        fake(
            cpu,
            "cpu.cfs_period_us=;cpu.cfs_quota_us=;cpu.shares=;cpuacct.usage=777\n",
        );
        let oom = "memory.oom_control=under_oom 0\noom_kill 4\n";
        fake(
            memory,
            &format!("memory.limit_in_bytes=;memory.memsw.limit_in_bytes=;{oom}"),
        );
        fake(pids, "pids.max=");
        fake(blkio, "blkio.weight=");
        let limits = Limits {
            memory_bytes: Some(1000),
            swap_bytes: Some(500),
            cpu_cap_pct: Some(250),
            cpu_shares: Some(1),
            max_lwps: Some(9),
            io_weight: Some(1),
        };
        let (cg, notes) = Cgroup::create(&layout, "zone", &limits).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        let memsw = "memory.memsw.limit_in_bytes";
        check(
            &cg,
            &format!("memory.limit_in_bytes=1000;{memsw}=1000;pids.max=9"),
        );
        check(
            &cg,
            "cpu.cfs_period_us=100000;cpu.cfs_quota_us=250000;cpu.shares=2;blkio.weight=10",
        );
        assert_eq!((cg.oom_kills(), cg.cpu_usage_ns()), (4, Some(777)));

        // Memory unset but swap set: RAM+swap bounds RAM too; without memsw there is a note.
        let swap_only = Limits {
            swap_bytes: Some(64),
            ..Limits::default()
        };
        assert!(cg.set_limits(&swap_only).unwrap().is_empty());
        check(
            &cg,
            &format!("memory.limit_in_bytes=64;{memsw}=64;pids.max=max;blkio.weight=500"),
        );
        check(&cg, "cpu.cfs_quota_us=-1;cpu.shares=1024");
        fs::remove_file(memory.join(memsw)).unwrap();
        let notes = cg.set_limits(&swap_only).unwrap();
        assert_eq!(
            notes,
            [format!("swap limit not supported here (no {memsw})")]
        );
    }
}
