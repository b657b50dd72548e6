//! containerd-shim-hull-v2: containerd's runtime v2 shim for hull (runtime name
//! `io.containerd.hull.v2`). A thin translator, never a second runtime: each task is a zone
//! vmmd makes from containerd's OCI bundle (`oci_bundle`, docs/zones.md), starts, watches and
//! deletes; vmmd and zoned supervise it, so the shim holds nothing a restart of it could lose
//! (a task's zone is found again by its uuid, derived from the namespace and the id).
//!
//! What it does today: create (the rootfs containerd gives mounted in the bundle, the zone
//! made), start, wait (the exit status from vmmd's record), kill, delete, state, pids,
//! connect and shutdown, with the zone's output copied into containerd's stdout FIFO (its
//! stdout and stderr are one pipe in a zone, so both land there). Exec, pause, resume,
//! update, stats, checkpoint and a terminal's resize answer "not implemented", naming what.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::{ExitSignal, Shim, run, spawn};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
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

/// The runtime's name, as containerd's config names it.
const RUNTIME: &str = "io.containerd.hull.v2";

/// How often a running task's output is copied (and at once when it ends).
const POLL: Duration = Duration::from_millis(50);

/// How often a Wait that came before the start looks whether the task has started.
const START_POLL: Duration = Duration::from_millis(2);

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

/// The error for a request naming a task this shim does not hold.
fn no_task(id: &str) -> containerd_shim::protos::ttrpc::Error {
    fail(format!("no task {id} in this shim"))
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

/// Runs a blocking call to vmmd off the shim's async threads.
async fn vmmd<T: Send + 'static>(
    f: impl FnOnce(&Client) -> Result<T, hull_client::ClientError> + Send + 'static,
) -> TtrpcResult<T> {
    tokio::task::spawn_blocking(move || {
        let c = client()?;
        f(&c).map_err(|e| fail(format!("vmmd: {}", hull_sys::chain(&e))))
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
    /// Set once the zone has run and stopped: (exit status, when).
    exited: Option<(u32, Timestamp)>,
    /// Whether the shim mounted the rootfs (and so unmounts it at delete).
    mounted: bool,
    /// The copy of the zone's output into the stdout FIFO, ending once the zone stopped.
    copier: Option<tokio::task::JoinHandle<()>>,
    /// Tells the copier the zone has stopped.
    ended: Arc<tokio::sync::Notify>,
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
/// all it wrote is copied.
async fn copy_output(uuid: Uuid, path: String, ended: Arc<tokio::sync::Notify>) {
    use std::io::Write;
    let fifo =
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(&path))
            .await;
    let Ok(Ok(mut fifo)) = fifo else {
        log::warn!("cannot open the stdout FIFO of {uuid}");
        return;
    };
    let mut copied = 0usize;
    loop {
        let stopped = vmmd(move |c| c.get_vm(uuid))
            .await
            .map(|vm| vm.state == VmState::Stopped)
            .unwrap_or(true);
        let logs = vmmd(move |c| {
            let mut out = Vec::new();
            c.logs(uuid, &mut out)?;
            Ok(out)
        })
        .await
        .unwrap_or_default();
        // A log that shrank was rotated (zoned keeps 1 MiB): copy the new one whole.
        if logs.len() < copied {
            copied = 0;
        }
        if logs.len() > copied {
            if fifo.write_all(&logs[copied..]).is_err() {
                return;
            }
            copied = logs.len();
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

/// Blocks until zone `uuid` is stopped, woken by vmmd's event stream (subscribed before the
/// first look, so no stop is missed; looked at again every second should the stream fail).
fn wait_stopped(uuid: Uuid) -> Result<Vm, hull_client::ClientError> {
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
        spawn(opts, &grouping, Vec::new()).await
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
        s
    }
}

/// Binds a root that `bundle`'s config names by an absolute path outside it at
/// `bundle/rootfs` and rewrites the config's `root.path` to that; true when it did.
fn root_into_bundle(bundle: &Path) -> Result<bool, String> {
    let config_path = bundle.join("config.json");
    let bytes =
        std::fs::read(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", config_path.display()))?;
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
    let tmp = bundle.join(".config.json.hull");
    let written =
        std::fs::write(&tmp, config.to_string()).and_then(|()| std::fs::rename(&tmp, &config_path));
    if let Err(e) = written {
        unmount_rootfs(bundle);
        return Err(format!("{}: {e}", config_path.display()));
    }
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
        let mut mounted = !req.rootfs.is_empty();
        // `ctr run --rootfs DIR`: a root outside the bundle, which vmmd refuses; bound into
        // the bundle as its rootfs, and the config made to name that.
        if !mounted {
            mounted = root_into_bundle(&bundle).map_err(fail)?;
        }
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
        let payload = serde_json::json!({
            "uuid": uuid, "brand": "lx", "alias": req.id, "autoboot": false,
            "oci_bundle": req.bundle,
        });
        if let Err(e) = vmmd(move |c| c.create_vm(&payload)).await {
            if mounted {
                unmount_rootfs(&bundle);
            }
            return Err(e);
        }
        self.tasks.lock().await.insert(
            req.id.clone(),
            TaskState {
                uuid,
                bundle: req.bundle.clone(),
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                pid: 0,
                exited: None,
                mounted,
                copier: None,
                ended: Arc::default(),
            },
        );
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
            return Err(not_implemented("exec"));
        }
        let mut tasks = self.tasks.lock().await;
        let t = tasks.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
        let uuid = t.uuid;
        let vm = vmmd(move |c| c.start_vm(uuid)).await?;
        // The zone's output is kept in its log from its start on: copied from there, nothing
        // it writes first is missed.
        if !t.stdout.is_empty() {
            let ended = t.ended.clone();
            t.copier = Some(tokio::spawn(copy_output(uuid, t.stdout.clone(), ended)));
        }
        t.pid = vm.pid.unwrap_or_default();
        t.exited = None;
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
        let (uuid, copier) = {
            let mut tasks = self.tasks.lock().await;
            let t = tasks.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
            if let Some((status, at)) = &t.exited {
                return Ok(api::WaitResponse {
                    exit_status: *status,
                    exited_at: Some(at.clone()).into(),
                    ..Default::default()
                });
            }
            (t.uuid, t.copier.take())
        };
        // containerd waits before it starts the task (so as not to miss a quick exit): the
        // zone ends only once it has started.
        loop {
            let started = self
                .tasks
                .lock()
                .await
                .get(&req.id)
                .is_some_and(|t| t.pid != 0);
            if started {
                break;
            }
            tokio::time::sleep(START_POLL).await;
        }
        let vm = vmmd(move |_| wait_stopped(uuid)).await?;
        // All the zone wrote is in the FIFO before containerd hears it ended.
        let (copier, ended) = {
            let mut tasks = self.tasks.lock().await;
            let t = tasks.get_mut(&req.id);
            let ended = t.as_ref().map(|t| t.ended.clone());
            (copier.or_else(|| t.and_then(|t| t.copier.take())), ended)
        };
        if let Some(e) = ended {
            e.notify_one();
        }
        if let Some(c) = copier {
            let _ = c.await;
        }
        let (status, at) = (exit_status(&vm), timestamp());
        let pid = {
            let mut tasks = self.tasks.lock().await;
            let t = tasks.get_mut(&req.id);
            let pid = t.as_ref().map(|t| t.pid).unwrap_or_default();
            if let Some(t) = t {
                t.exited = Some((status, at.clone()));
            }
            pid
        };
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: status,
                exited_at: Some(at.clone()).into(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::WaitResponse {
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        if !req.exec_id.is_empty() {
            return Err(not_implemented("exec"));
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
            return Err(not_implemented("exec"));
        }
        let Some(t) = self.tasks.lock().await.remove(&req.id) else {
            return Err(no_task(&req.id));
        };
        let uuid = t.uuid;
        let vm = vmmd(move |c| c.get_vm(uuid)).await?;
        let (status, at) = t
            .exited
            .clone()
            .unwrap_or_else(|| (exit_status(&vm), timestamp()));
        vmmd(move |c| c.delete_vm(uuid)).await?;
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
        let uuid = t.uuid;
        let vm = vmmd(move |c| c.get_vm(uuid)).await?;
        let status = match (vm.state, t.pid) {
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
            exit_status: t.exited.as_ref().map(|e| e.0).unwrap_or_default(),
            exited_at: t.exited.as_ref().map(|e| e.1.clone()).into(),
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
        Ok(api::PidsResponse {
            processes: vec![ProcessInfo {
                pid: t.pid,
                ..Default::default()
            }],
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

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(not_implemented("pause"))
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(not_implemented("resume"))
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(not_implemented("exec"))
    }
}

#[tokio::main]
async fn main() {
    run::<Service>(RUNTIME, None).await;
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
