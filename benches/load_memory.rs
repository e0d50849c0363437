//! Memory while loading: the server's peak RSS during an activation against its RSS after it,
//! for models of 100 MB and more, loaded the lean way (the default) and the plain way
//! (`MODELD_PLAIN_LOAD=1`), side by side in one run. Each measurement is a fresh `modeld
//! serve` (release build, jemalloc) on a SQLite registry: the model is registered, the peak is
//! reset (`/proc/PID/clear_refs`), the model is activated over gRPC, and VmHWM and VmRSS are
//! read from `/proc/PID/status`.
//!
//! ```sh
//! cargo bench --bench load_memory
//! ```
//! Linux only (procfs). Prints a Markdown table (docs/benchmarks.md, "Memory while loading").

#[path = "../tests/common/synth.rs"]
mod synth;

use std::path::Path;
use std::time::{Duration, Instant};

use modeld::api::pb;
use tokio::io::AsyncBufReadExt;

const RUNS: usize = 3;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

struct Measured {
    before: u64,
    peak: u64,
    after: u64,
    load: Duration,
}

async fn measure(dir: &Path, file: &str, plain: bool, run: usize) -> Measured {
    let db = dir.join(format!("{file}-{plain}-{run}.db"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_modeld"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--log-format",
            "json",
            "--no-seed",
        ])
        .env("MODELD_DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("MODELD_MODEL_ROOT", dir)
        .env("MODELD_PLAIN_LOAD", if plain { "1" } else { "0" })
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("the server logs its address");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(a) = v["fields"]["addr"].as_str() {
            break a.to_string();
        }
    };
    tokio::spawn(async move { while lines.next_line().await.ok().flatten().is_some() {} });
    let channel = loop {
        if let Ok(c) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut reg = pb::model_registry_client::ModelRegistryClient::new(channel);
    reg.register_model(pb::RegisterModelRequest {
        name: "big".into(),
        file_path: file.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = status_kib(pid, "VmRSS:");
    // Resets VmHWM to the current RSS (Linux 4.0 and later).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("writing /proc/PID/clear_refs");
    let started = Instant::now();
    reg.activate_model(pb::ActivateModelRequest {
        model: Some(pb::ModelRef {
            r#ref: Some(pb::model_ref::Ref::ModelName("big".into())),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let load = started.elapsed();
    let (peak, after) = (status_kib(pid, "VmHWM:"), status_kib(pid, "VmRSS:"));
    child.kill().await.unwrap();
    Measured {
        before,
        peak,
        after,
        load,
    }
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let models: [(&str, &str, Vec<usize>); 2] = [
        (
            "mlp3.onnx",
            "64→7000→7000→10 (one 196 MB weight)",
            vec![64, 7000, 7000, 10],
        ),
        (
            "mlp9.onnx",
            "64→2048×8→10 (seven 16.8 MB weights)",
            [vec![64], vec![2048; 8], vec![10]].concat(),
        ),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "| model | file | way | RSS before | peak during | after | peak − after | (peak − after) / file | activation |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (file, label, sizes) in &models {
        let size = synth::write_mlp(&dir.path().join(file), sizes, 3) as f64 / 1e6;
        for plain in [false, true] {
            let runs: Vec<Measured> = (0..RUNS)
                .map(|run| runtime.block_on(measure(dir.path(), file, plain, run)))
                .collect();
            let before = median(runs.iter().map(|m| mb(m.before)).collect());
            let peak = median(runs.iter().map(|m| mb(m.peak)).collect());
            let after = median(runs.iter().map(|m| mb(m.after)).collect());
            let over = median(runs.iter().map(|m| mb(m.peak) - mb(m.after)).collect());
            let load = median(runs.iter().map(|m| m.load).collect());
            println!(
                "| {label} | {size:.0} MB | {} | {before:.0} MB | {peak:.0} MB | {after:.0} MB | {over:.0} MB | {:.2}× | {:.2} s |",
                if plain { "plain (before)" } else { "lean" },
                over / size,
                load.as_secs_f64()
            );
        }
    }
}
