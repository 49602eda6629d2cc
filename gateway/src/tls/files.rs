//! `--tls-cert`/`--tls-key`: a PEM chain and key, reloaded on SIGHUP and
//! when either file changes (certbot and friends replace them in place).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{debug, info, warn};

use super::{Loaded, TlsError, resolver::CertResolver};

/// Reads and checks a chain and its key.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    parse(
        &read(cert)?,
        &read(key)?,
        &cert.display().to_string(),
        &key.display().to_string(),
    )
}

/// Parses a PEM chain (leaf first) and a PEM private key (PKCS#8, PKCS#1
/// or SEC1); `cert_what`/`key_what` name them in errors.
pub fn parse(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_what: &str,
    key_what: &str,
) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: cert_what.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what: cert_what.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            what: key_what.to_owned(),
        },
        source => TlsError::Pem {
            what: key_what.to_owned(),
            source,
        },
    })?;
    Loaded::new(chain, key, cert_what)
}

/// What tells a replaced file from the one loaded: modification time,
/// size and inode (a rename over it changes the inode even when the time
/// does not).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // Follow symlinks: certbot's live/ files are links into archive/.
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// Reloads the pair on SIGHUP and whenever a file's stamp changes (checked
/// every `interval`). A pair that does not load keeps the old certificate
/// and logs a warning; it is tried again when a file changes again or on
/// the next SIGHUP.
///
/// The SIGHUP handler is installed before this returns (SIGHUP's default
/// action ends the process); must be called within a tokio runtime.
pub fn spawn_watch(resolver: Arc<CertResolver>, cert: PathBuf, key: PathBuf, interval: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let hangup = match signal(SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(err) => {
            warn!("cannot listen for SIGHUP ({err}); TLS files are reloaded when they change");
            None
        }
    };
    tokio::spawn(watch(resolver, cert, key, interval, hangup));
}

async fn watch(
    resolver: Arc<CertResolver>,
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    mut hangup: Option<tokio::signal::unix::Signal>,
) {
    let mut seen = (stamp(&cert), stamp(&key));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reason = tokio::select! {
            Some(()) = async {
                match hangup.as_mut() {
                    Some(stream) => stream.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            _ = ticker.tick() => {
                let now = (stamp(&cert), stamp(&key));
                if now == seen {
                    continue;
                }
                "file changed"
            }
        };
        // Stamps taken before reading: a write that finishes after the
        // read changes them again, and the next tick tries once more.
        seen = (stamp(&cert), stamp(&key));
        reload(&resolver, &cert, &key, reason);
    }
}

fn reload(resolver: &CertResolver, cert: &Path, key: &Path, reason: &str) {
    match load(cert, key) {
        Ok(loaded) => {
            let previous = resolver.current();
            if previous.cert.first() == loaded.key.cert.first() {
                debug!(reason, "TLS files reloaded; certificate unchanged");
            } else {
                info!(reason, "TLS certificate replaced");
            }
            loaded.log("files");
            resolver.set(loaded.key);
        }
        Err(err) => {
            warn!(reason, "keeping the current TLS certificate: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn parses_a_matching_pair() {
        let (cert, key) = pair("a.example");
        let loaded = parse(cert.as_bytes(), key.as_bytes(), "cert", "key").expect("loads");
        assert_eq!(loaded.info.names, vec!["a.example"]);
        assert_eq!(loaded.key.cert.len(), 1);
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let (cert, key) = pair("a.example");
        let (_, other_key) = pair("b.example");
        let err = parse(cert.as_bytes(), other_key.as_bytes(), "c.pem", "k.pem")
            .err()
            .expect("mismatch");
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
        let err = parse(b"", key.as_bytes(), "c.pem", "k.pem")
            .err()
            .expect("no cert");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let err = parse(cert.as_bytes(), cert.as_bytes(), "c.pem", "k.pem")
            .err()
            .expect("no key");
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("k.pem"), "{err}");
    }

    #[tokio::test]
    async fn a_changed_file_is_picked_up_and_a_broken_one_ignored() {
        let dir = std::env::temp_dir().join(format!("whipcord-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert_path, key_path) = (dir.join("c.pem"), dir.join("k.pem"));
        let (cert, key) = pair("one.example");
        std::fs::write(&cert_path, &cert).expect("cert");
        std::fs::write(&key_path, &key).expect("key");
        let first = load(&cert_path, &key_path).expect("load");
        let resolver = Arc::new(CertResolver::new(first.key.clone()));
        let task = tokio::spawn(watch(
            resolver.clone(),
            cert_path.clone(),
            key_path.clone(),
            Duration::from_millis(20),
            None,
        ));

        // A certificate whose key has not arrived yet: ignored.
        let (cert2, key2) = pair("two.example");
        std::fs::write(&cert_path, &cert2).expect("cert2");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(resolver.current().cert, first.key.cert);

        // The key follows: now the pair loads.
        std::fs::write(&key_path, &key2).expect("key2");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while resolver.current().cert == first.key.cert {
            assert!(tokio::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let info = super::super::CertInfo::parse(&resolver.current().cert[0]).expect("parse");
        assert_eq!(info.names, vec!["two.example"]);
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
