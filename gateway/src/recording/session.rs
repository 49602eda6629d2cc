//! One stream's recording: hub events in, files out.
//!
//! Packets of each track go through a reorder buffer (late and
//! retransmitted packets find their place; the publisher leg's NACK
//! generator asks for the missing ones) and a frame assembler (never emits
//! a broken frame: after a loss it drops to the next keyframe). Frames are
//! placed on the stream's timeline by the publisher's sender reports,
//! interleaved in time order, and written. A file opens at the first video
//! keyframe, once every track's clock is known (or after a few seconds
//! without sender reports, anchored on arrival times instead).
//!
//! A new file starts when the publisher's tracks change (takeover, new
//! SSRC), at a segment boundary, and never in the middle of a GOP.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use recorder::catalog::{Catalog, Container, Finished, NewRecording, RecordingState};
use recorder::codec::{Codec, MediaKind};
use recorder::params::{AudioParams, VideoConfig};
use recorder::rtp::{Frame, FrameAssembler, ReorderBuffer};
use recorder::sync::{Interleaver, TrackClock};
use rtc::rtp::Packet;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::naming;
use super::policy::{ReconnectMode, RecordFormat};
use super::writer::Writer;
use crate::hub::subscriber::{HubEvent, SubscriberReceiver, TrackDescription};
use crate::stream_name::StreamName;

/// How often queued hub events are taken: a wake-up per packet would cost
/// more than the recording itself (see BENCHMARKS.md).
const BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How long a gap may wait for a retransmission before it is declared
/// lost: a NACK round trip or two, and a recording can afford the delay.
const REORDER_WAIT: Duration = Duration::from_millis(400);
const REORDER_PACKETS: usize = 2048;
/// Without sender reports from every track by then, time by arrival.
const SENDER_REPORT_WAIT: Duration = Duration::from_secs(4);
/// An audio-only stream opens its file after this long (video may still
/// be on its way).
const AUDIO_ONLY_WAIT: Duration = Duration::from_secs(1);
/// Frames held while waiting for the first keyframe, at most.
const PENDING_FRAMES: usize = 3000;
/// A track that goes quiet holds the others back at most this long.
const INTERLEAVE_HOLD_NS: i64 = 600_000_000;
/// Tracks of one publisher change within this long share one time shift.
const REBASE_GROUP: Duration = Duration::from_secs(2);
/// The gap left between the old publisher's last frame and the new one's
/// first in `continue` mode.
const REBASE_GAP_NS: i64 = 40_000_000;
/// How often the catalog row's size and duration are brought up to date.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Sender reports remembered per track (simulcast has up to three layers).
const MAX_REPORTED_SSRCS: usize = 8;

/// What a recording session needs from its manager.
#[derive(Clone)]
pub struct SessionContext {
    pub stream: StreamName,
    pub dir: PathBuf,
    pub format: RecordFormat,
    /// New file after this much media (None: never).
    pub segment: Option<Duration>,
    /// New file after this many bytes (None: never).
    pub segment_bytes: Option<u64>,
    pub catalog: Arc<Mutex<Catalog>>,
    pub on_reconnect: ReconnectMode,
    /// Rewrite finished MP4 files with the index first (progressive).
    pub faststart: bool,
}

/// Runs until the stream ends, `stop` turns true, or writing fails.
pub async fn run(
    context: SessionContext,
    events: SubscriberReceiver,
    mut stop: watch::Receiver<bool>,
) {
    let mut session = Session::new(context, Instant::now());
    let mut batch = Vec::new();
    loop {
        // Events are taken in batches every few milliseconds rather than
        // one wake-up per packet: a recording has no latency to keep, and
        // waking a worker thread per packet cost more than the recording.
        let now = Instant::now();
        let wake = session.next_wake(now).min(now + BATCH_INTERVAL);
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let closed = events.drain(&mut batch);
        let now = Instant::now();
        let mut ended = closed;
        for event in batch.drain(..) {
            match event {
                HubEvent::EndOfStream => ended = true,
                event => session.on_event(event, now),
            }
        }
        session.on_timer(now);
        session.queue_dropped = events.dropped();
        if ended || session.failed {
            break;
        }
    }
    session.finish_file(Instant::now(), "stream ended");
}

struct TrackPipe {
    description: TrackDescription,
    ssrc: Option<u32>,
    reorder: ReorderBuffer,
    assembler: Option<FrameAssembler>,
    clock: TrackClock,
    /// The latest sender report of every SSRC seen on this track (the
    /// simulcast layers of the current publisher): (RTP time, NTP time).
    reports: HashMap<u32, (u32, u64)>,
}

impl TrackPipe {
    fn new(stream: &StreamName, description: TrackDescription) -> Self {
        let assembler = match FrameAssembler::new(description.codec) {
            Ok(a) => Some(a),
            Err(err) => {
                warn!(stream = %stream, "track not recorded: {err}");
                None
            }
        };
        Self {
            clock: TrackClock::new(description.clock_rate),
            description,
            ssrc: None,
            reorder: ReorderBuffer::new(REORDER_WAIT, REORDER_PACKETS),
            assembler,
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
            if let Ok(mut fresh) = FrameAssembler::new(self.description.codec) {
                fresh.dropped_frames = dropped;
                *assembler = fresh;
            }
        }
        self.clock.on_sender_report(report.0, report.1);
    }

    fn kind(&self) -> MediaKind {
        self.description.codec.kind()
    }

    fn dropped_frames(&self) -> u64 {
        self.assembler.as_ref().map_or(0, |a| a.dropped_frames)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ClockMode {
    SenderReports,
    Arrival,
}

/// The file being written.
struct OpenFile {
    id: i64,
    path: PathBuf,
    container: Container,
    writer: Writer,
    /// Timeline (ns) of the file's time zero.
    origin_ns: i64,
    /// Latest time written, relative to the file's start.
    last_ns: i64,
    /// Latest time written per track.
    track_last_ns: Vec<Option<i64>>,
    video_track: Option<usize>,
    audio_track: Option<usize>,
    video_size: Option<(u32, u32)>,
    dropped_at_open: u64,
    last_progress: Instant,
}

struct Session {
    context: SessionContext,
    epoch: Instant,
    tracks: Vec<TrackPipe>,
    mode: Option<ClockMode>,
    /// Frames waiting for the file to open: (track, frame).
    pending: Vec<(usize, Frame)>,
    first_frame_at: Option<Instant>,
    interleaver: Interleaver<Frame>,
    file: Option<OpenFile>,
    /// Packets the hub dropped because this session fell behind.
    queue_dropped: u64,
    failed: bool,
    /// Whether an unusable keyframe was reported (once is enough).
    warned_config: bool,
    /// Frames dropped by track pipelines since replaced.
    retired_dropped: u64,
    /// Per track, in `continue` mode after a publisher change.
    rebase: Vec<Option<Rebase>>,
    generation_offset: Option<i64>,
    last_rebase: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rebase {
    /// Waiting for the new publisher's first frame on this track.
    Waiting,
    /// Timed by arrival plus this offset (ns).
    Anchored(i64),
}

impl Session {
    fn new(context: SessionContext, now: Instant) -> Self {
        Self {
            context,
            epoch: now,
            tracks: Vec::new(),
            mode: None,
            pending: Vec::new(),
            first_frame_at: None,
            interleaver: Interleaver::new(0, INTERLEAVE_HOLD_NS),
            file: None,
            queue_dropped: 0,
            failed: false,
            warned_config: false,
            retired_dropped: 0,
            rebase: Vec::new(),
            generation_offset: None,
            last_rebase: None,
        }
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_millis(500);
        for t in &self.tracks {
            if let Some(d) = t.reorder.deadline() {
                wake = wake.min(d);
            }
        }
        wake.max(now)
    }

    fn on_event(&mut self, event: HubEvent, now: Instant) {
        match event {
            HubEvent::Tracks(descriptions) => self.on_tracks(descriptions, now),
            HubEvent::Rtp {
                track,
                packet,
                arrived,
            } => self.on_rtp(track, packet, arrived.min(now)),
            HubEvent::SenderReport {
                track,
                ssrc,
                ntp_time,
                rtp_time,
            } => {
                if let Some(pipe) = self.tracks.get_mut(track) {
                    if pipe.reports.len() >= MAX_REPORTED_SSRCS && !pipe.reports.contains_key(&ssrc)
                    {
                        pipe.reports.clear();
                    }
                    pipe.reports.insert(ssrc, (rtp_time, ntp_time));
                    if pipe.ssrc.is_none_or(|s| s == ssrc) {
                        pipe.clock.on_sender_report(rtp_time, ntp_time);
                    }
                }
            }
            HubEvent::EndOfStream => {}
        }
    }

    fn on_tracks(&mut self, descriptions: Vec<TrackDescription>, now: Instant) {
        let mut changed = descriptions.len() != self.tracks.len();
        for (index, description) in descriptions.into_iter().enumerate() {
            match self.tracks.get_mut(index) {
                Some(pipe) if pipe.description == description => {}
                Some(pipe) => {
                    self.retired_dropped += pipe.dropped_frames();
                    *pipe = TrackPipe::new(&self.context.stream, description);
                    changed = true;
                }
                None => self
                    .tracks
                    .push(TrackPipe::new(&self.context.stream, description)),
            }
        }
        if changed && self.file.is_some() {
            self.finish_file(now, "the publisher's tracks changed");
        }
    }

    fn on_rtp(&mut self, track: usize, packet: Packet, now: Instant) {
        let Some(pipe) = self.tracks.get_mut(track) else {
            return;
        };
        if pipe.assembler.is_none() {
            return;
        }
        let ssrc = packet.header.ssrc;
        let layer_report = pipe.reports.get(&ssrc).copied();
        if pipe.ssrc.is_some_and(|s| s != ssrc)
            && self.mode == Some(ClockMode::SenderReports)
            && let Some(report) = layer_report
        {
            // Known from its sender reports: another simulcast layer of the
            // same publisher, on the same wallclock. The file goes on.
            info!(stream = %self.context.stream, track, ssrc, "recording follows a simulcast layer switch");
            pipe.switch_layer(ssrc, report);
        } else if pipe.ssrc.is_some_and(|s| s != ssrc) {
            // A new publisher (or encoder restart): its clocks are new.
            let description = pipe.description.clone();
            self.retired_dropped += pipe.dropped_frames();
            *pipe = TrackPipe::new(&self.context.stream, description);
            if self.file.is_some() {
                match self.context.on_reconnect {
                    ReconnectMode::NewFile => self.finish_file(now, "the publisher's SSRC changed"),
                    ReconnectMode::Continue => self.begin_rebase(track, now),
                }
            }
        }
        let pipe = &mut self.tracks[track];
        pipe.ssrc = Some(ssrc);
        pipe.reorder.push(packet, now);
        self.drain_track(track, now);
    }

    fn on_timer(&mut self, now: Instant) {
        for track in 0..self.tracks.len() {
            self.drain_track(track, now);
        }
        if self.file.is_none() {
            self.try_open(now);
        }
        self.progress(now);
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
            let arrival = now.saturating_duration_since(self.epoch).as_nanos() as i64;
            for f in &frames {
                pipe.clock.note_arrival(f.timestamp, arrival);
            }
        }
        for frame in frames {
            self.on_frame(track, frame, now);
        }
    }

    /// `continue` mode: the file stays open across a publisher change. The
    /// new publisher's tracks are timed by arrival, shifted so that they
    /// carry on right after what was written last; tracks that change
    /// within a couple of seconds of each other share one shift, so they
    /// stay in sync with each other.
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
        info!(stream = %self.context.stream, track, "publisher changed: continuing the recording");
    }

    /// Anchors a rebasing track at its first frame.
    fn anchor(&mut self, track: usize, frame: &Frame) {
        if self.rebase.get(track).copied().flatten() != Some(Rebase::Waiting) {
            return;
        }
        let (Some(file), Some(arrival)) = (
            self.file.as_ref(),
            self.tracks[track].clock.arrival_time_ns(frame.timestamp),
        ) else {
            return;
        };
        let offset = *self
            .generation_offset
            .get_or_insert(file.origin_ns + file.last_ns + REBASE_GAP_NS - arrival);
        self.rebase[track] = Some(Rebase::Anchored(offset));
    }

    fn on_frame(&mut self, track: usize, frame: Frame, now: Instant) {
        if self.file.is_none() {
            self.first_frame_at.get_or_insert(now);
            if self.pending.len() >= PENDING_FRAMES {
                self.pending.remove(0);
            }
            self.pending.push((track, frame));
            self.try_open(now);
            return;
        }
        self.anchor(track, &frame);
        let Some(time) = self.time_of(track, &frame) else {
            return;
        };
        let Some(file) = self.file.as_ref() else {
            return;
        };
        if Some(track) != file.video_track && Some(track) != file.audio_track {
            return;
        }
        self.interleaver.push(track, time - file.origin_ns, frame);
        self.pump(now);
    }

    fn time_of(&self, track: usize, frame: &Frame) -> Option<i64> {
        let clock = &self.tracks.get(track)?.clock;
        if let Some(Rebase::Anchored(offset)) = self.rebase.get(track).copied().flatten() {
            return Some(clock.arrival_time_ns(frame.timestamp)? + offset);
        }
        match self.mode? {
            ClockMode::SenderReports => clock.sender_time_ns(frame.timestamp),
            ClockMode::Arrival => clock.arrival_time_ns(frame.timestamp),
        }
    }

    /// The tracks a file records: the first video and the first audio
    /// track that can be recorded.
    fn chosen_tracks(&self) -> (Option<usize>, Option<usize>) {
        let pick = |kind: MediaKind| {
            self.tracks
                .iter()
                .position(|t| t.kind() == kind && t.assembler.is_some())
        };
        (pick(MediaKind::Video), pick(MediaKind::Audio))
    }

    fn try_open(&mut self, now: Instant) {
        let Some(first) = self.first_frame_at else {
            return;
        };
        let waited = now.saturating_duration_since(first);
        let (video, audio) = self.chosen_tracks();
        let keyframe_at =
            video.and_then(|v| self.pending.iter().position(|(t, f)| *t == v && f.keyframe));
        let keyframe = keyframe_at.map(|i| self.pending[i].1.clone());
        let video_config = keyframe.as_ref().and_then(VideoConfig::from_keyframe);
        if let Some(index) = keyframe_at
            && video_config.is_none()
        {
            // Nothing before the next keyframe can be recorded without it.
            if !self.warned_config {
                warn!(stream = %self.context.stream, "a keyframe does not describe the picture (no SPS, or unreadable); waiting for another");
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
        let mode = if reports {
            ClockMode::SenderReports
        } else {
            warn!(stream = %self.context.stream, "no RTCP sender reports: timing the recording by arrival");
            ClockMode::Arrival
        };
        self.mode = Some(mode);
        let pending = std::mem::take(&mut self.pending);
        let timed: Vec<(usize, i64, Frame)> = pending
            .into_iter()
            .filter_map(|(t, f)| Some((t, self.time_of(t, &f)?, f)))
            .collect();
        let origin = match (&keyframe, video) {
            (Some(k), Some(v)) => self.time_of(v, k),
            _ => timed.iter().map(|(_, time, _)| *time).min(),
        };
        let Some(origin) = origin else {
            return;
        };
        if let Err(err) = self.open_file(video, audio, video_config.as_ref(), origin, now) {
            error!(stream = %self.context.stream, "cannot start recording: {err}");
            self.failed = true;
            return;
        }
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
            if time < origin || (Some(track) != video && Some(track) != audio) {
                continue;
            }
            self.interleaver.push(track, time - origin, frame);
        }
        self.pump(now);
    }

    fn open_file(
        &mut self,
        video: Option<usize>,
        audio: Option<usize>,
        video_config: Option<&VideoConfig>,
        origin_ns: i64,
        now: Instant,
    ) -> Result<(), String> {
        let video_codec: Option<Codec> = video.map(|v| self.tracks[v].description.codec);
        let container = self.context.format.container_for(video_codec);
        let started = SystemTime::now();
        let path = naming::new_file_path(
            &self.context.dir,
            self.context.stream.as_str(),
            started,
            container.extension(),
        );
        let audio_params = audio.map(|a| {
            let d = &self.tracks[a].description;
            AudioParams {
                channels: u32::from(d.channels.max(1)),
                sample_rate: d.clock_rate,
            }
        });
        let writer = Writer::create(container, &path, video_config, audio_params)
            .map_err(|e| e.to_string())?;
        let new = NewRecording {
            stream: self.context.stream.to_string(),
            container,
            path: path.clone(),
            started_at_ms: naming::unix_ms(started),
            video_codec: video_codec.map(|c| c.to_string()),
            audio_codec: audio.map(|a| self.tracks[a].description.codec.to_string()),
            width: video_config.map(|v| v.width),
            height: video_config.map(|v| v.height),
        };
        let id = {
            let catalog = self
                .context
                .catalog
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            catalog.insert(&new).map_err(|e| e.to_string())?
        };
        info!(stream = %self.context.stream, id, file = %path.display(), container = container.as_str(), mode = ?self.mode, "recording started");
        self.file = Some(OpenFile {
            id,
            path,
            container,
            writer,
            origin_ns,
            last_ns: 0,
            track_last_ns: vec![None; self.tracks.len()],
            video_track: video,
            audio_track: audio,
            video_size: video_config.map(|v| (v.width, v.height)),
            dropped_at_open: self.dropped_total(),
            last_progress: now,
        });
        Ok(())
    }

    fn dropped_total(&self) -> u64 {
        self.retired_dropped
            + self
                .tracks
                .iter()
                .map(TrackPipe::dropped_frames)
                .sum::<u64>()
            + self.queue_dropped
    }

    /// Writes what the interleaver releases.
    fn pump(&mut self, now: Instant) {
        while let Some((track, time, frame)) = self.interleaver.pop() {
            self.write(track, time, frame, now);
            if self.failed || self.file.is_none() {
                return;
            }
        }
    }

    fn write(&mut self, track: usize, time: i64, frame: Frame, now: Instant) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let is_video = Some(track) == file.video_track;
        let boundary = is_video && frame.keyframe || file.video_track.is_none();
        let mut time = time;
        if boundary
            && self.segment_due(time)
            && let Some(shift) = self.rotate(track, time, &frame, now)
        {
            time -= shift;
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        // Containers want time to move forward: never before the latest
        // frame written (a sender-report update can move a track's mapping
        // back by a few milliseconds), and each track's frames at least
        // 1 ms apart (WebM's timescale).
        let track_floor = file
            .track_last_ns
            .get(track)
            .copied()
            .flatten()
            .map_or(0, |t| t + 1_000_000);
        let time = time.max(file.last_ns).max(track_floor).max(0);
        if let Err(err) = file.writer.write(&frame, time as u64) {
            self.fail(&err.to_string(), now);
            return;
        }
        file.last_ns = time;
        if let Some(slot) = file.track_last_ns.get_mut(track) {
            *slot = Some(time);
        }
        if is_video
            && frame.keyframe
            && let Some(config) = VideoConfig::from_keyframe(&frame)
            && file.video_size != Some((config.width, config.height))
        {
            info!(stream = %self.context.stream, width = config.width, height = config.height, "resolution changed");
            file.video_size = Some((config.width, config.height));
        }
        if now.saturating_duration_since(file.last_progress) >= PROGRESS_EVERY {
            self.progress(now);
        }
    }

    fn segment_due(&self, time: i64) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let by_time = self
            .context
            .segment
            .is_some_and(|s| time >= s.as_nanos() as i64);
        let by_size = self
            .context
            .segment_bytes
            .is_some_and(|limit| file_size(&file.path) >= limit);
        by_time || by_size
    }

    /// Ends the current segment and opens the next at `time` (a keyframe,
    /// or any audio frame of an audio-only stream); returns how far the
    /// new file's time zero moved.
    fn rotate(&mut self, track: usize, time: i64, frame: &Frame, now: Instant) -> Option<i64> {
        let file = self.file.as_ref()?;
        let (video, audio, origin) = (file.video_track, file.audio_track, file.origin_ns);
        let config = if Some(track) == video {
            VideoConfig::from_keyframe(frame)
        } else {
            None
        };
        if video.is_some() && config.is_none() {
            return None; // keep writing into this file until a usable keyframe
        }
        // Frames still queued belong to the next segment too.
        let queued = self.interleaver.drain();
        let mode = self.mode;
        self.close_file(now, RecordingState::Complete, None, "segment complete");
        self.mode = mode;
        if let Err(err) = self.open_file(video, audio, config.as_ref(), origin + time, now) {
            error!(stream = %self.context.stream, "cannot start the next segment: {err}");
            self.failed = true;
            return None;
        }
        for (t, queued_time, f) in queued {
            self.interleaver.push(t, queued_time - time, f);
        }
        Some(time)
    }

    fn progress(&mut self, now: Instant) {
        let dropped = self.dropped_total();
        let Some(file) = self.file.as_mut() else {
            return;
        };
        file.last_progress = now;
        let size = file_size(&file.path);
        let catalog = self
            .context
            .catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Err(err) = catalog.progress(
            file.id,
            size,
            (file.last_ns / 1_000_000) as u64,
            dropped.saturating_sub(file.dropped_at_open),
        ) {
            warn!("catalog update failed: {err}");
        }
    }

    fn fail(&mut self, why: &str, now: Instant) {
        error!(stream = %self.context.stream, "recording failed: {why}");
        self.close_file(
            now,
            RecordingState::Failed,
            Some(why.to_owned()),
            "write failed",
        );
        self.failed = true;
    }

    /// Flushes everything buffered into the file and closes it (the
    /// session goes back to waiting for a keyframe).
    fn finish_file(&mut self, now: Instant, why: &str) {
        if self.file.is_some() && !self.failed {
            for track in 0..self.tracks.len() {
                self.drain_track(track, now + REORDER_WAIT);
            }
            for (track, time, frame) in self.interleaver.drain() {
                self.write(track, time, frame, now);
                if self.failed {
                    return;
                }
            }
        }
        self.close_file(now, RecordingState::Complete, None, why);
    }

    fn close_file(
        &mut self,
        now: Instant,
        state: RecordingState,
        error: Option<String>,
        why: &str,
    ) {
        let dropped = self.dropped_total();
        self.mode = None;
        self.pending.clear();
        self.first_frame_at = None;
        self.rebase.clear();
        self.generation_offset = None;
        let Some(file) = self.file.take() else {
            return;
        };
        let (state, error) = match (file.writer.finish(), state) {
            (Ok(()), state) => (state, error),
            (Err(err), RecordingState::Complete) => {
                error!(stream = %self.context.stream, "finishing the recording failed: {err}");
                (RecordingState::Failed, Some(err.to_string()))
            }
            (Err(_), state) => (state, error),
        };
        let mut duration_ms = (file.last_ns / 1_000_000).max(0) as u64;
        if state == RecordingState::Failed {
            // A write failed mid-fragment or mid-cluster: cut the torn end
            // off, so what was written before the failure still plays.
            let repaired = match file.container {
                Container::Mp4 => recorder::mp4::recover(&file.path)
                    .map(|s| s.duration)
                    .map_err(|e| e.to_string()),
                Container::Webm => recorder::webm::recover(&file.path)
                    .map(|s| s.duration)
                    .map_err(|e| e.to_string()),
            };
            match repaired {
                Ok(duration) => duration_ms = duration.as_millis() as u64,
                Err(err) => {
                    warn!(stream = %self.context.stream, "cannot repair the failed recording: {err}")
                }
            }
        } else if file.container == Container::Mp4 && self.context.faststart {
            make_faststart(&self.context.stream, &file.path);
        }
        let size = file_size(&file.path);
        let dropped_frames = dropped.saturating_sub(file.dropped_at_open);
        let finished = Finished {
            state,
            ended_at_ms: naming::unix_ms(SystemTime::now()),
            duration_ms,
            size_bytes: size,
            dropped_frames,
            error,
        };
        {
            let catalog = self
                .context
                .catalog
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Err(err) = catalog.finish(file.id, &finished) {
                warn!("catalog update failed: {err}");
            }
        }
        let _ = now;
        info!(
            stream = %self.context.stream,
            id = file.id,
            file = %file.path.display(),
            container = file.container.as_str(),
            state = state.as_str(),
            duration_ms,
            size,
            dropped_frames,
            "recording finished: {why}"
        );
    }
}

/// Rewrites a finished fragmented MP4 as a progressive one with its index
/// first, for editors and old players that handle fragments badly. Written
/// beside the file and renamed over it, so the recording is never without
/// a complete file; on failure the fragmented file stays.
fn make_faststart(stream: &StreamName, path: &std::path::Path) {
    let tmp = path.with_extension("faststart.tmp");
    let convert = || {
        recorder::mp4::faststart(path, &tmp).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    };
    // Rewriting a long recording takes a while: let the runtime move the
    // other recordings' tasks off this worker meanwhile.
    let result = tokio::task::block_in_place(convert);
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        warn!(stream = %stream, file = %path.display(), "faststart copy failed, keeping the fragmented file: {err}");
    }
}

fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
