//! The admin panel's view of the running gateway: [`web_admin::Control`]
//! implemented over the media plane, the recordings and the bridge.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use recorder::catalog::{ListQuery, Recording, RecordingState};
use web_admin::control::{
    MetricsSnapshot, NewRestream, NewSource, RecordingFile, RecordingFilter, RecordingInfo,
    RecordingTotals, RestreamInfo, ServerStats, SourceInfo, StreamInfo, ViewerInfo,
};
use web_admin::{Control, ControlError};

use crate::bridge::Bridge;
use crate::bridge::targets::{NewTarget, TargetError, TargetJson};
use crate::config::{SourceConfig, SourceTransport};
use crate::http::MediaHandle;
use crate::ingest::rtsp::{SourceError, SourceState, SourceStatus, Sources};
use crate::recording::Recordings;
use crate::signal::{Command, Inspection, SessionId, SessionSelector, SignalError};
use crate::stream_name::StreamName;

pub struct GatewayControl {
    media: MediaHandle,
    recordings: Recordings,
    bridge: Bridge,
    sources: Sources,
    started: Instant,
    rates: Mutex<RateSampler>,
    /// Last seen size per recording, so bytes written only ever grow even
    /// when recordings are deleted.
    written: Mutex<(HashMap<i64, u64>, u64)>,
}

/// Turns counters into rates between two readings.
#[derive(Default)]
struct RateSampler {
    last: Option<(Instant, u64, u64, f64)>,
    bandwidth_in_bps: u64,
    bandwidth_out_bps: u64,
    cpu_pct: f64,
}

/// Shortest interval rates are computed over: two dashboards asking at
/// once must not see a rate from a few milliseconds.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(500);

fn signal_error(err: SignalError) -> ControlError {
    match err {
        SignalError::StreamNotLive => ControlError::NotFound("live stream"),
        SignalError::UnknownSession => ControlError::NotFound("session"),
        other => ControlError::Unavailable(other.to_string()),
    }
}

fn stream_name(raw: &str) -> Result<StreamName, ControlError> {
    StreamName::parse(raw).ok_or(ControlError::NotFound("live stream"))
}

fn restream_info(t: TargetJson) -> RestreamInfo {
    RestreamInfo {
        id: t.id,
        stream: t.stream,
        url: t.url,
        state: t.state.to_owned(),
        transcode: t.transcode,
        enhanced: t.enhanced,
        from_config: t.origin == "config",
        bytes: t.bytes_sent,
        bitrate_bps: t.bitrate_bps,
        frames: t.video_frames_sent + t.audio_frames_sent,
        dropped_frames: t.dropped_frames,
        reconnects: t.reconnects,
        last_error: t.last_error,
        uptime_s: t.uptime_s,
    }
}

fn recording_info(r: &Recording) -> RecordingInfo {
    RecordingInfo {
        id: r.id,
        stream: r.stream.clone(),
        container: r.container.as_str().to_owned(),
        file_name: r.file_name(),
        state: r.state.as_str().to_owned(),
        started_at_ms: r.started_at_ms,
        ended_at_ms: r.ended_at_ms,
        duration_ms: r.duration_ms,
        video_codec: r.video_codec.clone(),
        audio_codec: r.audio_codec.clone(),
        width: r.width,
        height: r.height,
        size_bytes: r.size_bytes,
        dropped_frames: r.dropped_frames,
        error: r.error.clone(),
        download_url: format!("/api/v1/recordings/{}/download", r.id),
    }
}

fn catalog_error(err: recorder::catalog::CatalogError) -> ControlError {
    tracing::warn!("recordings catalog: {err}");
    ControlError::Unavailable("recordings catalog error".into())
}

impl GatewayControl {
    pub fn new(
        media: MediaHandle,
        recordings: Recordings,
        bridge: Bridge,
        sources: Sources,
    ) -> Self {
        Self {
            media,
            recordings,
            bridge,
            sources,
            started: Instant::now(),
            rates: Mutex::new(RateSampler::default()),
            written: Mutex::new((HashMap::new(), 0)),
        }
    }

    async fn inspect(&self) -> Result<Inspection, ControlError> {
        self.media
            .request(|reply| Command::Inspect { reply })
            .await
            .map_err(signal_error)
    }

    async fn end(&self, selector: SessionSelector) -> Result<usize, ControlError> {
        self.media
            .request(|reply| Command::EndSessions { selector, reply })
            .await
            .map_err(signal_error)
    }

    fn catalog_row(&self, id: i64) -> Result<Recording, ControlError> {
        self.recordings
            .catalog()
            .get(id)
            .map_err(catalog_error)?
            .ok_or(ControlError::NotFound("recording"))
    }

    /// Grows the bytes-written counter by what recordings wrote since the
    /// last reading.
    fn recording_bytes_written(&self) -> u64 {
        let rows = self
            .recordings
            .catalog()
            .in_state(RecordingState::Recording)
            .unwrap_or_default();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, total) = &mut *written;
        let mut live = HashMap::with_capacity(rows.len());
        for row in rows {
            let before = seen.get(&row.id).copied().unwrap_or(0);
            *total += row.size_bytes.saturating_sub(before);
            live.insert(row.id, row.size_bytes.max(before));
        }
        *seen = live;
        *total
    }
}

#[web_admin::async_trait]
impl Control for GatewayControl {
    async fn streams(&self) -> Result<Vec<StreamInfo>, ControlError> {
        let mut streams = self.inspect().await?.streams;
        for stream in &mut streams {
            if let Some(name) = StreamName::parse(&stream.name) {
                stream.recording.active = self.recordings.is_recording(&name);
                stream.restreams = self
                    .bridge
                    .targets()
                    .list(Some(&name))
                    .into_iter()
                    .map(restream_info)
                    .collect();
            }
        }
        Ok(streams)
    }

    async fn viewers(&self, stream: &str) -> Result<Vec<ViewerInfo>, ControlError> {
        let inspection = self.inspect().await?;
        if !inspection.streams.iter().any(|s| s.name == stream) {
            return Err(ControlError::NotFound("live stream"));
        }
        Ok(inspection
            .viewers
            .into_iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, v)| v)
            .collect())
    }

    async fn kick_viewer(&self, stream: &str, session: &str) -> Result<(), ControlError> {
        let stream = stream_name(stream)?;
        let session = SessionId::parse(session).ok_or(ControlError::NotFound("session"))?;
        match self
            .end(SessionSelector::Viewer { stream, session })
            .await?
        {
            0 => Err(ControlError::NotFound("viewer session")),
            _ => Ok(()),
        }
    }

    async fn stop_publisher(&self, stream: &str) -> Result<(), ControlError> {
        let stream = stream_name(stream)?;
        match self.end(SessionSelector::Publisher(stream)).await? {
            0 => Err(ControlError::NotFound("live stream")),
            _ => Ok(()),
        }
    }

    async fn end_sessions_with_key(&self, key_id: i64) -> Result<usize, ControlError> {
        self.end(SessionSelector::Key(key_id)).await
    }

    async fn set_recording(&self, stream: &str, active: bool) -> Result<(), ControlError> {
        let stream = stream_name(stream)?;
        if !active {
            return if self.recordings.stop(&stream) {
                Ok(())
            } else {
                Err(ControlError::Conflict(
                    "the stream is not being recorded".into(),
                ))
            };
        }
        // A recording just stopped may still be finishing its file; the
        // new one starts once it has.
        self.recordings
            .wait_finished(&stream, Duration::from_secs(5))
            .await;
        self.media
            .request(|reply| Command::StartRecording { stream, reply })
            .await
            .and_then(|r| r)
            .map_err(signal_error)
    }

    fn recordings(
        &self,
        filter: &RecordingFilter,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<RecordingInfo>, u64), ControlError> {
        let query = ListQuery {
            stream: filter.stream.clone().filter(|s| !s.is_empty()),
            from_ms: filter.from_ms,
            to_ms: filter.to_ms,
            limit,
            offset,
        };
        let (rows, total) = self
            .recordings
            .catalog()
            .list(&query)
            .map_err(catalog_error)?;
        Ok((rows.iter().map(recording_info).collect(), total))
    }

    fn recording(&self, id: i64) -> Result<RecordingInfo, ControlError> {
        self.catalog_row(id).map(|r| recording_info(&r))
    }

    fn recording_file(&self, id: i64) -> Result<RecordingFile, ControlError> {
        let r = self.catalog_row(id)?;
        Ok(RecordingFile {
            file_name: r.file_name(),
            extension: r.container.extension(),
            path: r.path,
        })
    }

    fn delete_recording(&self, id: i64) -> Result<(), ControlError> {
        let r = self.catalog_row(id)?;
        if r.state == RecordingState::Recording {
            return Err(ControlError::Conflict(
                "the recording is still being written; stop it first".into(),
            ));
        }
        match self.recordings.delete(id).map_err(catalog_error)? {
            true => Ok(()),
            false => Err(ControlError::NotFound("recording")),
        }
    }

    fn recording_totals(&self) -> Result<RecordingTotals, ControlError> {
        let (count, size_bytes) = self.recordings.catalog().totals().map_err(catalog_error)?;
        let (max_total_bytes, max_age_hours) = self.recordings.limits();
        Ok(RecordingTotals {
            count,
            size_bytes,
            max_total_bytes,
            max_age_hours,
        })
    }

    fn sources(&self) -> Vec<SourceInfo> {
        self.sources
            .statuses()
            .into_iter()
            .map(source_info)
            .collect()
    }

    fn add_source(&self, new: &NewSource) -> Result<SourceInfo, ControlError> {
        let transport = match new.transport.as_deref() {
            None | Some("tcp") => SourceTransport::Tcp,
            Some("udp") => SourceTransport::Udp,
            Some("auto") => SourceTransport::Auto,
            Some(_) => {
                return Err(ControlError::Invalid(
                    "transport must be tcp, udp or auto".into(),
                ));
            }
        };
        let config = SourceConfig {
            stream: new.stream.clone(),
            url: new.url.clone(),
            transport,
            on_demand: new.on_demand,
        };
        self.sources
            .add(&config)
            .map(source_info)
            .map_err(source_error)
    }

    fn remove_source(&self, stream: &str) -> Result<(), ControlError> {
        self.sources.remove(stream).map_err(source_error)
    }

    fn restreams(&self, stream: Option<&str>) -> Vec<RestreamInfo> {
        let targets = match stream {
            Some(raw) => match StreamName::parse(raw) {
                Some(name) => self.bridge.targets().list(Some(&name)),
                None => Vec::new(),
            },
            None => self.bridge.targets().list(None),
        };
        targets.into_iter().map(restream_info).collect()
    }

    async fn add_restream(&self, new: &NewRestream) -> Result<RestreamInfo, ControlError> {
        let stream = StreamName::parse(&new.stream)
            .ok_or_else(|| ControlError::Invalid("invalid stream name".into()))?;
        let entry = self
            .bridge
            .targets()
            .add(NewTarget {
                stream,
                url: new.url.clone(),
                transcode: new.transcode,
                enhanced: new.enhanced,
                ca_file: None,
                from_config: false,
            })
            .map_err(|err| match err {
                TargetError::TooMany => ControlError::Conflict(err.to_string()),
                other => ControlError::Invalid(other.to_string()),
            })?;
        // A live stream starts (or keeps) its bridge session now; one that
        // is not live gets it when it goes live.
        let stream = entry.stream.clone();
        match self
            .media
            .request(|reply| Command::StartBridge { stream, reply })
            .await
        {
            Ok(Ok(()) | Err(SignalError::StreamNotLive)) => {}
            Ok(Err(err)) | Err(err) => {
                tracing::warn!(id = entry.id, "restream target not started: {err}")
            }
        }
        self.bridge
            .targets()
            .get(entry.id)
            .map(restream_info)
            .ok_or(ControlError::NotFound("restream target"))
    }

    fn remove_restream(&self, id: u64) -> Result<(), ControlError> {
        let target = self
            .bridge
            .targets()
            .get(id)
            .ok_or(ControlError::NotFound("restream target"))?;
        if target.origin == "config" {
            return Err(ControlError::Conflict(
                "this target comes from the configuration file; remove it there".into(),
            ));
        }
        self.bridge.targets().remove(id);
        Ok(())
    }

    fn retry_restream(&self, id: u64) -> Result<(), ControlError> {
        if self.bridge.targets().restart(id) {
            Ok(())
        } else {
            Err(ControlError::NotFound("restream target"))
        }
    }

    async fn server_stats(&self) -> ServerStats {
        let inspection = self.inspect().await.unwrap_or_default();
        let m = &inspection.metrics;
        let cpu_seconds = process_cpu_seconds();
        let now = Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        match rates.last {
            Some((at, bytes_in, bytes_out, cpu)) if now.duration_since(at) >= MIN_RATE_WINDOW => {
                let secs = now.duration_since(at).as_secs_f64();
                rates.bandwidth_in_bps =
                    (m.bytes_in.saturating_sub(bytes_in) as f64 * 8.0 / secs) as u64;
                rates.bandwidth_out_bps =
                    (m.bytes_out.saturating_sub(bytes_out) as f64 * 8.0 / secs) as u64;
                rates.cpu_pct = ((cpu_seconds - cpu) / secs * 100.0).max(0.0);
                rates.last = Some((now, m.bytes_in, m.bytes_out, cpu_seconds));
            }
            Some(_) => {}
            None => rates.last = Some((now, m.bytes_in, m.bytes_out, cpu_seconds)),
        }
        ServerStats {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            cpu_pct: (rates.cpu_pct * 10.0).round() / 10.0,
            memory_bytes: resident_bytes(),
            bandwidth_in_bps: rates.bandwidth_in_bps,
            bandwidth_out_bps: rates.bandwidth_out_bps,
            streams: inspection.streams.len(),
            viewers: inspection.viewers.len(),
        }
    }

    async fn metrics(&self) -> MetricsSnapshot {
        let mut m = self.inspect().await.map(|i| i.metrics).unwrap_or_default();
        m.recordings_active = self.recordings.active_count() as u64;
        m.recording_bytes_written = self.recording_bytes_written();
        let mut states: HashMap<String, u64> = HashMap::new();
        for target in self.bridge.targets().list(None) {
            *states.entry(target.state.to_owned()).or_default() += 1;
            m.restream_reconnects += target.reconnects;
        }
        let mut states: Vec<_> = states.into_iter().collect();
        states.sort();
        m.restream_states = states;
        m.process_cpu_seconds = process_cpu_seconds();
        m.process_resident_bytes = resident_bytes();
        m
    }
}

/// User plus system CPU time of the whole process.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Resident set size, from /proc (0 where unreadable).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

fn source_info(s: SourceStatus) -> SourceInfo {
    SourceInfo {
        stream: s.stream,
        url: s.url,
        transport: s.transport.to_owned(),
        on_demand: s.on_demand,
        state: match s.state {
            SourceState::Idle => "idle",
            SourceState::Connecting => "connecting",
            SourceState::Live => "live",
            SourceState::Retrying => "retrying",
            SourceState::Failed => "failed",
        }
        .to_owned(),
        last_error: s.last_error,
        connected_s: s.connected_s,
        reconnects: s.reconnects,
        codecs: s.codecs,
        from_config: s.from_config,
    }
}

fn source_error(err: SourceError) -> ControlError {
    match err {
        SourceError::InvalidStream | SourceError::Url(_) => ControlError::Invalid(err.to_string()),
        SourceError::Exists(_) | SourceError::FromConfig => ControlError::Conflict(err.to_string()),
        SourceError::NotFound(_) => ControlError::NotFound("source"),
        SourceError::ShuttingDown => ControlError::Unavailable(err.to_string()),
    }
}
