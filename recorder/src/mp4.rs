//! Fragmented MP4 recordings (H264, H265, VP8, VP9, AV1 video; Opus audio).
//!
//! The init segment (`ftyp` + `moov`) goes to the file at creation, then
//! one `moof` + `mdat` pair per fragment, each written whole and flushed to
//! the OS as soon as it closes: a `kill -9` loses at most the fragment being
//! collected, and [`recover`] cuts a fragment a crash left half-written.
//! Fragments start at a video keyframe once [`Mp4Options::fragment`] has
//! passed, or at any frame after twice that (audio-only: by time).
//!
//! `shiguredo_mp4` builds the init segment from our sample entries. The
//! fragments we encode ourselves from its box types, because its segment
//! muxer counts a track's decode time from zero: a track that starts later
//! than the other (audio before the first video keyframe) or pauses would
//! drift out of sync. Here every fragment's `tfdt` is the real time of its
//! first sample.
//!
//! A sample's duration is the distance to the next sample of its track, so
//! each track holds one sample back until the next arrives.
//!
//! [`faststart`] rewrites a finished or recovered recording as a
//! progressive MP4 (`moov` first) for tools that handle fragments badly.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::num::{NonZeroU16, NonZeroU32};
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shiguredo_mp4::boxes::{
    AudioSampleEntryFields, Av01Box, Av1cBox, Avc1Box, AvccBox, DopsBox, Hvc1Box, HvccBox,
    HvccNalUintArray, MfhdBox, MfraBox, MfroBox, MoofBox, MoovBox, OpusBox, SampleEntry, TfdtBox,
    TfhdBox, TfraBox, TfraEntry, TrafBox, TrunBox, TrunSample, VisualSampleEntryFields, Vp08Box,
    Vp09Box, VpccBox,
};
use shiguredo_mp4::mux::{Fmp4SegmentMuxer, Sample};
use shiguredo_mp4::{Decode, Encode, FixedPointNumber, SampleFlags, TrackKind, Uint};

use crate::codec::{Codec, MediaKind};
use crate::params::{AudioParams, VideoConfig, VideoDetail, length_prefixed_nals};
use crate::rtp::Frame;

mod faststart;

pub use faststart::faststart;

/// The video track's timescale: the RTP clock of every video codec.
const VIDEO_TIMESCALE: u32 = 90_000;
/// Opus in MP4 is always timed at 48 kHz (Opus in ISOBMFF §4.3).
const OPUS_TIMESCALE: u32 = 48_000;
/// Without a keyframe, a video fragment is still closed after this many
/// fragment lengths: browsers send a keyframe only every minute or two, and
/// a crash must lose a second or two, not minutes. Such a fragment starts
/// with a delta frame, which is fine for playing the file (HLS cuts its own
/// segments).
const MAX_FRAGMENT_FACTOR: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum Mp4Error {
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("MP4 file I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} cannot be recorded to MP4")]
    Codec(Codec),
    #[error("the {0} track has no decoder configuration; read it from a keyframe")]
    MissingConfig(Codec),
    #[error("a recording needs a video or an audio track")]
    NoTracks,
    #[error("MP4 encoding failed: {0}")]
    Encode(String),
    #[error("not a fragmented MP4 recording: {0}")]
    NotRecording(&'static str),
}

fn encode_err(e: impl std::fmt::Debug) -> Mp4Error {
    Mp4Error::Encode(format!("{e:?}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4Options {
    /// Minimum fragment length; a fragment closes at the first video
    /// keyframe after it (audio-only: at the first packet after it).
    pub fragment: Duration,
}

impl Default for Mp4Options {
    fn default() -> Self {
        Self {
            fragment: Duration::from_secs(1),
        }
    }
}

/// What a finished (or recovered) recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4Summary {
    /// End of the last sample on the recording's timeline.
    pub duration: Duration,
    /// File size.
    pub bytes: u64,
}

/// A sample whose duration is known, waiting for its fragment.
struct ReadySample {
    duration: u32,
    keyframe: bool,
    data: Bytes,
}

/// A sample waiting for the next one of its track.
struct HeldSample {
    ticks: u64,
    keyframe: bool,
    data: Bytes,
}

struct Track {
    id: u32,
    codec: Codec,
    timescale: u32,
    held: Option<HeldSample>,
    ready: Vec<ReadySample>,
    /// Decode time of `ready[0]` (the fragment's `tfdt`).
    ready_start: u64,
    last_ticks: Option<u64>,
    /// The last known sample duration, given to the final sample.
    last_duration: u32,
    /// End of the last sample written to the file, in the timescale.
    written_end: u64,
    /// `(decode time, moof offset, traf number)` of fragments starting
    /// with a sync sample of this track, for `mfra`.
    random_access: Vec<(u64, u64, u32)>,
}

impl Track {
    fn new(id: u32, codec: Codec, timescale: u32, default_duration: u32) -> Self {
        Self {
            id,
            codec,
            timescale,
            held: None,
            ready: Vec::new(),
            ready_start: 0,
            last_ticks: None,
            last_duration: default_duration,
            written_end: 0,
            random_access: Vec::new(),
        }
    }

    fn ticks(&self, time_ns: u64) -> u64 {
        (u128::from(time_ns) * u128::from(self.timescale) / 1_000_000_000) as u64
    }

    /// Takes a new sample at `ticks` (already made strictly increasing):
    /// the held one gets its duration and becomes ready.
    fn push(&mut self, ticks: u64, keyframe: bool, data: Bytes) {
        if let Some(prev) = self.held.take() {
            let duration = u32::try_from(ticks - prev.ticks).unwrap_or(u32::MAX);
            self.make_ready(prev, duration);
        }
        self.held = Some(HeldSample {
            ticks,
            keyframe,
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
            keyframe: sample.keyframe,
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

    fn end_ticks(&self) -> u64 {
        self.written_end
    }
}

pub struct Mp4Recording {
    file: File,
    video: Option<Track>,
    audio: Option<Track>,
    /// The decoder configuration, to put parameter sets back in front of an
    /// H264 keyframe that came without them.
    video_config: Option<VideoConfig>,
    options: Mp4Options,
    /// Recording time of the current fragment's first sample.
    fragment_start_ns: Option<u64>,
    sequence_number: u32,
    bytes: u64,
    /// Video frames dropped before the first keyframe.
    pub skipped_frames: u64,
    /// Frames whose time was not after the previous one of their track
    /// (moved one sample length after it).
    pub retimed_frames: u64,
}

impl Mp4Recording {
    /// Creates the file and writes the init segment. `video` comes from
    /// [`VideoConfig::from_keyframe`] (H264, H265, AV1 need its parameter
    /// sets; VP8 and VP9 only the size).
    pub fn create(
        path: &Path,
        video: Option<VideoConfig>,
        audio: Option<AudioParams>,
        options: Mp4Options,
    ) -> Result<Self, Mp4Error> {
        if video.is_none() && audio.is_none() {
            return Err(Mp4Error::NoTracks);
        }
        let video_entry = video.as_ref().map(video_sample_entry).transpose()?;
        let audio_entry = audio.map(opus_sample_entry);
        let init = init_segment(video_entry, audio_entry)?;
        let mut file = File::create(path).map_err(|source| Mp4Error::Create {
            path: path.display().to_string(),
            source,
        })?;
        file.write_all(&init)?;
        file.flush()?;
        let mut next_id = 1;
        let video_track = video.as_ref().map(|v| {
            let track = Track::new(next_id, v.codec, VIDEO_TIMESCALE, VIDEO_TIMESCALE / 30);
            next_id += 1;
            track
        });
        let audio_track =
            audio.map(|_| Track::new(next_id, Codec::Opus, OPUS_TIMESCALE, OPUS_TIMESCALE / 50));
        Ok(Self {
            file,
            video: video_track,
            audio: audio_track,
            video_config: video,
            options,
            fragment_start_ns: None,
            sequence_number: 0,
            bytes: init.len() as u64,
            skipped_frames: 0,
            retimed_frames: 0,
        })
    }

    /// Adds a frame at `time_ns` on the recording's timeline. Frames of
    /// both tracks come interleaved in roughly increasing time; a frame not
    /// after the previous one of its track is moved one sample length after
    /// it rather than failing the recording.
    pub fn write(&mut self, frame: &Frame, time_ns: u64) -> Result<(), Mp4Error> {
        let is_video = frame.codec.kind() == MediaKind::Video;
        let track = if is_video {
            self.video.as_ref()
        } else {
            self.audio.as_ref()
        };
        let Some(track) = track.filter(|t| t.codec == frame.codec) else {
            return Err(Mp4Error::Codec(frame.codec));
        };
        if is_video && track.last_ticks.is_none() && !frame.keyframe {
            // A file must start with a decodable picture.
            self.skipped_frames += 1;
            return Ok(());
        }

        // Close the fragment before this sample if it is time to.
        let elapsed = self.fragment_start_ns.map_or(Duration::ZERO, |start| {
            Duration::from_nanos(time_ns.saturating_sub(start))
        });
        let cut = if elapsed < self.options.fragment {
            false
        } else if self.video.is_some() {
            (is_video && frame.keyframe) || elapsed >= self.options.fragment * MAX_FRAGMENT_FACTOR
        } else {
            true
        };

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
        // The held sample of this track ends where this one starts: it
        // becomes ready and belongs to the fragment being closed.
        track.push(ticks, frame.keyframe || !is_video, data);
        if cut {
            self.write_fragment()?;
            self.fragment_start_ns = Some(time_ns);
        } else if self.fragment_start_ns.is_none() {
            self.fragment_start_ns = Some(time_ns);
        }
        Ok(())
    }

    /// File size so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Writes the held-back samples as the last fragment and a random
    /// access index (`mfra`).
    pub fn finish(mut self) -> Result<Mp4Summary, Mp4Error> {
        for track in [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
        {
            track.release_held();
        }
        self.write_fragment()?;
        let mfra = self.mfra()?;
        self.file.write_all(&mfra)?;
        self.file.flush()?;
        self.bytes += mfra.len() as u64;
        Ok(Mp4Summary {
            duration: self.duration(),
            bytes: self.bytes,
        })
    }

    fn duration(&self) -> Duration {
        [self.video.as_ref(), self.audio.as_ref()]
            .into_iter()
            .flatten()
            .map(|t| ticks_to_duration(t.end_ticks(), t.timescale))
            .max()
            .unwrap_or_default()
    }

    /// The sample as stored: AV1 without temporal delimiters (ISOBMFF AV1
    /// §2.4 forbids them), H264 keyframes with their parameter sets in-band
    /// so a resolution change decodes (added if the frame lacked them).
    fn sample_data(&self, frame: &Frame) -> Bytes {
        match frame.codec {
            Codec::Av1 => strip_temporal_delimiters(&frame.data),
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

    /// Writes every ready sample as one `moof` + `mdat`, in one write.
    fn write_fragment(&mut self) -> Result<(), Mp4Error> {
        let tracks: Vec<&Track> = [self.video.as_ref(), self.audio.as_ref()]
            .into_iter()
            .flatten()
            .filter(|t| !t.ready.is_empty())
            .collect();
        if tracks.is_empty() {
            return Ok(());
        }
        let sequence_number = self.sequence_number + 1;
        let payload_len: usize = tracks
            .iter()
            .flat_map(|t| &t.ready)
            .map(|s| s.data.len())
            .sum();
        let mdat_header = mdat_header(payload_len)?;
        let placeholder = build_moof(sequence_number, &tracks, &vec![0; tracks.len()])?;
        let moof_len = placeholder.encode_to_vec().map_err(encode_err)?.len();
        let mut offsets = Vec::with_capacity(tracks.len());
        let mut offset = moof_len + mdat_header.len();
        for track in &tracks {
            offsets.push(
                i32::try_from(offset)
                    .map_err(|_| Mp4Error::Encode("fragment over 2 GiB".into()))?,
            );
            offset += track.ready.iter().map(|s| s.data.len()).sum::<usize>();
        }
        let moof = build_moof(sequence_number, &tracks, &offsets)?
            .encode_to_vec()
            .map_err(encode_err)?;
        let mut buf = Vec::with_capacity(moof.len() + mdat_header.len() + payload_len);
        buf.extend_from_slice(&moof);
        buf.extend_from_slice(&mdat_header);
        for track in &tracks {
            for sample in &track.ready {
                buf.extend_from_slice(&sample.data);
            }
        }
        self.file.write_all(&buf)?;
        self.file.flush()?;

        let moof_offset = self.bytes;
        self.bytes += buf.len() as u64;
        self.sequence_number = sequence_number;
        let mut traf_number = 0;
        for track in [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
        {
            if track.ready.is_empty() {
                continue;
            }
            traf_number += 1;
            if track.ready[0].keyframe {
                track
                    .random_access
                    .push((track.ready_start, moof_offset, traf_number));
            }
            let total: u64 = track.ready.iter().map(|s| u64::from(s.duration)).sum();
            track.written_end = track.ready_start + total;
            track.ready.clear();
        }
        Ok(())
    }

    fn mfra(&self) -> Result<Vec<u8>, Mp4Error> {
        let tracks = [self.video.as_ref(), self.audio.as_ref()];
        let tfra_boxes = tracks
            .into_iter()
            .flatten()
            .filter(|t| !t.random_access.is_empty())
            .map(|t| TfraBox {
                version: 1,
                track_id: t.id,
                length_size_of_traf_num: 0,
                length_size_of_trun_num: 0,
                length_size_of_sample_num: 0,
                entries: t
                    .random_access
                    .iter()
                    .map(|&(time, moof_offset, traf_number)| TfraEntry {
                        time,
                        moof_offset,
                        traf_number,
                        trun_number: 1,
                        sample_number: 1,
                    })
                    .collect(),
            })
            .collect();
        let mut mfra = MfraBox {
            tfra_boxes,
            mfro_box: MfroBox { size: 0 },
        };
        let len = mfra.encode_to_vec().map_err(encode_err)?.len();
        mfra.mfro_box.size = u32::try_from(len).map_err(encode_err)?;
        mfra.encode_to_vec().map_err(encode_err)
    }
}

fn ticks_to_duration(ticks: u64, timescale: u32) -> Duration {
    Duration::from_nanos((u128::from(ticks) * 1_000_000_000 / u128::from(timescale.max(1))) as u64)
}

fn mdat_header(payload_len: usize) -> Result<Vec<u8>, Mp4Error> {
    let size = u32::try_from(payload_len + 8)
        .map_err(|_| Mp4Error::Encode("fragment over 4 GiB".into()))?;
    let mut header = size.to_be_bytes().to_vec();
    header.extend_from_slice(b"mdat");
    Ok(header)
}

fn sample_flags(keyframe: bool) -> SampleFlags {
    if keyframe {
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
        let samples = track
            .ready
            .iter()
            .map(|s| {
                Ok(TrunSample {
                    duration: Some(s.duration),
                    size: Some(u32::try_from(s.data.len()).map_err(encode_err)?),
                    flags: Some(sample_flags(s.keyframe)),
                    composition_time_offset: None,
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

/// `ftyp` + `moov` for the tracks, video first (track 1).
///
/// The library builds the init segment from the sample entries it has
/// seen in media segments, so a throwaway muxer is shown one empty sample
/// per track; its media segment is discarded.
fn init_segment(
    video: Option<SampleEntry>,
    audio: Option<SampleEntry>,
) -> Result<Vec<u8>, Mp4Error> {
    let mut samples = Vec::new();
    if let Some(entry) = video {
        samples.push(probe_sample(TrackKind::Video, VIDEO_TIMESCALE, entry));
    }
    if let Some(entry) = audio {
        samples.push(probe_sample(TrackKind::Audio, OPUS_TIMESCALE, entry));
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
    Ok(out)
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

fn opus_sample_entry(audio: AudioParams) -> SampleEntry {
    let channels = u8::try_from(audio.channels.clamp(1, 2)).unwrap_or(2);
    SampleEntry::Opus(OpusBox {
        audio: AudioSampleEntryFields {
            data_reference_index: NonZeroU16::MIN,
            channelcount: u16::from(channels),
            samplesize: AudioSampleEntryFields::DEFAULT_SAMPLESIZE,
            samplerate: FixedPointNumber::new(OPUS_TIMESCALE as u16, 0),
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

fn strip_temporal_delimiters(data: &Bytes) -> Bytes {
    use crate::params::{OBU_TEMPORAL_DELIMITER, obus};
    if !obus(data).any(|o| o.obu_type == OBU_TEMPORAL_DELIMITER) {
        return data.clone();
    }
    let mut out = BytesMut::with_capacity(data.len());
    let mut consumed = 0;
    for obu in obus(data) {
        consumed += obu.whole.len();
        if obu.obu_type != OBU_TEMPORAL_DELIMITER {
            out.extend_from_slice(obu.whole);
        }
    }
    // Whatever the OBU parser could not split stays as it was.
    out.extend_from_slice(&data[consumed.min(data.len())..]);
    out.freeze()
}

/// Length of the box at the start of `data` if its header is readable.
fn box_len(data: &[u8]) -> Option<usize> {
    let (_, len, _) = box_header(data)?;
    usize::try_from(len).ok()
}

/// `(type, total length, header length)` of a box header. A size of 0
/// ("to the end of the file") is reported as `None`: we never write it,
/// and a file cut off mid-header cannot be told from it.
fn box_header(data: &[u8]) -> Option<([u8; 4], u64, u64)> {
    let size = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
    let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
    match size {
        0 => None,
        1 => {
            let large = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
            (large >= 16).then_some((kind, large, 16))
        }
        n if n >= 8 => Some((kind, u64::from(n), 8)),
        _ => None,
    }
}

/// After a crash: cuts a trailing incomplete fragment (a `moof` without its
/// complete `mdat`, or a box cut short) so the file ends at the last
/// complete fragment, and reports the media it holds. A complete file,
/// finished or not, is left as it is.
pub fn recover(path: &Path) -> Result<Mp4Summary, Mp4Error> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = file.metadata()?.len();
    let mut timescales: Vec<(u32, u32)> = Vec::new();
    let mut ends: Vec<(u32, u64)> = Vec::new();
    let mut pos = 0u64;
    let mut good_end = 0u64;
    let mut seen_moov = false;

    // Reads the box header at `pos`: `(type, length, header length)`.
    let read_header = |file: &mut File, pos: u64| -> Result<Option<([u8; 4], u64)>, Mp4Error> {
        if file_len.saturating_sub(pos) < 8 {
            return Ok(None);
        }
        let mut head = [0u8; 16];
        let n = usize::try_from((file_len - pos).min(16)).unwrap_or(16);
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut head[..n])?;
        Ok(box_header(&head[..n])
            .and_then(|(kind, len, _)| (pos.checked_add(len)? <= file_len).then_some((kind, len))))
    };
    let read_box = |file: &mut File, pos: u64, len: u64| -> Result<Vec<u8>, Mp4Error> {
        let mut buf =
            vec![0u8; usize::try_from(len).map_err(|_| Mp4Error::NotRecording("box too large"))?];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf)?;
        Ok(buf)
    };

    while let Some((kind, len)) = read_header(&mut file, pos)? {
        match &kind {
            b"moov" => {
                let data = read_box(&mut file, pos, len)?;
                let (moov, _) = MoovBox::decode(&data)
                    .map_err(|_| Mp4Error::NotRecording("unreadable moov"))?;
                timescales = moov
                    .trak_boxes
                    .iter()
                    .map(|t| (t.tkhd_box.track_id, t.mdia_box.mdhd_box.timescale.get()))
                    .collect();
                seen_moov = true;
                pos += len;
                good_end = pos;
            }
            b"moof" => {
                let Some((mdat_kind, mdat_len)) = read_header(&mut file, pos + len)? else {
                    break;
                };
                if &mdat_kind != b"mdat" {
                    break;
                }
                let data = read_box(&mut file, pos, len)?;
                let Ok((moof, _)) = MoofBox::decode(&data) else {
                    break;
                };
                for traf in &moof.traf_boxes {
                    let start = traf
                        .tfdt_box
                        .as_ref()
                        .map_or(0, |t| t.base_media_decode_time);
                    let default = traf.tfhd_box.default_sample_duration.unwrap_or(0);
                    let total: u64 = traf
                        .trun_boxes
                        .iter()
                        .flat_map(|t| &t.samples)
                        .map(|s| u64::from(s.duration.unwrap_or(default)))
                        .sum();
                    let end = start + total;
                    let id = traf.tfhd_box.track_id;
                    match ends.iter_mut().find(|(t, _)| *t == id) {
                        Some((_, e)) => *e = (*e).max(end),
                        None => ends.push((id, end)),
                    }
                }
                pos += len + mdat_len;
                good_end = pos;
            }
            // Media data must follow a fragment header.
            b"mdat" => break,
            _ => {
                pos += len;
                good_end = pos;
            }
        }
    }
    if !seen_moov {
        return Err(Mp4Error::NotRecording("no moov box"));
    }
    if good_end < file_len {
        file.set_len(good_end)?;
        file.sync_all()?;
    }
    let duration = ends
        .iter()
        .filter_map(|(id, end)| {
            let timescale = timescales.iter().find(|(t, _)| t == id)?.1;
            Some(ticks_to_duration(*end, timescale))
        })
        .max()
        .unwrap_or_default();
    Ok(Mp4Summary {
        duration,
        bytes: good_end,
    })
}
