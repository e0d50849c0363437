//! A request's way to its model: route it once ([`Inference::route`]: the serving set, else a
//! candidate from the cache), then run it on that model ([`Inference::infer`]) and record
//! statistics.

use std::sync::Arc;
use std::time::Instant;

use super::{Inference, load_blocking};
use crate::error::{Error, Result};
use crate::model::slot::ServedModel;
use crate::name::{self, quoted};
use crate::registry::{ModelRecord, ModelRef};
use crate::serving::route::{self, Role, Route};
use crate::serving::{self, InputRef};

/// How long a request that names a model the registry serves, and this server does not yet,
/// waits for this server's reload (bounded by its own deadline too).
pub const EARLY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Inference {
    /// The model a request for `name` (empty or `active`: the active model) runs on, resolved
    /// from one snapshot of the serving set, else a candidate: a registered model that is not
    /// active, from the candidate cache or loaded into it now. The registry is asked only for a
    /// name that is neither served nor cached. Call it once per request and check and compute
    /// on what it returns.
    ///
    /// # Errors
    /// `Unavailable` when nothing is loaded, when the name is not served here and the
    /// registry is unreachable, or when the registry's active model cannot be loaded here
    /// (after waiting for this server's reload, at most `deadline` and [`EARLY_WAIT`]); `NotFound` for an unknown name; for a candidate,
    /// `ResourceExhausted` when the cache has no room and its load's error when it cannot be
    /// loaded (nothing that serves changes).
    pub async fn route(&self, name: &str, routing_key: &str, deadline: Option<Instant>) -> Result<Route> {
        let set = self.core.slot.load();
        if let Some(route) = set.as_deref().and_then(|s| route::resolve(s, name, routing_key)) {
            return Ok(route);
        }
        if name::is_active_alias(name) {
            return Err(Error::Unavailable(
                "no model is loaded yet: register and activate one (modeld register --activate)".into(),
            ));
        }
        if let Some(model) = self.core.candidates.get_loaded(&name::nfc(name)) {
            return Ok(Route::to(model, Role::Candidate));
        }
        // Boxed: the registry's futures are large, and every request's future would carry
        // (and move) their size otherwise, served from memory or not (docs/benchmarks.md).
        let serving = set.as_ref().map(|s| s.active.record.model_name.clone());
        drop(set);
        Box::pin(self.route_from_registry(name, routing_key, deadline, serving)).await
    }

    /// [`Inference::route`] for a name this server neither serves nor has cached: asks the
    /// registry, waits for this server's reload for a model the registry serves, or loads a
    /// candidate.
    async fn route_from_registry(
        &self,
        name: &str,
        routing_key: &str,
        deadline: Option<Instant>,
        serving: Option<String>,
    ) -> Result<Route> {
        if !self.core.status.registry_reachable() {
            return Err(Error::Unavailable(format!(
                "model {} is not the model this server serves ({}), and the registry is unreachable; try again later",
                quoted(name),
                serving.map_or_else(|| "nothing".to_string(), |s| quoted(&s))
            )));
        }
        match self.core.registry.find(&ModelRef::Name(name.to_string())).await? {
            None => Err(self
                .core
                .registry
                .not_registered(&ModelRef::Name(name.to_string()))
                .await),
            // The registry serves it (active, canary) and this server has not caught up yet:
            // a request is never refused for being early. It waits for this server's reload.
            Some(r)
                if r.is_active
                    || matches!(
                        crate::registry::rollout::held_role(&r),
                        Some((crate::registry::RolloutRole::Canary, _))
                    ) =>
            {
                self.caught_up(deadline).await;
                let set = self.core.slot.load();
                if let Some(route) = set.as_deref().and_then(|s| route::resolve(s, name, routing_key)) {
                    return Ok(route);
                }
                if !r.is_active {
                    return Ok(Route::to(self.load_candidate(r).await?, Role::Candidate));
                }
                let why = self
                    .core
                    .status
                    .snapshot()
                    .last_error
                    .map_or_else(String::new, |(m, _, _)| format!(": {m}"));
                Err(Error::Unavailable(format!(
                    "model {} is active in the registry but this server cannot serve it yet (serving {}){why}",
                    quoted(name),
                    serving.map_or_else(|| "nothing".to_string(), |s| quoted(&s))
                )))
            }
            Some(record) => Ok(Route::to(self.load_candidate(record).await?, Role::Candidate)),
        }
    }

    /// [`Inference::route`] for a model named by id or by name (none: the active model, or the
    /// canary by routing key). The serving set knows its models' ids; the registry is asked
    /// for another id's name.
    ///
    /// # Errors
    /// As [`Inference::route`]; `NotFound` for an unknown id.
    pub async fn route_ref(
        &self,
        model: Option<&ModelRef>,
        routing_key: &str,
        deadline: Option<Instant>,
    ) -> Result<Route> {
        match model {
            None => self.route("", routing_key, deadline).await,
            Some(ModelRef::Name(name)) => self.route(name, routing_key, deadline).await,
            Some(ModelRef::Id(id)) => {
                let set = self.core.slot.load();
                let served = set.as_deref().and_then(|s| {
                    std::iter::once(&s.active)
                        .chain(s.canary.iter().map(|w| &w.model))
                        .find(|m| m.record.model_id == *id)
                        .map(|m| m.record.model_name.clone())
                });
                let name = match served {
                    Some(name) => name,
                    None => {
                        self.core
                            .reachable_registry()?
                            .get(&ModelRef::Id(*id))
                            .await?
                            .model_name
                    }
                };
                self.route(&name, routing_key, deadline).await
            }
        }
    }

    /// Waits until this server has applied the registry's current generation (its reload task
    /// is asked to read the registry now), at most until `deadline` and [`EARLY_WAIT`].
    async fn caught_up(&self, deadline: Option<Instant>) {
        let Ok(target) = self.core.registry.generation().await else {
            return;
        };
        let mut applied = self.core.status.subscribe_applied();
        self.core.status.kick_reload();
        let cap = Instant::now() + EARLY_WAIT;
        let until = deadline.map_or(cap, |d| d.min(cap));
        let _ = tokio::time::timeout_at(until.into(), applied.wait_for(|a| a.generation >= target)).await;
    }

    /// `record`'s model from the candidate cache, loaded into it (verified like any load: the
    /// registry's sha256 and signature) if it is not there.
    async fn load_candidate(&self, record: ModelRecord) -> Result<Arc<ServedModel>> {
        if !self.core.serving {
            return Err(Error::Unavailable("this process does not serve inference".into()));
        }
        let path = self.core.model_file(&record).await?;
        let expected = record.signature()?;
        let (shown, sha256, engine) = (
            record.file_path.clone(),
            record.checksum_sha256.clone(),
            self.core.engine,
        );
        let name = record.model_name.clone();
        self.core
            .candidates
            .get(&record, move || async move {
                let loaded = load_blocking(path, &shown, Some(sha256), engine).await?;
                if loaded.signature != expected {
                    // The checksum matched, so the registry's signature is wrong (edited by hand).
                    return Err(Error::FailedPrecondition(format!(
                        "candidate {}: its file's signature ({}) is not the registry's ({}); register it again",
                        quoted(&name),
                        loaded.signature.text(),
                        expected.text()
                    )));
                }
                Ok(loaded)
            })
            .await
    }

    /// Runs one inference request on the model `route` resolved: the one request path behind
    /// every API. Validates, runs (not at all once `deadline` has passed), encodes (raw bytes
    /// when `raw_outputs`), and records statistics.
    ///
    /// # Errors
    /// As [`serving::infer`]; `Unavailable` in a process that does not serve.
    pub async fn infer(
        &self,
        route: Route,
        inputs: &[InputRef<'_>],
        raw_outputs: bool,
        deadline: Option<Instant>,
    ) -> Result<serving::Inference> {
        let _in_flight = self.core.track_request();
        let started = Instant::now();
        let Some(executor) = &self.core.executor else {
            return Err(Error::Unavailable("this process does not serve inference".into()));
        };
        let model = route.model;
        let mirror = route
            .shadow
            .as_ref()
            .zip(self.core.shadows.as_ref())
            .map(|(s, runner)| (runner, s));
        let result = serving::infer(executor, Arc::clone(&model), inputs, raw_outputs, deadline, mirror).await;
        let took = started.elapsed();
        self.core
            .guard_record(route.role, &model.record, result.as_ref().map(|_| ()), took);
        match result {
            Ok(done) => {
                self.core.stats.success(
                    &model.record,
                    route.role,
                    model.model.engine.kind(),
                    &done.timings,
                    took,
                );
                Ok(done)
            }
            Err(e) => {
                self.core.stats.failure(&model.record, route.role, &e, took);
                Err(e)
            }
        }
    }
}

/// What observers (metrics, the server's status) read of the request path.
impl Inference {
    /// Requests being computed right now.
    pub fn in_flight(&self) -> u64 {
        self.core.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Per-model inference statistics.
    pub fn stats(&self) -> Vec<crate::serving::stats::ModelStats> {
        self.core.stats.snapshot()
    }

    /// The executor's queue and threads with the engine settings, in a serving process.
    pub fn executor(&self) -> Option<(&crate::serving::Executor, crate::model::EngineSettings)> {
        self.core.executor.as_ref().map(|e| (e, self.core.engine))
    }

    /// The candidate cache.
    pub fn candidates(&self) -> &crate::model::cache::Candidates {
        &self.core.candidates
    }

    /// The shadow runner, in a serving process.
    pub fn shadows(&self) -> Option<&crate::serving::shadow::Shadows> {
        self.core.shadows.as_ref()
    }
}
