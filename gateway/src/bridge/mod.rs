//! The bridge to places WebRTC does not reach: RTMP(S) restream targets and
//! HLS.
//!
//! Per live stream that has a target (or HLS), one hub subscription feeds
//! one [`session`] thread: RTP → timed frames (the recorder's
//! [`FramePipeline`](recorder::pipeline::FramePipeline)) → Opus→AAC (one
//! transcode whatever the number of outputs) → every target of the stream
//! and the HLS muxer. Codec work runs on that thread, never on the media
//! thread or a tokio worker; the targets' network I/O runs on the bridge
//! runtime.
//!
//! Targets are registered here (from the configuration or the REST API)
//! and live until removed: idle while their stream is off the air, fed
//! while it is live.

mod session;
pub mod targets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rtmp_bridge::hls::{HlsConfig, Store};
use tracing::{info, warn};

use crate::config::{Config, HlsMode};
use crate::hub::subscriber::{self, SubscriberSender};
use crate::stream_name::StreamName;
pub use targets::{NewTarget, TargetError, TargetId};

/// How often a keyframe is asked for while a stream has HLS: segments of
/// about two seconds.
pub const HLS_KEYFRAME_INTERVAL: Duration = Duration::from_secs(2);

/// Hub events queued per bridge session before the oldest are dropped
/// (several seconds of a high-bitrate stream).
const QUEUE_CAPACITY: usize = 16_384;

/// The bridge service; cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    /// Runs the targets' connections.
    runtime: tokio::runtime::Handle,
    targets: targets::Registry,
    sessions: Mutex<HashMap<StreamName, SessionHandle>>,
    /// Video transcodes running now, against `config.transcode_max`.
    transcodes: AtomicUsize,
    hls: Mutex<HashMap<StreamName, HlsEntry>>,
    /// Each running session's transcoder figures, for the API.
    transcode_stats: Mutex<HashMap<StreamName, TranscodeFigures>>,
}

/// A session's transcoding, as the API shows it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TranscodeFigures {
    /// Thread CPU time spent in Opus→AAC since the session started.
    pub audio_cpu_s: f64,
    /// Thread CPU time spent in video → H264 (0 without a transcode).
    pub video_cpu_s: f64,
    pub aac_frames_out: u64,
    pub h264_frames_out: u64,
    /// Whether a video transcode runs now.
    pub video_active: bool,
}

/// A stream's HLS as the HTTP layer sees it.
#[derive(Default)]
struct HlsEntry {
    /// The store of the running muxer.
    store: Option<Store>,
    /// The latest request for any of its resources.
    last_request: Option<Instant>,
}

/// The bridge's end of a running session.
struct SessionHandle {
    /// Tells the thread to finish its run and exit.
    stop: Arc<AtomicBool>,
    /// Set by the thread once its stream ended: a new stream of the same
    /// name needs a new session even before this one has exited.
    ended: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bridge {
    /// Registers the configured targets; their connections run on `runtime`.
    pub fn new(config: Arc<Config>, runtime: tokio::runtime::Handle) -> Self {
        let bridge = Self {
            inner: Arc::new(Inner {
                targets: targets::Registry::new(config.clone(), runtime.clone()),
                config: config.clone(),
                runtime,
                sessions: Mutex::new(HashMap::new()),
                transcodes: AtomicUsize::new(0),
                hls: Mutex::new(HashMap::new()),
                transcode_stats: Mutex::new(HashMap::new()),
            }),
        };
        for restream in &config.restreams {
            let added = StreamName::parse(&restream.stream)
                .ok_or(TargetError::StreamName)
                .and_then(|stream| {
                    bridge.inner.targets.add(NewTarget {
                        stream,
                        url: restream.url.clone(),
                        transcode: restream.transcode,
                        enhanced: restream.enhanced,
                        ca_file: restream.ca_file.clone(),
                        from_config: true,
                    })
                });
            if let Err(err) = added {
                // Validation already ran; this only guards a race-free
                // impossibility without bringing the server down.
                warn!(stream = %restream.stream, "restream target not added: {err}");
            }
        }
        bridge.spawn_rate_sampler();
        bridge
    }

    pub fn targets(&self) -> &targets::Registry {
        &self.inner.targets
    }

    /// Whether `stream` needs a session as soon as it goes live.
    pub fn wants(&self, stream: &StreamName) -> bool {
        self.inner.config.hls == HlsMode::Always || self.inner.targets.has_targets_for(stream)
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<StreamName, SessionHandle>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the session of `stream`; returns the subscription the hub
    /// must feed, or `None` if one is running already.
    ///
    /// `new_stream`: the stream has just gone live, so a session still
    /// registered belongs to its previous life and is only finishing (it
    /// has been sent the end of stream); the new one replaces it.
    pub fn start(&self, stream: StreamName, new_stream: bool) -> Option<SubscriberSender> {
        let mut sessions = self.sessions();
        if let Some(running) = sessions.get(&stream)
            && !new_stream
            && !running.ended.load(Ordering::Acquire)
            && !running.stop.load(Ordering::Acquire)
        {
            return None;
        }
        let (tx, rx) = subscriber::channel(QUEUE_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicBool::new(false));
        let context = session::SessionContext {
            stream: stream.clone(),
            bridge: self.clone(),
            stop: stop.clone(),
            ended: ended.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("whipcord-bridge-{}", stream.as_str()))
            .spawn(move || session::run(context, rx));
        match thread {
            Ok(thread) => {
                info!(%stream, "bridge session started");
                let old = sessions.insert(
                    stream,
                    SessionHandle {
                        stop,
                        ended,
                        thread: Some(thread),
                    },
                );
                // A replaced session has been sent its end of stream and
                // exits on its own within a batch interval; it is not
                // joined here, on the media thread.
                drop(old);
                Some(tx)
            }
            Err(err) => {
                warn!(%stream, "cannot start the bridge thread: {err}");
                None
            }
        }
    }

    /// Called by a session thread as it exits.
    fn session_exited(&self, stream: &StreamName, stop: &Arc<AtomicBool>) {
        let mut sessions = self.sessions();
        if sessions
            .get(stream)
            .is_some_and(|s| Arc::ptr_eq(&s.stop, stop))
        {
            sessions.remove(stream);
        }
    }

    fn hls(&self) -> MutexGuard<'_, HashMap<StreamName, HlsEntry>> {
        self.inner.hls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How HLS is cut; the same for every stream.
    pub fn hls_config(&self) -> HlsConfig {
        HlsConfig::default()
    }

    /// Notes a request for `stream`'s HLS: it keeps (or gets) its muxer.
    pub fn touch_hls(&self, stream: &StreamName) {
        self.hls().entry(stream.clone()).or_default().last_request = Some(Instant::now());
    }

    /// The store HLS requests for `stream` are served from, while its
    /// muxer runs.
    pub fn hls_store(&self, stream: &StreamName) -> Option<Store> {
        self.hls()
            .get(stream)
            .and_then(|e| e.store.clone())
            .filter(|s| !s.is_closed())
    }

    /// Whether `stream`'s publisher should be asked for a keyframe every
    /// [`HLS_KEYFRAME_INTERVAL`]: HLS segments start at keyframes, and
    /// browsers send one only when asked.
    pub fn wants_keyframes(&self, stream: &StreamName) -> bool {
        self.hls_store(stream).is_some()
    }

    /// On-demand HLS stops after this long without a request.
    fn hls_idle(&self) -> Duration {
        Duration::from_secs(self.inner.config.hls_idle_secs)
    }

    /// Whether VP8 is transcoded for HLS.
    fn hls_transcode(&self) -> bool {
        self.inner.config.hls_transcode
    }

    /// Whether `stream` should have an HLS muxer now.
    fn hls_wanted(&self, stream: &StreamName) -> bool {
        match self.inner.config.hls {
            HlsMode::Always => true,
            HlsMode::Off => false,
            HlsMode::OnDemand => self
                .hls()
                .get(stream)
                .and_then(|e| e.last_request)
                .is_some_and(|t| t.elapsed() < self.hls_idle()),
        }
    }

    /// A session's muxer started (`Some`) or stopped (`None`).
    fn set_hls_store(&self, stream: &StreamName, store: Option<Store>) {
        let mut hls = self.hls();
        match store {
            Some(store) => hls.entry(stream.clone()).or_default().store = Some(store),
            None => {
                if let Some(entry) = hls.get_mut(stream) {
                    entry.store = None;
                }
                // Forget streams nobody asked for in a while.
                let idle = self.hls_idle();
                hls.retain(|_, e| {
                    e.store.is_some() || e.last_request.is_some_and(|t| t.elapsed() < idle)
                });
            }
        }
    }

    /// HLS figures of `stream` for the API.
    pub fn hls_status(&self, stream: &StreamName) -> serde_json::Value {
        match self.hls_store(stream) {
            Some(store) => {
                let stats = store.stats();
                serde_json::json!({
                    "active": true,
                    "error": store.error(),
                    "playlists_served": stats.playlists_served,
                    "segments_served": stats.segments_served,
                    "parts_served": stats.parts_served,
                    "segments_made": stats.segments_made,
                    "segments_in_memory": stats.segments_in_memory,
                    "bytes_in_memory": stats.bytes_in_memory,
                })
            }
            None => serde_json::json!({ "active": false }),
        }
    }

    fn set_transcode_figures(&self, stream: &StreamName, figures: Option<TranscodeFigures>) {
        let mut stats = self
            .inner
            .transcode_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match figures {
            Some(f) => {
                stats.insert(stream.clone(), f);
            }
            None => {
                stats.remove(stream);
            }
        }
    }

    /// The transcoding figures of `stream`'s session, if it runs.
    pub fn transcode_figures(&self, stream: &StreamName) -> Option<TranscodeFigures> {
        self.inner
            .transcode_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream)
            .copied()
    }

    /// Tries to take one of the server's video transcode slots.
    fn acquire_transcode(&self) -> Option<TranscodeSlot> {
        let max = self.inner.config.transcode_max;
        let taken = self
            .inner
            .transcodes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        taken.ok().map(|_| TranscodeSlot {
            bridge: self.clone(),
        })
    }

    /// Video transcodes running now.
    pub fn transcodes_running(&self) -> usize {
        self.inner.transcodes.load(Ordering::Acquire)
    }

    /// Stops every session and target, waiting at most `limit` for the
    /// sessions to finish their runs (targets then unpublish cleanly).
    pub fn shutdown(&self, limit: Duration) {
        let handles: Vec<SessionHandle> = self.sessions().drain().map(|(_, h)| h).collect();
        for handle in &handles {
            handle.stop.store(true, Ordering::Release);
        }
        let deadline = std::time::Instant::now() + limit;
        for mut handle in handles {
            if let Some(thread) = handle.thread.take() {
                while !thread.is_finished() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if thread.is_finished() {
                    let _ = thread.join();
                }
            }
        }
        self.inner.targets.stop_all();
    }

    fn spawn_rate_sampler(&self) {
        let targets = self.inner.targets.clone();
        self.inner.runtime.spawn(async move {
            let mut tick = tokio::time::interval(targets::RATE_WINDOW);
            loop {
                tick.tick().await;
                targets.sample_rates();
            }
        });
    }
}

/// One of the server's video transcode slots, given back on drop.
pub struct TranscodeSlot {
    bridge: Bridge,
}

impl Drop for TranscodeSlot {
    fn drop(&mut self) {
        self.bridge.inner.transcodes.fetch_sub(1, Ordering::AcqRel);
    }
}
