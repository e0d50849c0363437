//! A fleet of servers on one registry, for the fleet test and its benchmark: waiting for a
//! change on every server, and a light Predict load on each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// Polls every server until `done` holds on all of them; the time that took.
pub async fn everywhere<F, Fut>(servers: &[TestServer], what: &str, mut done: F) -> Duration
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

pub async fn serving(s: &TestServer) -> String {
    s.status().await.serving.map(|m| m.model_name).unwrap_or_default()
}

/// Predict calls for the active model on every server, one per `every` each, while running.
pub struct Load {
    running: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    pub async fn start(servers: &[TestServer], every: Duration, running: bool) -> Self {
        let running = Arc::new(AtomicBool::new(running));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            let mut infer = s.inference().await;
            let (running, stop) = (Arc::clone(&running), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    if running.load(Ordering::Relaxed) {
                        match infer.predict(digits_request("", &eval_rows(1))).await {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(format!("server {i}: {:?} {}", e.code(), e.message())),
                        }
                    }
                    tokio::time::sleep(every).await;
                }
                (ok, failed)
            }));
        }
        Self { running, stop, tasks }
    }

    pub fn run(&self, on: bool) {
        self.running.store(on, Ordering::Relaxed);
    }

    /// Requests served, and every failure.
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut served, mut failed) = (0, Vec::new());
        for t in self.tasks {
            let (ok, f) = t.await.unwrap();
            served += ok;
            failed.extend(f);
        }
        (served, failed)
    }
}

pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `n` servers on the registry `db` (seeded by the first), each serving `digits_v2`.
pub async fn fleet_of(n: usize, db: &TestDb, tweak: impl Fn(&mut ServeConfig)) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        let s = TestServer::start_on(TestDb::shared(db), model_root(), &tweak).await;
        s.wait_serving("digits_v2").await;
        servers.push(s);
    }
    servers
}

/// `rounds` activations, alternating digits_v1 and digits_v2 (starting with whichever is not
/// served) and made through each server in turn: how long each took to be served by all,
/// from when the call returned.
pub async fn activation_rounds(servers: &[TestServer], rounds: usize) -> Vec<Duration> {
    let mut took = Vec::new();
    let first = serving(&servers[0]).await;
    for round in 0..rounds {
        let target = if (round % 2 == 0) == (first == "digits_v2") {
            "digits_v1"
        } else {
            "digits_v2"
        };
        servers[round % servers.len()]
            .registry()
            .await
            .activate_model(activate_req(target))
            .await
            .unwrap();
        took.push(
            everywhere(servers, &format!("activating {target}"), |i| {
                let s = &servers[i];
                async move { serving(s).await == target }
            })
            .await,
        );
    }
    took
}

/// A canary of `model` at `percentage` set through `servers[via]`: how long until every
/// server's metrics show it.
pub async fn canary_everywhere(servers: &[TestServer], via: usize, model: &str, percentage: u32) -> Duration {
    servers[via]
        .registry()
        .await
        .set_canary(pb::SetRolloutRequest {
            model: by_name(model),
            percentage,
            ..Default::default()
        })
        .await
        .unwrap();
    let want = format!(" {percentage}");
    everywhere(servers, "the canary", |i| {
        let (s, want) = (&servers[i], &want);
        async move {
            s.metrics().await.lines().any(|l| {
                l.starts_with("modeld_rollout_percentage{role=\"canary\"")
                    && l.contains(model)
                    && l.ends_with(want.as_str())
            })
        }
    })
    .await
}

/// `target` activated in plain SQL on `url`, as a DBA or a migration script would: how long
/// until every server serves it.
pub async fn sql_activation_everywhere(servers: &[TestServer], url: &str, target: &str) -> Duration {
    sql(url, "UPDATE ml_models SET is_active = FALSE WHERE is_active")
        .await
        .unwrap();
    sql(
        url,
        &format!("UPDATE ml_models SET is_active = TRUE WHERE model_name = '{target}'"),
    )
    .await
    .unwrap();
    everywhere(servers, "the SQL activation", |i| {
        let s = &servers[i];
        async move { serving(s).await == target }
    })
    .await
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
