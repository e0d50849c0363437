//! What every `/api/v1` route reads from its request and how it answers: the JSON body
//! (an object or, where the route allows it, nothing; whole floats read as integers; the
//! guides' camelCase field names named in the refusal), a model id from the path, `?wait_ms=`
//! and the wait for the fleet, the caller's name; a JSON answer and the `X-Modeld-Served`
//! header.

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::HttpState;
use super::error::rest_error;
use crate::error::{Error, Kind, Reply};
use crate::fleet::Served;

/// `body` as JSON with `status`.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn ok<T: Serialize>(body: &T) -> Response {
    json_response(StatusCode::OK, body)
}

/// The body as `T`; an empty body is `T::default()`.
pub(crate) fn body<T: for<'de> Deserialize<'de> + Default>(
    b: Result<Bytes, BytesRejection>,
) -> Result<T, Box<Response>> {
    parse_body(b, false)
}

/// [`body`] for a route whose body is required: an empty body is refused too.
pub(crate) fn required_body<T: for<'de> Deserialize<'de> + Default>(
    b: Result<Bytes, BytesRejection>,
) -> Result<T, Box<Response>> {
    parse_body(b, true)
}

fn parse_body<T: for<'de> Deserialize<'de> + Default>(
    b: Result<Bytes, BytesRejection>,
    required: bool,
) -> Result<T, Box<Response>> {
    let b = b.map_err(|e| {
        let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Kind::ResourceExhausted
        } else {
            Kind::InvalidArgument
        };
        let mut r = super::error::rest(&Reply::new(kind, e.body_text()));
        *r.status_mut() = e.status();
        Box::new(r)
    })?;
    let refuse = |m: String| Box::new(rest_error(&Error::InvalidArgument(m)));
    // JSON's own whitespace (not a form feed) may surround the object; a body of nothing but
    // whitespace is not JSON, so only an empty body stands for the defaults.
    match b.iter().find(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
        None if required => Err(refuse("this route takes a JSON object in the request body".into())),
        None if b.is_empty() => Ok(T::default()),
        None => Err(refuse(
            "the request body must be a JSON object ({...}) or empty, not only whitespace".into(),
        )),
        // serde reads a struct from an array too (`[]`, `[null]`): only an object is a body.
        // One parse; only a body serde refused is read again with whole floats made integers.
        Some(b'{') => serde_json::from_slice(&b)
            .or_else(|_| {
                serde_json::from_slice::<Value>(&b).and_then(|mut v| {
                    whole_numbers(&mut v);
                    serde_json::from_value(v)
                })
            })
            .map_err(|e| {
                let e = e.to_string();
                refuse(format!(
                    "the request body is not what this route takes: {e}{}",
                    guide_name_hint(&e)
                ))
            }),
        Some(_) => Err(refuse("the request body must be a JSON object ({...})".into())),
    }
}

/// The guides' field names (camelCase, the Supabase storage API's) that modeld spells its own
/// way, for the error that refuses one.
const GUIDE_FIELDS: [(&str, &str); 9] = [
    ("expiresIn", "expires_in_secs"),
    ("signedURL", "url (in the answer)"),
    ("signedUrl", "url (in the answer)"),
    ("modelName", "model_name"),
    ("filePath", "file_path"),
    ("modelType", "model_type"),
    ("isActive", "is_active (POST /api/v1/models/{id}/activate activates)"),
    ("minAppVersion", "min_app_version"),
    ("rolloutPercentage", "percentage (PUT /api/v1/rollout/canary)"),
];

/// `; modeld's name for "expiresIn" is "expires_in_secs"` when serde's message names a field
/// of [`GUIDE_FIELDS`].
fn guide_name_hint(serde_message: &str) -> String {
    GUIDE_FIELDS
        .iter()
        .find(|(theirs, _)| serde_message.contains(&format!("`{theirs}`")))
        .map_or_else(String::new, |(theirs, ours)| {
            format!("; modeld's name for {theirs:?} is {ours} (docs/http.md, \"Coming from the guides\")")
        })
}

/// JSON (and JSON Schema) count `42.0` as the integer 42, serde's integer fields do not:
/// whole floats become integers before the body is read, except inside tensor `data` (read
/// by its datatype).
fn whole_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9_007_199_254_740_992.0
            {
                #[allow(clippy::cast_possible_truncation)]
                let i = f as i64;
                *v = Value::from(i);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(whole_numbers),
        Value::Object(o) => o
            .iter_mut()
            .filter(|(k, _)| k.as_str() != "data")
            .for_each(|(_, x)| whole_numbers(x)),
        _ => {}
    }
}

/// A model id from the path: a positive integer.
pub(crate) fn model_id(raw: &str) -> Result<i64, Box<Response>> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        Box::new(rest_error(&Error::InvalidArgument(format!(
            "model_id is a positive integer, got {raw:?} (GET /api/v1/models lists them)"
        ))))
    })
}

fn who(by: String) -> String {
    if by.is_empty() { "http".into() } else { by }
}

/// `?wait_ms=` of a change: how long to wait for every live server to serve it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WaitQuery {
    #[serde(default)]
    wait_ms: Option<i64>,
}

/// The query of a change's route.
pub(crate) type WaitParam = Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>;

/// The wait `?wait_ms=` asks for (absent: the default; 0: none; at most [`crate::ops::MAX_WAIT`]).
pub(crate) fn wait_of(q: WaitParam) -> Result<Option<std::time::Duration>, Box<Response>> {
    let refuse = || {
        Box::new(rest_error(&Error::InvalidArgument(
            "wait_ms is a number of milliseconds from 0 (0: do not wait)".into(),
        )))
    };
    let Ok(Query(q)) = q else { return Err(refuse()) };
    match q.wait_ms.map(u64::try_from) {
        None => Ok(Some(crate::ops::DEFAULT_WAIT)),
        Some(Err(_)) => Err(refuse()),
        Some(Ok(0)) => Ok(None),
        Some(Ok(ms)) => Ok(Some(std::time::Duration::from_millis(ms).min(crate::ops::MAX_WAIT))),
    }
}

/// Waits for the fleet after a committed change. A registry that stops answering meanwhile
/// is a 503 that says the change is committed, as over gRPC.
pub(crate) async fn served(s: &HttpState, wait: Option<std::time::Duration>) -> Result<Served, Box<Response>> {
    s.services
        .catalogue
        .await_served(wait)
        .await
        .map_err(|e| Box::new(rest_error(&e)))
}

/// The `X-Modeld-Served` header: how the fleet serves the change, in one line.
pub(crate) fn served_header(mut r: Response, served: &Served) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(&served.summary()) {
        r.headers_mut().insert("x-modeld-served", v);
    }
    r
}

/// The wait parameter every change route documents.
pub(crate) const WAIT_DOC: &str = "return once every live server serves the change, waiting at most this many ms \
     (default 30000, at most 600000; 0: do not wait); `served` in the answer (or the X-Modeld-Served header) says how it went";

/// Who did it: the request's token's name when it came with one, else what the body says
/// (default "http").
pub(crate) type Caller = Option<axum::Extension<crate::auth::Caller>>;

/// The given name is checked even when the token's name replaces it: the same body is refused
/// alike with tokens on and off.
pub(crate) fn by(caller: &Caller, given: String) -> Result<String, Box<Response>> {
    crate::registry::text::WHO
        .check(&given)
        .map_err(|e| Box::new(rest_error(&e)))?;
    Ok(caller.as_ref().map_or_else(|| who(given), |c| c.0.0.clone()))
}
