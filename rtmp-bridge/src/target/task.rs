//! The target's task: wait for a run, check it can be sent, connect, send,
//! and on failure retry with backoff until the run ends.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use recorder::codec::Codec;
use recorder::params::{AudioParams, VideoConfig};
use recorder::pipeline::{Output, RunStart};
use recorder::rtp::Frame;
use tokio::sync::watch;

use super::backoff::{Backoff, HEALTHY_AFTER};
use super::queue::Item;
use super::{Shared, TargetConfig, TargetState};
use crate::flv::{self, AvcTagger, CodecId, ExVideoTagger, FourCc, Metadata};
use crate::rtmp::{PublishError, RtmpPublisher, SessionConfig};

/// How a run (or the task) ended.
enum Outcome {
    /// `Output::End`: go idle.
    Ended,
    /// A new run started before the old one ended.
    Next(RunStart),
    /// `stop()` or the input was dropped: end the task.
    Finished,
}

/// What of a run this target sends.
#[derive(Debug)]
struct Plan {
    video: Option<VideoPlan>,
    audio: Option<AudioPlan>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct VideoPlan {
    track: usize,
    config: VideoConfig,
    /// `Some`: sent as E-RTMP under this FourCC; `None`: legacy AVC.
    fourcc: Option<FourCc>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum AudioPlan {
    /// Legacy FLV AAC, described by its AudioSpecificConfig.
    Aac {
        track: usize,
        asc: [u8; 2],
        sample_rate: u32,
        channels: u8,
    },
    /// E-RTMP Opus, the packets passed through as they came.
    Opus { track: usize, params: AudioParams },
}

impl AudioPlan {
    fn track(&self) -> usize {
        match *self {
            AudioPlan::Aac { track, .. } | AudioPlan::Opus { track, .. } => track,
        }
    }

    fn codec_id(&self) -> CodecId {
        match self {
            AudioPlan::Aac { .. } => CodecId::Flv(flv::AUDIO_CODEC_AAC),
            AudioPlan::Opus { .. } => CodecId::FourCc(FourCc::OPUS),
        }
    }

    /// Sample rate and channel count for `onMetaData`.
    fn format(&self) -> (u32, u8) {
        match *self {
            AudioPlan::Aac {
                sample_rate,
                channels,
                ..
            } => (sample_rate, channels),
            AudioPlan::Opus { params, .. } => (
                params.sample_rate,
                u8::try_from(params.channels).unwrap_or(u8::MAX),
            ),
        }
    }

    /// The sequence header that precedes the first audio frame.
    fn sequence_header(&self) -> Bytes {
        match self {
            AudioPlan::Aac { asc, .. } => flv::aac_sequence_header(asc),
            AudioPlan::Opus { params, .. } => {
                flv::ex_audio_sequence_start(FourCc::OPUS, &params.opus_head())
            }
        }
    }

    fn frame(&self, data: &[u8]) -> Bytes {
        match self {
            AudioPlan::Aac { .. } => flv::aac_raw_frame(data),
            AudioPlan::Opus { .. } => flv::ex_audio_coded_frames(FourCc::OPUS, data),
        }
    }
}

/// Decides what of `run` can go to this destination, or why nothing
/// can: a plain RTMP server takes H264 and AAC; with `enhanced` (the
/// destination reads E-RTMP) also H265, AV1, VP9 and Opus, unchanged.
fn plan(run: &RunStart, enhanced: bool) -> Result<Plan, String> {
    let mut notes = Vec::new();
    let video = match &run.video {
        Some((track, Codec::H264, config)) => Some(VideoPlan {
            track: *track,
            config: config.clone(),
            fourcc: None,
        }),
        Some((track, codec, config)) => match FourCc::enhanced_video(*codec) {
            Some(fourcc) if enhanced => Some(VideoPlan {
                track: *track,
                config: config.clone(),
                fourcc: Some(fourcc),
            }),
            Some(_) => {
                return Err(format!(
                    "{codec} video cannot be sent to a plain RTMP server; enable transcode \
                     (`transcode = true`) for this target, or `enhanced = true` if the \
                     destination accepts Enhanced RTMP"
                ));
            }
            None if enhanced => {
                return Err(format!(
                    "{codec} video cannot be sent over RTMP, Enhanced RTMP included; \
                     enable transcode (`transcode = true`) for this target"
                ));
            }
            None => {
                return Err(format!(
                    "{codec} video cannot be sent to a plain RTMP server; \
                     enable transcode (`transcode = true`) for this target"
                ));
            }
        },
        None => None,
    };
    let audio = match &run.audio {
        Some((track, Codec::Aac, params)) => {
            let channels = u8::try_from(params.channels).unwrap_or(u8::MAX);
            match flv::aac_lc_audio_specific_config(params.sample_rate, channels) {
                Some(asc) => Some(AudioPlan::Aac {
                    track: *track,
                    asc,
                    sample_rate: params.sample_rate,
                    channels,
                }),
                None => {
                    notes.push(format!(
                        "AAC at {} Hz with {} channels cannot be described to RTMP: audio left out",
                        params.sample_rate, params.channels
                    ));
                    None
                }
            }
        }
        Some((track, Codec::Opus, params)) if enhanced => Some(AudioPlan::Opus {
            track: *track,
            params: *params,
        }),
        Some((_, Codec::Opus, _)) => {
            notes.push(
                "Opus audio cannot be sent to a plain RTMP server (it needs AAC, or \
                 `enhanced = true` for a destination that accepts Enhanced RTMP): video only"
                    .to_owned(),
            );
            None
        }
        Some((_, codec, _)) => {
            notes.push(format!(
                "{codec} audio cannot be sent over RTMP: video only"
            ));
            None
        }
        None => None,
    };
    if video.is_none() && audio.is_none() {
        return Err(if enhanced {
            "the stream has nothing Enhanced RTMP can carry \
             (no H264, H265, AV1 or VP9 video, no AAC or Opus audio)"
                .into()
        } else {
            "the stream has nothing RTMP can carry (no H264 video or AAC audio)".into()
        });
    }
    Ok(Plan {
        video,
        audio,
        notes,
    })
}

/// One connection's video bodies: legacy AVC or E-RTMP.
enum VideoTagger {
    Avc(AvcTagger),
    Ex(ExVideoTagger),
    /// No video in this run.
    Without,
}

impl VideoTagger {
    fn new(plan: &Plan) -> Self {
        match &plan.video {
            Some(VideoPlan {
                fourcc: Some(_),
                config,
                ..
            }) => ExVideoTagger::new(config.codec).map_or(VideoTagger::Without, VideoTagger::Ex),
            Some(_) => VideoTagger::Avc(AvcTagger::new()),
            None => VideoTagger::Without,
        }
    }

    /// The frame's sequence header (if one is due) and body.
    fn push(&mut self, frame: &Frame) -> (Option<Bytes>, Option<Bytes>) {
        match self {
            VideoTagger::Avc(tagger) => {
                let tags = tagger.push(frame);
                (tags.sequence_header, tags.nalu)
            }
            VideoTagger::Ex(tagger) => {
                let tags = tagger.push(frame);
                (tags.sequence_start, tags.coded)
            }
            VideoTagger::Without => (None, None),
        }
    }

    /// Whether a sequence header went out on this connection (frames
    /// can be decoded from here).
    fn started(&self) -> bool {
        match self {
            VideoTagger::Avc(tagger) => tagger.config().is_some(),
            VideoTagger::Ex(tagger) => tagger.config().is_some(),
            VideoTagger::Without => false,
        }
    }

    /// The body that ends the sequence before unpublishing. Only for
    /// E-RTMP: legacy streams end as they always have here (without
    /// one) so plain servers see no change.
    fn sequence_end(&self) -> Option<Bytes> {
        match self {
            VideoTagger::Ex(tagger) => tagger.sequence_end(),
            VideoTagger::Avc(_) | VideoTagger::Without => None,
        }
    }
}

/// Resolves once `stop()` was called (or every handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub(super) async fn run(
    config: TargetConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next: Option<RunStart> = None;
    loop {
        let start = match next.take() {
            Some(start) => start,
            None => match wait_for_start(&shared, &mut stop).await {
                Some(start) => start,
                None => break,
            },
        };
        let plan = match plan(&start, config.enhanced) {
            Ok(plan) => plan,
            Err(message) => {
                tracing::warn!(target_url = %config.url, "restream: {message}");
                let mut status = shared.status();
                status.state = TargetState::Error;
                status.last_error = Some(message);
                status.live_since = None;
                status.notes.clear();
                continue;
            }
        };
        shared.status().notes = plan.notes.clone();
        let mut run = Run {
            config: &config,
            shared: &shared,
            plan,
            last_ms: [None, None],
            video_frames: 0,
            failed: false,
        };
        let outcome = run.stream(&mut stop).await;
        {
            let mut status = shared.status();
            status.state = TargetState::Idle;
            status.live_since = None;
        }
        match outcome {
            Outcome::Ended => {}
            Outcome::Next(start) => next = Some(start),
            Outcome::Finished => break,
        }
    }
    let mut status = shared.status();
    if status.state != TargetState::Error {
        status.state = TargetState::Idle;
    }
    status.live_since = None;
}

/// Discards frames until a run starts; `None`: stop.
async fn wait_for_start(shared: &Shared, stop: &mut watch::Receiver<bool>) -> Option<RunStart> {
    loop {
        let item = tokio::select! {
            item = shared.queue.pop() => item,
            _ = stopped(stop) => return None,
        };
        match item {
            Item::Output(Output::Start(start)) => return Some(start),
            // A run this target cannot send, or frames of no run.
            Item::Output(Output::Frame { .. } | Output::End(_)) => {}
            Item::Closed => return None,
        }
    }
}

/// One run being sent, across as many connections as it takes.
struct Run<'a> {
    config: &'a TargetConfig,
    shared: &'a Shared,
    plan: Plan,
    /// Last timestamp sent per kind (video, audio), in ms since the run
    /// started: never goes backwards, also across reconnects.
    last_ms: [Option<u64>; 2],
    video_frames: u64,
    /// A connection or attempt failed since the last connection.
    failed: bool,
}

/// Why a connection stopped sending.
enum Stopped {
    Outcome(Outcome),
    /// The connection failed; `live_at` says when it went live, if it did.
    Failed {
        error: PublishError,
        live_at: Option<Instant>,
    },
}

impl Run<'_> {
    async fn stream(&mut self, stop: &mut watch::Receiver<bool>) -> Outcome {
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        loop {
            self.shared.status().state = TargetState::Connecting;
            let mut session = SessionConfig::new(&self.config.url);
            if self.config.enhanced {
                session.fourcc_list = flv::ENHANCED_FOURCC_LIST.to_vec();
            }
            let attempt = tokio::select! {
                attempt = RtmpPublisher::connect_with_config(
                    &self.config.url,
                    self.config.tls.clone(),
                    self.config.io_timeout,
                    session,
                ) => attempt,
                _ = stopped(stop) => return Outcome::Finished,
            };
            let (error, live_at) = match attempt {
                Ok(publisher) => {
                    if std::mem::take(&mut self.failed) {
                        self.shared.status().reconnects += 1;
                    }
                    tracing::info!(target_url = %self.config.url, "restream: connected");
                    match self.send(publisher, stop).await {
                        Stopped::Outcome(outcome) => return outcome,
                        Stopped::Failed { error, live_at } => (error, live_at),
                    }
                }
                Err(error) => (error, None),
            };
            self.failed = true;
            if live_at.is_some_and(|t| t.elapsed() >= HEALTHY_AFTER) {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::warn!(target_url = %self.config.url, ?delay, "restream: {error}");
            {
                let mut status = self.shared.status();
                status.state = TargetState::Retrying;
                status.last_error = Some(error.to_string());
                status.live_since = None;
            }
            // Frames of the wait would be stale by the time a connection
            // exists: discard them (counted), watching for the run's end.
            let deadline = tokio::time::Instant::now() + delay;
            loop {
                let item = tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    item = self.shared.queue.pop() => item,
                    _ = stopped(stop) => return Outcome::Finished,
                };
                match item {
                    Item::Output(Output::Frame { .. }) => self.shared.queue.count_dropped(1),
                    Item::Output(Output::Start(start)) => return Outcome::Next(start),
                    Item::Output(Output::End(_)) => return Outcome::Ended,
                    Item::Closed => return Outcome::Finished,
                }
            }
        }
    }

    /// Sends the run over one connection until it ends or fails.
    async fn send(
        &mut self,
        mut publisher: RtmpPublisher,
        stop: &mut watch::Receiver<bool>,
    ) -> Stopped {
        let bytes_base = self.shared.status().bytes_sent;
        let mut tagger = VideoTagger::new(&self.plan);
        let mut live_at = None;
        let failed = |error, live_at| Stopped::Failed { error, live_at };
        if let Err(e) = self.start_connection(&mut publisher).await {
            return failed(e, live_at);
        }
        if self.plan.video.is_none() {
            live_at = Some(self.went_live());
        }
        loop {
            let item = tokio::select! {
                item = self.shared.queue.pop() => item,
                _ = stopped(stop) => {
                    self.end_sequence(&mut publisher, &tagger).await;
                    close(publisher).await;
                    return Stopped::Outcome(Outcome::Finished);
                }
            };
            let outcome = match item {
                Item::Output(Output::Frame {
                    track,
                    time_ns,
                    frame,
                }) => {
                    let sent = self
                        .send_frame(&mut publisher, &mut tagger, track, time_ns, &frame)
                        .await;
                    match sent {
                        Ok(true) if live_at.is_none() => live_at = Some(self.went_live()),
                        Ok(_) => {}
                        Err(e) => {
                            self.shared.queue.count_dropped(1);
                            return failed(e, live_at);
                        }
                    }
                    self.shared.status().bytes_sent = bytes_base + publisher.bytes_sent();
                    continue;
                }
                Item::Output(Output::End(_)) => Outcome::Ended,
                Item::Output(Output::Start(start)) => Outcome::Next(start),
                Item::Closed => Outcome::Finished,
            };
            self.end_sequence(&mut publisher, &tagger).await;
            self.shared.status().bytes_sent = bytes_base + publisher.bytes_sent();
            close(publisher).await;
            return Stopped::Outcome(outcome);
        }
    }

    /// `onMetaData` and the audio sequence header, before any media.
    async fn start_connection(
        &mut self,
        publisher: &mut RtmpPublisher,
    ) -> Result<(), PublishError> {
        let video = self.plan.video.as_ref();
        let audio = self.plan.audio.as_ref();
        let metadata = Metadata {
            width: video.map(|v| v.config.width),
            height: video.map(|v| v.config.height),
            video_codec_id: video.map(|v| match v.fourcc {
                Some(fourcc) => CodecId::FourCc(fourcc),
                None => CodecId::Flv(flv::VIDEO_CODEC_AVC),
            }),
            audio_codec_id: audio.map(AudioPlan::codec_id),
            audio_sample_rate: audio.map(|a| a.format().0),
            audio_channels: audio.map(|a| a.format().1),
            encoder: Some(concat!("Whipcord ", env!("CARGO_PKG_VERSION")).to_owned()),
            ..Default::default()
        };
        publisher.send_metadata(&metadata).await?;
        if let Some(audio) = audio {
            let ms = self.last_ms[1].unwrap_or(0);
            publisher
                .send_audio(ms as u32, audio.sequence_header())
                .await?;
        }
        Ok(())
    }

    /// Tells the destination the video sequence is over (E-RTMP
    /// SequenceEnd) before unpublishing; a failure only matters to the
    /// logs, the connection is closing anyway.
    async fn end_sequence(&self, publisher: &mut RtmpPublisher, tagger: &VideoTagger) {
        let Some(end) = tagger.sequence_end() else {
            return;
        };
        let ms = self.last_ms[0].unwrap_or(0) as u32;
        if let Err(e) = publisher.send_video(ms, end).await {
            tracing::debug!("restream: sending the sequence end: {e}");
        }
    }

    fn went_live(&self) -> Instant {
        let mut status = self.shared.status();
        status.state = TargetState::Live;
        status.live_since = Some(SystemTime::now());
        tracing::info!(target_url = %self.config.url, "restream: live");
        Instant::now()
    }

    /// The frame's timestamp in ms, clamped so `kind`'s never go back.
    fn timestamp(&mut self, kind: usize, time_ns: i64) -> u32 {
        let ms = (time_ns.max(0) as u64 + 500_000) / 1_000_000;
        let ms = self.last_ms[kind].map_or(ms, |last| ms.max(last));
        self.last_ms[kind] = Some(ms);
        // RTMP timestamps are 32-bit and wrap (after 49 days).
        ms as u32
    }

    /// Sends one frame; `Ok(true)` when it was the connection's first
    /// video frame (the stream is live from here).
    async fn send_frame(
        &mut self,
        publisher: &mut RtmpPublisher,
        tagger: &mut VideoTagger,
        track: usize,
        time_ns: i64,
        frame: &Frame,
    ) -> Result<bool, PublishError> {
        let video_track = self.plan.video.as_ref().map(|v| v.track);
        if Some(track) == video_track {
            let first = !tagger.started();
            let (header, body) = tagger.push(frame);
            let Some(body) = body else {
                // Before the connection's first keyframe: undecodable.
                if first {
                    self.shared.queue.count_dropped(1);
                }
                return Ok(false);
            };
            let ms = self.timestamp(0, time_ns);
            if let Some(header) = header {
                publisher.send_video(ms, header).await?;
            }
            publisher.send_video(ms, body).await?;
            self.video_frames += 1;
            self.shared.status().video_frames_sent += 1;
            return Ok(first);
        }
        if let Some(audio) = self.plan.audio
            && track == audio.track()
        {
            if video_track.is_some() && !tagger.started() {
                // Audio waits for the picture, as the run itself does.
                self.shared.queue.count_dropped(1);
                return Ok(false);
            }
            let ms = self.timestamp(1, time_ns);
            publisher.send_audio(ms, audio.frame(&frame.data)).await?;
            self.shared.status().audio_frames_sent += 1;
        }
        Ok(false)
    }
}

/// Unpublishes and closes; a failure here only matters to the logs.
async fn close(publisher: RtmpPublisher) {
    if let Err(e) = publisher.close().await {
        tracing::debug!("restream: closing: {e}");
    }
}

#[cfg(test)]
mod tests {
    use recorder::params::{AudioParams, VideoDetail};
    use recorder::pipeline::Timing;

    use super::*;

    fn video(codec: Codec) -> (usize, Codec, VideoConfig) {
        let config = VideoConfig {
            codec,
            width: 640,
            height: 360,
            detail: VideoDetail::None,
        };
        (0, codec, config)
    }

    fn audio(codec: Codec) -> (usize, Codec, AudioParams) {
        let params = AudioParams {
            channels: 2,
            sample_rate: 48000,
        };
        (1, codec, params)
    }

    fn run(video: Option<Codec>, audio: Option<Codec>) -> RunStart {
        RunStart {
            video: video.map(self::video),
            audio: audio.map(self::audio),
            timing: Timing::SenderReports,
        }
    }

    #[test]
    fn vp8_names_the_codec_and_the_option() {
        for enhanced in [false, true] {
            let err = plan(&run(Some(Codec::Vp8), Some(Codec::Opus)), enhanced).unwrap_err();
            assert!(err.contains("VP8"), "{err}");
            assert!(err.contains("transcode = true"), "{err}");
            // E-RTMP would not help: no point suggesting it.
            assert!(!err.contains("enhanced = true"), "{err}");
        }
    }

    #[test]
    fn enhanced_codecs_name_both_options_on_a_plain_target() {
        for (codec, name) in [
            (Codec::H265, "H265"),
            (Codec::Av1, "AV1"),
            (Codec::Vp9, "VP9"),
        ] {
            let err = plan(&run(Some(codec), None), false).unwrap_err();
            assert!(err.contains(name), "{err}");
            assert!(err.contains("transcode = true"), "{err}");
            assert!(err.contains("enhanced = true"), "{err}");
        }
    }

    #[test]
    fn enhanced_passes_new_codecs_through_and_keeps_h264_and_aac_legacy() {
        for (codec, fourcc) in [
            (Codec::H265, FourCc::HEVC),
            (Codec::Av1, FourCc::AV1),
            (Codec::Vp9, FourCc::VP9),
        ] {
            let plan = plan(&run(Some(codec), Some(Codec::Opus)), true).unwrap();
            let video = plan.video.unwrap();
            assert_eq!(video.fourcc, Some(fourcc));
            assert!(matches!(plan.audio, Some(AudioPlan::Opus { track: 1, .. })));
            assert!(plan.notes.is_empty(), "{:?}", plan.notes);
        }
        let plan = plan(&run(Some(Codec::H264), Some(Codec::Aac)), true).unwrap();
        assert_eq!(plan.video.unwrap().fourcc, None);
        assert!(matches!(plan.audio, Some(AudioPlan::Aac { .. })));
    }

    #[test]
    fn opus_is_left_out_with_a_note() {
        let plan = plan(&run(Some(Codec::H264), Some(Codec::Opus)), false).unwrap();
        assert!(plan.video.is_some());
        assert!(plan.audio.is_none());
        assert!(plan.notes[0].contains("Opus"), "{:?}", plan.notes);
        assert!(
            plan.notes[0].contains("enhanced = true"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn aac_gets_its_audio_specific_config() {
        let mut run = run(Some(Codec::H264), Some(Codec::Aac));
        run.timing = Timing::Arrival;
        let plan = plan(&run, false).unwrap();
        assert_eq!(
            plan.audio,
            Some(AudioPlan::Aac {
                track: 1,
                asc: [0x11, 0x90],
                sample_rate: 48000,
                channels: 2
            })
        );
        assert!(plan.notes.is_empty());
    }

    #[test]
    fn opus_only_needs_enhanced() {
        assert!(plan(&run(None, Some(Codec::Opus)), false).is_err());
        let plan = plan(&run(None, Some(Codec::Opus)), true).unwrap();
        assert!(plan.video.is_none());
        let header = plan.audio.unwrap().sequence_header();
        assert_eq!(&header[..5], b"\x90Opus");
        assert_eq!(&header[5..13], b"OpusHead");
    }
}
