//! The OpenAPI document of `/api/v1` (`GET /api/v1/openapi.json`): what the route
//! annotations derive, tightened to say exactly what the server takes.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use serde_json::Value;
use utoipa::OpenApi;

use super::HttpState;

/// The route of the document.
pub fn routes() -> Router<HttpState> {
    Router::new().route("/api/v1/openapi.json", get(openapi))
}

/// The OpenAPI document of the REST API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "modeld REST API",
        description = "The model registry, rollout and predict over HTTP."
    ),
    paths(
        super::rest::list_models,
        super::rest::register_model,
        super::rest::active_model,
        super::rest::rollback,
        super::rest::get_model,
        super::rest::update_model,
        super::rest::delete_model,
        super::rest::activate_model,
        super::rollout::get_rollout,
        super::rollout::set_canary,
        super::rollout::clear_canary,
        super::rollout::set_shadow,
        super::rollout::clear_shadow,
        super::rollout::promote,
        super::predict::predict,
        super::model_config::model_config,
        super::download::download_url,
        super::download::download,
        super::lifecycle::events,
        super::lifecycle::status,
        super::lifecycle::servers,
        super::lifecycle::stats,
        super::lifecycle::latest_evaluations,
        super::lifecycle::activations,
        super::lifecycle::evaluations,
        super::lifecycle::evaluate
    ),
    components(schemas(
        super::rest::ModelJson,
        super::rest::ModelList,
        super::rest::RegisterBody,
        super::rest::UpdateBody,
        super::rest::ActivateBody,
        super::rest::RollbackBody,
        super::rest::ActivationJson,
        super::rollout::RolloutJson,
        super::rollout::RolloutBody,
        super::rollout::ReasonBody,
        super::predict::PredictBody,
        super::predict::PredictJson,
        super::predict::TensorJson,
        super::error::ErrorBody,
        super::error::ErrorDetail,
        super::rest::RollbackPolicyJson,
        crate::ops::ClientConfig,
        crate::registry::EventRecord,
        super::lifecycle::StatusJson,
        super::lifecycle::ServerList,
        super::lifecycle::ServerJson,
        crate::registry::servers::ServerEntry,
        crate::registry::servers::Serving,
        crate::registry::servers::Held,
        crate::fleet::Served,
        crate::fleet::Lagging,
        super::lifecycle::DegradationJson,
        super::lifecycle::ServedShare,
        super::lifecycle::CandidateJson,
        super::lifecycle::StatsJson,
        super::lifecycle::ModelStatsJson,
        super::lifecycle::RoleStatsJson,
        super::lifecycle::ActivationList,
        crate::registry::ActivationRecord,
        super::lifecycle::EvaluationList,
        crate::registry::EvaluationRecord,
        super::lifecycle::EvaluateBody,
        super::lifecycle::DatasetJson
    ))
)]
pub struct ApiDoc;

async fn openapi(State(s): State<HttpState>) -> Response {
    // This server's own limit on signed URLs.
    let mut doc = document().clone();
    doc["components"]["schemas"]["DownloadUrlBody"]["properties"]["expires_in_secs"]["maximum"] =
        s.downloads.max_expiry_secs.into();
    super::json_ok(doc.to_string())
}

/// The OpenAPI document as served: what the derive says, plus what it cannot say.
pub fn document() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        tighten(&mut doc);
        doc
    })
}

/// The rules the derive cannot state, so that the document says exactly what the server
/// takes (schemathesis checks both ways, docs/http.md): every route may answer 400 and 503; ids are
/// positive and every integer parameter fits in 64 bits; an optional body is absent, never
/// `null`; no string holds a NUL byte; a rollout names its model once (by id or by name) and
/// a prediction at most once; an evaluation needs its dataset; the model config answers POST
/// as it answers GET.
fn tighten(doc: &mut Value) {
    let bad_request = serde_json::json!({
        "description": "the request cannot be used; the message says why",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    });
    // The registry unreachable (or its file removed), the request bytes' budget full, the
    // server shutting down: any route.
    let unavailable = serde_json::json!({
        "description": "the server cannot answer now (the message says why); retry later",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            for op in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                // (Indexing a JSON object for writing adds the key: read with get_mut.)
                if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    responses.entry("400").or_insert_with(|| bad_request.clone());
                    responses.entry("503").or_insert_with(|| unavailable.clone());
                }
                for p in op
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let name = p["name"].as_str().unwrap_or_default().to_string();
                    let schema = &mut p["schema"];
                    if name == "order_by" {
                        schema["enum"] = serde_json::json!(["created_at", "name", "accuracy", "id"]);
                    } else if schema["type"] == "string" && schema.get("pattern").is_none() {
                        schema["pattern"] = NO_NUL.into();
                    }
                    if !is_type(schema, "integer") {
                        continue;
                    }
                    let (min, max) = match name.as_str() {
                        "model_id" => (1, i64::MAX),
                        "limit" => (1, 1000),
                        "offset" | "wait_ms" => (0, i64::MAX),
                        "recent" => (0, 1000),
                        _ => (i64::MIN, i64::MAX),
                    };
                    schema["minimum"] = min.into();
                    schema["maximum"] = max.into();
                }
                if let Some(body) = op.pointer_mut("/requestBody/content/application~1json/schema") {
                    let inner = body["oneOf"]
                        .as_array()
                        .filter(|o| o.len() == 2 && o[0]["type"] == "null")
                        .map(|o| o[1].clone());
                    if let Some(inner) = inner {
                        *body = inner;
                    }
                }
            }
        }
        // Server-sent events as schemathesis and OpenAPI 3.2 (`itemSchema`) read them: each
        // event an object of its fields; `data` is an EventRecord as JSON (for `event: error`,
        // an ErrorBody, as a REST error).
        if let Some(events) = paths
            .get_mut("/api/v1/events")
            .and_then(|e| e.pointer_mut("/get/responses/200/content/text~1event-stream"))
        {
            events["schema"] = serde_json::json!({
                "type": "object",
                "required": ["data"],
                "properties": {
                    "id": {"type": "string", "description": "the event id"},
                    "event": {"type": "string", "description": "the event's kind, or `error`"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"oneOf": [
                            {"$ref": "#/components/schemas/EventRecord"},
                            {"$ref": "#/components/schemas/ErrorBody"}
                        ]}
                    },
                    "retry": {"type": "integer"}
                }
            });
        }
        let config = "/api/v1/model-config";
        if let Some(get) = paths.get(config).and_then(|c| c.get("get")).cloned() {
            let mut post = get;
            post["operationId"] = "model_config_post".into();
            post["summary"] = "The same as GET (the guide's client calls it with POST).".into();
            paths[config]["post"] = post;
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    if let Some(all) = schemas.as_object_mut() {
        let requests = all
            .iter_mut()
            .filter(|(name, _)| REQUEST_BODIES.contains(&name.as_str()));
        for (_, schema) in requests {
            let properties = schema.get_mut("properties").and_then(Value::as_object_mut);
            for (name, property) in properties.into_iter().flat_map(|p| p.iter_mut()) {
                if !is_type(property, "string") {
                    continue;
                }
                if property.get("pattern").is_none() {
                    property["pattern"] = NO_NUL.into();
                }
                if let Some(max) = crate::registry::text::max_chars(name) {
                    property["maxLength"] = max.into();
                }
            }
        }
    }
    for body in ["RegisterBody", "RolloutBody", "PredictBody"] {
        schemas[body]["properties"]["model_name"]["pattern"] = NAME.into();
    }
    // The registry's own bounds on a rollback policy.
    let policy = &mut schemas["RollbackPolicyJson"]["properties"];
    policy["rollback_min_samples"]["maximum"] = crate::registry::MAX_MIN_SAMPLES.into();
    policy["rollback_window_secs"]["maximum"] = crate::registry::MAX_WINDOW_SECS.into();
    // A path relative to the model root, or an object URI; never absolute.
    schemas["RegisterBody"]["properties"]["file_path"]["pattern"] = "^[^/\\u0000][^\\u0000]*$".into();
    // Platforms as X-App-Platform names them; app versions as `2.3.0` ("" clears the one for all).
    let update = &mut schemas["UpdateBody"]["properties"];
    update["min_app_versions"]["propertyNames"] = serde_json::json!({"pattern": "^[a-z0-9_-]{1,32}$"});
    update["min_app_versions"]["additionalProperties"] =
        serde_json::json!({"type": "string", "pattern": "^[A-Za-z0-9.+_-]{1,50}$"});
    update["min_app_version"]["pattern"] = "^[A-Za-z0-9.+_-]{0,50}$".into();
    let named = |field: &str, ty: &str| serde_json::json!({"required": [field], "properties": {field: {"type": ty}}});
    schemas["RolloutBody"]["oneOf"] = serde_json::json!([named("model_id", "integer"), named("model_name", "string")]);
    schemas["PredictBody"]["not"] = serde_json::json!({
        "required": ["model_id", "model_name"],
        "properties": {"model_id": {"type": "integer"}, "model_name": {"type": "string"}}
    });
    schemas["EvaluateBody"]["required"] = serde_json::json!(["dataset"]);
    schemas["EvaluateBody"]["properties"]["dataset"] = serde_json::json!({"$ref": "#/components/schemas/DatasetJson"});
}

/// A model name (name.rs): no control, line or paragraph separator, or common
/// invisible characters, and no space at either end. (The server also refuses private-use and
/// unassigned characters, which a pattern cannot list.)
const NAME: &str = "^[^\\s\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff]\
     ([^\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff]*\
     [^\\s\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff])?$";

/// The schemas of request bodies (their strings may not hold NUL; answers are not checked).
const REQUEST_BODIES: [&str; 11] = [
    "RegisterBody",
    "UpdateBody",
    "ActivateBody",
    "RollbackBody",
    "RolloutBody",
    "ReasonBody",
    "PredictBody",
    "EvaluateBody",
    "DatasetJson",
    "DownloadUrlBody",
    "RollbackPolicyJson",
];

/// No NUL byte: the registry stores none, and the server refuses them by field.
const NO_NUL: &str = "^[^\\u0000]*$";

/// Whether a schema's `type` is `ty` or a list holding it.
fn is_type(schema: &Value, ty: &str) -> bool {
    schema["type"] == ty || schema["type"].as_array().is_some_and(|t| t.iter().any(|x| x == ty))
}
