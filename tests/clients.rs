//! Real, unmodified clients against a real modeld: tritonclient (Python), perf_analyzer and
//! grpcurl. `tests/clients/setup.sh` installs them under target/clients on first use (pinned
//! versions, no root needed).

mod common;

use common::*;

async fn run(program: &str, args: &[&str], stdin_file: Option<&std::path::Path>) -> (bool, String, String) {
    let env = client_env();
    // The child's PATH does not decide which program is spawned: resolve it through that PATH.
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let program = path
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed (tests/clients/setup.sh)"));
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(args).envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(f) = stdin_file {
        cmd.stdin(std::fs::File::open(f).unwrap());
    }
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} cannot run: {e}", program.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs one of tests/clients' tritonclient scripts against `addr`; they assert what Triton
/// would answer and end with "all checks passed".
async fn tritonclient_checks(script: &str, addr: &str) {
    let script = bundled_models().join("../tests/clients").join(script);
    let models = bundled_models();
    let (ok, out, err) = run(
        "python",
        &[script.to_str().unwrap(), addr, models.to_str().unwrap()],
        None,
    )
    .await;
    assert!(ok, "{} failed:\n{out}\n{err}", script.display());
    assert!(out.contains("all checks passed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_works_unchanged() {
    let server = TestServer::start(Backend::Sqlite).await;
    tritonclient_checks("tritonclient_check.py", &server.addr.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_works_unchanged() {
    let server = TestServer::start(Backend::Sqlite).await;
    tritonclient_checks("tritonclient_http_check.py", &server.http_addr.to_string()).await;
}

/// TLS and a token, as Triton's clients send them: tritonclient with `ssl=True` and the
/// token in `headers`, perf_analyzer with `--ssl-grpc-*` and `-H`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_and_perf_analyzer_work_over_tls_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::pki::Ca::new("modeld test CA");
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let p = |name: &str, text: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        f
    };
    let (cert, key, ca_file) = (p("server.pem", &cert), p("server.key", &key), p("ca.pem", &ca.pem));
    let mut tokens = modeld::auth::Tokens::default();
    // perf_analyzer reads metadata, config and statistics too: predict and read.
    let token = tokens
        .create(
            "loadtest",
            &[modeld::auth::Scope::Predict, modeld::auth::Scope::Read],
            None,
        )
        .unwrap();
    let tokens_file = dir.path().join("tokens.jsonl");
    tokens.write(&tokens_file).unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        c.tokens_file = Some(tokens_file);
    })
    .await;
    common::pki::wait_serving_tls(server.addr, &ca.pem).await;
    let addr = format!("127.0.0.1:{}", server.addr.port());
    let script = bundled_models().join("../tests/clients/tritonclient_tls_check.py");
    let (ok, out, err) = run(
        "python",
        &[script.to_str().unwrap(), &addr, ca_file.to_str().unwrap(), &token],
        None,
    )
    .await;
    assert!(ok && out.contains("all checks passed"), "{out}\n{err}");
    let header = format!("authorization:Bearer {token}");
    let ca = ca_file.to_str().unwrap();
    let extra = [
        "--ssl-grpc-use-ssl",
        "--ssl-grpc-root-certifications-file",
        ca,
        "-H",
        &header,
    ];
    let (ok, all) = perf_analyzer("grpc", &addr, &extra).await;
    assert_clean_perf_run("over TLS with a token", ok, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_analyzer_runs_clean_over_http() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (ok, all) = perf_analyzer("http", &server.http_addr.to_string(), &[]).await;
    assert_clean_perf_run("-i http", ok, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_analyzer_runs_clean_with_random_inputs_and_streaming() {
    let server = TestServer::start(Backend::Sqlite).await;
    let addr = server.addr.to_string();
    for extra in [&[][..], &["--streaming"][..]] {
        let (ok, all) = perf_analyzer("grpc", &addr, extra).await;
        assert_clean_perf_run(&format!("{extra:?}"), ok, &all);
    }
    // It really went through modeld's request path (random inputs include NaN: served, not refused).
    let status = server.status().await;
    assert!(status.serving.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_calls_both_apis_by_reflection() {
    let server = TestServer::start(Backend::Sqlite).await;
    let addr = server.addr.to_string();
    let (ok, out, err) = run("grpcurl", &["-plaintext", &addr, "list"], None).await;
    assert!(ok, "{err}");
    for svc in [
        "modeld.v1.Inference",
        "modeld.v1.ModelRegistry",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    ] {
        assert!(out.contains(svc), "{svc} missing from:\n{out}");
    }
    let examples = bundled_models().join("examples");
    let (ok, out, err) = run(
        "grpcurl",
        &["-plaintext", "-d", "@", &addr, "modeld.v1.Inference/Predict"],
        Some(&examples.join("predict_request.json")),
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["modelName"], "digits_v2");
    assert_eq!(v["outputs"][1]["int64Data"][0], "2", "the example image is a 2: {out}");
    let (ok, out, err) = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            "@",
            &addr,
            "inference.GRPCInferenceService/ModelInfer",
        ],
        Some(&examples.join("model_infer_request.json")),
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["modelName"], "digits_v2");
    // As Triton: outputs as raw little-endian bytes (base64 in grpcurl's JSON); the label
    // int64 2 is 02 00 00 00 00 00 00 00.
    assert!(v["outputs"][1].get("contents").is_none(), "{out}");
    assert_eq!(v["rawOutputContents"][1], "AgAAAAAAAAA=", "{out}");
}

/// perf_analyzer against the active model over `protocol` at `addr`, concurrency 2, as a smoke
/// test (any stability, a few windows at most), with `extra` arguments.
async fn perf_analyzer(protocol: &str, addr: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "-m",
        "active",
        "-i",
        protocol,
        "-u",
        addr,
        "--concurrency-range",
        "2",
        "--measurement-interval",
        "1000",
        "-s",
        "1000",
        "--max-trials",
        "3",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = run("perf_analyzer", &args, None).await;
    (ok, format!("{out}\n{err}"))
}

/// A perf_analyzer run that measured, reported no error, and found modeld's server-side
/// statistics (ModelStatistics) counting its requests.
fn assert_clean_perf_run(what: &str, ok: bool, all: &str) {
    assert!(ok, "perf_analyzer {what} failed:\n{all}");
    assert!(all.contains("Concurrency: 2, throughput:"), "no measurement:\n{all}");
    for bad in ["error", "Error", "Failed", "failed"] {
        assert!(!all.contains(bad), "perf_analyzer {what} reported {bad:?}:\n{all}");
    }
    let served: u64 = all
        .lines()
        .skip_while(|l| l.trim() != "Server:")
        .find_map(|l| l.trim().strip_prefix("Successful request count: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no server-side statistics in:\n{all}"));
    assert!(
        served > 0,
        "perf_analyzer saw no requests in modeld's statistics:\n{all}"
    );
}
