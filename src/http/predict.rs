//! `POST /api/v1/predict`: try a model on JSON inputs, through the same request path as the
//! gRPC `Predict` (route once, validate, run, encode).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::HttpState;
use super::error::{ErrorBody, rest_error};
use super::request::{ok, required_body};
use crate::error::Error;
use crate::registry::ModelRef;
use crate::serving::{InputRef, OutputData, Payload};

/// The `/api/v1/predict` route.
pub fn routes() -> Router<HttpState> {
    Router::new().route("/api/v1/predict", post(predict))
}

/// One tensor: its name, shape, datatype (`FP32`, `INT64`, `BOOL`, ...) and values in
/// row-major order (flat or nested).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct TensorJson {
    /// The model's input (or output) name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// `FP32`, `FP64`, `INT8`..`INT64`, `UINT8`..`UINT64` or `BOOL`.
    pub datatype: String,
    /// The values.
    #[schema(value_type = Vec<Object>)]
    pub data: Value,
}

/// Trying a model: which (the active one by default), an optional routing key, the inputs.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictBody {
    /// A registered model by id; absent (and no `model_name`): the active model (or the canary,
    /// by routing key).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub model_id: Option<i64>,
    /// A registered model by name.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub model_name: Option<String>,
    /// Routes a canary as over gRPC.
    #[serde(default)]
    pub routing_key: String,
    /// The inputs.
    pub inputs: Vec<TensorJson>,
}

/// What the model answered and which model it was.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictJson {
    /// The model that computed it.
    pub model_id: i64,
    /// Its name.
    pub model_name: String,
    /// Its version.
    pub version: String,
    /// `active`, `canary` or `candidate`.
    pub role: String,
    /// The outputs.
    pub outputs: Vec<TensorJson>,
}

/// Run a model on inputs (the request path of Predict: routing, validation, the engine).
#[utoipa::path(post, path = "/api/v1/predict", tag = "predict", request_body = PredictBody,
    responses((status = 200, body = PredictJson), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn predict(State(s): State<HttpState>, b: Result<Bytes, BytesRejection>) -> Response {
    let b: PredictBody = or_reply!(required_body(b));
    let model = match (b.model_id, b.model_name) {
        (Some(_), Some(_)) => {
            return rest_error(&Error::InvalidArgument(
                "name the model once: model_id or model_name".into(),
            ));
        }
        (Some(id), None) => Some(ModelRef::Id(id)),
        (None, Some(name)) => Some(ModelRef::Name(name)),
        (None, None) => None,
    };
    let mut tensors = Vec::with_capacity(b.inputs.len());
    for t in &b.inputs {
        match super::tensor_json::json_tensor_bytes(&t.name, &t.datatype, &t.shape, &t.data) {
            Ok(bytes) => tensors.push(bytes),
            Err(e) => return rest_error(&e),
        }
    }
    let inputs: Vec<InputRef<'_>> = b
        .inputs
        .iter()
        .zip(&tensors)
        .map(|(t, bytes)| InputRef {
            name: &t.name,
            datatype: &t.datatype,
            shape: &t.shape,
            payload: Payload::Raw(bytes),
        })
        .collect();
    let inference = &s.services.inference;
    let route = match inference.route_ref(model.as_ref(), &b.routing_key, None).await {
        Ok(r) => r,
        Err(e) => return rest_error(&e),
    };
    let role = route.role;
    let done = match inference.infer(route, &inputs, true, None).await {
        Ok(d) => d,
        Err(e) => return rest_error(&e),
    };
    let record = &done.model.record;
    let outputs = done
        .outputs
        .iter()
        .map(|o| TensorJson {
            name: o.name.clone(),
            shape: o.shape.clone(),
            datatype: o.datatype.name().into(),
            data: match &o.data {
                OutputData::Raw(bytes) => super::tensor_json::bytes_json(o.datatype, bytes),
                _ => Value::Array(Vec::new()),
            },
        })
        .collect();
    ok(&PredictJson {
        model_id: record.model_id,
        model_name: record.model_name.clone(),
        version: record.version.clone(),
        role: role.name().into(),
        outputs,
    })
}
