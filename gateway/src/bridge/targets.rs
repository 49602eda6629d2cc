//! The restream targets: which stream goes where, each target's task and
//! its status for the API.
//!
//! A target's task starts when the target is registered and lives until it
//! is removed; between runs of its stream it sits idle. Sessions find the
//! inputs of their stream's targets here on every batch, so a target added
//! while the stream is live joins at its next keyframe.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rtmp_bridge::target::{self, Target, TargetConfig, TargetInput, TargetStatus};
use rtmp_bridge::{RtmpUrl, TlsConfig, UrlError};
use serde::Serialize;

use crate::config::Config;
use crate::stream_name::StreamName;

/// How often each target's bit rate is sampled.
pub const RATE_WINDOW: Duration = Duration::from_secs(2);

/// A target's id in the API: stable for the target's life.
pub type TargetId = u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("invalid stream name")]
    StreamName,
    #[error("invalid target URL: {0}")]
    Url(#[from] UrlError),
    #[error("too many restream targets (at most {MAX_TARGETS})")]
    TooMany,
}

/// Bound on registered targets: each one is a task and, when live, an
/// outbound connection.
const MAX_TARGETS: usize = 256;

/// What the configuration or an API call asks for.
#[derive(Debug, Clone)]
pub struct NewTarget {
    pub stream: StreamName,
    pub url: String,
    pub transcode: bool,
    /// Enhanced RTMP: H265/AV1/VP9 and Opus go as published.
    pub enhanced: bool,
    pub ca_file: Option<PathBuf>,
    pub from_config: bool,
}

/// A registered target, as sessions and the API see it.
#[derive(Clone)]
pub struct TargetEntry {
    pub id: TargetId,
    pub stream: StreamName,
    pub transcode: bool,
    pub enhanced: bool,
    pub from_config: bool,
    pub handle: Target,
    pub input: Arc<TargetInput>,
}

struct Slot {
    entry: TargetEntry,
    /// What the task was spawned with, to spawn it again on a retry.
    config: TargetConfig,
    /// (bytes sent, when) at the last sample, and the rate since.
    last_sample: (u64, Instant),
    bitrate_bps: u64,
}

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    config: Arc<Config>,
    runtime: tokio::runtime::Handle,
    slots: Mutex<Vec<Slot>>,
    next_id: Mutex<TargetId>,
}

impl Registry {
    pub fn new(config: Arc<Config>, runtime: tokio::runtime::Handle) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                config,
                runtime,
                slots: Mutex::new(Vec::new()),
                next_id: Mutex::new(1),
            }),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a target and starts its (idle) task.
    pub fn add(&self, new: NewTarget) -> Result<TargetEntry, TargetError> {
        let url = RtmpUrl::parse(&new.url)?;
        let mut slots = self.slots();
        if slots.len() >= MAX_TARGETS {
            return Err(TargetError::TooMany);
        }
        let id = {
            let mut next = self.inner.next_id.lock().unwrap_or_else(|p| p.into_inner());
            let id = *next;
            *next += 1;
            id
        };
        let mut config = TargetConfig::new(url);
        config.enhanced = new.enhanced;
        if let Some(ca) = new
            .ca_file
            .clone()
            .or_else(|| self.inner.config.restream_ca_file.clone())
        {
            config.tls = Some(TlsConfig::with_ca_file(ca));
        }
        tracing::info!(
            id,
            stream = %new.stream,
            url = %config.url,
            transcode = new.transcode,
            enhanced = new.enhanced,
            "restream target added"
        );
        let (handle, input) = target::spawn(config.clone(), &self.inner.runtime);
        let entry = TargetEntry {
            id,
            stream: new.stream,
            transcode: new.transcode,
            enhanced: new.enhanced,
            from_config: new.from_config,
            handle,
            input: Arc::new(input),
        };
        slots.push(Slot {
            entry: entry.clone(),
            config,
            last_sample: (0, Instant::now()),
            bitrate_bps: 0,
        });
        Ok(entry)
    }

    /// Stops and forgets a target; false if there is none with `id`.
    pub fn remove(&self, id: TargetId) -> bool {
        let mut slots = self.slots();
        let Some(index) = slots.iter().position(|s| s.entry.id == id) else {
            return false;
        };
        let slot = slots.remove(index);
        slot.entry.handle.stop();
        tracing::info!(id, stream = %slot.entry.stream, "restream target removed");
        true
    }

    /// Replaces a target's task with a fresh one that connects at once,
    /// instead of waiting out a backoff; false if there is no such target.
    pub fn restart(&self, id: TargetId) -> bool {
        let mut slots = self.slots();
        let Some(slot) = slots.iter_mut().find(|s| s.entry.id == id) else {
            return false;
        };
        slot.entry.handle.stop();
        let (handle, input) = target::spawn(slot.config.clone(), &self.inner.runtime);
        slot.entry.handle = handle;
        slot.entry.input = Arc::new(input);
        slot.last_sample = (0, Instant::now());
        tracing::info!(id, stream = %slot.entry.stream, "restream target restarted");
        true
    }

    pub fn has_targets_for(&self, stream: &StreamName) -> bool {
        self.slots().iter().any(|s| &s.entry.stream == stream)
    }

    /// The targets of `stream`, for its session.
    pub fn for_stream(&self, stream: &StreamName, out: &mut Vec<TargetEntry>) {
        out.clear();
        out.extend(
            self.slots()
                .iter()
                .filter(|s| &s.entry.stream == stream)
                .map(|s| s.entry.clone()),
        );
    }

    /// Every target's state for the API, optionally only one stream's.
    pub fn list(&self, stream: Option<&StreamName>) -> Vec<TargetJson> {
        self.slots()
            .iter()
            .filter(|s| stream.is_none_or(|want| &s.entry.stream == want))
            .map(TargetJson::from_slot)
            .collect()
    }

    pub fn get(&self, id: TargetId) -> Option<TargetJson> {
        self.slots()
            .iter()
            .find(|s| s.entry.id == id)
            .map(TargetJson::from_slot)
    }

    /// Updates every target's bit rate from its byte counter.
    pub fn sample_rates(&self) {
        let now = Instant::now();
        for slot in self.slots().iter_mut() {
            let bytes = slot.entry.handle.status().bytes_sent;
            let (last_bytes, last_at) = slot.last_sample;
            let secs = now.duration_since(last_at).as_secs_f64();
            if secs > 0.0 {
                slot.bitrate_bps = (bytes.saturating_sub(last_bytes) as f64 * 8.0 / secs) as u64;
            }
            slot.last_sample = (bytes, now);
        }
    }

    pub fn stop_all(&self) {
        for slot in self.slots().drain(..) {
            slot.entry.handle.stop();
        }
    }
}

/// A target as the API shows it: never the stream key.
#[derive(Debug, Clone, Serialize)]
pub struct TargetJson {
    pub id: TargetId,
    pub stream: String,
    /// The URL with its stream key redacted.
    pub url: String,
    pub transcode: bool,
    pub enhanced: bool,
    /// `config` (from the file or flags) or `api`.
    pub origin: &'static str,
    /// `idle`, `connecting`, `live`, `retrying` or `error`.
    pub state: &'static str,
    pub bytes_sent: u64,
    pub bitrate_bps: u64,
    pub video_frames_sent: u64,
    pub audio_frames_sent: u64,
    pub dropped_frames: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// Seconds since the current connection went live.
    pub uptime_s: Option<u64>,
    pub notes: Vec<String>,
}

impl TargetJson {
    fn from_slot(slot: &Slot) -> Self {
        let status: TargetStatus = slot.entry.handle.status();
        Self {
            id: slot.entry.id,
            stream: slot.entry.stream.to_string(),
            url: status.url,
            transcode: slot.entry.transcode,
            enhanced: slot.entry.enhanced,
            origin: if slot.entry.from_config {
                "config"
            } else {
                "api"
            },
            state: status.state.as_str(),
            bytes_sent: status.bytes_sent,
            bitrate_bps: slot.bitrate_bps,
            video_frames_sent: status.video_frames_sent,
            audio_frames_sent: status.audio_frames_sent,
            dropped_frames: status.dropped_frames,
            reconnects: status.reconnects,
            last_error: status.last_error,
            uptime_s: status
                .live_since
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs()),
            notes: status.notes,
        }
    }
}
