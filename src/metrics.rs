//! Prometheus metrics (`GET /metrics` on the HTTP port, `--http-listen`): what is served, whether
//! the server is degraded, reloads, requests and where their time went. The numbers are the same
//! ones GetServerStatus and ModelStatistics report: one source, several outputs.

use std::fmt::Write as _;

use crate::model::slot::ServedModel;
use crate::ops::{Catalogue, Inference, Rollout, Services};
use crate::status::Reason;

/// One shadow metric: its name, type, help, and how to read it off a shadow's figures.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::serving::shadow::ShadowFigures) -> String,
);

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics in Prometheus text format, family by family.
pub fn render(services: &Services) -> String {
    let Services {
        catalogue,
        inference,
        rollout: rollouts,
        ..
    } = services;
    let mut out = String::new();
    let served = catalogue.served();
    server_state(&mut out, catalogue, inference.in_flight(), served.as_deref());
    objects(&mut out, catalogue);
    serving(&mut out, served.as_deref());
    candidates(&mut out, inference);
    rollout(&mut out, catalogue, rollouts);
    shadow(&mut out, inference);
    requests(&mut out, catalogue, inference);
    out
}

/// Whether a model is loaded, whether the server is degraded and why, the registry, reloads.
fn server_state(out: &mut String, catalogue: &Catalogue, in_flight: u64, served: Option<&ServedModel>) {
    let status = catalogue.status();
    let mut gauge = |name: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge(
        "modeld_model_loaded",
        "1 once a model is loaded and warmed up.",
        u8::from(served.is_some()).to_string(),
    );
    let degradations = status.degradations(served.map(|s| &s.record));
    gauge(
        "modeld_degraded",
        "1 when any modeld_degraded_reason is 1.",
        u8::from(!degradations.is_empty()).to_string(),
    );
    gauge(
        "modeld_registry_reachable",
        "1 when the registry answered the last check.",
        u8::from(status.registry_reachable()).to_string(),
    );
    gauge(
        "modeld_registry_unreachable_since_seconds",
        "Unix time since which the registry has not answered; 0 while it answers.",
        status
            .registry_unreachable_since
            .map_or(0, |t| t.timestamp())
            .to_string(),
    );
    gauge(
        "modeld_model_file_missing",
        "1 when the served model's file is gone from disk.",
        u8::from(status.file_missing()).to_string(),
    );
    gauge(
        "modeld_registry_generation",
        "The registry generation this server has caught up with.",
        status.generation.to_string(),
    );
    gauge(
        "modeld_in_flight_requests",
        "Requests being computed.",
        in_flight.to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP modeld_degraded_reason 1 for each reason this server is degraded (GetServerStatus degradations).\n\
         # TYPE modeld_degraded_reason gauge"
    );
    for reason in Reason::ALL {
        let on = degradations.iter().any(|d| d.reason == reason);
        let _ = writeln!(
            out,
            "modeld_degraded_reason{{reason=\"{}\"}} {}",
            reason.code(),
            u8::from(on)
        );
    }
    let _ = writeln!(
        out,
        "# HELP modeld_reload_failures_total Reloads that failed; the last good model kept serving.\n\
         # TYPE modeld_reload_failures_total counter\nmodeld_reload_failures_total {}",
        status.reload_failures
    );
}

/// Object storage: checks, downloads, failures.
fn objects(out: &mut String, catalogue: &Catalogue) {
    let objects = catalogue.object_counts();
    for (name, help, value) in [
        (
            "modeld_object_checks_total",
            "Metadata requests (HEAD) to object stores, following the active model's object.",
            &objects.checks,
        ),
        (
            "modeld_object_downloads_total",
            "Objects downloaded whole from object stores into the verified cache.",
            &objects.downloads,
        ),
        (
            "modeld_object_downloaded_bytes_total",
            "Bytes downloaded from object stores.",
            &objects.downloaded_bytes,
        ),
        (
            "modeld_object_failures_total",
            "Object store requests that failed (the store down or refusing, the object gone).",
            &objects.failures,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

/// The served model.
fn serving(out: &mut String, served: Option<&ServedModel>) {
    let _ = writeln!(
        out,
        "# HELP modeld_serving_info The served model.\n# TYPE modeld_serving_info gauge"
    );
    if let Some(s) = &served {
        let r = &s.record;
        let _ = writeln!(
            out,
            "modeld_serving_info{{model_id=\"{}\",model=\"{}\",version=\"{}\",sha256=\"{}\",engine=\"{}\"}} 1",
            r.model_id,
            label(&r.model_name),
            label(&r.version),
            r.checksum_sha256,
            s.model.engine.kind()
        );
    }
}

/// Memory, and the candidate cache.
fn candidates(out: &mut String, inference: &Inference) {
    let cache = inference.candidates();
    let (cached, counts) = (cache.cached(), cache.counts());
    let _ = writeln!(
        out,
        "# HELP modeld_resident_bytes The server process's resident memory (RSS).\n\
         # TYPE modeld_resident_bytes gauge\nmodeld_resident_bytes {}",
        crate::model::memory::resident_bytes().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "# HELP modeld_candidate_resident_bytes Measured memory of each cached candidate (reserved while it loads).\n\
         # TYPE modeld_candidate_resident_bytes gauge"
    );
    for c in &cached {
        let _ = writeln!(
            out,
            "modeld_candidate_resident_bytes{{model_id=\"{}\",model=\"{}\",loading=\"{}\"}} {}",
            c.model_id,
            label(&c.name),
            c.bytes.is_none(),
            c.bytes.or(c.reserved).unwrap_or(0)
        );
    }
    for (name, help, n) in [
        (
            "loads",
            "Candidate loads started (one per cold candidate).",
            counts.loads,
        ),
        ("load_failures", "Candidate loads that failed.", counts.load_failures),
        ("evictions", "Candidates evicted to make room.", counts.evictions),
        (
            "refusals",
            "Requests refused for want of room in the candidate cache.",
            counts.refusals,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP modeld_candidate_{name}_total {help}\n# TYPE modeld_candidate_{name}_total counter\n\
             modeld_candidate_{name}_total {n}"
        );
    }
}

/// The canary's and the shadow's shares, and the automatic rollback's windows.
fn rollout(out: &mut String, catalogue: &Catalogue, rollouts: &Rollout) {
    let _ = writeln!(
        out,
        "# HELP modeld_rollout_percentage The canary's and the shadow's share of requests on this server.\n\
         # TYPE modeld_rollout_percentage gauge"
    );
    if let Some(set) = catalogue.serving_set() {
        for (role, w) in [("canary", &set.canary), ("shadow", &set.shadow)] {
            if let Some(w) = w {
                let _ = writeln!(
                    out,
                    "modeld_rollout_percentage{{role=\"{role}\",model_id=\"{}\",model=\"{}\"}} {}",
                    w.model.record.model_id,
                    label(&w.model.record.model_name),
                    w.percentage
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP modeld_rollback_window_error_rate The error rate the automatic rollback sees over each model's window.\n\
         # TYPE modeld_rollback_window_error_rate gauge"
    );
    for w in rollouts.guard_windows() {
        let _ = writeln!(
            out,
            "modeld_rollback_window_error_rate{{role=\"{}\",model_id=\"{}\",model=\"{}\"}} {}",
            w.role.name(),
            w.record.model_id,
            label(&w.record.model_name),
            w.figures.error_rate()
        );
    }
}

/// The shadow's figures.
fn shadow(out: &mut String, inference: &Inference) {
    if let Some(shadows) = inference.shadows() {
        let figures = shadows.figures();
        let series: [Series; 9] = [
            (
                "modeld_shadow_mirrored_total",
                "counter",
                "Mirrored requests the shadow ran.",
                |f| f.mirrored.to_string(),
            ),
            (
                "modeld_shadow_dropped_total",
                "counter",
                "Mirrored requests dropped: the shadow's queue was full.",
                |f| f.dropped.to_string(),
            ),
            (
                "modeld_shadow_errors_total",
                "counter",
                "Mirrored requests the shadow failed.",
                |f| f.errors.to_string(),
            ),
            (
                "modeld_shadow_rows_compared_total",
                "counter",
                "Rows whose top-1 class both models computed.",
                |f| f.rows_compared.to_string(),
            ),
            (
                "modeld_shadow_rows_agreed_total",
                "counter",
                "Of those, rows where the shadow agreed with the serving model.",
                |f| f.rows_agreed.to_string(),
            ),
            (
                "modeld_shadow_max_abs_diff",
                "gauge",
                "Largest absolute difference between the two models' float outputs.",
                |f| f.max_abs_diff.to_string(),
            ),
            (
                "modeld_shadow_mean_abs_diff",
                "gauge",
                "Mean absolute difference between the two models' float outputs.",
                |f| f.mean_abs_diff.to_string(),
            ),
            (
                "modeld_shadow_latency_mean_seconds",
                "gauge",
                "The shadow's mean compute time per engine call.",
                |f| f.latency_mean.as_secs_f64().to_string(),
            ),
            (
                "modeld_shadow_calls_total",
                "counter",
                "Engine calls that ran the mirrored requests (fewer than mirrored when batched).",
                |f| f.calls.to_string(),
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for f in &figures {
                let _ = writeln!(
                    out,
                    "{name}{{model_id=\"{}\",model=\"{}\"}} {}",
                    f.model_id,
                    label(&f.model_name),
                    value(f)
                );
            }
        }
    }
}

/// Requests, engine calls, where their time went, the executor.
fn requests(out: &mut String, catalogue: &Catalogue, inference: &Inference) {
    let stats = inference.stats();
    let _ = writeln!(
        out,
        "# HELP modeld_requests_total Inference requests by model, role (active, canary, candidate) and outcome.\n# TYPE modeld_requests_total counter"
    );
    for s in &stats {
        let (m, v) = (label(&s.name), label(&s.version));
        for (role, o) in &s.outcomes {
            for (outcome, n) in [
                ("success", o.success),
                ("failure", o.failure),
                ("rejected", o.rejected),
                ("expired", o.expired),
            ] {
                let _ = writeln!(
                    out,
                    "modeld_requests_total{{model=\"{m}\",version=\"{v}\",role=\"{role}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP modeld_executions_total Engine calls by batch size (rows per call).\n# TYPE modeld_executions_total counter"
    );
    for s in &stats {
        for (size, b) in &s.batches {
            let _ = writeln!(
                out,
                "modeld_executions_total{{model=\"{}\",version=\"{}\",batch_size=\"{size}\"}} {}",
                label(&s.name),
                label(&s.version),
                b.compute_infer.count
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP modeld_request_overhead_seconds_total Time in the server minus engine compute, successful requests.\n# TYPE modeld_request_overhead_seconds_total counter"
    );
    for s in &stats {
        let _ = writeln!(
            out,
            "modeld_request_overhead_seconds_total{{model=\"{}\",version=\"{}\"}} {}",
            label(&s.name),
            label(&s.version),
            s.overhead_ns() as f64 / 1e9
        );
    }
    histograms(out, catalogue, &stats);
    if let Some((executor, _)) = inference.executor() {
        let _ = writeln!(
            out,
            "# HELP modeld_queue_depth Requests waiting for a compute thread.\n# TYPE modeld_queue_depth gauge\nmodeld_queue_depth {}",
            executor.queued()
        );
        let _ = writeln!(
            out,
            "# HELP modeld_compute_threads_busy Compute threads running a model.\n# TYPE modeld_compute_threads_busy gauge\nmodeld_compute_threads_busy {}",
            executor.busy()
        );
        let _ = writeln!(
            out,
            "# HELP modeld_failed_batches_total Batched calls that failed; their requests were run one by one.\n# TYPE modeld_failed_batches_total counter\nmodeld_failed_batches_total {}",
            executor.failed_batches()
        );
    }
    let _ = writeln!(
        out,
        "# HELP modeld_inferences_total Samples inferred (a batch of 8 counts 8).\n# TYPE modeld_inferences_total counter"
    );
    for s in &stats {
        let _ = writeln!(
            out,
            "modeld_inferences_total{{model=\"{}\",version=\"{}\"}} {}",
            label(&s.name),
            label(&s.version),
            s.inference_count
        );
    }
    let _ = writeln!(
        out,
        "# HELP modeld_request_phase_seconds_total Time spent per request phase.\n# TYPE modeld_request_phase_seconds_total counter"
    );
    for s in &stats {
        for (phase, t) in [
            ("queue", s.queue),
            ("compute_input", s.compute_input),
            ("compute_infer", s.compute_infer),
            ("compute_output", s.compute_output),
        ] {
            let _ = writeln!(
                out,
                "modeld_request_phase_seconds_total{{model=\"{}\",version=\"{}\",phase=\"{phase}\"}} {}",
                label(&s.name),
                label(&s.version),
                t.ns as f64 / 1e9
            );
        }
    }
}

/// One histogram's series: `_bucket` per bound (cumulative, and `+Inf`), `_sum`, `_count`.
fn histogram(out: &mut String, name: &str, labels: &str, bounds: &[f64], h: &crate::serving::stats::Histogram) {
    for (bound, n) in bounds
        .iter()
        .map(|b| b.to_string())
        .chain(std::iter::once("+Inf".to_string()))
        .zip(h.cumulative())
    {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}",
        h.sum, h.count
    );
}

/// Latency histograms (queue, compute, total) per model, version and role, and the batch-size
/// histogram per model and version: only for the models this server has loaded (the active
/// model, the canary, the shadow, cached candidates), so a candidate evicted from the cache, or
/// a model swapped out, drops its series and their number stays bounded by the cache.
fn histograms(out: &mut String, catalogue: &Catalogue, stats: &[crate::serving::stats::ModelStats]) {
    use crate::serving::stats::{BATCH_BUCKETS, LATENCY_BUCKETS};
    let mut loaded: Vec<(String, Option<String>)> = Vec::new();
    if let Some(set) = catalogue.serving_set() {
        let r = &set.active.record;
        loaded.push((r.model_name.clone(), Some(r.version.clone())));
        for w in [&set.canary, &set.shadow].into_iter().flatten() {
            loaded.push((w.model.record.model_name.clone(), Some(w.model.record.version.clone())));
        }
    }
    for c in catalogue.cached_candidates() {
        if c.bytes.is_some() {
            loaded.push((c.name.clone(), None));
        }
    }
    let shown: Vec<&crate::serving::stats::ModelStats> = stats
        .iter()
        .filter(|s| {
            loaded
                .iter()
                .any(|(n, v)| *n == s.name && v.as_ref().is_none_or(|v| *v == s.version))
        })
        .collect();
    for (name, help, pick) in [
        (
            "modeld_request_queue_seconds",
            "Time successful requests waited for a compute thread.",
            (|l: &crate::serving::stats::RoleLatency| &l.queue)
                as fn(&crate::serving::stats::RoleLatency) -> &crate::serving::stats::Histogram,
        ),
        (
            "modeld_request_compute_seconds",
            "Engine time of successful requests (a batched call's time for each of its requests).",
            |l| &l.compute,
        ),
        (
            "modeld_request_duration_seconds",
            "Time successful requests spent in the server, from receipt to answer.",
            |l| &l.total,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for s in &shown {
            for (role, l) in &s.latency {
                let labels = format!(
                    "model=\"{}\",version=\"{}\",role=\"{role}\"",
                    label(&s.name),
                    label(&s.version)
                );
                histogram(out, name, &labels, &LATENCY_BUCKETS, pick(l));
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP modeld_batch_size Rows per engine call (dynamic batching).\n# TYPE modeld_batch_size histogram"
    );
    for s in &shown {
        let labels = format!("model=\"{}\",version=\"{}\"", label(&s.name), label(&s.version));
        histogram(out, "modeld_batch_size", &labels, &BATCH_BUCKETS, &s.batch_sizes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
