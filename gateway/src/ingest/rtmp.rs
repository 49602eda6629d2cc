//! The RTMP ingest server: OBS, FFmpeg and hardware encoders publish to
//! `rtmp://host:1935/live` with the stream key `{stream}` or
//! `{stream}?token={token}`, the way OBS's RTMP settings split server and
//! key. The protocol itself is `rtmp_bridge::rtmp::IngestConnection`;
//! here a publish request meets our rules (stream names, keys and tokens,
//! one publisher per stream) and its media goes into a [`Feed`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use recorder::codec::Codec;
use rtmp_bridge::flv::{AudioCodec, AudioTag, VideoCodec, VideoTag};
use rtmp_bridge::rtmp::server::{PublishRequest, ServerEvent};
use rtmp_bridge::rtmp::{IngestConfig, IngestConnection};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::decoder_config::ParameterSets;
use super::feed::{AudioSetup, Feed, VideoSetup};
use crate::auth::{self, Action};
use crate::config::Config;
use crate::http::MediaHandle;
use crate::signal::{ClientInfo, IngestProtocol, SignalError};
use crate::stream_name::StreamName;

/// Connections at once, in all: each holds a socket and up to a few MiB.
const MAX_CONNECTIONS: usize = 256;
/// Connections at once from one address: enough for an encoder farm
/// behind NAT, too few to exhaust the total alone.
const MAX_CONNECTIONS_PER_IP: usize = 32;

/// What every RTMP connection needs.
pub struct RtmpIngest {
    pub config: Arc<Config>,
    pub media: MediaHandle,
    pub admin: Arc<web_admin::Admin>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl RtmpIngest {
    pub fn new(config: Arc<Config>, media: MediaHandle, admin: Arc<web_admin::Admin>) -> Self {
        Self {
            config,
            media,
            admin,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait, go on.
                    warn!("RTMP accept failed: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = self.admit(peer.ip()) else {
                debug!(%peer, "RTMP connection refused: too many connections");
                continue;
            };
            let ingest = self.clone();
            tokio::spawn(async move {
                ingest.connection(socket, peer).await;
                drop(slot);
            });
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let from_ip = open.entry(ip).or_default();
        if total >= MAX_CONNECTIONS || *from_ip >= MAX_CONNECTIONS_PER_IP {
            return None;
        }
        *from_ip += 1;
        Some(Slot {
            ingest: self.clone(),
            ip,
        })
    }

    async fn connection(&self, socket: TcpStream, peer: SocketAddr) {
        let mut conn = IngestConnection::new(socket, IngestConfig::default());
        let request = match conn.next_event().await {
            Ok(Some(ServerEvent::PublishRequest(request))) => request,
            Ok(_) => return,
            Err(err) => {
                info!(client = %peer, "RTMP connection ended before publishing: {err}");
                return;
            }
        };
        let (feed, ended) = match self.admit_publisher(&request, peer).await {
            Ok(admitted) => admitted,
            Err(refusal) => {
                warn!(client = %peer, stream = request.stream_name(), "RTMP publish refused: {refusal}");
                if let Err(err) = conn.reject(&refusal).await {
                    debug!(client = %peer, "RTMP reject: {err}");
                }
                return;
            }
        };
        if let Err(err) = conn.accept().await {
            info!(client = %peer, "RTMP publisher left before accepting: {err}");
            feed.close("connection failed").await;
            return;
        }
        let why = publish(&mut conn, feed, ended).await;
        info!(client = %peer, stream = request.stream_name(), "RTMP publisher ended: {why}");
    }

    /// Applies the stream-name, key and one-publisher rules; on success the
    /// stream is ours.
    async fn admit_publisher(
        &self,
        request: &PublishRequest,
        peer: SocketAddr,
    ) -> Result<(Feed, tokio::sync::oneshot::Receiver<String>), String> {
        let stream = StreamName::parse(request.stream_name())
            .ok_or_else(|| "invalid stream name".to_owned())?;
        let token = publish_token(request);
        let key_id = auth::check(
            &self.config,
            Some(self.admin.store()),
            &stream,
            Action::Publish,
            token.as_deref(),
        )
        .map_err(|err| format!("unauthorized ({err})"))?;
        let client = ClientInfo {
            address: Some(peer),
            user_agent: None,
            key_id,
        };
        Feed::open(&self.media, stream, IngestProtocol::Rtmp, client)
            .await
            .map_err(|err| match err {
                SignalError::StreamBusy => "the stream already has a publisher".to_owned(),
                other => other.to_string(),
            })
    }
}

/// A connection's place in the limits, given back when it ends.
struct Slot {
    ingest: Arc<RtmpIngest>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.ingest.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The token a publisher presents: in the key's query (`cam?token=…`),
/// or in the server URL's (OBS puts that on `app` and `tcUrl`).
fn publish_token(request: &PublishRequest) -> Option<String> {
    let from_query = |query: &str| {
        query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == "token" && !value.is_empty()).then(|| value.to_owned())
        })
    };
    request
        .query()
        .and_then(from_query)
        .or_else(|| request.app.split_once('?').and_then(|(_, q)| from_query(q)))
        .or_else(|| {
            request
                .tc_url
                .split_once('?')
                .and_then(|(_, q)| from_query(q))
        })
}

/// RTMP times are 32-bit milliseconds that wrap after 49 days.
#[derive(Default)]
struct MsUnwrapper {
    last: Option<u32>,
    wraps: i64,
}

impl MsUnwrapper {
    fn unwrap(&mut self, ms: u32) -> i64 {
        if let Some(last) = self.last {
            if ms < last && last - ms > 1 << 31 {
                self.wraps += 1;
            } else if ms > last && ms - last > 1 << 31 {
                // A late message from before the wrap.
                return ((self.wraps - 1) << 32 | i64::from(ms)) * 1_000_000;
            }
        }
        self.last = Some(ms);
        ((self.wraps << 32) | i64::from(ms)) * 1_000_000
    }
}

/// Forwards an accepted publisher's media until it leaves or the media
/// plane ends it; returns why it ended.
async fn publish(
    conn: &mut IngestConnection,
    mut feed: Feed,
    mut ended: tokio::sync::oneshot::Receiver<String>,
) -> String {
    let mut clock = MsUnwrapper::default();
    let mut warned_codecs = false;
    let why = loop {
        let event = tokio::select! {
            why = &mut ended => {
                // The plane ended us (kicked, replaced, shutting down).
                return why.unwrap_or_else(|_| "media plane stopped".to_owned());
            }
            event = conn.next_event() => event,
        };
        let result = match event {
            Ok(Some(ServerEvent::Video { timestamp, tag, .. })) => {
                video(&mut feed, clock.unwrap(timestamp), tag, &mut warned_codecs).await
            }
            Ok(Some(ServerEvent::Audio { timestamp, tag, .. })) => {
                audio(&mut feed, clock.unwrap(timestamp), tag, &mut warned_codecs).await
            }
            Ok(Some(ServerEvent::Unpublished)) => break "unpublished".to_owned(),
            Ok(Some(_)) => Ok(()),
            Ok(None) => break "disconnected".to_owned(),
            Err(err) => break err.to_string(),
        };
        if let Err(err) = result {
            break err.to_string();
        }
    };
    feed.close(&why).await;
    why
}

async fn video(
    feed: &mut Feed,
    dts_ns: i64,
    tag: VideoTag,
    warned: &mut bool,
) -> Result<(), super::feed::FeedError> {
    match tag {
        VideoTag::SequenceStart { codec, record } => {
            let Some(codec @ (Codec::H264 | Codec::H265)) = codec.codec() else {
                unsupported(feed, &format!("video {codec:?}"), warned);
                return Ok(());
            };
            match ParameterSets::parse(codec, &record) {
                Some(parameter_sets) => feed.set_video(VideoSetup {
                    codec,
                    parameter_sets,
                }),
                None => warn!(stream = %feed.stream(), "unreadable {codec} sequence header"),
            }
            Ok(())
        }
        VideoTag::Frame {
            codec: VideoCodec::H264 | VideoCodec::H265,
            keyframe,
            composition_time,
            data,
        } => {
            let pts_ns = dts_ns + i64::from(composition_time) * 1_000_000;
            feed.video(dts_ns, pts_ns, keyframe, &data).await
        }
        VideoTag::Frame { codec, .. } => {
            unsupported(feed, &format!("video {codec:?}"), warned);
            Ok(())
        }
        VideoTag::SequenceEnd { .. } | VideoTag::Unsupported { .. } => Ok(()),
    }
}

async fn audio(
    feed: &mut Feed,
    dts_ns: i64,
    tag: AudioTag,
    warned: &mut bool,
) -> Result<(), super::feed::FeedError> {
    match tag {
        AudioTag::SequenceStart {
            codec: AudioCodec::Aac,
            config,
        } => set_audio(feed, AudioSetup::Aac { config }),
        AudioTag::SequenceStart {
            codec: AudioCodec::Opus,
            config,
        } => {
            let channels = opus_channels(&config);
            set_audio(feed, AudioSetup::Opus { channels })
        }
        AudioTag::Frame {
            codec: AudioCodec::Aac | AudioCodec::Opus,
            data,
        } => feed.audio(dts_ns, &data).await,
        AudioTag::SequenceStart { codec, .. } | AudioTag::Frame { codec, .. } => {
            unsupported(feed, &format!("audio {codec:?}"), warned);
            Ok(())
        }
        AudioTag::SequenceEnd { .. } | AudioTag::Unsupported { .. } => Ok(()),
    }
}

fn set_audio(feed: &mut Feed, setup: AudioSetup) -> Result<(), super::feed::FeedError> {
    if let Err(err) = feed.set_audio(setup) {
        // Video alone is still worth having.
        warn!(stream = %feed.stream(), "audio skipped: {err}");
    }
    Ok(())
}

/// `OpusHead`'s channel count (byte 9).
fn opus_channels(head: &Bytes) -> u16 {
    head.get(9).map_or(2, |&c| u16::from(c.max(1)))
}

fn unsupported(feed: &Feed, what: &str, warned: &mut bool) {
    if !*warned {
        *warned = true;
        warn!(stream = %feed.stream(), "{what} is not supported over RTMP ingest; use H264, H265, AAC or Opus");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(app: &str, tc_url: &str, key: &str) -> PublishRequest {
        PublishRequest {
            app: app.into(),
            tc_url: tc_url.into(),
            stream_key: key.into(),
            publish_type: "live".into(),
        }
    }

    #[test]
    fn tokens_come_from_the_key_or_the_server_url() {
        assert_eq!(
            publish_token(&request("live", "", "cam?token=abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            publish_token(&request("live?token=xyz", "rtmp://h/live?token=xyz", "cam")).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            publish_token(&request("live", "rtmp://h/live", "cam")),
            None
        );
        assert_eq!(publish_token(&request("live", "", "cam?token=")), None);
    }

    #[test]
    fn millisecond_clock_unwraps() {
        let mut clock = MsUnwrapper::default();
        assert_eq!(
            clock.unwrap(u32::MAX - 10),
            i64::from(u32::MAX - 10) * 1_000_000
        );
        assert_eq!(clock.unwrap(5), (1i64 << 32 | 5) * 1_000_000);
        assert_eq!(
            clock.unwrap(u32::MAX - 2),
            i64::from(u32::MAX - 2) * 1_000_000
        );
    }
}
