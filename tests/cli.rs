//! The `modeld` binary as users run it: registry commands on a SQLite file with the server up
//! or down, and `predict` against a running server.

mod common;

use tokio::process::Command;

use common::*;
use modeld::api::pb;

/// Runs the binary without blocking the runtime the test server runs on.
async fn modeld(url: &str, root: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modeld"))
        .args(args)
        .env("MODELD_DATABASE_URL", url)
        .env("MODELD_MODEL_ROOT", root)
        .env("MODELD_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn registry_commands_work_without_a_server() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();

    let (ok, out, err) = modeld(&db.url, root.path(), &["migrate"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("up to date"));

    let (ok, out, err) = modeld(
        &db.url,
        root.path(),
        &[
            "register",
            "--name",
            "digits_v1",
            "--path",
            "digits_v1.onnx",
            "--version",
            "1.0.0",
            "--description",
            "logreg",
            "--type",
            "classifier",
            "--accuracy",
            "0.9",
            "--activate",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model"]["model_name"], "digits_v1");
    assert_eq!(v["activation"]["active"]["is_active"], true);
    assert_eq!(
        v["model"]["signature"]["inputs"][0]["shape"],
        serde_json::json!([-1, 64])
    );

    let (ok, _, err) = modeld(
        &db.url,
        root.path(),
        &[
            "register",
            "--name",
            "digits_v2",
            "--path",
            "digits_v2.onnx",
            "--version",
            "2.0.0",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = modeld(
        &db.url,
        root.path(),
        &["register", "--name", "digits_v2", "--path", "digits_v2.onnx"],
    )
    .await;
    assert!(!ok, "duplicate names are refused");
    assert!(err.contains("already registered"), "{err}");
    let (ok, _, err) = modeld(
        &db.url,
        root.path(),
        &["register", "--name", "evil", "--path", "../etc/passwd"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("escapes the model root"), "{err}");

    let (ok, out, _) = modeld(&db.url, root.path(), &["list"]).await;
    assert!(ok);
    let active_line = out.lines().find(|l| l.contains("digits_v1")).unwrap();
    assert!(active_line.contains('*'), "the active model is starred: {out}");

    let (ok, out, err) = modeld(
        &db.url,
        root.path(),
        &["activate", "digits_v2", "--reason", "better", "--json"],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["active"]["model_name"], "digits_v2");
    assert_eq!(v["previous"]["model_name"], "digits_v1");

    let (ok, _, err) = modeld(&db.url, root.path(), &["delete", "digits_v2"]).await;
    assert!(!ok, "the active model cannot be deleted");
    assert!(err.contains("active"), "{err}");

    let (ok, out, err) = modeld(&db.url, root.path(), &["rollback", "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["active"]["model_name"], "digits_v1");

    let (ok, out, _) = modeld(&db.url, root.path(), &["show", "digits_v1"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["is_active"], true);

    let (ok, out, err) = modeld(&db.url, root.path(), &["delete", "digits_v2"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("kept"));
    assert!(root.path().join("digits_v2.onnx").exists());
    let (ok, _, err) = modeld(&db.url, root.path(), &["show", "digits_v2"]).await;
    assert!(!ok);
    assert!(err.contains("not registered"), "{err}");
}

#[tokio::test]
async fn cli_changes_reach_the_registry_a_server_uses_and_predict_prints_outputs() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path();

    // The CLI works on the same SQLite file while the server runs.
    let (ok, out, err) = modeld(&server.db.url, root, &["list", "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);

    // predict with a .npy file (raw) and a .json file (typed).
    let (_, x) = npy_f32("eval/digits_x.npy");
    let npy = root.join("one.npy");
    {
        let mut f = std::fs::File::create(&npy).unwrap();
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[2, 64])
            .writer(&mut f)
            .begin_nd()
            .unwrap();
        w.extend(x[..128].iter().copied()).unwrap();
        w.finish().unwrap();
    }
    let (ok, out, err) = modeld(
        &server.db.url,
        root,
        &["predict", "--server", &server.url(), "--input", npy.to_str().unwrap()],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model_name"], "digits_v2");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 10]));
    let labels: Vec<i64> = serde_json::from_value(v["outputs"][1]["data"].clone()).unwrap();
    assert_eq!(labels, npy_i64("expected/digits_v2_label.npy")[..2]);

    let json_in = root.join("one.json");
    let row: Vec<f32> = x[..64].to_vec();
    std::fs::write(&json_in, serde_json::to_string(&vec![row]).unwrap()).unwrap();
    let (ok, out, err) = modeld(
        &server.db.url,
        root,
        &[
            "predict",
            "--server",
            &server.url(),
            "--model",
            "digits_v2",
            "--input",
            json_in.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let probs: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
    let (_, want) = npy_f32("expected/digits_v2_probabilities.npy");
    assert_close(&probs, &want[..10], 1e-5);

    // A bad input reaches the user as the server's message.
    std::fs::write(&json_in, "[[1, 2, 3]]").unwrap();
    let (ok, _, err) = modeld(
        &server.db.url,
        root,
        &[
            "predict",
            "--server",
            &server.url(),
            "--input",
            json_in.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("expected [N,64] FP32, got [1,3] FP32"), "{err}");

    // An activation made by the CLI is in the registry the server reads.
    let (ok, _, err) = modeld(&server.db.url, root, &["activate", "digits_v1"]).await;
    assert!(ok, "{err}");
    let active = server
        .registry()
        .await
        .get_active_model(pb::GetActiveModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.model.unwrap().model_name, "digits_v1");
}

#[tokio::test]
async fn an_unknown_engine_is_refused_before_anything_starts() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let (ok, _, err) = modeld(
        &db.url,
        root.path(),
        &["serve", "--listen", "127.0.0.1:0", "--engine", "tensorrt"],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("invalid value 'tensorrt' for '--engine <ENGINE>'")
            && err.contains("[possible values: tract, onnxruntime, auto]"),
        "{err}"
    );
}
