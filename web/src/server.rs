//! The HTTPS server: one port, TLS for everything but a plain-HTTP redirect (the first byte
//! of a connection says which: 0x16 begins a TLS handshake), a session cookie for the pages,
//! a CSRF token in every form that changes something, and vmmd's socket behind it all. Every
//! login and change goes to the audit log (`audit.log` in the state directory, JSON lines).

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::auth::{self, Sessions, Throttle};
use crate::pages;
use crate::tls::{self, CertFiles};

/// The session cookie's name.
const COOKIE: &str = "hull_session";

/// The largest request body taken (forms are small).
const BODY_MAX: usize = 16 << 10;

/// The metrics token's file in the state directory (`Authorization: Bearer TOKEN` on
/// /metrics, for a Prometheus server that has no session).
pub const METRICS_TOKEN: &str = "metrics.token";

/// What `hull-web` serves and where.
#[derive(Debug, Clone)]
pub struct Config {
    /// vmmd's API socket.
    pub socket: PathBuf,
    /// Passwords, certificate, metrics token and audit log.
    pub state: PathBuf,
    pub listen: SocketAddr,
    /// The operator's certificate, or None for the self-signed one in `state`.
    pub cert: Option<CertFiles>,
}

#[derive(Debug)]
struct App {
    cfg: Config,
    sessions: Sessions,
    throttle: Throttle,
    audit: Mutex<std::fs::File>,
    metrics_token: String,
}

/// A reply's body: whole, or streamed (the events page).
type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
type Reply = Response<Body>;

/// A body streamed from a channel, ended when its sender is dropped.
struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// Prepares the state directory (0700: certificate, metrics token, audit log), binds the
/// address and serves until the process ends; `ready` gets the bound address.
pub async fn run(cfg: Config, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    std::fs::create_dir_all(&cfg.state)
        .with_context(|| format!("create the state directory {}", cfg.state.display()))?;
    std::fs::set_permissions(
        &cfg.state,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("restrict {}", cfg.state.display()))?;
    let files = match &cfg.cert {
        Some(f) => f.clone(),
        None => {
            let f = CertFiles::in_state(&cfg.state);
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            let mut names = vec!["localhost".to_string(), cfg.listen.ip().to_string()];
            if !host.is_empty() {
                names.push(host);
            }
            tls::ensure_self_signed(&f, names)?;
            f
        }
    };
    let acceptor = TlsAcceptor::from(tls::server_config(&files)?);
    let token_path = cfg.state.join(METRICS_TOKEN);
    let metrics_token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = auth::token();
            write_private(&token_path, &format!("{t}\n"))?;
            t
        }
    };
    let audit = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(cfg.state.join("audit.log"))
        .context("open the audit log")?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let bound = listener.local_addr().context("the bound address")?;
    let mut cfg = cfg;
    cfg.listen = bound;
    let app = Arc::new(App {
        cfg,
        sessions: Sessions::default(),
        throttle: Throttle::default(),
        audit: Mutex::new(audit),
        metrics_token,
    });
    ready(bound);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(connection(app.clone(), acceptor.clone(), stream, peer));
    }
}

fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

async fn connection(app: Arc<App>, acceptor: TlsAcceptor, stream: TcpStream, peer: SocketAddr) {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return;
    }
    if first[0] == 0x16 {
        let Ok(Ok(tls)) =
            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
        else {
            return;
        };
        let svc = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(secure(handle(app, req, peer).await)) }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(tls), svc)
            .with_upgrades()
            .await;
    } else {
        let listen = app.cfg.listen;
        let svc = service_fn(move |req| async move { Ok::<_, Infallible>(redirect(&req, listen)) });
        let _ = http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    }
}

/// Plain HTTP: a redirect to the same path over HTTPS, nothing else.
fn redirect(req: &Request<Incoming>, listen: SocketAddr) -> Reply {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| listen.to_string());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut r = text(StatusCode::MOVED_PERMANENTLY, "use https\n");
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{path}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The headers every HTTPS reply carries.
fn secure(mut r: Reply) -> Reply {
    let h = r.headers_mut();
    for (k, v) in [
        ("strict-transport-security", "max-age=31536000"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    // The console page sets its own (xterm.js adds style elements).
    h.entry("content-security-policy")
        .or_insert(HeaderValue::from_static(CSP));
    r
}

/// What every page may load: only this server's own files, no inline script or style.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'";

/// The console page's policy: [`CSP`], but xterm.js's own style elements are let in (it
/// writes the terminal's geometry and colours as inline styles). Scripts stay 'self' only.
const CONSOLE_CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; \
    frame-ancestors 'none'; form-action 'self'";

/// `/assets/NAME`: the embedded browser assets, gzipped for a browser that takes gzip.
fn asset(req: &Request<Incoming>, name: &str) -> Reply {
    let Some(a) = crate::assets::find(name) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let gzip = req
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().is_some_and(|e| e.trim() == "gzip"));
    let body = if gzip { a.gzip } else { a.body };
    let mut r = Response::new(Full::new(Bytes::from_static(body)).boxed());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.kind));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn reply(status: StatusCode, kind: &'static str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

fn html(status: StatusCode, body: String) -> Reply {
    reply(status, "text/html; charset=utf-8", body)
}

fn text(status: StatusCode, body: &str) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.to_string())
}

fn see_other(to: &str) -> Reply {
    let mut r = text(StatusCode::SEE_OTHER, "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

/// A form body (at most [`BODY_MAX`] bytes) as name -> value.
async fn form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let body = Limited::new(req.into_body(), BODY_MAX)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(form_urlencoded::parse(&body).into_owned().collect())
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

impl App {
    /// One line of the audit log: when, who, from where, what, on what, and how it ended.
    fn audit(&self, user: &str, peer: SocketAddr, action: &str, target: &str, outcome: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let line = serde_json::json!({"time": now, "user": user, "peer": peer.ip().to_string(),
            "action": action, "target": target, "outcome": outcome});
        let mut f = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "{line}");
    }

    /// Runs `f` with a vmmd client, off the async threads; a refusal as vmmd's message with
    /// its causes ([`App::vmmd_report`] keeps the validation report too).
    async fn vmmd<T: Send + 'static>(
        &self,
        f: impl FnOnce(&hull_client::Client) -> Result<T, hull_client::ClientError> + Send + 'static,
    ) -> Result<T, String> {
        self.vmmd_report(f).await.map_err(|(message, _)| message)
    }
}

/// vmmd's refusal: its message with the causes, and the validation report when it sent one.
type Refusal = (String, Option<Box<hull_spec::ValidationReport>>);

impl App {
    /// Runs `f` with a vmmd client, off the async threads, keeping a refusal's validation
    /// report.
    async fn vmmd_report<T: Send + 'static>(
        &self,
        f: impl FnOnce(&hull_client::Client) -> Result<T, hull_client::ClientError> + Send + 'static,
    ) -> Result<T, Refusal> {
        let socket = self.cfg.socket.clone();
        tokio::task::spawn_blocking(move || {
            let c = hull_client::Client::new(&socket).map_err(|e| (e.to_string(), None))?;
            f(&c).map_err(|e| match e.api_body() {
                Some(b) => {
                    let mut m = b.message.clone();
                    for c in &b.causes {
                        m.push_str(": ");
                        m.push_str(c);
                    }
                    (m, b.report.clone().map(Box::new))
                }
                None => (e.to_string(), None),
            })
        })
        .await
        .map_err(|e| (e.to_string(), None))?
    }

    /// The page for vmmd not answering.
    fn unreachable(&self, e: &str) -> Reply {
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error(
                "vmmd is not answering",
                &format!(
                    "vmmd is not answering on {}: {e}. Guests keep running; this page works \
                     again once vmmd does.",
                    self.cfg.socket.display()
                ),
            ),
        )
    }
}

/// The payload the create form's fields make: a zone from a zone image, or a microVM
/// booting a disk cloned from a zvol image.
fn fill_payload(f: &[(String, String)]) -> String {
    let brand = field(f, "brand").unwrap_or("joyent-minimal");
    let image = field(f, "image").unwrap_or_default();
    let memory: serde_json::Value = field(f, "memory")
        .and_then(|m| m.trim().parse::<u64>().ok())
        .map_or(serde_json::Value::Null, serde_json::Value::from);
    let mut p = serde_json::json!({"brand": brand});
    if let Some(a) = field(f, "alias").filter(|a| !a.trim().is_empty()) {
        p["alias"] = a.trim().into();
    }
    let microvm = brand == "kvm" || brand == "bhyve";
    if microvm {
        p["ram"] = memory;
        p["disks"] = serde_json::json!([{"image_uuid": image, "boot": true}]);
    } else {
        p["image_uuid"] = image.into();
        p["max_physical_memory"] = memory;
    }
    if let Some(tag) = field(f, "nic_tag").filter(|t| !t.is_empty()) {
        p["nics"] = serde_json::json!([{"nic_tag": tag, "ip": "dhcp", "primary": true}]);
    }
    serde_json::to_string_pretty(&p).unwrap_or_default()
}

async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let session = cookie(req.headers()).and_then(|id| app.sessions.get(&id).map(|s| (id, s)));
    match (&method, path.as_str()) {
        (&Method::GET, "/login") => return html(StatusCode::OK, pages::login(None)),
        (&Method::GET, "/style.css") => {
            return reply(
                StatusCode::OK,
                "text/css; charset=utf-8",
                pages::STYLE.into(),
            );
        }
        (&Method::GET, p) if p.starts_with("/assets/") => {
            return asset(&req, &p["/assets/".len()..]);
        }
        (&Method::POST, "/login") => return login(&app, req, peer).await,
        (&Method::GET, "/metrics") => return metrics(&app, &req, session.is_some()).await,
        _ => {}
    }
    let Some((id, session)) = session else {
        return match method {
            Method::GET | Method::HEAD => see_other("/login"),
            _ => text(StatusCode::FORBIDDEN, "log in first\n"),
        };
    };
    if method == Method::GET {
        let console = path
            .strip_prefix("/vms/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(u, tail)| Some((u.parse::<uuid::Uuid>().ok()?, tail)));
        return match console {
            Some((uuid, "console")) => console_page(&app, uuid, &session.user, &session.csrf).await,
            Some((uuid, "console/socket")) => console_socket(&app, req, uuid, &session, peer).await,
            _ => get_page(&app, &path, &session.user, &session.csrf).await,
        };
    }
    if method != Method::POST {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    // Every change carries the session's CSRF token: another site's form cannot.
    let Some(f) = form(req).await else {
        return text(StatusCode::BAD_REQUEST, "a form of at most 16 KiB\n");
    };
    if !field(&f, "csrf").is_some_and(|t| auth::same(t, &session.csrf)) {
        app.audit(&session.user, peer, "refused", &path, "bad CSRF token");
        return text(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is not this session's\n",
        );
    }
    if path == "/logout" {
        app.sessions.close(&id);
        app.audit(&session.user, peer, "logout", "", "ok");
        return see_other("/login");
    }
    let user = session.user.clone();
    if path == "/create" {
        return create(&app, &f, &user, &session.csrf, peer).await;
    }
    if path == "/images/import" {
        let Some(uuid) = field(&f, "uuid").and_then(|u| u.parse::<uuid::Uuid>().ok()) else {
            return text(StatusCode::BAD_REQUEST, "the form names no image uuid\n");
        };
        let done = app
            .vmmd(move |c| c.import_image(uuid, None, &mut |_, _| {}).map(drop))
            .await;
        app.audit(
            &user,
            peer,
            "import",
            &uuid.to_string(),
            done.as_ref().err().map_or("ok", |e| e),
        );
        return match done {
            Ok(()) => see_other("/images"),
            Err(e) => html(StatusCode::CONFLICT, pages::error("Cannot import", &e)),
        };
    }
    if let Some(action) = path.strip_prefix("/network/") {
        let name = field(&f, "name").unwrap_or_default().trim().to_string();
        let done = match action {
            "add" => {
                let tag = hull_spec::NicTag {
                    name: name.clone(),
                    uplink: field(&f, "uplink")
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(str::to_string),
                };
                app.vmmd_report(move |c| c.add_nictag(&tag).map(drop)).await
            }
            "delete" => {
                let n = name.clone();
                app.vmmd_report(move |c| c.delete_nictag(&n)).await
            }
            _ => return text(StatusCode::NOT_FOUND, "not an action\n"),
        };
        let verb = format!("nictag-{action}");
        app.audit(
            &user,
            peer,
            &verb,
            &name,
            done.as_ref().err().map_or("ok", |e| &e.0),
        );
        return match done {
            Ok(()) => see_other("/network"),
            Err((e, _)) => match app.vmmd(|c| c.nictags()).await {
                Ok(tags) => {
                    let message = format!("Cannot {action} nic tag {name:?}: {e}");
                    html(
                        StatusCode::CONFLICT,
                        pages::network(&user, &session.csrf, &tags, Some(&message)),
                    )
                }
                Err(e) => app.unreachable(&e),
            },
        };
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["vms", uuid, action] = parts.as_slice() else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let Ok(uuid) = uuid.parse::<uuid::Uuid>() else {
        return text(StatusCode::NOT_FOUND, "not a VM's uuid\n");
    };
    let action = action.to_string();
    let name = field(&f, "name").unwrap_or_default().to_string();
    let done: Result<(), Refusal> = match action.as_str() {
        "start" => app.vmmd_report(move |c| c.start_vm(uuid).map(drop)).await,
        "stop" => {
            let stop = hull_spec::api::StopRequest::default();
            app.vmmd_report(move |c| c.stop_vm(uuid, &stop).map(drop))
                .await
        }
        "reboot" => {
            let r = hull_spec::api::RebootRequest::default();
            app.vmmd_report(move |c| c.reboot_vm(uuid, &r).map(drop))
                .await
        }
        "kill" => {
            let k = hull_spec::api::KillRequest::default();
            app.vmmd_report(move |c| c.kill_vm(uuid, &k).map(drop))
                .await
        }
        "delete" => {
            if field(&f, "confirm") != Some("yes") {
                return text(
                    StatusCode::BAD_REQUEST,
                    "deleting a guest needs its confirmation box ticked\n",
                );
            }
            app.vmmd_report(move |c| c.delete_vm(uuid)).await
        }
        "snapshot" => {
            app.vmmd_report(move |c| c.create_snapshot(uuid, &name).map(drop))
                .await
        }
        "rollback" => {
            app.vmmd_report(move |c| c.rollback_snapshot(uuid, &name).map(drop))
                .await
        }
        "delete-snapshot" => {
            app.vmmd_report(move |c| c.delete_snapshot(uuid, &name).map(drop))
                .await
        }
        "update" => {
            let text_payload = field(&f, "payload").unwrap_or_default().to_string();
            match serde_json::from_str::<serde_json::Value>(&text_payload) {
                Ok(p) if p.is_object() => {
                    app.vmmd_report(move |c| c.update_vm(uuid, &p).map(drop))
                        .await
                }
                Ok(_) => Err(("the update payload must be a JSON object".into(), None)),
                Err(e) => Err((format!("the update payload is not JSON: {e}"), None)),
            }
        }
        _ => return text(StatusCode::NOT_FOUND, "not an action\n"),
    };
    let target = uuid.to_string();
    match done {
        Ok(()) => {
            app.audit(&user, peer, &action, &target, "ok");
            match action.as_str() {
                "delete" => see_other("/"),
                _ => see_other(&format!("/vms/{uuid}")),
            }
        }
        Err((e, report)) => {
            app.audit(&user, peer, &action, &target, &e);
            let message = format!("Cannot {action}: {e}");
            match app.vmmd(move |c| c.get_vm(uuid)).await {
                Ok(vm) => html(
                    StatusCode::CONFLICT,
                    pages::guest(
                        &user,
                        &session.csrf,
                        &vm,
                        Some((&message, report.as_deref())),
                    ),
                ),
                Err(_) => html(
                    StatusCode::CONFLICT,
                    pages::error(&format!("Cannot {action}"), &e),
                ),
            }
        }
    }
}

/// The pages read with GET: the dashboard, a guest, create, images, network.
/// A guest's record, None when vmmd knows no such guest.
async fn find_vm(app: &App, uuid: uuid::Uuid) -> Result<Option<hull_spec::Vm>, String> {
    app.vmmd(move |c| match c.get_vm(uuid) {
        Ok(vm) => Ok(Some(vm)),
        Err(e)
            if e.api_body()
                .is_some_and(|b| b.code == hull_spec::api::codes::NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    })
    .await
}

/// `/vms/{uuid}/console`: the console page (its script opens the socket below).
async fn console_page(app: &App, uuid: uuid::Uuid, user: &str, csrf: &str) -> Reply {
    match find_vm(app, uuid).await {
        Ok(Some(vm)) => {
            let mut r = html(StatusCode::OK, pages::console(user, csrf, &vm));
            r.headers_mut().insert(
                "content-security-policy",
                HeaderValue::from_static(CONSOLE_CSP),
            );
            r
        }
        Ok(None) => text(StatusCode::NOT_FOUND, &format!("no guest {uuid}\n")),
        Err(e) => app.unreachable(&e),
    }
}

/// The largest WebSocket message taken from a browser (keys typed, pasted text).
const CONSOLE_MESSAGE_MAX: usize = 64 << 10;

/// `/vms/{uuid}/console/socket`: a WebSocket (RFC 6455) bridged to the guest's console
/// through vmmd (`GET /v1/vms/{uuid}/console`). Taken only from this server's own pages: the
/// session cookie, its CSRF token in the query and an Origin that is this server. Binary
/// messages are the console's bytes both ways; a text message `{"resize": [cols, rows]}`
/// sets a zone's window size. Opening and closing go to the audit log.
async fn console_socket(
    app: &Arc<App>,
    req: Request<Incoming>,
    uuid: uuid::Uuid,
    session: &auth::Session,
    peer: SocketAddr,
) -> Reply {
    let target = uuid.to_string();
    let h = req.headers();
    let token_ok = req
        .uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect::<Vec<_>>()
        })
        .and_then(|q| field(&q, "csrf").map(|t| auth::same(t, &session.csrf)))
        .unwrap_or(false);
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !token_ok || host.is_none() || origin != host.map(|h| format!("https://{h}")).as_deref() {
        app.audit(
            &session.user,
            peer,
            "refused",
            &target,
            "console socket: bad CSRF token or origin",
        );
        return text(
            StatusCode::FORBIDDEN,
            "the console socket takes this session's CSRF token, from this server's own page\n",
        );
    }
    let is = |name: header::HeaderName, want: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(want))
    };
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let (Some(key), true, true, true) = (
        key,
        is(header::UPGRADE, "websocket"),
        is(header::CONNECTION, "upgrade"),
        is(header::SEC_WEBSOCKET_VERSION, "13"),
    ) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the console socket is a WebSocket (version 13)\n",
        );
    };
    let console = match hull_client::attach_console(&app.cfg.socket, uuid).await {
        Ok(c) => c,
        Err(e) => {
            let message = e
                .api_body()
                .map_or_else(|| e.to_string(), |b| b.message.clone());
            app.audit(&session.user, peer, "console", &target, &message);
            let status = match e {
                hull_client::ClientError::Api { status, .. } => {
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY)
                }
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return text(status, &format!("{message}\n"));
        }
    };
    app.audit(&session.user, peer, "console", &target, "attached");
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let (app2, user) = (app.clone(), session.user.clone());
    tokio::spawn(async move {
        let outcome = match hyper::upgrade::on(req).await {
            Ok(up) => bridge(&app2, uuid, TokioIo::new(up), console).await,
            Err(e) => format!("upgrade failed: {e}"),
        };
        app2.audit(
            &user,
            peer,
            "console",
            &target,
            &format!("detached: {outcome}"),
        );
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Carries a console between a browser's WebSocket and vmmd until either ends; says how
/// it ended.
async fn bridge<S>(
    app: &Arc<App>,
    uuid: uuid::Uuid,
    socket: S,
    console: hull_client::Console,
) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    let config = WebSocketConfig::default()
        .max_message_size(Some(CONSOLE_MESSAGE_MAX))
        .max_frame_size(Some(CONSOLE_MESSAGE_MAX));
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(socket, Role::Server, Some(config))
            .await;
    let mut stream = console.stream;
    if !console.replayed.is_empty() && ws.send(Message::Binary(console.replayed)).await.is_err() {
        return "the browser went away".into();
    }
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            n = stream.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = ws.close(None).await;
                    return "the console ended".into();
                }
                Ok(n) => {
                    if ws.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return "the browser went away".into();
                    }
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if stream.write_all(&b).await.is_err() {
                        return "the console ended".into();
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    let size = serde_json::from_str::<serde_json::Value>(t.as_str())
                        .ok()
                        .and_then(|v| {
                            let r = v.get("resize")?;
                            let cols = u16::try_from(r.get(0)?.as_u64()?).ok()?;
                            let rows = u16::try_from(r.get(1)?.as_u64()?).ok()?;
                            Some((rows, cols))
                        });
                    if let Some((rows, cols)) = size.filter(|(r, c)| *r > 0 && *c > 0) {
                        // A microVM's serial console has no window size: its refusal is no
                        // reason to end the session.
                        let _ = app.vmmd(move |c| c.resize_console(uuid, rows, cols)).await;
                    }
                }
                Some(Ok(Message::Close(_))) | None => return "the browser disconnected".into(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("the browser's WebSocket failed: {e}"),
            },
        }
    }
}

async fn get_page(app: &App, path: &str, user: &str, csrf: &str) -> Reply {
    match path {
        "/" => {
            let got = app
                .vmmd(|c| {
                    let vms = c.list_vms(&[])?;
                    // The host's figures: shown when vmmd gives them, the guests regardless.
                    let metrics = c.raw(Method::GET, "/v1/metrics", None).ok();
                    Ok((vms, metrics))
                })
                .await;
            match got {
                Ok((vms, metrics)) => {
                    let host = metrics
                        .filter(|r| r.status.is_success())
                        .map(|r| pages::Host::from_exposition(&String::from_utf8_lossy(&r.body)));
                    html(
                        StatusCode::OK,
                        pages::dashboard(user, csrf, host.as_ref(), &vms),
                    )
                }
                Err(e) => app.unreachable(&e),
            }
        }
        "/create" => create_page(app, user, csrf, "", None, false).await,
        "/images" => {
            let installed = match app.vmmd(|c| c.list_images()).await {
                Ok(i) => i,
                Err(e) => return app.unreachable(&e),
            };
            let available = app.vmmd(|c| c.available_images()).await;
            html(
                StatusCode::OK,
                pages::images(
                    user,
                    csrf,
                    &installed,
                    available.as_deref().map_err(String::as_str),
                ),
            )
        }
        "/events" => events(app, user, csrf),
        "/network" => match app.vmmd(|c| c.nictags()).await {
            Ok(tags) => html(StatusCode::OK, pages::network(user, csrf, &tags, None)),
            Err(e) => app.unreachable(&e),
        },
        _ => {
            let Some(uuid) = path
                .strip_prefix("/vms/")
                .and_then(|u| u.parse::<uuid::Uuid>().ok())
            else {
                return text(StatusCode::NOT_FOUND, "not found\n");
            };
            match find_vm(app, uuid).await {
                Ok(Some(vm)) => html(StatusCode::OK, pages::guest(user, csrf, &vm, None)),
                Ok(None) => text(StatusCode::NOT_FOUND, &format!("no guest {uuid}\n")),
                Err(e) => app.unreachable(&e),
            }
        }
    }
}

/// The events page: vmmd's events as they happen, each a table row sent as it comes (the
/// page goes on loading; a browser shows each row at once, no script needed). The stream
/// ends when the browser leaves (at the next event) or vmmd stops; the page then says so.
fn events(app: &App, user: &str, csrf: &str) -> Reply {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let socket = app.cfg.socket.clone();
    let head = pages::events_head(user, csrf);
    std::thread::spawn(move || {
        if tx.blocking_send(Bytes::from(head)).is_err() {
            return;
        }
        let ended = hull_client::Client::new(&socket).and_then(|c| {
            c.events(
                None,
                false,
                || {},
                // Called on the client's runtime: no blocking send. A browser 64 rows
                // behind, or gone, ends the stream.
                |line| match serde_json::from_str::<hull_spec::Event>(line) {
                    Ok(e) => tx.try_send(Bytes::from(pages::event_row(&e))).is_ok(),
                    Err(_) => true,
                },
            )
        });
        let why = match ended {
            Ok(()) => "vmmd ended the event stream".to_string(),
            Err(e) => format!("vmmd is not answering: {e}"),
        };
        let _ = tx.blocking_send(Bytes::from(pages::events_tail(&why)));
    });
    let mut r = Response::new(Channel(rx).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The create page with `payload` in its editor and what became of it.
async fn create_page(
    app: &App,
    user: &str,
    csrf: &str,
    payload: &str,
    refused: Option<&Refusal>,
    valid: bool,
) -> Reply {
    let (images, tags) = match app.vmmd(|c| Ok((c.list_images()?, c.nictags()?))).await {
        Ok(x) => x,
        Err(e) => return app.unreachable(&e),
    };
    let status = match refused {
        Some(_) => StatusCode::UNPROCESSABLE_ENTITY,
        None => StatusCode::OK,
    };
    let form = pages::CreateForm {
        images: &images,
        tags: &tags,
        payload,
        refused: refused.map(|(m, r)| (m.as_str(), r.as_deref())),
        valid,
    };
    html(status, pages::create(user, csrf, &form))
}

/// POST /create: `do=fill` makes the payload from the form's fields, `validate` validates
/// the payload as `vmadm validate create` does, `create` creates the guest (then its page).
async fn create(
    app: &App,
    f: &[(String, String)],
    user: &str,
    csrf: &str,
    peer: SocketAddr,
) -> Reply {
    if field(f, "do") == Some("fill") {
        return create_page(app, user, csrf, &fill_payload(f), None, false).await;
    }
    let text_payload = field(f, "payload").unwrap_or_default().to_string();
    let payload = match serde_json::from_str::<serde_json::Value>(&text_payload) {
        Ok(p) if p.is_object() => p,
        Ok(_) => {
            let r = ("the payload must be a JSON object".to_string(), None);
            return create_page(app, user, csrf, &text_payload, Some(&r), false).await;
        }
        Err(e) => {
            let r = (format!("the payload is not JSON: {e}"), None);
            return create_page(app, user, csrf, &text_payload, Some(&r), false).await;
        }
    };
    if field(f, "do") == Some("validate") {
        let checked = app.vmmd_report(move |c| c.validate_create(&payload)).await;
        return match checked {
            Ok(_) => create_page(app, user, csrf, &text_payload, None, true).await,
            Err(r) => create_page(app, user, csrf, &text_payload, Some(&r), false).await,
        };
    }
    match app.vmmd_report(move |c| c.create_vm(&payload)).await {
        Ok(vm) => {
            app.audit(user, peer, "create", &vm.uuid.to_string(), "ok");
            see_other(&format!("/vms/{}", vm.uuid))
        }
        Err(r) => {
            app.audit(user, peer, "create", "", &r.0);
            create_page(app, user, csrf, &text_payload, Some(&r), false).await
        }
    }
}

async fn login(app: &App, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    let Some(f) = form(req).await else {
        return text(StatusCode::BAD_REQUEST, "a form of at most 16 KiB\n");
    };
    let user = field(&f, "user").unwrap_or_default().to_string();
    let password = field(&f, "password").unwrap_or_default().to_string();
    tokio::time::sleep(app.throttle.delay()).await;
    let dir = app.cfg.state.clone();
    let (u, p) = (user.clone(), password);
    let ok = tokio::task::spawn_blocking(move || auth::is_user(&u) && auth::verify(&dir, &u, &p))
        .await
        .unwrap_or(false);
    app.throttle.note(ok);
    let shown = if auth::is_user(&user) {
        user.as_str()
    } else {
        "?"
    };
    if !ok {
        app.audit(shown, peer, "login", "", "wrong user or password");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("Wrong user or password.")),
        );
    }
    app.audit(&user, peer, "login", "", "ok");
    let (id, _) = app.sessions.open(&user);
    let mut r = see_other("/");
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `/metrics`: vmmd's exposition, for a session or the metrics token.
async fn metrics(app: &App, req: &Request<Incoming>, session: bool) -> Reply {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| auth::same(t.trim(), &app.metrics_token));
    if !session && !bearer {
        return text(
            StatusCode::UNAUTHORIZED,
            "log in, or give the metrics token (Authorization: Bearer)\n",
        );
    }
    let got = app.vmmd(|c| c.raw(Method::GET, "/v1/metrics", None)).await;
    match got {
        Ok(r) if r.status.is_success() => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            String::from_utf8_lossy(&r.body).into_owned(),
        ),
        Ok(r) => text(
            StatusCode::BAD_GATEWAY,
            &format!("vmmd answered {}\n", r.status),
        ),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("vmmd is not answering: {e}\n"),
        ),
    }
}
