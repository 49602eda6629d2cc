//! Which of a camera's streams to play.
//!
//! Cameras offer a video stream, often audio, sometimes ONVIF metadata or a
//! backchannel. The hub carries one video and one audio track, in codecs a
//! browser or the transcoder handles; the first of each that fits is taken.

use recorder::codec::Codec;

/// One stream of the camera's SDP, as far as choosing goes.
#[derive(Debug, Clone)]
pub struct Offered<'a> {
    /// `video`, `audio`, `application`…
    pub media: &'a str,
    /// Lowercase RTP encoding name: `h264`, `mpeg4-generic`, `pcmu`…
    pub encoding: &'a str,
    pub clock_rate: u32,
    /// For AAC: whether the SDP gave its AudioSpecificConfig, without
    /// which it cannot be decoded.
    pub has_config: bool,
}

/// The audio codecs the RTSP client can pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Aac,
    G711u,
    G711a,
}

/// The streams to set up, by their index in the SDP.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Choice {
    pub video: Option<(usize, Codec)>,
    pub audio: Option<(usize, AudioCodec)>,
    /// Streams left out for their codec: `video/jpeg`…, for the log.
    pub unsupported: Vec<String>,
}

impl Choice {
    pub fn is_empty(&self) -> bool {
        self.video.is_none() && self.audio.is_none()
    }
}

pub fn choose<'a>(offered: impl IntoIterator<Item = Offered<'a>>) -> Choice {
    let mut choice = Choice::default();
    for (i, stream) in offered.into_iter().enumerate() {
        match stream.media {
            "video" => match video_codec(stream.encoding) {
                Some(codec) => {
                    choice.video.get_or_insert((i, codec));
                }
                None => choice.unsupported.push(describe(&stream)),
            },
            "audio" => match audio_codec(&stream) {
                Some(codec) => {
                    choice.audio.get_or_insert((i, codec));
                }
                None => choice.unsupported.push(describe(&stream)),
            },
            // Metadata and the like: not media for viewers, not worth a word.
            _ => {}
        }
    }
    choice
}

fn video_codec(encoding: &str) -> Option<Codec> {
    match encoding {
        "h264" => Some(Codec::H264),
        "h265" => Some(Codec::H265),
        _ => None,
    }
}

fn audio_codec(stream: &Offered<'_>) -> Option<AudioCodec> {
    // G.711 is always 8 kHz; another clock rate is not G.711 we can pass.
    match (stream.encoding, stream.clock_rate) {
        ("mpeg4-generic", _) if stream.has_config => Some(AudioCodec::Aac),
        ("pcmu", 8000) => Some(AudioCodec::G711u),
        ("pcma", 8000) => Some(AudioCodec::G711a),
        // Opus over RTSP: retina 0.4 has no depacketizer for it.
        _ => None,
    }
}

fn describe(stream: &Offered<'_>) -> String {
    let mut text = format!("{}/{}", stream.media, stream.encoding);
    if stream.encoding == "mpeg4-generic" && !stream.has_config {
        text.push_str(" (without its configuration)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(media: &'static str, encoding: &'static str, clock_rate: u32) -> Offered<'static> {
        Offered {
            media,
            encoding,
            clock_rate,
            has_config: true,
        }
    }

    #[test]
    fn the_first_usable_video_and_audio_are_taken() {
        let choice = choose([
            offer("application", "vnd.onvif.metadata", 90000),
            offer("video", "jpeg", 90000),
            offer("video", "h265", 90000),
            offer("video", "h264", 90000),
            offer("audio", "opus", 48000),
            offer("audio", "pcma", 8000),
            offer("audio", "mpeg4-generic", 16000),
        ]);
        assert_eq!(choice.video, Some((2, Codec::H265)));
        assert_eq!(choice.audio, Some((5, AudioCodec::G711a)));
        assert_eq!(choice.unsupported, ["video/jpeg", "audio/opus"]);
    }

    #[test]
    fn aac_needs_its_configuration() {
        let mut aac = offer("audio", "mpeg4-generic", 48000);
        aac.has_config = false;
        let choice = choose([aac, offer("audio", "pcmu", 16000)]);
        assert!(choice.is_empty());
        assert_eq!(
            choice.unsupported,
            [
                "audio/mpeg4-generic (without its configuration)",
                "audio/pcmu"
            ]
        );
        let choice = choose([offer("audio", "mpeg4-generic", 48000)]);
        assert_eq!(choice.audio, Some((0, AudioCodec::Aac)));
        assert_eq!(choice.video, None);
    }
}
