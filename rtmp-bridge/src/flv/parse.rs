//! FLV tag bodies, read side: what a publisher sends in RTMP video (type 9)
//! and audio (type 8) messages, as typed values. Legacy FLV (AVC, AAC, and
//! the HEVC codec id 12 that Chinese CDNs and some encoders use) and
//! Enhanced RTMP v2 (by FourCC, with ModEx prefixes skipped).
//!
//! Parsing never copies: payloads are slices of the message's `Bytes`.
//! Anything this reader does not decode (command frames, E-RTMP multitrack
//! and metadata packets, unknown packet types) comes back as `Unsupported`
//! rather than an error, so one exotic tag does not end a stream; only a
//! body that ends before its own header does is an error.

use bytes::Bytes;
use recorder::codec::Codec;
use thiserror::Error;

use super::{AUDIO_CODEC_AAC, CodecId, FourCc, VIDEO_CODEC_AVC};

/// The legacy FLV codec id some encoders use for HEVC (not in Adobe's
/// spec; same layout as AVC).
pub const VIDEO_CODEC_HEVC_LEGACY: u8 = 12;

const FRAME_TYPE_KEY: u8 = 1;
const FRAME_TYPE_GENERATED_KEY: u8 = 4;
const FRAME_TYPE_COMMAND: u8 = 5;

const PACKET_SEQUENCE_START: u8 = 0;
const PACKET_CODED_FRAMES: u8 = 1;
const PACKET_SEQUENCE_END: u8 = 2;
const VIDEO_PACKET_CODED_FRAMES_X: u8 = 3;
const VIDEO_PACKET_METADATA: u8 = 4;
const VIDEO_PACKET_MULTITRACK: u8 = 6;
const AUDIO_PACKET_MULTICHANNEL_CONFIG: u8 = 4;
const AUDIO_PACKET_MULTITRACK: u8 = 5;
const PACKET_MOD_EX: u8 = 7;
/// SoundFormat 9: an E-RTMP audio header follows.
const SOUND_FORMAT_EX_HEADER: u8 = 9;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlvError {
    #[error("empty {0} tag")]
    Empty(&'static str),
    #[error("{0} tag ends inside its header")]
    Truncated(&'static str),
}

/// A video codec as a tag names it, with the legacy and E-RTMP names of the
/// same codec folded together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// Legacy id 7 or FourCC `avc1`.
    H264,
    /// Legacy id 12 or FourCC `hvc1`.
    H265,
    /// FourCC `av01`.
    Av1,
    /// FourCC `vp09`.
    Vp9,
    /// Anything else (Sorenson, VP6, `vvc1`…), as sent.
    Other(CodecId),
}

impl VideoCodec {
    fn from_fourcc(fourcc: FourCc) -> Self {
        match fourcc {
            FourCc::AVC => VideoCodec::H264,
            FourCc::HEVC => VideoCodec::H265,
            FourCc::AV1 => VideoCodec::Av1,
            FourCc::VP9 => VideoCodec::Vp9,
            other => VideoCodec::Other(CodecId::FourCc(other)),
        }
    }

    fn from_legacy(id: u8) -> Self {
        match id {
            VIDEO_CODEC_AVC => VideoCodec::H264,
            VIDEO_CODEC_HEVC_LEGACY => VideoCodec::H265,
            other => VideoCodec::Other(CodecId::Flv(other)),
        }
    }

    /// The codec as the rest of Whipcord names it, if it is one we handle.
    pub fn codec(self) -> Option<Codec> {
        match self {
            VideoCodec::H264 => Some(Codec::H264),
            VideoCodec::H265 => Some(Codec::H265),
            VideoCodec::Av1 => Some(Codec::Av1),
            VideoCodec::Vp9 => Some(Codec::Vp9),
            VideoCodec::Other(_) => None,
        }
    }

    /// Codecs whose frames carry a composition time offset (B-frames).
    fn has_composition_time(self) -> bool {
        matches!(self, VideoCodec::H264 | VideoCodec::H265)
    }
}

/// One video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag {
    /// The decoder configuration record: the `avcC`, `hvcC` or `av1C`
    /// payload, or VP9's VPCodecConfigurationRecord.
    SequenceStart { codec: VideoCodec, record: Bytes },
    /// One coded frame at the message's timestamp (its decode time).
    Frame {
        codec: VideoCodec,
        keyframe: bool,
        /// Presentation minus decode time in ms (SI24, may be negative);
        /// non-zero when the encoder uses B-frames. Always 0 for codecs
        /// whose tags have no such field (AV1, VP9, legacy non-AVC).
        composition_time: i32,
        /// H264/H265: NAL units with length prefixes (the size the record
        /// names, 4 bytes in practice); AV1: OBUs; VP9: the frame; other
        /// codecs: the bytes after the tag header.
        data: Bytes,
    },
    /// The end of a sequence: no more frames until the next start.
    SequenceEnd { codec: VideoCodec },
    /// What carries no picture this reader decodes: command frames, E-RTMP
    /// metadata (HDR `colorInfo`), multitrack and MPEG-2 TS packets, and
    /// unknown packet types.
    Unsupported { what: &'static str },
}

impl VideoTag {
    /// Parses an RTMP video message's payload.
    pub fn parse(body: &Bytes) -> Result<VideoTag, FlvError> {
        const WHAT: &str = "video";
        let &first = body.first().ok_or(FlvError::Empty(WHAT))?;
        // E-RTMP's IsExHeader bit; legacy frame types (1..=5) leave it clear.
        let enhanced = first & 0x80 != 0;
        let frame_type = (first >> 4) & 0x07;
        let keyframe = matches!(frame_type, FRAME_TYPE_KEY | FRAME_TYPE_GENERATED_KEY);
        if !enhanced {
            let codec = VideoCodec::from_legacy(first & 0x0f);
            if frame_type == FRAME_TYPE_COMMAND {
                return Ok(VideoTag::Unsupported {
                    what: "command frame",
                });
            }
            if !codec.has_composition_time() {
                let data = body.slice(1..);
                return Ok(VideoTag::Frame {
                    codec,
                    keyframe,
                    composition_time: 0,
                    data,
                });
            }
            // AVCPacketType, CompositionTime (SI24), then the data.
            let header = body.get(1..5).ok_or(FlvError::Truncated(WHAT))?;
            let data = body.slice(5..);
            return Ok(match header[0] {
                PACKET_SEQUENCE_START => VideoTag::SequenceStart {
                    codec,
                    record: data,
                },
                PACKET_CODED_FRAMES => VideoTag::Frame {
                    codec,
                    keyframe,
                    composition_time: si24(&header[1..4]),
                    data,
                },
                PACKET_SEQUENCE_END => VideoTag::SequenceEnd { codec },
                _ => VideoTag::Unsupported {
                    what: "unknown AVC packet type",
                },
            });
        }

        let mut pos = 1;
        let packet_type = skip_mod_ex(body, &mut pos, first & 0x0f, WHAT)?;
        if frame_type == FRAME_TYPE_COMMAND && packet_type != VIDEO_PACKET_METADATA {
            return Ok(VideoTag::Unsupported {
                what: "command frame",
            });
        }
        if packet_type == VIDEO_PACKET_MULTITRACK {
            return Ok(VideoTag::Unsupported { what: "multitrack" });
        }
        let codec = VideoCodec::from_fourcc(fourcc_at(body, &mut pos, WHAT)?);
        Ok(match packet_type {
            PACKET_SEQUENCE_START => VideoTag::SequenceStart {
                codec,
                record: body.slice(pos..),
            },
            PACKET_CODED_FRAMES | VIDEO_PACKET_CODED_FRAMES_X => {
                let mut composition_time = 0;
                // Only AVC/HEVC-like codecs have the SI24 and only in
                // CodedFrames; CodedFramesX means it is 0.
                if packet_type == PACKET_CODED_FRAMES && codec.has_composition_time() {
                    let cts = body.get(pos..pos + 3).ok_or(FlvError::Truncated(WHAT))?;
                    composition_time = si24(cts);
                    pos += 3;
                }
                VideoTag::Frame {
                    codec,
                    keyframe,
                    composition_time,
                    data: body.slice(pos..),
                }
            }
            PACKET_SEQUENCE_END => VideoTag::SequenceEnd { codec },
            VIDEO_PACKET_METADATA => VideoTag::Unsupported {
                what: "E-RTMP video metadata",
            },
            _ => VideoTag::Unsupported {
                what: "unknown E-RTMP video packet type",
            },
        })
    }

    pub fn codec(&self) -> Option<VideoCodec> {
        match self {
            VideoTag::SequenceStart { codec, .. }
            | VideoTag::Frame { codec, .. }
            | VideoTag::SequenceEnd { codec } => Some(*codec),
            VideoTag::Unsupported { .. } => None,
        }
    }

    pub fn is_keyframe(&self) -> bool {
        matches!(self, VideoTag::Frame { keyframe: true, .. })
    }
}

/// An audio codec as a tag names it, legacy and E-RTMP names folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// Legacy SoundFormat 10 or FourCC `mp4a`.
    Aac,
    /// FourCC `Opus`.
    Opus,
    /// Anything else (MP3, G.711, `ac-3`…), as sent.
    Other(CodecId),
}

impl AudioCodec {
    pub fn codec(self) -> Option<Codec> {
        match self {
            AudioCodec::Aac => Some(Codec::Aac),
            AudioCodec::Opus => Some(Codec::Opus),
            AudioCodec::Other(_) => None,
        }
    }
}

/// One audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag {
    /// AAC: the AudioSpecificConfig; Opus: the `OpusHead` header.
    SequenceStart {
        codec: AudioCodec,
        config: Bytes,
    },
    /// One coded frame: a raw AAC frame (no ADTS header), an Opus packet,
    /// or for legacy formats other than AAC the bytes after the tag header
    /// (whose rate/size/channel bits are not kept here).
    Frame {
        codec: AudioCodec,
        data: Bytes,
    },
    SequenceEnd {
        codec: AudioCodec,
    },
    /// Multichannel configuration, multitrack, unknown packet types.
    Unsupported {
        what: &'static str,
    },
}

impl AudioTag {
    /// Parses an RTMP audio message's payload.
    pub fn parse(body: &Bytes) -> Result<AudioTag, FlvError> {
        const WHAT: &str = "audio";
        let &first = body.first().ok_or(FlvError::Empty(WHAT))?;
        let format = first >> 4;
        if format == AUDIO_CODEC_AAC {
            let &packet_type = body.get(1).ok_or(FlvError::Truncated(WHAT))?;
            let codec = AudioCodec::Aac;
            let data = body.slice(2..);
            return Ok(match packet_type {
                PACKET_SEQUENCE_START => AudioTag::SequenceStart {
                    codec,
                    config: data,
                },
                PACKET_CODED_FRAMES => AudioTag::Frame { codec, data },
                _ => AudioTag::Unsupported {
                    what: "unknown AAC packet type",
                },
            });
        }
        if format != SOUND_FORMAT_EX_HEADER {
            return Ok(AudioTag::Frame {
                codec: AudioCodec::Other(CodecId::Flv(format)),
                data: body.slice(1..),
            });
        }
        let mut pos = 1;
        let packet_type = skip_mod_ex(body, &mut pos, first & 0x0f, WHAT)?;
        if packet_type == AUDIO_PACKET_MULTITRACK {
            return Ok(AudioTag::Unsupported { what: "multitrack" });
        }
        let codec = match fourcc_at(body, &mut pos, WHAT)? {
            FourCc::AAC => AudioCodec::Aac,
            FourCc::OPUS => AudioCodec::Opus,
            other => AudioCodec::Other(CodecId::FourCc(other)),
        };
        let data = body.slice(pos..);
        Ok(match packet_type {
            PACKET_SEQUENCE_START => AudioTag::SequenceStart {
                codec,
                config: data,
            },
            PACKET_CODED_FRAMES => AudioTag::Frame { codec, data },
            PACKET_SEQUENCE_END => AudioTag::SequenceEnd { codec },
            AUDIO_PACKET_MULTICHANNEL_CONFIG => AudioTag::Unsupported {
                what: "multichannel configuration",
            },
            _ => AudioTag::Unsupported {
                what: "unknown E-RTMP audio packet type",
            },
        })
    }

    pub fn codec(&self) -> Option<AudioCodec> {
        match self {
            AudioTag::SequenceStart { codec, .. }
            | AudioTag::Frame { codec, .. }
            | AudioTag::SequenceEnd { codec } => Some(*codec),
            AudioTag::Unsupported { .. } => None,
        }
    }
}

/// Steps over E-RTMP ModEx prefixes (e.g. a nanosecond timestamp offset,
/// finer than the millisecond clock we keep) and returns the packet type
/// they wrap. Each prefix takes at least two bytes, so the loop ends.
fn skip_mod_ex(
    body: &[u8],
    pos: &mut usize,
    mut packet_type: u8,
    what: &'static str,
) -> Result<u8, FlvError> {
    while packet_type == PACKET_MOD_EX {
        let &size = body.get(*pos).ok_or(FlvError::Truncated(what))?;
        *pos += 1;
        let mut size = usize::from(size) + 1;
        if size == 256 {
            let b = body.get(*pos..*pos + 2).ok_or(FlvError::Truncated(what))?;
            size = usize::from(u16::from_be_bytes([b[0], b[1]])) + 1;
            *pos += 2;
        }
        *pos += size;
        // High nibble: the ModEx type; low nibble: the next packet type.
        let &next = body.get(*pos).ok_or(FlvError::Truncated(what))?;
        *pos += 1;
        packet_type = next & 0x0f;
    }
    Ok(packet_type)
}

fn fourcc_at(body: &[u8], pos: &mut usize, what: &'static str) -> Result<FourCc, FlvError> {
    let b = body.get(*pos..*pos + 4).ok_or(FlvError::Truncated(what))?;
    *pos += 4;
    Ok(FourCc([b[0], b[1], b[2], b[3]]))
}

/// A signed 24-bit big-endian number (the composition time offset).
fn si24(b: &[u8]) -> i32 {
    let raw = (i32::from(b[0]) << 16) | (i32::from(b[1]) << 8) | i32::from(b[2]);
    // Shift the sign bit into place and back.
    (raw << 8) >> 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flv::{
        aac_raw_frame, aac_sequence_header, avc_nalu_packet, avc_sequence_header,
        ex_audio_coded_frames, ex_audio_sequence_start, ex_video_coded_frames,
        ex_video_sequence_end, ex_video_sequence_start,
    };

    #[test]
    fn reads_what_the_writers_make() {
        let record = [1u8, 0x64, 0, 0x1f, 0xff];
        assert_eq!(
            VideoTag::parse(&avc_sequence_header(&record)),
            Ok(VideoTag::SequenceStart {
                codec: VideoCodec::H264,
                record: Bytes::copy_from_slice(&record)
            })
        );
        let au = [0, 0, 0, 2, 0x65, 9];
        let tag = VideoTag::parse(&avc_nalu_packet(&au, true, 0).unwrap()).unwrap();
        assert_eq!(
            tag,
            VideoTag::Frame {
                codec: VideoCodec::H264,
                keyframe: true,
                composition_time: 0,
                data: Bytes::copy_from_slice(&au)
            }
        );
        assert!(tag.is_keyframe());
        assert_eq!(tag.codec().and_then(VideoCodec::codec), Some(Codec::H264));

        for (fourcc, codec) in [
            (FourCc::HEVC, VideoCodec::H265),
            (FourCc::AV1, VideoCodec::Av1),
            (FourCc::VP9, VideoCodec::Vp9),
        ] {
            assert_eq!(
                VideoTag::parse(&ex_video_sequence_start(fourcc, &[7, 8])),
                Ok(VideoTag::SequenceStart {
                    codec,
                    record: Bytes::from_static(&[7, 8])
                })
            );
            // CodedFramesX for HEVC, plain CodedFrames without an offset
            // for AV1/VP9: composition time 0 either way.
            assert_eq!(
                VideoTag::parse(&ex_video_coded_frames(fourcc, false, 0, &[5])),
                Ok(VideoTag::Frame {
                    codec,
                    keyframe: false,
                    composition_time: 0,
                    data: Bytes::from_static(&[5])
                })
            );
            assert_eq!(
                VideoTag::parse(&ex_video_sequence_end(fourcc)),
                Ok(VideoTag::SequenceEnd { codec })
            );
        }
        // HEVC with a negative composition offset keeps it.
        let b = ex_video_coded_frames(FourCc::HEVC, true, -40, &[1, 2]);
        assert_eq!(
            VideoTag::parse(&b),
            Ok(VideoTag::Frame {
                codec: VideoCodec::H265,
                keyframe: true,
                composition_time: -40,
                data: Bytes::from_static(&[1, 2])
            })
        );

        assert_eq!(
            AudioTag::parse(&aac_sequence_header(&[0x11, 0x90])),
            Ok(AudioTag::SequenceStart {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x11, 0x90])
            })
        );
        assert_eq!(
            AudioTag::parse(&aac_raw_frame(&[0x21, 0x10])),
            Ok(AudioTag::Frame {
                codec: AudioCodec::Aac,
                data: Bytes::from_static(&[0x21, 0x10])
            })
        );
        assert_eq!(
            AudioTag::parse(&ex_audio_sequence_start(FourCc::OPUS, b"OpusHead")),
            Ok(AudioTag::SequenceStart {
                codec: AudioCodec::Opus,
                config: Bytes::from_static(b"OpusHead")
            })
        );
        let tag = AudioTag::parse(&ex_audio_coded_frames(FourCc::OPUS, &[0xfc])).unwrap();
        assert_eq!(tag.codec().and_then(AudioCodec::codec), Some(Codec::Opus));
    }

    #[test]
    fn keeps_the_composition_time_of_b_frames() {
        // Legacy AVC: inter frame, NALU, CTS = +66 ms and −33 ms.
        let plus = Bytes::from_static(&[0x27, 1, 0, 0, 66, 0, 0, 0, 1, 0x41]);
        let minus = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xdf, 0, 0, 0, 1, 0x01]);
        for (body, cts) in [(plus, 66), (minus, -33)] {
            match VideoTag::parse(&body) {
                Ok(VideoTag::Frame {
                    composition_time, ..
                }) => assert_eq!(composition_time, cts),
                other => panic!("{other:?}"),
            }
        }
        // Legacy HEVC (codec id 12) has the same layout.
        let hevc = Bytes::from_static(&[0x1c, 1, 0, 0, 33, 0xaa]);
        assert_eq!(
            VideoTag::parse(&hevc),
            Ok(VideoTag::Frame {
                codec: VideoCodec::H265,
                keyframe: true,
                composition_time: 33,
                data: Bytes::from_static(&[0xaa])
            })
        );
    }

    #[test]
    fn steps_over_mod_ex_and_leaves_the_exotic_alone() {
        // ModEx (type 7) with a 3-byte nanosecond offset, wrapping
        // CodedFrames (1) of `hvc1` with CTS 2.
        let body = Bytes::from_static(&[
            0x97, 2, 0, 0, 9, 0x01, b'h', b'v', b'c', b'1', 0, 0, 2, 0xee,
        ]);
        assert_eq!(
            VideoTag::parse(&body),
            Ok(VideoTag::Frame {
                codec: VideoCodec::H265,
                keyframe: true,
                composition_time: 2,
                data: Bytes::from_static(&[0xee])
            })
        );
        // A ModEx with the 16-bit size escape (0xff): 256 + 1 bytes.
        let mut long = vec![0x97, 0xff, 0x01, 0x00];
        long.extend(std::iter::repeat_n(0u8, 257));
        long.extend_from_slice(&[0x00, b'a', b'v', b'0', b'1', 3]);
        assert_eq!(
            VideoTag::parse(&Bytes::from(long)),
            Ok(VideoTag::SequenceStart {
                codec: VideoCodec::Av1,
                record: Bytes::from_static(&[3])
            })
        );
        let unsupported = [
            &[0x94, b'h', b'v', b'c', b'1', 2, 0, 9][..], // metadata
            &[0x96, 0x00, b'a', b'v', b'c', b'1'],        // multitrack
            &[0xd1, 0x00],                                // E-RTMP command frame
            &[0x57, 0x00],                                // legacy command frame
            &[0x17, 9, 0, 0, 0],                          // AVC packet type 9
        ];
        for body in unsupported {
            assert!(
                matches!(
                    VideoTag::parse(&Bytes::copy_from_slice(body)),
                    Ok(VideoTag::Unsupported { .. })
                ),
                "{body:02x?}"
            );
        }
        // Sorenson H.263: opaque frame data.
        assert_eq!(
            VideoTag::parse(&Bytes::from_static(&[0x22, 1, 2])),
            Ok(VideoTag::Frame {
                codec: VideoCodec::Other(CodecId::Flv(2)),
                keyframe: false,
                composition_time: 0,
                data: Bytes::from_static(&[1, 2])
            })
        );
        assert!(matches!(
            AudioTag::parse(&Bytes::from_static(&[0x94, b'O', b'p', b'u', b's', 1])),
            Ok(AudioTag::Unsupported { .. })
        ));
        // MP3 is carried as is.
        assert_eq!(
            AudioTag::parse(&Bytes::from_static(&[0x2f, 0xff, 0xfb])).map(|t| t.codec()),
            Ok(Some(AudioCodec::Other(CodecId::Flv(2))))
        );
    }

    #[test]
    fn short_bodies_are_errors_not_panics() {
        assert_eq!(
            VideoTag::parse(&Bytes::new()),
            Err(FlvError::Empty("video"))
        );
        assert_eq!(
            AudioTag::parse(&Bytes::new()),
            Err(FlvError::Empty("audio"))
        );
        let truncated: [&[u8]; 8] = [
            &[0x17, 1, 0, 0],                   // AVC header cut short
            &[0x91, b'h', b'v'],                // FourCC cut short
            &[0x91, b'h', b'v', b'c', b'1', 0], // SI24 cut short
            &[0x97],                            // ModEx without a size
            &[0x97, 5, 1, 2],                   // ModEx data cut short
            &[0x97, 0xff, 1],                   // 16-bit size cut short
            &[0x97, 0, 0],                      // ModEx without the next type
            &[0x93, b'a', b'v'],                // CodedFramesX FourCC cut short
        ];
        for body in truncated {
            assert_eq!(
                VideoTag::parse(&Bytes::copy_from_slice(body)),
                Err(FlvError::Truncated("video")),
                "{body:02x?}"
            );
        }
        for body in [&[0xaf][..], &[0x90, b'O'], &[0x97, 3]] {
            assert_eq!(
                AudioTag::parse(&Bytes::copy_from_slice(body)),
                Err(FlvError::Truncated("audio")),
                "{body:02x?}"
            );
        }
        // Every prefix of a valid body parses or fails, never panics.
        let full = ex_video_coded_frames(FourCc::HEVC, false, -2, &[7, 7]);
        for n in 0..full.len() {
            let _ = VideoTag::parse(&full.slice(..n));
        }
    }
}
