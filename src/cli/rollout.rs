//! `modeld canary` and `modeld shadow`: set, clear and show a rollout role.

use super::exit::check_served;
use super::output::{describe, describe_rollout_change, record_json, rollout_change_json};
use super::{await_served, cli_origin, model_ref};
use crate::app;
use crate::registry::RolloutRole;

/// `modeld canary …` and `modeld shadow …`: registry changes every server follows.
pub(super) async fn rollout(role: RolloutRole, action: super::args::RolloutAction) -> anyhow::Result<()> {
    use super::args::RolloutAction;
    let what = role.name();
    let line = |r: Option<&crate::registry::ModelRecord>| match r {
        None => format!("{what}: none"),
        Some(m) => format!(
            "{what}: {} at {}%",
            describe(m),
            crate::registry::rollout::percentage(m, role)
        ),
    };
    match action {
        RolloutAction::Set(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            let model = model_ref(&a.model)?;
            if a.rollback_threshold.is_some()
                || a.min_samples.is_some()
                || a.window_secs.is_some()
                || a.rollback_p99_ms.is_some()
            {
                let r = services.catalogue.get(&model).await?;
                let policy = crate::registry::RollbackPolicy {
                    threshold: a.rollback_threshold.map_or(r.rollback_threshold, |t| t.0),
                    min_samples: a
                        .min_samples
                        .unwrap_or(u32::try_from(r.rollback_min_samples).unwrap_or(1)),
                    window_secs: a
                        .window_secs
                        .unwrap_or(u32::try_from(r.rollback_window_secs).unwrap_or(60)),
                    p99_ms: a.rollback_p99_ms.map_or(r.rollback_p99_ms, |t| t.0),
                };
                let changes = crate::registry::ModelChanges {
                    rollback: Some(policy),
                    ..Default::default()
                };
                services.activation.update(&model, &changes).await?;
            }
            let change = services
                .rollout
                .set_rollout(
                    role,
                    &model_ref(&a.model)?,
                    a.percentage,
                    a.allow_signature_change,
                    &a.by,
                    &a.reason,
                )
                .await?;
            println!("{}", line(change.model.as_ref()));
            if let Some(old) = &change.replaced {
                println!("replaced {} (now testing)", describe(old));
            }
            check_served(await_served(&services.catalogue, &a.wait, false).await?)?;
        }
        RolloutAction::Clear(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            match services.rollout.clear_rollout(role, &a.by, &a.reason).await?.replaced {
                Some(old) => println!("{what} cleared: {} is testing again", describe(&old)),
                None => println!("{what}: none (nothing to clear)"),
            }
            check_served(await_served(&services.catalogue, &a.wait, false).await?)?;
        }
        RolloutAction::Show(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            let rollout = services.catalogue.rollout().await?;
            let held = rollout.get(role);
            let history = if a.history == 0 {
                Vec::new()
            } else {
                services
                    .catalogue
                    .rollout_changes(Some(role), i64::from(a.history))
                    .await?
            };
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "role": what,
                        "model": held.map(record_json),
                        "percentage": held.map(|m| crate::registry::rollout::percentage(m, role)),
                        "history": history.iter().map(rollout_change_json).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!("{}", line(held));
                if !history.is_empty() {
                    println!("recent changes, newest first:");
                }
                for c in &history {
                    println!("  {}", describe_rollout_change(c));
                }
            }
        }
    }
    Ok(())
}
