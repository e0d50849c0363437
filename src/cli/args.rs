//! The command line: every command's flags and `MODELD_*` environment variables, one struct per
//! command, each field documented (its doc comment is its `--help`). The server's own settings
//! (`modeld serve`) are [`crate::config::ServeConfig`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{DEFAULT_DATABASE_URL, RegistryArgs, ServeConfig};

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
    /// Deployments: the names clients call, each with its own active model (`default` holds
    /// every model registered without one).
    Deployment(DeploymentArgs),
}

/// `modeld deployment`.
#[derive(Debug, Args)]
pub struct DeploymentArgs {
    /// Registry and model root.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON instead of text.
    #[arg(long, env = "MODELD_JSON", global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: DeploymentAction,
}

/// `modeld deployment create|list|show|delete`.
#[derive(Debug, Subcommand)]
pub enum DeploymentAction {
    /// Make a deployment (its name follows the model-name rules; no model may have it).
    Create {
        /// The name clients will call.
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Who, for the record.
        #[arg(long, env = "MODELD_USER", default_value = "cli")]
        by: String,
    },
    /// Every deployment, with its model count and active model.
    List,
    /// One deployment.
    Show {
        /// Its name.
        name: String,
    },
    /// Delete a deployment that holds no model (never `default`).
    Delete {
        /// Its name.
        name: String,
    },
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
