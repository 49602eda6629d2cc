//! Fragmented MP4 recordings (H264, H265, VP8, VP9, AV1 video; Opus or
//! AAC audio).
//!
//! The init segment (`ftyp` + `moov`) goes to the file at creation, then
//! one `moof` + `mdat` pair per fragment, each written whole and flushed to
//! the OS as soon as it closes: a `kill -9` loses at most the fragment being
//! collected, and [`recover`] cuts a fragment a crash left half-written.
//! Fragments start at a video keyframe once [`Mp4Options::fragment`] has
//! passed, or at any frame after twice that (audio-only: by time).
//!
//! The bytes come from [`fragment::Fragmenter`], which works in memory so
//! that LL-HLS can cut its parts from the same code; this module decides
//! where a file's fragments end, writes them, and indexes them (`mfra`).
//!
//! [`faststart`] rewrites a finished or recovered recording as a
//! progressive MP4 (`moov` first) for tools that handle fragments badly.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use shiguredo_mp4::Encode;
use shiguredo_mp4::boxes::{MfraBox, MfroBox, TfraBox, TfraEntry};

use crate::codec::{Codec, MediaKind};
use crate::params::{AudioParams, VideoConfig};
use crate::rtp::Frame;

mod faststart;
pub mod fragment;
mod init;
mod recover;

pub use faststart::faststart;
pub use fragment::{AudioTrackConfig, FragmentOut, Fragmenter, TrackRun};
pub use init::video_config_record;
pub use recover::recover;

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
    #[error("AAC-LC in MP4 cannot have {channels} channels at {sample_rate} Hz")]
    AacFormat { channels: u32, sample_rate: u32 },
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

/// Where a fragment starting with a sync sample of a track lies, for
/// `mfra`.
struct RandomAccess {
    track_id: u32,
    decode_time: u64,
    moof_offset: u64,
    traf_number: u32,
}

pub struct Mp4Recording {
    file: File,
    fragmenter: Fragmenter,
    options: Mp4Options,
    /// Recording time of the current fragment's first sample.
    fragment_start_ns: Option<u64>,
    bytes: u64,
    random_access: Vec<RandomAccess>,
    /// Video frames dropped before the first keyframe.
    pub skipped_frames: u64,
    /// Frames whose time was not after the previous one of their track
    /// (moved one sample length after it).
    pub retimed_frames: u64,
}

impl Mp4Recording {
    /// Creates the file and writes the init segment. `video` comes from
    /// [`VideoConfig::from_keyframe`] (H264, H265, AV1 need its parameter
    /// sets; VP8 and VP9 only the size); `audio` is Opus.
    pub fn create(
        path: &Path,
        video: Option<VideoConfig>,
        audio: Option<AudioParams>,
        options: Mp4Options,
    ) -> Result<Self, Mp4Error> {
        Self::create_with_audio(path, video, audio.map(AudioTrackConfig::Opus), options)
    }

    /// [`Self::create`] with the audio codec chosen: Opus or AAC.
    pub fn create_with_audio(
        path: &Path,
        video: Option<VideoConfig>,
        audio: Option<AudioTrackConfig>,
        options: Mp4Options,
    ) -> Result<Self, Mp4Error> {
        // Before the file exists: a bad configuration leaves nothing behind.
        let fragmenter = Fragmenter::new(video, audio)?;
        let init = fragmenter.init();
        let mut file = File::create(path).map_err(|source| Mp4Error::Create {
            path: path.display().to_string(),
            source,
        })?;
        file.write_all(&init)?;
        file.flush()?;
        Ok(Self {
            file,
            fragmenter,
            options,
            fragment_start_ns: None,
            bytes: init.len() as u64,
            random_access: Vec::new(),
            skipped_frames: 0,
            retimed_frames: 0,
        })
    }

    /// Adds a frame at `time_ns` on the recording's timeline. Frames of
    /// both tracks come interleaved in roughly increasing time; a frame not
    /// after the previous one of its track is moved one sample length after
    /// it rather than failing the recording.
    pub fn write(&mut self, frame: &Frame, time_ns: u64) -> Result<(), Mp4Error> {
        let cut = self.fragment_due(frame, time_ns);
        let accepted = self.fragmenter.push(frame, time_ns);
        self.skipped_frames = self.fragmenter.skipped_frames();
        self.retimed_frames = self.fragmenter.retimed_frames();
        if !accepted? {
            // Dropped (video before the first keyframe): no fragment starts.
            return Ok(());
        }
        // The pushed frame is held back, so a fragment cut now ends where
        // it starts: it opens the next fragment.
        if cut {
            if let Some(fragment) = self.fragmenter.cut()? {
                self.write_fragment(fragment)?;
            }
            self.fragment_start_ns = Some(time_ns);
        } else if self.fragment_start_ns.is_none() {
            self.fragment_start_ns = Some(time_ns);
        }
        Ok(())
    }

    /// Whether the fragment being collected closes before this frame.
    fn fragment_due(&self, frame: &Frame, time_ns: u64) -> bool {
        let elapsed = self.fragment_start_ns.map_or(Duration::ZERO, |start| {
            Duration::from_nanos(time_ns.saturating_sub(start))
        });
        if elapsed < self.options.fragment {
            false
        } else if self.fragmenter.has_video() {
            let video_keyframe = frame.codec.kind() == MediaKind::Video && frame.keyframe;
            video_keyframe || elapsed >= self.options.fragment * MAX_FRAGMENT_FACTOR
        } else {
            true
        }
    }

    /// File size so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Writes the held-back samples as the last fragment and a random
    /// access index (`mfra`).
    pub fn finish(mut self) -> Result<Mp4Summary, Mp4Error> {
        if let Some(fragment) = self.fragmenter.flush()? {
            self.write_fragment(fragment)?;
        }
        let mfra = self.mfra()?;
        self.file.write_all(&mfra)?;
        self.file.flush()?;
        self.bytes += mfra.len() as u64;
        Ok(Mp4Summary {
            duration: self.fragmenter.duration(),
            bytes: self.bytes,
        })
    }

    /// Writes one fragment in one write and notes its random access points.
    fn write_fragment(&mut self, fragment: FragmentOut) -> Result<(), Mp4Error> {
        self.file.write_all(&fragment.data)?;
        self.file.flush()?;
        let moof_offset = self.bytes;
        self.bytes += fragment.data.len() as u64;
        for (traf_number, run) in (1..).zip(&fragment.tracks) {
            if run.starts_with_sync {
                self.random_access.push(RandomAccess {
                    track_id: run.track_id,
                    decode_time: run.decode_time,
                    moof_offset,
                    traf_number,
                });
            }
        }
        Ok(())
    }

    fn mfra(&self) -> Result<Vec<u8>, Mp4Error> {
        let mut track_ids: Vec<u32> = self.random_access.iter().map(|r| r.track_id).collect();
        track_ids.sort_unstable();
        track_ids.dedup();
        let tfra_boxes = track_ids
            .into_iter()
            .map(|track_id| TfraBox {
                version: 1,
                track_id,
                length_size_of_traf_num: 0,
                length_size_of_trun_num: 0,
                length_size_of_sample_num: 0,
                entries: self
                    .random_access
                    .iter()
                    .filter(|r| r.track_id == track_id)
                    .map(|r| TfraEntry {
                        time: r.decode_time,
                        moof_offset: r.moof_offset,
                        traf_number: r.traf_number,
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
