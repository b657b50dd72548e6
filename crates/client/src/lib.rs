//! A blocking client for vmmd's API (HTTP/1.1 + JSON over a Unix socket), used by the CLIs
//! and the test suites. One request per connection keeps it simple and stateless; the
//! socket path comes from `--socket`, `HULL_SOCKET` or the default.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hull_spec::api::{
    ImageSource, ImportProgress, KillRequest, RebootRequest, StopRequest, ValidateOk,
};
use hull_spec::{ApiErrorBody, Brand, ImageManifest, NicTag, Ping, Vm};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

/// The socket vmmd listens on unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hull/vmmd.sock";

/// The socket to use: the explicit one, else `HULL_SOCKET`, else the default.
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HULL_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to vmmd at {socket} (is vmmd running, and are you root?)")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the request to vmmd failed")]
    Http(#[source] hyper::Error),
    /// vmmd answered with an error.
    #[error("{}", .body.message)]
    Api {
        /// HTTP status.
        status: u16,
        /// vmmd's error body.
        body: Box<ApiErrorBody>,
    },
    /// vmmd's reply was not what the client expected.
    #[error("vmmd sent a reply the client cannot read")]
    Decode(#[source] serde_json::Error),
    /// A local file could not be read.
    #[error("cannot read {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The client's I/O runtime could not start.
    #[error("cannot start the client runtime")]
    Runtime(#[source] std::io::Error),
}

impl ClientError {
    /// The API error body, when vmmd answered with one.
    pub fn api_body(&self) -> Option<&ApiErrorBody> {
        match self {
            ClientError::Api { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// The body type of every request: whole for JSON, streamed for image uploads.
pub type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn full(b: Bytes) -> ReqBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// A raw reply.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

/// A 2xx reply decoded into `T`; anything else as the API error it carries.
fn decode_reply<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
    if !status.is_success() {
        let body = serde_json::from_slice::<ApiErrorBody>(body).unwrap_or_else(|_| ApiErrorBody {
            code: "Unknown".into(),
            message: format!(
                "vmmd answered {status} with a body that is not an API error: {}",
                String::from_utf8_lossy(body)
            ),
            causes: Vec::new(),
            report: None,
        });
        return Err(ClientError::Api {
            status: status.as_u16(),
            body: Box::new(body),
        });
    }
    serde_json::from_slice(body).map_err(ClientError::Decode)
}

/// A whole reply decoded as [`decode_reply`] does.
async fn decode_response<T: DeserializeOwned>(
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<T, ClientError> {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(ClientError::Http)?
        .to_bytes();
    decode_reply(status, &bytes)
}

/// A running guest's console, reached through vmmd's API.
#[derive(Debug)]
pub struct Console {
    /// The connection, now the console's byte stream both ways.
    pub stream: tokio::net::UnixStream,
    /// Console bytes that arrived with vmmd's 101 (the start of what it replays).
    pub replayed: Bytes,
}

/// `GET /v1/vms/{uuid}/console` with `Upgrade: hull-console` on a new connection to `socket`
/// (for async callers such as hull-web; [`Client::console`] is the blocking form): once
/// vmmd answers 101 the connection carries the console both ways. A refusal (the guest is
/// not running, no such guest) is vmmd's error.
pub async fn attach_console(socket: &Path, uuid: Uuid) -> Result<Console, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ClientError::Http)?;
    tokio::spawn(conn.with_upgrades());
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("/v1/vms/{uuid}/console"))
        .header(hyper::header::HOST, "vmmd")
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, hull_spec::api::CONSOLE_UPGRADE)
        .body(full(Bytes::new()))
        .unwrap_or_else(|_| Request::new(full(Bytes::new())));
    let resp = sender.send_request(req).await.map_err(ClientError::Http)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        decode_response::<Value>(resp).await?;
        return Err(ClientError::Api {
            status: status.as_u16(),
            body: Box::new(ApiErrorBody {
                code: "Unknown".into(),
                message: format!("vmmd answered {status} instead of switching to the console"),
                causes: Vec::new(),
                report: None,
            }),
        });
    }
    let upgraded = hyper::upgrade::on(resp).await.map_err(ClientError::Http)?;
    let parts = upgraded
        .downcast::<TokioIo<tokio::net::UnixStream>>()
        .map_err(|_| ClientError::Api {
            status: 101,
            body: Box::new(ApiErrorBody {
                code: "Unknown".into(),
                message: "the console connection is not the socket it was made on".into(),
                causes: Vec::new(),
                report: None,
            }),
        })?;
    Ok(Console {
        stream: parts.io.into_inner(),
        replayed: parts.read_buf,
    })
}

/// The client.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(Client {
            socket: socket.into(),
            rt,
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<ReqBody>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends one request on a new connection.
    async fn send(
        &self,
        req: Request<ReqBody>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut sender = self.connect().await?;
        sender.send_request(req).await.map_err(ClientError::Http)
    }

    fn build(method: Method, path: &str, body: Option<&Value>) -> Request<ReqBody> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "vmmd");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        // The builder only fails on invalid header values, and ours are constants.
        req.body(full(Bytes::from(bytes)))
            .unwrap_or_else(|_| Request::new(full(Bytes::new())))
    }

    /// Sends one request and returns the raw reply, whatever its status.
    pub fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ClientError> {
        self.rt.block_on(async {
            let resp = self.send(Self::build(method, path, body)).await?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(ClientError::Http)?
                .to_bytes();
            Ok(Reply { status, body })
        })
    }

    /// Sends one request; a 2xx reply is decoded into `T`, anything else is an error.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let reply = self.raw(method, path, body)?;
        decode_reply(reply.status, &reply.body)
    }

    /// `GET /v1/ping`.
    pub fn ping(&self) -> Result<Ping, ClientError> {
        self.call(Method::GET, "/v1/ping", None)
    }

    fn list_path(filters: &[String], fields: Option<&[String]>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for f in filters {
            q.append_pair("filter", f);
        }
        if let Some(fields) = fields {
            q.append_pair("fields", &fields.join(","));
        }
        let q = q.finish();
        if q.is_empty() {
            "/v1/vms".to_string()
        } else {
            format!("/v1/vms?{q}")
        }
    }

    /// `GET /v1/vms`, with vmadm filters (`key=value`, `key=~regex`).
    pub fn list_vms(&self, filters: &[String]) -> Result<Vec<Vm>, ClientError> {
        self.call(Method::GET, &Self::list_path(filters, None), None)
    }

    /// `GET /v1/vms` as JSON values, with only the top-level properties the dotted
    /// `fields` need when given (what tables use: less to send and to parse).
    pub fn list_values(
        &self,
        filters: &[String],
        fields: Option<&[String]>,
    ) -> Result<Vec<Value>, ClientError> {
        self.call(Method::GET, &Self::list_path(filters, fields), None)
    }

    /// `GET /v1/vms/{uuid}`.
    pub fn get_vm(&self, uuid: Uuid) -> Result<Vm, ClientError> {
        self.call(Method::GET, &format!("/v1/vms/{uuid}"), None)
    }

    /// `GET /v1/vms/{uuid}/runtime`: where a running zone's console and runtime are.
    pub fn runtime(&self, uuid: Uuid) -> Result<hull_spec::api::Runtime, ClientError> {
        self.call(Method::GET, &format!("/v1/vms/{uuid}/runtime"), None)
    }

    /// `GET /v1/vms/{uuid}/logs`: a docker zone's output, written to `out`.
    pub fn logs(&self, uuid: Uuid, out: &mut dyn std::io::Write) -> Result<u64, ClientError> {
        self.download(&format!("/v1/vms/{uuid}/logs"), out)
    }

    /// `GET /v1/vms/{uuid}/info`: a running microVM's VMM figures.
    pub fn info(&self, uuid: Uuid) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/v1/vms/{uuid}/info"), None)
    }

    /// `POST /v1/vms`.
    pub fn create_vm(&self, payload: &Value) -> Result<Vm, ClientError> {
        self.call(Method::POST, "/v1/vms", Some(payload))
    }

    /// `PATCH /v1/vms/{uuid}`.
    pub fn update_vm(&self, uuid: Uuid, payload: &Value) -> Result<Vm, ClientError> {
        self.call(Method::PATCH, &format!("/v1/vms/{uuid}"), Some(payload))
    }

    /// `DELETE /v1/vms/{uuid}`.
    pub fn delete_vm(&self, uuid: Uuid) -> Result<(), ClientError> {
        self.call::<Value>(Method::DELETE, &format!("/v1/vms/{uuid}"), None)
            .map(drop)
    }

    /// `POST /v1/vms/{uuid}/start`.
    pub fn start_vm(&self, uuid: Uuid) -> Result<Vm, ClientError> {
        self.call(Method::POST, &format!("/v1/vms/{uuid}/start"), None)
    }

    /// `POST /v1/vms/{uuid}/stop`.
    pub fn stop_vm(&self, uuid: Uuid, req: &StopRequest) -> Result<Vm, ClientError> {
        let body = serde_json::to_value(req).map_err(ClientError::Decode)?;
        self.call(Method::POST, &format!("/v1/vms/{uuid}/stop"), Some(&body))
    }

    /// `POST /v1/vms/{uuid}/reboot`.
    pub fn reboot_vm(&self, uuid: Uuid, req: &RebootRequest) -> Result<Vm, ClientError> {
        let body = serde_json::to_value(req).map_err(ClientError::Decode)?;
        self.call(Method::POST, &format!("/v1/vms/{uuid}/reboot"), Some(&body))
    }

    /// `POST /v1/vms/{uuid}/kill`.
    pub fn kill_vm(&self, uuid: Uuid, req: &KillRequest) -> Result<Vm, ClientError> {
        let body = serde_json::to_value(req).map_err(ClientError::Decode)?;
        self.call(Method::POST, &format!("/v1/vms/{uuid}/kill"), Some(&body))
    }

    /// `POST /v1/vms/{uuid}/pause` (`true`) or `/resume` (`false`).
    pub fn pause_vm(&self, uuid: Uuid, paused: bool) -> Result<Vm, ClientError> {
        let verb = if paused { "pause" } else { "resume" };
        self.call(Method::POST, &format!("/v1/vms/{uuid}/{verb}"), None)
    }

    /// `GET /v1/vms/{uuid}/console` switched to the console's byte stream ([`attach_console`]),
    /// as a blocking socket for threads to read and write.
    pub fn console(
        &self,
        uuid: Uuid,
    ) -> Result<(std::os::unix::net::UnixStream, Bytes), ClientError> {
        let c = self.rt.block_on(attach_console(&self.socket, uuid))?;
        let connect = |source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        };
        let stream = c.stream.into_std().map_err(connect)?;
        stream.set_nonblocking(false).map_err(connect)?;
        Ok((stream, c.replayed))
    }

    /// `POST /v1/vms/{uuid}/resize`: a zone's console window size.
    pub fn resize_console(&self, uuid: Uuid, rows: u16, cols: u16) -> Result<(), ClientError> {
        let body = serde_json::json!({ "rows": rows, "cols": cols });
        self.call::<Value>(Method::POST, &format!("/v1/vms/{uuid}/resize"), Some(&body))
            .map(drop)
    }

    /// `GET /v1/vms/{uuid}/usage`.
    pub fn usage(&self, uuid: Uuid) -> Result<hull_spec::api::Usage, ClientError> {
        self.call(Method::GET, &format!("/v1/vms/{uuid}/usage"), None)
    }

    /// `POST /v1/vms/{uuid}/reprovision`.
    pub fn reprovision_vm(&self, uuid: Uuid, image_uuid: Uuid) -> Result<Vm, ClientError> {
        let body = serde_json::json!({ "image_uuid": image_uuid });
        self.call(
            Method::POST,
            &format!("/v1/vms/{uuid}/reprovision"),
            Some(&body),
        )
    }

    /// `POST /v1/vms/{uuid}/snapshots`.
    pub fn create_snapshot(&self, uuid: Uuid, name: &str) -> Result<Vm, ClientError> {
        let body = serde_json::json!({ "name": name });
        self.call(
            Method::POST,
            &format!("/v1/vms/{uuid}/snapshots"),
            Some(&body),
        )
    }

    /// `POST /v1/vms/{uuid}/snapshots/{name}/rollback`.
    pub fn rollback_snapshot(&self, uuid: Uuid, name: &str) -> Result<Vm, ClientError> {
        let n: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
        self.call(
            Method::POST,
            &format!("/v1/vms/{uuid}/snapshots/{n}/rollback"),
            None,
        )
    }

    /// `DELETE /v1/vms/{uuid}/snapshots/{name}`.
    pub fn delete_snapshot(&self, uuid: Uuid, name: &str) -> Result<Vm, ClientError> {
        let n: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
        self.call(
            Method::DELETE,
            &format!("/v1/vms/{uuid}/snapshots/{n}"),
            None,
        )
    }

    /// `POST /v1/validate/create`.
    pub fn validate_create(&self, payload: &Value) -> Result<ValidateOk, ClientError> {
        self.call(Method::POST, "/v1/validate/create", Some(payload))
    }

    /// `POST /v1/validate/update?brand=B`.
    pub fn validate_update(
        &self,
        brand: Brand,
        payload: &Value,
    ) -> Result<ValidateOk, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/validate/update?brand={brand}"),
            Some(payload),
        )
    }

    /// `GET /v1/images`.
    pub fn list_images(&self) -> Result<Vec<ImageManifest>, ClientError> {
        self.call(Method::GET, "/v1/images", None)
    }

    /// `POST /v1/images`: uploads a manifest and its file (multipart, streamed from disk).
    /// `progress(sent, total)` is called as the upload goes (about every 100 ms).
    pub fn install_image(
        &self,
        manifest: &Value,
        file: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImageManifest, ClientError> {
        self.install_image_part(manifest, file, 0, None, progress)
    }

    /// [`Client::install_image`] with `len` bytes of `file` from `offset` as the image's file
    /// (all that follows `offset` when `len` is `None`): a layer inside an OCI archive.
    pub fn install_image_part(
        &self,
        manifest: &Value,
        file: &Path,
        offset: u64,
        len: Option<u64>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImageManifest, ClientError> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::AsyncReadExt;

        /// Where the upload stream is.
        enum Part {
            Head(tokio::io::Take<tokio::fs::File>),
            File(tokio::io::Take<tokio::fs::File>),
            Done,
        }
        let open_err = |source| ClientError::File {
            path: file.to_path_buf(),
            source,
        };
        let boundary = format!("hull-{}", Uuid::new_v4().simple());
        let head = Bytes::from(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\
             Content-Type: application/json\r\n\r\n{manifest}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"file\"; filename=\"image\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        ));
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let sent = Arc::new(AtomicU64::new(0));
        self.rt.block_on(async {
            use tokio::io::AsyncSeekExt;
            let mut f = tokio::fs::File::open(file).await.map_err(open_err)?;
            let size = f.metadata().await.map_err(open_err)?.len();
            let total = match len {
                Some(n) if offset.checked_add(n).is_some_and(|end| end <= size) => n,
                None if offset <= size => size - offset,
                _ => {
                    return Err(open_err(std::io::Error::other(format!(
                        "the file ends at byte {size}, before the image's end"
                    ))));
                }
            };
            f.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(open_err)?;
            let f = f.take(total);
            let length = head.len() as u64 + total + tail.len() as u64;
            let counter = sent.clone();
            let stream = futures_util::stream::unfold(Part::Head(f), move |part| {
                let (head, tail, counter) = (head.clone(), tail.clone(), counter.clone());
                async move {
                    match part {
                        Part::Head(f) => Some((Ok(Frame::data(head)), Part::File(f))),
                        Part::File(mut f) => {
                            let mut buf = vec![0u8; 256 << 10];
                            match f.read(&mut buf).await {
                                Ok(0) => Some((Ok(Frame::data(tail)), Part::Done)),
                                Ok(n) => {
                                    buf.truncate(n);
                                    counter.fetch_add(n as u64, Ordering::Relaxed);
                                    Some((Ok(Frame::data(Bytes::from(buf))), Part::File(f)))
                                }
                                Err(e) => Some((Err(e), Part::Done)),
                            }
                        }
                        Part::Done => None,
                    }
                }
            });
            let body: ReqBody = StreamBody::new(stream).boxed_unsync();
            let req = Request::builder()
                .method(Method::POST)
                .uri("/v1/images")
                .header(hyper::header::HOST, "vmmd")
                .header(
                    hyper::header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .header(hyper::header::CONTENT_LENGTH, length)
                .body(body)
                .map_err(|e| ClientError::File {
                    path: file.to_path_buf(),
                    source: std::io::Error::other(e),
                })?;
            let mut sender = self.connect().await?;
            let response = sender.send_request(req);
            tokio::pin!(response);
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            let resp = loop {
                tokio::select! {
                    r = &mut response => break r.map_err(ClientError::Http)?,
                    _ = tick.tick() => progress(sent.load(Ordering::Relaxed), total),
                }
            };
            progress(sent.load(Ordering::Relaxed), total);
            decode_response(resp).await
        })
    }

    /// `GET /v1/sources`.
    pub fn sources(&self) -> Result<Vec<ImageSource>, ClientError> {
        self.call(Method::GET, "/v1/sources", None)
    }

    /// `POST /v1/sources`.
    pub fn add_source(&self, url: &str) -> Result<ImageSource, ClientError> {
        self.add_source_with(&ImageSource {
            url: url.to_string(),
            kind: "imgapi".to_string(),
            ca_cert: None,
            insecure: false,
            username: None,
            password: None,
        })
    }

    /// `POST /v1/sources` with its TLS settings.
    pub fn add_source_with(&self, src: &ImageSource) -> Result<ImageSource, ClientError> {
        let body = serde_json::to_value(src).unwrap_or_default();
        self.call(Method::POST, "/v1/sources", Some(&body))
    }

    /// `DELETE /v1/sources?url=U`.
    pub fn delete_source(&self, url: &str) -> Result<(), ClientError> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("url", url)
            .finish();
        self.call::<Value>(Method::DELETE, &format!("/v1/sources?{q}"), None)
            .map(drop)
    }

    /// `GET /v1/images/avail`.
    pub fn available_images(&self) -> Result<Vec<ImageManifest>, ClientError> {
        self.call(Method::GET, "/v1/images/avail", None)
    }

    /// `POST /v1/images/import`: follows the progress stream, calling `progress(bytes,
    /// total)`, and returns the installed manifest.
    /// `POST /v1/images/import` of a docker reference (`NAME[:TAG|@DIGEST]`) from the
    /// docker sources, or `source` alone: every layer not installed yet; returns the top
    /// layer's manifest.
    pub fn import_docker(
        &self,
        reference: &str,
        source: Option<&str>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImageManifest, ClientError> {
        let mut body = serde_json::json!({ "docker": reference });
        if let Some(s) = source {
            body["source"] = serde_json::json!(s);
        }
        self.import_with(&body, progress)
    }

    /// `POST /v1/images/import` of an image from the IMGAPI sources.
    pub fn import_image(
        &self,
        uuid: Uuid,
        source: Option<&str>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImageManifest, ClientError> {
        let body = match source {
            Some(s) => serde_json::json!({ "uuid": uuid, "source": s }),
            None => serde_json::json!({ "uuid": uuid }),
        };
        self.import_with(&body, progress)
    }

    /// `POST /v1/images/import` from a plain HTTP file server: the manifest's and the
    /// file's URLs.
    pub fn import_urls(
        &self,
        manifest_url: &str,
        file_url: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImageManifest, ClientError> {
        let body = serde_json::json!({ "manifest_url": manifest_url, "file_url": file_url });
        self.import_with(&body, progress)
    }

    fn import_with(
        &self,
        body: &Value,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImageManifest, ClientError> {
        let mut result = None;
        self.stream_lines(Method::POST, "/v1/images/import", Some(body), &mut |line| {
            if line.is_empty() {
                return true;
            }
            match serde_json::from_str::<ImportProgress>(line) {
                Ok(ImportProgress::Progress { bytes, total }) => {
                    progress(bytes, total);
                    true
                }
                Ok(ImportProgress::Done(m)) => {
                    result = Some(Ok(*m));
                    false
                }
                Ok(ImportProgress::Error(e)) => {
                    result = Some(Err(ClientError::Api {
                        status: 500,
                        body: Box::new(e),
                    }));
                    false
                }
                Err(e) => {
                    result = Some(Err(ClientError::Decode(e)));
                    false
                }
            }
        })?;
        result.unwrap_or_else(|| {
            Err(ClientError::Api {
                status: 502,
                body: Box::new(ApiErrorBody {
                    code: "Truncated".into(),
                    message: "vmmd ended the import stream without a result".into(),
                    causes: Vec::new(),
                    report: None,
                }),
            })
        })
    }

    /// `GET /v1/vms/{uuid}/root?compression=C`: writes the stopped zone's root tar to `out`
    /// and returns the bytes written. A transfer that breaks off is an error.
    pub fn export_root(
        &self,
        uuid: Uuid,
        compression: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, ClientError> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("compression", compression)
            .finish();
        self.download(&format!("/v1/vms/{uuid}/root?{q}"), out)
    }

    /// `GET /v1/vms/{uuid}/send[?since=S]`: writes the VM's send stream to `out` and returns
    /// the bytes written. A stream that breaks off is an error (the receiver refuses it too).
    pub fn send_vm(
        &self,
        uuid: Uuid,
        since: Option<&str>,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, ClientError> {
        let mut path = format!("/v1/vms/{uuid}/send");
        if let Some(since) = since {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("since", since)
                .finish();
            path = format!("{path}?{q}");
        }
        self.download(&path, out)
    }

    /// A GET whose 2xx body is streamed to `out`; returns the bytes written.
    fn download(&self, path: &str, out: &mut dyn std::io::Write) -> Result<u64, ClientError> {
        self.rt.block_on(async {
            let resp = self.send(Self::build(Method::GET, path, None)).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let bytes = body.collect().await.map_err(ClientError::Http)?.to_bytes();
                return decode_reply::<Value>(status, &bytes).map(|_| 0);
            }
            let mut written = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(ClientError::Http)?;
                if let Some(data) = frame.data_ref() {
                    out.write_all(data).map_err(|source| ClientError::File {
                        path: PathBuf::from("<output>"),
                        source,
                    })?;
                    written += data.len() as u64;
                }
            }
            out.flush().map_err(|source| ClientError::File {
                path: PathBuf::from("<output>"),
                source,
            })?;
            Ok(written)
        })
    }

    /// `POST /v1/vms/receive`: streams `src` (a send stream, read to its end on a thread of
    /// its own) to vmmd; the received VM.
    pub fn receive_vm(
        &self,
        mut src: impl std::io::Read + Send + 'static,
    ) -> Result<Vm, ClientError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
        let reader = std::thread::spawn(move || {
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let n = match src.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                buf.truncate(n);
                if tx.blocking_send(Ok(Frame::data(Bytes::from(buf)))).is_err() {
                    return;
                }
            }
        });
        let result = self.rt.block_on(async {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let body: ReqBody = StreamBody::new(stream).boxed_unsync();
            let req = Request::builder()
                .method(Method::POST)
                .uri("/v1/vms/receive")
                .header(hyper::header::HOST, "vmmd")
                .header(hyper::header::CONTENT_TYPE, "application/x-hull-send")
                .body(body)
                .map_err(|e| ClientError::File {
                    path: PathBuf::from("<input>"),
                    source: std::io::Error::other(e),
                })?;
            let resp = self.send(req).await?;
            decode_response(resp).await
        });
        // The reader thread ends at the input's end, or once the request (and with it the
        // channel) is gone; a refusal may leave it blocked on an input nobody reads, which
        // the process's exit ends.
        if result.is_ok() {
            let _ = reader.join();
        }
        result
    }

    /// `DELETE /v1/images/{uuid}`.
    pub fn delete_image(&self, uuid: Uuid) -> Result<(), ClientError> {
        self.call::<Value>(Method::DELETE, &format!("/v1/images/{uuid}"), None)
            .map(drop)
    }

    /// `POST /v1/images/vacuum`: the uuids deleted.
    pub fn vacuum_images(&self) -> Result<Vec<Uuid>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Vacuumed {
            deleted: Vec<Uuid>,
        }
        let v: Vacuumed = self.call(Method::POST, "/v1/images/vacuum", None)?;
        Ok(v.deleted)
    }

    /// `GET /v1/images/{uuid}`.
    pub fn get_image(&self, uuid: Uuid) -> Result<ImageManifest, ClientError> {
        self.call(Method::GET, &format!("/v1/images/{uuid}"), None)
    }

    /// `GET /v1/nictags`.
    pub fn nictags(&self) -> Result<Vec<NicTag>, ClientError> {
        self.call(Method::GET, "/v1/nictags", None)
    }

    /// `POST /v1/nictags`.
    pub fn add_nictag(&self, tag: &NicTag) -> Result<NicTag, ClientError> {
        let body = serde_json::to_value(tag).map_err(ClientError::Decode)?;
        self.call(Method::POST, "/v1/nictags", Some(&body))
    }

    /// `DELETE /v1/nictags/{name}`.
    pub fn delete_nictag(&self, name: &str) -> Result<(), ClientError> {
        let enc: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
        self.call::<Value>(Method::DELETE, &format!("/v1/nictags/{enc}"), None)
            .map(drop)
    }

    /// `GET /v1/events`: calls `on_ready` once subscribed, then `on_line` with each line
    /// until it returns false or the stream ends.
    pub fn events(
        &self,
        uuid: Option<Uuid>,
        full: bool,
        mut on_ready: impl FnMut(),
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let mut path = format!("/v1/events?full={full}");
        if let Some(u) = uuid {
            path.push_str(&format!("&uuid={u}"));
        }
        self.stream_lines(Method::GET, &path, None, &mut |line| {
            if line.is_empty() {
                on_ready();
                return true;
            }
            on_line(line)
        })
    }

    /// Sends a request whose reply is JSON lines; calls `on_line` with each (first with an
    /// empty line once the reply has started) until it returns false or the stream ends.
    fn stream_lines(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        on_line: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        self.rt.block_on(async {
            let resp = self.send(Self::build(method, path, body)).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let bytes = body.collect().await.map_err(ClientError::Http)?.to_bytes();
                let body =
                    serde_json::from_slice::<ApiErrorBody>(&bytes).map_err(ClientError::Decode)?;
                return Err(ClientError::Api {
                    status: status.as_u16(),
                    body: Box::new(body),
                });
            }
            if !on_line("") {
                return Ok(());
            }
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(ClientError::Http)?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                pending.extend_from_slice(data);
                while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if text.trim().is_empty() {
                        continue;
                    }
                    if !on_line(&text) {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }
}
