//! The connection to a running server: address, TLS, the bearer token on every call, and a
//! live server found through the registry.

use super::exit::{NoServer, Usage, root_cause};
use crate::app;
use anyhow::Context;

/// A connection to a running server, with the token on every call.
pub(super) type Conn = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call (when there is a token).
#[derive(Clone)]
pub(super) struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// Connects to the server the arguments name.
pub(super) async fn connect(c: &super::args::ClientArgs) -> anyhow::Result<Conn> {
    let address = &c.server;
    let mut endpoint = tonic::transport::Endpoint::from_shared(address.clone()).map_err(|e| {
        Usage(format!(
            "--server {address:?} is not a server address ({e}); e.g. http://127.0.0.1:50051"
        ))
    })?;
    if address.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &c.tls_ca {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(ca).with_context(|| format!("cannot read --tls-ca {}", ca.display()))?,
            )),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&c.tls_client_cert, &c.tls_client_key) {
            let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
            tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(d) = &c.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    } else if c.tls_ca.is_some() || c.tls_client_cert.is_some() {
        return Err(Usage(format!(
            "--tls-ca and --tls-client-cert need an https:// server, not {address}"
        ))
        .into());
    }
    let bearer = match &c.token {
        Some(t) => Some(
            format!("Bearer {}", t.trim())
                .parse()
                .map_err(|_| Usage("the token has characters a header cannot carry".into()))?,
        ),
        None => None,
    };
    let channel = endpoint.connect().await.map_err(|e| NoServer {
        address: address.clone(),
        why: root_cause(&e),
    })?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer(bearer),
    ))
}

/// A live server of the registry at `url` that this machine can reach, as `http://host:port`;
/// `None` when the registry does not exist here or names none.
pub(super) async fn live_server(url: &str) -> Option<(String, String)> {
    // Never create a SQLite file just to look in it.
    if let Some(file) = crate::registry::Registry::sqlite_path(url)
        && !file.exists()
    {
        return None;
    }
    let registry = crate::registry::Registry::connect(url).await.ok()?;
    let servers = registry.servers().await.ok()?;
    registry.close().await;
    let me = app::hostname();
    servers.into_iter().filter(|s| !s.gone).find_map(|s| {
        let addr: std::net::SocketAddr = s.grpc_address.parse().ok()?;
        let host = match addr.ip() {
            ip if ip.is_unspecified() && s.host == me => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => s.host.clone(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        Some((format!("http://{host}:{}", addr.port()), s.server_name))
    })
}
