//! TLS on both ports (`--tls-cert`, `--tls-key`, optional `--tls-client-ca` for mutual TLS),
//! with rustls. The certificate, key and client CAs are re-read when they change: every new
//! connection is accepted with the configuration of the moment (an [`ArcSwap`]), connections
//! already open keep theirs, and files that do not make a configuration (a half-written key, a
//! certificate that does not match it) leave the one in force and say why in the log.
//!
//! Handshakes run on their own tasks, so a slow or silent client holds up nobody else; what
//! they hand on is a plain stream for tonic (gRPC, ALPN `h2`) and axum (HTTP/1.1).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// A handshake that takes longer is dropped.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// The files TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the server's first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CAs (PEM) that client certificates must chain to; `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.clone(), self.key.clone()];
        p.extend(self.client_ca.clone());
        p
    }
}

/// Which port a connection is for: they differ in the protocol they offer (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// gRPC: HTTP/2.
    Grpc,
    /// HTTP/1.1.
    Http,
}

/// The configurations in force.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    grpc: ArcSwap<rustls::ServerConfig>,
    http: ArcSwap<rustls::ServerConfig>,
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("the {what} {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn build(files: &TlsFiles, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert, "certificate (--tls-cert)")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("cannot read the private key (--tls-key) {}: {e}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "client CA (--tls-client-ca)")? {
                roots
                    .add(c)
                    .map_err(|e| anyhow::anyhow!("a client CA in {} is not usable: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("client CAs {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow::anyhow!(
            "the certificate {} and the key {} do not make a TLS identity: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

impl Tls {
    /// Reads the files.
    ///
    /// # Errors
    /// When they cannot be read or do not make a TLS identity.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let grpc = build(&files, &[b"h2"])?;
        let http = build(&files, &[b"http/1.1"])?;
        Ok(Arc::new(Self {
            files,
            grpc: ArcSwap::from_pointee(grpc),
            http: ArcSwap::from_pointee(http),
        }))
    }

    /// Reads the files again; on failure what is in force stays.
    ///
    /// # Errors
    /// As [`Tls::load`].
    pub fn reload(&self) -> anyhow::Result<()> {
        let grpc = build(&self.files, &[b"h2"])?;
        let http = build(&self.files, &[b"http/1.1"])?;
        self.grpc.store(Arc::new(grpc));
        self.http.store(Arc::new(http));
        Ok(())
    }

    /// Re-reads the files whenever they change.
    pub fn follow(self: &Arc<Self>) -> crate::filewatch::FileWatch {
        let tls = Arc::clone(self);
        crate::filewatch::follow(self.files.paths(), move || match tls.reload() {
            Ok(()) => {
                tracing::info!(cert = %tls.files.cert.display(), "TLS certificate re-read; new connections use it")
            }
            Err(e) => {
                tracing::error!(error = %e, "the TLS files changed and cannot be used; the certificate in force stays")
            }
        })
    }

    /// Whether client certificates are required.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn acceptor(&self, port: Port) -> tokio_rustls::TlsAcceptor {
        let config = match port {
            Port::Grpc => self.grpc.load_full(),
            Port::Http => self.http.load_full(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Accepts on `listener` and hands on connections whose handshake succeeded; stops when
    /// the receiver is dropped or the listener closed.
    pub fn incoming(
        self: &Arc<Self>,
        listener: crate::net::Listener,
        port: Port,
        conns: crate::net::Conns,
    ) -> Incoming {
        let local = listener.local_addr();
        let (tx, rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                // A connection is admitted (a descriptor taken) only while the port has room.
                let permit = tokio::select! {
                    () = tx.closed() => return,
                    p = conns.admit() => p,
                };
                let accepted = tokio::select! {
                    () = tx.closed() => return,
                    a = listener.accept() => a,
                };
                let (tcp, remote) = match accepted {
                    None => return,
                    Some(Ok(a)) => a,
                    Some(Err(e)) => {
                        // Out of descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let tcp = conns.guard(tcp, permit);
                let acceptor = tls.acceptor(port);
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(TlsConn { stream, remote, local }).await;
                        }
                        Ok(Err(e)) => crate::client_event!(
                            tracing::Level::WARN,
                            "tls_handshake",
                            peer = %remote,
                            error = %e,
                            "TLS handshake failed"
                        ),
                        Err(_) => crate::client_event!(
                            tracing::Level::WARN,
                            "tls_handshake",
                            peer = %remote,
                            "TLS handshake took over {}s; dropped",
                            HANDSHAKE_WITHIN.as_secs()
                        ),
                    }
                });
            }
        });
        Incoming { rx }
    }
}

/// A connection whose handshake succeeded.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<crate::net::Guarded<TcpStream>>,
    remote: SocketAddr,
    local: Option<SocketAddr>,
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

crate::net::forward_write!(TlsConn, stream);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}

/// The connections of a TLS port: a stream for tonic, a listener for axum.
#[derive(Debug)]
pub struct Incoming {
    rx: tokio::sync::mpsc::Receiver<TlsConn>,
}

impl futures_util::Stream for Incoming {
    type Item = io::Result<TlsConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}
