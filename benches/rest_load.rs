//! A closed-loop load client for the Open Inference Protocol's REST binding with JSON tensors,
//! the same client against every server named, so modeld's REST and Seldon MLServer's REST
//! (which perf_analyzer cannot drive: it has no `/v2/models/{m}/config`) are measured alike.
//! `benches/load/http.sh` runs it beside perf_analyzer; it can run alone:
//!
//! ```sh
//! REST_LOAD_TARGETS="modeld=http://127.0.0.1:8000 mlserver=http://127.0.0.1:8080" \
//!   cargo bench --bench rest_load
//! ```
//!
//! Each concurrency C runs C workers, each posting one request at a time (one digits row,
//! `POST /v2/models/digits_v2/infer`) for REST_LOAD_SECS (4) after a second of warm-up;
//! REST_LOAD_ROUNDS (3) rounds, every target one right after the other in each. Prints a
//! Markdown table of the medians over the rounds: requests/s and p50 latency.

use std::time::{Duration, Instant};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// One request body: the first evaluation row of the bundled digits set as JSON tensors.
fn body() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/examples/digit_2.json");
    let rows: Vec<Vec<f32>> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": rows[0]}],
    })
    .to_string()
}

struct Run {
    per_sec: f64,
    p50: Duration,
    errors: u64,
}

async fn run(url: &str, concurrency: usize, secs: u64, body: &str) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop = warm_until + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body) = (client.clone(), url.to_string(), body.to_string());
        workers.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            loop {
                let t = Instant::now();
                if t >= stop {
                    break;
                }
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if t >= warm_until {
                    if ok {
                        lat.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (lat, e) = w.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    all.sort();
    Run {
        per_sec: all.len() as f64 / secs as f64,
        p50: all.get(all.len() / 2).copied().unwrap_or_default(),
        errors,
    }
}

/// One target at one concurrency: every round's requests/s and p50 (µs), and the errors.
struct Series {
    concurrency: usize,
    name: String,
    per_sec: Vec<f64>,
    p50_us: Vec<f64>,
    errors: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let targets: Vec<(String, String)> = env("REST_LOAD_TARGETS", "")
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(n, u)| {
            (
                n.to_string(),
                format!("{}/v2/models/digits_v2/infer", u.trim_end_matches('/')),
            )
        })
        .collect();
    if targets.is_empty() {
        eprintln!("REST_LOAD_TARGETS=\"name=http://host:port ...\" names the servers to load; nothing to do");
        return;
    }
    let concurrency: Vec<usize> = env("REST_LOAD_CONCURRENCY", "1 16")
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    let secs: u64 = env("REST_LOAD_SECS", "4").parse().unwrap();
    let rounds: usize = env("REST_LOAD_ROUNDS", "3").parse().unwrap();
    let body = body();
    // One thread: the load client takes as little of the machine as it can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results: Vec<Series> = Vec::new();
    for _ in 0..rounds {
        for &c in &concurrency {
            for (name, url) in &targets {
                let r = rt.block_on(run(url, c, secs, &body));
                eprintln!("{name} c={c}: {:.0}/s p50 {:?} errors {}", r.per_sec, r.p50, r.errors);
                let i = results
                    .iter()
                    .position(|x| x.concurrency == c && x.name == *name)
                    .unwrap_or_else(|| {
                        results.push(Series {
                            concurrency: c,
                            name: name.clone(),
                            per_sec: Vec::new(),
                            p50_us: Vec::new(),
                            errors: 0,
                        });
                        results.len() - 1
                    });
                let x = &mut results[i];
                x.per_sec.push(r.per_sec);
                x.p50_us.push(r.p50.as_secs_f64() * 1e6);
                x.errors += r.errors;
            }
        }
    }
    println!("REST with JSON tensors, one client (reqwest, one thread), medians over {rounds} rounds of {secs} s:");
    println!();
    println!(
        "| concurrency | server | requests/s | p50 | throughput / {} | errors |",
        targets.last().map_or("", |t| t.0.as_str())
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for &c in &concurrency {
        let base = results
            .iter()
            .find(|x| x.concurrency == c && Some(&x.name) == targets.last().map(|t| &t.0))
            .map(|x| median(x.per_sec.clone()));
        for x in results.iter().filter(|x| x.concurrency == c) {
            let t = median(x.per_sec.clone());
            let ratio = base
                .filter(|b| *b > 0.0)
                .map_or_else(String::new, |b| format!("{:.1}×", t / b));
            println!(
                "| {c} | {} | {t:.0} | {:.0} µs | {ratio} | {} |",
                x.name,
                median(x.p50_us.clone()),
                x.errors
            );
        }
    }
}
