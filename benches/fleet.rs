//! How fast a change reaches a fleet: three servers on one PostgreSQL registry (a database of
//! its own on the machine's server, as the tests make), each in this process on loopback.
//! Measures, from when the call that made a change returns until all three serve it:
//!
//! - an activation made through each server in turn, idle, and under light load (every server
//!   taking a Predict every 5 ms: all that 2 cores carry next to three servers);
//! - a canary percentage, and an activation made in plain SQL;
//! - PostgreSQL restarted under that load (its own cluster, `initdb` in a temp dir): how long
//!   until every server is reachable again, and a change made then is served everywhere;
//! - `modeld activate` run as a user runs it (the binary, its own process), which returns once
//!   every live server serves the change: the command's own time, the wait it reports ("served
//!   by N of N servers in X ms": from its commit until all have applied it), and how long after
//!   the last server applied the change the command returned (the database's clock). On SQLite
//!   (one file, two servers) and PostgreSQL (three servers), idle and under light load; after
//!   each return every server is asked at once, and must serve the change.
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

/// What `rounds` CLI activations took: the command's own time, the wait it reported, and
/// the time from the last server's apply to the command's return.
struct CliRounds {
    command: Vec<Duration>,
    waited: Vec<Duration>,
    after_last_apply: Vec<Duration>,
}

/// A connection to the registry for the bench's own reads, opened once.
enum Db {
    Pg(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
}

impl Db {
    async fn open(url: &str) -> Self {
        if url.starts_with("postgres") {
            Self::Pg(sqlx::PgPool::connect(url).await.unwrap())
        } else {
            Self::Lite(sqlx::SqlitePool::connect(url).await.unwrap())
        }
    }

    /// The database's clock and the latest apply of any server, in ms since the epoch.
    async fn clock_and_last_apply(&self) -> (i64, i64) {
        let row: (i64, Option<i64>) = match self {
            Self::Pg(p) => sqlx::query_as(
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT), MAX(applied_at_ms) \
                 FROM model_servers",
            )
            .fetch_one(p)
            .await
            .unwrap(),
            Self::Lite(p) => sqlx::query_as(
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), MAX(applied_at_ms) \
                 FROM model_servers",
            )
            .fetch_one(p)
            .await
            .unwrap(),
        };
        (row.0, row.1.unwrap_or(0))
    }
}

async fn cli_rounds(servers: &[TestServer], url: &str, rounds: usize) -> CliRounds {
    let root = servers[0].root.path().to_str().unwrap().to_string();
    let env = [("MODELD_DATABASE_URL", url), ("MODELD_MODEL_ROOT", root.as_str())];
    let n = servers.len();
    let mut out = CliRounds {
        command: Vec::new(),
        waited: Vec::new(),
        after_last_apply: Vec::new(),
    };
    let db = Db::open(url).await;
    for _ in 0..rounds {
        let target = if serving(&servers[0]).await == "digits_v2" {
            "digits_v1"
        } else {
            "digits_v2"
        };
        let started = std::time::Instant::now();
        let run = run_modeld(servers[0].root.path(), &env, &["activate", target]).await;
        let command = started.elapsed();
        let (now, last_apply) = db.clock_and_last_apply().await;
        assert_eq!(run.code, 0, "{run:?}");
        let said = format!("served by {n} of {n} servers in ");
        let waited_ms: u64 = run
            .stdout
            .split(&said)
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("{said:?} in {run:?}"));
        // Served everywhere the moment the command returned.
        for s in servers {
            assert_eq!(serving(s).await, target, "served when the command returned");
        }
        out.command.push(command);
        out.waited.push(Duration::from_millis(waited_ms));
        // The query ran just after the return: `now` is at most that much later.
        out.after_last_apply
            .push(Duration::from_millis(u64::try_from(now - last_apply).unwrap_or(0)));
    }
    out
}

/// Prints the CLI rows for `what`.
fn print_cli(what: &str, r: CliRounds) {
    let n = r.command.len();
    println!(
        "| `modeld activate`, {what}: the command | {n} | {} |",
        quantiles(r.command)
    );
    println!(
        "| … its reported wait, commit to served by all | {n} | {} |",
        quantiles(r.waited)
    );
    println!(
        "| … last server's apply to the command's return (+ one query) | {n} | {} |",
        quantiles(r.after_last_apply)
    );
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
            let load = Load::start(&servers, Duration::from_millis(5), false).await;
            print_cli(
                "PostgreSQL, 3 servers, idle",
                cli_rounds(&servers, &db.url, rounds).await,
            );
            load.run(true);
            let loaded = cli_rounds(&servers, &db.url, rounds).await;
            let (served, failed) = load.stop().await;
            assert!(failed.is_empty(), "{failed:?}");
            print_cli(&format!("PostgreSQL, 3 servers, loaded ({served} served)"), loaded);
            for s in servers {
                s.stop().await.unwrap();
            }
        }
        {
            // One machine, the embedded default: two servers on one SQLite file.
            let db = TestDb::new(Backend::Sqlite).await;
            let servers = fleet_of(2, &db, |_| {}).await;
            let load = Load::start(&servers, Duration::from_millis(5), false).await;
            print_cli("SQLite, 2 servers, idle", cli_rounds(&servers, &db.url, rounds).await);
            load.run(true);
            let loaded = cli_rounds(&servers, &db.url, rounds).await;
            let (served, failed) = load.stop().await;
            assert!(failed.is_empty(), "{failed:?}");
            print_cli(&format!("SQLite, 2 servers, loaded ({served} served)"), loaded);
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
