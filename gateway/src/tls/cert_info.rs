//! What the logs and the renewal logic need to know about a certificate:
//! its SHA-256 fingerprint, validity and names.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::TlsError;

/// A parsed leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-256 of the DER, uppercase hex pairs joined by colons (what
    /// browsers and `openssl x509 -fingerprint -sha256` show).
    pub fingerprint: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Subject alternative names: DNS names and IP addresses.
    pub names: Vec<String>,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|err| TlsError::X509(err.to_string()))?;
        let validity = cert.validity();
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            names.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            fingerprint: fingerprint(der),
            not_before: unix_time(validity.not_before.timestamp()),
            not_after: unix_time(validity.not_after.timestamp()),
            names,
        })
    }

    /// Whether every one of `domains` is among the certificate's names.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains
            .iter()
            .all(|domain| self.names.contains(&domain.to_ascii_lowercase()))
    }

    /// When a third of the validity period is left: the point where ACME
    /// clients conventionally renew (Let's Encrypt's 90 days → day 60).
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_after
            .checked_sub(lifetime / 3)
            .unwrap_or(self.not_before)
    }
}

/// SHA-256 of `der` as `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn unix_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_colon_separated_uppercase_sha256() {
        // SHA-256 of the empty string.
        let fp = fingerprint(b"");
        assert_eq!(
            fp,
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:\
             27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
        );
    }

    #[test]
    fn parses_names_validity_and_renewal_point() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["Example.org".to_owned(), "::1".to_owned()])
                .expect("params");
        let start = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        params.not_before = start;
        params.not_after = start + time::Duration::days(90);
        let cert = params.self_signed(&key).expect("cert");
        let info = CertInfo::parse(cert.der()).expect("parse");
        assert_eq!(info.names, vec!["example.org", "::1"]);
        assert!(info.covers(&["example.org".to_owned()]));
        assert!(!info.covers(&["other.org".to_owned()]));
        assert_eq!(info.fingerprint, fingerprint(cert.der()));
        let renew = info
            .renew_at()
            .duration_since(info.not_before)
            .expect("after start");
        assert_eq!(renew, Duration::from_secs(60 * 86_400));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(CertInfo::parse(b"nope"), Err(TlsError::X509(_))));
    }
}
