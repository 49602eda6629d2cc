//! The H264 SPS's VUI (ITU-T H.264 Annex E.1.1), read only as far as the
//! bitstream restriction: the one place an SPS says how many frames the
//! decoder holds back for reordering. Everything before it is variable
//! length, so it all has to be walked.

use super::BitReader;

/// `max_num_reorder_frames`, with the reader just past
/// `vui_parameters_present_flag`; `None` when the VUI has no bitstream
/// restriction or ends early.
pub(super) fn max_num_reorder_frames(r: &mut BitReader<'_>) -> Option<u32> {
    if r.bit()? {
        // aspect_ratio_info_present_flag
        if r.u8(8)? == EXTENDED_SAR {
            r.skip(32)?; // sar_width, sar_height
        }
    }
    if r.bit()? {
        r.skip(1)?; // overscan_appropriate_flag
    }
    if r.bit()? {
        // video_signal_type_present_flag: video_format, video_full_range_flag
        r.skip(4)?;
        if r.bit()? {
            r.skip(24)?; // colour primaries, transfer, matrix
        }
    }
    if r.bit()? {
        // chroma_loc_info_present_flag: top and bottom field locations
        r.ue()?;
        r.ue()?;
    }
    if r.bit()? {
        // timing_info_present_flag: num_units_in_tick, time_scale,
        // fixed_frame_rate_flag
        r.skip(65)?;
    }
    let nal_hrd = r.bit()?;
    if nal_hrd {
        skip_hrd_parameters(r)?;
    }
    let vcl_hrd = r.bit()?;
    if vcl_hrd {
        skip_hrd_parameters(r)?;
    }
    if nal_hrd || vcl_hrd {
        r.skip(1)?; // low_delay_hrd_flag
    }
    r.skip(1)?; // pic_struct_present_flag
    if !r.bit()? {
        return None; // bitstream_restriction_flag
    }
    r.skip(1)?; // motion_vectors_over_pic_boundaries_flag
    r.ue()?; // max_bytes_per_pic_denom
    r.ue()?; // max_bits_per_mb_denom
    r.ue()?; // log2_max_mv_length_horizontal
    r.ue()?; // log2_max_mv_length_vertical
    let reorder = r.ue()?;
    // max_dec_frame_buffering follows; a reorder count larger than the DPB
    // (at most 16 frames) means the restriction is garbage.
    let dpb = r.ue()?;
    (reorder <= dpb && dpb <= 16).then_some(reorder)
}

/// `aspect_ratio_idc` value after which the ratio is written out.
const EXTENDED_SAR: u8 = 255;

/// hrd_parameters(), E.1.2.
fn skip_hrd_parameters(r: &mut BitReader<'_>) -> Option<()> {
    let cpb_cnt = r.ue()? + 1;
    if cpb_cnt > 32 {
        return None;
    }
    r.skip(8)?; // bit_rate_scale, cpb_size_scale
    for _ in 0..cpb_cnt {
        r.ue()?; // bit_rate_value_minus1
        r.ue()?; // cpb_size_value_minus1
        r.skip(1)?; // cbr_flag
    }
    // initial_cpb_removal_delay_length_minus1, cpb_removal_delay_length_minus1,
    // dpb_output_delay_length_minus1, time_offset_length
    r.skip(20)
}
