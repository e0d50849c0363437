//! The `modeld` commands, a file per family: the dispatch here (with the registry commands,
//! which work directly on the database through the same [`Services`](crate::ops::Services) the
//! server uses, whether a server is running or not), exit codes in `exit.rs`, what is printed in
//! `output.rs`, the connection to a server in `client.rs`, and `status.rs`, `predict.rs`,
//! `rollout.rs`, `download.rs`, `token.rs` and `evaluate.rs` for their commands.

use anyhow::Context;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub mod args;
mod client;
mod deployment;
mod download;
mod evaluate;
mod exit;
mod output;
mod predict;
mod rollout;
mod status;
mod token;

use self::args::{Command, ModelArg};
pub use self::exit::{EXIT_NOT_FOUND, EXIT_NOT_SERVED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, exit_code};
use self::exit::{Usage, check_served};
use self::output::{activation_json, column_width, describe, pad, print_activation, record_json};
use crate::api::pb;
use crate::app;
use crate::ops::{ActivationOutcome, Registration};
use crate::registry::{ActivationMeta, ModelRef, Order, Origin, RolloutRole};

/// Waits for the servers as `wait` says and prints the outcome (text mode); fails with exit
/// code 6 when a live server does not serve the change.
async fn await_served(
    catalogue: &crate::ops::Catalogue,
    wait: &self::args::WaitArgs,
    json: bool,
) -> anyhow::Result<crate::fleet::Served> {
    let served = catalogue.await_served(wait.timeout()).await?;
    // An incomplete wait is said once, by the error (stderr).
    if !json && (served.complete() || served.skipped) {
        println!("{}", served.summary());
    }
    Ok(served)
}

/// Runs one command to completion.
///
/// # Errors
/// Whatever the command failed with, with context for the user.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => {
            // The model root is checked before anything listens: a server that says
            // `listening on` and then stops is worse than one that does not start.
            let root = config.model_dir.as_ref().unwrap_or(&config.registry.model_root);
            crate::model::root::ModelRoot::new(root)?;
            let listener = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            app::serve(*config, listener, shutdown_signal()).await
        }
        Command::Migrate(args) => {
            app::services(&args, cli_origin()).await?;
            println!("registry schema is up to date");
            Ok(())
        }
        Command::Register(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            // The path as the user typed it, here on their machine: relative to the current
            // directory or absolute, as long as it lies inside the model root.
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            let file_path = if crate::model::objects::is_uri(&a.path) {
                a.path.clone()
            } else {
                services.catalogue.root().relative_to_root(&a.path, &cwd)?
            };
            let reg = Registration {
                name: a.name,
                file_path,
                version: a.version,
                description: a.description,
                model_type: a.model_type,
                accuracy: a.accuracy,
                created_by: a.by,
                activate: a.activate,
                allow_signature_change: a.allow_signature_change,
            };
            let done = services.activation.register(reg).await?;
            if !a.json {
                println!("registered {}", describe(&done.model));
                if let Some(act) = &done.activation {
                    print_activation(act);
                }
            }
            // Only an activation changes what servers serve.
            let served = match &done.activation {
                Some(_) => Some(await_served(&services.catalogue, &a.wait, a.json).await?),
                None => None,
            };
            if a.json {
                println!(
                    "{}",
                    json!({"model": record_json(&done.model), "activation": done.activation.as_ref().map(activation_json),
                           "served": served})
                );
            }
            served.map_or(Ok(()), check_served)
        }
        Command::List(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            let models = services.catalogue.list(Order::Id, false, i64::MAX, 0).await?;
            if a.json {
                println!("{}", Value::Array(models.iter().map(record_json).collect()));
            } else {
                let width = column_width(models.iter().map(|m| m.model_name.as_str()), 4);
                println!(
                    "{:>4}  {} {:<10} {:<11} {:>8}  {:<28} TYPE",
                    "ID",
                    pad("NAME", width),
                    "VERSION",
                    "ROLE",
                    "ACCURACY",
                    "FILE"
                );
                for m in &models {
                    // What it does for the traffic: the active model, the canary and the
                    // shadow with their share; nothing for the others.
                    let role = match crate::registry::rollout::held_role(m) {
                        _ if m.is_active => "active".to_string(),
                        Some((role, p)) => format!("{} {p}%", role.name()),
                        None => String::new(),
                    };
                    println!(
                        "{:>4}  {} {:<10} {:<11} {:>8}  {:<28} {}",
                        m.model_id,
                        pad(&m.model_name, width),
                        m.version,
                        role,
                        m.accuracy.map_or_else(|| "-".into(), |a| format!("{a:.4}")),
                        m.file_path,
                        m.model_type
                    );
                }
            }
            Ok(())
        }
        Command::Show(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            let m = services.catalogue.get(&model_ref(&a.model)?).await?;
            let mut shown = record_json(&m);
            let latest = services.catalogue.latest_evaluation(m.model_id, None).await?;
            shown["latest_evaluation"] = latest.map_or(Value::Null, |e| {
                json!({
                    "log_id": e.log_id, "dataset_name": e.dataset_name, "dataset_sha256": e.dataset_sha256,
                    "evaluated_at": e.evaluated_at, "accuracy": e.accuracy, "top3_accuracy": e.top3_accuracy,
                    "sample_size": e.sample_size, "latency_mean_us": e.latency_mean_us,
                    "latency_p50_us": e.latency_p50_us, "latency_p99_us": e.latency_p99_us,
                    "model_sha256": e.model_sha256, "notes": e.notes, "evaluated_by": e.evaluated_by,
                })
            });
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        Command::Activate(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            let meta = ActivationMeta {
                activated_by: a.by,
                reason: a.reason,
                is_rollback: false,
            };
            let evaluate_on = match &a.evaluate {
                Some(path) => Some(std::sync::Arc::new(crate::evaluation::Dataset::load(
                    path, None, "label",
                )?)),
                None => None,
            };
            let gates = crate::ops::Gates {
                allow_signature_change: a.allow_signature_change,
                require_better: a.require_better,
                evaluate_on,
            };
            let done = services
                .activation
                .activate(&model_ref(&a.model)?, &meta, &gates)
                .await?;
            print_changed(&services.catalogue, &done, &a.wait, a.json).await
        }
        Command::Rollback(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            let from = a
                .from
                .map(|model| model_ref(&self::args::ModelArg { model }))
                .transpose()?;
            let done = services.activation.rollback(&a.by, &a.reason, from.as_ref()).await?;
            print_changed(&services.catalogue, &done, &a.wait, a.json).await
        }
        Command::Delete(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            let deleted = services.activation.delete(&model_ref(&a.model)?).await?;
            println!(
                "deleted the record of {} (the file {} is kept)",
                describe(&deleted),
                deleted.file_path
            );
            Ok(())
        }
        Command::Canary(a) => rollout::rollout(RolloutRole::Canary, a.action).await,
        Command::Shadow(a) => rollout::rollout(RolloutRole::Shadow, a.action).await,
        Command::Promote(a) => {
            let services = app::services(&a.registry, cli_origin()).await?;
            let done = services.rollout.promote(&a.by, &a.reason).await?;
            print_changed(&services.catalogue, &done, &a.wait, a.json).await
        }
        Command::Predict(a) => predict::predict(a).await,
        Command::Status(a) => status::status(a).await,
        Command::Fleet(a) => status::fleet(a).await,
        Command::DownloadUrl(a) => download::download_url(a).await,
        Command::Download(a) => download::download(a).await,
        Command::Token(a) => token::token(a),
        Command::Deployment(a) => deployment::deployment(a).await,
        Command::Events(a) => status::events(a).await,
        Command::Evaluate(a) => evaluate::evaluate(a).await,
        Command::Compare(a) => evaluate::compare(a).await,
    }
}

/// An activation's answer (text or JSON), then its wait for the servers.
async fn print_changed(
    catalogue: &crate::ops::Catalogue,
    done: &ActivationOutcome,
    wait: &self::args::WaitArgs,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        print_activation(done);
    }
    let served = await_served(catalogue, wait, json).await?;
    if json {
        let mut v = activation_json(done);
        v["served"] = serde_json::to_value(&served)?;
        println!("{v}");
    }
    check_served(served)
}

pub(crate) fn cli_origin() -> Origin {
    let user = std::env::var("MODELD_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "cli".into());
    Origin {
        source: "cli".into(),
        server: format!("cli:{user}@{}", app::hostname()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// `id:<number>` names a model by id, `name:<name>` by a name that may itself start with
/// `id:`; anything else is a name.
pub(crate) fn model_ref(arg: &ModelArg) -> anyhow::Result<ModelRef> {
    if let Some(name) = arg.model.strip_prefix("name:") {
        return Ok(ModelRef::Name(name.to_string()));
    }
    match arg.model.strip_prefix("id:") {
        Some(id) => id.parse().map(ModelRef::Id).map_err(|_| {
            Usage(format!(
                "{:?} is not a model id: use id:<number>, or name:{} for a model named so",
                arg.model, arg.model
            ))
            .into()
        }),
        None => Ok(ModelRef::Name(arg.model.clone())),
    }
}

fn pb_model_ref(arg: &self::args::ModelArg) -> anyhow::Result<pb::ModelRef> {
    Ok(match model_ref(arg)? {
        ModelRef::Id(id) => pb::ModelRef {
            r#ref: Some(pb::model_ref::Ref::ModelId(id)),
        },
        ModelRef::Name(name) => pb::ModelRef {
            r#ref: Some(pb::model_ref::Ref::ModelName(name)),
        },
    })
}
