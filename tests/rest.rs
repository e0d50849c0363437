//! The registry's REST API with a real HTTP client: the model-management guide's calls
//! verbatim (routes, JSON field names), every route's bad cases with the right status and a
//! JSON error `{"error": {"code", "message"}}`, the rollout actions, predict, and the OpenAPI
//! document against the routes the server answers.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().request(method, server.http_url(path));
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}"));
    (status, v)
}

fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str, says: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{says:?} in {message:?}");
    assert!(!message.contains("/tmp/"), "no server path in {message:?}");
}

#[tokio::test]
async fn the_guides_rest_calls_work_verbatim() {
    let server = TestServer::start(Backend::Sqlite).await;
    // "List All Models: Returns all models with the active model highlighted."
    let (status, list) = call(&server, Method::GET, "/api/v1/models", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 3);
    assert_eq!(list["active_model_id"], 2);
    let active: Vec<&Value> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["is_active"] == true)
        .collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["model_name"], "digits_v2");
    for field in [
        "model_id",
        "model_name",
        "version",
        "file_path",
        "description",
        "model_type",
        "accuracy",
        "is_active",
        "created_at",
        "updated_at",
    ] {
        assert!(active[0].get(field).is_some(), "{field} in {}", active[0]);
    }
    // "Get Active Model"
    let (status, m) = call(&server, Method::GET, "/api/v1/models/active", None).await;
    assert_eq!((status, m["model_name"].as_str()), (StatusCode::OK, Some("digits_v2")));
    // "Get Model Details"
    let (status, m) = call(&server, Method::GET, "/api/v1/models/1", None).await;
    assert_eq!((status, m["model_name"].as_str()), (StatusCode::OK, Some("digits_v1")));
    assert_eq!(m["signature"]["inputs"][0]["name"], "input");

    // "Register New Model" with the guide's body (the file must exist first).
    std::fs::create_dir_all(server.root.path().join("models")).unwrap();
    std::fs::copy(
        server.root.path().join("digits_v2.onnx"),
        server.root.path().join("models/yamnet_human_v2.onnx"),
    )
    .unwrap();
    let (status, m) = call(
        &server,
        Method::POST,
        "/api/v1/models",
        Some(json!({
            "model_name": "YAMNet Human v2",
            "version": "v2.0",
            "file_path": "models/yamnet_human_v2.onnx",
            "description": "Improved version",
            "model_type": "yamnet",
            "accuracy": 0.92
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{m}");
    let id = m["model_id"].as_i64().unwrap();
    assert_eq!(
        (
            m["model_name"].as_str(),
            m["version"].as_str(),
            m["accuracy"].as_f64(),
            m["is_active"].as_bool()
        ),
        (Some("YAMNet Human v2"), Some("v2.0"), Some(0.92), Some(false))
    );
    assert_eq!(m["checksum_sha256"].as_str().unwrap().len(), 64);
    // "Update Model Metadata"
    let (status, m) = call(
        &server,
        Method::PUT,
        &format!("/api/v1/models/{id}"),
        Some(json!({"description": "Updated description", "accuracy": 0.95})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(
        (m["description"].as_str(), m["accuracy"].as_f64()),
        (Some("Updated description"), Some(0.95))
    );
    assert_eq!(m["version"], "v2.0", "absent fields stay");
    // "Activate a Model": hot swap, no restart.
    let (status, a) = call(&server, Method::POST, &format!("/api/v1/models/{id}/activate"), None).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["active"]["model_id"], id);
    assert_eq!(a["previous"]["model_name"], "digits_v2");
    server.wait_serving("YAMNet Human v2").await;
    // Rollback, then delete the record (not the file).
    let (status, a) = call(
        &server,
        Method::POST,
        "/api/v1/models/rollback",
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(
        (status, a["active"]["model_name"].as_str()),
        (StatusCode::OK, Some("digits_v2")),
        "{a}"
    );
    server.wait_serving("digits_v2").await;
    let (status, m) = call(&server, Method::DELETE, &format!("/api/v1/models/{id}"), None).await;
    assert_eq!((status, m["model_id"].as_i64()), (StatusCode::OK, Some(id)), "{m}");
    assert!(server.root.path().join("models/yamnet_human_v2.onnx").exists());
    assert_error(
        &call(&server, Method::GET, &format!("/api/v1/models/{id}"), None).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "not registered",
    );
}

#[tokio::test]
async fn every_route_refuses_bad_input_with_a_json_error_and_changes_nothing() {
    let server = TestServer::start(Backend::Sqlite).await;
    let register = |body: Value| call(&server, Method::POST, "/api/v1/models", Some(body));
    assert_error(
        &register(json!({"model_name": "x", "file_path": "nope.onnx"})).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "\"nope.onnx\" does not exist under the server's model root",
    );
    assert_error(
        &register(json!({"model_name": "digits_v1", "file_path": "digits_v1.onnx"})).await,
        StatusCode::CONFLICT,
        "ALREADY_EXISTS",
        "digits_v1",
    );
    assert_error(
        &register(json!({"model_name": "x", "file_path": "../etc/passwd"})).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "model root",
    );
    assert_error(
        &register(json!({"model_name": "x", "file_path": "digits_v1.onnx", "accuracy": 1.5})).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "accuracy",
    );
    assert_error(
        &register(json!({"model_name": "x", "file_path": "digits_v1.onnx", "colour": "red"})).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "unknown field `colour`",
    );
    assert_error(
        &register(json!({"file_path": "a"})).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "model_name",
    );
    for (method, path, body, status, code, says) in [
        (
            Method::GET,
            "/api/v1/models/abc",
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "positive integer",
        ),
        (
            Method::GET,
            "/api/v1/models/0",
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "positive integer",
        ),
        (
            Method::GET,
            "/api/v1/models/999",
            None,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "999",
        ),
        (
            Method::GET,
            "/api/v1/models?order_by=size",
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "order_by",
        ),
        (
            Method::GET,
            "/api/v1/models?limit=0",
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "limit",
        ),
        (
            Method::PUT,
            "/api/v1/models/999",
            Some(json!({"description": "d"})),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "999",
        ),
        (
            Method::PUT,
            "/api/v1/models/1",
            Some(json!({"accuracy": -1})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "accuracy",
        ),
        (
            Method::POST,
            "/api/v1/models/999/activate",
            None,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "999",
        ),
        (
            Method::POST,
            "/api/v1/models/3/activate",
            None,
            StatusCode::CONFLICT,
            "FAILED_PRECONDITION",
            "would break the clients",
        ),
        (
            Method::DELETE,
            "/api/v1/models/2",
            None,
            StatusCode::CONFLICT,
            "FAILED_PRECONDITION",
            "active",
        ),
        (
            Method::POST,
            "/api/v1/models/rollback",
            Some(json!({"from_model_id": 1})),
            StatusCode::CONFLICT,
            "FAILED_PRECONDITION",
            "is not the active model (the active model is \"digits_v2\"); nothing was rolled back",
        ),
        (
            Method::PUT,
            "/api/v1/rollout/canary",
            Some(json!({"model_name": "digits_v1", "percentage": 101})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "0 to 100",
        ),
        (
            Method::PUT,
            "/api/v1/rollout/canary",
            Some(json!({"percentage": 10})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "model_id or model_name",
        ),
        (
            Method::PUT,
            "/api/v1/rollout/canary",
            Some(json!({"model_name": "digits_v2", "percentage": 10})),
            StatusCode::CONFLICT,
            "FAILED_PRECONDITION",
            "is the active model",
        ),
        (
            Method::POST,
            "/api/v1/rollout/promote",
            None,
            StatusCode::CONFLICT,
            "FAILED_PRECONDITION",
            "no canary",
        ),
        (
            Method::POST,
            "/api/v1/predict",
            Some(json!({"model_name": "nope", "inputs": []})),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "not registered",
        ),
        (
            Method::POST,
            "/api/v1/predict",
            Some(json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0]}]})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "data has 1 values",
        ),
        (
            Method::POST,
            "/api/v1/predict",
            Some(json!({"model_id": 1, "model_name": "digits_v1", "inputs": []})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "once",
        ),
        (
            Method::POST,
            "/api/v1/predict",
            Some(json!([1, 2])),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "must be a JSON object",
        ),
        // serde reads a struct from an array: `[]` and `[null]` must not pass as empty bodies.
        (
            Method::PUT,
            "/api/v1/models/1",
            Some(json!([])),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "must be a JSON object",
        ),
        (
            Method::POST,
            "/api/v1/models/1/activate",
            Some(json!([null])),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "must be a JSON object",
        ),
        (
            Method::POST,
            "/api/v1/models/rollback",
            Some(json!(null)),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "must be a JSON object",
        ),
        // A required body may not be left out.
        (
            Method::PUT,
            "/api/v1/models/1",
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "takes a JSON object",
        ),
        (
            Method::PUT,
            "/api/v1/rollout/canary",
            Some(json!({"model_id": 1, "percentage": 10, "changed_by": "a\u{0}b"})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "NUL",
        ),
    ] {
        let got = call(&server, method.clone(), path, body).await;
        assert_error(&got, status, code, says);
    }
    // An optional body may be left out, but whitespace alone is not JSON (schemathesis found
    // `DELETE /api/v1/rollout/canary` taking "\r" as no body).
    for (body, status) in [
        ("\r", StatusCode::BAD_REQUEST),
        (" \n\t", StatusCode::BAD_REQUEST),
        ("", StatusCode::OK),
    ] {
        let r = reqwest::Client::new()
            .delete(server.http_url("/api/v1/rollout/canary"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let got = (r.status(), r.json::<Value>().await.unwrap());
        if status == StatusCode::OK {
            assert_eq!(got.0, status, "{body:?}: {}", got.1);
        } else {
            assert_error(&got, status, "INVALID_ARGUMENT", "not only whitespace");
        }
    }
    // Nothing changed: three models, digits_v2 active, no rollout.
    let (_, list) = call(&server, Method::GET, "/api/v1/models", None).await;
    assert_eq!(
        (list["total"].as_i64(), list["active_model_id"].as_i64()),
        (Some(3), Some(2))
    );
    let (_, rollout) = call(&server, Method::GET, "/api/v1/rollout", None).await;
    assert_eq!(rollout, json!({"canary": null, "shadow": null}));
}

#[tokio::test]
async fn rollout_and_predict_over_rest() {
    let server = TestServer::start(Backend::Postgres).await;
    let (status, r) = call(
        &server,
        Method::PUT,
        "/api/v1/rollout/canary",
        Some(json!({"model_name": "digits_v1", "percentage": 10, "reason": "try v1"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["canary"]["model_name"].as_str(),
            r["canary"]["rollout_percentage"].as_i64()
        ),
        (Some("digits_v1"), Some(10))
    );
    server
        .wait_status("the canary served", |s| {
            s.rollout.as_ref().is_some_and(|r| r.canary_percentage == 10)
        })
        .await;
    let input = json!([{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": eval_rows(1)}]);
    for (key, model, role) in [("user-1", "digits_v1", "canary"), ("user-42", "digits_v2", "active")] {
        let (status, p) = call(
            &server,
            Method::POST,
            "/api/v1/predict",
            Some(json!({"routing_key": key, "inputs": input})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{p}");
        assert_eq!(
            (p["model_name"].as_str(), p["role"].as_str()),
            (Some(model), Some(role)),
            "{key}"
        );
    }
    // By id: a candidate; its answer is the model's.
    let (status, p) = call(&server, Method::POST, "/api/v1/predict", Some(json!({"model_id": 3, "inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": vec![0.0; 3 * 224 * 224]}]}))).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(
        (p["model_name"].as_str(), p["role"].as_str(), p["model_id"].as_i64()),
        (Some("cnn"), Some("candidate"), Some(3))
    );
    assert_eq!(p["outputs"][0]["shape"], json!([1, 10]));
    let (status, p) = call(
        &server,
        Method::POST,
        "/api/v1/predict",
        Some(json!({"model_name": "digits_v2", "inputs": input})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let probs: Vec<f32> = p["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_close(&probs, &expected_probs("digits_v2", 1), 1e-5);

    let (status, r) = call(
        &server,
        Method::PUT,
        "/api/v1/rollout/shadow",
        Some(json!({"model_id": 3, "percentage": 5, "allow_signature_change": true})),
    )
    .await;
    assert_eq!(
        (status, r["shadow"]["model_name"].as_str()),
        (StatusCode::OK, Some("cnn")),
        "{r}"
    );
    let (status, r) = call(&server, Method::DELETE, "/api/v1/rollout/shadow", None).await;
    assert_eq!((status, &r["shadow"]), (StatusCode::OK, &Value::Null));
    let (status, a) = call(
        &server,
        Method::POST,
        "/api/v1/rollout/promote",
        Some(json!({"reason": "good canary"})),
    )
    .await;
    assert_eq!(
        (status, a["active"]["model_name"].as_str()),
        (StatusCode::OK, Some("digits_v1")),
        "{a}"
    );
    server.wait_serving("digits_v1").await;
    let (_, r) = call(&server, Method::GET, "/api/v1/rollout", None).await;
    assert_eq!(r, json!({"canary": null, "shadow": null}));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_the_server_answers() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (status, doc) = call(&server, Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    // Every route documents 400 and 503 (e.g. the registry unreachable).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for code in ["400", "503"] {
                assert!(op["responses"].get(code).is_some(), "{method} {path} lacks {code}");
            }
        }
    }
    // The schemas state the registry's own limits.
    let schemas = &doc["components"]["schemas"];
    for (schema, field, max) in [
        ("RegisterBody", "version", 50),
        ("RegisterBody", "model_name", 255),
        ("UpdateBody", "description", 10_000),
        ("RolloutBody", "reason", 1000),
        ("EvaluateBody", "evaluated_by", 255),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["maxLength"], max,
            "{schema}.{field}"
        );
    }
    assert_eq!(
        schemas["RollbackPolicyJson"]["properties"]["rollback_window_secs"]["maximum"],
        3600
    );
    let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: std::collections::BTreeSet<(String, String)> = [
        ("GET", "/api/v1/models"),
        ("POST", "/api/v1/models"),
        ("GET", "/api/v1/models/active"),
        ("POST", "/api/v1/models/rollback"),
        ("GET", "/api/v1/models/{model_id}"),
        ("PUT", "/api/v1/models/{model_id}"),
        ("DELETE", "/api/v1/models/{model_id}"),
        ("POST", "/api/v1/models/{model_id}/activate"),
        ("GET", "/api/v1/rollout"),
        ("PUT", "/api/v1/rollout/canary"),
        ("DELETE", "/api/v1/rollout/canary"),
        ("PUT", "/api/v1/rollout/shadow"),
        ("DELETE", "/api/v1/rollout/shadow"),
        ("POST", "/api/v1/rollout/promote"),
        ("POST", "/api/v1/predict"),
        ("GET", "/api/v1/model-config"),
        ("POST", "/api/v1/model-config"),
        ("POST", "/api/v1/models/{model_id}/download-url"),
        ("GET", "/api/v1/models/{model_id}/download"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/servers"),
        ("GET", "/api/v1/stats"),
        ("GET", "/api/v1/evaluations"),
        ("GET", "/api/v1/models/{model_id}/activations"),
        ("GET", "/api/v1/models/{model_id}/evaluations"),
        ("POST", "/api/v1/models/{model_id}/evaluate"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(documented, served);
    // Every documented route is answered by the server (a route it does not know is 404
    // "no route"; 405 would be a method it does not take there).
    for (method, path) in &documented {
        let concrete = path.replace("{model_id}", "1");
        let r = reqwest::Client::new()
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                server.http_url(&concrete),
            )
            .header("Content-Type", "application/json")
            .body("{\"unknown_field_for_the_test\": 1}")
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if path == "/api/v1/events" {
            // A stream that does not end: its head is the answer.
            assert_eq!(r.headers()["content-type"], "text/event-stream");
            continue;
        }
        let body: Value = r.json().await.unwrap();
        assert!(
            !body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("no route"),
            "{method} {path}: {body}"
        );
    }
    // The model schema carries the guide's field names.
    let schema = &doc["components"]["schemas"]["ModelJson"];
    let model = schema["allOf"]
        .as_array()
        .and_then(|parts| {
            parts
                .iter()
                .find(|p| p.get("properties").is_some_and(|p| p.get("model_id").is_some()))
        })
        .unwrap_or(schema)
        .get("properties")
        .unwrap_or_else(|| panic!("ModelJson: {schema}"));
    for field in [
        "model_id",
        "model_name",
        "version",
        "file_path",
        "description",
        "model_type",
        "accuracy",
        "is_active",
        "created_at",
        "updated_at",
    ] {
        assert!(model.get(field).is_some(), "{field} in {model}");
    }
}

async fn model_config(server: &TestServer, method: Method, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, server.http_url("/api/v1/model-config"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// Devices poll the model config with If-None-Match: two servers of one PostgreSQL registry
/// give the same ETag for the same configuration, 304 while it holds, a new one once the
/// canary or the active model changes; per-platform minAppVersion; CORS preflight.
#[tokio::test]
async fn the_model_config_etag_is_the_same_on_every_server_and_304s_until_it_changes() {
    let a = TestServer::start(Backend::Postgres).await;
    let b = TestServer::start_on(TestDb::shared(&a.db), model_root(), |c| {
        c.model_config_max_age_secs = 60
    })
    .await;
    b.wait_serving("digits_v2").await;
    let r = model_config(&a, Method::POST, &[("X-App-Platform", "ios")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["cache-control"], "public, max-age=21600");
    assert_eq!(r.headers()["vary"], "X-App-Platform");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let config: Value = r.json().await.unwrap();
    assert_eq!(config["etag"], etag.as_str());
    assert_eq!(
        (
            config["activeModelVersion"].as_str(),
            config["activeModelId"].as_i64(),
            config["rolloutPercentage"].as_i64()
        ),
        (Some("2"), Some(2), Some(0)),
        "{config}"
    );
    assert!(
        config.get("shadowModelVersion").is_none() && config.get("minAppVersion").is_none(),
        "{config}"
    );
    assert!(config["rollbackThreshold"].as_f64().is_some() && config["updatedAt"].as_str().is_some());

    // The other server: the same ETag, and 304 with no body for it (GET and POST alike).
    let r = model_config(&b, Method::GET, &[("X-App-Platform", "ios"), ("If-None-Match", &etag)]).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.headers()["cache-control"], "public, max-age=60");
    assert!(r.bytes().await.unwrap().is_empty());
    let r = model_config(
        &b,
        Method::POST,
        &[
            ("X-App-Platform", "ios"),
            ("If-None-Match", &format!("\"old\", W/{etag}")),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // A description edit changes nothing a client reads: still 304.
    let (status, _) = call(
        &a,
        Method::PUT,
        "/api/v1/models/2",
        Some(json!({"description": "edited"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        model_config(&b, Method::GET, &[("X-App-Platform", "ios"), ("If-None-Match", &etag)])
            .await
            .status(),
        StatusCode::NOT_MODIFIED
    );

    // A per-platform minimum app version: ios gets its own, others the general one.
    let (status, m) = call(
        &a,
        Method::PUT,
        "/api/v1/models/2",
        Some(json!({"min_app_version": "2.0.0", "min_app_versions": {"ios": "2.3.0"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    let ios: Value = model_config(&b, Method::GET, &[("X-App-Platform", "iOS")])
        .await
        .json()
        .await
        .unwrap();
    let android: Value = model_config(&b, Method::GET, &[("X-App-Platform", "android")])
        .await
        .json()
        .await
        .unwrap();
    let any: Value = model_config(&b, Method::GET, &[]).await.json().await.unwrap();
    assert_eq!(
        (
            ios["minAppVersion"].as_str(),
            android["minAppVersion"].as_str(),
            any["minAppVersion"].as_str()
        ),
        (Some("2.3.0"), Some("2.0.0"), Some("2.0.0"))
    );
    assert_ne!(ios["etag"], etag.as_str(), "the config changed");
    assert_ne!(ios["etag"], android["etag"]);
    for bad in [
        json!({"min_app_version": "2 .0"}),
        json!({"min_app_versions": {"iOS": "1.0"}}),
    ] {
        assert_error(
            &call(&a, Method::PUT, "/api/v1/models/2", Some(bad)).await,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "",
        );
    }

    // A canary: both servers move to the same new ETag.
    let etag = ios["etag"].as_str().unwrap().to_string();
    let (status, _) = call(
        &a,
        Method::PUT,
        "/api/v1/rollout/canary",
        Some(json!({"model_id": 1, "percentage": 20})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut seen = Vec::new();
    for s in [&a, &b] {
        let r = model_config(s, Method::GET, &[("X-App-Platform", "ios"), ("If-None-Match", &etag)]).await;
        assert_eq!(r.status(), StatusCode::OK);
        let c: Value = r.json().await.unwrap();
        assert_eq!(
            (c["canaryModelVersion"].as_str(), c["rolloutPercentage"].as_i64()),
            (Some("1"), Some(20)),
            "{c}"
        );
        seen.push(c["etag"].as_str().unwrap().to_string());
    }
    assert_eq!(
        seen[0], seen[1],
        "one ETag for one configuration, whichever server answers"
    );
    assert_ne!(seen[0], etag);

    // gRPC: the same configuration and ETag, and not_modified for it.
    let mut reg = b.registry().await;
    let c = reg
        .get_model_config(modeld::api::pb::GetModelConfigRequest {
            platform: "ios".into(),
            if_none_match: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (c.etag.as_str(), c.rollout_percentage, c.min_app_version.as_deref()),
        (seen[0].as_str(), 20, Some("2.3.0"))
    );
    let c = reg
        .get_model_config(modeld::api::pb::GetModelConfigRequest {
            platform: "ios".into(),
            if_none_match: seen[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(c.not_modified && c.active_model_version.is_empty());

    // CORS preflight for the headers the guide's clients send.
    let r = reqwest::Client::new()
        .request(Method::OPTIONS, a.http_url("/api/v1/model-config"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization, x-client-info, apikey, content-type, x-app-platform, x-device-tier, x-locale, if-none-match")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for h in [
        "authorization",
        "x-client-info",
        "apikey",
        "content-type",
        "x-app-platform",
        "x-device-tier",
        "x-locale",
        "if-none-match",
    ] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }
    assert!(
        r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
}

#[tokio::test]
async fn the_model_config_without_an_active_model_is_a_json_404() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.no_seed = true).await;
    let r = model_config(&server, Method::GET, &[]).await;
    let status = r.status();
    assert_error(
        &(status, r.json().await.unwrap()),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "No active model found",
    );
}

const KEY: &str = "test-signing-key-0123456789abcdef";
const OLD_KEY: &str = "older-signing-key-0123456789abcdef";

/// A server whose signing keys are KEY (signs) and OLD_KEY (still verifies).
async fn signing_server() -> TestServer {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        keys.path(),
        format!("{KEY}\n# rotated out, until its URLs expire\n{OLD_KEY}\n"),
    )
    .unwrap();
    let path = keys.into_temp_path().keep().unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |c| c.signing_key_file = Some(path)).await;
    server.wait_serving("digits_v2").await;
    server
}

async fn download_url(server: &TestServer, id: i64, body: Option<Value>) -> (StatusCode, Value) {
    call(server, Method::POST, &format!("/api/v1/models/{id}/download-url"), body).await
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn a_signed_url_downloads_the_verified_file_with_range_and_head() {
    let server = signing_server().await;
    let (status, u) = download_url(&server, 2, None).await;
    assert_eq!(status, StatusCode::OK, "{u}");
    let file = std::fs::read(server.root.path().join("digits_v2.onnx")).unwrap();
    assert_eq!(u["sha256"], sha256_hex(&file).as_str());
    assert_eq!(u["size_bytes"].as_u64(), Some(file.len() as u64));
    let expires_at = chrono::DateTime::parse_from_rfc3339(u["expires_at"].as_str().unwrap()).unwrap();
    let ahead = expires_at.timestamp() - chrono::Utc::now().timestamp();
    assert!((3590..=3600).contains(&ahead), "an hour by default: {ahead}");
    let url = u["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!(
            "http://{}/api/v1/models/2/download?expires=",
            server.http_addr
        )),
        "{url}"
    );

    // The URL alone is the credential.
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["content-length"], file.len().to_string().as_str());
    assert_eq!(h["etag"].to_str().unwrap(), format!("\"{}\"", sha256_hex(&file)));
    assert_eq!(h["x-checksum-sha256"].to_str().unwrap(), sha256_hex(&file));
    assert_eq!(h["accept-ranges"], "bytes");
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .contains("filename=\"digits_v2.onnx\"")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), file.as_slice());

    let client = reqwest::Client::new();
    let r = client.head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], file.len().to_string().as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    for (range, want) in [
        ("bytes=0-99", &file[..100]),
        ("bytes=-10", &file[file.len() - 10..]),
        (&*format!("bytes={}-", file.len() - 5), &file[file.len() - 5..]),
    ] {
        let r = client.get(&url).header("Range", range).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let content_range = r.headers()["content-range"].to_str().unwrap().to_string();
        assert!(content_range.ends_with(&format!("/{}", file.len())), "{content_range}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), want, "{range}");
    }
    let r = client
        .get(&url)
        .header("Range", format!("bytes={}-", file.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{}", file.len())
    );

    // Asked-for expiries within the bounds.
    let (status, u) = download_url(&server, 2, Some(json!({"expires_in_secs": 60}))).await;
    assert_eq!(status, StatusCode::OK, "{u}");
    for bad in [0, 86_401] {
        assert_error(
            &download_url(&server, 2, Some(json!({"expires_in_secs": bad}))).await,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "expires_in_secs",
        );
    }
    assert_error(
        &download_url(&server, 999, None).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "999",
    );
}

#[tokio::test]
async fn expired_tampered_and_outdated_urls_are_refused() {
    let server = signing_server().await;
    let file = std::fs::read(server.root.path().join("digits_v2.onnx")).unwrap();
    let sha = sha256_hex(&file);
    let base = server.http_url("/api/v1/models");
    let keys = modeld::signing::SigningKeys::parse(KEY).unwrap();
    let now = chrono::Utc::now().timestamp();
    let get = |url: String| async move {
        let r = reqwest::get(url).await.unwrap();
        let status = r.status();
        (status, r.json::<Value>().await.unwrap())
    };
    // Time injected by signing: a URL that expired ten seconds ago, correctly signed.
    let expired = keys.sign(2, &sha, now - 10).unwrap();
    assert_error(
        &get(format!("{base}/2/download?expires={}&sig={expired}", now - 10)).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "expired",
    );
    // The old key still verifies (rotation); an unknown key does not.
    let old = modeld::signing::SigningKeys::parse(OLD_KEY).unwrap();
    let by_old = old.sign(2, &sha, now + 60).unwrap();
    let r = reqwest::get(format!("{base}/2/download?expires={}&sig={by_old}", now + 60))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let other = modeld::signing::SigningKeys::parse("another-key-nobody-configured-0123456789").unwrap();
    let by_other = other.sign(2, &sha, now + 60).unwrap();
    // Tampered: the signature, the expiry, the model; missing parts.
    let good = keys.sign(2, &sha, now + 60).unwrap();
    let mut flipped = good.clone().into_bytes();
    flipped[10] = if flipped[10] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    for url in [
        format!("{base}/2/download?expires={}&sig={by_other}", now + 60),
        format!("{base}/2/download?expires={}&sig={flipped}", now + 60),
        format!("{base}/2/download?expires={}&sig={good}", now + 3600),
        format!("{base}/1/download?expires={}&sig={good}", now + 60),
        format!("{base}/2/download?expires={}&sig=nothex", now + 60),
    ] {
        assert_error(
            &get(url).await,
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "does not verify",
        );
    }
    for url in [
        format!("{base}/2/download"),
        format!("{base}/2/download?expires={}", now + 60),
    ] {
        assert_error(
            &get(url).await,
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "expires and sig",
        );
    }
    assert_error(
        &get(format!("{base}/999/download?expires=1&sig=00")).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "999",
    );

    // The file changes and the registry follows (a new sha256): URLs signed before no longer
    // verify, a new one does.
    let (_, u) = download_url(&server, 2, None).await;
    let before = u["url"].as_str().unwrap().to_string();
    assert_eq!(reqwest::get(&before).await.unwrap().status(), StatusCode::OK);
    let v1 = std::fs::read(server.root.path().join("digits_v1.onnx")).unwrap();
    let tmp = server.root.path().join("digits_v2.onnx.new");
    std::fs::write(&tmp, &v1).unwrap();
    std::fs::rename(&tmp, server.root.path().join("digits_v2.onnx")).unwrap();
    let new_sha = sha256_hex(&v1);
    eventually(
        "the registry follows the file",
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(20),
        || async {
            let (_, m) = call(&server, Method::GET, "/api/v1/models/2", None).await;
            if m["checksum_sha256"] == new_sha.as_str() {
                Ok(())
            } else {
                Err(m)
            }
        },
    )
    .await;
    assert_error(
        &get(before).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "does not verify",
    );
    let (_, u) = download_url(&server, 2, None).await;
    assert_eq!(u["sha256"], new_sha.as_str());
    let got = reqwest::get(u["url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), v1.as_slice());
}

#[tokio::test]
async fn a_download_never_leaves_the_model_root_and_needs_a_key() {
    let server = signing_server().await;
    // digits_v1's file becomes a symlink to a file outside the root: refused, never served.
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), b"secret").unwrap();
    let (_, u) = download_url(&server, 1, None).await;
    let url = u["url"].as_str().unwrap().to_string();
    let file = server.root.path().join("digits_v1.onnx");
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(outside.path(), &file).unwrap();
    let r = reqwest::get(&url).await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(!text.contains("secret"));
    assert_error(
        &(status, serde_json::from_str(&text).unwrap()),
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "outside the model root",
    );

    // A server without a signing key says how to configure one.
    let plain = TestServer::start(Backend::Sqlite).await;
    assert_error(
        &download_url(&plain, 2, None).await,
        StatusCode::CONFLICT,
        "FAILED_PRECONDITION",
        "--signing-key-file",
    );
}

#[tokio::test]
async fn the_cli_downloads_and_checks_a_model_and_signs_urls_over_grpc() {
    let server = signing_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let grpc = server.url();
    let (ok, stdout, err) = modeld_cli(
        &server.db.url,
        server.root.path(),
        &[
            "download",
            "digits_v2",
            "-o",
            out.to_str().unwrap(),
            "--server",
            &grpc,
            "--quiet",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let want = std::fs::read(server.root.path().join("digits_v2.onnx")).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), want);
    assert!(
        stdout.contains(&format!("sha256 {} checked", sha256_hex(&want))),
        "{stdout}"
    );

    let (ok, url, err) = modeld_cli(
        &server.db.url,
        server.root.path(),
        &["download-url", "id:2", "--server", &grpc, "--expires-in", "60"],
    )
    .await;
    assert!(ok, "{err}");
    let r = reqwest::get(url.trim()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{url}");
    assert_eq!(r.bytes().await.unwrap().as_ref(), want.as_slice());

    let (ok, _, err) = modeld_cli(
        &server.db.url,
        server.root.path(),
        &["download", "nope", "--server", &grpc],
    )
    .await;
    assert!(!ok && err.contains("not registered"), "{err}");
    // A file on disk that is not the registered one: refused, and nothing is left behind.
    std::fs::write(server.root.path().join("digits_v1.onnx"), b"not the registered bytes").unwrap();
    let bad = dir.path().join("v1.onnx");
    let (ok, _, err) = modeld_cli(
        &server.db.url,
        server.root.path(),
        &[
            "download",
            "digits_v1",
            "-o",
            bad.to_str().unwrap(),
            "--server",
            &grpc,
            "--quiet",
        ],
    )
    .await;
    assert!(!ok && err.contains("not the registered one"), "{err}");
    assert!(!bad.exists() && !dir.path().join("v1.onnx.part").exists());
}

/// Reads server-sent events from `r` until `want` of them have arrived (each as its `id`,
/// `event` and parsed `data`), within 10 s.
async fn sse_events(r: &mut reqwest::Response, want: usize) -> Vec<(i64, String, Value)> {
    let mut buf = String::new();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.len() < want {
        let chunk = tokio::time::timeout_at(deadline, r.chunk())
            .await
            .unwrap_or_else(|_| panic!("{want} events within 10 s; got {got:?}, pending {buf:?}"))
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_string()))
            };
            // Keep-alive comments carry no fields.
            if let (Some(id), Some(kind), Some(data)) = (field("id:"), field("event:"), field("data:")) {
                got.push((id.parse().unwrap(), kind, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    got
}

/// The routes a dashboard reads: live events (resumable by Last-Event-ID), status, stats per
/// model and role, a model's activations and evaluations, and evaluating over HTTP, with
/// their bad cases.
#[tokio::test]
async fn events_status_stats_history_and_evaluate_over_rest() {
    let server = TestServer::start(Backend::Sqlite).await;
    std::fs::create_dir_all(server.root.path().join("eval")).unwrap();
    for f in ["digits_x.npy", "digits_y.npy"] {
        std::fs::copy(
            bundled_models().join("eval").join(f),
            server.root.path().join("eval").join(f),
        )
        .unwrap();
    }
    let client = reqwest::Client::new();
    let mut stream = client.get(server.http_url("/api/v1/events")).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    // A change made after the stream opened arrives on it, with its kind and id.
    let done = call(
        &server,
        Method::POST,
        "/api/v1/models/1/activate",
        Some(json!({"reason": "events test"})),
    )
    .await;
    assert_eq!(done.0, StatusCode::OK, "{}", done.1);
    let events = sse_events(&mut stream, 1).await;
    let (id, kind, data) = &events[0];
    assert_eq!(kind, "activated");
    assert_eq!(data["event_id"], *id);
    assert_eq!(data["model_name"], "digits_v1");
    assert_eq!(data["detail"], "events test");
    drop(stream);
    // Reconnecting with Last-Event-ID (what EventSource sends) resumes after that event: the
    // one before it is sent again.
    let mut resumed = client
        .get(server.http_url("/api/v1/events"))
        .header("Last-Event-ID", (id - 1).to_string())
        .send()
        .await
        .unwrap();
    let again = sse_events(&mut resumed, 1).await;
    assert_eq!(again[0].0, *id, "{again:?}");
    let mut from = client
        .get(server.http_url(&format!("/api/v1/events?after={}", id - 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(sse_events(&mut from, 1).await[0].0, *id);
    assert_error(
        &call(&server, Method::GET, "/api/v1/events?after=soon", None).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "event id",
    );

    // Status: what this server serves, once the activation reached it.
    let status = eventually(
        "serving digits_v1",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        || async {
            let (code, s) = call(&server, Method::GET, "/api/v1/status", None).await;
            assert_eq!(code, StatusCode::OK, "{s}");
            if s["serving"]["model_name"] == "digits_v1" {
                Ok(s)
            } else {
                Err(s)
            }
        },
    )
    .await;
    assert_eq!(status["degraded"], false, "{status}");
    assert_eq!(status["registry_reachable"], true);
    assert!(status["server"].as_str().is_some_and(|s| !s.is_empty()));

    // Stats: cumulative per model and role, latency buckets and all.
    let mut infer = server.inference().await;
    for _ in 0..3 {
        infer.predict(digits_request("", &eval_rows(2))).await.unwrap();
    }
    infer.predict(digits_request("digits_v2", &eval_rows(1))).await.unwrap();
    let e = infer.predict(digits_request("digits_v2", &[1.0; 3])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let (code, stats) = call(&server, Method::GET, "/api/v1/stats", None).await;
    assert_eq!(code, StatusCode::OK, "{stats}");
    let buckets = stats["latency_buckets_seconds"].as_array().unwrap().len();
    let role = |name: &str, role: &str| -> Value {
        stats["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model_name"] == name)
            .and_then(|m| m["roles"].as_array().unwrap().iter().find(|r| r["role"] == role))
            .cloned()
            .unwrap_or_else(|| panic!("{name} {role} in {stats}"))
    };
    let active = role("digits_v1", "active");
    assert_eq!(active["success"], 3, "{active}");
    assert_eq!(active["failure"], 0);
    let cumulative = active["latency_cumulative"].as_array().unwrap();
    assert_eq!(cumulative.len(), buckets + 1);
    assert_eq!(cumulative[buckets], 3, "the last bucket holds every request");
    assert!(active["latency_sum_seconds"].as_f64().unwrap() > 0.0);
    let candidate = role("digits_v2", "candidate");
    assert_eq!(
        (candidate["success"].as_u64(), candidate["failure"].as_u64()),
        (Some(1), Some(1)),
        "{candidate}"
    );

    // Activation history: digits_v1's activation, and digits_v2's record of being replaced.
    let (code, history) = call(&server, Method::GET, "/api/v1/models/1/activations", None).await;
    assert_eq!(code, StatusCode::OK, "{history}");
    let first = &history["activations"][0];
    assert_eq!(first["model_name"], "digits_v1");
    assert_eq!(first["previous_name"], "digits_v2");
    assert_eq!(first["reason"], "events test");
    let (_, replaced) = call(&server, Method::GET, "/api/v1/models/2/activations", None).await;
    assert_eq!(replaced["activations"][0]["activation_id"], first["activation_id"]);

    // Evaluate over HTTP; it shows in the model's evaluations and the latest of all.
    let (code, ev) = call(
        &server,
        Method::POST,
        "/api/v1/models/2/evaluate",
        Some(json!({"dataset": {"path": "eval/digits_x.npy"}, "notes": "from REST"})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{ev}");
    assert_eq!(ev["model_name"], "digits_v2");
    assert_eq!(ev["dataset_name"], "digits_x.npy");
    assert!(ev["accuracy"].as_f64().unwrap() > 0.9, "{ev}");
    assert_eq!(ev["evaluated_by"], "http");
    let (_, list) = call(&server, Method::GET, "/api/v1/models/2/evaluations", None).await;
    assert_eq!(list["evaluations"][0]["log_id"], ev["log_id"]);
    assert_eq!(list["evaluations"][0]["notes"], "from REST");
    let (_, latest) = call(&server, Method::GET, "/api/v1/evaluations", None).await;
    assert!(
        latest["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["log_id"] == ev["log_id"]),
        "{latest}"
    );
    let (_, none) = call(&server, Method::GET, "/api/v1/models/3/evaluations", None).await;
    assert_eq!(none["evaluations"], json!([]));

    // Bad cases: each a JSON error with its status, nothing stored.
    for (method, path, body, status, code, says) in [
        (
            Method::GET,
            "/api/v1/models/99/activations",
            None,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "99",
        ),
        (
            Method::GET,
            "/api/v1/models/abc/evaluations",
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "positive integer",
        ),
        (
            Method::POST,
            "/api/v1/models/2/evaluate",
            Some(json!({})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "name the dataset",
        ),
        (
            Method::POST,
            "/api/v1/models/2/evaluate",
            Some(json!({"dataset": {"path": ""}})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "name the dataset",
        ),
        (
            Method::POST,
            "/api/v1/models/2/evaluate",
            Some(json!({"dataset": {"path": "../../etc/passwd"}})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "dataset",
        ),
        (
            Method::POST,
            "/api/v1/models/2/evaluate",
            Some(json!({"dataset": {"path": "eval/missing_x.npy"}})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "dataset",
        ),
        (
            Method::POST,
            "/api/v1/models/99/evaluate",
            Some(json!({"dataset": {"path": "eval/digits_x.npy"}})),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "99",
        ),
        (
            Method::POST,
            "/api/v1/models/2/evaluate",
            Some(json!({"dataset": {"path": "eval/digits_x.npy"}, "unknown": 1})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "unknown",
        ),
    ] {
        let got = call(&server, method.clone(), path, body).await;
        assert_error(&got, status, code, says);
    }
    let (_, after) = call(&server, Method::GET, "/api/v1/models/2/evaluations", None).await;
    assert_eq!(
        after["evaluations"].as_array().unwrap().len(),
        1,
        "a refused evaluation stores nothing"
    );
}
