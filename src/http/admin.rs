//! The admin page at `/admin`: a dashboard over the registry, the rollout and this server's
//! figures, from assets embedded in the binary.
//!
//! A browser's `EventSource` cannot send an `Authorization` header, so the page does not use
//! tokens on each request. It signs in once: `POST /admin/session` with `{"token": "..."}` in
//! the body (never in a URL) exchanges an `admin` token for a session cookie, `modeld_admin`:
//! `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends it),
//! `Path=/admin`, `Secure` when the port speaks TLS. The page then calls the same REST routes
//! under `/admin/api/v1/...` (and `/admin/api/v1/events` for live events); every request that
//! changes something must carry the session's CSRF token in `x-csrf-token`.
//!
//! Sessions are stateless: the cookie holds the token's name, the start of its stored hash,
//! an expiry and a nonce, encrypted and authenticated with ChaCha20-Poly1305 (so it is opaque:
//! nothing in it names the token) under a key derived from the first
//! `--signing-key-file` key (so every server of a fleet honours the others' sessions), or a
//! random key per process without one. Each request checks that the token still exists,
//! unexpired, with the scope the route needs: revoking or replacing the token ends its
//! sessions at once. With tokens off the page opens without signing in.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::HttpState;
use super::request::{body, ok};
use crate::auth::{Denied, Holder, Need, Scope};

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "modeld_admin";

/// The cookie format's version, also bound into its encryption.
const COOKIE_VERSION: &str = "v2";

/// The header that carries the CSRF token on changes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a session lasts (its token's own expiry and revocation end it sooner).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

const PAGE: &str = include_str!("admin/index.html");
const SCRIPT: &str = include_str!("admin/admin.js");
const STYLE: &str = include_str!("admin/admin.css");

/// A signed-in session, as read back from its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Whose token.
    pub holder: Holder,
    /// When the session ends.
    pub expires: DateTime<Utc>,
    nonce: String,
}

/// Issues and checks session cookies and CSRF tokens.
pub struct Sessions {
    key: Vec<u8>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions signed with `key`, or with a random key of this process when `None`.
    pub fn new(key: Option<Vec<u8>>) -> Self {
        let key = key.unwrap_or_else(|| {
            let mut k = vec![0u8; 32];
            // Without randomness the key stays fixed at zero; the page still works but
            // anyone could forge a session, so say so loudly.
            if getrandom::fill(&mut k).is_err() {
                tracing::error!("no randomness for the admin session key: set --signing-key-file");
            }
            k
        });
        Self { key }
    }

    fn mac(&self, purpose: &str, text: &str) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(format!("modeld-admin-{purpose}\n{text}").as_bytes());
        mac
    }

    /// The AEAD key of cookies, derived from the signing key.
    fn sealing_key(&self) -> LessSafeKey {
        let bytes = self.mac("cookie-key", "").finalize().into_bytes();
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("a 32-byte ChaCha20 key"))
    }

    /// A cookie value for `holder`, valid until `expires`: the session's fields encrypted and
    /// authenticated (ChaCha20-Poly1305), so the cookie shows nothing of the token it stands for.
    pub fn issue(&self, holder: &Holder, expires: DateTime<Utc>) -> String {
        let mut nonce = [0u8; 16];
        let mut seal_nonce = [0u8; NONCE_LEN];
        let _ = getrandom::fill(&mut nonce);
        let _ = getrandom::fill(&mut seal_nonce);
        let payload = format!(
            "{}.{}.{}.{}",
            hex::encode(holder.name.as_bytes()),
            holder.fingerprint,
            expires.timestamp(),
            hex::encode(nonce)
        );
        let mut sealed = payload.into_bytes();
        self.sealing_key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(seal_nonce),
                Aad::from(COOKIE_VERSION),
                &mut sealed,
            )
            .expect("a cookie is far below ChaCha20-Poly1305's length limit");
        format!("{COOKIE_VERSION}.{}{}", hex::encode(seal_nonce), hex::encode(sealed))
    }

    /// The session of a cookie value, if it opens under this key and has not expired.
    pub fn open(&self, value: &str, now: DateTime<Utc>) -> Option<Session> {
        let sealed = value.strip_prefix(COOKIE_VERSION)?.strip_prefix('.')?;
        if sealed.len() > 4096 {
            return None;
        }
        let mut sealed = hex::decode(sealed).ok()?;
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
        let payload = self
            .sealing_key()
            .open_in_place(nonce, Aad::from(COOKIE_VERSION), &mut sealed[NONCE_LEN..])
            .ok()?;
        let payload = std::str::from_utf8(payload).ok()?;
        let mut parts = payload.split('.');
        let (name, fingerprint, expires, nonce) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expires = DateTime::from_timestamp(expires.parse().ok()?, 0)?;
        if expires <= now {
            return None;
        }
        Some(Session {
            holder: Holder {
                name: String::from_utf8(hex::decode(name).ok()?).ok()?,
                fingerprint: fingerprint.to_string(),
            },
            expires,
            nonce: nonce.to_string(),
        })
    }

    /// The CSRF token of `session`.
    pub fn csrf(&self, session: &Session) -> String {
        hex::encode(self.mac("csrf", &session.nonce).finalize().into_bytes())
    }

    /// Whether `given` is `session`'s CSRF token (compared in constant time).
    pub fn csrf_ok(&self, session: &Session, given: &str) -> bool {
        hex::decode(given).is_ok_and(|g| self.mac("csrf", &session.nonce).verify_slice(&g).is_ok())
    }
}

/// The routes: the page, its assets, the session, and the REST routes under `/admin/api`.
pub fn routes(state: &HttpState) -> Router<HttpState> {
    let api = super::rest::routes()
        .merge(super::lifecycle::routes())
        .merge(super::download::admin_routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), session_check));
    Router::new()
        .route("/admin", get(page))
        .route("/admin/", get(page))
        .route("/admin/assets/{file}", get(asset))
        .route("/admin/session", get(session_info).post(sign_in).delete(sign_out))
        .nest("/admin", api)
}

/// Headers every admin response carries: nothing cached, nothing framed, nothing sniffed,
/// scripts and styles only from this page's own assets.
fn harden(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
}

fn text(content_type: &'static str, body: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    harden(&mut r);
    r
}

async fn page() -> Response {
    text("text/html; charset=utf-8", PAGE)
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "admin.js" => text("text/javascript; charset=utf-8", SCRIPT),
        "admin.css" => text("text/css; charset=utf-8", STYLE),
        _ => super::error::oip_status(StatusCode::NOT_FOUND, &format!("no admin asset {file:?}")),
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v.trim_matches('"'))
}

fn set_cookie(r: &mut Response, s: &HttpState, value: &str, max_age: i64) {
    let secure = if s.config.tls { "; Secure" } else { "" };
    let c = format!("{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// What the page learns about its session.
#[derive(Debug, Serialize)]
struct SessionJson {
    /// Whether a session is open (false: show the sign-in form).
    signed_in: bool,
    /// Whether this server asks for a token.
    tokens_required: bool,
    /// The token's name ("" with tokens off).
    name: String,
    /// The CSRF token to send as `x-csrf-token` on changes.
    csrf: String,
    /// When the session ends.
    expires_at: Option<DateTime<Utc>>,
}

fn denied(d: &Denied, s: &HeaderMap, path: &str) -> Response {
    crate::client_event!(
        tracing::Level::WARN,
        "admin_denied",
        path,
        from = s.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or(""),
        "admin page refused: {}",
        d.message()
    );
    let mut r = super::error::rest(&d.reply());
    harden(&mut r);
    r
}

/// The session of a request, still backed by a token with `scope`.
fn session_of(s: &HttpState, headers: &HeaderMap, scope: Scope) -> Result<Session, Denied> {
    let value = cookie_value(headers).ok_or_else(|| {
        Denied::Unauthenticated("sign in on the admin page (POST /admin/session with an admin token)".into())
    })?;
    let session = s
        .admin
        .open(value, Utc::now())
        .ok_or_else(|| Denied::Unauthenticated("the admin session expired or is not valid; sign in again".into()))?;
    s.access.holds(&session.holder, scope)?;
    Ok(session)
}

fn info(s: &HttpState, session: &Session) -> SessionJson {
    SessionJson {
        signed_in: true,
        tokens_required: s.access.enabled(),
        name: session.holder.name.clone(),
        csrf: s.admin.csrf(session),
        expires_at: Some(session.expires),
    }
}

fn opened(s: &HttpState, holder: &Holder) -> Response {
    let expires = Utc::now() + chrono::Duration::from_std(SESSION_TTL).unwrap_or_default();
    let value = s.admin.issue(holder, expires);
    let session = s.admin.open(&value, Utc::now()).expect("a session just issued opens");
    let mut r = ok(&info(s, &session));
    set_cookie(&mut r, s, &value, i64::try_from(SESSION_TTL.as_secs()).unwrap_or(0));
    harden(&mut r);
    r
}

/// `GET /admin/session`: the open session, or `signed_in: false`. With tokens off it opens
/// one (there is nothing to sign in with).
async fn session_info(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    if !s.access.enabled() {
        return match session_of(&s, &headers, Scope::Admin) {
            Ok(session) => {
                let mut r = ok(&info(&s, &session));
                harden(&mut r);
                r
            }
            Err(_) => opened(&s, &Holder::default()),
        };
    }
    let mut r = match session_of(&s, &headers, Scope::Admin) {
        Ok(session) => ok(&info(&s, &session)),
        Err(_) => ok(&SessionJson {
            signed_in: false,
            tokens_required: true,
            name: String::new(),
            csrf: String::new(),
            expires_at: None,
        }),
    };
    harden(&mut r);
    r
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    #[serde(default)]
    token: String,
}

/// `POST /admin/session` with `{"token": "..."}`: an admin token for a session cookie. The body
/// must be JSON (a form on another site cannot send that without asking first).
async fn sign_in(State(s): State<HttpState>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim() == "application/json"));
    if !json {
        let mut r = super::error::rest(&crate::error::Reply::new(
            crate::error::Kind::InvalidArgument,
            "sign in with a JSON body: {\"token\": \"...\"} and content-type application/json",
        ));
        *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        harden(&mut r);
        return r;
    }
    let b: SignIn = or_reply!(body(b));
    if s.access.enabled() && b.token.trim().is_empty() {
        return denied(
            &Denied::Unauthenticated("give a token with the admin scope".into()),
            &headers,
            "/admin/session",
        );
    }
    match s.access.admit(&b.token, Scope::Admin) {
        Ok(holder) => {
            tracing::info!(token = %holder.name, "admin page: signed in");
            opened(&s, &holder)
        }
        Err(d) => denied(&d, &headers, "/admin/session"),
    }
}

/// `DELETE /admin/session`: forgets the cookie (with the CSRF token, so another page cannot
/// sign the user out).
async fn sign_out(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    if let Ok(session) = session_of(&s, &headers, Scope::Read) {
        let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !s.admin.csrf_ok(&session, given) {
            return denied(
                &Denied::PermissionDenied(format!("signing out needs the session's {CSRF_HEADER} header")),
                &headers,
                "/admin/session",
            );
        }
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    set_cookie(&mut r, &s, "", 0);
    harden(&mut r);
    r
}

/// The session check of `/admin/api/...`: a session whose token still has the scope the route
/// needs (as `/api/v1` asks of a bearer token), and the CSRF token on every change. The
/// session's token name is recorded as who made a change.
async fn session_check(
    State(s): State<HttpState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_string();
    let scope = match crate::auth::http_need(req.method().as_str(), &path) {
        Need::Scope(scope) => scope,
        Need::Open | Need::OpenUnless(_) | Need::Describe => Scope::Read,
    };
    let session = match session_of(&s, req.headers(), scope) {
        Ok(session) => session,
        Err(d) => return denied(&d, req.headers(), &format!("/admin{path}")),
    };
    let changes = !matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS");
    if changes {
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !s.admin.csrf_ok(&session, given) {
            return denied(
                &Denied::PermissionDenied(format!(
                    "a change from the admin page needs the session's {CSRF_HEADER} header"
                )),
                req.headers(),
                &format!("/admin{path}"),
            );
        }
    }
    if !session.holder.name.is_empty() {
        req.extensions_mut()
            .insert(crate::auth::Caller(session.holder.name.clone()));
    }
    let mut r = next.run(req).await;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> Holder {
        Holder {
            name: "ops.admin".into(),
            fingerprint: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn a_cookie_opens_until_it_expires_and_not_once_touched() {
        let sessions = Sessions::new(Some(b"k".repeat(32)));
        let now = Utc::now();
        let value = sessions.issue(&holder(), now + chrono::Duration::hours(1));
        let s = sessions.open(&value, now).expect("opens");
        assert_eq!(s.holder, holder());
        assert!(
            sessions.open(&value, now + chrono::Duration::hours(2)).is_none(),
            "expired"
        );
        // Opaque: nothing of the token shows, and two sessions of one token look unrelated.
        assert!(!value.contains(&hex::encode("ops.admin")) && !value.contains("ops.admin"));
        assert!(!value.contains("0123456789abcdef"));
        let again = sessions.issue(&holder(), now + chrono::Duration::hours(1));
        assert_ne!(value[3..40], again[3..40]);
        // Any change to the sealed bytes breaks it.
        for at in [3, value.len() / 2, value.len() - 1] {
            let mut forged = value.clone().into_bytes();
            forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
            assert!(
                sessions.open(std::str::from_utf8(&forged).unwrap(), now).is_none(),
                "changed at {at}"
            );
        }
        assert!(sessions.open(&value.replacen("v2", "v1", 1), now).is_none());
        assert!(sessions.open(&value[..value.len() - 2], now).is_none());
        assert!(sessions.open("v2.", now).is_none());
        assert!(sessions.open("v1.x.y.z", now).is_none());
        assert!(sessions.open("", now).is_none());
        // Another key (another fleet) does not accept it.
        assert!(Sessions::new(Some(b"j".repeat(32))).open(&value, now).is_none());
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let sessions = Sessions::new(None);
        let now = Utc::now();
        let a = sessions
            .open(&sessions.issue(&holder(), now + chrono::Duration::hours(1)), now)
            .unwrap();
        let b = sessions
            .open(&sessions.issue(&holder(), now + chrono::Duration::hours(1)), now)
            .unwrap();
        assert!(sessions.csrf_ok(&a, &sessions.csrf(&a)));
        assert!(!sessions.csrf_ok(&a, &sessions.csrf(&b)), "each session has its own");
        assert!(!sessions.csrf_ok(&a, ""));
        assert!(!sessions.csrf_ok(&a, "not hex"));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; modeld_admin=v1.x; b=2"));
        assert_eq!(cookie_value(&h), Some("v1.x"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("modeld_admin_other=1"));
        assert_eq!(cookie_value(&h), None);
    }
}
