//! The token store: a tokens file holds only the sha256 of each token, with its name, scopes
//! and optional expiry, one JSON object a line; `modeld token create` prints a new token once
//! and records its hash, `modeld token revoke` removes it. Checking a presented token hashes
//! it and compares the hash with every entry in constant time, so neither the token nor its
//! position leaks through timing; tokens are never logged (only their names).

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Scope;
use crate::error::{Error, Result};

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
