//! Fragmented MP4 in memory, without I/O: the init segment, and `moof` +
//! `mdat` fragments cut exactly where the caller asks. The file writer
//! ([`super::Mp4Recording`]) cuts a fragment every 1–2 s at a keyframe;
//! LL-HLS cuts ~200 ms parts and starts each segment at a keyframe. Both
//! get the same bytes for the same samples.
//!
//! `shiguredo_mp4` builds the init segment; the fragments are encoded here
//! from its box types, because its segment muxer counts a track's decode
//! time from zero: a track that starts later than the other (audio before
//! the first video keyframe) or pauses would drift out of sync. Here every
//! fragment's `tfdt` is the real time of the track's first sample in it,
//! and `mfhd` numbers the fragments 1, 2, 3… across all of them (an HLS
//! part is a fragment, so numbering runs on across parts and segments).
//!
//! A sample's duration is the distance to the next sample of its track, so
//! each track holds its newest sample back until the next one arrives: a
//! cut takes only samples whose duration is known. Push a frame, then cut:
//! the fragment ends where that frame begins, so cutting right after
//! pushing a video keyframe makes the next fragment start with it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shiguredo_mp4::boxes::{MfhdBox, MoofBox, TfdtBox, TfhdBox, TrafBox, TrunBox, TrunSample};
use shiguredo_mp4::{Encode, SampleFlags};

use super::init::init_segment;
use super::{Mp4Error, encode_err, ticks_to_duration};
use crate::codec::{Codec, MediaKind};
use crate::params::{AudioParams, VideoConfig, VideoDetail, length_prefixed_nals};
use crate::rtp::Frame;

/// The video track's timescale: the RTP clock of every video codec.
pub(super) const VIDEO_TIMESCALE: u32 = 90_000;
/// Opus in MP4 is always timed at 48 kHz (Opus in ISOBMFF §4.3).
const OPUS_TIMESCALE: u32 = 48_000;
/// Samples per channel in one AAC-LC access unit.
const AAC_FRAME_SAMPLES: u32 = 1024;

/// The audio track: its codec and format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioTrackConfig {
    /// Opus as WebRTC publishers send it: frames are Opus packets
    /// ([`Codec::Opus`]), timed at 48 kHz.
    Opus(AudioParams),
    /// AAC-LC, what HLS players and RTMP servers expect: frames are raw
    /// access units of 1024 samples ([`Codec::Aac`], no ADTS header), timed
    /// at the sample rate.
    Aac(AudioParams),
}

impl AudioTrackConfig {
    /// The codec its frames carry.
    pub fn codec(&self) -> Codec {
        match self {
            Self::Opus(_) => Codec::Opus,
            Self::Aac(_) => Codec::Aac,
        }
    }

    /// Channels and sample rate.
    pub fn params(&self) -> AudioParams {
        match *self {
            Self::Opus(params) | Self::Aac(params) => params,
        }
    }

    /// The track's timescale: one tick per sample.
    pub(super) fn timescale(&self) -> u32 {
        match self {
            Self::Opus(_) => OPUS_TIMESCALE,
            Self::Aac(params) => params.sample_rate.max(1),
        }
    }

    /// The usual frame length, for a last sample that has no successor.
    fn frame_ticks(&self) -> u32 {
        match self {
            Self::Opus(_) => OPUS_TIMESCALE / 50,
            Self::Aac(_) => AAC_FRAME_SAMPLES,
        }
    }
}

/// Existing callers name only the format: that is Opus, the WebRTC codec.
impl From<AudioParams> for AudioTrackConfig {
    fn from(params: AudioParams) -> Self {
        Self::Opus(params)
    }
}

/// One cut fragment (`moof` + `mdat`) and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentOut {
    /// `moof` + `mdat`; after the init segment, or after the fragment cut
    /// before it, it decodes.
    pub data: Bytes,
    /// Its `mfhd` sequence number (the first fragment is 1).
    pub sequence_number: u32,
    /// Its first video sample is a keyframe, so it decodes without the
    /// fragments before it (LL-HLS `INDEPENDENT=YES`). Audio-only: always.
    pub starts_with_keyframe: bool,
    /// It holds a video keyframe anywhere. Audio-only: always.
    pub has_keyframe: bool,
    /// Start on the stream's timeline: the decode time of its first video
    /// sample (audio-only, or a fragment without video: of its first audio
    /// sample).
    pub start_ns: u64,
    /// Length of that track's samples in it; consecutive fragments' starts
    /// and durations add up without gaps.
    pub duration_ns: u64,
    /// Each track's samples in it, in `traf` order.
    pub tracks: Vec<TrackRun>,
}

/// One track's samples in a fragment (one `traf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackRun {
    pub track_id: u32,
    pub kind: MediaKind,
    /// The `tfdt`: decode time of the first sample, in `timescale` units.
    pub decode_time: u64,
    /// Sum of the samples' durations, in `timescale` units.
    pub duration: u64,
    pub timescale: u32,
    pub samples: u32,
    /// The first sample is a sync sample (a random access point).
    pub starts_with_sync: bool,
}

impl TrackRun {
    fn start_ns(&self) -> u64 {
        ticks_to_ns(self.decode_time, self.timescale)
    }

    fn end_ns(&self) -> u64 {
        ticks_to_ns(self.decode_time + self.duration, self.timescale)
    }
}

fn ticks_to_ns(ticks: u64, timescale: u32) -> u64 {
    ticks_to_duration(ticks, timescale)
        .as_nanos()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// A sample whose duration is known, waiting for its fragment.
struct ReadySample {
    duration: u32,
    sync: bool,
    /// Presentation − decode time, in the timescale (B-frames).
    composition_offset: i64,
    data: Bytes,
}

/// A sample waiting for the next one of its track.
struct HeldSample {
    ticks: u64,
    sync: bool,
    composition_offset: i64,
    data: Bytes,
}

struct Track {
    id: u32,
    kind: MediaKind,
    codec: Codec,
    timescale: u32,
    held: Option<HeldSample>,
    ready: Vec<ReadySample>,
    /// Decode time of `ready[0]` (the next fragment's `tfdt`).
    ready_start: u64,
    last_ticks: Option<u64>,
    /// The last known sample duration, given to a final sample.
    last_duration: u32,
    /// End of the last sample cut, in the timescale.
    cut_end: u64,
}

impl Track {
    fn new(id: u32, kind: MediaKind, codec: Codec, timescale: u32, default_duration: u32) -> Self {
        Self {
            id,
            kind,
            codec,
            timescale,
            held: None,
            ready: Vec::new(),
            ready_start: 0,
            last_ticks: None,
            last_duration: default_duration,
            cut_end: 0,
        }
    }

    /// `time_ns` in the track's timescale, rounded to the nearest tick so
    /// that times made from whole ticks (1024 AAC samples, 3000 ticks per
    /// frame at 30 fps) come back exact.
    fn ticks(&self, time_ns: u64) -> u64 {
        let ticks =
            (u128::from(time_ns) * u128::from(self.timescale) + 500_000_000) / 1_000_000_000;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// Takes a new sample at `ticks` (already made strictly increasing):
    /// the held one gets its duration and becomes ready.
    fn push(&mut self, ticks: u64, sync: bool, composition_offset: i64, data: Bytes) {
        if let Some(prev) = self.held.take() {
            let duration = u32::try_from(ticks - prev.ticks).unwrap_or(u32::MAX);
            self.make_ready(prev, duration);
        }
        self.held = Some(HeldSample {
            ticks,
            sync,
            composition_offset,
            data,
        });
        self.last_ticks = Some(ticks);
    }

    fn make_ready(&mut self, sample: HeldSample, duration: u32) {
        if self.ready.is_empty() {
            self.ready_start = sample.ticks;
        }
        self.last_duration = duration;
        self.ready.push(ReadySample {
            duration,
            sync: sample.sync,
            composition_offset: sample.composition_offset,
            data: sample.data,
        });
    }

    /// At the end: the held sample lasts as long as the one before it.
    fn release_held(&mut self) {
        if let Some(last) = self.held.take() {
            let duration = self.last_duration;
            self.make_ready(last, duration);
        }
    }

    fn ready_bytes(&self) -> usize {
        self.ready.iter().map(|s| s.data.len()).sum()
    }

    fn run(&self) -> Result<TrackRun, Mp4Error> {
        Ok(TrackRun {
            track_id: self.id,
            kind: self.kind,
            decode_time: self.ready_start,
            duration: self.ready.iter().map(|s| u64::from(s.duration)).sum(),
            timescale: self.timescale,
            samples: u32::try_from(self.ready.len()).map_err(encode_err)?,
            starts_with_sync: self.ready.first().is_some_and(|s| s.sync),
        })
    }
}

/// Turns timed frames into an init segment and `moof` + `mdat` fragments,
/// in memory. Tracks: video (track 1) and/or audio (the next id).
pub struct Fragmenter {
    video: Option<Track>,
    audio: Option<Track>,
    /// To put parameter sets back in front of an H264 keyframe that came
    /// without them.
    video_config: Option<VideoConfig>,
    init: Bytes,
    /// The last fragment's `mfhd` sequence number.
    sequence_number: u32,
    skipped_frames: u64,
    retimed_frames: u64,
}

impl Fragmenter {
    /// `video` comes from [`VideoConfig::from_keyframe`] (H264, H265, AV1
    /// need its parameter sets; VP8 and VP9 only the size).
    pub fn new(
        video: Option<VideoConfig>,
        audio: Option<AudioTrackConfig>,
    ) -> Result<Self, Mp4Error> {
        let init = init_segment(video.as_ref(), audio.as_ref())?;
        let mut next_id = 1;
        let video_track = video.as_ref().map(|v| {
            let track = Track::new(
                next_id,
                MediaKind::Video,
                v.codec,
                VIDEO_TIMESCALE,
                VIDEO_TIMESCALE / 30,
            );
            next_id += 1;
            track
        });
        let audio_track = audio.map(|a| {
            Track::new(
                next_id,
                MediaKind::Audio,
                a.codec(),
                a.timescale(),
                a.frame_ticks(),
            )
        });
        Ok(Self {
            video: video_track,
            audio: audio_track,
            video_config: video,
            init,
            sequence_number: 0,
            skipped_frames: 0,
            retimed_frames: 0,
        })
    }

    /// `ftyp` + `moov` (with `mvex`/`trex`): what every fragment decodes
    /// after.
    pub fn init(&self) -> Bytes {
        self.init.clone()
    }

    /// Whether there is a video track: then fragments should start at its
    /// keyframes.
    pub fn has_video(&self) -> bool {
        self.video.is_some()
    }

    /// Adds a frame decoded at `time_ns` on the stream's timeline (and
    /// presented `frame.composition_offset` ticks later: video is timed at
    /// the 90 kHz of its RTP clock). Frames of both
    /// tracks come interleaved in roughly increasing time; a frame not
    /// after the previous one of its track is moved one sample length after
    /// it (counted in [`Self::retimed_frames`]) rather than failing.
    ///
    /// Returns `false` for a video frame dropped because no keyframe came
    /// before it: the first video sample must decode on its own. A frame of
    /// a codec that no track carries is an error.
    pub fn push(&mut self, frame: &Frame, time_ns: u64) -> Result<bool, Mp4Error> {
        let is_video = frame.codec.kind() == MediaKind::Video;
        let track = if is_video { &self.video } else { &self.audio };
        let Some(track) = track.as_ref().filter(|t| t.codec == frame.codec) else {
            return Err(Mp4Error::Codec(frame.codec));
        };
        if is_video && track.last_ticks.is_none() && !frame.keyframe {
            self.skipped_frames += 1;
            return Ok(false);
        }
        let data = if is_video {
            self.sample_data(frame)
        } else {
            frame.data.clone()
        };
        let track = if is_video {
            self.video.as_mut()
        } else {
            self.audio.as_mut()
        };
        let Some(track) = track else {
            return Err(Mp4Error::Codec(frame.codec));
        };
        let mut ticks = track.ticks(time_ns);
        if let Some(last) = track.last_ticks
            && ticks <= last
        {
            // One usual sample length after the previous one: decoders and
            // players keep every frame, and the track catches up with the
            // real times as soon as they pass it again.
            ticks = last + u64::from(track.last_duration.max(1));
            self.retimed_frames += 1;
        }
        // Every audio sample (Opus, AAC) decodes on its own, and is
        // presented when decoded.
        let composition_offset = if is_video {
            frame.composition_offset
        } else {
            0
        };
        track.push(ticks, frame.keyframe || !is_video, composition_offset, data);
        Ok(true)
    }

    /// Cuts every sample whose duration is known into one fragment;
    /// `None` when there is none. The newest sample of each track stays
    /// for the next fragment.
    pub fn cut(&mut self) -> Result<Option<FragmentOut>, Mp4Error> {
        let tracks: Vec<&Track> = self.tracks().filter(|t| !t.ready.is_empty()).collect();
        if tracks.is_empty() {
            return Ok(None);
        }
        let sequence_number = self.sequence_number.wrapping_add(1).max(1);
        let data = encode_fragment(sequence_number, &tracks)?;
        let runs = tracks
            .iter()
            .map(|t| t.run())
            .collect::<Result<Vec<_>, _>>()?;
        let has_keyframe = match &self.video {
            Some(video) => video.ready.iter().any(|s| s.sync),
            None => true,
        };

        self.sequence_number = sequence_number;
        for track in [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(run) = runs.iter().find(|r| r.track_id == track.id) {
                track.cut_end = run.decode_time + run.duration;
                track.ready.clear();
            }
        }

        let video_run = runs.iter().find(|r| r.kind == MediaKind::Video);
        let starts_with_keyframe = match (&self.video, video_run) {
            (None, _) => true,
            (Some(_), run) => run.is_some_and(|r| r.starts_with_sync),
        };
        // `runs` is not empty: some track had ready samples.
        let lead = video_run.or(runs.first());
        let (start_ns, end_ns) = lead.map_or((0, 0), |r| (r.start_ns(), r.end_ns()));
        Ok(Some(FragmentOut {
            data,
            sequence_number,
            starts_with_keyframe,
            has_keyframe,
            start_ns,
            duration_ns: end_ns.saturating_sub(start_ns),
            tracks: runs,
        }))
    }

    /// End of the stream: the held samples get the duration of the sample
    /// before them (a guess) and everything is cut. Pushing may go on
    /// afterwards.
    pub fn flush(&mut self) -> Result<Option<FragmentOut>, Mp4Error> {
        for track in [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
        {
            track.release_held();
        }
        self.cut()
    }

    /// End of the last sample cut so far, on the stream's timeline.
    pub fn duration(&self) -> Duration {
        self.tracks()
            .map(|t| ticks_to_duration(t.cut_end, t.timescale))
            .max()
            .unwrap_or_default()
    }

    /// Video frames dropped before the first keyframe.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped_frames
    }

    /// Frames whose time was not after the previous one of their track.
    pub fn retimed_frames(&self) -> u64 {
        self.retimed_frames
    }

    fn tracks(&self) -> impl Iterator<Item = &Track> {
        [self.video.as_ref(), self.audio.as_ref()]
            .into_iter()
            .flatten()
    }

    /// The sample as stored: AV1 without temporal delimiters (ISOBMFF AV1
    /// §2.4 forbids them), H264 keyframes with their parameter sets in-band
    /// so a resolution change decodes (added if the frame lacked them).
    fn sample_data(&self, frame: &Frame) -> Bytes {
        match frame.codec {
            Codec::Av1 => crate::params::strip_av1_temporal_delimiters(&frame.data),
            Codec::H264 if frame.keyframe => {
                let has_sps = length_prefixed_nals(&frame.data)
                    .any(|n| n.first().is_some_and(|b| b & 0x1f == 7));
                match (&self.video_config, has_sps) {
                    (
                        Some(VideoConfig {
                            detail: VideoDetail::Avc(avc),
                            ..
                        }),
                        false,
                    ) => {
                        let mut out = BytesMut::new();
                        for nal in avc.sps.iter().chain(&avc.pps) {
                            out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                            out.extend_from_slice(nal);
                        }
                        out.extend_from_slice(&frame.data);
                        out.freeze()
                    }
                    _ => frame.data.clone(),
                }
            }
            _ => frame.data.clone(),
        }
    }
}

/// `moof` + `mdat` for the tracks' ready samples, each track's samples
/// contiguous in `mdat`, in `traf` order.
fn encode_fragment(sequence_number: u32, tracks: &[&Track]) -> Result<Bytes, Mp4Error> {
    let payload_len: usize = tracks.iter().map(|t| t.ready_bytes()).sum();
    let mdat_header = mdat_header(payload_len)?;
    // `trun` data offsets count from the start of `moof`, whose size does
    // not depend on them: size it with zeros first.
    let placeholder = build_moof(sequence_number, tracks, &vec![0; tracks.len()])?;
    let moof_len = placeholder.encode_to_vec().map_err(encode_err)?.len();
    let mut offsets = Vec::with_capacity(tracks.len());
    let mut offset = moof_len + mdat_header.len();
    for track in tracks {
        offsets.push(
            i32::try_from(offset).map_err(|_| Mp4Error::Encode("fragment over 2 GiB".into()))?,
        );
        offset += track.ready_bytes();
    }
    let moof = build_moof(sequence_number, tracks, &offsets)?
        .encode_to_vec()
        .map_err(encode_err)?;
    let mut buf = BytesMut::with_capacity(moof.len() + mdat_header.len() + payload_len);
    buf.extend_from_slice(&moof);
    buf.extend_from_slice(&mdat_header);
    for track in tracks {
        for sample in &track.ready {
            buf.extend_from_slice(&sample.data);
        }
    }
    Ok(buf.freeze())
}

fn mdat_header(payload_len: usize) -> Result<[u8; 8], Mp4Error> {
    let size = payload_len
        .checked_add(8)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Mp4Error::Encode("fragment over 4 GiB".into()))?;
    let mut header = [0; 8];
    header[..4].copy_from_slice(&size.to_be_bytes());
    header[4..].copy_from_slice(b"mdat");
    Ok(header)
}

fn sample_flags(sync: bool) -> SampleFlags {
    if sync {
        // Depends on no other sample; a sync sample.
        SampleFlags::from_fields(0, 2, 0, 0, 0, false, 0)
    } else {
        SampleFlags::from_fields(0, 1, 0, 0, 0, true, 0)
    }
}

fn build_moof(
    sequence_number: u32,
    tracks: &[&Track],
    data_offsets: &[i32],
) -> Result<MoofBox, Mp4Error> {
    let mut traf_boxes = Vec::with_capacity(tracks.len());
    for (track, &data_offset) in tracks.iter().zip(data_offsets) {
        // Offsets only where frames are reordered; `trun` writes them
        // for all of its samples or none.
        let reordered = track.ready.iter().any(|s| s.composition_offset != 0);
        let samples = track
            .ready
            .iter()
            .map(|s| {
                Ok(TrunSample {
                    duration: Some(s.duration),
                    size: Some(u32::try_from(s.data.len()).map_err(encode_err)?),
                    flags: Some(sample_flags(s.sync)),
                    composition_time_offset: reordered.then_some(s.composition_offset),
                })
            })
            .collect::<Result<Vec<_>, Mp4Error>>()?;
        traf_boxes.push(TrafBox {
            tfhd_box: TfhdBox {
                track_id: track.id,
                base_data_offset: None,
                sample_description_index: None,
                default_sample_duration: None,
                default_sample_size: None,
                default_sample_flags: None,
                duration_is_empty: false,
                default_base_is_moof: true,
            },
            tfdt_box: Some(TfdtBox {
                version: 1,
                base_media_decode_time: track.ready_start,
            }),
            trun_boxes: vec![TrunBox {
                data_offset: Some(data_offset),
                first_sample_flags: None,
                samples,
            }],
            unknown_boxes: Vec::new(),
        });
    }
    Ok(MoofBox {
        mfhd_box: MfhdBox { sequence_number },
        traf_boxes,
        unknown_boxes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shiguredo_mp4::Decode;

    const STEREO: AudioParams = AudioParams {
        channels: 2,
        sample_rate: 48_000,
    };
    const FRAME_NS: u64 = 1_000_000_000 / 30;

    fn vp8() -> VideoConfig {
        VideoConfig {
            codec: Codec::Vp8,
            width: 320,
            height: 240,
            detail: VideoDetail::None,
        }
    }

    fn frame(codec: Codec, keyframe: bool, byte: u8) -> Frame {
        Frame {
            codec,
            timestamp: 0,
            keyframe,
            data: Bytes::from(vec![byte; 10]),
            composition_offset: 0,
        }
    }

    fn moof(fragment: &FragmentOut) -> MoofBox {
        MoofBox::decode(&fragment.data).expect("moof").0
    }

    #[test]
    fn cut_takes_samples_whose_duration_is_known() {
        let mut f = Fragmenter::new(Some(vp8()), None).expect("fragmenter");
        assert_eq!(&f.init()[4..8], b"ftyp");
        assert!(f.cut().expect("cut").is_none());
        // Frame 0 is a keyframe, frame 3 too.
        for i in 0..3 {
            assert!(
                f.push(&frame(Codec::Vp8, i == 0, i as u8), i * FRAME_NS)
                    .expect("push")
            );
        }
        let first = f.cut().expect("cut").expect("two samples are ready");
        assert_eq!(first.sequence_number, 1);
        assert!(first.starts_with_keyframe && first.has_keyframe);
        assert_eq!(first.tracks[0].samples, 2);
        assert_eq!((first.start_ns, first.duration_ns), (0, 2 * FRAME_NS));
        assert!(f.cut().expect("cut").is_none(), "frame 2 is held back");

        f.push(&frame(Codec::Vp8, true, 3), 3 * FRAME_NS)
            .expect("push");
        let second = f.cut().expect("cut").expect("frame 2");
        assert_eq!(second.sequence_number, 2);
        assert!(!second.starts_with_keyframe && !second.has_keyframe);
        assert_eq!(second.start_ns, first.start_ns + first.duration_ns);
        let traf = &moof(&second).traf_boxes[0];
        assert_eq!(
            traf.tfdt_box.as_ref().map(|t| t.base_media_decode_time),
            Some(6000)
        );
        let flags = traf.trun_boxes[0].samples[0].flags.expect("flags");
        assert!(flags.sample_is_non_sync_sample());

        // The flushed keyframe lasts as long as the frame before it.
        let last = f.flush().expect("flush").expect("frame 3");
        assert_eq!(last.sequence_number, 3);
        assert!(last.starts_with_keyframe);
        assert_eq!(last.duration_ns, FRAME_NS);
        let traf = &moof(&last).traf_boxes[0];
        assert!(
            !traf.trun_boxes[0].samples[0]
                .flags
                .expect("flags")
                .sample_is_non_sync_sample()
        );
        assert_eq!(f.duration(), ticks_to_duration(4 * 3000, VIDEO_TIMESCALE));
    }

    #[test]
    fn reordered_frames_keep_their_composition_offsets() {
        let mut f = Fragmenter::new(Some(vp8()), None).expect("fragmenter");
        // I0 P3 B1 B2 decoded one frame apart, presented at 1, 4, 2, 3.
        for (i, offset) in [3000, 9000, 0, 0].into_iter().enumerate() {
            let mut fr = frame(Codec::Vp8, i == 0, i as u8);
            fr.composition_offset = offset;
            f.push(&fr, i as u64 * FRAME_NS).expect("push");
        }
        f.push(&frame(Codec::Vp8, true, 9), 4 * FRAME_NS)
            .expect("push");
        let out = f.cut().expect("cut").expect("four samples");
        let trun = &moof(&out).traf_boxes[0].trun_boxes[0];
        let offsets: Vec<_> = trun
            .samples
            .iter()
            .map(|s| s.composition_time_offset)
            .collect();
        assert_eq!(offsets, [Some(3000), Some(9000), Some(0), Some(0)]);
        // Frames in order write no offsets at all.
        let out = f.flush().expect("flush").expect("the last one");
        let trun = &moof(&out).traf_boxes[0].trun_boxes[0];
        assert_eq!(trun.samples[0].composition_time_offset, None);
    }

    #[test]
    fn each_track_keeps_its_real_decode_time() {
        let mut f =
            Fragmenter::new(Some(vp8()), Some(AudioTrackConfig::Opus(STEREO))).expect("new");
        // Audio from 0 ms every 20 ms, video from 100 ms.
        for i in 0..10u64 {
            f.push(&frame(Codec::Opus, false, 0), i * 20_000_000)
                .expect("audio");
        }
        assert!(
            !f.push(&frame(Codec::Vp8, false, 1), 90_000_000)
                .expect("delta first")
        );
        assert_eq!(f.skipped_frames(), 1);
        f.push(&frame(Codec::Vp8, true, 1), 100_000_000)
            .expect("video");
        f.push(&frame(Codec::Vp8, false, 1), 100_000_000 + FRAME_NS)
            .expect("video");
        let out = f.cut().expect("cut").expect("fragment");
        let runs: Vec<_> = out
            .tracks
            .iter()
            .map(|r| (r.track_id, r.decode_time))
            .collect();
        assert_eq!(runs, vec![(1, 9000), (2, 0)]);
        assert_eq!(out.start_ns, 100_000_000, "timed by the video track");
        assert!(out.starts_with_keyframe);
        for (traf, run) in moof(&out).traf_boxes.iter().zip(&out.tracks) {
            assert_eq!(traf.tfhd_box.track_id, run.track_id);
            let tfdt = traf.tfdt_box.as_ref().map(|t| t.base_media_decode_time);
            assert_eq!(tfdt, Some(run.decode_time));
        }
    }

    #[test]
    fn audio_only_fragments_are_independent() {
        let config = AudioTrackConfig::Aac(AudioParams {
            channels: 1,
            sample_rate: 44_100,
        });
        let mut f = Fragmenter::new(None, Some(config)).expect("new");
        for i in 0..5u64 {
            // Times made from whole AAC frames come back as 1024 ticks each.
            let ns = i * 1024 * 1_000_000_000 / 44_100;
            f.push(&frame(Codec::Aac, false, 0), ns).expect("push");
        }
        let out = f.cut().expect("cut").expect("fragment");
        assert!(out.starts_with_keyframe && out.has_keyframe);
        let trun = &moof(&out).traf_boxes[0].trun_boxes[0];
        assert!(trun.samples.iter().all(|s| s.duration == Some(1024)));
        assert!(matches!(
            f.push(&frame(Codec::Opus, false, 0), 1_000_000_000),
            Err(Mp4Error::Codec(Codec::Opus))
        ));
    }

    #[test]
    fn bad_configurations_are_errors() {
        assert!(matches!(
            Fragmenter::new(None, None),
            Err(Mp4Error::NoTracks)
        ));
        for (channels, sample_rate) in [(0, 48_000), (7, 48_000), (2, 0), (2, 96_000)] {
            let aac = AudioTrackConfig::Aac(AudioParams {
                channels,
                sample_rate,
            });
            assert!(
                matches!(
                    Fragmenter::new(None, Some(aac)),
                    Err(Mp4Error::AacFormat { .. })
                ),
                "{channels} channels at {sample_rate} Hz"
            );
        }
    }
}
