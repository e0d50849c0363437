//! The rollout end to end: canary routing by key, promote, and every server of a fleet
//! following the registry's canary.

mod common;

use common::*;
use modeld::api::pb;
use tonic::Code;

fn set_req(name: &str, percentage: u32) -> pb::SetRolloutRequest {
    pb::SetRolloutRequest {
        model: by_name(name),
        percentage,
        changed_by: "test".into(),
        ..Default::default()
    }
}

fn keyed(key: &str) -> pb::PredictRequest {
    let mut r = digits_request("", &eval_rows(1));
    r.routing_key = key.into();
    r
}

/// Which keys of `keys` the server routes to the canary (32 requests in flight).
async fn canary_keys(
    infer: &mut pb::inference_client::InferenceClient<tonic::transport::Channel>,
    keys: &[String],
) -> Vec<bool> {
    use futures_util::StreamExt;
    let calls = keys.iter().map(|k| {
        let mut c = infer.clone();
        let req = keyed(k);
        async move { c.predict(req).await.unwrap().into_inner() }
    });
    futures_util::stream::iter(calls)
        .buffered(32)
        .map(|r| {
            assert!(
                matches!(
                    (r.role.as_str(), r.model_name.as_str()),
                    ("canary", "digits_v1") | ("active", "digits_v2")
                ),
                "{r:?}"
            );
            r.role == "canary"
        })
        .collect()
        .await
}

/// A canary serves its percentage of the alias's requests, by routing key: on 10 000 keys the
/// share is within 2 points, the same key lands on the same model, raising the percentage only
/// moves keys to the canary, a name is never rerouted, and the Open Inference Protocol routes
/// by its `routing_key` parameter alike. `promote` makes it the active model.
async fn a_canary_takes_its_share_by_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut reg = server.registry().await;
    let mut infer = server.inference().await;
    let rollout = reg.set_canary(set_req("digits_v1", 10)).await.unwrap().into_inner();
    assert_eq!(rollout.canary.as_ref().unwrap().model_name, "digits_v1");
    assert_eq!(rollout.canary.as_ref().unwrap().rollout_percentage, 10);
    assert_eq!(rollout.canary.as_ref().unwrap().status, "canary");
    let status = server.status().await;
    let serving = status.rollout.unwrap();
    assert_eq!(
        (serving.canary.unwrap().model_name.as_str(), serving.canary_percentage),
        ("digits_v1", 10)
    );

    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let tolerance = 2.0;
    let at10 = canary_keys(&mut infer, &keys).await;
    let share = at10.iter().filter(|c| **c).count() as f64 * 100.0 / keys.len() as f64;
    assert!((share - 10.0).abs() <= tolerance, "{share}% at 10%");
    assert_eq!(
        canary_keys(&mut infer, &keys[..500]).await,
        at10[..500],
        "the same key, the same model"
    );
    // Named requests are pinned.
    for name in ["digits_v2", "digits_v1"] {
        let mut r = digits_request(name, &eval_rows(1));
        r.routing_key = "user-1".into();
        assert_eq!(infer.predict(r).await.unwrap().into_inner().model_name, name);
    }

    reg.set_canary(set_req("digits_v1", 50)).await.unwrap();
    let at50 = canary_keys(&mut infer, &keys).await;
    let share = at50.iter().filter(|c| **c).count() as f64 * 100.0 / keys.len() as f64;
    assert!((share - 50.0).abs() <= tolerance, "{share}% at 50%");
    assert!(
        at10.iter().zip(&at50).all(|(a, b)| !a || *b),
        "raising it only moves keys to the canary"
    );

    // The Open Inference Protocol: the routing_key parameter, and the role in the response.
    let mut kserve = server.kserve().await;
    for (i, key) in keys[..200].iter().enumerate() {
        let mut req = kserve_request("active", &eval_rows(1));
        req.parameters.insert(
            "routing_key".into(),
            modeld::api::kserve_pb::InferParameter {
                parameter_choice: Some(modeld::api::kserve_pb::infer_parameter::ParameterChoice::StringParam(
                    key.clone(),
                )),
            },
        );
        let r = kserve.model_infer(req).await.unwrap().into_inner();
        let role = match r.parameters["role"].parameter_choice.as_ref() {
            Some(modeld::api::kserve_pb::infer_parameter::ParameterChoice::StringParam(s)) => s.clone(),
            other => panic!("role {other:?}"),
        };
        assert_eq!(role == "canary", at50[i], "{key}");
        assert_eq!(r.model_name, if at50[i] { "digits_v1" } else { "digits_v2" });
    }

    // Bad changes are refused and change nothing.
    for (req, code, says) in [
        (
            set_req("digits_v2", 10),
            Code::FailedPrecondition,
            "is the active model",
        ),
        (set_req("digits_v1", 101), Code::InvalidArgument, "0 to 100"),
        (set_req("nope", 10), Code::NotFound, "not registered"),
        (set_req("cnn", 10), Code::FailedPrecondition, "would break the clients"),
    ] {
        let e = reg.set_canary(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(says), "{says:?} in {}", e.message());
    }
    let rollout = reg
        .get_rollout(pb::GetRolloutRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rollout
            .canary
            .as_ref()
            .map(|c| (c.model_name.as_str(), c.rollout_percentage)),
        Some(("digits_v1", 50))
    );

    // Promote: the canary is the active model, with a history row.
    let done = reg
        .promote(pb::PromoteRequest {
            activated_by: "test".into(),
            reason: "good canary".into(),
            wait_ms: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.active.unwrap().model_name, "digits_v1");
    assert_eq!(
        done.load_time_ms, 0.0,
        "promoted from the canary the server holds, not loaded again"
    );
    server.wait_serving("digits_v1").await;
    let status = server.status().await;
    assert!(status.rollout.unwrap().canary.is_none());
    let rollout = reg
        .get_rollout(pb::GetRolloutRequest { history_limit: 3 })
        .await
        .unwrap()
        .into_inner();
    assert!(rollout.canary.is_none());
    let moves: Vec<(Option<u32>, Option<u32>, &str)> = rollout
        .history
        .iter()
        .map(|c| (c.percentage_before, c.percentage_after, c.reason.as_str()))
        .collect();
    assert_eq!(
        moves,
        vec![
            (Some(50), None, "activated: good canary"),
            (Some(10), Some(50), ""),
            (None, Some(10), "")
        ],
        "the refused changes left no row"
    );
    assert!(
        rollout
            .history
            .iter()
            .all(|c| c.model_name == "digits_v1" && c.role == "canary")
    );
    for k in &keys[..50] {
        let r = infer.predict(keyed(k)).await.unwrap().into_inner();
        assert_eq!((r.model_name.as_str(), r.role.as_str()), ("digits_v1", "active"));
    }
    let old = reg
        .get_model(pb::GetModelRequest {
            model: by_name("digits_v2"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.status, "deprecated");
    assert!(old.deprecated_at.is_some());
    let e = reg.promote(pb::PromoteRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("no canary"), "{}", e.message());
}

on_both!(a_canary_takes_its_share_by_key);

/// Two servers on one PostgreSQL registry: a canary set through the CLI reaches both, they
/// route every key alike, and a clear reaches both.
#[tokio::test]
async fn two_servers_agree_on_the_canary_and_the_shadow() {
    let a = TestServer::start(Backend::Postgres).await;
    let root = model_root();
    let b = TestServer::start_on(TestDb::shared(&a.db), root, |_| {}).await;
    b.wait_serving("digits_v2").await;
    let (ok, out, err) = modeld_cli(
        &a.db.url,
        a.root.path(),
        &["canary", "set", "digits_v1", "--percentage", "30", "--reason", "try v1"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("canary: \"digits_v1\"") && out.contains("at 30%"), "{out}");
    for s in [&a, &b] {
        s.wait_status("the canary served", |st| {
            st.rollout
                .as_ref()
                .is_some_and(|r| r.canary.is_some() && r.canary_percentage == 30)
        })
        .await;
    }
    let keys: Vec<String> = (0..300).map(|i| format!("device-{i}")).collect();
    let on_a = canary_keys(&mut a.inference().await, &keys).await;
    let on_b = canary_keys(&mut b.inference().await, &keys).await;
    assert_eq!(on_a, on_b, "every server routes a key alike");
    assert!(on_a.iter().any(|c| *c) && on_a.iter().any(|c| !*c));

    let metrics = b.metrics().await;
    assert!(
        metrics.contains("modeld_rollout_percentage{role=\"canary\",model_id=\"1\",model=\"digits_v1\"} 30"),
        "{metrics}"
    );
    // The shadow too.
    let (ok, _, err) = modeld_cli(&a.db.url, a.root.path(), &["shadow", "set", "digits_v2", "-p", "25"]).await;
    assert!(!ok && err.contains("is the active model"), "{err}");
    let (ok, out, err) = modeld_cli(
        &a.db.url,
        a.root.path(),
        &["shadow", "set", "cnn", "-p", "25", "--allow-signature-change"],
    )
    .await;
    assert!(
        ok && out.contains("shadow: \"cnn\"") && out.contains("at 25%"),
        "{out}{err}"
    );
    for s in [&a, &b] {
        s.wait_status("the shadow served", |st| {
            st.rollout
                .as_ref()
                .is_some_and(|r| r.shadow.as_ref().is_some_and(|m| m.model_name == "cnn") && r.shadow_percentage == 25)
        })
        .await;
    }
    let (ok, _, err) = modeld_cli(&a.db.url, a.root.path(), &["shadow", "clear"]).await;
    assert!(ok, "{err}");
    let (ok, out, err) = modeld_cli(&a.db.url, a.root.path(), &["canary", "show"]).await;
    assert!(ok && out.contains("at 30%"), "{out}{err}");
    assert!(
        out.contains("recent changes, newest first:") && out.contains("\"digits_v1\"  - -> 30%: try v1"),
        "the rollout history: {out}"
    );
    let (ok, out, err) = modeld_cli(&a.db.url, a.root.path(), &["shadow", "show", "--json"]).await;
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let moves: Vec<(String, serde_json::Value, serde_json::Value)> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["model_name"].as_str().unwrap().to_string(),
                c["percentage_before"].clone(),
                c["percentage_after"].clone(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            ("cnn".to_string(), serde_json::json!(25), serde_json::Value::Null),
            ("cnn".to_string(), serde_json::Value::Null, serde_json::json!(25))
        ],
        "the shadow's own changes, newest first; the refused set left none: {out}"
    );
    assert!(shown["model"].is_null());
    let (ok, out, err) = modeld_cli(&a.db.url, a.root.path(), &["canary", "clear"]).await;
    assert!(ok && out.contains("canary cleared"), "{out}{err}");
    for s in [&a, &b] {
        s.wait_status("the canary gone", |st| {
            st.rollout.as_ref().is_some_and(|r| r.canary.is_none())
        })
        .await;
    }
    let after = canary_keys(&mut b.inference().await, &keys).await;
    assert!(after.iter().all(|c| !*c));
}

/// The shadow runs its share of the requests after the caller's answer, and the caller only
/// ever gets the serving model's answer; its figures (mirrored, agreement with the serving
/// model, output differences) show in GetServerStatus and the metrics.
#[tokio::test]
async fn the_shadow_never_changes_an_answer() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut reg = server.registry().await;
    let mut infer = server.inference().await;
    reg.set_shadow(set_req("digits_v1", 100)).await.unwrap();
    server
        .wait_status("the shadow served", |s| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.shadow.is_some() && r.shadow_percentage == 100)
        })
        .await;
    let want = expected_probs("digits_v2", 32);
    for i in 0..200 {
        let rows = eval_rows(32);
        let row = i % 32;
        let r = infer
            .predict(digits_request("", &rows[row * 64..(row + 1) * 64]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.model_name.as_str(), r.role.as_str()), ("digits_v2", "active"));
        assert_close(&raw_f32(&r.outputs[0].raw_data), &want[row * 10..(row + 1) * 10], 1e-5);
    }
    let (status, _) = server
        .wait_status("every mirrored request accounted for", |s| {
            s.rollout
                .as_ref()
                .and_then(|r| r.shadows.first())
                .is_some_and(|f| f.mirrored + f.dropped == 200)
        })
        .await;
    let f = &status.rollout.unwrap().shadows[0];
    assert_eq!(f.model_name, "digits_v1");
    assert!(f.mirrored > 0 && f.errors == 0, "{f:?}");
    assert_eq!(f.rows_compared, f.mirrored, "one row each");
    // digits_v1 (logistic regression) and digits_v2 (MLP) agree on most rows, not all.
    assert!(f.agreement > 0.7 && f.agreement <= 1.0, "{f:?}");
    assert!(
        f.max_abs_diff > 0.0 && f.mean_abs_diff > 0.0 && f.mean_abs_diff <= f.max_abs_diff,
        "{f:?}"
    );
    let (ok, out, err) = modeld_cli(
        &server.db.url,
        server.root.path(),
        &["status", "--server", &server.url()],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("shadow    \"digits_v1\"") && out.contains("at 100%") && out.contains("top-1 agreement"),
        "{out}"
    );
    assert!(
        out.contains("guard     active \"digits_v2\": 200 requests, 0 failed (0.00%)")
            && out.contains("rolls back at error rate above 0.05 after 100 requests"),
        "the guard's window: {out}"
    );
    assert!(f.calls > 0 && f.calls <= f.mirrored, "{f:?}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(&format!(
            "modeld_shadow_mirrored_total{{model_id=\"1\",model=\"digits_v1\"}} {}",
            f.mirrored
        )),
        "{metrics}"
    );

    // A shadow whose inputs do not fit the requests is refused.
    let e = reg.set_shadow(set_req("cnn", 10)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("cannot take the requests"), "{}", e.message());
    // A model in a rollout role cannot be deleted.
    let e = reg
        .delete_model(pb::DeleteModelRequest {
            model: by_name("digits_v1"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("is the shadow; clear it first"), "{}", e.message());
    reg.clear_shadow(pb::ClearRolloutRequest::default()).await.unwrap();
    server
        .wait_status("the shadow gone", |s| {
            s.rollout.as_ref().is_some_and(|r| r.shadow.is_none())
        })
        .await;
}

/// A shadow slower than the traffic, with a queue of one: its work is dropped and counted, and
/// no caller is ever refused or answered by it.
#[tokio::test]
async fn a_full_shadow_queue_never_refuses_a_caller() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    // About 8 M multiply-adds a row: far slower than the digits model it shadows.
    synth::write_mlp(&root.path().join("slow.onnx"), &[64, 2000, 2000, 10], 5);
    let server = TestServer::start_on(db, root, |c| {
        c.shadow.shadow_queue = 1;
        c.shadow.shadow_threads = 1;
    })
    .await;
    server
        .wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let mut reg = server.registry().await;
    reg.register_model(pb::RegisterModelRequest {
        name: "slow".into(),
        file_path: "slow.onnx".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    reg.set_shadow(set_req("slow", 100)).await.unwrap();
    server
        .wait_status("the shadow served", |s| {
            s.rollout.as_ref().is_some_and(|r| r.shadow.is_some())
        })
        .await;
    let keys: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
    let on_canary = canary_keys(&mut server.inference().await, &keys).await;
    assert!(on_canary.iter().all(|c| !*c), "every answer is the active model's");
    let (status, _) = server
        .wait_status("every mirrored request accounted for", |s| {
            s.rollout
                .as_ref()
                .and_then(|r| r.shadows.first())
                .is_some_and(|f| f.mirrored + f.dropped == 400)
        })
        .await;
    let f = &status.rollout.unwrap().shadows[0];
    assert!(f.dropped > 0, "a queue of one behind a slow shadow drops: {f:?}");
    assert!(f.mirrored > 0, "{f:?}");
    assert_eq!(f.rows_compared, 0, "no output of the same name to compare: {f:?}");
}

/// The bucket of a routing key as a client computes it (docs/rollout.md): FNV-1a 64, mod 100.
fn bucket(key: &str) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % 100) as u8
}

/// The first `n` routing keys `u0`, `u1`, … whose bucket is below `percentage`: keys a canary at
/// that percentage serves.
fn keys_below(percentage: u8, n: usize) -> Vec<String> {
    (0..100 * n)
        .map(|i| format!("u{i}"))
        .filter(|k| bucket(k) < percentage)
        .take(n)
        .collect()
}

/// Sets `name` as the canary at `percentage` and waits until `server` serves it.
async fn set_canary_and_wait(
    server: &TestServer,
    reg: &mut pb::model_registry_client::ModelRegistryClient<tonic::transport::Channel>,
    name: &str,
    percentage: u32,
) {
    reg.set_canary(set_req(name, percentage)).await.unwrap();
    server
        .wait_status("the canary served", |s| {
            s.rollout.as_ref().is_some_and(|r| {
                r.canary.as_ref().is_some_and(|c| c.model_name == name) && r.canary_percentage == percentage
            })
        })
        .await;
}

/// A lookup request (models/testdata/lookup.onnx): index 42 is outside the table and fails
/// inside the engine; `bad_input` sends the wrong datatype (the caller's mistake).
fn lookup(key: &str, index: i64, bad_input: bool) -> pb::PredictRequest {
    pb::PredictRequest {
        model_name: String::new(),
        inputs: vec![if bad_input {
            pb::Tensor {
                name: "index".into(),
                datatype: "FP32".into(),
                shape: vec![1, 1],
                fp32_data: vec![1.0],
                ..Default::default()
            }
        } else {
            pb::Tensor {
                name: "index".into(),
                datatype: "INT64".into(),
                shape: vec![1, 1],
                int64_data: vec![index],
                ..Default::default()
            }
        }],
        routing_key: key.into(),
    }
}

fn policy(error_rate: f64, min_samples: u32) -> pb::UpdateModelRequest {
    pb::UpdateModelRequest {
        model: by_name("lookup_b"),
        rollback: Some(pb::RollbackPolicy {
            error_rate: Some(error_rate),
            min_samples,
            window_secs: 60,
            p99_ms: None,
        }),
        ..Default::default()
    }
}

/// Copies `models/<file>` into the server's model root as `<name>.onnx` and registers it
/// (not active).
async fn register_bundled(server: &TestServer, file: &str, name: &str, version: &str) {
    let path = format!("{name}.onnx");
    std::fs::copy(bundled_models().join(file), server.root.path().join(&path)).unwrap();
    server
        .registry()
        .await
        .register_model(pb::RegisterModelRequest {
            name: name.into(),
            file_path: path,
            version: version.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Two lookup models: lookup_a active, lookup_b registered with a rollback policy of 20 %
/// over 20 requests.
async fn lookup_pair(server: &TestServer) {
    server.register_active_testdata("lookup.onnx", "lookup_a").await;
    register_bundled(server, "testdata/lookup.onnx", "lookup_b", "").await;
    let mut reg = server.registry().await;
    let m = reg.update_model(policy(0.2, 20)).await.unwrap().into_inner();
    assert_eq!(m.rollback.unwrap().error_rate, Some(0.2));
}

/// `N of M` in "… N of M requests failed in the model …".
fn failed_of(detail: &str) -> (u64, u64) {
    let head = detail
        .split(" requests failed in the model")
        .next()
        .unwrap_or_else(|| panic!("no count in {detail:?}"));
    let mut words = head.rsplit(' ');
    let of = words.next().and_then(|w| w.parse().ok());
    let _ = words.next(); // "of"
    let failed = words.next().and_then(|w| w.trim_start_matches('(').parse().ok());
    match (failed, of) {
        (Some(f), Some(o)) => (f, o),
        _ => panic!("no count in {detail:?}"),
    }
}

/// A canary that fails inside the engine goes to 0 % on its own, with an event that says why;
/// the caller's bad inputs are not the model's failures and are never counted.
#[tokio::test]
async fn a_failing_canary_goes_to_zero_and_bad_inputs_do_not_count() {
    let server = TestServer::start(Backend::Sqlite).await;
    lookup_pair(&server).await;
    let mut reg = server.registry().await;
    let e = reg.update_model(policy(1.5, 20)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    set_canary_and_wait(&server, &mut reg, "lookup_b", 50).await;
    let canary_keys = keys_below(50, 60);
    let mut infer = server.inference().await;
    // 60 bad inputs, and 30 good requests, on the canary.
    for k in &canary_keys {
        let e = infer.predict(lookup(k, 1, true)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    for k in &canary_keys[..30] {
        let r = infer.predict(lookup(k, 1, false)).await.unwrap().into_inner();
        assert_eq!((r.model_name.as_str(), r.role.as_str()), ("lookup_b", "canary"));
    }
    let window = |s: &pb::ServerStatus| s.rollback_windows.iter().find(|w| w.role == "canary").cloned();
    let w = window(&server.status().await).unwrap();
    assert_eq!(
        (w.model_name.as_str(), w.requests, w.failures),
        ("lookup_b", 30, 0),
        "bad inputs are not counted"
    );
    // 30 failures in the model: 50 % over 60 requests, above 20 %.
    for k in &canary_keys[..30] {
        let e = infer.predict(lookup(k, 42, false)).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal);
    }
    server
        .wait_status("the canary at 0%", |s| {
            s.rollout.as_ref().is_some_and(|r| r.canary_percentage == 0)
        })
        .await;
    for k in &canary_keys[..10] {
        let r = infer.predict(lookup(k, 1, false)).await.unwrap().into_inner();
        assert_eq!(
            (r.model_name.as_str(), r.role.as_str()),
            ("lookup_a", "active"),
            "the canary takes nothing now"
        );
    }
    let rollout = reg
        .get_rollout(pb::GetRolloutRequest::default())
        .await
        .unwrap()
        .into_inner();
    let c = rollout.canary.unwrap();
    assert_eq!(
        (c.model_name.as_str(), c.rollout_percentage, c.status.as_str()),
        ("lookup_b", 0, "canary")
    );
    let events = modeld::registry::Registry::connect(&server.db.url)
        .await
        .unwrap()
        .events_after(0, 1000)
        .await
        .unwrap();
    let why = events
        .iter()
        .find(|e| e.kind == "rollout_changed" && e.detail.contains("automatic rollback"))
        .unwrap_or_else(|| panic!("an event says why: {events:?}"));
    // The guard looks twice a second: it may act before the last failures (under a loaded
    // machine), at any window of 20 requests or more above 20 %, and says which.
    let (failed, of) = failed_of(&why.detail);
    assert!(
        (20..=60).contains(&of) && failed <= 30 && failed * 5 > of,
        "{}",
        why.detail
    );
    // The rollout history: the guard's move from 50 % to 0 %, newest first, after the set.
    let history = reg
        .get_rollout(pb::GetRolloutRequest { history_limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .history;
    let moves: Vec<_> = history
        .iter()
        .map(|c| {
            (
                c.model_name.as_str(),
                c.role.as_str(),
                c.percentage_before,
                c.percentage_after,
                c.automatic,
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            ("lookup_b", "canary", Some(50), Some(0), true),
            ("lookup_b", "canary", None, Some(50), false)
        ]
    );
    assert_eq!(history[0].changed_by, "guard");
    assert!(
        history[0].reason.contains("automatic rollback")
            && history[0].reason.contains(&format!("{failed} of {of} requests failed")),
        "{}",
        history[0].reason
    );
    let e = reg
        .get_rollout(pb::GetRolloutRequest { history_limit: 1001 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

/// A freshly activated model that fails is rolled back from by the guard of the server that
/// sees it, through the conditional rollback: both servers of the fleet follow, and a manual
/// rollback racing it (or the other server's guard) never flips the bad model back in.
#[tokio::test]
async fn a_failing_new_model_is_rolled_back_once_by_the_fleet() {
    let a = TestServer::start(Backend::Postgres).await;
    lookup_pair(&a).await;
    let root = model_root();
    for f in ["lookup.onnx", "lookup_b.onnx"] {
        std::fs::copy(a.root.path().join(f), root.path().join(f)).unwrap();
    }
    let b = TestServer::start_on(TestDb::shared(&a.db), root, |_| {}).await;
    b.wait_serving("lookup_a").await;
    let mut reg = a.registry().await;
    let mut switch = switch_req("lookup_b");
    switch.reason = "try b".into();
    reg.activate_model(switch).await.unwrap();
    for s in [&a, &b] {
        s.wait_serving("lookup_b").await;
    }
    // Both servers see failures; a person rolls back at the same moment.
    let mut calls = Vec::new();
    for s in [&a, &b] {
        let mut infer = s.inference().await;
        calls.push(tokio::spawn(async move {
            for i in 0..25 {
                let _ = infer.predict(lookup(&format!("k{i}"), 42, false)).await;
            }
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let manual = reg
        .rollback_model(pb::RollbackModelRequest {
            from: by_name("lookup_b"),
            reason: "by hand".into(),
            ..Default::default()
        })
        .await;
    for s in [&a, &b] {
        s.wait_serving("lookup_a").await;
    }
    let registry = modeld::registry::Registry::connect(&a.db.url).await.unwrap();
    let history = registry.activations(100).await.unwrap();
    let rollbacks: Vec<_> = history.iter().filter(|h| h.is_rollback).collect();
    assert_eq!(rollbacks.len(), 1, "the fleet rolled back once: {history:?}");
    assert_eq!(rollbacks[0].previous_name.as_deref(), Some("lookup_b"));
    if manual.is_err() {
        assert!(rollbacks[0].reason.contains("automatic rollback"), "{:?}", rollbacks[0]);
    }
    assert_eq!(registry.active().await.unwrap().unwrap().model_name, "lookup_a");
    let bad = registry
        .get(&modeld::registry::ModelRef::Name("lookup_b".into()))
        .await
        .unwrap();
    assert_eq!(bad.status, "deprecated");
    // Nothing flips it back in afterwards.
    for s in [&a, &b] {
        let r = s
            .inference()
            .await
            .predict(lookup("k", 1, false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.model_name, "lookup_a");
    }
}

/// An active model that served through its watch period without a rollback is marked stable.
#[tokio::test]
async fn a_model_that_served_its_watch_period_is_stable() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.rollback_watch_secs = 1).await;
    server.wait_serving("digits_v2").await;
    let mut reg = server.registry().await;
    eventually(
        "digits_v2 marked stable",
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(20),
        || {
            let mut reg = reg.clone();
            async move {
                let m = reg
                    .get_model(pb::GetModelRequest {
                        model: by_name("digits_v2"),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if m.is_stable { Ok(()) } else { Err(format!("{m:?}")) }
            }
        },
    )
    .await;
    let other = reg
        .get_model(pb::GetModelRequest {
            model: by_name("digits_v1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!other.is_stable, "only the active model");
}

/// The optional p99-latency threshold: a canary slower than its policy allows goes to 0 % as
/// one that fails does, with or without an error-rate threshold.
#[tokio::test]
async fn a_canary_slower_than_its_p99_threshold_goes_to_zero() {
    let server = TestServer::start(Backend::Sqlite).await;
    lookup_pair(&server).await;
    let mut reg = server.registry().await;
    // No error-rate threshold; a p99 of 1 µs, which every request exceeds.
    reg.update_model(pb::UpdateModelRequest {
        model: by_name("lookup_b"),
        rollback: Some(pb::RollbackPolicy {
            error_rate: None,
            min_samples: 20,
            window_secs: 60,
            p99_ms: Some(0.001),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    set_canary_and_wait(&server, &mut reg, "lookup_b", 50).await;
    let keys = keys_below(50, 25);
    let mut infer = server.inference().await;
    for k in &keys {
        let r = infer.predict(lookup(k, 1, false)).await.unwrap().into_inner();
        assert_eq!(r.role, "canary");
    }
    server
        .wait_status("the canary at 0%", |s| {
            s.rollout.as_ref().is_some_and(|r| r.canary_percentage == 0)
        })
        .await;
    let events = modeld::registry::Registry::connect(&server.db.url)
        .await
        .unwrap()
        .events_after(0, 1000)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "rollout_changed" && e.detail.contains("p99 latency")),
        "{events:?}"
    );
}

/// The walk-through's failing canary on the bundled models: digits_faulty answers as
/// digits_v1 on real digits and fails inside the engine on an image whose first pixel is set;
/// as a canary it goes to 0 % once its failures pass the threshold.
#[tokio::test]
async fn the_bundled_faulty_canary_rolls_itself_back() {
    let server = TestServer::start(Backend::Sqlite).await;
    register_bundled(&server, "digits_faulty.onnx", "digits_faulty", "1-faulty").await;
    let mut reg = server.registry().await;
    let mut infer = server.inference().await;
    let r = infer
        .predict(digits_request("digits_faulty", &eval_rows(8)))
        .await
        .unwrap()
        .into_inner();
    assert_close(&raw_f32(&r.outputs[0].raw_data), &expected_probs("digits_v1", 8), 1e-5);
    let faulty: Vec<Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(bundled_models().join("examples/digit_faulty.json")).unwrap())
            .unwrap();
    let e = infer
        .predict(digits_request("digits_faulty", &faulty[0]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    reg.update_model(pb::UpdateModelRequest {
        model: by_name("digits_faulty"),
        rollback: Some(pb::RollbackPolicy {
            error_rate: Some(0.2),
            min_samples: 20,
            window_secs: 60,
            p99_ms: None,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    set_canary_and_wait(&server, &mut reg, "digits_faulty", 50).await;
    // Keys routed to the canary: they fail in its engine until the failure that crosses the
    // threshold (20 samples) pauses it (the guard looks at once, not at its next tick); the
    // keys after that reach the active model.
    let (mut failed, mut answered) = (0, 0);
    for k in keys_below(50, 60) {
        let mut req = digits_request("", &faulty[0]);
        req.routing_key = k;
        match infer.predict(req).await {
            Err(e) => {
                assert_eq!(e.code(), Code::Internal);
                assert_eq!(answered, 0, "no canary request after the pause");
                failed += 1;
            }
            Ok(r) => {
                assert_eq!(r.into_inner().model_name, "digits_v2");
                answered += 1;
            }
        }
    }
    assert!(
        (20..40).contains(&failed),
        "paused soon after its 20th failure: {failed} failed"
    );
    server
        .wait_status("the faulty canary at 0%", |s| {
            s.rollout.as_ref().is_some_and(|r| r.canary_percentage == 0)
        })
        .await;
    // The same image on the active model: answered.
    infer.predict(digits_request("", &faulty[0])).await.unwrap();
    // Every request counted under the role it ran in: the error rate per model and role.
    let m = server.metrics().await;
    let count = |labels: &str| -> u64 {
        let prefix = format!("modeld_requests_total{{{labels}}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{m}"))
            .parse()
            .unwrap()
    };
    let faulty = "model=\"digits_faulty\",version=\"1-faulty\"";
    assert_eq!(count(&format!("{faulty},role=\"candidate\",outcome=\"success\"")), 1);
    assert_eq!(count(&format!("{faulty},role=\"candidate\",outcome=\"failure\"")), 1);
    assert_eq!(count(&format!("{faulty},role=\"canary\",outcome=\"success\"")), 0);
    assert_eq!(count(&format!("{faulty},role=\"canary\",outcome=\"failure\"")), failed);
    assert!(count("model=\"digits_v2\",version=\"2\",role=\"active\",outcome=\"success\"") >= 1);
}
