//! A fleet: three servers on one PostgreSQL registry. An activation, a canary change and a
//! rollback made through one server, and an activation made in plain SQL, reach all three;
//! the time each change takes to be served everywhere is measured (median and max over
//! rounds, printed; docs/operations.md quotes a run), idle and under light load. A server
//! started while the database is down serves once it is up.

mod common;

use std::time::{Duration, Instant};

use common::*;
use modeld::api::pb;

/// Polls every server until `done` holds on all of them; the time that took.
async fn everywhere<F, Fut>(servers: &[TestServer], what: &str, mut done: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let mut pending: Vec<usize> = (0..servers.len()).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for i in pending {
            if !done(i).await {
                still.push(i);
            }
        }
        pending = still;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never reached every server"
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    started.elapsed()
}

async fn serving(s: &TestServer) -> String {
    s.status().await.serving.map(|m| m.model_name).unwrap_or_default()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_anywhere_reach_all_three_servers() {
    let first = TestServer::start(Backend::Postgres).await;
    let url = first.db.url.clone();
    let mut servers = vec![first];
    for _ in 0..2 {
        let s = TestServer::start_on(TestDb::shared(&servers[0].db), model_root(), |_| {}).await;
        s.wait_serving("digits_v2").await;
        servers.push(s);
    }

    // Light load on every server while half the rounds run: a request every 5 ms each.
    let load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loaders = Vec::new();
    for s in &servers {
        let mut infer = s.inference().await;
        let load = std::sync::Arc::clone(&load);
        loaders.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            loop {
                if load.load(std::sync::atomic::Ordering::Relaxed) {
                    match infer.predict(digits_request("", &eval_rows(1))).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                if ok + failed > 0 && !load.load(std::sync::atomic::Ordering::Relaxed) {
                    return (ok, failed);
                }
            }
        }));
    }

    const ROUNDS: usize = 10;
    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    for round in 0..2 * ROUNDS {
        let under_load = round >= ROUNDS;
        load.store(under_load, std::sync::atomic::Ordering::Relaxed);
        let target = if round % 2 == 0 { "digits_v1" } else { "digits_v2" };
        // Through each server in turn.
        servers[round % 3]
            .registry()
            .await
            .activate_model(activate_req(target))
            .await
            .unwrap();
        let took = everywhere(&servers, &format!("activating {target}"), |i| {
            let s = &servers[i];
            async move { serving(s).await == target }
        })
        .await;
        if under_load { loaded.push(took) } else { idle.push(took) }
    }
    load.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for l in loaders {
        let (ok, failed) = l.await.unwrap();
        assert_eq!(failed, 0, "no request failed during the swaps");
        served += ok;
    }
    assert!(served > 0);
    let (mi, xi) = (median(&mut idle), *idle.iter().max().unwrap());
    let (ml, xl) = (median(&mut loaded), *loaded.iter().max().unwrap());
    println!(
        "fleet propagation of an activation to all 3 servers: idle median {:.1} ms max {:.1} ms; \
         under light load median {:.1} ms max {:.1} ms ({served} requests served, none failed)",
        mi.as_secs_f64() * 1e3,
        xi.as_secs_f64() * 1e3,
        ml.as_secs_f64() * 1e3,
        xl.as_secs_f64() * 1e3,
    );

    // A canary set through the second server shows on all three.
    servers[1]
        .registry()
        .await
        .set_canary(pb::SetRolloutRequest {
            model: by_name("digits_v1"),
            percentage: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let took = everywhere(&servers, "the canary", |i| {
        let s = &servers[i];
        async move {
            s.metrics().await.lines().any(|l| {
                l.starts_with("modeld_rollout_percentage{role=\"canary\"")
                    && l.contains("digits_v1")
                    && l.ends_with(" 10")
            })
        }
    })
    .await;
    println!(
        "canary at 10% on all 3 servers after {:.1} ms",
        took.as_secs_f64() * 1e3
    );

    // A rollback through the third server (digits_v2 is active: back to digits_v1).
    servers[2]
        .registry()
        .await
        .rollback_model(pb::RollbackModelRequest::default())
        .await
        .unwrap();
    everywhere(&servers, "the rollback", |i| {
        let s = &servers[i];
        async move { serving(s).await == "digits_v1" }
    })
    .await;

    // Plain SQL, as a DBA or a migration script would: the triggers tell every server.
    sql(&url, "UPDATE ml_models SET is_active = FALSE WHERE is_active")
        .await
        .unwrap();
    sql(
        &url,
        "UPDATE ml_models SET is_active = TRUE WHERE model_name = 'digits_v2'",
    )
    .await
    .unwrap();
    let took = everywhere(&servers, "the SQL activation", |i| {
        let s = &servers[i];
        async move { serving(s).await == "digits_v2" }
    })
    .await;
    println!(
        "a plain SQL activation on all 3 servers after {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    for s in servers {
        s.stop().await.unwrap();
    }
}

/// A server started while its PostgreSQL cannot be reached waits for it, and serves once it
/// answers (a fleet whose database comes up after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_while_the_database_is_down_serves_once_it_is_up() {
    let db = TestDb::new(Backend::Postgres).await;
    // Seed the registry first (as the rest of the fleet would have).
    let seeded = TestServer::start_on(TestDb::shared(&db), model_root(), |_| {}).await;
    seeded.wait_serving("digits_v2").await;
    seeded.stop().await.unwrap();

    let mut proxy = TcpProxy::start(db.server_addr()).await;
    proxy.close().await;
    let proxied = db.through(proxy.port);
    let starting = tokio::spawn(TestServer::start_on(proxied, model_root(), |_| {}));
    // Without the wait, start-up would fail on the refused connection and never serve.
    assert!(!starting.is_finished(), "start-up waits for the registry");
    proxy.open().await;
    let server = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("the server starts once the database answers")
        .unwrap();
    server.wait_serving("digits_v2").await;
    server.stop().await.unwrap();
}
