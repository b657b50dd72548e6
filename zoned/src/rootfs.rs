//! The zone's filesystem view. zoned mounts the root in a mount namespace of its own (so a
//! killed zoned can never leave a mount on the host) and id-maps it to the zone's user
//! namespace: files owned by 0 on disk belong to the zone's root, whose host uid is an
//! unprivileged one. The zone's init process then mounts /proc, /sys and a minimal /dev on
//! it, masks what a zone must not see, and pivots into it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, mkdirat};

use crate::config::{ID_RANGE, RootFile, RootIds, RootSpec};

/// A failed filesystem step, naming the path and what was attempted; the OS error is the
/// source.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct MountError {
    pub action: String,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn err(action: impl Into<String>, path: &Path) -> impl FnOnce(nix::Error) -> MountError {
    let action = action.into();
    let path = path.to_owned();
    move |e| MountError {
        action,
        path,
        source: e.into(),
    }
}

fn io_err(action: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> MountError {
    let action = action.into();
    let path = path.to_owned();
    move |source| MountError {
        action,
        path,
        source,
    }
}

fn last(action: &str, path: &Path) -> MountError {
    MountError {
        action: action.to_owned(),
        path: path.to_owned(),
        source: std::io::Error::last_os_error(),
    }
}

fn cstr(path: &Path) -> Result<CString, MountError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError {
        action: "use a path holding a NUL byte".into(),
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// Gives the calling process a private mount namespace: nothing it mounts reaches the host.
pub fn private_mount_namespace() -> Result<(), MountError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(err("unshare the mount namespace for", Path::new("/")))?;
    make_private(Path::new("/"))
}

fn make_private(path: &Path) -> Result<(), MountError> {
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err("make mounts private under", path))
}

/// Creates a user namespace mapping zone ids 0..[`ID_RANGE`] to `base..`, and returns a
/// descriptor that keeps it alive. A short-lived child makes it; the host root writes the
/// maps.
pub fn make_user_namespace(base: u32) -> Result<OwnedFd, MountError> {
    let proc_self = Path::new("/proc/self/ns/user");
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(err("make a pipe for", proc_self))?;
    let (hold_r, hold_w) = nix::unistd::pipe().map_err(err("make a pipe for", proc_self))?;
    // SAFETY: zoned is single-threaded; the child only makes raw syscalls and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last("fork the user namespace maker for", proc_self));
    }
    if pid == 0 {
        // SAFETY: raw syscalls on descriptors this child owns, then _exit.
        unsafe {
            libc::close(hold_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            let b = [u8::from(ok)];
            libc::write(ready_w.as_raw_fd(), b.as_ptr().cast(), 1);
            let mut x = [0u8; 1];
            libc::read(hold_r.as_raw_fd(), x.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(hold_r);
    let result = (|| {
        let mut b = [0u8; 1];
        let n = nix::unistd::read(&ready_r, &mut b).map_err(err("wait for", proc_self))?;
        let ns_path = PathBuf::from(format!("/proc/{pid}/ns/user"));
        if n != 1 || b[0] != 1 {
            return Err(MountError {
                action: "create a user namespace (unshare CLONE_NEWUSER) at".into(),
                path: ns_path,
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
        write_id_maps(pid, base)?;
        let f = std::fs::File::open(&ns_path).map_err(io_err("open", &ns_path))?;
        Ok(OwnedFd::from(f))
    })();
    drop(hold_w);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    result
}

/// Maps zone ids 0..[`ID_RANGE`] to host ids `base..` in the user namespace of `pid` (just
/// created, maps not yet written).
pub fn write_id_maps(pid: i32, base: u32) -> Result<(), MountError> {
    for map in ["uid_map", "gid_map"] {
        let p = PathBuf::from(format!("/proc/{pid}/{map}"));
        std::fs::write(&p, format!("0 {base} {ID_RANGE}\n"))
            .map_err(io_err("write the zone's id map to", &p))?;
    }
    Ok(())
}

/// Mounts the zone's root at `rootfs`, id-mapped to the zone's user namespace (nosuid,
/// nodev), inside the caller's private mount namespace.
///
/// A directory root is an id-mapped bind mount: the zone's writes land on disk with the
/// ids they have in the zone. An overlay cannot be id-mapped as a whole, so its image layer
/// is (at `base`), and the zone's upper layer keeps the host ids of the zone's range: its
/// root directory is handed to the zone's root here, which is why a zone keeps its id range
/// for as long as it exists.
pub fn mount_root(
    spec: &RootSpec,
    base: &Path,
    rootfs: &Path,
    userns: &OwnedFd,
    id_base: u32,
    ids: RootIds,
    shifted_marker: &Path,
) -> Result<RootIds, MountError> {
    for d in [base, rootfs] {
        std::fs::create_dir_all(d).map_err(io_err("create", d))?;
    }
    if let RootSpec::Vmm { files } = spec {
        mount_vmm_root(files, rootfs, userns, id_base)?;
        return Ok(RootIds::Idmap);
    }
    // A zone shifted once stays shifted: id-mapping its files again would shift them twice.
    let ids = match shifted_marker.exists() {
        true => RootIds::Shift,
        false => ids,
    };
    if ids != RootIds::Shift {
        match mount_idmapped(spec, base, rootfs, userns, id_base) {
            Ok(()) => return Ok(RootIds::Idmap),
            Err(e) if ids == RootIds::Auto && idmap_unsupported(&e) => {
                let e = hull_sys::chain(&e);
                eprintln!("zoned: {e}; shifting the zone's files into its id range instead");
            }
            Err(e) => return Err(e),
        }
    }
    // The marker first: a shift cut short is finished by the next start, never id-mapped.
    std::fs::write(shifted_marker, format!("{id_base}\n"))
        .map_err(io_err("write", shifted_marker))?;
    mount_shifted(spec, rootfs, id_base)?;
    Ok(RootIds::Shift)
}

/// Whether a failed id-mapped mount means the kernel or file system lacks them.
fn idmap_unsupported(e: &MountError) -> bool {
    matches!(
        e.source.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM)
    )
}

fn mount_idmapped(
    spec: &RootSpec,
    base: &Path,
    rootfs: &Path,
    userns: &OwnedFd,
    id_base: u32,
) -> Result<(), MountError> {
    match spec {
        RootSpec::Bind { dir } => idmap_clone(dir, rootfs, userns),
        RootSpec::Vmm { .. } => unreachable!("mount_root mounts a VMM root itself"),
        RootSpec::Overlay { lower, upper, work } => {
            idmap_clone(lower, base, userns)?;
            shift_relative_upper(upper, id_base)?;
            hand_upper(upper, id_base)?;
            let r = mount_overlay(base, upper, work, rootfs, "");
            // The overlay holds its own reference to the id-mapped layer.
            let _ = umount2(base, MntFlags::MNT_DETACH);
            r
        }
    }
}

/// The root without an id map, its files shifted into the zone's range: a directory root
/// (the zone's own snapshot or reflinked tree) is shifted in place and bound; an overlay
/// root is mounted with `metacopy=on` over the image and shifted through the overlay, which
/// copies up only the metadata of the image's files (the image itself is untouched).
fn mount_shifted(spec: &RootSpec, rootfs: &Path, id_base: u32) -> Result<(), MountError> {
    match spec {
        RootSpec::Vmm { .. } => unreachable!("mount_root mounts a VMM root itself"),
        RootSpec::Bind { dir } => {
            shift_tree(dir, id_base)?;
            mount(
                Some(dir),
                rootfs,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(err("bind the zone's root on", rootfs))?;
            let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
            mount(
                None::<&str>,
                rootfs,
                None::<&str>,
                flags | MsFlags::MS_NODEV,
                None::<&str>,
            )
            .map_err(err("make nosuid,nodev the zone's root", rootfs))
        }
        RootSpec::Overlay { lower, upper, work } => {
            let relative = relative_ids_marker(upper).exists();
            hand_upper(upper, id_base)?;
            mount_overlay(lower, upper, work, rootfs, ",metacopy=on")?;
            shift_tree(rootfs, id_base).inspect_err(|_| {
                let _ = umount2(rootfs, MntFlags::MNT_DETACH);
            })?;
            // The shift through the overlay covered the upper layer's zone-relative files;
            // its snapshots are shifted alike.
            if relative {
                shift_snapshots(upper, id_base)?;
            }
            remove_marker(&relative_ids_marker(upper))
        }
    }
}

/// Beside an overlay root's upper layer (`<guest>/upper.ids-relative`): the layer's files
/// carry the zone's own ids (0 for its root), not yet shifted into its host range: a root
/// vmmd received from another host, before its first start here.
pub fn relative_ids_marker(upper: &Path) -> PathBuf {
    upper.with_extension("ids-relative")
}

/// Shifts a marked upper layer's zone-relative ids into the zone's range (the upper layer
/// is not id-mapped: the zone's writes land there as host ids `id_base + id`), then drops
/// the marker. A shift cut short is finished by the next start ([`shift_tree`] skips ids
/// already in a range).
fn shift_relative_upper(upper: &Path, id_base: u32) -> Result<(), MountError> {
    let marker = relative_ids_marker(upper);
    if !marker.exists() {
        return Ok(());
    }
    shift_tree(upper, id_base)?;
    shift_snapshots(upper, id_base)?;
    remove_marker(&marker)
}

/// The snapshots of a marked upper layer (`<guest>/snapshots/*`, copies of the layer) were
/// taken with its zone-relative ids: shifted with it, so a rollback after this start puts
/// back files the zone can own. Snapshots taken later hold ids of the range already, which
/// [`shift_tree`] leaves alone.
fn shift_snapshots(upper: &Path, id_base: u32) -> Result<(), MountError> {
    let dir = upper.with_file_name("snapshots");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry.map_err(io_err("list", &dir))?.path();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            shift_tree(&path, id_base)?;
        }
    }
    Ok(())
}

fn remove_marker(marker: &Path) -> Result<(), MountError> {
    match std::fs::remove_file(marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", marker)(e)),
        _ => Ok(()),
    }
}

/// The zone's upper layer belongs to the zone's root (host uid `id_base`).
fn hand_upper(upper: &Path, id_base: u32) -> Result<(), MountError> {
    let owner = Some(nix::unistd::Uid::from_raw(id_base));
    let group = Some(nix::unistd::Gid::from_raw(id_base));
    nix::unistd::chown(upper, owner, group).map_err(err("hand to the zone's root", upper))
}

fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    rootfs: &Path,
    extra: &str,
) -> Result<(), MountError> {
    let data = format!(
        "lowerdir={},upperdir={},workdir={}{extra}",
        escape(lower)?,
        escape(upper)?,
        escape(work)?
    );
    mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(err("mount the zone's overlay root on", rootfs))
}

/// Moves the owner and group of every file under `root` that are below [`ID_RANGE`] (not
/// yet shifted) to `id_base + id`, without following symlinks; keeps set-id bits, which
/// chown clears. Idempotent: ids already in a zone range stay. Runs before the zone starts,
/// so nothing in the zone can swap a directory for a symlink meanwhile.
pub fn shift_tree(root: &Path, id_base: u32) -> Result<(), MountError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shift = |id: u32| (id < ID_RANGE).then(|| id_base + id);
    let mut todo = vec![root.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
        let (uid, gid) = (shift(meta.uid()), shift(meta.gid()));
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid.or(Some(meta.uid())), gid.or(Some(meta.gid())))
                .map_err(io_err("shift the owner of", &path))?;
            let mode = meta.mode() & 0o7777;
            if meta.is_file() && mode & 0o6000 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(io_err("restore the mode of", &path))?;
            }
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io_err("list", &path))? {
                todo.push(entry.map_err(io_err("list", &path))?.path());
            }
        }
    }
    Ok(())
}

fn escape(p: &Path) -> Result<String, MountError> {
    let s = p.to_str().ok_or_else(|| MountError {
        action: "use a non-UTF-8 path as an overlay layer".into(),
        path: p.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    Ok(s.chars()
        .flat_map(|c| {
            let esc = matches!(c, ',' | ':' | '\\').then_some('\\');
            esc.into_iter().chain(std::iter::once(c))
        })
        .collect())
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Attaches an id-mapped (nosuid, nodev) clone of the tree at `base` on `rootfs`.
fn idmap_clone(base: &Path, rootfs: &Path, userns: &OwnedFd) -> Result<(), MountError> {
    idmap_clone_with(base, rootfs, userns, 0)
}

/// [`idmap_clone`] with more `MOUNT_ATTR_*` flags set on the clone (e.g. read-only). `base`
/// may be a file, and `rootfs` then a file to mount on.
fn idmap_clone_with(
    base: &Path,
    rootfs: &Path,
    userns: &OwnedFd,
    attrs: u64,
) -> Result<(), MountError> {
    let c_base = cstr(base)?;
    let c_root = cstr(rootfs)?;
    // SAFETY: open_tree on a NUL-terminated path; a returned descriptor is owned here.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_base.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(last("clone the mount (open_tree) at", base));
    }
    // SAFETY: open_tree returned a fresh descriptor nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: mount_setattr on our detached tree with a valid, sized mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(MountError {
            action: "id-map the zone root (this kernel or filesystem may lack idmapped mounts) at"
                .into(),
            path: base.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: move_mount of our detached tree onto a NUL-terminated target path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c_root.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(last("attach the id-mapped root at", rootfs));
    }
    Ok(())
}

/// Where a microVM zone's root keeps the device nodes made for it until its init binds them
/// on /dev (and hides this directory).
const VMM_DEVICES: &str = ".hull-dev";
/// The KVM device: `/dev/kvm`, character 10:232.
const KVM: (&str, u64, u64) = ("kvm", 10, 232);
/// The kernel's vhost-net, which moves a NIC's frames without a VMM thread: given to the
/// zone's root like /dev/kvm when the host has it.
const VHOST_NET: &str = "vhost-net";

/// The device number of the character device at `path`, if there is one.
fn host_char_device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).ok()?;
    meta.file_type().is_char_device().then(|| meta.rdev())
}

/// The root of a microVM's zone: a small tmpfs made read-only once it holds the mount points
/// of `files`, each an id-mapped clone of its host file (read-only unless `writable`), and a
/// KVM device node of the zone's root (mode 0600), which the zone's init binds on /dev/kvm.
/// The zone's root thus owns, through the id map, exactly the files the host's root owns
/// among those handed in, and nothing else of the host is in its view.
fn mount_vmm_root(
    files: &[RootFile],
    rootfs: &Path,
    userns: &OwnedFd,
    id_base: u32,
) -> Result<(), MountError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    mount(
        Some("tmpfs"),
        rootfs,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=256k,nr_inodes=256"),
    )
    .map_err(err("mount the VMM zone's root tmpfs on", rootfs))?;
    let result = (|| {
        // zoned's umask is 077: modes are set explicitly.
        let set_mode = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(io_err("set the mode of", p))
        };
        let mut dirs = std::fs::DirBuilder::new();
        dirs.recursive(true).mode(0o755);
        for d in ["proc", "sys", "dev"] {
            let p = rootfs.join(d);
            dirs.create(&p).map_err(io_err("create", &p))?;
            set_mode(&p, 0o755)?;
        }
        for f in files {
            let rel = zone_relative(&f.at)?;
            let target = rootfs.join(&rel);
            let meta = std::fs::metadata(&f.host).map_err(io_err("use", &f.host))?;
            let mut parent = rootfs.to_path_buf();
            for part in rel.parent().into_iter().flat_map(Path::components) {
                parent.push(part);
                if !parent.is_dir() {
                    dirs.create(&parent).map_err(io_err("create", &parent))?;
                    set_mode(&parent, 0o755)?;
                }
            }
            if meta.is_dir() {
                dirs.create(&target).map_err(io_err("create", &target))?;
            } else {
                std::fs::File::create(&target).map_err(io_err("create", &target))?;
            }
            let attrs = if f.writable { 0 } else { MOUNT_ATTR_RDONLY };
            match idmap_clone_with(&f.host, &target, userns, attrs) {
                Ok(()) => {}
                Err(e) if idmap_unsupported(&e) => plain_bind(f, &target, id_base)?,
                Err(e) => return Err(e),
            }
        }
        let devs = rootfs.join(VMM_DEVICES);
        std::fs::create_dir(&devs).map_err(io_err("create", &devs))?;
        set_mode(&devs, 0o711)?;
        let (name, major, minor) = KVM;
        let mut nodes = vec![(name, nix::sys::stat::makedev(major, minor))];
        // vhost-net where the host has it (its minor is fixed, but the host's node says).
        if let Some(rdev) = host_char_device(Path::new("/dev").join(VHOST_NET).as_path()) {
            nodes.push((VHOST_NET, rdev));
        }
        for (name, rdev) in nodes {
            let node = devs.join(name);
            nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                rdev,
            )
            .map_err(err("make a device node", &node))?;
            set_mode(&node, 0o600)?;
            let owner = Some(nix::unistd::Uid::from_raw(id_base));
            let group = Some(nix::unistd::Gid::from_raw(id_base));
            nix::unistd::chown(&node, owner, group)
                .map_err(err("hand to the zone's root", &node))?;
        }
        mount(
            None::<&str>,
            rootfs,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(err("make read-only the VMM zone's root", rootfs))
    })();
    if result.is_err() {
        let _ = umount2(rootfs, MntFlags::MNT_DETACH);
    }
    result
}

/// A VMM file bound without an id map, where the file system cannot id-map mounts (tmpfs
/// before Linux 6.3, such as a live image's root): a writable one is handed to the zone's
/// root (chown: hull-made disks and runtime directories are hull's), a read-only one must
/// be readable by others (the VMM says which file it cannot read otherwise).
fn plain_bind(f: &RootFile, target: &Path, id_base: u32) -> Result<(), MountError> {
    if f.writable {
        let owner = Some(nix::unistd::Uid::from_raw(id_base));
        let group = Some(nix::unistd::Gid::from_raw(id_base));
        nix::unistd::chown(&f.host, owner, group)
            .map_err(err("hand to the zone's root", &f.host))?;
    }
    mount(
        Some(f.host.as_path()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err(format!("bind {} on", f.host.display()), target))?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !f.writable {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(err("restrict the bind at", target))
}

/// Binds host `source` (a directory or a file) read-only at `at` in the OS zone root
/// mounted at `rootfs` (the metadata socket's directory, the mdata tools). Missing
/// directories and the mount point are made as the zone's root. Runs in zoned before the
/// zone runs anything; the root is the guest's, so no component of `at` may be a symbolic
/// link (one could name any host path): such a root is refused, naming the path.
pub fn bind_into_zone(
    rootfs: &Path,
    source: &Path,
    at: &Path,
    exec: bool,
    id_base: u32,
) -> Result<(), MountError> {
    let action = format!("bind {} at", source.display());
    let source_is_dir = std::fs::metadata(source)
        .map_err(io_err("use", source))?
        .is_dir();
    let target = zone_mount_point(rootfs, at, source_is_dir, id_base, &action)?;
    // Every component of `target` was just seen to be no symbolic link, and the zone runs
    // nothing yet that could change that.
    mount(
        Some(source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err(format!("bind {} on", source.display()), &target))?;
    let mut flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if !exec {
        flags |= MsFlags::MS_NOEXEC;
    }
    mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
        .map_err(err("make read-only the bind at", &target))
}

/// Mounts the zone's extra directories ([`ZoneMount`]) and its /tmp tmpfs on the OS zone
/// root mounted at `rootfs`, in zoned's mount namespace before the zone runs anything. Each
/// is nosuid and nodev; a host directory is id-mapped into the zone's user namespace (its
/// root-owned files are the zone root's, what the zone writes lands with the ids it has
/// there), and refused where its file system cannot id-map: hull never chowns a host
/// directory. The zone's own data follows its root: id-mapped, or shifted on disk when
/// `ids` says the root was.
pub fn mount_extras(
    rootfs: &Path,
    mounts: &[crate::config::ZoneMount],
    tmpfs_mib: Option<u64>,
    tmpfs_mounts: &[crate::config::TmpfsSpec],
    userns: &OwnedFd,
    id_base: u32,
    ids: RootIds,
) -> Result<(), MountError> {
    for m in mounts {
        let action = format!("mount {} at", m.host.display());
        let meta = std::fs::metadata(&m.host).map_err(io_err("use", &m.host))?;
        // A host directory, or (not the zone's own data) a regular file such as an OCI
        // bundle's /etc/hosts.
        let is_dir = meta.is_dir();
        let bindable_file = meta.is_file() && !m.owned;
        if !is_dir && !bindable_file {
            return Err(refusal(&action, &m.host, "not a directory"));
        }
        let target = zone_mount_point(rootfs, &m.at, is_dir, id_base, &action)?;
        let ro = if m.writable { 0 } else { MOUNT_ATTR_RDONLY };
        if m.owned && ids == RootIds::Shift {
            shift_tree(&m.host, id_base)?;
            mount(
                Some(&m.host),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(err(action.clone(), &target))?;
            let mut flags =
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if !m.writable {
                flags |= MsFlags::MS_RDONLY;
            }
            mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
                .map_err(err("restrict the bind at", &target))?;
        } else {
            idmap_clone_with(&m.host, &target, userns, ro).map_err(|e| {
                if m.owned || !idmap_unsupported(&e) {
                    return e;
                }
                refusal(
                    &action,
                    &m.host,
                    "its file system cannot id-map mounts into the zone (hull binds host \
                     directories only id-mapped); use a directory on btrfs, xfs, ext4 or \
                     (Linux 6.3 on) tmpfs",
                )
            })?;
        }
    }
    for t in tmpfs_mounts {
        let action = format!("mount a tmpfs on {} in the zone at", t.at.display());
        let target = zone_mount_point(rootfs, &t.at, true, id_base, &action)?;
        let mut data = format!(
            "mode={:o},uid={id_base},gid={id_base}",
            t.mode.unwrap_or(0o1777)
        );
        if let Some(size) = t.size {
            data.push_str(&format!(",size={size}"));
        }
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if t.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            flags,
            Some(data.as_str()),
        )
        .map_err(err(action, &target))?;
    }
    if let Some(mib) = tmpfs_mib {
        let action = "mount the zone's /tmp tmpfs on";
        let target = zone_mount_point(rootfs, Path::new("/tmp"), true, id_base, action)?;
        let data = format!("size={mib}m,mode=1777,uid={id_base},gid={id_base}");
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(err(action, &target))?;
    }
    Ok(())
}

/// Where `at` is in the zone root mounted at `rootfs`, ready to mount on: an existing
/// directory (`is_dir`) or regular file, or one made as the zone's root. No component may be
/// a symbolic link (the root is the guest's: a link could name any host path).
fn zone_mount_point(
    rootfs: &Path,
    at: &Path,
    is_dir: bool,
    id_base: u32,
    action: &str,
) -> Result<PathBuf, MountError> {
    let (dir, name, target) = zone_parent(rootfs, at, id_base, action)?;
    match zone_kind(&dir, &name, &target)? {
        Some(SFlag::S_IFDIR) if is_dir => {}
        Some(SFlag::S_IFREG) if !is_dir => {}
        Some(_) => {
            let kind = if is_dir { "directory" } else { "regular file" };
            return Err(refusal(
                action,
                &target,
                &format!("not a {kind} in the zone's root"),
            ));
        }
        None => make_in_zone(&dir, &name, is_dir, id_base).map_err(io_err("create", &target))?,
    }
    Ok(target)
}

/// Writes `content` to the file `at` in the OS zone root mounted at `rootfs`, owned by the
/// zone's root (mode 0644): a cloud-init seed, say. Made as [`bind_into_zone`] makes its
/// mount points (no symbolic link followed), written to a temporary name and renamed over
/// whatever `at` was, so a link the guest left there is replaced, never followed.
pub fn write_into_zone(
    rootfs: &Path,
    at: &Path,
    content: &[u8],
    id_base: u32,
) -> Result<(), MountError> {
    let (dir, name, target) = zone_parent(rootfs, at, id_base, "write")?;
    let mut tmp = std::ffi::OsString::from(".hull-");
    tmp.push(&name);
    as_zone_root(id_base, || {
        let _ = nix::unistd::unlinkat(
            &dir,
            tmp.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            &dir,
            tmp.as_os_str(),
            flags,
            Mode::from_bits_truncate(0o644),
        )?;
        fchmod(&fd, Mode::from_bits_truncate(0o644))?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, content)?;
        nix::fcntl::renameat(&dir, tmp.as_os_str(), &dir, name.as_os_str())?;
        Ok(())
    })
    .map_err(io_err("write", &target))
}

/// The directory that will hold `at` inside the zone root (opened by descriptor, as host
/// root: the directories above the root are root's, mode 0700), making missing ones as the
/// zone's root; its last component's name; and the full host path, for errors. A symbolic
/// link on the way is refused, naming it.
fn zone_parent(
    rootfs: &Path,
    at: &Path,
    id_base: u32,
    action: &str,
) -> Result<(OwnedFd, std::ffi::OsString, PathBuf), MountError> {
    let rel = zone_relative(at)?;
    let nofollow = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_DIRECTORY;
    let mut dir = nix::fcntl::open(rootfs, nofollow, Mode::empty()).map_err(err("open", rootfs))?;
    let mut target = rootfs.to_path_buf();
    let parts: Vec<_> = rel.components().map(|c| c.as_os_str().to_owned()).collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err(refusal(
            action,
            at,
            "the place in the zone must name a file",
        ));
    };
    for part in parents {
        target.push(part);
        match zone_kind(&dir, part, &target)? {
            Some(SFlag::S_IFDIR) => {}
            Some(_) => {
                return Err(refusal(
                    action,
                    &target,
                    "not a directory in the zone's root",
                ));
            }
            None => make_in_zone(&dir, part, true, id_base).map_err(io_err("create", &target))?,
        }
        dir = openat(&dir, part.as_os_str(), nofollow, Mode::empty())
            .map_err(err("open", &target))?;
    }
    target.push(last);
    Ok((dir, last.clone(), target))
}

/// What `name` in `dir` is (None: nothing); a symbolic link is an error.
fn zone_kind(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    target: &Path,
) -> Result<Option<SFlag>, MountError> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFLNK => Err(refusal(
                "use",
                target,
                "a symbolic link in the zone's root (hull does not follow it)",
            )),
            kind => Ok(Some(kind)),
        },
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(err("look at", target)(e)),
    }
}

/// Makes directory (mode 0755) or empty file (0644) `name` in `dir`, owned by the zone's root.
fn make_in_zone(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    is_dir: bool,
    id_base: u32,
) -> std::io::Result<()> {
    as_zone_root(id_base, || {
        let made = if is_dir {
            mkdirat(dir, name, Mode::from_bits_truncate(0o755))?;
            openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?
        } else {
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            openat(dir, name, flags, Mode::from_bits_truncate(0o644))?
        };
        // zoned's umask is 077: the mode is set explicitly.
        fchmod(
            &made,
            Mode::from_bits_truncate(if is_dir { 0o755 } else { 0o644 }),
        )?;
        Ok(())
    })
}

fn refusal(action: &str, path: &Path, why: &str) -> MountError {
    MountError {
        action: action.to_string(),
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
    }
}

/// `at` as a path relative to the zone's root: it must be absolute and hold plain names only
/// (no `.`, `..` or empty components), so a mount point never lands outside the root.
fn zone_relative(at: &Path) -> Result<PathBuf, MountError> {
    use std::path::Component;
    let bad = || MountError {
        action: "bind a file at".into(),
        path: at.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the place in the zone must be an absolute path of plain names",
        ),
    };
    let mut parts = at.components();
    if parts.next() != Some(Component::RootDir) {
        return Err(bad());
    }
    let mut rel = PathBuf::new();
    for c in parts {
        match c {
            Component::Normal(n) => rel.push(n),
            _ => return Err(bad()),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(bad());
    }
    Ok(rel)
}

/// Device nodes a zone gets, bind-mounted from the host's.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Files of /proc a zone must not read; /dev/null is mounted over them. `cmdline` is the
/// host kernel's command line, which can carry secrets (the live image's `hull.rootpw=`
/// on a first boot).
const MASKED_FILES: &[&str] = &[
    "cmdline",
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "kallsyms",
    "kmsg",
];
/// Directories hidden under an empty read-only tmpfs.
const MASKED_DIRS: &[&str] = &[
    "proc/acpi",
    "proc/scsi",
    "sys/firmware",
    "sys/kernel/security",
];
/// Parts of /proc made read-only.
const READ_ONLY: &[&str] = &[
    "proc/sys",
    "proc/sysrq-trigger",
    "proc/irq",
    "proc/bus",
    "proc/fs",
];

/// Binds the zone root onto itself and makes it the working directory. Runs in the zone's
/// init with the host ids it was cloned with (the directories above the root are host
/// root's, mode 0700) and every capability in its new user namespace.
///
/// The root came from zoned's mount namespace, so here it is locked to its mount point and
/// pivot_root refuses it: the bind made here is not.
pub fn enter_root(root: &Path) -> Result<(), MountError> {
    make_private(Path::new("/"))?;
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("bind-mount the zone root onto itself at", root))?;
    nix::unistd::chdir(root).map_err(err("enter", root))
}

/// Mounts /proc, /sys (read-only), /dev (tmpfs with a few host nodes, devpts, shm) on the
/// zone root and masks the sensitive parts. Runs in the zone's init before pivot_root, as
/// the zone's root in its new user namespace, which owns the new mount, pid and net
/// namespaces (ids below are the zone's). Returns the console's pty master (from the
/// zone's own devpts), whose peer is now /dev/console.
pub fn populate(
    root: &Path,
    vmm: bool,
    masked: &[String],
    read_only: &[String],
) -> Result<OwnedFd, MountError> {
    let nosnd = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_ = root.join("proc");
    let sys = root.join("sys");
    let dev = root.join("dev");
    for d in [&proc_, &sys, &dev] {
        if !d.is_dir() {
            std::fs::create_dir(d).map_err(io_err("create", d))?;
        }
    }
    mount(Some("proc"), &proc_, Some("proc"), nosnd, None::<&str>)
        .map_err(err("mount proc on", &proc_))?;
    match mount(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        nosnd | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        Ok(()) => {}
        // The kernel lets only the owner of the network namespace mount sysfs: a zone in
        // one made outside hull (a pod's, by CNI) gets an empty read-only /sys instead, never
        // the host's.
        // (With /sys/fs/cgroup, where the zone's cgroups may be mounted.)
        Err(nix::Error::EPERM) => {
            mount(
                Some("tmpfs"),
                &sys,
                Some("tmpfs"),
                nosnd,
                Some("size=4k,mode=555"),
            )
            .map_err(err("mount an empty /sys on", &sys))?;
            let cg = sys.join("fs/cgroup");
            std::fs::create_dir_all(&cg).map_err(io_err("create", &cg))?;
            remount_read_only(&sys)?;
        }
        Err(e) => return Err(err("mount sysfs on", &sys)(e)),
    }
    let opts = "mode=755,size=65536k";
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(opts),
    )
    .map_err(err("mount tmpfs on", &dev))?;
    for name in DEVICES {
        bind_on_file(&Path::new("/dev").join(name), &dev.join(name))?;
    }
    if vmm {
        // The node zoned made in the root for the zone's root; its directory is then hidden.
        let devs = root.join(VMM_DEVICES);
        bind_on_file(&devs.join(KVM.0), &dev.join(KVM.0))?;
        if devs.join(VHOST_NET).exists() {
            bind_on_file(&devs.join(VHOST_NET), &dev.join(VHOST_NET))?;
        }
        mount(
            Some("tmpfs"),
            &devs,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0"),
        )
        .map_err(err("hide", &devs))?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(io_err("create", &pts))?;
    let tty_gid = 5;
    let opts = format!("newinstance,ptmxmode=0666,mode=0620,gid={tty_gid}");
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .map_err(err("mount devpts on", &pts))?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(io_err("create", &shm))?;
    let opts = "mode=1777,size=65536k";
    mount(Some("shm"), &shm, Some("tmpfs"), nosnd, Some(opts))
        .map_err(err("mount tmpfs on", &shm))?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(link);
        std::os::unix::fs::symlink(to, &p).map_err(io_err("create the symlink", &p))?;
    }
    if !vmm {
        // POSIX message queues of the zone's own IPC namespace, as a container has them.
        let mq = dev.join("mqueue");
        std::fs::create_dir(&mq).map_err(io_err("create", &mq))?;
        mount(Some("mqueue"), &mq, Some("mqueue"), nosnd, None::<&str>)
            .map_err(err("mount mqueue on", &mq))?;
    }
    let master = console(&dev, tty_gid)?;
    let null = dev.join("null");
    mask(root, &null)?;
    mask_more(root, &null, masked, read_only)?;
    Ok(master)
}

/// Hides `masked` and makes `read_only` read-only (paths in the zone under /proc or /sys,
/// which vmmd checked): a file behind /dev/null, a directory behind an empty read-only
/// tmpfs. A path that is missing, or a symlink, is left alone.
fn mask_more(
    root: &Path,
    null: &Path,
    masked: &[String],
    read_only: &[String],
) -> Result<(), MountError> {
    let at = |p: &String| {
        let rel = p.trim_start_matches('/');
        let under = rel.starts_with("proc/") || rel.starts_with("sys/");
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path).ok();
        (under && !rel.split('/').any(|c| c == ".." || c.is_empty()))
            .then_some(meta)
            .flatten()
            .filter(|m| !m.file_type().is_symlink())
            .map(|m| (path, m.is_dir()))
    };
    for (p, dir) in masked.iter().filter_map(at) {
        hide(&p, dir, null)?;
    }
    for (p, _) in read_only.iter().filter_map(at) {
        make_read_only(&p)?;
    }
    Ok(())
}

/// Opens a pty in the zone's devpts, hands its slave to the zone's root and mounts it on
/// /dev/console.
fn console(dev: &Path, tty_gid: u32) -> Result<OwnedFd, MountError> {
    let ptmx = dev.join("pts/ptmx");
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(&ptmx)
        .map_err(io_err("open", &ptmx))?;
    let master = OwnedFd::from(master);
    let mut unlock: libc::c_int = 0;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCSPTLCK and TIOCGPTN on a pty master with pointers to live integers.
    let ok = unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) == 0
            && libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) == 0
    };
    if !ok {
        return Err(last("unlock the console pty at", &ptmx));
    }
    let slave = dev.join(format!("pts/{n}"));
    nix::unistd::chown(
        &slave,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(tty_gid)),
    )
    .map_err(err("give the zone's root", &slave))?;
    bind_on_file(&slave, &dev.join("console"))?;
    Ok(master)
}

/// Creates the file `target` and binds `source` (a device node) on it.
fn bind_on_file(source: &Path, target: &Path) -> Result<(), MountError> {
    std::fs::File::create(target).map_err(io_err("create", target))?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err(format!("bind-mount {} on", source.display()), target))
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

fn mask(root: &Path, null: &Path) -> Result<(), MountError> {
    for f in MASKED_FILES {
        let p = root.join("proc").join(f);
        if p.exists() {
            hide(&p, false, null)?;
        }
    }
    for d in MASKED_DIRS {
        let p = root.join(d);
        if p.is_dir() {
            hide(&p, true, null)?;
        }
    }
    for d in READ_ONLY {
        let p = root.join(d);
        if p.exists() {
            make_read_only(&p)?;
        }
    }
    Ok(())
}

/// The flags of what a zone may only look at: read-only, nosuid, nodev, noexec.
const LOOK_ONLY: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Hides `p`: a directory behind an empty read-only tmpfs, a file behind `null`.
fn hide(p: &Path, dir: bool, null: &Path) -> Result<(), MountError> {
    match dir {
        true => mount(Some("tmpfs"), p, Some("tmpfs"), LOOK_ONLY, Some("size=0")),
        false => mount(Some(null), p, None::<&str>, MsFlags::MS_BIND, None::<&str>),
    }
    .map_err(err("mask", p))
}

/// Binds `p` onto itself read-only (nosuid, nodev, noexec).
fn make_read_only(p: &Path) -> Result<(), MountError> {
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("bind-mount", p))?;
    mount(
        None::<&str>,
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | LOOK_ONLY,
        None::<&str>,
    )
    .map_err(err("make read-only", p))
}

/// Makes the mount at `p` read-only, keeping its other flags (a user namespace may not
/// clear the nosuid, nodev or noexec of a mount it did not make); what is mounted on it is
/// left as it is.
pub fn remount_read_only(p: &Path) -> Result<(), MountError> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let has = statvfs(p).map_err(err("read the flags of", p))?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (f, m) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if has.contains(f) {
            flags |= m;
        }
    }
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>).map_err(err("make read-only", p))
}

/// Mounts the zone's cgroups read-only at /sys/fs/cgroup, as runc does for a container
/// whose bundle asks (containerd's CRI does): cgroup2 where the host has only the unified
/// hierarchy; otherwise a tmpfs with each v1 hierarchy the process is in (and `unified`,
/// cgroup2, on a hybrid host) in a directory named for its controllers. The caller is in
/// the zone's cgroup namespace, so each shows the zone's own cgroup as its root.
pub fn mount_cgroups() -> Result<(), MountError> {
    let at = Path::new("/sys/fs/cgroup");
    let ro = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(io_err("read", Path::new("/proc/self/cgroup")))?;
    let v1: Vec<&str> = own
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .filter(|c| !c.is_empty())
        .collect();
    if v1.is_empty() {
        return mount(Some("cgroup2"), at, Some("cgroup2"), ro, None::<&str>)
            .map_err(err("mount the zone's cgroup2 on", at));
    }
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )
    .map_err(err("mount tmpfs on", at))?;
    let unified = own.lines().any(|l| l.starts_with("0::"));
    for controllers in v1.iter().copied().chain(unified.then_some("")) {
        let name = match controllers {
            "" => "unified",
            c => c.strip_prefix("name=").unwrap_or(c),
        };
        let dir = at.join(name);
        std::fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        let done = match controllers {
            "" => mount(Some("cgroup2"), &dir, Some("cgroup2"), ro, None::<&str>),
            c => mount(Some("cgroup"), &dir, Some("cgroup"), ro, Some(c)),
        };
        done.map_err(err(format!("mount the zone's cgroup {name} on"), &dir))?;
    }
    remount_read_only(at)
}

/// Makes `root` the process's root directory and drops the host's mounts from its view.
pub fn pivot(root: &Path) -> Result<(), MountError> {
    nix::unistd::chdir(root).map_err(err("enter", root))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root into", root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detach the host's mounts from", root))?;
    nix::unistd::chdir("/").map_err(err("enter", Path::new("/")))
}

/// Runs `f` with the filesystem ids of the zone's root, so what it creates in the id-mapped
/// root is owned by the zone (host root is not mapped there).
pub fn as_zone_root<T>(id_base: u32, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    // SAFETY: setfsuid/setfsgid only change this thread's filesystem ids; both are restored.
    unsafe {
        let old_g = libc::setfsgid(id_base);
        let old_u = libc::setfsuid(id_base);
        let r = f();
        libc::setfsuid(old_u as libc::uid_t);
        libc::setfsgid(old_g as libc::gid_t);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_lands_inside_the_zone_root_only() {
        assert_eq!(
            zone_relative(Path::new("/vm/disk0")).expect("plain"),
            PathBuf::from("vm/disk0")
        );
        for bad in ["vm/disk0", "/", "/vm/../etc", "", "/a//b/.."] {
            assert!(zone_relative(Path::new(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    #[ignore = "needs root: run with --run-ignored"]
    fn root_files_written_into_a_zone_follow_no_link_and_belong_to_the_zone() {
        use std::os::unix::fs::MetadataExt;
        let id_base = 0x7000_0000;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        std::fs::create_dir(&root).expect("root");
        std::os::unix::fs::chown(&root, Some(id_base), Some(id_base)).expect("chown");
        // A seed lands, its missing directories made as the zone's root.
        write_into_zone(&root, Path::new("/var/lib/seed/meta-data"), b"one", id_base)
            .expect("written");
        let f = root.join("var/lib/seed/meta-data");
        assert_eq!(std::fs::read(&f).expect("read"), b"one");
        let (file, parent) = (
            std::fs::metadata(&f).expect("meta"),
            std::fs::metadata(f.parent().expect("dir")).expect("meta"),
        );
        assert_eq!((file.uid(), file.mode() & 0o777), (id_base, 0o644));
        assert_eq!((parent.uid(), parent.mode() & 0o777), (id_base, 0o755));
        // Written again over a link the guest put there: the link goes, its target stays.
        let outside = dir.path().join("host-file");
        std::fs::write(&outside, b"host").expect("write");
        std::fs::remove_file(&f).expect("rm");
        std::os::unix::fs::symlink(&outside, &f).expect("link");
        write_into_zone(&root, Path::new("/var/lib/seed/meta-data"), b"two", id_base)
            .expect("written");
        assert_eq!(std::fs::read(&outside).expect("read"), b"host");
        assert_eq!(std::fs::read(&f).expect("read"), b"two");
        assert!(
            !std::fs::symlink_metadata(&f)
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        // A link on the way is refused by name, and nothing is made beyond it.
        std::os::unix::fs::symlink(dir.path(), root.join("var/lib/cloud")).expect("link");
        let e = write_into_zone(&root, Path::new("/var/lib/cloud/seed/x"), b"x", id_base)
            .expect_err("refused");
        assert!(e.to_string().contains("var/lib/cloud"), "{e}");
        assert!(
            hull_sys::chain(&e).contains("symbolic link"),
            "{}",
            hull_sys::chain(&e)
        );
        assert!(!dir.path().join("seed").exists());
        let e = bind_into_zone(
            &root,
            dir.path(),
            Path::new("/var/lib/cloud/m"),
            false,
            id_base,
        )
        .expect_err("refused");
        assert!(
            hull_sys::chain(&e).contains("symbolic link"),
            "{}",
            hull_sys::chain(&e)
        );
    }
}
