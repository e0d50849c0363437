//! The inference engine through the real gRPC clients: dynamic batching (split back exactly,
//! counted, never across versions, off by a flag), the bounded queue (RESOURCE_EXHAUSTED with a
//! retry hint) and deadlines (a request whose deadline passed is not computed).

mod common;

use std::time::Duration;

use common::*;
use modeld::api::kserve_pb as kv;
use modeld::api::pb;
use modeld::config::ServeConfig;
use tonic::Code;

/// Every model on the compute threads (the digit models are cheap enough to run inline by
/// default), `threads` of them, batching up to `max_batch` rows with a generous delay so that
/// requests sent together are batched together even on a loaded machine.
fn pooled(threads: usize, max_batch: u64, delay: Duration) -> impl FnOnce(&mut ServeConfig) {
    move |c: &mut ServeConfig| {
        c.engine.inference_threads = threads;
        c.engine.inline_max_us = 0;
        c.engine.max_batch_size = max_batch;
        c.engine.max_queue_delay_us = delay.as_micros() as u64;
    }
}

/// (batch size, executions) pairs of a model's statistics.
fn batches(s: &kv::ModelStatistics) -> Vec<(u64, u64)> {
    s.batch_stats
        .iter()
        .map(|b| (b.batch_size, b.compute_infer.unwrap().count))
        .collect()
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_split_back_exactly() {
    let server = TestServer::start_with(Backend::Sqlite, pooled(1, 8, Duration::from_millis(300))).await;
    server.wait_serving("digits_v2").await;
    // Requests of 1, 2 and 3 rows (12 rows in all), each a different slice of the evaluation set.
    let sizes = [1usize, 2, 3, 1, 2, 3];
    predict_slices_together(&server, &sizes, 1e-5).await;
    let stats = server.statistics("digits_v2").await;
    let s = &stats[0];
    assert_eq!(s.inference_count, 12);
    let by_size = batches(s);
    let rows: u64 = by_size.iter().map(|(size, n)| size * n).sum();
    let executions: u64 = by_size.iter().map(|(_, n)| n).sum();
    assert_eq!(rows, 12, "every row computed exactly once: {by_size:?}");
    assert_eq!(executions, s.execution_count);
    assert!(
        s.execution_count < sizes.len() as u64,
        "6 requests sent together within a 300 ms window ran as {} calls: {by_size:?}",
        s.execution_count
    );
    assert!(
        by_size.iter().all(|&(size, _)| size <= 8),
        "a batch exceeded 8 rows: {by_size:?}"
    );
    // The per-request overhead is reported beside Triton's fields.
    let inference = s.inference_stats.unwrap();
    let overhead = inference.server_overhead.unwrap();
    assert_eq!(overhead.count, 6);
    assert_eq!(
        overhead.ns,
        inference.success.unwrap().ns - inference.compute_infer.unwrap().ns
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("modeld_executions_total{model=\"digits_v2\",version=\"2\",batch_size=\""),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

/// Requests sent on one ModelStreamInfer stream are computed together (here: batched) and
/// answered in the order they were sent, each with its own id and its own rows' outputs.
#[tokio::test]
async fn requests_on_one_stream_are_batched_and_answered_in_order() {
    let server = TestServer::start_with(Backend::Sqlite, pooled(1, 8, Duration::from_millis(300))).await;
    server.wait_serving("digits_v2").await;
    let sizes = [1usize, 2, 3, 1, 2, 3];
    let total: usize = sizes.iter().sum();
    let (all, want) = (eval_rows(total), expected_probs("digits_v2", total));
    let mut requests = Vec::new();
    let mut start = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let mut req = kserve_request("digits_v2", &all[start * 64..(start + n) * 64]);
        req.id = format!("req-{i}");
        requests.push(req);
        start += n;
    }
    let mut stream = server
        .kserve()
        .await
        .model_stream_infer(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut start = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let reply = stream.message().await.unwrap().expect("one reply per request");
        assert!(reply.error_message.is_empty(), "{}", reply.error_message);
        let resp = reply.infer_response.unwrap();
        assert_eq!(resp.id, format!("req-{i}"), "replies come in request order");
        assert_eq!(resp.outputs[0].shape, vec![n as i64, 10]);
        assert_close(
            &raw_f32(&resp.raw_output_contents[0]),
            &want[start * 10..(start + n) * 10],
            1e-5,
        );
        start += n;
    }
    assert!(stream.message().await.unwrap().is_none());
    let s = &server.statistics("digits_v2").await[0];
    assert_eq!(s.inference_count, total as u64);
    assert!(
        s.execution_count < sizes.len() as u64,
        "6 requests sent on one stream within a 300 ms window ran as {} calls: {:?}",
        s.execution_count,
        batches(s)
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn no_batching_runs_every_request_alone() {
    let server = TestServer::start_with(Backend::Sqlite, |c: &mut ServeConfig| {
        pooled(1, 8, Duration::from_millis(300))(c);
        c.engine.no_batching = true;
    })
    .await;
    server.wait_serving("digits_v2").await;
    let rows = eval_rows(2);
    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut infer = server.inference().await;
        let rows = rows.clone();
        calls.push(tokio::spawn(async move {
            infer.predict(digits_request("digits_v2", &rows)).await.unwrap();
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let s = &server.statistics("digits_v2").await[0];
    assert_eq!((s.inference_count, s.execution_count), (12, 6));
    assert_eq!(batches(s), vec![(2, 6)]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_swap_while_requests_wait_for_a_batch_never_mixes_versions() {
    let server = TestServer::start_with(Backend::Sqlite, pooled(1, 64, Duration::from_millis(400))).await;
    server.wait_serving("digits_v2").await;
    let mut registry = server.registry().await;
    let rows = eval_rows(4);
    let infer = server.inference().await;
    let send = |n: usize| {
        (0..n)
            .map(|_| {
                let (mut infer, rows) = (infer.clone(), rows.clone());
                tokio::spawn(async move {
                    infer
                        .predict(digits_request("active", &rows))
                        .await
                        .unwrap()
                        .into_inner()
                })
            })
            .collect::<Vec<_>>()
    };
    // Four requests on v2 wait for a batch (400 ms window); v1 is activated meanwhile; four more
    // requests arrive for v1. Every answer must be entirely one version's, whichever it got.
    let first = send(4);
    eventually(
        "the first requests arrive",
        Duration::from_secs(30),
        Duration::from_millis(1),
        || async {
            match server.status().await.in_flight_requests {
                n if n >= 4 => Ok(()),
                n => Err(format!("{n} in flight")),
            }
        },
    )
    .await;
    registry.activate_model(activate_req("digits_v1")).await.unwrap();
    let second = send(4);
    let mut versions = Vec::new();
    for call in first.into_iter().chain(second) {
        let resp = call.await.unwrap();
        let model = resp.model_name.clone();
        assert_close(&raw_f32(&resp.outputs[0].raw_data), &expected_probs(&model, 4), 1e-5);
        versions.push(model);
    }
    assert!(versions[4..].iter().all(|m| m == "digits_v1"), "{versions:?}");
    let v1 = &server.statistics("digits_v1").await[0];
    let v2 = &server.statistics("digits_v2").await[0];
    let v2_requests = versions.iter().filter(|m| *m == "digits_v2").count() as u64;
    assert_eq!(v2.inference_count, 4 * v2_requests);
    assert_eq!(v1.inference_count, 4 * (8 - v2_requests));
    // Each version's calls hold only its own rows.
    for s in [v1, v2] {
        let rows: u64 = batches(s).iter().map(|(size, n)| size * n).sum();
        assert_eq!(rows, s.inference_count, "{}: {:?}", s.name, batches(s));
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_is_refused_at_once_with_a_retry_hint() {
    let server = TestServer::start_with(Backend::Sqlite, |c: &mut ServeConfig| {
        pooled(1, 1, Duration::ZERO)(c);
        c.engine.queue_capacity = 1;
    })
    .await;
    let mut registry = server.registry().await;
    registry.activate_model(switch_req("cnn")).await.unwrap();
    server.wait_serving("cnn").await;
    // One compute thread, one queue place, 12 CNN requests of 4 images sent together.
    let mut calls = Vec::new();
    for _ in 0..12 {
        let mut infer = server.inference().await;
        calls.push(tokio::spawn(async move { infer.predict(cnn_request(4)).await }));
    }
    let (mut ok, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(resp) => {
                assert_eq!(resp.into_inner().outputs[0].shape, vec![4, 10]);
                ok += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("queue is full"), "{}", status.message());
                let pushback: u64 = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .expect("a retry pushback hint")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(pushback >= 1);
                let details = tonic_types::StatusExt::get_error_details(&status);
                let retry = details.retry_info().expect("RetryInfo in the status details");
                assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()));
                refused += 1;
            }
        }
    }
    assert!(ok >= 2, "the running and the queued request are served: {ok} ok");
    assert!(refused >= 1, "12 requests on 1 thread + 1 queue place: none refused");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(&format!(
            "modeld_requests_total{{model=\"cnn\",version=\"1\",role=\"active\",outcome=\"rejected\"}} {refused}"
        )),
        "{metrics}"
    );
    // Nothing stuck: the server answers normally afterwards.
    server.assert_cnn_matches_expected(1e-4).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_whose_deadline_passes_in_the_queue_is_not_computed() {
    let server = TestServer::start_with(Backend::Sqlite, pooled(1, 1, Duration::ZERO)).await;
    let mut registry = server.registry().await;
    registry.activate_model(switch_req("cnn")).await.unwrap();
    server.wait_serving("cnn").await;
    // The only compute thread is busy with a large CNN batch; a request with a 1 ms deadline
    // (sent as grpc-timeout, as every gRPC client does) waits behind it.
    let mut slow = server.inference().await;
    let busy = tokio::spawn(async move { slow.predict(cnn_request(16)).await });
    eventually(
        "the slow request starts",
        Duration::from_secs(30),
        Duration::from_millis(1),
        || async {
            match server.status().await.engine.unwrap().busy_compute_threads {
                0 => Err("no compute thread busy"),
                _ => Ok(()),
            }
        },
    )
    .await;
    let mut late = tonic::Request::new(cnn_request(1));
    late.set_timeout(Duration::from_millis(1));
    let err = server.inference().await.predict(late).await.unwrap_err();
    // The client gives up at its deadline (tonic reports Cancelled, others DEADLINE_EXCEEDED);
    // the server drops the request from its queue when it sees the deadline passed or the
    // caller gone, whichever comes first.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert_eq!(busy.await.unwrap().unwrap().into_inner().outputs[0].shape, vec![16, 10]);
    // FIFO: this request is computed after the compute thread has passed the late one.
    let after = server
        .inference()
        .await
        .predict(cnn_request(2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.outputs[0].shape, vec![2, 10]);
    let s = &server.statistics("cnn").await[0];
    assert_eq!(s.inference_count, 18, "the late request was computed");
    assert_eq!(s.execution_count, 2);
    server.stop().await.unwrap();
}

/// A request that passes validation but fails inside the engine (an index outside the lookup
/// table), batched with good requests: the batched call fails, its requests are rerun one by
/// one, the good ones get their answers and only the bad one fails.
#[tokio::test]
async fn a_failing_batched_call_costs_only_the_bad_request() {
    let server = TestServer::start_with(Backend::Sqlite, pooled(1, 8, Duration::from_millis(300))).await;
    server.wait_serving("digits_v2").await;
    server.register_active_testdata("lookup.onnx", "lookup").await;
    let engine = server.status().await.engine.unwrap();
    assert!(engine.serving_batchable, "{engine:?}");
    assert_eq!(engine.failed_batches, 0);
    let lookup = |indices: Vec<i64>| pb::PredictRequest {
        model_name: "lookup".into(),
        inputs: vec![pb::Tensor {
            name: "index".into(),
            datatype: "INT64".into(),
            shape: vec![indices.len() as i64, 1],
            int64_data: indices,
            ..Default::default()
        }],
        routing_key: String::new(),
    };
    // Sent together: within the 300 ms batching window of the one compute thread.
    let mut calls = Vec::new();
    for indices in [vec![3], vec![42], vec![1, 2]] {
        let mut infer = server.inference().await;
        let request = lookup(indices);
        calls.push(tokio::spawn(async move { infer.predict(request).await }));
    }
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    assert_eq!(results[0].as_ref().unwrap().get_ref().outputs[0].fp32_data, vec![1.5]);
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    // tract panics on the index (caught: it costs one request); details stay in the server log.
    assert!(
        err.message().contains("the server log has the detail") && err.message().contains("request id"),
        "{err:?}"
    );
    let id = err
        .metadata()
        .get("x-request-id")
        .expect("the response names its request id");
    assert!(err.message().contains(id.to_str().unwrap()), "{err:?}");
    assert_eq!(
        results[2].as_ref().unwrap().get_ref().outputs[0].fp32_data,
        vec![0.5, 1.0]
    );

    let engine = server.status().await.engine.unwrap();
    assert_eq!(
        engine.failed_batches, 1,
        "the three requests were batched, and the batch failed"
    );
    let s = &server.statistics("lookup").await[0];
    assert_eq!(s.inference_stats.unwrap().success.unwrap().count, 2);
    assert_eq!(s.inference_stats.unwrap().fail.unwrap().count, 1);
    assert_eq!(
        batches(s),
        vec![(1, 1), (2, 1)],
        "the good requests ran alone after the failed batch"
    );
    assert!(server.metrics().await.contains("modeld_failed_batches_total 1"));
    server.stop().await.unwrap();
}
