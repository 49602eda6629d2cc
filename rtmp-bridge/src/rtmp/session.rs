//! The sans-IO RTMP publishing client: bytes in ([`Session::handle_input`]),
//! bytes out ([`Session::poll_output`]), events out
//! ([`Session::poll_event`]). It knows nothing about sockets or time, so
//! the same code runs over TCP, TLS, or a test's byte buffer.
//!
//! Sequence: handshake → SetChunkSize, `connect` → `releaseStream`,
//! `FCPublish`, `createStream` → `publish(key, "live")` →
//! `onStatus NetStream.Publish.Start` → media → `FCUnpublish`,
//! `deleteStream`. This is what FFmpeg and OBS send, so services that
//! expect FCPublish (Twitch, Facebook) accept it.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rand::RngCore;

use super::SessionError;
use super::chunk::{ChunkReader, ChunkWriter, Message};
use super::handshake;
use super::message::{self as m, CSID_AUDIO, CSID_COMMAND, CSID_CONTROL, CSID_DATA, CSID_VIDEO};
use crate::amf0::{Amf0Value, decode_all};
use crate::flv::{FourCc, Metadata};
use crate::url::RtmpUrl;

const TXN_CONNECT: f64 = 1.0;
const TXN_RELEASE_STREAM: f64 = 2.0;
const TXN_FC_PUBLISH: f64 = 3.0;
const TXN_CREATE_STREAM: f64 = 4.0;
const TXN_PUBLISH: f64 = 5.0;
const TXN_FC_UNPUBLISH: f64 = 6.0;
const TXN_DELETE_STREAM: f64 = 7.0;

/// Commands from a server are small; a bigger one is not RTMP.
const MAX_COMMAND_LEN: usize = 1 << 20;

/// What the client announces in `connect` and how it chunks.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub app: String,
    pub tc_url: String,
    pub key: String,
    /// `flashVer`; "FMLE/3.0" is what encoders (FFmpeg, OBS) claim, which
    /// some services check.
    pub flash_ver: String,
    /// Our outgoing chunk size: big enough that most audio frames and
    /// commands fit in one chunk.
    pub chunk_size: u32,
    /// E-RTMP: the codecs we may send, announced in `connect` as
    /// `fourCcList` (so the server knows to read ExHeader tags); empty
    /// for plain RTMP, where the property is left out.
    pub fourcc_list: Vec<FourCc>,
}

impl SessionConfig {
    pub fn new(url: &RtmpUrl) -> Self {
        SessionConfig {
            app: url.app.clone(),
            tc_url: url.tc_url.clone(),
            key: url.key.clone(),
            flash_ver: "FMLE/3.0 (compatible; Whipcord)".into(),
            chunk_size: 4096,
            fourcc_list: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for S0+S1+S2.
    Handshake,
    /// `connect` sent.
    Connecting,
    /// `createStream` sent.
    CreatingStream,
    /// `publish` sent, waiting for `NetStream.Publish.Start`.
    StartingPublish,
    /// Media may be sent.
    Publishing,
    /// Closed by [`Session::close`] or after an error.
    Closed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// `connect` succeeded.
    Connected,
    /// The server accepted the publish: media may flow.
    Publishing { stream_id: u32 },
    /// Any other `onStatus` (informational, e.g. `NetStream.Unpublish.Success`).
    Status {
        level: String,
        code: String,
        description: String,
    },
}

pub struct Session {
    config: SessionConfig,
    state: SessionState,
    handshake_buf: BytesMut,
    reader: ChunkReader,
    writer: ChunkWriter,
    out: BytesMut,
    events: VecDeque<SessionEvent>,
    stream_id: u32,
    bytes_received: u64,
    bytes_sent: u64,
    last_ack: u64,
    /// The peer's WindowAckSize: we acknowledge every this many bytes.
    peer_window: u32,
    /// The last WindowAckSize we sent.
    our_window: Option<u32>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key: it is a secret.
        f.debug_struct("Session")
            .field("tc_url", &self.config.tc_url)
            .field("state", &self.state)
            .field("stream_id", &self.stream_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session whose C0+C1 are already waiting in
    /// [`poll_output`](Self::poll_output).
    pub fn new(config: SessionConfig) -> Self {
        Self::with_rng(config, &mut rand::rng())
    }

    pub fn with_rng(config: SessionConfig, rng: &mut impl RngCore) -> Self {
        let mut out = BytesMut::new();
        out.extend_from_slice(&handshake::client_hello(rng));
        Session {
            config,
            state: SessionState::Handshake,
            handshake_buf: BytesMut::new(),
            reader: ChunkReader::default(),
            writer: ChunkWriter::default(),
            out,
            events: VecDeque::new(),
            stream_id: 0,
            bytes_received: 0,
            bytes_sent: 0,
            last_ack: 0,
            peer_window: 0,
            our_window: None,
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn is_publishing(&self) -> bool {
        self.state == SessionState::Publishing
    }

    /// Bytes handed out by [`poll_output`](Self::poll_output) so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Bytes the server has sent so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Bytes to send to the server, if any.
    pub fn poll_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        self.bytes_sent += self.out.len() as u64;
        Some(self.out.split().freeze())
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Bytes from the server. An error ends the session: RTMP has no way
    /// to resynchronise a chunk stream.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), SessionError> {
        if self.state == SessionState::Closed {
            return Ok(());
        }
        let result = self.handle_input_inner(data);
        if result.is_err() {
            self.state = SessionState::Closed;
        }
        result
    }

    fn handle_input_inner(&mut self, data: &[u8]) -> Result<(), SessionError> {
        self.bytes_received += data.len() as u64;
        if self.state == SessionState::Handshake {
            self.handshake_buf.extend_from_slice(data);
            let Some((c2, used)) = handshake::server_response(&self.handshake_buf)? else {
                return Ok(());
            };
            self.out.extend_from_slice(&c2);
            self.reader.push(&self.handshake_buf[used..]);
            self.handshake_buf = BytesMut::new();
            self.start_connect()?;
        } else {
            self.reader.push(data);
        }
        while let Some(msg) = self.reader.next_message()? {
            self.handle_message(msg)?;
        }
        if self.peer_window > 0
            && self.bytes_received - self.last_ack >= u64::from(self.peer_window)
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

    fn send(&mut self, csid: u32, msg: &Message) -> Result<(), SessionError> {
        Ok(self.writer.write(csid, msg, &mut self.out)?)
    }

    fn send_command(
        &mut self,
        stream_id: u32,
        name: &str,
        txn: f64,
        args: &[Amf0Value],
    ) -> Result<(), SessionError> {
        self.send(CSID_COMMAND, &m::command(stream_id, name, txn, args))
    }

    fn start_connect(&mut self) -> Result<(), SessionError> {
        self.send(CSID_CONTROL, &m::set_chunk_size(self.config.chunk_size))?;
        self.writer.set_chunk_size(self.config.chunk_size)?;
        let mut props = vec![
            ("app", Amf0Value::str(self.config.app.clone())),
            ("type", Amf0Value::str("nonprivate")),
            ("flashVer", Amf0Value::str(self.config.flash_ver.clone())),
            ("tcUrl", Amf0Value::str(self.config.tc_url.clone())),
        ];
        if !self.config.fourcc_list.is_empty() {
            // E-RTMP v2 §"Enhancing NetConnection connect Command": a
            // strict array of FourCC strings.
            let list = self.config.fourcc_list.iter();
            props.push((
                "fourCcList",
                Amf0Value::StrictArray(list.map(|f| Amf0Value::str(f.to_string())).collect()),
            ));
        }
        let props = Amf0Value::object(props);
        self.send_command(0, "connect", TXN_CONNECT, &[props])?;
        self.state = SessionState::Connecting;
        Ok(())
    }

    fn handle_message(&mut self, msg: Message) -> Result<(), SessionError> {
        let p = &msg.payload[..];
        match msg.type_id {
            m::SET_CHUNK_SIZE => {
                let size = m::read_u32(p).ok_or(SessionError::Protocol("short SetChunkSize"))?;
                self.reader.set_chunk_size(size & 0x7fff_ffff)?;
            }
            m::ABORT => {
                let csid = m::read_u32(p).ok_or(SessionError::Protocol("short Abort"))?;
                self.reader.abort(csid);
            }
            m::WINDOW_ACK_SIZE => {
                self.peer_window =
                    m::read_u32(p).ok_or(SessionError::Protocol("short WindowAckSize"))?;
            }
            m::SET_PEER_BANDWIDTH => {
                let size =
                    m::read_u32(p).ok_or(SessionError::Protocol("short SetPeerBandwidth"))?;
                if self.our_window != Some(size) {
                    self.our_window = Some(size);
                    self.send(CSID_CONTROL, &m::window_ack_size(size))?;
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
                if p.len() > MAX_COMMAND_LEN {
                    return Err(SessionError::Protocol("command message over 1 MiB"));
                }
                // An AMF3 command starts with a format byte, then AMF0 values.
                let body = if msg.type_id == m::COMMAND_AMF3 {
                    p.get(1..).unwrap_or_default()
                } else {
                    p
                };
                let values = decode_all(body)?;
                self.handle_command(&values)?;
            }
            // Acknowledgements, the server's data/audio/video: nothing to do.
            _ => {}
        }
        Ok(())
    }

    fn handle_command(&mut self, values: &[Amf0Value]) -> Result<(), SessionError> {
        let name = values.first().and_then(Amf0Value::as_str).unwrap_or("");
        let txn = values.get(1).and_then(Amf0Value::as_number).unwrap_or(0.0);
        // Info objects (status, result details) come after the command object.
        let info = values.get(3);
        let field = |key: &str| {
            info.and_then(|i| i.get(key))
                .and_then(Amf0Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        match name {
            "_result" | "_error" => {
                let failed = name == "_error";
                if txn == TXN_CONNECT && self.state == SessionState::Connecting {
                    let code = field("code");
                    if failed || (!code.is_empty() && code != "NetConnection.Connect.Success") {
                        return Err(SessionError::Rejected {
                            command: "connect",
                            code: or_unknown(code),
                            description: field("description"),
                        });
                    }
                    self.events.push_back(SessionEvent::Connected);
                    let key = Amf0Value::str(self.config.key.clone());
                    self.send_command(
                        0,
                        "releaseStream",
                        TXN_RELEASE_STREAM,
                        &[Amf0Value::Null, key.clone()],
                    )?;
                    self.send_command(0, "FCPublish", TXN_FC_PUBLISH, &[Amf0Value::Null, key])?;
                    self.send_command(0, "createStream", TXN_CREATE_STREAM, &[Amf0Value::Null])?;
                    self.state = SessionState::CreatingStream;
                } else if txn == TXN_CREATE_STREAM && self.state == SessionState::CreatingStream {
                    if failed {
                        return Err(SessionError::Rejected {
                            command: "createStream",
                            code: or_unknown(field("code")),
                            description: field("description"),
                        });
                    }
                    let id = info
                        .and_then(Amf0Value::as_number)
                        .filter(|n| n.is_finite() && *n >= 1.0 && *n <= f64::from(u32::MAX))
                        .ok_or(SessionError::Protocol(
                            "createStream result without a stream id",
                        ))?;
                    self.stream_id = id as u32;
                    let args = [
                        Amf0Value::Null,
                        Amf0Value::str(self.config.key.clone()),
                        Amf0Value::str("live"),
                    ];
                    self.send_command(self.stream_id, "publish", TXN_PUBLISH, &args)?;
                    self.state = SessionState::StartingPublish;
                }
                // releaseStream/FCPublish answers (often _error on servers
                // that do not implement them) do not matter.
            }
            "onStatus" => {
                let level = field("level");
                let code = field("code");
                let description = field("description");
                if code == "NetStream.Publish.Start" && self.state == SessionState::StartingPublish
                {
                    self.state = SessionState::Publishing;
                    self.events.push_back(SessionEvent::Publishing {
                        stream_id: self.stream_id,
                    });
                } else if level == "error"
                    || code.ends_with(".BadName")
                    || code.ends_with(".Failed")
                    || code.ends_with(".Rejected")
                {
                    return Err(SessionError::Rejected {
                        command: "publish",
                        code: or_unknown(code),
                        description,
                    });
                } else {
                    self.events.push_back(SessionEvent::Status {
                        level,
                        code,
                        description,
                    });
                }
            }
            "close" => return Err(SessionError::ClosedByServer),
            // onBWDone, onFCPublish, _checkbw, …: nothing to answer.
            _ => {}
        }
        Ok(())
    }

    fn media(
        &mut self,
        csid: u32,
        type_id: u8,
        timestamp: u32,
        payload: Bytes,
    ) -> Result<(), SessionError> {
        if self.state != SessionState::Publishing {
            return Err(SessionError::NotPublishing);
        }
        let msg = Message {
            type_id,
            stream_id: self.stream_id,
            timestamp,
            payload,
        };
        self.send(csid, &msg)
    }

    /// One FLV video tag body at `timestamp` ms (absolute, RTMP's 32-bit
    /// clock).
    pub fn send_video(&mut self, timestamp: u32, body: Bytes) -> Result<(), SessionError> {
        self.media(CSID_VIDEO, m::VIDEO, timestamp, body)
    }

    /// One FLV audio tag body at `timestamp` ms.
    pub fn send_audio(&mut self, timestamp: u32, body: Bytes) -> Result<(), SessionError> {
        self.media(CSID_AUDIO, m::AUDIO, timestamp, body)
    }

    /// `@setDataFrame onMetaData`: the server stores it and hands it to
    /// every player and recording.
    pub fn send_metadata(&mut self, metadata: &Metadata) -> Result<(), SessionError> {
        let body = crate::amf0::encode_all(&[
            Amf0Value::str("@setDataFrame"),
            Amf0Value::str("onMetaData"),
            metadata.to_amf0(),
        ]);
        self.media(CSID_DATA, m::DATA_AMF0, 0, Bytes::from(body))
    }

    /// Queues `FCUnpublish` and `deleteStream` (when a stream exists) and
    /// closes the session; send the output, then close the transport.
    pub fn close(&mut self) -> Result<(), SessionError> {
        if matches!(
            self.state,
            SessionState::StartingPublish | SessionState::Publishing
        ) {
            let key = Amf0Value::str(self.config.key.clone());
            self.send_command(0, "FCUnpublish", TXN_FC_UNPUBLISH, &[Amf0Value::Null, key])?;
            let id = Amf0Value::Number(f64::from(self.stream_id));
            self.send_command(0, "deleteStream", TXN_DELETE_STREAM, &[Amf0Value::Null, id])?;
        }
        self.state = SessionState::Closed;
        Ok(())
    }
}

fn or_unknown(code: String) -> String {
    if code.is_empty() {
        "(no code)".into()
    } else {
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amf0::encode_all;

    /// The server side of the conversation, written with the same chunk
    /// code (tested on its own) and checked message by message.
    struct Server {
        reader: ChunkReader,
        writer: ChunkWriter,
    }

    impl Server {
        fn new() -> Self {
            Server {
                reader: ChunkReader::default(),
                writer: ChunkWriter::default(),
            }
        }

        fn take(&mut self, session: &mut Session) -> Vec<Message> {
            while let Some(bytes) = session.poll_output() {
                self.reader.push(&bytes);
            }
            let mut msgs = Vec::new();
            while let Some(msg) = self.reader.next_message().unwrap() {
                if msg.type_id == m::SET_CHUNK_SIZE {
                    self.reader
                        .set_chunk_size(m::read_u32(&msg.payload).unwrap())
                        .unwrap();
                }
                msgs.push(msg);
            }
            msgs
        }

        fn send(&mut self, session: &mut Session, msg: Message) -> Result<(), SessionError> {
            let mut out = BytesMut::new();
            self.writer.write(3, &msg, &mut out).unwrap();
            session.handle_input(&out)
        }

        fn command(
            &mut self,
            session: &mut Session,
            values: &[Amf0Value],
        ) -> Result<(), SessionError> {
            let msg = Message {
                type_id: m::COMMAND_AMF0,
                stream_id: 0,
                timestamp: 0,
                payload: Bytes::from(encode_all(values)),
            };
            self.send(session, msg)
        }
    }

    fn names(msgs: &[Message]) -> Vec<String> {
        msgs.iter()
            .map(|msg| match msg.type_id {
                m::COMMAND_AMF0 => decode_all(&msg.payload).unwrap()[0]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                t => format!("type{t}"),
            })
            .collect()
    }

    fn status(level: &str, code: &str) -> Vec<Amf0Value> {
        vec![
            Amf0Value::str("onStatus"),
            Amf0Value::Number(0.0),
            Amf0Value::Null,
            Amf0Value::object([
                ("level", Amf0Value::str(level)),
                ("code", Amf0Value::str(code)),
                ("description", Amf0Value::str("said the server")),
            ]),
        ]
    }

    /// Handshake and connect: returns the session waiting for `publish`'s
    /// answer.
    fn up_to_publish(server: &mut Server) -> Session {
        let url = RtmpUrl::parse("rtmp://127.0.0.1/live/secret").unwrap();
        let mut s = Session::new(SessionConfig::new(&url));
        let c0c1 = s.poll_output().unwrap();
        assert_eq!(c0c1.len(), 1537);
        let mut s012 = vec![3u8];
        s012.extend(std::iter::repeat_n(1u8, 1536));
        s012.extend(std::iter::repeat_n(2u8, 1536));
        s.handle_input(&s012).unwrap();
        let c2 = s.poll_output().unwrap();
        assert_eq!(&c2[..1536], &s012[1..1537], "C2 echoes S1");
        server.reader.push(&c2[1536..]);
        let msgs = server.take(&mut s);
        assert_eq!(names(&msgs), ["type1", "connect"]);
        let connect = decode_all(&msgs[1].payload).unwrap();
        assert_eq!(
            connect[2].get("app").and_then(Amf0Value::as_str),
            Some("live")
        );
        assert_eq!(
            connect[2].get("type").and_then(Amf0Value::as_str),
            Some("nonprivate")
        );
        assert_eq!(
            connect[2].get("tcUrl").and_then(Amf0Value::as_str),
            Some("rtmp://127.0.0.1:1935/live")
        );
        assert_eq!(connect[2].get("fourCcList"), None, "plain RTMP");

        server
            .command(
                &mut s,
                &[
                    Amf0Value::str("_result"),
                    Amf0Value::Number(1.0),
                    Amf0Value::Null,
                    Amf0Value::object([("code", Amf0Value::str("NetConnection.Connect.Success"))]),
                ],
            )
            .unwrap();
        assert_eq!(s.poll_event(), Some(SessionEvent::Connected));
        let msgs = server.take(&mut s);
        assert_eq!(names(&msgs), ["releaseStream", "FCPublish", "createStream"]);
        server
            .command(
                &mut s,
                &[
                    Amf0Value::str("_result"),
                    Amf0Value::Number(4.0),
                    Amf0Value::Null,
                    Amf0Value::Number(7.0),
                ],
            )
            .unwrap();
        let msgs = server.take(&mut s);
        assert_eq!(names(&msgs), ["publish"]);
        assert_eq!(msgs[0].stream_id, 7);
        let publish = decode_all(&msgs[0].payload).unwrap();
        assert_eq!(publish[3].as_str(), Some("secret"));
        assert_eq!(publish[4].as_str(), Some("live"));
        assert_eq!(s.state(), SessionState::StartingPublish);
        s
    }

    #[test]
    fn publishes_answers_pings_and_acknowledges() {
        let mut server = Server::new();
        let mut s = up_to_publish(&mut server);
        assert_eq!(
            s.send_video(0, Bytes::from_static(b"x")),
            Err(SessionError::NotPublishing)
        );
        server
            .command(&mut s, &status("status", "NetStream.Publish.Start"))
            .unwrap();
        assert_eq!(
            s.poll_event(),
            Some(SessionEvent::Publishing { stream_id: 7 })
        );

        // Ping request → response with the same timestamp.
        let mut ping = m::USER_PING_REQUEST.to_be_bytes().to_vec();
        ping.extend_from_slice(&1234u32.to_be_bytes());
        server
            .send(
                &mut s,
                Message {
                    type_id: m::USER_CONTROL,
                    stream_id: 0,
                    timestamp: 0,
                    payload: ping.into(),
                },
            )
            .unwrap();
        let msgs = server.take(&mut s);
        assert_eq!(msgs[0].type_id, m::USER_CONTROL);
        assert_eq!(&msgs[0].payload[..], [0, 7, 0, 0, 4, 210]);

        // A window of 100 bytes → an Acknowledgement once 100 more arrive.
        server.send(&mut s, m::window_ack_size(100)).unwrap();
        server
            .command(&mut s, &status("status", "NetStream.Info"))
            .unwrap();
        assert!(matches!(s.poll_event(), Some(SessionEvent::Status { .. })));
        // (The handshake already counts, so the first ack comes at once.)
        let msgs = server.take(&mut s);
        assert!(!msgs.is_empty());
        assert!(msgs.iter().all(|m| m.type_id == m::ACKNOWLEDGEMENT));
        let last = msgs.last().unwrap();
        assert_eq!(
            u64::from(m::read_u32(&last.payload).unwrap()),
            s.bytes_received()
        );

        s.send_video(0x0100_0000, Bytes::from(vec![9u8; 10_000]))
            .unwrap();
        s.send_audio(5, Bytes::from_static(&[0xaf, 1])).unwrap();
        s.send_metadata(&Metadata::default()).unwrap();
        let msgs = server.take(&mut s);
        assert_eq!(
            (msgs[0].type_id, msgs[0].timestamp, msgs[0].payload.len()),
            (9, 0x0100_0000, 10_000)
        );
        assert_eq!(
            (msgs[1].type_id, msgs[1].timestamp, msgs[1].stream_id),
            (8, 5, 7)
        );
        let meta = decode_all(&msgs[2].payload).unwrap();
        assert_eq!(meta[0].as_str(), Some("@setDataFrame"));
        assert_eq!(meta[1].as_str(), Some("onMetaData"));

        s.close().unwrap();
        assert_eq!(names(&server.take(&mut s)), ["FCUnpublish", "deleteStream"]);
        assert_eq!(s.state(), SessionState::Closed);
    }

    #[test]
    fn enhanced_connect_lists_fourccs() {
        let url = RtmpUrl::parse("rtmp://127.0.0.1/live/k").unwrap();
        let mut config = SessionConfig::new(&url);
        config.fourcc_list = vec![FourCc::HEVC, FourCc::OPUS];
        let mut s = Session::new(config);
        s.poll_output().unwrap(); // C0+C1
        let mut s012 = vec![3u8];
        s012.extend(std::iter::repeat_n(0u8, 3072));
        s.handle_input(&s012).unwrap();
        let c2 = s.poll_output().unwrap();
        let mut server = Server::new();
        server.reader.push(&c2[1536..]);
        let msgs = server.take(&mut s);
        let connect = decode_all(&msgs[1].payload).unwrap();
        assert_eq!(
            connect[2].get("fourCcList"),
            Some(&Amf0Value::StrictArray(vec![
                Amf0Value::str("hvc1"),
                Amf0Value::str("Opus")
            ]))
        );
    }

    #[test]
    fn refusal_names_the_code() {
        let mut server = Server::new();
        let mut s = up_to_publish(&mut server);
        let err = server
            .command(&mut s, &status("error", "NetStream.Publish.BadName"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "publish refused by the server: NetStream.Publish.BadName (said the server)"
        );
        assert_eq!(s.state(), SessionState::Closed);
    }

    #[test]
    fn connect_error_names_the_code() {
        let url = RtmpUrl::parse("rtmp://127.0.0.1/live/k").unwrap();
        let mut s = Session::new(SessionConfig::new(&url));
        let mut s012 = vec![3u8];
        s012.extend(std::iter::repeat_n(0u8, 3072));
        s.handle_input(&s012).unwrap();
        let mut server = Server::new();
        let err = server
            .command(
                &mut s,
                &[
                    Amf0Value::str("_error"),
                    Amf0Value::Number(1.0),
                    Amf0Value::Null,
                    Amf0Value::object([("code", Amf0Value::str("NetConnection.Connect.Rejected"))]),
                ],
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("connect refused by the server: NetConnection.Connect.Rejected"),
            "{err}"
        );
    }
}
