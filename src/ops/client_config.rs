//! The model configuration devices poll (guide 000: the `assessment-model-config` function):
//! which model version is active, the canary's and the shadow's versions and shares, the
//! rollback threshold and the oldest app version allowed, with an ETag derived from exactly
//! that content, so every server of a fleet gives the same ETag for the same configuration
//! and a client's `If-None-Match` is answered 304 until something it reads changes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Catalogue;
use crate::error::{Error, Result};
use crate::registry::ModelRecord;

/// The configuration for one platform, in the guide's camelCase JSON.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    /// The active model's version label.
    pub active_model_version: String,
    /// Its registry id.
    pub active_model_id: i64,
    /// Its name.
    pub active_model_name: String,
    /// Its file's sha256 (what a download must match).
    pub active_model_sha256: String,
    /// Its file's size.
    pub active_model_size_bytes: i64,
    /// The canary's share of requests (0 without a canary).
    pub rollout_percentage: u8,
    /// The canary's version, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_model_version: Option<String>,
    /// The canary's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_model_id: Option<i64>,
    /// The shadow's version, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_model_version: Option<String>,
    /// The shadow's share of requests (absent without a shadow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_percentage: Option<u8>,
    /// The active model's rollback threshold (error rate); absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_threshold: Option<f64>,
    /// The oldest app version that may use the active model on this platform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_app_version: Option<String>,
    /// The newest change to any of these models' records.
    pub updated_at: DateTime<Utc>,
    /// `"<hash>"`: changes exactly when one of the fields above but `updatedAt` changes.
    pub etag: String,
}

/// The platform a client names in `X-App-Platform`, normalised (`iOS` and `ios` alike);
/// `universal` when absent.
pub fn platform(header: Option<&str>) -> String {
    let p = header.map(str::trim).unwrap_or_default().to_ascii_lowercase();
    if p.is_empty() { "universal".into() } else { p }
}

fn min_app_version(model: &ModelRecord, platform: &str) -> Option<String> {
    let per_platform: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&model.min_app_versions).unwrap_or_default();
    per_platform
        .get(platform)
        .cloned()
        .or_else(|| model.min_app_version.clone())
}

impl ClientConfig {
    /// The configuration of `active`, the rollout roles and `platform`.
    pub fn of(
        active: &ModelRecord,
        canary: Option<&ModelRecord>,
        shadow: Option<&ModelRecord>,
        platform: &str,
    ) -> Self {
        let pct = |p: i32| u8::try_from(p.clamp(0, 100)).unwrap_or(0);
        let updated_at = [Some(active), canary, shadow]
            .into_iter()
            .flatten()
            .map(|m| m.updated_at)
            .max()
            .unwrap_or(active.updated_at);
        let mut config = Self {
            active_model_version: active.version.clone(),
            active_model_id: active.model_id,
            active_model_name: active.model_name.clone(),
            active_model_sha256: active.checksum_sha256.clone(),
            active_model_size_bytes: active.file_size_bytes,
            rollout_percentage: canary.map_or(0, |c| pct(c.rollout_percentage)),
            canary_model_version: canary.map(|c| c.version.clone()),
            canary_model_id: canary.map(|c| c.model_id),
            shadow_model_version: shadow.map(|s| s.version.clone()),
            shadow_percentage: shadow.map(|s| pct(s.shadow_percentage)),
            rollback_threshold: active.rollback_threshold,
            min_app_version: min_app_version(active, platform),
            updated_at,
            etag: String::new(),
        };
        config.etag = config.content_etag();
        config
    }

    /// The ETag of the content: the first 128 bits of the sha256 of the JSON of every field but
    /// `updatedAt` and `etag` (a model's description changing moves `updatedAt`, not what a
    /// client reads).
    fn content_etag(&self) -> String {
        let mut content = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = content.as_object_mut() {
            map.remove("updatedAt");
            map.remove("etag");
        }
        let digest = Sha256::digest(content.to_string().as_bytes());
        format!("\"{}\"", hex::encode(&digest[..16]))
    }

    /// Whether an `If-None-Match` value names this configuration: one of its entity tags
    /// (weak or strong) is this ETag, or it is `*`.
    pub fn matches(&self, if_none_match: &str) -> bool {
        if_none_match
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag)
    }
}

impl Catalogue {
    /// The model configuration for `platform`, from the registry.
    ///
    /// # Errors
    /// `NotFound` when no model is active; `Unavailable` when the registry is unreachable.
    pub async fn client_config(&self, platform: &str) -> Result<ClientConfig> {
        let registry = self.core.reachable_registry()?;
        let active = registry
            .active()
            .await?
            .ok_or_else(|| Error::NotFound("No active model found".into()))?;
        let rollout = registry.rollout().await?;
        Ok(ClientConfig::of(
            &active,
            rollout.canary.as_ref(),
            rollout.shadow.as_ref(),
            platform,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i64, version: &str) -> ModelRecord {
        let mut r = crate::testing::bundled("digits_v1.onnx", "m", id).record.clone();
        r.version = version.into();
        r
    }

    #[test]
    fn the_etag_follows_the_content_and_not_the_clock() {
        let mut active = record(1, "2");
        active.rollback_threshold = Some(0.05);
        let a = ClientConfig::of(&active, None, None, "ios");
        let mut later = active.clone();
        later.updated_at += chrono::Duration::seconds(5);
        later.description = "edited".into();
        let b = ClientConfig::of(&later, None, None, "ios");
        assert_eq!(a.etag, b.etag, "a metadata edit moves updatedAt only");
        assert_ne!(a.updated_at, b.updated_at);
        let mut canary = record(2, "3");
        canary.rollout_percentage = 10;
        let c = ClientConfig::of(&active, Some(&canary), None, "ios");
        assert_ne!(a.etag, c.etag);
        canary.rollout_percentage = 50;
        assert_ne!(c.etag, ClientConfig::of(&active, Some(&canary), None, "ios").etag);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"') && a.etag.len() == 34);
    }

    #[test]
    fn min_app_version_is_chosen_by_platform() {
        let mut active = record(1, "2");
        active.min_app_version = Some("2.0.0".into());
        active.min_app_versions = r#"{"ios": "2.3.0"}"#.into();
        let ios = ClientConfig::of(&active, None, None, "ios");
        let android = ClientConfig::of(&active, None, None, "android");
        assert_eq!(ios.min_app_version.as_deref(), Some("2.3.0"));
        assert_eq!(android.min_app_version.as_deref(), Some("2.0.0"));
        assert_ne!(ios.etag, android.etag);
        assert_eq!(platform(Some(" iOS ")), "ios");
        assert_eq!(platform(None), "universal");
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_the_wildcard() {
        let c = ClientConfig::of(&record(1, "2"), None, None, "ios");
        assert!(c.matches(&c.etag));
        assert!(c.matches(&format!("\"x\", W/{}", c.etag)));
        assert!(c.matches("*"));
        assert!(!c.matches("\"something-else\""));
        assert!(!c.matches(""));
    }
}
