//! Signed download URLs' keys and signatures (guide 004): what the HTTP download route, the
//! gRPC `CreateDownloadUrl` and the serve configuration share. A URL's signature is the
//! HMAC-SHA256, under the server's signing key, of the model id, its sha256 and the expiry;
//! two keys may be configured at once: the first signs, both verify (rotation).

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::registry::ModelRecord;

type HmacSha256 = Hmac<Sha256>;

/// The shortest signing key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// The keys that sign and verify download URLs: the first signs, every one verifies.
#[derive(Clone, Default)]
pub struct SigningKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("SigningKeys").field("keys", &self.keys.len()).finish()
    }
}

impl SigningKeys {
    /// Keys from text: one per line (or separated by commas), `#` comments and blank lines
    /// ignored, at most two, each at least [`MIN_KEY_BYTES`] bytes.
    ///
    /// # Errors
    /// `InvalidArgument` naming the rule a key breaks (never the key).
    pub fn parse(text: &str) -> Result<Self> {
        let keys: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        if keys.len() > 2 {
            return Err(Error::InvalidArgument(format!(
                "{} signing keys given; at most two (the new one first, the old one while URLs it signed expire)",
                keys.len()
            )));
        }
        if let Some(i) = keys.iter().position(|k| k.len() < MIN_KEY_BYTES) {
            return Err(Error::InvalidArgument(format!(
                "signing key {} is shorter than {MIN_KEY_BYTES} bytes (make one with: openssl rand -hex 32)",
                i + 1
            )));
        }
        Ok(Self { keys })
    }

    /// Whether a key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn mac(key: &[u8], model_id: i64, sha256: &str, expires: i64) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(format!("modeld-download\n{model_id}\n{sha256}\n{expires}").as_bytes());
        mac
    }

    /// A key for another purpose (`purpose` names it), derived from the signing key, so every
    /// server given the same key file derives the same one; `None` without a key.
    pub fn derive(&self, purpose: &str) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(format!("modeld-derive\n{purpose}").as_bytes());
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// The signature of a download of `model_id` with file `sha256` until `expires` (Unix
    /// seconds), in hex; `None` without a key.
    pub fn sign(&self, model_id: i64, sha256: &str, expires: i64) -> Option<String> {
        let key = self.keys.first()?;
        Some(hex::encode(
            Self::mac(key, model_id, sha256, expires).finalize().into_bytes(),
        ))
    }

    /// Whether `sig` is a signature of these facts under one of the keys (compared in
    /// constant time).
    pub fn verify(&self, model_id: i64, sha256: &str, expires: i64, sig: &str) -> bool {
        let Ok(sig) = hex::decode(sig) else { return false };
        self.keys
            .iter()
            .any(|key| Self::mac(key, model_id, sha256, expires).verify_slice(&sig).is_ok())
    }
}

/// Where URLs point and how long they may live.
#[derive(Debug, Clone, Default)]
pub struct DownloadConfig {
    /// The keys.
    pub keys: SigningKeys,
    /// The server's public base URL (`https://models.example.com`); empty: from the request's
    /// `Host` header.
    pub public_url: String,
    /// The longest expiry a URL may ask for, in seconds.
    pub max_expiry_secs: u64,
    /// The base of URLs made without a request's `Host` (gRPC, the CLI): the HTTP port's
    /// address, when `public_url` is empty.
    pub default_base: String,
}

/// The default expiry of a URL, in seconds.
pub const DEFAULT_EXPIRY_SECS: u64 = 3600;

/// A signed download URL.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DownloadUrl {
    /// The URL: it needs no other credential.
    pub url: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// The file's sha256: what the download must hash to.
    pub sha256: String,
    /// The file's size.
    pub size_bytes: i64,
}

/// A signed URL for `record` from `base` (`http://host:port`), expiring `expires_in` seconds
/// after `now`.
///
/// # Errors
/// `FailedPrecondition` without a signing key; `InvalidArgument` for an expiry of 0 or above
/// the maximum.
pub fn signed_url(
    config: &DownloadConfig,
    base: &str,
    record: &ModelRecord,
    expires_in: Option<u64>,
    now: DateTime<Utc>,
) -> Result<DownloadUrl> {
    if config.keys.is_empty() {
        return Err(Error::FailedPrecondition(
            "this server has no signing key for download URLs: start it with --signing-key-file FILE or \
             MODELD_SIGNING_KEYS (32 bytes or more; the same on every server of a fleet)"
                .into(),
        ));
    }
    let secs = expires_in.unwrap_or(DEFAULT_EXPIRY_SECS);
    if secs == 0 || secs > config.max_expiry_secs {
        return Err(Error::InvalidArgument(format!(
            "expires_in_secs is 1 to {} (--download-url-max-secs), got {secs}",
            config.max_expiry_secs
        )));
    }
    let expires = now.timestamp() + i64::try_from(secs).unwrap_or(i64::MAX / 2);
    let sig = config
        .keys
        .sign(record.model_id, &record.checksum_sha256, expires)
        .unwrap_or_default();
    let base = if config.public_url.is_empty() {
        base
    } else {
        &config.public_url
    };
    Ok(DownloadUrl {
        url: format!(
            "{}/api/v1/models/{}/download?expires={expires}&sig={sig}",
            base.trim_end_matches('/'),
            record.model_id
        ),
        expires_at: DateTime::from_timestamp(expires, 0).unwrap_or(now),
        sha256: record.checksum_sha256.clone(),
        size_bytes: record.file_size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signature_covers_the_id_the_checksum_and_the_expiry() {
        let keys = SigningKeys::parse(KEY).unwrap();
        let sig = keys.sign(7, "aa", 100).unwrap();
        assert!(keys.verify(7, "aa", 100, &sig));
        assert!(!keys.verify(8, "aa", 100, &sig));
        assert!(!keys.verify(7, "ab", 100, &sig));
        assert!(!keys.verify(7, "aa", 101, &sig));
        assert!(!keys.verify(7, "aa", 100, "zz"));
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert!(!keys.verify(7, "aa", 100, std::str::from_utf8(&flipped).unwrap()));
    }

    #[test]
    fn two_keys_rotate_the_first_signs_both_verify() {
        let old = SigningKeys::parse(KEY).unwrap();
        let new_key = "fedcba9876543210fedcba9876543210";
        let both = SigningKeys::parse(&format!("{new_key}\n# the old one, until its URLs expire\n{KEY}\n")).unwrap();
        let by_old = old.sign(1, "s", 5).unwrap();
        assert!(both.verify(1, "s", 5, &by_old), "URLs of the old key still work");
        let by_new = both.sign(1, "s", 5).unwrap();
        assert_ne!(by_new, by_old, "the new key signs");
        assert!(!old.verify(1, "s", 5, &by_new));
        assert!(
            SigningKeys::parse("short")
                .unwrap_err()
                .to_string()
                .contains("shorter than 32")
        );
        assert!(SigningKeys::parse(&format!("{KEY},{KEY},{KEY}")).is_err());
        assert!(!format!("{both:?}").contains(KEY), "keys never in Debug");
    }
}
