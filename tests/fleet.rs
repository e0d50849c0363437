//! A fleet: three servers on one PostgreSQL registry. An activation, a canary change and a
//! rollback made through one server, and an activation made in plain SQL, reach all three,
//! idle and under light load (benches/fleet.rs measures how fast). A server
//! started while the database is down answers health (NOT_SERVING) at once and serves once
//! the database is up. PostgreSQL restarted under load loses no request on the data path, and
//! every server reconnects (pool and LISTEN) and catches up with a change made after it.

mod common;

use std::time::Duration;

use common::fleet::*;
use common::*;
use modeld::api::pb;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_anywhere_reach_all_three_servers() {
    let db = TestDb::new(Backend::Postgres).await;
    let servers = fleet_of(3, &db, |_| {}).await;

    // Activations through each server in turn, idle and then with every server taking a
    // request every 5 ms (benches/fleet.rs measures more rounds).
    let load = Load::start(&servers, Duration::from_millis(5), false).await;
    let idle = activation_rounds(&servers, 4).await;
    load.run(true);
    let loaded = activation_rounds(&servers, 4).await;
    let (served, failed) = load.stop().await;
    assert_eq!(failed, Vec::<String>::new(), "no request failed during the swaps");
    assert!(served > 0);
    println!(
        "activation on all 3 servers: idle {:.1?} ms, under light load {:.1?} ms ({served} requests, none failed)",
        idle.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        loaded.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    assert_eq!(serving(&servers[0]).await, "digits_v2");

    // A canary set through the second server shows on all three.
    canary_everywhere(&servers, 1, "digits_v1", 10).await;

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
    sql_activation_everywhere(&servers, &db.url, "digits_v2").await;
    for s in servers {
        s.stop().await.unwrap();
    }
}

/// A server started while its PostgreSQL cannot be reached answers at once — health
/// NOT_SERVING, alive but not ready on HTTP, every other call UNAVAILABLE saying why — and
/// serves once the database answers (a fleet whose database comes up after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_while_the_database_is_down_serves_once_it_is_up() {
    let db = TestDb::new(Backend::Postgres).await;
    // Seed the registry first (as the rest of the fleet would have).
    let seeded = TestServer::start_on(TestDb::shared(&db), model_root(), |_| {}).await;
    seeded.wait_serving("digits_v2").await;
    seeded.stop().await.unwrap();

    let mut proxy = TcpProxy::start(db.server_addr()).await;
    proxy.close().await;
    // Returns once health answers: it does while the server waits.
    let server = TestServer::start_on(db.through(proxy.port), model_root(), |_| {}).await;
    assert_eq!(server.health().await, Some(ServingStatus::NotServing));
    let waiting = "waiting for its model registry";
    let e = server
        .inference()
        .await
        .predict(digits_request("", &eval_rows(1)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains(waiting), "{e:?}");
    let e = server
        .registry()
        .await
        .get_server_status(pb::GetServerStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    // The probes the manifests use: alive (no restart while the database is away), not ready.
    let http = |path: &str| reqwest::get(server.http_url(path));
    assert_eq!(http("/v2/health/live").await.unwrap().status(), 200);
    assert_eq!(http("/v2/health/ready").await.unwrap().status(), 400);
    let r = http("/api/v1/models").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body = r.text().await.unwrap();
    assert!(body.contains(waiting), "{body}");
    let r = http("/v2/models/digits/infer").await.unwrap();
    assert_eq!(r.status(), 503);

    proxy.open().await;
    server.wait_for_health(ServingStatus::Serving).await;
    server.wait_serving("digits_v2").await;
    assert_eq!(http("/v2/health/ready").await.unwrap().status(), 200);
    assert_eq!(http("/api/v1/models").await.unwrap().status(), 200);
    server.stop().await.unwrap();
}

/// A server waiting for its database stops at once on a shutdown signal (a pod deleted while
/// the database is away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_waiting_for_the_database_stops_when_told() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut proxy = TcpProxy::start(db.server_addr()).await;
    proxy.close().await;
    let server = TestServer::start_on(db.through(proxy.port), model_root(), |_| {}).await;
    assert_eq!(server.health().await, Some(ServingStatus::NotServing));
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("stops without waiting for the database")
        .unwrap();
}

/// PostgreSQL restarted (as `systemctl restart` does) under three servers under load: no
/// request on the data path fails, and every server reconnects and catches up with a change
/// made after the restart. The generation check is set to a minute, so the change can only
/// arrive through a re-established LISTEN connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_loses_no_request_and_every_server_catches_up() {
    let pg = postgres::PrivatePostgres::start().await;
    let servers = fleet_of(3, &pg.database(), |c| c.registry_check_ms = 60_000).await;
    let load = Load::start(&servers, Duration::from_millis(2), true).await;

    pg.down().await;
    // While it is down, every server goes on serving and says the registry is unreachable
    // (each notices through its LISTEN connection, cut by the shutdown).
    everywhere(&servers, "the outage", |i| {
        let s = &servers[i];
        async move { !s.status().await.registry_reachable }
    })
    .await;
    let refused = servers[0]
        .registry()
        .await
        .activate_model(activate_req("digits_v1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    pg.up().await;

    // Every server reconnects on its own.
    let reachable = everywhere(&servers, "reconnecting", |i| {
        let s = &servers[i];
        async move { s.status().await.registry_reachable }
    })
    .await;
    // A change made through one server after the restart reaches all three.
    servers[1]
        .registry()
        .await
        .activate_model(activate_req("digits_v1"))
        .await
        .unwrap();
    let caught_up = everywhere(&servers, "the activation after the restart", |i| {
        let s = &servers[i];
        async move { serving(s).await == "digits_v1" }
    })
    .await;
    // And every server's own registry calls work again.
    for s in &servers {
        let listed = s
            .registry()
            .await
            .list_models(pb::ListModelsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.models.len(), 3);
    }
    let (served, failed) = load.stop().await;
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "no request on the data path failed; PostgreSQL log:\n{}",
        pg.log()
    );
    assert!(served > 0);
    println!(
        "PostgreSQL restarted under load: {served} requests served, none failed; all 3 servers reachable \
         {:.0} ms after it was back, a change made then served everywhere {:.0} ms later",
        ms(reachable),
        ms(caught_up)
    );
    for s in servers {
        s.stop().await.unwrap();
    }
}
