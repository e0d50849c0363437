//! The request path shared by every API: validate tensors against the model's signature,
//! build tract tensors straight from the request bytes, run on a blocking thread, encode outputs.

pub mod stats;
pub mod tensor;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::prelude::{TValue, TVec};

use crate::error::{Error, Result};
use crate::model::slot::ServedModel;
pub use tensor::{InputRef, OutputData, OutputTensor, Payload};

/// Where a request's time went; the same numbers feed the span and the response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Validating and building the input tensors.
    pub decode: Duration,
    /// Waiting for a blocking thread.
    pub queue: Duration,
    /// tract's run.
    pub compute: Duration,
    /// Building the output tensors.
    pub encode: Duration,
}

/// The outcome of one inference.
#[derive(Debug)]
pub struct Inference {
    /// The model that computed it (the snapshot taken at the start of the request).
    pub model: Arc<ServedModel>,
    /// One tensor per requested output, in signature order.
    pub outputs: Vec<OutputTensor>,
    /// Where the time went.
    pub timings: Timings,
}

/// Validates `inputs` against `model`'s signature, runs the model off the async reactor, and
/// encodes the outputs (raw bytes when `raw_outputs`, typed values otherwise).
///
/// # Errors
/// `InvalidArgument` for inputs that do not match the signature (before tract sees them);
/// `Internal` when tract fails on inputs that passed validation.
pub async fn infer(model: Arc<ServedModel>, inputs: &[InputRef<'_>], raw_outputs: bool) -> Result<Inference> {
    let started = Instant::now();
    let signature = &model.model.signature;
    let tensors = tensor::prepare_inputs(&model.record.model_name, signature, inputs)?;
    let decode = started.elapsed();

    let queued = Instant::now();
    let span = tracing::Span::current();
    let job_model = Arc::clone(&model);
    // Why a blocking thread: tract's run is CPU-bound and would stall every other request
    // sharing this async worker. The span travels with the job.
    let (outputs, queue, compute) = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let queue = queued.elapsed();
        let t = Instant::now();
        let out = job_model.model.plan.run(tensors);
        (out, queue, t.elapsed())
    })
    .await
    .map_err(|e| Error::internal(format!("inference task failed: {e}")))?;
    let outputs: TVec<TValue> = outputs.map_err(|e| {
        Error::internal(format!(
            "model {:?} failed on validated inputs: {e:#}",
            model.record.model_name
        ))
    })?;

    let t = Instant::now();
    let outputs = tensor::encode_outputs(&model.model.signature, outputs, raw_outputs)?;
    let timings = Timings {
        decode,
        queue,
        compute,
        encode: t.elapsed(),
    };
    tracing::debug!(
        model = %model.record.model_name,
        version = %model.record.version,
        decode_us = timings.decode.as_micros() as u64,
        queue_us = timings.queue.as_micros() as u64,
        compute_us = timings.compute.as_micros() as u64,
        encode_us = timings.encode.as_micros() as u64,
        "inference"
    );
    Ok(Inference {
        model,
        outputs,
        timings,
    })
}
