//! The HTTP port (`--http-listen`): the Open Inference Protocol's REST binding (`/v2/...`,
//! what tritonclient.http and `perf_analyzer -i http` speak), the registry's REST API
//! (`/api/v1/...`), the admin page, the model config, signed downloads and Prometheus metrics
//! (`/metrics`). A sibling of `api/` (gRPC): every route turns its JSON into the services'
//! plain types ([`crate::ops`], [`crate::oip`]) and back, so a request takes the same path,
//! routing and errors on both transports. `oip.rs` the `/v2` routes (`tensor_json.rs` their
//! tensor codec), `rest.rs` `/api/v1`'s models and activation, `rollout.rs` its canary and shadow, `predict.rs` `/api/v1/predict`, `lifecycle.rs`
//! status, events and evaluation, `openapi.rs` the OpenAPI document, `request.rs` what every `/api/v1` route reads from its
//! request (JSON body, model id, wait, caller), `error.rs` the one error map to HTTP.

/// The value of a `Result<T, Box<Response>>`, or the handler answers with its error response.
macro_rules! or_reply {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
}

pub mod admin;
pub mod browser;
pub mod download;
pub mod error;
pub mod lifecycle;
pub mod malformed;
pub mod model_config;
pub mod oip;
pub mod openapi;
pub mod predict;
pub mod request;
pub mod rest;
pub mod rollout;
pub mod tensor_json;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::Access;
use crate::error::{Kind, Reply};
use crate::ops::Services;
use crate::signing::DownloadConfig;

/// What every route reads.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub(crate) services: Services,
    /// The bearer tokens requests must carry (none: no check).
    pub(crate) access: Arc<Access>,
    /// Signing keys and bounds of download URLs.
    pub(crate) downloads: DownloadConfig,
    pub(crate) oip: crate::oip::OpenInference,
    pub(crate) config: HttpConfig,
    pub(crate) verified: Arc<download::Verified>,
    pub(crate) admin: Arc<admin::Sessions>,
    pub(crate) browser: Arc<browser::Policy>,
    pub(crate) limits: crate::net::BodyLimits,
}

/// The HTTP server's settings.
#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    /// The largest request body, as for gRPC messages; a larger one gets 413.
    pub max_body_bytes: usize,
    /// `Cache-Control: max-age` of the model-config endpoint, in seconds.
    pub model_config_max_age_secs: u64,
    /// Whether the port speaks TLS (the admin session cookie is then `Secure`).
    pub tls: bool,
}

/// Every route of the HTTP port.
pub fn router(
    services: Services,
    access: Arc<Access>,
    downloads: DownloadConfig,
    config: HttpConfig,
    browser: browser::Policy,
    limits: crate::net::BodyLimits,
) -> Router {
    let admin = Arc::new(admin::Sessions::new(downloads.keys.derive("admin-session")));
    let state = HttpState {
        oip: crate::oip::OpenInference::new(&services),
        services,
        access,
        downloads,
        admin,
        config,
        verified: Arc::default(),
        browser: Arc::new(browser),
        limits,
    };
    Router::new()
        .route("/metrics", get(metrics))
        .merge(oip::routes())
        .merge(rest::routes())
        .merge(lifecycle::routes())
        .merge(admin::routes(&state))
        .merge(model_config::routes())
        .merge(download::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), limit_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), access_check))
        .layer(axum::middleware::from_fn_with_state(state.clone(), browser_check))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

/// Serves the connections of `incoming` until `shutdown`, then waits for open requests: the
/// router set in `ready` once there is one (see [`router`]); until then, while the server
/// waits for its registry, `/v2/health/live` says alive, `/v2/health/ready` not ready, and
/// every other route 503 with [`crate::api::later::WAITING`]. A request head must arrive
/// within `header_timeout` (an idle keep-alive connection is closed after it too).
///
/// # Errors
/// Never yet; the signature leaves room for a listener that fails.
pub async fn serve<I, S>(
    incoming: I,
    ready: Arc<std::sync::OnceLock<Router>>,
    header_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    I: futures_util::Stream<Item = std::io::Result<S>>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures_util::StreamExt as _;
    use tower::ServiceExt;
    let waiting = Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route(
            "/v2/health/ready",
            get(|| async { error::oip_status(StatusCode::BAD_REQUEST, crate::api::later::WAITING) }),
        )
        .fallback(waiting);
    let app = Router::new().fallback_service(tower::service_fn(move |req: axum::extract::Request| {
        let to = ready.get().unwrap_or(&waiting).clone();
        to.oneshot(req)
    }));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut incoming = std::pin::pin!(incoming);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let io = tokio::select! {
            io = incoming.next() => match io {
                Some(Ok(io)) => io,
                Some(Err(_)) => continue,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(malformed::Explained::new(io)), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                malformed::log_parse_error(&e);
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Reads a request's body within the limits ([`crate::net`]) before the route runs: 413 past
/// the largest body, 503 with `Retry-After` when the server's budget of request bytes in
/// flight cannot hold it (a declared `Content-Length` is charged before anything is read),
/// 408 when it trickles in longer than the body timeout. The charge is held until the route
/// answers. The body is read into one buffer of its declared size (no second copy).
async fn limit_body(
    axum::extract::State(state): axum::extract::State<HttpState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let max = state.config.max_body_bytes;
    let path = req.uri().path().to_string();
    let refuse = |code: StatusCode, e: crate::Error| {
        let mut r = error::for_path(&path, &e.reply());
        *r.status_mut() = code;
        if code == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    };
    let too_large = || {
        crate::Error::InvalidArgument(format!(
            "the request body is larger than the {max} bytes allowed (--max-message-bytes)"
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let charge = crate::net::Charge::new(&state.limits.budget);
    if let Some(n) = declared {
        if n > max {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, too_large());
        }
        if !charge.add(n) {
            let full = crate::net::BodyError::Full {
                max: state.limits.budget.max(),
            };
            return refuse(StatusCode::SERVICE_UNAVAILABLE, full.into());
        }
    }
    let (parts, body) = req.into_parts();
    let mut body = std::pin::pin!(
        crate::net::Metered::new(body, std::sync::Arc::clone(&charge), state.limits.timeout)
            .prepaid(declared.unwrap_or(0))
    );
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let code = match e {
                    crate::net::BodyError::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    crate::net::BodyError::Slow { .. } => StatusCode::REQUEST_TIMEOUT,
                    crate::net::BodyError::Read(_) => StatusCode::BAD_REQUEST,
                };
                crate::client_event!(tracing::Level::INFO, "request_body", path = %crate::error::cut(&path, 200), "refused: {e}");
                return refuse(code, e.into());
            }
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return refuse(StatusCode::PAYLOAD_TOO_LARGE, too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    let r = next
        .run(axum::extract::Request::from_parts(parts, Body::from(buf.freeze())))
        .await;
    drop(charge);
    r
}

async fn waiting(uri: axum::http::Uri) -> Response {
    let waiting = Reply::new(Kind::Unavailable, crate::api::later::WAITING);
    let mut r = if uri.path().starts_with("/api/") {
        error::rest(&waiting)
    } else {
        error::oip(&waiting)
    };
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn browser_check(
    axum::extract::State(state): axum::extract::State<HttpState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Err((code, words)) = state.browser.check(req.method(), req.uri().path(), req.headers()) else {
        return next.run(req).await;
    };
    crate::client_event!(
        tracing::Level::WARN,
        "browser_refused",
        method = req.method().as_str(),
        path = %crate::error::cut(req.uri().path(), 200),
        host = ?req.headers().get(header::HOST),
        origin = ?req.headers().get(header::ORIGIN),
        "refused: {words}"
    );
    let kind = if code == StatusCode::FORBIDDEN {
        Kind::PermissionDenied
    } else {
        Kind::InvalidArgument
    };
    let mut r = error::for_path(req.uri().path(), &Reply::new(kind, words));
    *r.status_mut() = code;
    r
}

/// The access check on HTTP ([`crate::auth::http_need`]): 401 (with `WWW-Authenticate:
/// Bearer`) without a good token, 403 with the wrong scope, as JSON in the route's own error
/// form.
async fn access_check(
    axum::extract::State(state): axum::extract::State<HttpState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = crate::trace::request_id_from(req.headers().get(crate::trace::REQUEST_ID_HEADER));
    let need = crate::auth::http_need(req.method().as_str(), req.uri().path());
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let denied = match state.access.check(header, need) {
        Ok(caller) => {
            if let Some(name) = caller {
                req.extensions_mut().insert(crate::auth::Caller(name));
            }
            let mut r = crate::trace::scope(id.clone(), next.run(req)).await;
            crate::trace::stamp(&mut r, id);
            return r;
        }
        Err(d) => d,
    };
    crate::client_event!(
        tracing::Level::WARN,
        "access_denied",
        request_id = crate::trace::shown(&id),
        method = req.method().as_str(),
        path = req.uri().path(),
        "refused: {}",
        denied.message()
    );
    let reply = denied.reply();
    let mut r = error::for_path(req.uri().path(), &reply);
    if reply.kind == Kind::Unauthenticated {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"modeld\""),
        );
    }
    crate::trace::stamp(&mut r, id);
    r
}

async fn metrics(axum::extract::State(state): axum::extract::State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state.services),
    )
        .into_response()
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let message = format!("no route {method} {path}{}", route_hint(path));
    // The Open Inference Protocol's shape under /v2 (Triton's clients read a string), the REST
    // API's everywhere else.
    if path.starts_with("/v2") {
        error::oip_status(StatusCode::NOT_FOUND, &message)
    } else {
        error::rest(&Reply::new(Kind::NotFound, message))
    }
}

/// Where what a path asks for is, for the paths people bring from the guides (Supabase's
/// Edge Function and storage routes) and for the bare port.
fn route_hint(path: &str) -> &'static str {
    if path == "/" {
        "; this port serves /api/v1 (the registry's REST API and the model config; its OpenAPI \
         document is /api/v1/openapi.json), /v2 (the Open Inference Protocol), /admin and /metrics; see \
         docs/http.md"
    } else if path.ends_with("model-config") || path.starts_with("/functions/") {
        "; modeld serves the model config at /api/v1/model-config (GET or POST, with the same \
         X-App-Platform and If-None-Match headers); see docs/http.md, \"Coming from the guides\""
    } else if path.starts_with("/storage/v1/object/sign/") {
        "; modeld signs a download URL with POST /api/v1/models/{id}/download-url and the body \
         {\"expires_in_secs\": 3600}; the answer's \"url\" is the signed URL; see docs/http.md, \"Coming from \
         the guides\""
    } else if path.starts_with("/storage/") {
        "; model files download from GET /api/v1/models/{id}/download (a signed URL from POST \
         /api/v1/models/{id}/download-url); see docs/http.md, \"Coming from the guides\""
    } else if path.starts_with("/rest/v1/") {
        "; the registry's REST API is /api/v1/models (list, get, register, update, activate); see \
         docs/http.md, \"Coming from the guides\""
    } else {
        "; see /api/v1/openapi.json and docs/http.md"
    }
}

/// A JSON body with status 200.
pub fn json_ok(body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
