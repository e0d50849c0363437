//! The `modeld` commands. Registry commands work directly on the database through the same
//! [`Control`](crate::ops::Control) the server uses, whether a server is running or not;
//! `predict` is a gRPC client of a running server.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use unicode_width::{UnicodeWidthChar as _, UnicodeWidthStr as _};

mod evaluate;

use crate::api::{kserve_pb, pb};
use crate::app;
use crate::config::{Command, EventsArgs, ModelArg, PredictArgs};
use crate::ops::{ActivationOutcome, Registration};
use crate::registry::name::quoted;
use crate::registry::{ActivationMeta, ModelRecord, ModelRef, Order, Origin, RolloutRole};

/// Exit code: usage (a bad flag, value or command line; clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no such model.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: refused (an invalid value or a failed precondition).
pub const EXIT_REFUSED: u8 = 4;
/// Exit code: the registry database or the server cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 5;
/// Exit code: a change is committed but not every live server serves it.
pub const EXIT_NOT_SERVED: u8 = 6;

/// A committed change that not every live server serves (a load failure, or the wait ran out).
#[derive(Debug)]
struct NotServed(crate::fleet::Served);

impl std::fmt::Display for NotServed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the change is committed, but not every server serves it: {} (modeld fleet shows each server)",
            self.0.summary()
        )
    }
}

impl std::error::Error for NotServed {}

/// Waits for the servers as `wait` says and prints the outcome (text mode); fails with exit
/// code 6 when a live server does not serve the change.
async fn await_served(
    control: &crate::ops::Control,
    wait: &crate::config::WaitArgs,
    json: bool,
) -> anyhow::Result<crate::fleet::Served> {
    let served = control.await_served(wait.timeout()).await?;
    // An incomplete wait is said once, by the error (stderr).
    if !json && (served.complete() || served.skipped) {
        println!("{}", served.summary());
    }
    Ok(served)
}

/// Exit code 6 for a change not every live server serves (after its answer is printed).
fn check_served(served: crate::fleet::Served) -> anyhow::Result<()> {
    if served.complete() || served.skipped {
        Ok(())
    } else {
        Err(NotServed(served).into())
    }
}

/// The exit code for a failed command ([`crate::config::EXIT_CODES`]), from the first error in
/// its cause chain that says what kind of failure it is: modeld's own, a gRPC status from the
/// server, or a connection that could not be made.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<Usage>().is_some() {
            return EXIT_USAGE;
        }
        if cause.downcast_ref::<NotServed>().is_some() {
            return EXIT_NOT_SERVED;
        }
        if let Some(e) = cause.downcast_ref::<crate::Error>() {
            return match e {
                crate::Error::NotFound(_) => EXIT_NOT_FOUND,
                crate::Error::InvalidArgument(_)
                | crate::Error::AlreadyExists(_)
                | crate::Error::FailedPrecondition(_)
                | crate::Error::ModelFile { .. } => EXIT_REFUSED,
                crate::Error::Unavailable(_) => EXIT_UNREACHABLE,
                crate::Error::Database { fault, .. } => match fault {
                    crate::error::DbFault::Unreachable => EXIT_UNREACHABLE,
                    crate::error::DbFault::Conflict | crate::error::DbFault::Check => EXIT_REFUSED,
                    crate::error::DbFault::Other => 1,
                },
                crate::Error::ResourceExhausted { .. }
                | crate::Error::DeadlineExceeded(_)
                | crate::Error::Internal(_) => 1,
            };
        }
        if let Some(ServerSaid(s)) = cause.downcast_ref::<ServerSaid>() {
            return match s.code() {
                tonic::Code::NotFound => EXIT_NOT_FOUND,
                tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::AlreadyExists
                | tonic::Code::OutOfRange => EXIT_REFUSED,
                tonic::Code::Unavailable => EXIT_UNREACHABLE,
                _ => 1,
            };
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() || cause.downcast_ref::<NoServer>().is_some() {
            return EXIT_UNREACHABLE;
        }
    }
    1
}

/// A mistake in the command line itself (exit code 2, as clap's own).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A gRPC status the server answered with, shown as its message and code.
#[derive(Debug)]
struct ServerSaid(tonic::Status);

impl std::fmt::Display for ServerSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, message) = (self.0.code(), self.0.message());
        // The server words a missing token for any client ("send the header ..."); a CLI
        // user passes it with a flag or a variable.
        if code == tonic::Code::Unauthenticated && message.starts_with("this needs a bearer token") {
            return write!(
                f,
                "this server requires a token: pass --token TOKEN or set MODELD_TOKEN \
                 (whoever runs the server makes one with modeld token create --name NAME --scope read) ({code:?})"
            );
        }
        write!(f, "{message} ({code:?})")
    }
}

/// No server answers at the address: said once, with what to check.
#[derive(Debug)]
struct NoServer {
    address: String,
    why: String,
}

impl std::fmt::Display for NoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot connect to {} ({}): is `modeld serve` running there? (--server or MODELD_SERVER name another address)",
            self.address, self.why
        )
    }
}

impl std::error::Error for NoServer {}

/// The innermost cause of a connection error (`Connection refused (os error 111)`), which is
/// the part a person can act on; tonic and hyper each wrap it in their own words.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

impl std::error::Error for ServerSaid {}

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
            app::control(&args, cli_origin()).await?;
            println!("registry schema is up to date");
            Ok(())
        }
        Command::Register(a) => {
            let control = app::control(&a.registry, cli_origin()).await?;
            // The path as the user typed it, here on their machine: relative to the current
            // directory or absolute, as long as it lies inside the model root.
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            let file_path = if crate::model::objects::is_uri(&a.path) {
                a.path.clone()
            } else {
                control.root().relative_to_root(&a.path, &cwd)?
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
            let done = control.register(reg).await?;
            if !a.json {
                println!("registered {}", describe(&done.model));
                if let Some(act) = &done.activation {
                    print_activation(act);
                }
            }
            // Only an activation changes what servers serve.
            let served = match &done.activation {
                Some(_) => Some(await_served(&control, &a.wait, a.json).await?),
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
            let control = app::control(&a.registry, cli_origin()).await?;
            let models = control.registry().list(Order::Id, false, i64::MAX, 0).await?;
            if a.json {
                println!("{}", Value::Array(models.iter().map(record_json).collect()));
            } else {
                let width = models
                    .iter()
                    .map(|m| m.model_name.width())
                    .max()
                    .unwrap_or(0)
                    .clamp(4, 40);
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
            let control = app::control(&a.registry, cli_origin()).await?;
            let m = control.registry().get(&model_ref(&a.model)?).await?;
            let mut shown = record_json(&m);
            let latest = control.registry().latest_evaluation(m.model_id, None).await?;
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
            let control = app::control(&a.registry, cli_origin()).await?;
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
            let done = control.activate(&model_ref(&a.model)?, &meta, &gates).await?;
            print_changed(&control, &done, &a.wait, a.json).await
        }
        Command::Rollback(a) => {
            let control = app::control(&a.registry, cli_origin()).await?;
            let from = a
                .from
                .map(|model| model_ref(&crate::config::ModelArg { model }))
                .transpose()?;
            let done = control.rollback(&a.by, &a.reason, from.as_ref()).await?;
            print_changed(&control, &done, &a.wait, a.json).await
        }
        Command::Delete(a) => {
            let control = app::control(&a.registry, cli_origin()).await?;
            let deleted = control.delete(&model_ref(&a.model)?).await?;
            println!(
                "deleted the record of {} (the file {} is kept)",
                describe(&deleted),
                deleted.file_path
            );
            Ok(())
        }
        Command::Canary(a) => rollout(RolloutRole::Canary, a.action).await,
        Command::Shadow(a) => rollout(RolloutRole::Shadow, a.action).await,
        Command::Promote(a) => {
            let control = app::control(&a.registry, cli_origin()).await?;
            let done = control.promote(&a.by, &a.reason).await?;
            print_changed(&control, &done, &a.wait, a.json).await
        }
        Command::Predict(a) => predict(a).await,
        Command::Status(a) => status(a).await,
        Command::Fleet(a) => fleet(a).await,
        Command::DownloadUrl(a) => download_url(a).await,
        Command::Download(a) => download(a).await,
        Command::Token(a) => token(a),
        Command::Events(a) => events(a).await,
        Command::Evaluate(a) => evaluate::evaluate(a).await,
        Command::Compare(a) => evaluate::compare(a).await,
    }
}

/// An activation's answer (text or JSON), then its wait for the servers.
async fn print_changed(
    control: &crate::ops::Control,
    done: &ActivationOutcome,
    wait: &crate::config::WaitArgs,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        print_activation(done);
    }
    let served = await_served(control, wait, json).await?;
    if json {
        let mut v = activation_json(done);
        v["served"] = serde_json::to_value(&served)?;
        println!("{v}");
    }
    check_served(served)
}

/// `modeld fleet`: the servers on the registry, what each serves and how far behind it is.
async fn fleet(a: crate::config::FleetArgs) -> anyhow::Result<()> {
    let control = app::control(&a.registry, cli_origin()).await?;
    let registry = control.registry();
    let generation = registry.generation().await?;
    let servers = registry.servers().await?;
    if a.json {
        let list: Vec<Value> = servers
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                v["lag"] = json!(s.lag(generation));
                v
            })
            .collect();
        println!("{}", json!({"generation": generation, "servers": list}));
        return Ok(());
    }
    if servers.is_empty() {
        println!("no server has joined this registry (modeld serve on it joins)");
        return Ok(());
    }
    let live = servers.iter().filter(|s| !s.gone).count();
    println!(
        "registry generation {generation}; {live} live server{}",
        if live == 1 { "" } else { "s" }
    );
    let width = servers
        .iter()
        .map(|s| s.server_name.width())
        .max()
        .unwrap_or(0)
        .clamp(6, 40);
    println!(
        "{}  {:<8} {:<22} {:>10} {:>4}  {:<10} SERVES",
        pad("SERVER", width),
        "STATE",
        "GRPC",
        "GENERATION",
        "LAG",
        "HEARTBEAT"
    );
    for s in &servers {
        let state = if s.gone {
            "gone"
        } else if !s.problem.is_empty() || !s.degraded.is_empty() {
            "degraded"
        } else {
            "live"
        };
        let held = |h: &crate::registry::servers::Held| {
            format!(
                "{} (id {}, {})",
                quoted(&h.model_name),
                h.model_id,
                &h.sha256[..h.sha256.len().min(12)]
            )
        };
        let mut serves = s.serving.active.as_ref().map_or_else(|| "nothing".to_string(), held);
        if let Some(c) = &s.serving.canary {
            serves.push_str(&format!("; canary {} {}%", held(c), c.percentage.unwrap_or(0)));
        }
        if let Some(sh) = &s.serving.shadow {
            serves.push_str(&format!("; shadow {} {}%", held(sh), sh.percentage.unwrap_or(0)));
        }
        println!(
            "{}  {:<8} {:<22} {:>10} {:>4}  {:<10} {serves}",
            pad(&s.server_name, width),
            state,
            s.grpc_address,
            s.applied_generation,
            s.lag(generation),
            format!("{:.1} s ago", s.heartbeat_age_ms as f64 / 1000.0),
        );
        if !s.problem.is_empty() {
            println!(
                "{}  cannot apply generation {}: {}",
                pad("", width),
                s.problem_generation,
                s.problem
            );
        }
        if !s.degraded.is_empty() {
            println!("{}  degraded: {}", pad("", width), s.degraded);
        }
    }
    Ok(())
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

async fn events(a: EventsArgs) -> anyhow::Result<()> {
    let control = app::control(&a.registry, cli_origin()).await?;
    let registry = control.registry();
    let last = registry.last_event_id().await?;
    let mut after = (last - a.limit.max(0)).max(0);
    loop {
        let batch = registry.events_after(after, 1000).await?;
        for e in &batch {
            after = e.event_id;
            if a.json {
                println!(
                    "{}",
                    json!({"event_id": e.event_id, "kind": e.kind, "model_id": e.model_id, "model_name": e.model_name,
                           "source": e.source, "server": e.server, "detail": e.detail, "created_at": e.created_at})
                );
            } else {
                println!(
                    "{:>6}  {}  {:<13} {:<20} source={} server={}{}",
                    e.event_id,
                    e.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    e.kind,
                    e.model_name,
                    e.source,
                    e.server,
                    if e.detail.is_empty() {
                        String::new()
                    } else {
                        format!("  {}", e.detail)
                    }
                );
            }
        }
        if !a.follow {
            return Ok(());
        }
        if batch.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
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

/// `s` padded with spaces to `width` terminal columns (wide characters count two), cut with an
/// ellipsis when longer (`--json` shows every name whole).
fn pad(s: &str, width: usize) -> String {
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

fn print_activation(a: &ActivationOutcome) {
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

fn activation_json(a: &ActivationOutcome) -> Value {
    json!({
        "active": record_json(&a.active),
        "previous": a.previous.as_ref().map(record_json),
        "load_time_ms": a.load_time.as_secs_f64() * 1e3,
        "already_active": a.already_active,
    })
}

/// A connection to a running server, with the token on every call.
type Conn = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call (when there is a token).
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// Connects to the server the arguments name.
async fn connect(c: &crate::config::ClientArgs) -> anyhow::Result<Conn> {
    let address = &c.server;
    let mut endpoint = tonic::transport::Endpoint::from_shared(address.clone()).map_err(|e| {
        Usage(format!(
            "--server {address:?} is not a server address ({e}); e.g. http://127.0.0.1:50051"
        ))
    })?;
    if address.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &c.tls_ca {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(ca).with_context(|| format!("cannot read --tls-ca {}", ca.display()))?,
            )),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&c.tls_client_cert, &c.tls_client_key) {
            let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
            tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(d) = &c.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    } else if c.tls_ca.is_some() || c.tls_client_cert.is_some() {
        return Err(Usage(format!(
            "--tls-ca and --tls-client-cert need an https:// server, not {address}"
        ))
        .into());
    }
    let bearer = match &c.token {
        Some(t) => Some(
            format!("Bearer {}", t.trim())
                .parse()
                .map_err(|_| Usage("the token has characters a header cannot carry".into()))?,
        ),
        None => None,
    };
    let channel = endpoint.connect().await.map_err(|e| NoServer {
        address: address.clone(),
        why: root_cause(&e),
    })?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer(bearer),
    ))
}

/// `modeld status`: GetServerStatus, for people (or as JSON).
/// A live server of the registry at `url` that this machine can reach, as `http://host:port`;
/// `None` when the registry does not exist here or names none.
async fn live_server(url: &str) -> Option<(String, String)> {
    // Never create a SQLite file just to look in it.
    if let Some(file) = crate::registry::Registry::sqlite_path(url)
        && !file.exists()
    {
        return None;
    }
    let registry = crate::registry::Registry::connect(url).await.ok()?;
    let servers = registry.servers().await.ok()?;
    registry.close().await;
    let me = app::hostname();
    servers.into_iter().filter(|s| !s.gone).find_map(|s| {
        let addr: std::net::SocketAddr = s.grpc_address.parse().ok()?;
        let host = match addr.ip() {
            ip if ip.is_unspecified() && s.host == me => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => s.host.clone(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        Some((format!("http://{host}:{}", addr.port()), s.server_name))
    })
}

async fn status(a: crate::config::StatusArgs) -> anyhow::Result<()> {
    let named = a.client.server != crate::config::DEFAULT_SERVER || std::env::var_os("MODELD_SERVER").is_some();
    let channel = match connect(&a.client).await {
        Ok(c) => c,
        // No server at the default address and none named: ask one the registry knows.
        Err(e) if !named && e.downcast_ref::<NoServer>().is_some() => match live_server(&a.database_url).await {
            Some((address, name)) => {
                eprintln!(
                    "no server at {}; asking {} at {address}, a live server of the registry (modeld fleet lists them)",
                    a.client.server,
                    quoted(&name)
                );
                let mut client = a.client.clone();
                client.server = address;
                connect(&client).await?
            }
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let s = pb::model_registry_client::ModelRegistryClient::new(channel)
        .get_server_status(pb::GetServerStatusRequest {})
        .await
        .map_err(ServerSaid)?
        .into_inner();
    let name = |m: &Option<pb::Model>| {
        m.as_ref().map_or_else(
            || "none".to_string(),
            |m| {
                format!(
                    "{} (id {}, version {})",
                    quoted(&m.model_name),
                    m.model_id,
                    quoted(&m.version)
                )
            },
        )
    };
    let rollout = s.rollout.clone().unwrap_or_default();
    let shadows: Vec<Value> = rollout
        .shadows
        .iter()
        .map(|f| {
            json!({"model_id": f.model_id, "model_name": f.model_name, "mirrored": f.mirrored, "dropped": f.dropped,
                   "errors": f.errors, "rows_compared": f.rows_compared, "rows_agreed": f.rows_agreed,
                   "agreement": f.agreement, "max_abs_diff": f.max_abs_diff, "mean_abs_diff": f.mean_abs_diff,
                   "latency_mean_us": f.latency_mean_us, "latency_max_us": f.latency_max_us, "calls": f.calls})
        })
        .collect();
    if a.json {
        let model = |m: &Option<pb::Model>| {
            m.as_ref()
                .map(|m| json!({"model_id": m.model_id, "model_name": m.model_name, "version": m.version}))
        };
        println!(
            "{}",
            json!({
                "server": s.server,
                "serving": model(&s.serving),
                "registry_active": model(&s.registry_active),
                "degraded": s.degraded,
                "degradations": s.degradations.iter().map(|d| d.message.clone()).collect::<Vec<_>>(),
                "canary": model(&rollout.canary),
                "canary_percentage": rollout.canary_percentage,
                "shadow": model(&rollout.shadow),
                "shadow_percentage": rollout.shadow_percentage,
                "shadows": shadows,
                "candidates": s.candidates.as_ref().map(|c| c.cached.iter().map(|m| m.model_name.clone()).collect::<Vec<_>>()),
                "resident_bytes": s.resident_bytes,
                "in_flight_requests": s.in_flight_requests,
                "rollback_windows": s.rollback_windows.iter().map(window_json).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!("server    {}", s.server);
    println!("serving   {}", name(&s.serving));
    if rollout.canary.is_some() {
        println!("canary    {} at {}%", name(&rollout.canary), rollout.canary_percentage);
    }
    if rollout.shadow.is_some() {
        println!("shadow    {} at {}%", name(&rollout.shadow), rollout.shadow_percentage);
    }
    for f in &rollout.shadows {
        println!(
            "  shadow {}: mirrored {}, dropped {}, errors {}, top-1 agreement {:.1}% of {} rows, output difference max {:.3e} mean {:.3e}, {} calls, latency mean {:.0} µs a call",
            quoted(&f.model_name),
            f.mirrored,
            f.dropped,
            f.errors,
            f.agreement * 100.0,
            f.rows_compared,
            f.max_abs_diff,
            f.mean_abs_diff,
            f.calls,
            f.latency_mean_us
        );
    }
    if let Some(c) = &s.candidates
        && !c.cached.is_empty()
    {
        let names: Vec<String> = c.cached.iter().map(|m| quoted(&m.model_name)).collect();
        println!("candidates {}", names.join(", "));
    }
    for w in &s.rollback_windows {
        println!("guard     {}", describe_window(w));
    }
    println!("memory    {:.1} MB resident", s.resident_bytes as f64 / 1e6);
    if s.degraded {
        for d in &s.degradations {
            println!("degraded  {}", d.message);
        }
    }
    Ok(())
}

/// A model's rollback window on one line: its role, what the window holds, and the policy it
/// is held to.
fn describe_window(w: &pb::RollbackWindow) -> String {
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

fn window_json(w: &pb::RollbackWindow) -> Value {
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

async fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let channel = connect(&a.client).await?;
    // The signature of what the server serves comes from its memory (ModelMetadata answers
    // while the registry is unreachable); other models' from the registry.
    let metadata = kserve_pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel.clone())
        .model_metadata(kserve_pb::ModelMetadataRequest {
            name: a.model.clone(),
            version: String::new(),
        })
        .await
        .map_err(ServerSaid)
        .context("cannot read the model's signature")?
        .into_inner();
    let first = metadata.inputs.first().context("the model has no inputs")?;
    let name = a.input_name.clone().unwrap_or_else(|| first.name.clone());
    // A bad input file is refused like a bad input the server would refuse (exit code 4).
    let inputs =
        read_inputs(&a.input, &name, &first.datatype).map_err(|e| crate::Error::InvalidArgument(format!("{e:#}")))?;

    let mut client = pb::inference_client::InferenceClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let resp = client
        .predict(pb::PredictRequest {
            model_name: a.model.clone(),
            inputs,
            routing_key: String::new(),
        })
        .await
        .map_err(ServerSaid)?
        .into_inner();
    let outputs: Vec<Value> = resp
        .outputs
        .iter()
        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": tensor_values(t)}))
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "model_id": resp.model_id,
            "model_name": resp.model_name,
            "model_version": resp.model_version,
            "role": resp.role,
            "outputs": outputs,
        }))?
    );
    Ok(())
}

/// Reads `.npy` (sent as raw bytes) or `.json` (sent as typed values).
fn read_inputs(path: &Path, name: &str, default_datatype: &str) -> anyhow::Result<Vec<pb::Tensor>> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {shown}"))?;
    if path.extension().is_some_and(|e| e == "npy") {
        return Ok(vec![
            npy_tensor(&bytes, name).with_context(|| format!("cannot use {shown}"))?,
        ]);
    }
    let value: Value = serde_json::from_slice(&bytes).with_context(|| format!("{shown} is not JSON"))?;
    if let Some(list) = value.get("inputs").and_then(Value::as_array) {
        return list
            .iter()
            .map(|i| {
                let name = i
                    .get("name")
                    .and_then(Value::as_str)
                    .context("an input has no \"name\"")?;
                let datatype = i.get("datatype").and_then(Value::as_str).unwrap_or(default_datatype);
                let data = i.get("data").context("an input has no \"data\"")?;
                let (mut flat, inferred) = (Vec::new(), flatten(data, &mut Vec::new(), 0)?);
                collect(data, &mut flat);
                let shape = match i.get("shape") {
                    Some(s) => serde_json::from_value(s.clone()).context("\"shape\" must be a list of integers")?,
                    None => inferred,
                };
                typed_tensor(name, datatype, shape, &flat)
            })
            .collect();
    }
    let shape = flatten(&value, &mut Vec::new(), 0)?;
    let mut flat = Vec::new();
    collect(&value, &mut flat);
    Ok(vec![typed_tensor(name, default_datatype, shape, &flat)?])
}

/// The shape of a nested JSON array (checking it is rectangular).
fn flatten(v: &Value, shape: &mut Vec<i64>, depth: usize) -> anyhow::Result<Vec<i64>> {
    match v {
        Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len() as i64);
            } else if shape[depth] != items.len() as i64 {
                bail!("the JSON array is ragged: rows of different lengths at depth {depth}");
            }
            for item in items {
                flatten(item, shape, depth + 1)?;
            }
            Ok(shape.clone())
        }
        Value::Number(_) | Value::Bool(_) => Ok(shape.clone()),
        other => bail!("expected numbers in the input array, found {other}"),
    }
}

fn collect<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        other => out.push(other),
    }
}

fn typed_tensor(name: &str, datatype: &str, shape: Vec<i64>, values: &[&Value]) -> anyhow::Result<pb::Tensor> {
    let mut t = pb::Tensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        ..Default::default()
    };
    let num = |v: &Value| v.as_f64().with_context(|| format!("{v} is not a number"));
    let int = |v: &Value| v.as_i64().with_context(|| format!("{v} is not an integer"));
    match datatype {
        "FP32" => {
            t.fp32_data = values
                .iter()
                .map(|v| num(v).map(|x| x as f32))
                .collect::<anyhow::Result<_>>()?
        }
        "FP64" => t.fp64_data = values.iter().map(|v| num(v)).collect::<anyhow::Result<_>>()?,
        "INT64" => t.int64_data = values.iter().map(|v| int(v)).collect::<anyhow::Result<_>>()?,
        "INT8" | "INT16" | "INT32" => {
            t.int32_data = values
                .iter()
                .map(|v| Ok(i32::try_from(int(v)?)?))
                .collect::<anyhow::Result<_>>()?;
        }
        "UINT8" | "UINT16" | "UINT32" => {
            t.uint32_data = values
                .iter()
                .map(|v| Ok(u32::try_from(int(v)?)?))
                .collect::<anyhow::Result<_>>()?;
        }
        "UINT64" => {
            t.uint64_data = values
                .iter()
                .map(|v| v.as_u64().with_context(|| format!("{v} is not a UINT64")))
                .collect::<anyhow::Result<_>>()?;
        }
        "BOOL" => {
            t.bool_data = values
                .iter()
                .map(|v| v.as_bool().with_context(|| format!("{v} is not a bool")))
                .collect::<anyhow::Result<_>>()?;
        }
        other => bail!("datatype {other:?} cannot be written in JSON here"),
    }
    Ok(t)
}

fn npy_tensor(bytes: &[u8], name: &str) -> anyhow::Result<pb::Tensor> {
    let npy = npyz::NpyFile::new(bytes)?;
    if npy.order() != npyz::Order::C {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    let descr = npy.dtype().descr();
    let descr = descr.trim_matches('\'').trim_start_matches(['<', '|', '=']);
    macro_rules! raw {
        ($t:ty, $dt:literal) => {{
            let v: Vec<$t> = npy.into_vec()?;
            ($dt, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
        }};
    }
    let (datatype, raw_data) = match descr {
        "f4" => raw!(f32, "FP32"),
        "f8" => raw!(f64, "FP64"),
        "i1" => raw!(i8, "INT8"),
        "i2" => raw!(i16, "INT16"),
        "i4" => raw!(i32, "INT32"),
        "i8" => raw!(i64, "INT64"),
        "u1" => raw!(u8, "UINT8"),
        "u2" => raw!(u16, "UINT16"),
        "u4" => raw!(u32, "UINT32"),
        "u8" => raw!(u64, "UINT64"),
        "b1" => {
            let v: Vec<bool> = npy.into_vec()?;
            ("BOOL", v.iter().map(|&b| u8::from(b)).collect())
        }
        other => bail!("unsupported .npy dtype {other:?} (big-endian or exotic)"),
    };
    Ok(pb::Tensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        raw_data,
        ..Default::default()
    })
}

/// A wire tensor's values as JSON numbers, whichever field carries them.
fn tensor_values(t: &pb::Tensor) -> Value {
    if t.raw_data.is_empty() {
        return match t.datatype.as_str() {
            "FP32" => json!(t.fp32_data),
            "FP64" => json!(t.fp64_data),
            "INT64" => json!(t.int64_data),
            "UINT64" => json!(t.uint64_data),
            "BOOL" => json!(t.bool_data),
            "UINT8" | "UINT16" | "UINT32" => json!(t.uint32_data),
            _ => json!(t.int32_data),
        };
    }
    macro_rules! le {
        ($t:ty) => {
            json!(
                t.raw_data
                    .chunks_exact(size_of::<$t>())
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                    .collect::<Vec<$t>>()
            )
        };
    }
    match t.datatype.as_str() {
        "FP32" => le!(f32),
        "FP64" => le!(f64),
        "INT8" => le!(i8),
        "INT16" => le!(i16),
        "INT32" => le!(i32),
        "INT64" => le!(i64),
        "UINT8" => le!(u8),
        "UINT16" => le!(u16),
        "UINT32" => le!(u32),
        "UINT64" => le!(u64),
        "BOOL" => json!(t.raw_data.iter().map(|&b| b != 0).collect::<Vec<_>>()),
        _ => Value::Null,
    }
}

/// `modeld canary …` and `modeld shadow …`: registry changes every server follows.
async fn rollout(role: RolloutRole, action: crate::config::RolloutAction) -> anyhow::Result<()> {
    use crate::config::RolloutAction;
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
            let control = app::control(&a.registry, cli_origin()).await?;
            let model = model_ref(&a.model)?;
            if a.rollback_threshold.is_some()
                || a.min_samples.is_some()
                || a.window_secs.is_some()
                || a.rollback_p99_ms.is_some()
            {
                let r = control.registry().get(&model).await?;
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
                control.update(&model, &changes).await?;
            }
            let change = control
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
            check_served(await_served(&control, &a.wait, false).await?)?;
        }
        RolloutAction::Clear(a) => {
            let control = app::control(&a.registry, cli_origin()).await?;
            match control.clear_rollout(role, &a.by, &a.reason).await?.replaced {
                Some(old) => println!("{what} cleared: {} is testing again", describe(&old)),
                None => println!("{what}: none (nothing to clear)"),
            }
            check_served(await_served(&control, &a.wait, false).await?)?;
        }
        RolloutAction::Show(a) => {
            let control = app::control(&a.registry, cli_origin()).await?;
            let rollout = control.registry().rollout().await?;
            let held = rollout.get(role);
            let history = if a.history == 0 {
                Vec::new()
            } else {
                control
                    .registry()
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

fn percentage_text(p: Option<i32>) -> String {
    p.map_or_else(|| "-".to_string(), |p| format!("{p}%"))
}

/// One rollout history row on one line: when, who, the model, the move and why.
fn describe_rollout_change(c: &crate::registry::RolloutChangeRecord) -> String {
    let by = if c.is_automatic {
        format!("{} (automatic)", c.changed_by)
    } else {
        c.changed_by.clone()
    };
    let mut out = format!(
        "{}  {}  {}  {} -> {}",
        c.changed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        by,
        crate::registry::name::quoted(&c.model_name),
        percentage_text(c.percentage_before),
        percentage_text(c.percentage_after)
    );
    if !c.reason.is_empty() {
        out.push_str(": ");
        out.push_str(&c.reason);
    }
    out
}

fn rollout_change_json(c: &crate::registry::RolloutChangeRecord) -> serde_json::Value {
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

fn pb_model_ref(arg: &crate::config::ModelArg) -> anyhow::Result<pb::ModelRef> {
    Ok(match model_ref(arg)? {
        ModelRef::Id(id) => pb::ModelRef {
            r#ref: Some(pb::model_ref::Ref::ModelId(id)),
        },
        ModelRef::Name(name) => pb::ModelRef {
            r#ref: Some(pb::model_ref::Ref::ModelName(name)),
        },
    })
}

async fn download_url(a: crate::config::DownloadUrlArgs) -> anyhow::Result<()> {
    let channel = connect(&a.client).await?;
    let u = pb::model_registry_client::ModelRegistryClient::new(channel)
        .create_download_url(pb::CreateDownloadUrlRequest {
            model: Some(pb_model_ref(&a.model)?),
            expires_in_secs: a.expires_in.unwrap_or(0),
        })
        .await
        .map_err(ServerSaid)?
        .into_inner();
    if a.json {
        let expires_at = u
            .expires_at
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
            .map(|t| t.to_rfc3339());
        println!(
            "{}",
            json!({"url": u.url, "expires_at": expires_at, "sha256": u.sha256, "size_bytes": u.size_bytes})
        );
    } else {
        println!("{}", u.url);
    }
    Ok(())
}

async fn download(a: crate::config::DownloadArgs) -> anyhow::Result<()> {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let channel = connect(&a.client).await?;
    let mut stream = pb::model_registry_client::ModelRegistryClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .download_model(pb::DownloadModelRequest {
            model: Some(pb_model_ref(&a.model)?),
        })
        .await
        .map_err(ServerSaid)?
        .into_inner();
    let first = stream.message().await.map_err(ServerSaid)?;
    let Some(pb::DownloadChunk {
        part: Some(pb::download_chunk::Part::Header(header)),
    }) = first
    else {
        anyhow::bail!("the server did not start the download with its header");
    };
    let output = a
        .output
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(&header.file_name));
    let partial = {
        let mut name = output
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_default();
        name.push(".part");
        output.with_file_name(name)
    };
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(u64::try_from(header.size_bytes).unwrap_or(0))
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(header.file_name.clone());
    let mut hash = sha2::Sha256::new();
    let mut sent_sha = None;
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = stream.message().await.map_err(ServerSaid)? {
            match chunk.part {
                Some(pb::download_chunk::Part::Data(bytes)) => {
                    hash.update(&bytes);
                    file.write_all(&bytes).await?;
                    bar.inc(bytes.len() as u64);
                }
                Some(pb::download_chunk::Part::Sha256(s)) => sent_sha = Some(s),
                _ => {}
            }
        }
        file.flush().await?;
        let got = hex::encode(hash.finalize());
        if sent_sha.as_deref() != Some(got.as_str()) {
            anyhow::bail!("the download was cut short or corrupted on the way (sha256 {got}); try again");
        }
        if got != header.sha256 {
            anyhow::bail!(
                "the file's sha256 is {got}, the registry says {}: the server's file is not the registered one",
                header.sha256
            );
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, &output)
        .await
        .with_context(|| format!("cannot move the download to {}", output.display()))?;
    println!(
        "{} ({} bytes, sha256 {} checked)",
        output.display(),
        header.size_bytes,
        header.sha256
    );
    Ok(())
}

fn token(a: crate::config::TokenArgs) -> anyhow::Result<()> {
    use crate::auth::{Scope, Tokens};
    use crate::config::TokenAction;
    let mut tokens = Tokens::read(&a.tokens_file)?;
    match a.action {
        TokenAction::Create {
            name,
            scopes,
            expires_in_days,
        } => {
            let scopes = scopes
                .iter()
                .flat_map(|s| s.split(','))
                .map(Scope::parse)
                .collect::<crate::error::Result<Vec<_>>>()?;
            let expires = expires_in_days.map(|d| chrono::Utc::now() + chrono::Duration::days(i64::from(d)));
            let token = tokens.create(&name, &scopes, expires)?;
            tokens.write(&a.tokens_file)?;
            eprintln!(
                "token {name:?} ({}) recorded in {}; it is shown once, here:",
                scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
                a.tokens_file.display()
            );
            println!("{token}");
        }
        TokenAction::Revoke { name } => {
            if !tokens.revoke(&name) {
                bail!("no token named {name:?} in {}", a.tokens_file.display());
            }
            tokens.write(&a.tokens_file)?;
            println!("token {name:?} revoked");
        }
        TokenAction::List => {
            for e in tokens.entries() {
                let scopes: Vec<&str> = e.scopes.iter().map(|s| s.name()).collect();
                let expires = e.expires_at.map_or_else(|| "never".to_string(), |t| t.to_rfc3339());
                println!("{}  {}  expires {expires}", e.name, scopes.join(","));
            }
        }
    }
    Ok(())
}
