//! Codecs Whipcord carries, and what can be read from one RTP payload
//! without reassembling frames: whether the packet starts a keyframe.
//!
//! Keyframe detection is what lets the hub cache the last GOP and give a new
//! viewer a decodable first frame even from publishers (OBS) that ignore PLI.

use std::fmt;

/// A media codec as negotiated in SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    H265,
    Vp8,
    Vp9,
    Av1,
    Opus,
    G711u,
    G711a,
    /// AAC-LC. Never negotiated over WebRTC (so [`Codec::from_mime`] does
    /// not map it): RTMP and RTSP sources publish it, the transcoder makes
    /// it for RTMP and HLS, whose players expect it, and the MP4 writer
    /// stores it. In RTP it is RFC 3640 `mpeg4-generic`, AAC-hbr mode
    /// ([`crate::rtp::packetize::aac_payload`]).
    Aac,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

impl Codec {
    /// Maps an SDP/WebRTC MIME type (`video/H264`) or encoding name (`H264`).
    pub fn from_mime(mime: &str) -> Option<Self> {
        let name = mime.rsplit('/').next().unwrap_or(mime);
        let codec = match name.to_ascii_lowercase().as_str() {
            "h264" => Codec::H264,
            "h265" | "hevc" => Codec::H265,
            "vp8" => Codec::Vp8,
            "vp9" => Codec::Vp9,
            "av1" | "av1x" => Codec::Av1,
            "opus" => Codec::Opus,
            "pcmu" => Codec::G711u,
            "pcma" => Codec::G711a,
            _ => return None,
        };
        Some(codec)
    }

    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Opus | Codec::G711u | Codec::G711a | Codec::Aac => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }

    /// The SDP encoding name.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::H264 => "H264",
            Codec::H265 => "H265",
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::Av1 => "AV1",
            Codec::Opus => "opus",
            Codec::G711u => "PCMU",
            Codec::G711a => "PCMA",
            // RFC 3640's name for AAC over RTP.
            Codec::Aac => "MPEG4-GENERIC",
        }
    }

    /// Whether this RTP payload is the first packet of a keyframe, or a
    /// parameter-set packet that precedes one (SPS/VPS travel ahead of the
    /// IDR in the same access unit). Audio is never a keyframe.
    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Codec::H264 => h264_keyframe(payload),
            Codec::H265 => h265_keyframe(payload),
            Codec::Vp8 => vp8_keyframe(payload),
            Codec::Vp9 => vp9_keyframe(payload),
            Codec::Av1 => av1_keyframe(payload),
            Codec::Opus | Codec::G711u | Codec::G711a | Codec::Aac => false,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // What people call it; its RTP name says little.
            Codec::Aac => f.write_str("AAC"),
            _ => f.write_str(self.encoding_name()),
        }
    }
}

fn h264_nal_is_key(nal_type: u8) -> bool {
    // 5 = IDR slice, 7 = SPS (always sent right before an IDR by encoders
    // that repeat headers, and never mid-GOP by WebRTC encoders).
    matches!(nal_type, 5 | 7)
}

fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        // STAP-A: 1-byte header, then (u16 size, NAL)*.
        24 => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + size) else {
                    return false;
                };
                if nal.first().is_some_and(|b| h264_nal_is_key(b & 0x1f)) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        // FU-A: keyframe only on the fragment carrying the start bit.
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && h264_nal_is_key(fu & 0x1f)),
        nal => h264_nal_is_key(nal),
    }
}

fn h265_nal_is_key(nal_type: u8) -> bool {
    // 16..=21 are IRAP pictures (BLA, IDR, CRA); 32 = VPS, 33 = SPS.
    (16..=21).contains(&nal_type) || matches!(nal_type, 32 | 33)
}

fn h265_keyframe(payload: &[u8]) -> bool {
    if payload.len() < 3 {
        return false;
    }
    match (payload[0] >> 1) & 0x3f {
        // Aggregation packet: 2-byte header, then (u16 size, NAL)*.
        48 => {
            let mut rest = &payload[2..];
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + size) else {
                    return false;
                };
                if nal
                    .first()
                    .is_some_and(|b| h265_nal_is_key((b >> 1) & 0x3f))
                {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        // Fragmentation unit: start bit and type in the third byte.
        49 => payload[2] & 0x80 != 0 && h265_nal_is_key(payload[2] & 0x3f),
        nal => h265_nal_is_key(nal),
    }
}

fn vp8_keyframe(payload: &[u8]) -> bool {
    // RFC 7741 payload descriptor, then the VP8 frame header whose lowest
    // bit is 0 for a key frame.
    let Some(&first) = payload.first() else {
        return false;
    };
    let start_of_partition = first & 0x10 != 0;
    let partition_id = first & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut offset = 1;
    if first & 0x80 != 0 {
        let Some(&ext) = payload.get(1) else {
            return false;
        };
        offset += 1;
        if ext & 0x80 != 0 {
            // PictureID, 7 or 15 bits.
            let Some(&pid) = payload.get(offset) else {
                return false;
            };
            offset += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            offset += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            offset += 1; // TID/Y/KEYIDX
        }
    }
    payload.get(offset).is_some_and(|b| b & 0x01 == 0)
}

fn vp9_keyframe(payload: &[u8]) -> bool {
    // RFC 9628 descriptor: I P L F B E V Z. A keyframe is a frame start (B)
    // that is not inter-predicted (P = 0); with spatial layers, only the
    // base layer's start counts.
    let Some(&first) = payload.first() else {
        return false;
    };
    let predicted = first & 0x40 != 0;
    let begins_frame = first & 0x08 != 0;
    if predicted || !begins_frame {
        return false;
    }
    if first & 0x20 != 0 {
        // Layer indices present: find the spatial id.
        let mut offset = 1;
        if first & 0x80 != 0 {
            let Some(&pid) = payload.get(offset) else {
                return false;
            };
            offset += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        let Some(&layers) = payload.get(offset) else {
            return false;
        };
        let spatial_id = (layers >> 1) & 0x07;
        return spatial_id == 0;
    }
    true
}

fn av1_keyframe(payload: &[u8]) -> bool {
    // RTP aggregation header Z Y W W N - - -: N marks the first packet of a
    // coded video sequence, i.e. a keyframe with a sequence header.
    payload.first().is_some_and(|b| b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_variants() {
        assert!(Codec::H264.starts_keyframe(&[0x65, 0x88])); // IDR
        assert!(Codec::H264.starts_keyframe(&[0x67, 0x42])); // SPS
        assert!(!Codec::H264.starts_keyframe(&[0x41, 0x9a])); // non-IDR slice
        // STAP-A with SPS then PPS.
        assert!(Codec::H264.starts_keyframe(&[0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]));
        assert!(!Codec::H264.starts_keyframe(&[0x78, 0, 2, 0x68, 0xce]));
        // FU-A start of IDR, and a middle fragment.
        assert!(Codec::H264.starts_keyframe(&[0x7c, 0x85, 1]));
        assert!(!Codec::H264.starts_keyframe(&[0x7c, 0x05, 1]));
        // Truncated STAP-A never panics.
        assert!(!Codec::H264.starts_keyframe(&[0x78, 0, 9, 0x67]));
        assert!(!Codec::H264.starts_keyframe(&[]));
    }

    #[test]
    fn vp8_and_vp9() {
        // S=1, PID=0, no extensions, keyframe bit 0.
        assert!(Codec::Vp8.starts_keyframe(&[0x10, 0x00]));
        assert!(!Codec::Vp8.starts_keyframe(&[0x10, 0x01]));
        // With X, I (15-bit picture id).
        assert!(Codec::Vp8.starts_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        assert!(Codec::Vp9.starts_keyframe(&[0x88]));
        assert!(!Codec::Vp9.starts_keyframe(&[0xc8]));
    }

    #[test]
    fn h265_and_av1() {
        assert!(Codec::H265.starts_keyframe(&[19 << 1, 1, 0])); // IDR_W_RADL
        assert!(Codec::H265.starts_keyframe(&[49 << 1, 1, 0x80 | 19]));
        assert!(!Codec::H265.starts_keyframe(&[1 << 1, 1, 0]));
        assert!(Codec::Av1.starts_keyframe(&[0x18]));
        assert!(!Codec::Av1.starts_keyframe(&[0x10]));
    }

    #[test]
    fn mime_names() {
        assert_eq!(Codec::from_mime("video/H264"), Some(Codec::H264));
        assert_eq!(Codec::from_mime("audio/OPUS"), Some(Codec::Opus));
        assert_eq!(Codec::from_mime("video/rtx"), None);
    }
}
