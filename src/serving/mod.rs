//! The request path shared by every API: resolve the request's model once ([`route`]),
//! validate tensors against the model's signature,
//! build tract tensors straight from the request bytes, run on the [`executor`] (inline or on
//! the compute pool, batched), encode outputs.

pub mod batch;
pub mod executor;
pub mod route;
pub mod shadow;
pub mod stats;
pub mod tensor;
pub mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::model::slot::ServedModel;
pub use executor::{Execution, Executor, ExecutorConfig};
pub use tensor::{InputRef, OutputData, OutputTensor, Payload};

/// Where a request's time went; the same numbers feed the span and the response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Validating and building the input tensors.
    pub decode: Duration,
    /// Waiting for a compute thread (zero when the model ran inline).
    pub queue: Duration,
    /// tract's run (shared by the requests of a batch).
    pub compute: Duration,
    /// Building the output tensors.
    pub encode: Duration,
    /// Rows in the tract call that computed this request (more than its own when batched).
    pub batch_rows: usize,
    /// Whether this request reports that call in the statistics (one request per call does).
    pub leader: bool,
    /// Samples in this request itself.
    pub rows: usize,
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

/// Validates `inputs` against `model`'s signature, runs the model on `executor` (not at all if
/// `deadline` passes first), and encodes the outputs (raw bytes when `raw_outputs`, typed values
/// otherwise). With `mirror`, the computed request is then handed to that shadow (it never
/// waits for it).
///
/// # Errors
/// `InvalidArgument` for inputs that do not match the signature (before tract sees them);
/// `ResourceExhausted`, `DeadlineExceeded` from the executor; `Internal` when tract fails on
/// inputs that passed validation.
pub async fn infer(
    executor: &Executor,
    model: Arc<ServedModel>,
    inputs: &[InputRef<'_>],
    raw_outputs: bool,
    deadline: Option<Instant>,
    mirror: Option<(&shadow::Shadows, &Arc<ServedModel>)>,
) -> Result<Inference> {
    let started = Instant::now();
    let signature = &model.model.signature;
    let tensors = tensor::prepare_inputs(&model.record.model_name, signature, inputs)?;
    let rows = batch_rows(&model, inputs);
    let decode = started.elapsed();
    // Clones of the Arcs, not of the data.
    let mirrored = mirror.map(|_| tensors.clone());

    let (outputs, execution) = executor.run(Arc::clone(&model), tensors, rows, deadline).await?;
    if let (Some((shadows, shadow)), Some(inputs)) = (mirror, mirrored) {
        shadows.offer(shadow, &model, inputs, outputs.clone());
    }

    let t = Instant::now();
    let outputs = tensor::encode_outputs(&model.model.signature, outputs, raw_outputs)?;
    let timings = Timings {
        decode,
        queue: execution.queue,
        compute: execution.compute,
        encode: t.elapsed(),
        batch_rows: execution.batch_rows,
        leader: execution.leader,
        rows,
    };
    tracing::debug!(
        model = %model.record.model_name,
        version = %model.record.version,
        decode_us = timings.decode.as_micros() as u64,
        queue_us = timings.queue.as_micros() as u64,
        compute_us = timings.compute.as_micros() as u64,
        encode_us = timings.encode.as_micros() as u64,
        batch_rows = timings.batch_rows,
        "inference"
    );
    Ok(Inference {
        model,
        outputs,
        timings,
    })
}

/// Samples in a request: the leading dimension when the model has a batch dimension, else 1.
fn batch_rows(model: &ServedModel, inputs: &[InputRef<'_>]) -> usize {
    match (model.model.signature.inputs.first(), inputs.first()) {
        (Some(spec), Some(input)) if spec.has_batch_dim() => {
            input.shape.first().map_or(1, |&n| usize::try_from(n).unwrap_or(0))
        }
        _ => 1,
    }
}
