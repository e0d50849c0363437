//! What the hardening limits (issue 25) add to each request: the browser check on the HTTP
//! port (Host, Origin, content type), and the request-bytes budget around a body (charged as
//! it arrives, given back when the request is done), against the same body read without it.
//! Run with `cargo bench --bench limits`; the numbers are in docs/benchmarks.md.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use modeld::http::browser::Policy;
use modeld::net::{Budget, Charge, Metered};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The MLP's request body over OIP REST: 64 floats as JSON, about 300 bytes.
fn mlp_body() -> Bytes {
    let data: Vec<String> = (0..64).map(|i| format!("{}.0", i % 17)).collect();
    Bytes::from(format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
        data.join(",")
    ))
}

fn browser(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits/browser");
    // The default: no tokens, so the Host is checked.
    let policy = Policy::new(&[], &[], "", true, false);
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8000"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    group.bench_function("infer_from_curl", |b| {
        b.iter(|| {
            policy
                .check(
                    &Method::POST,
                    std::hint::black_box("/v2/models/digits_v2/infer"),
                    &headers,
                )
                .unwrap();
        });
    });
    let mut page = headers.clone();
    page.insert(header::HOST, HeaderValue::from_static("localhost:8000"));
    page.insert(header::ORIGIN, HeaderValue::from_static("http://localhost:8000"));
    group.bench_function("change_from_the_admin_page", |b| {
        b.iter(|| {
            policy
                .check(
                    &Method::POST,
                    std::hint::black_box("/admin/api/v1/models/1/activate"),
                    &page,
                )
                .unwrap();
        });
    });
    group.finish();
}

fn budget(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits/body");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = mlp_body();
    let budget = Arc::new(Budget::new(512 << 20));
    group.bench_function("read_plain", |b| {
        b.iter(|| rt.block_on(async { Full::new(body.clone()).collect().await.unwrap().to_bytes() }));
    });
    group.bench_function("read_metered", |b| {
        b.iter(|| {
            rt.block_on(async {
                let charge = Charge::new(&budget);
                Metered::new(Full::new(body.clone()), charge, Duration::from_secs(60))
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
            })
        });
    });
    group.bench_function("charge_and_give_back", |b| {
        b.iter(|| {
            let charge = Charge::new(&budget);
            assert!(charge.add(std::hint::black_box(300)));
            drop(charge);
        });
    });
    group.finish();
}

criterion_group!(benches, browser, budget);
criterion_main!(benches);
