//! `modeld deployment create|list|show|delete`: the registry's deployments, read and changed
//! through the same services as every transport.

use serde_json::{Value, json};

use super::args::{DeploymentAction, DeploymentArgs};
use super::cli_origin;
use super::output::{column_width, pad};
use crate::app;
use crate::registry::{Deployment, DeploymentSummary};

fn deployment_json(d: &Deployment) -> Value {
    json!({
        "deployment_id": d.deployment_id,
        "name": d.name,
        "description": d.description,
        "created_at": d.created_at.to_rfc3339(),
        "created_by": d.created_by,
    })
}

fn summary_json(s: &DeploymentSummary) -> Value {
    let mut v = deployment_json(&s.deployment);
    v["models"] = json!(s.models);
    v["active"] = s
        .active
        .as_ref()
        .map_or(Value::Null, |(id, name)| json!({"model_id": id, "model_name": name}));
    v
}

/// Runs `modeld deployment`.
///
/// # Errors
/// The registry's: a refused name, an unknown deployment, one that still holds models.
pub async fn deployment(a: DeploymentArgs) -> anyhow::Result<()> {
    let services = app::services(&a.registry, cli_origin()).await?;
    match a.action {
        DeploymentAction::Create { name, description, by } => {
            let made = services.activation.create_deployment(&name, &description, &by).await?;
            if a.json {
                println!("{}", deployment_json(&made));
            } else {
                println!("created deployment {:?} (id {})", made.name, made.deployment_id);
            }
        }
        DeploymentAction::List => {
            let all = services.catalogue.deployments().await?;
            if a.json {
                println!("{}", Value::Array(all.iter().map(summary_json).collect()));
            } else {
                let width = column_width(all.iter().map(|d| d.deployment.name.as_str()), 4);
                println!("{:>4}  {} {:>6}  ACTIVE", "ID", pad("NAME", width), "MODELS");
                for d in &all {
                    let active = d
                        .active
                        .as_ref()
                        .map_or_else(|| "-".to_string(), |(id, name)| format!("{name} (id {id})"));
                    println!(
                        "{:>4}  {} {:>6}  {active}",
                        d.deployment.deployment_id,
                        pad(&d.deployment.name, width),
                        d.models
                    );
                }
            }
        }
        DeploymentAction::Show { name } => {
            let found = services.catalogue.deployment(&name).await?;
            let summary = services
                .catalogue
                .deployments()
                .await?
                .into_iter()
                .find(|s| s.deployment.deployment_id == found.deployment_id);
            let v = summary.as_ref().map_or_else(|| deployment_json(&found), summary_json);
            if a.json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        DeploymentAction::Delete { name } => {
            let gone = services.activation.delete_deployment(&name).await?;
            if a.json {
                println!("{}", deployment_json(&gone));
            } else {
                println!("deleted deployment {:?} (id {})", gone.name, gone.deployment_id);
            }
        }
    }
    Ok(())
}
