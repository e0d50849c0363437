//! The access check's cost on the Predict path: the token lookup alone (no tokens, 1, 10 and
//! 100 tokens, a token the server does not know), and the whole gRPC gate (`api/gate.rs`) —
//! request id, method table, token check, the body's charge, the request id on the response —
//! around a service that answers at once, with tokens off and on. Run with `cargo bench --bench access`.

use std::convert::Infallible;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use modeld::auth::{Access, Need, Scope, Tokens, grpc_need};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An access check over `n` tokens (the first one's scope is predict) and the header of the
/// last one made, so that a lookup compares all.
fn with_tokens(n: usize) -> (Access, String) {
    let mut tokens = Tokens::default();
    let mut last = String::new();
    for i in 0..n {
        last = tokens.create(&format!("t{i}"), &[Scope::Predict], None).unwrap();
    }
    (Access::required(tokens, &[]), format!("Bearer {last}"))
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("access/check");
    let need = grpc_need("/modeld.v1.Inference/Predict");
    let off = Access::default();
    group.bench_function("off", |b| b.iter(|| off.check(std::hint::black_box(None), need)));
    for n in [1usize, 10, 100] {
        let (access, header) = with_tokens(n);
        group.bench_function(BenchmarkId::new("tokens", n), |b| {
            b.iter(|| access.check(std::hint::black_box(Some(header.as_str())), need).unwrap());
        });
    }
    let (access, _) = with_tokens(10);
    let unknown = format!("Bearer mdl_{}", "0".repeat(64));
    group.bench_function("unknown_of_10", |b| {
        b.iter(|| {
            access
                .check(std::hint::black_box(Some(unknown.as_str())), need)
                .unwrap_err()
        });
    });
    group.bench_function("method_table", |b| {
        b.iter(|| grpc_need(std::hint::black_box("/modeld.v1.Inference/Predict")));
    });
    group.finish();
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = tower::service_fn(|_req: http::Request<tonic::body::Body>| async {
        Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
    });
    let mut group = c.benchmark_group("access/grpc_layer");
    let request = |header: Option<&str>| {
        let mut r = http::Request::builder().uri("/modeld.v1.Inference/Predict");
        if let Some(h) = header {
            r = r.header("authorization", h);
        }
        r.body(tonic::body::Body::empty()).unwrap()
    };
    group.bench_function("bare_service", |b| {
        b.to_async(&rt).iter(|| {
            let svc = answer;
            async move { svc.oneshot(request(None)).await.unwrap() }
        });
    });
    let gate = |access: Access| modeld::api::gate::Gate {
        access: std::sync::Arc::new(access),
        bodies: modeld::net::BodyLimits::new(512 << 20, std::time::Duration::from_secs(60)),
    };
    let off = gate(Access::default()).layer(answer);
    group.bench_function("tokens_off", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = off.clone();
            async move { svc.call(request(None)).await.unwrap() }
        });
    });
    let (access, header) = with_tokens(10);
    let on = gate(access).layer(answer);
    group.bench_function("tokens_10", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = on.clone();
            let req = request(Some(&header));
            async move {
                let r = svc.call(req).await.unwrap();
                assert!(r.headers().contains_key("x-request-id"));
                r
            }
        });
    });
    group.finish();
    let _ = Need::Open;
}

criterion_group!(benches, check, layer);
criterion_main!(benches);
