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
