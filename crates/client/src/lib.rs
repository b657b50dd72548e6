//! A blocking client for vmmd's API (HTTP/1.1 + JSON over a Unix socket), used by the CLIs
//! and the test suites. One request per connection keeps it simple and stateless; the
//! socket path comes from `--socket`, `HULL_SOCKET` or the default.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hull_spec::api::{KillRequest, RebootRequest, StopRequest, ValidateOk};
use hull_spec::{ApiErrorBody, Brand, ImageManifest, NicTag, Ping, Vm};
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

/// A raw reply.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
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
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
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

    fn build(method: Method, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "vmmd");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        // The builder only fails on invalid header values, and ours are constants.
        req.body(Full::new(Bytes::from(bytes)))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    /// Sends one request and returns the raw reply, whatever its status.
    pub fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ClientError> {
        self.rt.block_on(async {
            let mut sender = self.connect().await?;
            let resp = sender
                .send_request(Self::build(method, path, body))
                .await
                .map_err(ClientError::Http)?;
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
        if !reply.status.is_success() {
            let body = serde_json::from_slice::<ApiErrorBody>(&reply.body).unwrap_or_else(|_| {
                ApiErrorBody {
                    code: "Unknown".into(),
                    message: format!(
                        "vmmd answered {} with a body that is not an API error: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    ),
                    causes: Vec::new(),
                    report: None,
                }
            });
            return Err(ClientError::Api {
                status: reply.status.as_u16(),
                body: Box::new(body),
            });
        }
        serde_json::from_slice(&reply.body).map_err(ClientError::Decode)
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
        self.rt.block_on(async {
            let mut sender = self.connect().await?;
            let resp = sender
                .send_request(Self::build(Method::GET, &path, None))
                .await
                .map_err(ClientError::Http)?;
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
            on_ready();
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
                    if !on_line(&text) {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }
}
