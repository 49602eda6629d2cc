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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use retina::client::SessionGroup;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use self::linger::DemandWatch;
use self::source_url::{SourceUrl, scrub_credentials};
use self::status::StatusCell;
pub use self::status::{SourceState, SourceStatus};
use self::supervisor::Source;
use crate::config::{Config, SourceConfig, SourceTransport};
use crate::http::MediaHandle;
use crate::stream_name::StreamName;

/// The configured sources, running.
#[derive(Clone)]
pub struct Sources {
    inner: Arc<Inner>,
}

struct Inner {
    statuses: Vec<StatusCell>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Every camera session, so shutdown can wait for their TEARDOWNs.
    sessions: Arc<SessionGroup>,
}

impl Sources {
    /// One supervisor task per configured source, spawned on the current
    /// tokio runtime (call it inside one). `demand` holds the consumer
    /// counters of the on-demand sources.
    pub fn start(
        config: Arc<Config>,
        media: MediaHandle,
        mut demand: HashMap<StreamName, watch::Receiver<usize>>,
    ) -> Sources {
        let (stop, _) = watch::channel(false);
        let sessions = Arc::new(SessionGroup::default().named("rtsp-sources".to_owned()));
        let linger = Duration::from_secs(config.source_linger_secs);
        let mut statuses = Vec::with_capacity(config.sources.len());
        let mut tasks = Vec::with_capacity(config.sources.len());
        for source in &config.sources {
            let url = SourceUrl::parse(&source.url);
            let status = StatusCell::new(initial_status(source, url.as_ref().ok()));
            statuses.push(status.clone());
            let url = match url {
                Ok(url) => url,
                Err(err) => {
                    error!(stream = %source.stream, "RTSP source not started: {err}");
                    status.failed(err.to_string());
                    continue;
                }
            };
            let Some(stream) = StreamName::parse(&source.stream) else {
                error!(stream = %source.stream, "RTSP source not started: invalid stream name");
                status.failed("invalid stream name".to_owned());
                continue;
            };
            let demand = if source.on_demand {
                match demand.remove(&stream) {
                    Some(consumers) => DemandWatch::on_demand(consumers, linger),
                    None => {
                        warn!(%stream, "RTSP source is on demand but nothing counts its consumers; connecting now");
                        DemandWatch::always()
                    }
                }
            } else {
                DemandWatch::always()
            };
            let source = Source {
                stream,
                url,
                transport: source.transport,
                media: media.clone(),
                status,
                group: sessions.clone(),
            };
            tasks.push(tokio::spawn(supervisor::run(
                source,
                demand,
                stop.subscribe(),
            )));
        }
        Sources {
            inner: Arc::new(Inner {
                statuses,
                stop,
                tasks: Mutex::new(tasks),
                sessions,
            }),
        }
    }

    /// For the API and admin panel: one per configured source, in the
    /// configuration's order.
    pub fn statuses(&self) -> Vec<SourceStatus> {
        self.inner
            .statuses
            .iter()
            .map(StatusCell::snapshot)
            .collect()
    }

    /// Stops every source: its stream ends and its camera gets a TEARDOWN.
    /// Waits at most `limit`; sources still busy then are abandoned.
    pub async fn shutdown(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        self.inner.stop.send_replace(true);
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
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

fn initial_status(source: &SourceConfig, url: Option<&SourceUrl>) -> SourceStatus {
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
    }
}
