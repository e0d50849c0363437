//! The Open Inference Protocol (KServe v2) over gRPC, through the generated client: the same
//! registry, slot and request path as modeld.v1.

mod common;

use common::*;
use modeld::api::kserve_pb as kv;
use tonic::Code;

type Client = kv::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

async fn client(server: &TestServer) -> Client {
    Client::new(server.channel().await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

#[tokio::test]
async fn server_and_model_metadata_config_and_readiness() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut c = client(&server).await;
    assert!(c.server_live(kv::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(
        c.server_ready(kv::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(kv::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "modeld");
    for ext in ["model_repository", "statistics", "model_configuration"] {
        assert!(meta.extensions.iter().any(|e| e == ext), "{ext}");
    }

    let ready = |name: &str| kv::ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    };
    assert!(c.model_ready(ready("digits_v2")).await.unwrap().into_inner().ready);
    assert!(c.model_ready(ready("active")).await.unwrap().into_inner().ready);
    assert!(
        !c.model_ready(ready("digits_v1")).await.unwrap().into_inner().ready,
        "registered, not active"
    );
    assert_eq!(c.model_ready(ready("nope")).await.unwrap_err().code(), Code::NotFound);

    // Metadata and config for every registered model, active or not.
    for (name, input, per_item) in [("digits_v1", "input", vec![64]), ("cnn", "image", vec![3, 224, 224])] {
        let m = c
            .model_metadata(kv::ModelMetadataRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(m.name, name);
        assert_eq!(m.inputs[0].name, input);
        assert_eq!(m.inputs[0].datatype, "FP32");
        let mut shape = vec![-1];
        shape.extend(&per_item);
        assert_eq!(m.inputs[0].shape, shape, "metadata keeps the leading -1");
        let cfg = c
            .model_config(kv::ModelConfigRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let cfg = cfg.config.unwrap();
        assert!(cfg.max_batch_size > 0);
        assert_eq!(cfg.input[0].dims, per_item, "config dims leave out the batch dim");
        assert_eq!(cfg.input[0].data_type, kv::DataType::TypeFp32 as i32);
        assert_eq!(cfg.platform, "tract_onnx");
        match cfg.scheduling_choice {
            Some(kv::model_config::SchedulingChoice::DynamicBatching(b)) => {
                assert_eq!(b.max_queue_delay_microseconds, 0, "the default delay");
            }
            other => panic!("dynamic batching is on by default: {other:?}"),
        }
        let cores = std::thread::available_parallelism().unwrap().get() as i32;
        assert_eq!(cfg.instance_group[0].count, cores, "one compute thread per core");
    }
    let m = c
        .model_metadata(kv::ModelMetadataRequest {
            name: "digits_v2".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let outs: Vec<_> = m
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.datatype.as_str()))
        .collect();
    assert_eq!(outs, [("probabilities", "FP32"), ("label", "INT64")]);
    let m = c
        .model_metadata(kv::ModelMetadataRequest {
            name: "active".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.name, "active", "the alias is echoed so load tools keep using it");
    assert_eq!(m.versions, ["2"]);
    assert_eq!(
        c.model_config(kv::ModelConfigRequest {
            name: "nope".into(),
            version: String::new()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn model_infer_raw_typed_requested_outputs_and_errors() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut c = client(&server).await;
    let (_, probs) = npy_f32("expected/digits_v2_probabilities.npy");
    let labels = npy_i64("expected/digits_v2_label.npy");

    // Raw in, raw out, id echoed, version stated.
    let r = c
        .model_infer(kserve_request("digits_v2", &eval_rows(8)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.model_name.as_str(), r.model_version.as_str(), r.id.as_str()),
        ("digits_v2", "2", "req-1")
    );
    assert_eq!(r.outputs.len(), 2);
    assert_eq!(r.raw_output_contents.len(), 2);
    assert_eq!(r.outputs[0].shape, vec![8, 10]);
    assert_close(&raw_f32(&r.raw_output_contents[0]), &probs[..80], 1e-5);
    assert_eq!(raw_i64(&r.raw_output_contents[1]), labels[..8]);

    // The `active` alias, and only the requested output.
    let mut req = kserve_request("active", &eval_rows(2));
    req.outputs = vec![kv::model_infer_request::InferRequestedOutputTensor {
        name: "label".into(),
        ..Default::default()
    }];
    let r = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(r.outputs.len(), 1);
    assert_eq!(r.outputs[0].name, "label");
    assert_eq!(raw_i64(&r.raw_output_contents[0]), labels[..2]);

    // Typed contents in, raw contents out (as Triton answers: its clients read
    // raw_output_contents); NaN passes through untouched.
    let mut rows = eval_rows(1);
    rows[0] = f32::NAN;
    let typed = kv::ModelInferRequest {
        model_name: "digits_v2".into(),
        inputs: vec![kv::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 64],
            contents: Some(kv::InferTensorContents {
                fp32_contents: rows,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = c.model_infer(typed).await.unwrap().into_inner();
    assert_eq!(r.raw_output_contents.len(), 2);
    assert!(r.outputs.iter().all(|o| o.contents.is_none()), "{:?}", r.outputs);
    let p = raw_f32(&r.raw_output_contents[0]);
    assert_eq!(p.len(), 10);
    assert!(p.iter().all(|v| v.is_nan()), "NaN in, NaN out: {p:?}");

    // Errors: the same checks and codes as modeld.v1.
    let mut bad = kserve_request("digits_v2", &eval_rows(1));
    bad.inputs[0].shape = vec![1, 63];
    let s = c.model_infer(bad).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("expected [N,64] FP32, got [1,63] FP32"),
        "{}",
        s.message()
    );
    let mut two = kserve_request("digits_v2", &eval_rows(1));
    two.raw_input_contents.push(vec![]);
    assert_eq!(c.model_infer(two).await.unwrap_err().code(), Code::InvalidArgument);
    let mut out = kserve_request("digits_v2", &eval_rows(1));
    out.outputs = vec![kv::model_infer_request::InferRequestedOutputTensor {
        name: "logits".into(),
        ..Default::default()
    }];
    assert_eq!(c.model_infer(out).await.unwrap_err().code(), Code::InvalidArgument);
    // digits_v1 is registered, not active: a candidate, answered by its name.
    let tried = c
        .model_infer(kserve_request("digits_v1", &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tried.model_name, "digits_v1");
    // An unknown model or version in Triton's opening words (its clients look for them).
    let unknown = c.model_infer(kserve_request("nope", &eval_rows(1))).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown
            .message()
            .starts_with("Request for unknown model: model \"nope\" is not registered"),
        "{unknown:?}"
    );
    let mut v = kserve_request("digits_v2", &eval_rows(1));
    v.model_version = "9".into();
    let version = c.model_infer(v).await.unwrap_err();
    assert_eq!(version.code(), Code::NotFound);
    assert!(
        version.message().starts_with("Request for unknown model: version"),
        "{version:?}"
    );
    let meta = c
        .model_metadata(modeld::api::kserve_pb::ModelMetadataRequest {
            name: "digts_v2".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        meta.message().starts_with("Request for unknown model: ")
            && meta.message().contains("did you mean \"digits_v2\"?"),
        "{meta:?}"
    );

    // Statistics count what happened, per model and version.
    let st = c
        .model_statistics(kv::ModelStatisticsRequest {
            name: "digits_v2".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = &st.model_stats[0];
    assert_eq!((s.name.as_str(), s.version.as_str()), ("digits_v2", "2"));
    let inf = s.inference_stats.as_ref().unwrap();
    assert_eq!(inf.success.unwrap().count, 3);
    assert_eq!(
        inf.fail.unwrap().count,
        1,
        "the bad shape reached the served model and failed there"
    );
    assert_eq!(s.inference_count, 8 + 2 + 1, "samples, not requests");
    assert!(inf.compute_infer.unwrap().ns > 0 && inf.compute_input.unwrap().count == 3);
    let st = c
        .model_statistics(kv::ModelStatisticsRequest {
            name: "cnn".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.model_stats[0]
            .inference_stats
            .as_ref()
            .unwrap()
            .success
            .unwrap()
            .count,
        0
    );
}

#[tokio::test]
async fn stream_infer_answers_each_request_and_reports_errors_in_stream() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut c = client(&server).await;
    let mut bad = kserve_request("digits_v2", &eval_rows(1));
    bad.inputs[0].datatype = "INT64".into();
    bad.id = "bad".into();
    let mut good = kserve_request("active", &eval_rows(1));
    good.id = "good".into();
    let reqs = vec![kserve_request("digits_v2", &eval_rows(1)), bad, good];
    let mut stream = c
        .model_stream_infer(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m);
    }
    assert_eq!(got.len(), 3);
    assert!(got[0].error_message.is_empty());
    assert!(
        got[1].error_message.contains("expected [N,64] FP32"),
        "{}",
        got[1].error_message
    );
    assert_eq!(got[1].infer_response.as_ref().unwrap().id, "bad");
    assert_eq!(got[2].infer_response.as_ref().unwrap().id, "good");
    assert_eq!(got[2].infer_response.as_ref().unwrap().raw_output_contents.len(), 2);
}

#[tokio::test]
async fn repository_index_load_and_unload() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut c = client(&server).await;
    let idx = c
        .repository_index(kv::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    let states: Vec<_> = idx.models.iter().map(|m| (m.name.as_str(), m.state.as_str())).collect();
    assert_eq!(
        states,
        [
            ("cnn", "UNAVAILABLE"),
            ("digits_v1", "UNAVAILABLE"),
            ("digits_v2", "READY")
        ]
    );
    let ready = c
        .repository_index(kv::RepositoryIndexRequest {
            ready: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ready.models.len(), 1);

    // Load = activate (same path: verified, warmed, then swapped).
    c.repository_model_load(kv::RepositoryModelLoadRequest {
        model_name: "digits_v1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let r = c
        .model_infer(kserve_request("active", &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_name, "digits_v1");
    let s = c
        .repository_model_load(kv::RepositoryModelLoadRequest {
            model_name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);

    // Unload: refused for the active model, a no-op otherwise.
    let s = c
        .repository_model_unload(kv::RepositoryModelUnloadRequest {
            model_name: "digits_v1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("active"), "{}", s.message());
    c.repository_model_unload(kv::RepositoryModelUnloadRequest {
        model_name: "digits_v2".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(server.status().await.serving.unwrap().model_name, "digits_v1");
}

/// ModelInfer pinned to a version, on the alias, while another task swaps the active model in a
/// loop: every answer is either NOT_FOUND (that version is not served right now) or computed
/// by exactly the version it was checked against — its outputs are that version's, never the
/// other's. (The request resolves its model once; a second snapshot for the computation could
/// check version 2 and compute version 1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_pinned_requests_never_compute_another_version_across_swaps() {
    let server = TestServer::start(Backend::Sqlite).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let mut reg = server.registry().await;
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut swaps = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = if swaps % 2 == 0 { "digits_v1" } else { "digits_v2" };
                reg.activate_model(activate_req(name)).await.unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let rows = eval_rows(1);
    let (v1, v2) = (expected_probs("digits_v1", 1), expected_probs("digits_v2", 1));
    let mut pinned = Vec::new();
    for version in ["1", "2"] {
        let mut c = client(&server).await;
        let (rows, want, other) = if version == "1" {
            (rows.clone(), v1.clone(), v2.clone())
        } else {
            (rows.clone(), v2.clone(), v1.clone())
        };
        pinned.push(tokio::spawn(async move {
            let (mut served, mut not_served) = (0, 0);
            for _ in 0..400 {
                let mut req = kserve_request("active", &rows);
                req.model_version = version.into();
                req.outputs = vec![kv::model_infer_request::InferRequestedOutputTensor {
                    name: "probabilities".into(),
                    ..Default::default()
                }];
                match c.model_infer(req).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        assert_eq!(resp.model_version, version);
                        let got = raw_f32(&resp.raw_output_contents[0]);
                        let close = |w: &[f32]| got.iter().zip(w).all(|(a, b)| (a - b).abs() < 1e-5);
                        assert!(
                            close(&want) && !close(&other),
                            "version {version} answered with another version's outputs"
                        );
                        served += 1;
                    }
                    Err(s) => {
                        assert_eq!(s.code(), Code::NotFound, "{s:?}");
                        assert!(s.message().contains("is not served"), "{s:?}");
                        not_served += 1;
                    }
                }
            }
            (served, not_served)
        }));
    }
    let mut totals = Vec::new();
    for p in pinned {
        totals.push(p.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.await.unwrap();
    assert!(swaps > 10, "the loop swapped: {swaps}");
    for (served, _) in &totals {
        assert!(*served > 0, "each version was served some of the time: {totals:?}");
    }
}
