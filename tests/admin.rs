//! The admin page end to end: its assets from the binary, signing in with a token for an
//! HttpOnly, SameSite=Strict session cookie, CSRF on every change, the token's name recorded
//! as who did it, a revoked token ending its sessions, the live event stream through the
//! cookie, tokens off; and the click path in headless Chromium (Debian's `chromium` driven by
//! playwright-core) against the real binary, with screenshots.

mod common;

use std::time::Duration;

use common::*;
use modeld::auth::{Scope, Tokens};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Guarded {
    server: TestServer,
    admin: String,
    read: String,
    tokens: Tokens,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn guarded() -> Guarded {
    let mut tokens = Tokens::default();
    let admin = tokens.create("ops", &[Scope::Admin], None).unwrap();
    let read = tokens.create("dashboard", &[Scope::Read], None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.jsonl");
    tokens.write(&file).unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |c| c.tokens_file = Some(file.clone())).await;
    server
        .wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    Guarded {
        server,
        admin,
        read,
        tokens,
        file,
        _dir: dir,
    }
}

/// A signed-in session: the cookie to send back and the CSRF token.
struct Session {
    cookie: String,
    csrf: String,
    set_cookie: String,
    body: Value,
}

async fn sign_in(server: &TestServer, token: &str) -> Result<Session, (StatusCode, Value)> {
    let r = reqwest::Client::new()
        .post(server.http_url("/admin/session"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let set_cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = r.json().await.unwrap();
    if status != StatusCode::OK {
        return Err((status, body));
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    Ok(Session {
        cookie,
        csrf: body["csrf"].as_str().unwrap().to_string(),
        set_cookie,
        body,
    })
}

/// A request to the admin API (`/admin/api/v1` + `path`) with the session's cookie and, when
/// `csrf` is given, that CSRF token.
async fn admin_call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new().request(method, server.http_url(&format!("/admin/api/v1{path}")));
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    if let Some(t) = csrf {
        r = r.header("x-csrf-token", t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}")),
    )
}

fn message(v: &Value) -> &str {
    v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("an error: {v}"))
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_with_a_strict_policy() {
    let g = guarded().await;
    let client = reqwest::Client::new();
    for (path, kind, holds) in [
        ("/admin", "text/html", "admin.js"),
        ("/admin/", "text/html", "signin-form"),
        ("/admin/assets/admin.js", "text/javascript", "EventSource"),
        ("/admin/assets/admin.css", "text/css", "dialog"),
    ] {
        // Open without a token: the page itself holds no data.
        let r = client.get(g.server.http_url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers().clone();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind), "{path}: {h:?}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(r.text().await.unwrap().contains(holds), "{path} holds {holds}");
    }
    let r = client
        .get(g.server.http_url("/admin/assets/..%2F..%2Fetc%2Fpasswd"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = client
        .get(g.server.http_url("/admin/assets/secret.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn signing_in_exchanges_an_admin_token_for_a_strict_httponly_cookie() {
    let g = guarded().await;
    let server = &g.server;
    // Before signing in: the page learns it must, and the admin API refuses.
    let r: Value = reqwest::get(server.http_url("/admin/session"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["signed_in"], false);
    assert_eq!(r["tokens_required"], true);
    let (status, body) = admin_call(server, reqwest::Method::GET, "/models", None, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(message(&body).contains("sign in"), "{body}");

    // Bad sign-ins: each refused with its status, no cookie, no token echoed.
    let not_json = reqwest::Client::new()
        .post(server.http_url("/admin/session"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", g.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        not_json.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "a form post cannot sign in"
    );
    assert!(not_json.headers().get("set-cookie").is_none());
    for (token, status, says) in [
        ("", StatusCode::UNAUTHORIZED, "give a token"),
        ("mdl_not_a_token", StatusCode::UNAUTHORIZED, "token"),
        (g.read.as_str(), StatusCode::FORBIDDEN, "admin"),
    ] {
        let Err((got, body)) = sign_in(server, token).await else {
            panic!("{token:?} signed in");
        };
        assert_eq!(got, status, "{token:?}: {body}");
        assert!(message(&body).contains(says), "{says:?} in {body}");
        assert!(!body.to_string().contains(&g.read), "no token in an error");
    }
    let r = reqwest::Client::new()
        .post(server.http_url("/admin/session"))
        .json(&json!({"token": g.admin, "remember": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "unknown fields are refused");

    // The admin token: a cookie only the server reads, sent only to /admin, only from this site.
    let s = sign_in(server, &g.admin).await.unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800"] {
        assert!(s.set_cookie.contains(flag), "{flag} in {}", s.set_cookie);
    }
    assert!(
        !s.set_cookie.contains("Secure"),
        "plain HTTP: not Secure (tests/tls.rs checks TLS)"
    );
    assert!(!s.set_cookie.contains(&g.admin), "the cookie is not the token");
    assert!(
        !s.body.to_string().contains(&g.admin),
        "the answer does not carry the token"
    );
    assert_eq!(s.body["name"], "ops");
    assert_eq!(s.body["signed_in"], true);
    let r: Value = reqwest::Client::new()
        .get(server.http_url("/admin/session"))
        .header("cookie", format!("other=1; {}", s.cookie))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (r["signed_in"].as_bool(), r["csrf"].as_str()),
        (Some(true), Some(s.csrf.as_str()))
    );

    // Reads with the cookie; the events stream too (what EventSource needs).
    let (status, list) = admin_call(server, reqwest::Method::GET, "/models", Some(&s.cookie), None, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 3);
    let mut events = reqwest::Client::new()
        .get(server.http_url("/admin/api/v1/events"))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert_eq!(events.headers()["content-type"], "text/event-stream");

    // A change without the CSRF token, or with another session's, is refused and changes nothing.
    let other = sign_in(server, &g.admin).await.unwrap();
    assert_ne!(other.csrf, s.csrf, "each session has its own CSRF token");
    let activate = || Some(json!({"reason": "from the page", "activated_by": "admin page"}));
    for csrf in [None, Some("00"), Some(other.csrf.as_str())] {
        let (status, body) = admin_call(
            server,
            reqwest::Method::POST,
            "/models/1/activate",
            Some(&s.cookie),
            csrf,
            activate(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{csrf:?}: {body}");
        assert!(message(&body).contains("x-csrf-token"), "{body}");
    }
    let (_, active) = admin_call(
        server,
        reqwest::Method::GET,
        "/models/active",
        Some(&s.cookie),
        None,
        None,
    )
    .await;
    assert_eq!(active["model_name"], "digits_v2", "nothing changed: {active}");

    // With it: done, recorded as the token's name, and the event reaches the stream.
    let (status, done) = admin_call(
        server,
        reqwest::Method::POST,
        "/models/1/activate",
        Some(&s.cookie),
        Some(&s.csrf),
        activate(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let (_, history) = admin_call(
        server,
        reqwest::Method::GET,
        "/models/1/activations",
        Some(&s.cookie),
        None,
        None,
    )
    .await;
    assert_eq!(history["activations"][0]["activated_by"], "ops", "{history}");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: activated") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("the activation reaches the stream within 10 s")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.contains("\"model_name\":\"digits_v1\""), "{seen}");

    // A server error through the page is the server's own words and status.
    let (status, body) = admin_call(
        server,
        reqwest::Method::DELETE,
        "/models/1",
        Some(&s.cookie),
        Some(&s.csrf),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let direct = reqwest::Client::new()
        .delete(server.http_url("/api/v1/models/1"))
        .bearer_auth(&g.admin)
        .send()
        .await
        .unwrap();
    let direct: Value = direct.json().await.unwrap();
    assert_eq!(body, direct, "the same error as over /api/v1");

    // The cookie is opaque: nothing in it names the token.
    assert!(
        !s.cookie.contains(&hex::encode("ops")) && !s.cookie.contains("=ops"),
        "{}",
        s.cookie
    );
    // A tampered cookie is no session.
    let mut tampered = s.cookie.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (status, _) = admin_call(server, reqwest::Method::GET, "/models", Some(&tampered), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Signing out needs the CSRF token, and clears the cookie.
    let out = reqwest::Client::new()
        .delete(server.http_url("/admin/session"))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::FORBIDDEN);
    let out = reqwest::Client::new()
        .delete(server.http_url("/admin/session"))
        .header("cookie", &s.cookie)
        .header("x-csrf-token", &s.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("modeld_admin=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[tokio::test]
async fn revoking_the_token_ends_its_sessions_at_once() {
    let mut g = guarded().await;
    let s = sign_in(&g.server, &g.admin).await.unwrap();
    let (status, _) = admin_call(&g.server, reqwest::Method::GET, "/models", Some(&s.cookie), None, None).await;
    assert_eq!(status, StatusCode::OK);
    // An event stream open when the token goes.
    let events = reqwest::Client::new()
        .get(g.server.http_url("/admin/api/v1/events"))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert!(g.tokens.revoke("ops"));
    // The same name again is another token: the old sessions do not carry over.
    let again = g.tokens.create("ops", &[Scope::Admin], None).unwrap();
    g.tokens.write(&g.file).unwrap();
    let body = eventually(
        "the session ends with its token",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let (status, body) =
                admin_call(&g.server, reqwest::Method::GET, "/models", Some(&s.cookie), None, None).await;
            if status == StatusCode::UNAUTHORIZED {
                return Ok(body);
            }
            assert_eq!(status, StatusCode::OK, "{body}");
            Err(body)
        },
    )
    .await;
    assert!(message(&body).contains("revoked or replaced"), "{body}");
    let r = reqwest::Client::new()
        .get(g.server.http_url("/admin/api/v1/events"))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no new event stream either");
    let (status, _) = admin_call(
        &g.server,
        reqwest::Method::POST,
        "/models/1/activate",
        Some(&s.cookie),
        Some(&s.csrf),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The new token signs in.
    let fresh = sign_in(&g.server, &again).await.unwrap();
    let (status, _) = admin_call(
        &g.server,
        reqwest::Method::GET,
        "/models",
        Some(&fresh.cookie),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    drop(events);
}

#[tokio::test]
async fn with_tokens_off_the_page_opens_without_signing_in_but_still_wants_csrf() {
    let server = TestServer::start(Backend::Sqlite).await;
    let r = reqwest::get(server.http_url("/admin/session")).await.unwrap();
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["signed_in"], true);
    assert_eq!(body["tokens_required"], false);
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = body["csrf"].as_str().unwrap().to_string();
    let canary = || Some(json!({"model_name": "digits_v1", "percentage": 10}));
    let (status, _) = admin_call(
        &server,
        reqwest::Method::PUT,
        "/rollout/canary",
        Some(&cookie),
        None,
        canary(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "another site's page cannot change things"
    );
    let (status, body) = admin_call(
        &server,
        reqwest::Method::PUT,
        "/rollout/canary",
        Some(&cookie),
        Some(&csrf),
        canary(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["canary"]["rollout_percentage"], 10);
    // Without any cookie the admin API is still closed: the page gets one first.
    let (status, _) = admin_call(&server, reqwest::Method::GET, "/models", None, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// What the browser test needs, installed by tests/admin/setup.sh; `None` (with how to
/// install it) when Chromium is not on this machine. `.ci/run` installs it and sets
/// MODELD_REQUIRE_BROWSER=1, so there the test cannot be skipped.
fn browser_env() -> Option<Vec<(String, String)>> {
    let setup = bundled_models().join("../tests/admin/setup.sh");
    let out = std::process::Command::new("bash")
        .arg(&setup)
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        assert!(
            std::env::var("MODELD_REQUIRE_BROWSER").is_err(),
            "MODELD_REQUIRE_BROWSER is set but: {stderr}"
        );
        eprintln!("SKIPPED the admin page's browser test: {stderr}then run: cargo test --test admin");
        return None;
    }
    assert!(out.status.success(), "browser setup failed:\n{stderr}");
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect(),
    )
}

/// The click path in headless Chromium against the real binary (tests/admin/click_path.js
/// says each step): sign in, the recent events and each model's state, activate another
/// version, downloads, register, sort, search and paging, canary, an event made by the CLI,
/// roll back; screenshots in target/tmp/admin-screenshots (and, with
/// MODELD_UPDATE_DOCS=1, the last one as docs/admin.png).
#[tokio::test]
async fn the_click_path_in_headless_chromium() {
    let Some(env) = browser_env() else { return };
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let mut tokens = Tokens::default();
    let admin = tokens.create("ops", &[Scope::Admin], None).unwrap();
    let tokens_file = root.path().join("tokens.jsonl");
    tokens.write(&tokens_file).unwrap();
    // A signing key, for the signed URL the page asks for.
    let keys = tempfile::tempdir().unwrap();
    let signing = keys.path().join("signing.key");
    std::fs::write(&signing, "k1:0123456789abcdef0123456789abcdef\n").unwrap();
    let server = LoggedServer::start(
        &db.url,
        root.path(),
        &[
            "--tokens-file",
            tokens_file.to_str().unwrap(),
            "--signing-key-file",
            signing.to_str().unwrap(),
            "--registry-poll-ms",
            "50",
        ],
        &[],
    )
    .await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = bundled_models().join("../tests/admin/click_path.js");
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(&script)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ADMIN_BASE", server.http_url(""))
            .env("ADMIN_TOKEN", &admin)
            .env("MODELD_BIN", MODELD_BIN)
            .env("MODELD_DATABASE_URL", &db.url)
            .env("MODELD_MODEL_ROOT", root.path())
            .env("SHOTS_DIR", &shots)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the click path finishes within 3 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "click path failed (screenshots in {}):\n{stdout}\n{stderr}",
        shots.display()
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let taken = summary["screenshots"].as_array().unwrap();
    assert_eq!(taken.len(), 8, "{summary}");
    for f in taken {
        let bytes = std::fs::read(f.as_str().unwrap()).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{f}");
    }
    if std::env::var("MODELD_UPDATE_DOCS").is_ok() {
        std::fs::copy(
            shots.join("07-cli-event.png"),
            bundled_models().join("../docs/admin.png"),
        )
        .unwrap();
    }

    // What the page did is in the registry, under the token's name; the CLI's change under its own.
    let log = server.stop().await;
    assert!(!log.iter().any(|l| l.contains(&admin)), "no token in the server's log");
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let activations: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT model_name, activated_by, is_rollback FROM model_activations ORDER BY activation_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let tail: Vec<_> = activations.iter().rev().take(2).rev().cloned().collect();
    assert_eq!(
        tail,
        vec![
            ("digits_v1".to_string(), "ops".to_string(), false),
            ("digits_v2".to_string(), "ops".to_string(), true)
        ],
        "{activations:?}"
    );
    let changes: Vec<(String, String)> =
        sqlx::query_as("SELECT source, detail FROM model_events WHERE kind = 'rollout_changed' ORDER BY event_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(changes.iter().any(|(source, _)| source == "cli"), "{changes:?}");
    pool.close().await;
}
