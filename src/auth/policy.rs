//! What each route needs: the scope a gRPC method or an HTTP route asks for, and what
//! `--protect` closes that is open otherwise.

use super::Scope;

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
