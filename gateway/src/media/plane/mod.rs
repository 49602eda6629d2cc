//! The media thread's event loop.
//!
//! Inputs are datagrams, signalling commands and timers; each input is fed
//! to the one peer it concerns, and that peer is then drained (datagrams to
//! send, events, received media). Media from a publisher goes through the
//! hub and straight into each viewer's peer on the same thread.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
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
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp::Packet;
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::demux::{self, PacketClass};
use super::egress::{Egress, Transport};
use super::peer::{Peer, PeerFactory, PeerState, RoleState, candidate_lines};
use super::sdp_scan::OfferSummary;
use super::tcp::TcpEvent;
use super::udp::{self, MediaSocket};
use crate::bridge::Bridge;
use crate::config::Config;
use crate::hub::subscriber::{Audience, TrackDescription};
use crate::hub::{Hub, PeerKey};
use crate::ingest::demand::Demand;
use crate::recording::Recordings;
use crate::sdpfrag::SdpFragment;
use crate::signal::{
    Answer, ClientInfo, Command, PatchOutcome, PatchRequest, Role, SessionId, SignalError,
    StreamSummary,
};
use crate::stream_name::StreamName;

mod forward;
mod ingest;
mod inspect;
mod signalling;
mod teardown;

/// How long a viewer's offer may wait for a new publisher's tracks to show
/// their codecs before it is answered with what is known.
const VIEWER_WAIT: Duration = Duration::from_secs(3);
/// How long a viewer of an on-demand source that is not connected yet
/// waits for it (camera connection and its first description); less than
/// the HTTP side's wait for the plane's answer.
const ON_DEMAND_WAIT: Duration = Duration::from_secs(8);
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
    recordings: Recordings,
    bridge: Bridge,
    /// Consumers of on-demand sources, counted here, read by the sources.
    demand: Demand,
    egress: Egress,
    /// ICE-TCP connection events, taken by `run`.
    tcp_events: Option<mpsc::Receiver<TcpEvent>>,
    factory: PeerFactory,
    peers: HashMap<PeerKey, Peer>,
    by_ufrag: HashMap<String, PeerKey>,
    by_addr: HashMap<(Transport, SocketAddr), PeerKey>,
    addrs_of: HashMap<PeerKey, Vec<(Transport, SocketAddr)>>,
    by_session: HashMap<SessionId, PeerKey>,
    timers: BTreeSet<(Instant, PeerKey)>,
    hub: Hub,
    /// RTMP and RTSP publishers, keyed like peers.
    ingests: HashMap<PeerKey, ingest::IngestPublisher>,
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
    packets_in: u64,
    bytes_in: u64,
    packets_out: u64,
    bytes_out: u64,
    plis_received: u64,
    nacks_received: u64,
    plis_sent: u64,
    keyframe_cache_hits: u64,
}

impl Plane {
    pub fn new(
        config: Arc<Config>,
        recordings: Recordings,
        bridge: Bridge,
        demand: Demand,
        std_socket: std::net::UdpSocket,
        tcp_listener: Option<std::net::TcpListener>,
        candidates: Vec<SocketAddr>,
    ) -> Result<Self, SignalError> {
        let internal = |e: std::io::Error| SignalError::Internal(e.to_string());
        let socket = MediaSocket::new(std_socket, config.udp_recv_buffer).map_err(internal)?;
        let tcp_events = match tcp_listener {
            Some(listener) => {
                let listener = tokio::net::TcpListener::from_std(listener).map_err(internal)?;
                let (tx, rx) = mpsc::channel(4096);
                tokio::spawn(super::tcp::accept_loop(listener, tx));
                Some(rx)
            }
            None => None,
        };
        let ice_tcp = tcp_events.is_some();
        Ok(Self {
            config,
            recordings,
            bridge,
            demand,
            egress: Egress::new(socket),
            tcp_events,
            factory: PeerFactory::new(candidates, ice_tcp)?,
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            addrs_of: HashMap::new(),
            by_session: HashMap::new(),
            timers: BTreeSet::new(),
            hub: Hub::default(),
            ingests: HashMap::new(),
            next_key: 1,
            pending: Vec::new(),
            replays: Vec::new(),
            events: Vec::new(),
            reads: Vec::new(),
            stats: PlaneStats::default(),
        })
    }

    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tcp_events = self.tcp_events.take();
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
            let socket = self.egress.udp.clone();
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
                                    self.on_datagram(now, Transport::Udp, m.addr, m.dst_ip, chunk);
                                }
                            }
                        }
                        Err(err) => {
                            warn!("media socket receive error: {err}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                Some(event) = next_tcp_event(&mut tcp_events) => self.on_tcp_event(event),
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

    /// Handles one datagram (or ICE-TCP frame); returns whether it belonged
    /// to a session.
    fn on_datagram(
        &mut self,
        now: Instant,
        transport: Transport,
        from: SocketAddr,
        to_ip: Option<IpAddr>,
        data: &[u8],
    ) -> bool {
        let key = match self.by_addr.get(&(transport, from)) {
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
                    return false;
                };
                let addrs = self.addrs_of.entry(key).or_default();
                if addrs.len() >= MAX_ADDRS_PER_PEER {
                    return false;
                }
                addrs.push((transport, from));
                self.by_addr.insert((transport, from), key);
                key
            }
        };
        let local = self.local_address(to_ip);
        let Some(peer) = self.peers.get_mut(&key) else {
            return false;
        };
        if peer.remote.is_none() {
            peer.remote = Some(from);
        }
        peer.local = Some(local);
        peer.src_ip = to_ip.filter(|_| self.config.public_ip.is_empty());
        peer.handle_datagram(now, transport.protocol(), local, from, data);
        self.drive(key, now);
        true
    }

    fn on_tcp_event(&mut self, event: TcpEvent) {
        match event {
            TcpEvent::Opened { from, writer, .. } => {
                self.egress.tcp.insert(from, writer);
            }
            TcpEvent::Frame { from, local, data } => {
                let accepted = self.on_datagram(
                    Instant::now(),
                    Transport::Tcp,
                    from,
                    Some(local.ip()),
                    &data,
                );
                if !accepted && !self.by_addr.contains_key(&(Transport::Tcp, from)) {
                    // Nobody's session: dropping the writer closes it.
                    self.egress.tcp.remove(&from);
                }
            }
            TcpEvent::Closed { from } => {
                self.egress.tcp.remove(&from);
                if let Some(key) = self.by_addr.remove(&(Transport::Tcp, from))
                    && let Some(addrs) = self.addrs_of.get_mut(&key)
                {
                    addrs.retain(|a| *a != (Transport::Tcp, from));
                }
            }
        }
    }

    /// Our candidate address a datagram was sent to.
    fn local_address(&self, to_ip: Option<IpAddr>) -> SocketAddr {
        let port = self.egress.udp.local_addr().port();
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
                .unwrap_or_else(|| self.egress.udp.local_addr()),
        }
    }

    // ----- driving a peer ----------------------------------------------------

    /// Sends what the peer wants sent.
    fn flush(egress: &Egress, stats: &mut PlaneStats, peer: &mut Peer) {
        let (sent, failed, bytes) = Self::drain_writes(egress, &mut peer.pc, peer.src_ip);
        peer.packets_out += sent;
        peer.bytes_out += bytes;
        stats.packets_out += sent;
        stats.bytes_out += bytes;
        if failed > 0 {
            let before = peer.send_errors;
            peer.send_errors += failed;
            stats.send_errors += failed;
            // Log at 1, 2, 4, 8… failures per peer, not on every packet.
            if (before + 1..=peer.send_errors).any(u64::is_power_of_two) {
                debug!(session = %peer.session, "{} sends failed so far", peer.send_errors);
            }
        }
    }

    /// Sends everything a connection has queued; returns (sent, failed,
    /// bytes sent).
    fn drain_writes(
        egress: &Egress,
        pc: &mut rtc::peer_connection::RTCPeerConnection,
        src_ip: Option<IpAddr>,
    ) -> (u64, u64, u64) {
        let (mut sent, mut failed, mut bytes) = (0, 0, 0);
        while let Some(out) = pc.poll_write() {
            let transport = &out.transport;
            match egress.send(
                transport.transport_protocol,
                transport.peer_addr,
                src_ip,
                &out.message,
            ) {
                Ok(()) => {
                    sent += 1;
                    bytes += out.message.len() as u64;
                }
                Err(_) => failed += 1,
            }
        }
        (sent, failed, bytes)
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
                Self::flush(&self.egress, &mut self.stats, peer);
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
            Self::flush(&self.egress, &mut self.stats, peer);
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
}

/// The next ICE-TCP event, or never when ICE-TCP is off.
async fn next_tcp_event(events: &mut Option<mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
