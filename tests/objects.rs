//! Model files from object storage, against real servers on loopback: moto's standalone S3
//! server (`s3://`, reached over HTTP by the object_store client the server itself runs) and a
//! plain HTTP file server (`http://`, the same code path as `https://`). Register from a URI
//! (checksum and size recorded), activate and predict, download the verified copy, follow a
//! new version of the object (reloaded, checksum recorded), and the bad cases: a missing
//! object, an object that changed under its registered checksum, and a store that is down
//! (the server degraded with the reason), each leaving the served model serving.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use modeld::api::pb;
use tonic::Code;

/// A child process killed on drop, on a free loopback port, once it answers HTTP.
async fn start_http_server(program: &str, args: &[&str], cwd: &Path) -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = tokio::process::Command::new(program);
    let port_s = port.to_string();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "PORT" { port_s.as_str() } else { a })
        .collect();
    cmd.args(&args).current_dir(cwd).kill_on_drop(true);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in client_env() {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    let http = reqwest::Client::new();
    until(
        &format!("{program} answers on {port}"),
        Duration::from_secs(60),
        || async { http.get(format!("http://127.0.0.1:{port}/")).send().await.is_ok() },
    )
    .await;
    (child, port)
}

/// moto's S3 server with a bucket `models` holding `name` -> bytes of the bundled `file`.
async fn s3_with(objects: &[(&str, &str)]) -> (tokio::process::Child, u16) {
    let (child, port) = start_http_server("moto_server", &["-H", "127.0.0.1", "-p", "PORT"], Path::new("/")).await;
    let http = reqwest::Client::new();
    let r = http
        .put(format!("http://127.0.0.1:{port}/models"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    for (key, file) in objects {
        put_object(port, key, &std::fs::read(bundled_models().join(file)).unwrap()).await;
    }
    (child, port)
}

/// Puts an object as an S3 client does (signed, through object_store).
async fn put_object(port: u16, key: &str, bytes: &[u8]) {
    use object_store::ObjectStoreExt;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_bucket_name("models")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .build()
        .unwrap();
    store
        .put(&object_store::path::Path::from(key), bytes.to_vec().into())
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

fn s3_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

fn register(name: &str, uri: &str, activate: bool) -> pb::RegisterModelRequest {
    pb::RegisterModelRequest {
        name: name.into(),
        file_path: uri.into(),
        version: "1".into(),
        activate,
        ..Default::default()
    }
}

/// A counter from `/metrics` text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

async fn metrics_of(url: String) -> String {
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Polls GetModel until `name` records `sha256` (the changed object reloaded and recorded).
async fn wait_recorded(
    reg: &mut pb::model_registry_client::ModelRegistryClient<tonic::transport::Channel>,
    name: &str,
    sha256: &str,
) {
    until(
        &format!("the changed object of {name} reloaded"),
        Duration::from_secs(30),
        || {
            let mut reg = reg.clone();
            async move {
                let m = reg
                    .get_model(pb::GetModelRequest { model: by_name(name) })
                    .await
                    .unwrap()
                    .into_inner();
                m.checksum_sha256 == sha256
            }
        },
    )
    .await;
}

/// Waits for three polls of the active object (`modeld_object_checks_total`, from what
/// `metrics` reads) and checks that none downloaded it.
async fn polls_without_a_download<F, Fut>(metrics: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let first = metrics().await;
    let m = eventually(
        "the active object checked",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let m = metrics().await;
            if counter(&m, "modeld_object_checks_total") >= counter(&first, "modeld_object_checks_total") + 3 {
                Ok(m)
            } else {
                Err("fewer than 3 checks")
            }
        },
    )
    .await;
    assert_eq!(
        counter(&m, "modeld_object_downloads_total"),
        counter(&first, "modeld_object_downloads_total"),
        "polls without a download: {m}"
    );
}

fn sha256_of(file: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(bundled_models().join(file)).unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_from_s3_register_serve_download_and_fail_safely() {
    let (mut moto, port) = s3_with(&[("digits_v1.onnx", "digits_v1.onnx"), ("b.onnx", "digits_v2.onnx")]).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let cache = tempfile::tempdir().unwrap();
    let env = s3_env(port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    std::fs::create_dir(root.path().join("eval")).unwrap();
    for f in ["digits_x.npy", "digits_y.npy"] {
        std::fs::copy(bundled_models().join("eval").join(f), root.path().join("eval").join(f)).unwrap();
    }
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "objects-test-signing-key-0123456789abcdef\n").unwrap();
    let server = LoggedServer::start(
        &db.url,
        root.path(),
        &[
            "--object-cache",
            cache.path().to_str().unwrap(),
            "--object-poll-ms",
            "100",
            "--signing-key-file",
            key.path().to_str().unwrap(),
        ],
        &env,
    )
    .await;
    let channel = server.channel().await;
    let mut reg = pb::model_registry_client::ModelRegistryClient::new(channel.clone());
    let mut infer = pb::inference_client::InferenceClient::new(channel);

    // Register from the URI and activate: checksum and size are the object's.
    let r = reg
        .register_model(register("remote", "s3://models/digits_v1.onnx", true))
        .await
        .unwrap()
        .into_inner();
    let m = r.model.unwrap();
    assert_eq!(m.file_path, "s3://models/digits_v1.onnx");
    assert_eq!(m.checksum_sha256, sha256_of("digits_v1.onnx"));
    assert_eq!(
        m.file_size_bytes as u64,
        std::fs::metadata(bundled_models().join("digits_v1.onnx"))
            .unwrap()
            .len()
    );
    assert_eq!(predict_as(&mut infer, "", 3, "digits_v1").await, "remote");
    assert!(
        cache.path().join(format!("{}.onnx", m.checksum_sha256)).is_file(),
        "the verified copy is in the cache, by content"
    );

    // DownloadModel streams the verified copy.
    let mut stream = reg
        .download_model(pb::DownloadModelRequest {
            model: by_name("remote"),
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        if let Some(pb::download_chunk::Part::Data(d)) = chunk.part {
            bytes.extend_from_slice(&d);
        }
    }
    assert_eq!(bytes, std::fs::read(bundled_models().join("digits_v1.onnx")).unwrap());

    // Following the active object is a HEAD per poll, not a download.
    polls_without_a_download(|| metrics_of(server.http_url("/metrics"))).await;

    // The object replaced by a new version: the server sees its new ETag, verifies and
    // reloads it, and records the new checksum, as for a changed local file.
    put_object(
        port,
        "digits_v1.onnx",
        &std::fs::read(bundled_models().join("digits_v2.onnx")).unwrap(),
    )
    .await;
    wait_recorded(&mut reg, "remote", &sha256_of("digits_v2.onnx")).await;
    until("the new version is served", Duration::from_secs(30), || {
        let mut infer = infer.clone();
        async move {
            let got = infer
                .predict(digits_request("", &eval_rows(3)))
                .await
                .unwrap()
                .into_inner();
            raw_f32(&got.outputs[0].raw_data)
                .iter()
                .zip(expected_probs("digits_v2", 3))
                .all(|(a, b)| (a - b).abs() < 1e-5)
        }
    })
    .await;
    put_object(
        port,
        "digits_v1.onnx",
        &std::fs::read(bundled_models().join("digits_v1.onnx")).unwrap(),
    )
    .await;

    // A missing object is refused at registration, by name, without the store's words.
    let e = reg
        .register_model(register("ghost", "s3://models/nope.onnx", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("does not exist"), "{e:?}");

    // The CLI registers from a URI too (its own fetch, into the same cache).
    let cli = run_modeld(
        root.path(),
        &env,
        &[
            "register",
            "--name",
            "other",
            "--version",
            "2",
            "--path",
            "s3://models/b.onnx",
            "--database-url",
            &db.url,
            "--model-root",
            root.path().to_str().unwrap(),
            "--object-cache",
            cache.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(cli.code, 0, "{cli:?}");
    // Everything that works on a local file works on an object: a candidate by name, an
    // evaluation, a comparison, a signed download of the verified copy.
    assert_eq!(predict_as(&mut infer, "other", 2, "digits_v2").await, "other");
    let dataset = Some(pb::Dataset {
        path: "eval/digits_x.npy".into(),
        ..Default::default()
    });
    let e = reg
        .evaluate_model(pb::EvaluateModelRequest {
            model: by_name("other"),
            dataset: dataset.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(e.accuracy > 0.9, "{e:?}");
    // Two models from the store compared on one dataset (digits_v1 against digits_v2's bytes).
    let c = reg
        .compare_models(pb::CompareModelsRequest {
            a: by_name("remote"),
            b: by_name("other"),
            dataset,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (a, b) = (c.a.unwrap(), c.b.unwrap());
    assert_eq!((a.model_name.as_str(), b.model_name.as_str()), ("remote", "other"));
    assert!(a.accuracy > 0.5 && b.accuracy > 0.9, "{a:?} {b:?}");
    let url = reg
        .create_download_url(pb::CreateDownloadUrlRequest {
            model: by_name("other"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let body = reqwest::get(&url).await.unwrap();
    assert_eq!(body.status(), 200, "{url}");
    assert_eq!(
        body.bytes().await.unwrap().to_vec(),
        std::fs::read(bundled_models().join("digits_v2.onnx")).unwrap()
    );

    // An object replaced under its registered checksum is refused when it is fetched again;
    // what is served stays. (A model never loaded here, whose copy has left the cache.)
    put_object(
        port,
        "c.onnx",
        &std::fs::read(bundled_models().join("digits_v2.onnx")).unwrap(),
    )
    .await;
    reg.register_model(register("third", "s3://models/c.onnx", false))
        .await
        .unwrap();
    let third_sha = sha256_of("digits_v2.onnx");
    std::fs::remove_file(cache.path().join(format!("{third_sha}.onnx"))).unwrap();
    put_object(
        port,
        "c.onnx",
        &std::fs::read(bundled_models().join("digits_v1.onnx")).unwrap(),
    )
    .await;
    let e = reg.activate_model(activate_req("third")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("checksum mismatch for object"), "{e:?}");
    let got = infer
        .predict(digits_request("", &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.model_name, "remote", "the served model stays");

    // The store down: the fetch fails, said with a request id; the served model serves on.
    moto.kill().await.unwrap();
    let _ = moto.wait().await;
    let asked = Instant::now();
    let e = reg.activate_model(activate_req("third")).await.unwrap_err();
    // Within the retry budget (3 retries in 10 s), not object_store's default of minutes.
    println!("activation refused with the store down after {:?}", asked.elapsed());
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "refused after {:?}",
        asked.elapsed()
    );
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("cannot fetch") && e.message().contains("request id"),
        "{e:?}"
    );
    assert!(
        !e.message().contains("127.0.0.1"),
        "the store's address stays in the log: {e:?}"
    );
    let got = infer
        .predict(digits_request("", &eval_rows(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.model_name, "remote");
    // The poll cannot reach the store: the server says it is degraded, and why.
    let (s, d) = eventually(
        "the store being down shows",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let mut reg = reg.clone();
            async move {
                let s = reg
                    .get_server_status(pb::GetServerStatusRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                match s
                    .degradations
                    .iter()
                    .find(|d| d.reason == pb::DegradedReason::ModelFileUnreadable as i32)
                {
                    Some(d) => Ok((s.clone(), d.clone())),
                    None => Err(format!("{s:?}")),
                }
            }
        },
    )
    .await;
    assert!(d.message.contains("cannot fetch"), "{d:?}");
    assert_eq!(s.serving.unwrap().model_name, "remote");
    // The active model's verified copy is enough to activate it again with the store down.
    reg.activate_model(activate_req("remote")).await.unwrap();
    let log = server.stop().await;
    assert!(
        log.iter().any(|l| l.contains("object store request failed")),
        "the detail is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_from_an_http_url() {
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("m.onnx");
    std::fs::copy(bundled_models().join("digits_v2.onnx"), &file).unwrap();
    // An hour old: the replacement below has another Last-Modified even within one second.
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let (_web, port) = start_http_server(
        "python",
        &["-m", "http.server", "PORT", "--bind", "127.0.0.1"],
        files.path(),
    )
    .await;
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_path_buf();
    let server = TestServer::start_with(Backend::Sqlite, move |c| {
        c.object_poll_ms = 100;
        c.registry.object_cache = Some(cache_dir);
        // The test's file server is on loopback, which a client may not name otherwise.
        c.registry.object_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let mut reg = server.registry().await;
    let uri = format!("http://127.0.0.1:{port}/m.onnx");
    let m = reg
        .register_model(register("web", &uri, true))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(m.checksum_sha256, sha256_of("digits_v2.onnx"));
    assert_eq!(
        predict_as(&mut server.inference().await, "", 2, "digits_v2").await,
        "web"
    );

    // This server sends no ETag: Last-Modified and the size tell a changed object, so the
    // polls do not download it again.
    let downloads = |m: &str| counter(m, "modeld_object_downloads_total");
    let first = server.metrics().await;
    polls_without_a_download(|| server.metrics()).await;
    // Replaced: a new Last-Modified, downloaded, verified, reloaded and recorded.
    replace_by_rename(&bundled_models().join("digits_v1.onnx"), &file);
    wait_recorded(&mut reg, "web", &sha256_of("digits_v1.onnx")).await;
    assert_eq!(
        predict_as(&mut server.inference().await, "", 2, "digits_v1").await,
        "web"
    );
    assert!(downloads(&server.metrics().await) > downloads(&first));
}

/// A tmpfs of `bytes` mounted on a fresh directory, unmounted on drop (the test runs as root,
/// as CI does).
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        Self(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

/// The object cache's disk is full: registering a model from the store is refused as
/// UNAVAILABLE (503 over REST) saying what is full, without the cache's path; nothing is
/// recorded, the served model keeps serving, and once there is room the same call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_object_cache_says_what_is_full() {
    let files = tempfile::tempdir().unwrap();
    std::fs::copy(bundled_models().join("cnn.onnx"), files.path().join("cnn.onnx")).unwrap();
    let (_web, port) = start_http_server(
        "python",
        &["-m", "http.server", "PORT", "--bind", "127.0.0.1"],
        files.path(),
    )
    .await;
    // cnn.onnx is 96 KiB: it does not fit in 64 KiB.
    let disk = SmallDisk::mount(64 << 10);
    let cache_dir = disk.0.path().join("objects");
    let cache = cache_dir.clone();
    let server = TestServer::start_with(Backend::Sqlite, move |c| {
        c.registry.object_cache = Some(cache);
        c.registry.object_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let mut reg = server.registry().await;
    let uri = format!("http://127.0.0.1:{port}/cnn.onnx");
    let e = reg.register_model(register("big", &uri, true)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("object cache is full"), "{}", e.message());
    assert!(
        !e.message().contains(&disk.0.path().display().to_string()),
        "{}",
        e.message()
    );
    let r = reqwest::Client::new()
        .post(server.http_url("/api/v1/models"))
        .json(&serde_json::json!({"model_name": "big", "file_path": uri}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("object cache is full"));
    // Nothing recorded, nothing half-written left behind, the served model unchanged.
    assert!(!server.models_json().await.to_string().contains("\"big\""));
    let left: Vec<_> = std::fs::read_dir(&cache_dir).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        predict_as(&mut server.inference().await, "", 2, "digits_v2").await,
        "digits_v2"
    );
    // Room again (the operator grew the disk): the same registration goes through.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=1m"])
        .arg(disk.0.path())
        .status()
        .unwrap();
    assert!(grown.success());
    let m = reg
        .register_model(register("big", &uri, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.model.unwrap().checksum_sha256, sha256_of("cnn.onnx"));
    server.stop().await.unwrap();
}
