//! Bearer tokens with scopes, a file a job: the token store (`tokens.rs`), what each route
//! needs (`policy.rs`) and the live check of a request (`check.rs`).
//!
//! Scopes: `admin` (registry and rollout changes; includes the other two), `predict`, `read`
//! (list, get, config, status, events).

mod check;
mod policy;
mod tokens;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use self::check::{Access, Caller, Denied, Holder};
pub use self::policy::{Need, Protectable, grpc_need, http_need};
pub use self::tokens::{Refusal, TokenEntry, Tokens};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Registry and rollout changes, and everything `read` and `predict` may do.
    Admin,
    /// Inference.
    Predict,
    /// List, get, config, status, events.
    Read,
}

impl Scope {
    /// The name in the tokens file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Predict => "predict",
            Self::Read => "read",
        }
    }

    /// Parses a scope's name.
    ///
    /// # Errors
    /// `InvalidArgument` naming the scopes there are.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "admin" => Ok(Self::Admin),
            "predict" => Ok(Self::Predict),
            "read" => Ok(Self::Read),
            other => Err(Error::InvalidArgument(format!(
                "unknown scope {other:?}; the scopes are admin, predict and read"
            ))),
        }
    }
}
