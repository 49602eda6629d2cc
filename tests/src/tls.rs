//! HTTPS support for the TLS tests: the gateway run with TLS flags (its
//! health check speaks HTTPS, so [`crate::gateway::Gateway`] cannot wait
//! for it), an HTTP/1.1-over-rustls client that records the certificate
//! chain the server presented, and Debian's `pebble` ACME test server.
//!
//! The client is hyper over tokio-rustls rather than reqwest: reqwest's
//! rustls features either build aws-lc-rs or make every `Client::new()` in
//! every other test binary panic without a process-wide crypto provider.

use std::net::{SocketAddr, TcpStream as StdTcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::gateway::binary;
use crate::nginx::{free_port, test_pki};

/// Every network step of these helpers is bounded by this.
const STEP: Duration = Duration::from_secs(10);

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate as the gateway logs it: `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The certificates in a PEM file.
pub fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// A client trusting only `roots`. Resumption is off: every connection
/// gets a full handshake, so it sees the certificate served right now.
pub fn trusting(roots: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client that accepts any certificate (it only records it): for the
/// self-signed and temporary certificates whose trust is not the point.
pub fn accepting_any() -> Arc<ClientConfig> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<(TlsStream, Vec<CertificateDer<'static>>)> {
    let name = ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("server name {server_name:?}"))?;
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .context("TCP connect timed out")??;
    let tls = tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")?
    .context("TLS handshake")?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    Ok((tls, chain))
}

/// The chain the server presents to a client that validates it with
/// `config` (an error if the handshake fails).
pub async fn presented_chain(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<Vec<CertificateDer<'static>>> {
    let (_, chain) = connect(addr, server_name, config).await?;
    ensure!(!chain.is_empty(), "the server presented no certificate");
    Ok(chain)
}

/// An HTTPS reply, with the chain of the connection it came over.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
    pub chain: Vec<CertificateDer<'static>>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a new TLS connection.
pub async fn request(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply> {
    let (tls, chain) = connect(addr, server_name, config).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    let driver = tokio::spawn(connection);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{server_name}:{}", addr.port()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into()))?;
    let res = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .context("HTTPS request timed out")??;
    let (parts, body) = res.into_parts();
    let body = tokio::time::timeout(STEP, body.collect())
        .await
        .context("HTTPS body timed out")??
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        chain,
    })
}

/// The gateway run with TLS flags, on free loopback ports.
pub struct TlsGateway {
    child: Option<Child>,
    pub https: SocketAddr,
    media: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    owns_data_dir: bool,
}

/// How to start a [`TlsGateway`].
#[derive(Default, Clone)]
pub struct TlsGatewayOptions {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The HTTPS port (e.g. one an ACME test server was told to validate
    /// on); a free one when unset.
    pub port: Option<u16>,
    /// An existing data directory, left in place; a new one when unset.
    pub data_dir: Option<PathBuf>,
}

impl TlsGatewayOptions {
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

impl TlsGateway {
    pub async fn start(options: TlsGatewayOptions) -> Result<Self> {
        let owns_data_dir = options.data_dir.is_none();
        let data_dir = options.data_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "whipcord-tls-test-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ))
        });
        std::fs::create_dir_all(&data_dir)?;
        let media_port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut gateway = Self {
            child: None,
            https: SocketAddr::from(([127, 0, 0, 1], options.port.unwrap_or_else(free_port))),
            media: SocketAddr::from(([127, 0, 0, 1], media_port)),
            log_path: data_dir.join("gateway.log"),
            data_dir,
            args: options.args,
            env: options.env,
            owns_data_dir,
        };
        gateway.spawn()?;
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut command = Command::new(binary());
        command
            .arg("--http-listen")
            .arg(self.https.to_string())
            .arg("--media-listen")
            .arg(self.media.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            // Not under test here; the default port is shared by parallel runs.
            .args(["--rtmp", "false"])
            .args(&self.args)
            .env(
                "WHIPCORD_LOG",
                "info,whipcord=debug,rtc=warn,rtc_ice=warn,rtc_dtls=error",
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("spawning {}", binary().display()))?,
        );
        Ok(())
    }

    /// Ready once `/healthz` answers over TLS (with whatever certificate).
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last_error = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "gateway exited with {status} while starting; log:\n{}",
                    self.log()
                );
            }
            match self.get("/healthz", accepting_any()).await {
                Ok(reply) if reply.status == 200 => return Ok(()),
                Ok(reply) => last_error = format!("status {}", reply.status),
                Err(err) => last_error = format!("{err:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "gateway did not answer https://{}/healthz within 20 s ({last_error}); log:\n{}",
            self.https,
            self.log()
        )
    }

    /// `GET path` over a new connection checked by `config`.
    pub async fn get(&self, path: &str, config: Arc<ClientConfig>) -> Result<Reply> {
        request(
            self.https,
            "127.0.0.1",
            config,
            "GET",
            path,
            &[],
            Bytes::new(),
        )
        .await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded) for a log line containing `needle`; returns it.
    pub async fn wait_log(&self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "no log line with {needle:?} after {limit:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn sighup(&self) -> Result<()> {
        let pid = self.child.as_ref().context("gateway not running")?.id();
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -HUP {pid} failed");
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("gateway did not exit within 15 s of SIGTERM")
    }

    /// Starts the binary again with the same ports, flags and data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()?;
        self.wait_ready().await
    }
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.log());
        }
        if self.owns_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

const PEBBLE: &str = "/usr/bin/pebble";

/// Debian's `pebble` ACME test server on loopback, validating challenges
/// for real (TLS-ALPN-01 on `tls_port`), killed on drop.
pub struct Pebble {
    child: Child,
    /// The ACME directory URL.
    pub directory: String,
    /// The test CA that signed pebble's own HTTPS certificate (what the
    /// gateway's `--acme-ca-file` must trust).
    pub ca_file: PathBuf,
    management: SocketAddr,
    log_path: PathBuf,
}

impl Pebble {
    /// Issues certificates valid for `validity_secs`, validating
    /// TLS-ALPN-01 on 127.0.0.1:`tls_port` (names resolve through the
    /// system resolver: `localhost` is 127.0.0.1).
    pub fn start(dir: &Path, tls_port: u16, validity_secs: u64) -> Result<Self> {
        ensure!(
            Path::new(PEBBLE).exists(),
            "{PEBBLE} is missing: the ACME test needs Debian's pebble \
             (scripts/test.sh installs it; or apt-get install pebble)"
        );
        std::fs::create_dir_all(dir)?;
        let (ca_file, files) = test_pki(dir);
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": files.cert,
                "privateKey": files.key,
                // HTTP-01 is never chosen; a free port keeps pebble from
                // probing anything real if it were.
                "httpPort": free_port(),
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs,
            }
        });
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let log_path = dir.join("pebble.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(PEBBLE)
            .arg("-config")
            .arg(&config_path)
            // Validate at once, for real, with every good nonce accepted
            // and a fresh authorization (so a validation) for every order.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning pebble")?;
        let mut pebble = Self {
            child,
            directory: format!("https://{listen}/dir"),
            ca_file,
            management,
            log_path,
        };
        let deadline = Instant::now() + STEP;
        for addr in [listen, management] {
            while StdTcpStream::connect(addr).is_err() {
                if let Ok(Some(status)) = pebble.child.try_wait() {
                    bail!("pebble exited ({status}): {}", pebble.log());
                }
                ensure!(
                    Instant::now() < deadline,
                    "pebble does not listen on {addr}: {}",
                    pebble.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(pebble)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A PEM certificate from the management interface (`/roots/0`,
    /// `/intermediates/0`).
    async fn management_cert(&self, path: &str) -> Result<CertificateDer<'static>> {
        let roots = pem_certs(&self.ca_file)?;
        let reply = request(
            self.management,
            "127.0.0.1",
            trusting(&roots)?,
            "GET",
            path,
            &[],
            Bytes::new(),
        )
        .await?;
        ensure!(reply.status == 200, "pebble {path}: {}", reply.status);
        CertificateDer::from_pem_slice(&reply.body)
            .with_context(|| format!("pebble {path} is not PEM: {}", reply.text()))
    }

    /// The root pebble issues under (it changes every run).
    pub async fn root(&self) -> Result<CertificateDer<'static>> {
        self.management_cert("/roots/0").await
    }

    /// The intermediate that signs the leaves.
    pub async fn intermediate(&self) -> Result<CertificateDer<'static>> {
        self.management_cert("/intermediates/0").await
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- pebble log ----\n{}", self.log());
        }
    }
}
