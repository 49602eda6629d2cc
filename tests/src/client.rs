//! In-process WHIP publishers and WHEP viewers built on the async `webrtc`
//! crate, talking to the gateway over loopback only (ICE pinned to
//! 127.0.0.1, mDNS off, no STUN).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::TrackLocalEvent;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceConnectionState, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::{
    RTCRtpTransceiverDirection as Dir, RTCRtpTransceiverInit, RtpSender,
};

use rand::{Rng, SeedableRng};
use rtc::ice::{mdns::MulticastDnsMode, network_type::NetworkType};
use rtc::interceptor::{
    Attribute, Interceptor, Packet as ChainPacket, Slot, StreamInfo, TaggedPacket,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;

use crate::clip::{Clip, ClipSpec, Vp9Payloader};
use crate::synth::{self, VideoCodec};

// ---------------------------------------------------------------------------
// Peer connection plumbing

struct Handler {
    gathering: watch::Sender<RTCIceGatheringState>,
    state: watch::Sender<RTCPeerConnectionState>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        let _ = self.gathering.send(s);
    }
    async fn on_ice_connection_state_change(&self, _s: RTCIceConnectionState) {}
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        let _ = self.state.send(s);
    }
    async fn on_track(&self, t: Arc<dyn TrackRemote>) {
        let _ = self.tracks.send(t);
    }
}

/// Marks inbound keyframe requests for delivery, so a publisher can see
/// (and choose to ignore) the gateway's PLIs.
#[derive(Default)]
struct KeyframeRequestsToApp {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestsToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;
    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let ChainPacket::Rtcp(pkts) = &msg.message.packet
            && pkts.iter().any(|p| {
                p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
            })
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for KeyframeRequestsToApp {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// What the loss injector did.
#[derive(Debug, Default)]
pub struct LossStats {
    /// RTP packets that reached the injector (originals and resends).
    pub rtp_packets: AtomicU64,
    /// Of those, resends answering NACKs.
    pub retransmissions: AtomicU64,
    /// RTP packets it dropped, of which `dropped_retransmissions` were
    /// answers to NACKs.
    pub dropped: AtomicU64,
    pub dropped_retransmissions: AtomicU64,
}

impl LossStats {
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    pub fn rtp_packets(&self) -> u64 {
        self.rtp_packets.load(Ordering::Relaxed)
    }
    pub fn retransmissions(&self) -> u64 {
        self.retransmissions.load(Ordering::Relaxed)
    }
}

/// Drops a fraction of outgoing RTP packets on the wire: it sits below
/// every other interceptor (closest to the network), so the NACK responder
/// has already stored what it drops and can resend it. Seeded, so a test
/// sees the same pattern every run. RTCP passes untouched.
struct LossInjector {
    rate: f64,
    rng: rand::rngs::StdRng,
    stats: Arc<LossStats>,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

/// Below [`Slot::CongestionControl`] (1_000), the wire-most named slot.
const LOSS_SLOT: usize = 100;

impl Protocol<TaggedPacket, TaggedPacket, ()> for LossInjector {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;
    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.reads.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let ChainPacket::Rtp(_) = &msg.message.packet {
            self.stats.rtp_packets.fetch_add(1, Ordering::Relaxed);
            let resend = msg.message.has(&Attribute::Retransmission);
            if resend {
                self.stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            }
            if self.rng.random::<f64>() < self.rate {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if resend {
                    self.stats
                        .dropped_retransmissions
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Ok(());
            }
        }
        self.writes.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for LossInjector {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// Outgoing RTP loss to simulate.
#[derive(Clone, Copy, Debug)]
pub struct Loss {
    pub rate: f64,
    pub seed: u64,
}

/// Which codecs the client's media engine offers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CodecSet {
    /// Every default codec (a browser-like viewer).
    Default,
    /// Only H264 on PT 96 and Opus on PT 111, as OBS offers.
    ObsLike,
}

struct Conn {
    pc: Arc<dyn PeerConnection>,
    gathering: watch::Receiver<RTCIceGatheringState>,
    state: watch::Receiver<RTCPeerConnectionState>,
    tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
}

async fn new_conn(codecs: CodecSet, tcp_only: bool) -> Result<Conn> {
    new_conn_with_loss(codecs, tcp_only, None).await
}

async fn new_conn_with_loss(
    codecs: CodecSet,
    tcp_only: bool,
    loss: Option<(Loss, Arc<LossStats>)>,
) -> Result<Conn> {
    let mut me = MediaEngine::default();
    match codecs {
        CodecSet::Default => me.register_default_codecs()?,
        CodecSet::ObsLike => {
            me.register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: synth::opus_codec(),
                    payload_type: 111,
                },
                RtpCodecKind::Audio,
            )?;
            me.register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: VideoCodec::H264.rtp_codec(),
                    payload_type: 96,
                },
                RtpCodecKind::Video,
            )?;
        }
    }
    let mut registry = register_default_interceptors(Registry::new(), &mut me)?
        .with(Slot::from(14_000), KeyframeRequestsToApp::default());
    if let Some((loss, stats)) = loss {
        registry = registry.with(
            Slot::from(LOSS_SLOT),
            LossInjector {
                rate: loss.rate,
                rng: rand::rngs::StdRng::seed_from_u64(loss.seed),
                stats,
                reads: VecDeque::new(),
                writes: VecDeque::new(),
            },
        );
    }
    let se = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_network_types(vec![if tcp_only {
            NetworkType::Tcp4
        } else {
            NetworkType::Udp4
        }])
        .build();
    let (gtx, gathering) = watch::channel(RTCIceGatheringState::New);
    let (stx, state) = watch::channel(RTCPeerConnectionState::New);
    let (ttx, tracks) = mpsc::unbounded_channel();
    let handler = Arc::new(Handler {
        gathering: gtx,
        state: stx,
        tracks: ttx,
    });
    let builder = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_setting_engine(se)
        .with_interceptor_registry(registry)
        .with_handler(handler);
    let builder = if tcp_only {
        builder.with_tcp_addrs(vec!["127.0.0.1:0"])
    } else {
        builder.with_udp_addrs(vec!["127.0.0.1:0"])
    };
    let pc = builder.build().await?;
    Ok(Conn {
        pc: Arc::new(pc),
        gathering,
        state,
        tracks,
    })
}

impl Conn {
    /// The async `webrtc` client dials ICE-TCP passive candidates only when
    /// they are added one by one, not when they arrive in the answer SDP, so
    /// a TCP-only client hands them over explicitly (browsers need not).
    async fn add_tcp_candidates(&self, answer: &str) -> Result<()> {
        for line in answer.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(candidate) = line.strip_prefix("a=")
                && candidate.starts_with("candidate:")
                && candidate.contains(" tcp ")
                && candidate.contains("tcptype passive")
            {
                self.pc
                    .add_ice_candidate(webrtc::peer_connection::RTCIceCandidateInit {
                        candidate: candidate.to_owned(),
                        sdp_mid: Some("0".into()),
                        sdp_mline_index: Some(0),
                        ..Default::default()
                    })
                    .await?;
            }
        }
        Ok(())
    }

    async fn local_offer(&mut self) -> Result<String> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        tokio::time::timeout(
            Duration::from_secs(5),
            self.gathering
                .wait_for(|s| *s == RTCIceGatheringState::Complete),
        )
        .await
        .context("ICE gathering timed out")??;
        Ok(self
            .pc
            .local_description()
            .await
            .ok_or_else(|| anyhow!("no local description"))?
            .sdp)
    }

    async fn wait_connected(&mut self, limit: Duration) -> Result<()> {
        use RTCPeerConnectionState::*;
        let state = tokio::time::timeout(
            limit,
            self.state
                .wait_for(|s| matches!(s, Connected | Failed | Closed)),
        )
        .await
        .context("peer connection did not connect in time")??;
        if *state != Connected {
            bail!("peer connection ended in {}", *state);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// HTTP signalling

/// The gateway's reply to an offer.
#[derive(Debug, Clone)]
pub struct SignalReply {
    pub status: u16,
    pub location: Option<String>,
    pub etag: Option<String>,
    pub links: Vec<String>,
    pub body: String,
}

pub async fn post_offer(url: &str, sdp: &str, token: Option<&str>) -> Result<SignalReply> {
    post_offer_as(url, sdp, token, None).await
}

/// [`post_offer`] with a `User-Agent`, as OBS or a browser sends one.
pub async fn post_offer_as(
    url: &str,
    sdp: &str,
    token: Option<&str>,
    user_agent: Option<&str>,
) -> Result<SignalReply> {
    let client = reqwest::Client::new();
    let mut req = client
        .post(url)
        .header("Content-Type", "application/sdp")
        .body(sdp.to_owned());
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(agent) = user_agent {
        req = req.header("User-Agent", agent);
    }
    let res = req.send().await?;
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = header("location");
    let etag = header("etag");
    let links = res
        .headers()
        .get_all("link")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let status = res.status().as_u16();
    let body = res.text().await?;
    Ok(SignalReply {
        status,
        location,
        etag,
        links,
        body,
    })
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// Sends DELETE to a session resource; returns the status.
pub async fn delete(url: &str, token: Option<&str>) -> Result<u16> {
    let mut req = reqwest::Client::new().delete(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    Ok(req.send().await?.status().as_u16())
}

// ---------------------------------------------------------------------------
// Publisher

/// How a publisher shapes its offer.
#[derive(Clone)]
pub struct PublishOptions {
    pub video: Option<VideoCodec>,
    pub audio: bool,
    pub token: Option<String>,
    /// Rewrite the offer the way OBS sends it: no candidates, session-level
    /// ICE attributes and fingerprint, `a=group:LS`, PT 96/111.
    pub obs_shape: bool,
    /// Send the video as simulcast layers with these rids, smallest first.
    pub simulcast: Vec<&'static str>,
    /// Open a "chat" data channel, as the publish page does.
    pub data_channel: bool,
    /// Use ICE-TCP only, as a client whose network blocks UDP.
    pub tcp_only: bool,
    /// Publish this real, decodable clip with [`Publisher::run_media`]. Its
    /// codecs decide the tracks: `video` and `audio` above are then ignored.
    pub media: Option<ClipSpec>,
    /// Drop this fraction of outgoing RTP packets on the wire (after the
    /// NACK responder stored them), with a seeded RNG; 0 for none.
    pub loss: f64,
    pub loss_seed: u64,
    /// The `User-Agent` of the WHIP request (none by default).
    pub user_agent: Option<String>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            video: Some(VideoCodec::H264),
            audio: true,
            token: None,
            obs_shape: false,
            simulcast: Vec::new(),
            data_channel: false,
            tcp_only: false,
            media: None,
            loss: 0.0,
            loss_seed: 0x5eed,
            user_agent: None,
        }
    }
}

impl PublishOptions {
    /// Publishes the default clip (640x360 30 fps, Opus) in `codec`.
    pub fn media(codec: VideoCodec) -> Self {
        Self {
            media: Some(ClipSpec::new(codec)),
            ..Self::default()
        }
    }
}

/// What [`Publisher::run_media`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaSent {
    pub video_frames: u64,
    pub audio_packets: u64,
    pub video_rtp_packets: u64,
    pub audio_rtp_packets: u64,
    /// How often the clip was started over (0 for less than one loop).
    pub loops: u64,
}

/// One track's send state in [`Publisher::run_media`].
struct Lane<'a> {
    track: &'a TrackLocalStaticRTP,
    ssrc: u32,
    pt: u8,
    clock_rate: u64,
    frames: &'a [crate::clip::Frame],
    payloader: Box<dyn Payloader>,
    audio: bool,
    seq: u16,
    ts_base: u32,
    /// Index of the next sample, counting across loops.
    next: u64,
    rtp_packets: u64,
}

impl Lane<'_> {
    /// Media time of sample `n` (loops included).
    fn media_time(&self, n: u64, loop_len: Duration) -> Duration {
        let len = self.frames.len() as u64;
        let loops = n / len;
        loop_len * loops as u32 + self.frames[(n % len) as usize].pts
    }
}

/// Room for the RTP header: payloads fit 1200-byte packets, as
/// `TrackLocalStaticSample` makes them.
const MEDIA_PAYLOAD_MTU: usize = 1200 - 12;

pub struct Publisher {
    conn: Conn,
    pub resource: String,
    pub etag: Option<String>,
    pub answer: String,
    token: Option<String>,
    pub video: Option<(Arc<TrackLocalStaticRTP>, u32, u8, VideoCodec)>,
    /// Simulcast layers: (rid, ssrc), and the mid/rid extension ids.
    pub layers: Vec<(&'static str, u32)>,
    layer_ext: Option<(u8, u8, String)>,
    pub audio: Option<(Arc<TrackLocalStaticRTP>, u32, u8)>,
    /// Keyframe requests the gateway sent us.
    pub plis: Arc<Mutex<u32>>,
    chat: Option<(Arc<dyn DataChannel>, watch::Receiver<bool>)>,
    /// The clip [`Publisher::run_media`] sends.
    pub clip: Option<Arc<Clip>>,
    /// What the loss injector did, when `loss` was set.
    pub loss: Option<Arc<LossStats>>,
}

async fn pt_for(sender: &Arc<dyn RtpSender>, codec: &RTCRtpCodec) -> Result<u8> {
    let p = sender.get_parameters().await?;
    let same = |x: &RTCRtpCodec| x.mime_type.eq_ignore_ascii_case(&codec.mime_type);
    // Prefer the entry with our fmtp (VP9 profile 0 over profile 1).
    let codecs = &p.rtp_parameters.codecs;
    codecs
        .iter()
        .find(|x| same(&x.rtp_codec) && x.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line)
        .or_else(|| codecs.iter().find(|x| same(&x.rtp_codec)))
        .map(|x| x.payload_type)
        .ok_or_else(|| anyhow!("{} not negotiated", codec.mime_type))
}

fn track(kind: RtpCodecKind, id: &str, codec: RTCRtpCodec, ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        "whipcord-test".into(),
        id.into(),
        format!("{id}-label"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )
}

fn sendonly() -> Option<RTCRtpTransceiverInit> {
    Some(RTCRtpTransceiverInit {
        direction: Dir::Sendonly,
        streams: vec![],
        send_encodings: vec![],
    })
}

/// Rewrites a webrtc-rs offer into the shape OBS sends.
pub fn obs_shape(sdp: &str) -> String {
    let lines: Vec<&str> = sdp.lines().map(|l| l.trim_end_matches('\r')).collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.to_string())
    };
    let ufrag = find("a=ice-ufrag:");
    let pwd = find("a=ice-pwd:");
    let fingerprint = find("a=fingerprint:");
    let mut out = Vec::new();
    let mut in_media = false;
    for line in &lines {
        if line.starts_with("a=candidate")
            || line.starts_with("a=end-of-candidates")
            || line.starts_with("a=ice-ufrag")
            || line.starts_with("a=ice-pwd")
            || line.starts_with("a=fingerprint")
        {
            continue;
        }
        if line.starts_with("m=") && !in_media {
            in_media = true;
            if let Some(l) = &ufrag {
                out.push(l.clone());
            }
            if let Some(l) = &pwd {
                out.push(l.clone());
            }
            if let Some(l) = &fingerprint {
                out.push(l.clone());
            }
            out.push("a=ice-options:ice2,trickle".into());
        }
        if line.starts_with("a=group:BUNDLE") {
            out.push(line.to_string());
            out.push(line.replace("a=group:BUNDLE", "a=group:LS"));
            continue;
        }
        out.push(line.to_string());
    }
    let mut joined = out.join("\r\n");
    joined.push_str("\r\n");
    joined
}

impl Publisher {
    pub async fn connect(base: &str, stream: &str, mut options: PublishOptions) -> Result<Self> {
        let codecs = if options.obs_shape {
            CodecSet::ObsLike
        } else {
            CodecSet::Default
        };
        let clip = match options.media.clone() {
            Some(spec) => {
                options.video = spec.video;
                options.audio = spec.audio;
                let clip = tokio::task::spawn_blocking(move || Clip::ensure(&spec)).await??;
                Some(Arc::new(clip))
            }
            None => None,
        };
        let loss = (options.loss > 0.0).then(|| {
            (
                Loss {
                    rate: options.loss,
                    seed: options.loss_seed,
                },
                Arc::new(LossStats::default()),
            )
        });
        let loss_stats = loss.as_ref().map(|(_, stats)| stats.clone());
        let mut conn = new_conn_with_loss(codecs, options.tcp_only, loss).await?;
        let mut video = None;
        let mut audio = None;
        if options.audio {
            let ssrc = rand::random::<u32>() | 1;
            let t = Arc::new(TrackLocalStaticRTP::new(track(
                RtpCodecKind::Audio,
                "audio",
                synth::opus_codec(),
                ssrc,
            )));
            let tr = conn
                .pc
                .add_transceiver_from_track(t.clone(), sendonly())
                .await?;
            audio = Some((t, ssrc, tr));
        }
        let mut layers = Vec::new();
        if let Some(codec) = options.video {
            let ssrc = rand::random::<u32>() | 1;
            let (t, init) = if options.simulcast.is_empty() {
                let t = Arc::new(TrackLocalStaticRTP::new(track(
                    RtpCodecKind::Video,
                    "video",
                    codec.rtp_codec(),
                    ssrc,
                )));
                (t, sendonly())
            } else {
                let encodings: Vec<RTCRtpEncodingParameters> = options
                    .simulcast
                    .iter()
                    .enumerate()
                    .map(|(i, rid)| {
                        layers.push((*rid, ssrc.wrapping_add(i as u32)));
                        RTCRtpEncodingParameters {
                            rtp_coding_parameters: RTCRtpCodingParameters {
                                rid: (*rid).into(),
                                ssrc: Some(ssrc.wrapping_add(i as u32)),
                                ..Default::default()
                            },
                            codec: codec.rtp_codec(),
                            ..Default::default()
                        }
                    })
                    .collect();
                let t = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                    "whipcord-test".into(),
                    "video".into(),
                    "video-label".into(),
                    RtpCodecKind::Video,
                    encodings.clone(),
                )));
                let init = Some(RTCRtpTransceiverInit {
                    direction: Dir::Sendonly,
                    streams: vec![],
                    send_encodings: encodings,
                });
                (t, init)
            };
            let tr = conn.pc.add_transceiver_from_track(t.clone(), init).await?;
            video = Some((t, ssrc, tr, codec));
        }
        let chat = if options.data_channel {
            let dc = conn.pc.create_data_channel("chat", None).await?;
            let (open_tx, open_rx) = watch::channel(false);
            let events = dc.clone();
            tokio::spawn(async move {
                while let Some(event) = events.poll().await {
                    if matches!(event, DataChannelEvent::OnOpen) {
                        let _ = open_tx.send(true);
                    }
                }
            });
            Some((dc, open_rx))
        } else {
            None
        };
        let mut offer = conn.local_offer().await?;
        if options.obs_shape {
            offer = obs_shape(&offer);
        }
        let reply = post_offer_as(
            &format!("{base}/whip/{stream}"),
            &offer,
            options.token.as_deref(),
            options.user_agent.as_deref(),
        )
        .await?;
        if reply.status != 201 {
            bail!("WHIP POST answered {}: {}", reply.status, reply.body);
        }
        let location = reply.location.clone().context("201 without Location")?;
        conn.pc
            .set_remote_description(RTCSessionDescription::answer(reply.body.clone())?)
            .await?;
        if options.tcp_only {
            conn.add_tcp_candidates(&reply.body).await?;
        }
        conn.wait_connected(Duration::from_secs(10))
            .await
            .with_context(|| format!("publisher offer:\n{offer}\nanswer:\n{}", reply.body))?;

        let plis = Arc::new(Mutex::new(0u32));
        let mut layer_ext = None;
        let video = match video {
            Some((t, ssrc, tr, codec)) => {
                let sender = tr.sender().await?.context("video sender")?;
                let pt = pt_for(&sender, &codec.rtp_codec()).await?;
                if !layers.is_empty() {
                    // The stack announces rids but does not stamp packets
                    // with them; that is the sender's job.
                    let params = sender.get_parameters().await?;
                    let ext = |uri: &str| {
                        params
                            .rtp_parameters
                            .header_extensions
                            .iter()
                            .find(|e| e.uri == uri)
                            .map(|e| e.id as u8)
                    };
                    let mid = tr.mid().await?.context("video mid")?;
                    layer_ext = Some((
                        ext("urn:ietf:params:rtp-hdrext:sdes:mid").context("no mid extension")?,
                        ext("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id")
                            .context("no rid extension")?,
                        mid,
                    ));
                }
                let watcher: Arc<dyn TrackLocal> = t.clone();
                let counter = plis.clone();
                tokio::spawn(async move {
                    while let Some(event) = watcher.poll().await {
                        if let TrackLocalEvent::OnRtcpPacket(pkts) = event
                            && pkts.iter().any(|p| {
                                p.as_any().is::<PictureLossIndication>()
                                    || p.as_any().is::<FullIntraRequest>()
                            })
                            && let Ok(mut n) = counter.lock()
                        {
                            *n += 1;
                        }
                    }
                });
                Some((t, ssrc, pt, codec))
            }
            None => None,
        };
        let audio = match audio {
            Some((t, ssrc, tr)) => {
                let sender = tr.sender().await?.context("audio sender")?;
                let pt = pt_for(&sender, &synth::opus_codec()).await?;
                Some((t, ssrc, pt))
            }
            None => None,
        };
        Ok(Self {
            conn,
            resource: absolute(base, &location),
            etag: reply.etag,
            answer: reply.body,
            token: options.token,
            video,
            layers,
            layer_ext,
            audio,
            plis,
            chat,
            clip,
            loss: loss_stats,
        })
    }

    /// Publishes the clip from [`PublishOptions::media`] in real time for
    /// `duration`, looping it with continuous RTP timestamps, through the
    /// codecs' RTP payloaders. Video and audio run on one clock: each
    /// sample leaves at `start + its media time`, and its RTP timestamp is
    /// that media time, so the Sender Reports (which map the latest RTP
    /// timestamp to the wall clock it was sent at) put both tracks on the
    /// same NTP timeline.
    pub async fn run_media(&self, duration: Duration) -> Result<MediaSent> {
        let clip = self
            .clip
            .as_ref()
            .context("connect with PublishOptions::media to send a clip")?;
        let loop_len = clip.duration();
        let mut lanes: Vec<Lane<'_>> = Vec::new();
        if let Some((track, ssrc, pt, codec)) = &self.video
            && !clip.video.is_empty()
        {
            let payloader: Box<dyn Payloader> = if *codec == VideoCodec::Vp9 {
                Box::new(Vp9Payloader::new(
                    clip.spec.width as u16,
                    clip.spec.height as u16,
                ))
            } else {
                codec.rtp_codec().payloader()?
            };
            lanes.push(Lane {
                track,
                ssrc: *ssrc,
                pt: *pt,
                clock_rate: 90_000,
                frames: &clip.video,
                payloader,
                audio: false,
                seq: rand::random(),
                ts_base: rand::random(),
                next: 0,
                rtp_packets: 0,
            });
        }
        if let Some((track, ssrc, pt)) = &self.audio
            && !clip.audio.is_empty()
        {
            lanes.push(Lane {
                track,
                ssrc: *ssrc,
                pt: *pt,
                clock_rate: 48_000,
                frames: &clip.audio,
                payloader: synth::opus_codec().payloader()?,
                audio: true,
                seq: rand::random(),
                ts_base: rand::random(),
                next: 0,
                rtp_packets: 0,
            });
        }
        if lanes.is_empty() {
            bail!("the clip has no track this publisher sends");
        }
        let start = tokio::time::Instant::now();
        // Each pass sends one sample, and samples' media times grow, so
        // this ends once every lane's next sample is past `duration`.
        while let Some((lane, at)) = lanes
            .iter_mut()
            .map(|l| {
                let at = l.media_time(l.next, loop_len);
                (l, at)
            })
            .filter(|(_, at)| *at < duration)
            .min_by_key(|(_, at)| *at)
        {
            tokio::time::sleep_until(start + at).await;
            let frame = &lane.frames[(lane.next % lane.frames.len() as u64) as usize];
            let ticks = (at.as_nanos() * u128::from(lane.clock_rate) / 1_000_000_000) as u64;
            let timestamp = lane.ts_base.wrapping_add(ticks as u32);
            let payloads = lane.payloader.payload(MEDIA_PAYLOAD_MTU, &frame.data)?;
            let count = payloads.len();
            for (i, payload) in payloads.into_iter().enumerate() {
                let marker = if lane.audio {
                    // RFC 3551: the first packet of a talkspurt.
                    lane.next == 0
                } else {
                    i + 1 == count
                };
                let packet = rtp::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        marker,
                        payload_type: lane.pt,
                        sequence_number: lane.seq,
                        timestamp,
                        ssrc: lane.ssrc,
                        ..Default::default()
                    },
                    payload,
                };
                lane.seq = lane.seq.wrapping_add(1);
                lane.track.write_rtp(packet).await?;
                lane.rtp_packets += 1;
            }
            lane.next += 1;
        }
        let mut sent = MediaSent::default();
        for lane in &lanes {
            let loops = lane.next.saturating_sub(1) / lane.frames.len() as u64;
            sent.loops = sent.loops.max(loops);
            if lane.audio {
                sent.audio_packets = lane.next;
                sent.audio_rtp_packets = lane.rtp_packets;
            } else {
                sent.video_frames = lane.next;
                sent.video_rtp_packets = lane.rtp_packets;
            }
        }
        Ok(sent)
    }

    /// Runs [`Publisher::run_media`] in a task.
    pub fn spawn_run_media(
        self: &Arc<Self>,
        duration: Duration,
    ) -> tokio::task::JoinHandle<Result<MediaSent>> {
        let publisher = self.clone();
        tokio::spawn(async move { publisher.run_media(duration).await })
    }

    /// RTP packets the loss injector dropped so far (0 without loss).
    pub fn dropped_packets(&self) -> u64 {
        self.loss.as_ref().map_or(0, |l| l.dropped())
    }

    /// Publishes synthetic media in real time for `duration`, with a
    /// keyframe every `gop` (and never on request: like OBS, it ignores PLI).
    pub async fn run(&self, duration: Duration, gop: Duration) -> Result<()> {
        let mut source = synth::Source::new(30, gop);
        let start = Instant::now();
        let mut frame = 0u64;
        while start.elapsed() < duration {
            let due = start + Duration::from_millis(frame * 1000 / 30);
            tokio::time::sleep_until(due.into()).await;
            if let Some((t, ssrc, pt, codec)) = &self.video {
                if let Some((mid_id, rid_id, mid)) = &self.layer_ext {
                    // Same frames on every layer; higher layers pad their
                    // payloads so they carry clearly more bitrate.
                    let frame = source.video_frame(*codec, *ssrc, *pt);
                    for (index, (rid, layer_ssrc)) in self.layers.iter().enumerate() {
                        for mut p in frame.iter().cloned() {
                            p.header.ssrc = *layer_ssrc;
                            let mut payload = p.payload.to_vec();
                            payload.resize(payload.len() + index * 180, 0x11);
                            p.payload = payload.into();
                            p.header
                                .set_extension(*mid_id, bytes::Bytes::from(mid.clone()))?;
                            p.header
                                .set_extension(*rid_id, bytes::Bytes::from(rid.to_string()))?;
                            t.write_rtp(p).await?;
                        }
                    }
                } else {
                    for p in source.video_frame(*codec, *ssrc, *pt) {
                        t.write_rtp(p).await?;
                    }
                }
            }
            if let Some((t, ssrc, pt)) = &self.audio {
                // 30 fps video frames, 50 audio packets per second.
                for p in source.audio_until(*ssrc, *pt, due.duration_since(start)) {
                    t.write_rtp(p).await?;
                }
            }
            frame += 1;
        }
        Ok(())
    }

    /// Runs [`Publisher::run`] in a task, so the test can join viewers
    /// while media flows.
    pub fn spawn_run(
        self: &Arc<Self>,
        duration: Duration,
        gop: Duration,
    ) -> tokio::task::JoinHandle<Result<()>> {
        let publisher = self.clone();
        tokio::spawn(async move { publisher.run(duration, gop).await })
    }

    /// Sends a text message on the publisher's data channel, once open.
    pub async fn send_chat(&self, text: &str) -> Result<()> {
        let (dc, open) = self.chat.as_ref().context("no data channel requested")?;
        let mut open = open.clone();
        tokio::time::timeout(Duration::from_secs(5), open.wait_for(|o| *o))
            .await
            .context("data channel did not open")??;
        dc.send_text(text).await?;
        Ok(())
    }

    pub fn pli_count(&self) -> u32 {
        self.plis.lock().map(|n| *n).unwrap_or(0)
    }

    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.conn.state.borrow()
    }

    pub async fn delete(&self) -> Result<u16> {
        delete(&self.resource, self.token.as_deref()).await
    }

    pub async fn close(self) -> Result<()> {
        self.conn.pc.close().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Viewer

/// What a viewer saw on one track.
#[derive(Debug, Clone, Default)]
pub struct TrackStats {
    pub kind: String,
    pub mime: String,
    pub packets: u64,
    pub first_at: Option<Instant>,
    pub first_payload: Vec<u8>,
    pub last_at: Option<Instant>,
    pub highest_seq: Option<u64>,
    pub lowest_seq: Option<u64>,
    /// Sequence numbers seen, for loss accounting (extended, unwrapped).
    seen: std::collections::BTreeSet<u64>,
    ended: bool,
}

impl TrackStats {
    /// Packets missing between the first and last sequence number seen.
    pub fn lost(&self) -> u64 {
        match (self.lowest_seq, self.highest_seq) {
            (Some(lo), Some(hi)) => (hi - lo + 1).saturating_sub(self.seen.len() as u64),
            _ => 0,
        }
    }
}

pub struct Viewer {
    conn: Conn,
    pub resource: String,
    pub etag: Option<String>,
    pub answer: String,
    pub connected_at: Instant,
    pub requested_at: Instant,
    pub stats: Arc<Mutex<Vec<TrackStats>>>,
    pub messages: Arc<Mutex<Vec<String>>>,
    token: Option<String>,
}

#[derive(Clone, Default)]
pub struct WatchOptions {
    pub token: Option<String>,
    pub video: bool,
    pub audio: bool,
    pub data_channel: bool,
    pub tcp_only: bool,
}

impl WatchOptions {
    pub fn av() -> Self {
        Self {
            token: None,
            video: true,
            audio: true,
            data_channel: true,
            tcp_only: false,
        }
    }
}

fn recvonly() -> Option<RTCRtpTransceiverInit> {
    Some(RTCRtpTransceiverInit {
        direction: Dir::Recvonly,
        streams: vec![],
        send_encodings: vec![],
    })
}

/// Prepares a viewer offer without sending it.
pub struct PendingViewer {
    conn: Conn,
    pub offer: String,
    dc: Option<Arc<dyn DataChannel>>,
    tcp_only: bool,
}

impl PendingViewer {
    pub async fn new(options: &WatchOptions) -> Result<Self> {
        let mut conn = new_conn(CodecSet::Default, options.tcp_only).await?;
        if options.video {
            conn.pc
                .add_transceiver_from_kind(RtpCodecKind::Video, recvonly())
                .await?;
        }
        if options.audio {
            conn.pc
                .add_transceiver_from_kind(RtpCodecKind::Audio, recvonly())
                .await?;
        }
        let dc = if options.data_channel {
            Some(conn.pc.create_data_channel("chat", None).await?)
        } else {
            None
        };
        let offer = conn.local_offer().await?;
        Ok(Self {
            conn,
            offer,
            dc,
            tcp_only: options.tcp_only,
        })
    }
}

impl Viewer {
    pub async fn connect(base: &str, stream: &str, options: WatchOptions) -> Result<Self> {
        let pending = PendingViewer::new(&options).await?;
        Self::connect_pending(base, stream, pending, options.token).await
    }

    pub async fn connect_pending(
        base: &str,
        stream: &str,
        pending: PendingViewer,
        token: Option<String>,
    ) -> Result<Self> {
        let PendingViewer {
            mut conn,
            offer,
            dc,
            tcp_only,
        } = pending;
        let requested_at = Instant::now();
        let reply = post_offer(&format!("{base}/whep/{stream}"), &offer, token.as_deref()).await?;
        if reply.status != 201 {
            bail!("WHEP POST answered {}: {}", reply.status, reply.body);
        }
        let location = reply.location.clone().context("201 without Location")?;
        conn.pc
            .set_remote_description(RTCSessionDescription::answer(reply.body.clone())?)
            .await?;
        if tcp_only {
            conn.add_tcp_candidates(&reply.body).await?;
        }
        let stats: Arc<Mutex<Vec<TrackStats>>> = Arc::new(Mutex::new(Vec::new()));
        let messages = Arc::new(Mutex::new(Vec::new()));
        // Start readers before the connection is up: the first packets
        // (the GOP replay) arrive right after DTLS completes.
        let mut tracks = std::mem::replace(&mut conn.tracks, mpsc::unbounded_channel().1);
        let reader_stats = stats.clone();
        tokio::spawn(async move {
            while let Some(track) = tracks.recv().await {
                let stats = reader_stats.clone();
                tokio::spawn(read_track(track, stats));
            }
        });
        if let Some(dc) = dc {
            let messages = messages.clone();
            tokio::spawn(async move {
                while let Some(event) = dc.poll().await {
                    if let DataChannelEvent::OnMessage(m) = event
                        && let Ok(mut list) = messages.lock()
                    {
                        list.push(String::from_utf8_lossy(&m.data).into_owned());
                    }
                }
            });
        }
        conn.wait_connected(Duration::from_secs(10)).await?;
        Ok(Self {
            connected_at: Instant::now(),
            requested_at,
            conn,
            resource: absolute(base, &location),
            etag: reply.etag,
            answer: reply.body,
            stats,
            messages,
            token,
        })
    }

    pub fn snapshot(&self) -> Vec<TrackStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `n` tracks have each received at least `packets`.
    pub async fn wait_tracks(
        &self,
        n: usize,
        packets: u64,
        limit: Duration,
    ) -> Result<Vec<TrackStats>> {
        let deadline = Instant::now() + limit;
        loop {
            let snap = self.snapshot();
            if snap.len() >= n && snap.iter().all(|t| t.packets >= packets) {
                return Ok(snap);
            }
            if Instant::now() > deadline {
                bail!("viewer saw {:?} within {limit:?}", summarize(&snap));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.conn.state.borrow()
    }

    /// Waits for the connection to leave Connected (the gateway ended it).
    pub async fn wait_ended(&mut self, limit: Duration) -> Result<Duration> {
        use RTCPeerConnectionState::*;
        let start = Instant::now();
        tokio::time::timeout(
            limit,
            self.conn
                .state
                .wait_for(|s| matches!(s, Disconnected | Failed | Closed)),
        )
        .await
        .context("viewer connection did not end in time")??;
        Ok(start.elapsed())
    }

    pub async fn delete(&self) -> Result<u16> {
        delete(&self.resource, self.token.as_deref()).await
    }

    pub async fn close(self) -> Result<()> {
        self.conn.pc.close().await?;
        Ok(())
    }
}

fn summarize(stats: &[TrackStats]) -> Vec<(String, u64)> {
    stats.iter().map(|t| (t.mime.clone(), t.packets)).collect()
}

async fn read_track(track: Arc<dyn TrackRemote>, stats: Arc<Mutex<Vec<TrackStats>>>) {
    let kind = track.kind().await.to_string();
    let mime = match track.ssrcs().await.first() {
        Some(ssrc) => track
            .codec(*ssrc)
            .await
            .map(|c| c.mime_type)
            .unwrap_or_default(),
        None => String::new(),
    };
    let index = {
        let Ok(mut list) = stats.lock() else { return };
        list.push(TrackStats {
            kind,
            mime,
            ..TrackStats::default()
        });
        list.len() - 1
    };
    let mut unwrap = SeqUnwrap::default();
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let now = Instant::now();
                let ext = unwrap.extend(packet.header.sequence_number);
                let Ok(mut list) = stats.lock() else { return };
                let Some(entry) = list.get_mut(index) else {
                    return;
                };
                if entry.first_at.is_none() {
                    entry.first_at = Some(now);
                    entry.first_payload = packet.payload.to_vec();
                }
                if entry.mime.is_empty() {
                    entry.mime = format!("pt{}", packet.header.payload_type);
                }
                entry.packets += 1;
                entry.last_at = Some(now);
                entry.highest_seq = Some(entry.highest_seq.map_or(ext, |h| h.max(ext)));
                entry.lowest_seq = Some(entry.lowest_seq.map_or(ext, |l| l.min(ext)));
                entry.seen.insert(ext);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    if let Ok(mut list) = stats.lock()
        && let Some(entry) = list.get_mut(index)
    {
        entry.ended = true;
    }
}

/// Extends 16-bit sequence numbers across wraps.
#[derive(Default)]
struct SeqUnwrap {
    last: Option<u64>,
}

impl SeqUnwrap {
    fn extend(&mut self, seq: u16) -> u64 {
        let Some(last) = self.last else {
            let v = 1u64 << 20 | u64::from(seq);
            self.last = Some(v);
            return v;
        };
        let base = last & !0xffff;
        let mut best = base | u64::from(seq);
        for cand in [best.wrapping_sub(0x1_0000), best + 0x1_0000] {
            if cand.abs_diff(last) < best.abs_diff(last) {
                best = cand;
            }
        }
        if best > last {
            self.last = Some(best);
        }
        best
    }
}

/// A keyframe start per the same rules the gateway uses, re-stated here so
/// the test does not trust the code it checks.
pub fn is_keyframe_start(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => match payload.first().map(|b| b & 0x1f) {
            Some(5) | Some(7) => true,
            Some(24) => payload.get(3).is_some_and(|b| matches!(b & 0x1f, 5 | 7)),
            Some(28) => payload
                .get(1)
                .is_some_and(|b| b & 0x80 != 0 && b & 0x1f == 5),
            _ => false,
        },
        VideoCodec::Vp8 => {
            payload
                .first()
                .is_some_and(|b| b & 0x10 != 0 && b & 0x07 == 0)
                && payload.get(1).is_some_and(|b| b & 1 == 0)
        }
        // Not predicted (P = 0) and the start of a frame (B = 1).
        VideoCodec::Vp9 => payload
            .first()
            .is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0),
        // N: the first packet of a coded video sequence.
        VideoCodec::Av1 => payload.first().is_some_and(|b| b & 0x08 != 0),
    }
}

/// Helper for tests that build packets by hand.
pub fn packet(ssrc: u32, pt: u8, seq: u16, ts: u32, payload: Vec<u8>) -> rtp::Packet {
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker: true,
            payload_type: pt,
            ssrc,
            sequence_number: seq,
            timestamp: ts,
            ..Default::default()
        },
        payload: payload.into(),
    }
}
