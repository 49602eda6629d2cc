//! The sans-IO RTMP ingest server for one inbound publisher connection:
//! bytes in ([`ServerSession::push`]), bytes out
//! ([`ServerSession::poll_output`]), events out
//! ([`ServerSession::poll_event`]). It knows nothing about sockets or time;
//! [`super::ingest`] drives it over TCP.
//!
//! The conversation, as FFmpeg and OBS hold it: handshake → `connect`
//! (answered with WindowAckSize, SetPeerBandwidth, SetChunkSize and
//! `_result`) → `releaseStream`, `FCPublish`, `createStream` (stream 1) →
//! `publish(key, "live")`, which becomes a [`ServerEvent::PublishRequest`]
//! the owner answers with [`ServerSession::accept`] or
//! [`ServerSession::reject`] → media → `FCUnpublish`, `deleteStream`
//! ([`ServerEvent::Unpublished`]).
//!
//! Memory is bounded whatever the peer sends: until a publish is accepted
//! every message is limited to [`ServerConfig::max_command_len`] (an
//! unauthenticated peer costs little), afterwards to
//! [`ServerConfig::max_message_len`], refused from the chunk header before
//! any payload is held; unfinished messages and unread input are capped
//! too. Events and output grow only with the input of one `push`: drain
//! both after each.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};
use rand::RngCore;
use thiserror::Error;

use super::chunk::{ChunkError, ChunkReader, ChunkWriter, Message, ReaderLimits};
use super::handshake::{HandshakeError, ServerHandshake};
use super::message::{self as m, CSID_COMMAND, CSID_CONTROL};
use crate::amf0::{Amf0Error, Amf0Value, decode_all};
use crate::flv::{AudioTag, FlvError, VideoTag};

/// The message stream id `createStream` hands out; one publish per
/// connection needs no other.
pub const STREAM_ID: u32 = 1;
/// Input is taken in pieces of at most this size, with the messages each
/// completes handled before the next, so a caller's big slice never sits
/// in our buffers whole.
const PUSH_PIECE: usize = 64 * 1024;
/// Room for unread input beyond the current message limit: one piece and
/// a chunk header. Reached only while a publish request waits for its
/// answer (the session reads no further then): a publisher that does not
/// wait for `NetStream.Publish.Start` may send only so much.
const INPUT_SLACK: usize = PUSH_PIECE + 32;
/// Longest command name quoted in errors and logs: it is the peer's text.
const MAX_QUOTED: usize = 32;

/// How the server answers `connect` and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Our outgoing chunk size, announced after `connect`.
    pub chunk_size: u32,
    /// Announced in WindowAckSize; we acknowledge every this many bytes
    /// received unless the peer asks for another window.
    pub window_ack_size: u32,
    /// Announced in SetPeerBandwidth (dynamic).
    pub peer_bandwidth: u32,
    /// Largest audio or video message once publishing: big enough for a 4K
    /// keyframe at a high bit rate (nginx-rtmp's default is 1 MB).
    pub max_message_len: usize,
    /// Largest message before a publish is accepted, and largest command
    /// or data message at any time: AMF decoding multiplies memory, and
    /// `connect` or `onMetaData` take a few hundred bytes.
    pub max_command_len: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            peer_bandwidth: 2_500_000,
            max_message_len: 8 << 20,
            max_command_len: 64 << 10,
        }
    }
}

impl ServerConfig {
    /// The chunk reader's limits before (`publishing == false`) and after a
    /// publish is accepted.
    fn reader_limits(&self, publishing: bool) -> ReaderLimits {
        let max = if publishing {
            self.max_message_len.max(self.max_command_len)
        } else {
            self.max_command_len
        };
        ReaderLimits {
            max_message_len: max,
            // Interleaved audio and video each may be half-received.
            max_partial_bytes: 2 * max,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Waiting for C0+C1, then C2.
    Handshake,
    /// Waiting for `connect`.
    Connecting,
    /// `connect` answered; `createStream` and `publish` may come.
    Connected,
    /// A [`ServerEvent::PublishRequest`] waits for
    /// [`ServerSession::accept`] or [`ServerSession::reject`]; no input is
    /// processed until then.
    PublishRequested,
    /// Media flows.
    Publishing,
    /// Rejected, or ended by an error; further input is ignored.
    Closed,
}

impl ServerState {
    fn describe(self) -> &'static str {
        match self {
            ServerState::Handshake => "during the handshake",
            ServerState::Connecting => "before connect",
            ServerState::Connected => "before publish",
            ServerState::PublishRequested => "while the publish request is pending",
            ServerState::Publishing => "while publishing",
            ServerState::Closed => "after the session closed",
        }
    }
}

/// What a publisher asks for. The stream key is a secret (its query often
/// carries a token): `Debug` shows the name only.
#[derive(Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// `connect`'s `app`, e.g. `live` (OBS puts a query of the server URL
    /// here too: `live?x=y`).
    pub app: String,
    /// `connect`'s `tcUrl` (`rtmp://host:1935/live`), empty if not sent.
    pub tc_url: String,
    /// The publish name as sent, query included: `cam?token=abc`.
    pub stream_key: String,
    /// `live`, `record` or `append`; `live` if not sent.
    pub publish_type: String,
}

impl PublishRequest {
    /// The key up to its `?`: the stream's name.
    pub fn stream_name(&self) -> &str {
        self.stream_key
            .split_once('?')
            .map_or(self.stream_key.as_str(), |(name, _)| name)
    }

    /// The key's query (`token=abc`), if any.
    pub fn query(&self) -> Option<&str> {
        self.stream_key.split_once('?').map(|(_, query)| query)
    }
}

impl fmt::Debug for PublishRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishRequest")
            .field("app", &self.app)
            .field("tc_url", &self.tc_url)
            .field("stream_name", &self.stream_name())
            .field("query", &self.query().map(|_| "<redacted>"))
            .field("publish_type", &self.publish_type)
            .finish()
    }
}

/// What the session reports, in arrival order. Timestamps are RTMP's:
/// milliseconds on a 32-bit clock that may wrap, the decode time for video.
#[derive(Clone, PartialEq)]
pub enum ServerEvent {
    /// Answer with [`ServerSession::accept`] or [`ServerSession::reject`].
    PublishRequest(PublishRequest),
    /// A video message: the FLV body as sent (for passthrough) and parsed.
    Video {
        timestamp: u32,
        body: Bytes,
        tag: VideoTag,
    },
    /// An audio message: the FLV body as sent and parsed.
    Audio {
        timestamp: u32,
        body: Bytes,
        tag: AudioTag,
    },
    /// A data message: `name` is the handler (`onMetaData`, with any
    /// `@setDataFrame` wrapper removed), `values` its arguments (for
    /// `onMetaData`, one ECMA array).
    Data {
        timestamp: u32,
        name: String,
        values: Vec<Amf0Value>,
    },
    /// `FCUnpublish`, `deleteStream` or `closeStream` ended the publish.
    Unpublished,
}

impl fmt::Debug for ServerEvent {
    // Media payloads are summarised: a keyframe printed byte by byte would
    // drown a log line or a test failure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerEvent::PublishRequest(r) => f.debug_tuple("PublishRequest").field(r).finish(),
            ServerEvent::Video {
                timestamp,
                body,
                tag,
            } => {
                let mut d = f.debug_struct("Video");
                d.field("timestamp", timestamp).field("len", &body.len());
                match tag {
                    VideoTag::Frame {
                        codec,
                        keyframe,
                        composition_time,
                        ..
                    } => d
                        .field("frame", codec)
                        .field("keyframe", keyframe)
                        .field("composition_time", composition_time),
                    VideoTag::SequenceStart { codec, .. } => d.field("sequence_start", codec),
                    VideoTag::SequenceEnd { codec } => d.field("sequence_end", codec),
                    VideoTag::Unsupported { what } => d.field("unsupported", what),
                };
                d.finish()
            }
            ServerEvent::Audio {
                timestamp,
                body,
                tag,
            } => {
                let mut d = f.debug_struct("Audio");
                d.field("timestamp", timestamp).field("len", &body.len());
                match tag {
                    AudioTag::Frame { codec, .. } => d.field("frame", codec),
                    AudioTag::SequenceStart { codec, .. } => d.field("sequence_start", codec),
                    AudioTag::SequenceEnd { codec } => d.field("sequence_end", codec),
                    AudioTag::Unsupported { what } => d.field("unsupported", what),
                };
                d.finish()
            }
            ServerEvent::Data {
                timestamp,
                name,
                values,
            } => f
                .debug_struct("Data")
                .field("timestamp", timestamp)
                .field("name", name)
                .field("values", &values.len())
                .finish(),
            ServerEvent::Unpublished => f.write_str("Unpublished"),
        }
    }
}

/// Why the session ended. Every one closes it: RTMP cannot resynchronise a
/// chunk stream, and a peer that breaks the protocol gets no second guess.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ServerError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("malformed AMF0 in a command or data message: {0}")]
    Amf0(#[from] Amf0Error),
    #[error("malformed media: {0}")]
    Media(#[from] FlvError),
    #[error("{what} {state}")]
    OutOfOrder { what: String, state: &'static str },
    #[error("{kind} message of {len} bytes; the limit is {limit}")]
    TooLarge {
        kind: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("more than {limit} bytes of input waiting to be processed")]
    InputBacklog { limit: usize },
    #[error("{0} is not supported: this server only takes publishers")]
    Unsupported(String),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("no publish request is waiting for an answer")]
    NoPendingPublish,
}

/// One inbound RTMP connection, server side.
pub struct ServerSession {
    config: ServerConfig,
    state: ServerState,
    handshake: ServerHandshake,
    reader: ChunkReader,
    writer: ChunkWriter,
    out: BytesMut,
    events: VecDeque<ServerEvent>,
    app: String,
    tc_url: String,
    /// `createStream` was answered (and no `deleteStream` since).
    stream_created: bool,
    /// A publish was accepted on this connection at some point: media
    /// arriving after its unpublish is late, not out of order.
    has_published: bool,
    /// The message stream `publish` came on, for our `onStatus` replies.
    stream_id: u32,
    bytes_received: u64,
    last_ack: u64,
    /// We acknowledge every this many bytes: our WindowAckSize, or the
    /// peer's if it sends one (FFmpeg reads a WindowAckSize as the window
    /// its receiver acknowledges; nginx-rtmp as its own; both are served).
    ack_window: u32,
}

impl fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSession")
            .field("state", &self.state)
            .field("app", &self.app)
            .field("bytes_received", &self.bytes_received)
            .finish_non_exhaustive()
    }
}

impl ServerSession {
    pub fn new(config: ServerConfig) -> Self {
        Self::with_rng(config, &mut rand::rng())
    }

    /// With the random source for S1 given (tests).
    pub fn with_rng(config: ServerConfig, rng: &mut impl RngCore) -> Self {
        ServerSession {
            reader: ChunkReader::with_limits(config.reader_limits(false)),
            ack_window: config.window_ack_size,
            config,
            state: ServerState::Handshake,
            handshake: ServerHandshake::new(rng),
            writer: ChunkWriter::default(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            app: String::new(),
            tc_url: String::new(),
            stream_created: false,
            has_published: false,
            stream_id: STREAM_ID,
            bytes_received: 0,
            last_ack: 0,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        self.state == ServerState::Closed
    }

    /// `connect`'s `app` (empty before it).
    pub fn app(&self) -> &str {
        &self.app
    }

    /// `connect`'s `tcUrl` (empty before it or if not sent).
    pub fn tc_url(&self) -> &str {
        &self.tc_url
    }

    /// Bytes pushed so far, handshake included.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Bytes to send to the peer, if any.
    pub fn poll_output(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Bytes from the peer. An error closes the session; after that (and
    /// after [`reject`](Self::reject)) input is ignored.
    pub fn push(&mut self, input: &[u8]) -> Result<(), ServerError> {
        if self.state == ServerState::Closed {
            return Ok(());
        }
        let result = self.push_inner(input);
        if result.is_err() {
            self.state = ServerState::Closed;
        }
        result
    }

    /// Accepts the pending publish: `StreamBegin` and
    /// `onStatus NetStream.Publish.Start`, then the input that arrived
    /// meanwhile is processed (its events follow).
    pub fn accept(&mut self) -> Result<(), ServerError> {
        if self.state != ServerState::PublishRequested {
            return Err(ServerError::NoPendingPublish);
        }
        let result = self.accept_inner();
        if result.is_err() {
            self.state = ServerState::Closed;
        }
        result
    }

    fn accept_inner(&mut self) -> Result<(), ServerError> {
        self.send(CSID_CONTROL, &m::stream_begin(self.stream_id))?;
        let status = on_status(
            self.stream_id,
            "status",
            "NetStream.Publish.Start",
            "Start publishing",
        );
        self.send(CSID_COMMAND, &status)?;
        self.state = ServerState::Publishing;
        self.has_published = true;
        self.reader.set_limits(self.config.reader_limits(true));
        self.process()?;
        self.maybe_acknowledge()
    }

    /// Refuses the pending publish with `onStatus` level `error`, code
    /// `NetStream.Publish.BadName` (FFmpeg and OBS give up on it) and
    /// `reason` as the description, and closes the session: send the
    /// output, then close the connection.
    pub fn reject(&mut self, reason: &str) -> Result<(), ServerError> {
        if self.state != ServerState::PublishRequested {
            return Err(ServerError::NoPendingPublish);
        }
        let status = on_status(self.stream_id, "error", "NetStream.Publish.BadName", reason);
        let result = self.send(CSID_COMMAND, &status);
        self.state = ServerState::Closed;
        result
    }

    fn push_inner(&mut self, mut input: &[u8]) -> Result<(), ServerError> {
        self.bytes_received += input.len() as u64;
        if self.state == ServerState::Handshake {
            let progress = self.handshake.push(input)?;
            if let Some(reply) = progress.reply {
                self.out.extend_from_slice(&reply);
            }
            input = &input[progress.used..];
            if !progress.done {
                return Ok(());
            }
            self.state = ServerState::Connecting;
        }
        for piece in input.chunks(PUSH_PIECE) {
            let limit = self.reader.limits().max_message_len + INPUT_SLACK;
            if self.reader.unread_len() + piece.len() > limit {
                return Err(ServerError::InputBacklog { limit });
            }
            self.reader.push(piece);
            self.process()?;
        }
        self.maybe_acknowledge()
    }

    /// Handles complete messages until input runs out or a publish request
    /// waits for its answer.
    fn process(&mut self) -> Result<(), ServerError> {
        while !matches!(
            self.state,
            ServerState::PublishRequested | ServerState::Closed
        ) {
            let Some(msg) = self.reader.next_message()? else {
                break;
            };
            self.handle_message(msg)?;
        }
        Ok(())
    }

    fn maybe_acknowledge(&mut self) -> Result<(), ServerError> {
        if self.ack_window > 0
            && self.state != ServerState::Closed
            && self.bytes_received - self.last_ack >= u64::from(self.ack_window)
        {
            self.last_ack = self.bytes_received;
            // The sequence number wraps at 4 GiB, as the spec says.
            self.send(
                CSID_CONTROL,
                &m::acknowledgement(self.bytes_received as u32),
            )?;
        }
        Ok(())
    }

    fn send(&mut self, csid: u32, msg: &Message) -> Result<(), ServerError> {
        Ok(self.writer.write(csid, msg, &mut self.out)?)
    }

    fn handle_message(&mut self, msg: Message) -> Result<(), ServerError> {
        let p = &msg.payload[..];
        match msg.type_id {
            m::SET_CHUNK_SIZE => {
                let size = m::read_u32(p).ok_or(ServerError::Protocol("short SetChunkSize"))?;
                self.reader.set_chunk_size(size & 0x7fff_ffff)?;
            }
            m::ABORT => {
                let csid = m::read_u32(p).ok_or(ServerError::Protocol("short Abort"))?;
                self.reader.abort(csid);
            }
            m::WINDOW_ACK_SIZE => {
                let size = m::read_u32(p).ok_or(ServerError::Protocol("short WindowAckSize"))?;
                if size > 0 {
                    self.ack_window = size;
                }
            }
            m::USER_CONTROL => {
                let event = p.get(..2).map(|e| u16::from_be_bytes([e[0], e[1]]));
                if event == Some(m::USER_PING_REQUEST) {
                    let ts = p.get(2..).and_then(m::read_u32).unwrap_or(0);
                    self.send(CSID_CONTROL, &m::ping_response(ts))?;
                }
            }
            m::COMMAND_AMF0 | m::COMMAND_AMF3 => {
                let values = self.decode_amf(&msg, "command")?;
                self.handle_command(&msg, &values)?;
            }
            m::AUDIO | m::VIDEO => self.media(msg.type_id, msg.timestamp, msg.payload)?,
            m::DATA_AMF0 | m::DATA_AMF3 => self.data(&msg)?,
            m::AGGREGATE => self.aggregate(&msg)?,
            // Acknowledgements and SetPeerBandwidth from a publisher, shared
            // objects: nothing to do.
            other => tracing::trace!(type_id = other, "RTMP message ignored"),
        }
        Ok(())
    }

    /// The AMF0 values of a command or data message, size-checked first.
    fn decode_amf(&self, msg: &Message, kind: &'static str) -> Result<Vec<Amf0Value>, ServerError> {
        let limit = self.config.max_command_len;
        if msg.payload.len() > limit {
            return Err(ServerError::TooLarge {
                kind,
                len: msg.payload.len(),
                limit,
            });
        }
        // The AMF3 variants start with a format byte, then AMF0 values.
        let body = if matches!(msg.type_id, m::COMMAND_AMF3 | m::DATA_AMF3) {
            msg.payload.get(1..).unwrap_or_default()
        } else {
            &msg.payload[..]
        };
        Ok(decode_all(body)?)
    }

    fn out_of_order(&self, what: &str) -> ServerError {
        ServerError::OutOfOrder {
            what: quote(what),
            state: self.state.describe(),
        }
    }

    fn handle_command(&mut self, msg: &Message, values: &[Amf0Value]) -> Result<(), ServerError> {
        let name = values
            .first()
            .and_then(Amf0Value::as_str)
            .ok_or(ServerError::Protocol("command without a name"))?;
        let txn = values.get(1).and_then(Amf0Value::as_number).unwrap_or(0.0);
        // Arguments follow the command object (or null) at index 2.
        let arg = |i: usize| values.get(3 + i).and_then(Amf0Value::as_str);
        if self.state == ServerState::Connecting && name != "connect" {
            return Err(self.out_of_order(name));
        }
        match name {
            "connect" => {
                if self.state != ServerState::Connecting {
                    return Err(self.out_of_order(name));
                }
                let object = values.get(2);
                let field = |key: &str| {
                    object
                        .and_then(|o| o.get(key))
                        .and_then(Amf0Value::as_str)
                        .map(str::to_owned)
                };
                self.app = field("app").ok_or(ServerError::Protocol("connect without an app"))?;
                self.tc_url = field("tcUrl").unwrap_or_default();
                tracing::debug!(
                    app = %self.app,
                    tc_url = %self.tc_url,
                    flash_ver = %field("flashVer").unwrap_or_default(),
                    "RTMP connect"
                );
                self.send(
                    CSID_CONTROL,
                    &m::window_ack_size(self.config.window_ack_size),
                )?;
                self.send(
                    CSID_CONTROL,
                    &m::set_peer_bandwidth(self.config.peer_bandwidth),
                )?;
                self.send(CSID_CONTROL, &m::set_chunk_size(self.config.chunk_size))?;
                self.writer.set_chunk_size(self.config.chunk_size)?;
                let properties = Amf0Value::object([
                    ("fmsVer", Amf0Value::str("FMS/3,0,1,123")),
                    ("capabilities", Amf0Value::Number(31.0)),
                ]);
                let info = Amf0Value::object([
                    ("level", Amf0Value::str("status")),
                    ("code", Amf0Value::str("NetConnection.Connect.Success")),
                    ("description", Amf0Value::str("Connection succeeded.")),
                    // AMF0 whatever the client offered: all we speak.
                    ("objectEncoding", Amf0Value::Number(0.0)),
                ]);
                let result = m::command(0, "_result", txn, &[properties, info]);
                self.send(CSID_COMMAND, &result)?;
                self.state = ServerState::Connected;
            }
            "releaseStream" | "FCPublish" | "createStream" => {
                if !matches!(self.state, ServerState::Connected | ServerState::Publishing) {
                    return Err(self.out_of_order(name));
                }
                let value = if name == "createStream" {
                    self.stream_created = true;
                    Amf0Value::Number(f64::from(STREAM_ID))
                } else {
                    Amf0Value::Undefined
                };
                let result = m::command(0, "_result", txn, &[Amf0Value::Null, value]);
                self.send(CSID_COMMAND, &result)?;
                if name == "FCPublish" {
                    // What nginx-rtmp and SRS send; the name without its
                    // query, which may hold a token.
                    let stream = arg(0).unwrap_or("");
                    let stream = stream.split_once('?').map_or(stream, |(n, _)| n);
                    let info = Amf0Value::object([
                        ("code", Amf0Value::str("NetStream.Publish.Start")),
                        ("description", Amf0Value::str(stream)),
                    ]);
                    let notice = m::command(0, "onFCPublish", 0.0, &[Amf0Value::Null, info]);
                    self.send(CSID_COMMAND, &notice)?;
                }
            }
            "publish" => {
                if self.state != ServerState::Connected {
                    return Err(self.out_of_order(name));
                }
                if !self.stream_created {
                    return Err(ServerError::OutOfOrder {
                        what: "publish".into(),
                        state: "before createStream",
                    });
                }
                let key = arg(0).ok_or(ServerError::Protocol("publish without a stream name"))?;
                let request = PublishRequest {
                    app: self.app.clone(),
                    tc_url: self.tc_url.clone(),
                    stream_key: key.to_owned(),
                    publish_type: arg(1).unwrap_or("live").to_owned(),
                };
                tracing::debug!(?request, "RTMP publish request");
                self.stream_id = if msg.stream_id == 0 {
                    STREAM_ID
                } else {
                    msg.stream_id
                };
                self.state = ServerState::PublishRequested;
                self.events.push_back(ServerEvent::PublishRequest(request));
            }
            "FCUnpublish" | "deleteStream" | "closeStream" => {
                if self.state == ServerState::Publishing {
                    self.state = ServerState::Connected;
                    self.events.push_back(ServerEvent::Unpublished);
                }
                if name == "deleteStream" {
                    self.stream_created = false;
                }
            }
            "play" | "play2" => return Err(ServerError::Unsupported(quote(name))),
            // Answers to our nothing, bandwidth checks, getStreamLength…
            other => tracing::debug!(command = %quote(other), "RTMP command ignored"),
        }
        Ok(())
    }

    /// Media before any publish is a protocol error; after an unpublish it
    /// is late and dropped.
    fn may_take_media(&self, what: &str) -> Result<bool, ServerError> {
        match self.state {
            ServerState::Publishing => Ok(true),
            ServerState::Connected if self.has_published => Ok(false),
            _ => Err(self.out_of_order(what)),
        }
    }

    fn media(&mut self, type_id: u8, timestamp: u32, body: Bytes) -> Result<(), ServerError> {
        let what = if type_id == m::VIDEO {
            "video"
        } else {
            "audio"
        };
        if !self.may_take_media(what)? {
            return Ok(());
        }
        // Some encoders send empty audio messages (a gap marker); there is
        // nothing to parse or forward.
        if body.is_empty() {
            tracing::trace!(what, timestamp, "empty RTMP media message");
            return Ok(());
        }
        let event = if type_id == m::VIDEO {
            let tag = VideoTag::parse(&body)?;
            ServerEvent::Video {
                timestamp,
                body,
                tag,
            }
        } else {
            let tag = AudioTag::parse(&body)?;
            ServerEvent::Audio {
                timestamp,
                body,
                tag,
            }
        };
        self.events.push_back(event);
        Ok(())
    }

    fn data(&mut self, msg: &Message) -> Result<(), ServerError> {
        let values = self.decode_amf(msg, "data")?;
        // Metadata sent between `connect` and `publish` has no stream to
        // belong to; it is not a command, so it is dropped, not fatal.
        if self.state == ServerState::Connected {
            tracing::debug!("RTMP data message outside a publish dropped");
            return Ok(());
        }
        if !self.may_take_media("data message")? {
            return Ok(());
        }
        let mut values = values.into_iter();
        let mut name = values.next();
        // FFmpeg and OBS wrap `onMetaData` in `@setDataFrame`, the call
        // that asks a server to keep it for players.
        if name.as_ref().and_then(Amf0Value::as_str) == Some("@setDataFrame") {
            name = values.next();
        }
        let Some(Amf0Value::String(name)) = name else {
            return Err(ServerError::Protocol("data message without a handler name"));
        };
        self.events.push_back(ServerEvent::Data {
            timestamp: msg.timestamp,
            name,
            values: values.collect(),
        });
        Ok(())
    }

    /// An aggregate message: FLV tags back to back (11-byte tag header,
    /// body, 4-byte previous tag size), their timestamps relative to the
    /// first one's and re-based on the message's.
    fn aggregate(&mut self, msg: &Message) -> Result<(), ServerError> {
        const CUT: ServerError = ServerError::Protocol("aggregate message cut inside a tag");
        if !self.may_take_media("aggregate message")? {
            return Ok(());
        }
        let p = &msg.payload;
        let mut pos = 0;
        let mut first = None;
        while pos < p.len() {
            let h = p.get(pos..pos + 11).ok_or(CUT)?;
            let type_id = h[0] & 0x1f;
            let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
            let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
            let start = pos + 11;
            let end = start + size;
            if end > p.len() {
                return Err(CUT);
            }
            // The trailing previous-tag-size is sometimes left off the last.
            pos = (end + 4).min(p.len());
            let base = *first.get_or_insert(ts);
            let sub = Message {
                type_id,
                stream_id: msg.stream_id,
                timestamp: msg.timestamp.wrapping_add(ts.wrapping_sub(base)),
                payload: p.slice(start..end),
            };
            match type_id {
                m::AUDIO | m::VIDEO => self.media(type_id, sub.timestamp, sub.payload)?,
                m::DATA_AMF0 => self.data(&sub)?,
                other => tracing::trace!(type_id = other, "aggregated tag ignored"),
            }
        }
        Ok(())
    }
}

/// An `onStatus` on the published stream.
fn on_status(stream_id: u32, level: &str, code: &str, description: &str) -> Message {
    let info = Amf0Value::object([
        ("level", Amf0Value::str(level)),
        ("code", Amf0Value::str(code)),
        ("description", Amf0Value::str(description)),
    ]);
    m::command(stream_id, "onStatus", 0.0, &[Amf0Value::Null, info])
}

/// The peer's text, cut for errors and logs.
fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
