//! The certificate every handshake gets, swappable while the server runs.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Hands out the current certificate, or an ACME challenge certificate to
/// a validator. Swapping only affects handshakes that start afterwards;
/// open connections keep the certificate they began with.
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    /// TLS-ALPN-01 certificates by (lowercase) domain, while an order runs.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(key),
            challenges: RwLock::new(HashMap::new()),
        }
    }

    /// Serves `key` to every new connection.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Answers TLS-ALPN-01 for `domain` with `key` until removed.
    pub fn add_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        self.challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.to_ascii_lowercase(), key);
    }

    pub fn remove_challenge(&self, domain: &str) {
        self.challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&domain.to_ascii_lowercase());
    }

    fn challenge(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&domain.to_ascii_lowercase())
            .cloned()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wants_challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if wants_challenge {
            // RFC 8737 §3: a validator gets the challenge certificate or
            // nothing (no handshake), never the regular one.
            return hello.server_name().and_then(|name| self.challenge(name));
        }
        Some(self.current())
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::{ClientConnection, DigitallySignedStruct, ServerConnection, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;
    use crate::tls::{provider, self_signed};

    /// A client that accepts any certificate: these tests look at which
    /// certificate is presented, not whether it is trusted.
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

    /// An in-memory handshake; the leaf the server presented and the
    /// negotiated ALPN protocol.
    fn handshake(
        resolver: Arc<CertResolver>,
        sni: &str,
        alpn: &[&[u8]],
    ) -> Result<(CertificateDer<'static>, Option<Vec<u8>>), rustls::Error> {
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        // What actix-web ends up with: its h2 and http/1.1, then ours.
        server_config.alpn_protocols =
            vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        let mut client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth();
        client_config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = ServerName::try_from(sni.to_owned())
            .map_err(|_| rustls::Error::General("name".into()))?;
        let mut client = ClientConnection::new(Arc::new(client_config), name)?;
        let mut server = ServerConnection::new(Arc::new(server_config))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            client
                .write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            server
                .read_tls(&mut &buf[..])
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            server.process_new_packets()?;
            buf.clear();
            server
                .write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            client
                .read_tls(&mut &buf[..])
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                let leaf = client
                    .peer_certificates()
                    .and_then(|certs| certs.first().cloned())
                    .ok_or(rustls::Error::NoCertificatesPresented)?;
                return Ok((leaf, client.alpn_protocol().map(<[u8]>::to_vec)));
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    fn key(name: &str) -> Arc<CertifiedKey> {
        self_signed::temporary(&[name.to_owned()])
            .expect("certificate")
            .key
    }

    #[test]
    fn serves_the_current_certificate_and_swaps_it() {
        let first = key("a.example");
        let resolver = Arc::new(CertResolver::new(first.clone()));
        let (leaf, alpn) = handshake(resolver.clone(), "a.example", &[b"h2"]).expect("handshake");
        assert_eq!(leaf, first.cert[0]);
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

        let second = key("a.example");
        resolver.set(second.clone());
        let (leaf, _) = handshake(resolver, "a.example", &[b"http/1.1"]).expect("handshake");
        assert_eq!(leaf, second.cert[0]);
    }

    #[test]
    fn acme_validators_get_the_challenge_certificate_only() {
        let regular = key("a.example");
        let challenge = key("a.example");
        let resolver = Arc::new(CertResolver::new(regular.clone()));
        // No challenge registered: no certificate at all, not the regular one.
        assert!(handshake(resolver.clone(), "a.example", &[ACME_TLS_ALPN]).is_err());

        resolver.add_challenge("A.example", challenge.clone());
        let (leaf, alpn) =
            handshake(resolver.clone(), "a.example", &[ACME_TLS_ALPN]).expect("handshake");
        assert_eq!(leaf, challenge.cert[0]);
        assert_eq!(alpn.as_deref(), Some(ACME_TLS_ALPN));
        // Another name, or a browser: never the challenge certificate.
        assert!(handshake(resolver.clone(), "b.example", &[ACME_TLS_ALPN]).is_err());
        let (leaf, _) = handshake(resolver.clone(), "a.example", &[b"h2"]).expect("handshake");
        assert_eq!(leaf, regular.cert[0]);

        resolver.remove_challenge("a.example");
        assert!(handshake(resolver, "a.example", &[ACME_TLS_ALPN]).is_err());
    }
}
