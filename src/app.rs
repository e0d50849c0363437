//! Wires registry, model root, slot and gRPC services together and runs the server.
//! `serve(config, listener, shutdown)` is what `main` and the integration tests both run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::api::inference::InferenceService;
use crate::api::kserve::KServeService;
use crate::api::kserve_pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::api::pb::inference_server::InferenceServer;
use crate::api::pb::model_registry_server::ModelRegistryServer;
use crate::api::registry::RegistryService;
use crate::config::ServeConfig;
use crate::model::{EngineChoice, EngineSettings, ModelRoot, Slot};
use crate::ops::Control;
use crate::registry::{Backend, Origin, Registry, redact_url};
use crate::serving::Executor;
use crate::watch::{self, ReloadConfig};

/// The gRPC server's task, aborted when dropped (an error return during set-up, or the drain
/// timeout).
struct Running(tokio::task::JoinHandle<Result<(), tonic::transport::Error>>);

impl Running {
    fn spawn(server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>) -> Self {
        Self(tokio::spawn(server))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Service names whose health follows the model state.
const HEALTH_SERVICES: [&str; 3] = ["", "modeld.v1.Inference", "inference.GRPCInferenceService"];

/// Opens the registry and model root and builds the shared [`Control`].
///
/// # Errors
/// When the database cannot be opened or migrated, or the model root does not exist.
pub async fn control(registry: &crate::config::RegistryArgs, origin: Origin) -> anyhow::Result<Control> {
    let root = ModelRoot::new(&registry.model_root).context("opening the model root")?;
    let db = Registry::connect(&registry.database_url)
        .await
        .context("opening the model registry")?;
    let objects = crate::model::objects::Objects::new(
        registry
            .object_cache
            .clone()
            .unwrap_or_else(crate::model::objects::default_dir),
        registry.object_cache_bytes,
    )
    .with_hosts(registry.object_hosts.clone());
    Ok(Control::new(db.with_origin(origin), root, Arc::new(Slot::new())).with_objects(Arc::new(objects)))
}

/// Whether start-up waits out `e` (rather than failing): a PostgreSQL registry that cannot be
/// reached yet (a fleet whose database starts after it, or restarts). Anything else (a bad
/// URL, a missing model root, a SQLite file that cannot be opened) fails at once.
fn waits_for(registry: &crate::config::RegistryArgs, e: &anyhow::Error) -> bool {
    Backend::of_url(&registry.database_url) == Backend::Postgres
        && e.chain().any(|c| {
            c.downcast_ref::<crate::Error>()
                .is_some_and(|e| matches!(e, crate::Error::Unavailable(_)) || e.is_unreachable())
        })
}

/// [`control`], retried while [`waits_for`] holds with a growing pause up to 5 s, said in the
/// log every minute (the first failure is said by the caller).
async fn control_when_reachable(registry: &crate::config::RegistryArgs, origin: Origin) -> anyhow::Result<Control> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    let mut said = std::time::Instant::now();
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        match control(registry, origin.clone()).await {
            Ok(c) => {
                tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "the registry answers");
                return Ok(c);
            }
            Err(e) if waits_for(registry, &e) => {
                if said.elapsed() >= Duration::from_secs(60) {
                    tracing::warn!(error = %format!("{e:#}"), "the registry cannot be reached yet; still waiting for it");
                    said = std::time::Instant::now();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Loads the preferred engine's library (once per process) and says in the logs what will
/// compute models; the settings size ONNX Runtime's sessions to the threads that may run a
/// model at once: the compute threads, or the runtime threads for a cheap model that runs
/// inline (a model runs one way or the other, so the larger of the two).
fn engine_settings(args: &crate::config::EngineArgs, executor: &Executor) -> EngineSettings {
    let queue = executor.config();
    let pool = format!(
        "{} compute threads, queue of {}, batches of up to {}",
        queue.threads, queue.queue_capacity, queue.max_batch_size
    );
    match crate::model::engine::prepare(args.engine, args.onnxruntime_lib.as_deref()) {
        Ok(what) => tracing::info!(engine = %args.engine, "engine: {what}; {pool}"),
        // Asked for by default, not by the operator (no library named): one short line that says
        // where to read how to add it; the loader's own words go to the debug log.
        Err(why)
            if args.engine == EngineChoice::Auto
                && args.onnxruntime_lib.is_none()
                && std::env::var_os("ORT_DYLIB_PATH").is_none() =>
        {
            tracing::debug!(engine = %args.engine, "ONNX Runtime is not available: {why}");
            tracing::info!(
                engine = %args.engine,
                "engine: tract ({pool}); ONNX Runtime, faster on heavy models, is not installed \
                 (docs/operations.md, \"Engines\", says how to add it)"
            );
        }
        Err(why) if args.engine == EngineChoice::Auto => tracing::warn!(
            engine = %args.engine,
            "engine: tract ({pool}); ONNX Runtime, faster on heavy models, is not available: {why}. {}",
            crate::model::engine::HOW_TO_GET_ONNXRUNTIME
        ),
        Err(why) => tracing::warn!(
            engine = %args.engine,
            "{why}; models are computed by tract instead. {}",
            crate::model::engine::HOW_TO_GET_ONNXRUNTIME
        ),
    }
    let runtime = match args.runtime_threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    EngineSettings {
        preferred: args.engine,
        concurrency: executor.config().threads.max(runtime),
    }
}

/// The embedded registry of `--model-dir DIR`: a SQLite file in the temp dir named for DIR (the
/// directory itself may be read-only, as KServe mounts it).
fn model_dir_database(dir: &std::path::Path) -> String {
    use sha2::Digest;
    let full = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let tag = hex::encode(&sha2::Sha256::digest(full.to_string_lossy().as_bytes())[..8]);
    let file = std::env::temp_dir().join(format!("modeld-model-dir-{tag}.db"));
    format!("sqlite://{}?mode=rwc", file.display())
}

/// Registers every `.onnx` file under `dir` that the registry does not have yet (a single one
/// under `name` when given, others by their path without `.onnx`, `/` as `-`), and activates
/// the first when nothing is active.
async fn register_model_dir(control: &Control, dir: &std::path::Path, name: Option<&str>) -> anyhow::Result<()> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "onnx") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    if files.is_empty() {
        anyhow::bail!("--model-dir {}: no .onnx file under it", dir.display());
    }
    let known = control
        .registry()
        .list(crate::registry::Order::default(), false, i64::MAX, 0)
        .await?;
    let mut active = control.registry().active().await?.is_some();
    for file in &files {
        let rel = file
            .strip_prefix(dir)
            .map_err(|_| anyhow::anyhow!("{} is outside {}", file.display(), dir.display()))?
            .to_string_lossy()
            .into_owned();
        if known.iter().any(|m| m.file_path == rel) {
            continue;
        }
        let model_name = match name {
            Some(n) if files.len() == 1 => n.to_string(),
            _ => rel.trim_end_matches(".onnx").replace('/', "-"),
        };
        let done = control
            .register(crate::ops::Registration {
                name: model_name.clone(),
                file_path: rel.clone(),
                version: "1".into(),
                created_by: "model-dir".into(),
                activate: !active,
                ..Default::default()
            })
            .await
            .with_context(|| format!("--model-dir: registering {rel}"))?;
        tracing::info!(model = %model_name, file = %rel, active = !active, "registered from --model-dir");
        active = active || done.activation.is_some();
    }
    Ok(())
}

/// Marks a SQLite registry file as in use (`.<name>.in-use` beside it, which `rm modeld.db*`
/// leaves), and says loudly when a registry file had to be created where one was in use: its
/// models and history are gone unless a backup is restored, and a new registry (seeded from
/// the manifest) starts in their place.
fn in_use_marker(file: &std::path::Path, fresh: bool) {
    let Some(name) = file.file_name() else { return };
    let marker = file.with_file_name(format!(".{}.in-use", name.to_string_lossy()));
    if fresh && let Ok(was) = std::fs::read_to_string(&marker) {
        tracing::error!(
            file = %file.display(),
            marker = %marker.display(),
            "the registry database {} did not exist and was created empty, but a registry was in use at this path \
             ({}): its models and activation history are gone unless you restore it from a backup (stop the server, \
             put the file back, start again). Delete {} to start afresh without this message",
            file.display(),
            was.trim(),
            marker.display()
        );
    }
    let note = format!(
        "used by modeld {} since {}",
        env!("CARGO_PKG_VERSION"),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    if fresh || !marker.exists() {
        let _ = std::fs::write(&marker, note);
    }
}

/// This host's name, for server names and event origins.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs the server on `listener` until `shutdown` completes, then drains in-flight requests.
///
/// Start-up: migrate, seed an empty registry from the manifest, load the registry's active
/// model. A model that fails to load does not stop the server: it stays up, reports
/// NOT_SERVING, and serves as soon as a loadable model is activated.
///
/// # Errors
/// When the registry or model root cannot be opened, or the transport fails.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(a) = config.metrics_listen {
        tracing::warn!(
            "--metrics-listen (MODELD_METRICS_LISTEN) is now --http-listen (MODELD_HTTP_LISTEN): the HTTP port \
             listens on {a} and serves /metrics there, with the Open Inference Protocol's REST routes"
        );
    }
    let http = match config.http_addr() {
        Some(a) => Some(TcpListener::bind(a).await.with_context(|| {
            format!("cannot listen for HTTP on {a} (--http-listen ADDR to choose another, or off)")
        })?),
        None => None,
    };
    serve_with(config, listener, http, shutdown).await
}

/// [`serve`] with the HTTP listener injected too (tests bind both to port 0).
///
/// # Errors
/// As [`serve`].
pub async fn serve_with(
    mut config: ServeConfig,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::model::engine::install_panic_hook();
    if let Some(dir) = config.model_dir.clone() {
        config.registry.model_root.clone_from(&dir);
        if config.registry.database_url == crate::config::DEFAULT_DATABASE_URL {
            config.registry.database_url = model_dir_database(&dir);
        }
        config.no_seed = true;
    }
    let addr = listener.local_addr()?;
    // A few readable lines: where it listens, which registry, which root, which engine (below),
    // then what it serves (on publish).
    tracing::info!(
        %addr,
        "modeld {} listening on {addr}: gRPC modeld.v1, Open Inference Protocol (KServe v2), health, reflection",
        env!("CARGO_PKG_VERSION")
    );
    let url = &config.registry.database_url;
    let kind = match Backend::of_url(url) {
        Backend::Postgres => "PostgreSQL",
        Backend::Sqlite => "SQLite file",
    };
    tracing::info!("registry: {} ({kind})", redact_url(url));
    let server = config
        .server_name
        .clone()
        .unwrap_or_else(|| format!("modeld-{}-{}", hostname(), std::process::id()));
    let (access, _tokens_watch) = match &config.tokens_file {
        Some(f) => {
            if !f.is_file() {
                anyhow::bail!(
                    "the tokens file {} does not exist; make a token with modeld token create --tokens-file {} \
                     --name NAME --scope admin",
                    f.display(),
                    f.display()
                );
            }
            let tokens = crate::auth::Tokens::read(f).map_err(|e| anyhow::anyhow!("{e}"))?;
            let access = Arc::new(crate::auth::Access::required(tokens, &config.protect));
            let watch = access.follow(f);
            (access, Some(watch))
        }
        None => (Arc::new(crate::auth::Access::default()), None),
    };
    let exposed: Vec<std::net::SocketAddr> = std::iter::once(listener.local_addr()?)
        .chain(http.as_ref().and_then(|l| l.local_addr().ok()))
        .filter(|a| !a.ip().is_loopback())
        .collect();
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::Tls::load(crate::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: config.tls_client_ca.clone(),
        })?),
        _ => None,
    };
    let _tls_watch = tls.as_ref().map(crate::tls::Tls::follow);
    let net = &config.net;
    if net.request_bytes_in_flight < config.max_message_bytes as u64 {
        anyhow::bail!(
            "--request-bytes-in-flight ({}) is smaller than --max-message-bytes ({}): the largest request could never be taken",
            net.request_bytes_in_flight,
            config.max_message_bytes
        );
    }
    let ports = if http.is_some() { 2 } else { 1 };
    let cap = crate::net::connection_cap(net.max_connections, ports);
    if cap < net.max_connections {
        tracing::warn!(
            wanted = net.max_connections,
            cap,
            "--max-connections lowered to fit the process's file limit with {} descriptors kept free",
            crate::net::RESERVED_FDS
        );
    }
    let header_timeout = Duration::from_secs(net.header_timeout_secs);
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let grpc_conns = crate::net::Conns::new(cap, header_timeout);
    let http_conns = crate::net::Conns::new(cap, header_timeout);
    let body_limits = crate::net::BodyLimits::new(
        usize::try_from(net.request_bytes_in_flight).unwrap_or(usize::MAX),
        Duration::from_secs(net.body_timeout_secs),
    );
    let mutual = tls.as_ref().is_some_and(|t| t.mutual());
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(t) = &tls {
        tracing::info!(
            "TLS on gRPC and HTTP{}; the files are re-read when they change",
            if t.mutual() {
                ", client certificates required (mutual TLS)"
            } else {
                ""
            }
        );
    }
    if !access.enabled() && !mutual && !exposed.is_empty() {
        if !config.allow_unauthenticated {
            anyhow::bail!(
                "refusing to listen on {} without tokens: anyone reaching it could change the registry. Give \
                 --tokens-file (modeld token create) or --tls-client-ca, listen on 127.0.0.1, or pass \
                 --allow-unauthenticated",
                exposed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
        }
        tracing::warn!("listening on a non-loopback address without tokens (--allow-unauthenticated)");
    }
    if access.enabled() {
        tracing::info!(
            tokens = access.count(),
            "bearer tokens required (scopes admin, predict, read); health stays open{}",
            if config.protect.is_empty() {
                String::new()
            } else {
                format!(
                    "; read needed for {}",
                    config
                        .protect
                        .iter()
                        .filter_map(|p| clap::ValueEnum::to_possible_value(p).map(|v| v.get_name().to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    let mut downloads = config.download_config()?;
    if let Some(l) = &http {
        downloads.default_base = format!("{scheme}://{}", l.local_addr()?);
    }
    if downloads.keys.is_empty() {
        tracing::info!("no signing key (--signing-key-file, MODELD_SIGNING_KEYS): signed download URLs are off");
    }
    let executor = Executor::start(crate::serving::ExecutorConfig::from(&config.engine))?;
    let engine = engine_settings(&config.engine, &executor);
    let origin = Origin {
        source: "api".into(),
        server,
    };
    let sqlite_file = Registry::sqlite_path(&config.registry.database_url);
    let fresh_file = sqlite_file.as_ref().is_some_and(|f| !f.exists());
    // One attempt first: a registry that answers is the usual start, and the gRPC port
    // answers once everything is ready (HTTP says it is starting for those milliseconds). A
    // PostgreSQL that cannot be reached yet is waited for with both ports answering: health
    // NOT_SERVING, /v2/health/live alive, every other call UNAVAILABLE saying why (a probe
    // gets an answer, not a hung connection).
    let first = match control(&config.registry, origin.clone()).await {
        Ok(c) => Some(c),
        Err(e) if waits_for(&config.registry, &e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "the registry cannot be reached yet; waiting for it (health NOT_SERVING until then)"
            );
            None
        }
        Err(e) => return Err(e),
    };

    let (reporter, health) = tonic_health::server::health_reporter();
    for name in HEALTH_SERVICES {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
    let inference = crate::api::later::Later::default();
    let kserve = crate::api::later::Later::default();
    let registry = crate::api::later::Later::default();
    let routes: Arc<std::sync::OnceLock<axum::Router>> = Arc::default();

    // The HTTP port stops with the server. It starts now when the server waits for its
    // registry (to answer probes), else once its routes are ready.
    let (metrics_stop, metrics_stopped) = tokio::sync::watch::channel(false);
    let http_at = http.as_ref().map(TcpListener::local_addr).transpose()?;
    let spawn_http = |l: TcpListener| {
        let (routes, tls, mut stopped) = (Arc::clone(&routes), tls.clone(), metrics_stopped.clone());
        let conns = http_conns.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let done = match tls {
                Some(t) => {
                    let incoming = t.incoming(l, crate::tls::Port::Http, conns);
                    crate::http::serve(incoming, routes, header_timeout, stop).await
                }
                None => {
                    let incoming = crate::net::Incoming::new(l, conns);
                    crate::http::serve(incoming, routes, header_timeout, stop).await
                }
            };
            if let Err(e) = done {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    };
    let mut http = http;
    if first.is_none()
        && let Some(l) = http.take()
    {
        spawn_http(l);
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // The transport stops accepting on `shutdown`, then waits for in-flight requests; the drain
    // timeout bounds that wait.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = Duration::from_secs(config.drain_timeout_secs);
    let grpc = tonic::transport::Server::builder()
        .layer(crate::api::access::AccessLayer(Arc::clone(&access)))
        .layer(crate::api::limits::BodyLimitLayer(body_limits.clone()))
        .max_concurrent_streams(net.max_streams_per_connection)
        // A client that stops answering pings (a dead peer, a half-open connection) is closed.
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        .max_frame_size(1u32 << 20)
        .initial_stream_window_size(4u32 << 20)
        .initial_connection_window_size(8u32 << 20)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(inference.clone())
        .add_service(registry.clone())
        .add_service(kserve.clone());
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let mut server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match &tls {
        Some(t) => Box::pin(grpc.serve_with_incoming_shutdown(
            t.incoming(listener, crate::tls::Port::Grpc, grpc_conns.clone()),
            stopped,
        )),
        // The builder's tcp_nodelay applies only to sockets tonic binds itself: Incoming sets it.
        None => Box::pin(
            grpc.serve_with_incoming_shutdown(crate::net::Incoming::new(listener, grpc_conns.clone()), stopped),
        ),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let waited = first.is_none();
    let control = match first {
        Some(c) => c,
        // The gRPC port answers while this waits (the server future is polled).
        None => tokio::select! {
            c = control_when_reachable(&config.registry, origin) => c?,
            res = &mut server => {
                metrics_stop.send_replace(true);
                res.context("gRPC server failed")?;
                anyhow::bail!("the gRPC server stopped while waiting for the registry");
            }
            () = &mut shutdown => {
                tracing::info!("shutting down while waiting for the registry");
                let _ = stop_tx.send(());
                let _ = tokio::time::timeout(drain, &mut server).await;
                metrics_stop.send_replace(true);
                return Ok(());
            }
        },
    };
    // A server that waited keeps answering while it sets up (its services say it is starting
    // until they are set); else the port answers once everything is ready, below.
    let mut pending = Some(server);
    let early = if waited {
        pending.take().map(Running::spawn)
    } else {
        None
    };
    let control = Arc::new(
        control
            .serving(executor, engine)
            .with_candidates(crate::model::cache::CandidateLimits::from(&config.candidates))
            .with_rollback_watch(Duration::from_secs(config.rollback_watch_secs))
            .with_downloads(downloads)
            .with_access(Arc::clone(&access))
            .with_shadows(
                crate::serving::shadow::Shadows::start(crate::serving::shadow::ShadowConfig::from(&config.shadow))
                    .context("starting the shadow threads")?,
            ),
    );
    tracing::info!(
        "model root: {} ({})",
        control.root().path().display(),
        crate::model::root::ROOT_FLAG
    );

    if let Some(file) = &sqlite_file {
        in_use_marker(file, fresh_file);
    }
    if let Some(dir) = &config.model_dir {
        register_model_dir(&control, dir, config.model_name.as_deref()).await?;
    }
    if !config.no_seed {
        let manifest = control.root().path().join(&config.seed_manifest);
        if manifest.is_file() {
            match control.seed(&manifest).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(models = n, manifest = %manifest.display(), "seeded the empty registry"),
                Err(e) => tracing::error!(error = %e, "seeding the registry failed"),
            }
        }
    }
    // Health follows the slot: SERVING from the first published model on.
    let mut published = control.slot().subscribe();
    tokio::spawn(async move {
        loop {
            if published.borrow_and_update().is_some() {
                for name in HEALTH_SERVICES {
                    reporter.set_service_status(name, ServingStatus::Serving).await;
                }
                break;
            }
            if published.changed().await.is_err() {
                break;
            }
        }
    });
    // The reload task loads the registry's active model (source "startup"), then follows the
    // registry and the active file. A model that cannot be loaded leaves the server up and
    // NOT_SERVING until one can.
    // This server's row in the fleet table: changes wait until every live server serves them.
    let member = crate::fleet::Member::join(
        control.registry().clone(),
        crate::registry::servers::Joining {
            server_id: String::new(),
            server_name: control.registry().origin().server.clone(),
            host: hostname(),
            grpc_address: addr.to_string(),
            http_address: http_at.map(|a| a.to_string()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            beat_ms: 0,
        },
        Duration::from_millis(config.heartbeat_ms),
    )
    .await;
    let heartbeats = {
        let control = Arc::clone(&control);
        member.heartbeats(move || {
            let serving = control.slot().active();
            watch::degraded_text(&control.status().snapshot(), serving.as_ref().map(|s| &s.record))
        })
    };
    let reloader = watch::start(
        Arc::clone(&control),
        ReloadConfig {
            registry_poll: Duration::from_millis(config.registry_poll_ms.max(10)),
            registry_check: Duration::from_millis(config.registry_check_ms.max(100)),
            file_debounce: Duration::from_millis(config.file_debounce_ms),
            strict_checksum: config.strict_checksum,
            watch_files: !config.no_watch_files,
            object_poll: Duration::from_millis(config.object_poll_ms),
        },
        Some(Arc::clone(&member)),
    )?;

    // The automatic rollback looks at its windows twice a second, and at once after a request
    // fails in a model.
    let guard = {
        let control = Arc::clone(&control);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = control.guard_due() => {}
                }
                control.guard_tick().await;
            }
        })
    };

    // Everything is ready: the services answer from here on.
    let max = config.max_message_bytes;
    inference.set(
        InferenceServer::new(InferenceService::new(Arc::clone(&control)))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    kserve.set(
        GrpcInferenceServiceServer::new(KServeService::new(Arc::clone(&control)))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    registry.set(
        ModelRegistryServer::new(RegistryService::new(Arc::clone(&control)))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    if let Some(at) = http_at {
        let http_config = crate::http::HttpConfig {
            max_body_bytes: config.max_message_bytes,
            model_config_max_age_secs: config.model_config_max_age_secs,
            tls: tls.is_some(),
        };
        let browser = crate::http::browser::Policy::new(
            &config.net.allowed_hosts,
            &config.net.allowed_origins,
            &config.public_url,
            !access.enabled(),
            tls.is_some(),
        );
        if browser.checks_hosts() {
            tracing::info!(
                "HTTP answers only to IP addresses, localhost and this machine's name (DNS rebinding); more with \
                 --allowed-hosts"
            );
        }
        let _ = routes.set(crate::http::router(
            Arc::clone(&control),
            http_config,
            browser,
            body_limits.clone(),
        ));
        if let Some(l) = http.take() {
            spawn_http(l);
        }
        tracing::info!(addr = %at, "HTTP on {scheme}://{at}: Open Inference Protocol REST (/v2), registry REST (/api/v1), admin page (/admin), metrics (/metrics)");
    }

    let mut grpc = early
        .or_else(|| pending.take().map(Running::spawn))
        .context("the gRPC server is set up once")?;
    tokio::select! {
        res = &mut grpc.0 => res.context("the gRPC server task")?.context("gRPC server failed")?,
        () = &mut shutdown => {
            tracing::info!(drain_timeout_secs = drain.as_secs(), "shutting down: draining in-flight requests");
            // Changes stop waiting for this server at once.
            heartbeats.abort();
            member.leave().await;
            let _ = stop_tx.send(());
            match tokio::time::timeout(drain, &mut grpc.0).await {
                Ok(res) => res.context("the gRPC server task")?.context("gRPC server failed")?,
                Err(_) => tracing::warn!("drain timeout reached; dropping remaining requests"),
            }
        }
    }
    metrics_stop.send_replace(true);
    guard.abort();
    heartbeats.abort();
    drop(reloader);
    member.leave().await;
    control.registry().close().await;
    tracing::info!("modeld stopped");
    Ok(())
}
