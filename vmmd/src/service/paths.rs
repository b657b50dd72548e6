//! Which host files a caller may hand to a guest.
//!
//! A microVM's `kernel`, `initrd` and `disks[].path` name host files that vmmd, as root, binds
//! into the VMM's zone (disks writable), and a zone's `filesystems[].source` host directories
//! bound into the zone: whoever names a file gets the guest to read or write it. Root and vmmd's own user may name any file; everyone else (members of `vmmd --group`)
//! only a file below a directory root listed with `vmmd --allow-path`. This module owns that
//! rule and the path resolution it needs. It never opens the files it checks, and it never
//! compares paths as strings: `/srv/vm` is not a prefix of `/srv/vm2/disk`.
//!
//! The check runs when a payload arrives; the bind happens later, at each start. That gap is
//! safe only while nobody but root can change what a path below an allow-path directory
//! names. So [`HostPathPolicy::new`] refuses allow-path directories that anyone but root can
//! write (or whose parents anyone can rename), and every check refuses a file reached through
//! a directory that anyone but root can write.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// The rule a refusal names.
pub const RULE: &str = "host paths need uid 0 or a directory listed by vmmd --allow-path";

/// An `--allow-path` directory vmmd cannot use safely.
#[derive(Debug, thiserror::Error)]
pub enum AllowPathError {
    /// The directory does not resolve.
    #[error("cannot resolve --allow-path {0}")]
    Resolve(PathBuf, #[source] std::io::Error),
    /// It is a file or something else.
    #[error("--allow-path {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Someone other than root could swap files in it, or it for another directory.
    #[error(
        "--allow-path {dir}: {at} is {why}; every directory from / down to an --allow-path \
         directory must be writable by root only, or a group member could swap a checked file \
         for another before vmmd uses it"
    )]
    Unsafe {
        /// The directory as given.
        dir: PathBuf,
        /// The directory (it or a parent) that others can change.
        at: PathBuf,
        /// Who can change it.
        why: String,
    },
}

/// Why one host path was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Only root may name host paths on this vmmd.
    #[error("vmmd was started without --allow-path, so only root may name host files")]
    NoAllowPath,
    /// A relative path names whatever vmmd's working directory holds.
    #[error("{0:?} is not an absolute path")]
    NotAbsolute(String),
    /// The path (after `.` and `..`) is not below an allow-path directory.
    #[error("{0:?} is not below an --allow-path directory")]
    Outside(String),
    /// The path does not exist (or a directory on the way cannot be searched).
    #[error("{0:?} does not exist or cannot be resolved")]
    Unresolvable(String, #[source] std::io::Error),
    /// A symlink on the way leads out of the allow-path directories.
    #[error("{0:?} resolves (through a symlink) to a file outside the --allow-path directories")]
    ResolvesOutside(String),
    /// A directory between the allow-path directory and the file is not root's alone.
    #[error("{path:?} lies in {dir}, which is {why}")]
    UnsafeDir {
        /// The path as given.
        path: String,
        /// The directory others can change.
        dir: PathBuf,
        /// Who can change it.
        why: String,
    },
    /// A directory on the way cannot be examined.
    #[error("cannot examine {0}")]
    Stat(PathBuf, #[source] std::io::Error),
}

/// A payload names a host path its caller may not use.
#[derive(Debug, thiserror::Error)]
#[error("{property}: {RULE}")]
pub struct HostPathError {
    /// The payload property (`disks.0.path`, `kernel`).
    pub property: String,
    /// Why.
    #[source]
    pub reason: Refusal,
}

#[derive(Debug)]
struct AllowDir {
    /// As root wrote it, made absolute and lexically normalised: callers may use this
    /// spelling even when it goes through a symlink.
    given: PathBuf,
    /// Fully resolved: what files must end up below.
    canonical: PathBuf,
}

/// The allow-path directories and the data root, checked once at start.
#[derive(Debug)]
pub struct HostPathPolicy {
    dirs: Vec<AllowDir>,
    /// Owners whose directories count as root's (root and vmmd's own user).
    owners: Vec<u32>,
    /// Where hull makes guests' disks (`<data_root>/guests/<uuid>/`); canonical.
    guests: PathBuf,
}

impl HostPathPolicy {
    /// Resolves and checks `dirs`. `owners` are the uids trusted to own directories (root,
    /// and vmmd's own user); `data_root` must be canonical.
    pub fn new(
        dirs: &[PathBuf],
        owners: &[u32],
        data_root: &Path,
    ) -> Result<HostPathPolicy, AllowPathError> {
        let mut out = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let canonical =
                std::fs::canonicalize(dir).map_err(|e| AllowPathError::Resolve(dir.clone(), e))?;
            let meta = std::fs::metadata(&canonical)
                .map_err(|e| AllowPathError::Resolve(dir.clone(), e))?;
            if !meta.is_dir() {
                return Err(AllowPathError::NotADirectory(dir.clone()));
            }
            // The directory itself must be root's alone. Its parents may be sticky (/tmp):
            // others can then add entries but not rename or remove root's directory.
            for (i, at) in canonical.ancestors().enumerate() {
                let meta =
                    std::fs::metadata(at).map_err(|e| AllowPathError::Resolve(at.into(), e))?;
                if let Some(why) = not_roots_alone(&meta, owners, i > 0) {
                    return Err(AllowPathError::Unsafe {
                        dir: dir.clone(),
                        at: at.to_path_buf(),
                        why,
                    });
                }
            }
            let given = std::path::absolute(dir)
                .ok()
                .and_then(|p| normalise(&p))
                .unwrap_or_else(|| canonical.clone());
            out.push(AllowDir { given, canonical });
        }
        Ok(HostPathPolicy {
            dirs: out,
            owners: owners.to_vec(),
            guests: data_root.join("guests"),
        })
    }

    /// The allow-path directories, resolved.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|d| d.canonical.as_path())
    }

    /// Whether a caller limited to the allow-path directories may name `path`.
    pub fn check_path(&self, path: &str) -> Result<(), Refusal> {
        if self.dirs.is_empty() {
            return Err(Refusal::NoAllowPath);
        }
        let given = Path::new(path);
        // Before touching the filesystem, the path as written must be below an allow-path
        // directory: resolving it first would tell callers which files exist anywhere.
        let lexical = normalise(given).ok_or_else(|| Refusal::NotAbsolute(path.into()))?;
        if !self
            .dirs
            .iter()
            .any(|d| below(&lexical, &d.given) || below(&lexical, &d.canonical))
        {
            return Err(Refusal::Outside(path.into()));
        }
        // Then where it really leads: symlinks and `..` after one are resolved here.
        let real =
            std::fs::canonicalize(given).map_err(|e| Refusal::Unresolvable(path.into(), e))?;
        let Some(dir) = self.dirs.iter().find(|d| below(&real, &d.canonical)) else {
            return Err(Refusal::ResolvesOutside(path.into()));
        };
        // Every directory from the allow-path directory down to the file must be root's alone,
        // or its owner could swap the file after this check.
        for at in real.ancestors().skip(1) {
            if !at.starts_with(&dir.canonical) {
                break;
            }
            let meta = std::fs::metadata(at).map_err(|e| Refusal::Stat(at.into(), e))?;
            if let Some(why) = not_roots_alone(&meta, &self.owners, false) {
                return Err(Refusal::UnsafeDir {
                    path: path.into(),
                    dir: at.to_path_buf(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// Checks every host path a create payload names.
    pub fn check_create(&self, payload: &Value) -> Result<(), HostPathError> {
        let mut paths = Vec::new();
        boot_files(payload, &mut paths);
        disk_paths(payload, "disks", &mut paths);
        filesystem_sources(payload, &mut paths);
        // A bundle's root is bound writable into the zone.
        if let Some(p) = payload.get("oci_bundle").and_then(Value::as_str) {
            paths.push(("oci_bundle".to_string(), p));
        }
        self.check_all(paths)
    }

    /// Checks every host path an update payload names. `update_disks[].path` only finds one
    /// of the guest's own disks, so a disk hull made (in the data root) needs no check; one
    /// root brought from elsewhere does, since an update can make it writable.
    pub fn check_update(&self, payload: &Value) -> Result<(), HostPathError> {
        let mut paths = Vec::new();
        boot_files(payload, &mut paths);
        disk_paths(payload, "add_disks", &mut paths);
        let mut updated = Vec::new();
        disk_paths(payload, "update_disks", &mut updated);
        paths.extend(updated.into_iter().filter(|(_, p)| !self.made_by_hull(p)));
        self.check_all(paths)
    }

    fn check_all(&self, paths: Vec<(String, &str)>) -> Result<(), HostPathError> {
        for (property, path) in paths {
            self.check_path(path)
                .map_err(|reason| HostPathError { property, reason })?;
        }
        Ok(())
    }

    /// A disk path hull assigns: below `<data_root>/guests/`, with no `..` to climb out.
    fn made_by_hull(&self, path: &str) -> bool {
        let p = Path::new(path);
        p.is_absolute()
            && !p.components().any(|c| c == Component::ParentDir)
            && below(p, &self.guests)
    }
}

/// `kernel` and `initrd`, when they are strings (anything else is validation's business).
fn boot_files<'a>(payload: &'a Value, out: &mut Vec<(String, &'a str)>) {
    for key in ["kernel", "initrd"] {
        if let Some(p) = payload.get(key).and_then(Value::as_str) {
            out.push((key.to_string(), p));
        }
    }
}

/// `filesystems.N.source`: host directories bound into a zone. A uuid names a volume of the
/// zone's own, which its create makes: no host path.
fn filesystem_sources<'a>(payload: &'a Value, out: &mut Vec<(String, &'a str)>) {
    let Some(list) = payload.get("filesystems").and_then(Value::as_array) else {
        return;
    };
    for (i, f) in list.iter().enumerate() {
        if let Some(p) = f
            .get("source")
            .and_then(Value::as_str)
            .filter(|s| !hull_spec::validate::is_uuid(s))
        {
            out.push((format!("filesystems.{i}.source"), p));
        }
    }
}

/// `<list>.N.path` of each disk entry that has a string path.
fn disk_paths<'a>(payload: &'a Value, list: &str, out: &mut Vec<(String, &'a str)>) {
    let Some(disks) = payload.get(list).and_then(Value::as_array) else {
        return;
    };
    for (i, d) in disks.iter().enumerate() {
        if let Some(p) = d.get("path").and_then(Value::as_str) {
            out.push((format!("{list}.{i}.path"), p));
        }
    }
}

/// Strictly below `dir`, by whole components.
fn below(path: &Path, dir: &Path) -> bool {
    path != dir && path.starts_with(dir)
}

/// An absolute path with `.` dropped and `..` applied, without looking at the filesystem
/// (None for a relative path). Only a pre-filter: symlinks are resolved afterwards.
fn normalise(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Who besides root (and vmmd's own user) can change entries in this directory, if anyone.
/// A sticky directory counts as safe when `sticky_ok`: others can add entries to it but not
/// rename or remove root's.
fn not_roots_alone(meta: &std::fs::Metadata, owners: &[u32], sticky_ok: bool) -> Option<String> {
    let mode = meta.mode();
    if !owners.contains(&meta.uid()) {
        return Some(format!("owned by uid {}", meta.uid()));
    }
    if mode & 0o022 == 0 || (sticky_ok && mode & 0o1000 != 0) {
        return None;
    }
    Some(format!(
        "writable by its {} (mode {:o})",
        if mode & 0o020 != 0 { "group" } else { "others" },
        mode & 0o7777
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use serde_json::json;

    use super::*;

    fn owners() -> Vec<u32> {
        vec![0, nix::unistd::geteuid().as_raw()]
    }

    fn mkdir(p: &Path, mode: u32) {
        std::fs::create_dir_all(p).expect("mkdir");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A tempdir with `allow/` (0755) holding a file, a subdir, a symlink out and one in.
    fn fixture() -> (tempfile::TempDir, PathBuf, HostPathPolicy) {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let allow = t.path().join("allow");
        mkdir(&allow, 0o755);
        std::fs::write(allow.join("disk.img"), b"disk").expect("file");
        mkdir(&allow.join("sub"), 0o755);
        std::fs::write(allow.join("sub/kernel"), b"k").expect("file");
        std::fs::write(t.path().join("secret"), b"s").expect("file");
        symlink(t.path().join("secret"), allow.join("out")).expect("symlink");
        symlink(allow.join("disk.img"), allow.join("in")).expect("symlink");
        let policy = HostPathPolicy::new(
            std::slice::from_ref(&allow),
            &owners(),
            &t.path().join("data"),
        )
        .expect("policy");
        (t, allow, policy)
    }

    fn s(p: &Path) -> String {
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn files_below_an_allow_path_directory_pass() {
        let (_t, allow, p) = fixture();
        p.check_path(&s(&allow.join("disk.img"))).expect("file");
        p.check_path(&s(&allow.join("sub/kernel")))
            .expect("nested file");
        p.check_path(&s(&allow.join("in")))
            .expect("symlink that stays inside");
        p.check_path(&s(&allow.join("sub/../disk.img")))
            .expect("`..` that stays inside");
    }

    #[test]
    fn paths_leading_out_are_refused() {
        let (t, allow, p) = fixture();
        let secret = s(&t.path().join("secret"));
        assert!(matches!(p.check_path(&secret), Err(Refusal::Outside(_))));
        assert!(matches!(
            p.check_path(&s(&allow.join("out"))),
            Err(Refusal::ResolvesOutside(_))
        ));
        assert!(matches!(
            p.check_path(&format!("{}/../secret", allow.display())),
            Err(Refusal::Outside(_))
        ));
        // `..` after a symlink climbs from the symlink's target, not from allow/: only
        // resolving the path tells.
        symlink("/", allow.join("root")).expect("symlink");
        assert!(matches!(
            p.check_path(&format!("{}/root/etc/../etc/passwd", allow.display())),
            Err(Refusal::ResolvesOutside(_))
        ));
        assert!(matches!(p.check_path(&s(&allow)), Err(Refusal::Outside(_))));
        assert!(matches!(
            p.check_path("allow/disk.img"),
            Err(Refusal::NotAbsolute(_))
        ));
        assert!(matches!(
            p.check_path(&s(&allow.join("missing"))),
            Err(Refusal::Unresolvable(..))
        ));
    }

    #[test]
    fn a_string_prefix_is_not_a_parent() {
        let (t, _allow, p) = fixture();
        let sibling = t.path().join("allow2");
        mkdir(&sibling, 0o755);
        std::fs::write(sibling.join("disk.img"), b"d").expect("file");
        assert!(matches!(
            p.check_path(&s(&sibling.join("disk.img"))),
            Err(Refusal::Outside(_))
        ));
    }

    #[test]
    fn without_allow_paths_nothing_passes() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = HostPathPolicy::new(&[], &owners(), t.path()).expect("policy");
        assert!(matches!(
            p.check_path("/etc/passwd"),
            Err(Refusal::NoAllowPath)
        ));
    }

    #[test]
    fn writable_directories_are_refused() {
        let (_t, allow, p) = fixture();
        let open = allow.join("open");
        mkdir(&open, 0o777);
        std::fs::write(open.join("disk.img"), b"d").expect("file");
        assert!(matches!(
            p.check_path(&s(&open.join("disk.img"))),
            Err(Refusal::UnsafeDir { .. })
        ));
        // At start, the allow-path directory itself...
        let e = HostPathPolicy::new(std::slice::from_ref(&open), &owners(), Path::new("/d"))
            .expect_err("a 0777 directory");
        assert!(matches!(e, AllowPathError::Unsafe { .. }), "{e}");
        assert!(e.to_string().contains("writable by root only"), "{e}");
        // ...and a non-sticky writable parent.
        let inner = open.join("inner");
        mkdir(&inner, 0o755);
        assert!(matches!(
            HostPathPolicy::new(&[inner], &owners(), Path::new("/d")),
            Err(AllowPathError::Unsafe { .. })
        ));
        // A file is not a directory; a missing directory does not resolve.
        assert!(matches!(
            HostPathPolicy::new(&[allow.join("disk.img")], &owners(), Path::new("/d")),
            Err(AllowPathError::NotADirectory(_))
        ));
        assert!(matches!(
            HostPathPolicy::new(&[allow.join("none")], &owners(), Path::new("/d")),
            Err(AllowPathError::Resolve(..))
        ));
    }

    #[test]
    fn an_allow_path_may_be_spelled_through_a_symlink() {
        let (t, allow, _p) = fixture();
        let alias = t.path().join("alias");
        symlink(&allow, &alias).expect("symlink");
        let p = HostPathPolicy::new(std::slice::from_ref(&alias), &owners(), Path::new("/d"))
            .expect("policy");
        p.check_path(&s(&alias.join("disk.img")))
            .expect("given spelling");
        p.check_path(&s(&allow.join("disk.img")))
            .expect("resolved spelling");
        assert!(matches!(
            p.check_path(&s(&alias.join("out"))),
            Err(Refusal::ResolvesOutside(_))
        ));
    }

    #[test]
    fn payloads_name_the_refused_property() {
        let (_t, allow, p) = fixture();
        let ok = s(&allow.join("disk.img"));
        let e = p
            .check_create(&json!({"brand": "kvm", "kernel": ok,
                "disks": [{"path": ok}, {"size": 10}, {"path": "/etc/shadow"}]}))
            .expect_err("disks.2.path");
        assert_eq!(e.property, "disks.2.path");
        assert_eq!(
            e.to_string(),
            format!("disks.2.path: {RULE}"),
            "the message names the property and the rule"
        );
        let e = p
            .check_create(&json!({"initrd": "/etc/shadow"}))
            .expect_err("initrd");
        assert_eq!(e.property, "initrd");
        p.check_create(&json!({"brand": "kvm", "kernel": ok, "disks": [{"size": 10}]}))
            .expect("allowed");
        // A zone's lofs binds are host paths too.
        let e = p
            .check_create(&json!({"brand": "joyent", "filesystems": [
                {"type": "lofs", "source": s(&allow.join("sub")), "target": "/a"},
                {"type": "lofs", "source": "/etc", "target": "/b"}]}))
            .expect_err("filesystems.1.source");
        assert_eq!(e.property, "filesystems.1.source");
        let e = p
            .check_create(&json!({"brand": "lx", "oci_bundle": "/etc"}))
            .expect_err("oci_bundle");
        assert_eq!(e.property, "oci_bundle");
        // A volume's uuid is no host path: anyone may name one.
        p.check_create(&json!({"brand": "joyent", "filesystems": [
            {"type": "lofs", "source": "5b1d3a0e-2c4f-4e6a-8b9c-0d1e2f3a4b5c", "target": "/v"}]}))
            .expect("a volume");
        // Non-strings are left to validation (422), which names them itself.
        p.check_create(&json!({"kernel": 7, "disks": [{"path": null}]}))
            .expect("not paths");
    }

    #[test]
    fn updates_check_added_and_brought_disks_but_not_hull_made_ones() {
        let (t, _allow, p) = fixture();
        let e = p
            .check_update(&json!({"add_disks": [{"size": 1}, {"path": "/dev/sda"}]}))
            .expect_err("add_disks");
        assert_eq!(e.property, "add_disks.1.path");
        let e = p
            .check_update(&json!({"kernel": "/boot/vmlinuz"}))
            .expect_err("kernel");
        assert_eq!(e.property, "kernel");
        let own = t.path().join("data/guests/8b1e/disk0.img");
        p.check_update(&json!({"update_disks": [{"path": s(&own), "size": 20}]}))
            .expect("a disk hull made");
        let climb = format!("{}/data/guests/../../secret", t.path().display());
        let e = p
            .check_update(&json!({"update_disks": [{"path": climb, "read_only": false}]}))
            .expect_err("`..` out of the data root");
        assert_eq!(e.property, "update_disks.0.path");
        let e = p
            .check_update(&json!({"update_disks": [{"path": "/dev/sdb", "read_only": false}]}))
            .expect_err("a disk root brought");
        assert_eq!(e.property, "update_disks.0.path");
    }
}
