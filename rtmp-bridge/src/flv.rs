//! FLV tag bodies, the payloads of RTMP audio (type 8), video (type 9) and
//! data (type 18) messages: H264 as AVC sequence header + NALU packets, AAC
//! as AudioSpecificConfig + raw frames, and `onMetaData`.
//!
//! The tag header (type, size, timestamp) is not here: RTMP carries those in
//! its own message header.

use bytes::{BufMut, Bytes, BytesMut};
use recorder::codec::Codec;
use recorder::params::{VideoConfig, length_prefixed_nals};
use recorder::rtp::Frame;

use crate::amf0::Amf0Value;

/// FLV video codec id for AVC (H264).
pub const VIDEO_CODEC_AVC: u8 = 7;
/// FLV sound format for AAC.
pub const AUDIO_CODEC_AAC: u8 = 10;

const AVC_SEQUENCE_HEADER: u8 = 0;
const AVC_NALU: u8 = 1;
const AVC_END_OF_SEQUENCE: u8 = 2;
const FRAME_KEY: u8 = 1 << 4;
const FRAME_INTER: u8 = 2 << 4;

/// AAC, "44 kHz", 16-bit, stereo: the FLV spec requires exactly these bits
/// for AAC whatever the real rate and layout, which the
/// AudioSpecificConfig carries.
const AAC_TAG_BYTE: u8 = (AUDIO_CODEC_AAC << 4) | (3 << 2) | (1 << 1) | 1;
const AAC_SEQUENCE_HEADER: u8 = 0;
const AAC_RAW: u8 = 1;

/// The video body of an AVC sequence header from an
/// AVCDecoderConfigurationRecord (`avcC` payload).
pub fn avc_sequence_header(record: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + record.len());
    b.put_slice(&[FRAME_KEY | VIDEO_CODEC_AVC, AVC_SEQUENCE_HEADER, 0, 0, 0]);
    b.put_slice(record);
    b.freeze()
}

/// The AVC end-of-sequence body, sent before unpublishing so players know
/// no more frames follow.
pub fn avc_end_of_sequence() -> Bytes {
    Bytes::from_static(&[FRAME_KEY | VIDEO_CODEC_AVC, AVC_END_OF_SEQUENCE, 0, 0, 0])
}

/// An AVC NALU packet from an access unit with 4-byte NAL lengths.
///
/// SPS and PPS are left out (they travel in the sequence header, and
/// in-band copies make some ingests re-initialise) and so are access unit
/// delimiters (FLV tags already delimit frames). Composition time is 0:
/// WebRTC H264 has no B-frames, so decode order is presentation order.
/// `None` when nothing remains.
pub fn avc_nalu_packet(access_unit: &[u8], keyframe: bool) -> Option<Bytes> {
    let mut b = BytesMut::with_capacity(5 + access_unit.len());
    let frame_type = if keyframe { FRAME_KEY } else { FRAME_INTER };
    b.put_slice(&[frame_type | VIDEO_CODEC_AVC, AVC_NALU, 0, 0, 0]);
    for nal in length_prefixed_nals(access_unit) {
        let Some(&header) = nal.first() else { continue };
        if matches!(header & 0x1f, 7..=9) {
            continue;
        }
        b.put_u32(nal.len() as u32);
        b.put_slice(nal);
    }
    (b.len() > 5).then(|| b.freeze())
}

/// Turns H264 frames into FLV video bodies, sending the sequence header
/// first and again whenever a keyframe's SPS/PPS differ from the last ones
/// (resolution change, encoder restart).
#[derive(Debug, Default)]
pub struct AvcTagger {
    record: Option<Vec<u8>>,
    config: Option<VideoConfig>,
}

/// What one frame becomes: at most a sequence header and a NALU packet, to
/// be sent in that order with the frame's timestamp.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AvcTags {
    pub sequence_header: Option<Bytes>,
    pub nalu: Option<Bytes>,
}

impl AvcTagger {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bodies for one H264 frame. Frames before the first keyframe
    /// with parameter sets produce nothing: nobody could decode them.
    pub fn push(&mut self, frame: &Frame) -> AvcTags {
        let mut tags = AvcTags::default();
        if frame.codec != Codec::H264 {
            return tags;
        }
        if frame.keyframe
            && let Some(config) = VideoConfig::from_keyframe(frame)
            && let Some(record) = config.decoder_config_record()
            && self.record.as_ref() != Some(&record)
        {
            tags.sequence_header = Some(avc_sequence_header(&record));
            self.record = Some(record);
            self.config = Some(config);
        }
        if self.record.is_some() {
            tags.nalu = avc_nalu_packet(&frame.data, frame.keyframe);
        }
        tags
    }

    /// The configuration of the last sequence header (picture size for
    /// `onMetaData`).
    pub fn config(&self) -> Option<&VideoConfig> {
        self.config.as_ref()
    }
}

/// The 2-byte AudioSpecificConfig of AAC-LC (ISO/IEC 14496-3 §1.6.2.1);
/// `None` for a rate without a frequency index or more than 7 channels.
/// 48 kHz stereo gives `11 90`.
pub fn aac_lc_audio_specific_config(sample_rate: u32, channels: u8) -> Option<[u8; 2]> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let index = RATES.iter().position(|&r| r == sample_rate)? as u8;
    if channels == 0 || channels > 7 {
        return None;
    }
    let object_type = 2u8; // AAC LC
    Some([
        (object_type << 3) | (index >> 1),
        ((index & 1) << 7) | (channels << 3),
    ])
}

/// The audio body of an AAC sequence header (`AF 00` + AudioSpecificConfig).
pub fn aac_sequence_header(audio_specific_config: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + audio_specific_config.len());
    b.put_slice(&[AAC_TAG_BYTE, AAC_SEQUENCE_HEADER]);
    b.put_slice(audio_specific_config);
    b.freeze()
}

/// The audio body of one raw AAC frame (no ADTS header): `AF 01` + frame.
pub fn aac_raw_frame(frame: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + frame.len());
    b.put_slice(&[AAC_TAG_BYTE, AAC_RAW]);
    b.put_slice(frame);
    b.freeze()
}

/// What `onMetaData` announces. Every field is optional: services show
/// what they get, and a missing audio part means a video-only stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frame_rate: Option<f64>,
    /// FLV codec id, e.g. [`VIDEO_CODEC_AVC`].
    pub video_codec_id: Option<u8>,
    pub video_kbps: Option<f64>,
    /// FLV sound format, e.g. [`AUDIO_CODEC_AAC`].
    pub audio_codec_id: Option<u8>,
    pub audio_sample_rate: Option<u32>,
    pub audio_channels: Option<u8>,
    pub audio_kbps: Option<f64>,
    pub encoder: Option<String>,
}

impl Metadata {
    /// The `onMetaData` ECMA array, property names as the FLV spec
    /// (and FFmpeg, OBS) spell them.
    pub fn to_amf0(&self) -> Amf0Value {
        let mut p: Vec<(String, Amf0Value)> = Vec::new();
        let mut num = |name: &str, v: Option<f64>| {
            if let Some(v) = v {
                p.push((name.to_owned(), Amf0Value::Number(v)));
            }
        };
        num("width", self.width.map(f64::from));
        num("height", self.height.map(f64::from));
        num("framerate", self.frame_rate);
        num("videocodecid", self.video_codec_id.map(f64::from));
        num("videodatarate", self.video_kbps);
        num("audiocodecid", self.audio_codec_id.map(f64::from));
        num("audiosamplerate", self.audio_sample_rate.map(f64::from));
        num("audiosamplesize", self.audio_codec_id.map(|_| 16.0));
        num("audiodatarate", self.audio_kbps);
        if let Some(ch) = self.audio_channels {
            p.push(("stereo".into(), Amf0Value::Boolean(ch >= 2)));
        }
        if let Some(enc) = &self.encoder {
            p.push(("encoder".into(), Amf0Value::str(enc.clone())));
        }
        Amf0Value::EcmaArray(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixed(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in nals {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n);
        }
        out
    }

    #[test]
    fn asc_for_common_layouts() {
        assert_eq!(aac_lc_audio_specific_config(48000, 2), Some([0x11, 0x90]));
        assert_eq!(aac_lc_audio_specific_config(44100, 2), Some([0x12, 0x10]));
        assert_eq!(aac_lc_audio_specific_config(48000, 1), Some([0x11, 0x88]));
        assert_eq!(aac_lc_audio_specific_config(47999, 2), None);
        assert_eq!(aac_lc_audio_specific_config(48000, 0), None);
        assert_eq!(
            aac_sequence_header(&[0x11, 0x90]).as_ref(),
            [0xaf, 0x00, 0x11, 0x90]
        );
        assert_eq!(aac_raw_frame(&[1, 2]).as_ref(), [0xaf, 0x01, 1, 2]);
    }

    #[test]
    fn nalu_packet_drops_parameter_sets_and_delimiters() {
        let aud: &[u8] = &[0x09, 0xf0];
        let sps: &[u8] = &[0x67, 1, 2];
        let pps: &[u8] = &[0x68, 3];
        let sei: &[u8] = &[0x06, 5, 0x80];
        let idr: &[u8] = &[0x65, 9, 9, 9];
        let body = avc_nalu_packet(&prefixed(&[aud, sps, pps, sei, idr]), true).unwrap();
        let mut want = vec![0x17, 0x01, 0, 0, 0];
        want.extend_from_slice(&prefixed(&[sei, idr]));
        assert_eq!(body.as_ref(), want);

        let p: &[u8] = &[0x41, 7];
        let body = avc_nalu_packet(&prefixed(&[aud, p]), false).unwrap();
        assert_eq!(body.as_ref(), [0x27, 0x01, 0, 0, 0, 0, 0, 0, 2, 0x41, 7]);

        assert_eq!(avc_nalu_packet(&prefixed(&[aud]), false), None);
        // A truncated length stops the walk instead of reading past the end.
        assert_eq!(avc_nalu_packet(&[0, 0, 0, 9, 0x41], false), None);
    }

    #[test]
    fn metadata_names() {
        let m = Metadata {
            width: Some(640),
            height: Some(360),
            frame_rate: Some(30.0),
            video_codec_id: Some(VIDEO_CODEC_AVC),
            audio_codec_id: Some(AUDIO_CODEC_AAC),
            audio_sample_rate: Some(48000),
            audio_channels: Some(2),
            encoder: Some("Whipcord".into()),
            ..Default::default()
        };
        let v = m.to_amf0();
        assert_eq!(v.get("width"), Some(&Amf0Value::Number(640.0)));
        assert_eq!(v.get("videocodecid"), Some(&Amf0Value::Number(7.0)));
        assert_eq!(v.get("audiocodecid"), Some(&Amf0Value::Number(10.0)));
        assert_eq!(v.get("stereo"), Some(&Amf0Value::Boolean(true)));
        assert_eq!(v.get("videodatarate"), None);
        assert!(matches!(v, Amf0Value::EcmaArray(_)));
    }
}
