//! A restream target: one RTMP destination fed with a stream's frames,
//! owning that destination's whole lifetime — connect when a run starts,
//! reconnect with backoff when the far end fails, close when the run ends —
//! and reporting its state for the API.
//!
//! The caller pushes [`recorder::pipeline::Output`]s into a
//! [`TargetInput`], which never waits (a bounded queue that drops to the
//! next keyframe); one tokio task per target does all network work.
//!
//! One file with inline modules because the workspace `.gitignore` pattern
//! `target/` would also hide a `src/target/` directory.

mod backoff {
    //! Exponential reconnect delays: a dead destination is retried quickly at
    //! first, then at most every `max`, so a long outage costs little and a
    //! short blip little time.

    use std::time::Duration;

    /// Live this long and the next failure starts again from the minimum: the
    /// destination was healthy, so the failure is news, not a repeat.
    pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

    /// `min`, `2 min`, `4 min` … capped at `max`.
    #[derive(Debug, Clone)]
    pub struct Backoff {
        min: Duration,
        max: Duration,
        next: Duration,
    }

    impl Backoff {
        pub fn new(min: Duration, max: Duration) -> Self {
            let max = max.max(min);
            Backoff {
                min,
                max,
                next: min,
            }
        }

        /// The delay before the next attempt; doubles the one after it.
        pub fn next_delay(&mut self) -> Duration {
            let delay = self.next;
            self.next = (self.next * 2).min(self.max);
            delay
        }

        /// Back to the minimum (after a healthy stretch).
        pub fn reset(&mut self) {
            self.next = self.min;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn doubles_up_to_the_cap_and_resets() {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
            assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
            b.reset();
            assert_eq!(b.next_delay(), Duration::from_secs(1));
        }

        #[test]
        fn max_below_min_is_min() {
            let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
            assert_eq!(b.next_delay(), Duration::from_secs(2));
            assert_eq!(b.next_delay(), Duration::from_secs(2));
        }
    }
}

mod queue {
    //! The bounded hand-over between the caller (a gateway task serving many
    //! sinks, which must never wait on one destination) and the target's task.
    //!
    //! A full queue drops frames until the next video keyframe with room: the
    //! frames already queued stay contiguous, and what follows the gap starts
    //! at a keyframe, so the destination's decoder never sees a frame whose
    //! references were dropped. Run boundaries (`Start`/`End`) are never
    //! dropped; they are rare and the task needs them to know what it sends.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use recorder::pipeline::Output;
    use tokio::sync::Notify;

    /// What the task takes out of the queue.
    #[derive(Debug)]
    pub enum Item {
        Output(Output),
        /// The input was dropped: nothing more will come.
        Closed,
    }

    #[derive(Debug)]
    pub struct Queue {
        inner: Mutex<Inner>,
        /// One consumer: `notify_one` keeps a permit when it is not waiting.
        notify: Notify,
    }

    #[derive(Debug)]
    struct Inner {
        items: VecDeque<Output>,
        /// Frames in `items` (run boundaries are not counted).
        frames: usize,
        capacity: usize,
        /// The video track of the run being pushed, `None` for audio only.
        video_track: Option<usize>,
        dropping: bool,
        dropped: u64,
        closed: bool,
    }

    impl Queue {
        pub fn new(capacity: usize) -> Self {
            Queue {
                inner: Mutex::new(Inner {
                    items: VecDeque::new(),
                    frames: 0,
                    capacity: capacity.max(1),
                    video_track: None,
                    dropping: false,
                    dropped: 0,
                    closed: false,
                }),
                notify: Notify::new(),
            }
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
            // A panic while holding this lock leaves plain data behind; carry on.
            self.inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Adds one pipeline output; never waits.
        pub fn push(&self, output: Output) {
            {
                let mut q = self.lock();
                if q.closed {
                    return;
                }
                match &output {
                    Output::Start(run) => {
                        q.video_track = run.video.as_ref().map(|v| v.0);
                        q.dropping = false;
                    }
                    Output::End(_) => {}
                    Output::Frame { track, frame, .. } => {
                        // Audio-only runs have no keyframes to wait for: any
                        // frame may resume.
                        let resumes = match q.video_track {
                            Some(video) => *track == video && frame.keyframe,
                            None => true,
                        };
                        let full = q.frames >= q.capacity;
                        if full || (q.dropping && !resumes) {
                            q.dropping = true;
                            q.dropped += 1;
                            return;
                        }
                        q.dropping = false;
                        q.frames += 1;
                    }
                }
                q.items.push_back(output);
            }
            self.notify.notify_one();
        }

        /// No more input; the task ends after what is queued.
        pub fn close(&self) {
            self.lock().closed = true;
            self.notify.notify_one();
        }

        /// The next item, waiting for one.
        pub async fn pop(&self) -> Item {
            loop {
                if let Some(item) = self.try_pop() {
                    return item;
                }
                self.notify.notified().await;
            }
        }

        /// The next item if there is one.
        pub fn try_pop(&self) -> Option<Item> {
            let mut q = self.lock();
            match q.items.pop_front() {
                Some(output) => {
                    if matches!(output, Output::Frame { .. }) {
                        q.frames -= 1;
                    }
                    Some(Item::Output(output))
                }
                None if q.closed => Some(Item::Closed),
                None => None,
            }
        }

        /// Frames dropped here, plus those the task reports with
        /// [`count_dropped`](Self::count_dropped).
        pub fn dropped(&self) -> u64 {
            self.lock().dropped
        }

        /// Frames the task received but could not send (no connection, or
        /// before the first keyframe of a connection).
        pub fn count_dropped(&self, n: u64) {
            self.lock().dropped += n;
        }

        #[cfg(test)]
        fn len(&self) -> usize {
            self.lock().items.len()
        }
    }

    #[cfg(test)]
    mod tests {
        use bytes::Bytes;
        use recorder::codec::Codec;
        use recorder::params::{AvcConfig, VideoConfig, VideoDetail};
        use recorder::pipeline::{RunEnd, RunStart, Timing};
        use recorder::rtp::Frame;

        use super::*;

        fn start() -> Output {
            let config = VideoConfig {
                codec: Codec::H264,
                width: 64,
                height: 64,
                detail: VideoDetail::Avc(AvcConfig {
                    sps: vec![],
                    pps: vec![],
                    profile_idc: 66,
                    constraint_flags: 0,
                    level_idc: 30,
                    chroma_format_idc: 1,
                    bit_depth_luma: 8,
                    bit_depth_chroma: 8,
                }),
            };
            Output::Start(RunStart {
                video: Some((0, Codec::H264, config)),
                audio: None,
                timing: Timing::SenderReports,
            })
        }

        fn frame(n: i64, keyframe: bool) -> Output {
            Output::Frame {
                track: 0,
                time_ns: n * 33_333_333,
                frame: Frame {
                    codec: Codec::H264,
                    timestamp: n * 3000,
                    keyframe,
                    data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
                },
            }
        }

        fn popped_frames(q: &Queue) -> Vec<(i64, bool)> {
            let mut out = Vec::new();
            while let Some(Item::Output(o)) = q.try_pop() {
                if let Output::Frame { time_ns, frame, .. } = o {
                    out.push((time_ns / 33_333_333, frame.keyframe));
                }
            }
            out
        }

        #[test]
        fn overflow_drops_until_the_next_keyframe() {
            let q = Queue::new(5);
            q.push(start());
            // Keyframe every 4 frames; capacity 5.
            for n in 0..12 {
                q.push(frame(n, n % 4 == 0));
            }
            // 0..=4 queued; 5, 6, 7 dropped (full, then waiting for a
            // keyframe); 8 is a keyframe but the queue is still full.
            assert_eq!(q.dropped(), 7);
            let got = popped_frames(&q);
            assert_eq!(got.iter().map(|f| f.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
            // Room again: the next frames are dropped up to a keyframe.
            for n in 12..18 {
                q.push(frame(n, n % 4 == 0));
            }
            let got = popped_frames(&q);
            assert_eq!(got.first(), Some(&(12, true)));
            assert_eq!(got.len(), 5);
        }

        #[test]
        fn run_boundaries_are_never_dropped() {
            let q = Queue::new(1);
            q.push(start());
            q.push(frame(0, true));
            q.push(frame(1, false));
            q.push(Output::End(RunEnd::Finished));
            assert_eq!(q.len(), 3);
            assert_eq!(q.dropped(), 1);
        }

        #[tokio::test]
        async fn close_ends_after_the_queued_items() {
            let q = Queue::new(4);
            q.push(start());
            q.close();
            q.push(frame(0, true));
            assert!(matches!(q.pop().await, Item::Output(Output::Start(_))));
            assert!(matches!(q.pop().await, Item::Closed));
        }
    }
}

mod task {
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
                }) => {
                    ExVideoTagger::new(config.codec).map_or(VideoTagger::Without, VideoTagger::Ex)
                }
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
}

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use recorder::pipeline::Output;
use tokio::sync::watch;

pub use backoff::{Backoff, HEALTHY_AFTER};

use crate::rtmp::TlsConfig;
use crate::rtmp::publisher::DEFAULT_TIMEOUT;
use crate::url::RtmpUrl;
use queue::Queue;

/// One destination and how to treat it.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub url: RtmpUrl,
    /// For `rtmps://` (`None`: the system's roots).
    pub tls: Option<TlsConfig>,
    /// First reconnect delay; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Frames queued for a slow destination before dropping to the next
    /// keyframe (600: 20 s of 30 fps video, or less with audio).
    pub queue_frames: usize,
    /// Bound on each connect phase and each write: a destination that
    /// stops reading is declared dead after this long.
    pub io_timeout: Duration,
    /// The destination reads Enhanced RTMP (E-RTMP v2): announce it in
    /// `connect` (`fourCcList`) and pass H265, AV1 and VP9 video and Opus
    /// audio through unchanged under their FourCCs. H264 and AAC still go
    /// as legacy FLV, which every server reads. Off: those codecs are
    /// refused (video) or left out (audio), as plain servers cannot read
    /// them.
    pub enhanced: bool,
}

impl TargetConfig {
    /// The defaults: 1 s → 30 s backoff, 600 frames, 10 s I/O timeout,
    /// plain RTMP.
    pub fn new(url: RtmpUrl) -> Self {
        TargetConfig {
            url,
            tls: None,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            queue_frames: 600,
            io_timeout: DEFAULT_TIMEOUT,
            enhanced: false,
        }
    }
}

/// Where a target is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// No run (the stream is not live).
    Idle,
    /// Connecting, or connected and waiting for a keyframe.
    Connecting,
    /// Media is flowing.
    Live,
    /// The last attempt or connection failed; waiting to reconnect.
    Retrying,
    /// This run cannot be sent (e.g. VP8 without transcoding, H265 to a
    /// plain RTMP target); stays until
    /// the next run.
    Error,
}

impl TargetState {
    /// Lower-case name for APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Idle => "idle",
            TargetState::Connecting => "connecting",
            TargetState::Live => "live",
            TargetState::Retrying => "retrying",
            TargetState::Error => "error",
        }
    }
}

impl std::fmt::Display for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a target for the API. Counters are totals over the
/// target's life, across runs and reconnects.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub state: TargetState,
    /// The URL with its stream key redacted.
    pub url: String,
    /// Bytes written to destinations, RTMP framing included.
    pub bytes_sent: u64,
    pub video_frames_sent: u64,
    pub audio_frames_sent: u64,
    /// Frames not sent: queue overflow, no connection, or before a
    /// connection's first keyframe.
    pub dropped_frames: u64,
    /// Connections made after a failure.
    pub reconnects: u64,
    /// Why the last attempt or connection failed, or why the run cannot
    /// be sent (state `Error`).
    pub last_error: Option<String>,
    /// When the current connection went live; `None` unless `Live`.
    pub live_since: Option<SystemTime>,
    /// What this run leaves out and why (e.g. Opus audio until the
    /// Opus→AAC transcoder exists); not errors.
    pub notes: Vec<String>,
}

/// What the task and the handles share.
#[derive(Debug)]
struct Shared {
    queue: Queue,
    status: Mutex<TargetStatus>,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, TargetStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handle on a running target: cheap to clone, for the API.
#[derive(Debug, Clone)]
pub struct Target {
    shared: Arc<Shared>,
}

impl Target {
    pub fn status(&self) -> TargetStatus {
        let mut status = self.shared.status().clone();
        status.dropped_frames = self.shared.queue.dropped();
        status
    }

    /// Closes the connection (unpublishing cleanly) and ends the task.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }
}

/// Where the stream's frames go in. Dropping it ends the run as if the
/// stream ended, and then the task.
#[derive(Debug)]
pub struct TargetInput {
    shared: Arc<Shared>,
}

impl TargetInput {
    /// Queues one output of the frame pipeline; never waits.
    pub fn push(&self, output: Output) {
        self.shared.queue.push(output);
    }
}

impl Drop for TargetInput {
    fn drop(&mut self) {
        self.shared.queue.close();
    }
}

/// Starts a target's task on `runtime`.
pub fn spawn(config: TargetConfig, runtime: &tokio::runtime::Handle) -> (Target, TargetInput) {
    let (stop, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        queue: Queue::new(config.queue_frames),
        status: Mutex::new(TargetStatus {
            state: TargetState::Idle,
            url: config.url.to_string(),
            bytes_sent: 0,
            video_frames_sent: 0,
            audio_frames_sent: 0,
            dropped_frames: 0,
            reconnects: 0,
            last_error: None,
            live_since: None,
            notes: Vec::new(),
        }),
        stop,
    });
    runtime.spawn(task::run(config, shared.clone(), stop_rx));
    (
        Target {
            shared: shared.clone(),
        },
        TargetInput { shared },
    )
}
