//! The media thread's event loop.
//!
//! Inputs are datagrams, signalling commands and timers; each input is fed
//! to the one peer it concerns, and that peer is then drained (datagrams to
//! send, events, received media). Media from a publisher goes through the
//! hub and straight into each viewer's peer on the same thread.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_udp::RecvMeta;
use recorder::codec::MediaKind;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::Packet;
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::demux::{self, PacketClass};
use super::peer::{Peer, PeerFactory, PeerState, RoleState, candidate_lines};
use super::sdp_scan::OfferSummary;
use super::udp::{self, MediaSocket};
use crate::config::Config;
use crate::hub::subscriber::TrackDescription;
use crate::hub::{Hub, PeerKey};
use crate::sdpfrag::SdpFragment;
use crate::signal::{
    Answer, ClientInfo, Command, PatchOutcome, PatchRequest, Role, SessionId, SignalError,
    StreamSummary,
};
use crate::stream_name::StreamName;

/// How long a viewer's offer may wait for a new publisher's tracks to show
/// their codecs before it is answered with what is known.
const VIEWER_WAIT: Duration = Duration::from_secs(3);
/// A peer that has not connected by then is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Housekeeping period (timeouts, layer choice, pending viewers).
const TICK: Duration = Duration::from_millis(250);
/// A publisher silent this long may be replaced by a new one without 409:
/// it is almost certainly the same encoder reconnecting.
const STALE_PUBLISHER: Duration = Duration::from_secs(3);
/// Delay between a viewer connecting and its GOP replay.
const REPLAY_GRACE: Duration = Duration::from_millis(20);
/// Addresses remembered per peer (ICE may probe from several).
const MAX_ADDRS_PER_PEER: usize = 8;

struct PendingViewer {
    stream: StreamName,
    offer: String,
    summary: OfferSummary,
    client: ClientInfo,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Answer, SignalError>>,
}

pub struct Plane {
    config: Arc<Config>,
    socket: Rc<MediaSocket>,
    factory: PeerFactory,
    peers: HashMap<PeerKey, Peer>,
    by_ufrag: HashMap<String, PeerKey>,
    by_addr: HashMap<SocketAddr, PeerKey>,
    addrs_of: HashMap<PeerKey, Vec<SocketAddr>>,
    by_session: HashMap<SessionId, PeerKey>,
    timers: BTreeSet<(Instant, PeerKey)>,
    hub: Hub,
    next_key: PeerKey,
    pending: Vec<PendingViewer>,
    /// Viewers whose GOP replay is due (see `on_connected`).
    replays: Vec<(Instant, PeerKey)>,
    /// Reused buffers so steady-state packet handling does not allocate.
    events: Vec<RTCPeerConnectionEvent>,
    reads: Vec<RTCMessage>,
    stats: PlaneStats,
}

#[derive(Default)]
struct PlaneStats {
    unknown_datagrams: u64,
    send_errors: u64,
}

impl Plane {
    pub fn new(
        config: Arc<Config>,
        std_socket: std::net::UdpSocket,
        candidates: Vec<SocketAddr>,
    ) -> Result<Self, SignalError> {
        let socket = MediaSocket::new(std_socket, config.udp_recv_buffer)
            .map_err(|e| SignalError::Internal(e.to_string()))?;
        Ok(Self {
            config,
            socket: Rc::new(socket),
            factory: PeerFactory::new(candidates)?,
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            addrs_of: HashMap::new(),
            by_session: HashMap::new(),
            timers: BTreeSet::new(),
            hub: Hub::default(),
            next_key: 1,
            pending: Vec::new(),
            replays: Vec::new(),
            events: Vec::new(),
            reads: Vec::new(),
            stats: PlaneStats::default(),
        })
    }

    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut bufs: Vec<Vec<u8>> = (0..udp::BATCH)
            .map(|_| vec![0u8; udp::DATAGRAM_BUF])
            .collect();
        let mut meta = vec![RecvMeta::default(); udp::BATCH];
        let mut next_tick = Instant::now() + TICK;
        loop {
            let next_timer = self
                .timers
                .first()
                .map(|(t, _)| *t)
                .into_iter()
                .chain(self.replays.iter().map(|(t, _)| *t))
                .min();
            let wake = next_timer.map_or(next_tick, |t| t.min(next_tick));
            let socket = self.socket.clone();
            tokio::select! {
                biased;
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    if let Command::Shutdown { reply } = command {
                        self.shutdown();
                        let _ = reply.send(());
                        break;
                    }
                    self.on_command(command);
                }
                received = socket.recv_batch(&mut bufs, &mut meta) => {
                    match received {
                        Ok(count) => {
                            let now = Instant::now();
                            for (m, buf) in meta.iter().zip(bufs.iter()).take(count) {
                                let stride = m.stride.max(1);
                                for chunk in buf[..m.len].chunks(stride) {
                                    self.on_datagram(now, m.addr, m.dst_ip, chunk);
                                }
                            }
                        }
                        Err(err) => {
                            warn!("media socket receive error: {err}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            self.fire_timers(now);
            self.fire_replays(now);
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
        }
        info!("media plane stopped");
    }

    // ----- datagrams ---------------------------------------------------------

    fn on_datagram(&mut self, now: Instant, from: SocketAddr, to_ip: Option<IpAddr>, data: &[u8]) {
        let key = match self.by_addr.get(&from) {
            Some(key) => *key,
            None => {
                // Only a STUN check naming one of our sessions may introduce
                // a new address; anything else from a stranger is dropped.
                let known = (demux::classify(data) == PacketClass::Stun)
                    .then(|| demux::stun_local_ufrag(data))
                    .flatten()
                    .and_then(|ufrag| self.by_ufrag.get(ufrag).copied());
                let Some(key) = known else {
                    self.stats.unknown_datagrams += 1;
                    return;
                };
                let addrs = self.addrs_of.entry(key).or_default();
                if addrs.len() >= MAX_ADDRS_PER_PEER {
                    return;
                }
                addrs.push(from);
                self.by_addr.insert(from, key);
                key
            }
        };
        let local = self.local_address(to_ip);
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.remote.is_none() {
            peer.remote = Some(from);
        }
        peer.local = Some(local);
        peer.src_ip = to_ip.filter(|_| self.config.public_ip.is_empty());
        peer.handle_datagram(now, local, from, data);
        self.drive(key, now);
    }

    /// Our candidate address a datagram was sent to.
    fn local_address(&self, to_ip: Option<IpAddr>) -> SocketAddr {
        let port = self.socket.local_addr().port();
        if let Some(public) = self.config.public_ip.first() {
            return SocketAddr::new(*public, port);
        }
        match to_ip {
            Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => SocketAddr::new(
                IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::LOCALHOST)),
                port,
            ),
            Some(ip) => SocketAddr::new(ip, port),
            None => self
                .factory
                .candidates()
                .first()
                .copied()
                .unwrap_or_else(|| self.socket.local_addr()),
        }
    }

    // ----- driving a peer ----------------------------------------------------

    /// Sends what the peer wants sent.
    fn flush(socket: &MediaSocket, stats: &mut PlaneStats, peer: &mut Peer) {
        while let Some(out) = peer.pc.poll_write() {
            match socket.send(out.transport.peer_addr, peer.src_ip, &out.message) {
                Ok(()) => peer.packets_out += 1,
                Err(err) => {
                    peer.send_errors += 1;
                    stats.send_errors += 1;
                    if peer.send_errors.is_power_of_two() {
                        debug!(session = %peer.session, "send failed ({} so far): {err}", peer.send_errors);
                    }
                }
            }
        }
    }

    /// Drains one peer after an input, handling everything it produced.
    fn drive(&mut self, key: PeerKey, now: Instant) {
        // A few rounds at most: handling reads/events may queue more output.
        for _ in 0..4 {
            let mut events = std::mem::take(&mut self.events);
            let mut reads = std::mem::take(&mut self.reads);
            {
                let Some(peer) = self.peers.get_mut(&key) else {
                    self.events = events;
                    self.reads = reads;
                    return;
                };
                Self::flush(&self.socket, &mut self.stats, peer);
                while let Some(event) = peer.pc.poll_event() {
                    events.push(event);
                }
                while let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
                    reads.push(message);
                }
            }
            let idle = events.is_empty() && reads.is_empty();
            for event in events.drain(..) {
                self.on_event(key, event, now);
            }
            for message in reads.drain(..) {
                self.on_message(key, message, now);
            }
            self.events = events;
            self.reads = reads;
            if idle {
                break;
            }
        }
        if let Some(peer) = self.peers.get_mut(&key) {
            Self::flush(&self.socket, &mut self.stats, peer);
        }
        self.reschedule(key);
        let closed = self
            .peers
            .get(&key)
            .is_some_and(|p| p.state == PeerState::Closed);
        if closed {
            self.remove_peer(key, now, "connection closed");
        }
    }

    fn reschedule(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let next = peer.pc.poll_timeout();
        if next == peer.deadline {
            return;
        }
        if let Some(old) = peer.deadline.take() {
            self.timers.remove(&(old, key));
        }
        if let Some(new) = next {
            peer.deadline = Some(new);
            self.timers.insert((new, key));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.deadline = None;
                peer.handle_timeout(now);
            }
            self.drive(key, now);
        }
    }

    // ----- events and media --------------------------------------------------

    fn on_event(&mut self, key: PeerKey, event: RTCPeerConnectionEvent, now: Instant) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                debug!(key, ?state, "peer connection state");
                match state {
                    RTCPeerConnectionState::Connected => self.on_connected(key, now),
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        if let Some(peer) = self.peers.get_mut(&key) {
                            peer.state = PeerState::Closed;
                        }
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
                debug!(key, ?state, "ICE state");
                if state == RTCIceConnectionState::Failed
                    && let Some(peer) = self.peers.get_mut(&key)
                {
                    peer.state = PeerState::Closed;
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                if let Some(peer) = self.peers.get_mut(&key)
                    && let RoleState::Publisher { receivers, .. } = &mut peer.role_state
                {
                    receivers.insert(init.ssrc, (init.receiver_id, init.rid.clone()));
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                if let Some(peer) = self.peers.get_mut(&key) {
                    match &mut peer.role_state {
                        RoleState::Publisher { data_channel, .. }
                        | RoleState::Viewer { data_channel, .. } => *data_channel = Some(id),
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connected(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.state == PeerState::Connected {
            return;
        }
        peer.state = PeerState::Connected;
        peer.connected_at = Some(now);
        let setup_ms = now.duration_since(peer.created).as_millis();
        info!(
            session = %peer.session,
            stream = %peer.stream,
            role = ?peer.role,
            setup_ms,
            client = ?peer.client.address,
            user_agent = peer.client.user_agent.as_deref().unwrap_or("-"),
            "connected"
        );
        if peer.role == Role::Viewer {
            // Our side is connected once DTLS completes here, but the
            // viewer only has its SRTP keys after our last handshake flight
            // reaches it; media sent in between is discarded there. A short
            // grace keeps the GOP (whose first packet is the keyframe) from
            // being thrown away.
            self.replays.push((now + REPLAY_GRACE, key));
        }
    }

    fn fire_replays(&mut self, now: Instant) {
        if self.replays.is_empty() {
            return;
        }
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.replays)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.replays = rest;
        for (_, key) in due {
            if let Some(stream) = self.peers.get(&key).map(|p| p.stream.clone()) {
                self.replay_gop(key, &stream, now);
            }
        }
    }

    /// Sends a new viewer the cached GOP of each video track, then marks the
    /// track live so the next live packet continues the sequence.
    fn replay_gop(&mut self, key: PeerKey, stream_name: &StreamName, now: Instant) {
        let Self {
            hub,
            peers,
            socket,
            stats,
            ..
        } = self;
        let Some(stream) = hub.get(stream_name) else {
            return;
        };
        let Some(peer) = peers.get_mut(&key) else {
            return;
        };
        let Peer { pc, role_state, .. } = peer;
        let RoleState::Viewer { tracks, .. } = role_state else {
            return;
        };
        let mut replayed = 0usize;
        for (index, slot) in tracks.iter_mut().enumerate() {
            let (Some(vt), Some(track)) = (slot.as_mut(), stream.tracks.get(index)) else {
                continue;
            };
            if vt.live || track.kind() != MediaKind::Video {
                continue;
            }
            let Some(layer) = track.layers.get(track.active) else {
                continue;
            };
            if !layer.gop.has_keyframe() {
                continue; // goes live at the next keyframe instead
            }
            for cached in layer.gop.packets() {
                let mut packet = cached.clone();
                vt.rewriter.rewrite(&mut packet.header, now);
                Peer::forward_rtp(pc, now, packet);
                replayed += 1;
            }
            vt.live = true;
        }
        Self::flush(socket, stats, peer);
        debug!(key, replayed, "GOP replayed to new viewer");
    }

    fn on_message(&mut self, key: PeerKey, message: RTCMessage, now: Instant) {
        match message {
            RTCMessage::RtpPacket(_, packet) => self.on_rtp(key, packet, now),
            RTCMessage::RtcpPacket(track_id, packets) => {
                let wants_keyframe = packets.iter().any(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                });
                if wants_keyframe {
                    self.on_keyframe_request(key, &track_id, now);
                }
            }
            RTCMessage::DataChannelMessage(_, message) => self.relay_data(key, message, now),
            _ => {}
        }
    }

    fn on_rtp(&mut self, key: PeerKey, mut packet: Packet, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.role != Role::Publisher {
            return;
        }
        // Header extensions are negotiated per leg; the viewers' legs have
        // their own, so the publisher's are dropped here, once.
        packet.header.extension = false;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
        let stream_name = peer.stream.clone();
        let route = match &peer.role_state {
            RoleState::Publisher { routes, .. } => routes.get(&packet.header.ssrc).copied(),
            RoleState::Viewer { .. } => None,
        };
        let (track, layer) = match route {
            Some(route) => route,
            None => {
                let Some(route) = self.bind_track(key, &stream_name, &packet, now) else {
                    return;
                };
                route
            }
        };
        let Some(stream) = self.hub.get_mut(&stream_name) else {
            return;
        };
        let routed = stream.route(track, layer, &packet, now);
        if routed.forward {
            self.fan_out(&stream_name, track, &packet, routed.keyframe, now);
        }
    }

    /// First packet of an incoming track: learn its codec and give it a
    /// place in the hub.
    fn bind_track(
        &mut self,
        key: PeerKey,
        stream_name: &StreamName,
        packet: &Packet,
        now: Instant,
    ) -> Option<(usize, usize)> {
        let peer = self.peers.get_mut(&key)?;
        let ssrc = packet.header.ssrc;
        let (receiver, rid) = match &peer.role_state {
            RoleState::Publisher { receivers, .. } => receivers.get(&ssrc).cloned()?,
            RoleState::Viewer { .. } => return None,
        };
        let description = peer.incoming_description(receiver, packet.header.payload_type)?;
        let group = format!("{receiver:?}");
        let stream = self.hub.entry(stream_name, now);
        let track = stream.bind_layer(&group, rid.clone(), ssrc, description.clone());
        let layer = stream.tracks[track]
            .layers
            .iter()
            .position(|l| l.rid == rid)
            .unwrap_or(0);
        info!(stream = %stream_name, track, ?rid, codec = %description.codec, "track bound");
        if let RoleState::Publisher { routes, .. } = &mut peer.role_state {
            routes.insert(ssrc, (track, layer));
        }
        if stream.tracks_ready() {
            self.resolve_pending(stream_name, now);
        }
        Some((track, layer))
    }

    /// Forwards one live packet to every viewer of the stream.
    fn fan_out(
        &mut self,
        stream_name: &StreamName,
        track: usize,
        packet: &Packet,
        keyframe: bool,
        now: Instant,
    ) {
        let Self {
            hub,
            peers,
            socket,
            stats,
            ..
        } = self;
        let Some(stream) = hub.get(stream_name) else {
            return;
        };
        for viewer in &stream.viewers {
            let Some(peer) = peers.get_mut(viewer) else {
                continue;
            };
            if peer.state != PeerState::Connected {
                continue;
            }
            let Peer { pc, role_state, .. } = peer;
            let RoleState::Viewer { tracks, .. } = role_state else {
                continue;
            };
            let Some(Some(vt)) = tracks.get_mut(track) else {
                continue;
            };
            if !vt.live {
                if !keyframe {
                    continue;
                }
                vt.live = true;
            }
            let mut out = packet.clone();
            vt.rewriter.rewrite(&mut out.header, now);
            Peer::forward_rtp(pc, now, out);
            Self::flush(socket, stats, peer);
        }
    }

    fn on_keyframe_request(&mut self, viewer: PeerKey, track_id: &str, now: Instant) {
        let Some(peer) = self.peers.get(&viewer) else {
            return;
        };
        if peer.role != Role::Viewer {
            return;
        }
        // Viewer track ids end in the hub track index (see PeerFactory).
        let Some(track) = track_id
            .rsplit('-')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
        else {
            return;
        };
        let stream = peer.stream.clone();
        self.request_keyframe(&stream, track, now);
    }

    /// Sends a PLI to the publisher for `track`'s active layer, rate-limited.
    fn request_keyframe(&mut self, stream_name: &StreamName, track: usize, now: Instant) {
        let Some(stream) = self.hub.get_mut(stream_name) else {
            return;
        };
        let Some(publisher) = stream.publisher else {
            return;
        };
        let Some(t) = stream.tracks.get(track) else {
            return;
        };
        if t.kind() != MediaKind::Video {
            return;
        }
        let media_ssrc = t.layers.get(t.active).map(|l| l.ssrc);
        if !stream.allow_pli(track, now) {
            return;
        }
        let Some(media_ssrc) = media_ssrc else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let RoleState::Publisher { receivers, .. } = &peer.role_state else {
            return;
        };
        let Some((receiver, _)) = receivers.get(&media_ssrc).cloned() else {
            return;
        };
        if let Some(mut r) = peer.pc.rtp_receiver(receiver) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if let Err(err) = r.write_rtcp(now, vec![Box::new(pli)]) {
                debug!("PLI upstream failed: {err}");
            }
        }
        Self::flush(&self.socket, &mut self.stats, peer);
    }

    fn relay_data(
        &mut self,
        key: PeerKey,
        message: rtc::data_channel::RTCDataChannelMessage,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get(&key) else {
            return;
        };
        if peer.role != Role::Publisher || message.data.len() > 16 * 1024 {
            return;
        }
        let stream_name = peer.stream.clone();
        let Self {
            hub,
            peers,
            socket,
            stats,
            ..
        } = self;
        let Some(stream) = hub.get(&stream_name) else {
            return;
        };
        for viewer in &stream.viewers {
            let Some(peer) = peers.get_mut(viewer) else {
                continue;
            };
            let RoleState::Viewer {
                data_channel: Some(id),
                ..
            } = &peer.role_state
            else {
                continue;
            };
            let id = *id;
            if let Some(mut channel) = peer.pc.data_channel(id) {
                let result = if message.is_string {
                    channel.send_text(now, String::from_utf8_lossy(&message.data).into_owned())
                } else {
                    channel.send(now, BytesMut::from(&message.data[..]))
                };
                if let Err(err) = result {
                    debug!("data channel relay failed: {err}");
                }
            }
            Self::flush(socket, stats, peer);
        }
    }

    // ----- signalling --------------------------------------------------------

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Offer {
                role: Role::Publisher,
                stream,
                offer,
                client,
                reply,
            } => {
                let result = self.publish(stream, &offer, client, now);
                let _ = reply.send(result);
            }
            Command::Offer {
                role: Role::Viewer,
                stream,
                offer,
                client,
                reply,
            } => self.watch(stream, offer, client, reply, now),
            Command::Patch {
                role,
                stream,
                session,
                request,
                reply,
            } => {
                let result = self.patch(role, &stream, &session, request, now);
                let _ = reply.send(result);
            }
            Command::Delete {
                role,
                stream,
                session,
                reply,
            } => {
                let result = self.find_session(role, &stream, &session).map(|key| {
                    self.remove_peer(key, now, "deleted by client");
                });
                let _ = reply.send(result);
            }
            Command::ListStreams { reply } => {
                let list = self
                    .hub
                    .streams()
                    .filter(|s| s.publisher.is_some())
                    .map(|s| StreamSummary {
                        name: s.name.to_string(),
                        codecs: s.codec_names(),
                        viewers: s.viewers.len(),
                        uptime_s: now.duration_since(s.started).as_secs(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::Shutdown { reply } => {
                self.shutdown();
                let _ = reply.send(());
            }
        }
    }

    fn insert_peer(&mut self, peer: Peer) {
        let key = peer.key;
        self.by_ufrag.insert(peer.ufrag.clone(), key);
        self.by_session.insert(peer.session.clone(), key);
        self.peers.insert(key, peer);
        self.reschedule(key);
        self.drive(key, Instant::now());
    }

    fn next_key(&mut self) -> PeerKey {
        let key = self.next_key;
        self.next_key += 1;
        key
    }

    fn publish(
        &mut self,
        stream_name: StreamName,
        offer: &str,
        client: ClientInfo,
        now: Instant,
    ) -> Result<Answer, SignalError> {
        let summary = OfferSummary::parse(offer).map_err(SignalError::BadOffer)?;
        let tracks = summary.sending_tracks();
        if tracks == 0 {
            return Err(SignalError::BadOffer(
                "a WHIP offer must send audio or video (sendonly or sendrecv)".into(),
            ));
        }
        if let Some(existing) = self.hub.get(&stream_name).and_then(|s| s.publisher) {
            let stale = self
                .hub
                .get(&stream_name)
                .is_some_and(|s| now.duration_since(s.last_media) > STALE_PUBLISHER);
            if !(self.config.publisher_takeover || stale) {
                return Err(SignalError::StreamBusy);
            }
            info!(stream = %stream_name, stale, "new publisher takes over");
            self.detach_publisher(existing, now);
        }
        let key = self.next_key();
        let (peer, sdp) = self.factory.create(
            key,
            Role::Publisher,
            stream_name.clone(),
            offer,
            &summary,
            &[],
            client,
            now,
        )?;
        let answer = Answer {
            session: peer.session.clone(),
            sdp,
            etag: peer.etag.clone(),
        };
        let stream = self.hub.entry(&stream_name, now);
        stream.publisher = Some(key);
        stream.expected_tracks = tracks;
        stream.last_media = now;
        stream.begin_publisher();
        self.insert_peer(peer);
        Ok(answer)
    }

    fn watch(
        &mut self,
        stream_name: StreamName,
        offer: String,
        client: ClientInfo,
        reply: tokio::sync::oneshot::Sender<Result<Answer, SignalError>>,
        now: Instant,
    ) {
        let summary = match OfferSummary::parse(&offer) {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(SignalError::BadOffer(e)));
                return;
            }
        };
        if !summary.receives(MediaKind::Video) && !summary.receives(MediaKind::Audio) {
            let _ = reply.send(Err(SignalError::BadOffer(
                "a WHEP offer must receive audio or video (recvonly or sendrecv)".into(),
            )));
            return;
        }
        let Some(stream) = self.hub.get(&stream_name).filter(|s| s.publisher.is_some()) else {
            let _ = reply.send(Err(SignalError::StreamNotLive));
            return;
        };
        if !stream.tracks_ready() {
            self.pending.push(PendingViewer {
                stream: stream_name,
                offer,
                summary,
                client,
                deadline: now + VIEWER_WAIT,
                reply,
            });
            return;
        }
        let result = self.add_viewer(&stream_name, &offer, &summary, client, now);
        let _ = reply.send(result);
    }

    fn add_viewer(
        &mut self,
        stream_name: &StreamName,
        offer: &str,
        summary: &OfferSummary,
        client: ClientInfo,
        now: Instant,
    ) -> Result<Answer, SignalError> {
        let stream = self
            .hub
            .get(stream_name)
            .filter(|s| s.publisher.is_some() && !s.tracks.is_empty())
            .ok_or(SignalError::StreamNotLive)?;
        let descriptions: Vec<TrackDescription> = stream
            .tracks
            .iter()
            .map(|t| t.description.clone())
            .collect();
        let mut wanted = 0;
        for d in &descriptions {
            if !summary.receives(d.codec.kind()) {
                continue;
            }
            if !summary.can_receive(d.codec) {
                return Err(SignalError::UnsupportedCodec(format!(
                    "the viewer's offer cannot receive {}, the codec this stream's {} is published in",
                    d.codec,
                    if d.codec.kind() == MediaKind::Video {
                        "video"
                    } else {
                        "audio"
                    }
                )));
            }
            wanted += 1;
        }
        if wanted == 0 {
            return Err(SignalError::UnsupportedCodec(format!(
                "the viewer's offer receives none of this stream's media ({})",
                stream.codec_names().join(", ")
            )));
        }
        let key = self.next_key();
        let (peer, sdp) = self.factory.create(
            key,
            Role::Viewer,
            stream_name.clone(),
            offer,
            summary,
            &descriptions,
            client,
            now,
        )?;
        let answer = Answer {
            session: peer.session.clone(),
            sdp,
            etag: peer.etag.clone(),
        };
        if let Some(stream) = self.hub.get_mut(stream_name) {
            stream.viewers.push(key);
        }
        self.insert_peer(peer);
        // Publishers that honour PLI start a fresh GOP for the newcomer;
        // the GOP cache covers those that do not (OBS).
        for track in 0..descriptions.len() {
            self.request_keyframe(stream_name, track, now);
        }
        Ok(answer)
    }

    fn resolve_pending(&mut self, stream_name: &StreamName, now: Instant) {
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| &p.stream == stream_name);
        self.pending = rest;
        for p in ready {
            let result = self.add_viewer(&p.stream, &p.offer, &p.summary, p.client, now);
            let _ = p.reply.send(result);
        }
    }

    fn find_session(
        &self,
        role: Role,
        stream: &StreamName,
        session: &SessionId,
    ) -> Result<PeerKey, SignalError> {
        let key = *self
            .by_session
            .get(session)
            .ok_or(SignalError::UnknownSession)?;
        let peer = self.peers.get(&key).ok_or(SignalError::UnknownSession)?;
        if peer.role != role || &peer.stream != stream {
            return Err(SignalError::UnknownSession);
        }
        Ok(key)
    }

    fn patch(
        &mut self,
        role: Role,
        stream: &StreamName,
        session: &SessionId,
        request: PatchRequest,
        now: Instant,
    ) -> Result<PatchOutcome, SignalError> {
        let key = self.find_session(role, stream, session)?;
        let peer = self
            .peers
            .get_mut(&key)
            .ok_or(SignalError::UnknownSession)?;
        if let Some(tag) = &request.if_match
            && tag.trim() != "*"
            && tag.trim() != peer.etag
        {
            return Err(SignalError::PreconditionFailed);
        }
        let fragment = request.fragment;
        let remote_ufrag = peer
            .pc
            .remote_description()
            .and_then(|d| sdp_attribute(&d.sdp, "ice-ufrag"));
        let restart = match (&fragment.ice_ufrag, &remote_ufrag) {
            (Some(new), Some(old)) => new != old,
            (Some(_), None) => true,
            _ => false,
        };
        if restart {
            let result = self.restart_ice(key, &fragment, now);
            self.drive(key, now);
            return result;
        }
        for candidate in &fragment.candidates {
            let init = RTCIceCandidateInit {
                candidate: candidate.candidate.clone(),
                sdp_mid: candidate.mid.clone(),
                ..Default::default()
            };
            if let Err(err) = peer.pc.add_remote_candidate(init) {
                // Lite ICE learns addresses from the checks themselves, so a
                // candidate we cannot parse costs nothing; say so and go on.
                debug!(session = %peer.session, "ignored trickled candidate: {err}");
            }
        }
        self.drive(key, now);
        Ok(PatchOutcome::Trickled)
    }

    fn restart_ice(
        &mut self,
        key: PeerKey,
        fragment: &SdpFragment,
        now: Instant,
    ) -> Result<PatchOutcome, SignalError> {
        let (Some(ufrag), Some(pwd)) = (&fragment.ice_ufrag, &fragment.ice_pwd) else {
            return Err(SignalError::BadOffer(
                "ICE restart needs both ice-ufrag and ice-pwd".into(),
            ));
        };
        let peer = self
            .peers
            .get_mut(&key)
            .ok_or(SignalError::UnknownSession)?;
        let old_sdp = peer
            .pc
            .remote_description()
            .map(|d| d.sdp.clone())
            .ok_or_else(|| SignalError::Internal("no remote description".into()))?;
        let new_offer = replace_ice_credentials(&old_sdp, ufrag, pwd);
        let desc = rtc::peer_connection::sdp::RTCSessionDescription::offer(new_offer)
            .map_err(|e| SignalError::BadOffer(e.to_string()))?;
        // `rtc` keeps our ICE credentials for the connection's lifetime (they
        // are also our demux key); applying the offer with the client's new
        // credentials restarts the checks on its side.
        peer.pc
            .set_remote_description(now, desc)
            .map_err(|e| SignalError::BadOffer(e.to_string()))?;
        let answer = peer
            .pc
            .create_answer(None)
            .map_err(|e| SignalError::Internal(e.to_string()))?;
        peer.pc
            .set_local_description(now, answer)
            .map_err(|e| SignalError::Internal(e.to_string()))?;
        let local_sdp = peer
            .pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| SignalError::Internal("no local description".into()))?;
        let new_ufrag = sdp_attribute(&local_sdp, "ice-ufrag")
            .ok_or_else(|| SignalError::Internal("restart answer has no ice-ufrag".into()))?;
        let new_pwd = sdp_attribute(&local_sdp, "ice-pwd")
            .ok_or_else(|| SignalError::Internal("restart answer has no ice-pwd".into()))?;
        let old_ufrag = std::mem::replace(&mut peer.ufrag, new_ufrag.clone());
        peer.etag = format!(
            "\"{}\"",
            SessionId::random().as_str().get(..12).unwrap_or("restart")
        );
        let etag = peer.etag.clone();
        self.by_ufrag.remove(&old_ufrag);
        self.by_ufrag.insert(new_ufrag.clone(), key);
        // The client may come back from a new address: let it in via STUN.
        if let Some(addrs) = self.addrs_of.remove(&key) {
            for a in addrs {
                self.by_addr.remove(&a);
            }
        }
        info!(key, "ICE restarted");
        Ok(PatchOutcome::Restarted {
            sdpfrag: SdpFragment::restart_answer(
                &new_ufrag,
                &new_pwd,
                &candidate_lines(self.factory.candidates()),
            ),
            etag,
        })
    }

    // ----- teardown ----------------------------------------------------------

    /// Removes a peer and everything that depends on it.
    fn remove_peer(&mut self, key: PeerKey, now: Instant, why: &str) {
        let Some(mut peer) = self.peers.remove(&key) else {
            return;
        };
        info!(session = %peer.session, stream = %peer.stream, role = ?peer.role, "session ended: {why}");
        peer.close();
        Self::flush(&self.socket, &mut self.stats, &mut peer);
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

    fn forget(&mut self, key: PeerKey, peer: &Peer) {
        self.by_ufrag.remove(&peer.ufrag);
        self.by_session.remove(&peer.session);
        if let Some(addrs) = self.addrs_of.remove(&key) {
            for a in addrs {
                self.by_addr.remove(&a);
            }
        }
        if let Some(deadline) = peer.deadline {
            self.timers.remove(&(deadline, key));
        }
    }

    /// A publisher replaced by a new one: closed without ending the stream,
    /// so viewers stay and continue with the new publisher's media.
    fn detach_publisher(&mut self, key: PeerKey, now: Instant) {
        if let Some(stream) = self.peers.get(&key).map(|p| p.stream.clone())
            && let Some(s) = self.hub.get_mut(&stream)
        {
            s.publisher = None;
        }
        self.remove_peer(key, now, "replaced by a new publisher");
    }

    /// The publisher is gone: viewers' sessions end, subscribers get
    /// end-of-stream, the stream disappears.
    fn end_stream(&mut self, stream_name: &StreamName, now: Instant) {
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

    fn tick(&mut self, now: Instant) {
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

    fn shutdown(&mut self) {
        let now = Instant::now();
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
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

/// The first `a=name:value` in an SDP (session or media level).
fn sdp_attribute(sdp: &str, name: &str) -> Option<String> {
    let prefix = format!("a={name}:");
    sdp.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(&prefix)
            .map(|v| v.trim().to_owned())
    })
}

/// The remote offer with its ICE credentials replaced, for an ICE restart
/// signalled through an SDP fragment.
fn replace_ice_credentials(sdp: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}
