//! RTSP pull sources: IP cameras and RTSP servers, pulled by the gateway
//! (retina is the client) and published into the hub like any publisher.
//!
//! Each configured source gets a supervisor task ([`supervisor`]) that
//! connects while the stream is wanted, reconnects after failures with a
//! backoff, and keeps the stream's Feed across short outages.

mod backoff;
mod linger;
mod pump;
#[cfg(test)]
mod server_tests;
mod session;
mod source_url;
mod status;
mod supervisor;
mod tracks;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use retina::client::SessionGroup;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info};

use self::linger::DemandWatch;
pub use self::source_url::UrlError;
use self::source_url::{SourceUrl, scrub_credentials};
use self::status::StatusCell;
pub use self::status::{SourceState, SourceStatus};
use self::supervisor::Source;
use crate::config::{Config, SourceConfig, SourceTransport};
use crate::http::MediaHandle;
use crate::ingest::demand::Demand;
use crate::stream_name::StreamName;

/// Why a source could not be added or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("invalid stream name")]
    InvalidStream,
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("stream {0} already has a source")]
    Exists(String),
    #[error("no source for stream {0}")]
    NotFound(String),
    #[error("this source comes from the configuration file; remove it there")]
    FromConfig,
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// The sources, running: those of the configuration, then those added
/// over the API.
#[derive(Clone)]
pub struct Sources {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Mutex<Entries>,
    media: MediaHandle,
    /// The plane's consumer counters, which on-demand sources register in.
    demand: Demand,
    linger: Duration,
    /// Supervisors run here, whichever thread adds them (API handlers run
    /// on the HTTP server's own workers).
    runtime: Handle,
    /// Every camera session, so shutdown can wait for their TEARDOWNs.
    sessions: Arc<SessionGroup>,
}

#[derive(Default)]
struct Entries {
    list: Vec<Entry>,
    shut_down: bool,
}

struct Entry {
    stream: String,
    status: StatusCell,
    from_config: bool,
    /// Turned true to stop this source's supervisor.
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Sources {
    /// One supervisor task per configured source, spawned on the current
    /// tokio runtime (call it inside one), which later additions use too.
    /// A configured source that cannot start is listed as failed.
    pub fn start(config: &Config, media: MediaHandle, demand: Demand) -> Sources {
        let sources = Sources {
            inner: Arc::new(Inner {
                entries: Mutex::new(Entries::default()),
                media,
                demand,
                linger: Duration::from_secs(config.source_linger_secs),
                runtime: Handle::current(),
                sessions: Arc::new(SessionGroup::default().named("rtsp-sources".to_owned())),
            }),
        };
        for source in &config.sources {
            if let Err(err) = sources.add_entry(source, true) {
                error!(stream = %source.stream, "RTSP source not started: {err}");
                let status = StatusCell::new(initial_status(source, None, true));
                status.failed(err.to_string());
                let (stop, _) = watch::channel(true);
                sources.entries().list.push(Entry {
                    stream: source.stream.clone(),
                    status,
                    from_config: true,
                    stop,
                    task: None,
                });
            }
        }
        sources
    }

    /// Adds a source at run time (the API): it starts at once, or with its
    /// first consumer when on demand.
    pub fn add(&self, source: &SourceConfig) -> Result<SourceStatus, SourceError> {
        let status = self.add_entry(source, false)?;
        info!(stream = %source.stream, "RTSP source added");
        Ok(status)
    }

    /// Removes a source added at run time: its stream ends and its camera
    /// gets a TEARDOWN.
    pub fn remove(&self, stream: &str) -> Result<(), SourceError> {
        let entry = {
            let mut entries = self.entries();
            let index = entries
                .list
                .iter()
                .position(|e| e.stream == stream)
                .ok_or_else(|| SourceError::NotFound(stream.to_owned()))?;
            if entries.list[index].from_config {
                return Err(SourceError::FromConfig);
            }
            entries.list.remove(index)
        };
        entry.stop.send_replace(true);
        if let Some(name) = StreamName::parse(stream) {
            self.inner.demand.unregister(&name);
        }
        info!(stream, "RTSP source removed");
        Ok(())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn add_entry(
        &self,
        source: &SourceConfig,
        from_config: bool,
    ) -> Result<SourceStatus, SourceError> {
        let stream = StreamName::parse(&source.stream).ok_or(SourceError::InvalidStream)?;
        let url = SourceUrl::parse(&source.url)?;
        let mut entries = self.entries();
        if entries.shut_down {
            return Err(SourceError::ShuttingDown);
        }
        if entries.list.iter().any(|e| e.stream == source.stream) {
            return Err(SourceError::Exists(source.stream.clone()));
        }
        let status = StatusCell::new(initial_status(source, Some(&url), from_config));
        let demand = if source.on_demand {
            let consumers = self.inner.demand.register(stream.clone());
            DemandWatch::on_demand(consumers, self.inner.linger)
        } else {
            DemandWatch::always()
        };
        let (stop, stopped) = watch::channel(false);
        let supervised = Source {
            stream,
            url,
            transport: source.transport,
            media: self.inner.media.clone(),
            status: status.clone(),
            group: self.inner.sessions.clone(),
        };
        let task = self
            .inner
            .runtime
            .spawn(supervisor::run(supervised, demand, stopped));
        let snapshot = status.snapshot();
        entries.list.push(Entry {
            stream: source.stream.clone(),
            status,
            from_config,
            stop,
            task: Some(task),
        });
        Ok(snapshot)
    }

    /// For the API and admin panel: the configuration's sources in its
    /// order, then those added over the API.
    pub fn statuses(&self) -> Vec<SourceStatus> {
        self.entries()
            .list
            .iter()
            .map(|e| e.status.snapshot())
            .collect()
    }

    /// Stops every source: its stream ends and its camera gets a TEARDOWN.
    /// Waits at most `limit`; sources still busy then are abandoned.
    pub async fn shutdown(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let tasks: Vec<JoinHandle<()>> = {
            let mut entries = self.entries();
            entries.shut_down = true;
            entries
                .list
                .iter_mut()
                .filter_map(|e| {
                    e.stop.send_replace(true);
                    e.task.take()
                })
                .collect()
        };
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                // Aborting drops its session, which still sends TEARDOWN.
                task.abort();
            }
        }
        match tokio::time::timeout_at(deadline, self.inner.sessions.await_teardown()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => debug!(
                "RTSP TEARDOWN failed: {}",
                scrub_credentials(&err.to_string())
            ),
            Err(_) => debug!("RTSP TEARDOWN unfinished at shutdown"),
        }
    }
}

fn initial_status(
    source: &SourceConfig,
    url: Option<&SourceUrl>,
    from_config: bool,
) -> SourceStatus {
    SourceStatus {
        stream: source.stream.clone(),
        url: match url {
            Some(url) => url.public.clone(),
            // Unusable, but shown so the operator can see which: without
            // userinfo and query, which may hold the password.
            None => {
                let without_query = source.url.split(['?', '#']).next().unwrap_or_default();
                scrub_credentials(without_query)
            }
        },
        transport: match source.transport {
            SourceTransport::Tcp => "tcp",
            SourceTransport::Udp => "udp",
            SourceTransport::Auto => "auto",
        },
        on_demand: source.on_demand,
        state: if source.on_demand {
            SourceState::Idle
        } else {
            SourceState::Connecting
        },
        last_error: None,
        connected_s: None,
        reconnects: 0,
        codecs: Vec::new(),
        from_config,
    }
}
