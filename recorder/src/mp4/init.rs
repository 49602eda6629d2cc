//! The init segment (`ftyp` + `moov` with `mvex`/`trex`) and the sample
//! entries that describe each codec in it.
//!
//! `shiguredo_mp4` builds the init segment from sample entries it has seen
//! in media segments, so a throwaway muxer is shown one empty sample per
//! track and its media segment is discarded; the entries themselves are
//! ours, filled from the keyframe's parameter sets ([`VideoConfig`]) or the
//! audio format ([`AudioTrackConfig`]).

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use shiguredo_mp4::bitstream::aac::{
    AudioObjectType, AudioSpecificConfig, ChannelConfiguration, Mp4aSampleEntryConfig,
    SamplingFrequency, build_mp4a_box,
};
use shiguredo_mp4::boxes::{
    AudioSampleEntryFields, Av01Box, Av1cBox, Avc1Box, AvccBox, DopsBox, Hvc1Box, HvccBox,
    HvccNalUintArray, MoovBox, OpusBox, SampleEntry, VisualSampleEntryFields, Vp08Box, Vp09Box,
    VpccBox,
};
use shiguredo_mp4::mux::{Fmp4SegmentMuxer, Sample};
use shiguredo_mp4::{Decode, Encode, FixedPointNumber, TrackKind, Uint};

use super::fragment::{AudioTrackConfig, VIDEO_TIMESCALE};
use super::{Mp4Error, box_header, box_len, encode_err};
use crate::codec::Codec;
use crate::params::{AudioParams, VideoConfig, VideoDetail};

/// `ftyp` + `moov` for the tracks, video first (track 1, audio track 2;
/// audio alone is track 1).
pub(super) fn init_segment(
    video: Option<&VideoConfig>,
    audio: Option<&AudioTrackConfig>,
) -> Result<Bytes, Mp4Error> {
    let mut samples = Vec::new();
    if let Some(config) = video {
        let entry = video_sample_entry(config)?;
        samples.push(probe_sample(TrackKind::Video, VIDEO_TIMESCALE, entry));
    }
    if let Some(config) = audio {
        let entry = audio_sample_entry(config)?;
        samples.push(probe_sample(TrackKind::Audio, config.timescale(), entry));
    }
    if samples.is_empty() {
        return Err(Mp4Error::NoTracks);
    }
    let mut muxer = Fmp4SegmentMuxer::new().map_err(encode_err)?;
    muxer
        .create_media_segment_metadata(&samples)
        .map_err(encode_err)?;
    let init = muxer.init_segment_bytes().map_err(encode_err)?;
    // Drop `mehd`: it would announce a fragment duration of 0, which some
    // players take literally; without it they sum the fragments.
    let ftyp_len = box_len(&init).ok_or(Mp4Error::Encode("init segment without ftyp".into()))?;
    let (mut moov, _) = MoovBox::decode(&init[ftyp_len..]).map_err(encode_err)?;
    if let Some(mvex) = moov.mvex_box.as_mut() {
        mvex.mehd_box = None;
    }
    let mut out = init[..ftyp_len].to_vec();
    out.extend_from_slice(&moov.encode_to_vec().map_err(encode_err)?);
    Ok(Bytes::from(out))
}

fn probe_sample(track_kind: TrackKind, timescale: u32, entry: SampleEntry) -> Sample {
    Sample {
        track_kind,
        sample_entry: Some(entry),
        keyframe: true,
        timescale: NonZeroU32::new(timescale).unwrap_or(NonZeroU32::MIN),
        duration: 0,
        composition_time_offset: None,
        data_offset: 0,
        data_size: 0,
    }
}

fn visual(config: &VideoConfig) -> VisualSampleEntryFields {
    VisualSampleEntryFields {
        data_reference_index: VisualSampleEntryFields::DEFAULT_DATA_REFERENCE_INDEX,
        width: u16::try_from(config.width).unwrap_or(u16::MAX),
        height: u16::try_from(config.height).unwrap_or(u16::MAX),
        horizresolution: VisualSampleEntryFields::DEFAULT_HORIZRESOLUTION,
        vertresolution: VisualSampleEntryFields::DEFAULT_VERTRESOLUTION,
        frame_count: VisualSampleEntryFields::DEFAULT_FRAME_COUNT,
        compressorname: VisualSampleEntryFields::NULL_COMPRESSORNAME,
        depth: VisualSampleEntryFields::DEFAULT_DEPTH,
    }
}

fn video_sample_entry(config: &VideoConfig) -> Result<SampleEntry, Mp4Error> {
    let visual = visual(config);
    let entry = match (&config.codec, &config.detail) {
        (Codec::H264, VideoDetail::Avc(avc)) => {
            let high = !matches!(avc.profile_idc, 66 | 77 | 88);
            SampleEntry::Avc1(Avc1Box {
                visual,
                avcc_box: AvccBox {
                    avc_profile_indication: avc.profile_idc,
                    profile_compatibility: avc.constraint_flags,
                    avc_level_indication: avc.level_idc,
                    length_size_minus_one: Uint::new(3),
                    sps_list: avc.sps.iter().map(|s| s.to_vec()).collect(),
                    pps_list: avc.pps.iter().map(|s| s.to_vec()).collect(),
                    chroma_format: high.then(|| Uint::new(avc.chroma_format_idc & 3)),
                    bit_depth_luma_minus8: high
                        .then(|| Uint::new(avc.bit_depth_luma.saturating_sub(8) & 7)),
                    bit_depth_chroma_minus8: high
                        .then(|| Uint::new(avc.bit_depth_chroma.saturating_sub(8) & 7)),
                    sps_ext_list: Vec::new(),
                },
                unknown_boxes: Vec::new(),
            })
        }
        (Codec::H265, VideoDetail::Hevc(hevc)) => {
            let array = |nal_type: u8, nals: &[Bytes]| HvccNalUintArray {
                array_completeness: Uint::new(1),
                nal_unit_type: Uint::new(nal_type),
                nalus: nals.iter().map(|n| n.to_vec()).collect(),
            };
            SampleEntry::Hvc1(Hvc1Box {
                visual,
                hvcc_box: HvccBox {
                    general_profile_space: Uint::new(hevc.profile_space & 3),
                    general_tier_flag: Uint::new(u8::from(hevc.tier_flag)),
                    general_profile_idc: Uint::new(hevc.profile_idc & 0x1f),
                    general_profile_compatibility_flags: hevc.profile_compatibility_flags,
                    general_constraint_indicator_flags: Uint::new(
                        hevc.constraint_indicator_flags & 0xffff_ffff_ffff,
                    ),
                    general_level_idc: hevc.level_idc,
                    min_spatial_segmentation_idc: Uint::new(0),
                    parallelism_type: Uint::new(0),
                    chroma_format_idc: Uint::new(hevc.chroma_format_idc & 3),
                    bit_depth_luma_minus8: Uint::new(hevc.bit_depth_luma.saturating_sub(8) & 7),
                    bit_depth_chroma_minus8: Uint::new(hevc.bit_depth_chroma.saturating_sub(8) & 7),
                    avg_frame_rate: 0,
                    constant_frame_rate: Uint::new(0),
                    num_temporal_layers: Uint::new(hevc.num_temporal_layers & 7),
                    temporal_id_nested: Uint::new(u8::from(hevc.temporal_id_nested)),
                    length_size_minus_one: Uint::new(3),
                    nalu_arrays: vec![
                        array(32, &hevc.vps),
                        array(33, &hevc.sps),
                        array(34, &hevc.pps),
                    ],
                },
                unknown_boxes: Vec::new(),
            })
        }
        (Codec::Vp8, _) => SampleEntry::Vp08(Vp08Box {
            visual,
            vpcc_box: vpcc(0, 8, 1, false, 0, level_for(config)),
            unknown_boxes: Vec::new(),
        }),
        (Codec::Vp9, VideoDetail::Vp9(vp9)) => {
            // vpcC chroma: 0/1 4:2:0, 2 4:2:2, 3 4:4:4.
            let chroma = match (vp9.subsampling_x, vp9.subsampling_y) {
                (true, true) => 0,
                (true, false) => 2,
                _ => 3,
            };
            SampleEntry::Vp09(Vp09Box {
                visual,
                vpcc_box: vpcc(
                    vp9.profile,
                    vp9.bit_depth,
                    chroma,
                    vp9.full_range,
                    vp9.color_space,
                    level_for(config),
                ),
                unknown_boxes: Vec::new(),
            })
        }
        (Codec::Av1, VideoDetail::Av1(av1)) => SampleEntry::Av01(Av01Box {
            visual,
            av1c_box: Av1cBox {
                seq_profile: Uint::new(av1.seq_profile & 7),
                seq_level_idx_0: Uint::new(av1.seq_level_idx_0 & 0x1f),
                seq_tier_0: Uint::new(u8::from(av1.seq_tier_0)),
                high_bitdepth: Uint::new(u8::from(av1.high_bitdepth)),
                twelve_bit: Uint::new(u8::from(av1.twelve_bit)),
                monochrome: Uint::new(u8::from(av1.monochrome)),
                chroma_subsampling_x: Uint::new(u8::from(av1.subsampling_x)),
                chroma_subsampling_y: Uint::new(u8::from(av1.subsampling_y)),
                chroma_sample_position: Uint::new(av1.chroma_sample_position & 3),
                initial_presentation_delay_minus_one: None,
                config_obus: av1.sequence_header.to_vec(),
            },
            unknown_boxes: Vec::new(),
        }),
        (Codec::H264 | Codec::H265 | Codec::Vp9 | Codec::Av1, _) => {
            return Err(Mp4Error::MissingConfig(config.codec));
        }
        (other, _) => return Err(Mp4Error::Codec(*other)),
    };
    Ok(entry)
}

/// The decoder configuration record of `config`'s sample entry, byte for
/// byte as the init segment carries it, for other formats that carry the
/// same records (E-RTMP sequence starts): the payload of `avcC`, `hvcC`
/// or `av1C`; for VP8/VP9 the VPCodecConfigurationRecord, which is the
/// `vpcC` payload after its FullBox version and flags (what FFmpeg's FLV
/// muxer writes too).
pub fn video_config_record(config: &VideoConfig) -> Result<Vec<u8>, Mp4Error> {
    let (record_box, full_box) = match video_sample_entry(config)? {
        SampleEntry::Avc1(b) => (b.avcc_box.encode_to_vec(), false),
        SampleEntry::Hvc1(b) => (b.hvcc_box.encode_to_vec(), false),
        SampleEntry::Av01(b) => (b.av1c_box.encode_to_vec(), false),
        SampleEntry::Vp08(b) => (b.vpcc_box.encode_to_vec(), true),
        SampleEntry::Vp09(b) => (b.vpcc_box.encode_to_vec(), true),
        _ => return Err(Mp4Error::Codec(config.codec)),
    };
    let record_box = record_box.map_err(encode_err)?;
    let (_, _, header_len) = box_header(&record_box)
        .ok_or_else(|| Mp4Error::Encode("configuration box without a header".into()))?;
    // A FullBox's version (1 byte) and flags (3 bytes) are not part of
    // the record.
    let skip = header_len + if full_box { 4 } else { 0 };
    usize::try_from(skip)
        .ok()
        .and_then(|skip| record_box.get(skip..))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| Mp4Error::Encode("configuration box shorter than its header".into()))
}

/// A VP codec configuration box. `color_space` is VP9's, mapped to the
/// ISO/IEC 23091-4 matrix coefficients; primaries and transfer are left
/// unspecified since the bitstream does not carry them.
fn vpcc(
    profile: u8,
    bit_depth: u8,
    chroma: u8,
    full_range: bool,
    color_space: u8,
    level: u8,
) -> VpccBox {
    let matrix = match color_space {
        1 | 3 => 6, // BT.601 / SMPTE 170M
        2 => 1,     // BT.709
        4 => 7,     // SMPTE 240M
        5 => 9,     // BT.2020 non-constant luminance
        7 => 0,     // sRGB (identity)
        _ => 2,     // unspecified
    };
    VpccBox {
        profile,
        level,
        bit_depth: Uint::new(bit_depth & 0x0f),
        chroma_subsampling: Uint::new(chroma & 7),
        video_full_range_flag: Uint::new(u8::from(full_range)),
        colour_primaries: 2,
        transfer_characteristics: 2,
        matrix_coefficients: matrix,
        codec_initialization_data: Vec::new(),
    }
}

/// The lowest VP9 level whose maximum picture size fits (VP9 levels
/// table); frame rate is not known up front, so it is not considered.
fn level_for(config: &VideoConfig) -> u8 {
    let pixels = u64::from(config.width) * u64::from(config.height);
    const LEVELS: [(u64, u8); 8] = [
        (36_864, 10),
        (73_728, 11),
        (122_880, 20),
        (245_760, 21),
        (552_960, 30),
        (983_040, 31),
        (2_228_224, 40),
        (8_912_896, 50),
    ];
    LEVELS
        .iter()
        .find(|(max, _)| pixels <= *max)
        .map_or(60, |(_, level)| *level)
}

fn audio_sample_entry(config: &AudioTrackConfig) -> Result<SampleEntry, Mp4Error> {
    match *config {
        AudioTrackConfig::Opus(params) => Ok(opus_sample_entry(params)),
        AudioTrackConfig::Aac(params) => aac_sample_entry(params),
    }
}

fn opus_sample_entry(audio: AudioParams) -> SampleEntry {
    let channels = u8::try_from(audio.channels.clamp(1, 2)).unwrap_or(2);
    SampleEntry::Opus(OpusBox {
        audio: AudioSampleEntryFields {
            data_reference_index: NonZeroU16::MIN,
            channelcount: u16::from(channels),
            samplesize: AudioSampleEntryFields::DEFAULT_SAMPLESIZE,
            samplerate: FixedPointNumber::new(48_000, 0),
        },
        dops_box: DopsBox {
            output_channel_count: channels,
            // WebRTC does not signal the encoder's pre-skip; like the WebM
            // writer, nothing is trimmed.
            pre_skip: 0,
            input_sample_rate: audio.sample_rate,
            output_gain: 0,
        },
        unknown_boxes: Vec::new(),
    })
}

/// `mp4a` with an `esds` carrying the AudioSpecificConfig of AAC-LC at the
/// given rate and channel count: what decoders need to read raw access
/// units (no ADTS headers) and what HLS players call `mp4a.40.2`.
fn aac_sample_entry(audio: AudioParams) -> Result<SampleEntry, Mp4Error> {
    let unsupported = || Mp4Error::AacFormat {
        channels: audio.channels,
        sample_rate: audio.sample_rate,
    };
    let channel_configuration = match audio.channels {
        1 => ChannelConfiguration::Mono,
        2 => ChannelConfiguration::Stereo,
        3 => ChannelConfiguration::Channels3,
        4 => ChannelConfiguration::Channels4,
        5 => ChannelConfiguration::Channels5,
        6 => ChannelConfiguration::FivePointOne,
        8 => ChannelConfiguration::SevenPointOne,
        _ => return Err(unsupported()),
    };
    // The sample entry's 16-bit rate field and our timescale both need it.
    if audio.sample_rate == 0 || audio.sample_rate > u32::from(u16::MAX) {
        return Err(unsupported());
    }
    let asc = AudioSpecificConfig {
        audio_object_type: AudioObjectType::AacLc,
        sampling_frequency: SamplingFrequency::from_hz(audio.sample_rate)
            .map_err(|_| unsupported())?,
        channel_configuration,
    };
    let config = Mp4aSampleEntryConfig {
        es_id: 1,
        // Unknown up front; 0 is "not given" for decoders.
        buffer_size_db: 0,
        max_bitrate: 0,
        avg_bitrate: 0,
    };
    let mp4a = build_mp4a_box(&asc, &config).map_err(encode_err)?;
    Ok(SampleEntry::Mp4a(mp4a))
}
