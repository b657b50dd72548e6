//! `vmadm send` and `vmadm receive` (SmartOS: `vmadm send U | ssh host vmadm receive`).

use std::io::IsTerminal;
use std::path::Path;

use crate::{CmdResult, Failure, client, parse_uuid};

/// A pipe's buffer is 64 KiB unless asked: a stream of gigabytes moves in larger pieces
/// (fewer reads, writes and wakeups on both ends) through 1 MiB. Not a pipe, or a kernel
/// that refuses: the pipe stays as it is.
fn widen_pipe(fd: impl std::os::fd::AsFd) {
    use nix::fcntl::{FcntlArg, fcntl};
    let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(1 << 20));
}

/// `vmadm send UUID [--since SNAPSHOT]`: the VM as a stream on stdout, which must not be a
/// terminal. A running VM is stopped first and stays stopped, as on SmartOS.
pub fn send(socket: Option<&Path>, uuid: &str, since: Option<&str>) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    if std::io::stdout().is_terminal() {
        return Err(Failure::new(
            "vmadm send writes a stream to stdout, which is a terminal: pipe it into \
             vmadm receive or a file",
        ));
    }
    widen_pipe(std::io::stdout());
    let mut out = std::io::stdout().lock();
    let bytes = client(socket)?
        .send_vm(uuid, since, &mut out)
        .map_err(|e| match e {
            hull_client::ClientError::Http(_) => Failure::new(format!(
                "the stream of VM {uuid} broke off ({e}); vmmd's log says why, and a receiver \
                 refuses what it got"
            )),
            e => e.into(),
        })?;
    eprintln!("Successfully sent VM {uuid} ({bytes} bytes)");
    Ok(())
}

/// `vmadm receive`: a VM from the stream on stdin, which must not be a terminal.
pub fn receive(socket: Option<&Path>) -> CmdResult {
    if std::io::stdin().is_terminal() {
        return Err(Failure::new(
            "vmadm receive reads a stream (vmadm send's output) from stdin, which is a terminal",
        ));
    }
    widen_pipe(std::io::stdin());
    let vm = client(socket)?.receive_vm(std::io::stdin())?;
    eprintln!("Successfully received VM {}", vm.uuid);
    Ok(())
}
