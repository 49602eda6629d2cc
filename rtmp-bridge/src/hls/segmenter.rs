//! The sans-IO LL-HLS muxer: pipeline output in, parts and segments into
//! the [`Store`].
//!
//! Where things end:
//! - **parts** end before the lead-track frame (video, or audio when there
//!   is no video) that would make the part longer than `part_target`
//!   (judged by the previous frame interval), so parts are at most the
//!   part target, as the spec requires, and close to it; and at every
//!   segment boundary. Each part is one [`Fragmenter::cut`]: `moof` +
//!   `mdat` with every track's samples.
//! - **segments** end before the first video keyframe at least
//!   `segment_min` after the segment's start, so every segment starts with
//!   a keyframe: hls.js stalls on segments that do not (tried: cutting a
//!   long GOP at the target duration on a delta frame froze playback in
//!   Chromium). A GOP longer than the target duration makes longer
//!   segments, and `EXT-X-TARGETDURATION` grows to cover them; the gateway
//!   asks browsers for a keyframe every two seconds while HLS runs, so
//!   this is for encoders with a long fixed GOP. Audio only: before the
//!   first audio frame at least `segment_min` in.
//!
//! Runs (see [`recorder::pipeline`]): each run gets its own `Fragmenter`
//! and init segment (the codecs or picture size may change), and its
//! first segment follows an `EXT-X-DISCONTINUITY`. Media sequence numbers
//! go on, and so does the media timeline: a run's time zero is placed at
//! the end of the previous run, so decode times never go back for players
//! that ignore discontinuities (FFmpeg). This keeps one playlist for the
//! stream's life instead of a fresh one that players would have to be
//! told about.

use std::time::{Duration, SystemTime};

use recorder::codec::{Codec, MediaKind};
use recorder::mp4::{AudioTrackConfig, FragmentOut, Fragmenter};
use recorder::params::VideoConfig;
use recorder::pipeline::{Output, RunStart};
use recorder::rtp::Frame;
use tracing::{info, warn};

use super::store::Part;
use super::{ConfigError, HlsConfig, Store};

/// A keyframe this close to `segment_min` still ends the segment: frame
/// times made from other clocks (arrival, a 1/30 s rounded to ns) put a
/// keyframe "every second" a hair under a second apart, and missing it
/// would double the segment.
const KEYFRAME_SLACK_NS: u64 = 5_000_000;

/// What the muxer is doing, for the gateway's status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxerState {
    /// No run: waiting for the stream's first keyframe, or between runs.
    Idle,
    /// Making parts and segments of these codecs.
    Live {
        video: Option<Codec>,
        audio: Option<Codec>,
    },
    /// The current run cannot be muxed; nothing is made until a run that
    /// can starts.
    Error(String),
}

/// The run being muxed.
struct Run {
    fragmenter: Fragmenter,
    /// The video configuration of the init segment in use: a keyframe
    /// with another (a browser raising its resolution) starts a new init.
    video_config: Option<VideoConfig>,
    audio_config: Option<AudioTrackConfig>,
    video_track: Option<usize>,
    audio_track: Option<usize>,
    /// The run's time zero on the store's media timeline.
    offset_ns: u64,
    /// Wall clock at the run's time zero.
    anchor: SystemTime,
    /// Timeline time of the current part's and segment's first lead frame.
    part_start_ns: Option<u64>,
    segment_start_ns: Option<u64>,
    last_lead_ns: Option<u64>,
    /// Distance between the last two lead frames, to foresee the next.
    lead_interval_ns: u64,
}

impl Run {
    fn is_lead(&self, track: usize) -> bool {
        match self.video_track {
            Some(video) => track == video,
            None => self.audio_track == Some(track),
        }
    }

    /// Whether the part (and the segment) in progress end before a lead
    /// frame at `t`.
    fn boundary(&self, config: &HlsConfig, t: u64, keyframe: bool) -> (bool, bool) {
        let (Some(part_start), Some(segment_start)) = (self.part_start_ns, self.segment_start_ns)
        else {
            return (false, false);
        };
        let segment_len = t.saturating_sub(segment_start);
        let segment_min = nanos(config.segment_min);
        let end_segment = segment_len > 0
            && if self.video_track.is_some() {
                keyframe && segment_len.saturating_add(KEYFRAME_SLACK_NS) >= segment_min
            } else {
                segment_len >= segment_min
            };
        let part_len = t.saturating_sub(part_start);
        let part_target = nanos(config.part_target);
        let end_part = end_segment
            || (part_len > 0
                && (part_len >= part_target
                    || part_len.saturating_add(self.lead_interval_ns) > part_target));
        (end_part, end_segment)
    }

    fn wall_clock(&self, timeline_ns: u64) -> SystemTime {
        let since_start = Duration::from_nanos(timeline_ns.saturating_sub(self.offset_ns));
        self.anchor.checked_add(since_start).unwrap_or(self.anchor)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One stream's LL-HLS muxer. Feed it the stream's pipeline output with
/// [`Self::push`] on the worker thread; serve from [`Self::store`].
/// Dropping it closes the store (waiting requests get `Gone`).
pub struct Muxer {
    config: HlsConfig,
    store: Store,
    run: Option<Run>,
    state: MuxerState,
    /// End of the media so far on the store's timeline: the next run's
    /// time zero.
    timeline_end_ns: u64,
    /// Wall clock for the next run's time zero, if the caller knows it.
    next_anchor: Option<SystemTime>,
    ignored_frames: u64,
    mux_errors: u64,
}

impl Muxer {
    pub fn new(config: HlsConfig) -> Result<Self, ConfigError> {
        config.check()?;
        Ok(Self {
            config,
            store: Store::new(config),
            run: None,
            state: MuxerState::Idle,
            timeline_end_ns: 0,
            next_anchor: None,
            ignored_frames: 0,
            mux_errors: 0,
        })
    }

    /// The store this muxer fills; hand clones to the HTTP layer.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    pub fn config(&self) -> &HlsConfig {
        &self.config
    }

    pub fn state(&self) -> &MuxerState {
        &self.state
    }

    /// Frames not muxed: outside a run, of a track HLS does not carry,
    /// before the run's start, or refused by the fragmenter.
    pub fn ignored_frames(&self) -> u64 {
        self.ignored_frames
    }

    /// Fragmenter failures (each logged).
    pub fn mux_errors(&self) -> u64 {
        self.mux_errors
    }

    /// The wall clock of the current run's time zero (from sender
    /// reports), for `EXT-X-PROGRAM-DATE-TIME` of parts cut from now on;
    /// without a run, of the next run. By default it is the time the run's
    /// `Start` was pushed.
    pub fn set_wall_clock_anchor(&mut self, anchor: SystemTime) {
        match self.run.as_mut() {
            Some(run) => run.anchor = anchor,
            None => self.next_anchor = Some(anchor),
        }
    }

    /// [`Self::push_at`] with the system clock.
    pub fn push(&mut self, output: Output) {
        self.push_at(output, SystemTime::now());
    }

    /// Takes the next pipeline output; `now` is the wall clock (used when
    /// a run starts: its time zero is the keyframe being delivered now).
    pub fn push_at(&mut self, output: Output, now: SystemTime) {
        match output {
            Output::Start(start) => self.start(&start, now),
            Output::Frame {
                track,
                time_ns,
                frame,
            } => self.frame(track, time_ns, &frame),
            Output::End(reason) => {
                if self.run.is_some() {
                    info!(reason = reason.describe(), "HLS run ended");
                }
                self.end_run();
            }
        }
    }

    fn fail(&mut self, error: String) {
        warn!("HLS: {error}");
        self.store.set_error(error.clone());
        self.state = MuxerState::Error(error);
    }

    fn start(&mut self, start: &RunStart, now: SystemTime) {
        // The pipeline ends a run before starting the next; if it did not,
        // the old run still ends cleanly here.
        self.end_run();
        let anchor = self.next_anchor.take().unwrap_or(now);
        let video: Option<(usize, VideoConfig)> = match &start.video {
            Some((_, Codec::Vp8, _)) => {
                return self.fail("VP8 has no HLS mapping; enable transcode".into());
            }
            Some((track, Codec::H264 | Codec::H265 | Codec::Av1 | Codec::Vp9, config)) => {
                Some((*track, config.clone()))
            }
            Some((_, codec, _)) => {
                return self.fail(format!("{codec} video has no HLS mapping"));
            }
            None => None,
        };
        let audio = match &start.audio {
            Some((track, Codec::Aac, params)) => Some((*track, AudioTrackConfig::Aac(*params))),
            Some((track, Codec::Opus, params)) => Some((*track, AudioTrackConfig::Opus(*params))),
            Some((_, codec, _)) => {
                warn!("HLS: {codec} audio has no HLS mapping; the stream goes out without audio");
                None
            }
            None => None,
        };
        if video.is_none() && audio.is_none() {
            return self.fail("the stream has nothing HLS can carry".into());
        }
        let video_config = video.as_ref().map(|(_, config)| config.clone());
        let audio_config = audio.map(|(_, config)| config);
        let fragmenter = match Fragmenter::new(video_config.clone(), audio_config) {
            Ok(f) => f,
            Err(e) => return self.fail(format!("cannot mux the stream for HLS: {e}")),
        };
        let run_number = self.store.begin_run(fragmenter.init());
        self.state = MuxerState::Live {
            video: video.as_ref().map(|(_, config)| config.codec),
            audio: audio.map(|(_, config)| config.codec()),
        };
        info!(run = run_number, state = ?self.state, "HLS run started");
        self.run = Some(Run {
            fragmenter,
            video_config,
            audio_config,
            video_track: video.map(|(track, _)| track),
            audio_track: audio.map(|(track, _)| track),
            offset_ns: self.timeline_end_ns,
            anchor,
            part_start_ns: None,
            segment_start_ns: None,
            last_lead_ns: None,
            lead_interval_ns: 0,
        });
    }

    fn frame(&mut self, track: usize, time_ns: i64, frame: &Frame) {
        let Some(run) = self.run.as_mut() else {
            self.ignored_frames += 1;
            return;
        };
        let known = run.video_track == Some(track) || run.audio_track == Some(track);

        let Ok(time_ns) = u64::try_from(time_ns) else {
            self.ignored_frames += 1;
            return;
        };
        if !known {
            self.ignored_frames += 1;
            return;
        }
        let keyframe = frame.keyframe && frame.codec.kind() == MediaKind::Video;
        if keyframe
            && run.video_track == Some(track)
            && let Some(config) = VideoConfig::from_keyframe(frame)
            && run.video_config.as_ref().is_some_and(|c| *c != config)
        {
            self.new_init(config);
        }
        let Some(run) = self.run.as_mut() else {
            self.ignored_frames += 1;
            return;
        };
        let t = run.offset_ns.saturating_add(time_ns);
        let lead = run.is_lead(track);
        let (end_part, end_segment) = if lead {
            run.boundary(&self.config, t, keyframe)
        } else {
            (false, false)
        };
        match run.fragmenter.push(frame, t) {
            Ok(true) => {}
            Ok(false) => {
                // Video before the run's first keyframe: nothing to cut.
                self.ignored_frames += 1;
                return;
            }
            Err(e) => {
                warn!("HLS: frame not muxed: {e}");
                self.ignored_frames += 1;
                self.mux_errors += 1;
                return;
            }
        }
        if !lead {
            return;
        }
        // The frame just pushed is held back by the fragmenter, so a cut
        // now ends where it begins: it opens the next part.
        if end_part {
            match run.fragmenter.cut() {
                Ok(Some(fragment)) => {
                    let wall_clock = run.wall_clock(fragment.start_ns);
                    self.store
                        .push_part(part(fragment), wall_clock, end_segment);
                }
                Ok(None) if end_segment => self.store.end_segment(),
                Ok(None) => {}
                Err(e) => {
                    warn!("HLS: part not cut: {e}");
                    self.mux_errors += 1;
                }
            }
        }
        if let Some(last) = run.last_lead_ns
            && t > last
        {
            run.lead_interval_ns = t - last;
        }
        run.last_lead_ns = Some(t);
        if end_part || run.part_start_ns.is_none() {
            run.part_start_ns = Some(t);
        }
        if end_segment || run.segment_start_ns.is_none() {
            run.segment_start_ns = Some(t);
        }
    }

    /// The video's parameters changed mid-run (resolution, profile): the
    /// segment in progress ends, and the next starts at this keyframe
    /// after a discontinuity with a new init segment. Players cannot take
    /// new parameter sets under the old `avcC`/`hvcC` (MSE stalls), so the
    /// run goes on on the same timeline with a new init.
    fn new_init(&mut self, config: VideoConfig) {
        let Some(old) = self.run.as_ref() else {
            return;
        };
        let (video_track, audio_track, audio_config, offset_ns, anchor) = (
            old.video_track,
            old.audio_track,
            old.audio_config,
            old.offset_ns,
            old.anchor,
        );
        info!(
            width = config.width,
            height = config.height,
            "HLS: video parameters changed: new init segment"
        );
        self.end_run();
        let fragmenter = match Fragmenter::new(Some(config.clone()), audio_config) {
            Ok(f) => f,
            Err(e) => return self.fail(format!("cannot mux the stream for HLS: {e}")),
        };
        self.store.begin_run(fragmenter.init());
        self.state = MuxerState::Live {
            video: Some(config.codec),
            audio: audio_config.map(|a| a.codec()),
        };
        self.run = Some(Run {
            fragmenter,
            video_config: Some(config),
            audio_config,
            video_track,
            audio_track,
            offset_ns,
            anchor,
            part_start_ns: None,
            segment_start_ns: None,
            last_lead_ns: None,
            lead_interval_ns: 0,
        });
    }

    /// Flushes the run's last samples as the last part of its last segment.
    fn end_run(&mut self) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        match run.fragmenter.flush() {
            Ok(Some(fragment)) => {
                let wall_clock = run.wall_clock(fragment.start_ns);
                self.store.push_part(part(fragment), wall_clock, true);
            }
            Ok(None) => self.store.end_segment(),
            Err(e) => {
                warn!("HLS: last part not cut: {e}");
                self.mux_errors += 1;
                self.store.end_segment();
            }
        }
        let end = nanos(run.fragmenter.duration());
        self.timeline_end_ns = self.timeline_end_ns.max(end);
        self.state = MuxerState::Idle;
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        self.store.close();
    }
}

fn part(fragment: FragmentOut) -> Part {
    Part {
        duration_ns: fragment.duration_ns,
        independent: fragment.starts_with_keyframe,
        data: fragment.data,
    }
}
