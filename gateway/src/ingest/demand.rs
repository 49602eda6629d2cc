//! Who needs an on-demand source: the media plane counts a stream's
//! consumers (viewers, viewers waiting for it, restream targets) and the
//! source connects while the count is above zero, plus a linger.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::stream_name::StreamName;

/// The plane's side: one counter per on-demand stream.
#[derive(Clone, Default)]
pub struct Demand {
    streams: Arc<HashMap<StreamName, watch::Sender<usize>>>,
}

impl Demand {
    /// Counters for `streams`; each source gets its receiver.
    pub fn new(
        streams: impl IntoIterator<Item = StreamName>,
    ) -> (Self, HashMap<StreamName, watch::Receiver<usize>>) {
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        for stream in streams {
            let (tx, rx) = watch::channel(0);
            senders.insert(stream.clone(), tx);
            receivers.insert(stream, rx);
        }
        (
            Self {
                streams: Arc::new(senders),
            },
            receivers,
        )
    }

    pub fn is_on_demand(&self, stream: &StreamName) -> bool {
        self.streams.contains_key(stream)
    }

    pub fn streams(&self) -> impl Iterator<Item = &StreamName> {
        self.streams.keys()
    }

    /// Sets a stream's consumer count; a no-op if unchanged.
    pub fn set(&self, stream: &StreamName, consumers: usize) {
        if let Some(tx) = self.streams.get(stream) {
            tx.send_if_modified(|current| {
                let changed = *current != consumers;
                *current = consumers;
                changed
            });
        }
    }
}
