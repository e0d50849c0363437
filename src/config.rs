//! The server's settings (`modeld serve`: flags and `MODELD_*` environment variables, each
//! field documented: its doc comment is its `--help`) and where the registry is. Plain data:
//! the rooms that use a setting read it from here (the executor, the shadow runner and the
//! candidate cache build their own configuration from their part), nothing here reaches up to
//! them. The other commands' flags are in [`crate::cli::args`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::model::EngineChoice;
use crate::registry::redact_url;

/// The registry when none is given: a SQLite file in the current directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://modeld.db";

/// Where the registry and the model files are.
#[derive(Clone, Args)]
pub struct RegistryArgs {
    /// Registry database: a SQLite file (`sqlite://modeld.db`, created if missing) or a
    /// PostgreSQL URL (`postgres://user:pass@host/db`).
    #[arg(long, env = "MODELD_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Directory every model file must live under; registry paths are relative to it.
    #[arg(long, env = "MODELD_MODEL_ROOT", default_value = "models")]
    pub model_root: PathBuf,
    /// Where verified copies of models in object storage (s3://, gs://, az://, https://) are
    /// kept; default `$XDG_CACHE_HOME/modeld/objects` (or `~/.cache/modeld/objects`).
    #[arg(long, env = "MODELD_OBJECT_CACHE")]
    pub object_cache: Option<PathBuf>,
    /// The object cache's size; least recently used copies go first (the one in use never).
    #[arg(long, env = "MODELD_OBJECT_CACHE_BYTES", default_value_t = 4 << 30)]
    pub object_cache_bytes: u64,
    /// Hosts an `http(s)://` file_path may name although they are loopback, private or
    /// link-local addresses (comma-separated names or addresses; `*` for any). Without it such
    /// URLs are refused: a client could otherwise make the server probe internal services.
    #[arg(long, env = "MODELD_OBJECT_HOSTS", value_delimiter = ',')]
    pub object_hosts: Vec<String>,
}

impl std::fmt::Debug for RegistryArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryArgs")
            .field("database_url", &redact_url(&self.database_url))
            .field("model_root", &self.model_root)
            .field("object_cache", &self.object_cache)
            .finish_non_exhaustive()
    }
}

/// Everything `modeld serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Address to listen on for gRPC.
    #[arg(long, env = "MODELD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Seed manifest (relative to the model root): on first start with an empty registry its
    /// models are registered and its `activate` model activated.
    #[arg(long, env = "MODELD_SEED_MANIFEST", default_value = "models.json")]
    pub seed_manifest: PathBuf,
    /// Do not seed an empty registry.
    #[arg(long, env = "MODELD_NO_SEED")]
    pub no_seed: bool,
    /// Serve the models in DIR with no registry to set up (KServe's /mnt/models): DIR becomes
    /// the model root, every .onnx file under it is registered (into an embedded registry in
    /// the temp dir unless --database-url is given) and the first is activated. DIR is only read.
    #[arg(long, env = "MODELD_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// With --model-dir: the name to serve a single model under (KServe passes the
    /// InferenceService's name); several files are named by their paths.
    #[arg(long, env = "MODELD_MODEL_NAME", requires = "model_dir")]
    pub model_name: Option<String>,
    /// Largest gRPC message accepted or sent, in bytes (a batch of 32 CNN images is ~19 MB).
    #[arg(long, env = "MODELD_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// How long in-flight requests may run after a shutdown signal, in seconds.
    #[arg(long, env = "MODELD_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// This server's name in events and GetServerStatus (default: modeld-<host>-<pid>).
    #[arg(long, env = "MODELD_SERVER_NAME")]
    pub server_name: Option<String>,
    /// SQLite: how often to read the registry generation besides watching the database's files
    /// (a safety net for file systems that send no events), in ms.
    #[arg(long, env = "MODELD_REGISTRY_POLL_MS", default_value_t = 2000)]
    pub registry_poll_ms: u64,
    /// PostgreSQL: how often to check the generation besides LISTEN/NOTIFY, in ms (safety net
    /// for missed notifications and reconnects).
    #[arg(long, env = "MODELD_REGISTRY_CHECK_MS", default_value_t = 5000)]
    pub registry_check_ms: u64,
    /// How often this server tells the registry it is alive, in ms; after 3 missed heartbeats
    /// it is shown as gone and changes stop waiting for it (docs/operations.md, "Fleet").
    #[arg(long, env = "MODELD_HEARTBEAT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub heartbeat_ms: u64,
    /// Quiet time after the last change to the active model's file before it is reloaded, in ms.
    #[arg(long, env = "MODELD_FILE_DEBOUNCE_MS", default_value_t = 200)]
    pub file_debounce_ms: u64,
    /// How often the active model's object (an s3://, gs://, az://, https:// file_path) is
    /// asked for its ETag, in ms; a changed object is handled like a changed file.
    #[arg(long, env = "MODELD_OBJECT_POLL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub object_poll_ms: u64,
    /// Refuse a changed model file whose sha256 differs from the registry (update the registry
    /// first, e.g. by registering the new file).
    #[arg(long, env = "MODELD_STRICT_CHECKSUM")]
    pub strict_checksum: bool,
    /// Do not watch the active model's file for changes.
    #[arg(long, env = "MODELD_NO_WATCH_FILES")]
    pub no_watch_files: bool,
    /// Address of the HTTP port: the Open Inference Protocol's REST binding (`/v2`), the
    /// registry's REST API and model config (`/api/v1`), the admin page (`/admin`) and
    /// Prometheus metrics (`/metrics`); `off` for none.
    #[arg(long, env = "MODELD_HTTP_LISTEN", default_value = "127.0.0.1:8000")]
    pub http_listen: Listen,
    /// `Cache-Control: public, max-age=N` of the model-config endpoint that devices poll, in
    /// seconds (6 hours, as the guide's).
    #[arg(long, env = "MODELD_MODEL_CONFIG_MAX_AGE_SECS", default_value_t = 21_600)]
    pub model_config_max_age_secs: u64,
    /// A file of the keys that sign download URLs: one per line, at least 32 bytes each; the
    /// first signs, both verify (rotation). The same on every server of a fleet.
    #[arg(long, env = "MODELD_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// The server's public base URL for the download URLs it signs (e.g.
    /// https://models.example.com); unset: the Host the client used.
    #[arg(long, env = "MODELD_PUBLIC_URL", default_value = "")]
    pub public_url: String,
    /// The longest a signed download URL may live, in seconds.
    #[arg(long, env = "MODELD_DOWNLOAD_URL_MAX_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub download_url_max_secs: u64,
    /// The bearer tokens requests must carry (`modeld token create`); without tokens the
    /// server only listens on loopback addresses (or with --allow-unauthenticated).
    #[arg(long, env = "MODELD_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Listen on a non-loopback address without tokens: anyone who reaches the port may
    /// register, activate and delete models.
    #[arg(long, env = "MODELD_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// With tokens, make these open endpoints need the read scope too (comma-separated:
    /// model-config, downloads, metrics, reflection).
    #[arg(long, env = "MODELD_PROTECT", value_enum, value_delimiter = ',')]
    pub protect: Vec<crate::auth::Protectable>,
    /// Serve gRPC and HTTP over TLS with this certificate chain (PEM); re-read when it changes.
    #[arg(long, env = "MODELD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert; re-read when it changes.
    #[arg(long, env = "MODELD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs (PEM): mutual TLS. Needs --tls-cert.
    #[arg(long, env = "MODELD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// The old name of `--http-listen` (metrics moved to the HTTP port): when set, the HTTP
    /// port listens here.
    #[arg(long, env = "MODELD_METRICS_LISTEN", hide = true)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where and how inference runs.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Predicting by the name of a registered model that is not active.
    #[command(flatten)]
    pub candidates: CandidateArgs,
    /// Where requests mirrored to the shadow run.
    #[command(flatten)]
    pub shadow: ShadowArgs,
    /// How long after an activation the automatic rollback watches the new active model, in
    /// seconds (each model's rollback_threshold, min samples and window decide when it acts);
    /// past it the model is marked stable.
    #[arg(long, env = "MODELD_ROLLBACK_WATCH_SECS", default_value_t = 600)]
    pub rollback_watch_secs: u64,
    /// What one client, or a web page in an operator's browser, may hold of the server.
    #[command(flatten)]
    pub net: NetArgs,
}

/// Bounds on what clients may hold and who may call from a browser (docs/operations.md,
/// "Limits against hostile clients").
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Host names the HTTP port answers to besides IP addresses, names public DNS cannot serve
    /// (one label, `localhost`, `.local`, `.internal`), this machine's name and --public-url's
    /// host (comma-separated; `*` answers any). Without tokens the
    /// check is always on (a web page that rebinds its DNS name to this server gets 403);
    /// with tokens only when this is given.
    #[arg(long, env = "MODELD_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://app.example.com`) whose web pages may send requests that predict or
    /// change something, besides the server's own origin (comma-separated). A request with any
    /// other `Origin` gets 403.
    #[arg(long, env = "MODELD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Connections each port holds open at most; more wait in the kernel's queue until one
    /// closes. Kept below the process's file limit with room for the database, the watchers
    /// and model files.
    #[arg(long, env = "MODELD_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Concurrent gRPC streams (calls) one connection may have open.
    #[arg(long, env = "MODELD_MAX_STREAMS_PER_CONNECTION", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// Bytes of request bodies all clients together may have in flight (received, not yet
    /// answered), e.g. 512MiB; past it a request gets RESOURCE_EXHAUSTED (HTTP 503) with a
    /// retry hint.
    #[arg(long, env = "MODELD_REQUEST_BYTES_IN_FLIGHT", default_value = "512MiB", value_parser = parse_bytes)]
    pub request_bytes_in_flight: u64,
    /// Seconds a request's body may take to arrive in full (a body that trickles in longer
    /// gets DEADLINE_EXCEEDED, HTTP 408).
    #[arg(long, env = "MODELD_BODY_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,
    /// Seconds a new connection may stay silent before its first bytes (gRPC's connection
    /// preface, TLS's handshake), and an HTTP request's head may take to arrive: an idle HTTP
    /// connection is closed after it too. A gRPC connection whose client stops answering the
    /// server's pings (every 60 s) is closed after 20 s more.
    #[arg(long, env = "MODELD_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
}

impl Default for NetArgs {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_connections: 4096,
            max_streams_per_connection: 128,
            request_bytes_in_flight: 512 << 20,
            body_timeout_secs: 60,
            header_timeout_secs: 10,
        }
    }
}

/// The shadow's own capacity (docs/rollout.md, "Shadow traffic").
#[derive(Debug, Clone, Args)]
pub struct ShadowArgs {
    /// Threads that run requests mirrored to the shadow, apart from the compute threads.
    #[arg(long, env = "MODELD_SHADOW_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub shadow_threads: u64,
    /// Mirrored requests that may wait for the shadow threads; beyond it they are dropped (and
    /// counted), never the caller's request.
    #[arg(long, env = "MODELD_SHADOW_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub shadow_queue: u64,
    /// Bytes of tensors the waiting mirrored requests may hold (inputs and the serving model's
    /// outputs); beyond it they are dropped (and counted).
    #[arg(long, env = "MODELD_SHADOW_QUEUE_BYTES", default_value_t = 64 << 20)]
    pub shadow_queue_bytes: u64,
    /// Rows one shadow call may hold: the shadow threads run what has queued up as one batched
    /// call (for models that take a batch); 1 runs every mirrored request alone.
    #[arg(long, env = "MODELD_SHADOW_MAX_BATCH", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub shadow_max_batch: u64,
}

/// The candidate cache: registered models that are not active, loaded when a request names
/// them (see docs/rollout.md, "Try a model by name").
#[derive(Debug, Clone, Args)]
pub struct CandidateArgs {
    /// Candidates kept loaded beside the served models, least recently used evicted first;
    /// 0 refuses requests for models that are not active.
    #[arg(long, env = "MODELD_CANDIDATE_MODELS", default_value_t = 2)]
    pub candidate_models: usize,
    /// Memory the cached candidates may hold between them, as measured (resident bytes each
    /// load added), e.g. 1GiB, 512MiB or a number of bytes. A request for a candidate that
    /// cannot fit gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "MODELD_CANDIDATE_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    pub candidate_memory: u64,
    /// Candidate loads that may run at once (others wait for their turn).
    #[arg(long, env = "MODELD_CANDIDATE_LOADS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub candidate_loads: u64,
}

/// `1GiB`, `512MiB`, `64KiB`, `2GB`, `1500000`: a size in bytes.
///
/// # Errors
/// A message for clap when the text is not a size.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1GiB, 512MiB, 1048576)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The inference engine's settings (see docs/operations.md, "Inference engine").
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Threads of the async runtime that serves gRPC; 1 runs it on the main thread alone
    /// (current_thread), which measured fastest on small machines. 0: one per core.
    #[arg(long, env = "MODELD_RUNTIME_THREADS", default_value_t = 1)]
    pub runtime_threads: usize,
    /// Compute threads for models too expensive to run inline. 0: one per core.
    #[arg(long, env = "MODELD_INFERENCE_THREADS", default_value_t = 0)]
    pub inference_threads: usize,
    /// Requests that may wait for a compute thread; beyond it requests are refused at once
    /// with RESOURCE_EXHAUSTED and a retry hint.
    #[arg(long, env = "MODELD_QUEUE_CAPACITY", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_capacity: u64,
    /// Models whose measured cost (fastest warm-up run) is at most this many microseconds run
    /// inline on the request's thread: a hop to a compute thread costs more than they do.
    /// 0 sends every model to the compute threads.
    #[arg(long, env = "MODELD_INLINE_MAX_US", default_value_t = 200)]
    pub inline_max_us: u64,
    /// Rows one batched call may hold (dynamic batching of queued requests of one model).
    #[arg(long, env = "MODELD_MAX_BATCH_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_size: u64,
    /// How long a compute thread holding an incomplete batch waits for more requests, in µs.
    /// 0 batches only what is already queued (no added latency).
    #[arg(long, env = "MODELD_MAX_QUEUE_DELAY_US", default_value_t = 0)]
    pub max_queue_delay_us: u64,
    /// Turn dynamic batching off: every request is its own engine call.
    #[arg(long, env = "MODELD_NO_BATCHING")]
    pub no_batching: bool,
    /// The engine that computes models. `auto` (the default) loads ONNX Runtime's shared
    /// library at start-up if it is there and keeps, per model, whichever engine warmed up
    /// faster among those whose outputs match tract's on a test input; without the library it
    /// serves with tract and says once how to get ONNX Runtime. `onnxruntime` uses ONNX Runtime
    /// for every model it compiles and that matches tract, and warns when it cannot. `tract`
    /// never loads ONNX Runtime.
    #[arg(long = "engine", env = "MODELD_ENGINE", value_enum, default_value_t = EngineChoice::Auto)]
    pub engine: EngineChoice,
    /// ONNX Runtime's shared library (`libonnxruntime.so.1.31.1` of the PyPI wheel, or a release
    /// archive's). Default: `ORT_DYLIB_PATH`, else `libonnxruntime.so` on the loader's path.
    #[arg(long, env = "MODELD_ONNXRUNTIME_LIB")]
    pub onnxruntime_lib: Option<PathBuf>,
}

/// An address to listen on, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "none" | "" => Ok(Self(None)),
            a => a
                .parse()
                .map(|a| Self(Some(a)))
                .map_err(|e| format!("{a:?} is not an address like 127.0.0.1:8000 (or off): {e}")),
        }
    }
}

impl ServeConfig {
    /// The download URLs' signing keys: from `MODELD_SIGNING_KEYS` (comma-separated), else
    /// from `--signing-key-file`; none when neither is set.
    ///
    /// # Errors
    /// When the file cannot be read or a key breaks the rules.
    pub fn download_config(&self) -> anyhow::Result<crate::signing::DownloadConfig> {
        use anyhow::Context as _;
        let keys = match (std::env::var("MODELD_SIGNING_KEYS"), &self.signing_key_file) {
            (Ok(k), _) if !k.trim().is_empty() => {
                crate::signing::SigningKeys::parse(&k).context("MODELD_SIGNING_KEYS")?
            }
            (_, Some(f)) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the signing key file {}", f.display()))?;
                crate::signing::SigningKeys::parse(&text)
                    .with_context(|| format!("the signing key file {}", f.display()))?
            }
            _ => crate::signing::SigningKeys::default(),
        };
        Ok(crate::signing::DownloadConfig {
            keys,
            public_url: self.public_url.trim_end_matches('/').to_string(),
            max_expiry_secs: self.download_url_max_secs,
            default_base: String::new(),
        })
    }

    /// Where the HTTP port listens: `--http-listen`, or the old `--metrics-listen` when set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen.or(self.http_listen.0)
    }

    /// Defaults for a database and a model root (tests and embedding).
    pub fn new(database_url: impl Into<String>, model_root: impl Into<PathBuf>) -> Self {
        Self {
            registry: RegistryArgs {
                database_url: database_url.into(),
                model_root: model_root.into(),
                object_cache: None,
                object_cache_bytes: 4 << 30,
                object_hosts: Vec::new(),
            },
            listen: "127.0.0.1:50051".parse().expect("a valid address"),
            seed_manifest: "models.json".into(),
            no_seed: false,
            model_dir: None,
            model_name: None,
            max_message_bytes: 64 * 1024 * 1024,
            drain_timeout_secs: 30,
            server_name: None,
            registry_poll_ms: 2000,
            registry_check_ms: 5000,
            heartbeat_ms: 2000,
            file_debounce_ms: 200,
            object_poll_ms: 30_000,
            strict_checksum: false,
            no_watch_files: false,
            http_listen: Listen(None),
            model_config_max_age_secs: 21_600,
            signing_key_file: None,
            tokens_file: None,
            allow_unauthenticated: false,
            protect: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            public_url: String::new(),
            download_url_max_secs: 86_400,
            metrics_listen: None,
            engine: EngineArgs::default(),
            candidates: CandidateArgs::default(),
            shadow: ShadowArgs::default(),
            rollback_watch_secs: 600,
            net: NetArgs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command};

    fn serve(args: &[&str]) -> ServeConfig {
        let mut argv = vec!["modeld", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(c) => *c,
            _ => unreachable!("serve parses as serve"),
        }
    }

    #[test]
    fn the_http_port_defaults_to_loopback_and_keeps_its_old_name() {
        // Not from the environment of whoever runs the tests.
        for var in ["MODELD_HTTP_LISTEN", "MODELD_METRICS_LISTEN"] {
            assert!(std::env::var(var).is_err(), "{var} is set in the test environment");
        }
        assert_eq!(serve(&[]).http_addr(), Some("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(serve(&["--http-listen", "off"]).http_addr(), None);
        assert_eq!(
            serve(&["--http-listen", "0.0.0.0:9000"]).http_addr(),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(
            serve(&["--metrics-listen", "127.0.0.1:9464"]).http_addr(),
            Some("127.0.0.1:9464".parse().unwrap()),
            "the old flag still places the port"
        );
        assert!(Cli::try_parse_from(["modeld", "serve", "--http-listen", "nowhere"]).is_err());
    }

    #[test]
    fn sizes_parse_with_their_units() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("1GiB", 1 << 30),
            ("512MiB", 512 << 20),
            ("64 KiB", 64 << 10),
            ("2GB", 2_000_000_000),
            ("3m", 3 << 20),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "GiB", "1.5GiB", "12 parsecs", "-1", "99999999999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
