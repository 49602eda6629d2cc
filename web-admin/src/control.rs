//! What the admin panel asks of the gateway, and the shapes it gets back.
//!
//! The gateway depends on this crate, never the reverse, so the panel sees
//! the running gateway only through [`Control`], which the composition root
//! implements. Every type here is also a schema of the REST API: the
//! OpenAPI document is generated from them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A live stream, as the dashboard and `GET /api/v1/streams` show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamInfo {
    pub name: String,
    /// Seconds since the stream went live.
    pub uptime_s: u64,
    pub publisher: Option<PublisherInfo>,
    pub tracks: Vec<TrackInfo>,
    /// Connected WHEP viewers.
    pub viewers: usize,
    /// Received media bit rate, all tracks, over the last second or two.
    pub bitrate_in_bps: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets the publisher sent that never arrived (from sequence gaps).
    pub packets_lost: u64,
    /// `packets_lost` as a share of packets expected, in percent.
    pub loss_pct: f64,
    pub recording: RecordingStatus,
    pub restreams: Vec<RestreamInfo>,
}

/// The publisher of a stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublisherInfo {
    /// WHIP session id.
    pub session: String,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    /// What the user agent says the publisher is: `OBS 31.0`, `Chrome 156`…
    pub software: Option<String>,
    pub connected_s: u64,
    /// The stream key it published with, if it used one.
    pub key_id: Option<i64>,
    /// How it publishes: `WHIP`, `RTMP` or `RTSP`.
    #[serde(default)]
    pub protocol: String,
    /// Something about the publisher's encoder the operator should fix,
    /// e.g. "H264 with B-frames: disable B-frames in the encoder".
    #[serde(default)]
    pub notice: Option<String>,
}

/// One published track.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrackInfo {
    /// `video` or `audio`.
    pub kind: String,
    /// Codec name as in SDP: `H264`, `VP8`, `opus`…
    pub codec: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Frames per second over the last second or two (video only).
    pub fps: Option<f64>,
    pub bitrate_bps: u64,
    /// Simulcast layers (1 without simulcast).
    pub layers: usize,
}

/// Whether a stream is being recorded now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RecordingStatus {
    pub active: bool,
}

/// A WHEP viewer of a stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ViewerInfo {
    /// WHEP session id; `DELETE /api/v1/streams/{name}/viewers/{session}`
    /// ends it.
    pub session: String,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    /// `connecting`, `connected` or `disconnected`.
    pub state: String,
    /// Media bit rate sent to this viewer.
    pub bitrate_bps: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
    /// Loss the viewer reports in its receiver reports, in percent.
    pub loss_pct: f64,
    pub nacks: u64,
    pub plis: u64,
    pub watching_s: u64,
    pub key_id: Option<i64>,
}

/// A recording in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecordingInfo {
    pub id: i64,
    pub stream: String,
    /// `mp4` or `webm`.
    pub container: String,
    pub file_name: String,
    /// `recording`, `complete`, `recovered` or `failed`.
    pub state: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub duration_ms: Option<u64>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub size_bytes: u64,
    pub dropped_frames: u64,
    pub error: Option<String>,
    /// Where the file is downloaded (Range requests work).
    pub download_url: String,
}

/// A recording file to serve.
#[derive(Debug, Clone)]
pub struct RecordingFile {
    pub path: PathBuf,
    pub file_name: String,
    /// `mp4` or `webm`: picks the Content-Type.
    pub extension: &'static str,
}

/// Filters of a recordings listing.
#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecordingFilter {
    /// Only this stream.
    pub stream: Option<String>,
    /// Started at or after this time (Unix milliseconds).
    pub from_ms: Option<i64>,
    /// Started before this time (Unix milliseconds).
    pub to_ms: Option<i64>,
}

/// Space the recordings take, against the retention limits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecordingTotals {
    pub count: u64,
    pub size_bytes: u64,
    /// Total size above which the oldest recordings are deleted (0: none).
    pub max_total_bytes: u64,
    /// Age above which recordings are deleted (0: kept forever).
    pub max_age_hours: u64,
}

/// A restream target and its live status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestreamInfo {
    pub id: u64,
    pub stream: String,
    /// The destination with its stream key hidden.
    pub url: String,
    /// `idle`, `connecting`, `live`, `backoff` or `failed`.
    pub state: String,
    pub transcode: bool,
    pub enhanced: bool,
    /// Set by the configuration file (cannot be removed over the API).
    pub from_config: bool,
    pub bytes: u64,
    pub bitrate_bps: u64,
    pub frames: u64,
    pub dropped_frames: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub uptime_s: Option<u64>,
}

/// A restream target to add.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewRestream {
    pub stream: String,
    /// `rtmp://` or `rtmps://` URL including the stream key.
    pub url: String,
    #[serde(default)]
    pub transcode: bool,
    #[serde(default)]
    pub enhanced: bool,
}

/// Server-wide figures for the dashboard.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ServerStats {
    pub version: String,
    pub uptime_s: u64,
    /// Process CPU use, in percent of one core.
    pub cpu_pct: f64,
    /// Resident memory.
    pub memory_bytes: u64,
    pub bandwidth_in_bps: u64,
    pub bandwidth_out_bps: u64,
    pub streams: usize,
    pub viewers: usize,
}

/// Counters for `/metrics`; all monotonic unless named as a gauge.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    pub streams: u64,
    pub publishers: u64,
    pub viewers: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_lost: u64,
    pub nacks_received: u64,
    pub plis_received: u64,
    pub plis_sent: u64,
    pub keyframe_cache_hits: u64,
    pub recordings_active: u64,
    pub recording_bytes_written: u64,
    /// (state, number of targets in it).
    pub restream_states: Vec<(String, u64)>,
    pub restream_reconnects: u64,
    pub process_cpu_seconds: f64,
    pub process_resident_bytes: u64,
}

/// An RTSP source the gateway pulls (a camera), with its live state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SourceInfo {
    pub stream: String,
    /// The camera's URL without its credentials.
    pub url: String,
    /// `tcp`, `udp` or `auto`.
    pub transport: String,
    /// Connected only while someone watches or restreams the stream.
    pub on_demand: bool,
    /// `idle`, `connecting`, `live`, `retrying` or `failed`.
    pub state: String,
    /// The latest failure, kept after recovery.
    pub last_error: Option<String>,
    /// Seconds the current connection has been live.
    pub connected_s: Option<u64>,
    /// Reconnection attempts after failures.
    pub reconnects: u64,
    /// Codecs of the current or last connection.
    pub codecs: Vec<String>,
    /// Set in the configuration file: removable there only.
    pub from_config: bool,
}

/// An RTSP source to add: the gateway pulls `url` and publishes it as
/// `stream`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct NewSource {
    pub stream: String,
    /// `rtsp://[user:pass@]host[:port]/path`; the credentials are kept for
    /// the camera and never shown again.
    pub url: String,
    /// `tcp` (the default: works through NAT and firewalls), `udp` or
    /// `auto` (UDP, then TCP if UDP fails).
    #[serde(default)]
    pub transport: Option<String>,
    /// Connect only while someone watches, records or restreams it.
    #[serde(default)]
    pub on_demand: bool,
}

// Hand-written so a stray `{:?}` can never print the camera's password.
impl std::fmt::Debug for NewSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSource")
            .field("stream", &self.stream)
            .field("transport", &self.transport)
            .field("on_demand", &self.on_demand)
            .finish_non_exhaustive()
    }
}

/// Why the gateway could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the gateway is busy or shutting down: {0}")]
    Unavailable(String),
}

/// The running gateway, as the panel drives it.
#[async_trait::async_trait]
pub trait Control: Send + Sync + 'static {
    async fn streams(&self) -> Result<Vec<StreamInfo>, ControlError>;
    async fn viewers(&self, stream: &str) -> Result<Vec<ViewerInfo>, ControlError>;
    /// Ends one WHEP session.
    async fn kick_viewer(&self, stream: &str, session: &str) -> Result<(), ControlError>;
    /// Ends the stream's WHIP session.
    async fn stop_publisher(&self, stream: &str) -> Result<(), ControlError>;
    /// Ends every session that authenticated with the key; returns how many.
    async fn end_sessions_with_key(&self, key_id: i64) -> Result<usize, ControlError>;
    async fn set_recording(&self, stream: &str, active: bool) -> Result<(), ControlError>;

    fn recordings(
        &self,
        filter: &RecordingFilter,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<RecordingInfo>, u64), ControlError>;
    fn recording(&self, id: i64) -> Result<RecordingInfo, ControlError>;
    fn recording_file(&self, id: i64) -> Result<RecordingFile, ControlError>;
    fn delete_recording(&self, id: i64) -> Result<(), ControlError>;
    fn recording_totals(&self) -> Result<RecordingTotals, ControlError>;

    fn restreams(&self, stream: Option<&str>) -> Vec<RestreamInfo>;
    async fn add_restream(&self, new: &NewRestream) -> Result<RestreamInfo, ControlError>;
    fn remove_restream(&self, id: u64) -> Result<(), ControlError>;
    /// Reconnects now instead of waiting out the backoff.
    fn retry_restream(&self, id: u64) -> Result<(), ControlError>;

    /// RTSP sources: the configuration's, then those added over the API.
    fn sources(&self) -> Vec<SourceInfo>;
    /// Starts pulling a source (kept across restarts by the caller).
    fn add_source(&self, new: &NewSource) -> Result<SourceInfo, ControlError>;
    /// Stops and forgets a source added over the API.
    fn remove_source(&self, stream: &str) -> Result<(), ControlError>;

    async fn server_stats(&self) -> ServerStats;
    async fn metrics(&self) -> MetricsSnapshot;
}
