//! Acceptance 7: a non-root client is refused unless the opt-in group is configured.
//! Needs root (to run clients as another user): `root_*` tests are ignored unless
//! scripts/test runs them as root.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use hull_tests::{Daemon, bin, is_root, stderr, stdout};

const NOBODY: u32 = 65534;

fn vmadm_as(d: &Daemon, uid: u32, gid: u32, groups: &[u32]) -> std::process::Output {
    // setpriv (util-linux) switches user, group and supplementary groups before exec.
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups)
        .arg(bin("vmadm"))
        .args(["list", "-H"])
        .env("HULL_SOCKET", d.socket())
        .output()
        .expect("run vmadm through setpriv")
}

fn open_path_to_socket(d: &Daemon) {
    // Let others traverse to the socket so that SO_PEERCRED, not the file mode alone, is
    // what refuses them.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
}

#[test]
#[ignore = "needs root: scripts/test runs it as root"]
fn root_non_root_clients_are_refused_by_default() {
    assert!(is_root(), "this test must run as root");
    let d = Daemon::start();
    open_path_to_socket(&d);
    let mode = std::fs::metadata(d.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the socket is root-only by default");
    let o = vmadm_as(&d, NOBODY, NOBODY, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    // Even with the file mode opened up, the peer check refuses with a JSON 403.
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let o = vmadm_as(&d, NOBODY, NOBODY, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("only root"), "{}", stderr(&o));
    // Root is served.
    assert!(d.vmadm(&["list"], None).status.success());
}

#[test]
#[ignore = "needs root: scripts/test runs it as root"]
fn root_the_opt_in_group_is_served() {
    assert!(is_root(), "this test must run as root");
    // gid 65534 (nogroup) stands in for an operators' group.
    let d = Daemon::start_with(&["--group", "65534"]);
    open_path_to_socket(&d);
    let meta = std::fs::metadata(d.socket()).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), NOBODY);
    let o = vmadm_as(&d, NOBODY, NOBODY, &[]);
    assert!(o.status.success(), "group member refused: {}", stderr(&o));
    assert_eq!(stdout(&o), "");
    // A member through a supplementary group is served too; a stranger is not.
    let o = vmadm_as(&d, 4242, 4242, &[NOBODY]);
    assert!(
        o.status.success(),
        "supplementary member refused: {}",
        stderr(&o)
    );
    let o = vmadm_as(&d, 4243, 4243, &[]);
    assert_eq!(o.status.code(), Some(1), "stranger served: {}", stdout(&o));
}

// Host paths in payloads: a group member is not root. A real non-root process (setpriv with a
// uid and gid no account uses, the gid being vmmd's --group) talks to vmmd; SO_PEERCRED sees
// its real credentials.

/// A uid and gid no account or group on this host uses, so the test's member is nobody else.
fn unused_id() -> u32 {
    (47_110..47_200)
        .find(|&id| {
            nix::unistd::User::from_uid(id.into()).is_ok_and(|u| u.is_none())
                && nix::unistd::Group::from_gid(id.into()).is_ok_and(|g| g.is_none())
        })
        .expect("a free uid/gid between 47110 and 47200")
}

/// One HTTP request as `uid`:`gid` (no supplementary groups) through curl: (status, JSON).
fn curl_as(
    d: &Daemon,
    uid: u32,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    use std::io::Write;
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(["curl", "-q", "-sS", "--unix-socket"])
        .arg(d.socket())
        .args(["-X", method, "-w", "\n%{http_code}"]);
    // `null` is no body at all: GET routes refuse one.
    if !body.is_null() {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = cmd
        .arg(format!("http://vmmd{path}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run curl through setpriv");
    let mut stdin = child.stdin.take().expect("stdin");
    if !body.is_null() {
        stdin
            .write_all(body.to_string().as_bytes())
            .expect("write the body");
    }
    drop(stdin);
    let o = child.wait_with_output().expect("curl");
    assert!(o.status.success(), "curl failed: {}", stderr(&o));
    let out = stdout(&o);
    let (json, status) = out.rsplit_once('\n').expect("the status line");
    let status = status.trim().parse().expect("an HTTP status");
    let json = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// A loop device over a small temp file, detached when dropped.
struct LoopDev {
    dev: String,
    _file: tempfile::NamedTempFile,
}

impl LoopDev {
    fn new() -> LoopDev {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(1 << 20).expect("size");
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup");
        assert!(o.status.success(), "losetup: {}", stderr(&o));
        LoopDev {
            dev: stdout(&o).trim().to_string(),
            _file: file,
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Every file and directory under the data root, for "nothing was left behind". The lock
/// file is vmmd's own, and the record store's directory exists from the start.
fn tree(root: &std::path::Path) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

/// Asserts a 403 whose JSON error names `property` and the rule.
fn assert_refused(reply: &(u16, serde_json::Value), property: &str) {
    let (status, body) = reply;
    assert_eq!(*status, 403, "{property}: {body}");
    assert_eq!(body["code"], "Forbidden", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("{property}: ")),
        "the message names {property}: {body}"
    );
    assert!(
        message.contains("host paths need uid 0 or a directory listed by vmmd --allow-path"),
        "the message names the rule: {body}"
    );
}

#[test]
#[ignore = "needs root: scripts/test runs it as root"]
fn root_group_members_name_host_files_only_below_allow_path() {
    assert!(is_root(), "this test must run as root");
    let member = unused_id();
    // Root's directory of files group members may hand to guests.
    let host = tempfile::Builder::new()
        .prefix("hull-allow")
        .tempdir()
        .expect("tempdir");
    let allow = host.path().join("allow");
    std::fs::create_dir(&allow).expect("allow dir");
    std::fs::set_permissions(&allow, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(allow.join("kernel"), b"not really a kernel").expect("kernel");
    std::fs::File::create(allow.join("disk.img"))
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk");
    std::os::unix::fs::symlink("/etc/shadow", allow.join("shadow")).expect("symlink");
    let kernel = allow.join("kernel").display().to_string();
    let disk = allow.join("disk.img").display().to_string();
    let loopdev = LoopDev::new();

    let d = Daemon::start_with(&[
        "--group",
        &member.to_string(),
        "--allow-path",
        &allow.display().to_string(),
    ]);
    open_path_to_socket(&d);
    let before = tree(&d.data_root());
    // After a refused create: no guest (as the member sees it), no file in the data root.
    let nothing_new = |what: &str| {
        let o = vmadm_as(&d, member, member, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "", "{what} left a guest");
        assert_eq!(tree(&d.data_root()), before, "{what} left files");
    };
    let vm = |kernel: &str, disk: &str| {
        serde_json::json!({"brand": "kvm", "autoboot": false, "ram": 64,
            "kernel": kernel, "disks": [{"path": disk}]})
    };

    // Files outside the allow-path directory, however they are spelled.
    let climb = format!(
        "{}{}/etc/shadow",
        allow.display(),
        "/..".repeat(allow.components().count() - 1)
    );
    for (payload, property) in [
        (vm(&kernel, "/etc/shadow"), "disks.0.path"),
        (vm(&kernel, &loopdev.dev), "disks.0.path"),
        (vm("/etc/shadow", &disk), "kernel"),
        (
            vm(&kernel, &allow.join("shadow").display().to_string()),
            "disks.0.path",
        ),
        (vm(&kernel, &climb), "disks.0.path"),
        (vm(&climb, &disk), "kernel"),
        (
            vm(&kernel, &allow.join("missing").display().to_string()),
            "disks.0.path",
        ),
    ] {
        assert_refused(&curl_as(&d, member, "POST", "/v1/vms", &payload), property);
        nothing_new(&format!("create {payload}"));
        // vmadm validate says so too, before anything is tried.
        assert_refused(
            &curl_as(&d, member, "POST", "/v1/validate/create", &payload),
            property,
        );
    }
    let mut initrd = vm(&kernel, &disk);
    initrd["initrd"] = "/etc/shadow".into();
    assert_refused(&curl_as(&d, member, "POST", "/v1/vms", &initrd), "initrd");
    nothing_new("create with initrd /etc/shadow");
    // A send stream's record names host paths too: receiving one is root's alone.
    let (status, reply) = curl_as(
        &d,
        member,
        "POST",
        "/v1/vms/receive",
        &serde_json::json!({}),
    );
    assert_eq!(status, 403, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("only root may receive")),
        "{reply}"
    );
    nothing_new("a receive");

    // Files below it are the member's to use.
    let (status, created) = curl_as(&d, member, "POST", "/v1/vms", &vm(&kernel, &disk));
    assert_eq!(status, 201, "{created}\nlog: {}", d.log());
    let uuid = created["uuid"].as_str().expect("uuid").to_string();
    let after_create = tree(&d.data_root());

    // Updates that add host files are held to the same rule, and change nothing.
    let path = format!("/v1/vms/{uuid}");
    for (payload, property) in [
        (
            serde_json::json!({"add_disks": [{"path": "/etc/shadow"}]}),
            "add_disks.0.path",
        ),
        (
            serde_json::json!({"add_disks": [{"size": 8}, {"path": loopdev.dev}]}),
            "add_disks.1.path",
        ),
        (serde_json::json!({"kernel": "/etc/shadow"}), "kernel"),
        (serde_json::json!({"initrd": climb}), "initrd"),
    ] {
        assert_refused(&curl_as(&d, member, "PATCH", &path, &payload), property);
        assert_eq!(
            tree(&d.data_root()),
            after_create,
            "update {payload} left files"
        );
    }
    let (status, now) = curl_as(&d, member, "GET", &path, &serde_json::Value::Null);
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["kernel"], kernel.as_str(), "{now}");
    assert_eq!(now["disks"].as_array().map(Vec::len), Some(1), "{now}");
    assert_eq!(
        tree(&d.data_root()),
        after_create,
        "a refused update left files"
    );
    // A disk hull makes, and one below the allow-path directory, are fine.
    let (status, updated) = curl_as(
        &d,
        member,
        "PATCH",
        &path,
        &serde_json::json!({"add_disks": [{"size": 8}]}),
    );
    assert_eq!(status, 200, "{updated}");

    // Root names any host file: a kernel in a temp file, a block device as a disk.
    let root_kernel = host.path().join("root-kernel");
    std::fs::write(&root_kernel, b"root's kernel").expect("kernel");
    let payload = vm(&root_kernel.display().to_string(), &loopdev.dev);
    let o = d.vmadm(&["create"], Some(&payload.to_string()));
    assert!(o.status.success(), "root refused: {}", stderr(&o));

    let o = d.vmadm(&["list", "-H", "-o", "uuid"], None);
    let all: Vec<String> = stdout(&o).split_whitespace().map(str::to_string).collect();
    assert_eq!(all.len(), 2, "{}", stdout(&o));
    for u in &all {
        let o = d.vmadm(&["delete", u], None);
        assert!(o.status.success(), "delete {u}: {}", stderr(&o));
    }
    // Files the guests were handed are the host's: deleting the guests leaves them.
    assert!(allow.join("disk.img").exists() && root_kernel.exists());
}

#[test]
fn allow_path_directories_others_can_write_are_refused_at_start() {
    let t = tempfile::tempdir().expect("tempdir");
    let open = t.path().join("open");
    std::fs::create_dir(&open).expect("dir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let o = Command::new(bin("vmmd"))
        .arg("--socket")
        .arg(t.path().join("vmmd.sock"))
        .arg("--data-root")
        .arg(t.path().join("data"))
        .arg("--allow-path")
        .arg(&open)
        .env("HULL_LOG", "warn")
        .output()
        .expect("run vmmd");
    assert!(!o.status.success(), "vmmd started with a 0777 --allow-path");
    let err = stderr(&o);
    assert!(
        err.contains("writable by root only") && err.contains(&open.display().to_string()),
        "{err}"
    );
    assert!(!t.path().join("vmmd.sock").exists(), "vmmd served anyway");
}
