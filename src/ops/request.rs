//! A request's way to its model: route it once ([`Control::route`]), then run it on that model
//! ([`Control::infer`]) and record statistics.

use std::sync::Arc;
use std::time::Instant;

use super::Control;
use crate::error::{Error, Result};
use crate::registry::ModelRef;
use crate::registry::name::{self, quoted};
use crate::serving::route::{self, Route};
use crate::serving::{self, Inference, InputRef};

impl Control {
    /// The model a request for `name` (empty or `active`: the active model) runs on, resolved
    /// from one snapshot of the serving set; the registry is asked only to explain a miss. Call
    /// it once per request and check and compute on what it returns.
    ///
    /// # Errors
    /// `Unavailable` when nothing is loaded, or when the name is not served here and the
    /// registry is unreachable; `NotFound` for an unknown name; `FailedPrecondition` for a
    /// registered model that is not served.
    pub async fn route(&self, name: &str, routing_key: &str) -> Result<Route> {
        let set = self.slot.load();
        if let Some(route) = set.as_deref().and_then(|s| route::resolve(s, name, routing_key)) {
            return Ok(route);
        }
        if name::is_active_alias(name) {
            return Err(Error::Unavailable(
                "no model is loaded yet: register and activate one (modeld register --activate)".into(),
            ));
        }
        let serving = set.as_ref().map(|s| s.active.record.model_name.clone());
        if !self.status.registry_reachable() {
            return Err(Error::Unavailable(format!(
                "model {} is not the model this server serves ({}), and the registry is unreachable; try again later",
                quoted(name),
                serving.map_or_else(|| "nothing".to_string(), |s| quoted(&s))
            )));
        }
        match self.registry.find(&ModelRef::Name(name.to_string())).await? {
            None => Err(Error::NotFound(format!("model {} is not registered", quoted(name)))),
            Some(r) if r.is_active => Err(Error::Unavailable(format!(
                "model {} is active in the registry but not loaded on this server yet (serving {})",
                quoted(name),
                serving.map_or_else(|| "nothing".to_string(), |s| quoted(&s))
            ))),
            Some(_) => Err(Error::FailedPrecondition(format!(
                "model {} is registered but not active; the active model is {}",
                quoted(name),
                serving.map_or_else(|| "none".to_string(), |s| quoted(&s))
            ))),
        }
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
    ) -> Result<Inference> {
        let _in_flight = self.track_request();
        let started = Instant::now();
        let Some(executor) = &self.executor else {
            return Err(Error::Unavailable("this process does not serve inference".into()));
        };
        let model = route.model;
        match serving::infer(executor, Arc::clone(&model), inputs, raw_outputs, deadline).await {
            Ok(done) => {
                self.stats.success(
                    &model.record,
                    model.model.engine.kind(),
                    &done.timings,
                    started.elapsed(),
                );
                Ok(done)
            }
            Err(e) => {
                self.stats.failure(&model.record, &e, started.elapsed());
                Err(e)
            }
        }
    }
}
