//! Publishers that are not WebRTC peers (RTMP encoders, RTSP cameras).
//!
//! Their connections live on the main runtime (`crate::ingest`), which
//! turns frames into RTP; here those packets enter the hub exactly as a WHIP
//! publisher's do, so viewers, the GOP cache, recordings and restreams see
//! no difference.

use std::time::Instant;

use tokio::sync::oneshot;

use super::*;
use crate::signal::{IngestCommand, IngestLease, IngestProtocol};

/// One RTMP or RTSP publisher holding a stream.
pub(in crate::media) struct IngestPublisher {
    pub stream: StreamName,
    pub protocol: IngestProtocol,
    pub client: ClientInfo,
    /// Named like a WHIP session, so the panel can show and end it.
    pub session: SessionId,
    pub started: Instant,
    /// Hub (track, layer) of each of the publisher's tracks, in the order
    /// of its last `Tracks`.
    routes: Vec<(usize, usize)>,
    /// What the operator should know about this publisher.
    pub notice: Option<String>,
    /// Completed (with the reason) when the plane ends the publisher.
    ended: Option<oneshot::Sender<String>>,
}

impl Plane {
    pub(super) fn ingest_open(
        &mut self,
        stream_name: StreamName,
        protocol: IngestProtocol,
        client: ClientInfo,
        now: Instant,
    ) -> Result<IngestLease, SignalError> {
        self.make_room(&stream_name, now)?;
        let key = self.next_key();
        let (ended, lease_ended) = oneshot::channel();
        // Tracks are declared once the publisher's codec headers arrive;
        // viewers wait for them like for a WHIP publisher's first packets.
        self.claim_stream(&stream_name, key, usize::MAX, now);
        info!(
            stream = %stream_name,
            protocol = protocol.label(),
            client = ?client.address,
            "publisher connected"
        );
        self.ingests.insert(
            key,
            IngestPublisher {
                stream: stream_name,
                protocol,
                client,
                session: SessionId::random(),
                started: now,
                routes: Vec::new(),
                notice: None,
                ended: Some(ended),
            },
        );
        Ok(IngestLease {
            key,
            ended: lease_ended,
        })
    }

    pub(super) fn on_ingest(&mut self, key: PeerKey, command: IngestCommand, now: Instant) {
        let Some(publisher) = self.ingests.get_mut(&key) else {
            return; // ended here already; the connection learns it from its lease
        };
        match command {
            IngestCommand::Tracks(descriptions) => {
                let stream_name = publisher.stream.clone();
                let Some(stream) = self.hub.get_mut(&stream_name) else {
                    return;
                };
                if stream.publisher != Some(key) {
                    return;
                }
                if !publisher.routes.is_empty() {
                    // New codec headers: the tracks are matched again, so
                    // viewers of unchanged ones continue.
                    stream.begin_publisher();
                }
                publisher.routes = descriptions
                    .into_iter()
                    .enumerate()
                    .map(|(index, description)| {
                        let codec = description.codec;
                        let group = format!("ingest-{key}-{index}");
                        let ssrc = u32::try_from(key & 0xffff_ffff).unwrap_or(0) ^ index as u32;
                        let track = stream.bind_layer(&group, None, ssrc, description);
                        info!(stream = %stream_name, track, %codec, "track bound");
                        (track, 0)
                    })
                    .collect();
                stream.expected_tracks = publisher.routes.len();
                if stream.tracks_ready() {
                    self.resolve_pending(&stream_name, now);
                }
            }
            IngestCommand::Media { track, packets } => {
                let Some(&(track, layer)) = publisher.routes.get(track) else {
                    return;
                };
                let stream_name = publisher.stream.clone();
                for packet in packets {
                    let Some(stream) = self.hub.get_mut(&stream_name) else {
                        return;
                    };
                    if stream.publisher != Some(key) {
                        return;
                    }
                    self.stats.packets_in += 1;
                    self.stats.bytes_in += packet.payload.len() as u64;
                    let routed = stream.route(track, layer, &packet, now);
                    if routed.forward {
                        self.fan_out(&stream_name, track, &packet, routed.keyframe, now);
                    }
                }
            }
            IngestCommand::SenderReport {
                track,
                ssrc,
                ntp_time,
                rtp_time,
            } => {
                let Some(&(track, layer)) = publisher.routes.get(track) else {
                    return;
                };
                if let Some(stream) = self.hub.get_mut(&publisher.stream) {
                    stream.sender_report(track, layer, ssrc, ntp_time, rtp_time);
                }
            }
            IngestCommand::Notice(notice) => publisher.notice = notice,
            IngestCommand::Close { why } => self.remove_ingest(key, now, &why),
        }
    }

    /// Ends an ingest publisher (it left, was replaced or kicked, or the
    /// server stops); its stream ends with it unless another publisher
    /// has taken over.
    pub(super) fn remove_ingest(&mut self, key: PeerKey, now: Instant, why: &str) {
        let Some(mut publisher) = self.ingests.remove(&key) else {
            return;
        };
        info!(
            stream = %publisher.stream,
            protocol = publisher.protocol.label(),
            "publisher ended: {why}"
        );
        if let Some(ended) = publisher.ended.take() {
            let _ = ended.send(why.to_owned());
        }
        let is_current = self
            .hub
            .get(&publisher.stream)
            .is_some_and(|s| s.publisher == Some(key));
        if is_current {
            self.end_stream(&publisher.stream, now);
        }
    }

    /// The ingest publishers `selector` picks, for [`Plane::end_sessions`].
    pub(super) fn select_ingests(&self, selector: &crate::signal::SessionSelector) -> Vec<PeerKey> {
        use crate::signal::SessionSelector;
        self.ingests
            .iter()
            .filter(|(_, i)| match selector {
                SessionSelector::Viewer { .. } => false,
                SessionSelector::Publisher(stream) => &i.stream == stream,
                SessionSelector::Key(id) => i.client.key_id == Some(*id),
            })
            .map(|(key, _)| *key)
            .collect()
    }
}
