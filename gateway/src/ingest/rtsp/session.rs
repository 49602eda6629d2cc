//! One connection to a camera, up to the first frame: DESCRIBE, SETUP of
//! the streams worth playing, PLAY.
//!
//! retina has no timeouts of its own, and a camera that accepts the TCP
//! connection and then says nothing would hold a source forever: every
//! step gets one here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use recorder::codec::Codec;
use retina::client::{
    Demuxed, InitialTimestampPolicy, PlayOptions, Session, SessionGroup, SessionOptions,
    SetupOptions, TeardownPolicy, Transport,
};
use retina::codec::{FrameFormat, ParametersRef};
use tracing::info;

use super::source_url::SourceUrl;
use super::tracks::{self, AudioCodec, Offered};
use crate::ingest::feed::AudioSetup;
use crate::stream_name::StreamName;

/// How long each RTSP request may take, connecting included.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Error texts longer than this are cut: they end up in the admin panel.
const MAX_ERROR_CHARS: usize = 300;

/// How RTP should travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportPlan {
    Tcp,
    Udp,
    /// UDP, then TCP when SETUP or PLAY over UDP fails.
    UdpThenTcp,
}

/// Why a connection failed or ended. Texts never hold credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// retina's error, its first line.
    #[error("{0}")]
    Rtsp(String),
    #[error("the camera refused the user and password (401 Unauthorized)")]
    Unauthorized,
    #[error("the camera asks for a user and password (401 Unauthorized); put them in the URL")]
    CredentialsNeeded,
    #[error("no answer to {0} within {secs} s", secs = STEP_TIMEOUT.as_secs())]
    Timeout(&'static str),
    #[error(
        "no usable stream: the camera offers {0} (usable: H264 or H265 video, AAC or G.711 audio)"
    )]
    NoUsableStream(String),
    #[error("no media for {0} s")]
    NoMedia(u64),
    #[error("the camera ended the session")]
    Ended,
    #[error("stream is held by another publisher")]
    StreamBusy,
    #[error("media plane: {0}")]
    Plane(String),
}

/// A camera playing, with the streams chosen from it.
pub struct Playing {
    pub demuxed: Demuxed,
    pub video: Option<VideoTrack>,
    pub audio: Option<AudioTrack>,
    /// Streams left out for their codec.
    pub unsupported: Vec<String>,
    pub udp: bool,
}

pub struct VideoTrack {
    pub stream_id: usize,
    pub codec: Codec,
}

pub struct AudioTrack {
    pub stream_id: usize,
    pub setup: AudioSetup,
}

impl Playing {
    /// The codecs played, for the status.
    pub fn codecs(&self) -> Vec<String> {
        let video = self.video.as_ref().map(|v| v.codec.to_string());
        let audio = self.audio.as_ref().map(|a| {
            match a.setup {
                AudioSetup::Aac { .. } => Codec::Aac,
                AudioSetup::Opus { .. } => Codec::Opus,
                AudioSetup::G711u => Codec::G711u,
                AudioSetup::G711a => Codec::G711a,
            }
            .to_string()
        });
        video.into_iter().chain(audio).collect()
    }
}

/// Where a connection failed: a failure after DESCRIBE may be the
/// transport's, worth another try over TCP.
struct Failure {
    error: SessionError,
    described: bool,
}

/// Connects to the camera and starts it playing.
pub async fn open(
    url: &SourceUrl,
    plan: TransportPlan,
    group: &Arc<SessionGroup>,
    stream: &StreamName,
) -> Result<Playing, SessionError> {
    match plan {
        TransportPlan::Tcp => open_with(url, false, group).await,
        TransportPlan::Udp => open_with(url, true, group).await,
        TransportPlan::UdpThenTcp => match open_with(url, true, group).await {
            Err(Failure {
                error,
                described: true,
            }) => {
                info!(%stream, url = %url.public, "RTP over UDP failed ({error}); trying TCP");
                open_with(url, false, group).await
            }
            result => result,
        },
    }
    .map_err(|failure| failure.error)
}

async fn open_with(
    url: &SourceUrl,
    udp: bool,
    group: &Arc<SessionGroup>,
) -> Result<Playing, Failure> {
    let before = |error| Failure {
        error,
        described: false,
    };
    let after = |error| Failure {
        error,
        described: true,
    };
    let options = SessionOptions::default()
        .creds(url.credentials.clone())
        .user_agent(format!("Whipcord/{}", env!("CARGO_PKG_VERSION")))
        .teardown(TeardownPolicy::Auto)
        .session_group(group.clone());
    let mut session = step(url, "DESCRIBE", Session::describe(url.url.clone(), options))
        .await
        .map_err(before)?;

    let streams = session.streams();
    let choice = tracks::choose(streams.iter().map(|s| Offered {
        media: s.media(),
        encoding: s.encoding_name(),
        clock_rate: s.clock_rate_hz(),
        has_config: aac_config(s).is_some(),
    }));
    if choice.is_empty() {
        let offered: Vec<String> = streams
            .iter()
            .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
            .collect();
        let offered = if offered.is_empty() {
            "nothing".to_owned()
        } else {
            offered.join(", ")
        };
        return Err(before(SessionError::NoUsableStream(offered)));
    }
    let video = choice
        .video
        .map(|(stream_id, codec)| VideoTrack { stream_id, codec });
    let audio = choice.audio.and_then(|(stream_id, codec)| {
        let setup = match codec {
            AudioCodec::Aac => AudioSetup::Aac {
                config: aac_config(&streams[stream_id])?,
            },
            AudioCodec::G711u => AudioSetup::G711u,
            AudioCodec::G711a => AudioSetup::G711a,
        };
        Some(AudioTrack { stream_id, setup })
    });

    for stream_id in video
        .iter()
        .map(|v| v.stream_id)
        .chain(audio.iter().map(|a| a.stream_id))
    {
        let transport = if udp {
            Transport::Udp(Default::default())
        } else {
            Transport::Tcp(Default::default())
        };
        // Length-prefixed NAL units and parameter sets apart, as the Feed
        // takes them (it puts the sets ahead of each keyframe itself).
        let options = SetupOptions::default()
            .transport(transport)
            .frame_format(FrameFormat::MP4);
        step(url, "SETUP", session.setup(stream_id, options))
            .await
            .map_err(after)?;
    }
    // Each stream's timeline starts at its first packet unless the camera
    // gives every stream's rtptime: cameras that give none are common,
    // and its sender reports line the tracks up anyway.
    let play_options = PlayOptions::default().initial_timestamp(InitialTimestampPolicy::Permissive);
    let playing = step(url, "PLAY", session.play(play_options))
        .await
        .map_err(after)?;
    let demuxed = playing
        .demuxed()
        .map_err(|err| after(from_retina(url, &err)))?;
    Ok(Playing {
        demuxed,
        video,
        audio,
        unsupported: choice.unsupported,
        udp,
    })
}

/// The AudioSpecificConfig an AAC stream's SDP gives.
fn aac_config(stream: &retina::client::Stream) -> Option<Bytes> {
    if stream.encoding_name() != "mpeg4-generic" {
        return None;
    }
    match stream.parameters()? {
        ParametersRef::Audio(params) if !params.extra_data().is_empty() => {
            Some(Bytes::copy_from_slice(params.extra_data()))
        }
        _ => None,
    }
}

/// One RTSP request, bounded in time.
async fn step<T>(
    url: &SourceUrl,
    name: &'static str,
    request: impl Future<Output = Result<T, retina::Error>>,
) -> Result<T, SessionError> {
    step_within(url, name, STEP_TIMEOUT, request).await
}

async fn step_within<T>(
    url: &SourceUrl,
    name: &'static str,
    limit: Duration,
    request: impl Future<Output = Result<T, retina::Error>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(from_retina(url, &err)),
        Err(_) => Err(SessionError::Timeout(name)),
    }
}

/// retina's errors span lines (connection and packet context for
/// Wireshark); a log line and the admin panel get the first.
pub fn from_retina(url: &SourceUrl, err: &retina::Error) -> SessionError {
    if err.status_code() == Some(401) {
        return match url.credentials {
            Some(_) => SessionError::Unauthorized,
            None => SessionError::CredentialsNeeded,
        };
    }
    SessionError::Rtsp(first_line(&url.scrub(&err.to_string())))
}

fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("unknown RTSP error")
        .trim_end_matches(':')
        .trim_end();
    match line.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_first_line() {
        assert_eq!(
            first_line("RTSP framing error: bad header\n\nconn: 127.0.0.1:1->127.0.0.1:2\nmsg: x"),
            "RTSP framing error: bad header"
        );
        assert_eq!(
            first_line("\n  Received interleaved data on unassigned channel 3: \nabc"),
            "Received interleaved data on unassigned channel 3"
        );
        assert_eq!(first_line(""), "unknown RTSP error");
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        assert_eq!(first_line(&long).chars().count(), MAX_ERROR_CHARS + 1);
    }

    #[test]
    fn messages_name_the_step() {
        assert_eq!(
            SessionError::Timeout("DESCRIBE").to_string(),
            "no answer to DESCRIBE within 10 s"
        );
        assert_eq!(SessionError::NoMedia(10).to_string(), "no media for 10 s");
    }

    #[tokio::test]
    async fn a_refused_connection_is_one_line_without_credentials() {
        // A port nobody listens on: bind, learn the port, close.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let url = SourceUrl::parse(&format!("rtsp://admin:hunter22@127.0.0.1:{port}/cam"))
            .expect("valid");
        let group = Arc::new(SessionGroup::default());
        let stream = StreamName::parse("cam").expect("valid");
        let err = open(&url, TransportPlan::UdpThenTcp, &group, &stream)
            .await
            .err()
            .expect("nobody listens");
        let text = err.to_string();
        assert!(matches!(err, SessionError::Rtsp(_)), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(
            !text.contains("hunter22") && !text.contains("admin"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_silent_step_times_out() {
        let url = SourceUrl::parse("rtsp://127.0.0.1/cam").expect("valid");
        let silent = std::future::pending::<Result<(), retina::Error>>();
        let result = step_within(&url, "DESCRIBE", Duration::from_millis(20), silent).await;
        assert_eq!(result, Err(SessionError::Timeout("DESCRIBE")));
    }
}
