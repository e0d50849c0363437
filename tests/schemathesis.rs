//! The REST API against its own OpenAPI document: schemathesis (PyPI, installed with the other
//! client tools) generates requests from `/api/v1/openapi.json` — valid ones, invalid ones and
//! stateful sequences that follow the document's links — and checks every answer with every
//! check it has (`--checks all`): no 5xx, only documented status codes and content types,
//! answers that match their schemas, invalid requests refused and valid ones accepted. Once
//! with tokens off, once with tokens on and an admin token (and a signing key, so signed
//! downloads are answered too). Zero failures. What `tests/schemathesis/schemathesis.toml`
//! sets, and why, is written there; docs/http.md gives the command.

mod common;

use common::*;
use modeld::auth::{Scope, Tokens};

/// Runs schemathesis against `server`'s document, with `headers`; fails with its report.
async fn schemathesis(server: &TestServer, headers: &[String]) {
    let config = bundled_models().join("../tests/schemathesis/schemathesis.toml");
    // schemathesis's own command line, through run.py (it explains why).
    let run = bundled_models().join("../tests/schemathesis/run.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&run).arg("--config-file").arg(&config).args([
        "run",
        &server.http_url("/api/v1/openapi.json"),
        "--checks",
        "all",
        "--max-time",
        "60",
        "--workers",
        "2",
        // One seed: CI is repeatable; run it without --seed to explore (docs/http.md).
        "--seed",
        "20261204",
        "--no-color",
    ]);
    for h in headers {
        cmd.args(["--header", h]);
    }
    for (k, v) in client_env() {
        cmd.env(k, v);
    }
    // Its cache (earlier failures it would replay) goes to a directory of this run's own.
    let scratch = tempfile::tempdir().unwrap();
    cmd.current_dir(scratch.path());
    let out = cmd.kill_on_drop(true).output().await.expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It did test every operation of the document.
    let after = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().rsplit('/').next().unwrap_or_default().to_string())
    };
    let total = after("Selected:").expect("a summary");
    assert_eq!(after("Tested:"), Some(total.clone()), "{report}");
    assert!(total.parse::<u32>().unwrap() >= 26, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_matches_its_openapi_document_with_tokens_off() {
    let server = TestServer::start(Backend::Sqlite).await;
    schemathesis(&server, &[]).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_matches_its_openapi_document_with_an_admin_token() {
    let mut tokens = Tokens::default();
    let admin = tokens.create("ops", &[Scope::Admin], None).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap().into_temp_path().keep().unwrap();
    tokens.write(&file).unwrap();
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "schemathesis-signing-key-of-32-bytes-or-more\n").unwrap();
    let key = key.into_temp_path().keep().unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.tokens_file = Some(file);
        c.signing_key_file = Some(key);
    })
    .await;
    schemathesis(&server, &[format!("Authorization: Bearer {admin}")]).await;
    server.stop().await.unwrap();
}
