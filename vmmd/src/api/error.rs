//! The one place errors become HTTP: status, stable code, message, cause chain and, for
//! invalid payloads, the SmartOS-shaped report. Bad input is always 4xx; 5xx means the
//! daemon failed (disk full, I/O error) and applied nothing.

use hull_spec::api::codes;
use hull_spec::{ApiErrorBody, ValidationReport};
use hyper::{Method, StatusCode};

use crate::service::ServiceError;
use crate::service::paths::HostPathError;

/// An error reply.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The body (boxed: errors travel through many Results).
    pub body: Box<ApiErrorBody>,
    /// For 405: the methods the route takes.
    pub allow: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: Box::new(ApiErrorBody {
                code: code.to_string(),
                message: message.into(),
                causes: Vec::new(),
                report: None,
            }),
            allow: None,
        }
    }

    /// 426: a route that is only a protocol switch, asked without `Upgrade: PROTOCOL`.
    pub fn upgrade_required(protocol: &str) -> ApiError {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            codes::BAD_REQUEST,
            format!(
                "this route switches protocols: send Connection: upgrade and Upgrade: {protocol}"
            ),
        )
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, codes::FORBIDDEN, message)
    }

    /// 413.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the API accepts ({limit} bytes)"),
        )
    }

    /// 415.
    pub fn unsupported_media_type(got: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::UNSUPPORTED_MEDIA_TYPE,
            format!("the request body must be application/json, not {got:?}"),
        )
    }

    /// 422 with a validation report.
    pub fn invalid(report: ValidationReport) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::INVALID_PAYLOAD,
            format!("invalid payload: {}", report.summary()),
        );
        e.body.report = Some(report);
        e
    }

    /// 501.
    pub fn not_implemented(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_IMPLEMENTED, codes::NOT_IMPLEMENTED, message)
    }

    /// 405 naming the methods the route takes.
    pub fn method_not_allowed(method: &Method, path: &str, allowed: &[Method]) -> ApiError {
        let list = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}; use {list}"),
        );
        e.allow = Some(list);
        e
    }
}

fn cause_chain(err: &dyn std::error::Error) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = err.source();
    while let Some(e) = next {
        out.push(e.to_string());
        next = e.source();
    }
    out
}

/// A host path the caller may not use: 403 naming the property and the rule, the reason
/// (outside, missing, a symlink out) as the cause.
impl From<HostPathError> for ApiError {
    fn from(err: HostPathError) -> ApiError {
        let mut e = ApiError::forbidden(err.to_string());
        e.body.causes = cause_chain(&err);
        e
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> ApiError {
        let causes = cause_chain(&err);
        let message = err.to_string();
        let mut e = match err {
            ServiceError::CreatedNotBooted { error, .. } => {
                // The status and code are the failed boot's; the message says the guest exists.
                let mut e = ApiError::from(*error);
                e.body.message = message;
                return e;
            }
            ServiceError::Invalid(report) => return ApiError::invalid(report),
            ServiceError::NotFound(_)
            | ServiceError::ImageNotFound(_)
            | ServiceError::NicTagNotFound(_) => ApiError::not_found(err.to_string()),
            ServiceError::BadRequest(m) => ApiError::bad_request(m),
            ServiceError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, codes::CONFLICT, m),
            ServiceError::Already(m) => ApiError::new(StatusCode::CONFLICT, codes::ALREADY, m),
            ServiceError::NotImplemented(m) => ApiError::not_implemented(m),
            ServiceError::Upstream(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, codes::UPSTREAM, err.to_string())
            }
            ServiceError::Store(_)
            | ServiceError::Catalog(_)
            | ServiceError::Task(_)
            | ServiceError::Zone(_)
            | ServiceError::Switch(_)
            | ServiceError::Storage(_) => {
                tracing::error!(error = %err, ?causes, "request failed inside vmmd");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    codes::INTERNAL,
                    err.to_string(),
                )
            }
        };
        e.body.causes = causes;
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::switch_error;
    use hull_vswitch::VswitchError;

    #[test]
    fn a_switch_failure_is_the_daemons_and_a_refusal_is_a_conflict() {
        let failed = switch_error(VswitchError::Sys {
            what: "delete hb-admin".into(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        });
        let e = ApiError::from(failed);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.body.message, "cannot delete hb-admin");
        assert_eq!(e.body.causes.len(), 1, "{:?}", e.body.causes);
        assert!(e.body.causes[0].contains("busy"), "{:?}", e.body.causes);

        let refused = switch_error(VswitchError::Invalid(
            "the bridge has a guest's port".into(),
        ));
        let e = ApiError::from(refused);
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.body.message, "the bridge has a guest's port");
    }
}
