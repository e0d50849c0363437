//! The Open Inference Protocol's REST binding (KServe v2, as Triton serves it over HTTP):
//! health, server and model metadata, model config, readiness, statistics, the repository
//! extension and `infer` with JSON tensors or the binary tensor data extension
//! (`Inference-Header-Content-Length`). Each route turns its request into the gRPC message and
//! calls the gRPC service's own code, so both transports route, validate and fail alike.
//!
//! Model names are path segments: percent-encode what a URL cannot carry (`my%20model`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tonic::Request;

use super::{HttpState, json_error, json_ok};
use crate::api::kserve_pb as pb;
use crate::api::kserve_pb::grpc_inference_service_server::GrpcInferenceService as _;
use crate::error::Error;
use crate::model::DataType;

/// The binary tensor data extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Bodies larger than this are parsed off the runtime's threads.
const BIG_BODY: usize = 64 << 10;

/// The `/v2` routes.
pub fn routes() -> Router<HttpState> {
    let mut r = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(stats))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/repository/models/{name}/unload", post(unload));
    for base in ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"] {
        r = r
            .route(base, get(metadata))
            .route(&format!("{base}/ready"), get(model_ready))
            .route(&format!("{base}/config"), get(config))
            .route(&format!("{base}/stats"), get(stats))
            .route(&format!("{base}/infer"), post(infer));
    }
    r
}

/// The model name and version of a route (the version is empty when the route has none).
fn name_version(params: &[(String, String)]) -> (String, String) {
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    (get("name"), get("version"))
}

type Params = Path<Vec<(String, String)>>;

async fn live(State(s): State<HttpState>) -> Response {
    match s.kserve.server_live(Request::new(pb::ServerLiveRequest {})).await {
        Ok(r) if r.get_ref().live => StatusCode::OK.into_response(),
        Ok(_) => StatusCode::BAD_REQUEST.into_response(),
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

async fn ready(State(s): State<HttpState>) -> Response {
    match s.kserve.server_ready(Request::new(pb::ServerReadyRequest {})).await {
        Ok(r) if r.get_ref().ready => StatusCode::OK.into_response(),
        // The protocol: 200 means ready, a 4xx status means not.
        Ok(_) => json_error(StatusCode::BAD_REQUEST, "no model is loaded yet"),
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

async fn model_ready(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (name, version) = name_version(&params);
    match s
        .kserve
        .model_ready(Request::new(pb::ModelReadyRequest { name, version }))
        .await
    {
        Ok(r) if r.get_ref().ready => StatusCode::OK.into_response(),
        Ok(_) => json_error(StatusCode::BAD_REQUEST, "the model is not loaded on this server"),
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

async fn server_metadata(State(s): State<HttpState>) -> Response {
    match s
        .kserve
        .server_metadata(Request::new(pb::ServerMetadataRequest {}))
        .await
    {
        Ok(r) => {
            let m = r.into_inner();
            json_ok(json!({"name": m.name, "version": m.version, "extensions": m.extensions}).to_string())
        }
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

async fn metadata(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (name, version) = name_version(&params);
    match s
        .kserve
        .model_metadata(Request::new(pb::ModelMetadataRequest { name, version }))
        .await
    {
        Ok(r) => {
            let m = r.into_inner();
            let tensors = |ts: &[pb::model_metadata_response::TensorMetadata]| -> Vec<Value> {
                ts.iter()
                    .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
                    .collect()
            };
            json_ok(
                json!({
                    "name": m.name,
                    "versions": m.versions,
                    "platform": m.platform,
                    "inputs": tensors(&m.inputs),
                    "outputs": tensors(&m.outputs),
                })
                .to_string(),
            )
        }
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

async fn config(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (name, version) = name_version(&params);
    match s
        .kserve
        .model_config(Request::new(pb::ModelConfigRequest { name, version }))
        .await
    {
        Ok(r) => match r.into_inner().config {
            Some(c) => json_ok(config_json(&c).to_string()),
            None => json_error(StatusCode::NOT_FOUND, "no config"),
        },
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

/// A model config as Triton's HTTP endpoint prints it (the protobuf field names, enums by
/// name).
fn config_json(c: &pb::ModelConfig) -> Value {
    let dtype = |d: i32| pb::DataType::try_from(d).map_or("TYPE_INVALID", |d| d.as_str_name());
    let mut out = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|t| json!({
            "name": t.name, "data_type": dtype(t.data_type), "format": "FORMAT_NONE", "dims": t.dims,
        })).collect::<Vec<_>>(),
        "output": c.output.iter().map(|t| json!({
            "name": t.name, "data_type": dtype(t.data_type), "dims": t.dims,
        })).collect::<Vec<_>>(),
        "instance_group": c.instance_group.iter().map(|g| json!({
            "name": g.name,
            "count": g.count,
            "kind": pb::model_instance_group::Kind::try_from(g.kind).map_or("KIND_AUTO", |k| k.as_str_name()),
        })).collect::<Vec<_>>(),
        "default_model_filename": c.default_model_filename,
    });
    if let Some(pb::model_config::SchedulingChoice::DynamicBatching(b)) = &c.scheduling_choice {
        out["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_size,
            "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
            "preserve_ordering": b.preserve_ordering,
        });
    }
    out
}

async fn stats(State(s): State<HttpState>, params: Option<Params>) -> Response {
    let (name, version) = params.map_or_else(Default::default, |Path(p)| name_version(&p));
    match s
        .kserve
        .model_statistics(Request::new(pb::ModelStatisticsRequest { name, version }))
        .await
    {
        Ok(r) => {
            let d = |t: &Option<pb::StatisticDuration>| {
                let t = t.unwrap_or_default();
                json!({"count": t.count, "ns": t.ns})
            };
            let models: Vec<Value> = r
                .into_inner()
                .model_stats
                .iter()
                .map(|m| {
                    let i = m.inference_stats.unwrap_or_default();
                    json!({
                        "name": m.name,
                        "version": m.version,
                        "last_inference": m.last_inference,
                        "inference_count": m.inference_count,
                        "execution_count": m.execution_count,
                        "inference_stats": {
                            "success": d(&i.success), "fail": d(&i.fail), "queue": d(&i.queue),
                            "compute_input": d(&i.compute_input), "compute_infer": d(&i.compute_infer),
                            "compute_output": d(&i.compute_output), "cache_hit": d(&i.cache_hit),
                            "cache_miss": d(&i.cache_miss),
                        },
                        "batch_stats": m.batch_stats.iter().map(|b| json!({
                            "batch_size": b.batch_size,
                            "compute_input": d(&b.compute_input),
                            "compute_infer": d(&b.compute_infer),
                            "compute_output": d(&b.compute_output),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json_ok(json!({ "model_stats": models }).to_string())
        }
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

#[derive(Debug, Default, Deserialize)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(State(s): State<HttpState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return json_error(e.status(), &e.body_text()),
    };
    let req: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the request body is not valid JSON: {e}"),
                );
            }
        }
    };
    match s
        .kserve
        .repository_index(Request::new(pb::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: req.ready,
        }))
        .await
    {
        Ok(r) => {
            let models: Vec<Value> = r
                .into_inner()
                .models
                .iter()
                .map(|m| {
                    let mut v = json!({"name": m.name, "version": m.version, "state": m.state});
                    if !m.reason.is_empty() {
                        v["reason"] = json!(m.reason);
                    }
                    v
                })
                .collect();
            json_ok(Value::Array(models).to_string())
        }
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

async fn load(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (model_name, _) = name_version(&params);
    let req = pb::RepositoryModelLoadRequest {
        repository_name: String::new(),
        model_name,
        parameters: HashMap::new(),
    };
    match s.kserve.repository_model_load(Request::new(req)).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

async fn unload(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (model_name, _) = name_version(&params);
    let req = pb::RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name,
        parameters: HashMap::new(),
    };
    match s.kserve.repository_model_unload(Request::new(req)).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => super::error::oip(&super::error::of_status(&e)),
    }
}

#[derive(Debug, Deserialize)]
struct InferRequest<'a> {
    #[serde(default)]
    id: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<InputTensor<'a>>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

/// An input as sent: its `data` is kept as the request's own text and read into tensor bytes
/// once the datatype and shape are known (they may come after it).
#[derive(Debug, Deserialize)]
struct InputTensor<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

/// A protocol parameter as the gRPC message carries it.
fn parameter(name: &str, v: &Value) -> Result<pb::InferParameter, Error> {
    use pb::infer_parameter::ParameterChoice as P;
    let choice = match v {
        Value::Bool(b) => P::BoolParam(*b),
        Value::String(s) => P::StringParam(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), ..) => P::Int64Param(i),
            (None, Some(u), _) => P::Uint64Param(u),
            (.., Some(f)) => P::DoubleParam(f),
            _ => return Err(bad(format!("parameter {name:?} is not a number JSON can carry"))),
        },
        _ => {
            return Err(bad(format!(
                "parameter {name:?} must be a string, a number or a boolean"
            )));
        }
    };
    Ok(pb::InferParameter {
        parameter_choice: Some(choice),
    })
}

fn flag(parameters: &Map<String, Value>, name: &str) -> Result<Option<bool>, Error> {
    match parameters.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("parameter {name:?} is a boolean"))),
    }
}

/// Flattens a tensor's JSON `data` (nested arrays, row-major) into little-endian `datatype`
/// elements as it is parsed: no JSON tree is built, and parsing stops at the first value past
/// the `limit` the tensor's shape holds (a 60 MB body for a [1,64] input costs 64 values).
struct Flatten<'a> {
    name: &'a str,
    datatype: DataType,
    limit: usize,
    out: &'a mut Vec<u8>,
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut Flatten<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} values, in arrays nested as the shape", self.datatype.name())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Number::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Number::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Number::Uint(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Number::Float(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        Err(E::custom(format!(
            "input {:?}: {:?} is not a {} value",
            self.name,
            crate::error::cut(v, 40),
            self.datatype.name()
        )))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!(
            "input {:?}: null is not a {} value",
            self.name,
            self.datatype.name()
        )))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(serde::de::Error::custom(format!(
            "input {:?}: an object is not a {} value",
            self.name,
            self.datatype.name()
        )))
    }
}

/// One JSON scalar.
#[derive(Debug, Clone, Copy)]
enum Number {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Uint(u) => write!(f, "{u}"),
            Self::Float(x) => write!(f, "{x}"),
        }
    }
}

impl Flatten<'_> {
    fn push<E: serde::de::Error>(&mut self, v: Number) -> Result<(), E> {
        if self.out.len() / self.datatype.size() >= self.limit {
            return Err(E::custom(format!(
                "input {:?}: data has more values than its shape holds ({})",
                self.name, self.limit
            )));
        }
        let wrong = || {
            E::custom(format!(
                "input {:?}: {v} is not a {} value",
                self.name,
                self.datatype.name()
            ))
        };
        macro_rules! int {
            ($t:ty) => {{
                let n = match v {
                    Number::Int(i) => <$t>::try_from(i).ok(),
                    Number::Uint(u) => <$t>::try_from(u).ok(),
                    _ => None,
                };
                self.out.extend_from_slice(&n.ok_or_else(wrong)?.to_le_bytes());
            }};
        }
        let float = match v {
            Number::Int(i) => Some(i as f64),
            Number::Uint(u) => Some(u as f64),
            Number::Float(x) => Some(x),
            Number::Bool(_) => None,
        };
        match self.datatype {
            DataType::Bool => match v {
                Number::Bool(b) => self.out.push(u8::from(b)),
                _ => return Err(wrong()),
            },
            DataType::Fp32 => self
                .out
                .extend_from_slice(&(float.ok_or_else(wrong)? as f32).to_le_bytes()),
            DataType::Fp64 => self.out.extend_from_slice(&float.ok_or_else(wrong)?.to_le_bytes()),
            DataType::Int8 => int!(i8),
            DataType::Int16 => int!(i16),
            DataType::Int32 => int!(i32),
            DataType::Int64 => int!(i64),
            DataType::Uint8 => int!(u8),
            DataType::Uint16 => int!(u16),
            DataType::Uint32 => int!(u32),
            DataType::Uint64 => int!(u64),
        }
        Ok(())
    }
}

/// Writes little-endian `datatype` elements as a flat JSON array (floats in their shortest
/// exact form; a value JSON cannot hold, NaN or an infinity, as null).
fn decode_json(datatype: DataType, bytes: &[u8], out: &mut String) {
    out.push('[');
    let n = bytes.len() / datatype.size();
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let b = &bytes[i * datatype.size()..(i + 1) * datatype.size()];
        let mut arr8 = [0u8; 8];
        arr8[..b.len()].copy_from_slice(b);
        let _ = match datatype {
            DataType::Bool => write!(out, "{}", b[0] != 0),
            DataType::Fp32 => {
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if x.is_finite() {
                    write!(out, "{x}")
                } else {
                    write!(out, "null")
                }
            }
            DataType::Fp64 => {
                let x = f64::from_le_bytes(arr8);
                if x.is_finite() {
                    write!(out, "{x}")
                } else {
                    write!(out, "null")
                }
            }
            DataType::Int8 => write!(out, "{}", i8::from_le_bytes([b[0]])),
            DataType::Int16 => write!(out, "{}", i16::from_le_bytes([b[0], b[1]])),
            DataType::Int32 => write!(out, "{}", i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DataType::Int64 => write!(out, "{}", i64::from_le_bytes(arr8)),
            DataType::Uint8 => write!(out, "{}", b[0]),
            DataType::Uint16 => write!(out, "{}", u16::from_le_bytes([b[0], b[1]])),
            DataType::Uint32 => write!(out, "{}", u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DataType::Uint64 => write!(out, "{}", u64::from_le_bytes(arr8)),
        };
    }
    out.push(']');
}

/// The little-endian bytes of a JSON tensor's `data` (any serde deserializer of it: the raw
/// text of a request, or a parsed value), checked against its shape as it is read.
///
/// # Errors
/// `InvalidArgument` for an unknown datatype, a value of the wrong type or range, or a count
/// of values the shape does not hold.
pub(crate) fn json_tensor_bytes<'de, D>(name: &str, datatype: &str, shape: &[i64], data: D) -> Result<Vec<u8>, Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::DeserializeSeed as _;
    let datatype = DataType::parse(datatype).map_err(|e| bad(format!("input {name:?}: {e}")))?;
    let Some(want) = elements(shape) else {
        return Err(bad(format!(
            "input {name:?}: shape {shape:?} holds a negative or huge count"
        )));
    };
    // The shape's bytes, unless that is a claim the data cannot back (then grown as read).
    let mut out = Vec::with_capacity(want.saturating_mul(datatype.size()).min(1 << 20));
    let mut flatten = Flatten {
        name,
        datatype,
        limit: want,
        out: &mut out,
    };
    (&mut flatten).deserialize(data).map_err(|e| {
        let text = e.to_string();
        // serde_json appends where it stopped; the message names the input already.
        bad(text.split(" at line ").next().unwrap_or(&text).to_string())
    })?;
    let got = out.len() / datatype.size();
    if got != want {
        return Err(bad(format!(
            "input {name:?}: data has {got} values, shape {shape:?} holds {want}"
        )));
    }
    Ok(out)
}

/// Little-endian `datatype` bytes as a flat JSON array (empty for an unknown datatype).
pub(crate) fn bytes_json(datatype: &str, bytes: &[u8]) -> Value {
    let Ok(d) = DataType::parse(datatype) else {
        return Value::Array(Vec::new());
    };
    let mut text = String::new();
    decode_json(d, bytes, &mut text);
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn elements(shape: &[i64]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

/// The gRPC request of an HTTP infer body, and which outputs go back as binary data.
fn parse_infer(
    name: String,
    version: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(pb::ModelInferRequest, BinaryOutputs, Option<Instant>), Error> {
    let (head, mut binary) = match headers.get(HEADER_LENGTH) {
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad(format!("{HEADER_LENGTH} must be a byte count")))?;
            if n > body.len() {
                return Err(bad(format!(
                    "{HEADER_LENGTH} is {n}, longer than the {}-byte body",
                    body.len()
                )));
            }
            body.split_at(n)
        }
        None => (body, &[][..]),
    };
    let req: InferRequest = serde_json::from_slice(head).map_err(|e| bad(format!("invalid inference request: {e}")))?;
    let mut parameters = HashMap::new();
    let mut deadline = None;
    for (k, v) in &req.parameters {
        if k == "binary_data_output" {
            continue;
        }
        if k == "timeout" {
            // Triton's request timeout, in microseconds.
            let us = v
                .as_u64()
                .ok_or_else(|| bad("parameter \"timeout\" is a whole number of microseconds"))?;
            deadline = Some(Instant::now() + Duration::from_micros(us));
        }
        parameters.insert(k.clone(), parameter(k, v)?);
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    let mut raw = Vec::with_capacity(req.inputs.len());
    for t in req.inputs {
        let size = match t.parameters.get("binary_data_size") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad(format!("input {:?}: binary_data_size must be a byte count", t.name)))?,
            ),
        };
        let bytes = match (size, &t.data) {
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "input {:?} has both data and binary_data_size; send one",
                    t.name
                )));
            }
            (Some(n), None) => {
                if n > binary.len() {
                    return Err(bad(format!(
                        "input {:?}: binary_data_size {n} is more than the {} bytes left after the JSON header",
                        t.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                mine.to_vec()
            }
            (None, Some(data)) => {
                let mut text = serde_json::Deserializer::from_str(data.get());
                json_tensor_bytes(&t.name, &t.datatype, &t.shape, &mut text)?
            }
            (None, None) => return Err(bad(format!("input {:?} has no data", t.name))),
        };
        raw.push(bytes);
        inputs.push(pb::model_infer_request::InferInputTensor {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
            ..Default::default()
        });
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data are left over after the inputs' binary_data_size",
            binary.len()
        )));
    }
    let all_binary = flag(&req.parameters, "binary_data_output")?.unwrap_or(false);
    let mut outputs = Vec::with_capacity(req.outputs.len());
    let mut binary_outputs = Vec::with_capacity(req.outputs.len());
    for o in req.outputs {
        binary_outputs.push((
            o.name.clone(),
            flag(&o.parameters, "binary_data")?.unwrap_or(all_binary),
        ));
        outputs.push(pb::model_infer_request::InferRequestedOutputTensor {
            name: o.name,
            parameters: HashMap::new(),
        });
    }
    let request = pb::ModelInferRequest {
        model_name: name,
        model_version: version,
        id: req.id,
        parameters,
        inputs,
        outputs,
        raw_input_contents: raw,
    };
    Ok((
        request,
        BinaryOutputs {
            all: all_binary,
            named: binary_outputs,
        },
        deadline,
    ))
}

/// Which outputs go back as binary data: those requested with `binary_data`, or all with
/// the request's `binary_data_output`.
#[derive(Debug)]
struct BinaryOutputs {
    all: bool,
    named: Vec<(String, bool)>,
}

impl BinaryOutputs {
    fn wants(&self, name: &str) -> bool {
        self.named.iter().find(|(n, _)| n == name).map_or(self.all, |(_, b)| *b)
    }
}

async fn infer(
    State(s): State<HttpState>,
    Path(params): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return json_error(e.status(), &e.body_text()),
    };
    let (name, version) = name_version(&params);
    // A big body is parsed on the blocking pool: parsing tens of megabytes of JSON on the
    // runtime's thread would stall every other client's requests meanwhile.
    let parsed = if body.len() > BIG_BODY {
        match tokio::task::spawn_blocking(move || parse_infer(name, version, &headers, &body)).await {
            Ok(r) => r,
            Err(e) => Err(Error::internal(format!("parsing an infer request: {e}"))),
        }
    } else {
        parse_infer(name, version, &headers, &body)
    };
    let (request, binary, deadline) = match parsed {
        Ok(r) => r,
        Err(e) => return super::error::oip_error(e),
    };
    match s.kserve.infer(request, deadline).await {
        Ok(response) => infer_response(response, &binary),
        Err(e) => super::error::oip_error(e),
    }
}

fn infer_response(r: pb::ModelInferResponse, binary: &BinaryOutputs) -> Response {
    let mut head = String::with_capacity(256);
    let mut tail: Vec<u8> = Vec::new();
    head.push_str("{\"model_name\":");
    head.push_str(&Value::from(r.model_name.as_str()).to_string());
    head.push_str(",\"model_version\":");
    head.push_str(&Value::from(r.model_version.as_str()).to_string());
    if !r.id.is_empty() {
        head.push_str(",\"id\":");
        head.push_str(&Value::from(r.id.as_str()).to_string());
    }
    let mut parameters = Map::new();
    for (k, p) in &r.parameters {
        use pb::infer_parameter::ParameterChoice as P;
        let v = match &p.parameter_choice {
            Some(P::StringParam(s)) => json!(s),
            Some(P::Int64Param(i)) => json!(i),
            Some(P::Uint64Param(u)) => json!(u),
            Some(P::BoolParam(b)) => json!(b),
            Some(P::DoubleParam(d)) => json!(d),
            None => continue,
        };
        parameters.insert(k.clone(), v);
    }
    head.push_str(",\"parameters\":");
    head.push_str(&Value::Object(parameters).to_string());
    head.push_str(",\"outputs\":[");
    for (i, o) in r.outputs.iter().enumerate() {
        if i > 0 {
            head.push(',');
        }
        let bytes = r.raw_output_contents.get(i).map_or(&[][..], Vec::as_slice);
        let _ = write!(
            head,
            "{{\"name\":{},\"datatype\":{},\"shape\":{}",
            Value::from(o.name.as_str()),
            Value::from(o.datatype.as_str()),
            Value::from(o.shape.clone())
        );
        if binary.wants(&o.name) {
            let _ = write!(head, ",\"parameters\":{{\"binary_data_size\":{}}}}}", bytes.len());
            tail.extend_from_slice(bytes);
        } else {
            head.push_str(",\"data\":");
            match DataType::parse(&o.datatype) {
                Ok(d) => decode_json(d, bytes, &mut head),
                Err(_) => head.push_str("[]"),
            }
            head.push('}');
        }
    }
    head.push_str("]}");
    if tail.is_empty() {
        return json_ok(head);
    }
    let length = head.len();
    let mut body = head.into_bytes();
    body.extend_from_slice(&tail);
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&length.to_string()) {
        h.insert(HEADER_LENGTH, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_encode_and_decode_by_datatype() {
        let out = json_tensor_bytes("x", "FP32", &[2, 2], json!([[1.5, -2], [0.1, 3]])).unwrap();
        let mut text = String::new();
        decode_json(DataType::Fp32, &out, &mut text);
        assert_eq!(text, "[1.5,-2,0.1,3]");
        let out = json_tensor_bytes("x", "BOOL", &[2], json!([true, false])).unwrap();
        assert_eq!(out, vec![1, 0]);
        let mut raw = serde_json::Deserializer::from_str("[-5, 7]");
        let out = json_tensor_bytes("x", "INT64", &[2], &mut raw).unwrap();
        let mut text = String::new();
        decode_json(DataType::Int64, &out, &mut text);
        assert_eq!(text, "[-5,7]");
        for (d, v) in [
            ("INT8", json!(300)),
            ("UINT8", json!(-1)),
            ("INT32", json!(1.5)),
            ("BOOL", json!(1)),
            ("FP32", json!("1")),
            ("FP32", json!(null)),
        ] {
            let e = json_tensor_bytes("x", d, &[1], json!([v])).unwrap_err();
            assert!(e.to_string().contains("is not a"), "{e}");
        }
        let mut text = String::new();
        decode_json(DataType::Fp32, &f32::NAN.to_le_bytes(), &mut text);
        assert_eq!(text, "[null]");
    }

    #[test]
    fn json_data_stops_at_the_first_value_its_shape_does_not_hold() {
        let long = format!("[{}0]", "0,".repeat(1_000_000));
        let mut raw = serde_json::Deserializer::from_str(&long);
        let e = json_tensor_bytes("x", "FP32", &[1, 64], &mut raw).unwrap_err();
        assert!(e.to_string().contains("more values than its shape holds (64)"), "{e}");
        let e = json_tensor_bytes("x", "FP32", &[1, 3], json!([1, 2])).unwrap_err();
        assert!(e.to_string().contains("data has 2 values, shape [1, 3] holds 3"), "{e}");
        let e = json_tensor_bytes("x", "FP32", &[-1, 3], json!([1, 2])).unwrap_err();
        assert!(e.to_string().contains("negative or huge"), "{e}");
    }

    #[test]
    fn the_binary_extension_splits_the_body_by_its_header() {
        let head = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&1f32.to_le_bytes());
        body.extend_from_slice(&2f32.to_le_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(head.len()));
        let (req, binary, _) = parse_infer("m".into(), String::new(), &headers, &body).unwrap();
        assert_eq!(req.raw_input_contents, vec![body[head.len()..].to_vec()]);
        assert!(binary.wants("y") && !binary.wants("z"));
        // Too long a header, bytes left over, both data and binary: refused.
        headers.insert(HEADER_LENGTH, HeaderValue::from(body.len() + 1));
        assert!(parse_infer("m".into(), String::new(), &headers, &body).is_err());
        headers.insert(HEADER_LENGTH, HeaderValue::from(head.len()));
        let mut longer = body.clone();
        longer.push(0);
        let e = parse_infer("m".into(), String::new(), &headers, &longer).unwrap_err();
        assert!(e.to_string().contains("left over"), "{e}");
    }
}
