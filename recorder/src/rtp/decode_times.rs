//! Decode times for video whose frames are reordered (H264/H265 B-frames).
//!
//! RTP timestamps are presentation times, and frames travel in decoding
//! order, so with B-frames the timestamps go back and forth. Containers
//! and FLV want samples in decoding order with increasing decode times and
//! a composition offset (presentation − decode) each.
//!
//! The codec bounds the reordering: no frame is preceded in decoding order
//! by more than `n` frames that follow it in output order (H264's
//! `max_num_reorder_frames`, H265's `sps_max_num_reorder_pics`). So the
//! frame at decoding position `i` is presented at position `i − n` or
//! later, and every frame presented at position `i − n` has arrived by the
//! time frame `i` does. Giving frame `i` the `(i − n)`-th presentation time
//! as its decode time is therefore known on arrival (nothing is held
//! back), increasing, and never after the frame's own presentation: all
//! offsets are ≥ 0, which every container and RTMP server takes. The
//! first `n` frames decode one frame length apart before the first
//! presentation time.
//!
//! When the SPS does not say (the bitstream restriction is optional in
//! H264), a depth of [`UNKNOWN_DEPTH`] is assumed, and the depth grows
//! whenever a frame shows it was too small (that one frame gets a negative
//! offset, counted in [`DecodeTimes::late_frames`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Frame;
use crate::codec::Codec;
use crate::params::{length_prefixed_nals, parse_h264_sps, parse_h265_sps};

/// Reorder depth assumed when the SPS does not give one: x264's default
/// B-pyramid and most hardware encoders need at most 2.
pub const UNKNOWN_DEPTH: usize = 2;
/// The largest depth either codec allows (a 16-frame DPB).
const MAX_DEPTH: usize = 16;

/// Gives each frame of one video track its decode time, as a composition
/// offset ([`Frame::composition_offset`]). Frames must come in decoding
/// order with unwrapped timestamps (as [`super::FrameAssembler`] emits
/// them).
#[derive(Debug)]
pub struct DecodeTimes {
    codec: Codec,
    /// Decode times trail presentation times by this many frames; `None`
    /// until the first frame.
    depth: Option<usize>,
    /// Presentation times not handed out as decode times yet (min-heap).
    waiting: BinaryHeap<Reverse<i64>>,
    first_timestamp: Option<i64>,
    last_decode: Option<i64>,
    /// Spacing of the decode times made up before the first presentation
    /// time is due.
    frame_ticks: i64,
    late_frames: u64,
}

impl DecodeTimes {
    /// `None` for codecs whose frames are never reordered in the
    /// container (VP8, VP9, AV1 — VP9/AV1 hide reordering inside their
    /// frames) and for audio.
    pub fn for_codec(codec: Codec, clock_rate: u32) -> Option<Self> {
        matches!(codec, Codec::H264 | Codec::H265).then(|| Self {
            codec,
            depth: None,
            waiting: BinaryHeap::new(),
            first_timestamp: None,
            last_decode: None,
            frame_ticks: i64::from(clock_rate / 30).max(1),
            late_frames: 0,
        })
    }

    /// The reorder depth in use (`None` before the first frame).
    pub fn depth(&self) -> Option<usize> {
        self.depth
    }

    /// Frames that turned out to be presented before their decode time
    /// because the depth was too small (their offset is negative).
    pub fn late_frames(&self) -> u64 {
        self.late_frames
    }

    /// Sets `frame.composition_offset`.
    pub fn assign(&mut self, frame: &mut Frame) {
        if frame.keyframe
            && let Some(depth) = sps_depth(self.codec, frame)
        {
            // A new SPS may reorder more; it never forces less (frames of
            // the old one may still be waiting).
            if self.depth.is_none_or(|d| depth > d) {
                self.depth = Some(depth);
            }
        }
        let depth = *self.depth.get_or_insert(UNKNOWN_DEPTH);
        let presented = frame.timestamp;
        let first = *self.first_timestamp.get_or_insert(presented);
        self.waiting.push(Reverse(presented));
        let candidate = if self.waiting.len() > depth {
            self.waiting.pop().map_or(presented, |Reverse(t)| t)
        } else if self.last_decode.is_none() {
            // Before the first presentation time is due: made up, one
            // frame apart, so that frame `depth` decodes at `first`.
            let ahead = (depth + 1 - self.waiting.len()) as i64;
            first - ahead * self.frame_ticks
        } else {
            // The depth just grew: one step, the next pop catches up.
            self.last_decode.map_or(presented, |t| t + 1)
        };
        let decode = match self.last_decode {
            Some(last) if candidate <= last => last + 1,
            _ => candidate,
        };
        if decode > presented {
            self.late_frames += 1;
            if depth < MAX_DEPTH {
                self.depth = Some(depth + 1);
            }
        }
        self.last_decode = Some(decode);
        frame.composition_offset = presented - decode;
    }
}

/// The reorder depth a keyframe's SPS declares (see the module docs).
fn sps_depth(codec: Codec, frame: &Frame) -> Option<usize> {
    let depth = match codec {
        Codec::H264 => {
            let sps = length_prefixed_nals(&frame.data)
                .filter(|n| n.first().is_some_and(|b| b & 0x1f == 7))
                .find_map(parse_h264_sps)?;
            match sps.reorders_frames() {
                Some(false) => 0,
                Some(true) => sps.max_num_reorder_frames.unwrap_or(0),
                None => return None,
            }
        }
        Codec::H265 => {
            length_prefixed_nals(&frame.data)
                .filter(|n| n.first().is_some_and(|b| (b >> 1) & 0x3f == 33))
                .find_map(parse_h265_sps)?
                .max_num_reorder_pics?
        }
        _ => return None,
    };
    Some((depth as usize).min(MAX_DEPTH))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const TICKS: i64 = 3000;

    fn frame(index: i64, keyframe: bool) -> Frame {
        Frame {
            codec: Codec::H264,
            timestamp: 90_000 + index * TICKS,
            keyframe,
            data: Bytes::new(),
            composition_offset: 0,
        }
    }

    /// Runs frames given by presentation index (in decoding order) through
    /// a `DecodeTimes` of `depth`; returns (decode, presentation) times.
    fn run(depth: usize, order: &[i64]) -> (Vec<(i64, i64)>, u64) {
        let mut times = DecodeTimes::for_codec(Codec::H264, 90_000).expect("video");
        times.depth = Some(depth);
        let out = order
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let mut f = frame(p, i == 0);
                times.assign(&mut f);
                (f.timestamp - f.composition_offset, f.timestamp)
            })
            .collect();
        (out, times.late_frames())
    }

    fn check(depth: usize, order: &[i64]) -> Vec<(i64, i64)> {
        let (out, late) = run(depth, order);
        assert_eq!(late, 0, "{out:?}");
        for pair in out.windows(2) {
            assert!(pair[0].0 < pair[1].0, "decode times increase: {out:?}");
        }
        for (decode, presented) in &out {
            assert!(decode <= presented, "decoded before shown: {out:?}");
        }
        out
    }

    #[test]
    fn no_reordering_means_no_offsets() {
        let out = check(0, &[0, 1, 2, 3, 4]);
        assert!(out.iter().all(|(d, p)| d == p));
    }

    #[test]
    fn one_b_frame_level() {
        // I0 P3 B1 B2 P6 B4 B5: depth 1.
        let out = check(1, &[0, 3, 1, 2, 6, 4, 5]);
        // After the made-up first one, decode times are the presentation
        // times one step behind.
        let decodes: Vec<i64> = out.iter().map(|(d, _)| (d - 90_000) / TICKS).collect();
        assert_eq!(decodes, [-1, 0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn b_pyramid() {
        // x264's default: I0 P4 B2 b1 b3 P8 B6 b5 b7, depth 2.
        check(2, &[0, 4, 2, 1, 3, 8, 6, 5, 7]);
    }

    #[test]
    fn a_lost_frame_keeps_times_valid() {
        check(2, &[0, 4, 2, 3, 8, 6, 5, 7]);
    }

    #[test]
    fn too_small_a_depth_grows() {
        let (out, late) = run(0, &[0, 3, 1, 2, 6, 4, 5, 9, 7, 8]);
        assert!(late >= 1, "{out:?}");
        for pair in out.windows(2) {
            assert!(pair[0].0 < pair[1].0, "still increasing: {out:?}");
        }
        // Once grown, the later frames are on time again.
        let tail = &out[out.len() - 3..];
        assert!(tail.iter().all(|(d, p)| d <= p), "{out:?}");
    }

    #[test]
    fn the_sps_sets_the_depth() {
        // libx264 `-bf 3` (High profile): max_num_reorder_frames = 2.
        let sps = [
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03,
            0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0x99, 0x60,
        ];
        let mut data = (sps.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(&sps);
        let mut f = frame(0, true);
        f.data = Bytes::from(data);
        let mut times = DecodeTimes::for_codec(Codec::H264, 90_000).expect("video");
        times.assign(&mut f);
        assert_eq!(times.depth(), Some(2));
        assert_eq!(f.composition_offset, 2 * TICKS);
    }
}
