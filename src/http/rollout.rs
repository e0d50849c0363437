//! `/api/v1/rollout`: the canary and the shadow beside the active model, set, cleared and
//! promoted, with the guide's field names; the same operations as the gRPC `SetCanary`,
//! `SetShadow`, `ClearCanary`, `ClearShadow`, `Promote` and `GetRollout`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::HttpState;
use super::error::{ErrorBody, rest_error};
use super::request::{Caller, WAIT_DOC, WaitParam, body, by, ok, required_body, served, served_header, wait_of};
use super::rest::{ActivateBody, ActivationJson, ModelJson, activation};
use crate::error::Error;
use crate::fleet::Served;
use crate::registry::{ModelRef, RolloutRole};

/// The `/api/v1/rollout` routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/rollout", get(get_rollout))
        .route("/api/v1/rollout/canary", put(set_canary).delete(clear_canary))
        .route("/api/v1/rollout/shadow", put(set_shadow).delete(clear_shadow))
        .route("/api/v1/rollout/promote", post(promote))
}

/// The canary and the shadow.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutJson {
    /// The canary (with `rollout_percentage`); null when none.
    pub canary: Option<ModelJson>,
    /// The shadow (with `shadow_percentage`); null when none.
    pub shadow: Option<ModelJson>,
    /// After a change: how the servers serve it (`?wait_ms=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
}

async fn rollout_now(s: &HttpState, served: Option<Served>) -> Response {
    match s.services.catalogue.rollout().await {
        Ok(r) => {
            let answer = ok(&RolloutJson {
                canary: r.canary.as_ref().map(ModelJson::from),
                shadow: r.shadow.as_ref().map(ModelJson::from),
                served: served.clone(),
            });
            match &served {
                Some(done) => served_header(answer, done),
                None => answer,
            }
        }
        Err(e) => rest_error(&e),
    }
}

/// The canary and the shadow.
#[utoipa::path(get, path = "/api/v1/rollout", tag = "rollout",
    responses((status = 200, body = RolloutJson), (status = 503, body = ErrorBody)))]
async fn get_rollout(State(s): State<HttpState>) -> Response {
    rollout_now(&s, None).await
}

/// Putting a model in a rollout role.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// The model, by id (or give `model_name`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub model_id: Option<i64>,
    /// The model, by name.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub model_name: Option<String>,
    /// Its share of requests, 0-100.
    #[schema(maximum = 100)]
    pub percentage: u32,
    /// Even if its signature would break the active model's clients.
    #[serde(default)]
    pub allow_signature_change: bool,
    /// Who; defaults to "http".
    #[serde(default)]
    pub changed_by: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// Who and why, for a clear.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Who; defaults to "http".
    #[serde(default)]
    pub changed_by: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

async fn set_role(
    s: &HttpState,
    caller: &Caller,
    role: RolloutRole,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let wait = or_reply!(wait_of(wait));
    let b: RolloutBody = or_reply!(required_body(b));
    let model = match (b.model_id, b.model_name) {
        (Some(id), None) => ModelRef::Id(id),
        (None, Some(name)) => ModelRef::Name(name),
        _ => {
            return rest_error(&Error::InvalidArgument(
                "name the model: model_id or model_name (one of them)".into(),
            ));
        }
    };
    let Some(percentage) = u8::try_from(b.percentage).ok().filter(|p| *p <= 100) else {
        return rest_error(&Error::InvalidArgument(format!(
            "the {} percentage is 0 to 100, got {}",
            role.name(),
            b.percentage
        )));
    };
    match s
        .services
        .rollout
        .set_rollout(
            role,
            &model,
            percentage,
            b.allow_signature_change,
            &or_reply!(by(caller, b.changed_by)),
            &b.reason,
        )
        .await
    {
        Ok(_) => rollout_now(s, Some(or_reply!(served(s, wait).await))).await,
        Err(e) => rest_error(&e),
    }
}

async fn clear_role(
    s: &HttpState,
    caller: &Caller,
    role: RolloutRole,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let wait = or_reply!(wait_of(wait));
    let b: ReasonBody = or_reply!(body(b));
    match s
        .services
        .rollout
        .clear_rollout(role, &or_reply!(by(caller, b.changed_by)), &b.reason)
        .await
    {
        Ok(_) => rollout_now(s, Some(or_reply!(served(s, wait).await))).await,
        Err(e) => rest_error(&e),
    }
}

/// Make a model the canary with a percentage (or change the canary's percentage).
#[utoipa::path(put, path = "/api/v1/rollout/canary", tag = "rollout", request_body = RolloutBody,
    params(("wait_ms" = Option<i64>, Query, description = WAIT_DOC)),
    responses((status = 200, body = RolloutJson), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_canary(
    State(s): State<HttpState>,
    caller: Caller,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    set_role(&s, &caller, RolloutRole::Canary, wait, b).await
}

/// End the canary.
#[utoipa::path(delete, path = "/api/v1/rollout/canary", tag = "rollout", request_body = Option<ReasonBody>,
    params(("wait_ms" = Option<i64>, Query, description = WAIT_DOC)),
    responses((status = 200, body = RolloutJson)))]
async fn clear_canary(
    State(s): State<HttpState>,
    caller: Caller,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    clear_role(&s, &caller, RolloutRole::Canary, wait, b).await
}

/// Make a model the shadow with a percentage.
#[utoipa::path(put, path = "/api/v1/rollout/shadow", tag = "rollout", request_body = RolloutBody,
    params(("wait_ms" = Option<i64>, Query, description = WAIT_DOC)),
    responses((status = 200, body = RolloutJson), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_shadow(
    State(s): State<HttpState>,
    caller: Caller,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    set_role(&s, &caller, RolloutRole::Shadow, wait, b).await
}

/// End the shadow.
#[utoipa::path(delete, path = "/api/v1/rollout/shadow", tag = "rollout", request_body = Option<ReasonBody>,
    params(("wait_ms" = Option<i64>, Query, description = WAIT_DOC)),
    responses((status = 200, body = RolloutJson)))]
async fn clear_shadow(
    State(s): State<HttpState>,
    caller: Caller,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    clear_role(&s, &caller, RolloutRole::Shadow, wait, b).await
}

/// Make the canary the active model.
#[utoipa::path(post, path = "/api/v1/rollout/promote", tag = "rollout", request_body = Option<ActivateBody>,
    params(("wait_ms" = Option<i64>, Query, description = WAIT_DOC)),
    responses((status = 200, body = ActivationJson), (status = 409, body = ErrorBody)))]
async fn promote(
    State(s): State<HttpState>,
    caller: Caller,
    wait: WaitParam,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let wait = or_reply!(wait_of(wait));
    let b: ActivateBody = or_reply!(body(b));
    match s
        .services
        .rollout
        .promote(&or_reply!(by(&caller, b.activated_by)), &b.reason)
        .await
    {
        Ok(done) => activation(&done, or_reply!(served(&s, wait).await)),
        Err(e) => rest_error(&e),
    }
}
