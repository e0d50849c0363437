//! `GET /api/v1/model-config` (and `POST`, as the guide's clients call it): the model
//! configuration devices poll, with `ETag`, `If-None-Match` → 304, `Cache-Control`, `Vary:
//! X-App-Platform`, and CORS with the preflight for the headers the guide's clients send.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::HttpState;
use super::error::rest_error;
use crate::ops::{ClientConfig, platform};

/// The request headers the guide's clients send (its Edge Function's CORS list).
pub const CORS_HEADERS: [&str; 8] = [
    "authorization",
    "x-client-info",
    "apikey",
    "content-type",
    "x-app-platform",
    "x-device-tier",
    "x-locale",
    "if-none-match",
];

/// The platform header.
pub const PLATFORM: &str = "x-app-platform";

/// CORS for what browsers and web views fetch: any origin, the guide's request headers, the
/// ETag readable by scripts.
pub fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([Method::GET, Method::POST, Method::HEAD, Method::OPTIONS])
        .allow_headers(CORS_HEADERS.map(HeaderName::from_static))
        .expose_headers([header::ETAG, header::CACHE_CONTROL, header::CONTENT_LENGTH])
        .max_age(std::time::Duration::from_secs(86_400))
}

/// The `/api/v1/model-config` route, with CORS.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/model-config", get(model_config).post(model_config))
        .layer(cors())
        .layer(axum::middleware::from_fn(expose_only_to_browsers))
}

/// `Access-Control-Expose-Headers` only on a cross-origin request (one with `Origin`), the only
/// reader it has: on every answer it made the guide's `curl -sI … | grep -i etag` recipe find
/// two lines.
async fn expose_only_to_browsers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let cross_origin = req.headers().contains_key(header::ORIGIN);
    let mut r = next.run(req).await;
    if !cross_origin {
        r.headers_mut().remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
    }
    r
}

fn caching_headers(h: &mut HeaderMap, config: &ClientConfig, max_age: u64) {
    if let Ok(v) = HeaderValue::from_str(&config.etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("X-App-Platform"));
}

/// The model configuration for the client's platform (`X-App-Platform`); 304 with no body
/// when `If-None-Match` names its ETag. POST answers the same.
#[utoipa::path(get, path = "/api/v1/model-config", tag = "model-config",
    params(
        ("X-App-Platform" = Option<String>, Header, description = "ios, android, web, ...; selects a per-platform minAppVersion"),
        ("If-None-Match" = Option<String>, Header, description = "an ETag this client has"),
    ),
    responses(
        (status = 200, body = crate::ops::ClientConfig, headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "the client's ETag is current: no body"),
        (status = 404, body = super::error::ErrorBody, description = "no model is active"),
    ))]
pub(crate) async fn model_config(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let platform = platform(headers.get(PLATFORM).and_then(|v| v.to_str().ok()));
    let config = match s.services.catalogue.client_config(&platform).await {
        Ok(c) => c,
        Err(e) => return rest_error(&e),
    };
    let if_none_match = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if !if_none_match.is_empty() && config.matches(&if_none_match) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        caching_headers(r.headers_mut(), &config, s.config.model_config_max_age_secs);
        return r;
    }
    let body = serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    caching_headers(r.headers_mut(), &config, s.config.model_config_max_age_secs);
    r
}
