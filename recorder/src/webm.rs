//! WebM recordings (VP8, VP9, AV1 video; Opus audio) through libwebm.
//!
//! Clusters go to the file as they close, and the segment's size is written
//! as "unknown" until the end: a file cut off by a crash or `kill -9` is
//! read by players up to its last complete cluster (tested with FFmpeg). A
//! clean [`WebmRecording::finish`] seeks back to fill in the duration and
//! appends cues, so the finished file is seekable; [`recover`] does the
//! same for a file whose recording never finished.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use webm::mux::{
    AudioCodecId, AudioTrack, Segment, SegmentBuilder, VideoCodecId, VideoTrack, Writer,
};

use crate::codec::Codec;
use crate::params::VideoDetail;
pub use crate::params::{AudioParams, VideoConfig, vp8_dimensions};
use crate::rtp::Frame;

mod ebml;
mod recover;

pub use recover::{WebmSummary, recover};

#[derive(Debug, thiserror::Error)]
pub enum WebmError {
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} cannot be recorded to WebM")]
    Codec(Codec),
    #[error("libwebm refused the {what}: {detail}")]
    Mux { what: &'static str, detail: String },
    #[error("timestamps must not go backwards ({prev_ns} ns, then {next_ns} ns)")]
    NonMonotonic { prev_ns: u64, next_ns: u64 },
    #[error("WebM file I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a recoverable WebM file: {0}")]
    NotWebm(&'static str),
}

fn mux(what: &'static str) -> impl Fn(webm::mux::Error) -> WebmError {
    move |e| WebmError::Mux {
        what,
        detail: format!("{e:?}"),
    }
}

/// A video track given by codec and size only. AV1 recordings should be
/// made from a [`VideoConfig`] read from the first keyframe instead, so the
/// track carries its `av1C` CodecPrivate.
#[derive(Debug, Clone, Copy)]
pub struct VideoParams {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
}

impl From<VideoParams> for VideoConfig {
    fn from(v: VideoParams) -> Self {
        VideoConfig {
            codec: v.codec,
            width: v.width,
            height: v.height,
            detail: VideoDetail::None,
        }
    }
}

pub struct WebmRecording<W: Write> {
    segment: Segment<W>,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    last_ns: u64,
}

impl WebmRecording<File> {
    /// `video` is a [`VideoConfig`] (from the first keyframe) or a plain
    /// [`VideoParams`]; an audio-only recording passes `None::<VideoConfig>`.
    pub fn create(
        path: &Path,
        video: Option<impl Into<VideoConfig>>,
        audio: Option<AudioParams>,
    ) -> Result<Self, WebmError> {
        let file = File::create(path).map_err(|source| WebmError::Create {
            path: path.display().to_string(),
            source,
        })?;
        // Seekable: clusters still go out as they close (live mode), and a
        // clean finish can go back to fill in the duration.
        Self::with_writer(
            Writer::new(file),
            webm::mux::SegmentMode::File,
            video.map(Into::into),
            audio,
        )
    }
}

impl<W: Write> WebmRecording<W> {
    /// A recording into a stream that cannot seek (a pipe, a socket).
    pub fn new(
        dest: W,
        video: Option<impl Into<VideoConfig>>,
        audio: Option<AudioParams>,
    ) -> Result<Self, WebmError> {
        Self::with_writer(
            Writer::new_non_seek(dest),
            webm::mux::SegmentMode::Live,
            video.map(Into::into),
            audio,
        )
    }

    fn with_writer(
        writer: Writer<W>,
        mode: webm::mux::SegmentMode,
        video: Option<VideoConfig>,
        audio: Option<AudioParams>,
    ) -> Result<Self, WebmError> {
        let mut builder = SegmentBuilder::new(writer)
            .map_err(mux("segment"))?
            .set_mode(mode)
            .map_err(mux("mode"))?
            .set_writing_app("whipcord")
            .map_err(mux("writing app"))?;
        let mut video_track = None;
        if let Some(v) = video {
            let codec = match v.codec {
                Codec::Vp8 => VideoCodecId::VP8,
                Codec::Vp9 => VideoCodecId::VP9,
                Codec::Av1 => VideoCodecId::AV1,
                other => return Err(WebmError::Codec(other)),
            };
            let (b, track) = builder
                .add_video_track(v.width.max(1), v.height.max(1), codec, None)
                .map_err(mux("video track"))?;
            builder = b;
            // AV1 in Matroska requires CodecPrivate = av1C (the sequence
            // header OBU among it); players refuse or guess without it.
            if v.codec == Codec::Av1
                && let Some(av1c) = v.decoder_config_record()
            {
                builder = builder
                    .set_codec_private(track, &av1c)
                    .map_err(mux("av1C"))?;
            }
            video_track = Some(track);
        }
        let mut audio_track = None;
        if let Some(a) = audio {
            let (b, track) = builder
                .add_audio_track(a.sample_rate, a.channels, AudioCodecId::Opus, None)
                .map_err(mux("audio track"))?;
            builder = b
                .set_codec_private(track, &a.opus_head())
                .map_err(mux("OpusHead"))?;
            audio_track = Some(track);
        }
        Ok(Self {
            segment: builder.build(),
            video: video_track,
            audio: audio_track,
            last_ns: 0,
        })
    }

    /// Adds a frame at `time_ns` on the recording's timeline. Frames of all
    /// tracks must come interleaved in time order.
    pub fn write(&mut self, frame: &Frame, time_ns: u64) -> Result<(), WebmError> {
        if time_ns < self.last_ns {
            return Err(WebmError::NonMonotonic {
                prev_ns: self.last_ns,
                next_ns: time_ns,
            });
        }
        let track: u64 = match frame.codec {
            Codec::Opus => self.audio.ok_or(WebmError::Codec(frame.codec))?.into(),
            Codec::Vp8 | Codec::Vp9 | Codec::Av1 => {
                self.video.ok_or(WebmError::Codec(frame.codec))?.into()
            }
            other => return Err(WebmError::Codec(other)),
        };
        self.segment
            .add_frame(track, &frame.data, time_ns, frame.keyframe)
            .map_err(mux("frame"))?;
        self.last_ns = time_ns;
        Ok(())
    }

    /// Writes the duration (and, for files, the cues) and closes the segment.
    pub fn finish(self) -> Result<W, WebmError> {
        // In the segment's timecode scale: libwebm's default of 1 ms.
        let duration = self.last_ns / 1_000_000;
        self.segment
            .finalize(Some(duration))
            .map(Writer::into_inner)
            .map_err(|_| WebmError::Mux {
                what: "finalize",
                detail: "segment could not be finalized".into(),
            })
    }
}
