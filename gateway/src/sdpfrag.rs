//! `application/trickle-ice-sdpfrag` bodies (RFC 8840) as used by WHIP/WHEP
//! PATCH: trickled candidates, and new ICE credentials for an ICE restart.

/// One trickled candidate and the media section it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrickledCandidate {
    /// The `candidate:…` attribute value, without the `a=` prefix.
    pub candidate: String,
    pub mid: Option<String>,
}

/// A parsed SDP fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdpFragment {
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    pub candidates: Vec<TrickledCandidate>,
    pub end_of_candidates: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpFragError {
    #[error("line {0} is not an SDP line")]
    NotSdp(usize),
    #[error("fragment is too large")]
    TooLarge,
}

impl SdpFragment {
    /// Upper bound on candidates in one PATCH; far above what any client sends.
    const MAX_CANDIDATES: usize = 64;

    pub fn parse(body: &str) -> Result<Self, SdpFragError> {
        let mut frag = SdpFragment::default();
        let mut mid: Option<String> = None;
        for (index, raw) in body.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let bytes = line.as_bytes();
            if bytes.len() < 2 || bytes[1] != b'=' {
                return Err(SdpFragError::NotSdp(index + 1));
            }
            let Some(attr) = line.strip_prefix("a=") else {
                if line.starts_with("m=") {
                    mid = None;
                }
                continue;
            };
            if let Some(v) = attr.strip_prefix("ice-ufrag:") {
                frag.ice_ufrag = Some(v.trim().to_owned());
            } else if let Some(v) = attr.strip_prefix("ice-pwd:") {
                frag.ice_pwd = Some(v.trim().to_owned());
            } else if let Some(v) = attr.strip_prefix("mid:") {
                mid = Some(v.trim().to_owned());
            } else if attr.starts_with("candidate:") {
                if frag.candidates.len() >= Self::MAX_CANDIDATES {
                    return Err(SdpFragError::TooLarge);
                }
                frag.candidates.push(TrickledCandidate {
                    candidate: attr.to_owned(),
                    mid: mid.clone(),
                });
            } else if attr == "end-of-candidates" {
                frag.end_of_candidates = true;
            }
        }
        Ok(frag)
    }

    /// Builds the body of a 200 answer to an ICE restart.
    pub fn restart_answer(ufrag: &str, pwd: &str, candidates: &[String]) -> String {
        let mut out = format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
        for c in candidates {
            out.push_str("a=");
            out.push_str(c.strip_prefix("a=").unwrap_or(c));
            out.push_str("\r\n");
        }
        out.push_str("a=end-of-candidates\r\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trickle_and_restart() {
        let body = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\na=end-of-candidates\r\n";
        let frag = SdpFragment::parse(body).expect("valid");
        assert_eq!(frag.ice_ufrag.as_deref(), Some("EsAw"));
        assert_eq!(frag.candidates.len(), 1);
        assert_eq!(frag.candidates[0].mid.as_deref(), Some("0"));
        assert!(frag.end_of_candidates);
    }

    #[test]
    fn rejects_garbage() {
        assert!(SdpFragment::parse("hello world").is_err());
    }
}
