//! What the commands print: the text for people and the JSON for scripts.

use crate::api::pb;
use crate::name::quoted;
use crate::ops::ActivationOutcome;
use crate::registry::ModelRecord;
use serde_json::{Value, json};
use unicode_width::{UnicodeWidthChar as _, UnicodeWidthStr as _};

/// The width of a table's name column: its widest name in terminal columns, at least the
/// heading's `min`, at most 40 (longer names are cut by [`pad`]).
pub(super) fn column_width<'a>(names: impl IntoIterator<Item = &'a str>, min: usize) -> usize {
    names.into_iter().map(str::width).max().unwrap_or(0).clamp(min, 40)
}

/// `s` padded with spaces to `width` terminal columns (wide characters count two), cut with an
/// ellipsis when longer (`--json` shows every name whole).
pub(super) fn pad(s: &str, width: usize) -> String {
    if s.width() <= width {
        return format!("{s}{}", " ".repeat(width - s.width()));
    }
    let (mut out, mut used) = (String::new(), 0);
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    format!("{out}{}", " ".repeat(width.saturating_sub(used + 1)))
}

pub(crate) fn describe(m: &ModelRecord) -> String {
    format!(
        "{} (id {}, version {})",
        quoted(&m.model_name),
        m.model_id,
        quoted(&m.version)
    )
}

pub(super) fn print_activation(a: &ActivationOutcome) {
    if a.already_active {
        println!("{} is already the active model: nothing changed", describe(&a.active));
        return;
    }
    println!(
        "active: {} (previous: {}; loaded and verified in {:.1} ms)",
        describe(&a.active),
        a.previous.as_ref().map_or_else(|| "none".to_string(), describe),
        a.load_time.as_secs_f64() * 1e3
    );
}

pub(crate) fn record_json(m: &ModelRecord) -> Value {
    json!({
        "model_id": m.model_id,
        "model_name": m.model_name,
        "version": m.version,
        "file_path": m.file_path,
        "description": m.description,
        "model_type": m.model_type,
        "accuracy": m.accuracy,
        "checksum_sha256": m.checksum_sha256,
        "file_size_bytes": m.file_size_bytes,
        "signature": serde_json::from_str::<Value>(&m.signature).unwrap_or(Value::Null),
        "is_active": m.is_active,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "created_by": m.created_by,
        "status": m.status,
        "rollout_percentage": m.rollout_percentage,
        "shadow_percentage": m.shadow_percentage,
        "rollback_threshold": m.rollback_threshold,
        "rollback_min_samples": m.rollback_min_samples,
        "rollback_window_secs": m.rollback_window_secs,
        "rollback_p99_ms": m.rollback_p99_ms,
        "is_stable": m.is_stable,
        "deprecated_at": m.deprecated_at,
    })
}

pub(super) fn activation_json(a: &ActivationOutcome) -> Value {
    json!({
        "active": record_json(&a.active),
        "previous": a.previous.as_ref().map(record_json),
        "load_time_ms": a.load_time.as_secs_f64() * 1e3,
        "already_active": a.already_active,
    })
}

/// A model's rollback window on one line: its role, what the window holds, and the policy it
/// is held to.
pub(super) fn describe_window(w: &pb::RollbackWindow) -> String {
    let policy = w.policy.unwrap_or_default();
    let mut limits = Vec::new();
    if let Some(t) = policy.error_rate {
        limits.push(format!("error rate above {t}"));
    }
    if let Some(t) = policy.p99_ms {
        limits.push(format!("p99 above {t} ms"));
    }
    let rule = if limits.is_empty() {
        "no automatic rollback".to_string()
    } else {
        format!(
            "rolls back at {} after {} requests",
            limits.join(" or "),
            policy.min_samples
        )
    };
    let p99 = w.p99_ms.map_or_else(String::new, |p| format!(", p99 {p:.2} ms"));
    format!(
        "{} {}: {} requests, {} failed ({:.2}%){p99} in the last {} s; {rule}",
        w.role,
        quoted(&w.model_name),
        w.requests,
        w.failures,
        w.error_rate * 100.0,
        w.window_secs
    )
}

pub(super) fn window_json(w: &pb::RollbackWindow) -> Value {
    let policy = w.policy.unwrap_or_default();
    json!({
        "model_id": w.model_id,
        "model_name": w.model_name,
        "role": w.role,
        "window_secs": w.window_secs,
        "requests": w.requests,
        "failures": w.failures,
        "error_rate": w.error_rate,
        "p99_ms": w.p99_ms,
        "policy": {
            "error_rate": policy.error_rate,
            "min_samples": policy.min_samples,
            "window_secs": policy.window_secs,
            "p99_ms": policy.p99_ms,
        },
    })
}

pub(super) fn percentage_text(p: Option<i32>) -> String {
    p.map_or_else(|| "-".to_string(), |p| format!("{p}%"))
}

/// One rollout history row on one line: when, who, the model, the move and why.
pub(super) fn describe_rollout_change(c: &crate::registry::RolloutChangeRecord) -> String {
    let by = if c.is_automatic {
        format!("{} (automatic)", c.changed_by)
    } else {
        c.changed_by.clone()
    };
    let mut out = format!(
        "{}  {}  {}  {} -> {}",
        c.changed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        by,
        crate::name::quoted(&c.model_name),
        percentage_text(c.percentage_before),
        percentage_text(c.percentage_after)
    );
    if !c.reason.is_empty() {
        out.push_str(": ");
        out.push_str(&c.reason);
    }
    out
}

pub(super) fn rollout_change_json(c: &crate::registry::RolloutChangeRecord) -> serde_json::Value {
    serde_json::json!({
        "change_id": c.change_id,
        "model_id": c.model_id,
        "model_name": c.model_name,
        "role": c.role,
        "percentage_before": c.percentage_before,
        "percentage_after": c.percentage_after,
        "changed_at": c.changed_at.to_rfc3339(),
        "changed_by": c.changed_by,
        "reason": c.reason,
        "automatic": c.is_automatic,
    })
}
