//! The routing step: from a request's model name (or the alias) and routing key to the one
//! model it runs on, resolved from one snapshot of the serving set. Every API calls it once per
//! request, before anything is checked or computed, so a swap can never make a request check one
//! model and compute another.

use std::sync::Arc;

use crate::model::slot::{ServedModel, ServingSet};
use crate::name;

/// Why a model serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The active model (by the alias or by its name).
    Active,
    /// The canary: by its name, or for its share of the alias's requests (by routing key).
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
    /// The shadow this request is also mirrored to, from the same snapshot: drawn for the
    /// shadow's share of the requests the active model serves.
    pub shadow: Option<Arc<ServedModel>>,
}

impl Route {
    /// A route with no mirroring.
    pub fn to(model: Arc<ServedModel>, role: Role) -> Self {
        Self {
            model,
            role,
            shadow: None,
        }
    }
}

/// The bucket (0-99) of a routing key: FNV-1a (64-bit, offset basis 0xcbf29ce484222325, prime
/// 0x100000001b3) over the key's UTF-8 bytes, modulo 100. Seedless: the same on every server,
/// platform and release, so a client can compute its own (docs/rollout.md has test vectors).
pub fn bucket(routing_key: &str) -> u8 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in routing_key.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % 100) as u8
}

/// A bucket for a request without a routing key: a fresh random draw each time.
pub(crate) fn random_bucket() -> u8 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, RandomState};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|s| {
        // xorshift64*: cheap, and plenty for a traffic split.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % 100) as u8
    })
}

/// The model of `set` that a request for `name` runs on: the alias (empty or `active`) means
/// the active model, or the canary for the requests whose routing key's bucket is below the
/// canary's percentage (a random draw when the key is empty); a name means the model of that
/// name in the set (in any Unicode normal form), never rerouted. `None` when the set has no
/// such model: the caller explains the miss (or, for a registered candidate, loads it).
pub fn resolve(set: &ServingSet, name: &str, routing_key: &str) -> Option<Route> {
    let route = |model: &Arc<ServedModel>, role| Some(Route::to(Arc::clone(model), role));
    let active = || {
        let shadow = set
            .shadow
            .as_ref()
            .filter(|s| s.percentage > 0 && random_bucket() < s.percentage)
            .map(|s| Arc::clone(&s.model));
        Some(Route {
            model: Arc::clone(&set.active),
            role: Role::Active,
            shadow,
        })
    };
    if name::is_active_alias(name) {
        if let Some(c) = set.canary.as_ref().filter(|c| c.percentage > 0) {
            let b = if routing_key.is_empty() {
                random_bucket()
            } else {
                bucket(routing_key)
            };
            if b < c.percentage {
                return route(&c.model, Role::Canary);
            }
        }
        return active();
    }
    if set.active.record.model_name == name {
        return active();
    }
    if let Some(c) = set.canary.as_ref().filter(|c| c.model.record.model_name == name) {
        return route(&c.model, Role::Canary);
    }
    // The shadow, named: tried like a candidate, from the model the set already holds.
    if let Some(s) = set.shadow.as_ref().filter(|s| s.model.record.model_name == name) {
        return route(&s.model, Role::Candidate);
    }
    // A name in another normal form than the stored NFC one: rare, off the fast path above.
    let name = name::nfc(name);
    if set.active.record.model_name == name {
        return active();
    }
    if let Some(s) = set.shadow.as_ref().filter(|s| s.model.record.model_name == name) {
        return route(&s.model, Role::Candidate);
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
        crate::testing::bundled("digits_v1.onnx", name, id)
    }

    #[test]
    fn names_and_the_alias_resolve_against_one_set() {
        let set = ServingSet {
            active: model("Modèle", 1),
            canary: Some(Weighted {
                model: model("next", 2),
                percentage: 0,
            }),
            shadow: Some(Weighted {
                model: model("mirror", 3),
                percentage: 0,
            }),
        };
        for (name, id, role) in [
            ("mirror", 3, Role::Candidate),
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

    /// The documented test vectors (docs/rollout.md), computed by an independent implementation.
    #[test]
    fn buckets_are_fnv1a_modulo_100() {
        for (key, want) in [
            ("", 37),
            ("a", 96),
            ("user-1", 8),
            ("user-42", 19),
            ("device-7f3a", 59),
            ("Zoë", 80),
            ("日本", 69),
        ] {
            assert_eq!(bucket(key), want, "{key:?}");
        }
    }

    #[test]
    fn the_alias_splits_by_key_and_names_are_never_rerouted() {
        let set = |percentage| ServingSet {
            active: model("a", 1),
            canary: Some(Weighted {
                model: model("c", 2),
                percentage,
            }),
            shadow: None,
        };
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let mut before: Option<Vec<Role>> = None;
        for p in [0, 10, 50, 100] {
            let s = set(p);
            let roles: Vec<Role> = keys.iter().map(|k| resolve(&s, "", k).unwrap().role).collect();
            let share = roles.iter().filter(|r| **r == Role::Canary).count() as f64 / 100.0;
            assert!((share - f64::from(p)).abs() <= 2.0, "{p}%: {share}%");
            // Raising the percentage only moves keys from active to canary.
            if let Some(b) = &before {
                assert!(
                    b.iter()
                        .zip(&roles)
                        .all(|(b, r)| *b == Role::Active || *r == Role::Canary)
                );
            }
            before = Some(roles);
            assert_eq!(
                resolve(&s, "a", "user-1").unwrap().role,
                Role::Active,
                "by name: pinned"
            );
        }
        // Without a key: a random draw, near the percentage.
        let s = set(30);
        let canary = (0..10_000)
            .filter(|_| resolve(&s, "active", "").unwrap().role == Role::Canary)
            .count();
        assert!((2_500..3_500).contains(&canary), "{canary} of 10000 at 30%");
    }
}
