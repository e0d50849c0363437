//! Hot reload from every source, with real processes: the CLI and SQL consoles writing the
//! registry, model files replaced on disk, two servers sharing one PostgreSQL registry, a
//! database that goes away — and clients that never see a failed request.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use modeld::api::pb;
use modeld::model::loader::sha256_hex;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn sha_of(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// The registry's record of `name`, as GetModel returns it.
async fn registry_record(server: &TestServer, name: &str) -> pb::Model {
    server
        .registry()
        .await
        .get_model(pb::GetModelRequest { model: by_name(name) })
        .await
        .unwrap()
        .into_inner()
}

async fn predict_probs(server: &TestServer) -> (String, Vec<f32>) {
    let resp = server
        .inference()
        .await
        .predict(digits_request("", &eval_rows(2)))
        .await
        .unwrap()
        .into_inner();
    (resp.model_name, raw_f32(&resp.outputs[0].raw_data))
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5)
}

async fn events_since(server: &TestServer, after: i64) -> Vec<modeld::registry::EventRecord> {
    let reg = modeld::registry::Registry::connect(&server.db.url).await.unwrap();
    let e = reg.events_after(after, 10_000).await.unwrap();
    reg.close().await;
    e
}

async fn changes_made_elsewhere_are_served(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (url, root) = (server.db.url.clone(), server.root.path().to_path_buf());

    // The CLI, in another process.
    let (ok, _, err) = modeld_cli(&url, &root, &["activate", "digits_v1", "--reason", "from the CLI"]).await;
    assert!(ok, "{err}");
    let took = server.wait_serving("digits_v1").await;
    eprintln!("{backend:?}: CLI activation served after {took:?}");
    assert_eq!(predict_probs(&server).await.0, "digits_v1");

    // A SQL console, in two statements: in between no row is active, and the server keeps
    // serving what it has.
    sql(&url, "UPDATE ml_models SET is_active = FALSE WHERE is_active")
        .await
        .unwrap();
    server
        .wait_status("registry names nothing", |s| s.registry_active.is_none())
        .await;
    let (name, probs) = predict_probs(&server).await;
    assert_eq!(name, "digits_v1");
    assert!(close(&probs, &expected_probs("digits_v1", 2)));
    sql(
        &url,
        "UPDATE ml_models SET is_active = TRUE WHERE model_name = 'digits_v2'",
    )
    .await
    .unwrap();
    let took = server.wait_serving("digits_v2").await;
    eprintln!("{backend:?}: SQL activation served after {took:?}");
    let (name, probs) = predict_probs(&server).await;
    assert_eq!(name, "digits_v2");
    assert!(close(&probs, &expected_probs("digits_v2", 2)));

    // The events say where each change came from.
    let events = events_since(&server, 0).await;
    let seen: HashSet<(String, String)> = events.iter().map(|e| (e.kind.clone(), e.source.clone())).collect();
    for want in [("activated", "cli"), ("reloaded", "registry"), ("registered", "api")] {
        let want = (want.0.to_string(), want.1.to_string());
        assert!(seen.contains(&want), "missing {want:?} in {seen:?}");
    }
    let status = server.status().await;
    assert!(!status.degraded, "{status:#?}");
    assert_eq!(status.last_reload_source, "registry");
}

on_both!(changes_made_elsewhere_are_served);

#[tokio::test]
async fn file_changes_reload_good_files_and_refuse_bad_ones() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path().to_path_buf();
    let (v1, v2) = (
        std::fs::read(root.join("digits_v1.onnx")).unwrap(),
        std::fs::read(root.join("digits_v2.onnx")).unwrap(),
    );
    let (sha1, sha2) = (sha256_hex(&v1), sha256_hex(&v2));
    let active_file = root.join("digits_v2.onnx");
    let serving_sha =
        |sha: String| move |s: &pb::ServerStatus| s.serving.as_ref().is_some_and(|m| m.checksum_sha256 == sha);

    // Write-then-rename (how pipelines deploy): v1's weights under digits_v2's name.
    replace_by_rename(&root.join("digits_v1.onnx"), &active_file);
    server
        .wait_status("the renamed file is served", serving_sha(sha1.clone()))
        .await;
    let (name, probs) = predict_probs(&server).await;
    assert_eq!(name, "digits_v2");
    assert!(
        close(&probs, &expected_probs("digits_v1", 2)),
        "the new weights are served"
    );
    let rec = registry_record(&server, "digits_v2").await;
    assert_eq!(rec.checksum_sha256, sha1, "the registry records the new checksum");
    assert_eq!(rec.file_size_bytes as usize, v1.len());

    // In-place write back to v2.
    std::fs::write(&active_file, &v2).unwrap();
    server
        .wait_status("the rewritten file is served", serving_sha(sha2.clone()))
        .await;
    assert!(close(&predict_probs(&server).await.1, &expected_probs("digits_v2", 2)));

    // Corrupt and truncated files: never published; counted, logged, recorded.
    for (what, bytes) in [
        ("corrupt", b"garbage".to_vec()),
        ("truncated", v1[..v1.len() / 2].to_vec()),
    ] {
        let failures = server.status().await.reload_failures;
        std::fs::write(&active_file, &bytes).unwrap();
        let (status, _) = server
            .wait_status(&format!("{what} file refused"), |s| s.reload_failures > failures)
            .await;
        assert!(!status.last_error.is_empty());
        let reasons: Vec<_> = status.degradations.iter().map(|d| d.reason()).collect();
        assert_eq!(reasons, [pb::DegradedReason::ModelNotLoadable], "{what}: {status:#?}");
        assert_eq!(
            status.serving.unwrap().checksum_sha256,
            sha2,
            "{what}: the old model keeps serving"
        );
        assert!(close(&predict_probs(&server).await.1, &expected_probs("digits_v2", 2)));
        let rec = registry_record(&server, "digits_v2").await;
        assert_eq!(rec.checksum_sha256, sha2, "{what}: the registry is unchanged");
    }
    // Fixed again: back to normal, error cleared.
    std::fs::write(&active_file, &v2).unwrap();
    server
        .wait_status("error cleared", |s| s.last_error.is_empty() && !s.degraded)
        .await;

    // Deleted: the model in memory keeps serving; reported until the file returns.
    std::fs::remove_file(&active_file).unwrap();
    let (status, _) = server.wait_status("file missing reported", |s| s.file_missing).await;
    assert!(status.degraded);
    assert_eq!(server.health().await, Some(ServingStatus::Serving));
    assert!(close(&predict_probs(&server).await.1, &expected_probs("digits_v2", 2)));
    std::fs::write(&active_file, &v2).unwrap();
    server
        .wait_status("file back", |s| !s.file_missing && !s.degraded)
        .await;

    let events = events_since(&server, 0).await;
    assert!(
        events.iter().any(|e| e.kind == "reloaded" && e.source == "file"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "reload_failed" && e.source == "file" && e.detail.contains("missing"))
    );
}

/// The served model's file replaced by a model with other inputs and outputs: not served (its
/// clients would break), degraded with the reason, the registry unchanged; back to normal when
/// the file is.
#[tokio::test]
async fn a_file_replaced_by_an_incompatible_model_is_not_served() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path();
    let sha2 = sha_of(&root.join("digits_v2.onnx"));
    let good = std::fs::read(root.join("digits_v2.onnx")).unwrap();
    replace_by_rename(&root.join("cnn.onnx"), &root.join("digits_v2.onnx"));
    let (status, _) = server
        .wait_status("incompatible file refused", |s| !s.degradations.is_empty())
        .await;
    let d = &status.degradations[0];
    assert_eq!(d.reason(), pb::DegradedReason::SignatureIncompatible, "{status:#?}");
    assert!(
        d.message.contains("would break its clients") && d.message.contains("output \"label\" is gone"),
        "{d:?}"
    );
    assert_eq!(
        status.serving.unwrap().checksum_sha256,
        sha2,
        "the old model keeps serving"
    );
    assert!(close(&predict_probs(&server).await.1, &expected_probs("digits_v2", 2)));
    let rec = registry_record(&server, "digits_v2").await;
    assert_eq!(rec.checksum_sha256, sha2, "the registry is unchanged");
    std::fs::write(root.join("digits_v2.onnx"), &good).unwrap();
    server.wait_status("file back", |s| !s.degraded).await;
}

#[tokio::test]
async fn strict_checksum_refuses_a_changed_file() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.strict_checksum = true).await;
    server.wait_for_health(ServingStatus::Serving).await;
    let root = server.root.path();
    let sha2 = sha_of(&root.join("digits_v2.onnx"));
    replace_by_rename(&root.join("digits_v1.onnx"), &root.join("digits_v2.onnx"));
    let (status, _) = server
        .wait_status("strict refusal", |s| s.last_error.contains("strict"))
        .await;
    let reasons: Vec<_> = status.degradations.iter().map(|d| d.reason()).collect();
    assert_eq!(reasons, [pb::DegradedReason::ChecksumMismatch], "{status:#?}");
    assert_eq!(status.serving.unwrap().checksum_sha256, sha2);
    let rec = registry_record(&server, "digits_v2").await;
    assert_eq!(rec.checksum_sha256, sha2);
    assert!(close(&predict_probs(&server).await.1, &expected_probs("digits_v2", 2)));
}

#[tokio::test]
async fn a_registry_naming_a_missing_or_changed_file_keeps_the_last_good_model() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (url, root) = (server.db.url.clone(), server.root.path().to_path_buf());
    let mut reg = server.registry().await;
    for name in ["ghost", "tampered"] {
        std::fs::copy(root.join("digits_v1.onnx"), root.join(format!("{name}.onnx"))).unwrap();
        reg.register_model(pb::RegisterModelRequest {
            name: name.into(),
            file_path: format!("{name}.onnx"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    std::fs::remove_file(root.join("ghost.onnx")).unwrap();
    std::fs::copy(root.join("digits_v2.onnx"), root.join("tampered.onnx")).unwrap();

    for (name, why, reason) in [
        ("ghost", "does not exist", pb::DegradedReason::ModelFileMissing),
        ("tampered", "checksum mismatch", pb::DegradedReason::ChecksumMismatch),
    ] {
        sql(&url, "UPDATE ml_models SET is_active = FALSE WHERE is_active")
            .await
            .unwrap();
        sql(
            &url,
            &format!("UPDATE ml_models SET is_active = TRUE WHERE model_name = '{name}'"),
        )
        .await
        .unwrap();
        let (status, _) = server
            .wait_status(&format!("{name} refused"), |s| {
                s.registry_active.as_ref().is_some_and(|m| m.model_name == name) && s.last_error.contains(why)
            })
            .await;
        assert!(status.degraded);
        // Why, as a code and in words that do not show the server's paths.
        let reasons: Vec<_> = status.degradations.iter().map(|d| d.reason()).collect();
        assert_eq!(reasons, [reason], "{status:#?}");
        let d = &status.degradations[0];
        assert!(
            d.message.contains(why) && d.message.contains(&format!("{name}.onnx")),
            "{d:?}"
        );
        assert!(!d.message.contains(&*root.to_string_lossy()), "{d:?}");
        assert_eq!(
            status.serving.as_ref().unwrap().model_name,
            "digits_v2",
            "the last good model keeps serving"
        );
        assert_eq!(server.health().await, Some(ServingStatus::Serving));
        assert_eq!(predict_probs(&server).await.0, "digits_v2");
    }
    let events = events_since(&server, 0).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "reload_failed" && e.model_name == "tampered" && e.detail.contains("checksum"))
    );

    // The missing file arrives: the server catches up by itself.
    sql(&url, "UPDATE ml_models SET is_active = FALSE WHERE is_active")
        .await
        .unwrap();
    sql(&url, "UPDATE ml_models SET is_active = TRUE WHERE model_name = 'ghost'")
        .await
        .unwrap();
    server
        .wait_status("ghost wanted", |s| {
            s.registry_active.as_ref().is_some_and(|m| m.model_name == "ghost")
        })
        .await;
    std::fs::copy(root.join("digits_v1.onnx"), root.join("ghost.onnx")).unwrap();
    server.wait_serving("ghost").await;
    let (status, _) = server.wait_status("healthy again", |s| !s.degraded).await;
    assert!(status.degradations.is_empty(), "{status:#?}");
}

#[tokio::test]
async fn a_server_that_starts_on_a_broken_file_recovers_when_it_is_fixed() {
    let seeded = TestServer::start(Backend::Sqlite).await;
    let (db, root) = seeded.stop_and_keep().await;
    let good = std::fs::read(root.path().join("digits_v2.onnx")).unwrap();
    std::fs::write(root.path().join("digits_v2.onnx"), b"corrupt").unwrap();
    let server = TestServer::start_on(db, root, |_| {}).await;
    assert_eq!(server.health().await, Some(ServingStatus::NotServing));
    server
        .wait_status("startup failure reported", |s| s.degraded && !s.last_error.is_empty())
        .await;
    std::fs::write(server.root.path().join("digits_v2.onnx"), &good).unwrap();
    server.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(predict_probs(&server).await.0, "digits_v2");
}

#[tokio::test]
async fn two_servers_on_one_postgres_registry_converge() {
    let a = TestServer::start(Backend::Postgres).await;
    // B: same database, its own model root (another machine), the default safety-net interval,
    // so what is measured is LISTEN/NOTIFY.
    let b = TestServer::start_on(TestDb::shared(&a.db), model_root(), |c| c.registry_check_ms = 5000).await;
    b.wait_for_health(ServingStatus::Serving).await;

    let mut times = Vec::new();
    let mut reg_a = a.registry().await;
    for i in 0..10 {
        let name = if i % 2 == 0 { "digits_v1" } else { "digits_v2" };
        reg_a.activate_model(activate_req(name)).await.unwrap();
        times.push(b.wait_serving(name).await);
    }
    times.sort();
    eprintln!(
        "PostgreSQL propagation A -> B: median {:?}, max {:?}",
        times[times.len() / 2],
        times.last().unwrap()
    );
    assert!(*times.last().unwrap() < Duration::from_secs(2), "{times:?}");

    // A rollback made on B reaches A.
    b.registry()
        .await
        .rollback_model(pb::RollbackModelRequest::default())
        .await
        .unwrap();
    a.wait_serving("digits_v1").await;

    // A model whose file B does not have: A serves it, B keeps its last good model, degraded.
    std::fs::remove_file(b.root.path().join("cnn.onnx")).unwrap();
    reg_a.activate_model(switch_req("cnn")).await.unwrap();
    let (status, _) = b
        .wait_status("B degraded", |s| {
            s.registry_active.as_ref().is_some_and(|m| m.model_name == "cnn") && s.degraded && !s.last_error.is_empty()
        })
        .await;
    assert_eq!(status.serving.unwrap().model_name, "digits_v1");
    assert_eq!(b.health().await, Some(ServingStatus::Serving));
    assert_eq!(predict_probs(&b).await.0, "digits_v1");
    // The file arrives on B: it converges.
    std::fs::copy(bundled_models().join("cnn.onnx"), b.root.path().join("cnn.onnx")).unwrap();
    b.wait_serving("cnn").await;
}

#[tokio::test]
async fn a_lost_database_connection_keeps_serving_and_reconnects() {
    let server = TestServer::start(Backend::Postgres).await;
    let name = server.db.pg_name().unwrap().to_string();
    let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    let kill = sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ));
    sqlx::query(kill).execute(&admin).await.unwrap();
    // Serving continues from memory.
    assert_eq!(predict_probs(&server).await.0, "digits_v2");
    // A change made after the connections were cut still arrives (the listener reconnects).
    sql(&server.db.url, "UPDATE ml_models SET is_active = FALSE WHERE is_active")
        .await
        .unwrap();
    sql(
        &server.db.url,
        "UPDATE ml_models SET is_active = TRUE WHERE model_name = 'digits_v1'",
    )
    .await
    .unwrap();
    server.wait_serving("digits_v1").await;

    // The database disappears altogether: registry calls are UNAVAILABLE, predictions go on.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let err = server
        .registry()
        .await
        .get_model(pb::GetModelRequest {
            model: by_name("digits_v1"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(predict_probs(&server).await.0, "digits_v1");
    let (status, _) = server
        .wait_status("registry unreachable", |s| !s.registry_reachable)
        .await;
    assert!(status.degraded);
}

#[tokio::test]
async fn watch_events_streams_every_kind_with_its_source() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut stream = server
        .registry()
        .await
        .watch_events(pb::WatchEventsRequest { after_event_id: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut reg = server.registry().await;
    reg.register_model(pb::RegisterModelRequest {
        name: "extra".into(),
        file_path: "digits_v1.onnx".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    reg.update_model(pb::UpdateModelRequest {
        model: by_name("extra"),
        description: Some("d".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    reg.activate_model(activate_req("extra")).await.unwrap();
    reg.rollback_model(pb::RollbackModelRequest::default()).await.unwrap();
    reg.delete_model(pb::DeleteModelRequest {
        model: by_name("extra"),
    })
    .await
    .unwrap();
    let (ok, _, err) = modeld_cli(&server.db.url, server.root.path(), &["activate", "digits_v1"]).await;
    assert!(ok, "{err}");
    server.wait_serving("digits_v1").await;
    std::fs::write(server.root.path().join("digits_v1.onnx"), b"broken").unwrap();

    let want: HashSet<(&str, &str)> = [
        ("registered", "api"),
        ("updated", "api"),
        ("activated", "api"),
        ("reloaded", "api"),
        ("rolled_back", "api"),
        ("deleted", "api"),
        ("activated", "cli"),
        ("reloaded", "registry"),
        ("reload_failed", "file"),
    ]
    .into_iter()
    .collect();
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !want.iter().all(|w| seen.contains(&(w.0.to_string(), w.1.to_string()))) {
        let e = match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(e) => e.unwrap().unwrap(),
            Err(_) => panic!("events missing after 20 s; seen {seen:?}"),
        };
        assert!(e.event_id > 0 && e.created_at.is_some());
        seen.insert((e.kind, e.source));
    }

    // modeld events prints the same history.
    let (ok, out, err) = modeld_cli(&server.db.url, server.root.path(), &["events", "--limit", "100"]).await;
    assert!(ok, "{err}");
    for kind in ["registered", "rolled_back", "reload_failed"] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
}

/// 8 clients predict without pause while 100 changes alternate the served weights through each
/// source in turn: API, CLI process, SQL console, file replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_from_every_source_under_load_never_fail() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (url, root) = (server.db.url.clone(), server.root.path().to_path_buf());
    let mut reg = server.registry().await;
    // Two records whose files we can rewrite freely.
    for (name, src) in [("a", "digits_v1.onnx"), ("b", "digits_v2.onnx")] {
        std::fs::copy(root.join(src), root.join(format!("{name}.onnx"))).unwrap();
        reg.register_model(pb::RegisterModelRequest {
            name: name.into(),
            file_path: format!("{name}.onnx"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    reg.activate_model(activate_req("a")).await.unwrap();
    let v = [expected_probs("digits_v1", 2), expected_probs("digits_v2", 2)];

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut infer = server.inference().await;
        let (stop, served, v) = (Arc::clone(&stop), Arc::clone(&served), v.clone());
        clients.push(tokio::spawn(async move {
            let rows = eval_rows(2);
            while !stop.load(Ordering::Relaxed) {
                let resp = infer
                    .predict(digits_request("", &rows))
                    .await
                    .expect("zero failed requests")
                    .into_inner();
                assert!(resp.model_name == "a" || resp.model_name == "b", "{}", resp.model_name);
                let probs = raw_f32(&resp.outputs[0].raw_data);
                assert!(
                    close(&probs, &v[0]) || close(&probs, &v[1]),
                    "outputs mix versions: {probs:?}"
                );
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Which weights each file holds, and which record is active.
    let mut content = std::collections::HashMap::from([("a", 0usize), ("b", 1usize)]);
    let mut active = "a";
    let files = [root.join("digits_v1.onnx"), root.join("digits_v2.onnx")];
    for step in 0..100 {
        let other = if active == "a" { "b" } else { "a" };
        match step % 4 {
            0 => {
                reg.activate_model(activate_req(other)).await.unwrap();
                active = other;
            }
            1 => {
                let (ok, _, err) = modeld_cli(&url, &root, &["activate", other]).await;
                assert!(ok, "{err}");
                active = other;
            }
            2 => {
                sql(&url, "UPDATE ml_models SET is_active = FALSE WHERE is_active")
                    .await
                    .unwrap();
                sql(
                    &url,
                    &format!("UPDATE ml_models SET is_active = TRUE WHERE model_name = '{other}'"),
                )
                .await
                .unwrap();
                active = other;
            }
            _ => {
                let flipped = 1 - content[active];
                replace_by_rename(&files[flipped], &root.join(format!("{active}.onnx")));
                content.insert(active, flipped);
            }
        }
        let sha = sha_of(&root.join(format!("{active}.onnx")));
        server
            .wait_status(&format!("step {step}"), |s| {
                s.serving
                    .as_ref()
                    .is_some_and(|m| m.model_name == active && m.checksum_sha256 == sha)
            })
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let n = served.load(Ordering::Relaxed);
    eprintln!("{n} requests served during 100 swaps from 4 sources, 0 failed");
    assert!(n > 100);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.registry().await.activate_model(switch_req("cnn")).await.unwrap();
    let mut infer = server.inference().await;
    let req = pb::PredictRequest {
        model_name: String::new(),
        inputs: vec![pb::Tensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![48, 3, 224, 224],
            raw_data: f32_raw(&cnn_input(48)),
            ..Default::default()
        }],
        routing_key: String::new(),
    };
    let in_flight = tokio::spawn(async move { infer.predict(req).await });
    server
        .wait_status("request in flight", |s| s.in_flight_requests > 0)
        .await;
    let url = server.url();
    server.stop().await.expect("clean shutdown");
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes")
        .into_inner();
    assert_eq!(resp.outputs[0].shape, vec![48, 10]);
    assert!(
        tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn sigterm_stops_the_real_binary_cleanly() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let (mut child, mut lines) = spawn_serve(&db.url, root.path(), &[]);
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("log line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(addr) = v["fields"]["addr"].as_str() {
            break addr.to_string();
        }
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let infer = pb::inference_client::InferenceClient::new(channel);
    until("the server answers a Predict", Duration::from_secs(30), || {
        let mut infer = infer.clone();
        async move { infer.predict(digits_request("", &eval_rows(1))).await.is_ok() }
    })
    .await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    tokio::spawn(async move { while lines.next_line().await.ok().flatten().is_some() {} });
}

/// Memory after 1000 swaps is back within 10% of where it was after 10. Slow; run with
/// `cargo test --release --test reload -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "slow: 1000 model swaps"]
async fn memory_returns_to_baseline_after_many_swaps() {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let mut reg = server.registry().await;
    let mut infer = server.inference().await;
    let mut after_10 = 0;
    for i in 0..1000 {
        let name = if i % 2 == 0 { "digits_v1" } else { "digits_v2" };
        reg.activate_model(activate_req(name)).await.unwrap();
        infer.predict(digits_request("", &eval_rows(8))).await.unwrap();
        if i == 9 {
            after_10 = rss_kib();
        }
    }
    let after_1000 = rss_kib();
    let growth = after_1000 as f64 / after_10 as f64 - 1.0;
    eprintln!(
        "RSS after 10 swaps: {after_10} KiB; after 1000: {after_1000} KiB ({:+.1}%)",
        growth * 100.0
    );
    assert!(growth < 0.10, "resident set grew {:.1}%", growth * 100.0);
}

#[tokio::test]
async fn prometheus_metrics_follow_serving_and_degradation() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut infer = server.inference().await;
    for _ in 0..2 {
        infer.predict(digits_request("", &eval_rows(4))).await.unwrap();
    }
    let m = server.metrics().await;
    for line in [
        "modeld_model_loaded 1",
        "modeld_degraded 0",
        "modeld_registry_reachable 1",
        "modeld_reload_failures_total 0",
        "modeld_requests_total{model=\"digits_v2\",version=\"2\",role=\"active\",outcome=\"success\"} 2",
        "modeld_inferences_total{model=\"digits_v2\",version=\"2\"} 8",
    ] {
        assert!(m.lines().any(|l| l == line), "{line:?} missing from:\n{m}");
    }
    assert!(
        m.contains("modeld_serving_info{model_id=\"2\",model=\"digits_v2\",version=\"2\""),
        "{m}"
    );

    // The registry names a model whose file is missing: degraded, counted, still serving.
    let root = server.root.path();
    std::fs::copy(root.join("digits_v1.onnx"), root.join("ghost.onnx")).unwrap();
    server
        .registry()
        .await
        .register_model(pb::RegisterModelRequest {
            name: "ghost".into(),
            file_path: "ghost.onnx".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    std::fs::remove_file(root.join("ghost.onnx")).unwrap();
    sql(&server.db.url, "UPDATE ml_models SET is_active = FALSE WHERE is_active")
        .await
        .unwrap();
    sql(
        &server.db.url,
        "UPDATE ml_models SET is_active = TRUE WHERE model_name = 'ghost'",
    )
    .await
    .unwrap();
    server
        .wait_status("degraded", |s| s.degraded && s.reload_failures > 0)
        .await;
    let m = server.metrics().await;
    assert!(m.lines().any(|l| l == "modeld_degraded 1"), "{m}");
    assert!(
        m.lines()
            .any(|l| l == "modeld_degraded_reason{reason=\"model_file_missing\"} 1"),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l == "modeld_degraded_reason{reason=\"registry_unreachable\"} 0"),
        "{m}"
    );
    assert!(!m.lines().any(|l| l == "modeld_reload_failures_total 0"), "{m}");
    assert!(
        m.contains("modeld_serving_info{model_id=\"2\",model=\"digits_v2\""),
        "still serving digits_v2:\n{m}"
    );
}

/// The registry's PostgreSQL becomes unreachable (a proxy the test closes cuts every connection):
/// what this server serves still answers from memory — Predict, `modeld predict`, ModelMetadata,
/// ModelConfig, GetActiveModel's serving part, GetServerStatus — and the status and metrics say
/// why it is degraded. A change made meanwhile (by the CLI, straight to the database) is caught
/// up with once the database is reachable again.
#[tokio::test]
async fn an_unreachable_registry_leaves_answers_from_memory_and_is_caught_up_with() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut proxy = TcpProxy::start(db.server_addr()).await;
    let proxied = db.through(proxy.port);
    let root = model_root();
    let server = TestServer::start_on(proxied, root, |c| c.registry_check_ms = 200).await;
    server.wait_serving("digits_v2").await;

    proxy.close().await;
    let (status, _) = server
        .wait_status("registry unreachable", |s| !s.registry_reachable)
        .await;
    assert!(status.degraded);
    let d = &status.degradations[0];
    assert_eq!(d.reason(), pb::DegradedReason::RegistryUnreachable, "{status:#?}");
    assert!(
        d.message.contains("unreachable since") && d.message.contains("\"digits_v2\" from memory"),
        "{d:?}"
    );
    assert!(status.registry_unreachable_since.is_some());
    assert_eq!(status.serving.as_ref().unwrap().model_name, "digits_v2");
    let m = server.metrics().await;
    assert!(m.lines().any(|l| l == "modeld_registry_reachable 0"), "{m}");
    assert!(
        m.lines()
            .any(|l| l == "modeld_degraded_reason{reason=\"registry_unreachable\"} 1"),
        "{m}"
    );

    // Answers from memory, without waiting on the database.
    let started = std::time::Instant::now();
    assert_eq!(predict_probs(&server).await.0, "digits_v2");
    let active = server
        .registry()
        .await
        .get_active_model(pb::GetActiveModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.serving.unwrap().model_name, "digits_v2");
    assert!(!active.registry_reachable);
    assert_eq!(active.model.unwrap().model_name, "digits_v2", "the last known answer");
    for name in ["active", "digits_v2"] {
        let meta = server.metadata(name).await;
        assert_eq!(meta.inputs[0].shape, vec![-1, 64], "{name}");
        let config = server
            .kserve()
            .await
            .model_config(modeld::api::kserve_pb::ModelConfigRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(config.config.unwrap().input[0].name, "input");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered from memory, not after a database timeout: {:?}",
        started.elapsed()
    );
    let input = server.root.path().join("digit.json");
    std::fs::copy(bundled_models().join("examples/digit_2.json"), &input).unwrap();
    let run = run_modeld(
        server.root.path(),
        &[],
        &["predict", "--server", &server.url(), "--input", input.to_str().unwrap()],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["model_name"], "digits_v2");
    // A model it does not serve needs the registry: UNAVAILABLE at once, said so.
    let started = std::time::Instant::now();
    let err = server
        .kserve()
        .await
        .model_metadata(modeld::api::kserve_pb::ModelMetadataRequest {
            name: "digits_v1".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("registry is unreachable"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let err = server
        .inference()
        .await
        .predict(digits_request("digits_v1", &eval_rows(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Meanwhile the CLI activates digits_v1, straight on the database.
    let direct = run_modeld(
        server.root.path(),
        &[
            ("MODELD_DATABASE_URL", &db.url),
            ("MODELD_MODEL_ROOT", server.root.path().to_str().unwrap()),
        ],
        &["activate", "digits_v1", "--reason", "while the server was cut off"],
    )
    .await;
    assert_eq!(direct.code, 0, "{direct:?}");
    assert_eq!(predict_probs(&server).await.0, "digits_v2", "still cut off");

    // The database is back: the server catches up, and is healthy again.
    proxy.open().await;
    server.wait_serving("digits_v1").await;
    let (status, _) = server
        .wait_status("healthy again", |s| !s.degraded && s.registry_reachable)
        .await;
    assert!(status.degradations.is_empty() && status.registry_unreachable_since.is_none());
    assert_eq!(predict_probs(&server).await.0, "digits_v1");
    server.stop().await.unwrap();
    drop(db);
}

/// Two servers on one PostgreSQL registry roll back from the same bad model at the same moment
/// (as two operators, or an operator and the automatic guard, would): the rollback happens
/// once, the other is refused with FAILED_PRECONDITION, and the bad model is never flipped back
/// in — named (`from`) or implied (the latest activation).
#[tokio::test]
async fn concurrent_rollbacks_from_one_model_roll_back_once() {
    let a = TestServer::start(Backend::Postgres).await;
    let b = TestServer::start_on(TestDb::shared(&a.db), model_root(), |_| {}).await;
    b.wait_for_health(ServingStatus::Serving).await;
    let (mut reg_a, mut reg_b) = (a.registry().await, b.registry().await);
    for round in 0..6 {
        reg_a.activate_model(activate_req("digits_v1")).await.unwrap();
        b.wait_serving("digits_v1").await;
        let from = if round % 2 == 0 { by_name("digits_v1") } else { None };
        let request = |by: &str| pb::RollbackModelRequest {
            reason: format!("round {round}"),
            activated_by: by.into(),
            from: from.clone(),
            wait_ms: None,
        };
        let (ra, rb) = tokio::join!(reg_a.rollback_model(request("a")), reg_b.rollback_model(request("b")));
        let outcomes = [ra, rb];
        let won: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one rollback: {outcomes:?}");
        assert_eq!(won[0].get_ref().active.as_ref().unwrap().model_name, "digits_v2");
        let refused = outcomes.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("nothing was rolled back"), "{refused:?}");
        let active = reg_a
            .get_active_model(pb::GetActiveModelRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(active.model.unwrap().model_name, "digits_v2", "round {round}");
        a.wait_serving("digits_v2").await;
        b.wait_serving("digits_v2").await;
    }
    // Rolling back from a model that is not active changes nothing, from the CLI too.
    let run = run_modeld(
        a.root.path(),
        &[
            ("MODELD_DATABASE_URL", &a.db.url),
            ("MODELD_MODEL_ROOT", a.root.path().to_str().unwrap()),
        ],
        &["rollback", "--from", "digits_v1"],
    )
    .await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("\"digits_v1\" is not the active model"),
        "{}",
        run.stderr
    );
    let history = events_since(&a, 0).await;
    assert_eq!(
        history.iter().filter(|e| e.kind == "rolled_back").count(),
        6,
        "one rollback a round: {history:#?}"
    );
}
