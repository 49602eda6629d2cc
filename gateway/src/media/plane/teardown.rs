//! Ending sessions and streams, periodic housekeeping, shutdown.

use std::time::Instant;

use super::*;

impl Plane {
    // ----- teardown ----------------------------------------------------------

    /// Removes a peer and everything that depends on it.
    pub(super) fn remove_peer(&mut self, key: PeerKey, now: Instant, why: &str) {
        let Some(mut peer) = self.peers.remove(&key) else {
            self.remove_ingest(key, now, why);
            return;
        };
        info!(session = %peer.session, stream = %peer.stream, role = ?peer.role, "session ended: {why}");
        peer.close();
        Self::flush(&self.egress, &mut self.stats, &mut peer);
        self.forget(key, &peer);
        match peer.role {
            Role::Viewer => {
                if let Some(stream) = self.hub.get_mut(&peer.stream) {
                    stream.viewers.retain(|v| *v != key);
                }
            }
            Role::Publisher => {
                let is_current = self
                    .hub
                    .get(&peer.stream)
                    .is_some_and(|s| s.publisher == Some(key));
                if is_current {
                    self.end_stream(&peer.stream, now);
                }
            }
        }
    }

    pub(super) fn forget(&mut self, key: PeerKey, peer: &Peer) {
        self.by_ufrag.remove(&peer.ufrag);
        self.by_session.remove(&peer.session);
        if let Some(addrs) = self.addrs_of.remove(&key) {
            for a in addrs {
                self.by_addr.remove(&a);
                if a.0 == Transport::Tcp {
                    self.egress.tcp.remove(&a.1);
                }
            }
        }
        if let Some(deadline) = peer.deadline {
            self.timers.remove(&(deadline, key));
        }
    }

    /// A publisher replaced by a new one: closed without ending the stream,
    /// so viewers stay and continue with the new publisher's media.
    pub(super) fn detach_publisher(&mut self, key: PeerKey, now: Instant) {
        let stream = self
            .peers
            .get(&key)
            .map(|p| p.stream.clone())
            .or_else(|| self.ingests.get(&key).map(|i| i.stream.clone()));
        if let Some(stream) = stream
            && let Some(s) = self.hub.get_mut(&stream)
        {
            s.publisher = None;
        }
        self.remove_peer(key, now, "replaced by a new publisher");
    }

    /// The publisher is gone: viewers' sessions end, subscribers get
    /// end-of-stream, the stream disappears.
    pub(super) fn end_stream(&mut self, stream_name: &StreamName, now: Instant) {
        let Some(mut stream) = self.hub.remove(stream_name) else {
            return;
        };
        stream.end();
        info!(stream = %stream_name, viewers = stream.viewers.len(), "stream ended");
        for viewer in stream.viewers.drain(..) {
            self.remove_peer(viewer, now, "stream ended");
        }
        let (gone, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| &p.stream == stream_name);
        self.pending = rest;
        for p in gone {
            let _ = p.reply.send(Err(SignalError::StreamNotLive));
        }
    }

    /// Asks the publishers of streams with HLS for a keyframe every
    /// [`HLS_KEYFRAME_INTERVAL`](crate::bridge::HLS_KEYFRAME_INTERVAL).
    fn force_keyframes(&mut self, now: Instant) {
        let mut due = Vec::new();
        for stream in self.hub.streams_mut() {
            if stream.publisher.is_none() || !self.bridge.wants_keyframes(&stream.name) {
                continue;
            }
            if stream
                .keyframe_forced_at
                .is_some_and(|at| now.duration_since(at) < crate::bridge::HLS_KEYFRAME_INTERVAL)
            {
                continue;
            }
            stream.keyframe_forced_at = Some(now);
            due.push((stream.name.clone(), stream.tracks.len()));
        }
        for (name, tracks) in due {
            for track in 0..tracks {
                self.request_keyframe(&name, track, now);
            }
        }
    }

    pub(super) fn tick(&mut self, now: Instant) {
        let media_timeout = Duration::from_secs(self.config.media_timeout_secs);
        let mut silent = Vec::new();
        for stream in self.hub.streams_mut() {
            stream.review_layers(now);
            if let Some(publisher) = stream.publisher
                && now.duration_since(stream.last_media) > media_timeout
            {
                silent.push(publisher);
            }
        }
        for key in silent {
            self.remove_peer(key, now, "no media from publisher");
        }
        self.force_keyframes(now);
        let on_demand: Vec<StreamName> = self.demand.streams();
        for stream in on_demand {
            self.update_demand(&stream);
        }
        let stale: Vec<PeerKey> = self
            .peers
            .values()
            .filter(|p| {
                p.state == PeerState::Closed
                    || (p.connected_at.is_none() && now.duration_since(p.created) > CONNECT_TIMEOUT)
            })
            .map(|p| p.key)
            .collect();
        for key in stale {
            self.remove_peer(key, now, "never connected or closed");
        }
        // Viewers that waited long enough get whatever tracks are known.
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| now >= p.deadline);
        self.pending = rest;
        for p in due {
            let result = self.add_viewer(&p.stream, &p.offer, &p.summary, p.client, now);
            let _ = p.reply.send(result);
        }
    }

    /// Counts who needs an on-demand source now: viewers, viewers waiting
    /// for it, restream targets.
    pub(super) fn update_demand(&self, stream_name: &StreamName) {
        let viewers = self.hub.get(stream_name).map_or(0, |s| s.viewers.len());
        let waiting = self
            .pending
            .iter()
            .filter(|p| &p.stream == stream_name)
            .count();
        let restreams = usize::from(self.bridge.targets().has_targets_for(stream_name));
        self.demand.set(stream_name, viewers + waiting + restreams);
    }

    pub(super) fn shutdown(&mut self) {
        let now = Instant::now();
        let keys: Vec<PeerKey> = self
            .peers
            .keys()
            .chain(self.ingests.keys())
            .copied()
            .collect();
        for key in keys {
            self.remove_peer(key, now, "server shutting down");
        }
        for p in self.pending.drain(..) {
            let _ = p.reply.send(Err(SignalError::ShuttingDown));
        }
        debug!(
            unknown = self.stats.unknown_datagrams,
            send_errors = self.stats.send_errors,
            "media plane totals"
        );
    }
}
