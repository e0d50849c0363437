//! The Open Inference Protocol's REST binding (KServe v2, as Triton serves it over HTTP):
//! health, server and model metadata, model config, readiness, statistics, the repository
//! extension and `infer` with JSON tensors or the binary tensor data extension
//! (`Inference-Header-Content-Length`). Each route turns its JSON into the protocol's plain
//! types ([`crate::oip`]) and back, as the gRPC binding does from protobuf, so both transports
//! route, validate and fail alike.
//!
//! Model names are path segments: percent-encode what a URL cannot carry (`my%20model`).

use std::fmt::Write as _;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::{oip_error, oip_status};
use super::tensor_json::{decode_json, json_tensor_bytes};
use super::{HttpState, json_ok};
use crate::error::Error;
use crate::model::{DataType, TensorSpec};
use crate::oip::{self, Param};
use crate::serving::stats::Tally;
use crate::serving::{InputRef, OutputData, Payload};

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

async fn live() -> Response {
    StatusCode::OK.into_response()
}

async fn ready(State(s): State<HttpState>) -> Response {
    if s.oip.server_ready() {
        StatusCode::OK.into_response()
    } else {
        // The protocol: 200 means ready, a 4xx status means not.
        oip_status(StatusCode::BAD_REQUEST, "no model is loaded yet")
    }
}

async fn model_ready(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (name, version) = name_version(&params);
    match s.oip.model_ready(&name, &version).await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => oip_status(StatusCode::BAD_REQUEST, "the model is not loaded on this server"),
        Err(e) => oip_error(e),
    }
}

async fn server_metadata() -> Response {
    json_ok(json!({"name": "modeld", "version": env!("CARGO_PKG_VERSION"), "extensions": oip::EXTENSIONS}).to_string())
}

fn tensors(ts: &[TensorSpec]) -> Vec<Value> {
    ts.iter()
        .map(|t| json!({"name": t.name, "datatype": t.datatype.name(), "shape": t.shape}))
        .collect()
}

async fn metadata(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (name, _) = name_version(&params);
    match s.oip.model_metadata(&name).await {
        Ok(m) => json_ok(
            json!({
                "name": m.name,
                "versions": m.versions,
                "platform": m.platform,
                "inputs": tensors(&m.inputs),
                "outputs": tensors(&m.outputs),
            })
            .to_string(),
        ),
        Err(e) => oip_error(e),
    }
}

async fn config(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (name, _) = name_version(&params);
    match s.oip.model_config(&name).await {
        Ok(c) => json_ok(config_json(&c).to_string()),
        Err(e) => oip_error(e),
    }
}

/// Triton's name of a config's data type.
fn config_type(d: DataType) -> &'static str {
    match d {
        DataType::Fp32 => "TYPE_FP32",
        DataType::Fp64 => "TYPE_FP64",
        DataType::Int8 => "TYPE_INT8",
        DataType::Int16 => "TYPE_INT16",
        DataType::Int32 => "TYPE_INT32",
        DataType::Int64 => "TYPE_INT64",
        DataType::Uint8 => "TYPE_UINT8",
        DataType::Uint16 => "TYPE_UINT16",
        DataType::Uint32 => "TYPE_UINT32",
        DataType::Uint64 => "TYPE_UINT64",
        DataType::Bool => "TYPE_BOOL",
    }
}

/// A model config as Triton's HTTP endpoint prints it (the protobuf field names, enums by
/// name).
fn config_json(c: &oip::ModelConfig) -> Value {
    let mut out = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.inputs.iter().map(|t| json!({
            "name": t.name, "data_type": config_type(t.datatype), "format": "FORMAT_NONE", "dims": t.shape,
        })).collect::<Vec<_>>(),
        "output": c.outputs.iter().map(|t| json!({
            "name": t.name, "data_type": config_type(t.datatype), "dims": t.shape,
        })).collect::<Vec<_>>(),
        "instance_group": [{"name": c.instance_group, "count": c.instances, "kind": "KIND_CPU"}],
        "default_model_filename": c.default_model_filename,
    });
    if let Some(delay) = c.max_queue_delay {
        out["dynamic_batching"] = json!({
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": delay.as_micros() as u64,
            "preserve_ordering": false,
        });
    }
    out
}

async fn stats(State(s): State<HttpState>, params: Option<Params>) -> Response {
    let (name, version) = params.map_or_else(Default::default, |Path(p)| name_version(&p));
    match s.oip.statistics(&name, &version).await {
        Ok(stats) => {
            let d = |t: Tally| json!({"count": t.count, "ns": t.ns});
            let models: Vec<Value> = stats
                .iter()
                .map(|m| {
                    json!({
                        "name": m.name,
                        "version": m.version,
                        "last_inference": m.last_inference_ms,
                        "inference_count": m.inference_count,
                        "execution_count": m.execution_count,
                        "inference_stats": {
                            "success": d(m.success), "fail": d(m.fail), "queue": d(m.queue),
                            "compute_input": d(m.compute_input), "compute_infer": d(m.compute_infer),
                            "compute_output": d(m.compute_output), "cache_hit": d(Tally::default()),
                            "cache_miss": d(Tally::default()),
                        },
                        "batch_stats": m.batches.iter().map(|(batch_size, b)| json!({
                            "batch_size": batch_size,
                            "compute_input": d(b.compute_input),
                            "compute_infer": d(b.compute_infer),
                            "compute_output": d(b.compute_output),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json_ok(json!({ "model_stats": models }).to_string())
        }
        Err(e) => oip_error(e),
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
        Err(e) => return oip_status(e.status(), &e.body_text()),
    };
    let req: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return oip_status(
                    StatusCode::BAD_REQUEST,
                    &format!("the request body is not valid JSON: {e}"),
                );
            }
        }
    };
    match s.oip.repository_index(req.ready).await {
        Ok(models) => {
            let models: Vec<Value> = models
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
        Err(e) => oip_error(e),
    }
}

async fn load(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (name, _) = name_version(&params);
    match s.oip.load(&name).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => oip_error(e),
    }
}

async fn unload(State(s): State<HttpState>, Path(params): Params) -> Response {
    let (name, _) = name_version(&params);
    match s.oip.unload(&name).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => oip_error(e),
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

/// A request parameter in the protocol's plain form.
fn parameter<'a>(name: &str, v: &'a Value) -> Result<Param<'a>, Error> {
    Ok(match v {
        Value::Bool(b) => Param::Bool(*b),
        Value::String(s) => Param::Str(s),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), ..) => Param::Int(i),
            (None, Some(u), _) => Param::Uint(u),
            (.., Some(f)) => Param::Double(f),
            _ => return Err(bad(format!("parameter {name:?} is not a number JSON can carry"))),
        },
        _ => {
            return Err(bad(format!(
                "parameter {name:?} must be a string, a number or a boolean"
            )));
        }
    })
}

fn flag(parameters: &Map<String, Value>, name: &str) -> Result<Option<bool>, Error> {
    match parameters.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("parameter {name:?} is a boolean"))),
    }
}

/// An HTTP infer body, read: the tensors' bytes (from JSON or the binary extension), which
/// outputs are asked for and which of them go back as binary data.
#[derive(Debug)]
struct Parsed {
    id: String,
    parameters: Map<String, Value>,
    inputs: Vec<(String, String, Vec<i64>, Vec<u8>)>,
    outputs: Vec<String>,
    binary: BinaryOutputs,
}

impl Parsed {
    /// The protocol's request over these bytes.
    fn request<'a>(&'a self, name: &'a str, version: &'a str) -> Result<oip::InferRequest<'a>, Error> {
        let mut routing_key = None;
        let mut timeout = None;
        for (k, v) in &self.parameters {
            let p = parameter(k, v)?;
            match k.as_str() {
                "routing_key" => routing_key = Some(p),
                "timeout" => timeout = Some(p),
                _ => {}
            }
        }
        Ok(oip::InferRequest {
            model_name: name,
            model_version: version,
            routing_key,
            timeout,
            inputs: self
                .inputs
                .iter()
                .map(|(name, datatype, shape, bytes)| InputRef {
                    name,
                    datatype,
                    shape,
                    payload: Payload::Raw(bytes),
                })
                .collect(),
            outputs: self.outputs.iter().map(String::as_str).collect(),
        })
    }
}

/// Reads an HTTP infer body (JSON, or JSON then binary tensors after
/// `Inference-Header-Content-Length` bytes).
fn parse_infer(headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Error> {
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
    let all_binary = flag(&req.parameters, "binary_data_output")?.unwrap_or(false);
    let mut parameters = req.parameters;
    parameters.remove("binary_data_output");
    for (k, v) in &parameters {
        parameter(k, v)?;
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
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
        inputs.push((t.name, t.datatype, t.shape, bytes));
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data are left over after the inputs' binary_data_size",
            binary.len()
        )));
    }
    let mut outputs = Vec::with_capacity(req.outputs.len());
    let mut binary_outputs = Vec::with_capacity(req.outputs.len());
    for o in req.outputs {
        binary_outputs.push((
            o.name.clone(),
            flag(&o.parameters, "binary_data")?.unwrap_or(all_binary),
        ));
        outputs.push(o.name);
    }
    Ok(Parsed {
        id: req.id,
        parameters,
        inputs,
        outputs,
        binary: BinaryOutputs {
            all: all_binary,
            named: binary_outputs,
        },
    })
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
        Err(e) => return oip_status(e.status(), &e.body_text()),
    };
    let (name, version) = name_version(&params);
    // A big body is parsed on the blocking pool: parsing tens of megabytes of JSON on the
    // runtime's thread would stall every other client's requests meanwhile.
    let parsed = if body.len() > BIG_BODY {
        match tokio::task::spawn_blocking(move || parse_infer(&headers, &body)).await {
            Ok(r) => r,
            Err(e) => Err(Error::internal(format!("parsing an infer request: {e}"))),
        }
    } else {
        parse_infer(&headers, &body)
    };
    let parsed = match parsed {
        Ok(r) => r,
        Err(e) => return oip_error(e),
    };
    let request = match parsed.request(&name, &version) {
        Ok(r) => r,
        Err(e) => return oip_error(e),
    };
    match s.oip.infer(request, None).await {
        Ok(done) => infer_response(&done, &parsed.id, &parsed.binary),
        Err(e) => oip_error(e),
    }
}

fn infer_response(r: &oip::InferResponse, id: &str, binary: &BinaryOutputs) -> Response {
    let record = &r.model.record;
    let mut head = String::with_capacity(256);
    let mut tail: Vec<u8> = Vec::new();
    head.push_str("{\"model_name\":");
    head.push_str(&Value::from(record.model_name.as_str()).to_string());
    head.push_str(",\"model_version\":");
    head.push_str(&Value::from(record.version.as_str()).to_string());
    if !id.is_empty() {
        head.push_str(",\"id\":");
        head.push_str(&Value::from(id).to_string());
    }
    // Which model served it and why, as response parameters (the protocol's own way).
    let _ = write!(
        head,
        ",\"parameters\":{{\"model_id\":{},\"role\":\"{}\"}}",
        record.model_id,
        r.role.name()
    );
    head.push_str(",\"outputs\":[");
    for (i, o) in r.outputs.iter().enumerate() {
        if i > 0 {
            head.push(',');
        }
        let bytes = match &o.data {
            OutputData::Raw(b) => b.as_slice(),
            _ => &[],
        };
        let _ = write!(
            head,
            "{{\"name\":{},\"datatype\":\"{}\",\"shape\":{}",
            Value::from(o.name.as_str()),
            o.datatype.name(),
            Value::from(o.shape.clone())
        );
        if binary.wants(&o.name) {
            let _ = write!(head, ",\"parameters\":{{\"binary_data_size\":{}}}}}", bytes.len());
            tail.extend_from_slice(bytes);
        } else {
            head.push_str(",\"data\":");
            decode_json(o.datatype, bytes, &mut head);
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
    fn the_binary_extension_splits_the_body_by_its_header() {
        let head = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&1f32.to_le_bytes());
        body.extend_from_slice(&2f32.to_le_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(head.len()));
        let parsed = parse_infer(&headers, &body).unwrap();
        assert_eq!(parsed.inputs[0].3, body[head.len()..].to_vec());
        assert!(parsed.binary.wants("y") && !parsed.binary.wants("z"));
        // Too long a header, bytes left over, both data and binary: refused.
        headers.insert(HEADER_LENGTH, HeaderValue::from(body.len() + 1));
        assert!(parse_infer(&headers, &body).is_err());
        headers.insert(HEADER_LENGTH, HeaderValue::from(head.len()));
        let mut longer = body.clone();
        longer.push(0);
        let e = parse_infer(&headers, &longer).unwrap_err();
        assert!(e.to_string().contains("left over"), "{e}");
    }
}
