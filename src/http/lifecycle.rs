//! What the admin page (and any dashboard) reads besides the registry routes of `rest.rs`:
//! the registry's events as server-sent events, this server's status and request figures, a
//! model's activation history and evaluations, and evaluating a model on a dataset.
//!
//! - `GET /api/v1/events` streams every registry change and reload of the fleet (the table
//!   WatchEvents follows), one SSE `event: <kind>` per row with `id:` its event id, so a
//!   reconnecting `EventSource` resumes after the last one it saw (`Last-Event-ID`, or
//!   `?after=`).
//! - `GET /api/v1/status` and `GET /api/v1/stats` are GetServerStatus and the request
//!   counters behind `/metrics`, as JSON; `stats` holds cumulative counts, so a chart takes the
//!   difference of two reads.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use utoipa::ToSchema;

use super::HttpState;
use super::error::{ErrorBody, rest_error};
use super::request::{model_id, ok, required_body};
use super::rest::ModelJson;
use crate::error::Error;
use crate::ops::EvaluateOptions;
use crate::registry::{ActivationRecord, EvaluationRecord, ModelRef};
use crate::serving::stats::LATENCY_BUCKETS;

/// The routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/events", get(events))
        .route("/api/v1/status", get(status))
        .route("/api/v1/servers", get(servers))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/evaluations", get(latest_evaluations))
        .route("/api/v1/models/{model_id}/activations", get(activations))
        .route("/api/v1/models/{model_id}/evaluations", get(evaluations))
        .route("/api/v1/models/{model_id}/evaluate", post(evaluate))
}

#[derive(Debug, Default, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    recent: Option<i64>,
}

/// The most recent events `?recent=` may ask for.
const MAX_RECENT: i64 = 1000;

/// Follow the registry's events as server-sent events (`text/event-stream`): every change made
/// on any server of the registry or by the CLI. Each event's `id:` is its event id; a client
/// that reconnects with `Last-Event-ID` (as `EventSource` does) or `?after=` gets what it
/// missed. Without either, it starts with the next event. A registry that stops answering is
/// sent as an `event: error` and the stream resumes when it answers again.
#[utoipa::path(get, path = "/api/v1/events", tag = "lifecycle",
    params(("after" = Option<i64>, Query, description = "start after this event id (default: from now on)"),
        ("recent" = Option<i64>, Query, minimum = 0, maximum = 1000,
            description = "without after: start with (up to) this many of the most recent events, then live")),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "server-sent events: each is `id: <event_id>`, `event: <kind>` and `data: <an EventRecord as JSON>`; \
            `event: error` carries an ErrorBody while the registry does not answer; a `:` comment line keeps the connection alive"),
        (status = 503, body = ErrorBody)))]
async fn events(
    State(s): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return rest_error(&Error::InvalidArgument(
            "after is an event id and recent a count of events (integers)".into(),
        ));
    };
    if q.recent.is_some_and(|r| !(0..=MAX_RECENT).contains(&r)) {
        return rest_error(&Error::InvalidArgument(format!("recent is 0 to {MAX_RECENT} events")));
    }
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let mut after = last_seen.or(q.after).filter(|a| *a >= 0);
    // The recent ones first (the admin page opens with them), unless resuming.
    if let (None, Some(recent)) = (after, q.recent) {
        match s.services.catalogue.last_event_id().await {
            Ok(last) => after = Some((last - recent).max(0)),
            Err(e) => return rest_error(&e),
        }
    }
    let rx = match s.services.catalogue.follow_events(after).await {
        Ok(rx) => rx,
        Err(e) => return rest_error(&e),
    };
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|e| {
        Ok::<_, Infallible>(match e {
            Ok(e) => Event::default()
                .id(e.event_id.to_string())
                .event(e.kind.clone())
                .data(serde_json::to_string(&e).unwrap_or_else(|_| "{}".into())),
            Err(e) => Event::default()
                .event("error")
                // As a REST error: {"error": {"code", "message"}} (JSON has no raw newline).
                .data(serde_json::to_string(&ErrorBody::of(&e.reply())).unwrap_or_else(|_| "{}".into())),
        })
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// One reason why the server is degraded.
#[derive(Debug, Serialize, ToSchema)]
pub struct DegradationJson {
    /// `registry_unreachable`, `model_file_missing`, `not_serving_registry_model`, ...
    pub reason: String,
    /// For people.
    pub message: String,
    /// Since when.
    pub since: DateTime<Utc>,
}

/// A model this server serves beside the active one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServedShare {
    /// The model.
    pub model_id: i64,
    /// Its name.
    pub model_name: String,
    /// Its share of requests (canary) or of mirrored requests (shadow), 0-100.
    pub percentage: u8,
}

/// A candidate model held in memory for requests that name it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateJson {
    /// The model.
    pub model_id: i64,
    /// Its name.
    pub model_name: String,
    /// Still loading.
    pub loading: bool,
    /// Measured resident bytes (reserved while it loads).
    pub bytes: u64,
}

/// This server's state, as GetServerStatus reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusJson {
    /// Which server answered (`--server-name`, else host and pid).
    pub server: String,
    /// The model it serves; null before the first load.
    pub serving: Option<ModelJson>,
    /// The canary it serves, as it serves it.
    pub canary: Option<ServedShare>,
    /// The shadow it mirrors to.
    pub shadow: Option<ServedShare>,
    /// The candidates held in memory.
    pub candidates: Vec<CandidateJson>,
    /// Whether anything below is wrong.
    pub degraded: bool,
    /// What is wrong, and since when.
    pub degradations: Vec<DegradationJson>,
    /// Whether the registry answered the last check.
    pub registry_reachable: bool,
    /// The registry generation this server has caught up with.
    pub registry_generation: i64,
    /// Requests being computed.
    pub in_flight_requests: u64,
    /// Failed reloads since start.
    pub reload_failures: u64,
    /// The last reload error ("" after a success).
    pub last_error: String,
    /// The last successful (re)load.
    pub last_reload_at: Option<DateTime<Utc>>,
    /// What caused it: api, registry, file, startup.
    pub last_reload_source: String,
}

/// The servers on this registry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerList {
    /// The registry's generation now.
    pub generation: i64,
    /// Live servers first (oldest first), then the gone.
    pub servers: Vec<ServerJson>,
}

/// One server: who it is, what it serves, how far behind the registry it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerJson {
    /// Its row, with liveness on the database's clock.
    #[serde(flatten)]
    pub server: crate::registry::servers::ServerEntry,
    /// How many generations behind the registry it is (0: it serves the registry's state).
    pub lag: i64,
}

/// Every server on this registry: what each serves, the generation it has applied, its lag,
/// its heartbeat, whether it is gone (silent for 3 heartbeats) and its degradations.
#[utoipa::path(get, path = "/api/v1/servers", tag = "lifecycle",
    responses((status = 200, body = ServerList), (status = 503, body = ErrorBody)))]
async fn servers(State(s): State<HttpState>) -> Response {
    let registry = match s.services.catalogue.reachable() {
        Ok(r) => r,
        Err(e) => return rest_error(&e),
    };
    let (generation, servers) = match tokio::try_join!(registry.generation(), registry.servers()) {
        Ok(both) => both,
        Err(e) => return rest_error(&e),
    };
    ok(&ServerList {
        generation,
        servers: servers
            .into_iter()
            .map(|server| ServerJson {
                lag: server.lag(generation),
                server,
            })
            .collect(),
    })
}

/// This server's state: what it serves, whether it is degraded and why.
#[utoipa::path(get, path = "/api/v1/status", tag = "lifecycle", responses((status = 200, body = StatusJson)))]
async fn status(State(s): State<HttpState>) -> Response {
    let c = &s.services.catalogue;
    let snapshot = c.status();
    let set = c.serving_set();
    let serving = set.as_ref().map(|set| &set.active.record);
    let share = |w: &Option<crate::model::slot::Weighted>| {
        w.as_ref().map(|w| ServedShare {
            model_id: w.model.record.model_id,
            model_name: w.model.record.model_name.clone(),
            percentage: w.percentage,
        })
    };
    let degradations: Vec<DegradationJson> = snapshot
        .degradations(serving)
        .into_iter()
        .map(|d| DegradationJson {
            reason: d.reason.code().into(),
            message: d.message,
            since: d.since,
        })
        .collect();
    ok(&StatusJson {
        server: c.server_name().to_string(),
        serving: serving.map(ModelJson::from),
        canary: set.as_ref().and_then(|set| share(&set.canary)),
        shadow: set.as_ref().and_then(|set| share(&set.shadow)),
        candidates: c
            .cached_candidates()
            .into_iter()
            .map(|k| CandidateJson {
                model_id: k.model_id,
                model_name: k.name,
                loading: k.bytes.is_none(),
                bytes: k.bytes.or(k.reserved).unwrap_or(0),
            })
            .collect(),
        degraded: !degradations.is_empty(),
        degradations,
        registry_reachable: snapshot.registry_reachable(),
        registry_generation: snapshot.generation,
        in_flight_requests: s.services.inference.in_flight(),
        reload_failures: snapshot.reload_failures,
        last_error: snapshot.last_error.as_ref().map(|e| e.0.clone()).unwrap_or_default(),
        last_reload_at: snapshot.last_reload.as_ref().map(|r| r.1),
        last_reload_source: snapshot.last_reload.map(|r| r.0).unwrap_or_default(),
    })
}

/// A model's requests in one role since the server started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoleStatsJson {
    /// `active`, `canary` or `candidate`.
    pub role: String,
    /// Answered.
    pub success: u64,
    /// Failed (validation or the engine).
    pub failure: u64,
    /// Refused: the queue was full.
    pub rejected: u64,
    /// Not computed: the deadline passed first.
    pub expired: u64,
    /// Successful requests' time in the server: the cumulative count at or below each of
    /// `latency_buckets_seconds` (and a last one for all of them).
    pub latency_cumulative: Vec<u64>,
    /// Their summed time, in seconds.
    pub latency_sum_seconds: f64,
}

/// One model's figures (by name and version).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStatsJson {
    /// The model's name.
    pub model_name: String,
    /// Its version.
    pub version: String,
    /// By role.
    pub roles: Vec<RoleStatsJson>,
}

/// This server's request figures since it started (the counters behind `/metrics`).
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsJson {
    /// Which server.
    pub server: String,
    /// When these were read, so two reads give a rate.
    pub taken_at: DateTime<Utc>,
    /// The upper bounds of the latency buckets, in seconds.
    pub latency_buckets_seconds: Vec<f64>,
    /// Per model.
    pub models: Vec<ModelStatsJson>,
}

/// Request counts and latency histograms per model and role since this server started:
/// cumulative, so a chart takes the difference of two reads.
#[utoipa::path(get, path = "/api/v1/stats", tag = "lifecycle", responses((status = 200, body = StatsJson)))]
async fn stats(State(s): State<HttpState>) -> Response {
    let models = s
        .services
        .inference
        .stats()
        .into_iter()
        .map(|m| {
            let mut roles: Vec<&'static str> = m.outcomes.keys().copied().collect();
            roles.extend(m.latency.keys().copied().filter(|r| !m.outcomes.contains_key(r)));
            ModelStatsJson {
                roles: roles
                    .into_iter()
                    .map(|role| {
                        let o = m.outcomes.get(role).copied().unwrap_or_default();
                        let l = m.latency.get(role);
                        RoleStatsJson {
                            role: role.into(),
                            success: o.success,
                            failure: o.failure,
                            rejected: o.rejected,
                            expired: o.expired,
                            latency_cumulative: l
                                .map_or_else(|| vec![0; LATENCY_BUCKETS.len() + 1], |l| l.total.cumulative()),
                            latency_sum_seconds: l.map_or(0.0, |l| l.total.sum),
                        }
                    })
                    .collect(),
                model_name: m.name,
                version: m.version,
            }
        })
        .collect();
    ok(&StatsJson {
        server: s.services.catalogue.server_name().to_string(),
        taken_at: Utc::now(),
        latency_buckets_seconds: LATENCY_BUCKETS.to_vec(),
        models,
    })
}

/// A model's activation history.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivationList {
    /// Newest first: the activations that made the model active or replaced it.
    pub activations: Vec<ActivationRecord>,
}

/// Evaluations.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluationList {
    /// Newest first.
    pub evaluations: Vec<EvaluationRecord>,
}

/// How many rows a history route answers.
const HISTORY: i64 = 100;

/// Finds the model first, so an unknown id is a 404 and not an empty list.
async fn known(s: &HttpState, raw: &str) -> Result<i64, Box<Response>> {
    let id = model_id(raw)?;
    s.services
        .catalogue
        .get(&ModelRef::Id(id))
        .await
        .map_err(|e| Box::new(rest_error(&e)))?;
    Ok(id)
}

/// A model's activation history (the last 100), newest first.
#[utoipa::path(get, path = "/api/v1/models/{model_id}/activations", tag = "lifecycle",
    params(("model_id" = i64, Path, description = "the model's id")),
    responses((status = 200, body = ActivationList), (status = 404, body = ErrorBody)))]
async fn activations(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let id = or_reply!(known(&s, &id).await);
    match s.services.catalogue.activations_of(id, HISTORY).await {
        Ok(list) => ok(&ActivationList { activations: list }),
        Err(e) => rest_error(&e),
    }
}

/// A model's evaluations (the last 100), newest first.
#[utoipa::path(get, path = "/api/v1/models/{model_id}/evaluations", tag = "lifecycle",
    params(("model_id" = i64, Path, description = "the model's id")),
    responses((status = 200, body = EvaluationList), (status = 404, body = ErrorBody)))]
async fn evaluations(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let id = or_reply!(known(&s, &id).await);
    match s.services.catalogue.evaluations_of(id, HISTORY).await {
        Ok(list) => ok(&EvaluationList { evaluations: list }),
        Err(e) => rest_error(&e),
    }
}

/// The latest evaluation of every model that has one.
#[utoipa::path(get, path = "/api/v1/evaluations", tag = "lifecycle",
    responses((status = 200, body = EvaluationList), (status = 503, body = ErrorBody)))]
async fn latest_evaluations(State(s): State<HttpState>) -> Response {
    let registry = &s.services.catalogue;
    let ids = match registry.list(crate::registry::Order::Id, false, 1000, 0).await {
        Ok(models) => models.into_iter().map(|m| m.model_id).collect::<Vec<_>>(),
        Err(e) => return rest_error(&e),
    };
    match registry.latest_evaluations(&ids).await {
        Ok(mut list) => {
            list.sort_by_key(|e| std::cmp::Reverse(e.log_id));
            ok(&EvaluationList { evaluations: list })
        }
        Err(e) => rest_error(&e),
    }
}

/// A labelled dataset under the model root.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetJson {
    /// Features: `.npy` (with its labels beside it as `<name>_y.npy`) or `.csv`, under the
    /// model root, e.g. `eval/digits_x.npy`.
    #[schema(min_length = 1, max_length = 1024)]
    pub path: String,
    /// Labels file, when not beside the features.
    #[serde(default)]
    pub labels: String,
    /// A CSV's label column (default `label`).
    #[serde(default)]
    pub label_column: String,
}

/// Evaluating a model.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateBody {
    /// The dataset.
    #[serde(default)]
    pub dataset: Option<DatasetJson>,
    /// The output to read classes from (default: the first scores output).
    #[serde(default)]
    pub output: String,
    /// Stored with the figures.
    #[serde(default)]
    pub notes: String,
    /// Who; defaults to "http" (the token's name when tokens are on).
    #[serde(default)]
    pub evaluated_by: String,
}

/// Evaluate a model on a labelled dataset: accuracy, top-3, per-class figures and latency,
/// stored in the model's history (and as its `accuracy` when it has none).
#[utoipa::path(post, path = "/api/v1/models/{model_id}/evaluate", tag = "lifecycle", request_body = EvaluateBody,
    params(("model_id" = i64, Path, description = "the model's id")),
    responses((status = 200, body = EvaluationRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn evaluate(
    State(s): State<HttpState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let id = or_reply!(model_id(&id));
    let b: EvaluateBody = or_reply!(required_body(b));
    let Some(d) = b.dataset else {
        return rest_error(&Error::InvalidArgument(
            "name the dataset: {\"dataset\": {\"path\": \"eval/digits_x.npy\"}} (a path under the model root)".into(),
        ));
    };
    let dataset = match s.services.evaluation.dataset(&d.path, &d.labels, &d.label_column) {
        Ok(d) => d,
        Err(e) => return rest_error(&e),
    };
    let options = EvaluateOptions {
        output: Some(b.output).filter(|o| !o.is_empty()),
        notes: b.notes,
        evaluated_by: or_reply!(super::request::by(&caller, b.evaluated_by)),
    };
    match s
        .services
        .evaluation
        .evaluate(&ModelRef::Id(id), dataset, &options, |_, _| {})
        .await
    {
        Ok(done) => ok(&done.record),
        Err(e) => rest_error(&e),
    }
}
