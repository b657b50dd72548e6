//! The control socket: JSON lines over a Unix stream socket, one request per line, one reply
//! line each. vmmd uses it for stop, pause and info, zoned to press the power button. The
//! messages are [`hull_vmm_proto::control`]'s, shared with those clients. Requests are
//! untrusted input: anything that is not a known command gets an error reply, never a crash.
//! The socket is served by the VMM's event loop on the main thread (no thread of its own); a
//! `pause` holds that loop until the vCPUs are parked (milliseconds, at most 2 s).
//!
//! `resize_disk` is for a disk image the host has already grown: the VMM re-reads the
//! size of `--disk` number `index` (0 is the first, vda), sets the guest-visible capacity
//! and raises the configuration change interrupt, so the guest sees the new size without a
//! reboot. An image that shrank is refused and the guest keeps its old size.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use hull_vmm_proto::{ControlReply, ControlRequest, DiskResized};

use crate::bus::lock;
use crate::devices::virtio::balloon::balloon_pages;
use crate::devices::virtio::mmio::MmioTransport;
use crate::stats::Stats;
use crate::vcpu::{RunState, StopReason};
use crate::vm::PowerButton;

/// Longest request line accepted.
const MAX_LINE: u64 = 4096;

/// Errors from setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created.
    #[error("cannot listen on control socket {path}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Something that is not a socket is in the way.
    #[error("control socket path {0} exists and is not a socket")]
    NotASocket(String),
}

/// What the control socket acts on.
pub struct Controller {
    pub state: Arc<RunState>,
    pub stats: Arc<Stats>,
    pub vcpus: usize,
    pub button: Arc<PowerButton>,
    /// The disks' transports, in `--disk` order.
    pub disks: Vec<Arc<Mutex<MmioTransport>>>,
    /// The balloon's transport, if the VM has one.
    pub balloon: Option<Arc<Mutex<MmioTransport>>>,
    /// The guest's memory, the most a balloon may ask for.
    pub mem_mib: u64,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("vcpus", &self.vcpus)
            .field("disks", &self.disks.len())
            .finish()
    }
}

impl Controller {
    /// Handles one request line. A shutdown is not done here but returned, so that the
    /// caller writes the reply before the VMM exits (the process ends soon after the stop).
    pub fn handle_line(&self, line: &str) -> (ControlReply, Option<StopReason>) {
        let req = match serde_json::from_str::<ControlRequest>(line.trim()) {
            Ok(r) => r,
            Err(e) => return (ControlReply::err(format!("bad request: {e}")), None),
        };
        let reply = match req {
            ControlRequest::Pause {} => {
                if self.state.pause(self.vcpus) {
                    ControlReply::ok()
                } else {
                    ControlReply::err("vCPUs did not pause within 2 s".into())
                }
            }
            ControlRequest::Resume {} => {
                self.state.resume();
                ControlReply::ok()
            }
            ControlRequest::PowerButton {} => {
                self.button.press();
                ControlReply::ok()
            }
            ControlRequest::CtrlAltDel {} => {
                self.button.ctrl_alt_del();
                ControlReply::ok()
            }
            ControlRequest::Shutdown {} => {
                let why = StopReason::Requested("control socket shutdown".into());
                return (ControlReply::ok(), Some(why));
            }
            ControlRequest::Stats {} => ControlReply {
                stats: Some(self.stats.report()),
                ..ControlReply::ok()
            },
            ControlRequest::ResizeDisk { index } => self.resize_disk(index),
            ControlRequest::Balloon { target_mib } => self.balloon(target_mib),
        };
        (reply, None)
    }

    fn balloon(&self, target_mib: u64) -> ControlReply {
        let Some(t) = &self.balloon else {
            return ControlReply::err("the VM has no balloon (vmm --balloon)".into());
        };
        if target_mib > self.mem_mib {
            return ControlReply::err(format!(
                "balloon target {target_mib} MiB is more than the guest's {} MiB",
                self.mem_mib
            ));
        }
        if lock(t).set_balloon_target(balloon_pages(target_mib)) {
            ControlReply::ok()
        } else {
            ControlReply::err("the balloon's transport carries another device".into())
        }
    }

    fn resize_disk(&self, index: usize) -> ControlReply {
        let Some(disk) = self.disks.get(index) else {
            return ControlReply::err(format!(
                "no disk {index}: the VM has {} disks",
                self.disks.len()
            ));
        };
        match lock(disk).host_resize() {
            Ok(r) => ControlReply {
                disk: Some(DiskResized {
                    index,
                    old_bytes: r.old,
                    new_bytes: r.new,
                }),
                ..ControlReply::ok()
            },
            Err(e) => ControlReply::err(format!(
                "cannot resize disk {index}: {}",
                hull_sys::chain(&e)
            )),
        }
    }
}

/// Most clients served at once; a connection beyond that gets an error line and is closed.
pub const MAX_CLIENTS: usize = 16;

/// One connected client and the part of a request line read so far.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The listening socket and its clients, driven by the VMM's event loop: `accept` when the
/// listener is readable, `serve` when a client is. Sockets are non-blocking, so a slow or
/// silent client never holds the loop up; one that does not read its replies is dropped.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    clients: Vec<Option<Client>>,
    controller: Controller,
}

/// Sends all of `bytes` without blocking; false when the client cannot take them now.
fn send_now(stream: &UnixStream, bytes: &[u8]) -> bool {
    let mut off = 0;
    while off < bytes.len() {
        // SAFETY: sends from a live buffer of the given length on a socket we own.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                bytes[off..].as_ptr().cast(),
                bytes.len() - off,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(n) if n > 0 => off += n,
            _ => return false,
        }
    }
    true
}

fn reply_line(reply: &ControlReply) -> Vec<u8> {
    let mut text = serde_json::to_vec(reply)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"cannot encode reply"}"#.to_vec());
    text.push(b'\n');
    text
}

impl ControlServer {
    /// Binds the socket (replacing a stale one), non-blocking.
    pub fn bind(path: &Path, controller: Controller) -> Result<Self, ControlError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket(path.display().to_string()));
            }
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| ControlError::Bind {
            path: path.display().to_string(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(ControlServer {
            listener,
            clients: Vec::new(),
            controller,
        })
    }

    /// The listening socket, to watch for readability.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts one pending connection: its slot and fd, to watch for readability. `None` when
    /// nothing is pending. Closing a client closes its fd, which leaves epoll by itself.
    pub fn accept(&mut self) -> Option<(usize, RawFd)> {
        loop {
            let stream = accept_nonblocking(&self.listener)?;
            let slot = match self.clients.iter().position(Option::is_none) {
                Some(i) => i,
                None if self.clients.len() < MAX_CLIENTS => {
                    self.clients.push(None);
                    self.clients.len() - 1
                }
                None => {
                    let msg = format!("too many control clients (at most {MAX_CLIENTS})");
                    send_now(&stream, &reply_line(&ControlReply::err(msg)));
                    continue;
                }
            };
            let fd = stream.as_raw_fd();
            self.clients[slot] = Some(Client {
                stream,
                buf: Vec::new(),
            });
            return Some((slot, fd));
        }
    }

    /// Reads what client `slot` sent and answers each complete line. A client that hung up,
    /// sent an over-long line or cannot take its replies is closed.
    pub fn serve(&mut self, slot: usize) {
        let Some(Some(client)) = self.clients.get_mut(slot) else {
            return;
        };
        if !Self::serve_client(&self.controller, client) {
            self.clients[slot] = None;
        }
    }

    /// Number of connected clients (tests).
    #[cfg(test)]
    fn client_count(&self) -> usize {
        self.clients.iter().flatten().count()
    }

    fn serve_client(controller: &Controller, client: &mut Client) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            let n = match (&client.stream).read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            client.buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = client.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = client.buf.drain(..=end).collect();
                let (reply, stop) = match std::str::from_utf8(&line) {
                    Ok(text) => controller.handle_line(text),
                    Err(_) => (ControlReply::err("bad request: not UTF-8".into()), None),
                };
                let sent = send_now(&client.stream, &reply_line(&reply));
                if let Some(why) = stop {
                    controller.state.stop(why);
                }
                if !sent {
                    return false;
                }
            }
            if client.buf.len() as u64 > MAX_LINE {
                let msg = format!("request longer than {MAX_LINE} bytes");
                send_now(&client.stream, &reply_line(&ControlReply::err(msg)));
                return false;
            }
        }
    }
}

/// Accepts one pending connection on `listener`, non-blocking. accept4 with SOCK_NONBLOCK:
/// std's set_nonblocking would be an ioctl, which the main thread's filter does not allow.
pub(crate) fn accept_nonblocking(listener: &UnixListener) -> Option<UnixStream> {
    // SAFETY: accept4 on our listening socket without a peer address; checked below.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a new connected socket owned by nothing else.
    Some(unsafe { UnixStream::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    fn controller() -> Controller {
        Controller {
            state: RunState::new().unwrap(),
            stats: Arc::new(Stats::new(1)),
            vcpus: 0,
            button: Arc::new(PowerButton::for_tests()),
            disks: Vec::new(),
            balloon: None,
            mem_mib: 128,
        }
    }

    #[test]
    fn balloon_sets_the_target_within_the_guest_and_stats_show_it() {
        use crate::devices::virtio::balloon::{Balloon, DontNeed};
        use crate::devices::virtio::mmio::Interrupt;
        let mut c = controller();
        let r = c.handle_line(r#"{"cmd":"balloon","target_mib":8}"#).0;
        assert_eq!(
            r.error.as_deref(),
            Some("the VM has no balloon (vmm --balloon)")
        );
        let s = c.stats.balloon.get_or_init(Default::default).clone();
        let t = MmioTransport::new(
            Box::new(Balloon::new(s, Box::new(DontNeed))),
            crate::devices::virtio::testutil::mem(),
            Interrupt::new().unwrap(),
        )
        .unwrap();
        c.balloon = Some(Arc::new(Mutex::new(t)));
        assert!(c.handle_line(r#"{"cmd":"balloon","target_mib":8}"#).0.ok);
        let b = c.stats.report().balloon.unwrap();
        assert_eq!((b.target_bytes, b.actual_bytes), (8 << 20, 0));
        let r = c.handle_line(r#"{"cmd":"balloon","target_mib":129}"#).0;
        assert_eq!(
            r.error.as_deref(),
            Some("balloon target 129 MiB is more than the guest's 128 MiB")
        );
        assert_eq!(c.stats.report().balloon.unwrap().target_bytes, 8 << 20);
        for bad in [
            r#"{"cmd":"balloon"}"#,
            r#"{"cmd":"balloon","target_mib":-1}"#,
            r#"{"cmd":"balloon","target":1}"#,
        ] {
            let r = c.handle_line(bad).0;
            assert!(r.error.unwrap().starts_with("bad request"), "{bad}");
        }
    }

    #[test]
    fn resize_disk_takes_the_grown_image_and_refuses_the_rest() {
        use crate::devices::virtio::block::Block;
        use crate::devices::virtio::mmio::{INT_CONFIG, Interrupt};
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let mut c = controller();
        let stats = c.stats.disk("vda".into());
        let block = Block::open(f.path(), true, "d", stats).unwrap();
        let interrupt = Interrupt::new().unwrap();
        let t = MmioTransport::new(
            Box::new(block),
            crate::devices::virtio::testutil::mem(),
            interrupt.clone(),
        )
        .unwrap();
        c.disks.push(Arc::new(Mutex::new(t)));
        f.as_file().set_len(3 << 20).unwrap();
        let (r, stop) = c.handle_line(r#"{"cmd":"resize_disk","index":0}"#);
        assert!(stop.is_none());
        assert_eq!(
            r.disk,
            Some(DiskResized {
                index: 0,
                old_bytes: 1 << 20,
                new_bytes: 3 << 20
            }),
            "{r:?}"
        );
        // The driver is not up: no interrupt, but the stats show the size.
        let isr = interrupt.status.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(isr & INT_CONFIG, 0);
        let report = c.stats.report();
        assert_eq!(report.devices[0].capacity_bytes, Some(3 << 20));
        let line = String::from_utf8(reply_line(&r)).unwrap();
        assert!(
            line.contains(r#""disk":{"index":0,"old_bytes":1048576,"new_bytes":3145728}"#),
            "{line}"
        );

        let r = c.handle_line(r#"{"cmd":"resize_disk","index":1}"#).0;
        assert_eq!(r.error.as_deref(), Some("no disk 1: the VM has 1 disks"));
        f.as_file().set_len(1 << 20).unwrap();
        let r = c.handle_line(r#"{"cmd":"resize_disk","index":0}"#).0;
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("shrank from 3145728 to 1048576"));
        for bad in [
            r#"{"cmd":"resize_disk"}"#,
            r#"{"cmd":"resize_disk","index":-1}"#,
            r#"{"cmd":"resize_disk","index":0,"size":5}"#,
            r#"{"cmd":"stats","index":0}"#,
        ] {
            let r = c.handle_line(bad).0;
            assert!(r.error.unwrap().starts_with("bad request"), "{bad}");
        }
    }

    #[test]
    fn commands_parse_and_act() {
        let c = controller();
        assert!(c.handle_line(r#"{"cmd":"pause"}"#).0.ok);
        assert!(c.state.paused());
        assert!(c.handle_line(r#"{"cmd":"resume"}"#).0.ok);
        assert!(!c.state.paused());
        let (s, _) = c.handle_line(r#"{"cmd":"stats"}"#);
        assert_eq!(s.stats.unwrap().vcpus.len(), 1);
        assert!(c.handle_line(r#"{"cmd":"power_button"}"#).0.ok);
        assert!(c.handle_line(r#"{"cmd":"ctrl_alt_del"}"#).0.ok);
        assert_eq!(c.button.pending(), 1);
        // The shutdown is handed back, to be done once the reply is out.
        let (r, stop) = c.handle_line(r#"{"cmd":"shutdown"}"#);
        assert!(r.ok);
        assert!(matches!(stop, Some(StopReason::Requested(_))));
        assert!(!c.state.stopping());
    }

    #[test]
    fn junk_gets_an_error_reply() {
        let c = controller();
        for bad in [
            "",
            "{",
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"pause","x":1}"#,
            "\u{0}",
        ] {
            let (r, stop) = c.handle_line(bad);
            assert!(stop.is_none());
            assert!(!r.ok, "{bad:?}");
            assert!(r.error.unwrap().starts_with("bad request"));
        }
    }

    fn read_reply(r: &mut BufReader<UnixStream>) -> String {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    }

    #[test]
    fn socket_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let mut server = ControlServer::bind(&path, controller()).unwrap();
        assert!(server.accept().is_none(), "nobody connected yet");
        let mut a = UnixStream::connect(&path).unwrap();
        let b = UnixStream::connect(&path).unwrap();
        let (sa, _) = server.accept().unwrap();
        let (sb, _) = server.accept().unwrap();
        assert_ne!(sa, sb);
        // Two requests in one write, the second split across two reads of the server.
        a.write_all(b"{\"cmd\":\"stats\"}\nnot js").unwrap();
        server.serve(sa);
        a.write_all(b"on\n").unwrap();
        server.serve(sa);
        let mut ra = BufReader::new(a);
        let l1 = read_reply(&mut ra);
        assert!(
            l1.contains("\"ok\":true") && l1.contains("\"vcpus\""),
            "{l1}"
        );
        assert!(read_reply(&mut ra).contains("\"ok\":false"));
        // A silent client holds nobody up; a shutdown is answered, then done.
        (&b).write_all(b"{\"cmd\":\"shutdown\"}\n").unwrap();
        server.serve(sb);
        assert!(read_reply(&mut BufReader::new(b)).contains("\"ok\":true"));
        assert!(server.controller.state.stopping());
        // Hang-ups and over-long lines close the client.
        drop(ra);
        server.serve(sa);
        assert_eq!(server.client_count(), 1);
        let mut c = UnixStream::connect(&path).unwrap();
        let (sc, _) = server.accept().unwrap();
        c.write_all(&[b'x'; 5000]).unwrap();
        server.serve(sc);
        let l = read_reply(&mut BufReader::new(c));
        assert!(l.contains("longer than 4096"), "{l}");
        assert_eq!(server.client_count(), 1);
        // A regular file in the way is not replaced.
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            ControlServer::bind(&f, controller()),
            Err(ControlError::NotASocket(_))
        ));
    }

    #[test]
    fn clients_beyond_the_limit_are_turned_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let mut server = ControlServer::bind(&path, controller()).unwrap();
        let mut kept = Vec::new();
        for _ in 0..MAX_CLIENTS {
            kept.push(UnixStream::connect(&path).unwrap());
            assert!(server.accept().is_some());
        }
        let extra = UnixStream::connect(&path).unwrap();
        assert!(server.accept().is_none());
        let l = read_reply(&mut BufReader::new(extra));
        assert!(l.contains("too many control clients"), "{l}");
        assert_eq!(server.client_count(), MAX_CLIENTS);
    }
}
