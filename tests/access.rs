//! Access control end to end: bearer tokens with scopes on gRPC and HTTP (no token, a bad one,
//! an expired one, each scope), the whole method × credential matrix on the real binary with
//! no token in its log, the tokens file re-read while running, the routes that stay open (and
//! `--protect`), the refused non-loopback bind without tokens; and the bad-input battery whose
//! messages carry no server path and no database text.

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
    // The Open Inference Protocol: infer needs predict, metadata read or predict (a client
    // reads the signature before it calls), load admin.
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
    kserve.model_metadata(with(meta(), Some(&k.predict))).await.unwrap();
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
        // Describing the model is part of predicting (tritonclient and `modeld predict` read
        // the metadata first): read or predict.
        (
            Method::GET,
            "/v2/models/active",
            Some(k.predict.as_str()),
            StatusCode::OK,
        ),
        (Method::GET, "/v2/models/active", Some(k.read.as_str()), StatusCode::OK),
        (Method::GET, "/v2/models/active", None, StatusCode::UNAUTHORIZED),
        (
            Method::GET,
            "/api/v1/models",
            Some(k.predict.as_str()),
            StatusCode::FORBIDDEN,
        ),
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

/// Evaluations record the token's name as evaluated_by.
#[tokio::test]
async fn an_evaluation_records_the_tokens_name() {
    let (server, k) = guarded().await;
    server
        .wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let root = server.root.path();
    std::fs::create_dir(root.join("eval")).unwrap();
    for f in ["digits_x.npy", "digits_y.npy"] {
        std::fs::copy(bundled_models().join("eval").join(f), root.join("eval").join(f)).unwrap();
    }
    let mut reg = server.registry().await;
    let e = reg
        .evaluate_model(with(
            pb::EvaluateModelRequest {
                model: by_name("digits_v1"),
                dataset: Some(pb::Dataset {
                    path: "eval/digits_x.npy".into(),
                    ..Default::default()
                }),
                evaluated_by: "claimed".into(),
                ..Default::default()
            },
            Some(&k.admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.evaluated_by, "ops");
}

/// The tokens file is re-read while the server runs: a token added works, a revoked one stops
/// working, a file that cannot be parsed changes nothing, and a file with no tokens left locks
/// the server rather than opening it.
#[tokio::test]
async fn the_tokens_file_is_re_read_when_it_changes() {
    let mut tokens = Tokens::default();
    let admin = tokens.create("ops", &[Scope::Admin], None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.jsonl");
    tokens.write(&file).unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |c| c.tokens_file = Some(file.clone())).await;
    server
        .wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let infer = server.inference().await;
    let predict = |token: Option<&str>| {
        let mut infer = infer.clone();
        let req = with(digits_request("", &eval_rows(1)), token);
        async move { infer.predict(req).await.map(|_| ()).map_err(|e| e.code()) }
    };
    let within = std::time::Duration::from_secs(30);

    let app = tokens.create("app", &[Scope::Predict], None).unwrap();
    assert_eq!(predict(Some(&app)).await, Err(Code::Unauthenticated), "not yet written");
    tokens.write(&file).unwrap();
    until("a new token works", within, || async {
        predict(Some(&app)).await.is_ok()
    })
    .await;
    assert!(tokens.revoke("ops"));
    tokens.write(&file).unwrap();
    until("a revoked token stops working", within, || async {
        predict(Some(&admin)).await == Err(Code::Unauthenticated)
    })
    .await;
    predict(Some(&app)).await.unwrap();

    // A broken file, then a good one: the broken one never takes the tokens away.
    std::fs::write(&file, "{not a token\n").unwrap();
    let late = tokens.create("late", &[Scope::Predict], None).unwrap();
    let tmp = dir.path().join("next.jsonl");
    tokens.write(&tmp).unwrap();
    assert_eq!(predict(Some(&app)).await, Ok(()), "the tokens read before stay");
    std::fs::rename(&tmp, &file).unwrap();
    until("the next good file is taken", within, || async {
        predict(Some(&late)).await.is_ok()
    })
    .await;

    // Every token revoked: everything but what is open is refused, nothing opens.
    Tokens::default().write(&file).unwrap();
    until("the last token revoked locks", within, || async {
        predict(Some(&app)).await == Err(Code::Unauthenticated)
    })
    .await;
    assert_eq!(predict(None).await, Err(Code::Unauthenticated));
    assert_eq!(
        server.health().await,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );
}

/// A server started with a tokens file that does not exist refuses to start (it would
/// otherwise lock everything, or worse, look configured and not be).
#[tokio::test]
async fn a_missing_tokens_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = model_root();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    let missing = dir.path().join("nope.jsonl");
    let r = run_modeld(
        dir.path(),
        &[],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--database-url",
            &url,
            "--model-root",
            root.path().to_str().unwrap(),
            "--tokens-file",
            missing.to_str().unwrap(),
        ],
    )
    .await;
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("does not exist") && r.stderr.contains("modeld token create"),
        "{r:?}"
    );
}

/// What a method or route needs, as the docs' table says (written out here, not taken from the
/// server's code, so that a change to either shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Open,
    /// Open unless `--protect` names it.
    Protectable,
    Read,
    Predict,
    /// A model's metadata: read or predict.
    Describe,
    Admin,
}

const GRPC: &[(&str, Needs)] = {
    use Needs::*;
    &[
        ("grpc.health.v1.Health/Check", Open),
        ("grpc.health.v1.Health/Watch", Open),
        ("grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Protectable),
        (
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            Protectable,
        ),
        ("modeld.v1.Inference/Predict", Predict),
        ("modeld.v1.ModelRegistry/RegisterModel", Admin),
        ("modeld.v1.ModelRegistry/ListModels", Read),
        ("modeld.v1.ModelRegistry/GetModel", Read),
        ("modeld.v1.ModelRegistry/GetActiveModel", Read),
        ("modeld.v1.ModelRegistry/UpdateModel", Admin),
        ("modeld.v1.ModelRegistry/ActivateModel", Admin),
        ("modeld.v1.ModelRegistry/RollbackModel", Admin),
        ("modeld.v1.ModelRegistry/DeleteModel", Admin),
        ("modeld.v1.ModelRegistry/GetServerStatus", Read),
        ("modeld.v1.ModelRegistry/ListServers", Read),
        ("modeld.v1.ModelRegistry/WatchEvents", Read),
        ("modeld.v1.ModelRegistry/EvaluateModel", Admin),
        ("modeld.v1.ModelRegistry/CompareModels", Admin),
        ("modeld.v1.ModelRegistry/SetCanary", Admin),
        ("modeld.v1.ModelRegistry/ClearCanary", Admin),
        ("modeld.v1.ModelRegistry/SetShadow", Admin),
        ("modeld.v1.ModelRegistry/ClearShadow", Admin),
        ("modeld.v1.ModelRegistry/Promote", Admin),
        ("modeld.v1.ModelRegistry/GetRollout", Read),
        ("modeld.v1.ModelRegistry/GetModelConfig", Protectable),
        ("modeld.v1.ModelRegistry/CreateDownloadUrl", Read),
        ("modeld.v1.ModelRegistry/DownloadModel", Read),
        ("inference.GRPCInferenceService/ServerLive", Open),
        ("inference.GRPCInferenceService/ServerReady", Open),
        ("inference.GRPCInferenceService/ModelReady", Describe),
        ("inference.GRPCInferenceService/ServerMetadata", Describe),
        ("inference.GRPCInferenceService/ModelMetadata", Describe),
        ("inference.GRPCInferenceService/ModelInfer", Predict),
        ("inference.GRPCInferenceService/ModelStreamInfer", Predict),
        ("inference.GRPCInferenceService/ModelConfig", Describe),
        ("inference.GRPCInferenceService/ModelStatistics", Read),
        ("inference.GRPCInferenceService/RepositoryIndex", Read),
        ("inference.GRPCInferenceService/RepositoryModelLoad", Admin),
        ("inference.GRPCInferenceService/RepositoryModelUnload", Admin),
    ]
};

const HTTP: &[(&str, &str, Needs)] = {
    use Needs::*;
    &[
        ("GET", "/v2/health/live", Open),
        ("GET", "/v2/health/ready", Open),
        ("GET", "/api/v1/openapi.json", Open),
        ("OPTIONS", "/api/v1/models", Open),
        ("GET", "/metrics", Protectable),
        ("GET", "/api/v1/model-config", Protectable),
        ("POST", "/api/v1/model-config", Protectable),
        ("GET", "/api/v1/models/1/download", Protectable),
        ("GET", "/v2", Describe),
        ("GET", "/v2/models/stats", Read),
        ("POST", "/v2/repository/index", Read),
        ("GET", "/v2/models/digits_v2", Describe),
        ("GET", "/v2/models/digits_v2/ready", Describe),
        ("GET", "/v2/models/digits_v2/config", Describe),
        ("GET", "/v2/models/digits_v2/stats", Read),
        ("GET", "/v2/models/digits_v2/versions/2", Describe),
        ("GET", "/v2/models/digits_v2/versions/2/ready", Describe),
        ("POST", "/v2/models/digits_v2/infer", Predict),
        ("POST", "/v2/models/digits_v2/versions/2/infer", Predict),
        ("POST", "/v2/repository/models/digits_v1/load", Admin),
        ("POST", "/v2/repository/models/digits_v1/unload", Admin),
        ("GET", "/api/v1/models", Read),
        ("POST", "/api/v1/models", Admin),
        ("GET", "/api/v1/models/active", Read),
        ("POST", "/api/v1/models/rollback", Admin),
        ("GET", "/api/v1/models/1", Read),
        ("PUT", "/api/v1/models/1", Admin),
        ("DELETE", "/api/v1/models/3", Admin),
        ("POST", "/api/v1/models/1/activate", Admin),
        ("POST", "/api/v1/models/1/download-url", Read),
        ("GET", "/api/v1/rollout", Read),
        ("PUT", "/api/v1/rollout/canary", Admin),
        ("DELETE", "/api/v1/rollout/canary", Admin),
        ("PUT", "/api/v1/rollout/shadow", Admin),
        ("DELETE", "/api/v1/rollout/shadow", Admin),
        ("POST", "/api/v1/rollout/promote", Admin),
        ("POST", "/api/v1/predict", Predict),
        ("GET", "/api/v1/events", Read),
        ("GET", "/api/v1/status", Read),
        ("GET", "/api/v1/servers", Read),
        ("GET", "/api/v1/stats", Read),
        ("GET", "/api/v1/evaluations", Read),
        ("GET", "/api/v1/models/1/activations", Read),
        ("GET", "/api/v1/models/1/evaluations", Read),
        ("POST", "/api/v1/models/1/evaluate", Admin),
        // The admin page checks its own session (tests/admin.rs).
        ("GET", "/admin", Open),
        ("GET", "/no/such/route", Read),
        ("POST", "/no/such/route", Admin),
    ]
};

/// The credentials of the matrix: none, a token the server does not know, each scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    None,
    Bad,
    Read,
    Predict,
    Admin,
}

/// What a request with `cred` to something that `needs` gets: `None` passes the access check,
/// `Some(401)` or `Some(403)` does not.
fn expected(needs: Needs, protected: bool, cred: Cred) -> Option<u16> {
    let needs = match needs {
        Needs::Protectable if protected => Needs::Read,
        Needs::Protectable => Needs::Open,
        n => n,
    };
    match (needs, cred) {
        (Needs::Open, _) => None,
        (_, Cred::None | Cred::Bad) => Some(401),
        (_, Cred::Admin) => None,
        (Needs::Read, Cred::Read) | (Needs::Predict, Cred::Predict) => None,
        (Needs::Describe, Cred::Read | Cred::Predict) => None,
        _ => Some(403),
    }
}

/// Runs every gRPC method and HTTP route of a real `modeld serve` binary with every credential,
/// and returns the server's log lines.
async fn run_matrix(protect: bool) -> (Vec<String>, Vec<String>, usize) {
    let mut tokens = Tokens::default();
    let keys = [
        (Cred::Read, tokens.create("dashboard", &[Scope::Read], None).unwrap()),
        (Cred::Predict, tokens.create("app", &[Scope::Predict], None).unwrap()),
        (Cred::Admin, tokens.create("ops", &[Scope::Admin], None).unwrap()),
    ];
    let bad = format!("mdl_{}", "0".repeat(64));
    let secrets: Vec<String> = keys.iter().map(|(_, t)| t.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.jsonl");
    tokens.write(&file).unwrap();
    let signing = dir.path().join("signing.key");
    std::fs::write(&signing, "k1:0123456789abcdef0123456789abcdef\n").unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let mut extra = vec![
        "--tokens-file".to_string(),
        file.to_str().unwrap().to_string(),
        "--signing-key-file".into(),
        signing.to_str().unwrap().into(),
    ];
    if protect {
        extra.extend(["--protect".into(), "model-config,downloads,metrics,reflection".into()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    // Debug logs from every crate: the test looks for tokens in all of it.
    let server = LoggedServer::start(&db.url, root.path(), &extra, &[("MODELD_LOG", "debug")]).await;
    let http_addr = server.http.clone();
    let channel = server.channel().await;
    let token_of = |cred: Cred| -> Option<String> {
        match cred {
            Cred::None => None,
            Cred::Bad => Some(bad.clone()),
            c => keys.iter().find(|(k, _)| *k == c).map(|(_, t)| t.clone()),
        }
    };
    // Every method the server's descriptors name is in the table, and only those.
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(modeld::api::FILE_DESCRIPTOR_SET).unwrap();
    let mut served: Vec<(String, bool, bool)> = set
        .file
        .iter()
        .flat_map(|f| {
            let package = f.package().to_string();
            f.service.iter().flat_map(move |s| {
                let package = package.clone();
                s.method.iter().map(move |m| {
                    (
                        format!("{package}.{}/{}", s.name(), m.name()),
                        m.client_streaming(),
                        m.server_streaming(),
                    )
                })
            })
        })
        .collect();
    served.push(("grpc.health.v1.Health/Check".into(), false, false));
    served.push(("grpc.health.v1.Health/Watch".into(), false, true));
    for v in ["v1", "v1alpha"] {
        served.push((
            format!("grpc.reflection.{v}.ServerReflection/ServerReflectionInfo"),
            true,
            true,
        ));
    }
    let mut names: Vec<&str> = served.iter().map(|s| s.0.as_str()).collect();
    names.sort_unstable();
    let mut table: Vec<&str> = GRPC.iter().map(|g| g.0).collect();
    table.sort_unstable();
    assert_eq!(names, table, "every gRPC method is in the matrix");

    let creds = [Cred::None, Cred::Bad, Cred::Predict, Cred::Read, Cred::Admin];
    let mut ids = Vec::new();
    let mut refusals = 0;
    for (method, client_streaming, server_streaming) in &served {
        let needs = GRPC.iter().find(|g| g.0 == method).unwrap().1;
        for cred in creds {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let path: http::uri::PathAndQuery = format!("/{method}").parse().unwrap();
            let codec = tonic_prost::ProstCodec::<(), ()>::default();
            let token = token_of(cred);
            let got = match (client_streaming, server_streaming) {
                (false, false) => grpc
                    .unary(with((), token.as_deref()), path, codec)
                    .await
                    .map(|r| r.metadata().clone()),
                (false, true) => grpc
                    .server_streaming(with((), token.as_deref()), path, codec)
                    .await
                    .map(|r| r.metadata().clone()),
                _ => grpc
                    .streaming(
                        with(tokio_stream::iter(Vec::<()>::new()), token.as_deref()),
                        path,
                        codec,
                    )
                    .await
                    .map(|r| r.metadata().clone()),
            };
            let refused = match &got {
                Err(s) if s.code() == Code::Unauthenticated => Some(401),
                Err(s) if s.code() == Code::PermissionDenied => Some(403),
                _ => None,
            };
            refusals += usize::from(refused.is_some());
            assert_eq!(
                refused,
                expected(needs, protect, cred),
                "gRPC {method} with {cred:?} (protect {protect}): {got:?}"
            );
            let md = match &got {
                Ok(md) => md.clone(),
                Err(s) => s.metadata().clone(),
            };
            if let Some(id) = md.get("x-request-id") {
                ids.push(id.to_str().unwrap().to_string());
            }
        }
    }
    assert!(ids.len() > served.len() * 3, "responses carry their request id");

    let client = reqwest::Client::new();
    let infer_body =
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": eval_rows(1)}]});
    // Every route of the REST API's own OpenAPI document is in the table.
    let doc: serde_json::Value = client
        .get(format!("http://{http_addr}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{model_id}", "1");
            let m = method.to_uppercase();
            assert!(
                HTTP.iter().any(|(hm, hp, _)| *hm == m
                    && (*hp == concrete
                        || (m == "DELETE" && *hp == "/api/v1/models/3" && concrete == "/api/v1/models/1"))),
                "{m} {path} is not in the matrix"
            );
        }
    }
    for (method, path, needs) in HTTP {
        for cred in creds {
            let mut r = client.request(method.parse().unwrap(), format!("http://{http_addr}{path}"));
            if *method == "OPTIONS" {
                r = r
                    .header("origin", "https://app.example")
                    .header("access-control-request-method", "GET");
            } else if path.ends_with("infer") || path.ends_with("predict") {
                r = r.json(&infer_body);
            } else if *method != "GET" && *method != "DELETE" {
                r = r.json(&serde_json::json!({}));
            }
            if let Some(t) = token_of(cred) {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let www = resp.headers().contains_key("www-authenticate");
            assert!(
                resp.headers().contains_key("x-request-id"),
                "{method} {path}: no request id"
            );
            // The event stream does not end: its status is the answer.
            let body = if status == 200 && path.starts_with("/api/v1/events") {
                assert_eq!(resp.headers()["content-type"], "text/event-stream");
                String::new()
            } else {
                resp.text().await.unwrap()
            };
            let refused = match status {
                401 if www => Some(401),
                403 if body.contains("this needs the") => Some(403),
                _ => None,
            };
            refusals += usize::from(refused.is_some());
            assert_eq!(
                refused,
                expected(*needs, protect, cred),
                "HTTP {method} {path} with {cred:?} (protect {protect}): {status} {body}"
            );
            for s in &secrets {
                assert!(!body.contains(s.as_str()), "a response carries a token");
            }
        }
    }
    let log = server.stop().await;
    let mut all_secrets = secrets;
    all_secrets.push(bad);
    (log, all_secrets, refusals)
}

/// The whole matrix — every gRPC method and HTTP route × no token, a bad one, each scope — on
/// a real binary logging at debug, with the open endpoints open and then with `--protect`; no
/// token appears in any line of either server's log, and refusals are logged, rate-limited.
#[tokio::test]
async fn every_method_and_route_by_every_credential_and_no_token_in_the_log() {
    for protect in [false, true] {
        let (log, secrets, refused) = run_matrix(protect).await;
        assert!(log.len() > 50, "the server logged: {}", log.len());
        for line in &log {
            for s in &secrets {
                assert!(
                    !line.contains(s.as_str()) && !line.contains(&s[4..]),
                    "a token in the log: {line}"
                );
            }
        }
        let logged = log.iter().filter(|l| l.contains("access_denied")).count();
        // 10 lines of a kind every 10 s; the matrix refuses hundreds of requests in a few.
        assert!(
            logged >= 1 && logged * 4 < refused,
            "refusals are logged, rate-limited: {logged} lines for {refused} refusals"
        );
    }
}

// The bad-input battery, on both transports of a real binary: every error message is free of
// the model root's absolute path and of database text, and one the server cannot explain
// without internals (a registry table gone) carries a request id that finds the detail in the
// server's log.
on_both!(no_error_message_carries_a_server_path_or_database_text);

async fn no_error_message_carries_a_server_path_or_database_text(backend: Backend) {
    let db = TestDb::new(backend).await;
    let root = model_root();
    let abs = root.path().canonicalize().unwrap().to_str().unwrap().to_string();
    std::fs::write(root.path().join("notes.txt"), "not a model").unwrap();
    std::fs::create_dir(root.path().join("eval")).unwrap();
    std::fs::write(root.path().join("eval/bad.npy"), "not an array").unwrap();
    let server = LoggedServer::start(&db.url, root.path(), &[], &[]).await;
    let channel = server.channel().await;
    let mut reg = pb::model_registry_client::ModelRegistryClient::new(channel.clone());
    let mut infer = pb::inference_client::InferenceClient::new(channel.clone());
    let mut kserve = modeld::api::kserve_pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
    let mut said: Vec<(String, String)> = Vec::new();
    // A message may quote what the client sent (an absolute path it gave): that is taken out
    // before the check, the rest must not name the server's paths.
    let mut grpc = |what: &str, r: Result<(), tonic::Status>| {
        let e = r.expect_err(what);
        let message = e.message().replace(&format!("{abs}/digits_v1.onnx"), "<sent>");
        said.push((
            what.to_string(),
            message.replace(&format!("{abs}/eval/bad.npy"), "<sent>"),
        ));
    };
    let register = |name: &str, path: &str| pb::RegisterModelRequest {
        name: name.into(),
        version: "9".into(),
        file_path: path.into(),
        ..Default::default()
    };
    for (what, req) in [
        ("register an absolute path", register("x", "/etc/passwd")),
        ("register outside the root", register("x", "../outside.onnx")),
        (
            "register under the root, absolute",
            register("x", &format!("{abs}/digits_v1.onnx")),
        ),
        ("register a missing file", register("x", "nope.onnx")),
        ("register a file that is not a model", register("x", "notes.txt")),
        ("register a taken name", register("digits_v1", "digits_v1.onnx")),
        ("register an empty name", register("", "digits_v1.onnx")),
        (
            "register and activate a file that is not a model",
            pb::RegisterModelRequest {
                activate: true,
                ..register("y", "notes.txt")
            },
        ),
    ] {
        grpc(what, reg.register_model(req).await.map(|_| ()));
    }
    grpc(
        "activate a missing model",
        reg.activate_model(activate_req("nobody")).await.map(|_| ()),
    );
    grpc(
        "delete the active model",
        reg.delete_model(pb::DeleteModelRequest {
            model: by_name("digits_v2"),
        })
        .await
        .map(|_| ()),
    );
    grpc(
        "get a missing id",
        reg.get_model(pb::GetModelRequest {
            model: Some(pb::ModelRef {
                r#ref: Some(pb::model_ref::Ref::ModelId(999)),
            }),
        })
        .await
        .map(|_| ()),
    );
    for path in [
        "/etc/passwd",
        "../x.npy",
        "eval/missing.npy",
        "eval/bad.npy",
        &format!("{abs}/eval/bad.npy"),
    ] {
        grpc(
            &format!("evaluate on {path}"),
            reg.evaluate_model(pb::EvaluateModelRequest {
                model: by_name("digits_v1"),
                dataset: Some(pb::Dataset {
                    path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        );
    }
    grpc(
        "canary at 150%",
        reg.set_canary(pb::SetRolloutRequest {
            model: by_name("digits_v1"),
            percentage: 150,
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    let mut wrong_shape = digits_request("", &eval_rows(1));
    wrong_shape.inputs[0].shape = vec![1, 63];
    grpc("predict a wrong shape", infer.predict(wrong_shape).await.map(|_| ()));
    grpc(
        "predict an unknown model",
        infer.predict(digits_request("nobody", &eval_rows(1))).await.map(|_| ()),
    );
    let mut short = kserve_request("digits_v2", &eval_rows(1));
    short.raw_input_contents[0].truncate(10);
    grpc("infer short raw data", kserve.model_infer(short).await.map(|_| ()));
    grpc(
        "load an unknown model",
        kserve
            .repository_model_load(modeld::api::kserve_pb::RepositoryModelLoadRequest {
                model_name: "nobody".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );

    let http = reqwest::Client::new();
    for (what, method, path, body) in [
        (
            "REST register an absolute path",
            "POST",
            "/api/v1/models",
            serde_json::json!({"model_name": "x", "file_path": "/etc/passwd"}),
        ),
        (
            "REST register a taken name",
            "POST",
            "/api/v1/models",
            serde_json::json!({"model_name": "digits_v1", "file_path": "digits_v1.onnx"}),
        ),
        (
            "REST register a file that is not a model",
            "POST",
            "/api/v1/models",
            serde_json::json!({"model_name": "x", "file_path": "notes.txt"}),
        ),
        (
            "REST update a missing id",
            "PUT",
            "/api/v1/models/999",
            serde_json::json!({"version": "3"}),
        ),
        (
            "REST an unknown field",
            "POST",
            "/api/v1/models",
            serde_json::json!({"nope": 1}),
        ),
        (
            "OIP infer a wrong shape",
            "POST",
            "/v2/models/digits_v2/infer",
            serde_json::json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
        ),
        (
            "OIP load an unknown model",
            "POST",
            "/v2/repository/models/nobody/load",
            serde_json::json!({}),
        ),
    ] {
        let r = http
            .request(method.parse().unwrap(), server.http_url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{what}: {}", r.status());
        said.push((what.to_string(), r.text().await.unwrap()));
    }
    let r = http
        .post(server.http_url("/v2/models/digits_v2/infer"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    said.push(("OIP malformed JSON".into(), r.text().await.unwrap()));

    // A registry table gone: the server cannot explain it without internals.
    sql(&db.url, "DROP TABLE rollout_changes").await.unwrap();
    let e = reg
        .get_rollout(pb::GetRolloutRequest { history_limit: 5 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    let id = e.metadata().get("x-request-id").unwrap().to_str().unwrap().to_string();
    assert!(e.message().contains(&id), "{e:?}");
    said.push(("a table gone".into(), e.message().to_string()));

    let internals = [
        abs.as_str(),
        "/tmp/",
        "SELECT",
        "INSERT",
        "UPDATE ml_",
        "rollout_changes",
        "no such table",
        "UNIQUE constraint",
        "violates",
        "SQLSTATE",
        "error returned from database",
        "sqlite",
        "sqlx",
        "relation",
        "postgres",
        "127.0.0.1:5432",
    ];
    for (what, message) in &said {
        assert!(!message.is_empty(), "{what}: an empty message");
        for i in internals {
            assert!(!message.contains(i), "{what}: {message:?} carries {i:?}");
        }
    }
    assert!(said.len() >= 25, "{}", said.len());
    let log = server.stop().await;
    assert!(
        log.iter().any(|l| l.contains(&id) && l.contains("rollout_changes")),
        "the log has the detail under the request id"
    );
}
