//! A publisher's RTP, turned into timed frames in time order: what every
//! sink (recordings, RTMP, HLS) starts from.
//!
//! Packets of each track go through a [`ReorderBuffer`] (late and
//! retransmitted packets find their place; the publisher leg's NACK
//! generator asks for the missing ones) and a [`FrameAssembler`] (never
//! emits a broken frame: after a loss it drops to the next keyframe).
//! Frames are placed on one timeline by the publisher's sender reports
//! ([`TrackClock`]), or by arrival if a track sends none, and merged in
//! time order ([`Interleaver`]).
//!
//! Output comes in *runs*. A run starts at the first video keyframe (an
//! audio-only stream: after a short wait), once every track's clock is
//! known, with time zero at that keyframe; audio before it is dropped. It
//! ends when the publisher's tracks change, or, with
//! [`Reconnect::NewRun`], when a new publisher takes over (new SSRCs).
//! With [`Reconnect::Continue`] a new publisher's frames carry on the
//! same run right after the last frame. A switch to another simulcast
//! layer of the same publisher (an SSRC whose sender reports are known)
//! never ends a run.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rtc::rtp::Packet;
use tracing::{info, warn};

use crate::codec::{Codec, MediaKind};
use crate::params::{AudioParams, VideoConfig};
use crate::rtp::{DecodeTimes, Frame, FrameAssembler, ReorderBuffer};
use crate::sync::{Interleaver, TrackClock};

/// How long a gap may wait for a retransmission before it is declared
/// lost: a NACK round trip or two.
const REORDER_WAIT: Duration = Duration::from_millis(400);
const REORDER_PACKETS: usize = 2048;
/// Without sender reports from every track by then, time by arrival.
const SENDER_REPORT_WAIT: Duration = Duration::from_secs(4);
/// An audio-only stream starts its run after this long (video may still
/// be on its way).
const AUDIO_ONLY_WAIT: Duration = Duration::from_secs(1);
/// Frames held while waiting for the first keyframe, at most.
const PENDING_FRAMES: usize = 3000;
/// A track that goes quiet holds the others back at most this long.
const INTERLEAVE_HOLD_NS: i64 = 600_000_000;
/// Tracks of one publisher change within this long share one time shift.
const REBASE_GROUP: Duration = Duration::from_secs(2);
/// The gap left between the old publisher's last frame and the new one's
/// first when a run continues across a publisher change.
const REBASE_GAP_NS: i64 = 40_000_000;
/// Sender reports remembered per track (simulcast has up to three layers).
const MAX_REPORTED_SSRCS: usize = 8;

/// A track as the pipeline needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSpec {
    pub codec: Codec,
    pub clock_rate: u32,
    pub channels: u16,
    /// A track the sinks must leave alone (e.g. an Opus transcode made for
    /// WebRTC viewers beside the publisher's own AAC).
    pub ignored: bool,
}

/// What a run does when a new publisher takes over (new SSRCs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// End the run; the next starts at the new publisher's first keyframe.
    NewRun,
    /// Keep the run going, its timeline carrying on.
    Continue,
}

/// How a run's frames are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// By the publisher's RTCP sender reports (A/V aligned at the source).
    SenderReports,
    /// By the arrival of each track's first frame (no sender reports).
    Arrival,
}

/// The tracks of a run.
#[derive(Debug, Clone)]
pub struct RunStart {
    /// Track index, codec and picture description (from the first keyframe).
    pub video: Option<(usize, Codec, VideoConfig)>,
    /// Track index, codec and audio parameters.
    pub audio: Option<(usize, Codec, AudioParams)>,
    pub timing: Timing,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    TracksChanged,
    PublisherChanged,
    Finished,
}

impl RunEnd {
    pub fn describe(self) -> &'static str {
        match self {
            Self::TracksChanged => "the publisher's tracks changed",
            Self::PublisherChanged => "a new publisher took over",
            Self::Finished => "stream ended",
        }
    }
}

/// What the pipeline produces, in order.
#[derive(Debug, Clone)]
pub enum Output {
    Start(RunStart),
    /// A frame of the run, decoded at `time_ns` after the run's start and
    /// presented `frame.composition_offset` ticks of its clock later (0
    /// unless the video has B-frames); frames come in decode-time order
    /// (the same time twice is possible).
    Frame {
        track: usize,
        time_ns: i64,
        frame: Frame,
    },
    End(RunEnd),
}

struct TrackPipe {
    spec: TrackSpec,
    ssrc: Option<u32>,
    reorder: ReorderBuffer,
    assembler: Option<FrameAssembler>,
    /// H264/H265: decode times for reordered frames (B-frames).
    decode_times: Option<DecodeTimes>,
    clock: TrackClock,
    /// The latest sender report of every SSRC seen on this track (the
    /// simulcast layers of the current publisher): (RTP time, NTP time).
    reports: HashMap<u32, (u32, u64)>,
}

impl TrackPipe {
    fn new(label: &str, spec: TrackSpec) -> Self {
        let assembler = match FrameAssembler::new(spec.codec) {
            _ if spec.ignored => None,
            Ok(a) => Some(a),
            Err(err) => {
                warn!(stream = label, "track skipped: {err}");
                None
            }
        };
        let decode_times = assembler
            .as_ref()
            .and_then(|_| DecodeTimes::for_codec(spec.codec, spec.clock_rate));
        Self {
            clock: TrackClock::new(spec.clock_rate),
            spec,
            ssrc: None,
            reorder: ReorderBuffer::new(REORDER_WAIT, REORDER_PACKETS),
            assembler,
            decode_times,
            reports: HashMap::new(),
        }
    }

    /// The hub switched this track to another simulcast layer of the same
    /// publisher (at a keyframe): new sequence numbers and RTP clock, the
    /// same wallclock. Only what depends on the old SSRC starts over.
    fn switch_layer(&mut self, ssrc: u32, report: (u32, u64)) {
        self.ssrc = Some(ssrc);
        self.reorder = ReorderBuffer::new(REORDER_WAIT, REORDER_PACKETS);
        if let Some(assembler) = self.assembler.as_mut() {
            let dropped = assembler.dropped_frames;
            if let Ok(mut fresh) = FrameAssembler::new(self.spec.codec) {
                fresh.dropped_frames = dropped;
                *assembler = fresh;
            }
        }
        self.decode_times = DecodeTimes::for_codec(self.spec.codec, self.spec.clock_rate);
        self.clock.on_sender_report(report.0, report.1);
    }

    fn kind(&self) -> MediaKind {
        self.spec.codec.kind()
    }

    fn dropped_frames(&self) -> u64 {
        self.assembler.as_ref().map_or(0, |a| a.dropped_frames)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rebase {
    /// Waiting for the new publisher's first frame on this track.
    Waiting,
    /// Timed by arrival plus this offset (ns).
    Anchored(i64),
}

/// The run in progress.
struct Run {
    /// Timeline (ns) of the run's time zero.
    origin_ns: i64,
    video: Option<usize>,
    audio: Option<usize>,
    /// Latest time emitted, relative to the run's start.
    last_ns: i64,
}

pub struct FramePipeline {
    label: String,
    reconnect: Reconnect,
    epoch: Instant,
    tracks: Vec<TrackPipe>,
    timing: Option<Timing>,
    /// Frames waiting for the run to start: (track, frame).
    pending: VecDeque<(usize, Frame)>,
    first_frame_at: Option<Instant>,
    interleaver: Interleaver<Frame>,
    run: Option<Run>,
    out: VecDeque<Output>,
    /// Whether an unusable keyframe was reported (once is enough).
    warned_config: bool,
    /// Frames dropped by track pipelines since replaced.
    retired_dropped: u64,
    rebase: Vec<Option<Rebase>>,
    generation_offset: Option<i64>,
    last_rebase: Option<Instant>,
}

impl FramePipeline {
    /// `label` names the stream in log lines.
    pub fn new(label: impl Into<String>, reconnect: Reconnect, now: Instant) -> Self {
        Self {
            label: label.into(),
            reconnect,
            epoch: now,
            tracks: Vec::new(),
            timing: None,
            pending: VecDeque::new(),
            first_frame_at: None,
            interleaver: Interleaver::new(0, INTERLEAVE_HOLD_NS),
            run: None,
            out: VecDeque::new(),
            warned_config: false,
            retired_dropped: 0,
            rebase: Vec::new(),
            generation_offset: None,
            last_rebase: None,
        }
    }

    /// The next output, if any.
    pub fn pop(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Frames dropped so far because of loss (damaged, or waiting for a
    /// keyframe).
    /// The publisher's wall clock at the current run's time zero, when the
    /// run is timed by sender reports (their NTP times are the
    /// publisher's wall clock); `None` for arrival timing or no run.
    pub fn run_origin_wall_clock(&self) -> Option<std::time::SystemTime> {
        /// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
        const NTP_UNIX_OFFSET_NS: i64 = 2_208_988_800 * 1_000_000_000;
        if self.timing? != Timing::SenderReports {
            return None;
        }
        let unix_ns = self.run.as_ref()?.origin_ns - NTP_UNIX_OFFSET_NS;
        let unix_ns = u64::try_from(unix_ns).ok()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_ns))
    }

    pub fn dropped_frames(&self) -> u64 {
        self.retired_dropped
            + self
                .tracks
                .iter()
                .map(TrackPipe::dropped_frames)
                .sum::<u64>()
    }

    /// When [`FramePipeline::tick`] should run next at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tracks
            .iter()
            .filter_map(|t| t.reorder.deadline())
            .min()
    }

    /// The publisher's tracks (again, whenever they change).
    pub fn set_tracks(&mut self, specs: Vec<TrackSpec>, now: Instant) {
        let mut changed = specs.len() != self.tracks.len();
        for (index, spec) in specs.into_iter().enumerate() {
            match self.tracks.get_mut(index) {
                Some(pipe) if pipe.spec == spec => {}
                Some(pipe) => {
                    self.retired_dropped += pipe.dropped_frames();
                    *pipe = TrackPipe::new(&self.label, spec);
                    changed = true;
                }
                None => self.tracks.push(TrackPipe::new(&self.label, spec)),
            }
        }
        if changed && self.run.is_some() {
            self.end_run(now, RunEnd::TracksChanged);
        }
    }

    /// A publisher's sender report for `track`.
    pub fn sender_report(&mut self, track: usize, ssrc: u32, ntp_time: u64, rtp_time: u32) {
        let Some(pipe) = self.tracks.get_mut(track) else {
            return;
        };
        if pipe.reports.len() >= MAX_REPORTED_SSRCS && !pipe.reports.contains_key(&ssrc) {
            pipe.reports.clear();
        }
        pipe.reports.insert(ssrc, (rtp_time, ntp_time));
        if pipe.ssrc.is_none_or(|s| s == ssrc) {
            pipe.clock.on_sender_report(rtp_time, ntp_time);
        }
    }

    /// One RTP packet of `track`, received at `arrived`.
    pub fn push_rtp(&mut self, track: usize, packet: Packet, arrived: Instant) {
        let Some(pipe) = self.tracks.get_mut(track) else {
            return;
        };
        if pipe.assembler.is_none() {
            return;
        }
        let ssrc = packet.header.ssrc;
        let layer_report = pipe.reports.get(&ssrc).copied();
        if pipe.ssrc.is_some_and(|s| s != ssrc)
            && self.timing == Some(Timing::SenderReports)
            && let Some(report) = layer_report
        {
            // Known from its sender reports: another simulcast layer of the
            // same publisher, on the same wallclock. The run goes on.
            info!(stream = %self.label, track, ssrc, "following a simulcast layer switch");
            pipe.switch_layer(ssrc, report);
        } else if pipe.ssrc.is_some_and(|s| s != ssrc) {
            // A new publisher (or encoder restart): its clocks are new.
            let spec = pipe.spec.clone();
            self.retired_dropped += pipe.dropped_frames();
            *pipe = TrackPipe::new(&self.label, spec);
            if self.run.is_some() {
                match self.reconnect {
                    Reconnect::NewRun => self.end_run(arrived, RunEnd::PublisherChanged),
                    Reconnect::Continue => self.begin_rebase(track, arrived),
                }
            }
        }
        let pipe = &mut self.tracks[track];
        pipe.ssrc = Some(ssrc);
        pipe.reorder.push(packet, arrived);
        self.drain_track(track, arrived);
    }

    /// Releases what has waited long enough, and starts a run when it can.
    pub fn tick(&mut self, now: Instant) {
        for track in 0..self.tracks.len() {
            self.drain_track(track, now);
        }
        if self.run.is_none() {
            self.try_start(now);
        }
    }

    /// The stream ended: everything buffered comes out, then the end.
    pub fn finish(&mut self, now: Instant) {
        if self.run.is_some() {
            for track in 0..self.tracks.len() {
                self.drain_track(track, now + REORDER_WAIT);
            }
        }
        self.end_run(now, RunEnd::Finished);
    }

    fn end_run(&mut self, _now: Instant, why: RunEnd) {
        self.timing = None;
        self.pending.clear();
        self.first_frame_at = None;
        self.rebase.clear();
        self.generation_offset = None;
        if self.run.take().is_some() {
            for (track, time_ns, frame) in self.interleaver.drain() {
                self.out.push_back(Output::Frame {
                    track,
                    time_ns,
                    frame,
                });
            }
            self.out.push_back(Output::End(why));
        }
    }

    fn drain_track(&mut self, track: usize, now: Instant) {
        let mut frames = Vec::new();
        {
            let pipe = &mut self.tracks[track];
            let Some(assembler) = pipe.assembler.as_mut() else {
                return;
            };
            while let Some(released) = pipe.reorder.pop(now) {
                frames.extend(assembler.push(released));
            }
            if let Some(decode_times) = pipe.decode_times.as_mut() {
                for f in &mut frames {
                    decode_times.assign(f);
                }
            }
            let arrival = now.saturating_duration_since(self.epoch).as_nanos() as i64;
            for f in &frames {
                pipe.clock.note_arrival(f.timestamp, arrival);
            }
        }
        for frame in frames {
            self.on_frame(track, frame, now);
        }
    }

    /// A new publisher's tracks carry on the run: timed by arrival, shifted
    /// to follow right after the last frame; tracks that change within a
    /// couple of seconds of each other share one shift, so they stay in
    /// sync with each other.
    fn begin_rebase(&mut self, track: usize, now: Instant) {
        let recent = self
            .last_rebase
            .is_some_and(|at| now.saturating_duration_since(at) < REBASE_GROUP);
        if !recent {
            self.generation_offset = None;
        }
        self.last_rebase = Some(now);
        if self.rebase.len() < self.tracks.len() {
            self.rebase.resize(self.tracks.len(), None);
        }
        self.rebase[track] = Some(Rebase::Waiting);
        info!(stream = %self.label, track, "publisher changed: continuing");
    }

    /// Anchors a rebasing track at its first frame.
    fn anchor(&mut self, track: usize, frame: &Frame) {
        if self.rebase.get(track).copied().flatten() != Some(Rebase::Waiting) {
            return;
        }
        let (Some(run), Some(arrival)) = (
            self.run.as_ref(),
            self.tracks[track].clock.arrival_time_ns(frame.timestamp),
        ) else {
            return;
        };
        let offset = *self
            .generation_offset
            .get_or_insert(run.origin_ns + run.last_ns + REBASE_GAP_NS - arrival);
        self.rebase[track] = Some(Rebase::Anchored(offset));
    }

    fn on_frame(&mut self, track: usize, frame: Frame, now: Instant) {
        if self.run.is_none() {
            self.first_frame_at.get_or_insert(now);
            if self.pending.len() >= PENDING_FRAMES {
                self.pending.pop_front();
            }
            self.pending.push_back((track, frame));
            self.try_start(now);
            return;
        }
        self.anchor(track, &frame);
        let Some(time) = self.decode_time_of(track, &frame) else {
            return;
        };
        let Some(run) = self.run.as_ref() else {
            return;
        };
        if Some(track) != run.video && Some(track) != run.audio {
            return;
        }
        self.interleaver.push(track, time - run.origin_ns, frame);
        self.release();
    }

    fn release(&mut self) {
        while let Some((track, time_ns, frame)) = self.interleaver.pop() {
            if let Some(run) = self.run.as_mut() {
                run.last_ns = run.last_ns.max(time_ns);
            }
            self.out.push_back(Output::Frame {
                track,
                time_ns,
                frame,
            });
        }
    }

    /// When the frame decodes: its presentation time less its composition
    /// offset.
    fn decode_time_of(&self, track: usize, frame: &Frame) -> Option<i64> {
        let presented = self.time_of(track, frame)?;
        if frame.composition_offset == 0 {
            return Some(presented);
        }
        let rate = i128::from(self.tracks.get(track)?.spec.clock_rate.max(1));
        let offset_ns = i128::from(frame.composition_offset) * 1_000_000_000 / rate;
        Some(presented - offset_ns as i64)
    }

    /// When the frame is presented (its RTP timestamp on the run's clock).
    fn time_of(&self, track: usize, frame: &Frame) -> Option<i64> {
        let clock = &self.tracks.get(track)?.clock;
        if let Some(Rebase::Anchored(offset)) = self.rebase.get(track).copied().flatten() {
            return Some(clock.arrival_time_ns(frame.timestamp)? + offset);
        }
        match self.timing? {
            Timing::SenderReports => clock.sender_time_ns(frame.timestamp),
            Timing::Arrival => clock.arrival_time_ns(frame.timestamp),
        }
    }

    /// The tracks a run carries: the first video and the first audio track
    /// that can be depacketized.
    fn chosen_tracks(&self) -> (Option<usize>, Option<usize>) {
        let pick = |kind: MediaKind| {
            self.tracks
                .iter()
                .position(|t| t.kind() == kind && t.assembler.is_some())
        };
        (pick(MediaKind::Video), pick(MediaKind::Audio))
    }

    fn try_start(&mut self, now: Instant) {
        let Some(first) = self.first_frame_at else {
            return;
        };
        let waited = now.saturating_duration_since(first);
        let (video, audio) = self.chosen_tracks();
        let keyframe_at =
            video.and_then(|v| self.pending.iter().position(|(t, f)| *t == v && f.keyframe));
        let keyframe = keyframe_at
            .and_then(|i| self.pending.get(i))
            .map(|(_, f)| f.clone());
        let video_config = keyframe.as_ref().and_then(VideoConfig::from_keyframe);
        if let Some(index) = keyframe_at
            && video_config.is_none()
        {
            // Nothing before the next keyframe can be used without it.
            if !self.warned_config {
                warn!(stream = %self.label, "a keyframe does not describe the picture (no SPS, or unreadable); waiting for another");
                self.warned_config = true;
            }
            self.pending.drain(..=index);
            return;
        }
        match video {
            Some(_) if keyframe.is_none() => return,
            None if waited < AUDIO_ONLY_WAIT => return,
            _ => {}
        }
        let chosen: Vec<usize> = video.into_iter().chain(audio).collect();
        let reports = chosen
            .iter()
            .all(|&t| self.tracks[t].clock.has_sender_report());
        if !reports && waited < SENDER_REPORT_WAIT {
            return;
        }
        let timing = if reports {
            Timing::SenderReports
        } else {
            warn!(stream = %self.label, "no RTCP sender reports: timing by arrival");
            Timing::Arrival
        };
        self.timing = Some(timing);
        let pending = std::mem::take(&mut self.pending);
        let timed: Vec<(usize, i64, Frame)> = pending
            .into_iter()
            .filter_map(|(t, f)| Some((t, self.decode_time_of(t, &f)?, f)))
            .collect();
        let origin = match (&keyframe, video) {
            // The keyframe's decode time: with B-frames, it is presented a
            // few frames later, and no frame may decode before zero.
            (Some(k), Some(v)) => self.decode_time_of(v, k),
            _ => timed.iter().map(|(_, time, _)| *time).min(),
        };
        let Some(origin_ns) = origin else {
            self.timing = None;
            return;
        };
        let start = RunStart {
            video: video
                .zip(video_config)
                .map(|(v, config)| (v, self.tracks[v].spec.codec, config)),
            audio: audio.map(|a| {
                let spec = &self.tracks[a].spec;
                (
                    a,
                    spec.codec,
                    AudioParams {
                        channels: u32::from(spec.channels.max(1)),
                        sample_rate: spec.clock_rate,
                    },
                )
            }),
            timing,
        };
        self.out.push_back(Output::Start(start));
        self.run = Some(Run {
            origin_ns,
            video,
            audio,
            last_ns: 0,
        });
        self.interleaver = Interleaver::new(self.tracks.len(), INTERLEAVE_HOLD_NS);
        let mut video_started = false;
        for (track, time, frame) in timed {
            // Video from the first keyframe on; audio from the same instant.
            if Some(track) == video {
                video_started |= frame.keyframe;
                if !video_started {
                    continue;
                }
            }
            if time < origin_ns || (Some(track) != video && Some(track) != audio) {
                continue;
            }
            self.interleaver.push(track, time - origin_ns, frame);
        }
        self.release();
    }
}
