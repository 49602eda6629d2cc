//! What the admin panel sees of the media plane, and the sessions it ends.

use std::time::Instant;

use web_admin::control::{PublisherInfo, RecordingStatus, StreamInfo, TrackInfo, ViewerInfo};

use super::*;
use crate::signal::{Inspection, SessionSelector};

/// Shortest window a viewer's bit rate is measured over.
const RATE_WINDOW: Duration = Duration::from_millis(900);

impl Plane {
    pub(super) fn inspect(&mut self, now: Instant) -> Inspection {
        let mut inspection = Inspection::default();
        for peer in self.peers.values_mut() {
            let (at, bytes) = peer.rate_sample;
            let elapsed = now.saturating_duration_since(at);
            if elapsed >= RATE_WINDOW {
                peer.bitrate_bps = (peer.bytes_out.saturating_sub(bytes) as f64 * 8.0
                    / elapsed.as_secs_f64()) as u64;
                peer.rate_sample = (now, peer.bytes_out);
            }
        }
        for stream in self.hub.streams() {
            let Some(publisher_key) = stream.publisher else {
                continue;
            };
            let publisher = self.peers.get(&publisher_key).map(|p| PublisherInfo {
                session: p.session.to_string(),
                address: p.client.address.map(|a| a.to_string()),
                user_agent: p.client.user_agent.clone(),
                software: p.client.user_agent.as_deref().and_then(software),
                connected_s: p
                    .connected_at
                    .map_or(0, |t| now.saturating_duration_since(t).as_secs()),
                key_id: p.client.key_id,
                protocol: "WHIP".to_owned(),
                notice: None,
            });
            let publisher = publisher.or_else(|| {
                self.ingests.get(&publisher_key).map(|i| PublisherInfo {
                    session: i.session.to_string(),
                    address: i.client.address.map(|a| a.to_string()),
                    user_agent: i.client.user_agent.clone(),
                    software: i.client.user_agent.clone(),
                    connected_s: now.saturating_duration_since(i.started).as_secs(),
                    key_id: i.client.key_id,
                    protocol: i.protocol.label().to_owned(),
                    notice: i.notice.clone(),
                })
            });
            let mut tracks = Vec::with_capacity(stream.tracks.len());
            let (mut bitrate, mut packets, mut lost) = (0, 0, 0);
            for track in &stream.tracks {
                let active = track.layers.get(track.active);
                let is_video = track.kind() == recorder::codec::MediaKind::Video;
                let size = active
                    .filter(|_| is_video)
                    .and_then(|l| picture_size(track.description.codec, l));
                tracks.push(TrackInfo {
                    kind: if is_video { "video" } else { "audio" }.to_owned(),
                    codec: track.description.codec.to_string(),
                    width: size.map(|(w, _)| w),
                    height: size.map(|(_, h)| h),
                    fps: active
                        .filter(|_| is_video)
                        .map(|l| (l.fps * 10.0).round() / 10.0),
                    bitrate_bps: track.layers.iter().map(|l| l.bitrate_bps).sum(),
                    layers: track.layers.len(),
                });
                for layer in &track.layers {
                    bitrate += layer.bitrate_bps;
                    packets += layer.packets;
                    lost += layer.lost;
                }
            }
            let expected = packets + lost;
            inspection.streams.push(StreamInfo {
                name: stream.name.to_string(),
                uptime_s: now.saturating_duration_since(stream.started).as_secs(),
                publisher,
                tracks,
                viewers: stream.viewers.len(),
                bitrate_in_bps: bitrate,
                packets_in: stream.packets_in,
                bytes_in: stream.bytes_in,
                packets_lost: lost,
                loss_pct: if expected > 0 {
                    (lost as f64 * 1000.0 / expected as f64).round() / 10.0
                } else {
                    0.0
                },
                recording: RecordingStatus::default(),
                restreams: Vec::new(),
            });
            for viewer in &stream.viewers {
                let Some(p) = self.peers.get(viewer) else {
                    continue;
                };
                inspection.viewers.push((
                    stream.name.to_string(),
                    ViewerInfo {
                        session: p.session.to_string(),
                        address: p.client.address.map(|a| a.to_string()),
                        user_agent: p.client.user_agent.clone(),
                        state: match p.state {
                            PeerState::Connecting => "connecting",
                            PeerState::Connected => "connected",
                            PeerState::Closed => "disconnected",
                        }
                        .to_owned(),
                        bitrate_bps: p.bitrate_bps,
                        bytes_out: p.bytes_out,
                        packets_out: p.packets_out,
                        loss_pct: (p.loss_pct * 10.0).round() / 10.0,
                        nacks: p.nacks,
                        plis: p.plis,
                        watching_s: p
                            .connected_at
                            .map_or(0, |t| now.saturating_duration_since(t).as_secs()),
                        key_id: p.client.key_id,
                    },
                ));
            }
        }
        let m = &mut inspection.metrics;
        m.streams = inspection.streams.len() as u64;
        m.publishers = self
            .peers
            .values()
            .filter(|p| p.role == Role::Publisher)
            .count() as u64
            + self.ingests.len() as u64;
        m.viewers = self
            .peers
            .values()
            .filter(|p| p.role == Role::Viewer)
            .count() as u64;
        m.packets_in = self.stats.packets_in;
        m.bytes_in = self.stats.bytes_in;
        m.packets_out = self.stats.packets_out;
        m.bytes_out = self.stats.bytes_out;
        m.packets_lost = self
            .hub
            .streams()
            .flat_map(|s| s.tracks.iter())
            .flat_map(|t| t.layers.iter())
            .map(|l| l.lost)
            .sum();
        m.nacks_received = self.stats.nacks_received;
        m.plis_received = self.stats.plis_received;
        m.plis_sent = self.stats.plis_sent;
        m.keyframe_cache_hits = self.stats.keyframe_cache_hits;
        inspection
    }

    /// Ends the sessions `selector` picks; returns how many.
    pub(super) fn end_sessions(&mut self, selector: &SessionSelector, now: Instant) -> usize {
        let mut keys: Vec<PeerKey> = self
            .peers
            .values()
            .filter(|p| match selector {
                SessionSelector::Viewer { stream, session } => {
                    p.role == Role::Viewer && &p.stream == stream && &p.session == session
                }
                SessionSelector::Publisher(stream) => {
                    p.role == Role::Publisher && &p.stream == stream
                }
                SessionSelector::Key(id) => p.client.key_id == Some(*id),
            })
            .map(|p| p.key)
            .collect();
        keys.extend(self.select_ingests(selector));
        for key in &keys {
            self.remove_peer(*key, now, "ended by the admin");
        }
        keys.len()
    }
}

/// The picture size of a layer's cached keyframe. Only the keyframe's own
/// packets are depacketized (it starts the GOP), about once a second per
/// dashboard: no per-packet cost.
fn picture_size(codec: recorder::codec::Codec, layer: &crate::hub::Layer) -> Option<(u32, u32)> {
    use recorder::rtp::{FrameAssembler, Released};
    if !layer.gop.has_keyframe() {
        return None;
    }
    let mut assembler = FrameAssembler::new(codec).ok()?;
    for packet in layer.gop.packets() {
        let frames = assembler.push(Released::Packet(packet.clone()));
        if let Some(frame) = frames.into_iter().find(|f| f.keyframe) {
            let config = recorder::params::VideoConfig::from_keyframe(&frame)?;
            return Some((config.width, config.height));
        }
    }
    None
}

/// What a user agent says the client is: `OBS 31.0`, `Chrome 156`,
/// `Firefox 140`, `Safari 18`…; the first product token otherwise.
pub fn software(user_agent: &str) -> Option<String> {
    let version_of = |marker: &str| {
        user_agent.find(marker).map(|at| {
            user_agent[at + marker.len()..]
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
                .unwrap_or("")
                .to_owned()
        })
    };
    let major = |v: String| v.split('.').next().unwrap_or("").to_owned();
    if let Some(v) = version_of("OBS-Studio/").or_else(|| version_of("OBS/")) {
        return Some(format!("OBS {v}").trim_end().to_owned());
    }
    for (marker, name) in [
        ("Edg/", "Edge"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Version/", "Safari"),
    ] {
        if let Some(v) = version_of(marker) {
            return Some(format!("{name} {}", major(v)));
        }
    }
    user_agent
        .split_whitespace()
        .next()
        .map(|t| t.chars().take(40).collect())
}

#[cfg(test)]
mod tests {
    use super::software;

    #[test]
    fn names_common_clients() {
        assert_eq!(
            software("Mozilla/5.0 (OBS-Studio/31.0.2; Windows x86_64)").as_deref(),
            Some("OBS 31.0.2")
        );
        assert_eq!(
            software("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36").as_deref(),
            Some("Chrome 156")
        );
        assert_eq!(
            software("Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0")
                .as_deref(),
            Some("Firefox 140")
        );
        assert_eq!(
            software("whipcord-load/0.1").as_deref(),
            Some("whipcord-load/0.1")
        );
    }
}
