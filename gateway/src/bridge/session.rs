//! One stream's bridge session, on its own thread: hub events in, frames
//! out to the stream's restream targets (and HLS).
//!
//! Stages, each run once per stream however many outputs use them:
//! 1. [`FramePipeline`]: RTP → timed frames in runs;
//! 2. the audio [`Transcoder`]: Opus → AAC (RTMP and HLS players want AAC);
//! 3. only while a target asks for it and a transcode slot is free, the
//!    video [`Transcoder`]: VP8/VP9/AV1 → H264, fed from stage 2 so audio
//!    is not transcoded twice.
//!
//! Targets are fed through their bounded inputs, which never wait: a slow
//! destination costs only itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use recorder::codec::Codec;
use recorder::pipeline::{FramePipeline, Output, Reconnect, RunEnd, RunStart};
use rtmp_bridge::hls::Muxer;
use rtmp_bridge::transcode::{H264Options, TranscodeOptions, Transcoder};
use tracing::{info, warn};

use super::targets::{TargetEntry, TargetId};
use super::{Bridge, TranscodeSlot};
use crate::hub::subscriber::{HubEvent, SubscriberReceiver};
use crate::stream_name::StreamName;

/// How often queued hub events are taken. Restreaming adds this much
/// latency at most, and saves a wake-up per packet.
const BATCH_INTERVAL: Duration = Duration::from_millis(50);

pub struct SessionContext {
    pub stream: StreamName,
    pub bridge: Bridge,
    pub stop: Arc<AtomicBool>,
    pub ended: Arc<AtomicBool>,
}

pub fn run(context: SessionContext, events: SubscriberReceiver) {
    let mut session = Session::new(&context);
    let mut batch = Vec::new();
    loop {
        let now = Instant::now();
        let wake = session
            .pipeline
            .next_deadline()
            .map_or(now + BATCH_INTERVAL, |d| d.min(now + BATCH_INTERVAL));
        std::thread::sleep(wake.saturating_duration_since(now));
        if context.stop.load(Ordering::Acquire) {
            break;
        }
        let mut ended = events.drain(&mut batch);
        let now = Instant::now();
        for event in batch.drain(..) {
            match event {
                HubEvent::EndOfStream => ended = true,
                event => session.on_event(event, now),
            }
        }
        // A stream that has ended takes no new outputs: they would only
        // see its last frames.
        if !ended {
            session.refresh_targets();
            session.refresh_hls();
        }
        session.pipeline.tick(now);
        session.drain_pipeline();
        session.report(now);
        if ended {
            context.ended.store(true, Ordering::Release);
            break;
        }
        if session.targets.is_empty() && !session.keep_alive() {
            info!(stream = %context.stream, "bridge session has no outputs left");
            break;
        }
    }
    session.pipeline.finish(Instant::now());
    session.drain_pipeline();
    session.end_run(RunEnd::Finished);
    session.stop_hls();
    context.bridge.set_transcode_figures(&context.stream, None);
    info!(stream = %context.stream, "bridge session ended");
    context
        .bridge
        .session_exited(&context.stream, &context.stop);
}

/// The video transcoder of a run, with the slot it holds.
struct VideoStage {
    transcoder: Transcoder,
    _slot: TranscodeSlot,
}

struct Session {
    stream: StreamName,
    bridge: Bridge,
    pipeline: FramePipeline,
    audio: Transcoder,
    video: Option<VideoStage>,
    /// The run in progress after the audio stage, and after the video
    /// stage: what a target joining mid-run is sent first.
    run: Option<RunStart>,
    transcoded_run: Option<RunStart>,
    targets: Vec<TargetEntry>,
    hls: Option<Muxer>,
    /// HLS takes the video stage's output (VP8 made H264) in this run.
    hls_transcoded: bool,
    /// The latest frame time of the run, to place a muxer that starts
    /// mid-run on the wall clock.
    run_time_ns: i64,
    /// The publisher's wall clock at the run's time zero (from sender
    /// reports), for HLS's `EXT-X-PROGRAM-DATE-TIME`: capture time, not
    /// the later time the frames reached us.
    run_origin: Option<SystemTime>,
    /// Targets that have been sent the current run's start.
    fed: HashSet<TargetId>,
    /// The run as published, and the Enhanced RTMP targets sent its start:
    /// they take the stream as it is (Opus, H265/AV1/VP9).
    original_run: Option<RunStart>,
    fed_original: HashSet<TargetId>,
    /// Video transcoding time of the stages that have ended.
    video_cpu_done: Duration,
    video_frames_done: u64,
    last_report: Option<Instant>,
    scratch: Vec<Output>,
    scratch2: Vec<Output>,
}

impl Session {
    fn new(context: &SessionContext) -> Self {
        let config = &context.bridge.inner.config;
        let mut session = Self {
            stream: context.stream.clone(),
            bridge: context.bridge.clone(),
            pipeline: FramePipeline::new(
                context.stream.to_string(),
                Reconnect::NewRun,
                Instant::now(),
            ),
            audio: Transcoder::new(TranscodeOptions {
                aac_bitrate: config.aac_bitrate_kbps * 1000,
                video: None,
            }),
            video: None,
            run: None,
            transcoded_run: None,
            targets: Vec::new(),
            hls: None,
            hls_transcoded: false,
            run_time_ns: 0,
            run_origin: None,
            fed: HashSet::new(),
            original_run: None,
            fed_original: HashSet::new(),
            video_cpu_done: Duration::ZERO,
            video_frames_done: 0,
            last_report: None,
            scratch: Vec::new(),
            scratch2: Vec::new(),
        };
        session.refresh_targets();
        session
    }

    /// Publishes the transcoders' figures for the API, once a second.
    fn report(&mut self, now: Instant) {
        if self
            .last_report
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.last_report = Some(now);
        let (video_cpu, video_frames) = match &self.video {
            Some(stage) => (
                stage.transcoder.cpu_time(),
                stage.transcoder.stats().h264_frames_out,
            ),
            None => (Duration::ZERO, 0),
        };
        let figures = super::TranscodeFigures {
            audio_cpu_s: self.audio.cpu_time().as_secs_f64(),
            video_cpu_s: (self.video_cpu_done + video_cpu).as_secs_f64(),
            aac_frames_out: self.audio.stats().aac_frames_out,
            h264_frames_out: self.video_frames_done + video_frames,
            video_active: self.video.is_some(),
        };
        self.bridge
            .set_transcode_figures(&self.stream, Some(figures));
    }

    /// Keeps an ending video stage's figures in the totals.
    fn retire_video_stage(&mut self) {
        if let Some(stage) = self.video.take() {
            self.video_cpu_done += stage.transcoder.cpu_time();
            self.video_frames_done += stage.transcoder.stats().h264_frames_out;
        }
    }

    /// Whether the session should run on without targets (HLS).
    fn keep_alive(&self) -> bool {
        self.hls.is_some() || self.bridge.hls_wanted(&self.stream)
    }

    /// Starts the HLS muxer when someone wants it, stops it when nobody
    /// has asked for a while.
    fn refresh_hls(&mut self) {
        let wanted = self.bridge.hls_wanted(&self.stream);
        if !wanted {
            if self.hls.is_some() {
                info!(stream = %self.stream, "HLS stopped: no requests lately");
                self.stop_hls();
            }
            return;
        }
        if self.hls.is_some() {
            return;
        }
        let mut muxer = match Muxer::new(self.bridge.hls_config()) {
            Ok(muxer) => muxer,
            Err(err) => {
                warn!(stream = %self.stream, "HLS cannot start: {err}");
                return;
            }
        };
        // VP8 has no HLS mapping: with `hls_transcode`, HLS takes the
        // video stage's H264 (started now if no target needed it).
        if let Some(run) = self.run.clone()
            && self.hls_needs_transcode(&run)
            && self.video.is_none()
        {
            self.start_video_stage(true);
        }
        self.hls_transcoded = self.video.is_some()
            && self
                .run
                .as_ref()
                .is_some_and(|run| self.hls_needs_transcode(run));
        let start = if self.hls_transcoded {
            self.transcoded_run.as_ref()
        } else {
            self.run.as_ref()
        };
        if let Some(start) = start {
            // Joining mid-run: the run's time zero lies that far back.
            let elapsed = Duration::from_nanos(u64::try_from(self.run_time_ns).unwrap_or(0));
            muxer.push(Output::Start(start.clone()));
            muxer.set_wall_clock_anchor(self.run_origin.unwrap_or(SystemTime::now() - elapsed));
        }
        info!(stream = %self.stream, "HLS started");
        self.bridge.set_hls_store(&self.stream, Some(muxer.store()));
        self.hls = Some(muxer);
    }

    fn stop_hls(&mut self) {
        if let Some(muxer) = self.hls.take() {
            muxer.store().close();
            self.bridge.set_hls_store(&self.stream, None);
        }
    }

    fn on_event(&mut self, event: HubEvent, now: Instant) {
        event.feed(&mut self.pipeline, now);
        // Keep the pipeline's buffers short between batches.
        self.drain_pipeline();
    }

    /// Picks up targets added or removed since the last batch; a new one
    /// is sent the run in progress so it can join at the next keyframe.
    fn refresh_targets(&mut self) {
        self.bridge
            .targets()
            .for_stream(&self.stream, &mut self.targets);
        let current: HashSet<TargetId> = self.targets.iter().map(|t| t.id).collect();
        self.fed.retain(|id| current.contains(id));
        self.fed_original.retain(|id| current.contains(id));
        if self.video.is_none()
            && let Some(run) = &self.run
            && self.needs_video_transcode(run)
        {
            self.start_video_stage(true);
        }
        for target in &self.targets {
            if target.enhanced {
                if !self.fed_original.contains(&target.id)
                    && let Some(start) = &self.original_run
                {
                    target.input.push(Output::Start(start.clone()));
                    self.fed_original.insert(target.id);
                }
                continue;
            }
            if self.fed.contains(&target.id) {
                continue;
            }
            let start = if target.transcode && self.video.is_some() {
                self.transcoded_run.as_ref()
            } else {
                self.run.as_ref()
            };
            if let Some(start) = start {
                target.input.push(Output::Start(start.clone()));
                self.fed.insert(target.id);
            }
        }
    }

    fn needs_video_transcode(&self, run: &RunStart) -> bool {
        (matches!(
            run.video,
            Some((_, Codec::Vp8 | Codec::Vp9 | Codec::Av1, _))
        ) && self.targets.iter().any(|t| t.transcode && !t.enhanced))
            || self.hls_needs_transcode(run)
    }

    /// HLS is wanted, the video is VP8 and `hls_transcode` is on.
    fn hls_needs_transcode(&self, run: &RunStart) -> bool {
        matches!(run.video, Some((_, Codec::Vp8, _)))
            && self.bridge.hls_transcode()
            && self.bridge.hls_wanted(&self.stream)
    }

    /// Starts the video transcoder; `mid_run`: the run is under way, so
    /// the transcoder is given its start now.
    fn start_video_stage(&mut self, mid_run: bool) {
        let Some(slot) = self.bridge.acquire_transcode() else {
            warn!(
                stream = %self.stream,
                max = self.bridge.inner.config.transcode_max,
                "video transcode limit reached: transcode targets get the original video"
            );
            return;
        };
        let config = &self.bridge.inner.config;
        let mut transcoder = Transcoder::new(TranscodeOptions {
            aac_bitrate: config.aac_bitrate_kbps * 1000,
            video: Some(H264Options {
                bitrate: config.transcode_bitrate_kbps * 1000,
                keyframe_interval: Duration::from_secs(2),
            }),
        });
        info!(stream = %self.stream, "video transcode to H264 started");
        // The transcoder learns the run from its start; the run's frames
        // come next, so it begins at the next keyframe.
        self.scratch2.clear();
        if mid_run && let Some(run) = &self.run {
            transcoder.push(Output::Start(run.clone()), &mut self.scratch2);
        }
        self.video = Some(VideoStage {
            transcoder,
            _slot: slot,
        });
        // Transcode targets fed the original run so far get the new one.
        let transcode_ids: Vec<TargetId> = self
            .targets
            .iter()
            .filter(|t| t.transcode)
            .map(|t| t.id)
            .collect();
        self.fed.retain(|id| !transcode_ids.contains(id));
        if mid_run {
            self.route_transcoded();
        }
    }

    fn drain_pipeline(&mut self) {
        while let Some(output) = self.pipeline.pop() {
            if matches!(output, Output::Start(_)) {
                self.run_origin = plausible(self.pipeline.run_origin_wall_clock());
            }
            self.dispatch(output);
        }
    }

    fn dispatch(&mut self, output: Output) {
        self.route_original(&output);
        let mut audio_out = std::mem::take(&mut self.scratch);
        audio_out.clear();
        self.audio.push(output, &mut audio_out);
        for output in audio_out.drain(..) {
            self.route(output);
        }
        self.scratch = audio_out;
    }

    /// Sends the stream as published to the Enhanced RTMP targets.
    fn route_original(&mut self, output: &Output) {
        let starting = match output {
            Output::Start(start) => {
                self.original_run = Some(start.clone());
                self.fed_original.clear();
                true
            }
            Output::End(_) => {
                self.original_run = None;
                false
            }
            Output::Frame { .. } => false,
        };
        for target in self.targets.iter().filter(|t| t.enhanced) {
            if starting {
                self.fed_original.insert(target.id);
            } else if !self.fed_original.contains(&target.id) {
                continue;
            }
            target.input.push(output.clone());
        }
    }

    /// Sends one output of the audio stage to the plain targets, and on
    /// through the video stage to the transcode targets.
    fn route(&mut self, output: Output) {
        let starting = matches!(output, Output::Start(_));
        let ending = matches!(output, Output::End(_));
        match &output {
            Output::Start(start) => {
                self.run = Some(start.clone());
                self.transcoded_run = None;
                self.run_time_ns = 0;
                self.fed.clear();
                if self.video.is_none() && self.needs_video_transcode(start) {
                    self.start_video_stage(false);
                }
                self.hls_transcoded = self.video.is_some() && self.hls_needs_transcode(start);
            }
            Output::Frame { time_ns, .. } => self.run_time_ns = self.run_time_ns.max(*time_ns),
            Output::End(_) => {}
        }
        if !self.hls_transcoded
            && let Some(muxer) = &mut self.hls
        {
            if starting && let Some(origin) = self.run_origin {
                muxer.set_wall_clock_anchor(origin);
            }
            muxer.push(output.clone());
        }
        let transcoding = self.video.is_some();
        for target in &self.targets {
            if target.enhanced || (target.transcode && transcoding) {
                continue;
            }
            if starting {
                self.fed.insert(target.id);
            } else if !self.fed.contains(&target.id) {
                continue;
            }
            target.input.push(output.clone());
        }
        if let Some(stage) = &mut self.video {
            self.scratch2.clear();
            stage.transcoder.push(output, &mut self.scratch2);
            self.route_transcoded();
        }
        if ending {
            self.run = None;
            // A new run may not need a transcode; its start decides.
            self.retire_video_stage();
        }
    }

    /// Sends what the video stage produced to the transcode targets.
    fn route_transcoded(&mut self) {
        let outputs = std::mem::take(&mut self.scratch2);
        for output in &outputs {
            let starting = match output {
                Output::Start(start) => {
                    self.transcoded_run = Some(start.clone());
                    true
                }
                Output::End(_) => {
                    self.transcoded_run = None;
                    false
                }
                Output::Frame { .. } => false,
            };
            if self.hls_transcoded
                && let Some(muxer) = &mut self.hls
            {
                if starting && let Some(origin) = self.run_origin {
                    muxer.set_wall_clock_anchor(origin);
                }
                muxer.push(output.clone());
            }
            for target in self.targets.iter().filter(|t| t.transcode && !t.enhanced) {
                if starting {
                    self.fed.insert(target.id);
                } else if !self.fed.contains(&target.id) {
                    continue;
                }
                target.input.push(output.clone());
            }
        }
        self.scratch2 = outputs;
        self.scratch2.clear();
    }

    /// Ends the run for every target (the stream ended or the session
    /// stops).
    fn end_run(&mut self, why: RunEnd) {
        if self.run.is_some() {
            self.dispatch(Output::End(why));
        }
    }
}

/// A publisher's wall clock we can put in playlists: within ten seconds of
/// ours (a publisher with a wrong clock gets arrival times instead).
fn plausible(origin: Option<SystemTime>) -> Option<SystemTime> {
    let origin = origin?;
    let now = SystemTime::now();
    let skew = match now.duration_since(origin) {
        Ok(behind) => behind,
        Err(ahead) => ahead.duration(),
    };
    // The run began at most a few seconds ago (its first keyframe).
    (skew < Duration::from_secs(10)).then_some(origin)
}
