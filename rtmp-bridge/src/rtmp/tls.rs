//! TLS for `rtmps://`: rustls with the ring provider (no aws-lc-rs and its
//! cmake build), trusting the system's root certificates plus, optionally,
//! a CA file the operator names (a private CA, or the tests' own).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use thiserror::Error;

/// How to verify the server of an `rtmps://` target.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM file with extra CA certificates to trust besides the system's.
    pub extra_ca_file: Option<PathBuf>,
    /// Leave out the system's roots (tests: trust only the test CA).
    pub skip_native_roots: bool,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("CA file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("no trusted root certificates: the system store is empty and no CA file was given")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsConfig {
    /// Trust the system's roots and the CA certificates in `path`.
    pub fn with_ca_file(path: impl Into<PathBuf>) -> Self {
        TlsConfig {
            extra_ca_file: Some(path.into()),
            skip_native_roots: false,
        }
    }

    /// The rustls client configuration. Reads the system store and the CA
    /// file each time: call it once per target, not per connection, if
    /// that matters.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = RootCertStore::empty();
        if !self.skip_native_roots {
            // Unreadable system certificates are skipped, as browsers do;
            // the result is checked for emptiness below.
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(%error, "skipping a system root certificate");
            }
            roots.add_parsable_certificates(native.certs);
        }
        if let Some(path) = &self.extra_ca_file {
            let ca_error = |message: String| TlsError::CaFile {
                path: path.clone(),
                message,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no certificates in the file".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| ca_error(format!("unusable certificate: {e}")))?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_ca_file_is_named() {
        let missing = TlsConfig::with_ca_file("/nonexistent/ca.pem");
        let err = missing.client_config().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");

        let dir = std::env::temp_dir().join(format!("rtmp-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsConfig {
            extra_ca_file: Some(empty),
            skip_native_roots: true,
        }
        .client_config()
        .unwrap_err()
        .to_string();
        assert!(err.contains("no certificates"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
