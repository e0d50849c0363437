//! `modeld.v1.Inference`: Predict on the active model.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use crate::error::Result;
use crate::ops::Inference;
use crate::serving::{InputRef, Payload};

/// The Inference service.
#[derive(Debug, Clone)]
pub struct InferenceService {
    inference: Inference,
}

impl InferenceService {
    /// Serves through `inference`.
    pub fn new(inference: Inference) -> Self {
        Self { inference }
    }

    async fn predict_inner(&self, req: pb::PredictRequest, deadline: Option<Instant>) -> Result<pb::PredictResponse> {
        let pb::PredictRequest {
            model_name,
            inputs,
            routing_key,
        } = req;
        let refs = inputs
            .iter()
            .map(|t| {
                Ok(InputRef {
                    name: &t.name,
                    datatype: &t.datatype,
                    shape: &t.shape,
                    payload: convert::payload(t)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Answer in the encoding the request used.
        let raw = refs.first().is_none_or(|r| matches!(r.payload, Payload::Raw(_)));
        let route = self.inference.route(&model_name, &routing_key, deadline).await?;
        let role = route.role;
        let done = self.inference.infer(route, &refs, raw, deadline).await?;
        let record = &done.model.record;
        Ok(pb::PredictResponse {
            model_id: record.model_id,
            model_name: record.model_name.clone(),
            model_version: record.version.clone(),
            outputs: done.outputs.into_iter().map(convert::tensor).collect(),
            role: role.name().into(),
        })
    }
}

#[tonic::async_trait]
impl pb::inference_server::Inference for InferenceService {
    #[tracing::instrument(name = "predict", skip_all, fields(model = %request.get_ref().model_name))]
    async fn predict(&self, request: Request<pb::PredictRequest>) -> Result<Response<pb::PredictResponse>, Status> {
        let deadline = super::deadline(request.metadata());
        Ok(Response::new(self.predict_inner(request.into_inner(), deadline).await?))
    }
}
