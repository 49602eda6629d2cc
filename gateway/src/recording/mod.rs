//! Recordings: which streams are recorded, the sessions that write them,
//! the catalog, crash recovery and retention.
//!
//! The media plane asks [`Recordings::start`] for a hub subscription when a
//! stream starts (or when the API asks); each recording then runs as a task
//! on the recorder runtime, away from the media thread and the HTTP
//! workers, so a slow disk delays nobody's media.

pub mod naming;
pub mod policy;
mod retention;
mod session;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use recorder::catalog::{Catalog, CatalogError};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::hub::subscriber::{self, SubscriberSender};
use crate::stream_name::StreamName;

/// Events queued per recording before the oldest are dropped: several
/// seconds of a high-bitrate stream, so a disk hiccup loses nothing.
const QUEUE_CAPACITY: usize = 16_384;

/// The database file (in the data directory) of the recordings catalog,
/// which the admin tables share.
pub const CATALOG_FILE: &str = "catalog.sqlite";

/// The recordings service; cheap to clone.
#[derive(Clone)]
pub struct Recordings {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    dir: PathBuf,
    catalog: Arc<Mutex<Catalog>>,
    runtime: tokio::runtime::Handle,
    active: Mutex<HashMap<StreamName, Active>>,
    /// Counts running sessions, for a shutdown that waits for them.
    running: watch::Sender<usize>,
    next_generation: std::sync::atomic::AtomicU64,
}

struct Active {
    stop: watch::Sender<bool>,
    /// Tells this session from a newer one of the same stream.
    generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingsError {
    #[error("cannot create the recordings directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl Recordings {
    /// Opens the catalog, recovers what a crash left behind and starts
    /// retention. Sessions run on `runtime`.
    pub fn open(
        config: Arc<Config>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, RecordingsError> {
        let dir = config.data_dir.join("recordings");
        std::fs::create_dir_all(&dir).map_err(|source| RecordingsError::Dir {
            path: dir.clone(),
            source,
        })?;
        let catalog = Catalog::open(&config.data_dir.join(CATALOG_FILE))?;
        retention::recover(&catalog);
        let (running, _) = watch::channel(0);
        let recordings = Self {
            inner: Arc::new(Inner {
                config,
                dir,
                catalog: Arc::new(Mutex::new(catalog)),
                runtime,
                active: Mutex::new(HashMap::new()),
                running,
                next_generation: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        recordings.spawn_retention();
        Ok(recordings)
    }

    pub fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.inner.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `stream` is recorded automatically when it starts.
    pub fn wants(&self, stream: &StreamName) -> bool {
        self.inner.config.record.records(stream.as_str())
    }

    fn active(&self) -> MutexGuard<'_, HashMap<StreamName, Active>> {
        self.inner.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts recording `stream`; returns the subscription the hub must
    /// feed, or `None` if it is being recorded already.
    ///
    /// `new_stream`: the stream has just gone live, so a session still
    /// registered belongs to its previous life and is only finishing its
    /// file (it has been sent the end of stream): the new one starts
    /// beside it rather than being lost.
    pub fn start(&self, stream: StreamName, new_stream: bool) -> Option<SubscriberSender> {
        let mut active = self.active();
        if active.contains_key(&stream) && !new_stream {
            return None;
        }
        let (tx, rx) = subscriber::channel(QUEUE_CAPACITY);
        let (stop, stop_rx) = watch::channel(false);
        let generation = self
            .inner
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        active.insert(stream.clone(), Active { stop, generation });
        drop(active);
        let config = &self.inner.config;
        let context = session::SessionContext {
            stream: stream.clone(),
            dir: self.inner.dir.clone(),
            format: config.record_format,
            segment: (config.record_segment_secs > 0)
                .then(|| Duration::from_secs(config.record_segment_secs)),
            segment_bytes: (config.record_segment_mb > 0)
                .then(|| config.record_segment_mb * 1024 * 1024),
            catalog: self.inner.catalog.clone(),
            on_reconnect: config.record_on_reconnect,
            faststart: config.record_faststart,
        };
        let this = self.clone();
        self.inner.running.send_modify(|n| *n += 1);
        self.inner.runtime.spawn(async move {
            session::run(context, rx, stop_rx).await;
            let mut active = this.active();
            if active
                .get(&stream)
                .is_some_and(|a| a.generation == generation)
            {
                active.remove(&stream);
            }
            drop(active);
            this.inner.running.send_modify(|n| *n -= 1);
            this.enforce_retention();
        });
        Some(tx)
    }

    /// Stops recording `stream`; false if it was not being recorded.
    pub fn stop(&self, stream: &StreamName) -> bool {
        match self.active().get(stream) {
            Some(active) => {
                let _ = active.stop.send(true);
                true
            }
            None => false,
        }
    }

    /// Whether `stream` is being recorded (and not just finishing a file
    /// after a stop).
    pub fn is_recording(&self, stream: &StreamName) -> bool {
        self.active()
            .get(stream)
            .is_some_and(|active| !*active.stop.borrow())
    }

    /// Recordings being written, finishing ones included.
    pub fn active_count(&self) -> usize {
        self.active().len()
    }

    /// Waits (at most `limit`) until a stopped recording of `stream` has
    /// finished its file, so a new one can start.
    pub async fn wait_finished(&self, stream: &StreamName, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.active().contains_key(stream) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The retention limits, for the panel's totals (0: none).
    pub fn limits(&self) -> (u64, u64) {
        let config = &self.inner.config;
        (
            config.record_max_total_mb * 1024 * 1024,
            config.record_max_age_hours,
        )
    }

    /// Waits until every session has closed its file (after the media
    /// plane ended the streams), at most `limit`.
    pub async fn wait_idle(&self, limit: Duration) {
        let mut running = self.inner.running.subscribe();
        let idle = running.wait_for(|n| *n == 0);
        if tokio::time::timeout(limit, idle).await.is_err() {
            warn!("recordings still open at shutdown");
        }
    }

    fn spawn_retention(&self) {
        let this = self.clone();
        self.inner.runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                this.enforce_retention();
            }
        });
    }

    fn enforce_retention(&self) {
        let config = &self.inner.config;
        let limits = retention::Limits {
            max_age: (config.record_max_age_hours > 0)
                .then(|| Duration::from_secs(config.record_max_age_hours * 3600)),
            max_total_bytes: (config.record_max_total_mb > 0)
                .then(|| config.record_max_total_mb * 1024 * 1024),
        };
        if limits.max_age.is_none() && limits.max_total_bytes.is_none() {
            return;
        }
        let deleted = retention::enforce(&self.catalog(), &limits);
        if deleted > 0 {
            info!(deleted, "retention deleted old recordings");
        }
    }

    /// Deletes a recording's file and row; false if there is no such id.
    pub fn delete(&self, id: i64) -> Result<bool, CatalogError> {
        let catalog = self.catalog();
        let Some(recording) = catalog.get(id)? else {
            return Ok(false);
        };
        if let Err(err) = std::fs::remove_file(&recording.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(id, "cannot delete {}: {err}", recording.path.display());
        }
        catalog.delete(id)
    }
}
