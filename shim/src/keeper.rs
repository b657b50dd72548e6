//! The shim's keeper: the process containerd starts and talks to, which holds containerd's
//! connection while a worker (the same binary, all of the task logic) answers it, and starts
//! a new worker should that one die.
//!
//! containerd 1.6 takes a shim whose ttrpc connection drops for dead: it runs `shim delete`
//! and forgets the task, whatever the task's zone still does. A shim is thus two processes:
//! this keeper, which binds the socket containerd was told of, and relays ttrpc frames
//! whole between containerd and a worker on a private socket beside it; and the worker,
//! which serves containerd's task API and keeps what it knows of its task on disk (the
//! bundle's `hull-task.json`), so that a new one takes the task up where the last left it.
//! The keeper makes no call to vmmd and understands no task: it parses the frame header and,
//! for a request, the method's name, nothing else of what it relays.
//!
//! When a worker dies, the requests it had not answered are asked again of the next one
//! when they only read (`Wait`, `State`, `Pids`, `Stats`, `Connect`), and answered
//! `UNAVAILABLE` otherwise (a `Kill` may have been done, or not: the caller asks again). A
//! worker that exits with status 0 has been shut down (containerd's `Shutdown`): the keeper
//! ends with it. A worker dying more than [`RESTARTS`] times within [`RESTART_WINDOW`] ends
//! the keeper too, which containerd then cleans up after as after any shim.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::ttrpc::{Code, Request, Response, Status};

/// The environment variable by which `start` makes the process it spawns a keeper.
pub const ROLE: &str = "HULL_SHIM_ROLE";
/// Its value for a keeper.
pub const KEEPER: &str = "keeper";

/// ttrpc's frame: a 10-byte header (length, stream id, type, flags), then the message.
const HEADER: usize = 10;
/// ttrpc's largest message.
const MESSAGE_MAX: usize = 4 << 20;
const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;

/// The methods of containerd's task service a new worker may be asked again: they only read.
const REPLAYABLE: [&str; 5] = ["Wait", "State", "Pids", "Stats", "Connect"];

/// At most this many worker restarts within [`RESTART_WINDOW`].
const RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The suffix of the worker's socket path, next to the keeper's.
const WORKER_SOCKET: &str = ".worker";

/// One ttrpc frame, whole.
#[derive(Clone)]
struct Frame {
    header: [u8; HEADER],
    body: Vec<u8>,
}

impl Frame {
    fn stream(&self) -> u32 {
        u32::from_be_bytes([
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ])
    }

    fn kind(&self) -> u8 {
        self.header[8]
    }

    /// The next frame from `r`; `None` at its end between frames (a frame cut short is an
    /// error, as is one longer than ttrpc allows).
    fn read(r: &mut impl Read) -> std::io::Result<Option<Frame>> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match r.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MESSAGE_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a ttrpc message of {len} bytes (at most {MESSAGE_MAX})"),
            ));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        Ok(Some(Frame { header, body }))
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut all = Vec::with_capacity(HEADER + self.body.len());
        all.extend_from_slice(&self.header);
        all.extend_from_slice(&self.body);
        w.write_all(&all)
    }

    /// Whether a new worker may be asked this request again.
    fn replayable(&self) -> bool {
        Request::parse_from_bytes(&self.body).is_ok_and(|r| REPLAYABLE.contains(&r.method.as_str()))
    }

    /// The answer to request `stream` that its worker died before giving.
    fn unavailable(stream: u32) -> Frame {
        let response = Response {
            status: Some(Status {
                code: Code::UNAVAILABLE.into(),
                message: "hull's shim worker restarted before it answered: ask again".into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let body = response.write_to_bytes().unwrap_or_default();
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
        header[4..8].copy_from_slice(&stream.to_be_bytes());
        header[8] = RESPONSE;
        Frame { header, body }
    }
}

/// Which worker answers: a new generation once one has started, `up` while it runs.
#[derive(Default)]
struct Workers {
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Workers {
    fn set(&self, up: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if up {
            s.0 += 1;
        }
        s.1 = up;
        self.changed.notify_all();
    }

    /// Waits for a worker of a generation after `seen` to be up; its generation.
    fn next_after(&self, seen: u64) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !(s.1 && s.0 > seen) {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0
    }
}

/// One containerd connection's side towards the worker.
#[derive(Default)]
struct Link {
    to_worker: Option<UnixStream>,
    /// Requests not yet answered, by stream: the frame, and whether a worker had it (one
    /// that arrived while none was connected is sent to the next).
    pending: HashMap<u32, (Frame, bool)>,
    /// containerd has closed its end.
    closed: bool,
}

/// The `-socket` argument's path (`unix:///run/containerd/s/..` or a plain path).
fn socket_arg(args: &[OsString]) -> Option<PathBuf> {
    let i = args.iter().position(|a| a == "-socket")?;
    let v = args.get(i + 1)?.to_str()?;
    Some(PathBuf::from(v.strip_prefix("unix://").unwrap_or(v)))
}

/// The worker's arguments: the keeper's, its socket the private one.
fn worker_args(args: &[OsString], worker: &Path) -> Vec<OsString> {
    let mut out = args.to_vec();
    if let Some(i) = out.iter().position(|a| a == "-socket")
        && i + 1 < out.len()
    {
        out[i + 1] = format!("unix://{}", worker.display()).into();
    }
    out
}

/// Runs the keeper: never returns. `args` are the shim's (without the program name).
pub fn run(args: Vec<OsString>) -> ! {
    let code = match keep(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("containerd-shim-hull-v2 keeper: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn keep(args: &[OsString]) -> Result<(), String> {
    let public = socket_arg(args).ok_or("no -socket argument")?;
    let private = PathBuf::from(format!("{}{WORKER_SOCKET}", public.display()));
    if let Some(dir) = public.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let listener = match UnixListener::bind(&public) {
        Ok(l) => l,
        // A shim already answers there (containerd started this one twice): it serves.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&public).is_ok() {
                std::fs::write("address", format!("unix://{}", public.display()))
                    .map_err(|e| format!("address: {e}"))?;
                started();
                return Ok(());
            }
            let _ = std::fs::remove_file(&public);
            UnixListener::bind(&public).map_err(|e| format!("{}: {e}", public.display()))?
        }
        Err(e) => return Err(format!("{}: {e}", public.display())),
    };
    // Execs a dead worker leaves are the keeper's to reap.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let exe = std::env::current_exe().map_err(|e| format!("the shim's binary: {e}"))?;
    let worker_args = worker_args(args, &private);
    let keeper = std::process::id() as i32;
    let spawn = || -> Result<std::process::Child, String> {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::remove_file(&private);
        let mut command = std::process::Command::new(&exe);
        // A worker ends with its keeper (killed, containerd has forgotten the task and runs
        // `shim delete`): nothing would talk to it again.
        // SAFETY: prctl and getppid only, which are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != keeper {
                    return Err(std::io::Error::other("the keeper has ended"));
                }
                Ok(())
            })
        };
        let mut child = command
            .args(&worker_args)
            .env_remove(ROLE)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("start a worker: {e}"))?;
        // The worker's stdout ends once it serves (containerd-shim's start handshake), or
        // once it has died.
        if let Some(mut out) = child.stdout.take() {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        }
        Ok(child)
    };
    let mut worker = spawn()?;
    if !private.exists() {
        let _ = worker.kill();
        let _ = worker.wait();
        return Err("the worker did not start".into());
    }
    let workers = Arc::new(Workers::default());
    workers.set(true);
    {
        let (workers, private) = (workers.clone(), private.clone());
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                let (workers, private) = (workers.clone(), private.clone());
                std::thread::spawn(move || serve(c, &workers, &private));
            }
        });
    }
    started();
    let mut restarts: Vec<Instant> = Vec::new();
    loop {
        let status = reap_until(worker.id() as i32);
        workers.set(false);
        if status == Some(0) {
            // Shut down: what it answered last reaches containerd before the keeper ends.
            std::thread::sleep(Duration::from_millis(200));
            let _ = std::fs::remove_file(&private);
            return Ok(());
        }
        restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
        if restarts.len() >= RESTARTS {
            let _ = std::fs::remove_file(&public);
            let _ = std::fs::remove_file(&private);
            return Err(format!(
                "the worker died {RESTARTS} times within {}s",
                RESTART_WINDOW.as_secs()
            ));
        }
        restarts.push(Instant::now());
        worker = spawn()?;
        workers.set(true);
    }
}

/// Tells `start` the shim serves: its stdout, the pipe `start` reads to its end, closed.
fn started() {
    // SAFETY: dup2 of the process's own standard descriptors.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
}

/// Reaps children until `pid` ends: its exit status (`None` when a signal ended it).
fn reap_until(pid: i32) -> Option<i32> {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return Some(code),
            Ok(WaitStatus::Signaled(p, ..)) if p.as_raw() == pid => return None,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// Relays one containerd connection to whichever worker is up, until containerd closes it.
fn serve(client: UnixStream, workers: &Workers, private: &Path) {
    let Ok(to_client) = client.try_clone() else {
        return;
    };
    let to_client = Arc::new(Mutex::new(to_client));
    let link = Arc::new(Mutex::new(Link::default()));
    {
        let link = link.clone();
        let mut client = client;
        std::thread::spawn(move || {
            while let Ok(Some(frame)) = Frame::read(&mut client) {
                let mut l = link.lock().unwrap_or_else(|e| e.into_inner());
                let sent = match &l.to_worker {
                    Some(w) => {
                        if frame.write(&mut &*w).is_err() {
                            l.to_worker = None;
                        }
                        true
                    }
                    None => false,
                };
                if frame.kind() == REQUEST {
                    l.pending.insert(frame.stream(), (frame, sent));
                }
            }
            let mut l = link.lock().unwrap_or_else(|e| e.into_inner());
            l.closed = true;
            if let Some(w) = l.to_worker.take() {
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
        });
    }
    let mut generation = 0;
    loop {
        generation = workers.next_after(generation);
        let Ok(mut from_worker) = UnixStream::connect(private) else {
            continue;
        };
        {
            let mut l = link.lock().unwrap_or_else(|e| e.into_inner());
            if l.closed {
                return;
            }
            let Ok(mut w) = from_worker.try_clone() else {
                continue;
            };
            // What no worker had yet is sent; what the last one left unanswered is asked
            // again if it only reads, else answered here.
            let pending: Vec<(u32, (Frame, bool))> = l.pending.drain().collect();
            for (stream, (f, sent)) in pending {
                if (!sent || f.replayable()) && f.write(&mut w).is_ok() {
                    l.pending.insert(stream, (f, true));
                } else {
                    let mut c = to_client.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = Frame::unavailable(stream).write(&mut *c);
                }
            }
            l.to_worker = Some(w);
        }
        while let Ok(Some(frame)) = Frame::read(&mut from_worker) {
            if frame.kind() == RESPONSE {
                let mut l = link.lock().unwrap_or_else(|e| e.into_inner());
                l.pending.remove(&frame.stream());
            }
            let mut c = to_client.lock().unwrap_or_else(|e| e.into_inner());
            if frame.write(&mut *c).is_err() {
                return;
            }
        }
        let mut l = link.lock().unwrap_or_else(|e| e.into_inner());
        l.to_worker = None;
        if l.closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(stream: u32, method: &str) -> Frame {
        let body = Request {
            service: "containerd.task.v2.Task".into(),
            method: method.into(),
            ..Default::default()
        }
        .write_to_bytes()
        .expect("encode");
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
        header[4..8].copy_from_slice(&stream.to_be_bytes());
        header[8] = REQUEST;
        Frame { header, body }
    }

    #[test]
    fn frames_are_read_whole_and_only_reading_methods_are_replayed() {
        let mut bytes = Vec::new();
        request(3, "Wait").write(&mut bytes).expect("write");
        request(5, "Kill").write(&mut bytes).expect("write");
        let mut r = bytes.as_slice();
        let a = Frame::read(&mut r).expect("read").expect("a frame");
        let b = Frame::read(&mut r).expect("read").expect("a frame");
        assert!(Frame::read(&mut r).expect("read").is_none());
        assert_eq!((a.stream(), a.kind(), a.replayable()), (3, REQUEST, true));
        assert_eq!((b.stream(), b.replayable()), (5, false));
        // A frame cut short is an error, not the end.
        let mut cut = &bytes[..bytes.len() - 1];
        Frame::read(&mut cut).expect("the first");
        assert!(Frame::read(&mut cut).is_err());
        // A length past ttrpc's limit is refused before anything is read for it.
        let mut huge = [0u8; HEADER];
        huge[..4].copy_from_slice(&((MESSAGE_MAX + 1) as u32).to_be_bytes());
        assert!(Frame::read(&mut huge.as_slice()).is_err());
    }

    #[test]
    fn an_unanswered_request_is_answered_unavailable_on_its_stream() {
        let f = Frame::unavailable(7);
        assert_eq!((f.stream(), f.kind()), (7, RESPONSE));
        let r = Response::parse_from_bytes(&f.body).expect("a response");
        assert_eq!(r.status.code.enum_value(), Ok(Code::UNAVAILABLE));
        assert!(r.status.message.contains("restarted"));
    }

    #[test]
    fn the_worker_serves_on_a_private_socket_beside_the_keepers() {
        let args: Vec<OsString> = [
            "-namespace",
            "default",
            "-id",
            "c1",
            "-socket",
            "unix:///run/s/ab",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(socket_arg(&args), Some(PathBuf::from("/run/s/ab")));
        let w = worker_args(&args, Path::new("/run/s/ab.worker"));
        assert_eq!(w[5], "unix:///run/s/ab.worker");
        assert_eq!(w[..5], args[..5]);
    }
}
