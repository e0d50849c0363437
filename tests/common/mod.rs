//! Shared test helpers: a real modeld server on 127.0.0.1:0 with a temp model root and a fresh
//! database (a SQLite file, or a uniquely named PostgreSQL database), real gRPC clients, and the
//! bundled models' expected outputs.
#![allow(dead_code, reason = "each test binary uses a different part of the helpers")]

pub mod fleet;
pub mod pki;
pub mod postgres;
pub mod synth;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use modeld::api::pb;
use modeld::config::ServeConfig;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Which registry database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// Admin URL of the PostgreSQL server the tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("MODELD_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh registry database; a PostgreSQL one is dropped with this value.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("registry.db").display());
                Self {
                    url,
                    pg_name: None,
                    _dir: dir,
                }
            }
            Backend::Postgres => {
                let name = format!(
                    "modeld_test_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .subsec_nanos()
                );
                let admin = sqlx::PgPool::connect(&pg_admin_url())
                    .await
                    .expect("PostgreSQL must run on 127.0.0.1:5432 (set MODELD_TEST_PG_URL to use another server)");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .unwrap();
                admin.close().await;
                let base = pg_admin_url();
                let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
                Self {
                    url,
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }
}

impl TestDb {
    /// The same database as `other`, without owning it (a second server on one registry).
    pub fn shared(other: &TestDb) -> Self {
        Self {
            url: other.url.clone(),
            pg_name: None,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A database at `url` that the test does not own (nothing is dropped with it).
    pub fn at(url: String) -> Self {
        Self {
            url,
            pg_name: None,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The PostgreSQL database name, if this is one.
    pub fn pg_name(&self) -> Option<&str> {
        self.pg_name.as_deref()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside any async context guarantee: use a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(admin) = sqlx::PgPool::connect(&pg_admin_url()).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&admin)
                        .await;
                        admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// The repository's bundled models directory.
pub fn bundled_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Polls `check` every `every` until it answers `Ok`, and returns that; panics once `within`
/// has passed, naming `what` and the last `Err` (the state seen). The tests' one deadline
/// loop: a condition polled with a deadline, never a sleep to synchronise.
pub async fn eventually<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {last}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

/// Whether the gRPC server at `url` answers health with SERVING.
pub async fn health_serving(url: String) -> bool {
    let Ok(channel) = Channel::from_shared(url).unwrap().connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok_and(|h| h.into_inner().status == ServingStatus::Serving as i32)
}

/// [`eventually`] for a condition that is only true or false: polled every 20 ms.
pub async fn until<F: std::future::Future<Output = bool>>(what: &str, within: Duration, mut check: impl FnMut() -> F) {
    eventually(what, within, Duration::from_millis(20), || {
        let f = check();
        async move { if f.await { Ok(()) } else { Err("false") } }
    })
    .await;
}

/// A fresh "checkout", as a user's: the bundled `models/` directory (files, examples, evaluation
/// set) under a temp dir.
pub fn checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&bundled_models(), &dir.path().join("models"));
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A temp model root holding copies of the bundled .onnx files and the seed manifest.
pub fn model_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["digits_v1.onnx", "digits_v2.onnx", "cnn.onnx", "models.json"] {
        std::fs::copy(bundled_models().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

pub type KServeClient = modeld::api::kserve_pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

/// Starts the real binary, `modeld serve` with JSON logs on `127.0.0.1:0` plus `extra`, on a
/// database and model root; returns the child (killed on drop) and its log lines.
pub fn spawn_serve(
    db_url: &str,
    root: &Path,
    extra: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) {
    spawn_serve_env(db_url, root, extra, &std::collections::HashMap::new())
}

/// The modeld binary under test.
pub const MODELD_BIN: &str = env!("CARGO_BIN_EXE_modeld");

/// The tests' one way to run the binary: `modeld`, without blocking the test's runtime, killed
/// when dropped. It inherits the test's environment; [`as_a_user`] takes modeld's variables
/// away.
pub fn modeld_command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(MODELD_BIN);
    cmd.kill_on_drop(true);
    cmd
}

/// `cmd` without the test environment's modeld variables (`MODELD_*`, `ORT_DYLIB_PATH`), as a
/// user's shell runs it.
pub fn as_a_user(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("MODELD_") || k == "ORT_DYLIB_PATH" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `modeld serve` on `127.0.0.1:0` (gRPC and HTTP) with JSON logs on a piped stderr, plus
/// `extra`; killed when dropped.
fn serve_command(extra: &[&str]) -> tokio::process::Command {
    let mut cmd = modeld_command();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ])
    .args(extra)
    .stderr(std::process::Stdio::piped());
    cmd
}

/// [`spawn_serve`] with more environment variables for the child.
pub fn spawn_serve_env(
    db_url: &str,
    root: &Path,
    extra: &[&str],
    env: &std::collections::HashMap<&str, &str>,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = serve_command(extra)
        .env("MODELD_DATABASE_URL", db_url)
        .env("MODELD_MODEL_ROOT", root)
        .envs(env)
        .spawn()
        .unwrap();
    let lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

/// A running server.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    /// The HTTP port: `/v2` (the Open Inference Protocol's REST binding) and `/metrics`.
    pub http_addr: std::net::SocketAddr,
    pub root: tempfile::TempDir,
    pub db: TestDb,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Seeded server (digits_v1, digits_v2, cnn; digits_v2 active), SERVING.
    pub async fn start(backend: Backend) -> Self {
        let s = Self::start_with(backend, |_| {}).await;
        s.wait_for_health(ServingStatus::Serving).await;
        s
    }

    /// A server with a tweaked config; does not wait for SERVING.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let db = TestDb::new(backend).await;
        let root = model_root();
        Self::start_on(db, root, tweak).await
    }

    /// A server on an existing database and model root.
    pub async fn start_on(db: TestDb, root: tempfile::TempDir, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        // MODELD_TEST_LOG=debug shows the servers' logs.
        if let Ok(filter) = std::env::var("MODELD_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let mut config = ServeConfig::new(db.url.clone(), root.path());
        config.drain_timeout_secs = 5;
        // Fast watchers keep the tests quick; the defaults are measured in the docs.
        config.registry_poll_ms = 20;
        config.file_debounce_ms = 50;
        tweak(&mut config);
        let tls = config.tls_cert.is_some();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(modeld::app::serve_with(config, listener, Some(http), async move {
            let _ = rx.await;
        }));
        let s = Self {
            addr,
            http_addr,
            root,
            db,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        // A TLS server is waited for by the test's own TLS client.
        if !tls {
            s.wait_for_health_response().await;
        }
        s
    }

    /// `GET /metrics`, as Prometheus scrapes it.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.http_addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: modeld\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// GetServerStatus.
    /// `GET /api/v1/models` as JSON (tokens off).
    pub async fn models_json(&self) -> serde_json::Value {
        let r = reqwest::get(self.http_url("/api/v1/models")).await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.unwrap()
    }

    pub async fn status(&self) -> pb::ServerStatus {
        self.registry()
            .await
            .get_server_status(pb::GetServerStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Polls GetServerStatus until `pred` holds (deadline 20 s); returns the status and how long
    /// it took.
    pub async fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&pb::ServerStatus) -> bool,
    ) -> (pb::ServerStatus, Duration) {
        let client = self.registry().await;
        let started = Instant::now();
        let s = eventually(what, Duration::from_secs(20), Duration::from_millis(2), || {
            let mut client = client.clone();
            let pred = &pred;
            async move {
                let s = client
                    .get_server_status(pb::GetServerStatusRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                if pred(&s) { Ok(s) } else { Err(format!("{s:#?}")) }
            }
        })
        .await;
        (s, started.elapsed())
    }

    /// Waits until this server serves `name`.
    pub async fn wait_serving(&self, name: &str) -> Duration {
        self.wait_status(&format!("serving {name}"), |s| {
            s.serving.as_ref().is_some_and(|m| m.model_name == name)
        })
        .await
        .1
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR` of the HTTP port, with `path` appended.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.unwrap()
    }

    /// An Open Inference Protocol client with the server's 64 MiB message limit.
    pub async fn kserve(&self) -> KServeClient {
        KServeClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// KServe ModelStatistics for `name` (empty: every model).
    pub async fn statistics(&self, name: &str) -> Vec<modeld::api::kserve_pb::ModelStatistics> {
        self.kserve()
            .await
            .model_statistics(modeld::api::kserve_pb::ModelStatisticsRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .model_stats
    }

    /// KServe ModelMetadata for `name`.
    pub async fn metadata(&self, name: &str) -> modeld::api::kserve_pb::ModelMetadataResponse {
        self.kserve()
            .await
            .model_metadata(modeld::api::kserve_pb::ModelMetadataRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Predicts the two deterministic CNN images and checks the probabilities against
    /// onnxruntime's stored outputs (within `tol`).
    pub async fn assert_cnn_matches_expected(&self, tol: f32) {
        let resp = self
            .inference()
            .await
            .predict(cnn_request(2))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.outputs[0].shape, vec![2, 10]);
        let (_, want) = npy_f32("expected/cnn_probabilities.npy");
        assert_close(&raw_f32(&resp.outputs[0].raw_data), &want, tol);
    }

    /// Copies `models/testdata/<file>` into the model root and registers it as `name`, active.
    pub async fn register_active_testdata(&self, file: &str, name: &str) {
        std::fs::copy(
            bundled_models().join("testdata").join(file),
            self.root.path().join(file),
        )
        .unwrap();
        self.registry()
            .await
            .register_model(pb::RegisterModelRequest {
                name: name.into(),
                file_path: file.into(),
                version: "1".into(),
                activate: true,
                allow_signature_change: true,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("registering {file}: {e:?}"));
    }

    pub async fn inference(&self) -> pb::inference_client::InferenceClient<Channel> {
        pb::inference_client::InferenceClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn registry(&self) -> pb::model_registry_client::ModelRegistryClient<Channel> {
        pb::model_registry_client::ModelRegistryClient::new(self.channel().await)
    }

    pub async fn health(&self) -> Option<ServingStatus> {
        let channel = Channel::from_shared(self.url()).unwrap().connect().await.ok()?;
        let resp = HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .ok()?;
        ServingStatus::try_from(resp.into_inner().status).ok()
    }

    async fn wait_for_health_response(&self) {
        until("the server answers health checks", Duration::from_secs(60), || async {
            self.health().await.is_some()
        })
        .await;
    }

    /// Polls health until it reports `want` (60 s deadline).
    pub async fn wait_for_health(&self, want: ServingStatus) {
        until(&format!("health becomes {want:?}"), Duration::from_secs(60), || async {
            self.health().await == Some(want)
        })
        .await;
    }

    /// Stops the server and hands back its database and model root, for a restart.
    pub async fn stop_and_keep(mut self) -> (TestDb, tempfile::TempDir) {
        let db = std::mem::replace(&mut self.db, TestDb::new(Backend::Sqlite).await);
        let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
        self.stop().await.unwrap();
        (db, root)
    }

    /// Stops the server and waits for it to finish draining.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads a bundled .npy as f32.
pub fn npy_f32(rel: &str) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(bundled_models().join(rel)).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec().unwrap())
}

/// Reads a bundled .npy as i64.
pub fn npy_i64(rel: &str) -> Vec<i64> {
    let bytes = std::fs::read(bundled_models().join(rel)).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap()
}

/// The first `n` rows of the evaluation set, flattened ([n,64] FP32).
pub fn eval_rows(n: usize) -> Vec<f32> {
    // Read once per test binary: parsing the .npy in a debug build costs more than a request.
    static ROWS: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    ROWS.get_or_init(|| npy_f32("eval/digits_x.npy").1)[..n * 64].to_vec()
}

/// onnxruntime's probabilities of `model` for the first `n` evaluation rows.
pub fn expected_probs(model: &str, n: usize) -> Vec<f32> {
    let (_, p) = npy_f32(&format!("expected/{model}_probabilities.npy"));
    p[..n * 10].to_vec()
}

/// Sends digits_v2 requests of `sizes` rows all at once, each a different slice of the
/// evaluation set, and checks every answer against onnxruntime's stored outputs (within `tol`).
/// Returns the total number of rows.
pub async fn predict_slices_together(server: &TestServer, sizes: &[usize], tol: f32) -> usize {
    let total: usize = sizes.iter().sum();
    let all = eval_rows(total);
    let want = expected_probs("digits_v2", total);
    let mut start = 0;
    let mut calls = Vec::new();
    for &n in sizes {
        let mut infer = server.inference().await;
        let rows = all[start * 64..(start + n) * 64].to_vec();
        let want = want[start * 10..(start + n) * 10].to_vec();
        calls.push(tokio::spawn(async move {
            let resp = infer
                .predict(digits_request("digits_v2", &rows))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(resp.outputs[0].shape, vec![n as i64, 10]);
            assert_close(&raw_f32(&resp.outputs[0].raw_data), &want, tol);
            assert_eq!(resp.outputs[1].shape, vec![n as i64]);
        }));
        start += n;
    }
    for c in calls {
        c.await.unwrap();
    }
    total
}

/// A KServe ModelInfer request (id "req-1") of `rows` (64 floats each) as raw FP32 bytes.
pub fn kserve_request(model: &str, rows: &[f32]) -> modeld::api::kserve_pb::ModelInferRequest {
    use modeld::api::kserve_pb as kv;
    kv::ModelInferRequest {
        model_name: model.into(),
        id: "req-1".into(),
        inputs: vec![kv::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![(rows.len() / 64) as i64, 64],
            ..Default::default()
        }],
        raw_input_contents: vec![f32_raw(rows)],
        ..Default::default()
    }
}

/// A raw FP32 Predict request for `batch` deterministic CNN images.
pub fn cnn_request(batch: usize) -> pb::PredictRequest {
    pb::PredictRequest {
        model_name: "cnn".into(),
        inputs: vec![pb::Tensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![batch as i64, 3, 224, 224],
            raw_data: f32_raw(&cnn_input(batch)),
            ..Default::default()
        }],
        routing_key: String::new(),
    }
}

/// The deterministic CNN input the expected outputs were computed on (models/make_models.py).
pub fn cnn_input(batch: usize) -> Vec<f32> {
    (0..batch * 3 * 224 * 224)
        .map(|i| (((i as i64 * 7919) % 1000) as f64 / 1000.0 - 0.5) as f32)
        .collect()
}

pub fn f32_raw(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn raw_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn raw_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Asserts element-wise closeness.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "length differs");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "element {i}: got {g}, want {w} (tolerance {tol})");
    }
}

/// A raw FP32 Predict request on the digits input.
pub fn digits_request(model: &str, rows: &[f32]) -> pb::PredictRequest {
    pb::PredictRequest {
        model_name: model.into(),
        inputs: vec![pb::Tensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![(rows.len() / 64) as i64, 64],
            raw_data: f32_raw(rows),
            ..Default::default()
        }],
        routing_key: String::new(),
    }
}

pub fn by_name(name: &str) -> Option<pb::ModelRef> {
    Some(pb::ModelRef {
        r#ref: Some(pb::model_ref::Ref::ModelName(name.into())),
    })
}

pub fn activate_req(name: &str) -> pb::ActivateModelRequest {
    pb::ActivateModelRequest {
        model: by_name(name),
        reason: "test".into(),
        activated_by: "test".into(),
        allow_signature_change: false,
        require_better: false,
        evaluate: None,
        wait_ms: None,
    }
}

/// An activation of a model with another signature than the active one (digits <-> cnn),
/// saying so explicitly.
pub fn switch_req(name: &str) -> pb::ActivateModelRequest {
    pb::ActivateModelRequest {
        allow_signature_change: true,
        ..activate_req(name)
    }
}

/// Runs the modeld binary without blocking the test's runtime.
pub async fn modeld_cli(url: &str, root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = modeld_command()
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

/// Runs SQL on the registry database directly, as a SQL console would.
pub async fn sql(url: &str, statement: &str) -> Result<u64, sqlx::Error> {
    let statement = sqlx::AssertSqlSafe(statement.to_string());
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        let r = sqlx::query(statement).execute(&pool).await.map(|r| r.rows_affected());
        pool.close().await;
        r
    } else {
        let pool = sqlx::SqlitePool::connect(url).await?;
        let r = sqlx::query(statement).execute(&pool).await.map(|r| r.rows_affected());
        pool.close().await;
        r
    }
}

/// Replaces `dst` with the bytes of `src` the way deploy pipelines do: write a temp file, rename.
pub fn replace_by_rename(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp-upload");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// What a run of the modeld binary printed, and its exit code.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the modeld binary as a user does: from `cwd`, with only `env` set of modeld's variables
/// (no MODELD_LOG: the command's own default log level applies).
pub async fn run_modeld(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> CliRun {
    let mut cmd = modeld_command();
    as_a_user(&mut cmd).args(args).current_dir(cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A TCP proxy on loopback in front of `target` (a database server), that a test closes to
/// make the database unreachable (every connection through it is cut) and opens again on the
/// same port.
pub struct TcpProxy {
    pub port: u16,
    target: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Self {
            port,
            target,
            task: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection's task, which
            // closes both of its sockets.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Stops listening and cuts every connection.
    pub async fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn open(&mut self) {
        let port = self.port;
        let listener = eventually(
            &format!("listening on port {port} again"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || tokio::net::TcpListener::bind(("127.0.0.1", port)),
        )
        .await;
        self.serve(listener);
    }
}

impl TestDb {
    /// The address of the database server in this database's URL.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        let host = self.url.split_once('@').unwrap().1.split_once('/').unwrap().0;
        std::net::ToSocketAddrs::to_socket_addrs(host).unwrap().next().unwrap()
    }

    /// The same database reached through 127.0.0.1:`port` (a [`TcpProxy`]), not owning it.
    pub fn through(&self, port: u16) -> TestDb {
        let (scheme, rest) = self.url.split_once("://").unwrap();
        let (creds, rest) = rest.split_once('@').unwrap();
        let db = rest.split_once('/').unwrap().1;
        TestDb {
            url: format!("{scheme}://{creds}@127.0.0.1:{port}/{db}"),
            pg_name: None,
            _dir: tempfile::tempdir().unwrap(),
        }
    }
}

/// Starts the real binary (`modeld serve` on `127.0.0.1:0` plus `extra`) and returns it (killed
/// on drop) with the address it listens on, once it answers health checks; its log is drained
/// in the background.
pub async fn spawn_server_binary(db_url: &str, root: &Path, extra: &[&str]) -> (tokio::process::Child, String) {
    let (child, mut lines) = spawn_serve(db_url, root, extra);
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the server logs its address within 30 s")
            .unwrap()
            .expect("a log line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(addr) = v["fields"]["addr"].as_str() {
            break addr.to_string();
        }
    };
    tokio::spawn(async move { while lines.next_line().await.ok().flatten().is_some() {} });
    until("the server serves", Duration::from_secs(30), || {
        health_serving(format!("http://{addr}"))
    })
    .await;
    (child, addr)
}

/// The real binary with its whole log kept: `modeld serve` on `127.0.0.1:0` (gRPC and HTTP)
/// plus `extra`, with JSON logs, SERVING.
pub struct LoggedServer {
    pub grpc: String,
    pub http: String,
    child: tokio::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    collector: tokio::task::JoinHandle<()>,
}

impl LoggedServer {
    pub async fn start(db_url: &str, root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let env: std::collections::HashMap<&str, &str> = env.iter().copied().collect();
        let (child, lines) = spawn_serve_env(db_url, root, extra, &env);
        Self::started(child, lines).await
    }

    /// `modeld serve` as a user runs it from `cwd`: the defaults (`sqlite://modeld.db` and
    /// `./models` there), none of the environment's MODELD_* variables, plus `extra`.
    pub async fn start_in(cwd: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = serve_command(extra);
        cmd.current_dir(cwd);
        for (k, _) in std::env::vars() {
            if k.starts_with("MODELD_") && k != "MODELD_ONNXRUNTIME_DIR" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().unwrap();
        let lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        Self::started(child, lines).await
    }

    async fn started(
        child: tokio::process::Child,
        mut lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    ) -> Self {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let mut addrs = Vec::new();
        while addrs.len() < 2 {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("the server logs its addresses within 30 s")
                .unwrap()
                .expect("a log line");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(a) = v["fields"]["addr"].as_str() {
                addrs.push(a.to_string());
            }
            log.lock().unwrap().push(line);
        }
        let collector = {
            let log = std::sync::Arc::clone(&log);
            tokio::spawn(async move {
                while let Ok(Some(l)) = lines.next_line().await {
                    log.lock().unwrap().push(l);
                }
            })
        };
        let s = Self {
            grpc: addrs[0].clone(),
            http: addrs[1].clone(),
            child,
            log,
            collector,
        };
        until("the server serves", Duration::from_secs(60), || {
            health_serving(format!("http://{}", s.grpc))
        })
        .await;
        s
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Stops the server as a service manager does (SIGTERM: it drains, leaves the fleet and
    /// exits) and returns every line it logged.
    pub async fn terminate(mut self) -> Vec<String> {
        let pid = self.pid().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server stops within 30 s of SIGTERM")
            .unwrap();
        assert!(exit.success(), "{exit:?}");
        (&mut self.collector).await.unwrap();
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Kills the server (SIGKILL: no drain, no goodbye) and returns every line it logged.
    pub async fn stop(mut self) -> Vec<String> {
        self.child.kill().await.unwrap();
        let _ = self.child.wait().await;
        (&mut self.collector).await.unwrap();
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// `GET url` as JSON (no token), whatever its status.
pub async fn get_json(url: String) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// PATH and LD_LIBRARY_PATH with the client tools, installed once per test run.
pub fn client_env() -> &'static [(String, String)] {
    static ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let setup = bundled_models().join("../tests/clients/setup.sh");
        let out = std::process::Command::new("bash")
            .arg(&setup)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "client setup failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    })
}

/// Predicts `rows` evaluation rows through `infer` asking for `model` ("" for the active one),
/// checks the probabilities are those of the bundled `computes` (e.g. "digits_v2"), and returns
/// the name of the model that answered.
pub async fn predict_as(
    infer: &mut pb::inference_client::InferenceClient<Channel>,
    model: &str,
    rows: usize,
    computes: &str,
) -> String {
    let got = infer
        .predict(digits_request(model, &eval_rows(rows)))
        .await
        .unwrap()
        .into_inner();
    assert_close(
        &raw_f32(&got.outputs[0].raw_data),
        &expected_probs(computes, rows),
        1e-5,
    );
    got.model_name
}

/// A test on both registries: `on_both!(name)` runs `async fn name(backend: Backend)` as the
/// tests `name::sqlite` and `name::postgres`; `on_both!(name, multi_thread)` on a runtime with
/// four worker threads.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    };
    ($name:ident, multi_thread) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    };
}
