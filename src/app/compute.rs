//! Start-up's compute step: the executor's threads, the engine that computes models (ONNX
//! Runtime's library loaded if asked for), and the shadow's threads.

use anyhow::Context;

use crate::config::{EngineArgs, ServeConfig};
use crate::model::{EngineChoice, EngineSettings};
use crate::serving::shadow::{ShadowConfig, Shadows};
use crate::serving::{Executor, ExecutorConfig};

/// Where requests and mirrored requests compute.
pub(super) struct Compute {
    /// The compute threads and their queue.
    pub executor: Executor,
    /// How models are loaded.
    pub engine: EngineSettings,
    /// The shadow's threads.
    pub shadows: Shadows,
}

/// Starts the compute threads and the shadow's, and prepares the engine.
///
/// # Errors
/// A thread cannot be started.
pub(super) fn start(config: &ServeConfig) -> anyhow::Result<Compute> {
    let executor = Executor::start(ExecutorConfig::from(&config.engine))?;
    let engine = engine_settings(&config.engine, &executor);
    let shadows = Shadows::start(ShadowConfig::from(&config.shadow)).context("starting the shadow threads")?;
    Ok(Compute {
        executor,
        engine,
        shadows,
    })
}

/// Loads the preferred engine's library (once per process) and says in the logs what will
/// compute models; the settings size ONNX Runtime's sessions to the threads that may run a
/// model at once: the compute threads, or the runtime threads for a cheap model that runs
/// inline (a model runs one way or the other, so the larger of the two).
fn engine_settings(args: &EngineArgs, executor: &Executor) -> EngineSettings {
    let queue = executor.config();
    let pool = format!(
        "{} compute threads, queue of {}, batches of up to {}",
        queue.threads, queue.queue_capacity, queue.max_batch_size
    );
    match crate::model::engine::prepare(args.engine, args.onnxruntime_lib.as_deref()) {
        Ok(what) => tracing::info!(engine = %args.engine, "engine: {what}; {pool}"),
        // Asked for by default, not by the operator (no library named): one short line that says
        // where to read how to add it; the loader's own words go to the debug log.
        Err(why)
            if args.engine == EngineChoice::Auto
                && args.onnxruntime_lib.is_none()
                && std::env::var_os("ORT_DYLIB_PATH").is_none() =>
        {
            tracing::debug!(engine = %args.engine, "ONNX Runtime is not available: {why}");
            tracing::info!(
                engine = %args.engine,
                "engine: tract ({pool}); ONNX Runtime, faster on heavy models, is not installed \
                 (docs/operations.md, \"Engines\", says how to add it)"
            );
        }
        Err(why) if args.engine == EngineChoice::Auto => tracing::warn!(
            engine = %args.engine,
            "engine: tract ({pool}); ONNX Runtime, faster on heavy models, is not available: {why}. {}",
            crate::model::engine::HOW_TO_GET_ONNXRUNTIME
        ),
        Err(why) => tracing::warn!(
            engine = %args.engine,
            "{why}; models are computed by tract instead. {}",
            crate::model::engine::HOW_TO_GET_ONNXRUNTIME
        ),
    }
    let runtime = match args.runtime_threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    EngineSettings {
        preferred: args.engine,
        concurrency: executor.config().threads.max(runtime),
    }
}
