//! Start-up's servers step: what one client may hold on each port (connections, silent
//! connections, request bytes in flight), the gRPC server with its services (answering
//! UNAVAILABLE until they are set), and the HTTP server with its routes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;

use super::security::Security;
use crate::api::inference::InferenceService;
use crate::api::kserve::KServeService;
use crate::api::kserve_pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::api::later::Later;
use crate::api::pb::inference_server::InferenceServer;
use crate::api::pb::model_registry_server::ModelRegistryServer;
use crate::api::registry::RegistryService;
use crate::config::ServeConfig;
use crate::net::{BodyLimits, Conns, Listener};
use crate::ops::Services;

/// The gRPC server, until it stops.
pub(super) type GrpcServer = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// What one client may hold on each port.
#[derive(Clone)]
pub(super) struct Limits {
    /// Connections on the gRPC port.
    pub grpc: Conns,
    /// Connections on the HTTP port.
    pub http: Conns,
    /// Request bytes in flight, and how slowly a body may come.
    pub bodies: BodyLimits,
    /// How long a new connection may take to send its first request.
    pub header_timeout: Duration,
}

impl Limits {
    /// The limits `config` asks for, the connection cap lowered to what the process's file
    /// limit allows on `ports` ports.
    ///
    /// # Errors
    /// A bytes-in-flight budget smaller than the largest message.
    pub(super) fn new(config: &ServeConfig, ports: u64) -> anyhow::Result<Self> {
        let net = &config.net;
        if net.request_bytes_in_flight < config.max_message_bytes as u64 {
            anyhow::bail!(
                "--request-bytes-in-flight ({}) is smaller than --max-message-bytes ({}): the largest request could never be taken",
                net.request_bytes_in_flight,
                config.max_message_bytes
            );
        }
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
        Ok(Self {
            grpc: Conns::new(cap, header_timeout),
            http: Conns::new(cap, header_timeout),
            bodies: BodyLimits::new(
                usize::try_from(net.request_bytes_in_flight).unwrap_or(usize::MAX),
                Duration::from_secs(net.body_timeout_secs),
            ),
            header_timeout,
        })
    }
}

/// The services both ports serve, set once the registry answers (until then gRPC calls are
/// UNAVAILABLE saying why, and HTTP says it is starting).
#[derive(Default, Clone)]
pub(super) struct Transports {
    inference: Later<InferenceServer<InferenceService>>,
    kserve: Later<GrpcInferenceServiceServer<KServeService>>,
    registry: Later<ModelRegistryServer<RegistryService>>,
    routes: Arc<OnceLock<axum::Router>>,
}

impl Transports {
    /// Every service answers from here on, over `services`.
    pub(super) fn set(&self, services: &Services, config: &ServeConfig, security: &Security, limits: &Limits) {
        let max = config.max_message_bytes;
        self.inference.set(
            InferenceServer::new(InferenceService::new(services.inference.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        self.kserve.set(
            GrpcInferenceServiceServer::new(KServeService::new(services))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        self.registry.set(
            ModelRegistryServer::new(RegistryService::new(services, security.downloads.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        let http_config = crate::http::HttpConfig {
            max_body_bytes: config.max_message_bytes,
            model_config_max_age_secs: config.model_config_max_age_secs,
            tls: security.tls.is_some(),
        };
        let browser = crate::http::browser::Policy::new(
            &config.net.allowed_hosts,
            &config.net.allowed_origins,
            &config.public_url,
            !security.access.enabled(),
            security.tls.is_some(),
        );
        if browser.checks_hosts() {
            tracing::info!(
                "HTTP answers only to IP addresses, localhost and this machine's name (DNS rebinding); more with \
                 --allowed-hosts"
            );
        }
        let _ = self.routes.set(crate::http::router(
            services.clone(),
            Arc::clone(&security.access),
            security.downloads.clone(),
            http_config,
            browser,
            limits.bodies.clone(),
        ));
    }
}

/// The gRPC server on `listener`: access and body limits in front of health, reflection and
/// the three services; it stops accepting when `stop` completes, then finishes the requests it
/// has.
///
/// # Errors
/// Reflection's descriptors cannot be built.
pub(super) fn grpc(
    listener: TcpListener,
    config: &ServeConfig,
    security: &Security,
    limits: &Limits,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    services: &Transports,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<GrpcServer> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let grpc = tonic::transport::Server::builder()
        .layer(crate::api::gate::Gate {
            access: Arc::clone(&security.access),
            bodies: limits.bodies.clone(),
        })
        .max_concurrent_streams(config.net.max_streams_per_connection)
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
        .add_service(services.inference.clone())
        .add_service(services.registry.clone())
        .add_service(services.kserve.clone());
    // The port closes when the stop begins; the server then finishes what it has.
    let listener = Listener::new(listener);
    let stop = listener.closing_after(stop);
    Ok(match &security.tls {
        Some(t) => Box::pin(
            grpc.serve_with_incoming_shutdown(t.incoming(listener, crate::tls::Port::Grpc, limits.grpc.clone()), stop),
        ),
        // The builder's tcp_nodelay applies only to sockets tonic binds itself: Incoming sets it.
        None => {
            Box::pin(grpc.serve_with_incoming_shutdown(crate::net::Incoming::new(listener, limits.grpc.clone()), stop))
        }
    })
}

/// Serves HTTP on `listener` (with TLS when configured) until `stopped` turns true: the
/// routes once [`Transports::set`] has run, "starting" before.
pub(super) fn spawn_http(
    listener: TcpListener,
    services: &Transports,
    security: &Security,
    limits: &Limits,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let (routes, tls) = (Arc::clone(&services.routes), security.tls.clone());
    let (conns, header_timeout) = (limits.http.clone(), limits.header_timeout);
    // The port closes when the stop begins; the server then finishes what it has.
    let listener = Listener::new(listener);
    tokio::spawn(async move {
        let stop = listener.closing_after(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        let done = match tls {
            Some(t) => {
                let incoming = t.incoming(listener, crate::tls::Port::Http, conns);
                crate::http::serve(incoming, routes, header_timeout, stop).await
            }
            None => {
                let incoming = crate::net::Incoming::new(listener, conns);
                crate::http::serve(incoming, routes, header_timeout, stop).await
            }
        };
        if let Err(e) = done {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
}
