//! Exec processes (`ctr task exec`, CRI ExecSync): further processes in a running task's
//! zone, run by `zoned exec` exactly as zlogin runs them (the zone's namespaces, cgroup,
//! capability set and seccomp filters; a pty of the zone's devpts or pipes that zoned
//! relays, so the zone never holds one of containerd's FIFOs). The pid containerd is given
//! is the command's own (the child `zoned exec` forks), held by a pidfd so that a kill never
//! reaches a recycled pid.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use serde_json::Value;
use tokio::sync::watch;

/// An OCI process spec as containerd sends it for an exec, reduced to what hull honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// `UID:GID`, ids of the zone (its user namespace maps them).
    pub user: Option<String>,
    pub terminal: bool,
}

/// Fields of an OCI process an exec may carry. Those hull does not take per exec
/// (capabilities, rlimits, no_new_privileges...) are the zone's own, as for zlogin: the
/// exec gets the zone's capability set, seccomp filters and limits, never more.
const PROCESS_FIELDS: &[&str] = &[
    "args",
    "env",
    "cwd",
    "user",
    "terminal",
    "consoleSize",
    "capabilities",
    "rlimits",
    "noNewPrivileges",
    "apparmorProfile",
    "oomScoreAdj",
    "selinuxLabel",
];

impl ExecSpec {
    /// Parses containerd's process spec (untrusted JSON bytes).
    pub fn parse(bytes: &[u8]) -> Result<ExecSpec, String> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("exec process spec: {e}"))?;
        let obj = v
            .as_object()
            .ok_or("exec process spec: not a JSON object")?;
        if let Some(k) = obj.keys().find(|k| !PROCESS_FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "exec process spec: {k:?} is not a field hull's shim knows"
            ));
        }
        let strings = |key: &str| -> Result<Vec<String>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("exec process spec: {key} holds a non-string"))
                    })
                    .collect(),
                Some(_) => Err(format!("exec process spec: {key} is not an array")),
            }
        };
        let args = strings("args")?;
        if args.is_empty() || args[0].is_empty() {
            return Err("exec process spec: args is empty".into());
        }
        let env = strings("env")?;
        if let Some(bad) = env
            .iter()
            .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        {
            return Err(format!("exec process spec: env {bad:?} is not NAME=VALUE"));
        }
        let cwd = match obj.get("cwd").and_then(Value::as_str) {
            None | Some("") => None,
            Some(c) if c.starts_with('/') => Some(c.to_string()),
            Some(c) => return Err(format!("exec process spec: cwd {c:?} is not absolute")),
        };
        let user = match obj.get("user") {
            None | Some(Value::Null) => None,
            Some(u) => {
                let id = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                if u.get("username")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
                {
                    return Err(
                        "exec process spec: user.username is not supported (give uid and gid)"
                            .into(),
                    );
                }
                let (uid, gid) = (id("uid"), id("gid"));
                // A uid or gid outside the zone's range is refused by zoned, naming it.
                Some(format!("{uid}:{gid}"))
            }
        };
        Ok(ExecSpec {
            args,
            env,
            cwd,
            user,
            terminal: obj
                .get("terminal")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// `zoned exec`'s arguments after the zone's directory.
    pub fn zoned_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.terminal {
            a.push("-t".to_string());
        }
        if let Some(u) = &self.user {
            a.extend(["-u".to_string(), u.clone()]);
        }
        for e in &self.env {
            a.extend(["-e".to_string(), e.clone()]);
        }
        if let Some(c) = &self.cwd {
            a.extend(["-w".to_string(), c.clone()]);
        }
        a.push("--".to_string());
        a.extend(self.args.iter().cloned());
        a
    }
}

/// One exec process of a task.
pub struct ExecProcess {
    pub spec: ExecSpec,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    /// The command's pid once started (0 before).
    pub pid: u32,
    /// The command, held so that a signal reaches it and never a recycled pid.
    pub pidfd: Option<OwnedFd>,
    /// Its exit status and time once it ended.
    pub exited: watch::Sender<Option<(u32, Timestamp)>>,
    /// With a terminal: the master of the host pty that is `zoned exec`'s controlling
    /// terminal; its window size is the command's (zoned exec copies it at SIGWINCH).
    pub console: Option<Arc<OwnedFd>>,
}

impl ExecProcess {
    pub fn new(spec: ExecSpec, stdin: String, stdout: String, stderr: String) -> ExecProcess {
        ExecProcess {
            spec,
            stdin,
            stdout,
            stderr,
            pid: 0,
            pidfd: None,
            exited: watch::channel(None).0,
            console: None,
        }
    }
}

/// A host pty for a terminal exec: `zoned exec -t` gets its slave as stdin, stdout and
/// stderr and as its controlling terminal (so a resize of the master reaches it as
/// SIGWINCH, which it passes on to the zone's pty, and its raw mode is the slave's), while
/// two threads copy containerd's stdin FIFO into the master and the master into the stdout
/// FIFO. The master, for resizes, and a descriptor of the slave the shim holds until the
/// relay has ended and its last output is read ([`release`]): a pty whose slave is closed
/// answers reads on its master with EIO, even with output still in it.
pub fn terminal(
    stdin: std::fs::File,
    stdout: std::fs::File,
    command: &mut std::process::Command,
) -> std::io::Result<(Arc<OwnedFd>, OwnedFd)> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    let slave = pty.slave;
    command
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave.try_clone()?);
    // SAFETY: setsid and TIOCSCTTY on descriptor 0 (the slave) are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let master = Arc::new(pty.master);
    let mut input = std::fs::File::from(master.try_clone()?);
    let mut output = std::fs::File::from(master.try_clone()?);
    std::thread::spawn(move || {
        let mut stdin = stdin;
        let _ = std::io::copy(&mut stdin, &mut input);
    });
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut buf = [0u8; 8192];
        // EIO once the slave is closed (see `release`).
        while let Ok(n) = output.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    Ok((master, slave))
}

/// Closes the shim's slave of a terminal exec whose relay has ended, once what it wrote has
/// been read from the master (for at most a second), which ends the output thread.
pub fn release(master: &OwnedFd, slave: OwnedFd) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD on a pty master we hold, into a live integer.
        let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::FIONREAD, &mut pending) };
        if r != 0 || pending == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(slave);
}

/// Sets the window size of a terminal exec's host pty.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a pty master we hold, with a live winsize.
    match unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// `zoned`: $HULL_ZONED, else next to this binary.
pub fn zoned_path() -> PathBuf {
    match std::env::var_os("HULL_ZONED") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .unwrap_or_default()
            .with_file_name("zoned"),
    }
}

/// Opens containerd's FIFO at `path` for the command's stdio: stdin for reading (opened
/// without waiting for a writer), stdout and stderr for writing; `/dev/null` when containerd
/// gave none.
pub fn open_stdio(path: &str, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() {
        return std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null");
    }
    if write {
        return std::fs::OpenOptions::new().write(true).open(path);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // Blocking again: zoned's relay reads it as an ordinary descriptor.
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(f)
}

/// The child `zoned exec` (pid `relay`) forked for its command, once there is one: `None`
/// when the relay ended first (its command could not be started: its exit status says so).
pub fn command_pid(relay: u32, within: Duration) -> Option<u32> {
    let path = format!("/proc/{relay}/task/{relay}/children");
    let deadline = Instant::now() + within;
    loop {
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                if let Some(pid) = s.split_whitespace().next().and_then(|p| p.parse().ok()) {
                    return Some(pid);
                }
            }
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `signal` to the process `pidfd` holds; an ended one is fine (ESRCH).
pub fn signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a pidfd we hold and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            e => Err(e),
        },
    }
}

/// The zone's runtime directory must exist before `zoned exec` is pointed at it.
pub fn runtime_dir(dir: &str) -> Result<&Path, String> {
    let p = Path::new(dir);
    if p.is_absolute() && p.is_dir() {
        Ok(p)
    } else {
        Err(format!("the zone's runtime directory {dir} is missing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_spec_becomes_zoned_exec_arguments() {
        let s = ExecSpec::parse(
            br#"{"args":["sh","-c","echo $A"],"env":["A=1","PATH=/bin"],"cwd":"/tmp",
                "user":{"uid":1000,"gid":100},"terminal":false,
                "capabilities":{"bounding":["CAP_KILL"]},"noNewPrivileges":true}"#,
        )
        .unwrap();
        assert_eq!(
            s.zoned_args(),
            [
                "-u",
                "1000:100",
                "-e",
                "A=1",
                "-e",
                "PATH=/bin",
                "-w",
                "/tmp",
                "--",
                "sh",
                "-c",
                "echo $A"
            ]
        );
        let t = ExecSpec::parse(br#"{"args":["sh"],"terminal":true}"#).unwrap();
        assert_eq!(t.zoned_args(), ["-t", "--", "sh"]);
    }

    #[test]
    fn a_bad_exec_spec_is_refused_naming_what() {
        for (spec, what) in [
            (&br#"{"args":[]}"#[..], "args is empty"),
            (br#"{"args":["x"],"hooks":{}}"#, "\"hooks\""),
            (br#"{"args":["x"],"env":["NOEQUALS"]}"#, "NOEQUALS"),
            (br#"{"args":["x"],"cwd":"rel"}"#, "not absolute"),
            (br#"{"args":["x"],"user":{"username":"bob"}}"#, "username"),
            (br#"[1]"#, "not a JSON object"),
        ] {
            let e = ExecSpec::parse(spec).unwrap_err();
            assert!(e.contains(what), "{e}");
        }
    }
}
