//! The Open Inference Protocol (KServe v2, as Triton serves it) over the services, in plain
//! types: what its gRPC binding (`api/kserve.rs`) and its REST binding (`http/oip.rs`) both
//! translate their wire formats to and from. The protocol's meaning lives here once: which
//! record a name means, readiness, metadata, the model config, statistics, the repository
//! index, load and unload, and an inference's version and output checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::slot::ServedModel;
use crate::model::{EngineKind, Signature, TensorSpec};
use crate::name::{is_active_alias, nfc, quoted};
use crate::ops::{ACTIVE_ALIAS, Activation, Catalogue, Inference, Services};
use crate::registry::{ActivationMeta, ModelRecord, ModelRef, Order};
use crate::serving::route::Role;
use crate::serving::stats::ModelStats;
use crate::serving::{ExecutorConfig, InputRef, OutputTensor};

/// `max_batch_size` reported for models with a batch dimension: the largest batch of the bundled
/// CNN (3x224x224 FP32) that fits the default 64 MiB message limit is 110; 64 leaves headroom.
pub const MAX_BATCH_SIZE: i32 = 64;

/// The protocol extensions this server speaks.
pub const EXTENSIONS: [&str; 3] = ["model_repository", "model_configuration", "statistics"];

/// How Triton begins the answer for a model (or version) it does not have; Triton's own
/// clients and examples look for these words, so both bindings begin with them and go on with
/// modeld's explanation.
const UNKNOWN_MODEL: &str = "Request for unknown model: ";

/// A model that is not registered, in Triton's words first.
fn unknown_model(e: Error) -> Error {
    match e {
        Error::NotFound(m) if !m.starts_with(UNKNOWN_MODEL) => Error::NotFound(format!("{UNKNOWN_MODEL}{m}")),
        e => e,
    }
}

/// A request parameter's value, as both bindings carry it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param<'a> {
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A floating-point number.
    Double(f64),
    /// A string.
    Str(&'a str),
}

/// One inference request, borrowed from the binding's message.
#[derive(Debug)]
pub struct InferRequest<'a> {
    /// The model (or the `active` alias, or empty).
    pub model_name: &'a str,
    /// A version to insist on (empty: whatever is served).
    pub model_version: &'a str,
    /// modeld's routing key, a request parameter (the protocol has no field).
    pub routing_key: Option<Param<'a>>,
    /// Triton's `timeout` parameter, in microseconds.
    pub timeout: Option<Param<'a>>,
    /// The inputs.
    pub inputs: Vec<InputRef<'a>>,
    /// The outputs asked for, in the order wanted (empty: all, in the model's order).
    pub outputs: Vec<&'a str>,
}

/// What an inference answered.
#[derive(Debug)]
pub struct InferResponse {
    /// The model that computed it.
    pub model: Arc<ServedModel>,
    /// Its role for this request.
    pub role: Role,
    /// The outputs asked for, as raw little-endian bytes.
    pub outputs: Vec<OutputTensor>,
}

/// A model's metadata.
#[derive(Debug, Clone)]
pub struct ModelMetadata {
    /// The name asked for (the `active` alias is echoed, so load tools keep addressing it).
    pub name: String,
    /// The version this server has.
    pub versions: Vec<String>,
    /// The engine's platform name (Triton's names where Triton has one).
    pub platform: &'static str,
    /// The inputs.
    pub inputs: Vec<TensorSpec>,
    /// The outputs.
    pub outputs: Vec<TensorSpec>,
}

/// A model's configuration, as Triton states it.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name asked for.
    pub name: String,
    /// The engine's platform name.
    pub platform: &'static str,
    /// The engine's own name.
    pub backend: &'static str,
    /// [`MAX_BATCH_SIZE`] for a model with a batch dimension, else 0.
    pub max_batch_size: i32,
    /// The inputs, without the batch dimension when the model batches.
    pub inputs: Vec<TensorSpec>,
    /// The outputs, likewise.
    pub outputs: Vec<TensorSpec>,
    /// The instance group's name (the model's).
    pub instance_group: String,
    /// How many compute threads run it.
    pub instances: i32,
    /// The model's file.
    pub default_model_filename: String,
    /// Dynamic batching's delay, when the model batches and batching is on.
    pub max_queue_delay: Option<Duration>,
}

/// One model in the repository index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why, when it is not plainly ready.
    pub reason: String,
}

/// The protocol over the services it needs.
#[derive(Debug, Clone)]
pub struct OpenInference {
    inference: Inference,
    catalogue: Catalogue,
    /// `RepositoryModelLoad` activates.
    activation: Activation,
}

impl OpenInference {
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

    /// Whether this server serves a model.
    pub fn server_ready(&self) -> bool {
        self.catalogue.served().is_some()
    }

    /// Whether `name` (at `version`, when given) is loaded here: served, or a candidate loaded
    /// in the cache (an uncached one loads on its first request, and is not ready until then).
    ///
    /// # Errors
    /// `NotFound` for an unknown model; `Unavailable` when the registry cannot be read.
    pub async fn model_ready(&self, name: &str, version: &str) -> Result<bool> {
        let served = self.catalogue.served();
        if name.is_empty() || name == ACTIVE_ALIAS {
            return Ok(served.is_some_and(|s| version.is_empty() || s.record.version == version));
        }
        let record = self.record(name).await?;
        let loaded = served.is_some_and(|s| s.record.model_id == record.model_id)
            || self
                .catalogue
                .cached_candidates()
                .iter()
                .any(|c| c.model_id == record.model_id && c.bytes.is_some());
        Ok(loaded && (version.is_empty() || record.version == version))
    }

    /// `name`'s metadata.
    ///
    /// # Errors
    /// As [`OpenInference::model_ready`]; `Internal` for a stored signature that cannot be read.
    pub async fn model_metadata(&self, name: &str) -> Result<ModelMetadata> {
        let record = self.record(name).await?;
        let sig = record.signature()?;
        Ok(ModelMetadata {
            name: if name == ACTIVE_ALIAS {
                name.to_string()
            } else {
                record.model_name.clone()
            },
            versions: vec![record.version.clone()],
            platform: self.catalogue.engine_for(&record).platform(),
            inputs: sig.inputs,
            outputs: sig.outputs,
        })
    }

    /// `name`'s configuration (named as asked, or by the model's own name for an empty one).
    ///
    /// # Errors
    /// As [`OpenInference::model_metadata`].
    pub async fn model_config(&self, name: &str) -> Result<ModelConfig> {
        let record = self.record(name).await?;
        let shown = if name.is_empty() { &record.model_name } else { name };
        let executor = self.inference.executor().map(|(e, _)| e.config());
        model_config(shown, &record, self.catalogue.engine_for(&record), executor.as_ref())
    }

    /// Statistics of every model that has served here, or of `name` (at `version`); a
    /// registered model that has not served yet has zero statistics.
    ///
    /// # Errors
    /// As [`OpenInference::model_ready`].
    pub async fn statistics(&self, name: &str, version: &str) -> Result<Vec<ModelStats>> {
        let wanted = if name.is_empty() {
            None
        } else {
            Some(self.record(name).await?)
        };
        let mut stats: Vec<ModelStats> = self
            .inference
            .stats()
            .into_iter()
            .filter(|s| wanted.as_ref().is_none_or(|w| w.model_name == s.name))
            .filter(|s| version.is_empty() || s.version == version)
            .collect();
        // Asked for by the alias: answer under the alias (load tools match the name they used).
        if name == ACTIVE_ALIAS {
            for s in &mut stats {
                s.name = name.to_string();
            }
        }
        if let Some(w) = wanted
            && stats.is_empty()
        {
            stats.push(ModelStats {
                name: if name == ACTIVE_ALIAS {
                    name.to_string()
                } else {
                    w.model_name
                },
                version: w.version,
                ..ModelStats::default()
            });
        }
        Ok(stats)
    }

    /// Every registered model and whether it is ready here (only the ready ones with `ready`).
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn repository_index(&self, ready: bool) -> Result<Vec<IndexEntry>> {
        let served = self.catalogue.served();
        let cached = self.catalogue.cached_candidates();
        let models = self.catalogue.list(Order::Name, false, i64::MAX, 0).await?;
        Ok(models
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
                IndexEntry {
                    name: m.model_name,
                    version: m.version,
                    state,
                    reason,
                }
            })
            .filter(|m| !ready || m.state == "READY")
            .collect())
    }

    /// Loads `name`: makes it the active model. Triton's load has no way to say "yes, change
    /// the signature", so the signature guard holds.
    ///
    /// # Errors
    /// As [`Activation::activate`].
    pub async fn load(&self, name: &str) -> Result<()> {
        let meta = ActivationMeta {
            activated_by: "kserve".into(),
            reason: "RepositoryModelLoad".into(),
            is_rollback: false,
        };
        self.activation
            .activate(&ModelRef::Name(name.to_string()), &meta, &crate::ops::Gates::default())
            .await?;
        Ok(())
    }

    /// Unloads `name`: only the active model is ever loaded, and it cannot be unloaded (load
    /// another instead); any other is already unloaded.
    ///
    /// # Errors
    /// `FailedPrecondition` for the active model; as [`OpenInference::model_ready`].
    pub async fn unload(&self, name: &str) -> Result<()> {
        let record = self.record(name).await?;
        if record.is_active {
            return Err(Error::FailedPrecondition(format!(
                "model {} is the active model and cannot be unloaded; load (activate) another model instead",
                quoted(&record.model_name)
            )));
        }
        Ok(())
    }

    /// One inference: the model is resolved once, then the version and the outputs asked for
    /// are checked against it before computing (a bad request is a failure, not a wasted
    /// inference), and the computation runs on that same model whatever swaps meanwhile.
    /// Outputs come back as raw bytes, as Triton answers.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad parameter, an unknown or repeated output; `NotFound` (in
    /// Triton's words) for an unknown model or a version not served; as [`Inference::infer`].
    pub async fn infer(&self, req: InferRequest<'_>, deadline: Option<Instant>) -> Result<InferResponse> {
        let routing_key = routing_key(req.routing_key)?;
        // Triton's request timeout, on both bindings: the earlier of it and the call's own
        // deadline.
        let deadline = match timeout(req.timeout)?.map(|us| Instant::now() + Duration::from_micros(us)) {
            Some(t) => Some(deadline.map_or(t, |d| d.min(t))),
            None => deadline,
        };
        let route = self
            .inference
            .route(req.model_name, &routing_key, deadline)
            .await
            .map_err(unknown_model)?;
        let role = route.role;
        {
            let model = &route.model;
            let record = &model.record;
            if !req.model_version.is_empty() && req.model_version != record.version {
                return Err(Error::NotFound(format!(
                    "{UNKNOWN_MODEL}version {} of model {} is not served; the served version is {}",
                    quoted(req.model_version),
                    quoted(&record.model_name),
                    quoted(&record.version)
                )));
            }
            for (i, o) in req.outputs.iter().enumerate() {
                if !model.model.signature.outputs.iter().any(|s| s.name == *o) || req.outputs[..i].contains(o) {
                    return Err(Error::InvalidArgument(format!(
                        "model {} has no output {o:?} (or it was requested twice)",
                        quoted(&record.model_name)
                    )));
                }
            }
        }
        let done = self.inference.infer(route, &req.inputs, true, deadline).await?;
        let mut outputs = done.outputs;
        if !req.outputs.is_empty() {
            let record = &done.model.record;
            let mut produced: Vec<Option<OutputTensor>> = outputs.into_iter().map(Some).collect();
            outputs = req
                .outputs
                .iter()
                .map(|o| {
                    produced
                        .iter_mut()
                        .find_map(|p| p.take_if(|p| p.name == *o))
                        .ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "model {} has no output {o:?} (or it was requested twice)",
                                quoted(&record.model_name)
                            ))
                        })
                })
                .collect::<Result<_>>()?;
        }
        Ok(InferResponse {
            model: done.model,
            role,
            outputs,
        })
    }
}

/// The routing key parameter: a string, or an integer.
fn routing_key(p: Option<Param<'_>>) -> Result<String> {
    match p {
        None => Ok(String::new()),
        Some(Param::Str(k)) => Ok(k.to_string()),
        Some(Param::Int(k)) => Ok(k.to_string()),
        Some(Param::Uint(k)) => Ok(k.to_string()),
        Some(Param::Bool(_) | Param::Double(_)) => Err(Error::InvalidArgument(
            "the routing_key parameter is a string (or an integer)".into(),
        )),
    }
}

/// Triton's `timeout` parameter: microseconds, 0 or more.
fn timeout(p: Option<Param<'_>>) -> Result<Option<u64>> {
    match p {
        None => Ok(None),
        Some(Param::Int(us)) if us >= 0 => Ok(Some(us.unsigned_abs())),
        Some(Param::Uint(us)) => Ok(Some(us)),
        Some(Param::Int(_) | Param::Bool(_) | Param::Double(_) | Param::Str(_)) => Err(Error::InvalidArgument(
            "parameter \"timeout\" is a whole number of microseconds, 0 or more".into(),
        )),
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
    executor: Option<&ExecutorConfig>,
) -> Result<ModelConfig> {
    let sig = record.signature()?;
    let batch = batched(&sig);
    let unbatched = |t: TensorSpec| TensorSpec {
        shape: if batch { t.shape[1..].to_vec() } else { t.shape },
        ..t
    };
    Ok(ModelConfig {
        name: requested.to_string(),
        // Honest about the engine: Triton's names where Triton has one.
        platform: computed_by.platform(),
        backend: computed_by.name(),
        max_batch_size: if batch { MAX_BATCH_SIZE } else { 0 },
        inputs: sig.inputs.into_iter().map(unbatched).collect(),
        outputs: sig.outputs.into_iter().map(unbatched).collect(),
        instance_group: record.model_name.clone(),
        instances: executor.map_or(1, |e| i32::try_from(e.threads).unwrap_or(i32::MAX)),
        default_model_filename: record.file_path.clone(),
        // The server-wide batching settings, as Triton states them per model.
        max_queue_delay: executor
            .filter(|e| batch && e.max_batch_size > 1)
            .map(|e| e.max_queue_delay),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_alike_for_both_bindings() {
        assert_eq!(routing_key(Some(Param::Int(-3))).unwrap(), "-3");
        assert_eq!(routing_key(Some(Param::Str("user-7"))).unwrap(), "user-7");
        assert!(routing_key(Some(Param::Double(1.5))).is_err());
        assert_eq!(timeout(Some(Param::Int(0))).unwrap(), Some(0));
        assert_eq!(timeout(Some(Param::Uint(9))).unwrap(), Some(9));
        for bad in [Param::Int(-1), Param::Str("5"), Param::Bool(true), Param::Double(1.0)] {
            assert!(timeout(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
