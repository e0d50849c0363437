//! Signed artifact downloads (guide 004: signed download URLs; guide 000: checksums).
//!
//! `POST /api/v1/models/{model_id}/download-url` answers `{url, expires_at, sha256,
//! size_bytes}`: a URL to `GET /api/v1/models/{model_id}/download?expires=T&sig=S`, where `S` is
//! the HMAC-SHA256, under the server's signing key, of the model id, its sha256 and the expiry.
//! The signature is the credential: the URL needs nothing else, so a device can fetch its
//! model with it alone. A file registered anew (another sha256) or a tampered id, expiry or
//! signature no longer verifies; an expired URL is refused even with a good signature. Two
//! keys may be configured at once: the first signs, both verify (rotation).
//!
//! The download streams the file from the model root (never from outside it), after checking
//! that the file on disk is still the one the registry names: `Content-Length`, `ETag` (the
//! sha256), `X-Checksum-Sha256`, `Content-Disposition`, `Accept-Ranges`, and `Range` for one
//! byte range (206, or 416 when it cannot be satisfied). `HEAD` answers the same headers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa::ToSchema;

use super::HttpState;
use super::error::rest_error;
use crate::error::Error;
use crate::registry::{ModelRecord, ModelRef};

use crate::signing::{DownloadUrl, signed_url};

/// Asking for a URL; every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadUrlBody {
    /// Seconds until it expires (default 3600, at most the server's maximum).
    #[schema(minimum = 1)]
    pub expires_in_secs: Option<u64>,
}

/// The base URL a client reached this server by: `http://` and its `Host` header when that is
/// a bare `host[:port]`; else (a Host that carries a path, a query or credentials, which would
/// point the signed URL elsewhere) `fallback`, the server's own address.
fn request_base(headers: &HeaderMap, fallback: &str) -> String {
    let clean = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .and_then(|h| {
            let u = url::Url::parse(&format!("http://{h}/")).ok()?;
            let authority = match (u.host_str(), u.port()) {
                (Some(host), Some(p)) => format!("{host}:{p}"),
                (Some(host), None) => host.to_string(),
                _ => return None,
            };
            (u.path() == "/" && u.query().is_none() && u.username().is_empty() && authority.eq_ignore_ascii_case(h))
                .then(|| format!("http://{h}"))
        });
    clean.unwrap_or_else(|| {
        if fallback.is_empty() {
            "http://localhost".into()
        } else {
            fallback.to_string()
        }
    })
}

/// The download routes, with CORS (browsers and web views fetch models too).
pub fn routes() -> axum::Router<HttpState> {
    axum::Router::new()
        .route(
            "/api/v1/models/{model_id}/download-url",
            axum::routing::post(download_url),
        )
        .route("/api/v1/models/{model_id}/download", axum::routing::get(download))
        .layer(super::model_config::cors())
}

/// The admin page's downloads, behind its session (`/admin/api/v1/...`): a signed URL to
/// hand to a device, and the file itself for the signed-in operator (no URL to sign).
pub fn admin_routes() -> axum::Router<HttpState> {
    axum::Router::new()
        .route(
            "/api/v1/models/{model_id}/download-url",
            axum::routing::post(download_url),
        )
        .route("/api/v1/models/{model_id}/file", axum::routing::get(session_download))
}

/// A model's file for the admin page's signed-in operator (the session was checked).
async fn session_download(State(s): State<HttpState>, UrlPath(id): UrlPath<String>, headers: HeaderMap) -> Response {
    let id = or_reply!(super::request::model_id(&id));
    match s.services.catalogue.get(&ModelRef::Id(id)).await {
        Ok(record) => serve_file(&s, &record, &headers).await,
        Err(e) => rest_error(&e),
    }
}

/// Get a signed download URL for a model's file.
#[utoipa::path(post, path = "/api/v1/models/{model_id}/download-url", tag = "download",
    request_body = Option<DownloadUrlBody>,
    params(("model_id" = i64, Path, description = "the model's id")),
    responses((status = 200, body = DownloadUrl), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub(crate) async fn download_url(
    State(s): State<HttpState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    b: std::result::Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let id = or_reply!(super::request::model_id(&id));
    let b: DownloadUrlBody = or_reply!(super::request::body(b));
    let record = match s.services.catalogue.get(&ModelRef::Id(id)).await {
        Ok(r) => r,
        Err(e) => return rest_error(&e),
    };
    match signed_url(
        &s.downloads,
        &request_base(&headers, &s.downloads.default_base),
        &record,
        b.expires_in_secs,
        Utc::now(),
    ) {
        Ok(u) => super::request::ok(&u),
        Err(e) => rest_error(&e),
    }
}

/// The query of a signed URL.
#[derive(Debug, Deserialize)]
pub(crate) struct Signed {
    expires: Option<i64>,
    sig: Option<String>,
}

fn denied(message: String) -> Response {
    let mut r = super::error::rest(&crate::error::Reply::new(crate::error::Kind::PermissionDenied, message));
    *r.status_mut() = StatusCode::FORBIDDEN;
    r
}

/// Files whose sha256 was checked, by path, with the size and modification time they had:
/// a file that kept both is not hashed again.
#[derive(Debug, Default)]
pub struct Verified {
    files: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl Verified {
    /// The sha256 of the file at `path` (hashed again only when its size or time changed).
    async fn sha256(&self, path: &Path) -> std::io::Result<(String, u64)> {
        let meta = tokio::fs::metadata(path).await?;
        let (len, modified) = (meta.len(), meta.modified()?);
        if let Some((l, m, sha)) = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            && *l == len
            && *m == modified
        {
            return Ok((sha.clone(), len));
        }
        let owned = path.to_path_buf();
        let sha = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            use std::io::Read as _;
            let mut f = std::fs::File::open(owned)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(hex::encode(h.finalize()))
        })
        .await
        .map_err(std::io::Error::other)??;
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(path.to_path_buf(), (len, modified, sha.clone()));
        Ok((sha, len))
    }
}

/// One byte range of a `Range` header, resolved against `len`: `Ok(None)` without one,
/// `Err(())` when it cannot be satisfied.
fn range(headers: &HeaderMap, len: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?.trim();
    // The unit is case-insensitive, and a unit this server does not know is ignored: the
    // whole file is served (RFC 9110 §14.2).
    let Some(spec) = v.get(..6).filter(|u| u.eq_ignore_ascii_case("bytes=")).map(|_| &v[6..]) else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges (multipart/byteranges) are not served; the whole file is.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            if n == 0 || len == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| ())?;
            let end: u64 = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                b.parse().map_err(|_| ())?
            };
            if start >= len || end < start {
                return Err(());
            }
            (start, end.min(len - 1))
        }
        (true, true) => return Err(()),
    };
    Ok(Some((start, end)))
}

fn file_name(file_path: &str) -> String {
    Path::new(file_path)
        .file_name()
        .map_or_else(|| "model.onnx".into(), |n| n.to_string_lossy().into_owned())
}

/// `Content-Disposition: attachment` with the file's name (ASCII, and RFC 5987 for the rest).
fn disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Download a model's file with a signed URL (no other credential).
#[utoipa::path(get, path = "/api/v1/models/{model_id}/download", tag = "download",
    params(
        ("model_id" = i64, Path, description = "the model's id"),
        ("expires" = i64, Query, description = "Unix seconds, as signed"),
        ("sig" = String, Query, description = "the signature"),
        ("Range" = Option<String>, Header, description = "one byte range: bytes=START-END, START- or -SUFFIX"),
    ),
    responses(
        (status = 200, description = "the file", content_type = "application/octet-stream"),
        (status = 206, description = "the range asked for"),
        (status = 403, body = super::error::ErrorBody, description = "expired, tampered with, or for another file"),
        (status = 404, body = super::error::ErrorBody),
        (status = 416, description = "the range is outside the file"),
    ))]
pub(crate) async fn download(
    State(s): State<HttpState>,
    UrlPath(id): UrlPath<String>,
    query: std::result::Result<Query<Signed>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let id = or_reply!(super::request::model_id(&id));
    let Ok(Query(Signed {
        expires: Some(expires),
        sig: Some(sig),
    })) = query
    else {
        return denied(
            "a download URL carries expires and sig (POST /api/v1/models/{model_id}/download-url makes one)".into(),
        );
    };
    let record = match s.services.catalogue.get(&ModelRef::Id(id)).await {
        Ok(r) => r,
        Err(e) => return rest_error(&e),
    };
    if !s.downloads.keys.verify(id, &record.checksum_sha256, expires, &sig) {
        return denied(
            "the download URL's signature does not verify: it was altered, signed with a key this server no \
             longer has, or the model's file changed since (ask for a new URL)"
                .into(),
        );
    }
    let now = Utc::now().timestamp();
    if expires < now {
        let at = DateTime::from_timestamp(expires, 0).map_or_else(|| expires.to_string(), |t| t.to_rfc3339());
        return denied(format!("the download URL expired at {at}; ask for a new one"));
    }
    serve_file(&s, &record, &headers).await
}

async fn serve_file(s: &HttpState, record: &ModelRecord, headers: &HeaderMap) -> Response {
    let path = match s.services.catalogue.record_file(record).await {
        Ok(p) => p,
        Err(e) => return rest_error(&e),
    };
    let (sha, len) = match s.verified.sha256(&path).await {
        Ok(v) => v,
        Err(e) => {
            return rest_error(&Error::model_file(
                crate::error::FileProblem::Unreadable,
                format!("model file {:?} cannot be read: {e}", record.file_path),
            ));
        }
    };
    if sha != record.checksum_sha256 {
        return rest_error(&Error::model_file(
            crate::error::FileProblem::ChecksumMismatch,
            format!(
                "model file {:?} on disk is not the one the registry names (sha256 {sha}, registry {}); \
                 it is not served until they agree",
                record.file_path, record.checksum_sha256
            ),
        ));
    }
    let etag = format!("\"{sha}\"");
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_DISPOSITION, disposition(&file_name(&record.file_path)));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&sha) {
        h.insert("x-checksum-sha256", v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=0"));
    let (status, start, end) = match range(headers, len) {
        Ok(None) => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ok(Some((a, b))) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, a, b)
        }
        Err(()) => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return rest_error(&Error::model_file(
                crate::error::FileProblem::Unreadable,
                format!("model file {:?} cannot be read: {e}", record.file_path),
            ));
        }
    };
    if start > 0
        && let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await
    {
        return rest_error(&Error::internal(format!("cannot seek in {:?}: {e}", record.file_path)));
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 << 10);
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    *r.headers_mut() = h;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_length() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range(&h("bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(range(&h("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(range(&h("bytes=-4"), 10), Ok(Some((6, 9))));
        assert_eq!(range(&h("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(range(&h("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(range(&h("Bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(range(&h("items=0-1"), 10), Ok(None), "an unknown unit is ignored");
        for bad in ["bytes=10-", "bytes=5-2", "bytes=-0", "bytes=-", "bytes=a-b"] {
            assert_eq!(range(&h(bad), 10), Err(()), "{bad}");
        }
    }

    #[test]
    fn a_host_that_is_not_a_bare_authority_does_not_make_the_url() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(v).unwrap());
            m
        };
        let own = "http://127.0.0.1:8000";
        assert_eq!(
            request_base(&h("models.example:8000"), own),
            "http://models.example:8000"
        );
        assert_eq!(request_base(&h("[::1]:8000"), own), "http://[::1]:8000");
        for bad in ["evil.example.com/x?y=", "user@evil.example", "a b", "evil.example#"] {
            assert_eq!(request_base(&h(bad), own), own, "{bad}");
        }
        assert_eq!(request_base(&HeaderMap::new(), own), own);
    }

    #[test]
    fn the_disposition_names_the_file_safely() {
        assert_eq!(
            disposition("digits_v2.onnx").to_str().unwrap(),
            "attachment; filename=\"digits_v2.onnx\"; filename*=UTF-8''digits_v2.onnx"
        );
        let v = disposition("modèle \"x\".onnx");
        let v = v.to_str().unwrap();
        assert!(
            v.contains("filename=\"mod_le _x_.onnx\"") && v.contains("mod%C3%A8le%20%22x%22.onnx"),
            "{v}"
        );
    }
}
