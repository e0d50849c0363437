//! `deployments`: the names clients call, each with at any time exactly one active model
//! version, at most one canary and at most one shadow (the database's partial unique indexes
//! per `deployment_id`). Every model belongs to one; `default` (id 1) holds every model
//! registered without one, and all the models of a registry made before deployments existed.
//! Deployment and model names share one namespace, enforced here with a clear answer and by
//! the database's triggers for any other writer.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{Pool, Registry};
use crate::error::{Error, Result};
use crate::name;

/// The deployment of every model registered without one.
pub const DEFAULT_DEPLOYMENT: &str = "default";

/// The default deployment's id.
pub const DEFAULT_DEPLOYMENT_ID: i64 = 1;

/// A deployment as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Deployment {
    /// Primary key (1 is `default`).
    pub deployment_id: i64,
    /// The name clients call.
    pub name: String,
    /// Free text.
    pub description: String,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
}

/// A deployment with what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSummary {
    /// The deployment.
    pub deployment: Deployment,
    /// Its registered models.
    pub models: i64,
    /// Its active model's id and name, if one is active.
    pub active: Option<(i64, String)>,
}

/// A deployment's id, and its active model's id and name.
type ActiveOf = (i64, i64, String);

const COLUMNS: &str = "deployment_id, name, description, created_at, created_by";

impl Registry {
    /// Every deployment, oldest first, with its model count and active model.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn deployments(&self) -> Result<Vec<DeploymentSummary>> {
        let list = format!("SELECT {COLUMNS} FROM deployments ORDER BY deployment_id");
        let counts = "SELECT deployment_id, COUNT(*) FROM ml_models GROUP BY deployment_id";
        let active = "SELECT deployment_id, model_id, model_name FROM ml_models WHERE is_active = $1";
        let (deployments, counts, active): (Vec<Deployment>, Vec<(i64, i64)>, Vec<ActiveOf>) = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let d = sqlx::query_as(sqlx::AssertSqlSafe(list)).fetch_all(&mut *tx).await?;
            let c = sqlx::query_as(counts).fetch_all(&mut *tx).await?;
            let a = sqlx::query_as(active).bind(true).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            (d, c, a)
        });
        // By id, not a scan per deployment: a registry may hold a thousand of them.
        let counts: HashMap<i64, i64> = counts.into_iter().collect();
        let mut active: HashMap<i64, (i64, String)> = active.into_iter().map(|(d, m, n)| (d, (m, n))).collect();
        Ok(deployments
            .into_iter()
            .map(|deployment| {
                let id = deployment.deployment_id;
                DeploymentSummary {
                    models: counts.get(&id).copied().unwrap_or(0),
                    active: active.remove(&id),
                    deployment,
                }
            })
            .collect())
    }

    /// One deployment by name, or `None`.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn find_deployment(&self, name: &str) -> Result<Option<Deployment>> {
        name::refuse_nul(name, "deployment")?;
        let sql = format!("SELECT {COLUMNS} FROM deployments WHERE name = $1");
        let name = name::nfc(name);
        Ok(with_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(name.as_ref()).fetch_optional(p).await?))
    }

    /// One deployment by name.
    ///
    /// # Errors
    /// `NotFound` (naming `modeld deployment list`) when there is none.
    pub async fn deployment(&self, name: &str) -> Result<Deployment> {
        self.find_deployment(name).await?.ok_or_else(|| unknown(name))
    }

    /// Creates a deployment.
    ///
    /// # Errors
    /// `InvalidArgument` for a name the model-name rules refuse or a description too long;
    /// `AlreadyExists` when a deployment or a model has the name.
    pub async fn create_deployment(&self, raw_name: &str, description: &str, by: &str) -> Result<Deployment> {
        let name = name::normalise_deployment_name(raw_name)?;
        super::text::DESCRIPTION.check(description)?;
        super::text::WHO.check(by)?;
        let insert = format!(
            "INSERT INTO deployments (name, description, created_at, created_by) VALUES ($1, $2, $3, $4) \
             RETURNING {COLUMNS}"
        );
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            // After the bump: writers queue on it, so no other can take the name meanwhile.
            let model: Option<i64> = sqlx::query_scalar("SELECT model_id FROM ml_models WHERE model_name = $1")
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(id) = model {
                return Err(Error::AlreadyExists(format!(
                    "{} is the name of model {id}; deployments and models share one namespace (a name means one thing)",
                    name::quoted(&name)
                )));
            }
            let inserted: std::result::Result<Deployment, sqlx::Error> = sqlx::query_as(sqlx::AssertSqlSafe(insert))
                .bind(&name)
                .bind(description)
                .bind(now)
                .bind(by)
                .fetch_one(&mut *tx)
                .await;
            let created = match inserted {
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    return Err(Error::AlreadyExists(format!("deployment {} already exists", name::quoted(&name))));
                }
                other => other?,
            };
            tx.commit().await?;
            Ok(created)
        })
    }

    /// Deletes a deployment that holds no model (`default` is never deleted).
    ///
    /// # Errors
    /// `NotFound` for an unknown name; `FailedPrecondition` for `default` and for a deployment
    /// that still holds models (naming its active one).
    pub async fn delete_deployment(&self, name: &str) -> Result<Deployment> {
        name::refuse_nul(name, "deployment")?;
        let name = name::nfc(name).into_owned();
        let select = format!("SELECT {COLUMNS} FROM deployments WHERE name = $1");
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            let found: Option<Deployment> = sqlx::query_as(sqlx::AssertSqlSafe(select))
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(deployment) = found else {
                return Err(unknown(&name));
            };
            if deployment.deployment_id == DEFAULT_DEPLOYMENT_ID {
                return Err(Error::FailedPrecondition(format!(
                    "deployment {DEFAULT_DEPLOYMENT:?} holds every model registered without a deployment; it cannot be deleted"
                )));
            }
            let models: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ml_models WHERE deployment_id = $1")
                .bind(deployment.deployment_id)
                .fetch_one(&mut *tx)
                .await?;
            if models > 0 {
                let active: Option<String> =
                    sqlx::query_scalar("SELECT model_name FROM ml_models WHERE deployment_id = $1 AND is_active = $2")
                        .bind(deployment.deployment_id)
                        .bind(true)
                        .fetch_optional(&mut *tx)
                        .await?;
                let serving = active.map_or_else(String::new, |m| format!(", and model {} is its active model", name::quoted(&m)));
                return Err(Error::FailedPrecondition(format!(
                    "deployment {} holds {models} model(s){serving}; delete them first",
                    name::quoted(&name)
                )));
            }
            sqlx::query("DELETE FROM deployments WHERE deployment_id = $1")
                .bind(deployment.deployment_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(deployment)
        })
    }
}

fn unknown(name: &str) -> Error {
    Error::NotFound(format!(
        "deployment {} does not exist (modeld deployment list shows them)",
        name::quoted(name)
    ))
}
