//! The per-stream hub: what a publisher sends, and who receives it.
//!
//! The hub is plain data owned by the media thread. It knows each stream's
//! tracks and simulcast layers, keeps the last GOP per layer, picks the layer
//! that viewers get, rate-limits keyframe requests to the publisher, and
//! holds the internal subscribers. Sending bytes is the media plane's job.

pub mod gop;
pub mod rewrite;
pub mod subscriber;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use recorder::codec::MediaKind;
use rtc::rtp::Packet;

use crate::stream_name::StreamName;
use gop::GopCache;
use subscriber::{Audience, HubEvent, SubscriberSender, TrackDescription};

/// Identifies a peer connection on the media thread.
pub type PeerKey = u64;

/// Minimum spacing of keyframe requests sent upstream per track, however
/// many viewers ask: a storm of PLIs makes encoders spend their whole
/// bitrate on keyframes.
pub const PLI_INTERVAL: Duration = Duration::from_millis(500);

/// How often the active simulcast layer is reconsidered.
const LAYER_REVIEW: Duration = Duration::from_secs(1);

/// One simulcast layer (or the only encoding) of a track.
pub struct Layer {
    pub rid: Option<String>,
    pub ssrc: u32,
    pub gop: GopCache,
    bytes_window: u64,
    pub bitrate_bps: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Packets that never arrived, from gaps in the sequence numbers.
    pub lost: u64,
    last_seq: Option<u16>,
    /// Frames (marker bits) since the last review, and the rate from them.
    frames_window: u64,
    pub fps: f64,
}

/// A published track.
pub struct HubTrack {
    /// Groups the simulcast layers of one incoming transceiver.
    pub group: String,
    /// Whether the current publisher feeds this track (false between a
    /// publisher takeover and the new publisher's first packet).
    pub bound: bool,
    pub description: TrackDescription,
    pub layers: Vec<Layer>,
    pub active: usize,
    /// Layer to switch to at its next keyframe.
    pending: Option<usize>,
    last_pli: Option<Instant>,
}

impl HubTrack {
    pub fn kind(&self) -> MediaKind {
        self.description.codec.kind()
    }
}

/// What the media plane should do with one received packet.
pub struct Routed {
    /// Forward to live viewers.
    pub forward: bool,
    /// The packet starts a keyframe on the forwarded layer.
    pub keyframe: bool,
}

pub struct Stream {
    pub name: StreamName,
    pub publisher: Option<PeerKey>,
    pub started: Instant,
    pub tracks: Vec<HubTrack>,
    /// Media sections the publisher offered, so viewers can wait until
    /// every one has shown its codec.
    pub expected_tracks: usize,
    pub viewers: Vec<PeerKey>,
    subscribers: Vec<SubscriberSender>,
    last_layer_review: Instant,
    pub last_media: Instant,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// When a keyframe was last asked for on HLS's behalf.
    pub keyframe_forced_at: Option<Instant>,
}

impl Stream {
    fn new(name: StreamName, now: Instant) -> Self {
        Self {
            name,
            publisher: None,
            started: now,
            tracks: Vec::new(),
            expected_tracks: 0,
            viewers: Vec::new(),
            subscribers: Vec::new(),
            last_layer_review: now,
            last_media: now,
            packets_in: 0,
            bytes_in: 0,
            keyframe_forced_at: None,
        }
    }

    /// Whether every offered track has been seen, so viewers can be
    /// negotiated with the full set of codecs.
    pub fn tracks_ready(&self) -> bool {
        self.expected_tracks > 0
            && self.tracks.iter().filter(|t| t.bound).count() >= self.expected_tracks
    }

    /// A new publisher takes the stream over: its tracks will be matched to
    /// the existing ones (same kind and codec) so viewers continue.
    pub fn begin_publisher(&mut self) {
        for track in &mut self.tracks {
            track.bound = false;
            track.pending = None;
            for layer in &mut track.layers {
                layer.gop.clear();
            }
        }
    }

    /// Registers a track (or a new simulcast layer of one) when its first
    /// packet arrives; returns the track index.
    pub fn bind_layer(
        &mut self,
        group: &str,
        rid: Option<String>,
        ssrc: u32,
        description: TrackDescription,
    ) -> usize {
        let layer = Layer {
            rid,
            ssrc,
            gop: GopCache::default(),
            bytes_window: 0,
            bitrate_bps: 0,
            packets: 0,
            bytes: 0,
            lost: 0,
            last_seq: None,
            frames_window: 0,
            fps: 0.0,
        };
        if let Some(index) = self
            .tracks
            .iter()
            .position(|t| !t.bound && t.description == description)
        {
            // Publisher takeover: the new publisher's track replaces the old
            // one in place, so viewers' senders stay valid.
            let track = &mut self.tracks[index];
            track.group = group.to_owned();
            track.bound = true;
            track.layers = vec![layer];
            track.active = 0;
            return index;
        }
        if let Some(index) = self.tracks.iter().position(|t| t.group == group) {
            let track = &mut self.tracks[index];
            if let Some(existing) = track.layers.iter_mut().find(|l| l.rid == layer.rid) {
                // Same layer, new SSRC (publisher restarted its encoder).
                existing.ssrc = ssrc;
                existing.gop.clear();
            } else {
                track.layers.push(layer);
            }
            return index;
        }
        self.tracks.push(HubTrack {
            group: group.to_owned(),
            bound: true,
            description,
            layers: vec![layer],
            active: 0,
            pending: None,
            last_pli: None,
        });
        self.broadcast_tracks();
        self.tracks.len() - 1
    }

    /// Accounts a packet, caches it, and decides whether viewers get it.
    pub fn route(&mut self, track: usize, layer: usize, packet: &Packet, now: Instant) -> Routed {
        self.last_media = now;
        self.packets_in += 1;
        self.bytes_in += packet.payload.len() as u64;
        let Some(t) = self.tracks.get_mut(track) else {
            return Routed {
                forward: false,
                keyframe: false,
            };
        };
        let codec = t.description.codec;
        let Some(l) = t.layers.get_mut(layer) else {
            return Routed {
                forward: false,
                keyframe: false,
            };
        };
        l.packets += 1;
        l.bytes += packet.payload.len() as u64;
        l.bytes_window += packet.payload.len() as u64;
        let seq = packet.header.sequence_number;
        match l.last_seq {
            Some(prev) => {
                // Only forward steps count; a late (reordered or
                // retransmitted) packet is neither loss nor progress.
                let step = seq.wrapping_sub(prev);
                if (1..0x8000).contains(&step) {
                    l.lost += u64::from(step - 1);
                    l.last_seq = Some(seq);
                }
            }
            None => l.last_seq = Some(seq),
        }
        if packet.header.marker && codec.kind() == MediaKind::Video {
            l.frames_window += 1;
        }
        let keyframe = if codec.kind() == MediaKind::Video {
            l.gop.push(codec, packet)
        } else {
            false
        };
        if t.pending == Some(layer) && keyframe {
            t.active = layer;
            t.pending = None;
        }
        let forward = t.active == layer;
        let to_sinks = t.description.audience != Audience::Viewers;
        if forward && to_sinks && !self.subscribers.is_empty() {
            self.subscribers.retain(|s| {
                s.send(HubEvent::Rtp {
                    track,
                    packet: packet.clone(),
                    arrived: now,
                })
            });
        }
        Routed {
            forward,
            keyframe: keyframe && forward,
        }
    }

    /// Passes a publisher's sender report to the subscribers, for every
    /// layer: a subscriber that follows a simulcast switch needs the new
    /// layer's clock mapping before its first packet.
    pub fn sender_report(
        &mut self,
        track: usize,
        layer: usize,
        ssrc: u32,
        ntp_time: u64,
        rtp_time: u32,
    ) {
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        if t.layers.get(layer).is_none() || self.subscribers.is_empty() {
            return;
        }
        self.subscribers.retain(|s| {
            s.send(HubEvent::SenderReport {
                track,
                ssrc,
                ntp_time,
                rtp_time,
            })
        });
    }

    /// Whether anyone internal (a recording, a restream) is subscribed.
    pub fn has_subscribers(&self) -> bool {
        !self.subscribers.is_empty()
    }

    /// Once a second, re-measures layer bitrates and moves each simulcast
    /// track towards its highest-bitrate layer (switching at a keyframe).
    pub fn review_layers(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_layer_review);
        if elapsed < LAYER_REVIEW {
            return;
        }
        self.last_layer_review = now;
        let secs = elapsed.as_secs_f64().max(0.001);
        for track in &mut self.tracks {
            for layer in &mut track.layers {
                layer.bitrate_bps = (layer.bytes_window as f64 * 8.0 / secs) as u64;
                layer.bytes_window = 0;
                layer.fps = layer.frames_window as f64 / secs;
                layer.frames_window = 0;
            }
            if track.layers.len() < 2 {
                continue;
            }
            let best = track
                .layers
                .iter()
                .enumerate()
                .max_by_key(|(_, l)| l.bitrate_bps)
                .map(|(i, _)| i)
                .unwrap_or(0);
            // Hysteresis: only move when the best layer clearly carries more,
            // so two similar layers do not flap.
            let active_rate = track.layers[track.active].bitrate_bps;
            if best != track.active && track.layers[best].bitrate_bps > active_rate * 5 / 4 {
                track.pending = Some(best);
            }
        }
    }

    /// Whether a keyframe request may go upstream for `track` now; records
    /// it if so.
    pub fn allow_pli(&mut self, track: usize, now: Instant) -> bool {
        let Some(t) = self.tracks.get_mut(track) else {
            return false;
        };
        if t.last_pli
            .is_some_and(|last| now.duration_since(last) < PLI_INTERVAL)
        {
            return false;
        }
        t.last_pli = Some(now);
        true
    }

    /// Adds an internal subscriber. One that joins a running stream gets
    /// the cached GOP of each video track first, so it can start at once
    /// instead of waiting for the publisher's next keyframe.
    pub fn subscribe(&mut self, sender: SubscriberSender, now: Instant) {
        if !self.tracks.is_empty() {
            sender.send(HubEvent::Tracks(self.descriptions()));
        }
        for (index, track) in self.tracks.iter().enumerate() {
            let Some(layer) = track.layers.get(track.active) else {
                continue;
            };
            if track.kind() != MediaKind::Video || !layer.gop.has_keyframe() {
                continue;
            }
            for packet in layer.gop.packets() {
                sender.send(HubEvent::Rtp {
                    track: index,
                    packet: packet.clone(),
                    arrived: now,
                });
            }
        }
        self.subscribers.push(sender);
    }

    fn descriptions(&self) -> Vec<TrackDescription> {
        self.tracks.iter().map(|t| t.description.clone()).collect()
    }

    fn broadcast_tracks(&mut self) {
        let tracks = self.descriptions();
        self.subscribers
            .retain(|s| s.send(HubEvent::Tracks(tracks.clone())));
    }

    /// Ends the publisher's part: subscribers get end-of-stream.
    pub fn end(&mut self) {
        for s in self.subscribers.drain(..) {
            s.send(HubEvent::EndOfStream);
        }
    }

    pub fn codec_names(&self) -> Vec<String> {
        self.tracks
            .iter()
            .map(|t| t.description.codec.to_string())
            .collect()
    }
}

/// Every stream, by name.
#[derive(Default)]
pub struct Hub {
    streams: HashMap<StreamName, Stream>,
}

impl Hub {
    pub fn get(&self, name: &StreamName) -> Option<&Stream> {
        self.streams.get(name)
    }

    pub fn get_mut(&mut self, name: &StreamName) -> Option<&mut Stream> {
        self.streams.get_mut(name)
    }

    /// The stream, created if absent.
    pub fn entry(&mut self, name: &StreamName, now: Instant) -> &mut Stream {
        self.streams
            .entry(name.clone())
            .or_insert_with(|| Stream::new(name.clone(), now))
    }

    pub fn remove(&mut self, name: &StreamName) -> Option<Stream> {
        self.streams.remove(name)
    }

    pub fn streams(&self) -> impl Iterator<Item = &Stream> {
        self.streams.values()
    }

    pub fn streams_mut(&mut self) -> impl Iterator<Item = &mut Stream> {
        self.streams.values_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use recorder::codec::Codec;

    fn video() -> TrackDescription {
        TrackDescription {
            codec: Codec::H264,
            clock_rate: 90_000,
            channels: 0,
            fmtp: String::new(),
            audience: Default::default(),
        }
    }

    fn pkt(ssrc: u32, seq: u16, ts: u32, payload: &'static [u8]) -> Packet {
        let mut p = Packet::default();
        p.header.ssrc = ssrc;
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.payload = Bytes::from_static(payload);
        p
    }

    #[test]
    fn simulcast_switches_to_busiest_layer_at_keyframe() {
        let t0 = Instant::now();
        let mut stream = Stream::new(StreamName::parse("s").expect("valid"), t0);
        stream.bind_layer("1", Some("l".into()), 10, video());
        stream.bind_layer("1", Some("h".into()), 20, video());
        // Low layer carries little, high layer a lot.
        for i in 0..10u16 {
            stream.route(0, 0, &pkt(10, i, 0, &[0x41; 10]), t0);
            stream.route(0, 1, &pkt(20, i, 0, &[0x41; 100]), t0);
        }
        stream.review_layers(t0 + Duration::from_secs(1));
        let r = stream.route(0, 1, &pkt(20, 11, 3000, &[0x41]), t0);
        assert!(!r.forward, "no switch before a keyframe");
        let r = stream.route(0, 1, &pkt(20, 12, 6000, &[0x65]), t0);
        assert!(r.forward && r.keyframe);
        assert_eq!(stream.tracks[0].active, 1);
    }

    #[test]
    fn pli_is_rate_limited() {
        let t0 = Instant::now();
        let mut stream = Stream::new(StreamName::parse("s").expect("valid"), t0);
        stream.bind_layer("1", None, 10, video());
        assert!(stream.allow_pli(0, t0));
        assert!(!stream.allow_pli(0, t0 + Duration::from_millis(100)));
        assert!(stream.allow_pli(0, t0 + PLI_INTERVAL));
    }
}
