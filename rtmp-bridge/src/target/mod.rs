//! A restream target: one RTMP destination fed with a stream's frames,
//! owning that destination's whole lifetime — connect when a run starts,
//! reconnect with backoff when the far end fails, close when the run ends —
//! and reporting its state for the API.
//!
//! The caller pushes [`recorder::pipeline::Output`]s into a
//! [`TargetInput`], which never waits (a bounded queue that drops to the
//! next keyframe); one tokio task per target does all network work.

mod backoff;
mod queue;
mod task;

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
