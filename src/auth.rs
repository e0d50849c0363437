//! Bearer tokens with scopes (issue 15, first step: the token store). A tokens file holds
//! only the sha256 of each token, with its name, scopes and optional expiry, one JSON object a
//! line; `modeld token create` prints a new token once and records its hash, `modeld token
//! revoke` removes it. Checking a presented token hashes it and compares the hash with every
//! entry in constant time, so neither the token nor its position leaks through timing; tokens
//! are never logged (only their names).
//!
//! Scopes: `admin` (registry and rollout changes; includes the other two), `predict`, `read`
//! (list, get, config, status, events).

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

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

/// One token of the file: its name, the sha256 of the token (never the token), its scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Who or what holds it (recorded as `created_by` / `activated_by`).
    pub name: String,
    /// Hex sha256 of the token.
    pub sha256: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl TokenEntry {
    /// Whether this token may act with `scope` (admin may do everything).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s == scope || *s == Scope::Admin)
    }
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token matches (unknown, revoked or mistyped).
    Unknown,
    /// The token matched, and expired at this time.
    Expired(DateTime<Utc>),
}

/// The tokens of a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
    /// Each entry's sha256, decoded once (a check compares bytes, it does not parse hex).
    digests: Vec<[u8; 32]>,
}

fn digest(token: &str) -> [u8; 32] {
    let d = Sha256::digest(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// Equal in time that depends only on the length.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// Parses a tokens file: one JSON entry a line; blank lines and `#` comments are skipped.
    ///
    /// # Errors
    /// `InvalidArgument` naming the line that is not an entry, or a name used twice.
    pub fn parse(text: &str) -> Result<Self> {
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let e: TokenEntry = serde_json::from_str(line)
                .map_err(|e| Error::InvalidArgument(format!("tokens file line {}: not a token entry: {e}", i + 1)))?;
            if e.sha256.len() != 64 || hex::decode(&e.sha256).is_err() {
                return Err(Error::InvalidArgument(format!(
                    "tokens file line {}: sha256 is not 64 hex digits",
                    i + 1
                )));
            }
            if entries.iter().any(|o| o.name == e.name) {
                return Err(Error::InvalidArgument(format!(
                    "tokens file line {}: the name {:?} is used twice",
                    i + 1,
                    e.name
                )));
            }
            entries.push(e);
        }
        let mut tokens = Self {
            entries,
            digests: Vec::new(),
        };
        tokens.index();
        Ok(tokens)
    }

    /// Reads a tokens file; a missing file has no tokens.
    ///
    /// # Errors
    /// When it cannot be read or parsed.
    pub fn read(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::FailedPrecondition(format!(
                "cannot read the tokens file {}: {e}",
                path.display()
            ))),
        }
    }

    /// Writes the file (through a temporary file and a rename, so a reader never sees half),
    /// readable by its owner only.
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text =
            String::from("# modeld tokens: the sha256 of each token, never the token (modeld token create|revoke)\n");
        for e in &self.entries {
            text.push_str(&serde_json::to_string(e).map_err(|e| Error::internal(format!("token entry: {e}")))?);
            text.push('\n');
        }
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| {
            Error::FailedPrecondition(format!("cannot write the tokens file {}: {e}", path.display()))
        };
        std::fs::write(&tmp, text).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn index(&mut self) {
        self.digests = self
            .entries
            .iter()
            .map(|e| {
                let mut d = [0u8; 32];
                // Checked at parse and made by create: always 64 hex digits.
                let _ = hex::decode_to_slice(&e.sha256, &mut d);
                d
            })
            .collect();
    }

    /// The entries (names, scopes, expiry; hashes only).
    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A new token named `name` with `scopes`: the entry is added (its hash only) and the
    /// token returned, to be shown once.
    ///
    /// # Errors
    /// `InvalidArgument` for an empty or taken name, or no scope; `Internal` when the system
    /// has no randomness.
    pub fn create(&mut self, name: &str, scopes: &[Scope], expires_at: Option<DateTime<Utc>>) -> Result<String> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "a token's name is 1-128 printable characters (it is recorded as created_by / activated_by)".into(),
            ));
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::AlreadyExists(format!(
                "a token named {name:?} exists; revoke it first (modeld token revoke {name})"
            )));
        }
        if scopes.is_empty() {
            return Err(Error::InvalidArgument(
                "give the token a scope: --scope admin, predict or read".into(),
            ));
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| Error::internal(format!("no randomness for a token: {e}")))?;
        let token = format!("mdl_{}", hex::encode(raw));
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        self.entries.push(TokenEntry {
            name: name.to_string(),
            sha256: hex::encode(digest(&token)),
            scopes,
            created_at: Utc::now(),
            expires_at,
        });
        self.index();
        Ok(token)
    }

    /// Removes the token named `name`; whether there was one.
    pub fn revoke(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.name != name);
        self.index();
        self.entries.len() != before
    }

    /// The entry of a presented token at `now`. Every entry is compared, in constant time.
    ///
    /// # Errors
    /// [`Refusal::Unknown`] or [`Refusal::Expired`].
    pub fn check(&self, presented: &str, now: DateTime<Utc>) -> std::result::Result<&TokenEntry, Refusal> {
        let d = digest(presented.trim());
        let mut found = None;
        for (e, stored) in self.entries.iter().zip(&self.digests) {
            if same(stored, &d) {
                found = Some(e);
            }
        }
        let e = found.ok_or(Refusal::Unknown)?;
        match e.expires_at {
            Some(t) if t <= now => Err(Refusal::Expired(t)),
            _ => Ok(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_checks_and_the_file_holds_only_its_hash() {
        let mut tokens = Tokens::default();
        let t = tokens.create("ci", &[Scope::Predict, Scope::Predict], None).unwrap();
        assert!(t.starts_with("mdl_") && t.len() == 68);
        let e = tokens.check(&t, Utc::now()).unwrap();
        assert_eq!((e.name.as_str(), e.scopes.as_slice()), ("ci", &[Scope::Predict][..]));
        assert!(e.allows(Scope::Predict) && !e.allows(Scope::Read) && !e.allows(Scope::Admin));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.jsonl");
        tokens.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&t) && !text.contains(&t[4..]), "never the token itself");
        let again = Tokens::read(&path).unwrap();
        assert_eq!(again, tokens);
        assert!(again.check(&t, Utc::now()).is_ok());
        assert_eq!(again.check("mdl_wrong", Utc::now()).unwrap_err(), Refusal::Unknown);
        assert_eq!(again.check("", Utc::now()).unwrap_err(), Refusal::Unknown);
    }

    #[test]
    fn admin_allows_everything_expired_and_revoked_tokens_do_not_check() {
        let mut tokens = Tokens::default();
        let admin = tokens.create("ops", &[Scope::Admin], None).unwrap();
        let at = Utc::now() + chrono::Duration::hours(1);
        let short = tokens.create("temp", &[Scope::Read], Some(at)).unwrap();
        let e = tokens.check(&admin, Utc::now()).unwrap();
        assert!(e.allows(Scope::Read) && e.allows(Scope::Predict) && e.allows(Scope::Admin));
        assert!(tokens.check(&short, Utc::now()).is_ok());
        assert_eq!(
            tokens.check(&short, at).unwrap_err(),
            Refusal::Expired(at),
            "time injected"
        );
        assert!(tokens.revoke("ops"));
        assert!(!tokens.revoke("ops"));
        assert_eq!(tokens.check(&admin, Utc::now()).unwrap_err(), Refusal::Unknown);
    }

    #[test]
    fn bad_names_scopes_and_files_are_refused() {
        let mut tokens = Tokens::default();
        tokens.create("ci", &[Scope::Read], None).unwrap();
        assert!(matches!(
            tokens.create("ci", &[Scope::Read], None),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            tokens.create(" ", &[Scope::Read], None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(tokens.create("x", &[], None), Err(Error::InvalidArgument(_))));
        assert!(
            Scope::parse("root")
                .unwrap_err()
                .to_string()
                .contains("admin, predict and read")
        );
        assert!(Tokens::parse("{not json}").unwrap_err().to_string().contains("line 1"));
        let line = r#"{"name":"a","sha256":"00","scopes":["read"],"created_at":"2026-01-01T00:00:00Z"}"#;
        assert!(Tokens::parse(line).unwrap_err().to_string().contains("64 hex"));
        let ok = format!(
            r#"{{"name":"a","sha256":"{}","scopes":["read"],"created_at":"2026-01-01T00:00:00Z"}}"#,
            "ab".repeat(32)
        );
        assert!(Tokens::parse(&format!("# comment\n\n{ok}\n")).is_ok());
        assert!(
            Tokens::parse(&format!("{ok}\n{ok}\n"))
                .unwrap_err()
                .to_string()
                .contains("used twice")
        );
        assert!(Tokens::read(Path::new("/nonexistent/tokens.jsonl")).unwrap().is_empty());
    }
}

/// What is open by default and may be made to need the `read` scope (`--protect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Protectable {
    /// The model config devices poll (`GetModelConfig`, `/api/v1/model-config`).
    ModelConfig,
    /// Signed downloads (`/api/v1/models/{id}/download`): then the signature and a token.
    Downloads,
    /// `/metrics`.
    Metrics,
    /// gRPC server reflection.
    Reflection,
}

/// What a method or route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health, the OpenAPI document, CORS preflights.
    Open,
    /// Nothing, unless the server protects it: then `read`.
    OpenUnless(Protectable),
    /// A token with this scope.
    Scope(Scope),
    /// A model's signature and readiness, which a client reads before it calls the model:
    /// `read` or `predict` (perf_analyzer, tritonclient and `modeld predict` ask for the
    /// metadata first, so a token that may predict may also ask what to send).
    Describe,
}

/// What a gRPC method (`/package.Service/Method`) needs. Unknown methods need `admin`.
pub fn grpc_need(path: &str) -> Need {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health" => Need::Open,
        s if s.starts_with("grpc.reflection.") => Need::OpenUnless(Protectable::Reflection),
        "modeld.v1.Inference" => Need::Scope(Scope::Predict),
        "inference.GRPCInferenceService" => match method {
            // The protocol's health checks, as /v2/health/* on HTTP.
            "ServerLive" | "ServerReady" => Need::Open,
            "ModelInfer" | "ModelStreamInfer" => Need::Scope(Scope::Predict),
            "ServerMetadata" | "ModelMetadata" | "ModelReady" | "ModelConfig" => Need::Describe,
            "RepositoryModelLoad" | "RepositoryModelUnload" => Need::Scope(Scope::Admin),
            _ => Need::Scope(Scope::Read),
        },
        "modeld.v1.ModelRegistry" => match method {
            "GetModelConfig" => Need::OpenUnless(Protectable::ModelConfig),
            "ListModels" | "GetModel" | "GetActiveModel" | "GetServerStatus" | "ListServers" | "WatchEvents"
            | "GetRollout" | "CreateDownloadUrl" | "DownloadModel" => Need::Scope(Scope::Read),
            _ => Need::Scope(Scope::Admin),
        },
        _ => Need::Scope(Scope::Admin),
    }
}

/// What an HTTP request needs.
pub fn http_need(method: &str, path: &str) -> Need {
    if method == "OPTIONS" || path.starts_with("/v2/health/") || path == "/api/v1/openapi.json" {
        return Need::Open;
    }
    // The admin page checks its own session cookie (http/admin.rs): a browser's event stream
    // cannot send an authorization header.
    if path == "/admin" || path.starts_with("/admin/") {
        return Need::Open;
    }
    if path == "/metrics" {
        return Need::OpenUnless(Protectable::Metrics);
    }
    if path == "/api/v1/model-config" {
        return Need::OpenUnless(Protectable::ModelConfig);
    }
    if path.starts_with("/api/v1/models/") && path.ends_with("/download") {
        return Need::OpenUnless(Protectable::Downloads);
    }
    if path.starts_with("/v2/repository/models/") {
        return Need::Scope(Scope::Admin);
    }
    if path.starts_with("/v2/") && path.ends_with("/infer") || path == "/api/v1/predict" {
        return Need::Scope(Scope::Predict);
    }
    if (method == "GET" || method == "HEAD") && describes(path) {
        return Need::Describe;
    }
    if path.starts_with("/v2") || method == "GET" || method == "HEAD" || path.ends_with("/download-url") {
        return Need::Scope(Scope::Read);
    }
    Need::Scope(Scope::Admin)
}

/// Whether `path` is the Open Inference Protocol's server or model metadata, readiness or
/// config (`/v2`, `/v2/models/{name}[/versions/{v}][/ready|/config]`), not its statistics.
fn describes(path: &str) -> bool {
    if path == "/v2" || path == "/v2/" {
        return true;
    }
    let Some(rest) = path.strip_prefix("/v2/models/") else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('/').collect();
    if matches!(parts.last(), Some(&("ready" | "config"))) {
        parts.pop();
    }
    match parts.as_slice() {
        [name] => *name != "stats" && !name.is_empty(),
        [name, "versions", v] => !name.is_empty() && !v.is_empty(),
        _ => false,
    }
}

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
