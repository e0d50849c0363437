//! The routing step: from a request's model name (or the alias) and routing key to the one
//! model it runs on, resolved from one snapshot of the serving set. Every API calls it once per
//! request, before anything is checked or computed, so a swap can never make a request check one
//! model and compute another.

use std::sync::Arc;

use crate::model::slot::{ServedModel, ServingSet};
use crate::registry::name;

/// Why a model serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The active model (by the alias or by its name).
    Active,
    /// The canary, by its name (routing by key comes with the canary percentage).
    Canary,
    /// A registered model that is not active, named explicitly.
    Candidate,
}

impl Role {
    /// The name in responses, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Canary => "canary",
            Self::Candidate => "candidate",
        }
    }
}

/// The model a request runs on, and why.
#[derive(Debug, Clone)]
pub struct Route {
    /// The model, for the whole request.
    pub model: Arc<ServedModel>,
    /// Why it serves this request.
    pub role: Role,
}

/// The model of `set` that a request for `name` runs on: the alias (empty or `active`) means
/// the active model, a name the model of that name in the set (in any Unicode normal form).
/// `None` when the set has no such model: the caller explains the miss (or, for a registered
/// candidate, loads it). `routing_key` picks between the active model and a canary once the
/// canary percentage exists; today it is unused.
pub fn resolve(set: &ServingSet, name: &str, routing_key: &str) -> Option<Route> {
    let _ = routing_key;
    let route = |model: &Arc<ServedModel>, role| {
        Some(Route {
            model: Arc::clone(model),
            role,
        })
    };
    if name::is_active_alias(name) || set.active.record.model_name == name {
        return route(&set.active, Role::Active);
    }
    if let Some(c) = set.canary.as_ref().filter(|c| c.model.record.model_name == name) {
        return route(&c.model, Role::Canary);
    }
    // A name in another normal form than the stored NFC one: rare, off the fast path above.
    let name = name::nfc(name);
    if set.active.record.model_name == name {
        return route(&set.active, Role::Active);
    }
    set.canary
        .as_ref()
        .filter(|c| c.model.record.model_name == name)
        .and_then(|c| route(&c.model, Role::Canary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::slot::Weighted;

    fn model(name: &str, id: i64) -> Arc<ServedModel> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_v1.onnx");
        let loaded = crate::model::load_model(&path, None, crate::model::EngineSettings::default()).unwrap();
        let mut m = ServedModel::unregistered(name, loaded);
        m.record.model_id = id;
        Arc::new(m)
    }

    #[test]
    fn names_and_the_alias_resolve_against_one_set() {
        let set = ServingSet {
            active: model("Modèle", 1),
            canary: Some(Weighted {
                model: model("next", 2),
                percentage: 0,
            }),
            shadow: None,
        };
        for (name, id, role) in [
            ("", 1, Role::Active),
            ("active", 1, Role::Active),
            ("Modèle", 1, Role::Active),
            ("Mode\u{300}le", 1, Role::Active),
            ("next", 2, Role::Canary),
        ] {
            let r = resolve(&set, name, "").unwrap_or_else(|| panic!("{name:?}"));
            assert_eq!((r.model.record.model_id, r.role), (id, role), "{name:?}");
        }
        assert!(resolve(&set, "other", "").is_none());
    }
}
