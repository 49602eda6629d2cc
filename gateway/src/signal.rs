//! The signalling contract between the HTTP layer and the media plane.
//!
//! HTTP handlers run on actix workers; every peer connection lives on the
//! media thread. Handlers send a [`Command`] over a channel and await the
//! reply on a oneshot, so no WebRTC state is ever shared across threads.

use std::fmt;
use std::net::SocketAddr;

use tokio::sync::oneshot;

use crate::stream_name::StreamName;

/// Which side of a stream a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A WHIP publisher.
    Publisher,
    /// A WHEP viewer.
    Viewer,
}

impl Role {
    pub fn path_prefix(self) -> &'static str {
        match self {
            Role::Publisher => "whip",
            Role::Viewer => "whep",
        }
    }
}

/// Opaque, unguessable id of a WHIP/WHEP session resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    pub fn random() -> Self {
        let bytes: [u8; 16] = rand::random();
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Accepts only ids of the shape [`SessionId::random`] produces.
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(raw.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is asking, for logs and stats.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub address: Option<SocketAddr>,
    pub user_agent: Option<String>,
    /// The stream key the client authenticated with, so revoking the key
    /// can end the session.
    pub key_id: Option<i64>,
}

/// A successful WHIP/WHEP offer/answer exchange.
#[derive(Debug, Clone)]
pub struct Answer {
    pub session: SessionId,
    pub sdp: String,
    pub etag: String,
}

/// The result of a trickle/restart PATCH.
#[derive(Debug, Clone)]
pub enum PatchOutcome {
    /// Candidates were added (204).
    Trickled,
    /// ICE restarted; the new local ICE credentials and candidates (200).
    Restarted { sdpfrag: String, etag: String },
}

/// A PATCH body after parsing.
#[derive(Debug, Clone)]
pub struct PatchRequest {
    pub if_match: Option<String>,
    pub fragment: crate::sdpfrag::SdpFragment,
}

/// Live stream summary for listings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamSummary {
    pub name: String,
    pub codecs: Vec<String>,
    pub viewers: usize,
    pub uptime_s: u64,
}

/// Which sessions an [`Command::EndSessions`] ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSelector {
    /// One WHEP viewer of a stream.
    Viewer {
        stream: StreamName,
        session: SessionId,
    },
    /// The publisher of a stream.
    Publisher(StreamName),
    /// Every session that authenticated with this stream key.
    Key(i64),
}

/// The media plane's live state, for the admin panel and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Live streams; recording and restream fields are left for the
    /// services that own them to fill in.
    pub streams: Vec<web_admin::control::StreamInfo>,
    /// (stream, viewer) of every WHEP session.
    pub viewers: Vec<(String, web_admin::control::ViewerInfo)>,
    /// Media counters; the recording and restream ones are left at zero.
    pub metrics: web_admin::control::MetricsSnapshot,
}

/// Why a signalling request failed; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("invalid offer: {0}")]
    BadOffer(String),
    #[error("stream is not live")]
    StreamNotLive,
    #[error("stream already has a publisher")]
    StreamBusy,
    #[error("no such session")]
    UnknownSession,
    #[error("If-Match does not match the session's ETag")]
    PreconditionFailed,
    #[error("{0}")]
    UnsupportedCodec(String),
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a publisher that is not a WebRTC peer reaches us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestProtocol {
    Rtmp,
    Rtsp,
}

impl IngestProtocol {
    pub fn label(self) -> &'static str {
        match self {
            IngestProtocol::Rtmp => "RTMP",
            IngestProtocol::Rtsp => "RTSP",
        }
    }
}

/// A stream claimed by an RTMP or RTSP publisher: its key in the plane, and
/// a receiver that completes when the plane ends the publisher (kicked by
/// the admin, replaced, shut down), so the connection can close.
#[derive(Debug)]
pub struct IngestLease {
    pub key: crate::hub::PeerKey,
    pub ended: oneshot::Receiver<String>,
}

/// What an RTMP or RTSP publisher sends the media plane once it holds its
/// stream (see [`Command::IngestOpen`]).
#[derive(Debug)]
pub enum IngestCommand {
    /// The publisher's tracks, known once its codec headers came. Sent
    /// again if they change.
    Tracks(Vec<crate::hub::subscriber::TrackDescription>),
    /// RTP packets of one frame of track `track` (index into `Tracks`).
    Media {
        track: usize,
        packets: Vec<rtc::rtp::Packet>,
    },
    /// The source's clock: `ntp_time` (32.32) at `rtp_time` on `track`.
    SenderReport {
        track: usize,
        ssrc: u32,
        ntp_time: u64,
        rtp_time: u32,
    },
    /// Something the operator should know, shown with the stream (e.g.
    /// "disable B-frames in the encoder"); `None` clears it.
    Notice(Option<String>),
    /// The publisher left; `why` is logged.
    Close { why: String },
}

/// A request to the media plane.
#[derive(Debug)]
pub enum Command {
    /// Claims `stream` for an RTMP/RTSP publisher, under the same rules
    /// as a WHIP offer (409 while another publisher is live).
    IngestOpen {
        stream: StreamName,
        protocol: IngestProtocol,
        client: ClientInfo,
        reply: oneshot::Sender<Result<IngestLease, SignalError>>,
    },
    /// Media and state of an ingest publisher.
    Ingest {
        key: crate::hub::PeerKey,
        command: IngestCommand,
    },
    Offer {
        role: Role,
        stream: StreamName,
        offer: String,
        client: ClientInfo,
        reply: oneshot::Sender<Result<Answer, SignalError>>,
    },
    Patch {
        role: Role,
        stream: StreamName,
        session: SessionId,
        request: PatchRequest,
        reply: oneshot::Sender<Result<PatchOutcome, SignalError>>,
    },
    Delete {
        role: Role,
        stream: StreamName,
        session: SessionId,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    ListStreams {
        reply: oneshot::Sender<Vec<StreamSummary>>,
    },
    /// Everything the admin panel shows of the media plane.
    Inspect {
        reply: oneshot::Sender<Inspection>,
    },
    /// Ends the sessions `selector` picks; replies how many ended.
    EndSessions {
        selector: SessionSelector,
        reply: oneshot::Sender<usize>,
    },
    /// Start recording a live stream (no-op if it is recorded already).
    StartRecording {
        stream: StreamName,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    /// Start the bridge session (restream targets, HLS) of a live stream
    /// (no-op if it runs already).
    StartBridge {
        stream: StreamName,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}
