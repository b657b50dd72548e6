//! The guest metadata agent: one for all guests, in vmmd (SmartOS's metadata agent). Each
//! running zone has a listening socket that its zoned made and holds (bound into the zone
//! at /.zonecontrol/metadata.sock); the agent copies that listener out of zoned with
//! pidfd_getfd(2) when the zone starts and again after vmmd restarts, so a guest that
//! connects while vmmd is away waits in the backlog instead of failing. A microVM's line is
//! its COM2: the agent connects to the VMM's `--metadata` socket and keeps that one
//! connection (the VMM holds what the guest writes while no agent is connected).
//!
//! Every byte from a guest is untrusted: lines are bounded ([`hull_mdata::MAX_REQUEST_LINE`],
//! a longer one ends the connection), frames with a bad length or CRC are dropped, each
//! guest has a few connections at most and a request rate ([`RATE`]) past which its
//! requests wait, so one guest's flood never slows another's answers. Writes go through
//! [`Service::update`]: one crash-safe record write and an event, as `vmadm update`.

pub mod keys;

use std::collections::HashMap;
use std::os::unix::net::UnixListener as StdListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_mdata::{Answer, Incoming, Refusal, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::service::{EndpointKind, MetadataEndpoint, Service};
pub use keys::HostFacts;

/// Connections one guest may have open at once; more wait in its backlog.
pub const MAX_CONNECTIONS: usize = 8;
/// Requests per second a guest may make before its requests wait (and the burst allowed).
pub const RATE: f64 = 200.0;
const BURST: f64 = 400.0;
/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(300);
/// How often the agent checks that it serves exactly the running zones (events do this at
/// once; this catches what a lagging event stream missed).
const RESYNC: Duration = Duration::from_secs(30);

/// The metadata agent.
#[derive(Debug)]
pub struct Agent {
    service: Arc<Service>,
    host: HostFacts,
    served: Mutex<HashMap<Uuid, Served>>,
    /// Requests being answered now (a shutdown lets them finish).
    busy: AtomicUsize,
}

#[derive(Debug)]
struct Served {
    /// zoned's pid and start time: the listener lives as long as that process.
    zoned: (i32, u64),
    accept: tokio::task::AbortHandle,
}

impl Agent {
    /// An agent answering from `service`'s records.
    pub fn new(service: Arc<Service>, host: HostFacts) -> Arc<Agent> {
        Arc::new(Agent {
            service,
            host,
            served: Mutex::new(HashMap::new()),
            busy: AtomicUsize::new(0),
        })
    }

    /// Serves every running zone, and follows guests' events until vmmd stops.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.service.subscribe();
        self.resync();
        let mut tick = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => self.reconcile(ev.uuid),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.resync(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => self.resync(),
            }
        }
    }

    /// Stops taking connections and waits, up to `limit`, for requests being answered.
    pub async fn drain(&self, limit: Duration) {
        for (_, s) in self.lock().drain() {
            s.accept.abort();
        }
        let deadline = Instant::now() + limit;
        while self.busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The guests served now.
    pub fn serving(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Served>> {
        self.served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn resync(self: &Arc<Self>) {
        let mut uuids: Vec<Uuid> = self.service.list(&[]).iter().map(|r| r.vm.uuid).collect();
        uuids.extend(self.serving());
        uuids.sort();
        uuids.dedup();
        for uuid in uuids {
            self.reconcile(uuid);
        }
    }

    /// Serves the guest's listener if its zone runs, and stops serving it if not.
    fn reconcile(self: &Arc<Self>, uuid: Uuid) {
        let want = self.service.metadata_endpoint(uuid);
        let mut served = self.lock();
        match (served.get(&uuid), want) {
            (Some(s), Some(w)) if s.zoned == (w.zoned_pid, w.zoned_start) => {}
            (_, Some(w)) => {
                if let Some(old) = served.remove(&uuid) {
                    old.accept.abort();
                }
                let agent = self.clone();
                let task = match &w.kind {
                    EndpointKind::ZoneListener { fd } => {
                        take_listener(&w, *fd).map(|l| tokio::spawn(agent.accept(uuid, l)))
                    }
                    EndpointKind::VmmSocket { path } => {
                        Ok(tokio::spawn(agent.serial_line(uuid, path.clone())))
                    }
                };
                match task {
                    Ok(task) => {
                        served.insert(
                            uuid,
                            Served {
                                zoned: (w.zoned_pid, w.zoned_start),
                                accept: task.abort_handle(),
                            },
                        );
                        tracing::debug!(%uuid, "serving the guest's metadata");
                    }
                    Err(e) => {
                        tracing::warn!(%uuid, error = %e, "cannot take the guest's metadata listener from its zoned");
                    }
                }
            }
            (Some(_), None) => {
                if let Some(old) = served.remove(&uuid) {
                    old.accept.abort();
                }
            }
            (None, None) => {}
        }
    }

    async fn accept(self: Arc<Self>, uuid: Uuid, listener: UnixListener) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let bucket = Arc::new(tokio::sync::Mutex::new(Bucket::new()));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let agent = self.clone();
                    let bucket = bucket.clone();
                    tokio::spawn(async move {
                        agent.connection(uuid, stream, &bucket, Some(IDLE)).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(%uuid, error = %e, "accepting a metadata connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// A microVM's COM2: one long connection to its VMM, made again whenever it ends (a
    /// guest reboot starts a new VMM) for as long as the guest's zone runs.
    async fn serial_line(self: Arc<Self>, uuid: Uuid, path: std::path::PathBuf) {
        let bucket = tokio::sync::Mutex::new(Bucket::new());
        loop {
            if let Ok(stream) = UnixStream::connect(&path).await {
                tracing::debug!(%uuid, "connected to the microVM's COM2");
                self.connection(uuid, stream, &bucket, None).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Answers one connection's requests until it ends (or, with `idle`, goes quiet).
    async fn connection(
        &self,
        uuid: Uuid,
        stream: UnixStream,
        bucket: &tokio::sync::Mutex<Bucket>,
        idle: Option<Duration>,
    ) {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut line = Vec::new();
        loop {
            line.clear();
            let limit = hull_mdata::MAX_REQUEST_LINE as u64;
            let mut bounded = (&mut read).take(limit);
            let next = bounded.read_until(b'\n', &mut line);
            let got = match idle {
                Some(idle) => tokio::time::timeout(idle, next).await,
                None => Ok(next.await),
            };
            match got {
                Ok(Ok(n)) if n > 0 && line.last() == Some(&b'\n') => {}
                Ok(Ok(n)) if n as u64 >= limit => {
                    tracing::warn!(%uuid, "a metadata request line longer than {limit} bytes: closing the connection");
                    return;
                }
                // EOF (perhaps mid-line), an error or a guest that went quiet.
                _ => return,
            }
            line.pop();
            bucket.lock().await.take().await;
            self.busy.fetch_add(1, Ordering::SeqCst);
            let reply = self.answer(uuid, &line).await;
            let written = match reply {
                Some(reply) => write.write_all(&reply).await.is_ok(),
                None => true,
            };
            self.busy.fetch_sub(1, Ordering::SeqCst);
            if !written {
                return;
            }
        }
    }

    /// The reply to one line from the guest (None: the frame is dropped unanswered).
    async fn answer(&self, uuid: Uuid, line: &[u8]) -> Option<Vec<u8>> {
        match hull_mdata::parse_request(line) {
            Incoming::InvalidCommand => Some(hull_mdata::INVALID_COMMAND.to_vec()),
            Incoming::Negotiate { v2 } => Some(hull_mdata::encode_negotiate(v2).to_vec()),
            Incoming::Dropped(e) => {
                tracing::debug!(%uuid, error = %e, "dropped a metadata frame");
                None
            }
            Incoming::V1(request) => Some(hull_mdata::encode_v1(&self.handle(uuid, request).await)),
            Incoming::V2 { reqid, request } => Some(hull_mdata::encode_v2(
                &reqid,
                &self.handle(uuid, request).await,
            )),
        }
    }

    async fn handle(&self, uuid: Uuid, request: Result<Request, Refusal>) -> Answer {
        let request = match request {
            Ok(r) => r,
            Err(refusal) => return Answer::Failure(refusal.to_string()),
        };
        let record = match self.service.get(uuid) {
            Ok(r) => r,
            Err(e) => return Answer::Failure(e.to_string()),
        };
        let (key, value) = match &request {
            Request::Get(key) => return keys::get(&record.value, &self.host, key),
            Request::Keys => return keys::keys(&record.value),
            Request::Put { key, value } => (key, Some(value.as_str())),
            Request::Delete(key) => (key, None),
        };
        let payload = match keys::write(&record.value, key, value) {
            Ok(p) => p,
            Err(why) => return Answer::Failure(why),
        };
        tracing::info!(%uuid, key = %key, "the guest changed its metadata");
        match self.service.update(uuid, &payload).await {
            Ok(_) => Answer::Value("OK".into()),
            Err(e) => Answer::Failure(hull_sys::chain(&e)),
        }
    }
}

/// The host's uuid as guests read it (`sdc:server_uuid`): the firmware's (SMBIOS) where it
/// has a real one, as SmartOS uses, else the systemd machine id's 128 bits.
pub fn server_uuid() -> Option<String> {
    let firmware = std::fs::read_to_string("/sys/class/dmi/id/product_uuid")
        .ok()
        .and_then(|s| Uuid::parse_str(s.trim()).ok())
        .filter(|u| !u.is_nil() && !u.is_max());
    let machine = || {
        std::fs::read_to_string("/etc/machine-id")
            .ok()
            .and_then(|s| Uuid::try_parse(s.trim()).ok())
    };
    firmware.or_else(machine).map(|u| u.to_string())
}

/// A copy of the zone's metadata listener, taken from its zoned (which must still be the
/// process the state file names).
fn take_listener(w: &MetadataEndpoint, fd: i32) -> std::io::Result<UnixListener> {
    let pidfd = hull_sys::process::pidfd(w.zoned_pid)?;
    // The pidfd pins the process: checked after it is open, a reused pid cannot pass.
    if !hull_sys::process::same_process(w.zoned_pid, w.zoned_start) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the zone's zoned is gone",
        ));
    }
    let fd = hull_sys::process::getfd(&pidfd, fd)?;
    let listener = StdListener::from(fd);
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// A token bucket: [`RATE`] requests a second, [`BURST`] at once.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            tokens: BURST,
            at: Instant::now(),
        }
    }

    /// Takes a token, waiting for one if the guest has used them all.
    async fn take(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * RATE).min(BURST);
        self.at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / RATE);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.at = Instant::now();
        }
        self.tokens -= 1.0;
    }
}
