//! Start-up's security step, before anything is served: the bearer tokens (their file is
//! followed), TLS (its files are followed), the refusal to listen beyond loopback with neither,
//! and the keys that sign download URLs.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::{Access, Tokens};
use crate::config::ServeConfig;
use crate::filewatch::FileWatch;
use crate::signing::DownloadConfig;
use crate::tls::{Tls, TlsFiles};

/// What secures the two ports.
pub(super) struct Security {
    /// The tokens requests must carry (none: no check).
    pub access: Arc<Access>,
    /// The ports' TLS, when configured.
    pub tls: Option<Arc<Tls>>,
    /// The keys and bounds of signed download URLs.
    pub downloads: DownloadConfig,
    /// Re-read the tokens and TLS files while they live.
    _follow: Vec<FileWatch>,
}

impl Security {
    /// Reads and checks the security settings for a server listening on `grpc` (and `http`).
    ///
    /// # Errors
    /// A tokens, TLS or signing-key file that cannot be read, or a non-loopback address with
    /// neither tokens nor client certificates (unless `--allow-unauthenticated`).
    pub(super) fn load(config: &ServeConfig, grpc: SocketAddr, http: Option<SocketAddr>) -> anyhow::Result<Self> {
        let mut follow = Vec::new();
        let access = match &config.tokens_file {
            Some(f) => {
                if !f.is_file() {
                    anyhow::bail!(
                        "the tokens file {} does not exist; make a token with modeld token create --tokens-file {} \
                         --name NAME --scope admin",
                        f.display(),
                        f.display()
                    );
                }
                let tokens = Tokens::read(f).map_err(|e| anyhow::anyhow!("{e}"))?;
                let access = Arc::new(Access::required(tokens, &config.protect));
                follow.push(access.follow(f));
                access
            }
            None => Arc::new(Access::default()),
        };
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            })?),
            _ => None,
        };
        if let Some(t) = &tls {
            follow.push(t.follow());
            tracing::info!(
                "TLS on gRPC and HTTP{}; the files are re-read when they change",
                if t.mutual() {
                    ", client certificates required (mutual TLS)"
                } else {
                    ""
                }
            );
        }
        let mutual = tls.as_ref().is_some_and(|t| t.mutual());
        let exposed: Vec<SocketAddr> = std::iter::once(grpc)
            .chain(http)
            .filter(|a| !a.ip().is_loopback())
            .collect();
        if !access.enabled() && !mutual && !exposed.is_empty() {
            if !config.allow_unauthenticated {
                anyhow::bail!(
                    "refusing to listen on {} without tokens: anyone reaching it could change the registry. Give \
                     --tokens-file (modeld token create) or --tls-client-ca, listen on 127.0.0.1, or pass \
                     --allow-unauthenticated",
                    exposed
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" and ")
                );
            }
            tracing::warn!("listening on a non-loopback address without tokens (--allow-unauthenticated)");
        }
        if access.enabled() {
            tracing::info!(
                tokens = access.count(),
                "bearer tokens required (scopes admin, predict, read); health stays open{}",
                if config.protect.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; read needed for {}",
                        config
                            .protect
                            .iter()
                            .filter_map(|p| clap::ValueEnum::to_possible_value(p).map(|v| v.get_name().to_string()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
        }
        let mut downloads = config.download_config()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        if let Some(at) = http {
            downloads.default_base = format!("{scheme}://{at}");
        }
        if downloads.keys.is_empty() {
            tracing::info!("no signing key (--signing-key-file, MODELD_SIGNING_KEYS): signed download URLs are off");
        }
        Ok(Self {
            access,
            tls,
            downloads,
            _follow: follow,
        })
    }

    /// `https` with TLS, else `http`.
    pub(super) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}
