//! The one map from what a client is told ([`Reply`]) to HTTP: the status (as Triton's HTTP
//! endpoint and the KServe v2 REST binding answer), `Retry-After` for an overload, and the two
//! JSON shapes the routes document: the Open Inference Protocol's `{"error": "..."}` under
//! `/v2`, and `{"error": {"code", "message"}}` for `/api/v1` and the admin page.

// Every kind is mapped on purpose: a new kind must be placed here, never fall into a
// catch-all arm.
#![deny(clippy::wildcard_enum_match_arm)]

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Error, Kind, Reply};

/// The HTTP status of a kind of failure.
pub fn status(kind: Kind) -> StatusCode {
    match kind {
        Kind::InvalidArgument => StatusCode::BAD_REQUEST,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::AlreadyExists | Kind::FailedPrecondition => StatusCode::CONFLICT,
        Kind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::PermissionDenied => StatusCode::FORBIDDEN,
    }
}

/// The `/api/v1` error's `code`: the gRPC code's name, as the gRPC API would answer.
pub fn code_name(kind: Kind) -> &'static str {
    match kind {
        Kind::InvalidArgument => "INVALID_ARGUMENT",
        Kind::NotFound => "NOT_FOUND",
        Kind::AlreadyExists => "ALREADY_EXISTS",
        Kind::FailedPrecondition => "FAILED_PRECONDITION",
        Kind::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Kind::Unavailable => "UNAVAILABLE",
        Kind::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Kind::Internal => "INTERNAL",
        Kind::Unauthenticated => "UNAUTHENTICATED",
        Kind::PermissionDenied => "PERMISSION_DENIED",
    }
}

/// An error: `{"error": {"code": "NOT_FOUND", "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code (the gRPC code's name) and a message for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `FAILED_PRECONDITION`,
    /// `RESOURCE_EXHAUSTED`, `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

impl ErrorBody {
    /// The body of `reply`.
    pub fn of(reply: &Reply) -> Self {
        Self {
            error: ErrorDetail {
                code: code_name(reply.kind).into(),
                message: reply.message.clone(),
            },
        }
    }
}

/// `reply` in the REST API's shape.
pub fn rest(reply: &Reply) -> Response {
    let body = serde_json::to_string(&ErrorBody::of(reply)).unwrap_or_else(|_| "{}".into());
    respond(reply, body)
}

/// `reply` in the Open Inference Protocol's shape.
pub fn oip(reply: &Reply) -> Response {
    respond(reply, serde_json::json!({ "error": reply.message }).to_string())
}

/// An error of the operations in the REST API's shape.
pub fn rest_error(e: &Error) -> Response {
    rest(&e.clone().reply())
}

/// An error of the operations in the Open Inference Protocol's shape.
pub fn oip_error(e: Error) -> Response {
    oip(&e.reply())
}

/// `reply` in the route's own shape: the REST API's for `/api/...` and the admin page's API,
/// the Open Inference Protocol's elsewhere.
pub fn for_path(path: &str, reply: &Reply) -> Response {
    if path.starts_with("/api/") || path.starts_with("/admin/api/") {
        rest(reply)
    } else {
        oip(reply)
    }
}

/// The Open Inference Protocol's error body with a `status` of its own: a protocol answer that
/// is no failure of the operations (not ready: 400; an unreadable body: its rejection's status).
pub fn oip_status(status: StatusCode, message: &str) -> Response {
    let mut r = Response::new(Body::from(serde_json::json!({ "error": message }).to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn respond(reply: &Reply, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status(reply.kind);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(after) = reply.retry_after {
        // Whole seconds, at least 1.
        let secs = u64::try_from(after.as_millis())
            .unwrap_or(u64::MAX)
            .div_ceil(1000)
            .max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_an_error_status_and_the_hint_is_whole_seconds() {
        for kind in [
            Kind::InvalidArgument,
            Kind::NotFound,
            Kind::AlreadyExists,
            Kind::FailedPrecondition,
            Kind::ResourceExhausted,
            Kind::Unavailable,
            Kind::DeadlineExceeded,
            Kind::Internal,
            Kind::Unauthenticated,
            Kind::PermissionDenied,
        ] {
            assert!(status(kind).as_u16() >= 400, "{kind:?}");
            assert!(!code_name(kind).is_empty(), "{kind:?}");
        }
        let busy = Error::ResourceExhausted {
            message: "busy".into(),
            retry_after: std::time::Duration::from_millis(1500),
        };
        let r = oip_error(busy);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
