//! The HTTP port end to end with a real HTTP client (reqwest): the Open Inference Protocol's
//! REST binding (JSON tensors and the binary tensor data extension), its good and bad cases
//! with the right status and a JSON error, and the metrics on the same port.

mod common;

use common::*;
use modeld::api::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// A JSON infer request for `rows` digits rows.
fn digits_json(rows: usize) -> Value {
    json!({
        "id": "req-1",
        "inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": eval_rows(rows)}],
    })
}

async fn post_json(server: &TestServer, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = client().post(server.http_url(path)).json(body).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}"));
    (status, v)
}

async fn get_json(server: &TestServer, path: &str) -> (StatusCode, Value) {
    let r = client().get(server.http_url(path)).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}"))
    };
    (status, v)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// An error answer: the status, and `{"error": "..."}` whose message says `says`.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, says: &str) {
    assert_eq!(got.0, status, "{:?}", got.1);
    let message = got.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", got.1));
    assert!(message.contains(says), "{says:?} in {message:?}");
    assert!(!message.contains("/tmp/"), "no server path in {message:?}");
}

#[tokio::test]
async fn the_rest_binding_infers_with_json_tensors_as_grpc_does() {
    let server = TestServer::start(Backend::Sqlite).await;
    for path in [
        "/v2/models/digits_v2/infer",
        "/v2/models/active/infer",
        "/v2/models/digits_v2/versions/2/infer",
    ] {
        let (status, r) = post_json(&server, path, &digits_json(4)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {r}");
        assert_eq!(
            (r["model_name"].as_str(), r["model_version"].as_str()),
            (Some("digits_v2"), Some("2")),
            "{r}"
        );
        assert_eq!(r["id"], "req-1");
        assert_eq!(r["parameters"]["role"], "active");
        assert_eq!(r["parameters"]["model_id"], 2);
        let outputs = r["outputs"].as_array().unwrap();
        assert_eq!(outputs[0]["name"], "probabilities");
        assert_eq!(outputs[0]["datatype"], "FP32");
        assert_eq!(outputs[0]["shape"], json!([4, 10]));
        assert_close(&floats(&outputs[0]["data"]), &expected_probs("digits_v2", 4), 1e-5);
        assert_eq!(
            (outputs[1]["name"].as_str(), outputs[1]["datatype"].as_str()),
            (Some("label"), Some("INT64"))
        );
        assert_eq!(outputs[1]["data"].as_array().unwrap().len(), 4);
    }
    // Nested data arrays, as the protocol allows; one requested output only.
    let rows = eval_rows(2);
    let nested: Vec<Vec<f32>> = rows.chunks(64).map(<[f32]>::to_vec).collect();
    let body = json!({
        "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": nested}],
        "outputs": [{"name": "label"}],
    });
    let (status, r) = post_json(&server, "/v2/models/digits_v2/infer", &body).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(r["outputs"][0]["name"], "label");
    // The same answer as gRPC for the same request.
    let grpc = server
        .inference()
        .await
        .predict(digits_request("digits_v2", &rows))
        .await
        .unwrap()
        .into_inner();
    let labels: Vec<i64> = grpc.outputs[1]
        .raw_data
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(r["outputs"][0]["data"], json!(labels));
}

/// A 200 answer of the binary tensor extension: its JSON header and the bytes after it.
async fn binary_answer(r: reqwest::Response) -> (Value, Vec<u8>) {
    assert_eq!(r.status(), StatusCode::OK);
    let length: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    (
        serde_json::from_slice(&bytes[..length]).unwrap(),
        bytes[length..].to_vec(),
    )
}

#[tokio::test]
async fn the_binary_tensor_extension_carries_inputs_and_outputs_as_bytes() {
    let server = TestServer::start(Backend::Sqlite).await;
    let rows = eval_rows(3);
    let head = json!({
        "inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "parameters": {"binary_data_size": rows.len() * 4}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}, {"name": "label", "parameters": {"binary_data": false}}],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    for x in &rows {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let r = client()
        .post(server.http_url("/v2/models/digits_v2/infer"))
        .header("Inference-Header-Content-Length", head.len())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let (header, tail) = binary_answer(r).await;
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 120, "{header}");
    assert!(header["outputs"][0].get("data").is_none());
    assert_eq!(
        header["outputs"][1]["data"].as_array().unwrap().len(),
        3,
        "label as JSON"
    );
    assert_eq!(tail.len(), 120);
    assert_close(&raw_f32(&tail), &expected_probs("digits_v2", 3), 1e-5);

    // binary_data_output: every output as bytes.
    let head = json!({
        "parameters": {"binary_data_output": true},
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": eval_rows(1)}],
    })
    .to_string();
    let r = client()
        .post(server.http_url("/v2/models/active/infer"))
        .body(head)
        .send()
        .await
        .unwrap();
    let (_, tail) = binary_answer(r).await;
    assert_eq!(tail.len(), 40 + 8, "ten FP32 probabilities and one INT64 label");

    // Header lengths and sizes that do not add up are refused.
    let head = json!({
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    for x in &eval_rows(1) {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let with_extra_byte = [body.clone(), vec![0]].concat();
    for (header_length, body, says) in [
        (body.len() + 1, body.clone(), "longer than"),
        (head.len(), with_extra_byte, "left over"),
        (head.len() + 1, body.clone(), "invalid inference request"),
    ] {
        let r = client()
            .post(server.http_url("/v2/models/active/infer"))
            .header("Inference-Header-Content-Length", header_length)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_error(&(status, v), StatusCode::BAD_REQUEST, says);
    }
}

#[tokio::test]
async fn every_bad_request_gets_its_status_and_a_json_error() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.max_message_bytes = 1 << 20).await;
    server.wait_serving("digits_v2").await;
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "/v2/models/nope/infer",
            digits_json(1),
            StatusCode::NOT_FOUND,
            "Request for unknown model: model \"nope\" is not registered",
        ),
        (
            "/v2/models/digits_v2/versions/9/infer",
            digits_json(1),
            StatusCode::NOT_FOUND,
            "version \"9\"",
        ),
        (
            "/v2/models/digits_v2/infer",
            json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": eval_rows(1)}]}),
            StatusCode::BAD_REQUEST,
            "data has 64 values, shape [2, 64] holds 128",
        ),
        (
            "/v2/models/digits_v2/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": vec![0.0; 63]}]}),
            StatusCode::BAD_REQUEST,
            "input",
        ),
        (
            "/v2/models/digits_v2/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP16", "data": vec![0.0; 64]}]}),
            StatusCode::BAD_REQUEST,
            "unsupported datatype \"FP16\"",
        ),
        (
            "/v2/models/digits_v2/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ["a"]}]}),
            StatusCode::BAD_REQUEST,
            "is not a FP32 value",
        ),
        (
            "/v2/models/digits_v2/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]}),
            StatusCode::BAD_REQUEST,
            "has no data",
        ),
        (
            "/v2/models/digits_v2/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": eval_rows(1)}], "outputs": [{"name": "nope"}]}),
            StatusCode::BAD_REQUEST,
            "has no output \"nope\"",
        ),
        (
            "/v2/models/digits_v2/infer",
            json!({"parameters": {"routing_key": [1]}, "inputs": []}),
            StatusCode::BAD_REQUEST,
            "routing_key",
        ),
        (
            "/v2/models/digits_v2/infer",
            json!({"no": "inputs"}),
            StatusCode::BAD_REQUEST,
            "invalid inference request",
        ),
    ];
    for (path, body, status, says) in cases {
        let got = post_json(&server, path, &body).await;
        assert_error(&got, status, says);
    }
    // Not JSON at all.
    let r = client()
        .post(server.http_url("/v2/models/digits_v2/infer"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_error(
        &(status, r.json().await.unwrap()),
        StatusCode::BAD_REQUEST,
        "invalid inference request",
    );
    // A body above the message limit: 413, with a JSON error.
    let r = client()
        .post(server.http_url("/v2/models/digits_v2/infer"))
        .body(vec![b' '; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_error(&(status, r.json().await.unwrap()), StatusCode::PAYLOAD_TOO_LARGE, "");
    // No such route: 404, JSON; the protocol's shape under /v2, the REST API's elsewhere.
    let got = get_json(&server, "/v2/anything/else").await;
    assert_error(&got, StatusCode::NOT_FOUND, "no route GET /v2/anything/else");
    let (status, body) = get_json(&server, "/v3/anything").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("NOT_FOUND"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no route GET /v3/anything")),
        "{body}"
    );
    // The old model keeps serving.
    let (status, _) = post_json(&server, "/v2/models/active/infer", &digits_json(1)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn health_metadata_config_stats_and_the_repository_over_http() {
    let server = TestServer::start(Backend::Sqlite).await;
    assert_eq!(get_json(&server, "/v2/health/live").await.0, StatusCode::OK);
    assert_eq!(get_json(&server, "/v2/health/ready").await.0, StatusCode::OK);
    let (status, meta) = get_json(&server, "/v2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["name"], "modeld");
    assert!(meta["extensions"].as_array().unwrap().contains(&json!("statistics")));

    let (status, m) = get_json(&server, "/v2/models/digits_v2").await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["versions"], json!(["2"]));
    assert_eq!(
        m["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 64]})
    );
    assert_eq!(get_json(&server, "/v2/models/active").await.1["name"], "active");
    assert_eq!(
        get_json(&server, "/v2/models/digits_v2/versions/2").await.0,
        StatusCode::OK
    );

    assert_eq!(get_json(&server, "/v2/models/digits_v2/ready").await.0, StatusCode::OK);
    assert_eq!(get_json(&server, "/v2/models/active/ready").await.0, StatusCode::OK);
    let not_ready = get_json(&server, "/v2/models/digits_v1/ready").await;
    assert_error(&not_ready, StatusCode::BAD_REQUEST, "not loaded");
    assert_error(
        &get_json(&server, "/v2/models/nope/ready").await,
        StatusCode::NOT_FOUND,
        "not registered",
    );

    let (status, c) = get_json(&server, "/v2/models/cnn/config").await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["name"], "cnn");
    assert!(c["max_batch_size"].as_i64().unwrap() > 0);
    assert_eq!(c["input"][0]["dims"], json!([3, 224, 224]));
    assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(c["instance_group"][0]["kind"], "KIND_CPU");

    post_json(&server, "/v2/models/active/infer", &digits_json(2)).await;
    let (status, s) = get_json(&server, "/v2/models/digits_v2/stats").await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["model_stats"][0]["name"], "digits_v2");
    assert!(s["model_stats"][0]["inference_count"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(get_json(&server, "/v2/models/stats").await.0, StatusCode::OK);

    let (status, index) = post_json(&server, "/v2/repository/index", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let states: Vec<(String, String)> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().into(), m["state"].as_str().unwrap().into()))
        .collect();
    assert!(states.contains(&("digits_v2".into(), "READY".into())), "{states:?}");
    // load = activate, as over gRPC; the guard holds (cnn would break digits_v2's clients).
    let r = client()
        .post(server.http_url("/v2/repository/models/digits_v1/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    server.wait_serving("digits_v1").await;
    for (path, says) in [
        ("/v2/repository/models/cnn/load", "would break the clients"),
        ("/v2/repository/models/digits_v1/unload", "is the active model"),
    ] {
        assert_error(&post_json(&server, path, &json!({})).await, StatusCode::CONFLICT, says);
    }

    // Metrics share the port.
    let text = client()
        .get(server.http_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("modeld_model_loaded 1"), "{text}");
}

#[tokio::test]
async fn a_model_name_with_spaces_works_percent_encoded() {
    let server = TestServer::start(Backend::Sqlite).await;
    server
        .registry()
        .await
        .register_model(pb::RegisterModelRequest {
            name: "Digits MLP v2".into(),
            file_path: "digits_v2.onnx".into(),
            version: "2.1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, m) = get_json(&server, "/v2/models/Digits%20MLP%20v2").await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["name"], "Digits MLP v2");
    // A request by name loads it as a candidate and answers from it.
    let (status, r) = post_json(&server, "/v2/models/Digits%20MLP%20v2/infer", &digits_json(1)).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["model_name"], "Digits MLP v2");
    assert_eq!(r["parameters"]["role"], "candidate");
    let (status, _) = post_json(
        &server,
        "/v2/models/Digits%20MLP%20v2/versions/2.1/infer",
        &digits_json(1),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_routing_key_parameter_routes_over_http_as_over_grpc() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut reg = server.registry().await;
    reg.set_canary(pb::SetRolloutRequest {
        model: by_name("digits_v1"),
        percentage: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    server
        .wait_status("the canary served", |s| {
            s.rollout.as_ref().is_some_and(|r| r.canary_percentage == 10)
        })
        .await;
    // user-1 is in bucket 8 (canary at 10 %), user-42 in bucket 19 (active).
    for (key, model, role) in [("user-1", "digits_v1", "canary"), ("user-42", "digits_v2", "active")] {
        let mut body = digits_json(1);
        body["parameters"] = json!({"routing_key": key});
        let (status, r) = post_json(&server, "/v2/models/active/infer", &body).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        assert_eq!(
            (r["model_name"].as_str(), r["parameters"]["role"].as_str()),
            (Some(model), Some(role)),
            "{key}"
        );
    }
}

/// The latency and batch-size histograms: per model, version and role, consistent with the
/// request counts, and only for loaded models (an evicted candidate's series go).
#[tokio::test]
async fn latency_and_batch_histograms_follow_the_loaded_models() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.candidates.candidate_models = 1).await;
    server.wait_serving("digits_v2").await;
    for _ in 0..5 {
        let (status, _) = post_json(&server, "/v2/models/active/infer", &digits_json(2)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = post_json(&server, "/v2/models/digits_v1/infer", &digits_json(1)).await;
    assert_eq!(status, StatusCode::OK);
    let text = server.metrics().await;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse::<f64>().unwrap()))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let active = "model=\"digits_v2\",version=\"2\",role=\"active\"";
    for name in [
        "modeld_request_duration_seconds",
        "modeld_request_queue_seconds",
        "modeld_request_compute_seconds",
    ] {
        assert_eq!(value(&format!("{name}_bucket{{{active},le=\"+Inf\"}}")), 5.0, "{name}");
        assert_eq!(value(&format!("{name}_count{{{active}}}")), 5.0, "{name}");
        assert!(value(&format!("{name}_sum{{{active}}}")) > 0.0 || name == "modeld_request_queue_seconds");
        // Cumulative buckets never decrease.
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{{active},")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), 18);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    }
    assert_eq!(
        value("modeld_request_duration_seconds_count{model=\"digits_v1\",version=\"1\",role=\"candidate\"}"),
        1.0
    );
    assert_eq!(
        value("modeld_batch_size_bucket{model=\"digits_v2\",version=\"2\",le=\"2\"}"),
        5.0
    );
    assert_eq!(
        value("modeld_batch_size_bucket{model=\"digits_v2\",version=\"2\",le=\"1\"}"),
        0.0
    );
    // Another candidate evicts digits_v1 (a cache of one): its series go.
    let cnn = json!({"inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": vec![0.0; 3 * 224 * 224]}]});
    let (status, r) = post_json(&server, "/v2/models/cnn/infer", &cnn).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let text = server.metrics().await;
    // Its histograms go (its request counters stay: counters never go back).
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("modeld_request_")
                && l.contains("model=\"digits_v1\",version=\"1\",role=\"candidate\"")),
        "{text}"
    );
    assert!(
        text.contains("modeld_request_duration_seconds_count{model=\"cnn\",version=\"1\",role=\"candidate\"} 1"),
        "{text}"
    );
}

/// The shell blocks of the README and docs/http.md that call the HTTP port, run as written
/// (`localhost:8000` pointed at a test server; curl fails on any 4xx/5xx answer).
#[tokio::test]
async fn every_curl_example_of_the_docs_runs() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "docs-example-signing-key-0123456789abcdef\n").unwrap();
    let key_path = keys.path().to_path_buf();
    let server = TestServer::start_with(Backend::Sqlite, |c| c.signing_key_file = Some(key_path)).await;
    server.wait_serving("digits_v2").await;
    let repo = bundled_models().join("..");
    let work = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for doc in ["README.md", "docs/http.md"] {
        let text = std::fs::read_to_string(repo.join(doc)).unwrap();
        let mut blocks = Vec::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            match (&mut current, line.trim_start()) {
                (None, "```sh") => current = Some(String::new()),
                (Some(b), "```") => {
                    blocks.push(std::mem::take(b));
                    current = None;
                }
                (Some(b), _) => {
                    b.push_str(line);
                    b.push('\n');
                }
                _ => {}
            }
        }
        for block in blocks.iter().filter(|b| b.contains("localhost:8000")) {
            let script = format!(
                "set -euo pipefail\ncurl() {{ command curl --fail-with-body --max-time 20 \"$@\"; }}\n{}",
                block.replace("localhost:8000", &server.http_addr.to_string())
            );
            let out = tokio::process::Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(work.path())
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{doc}: this example failed:\n{block}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 5, "the docs' HTTP examples were found ({ran})");
    // What they did: the model file was downloaded whole, and its first 100 bytes by range.
    let downloaded = std::fs::read(work.path().join("digits_v2.onnx")).unwrap();
    assert_eq!(
        downloaded,
        std::fs::read(server.root.path().join("digits_v2.onnx")).unwrap()
    );
    assert_eq!(std::fs::metadata(work.path().join("head.bin")).unwrap().len(), 100);
}

/// Bodies far above axum's 2 MB default are taken, up to the message limit (64 MiB by
/// default): four CNN images in binary, 2.4 MB.
#[tokio::test]
async fn bodies_up_to_the_message_limit_are_taken() {
    let server = TestServer::start(Backend::Sqlite).await;
    let n = 4 * 3 * 224 * 224;
    let head = json!({
        "inputs": [{"name": "image", "shape": [4, 3, 224, 224], "datatype": "FP32", "parameters": {"binary_data_size": n * 4}}],
        "outputs": [{"name": "probabilities"}],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend(std::iter::repeat_n(0u8, n * 4));
    assert!(body.len() > 2 << 20);
    let r = client()
        .post(server.http_url("/v2/models/cnn/infer"))
        .header("Inference-Header-Content-Length", head.len())
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outputs"][0]["shape"], json!([4, 10]));
}
