//! Wires the server together and runs it: [`serve`] (`serve(config, listener, shutdown)`) is
//! what `main` and the integration tests both run. Start-up goes a step a file: security
//! (`security.rs`: tokens, TLS, who may connect, signing keys), the servers' limits and
//! services (`servers.rs`), compute (`compute.rs`: the executor, the engine, the shadow's
//! threads), the registry (`registry.rs`: open it or wait for it, `--model-dir`, the seed) and
//! the background tasks (`tasks.rs`: health, the fleet row, reloads, the guard); the drain at
//! shutdown is [`serve_with`]'s last step, here.

mod compute;
mod registry;
mod security;
mod servers;
mod tasks;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

pub use self::registry::{builder, services};
use self::servers::{GrpcServer, Limits, Transports};
use crate::config::ServeConfig;
use crate::registry::{Backend, Origin, Registry, redact_url};

/// The gRPC server's task, aborted when dropped (an error return during set-up, or the drain
/// timeout).
struct Running(tokio::task::JoinHandle<Result<(), tonic::transport::Error>>);

impl Running {
    fn spawn(server: GrpcServer) -> Self {
        Self(tokio::spawn(server))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
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
    registry::use_model_dir(&mut config);
    let addr = listener.local_addr()?;
    let http_at = http.as_ref().map(TcpListener::local_addr).transpose()?;
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

    let security = security::Security::load(&config, addr, http_at)?;
    let limits = Limits::new(&config, if http.is_some() { 2 } else { 1 })?;
    let compute = compute::start(&config)?;
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
    let first = match builder(&config.registry, origin.clone()).await {
        Ok(c) => Some(c),
        Err(e) if registry::waits_for(&config.registry, &e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "the registry cannot be reached yet; waiting for it (health NOT_SERVING until then)"
            );
            None
        }
        Err(e) => return Err(e),
    };

    let (reporter, health) = tonic_health::server::health_reporter();
    tasks::not_serving(&reporter).await;
    let transports = Transports::default();
    // The HTTP port stops with the server. It starts now when the server waits for its
    // registry (to answer probes), else once its routes are ready.
    let (http_stop, http_stopped) = tokio::sync::watch::channel(false);
    let mut http = http;
    if first.is_none()
        && let Some(l) = http.take()
    {
        servers::spawn_http(l, &transports, &security, &limits, http_stopped.clone());
    }
    // The transport stops accepting on `shutdown`, then waits for in-flight requests; the drain
    // timeout bounds that wait.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = Duration::from_secs(config.drain_timeout_secs);
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let mut server = servers::grpc(listener, &config, &security, &limits, health, &transports, stopped)?;
    let mut shutdown = std::pin::pin!(shutdown);
    let waited = first.is_none();
    let builder = match first {
        Some(b) => b,
        // The gRPC port answers while this waits (the server future is polled).
        None => tokio::select! {
            b = registry::builder_when_reachable(&config.registry, origin) => b?,
            res = &mut server => {
                http_stop.send_replace(true);
                res.context("gRPC server failed")?;
                anyhow::bail!("the gRPC server stopped while waiting for the registry");
            }
            () = &mut shutdown => {
                tracing::info!("shutting down while waiting for the registry");
                let _ = stop_tx.send(());
                let _ = tokio::time::timeout(drain, &mut server).await;
                http_stop.send_replace(true);
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
    let registry = builder.registry().clone();
    let services = builder
        .serving(compute.executor, compute.engine)
        .candidates(crate::model::cache::CandidateLimits::from(&config.candidates))
        .rollback_watch(Duration::from_secs(config.rollback_watch_secs))
        .shadows(compute.shadows)
        .build();
    tracing::info!(
        "model root: {} ({})",
        services.catalogue.root().path().display(),
        crate::model::root::ROOT_FLAG
    );
    if let Some(file) = &sqlite_file {
        registry::in_use_marker(file, fresh_file);
    }
    if let Some(dir) = &config.model_dir {
        registry::register_model_dir(&services, dir, config.model_name.as_deref()).await?;
    }
    registry::seed(&services, &config).await;
    let tasks = tasks::start(&services, registry.clone(), &config, reporter, addr, http_at).await?;

    // Everything is ready: the services answer from here on.
    transports.set(&services, &config, &security, &limits);
    if let Some(at) = http_at {
        if let Some(l) = http.take() {
            servers::spawn_http(l, &transports, &security, &limits, http_stopped.clone());
        }
        let scheme = security.scheme();
        tracing::info!(addr = %at, "HTTP on {scheme}://{at}: Open Inference Protocol REST (/v2), registry REST (/api/v1), admin page (/admin), metrics (/metrics)");
    }

    // The drain: stop accepting, finish what is in flight (within the drain timeout), stop.
    let mut grpc = early
        .or_else(|| pending.take().map(Running::spawn))
        .context("the gRPC server is set up once")?;
    tokio::select! {
        res = &mut grpc.0 => res.context("the gRPC server task")?.context("gRPC server failed")?,
        () = &mut shutdown => {
            tracing::info!(drain_timeout_secs = drain.as_secs(), "shutting down: draining in-flight requests");
            tasks.leave_fleet().await;
            let _ = stop_tx.send(());
            match tokio::time::timeout(drain, &mut grpc.0).await {
                Ok(res) => res.context("the gRPC server task")?.context("gRPC server failed")?,
                Err(_) => tracing::warn!("drain timeout reached; dropping remaining requests"),
            }
        }
    }
    http_stop.send_replace(true);
    tasks.stop().await;
    registry.close().await;
    tracing::info!("modeld stopped");
    Ok(())
}
