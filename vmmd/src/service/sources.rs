//! Image sources and import: vmmd fetches manifests and files from IMGAPI-compatible servers
//! (`GET /images`, `/images/:uuid`, `/images/:uuid/file`) and installs them through the same
//! verified path as a local install. Everything a server sends is untrusted: manifests are
//! validated, files are checked against them while streaming, replies are size-bounded.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hull_spec::api::{ApiErrorBody, ImageSource, ImportProgress};
use hull_spec::{ImageManifest, ValidationReport, validate_manifest};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::images::ChunkReader;
use super::{Service, ServiceError};

/// The largest JSON reply accepted from a source.
const MAX_JSON: usize = 16 << 20;

/// Why talking to a source failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not one hull can fetch.
    #[error("{url:?} is not a source URL hull can use: {why}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        why: &'static str,
    },
    /// The connection failed.
    #[error("cannot connect to {url}")]
    Connect {
        /// The URL.
        url: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the request to {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The HTTP error.
        #[source]
        source: hyper::Error,
    },
    /// The server answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The TLS handshake failed (the certificate refused, most often: the reason follows).
    #[error("the TLS connection to {host} failed ({url})")]
    Tls {
        /// The server's host.
        host: String,
        /// The URL.
        url: String,
        /// The handshake's error, naming the certificate's fault.
        #[source]
        source: std::io::Error,
    },
    /// The source's TLS settings cannot be used (a CA file that holds no certificate).
    #[error("the TLS settings for {url} cannot be used: {why}")]
    TlsConfig {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// A registry refused the request or sent what cannot be used (credentials, digests,
    /// sizes, redirects).
    #[error("{url}: {why}")]
    Denied {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The reply was too large or not JSON.
    #[error("{url} sent a reply that is not a JSON document of at most {} MiB", limit >> 20)]
    Body {
        /// The URL.
        url: String,
        /// The largest reply taken, in bytes.
        limit: usize,
    },
}

/// How an https source's certificate is checked: against the system's CAs and the source's
/// own CA when it names one, or not at all when it is marked insecure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOpts {
    /// PEM certificates of a private CA.
    pub ca_pem: Option<String>,
    /// Accept any certificate (`imgadm sources -k`).
    pub insecure: bool,
}

impl From<&ImageSource> for TlsOpts {
    fn from(s: &ImageSource) -> TlsOpts {
        TlsOpts {
            ca_pem: s.ca_cert.clone(),
            insecure: s.insecure,
        }
    }
}

/// The system's CA certificates (/etc/ssl/certs and the like), read once.
fn system_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The rustls client config for `opts`.
fn tls_config(url: &str, opts: &TlsOpts) -> Result<rustls::ClientConfig, FetchError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |why: String| FetchError::TlsConfig {
        url: url.to_string(),
        why,
    };
    // ring (rustls 0.23.48 deprecates its provider for lacking post-quantum key exchange;
    // aws-lc-rs, which has it, needs cmake and a longer C build): X25519 and the NIST curves
    // protect image downloads, whose integrity their digests check anyway.
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?;
    if opts.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(pem) = &opts.ca_pem {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| bad(format!("its CA certificate is not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("its CA certificate cannot be used: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("its CA file holds no certificate".to_string()));
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The verifier of an insecure source: any certificate is taken (the handshake's signatures
/// are still checked, so the session is with whoever holds the certificate's key).
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to a source: plain TCP or TLS over it.
trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

/// Checks a source URL: `http://host[:port][/path]` or `https://...`.
pub fn parse_source(url: &str) -> Result<Uri, FetchError> {
    let bad = |why| FetchError::Url {
        url: url.to_string(),
        why,
    };
    let uri: Uri = url.parse().map_err(|_| bad("it does not parse as a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("only http:// and https:// URLs are supported")),
    }
    if uri.host().is_none() {
        return Err(bad("it has no host"));
    }
    if uri.query().is_some() {
        return Err(bad("it must not carry a query"));
    }
    Ok(uri)
}

fn join(base: &str, rest: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), rest)
}

async fn get(
    url: &str,
    tls: &TlsOpts,
) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
    let resp = request(
        url,
        tls,
        &[(
            hyper::header::ACCEPT,
            "application/json, application/octet-stream".to_string(),
        )],
    )
    .await?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status(),
        });
    }
    Ok(resp)
}

/// One GET of `url` with `headers`, over TLS for https (checked as `tls` says); the reply
/// whatever its status.
pub(super) async fn request(
    url: &str,
    tls: &TlsOpts,
    headers: &[(hyper::header::HeaderName, String)],
) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
    let uri = parse_source_or_path(url)?;
    let host = uri.host().unwrap_or_default().to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|source| FetchError::Connect {
            url: url.to_string(),
            source,
        })?;
    let stream: Box<dyn Conn> = match https {
        false => Box::new(tcp),
        true => {
            let config = tls_config(url, tls)?;
            let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']))
                .map_err(|_| FetchError::Url {
                    url: url.to_string(),
                    why: "its host is no TLS server name",
                })?
                .to_owned();
            let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|source| FetchError::Tls {
                    host: host.clone(),
                    url: url.to_string(),
                    source,
                })?;
            Box::new(s)
        }
    };
    let http = |source| FetchError::Http {
        url: url.to_string(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut req = Request::get(path)
        .header(
            hyper::header::HOST,
            uri.authority().map_or(host.clone(), |a| a.to_string()),
        )
        .header(
            hyper::header::USER_AGENT,
            concat!("hull-vmmd/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|_| FetchError::Url {
            url: url.to_string(),
            why: "it cannot be requested",
        })?;
    sender.send_request(req).await.map_err(http)
}

/// A URL to fetch: a source URL, which may also carry a query (a registry's token realm,
/// a redirect to a blob store).
fn parse_source_or_path(url: &str) -> Result<Uri, FetchError> {
    match url.split_once('?') {
        Some((base, _)) => {
            parse_source(base)?;
            url.parse().map_err(|_| FetchError::Url {
                url: url.to_string(),
                why: "it does not parse as a URL",
            })
        }
        None => parse_source(url),
    }
}

async fn get_json(url: &str, tls: &TlsOpts) -> Result<Value, FetchError> {
    json_reply(url, get(url, tls).await?, MAX_JSON).await
}

/// A reply's body as a JSON document of at most `limit` bytes.
pub(super) async fn json_reply(
    url: &str,
    resp: hyper::Response<hyper::body::Incoming>,
    limit: usize,
) -> Result<Value, FetchError> {
    let bad = || FetchError::Body {
        url: url.to_string(),
        limit,
    };
    let bytes = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|_| bad())?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

fn fetch_error(e: FetchError) -> ServiceError {
    match e {
        FetchError::Url { .. } | FetchError::TlsConfig { .. } => {
            ServiceError::BadRequest(e.to_string())
        }
        other => ServiceError::Upstream(other),
    }
}

impl Service {
    /// The configured sources (a docker source's password is never shown).
    pub fn sources(&self) -> Result<Vec<ImageSource>, ServiceError> {
        let mut list = self.sources.load()?;
        for s in &mut list {
            s.password = s.password.as_ref().map(|_| "(set)".to_string());
        }
        Ok(list)
    }

    /// Adds a source.
    pub async fn add_source(&self, src: ImageSource) -> Result<ImageSource, ServiceError> {
        let _g = self.config_lock.lock().await;
        if src.kind != "imgapi" && src.kind != "docker" {
            let mut r = ValidationReport::default();
            r.bad_value(
                "type",
                format!(
                    "source type {:?} is not supported; use imgapi or docker",
                    src.kind
                ),
            );
            return Err(ServiceError::Invalid(r));
        }
        if src.username.is_some() != src.password.is_some()
            || (src.kind != "docker" && src.username.is_some())
        {
            let mut r = ValidationReport::default();
            r.bad_value(
                "username",
                "a user and its password go together, and only with a docker source",
            );
            return Err(ServiceError::Invalid(r));
        }
        let uri = parse_source(&src.url).map_err(|e| {
            let mut r = ValidationReport::default();
            r.bad_value("url", e.to_string());
            ServiceError::Invalid(r)
        })?;
        if uri.scheme_str() != Some("https") && (src.ca_cert.is_some() || src.insecure) {
            let mut r = ValidationReport::default();
            r.bad_value(
                "url",
                format!(
                    "{}: a CA certificate and -k apply to https sources only",
                    src.url
                ),
            );
            return Err(ServiceError::Invalid(r));
        }
        if let Err(e) = tls_config(&src.url, &TlsOpts::from(&src)) {
            let mut r = ValidationReport::default();
            r.bad_value("ca_cert", e.to_string());
            return Err(ServiceError::Invalid(r));
        }
        let mut list = self.sources.load()?;
        if list.iter().any(|s| s.url == src.url) {
            return Err(ServiceError::Conflict(format!(
                "source {} is already configured",
                src.url
            )));
        }
        list.push(src.clone());
        self.save_sources(list).await?;
        Ok(src)
    }

    /// Removes a source.
    pub async fn delete_source(&self, url: &str) -> Result<(), ServiceError> {
        let _g = self.config_lock.lock().await;
        let mut list = self.sources.load()?;
        let before = list.len();
        list.retain(|s| s.url != url);
        if list.len() == before {
            return Err(ServiceError::BadRequest(format!(
                "source {url} is not configured"
            )));
        }
        self.save_sources(list).await
    }

    async fn save_sources(&self, list: Vec<ImageSource>) -> Result<(), ServiceError> {
        let root = self.data_root.clone();
        super::blocking(move || super::catalog::sources(&root).save(&list)).await
    }

    /// The TLS settings for `url`: those of the configured source it lies under, else the
    /// system's CAs alone.
    fn tls_for(&self, url: &str) -> TlsOpts {
        self.sources
            .load()
            .unwrap_or_default()
            .iter()
            .find(|s| url.starts_with(s.url.trim_end_matches('/')))
            .map(TlsOpts::from)
            .unwrap_or_default()
    }

    fn source_urls(&self, only: Option<String>) -> Result<Vec<String>, ServiceError> {
        let urls: Vec<String> = match only {
            Some(u) => vec![u],
            None => self
                .sources
                .load()?
                .into_iter()
                .filter(|s| s.kind == "imgapi")
                .map(|s| s.url)
                .collect(),
        };
        if urls.is_empty() {
            return Err(ServiceError::BadRequest(
                "no image sources are configured; add one with imgadm sources -a URL".into(),
            ));
        }
        Ok(urls)
    }

    /// Images the sources offer that hull can install (valid manifests of supported types).
    pub async fn available(&self) -> Result<Vec<ImageManifest>, ServiceError> {
        let mut out = Vec::new();
        for url in self.source_urls(None)? {
            let list = get_json(&join(&url, "images"), &self.tls_for(&url))
                .await
                .map_err(fetch_error)?;
            for m in list.as_array().into_iter().flatten() {
                if let Ok(m) = validate_manifest(m) {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| (&a.name, &a.version, a.uuid).cmp(&(&b.name, &b.version, b.uuid)));
        Ok(out)
    }

    /// Fetches a manifest from a plain HTTP server and checks it can be installed; the file
    /// will come from `file_url`. Returns (file URL, manifest).
    pub async fn prepare_url_import(
        &self,
        manifest_url: &str,
        file_url: String,
    ) -> Result<(String, Value), ServiceError> {
        parse_source(&file_url).map_err(fetch_error)?;
        let m = get_json(manifest_url, &self.tls_for(manifest_url))
            .await
            .map_err(fetch_error)?;
        self.check_manifest(&m)?;
        Ok((file_url, m))
    }

    /// Finds an image's manifest in the sources and checks it can be installed. Returns
    /// (file URL, manifest).
    pub async fn prepare_import(
        &self,
        uuid: Uuid,
        source: Option<String>,
    ) -> Result<(String, Value), ServiceError> {
        // An installed image needs no source (SmartOS's imgadm says so without asking one).
        if self.cow.is_installed(uuid) {
            return Err(ServiceError::Already(format!(
                "image {uuid} is already installed"
            )));
        }
        let mut last = None;
        for url in self.source_urls(source)? {
            match get_json(&join(&url, &format!("images/{uuid}")), &self.tls_for(&url)).await {
                Ok(m) => {
                    if m.get("uuid").and_then(Value::as_str) != Some(uuid.to_string().as_str()) {
                        let mut r = ValidationReport::default();
                        r.bad_value(
                            "uuid",
                            format!("{url} answered with another image's manifest"),
                        );
                        return Err(ServiceError::Invalid(r));
                    }
                    self.check_manifest(&m)?;
                    return Ok((join(&url, &format!("images/{uuid}/file")), m));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(FetchError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                ServiceError::ImageNotFound(uuid)
            }
            Some(e) => fetch_error(e),
            None => ServiceError::ImageNotFound(uuid),
        })
    }

    /// Downloads the file at `file_url` and installs it with its prepared manifest, sending
    /// progress lines to `progress`.
    pub async fn run_import(
        &self,
        file_url: String,
        raw: Value,
        progress: mpsc::Sender<ImportProgress>,
    ) {
        let result = self.import_file(&file_url, &raw, &progress).await;
        let last = match result {
            Ok(m) => ImportProgress::Done(Box::new(m)),
            Err(e) => {
                let api = crate::api::error::ApiError::from(e);
                ImportProgress::Error(ApiErrorBody::clone(&api.body))
            }
        };
        let _ = progress.send(last).await;
    }

    async fn import_file(
        &self,
        file_url: &str,
        raw: &Value,
        progress: &mpsc::Sender<ImportProgress>,
    ) -> Result<ImageManifest, ServiceError> {
        let resp = get(file_url, &self.tls_for(file_url))
            .await
            .map_err(fetch_error)?;
        self.install_download(resp.into_body(), raw, progress, (0, None))
            .await
    }

    /// Installs the image `raw` describes from `body` (a download), verified as any
    /// install, reporting progress lines: bytes after `done.0` of `done.1` (the whole
    /// import's; this file's size when `None`).
    pub(super) async fn install_download(
        &self,
        body: hyper::body::Incoming,
        raw: &Value,
        progress: &mpsc::Sender<ImportProgress>,
        done: (u64, Option<u64>),
    ) -> Result<ImageManifest, ServiceError> {
        let (manifest, spec) = self.check_manifest(raw)?;
        let total = done.1.unwrap_or(spec.file.size);
        let mut body = body;
        let (tx, reader) = ChunkReader::channel();
        // Dropping the sender ends the install's input; it goes when the body ends or fails.
        let mut tx = Some(tx);
        let install = self.install_image(manifest, spec, reader);
        tokio::pin!(install);
        let mut received = done.0;
        let mut last_report = std::time::Instant::now();
        loop {
            tokio::select! {
                done = &mut install => return done,
                frame = body.frame(), if tx.is_some() => {
                    let Some(sender) = tx.as_ref() else { continue };
                    match frame {
                        Some(Ok(f)) => {
                            let Ok(data) = f.into_data() else { continue };
                            received += data.len() as u64;
                            if sender.send(Ok(data)).await.is_err() {
                                // The install stopped reading: its result is the answer.
                                tx = None;
                            }
                            if last_report.elapsed().as_millis() >= 100 {
                                last_report = std::time::Instant::now();
                                let _ = progress.try_send(ImportProgress::Progress { bytes: received, total });
                            }
                        }
                        Some(Err(e)) => {
                            let _ = sender
                                .send(Err(std::io::Error::other(format!("the download broke off: {e}"))))
                                .await;
                            tx = None;
                        }
                        None => {
                            let _ = progress.try_send(ImportProgress::Progress { bytes: received, total });
                            tx = None;
                        }
                    }
                }
            }
        }
    }
}
