//! HTTPS on the gateway's one HTTP port.
//!
//! Every connection asks [`CertResolver`] for its certificate, so the
//! certificate can change while the server runs: reloaded PEM files
//! (`--tls-cert`/`--tls-key`, on SIGHUP or when a file changes), a
//! certificate generated once into the data directory (`--tls self-signed`),
//! or one issued and renewed over ACME (`--acme-domain`, TLS-ALPN-01
//! answered on this same port). `--http-redirect-listen` adds a plain-HTTP
//! listener that sends browsers to the HTTPS port.

mod acme;
mod cert_info;
mod disk;
mod files;
pub mod redirect;
mod resolver;
mod self_signed;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::config::{Config, TlsMode};

pub use cert_info::CertInfo;
pub use resolver::CertResolver;

/// How often the certificate and key files are checked for changes.
const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(5);
/// How often the ACME certificate's remaining validity is checked.
const DEFAULT_RENEW_CHECK: Duration = Duration::from_secs(3 * 3600);

/// Why HTTPS could not be set up or a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: invalid PEM: {source}")]
    Pem {
        what: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what}: no PEM private key found")]
    NoKey { what: String },
    #[error("{what}: unusable key or certificate: {source}")]
    Key { what: String, source: rustls::Error },
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The one crypto provider everything TLS here uses: explicit, so nothing
/// depends on which rustls backends other crates happen to enable.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and key ready to serve, with what the logs show.
#[derive(Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

impl Loaded {
    /// Checks that `key` belongs to the chain's leaf and reads the leaf.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        what: &str,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
            what: what.to_owned(),
        })?;
        let info = CertInfo::parse(leaf)?;
        let key =
            CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::Key {
                what: what.to_owned(),
                source,
            })?;
        Ok(Self {
            key: Arc::new(key),
            info,
        })
    }

    fn log(&self, source: &str) {
        info!(
            source,
            fingerprint = %self.info.fingerprint,
            expires = %humantime::format_rfc3339_seconds(self.info.not_after),
            names = %self.info.names.join(","),
            "TLS certificate loaded"
        );
    }
}

/// Where the certificate comes from.
enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    SelfSigned,
    /// With the certificate served at start, if it is a real one.
    Acme(acme::Settings, Option<CertInfo>),
}

/// HTTPS for the HTTP port: the resolver every handshake asks, and what
/// keeps its certificate current.
pub struct Tls {
    resolver: Arc<CertResolver>,
    source: Source,
}

impl Tls {
    /// Loads (or makes) the first certificate, so a bad file fails the
    /// start instead of the first handshake. `None` without TLS settings.
    /// Needs no runtime: ACME's network work starts in [`Tls::spawn_tasks`].
    pub fn from_config(config: &Config) -> Result<Option<Self>, TlsError> {
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            let loaded = files::load(cert, key)?;
            loaded.log("files");
            return Ok(Some(Self {
                resolver: Arc::new(CertResolver::new(loaded.key)),
                source: Source::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
            }));
        }
        if config.tls == Some(TlsMode::SelfSigned) {
            let loaded = self_signed::load_or_create(&config.data_dir.join("tls"))?;
            return Ok(Some(Self {
                resolver: Arc::new(CertResolver::new(loaded.key)),
                source: Source::SelfSigned,
            }));
        }
        if !config.acme_domains.is_empty() {
            if config.http_listen.port() != 443 {
                // Public CAs connect to port 443 for TLS-ALPN-01, whatever
                // port we listen on.
                warn!(
                    port = config.http_listen.port(),
                    "ACME validation connects to port 443: forward it to this listener"
                );
            }
            let settings = acme::Settings::from_config(config, renew_check_interval());
            let (resolver, current) = match acme::cached(&settings) {
                Some(loaded) => {
                    loaded.log("acme cache");
                    (Arc::new(CertResolver::new(loaded.key)), Some(loaded.info))
                }
                None => {
                    // Browsers warn about it, but the port answers, and the
                    // challenge can only be answered on a listening port.
                    let temporary = self_signed::temporary(&config.acme_domains)?;
                    warn!(
                        fingerprint = %temporary.info.fingerprint,
                        "serving a temporary self-signed certificate until ACME issues one"
                    );
                    (Arc::new(CertResolver::new(temporary.key)), None)
                }
            };
            return Ok(Some(Self {
                resolver,
                source: Source::Acme(settings, current),
            }));
        }
        Ok(None)
    }

    /// The rustls configuration for the HTTP listener. actix-web puts `h2`
    /// and `http/1.1` in front of the ALPN protocols set here.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        if matches!(self.source, Source::Acme(..)) {
            // TLS-ALPN-01 (RFC 8737): the validator offers only this
            // protocol, and the handshake must select it.
            config.alpn_protocols = vec![resolver::ACME_TLS_ALPN.to_vec()];
        }
        Ok(config)
    }

    /// Starts what keeps the certificate current on the caller's runtime:
    /// the file watcher (SIGHUP and changed files) or ACME issuance and
    /// renewal. The tasks end with the runtime.
    pub fn spawn_tasks(&self) {
        match &self.source {
            Source::Files { cert, key } => {
                files::spawn_watch(
                    self.resolver.clone(),
                    cert.clone(),
                    key.clone(),
                    watch_interval(),
                );
            }
            Source::SelfSigned => {}
            Source::Acme(settings, current) => {
                tokio::spawn(acme::run(
                    settings.clone(),
                    self.resolver.clone(),
                    current.clone(),
                ));
            }
        }
    }
}

/// `WHIPCORD_TLS_WATCH_SECS`: how often the certificate files are checked
/// (tests set it to tell a SIGHUP reload from a file-change one).
fn watch_interval() -> Duration {
    env_secs("WHIPCORD_TLS_WATCH_SECS").unwrap_or(DEFAULT_WATCH_INTERVAL)
}

/// `WHIPCORD_ACME_RENEW_CHECK_SECS`: the longest wait between two looks at
/// the ACME certificate's remaining validity (tests use short-lived
/// certificates and check every second).
fn renew_check_interval() -> Duration {
    env_secs("WHIPCORD_ACME_RENEW_CHECK_SECS").unwrap_or(DEFAULT_RENEW_CHECK)
}

fn env_secs(name: &str) -> Option<Duration> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<u64>() {
        Ok(secs) if secs > 0 => Some(Duration::from_secs(secs)),
        _ => {
            warn!("ignoring {name}={value:?}: not a positive number of seconds");
            None
        }
    }
}
