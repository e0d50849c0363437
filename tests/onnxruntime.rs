//! The ONNX Runtime engine (`--engine onnxruntime`) through the real gRPC clients, with the real
//! library from the PyPI wheel (`scripts/onnxruntime.sh` fetches it on first use): it computes
//! the bundled models to onnxruntime's own expected outputs, batches, reports itself, and falls
//! back to tract, saying why, for a model whose outputs differ from tract's and when the library
//! cannot be loaded.
#![cfg(feature = "onnxruntime")]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use modeld::api::kserve_pb as kv;
use modeld::api::pb;
use modeld::config::ServeConfig;
use modeld::model::EngineChoice;

/// ONNX Runtime's library, fetched once per test run.
fn library() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let script = bundled_models().join("../scripts/onnxruntime.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "scripts/onnxruntime.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

fn with_onnxruntime(c: &mut ServeConfig) {
    c.engine.engine = EngineChoice::Onnxruntime;
    c.engine.onnxruntime_lib = Some(library());
}

fn engine(s: &pb::ServerStatus) -> pb::EngineStatus {
    s.engine.clone().expect("a server reports its engine")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnxruntime_computes_the_bundled_models_and_says_so() {
    let server = TestServer::start_with(Backend::Sqlite, with_onnxruntime).await;
    server.wait_serving("digits_v2").await;
    let status = server.status().await;
    let e = engine(&status);
    assert_eq!(e.preferred_engine, "onnxruntime");
    assert!(e.onnxruntime.contains("ONNX Runtime 1.31.1"), "{e:?}");
    assert_eq!(e.serving_engine, "onnxruntime", "{e:?}");
    assert!(e.serving_engine_note.contains("match tract's"), "{e:?}");

    // The digits MLP, to onnxruntime's stored outputs for 50 evaluation rows.
    let mut infer = server.inference().await;
    let resp = infer
        .predict(digits_request("digits_v2", &eval_rows(50)))
        .await
        .unwrap()
        .into_inner();
    assert_close(
        &raw_f32(&resp.outputs[0].raw_data),
        &expected_probs("digits_v2", 50),
        1e-6,
    );
    let labels = raw_i64(&resp.outputs[1].raw_data);
    assert_eq!(labels, npy_i64("expected/digits_v2_label.npy")[..50]);

    // The CNN, after a swap: also computed by onnxruntime.
    server.registry().await.activate_model(switch_req("cnn")).await.unwrap();
    let e = engine(&server.status().await);
    assert_eq!(e.serving_engine, "onnxruntime", "{e:?}");
    server.assert_cnn_matches_expected(1e-6).await;

    // The Open Inference Protocol names the engine as Triton does.
    let mut kv = server.kserve().await;
    assert_eq!(server.metadata("cnn").await.platform, "onnxruntime_onnx");
    let config = kv
        .model_config(kv::ModelConfigRequest {
            name: "cnn".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(
        (config.platform.as_str(), config.backend.as_str()),
        ("onnxruntime_onnx", "onnxruntime")
    );
    let stats = server.statistics("").await;
    for name in ["digits_v2", "cnn"] {
        let s = stats
            .iter()
            .find(|s| s.name == name)
            .expect("statistics of a model that served");
        assert_eq!(s.engine, "onnxruntime", "{s:?}");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("modeld_serving_info{")
            && l.contains("model=\"cnn\"")
            && l.ends_with(",engine=\"onnxruntime\"} 1")),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnxruntime_batches_are_split_back_exactly() {
    // One compute thread and a generous delay: requests sent together are batched together.
    let server = TestServer::start_with(Backend::Sqlite, |c: &mut ServeConfig| {
        with_onnxruntime(c);
        c.engine.inference_threads = 1;
        c.engine.inline_max_us = 0;
        c.engine.max_queue_delay_us = 300_000;
    })
    .await;
    server.wait_serving("digits_v2").await;
    assert_eq!(engine(&server.status().await).serving_engine, "onnxruntime");
    assert!(engine(&server.status().await).serving_batchable);
    predict_slices_together(&server, &[1, 2, 3, 1, 2, 3], 1e-6).await;
    let stats = server.statistics("digits_v2").await;
    let s = &stats[0];
    assert_eq!(s.inference_count, 12);
    assert!(s.execution_count < 6, "6 requests ran as {} calls", s.execution_count);
    server.stop().await.unwrap();
}

/// `--engine auto` keeps, per model, whichever engine warmed up faster: ONNX Runtime for the CNN
/// (2.5x faster here), and for the MLP whichever won its warm-up, as the note says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_the_faster_engine_per_model() {
    let server = TestServer::start_with(Backend::Sqlite, |c: &mut ServeConfig| {
        with_onnxruntime(c);
        c.engine.engine = EngineChoice::Auto;
    })
    .await;
    server.wait_serving("digits_v2").await;
    let e = engine(&server.status().await);
    assert_eq!(e.preferred_engine, "auto");
    let chosen = format!("{} chosen: warm-up cost onnxruntime ", e.serving_engine);
    assert!(e.serving_engine_note.starts_with(&chosen), "{e:?}");
    assert!(e.serving_engine_note.contains("match tract's"), "{e:?}");

    server.registry().await.activate_model(switch_req("cnn")).await.unwrap();
    let e = engine(&server.status().await);
    assert_eq!(e.serving_engine, "onnxruntime", "{e:?}");
    assert!(
        e.serving_engine_note.starts_with("onnxruntime chosen: warm-up cost"),
        "{e:?}"
    );
    server.assert_cnn_matches_expected(1e-6).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_outputs_differ_from_tracts_is_computed_by_tract() {
    let server = TestServer::start_with(Backend::Sqlite, with_onnxruntime).await;
    server.wait_serving("digits_v2").await;
    // A model tract serves is never refused because of the other engine.
    server
        .register_active_testdata("engines_disagree.onnx", "disagree")
        .await;
    let e = engine(&server.status().await);
    assert_eq!(e.serving_engine, "tract", "{e:?}");
    assert!(
        e.serving_engine_note
            .starts_with("onnxruntime not used: output \"y\" differs from tract's"),
        "{e:?}"
    );
    // tract's answer: an out-of-range cast saturates.
    let resp = server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model_name: "disagree".into(),
            inputs: vec![pb::Tensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 4],
                fp32_data: vec![0.5, 0.1, 0.9, 0.0],
                ..Default::default()
            }],
            routing_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.outputs[0].int32_data, vec![i32::MAX, 1_000_000_000, i32::MAX, 0]);
    assert_eq!(server.metadata("disagree").await.platform, "tract_onnx");
    server.stop().await.unwrap();
}

/// The real binary, as an operator starts it, pointed at a library that is not there, at a file
/// that is not a library, and at a library that is not ONNX Runtime: it serves with tract, and
/// its logs and status say why.
#[tokio::test]
async fn an_unloadable_library_leaves_tract_serving() {
    let why = "cannot load ONNX Runtime from";
    let missing = "/nonexistent/libonnxruntime.so.1.31.1".to_string();
    let not_a_library = bundled_models().join("cnn.onnx").display().to_string();
    let libm = [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ]
    .iter()
    .map(|d| format!("{d}/libm.so.6"))
    .find(|p| std::path::Path::new(p).exists())
    .expect("libm.so.6 on this machine");
    for (library, detail) in [
        (missing, "cannot open shared object file"),
        (not_a_library, "invalid ELF header"),
        (libm, "does not export `OrtGetApiBase`"),
    ] {
        let db = TestDb::new(Backend::Sqlite).await;
        let root = model_root();
        let (mut child, mut lines) = spawn_serve(
            &db.url,
            root.path(),
            &["--engine", "onnxruntime", "--onnxruntime-lib", &library],
        );
        // The listening address comes first (the configuration line), the warning after it.
        let (mut warned, mut addr) = (None, None);
        while warned.is_none() || addr.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .expect("the address and the warning are logged");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["level"] == "WARN" && v["fields"]["message"].as_str().is_some_and(|m| m.contains(why)) {
                warned = Some(line.clone());
            }
            if let Some(a) = v["fields"]["addr"].as_str() {
                addr = Some(a.to_string());
            }
        }
        let addr = addr.unwrap();
        let warned = warned.unwrap();
        assert!(warned.contains("models are computed by tract instead"), "{warned}");
        assert!(warned.contains(detail), "{warned}");
        tokio::spawn(async move { while lines.next_line().await.ok().flatten().is_some() {} });

        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let registry = pb::model_registry_client::ModelRegistryClient::new(channel.clone());
        let status = eventually(
            "a model served",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                let mut registry = registry.clone();
                async move {
                    let s = registry
                        .get_server_status(pb::GetServerStatusRequest {})
                        .await
                        .unwrap()
                        .into_inner();
                    if s.serving.is_some() {
                        Ok(s)
                    } else {
                        Err(format!("{s:?}"))
                    }
                }
            },
        )
        .await;
        let e = engine(&status);
        assert_eq!(e.preferred_engine, "onnxruntime");
        assert!(e.onnxruntime.starts_with(why), "{e:?}");
        assert_eq!(e.serving_engine, "tract");
        assert!(
            e.serving_engine_note.starts_with("onnxruntime not used: cannot load"),
            "{e:?}"
        );
        let resp = pb::inference_client::InferenceClient::new(channel)
            .predict(digits_request("", &eval_rows(4)))
            .await
            .unwrap()
            .into_inner();
        assert_close(
            &raw_f32(&resp.outputs[0].raw_data),
            &expected_probs("digits_v2", 4),
            1e-5,
        );
        child.kill().await.unwrap();
    }
}
