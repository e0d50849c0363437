//! `inference.GRPCInferenceService`: the Open Inference Protocol (KServe v2) as Triton serves
//! it, on the same port, registry, slot and request path as `modeld.v1`. The protocol's
//! meaning is [`crate::oip`]; the handlers here take its protobuf messages apart and put the
//! answers together (`convert.rs` the conversions), as the REST binding (`http/oip.rs`) does
//! from JSON.

mod convert;

use std::pin::Pin;
use std::time::Instant;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::kserve_pb as pb;
use crate::error::{Error, Result};
use crate::oip::{self, OpenInference};
use crate::ops::Services;
use crate::serving::{InputRef, OutputData, Payload};

/// Requests of one ModelStreamInfer stream computed at once. The stream reads no further request
/// until the oldest of them is answered, so a client cannot queue unbounded work on one stream.
pub const STREAM_IN_FLIGHT: usize = 32;

/// The Open Inference Protocol service.
#[derive(Debug, Clone)]
pub struct KServeService {
    oip: OpenInference,
}

impl KServeService {
    /// Serves with `services`.
    pub fn new(services: &Services) -> Self {
        Self {
            oip: OpenInference::new(services),
        }
    }

    /// One inference.
    async fn infer(&self, req: pb::ModelInferRequest, deadline: Option<Instant>) -> Result<pb::ModelInferResponse> {
        let pb::ModelInferRequest {
            model_name,
            model_version,
            id,
            parameters,
            inputs,
            outputs,
            raw_input_contents,
        } = req;
        let raw = !raw_input_contents.is_empty();
        if raw && raw_input_contents.len() != inputs.len() {
            return Err(Error::InvalidArgument(format!(
                "raw_input_contents has {} entries for {} inputs; send one per input, in order",
                raw_input_contents.len(),
                inputs.len()
            )));
        }
        let inputs = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let payload = if raw {
                    Payload::Raw(&raw_input_contents[i])
                } else {
                    convert::contents(&t.name, t.contents.as_ref())?
                };
                Ok(InputRef {
                    name: &t.name,
                    datatype: &t.datatype,
                    shape: &t.shape,
                    payload,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let request = oip::InferRequest {
            model_name: &model_name,
            model_version: &model_version,
            routing_key: convert::param(&parameters, "routing_key"),
            timeout: convert::param(&parameters, "timeout"),
            inputs,
            outputs: outputs.iter().map(|o| o.name.as_str()).collect(),
        };
        let done = self.oip.infer(request, deadline).await?;
        let record = &done.model.record;
        let mut response = pb::ModelInferResponse {
            model_name: record.model_name.clone(),
            model_version: record.version.clone(),
            id,
            outputs: Vec::with_capacity(done.outputs.len()),
            raw_output_contents: Vec::with_capacity(done.outputs.len()),
            ..Default::default()
        };
        // Which model served it and why, as response parameters (the protocol's own way).
        response.parameters.insert(
            "role".into(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(
                    done.role.name().into(),
                )),
            },
        );
        response.parameters.insert(
            "model_id".into(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(record.model_id)),
            },
        );
        // Outputs are always raw_output_contents, as Triton answers, whatever form the inputs
        // came in: Triton's clients read `raw_output_contents[i]`.
        for o in done.outputs {
            let OutputData::Raw(bytes) = o.data else {
                return Err(Error::internal(format!(
                    "output {:?} came back as typed values, not the raw bytes asked for",
                    o.name
                )));
            };
            response.outputs.push(pb::model_infer_response::InferOutputTensor {
                name: o.name,
                datatype: o.datatype.name().into(),
                shape: o.shape,
                ..Default::default()
            });
            response.raw_output_contents.push(bytes);
        }
        Ok(response)
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
            ready: self.oip.server_ready(),
        }))
    }

    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Reply<pb::ModelReadyResponse> {
        let pb::ModelReadyRequest { name, version } = r.into_inner();
        Ok(Response::new(pb::ModelReadyResponse {
            ready: self.oip.model_ready(&name, &version).await?,
        }))
    }

    async fn server_metadata(&self, _r: Request<pb::ServerMetadataRequest>) -> Reply<pb::ServerMetadataResponse> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "modeld".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: oip::EXTENSIONS.map(String::from).to_vec(),
        }))
    }

    async fn model_metadata(&self, r: Request<pb::ModelMetadataRequest>) -> Reply<pb::ModelMetadataResponse> {
        let pb::ModelMetadataRequest { name, version: _ } = r.into_inner();
        let m = self.oip.model_metadata(&name).await?;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform.into(),
            inputs: m.inputs.into_iter().map(convert::tensor_metadata).collect(),
            outputs: m.outputs.into_iter().map(convert::tensor_metadata).collect(),
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
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(convert::model_config(self.oip.model_config(&name).await?)),
        }))
    }

    async fn model_statistics(&self, r: Request<pb::ModelStatisticsRequest>) -> Reply<pb::ModelStatisticsResponse> {
        let pb::ModelStatisticsRequest { name, version } = r.into_inner();
        let stats = self.oip.statistics(&name, &version).await?;
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: stats.into_iter().map(convert::statistics).collect(),
        }))
    }

    async fn repository_index(&self, r: Request<pb::RepositoryIndexRequest>) -> Reply<pb::RepositoryIndexResponse> {
        let pb::RepositoryIndexRequest {
            repository_name: _,
            ready,
        } = r.into_inner();
        let models = self.oip.repository_index(ready).await?;
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: models.into_iter().map(convert::index_entry).collect(),
        }))
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
        self.oip.load(&model_name).await?;
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
        self.oip.unload(&model_name).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}
