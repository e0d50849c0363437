//! `inference.GRPCInferenceService`: the Open Inference Protocol (KServe v2) as Triton serves
//! it, on the same port, registry, slot and request path as `modeld.v1` (one validation and
//! execution path for both APIs: [`crate::ops::Inference::infer`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Instant;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::kserve_pb as pb;
use crate::error::{Error, Result};
use crate::model::{DataType, EngineKind, Signature};
use crate::ops::{ACTIVE_ALIAS, Activation, Catalogue, Inference, Services};
use crate::registry::name::{is_active_alias, nfc, quoted};
use crate::registry::{ActivationMeta, ModelRecord, ModelRef, Order};
use crate::serving::{ExecutorConfig, InputRef, OutputData, OutputTensor, Payload};

/// `max_batch_size` reported for models with a batch dimension: the largest batch of the bundled
/// CNN (3x224x224 FP32) that fits the default 64 MiB message limit is 110; 64 leaves headroom.
pub const MAX_BATCH_SIZE: i32 = 64;
/// Requests of one ModelStreamInfer stream computed at once. The stream reads no further request
/// until the oldest of them is answered, so a client cannot queue unbounded work on one stream.
pub const STREAM_IN_FLIGHT: usize = 32;

/// The Open Inference Protocol service.
#[derive(Debug, Clone)]
pub struct KServeService {
    inference: Inference,
    catalogue: Catalogue,
    /// RepositoryModelLoad activates.
    activation: Activation,
}

impl KServeService {
    /// Serves with `services`.
    pub fn new(services: &Services) -> Self {
        Self {
            inference: services.inference.clone(),
            catalogue: services.catalogue.clone(),
            activation: services.activation.clone(),
        }
    }

    /// The registry record a protocol model name refers to. The served model (by the alias or
    /// its own name) comes from memory, so metadata, config and readiness of what this server
    /// serves answer while the registry is unreachable; any other model from the registry.
    async fn record(&self, name: &str) -> Result<ModelRecord> {
        if let Some(served) = self.catalogue.served()
            && (is_active_alias(name) || served.record.model_name == nfc(name))
        {
            return Ok(served.record.clone());
        }
        if is_active_alias(name) {
            return self
                .catalogue
                .reachable()?
                .active()
                .await?
                .ok_or_else(|| Error::Unavailable("no model is active".into()));
        }
        self.catalogue
            .reachable()?
            .get(&ModelRef::Name(name.to_string()))
            .await
            .map_err(unknown_model)
    }

    /// One inference, for gRPC and the REST binding alike.
    pub(crate) async fn infer(
        &self,
        req: pb::ModelInferRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::ModelInferResponse> {
        let pb::ModelInferRequest {
            model_name,
            model_version,
            id,
            parameters,
            inputs,
            outputs,
            raw_input_contents,
        } = req;
        // modeld's routing key travels as a request parameter (the protocol has no field).
        let routing_key = match parameters.get("routing_key").and_then(|p| p.parameter_choice.as_ref()) {
            None => String::new(),
            Some(pb::infer_parameter::ParameterChoice::StringParam(k)) => k.clone(),
            Some(pb::infer_parameter::ParameterChoice::Int64Param(k)) => k.to_string(),
            Some(pb::infer_parameter::ParameterChoice::Uint64Param(k)) => k.to_string(),
            Some(_) => {
                return Err(Error::InvalidArgument(
                    "the routing_key parameter is a string (or an integer)".into(),
                ));
            }
        };
        // Triton's request timeout, in microseconds, on both transports: the earlier of it and
        // the call's own deadline.
        let timeout = match parameters.get("timeout").and_then(|p| p.parameter_choice.as_ref()) {
            None => None,
            Some(pb::infer_parameter::ParameterChoice::Int64Param(us)) if *us >= 0 => Some(us.unsigned_abs()),
            Some(pb::infer_parameter::ParameterChoice::Uint64Param(us)) => Some(*us),
            Some(_) => {
                return Err(Error::InvalidArgument(
                    "parameter \"timeout\" is a whole number of microseconds, 0 or more".into(),
                ));
            }
        };
        let deadline = match timeout.map(|us| Instant::now() + std::time::Duration::from_micros(us)) {
            Some(t) => Some(deadline.map_or(t, |d| d.min(t))),
            None => deadline,
        };
        let raw = !raw_input_contents.is_empty();
        if raw && raw_input_contents.len() != inputs.len() {
            return Err(Error::InvalidArgument(format!(
                "raw_input_contents has {} entries for {} inputs; send one per input, in order",
                raw_input_contents.len(),
                inputs.len()
            )));
        }
        let refs = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let payload = if raw {
                    Payload::Raw(&raw_input_contents[i])
                } else {
                    contents(&t.name, t.contents.as_ref())?
                };
                Ok(InputRef {
                    name: &t.name,
                    datatype: &t.datatype,
                    shape: &t.shape,
                    payload,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The model is resolved once: the version and output checks and the computation all
        // see the same one, whatever swaps meanwhile. They are checked before computing, so a
        // bad request is a failure, not a wasted inference.
        let route = self
            .inference
            .route(&model_name, &routing_key, deadline)
            .await
            .map_err(unknown_model)?;
        let role = route.role;
        {
            let model = &route.model;
            let record = &model.record;
            if !model_version.is_empty() && model_version != record.version {
                return Err(Error::NotFound(format!(
                    "{UNKNOWN_MODEL}version {} of model {} is not served; the served version is {}",
                    quoted(&model_version),
                    quoted(&record.model_name),
                    quoted(&record.version)
                )));
            }
            for (i, o) in outputs.iter().enumerate() {
                if !model.model.signature.outputs.iter().any(|s| s.name == o.name)
                    || outputs[..i].iter().any(|p| p.name == o.name)
                {
                    return Err(Error::InvalidArgument(format!(
                        "model {} has no output {:?} (or it was requested twice)",
                        quoted(&record.model_name),
                        o.name
                    )));
                }
            }
        }
        // Outputs are always raw_output_contents, as Triton answers, whatever form the inputs
        // came in: Triton's clients read `raw_output_contents[i]` (and the REST binding
        // writes its JSON from the same bytes).
        let done = self.inference.infer(route, &refs, true, deadline).await?;
        let record = &done.model.record;
        let mut produced = done.outputs;
        if !outputs.is_empty() {
            let mut by_name: HashMap<String, OutputTensor> =
                produced.into_iter().map(|o| (o.name.clone(), o)).collect();
            produced = outputs
                .iter()
                .map(|o| {
                    by_name.remove(&o.name).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "model {} has no output {:?} (or it was requested twice)",
                            quoted(&record.model_name),
                            o.name
                        ))
                    })
                })
                .collect::<Result<_>>()?;
        }
        let mut response = pb::ModelInferResponse {
            model_name: record.model_name.clone(),
            model_version: record.version.clone(),
            id,
            ..Default::default()
        };
        // Which model served it and why, as response parameters (the protocol's own way).
        let text = |s: String| pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(s)),
        };
        response.parameters.insert("role".into(), text(role.name().into()));
        response.parameters.insert(
            "model_id".into(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(record.model_id)),
            },
        );
        for o in produced {
            let OutputTensor {
                name,
                datatype,
                shape,
                data,
            } = o;
            let tensor = pb::model_infer_response::InferOutputTensor {
                name,
                datatype: datatype.name().into(),
                shape,
                ..Default::default()
            };
            match data {
                OutputData::Raw(bytes) => response.raw_output_contents.push(bytes),
                _ => {
                    return Err(Error::internal(format!(
                        "output {:?} came back as typed values, not the raw bytes asked for",
                        tensor.name
                    )));
                }
            }
            response.outputs.push(tensor);
        }
        Ok(response)
    }
}

/// The typed contents of an input, matched to the payload kinds the request path accepts.
fn contents<'a>(name: &str, c: Option<&'a pb::InferTensorContents>) -> Result<Payload<'a>> {
    let Some(c) = c else { return Ok(Payload::Raw(&[])) };
    let pb::InferTensorContents {
        bool_contents,
        int_contents,
        int64_contents,
        uint_contents,
        uint64_contents,
        fp32_contents,
        fp64_contents,
        bytes_contents,
    } = c;
    if !bytes_contents.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "input {name:?}: BYTES tensors are not supported"
        )));
    }
    Payload::only_one(
        name,
        [
            Payload::Bool(bool_contents),
            Payload::Int32(int_contents),
            Payload::Int64(int64_contents),
            Payload::Uint32(uint_contents),
            Payload::Uint64(uint64_contents),
            Payload::Fp32(fp32_contents),
            Payload::Fp64(fp64_contents),
        ],
    )
}

fn config_type(d: DataType) -> pb::DataType {
    match d {
        DataType::Fp32 => pb::DataType::TypeFp32,
        DataType::Fp64 => pb::DataType::TypeFp64,
        DataType::Int8 => pb::DataType::TypeInt8,
        DataType::Int16 => pb::DataType::TypeInt16,
        DataType::Int32 => pb::DataType::TypeInt32,
        DataType::Int64 => pb::DataType::TypeInt64,
        DataType::Uint8 => pb::DataType::TypeUint8,
        DataType::Uint16 => pb::DataType::TypeUint16,
        DataType::Uint32 => pb::DataType::TypeUint32,
        DataType::Uint64 => pb::DataType::TypeUint64,
        DataType::Bool => pb::DataType::TypeBool,
    }
}

/// Whether every input and output has a leading dynamic (batch) dimension.
fn batched(sig: &Signature) -> bool {
    sig.inputs.iter().chain(&sig.outputs).all(|t| t.has_batch_dim())
}

fn model_config(
    requested: &str,
    record: &ModelRecord,
    computed_by: EngineKind,
    engine: Option<&ExecutorConfig>,
) -> Result<pb::ModelConfig> {
    let sig = record.signature()?;
    let batch = batched(&sig);
    let dims = |shape: &[i64]| if batch { shape[1..].to_vec() } else { shape.to_vec() };
    Ok(pb::ModelConfig {
        name: requested.to_string(),
        // Honest about the engine: Triton's names where Triton has one.
        platform: computed_by.platform().into(),
        backend: computed_by.name().into(),
        max_batch_size: if batch { MAX_BATCH_SIZE } else { 0 },
        input: sig
            .inputs
            .iter()
            .map(|t| pb::ModelInput {
                name: t.name.clone(),
                data_type: config_type(t.datatype).into(),
                dims: dims(&t.shape),
                ..Default::default()
            })
            .collect(),
        output: sig
            .outputs
            .iter()
            .map(|t| pb::ModelOutput {
                name: t.name.clone(),
                data_type: config_type(t.datatype).into(),
                dims: dims(&t.shape),
                ..Default::default()
            })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: record.model_name.clone(),
            count: engine.map_or(1, |e| i32::try_from(e.threads).unwrap_or(i32::MAX)),
            kind: pb::model_instance_group::Kind::Cpu.into(),
        }],
        default_model_filename: record.file_path.clone(),
        // The server-wide batching settings, as Triton states them per model.
        scheduling_choice: engine.filter(|e| batch && e.max_batch_size > 1).map(|e| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: Vec::new(),
                max_queue_delay_microseconds: e.max_queue_delay.as_micros() as u64,
                preserve_ordering: false,
            })
        }),
        ..Default::default()
    })
}

/// How Triton begins the answer for a model (or version) it does not have; Triton's own
/// clients and examples look for these words, so both OIP transports begin with them and
/// go on with modeld's explanation.
const UNKNOWN_MODEL: &str = "Request for unknown model: ";

/// A model that is not registered, in Triton's words first.
fn unknown_model(e: Error) -> Error {
    match e {
        Error::NotFound(m) if !m.starts_with(UNKNOWN_MODEL) => Error::NotFound(format!("{UNKNOWN_MODEL}{m}")),
        e => e,
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for KServeService {
    async fn server_live(&self, _r: Request<pb::ServerLiveRequest>) -> Reply<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _r: Request<pb::ServerReadyRequest>) -> Reply<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.catalogue.served().is_some(),
        }))
    }

    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Reply<pb::ModelReadyResponse> {
        let pb::ModelReadyRequest { name, version } = r.into_inner();
        let served = self.catalogue.served();
        let ready = if name.is_empty() || name == ACTIVE_ALIAS {
            served.is_some_and(|s| version.is_empty() || s.record.version == version)
        } else {
            let record = self.record(&name).await?;
            // Served, or a candidate loaded in the cache (an uncached one loads on its first
            // request, and is not ready until then).
            let loaded = served.is_some_and(|s| s.record.model_id == record.model_id)
                || self
                    .catalogue
                    .cached_candidates()
                    .iter()
                    .any(|c| c.model_id == record.model_id && c.bytes.is_some());
            loaded && (version.is_empty() || record.version == version)
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _r: Request<pb::ServerMetadataRequest>) -> Reply<pb::ServerMetadataResponse> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "modeld".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: ["model_repository", "model_configuration", "statistics"]
                .map(String::from)
                .to_vec(),
        }))
    }

    async fn model_metadata(&self, r: Request<pb::ModelMetadataRequest>) -> Reply<pb::ModelMetadataResponse> {
        let pb::ModelMetadataRequest { name, version: _ } = r.into_inner();
        let record = self.record(&name).await?;
        let sig = record.signature()?;
        let meta = |t: &crate::model::TensorSpec| pb::model_metadata_response::TensorMetadata {
            name: t.name.clone(),
            datatype: t.datatype.name().into(),
            shape: t.shape.clone(),
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            // The alias is echoed, so load tools keep addressing `active` across swaps.
            name: if name == ACTIVE_ALIAS {
                name
            } else {
                record.model_name.clone()
            },
            versions: vec![record.version.clone()],
            platform: self.catalogue.engine_for(&record).platform().into(),
            inputs: sig.inputs.iter().map(meta).collect(),
            outputs: sig.outputs.iter().map(meta).collect(),
        }))
    }

    #[tracing::instrument(name = "model_infer", skip_all, fields(model = %r.get_ref().model_name))]
    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Reply<pb::ModelInferResponse> {
        let deadline = super::deadline(r.metadata());
        Ok(Response::new(self.infer(r.into_inner(), deadline).await?))
    }

    type ModelStreamInferStream =
        Pin<Box<dyn Stream<Item = std::result::Result<pb::ModelStreamInferResponse, Status>> + Send>>;

    async fn model_stream_infer(
        &self,
        r: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Reply<Self::ModelStreamInferStream> {
        let deadline = super::deadline(r.metadata());
        let this = self.clone();
        // Up to STREAM_IN_FLIGHT requests of one stream are computed at once (so they can share
        // a batch); their responses still go out in the order the requests came in, as Triton
        // answers a stream for a model that is not decoupled.
        let computing = tokio_stream::StreamExt::map(r.into_inner(), move |next| {
            let this = this.clone();
            async move {
                let req = next?;
                let id = req.id.clone();
                // The stream's deadline bounds every request in it.
                Ok(match this.infer(req, deadline).await {
                    Ok(resp) => pb::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(resp),
                    },
                    // Errors are answered in-stream (as Triton does); the stream goes on.
                    Err(e) => pb::ModelStreamInferResponse {
                        error_message: Status::from(e).message().to_string(),
                        infer_response: Some(pb::ModelInferResponse {
                            id,
                            ..Default::default()
                        }),
                    },
                })
            }
        });
        let replies = futures_util::StreamExt::buffered(computing, STREAM_IN_FLIGHT);
        Ok(Response::new(Box::pin(replies)))
    }

    async fn model_config(&self, r: Request<pb::ModelConfigRequest>) -> Reply<pb::ModelConfigResponse> {
        let pb::ModelConfigRequest { name, version: _ } = r.into_inner();
        let record = self.record(&name).await?;
        let shown = if name.is_empty() {
            record.model_name.clone()
        } else {
            name
        };
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(model_config(
                &shown,
                &record,
                self.catalogue.engine_for(&record),
                self.inference.executor().map(|(e, _)| e.config()).as_ref(),
            )?),
        }))
    }

    async fn model_statistics(&self, r: Request<pb::ModelStatisticsRequest>) -> Reply<pb::ModelStatisticsResponse> {
        let pb::ModelStatisticsRequest { name, version } = r.into_inner();
        let all = self.inference.stats();
        let wanted = if name.is_empty() {
            None
        } else {
            Some(self.record(&name).await?)
        };
        let mut model_stats: Vec<pb::ModelStatistics> = all
            .iter()
            .filter(|s| wanted.as_ref().is_none_or(|w| w.model_name == s.name))
            .filter(|s| version.is_empty() || s.version == version)
            .map(|s| {
                let d = |t: crate::serving::stats::Tally| {
                    Some(pb::StatisticDuration {
                        count: t.count,
                        ns: t.ns,
                    })
                };
                pb::ModelStatistics {
                    name: s.name.clone(),
                    version: s.version.clone(),
                    last_inference: s.last_inference_ms,
                    inference_count: s.inference_count,
                    execution_count: s.execution_count,
                    inference_stats: Some(pb::InferStatistics {
                        success: d(s.success),
                        fail: d(s.fail),
                        queue: d(s.queue),
                        compute_input: d(s.compute_input),
                        compute_infer: d(s.compute_infer),
                        compute_output: d(s.compute_output),
                        cache_hit: d(Default::default()),
                        cache_miss: d(Default::default()),
                        server_overhead: d(crate::serving::stats::Tally {
                            count: s.success.count,
                            ns: s.overhead_ns(),
                        }),
                    }),
                    batch_stats: s
                        .batches
                        .iter()
                        .map(|(&batch_size, b)| pb::InferBatchStatistics {
                            batch_size,
                            compute_input: d(b.compute_input),
                            compute_infer: d(b.compute_infer),
                            compute_output: d(b.compute_output),
                        })
                        .collect(),
                    engine: s.engine.into(),
                }
            })
            .collect();
        // Asked for by the alias: answer under the alias (load tools match the name they used).
        if name == ACTIVE_ALIAS {
            for m in &mut model_stats {
                m.name = name.clone();
            }
        }
        // A registered model that has not served yet still has (zero) statistics.
        if let Some(w) = wanted
            && model_stats.is_empty()
        {
            let zero = Some(pb::StatisticDuration::default());
            model_stats.push(pb::ModelStatistics {
                name: if name == ACTIVE_ALIAS {
                    name.clone()
                } else {
                    w.model_name
                },
                version: w.version,
                inference_stats: Some(pb::InferStatistics {
                    success: zero,
                    fail: zero,
                    queue: zero,
                    compute_input: zero,
                    compute_infer: zero,
                    compute_output: zero,
                    cache_hit: zero,
                    cache_miss: zero,
                    server_overhead: zero,
                }),
                ..Default::default()
            });
        }
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(&self, r: Request<pb::RepositoryIndexRequest>) -> Reply<pb::RepositoryIndexResponse> {
        let pb::RepositoryIndexRequest {
            repository_name: _,
            ready,
        } = r.into_inner();
        let served = self.catalogue.served();
        let cached = self.catalogue.cached_candidates();
        let models = self.catalogue.list(Order::Name, false, i64::MAX, 0).await?;
        let models = models
            .into_iter()
            .map(|m| {
                let is_served = served.as_ref().is_some_and(|s| s.record.model_id == m.model_id);
                let is_cached = cached.iter().any(|c| c.model_id == m.model_id && c.bytes.is_some());
                let (state, reason) = match (is_served, m.is_active, is_cached) {
                    (true, ..) => ("READY", String::new()),
                    (false, true, _) => (
                        "UNAVAILABLE",
                        "active in the registry but not loaded on this server (see GetServerStatus)".into(),
                    ),
                    (false, false, true) => ("READY", "a candidate, loaded because a request named it".into()),
                    (false, false, false) => (
                        "UNAVAILABLE",
                        "registered, not active; a request by its name loads it as a candidate".into(),
                    ),
                };
                pb::repository_index_response::ModelIndex {
                    name: m.model_name,
                    version: m.version,
                    state: state.into(),
                    reason,
                }
            })
            .filter(|m| !ready || m.state == "READY")
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Reply<pb::RepositoryModelLoadResponse> {
        let pb::RepositoryModelLoadRequest {
            repository_name: _,
            model_name,
            parameters: _,
        } = r.into_inner();
        let meta = ActivationMeta {
            activated_by: "kserve".into(),
            reason: "RepositoryModelLoad".into(),
            is_rollback: false,
        };
        // Triton's load_model has no way to say "yes, change the signature": the guard holds.
        self.activation
            .activate(&ModelRef::Name(model_name), &meta, &crate::ops::Gates::default())
            .await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Reply<pb::RepositoryModelUnloadResponse> {
        let pb::RepositoryModelUnloadRequest {
            repository_name: _,
            model_name,
            parameters: _,
        } = r.into_inner();
        let record = self.record(&model_name).await?;
        if record.is_active {
            return Err(Error::FailedPrecondition(format!(
                "model {} is the active model and cannot be unloaded; load (activate) another model instead",
                quoted(&record.model_name)
            ))
            .into());
        }
        // Only the active model is ever loaded: any other is already unloaded.
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}
