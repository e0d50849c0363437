//! Model files in object storage: a registry `file_path` may be an object URI — `s3://bucket/key`
//! (AWS, and S3-compatible stores through `AWS_ENDPOINT_URL`), `gs://`, `az://`, `https://` —
//! read through the object_store crate with the store's usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …).
//!
//! An object is fetched into a local content-addressed cache (`<sha256>.onnx`, bounded by bytes,
//! least recently used first out) and verified by its sha256 before anything loads it; what is
//! loaded, evaluated and served for download is the verified local copy. A store that cannot be
//! reached fails the fetch and nothing else: what is served stays.
//!
//! Requests to a store are retried within a small budget ([`RETRY`]: 3 retries within 10 s)
//! rather than object_store's default of 10 retries over up to 3 minutes, with the timeouts of
//! [`TIMEOUTS`]: an activation of a model whose store is down fails in about a second (one
//! that accepts connections and then stalls, within about 30 s), with the reason, and the poll
//! that follows the active object says the server is degraded as quickly.
//!
//! Change detection asks the store for the object's metadata (a HEAD) and downloads only when
//! its tag moved: the ETag, else the store's version id, else the Last-Modified time with the
//! size. A store that sends none of them (rare: a bare file server) is downloaded on every
//! poll and told apart by hashing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, FileProblem, Result};

/// The schemes a `file_path` may name an object with.
const SCHEMES: [&str; 6] = ["s3://", "gs://", "az://", "abfs://", "https://", "http://"];

/// Whether `file_path` names an object rather than a file under the model root.
pub fn is_uri(file_path: &str) -> bool {
    SCHEMES.iter().any(|s| file_path.starts_with(s))
}

/// A verified local copy of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The copy in the cache.
    pub path: PathBuf,
    /// Its sha256 (hex).
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// The cache of fetched objects.
#[derive(Debug)]
pub struct Objects {
    dir: PathBuf,
    max_bytes: u64,
    /// `--object-hosts`: internal hosts `http(s)://` URLs may name.
    hosts: Vec<String>,
    /// One fetch at a time: two loads of one object share the download.
    fetching: tokio::sync::Mutex<()>,
    /// What each URI was when last fetched: its tag ([`tag_of`]) and the sha256 of its bytes.
    seen: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
    counts: Counts,
}

/// What the cache asked of stores, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counts {
    /// Metadata requests (HEAD) of change detection.
    pub checks: AtomicU64,
    /// Objects downloaded (whole), and their bytes.
    pub downloads: AtomicU64,
    pub downloaded_bytes: AtomicU64,
    /// Requests that failed (the store down, refusing, or the object gone).
    pub failures: AtomicU64,
}

/// How requests to a store are retried: 3 times within 10 s, from 100 ms up to 1 s apart.
pub const RETRY: RetryBudget = RetryBudget {
    retries: 3,
    within: Duration::from_secs(10),
    first_pause: Duration::from_millis(100),
    longest_pause: Duration::from_secs(1),
};

/// The client's timeouts: a connection in 5 s, no read waiting more than 15 s (a store that
/// stalls), a whole request within an hour (object_store's default, 30 s, would cut the
/// download of a large model).
const TIMEOUTS: [(&str, &str); 3] = [("connect_timeout", "5s"), ("read_timeout", "15s"), ("timeout", "1h")];

/// See [`RETRY`].
#[derive(Debug, Clone, Copy)]
pub struct RetryBudget {
    pub retries: usize,
    pub within: Duration,
    pub first_pause: Duration,
    pub longest_pause: Duration,
}

impl RetryBudget {
    fn config(self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: self.first_pause,
                max_backoff: self.longest_pause,
                base: 2.0,
            },
            max_retries: self.retries,
            retry_timeout: self.within,
        }
    }
}

/// What tells one state of an object from another without its bytes: the ETag, the version id,
/// or the Last-Modified time with the size. A store that sends no Last-Modified has it as the
/// epoch: then nothing does. Nor does a Last-Modified of the last 2 s: it has a resolution of a
/// second, so a replacement of the same size within that second would not move it.
fn tag_of(meta: &object_store::ObjectMeta) -> Option<String> {
    meta.e_tag.clone().or_else(|| meta.version.clone()).or_else(|| {
        let settled = chrono::Utc::now() - chrono::TimeDelta::seconds(2);
        (meta.last_modified.timestamp() != 0 && meta.last_modified < settled)
            .then(|| format!("{}/{}", meta.last_modified.to_rfc3339(), meta.size))
    })
}

impl Default for Objects {
    fn default() -> Self {
        Self::new(default_dir(), 4 << 30)
    }
}

/// `$XDG_CACHE_HOME/modeld/objects`, `~/.cache/modeld/objects`, or under the temp dir.
pub fn default_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("modeld")
        .join("objects")
}

/// Whether `ip` is an address a server should not be sent to fetch from by a client: loopback,
/// private, link-local (cloud metadata services), carrier-grade NAT, unspecified, multicast.
fn internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Refuses what a client must not make the server fetch: a URL carrying credentials (they
/// would be stored, shown and logged; stores take theirs from the environment), and an
/// `http(s)://` host that is or resolves to an internal address ([`internal`]) unless
/// `allowed` names it (`--object-hosts`, `*` for any). The refusal comes before any
/// connection, the same for an open port as for a closed one. The stores of `s3://`, `gs://`,
/// `az://` are the operator's (their endpoints come from the environment) and are not checked.
///
/// # Errors
/// `InvalidArgument` saying which of the two it is, without echoing the URL.
pub async fn check_uri(uri: &str, allowed: &[String]) -> Result<()> {
    let url = url::Url::parse(uri).map_err(|_| Error::InvalidArgument("file_path is not an object URI".into()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::InvalidArgument(
            "file_path carries credentials in its URL (user:password@); give them to the server in the store's \
             environment variables (AWS_ACCESS_KEY_ID, GOOGLE_SERVICE_ACCOUNT, AZURE_STORAGE_ACCOUNT_KEY, ...), \
             never in a URL"
                .into(),
        ));
    }
    if !matches!(url.scheme(), "http" | "https") || allowed.iter().any(|h| h == "*") {
        return Ok(());
    }
    let Some(host) = url.host_str() else {
        return Err(Error::InvalidArgument("file_path names no host".into()));
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if allowed.iter().any(|h| h.trim().eq_ignore_ascii_case(&bare)) {
        return Ok(());
    }
    let refused = || {
        Error::InvalidArgument(format!(
            "file_path names a host this server does not fetch from: {} is or resolves to a loopback, private or \
             link-local address; the operator can allow it with --object-hosts (MODELD_OBJECT_HOSTS)",
            crate::error::cut(&bare, 100)
        ))
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<std::net::IpAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map(|a| a.map(|s| s.ip()).collect())
            .map_err(|_| {
                Error::model_file(
                    FileProblem::Unreadable,
                    format!(
                        "cannot fetch from {}: the name does not resolve",
                        crate::error::cut(&bare, 100)
                    ),
                )
            })?,
    };
    if addrs.iter().any(|ip| internal(*ip)) {
        return Err(refused());
    }
    Ok(())
}

/// The store and the object's path in it, with the store's settings from the environment.
fn store_for(uri: &str) -> Result<(Box<dyn ObjectStore>, object_store::path::Path)> {
    let url = url::Url::parse(uri)
        .map_err(|e| Error::InvalidArgument(format!("file_path {uri:?} is not an object URI: {e}")))?;
    // The builders take their settings as lowercase keys (aws_endpoint, google_…, azure_…).
    // First this server's timeouts, which the environment may override (AWS_TIMEOUT, …).
    let mut options: Vec<(String, String)> = TIMEOUTS
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .chain(
            std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
                .map(|(k, v)| (k.to_ascii_lowercase(), v)),
        )
        .collect();
    if url.scheme() == "http"
        || std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .is_ok_and(|e| e.starts_with("http://"))
    {
        options.push(("allow_http".into(), "true".into()));
    }
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::InvalidArgument(format!(
            "file_path {uri:?} names no object store this server reads: {e}"
        ))
    };
    let (scheme, key) = object_store::ObjectStoreScheme::parse(&url).map_err(|e| unreadable(&e))?;
    let key = object_store::path::Path::parse(key).map_err(|e| unreadable(&e))?;
    // As object_store::parse_url_opts builds them, with this server's retry budget.
    macro_rules! build {
        ($builder:ty, $url:expr) => {{
            let builder = options
                .iter()
                .fold(<$builder>::new().with_url($url), |b, (k, v)| match k.parse() {
                    Ok(k) => b.with_config(k, v.clone()),
                    Err(_) => b,
                });
            Box::new(builder.with_retry(RETRY.config()).build().map_err(|e| unreadable(&e))?) as Box<dyn ObjectStore>
        }};
    }
    use object_store::ObjectStoreScheme as S;
    let store = match scheme {
        S::AmazonS3 => build!(object_store::aws::AmazonS3Builder, url.to_string()),
        S::GoogleCloudStorage => build!(object_store::gcp::GoogleCloudStorageBuilder, url.to_string()),
        S::MicrosoftAzure => build!(object_store::azure::MicrosoftAzureBuilder, url.to_string()),
        S::Http => build!(
            object_store::http::HttpBuilder,
            url[..url::Position::BeforePath].to_string()
        ),
        other => return Err(unreadable(&format!("{other:?} is not an object store"))),
    };
    Ok((store, key))
}

/// A store's failure as modeld's error; the store's own words go to the log.
/// What a failed write to the object cache tells the client: a full disk (or quota) by name,
/// as UNAVAILABLE (503) — it passes once space is freed — and anything else as internal. The
/// cache's directory goes to the log only.
fn cache_error(dir: &Path, e: &std::io::Error) -> Error {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    if matches!(e.kind(), StorageFull | QuotaExceeded | FileTooLarge) {
        crate::client_event!(
            tracing::Level::ERROR,
            "object_cache_full",
            dir = %dir.display(),
            error = %e,
            "the object cache's disk is full: free space there or lower --object-cache-bytes"
        );
        return Error::Unavailable(
            "the server's object cache is full (no space left on its disk), so the model could not be \
             copied from the store; retry once the operator has freed space"
                .into(),
        );
    }
    Error::internal(format!("object cache {}: {e}", dir.display()))
}

fn store_error(uri: &str, e: &object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::model_file(
            FileProblem::Missing,
            format!("object {uri:?} does not exist in its store"),
        ),
        other => {
            let id = crate::trace::request_id_or_new();
            let uri = crate::registry::redact_url(uri);
            crate::client_event!(tracing::Level::WARN, "object_store", request_id = %id, object = %uri, error = %other, "object store request failed");
            Error::model_file(
                FileProblem::Unreadable,
                format!("cannot fetch {uri:?} from its store (request id {id}; the server log has the detail)"),
            )
        }
    }
}

impl Objects {
    /// A cache in `dir` (made when first needed) of at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes,
            hosts: Vec::new(),
            fetching: tokio::sync::Mutex::new(()),
            seen: std::sync::Mutex::default(),
            counts: Counts::default(),
        }
    }

    /// Also fetches from these hosts when they are internal addresses ([`check_uri`]).
    #[must_use]
    pub fn with_hosts(mut self, hosts: Vec<String>) -> Self {
        self.hosts = hosts;
        self
    }

    /// What the cache asked of stores.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    fn failed(&self, uri: &str, e: &object_store::Error) -> Error {
        self.counts.failures.fetch_add(1, Ordering::Relaxed);
        store_error(uri, e)
    }

    /// Where the copies are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn copy_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.onnx"))
    }

    /// A verified local copy of `uri`: from the cache when a copy with `want` (the registry's
    /// sha256) is there, else fetched, hashed while it streams, and kept only if it is `want`.
    ///
    /// # Errors
    /// `InvalidArgument` for a URI no store reads; `ModelFile` Missing, Unreadable (the store
    /// did not answer) or ChecksumMismatch.
    pub async fn fetch(&self, uri: &str, want: Option<&str>) -> Result<Fetched> {
        check_uri(uri, &self.hosts).await?;
        let (store, path) = store_for(uri)?;
        let _one = self.fetching.lock().await;
        if let Some(sha) = want {
            let copy = self.copy_of(sha);
            if let Ok(meta) = std::fs::metadata(&copy) {
                // Used now: the last to go when the cache is full.
                let _ = std::fs::File::open(&copy).and_then(|f| f.set_modified(SystemTime::now()));
                return Ok(Fetched {
                    path: copy,
                    sha256: sha.to_string(),
                    size: meta.len(),
                });
            }
        }
        let io = |e: std::io::Error| cache_error(&self.dir, &e);
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        let got = store.get(&path).await.map_err(|e| self.failed(uri, &e))?;
        let total = got.meta.size;
        let tag = tag_of(&got.meta);
        let mut stream = got.into_stream();
        let part = self.dir.join(format!(
            ".part-{}-{}",
            std::process::id(),
            crate::trace::new_request_id()
        ));
        let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let (mut done, mut told) = (0u64, 0u64);
        let started = std::time::Instant::now();
        let copied: Result<()> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.failed(uri, &e))?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io)?;
                done += chunk.len() as u64;
                // Large objects say how far they are, every tenth.
                if total >= 64 << 20 && done * 10 / total > told {
                    told = done * 10 / total;
                    tracing::info!(object = uri, done, total, "fetching: {}%", told * 10);
                }
            }
            file.flush().await.map_err(io)?;
            file.sync_all().await.map_err(io)
        }
        .await;
        drop(file);
        if let Err(e) = copied {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        self.counts.downloads.fetch_add(1, Ordering::Relaxed);
        self.counts.downloaded_bytes.fetch_add(done, Ordering::Relaxed);
        let sha256 = hex::encode(hasher.finalize());
        if let Some(w) = want
            && w != sha256
        {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Error::model_file(
                FileProblem::ChecksumMismatch,
                format!("checksum mismatch for object {uri:?}: registry has sha256 {w}, the object has {sha256}"),
            ));
        }
        let copy = self.copy_of(&sha256);
        tokio::fs::rename(&part, &copy).await.map_err(io)?;
        tracing::info!(
            object = uri,
            bytes = done,
            ms = started.elapsed().as_millis() as u64,
            sha256 = %sha256,
            "fetched into the object cache"
        );
        self.evict(&copy);
        if let Some(tag) = tag {
            self.seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(uri.to_string(), (tag, sha256.clone()));
        }
        Ok(Fetched {
            path: copy,
            sha256,
            size: done,
        })
    }

    /// Whether the object at `uri` still holds `sha256`: asks the store for its tag ([`tag_of`];
    /// a HEAD, not a download) and fetches it only when that is not the tag last seen with
    /// known bytes. `None`: unchanged; `Some`: the verified copy of what it holds now.
    ///
    /// # Errors
    /// As [`Objects::fetch`]: the object gone, or the store not answering.
    pub async fn changed(&self, uri: &str, sha256: &str) -> Result<Option<Fetched>> {
        check_uri(uri, &self.hosts).await?;
        let (store, path) = store_for(uri)?;
        self.counts.checks.fetch_add(1, Ordering::Relaxed);
        let meta = store.head(&path).await.map_err(|e| self.failed(uri, &e))?;
        let tag = tag_of(&meta);
        let known = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(uri)
            .cloned();
        let held = match (tag, known) {
            (Some(t), Some((k, held))) if t == k => held,
            _ => self.fetch(uri, None).await?.sha256,
        };
        if held == sha256 {
            return Ok(None);
        }
        // The copy of what it holds now (fetched above, or still in the cache).
        self.fetch(uri, Some(&held)).await.map(Some)
    }

    /// Removes the least recently used copies until the cache fits, never `keep`.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut copies: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let m = e.metadata().ok()?;
                let name = e.file_name();
                (m.is_file() && name.to_str()?.ends_with(".onnx")).then_some(())?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = copies.iter().map(|c| c.1).sum();
        copies.sort();
        for (_, len, path) in copies {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                tracing::info!(copy = %path.display(), bytes = len, "object cache full: removed the least recently used copy");
                total -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_and_internal_hosts_are_refused_before_any_connection() {
        let creds = check_uri("https://user:s3cret@models.example/m.onnx", &[])
            .await
            .unwrap_err();
        assert!(
            creds.to_string().contains("credentials") && !creds.to_string().contains("s3cret"),
            "{creds}"
        );
        assert!(check_uri("s3://user:pass@bucket/m.onnx", &[]).await.is_err());
        for internal in [
            "http://127.0.0.1:9999/secret",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/m.onnx",
            "http://[::1]:8000/m.onnx",
            "http://[::ffff:127.0.0.1]/m.onnx",
            "http://localhost:8000/m.onnx",
            "http://100.64.0.1/m.onnx",
        ] {
            let e = check_uri(internal, &[]).await.unwrap_err();
            assert!(e.to_string().contains("--object-hosts"), "{internal}: {e}");
        }
        assert!(
            check_uri("http://127.0.0.1:9999/m.onnx", &["127.0.0.1".into()])
                .await
                .is_ok()
        );
        assert!(check_uri("http://[::1]/m.onnx", &["::1".into()]).await.is_ok());
        assert!(check_uri("http://10.0.0.1/m.onnx", &["*".into()]).await.is_ok());
        assert!(check_uri("https://93.184.215.14/m.onnx", &[]).await.is_ok());
        assert!(
            check_uri("s3://bucket/m.onnx", &[]).await.is_ok(),
            "the operator's stores"
        );
    }

    #[test]
    fn uris_are_told_from_paths() {
        for u in [
            "s3://b/k.onnx",
            "gs://b/k",
            "az://c/k",
            "https://h/m.onnx",
            "http://127.0.0.1:9/m",
        ] {
            assert!(is_uri(u), "{u}");
        }
        for p in ["digits_v1.onnx", "s3/x.onnx", "models/https.onnx"] {
            assert!(!is_uri(p), "{p}");
        }
        assert!(matches!(store_for("s3://"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn the_least_recently_used_copies_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let objects = Objects::new(dir.path().to_path_buf(), 25);
        let t0 = SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let p = dir.path().join(format!("{name}.onnx"));
            std::fs::write(&p, [0u8; 10]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64)).unwrap();
        }
        objects.evict(&dir.path().join("a.onnx"));
        assert!(dir.path().join("a.onnx").exists(), "kept");
        assert!(!dir.path().join("b.onnx").exists(), "the oldest other goes");
        assert!(dir.path().join("c.onnx").exists());
    }
}
