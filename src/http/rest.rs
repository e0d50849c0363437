//! The registry's REST API, with the names and routes of the model-management guide
//! (`GET /api/v1/models`, `POST /api/v1/models/{model_id}/activate`, ...), its JSON field names
//! (`model_id`, `model_name`, `version`, `file_path`, `is_active`, ...), the rollout actions
//! and `POST /api/v1/predict` for trying a model. Each route calls the same operations as the
//! gRPC `modeld.v1.ModelRegistry`. Errors are `{"error": {"code", "message"}}` with the HTTP
//! status of the code. The OpenAPI document at `/api/v1/openapi.json` is generated from these
//! handlers and types.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::HttpState;
use super::error::{ErrorBody, rest_error};
use super::request::{
    Caller, WAIT_DOC, WaitParam, body, by, json_response, model_id, ok, required_body, served, served_header, wait_of,
};
use crate::error::Error;
use crate::fleet::Served;
use crate::ops::{ActivationOutcome, Gates, Registration};
use crate::registry::{ActivationMeta, ModelChanges, ModelRecord, ModelRef, Order, RollbackPolicy};

/// The `/api/v1` routes: models and activation here, rollout, predict and the OpenAPI
/// document from their own files (the admin page's API serves the same list).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/models", get(list_models).post(register_model))
        .route("/api/v1/models/active", get(active_model))
        .route("/api/v1/models/rollback", post(rollback))
        .route(
            "/api/v1/models/{model_id}",
            get(get_model).put(update_model).delete(delete_model),
        )
        .route("/api/v1/models/{model_id}/activate", post(activate_model))
        .merge(super::rollout::routes())
        .merge(super::predict::routes())
        .merge(super::openapi::routes())
}

/// A model's rollback policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RollbackPolicyJson {
    /// Error rate 0-1 over the window above which it is rolled back; null: never automatically.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub rollback_threshold: Option<f64>,
    /// Requests the window must hold before the threshold counts.
    #[schema(minimum = 1)]
    pub rollback_min_samples: u32,
    /// The sliding window, in seconds.
    #[schema(minimum = 1)]
    pub rollback_window_secs: u32,
    /// Optional p99 latency threshold over the same window, in ms.
    #[schema(exclusive_minimum = 0.0)]
    pub rollback_p99_ms: Option<f64>,
}

/// A registered model, with the guide's field names.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelJson {
    /// Primary key.
    pub model_id: i64,
    /// Unique name.
    pub model_name: String,
    /// Version label.
    pub version: String,
    /// Path of the file, relative to the model root.
    pub file_path: String,
    /// Free text.
    pub description: String,
    /// Free text, e.g. "classifier".
    pub model_type: String,
    /// 0-1 when known.
    pub accuracy: Option<f64>,
    /// The one active model.
    pub is_active: bool,
    /// When registered.
    pub created_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
    /// Who registered it.
    pub created_by: String,
    /// Hex sha256 of the file.
    pub checksum_sha256: String,
    /// Size of the file.
    pub file_size_bytes: i64,
    /// `registered`, `testing`, `canary`, `shadow`, `active` or `deprecated`.
    pub status: String,
    /// As the canary: its share of requests (0-100).
    pub rollout_percentage: i32,
    /// As the shadow: the share of requests mirrored to it (0-100).
    pub shadow_percentage: i32,
    /// The automatic rollback policy.
    #[serde(flatten)]
    pub rollback: RollbackPolicyJson,
    /// Served as the active model through its watch period.
    pub is_stable: bool,
    /// When it stopped being the active model.
    pub deprecated_at: Option<DateTime<Utc>>,
    /// The oldest app version that may use it (every platform).
    pub min_app_version: Option<String>,
    /// Per platform, e.g. `{"ios": "2.3.0"}`.
    #[schema(value_type = Object)]
    pub min_app_versions: Value,
    /// Inputs and outputs: `{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}`.
    #[schema(value_type = Object)]
    pub signature: Value,
}

impl From<&ModelRecord> for ModelJson {
    fn from(r: &ModelRecord) -> Self {
        Self {
            model_id: r.model_id,
            model_name: r.model_name.clone(),
            version: r.version.clone(),
            file_path: r.file_path.clone(),
            description: r.description.clone(),
            model_type: r.model_type.clone(),
            accuracy: r.accuracy,
            is_active: r.is_active,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by.clone(),
            checksum_sha256: r.checksum_sha256.clone(),
            file_size_bytes: r.file_size_bytes,
            status: r.status.clone(),
            rollout_percentage: r.rollout_percentage,
            shadow_percentage: r.shadow_percentage,
            rollback: RollbackPolicyJson {
                rollback_threshold: r.rollback_threshold,
                rollback_min_samples: u32::try_from(r.rollback_min_samples).unwrap_or(0),
                rollback_window_secs: u32::try_from(r.rollback_window_secs).unwrap_or(0),
                rollback_p99_ms: r.rollback_p99_ms,
            },
            is_stable: r.is_stable,
            deprecated_at: r.deprecated_at,
            min_app_version: r.min_app_version.clone(),
            min_app_versions: serde_json::from_str(&r.min_app_versions).unwrap_or_else(|_| serde_json::json!({})),
            signature: serde_json::from_str(&r.signature).unwrap_or(Value::Null),
        }
    }
}

/// Every model, with the active one marked.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// The models (each with `is_active`).
    pub models: Vec<ModelJson>,
    /// The active model's id; null when none is active.
    pub active_model_id: Option<i64>,
    /// How many models are registered.
    pub total: i64,
}

/// `GET /api/v1/models?order_by=created_at|name|accuracy|id&descending=true&limit=100&offset=0`.
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    descending: Option<bool>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
}

/// List the models (the active one marked).
#[utoipa::path(get, path = "/api/v1/models", tag = "registry",
    params(
        ("order_by" = Option<String>, Query, description = "created_at (default), name, accuracy or id"),
        ("descending" = Option<bool>, Query, description = "newest (or largest) first"),
        ("limit" = Option<i64>, Query, description = "1-1000, default 1000"),
        ("offset" = Option<i64>, Query, description = "models to skip"),
    ),
    responses((status = 200, body = ModelList), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_models(
    State(s): State<HttpState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return rest_error(&Error::InvalidArgument(
            "query parameters: order_by (created_at, name, accuracy, id), descending (true/false), limit, offset"
                .into(),
        ));
    };
    let order = match q.order_by.as_deref() {
        None | Some("created_at") => Order::CreatedAt,
        Some("name" | "model_name") => Order::Name,
        Some("accuracy") => Order::Accuracy,
        Some("id" | "model_id") => Order::Id,
        Some(other) => {
            return rest_error(&Error::InvalidArgument(format!(
                "order_by is created_at, name, accuracy or id, got {other:?}"
            )));
        }
    };
    let limit = q.limit.unwrap_or(1000);
    if !(1..=1000).contains(&limit) || q.offset.is_some_and(|o| o < 0) {
        return rest_error(&Error::InvalidArgument("limit is 1-1000 and offset 0 or more".into()));
    }
    let registry = &s.services.catalogue;
    let listed = async {
        let models = registry
            .list(order, q.descending.unwrap_or(false), limit, q.offset.unwrap_or(0))
            .await?;
        let total = registry.count().await?;
        let active = registry.active().await?;
        Ok::<_, Error>((models, total, active))
    };
    match listed.await {
        Ok((models, total, active)) => ok(&ModelList {
            models: models.iter().map(ModelJson::from).collect(),
            active_model_id: active.map(|a| a.model_id),
            total,
        }),
        Err(e) => rest_error(&e),
    }
}

/// The active model.
#[utoipa::path(get, path = "/api/v1/models/active", tag = "registry",
    responses((status = 200, body = ModelJson), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn active_model(State(s): State<HttpState>) -> Response {
    match s.services.catalogue.active().await {
        Ok(Some(m)) => ok(&ModelJson::from(&m)),
        Ok(None) => rest_error(&Error::NotFound(
            "no model is active (POST /api/v1/models/{model_id}/activate)".into(),
        )),
        Err(e) => rest_error(&e),
    }
}

/// One model.
#[utoipa::path(get, path = "/api/v1/models/{model_id}", tag = "registry",
    params(("model_id" = i64, Path, description = "the model's id")),
    responses((status = 200, body = ModelJson), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_model(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let id = or_reply!(model_id(&id));
    match s.services.catalogue.get(&ModelRef::Id(id)).await {
        Ok(m) => ok(&ModelJson::from(&m)),
        Err(e) => rest_error(&e),
    }
}

/// Registering a model: the guide's fields. The file must exist under the model root.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Unique name.
    #[schema(min_length = 1)]
    pub model_name: String,
    /// Path of the file, relative to the model root.
    #[schema(min_length = 1)]
    pub file_path: String,
    /// Version label.
    #[serde(default)]
    pub version: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Free text.
    #[serde(default)]
    pub model_type: String,
    /// 0-1.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub accuracy: Option<f64>,
    /// Activate it right away.
    #[serde(default)]
    pub activate: bool,
    /// With `activate`: even if its inputs or outputs would break the active model's clients.
    #[serde(default)]
    pub allow_signature_change: bool,
    /// Recorded as `created_by`; defaults to "http".
    #[serde(default)]
    pub created_by: String,
}

/// Register a model (201 with the record; 404 when `file_path` names no file).
#[utoipa::path(post, path = "/api/v1/models", tag = "registry", request_body = RegisterBody,
    params(("wait_ms" = Option<i64>, Query, description = WAIT_DOC)),
    responses((status = 201, body = ModelJson), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn register_model(
    State(s): State<HttpState>,
    caller: Caller,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let wait = or_reply!(wait_of(wait));
    let b: RegisterBody = or_reply!(required_body(b));
    let reg = Registration {
        name: b.model_name,
        file_path: b.file_path,
        version: b.version,
        description: b.description,
        model_type: b.model_type,
        accuracy: b.accuracy,
        created_by: or_reply!(by(&caller, b.created_by)),
        activate: b.activate,
        allow_signature_change: b.allow_signature_change,
    };
    match s.services.activation.register(reg).await {
        Ok(done) => {
            let model = done.activation.as_ref().map_or(&done.model, |a| &a.active);
            let answer = json_response(StatusCode::CREATED, &ModelJson::from(model));
            match done.activation {
                Some(_) => served_header(answer, &or_reply!(served(&s, wait).await)),
                None => answer,
            }
        }
        Err(e) => rest_error(&e),
    }
}

/// What `PUT /api/v1/models/{model_id}` may change; absent fields stay.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// New version label.
    pub version: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New type.
    pub model_type: Option<String>,
    /// New accuracy, 0-1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub accuracy: Option<f64>,
    /// A new rollback policy (the whole policy).
    pub rollback: Option<RollbackPolicyJson>,
    /// The oldest app version that may use it (every platform); "" clears it.
    pub min_app_version: Option<String>,
    /// Per platform, e.g. `{"ios": "2.3.0"}` (replaces them all).
    pub min_app_versions: Option<std::collections::BTreeMap<String, String>>,
}

/// Update a model's metadata.
#[utoipa::path(put, path = "/api/v1/models/{model_id}", tag = "registry", request_body = UpdateBody,
    params(("model_id" = i64, Path, description = "the model's id"),
        ("wait_ms" = Option<i64>, Query, description = WAIT_DOC)),
    responses((status = 200, body = ModelJson), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_model(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let wait = or_reply!(wait_of(wait));
    let id = or_reply!(model_id(&id));
    let b: UpdateBody = or_reply!(required_body(b));
    let changes = ModelChanges {
        version: b.version,
        description: b.description,
        model_type: b.model_type,
        accuracy: b.accuracy,
        rollback: b.rollback.map(|r| RollbackPolicy {
            threshold: r.rollback_threshold,
            min_samples: r.rollback_min_samples,
            window_secs: r.rollback_window_secs,
            p99_ms: r.rollback_p99_ms,
        }),
        min_app_version: b.min_app_version,
        min_app_versions: b.min_app_versions,
    };
    // A new rollback policy changes what the servers' guards do: wait for them.
    let guards_follow = changes.rollback.is_some();
    match s.services.activation.update(&ModelRef::Id(id), &changes).await {
        Ok(m) if guards_follow => served_header(ok(&ModelJson::from(&m)), &or_reply!(served(&s, wait).await)),
        Ok(m) => ok(&ModelJson::from(&m)),
        Err(e) => rest_error(&e),
    }
}

/// Delete a model's record (never the file; refused for the active model and a model in a
/// rollout role).
#[utoipa::path(delete, path = "/api/v1/models/{model_id}", tag = "registry",
    params(("model_id" = i64, Path, description = "the model's id")),
    responses((status = 200, body = ModelJson, description = "the deleted record"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_model(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let id = or_reply!(model_id(&id));
    match s.services.activation.delete(&ModelRef::Id(id)).await {
        Ok(m) => ok(&ModelJson::from(&m)),
        Err(e) => rest_error(&e),
    }
}

/// Activating a model; every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    /// Why; kept in the activation history.
    #[serde(default)]
    pub reason: String,
    /// Recorded in the history; defaults to "http".
    #[serde(default)]
    pub activated_by: String,
    /// Even if its inputs or outputs would break the active model's clients.
    #[serde(default)]
    pub allow_signature_change: bool,
}

/// What an activation (or rollback, or promote) did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivationJson {
    /// The model now active.
    pub active: ModelJson,
    /// The model active before, if any.
    pub previous: Option<ModelJson>,
    /// Time to read, verify, load and warm the model (0 when it was already loaded).
    pub load_time_ms: f64,
    /// The model was already the active one: nothing changed, and `previous` is null.
    pub already_active: bool,
    /// How the servers serve the change (`?wait_ms=`).
    pub served: Served,
}

pub(crate) fn activation(done: &ActivationOutcome, served: Served) -> Response {
    let body = ActivationJson {
        active: ModelJson::from(&done.active),
        previous: done.previous.as_ref().map(ModelJson::from),
        load_time_ms: done.load_time.as_secs_f64() * 1e3,
        already_active: done.already_active,
        served,
    };
    served_header(ok(&body), &body.served)
}

/// Activate a model: it is loaded, verified and warmed before the switch; every server of the
/// registry follows.
#[utoipa::path(post, path = "/api/v1/models/{model_id}/activate", tag = "registry", request_body = Option<ActivateBody>,
    params(("model_id" = i64, Path, description = "the model's id"),
        ("wait_ms" = Option<i64>, Query, description = WAIT_DOC)),
    responses((status = 200, body = ActivationJson), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn activate_model(
    State(s): State<HttpState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let wait = or_reply!(wait_of(wait));
    let id = or_reply!(model_id(&id));
    let b: ActivateBody = or_reply!(body(b));
    let meta = ActivationMeta {
        activated_by: or_reply!(by(&caller, b.activated_by)),
        reason: b.reason,
        is_rollback: false,
    };
    let gates = Gates {
        allow_signature_change: b.allow_signature_change,
        ..Gates::default()
    };
    match s.services.activation.activate(&ModelRef::Id(id), &meta, &gates).await {
        Ok(done) => activation(&done, or_reply!(served(&s, wait).await)),
        Err(e) => rest_error(&e),
    }
}

/// Rolling back; every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Who; defaults to "http".
    #[serde(default)]
    pub activated_by: String,
    /// Roll back only while this model is still the active one (so two people rolling back
    /// from it at once roll back once).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub from_model_id: Option<i64>,
}

/// Re-activate the model that was active before the current one.
#[utoipa::path(post, path = "/api/v1/models/rollback", tag = "registry", request_body = Option<RollbackBody>,
    params(("wait_ms" = Option<i64>, Query, description = WAIT_DOC)),
    responses((status = 200, body = ActivationJson), (status = 404, body = ErrorBody, description = "from_model_id names no model"), (status = 409, body = ErrorBody)))]
async fn rollback(
    State(s): State<HttpState>,
    caller: Caller,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let wait = or_reply!(wait_of(wait));
    let b: RollbackBody = or_reply!(body(b));
    let from = b.from_model_id.map(ModelRef::Id);
    match s
        .services
        .activation
        .rollback(&or_reply!(by(&caller, b.activated_by)), &b.reason, from.as_ref())
        .await
    {
        Ok(done) => activation(&done, or_reply!(served(&s, wait).await)),
        Err(e) => rest_error(&e),
    }
}
