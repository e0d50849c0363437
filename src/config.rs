//! Command-line flags and `MODELD_*` environment variables: one struct per command, each field
//! documented (its doc comment is its `--help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::EngineChoice;
use crate::model::cache::CandidateLimits;
use crate::registry::redact_url;
use crate::serving::ExecutorConfig;
use crate::serving::shadow::ShadowConfig;

/// What `modeld --help` says about exit codes (docs/operations.md says the same).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage: a bad flag, value or command line
  3  not found: no such model (or other record)
  4  refused: an invalid value (name, path, accuracy, input) or a precondition (the file is
     missing or broken, the model is active, the name is taken)
  5  unreachable: the registry database or the server cannot be reached, or the server
     answered UNAVAILABLE (nothing loaded yet; try again)
  6  not served: a change is committed, but a live server said it cannot serve it (a load
     failure) or had not applied it when --wait ran out; the message names each one

Results go to stdout, problems to stderr. Commands other than `serve` log at warn unless --log
says otherwise.";

/// modeld: a gRPC inference server that hot-swaps ONNX models from a SQL model registry.
#[derive(Debug, Parser)]
#[command(name = "modeld", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "modeld=debug". Default: "info"
    /// for `serve`, "warn" for every other command (their output is the answer).
    #[arg(long, env = "MODELD_LOG", global = true)]
    pub log: Option<String>,
    /// Log format.
    #[arg(long, env = "MODELD_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: gRPC (modeld.v1, the Open Inference Protocol, health, reflection) on
    /// --listen, HTTP (REST, OIP REST, metrics, the admin page) on --http-listen.
    Serve(Box<ServeConfig>),
    /// Create or upgrade the registry schema, then exit.
    Migrate(RegistryArgs),
    /// Register a model file (and optionally activate it).
    Register(RegisterArgs),
    /// List registered models.
    List(ListArgs),
    /// Show one model, with its signature.
    Show(ShowArgs),
    /// Make a model the active one (loads and verifies it first).
    Activate(ActivateArgs),
    /// Re-activate the model that was active before the current one.
    Rollback(RollbackArgs),
    /// Delete a model's registry record (never the file; refused for the active model).
    Delete(DeleteArgs),
    /// Send one Predict request to a running server and print the outputs as JSON.
    Predict(PredictArgs),
    /// Print registry and reload events (from every server and the CLI), oldest first.
    Events(EventsArgs),
    /// Evaluate a model on a labelled dataset and store the figures in the registry.
    Evaluate(EvaluateArgs),
    /// Evaluate two models on the same rows of a dataset, side by side, and say which is better.
    Compare(CompareArgs),
    /// The canary: a model that serves a percentage of the requests for `active`, by routing key.
    Canary(RolloutArgs),
    /// The shadow: a model that also runs a percentage of the requests, and never answers.
    Shadow(RolloutArgs),
    /// Make the canary the active model.
    Promote(PromoteArgs),
    /// Ask a running server what it serves: the active model, the canary and the shadow with
    /// their percentages and the shadow's agreement, candidates, why it is degraded.
    Status(StatusArgs),
    /// List the servers on the registry: what each serves, the registry generation it has
    /// applied and its lag, its heartbeat, whether it is gone, and its problems.
    Fleet(FleetArgs),
    /// Ask a running server for a signed URL that downloads a model's file over HTTP (no
    /// other credential needed).
    DownloadUrl(DownloadUrlArgs),
    /// Download a model's file from a running server and check its sha256.
    Download(DownloadArgs),
    /// Bearer tokens: create (printed once; the file keeps only its hash), revoke, list.
    Token(TokenArgs),
}

/// `modeld token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The tokens file (one JSON entry a line: name, sha256, scopes, expiry).
    #[arg(
        long,
        env = "MODELD_TOKENS_FILE",
        default_value = "modeld-tokens.jsonl",
        global = true
    )]
    pub tokens_file: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub action: TokenAction,
}

/// `modeld token create|revoke|list`.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Make a token: it is printed once, on stdout; the file records its sha256.
    Create {
        /// Who or what holds it (recorded as created_by / activated_by).
        #[arg(long)]
        name: String,
        /// admin (registry and rollout changes, and the rest), predict, read; repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Days until it expires; never when absent.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        expires_in_days: Option<u32>,
    },
    /// Remove the token named NAME.
    Revoke {
        /// The token's name.
        name: String,
    },
    /// The tokens: names, scopes, expiry (never the tokens).
    List,
}

/// The registry when none is given: a SQLite file in the current directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://modeld.db";

/// The server address when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// How a command reaches a running server: its address, a token, TLS.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Server address; `https://` for a server with --tls-cert.
    #[arg(long, env = "MODELD_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token for a server with tokens (modeld token create); MODELD_TOKEN keeps it out
    /// of the process list.
    #[arg(long, env = "MODELD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to check an https:// server by; default: the system's roots.
    #[arg(long, env = "MODELD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires one (--tls-client-ca).
    #[arg(long, env = "MODELD_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "MODELD_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the address's host.
    #[arg(long, env = "MODELD_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

/// `modeld download-url`.
#[derive(Debug, Args)]
pub struct DownloadUrlArgs {
    /// The server and how to reach it.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Which model.
    #[command(flatten)]
    pub model: ModelArg,
    /// Seconds until the URL expires (default an hour; at most the server's
    /// --download-url-max-secs).
    #[arg(long)]
    pub expires_in: Option<u32>,
    /// Print JSON instead of the URL alone.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

/// `modeld download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The server and how to reach it.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Which model.
    #[command(flatten)]
    pub model: ModelArg,
    /// Where to write the file (default: its own name, in the current directory). Written
    /// under a temporary name and renamed once its sha256 is checked.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `modeld fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON instead of text.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

/// `modeld status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The server and how to reach it. When no server answers at the default address and
    /// none is named, a live server of the registry (--database-url) is asked instead.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The registry to find a live server in (as `modeld fleet`).
    #[arg(long, env = "MODELD_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Print JSON instead of text.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

/// `modeld canary` and `modeld shadow`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: RolloutAction,
}

/// `set` or `clear`.
#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Put a model in the role with a percentage (replacing the model there); run again to
    /// change the percentage.
    Set(RolloutSetArgs),
    /// Take the model out of the role.
    Clear(RolloutClearArgs),
    /// Show the canary and the shadow.
    Show(RolloutShowArgs),
}

/// `modeld canary set` / `modeld shadow set`.
#[derive(Debug, Args)]
pub struct RolloutSetArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How long to wait for the servers to serve the change.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Which model.
    #[command(flatten)]
    pub model: ModelArg,
    /// Its share of requests, 0-100.
    #[arg(long, short = 'p', value_parser = clap::value_parser!(u8).range(0..=100))]
    pub percentage: u8,
    /// Even if its inputs or outputs would break the active model's clients.
    #[arg(long)]
    pub allow_signature_change: bool,
    /// Roll it back automatically when its error rate (0-1) over its window exceeds this
    /// (stored with the model; default 0.05). `none` turns it off.
    #[arg(long, value_parser = parse_threshold)]
    pub rollback_threshold: Option<Threshold>,
    /// Requests its window must hold before the threshold counts (default 100).
    #[arg(long)]
    pub min_samples: Option<u32>,
    /// Its sliding window, in seconds (default 60).
    #[arg(long)]
    pub window_secs: Option<u32>,
    /// Also roll it back when its p99 latency over the window exceeds this many ms; `none`
    /// turns it off (the default).
    #[arg(long, value_parser = parse_threshold)]
    pub rollback_p99_ms: Option<Threshold>,
    /// Why (kept in the event).
    #[arg(long, default_value = "", env = "MODELD_REASON")]
    pub reason: String,
    /// Who, for the event.
    #[arg(long, env = "MODELD_USER", default_value = "cli")]
    pub by: String,
}

/// A threshold, or `none` (off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold(pub Option<f64>);

/// A number, or `none`.
fn parse_threshold(text: &str) -> Result<Threshold, String> {
    if text.eq_ignore_ascii_case("none") || text.eq_ignore_ascii_case("off") {
        return Ok(Threshold(None));
    }
    text.parse::<f64>()
        .map(|v| Threshold(Some(v)))
        .map_err(|_| format!("{text:?} is not a number (or none)"))
}

/// How a change waits for the servers (`register --activate`, `activate`, `rollback`,
/// `promote`, `canary`/`shadow` `set` and `clear`).
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Return once every live server serves the change, waiting at most this many seconds
    /// (then exit 6 naming the servers that do not). 0 does not wait.
    #[arg(long, env = "MODELD_WAIT", default_value_t = 30.0, value_name = "SECS", value_parser = parse_wait)]
    pub wait: f64,
    /// Return as soon as the change is committed; servers apply it as they notice it.
    #[arg(long)]
    pub no_wait: bool,
}

impl WaitArgs {
    /// The wait, or `None` for none.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        (!self.no_wait && self.wait > 0.0).then(|| std::time::Duration::from_secs_f64(self.wait))
    }
}

/// 0 to 600 seconds.
fn parse_wait(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=600.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a number of seconds from 0 to 600")),
    }
}

/// `modeld canary clear` / `modeld shadow clear`.
#[derive(Debug, Args)]
pub struct RolloutClearArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How long to wait for the servers to serve the change.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Why (kept in the event).
    #[arg(long, default_value = "", env = "MODELD_REASON")]
    pub reason: String,
    /// Who, for the event.
    #[arg(long, env = "MODELD_USER", default_value = "cli")]
    pub by: String,
}

/// `modeld canary show` / `modeld shadow show`.
#[derive(Debug, Args)]
pub struct RolloutShowArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON instead of text.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
    /// Also print this many of the role's most recent changes (the rollout history), newest
    /// first.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub history: u32,
}

/// `modeld promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How long to wait for the servers to serve the change.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Why (kept in the activation history).
    #[arg(long, default_value = "", env = "MODELD_REASON")]
    pub reason: String,
    /// Recorded as activated_by.
    #[arg(long, env = "MODELD_USER", default_value = "cli")]
    pub by: String,
    /// Print JSON instead of text.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

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

impl Cli {
    /// The log filter: `--log`, else the command's default.
    pub fn log_filter(&self) -> &str {
        match (&self.log, &self.command) {
            (Some(filter), _) => filter.as_str(),
            (None, Command::Serve(_)) => "info",
            (None, _) => "warn",
        }
    }
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

impl Default for ShadowArgs {
    fn default() -> Self {
        let d = ShadowConfig::default();
        Self {
            shadow_threads: d.threads as u64,
            shadow_queue: d.queue as u64,
            shadow_queue_bytes: d.queue_bytes as u64,
            shadow_max_batch: d.max_batch as u64,
        }
    }
}

impl ShadowArgs {
    /// The shadow runner's size.
    pub fn config(&self) -> ShadowConfig {
        ShadowConfig {
            threads: usize::try_from(self.shadow_threads).unwrap_or(1),
            queue: usize::try_from(self.shadow_queue).unwrap_or(1024),
            queue_bytes: usize::try_from(self.shadow_queue_bytes).unwrap_or(usize::MAX),
            max_batch: usize::try_from(self.shadow_max_batch).unwrap_or(32),
        }
    }
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

impl Default for CandidateArgs {
    fn default() -> Self {
        let d = CandidateLimits::default();
        Self {
            candidate_models: d.models,
            candidate_memory: d.bytes,
            candidate_loads: d.loads as u64,
        }
    }
}

impl CandidateArgs {
    /// The cache's bounds.
    pub fn limits(&self) -> CandidateLimits {
        CandidateLimits {
            models: self.candidate_models,
            bytes: self.candidate_memory,
            loads: usize::try_from(self.candidate_loads).unwrap_or(usize::MAX),
        }
    }
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

impl Default for EngineArgs {
    fn default() -> Self {
        let e = ExecutorConfig::default();
        Self {
            runtime_threads: 1,
            inference_threads: e.threads,
            queue_capacity: e.queue_capacity as u64,
            inline_max_us: e.inline_max.as_micros() as u64,
            max_batch_size: e.max_batch_size as u64,
            max_queue_delay_us: e.max_queue_delay.as_micros() as u64,
            no_batching: false,
            engine: EngineChoice::Auto,
            onnxruntime_lib: None,
        }
    }
}

impl EngineArgs {
    /// The executor's configuration.
    pub fn executor_config(&self) -> ExecutorConfig {
        ExecutorConfig {
            threads: self.inference_threads,
            queue_capacity: usize::try_from(self.queue_capacity).unwrap_or(usize::MAX),
            inline_max: Duration::from_micros(self.inline_max_us),
            max_batch_size: if self.no_batching {
                1
            } else {
                usize::try_from(self.max_batch_size).unwrap_or(usize::MAX)
            },
            max_queue_delay: Duration::from_micros(self.max_queue_delay_us),
        }
    }
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

/// `modeld register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How long to wait for the servers to serve the change.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Unique model name: printable Unicode, spaces inside, up to 255 characters, e.g.
    /// "YAMNet Human Detection v1"; not `active` (in any letter case).
    #[arg(long, env = "MODELD_NAME")]
    pub name: String,
    /// Model file inside the model root: relative to the current directory
    /// (`models/m.onnx`), absolute, or relative to the model root (`m.onnx`). Stored relative
    /// to the root.
    #[arg(long, env = "MODELD_PATH")]
    pub path: String,
    /// Version label.
    #[arg(long, default_value = "", env = "MODELD_VERSION")]
    pub version: String,
    /// Description.
    #[arg(long, default_value = "", env = "MODELD_DESCRIPTION")]
    pub description: String,
    /// Model type, e.g. "classifier".
    #[arg(long = "type", default_value = "", env = "MODELD_TYPE")]
    pub model_type: String,
    /// Accuracy, 0..1.
    #[arg(long, env = "MODELD_ACCURACY")]
    pub accuracy: Option<f64>,
    /// Activate it right away.
    #[arg(long, env = "MODELD_ACTIVATE")]
    pub activate: bool,
    /// With --activate: even if its inputs or outputs would break the active model's clients.
    #[arg(long)]
    pub allow_signature_change: bool,
    /// Recorded as created_by.
    #[arg(long, env = "MODELD_USER", default_value = "cli")]
    pub by: String,
    /// Print JSON instead of text.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

/// `modeld list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON instead of a table.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

/// A model named by id or name.
#[derive(Debug, Args)]
pub struct ModelArg {
    /// Model name (quote names with spaces), `id:<model_id>`, or `name:<name>` for a name
    /// that starts with `id:`.
    pub model: String,
}

/// `modeld show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Which model.
    #[command(flatten)]
    pub model: ModelArg,
}

/// `modeld activate`.
#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How long to wait for the servers to serve the change.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Which model.
    #[command(flatten)]
    pub model: ModelArg,
    /// Why (kept in the activation history).
    #[arg(long, default_value = "", env = "MODELD_REASON")]
    pub reason: String,
    /// Recorded as activated_by.
    #[arg(long, env = "MODELD_USER", default_value = "cli")]
    pub by: String,
    /// Activate even if the model's inputs or outputs would break the active model's clients
    /// (a removed or renamed input or output, a changed datatype or fixed dimension, a new
    /// input); without it such an activation is refused with both signatures shown.
    #[arg(long)]
    pub allow_signature_change: bool,
    /// Refuse the model if its latest evaluation on the active model's dataset is worse than
    /// the active model's (the rule of `compare`), or if it has none there.
    #[arg(long)]
    pub require_better: bool,
    /// With --require-better: compare on this dataset (as `modeld evaluate --dataset`),
    /// evaluating either model on it first where needed.
    #[arg(long, value_name = "DATASET", requires = "require_better")]
    pub evaluate: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

/// `modeld rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How long to wait for the servers to serve the change.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Why (kept in the activation history).
    #[arg(long, default_value = "", env = "MODELD_REASON")]
    pub reason: String,
    /// Recorded as activated_by.
    #[arg(long, env = "MODELD_USER", default_value = "cli")]
    pub by: String,
    /// Roll back from this model (name, or `id:<model_id>`), only while it is still the
    /// active one; default: the model of the latest activation, under the same condition.
    #[arg(long)]
    pub from: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

/// `modeld delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Which model.
    #[command(flatten)]
    pub model: ModelArg,
}

/// `modeld predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The server and how to reach it.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Model name; empty means the active model. The name of a registered model that is not
    /// active tries it (the server loads it into its candidate cache).
    #[arg(long, default_value = "", env = "MODELD_MODEL")]
    pub model: String,
    /// Input file: `.npy` (one array), or `.json` holding a nested number array or
    /// `{"inputs": [{"name", "datatype", "shape", "data"}]}`.
    #[arg(long, env = "MODELD_INPUT")]
    pub input: PathBuf,
    /// Input name for a `.npy` file or a bare JSON array; default: the model's first input.
    #[arg(long, env = "MODELD_INPUT_NAME")]
    pub input_name: Option<String>,
}

/// The dataset of `modeld evaluate` and `modeld compare`.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    /// Features `.npy` (its labels in --labels, or in the `<name>_y.npy` beside a
    /// `<name>_x.npy`), or a `.csv` file with a header row and a label column, e.g.
    /// `models/eval/digits_x.npy`.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Labels `.npy` (integer class indices) for an `.npy` dataset.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// The label column of a CSV dataset.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// The model output to read classes from (default: the first [N, classes] scores output,
    /// else a [N] label output).
    #[arg(long)]
    pub output: Option<String>,
    /// Stored with the evaluation.
    #[arg(long, default_value = "")]
    pub notes: String,
    /// Recorded as evaluated_by.
    #[arg(long, env = "MODELD_USER", default_value = "cli")]
    pub by: String,
    /// Print JSON instead of text.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

/// `modeld evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Which model.
    #[command(flatten)]
    pub model: ModelArg,
    /// The dataset and how to read it.
    #[command(flatten)]
    pub dataset: DatasetArgs,
}

/// `modeld compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The first model (name, or `id:<model_id>`).
    pub a: String,
    /// The second model.
    pub b: String,
    /// The dataset and how to read it.
    #[command(flatten)]
    pub dataset: DatasetArgs,
}

/// `modeld events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How many of the latest events to print first.
    #[arg(long, env = "MODELD_EVENTS_LIMIT", default_value_t = 50)]
    pub limit: i64,
    /// Keep printing new events as they arrive.
    #[arg(long, env = "MODELD_FOLLOW")]
    pub follow: bool,
    /// Print JSON lines instead of text.
    #[arg(long, env = "MODELD_JSON")]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

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
