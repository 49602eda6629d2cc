//! `--tls self-signed`: one certificate generated at first start into the
//! data directory and reused afterwards, so a browser exception or a
//! pinned fingerprint stays valid across restarts. Also the stand-in ACME
//! serves until its first certificate arrives.

use std::path::Path;

use rcgen::{CertificateParams, DnType, KeyPair};
use tracing::{info, warn};

use super::disk::{self, PRIVATE, PUBLIC};
use super::{Loaded, TlsError, files};

const CERT_FILE: &str = "self-signed.crt";
const KEY_FILE: &str = "self-signed.key";
/// Ten years: nobody should have to regenerate a pinned self-signed
/// certificate (browsers cap validity only for publicly trusted CAs).
const VALIDITY_DAYS: i64 = 3650;

/// Loads `{dir}/self-signed.crt` and `.key`, or generates them.
pub fn load_or_create(dir: &Path) -> Result<Loaded, TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if cert_path.exists() || key_path.exists() {
        match files::load(&cert_path, &key_path) {
            Ok(loaded) => {
                log(&loaded, &cert_path, "reused");
                return Ok(loaded);
            }
            // Regenerating changes the fingerprint clients may have
            // pinned, but a broken pair would never serve at all.
            Err(err) => warn!("regenerating the self-signed certificate: {err}"),
        }
    }
    disk::create_dir(dir)?;
    let names = local_names();
    let (cert_pem, key_pem) = generate(&names)?;
    // The key first: a crash in between leaves a pair that does not match
    // and is regenerated at the next start.
    disk::write_atomic(&key_path, key_pem.as_bytes(), PRIVATE)?;
    disk::write_atomic(&cert_path, cert_pem.as_bytes(), PUBLIC)?;
    let loaded = files::parse(
        cert_pem.as_bytes(),
        key_pem.as_bytes(),
        &cert_path.display().to_string(),
        &key_path.display().to_string(),
    )?;
    log(&loaded, &cert_path, "generated");
    Ok(loaded)
}

/// An in-memory certificate for `names` (never written).
pub fn temporary(names: &[String]) -> Result<Loaded, TlsError> {
    let (cert_pem, key_pem) = generate(names)?;
    files::parse(
        cert_pem.as_bytes(),
        key_pem.as_bytes(),
        "temporary certificate",
        "temporary key",
    )
}

fn log(loaded: &Loaded, path: &Path, what: &str) {
    info!(
        path = %path.display(),
        fingerprint = %loaded.info.fingerprint,
        expires = %humantime::format_rfc3339_seconds(loaded.info.not_after),
        names = %loaded.info.names.join(","),
        "self-signed TLS certificate {what}"
    );
}

/// A certificate and key (PEM) for `names` (DNS names or IP addresses).
fn generate(names: &[String]) -> Result<(String, String), TlsError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Whipcord self-signed");
    // A day back: clients with a slightly slow clock accept it too.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// localhost, the loopback addresses and this machine's host name.
fn local_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = hostname() {
        let host = host.to_ascii_lowercase();
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

/// The host name, if it is one a certificate can carry.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..len]).ok()?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = std::env::temp_dir().join(format!(
            "whipcord-tls-self-signed-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let first = load_or_create(&dir).expect("generate");
        for name in ["localhost", "127.0.0.1", "::1"] {
            assert!(first.info.names.iter().any(|n| n == name), "{name}");
        }
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(&dir).expect("reuse");
        assert_eq!(again.info.fingerprint, first.info.fingerprint);

        // A key that no longer matches: a new pair.
        let (_, other_key) = generate(&["x".to_owned()]).expect("other");
        std::fs::write(dir.join(KEY_FILE), other_key).expect("overwrite");
        let fresh = load_or_create(&dir).expect("regenerate");
        assert_ne!(fresh.info.fingerprint, first.info.fingerprint);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
