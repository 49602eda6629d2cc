//! Codec parameters read from the bitstream itself.
//!
//! WebRTC never tells us a video's size or its decoder configuration in
//! SDP; containers need both before the first sample (MP4's `avcC`,
//! `vpcC`, `av1C`; WebM's pixel size and AV1 CodecPrivate). So a recording
//! starts at a keyframe and reads them from it: the H264 SPS/PPS, the VP8
//! and VP9 keyframe headers, the AV1 sequence header OBU. Sources that do
//! state their configuration (RTMP sequence headers, RTSP's SDP) are read
//! with the same parsers: an H264 SPS also tells whether the stream has
//! B-frames ([`H264Sps::reorders_frames`]), and an AAC AudioSpecificConfig
//! its rate and channels ([`AacConfig`]).
//!
//! Everything here is a pure function of untrusted bytes: short or corrupt
//! input gives `None`, never a panic.

use bytes::Bytes;

use crate::codec::Codec;
use crate::rtp::Frame;

mod aac;
mod vui;

pub use aac::AacConfig;

/// The audio track of a recording (Opus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioParams {
    pub channels: u32,
    pub sample_rate: u32,
}

impl AudioParams {
    /// The Opus identification header (`OpusHead`, RFC 7845 §5.1) for
    /// these parameters: WebM's CodecPrivate, and E-RTMP's Opus sequence
    /// start. Mapping family 0 (mono/stereo); pre-skip 0, since WebRTC
    /// does not signal the encoder's, so nothing is trimmed.
    pub fn opus_head(&self) -> Vec<u8> {
        let mut head = b"OpusHead".to_vec();
        head.push(1); // version
        head.push(u8::try_from(self.channels).unwrap_or(2));
        head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip
        head.extend_from_slice(&self.sample_rate.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family: mono/stereo
        head
    }
}

/// A video track's size and decoder configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoConfig {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub detail: VideoDetail,
}

/// What a container needs beyond the size, per codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoDetail {
    /// Size only: VP8, or a configuration given by hand.
    None,
    Avc(AvcConfig),
    Hevc(HevcConfig),
    Vp9(Vp9Config),
    Av1(Av1Config),
}

/// H264 parameter sets and the SPS fields `avcC` repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    /// SPS NAL units, header byte included.
    pub sps: Vec<Bytes>,
    /// PPS NAL units, header byte included.
    pub pps: Vec<Bytes>,
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
}

/// H265 parameter sets and the SPS fields `hvcC` repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HevcConfig {
    /// VPS, SPS and PPS NAL units, 2-byte headers included.
    pub vps: Vec<Bytes>,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    pub profile_space: u8,
    pub tier_flag: bool,
    pub profile_idc: u8,
    pub profile_compatibility_flags: u32,
    /// 48 bits.
    pub constraint_indicator_flags: u64,
    pub level_idc: u8,
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    pub temporal_id_nested: bool,
    pub num_temporal_layers: u8,
}

/// VP9 fields for `vpcC` (from the keyframe's uncompressed header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp9Config {
    pub profile: u8,
    pub bit_depth: u8,
    /// The VP9 `color_space` (0 unknown, 1 BT.601, 2 BT.709, ... 7 sRGB).
    pub color_space: u8,
    pub full_range: bool,
    pub subsampling_x: bool,
    pub subsampling_y: bool,
}

/// AV1 fields for `av1C`, and the sequence header OBU itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Av1Config {
    pub seq_profile: u8,
    pub seq_level_idx_0: u8,
    pub seq_tier_0: bool,
    pub high_bitdepth: bool,
    pub twelve_bit: bool,
    pub monochrome: bool,
    pub subsampling_x: bool,
    pub subsampling_y: bool,
    pub chroma_sample_position: u8,
    /// The sequence header OBU with its size field (an `av1C` config OBU).
    pub sequence_header: Bytes,
}

impl VideoConfig {
    /// Reads the configuration from a keyframe; `None` for a frame that is
    /// not a keyframe of a supported codec or cannot be parsed.
    pub fn from_keyframe(frame: &Frame) -> Option<VideoConfig> {
        match frame.codec {
            Codec::H264 => h264_config(&frame.data),
            Codec::H265 => h265_config(&frame.data),
            Codec::Vp8 => {
                let (width, height) = vp8_dimensions(&frame.data)?;
                Some(VideoConfig {
                    codec: Codec::Vp8,
                    width,
                    height,
                    detail: VideoDetail::None,
                })
            }
            Codec::Vp9 => vp9_config(&frame.data),
            Codec::Av1 => av1_config(&frame.data),
            Codec::Opus | Codec::G711u | Codec::G711a | Codec::Aac => None,
        }
    }

    /// The codec's decoder configuration record, as stored in `avcC`,
    /// `hvcC` or `av1C` (and in Matroska's CodecPrivate, FLV sequence
    /// headers); `None` for codecs without one.
    pub fn decoder_config_record(&self) -> Option<Vec<u8>> {
        match &self.detail {
            VideoDetail::Avc(avc) => Some(avc.record()),
            VideoDetail::Av1(av1) => Some(av1.record()),
            VideoDetail::Hevc(hevc) => Some(hevc.record()),
            VideoDetail::Vp9(_) | VideoDetail::None => None,
        }
    }
}

impl AvcConfig {
    /// The AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1), with
    /// 4-byte NAL lengths.
    pub fn record(&self) -> Vec<u8> {
        let mut out = vec![
            1,
            self.profile_idc,
            self.constraint_flags,
            self.level_idc,
            0xfc | 3,
            0xe0 | (self.sps.len().min(31) as u8),
        ];
        for sps in self.sps.iter().take(31) {
            push_u16_prefixed(&mut out, sps);
        }
        out.push(self.pps.len().min(255) as u8);
        for pps in self.pps.iter().take(255) {
            push_u16_prefixed(&mut out, pps);
        }
        if !matches!(self.profile_idc, 66 | 77 | 88) {
            out.push(0xfc | (self.chroma_format_idc & 3));
            out.push(0xf8 | (self.bit_depth_luma.saturating_sub(8) & 7));
            out.push(0xf8 | (self.bit_depth_chroma.saturating_sub(8) & 7));
            out.push(0); // no SPS extensions
        }
        out
    }
}

impl HevcConfig {
    /// The HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 §8.3.3.1),
    /// with 4-byte NAL lengths and VPS, SPS, PPS arrays.
    pub fn record(&self) -> Vec<u8> {
        let mut out = vec![
            1,
            (self.profile_space << 6) | (u8::from(self.tier_flag) << 5) | (self.profile_idc & 0x1f),
        ];
        out.extend_from_slice(&self.profile_compatibility_flags.to_be_bytes());
        out.extend_from_slice(&self.constraint_indicator_flags.to_be_bytes()[2..]);
        out.push(self.level_idc);
        out.extend_from_slice(&[0xf0, 0x00]); // min_spatial_segmentation_idc 0
        out.push(0xfc); // parallelismType unknown
        out.push(0xfc | (self.chroma_format_idc & 3));
        out.push(0xf8 | (self.bit_depth_luma.saturating_sub(8) & 7));
        out.push(0xf8 | (self.bit_depth_chroma.saturating_sub(8) & 7));
        out.extend_from_slice(&[0, 0]); // avgFrameRate unknown
        out.push(
            ((self.num_temporal_layers & 7) << 3) | (u8::from(self.temporal_id_nested) << 2) | 3,
        );
        let arrays = [(32u8, &self.vps), (33, &self.sps), (34, &self.pps)];
        out.push(arrays.iter().filter(|(_, n)| !n.is_empty()).count() as u8);
        for (nal_type, nals) in arrays {
            if nals.is_empty() {
                continue;
            }
            out.push(0x80 | nal_type); // complete: no other sets in-band
            out.extend_from_slice(&(nals.len().min(0xffff) as u16).to_be_bytes());
            for nal in nals.iter().take(0xffff) {
                push_u16_prefixed(&mut out, nal);
            }
        }
        out
    }
}

impl Av1Config {
    /// The AV1CodecConfigurationRecord (`av1C` payload, also Matroska's
    /// CodecPrivate for `V_AV1`).
    pub fn record(&self) -> Vec<u8> {
        let mut out = vec![
            0x81, // marker, version 1
            (self.seq_profile << 5) | (self.seq_level_idx_0 & 0x1f),
            (u8::from(self.seq_tier_0) << 7)
                | (u8::from(self.high_bitdepth) << 6)
                | (u8::from(self.twelve_bit) << 5)
                | (u8::from(self.monochrome) << 4)
                | (u8::from(self.subsampling_x) << 3)
                | (u8::from(self.subsampling_y) << 2)
                | (self.chroma_sample_position & 3),
            0, // no initial_presentation_delay
        ];
        out.extend_from_slice(&self.sequence_header);
        out
    }

    pub fn bit_depth(&self) -> u8 {
        match (self.high_bitdepth, self.twelve_bit) {
            (false, _) => 8,
            (true, false) => 10,
            (true, true) => 12,
        }
    }
}

fn push_u16_prefixed(out: &mut Vec<u8>, data: &[u8]) {
    let len = data.len().min(0xffff);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&data[..len]);
}

/// Width and height from a VP8 keyframe's header (RFC 6386 §9.1).
pub fn vp8_dimensions(frame: &[u8]) -> Option<(u32, u32)> {
    let is_key = frame.first()? & 0x01 == 0;
    if !is_key || frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([*frame.get(6)?, *frame.get(7)?]) & 0x3fff;
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    Some((u32::from(w), u32::from(h)))
}

/// The NAL units of an access unit with 4-byte big-endian lengths (AVC /
/// HEVC sample format, what the assembler produces). Stops at the first
/// length that runs past the end.
pub fn length_prefixed_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let nal = rest.get(4..4usize.checked_add(len)?)?;
        rest = &rest[4 + len..];
        Some(nal)
    })
}

/// Reads bits MSB first from an RBSP (emulation prevention removed).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<bool> {
        let byte = self.data.get(self.pos / 8)?;
        let bit = byte >> (7 - self.pos % 8) & 1;
        self.pos += 1;
        Some(bit == 1)
    }

    fn bits(&mut self, n: u32) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        Some(v)
    }

    fn u8(&mut self, n: u32) -> Option<u8> {
        self.bits(n.min(8)).map(|v| v as u8)
    }

    fn u32(&mut self, n: u32) -> Option<u32> {
        self.bits(n.min(32)).map(|v| v as u32)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.pos = self.pos.checked_add(n)?;
        (self.pos <= self.data.len() * 8).then_some(())
    }

    /// Exp-Golomb ue(v); values beyond 32 bits are corrupt input.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        u32::try_from((1u64 << zeros) - 1 + rest).ok()
    }

    fn se(&mut self) -> Option<i32> {
        let k = i64::from(self.ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        i32::try_from(v).ok()
    }

    /// AV1 uvlc().
    fn uvlc(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros >= 32 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        u32::try_from((1u64 << zeros) - 1 + rest).ok()
    }
}

/// Removes H264/H265 emulation prevention bytes (`00 00 03` → `00 00`).
fn rbsp(nal_payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal_payload.len());
    let mut zeros = 0;
    for &b in nal_payload {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

fn h264_config(data: &[u8]) -> Option<VideoConfig> {
    let mut sps = Vec::new();
    let mut pps = Vec::new();
    for nal in length_prefixed_nals(data) {
        match nal.first().map(|b| b & 0x1f) {
            Some(7) => sps.push(Bytes::copy_from_slice(nal)),
            Some(8) => pps.push(Bytes::copy_from_slice(nal)),
            _ => {}
        }
    }
    let first = sps.first()?;
    let parsed = parse_h264_sps(first)?;
    if pps.is_empty() {
        return None;
    }
    Some(VideoConfig {
        codec: Codec::H264,
        width: parsed.width,
        height: parsed.height,
        detail: VideoDetail::Avc(AvcConfig {
            profile_idc: parsed.profile_idc,
            constraint_flags: parsed.constraint_flags,
            level_idc: parsed.level_idc,
            chroma_format_idc: parsed.chroma_format_idc,
            bit_depth_luma: parsed.bit_depth_luma,
            bit_depth_chroma: parsed.bit_depth_chroma,
            sps,
            pps,
        }),
    })
}

/// The fields of an H264 SPS that containers need, and what it says about
/// frame reordering (B-frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Sps {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    /// Displayed size: coded macroblocks minus the cropping window.
    pub width: u32,
    pub height: u32,
    /// 0, 1 or 2; type 2 ties output order to decoding order.
    pub pic_order_cnt_type: u8,
    /// From the VUI's bitstream restriction; `None` when the SPS has none
    /// (it is optional) or the VUI could not be read.
    pub max_num_reorder_frames: Option<u32>,
}

impl H264Sps {
    /// Whether frames come out of the decoder in another order than they
    /// go in (B-frames, so composition offsets in containers): `Some(false)`
    /// for Baseline (no B slices), POC type 2 (output order is decoding
    /// order by definition) or a bitstream restriction of zero reordered
    /// frames; `Some(true)` for a restriction above zero; `None` when the
    /// SPS does not say.
    pub fn reorders_frames(&self) -> Option<bool> {
        if self.profile_idc == 66 || self.pic_order_cnt_type == 2 {
            return Some(false);
        }
        self.max_num_reorder_frames.map(|n| n > 0)
    }
}

/// Parses an H264 SPS NAL unit (header byte included), ITU-T H.264 §7.3.2.1.
pub fn parse_h264_sps(nal: &[u8]) -> Option<H264Sps> {
    if nal.first()? & 0x1f != 7 {
        return None;
    }
    let rbsp = rbsp(nal.get(1..)?);
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.u8(8)?;
    let constraint_flags = r.u8(8)?;
    let level_idc = r.u8(8)?;
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    let mut bit_depth_luma = 8;
    let mut bit_depth_chroma = 8;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return None;
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()?;
        }
        bit_depth_luma = 8 + r.ue()?;
        bit_depth_chroma = 8 + r.ue()?;
        if bit_depth_luma > 14 || bit_depth_chroma > 14 {
            return None;
        }
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? {
            // seq_scaling_matrix_present_flag: skip the lists.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            let delta = r.se()?;
                            next = (last + delta + 256).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    let pic_order_cnt_type = r.ue()?;
    match pic_order_cnt_type {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.bit()?;
    if !frame_mbs_only {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? {
        crop_l = r.ue()?.into();
        crop_r = r.ue()?.into();
        crop_t = r.ue()?.into();
        crop_b = r.ue()?.into();
    }
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (sub_w, sub_h) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let crop_unit_x = sub_w;
    let crop_unit_y = sub_h * field_factor;
    let width = (width_mbs * 16).checked_sub(crop_unit_x * (crop_l + crop_r))?;
    let height =
        (height_map_units * 16 * field_factor).checked_sub(crop_unit_y * (crop_t + crop_b))?;
    // The size is known by now: a VUI that is absent, truncated or corrupt
    // only loses the reorder fact, not the whole SPS.
    let max_num_reorder_frames = match r.bit() {
        Some(true) => vui::max_num_reorder_frames(&mut r),
        _ => None,
    };
    Some(H264Sps {
        profile_idc,
        constraint_flags,
        level_idc,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma: bit_depth_luma as u8,
        bit_depth_chroma: bit_depth_chroma as u8,
        width: u32::try_from(width).ok().filter(|w| *w > 0)?,
        height: u32::try_from(height).ok().filter(|h| *h > 0)?,
        pic_order_cnt_type: pic_order_cnt_type as u8,
        max_num_reorder_frames,
    })
}

fn h265_config(data: &[u8]) -> Option<VideoConfig> {
    let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
    for nal in length_prefixed_nals(data) {
        match nal.first().map(|b| (b >> 1) & 0x3f) {
            Some(32) => vps.push(Bytes::copy_from_slice(nal)),
            Some(33) => sps.push(Bytes::copy_from_slice(nal)),
            Some(34) => pps.push(Bytes::copy_from_slice(nal)),
            _ => {}
        }
    }
    let parsed = parse_h265_sps(sps.first()?)?;
    if vps.is_empty() || pps.is_empty() {
        return None;
    }
    Some(VideoConfig {
        codec: Codec::H265,
        width: parsed.width,
        height: parsed.height,
        detail: VideoDetail::Hevc(HevcConfig {
            vps,
            sps,
            pps,
            ..parsed.config
        }),
    })
}

/// The fields of an H265 SPS that containers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H265Sps {
    pub width: u32,
    pub height: u32,
    /// Profile, tier, level, chroma and bit depth; the NAL lists are empty.
    pub config: HevcConfig,
    /// `sps_max_num_reorder_pics` of the highest sub-layer: how many
    /// frames the decoder holds back for reordering (B-frames); `None`
    /// when the SPS ends before it.
    pub max_num_reorder_pics: Option<u32>,
}

/// Parses an H265 SPS NAL unit (2-byte header included), ITU-T H.265
/// §7.3.2.2, up to the conformance window.
pub fn parse_h265_sps(nal: &[u8]) -> Option<H265Sps> {
    if (nal.first()? >> 1) & 0x3f != 33 {
        return None;
    }
    let rbsp = rbsp(nal.get(2..)?);
    let mut r = BitReader::new(&rbsp);
    r.u8(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.u8(3)?;
    let temporal_id_nested = r.bit()?;
    // profile_tier_level(1, max_sub_layers_minus1)
    let profile_space = r.u8(2)?;
    let tier_flag = r.bit()?;
    let profile_idc = r.u8(5)?;
    let profile_compatibility_flags = r.u32(32)?;
    let constraint_indicator_flags = r.bits(48)?;
    let level_idc = r.u8(8)?;
    let mut sub_profile = [false; 8];
    let mut sub_level = [false; 8];
    for i in 0..usize::from(max_sub_layers_minus1) {
        sub_profile[i] = r.bit()?;
        sub_level[i] = r.bit()?;
    }
    if max_sub_layers_minus1 > 0 {
        for _ in max_sub_layers_minus1..8 {
            r.skip(2)?; // reserved_zero_2bits
        }
    }
    for i in 0..usize::from(max_sub_layers_minus1) {
        if sub_profile[i] {
            r.skip(88)?;
        }
        if sub_level[i] {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = r.ue()?;
    if chroma_format_idc > 3 {
        return None;
    }
    let mut separate_colour_plane = false;
    if chroma_format_idc == 3 {
        separate_colour_plane = r.bit()?;
    }
    let pic_width = u64::from(r.ue()?);
    let pic_height = u64::from(r.ue()?);
    let (mut l, mut rt, mut t, mut b) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? {
        l = r.ue()?.into();
        rt = r.ue()?.into();
        t = r.ue()?.into();
        b = r.ue()?.into();
    }
    let bit_depth_luma = 8 + r.ue()?;
    let bit_depth_chroma = 8 + r.ue()?;
    if bit_depth_luma > 16 || bit_depth_chroma > 16 {
        return None;
    }
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (sub_w, sub_h) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let width = pic_width.checked_sub(sub_w * (l + rt))?;
    let height = pic_height.checked_sub(sub_h * (t + b))?;
    let max_num_reorder_pics = h265_reorder_pics(&mut r, max_sub_layers_minus1);
    Some(H265Sps {
        width: u32::try_from(width).ok().filter(|w| *w > 0)?,
        height: u32::try_from(height).ok().filter(|h| *h > 0)?,
        config: HevcConfig {
            vps: Vec::new(),
            sps: Vec::new(),
            pps: Vec::new(),
            profile_space,
            tier_flag,
            profile_idc,
            profile_compatibility_flags,
            constraint_indicator_flags,
            level_idc,
            chroma_format_idc: chroma_format_idc as u8,
            bit_depth_luma: bit_depth_luma as u8,
            bit_depth_chroma: bit_depth_chroma as u8,
            temporal_id_nested,
            num_temporal_layers: max_sub_layers_minus1 + 1,
        },
        max_num_reorder_pics,
    })
}

/// The sub-layer ordering info after the bit depths (H.265 §7.3.2.2.1):
/// the highest sub-layer's `sps_max_num_reorder_pics`, or `None` when it
/// is cut short or larger than the DPB allows.
fn h265_reorder_pics(r: &mut BitReader<'_>, max_sub_layers_minus1: u8) -> Option<u32> {
    r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
    let all_layers = r.bit()?;
    let first = if all_layers { 0 } else { max_sub_layers_minus1 };
    let mut reorder = None;
    for _ in first..=max_sub_layers_minus1 {
        let dpb = r.ue()?; // sps_max_dec_pic_buffering_minus1
        let pics = r.ue()?;
        r.ue()?; // sps_max_latency_increase_plus1
        reorder = (pics <= dpb && dpb < 16).then_some(pics);
    }
    reorder
}

/// Size and colour format from a VP9 keyframe's uncompressed header
/// (VP9 bitstream spec §6.2). The first frame of a superframe is read,
/// which is the keyframe itself.
fn vp9_config(data: &[u8]) -> Option<VideoConfig> {
    let mut r = BitReader::new(data);
    if r.u8(2)? != 2 {
        return None; // frame_marker
    }
    let low = r.u8(1)?;
    let high = r.u8(1)?;
    let profile = (high << 1) | low;
    if profile == 3 {
        r.skip(1)?;
    }
    if r.bit()? {
        return None; // show_existing_frame
    }
    if r.bit()? {
        return None; // frame_type 1: not a keyframe
    }
    r.skip(2)?; // show_frame, error_resilient_mode
    if r.bits(24)? != 0x49_83_42 {
        return None; // frame_sync_code
    }
    let bit_depth = if profile >= 2 {
        if r.bit()? { 12 } else { 10 }
    } else {
        8
    };
    let color_space = r.u8(3)?;
    let (full_range, subsampling_x, subsampling_y);
    if color_space != 7 {
        full_range = r.bit()?;
        if profile == 1 || profile == 3 {
            subsampling_x = r.bit()?;
            subsampling_y = r.bit()?;
            r.skip(1)?;
        } else {
            subsampling_x = true;
            subsampling_y = true;
        }
    } else {
        full_range = true;
        subsampling_x = false;
        subsampling_y = false;
        if profile == 1 || profile == 3 {
            r.skip(1)?;
        }
    }
    let width = r.u32(16)? + 1;
    let height = r.u32(16)? + 1;
    Some(VideoConfig {
        codec: Codec::Vp9,
        width,
        height,
        detail: VideoDetail::Vp9(Vp9Config {
            profile,
            bit_depth,
            color_space,
            full_range,
            subsampling_x,
            subsampling_y,
        }),
    })
}

/// One OBU of a temporal unit in the "low overhead" format (with sizes).
pub(crate) struct Obu<'a> {
    pub obu_type: u8,
    /// Header, size field and payload.
    pub whole: &'a [u8],
    pub payload: &'a [u8],
}

/// Splits AV1 data into OBUs; stops at the first malformed one. An OBU
/// without a size field takes the rest of the data.
pub(crate) fn obus(data: &[u8]) -> impl Iterator<Item = Obu<'_>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let header = *rest.first()?;
        let obu_type = (header >> 3) & 0x0f;
        let has_extension = header & 0x04 != 0;
        let has_size = header & 0x02 != 0;
        let mut pos = 1 + usize::from(has_extension);
        let size = if has_size {
            let (size, len) = leb128(rest.get(pos..)?)?;
            pos += len;
            usize::try_from(size).ok()?
        } else {
            rest.len().checked_sub(pos)?
        };
        let end = pos.checked_add(size)?;
        let payload = rest.get(pos..end)?;
        let whole = &rest[..end];
        rest = &rest[end..];
        Some(Obu {
            obu_type,
            whole,
            payload,
        })
    })
}

fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in data.iter().take(8).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;

/// An AV1 temporal unit without its temporal delimiter OBUs: ISOBMFF AV1
/// §2.4 forbids them in samples, and E-RTMP carries the same samples.
/// Whatever the OBU parser cannot split stays as it was.
pub fn strip_av1_temporal_delimiters(data: &Bytes) -> Bytes {
    if !obus(data).any(|o| o.obu_type == OBU_TEMPORAL_DELIMITER) {
        return data.clone();
    }
    let mut out = Vec::with_capacity(data.len());
    let mut consumed = 0;
    for obu in obus(data) {
        consumed += obu.whole.len();
        if obu.obu_type != OBU_TEMPORAL_DELIMITER {
            out.extend_from_slice(obu.whole);
        }
    }
    out.extend_from_slice(data.get(consumed..).unwrap_or_default());
    Bytes::from(out)
}

fn av1_config(data: &[u8]) -> Option<VideoConfig> {
    let obu = obus(data).find(|o| o.obu_type == OBU_SEQUENCE_HEADER)?;
    let (width, height, mut config) = parse_av1_sequence_header(obu.payload)?;
    // av1C wants the OBU with a size field and no extension header; the
    // RTP depacketizer and encoders give exactly that.
    config.sequence_header = Bytes::copy_from_slice(obu.whole);
    Some(VideoConfig {
        codec: Codec::Av1,
        width,
        height,
        detail: VideoDetail::Av1(config),
    })
}

/// Parses an AV1 sequence header OBU payload (AV1 spec §5.5) up to the
/// colour config: maximum frame size and the `av1C` fields.
fn parse_av1_sequence_header(payload: &[u8]) -> Option<(u32, u32, Av1Config)> {
    let mut r = BitReader::new(payload);
    let seq_profile = r.u8(3)?;
    if seq_profile > 2 {
        return None;
    }
    r.skip(1)?; // still_picture
    let reduced_still_picture_header = r.bit()?;
    let seq_level_idx_0;
    let mut seq_tier_0 = false;
    if reduced_still_picture_header {
        seq_level_idx_0 = r.u8(5)?;
    } else {
        let mut decoder_model_info_present = false;
        let mut buffer_delay_length = 0;
        if r.bit()? {
            // timing_info
            r.skip(64)?;
            if r.bit()? {
                r.uvlc()?;
            }
            decoder_model_info_present = r.bit()?;
            if decoder_model_info_present {
                buffer_delay_length = r.u32(5)? + 1;
                r.skip(32 + 5 + 5)?;
            }
        }
        let initial_display_delay_present = r.bit()?;
        let operating_points = r.u8(5)? + 1;
        let mut first = None;
        for _ in 0..operating_points {
            r.skip(12)?; // operating_point_idc
            let level = r.u8(5)?;
            let tier = if level > 7 { r.bit()? } else { false };
            if first.is_none() {
                first = Some((level, tier));
            }
            if decoder_model_info_present && r.bit()? {
                r.skip(2 * buffer_delay_length as usize + 1)?;
            }
            if initial_display_delay_present && r.bit()? {
                r.skip(4)?;
            }
        }
        (seq_level_idx_0, seq_tier_0) = first?;
    }
    let width_bits = r.u32(4)? + 1;
    let height_bits = r.u32(4)? + 1;
    let width = r.u32(width_bits)? + 1;
    let height = r.u32(height_bits)? + 1;
    // frame_id_numbers_present_flag, then the two id lengths.
    if !reduced_still_picture_header && r.bit()? {
        r.skip(4 + 3)?;
    }
    r.skip(3)?; // use_128x128_superblock, enable_filter_intra, enable_intra_edge
    if !reduced_still_picture_header {
        r.skip(4)?; // interintra, masked compound, warped motion, dual filter
        let enable_order_hint = r.bit()?;
        if enable_order_hint {
            r.skip(2)?; // jnt_comp, ref_frame_mvs
        }
        let force_screen_content_tools = if r.bit()? { 2 } else { r.u8(1)? };
        if force_screen_content_tools > 0 && !r.bit()? {
            r.skip(1)?; // seq_force_integer_mv
        }
        if enable_order_hint {
            r.skip(3)?;
        }
    }
    r.skip(3)?; // superres, cdef, restoration
    // color_config()
    let high_bitdepth = r.bit()?;
    let twelve_bit = seq_profile == 2 && high_bitdepth && r.bit()?;
    let monochrome = seq_profile != 1 && r.bit()?;
    let (mut cp, mut tc, mut mc) = (2, 2, 2);
    if r.bit()? {
        cp = r.u8(8)?;
        tc = r.u8(8)?;
        mc = r.u8(8)?;
    }
    let (subsampling_x, subsampling_y);
    let mut chroma_sample_position = 0;
    if monochrome {
        r.skip(1)?;
        subsampling_x = true;
        subsampling_y = true;
    } else if cp == 1 && tc == 13 && mc == 0 {
        subsampling_x = false;
        subsampling_y = false;
    } else {
        r.skip(1)?; // color_range
        match seq_profile {
            0 => (subsampling_x, subsampling_y) = (true, true),
            1 => (subsampling_x, subsampling_y) = (false, false),
            _ if twelve_bit => {
                subsampling_x = r.bit()?;
                subsampling_y = subsampling_x && r.bit()?;
            }
            _ => (subsampling_x, subsampling_y) = (true, false),
        }
        if subsampling_x && subsampling_y {
            chroma_sample_position = r.u8(2)?;
        }
    }
    Some((
        width,
        height,
        Av1Config {
            seq_profile,
            seq_level_idx_0,
            seq_tier_0,
            high_bitdepth,
            twelve_bit,
            monochrome,
            subsampling_x,
            subsampling_y,
            chroma_sample_position,
            sequence_header: Bytes::new(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(codec: Codec, data: &[u8]) -> Frame {
        Frame {
            codec,
            timestamp: 0,
            keyframe: true,
            data: Bytes::copy_from_slice(data),
            composition_offset: 0,
        }
    }

    fn avc(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for nal in nals {
            out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            out.extend_from_slice(nal);
        }
        out
    }

    #[test]
    fn exp_golomb() {
        // 1 | 010 | 011 | 00100 | 00101 → ue 0, 1, 2, 3; se(4) = -2.
        let data = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = BitReader::new(&data);
        assert_eq!(r.ue(), Some(0));
        assert_eq!(r.ue(), Some(1));
        assert_eq!(r.ue(), Some(2));
        assert_eq!(r.ue(), Some(3));
        assert_eq!(r.se(), Some(-2));
        assert_eq!(BitReader::new(&[0, 0, 0, 0, 0]).ue(), None);
    }

    #[test]
    fn emulation_prevention_is_removed() {
        assert_eq!(rbsp(&[0, 0, 3, 1, 0, 0, 3]), vec![0, 0, 1, 0, 0]);
    }

    /// SPS written by libx264 (`-preset veryfast`, High profile) for
    /// 320x240 (no cropping), 1920x1080 (cropped from 1088), 322x242
    /// (cropped on both axes); 4:4:4 High 4:4:4 at 1280x720; and
    /// `-preset ultrafast` (Constrained Baseline) at 320x240.
    const SPS_320X240: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
    ];
    const SPS_1080P: &[u8] = &[
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00,
        0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc6, 0x58,
    ];
    const SPS_322X242: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x50, 0x87, 0x88, 0x88, 0xc0, 0x44, 0x00, 0x00,
        0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x50, 0xa6, 0x58,
    ];
    const SPS_444_720P: &[u8] = &[
        0x67, 0xf4, 0x00, 0x1f, 0x91, 0x9b, 0x28, 0x0a, 0x00, 0xb7, 0x60, 0x22, 0x00, 0x00, 0x03,
        0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x78, 0x1e, 0x30, 0x63, 0x2c,
    ];
    const SPS_BASELINE: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xda, 0x05, 0x07, 0xec, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40,
        0x00, 0x00, 0x0f, 0x03, 0xc5, 0x0a, 0xa8,
    ];
    const PPS: &[u8] = &[0x68, 0xef, 0x8f, 0xcb];

    #[test]
    fn h264_sps_sizes() {
        let sps = parse_h264_sps(SPS_320X240).expect("sps");
        assert_eq!((sps.width, sps.height), (320, 240));
        assert_eq!((sps.profile_idc, sps.level_idc), (100, 13));
        let sps = parse_h264_sps(SPS_1080P).expect("sps");
        assert_eq!((sps.width, sps.height), (1920, 1080));
        let sps = parse_h264_sps(SPS_322X242).expect("sps");
        assert_eq!((sps.width, sps.height), (322, 242));
        let sps = parse_h264_sps(SPS_444_720P).expect("sps");
        assert_eq!((sps.width, sps.height), (1280, 720));
        assert_eq!((sps.profile_idc, sps.chroma_format_idc), (244, 3));
        let sps = parse_h264_sps(SPS_BASELINE).expect("sps");
        assert_eq!((sps.width, sps.height), (320, 240));
        assert_eq!(sps.profile_idc, 66);
    }

    /// SPS written by libx264 (FFmpeg 5.1) for one 320x240 frame:
    /// `ffmpeg -f lavfi -i testsrc2=size=320x240 -frames:v 1 -c:v libx264
    /// [options] -f h264 -`, with the options below; the SPS is the NAL
    /// unit of type 7 in the Annex B output. `trace_headers` agrees on
    /// the fields tested.
    ///
    /// Defaults (High, 3 B-frames, B-pyramid): POC type 0, 2 reordered.
    const SPS_X264_BF3: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0x99, 0x60,
    ];
    /// `-bf 0`: POC type 2, no reordering.
    const SPS_X264_BF0: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xb2, 0x02, 0x83, 0xf6, 0x02, 0x20, 0x00, 0x00, 0x03, 0x00,
        0x20, 0x00, 0x00, 0x06, 0x41, 0xe2, 0x85, 0x49,
    ];
    /// `-profile:v baseline`.
    const SPS_X264_BASELINE: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0xa4, 0x80,
    ];
    /// `-tune zerolatency`: High, no B-frames.
    const SPS_X264_ZEROLATENCY: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xb2, 0x02, 0x83, 0xf6, 0x02, 0x20, 0x00, 0x00, 0x03, 0x00,
        0x20, 0x00, 0x00, 0x06, 0x51, 0xe2, 0x85, 0x49,
    ];
    /// A VUI with every section before the bitstream restriction: `-b:v
    /// 300k -maxrate 300k -bufsize 600k -x264-params nal-hrd=cbr -bsf:v
    /// h264_metadata=sample_aspect_ratio=5/3:overscan_appropriate_flag=1:
    /// video_full_range_flag=1:colour_primaries=1:transfer_characteristics=1:
    /// matrix_coefficients=1:chroma_sample_loc_type=1` (extended SAR,
    /// overscan, signal type with colour description, chroma location,
    /// timing, NAL HRD), and 3 B-frames: 2 reordered.
    const SPS_X264_HRD: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0xff, 0x00, 0x05, 0x00, 0x03, 0xf7,
        0x01, 0x01, 0x01, 0xa5, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x60,
        0x40, 0x01, 0x24, 0xf0, 0x00, 0x49, 0x3f, 0x9b, 0x0c, 0x01, 0xe2, 0x85, 0x32, 0xc0,
    ];

    #[test]
    fn h264_sps_reorder_facts() {
        let facts = |nal: &[u8]| {
            let sps = parse_h264_sps(nal).expect("sps");
            assert_eq!((sps.width, sps.height), (320, 240));
            (
                sps.profile_idc,
                sps.pic_order_cnt_type,
                sps.max_num_reorder_frames,
                sps.reorders_frames(),
            )
        };
        assert_eq!(facts(SPS_X264_BF3), (100, 0, Some(2), Some(true)));
        assert_eq!(facts(SPS_X264_BF0), (100, 2, Some(0), Some(false)));
        assert_eq!(facts(SPS_X264_BASELINE), (66, 2, Some(0), Some(false)));
        assert_eq!(facts(SPS_X264_ZEROLATENCY), (100, 2, Some(0), Some(false)));
        assert_eq!(facts(SPS_X264_HRD), (100, 0, Some(2), Some(true)));
        // A VUI cut short loses the restriction, not the size.
        assert_eq!(facts(&SPS_X264_HRD[..24]), (100, 0, None, None));
        for len in 0..SPS_X264_HRD.len() {
            let _ = parse_h264_sps(&SPS_X264_HRD[..len]);
        }
    }

    #[test]
    fn h264_reorder_rules() {
        let base = parse_h264_sps(SPS_X264_BF3).expect("sps");
        let with = |poc, reorder| H264Sps {
            pic_order_cnt_type: poc,
            max_num_reorder_frames: reorder,
            ..base
        };
        // POC type 0 says nothing by itself; the restriction decides.
        assert_eq!(with(0, Some(0)).reorders_frames(), Some(false));
        assert_eq!(with(0, None).reorders_frames(), None);
        assert_eq!(with(1, Some(1)).reorders_frames(), Some(true));
        assert_eq!(with(2, None).reorders_frames(), Some(false));
        let baseline = H264Sps {
            profile_idc: 66,
            ..with(0, None)
        };
        assert_eq!(baseline.reorders_frames(), Some(false));
    }

    #[test]
    fn h264_config_from_keyframe() {
        let data = avc(&[SPS_320X240, PPS, &[0x65, 0x88, 0x84]]);
        let config = VideoConfig::from_keyframe(&frame(Codec::H264, &data)).expect("config");
        assert_eq!((config.width, config.height), (320, 240));
        let record = config.decoder_config_record().expect("avcC");
        assert_eq!(&record[..6], &[1, 0x64, 0x00, 0x0d, 0xff, 0xe1]);
        // No PPS: not enough for avcC.
        let data = avc(&[SPS_320X240, &[0x65, 0x88]]);
        assert!(VideoConfig::from_keyframe(&frame(Codec::H264, &data)).is_none());
    }

    /// SPS written by libx265 (`-preset ultrafast`, Main) for 322x242,
    /// coded as 328x248 with a conformance window.
    const HEVC_SPS_322X242: &[u8] = &[
        0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x03, 0x00, 0x3c, 0xa0, 0x0a, 0x88, 0x04, 0x07, 0x11, 0x11, 0x96, 0x56, 0x54, 0xa4, 0xc2,
        0xf0, 0x16, 0x80, 0x80, 0x00, 0x00, 0x03, 0x00, 0x80, 0x00, 0x00, 0x0f, 0x04,
    ];

    /// libx265 defaults (`bframes=4`, B-pyramid) and `bframes=0`, 322x242;
    /// FFmpeg reports `has_b_frames` 2 and 0 for them.
    const HEVC_SPS_BF4: &[u8] = &[
        0x42, 0x01, 0x01, 0x04, 0x08, 0x00, 0x00, 0x03, 0x00, 0x9e, 0x08, 0x00, 0x00, 0x03, 0x00,
        0x00, 0x3c, 0x90, 0x01, 0x49, 0x01, 0xf3, 0x9e, 0x7c, 0xb2, 0xb3, 0x49, 0x26, 0x57, 0x80,
        0xb7, 0x02, 0x02, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0x78,
        0x20,
    ];
    const HEVC_SPS_BF0: &[u8] = &[
        0x42, 0x01, 0x01, 0x04, 0x08, 0x00, 0x00, 0x03, 0x00, 0x9e, 0x08, 0x00, 0x00, 0x03, 0x00,
        0x00, 0x3c, 0x90, 0x01, 0x49, 0x01, 0xf3, 0x9e, 0x7c, 0xb2, 0x54, 0x92, 0x65, 0x78, 0x0b,
        0x70, 0x20, 0x20, 0x00, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40, 0x00, 0x00, 0x07, 0x82,
    ];

    #[test]
    fn h265_sps_reorder_pics() {
        let reorder = |nal: &[u8]| parse_h265_sps(nal).expect("sps").max_num_reorder_pics;
        assert_eq!(reorder(HEVC_SPS_BF4), Some(2));
        assert_eq!(reorder(HEVC_SPS_BF0), Some(0));
        let sps = parse_h265_sps(HEVC_SPS_BF4).expect("sps");
        assert_eq!((sps.width, sps.height), (322, 242));
        // Cut anywhere: the count is right or unknown, never made up.
        for len in 0..HEVC_SPS_BF4.len() {
            let cut = parse_h265_sps(&HEVC_SPS_BF4[..len]);
            assert!(cut.is_none_or(|s| matches!(s.max_num_reorder_pics, None | Some(2))));
        }
    }

    #[test]
    fn h265_sps_size_and_profile() {
        let sps = parse_h265_sps(HEVC_SPS_322X242).expect("sps");
        assert_eq!((sps.width, sps.height), (322, 242));
        assert_eq!(sps.config.profile_idc, 1); // Main
        assert_eq!(sps.config.level_idc, 60); // level 2
        assert_eq!(sps.config.bit_depth_luma, 8);
        for len in 0..HEVC_SPS_322X242.len() {
            let _ = parse_h265_sps(&HEVC_SPS_322X242[..len]);
        }
    }

    #[test]
    fn truncated_input_never_panics() {
        for codec in [Codec::H264, Codec::H265, Codec::Vp8, Codec::Vp9, Codec::Av1] {
            for len in 0..SPS_1080P.len() {
                let data = avc(&[&SPS_1080P[..len], PPS]);
                let _ = VideoConfig::from_keyframe(&frame(codec, &data));
                let _ = VideoConfig::from_keyframe(&frame(codec, &SPS_1080P[..len]));
            }
            let _ = VideoConfig::from_keyframe(&frame(codec, &[0xff; 64]));
            let _ = VideoConfig::from_keyframe(&frame(codec, &[0x00; 64]));
        }
        // A length prefix pointing past the end.
        assert_eq!(length_prefixed_nals(&[0, 0, 0, 9, 1]).count(), 0);
    }

    #[test]
    fn vp8_keyframe_size() {
        let key = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
        let config = VideoConfig::from_keyframe(&frame(Codec::Vp8, &key)).expect("config");
        assert_eq!((config.width, config.height), (320, 240));
    }

    #[test]
    fn vp9_keyframe_header() {
        // The first bytes of a 320x240 keyframe from libvpx-vp9 (profile 0,
        // colour space unknown).
        let key = [
            0x82, 0x49, 0x83, 0x42, 0x00, 0x13, 0xf0, 0x0e, 0xf6, 0x04, 0x38, 0x24,
        ];
        let config = VideoConfig::from_keyframe(&frame(Codec::Vp9, &key)).expect("config");
        assert_eq!((config.width, config.height), (320, 240));
        let VideoDetail::Vp9(vp9) = config.detail else {
            panic!("vp9 detail");
        };
        assert_eq!((vp9.profile, vp9.bit_depth, vp9.color_space), (0, 8, 0));
        assert!(vp9.subsampling_x && vp9.subsampling_y);
        // An inter frame (frame_type 1) is not a keyframe.
        let mut inter = key;
        inter[0] |= 0x04;
        assert!(VideoConfig::from_keyframe(&frame(Codec::Vp9, &inter)).is_none());
    }

    /// Temporal delimiter + sequence header OBU (+ the first bytes of the
    /// frame OBU) written by libaom (`-cpu-used 8`) for 320x240 8-bit 4:2:0.
    const AV1_KEY: &[u8] = &[
        0x12, 0x00, 0x0a, 0x0b, 0x00, 0x00, 0x00, 0x04, 0x3c, 0xff, 0xbc, 0xda, 0xf9, 0x00, 0x40,
        0x32, 0x8c, 0x0e, 0x14, 0x00, 0xa4, 0x00, 0x10, 0xdb, 0x6f,
    ];

    #[test]
    fn av1_sequence_header() {
        let config = VideoConfig::from_keyframe(&frame(Codec::Av1, AV1_KEY)).expect("config");
        assert_eq!((config.width, config.height), (320, 240));
        let VideoDetail::Av1(av1) = &config.detail else {
            panic!("av1 detail");
        };
        assert_eq!(av1.seq_profile, 0);
        assert_eq!(av1.bit_depth(), 8);
        assert!(av1.subsampling_x && av1.subsampling_y && !av1.monochrome);
        let record = config.decoder_config_record().expect("av1C");
        assert_eq!(record[0], 0x81);
        assert_eq!(&record[4..], &AV1_KEY[2..15]);
    }
}
