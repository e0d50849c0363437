//! modeld: a gRPC inference server that hot-swaps ONNX models from a SQL model registry
//! without dropping a request.
//!
//! # Layout
//! docs/architecture.md is the map: floors, the request and activation paths, the invariants.
//! - [`config`]: the serve configuration (`modeld serve`'s flags and `MODELD_*` variables), plain data.
//! - [`app`]: start-up a step a file (security, servers, compute, registry, tasks) and the drain.
//! - [`cli`]: the commands by family; their clap grammar is [`cli::args`].
//! - [`ops`]: the model operations all front ends share, as services with one job each
//!   (catalogue, activation, rollout, reconcile, evaluation, inference) over one private core.
//! - [`oip`]: the Open Inference Protocol over the services, in plain types (both its bindings translate it).
//! - [`name`]: model names as people write them (NFC, 255 characters, the refused characters), plain data.
//! - [`registry`]: the SQL registry (SQLite or PostgreSQL, sqlx migrations).
//! - [`model`]: path confinement, loading + sha256 + warm-up, the engines, the signature, the ArcSwap slot.
//! - [`serving`]: the request path: validate, run off the reactor, encode; the shadow's threads.
//! - [`api`]: the tonic services (modeld.v1 and the Open Inference Protocol).
//! - [`http`]: REST, OIP REST, the admin page, the model config, signed downloads.
//! - [`auth`]: bearer tokens: the store, what each route needs, the live check of a request.
//! - [`net`]: what one client may hold: connections per port, silent connections, request bytes in flight.
//! - [`tls`]: TLS on both ports, its files followed.
//! - [`metrics`]: Prometheus metrics over HTTP.
//! - [`status`]: what this server knows about its own state, and why it is degraded.
//! - [`signature`]: what a model takes and returns, and which changes break its clients (plain data).
//! - [`signing`]: the keys that sign download URLs, and the URLs (shared by HTTP, gRPC and the config).
//! - [`watch`]: the reload task fed by the registry watcher and the file watcher.
//! - [`fleet`]: every server's row in the registry, and a change's wait until the fleet serves it.
//! - [`evaluation`]: datasets, evaluating a model on one, and comparing two.
//! - [`trace`]: request ids, the span a request's job runs in on another thread, rate-limited client warnings.
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
pub mod name;
pub mod net;
pub mod oip;
pub mod ops;
pub mod registry;
pub mod serving;
pub mod signature;
pub mod signing;
pub mod status;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod trace;
pub mod watch;

pub use error::{Error, Result};
