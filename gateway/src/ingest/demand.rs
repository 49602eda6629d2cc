//! Who needs an on-demand source: the media plane counts a stream's
//! consumers (viewers, viewers waiting for it, restream targets) and the
//! source connects while the count is above zero, plus a linger.
//!
//! Sources come and go at run time (added over the API), so the set of
//! counted streams is shared behind a lock; the plane reads it once per
//! teardown tick and on a viewer's offer, never per packet.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use crate::stream_name::StreamName;

/// The plane's side: one counter per on-demand stream.
#[derive(Clone, Default)]
pub struct Demand {
    streams: Arc<RwLock<HashMap<StreamName, watch::Sender<usize>>>>,
}

impl Demand {
    /// Starts counting `stream`'s consumers (a source added at run time).
    pub fn register(&self, stream: StreamName) -> watch::Receiver<usize> {
        let (tx, rx) = watch::channel(0);
        self.streams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(stream, tx);
        rx
    }

    /// Stops counting `stream` (its source was removed).
    pub fn unregister(&self, stream: &StreamName) {
        self.streams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(stream);
    }

    pub fn is_on_demand(&self, stream: &StreamName) -> bool {
        self.streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(stream)
    }

    pub fn streams(&self) -> Vec<StreamName> {
        self.streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Sets a stream's consumer count; a no-op if unchanged.
    pub fn set(&self, stream: &StreamName, consumers: usize) {
        let streams = self.streams.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = streams.get(stream) {
            tx.send_if_modified(|current| {
                let changed = *current != consumers;
                *current = consumers;
                changed
            });
        }
    }
}
