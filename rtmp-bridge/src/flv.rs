//! FLV tag bodies, the payloads of RTMP audio (type 8), video (type 9) and
//! data (type 18) messages: H264 as AVC sequence header + NALU packets, AAC
//! as AudioSpecificConfig + raw frames, and `onMetaData`; and the Enhanced
//! RTMP (E-RTMP v2, veovera/enhanced-rtmp) bodies for what legacy FLV
//! cannot name: H265, AV1 and VP9 video, Opus audio, each tagged with its
//! FourCC.
//!
//! The tag header (type, size, timestamp) is not here: RTMP carries those in
//! its own message header.
//!
//! This file writes bodies; [`parse`] reads what publishers send (the RTMP
//! ingest server's side).

use bytes::{BufMut, Bytes, BytesMut};
use recorder::codec::Codec;
use recorder::mp4::video_config_record;
use recorder::params::{VideoConfig, length_prefixed_nals, strip_av1_temporal_delimiters};
use recorder::rtp::Frame;

use crate::amf0::Amf0Value;

pub mod parse;

pub use parse::{AudioCodec, AudioTag, FlvError, VideoCodec, VideoTag};

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
/// delimiters (FLV tags already delimit frames). The frame is presented
/// `composition_ms` after the tag's (decode) timestamp: 0 unless the video
/// has B-frames. `None` when nothing remains.
pub fn avc_nalu_packet(access_unit: &[u8], keyframe: bool, composition_ms: i32) -> Option<Bytes> {
    let mut b = BytesMut::with_capacity(5 + access_unit.len());
    let frame_type = if keyframe { FRAME_KEY } else { FRAME_INTER };
    b.put_slice(&[frame_type | VIDEO_CODEC_AVC, AVC_NALU]);
    b.put_uint(u64::from(si24(composition_ms)), 3);
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

/// SI24: two's complement in 24 bits, clamped to its range.
fn si24(value: i32) -> u32 {
    value.clamp(-0x80_0000, 0x7f_ffff) as u32 & 0xff_ffff
}

/// A video frame's composition offset (presentation − decode time) in
/// whole milliseconds, as FLV's CompositionTime carries it; video runs on
/// a 90 kHz clock.
pub fn composition_ms(frame: &Frame) -> i32 {
    let ms = (i128::from(frame.composition_offset) * 1000 + 45_000).div_euclid(90_000);
    ms.clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as i32
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
            tags.nalu = avc_nalu_packet(&frame.data, frame.keyframe, composition_ms(frame));
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

/// A FourCC: how E-RTMP names a codec (in tag headers, `fourCcList`,
/// and `onMetaData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub [u8; 4]);

impl FourCc {
    pub const AV1: FourCc = FourCc(*b"av01");
    pub const VP9: FourCc = FourCc(*b"vp09");
    pub const HEVC: FourCc = FourCc(*b"hvc1");
    pub const AVC: FourCc = FourCc(*b"avc1");
    pub const OPUS: FourCc = FourCc(*b"Opus");
    pub const AAC: FourCc = FourCc(*b"mp4a");

    /// The E-RTMP video codec for `codec`, among those we send that way.
    /// H264 is not here: it goes as legacy AVC, which every server reads.
    pub fn enhanced_video(codec: Codec) -> Option<FourCc> {
        match codec {
            Codec::H265 => Some(FourCc::HEVC),
            Codec::Av1 => Some(FourCc::AV1),
            Codec::Vp9 => Some(FourCc::VP9),
            _ => None,
        }
    }

    /// The FourCC as a big-endian number, as `onMetaData`'s
    /// `videocodecid`/`audiocodecid` carry it (`"Opus"` = 1332770163).
    pub fn as_u32(self) -> u32 {
        u32::from_be_bytes(self.0)
    }

    /// Video codecs whose coded frames carry a composition time offset
    /// (NAL-unit codecs with B-frames); AV1 and VP frames have none.
    fn has_composition_time(self) -> bool {
        self == FourCc::AVC || self == FourCc::HEVC || self.0 == *b"vvc1"
    }
}

impl std::fmt::Display for FourCc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// What a publisher in E-RTMP mode announces in `connect`'s `fourCcList`:
/// every codec it may send on the connection, so AVC and AAC are listed
/// too although we send them with legacy tags.
pub const ENHANCED_FOURCC_LIST: [FourCc; 6] = [
    FourCc::AV1,
    FourCc::VP9,
    FourCc::HEVC,
    FourCc::AVC,
    FourCc::OPUS,
    FourCc::AAC,
];

/// How `onMetaData` names a codec: a legacy FLV id or an E-RTMP FourCC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecId {
    Flv(u8),
    FourCc(FourCc),
}

impl CodecId {
    pub fn as_number(self) -> f64 {
        match self {
            CodecId::Flv(id) => f64::from(id),
            CodecId::FourCc(fourcc) => f64::from(fourcc.as_u32()),
        }
    }
}

/// IsExHeader: the top bit of a video tag's first byte; the low nibble is
/// then a VideoPacketType, not a codec id.
const VIDEO_EX_HEADER: u8 = 0x80;
/// SoundFormat 9 (ExHeader): the low nibble is then an AudioPacketType.
const AUDIO_EX_HEADER: u8 = 9 << 4;
const EX_SEQUENCE_START: u8 = 0;
const EX_CODED_FRAMES: u8 = 1;
const EX_SEQUENCE_END: u8 = 2;
/// Coded frames whose composition time offset is 0, left off the wire.
const EX_CODED_FRAMES_X: u8 = 3;

fn ex_video_header(frame_type: u8, packet_type: u8, fourcc: FourCc, capacity: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(5 + capacity);
    b.put_u8(VIDEO_EX_HEADER | frame_type | packet_type);
    b.put_slice(&fourcc.0);
    b
}

/// An E-RTMP video SequenceStart: the codec's configuration record
/// (`hvcC`, `av1C` payload, or the VPCodecConfigurationRecord).
pub fn ex_video_sequence_start(fourcc: FourCc, record: &[u8]) -> Bytes {
    let mut b = ex_video_header(FRAME_KEY, EX_SEQUENCE_START, fourcc, record.len());
    b.put_slice(record);
    b.freeze()
}

/// An E-RTMP video CodedFrames body: one frame, `composition_ms` after its
/// decode time. For AVC/HEVC a zero offset is sent as CodedFramesX (the
/// spec's shortcut), otherwise as an SI24; AV1 and VP9 bodies have no
/// offset field at all, so it is ignored for them.
pub fn ex_video_coded_frames(
    fourcc: FourCc,
    keyframe: bool,
    composition_ms: i32,
    data: &[u8],
) -> Bytes {
    let frame_type = if keyframe { FRAME_KEY } else { FRAME_INTER };
    let with_offset = fourcc.has_composition_time() && composition_ms != 0;
    let packet_type = if fourcc.has_composition_time() && !with_offset {
        EX_CODED_FRAMES_X
    } else {
        EX_CODED_FRAMES
    };
    let mut b = ex_video_header(frame_type, packet_type, fourcc, 3 + data.len());
    if with_offset {
        b.put_uint(u64::from(si24(composition_ms)), 3);
    }
    b.put_slice(data);
    b.freeze()
}

/// An E-RTMP video SequenceEnd: no more frames of this sequence.
pub fn ex_video_sequence_end(fourcc: FourCc) -> Bytes {
    ex_video_header(FRAME_KEY, EX_SEQUENCE_END, fourcc, 0).freeze()
}

fn ex_audio(packet_type: u8, fourcc: FourCc, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + data.len());
    b.put_u8(AUDIO_EX_HEADER | packet_type);
    b.put_slice(&fourcc.0);
    b.put_slice(data);
    b.freeze()
}

/// An E-RTMP audio SequenceStart; for Opus `header` is the `OpusHead`
/// identification header (RFC 7845 §5.1).
pub fn ex_audio_sequence_start(fourcc: FourCc, header: &[u8]) -> Bytes {
    ex_audio(EX_SEQUENCE_START, fourcc, header)
}

/// An E-RTMP audio CodedFrames body; for Opus one packet.
pub fn ex_audio_coded_frames(fourcc: FourCc, data: &[u8]) -> Bytes {
    ex_audio(EX_CODED_FRAMES, fourcc, data)
}

/// Turns H265, AV1 or VP9 frames into E-RTMP video bodies: a SequenceStart
/// before the first keyframe and again whenever a keyframe's configuration
/// record differs from the last one sent, then one CodedFrames per frame.
#[derive(Debug)]
pub struct ExVideoTagger {
    codec: Codec,
    fourcc: FourCc,
    record: Option<Vec<u8>>,
    config: Option<VideoConfig>,
}

/// What one frame becomes: at most a SequenceStart and a coded frame, to be
/// sent in that order with the frame's timestamp.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExVideoTags {
    pub sequence_start: Option<Bytes>,
    pub coded: Option<Bytes>,
}

impl ExVideoTagger {
    /// `None` for a codec we do not send as E-RTMP (see
    /// [`FourCc::enhanced_video`]).
    pub fn new(codec: Codec) -> Option<Self> {
        Some(ExVideoTagger {
            codec,
            fourcc: FourCc::enhanced_video(codec)?,
            record: None,
            config: None,
        })
    }

    pub fn fourcc(&self) -> FourCc {
        self.fourcc
    }

    /// The bodies for one frame. Frames before the first keyframe with a
    /// readable configuration produce nothing: nobody could decode them.
    pub fn push(&mut self, frame: &Frame) -> ExVideoTags {
        let mut tags = ExVideoTags::default();
        if frame.codec != self.codec {
            return tags;
        }
        // The record MP4 recordings carry in their sample entry: one
        // builder for both, so what a server gets is what files get.
        if frame.keyframe
            && let Some(config) = VideoConfig::from_keyframe(frame)
            && let Ok(record) = video_config_record(&config)
            && self.record.as_ref() != Some(&record)
        {
            tags.sequence_start = Some(ex_video_sequence_start(self.fourcc, &record));
            self.record = Some(record);
            self.config = Some(config);
        }
        if self.record.is_none() {
            return tags;
        }
        let data = match self.codec {
            // Temporal delimiters are implied by the message boundaries
            // (like ISOBMFF samples, which forbid them).
            Codec::Av1 => strip_av1_temporal_delimiters(&frame.data),
            // H265 comes as length-prefixed NAL units (the hvcC format,
            // 4-byte lengths as the record says); VP9 as the frame itself.
            _ => frame.data.clone(),
        };
        if !data.is_empty() {
            tags.coded = Some(ex_video_coded_frames(
                self.fourcc,
                frame.keyframe,
                composition_ms(frame),
                &data,
            ));
        }
        tags
    }

    /// The configuration of the last SequenceStart (picture size for
    /// `onMetaData`).
    pub fn config(&self) -> Option<&VideoConfig> {
        self.config.as_ref()
    }

    /// The SequenceEnd to send before unpublishing, once a SequenceStart
    /// went out.
    pub fn sequence_end(&self) -> Option<Bytes> {
        self.record
            .is_some()
            .then(|| ex_video_sequence_end(self.fourcc))
    }
}

/// What `onMetaData` announces. Every field is optional: services show
/// what they get, and a missing audio part means a video-only stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frame_rate: Option<f64>,
    /// E.g. `CodecId::Flv(VIDEO_CODEC_AVC)` or `CodecId::FourCc(FourCc::HEVC)`.
    pub video_codec_id: Option<CodecId>,
    pub video_kbps: Option<f64>,
    /// E.g. `CodecId::Flv(AUDIO_CODEC_AAC)` or `CodecId::FourCc(FourCc::OPUS)`.
    pub audio_codec_id: Option<CodecId>,
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
        num("videocodecid", self.video_codec_id.map(CodecId::as_number));
        num("videodatarate", self.video_kbps);
        num("audiocodecid", self.audio_codec_id.map(CodecId::as_number));
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
        let body = avc_nalu_packet(&prefixed(&[aud, sps, pps, sei, idr]), true, 0).unwrap();
        let mut want = vec![0x17, 0x01, 0, 0, 0];
        want.extend_from_slice(&prefixed(&[sei, idr]));
        assert_eq!(body.as_ref(), want);

        let p: &[u8] = &[0x41, 7];
        let body = avc_nalu_packet(&prefixed(&[aud, p]), false, 0).unwrap();
        assert_eq!(body.as_ref(), [0x27, 0x01, 0, 0, 0, 0, 0, 0, 2, 0x41, 7]);

        assert_eq!(avc_nalu_packet(&prefixed(&[aud]), false, 0), None);
        // A truncated length stops the walk instead of reading past the end.
        assert_eq!(avc_nalu_packet(&[0, 0, 0, 9, 0x41], false, 0), None);
    }

    #[test]
    fn b_frames_carry_their_composition_time() {
        let p: &[u8] = &[0x41, 7];
        let mut frame = Frame {
            codec: Codec::H264,
            timestamp: 0,
            keyframe: false,
            data: Bytes::from(prefixed(&[p])),
            composition_offset: 6000, // two frames at 30 fps: 66.7 ms
        };
        assert_eq!(composition_ms(&frame), 67);
        let body = avc_nalu_packet(&frame.data, false, composition_ms(&frame)).unwrap();
        assert_eq!(body[..5], [0x27, 0x01, 0, 0, 67]);
        // Negative offsets are SI24 two's complement.
        frame.composition_offset = -90;
        let body = avc_nalu_packet(&frame.data, false, composition_ms(&frame)).unwrap();
        assert_eq!(body[..5], [0x27, 0x01, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn enhanced_video_bodies() {
        let start = ex_video_sequence_start(FourCc::HEVC, &[1, 2, 3]);
        assert_eq!(start.as_ref(), [0x90, b'h', b'v', b'c', b'1', 1, 2, 3]);
        // HEVC without a composition offset: CodedFramesX, no SI24.
        let x = ex_video_coded_frames(FourCc::HEVC, true, 0, &[7]);
        assert_eq!(x.as_ref(), [0x93, b'h', b'v', b'c', b'1', 7]);
        // With one: CodedFrames and a signed 24-bit offset.
        let b = ex_video_coded_frames(FourCc::HEVC, false, -2, &[7]);
        assert_eq!(
            b.as_ref(),
            [0xa1, b'h', b'v', b'c', b'1', 0xff, 0xff, 0xfe, 7]
        );
        let b = ex_video_coded_frames(FourCc::HEVC, false, 0x100_0000, &[]);
        assert_eq!(&b[5..8], [0x7f, 0xff, 0xff], "clamped");
        // AV1 and VP9 frames never carry an offset.
        let b = ex_video_coded_frames(FourCc::AV1, true, 5, &[9]);
        assert_eq!(b.as_ref(), [0x91, b'a', b'v', b'0', b'1', 9]);
        let b = ex_video_coded_frames(FourCc::VP9, false, 0, &[9]);
        assert_eq!(b.as_ref(), [0xa1, b'v', b'p', b'0', b'9', 9]);
        assert_eq!(
            ex_video_sequence_end(FourCc::VP9).as_ref(),
            [0x92, b'v', b'p', b'0', b'9']
        );
    }

    #[test]
    fn enhanced_audio_bodies_and_codec_ids() {
        assert_eq!(
            ex_audio_sequence_start(FourCc::OPUS, b"OpusHead").as_ref(),
            b"\x90OpusOpusHead"
        );
        assert_eq!(
            ex_audio_coded_frames(FourCc::OPUS, &[0xfc]).as_ref(),
            b"\x91Opus\xfc"
        );
        // The spec's own examples.
        assert_eq!(CodecId::FourCc(FourCc::OPUS).as_number(), 1332770163.0);
        assert_eq!(CodecId::FourCc(FourCc::AV1).as_number(), 1635135537.0);
        assert_eq!(CodecId::Flv(VIDEO_CODEC_AVC).as_number(), 7.0);
        assert_eq!(FourCc::enhanced_video(Codec::Vp8), None);
        assert_eq!(FourCc::enhanced_video(Codec::H264), None);
        assert_eq!(FourCc::HEVC.to_string(), "hvc1");
    }

    #[test]
    fn ex_tagger_waits_for_a_keyframe() {
        // An inter frame first (temporal delimiter, frame OBU): no
        // configuration yet, so nothing to send and nothing to end.
        let mut tagger = ExVideoTagger::new(Codec::Av1).unwrap();
        let inter = Frame {
            codec: Codec::Av1,
            timestamp: 0,
            keyframe: false,
            data: Bytes::from_static(&[0x12, 0x00, 0x32, 0x01, 0xaa]),
            composition_offset: 0,
        };
        assert_eq!(tagger.push(&inter), ExVideoTags::default());
        assert!(tagger.sequence_end().is_none());
        assert!(ExVideoTagger::new(Codec::H264).is_none());
    }

    #[test]
    fn metadata_names() {
        let m = Metadata {
            width: Some(640),
            height: Some(360),
            frame_rate: Some(30.0),
            video_codec_id: Some(CodecId::Flv(VIDEO_CODEC_AVC)),
            audio_codec_id: Some(CodecId::Flv(AUDIO_CODEC_AAC)),
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
