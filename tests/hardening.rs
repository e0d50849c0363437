//! What a hostile client or an unlucky operator could do to a server (issue 25), each closed:
//! cross-site pages and rebound DNS names, request bytes held in flight, trickling bodies,
//! silent connections by the hundred, NUL bytes and over-long values, huge echoed names.
//! Where the defect is about the process (memory, descriptors) the test runs the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use modeld::api::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn active(server: &TestServer) -> String {
    server
        .registry()
        .await
        .get_active_model(pb::GetActiveModelRequest {})
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap()
        .model_name
}

async fn model_id(server: &TestServer, name: &str) -> i64 {
    let listed = server.models_json().await;
    listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_name"] == name)
        .and_then(|m| m["model_id"].as_i64())
        .unwrap_or_else(|| panic!("{name} in {listed}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_pages_and_rebound_names_cannot_change_the_registry() {
    let server = TestServer::start(Backend::Sqlite).await;
    let c = client();
    let v1 = model_id(&server, "digits_v1").await;
    let activate = server.http_url(&format!("/api/v1/models/{v1}/activate"));
    let evil = "https://evil.example";

    // A page on another site sends a simple request (no preflight): refused, nothing changes.
    let r = c
        .post(&activate)
        .header("origin", evil)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("--allowed-origins"),
        "{body}"
    );
    for (path, body) in [
        (
            "/api/v1/models",
            json!({"model_name": "planted", "file_path": "digits_v1.onnx", "activate": true}),
        ),
        ("/api/v1/models/rollback", json!({"reason": "x"})),
        ("/v2/repository/models/digits_v1/load", json!({})),
        ("/v2/models/active/infer", json!({"inputs": []})),
    ] {
        let r = c
            .post(server.http_url(path))
            .header("origin", evil)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // A browser that sends no Origin still sends a form type: a change is JSON only.
    let r = c
        .post(&activate)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("reason=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(active(&server).await, "digits_v2", "nothing was activated");
    let listed = server.models_json().await;
    assert!(!listed.to_string().contains("planted"), "nothing was registered");

    // A page whose name was rebound to this address reads nothing.
    for path in ["/api/v1/models", "/v2/models/active", "/metrics"] {
        let r = c
            .get(server.http_url(path))
            .header("host", format!("attacker.example:{}", server.http_addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(r.text().await.unwrap().contains("--allowed-hosts"));
    }

    // The server's own pages (the admin page) and clients that are not browsers go through.
    let own = format!("http://{}", server.http_addr);
    let r = c
        .post(&activate)
        .header("origin", &own)
        .json(&json!({"reason": "same origin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(active(&server).await, "digits_v1");
    let r = c
        .get(server.http_url("/api/v1/models"))
        .header("host", format!("localhost:{}", server.http_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // What devices fetch from anywhere keeps its open CORS.
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let r = c
            .request(method.clone(), server.http_url("/api/v1/model-config"))
            .header("origin", evil)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{method}");
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
    }
    server.stop().await.unwrap();

    // An allowed origin, a name allowed behind a proxy.
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.net.allowed_origins = vec!["https://app.example".into()];
        c.net.allowed_hosts = vec!["models.example".into()];
    })
    .await;
    server
        .wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let v1 = model_id(&server, "digits_v1").await;
    let r = c
        .post(server.http_url(&format!("/api/v1/models/{v1}/activate")))
        .header("origin", "https://app.example")
        .header("host", "models.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    server.stop().await.unwrap();
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Sockets a process holds open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
        .count()
}

/// The gRPC status of an HTTP/2 response: from its headers (trailers-only) or its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> Option<i32> {
    let r = response.await.ok()?;
    let code = |h: &http::HeaderMap| h.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(c) = code(r.headers()) {
        return Some(c);
    }
    let mut body = r.into_body();
    while body.data().await.is_some_and(|d| d.is_ok()) {}
    body.trailers().await.ok().flatten().as_ref().and_then(code)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_hold_more_request_bytes_than_the_budget() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let server = LoggedServer::start(
        &db.url,
        root.path(),
        &[
            "--request-bytes-in-flight",
            "48MiB",
            "--max-message-bytes",
            "33554432",
            "--max-streams-per-connection",
            "64",
        ],
        &[],
    )
    .await;
    let pid = server.pid();
    let before = rss(pid);

    // One HTTP/2 connection, 40 Predict streams, each declaring a 30 MiB message and sending
    // 20 MiB of it, held open. Before the budget this took 800 MB of the server's memory.
    let tcp = tokio::net::TcpStream::connect(&server.grpc).await.unwrap();
    let (mut h2, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 30)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..40 {
        let request = http::Request::post(format!("http://{}/modeld.v1.Inference/Predict", server.grpc))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        h2 = h2.ready().await.unwrap();
        let (response, mut send) = h2.send_request(request, false).unwrap();
        let mut head = vec![0u8];
        head.extend_from_slice(&(30u32 << 20).to_be_bytes());
        send.send_data(head.into(), false).unwrap();
        for _ in 0..20 {
            send.send_data(chunk.clone(), false).unwrap();
        }
        held.push(send);
        answers.push(tokio::spawn(grpc_status(response)));
    }
    // Most streams are refused with RESOURCE_EXHAUSTED as soon as their bytes do not fit.
    eventually(
        "35 of 40 streams are answered",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            match answers.iter().filter(|a| a.is_finished()).count() {
                n if n >= 35 => Ok(()),
                n => Err(format!("only {n} answered")),
            }
        },
    )
    .await;
    let grown = rss(pid).saturating_sub(before);
    assert!(
        grown < 200 << 20,
        "40 streams of 20 MiB grew the server by {} MiB",
        grown >> 20
    );
    let mut exhausted = 0;
    for a in answers {
        if a.is_finished() {
            if a.await.unwrap() == Some(tonic::Code::ResourceExhausted as i32) {
                exhausted += 1;
            }
        } else {
            a.abort();
        }
    }
    assert!(exhausted >= 35, "{exhausted} streams got RESOURCE_EXHAUSTED");
    // The client goes away: its charge is given back, and others are served.
    drop(held);
    drop(h2);
    let mut infer = pb::inference_client::InferenceClient::new(server.channel().await);
    infer.predict(digits_request("", &eval_rows(1))).await.unwrap();

    // HTTP/1: bodies are charged by their declared length before anything is read. Whether a
    // 20 MiB body is refused at once (503), or taken and waited for:
    let send = async |http: &str| {
        let mut tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        let head = format!(
            "POST /v2/models/active/infer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            20 << 20
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // A refused body is answered (and the connection closed) before it is all sent.
        let _ = tcp.write_all(&vec![b' '; 4 << 20]).await;
        let mut first = [0u8; 12];
        let refused = match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {
                assert_eq!(&first[..n.min(12)], &b"HTTP/1.1 503"[..n.min(12)]);
                true
            }
            _ => false,
        };
        (tcp, refused)
    };
    // The streams' charges are given back once their client is gone.
    until(
        "the gone client's bytes are given back",
        Duration::from_secs(10),
        || async { !send(&server.http).await.1 },
    )
    .await;
    let mut conns = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let (tcp, r) = send(&server.http).await;
        refused += usize::from(r);
        conns.push(tcp);
    }
    assert_eq!(
        refused, 8,
        "two 20 MiB bodies fit in 48 MiB, the other eight are refused at once"
    );
    let grown = rss(pid).saturating_sub(before);
    assert!(grown < 200 << 20, "grew by {} MiB", grown >> 20);
    drop(conns);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_trickles_in_is_cut_off() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.net.body_timeout_secs = 1).await;
    server
        .wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    // HTTP: 10 bytes of a 1000-byte body, then nothing.
    let mut tcp = tokio::net::TcpStream::connect(server.http_addr).await.unwrap();
    tcp.write_all(
        b"POST /v2/models/active/infer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1000\r\n\r\n{\"inputs\":",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // gRPC: a message declared, a few bytes of it sent.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/modeld.v1.Inference/Predict", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = h2.ready().await.unwrap().send_request(request, false).unwrap();
    send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 1, 0, 1, 2]), false)
        .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), grpc_status(response))
        .await
        .expect("answered");
    assert_eq!(code, Some(tonic::Code::DeadlineExceeded as i32));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_are_closed_and_cannot_take_every_descriptor() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let server = LoggedServer::start(
        &db.url,
        root.path(),
        &["--max-connections", "32", "--header-timeout-secs", "1"],
        &[],
    )
    .await;
    let pid = server.pid();
    let baseline = sockets(pid);
    // 150 silent connections to each port.
    let mut silent = Vec::new();
    for addr in [&server.http, &server.grpc] {
        for _ in 0..150 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
    }
    let held = sockets(pid);
    assert!(
        held <= baseline + 2 * 32,
        "the server holds {held} sockets ({baseline} before): the cap is 32 a port"
    );
    // The admitted ones are closed after the header timeout, so others get their turn, and a
    // real client is served meanwhile.
    let started = Instant::now();
    let mut infer = pb::inference_client::InferenceClient::new(server.channel().await);
    infer.predict(digits_request("", &eval_rows(1))).await.unwrap();
    let r = client().get(server.http_url("/v2/health/ready")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(30));
    let mut closed = 0;
    for s in &mut silent[..32] {
        let mut b = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 32, "the first silent connections were closed");
    assert!(sockets(pid) <= baseline + 2 * 32);
    drop(silent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_bytes_and_over_long_values_are_refused_by_field_on_both_databases() {
    for backend in BACKENDS {
        let server = TestServer::start(backend).await;
        let c = client();
        let r = c.get(server.http_url("/v2/models/a%00b")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{backend:?}");
        let mut infer = server.inference().await;
        let e = infer.predict(digits_request("a\0b", &eval_rows(1))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{backend:?} {e:?}");
        assert!(e.message().contains("NUL"), "{}", e.message());
        let (status, body) = {
            let r = c
                .post(server.http_url("/api/v1/models"))
                .json(&json!({"model_name": "m", "file_path": "digits_v1.onnx", "description": "a\u{0}b"}))
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        };
        assert_eq!(status, StatusCode::BAD_REQUEST, "{backend:?} {body}");
        assert!(body.to_string().contains("description"), "{body}");
        let v1 = model_id(&server, "digits_v1").await;
        for (field, value) in [
            ("version", Value::from("1".repeat(51))),
            ("description", Value::from("d".repeat(10_001))),
            ("model_type", Value::from("t\u{0}")),
        ] {
            let r = c
                .put(server.http_url(&format!("/api/v1/models/{v1}")))
                .json(&json!({ field: value }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{backend:?} {field}");
            assert!(r.text().await.unwrap().contains(field));
        }
        let e = server
            .registry()
            .await
            .activate_model(pb::ActivateModelRequest {
                reason: "why\0".into(),
                ..activate_req("digits_v1")
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{backend:?}");
        assert_eq!(active(&server).await, "digits_v2");
        // A name that reads as a registered one is refused.
        let e = server
            .registry()
            .await
            .register_model(pb::RegisterModelRequest {
                name: "ｄｉｇｉｔｓ_v2".into(),
                file_path: "digits_v1.onnx".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{backend:?} {e:?}");
        assert!(
            e.message().contains("looks the same as the registered \"digits_v2\""),
            "{}",
            e.message()
        );
        // A huge name is echoed cut short, so the client sees NOT_FOUND.
        let e = infer
            .predict(digits_request(&"x".repeat(10_000), &eval_rows(1)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{backend:?}");
        assert!(e.message().len() < 4096, "{} bytes", e.message().len());
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_fill_the_log_with_errors() {
    let db = TestDb::new(Backend::Postgres).await;
    let root = model_root();
    let server = LoggedServer::start(&db.url, root.path(), &[], &[]).await;
    let c = client();
    for _ in 0..100 {
        let r = c.get(server.http_url("/v2/models/a%00b")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    let lines = server.stop().await;
    let errors: Vec<_> = lines.iter().filter(|l| l.contains("\"level\":\"ERROR\"")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let warnings = lines.iter().filter(|l| l.contains("\"level\":\"WARN\"")).count();
    assert!(warnings < 20, "{warnings} warnings for 100 bad requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_file_removed_under_the_server_refuses_changes_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("modeld.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let root = model_root();
    let server = LoggedServer::start(&url, root.path(), &["--registry-poll-ms", "50"], &[]).await;
    let c = client();
    let ok = c.get(server.http_url("/api/v1/models")).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let mut events = c.get(server.http_url("/api/v1/events")).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    // The operator removes the database (and its WAL files) while the server runs.
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("modeld.db") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    // A follower of the event stream hears why, as a REST error.
    let mut seen = String::new();
    let error = loop {
        if let Some(data) = seen
            .split("\n\n")
            .find(|e| e.contains("event: error"))
            .and_then(|e| e.lines().find_map(|l| l.strip_prefix("data:")))
        {
            break serde_json::from_str::<Value>(data.trim()).unwrap();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk())
            .await
            .expect("an error event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    };
    assert_eq!(error["error"]["code"], "UNAVAILABLE", "{error}");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("removed"),
        "{error}"
    );
    // Every change is refused, never acknowledged into the removed file; reads say why too.
    let r = c
        .post(server.http_url("/api/v1/models"))
        .json(&json!({"model_name": "lost", "file_path": "digits_v1.onnx"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = r.text().await.unwrap();
    assert!(body.contains("was removed"), "{body}");
    assert!(
        !body.contains(&dir.path().display().to_string()),
        "no paths to clients: {body}"
    );
    let e = pb::model_registry_client::ModelRegistryClient::new(server.channel().await)
        .activate_model(activate_req("digits_v1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    for _ in 0..10 {
        let r = c.get(server.http_url("/api/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // The status says so, with the reason; the model in memory keeps serving.
    let status = eventually(
        "the registry reported unreachable",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let s = get_json(server.http_url("/api/v1/status")).await;
            if s["registry_reachable"] == false {
                Ok(s)
            } else {
                Err(s)
            }
        },
    )
    .await;
    assert!(status.to_string().contains("was removed"), "{status}");
    let mut infer = pb::inference_client::InferenceClient::new(server.channel().await);
    infer.predict(digits_request("", &eval_rows(1))).await.unwrap();
    assert!(!db.exists(), "no query made a new empty file");
    server.stop().await;

    // Started again, the server has to make a new registry: it says loudly what was lost.
    let server = LoggedServer::start(&url, root.path(), &[], &[]).await;
    let lines = server.stop().await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("was in use at this path")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn object_urls_cannot_probe_internal_addresses_or_carry_credentials() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut reg = server.registry().await;
    // An open port (this server's own HTTP port) and a closed one get the same answer, before
    // any connection is made.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut answers = Vec::new();
    for port in [server.http_addr.port(), closed] {
        let e = reg
            .register_model(pb::RegisterModelRequest {
                name: format!("probe{port}"),
                file_path: format!("http://127.0.0.1:{port}/secret"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        answers.push(e.message().to_string());
    }
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0].contains("--object-hosts"), "{}", answers[0]);
    for metadata in ["http://169.254.169.254/latest/meta-data/", "http://[fd00::1]/m.onnx"] {
        let e = reg
            .register_model(pb::RegisterModelRequest {
                name: "meta".into(),
                file_path: metadata.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{metadata}");
    }
    // Credentials in a URL are refused, never stored or echoed.
    let e = reg
        .register_model(pb::RegisterModelRequest {
            name: "creds".into(),
            file_path: "https://user:s3cret@models.example/m.onnx".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(!e.message().contains("s3cret"), "{}", e.message());
    let listed = server.models_json().await;
    assert!(!listed.to_string().contains("s3cret"));
    server.stop().await.unwrap();
}

/// The real binary (plus `extra` and `env`) on a fresh SQLite registry seeded with the bundled
/// models, with `digits_faulty` registered too (and made active when `activate`); with the
/// temp dirs that must outlive it and the images whose first pixel trips the fault.
async fn with_faulty_model(
    activate: bool,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (LoggedServer, [tempfile::TempDir; 2], Vec<Vec<f32>>) {
    let dir = tempfile::tempdir().unwrap();
    let root = model_root();
    std::fs::copy(
        bundled_models().join("digits_faulty.onnx"),
        root.path().join("digits_faulty.onnx"),
    )
    .unwrap();
    let url = format!("sqlite://{}", dir.path().join("modeld.db").display());
    let server = LoggedServer::start(&url, root.path(), extra, env).await;
    pb::model_registry_client::ModelRegistryClient::new(server.channel().await)
        .register_model(pb::RegisterModelRequest {
            name: "digits_faulty".into(),
            file_path: "digits_faulty.onnx".into(),
            activate,
            ..Default::default()
        })
        .await
        .unwrap();
    let faulty: Vec<Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(bundled_models().join("examples/digit_faulty.json")).unwrap())
            .unwrap();
    (server, [dir, root], faulty)
}

/// A model that panics inside the engine on some inputs (the bundled `digits_faulty`), served
/// by the real binary with `RUST_BACKTRACE=1` as many machines set it: each failure is one
/// rate-limited line in the log's format, no raw panic text or backtrace, and memory stays
/// flat; the server keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn an_engine_panic_is_one_log_line_and_costs_no_memory() {
    let (server, _files, faulty) = with_faulty_model(true, &[], &[("RUST_BACKTRACE", "1")]).await;
    let mut infer = pb::inference_client::InferenceClient::new(server.channel().await);
    let fail = |n: usize| {
        let mut infer = infer.clone();
        let row = faulty[0].clone();
        async move {
            for _ in 0..n {
                let e = infer.predict(digits_request("digits_faulty", &row)).await.unwrap_err();
                assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
                assert!(!e.message().contains("panicked"), "internals stay in the log: {e:?}");
            }
        }
    };
    fail(10).await;
    let before = rss(server.pid());
    fail(60).await;
    let grown = rss(server.pid()).saturating_sub(before);
    assert!(grown < 16 << 20, "memory grew by {} MiB over 60 panics", grown >> 20);
    // Still serving: a good request right after.
    let ok = infer
        .predict(digits_request("digits_faulty", &eval_rows(1)))
        .await
        .unwrap();
    assert!(!ok.into_inner().outputs.is_empty());

    let lines = server.stop().await;
    let raw: Vec<_> = lines.iter().filter(|l| !l.starts_with('{')).collect();
    assert!(
        raw.is_empty(),
        "lines outside the log format: {:#?}",
        &raw[..raw.len().min(5)]
    );
    let panics: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.to_string().contains("the engine panicked"))
        .collect();
    assert!(
        (1..=20).contains(&panics.len()),
        "{} lines for 70 panics (rate-limited, each once)",
        panics.len()
    );
    let first = panics[0].to_string();
    assert!(
        first.contains("gather.rs") && first.contains("index out of bounds"),
        "{first}"
    );
    assert_eq!(panics[0]["level"], "ERROR");
}

/// The request's span travels with its compute job and its mirrored copy: a line logged on a
/// compute thread (every model runs there with `--inline-max-us 0`) or on a shadow thread
/// names the request id the client sent.
#[tokio::test(flavor = "multi_thread")]
async fn lines_from_compute_and_shadow_threads_name_their_request() {
    // The seed manifest made digits_v2 active; digits_faulty is registered beside it.
    let (server, _files, faulty) =
        with_faulty_model(false, &["--inline-max-us", "0"], &[("MODELD_LOG", "modeld=debug")]).await;
    let channel = server.channel().await;
    let mut reg = pb::model_registry_client::ModelRegistryClient::new(channel.clone());
    reg.set_shadow(pb::SetRolloutRequest {
        model: by_name("digits_faulty"),
        percentage: 100,
        changed_by: "test".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut infer = pb::inference_client::InferenceClient::new(channel);
    let with_id = |name: &str, id: &str| {
        let mut r = tonic::Request::new(digits_request(name, &faulty[0]));
        r.metadata_mut().insert("x-request-id", id.parse().unwrap());
        r
    };
    // The active model answers; its shadow fails on the shadow's thread.
    infer.predict(with_id("", "mirrored-0001")).await.unwrap();
    // The faulty model, by name, fails on a compute thread.
    let e = infer
        .predict(with_id("digits_faulty", "computed-0002"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");

    let named = |message: &str, id: &str| {
        let (message, id) = (message.to_string(), id.to_string());
        move |lines: &[String]| {
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| {
                    v["fields"]["message"].as_str().is_some_and(|m| m.contains(&message))
                        && v["spans"]
                            .as_array()
                            .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == id.as_str()))
                })
        }
    };
    let shadow = named("a mirrored request failed on the shadow", "mirrored-0001");
    let compute = named("the engine failed on a request", "computed-0002");
    eventually(
        "a line naming each request",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            let lines = server.lines();
            let found = (shadow(&lines), compute(&lines));
            async move {
                if found == (true, true) {
                    return Ok(());
                }
                let failed: Vec<_> = lines.iter().filter(|l| l.contains("failed")).collect();
                Err(format!("shadow {}, compute {}: {failed:#?}", found.0, found.1))
            }
        },
    )
    .await;
    server.stop().await;
}
