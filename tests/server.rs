//! The server end to end: a real modeld on 127.0.0.1:0, real gRPC clients, real models and
//! registries (SQLite and PostgreSQL).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use modeld::api::pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn every_bundled_model_matches_onnxruntime() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut infer = server.inference().await;
    let mut registry = server.registry().await;
    for model in ["digits_v2", "digits_v1"] {
        registry.activate_model(activate_req(model)).await.unwrap();
        // Batch of 32, raw encoding: raw outputs.
        let resp = infer
            .predict(digits_request("", &eval_rows(32)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.model_name, model);
        assert_eq!(resp.outputs.len(), 2);
        let probs = &resp.outputs[0];
        assert_eq!(
            (probs.name.as_str(), probs.datatype.as_str(), probs.shape.as_slice()),
            ("probabilities", "FP32", &[32, 10][..])
        );
        assert_close(&raw_f32(&probs.raw_data), &expected_probs(model, 32), 1e-5);
        let labels = &resp.outputs[1];
        assert_eq!(
            (labels.datatype.as_str(), labels.shape.as_slice()),
            ("INT64", &[32][..])
        );
        assert_eq!(
            raw_i64(&labels.raw_data),
            npy_i64(&format!("expected/{model}_label.npy"))[..32]
        );

        // Batch of 1, typed encoding: typed outputs.
        let typed = pb::PredictRequest {
            model_name: model.into(),
            inputs: vec![pb::Tensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, 64],
                fp32_data: eval_rows(1),
                ..Default::default()
            }],
            routing_key: String::new(),
        };
        let resp = infer.predict(typed).await.unwrap().into_inner();
        assert!(resp.outputs[0].raw_data.is_empty(), "typed request gets typed outputs");
        assert_close(&resp.outputs[0].fp32_data, &expected_probs(model, 1), 1e-5);
        assert_eq!(resp.outputs[1].int64_data.len(), 1);
    }

    // Labels of v2 on the whole evaluation set give the accuracy stored in the registry.
    registry.activate_model(activate_req("digits_v2")).await.unwrap();
    let (shape, x) = npy_f32("eval/digits_x.npy");
    let y = npy_i64("eval/digits_y.npy");
    let resp = infer
        .predict(digits_request("digits_v2", &x))
        .await
        .unwrap()
        .into_inner();
    let labels = raw_i64(&resp.outputs[1].raw_data);
    assert_eq!(labels.len() as u64, shape[0]);
    let acc = labels.iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
    let stored = registry
        .get_model(pb::GetModelRequest {
            model: by_name("digits_v2"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        (acc - stored.accuracy.unwrap()).abs() < 1e-3,
        "accuracy {acc} vs registry {:?}",
        stored.accuracy
    );

    // The CNN at batch 2 (a 1.2 MB request).
    registry.activate_model(switch_req("cnn")).await.unwrap();
    server.assert_cnn_matches_expected(1e-4).await;
}

#[tokio::test]
async fn large_cnn_batches_fit_the_message_limit() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.registry().await.activate_model(switch_req("cnn")).await.unwrap();
    // 16 images: 9.6 MB, above tonic's 4 MB default.
    let req = pb::PredictRequest {
        model_name: String::new(),
        inputs: vec![pb::Tensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![16, 3, 224, 224],
            raw_data: f32_raw(&cnn_input(16)),
            ..Default::default()
        }],
        routing_key: String::new(),
    };
    let resp = server.inference().await.predict(req).await.unwrap().into_inner();
    assert_eq!(resp.outputs[0].shape, vec![16, 10]);
}

async fn registry_lifecycle(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut reg = server.registry().await;

    // The seed registered three models and activated digits_v2.
    let active = reg
        .get_active_model(pb::GetActiveModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.model.as_ref().unwrap().model_name, "digits_v2");
    assert_eq!(active.serving.as_ref().unwrap().model_name, "digits_v2");
    let sig = active.model.unwrap().signature.unwrap();
    assert_eq!(sig.inputs[0].shape, vec![-1, 64]);
    assert_eq!(sig.inputs[0].datatype, "FP32");

    // Register a new version (same file, new name), not active.
    let reg_req = pb::RegisterModelRequest {
        name: "digits_v3".into(),
        file_path: "./digits_v1.onnx".into(),
        version: "3.0.0".into(),
        description: "third".into(),
        model_type: "classifier".into(),
        accuracy: Some(0.5),
        activate: false,
        created_by: "alice".into(),
        allow_signature_change: false,
        wait_ms: None,
    };
    let made = reg.register_model(reg_req.clone()).await.unwrap().into_inner();
    let m = made.model.unwrap();
    assert!(made.activation.is_none());
    assert_eq!(
        (m.file_path.as_str(), m.is_active, m.created_by.as_str()),
        ("digits_v1.onnx", false, "alice")
    );
    let sha = modeld::model::loader::sha256_hex(&std::fs::read(server.root.path().join("digits_v1.onnx")).unwrap());
    assert_eq!(m.checksum_sha256, sha);
    assert_eq!(
        m.file_size_bytes as u64,
        std::fs::metadata(server.root.path().join("digits_v1.onnx"))
            .unwrap()
            .len()
    );

    // Duplicate name.
    let err = reg.register_model(reg_req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // List: paging and ordering.
    let page1 = reg
        .list_models(pb::ListModelsRequest {
            page_size: 2,
            page_token: String::new(),
            order_by: pb::ModelOrder::Name.into(),
            descending: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.total, 4);
    let names: Vec<_> = page1.models.iter().map(|m| m.model_name.as_str()).collect();
    assert_eq!(names, ["cnn", "digits_v1"]);
    let page2 = reg
        .list_models(pb::ListModelsRequest {
            page_size: 2,
            page_token: page1.next_page_token,
            order_by: pb::ModelOrder::Name.into(),
            descending: false,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = page2.models.iter().map(|m| m.model_name.as_str()).collect();
    assert_eq!(names, ["digits_v2", "digits_v3"]);
    assert!(page2.next_page_token.is_empty());
    let by_acc = reg
        .list_models(pb::ListModelsRequest {
            page_size: 0,
            page_token: String::new(),
            order_by: pb::ModelOrder::Accuracy.into(),
            descending: true,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = by_acc.models.iter().map(|m| m.model_name.as_str()).collect();
    assert_eq!(
        names,
        ["digits_v2", "digits_v1", "digits_v3", "cnn"],
        "highest accuracy first, unknown last"
    );
    let err = reg
        .list_models(pb::ListModelsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = reg
        .list_models(pb::ListModelsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Get by id and by name.
    let by_id = reg
        .get_model(pb::GetModelRequest {
            model: Some(pb::ModelRef {
                r#ref: Some(pb::model_ref::Ref::ModelId(m.model_id)),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.model_name, "digits_v3");
    let err = reg
        .get_model(pb::GetModelRequest { model: by_name("nope") })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = reg.get_model(pb::GetModelRequest { model: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Update metadata.
    let upd = reg
        .update_model(pb::UpdateModelRequest {
            model: by_name("digits_v3"),
            version: Some("3.0.1".into()),
            description: None,
            model_type: None,
            accuracy: Some(0.6),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (upd.version.as_str(), upd.accuracy, upd.description.as_str()),
        ("3.0.1", Some(0.6), "third")
    );
    let err = reg
        .update_model(pb::UpdateModelRequest {
            model: by_name("digits_v3"),
            accuracy: Some(1.5),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Activate: returns the new model, the previous one and the load time; predict follows.
    let act = reg
        .activate_model(activate_req("digits_v3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(act.active.unwrap().model_name, "digits_v3");
    assert_eq!(act.previous.unwrap().model_name, "digits_v2");
    assert!(act.load_time_ms > 0.0);
    let mut infer = server.inference().await;
    let resp = infer
        .predict(digits_request("", &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (resp.model_name.as_str(), resp.model_version.as_str()),
        ("digits_v3", "3.0.1")
    );

    // Activating the active model again changes nothing.
    let again = reg
        .activate_model(activate_req("digits_v3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.active.unwrap().model_name, "digits_v3");

    // Rollback goes back to digits_v2; a second one has nowhere further back to go (it never
    // flips back to digits_v3, the model the rollback left).
    let rb = reg
        .rollback_model(pb::RollbackModelRequest {
            reason: "bad canary".into(),
            activated_by: "bob".into(),
            from: None,
            wait_ms: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rb.active.unwrap().model_name, "digits_v2");
    assert_eq!(rb.previous.unwrap().model_name, "digits_v3");
    let resp = infer
        .predict(digits_request("", &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model_name, "digits_v2");
    let err = reg
        .rollback_model(pb::RollbackModelRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("nothing to roll back to: \"digits_v2\" is the first model activated"),
        "{err:?}"
    );
    // Named, the model a rollback left comes back.
    let back = reg
        .activate_model(activate_req("digits_v3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.active.unwrap().model_name, "digits_v3");

    // Delete: refused for the active model, allowed otherwise; the file stays.
    let err = reg
        .delete_model(pb::DeleteModelRequest {
            model: by_name("digits_v3"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("active"), "{}", err.message());
    reg.activate_model(activate_req("digits_v2")).await.unwrap();
    let del = reg
        .delete_model(pb::DeleteModelRequest {
            model: by_name("digits_v3"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.deleted.unwrap().model_name, "digits_v3");
    assert!(
        server.root.path().join("digits_v1.onnx").exists(),
        "deleting a record never deletes a file"
    );
    let err = reg
        .delete_model(pb::DeleteModelRequest {
            model: by_name("digits_v3"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The last activation's previous model (digits_v3) is gone: rollback says so.
    let err = reg
        .rollback_model(pb::RollbackModelRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("deleted"), "{}", err.message());

    // Register with activate: one step, served at once.
    let act = reg
        .register_model(pb::RegisterModelRequest {
            name: "digits_v4".into(),
            file_path: "digits_v1.onnx".into(),
            version: "4".into(),
            activate: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(act.activation.unwrap().previous.unwrap().model_name, "digits_v2");
    let resp = infer
        .predict(digits_request("digits_v4", &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model_version, "4");
}

on_both!(registry_lifecycle);

fn status_of<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    r.expect_err("the call must fail")
}

#[tokio::test]
async fn bad_predict_inputs_are_invalid_arguments_naming_the_input() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut infer = server.inference().await;
    let rows = eval_rows(1);

    let mut wrong_shape = digits_request("", &rows[..63]);
    wrong_shape.inputs[0].shape = vec![1, 63];
    let s = status_of(infer.predict(wrong_shape).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(s.message(), "input \"input\": expected [N,64] FP32, got [1,63] FP32");

    let mut wrong_type = digits_request("", &rows);
    wrong_type.inputs[0].datatype = "FP64".into();
    let s = status_of(infer.predict(wrong_type).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("expected [N,64] FP32, got [1,64] FP64"),
        "{}",
        s.message()
    );

    let mut short = digits_request("", &rows);
    short.inputs[0].raw_data.pop();
    let s = status_of(infer.predict(short).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("needs 256 bytes of raw data, got 255"),
        "{}",
        s.message()
    );

    let mut wrong_name = digits_request("", &rows);
    wrong_name.inputs[0].name = "image".into();
    let s = status_of(infer.predict(wrong_name).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("no input \"image\""), "{}", s.message());

    let mut both = digits_request("", &rows);
    both.inputs[0].fp32_data = rows.clone();
    let s = status_of(infer.predict(both).await);
    assert_eq!(s.code(), Code::InvalidArgument);

    let none = pb::PredictRequest {
        model_name: String::new(),
        inputs: vec![],
        routing_key: String::new(),
    };
    let s = status_of(infer.predict(none).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("missing input \"input\""), "{}", s.message());

    let s = status_of(infer.predict(digits_request("no_such_model", &rows)).await);
    assert_eq!(s.code(), Code::NotFound);

    // A registered model that is not active is a candidate: it answers by its name.
    let tried = infer
        .predict(digits_request("digits_v1", &rows))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tried.model_name.as_str(), tried.role.as_str()),
        ("digits_v1", "candidate")
    );

    // After all that, the server still serves.
    infer.predict(digits_request("", &rows)).await.unwrap();
}

#[tokio::test]
async fn bad_registrations_and_activations_change_nothing() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut reg = server.registry().await;
    let root = server.root.path();
    let register = |name: &str, path: &str| pb::RegisterModelRequest {
        name: name.into(),
        file_path: path.into(),
        ..Default::default()
    };

    let root_text = root.canonicalize().unwrap().to_string_lossy().into_owned();
    for (path, code, says) in [
        ("../digits_v1.onnx", Code::InvalidArgument, "escapes the model root"),
        (
            "/etc/passwd",
            Code::InvalidArgument,
            "relative to the server's model root (--model-root",
        ),
        (
            "missing.onnx",
            Code::NotFound,
            "does not exist under the server's model root (--model-root",
        ),
        // The API takes paths relative to the root (or to the server's working directory when
        // that lands inside the root: here it does not), and says so with what would work.
        (
            "models/digits_v1.onnx",
            Code::NotFound,
            "file_path is relative to that root",
        ),
        (
            "models/digits_v1.onnx",
            Code::NotFound,
            "the root holds \"cnn.onnx\", \"digits_v1.onnx\"",
        ),
    ] {
        let s = status_of(reg.register_model(register("x", path)).await);
        assert_eq!(s.code(), code, "{path}: {s:?}");
        assert!(s.message().contains(says), "{path}: {}", s.message());
        assert!(
            !s.message().contains(&root_text),
            "{path}: the server's path leaks: {}",
            s.message()
        );
    }
    // A symlink out of the root.
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(root.join("digits_v1.onnx"), outside.path().join("m.onnx")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("m.onnx"), root.join("link.onnx")).unwrap();
    let s = status_of(reg.register_model(register("x", "link.onnx")).await);
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        !s.message().contains(&*outside.path().to_string_lossy()),
        "{}",
        s.message()
    );
    // Broken and truncated files are refused at registration.
    std::fs::write(root.join("garbage.onnx"), b"not a model").unwrap();
    let full = std::fs::read(root.join("digits_v2.onnx")).unwrap();
    std::fs::write(root.join("half.onnx"), &full[..full.len() / 2]).unwrap();
    for path in ["garbage.onnx", "half.onnx"] {
        let s = status_of(reg.register_model(register("x", path)).await);
        assert_eq!(s.code(), Code::FailedPrecondition, "{path}: {s:?}");
        assert!(
            s.message().contains(&format!("model file \"{path}\"")),
            "{}",
            s.message()
        );
        assert!(!s.message().contains(&root_text), "{}", s.message());
    }
    // Bad names and accuracy.
    let too_long = "é".repeat(256);
    for (name, says) in [
        ("", "empty"),
        (" padded", "whitespace"),
        ("padded\u{3000}", "whitespace"),
        ("tab\tname", "control character U+0009"),
        ("zero\u{200b}width", "zero-width"),
        ("ACTIVE", "reserved"),
        ("active", "reserved"),
        (too_long.as_str(), "256 characters"),
    ] {
        let s = status_of(reg.register_model(register(name, "digits_v1.onnx")).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{name:?}");
        assert!(s.message().contains(says), "{name:?}: {}", s.message());
    }
    let mut bad_acc = register("x", "digits_v1.onnx");
    bad_acc.accuracy = Some(2.0);
    assert_eq!(
        status_of(reg.register_model(bad_acc).await).code(),
        Code::InvalidArgument
    );
    let listed = reg
        .list_models(pb::ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 3, "no failed registration left a record");

    // A registered file that changed on disk: checksum mismatch, nothing changes.
    std::fs::copy(root.join("digits_v1.onnx"), root.join("changing.onnx")).unwrap();
    reg.register_model(register("changing", "changing.onnx")).await.unwrap();
    std::fs::copy(root.join("digits_v2.onnx"), root.join("changing.onnx")).unwrap();
    let s = status_of(reg.activate_model(activate_req("changing")).await);
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("checksum mismatch"), "{}", s.message());
    // A registered file that disappeared.
    std::fs::copy(root.join("digits_v1.onnx"), root.join("vanishing.onnx")).unwrap();
    reg.register_model(register("vanishing", "vanishing.onnx"))
        .await
        .unwrap();
    std::fs::remove_file(root.join("vanishing.onnx")).unwrap();
    let s = status_of(reg.activate_model(activate_req("vanishing")).await);
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("does not exist"), "{}", s.message());
    // Unknown model.
    assert_eq!(
        status_of(reg.activate_model(activate_req("ghost")).await).code(),
        Code::NotFound
    );

    // The registry and the served model are exactly as before.
    let active = reg
        .get_active_model(pb::GetActiveModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.model.unwrap().model_name, "digits_v2");
    assert_eq!(active.serving.unwrap().model_name, "digits_v2");
    let resp = server
        .inference()
        .await
        .predict(digits_request("", &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model_name, "digits_v2");
}

#[tokio::test]
async fn health_is_not_serving_until_a_model_is_ready() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.no_seed = true).await;
    assert_eq!(server.health().await, Some(ServingStatus::NotServing));
    let mut infer = server.inference().await;
    let s = status_of(infer.predict(digits_request("", &eval_rows(1))).await);
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let s = status_of(
        server
            .registry()
            .await
            .rollback_model(pb::RollbackModelRequest::default())
            .await,
    );
    assert_eq!(s.code(), Code::FailedPrecondition);

    server
        .registry()
        .await
        .register_model(pb::RegisterModelRequest {
            name: "first".into(),
            file_path: "digits_v2.onnx".into(),
            activate: true,
            ..Default::default()
        })
        .await
        .unwrap();
    server.wait_for_health(ServingStatus::Serving).await;
    infer.predict(digits_request("", &eval_rows(1))).await.unwrap();
}

#[tokio::test]
async fn a_server_whose_active_file_is_broken_starts_not_serving() {
    let seeded = TestServer::start(Backend::Sqlite).await;
    let (db, root) = seeded.stop_and_keep().await;
    // Corrupt the active model's file: the next start stays up but NOT_SERVING.
    std::fs::write(root.path().join("digits_v2.onnx"), b"corrupt").unwrap();
    let second = TestServer::start_on(db, root, |_| {}).await;
    assert_eq!(second.health().await, Some(ServingStatus::NotServing));
    let s = status_of(
        second
            .inference()
            .await
            .predict(digits_request("", &eval_rows(1)))
            .await,
    );
    assert_eq!(s.code(), Code::Unavailable);
    assert!(s.message().contains("no model is loaded"), "{}", s.message());
    // Activating a loadable model recovers.
    second
        .registry()
        .await
        .activate_model(activate_req("digits_v1"))
        .await
        .unwrap();
    second.wait_for_health(ServingStatus::Serving).await;
    let resp = second
        .inference()
        .await
        .predict(digits_request("", &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model_name, "digits_v1");
}

#[tokio::test]
async fn swaps_under_load_never_fail_or_mix_versions() {
    let server = TestServer::start(Backend::Sqlite).await;
    let rows = eval_rows(4);
    let want: HashMap<String, Vec<f32>> = ["digits_v1", "digits_v2"]
        .into_iter()
        .map(|m| (m.to_string(), expected_probs(m, 4)))
        .collect();
    let want = Arc::new(want);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut infer = server.inference().await;
        let (rows, want, stop, served) = (rows.clone(), Arc::clone(&want), Arc::clone(&stop), Arc::clone(&served));
        tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let resp = infer
                    .predict(digits_request("", &rows))
                    .await
                    .expect("no request may fail during swaps")
                    .into_inner();
                // The outputs are exactly those of the version the response names: no mixing.
                assert_close(&raw_f32(&resp.outputs[0].raw_data), &want[&resp.model_name], 1e-5);
                let version = if resp.model_name == "digits_v1" { "1" } else { "2" };
                assert_eq!(resp.model_version, version);
                seen.insert(resp.model_name);
                served.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    let mut reg = server.registry().await;
    for i in 0..40 {
        let name = if i % 2 == 0 { "digits_v1" } else { "digits_v2" };
        let act = reg.activate_model(activate_req(name)).await.unwrap().into_inner();
        assert_eq!(act.active.unwrap().model_name, name);
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    assert!(
        served.load(Ordering::Relaxed) > 40,
        "clients kept predicting during the swaps"
    );
    assert_eq!(seen.len(), 2, "both versions served: {seen:?}");
}

#[tokio::test]
async fn reflection_lists_every_service_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = TestServer::start(Backend::Sqlite).await;

    let mut c1 = v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = c1
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer {msg:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "modeld.v1.Inference",
        "modeld.v1.ModelRegistry",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    let mut c0 = v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol("modeld.v1.Inference".into()),
        ),
    };
    let mut stream = c0
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(msg.message_response, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{msg:?}"
    );
}

/// A stop while requests are in flight (one computing on the only compute thread, the rest
/// queued behind it): the port refuses new connections at once, and every request that was in
/// flight completes with its answer before the server returns.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_the_requests_in_flight_and_refuses_new_connections() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    // About 4 M multiply-adds a row: a 1,024-row request computes for a good part of a second.
    synth::write_mlp(&root.path().join("slow.onnx"), &[64, 2000, 2000, 10], 5);
    let server = TestServer::start_on(db, root, |c| {
        c.engine.inference_threads = 1;
        c.engine.inline_max_us = 0;
        c.engine.no_batching = true;
    })
    .await;
    server.wait_for_health(ServingStatus::Serving).await;
    let mut reg = server.registry().await;
    reg.register_model(pb::RegisterModelRequest {
        name: "slow".into(),
        file_path: "slow.onnx".into(),
        activate: true,
        allow_signature_change: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let rows = eval_rows(32).repeat(32);
    let infer = server.inference().await;
    let n = 8;
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (mut infer, request) = (infer.clone(), digits_request("slow", &rows));
            tokio::spawn(async move { infer.predict(request).await })
        })
        .collect();
    server
        .wait_status("every request in flight", |s| s.in_flight_requests >= n)
        .await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    eventually(
        "the port refuses connections after the stop",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || async {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => Err("a connection was accepted"),
                Err(_) => Ok(()),
            }
        },
    )
    .await;
    let unfinished = calls.iter().filter(|c| !c.is_finished()).count();
    assert!(
        unfinished > 1,
        "the port closed only after the requests ended ({unfinished} of {n} unfinished)"
    );
    for call in calls {
        let answer = call
            .await
            .unwrap()
            .expect("a request in flight when the stop began completes")
            .into_inner();
        assert_eq!(
            (answer.model_name.as_str(), answer.outputs[0].shape.as_slice()),
            ("slow", &[1024, 10][..])
        );
    }
    stopping.await.unwrap().expect("clean shutdown");
}

/// Names as people write them, through every front end: registered by the CLI and over gRPC,
/// called by name over modeld.v1 and the Open Inference Protocol, in events, metrics and the
/// registry, on both databases; a name typed in another Unicode normal form finds its model.
async fn names_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path();
    let mut reg = server.registry().await;
    let at_limit = format!("{}{}", "é".repeat(250), " v1 ✓");
    assert_eq!(at_limit.chars().count(), 255);
    let names = [
        "YAMNet Human Detection v1",
        "Détecteur de détresse — v2",
        "音声検出モデル 第2版",
        "'; DROP TABLE ml_models; --",
        "quote \" and back\\slash",
        at_limit.as_str(),
    ];
    for (i, &name) in names.iter().enumerate() {
        if i % 2 == 0 {
            let run = modeld_cli(
                &server.db.url,
                root,
                &["register", "--name", name, "--path", "digits_v1.onnx"],
            )
            .await;
            assert!(run.0, "{name}: {}", run.2);
        } else {
            reg.register_model(pb::RegisterModelRequest {
                name: name.into(),
                file_path: "digits_v1.onnx".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let got = reg
            .get_model(pb::GetModelRequest { model: by_name(name) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.model_name, name);
        reg.activate_model(activate_req(name)).await.unwrap();
        server.wait_serving(name).await;
        let resp = server
            .inference()
            .await
            .predict(digits_request(name, &eval_rows(1)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.model_name, name);
        let resp = server
            .kserve()
            .await
            .model_infer(kserve_request(name, &eval_rows(1)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.model_name, name);
        assert_eq!(server.metadata(name).await.name, name);
        let (ok, out, err) = modeld_cli(&server.db.url, root, &["show", name]).await;
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model_name"], name);
    }
    let (ok, out, _) = modeld_cli(&server.db.url, root, &["list", "--json"]).await;
    assert!(ok);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for name in names {
        assert!(listed.iter().any(|m| m["model_name"] == name), "{name} listed");
    }
    let (ok, out, err) = modeld_cli(&server.db.url, root, &["events", "--json", "--limit", "1000"]).await;
    assert!(ok, "{err}");
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        events
            .iter()
            .any(|e| e["model_name"] == "'; DROP TABLE ml_models; --" && e["kind"] == "activated"),
        "{out}"
    );
    let m = server.metrics().await;
    assert!(
        m.contains("modeld_requests_total{model=\"quote \\\" and back\\\\slash\",version=\"\",role=\"active\",outcome=\"success\"}"),
        "escaped label:\n{m}"
    );
    assert!(m.contains("model=\"音声検出モデル 第2版\""), "{m}");

    // Stored NFC: the decomposed spelling registers as, and finds, the precomposed one.
    let decomposed = "Mode\u{301}le";
    reg.register_model(pb::RegisterModelRequest {
        name: decomposed.into(),
        file_path: "digits_v2.onnx".into(),
        activate: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let got = reg
        .get_model(pb::GetModelRequest {
            model: by_name(decomposed),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.model_name, "Mod\u{e9}le");
    let resp = server
        .inference()
        .await
        .predict(digits_request(decomposed, &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model_name, "Mod\u{e9}le");
    let dup = status_of(
        reg.register_model(pb::RegisterModelRequest {
            name: "Mod\u{e9}le".into(),
            file_path: "digits_v2.onnx".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(dup.code(), Code::AlreadyExists, "one name whatever its normal form");
    server.stop().await.unwrap();
}

on_both!(names_round_trip);

/// EvaluateModel and CompareModels over gRPC, on datasets under the server's model root: the
/// figures are stored and the latest shows in GetModel and ListModels; bad datasets are
/// INVALID_ARGUMENT without the server's paths.
async fn evaluation_over_grpc(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path();
    std::fs::create_dir(root.join("eval")).unwrap();
    for f in ["digits_x.npy", "digits_y.npy"] {
        std::fs::copy(bundled_models().join("eval").join(f), root.join("eval").join(f)).unwrap();
    }
    let mut reg = server.registry().await;
    let dataset = |path: &str| {
        Some(pb::Dataset {
            path: path.into(),
            ..Default::default()
        })
    };
    let e = reg
        .evaluate_model(pb::EvaluateModelRequest {
            model: by_name("digits_v1"),
            dataset: dataset("eval/digits_x.npy"),
            notes: "baseline".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let truth = npy_i64("eval/digits_y.npy");
    let v1 = npy_i64("expected/digits_v1_label.npy");
    let want = truth.iter().zip(&v1).filter(|(a, b)| a == b).count() as f64 / 360.0;
    assert!((e.accuracy - want).abs() < 1e-12, "{e:?}");
    assert_eq!((e.sample_size, e.classes.len(), e.confusion.len()), (360, 10, 10));
    assert_eq!(e.classes[0].class, Some(0), "class 0 is stated, not left out");
    assert_eq!(
        (e.dataset_name.as_str(), e.notes.as_str(), e.evaluated_by.as_str()),
        ("digits_x.npy", "baseline", "api")
    );

    let got = reg
        .get_model(pb::GetModelRequest {
            model: by_name("digits_v1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.latest_evaluation.as_ref().map(|l| l.log_id), Some(e.log_id));
    let c = reg
        .compare_models(pb::CompareModelsRequest {
            a: by_name("digits_v1"),
            b: by_name("digits_v2"),
            dataset: dataset("eval/digits_x.npy"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (c.better.as_str(), c.decided_by.as_str()),
        ("digits_v2", "higher accuracy")
    );
    let listed = reg
        .list_models(pb::ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let latest = |name: &str| {
        listed
            .models
            .iter()
            .find(|m| m.model_name == name)
            .unwrap()
            .latest_evaluation
            .clone()
    };
    assert_eq!(
        latest("digits_v1").unwrap().log_id,
        c.a.unwrap().log_id,
        "the newest evaluation"
    );
    assert_eq!(latest("digits_v2").unwrap().log_id, c.b.unwrap().log_id);
    assert!(latest("cnn").is_none());

    let root_text = root.canonicalize().unwrap().to_string_lossy().into_owned();
    for (path, says) in [
        ("eval/missing_x.npy", "does not exist under the server's model root"),
        ("/etc/passwd", "relative to the server's model root"),
        ("models.json", "use an .npy features file"),
    ] {
        let s = status_of(
            reg.evaluate_model(pb::EvaluateModelRequest {
                model: by_name("digits_v2"),
                dataset: dataset(path),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument, "{path}: {s:?}");
        assert!(
            s.message().contains(says) && !s.message().contains(&root_text),
            "{path}: {}",
            s.message()
        );
    }
    let s = status_of(
        reg.evaluate_model(pb::EvaluateModelRequest {
            model: by_name("cnn"),
            dataset: dataset("eval/digits_x.npy"),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    // The gate: digits_v1 is worse than the active digits_v2 on that dataset.
    let gated = pb::ActivateModelRequest {
        require_better: true,
        ..activate_req("digits_v1")
    };
    let s = status_of(reg.activate_model(gated.clone()).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message().contains("is worse than the active model \"digits_v2\""),
        "{}",
        s.message()
    );
    let s = status_of(
        reg.activate_model(pb::ActivateModelRequest {
            evaluate: dataset("eval/missing_x.npy"),
            ..gated
        })
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    // Serving was never touched.
    assert_eq!(server.status().await.serving.unwrap().model_name, "digits_v2");
    server.stop().await.unwrap();
}

on_both!(evaluation_over_grpc);

/// Switching the active model to one whose inputs or outputs differ would break every live
/// client at once: refused over gRPC and the CLI, with both signatures, unless said so; nothing
/// changes when refused.
#[tokio::test]
async fn a_signature_change_must_be_asked_for() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut reg = server.registry().await;
    let s = status_of(reg.activate_model(activate_req("cnn")).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    for says in [
        "would break the clients of the active model \"digits_v2\"",
        "input \"input\" is gone",
        "output \"label\" is gone",
        "input \"image\" is new",
        "Its signature: image [N,3,224,224] FP32 -> probabilities [N,10] FP32",
        "the active model's: input [N,64] FP32 -> probabilities [N,10] FP32, label [N] INT64",
        "--allow-signature-change",
    ] {
        assert!(s.message().contains(says), "{says:?} in {}", s.message());
    }
    // Registering with activate is an activation too: refused, and no record is left.
    std::fs::copy(
        server.root.path().join("cnn.onnx"),
        server.root.path().join("cnn2.onnx"),
    )
    .unwrap();
    let register = |allow| pb::RegisterModelRequest {
        name: "cnn2".into(),
        file_path: "cnn2.onnx".into(),
        activate: true,
        allow_signature_change: allow,
        ..Default::default()
    };
    let s = status_of(reg.register_model(register(false)).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_eq!(
        status_of(reg.get_model(pb::GetModelRequest { model: by_name("cnn2") }).await).code(),
        Code::NotFound
    );
    assert_eq!(server.status().await.serving.unwrap().model_name, "digits_v2");
    // The CLI says the same and exits 4; with the flag it goes through.
    let (ok, _, err) = modeld_cli(&server.db.url, server.root.path(), &["activate", "cnn"]).await;
    assert!(!ok && err.contains("would break the clients"), "{err}");
    let (ok, _, err) = modeld_cli(
        &server.db.url,
        server.root.path(),
        &["activate", "cnn", "--allow-signature-change"],
    )
    .await;
    assert!(ok, "{err}");
    server.wait_serving("cnn").await;
    // Asked for over gRPC: through. A rollback restores the previous model whatever its
    // signature: it is what the clients had.
    reg.register_model(register(true)).await.unwrap();
    server.wait_serving("cnn2").await;
    let rb = reg
        .rollback_model(pb::RollbackModelRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rb.active.unwrap().model_name, "cnn");
    server.stop().await.unwrap();
}

/// Trying a model by name: a registered model that is not active answers Predict, ModelInfer
/// and `modeld predict --model` by its name, loaded once into the candidate cache however many
/// requests came for it at once, while the served model and the `active` alias stay as they
/// were. Activating it moves it from the cache to the serving set.
async fn a_candidate_is_tried_by_name(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut infer = server.inference().await;
    let n = 8;
    let rows = eval_rows(n);
    let mut first = Vec::new();
    for _ in 0..16 {
        let (mut c, rows) = (infer.clone(), rows.clone());
        first.push(tokio::spawn(async move {
            c.predict(digits_request("digits_v1", &rows))
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    for t in first {
        let r = t.await.unwrap().unwrap();
        assert_eq!((r.model_name.as_str(), r.role.as_str()), ("digits_v1", "candidate"));
        assert_close(&raw_f32(&r.outputs[0].raw_data), &expected_probs("digits_v1", n), 1e-5);
    }
    let status = server.status().await;
    let cache = status.candidates.clone().unwrap();
    assert_eq!(
        cache.loads, 1,
        "16 requests for a cold candidate share one load: {cache:?}"
    );
    assert_eq!(cache.cached.len(), 1, "{cache:?}");
    let cached = &cache.cached[0];
    assert_eq!(cached.model_name, "digits_v1");
    assert!(!cached.loading && cached.resident_bytes > 0, "{cached:?}");
    assert!(status.resident_bytes > 0);
    assert_eq!(
        status.serving.unwrap().model_name,
        "digits_v2",
        "what serves is unchanged"
    );

    // The alias keeps meaning the active model.
    for alias in ["", "active"] {
        let r = infer.predict(digits_request(alias, &rows)).await.unwrap().into_inner();
        assert_eq!(
            (r.model_name.as_str(), r.role.as_str()),
            ("digits_v2", "active"),
            "{alias:?}"
        );
        assert_close(&raw_f32(&r.outputs[0].raw_data), &expected_probs("digits_v2", n), 1e-5);
    }
    // The Open Inference Protocol, by name; the candidate is ready once cached.
    let mut kserve = server.kserve().await;
    let r = kserve
        .model_infer(kserve_request("digits_v1", &rows))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_name, "digits_v1");
    assert_close(
        &raw_f32(&r.raw_output_contents[0]),
        &expected_probs("digits_v1", n),
        1e-5,
    );
    let ready = |name: &str| modeld::api::kserve_pb::ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    };
    assert!(kserve.model_ready(ready("digits_v1")).await.unwrap().into_inner().ready);
    assert!(
        !kserve.model_ready(ready("cnn")).await.unwrap().into_inner().ready,
        "not loaded yet"
    );
    // The CLI.
    let input = bundled_models().join("examples/digit_2.json");
    let (ok, out, err) = modeld_cli(
        &server.db.url,
        server.root.path(),
        &[
            "predict",
            "--server",
            &server.url(),
            "--model",
            "digits_v1",
            "--input",
            input.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["model_name"].as_str(), v["role"].as_str()),
        (Some("digits_v1"), Some("candidate"))
    );
    assert_eq!(
        server.status().await.candidates.unwrap().loads,
        1,
        "served from the cache"
    );
    let metrics = server.metrics().await;
    for line in [
        "modeld_candidate_loads_total 1\n",
        "modeld_candidate_resident_bytes{model_id=\"1\",model=\"digits_v1\",loading=\"false\"} ",
    ] {
        assert!(metrics.contains(line), "{line:?} in {metrics}");
    }
    // Nothing changed in the registry.
    let active = server
        .registry()
        .await
        .get_active_model(pb::GetActiveModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.model.unwrap().model_name, "digits_v2");

    // Activated, it serves from the set, and the cache lets go of it.
    server
        .registry()
        .await
        .activate_model(activate_req("digits_v1"))
        .await
        .unwrap();
    server.wait_serving("digits_v1").await;
    let r = infer
        .predict(digits_request("digits_v1", &rows))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.role, "active");
    assert!(server.status().await.candidates.unwrap().cached.is_empty());
}

on_both!(a_candidate_is_tried_by_name);

/// A candidate whose file is broken or gone fails the requests that name it, with the reason
/// and without the server's paths, and touches nothing that serves; a failure is not
/// remembered: once the file is right again, the candidate loads.
#[tokio::test]
async fn a_candidate_that_fails_to_load_changes_nothing() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path().to_path_buf();
    std::fs::copy(root.join("digits_v1.onnx"), root.join("spare.onnx")).unwrap();
    server
        .registry()
        .await
        .register_model(pb::RegisterModelRequest {
            name: "spare".into(),
            file_path: "spare.onnx".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut infer = server.inference().await;
    let rows = eval_rows(2);
    let root_text = root.canonicalize().unwrap().to_string_lossy().into_owned();
    let garbage = root.join("garbage.bin");
    std::fs::write(&garbage, b"not an onnx model").unwrap();
    replace_by_rename(&garbage, &root.join("spare.onnx"));
    let s = status_of(infer.predict(digits_request("spare", &rows)).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message().contains("checksum mismatch") && s.message().contains("spare.onnx"),
        "{}",
        s.message()
    );
    assert!(!s.message().contains(&root_text), "no server path: {}", s.message());
    std::fs::remove_file(root.join("spare.onnx")).unwrap();
    let s = status_of(infer.predict(digits_request("spare", &rows)).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("\"spare.onnx\" does not exist"), "{}", s.message());
    assert!(!s.message().contains(&root_text), "no server path: {}", s.message());

    let status = server.status().await;
    let cache = status.candidates.unwrap();
    // The missing file is found missing before any load starts.
    assert_eq!((cache.loads, cache.load_failures), (1, 1), "{cache:?}");
    assert!(cache.cached.is_empty(), "{cache:?}");
    assert_eq!(status.serving.unwrap().model_name, "digits_v2");
    assert!(
        !status.degraded,
        "a candidate's failure is not the server's: {:?}",
        status.degradations
    );
    let r = infer.predict(digits_request("", &rows)).await.unwrap().into_inner();
    assert_eq!(r.model_name, "digits_v2");

    std::fs::copy(root.join("digits_v1.onnx"), root.join("spare.onnx")).unwrap();
    let r = infer
        .predict(digits_request("spare", &rows))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.model_name.as_str(), r.role.as_str()), ("spare", "candidate"));
}

/// The cache holds at most --candidate-models candidates, evicting the least recently used,
/// refuses with RESOURCE_EXHAUSTED a candidate that cannot fit in --candidate-memory, and drops
/// a candidate whose registry record changed. `--candidate-models 0` turns candidates off.
#[tokio::test]
async fn the_candidate_cache_is_bounded() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    // A 4 MB file cannot fit in 2 MiB; the digits models (3 and 10 KB files) can.
    synth::write_mlp(&root.path().join("mlp.onnx"), &[64, 1000, 1000, 10], 7);
    let server = TestServer::start_on(db, root, |c| {
        c.candidates.candidate_models = 1;
        c.candidates.candidate_memory = 2 << 20;
    })
    .await;
    server.wait_for_health(ServingStatus::Serving).await;
    let mut infer = server.inference().await;
    let mut reg = server.registry().await;
    let rows = eval_rows(1);
    let cached = |s: &pb::ServerStatus| -> Vec<String> {
        s.candidates
            .as_ref()
            .unwrap()
            .cached
            .iter()
            .map(|c| c.model_name.clone())
            .collect()
    };
    infer.predict(digits_request("digits_v1", &rows)).await.unwrap();
    assert_eq!(cached(&server.status().await), ["digits_v1"]);

    reg.register_model(pb::RegisterModelRequest {
        name: "mlp".into(),
        file_path: "mlp.onnx".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let s = status_of(infer.predict(digits_request("mlp", &rows)).await);
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("--candidate-memory"), "{}", s.message());
    let status = server.status().await;
    assert_eq!(cached(&status), ["digits_v1"], "a refusal evicts nothing");
    assert_eq!(status.candidates.as_ref().unwrap().refusals, 1);

    // A second candidate evicts the first (one model at most).
    reg.register_model(pb::RegisterModelRequest {
        name: "digits_v1b".into(),
        file_path: "digits_v1.onnx".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    infer.predict(digits_request("digits_v1b", &rows)).await.unwrap();
    let status = server.status().await;
    assert_eq!(cached(&status), ["digits_v1b"]);
    assert_eq!(status.candidates.as_ref().unwrap().evictions, 1);

    // Deleted in the registry: dropped from the cache, and no longer answered.
    reg.delete_model(pb::DeleteModelRequest {
        model: by_name("digits_v1b"),
    })
    .await
    .unwrap();
    server
        .wait_status("the deleted candidate dropped", |s| cached(s).is_empty())
        .await;
    let s = status_of(infer.predict(digits_request("digits_v1b", &rows)).await);
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert_eq!(server.status().await.serving.unwrap().model_name, "digits_v2");

    // Off.
    let off = TestServer::start_with(Backend::Sqlite, |c| c.candidates.candidate_models = 0).await;
    off.wait_for_health(ServingStatus::Serving).await;
    let s = status_of(off.inference().await.predict(digits_request("digits_v1", &rows)).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("--candidate-models 0"), "{}", s.message());
}

/// The real binary: an evicted candidate's memory goes back to the system (the RSS drops), and
/// the cache's bound counts what a candidate measured in memory.
#[tokio::test]
async fn evicted_candidates_give_their_memory_back() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    // Two MLPs of ~37 MB each (64 -> 3000 -> 3000 -> 10).
    let size = synth::write_mlp(&root.path().join("big_a.onnx"), &[64, 3000, 3000, 10], 1);
    synth::write_mlp(&root.path().join("big_b.onnx"), &[64, 3000, 3000, 10], 2);
    let (child, addr) = spawn_server_binary(&db.url, root.path(), &["--candidate-models", "1"]).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reg = pb::model_registry_client::ModelRegistryClient::new(channel.clone());
    let mut infer = pb::inference_client::InferenceClient::new(channel);
    for name in ["big_a", "big_b"] {
        reg.register_model(pb::RegisterModelRequest {
            name: name.into(),
            file_path: format!("{name}.onnx"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let status = |mut reg: pb::model_registry_client::ModelRegistryClient<tonic::transport::Channel>| async move {
        reg.get_server_status(pb::GetServerStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    let rss = |s: &pb::ServerStatus| s.resident_bytes;
    let before = rss(&status(reg.clone()).await);
    let request = |name: &str| digits_request(name, &eval_rows(1));
    let r = infer.predict(request("big_a")).await.unwrap().into_inner();
    assert_eq!((r.model_name.as_str(), r.role.as_str()), ("big_a", "candidate"));
    let s = status(reg.clone()).await;
    let with_a = rss(&s);
    let measured = s.candidates.as_ref().unwrap().cached[0].resident_bytes;
    assert!(
        measured >= size * 9 / 10 && measured <= size * 2,
        "measured {measured} bytes for a {size}-byte model"
    );
    assert!(
        with_a >= before + size * 9 / 10,
        "RSS {before} -> {with_a} for a {size}-byte model"
    );

    // big_b evicts big_a: the RSS holds one big model, not two.
    infer.predict(request("big_b")).await.unwrap();
    eventually(
        "the evicted model's memory goes back",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let s = status(reg.clone()).await;
            let names: Vec<_> = s
                .candidates
                .as_ref()
                .unwrap()
                .cached
                .iter()
                .map(|c| c.model_name.clone())
                .collect();
            assert_eq!(names, ["big_b"]);
            if rss(&s) < with_a + size / 2 {
                Ok(())
            } else {
                Err(format!(
                    "RSS {} after evicting a {size}-byte model (with it: {with_a})",
                    rss(&s)
                ))
            }
        },
    )
    .await;
    drop(child);
}
