//! modeld: a gRPC inference server that hot-swaps ONNX models from a SQL model registry
//! without dropping a request.
//!
//! # Layout
//! - [`config`]: the CLI flags and `MODELD_*` environment variables.
//! - [`app`]: wires everything and runs the server (`serve(config, listener, shutdown)`).
//! - [`cli`]: the registry commands and the `predict` client.
//! - [`ops`]: the model operations all front ends share, a file a job (register, activate, reconcile, request).
//! - [`registry`]: the SQL registry (SQLite or PostgreSQL, sqlx migrations).
//! - [`model`]: path confinement, loading + sha256 + warm-up, the signature, the ArcSwap slot.
//! - [`serving`]: the request path: validate, run off the reactor, encode.
//! - [`api`]: the tonic services.
//! - [`net`]: what one client may hold: connections per port, silent connections, request bytes in flight.
//! - [`metrics`]: Prometheus metrics over HTTP.
//! - [`status`]: what this server knows about its own state, and why it is degraded.
//! - [`signing`]: the keys that sign download URLs, and the URLs (shared by HTTP, gRPC and the config).
//! - [`watch`]: the reload task fed by the registry watcher and the file watcher.
//! - [`fleet`]: every server's row in the registry, and a change's wait until the fleet serves it.
//! - [`evaluation`]: datasets, evaluating a model on one, and comparing two.
//! - [`error`]: the one error type and its one mapping to gRPC codes.

#[cfg(target_endian = "big")]
compile_error!("modeld's raw tensor encoding assumes a little-endian machine");

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod evaluation;
pub mod filewatch;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod model;
pub mod net;
pub mod ops;
pub mod registry;
pub mod serving;
pub mod signing;
pub mod status;
pub mod tls;
pub mod trace;
pub mod watch;

pub use error::{Error, Result};
