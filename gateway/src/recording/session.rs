//! One stream's recording: hub events in, files out.
//!
//! The hub's events feed a [`FramePipeline`] (reordering, depacketizing,
//! A/V timing, interleaving); each of its runs becomes a file, opened at the
//! run's first keyframe. Within a run, a new file starts at a segment
//! boundary (duration or size), always at a keyframe. A failed write closes
//! the file as `failed` and ends this recording only.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use recorder::catalog::{Catalog, Container, Finished, NewRecording, RecordingState};
use recorder::codec::Codec;
use recorder::params::{AudioParams, VideoConfig};
use recorder::pipeline::{FramePipeline, Output, Reconnect, RunStart};
use recorder::rtp::Frame;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::naming;
use super::policy::{ReconnectMode, RecordFormat};
use super::writer::Writer;
use crate::hub::subscriber::{HubEvent, SubscriberReceiver};
use crate::stream_name::StreamName;

/// How often queued hub events are taken: a wake-up per packet would cost
/// more than the recording itself (see BENCHMARKS.md).
const BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How often the catalog row's size and duration are brought up to date.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

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
        let wake = session
            .pipeline
            .next_deadline()
            .map_or(now + BATCH_INTERVAL, |d| d.min(now + BATCH_INTERVAL))
            .max(now);
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
        session.queue_dropped = events.dropped();
        session.pipeline.tick(now);
        session.drain_pipeline(now);
        session.progress_due(now);
        if ended || session.failed {
            break;
        }
    }
    let now = Instant::now();
    if !session.failed {
        session.pipeline.finish(now);
        session.drain_pipeline(now);
    }
    session.close_file(now, RecordingState::Complete, None, "stream ended");
}

/// The file being written.
struct OpenFile {
    id: i64,
    path: PathBuf,
    container: Container,
    writer: Writer,
    /// The run time (ns) of the file's time zero.
    offset_ns: i64,
    /// Latest time written, relative to the file's start.
    last_ns: i64,
    /// Latest time written per track.
    track_last_ns: Vec<Option<i64>>,
    video_size: Option<(u32, u32)>,
    dropped_at_open: u64,
    last_progress: Instant,
}

struct Session {
    context: SessionContext,
    pipeline: FramePipeline,
    /// The tracks of the run in progress.
    run: Option<RunStart>,
    file: Option<OpenFile>,
    /// Packets the hub dropped because this session fell behind.
    queue_dropped: u64,
    failed: bool,
}

impl Session {
    fn new(context: SessionContext, now: Instant) -> Self {
        let reconnect = match context.on_reconnect {
            ReconnectMode::NewFile => Reconnect::NewRun,
            ReconnectMode::Continue => Reconnect::Continue,
        };
        Self {
            pipeline: FramePipeline::new(context.stream.to_string(), reconnect, now),
            context,
            run: None,
            file: None,
            queue_dropped: 0,
            failed: false,
        }
    }

    fn on_event(&mut self, event: HubEvent, now: Instant) {
        event.feed(&mut self.pipeline, now);
        self.drain_pipeline(now);
    }

    fn drain_pipeline(&mut self, now: Instant) {
        while !self.failed
            && let Some(output) = self.pipeline.pop()
        {
            match output {
                Output::Start(start) => {
                    self.close_file(now, RecordingState::Complete, None, "a new run started");
                    let video = start.video.as_ref().map(|(_, _, c)| c.clone());
                    let audio = start.audio.as_ref().map(|(_, _, a)| *a);
                    self.run = Some(start);
                    if let Err(err) = self.open_file(video.as_ref(), audio, 0, now) {
                        error!(stream = %self.context.stream, "cannot start recording: {err}");
                        self.failed = true;
                    }
                }
                Output::Frame {
                    track,
                    time_ns,
                    frame,
                } => self.write(track, time_ns, frame, now),
                Output::End(why) => {
                    self.close_file(now, RecordingState::Complete, None, why.describe());
                    self.run = None;
                }
            }
        }
    }

    fn dropped_total(&self) -> u64 {
        self.pipeline.dropped_frames() + self.queue_dropped
    }

    fn open_file(
        &mut self,
        video_config: Option<&VideoConfig>,
        audio: Option<AudioParams>,
        offset_ns: i64,
        now: Instant,
    ) -> Result<(), String> {
        let run = self.run.as_ref().ok_or("no run")?;
        let video_codec = run.video.as_ref().map(|(_, codec, _)| *codec);
        let audio_codec = run.audio.as_ref().map(|(_, codec, _)| *codec);
        let timing = run.timing;
        // WebM has no AAC: an RTMP or RTSP source's AAC goes to MP4 whatever
        // the video.
        let container = if audio_codec == Some(Codec::Aac) {
            Container::Mp4
        } else {
            self.context.format.container_for(video_codec)
        };
        let started = SystemTime::now();
        let path = naming::new_file_path(
            &self.context.dir,
            self.context.stream.as_str(),
            started,
            container.extension(),
        );
        let writer = Writer::create(container, &path, video_config, audio_codec.zip(audio))
            .map_err(|e| e.to_string())?;
        let new = NewRecording {
            stream: self.context.stream.to_string(),
            container,
            path: path.clone(),
            started_at_ms: naming::unix_ms(started),
            video_codec: video_codec.map(|c| c.to_string()),
            audio_codec: audio_codec.map(|c| c.to_string()),
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
        info!(stream = %self.context.stream, id, file = %path.display(), container = container.as_str(), mode = ?timing, "recording started");
        let tracks = [
            run.video.as_ref().map(|v| v.0),
            run.audio.as_ref().map(|a| a.0),
        ]
        .into_iter()
        .flatten()
        .max()
        .map_or(0, |t| t + 1);
        self.file = Some(OpenFile {
            id,
            path,
            container,
            writer,
            offset_ns,
            last_ns: 0,
            track_last_ns: vec![None; tracks],
            video_size: video_config.map(|v| (v.width, v.height)),
            dropped_at_open: self.dropped_total(),
            last_progress: now,
        });
        Ok(())
    }

    fn write(&mut self, track: usize, time_ns: i64, frame: Frame, now: Instant) {
        let Some(run) = self.run.as_ref() else {
            return;
        };
        let video_track = run.video.as_ref().map(|v| v.0);
        let is_video = Some(track) == video_track;
        let boundary = is_video && frame.keyframe || video_track.is_none();
        if boundary && self.segment_due(time_ns) {
            self.rotate(is_video, time_ns, &frame, now);
            if self.failed {
                return;
            }
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
        let time = (time_ns - file.offset_ns)
            .max(file.last_ns)
            .max(track_floor)
            .max(0);
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
    }

    fn segment_due(&self, time_ns: i64) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let by_time = self
            .context
            .segment
            .is_some_and(|s| time_ns - file.offset_ns >= s.as_nanos() as i64);
        let by_size = self
            .context
            .segment_bytes
            .is_some_and(|limit| file_size(&file.path) >= limit);
        by_time || by_size
    }

    /// Ends the current segment and opens the next at `time_ns` (a
    /// keyframe, or any frame of an audio-only stream).
    fn rotate(&mut self, is_video: bool, time_ns: i64, frame: &Frame, now: Instant) {
        let config = if is_video {
            VideoConfig::from_keyframe(frame)
        } else {
            None
        };
        let has_video = self.run.as_ref().is_some_and(|r| r.video.is_some());
        if has_video && config.is_none() {
            return; // keep writing into this file until a usable keyframe
        }
        let audio = self
            .run
            .as_ref()
            .and_then(|r| r.audio.as_ref().map(|(_, _, a)| *a));
        self.close_file(now, RecordingState::Complete, None, "segment complete");
        if let Err(err) = self.open_file(config.as_ref(), audio, time_ns, now) {
            error!(stream = %self.context.stream, "cannot start the next segment: {err}");
            self.failed = true;
        }
    }

    fn progress_due(&mut self, now: Instant) {
        if self
            .file
            .as_ref()
            .is_some_and(|f| now.saturating_duration_since(f.last_progress) >= PROGRESS_EVERY)
        {
            self.progress(now);
        }
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

    fn close_file(
        &mut self,
        _now: Instant,
        state: RecordingState,
        error: Option<String>,
        why: &str,
    ) {
        let dropped = self.dropped_total();
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
