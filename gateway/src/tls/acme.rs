//! Certificates over ACME (RFC 8555), proved with TLS-ALPN-01 (RFC 8737)
//! on the gateway's own HTTPS port: no second port, no web root.
//!
//! Everything lives in `{data_dir}/acme/{directory host}/`: the account
//! (`account.json`, 0600) and the last certificate (`certificate.pem`,
//! `certificate.key`), reused at start while it is valid. A task renews the
//! certificate once a third of its validity is left, checking at least
//! every `check_every`; failures retry with backoff.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, LetsEncrypt, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tracing::{debug, info, warn};

use super::disk::{self, PRIVATE, PUBLIC};
use super::resolver::CertResolver;
use super::{CertInfo, Loaded, TlsError, files, provider};
use crate::config::Config;

const ACCOUNT_FILE: &str = "account.json";
const CERT_FILE: &str = "certificate.pem";
const KEY_FILE: &str = "certificate.key";

/// One HTTP exchange with the ACME server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole issuance: account, order, validation, finalization, download.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(300);
/// Waiting for the CA to validate the challenges.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Waiting for the CA to sign after finalization.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(60);
/// First retry after a failed issuance; doubles up to `MAX_RETRY`. Two
/// minutes keeps a misconfigured server under Let's Encrypt's limit of five
/// failed validations per hostname and hour.
const FIRST_RETRY: Duration = Duration::from_secs(120);
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// Why an ACME issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error(
        "no trusted root certificates to reach the ACME directory (install ca-certificates or pass --acme-ca-file)"
    )]
    NoRoots,
    #[error("{domain}: the ACME server offers no tls-alpn-01 challenge")]
    NoTlsAlpn { domain: String },
    #[error("{domain}: authorization is {status:?}")]
    Authorization {
        domain: String,
        status: AuthorizationStatus,
    },
    #[error("order is {status:?}: {reason}")]
    Order { status: OrderStatus, reason: String },
    #[error("account credentials: {0}")]
    Credentials(serde_json::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// What the ACME task needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lowercase, as certificates carry them.
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    pub ca_file: Option<PathBuf>,
    /// `{data_dir}/acme/{directory host}`.
    pub dir: PathBuf,
    /// Longest wait between two looks at the remaining validity.
    pub check_every: Duration,
}

impl Settings {
    pub fn from_config(config: &Config, check_every: Duration) -> Self {
        let directory = config
            .acme_directory
            .clone()
            .unwrap_or_else(|| LetsEncrypt::Production.url().to_owned());
        let dir = config
            .data_dir
            .join("acme")
            .join(directory_folder(&directory));
        Self {
            domains: config
                .acme_domains
                .iter()
                .map(|d| d.trim().to_ascii_lowercase())
                .collect(),
            email: config.acme_email.clone(),
            directory,
            ca_file: config.acme_ca_file.clone(),
            dir,
            check_every,
        }
    }
}

/// A folder name for a directory URL: its host and port, so staging,
/// production and a private CA keep separate accounts and certificates.
fn directory_folder(directory: &str) -> String {
    let authority = directory
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| {
            let host = uri.host()?.to_owned();
            Some(match uri.port_u16() {
                Some(port) => format!("{host}_{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "default".to_owned());
    authority
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The stored certificate, if it is still worth serving: it loads, has
/// not expired and names every configured domain.
pub fn cached(settings: &Settings) -> Option<Loaded> {
    let cert = settings.dir.join(CERT_FILE);
    let key = settings.dir.join(KEY_FILE);
    if !cert.exists() {
        return None;
    }
    match files::load(&cert, &key) {
        Ok(loaded) if loaded.info.not_after <= SystemTime::now() => {
            info!(path = %cert.display(), "the stored ACME certificate has expired");
            None
        }
        Ok(loaded) if !loaded.info.covers(&settings.domains) => {
            info!(
                names = %loaded.info.names.join(","),
                "the stored ACME certificate does not name every configured domain"
            );
            None
        }
        Ok(loaded) => Some(loaded),
        Err(err) => {
            warn!("ignoring the stored ACME certificate: {err}");
            None
        }
    }
}

/// Issues the first certificate if `current` is none, then renews it
/// whenever a third of its validity is left. Runs until the runtime ends.
pub async fn run(settings: Settings, resolver: Arc<CertResolver>, mut current: Option<CertInfo>) {
    let mut account: Option<Account> = None;
    let mut failures: u32 = 0;
    loop {
        let due = current
            .as_ref()
            .is_none_or(|info| info.renew_at() <= SystemTime::now());
        if due {
            info!(
                domains = %settings.domains.join(","),
                directory = %settings.directory,
                "{} a certificate over ACME",
                if current.is_some() { "renewing" } else { "requesting" }
            );
            let attempt = issue(&settings, &resolver, &mut account);
            let result = match tokio::time::timeout(ISSUE_TIMEOUT, attempt).await {
                Ok(result) => result,
                Err(_) => Err(AcmeError::Timeout(ISSUE_TIMEOUT)),
            };
            match result {
                Ok(loaded) => {
                    loaded.log("acme");
                    resolver.set(loaded.key);
                    current = Some(loaded.info);
                    failures = 0;
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures, settings.check_every);
                    warn!(
                        attempt = failures,
                        retry_in = %humantime::format_duration(delay),
                        "ACME issuance failed: {err}"
                    );
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
        }
        // Sleep until renewal is due, but look again at least every
        // `check_every` (the wall clock can jump; tokio's sleep does not).
        let until_due = current
            .as_ref()
            .and_then(|info| info.renew_at().duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO);
        let wait = until_due
            .min(settings.check_every)
            .max(Duration::from_secs(1));
        debug!(wait = ?wait, "next ACME renewal check");
        tokio::time::sleep(wait).await;
    }
}

/// Waits between failed issuances: doubling from two minutes to an hour,
/// but never longer than the configured check interval (tests shorten it).
fn retry_delay(failures: u32, check_every: Duration) -> Duration {
    let first = FIRST_RETRY.min(check_every);
    let doublings = failures.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// One issuance: order, TLS-ALPN-01 validation, finalization, download,
/// storage. `account` is created or loaded on first use and kept.
async fn issue(
    settings: &Settings,
    resolver: &CertResolver,
    account: &mut Option<Account>,
) -> Result<Loaded, AcmeError> {
    let acct = match account {
        Some(acct) => acct.clone(),
        None => {
            let acct = load_or_create_account(settings).await?;
            *account = Some(acct.clone());
            acct
        }
    };
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|domain| Identifier::Dns(domain.clone()))
        .collect();
    let mut order = match acct.new_order(&NewOrder::new(&identifiers)).await {
        Ok(order) => order,
        Err(instant_acme::Error::Api(problem))
            if problem.r#type.as_deref()
                == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
        {
            // The CA forgot us (a reset test CA, a deactivated account):
            // start over with a new account next time.
            *account = None;
            let _ = std::fs::remove_file(settings.dir.join(ACCOUNT_FILE));
            return Err(instant_acme::Error::Api(problem).into());
        }
        Err(err) => return Err(err.into()),
    };

    // The challenge certificates are served until this guard drops, on
    // success or on any error below.
    let mut challenges = Challenges {
        resolver,
        domains: Vec::new(),
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            let domain = authorization.identifier().to_string();
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => return Err(AcmeError::Authorization { domain, status }),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::NoTlsAlpn {
                    domain: domain.clone(),
                })?;
            let key = challenge_certificate(&domain, challenge.key_authorization().digest())?;
            challenges.add(&domain, key);
            challenge.set_ready().await?;
            debug!(%domain, "tls-alpn-01 challenge ready");
        }
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION_TIMEOUT);
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        let reason = why_invalid(&mut order).await;
        return Err(AcmeError::Order { status, reason });
    }
    drop(challenges);

    let key = KeyPair::generate().map_err(TlsError::from)?;
    let mut params = CertificateParams::new(settings.domains.clone()).map_err(TlsError::from)?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(TlsError::from)?;
    order.finalize_csr(csr.der()).await?;
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(SIGNING_TIMEOUT);
    let chain = order.poll_certificate(&retries).await?;
    let key_pem = key.serialize_pem();
    let loaded = files::parse(
        chain.as_bytes(),
        key_pem.as_bytes(),
        "ACME certificate",
        "ACME key",
    )?;
    // The key first: a crash in between leaves a mismatched pair, which
    // the next start ignores and replaces.
    disk::create_dir(&settings.dir)?;
    disk::write_atomic(&settings.dir.join(KEY_FILE), key_pem.as_bytes(), PRIVATE)?;
    disk::write_atomic(&settings.dir.join(CERT_FILE), chain.as_bytes(), PUBLIC)?;
    Ok(loaded)
}

/// The challenge errors of an order that did not become ready.
async fn why_invalid(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    if let Some(problem) = &order.state().error {
        reasons.push(problem.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let domain = authorization.identifier().to_string();
        if let Ok(state) = authorization.refresh().await {
            for challenge in &state.challenges {
                if let Some(problem) = &challenge.error {
                    reasons.push(format!("{domain}: {problem}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        "no reason given".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// Challenge certificates served while an order is validated.
struct Challenges<'a> {
    resolver: &'a CertResolver,
    domains: Vec<String>,
}

impl Challenges<'_> {
    fn add(&mut self, domain: &str, key: Arc<CertifiedKey>) {
        self.resolver.add_challenge(domain, key);
        self.domains.push(domain.to_owned());
    }
}

impl Drop for Challenges<'_> {
    fn drop(&mut self) {
        for domain in &self.domains {
            self.resolver.remove_challenge(domain);
        }
    }
}

/// The TLS-ALPN-01 certificate (RFC 8737 §3): self-signed, the domain as
/// its only name, and the critical acmeIdentifier extension holding the
/// SHA-256 of the key authorization.
fn challenge_certificate(
    domain: &str,
    digest: impl AsRef<[u8]>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    // rcgen serializes key pairs as PKCS#8.
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::Key {
            what: "challenge certificate".to_owned(),
            source,
        })?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate
    // with webpki, which refuses the critical acmeIdentifier extension.
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

/// The stored account for this directory, or a new one (stored).
async fn load_or_create_account(settings: &Settings) -> Result<Account, AcmeError> {
    let path = settings.dir.join(ACCOUNT_FILE);
    if let Some(bytes) = disk::read_optional(&path)? {
        match stored_account(&bytes, &settings.directory) {
            Ok(Some(credentials)) => {
                let account = Account::builder_with_http(http_client(settings)?)
                    .from_credentials(credentials)
                    .await?;
                debug!(id = account.id(), "ACME account loaded");
                return Ok(account);
            }
            Ok(None) => info!(
                path = %path.display(),
                "the stored ACME account belongs to another directory; creating a new one"
            ),
            Err(err) => warn!("creating a new ACME account: {err}"),
        }
    }
    let contact = settings
        .email
        .as_ref()
        .map(|email| format!("mailto:{email}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(http_client(settings)?)
        .create(
            &NewAccount {
                contact: &contacts,
                // Asking for certificates is agreeing to the CA's terms.
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_vec_pretty(&credentials).map_err(AcmeError::Credentials)?;
    disk::create_dir(&settings.dir)?;
    disk::write_atomic(&path, &json, PRIVATE)?;
    info!(id = account.id(), path = %path.display(), "ACME account created");
    Ok(account)
}

/// Credentials from `account.json` if they are for `directory`.
fn stored_account(bytes: &[u8], directory: &str) -> Result<Option<AccountCredentials>, AcmeError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(AcmeError::Credentials)?;
    if value.get("directory").and_then(|d| d.as_str()) != Some(directory) {
        return Ok(None);
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(AcmeError::Credentials)
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// instant-acme's HTTP over our rustls (ring) with a bound on every
/// exchange: the ACME server cannot stall the renewal task forever.
struct AcmeHttp(HyperClient<Connector, BodyWrapper<Bytes>>);

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.0.request(req);
        Box::pin(async move {
            match tokio::time::timeout(HTTP_TIMEOUT, response).await {
                Ok(Ok(response)) => Ok(BytesResponse::from(response)),
                Ok(Err(err)) => Err(instant_acme::Error::Other(error_chain(&err).into())),
                Err(_) => Err(instant_acme::Error::Str("ACME request timed out")),
            }
        })
    }
}

/// An error with its causes: hyper's own message ("client error
/// (Connect)") hides the reason (refused, certificate unknown…).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn http_client(settings: &Settings) -> Result<Box<dyn HttpClient>, AcmeError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| AcmeError::Tls(TlsError::Config(err)))?
        .with_root_certificates(roots(settings.ca_file.as_deref())?)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Box::new(AcmeHttp(
        HyperClient::builder(TokioExecutor::new()).build(connector),
    )))
}

/// The system's roots plus the CA file's certificates.
fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        debug!("system root certificates: {err}");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let ca_error = |reason: String| AcmeError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|err| ca_error(err.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| ca_error(err.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in it".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|err| ca_error(err.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(AcmeError::NoRoots);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_name_the_directory_host() {
        assert_eq!(
            directory_folder("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org"
        );
        assert_eq!(
            directory_folder("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000"
        );
        assert_eq!(directory_folder("https://[::1]:14000/dir"), "___1__14000");
        assert_eq!(directory_folder("not a url"), "default");
    }

    #[test]
    fn retries_back_off_within_bounds() {
        let hours = Duration::from_secs(3 * 3600);
        assert_eq!(retry_delay(1, hours), Duration::from_secs(120));
        assert_eq!(retry_delay(2, hours), Duration::from_secs(240));
        assert_eq!(retry_delay(40, hours), MAX_RETRY);
        // Tests check every second: retries start there too.
        assert_eq!(
            retry_delay(1, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn challenge_certificate_carries_the_acme_identifier() {
        let digest = [7u8; 32];
        let key = challenge_certificate("example.org", digest).expect("certificate");
        let der = &key.cert[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse");
        let oid = x509_parser::der_parser::oid!(1.3.6.1.5.5.7.1.31);
        let ext = cert
            .extensions()
            .iter()
            .find(|ext| ext.oid == oid)
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING (0x04) of 32 bytes holding the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        assert_eq!(
            CertInfo::parse(der).expect("info").names,
            vec!["example.org"]
        );
    }

    #[test]
    fn stored_accounts_belong_to_their_directory() {
        let json = br#"{"id":"https://ca/acct/1","key_pkcs8":"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJVWC_QzOTCS5vtsJp2IG-UDc8cdDfeoKtxSZxaznM-mhRANCAAQenCPoGgPFTdPJ7VLLKt56RxPlYT1wNXnHc54PEyBg3LxKaH0-sJkX0mL8LyPEdsfL_Oz4TxHkWLJGrXVtNhfH","directory":"https://ca/dir"}"#;
        assert!(
            stored_account(json, "https://ca/dir")
                .expect("parse")
                .is_some()
        );
        assert!(
            stored_account(json, "https://other/dir")
                .expect("parse")
                .is_none()
        );
        assert!(stored_account(b"{", "https://ca/dir").is_err());
    }

    #[test]
    fn cached_certificate_must_name_every_domain_and_be_valid() {
        let dir = std::env::temp_dir().join(format!(
            "whipcord-acme-cache-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let settings = Settings {
            domains: vec!["a.example".to_owned()],
            email: None,
            directory: "https://ca/dir".to_owned(),
            ca_file: None,
            dir: dir.clone(),
            check_every: Duration::from_secs(1),
        };
        assert!(cached(&settings).is_none());
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["a.example".to_owned(), "b.example".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(dir.join(CERT_FILE), cert.pem()).expect("cert");
        std::fs::write(dir.join(KEY_FILE), key.serialize_pem()).expect("key");
        assert!(cached(&settings).is_some());
        let other = Settings {
            domains: vec!["c.example".to_owned()],
            ..settings
        };
        assert!(cached(&other).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
