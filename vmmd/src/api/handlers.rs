//! One handler per action: decode the body into its request type, call the service, encode
//! the reply. No handler holds state or decides policy; the service does.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hull_spec::api::{
    Created, ImageSource, ImportProgress, ImportRequest, KillRequest, RebootRequest,
    ReprovisionRequest, ResizeRequest, StopRequest, ValidateOk,
};
use hull_spec::flatten::{RECORD_PATH_RULE, is_record_path};
use hull_spec::{Brand, NicTag, Ping};
use hyper::StatusCode;
use hyper::body::Frame;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::error::ApiError;
use super::router::Action;
use super::{Body, BodyError, Caller, full_body, json, response};
use crate::service::filter::Filter;
use crate::service::{Record, Service, SnapshotVerb};
use hull_spec::vm::SnapshotRequest;

type Reply = Result<hyper::Response<Body>, ApiError>;

/// Decodes an optional request body (`null` = the type's default).
fn decode<T: DeserializeOwned + Default>(body: Value) -> Result<T, ApiError> {
    if body.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

fn require_object(body: &Value) -> Result<(), ApiError> {
    if body.is_object() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ))
    }
}

/// Runs one action for `caller`. Payloads naming host files are checked against what the
/// caller may use before anything else, so a refusal leaves nothing behind.
pub async fn dispatch(
    service: &Arc<Service>,
    caller: &Caller,
    action: Action,
    body: Value,
) -> Reply {
    match action {
        Action::Ping => Ok(json(
            StatusCode::OK,
            &Ping {
                ok: true,
                version: env!("CARGO_PKG_VERSION").to_string(),
                api: "v1".to_string(),
                pid: std::process::id(),
            },
        )),
        Action::OpenApi => Ok(json(StatusCode::OK, &super::openapi::document())),
        Action::ListVms { filters, fields } => {
            let filters = filters
                .iter()
                .map(|f| Filter::parse(f))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            if let Some(bad) = fields.iter().flatten().find(|f| !is_record_path(f)) {
                return Err(ApiError::bad_request(format!(
                    "field {bad:?} {RECORD_PATH_RULE}"
                )));
            }
            let records = service.list(&filters);
            Ok(match fields {
                None => list_reply(&records),
                Some(fields) => projected_reply(&records, &fields),
            })
        }
        Action::CreateVm => {
            require_object(&body)?;
            caller.check_create(&body)?;
            let vm = service.create(&body).await?;
            Ok(record(StatusCode::CREATED, &vm))
        }
        Action::GetVm(uuid) => {
            let r = service.get(uuid)?;
            Ok(record(StatusCode::OK, &r))
        }
        Action::UpdateVm(uuid) => {
            require_object(&body)?;
            caller.check_update(&body)?;
            let vm = service.update(uuid, &body).await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::DeleteVm(uuid) => {
            service.delete(uuid).await?;
            Ok(json(StatusCode::OK, &Created { uuid }))
        }
        Action::StartVm(uuid) => {
            let vm = service.start_by_hand(uuid).await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::StopVm(uuid) => {
            let req: StopRequest = decode(body)?;
            let vm = service
                .stop(uuid, req.force, req.timeout, req.keep_autoboot)
                .await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::RebootVm(uuid) => {
            let req: RebootRequest = decode(body)?;
            let vm = service.reboot(uuid, req.force).await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::KillVm(uuid) => {
            let req: KillRequest = decode(body)?;
            let signal = match &req.signal {
                Some(sig) => parse_signal(sig)?,
                // SmartOS's vmadm kill sends SIGTERM unless told otherwise.
                None => libc::SIGTERM,
            };
            let vm = service.kill(uuid, signal).await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::ReprovisionVm(uuid) => {
            require_object(&body)?;
            let req: ReprovisionRequest = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("invalid reprovision request: {e}")))?;
            let vm = service.reprovision(uuid, req.image_uuid).await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::PauseVm(uuid) => {
            let vm = service.pause(uuid, true).await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::ResumeVm(uuid) => {
            let vm = service.pause(uuid, false).await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::ResizeConsole(uuid) => {
            let req: ResizeRequest = decode(body)?;
            service.resize(uuid, req.rows, req.cols).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({})))
        }
        Action::Usage(uuid) => {
            let usage = service.usage(uuid).await?;
            Ok(json(StatusCode::OK, &usage))
        }
        Action::Metrics => {
            let text = service.metrics().await?;
            Ok(response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                full_body(text.into()),
            ))
        }
        Action::Info(uuid) => {
            let info = service.info(uuid).await?;
            Ok(json(StatusCode::OK, &info))
        }
        Action::Logs(uuid) => {
            let bytes = service.logs(uuid).await?;
            Ok(response(
                StatusCode::OK,
                "application/octet-stream",
                full_body(bytes),
            ))
        }
        Action::Runtime(uuid) => {
            let dir = service.runtime_dir(uuid)?;
            let rt = hull_spec::api::Runtime {
                console: dir
                    .join(zoned::config::files::CONSOLE)
                    .display()
                    .to_string(),
                dir: dir.display().to_string(),
            };
            Ok(json(StatusCode::OK, &rt))
        }
        Action::ExportRoot(uuid, compression) => {
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            service.export_root(uuid, &compression, tx)?;
            let s = stream::poll_fn(move |cx| {
                rx.poll_recv(cx)
                    .map(|item| item.map(|r| r.map(Frame::data)))
            });
            let body = StreamBody::new(s).map_err(BodyError::from).boxed_unsync();
            Ok(response(StatusCode::OK, "application/x-tar", body))
        }
        Action::SendVm(uuid, since) => {
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            service.send(uuid, since, tx).await?;
            let s = stream::poll_fn(move |cx| {
                rx.poll_recv(cx)
                    .map(|item| item.map(|r| r.map(Frame::data)))
            });
            let body = StreamBody::new(s).map_err(BodyError::from).boxed_unsync();
            Ok(response(StatusCode::OK, "application/x-hull-send", body))
        }
        Action::ReceiveVm => Err(ApiError::bad_request("receive takes a send stream body")),
        Action::Console(_) => Err(ApiError::upgrade_required(hull_spec::api::CONSOLE_UPGRADE)),
        Action::CreateSnapshot(uuid) => {
            require_object(&body)?;
            let req: SnapshotRequest = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("invalid snapshot request: {e}")))?;
            let vm = service
                .snapshot(uuid, &req.name, SnapshotVerb::Create)
                .await?;
            Ok(record(StatusCode::CREATED, &vm))
        }
        Action::RollbackSnapshot(uuid, name) => {
            let vm = service
                .snapshot(uuid, &name, SnapshotVerb::Rollback)
                .await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::DeleteSnapshot(uuid, name) => {
            let vm = service.snapshot(uuid, &name, SnapshotVerb::Delete).await?;
            Ok(record(StatusCode::OK, &vm))
        }
        Action::ValidateCreate => {
            require_object(&body)?;
            caller.check_create(&body)?;
            let c = service.validate_create(&body)?;
            let brand = c.brand.map_or("", Brand::as_str).to_string();
            Ok(json(
                StatusCode::OK,
                &ValidateOk {
                    action: "create".into(),
                    brand,
                },
            ))
        }
        Action::ValidateUpdate(brand) => {
            require_object(&body)?;
            caller.check_update(&body)?;
            service.validate_update(&body, brand)?;
            Ok(json(
                StatusCode::OK,
                &ValidateOk {
                    action: "update".into(),
                    brand: brand.as_str().into(),
                },
            ))
        }
        Action::ListImages => Ok(json(StatusCode::OK, &service.images()?)),
        Action::GetImage(uuid) => Ok(json(StatusCode::OK, &service.image(uuid)?)),
        Action::InstallImage => Err(ApiError::bad_request("install takes a multipart body")),
        Action::DeleteImage(uuid) => {
            service.delete_image(uuid).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({ "uuid": uuid })))
        }
        Action::AvailImages => Ok(json(StatusCode::OK, &service.available().await?)),
        Action::ImportImage => {
            require_object(&body)?;
            let req: ImportRequest = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("invalid import request: {e}")))?;
            let (url, manifest) = match req {
                ImportRequest {
                    uuid: Some(uuid),
                    source,
                    manifest_url: None,
                    file_url: None,
                    docker: None,
                } => service.prepare_import(uuid, source).await?,
                ImportRequest {
                    uuid: None,
                    source: None,
                    manifest_url: Some(m),
                    file_url: Some(f),
                    docker: None,
                } => service.prepare_url_import(&m, f).await?,
                ImportRequest {
                    uuid: None,
                    source,
                    manifest_url: None,
                    file_url: None,
                    docker: Some(reference),
                } => return Ok(docker_import_stream(service, reference, source)),
                _ => {
                    return Err(ApiError::bad_request(
                        "import takes a uuid (and optionally a source), a manifest_url and a file_url, or a docker reference (and optionally a source)",
                    ));
                }
            };
            Ok(import_stream(service, url, manifest))
        }
        Action::ListSources => Ok(json(StatusCode::OK, &service.sources()?)),
        Action::AddSource => {
            require_object(&body)?;
            let src: ImageSource = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("invalid source: {e}")))?;
            Ok(json(StatusCode::CREATED, &service.add_source(src).await?))
        }
        Action::DeleteSource(url) => {
            service.delete_source(&url).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({ "url": url })))
        }
        Action::VacuumImages => {
            let removed = service.vacuum_images().await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "deleted": removed }),
            ))
        }
        Action::ListNicTags => {
            let tags: Vec<NicTag> = service.nictags()?.into_values().collect();
            Ok(json(StatusCode::OK, &tags))
        }
        Action::AddNicTag => {
            require_object(&body)?;
            let tag: NicTag = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("invalid nic tag: {e}")))?;
            Ok(json(StatusCode::CREATED, &service.add_nictag(tag).await?))
        }
        Action::DeleteNicTag(name) => {
            service.delete_nictag(&name).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({ "name": name })))
        }
        Action::Events { uuid, full } => Ok(events(service, uuid, full)),
    }
}

/// A record reply from its cached JSON.
fn record(status: StatusCode, r: &Record) -> hyper::Response<Body> {
    let mut bytes = Vec::with_capacity(r.json.len() + 1);
    bytes.extend_from_slice(&r.json);
    bytes.push(b'\n');
    response(status, "application/json", full_body(bytes))
}

/// A list reply: the cached JSON of each record, joined; nothing is re-encoded.
fn list_reply(records: &[Arc<Record>]) -> hyper::Response<Body> {
    let len = records.iter().map(|r| r.json.len() + 1).sum::<usize>() + 3;
    let mut bytes = Vec::with_capacity(len);
    bytes.push(b'[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        bytes.extend_from_slice(&r.json);
    }
    bytes.extend_from_slice(b"]\n");
    response(StatusCode::OK, "application/json", full_body(bytes))
}

/// A list reply holding only the top-level properties the dotted `fields` start with
/// (`nics.0.ip` keeps `nics`), so a table asks for what it shows and no more. Written
/// straight into the body, without building intermediate objects.
fn projected_reply(records: &[Arc<Record>], fields: &[String]) -> hyper::Response<Body> {
    let mut tops: Vec<&str> = Vec::new();
    for f in fields {
        let top = f.split('.').next().unwrap_or(f);
        if !tops.contains(&top) {
            tops.push(top);
        }
    }
    let mut out = Vec::with_capacity(records.len() * 96 + 3);
    out.push(b'[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        let mut first = true;
        for top in &tops {
            if let Some(v) = r.value.get(*top) {
                if !first {
                    out.push(b',');
                }
                first = false;
                // Writing to a Vec cannot fail, and the key is a plain string.
                let _ = serde_json::to_writer(&mut out, top);
                out.push(b':');
                let _ = serde_json::to_writer(&mut out, v);
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]\n");
    response(StatusCode::OK, "application/json", full_body(out))
}

/// Signal names vmadm kill accepts: `KILL`, `SIGKILL`, `9`.
pub fn parse_signal(s: &str) -> Result<i32, ApiError> {
    let name = s.trim_start_matches("SIG");
    let by_name = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("KILL", 9),
        ("USR1", 10),
        ("USR2", 12),
        ("TERM", 15),
        ("CONT", 18),
        ("STOP", 19),
    ];
    by_name
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, n)| *n)
        .or_else(|| s.parse::<i32>().ok().filter(|n| (1..=64).contains(n)))
        .ok_or_else(|| ApiError::bad_request(format!("unknown signal {s:?}")))
}

/// An import's progress as a stream of JSON lines, ending with `done` or `error`.
fn import_stream(service: &Arc<Service>, url: String, manifest: Value) -> hyper::Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportProgress>(64);
    let svc = service.clone();
    tokio::spawn(async move { svc.run_import(url, manifest, tx).await });
    progress_stream(rx)
}

/// `POST /v1/images/import` of a docker reference: the same progress stream.
fn docker_import_stream(
    service: &Arc<Service>,
    reference: String,
    source: Option<String>,
) -> hyper::Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportProgress>(64);
    let svc = service.clone();
    tokio::spawn(async move { svc.run_docker_import(reference, source, tx).await });
    progress_stream(rx)
}

/// Import progress lines as an ndjson body.
fn progress_stream(rx: tokio::sync::mpsc::Receiver<ImportProgress>) -> hyper::Response<Body> {
    let s = stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        let mut line = serde_json::to_vec(&item).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, BodyError>(Frame::data(Bytes::from(line))), rx))
    });
    response(
        StatusCode::OK,
        "application/x-ndjson",
        StreamBody::new(s).boxed_unsync(),
    )
}

/// The event stream: one JSON object per line, as events happen.
fn events(service: &Arc<Service>, only: Option<Uuid>, full: bool) -> hyper::Response<Body> {
    let rx = service.subscribe();
    let s = stream::unfold((rx, false), move |(mut rx, done)| async move {
        if done {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if only.is_some_and(|u| u != ev.uuid) {
                        continue;
                    }
                    let mut ev = (*ev).clone();
                    if !full {
                        ev.vm = None;
                    }
                    let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                    line.push(b'\n');
                    return Some((
                        Ok::<_, BodyError>(Frame::data(Bytes::from(line))),
                        (rx, false),
                    ));
                }
                Err(RecvError::Lagged(n)) => {
                    let line = format!(
                        "{{\"code\":\"Lagged\",\"message\":\"this subscriber fell {n} events behind; reconnect\"}}\n"
                    );
                    return Some((
                        Ok::<_, BodyError>(Frame::data(Bytes::from(line))),
                        (rx, true),
                    ));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    response(
        StatusCode::OK,
        "application/x-ndjson",
        StreamBody::new(s).boxed_unsync(),
    )
}

/// `GET /v1/vms/{uuid}/console` with `Upgrade: hull-console` (the protocol's name is
/// [`hull_spec::api::CONSOLE_UPGRADE`]): once vmmd answers 101, the connection carries the
/// running guest's console both ways, as its console socket does for `vmadm console` (what
/// the guest printed before is replayed first). For hull-web's console page: a client of the
/// API socket reaches the console without the power to open vmmd's runtime files.
pub async fn console(
    service: &Arc<Service>,
    uuid: Uuid,
    req: hyper::Request<hyper::body::Incoming>,
) -> Reply {
    let protocol = hull_spec::api::CONSOLE_UPGRADE;
    let asked = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(protocol));
    if !asked {
        return Err(ApiError::upgrade_required(protocol));
    }
    let path = service
        .runtime_dir(uuid)?
        .join(zoned::config::files::CONSOLE);
    // Connected before the 101, so that a console that cannot be reached is an error reply.
    let mut console = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
        ApiError::from(crate::service::ServiceError::Conflict(format!(
            "the console of VM {uuid} does not answer ({}: {e})",
            path.display()
        )))
    })?;
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut client = hyper_util::rt::TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut console).await;
            }
            Err(e) => tracing::debug!(error = %e, %uuid, "console upgrade failed"),
        }
    });
    let mut r = response(
        StatusCode::SWITCHING_PROTOCOLS,
        "application/octet-stream",
        full_body(Vec::new()),
    );
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static(hull_spec::api::CONSOLE_UPGRADE),
    );
    Ok(r)
}

/// `POST /v1/images`: `multipart/form-data` with a `manifest` part (JSON, first) and a `file`
/// part streamed into the image store, verified against the manifest as it arrives.
pub async fn install_image(
    service: &Arc<Service>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Reply {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let boundary = multer::parse_boundary(&content_type).map_err(|_| {
        ApiError::unsupported_media_type(&format!(
            "{content_type} (install takes multipart/form-data with a manifest and a file part)"
        ))
    })?;
    let stream = http_body_util::BodyDataStream::new(req.into_body());
    let constraints = multer::Constraints::new()
        .allowed_fields(vec!["manifest", "file"])
        .size_limit(multer::SizeLimit::new().for_field("manifest", 1 << 20));
    let mut parts = multer::Multipart::with_constraints(stream, boundary, constraints);
    let result = install_parts(service, &mut parts).await;
    if result.is_err() {
        // Read what the client is still sending, so that it gets the error reply instead of a
        // broken pipe. The manifest bounds the file, and multer the manifest.
        while let Ok(Some(mut field)) = parts.next_field().await {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    }
    let installed = result?;
    Ok(json(StatusCode::CREATED, &installed))
}

/// `POST /v1/vms/receive`: a send stream (`vmadm send`'s output) as the body, streamed into
/// the new guest's storage. Root only: the stream's record names host paths (lofs sources,
/// boot files) that only root may give a guest.
pub async fn receive_vm(
    service: &Arc<Service>,
    caller: &Caller,
    req: hyper::Request<hyper::body::Incoming>,
) -> Reply {
    use crate::service::images::ChunkReader;
    let mut body = req.into_body();
    let result = if caller.any_host_path {
        let (tx, reader) = ChunkReader::channel();
        let svc = service.clone();
        let job = tokio::spawn(async move { svc.receive(reader).await });
        feed(&tx, &mut http_body_util::BodyDataStream::new(&mut body)).await;
        drop(tx);
        job.await
            .map_err(|e| ApiError::from(crate::service::ServiceError::Task(e)))?
            .map_err(ApiError::from)
    } else {
        Err(ApiError::forbidden(
            "only root may receive a VM: its record names host paths",
        ))
    };
    // Read what the client is still sending, so that it gets the reply instead of a broken
    // pipe.
    while let Some(Ok(_)) = body.frame().await {}
    let vm = result?;
    Ok(record(StatusCode::CREATED, &vm))
}

/// Feeds an upload's chunks to the blocking reader behind `tx` until they end, the upload
/// breaks off (the reader gets the error) or the reader is gone (it stopped reading: it
/// refused what it read, and its error is the answer).
async fn feed<E: std::fmt::Display>(
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    chunks: &mut (impl futures_util::Stream<Item = Result<Bytes, E>> + Unpin),
) {
    use futures_util::StreamExt;
    while let Some(chunk) = chunks.next().await {
        let item = chunk.map_err(|e| std::io::Error::other(format!("the upload broke off: {e}")));
        let broke = item.is_err();
        if tx.send(item).await.is_err() || broke {
            return;
        }
    }
}

/// The manifest and file parts of an install upload.
async fn install_parts(
    service: &Arc<Service>,
    parts: &mut multer::Multipart<'static>,
) -> Result<hull_spec::ImageManifest, ApiError> {
    use crate::service::images::ChunkReader;
    let bad = |e: multer::Error| ApiError::bad_request(format!("cannot read the upload: {e}"));
    let first = parts.next_field().await.map_err(bad)?;
    let manifest = match first {
        Some(f) if f.name() == Some("manifest") => f.bytes().await.map_err(bad)?,
        _ => {
            return Err(ApiError::bad_request(
                "the upload must start with a manifest part",
            ));
        }
    };
    let raw: Value = serde_json::from_slice(&manifest)
        .map_err(|e| ApiError::bad_request(format!("the manifest is not valid JSON: {e}")))?;
    let (manifest, spec) = service.check_manifest(&raw)?;
    let mut file = match parts.next_field().await.map_err(bad)? {
        Some(f) if f.name() == Some("file") => f,
        _ => {
            return Err(ApiError::bad_request(
                "the manifest part must be followed by a file part",
            ));
        }
    };
    let (tx, reader) = ChunkReader::channel();
    let svc = service.clone();
    let job = tokio::spawn(async move { svc.install_image(manifest, spec, reader).await });
    feed(&tx, &mut file).await;
    drop(tx);
    let installed = job
        .await
        .map_err(|e| ApiError::from(crate::service::ServiceError::Task(e)))??;
    Ok(installed)
}
