//! What the API and admin panel see of each source.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;

/// Where a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceState {
    /// On demand, and nobody needs the stream.
    Idle,
    /// Connecting to the camera, or connected and waiting for media.
    Connecting,
    /// Media flows.
    Live,
    /// The last attempt failed; waiting to reconnect.
    Retrying,
    /// The configuration cannot work (an unusable URL): no attempts.
    Failed,
}

/// One source, as of the call.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub stream: String,
    /// Without credentials: `rtsp://host:port/path`.
    pub url: String,
    /// As configured: `tcp`, `udp` or `auto`.
    pub transport: &'static str,
    pub on_demand: bool,
    pub state: SourceState,
    /// The latest failure, kept after recovery so a flapping camera
    /// shows why it flaps.
    pub last_error: Option<String>,
    /// Seconds the current connection has been live.
    pub connected_s: Option<u64>,
    /// Attempts made after a failure.
    pub reconnects: u64,
    /// The codecs of the current (or last) connection: `H264`, `AAC`…
    pub codecs: Vec<String>,
    /// Set in the configuration (removable there only), not over the API.
    pub from_config: bool,
}

/// A source's status, written by its supervisor and read by the API.
#[derive(Clone)]
pub struct StatusCell(Arc<Mutex<Inner>>);

struct Inner {
    status: SourceStatus,
    live_since: Option<Instant>,
}

impl StatusCell {
    pub fn new(status: SourceStatus) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            status,
            live_since: None,
        })))
    }

    pub fn snapshot(&self) -> SourceStatus {
        self.with(|inner| {
            let mut status = inner.status.clone();
            status.connected_s = inner.live_since.map(|since| since.elapsed().as_secs());
            status
        })
    }

    pub fn idle(&self) {
        self.set_state(SourceState::Idle);
    }

    pub fn connecting(&self) {
        self.set_state(SourceState::Connecting);
    }

    pub fn live(&self, codecs: Vec<String>) {
        self.with(|inner| {
            inner.status.state = SourceState::Live;
            inner.status.codecs = codecs;
            inner.live_since = Some(Instant::now());
        });
    }

    pub fn retrying(&self, error: String) {
        self.with(|inner| {
            inner.status.state = SourceState::Retrying;
            inner.status.last_error = Some(error);
            inner.live_since = None;
        });
    }

    pub fn failed(&self, error: String) {
        self.with(|inner| {
            inner.status.state = SourceState::Failed;
            inner.status.last_error = Some(error);
            inner.live_since = None;
        });
    }

    pub fn count_reconnect(&self) {
        self.with(|inner| inner.status.reconnects += 1);
    }

    fn set_state(&self, state: SourceState) {
        self.with(|inner| {
            inner.status.state = state;
            inner.live_since = None;
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic elsewhere leaves a status worth showing.
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_errors_are_kept() {
        let cell = StatusCell::new(SourceStatus {
            stream: "cam".into(),
            url: "rtsp://cam:554/x".into(),
            transport: "tcp",
            on_demand: false,
            state: SourceState::Idle,
            last_error: None,
            connected_s: None,
            reconnects: 0,
            codecs: Vec::new(),
            from_config: true,
        });
        cell.connecting();
        cell.retrying("no media for 10 s".into());
        cell.count_reconnect();
        cell.live(vec!["H264".into()]);
        let status = cell.snapshot();
        assert_eq!(status.state, SourceState::Live);
        assert_eq!(status.connected_s, Some(0));
        assert_eq!(status.last_error.as_deref(), Some("no media for 10 s"));
        assert_eq!(status.reconnects, 1);
        let json = serde_json::to_value(&status).expect("serializes");
        assert_eq!(json["state"], "live");
        cell.idle();
        assert_eq!(cell.snapshot().connected_s, None);
    }
}
