//! Start-up's registry step: open the registry and the model root (or wait for a PostgreSQL
//! registry that cannot be reached yet), mark a SQLite file as in use, register `--model-dir`'s
//! files, and seed an empty registry from the manifest.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{RegistryArgs, ServeConfig};
use crate::model::{ModelRoot, Slot};
use crate::ops::{Builder, Services};
use crate::registry::{Backend, Origin, Registry};

/// Opens the registry, the model root and the object cache, ready to wire the services.
///
/// # Errors
/// When the database cannot be opened or migrated, or the model root does not exist.
pub async fn builder(registry: &RegistryArgs, origin: Origin) -> anyhow::Result<Builder> {
    let root = ModelRoot::new(&registry.model_root).context("opening the model root")?;
    let db = Registry::connect(&registry.database_url)
        .await
        .context("opening the model registry")?;
    let objects = crate::model::objects::Objects::new(
        registry
            .object_cache
            .clone()
            .unwrap_or_else(crate::model::objects::default_dir),
        registry.object_cache_bytes,
    )
    .with_hosts(registry.object_hosts.clone());
    Ok(Builder::new(db.with_origin(origin), root, Arc::new(Slot::new())).objects(Arc::new(objects)))
}

/// The services of a process that edits the registry and serves nothing (the CLI, tests).
///
/// # Errors
/// As [`builder`].
pub async fn services(registry: &RegistryArgs, origin: Origin) -> anyhow::Result<Services> {
    Ok(builder(registry, origin).await?.build())
}

/// Whether start-up waits out `e` (rather than failing): a PostgreSQL registry that cannot be
/// reached yet (a fleet whose database starts after it, or restarts). Anything else (a bad
/// URL, a missing model root, a SQLite file that cannot be opened) fails at once.
pub(super) fn waits_for(registry: &RegistryArgs, e: &anyhow::Error) -> bool {
    Backend::of_url(&registry.database_url) == Backend::Postgres
        && e.chain().any(|c| {
            c.downcast_ref::<crate::Error>()
                .is_some_and(|e| matches!(e, crate::Error::Unavailable(_)) || e.is_unreachable())
        })
}

/// [`builder`], retried while [`waits_for`] holds with a growing pause up to 5 s, said in the
/// log every minute (the first failure is said by the caller).
pub(super) async fn builder_when_reachable(registry: &RegistryArgs, origin: Origin) -> anyhow::Result<Builder> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    let mut said = std::time::Instant::now();
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        match builder(registry, origin.clone()).await {
            Ok(c) => {
                tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "the registry answers");
                return Ok(c);
            }
            Err(e) if waits_for(registry, &e) => {
                if said.elapsed() >= Duration::from_secs(60) {
                    tracing::warn!(error = %format!("{e:#}"), "the registry cannot be reached yet; still waiting for it");
                    said = std::time::Instant::now();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// `--model-dir DIR`: DIR becomes the model root, with an embedded registry of its own unless
/// a database is named, and no seeding.
pub(super) fn use_model_dir(config: &mut ServeConfig) {
    if let Some(dir) = config.model_dir.clone() {
        config.registry.model_root.clone_from(&dir);
        if config.registry.database_url == crate::config::DEFAULT_DATABASE_URL {
            config.registry.database_url = model_dir_database(&dir);
        }
        config.no_seed = true;
    }
}

/// The embedded registry of `--model-dir DIR`: a SQLite file in the temp dir named for DIR (the
/// directory itself may be read-only, as KServe mounts it).
fn model_dir_database(dir: &std::path::Path) -> String {
    use sha2::Digest;
    let full = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let tag = hex::encode(&sha2::Sha256::digest(full.to_string_lossy().as_bytes())[..8]);
    let file = std::env::temp_dir().join(format!("modeld-model-dir-{tag}.db"));
    format!("sqlite://{}?mode=rwc", file.display())
}

/// Registers every `.onnx` file under `dir` that the registry does not have yet (a single one
/// under `name` when given, others by their path without `.onnx`, `/` as `-`), and activates
/// the first when nothing is active.
pub(super) async fn register_model_dir(
    services: &Services,
    dir: &std::path::Path,
    name: Option<&str>,
) -> anyhow::Result<()> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "onnx") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    if files.is_empty() {
        anyhow::bail!("--model-dir {}: no .onnx file under it", dir.display());
    }
    let known = services
        .catalogue
        .list(crate::registry::Order::default(), false, i64::MAX, 0)
        .await?;
    let mut active = services.catalogue.active().await?.is_some();
    for file in &files {
        let rel = file
            .strip_prefix(dir)
            .map_err(|_| anyhow::anyhow!("{} is outside {}", file.display(), dir.display()))?
            .to_string_lossy()
            .into_owned();
        if known.iter().any(|m| m.file_path == rel) {
            continue;
        }
        let model_name = match name {
            Some(n) if files.len() == 1 => n.to_string(),
            _ => rel.trim_end_matches(".onnx").replace('/', "-"),
        };
        let done = services
            .activation
            .register(crate::ops::Registration {
                name: model_name.clone(),
                file_path: rel.clone(),
                version: "1".into(),
                created_by: "model-dir".into(),
                activate: !active,
                ..Default::default()
            })
            .await
            .with_context(|| format!("--model-dir: registering {rel}"))?;
        tracing::info!(model = %model_name, file = %rel, active = !active, "registered from --model-dir");
        active = active || done.activation.is_some();
    }
    Ok(())
}

/// Marks a SQLite registry file as in use (`.<name>.in-use` beside it, which `rm modeld.db*`
/// leaves), and says loudly when a registry file had to be created where one was in use: its
/// models and history are gone unless a backup is restored, and a new registry (seeded from
/// the manifest) starts in their place.
pub(super) fn in_use_marker(file: &std::path::Path, fresh: bool) {
    let Some(name) = file.file_name() else { return };
    let marker = file.with_file_name(format!(".{}.in-use", name.to_string_lossy()));
    if fresh && let Ok(was) = std::fs::read_to_string(&marker) {
        tracing::error!(
            file = %file.display(),
            marker = %marker.display(),
            "the registry database {} did not exist and was created empty, but a registry was in use at this path \
             ({}): its models and activation history are gone unless you restore it from a backup (stop the server, \
             put the file back, start again). Delete {} to start afresh without this message",
            file.display(),
            was.trim(),
            marker.display()
        );
    }
    let note = format!(
        "used by modeld {} since {}",
        env!("CARGO_PKG_VERSION"),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    if fresh || !marker.exists() {
        let _ = std::fs::write(&marker, note);
    }
}

/// Registers and activates the seed manifest's models when the registry is empty (a failure is
/// logged: the server still starts).
pub(super) async fn seed(services: &Services, config: &ServeConfig) {
    if config.no_seed {
        return;
    }
    let manifest = services.catalogue.root().path().join(&config.seed_manifest);
    if manifest.is_file() {
        match services.activation.seed(&manifest).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(models = n, manifest = %manifest.display(), "seeded the empty registry"),
            Err(e) => tracing::error!(error = %e, "seeding the registry failed"),
        }
    }
}
