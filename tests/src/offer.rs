//! Offers made by a real WebRTC stack (the async `webrtc` crate) that is
//! never connected: for tests that only look at signalling.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use rtc::ice::{mdns::MulticastDnsMode, network_type::NetworkType};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::watch;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use crate::synth::{self, VideoCodec};

/// Tracks ICE gathering of an offer-only peer.
struct Gathering(watch::Sender<RTCIceGatheringState>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Gathering {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        let _ = self.0.send(s);
    }
}

fn sending_track(kind: RtpCodecKind, id: &str, codec: RTCRtpCodec) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "whipcord-offer".into(),
        id.into(),
        format!("{id}-label"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(rand::random::<u32>() | 1),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )))
}

/// A real WHIP offer (Opus + H264, sendonly) from the async `webrtc` stack,
/// with the peer that made it, which must stay alive while the offer is used.
/// Nothing is ever connected: these tests only look at signalling.
pub async fn publisher_offer() -> Result<(Arc<dyn PeerConnection>, String)> {
    let mut me = MediaEngine::default();
    me.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut me)?;
    let se = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_network_types(vec![NetworkType::Udp4])
        .build();
    let (tx, mut gathering) = watch::channel(RTCIceGatheringState::New);
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_setting_engine(se)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Gathering(tx)))
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    for (kind, id, codec) in [
        (RtpCodecKind::Audio, "audio", synth::opus_codec()),
        (RtpCodecKind::Video, "video", VideoCodec::H264.rtp_codec()),
    ] {
        pc.add_transceiver_from_track(
            sending_track(kind, id, codec),
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .await?;
    }
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    tokio::time::timeout(
        Duration::from_secs(5),
        gathering.wait_for(|s| *s == RTCIceGatheringState::Complete),
    )
    .await
    .context("ICE gathering timed out")??;
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?
        .sdp;
    ensure!(sdp.contains("a=sendonly"), "offer does not send:\n{sdp}");
    Ok((pc, sdp))
}
