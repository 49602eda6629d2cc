//! A quick look at an offer before the WebRTC stack sees it: which media
//! sections it has, which way they go, and which codecs they list. This is
//! what lets us answer 400/406 with a message naming the problem instead of
//! an opaque negotiation failure.

use recorder::codec::{Codec, MediaKind};

/// Direction of a media section from the offerer's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    pub kind: Option<MediaKind>,
    pub direction: Direction,
    pub codecs: Vec<Codec>,
    pub rids: Vec<String>,
    pub port_zero: bool,
}

impl MediaSection {
    fn sends(&self) -> bool {
        !self.port_zero && matches!(self.direction, Direction::SendRecv | Direction::SendOnly)
    }

    fn receives(&self) -> bool {
        !self.port_zero && matches!(self.direction, Direction::SendRecv | Direction::RecvOnly)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferSummary {
    pub sections: Vec<MediaSection>,
    pub has_data_channel: bool,
}

impl OfferSummary {
    pub fn parse(sdp: &str) -> Result<Self, String> {
        let mut summary = OfferSummary::default();
        let mut session_direction = Direction::SendRecv;
        let mut current: Option<MediaSection> = None;
        let mut saw_version = false;
        for line in sdp.lines() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            if !saw_version {
                if line != "v=0" {
                    return Err("SDP must start with v=0".into());
                }
                saw_version = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("m=") {
                if let Some(done) = current.take() {
                    summary.sections.push(done);
                }
                let mut fields = rest.split_whitespace();
                let media = fields.next().unwrap_or_default();
                let port = fields.next().unwrap_or_default();
                let kind = match media {
                    "audio" => Some(MediaKind::Audio),
                    "video" => Some(MediaKind::Video),
                    "application" => {
                        summary.has_data_channel = port != "0";
                        None
                    }
                    _ => None,
                };
                current = Some(MediaSection {
                    kind,
                    direction: session_direction,
                    codecs: Vec::new(),
                    rids: Vec::new(),
                    port_zero: port == "0",
                });
                continue;
            }
            let Some(attr) = line.strip_prefix("a=") else {
                continue;
            };
            let direction = match attr {
                "sendrecv" => Some(Direction::SendRecv),
                "sendonly" => Some(Direction::SendOnly),
                "recvonly" => Some(Direction::RecvOnly),
                "inactive" => Some(Direction::Inactive),
                _ => None,
            };
            match (&mut current, direction) {
                (Some(section), Some(d)) => section.direction = d,
                (None, Some(d)) => session_direction = d,
                (Some(section), None) => {
                    if let Some(map) = attr.strip_prefix("rtpmap:") {
                        let name = map
                            .split_whitespace()
                            .nth(1)
                            .and_then(|enc| enc.split('/').next())
                            .unwrap_or_default();
                        if let Some(codec) = Codec::from_mime(name)
                            && !section.codecs.contains(&codec)
                        {
                            section.codecs.push(codec);
                        }
                    } else if let Some(id) = attr
                        .strip_prefix("rid:")
                        .and_then(|rid| rid.split_whitespace().next())
                    {
                        section.rids.push(id.to_owned());
                    }
                }
                (None, None) => {}
            }
        }
        if let Some(done) = current.take() {
            summary.sections.push(done);
        }
        if !saw_version {
            return Err("empty SDP".into());
        }
        if summary.sections.is_empty() {
            return Err("offer has no media sections".into());
        }
        Ok(summary)
    }

    /// Audio/video sections the offerer sends (a publisher's tracks).
    pub fn sending_tracks(&self) -> usize {
        self.sections
            .iter()
            .filter(|s| s.kind.is_some() && s.sends())
            .count()
    }

    /// Whether some section of `kind` can receive.
    pub fn receives(&self, kind: MediaKind) -> bool {
        self.sections
            .iter()
            .any(|s| s.kind == Some(kind) && s.receives())
    }

    /// Whether some receiving section of the codec's kind lists the codec.
    pub fn can_receive(&self, codec: Codec) -> bool {
        self.sections
            .iter()
            .any(|s| s.kind == Some(codec.kind()) && s.receives() && s.codecs.contains(&codec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBS: &str = "v=0\r\no=rtc 1 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=group:LS 0 1\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 H264/90000\r\na=rid:0 send\r\na=rid:1 send\r\n";

    #[test]
    fn reads_obs_offer() {
        let s = OfferSummary::parse(OBS).expect("valid");
        assert_eq!(s.sending_tracks(), 2);
        assert_eq!(s.sections[0].codecs, vec![Codec::Opus]);
        assert_eq!(s.sections[1].rids, vec!["0", "1"]);
        assert!(!s.receives(MediaKind::Video));
    }

    #[test]
    fn rejects_garbage() {
        assert!(OfferSummary::parse("hello").is_err());
        assert!(OfferSummary::parse("v=0\r\ns=-\r\n").is_err());
    }
}
