//! Start-up's background tasks: health that follows the slot, this server's row in the fleet
//! table (joined, beating, left at shutdown), the reload task (the registry, the active file,
//! object storage), and the automatic rollback's guard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::ServeConfig;
use crate::fleet::Member;
use crate::ops::Services;
use crate::registry::Registry;
use crate::watch::{self, ReloadConfig, Reloader};

/// Service names whose health follows the model state.
pub(super) const HEALTH_SERVICES: [&str; 3] = ["", "modeld.v1.Inference", "inference.GRPCInferenceService"];

/// The running background tasks.
pub(super) struct Tasks {
    member: Arc<Member>,
    heartbeats: tokio::task::JoinHandle<()>,
    reloader: Reloader,
    guard: tokio::task::JoinHandle<()>,
}

/// Says NOT_SERVING for every service until a model is published (before anything answers).
pub(super) async fn not_serving(reporter: &HealthReporter) {
    for name in HEALTH_SERVICES {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
}

/// Starts the tasks of a server whose gRPC port is `grpc` (and HTTP `http`).
///
/// # Errors
/// The reload task's watchers cannot be started.
pub(super) async fn start(
    services: &Services,
    registry: Registry,
    config: &ServeConfig,
    reporter: HealthReporter,
    grpc: SocketAddr,
    http: Option<SocketAddr>,
) -> anyhow::Result<Tasks> {
    // Health follows the slot: SERVING from the first published model on.
    let mut published = services.catalogue.subscribe_published();
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
    // This server's row in the fleet table: changes wait until every live server serves them.
    let server_name = registry.origin().server.clone();
    let member = Member::join(
        registry,
        crate::registry::servers::Joining {
            server_id: String::new(),
            server_name,
            host: super::hostname(),
            grpc_address: grpc.to_string(),
            http_address: http.map(|a| a.to_string()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            beat_ms: 0,
        },
        Duration::from_millis(config.heartbeat_ms),
    )
    .await;
    let heartbeats = {
        let catalogue = services.catalogue.clone();
        member.heartbeats(move || {
            let serving = catalogue.served();
            watch::degraded_text(&catalogue.status(), serving.as_ref().map(|s| &s.record))
        })
    };
    // The reload task loads the registry's active model (source "startup"), then follows the
    // registry and the active file. A model that cannot be loaded leaves the server up and
    // NOT_SERVING until one can.
    let reloader = watch::start(
        services.reconcile.clone(),
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
        let rollout = services.rollout.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = rollout.guard_due() => {}
                }
                rollout.guard_tick().await;
            }
        })
    };
    Ok(Tasks {
        member,
        heartbeats,
        reloader,
        guard,
    })
}

impl Tasks {
    /// At the start of the drain: changes stop waiting for this server at once.
    pub(super) async fn leave_fleet(&self) {
        self.heartbeats.abort();
        self.member.leave().await;
    }

    /// Stops every task (after the drain).
    pub(super) async fn stop(self) {
        self.guard.abort();
        self.heartbeats.abort();
        drop(self.reloader);
        self.member.leave().await;
    }
}
