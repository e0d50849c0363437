//! A change is served when the command returns: every server reports itself in the registry,
//! and a change (CLI, gRPC, REST) waits until every live server serves it. Run with the real
//! binary, as users run it: on the SQLite default from a fresh checkout, and with three servers
//! on one PostgreSQL; a server that cannot load the change makes the wait return at once with
//! its reason; a server killed with -9 stops counting once its heartbeats lapse.

mod common;

use std::time::{Duration, Instant};

use common::*;
use modeld::api::pb;
use serde_json::Value;

async fn predict(server: &LoggedServer, name: &str, key: &str) -> Result<pb::PredictResponse, tonic::Status> {
    let mut req = digits_request(name, &eval_rows(1));
    req.routing_key = key.into();
    pb::inference_client::InferenceClient::new(server.channel().await)
        .predict(req)
        .await
        .map(tonic::Response::into_inner)
}

/// The README's and rollout.md's sequences on the SQLite default, each next step at once:
/// the command returns once the server serves the change, so the next request sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_cli_change_is_served_when_the_command_returns() {
    let dir = checkout();
    let cwd = dir.path();
    let server = LoggedServer::start_in(cwd, &[], &[]).await;
    let env = [("MODELD_SERVER", format!("http://{}", server.grpc))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for round in 0..5 {
        for model in ["digits_v1", "digits_v2"] {
            let run = run_modeld(cwd, &env, &["activate", model]).await;
            assert_eq!(run.code, 0, "{run:?}");
            assert!(run.stdout.contains("served by 1 of 1 server in "), "{run:?}");
            let answer = predict(&server, "", "").await.unwrap();
            assert_eq!(
                answer.model_name, model,
                "round {round}: the next request is served by it"
            );
        }
    }
    // Register and activate, then call it by name at once: never UNAVAILABLE.
    let run = run_modeld(
        cwd,
        &env,
        &[
            "register",
            "--name",
            "YAMNet Human Detection v1",
            "--path",
            "models/digits_v1.onnx",
            "--activate",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let answer = predict(&server, "YAMNet Human Detection v1", "").await.unwrap();
    assert_eq!(answer.model_name, "YAMNet Human Detection v1");
    assert_eq!(answer.role, "active");

    // A canary at 30 %, then keyed requests at once: each key keeps its model from the first
    // request on (the canary was served before the command returned).
    let run = run_modeld(cwd, &env, &["canary", "set", "digits_v2", "--percentage", "30"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("served by 1 of 1 server"), "{run:?}");
    let mut first = std::collections::HashMap::new();
    for pass in 0..2 {
        for k in 0..150 {
            let key = format!("user-{k}");
            let got = predict(&server, "", &key).await.unwrap().model_name;
            let was = first.entry(key.clone()).or_insert_with(|| got.clone());
            assert_eq!(*was, got, "pass {pass}: {key} moved");
        }
    }
    let canaried = first.values().filter(|m| *m == "digits_v2").count();
    assert!((20..=80).contains(&canaried), "about 30% of 150 keys: {canaried}");
    // The shadow is in status the moment the command returns.
    let run = run_modeld(cwd, &env, &["shadow", "set", "digits_v1", "--percentage", "50"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let status = run_modeld(cwd, &env, &["status", "--json"]).await;
    let v: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["shadow"]["model_name"], "digits_v1", "{v}");

    // --no-wait says so, and the fleet lists the one server, caught up.
    let run = run_modeld(cwd, &env, &["canary", "clear", "--no-wait"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("not waited for (--no-wait)"), "{run:?}");
    let v = eventually(
        "the server catches up",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let fleet = run_modeld(cwd, &[], &["fleet", "--json"]).await;
            let v: Value = serde_json::from_str(&fleet.stdout).unwrap();
            if v["servers"][0]["lag"] == 0 { Ok(v) } else { Err(v) }
        },
    )
    .await;
    let me = &v["servers"][0];
    assert_eq!(v["servers"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(me["grpc_address"], server.grpc.as_str(), "{v}");
    assert_eq!(me["gone"], false, "{v}");
    assert!(me["serving"]["canary"].is_null(), "{v}");
    assert_eq!(me["serving"]["shadow"]["model_name"], "digits_v1", "{v}");
    let text = run_modeld(cwd, &[], &["fleet"]).await;
    assert!(
        text.stdout.contains("1 live server") && text.stdout.contains(" live "),
        "{text:?}"
    );
    // `modeld status` with no server at the default address finds this one in the registry.
    let found = run_modeld(cwd, &[], &["status"]).await;
    assert_eq!(found.code, 0, "{found:?}");
    assert!(found.stderr.contains("a live server of the registry"), "{found:?}");
    // A server that stops leaves the fleet: the next change has nothing to wait for.
    server.terminate().await;
    let run = run_modeld(cwd, &[], &["activate", "digits_v1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("no live server"), "{run:?}");
}

/// Requests that name the registry's new active model right after a change (made here with
/// --no-wait, and in the registry directly) wait for the server's reload instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_never_refused_for_being_early() {
    let db = TestDb::new(Backend::Postgres).await;
    let root = model_root();
    let server = LoggedServer::start(&db.url, root.path(), &[], &[]).await;
    let registry = modeld::registry::Registry::connect(&db.url).await.unwrap();
    for round in 0..10 {
        let target = if round % 2 == 0 { "digits_v1" } else { "digits_v2" };
        let id = registry
            .find(&modeld::registry::ModelRef::Name(target.into()))
            .await
            .unwrap()
            .unwrap()
            .model_id;
        // In SQL, as any process may do it (one transaction); the request follows at once.
        let mut tx = registry.pg_pool().unwrap().begin().await.unwrap();
        sqlx::query("UPDATE ml_models SET is_active = FALSE WHERE is_active")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("UPDATE ml_models SET is_active = TRUE WHERE model_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let answer = predict(&server, target, "").await.unwrap();
        assert_eq!(answer.model_name, target, "round {round}");
        assert_eq!(answer.role, "active", "round {round}");
    }
}

/// Three servers on one PostgreSQL: a change through the CLI, gRPC or REST returns when all
/// three serve it; one that cannot load it makes the wait return at once with its reason;
/// one killed with -9 stops counting once its heartbeats lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_waits_for_every_live_server_and_says_who_does_not_serve_it() {
    let db = TestDb::new(Backend::Postgres).await;
    let root = model_root();
    // The third server's root lacks digits_v1.onnx: it cannot load it.
    let partial = model_root();
    std::fs::remove_file(partial.path().join("digits_v1.onnx")).unwrap();
    let beat = ["--heartbeat-ms", "200"];
    let a = LoggedServer::start(&db.url, root.path(), &beat, &[]).await;
    let b = LoggedServer::start(&db.url, root.path(), &beat, &[]).await;
    let env = [
        ("MODELD_DATABASE_URL", db.url.as_str()),
        ("MODELD_MODEL_ROOT", root.path().to_str().unwrap()),
    ];
    let cwd = root.path();

    // The CLI: returns when both serve it, and each does at once.
    let run = run_modeld(cwd, &env, &["activate", "digits_v1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("served by 2 of 2 servers in "), "{run:?}");
    for s in [&a, &b] {
        assert_eq!(predict(s, "", "").await.unwrap().model_name, "digits_v1");
    }
    // gRPC through one server: `served` counts both.
    let mut reg = pb::model_registry_client::ModelRegistryClient::new(a.channel().await);
    let done = reg
        .activate_model(activate_req("digits_v2"))
        .await
        .unwrap()
        .into_inner();
    let served = done.served.unwrap();
    assert!(
        served.complete && served.servers == 2 && served.applied == 2,
        "{served:?}"
    );
    for s in [&a, &b] {
        assert_eq!(predict(s, "", "").await.unwrap().model_name, "digits_v2");
    }
    // REST through the other: `served` in the answer and the X-Modeld-Served header.
    let r = reqwest::Client::new()
        .post(b.http_url("/api/v1/models/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header = r.headers()["x-modeld-served"].to_str().unwrap().to_string();
    assert!(header.starts_with("served by 2 of 2 servers in "), "{header}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["served"]["applied"], 2, "{v}");
    assert_eq!(v["active"]["model_name"], "digits_v1", "{v}");
    // The fleet over REST and gRPC.
    let list: Value = get_json(a.http_url("/api/v1/servers")).await;
    assert_eq!(list["servers"].as_array().unwrap().len(), 2, "{list}");
    let fleet = reg.list_servers(pb::ListServersRequest {}).await.unwrap().into_inner();
    assert!(fleet.servers.iter().all(|s| !s.gone && s.lag == 0), "{fleet:?}");
    assert!(
        fleet
            .servers
            .iter()
            .all(|s| s.active.as_ref().unwrap().model_name == "digits_v1"),
        "{fleet:?}"
    );

    // A third server that cannot load digits_v1 (its root lacks the file). The active model
    // is digits_v1: it starts without a model and reports why; a change to digits_v2 reaches
    // it, and one back to digits_v1 returns at once with its reason.
    let (c, mut lines) = spawn_serve(&db.url, partial.path(), &beat);
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    eventually(
        "the third server joins",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let list: Value = get_json(a.http_url("/api/v1/servers")).await;
            let live = list["servers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["gone"] == false)
                .count();
            if live == 3 { Ok(()) } else { Err(list) }
        },
    )
    .await;
    let run = run_modeld(cwd, &env, &["activate", "digits_v2"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("served by 3 of 3 servers"), "{run:?}");
    let started = Instant::now();
    let run = run_modeld(cwd, &env, &["activate", "digits_v1"]).await;
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("served by 2 of 3 servers")
            && run.stderr.contains("cannot:")
            && run.stderr.contains("digits_v1.onnx"),
        "{run:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "at once, not after the 30 s wait: {:?}",
        started.elapsed()
    );
    assert!(
        !run.stderr.contains(partial.path().to_str().unwrap()),
        "no server path: {run:?}"
    );
    let fleet = run_modeld(cwd, &env, &["fleet"]).await;
    assert!(
        fleet.stdout.contains("degraded") && fleet.stdout.contains("cannot apply generation"),
        "{fleet:?}"
    );
    drop(c);
    drain.abort();

    // kill -9 of b: the next change waits only until b's heartbeats lapse (3 x 200 ms).
    let _ = b.stop().await;
    let started = Instant::now();
    let run = run_modeld(cwd, &env, &["activate", "digits_v2", "--wait", "30"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("served by 1 of 1 server"), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let v: Value = serde_json::from_str(&run_modeld(cwd, &env, &["fleet", "--json"]).await.stdout).unwrap();
    let gone: Vec<&Value> = v["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["gone"] == true)
        .collect();
    assert!(!gone.is_empty(), "{v}");
    let _ = a.stop().await;
}

/// The registry stops answering while a change waits for a server: the command says the
/// change is committed and why it cannot tell more (exit 5); nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_unreachable_mid_wait_is_a_clear_error_and_the_change_stays() {
    let db = TestDb::new(Backend::Postgres).await;
    let root = model_root();
    // A server that will never apply the change but stays "live" for a while: killed with -9,
    // with a 10 s heartbeat (gone only after 30 s of silence).
    let ghost = LoggedServer::start(&db.url, root.path(), &["--heartbeat-ms", "10000"], &[]).await;
    let _ = ghost.stop().await;
    let mut proxy = TcpProxy::start(db.server_addr()).await;
    let via = db.through(proxy.port);
    let mut cmd = modeld_command();
    let cli = as_a_user(&mut cmd)
        .args(["activate", "digits_v1", "--wait", "60"])
        .env("MODELD_DATABASE_URL", &via.url)
        .env("MODELD_MODEL_ROOT", root.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The change commits, then the command waits for the silent server.
    let registry = modeld::registry::Registry::connect(&db.url).await.unwrap();
    until("the activation commits", Duration::from_secs(30), || async {
        registry.active().await.unwrap().map(|m| m.model_name).as_deref() == Some("digits_v1")
    })
    .await;
    proxy.close().await;
    let out = tokio::time::timeout(Duration::from_secs(30), cli.wait_with_output())
        .await
        .expect("the command ends once the registry stops answering")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("the change is committed, but the registry stopped answering"),
        "{stderr}"
    );
    let active = registry.active().await.unwrap().unwrap();
    assert_eq!(active.model_name, "digits_v1", "the change stays");
}
