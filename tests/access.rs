//! Access control end to end: bearer tokens with scopes on gRPC and HTTP (no token, a bad one,
//! an expired one, each scope), the routes that stay open, and the refused non-loopback bind
//! without tokens.

mod common;

use common::*;
use modeld::api::pb;
use modeld::auth::{Scope, Tokens};
use reqwest::StatusCode;
use tonic::Code;

struct Keys {
    admin: String,
    predict: String,
    read: String,
    expired: String,
}

/// A server whose tokens file holds one token of each scope, and one that has expired.
async fn guarded() -> (TestServer, Keys) {
    let mut tokens = Tokens::default();
    let keys = Keys {
        admin: tokens.create("ops", &[Scope::Admin], None).unwrap(),
        predict: tokens.create("app", &[Scope::Predict], None).unwrap(),
        read: tokens.create("dashboard", &[Scope::Read], None).unwrap(),
        expired: tokens
            .create(
                "old",
                &[Scope::Admin],
                Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            )
            .unwrap(),
    };
    let file = tempfile::NamedTempFile::new().unwrap().into_temp_path().keep().unwrap();
    tokens.write(&file).unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |c| c.tokens_file = Some(file)).await;
    (server, keys)
}

fn with<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test]
async fn grpc_methods_need_their_scope() {
    let (server, k) = guarded().await;
    // Health stays open: the server comes up SERVING with no token.
    server
        .wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let mut infer = server.inference().await;
    let mut reg = server.registry().await;
    let predict = || digits_request("", &eval_rows(1));
    for (token, code) in [
        (None, Some(Code::Unauthenticated)),
        (Some("mdl_not_a_token"), Some(Code::Unauthenticated)),
        (Some(k.expired.as_str()), Some(Code::Unauthenticated)),
        (Some(k.read.as_str()), Some(Code::PermissionDenied)),
        (Some(k.predict.as_str()), None),
        (Some(k.admin.as_str()), None),
    ] {
        let got = infer
            .predict(with(predict(), token))
            .await
            .map(|_| ())
            .map_err(|e| e.code());
        assert_eq!(got.err(), code, "Predict with {token:?}");
    }
    let e = infer.predict(with(predict(), Some(&k.expired))).await.unwrap_err();
    assert!(e.message().contains("expired"), "{}", e.message());
    let e = infer.predict(with(predict(), Some(&k.read))).await.unwrap_err();
    assert!(
        e.message().contains("needs the predict scope") && !e.message().contains(&k.read),
        "{}",
        e.message()
    );

    let list = || pb::ListModelsRequest::default();
    assert_eq!(
        reg.list_models(with(list(), None)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        reg.list_models(with(list(), Some(&k.predict)))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    reg.list_models(with(list(), Some(&k.read))).await.unwrap();
    let activate = || activate_req("digits_v1");
    for (token, code) in [
        (None, Some(Code::Unauthenticated)),
        (Some(k.read.as_str()), Some(Code::PermissionDenied)),
        (Some(k.predict.as_str()), Some(Code::PermissionDenied)),
        (Some(k.admin.as_str()), None),
    ] {
        let got = reg
            .activate_model(with(activate(), token))
            .await
            .map(|_| ())
            .map_err(|e| e.code());
        assert_eq!(got.err(), code, "ActivateModel with {token:?}");
    }
    // The model config devices poll is open.
    reg.get_model_config(with(pb::GetModelConfigRequest::default(), None))
        .await
        .unwrap();
    // The Open Inference Protocol: infer needs predict, metadata read, load admin.
    let mut kserve = server.kserve().await;
    let req = || kserve_request("active", &eval_rows(1));
    assert_eq!(
        kserve.model_infer(with(req(), None)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    kserve.model_infer(with(req(), Some(&k.predict))).await.unwrap();
    let meta = || modeld::api::kserve_pb::ModelMetadataRequest {
        name: "active".into(),
        version: String::new(),
    };
    kserve.model_metadata(with(meta(), Some(&k.read))).await.unwrap();
    let load = || modeld::api::kserve_pb::RepositoryModelLoadRequest {
        model_name: "digits_v2".into(),
        ..Default::default()
    };
    assert_eq!(
        kserve
            .repository_model_load(with(load(), Some(&k.read)))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn http_routes_need_their_scope() {
    let (server, k) = guarded().await;
    server
        .wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let client = reqwest::Client::new();
    let infer_body =
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": eval_rows(1)}]});
    let send = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut r = client.request(method, server.http_url(path));
        if path.ends_with("infer") || path.ends_with("predict") {
            r = r.json(&infer_body);
        }
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    use reqwest::Method;
    for (method, path, token, want) in [
        (Method::GET, "/v2/health/ready", None, StatusCode::OK),
        (Method::GET, "/metrics", None, StatusCode::OK),
        (Method::GET, "/api/v1/model-config", None, StatusCode::OK),
        (Method::POST, "/v2/models/active/infer", None, StatusCode::UNAUTHORIZED),
        (
            Method::POST,
            "/v2/models/active/infer",
            Some(k.read.as_str()),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/v2/models/active/infer",
            Some(k.predict.as_str()),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/v2/models/active",
            Some(k.predict.as_str()),
            StatusCode::FORBIDDEN,
        ),
        (Method::GET, "/v2/models/active", Some(k.read.as_str()), StatusCode::OK),
        (Method::GET, "/api/v1/models", None, StatusCode::UNAUTHORIZED),
        (
            Method::GET,
            "/api/v1/models",
            Some("mdl_wrong"),
            StatusCode::UNAUTHORIZED,
        ),
        (Method::GET, "/api/v1/models", Some(k.read.as_str()), StatusCode::OK),
        (
            Method::POST,
            "/api/v1/predict",
            Some(k.predict.as_str()),
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/api/v1/models/1/activate",
            Some(k.read.as_str()),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/api/v1/models/1/activate",
            Some(k.expired.as_str()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::POST,
            "/api/v1/models/1/activate",
            Some(k.admin.as_str()),
            StatusCode::OK,
        ),
    ] {
        let r = send(method.clone(), path, token).await.unwrap();
        let status = r.status();
        let challenge = r.headers().get("www-authenticate").cloned();
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{method} {path} with {token:?}: {text}");
        if status == StatusCode::UNAUTHORIZED {
            assert!(challenge.is_some_and(|c| c.to_str().unwrap().starts_with("Bearer")));
        }
        if status.is_client_error() {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v.get("error").is_some(), "{text}");
            for t in [&k.admin, &k.predict, &k.read] {
                assert!(!text.contains(t.as_str()), "no token in an error");
            }
        }
    }
}

#[tokio::test]
async fn a_non_loopback_bind_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let root = bundled_models();
    let root = root.to_str().unwrap();
    let refused = run_modeld(
        dir.path(),
        &[],
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--http-listen",
            "off",
            "--database-url",
            &url,
            "--model-root",
            root,
        ],
    )
    .await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("refusing to listen on 0.0.0.0") && refused.stderr.contains("--allow-unauthenticated"),
        "{}",
        refused.stderr
    );
    let refused = run_modeld(
        dir.path(),
        &[],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "0.0.0.0:0",
            "--database-url",
            &url,
            "--model-root",
            root,
        ],
    )
    .await;
    assert_ne!(refused.code, 0, "the HTTP port counts too");
}

/// The token's name is who did it: created_by, changed_by (over what the request says).
#[tokio::test]
async fn the_tokens_name_is_recorded_as_who_did_it() {
    let (server, k) = guarded().await;
    server
        .wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    std::fs::copy(
        server.root.path().join("digits_v1.onnx"),
        server.root.path().join("copy.onnx"),
    )
    .unwrap();
    let r = reqwest::Client::new()
        .post(server.http_url("/api/v1/models"))
        .bearer_auth(&k.admin)
        .json(&serde_json::json!({"model_name": "copy", "file_path": "copy.onnx", "created_by": "someone else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let m: serde_json::Value = r.json().await.unwrap();
    assert_eq!(m["created_by"], "ops");
    let mut reg = server.registry().await;
    reg.set_canary(with(
        pb::SetRolloutRequest {
            model: by_name("copy"),
            percentage: 5,
            changed_by: "claimed".into(),
            ..Default::default()
        },
        Some(&k.admin),
    ))
    .await
    .unwrap();
    let history = reg
        .get_rollout(with(pb::GetRolloutRequest { history_limit: 1 }, Some(&k.read)))
        .await
        .unwrap()
        .into_inner()
        .history;
    assert_eq!(history[0].changed_by, "ops");
}
