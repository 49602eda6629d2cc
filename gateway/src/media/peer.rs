//! Our session type around one `rtc` peer connection.
//!
//! Everything the rest of the gateway knows about WebRTC goes through
//! [`Peer`], so the stack underneath (`rtc` today, `str0m` if we ever must)
//! stays replaceable. A peer never touches a socket: the media plane feeds it
//! datagrams and timeouts and sends what it produces.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use recorder::codec::{Codec, MediaKind};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::hub::PeerKey;
use crate::hub::rewrite::Rewriter;
use crate::hub::subscriber::{Audience, TrackDescription};
use crate::media::sdp_scan::OfferSummary;
use crate::signal::{ClientInfo, Role, SessionId, SignalError};
use crate::stream_name::StreamName;

/// Where a viewer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Negotiated, waiting for ICE and DTLS.
    Connecting,
    /// DTLS is up: media flows.
    Connected,
    /// Failed or closed; the plane removes it.
    Closed,
}

/// One outgoing track on a viewer's connection.
pub struct ViewerTrack {
    pub rewriter: Rewriter,
    /// Gets live packets (after GOP replay for video).
    pub live: bool,
}

/// The state a peer keeps per role.
pub enum RoleState {
    Publisher {
        /// Receiver and simulcast rid per incoming SSRC. Simulcast layers
        /// share one track id, so SSRC is what tells them apart.
        receivers: HashMap<u32, (rtc::rtp_transceiver::RTCRtpReceiverId, Option<String>)>,
        /// Hub (track, layer) per incoming SSRC.
        routes: HashMap<u32, (usize, usize)>,
        /// The publisher's data channel, if it opened one.
        data_channel: Option<rtc::data_channel::RTCDataChannelId>,
    },
    Viewer {
        /// Indexed like the stream's hub tracks; `None` where the viewer's
        /// offer has no section of that kind.
        tracks: Vec<Option<ViewerTrack>>,
        data_channel: Option<rtc::data_channel::RTCDataChannelId>,
    },
}

pub struct Peer {
    pub key: PeerKey,
    pub session: SessionId,
    pub role: Role,
    pub stream: StreamName,
    pub client: ClientInfo,
    pub ufrag: String,
    pub etag: String,
    pub pc: RTCPeerConnection,
    pub state: PeerState,
    pub role_state: RoleState,
    pub created: Instant,
    pub connected_at: Option<Instant>,
    /// Remote transport address, once ICE has seen it.
    pub remote: Option<SocketAddr>,
    /// Our candidate address the peer talks to; ICE matches on it exactly.
    pub local: Option<SocketAddr>,
    /// Our IP the peer's datagrams arrive on, used as the source of replies.
    pub src_ip: Option<std::net::IpAddr>,
    pub deadline: Option<Instant>,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub send_errors: u64,
    /// A viewer's keyframe requests and NACKs, and the loss its last
    /// receiver report gave.
    pub plis: u64,
    pub nacks: u64,
    pub loss_pct: f64,
    /// (when, bytes_out) at the last rate reading, and the rate.
    pub rate_sample: (Instant, u64),
    pub bitrate_bps: u64,
}

/// Everything fixed for all peers of this process.
pub struct PeerFactory {
    certificate: RTCCertificate,
    candidates: Vec<SocketAddr>,
    /// Also offer passive ICE-TCP candidates on the same addresses.
    ice_tcp: bool,
}

/// A short random ICE credential of `len` characters from the ICE charset.
fn ice_token(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(CHARS[rand::random_range(0..CHARS.len())]))
        .collect()
}

fn internal(err: impl std::fmt::Display) -> SignalError {
    SignalError::Internal(err.to_string())
}

/// Codec parameters as `rtc` wants them.
pub fn rtp_codec(description: &TrackDescription) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: format!(
            "{}/{}",
            match description.codec.kind() {
                MediaKind::Audio => "audio",
                MediaKind::Video => "video",
            },
            description.codec.encoding_name()
        ),
        clock_rate: description.clock_rate,
        channels: description.channels,
        sdp_fmtp_line: description.fmtp.clone(),
        rtcp_feedback: vec![],
    }
}

impl PeerFactory {
    pub fn new(candidates: Vec<SocketAddr>, ice_tcp: bool) -> Result<Self, SignalError> {
        // One certificate for the process: generating one per connection
        // costs most of the answer time, and WebRTC identifies peers by the
        // fingerprint in the signalled SDP, not by certificate uniqueness.
        let provider = rtc::crypto::default_provider().map_err(internal)?;
        let certificate = RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            rtc::peer_connection::certificate::CertificateParams::new(vec!["whipcord".to_owned()])
                .map_err(internal)?,
        )
        .map_err(internal)?;
        Ok(Self {
            certificate,
            candidates,
            ice_tcp,
        })
    }

    fn network_types(&self) -> Vec<rtc::ice::network_type::NetworkType> {
        use rtc::ice::network_type::NetworkType;
        let mut types = vec![NetworkType::Udp4, NetworkType::Udp6];
        if self.ice_tcp {
            types.extend([NetworkType::Tcp4, NetworkType::Tcp6]);
        }
        types
    }

    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// Negotiates a new peer from a WHIP or WHEP offer.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        key: PeerKey,
        role: Role,
        stream: StreamName,
        offer: &str,
        summary: &OfferSummary,
        viewer_tracks: &[TrackDescription],
        client: ClientInfo,
        now: Instant,
    ) -> Result<(Peer, String), SignalError> {
        let ufrag = ice_token(16);
        let pwd = ice_token(32);
        let mut media_engine = MediaEngine::default();
        match role {
            Role::Publisher => media_engine.register_default_codecs().map_err(internal)?,
            Role::Viewer => {
                for (index, description) in viewer_tracks.iter().enumerate() {
                    if description.audience == Audience::Sinks {
                        continue;
                    }
                    let kind = match description.codec.kind() {
                        MediaKind::Audio => RtpCodecKind::Audio,
                        MediaKind::Video => RtpCodecKind::Video,
                    };
                    let params = RTCRtpCodecParameters {
                        rtp_codec: rtp_codec(description),
                        payload_type: 96 + index as u8,
                    };
                    media_engine
                        .register_codec(params, kind)
                        .map_err(internal)?;
                }
            }
        }
        let registry = match role {
            Role::Publisher => publisher_interceptors(&mut media_engine).map_err(internal)?,
            Role::Viewer => viewer_interceptors(&mut media_engine),
        };
        let setting_engine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), pwd)
            .with_answering_dtls_role(RTCDtlsRole::Server)
            // mDNS would multicast from the media socket; browsers' .local
            // candidates are covered by peer-reflexive discovery instead.
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_network_types(self.network_types())
            .build();
        let configuration = RTCConfigurationBuilder::new()
            .with_certificates(vec![self.certificate.clone()])
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(setting_engine)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(internal)?;

        let remote = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|e| SignalError::BadOffer(e.to_string()))?;
        pc.set_remote_description(now, remote)
            .map_err(|e| SignalError::BadOffer(e.to_string()))?;
        // Viewer tracks attach to the offered recvonly transceivers, which
        // exist only once the offer is applied.
        let mut viewer_senders = Vec::new();
        if role == Role::Viewer {
            for description in viewer_tracks {
                let kind = description.codec.kind();
                if !summary.receives(kind) || description.audience == Audience::Sinks {
                    viewer_senders.push(None);
                    continue;
                }
                let ssrc: u32 = rand::random();
                let rtc_kind = match kind {
                    MediaKind::Audio => RtpCodecKind::Audio,
                    MediaKind::Video => RtpCodecKind::Video,
                };
                let track = MediaStreamTrack::new(
                    format!("whipcord-{stream}"),
                    format!("{}-{}", kind_label(kind), viewer_senders.len()),
                    format!("{}", description.codec),
                    rtc_kind,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: rtp_codec(description),
                        ..Default::default()
                    }],
                );
                let sender = pc.add_track(track).map_err(internal)?;
                viewer_senders.push(Some((sender, ssrc, description.clone())));
            }
        }

        let networks: &[&str] = if self.ice_tcp {
            &["udp", "tcp"]
        } else {
            &["udp"]
        };
        for network in networks {
            for address in &self.candidates {
                let candidate = CandidateHostConfig {
                    base_config: CandidateConfig {
                        network: (*network).to_owned(),
                        address: address.ip().to_string(),
                        port: address.port(),
                        component: 1,
                        ..Default::default()
                    },
                    tcp_type: if *network == "tcp" {
                        rtc::ice::tcp_type::TcpType::Passive
                    } else {
                        rtc::ice::tcp_type::TcpType::Unspecified
                    },
                }
                .new_candidate_host()
                .map_err(internal)?;
                let init = RTCIceCandidate::from(&candidate)
                    .to_json()
                    .map_err(internal)?;
                pc.add_local_candidate(init).map_err(internal)?;
            }
        }
        let answer = pc
            .create_answer(None)
            .map_err(|e| SignalError::BadOffer(e.to_string()))?;
        pc.set_local_description(now, answer)
            .map_err(|e| SignalError::BadOffer(e.to_string()))?;
        let sdp = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| internal("no local description"))?;

        let role_state = match role {
            Role::Publisher => RoleState::Publisher {
                receivers: HashMap::new(),
                routes: HashMap::new(),
                data_channel: None,
            },
            Role::Viewer => {
                let mut tracks = Vec::new();
                for entry in viewer_senders {
                    let Some((sender_id, ssrc, description)) = entry else {
                        tracks.push(None);
                        continue;
                    };
                    let wanted = rtp_codec(&description);
                    let pt = pc
                        .rtp_sender(sender_id)
                        .and_then(|mut s| {
                            s.get_parameters()
                                .rtp_parameters
                                .codecs
                                .iter()
                                .find(|c| {
                                    c.rtp_codec
                                        .mime_type
                                        .eq_ignore_ascii_case(&wanted.mime_type)
                                })
                                .map(|c| c.payload_type)
                        })
                        .ok_or_else(|| {
                            SignalError::UnsupportedCodec(format!(
                                "viewer offer cannot receive {} (the stream's {} codec)",
                                description.codec,
                                kind_label(description.codec.kind())
                            ))
                        })?;
                    tracks.push(Some(ViewerTrack {
                        rewriter: Rewriter::new(ssrc, pt, description.clock_rate),
                        live: description.codec.kind() == MediaKind::Audio,
                    }));
                }
                RoleState::Viewer {
                    tracks,
                    data_channel: None,
                }
            }
        };
        let etag = format!("\"{}\"", ice_token(12));
        let peer = Peer {
            key,
            session: SessionId::random(),
            role,
            stream,
            client,
            ufrag,
            etag,
            pc,
            state: PeerState::Connecting,
            role_state,
            created: now,
            connected_at: None,
            remote: None,
            local: None,
            src_ip: None,
            deadline: None,
            packets_out: 0,
            bytes_out: 0,
            send_errors: 0,
            plis: 0,
            nacks: 0,
            loss_pct: 0.0,
            rate_sample: (now, 0),
            bitrate_bps: 0,
        };
        Ok((peer, sdp))
    }
}

/// The interceptors of a viewer leg, which only sends: answer NACKs from
/// what it sent, send sender reports (browsers need them for lip sync), and
/// let keyframe requests through to us. The receive-side interceptors of
/// the default set (NACK generator, receiver reports, TWCC) would run on
/// every forwarded packet for nothing.
fn viewer_interceptors(media_engine: &mut MediaEngine) -> Registry {
    use rtc::interceptor::{NackResponderBuilder, SenderReportBuilder, Slot};
    use rtc::rtp_transceiver::rtp_sender::RTCPFeedback;
    for (typ, parameter) in [("nack", ""), ("nack", "pli"), ("ccm", "fir")] {
        media_engine.register_feedback(
            RTCPFeedback {
                typ: typ.to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    Registry::new()
        // About 1.5 s of a 2.5 Mbit/s stream: enough for a NACK round trip,
        // small enough for hundreds of viewers.
        .with(
            Slot::NackResponder,
            NackResponderBuilder::new().with_size(512).build(),
        )
        .with(Slot::SenderReport, SenderReportBuilder::new().build())
        .with(
            Slot::from(super::rtcp_tap::SLOT),
            super::rtcp_tap::ApplicationRtcpTap::default(),
        )
}

/// The interceptors of a publisher leg, which only receives: `rtc`'s
/// default set, except that a missing packet is asked for a bounded number
/// of times. The default NACK generator repeats its request every 100 ms
/// for as long as the packet is missing, and a lossy link then carries
/// about twenty resends per lost packet (measured at 5 % loss); the
/// recorder waits 400 ms for a packet anyway.
fn publisher_interceptors(
    media_engine: &mut MediaEngine,
) -> Result<Registry, rtc::shared::error::Error> {
    use rtc::interceptor::{NackGeneratorBuilder, Slot};
    use rtc::peer_connection::configuration::interceptor_registry::{
        configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
    };
    use rtc::rtp_transceiver::rtp_sender::RTCPFeedback;
    for parameter in ["", "pli"] {
        media_engine.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    configure_simulcast_extension_headers(media_engine)?;
    let registry = Registry::new().with(
        Slot::NackGenerator,
        NackGeneratorBuilder::new()
            .with_max_nacks_per_packet(NACKS_PER_PACKET)
            .build(),
    );
    let registry = configure_twcc_receiver_only(registry, media_engine)?;
    Ok(configure_rtcp_reports(registry).with(
        Slot::from(super::rtcp_tap::SLOT),
        super::rtcp_tap::ApplicationRtcpTap::default(),
    ))
}

/// How many times a publisher is asked for one missing packet.
const NACKS_PER_PACKET: u16 = 3;

fn kind_label(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

impl Peer {
    /// Feeds one datagram from `from`, received on our address `local`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        protocol: TransportProtocol,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) {
        let result = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: from,
                ecn: None,
                transport_protocol: protocol,
            },
            message: BytesMut::from(data),
        });
        if let Err(err) = result {
            tracing::debug!(session = %self.session, "datagram rejected: {err}");
        }
    }

    /// Queues a forwarded RTP packet whose SSRC and payload type the caller
    /// has already rewritten for this leg (see `hub::rewrite`).
    ///
    /// This skips `RTCRtpSender::write_rtp`, whose checks we guarantee by
    /// construction and which allocates the track id on every call; the
    /// pipeline below it (interceptors, SRTP) is the same.
    pub fn forward_rtp(pc: &mut RTCPeerConnection, now: Instant, packet: rtc::rtp::Packet) {
        let message = rtc::peer_connection::message::TaggedRTCMessage {
            now,
            message: rtc::peer_connection::message::RTCMessage::RtpPacket(String::new(), packet),
        };
        if let Err(err) = pc.handle_write(message) {
            tracing::debug!("forwarding failed: {err}");
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(err) = self.pc.handle_timeout(now) {
            tracing::debug!(session = %self.session, "timeout handling failed: {err}");
        }
    }

    /// Codec of a publisher's incoming track, from the payload type of its
    /// first packet.
    pub fn incoming_description(
        &mut self,
        receiver: rtc::rtp_transceiver::RTCRtpReceiverId,
        payload_type: u8,
    ) -> Option<TrackDescription> {
        let mut receiver = self.pc.rtp_receiver(receiver)?;
        let params = receiver.get_parameters();
        let codec = params
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.payload_type == payload_type)?;
        let description = TrackDescription {
            codec: Codec::from_mime(&codec.rtp_codec.mime_type)?,
            clock_rate: codec.rtp_codec.clock_rate,
            channels: codec.rtp_codec.channels,
            fmtp: codec.rtp_codec.sdp_fmtp_line.clone(),
            audience: Audience::Everyone,
        };
        Some(description)
    }

    pub fn close(&mut self) {
        self.state = PeerState::Closed;
        if let Err(err) = self.pc.close() {
            tracing::debug!(session = %self.session, "close: {err}");
        }
    }
}

/// A candidate line for an ICE-restart answer.
pub fn candidate_lines(candidates: &[SocketAddr]) -> Vec<String> {
    candidates
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "candidate:{} 1 udp {} {} {} typ host",
                i + 1,
                2_130_706_431u32.saturating_sub(i as u32),
                a.ip(),
                a.port()
            )
        })
        .collect()
}
