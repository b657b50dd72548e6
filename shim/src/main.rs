//! containerd-shim-hull-v2: containerd's runtime v2 shim for hull (runtime name
//! `io.containerd.hull.v2`). A thin translator, never a second runtime: each task is a zone
//! vmmd makes from containerd's OCI bundle (`oci_bundle`, docs/zones.md), starts, watches and
//! deletes; vmmd and zoned supervise it, so the shim holds nothing a restart of vmmd or
//! containerd could lose (a task's zone is found again by its uuid, derived from the
//! namespace and the id).
//!
//! Create, start, wait (a watcher per task records the exit whether or not a Wait is
//! pending), kill, delete, state, pids, exec (zoned exec, module [`exec`]), pause and resume
//! (vmmd freezes the zone), stats (vmmd's usage as cgroup v2 metrics), update (module
//! [`resources`]), a terminal's resize (the console's, or an exec's host pty), connect and
//! shutdown. The zone's output is copied into containerd's stdout FIFO (its stdout and
//! stderr are one pipe), or with a terminal the console is relayed both ways. A pod's files
//! from containerd's CRI are bound into the bundle (module [`cri`]); annotations may give
//! the zone a hull NIC (module [`network`]). Checkpoints answer "not implemented".
//! docs/containerd.md has the whole mapping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe};
use containerd_shim::asynchronous::{ExitSignal, Shim, run, spawn};
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    Config, DeleteResponse, Error, Flags, StartOpts, Task, TtrpcContext, TtrpcResult, api,
};
use hull_client::Client;
use hull_spec::{Vm, VmState};
use tokio::sync::Mutex;
use uuid::Uuid;

mod cri;
mod exec;
mod keeper;
mod network;
mod resources;
use exec::{ExecProcess, ExecSpec};

/// The runtime's name, as containerd's config names it.
const RUNTIME: &str = "io.containerd.hull.v2";

/// How often a running task's output is copied (and at once when it ends).
const POLL: Duration = Duration::from_millis(50);

/// The zone of task `id` in containerd namespace `ns`: the same uuid every time, so that a
/// shim started again (or `delete` after a crash) finds it.
fn zone_uuid(ns: &str, id: &str) -> Uuid {
    const HULL: Uuid = Uuid::from_u128(0x5d1e_7a3c_9b2f_4e6d_8a10_c4f2_b7e9_0a13);
    Uuid::new_v5(&HULL, format!("containerd/{ns}/{id}").as_bytes())
}

/// A ttrpc error carrying `what` (containerd shows it to the user).
fn fail(what: impl std::fmt::Display) -> containerd_shim::protos::ttrpc::Error {
    Error::Other(what.to_string()).into()
}

/// The error for a request naming an exec process task `id` does not have.
fn no_exec(id: &str, exec_id: &str) -> containerd_shim::protos::ttrpc::Error {
    fail(format!("no exec {exec_id} in task {id}"))
}

/// The error for a request naming a task this shim does not hold.
fn no_task(id: &str) -> containerd_shim::protos::ttrpc::Error {
    fail(format!("no task {id} in this shim"))
}

/// Exec `exec_id` of task `id`, or the error naming which is missing.
fn exec_of<'a>(
    tasks: &'a HashMap<String, TaskState>,
    id: &str,
    exec_id: &str,
) -> Result<&'a ExecProcess, containerd_shim::protos::ttrpc::Error> {
    let t = tasks.get(id).ok_or_else(|| no_task(id))?;
    t.execs.get(exec_id).ok_or_else(|| no_exec(id, exec_id))
}

fn not_implemented(what: &str) -> containerd_shim::protos::ttrpc::Error {
    Error::Unimplemented(format!(
        "{what} is not implemented by hull's shim yet (containers run as hull zones)"
    ))
    .into()
}

/// vmmd's socket: `HULL_SOCKET` in containerd's environment, else vmmd's default.
fn client() -> Result<Client, containerd_shim::protos::ttrpc::Error> {
    Client::new(hull_client::socket_path(None)).map_err(|e| fail(format!("vmmd: {e}")))
}

/// vmmd's error with the causes it gave (`cannot start zone U: <why>`).
fn vmmd_error(e: &hull_client::ClientError) -> String {
    match e.api_body() {
        Some(b) if !b.causes.is_empty() => format!("vmmd: {}: {}", b.message, b.causes.join(": ")),
        _ => format!("vmmd: {}", hull_sys::chain(e)),
    }
}

/// Runs a blocking call to vmmd off the shim's async threads.
async fn vmmd<T: Send + 'static>(
    f: impl FnOnce(&Client) -> Result<T, hull_client::ClientError> + Send + 'static,
) -> TtrpcResult<T> {
    tokio::task::spawn_blocking(move || {
        let c = client()?;
        f(&c).map_err(|e| fail(vmmd_error(&e)))
    })
    .await
    .map_err(|e| fail(format!("vmmd call: {e}")))?
}

fn timestamp() -> Timestamp {
    Timestamp::now()
}

/// One task: its zone and containerd's FIFOs.
struct TaskState {
    uuid: Uuid,
    bundle: String,
    stdout: String,
    stdin: String,
    stderr: String,
    terminal: bool,
    pid: u32,
    /// Set once the zone has run and stopped: (exit status, when); the task's watcher sets
    /// it, whether or not a Wait is pending.
    exited: tokio::sync::watch::Sender<Option<(u32, Timestamp)>>,
    /// Whether the shim mounted the rootfs (and so unmounts it at delete).
    mounted: bool,
    /// Further processes run in the zone (`ctr task exec`), by exec id.
    execs: HashMap<String, ExecProcess>,
}

/// What a worker knows of its task, kept in the bundle so that the next worker (started by
/// the keeper, module [`keeper`]) takes the task up: written at create, start and exit,
/// removed at delete.
const TASK_FILE: &str = "hull-task.json";
/// How much of the zone's output is in containerd's stdout FIFO (a decimal byte count).
const COPIED_FILE: &str = "hull-task.copied";

/// Writes `bytes` to `dir/name` whole (a crash leaves the old file or the new one).
fn write_whole(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    let done = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if let Err(e) = done {
        log::warn!("{}: {e}", dir.join(name).display());
    }
}

impl TaskState {
    /// Records the task in its bundle for a worker started after this one.
    fn save(&self, id: &str) {
        let exited = self.exited.borrow().clone();
        let record = serde_json::json!({
            "id": id, "stdin": self.stdin, "stdout": self.stdout, "stderr": self.stderr,
            "terminal": self.terminal, "mounted": self.mounted, "pid": self.pid,
            "exit_status": exited.as_ref().map(|e| e.0),
            "exited_at": exited.map(|(_, at)| [at.seconds, i64::from(at.nanos)]),
        });
        write_whole(
            Path::new(&self.bundle),
            TASK_FILE,
            record.to_string().as_bytes(),
        );
    }

    /// The task a worker before this one recorded in `bundle`, with how much of its output
    /// was copied; `None` when there is none.
    fn load(bundle: &str, namespace: &str) -> Option<(String, TaskState, usize)> {
        let dir = Path::new(bundle);
        let bytes = std::fs::read(dir.join(TASK_FILE)).ok()?;
        let v: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("{}: {e}", dir.join(TASK_FILE).display());
                return None;
            }
        };
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let id = text("id");
        if id.is_empty() {
            return None;
        }
        let exited = v["exit_status"].as_u64().map(|status| {
            let at = &v["exited_at"];
            let mut ts = Timestamp::new();
            ts.seconds = at[0].as_i64().unwrap_or_default();
            ts.nanos = at[1].as_i64().unwrap_or_default() as i32;
            (status as u32, ts)
        });
        let copied = std::fs::read_to_string(dir.join(COPIED_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let t = TaskState {
            uuid: zone_uuid(namespace, &id),
            bundle: bundle.to_string(),
            stdin: text("stdin"),
            stdout: text("stdout"),
            stderr: text("stderr"),
            terminal: v["terminal"].as_bool().unwrap_or(false),
            pid: v["pid"].as_u64().unwrap_or(0) as u32,
            exited: tokio::sync::watch::channel(exited).0,
            mounted: v["mounted"].as_bool().unwrap_or(false),
            execs: HashMap::new(),
        };
        Some((id, t, copied))
    }
}

#[derive(Clone)]
struct Service {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: String,
    tasks: Arc<Mutex<HashMap<String, TaskState>>>,
    publisher: Option<Arc<RemotePublisher>>,
}

impl Service {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(p) = &self.publisher
            && let Err(e) = p
                .publish(Default::default(), topic, &self.namespace, event)
                .await
        {
            log::warn!("publishing {topic}: {e}");
        }
    }
}

/// The exit status containerd expects: the process's, or 128 + the signal that ended it.
fn exit_status(vm: &Vm) -> u32 {
    vm.exit_status.map_or(255, |s| s as u32)
}

/// Copies what the (started) zone writes into the FIFO at `path` until it has stopped and
/// all it wrote is copied, from byte `copied` of its log on, recording in `bundle` how far
/// it got. A worker taking the task up (`resumed`) copies only while containerd still reads
/// the FIFO: it does not wait for a reader that may be gone.
async fn copy_output(
    uuid: Uuid,
    path: String,
    bundle: String,
    mut copied: usize,
    resumed: bool,
    ended: Arc<tokio::sync::Notify>,
) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fifo = tokio::task::spawn_blocking(move || {
        let flags = if resumed { libc::O_NONBLOCK } else { 0 };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(flags)
            .open(&path)?;
        if resumed {
            // Writes block again once it is open, as a first worker's do.
            let fl = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL)?;
            let fl = nix::fcntl::OFlag::from_bits_truncate(fl) - nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(fl))?;
        }
        Ok::<_, std::io::Error>(f)
    })
    .await;
    let Ok(Ok(mut fifo)) = fifo else {
        log::warn!("cannot open the stdout FIFO of {uuid}");
        return;
    };
    loop {
        let look = tokio::task::spawn_blocking(move || {
            let c = Client::new(hull_client::socket_path(None))?;
            let stopped = c.get_vm(uuid)?.state == VmState::Stopped;
            let mut out = Vec::new();
            c.logs(uuid, &mut out)?;
            Ok::<_, hull_client::ClientError>((stopped, out))
        })
        .await;
        let (stopped, logs) = match look {
            Ok(Ok(l)) => l,
            // vmmd restarting: the log is still there once it answers again.
            Ok(Err(e)) if transient(&e) => {
                tokio::time::sleep(VMMD_RETRY).await;
                continue;
            }
            _ => return,
        };
        // A log that shrank was rotated (zoned keeps 1 MiB): copy the new one whole.
        if logs.len() < copied {
            copied = 0;
        }
        if logs.len() > copied {
            if fifo.write_all(&logs[copied..]).is_err() {
                return;
            }
            copied = logs.len();
            write_whole(
                Path::new(&bundle),
                COPIED_FILE,
                copied.to_string().as_bytes(),
            );
        }
        if stopped {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = ended.notified() => {}
        }
    }
}

/// How long the console relay goes on after the zone stopped, for what zoned still holds.
const CONSOLE_DRAIN: Duration = Duration::from_secs(2);

/// A connection to the console socket of `uuid`'s zone (vmmd names where it is); `None`,
/// logged, when there is none.
async fn console_of(uuid: Uuid) -> Option<tokio::net::UnixStream> {
    let Ok(rt) = vmmd(move |c| c.runtime(uuid)).await else {
        log::warn!("no console for {uuid}");
        return None;
    };
    match tokio::net::UnixStream::connect(&rt.console).await {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("console of {uuid}: {e}");
            None
        }
    }
}

/// Relays a terminal task's console (zoned's console socket, which replays what the zone
/// wrote before it was reached) into containerd's stdout FIFO, and its stdin FIFO into the
/// console, until zoned closes the console or a moment after the zone stopped.
async fn relay_console(uuid: Uuid, stdin: String, stdout: String, ended: Arc<tokio::sync::Notify>) {
    use tokio::net::unix::pipe;
    let Some(sock) = console_of(uuid).await else {
        return;
    };
    let (mut from_zone, mut to_zone) = sock.into_split();
    let input = (!stdin.is_empty()).then(|| {
        tokio::spawn(async move {
            if let Ok(mut f) = pipe::OpenOptions::new().open_receiver(&stdin) {
                let _ = tokio::io::copy(&mut f, &mut to_zone).await;
            }
        })
    });
    if let Ok(mut out) = pipe::OpenOptions::new().open_sender(&stdout) {
        let copy = tokio::io::copy(&mut from_zone, &mut out);
        let drained = async {
            ended.notified().await;
            tokio::time::sleep(CONSOLE_DRAIN).await;
        };
        tokio::select! {
            _ = copy => {}
            _ = drained => {}
        }
    }
    if let Some(i) = input {
        i.abort();
    }
}

/// Copies containerd's stdin FIFO of a task without a terminal into its zone's console
/// socket, which zoned writes into the process's stdin pipe (`docker:openstdin`); the
/// FIFO's end closes the socket, which is the process's EOF. What zoned sends back (the
/// output, which `copy_output` takes from the log) is read and dropped.
async fn relay_stdin(uuid: Uuid, stdin: String) {
    use tokio::io::AsyncReadExt;
    let Some(sock) = console_of(uuid).await else {
        return;
    };
    let (mut from_zone, mut to_zone) = sock.into_split();
    let drop_output = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while matches!(from_zone.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    // Opened blocking (until ctr or kubelet opens its end): a FIFO opened without a writer
    // reads as ended at once, which would be the process's EOF before its input.
    let opened = tokio::task::spawn_blocking(move || std::fs::File::open(&stdin)).await;
    if let Ok(Ok(f)) = opened
        && let Ok(mut f) = tokio::net::unix::pipe::Receiver::from_file(f)
    {
        let _ = tokio::io::copy(&mut f, &mut to_zone).await;
    }
    drop(to_zone);
    drop_output.abort();
}

/// Whether `e` says vmmd could not be reached or answered mid-way (it is restarting): the
/// zone runs on under zoned, and asking again later is right. vmmd's own answers (no such
/// VM) are final.
fn transient(e: &hull_client::ClientError) -> bool {
    !matches!(e, hull_client::ClientError::Api { .. })
}

/// How long a look at vmmd waits after it could not be reached.
const VMMD_RETRY: Duration = Duration::from_millis(500);

/// Blocks until zone `uuid` is stopped, through restarts of vmmd (asked again until it
/// answers).
fn wait_stopped(uuid: Uuid) -> Result<Vm, hull_client::ClientError> {
    loop {
        match wait_stopped_once(uuid) {
            Err(e) if transient(&e) => std::thread::sleep(VMMD_RETRY),
            r => return r,
        }
    }
}

/// Blocks until zone `uuid` is stopped, woken by vmmd's event stream (subscribed before the
/// first look, so no stop is missed; looked at again every second should the stream fail).
fn wait_stopped_once(uuid: Uuid) -> Result<Vm, hull_client::ClientError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let events = Client::new(hull_client::socket_path(None))?;
    std::thread::spawn(move || {
        let _ = events.events(
            Some(uuid),
            false,
            || {
                let _ = ready_tx.send(());
            },
            |line| {
                let stopped = serde_json::from_str::<hull_spec::Event>(line)
                    .is_ok_and(|e| e.state == Some(VmState::Stopped));
                // Ends with the first stop, or once nobody listens.
                tx.send(()).is_ok() && !stopped
            },
        );
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    let c = Client::new(hull_client::socket_path(None))?;
    loop {
        let vm = c.get_vm(uuid)?;
        if vm.state == VmState::Stopped {
            return Ok(vm);
        }
        let _ = rx.recv_timeout(Duration::from_secs(1));
    }
}

/// vmmd's usage figures as containerd's cgroup v2 metrics (absent figures are 0, an absent
/// limit is 0 as runc's "max" is).
fn metrics(u: &hull_spec::api::Usage) -> containerd_shim::protos::cgroups_v2::metrics::Metrics {
    use containerd_shim::protos::cgroups_v2::metrics::{
        CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
    };
    let us = |ns: Option<u64>| ns.unwrap_or(0) / 1000;
    Metrics {
        pids: Some(PidsStat {
            current: u.pids.unwrap_or(0),
            limit: u.pids_limit.unwrap_or(0),
            ..Default::default()
        })
        .into(),
        cpu: Some(CPUStat {
            usage_usec: us(u.cpu_usage_ns),
            user_usec: us(u.cpu_user_ns),
            system_usec: us(u.cpu_system_ns),
            nr_periods: u.cpu_periods.unwrap_or(0),
            nr_throttled: u.cpu_throttled_periods.unwrap_or(0),
            throttled_usec: us(u.cpu_throttled_ns),
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStat {
            anon: u.memory_anon_bytes.unwrap_or(0),
            file: u.memory_file_bytes.unwrap_or(0),
            usage: u.memory_bytes.unwrap_or(0),
            usage_limit: u.memory_limit_bytes.unwrap_or(0),
            swap_usage: u.swap_bytes.unwrap_or(0),
            swap_limit: u.swap_limit_bytes.unwrap_or(0),
            ..Default::default()
        })
        .into(),
        memory_events: Some(MemoryEvents {
            max: u.memory_limit_hits.unwrap_or(0),
            oom_kill: u.oom_kills.unwrap_or(0),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

impl Service {
    /// Watches a started task's zone until it stops (across restarts of vmmd), then lets
    /// the copy of its output finish, records its exit status for Wait, State and Delete,
    /// and tells containerd (TaskExit).
    async fn watch(
        self,
        id: String,
        uuid: Uuid,
        pid: u32,
        copier: Option<(tokio::task::JoinHandle<()>, Arc<tokio::sync::Notify>)>,
    ) {
        let vm = tokio::task::spawn_blocking(move || wait_stopped(uuid)).await;
        let status = match vm {
            Ok(Ok(vm)) => exit_status(&vm),
            Ok(Err(e)) => {
                log::warn!("task {id}: {}", hull_sys::chain(&e));
                255
            }
            Err(_) => 255,
        };
        // All the zone wrote is in the FIFO before containerd hears it ended.
        if let Some((c, ended)) = copier {
            ended.notify_one();
            let _ = c.await;
        }
        let at = timestamp();
        if let Some(t) = self.tasks.lock().await.get(&id) {
            t.exited.send_replace(Some((status, at.clone())));
            t.save(&id);
        }
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.clone(),
                id,
                pid,
                exit_status: status,
                exited_at: Some(at).into(),
                ..Default::default()
            }),
        )
        .await;
    }

    /// Copies a started task's output (from byte `copied` of its log), relays its stdin or
    /// terminal, and watches it until it stops. `resumed`: a worker taking the task up
    /// after another.
    fn supervise(&self, id: &str, t: &TaskState, copied: usize, resumed: bool) {
        let uuid = t.uuid;
        // The zone's output is kept in its log from its start on: copied from there, nothing
        // it writes first is missed.
        // With a terminal (`ctr run -t`) the zone's process has the console's pty: its
        // socket is relayed both ways (stdin too); otherwise its output pipe's log is copied.
        let copier = (!t.stdout.is_empty()).then(|| {
            let ended = Arc::new(tokio::sync::Notify::new());
            let c = match t.terminal {
                true => tokio::spawn(relay_console(
                    uuid,
                    t.stdin.clone(),
                    t.stdout.clone(),
                    ended.clone(),
                )),
                false => tokio::spawn(copy_output(
                    uuid,
                    t.stdout.clone(),
                    t.bundle.clone(),
                    copied,
                    resumed,
                    ended.clone(),
                )),
            };
            (c, ended)
        });
        if !t.terminal && !t.stdin.is_empty() {
            tokio::spawn(relay_stdin(uuid, t.stdin.clone()));
        }
        tokio::spawn(self.clone().watch(id.to_string(), uuid, t.pid, copier));
    }

    /// Takes up the task a worker before this one left (the keeper started this one after
    /// that one died): what it recorded, and, for a task started and not yet ended, its
    /// output, stdin and watcher. Its execs are gone with their relays.
    async fn resume_task(&self) {
        let Some((id, t, copied)) = TaskState::load(&self.bundle, &self.namespace) else {
            return;
        };
        log::info!("taking up task {id} after a worker that ended");
        let mut tasks = self.tasks.lock().await;
        let t = tasks.entry(id.clone()).or_insert(t);
        if t.pid != 0 && t.exited.borrow().is_none() {
            self.supervise(&id, t, copied, true);
        }
    }

    /// Pause or resume: vmmd freezes or thaws the zone; TaskPaused or TaskResumed follows.
    async fn set_paused(&self, id: &str, paused: bool) -> TtrpcResult<api::Empty> {
        let uuid = self.uuid_of(id).await?;
        vmmd(move |c| c.pause_vm(uuid, paused)).await?;
        let container_id = id.to_string();
        let (topic, event): (&str, Box<dyn MessageDyn>) = match paused {
            true => (
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id,
                    ..Default::default()
                }),
            ),
            false => (
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id,
                    ..Default::default()
                }),
            ),
        };
        self.publish(topic, event).await;
        Ok(api::Empty::default())
    }

    /// The zone of task `id` this shim holds.
    async fn uuid_of(&self, id: &str) -> TtrpcResult<Uuid> {
        self.tasks
            .lock()
            .await
            .get(id)
            .map(|t| t.uuid)
            .ok_or_else(|| no_task(id))
    }

    /// Starts exec `exec_id` of task `id`: `zoned exec` in the zone, containerd's FIFOs as
    /// its stdio; a watcher records its exit and tells containerd.
    async fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<api::StartResponse> {
        let (uuid, spec, stdio) = {
            let tasks = self.tasks.lock().await;
            let t = tasks.get(id).ok_or_else(|| no_task(id))?;
            let e = t.execs.get(exec_id).ok_or_else(|| no_exec(id, exec_id))?;
            if e.pid != 0 {
                return Err(fail(format!("exec {exec_id} has started already")));
            }
            let stdio = [e.stdin.clone(), e.stdout.clone(), e.stderr.clone()];
            (t.uuid, e.spec.clone(), stdio)
        };
        let rt = vmmd(move |c| c.runtime(uuid)).await?;
        let dir = exec::runtime_dir(&rt.dir).map_err(fail)?.to_path_buf();
        // Opened off the async threads: a FIFO opened for writing waits for its reader.
        let files = tokio::task::spawn_blocking(move || {
            let [i, o, e] = stdio;
            Ok::<_, std::io::Error>((
                exec::open_stdio(&i, false)?,
                exec::open_stdio(&o, true)?,
                exec::open_stdio(&e, true)?,
            ))
        })
        .await
        .map_err(|e| fail(format!("exec stdio: {e}")))?
        .map_err(|e| fail(format!("open exec {exec_id}'s stdio: {e}")))?;
        // The shim's SIGCHLD handler reaps every child (containerd-shim's monitor): the
        // relay's exit is taken from there, subscribed to before it can happen.
        let mut exits = monitor_subscribe(Topic::Pid)
            .await
            .map_err(|e| fail(format!("watch exec {exec_id}: {e}")))?;
        let mut command = std::process::Command::new(exec::zoned_path());
        command.arg("exec").arg(&dir).args(spec.zoned_args());
        let console = match spec.terminal {
            true => match exec::terminal(files.0, files.1, &mut command) {
                Ok(pty) => Some(pty),
                Err(e) => {
                    let _ = monitor_unsubscribe(exits.id).await;
                    return Err(fail(format!("a terminal for exec {exec_id}: {e}")));
                }
            },
            false => {
                command.stdin(files.0).stdout(files.1).stderr(files.2);
                None
            }
        };
        let spawned = command.spawn();
        // The command's copies of the pty's slave closed: the relay holds the last.
        drop(command);
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = monitor_unsubscribe(exits.id).await;
                return Err(fail(format!("run {}: {e}", exec::zoned_path().display())));
            }
        };
        let relay = child.id();
        // The command's own pid and a pidfd of it, checked still to be the relay's child
        // after the pidfd was opened (so it names that process, not a recycled pid).
        let held = tokio::task::spawn_blocking(move || {
            let pid = exec::command_pid(relay, Duration::from_secs(5))?;
            let fd = hull_sys::process::pidfd(pid as i32).ok()?;
            let children = std::fs::read_to_string(format!("/proc/{relay}/task/{relay}/children"));
            children
                .is_ok_and(|c| c.split_whitespace().any(|p| p == pid.to_string()))
                .then_some((pid, fd))
        })
        .await
        .ok()
        .flatten();
        let (pid, pidfd) = match held {
            Some((pid, fd)) => (pid, Some(fd)),
            None => (relay, None),
        };
        {
            let mut tasks = self.tasks.lock().await;
            if let Some(e) = tasks.get_mut(id).and_then(|t| t.execs.get_mut(exec_id)) {
                e.pid = pid;
                e.pidfd = pidfd;
                e.console = console.as_ref().map(|(master, _)| master.clone());
            }
        }
        let (svc, id_, exec_id_) = (self.clone(), id.to_string(), exec_id.to_string());
        tokio::spawn(async move {
            // zoned exec's own status is its command's (128 + the signal that ended it).
            let mut status = 255;
            while let Some(e) = exits.rx.recv().await {
                if matches!(e.subject, Subject::Pid(p) if p as u32 == relay) {
                    status = e.exit_code as u32;
                    break;
                }
            }
            let _ = monitor_unsubscribe(exits.id).await;
            drop(child);
            if let Some((master, slave)) = console {
                let _ = tokio::task::spawn_blocking(move || exec::release(&master, slave)).await;
            }
            let at = timestamp();
            if let Some(e) = svc
                .tasks
                .lock()
                .await
                .get_mut(&id_)
                .and_then(|t| t.execs.get_mut(&exec_id_))
            {
                e.pidfd = None;
                e.exited.send_replace(Some((status, at.clone())));
            }
            svc.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id_.clone(),
                    id: exec_id_,
                    pid,
                    exit_status: status,
                    exited_at: Some(at).into(),
                    ..Default::default()
                }),
            )
            .await;
        });
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }
}

#[async_trait]
impl Shim for Service {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            tasks: Arc::default(),
            publisher: None,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = opts.id.clone();
        // The process containerd talks to is a keeper, which runs the worker serving it
        // (module [`keeper`]).
        let address = spawn(opts, &grouping, vec![(keeper::ROLE, keeper::KEEPER)]).await?;
        // containerd finds the shim again from the bundle's `address` file when it restarts
        // (without it, it takes the running shim for dead and cleans the task up).
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// containerd's clean-up after a shim that is gone: the task's zone deleted (stopped
    /// first) and the rootfs it mounted unmounted.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let uuid = zone_uuid(&self.namespace, &self.id);
        let gone = tokio::task::spawn_blocking(move || {
            let c = Client::new(hull_client::socket_path(None)).ok()?;
            let vm = c.get_vm(uuid).ok()?;
            let _ = c.delete_vm(uuid);
            Some(exit_status(&vm))
        })
        .await
        .ok()
        .flatten();
        cri::unmount(Path::new(&self.bundle));
        unmount_rootfs(Path::new(&self.bundle));
        Ok(DeleteResponse {
            exit_status: gone.unwrap_or(137),
            exited_at: Some(timestamp()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let mut s = self.clone();
        s.publisher = Some(Arc::new(publisher));
        s.resume_task().await;
        s
    }
}

/// Makes containerd's bundle one vmmd takes, whose root and binds lie in it: a root named
/// outside it (`ctr run --rootfs DIR`) bound at `bundle/rootfs` unless `rootfs_mounted`
/// (containerd's snapshot is there already), and the files containerd's CRI made for the
/// pod bound into it (module [`cri`]); the config rewritten to name them. Whether it bound
/// the root, and the config. On an error nothing it bound stays.
fn prepare_bundle(
    bundle: &Path,
    rootfs_mounted: bool,
) -> Result<(bool, serde_json::Value), String> {
    let config_path = bundle.join("config.json");
    let bytes =
        std::fs::read(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let bound = !rootfs_mounted && root_into_bundle(bundle, &mut config)?;
    let undo = |e: String| {
        cri::unmount(bundle);
        if bound {
            unmount_rootfs(bundle);
        }
        e
    };
    let pod_files = cri::files_into_bundle(bundle, &mut config).map_err(undo)?;
    if bound || pod_files {
        let tmp = bundle.join(".config.json.hull");
        std::fs::write(&tmp, config.to_string())
            .and_then(|()| std::fs::rename(&tmp, &config_path))
            .map_err(|e| undo(format!("{}: {e}", config_path.display())))?;
    }
    Ok((bound, config))
}

/// Binds a root that `config` names by an absolute path outside `bundle` at
/// `bundle/rootfs` and points `root.path` at that; true when it did.
fn root_into_bundle(bundle: &Path, config: &mut serde_json::Value) -> Result<bool, String> {
    let Some(root) = config
        .pointer("/root/path")
        .and_then(|p| p.as_str())
        .map(PathBuf::from)
    else {
        return Ok(false);
    };
    if !root.is_absolute() || root.starts_with(bundle) {
        return Ok(false);
    }
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    nix::mount::mount(
        Some(&root),
        &rootfs,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind {} at {}: {e}", root.display(), rootfs.display()))?;
    config["root"]["path"] = serde_json::json!("rootfs");
    Ok(true)
}

/// Unmounts the rootfs containerd had the shim mount in `bundle` (lazily: a zone's own
/// mount namespace may still hold it for a moment).
fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(not_implemented("restoring from a checkpoint"));
        }
        let uuid = zone_uuid(&self.namespace, &req.id);
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = bundle.join("rootfs");
        for m in &req.rootfs {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| fail(format!("{}: {e}", rootfs.display())))?;
            containerd_shim::mount::mount_rootfs(
                Some(m.type_.as_str()).filter(|t| !t.is_empty()),
                Some(m.source.as_str()).filter(|s| !s.is_empty()),
                &m.options,
                &rootfs,
            )
            .map_err(|e| fail(format!("mount the rootfs at {}: {e}", rootfs.display())))?;
        }
        // `ctr run --rootfs DIR`: a root outside the bundle, which vmmd refuses, bound into
        // it; a pod's files likewise.
        // A hull NIC the annotations ask for (module [`network`]).
        let prepared = prepare_bundle(&bundle, !req.rootfs.is_empty()).and_then(|(bound, c)| {
            match network::nics(&c) {
                Ok(nics) => Ok((bound, nics)),
                Err(e) => {
                    cri::unmount(&bundle);
                    if bound {
                        unmount_rootfs(&bundle);
                    }
                    Err(e)
                }
            }
        });
        let (mounted, nics) = match prepared {
            Ok((bound, nics)) => (bound || !req.rootfs.is_empty(), nics),
            Err(e) => {
                if !req.rootfs.is_empty() {
                    unmount_rootfs(&bundle);
                }
                return Err(fail(e));
            }
        };
        let mut payload = serde_json::json!({
            "uuid": uuid, "brand": "lx", "alias": req.id, "autoboot": false,
            "oci_bundle": req.bundle,
        });
        if let Some(nics) = nics {
            payload["nics"] = nics;
        }
        // containerd's stdin FIFO, without a terminal: the process's stdin is a pipe zoned
        // feeds from the console socket (Triton's key for `docker run -i`).
        if !req.terminal && !req.stdin.is_empty() {
            payload["internal_metadata"] = serde_json::json!({"docker:openstdin": "true"});
        }
        if let Err(e) = vmmd(move |c| c.create_vm(&payload)).await {
            cri::unmount(&bundle);
            if mounted {
                unmount_rootfs(&bundle);
            }
            return Err(e);
        }
        let t = TaskState {
            uuid,
            bundle: req.bundle.clone(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            pid: 0,
            exited: tokio::sync::watch::channel(None).0,
            mounted,
            execs: HashMap::new(),
        };
        t.save(&req.id);
        self.tasks.lock().await.insert(req.id.clone(), t);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::CreateTaskResponse::default())
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if !req.exec_id.is_empty() {
            return self.start_exec(&req.id, &req.exec_id).await;
        }
        let mut tasks = self.tasks.lock().await;
        let t = tasks.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
        let uuid = t.uuid;
        let vm = vmmd(move |c| c.start_vm(uuid)).await?;
        t.pid = vm.pid.unwrap_or_default();
        t.exited.send_replace(None);
        t.save(&req.id);
        self.supervise(&req.id, t, 0, false);
        let pid = t.pid;
        drop(tasks);
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        if !req.exec_id.is_empty() {
            let mut exited = {
                let tasks = self.tasks.lock().await;
                let t = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
                let e = t
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| no_exec(&req.id, &req.exec_id))?;
                e.exited.subscribe()
            };
            let ended = exited
                .wait_for(Option::is_some)
                .await
                .map_err(|_| no_exec(&req.id, &req.exec_id))?
                .clone();
            let (status, at) = ended.unwrap_or_default();
            return Ok(api::WaitResponse {
                exit_status: status,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }
        let mut exited = {
            let tasks = self.tasks.lock().await;
            let t = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            t.exited.subscribe()
        };
        // containerd waits before it starts the task (so as not to miss a quick exit): the
        // watcher the start made sets the exit.
        let ended = exited
            .wait_for(Option::is_some)
            .await
            .map_err(|_| no_task(&req.id))?
            .clone();
        let (status, at) = ended.unwrap_or_default();
        Ok(api::WaitResponse {
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        if !req.exec_id.is_empty() {
            let tasks = self.tasks.lock().await;
            let e = exec_of(&tasks, &req.id, &req.exec_id)?;
            let Some(pidfd) = &e.pidfd else {
                return Err(fail(format!("exec {} has not started", req.exec_id)));
            };
            exec::signal(pidfd, req.signal as i32)
                .map_err(|e| fail(format!("signal exec {}: {e}", req.exec_id)))?;
            return Ok(api::Empty::default());
        }
        let uuid = self
            .tasks
            .lock()
            .await
            .get(&req.id)
            .map(|t| t.uuid)
            .ok_or_else(|| no_task(&req.id))?;
        let vm = vmmd(move |c| c.get_vm(uuid)).await?;
        if vm.state != VmState::Running {
            return Ok(api::Empty::default());
        }
        let signal = req.signal.to_string();
        vmmd(move |c| {
            c.kill_vm(
                uuid,
                &hull_spec::api::KillRequest {
                    signal: Some(signal),
                },
            )
        })
        .await?;
        Ok(api::Empty::default())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut tasks = self.tasks.lock().await;
            let t = tasks.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
            let e = t
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| no_exec(&req.id, &req.exec_id))?;
            let ended = e.exited.borrow().clone();
            if e.pid != 0 && ended.is_none() {
                return Err(fail(format!(
                    "exec {} is running: kill it first",
                    req.exec_id
                )));
            }
            let pid = e.pid;
            t.execs.remove(&req.exec_id);
            let (status, at) = ended.unwrap_or_else(|| (0, timestamp()));
            return Ok(api::DeleteResponse {
                pid,
                exit_status: status,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }
        let Some(t) = self.tasks.lock().await.remove(&req.id) else {
            return Err(no_task(&req.id));
        };
        let uuid = t.uuid;
        let vm = vmmd(move |c| c.get_vm(uuid)).await?;
        let (status, at) = t
            .exited
            .borrow()
            .clone()
            .unwrap_or_else(|| (exit_status(&vm), timestamp()));
        vmmd(move |c| c.delete_vm(uuid)).await?;
        for f in [TASK_FILE, COPIED_FILE] {
            let _ = std::fs::remove_file(Path::new(&t.bundle).join(f));
        }
        cri::unmount(Path::new(&t.bundle));
        if t.mounted {
            unmount_rootfs(Path::new(&t.bundle));
        }
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: t.pid,
                exit_status: status,
                exited_at: Some(at.clone()).into(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::DeleteResponse {
            pid: t.pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let tasks = self.tasks.lock().await;
        let t = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
        if !req.exec_id.is_empty() {
            let e = t
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| no_exec(&req.id, &req.exec_id))?;
            let ended = e.exited.borrow().clone();
            let status = match (&ended, e.pid) {
                (Some(_), _) => Status::STOPPED,
                (None, 0) => Status::CREATED,
                (None, _) => Status::RUNNING,
            };
            return Ok(api::StateResponse {
                id: req.exec_id.clone(),
                bundle: t.bundle.clone(),
                pid: e.pid,
                status: status.into(),
                stdin: e.stdin.clone(),
                stdout: e.stdout.clone(),
                stderr: e.stderr.clone(),
                terminal: e.spec.terminal,
                exit_status: ended.as_ref().map(|e| e.0).unwrap_or_default(),
                exited_at: ended.map(|e| e.1).into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            });
        }
        let uuid = t.uuid;
        let vm = vmmd(move |c| c.get_vm(uuid)).await?;
        let ended = t.exited.borrow().clone();
        let status = match (vm.state, t.pid) {
            (VmState::Running, _) if vm.paused => Status::PAUSED,
            (VmState::Running, _) => Status::RUNNING,
            (VmState::Stopped, 0) => Status::CREATED,
            (VmState::Stopped, _) => Status::STOPPED,
            _ => Status::UNKNOWN,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: t.bundle.clone(),
            pid: t.pid,
            status: status.into(),
            stdin: t.stdin.clone(),
            stdout: t.stdout.clone(),
            stderr: t.stderr.clone(),
            terminal: t.terminal,
            exit_status: ended.as_ref().map(|e| e.0).unwrap_or_default(),
            exited_at: ended.map(|e| e.1).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let tasks = self.tasks.lock().await;
        let t = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
        let execs = t
            .execs
            .values()
            .filter(|e| e.pid != 0 && e.exited.borrow().is_none());
        let processes = std::iter::once(t.pid)
            .chain(execs.map(|e| e.pid))
            .map(|pid| ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .tasks
            .lock()
            .await
            .get(&req.id)
            .map(|t| t.pid)
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: RUNTIME.to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if self.tasks.lock().await.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, true).await
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, false).await
    }

    /// A terminal's new size: the zone's console (vmmd's resize), or an exec's host pty
    /// (whose relay passes it on to the zone's pty).
    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let (rows, cols) = (
            u16::try_from(req.height).unwrap_or(u16::MAX),
            u16::try_from(req.width).unwrap_or(u16::MAX),
        );
        if !req.exec_id.is_empty() {
            let tasks = self.tasks.lock().await;
            let e = exec_of(&tasks, &req.id, &req.exec_id)?;
            let Some(master) = &e.console else {
                return Err(fail(format!("exec {} has no terminal", req.exec_id)));
            };
            exec::resize(master, rows, cols).map_err(|e| fail(format!("resize: {e}")))?;
            return Ok(api::Empty::default());
        }
        let uuid = self.uuid_of(&req.id).await?;
        vmmd(move |c| c.resize_console(uuid, rows, cols)).await?;
        Ok(api::Empty::default())
    }

    /// New limits (CRI UpdateContainerResources, `ctr task update`) as a vmmd update.
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let uuid = self.uuid_of(&req.id).await?;
        let payload = resources::update_payload(&req.resources.value).map_err(fail)?;
        vmmd(move |c| c.update_vm(uuid, &payload)).await?;
        Ok(api::Empty::default())
    }

    /// The zone's cgroup figures from vmmd, as containerd's cgroup v2 metrics.
    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let uuid = self.uuid_of(&req.id).await?;
        let usage = vmmd(move |c| c.usage(uuid)).await?;
        let any = containerd_shim::util::convert_to_any(Box::new(metrics(&usage)))
            .map_err(|e| fail(format!("encode the metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let mut spec = ExecSpec::parse(&req.spec.value).map_err(fail)?;
        spec.terminal |= req.terminal;
        {
            let mut tasks = self.tasks.lock().await;
            let t = tasks.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
            if req.exec_id.is_empty() || t.execs.contains_key(&req.exec_id) {
                return Err(fail(format!(
                    "exec id {:?} is empty or taken in task {}",
                    req.exec_id, req.id
                )));
            }
            t.execs.insert(
                req.exec_id.clone(),
                ExecProcess::new(spec, req.stdin, req.stdout, req.stderr),
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::Empty::default())
    }
}

fn main() {
    if std::env::var_os(keeper::ROLE).is_some_and(|r| r == keeper::KEEPER) {
        keeper::run(std::env::args_os().skip(1).collect());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match runtime {
        // Ended without waiting for blocking calls still pending (a stdin FIFO's open
        // waiting for a writer that has gone): once `run` returns, the shim is done.
        Ok(rt) => {
            rt.block_on(run::<Service>(RUNTIME, None));
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{RUNTIME}: tokio: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tasks_zone_is_the_same_every_time_and_differs_by_namespace() {
        assert_eq!(zone_uuid("default", "c1"), zone_uuid("default", "c1"));
        assert_ne!(zone_uuid("default", "c1"), zone_uuid("k8s.io", "c1"));
        assert_ne!(zone_uuid("default", "c1"), zone_uuid("default", "c2"));
    }
}
