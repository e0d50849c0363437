//! TLS end to end, with certificates the tests make (rcgen): gRPC and HTTPS on one certificate,
//! a plain client refused; mutual TLS (no client certificate, one from another CA, a good one)
//! on both ports; the certificate replaced while the server runs (new connections get the new
//! one, open ones keep working, a broken replacement changes nothing); the CLI over TLS with a
//! token.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::pki::Ca;
use common::*;
use modeld::api::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;

/// Writes `text` to `path` as an operator's tooling does: a new file renamed over the old.
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A server with TLS from files in `dir`.
struct TlsServer {
    addr: SocketAddr,
    http_addr: SocketAddr,
    _db: TestDb,
    _root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TlsServer {
    async fn start(dir: &Path, client_ca: bool, tweak: impl FnOnce(&mut modeld::config::ServeConfig)) -> Self {
        let db = TestDb::new(Backend::Sqlite).await;
        let root = model_root();
        let mut config = modeld::config::ServeConfig::new(db.url.clone(), root.path());
        config.drain_timeout_secs = 5;
        config.tls_cert = Some(dir.join("server.pem"));
        config.tls_key = Some(dir.join("server.key"));
        if client_ca {
            config.tls_client_ca = Some(dir.join("clients-ca.pem"));
        }
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, http_addr) = (listener.local_addr().unwrap(), http.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(modeld::app::serve_with(config, listener, Some(http), async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            http_addr,
            _db: db,
            _root: root,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap().unwrap();
    }
}

/// Who a client is: the CA it trusts and, for mutual TLS, its certificate.
struct Client<'a> {
    ca: &'a str,
    identity: Option<&'a (String, String)>,
}

impl Client<'_> {
    async fn channel(&self, addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca))
            .domain_name("localhost");
        if let Some((cert, key)) = self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    /// Health over gRPC, or why not.
    async fn grpc_health(&self, addr: SocketAddr) -> Result<i32, String> {
        let channel = self.channel(addr).await.map_err(|e| format!("{e:?}"))?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|e| format!("{e:?}"))
    }

    fn http(&self, addr: SocketAddr) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.as_bytes()).unwrap())
            .resolve("localhost", addr)
            .timeout(Duration::from_secs(10));
        if let Some((cert, key)) = self.identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        b.build().unwrap()
    }

    /// `GET /v2/health/live` over HTTPS: its status, or why not.
    async fn https_live(&self, addr: SocketAddr) -> Result<u16, String> {
        self.http(addr)
            .get(format!("https://localhost:{}/v2/health/live", addr.port()))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"))
    }
}

/// Polls gRPC health over TLS until SERVING (60 s deadline).
async fn wait_serving(client: &Client<'_>, addr: SocketAddr) {
    until("the TLS server serves", Duration::from_secs(60), || async {
        client.grpc_health(addr).await == Ok(ServingStatus::Serving as i32)
    })
    .await;
}

/// The certificate (DER) a new TLS connection to `addr` is shown, verified against `ca`.
async fn presented(addr: SocketAddr, ca: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// A server CA whose certificate for localhost is written to `dir`, and a clients' CA written
/// as `clients-ca.pem`.
fn mutual_files(dir: &Path) -> (Ca, Ca) {
    let ca = Ca::new("modeld test CA");
    let clients = Ca::new("modeld clients");
    write_server(dir, &ca.leaf(&["localhost"]));
    put(&dir.join("clients-ca.pem"), &clients.pem);
    (ca, clients)
}

fn write_server(dir: &Path, leaf: &(String, String)) {
    put(&dir.join("server.pem"), &leaf.0);
    put(&dir.join("server.key"), &leaf.1);
}

#[tokio::test]
async fn grpc_and_https_on_one_certificate_and_plain_clients_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("modeld test CA");
    write_server(dir.path(), &ca.leaf(&["localhost", "127.0.0.1"]));
    let server = TlsServer::start(dir.path(), false, |_| {}).await;
    let client = Client {
        ca: &ca.pem,
        identity: None,
    };
    wait_serving(&client, server.addr).await;

    let mut infer = pb::inference_client::InferenceClient::new(client.channel(server.addr).await.unwrap());
    predict_as(&mut infer, "", 2, "digits_v2").await;
    assert_eq!(client.https_live(server.http_addr).await, Ok(200));
    let r = client
        .http(server.http_addr)
        .post(format!(
            "https://localhost:{}/v2/models/digits_v2/infer",
            server.http_addr.port()
        ))
        .json(
            &serde_json::json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                              "data": eval_rows(1)}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // Over TLS the admin page's session cookie is Secure (here with tokens off, it is issued
    // on the first look).
    let r = client
        .http(server.http_addr)
        .get(format!("https://localhost:{}/admin/session", server.http_addr.port()))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("; Secure") && cookie.contains("; HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // Plain gRPC and plain HTTP to the TLS ports get no answer.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = tonic_health::pb::health_client::HealthClient::new(ch)
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await;
        assert!(r.is_err(), "plain gRPC answered: {r:?}");
    }
    let r = reqwest::Client::new()
        .get(format!("http://{}/v2/health/live", server.http_addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP answered: {r:?}");
    // A client that does not trust the CA refuses the server.
    let other = Ca::new("someone else");
    let stranger = Client {
        ca: &other.pem,
        identity: None,
    };
    assert!(stranger.grpc_health(server.addr).await.is_err());
    assert!(stranger.https_live(server.http_addr).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_wants_a_certificate_from_the_client_ca_on_both_ports() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients) = mutual_files(dir.path());
    // mTLS is access control of its own: a non-loopback bind without tokens is allowed.
    let server = TlsServer::start(dir.path(), true, |_| {}).await;
    let good = clients.leaf(&["app.example"]);
    let forged = Ca::new("not the clients CA").leaf(&["app.example"]);
    let with_cert = Client {
        ca: &ca.pem,
        identity: Some(&good),
    };
    wait_serving(&with_cert, server.addr).await;
    assert_eq!(with_cert.https_live(server.http_addr).await, Ok(200));
    let mut infer = pb::inference_client::InferenceClient::new(with_cert.channel(server.addr).await.unwrap());
    infer.predict(digits_request("", &eval_rows(1))).await.unwrap();

    for (what, client) in [
        (
            "no client certificate",
            Client {
                ca: &ca.pem,
                identity: None,
            },
        ),
        (
            "a certificate from another CA",
            Client {
                ca: &ca.pem,
                identity: Some(&forged),
            },
        ),
    ] {
        let g = client.grpc_health(server.addr).await;
        assert!(g.is_err(), "gRPC with {what}: {g:?}");
        let h = client.https_live(server.http_addr).await;
        assert!(h.is_err(), "HTTPS with {what}: {h:?}");
    }
    server.stop().await;

    // The same files with tokens off on 0.0.0.0: mTLS is enough to bind it.
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let mut config = modeld::config::ServeConfig::new(db.url.clone(), root.path());
    config.tls_cert = Some(dir.path().join("server.pem"));
    config.tls_key = Some(dir.path().join("server.key"));
    config.tls_client_ca = Some(dir.path().join("clients-ca.pem"));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(modeld::app::serve_with(config, listener, None, async move {
        let _ = rx.await;
    }));
    wait_serving(&with_cert, SocketAddr::from(([127, 0, 0, 1], port))).await;
    let _ = tx.send(());
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_certificate_replaced_while_running_is_served_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("modeld test CA");
    let first = ca.leaf(&["localhost"]);
    write_server(dir.path(), &first);
    let server = TlsServer::start(dir.path(), false, |_| {}).await;
    let client = Client {
        ca: &ca.pem,
        identity: None,
    };
    wait_serving(&client, server.addr).await;
    assert_eq!(presented(server.addr, &ca.pem).await.unwrap(), der(&first.0));
    let open = client.channel(server.addr).await.unwrap();
    let mut infer = pb::inference_client::InferenceClient::new(open);
    infer.predict(digits_request("", &eval_rows(1))).await.unwrap();

    /// Polls new connections until they are shown `want`; every handshake on the way must
    /// succeed with one of `allowed`.
    async fn until_served(addr: SocketAddr, ca: &str, want: &[u8], allowed: &[Vec<u8>]) {
        until("the new certificate is served", Duration::from_secs(30), || async {
            let got = presented(addr, ca)
                .await
                .expect("every handshake succeeds during a change");
            if got == want {
                return true;
            }
            assert!(allowed.contains(&got), "an unexpected certificate was shown");
            false
        })
        .await;
    }

    // The certificate first, then its key: in between they do not match, and the old pair stays.
    let second = ca.leaf(&["localhost"]);
    put(&dir.path().join("server.pem"), &second.0);
    put(&dir.path().join("server.key"), &second.1);
    until_served(server.addr, &ca.pem, &der(&second.0), &[der(&first.0)]).await;
    // The connection opened before the change still answers.
    infer.predict(digits_request("", &eval_rows(1))).await.unwrap();

    // A broken key changes nothing; the next good pair is taken.
    put(
        &dir.path().join("server.key"),
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    let third = ca.leaf(&["localhost"]);
    assert_eq!(presented(server.addr, &ca.pem).await.unwrap(), der(&second.0));
    write_server(dir.path(), &third);
    until_served(server.addr, &ca.pem, &der(&third.0), &[der(&second.0)]).await;
    assert_eq!(client.https_live(server.http_addr).await, Ok(200));
    assert_eq!(
        presented(server.http_addr, &ca.pem).await.unwrap(),
        der(&third.0),
        "the HTTP port too"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_cli_reaches_a_tls_server_with_a_token_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients) = mutual_files(dir.path());
    let ca_file = dir.path().join("ca.pem");
    put(&ca_file, &ca.pem);
    let (cert, key) = clients.leaf(&["ops"]);
    let (cert_file, key_file) = (dir.path().join("ops.pem"), dir.path().join("ops.key"));
    put(&cert_file, &cert);
    put(&key_file, &key);
    let mut tokens = modeld::auth::Tokens::default();
    let read = tokens.create("dashboard", &[modeld::auth::Scope::Read], None).unwrap();
    let tokens_file: PathBuf = dir.path().join("tokens.jsonl");
    tokens.write(&tokens_file).unwrap();
    let server = TlsServer::start(dir.path(), true, |c| c.tokens_file = Some(tokens_file)).await;
    let identity = (cert, key);
    wait_serving(
        &Client {
            ca: &ca.pem,
            identity: Some(&identity),
        },
        server.addr,
    )
    .await;

    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (ca_s, cert_s, key_s) = (s(&ca_file), s(&cert_file), s(&key_file));
    let tls: Vec<&str> = vec![
        "--server",
        &url,
        "--tls-ca",
        &ca_s,
        "--tls-domain",
        "localhost",
        "--tls-client-cert",
        &cert_s,
        "--tls-client-key",
        &key_s,
    ];
    let status = |env: Vec<(&'static str, String)>| {
        let mut args = vec!["status", "--json"];
        args.extend(tls.iter().copied());
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_modeld(std::env::temp_dir().as_path(), &env, &args).await
        }
    };
    let ok = status(vec![("MODELD_TOKEN", read.clone())]).await;
    assert_eq!(ok.code, 0, "{ok:?}");
    let v: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(v["serving"]["model_name"], "digits_v2", "{v}");
    assert!(!ok.stderr.contains(&read), "the token is not printed");

    let no_token = status(vec![]).await;
    assert_ne!(no_token.code, 0);
    assert!(
        no_token.stderr.contains("--token") && no_token.stderr.contains("MODELD_TOKEN"),
        "{no_token:?}"
    );
    // Without the client certificate the server does not answer.
    let mut bare = vec![
        "status",
        "--server",
        &url,
        "--tls-ca",
        &ca_s,
        "--tls-domain",
        "localhost",
    ];
    bare.push("--json");
    let r = run_modeld(std::env::temp_dir().as_path(), &[("MODELD_TOKEN", &read)], &bare).await;
    assert_ne!(r.code, 0, "{r:?}");
    server.stop().await;
}
