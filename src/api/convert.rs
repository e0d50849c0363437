//! Proto <-> domain conversions. They destructure every field, so a new proto or record field
//! fails the build until it is handled here.

use super::pb;
use crate::error::{Error, Result};
use crate::model::slot::ServedModel;
use crate::model::{EngineSettings, Signature, TensorSpec};
use crate::ops::ActivationOutcome;
use crate::registry::{EvaluationRecord, EventRecord, ModelRecord, ModelRef};
use crate::serving::{Executor, OutputData, OutputTensor, Payload};
use crate::status::{Reason, StatusSnapshot};

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn spec(s: &TensorSpec) -> pb::TensorSpec {
    let TensorSpec { name, datatype, shape } = s;
    pb::TensorSpec {
        name: name.clone(),
        datatype: datatype.name().to_string(),
        shape: shape.clone(),
    }
}

/// The wire form of a signature.
pub fn signature(s: &Signature) -> pb::Signature {
    let Signature { inputs, outputs } = s;
    pb::Signature {
        inputs: inputs.iter().map(spec).collect(),
        outputs: outputs.iter().map(spec).collect(),
    }
}

/// The wire form of a registry record.
pub fn model(r: &ModelRecord) -> pb::Model {
    let ModelRecord {
        model_id,
        model_name,
        version,
        file_path,
        description,
        model_type,
        accuracy,
        checksum_sha256,
        file_size_bytes,
        signature: _,
        is_active,
        created_at,
        updated_at,
        created_by,
        status,
        rollout_percentage,
        shadow_percentage,
        rollback_threshold,
        rollback_min_samples,
        rollback_window_secs,
        rollback_p99_ms,
        is_stable,
        deprecated_at,
        min_app_version,
        min_app_versions,
        // On the wire with the deployments' API (issue 29's next step).
        deployment_id: _,
    } = r;
    pb::Model {
        model_id: *model_id,
        model_name: model_name.clone(),
        version: version.clone(),
        file_path: file_path.clone(),
        description: description.clone(),
        model_type: model_type.clone(),
        accuracy: *accuracy,
        checksum_sha256: checksum_sha256.clone(),
        file_size_bytes: *file_size_bytes,
        signature: r.signature().ok().as_ref().map(signature),
        is_active: *is_active,
        created_at: Some(timestamp(*created_at)),
        updated_at: Some(timestamp(*updated_at)),
        created_by: created_by.clone(),
        latest_evaluation: None,
        status: status.clone(),
        rollout_percentage: u32::try_from(*rollout_percentage).unwrap_or(0),
        shadow_percentage: u32::try_from(*shadow_percentage).unwrap_or(0),
        rollback: Some(pb::RollbackPolicy {
            error_rate: *rollback_threshold,
            min_samples: u32::try_from(*rollback_min_samples).unwrap_or(1),
            window_secs: u32::try_from(*rollback_window_secs).unwrap_or(1),
            p99_ms: *rollback_p99_ms,
        }),
        is_stable: *is_stable,
        deprecated_at: deprecated_at.map(timestamp),
        min_app_version: min_app_version.clone(),
        min_app_versions: serde_json::from_str(min_app_versions).unwrap_or_default(),
    }
}

/// The wire form of a registry record with its latest evaluation.
pub fn model_with(r: &ModelRecord, latest: Option<&EvaluationRecord>) -> pb::Model {
    pb::Model {
        latest_evaluation: latest.map(evaluation),
        ..model(r)
    }
}

/// The wire form of a stored evaluation.
pub fn evaluation(e: &EvaluationRecord) -> pb::Evaluation {
    let EvaluationRecord {
        log_id,
        model_id,
        model_name,
        model_sha256,
        dataset_name,
        dataset_sha256,
        evaluated_at,
        accuracy,
        top3_accuracy,
        sample_size,
        latency_mean_us,
        latency_p50_us,
        latency_p99_us,
        details: _,
        notes,
        evaluated_by,
    } = e;
    let figures = e.figures();
    pb::Evaluation {
        log_id: *log_id,
        model_id: model_id.unwrap_or(0),
        model_name: model_name.clone(),
        model_sha256: model_sha256.clone(),
        dataset_name: dataset_name.clone(),
        dataset_sha256: dataset_sha256.clone(),
        evaluated_at: Some(timestamp(*evaluated_at)),
        accuracy: *accuracy,
        top3_accuracy: *top3_accuracy,
        sample_size: u64::try_from(*sample_size).unwrap_or(0),
        latency_mean_us: *latency_mean_us,
        latency_p50_us: *latency_p50_us,
        latency_p99_us: *latency_p99_us,
        classes: figures
            .as_ref()
            .map(|f| {
                f.classes
                    .iter()
                    .map(|c| pb::ClassFigures {
                        class: Some(c.class),
                        precision: c.precision,
                        recall: c.recall,
                        support: c.support,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        confusion: figures
            .as_ref()
            .map(|f| {
                f.confusion
                    .iter()
                    .map(|row| pb::ConfusionRow { predicted: row.clone() })
                    .collect()
            })
            .unwrap_or_default(),
        output: figures.map(|f| f.output).unwrap_or_default(),
        notes: notes.clone(),
        evaluated_by: evaluated_by.clone(),
    }
}

/// The wire form of an activation.
pub fn activation(a: &ActivationOutcome) -> pb::ActivateModelResponse {
    let ActivationOutcome {
        active,
        previous,
        load_time,
        already_active,
    } = a;
    pb::ActivateModelResponse {
        active: Some(model(active)),
        previous: previous.as_ref().map(model),
        load_time_ms: load_time.as_secs_f64() * 1e3,
        already_active: *already_active,
        served: None,
    }
}

/// How a change is served across the fleet.
pub fn served(s: &crate::fleet::Served) -> pb::Served {
    let lagging = |l: &crate::fleet::Lagging| pb::LaggingServer {
        server_id: l.server_id.clone(),
        server_name: l.server_name.clone(),
        host: l.host.clone(),
        reason: l.reason.clone(),
    };
    pb::Served {
        generation: s.generation,
        servers: u32::try_from(s.servers).unwrap_or(u32::MAX),
        applied: u32::try_from(s.applied).unwrap_or(u32::MAX),
        waited_ms: s.waited_ms,
        skipped: s.skipped,
        complete: s.complete(),
        failed: s.failed.iter().map(lagging).collect(),
        pending: s.pending.iter().map(lagging).collect(),
        summary: s.summary(),
    }
}

/// A server of the fleet table, `generation` being the registry's now.
pub fn fleet_server(s: &crate::registry::servers::ServerEntry, generation: i64) -> pb::FleetServer {
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(timestamp);
    let held = |h: &crate::registry::servers::Held| pb::FleetModel {
        model_id: h.model_id,
        model_name: h.model_name.clone(),
        version: h.version.clone(),
        sha256: h.sha256.clone(),
        percentage: h.percentage.map(u32::from),
    };
    pb::FleetServer {
        server_id: s.server_id.clone(),
        server_name: s.server_name.clone(),
        host: s.host.clone(),
        grpc_address: s.grpc_address.clone(),
        http_address: s.http_address.clone(),
        version: s.version.clone(),
        started_at: at(s.started_at_ms),
        heartbeat_age_ms: u64::try_from(s.heartbeat_age_ms).unwrap_or(0),
        heartbeat_interval_ms: u64::try_from(s.beat_ms).unwrap_or(0),
        gone: s.gone,
        applied_generation: s.applied_generation,
        lag: s.lag(generation),
        applied_at: s.applied_at_ms.and_then(at),
        active: s.serving.active.as_ref().map(held),
        canary: s.serving.canary.as_ref().map(held),
        shadow: s.serving.shadow.as_ref().map(held),
        problem: s.problem.clone(),
        problem_generation: s.problem_generation,
        degraded: s.degraded.clone(),
    }
}

/// A model reference from the wire.
///
/// # Errors
/// `InvalidArgument` when neither an id nor a name is given.
pub fn model_ref(r: Option<pb::ModelRef>) -> Result<ModelRef> {
    match r.and_then(|r| r.r#ref) {
        Some(pb::model_ref::Ref::ModelId(id)) => Ok(ModelRef::Id(id)),
        Some(pb::model_ref::Ref::ModelName(n)) if !n.is_empty() => Ok(ModelRef::Name(n)),
        _ => Err(Error::InvalidArgument(
            "name the model by model_id or model_name".into(),
        )),
    }
}

/// Picks the one field of a wire tensor that carries its data.
///
/// # Errors
/// `InvalidArgument` when more than one field carries data.
pub fn payload(t: &pb::Tensor) -> Result<Payload<'_>> {
    let pb::Tensor {
        name,
        datatype: _,
        shape: _,
        raw_data,
        fp32_data,
        fp64_data,
        int32_data,
        int64_data,
        uint32_data,
        uint64_data,
        bool_data,
    } = t;
    Payload::only_one(
        name,
        [
            Payload::Raw(raw_data),
            Payload::Fp32(fp32_data),
            Payload::Fp64(fp64_data),
            Payload::Int32(int32_data),
            Payload::Int64(int64_data),
            Payload::Uint32(uint32_data),
            Payload::Uint64(uint64_data),
            Payload::Bool(bool_data),
        ],
    )
}

/// The wire form of an output.
pub fn tensor(o: OutputTensor) -> pb::Tensor {
    let OutputTensor {
        name,
        datatype,
        shape,
        data,
    } = o;
    let mut t = pb::Tensor {
        name,
        datatype: datatype.name().to_string(),
        shape,
        ..Default::default()
    };
    match data {
        OutputData::Raw(v) => t.raw_data = v,
        OutputData::Fp32(v) => t.fp32_data = v,
        OutputData::Fp64(v) => t.fp64_data = v,
        OutputData::Int32(v) => t.int32_data = v,
        OutputData::Int64(v) => t.int64_data = v,
        OutputData::Uint32(v) => t.uint32_data = v,
        OutputData::Uint64(v) => t.uint64_data = v,
        OutputData::Bool(v) => t.bool_data = v,
    }
    t
}

/// The wire form of an event.
pub fn event(e: &EventRecord) -> pb::Event {
    let EventRecord {
        event_id,
        kind,
        model_id,
        model_name,
        source,
        server,
        detail,
        created_at,
    } = e;
    pb::Event {
        event_id: *event_id,
        kind: kind.clone(),
        model_id: model_id.unwrap_or(0),
        model_name: model_name.clone(),
        source: source.clone(),
        server: server.clone(),
        detail: detail.clone(),
        created_at: Some(timestamp(*created_at)),
    }
}

/// The wire form of this server's status.
pub fn server_status(
    server: &str,
    serving: Option<&ServedModel>,
    s: &StatusSnapshot,
    in_flight: u64,
    executor: Option<(&Executor, EngineSettings)>,
) -> pb::ServerStatus {
    let StatusSnapshot {
        registry_active,
        last_error,
        last_error_source: _,
        last_reload,
        file_missing_since,
        registry_unreachable_since,
        registry_unreachable_why: _,
        generation,
        reload_failures,
    } = s;
    let degradations = s.degradations(serving.map(|m| &m.record));
    pb::ServerStatus {
        server: server.to_string(),
        serving: serving.map(|m| model(&m.record)),
        registry_active: registry_active.as_ref().map(model),
        degraded: !degradations.is_empty(),
        last_error: last_error.as_ref().map(|(m, _, _)| m.clone()).unwrap_or_default(),
        last_error_at: last_error.as_ref().map(|(_, _, t)| timestamp(*t)),
        last_reload_at: last_reload.as_ref().map(|(_, t)| timestamp(*t)),
        last_reload_source: last_reload.as_ref().map(|(s, _)| s.clone()).unwrap_or_default(),
        file_missing: file_missing_since.is_some(),
        registry_reachable: registry_unreachable_since.is_none(),
        registry_generation: *generation,
        in_flight_requests: in_flight,
        reload_failures: *reload_failures,
        engine: executor.map(|(e, settings)| engine_status(e, settings, serving)),
        degradations: degradations
            .into_iter()
            .map(|d| pb::Degradation {
                reason: degraded_reason(d.reason).into(),
                message: d.message,
                since: Some(timestamp(d.since)),
            })
            .collect(),
        registry_unreachable_since: registry_unreachable_since.map(timestamp),
        // The caller's, from the services (see the registry service).
        candidates: None,
        resident_bytes: 0,
        rollout: None,
        rollback_windows: Vec::new(),
    }
}

/// What the automatic rollback sees of one model.
pub fn rollback_window(w: &crate::ops::GuardWindow) -> pb::RollbackWindow {
    let r = &w.record;
    pb::RollbackWindow {
        model_id: r.model_id,
        model_name: r.model_name.clone(),
        role: w.role.name().into(),
        window_secs: u32::try_from(w.window.as_secs()).unwrap_or(u32::MAX),
        requests: w.figures.total,
        failures: w.figures.faults,
        error_rate: w.figures.error_rate(),
        p99_ms: w.figures.p99.map(|d| d.as_secs_f64() * 1e3),
        policy: model(r).rollback,
    }
}

/// A shadow's figures.
pub fn shadow_figures(f: &crate::serving::shadow::ShadowFigures) -> pb::ShadowFigures {
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    pb::ShadowFigures {
        model_id: f.model_id,
        model_name: f.model_name.clone(),
        mirrored: f.mirrored,
        dropped: f.dropped,
        errors: f.errors,
        rows_compared: f.rows_compared,
        rows_agreed: f.rows_agreed,
        agreement: if f.rows_compared == 0 {
            0.0
        } else {
            f.rows_agreed as f64 / f.rows_compared as f64
        },
        max_abs_diff: f.max_abs_diff,
        mean_abs_diff: f.mean_abs_diff,
        latency_mean_us: us(f.latency_mean),
        latency_max_us: us(f.latency_max),
        calls: f.calls,
    }
}

/// The canary and the shadow of a serving set.
pub fn serving_rollout(set: &crate::model::slot::ServingSet) -> pb::ServingRollout {
    let part = |w: &Option<crate::model::slot::Weighted>| {
        w.as_ref()
            .map_or((None, 0), |w| (Some(model(&w.model.record)), u32::from(w.percentage)))
    };
    let ((canary, canary_percentage), (shadow, shadow_percentage)) = (part(&set.canary), part(&set.shadow));
    pb::ServingRollout {
        canary,
        canary_percentage,
        shadow,
        shadow_percentage,
        shadows: Vec::new(),
    }
}

/// The registry's rollout, and the model a change replaced.
pub fn rollout(r: &crate::registry::Rollout, replaced: Option<&ModelRecord>) -> pb::Rollout {
    pb::Rollout {
        canary: r.canary.as_ref().map(model),
        shadow: r.shadow.as_ref().map(model),
        replaced: replaced.map(model),
        history: Vec::new(),
        served: None,
    }
}

/// The model configuration devices poll.
pub fn client_config(c: crate::ops::ClientConfig) -> pb::ClientModelConfig {
    pb::ClientModelConfig {
        not_modified: false,
        etag: c.etag,
        active_model_version: c.active_model_version,
        active_model_id: c.active_model_id,
        active_model_name: c.active_model_name,
        active_model_sha256: c.active_model_sha256,
        active_model_size_bytes: c.active_model_size_bytes,
        rollout_percentage: u32::from(c.rollout_percentage),
        canary_model_version: c.canary_model_version,
        canary_model_id: c.canary_model_id,
        shadow_model_version: c.shadow_model_version,
        shadow_percentage: c.shadow_percentage.map(u32::from),
        rollback_threshold: c.rollback_threshold,
        min_app_version: c.min_app_version,
        updated_at: Some(timestamp(c.updated_at)),
    }
}

/// A rollout history row.
pub fn rollout_change(c: &crate::registry::RolloutChangeRecord) -> pb::RolloutChange {
    let pct = |p: Option<i32>| p.and_then(|p| u32::try_from(p).ok());
    pb::RolloutChange {
        change_id: c.change_id,
        model_id: c.model_id.unwrap_or(0),
        model_name: c.model_name.clone(),
        role: c.role.clone(),
        percentage_before: pct(c.percentage_before),
        percentage_after: pct(c.percentage_after),
        changed_at: Some(timestamp(c.changed_at)),
        changed_by: c.changed_by.clone(),
        reason: c.reason.clone(),
        automatic: c.is_automatic,
    }
}

/// The candidate cache's bounds and contents.
pub fn candidate_cache(cache: &crate::model::cache::Candidates) -> pb::CandidateCache {
    let (limits, counts) = (cache.limits(), cache.counts());
    let small = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::CandidateCache {
        max_models: small(limits.models),
        max_bytes: limits.bytes,
        max_loads: small(limits.loads),
        cached: cache
            .cached()
            .into_iter()
            .map(|c| pb::CachedCandidate {
                model_id: c.model_id,
                model_name: c.name,
                loading: c.bytes.is_none(),
                resident_bytes: c.bytes.or(c.reserved).unwrap_or(0),
            })
            .collect(),
        loads: counts.loads,
        load_failures: counts.load_failures,
        evictions: counts.evictions,
        refusals: counts.refusals,
    }
}

fn degraded_reason(r: Reason) -> pb::DegradedReason {
    match r {
        Reason::RegistryUnreachable => pb::DegradedReason::RegistryUnreachable,
        Reason::ModelFileMissing => pb::DegradedReason::ModelFileMissing,
        Reason::ModelFileUnreadable => pb::DegradedReason::ModelFileUnreadable,
        Reason::ChecksumMismatch => pb::DegradedReason::ChecksumMismatch,
        Reason::ModelNotLoadable => pb::DegradedReason::ModelNotLoadable,
        Reason::SignatureIncompatible => pb::DegradedReason::SignatureIncompatible,
        Reason::NotServingRegistryModel => pb::DegradedReason::NotServingRegistryModel,
        Reason::ReloadFailed => pb::DegradedReason::ReloadFailed,
    }
}

fn engine_status(e: &Executor, settings: EngineSettings, serving: Option<&ServedModel>) -> pb::EngineStatus {
    let c = e.config();
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    pb::EngineStatus {
        compute_threads: n(c.threads),
        busy_compute_threads: n(e.busy()),
        queued_requests: n(e.queued()),
        queue_capacity: n(c.queue_capacity),
        inline_max_us: c.inline_max.as_micros() as u64,
        max_batch_size: n(c.max_batch_size),
        max_queue_delay_us: c.max_queue_delay.as_micros() as u64,
        serving_cost_us: serving.map_or(0, |m| m.model.cost.as_micros() as u64),
        serving_inline: serving.is_some_and(|m| e.runs_inline(m, 1)),
        serving_batchable: serving.is_some_and(|m| m.model.batchable),
        preferred_engine: settings.preferred.name().into(),
        onnxruntime: match crate::model::engine::onnxruntime_status() {
            _ if !settings.preferred.wants_onnxruntime() => String::new(),
            Some(Ok(what)) => what,
            Some(Err(why)) => why.to_string(),
            None => String::new(),
        },
        serving_engine: serving.map(|m| m.model.engine.kind().name().into()).unwrap_or_default(),
        serving_engine_note: serving.and_then(|m| m.model.engine_note.clone()).unwrap_or_default(),
        failed_batches: e.failed_batches(),
    }
}
