//! The HTTP/1.1 + JSON API on a Unix socket.
//!
//! Each connection is checked with SO_PEERCRED before any byte of a request is read: root,
//! the daemon's own user and (opt-in) members of one group are served; anyone else gets a
//! JSON 403. The peer's credentials then travel with each request as a [`Caller`]: group
//! members may not name host files in payloads outside the `--allow-path` directories
//! (see [`crate::service::paths`]). Bodies are bounded, must be `application/json`, valid UTF-8 and valid JSON;
//! every failure is a JSON error with a 4xx status, and the connection's task ends without
//! affecting the others.

pub mod error;
pub mod handlers;
pub mod openapi;
pub mod router;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hull_sys::IoError;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;

use crate::service::Service;
use crate::service::paths::HostPathPolicy;
use error::ApiError;

/// The body type of every reply.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A failure in the middle of a streamed reply: hyper aborts the connection, so the client
/// sees a broken transfer instead of a short one that looks whole.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The largest request body accepted (payloads are small; metadata can be tens of KiB).
pub const MAX_BODY: usize = 4 << 20;

/// Who may use the socket.
#[derive(Debug, Clone)]
pub struct Access {
    /// The daemon's own uid (always allowed, as is root).
    pub daemon_uid: u32,
    /// An opt-in group whose members are allowed.
    pub group: Option<u32>,
    /// Which host files callers other than root may name in payloads.
    pub host_paths: Arc<HostPathPolicy>,
}

impl Access {
    /// What a peer with this uid may do once it is allowed in.
    pub fn caller(&self, uid: u32) -> Caller {
        Caller {
            uid,
            // vmmd's own user can already open whatever vmmd opens: naming a file through
            // the API gives it nothing new.
            any_host_path: uid == 0 || uid == self.daemon_uid,
            host_paths: self.host_paths.clone(),
        }
    }

    /// Whether a peer with these credentials may use the API.
    pub fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.daemon_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        gid == group || pid.is_some_and(|pid| supplementary_groups(pid).contains(&group))
    }
}

/// The peer of one connection, as far as payload checks care.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its uid (SO_PEERCRED).
    pub uid: u32,
    /// Whether it may name any host file (root and vmmd's own user).
    pub any_host_path: bool,
    host_paths: Arc<HostPathPolicy>,
}

impl Caller {
    /// Refuses (403) a create payload naming host files this caller may not use.
    pub fn check_create(&self, payload: &serde_json::Value) -> Result<(), ApiError> {
        if self.any_host_path {
            return Ok(());
        }
        self.host_paths
            .check_create(payload)
            .map_err(ApiError::from)
    }

    /// Refuses (403) an update payload naming host files this caller may not use.
    pub fn check_update(&self, payload: &serde_json::Value) -> Result<(), ApiError> {
        if self.any_host_path {
            return Ok(());
        }
        self.host_paths
            .check_update(payload)
            .map_err(ApiError::from)
    }
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Failures setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another daemon answers on the socket.
    #[error("another vmmd is already serving {0}")]
    InUse(PathBuf),
    /// The socket could not be created or secured.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Binds the API socket: removes a stale socket (one nobody answers on), creates the parent
/// directory, and leaves the socket mode 0600 (0660 with the group as owner when a group
/// is configured).
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ListenError> {
    let io = |op: &'static str| IoError::wrap(op, path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("create the directory of"))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
    }
    // Bind under a tight umask so the socket is never reachable by others, even briefly.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(io("listen on"))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io("give the group"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(io("set the mode of"))?;
    }
    Ok(listener)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    service: Arc<Service>,
    access: Access,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Credentials are taken once, at accept: they are the connecting process's, and
        // every request on the connection acts with them.
        let caller = match stream.peer_cred() {
            Ok(c) if access.allows(c.uid(), c.gid(), c.pid()) => Some(access.caller(c.uid())),
            _ => None,
        };
        let service = service.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let service = service.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(handle(service, caller, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    service: Arc<Service>,
    caller: Option<Caller>,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let uid = caller.as_ref().map(|c| c.uid);
    let result = async {
        let Some(caller) = caller else {
            return Err(ApiError::forbidden(
                "only root (or the group vmmd was started with --group) may use this socket",
            ));
        };
        let action = router::route(&method, &path, req.uri().query())?;
        if action == router::Action::InstallImage {
            // The streaming uploads: a multipart manifest + file, never held in memory...
            return handlers::install_image(&service, req).await;
        }
        if let router::Action::Console(uuid) = action {
            // ... a protocol switch onto the console ...
            return handlers::console(&service, uuid, req).await;
        }
        if action == router::Action::ReceiveVm {
            // ... and a send stream.
            return handlers::receive_vm(&service, &caller, req).await;
        }
        let body = if action.takes_body() {
            read_json(req).await?
        } else {
            drain_empty(req).await?;
            serde_json::Value::Null
        };
        handlers::dispatch(&service, &caller, action, body).await
    }
    .await;
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(%method, %path, ?uid, status = %e.status, message = %e.body.message, "request refused");
            error_response(e)
        }
    }
}

/// Reads a JSON body: bounded, `application/json`, valid UTF-8, valid JSON. An empty body
/// is `null` (the handler decides whether that is allowed).
async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::too_large(MAX_BODY));
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::too_large(MAX_BODY)
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    match content_type.as_deref() {
        Some(ct) if ct.split(';').next().map(str::trim) == Some("application/json") => {}
        Some(ct) => return Err(ApiError::unsupported_media_type(ct)),
        None => return Err(ApiError::unsupported_media_type("no Content-Type")),
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Routes that take no body still must not be sent one that is huge.
async fn drain_empty(req: Request<Incoming>) -> Result<(), ApiError> {
    let bytes = Limited::new(req.into_body(), 64 << 10)
        .collect()
        .await
        .map_err(|_| ApiError::too_large(64 << 10))?
        .to_bytes();
    if bytes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request("this route takes no request body"))
    }
}

/// A complete body.
pub fn full_body(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON reply.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            response(status, "application/json", full_body(bytes))
        }
        Err(e) => error_response(ApiError::from(crate::service::ServiceError::BadRequest(
            format!("cannot encode the reply: {e}"),
        ))),
    }
}

/// A reply with a body of the given type.
pub fn response(status: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

fn error_response(e: ApiError) -> Response<Body> {
    let bytes = serde_json::to_vec(e.body.as_ref())
        .unwrap_or_else(|_| b"{\"code\":\"InternalError\"}".to_vec());
    let mut resp = response(e.status, "application/json", full_body(bytes));
    if let Some(allow) = e.allow.and_then(|a| a.parse().ok()) {
        resp.headers_mut().insert(ALLOW, allow);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_allow_paths() -> Arc<HostPathPolicy> {
        Arc::new(HostPathPolicy::new(&[], &[0], Path::new("/var/lib/hull")).expect("policy"))
    }

    #[test]
    fn access_rules() {
        let a = Access {
            daemon_uid: 0,
            group: None,
            host_paths: no_allow_paths(),
        };
        assert!(a.allows(0, 0, None));
        assert!(!a.allows(1000, 1000, None));
        let a = Access {
            daemon_uid: 1000,
            group: Some(50),
            host_paths: no_allow_paths(),
        };
        assert!(a.allows(1000, 1000, None), "the daemon's own user");
        assert!(a.allows(1001, 50, None), "primary group");
        assert!(!a.allows(1001, 51, None));
        // Our own process's supplementary groups are readable from /proc.
        let own = supplementary_groups(std::process::id() as i32);
        if let Some(&g) = own.first() {
            let a = Access {
                daemon_uid: 0,
                group: Some(g),
                host_paths: no_allow_paths(),
            };
            assert!(a.allows(4242, 4242, Some(std::process::id() as i32)));
        }
    }

    #[test]
    fn only_root_and_the_daemon_user_name_any_host_path() {
        let a = Access {
            daemon_uid: 1000,
            group: Some(50),
            host_paths: no_allow_paths(),
        };
        let shadow = serde_json::json!({"brand": "kvm", "kernel": "/etc/shadow"});
        a.caller(0).check_create(&shadow).expect("root");
        a.caller(1000)
            .check_create(&shadow)
            .expect("vmmd's own user");
        let e = a
            .caller(1001)
            .check_create(&shadow)
            .expect_err("a group member");
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.body.message.starts_with("kernel: "), "{}", e.body.message);
        let e = a
            .caller(1001)
            .check_update(&serde_json::json!({"add_disks": [{"path": "/dev/sda"}]}))
            .expect_err("a group member");
        assert!(
            e.body.message.starts_with("add_disks.0.path: "),
            "{}",
            e.body.message
        );
        assert!(!e.body.causes.is_empty(), "the reason travels as a cause");
    }
}
