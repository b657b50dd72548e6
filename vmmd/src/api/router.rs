//! The one router: (method, path, query) -> a typed [`Action`]. Nothing here touches the
//! service; an unknown path or a wrong method is an error value the caller turns into a
//! JSON reply.

use hull_spec::Brand;
use hyper::Method;
use uuid::Uuid;

use super::error::ApiError;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `GET /v1/ping`
    Ping,
    /// `GET /v1/openapi.json`
    OpenApi,
    /// `GET /v1/vms?filter=k=v...&fields=a,b`
    ListVms {
        /// Filter expressions, `key=value` or `key=~regex`.
        filters: Vec<String>,
        /// Only these (dotted) properties, when given.
        fields: Option<Vec<String>>,
    },
    /// `POST /v1/vms`
    CreateVm,
    /// `GET /v1/vms/{uuid}`
    GetVm(Uuid),
    /// `PATCH /v1/vms/{uuid}`
    UpdateVm(Uuid),
    /// `DELETE /v1/vms/{uuid}`
    DeleteVm(Uuid),
    /// `POST /v1/vms/{uuid}/start`
    StartVm(Uuid),
    /// `POST /v1/vms/{uuid}/stop`
    StopVm(Uuid),
    /// `POST /v1/vms/{uuid}/reboot`
    RebootVm(Uuid),
    /// `POST /v1/vms/{uuid}/kill`
    KillVm(Uuid),
    /// `POST /v1/vms/{uuid}/reprovision`
    ReprovisionVm(Uuid),
    /// `GET /v1/vms/{uuid}/root?compression=C`: the stopped zone's root as a tar stream
    ExportRoot(Uuid, String),
    /// `GET /v1/vms/{uuid}/send?since=SNAPSHOT`: the guest as a send stream
    SendVm(Uuid, Option<String>),
    /// `POST /v1/vms/receive`: a guest from a send stream
    ReceiveVm,
    /// `GET /v1/vms/{uuid}/runtime`
    Runtime(Uuid),
    /// `GET /v1/vms/{uuid}/console` with `Upgrade: hull-console`: the console's bytes both
    /// ways on the connection
    Console(Uuid),
    /// `GET /v1/vms/{uuid}/logs`: a docker zone's console log (its process's output)
    Logs(Uuid),
    /// `GET /v1/vms/{uuid}/info`: a running microVM's VMM figures
    Info(Uuid),
    /// `GET /v1/vms/{uuid}/usage`: a running guest's cgroup figures
    Usage(Uuid),
    /// `GET /v1/metrics`: the host's and the guests' figures, Prometheus's text format
    Metrics,
    /// `POST /v1/vms/{uuid}/pause`
    PauseVm(Uuid),
    /// `POST /v1/vms/{uuid}/resize`: a zone's console window size
    ResizeConsole(Uuid),
    /// `POST /v1/vms/{uuid}/resume`
    ResumeVm(Uuid),
    /// `POST /v1/vms/{uuid}/snapshots`
    CreateSnapshot(Uuid),
    /// `POST /v1/vms/{uuid}/snapshots/{name}/rollback`
    RollbackSnapshot(Uuid, String),
    /// `DELETE /v1/vms/{uuid}/snapshots/{name}`
    DeleteSnapshot(Uuid, String),
    /// `POST /v1/validate/create`
    ValidateCreate,
    /// `POST /v1/validate/update?brand=B`
    ValidateUpdate(Brand),
    /// `GET /v1/images`
    ListImages,
    /// `GET /v1/images/{uuid}`
    GetImage(Uuid),
    /// `POST /v1/images` (install)
    InstallImage,
    /// `DELETE /v1/images/{uuid}`
    DeleteImage(Uuid),
    /// `POST /v1/images/vacuum`
    VacuumImages,
    /// `GET /v1/images/avail`
    AvailImages,
    /// `POST /v1/images/import`
    ImportImage,
    /// `GET /v1/sources`
    ListSources,
    /// `POST /v1/sources`
    AddSource,
    /// `DELETE /v1/sources?url=U`
    DeleteSource(String),
    /// `GET /v1/nictags`
    ListNicTags,
    /// `POST /v1/nictags`
    AddNicTag,
    /// `DELETE /v1/nictags/{name}`
    DeleteNicTag(String),
    /// `GET /v1/events?uuid=U&full=true`
    Events {
        /// Only this guest's events.
        uuid: Option<Uuid>,
        /// Include whole records.
        full: bool,
    },
}

impl Action {
    /// Whether the action reads a JSON body.
    pub fn takes_body(&self) -> bool {
        matches!(
            self,
            Action::CreateVm
                | Action::UpdateVm(_)
                | Action::StopVm(_)
                | Action::RebootVm(_)
                | Action::KillVm(_)
                | Action::ResizeConsole(_)
                | Action::ReprovisionVm(_)
                | Action::ValidateCreate
                | Action::ValidateUpdate(_)
                | Action::AddNicTag
                | Action::ImportImage
                | Action::AddSource
                | Action::CreateSnapshot(_)
        )
    }
}

fn uuid_segment(kind: &str, s: &str) -> Result<Uuid, ApiError> {
    if hull_spec::validate::is_uuid(s) {
        Uuid::parse_str(s).map_err(|_| ApiError::bad_request(format!("{s:?} is not a {kind} UUID")))
    } else {
        Err(ApiError::not_found(format!("{s:?} is not a {kind} UUID")))
    }
}

/// A percent-decoded path segment.
fn decode_segment(seg: &str) -> String {
    form_urlencoded::parse(format!("n={seg}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn only_keys(pairs: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    match pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(ApiError::bad_request(format!(
            "unknown query parameter {k:?}"
        ))),
        None => Ok(()),
    }
}

fn bool_param(pairs: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    match pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
    {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!(
            "{key}={v:?} must be true or false"
        ))),
    }
}

/// Maps a request line to an action, or to the 404/405/400 it deserves.
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Action, ApiError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let pairs = query_pairs(query);
    let m = method.clone();
    let allow = |methods: &'static [Method]| ApiError::method_not_allowed(&m, path, methods);
    use Method as M;
    let action = match segs.as_slice() {
        ["v1", "ping"] => match *method {
            M::GET => Action::Ping,
            _ => return Err(allow(&[M::GET])),
        },
        ["v1", "openapi.json"] => match *method {
            M::GET => Action::OpenApi,
            _ => return Err(allow(&[M::GET])),
        },
        ["v1", "vms"] => match *method {
            M::GET => {
                only_keys(&pairs, &["filter", "fields"])?;
                let filters = pairs
                    .iter()
                    .filter(|(k, _)| k == "filter")
                    .map(|(_, v)| v.clone())
                    .collect();
                let fields = pairs
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "fields")
                    .map(|(_, v)| v.split(',').map(str::to_string).collect());
                return Ok(Action::ListVms { filters, fields });
            }
            M::POST => Action::CreateVm,
            _ => return Err(allow(&[M::GET, M::POST])),
        },
        ["v1", "vms", "receive"] => match *method {
            M::POST => Action::ReceiveVm,
            _ => return Err(allow(&[M::POST])),
        },
        ["v1", "vms", id, "send"] => {
            let uuid = uuid_segment("VM", id)?;
            if *method != M::GET {
                return Err(allow(&[M::GET]));
            }
            only_keys(&pairs, &["since"])?;
            let since = pairs
                .iter()
                .find(|(k, _)| k == "since")
                .map(|(_, v)| v.clone());
            return Ok(Action::SendVm(uuid, since));
        }
        ["v1", "vms", id] => {
            let uuid = uuid_segment("VM", id)?;
            match *method {
                M::GET => Action::GetVm(uuid),
                M::PATCH => Action::UpdateVm(uuid),
                M::DELETE => Action::DeleteVm(uuid),
                _ => return Err(allow(&[M::GET, M::PATCH, M::DELETE])),
            }
        }
        [
            "v1",
            "vms",
            id,
            verb @ ("start" | "stop" | "reboot" | "kill" | "reprovision" | "pause" | "resume"
            | "resize"),
        ] => {
            let uuid = uuid_segment("VM", id)?;
            if *method != M::POST {
                return Err(allow(&[M::POST]));
            }
            match *verb {
                "start" => Action::StartVm(uuid),
                "stop" => Action::StopVm(uuid),
                "reboot" => Action::RebootVm(uuid),
                "reprovision" => Action::ReprovisionVm(uuid),
                "pause" => Action::PauseVm(uuid),
                "resume" => Action::ResumeVm(uuid),
                "resize" => Action::ResizeConsole(uuid),
                _ => Action::KillVm(uuid),
            }
        }
        ["v1", "vms", id, "root"] => {
            let uuid = uuid_segment("VM", id)?;
            if *method != M::GET {
                return Err(allow(&[M::GET]));
            }
            only_keys(&pairs, &["compression"])?;
            let c = pairs
                .iter()
                .find(|(k, _)| k == "compression")
                .map_or("gzip".to_string(), |(_, v)| v.clone());
            return Ok(Action::ExportRoot(uuid, c));
        }
        ["v1", "vms", id, "runtime"] => {
            let uuid = uuid_segment("VM", id)?;
            match *method {
                M::GET => Action::Runtime(uuid),
                _ => return Err(allow(&[M::GET])),
            }
        }
        ["v1", "vms", id, "console"] => {
            let uuid = uuid_segment("VM", id)?;
            match *method {
                M::GET => Action::Console(uuid),
                _ => return Err(allow(&[M::GET])),
            }
        }
        ["v1", "vms", id, "logs"] => {
            let uuid = uuid_segment("VM", id)?;
            match *method {
                M::GET => Action::Logs(uuid),
                _ => return Err(allow(&[M::GET])),
            }
        }
        ["v1", "vms", id, "info"] => {
            let uuid = uuid_segment("VM", id)?;
            match *method {
                M::GET => Action::Info(uuid),
                _ => return Err(allow(&[M::GET])),
            }
        }
        ["v1", "metrics"] => match *method {
            M::GET => Action::Metrics,
            _ => return Err(allow(&[M::GET])),
        },
        ["v1", "vms", id, "usage"] => {
            let uuid = uuid_segment("VM", id)?;
            match *method {
                M::GET => Action::Usage(uuid),
                _ => return Err(allow(&[M::GET])),
            }
        }
        ["v1", "vms", id, "snapshots"] => {
            let uuid = uuid_segment("VM", id)?;
            match *method {
                M::POST => Action::CreateSnapshot(uuid),
                _ => return Err(allow(&[M::POST])),
            }
        }
        ["v1", "vms", id, "snapshots", name] => {
            let uuid = uuid_segment("VM", id)?;
            match *method {
                M::DELETE => Action::DeleteSnapshot(uuid, decode_segment(name)),
                _ => return Err(allow(&[M::DELETE])),
            }
        }
        ["v1", "vms", id, "snapshots", name, "rollback"] => {
            let uuid = uuid_segment("VM", id)?;
            match *method {
                M::POST => Action::RollbackSnapshot(uuid, decode_segment(name)),
                _ => return Err(allow(&[M::POST])),
            }
        }
        ["v1", "validate", "create"] => match *method {
            M::POST => Action::ValidateCreate,
            _ => return Err(allow(&[M::POST])),
        },
        ["v1", "validate", "update"] => match *method {
            M::POST => {
                only_keys(&pairs, &["brand"])?;
                let name = pairs
                    .iter()
                    .find(|(k, _)| k == "brand")
                    .map(|(_, v)| v.as_str())
                    .ok_or_else(|| ApiError::bad_request("validate update needs ?brand=BRAND"))?;
                let brand = Brand::parse(name)
                    .ok_or_else(|| ApiError::bad_request(format!("unknown brand {name:?}")))?;
                return Ok(Action::ValidateUpdate(brand));
            }
            _ => return Err(allow(&[M::POST])),
        },
        ["v1", "images"] => match *method {
            M::GET => Action::ListImages,
            M::POST => Action::InstallImage,
            _ => return Err(allow(&[M::GET, M::POST])),
        },
        ["v1", "images", "avail"] => match *method {
            M::GET => Action::AvailImages,
            _ => return Err(allow(&[M::GET])),
        },
        ["v1", "images", "import"] => match *method {
            M::POST => Action::ImportImage,
            _ => return Err(allow(&[M::POST])),
        },
        ["v1", "sources"] => match *method {
            M::GET => Action::ListSources,
            M::POST => Action::AddSource,
            M::DELETE => {
                only_keys(&pairs, &["url"])?;
                let url = pairs
                    .iter()
                    .find(|(k, _)| k == "url")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| ApiError::bad_request("DELETE /v1/sources needs ?url=URL"))?;
                return Ok(Action::DeleteSource(url));
            }
            _ => return Err(allow(&[M::GET, M::POST, M::DELETE])),
        },
        ["v1", "images", "vacuum"] => match *method {
            M::POST => Action::VacuumImages,
            _ => return Err(allow(&[M::POST])),
        },
        ["v1", "images", id] => {
            let uuid = uuid_segment("image", id)?;
            match *method {
                M::GET => Action::GetImage(uuid),
                M::DELETE => Action::DeleteImage(uuid),
                _ => return Err(allow(&[M::GET, M::DELETE])),
            }
        }
        ["v1", "nictags"] => match *method {
            M::GET => Action::ListNicTags,
            M::POST => Action::AddNicTag,
            _ => return Err(allow(&[M::GET, M::POST])),
        },
        ["v1", "nictags", name] => match *method {
            M::DELETE => Action::DeleteNicTag(decode_segment(name)),
            _ => return Err(allow(&[M::DELETE])),
        },
        ["v1", "events"] => match *method {
            M::GET => {
                only_keys(&pairs, &["uuid", "full"])?;
                let uuid =
                    match pairs.iter().find(|(k, _)| k == "uuid") {
                        Some((_, v)) => Some(Uuid::parse_str(v).map_err(|_| {
                            ApiError::bad_request(format!("uuid={v:?} is not a UUID"))
                        })?),
                        None => None,
                    };
                let full = bool_param(&pairs, "full")?;
                return Ok(Action::Events { uuid, full });
            }
            _ => return Err(allow(&[M::GET])),
        },
        _ => {
            return Err(ApiError::not_found(format!("no route for {method} {path}")));
        }
    };
    if !pairs.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{method} {path} takes no query parameters"
        )));
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    const U: &str = "0c1f4f2a-6f0e-4c39-8f36-2d3c7b1d9e01";

    fn ok(m: Method, p: &str, q: Option<&str>) -> Action {
        route(&m, p, q).unwrap_or_else(|e| panic!("{m} {p}: {e:?}"))
    }

    fn status(m: Method, p: &str, q: Option<&str>) -> StatusCode {
        route(&m, p, q).expect_err("should fail").status
    }

    #[test]
    fn routes_map_to_actions() {
        let u = Uuid::parse_str(U).expect("uuid");
        assert_eq!(ok(Method::GET, "/v1/ping", None), Action::Ping);
        assert_eq!(ok(Method::GET, "/v1/metrics", None), Action::Metrics);
        assert_eq!(
            ok(Method::GET, "/v1/vms/", None),
            Action::ListVms {
                filters: vec![],
                fields: None
            }
        );
        assert_eq!(
            ok(
                Method::GET,
                "/v1/vms",
                Some("filter=alias%3D~%5Eweb&filter=ram%3D256&fields=uuid,nics.0.ip")
            ),
            Action::ListVms {
                filters: vec!["alias=~^web".into(), "ram=256".into()],
                fields: Some(vec!["uuid".into(), "nics.0.ip".into()])
            }
        );
        assert_eq!(
            ok(Method::PATCH, &format!("/v1/vms/{U}"), None),
            Action::UpdateVm(u)
        );
        assert_eq!(
            ok(Method::POST, &format!("/v1/vms/{U}/kill"), None),
            Action::KillVm(u)
        );
        assert_eq!(
            ok(Method::POST, &format!("/v1/vms/{U}/reprovision"), None),
            Action::ReprovisionVm(u)
        );
        assert_eq!(
            ok(Method::POST, &format!("/v1/vms/{U}/pause"), None),
            Action::PauseVm(u)
        );
        assert_eq!(
            ok(Method::POST, &format!("/v1/vms/{U}/resume"), None),
            Action::ResumeVm(u)
        );
        assert_eq!(
            ok(Method::GET, &format!("/v1/vms/{U}/usage"), None),
            Action::Usage(u)
        );
        assert_eq!(
            ok(Method::POST, &format!("/v1/vms/{U}/resize"), None),
            Action::ResizeConsole(u)
        );
        assert_eq!(
            ok(Method::POST, "/v1/validate/update", Some("brand=lx")),
            Action::ValidateUpdate(Brand::Lx)
        );
        assert_eq!(
            ok(
                Method::GET,
                "/v1/events",
                Some(&format!("uuid={U}&full=true"))
            ),
            Action::Events {
                uuid: Some(u),
                full: true
            }
        );
        assert_eq!(
            ok(Method::DELETE, "/v1/nictags/my%2Dtag", None),
            Action::DeleteNicTag("my-tag".into())
        );
    }

    #[test]
    fn bad_routes_get_404_405_400() {
        assert_eq!(status(Method::GET, "/v1/nope", None), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::GET, "/", None), StatusCode::NOT_FOUND);
        assert_eq!(
            status(Method::GET, "/v1/vms/not-a-uuid", None),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(Method::PUT, "/v1/vms", None),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::GET, &format!("/v1/vms/{U}/start"), None),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::GET, "/v1/vms", Some("bogus=1")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Method::GET, "/v1/ping", Some("x=1")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Method::POST, "/v1/validate/update", Some("brand=solaris")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Method::GET, "/v1/events", Some("full=maybe")),
            StatusCode::BAD_REQUEST
        );
        let e = route(&Method::PUT, "/v1/vms", None).expect_err("405");
        assert_eq!(e.allow.as_deref(), Some("GET, POST"));
    }
}
