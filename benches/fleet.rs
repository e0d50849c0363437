//! How fast a change reaches a fleet: three servers on one PostgreSQL registry (a database of
//! its own on the machine's server, as the tests make), each in this process on loopback.
//! Measures, from when the call that made a change returns until all three serve it:
//!
//! - an activation made through each server in turn, idle, and under light load (every server
//!   taking a Predict every 5 ms: all that 2 cores carry next to three servers);
//! - a canary percentage, and an activation made in plain SQL;
//! - PostgreSQL restarted under that load (its own cluster, `initdb` in a temp dir): how long
//!   until every server is reachable again, and a change made then is served everywhere.
//!
//! ```sh
//! cargo bench --bench fleet            # FLEET_ROUNDS=20 activations idle and 20 loaded
//! ```
//!
//! Prints a Markdown table (median, p90, max over the rounds); docs/operations.md quotes a run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::fleet::*;
use common::*;

fn quantiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| ms(v[((v.len() - 1) as f64 * q).round() as usize]);
    format!("{:.1} | {:.1} | {:.1}", at(0.5), at(0.9), at(1.0))
}

fn main() {
    let rounds: usize = std::env::var("FLEET_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("| change (3 servers) | rounds | median ms | p90 ms | max ms |\n| --- | --- | --- | --- | --- |");
        {
            let db = TestDb::new(Backend::Postgres).await;
            let servers = fleet_of(3, &db, |_| {}).await;
            let load = Load::start(&servers, Duration::from_millis(5), false).await;
            let idle = activation_rounds(&servers, rounds).await;
            println!("| activation, idle | {rounds} | {} |", quantiles(idle));
            load.run(true);
            let loaded = activation_rounds(&servers, rounds).await;
            let (served, failed) = load.stop().await;
            assert!(failed.is_empty(), "{failed:?}");
            println!(
                "| activation, a Predict every 5 ms on each ({served} served, none failed) | {rounds} | {} |",
                quantiles(loaded)
            );
            let other = |served: String| {
                if served == "digits_v2" {
                    "digits_v1"
                } else {
                    "digits_v2"
                }
            };
            let mut by_sql = Vec::new();
            for _ in 0..rounds.min(10) {
                let target = other(serving(&servers[0]).await);
                by_sql.push(sql_activation_everywhere(&servers, &db.url, target).await);
            }
            // The canary is the model not served, its percentage set through each server in turn.
            let candidate = other(serving(&servers[0]).await);
            let mut canary = Vec::new();
            for round in 0..rounds.min(10) {
                canary.push(canary_everywhere(&servers, round % 3, candidate, 10 + round as u32).await);
            }
            println!("| canary percentage | {} | {} |", canary.len(), quantiles(canary));
            println!("| activation in plain SQL | {} | {} |", by_sql.len(), quantiles(by_sql));
            for s in servers {
                s.stop().await.unwrap();
            }
        }
        {
            let pg = postgres::PrivatePostgres::start().await;
            let servers = fleet_of(3, &pg.database(), |_| {}).await;
            let (mut reachable, mut caught_up) = (Vec::new(), Vec::new());
            let load = Load::start(&servers, Duration::from_millis(5), true).await;
            for _ in 0..3 {
                pg.down().await;
                everywhere(&servers, "the outage", |i| {
                    let s = &servers[i];
                    async move { !s.status().await.registry_reachable }
                })
                .await;
                pg.up().await;
                reachable.push(
                    everywhere(&servers, "reconnecting", |i| {
                        let s = &servers[i];
                        async move { s.status().await.registry_reachable }
                    })
                    .await,
                );
                caught_up.push(activation_rounds(&servers, 1).await[0]);
            }
            let (served, failed) = load.stop().await;
            assert!(failed.is_empty(), "{failed:?}");
            println!(
                "| PostgreSQL restarted under load ({served} served, none failed): all reachable again | 3 | {} |",
                quantiles(reachable)
            );
            println!("| then an activation | 3 | {} |", quantiles(caught_up));
            for s in servers {
                s.stop().await.unwrap();
            }
        }
    });
}
