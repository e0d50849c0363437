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
    let rollout = reg.get_rollout(pb::GetRolloutRequest {}).await.unwrap().into_inner();
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
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.active.unwrap().model_name, "digits_v1");
    server.wait_serving("digits_v1").await;
    let status = server.status().await;
    assert!(status.rollout.unwrap().canary.is_none());
    let rollout = reg.get_rollout(pb::GetRolloutRequest {}).await.unwrap().into_inner();
    assert!(rollout.canary.is_none());
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

#[tokio::test]
async fn a_canary_takes_its_share_by_key_sqlite() {
    a_canary_takes_its_share_by_key(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_canary_takes_its_share_by_key_postgres() {
    a_canary_takes_its_share_by_key(Backend::Postgres).await;
}

/// Two servers on one PostgreSQL registry: a canary set through the CLI reaches both, they
/// route every key alike, and a clear reaches both.
#[tokio::test]
async fn two_servers_agree_on_the_canary() {
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

    let (ok, out, err) = modeld_cli(&a.db.url, a.root.path(), &["canary", "show"]).await;
    assert!(ok && out.contains("at 30%"), "{out}{err}");
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
