//! Docker registries as image sources (`imgadm sources -t docker -a URL`): the OCI
//! distribution API's pull side. A reference `NAME[:TAG|@sha256:DIGEST]` is resolved to an
//! image manifest (through an index or manifest list, choosing linux/amd64), its config
//! read, and each layer not installed yet streamed from its blob straight into the store as
//! an image of type docker (`hull_spec::docker`), checked there against its digest and its
//! diff_id as it unpacks.
//!
//! Auth as registries do it: a 401's `WWW-Authenticate` challenge says Basic (the source's
//! user and password) or Bearer (a token from the realm it names, asked with the source's
//! credentials when it has them, anonymously otherwise: Docker Hub's way). Blob downloads
//! may be redirected (to a CDN or object store): followed, up to 5 hops, without the
//! registry's credentials once the host changes. Everything a registry sends is untrusted:
//! JSON documents are bounded (4 MiB) and checked against their digests.

use http_body_util::{BodyExt, Limited};
use hull_spec::ImageManifest;
use hull_spec::api::{ImageSource, ImportProgress};
use hull_spec::docker::{self, DockerImage, Index, MAX_JSON, Manifest};
use hyper::StatusCode;
use hyper::header::{ACCEPT, AUTHORIZATION, HeaderName, LOCATION, WWW_AUTHENTICATE};
use serde_json::Value;
use tokio::sync::mpsc;

use super::sources::{FetchError, TlsOpts, json_reply, request};
use super::{Service, ServiceError};

/// What a manifest request accepts: indexes and lists first, then single manifests.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A reference split: repository name, and a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The repository (`library/busybox`, `team/app`).
    pub name: String,
    /// `latest` when none is given.
    pub tag: Option<String>,
    /// `sha256:<hex>` when pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `NAME[:TAG][@DIGEST]`. Names are lower-case path components of
    /// `[a-z0-9._-]`; on Docker Hub a name without `/` is under `library/`, as the docker
    /// CLI does it.
    pub fn parse(s: &str, docker_hub: bool) -> Result<Reference, String> {
        let bad = |why: &str| format!("{s:?} is not an image reference: {why}");
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                docker::digest_hex(d).map_err(|e| bad(&e))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad("a tag is 1 to 128 of [A-Za-z0-9._-]"));
            }
        }
        let ok = !name.is_empty()
            && name.len() <= 255
            && name.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !ok {
            return Err(bad(
                "a name is lower-case path components of [a-z0-9._-] (no registry host: -S names the source)",
            ));
        }
        let name = match docker_hub && !name.contains('/') {
            true => format!("library/{name}"),
            false => name.to_string(),
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference { name, tag, digest })
    }

    /// What the manifest is asked for by: the digest when pinned, else the tag.
    fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// A registry session: its base URL, TLS settings, credentials and the authorization won.
#[derive(Debug)]
struct Session {
    base: String,
    tls: TlsOpts,
    creds: Option<(String, String)>,
    auth: Option<String>,
}

/// RFC 4648 base64 (for a Basic authorization).
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A challenge's `key="value"` parameters.
fn challenge_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, v)) = rest.split_once('=') {
        let key = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (value, next) = match v.strip_prefix('"') {
            Some(q) => match q.split_once('"') {
                Some((val, next)) => (val, next),
                None => (q, ""),
            },
            None => match v.split_once(',') {
                Some((val, next)) => (val, next),
                None => (v, ""),
            },
        };
        out.push((key, value.to_string()));
        rest = next;
    }
    out
}

/// `%`-encodes a query value.
fn query_value(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Session {
    /// GETs `url` (a path under the registry, or a full URL), answering an auth challenge
    /// once and following redirects; the reply when it succeeds, else an error naming why.
    async fn get(
        &mut self,
        url: &str,
        accept: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
        let mut url = match url.starts_with("https://") || url.starts_with("http://") {
            true => url.to_string(),
            false => format!("{}{url}", self.base),
        };
        let origin = host_of(&url);
        let mut challenged = false;
        for _hop in 0..6 {
            let mut headers = vec![(ACCEPT, accept.to_string())];
            if let Some(a) = &self.auth
                && host_of(&url) == origin
            {
                headers.push((AUTHORIZATION, a.clone()));
            }
            let resp = request(&url, &self.tls, &headers).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !challenged && host_of(&url) == origin {
                challenged = true;
                let challenge = header(&resp, WWW_AUTHENTICATE);
                self.auth = Some(self.authorize(&url, &challenge).await?);
                continue;
            }
            if status.is_redirection() {
                let to = header(&resp, LOCATION);
                if to.is_empty() {
                    break;
                }
                url = match to.starts_with('/') {
                    true => format!("{}{to}", origin_url(&url)),
                    false => to,
                };
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(FetchError::Denied {
                    url,
                    why: match &self.creds {
                        Some((user, _)) => format!("the registry refused user {user:?}'s credentials"),
                        None => "the registry wants credentials (imgadm sources -t docker -a URL --user NAME)".to_string(),
                    },
                });
            }
            if !status.is_success() {
                return Err(FetchError::Status { url, status });
            }
            return Ok(resp);
        }
        Err(FetchError::Denied {
            url,
            why: "more than 5 redirects".to_string(),
        })
    }

    /// The Authorization a challenge asks for.
    async fn authorize(&self, url: &str, challenge: &str) -> Result<String, FetchError> {
        let denied = |why: String| FetchError::Denied {
            url: url.to_string(),
            why,
        };
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let basic = self
            .creds
            .as_ref()
            .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => basic.ok_or_else(|| {
                denied(
                    "the registry wants credentials (imgadm sources -t docker -a URL --user NAME)"
                        .to_string(),
                )
            }),
            "bearer" => {
                let params = challenge_params(params);
                let get = |k: &str| {
                    params
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                };
                let realm = get("realm")
                    .ok_or_else(|| denied("its Bearer challenge names no realm".to_string()))?;
                let mut query = Vec::new();
                for k in ["service", "scope"] {
                    if let Some(v) = get(k) {
                        query.push(format!("{k}={}", query_value(&v)));
                    }
                }
                let token_url = match query.is_empty() {
                    true => realm,
                    false => format!("{realm}?{}", query.join("&")),
                };
                let mut headers = vec![(ACCEPT, "application/json".to_string())];
                if let Some(b) = basic {
                    headers.push((AUTHORIZATION, b));
                }
                let resp = request(&token_url, &self.tls, &headers).await?;
                if !resp.status().is_success() {
                    return Err(denied(format!(
                        "its token service answered {}{}",
                        resp.status(),
                        match &self.creds {
                            Some((user, _)) => format!(" for user {user:?}"),
                            None => String::new(),
                        }
                    )));
                }
                let doc = json_reply(&token_url, resp, MAX_JSON as usize).await?;
                let token = ["token", "access_token"]
                    .iter()
                    .find_map(|k| doc.get(*k).and_then(Value::as_str))
                    .filter(|t| !t.is_empty() && t.len() < 64 << 10 && !t.contains(['\r', '\n']))
                    .ok_or_else(|| denied("its token service sent no token".to_string()))?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(denied(format!(
                "the registry asks for {:?} authentication, which hull does not speak",
                docker::short(scheme)
            ))),
        }
    }

    /// A JSON document of at most 4 MiB at `path`, which must hash to `digest` when given;
    /// returns its bytes, its content type and its digest.
    async fn document(
        &mut self,
        path: &str,
        accept: &str,
        digest: Option<&str>,
    ) -> Result<(Vec<u8>, String, String), FetchError> {
        let resp = self.get(path, accept).await?;
        let kind = header(&resp, hyper::header::CONTENT_TYPE);
        let url = format!("{}{path}", self.base);
        let bytes = Limited::new(resp.into_body(), MAX_JSON as usize)
            .collect()
            .await
            .map_err(|_| FetchError::Denied {
                url: url.clone(),
                why: "its reply is larger than 4 MiB or broke off".to_string(),
            })?
            .to_bytes()
            .to_vec();
        let actual = docker::sha256(&bytes);
        if let Some(want) = digest
            && want != actual
        {
            return Err(FetchError::Denied {
                url,
                why: format!("its content's digest is {actual}, not {want}"),
            });
        }
        Ok((bytes, kind, actual))
    }
}

fn header(resp: &hyper::Response<hyper::body::Incoming>, name: HeaderName) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `scheme://host[:port]` of a URL.
fn origin_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let host = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

fn host_of(url: &str) -> String {
    origin_url(url)
}

impl Service {
    /// Imports `reference` from the docker sources (or `source` alone): the layers not
    /// installed yet, base first, each checked against its digests as it streams; sends
    /// progress lines and finally the top layer's manifest (or the error) to `progress`.
    pub async fn run_docker_import(
        &self,
        reference: String,
        source: Option<String>,
        progress: mpsc::Sender<ImportProgress>,
    ) {
        let last = match self.docker_import(&reference, source, &progress).await {
            Ok(m) => ImportProgress::Done(Box::new(m)),
            Err(e) => {
                let api = crate::api::error::ApiError::from(e);
                ImportProgress::Error(hull_spec::api::ApiErrorBody::clone(&api.body))
            }
        };
        let _ = progress.send(last).await;
    }

    /// The docker sources to ask: `only` (which must be one), or all of them in order.
    fn docker_sources(&self, only: Option<String>) -> Result<Vec<ImageSource>, ServiceError> {
        let all: Vec<ImageSource> = self
            .sources
            .load()?
            .into_iter()
            .filter(|s| s.kind == "docker")
            .collect();
        let picked: Vec<ImageSource> = match &only {
            Some(u) => all
                .into_iter()
                .filter(|s| s.url.trim_end_matches('/') == u.trim_end_matches('/'))
                .collect(),
            None => all,
        };
        if picked.is_empty() {
            return Err(ServiceError::BadRequest(match only {
                Some(u) => format!(
                    "{u} is not a docker source; add it with imgadm sources -t docker -a {u}"
                ),
                None => {
                    "no docker sources are configured; add one with imgadm sources -t docker -a URL"
                        .to_string()
                }
            }));
        }
        Ok(picked)
    }

    async fn docker_import(
        &self,
        reference: &str,
        only: Option<String>,
        progress: &mpsc::Sender<ImportProgress>,
    ) -> Result<ImageManifest, ServiceError> {
        let mut last = None;
        for src in self.docker_sources(only)? {
            match self.docker_import_from(&src, reference, progress).await {
                Err(ServiceError::Upstream(FetchError::Status { status, url }))
                    if status == StatusCode::NOT_FOUND =>
                {
                    last = Some(FetchError::Status { status, url });
                }
                other => return other,
            }
        }
        Err(ServiceError::BadRequest(format!(
            "no docker source has {reference}{}",
            last.map(|e| format!(" ({e})")).unwrap_or_default()
        )))
    }

    async fn docker_import_from(
        &self,
        src: &ImageSource,
        reference: &str,
        progress: &mpsc::Sender<ImportProgress>,
    ) -> Result<ImageManifest, ServiceError> {
        let upstream = ServiceError::Upstream;
        let base = src.url.trim_end_matches('/').to_string();
        let host = base
            .split_once("://")
            .map_or(base.as_str(), |(_, h)| h)
            .to_string();
        let hub = matches!(
            host.as_str(),
            "registry-1.docker.io" | "docker.io" | "index.docker.io" | "registry.hub.docker.com"
        );
        let r = Reference::parse(reference, hub).map_err(ServiceError::BadRequest)?;
        let mut s = Session {
            base,
            tls: TlsOpts::from(src),
            creds: src.username.clone().zip(src.password.clone()),
            auth: None,
        };
        let bad = |what: String| ServiceError::BadRequest(format!("{reference}: {what}"));
        let path = format!("/v2/{}/manifests/{}", r.name, r.manifest_ref());
        let (mut bytes, mut kind, mut digest) = s
            .document(&path, MANIFEST_TYPES, r.digest.as_deref())
            .await
            .map_err(upstream)?;
        // An index or manifest list: the linux/amd64 entry, at most 4 levels down.
        for _depth in 0..4 {
            let doc: Value = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("its manifest is not JSON: {e}")))?;
            let media = doc
                .get("mediaType")
                .and_then(Value::as_str)
                .unwrap_or(kind.split(';').next().unwrap_or_default().trim())
                .to_string();
            if media != docker::OCI_INDEX && media != docker::DOCKER_LIST {
                break;
            }
            let index: Index = serde_json::from_value(doc)
                .map_err(|e| bad(format!("its index is not an OCI index: {e}")))?;
            let (_, entry) = docker::pick_platform(&index).map_err(bad)?;
            let path = format!("/v2/{}/manifests/{}", r.name, entry.digest);
            (bytes, kind, digest) = s
                .document(&path, MANIFEST_TYPES, Some(&entry.digest))
                .await
                .map_err(upstream)?;
        }
        let _ = kind;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("its image manifest cannot be read: {e}")))?;
        if manifest.layers.len() > 200 {
            return Err(bad(format!(
                "{} layers, more than 200",
                manifest.layers.len()
            )));
        }
        let config_path = format!("/v2/{}/blobs/{}", r.name, manifest.config.digest);
        docker::digest_hex(&manifest.config.digest).map_err(bad)?;
        let (config_bytes, _, config_digest) = s
            .document(
                &config_path,
                "application/json, */*",
                Some(&manifest.config.digest),
            )
            .await
            .map_err(upstream)?;
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad(format!("its config is not JSON: {e}")))?;
        let diff_ids = docker::check_config(&config, manifest.layers.len()).map_err(bad)?;
        let mut layers = Vec::new();
        for (i, (l, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
            let media = l.media_type.as_deref().unwrap_or_default();
            let compression = docker::layer_compression(media).ok_or_else(|| {
                bad(format!(
                    "layer {i} has media type {:?}, which hull cannot unpack",
                    docker::short(media)
                ))
            })?;
            docker::digest_hex(&l.digest).map_err(bad)?;
            layers.push(docker::Layer {
                digest: l.digest.clone(),
                diff_id,
                compression,
                size: l.size,
            });
        }
        let image = DockerImage {
            repo: Some(format!("{host}/{}", r.name)),
            tag: r.tag.clone(),
            manifest_digest: digest,
            config_digest,
            config,
            layers,
        };
        let uuids = docker::layer_uuids(&image);
        let top = uuids.len().saturating_sub(1);
        if image.layers.is_empty() {
            return Err(bad("the image has no layers".to_string()));
        }
        if self.cow.is_installed(uuids[top]) {
            return Err(ServiceError::Already(format!(
                "image {} ({reference}) is already installed",
                uuids[top]
            )));
        }
        let total: u64 = image.layers.iter().map(|l| l.size).sum();
        let mut done = 0u64;
        let mut installed = None;
        for (i, layer) in image.layers.iter().enumerate() {
            if i < top && self.cow.is_installed(uuids[i]) {
                done += layer.size;
                continue;
            }
            let raw = docker::layer_manifest(&image, &uuids, i);
            let path = format!("/v2/{}/blobs/{}", r.name, layer.digest);
            let resp = s.get(&path, "*/*").await.map_err(upstream)?;
            let m = match self
                .install_download(resp.into_body(), &raw, progress, (done, Some(total)))
                .await
            {
                Ok(m) => m,
                // Another import installed this layer meanwhile: as good.
                Err(ServiceError::Already(_)) if i < top => {
                    done += layer.size;
                    continue;
                }
                Err(e) => return Err(e),
            };
            done += layer.size;
            installed = Some(m);
        }
        installed.ok_or_else(|| {
            ServiceError::Already(format!("image {} is already installed", uuids[top]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_the_docker_cli_reads_them() {
        let r = Reference::parse("busybox", true).expect("hub");
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref()),
            ("library/busybox", Some("latest"))
        );
        let r = Reference::parse("team/app:v1.2", false).expect("tag");
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref()),
            ("team/app", Some("v1.2"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("app@{d}"), false).expect("digest");
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref()),
            (None, Some(d.as_str()))
        );
        assert_eq!(r.manifest_ref(), d);
        for bad in [
            "",
            "App",
            "a//b",
            "a:",
            "a:b c",
            "a@sha256:xyz",
            "127.0.0.1:5000/app:v1/x",
        ] {
            assert!(Reference::parse(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn base64_and_challenges() {
        assert_eq!(base64(b"hull:s3cret"), "aHVsbDpzM2NyZXQ=");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        let p = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[2].1, "repository:library/busybox:pull");
        assert_eq!(origin_url("https://h:5000/v2/x"), "https://h:5000");
    }
}
