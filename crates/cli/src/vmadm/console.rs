//! `vmadm console UUID`: attaches the terminal to a running zone's console (Ctrl-] detaches).
//! What the zone printed before attaching is replayed first.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use crate::{CmdResult, Failure, client, parse_uuid};

/// Ctrl-]: ends the console session, as in SmartOS's `vmadm console`.
const ESCAPE: u8 = 0x1d;

pub fn console(socket: Option<&Path>, uuid: &str) -> CmdResult {
    attach(socket, uuid, true)
}

/// `vmadm logs UUID`: a docker zone's output as zoned kept it, to stdout.
pub fn logs(socket: Option<&Path>, uuid: &str) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    let mut out = std::io::stdout().lock();
    client(socket)?.logs(uuid, &mut out)?;
    out.flush()
        .map_err(|e| Failure::new(format!("cannot write the logs: {e}")))
}

/// Attaches to the console; with `escape` false (`zlogin -C -E`) Ctrl-] is passed on and
/// only the end of input or of the console ends the session.
pub fn attach(socket: Option<&Path>, uuid: &str, escape: bool) -> CmdResult {
    let uuid = parse_uuid(uuid)?;
    // Through vmmd's API (the console switched to on its socket), as hull-web's console is.
    let (stream, replayed) = client(socket)?.console(uuid)?;
    let stdin = std::io::stdin();
    let raw = stdin
        .is_terminal()
        .then(|| RawMode::enter(&stdin))
        .flatten();
    if raw.is_some() {
        match escape {
            true => eprint!("[connected to {uuid}; Ctrl-] to detach]\r\n"),
            false => eprint!("[connected to {uuid}; no escape character]\r\n"),
        }
    }
    let mut out = stream
        .try_clone()
        .map_err(|e| Failure::new(format!("cannot attach to the console of {uuid}: {e}")))?;
    let reader = std::thread::spawn(move || {
        let mut s = stream;
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        if stdout.write_all(&replayed).is_err() {
            return;
        }
        let _ = stdout.flush();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = stdout.flush();
        }
    });
    let mut buf = [0u8; 1024];
    let mut input = std::io::stdin().lock();
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &buf[..n];
        if let Some(i) = data.iter().position(|b| escape && *b == ESCAPE) {
            let _ = out.write_all(&data[..i]);
            break;
        }
        if out.write_all(data).is_err() {
            break;
        }
    }
    let _ = out.shutdown(std::net::Shutdown::Both);
    drop(raw);
    if reader.is_finished() || !std::io::stdin().is_terminal() {
        let _ = reader.join();
    }
    Ok(())
}

/// The terminal in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter(stdin: &std::io::Stdin) -> Option<RawMode> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
        eprint!("\r\n[detached]\r\n");
    }
}
