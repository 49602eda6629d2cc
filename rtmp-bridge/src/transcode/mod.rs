//! In-process transcoding for RTMP and HLS, whose players expect AAC audio
//! and H264 video: Opus → AAC-LC always, VP8/VP9/AV1 → H264 on request.
//!
//! [`Transcoder`] is a synchronous stage between the frame pipeline and a
//! sink: it takes [`Output`]s and hands back rewritten ones. It spawns no
//! threads, and its codecs are opened single-threaded too, so the caller
//! decides where the work runs (one worker thread per stream, never the
//! media thread or a tokio worker) and [`Transcoder::cpu_time`] is the
//! whole cost.
//!
//! Output stays in time order across tracks, as the pipeline promises:
//! the AAC encoder holds back up to two frames (its FIFO and its 1024
//! samples of priming delay), so other outputs wait until every
//! transcoded track has caught up, at most [`MAX_HOLD_NS`].
//!
//! Rewritten frames keep their input's `time_ns` (AAC: the time of its
//! first sample). `Frame::timestamp` is, for AAC, the 48 kHz sample count
//! since the run's first AAC frame (a re-anchored gap adds its length);
//! for H264, the run time in 90 kHz units.
//!
//! The other direction, AAC or G.711 → Opus for WebRTC viewers of RTMP
//! and RTSP sources, is [`ToOpus`]: a plain codec stage the ingest drives
//! itself, with the same policy for gaps and clock trouble (`Drift`).

mod audio;
mod to_opus;
mod video;

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use recorder::codec::Codec;
use recorder::params::{AudioParams, VideoConfig};
use recorder::pipeline::{Output, RunStart};
use recorder::rtp::Frame;
use tracing::{info, warn};

pub use audio::{AAC_CHANNELS, AAC_SAMPLE_RATE};
pub use to_opus::{OPUS_SAMPLE_RATE, OpusPacket, OpusSource, ToOpus, ToOpusStats};

/// Other outputs wait for a lagging transcoded track at most this long
/// (behind the newest input), so a stalled codec never stalls the stream.
pub const MAX_HOLD_NS: i64 = 500_000_000;
/// Outputs held while waiting for the first H264 keyframe, at most; the
/// oldest are dropped beyond it.
const MAX_HELD_BEFORE_START: usize = 1500;

/// What to transcode, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscodeOptions {
    /// AAC-LC bit rate in bits per second.
    pub aac_bitrate: u32,
    /// `Some`: VP8/VP9/AV1 video becomes H264; `None`: video passes through.
    pub video: Option<H264Options>,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        Self {
            aac_bitrate: 128_000,
            video: None,
        }
    }
}

/// The H264 encoder's settings (libx264, `veryfast`, `zerolatency`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264Options {
    /// Bit rate in bits per second (also the VBV maximum rate).
    pub bitrate: u32,
    /// A keyframe at least this often (by frame time, not frame count).
    pub keyframe_interval: Duration,
}

impl Default for H264Options {
    fn default() -> Self {
        Self {
            bitrate: 2_500_000,
            keyframe_interval: Duration::from_secs(2),
        }
    }
}

/// Why (part of) a run could not be transcoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    #[error("FFmpeg could not be initialised: {0}")]
    Init(String),
    #[error("this FFmpeg build has no {0}")]
    Missing(&'static str),
    #[error("could not open the {what}: {message}")]
    Open { what: &'static str, message: String },
    #[error("the {what} produced an unexpected configuration: {message}")]
    Config { what: &'static str, message: String },
    #[error("no H264 keyframe came out of the video encoder before the run ended")]
    NoKeyframe,
    #[error("unreadable AAC AudioSpecificConfig {0:02x?}")]
    AudioSpecificConfig(Vec<u8>),
}

impl TranscodeError {
    fn open(what: &'static str, err: ffmpeg::Error) -> Self {
        Self::Open {
            what,
            message: err.to_string(),
        }
    }
}

/// Counters since the transcoder was made (all runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranscodeStats {
    pub opus_frames_in: u64,
    pub aac_frames_out: u64,
    /// Opus frames dropped: undecodable, or no AAC encoder for the run.
    pub audio_frames_dropped: u64,
    /// Samples of silence put into gaps (DTX, loss) to keep AAC continuous.
    pub silence_samples: u64,
    /// Samples dropped because their packet came earlier than the samples
    /// before it ended (a sender clock faster than the run's timeline).
    pub trimmed_samples: u64,
    /// Gaps too long to fill: the audio timeline was anchored again.
    pub audio_reanchors: u64,
    pub video_frames_in: u64,
    pub h264_frames_out: u64,
    /// Video frames dropped: undecodable, unencodable, or no encoder.
    pub video_frames_dropped: u64,
    /// Outputs dropped while waiting too long for the first H264 keyframe.
    pub held_outputs_dropped: u64,
}

/// Opus → AAC (and optionally video → H264) for one stream's pipeline
/// output; see the module documentation.
pub struct Transcoder {
    options: TranscodeOptions,
    run: Option<Run>,
    stats: TranscodeStats,
    cpu: Duration,
    last_error: Option<TranscodeError>,
}

/// One output waiting to be released, with the time it is ordered by.
struct Timed {
    time_ns: i64,
    output: Output,
}

/// The state of one pipeline run.
struct Run {
    /// The run's description as the sink will see it.
    start: RunStart,
    /// `false` while waiting for the first H264 keyframe (its SPS/PPS are
    /// the RunStart's video configuration).
    start_sent: bool,
    audio: AudioStage,
    video: VideoStage,
    /// Outputs in time order, not yet released.
    queue: VecDeque<Timed>,
    /// The newest input time: bounds how long outputs are held.
    newest_ns: i64,
}

enum AudioStage {
    None,
    Transcode {
        track: usize,
        stage: Box<audio::OpusToAac>,
    },
    /// Its encoder could not be opened: the track's frames are dropped.
    Dropped {
        track: usize,
    },
}

enum VideoStage {
    None,
    Transcode {
        track: usize,
        stage: Box<video::ToH264>,
    },
    Dropped {
        track: usize,
    },
}

impl Transcoder {
    pub fn new(options: TranscodeOptions) -> Self {
        Self {
            options,
            run: None,
            stats: TranscodeStats::default(),
            cpu: Duration::ZERO,
            last_error: None,
        }
    }

    /// Feeds one pipeline output; appends the rewritten outputs to `out`.
    ///
    /// Opus audio becomes AAC-LC, 48 kHz stereo (mono Opus is upmixed, so
    /// every run has the same AudioSpecificConfig `11 90`); the RunStart's
    /// audio entry says so. With [`TranscodeOptions::video`], VP8/VP9/AV1
    /// becomes H264 and the RunStart is held back until the first H264
    /// keyframe exists (its SPS/PPS make the video configuration). Every
    /// other output passes through unchanged. `End` flushes the encoders
    /// first, so their last frames come before it.
    pub fn push(&mut self, output: Output, out: &mut Vec<Output>) {
        match output {
            Output::Start(start) => {
                if self.run.is_some() {
                    // The pipeline always ends a run first; if not, finish
                    // the old one's frames rather than lose them.
                    // (A run dropped whole needs no end.)
                    let _ = self.finish_run(out);
                }
                self.start_run(start, out);
            }
            Output::Frame {
                track,
                time_ns,
                frame,
            } => self.push_frame(track, time_ns, frame, out),
            Output::End(end) => {
                if self.finish_run(out) {
                    out.push(Output::End(end));
                }
            }
        }
    }

    /// Thread CPU time (`CLOCK_THREAD_CPUTIME_ID`) spent inside the codec
    /// stages (decoding, format conversion, encoding, repacking) so far.
    pub fn cpu_time(&self) -> Duration {
        self.cpu
    }

    /// The latest error that took a track out of a run; a sink can show it.
    pub fn last_error(&self) -> Option<&TranscodeError> {
        self.last_error.as_ref()
    }

    pub fn stats(&self) -> TranscodeStats {
        self.stats
    }

    fn start_run(&mut self, mut start: RunStart, out: &mut Vec<Output>) {
        let cpu = CpuTimer::start();
        let audio = match start.audio {
            Some((track, Codec::Opus, _)) => {
                match audio::OpusToAac::new(self.options.aac_bitrate) {
                    Ok(stage) => {
                        start.audio = Some((
                            track,
                            Codec::Aac,
                            AudioParams {
                                channels: AAC_CHANNELS,
                                sample_rate: AAC_SAMPLE_RATE,
                            },
                        ));
                        AudioStage::Transcode {
                            track,
                            stage: Box::new(stage),
                        }
                    }
                    Err(err) => {
                        warn!("Opus → AAC unavailable, audio left out of this run: {err}");
                        self.last_error = Some(err);
                        start.audio = None;
                        AudioStage::Dropped { track }
                    }
                }
            }
            _ => AudioStage::None,
        };
        let video = match (&self.options.video, &start.video) {
            (Some(options), Some((track, codec @ (Codec::Vp8 | Codec::Vp9 | Codec::Av1), _))) => {
                let track = *track;
                match video::ToH264::new(*codec, options) {
                    Ok(stage) => VideoStage::Transcode {
                        track,
                        stage: Box::new(stage),
                    },
                    Err(err) => {
                        warn!("{codec} → H264 unavailable, video left out of this run: {err}");
                        self.last_error = Some(err);
                        start.video = None;
                        VideoStage::Dropped { track }
                    }
                }
            }
            _ => VideoStage::None,
        };
        self.cpu += cpu.elapsed();
        let held = matches!(video, VideoStage::Transcode { .. });
        if !held {
            out.push(Output::Start(start.clone()));
        }
        self.run = Some(Run {
            start,
            start_sent: !held,
            audio,
            video,
            queue: VecDeque::new(),
            newest_ns: i64::MIN,
        });
    }

    fn push_frame(&mut self, track: usize, time_ns: i64, frame: Frame, out: &mut Vec<Output>) {
        let Some(run) = self.run.as_mut() else {
            // Outside a run nothing can be rewritten consistently.
            out.push(Output::Frame {
                track,
                time_ns,
                frame,
            });
            return;
        };
        run.newest_ns = run.newest_ns.max(time_ns);
        let mut made = Vec::new();
        match (&mut run.audio, &mut run.video) {
            (AudioStage::Transcode { track: t, stage }, _)
                if *t == track && frame.codec == Codec::Opus =>
            {
                let cpu = CpuTimer::start();
                stage.push(time_ns, &frame.data, &mut made, &mut self.stats);
                self.cpu += cpu.elapsed();
                enqueue(run, track, made);
            }
            (AudioStage::Dropped { track: t }, _) if *t == track => {
                self.stats.audio_frames_dropped += 1;
            }
            (_, VideoStage::Transcode { track: t, stage }) if *t == track => {
                let cpu = CpuTimer::start();
                let result = stage.push(time_ns, &frame, &mut made, &mut self.stats);
                self.cpu += cpu.elapsed();
                enqueue(run, track, made);
                if let Err(err) = result {
                    self.video_failed(err, out);
                }
            }
            (_, VideoStage::Dropped { track: t }) if *t == track => {
                self.stats.video_frames_dropped += 1;
            }
            _ => insert(
                &mut run.queue,
                Timed {
                    time_ns,
                    output: Output::Frame {
                        track,
                        time_ns,
                        frame,
                    },
                },
            ),
        }
        self.release(out, false);
    }

    /// The video encoder could not be opened (it is opened at the first
    /// decoded picture, whose size it needs): the run goes on without video.
    fn video_failed(&mut self, err: TranscodeError, out: &mut Vec<Output>) {
        warn!("video transcoding failed, video left out of this run: {err}");
        self.last_error = Some(err);
        if let Some(run) = self.run.as_mut() {
            if let VideoStage::Transcode { track, .. } = run.video {
                run.video = VideoStage::Dropped { track };
            }
            if !run.start_sent {
                run.start.video = None;
            }
        }
        self.release(out, false);
    }

    /// Flushes the encoders and releases everything of the current run;
    /// false if the run was dropped whole (its end must not go out either).
    fn finish_run(&mut self, out: &mut Vec<Output>) -> bool {
        let Some(mut run) = self.run.take() else {
            return true;
        };
        let cpu = CpuTimer::start();
        let mut made = Vec::new();
        if let AudioStage::Transcode { track, stage } = &mut run.audio {
            let track = *track;
            stage.finish(&mut made, &mut self.stats);
            enqueue(&mut run, track, std::mem::take(&mut made));
        }
        if let VideoStage::Transcode { track, stage } = &mut run.video {
            let track = *track;
            stage.finish(&mut made, &mut self.stats);
            enqueue(&mut run, track, made);
        }
        self.cpu += cpu.elapsed();
        if !run.start_sent && run.start.video.is_some() && !has_keyframe(&run) {
            // A run that never produced a picture is dropped whole: sending
            // its audio alone would make destinations record an
            // audio-only stream (this happens to a run that ends moments
            // after its video transcode started).
            warn!("no H264 keyframe in this run: nothing of it is sent");
            self.last_error = Some(TranscodeError::NoKeyframe);
            self.stats.held_outputs_dropped += run.queue.len() as u64;
            return false;
        }
        self.run = Some(run);
        self.release(out, true);
        self.run = None;
        true
    }

    /// Hands over what no transcoded track can still precede (everything
    /// with `all`), after the RunStart once it can be written.
    fn release(&mut self, out: &mut Vec<Output>, all: bool) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if !run.start_sent {
            if run.start.video.is_some() {
                let Some(config) = first_keyframe_config(run) else {
                    // Bounded: a source that never yields a picture must not
                    // grow the queue without end.
                    while run.queue.len() > MAX_HELD_BEFORE_START {
                        run.queue.pop_front();
                        self.stats.held_outputs_dropped += 1;
                    }
                    return;
                };
                if let Some(video) = run.start.video.as_mut() {
                    video.1 = Codec::H264;
                    video.2 = config;
                }
                info!(
                    "H264 encoder ready: first keyframe {}x{}",
                    run.start.video.as_ref().map_or(0, |v| v.2.width),
                    run.start.video.as_ref().map_or(0, |v| v.2.height)
                );
            }
            out.push(Output::Start(run.start.clone()));
            run.start_sent = true;
        }
        // The oldest time a transcoding stage may still produce a frame at.
        let pending = [
            match &run.audio {
                AudioStage::Transcode { stage, .. } => stage.pending_since(),
                _ => None,
            },
            match &run.video {
                VideoStage::Transcode { stage, .. } => stage.pending_since(),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .min();
        let limit = match pending {
            _ if all => i64::MAX,
            None => i64::MAX,
            Some(pending) => pending.max(run.newest_ns.saturating_sub(MAX_HOLD_NS)),
        };
        while run.queue.front().is_some_and(|t| t.time_ns <= limit) {
            if let Some(timed) = run.queue.pop_front() {
                out.push(timed.output);
            }
        }
    }
}

/// Puts a stage's frames, already in time order, into the run's queue.
fn enqueue(run: &mut Run, track: usize, frames: Vec<(i64, Frame)>) {
    for (time_ns, frame) in frames {
        insert(
            &mut run.queue,
            Timed {
                time_ns,
                output: Output::Frame {
                    track,
                    time_ns,
                    frame,
                },
            },
        );
    }
}

/// Inserts in time order, after outputs of the same time (stable).
fn insert(queue: &mut VecDeque<Timed>, timed: Timed) {
    let at = queue.partition_point(|t| t.time_ns <= timed.time_ns);
    queue.insert(at, timed);
}

fn has_keyframe(run: &Run) -> bool {
    first_keyframe_config(run).is_some()
}

/// The H264 configuration of the first transcoded keyframe in the queue.
fn first_keyframe_config(run: &Run) -> Option<VideoConfig> {
    let VideoStage::Transcode { track: video, .. } = run.video else {
        return None;
    };
    run.queue.iter().find_map(|t| match &t.output {
        Output::Frame { track, frame, .. }
            if *track == video && frame.codec == Codec::H264 && frame.keyframe =>
        {
            VideoConfig::from_keyframe(frame)
        }
        _ => None,
    })
}

/// Once per process: FFmpeg's global set-up, and its log level lowered
/// from the default `info` to `fatal`. FFmpeg logs to stderr, not through
/// `tracing`: libx264 prints its settings and statistics for every
/// encoder, and a corrupt stream gets a line per frame; the stages log
/// each failure themselves (rate-limited) with FFmpeg's error. A caller
/// that set another level first keeps it.
pub(crate) fn init() -> Result<(), TranscodeError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        ffmpeg::init().map_err(|e| e.to_string())?;
        if matches!(
            ffmpeg::util::log::get_level(),
            Ok(ffmpeg::util::log::Level::Info)
        ) {
            ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
        }
        Ok(())
    })
    .clone()
    .map_err(TranscodeError::Init)
}

/// Measures the calling thread's CPU time: codec work happens on the
/// caller's thread (single-threaded codecs), so this is all of it.
struct CpuTimer(Duration);

impl CpuTimer {
    fn start() -> Self {
        Self(thread_cpu_time())
    }

    fn elapsed(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.0)
    }
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Sets the thread count of a codec context to one: the stage runs on
/// the caller's thread, and FFmpeg's own worker threads (frame threading,
/// libx264's and dav1d's pools) would escape both that choice and the CPU
/// time measured here.
fn single_threaded(ctx: &mut ffmpeg::codec::Context) {
    ctx.set_threading(ffmpeg::codec::threading::Config {
        kind: ffmpeg::codec::threading::Type::None,
        count: 1,
        ..Default::default()
    });
}

/// Logs a per-frame codec error the first time and then every 500th, so a
/// corrupt stream cannot flood the log.
fn log_dropped(what: &str, count: u64, err: &dyn std::fmt::Display) {
    if count == 1 || count.is_multiple_of(500) {
        warn!("{what}: frame dropped ({count} so far): {err}");
    }
}

/// Where a chunk of decoded audio starts against where the samples before
/// it ended on a stage's timeline (its drift), and what the stage does
/// about it. Shared by both audio directions, so a publisher's gaps and
/// clock trouble come out the same on every output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drift {
    /// Within timing jitter (an Opus frame is at least 2.5 ms; RTMP's
    /// millisecond timestamps are off by up to 0.5 ms): it follows on.
    OnTime,
    /// Later by this much, at most a second: the gap is filled with
    /// silence, so the output stays continuous.
    Gap(i64),
    /// Earlier by this much, more than 20 ms: as many of its first samples
    /// are dropped, so audio cannot drift behind video without bound when
    /// the sender's audio clock runs faster than its timestamps.
    Early(i64),
    /// Off by more than a second either way (a long gap, a clock jump or
    /// reset): too much to fill, so a new timeline segment starts at it.
    Reanchor,
}

impl Drift {
    /// Classifies `drift`, counted in units of which `per_second` make a
    /// second (nanoseconds, or samples at the stage's rate).
    fn of(drift: i64, per_second: i64) -> Self {
        if drift.unsigned_abs() > per_second.unsigned_abs() {
            Self::Reanchor
        } else if drift > per_second / 400 {
            Self::Gap(drift)
        } else if drift < -(per_second / 50) {
            Self::Early(-drift)
        } else {
            Self::OnTime
        }
    }
}

/// A codec context's extradata (an open AAC encoder's with
/// `GLOBAL_HEADER`: the AudioSpecificConfig).
fn extradata(ctx: &ffmpeg::codec::Context) -> &[u8] {
    // SAFETY: the context is owned by `ctx` for the borrow's lifetime;
    // FFmpeg keeps `extradata_size` bytes at `extradata`.
    unsafe {
        let ptr = ctx.as_ptr();
        let size = usize::try_from((*ptr).extradata_size).unwrap_or(0);
        if (*ptr).extradata.is_null() || size == 0 {
            return &[];
        }
        std::slice::from_raw_parts((*ptr).extradata, size)
    }
}

/// Gives a decoder context, not yet opened, its extradata (AAC: the
/// AudioSpecificConfig). ffmpeg-next has no setter; FFmpeg frees the
/// buffer with the context, so it must come from its allocator, with the
/// zeroed padding its bitstream readers may read past the end.
fn set_extradata(ctx: &mut ffmpeg::codec::Context, data: &[u8]) -> Result<(), TranscodeError> {
    let size = i32::try_from(data.len()).map_err(|_| TranscodeError::Config {
        what: "decoder",
        message: format!("extradata of {} bytes", data.len()),
    })?;
    let padded = data.len() + ffmpeg::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
    // SAFETY: `buf` is a fresh allocation of `padded` zeroed bytes, of
    // which the first `data.len()` are written; the context frees any
    // extradata it had (none, for a new one) and takes this buffer over.
    unsafe {
        let buf = ffmpeg::ffi::av_mallocz(padded).cast::<u8>();
        if buf.is_null() {
            return Err(TranscodeError::Config {
                what: "decoder",
                message: "out of memory for extradata".into(),
            });
        }
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len());
        let ptr = ctx.as_mut_ptr();
        ffmpeg::ffi::av_freep((&raw mut (*ptr).extradata).cast());
        (*ptr).extradata = buf;
        (*ptr).extradata_size = size;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_thresholds_are_the_same_in_every_unit() {
        for per_second in [1_000_000_000, 48_000] {
            assert_eq!(Drift::of(0, per_second), Drift::OnTime);
            assert_eq!(Drift::of(per_second / 400, per_second), Drift::OnTime);
            let gap = per_second / 400 + 1;
            assert_eq!(Drift::of(gap, per_second), Drift::Gap(gap));
            assert_eq!(Drift::of(per_second, per_second), Drift::Gap(per_second));
            assert_eq!(Drift::of(-per_second / 50, per_second), Drift::OnTime);
            let early = per_second / 50 + 1;
            assert_eq!(Drift::of(-early, per_second), Drift::Early(early));
            assert_eq!(Drift::of(per_second + 1, per_second), Drift::Reanchor);
            assert_eq!(Drift::of(-per_second - 1, per_second), Drift::Reanchor);
            assert_eq!(Drift::of(i64::MIN, per_second), Drift::Reanchor);
        }
    }
}
