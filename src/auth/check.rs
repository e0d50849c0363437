//! The live check: the server's [`Access`] (off, or on with its tokens, the file followed),
//! a request's bearer header checked against what its route needs, and who it was ([`Caller`],
//! [`Holder`]) or why not ([`Denied`]).

use std::path::Path;

use chrono::Utc;

use super::Scope;
use super::policy::{Need, Protectable};
use super::tokens::{Refusal, Tokens};

/// The name of the token a request came with, in the request's extensions (both transports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// Who an admin session belongs to: a token's name and the first 16 hex digits of its
/// stored hash (so a token revoked and created again under the same name does not carry its
/// old sessions). Empty when tokens are off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// The token's name (recorded as who made each change).
    pub name: String,
    /// The start of the token's stored sha256.
    pub fingerprint: String,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, a malformed header, or a token that does not check: UNAUTHENTICATED / 401.
    Unauthenticated(String),
    /// A good token without the scope: PERMISSION_DENIED / 403.
    PermissionDenied(String),
}

impl Denied {
    /// The words for the client.
    pub fn message(&self) -> &str {
        match self {
            Self::Unauthenticated(m) | Self::PermissionDenied(m) => m,
        }
    }

    /// What the client is told, on either transport.
    pub fn reply(&self) -> crate::error::Reply {
        use crate::error::{Kind, Reply};
        match self {
            Self::Unauthenticated(m) => Reply::new(Kind::Unauthenticated, m.clone()),
            Self::PermissionDenied(m) => Reply::new(Kind::PermissionDenied, m.clone()),
        }
    }
}

/// The server's access check. Off (every request passes, which the server allows only on
/// loopback or with `--allow-unauthenticated`) unless it was given a tokens file; then on for
/// the server's life: a file whose last token was revoked locks everything but what is open,
/// it never opens the server.
#[derive(Debug, Default)]
pub struct Access {
    /// Whether tokens are required: read on every request without taking the lock.
    on: bool,
    protected: Vec<Protectable>,
    tokens: std::sync::RwLock<Tokens>,
}

impl Access {
    /// A check that requires one of `tokens`, and `read` for what `protected` names.
    pub fn required(tokens: Tokens, protected: &[Protectable]) -> Self {
        Self {
            on: true,
            protected: protected.to_vec(),
            tokens: std::sync::RwLock::new(tokens),
        }
    }

    /// Whether tokens are required at all.
    pub fn enabled(&self) -> bool {
        self.on
    }

    /// How many tokens there are.
    pub fn count(&self) -> usize {
        self.tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries()
            .len()
    }

    /// Replaces the tokens (the file changed).
    pub fn replace(&self, tokens: Tokens) {
        let mut held = self.tokens.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *held = tokens;
    }

    /// Re-reads `path` whenever it changes; a file that cannot be read or parsed leaves the
    /// tokens as they were (and says so in the log).
    pub fn follow(self: &std::sync::Arc<Self>, path: &Path) -> crate::filewatch::FileWatch {
        let access = std::sync::Arc::clone(self);
        let file = path.to_path_buf();
        crate::filewatch::follow(vec![file.clone()], move || match std::fs::metadata(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => tracing::error!(
                file = %file.display(),
                "the tokens file is gone; the tokens read before stay in force until it is back"
            ),
            _ => match Tokens::read(&file) {
                Ok(tokens) => {
                    let names = tokens
                        .entries()
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    tracing::info!(file = %file.display(), tokens = tokens.entries().len(), "tokens file re-read: {names}");
                    access.replace(tokens);
                }
                Err(e) => tracing::error!(
                    file = %file.display(),
                    error = %e,
                    "the tokens file changed and cannot be used; the tokens read before stay in force"
                ),
            },
        })
    }

    /// What `need` comes to on this server: the scopes any one of which will do.
    fn resolve(&self, need: Need) -> Option<&'static [Scope]> {
        match need {
            Need::Open => None,
            Need::OpenUnless(p) if self.protected.contains(&p) => Some(&[Scope::Read]),
            Need::OpenUnless(_) => None,
            Need::Scope(Scope::Read) => Some(&[Scope::Read]),
            Need::Scope(Scope::Predict) => Some(&[Scope::Predict]),
            Need::Scope(Scope::Admin) => Some(&[Scope::Admin]),
            Need::Describe => Some(&[Scope::Read, Scope::Predict]),
        }
    }

    /// Admits a presented token (not a header: the admin page's sign-in sends the token
    /// itself) that may act with `scope`: the holder a session is then bound to.
    ///
    /// # Errors
    /// [`Denied`], as [`Access::check`] words it.
    pub fn admit(&self, token: &str, scope: Scope) -> std::result::Result<Holder, Denied> {
        if !self.on {
            return Ok(Holder::default());
        }
        self.check(Some(&format!("Bearer {}", token.trim())), Need::Scope(scope))?;
        let tokens = self.tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = tokens
            .check(token, Utc::now())
            .map_err(|_| Denied::Unauthenticated("the token changed while signing in; sign in again".into()))?;
        Ok(Holder {
            name: e.name.clone(),
            fingerprint: e.sha256[..16].to_string(),
        })
    }

    /// Whether `holder`'s token is still one this server knows, unexpired and allowed `scope`:
    /// a session ends when its token is revoked, replaced or expires.
    ///
    /// # Errors
    /// [`Denied::Unauthenticated`] (the token is gone or expired) or
    /// [`Denied::PermissionDenied`] (it lost the scope).
    pub fn holds(&self, holder: &Holder, scope: Scope) -> std::result::Result<(), Denied> {
        if !self.on {
            return Ok(());
        }
        let tokens = self.tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(e) = tokens
            .entries()
            .iter()
            .find(|e| e.name == holder.name && e.sha256.get(..16) == Some(holder.fingerprint.as_str()))
        else {
            return Err(Denied::Unauthenticated(
                "the session's token was revoked or replaced; sign in again".into(),
            ));
        };
        if e.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(Denied::Unauthenticated(
                "the session's token expired; sign in again".into(),
            ));
        }
        if !e.allows(scope) {
            return Err(Denied::PermissionDenied(format!(
                "the token {:?} no longer has the {} scope",
                e.name,
                scope.name()
            )));
        }
        Ok(())
    }

    /// Checks an `authorization` header value against `need`; the name of the token that
    /// passed (`None` when nothing was needed).
    ///
    /// # Errors
    /// [`Denied`], with words for the client (never the token).
    pub fn check(&self, authorization: Option<&str>, need: Need) -> std::result::Result<Option<String>, Denied> {
        if !self.on {
            return Ok(None);
        }
        let Some(scopes) = self.resolve(need) else {
            return Ok(None);
        };
        // The scheme's name is case-insensitive (RFC 9110 §11.1).
        let Some(token) = authorization.and_then(|h| {
            h.get(..7)
                .filter(|s| s.eq_ignore_ascii_case("bearer "))
                .map(|_| &h[7..])
        }) else {
            return Err(Denied::Unauthenticated(
                "this needs a bearer token: send the header authorization: Bearer <token> (modeld token create)".into(),
            ));
        };
        let tokens = self.tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match tokens.check(token, Utc::now()) {
            Ok(e) if scopes.iter().any(|s| e.allows(*s)) => Ok(Some(e.name.clone())),
            Ok(e) => Err(Denied::PermissionDenied(format!(
                "the token {:?} may {}; this needs the {} scope",
                e.name,
                e.scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
                scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(" or ")
            ))),
            Err(Refusal::Expired(t)) => Err(Denied::Unauthenticated(format!(
                "the token expired at {}",
                t.to_rfc3339()
            ))),
            Err(Refusal::Unknown) => Err(Denied::Unauthenticated(
                "the bearer token is not one this server knows (revoked, or mistyped)".into(),
            )),
        }
    }
}
