//! Certificates for the TLS tests (rcgen): a CA that signs leaf certificates.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA that signs leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` and its key, as PEM.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Polls gRPC health over TLS (trusting `ca`, the name `localhost`) until SERVING (60 s).
pub async fn wait_serving_tls(addr: std::net::SocketAddr, ca: &str) {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        let endpoint = Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        if let Ok(ch) = endpoint.connect().await {
            let h = tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            if h.is_ok_and(|h| h.into_inner().status == 1) {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS server never became SERVING"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
