//! The server session against scripted clients written with the shared
//! chunk code, and against our own publishing client, in memory.

use bytes::{Bytes, BytesMut};
use rand::{Rng, SeedableRng};

use super::*;
use crate::amf0::encode_all;
use crate::flv::{self, FourCc, VideoCodec};
use crate::rtmp::chunk::MAX_MESSAGE_LEN;
use crate::rtmp::handshake::{PACKET_LEN, client_hello};
use crate::rtmp::message::{CSID_AUDIO, CSID_DATA, CSID_VIDEO};
use crate::rtmp::session::{Session, SessionConfig, SessionEvent};
use crate::url::RtmpUrl;

/// A client made of the shared chunk reader/writer, driven step by step.
struct Client {
    server: ServerSession,
    reader: ChunkReader,
    writer: ChunkWriter,
}

impl Client {
    /// Handshake done; nothing sent after C2.
    fn new(config: ServerConfig) -> Client {
        let mut server = ServerSession::new(config);
        let c0c1 = client_hello(&mut rand::rng());
        server.push(&c0c1).expect("C0+C1");
        let s = server.poll_output().expect("S0+S1+S2");
        assert_eq!(s.len(), 1 + 2 * PACKET_LEN);
        assert_eq!(s[0], 3);
        assert_eq!(&s[1 + PACKET_LEN..], &c0c1[1..], "S2 echoes C1");
        assert_eq!(server.state(), ServerState::Handshake);
        // C2 echoes S1.
        server.push(&s[1..1 + PACKET_LEN]).expect("C2");
        assert_eq!(server.state(), ServerState::Connecting);
        Client {
            server,
            reader: ChunkReader::default(),
            writer: ChunkWriter::default(),
        }
    }

    fn send(&mut self, csid: u32, msg: &Message) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        self.writer.write(csid, msg, &mut out).expect("chunking");
        self.server.push(&out)
    }

    fn command(
        &mut self,
        stream_id: u32,
        name: &str,
        txn: f64,
        args: &[Amf0Value],
    ) -> Result<(), ServerError> {
        self.send(CSID_COMMAND, &m::command(stream_id, name, txn, args))
    }

    fn media(&mut self, type_id: u8, timestamp: u32, body: Bytes) -> Result<(), ServerError> {
        let csid = match type_id {
            m::VIDEO => CSID_VIDEO,
            m::AUDIO => CSID_AUDIO,
            _ => CSID_DATA,
        };
        let msg = Message {
            type_id,
            stream_id: STREAM_ID,
            timestamp,
            payload: body,
        };
        self.send(csid, &msg)
    }

    /// What the server sent, as messages.
    fn take(&mut self) -> Vec<Message> {
        while let Some(bytes) = self.server.poll_output() {
            self.reader.push(&bytes);
        }
        let mut msgs = Vec::new();
        while let Some(msg) = self.reader.next_message().expect("server output") {
            if msg.type_id == m::SET_CHUNK_SIZE {
                let size = m::read_u32(&msg.payload).expect("size");
                self.reader.set_chunk_size(size).expect("chunk size");
            }
            msgs.push(msg);
        }
        msgs
    }

    fn events(&mut self) -> Vec<ServerEvent> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    /// `connect` with app `live`, answered.
    fn connect(&mut self) {
        let props = Amf0Value::object([
            ("app", Amf0Value::str("live")),
            ("type", Amf0Value::str("nonprivate")),
            ("flashVer", Amf0Value::str("FMLE/3.0 (compatible; test)")),
            ("tcUrl", Amf0Value::str("rtmp://127.0.0.1:1935/live")),
        ]);
        self.send(CSID_CONTROL, &m::set_chunk_size(4096))
            .expect("SetChunkSize");
        self.writer.set_chunk_size(4096).expect("chunk size");
        self.command(0, "connect", 1.0, &[props]).expect("connect");
        assert_eq!(self.server.state(), ServerState::Connected);
    }

    /// Everything up to and including `publish(key)`; returns the request.
    fn up_to_publish(&mut self, key: &str) -> PublishRequest {
        self.connect();
        self.take();
        let k = Amf0Value::str(key);
        self.command(0, "releaseStream", 2.0, &[Amf0Value::Null, k.clone()])
            .expect("releaseStream");
        self.command(0, "FCPublish", 3.0, &[Amf0Value::Null, k.clone()])
            .expect("FCPublish");
        self.command(0, "createStream", 4.0, &[Amf0Value::Null])
            .expect("createStream");
        self.take();
        self.command(
            STREAM_ID,
            "publish",
            5.0,
            &[Amf0Value::Null, k, Amf0Value::str("live")],
        )
        .expect("publish");
        assert!(
            self.take().is_empty(),
            "nothing is said before the owner decides"
        );
        match self.events().as_slice() {
            [ServerEvent::PublishRequest(r)] => r.clone(),
            other => panic!("expected one publish request, got {other:?}"),
        }
    }
}

/// A command's name and values.
fn decoded(msg: &Message) -> (String, Vec<Amf0Value>) {
    assert_eq!(msg.type_id, m::COMMAND_AMF0, "{msg:?}");
    let values = decode_all(&msg.payload).expect("AMF0");
    let name = values[0].as_str().expect("name").to_owned();
    (name, values)
}

fn info_code(values: &[Amf0Value]) -> (&str, &str) {
    let info = &values[3];
    (
        info.get("level").and_then(Amf0Value::as_str).unwrap_or(""),
        info.get("code").and_then(Amf0Value::as_str).unwrap_or(""),
    )
}

#[test]
fn connect_and_publish_as_ffmpeg_does() {
    let mut c = Client::new(ServerConfig::default());
    c.connect();
    let msgs = c.take();
    let types: Vec<u8> = msgs.iter().map(|m| m.type_id).collect();
    assert_eq!(
        types,
        [
            m::WINDOW_ACK_SIZE,
            m::SET_PEER_BANDWIDTH,
            m::SET_CHUNK_SIZE,
            m::COMMAND_AMF0
        ]
    );
    assert_eq!(m::read_u32(&msgs[0].payload), Some(2_500_000));
    assert_eq!(&msgs[1].payload[..], [0, 0x26, 0x25, 0xa0, 2]);
    assert_eq!(m::read_u32(&msgs[2].payload), Some(4096));
    let (name, values) = decoded(&msgs[3]);
    assert_eq!(name, "_result");
    assert_eq!(values[1], Amf0Value::Number(1.0), "echoes the transaction");
    assert_eq!(
        info_code(&values),
        ("status", "NetConnection.Connect.Success")
    );
    assert_eq!(c.server.app(), "live");
    assert_eq!(c.server.tc_url(), "rtmp://127.0.0.1:1935/live");

    let key = Amf0Value::str("cam?token=abc");
    c.command(0, "releaseStream", 2.0, &[Amf0Value::Null, key.clone()])
        .unwrap();
    c.command(0, "FCPublish", 3.0, &[Amf0Value::Null, key.clone()])
        .unwrap();
    c.command(0, "createStream", 4.0, &[Amf0Value::Null])
        .unwrap();
    let replies: Vec<_> = c.take().iter().map(decoded).collect();
    let names: Vec<&str> = replies.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["_result", "_result", "onFCPublish", "_result"]);
    assert_eq!(replies[0].1[1], Amf0Value::Number(2.0));
    let fc = &replies[2].1[3];
    assert_eq!(
        fc.get("description").and_then(Amf0Value::as_str),
        Some("cam"),
        "the token is not echoed"
    );
    assert_eq!(replies[3].1[1], Amf0Value::Number(4.0));
    assert_eq!(replies[3].1[3], Amf0Value::Number(1.0), "stream id 1");

    c.command(
        STREAM_ID,
        "publish",
        5.0,
        &[Amf0Value::Null, key, Amf0Value::str("live")],
    )
    .unwrap();
    let events = c.events();
    let [ServerEvent::PublishRequest(request)] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert_eq!(request.app, "live");
    assert_eq!(request.stream_key, "cam?token=abc");
    assert_eq!(request.stream_name(), "cam");
    assert_eq!(request.query(), Some("token=abc"));
    assert_eq!(request.publish_type, "live");
    assert_eq!(request.tc_url, "rtmp://127.0.0.1:1935/live");
    let debug = format!("{request:?}");
    assert!(
        !debug.contains("abc"),
        "the token stays out of logs: {debug}"
    );
    assert_eq!(c.server.state(), ServerState::PublishRequested);

    c.server.accept().unwrap();
    let msgs = c.take();
    assert_eq!(msgs[0].type_id, m::USER_CONTROL);
    assert_eq!(&msgs[0].payload[..], [0, 0, 0, 0, 0, 1], "StreamBegin 1");
    let (name, values) = decoded(&msgs[1]);
    assert_eq!(name, "onStatus");
    assert_eq!(msgs[1].stream_id, STREAM_ID);
    assert_eq!(info_code(&values), ("status", "NetStream.Publish.Start"));
    assert_eq!(c.server.state(), ServerState::Publishing);
    assert_eq!(c.server.accept(), Err(ServerError::NoPendingPublish));
}

#[test]
fn media_metadata_pings_and_unpublish() {
    let mut c = Client::new(ServerConfig::default());
    c.up_to_publish("cam");
    c.server.accept().unwrap();
    c.take();

    let meta = encode_all(&[
        Amf0Value::str("@setDataFrame"),
        Amf0Value::str("onMetaData"),
        Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(640.0))]),
    ]);
    c.media(m::DATA_AMF0, 0, Bytes::from(meta)).unwrap();
    let record = [1u8, 0x64, 0, 0x1f, 0xff, 0xe1];
    c.media(m::VIDEO, 0, flv::avc_sequence_header(&record))
        .unwrap();
    c.media(m::AUDIO, 0, flv::aac_sequence_header(&[0x11, 0x90]))
        .unwrap();
    // A keyframe bigger than the chunk size, with a B-frame offset of 66 ms.
    let mut key = vec![0x17, 1, 0, 0, 66];
    key.extend_from_slice(&10_000u32.to_be_bytes());
    key.push(0x65);
    key.extend(std::iter::repeat_n(0xab, 9_999));
    c.media(m::VIDEO, 33, Bytes::from(key.clone())).unwrap();
    c.media(m::AUDIO, 21, flv::aac_raw_frame(&[0x21, 0x00, 0x03]))
        .unwrap();
    // An empty audio message is skipped; E-RTMP HEVC is read by FourCC.
    c.media(m::AUDIO, 22, Bytes::new()).unwrap();
    c.media(
        m::VIDEO,
        66,
        flv::ex_video_coded_frames(FourCc::HEVC, false, -33, &[2, 1]),
    )
    .unwrap();

    let events = c.events();
    assert_eq!(events.len(), 6, "{events:?}");
    match &events[0] {
        ServerEvent::Data { name, values, .. } => {
            assert_eq!(name, "onMetaData");
            assert_eq!(values[0].get("width"), Some(&Amf0Value::Number(640.0)));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &events[1],
        ServerEvent::Video { timestamp: 0, tag: VideoTag::SequenceStart { codec: VideoCodec::H264, record: r }, .. }
            if r[..] == record
    ));
    assert!(matches!(
        &events[2],
        ServerEvent::Audio { tag: AudioTag::SequenceStart { config, .. }, .. } if config[..] == [0x11, 0x90]
    ));
    match &events[3] {
        ServerEvent::Video {
            timestamp,
            body,
            tag:
                VideoTag::Frame {
                    keyframe,
                    composition_time,
                    data,
                    ..
                },
        } => {
            assert_eq!((*timestamp, *keyframe, *composition_time), (33, true, 66));
            assert_eq!(body[..], key[..], "the body as sent");
            assert_eq!(data[..], key[5..]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &events[4],
        ServerEvent::Audio { timestamp: 21, tag: AudioTag::Frame { data, .. }, .. } if data[..] == [0x21, 0, 3]
    ));
    assert!(matches!(
        &events[5],
        ServerEvent::Video {
            timestamp: 66,
            tag: VideoTag::Frame {
                codec: VideoCodec::H265,
                composition_time: -33,
                ..
            },
            ..
        }
    ));
    assert!(
        format!("{:?}", events[3]).len() < 200,
        "media Debug is short"
    );

    // Ping → pong with the same timestamp.
    let mut ping = m::USER_PING_REQUEST.to_be_bytes().to_vec();
    ping.extend_from_slice(&1234u32.to_be_bytes());
    let ping = Message {
        type_id: m::USER_CONTROL,
        stream_id: 0,
        timestamp: 0,
        payload: ping.into(),
    };
    c.send(CSID_CONTROL, &ping).unwrap();
    let msgs = c.take();
    assert_eq!(msgs.len(), 1);
    assert_eq!(&msgs[0].payload[..], [0, 7, 0, 0, 4, 210]);

    // FFmpeg's goodbye: one Unpublished for the pair.
    let key = Amf0Value::str("cam");
    c.command(0, "FCUnpublish", 6.0, &[Amf0Value::Null, key])
        .unwrap();
    c.command(
        0,
        "deleteStream",
        7.0,
        &[Amf0Value::Null, Amf0Value::Number(1.0)],
    )
    .unwrap();
    assert_eq!(c.events(), [ServerEvent::Unpublished]);
    assert_eq!(c.server.state(), ServerState::Connected);
    // A late frame after the unpublish is dropped, not an error.
    c.media(m::AUDIO, 40, flv::aac_raw_frame(&[1])).unwrap();
    assert!(c.events().is_empty());
}

#[test]
fn input_during_the_decision_waits_for_it() {
    let mut c = Client::new(ServerConfig::default());
    // The publish and a first frame in one push: the frame is held until
    // the owner accepts, then reported.
    c.connect();
    c.command(0, "createStream", 2.0, &[Amf0Value::Null])
        .unwrap();
    c.take();
    let mut wire = BytesMut::new();
    let publish = m::command(
        STREAM_ID,
        "publish",
        3.0,
        &[Amf0Value::Null, Amf0Value::str("cam")],
    );
    c.writer.write(CSID_COMMAND, &publish, &mut wire).unwrap();
    let frame = Message {
        type_id: m::AUDIO,
        stream_id: STREAM_ID,
        timestamp: 5,
        payload: flv::aac_raw_frame(&[9]),
    };
    c.writer.write(CSID_AUDIO, &frame, &mut wire).unwrap();
    c.server.push(&wire).unwrap();
    let events = c.events();
    assert!(
        matches!(events.as_slice(), [ServerEvent::PublishRequest(r)] if r.publish_type == "live"),
        "no type sent: live; {events:?}"
    );
    c.server.accept().unwrap();
    assert!(matches!(
        c.events().as_slice(),
        [ServerEvent::Audio { timestamp: 5, .. }]
    ));
}

#[test]
fn rejection_closes_with_an_error_status() {
    let mut c = Client::new(ServerConfig::default());
    c.up_to_publish("cam?token=wrong");
    c.server.reject("bad stream key").unwrap();
    let msgs = c.take();
    assert_eq!(msgs.len(), 1);
    let (name, values) = decoded(&msgs[0]);
    assert_eq!(name, "onStatus");
    assert_eq!(info_code(&values), ("error", "NetStream.Publish.BadName"));
    assert_eq!(
        values[3].get("description").and_then(Amf0Value::as_str),
        Some("bad stream key")
    );
    assert!(c.server.is_closed());
    // Whatever comes now is ignored.
    c.media(m::AUDIO, 0, flv::aac_raw_frame(&[1])).unwrap();
    assert!(c.events().is_empty());
    assert_eq!(c.server.reject("again"), Err(ServerError::NoPendingPublish));
}

#[test]
fn acknowledges_every_window() {
    let mut c = Client::new(ServerConfig::default());
    c.up_to_publish("cam");
    c.server.accept().unwrap();
    c.take();
    // The publisher asks for an acknowledgement every 10 000 bytes.
    c.send(CSID_CONTROL, &m::window_ack_size(10_000)).unwrap();
    let frame = Bytes::from(vec![0xaf; 3_000]);
    let mut acks = Vec::new();
    for i in 0..20 {
        c.media(m::AUDIO, i, frame.clone()).unwrap();
        for msg in c.take() {
            assert_eq!(msg.type_id, m::ACKNOWLEDGEMENT);
            acks.push(m::read_u32(&msg.payload).unwrap());
        }
    }
    // The handshake already counted, so the first comes early; then one per
    // 10 000 bytes, each the total received.
    assert!(acks.len() >= 3, "{acks:?}");
    assert!(acks.windows(2).all(|w| w[1] - w[0] >= 10_000), "{acks:?}");
    assert!(u64::from(*acks.last().unwrap()) <= c.server.bytes_received());
}

#[test]
fn our_client_publishes_to_our_server() {
    let url = RtmpUrl::parse("rtmp://127.0.0.1/live/cam?token=abc").unwrap();
    let mut client = Session::new(SessionConfig::new(&url));
    let mut server = ServerSession::new(ServerConfig::default());
    let mut requests = Vec::new();
    let mut events = Vec::new();
    // Shuttle bytes until the client is publishing, answering the request.
    for _ in 0..20 {
        while let Some(bytes) = client.poll_output() {
            server.push(&bytes).expect("server input");
        }
        while let Some(event) = server.poll_event() {
            if let ServerEvent::PublishRequest(r) = event {
                requests.push(r);
                server.accept().expect("accept");
            }
        }
        while let Some(bytes) = server.poll_output() {
            client.handle_input(&bytes).expect("client input");
        }
        if client.is_publishing() {
            break;
        }
    }
    assert!(client.is_publishing());
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].app, "live");
    assert_eq!(requests[0].stream_key, "cam?token=abc");
    assert_eq!(requests[0].tc_url, "rtmp://127.0.0.1:1935/live");

    client
        .send_metadata(&flv::Metadata {
            width: Some(640),
            ..Default::default()
        })
        .unwrap();
    client
        .send_video(0, flv::avc_sequence_header(&[1, 2, 3]))
        .unwrap();
    client
        .send_video(0x0100_0000, Bytes::from(vec![0x27; 20_000]))
        .unwrap();
    client.close().unwrap();
    while let Some(bytes) = client.poll_output() {
        server.push(&bytes).expect("server input");
    }
    while let Some(event) = server.poll_event() {
        events.push(event);
    }
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(&events[0], ServerEvent::Data { name, .. } if name == "onMetaData"));
    assert!(matches!(
        &events[1],
        ServerEvent::Video {
            tag: VideoTag::SequenceStart { .. },
            ..
        }
    ));
    assert!(matches!(
        &events[2],
        ServerEvent::Video { timestamp: 0x0100_0000, body, .. } if body.len() == 20_000
    ));
    assert_eq!(events[3], ServerEvent::Unpublished);
    let client_event = std::iter::from_fn(|| client.poll_event()).last();
    assert!(matches!(
        client_event,
        Some(SessionEvent::Publishing { stream_id: 1 })
    ));
}

#[test]
fn aggregate_messages_are_split() {
    let mut c = Client::new(ServerConfig::default());
    c.up_to_publish("cam");
    c.server.accept().unwrap();
    let mut agg = Vec::new();
    for (type_id, ts, body) in [
        (m::AUDIO, 1000u32, flv::aac_raw_frame(&[1])),
        (m::VIDEO, 1020, Bytes::from_static(&[0x27, 1, 0, 0, 0, 9])),
    ] {
        agg.push(type_id);
        agg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        agg.extend_from_slice(&ts.to_be_bytes()[1..]);
        agg.push((ts >> 24) as u8);
        agg.extend_from_slice(&[0, 0, 0]);
        agg.extend_from_slice(&body);
        agg.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
    }
    c.media(m::AGGREGATE, 500, Bytes::from(agg.clone()))
        .unwrap();
    let events = c.events();
    assert!(matches!(
        events.as_slice(),
        [
            ServerEvent::Audio { timestamp: 500, .. },
            ServerEvent::Video { timestamp: 520, .. }
        ]
    ));
    // Cut inside the second tag: an error.
    agg.truncate(agg.len() - 6);
    assert_eq!(
        c.media(m::AGGREGATE, 600, Bytes::from(agg)),
        Err(ServerError::Protocol("aggregate message cut inside a tag"))
    );
}

/// The chunk header of a message declaring `len` bytes on chunk stream 6.
fn header_declaring(len: usize) -> Vec<u8> {
    let l = (len as u32).to_be_bytes();
    vec![0x06, 0, 0, 0, l[1], l[2], l[3], m::VIDEO, 1, 0, 0, 0]
}

#[test]
fn huge_messages_are_refused_from_the_header() {
    // Before publishing, anything over the command limit: here the largest
    // length RTMP can declare (24 bits), with none of its payload sent.
    let mut c = Client::new(ServerConfig::default());
    let err = c
        .server
        .push(&header_declaring(MAX_MESSAGE_LEN))
        .unwrap_err();
    assert_eq!(
        err,
        ServerError::Chunk(ChunkError::MessageOverLimit {
            len: MAX_MESSAGE_LEN,
            limit: 64 << 10
        })
    );
    assert!(c.server.is_closed());
    assert_eq!(c.server.push(&[1, 2, 3]), Ok(()), "closed: input ignored");

    // Publishing: the media limit (8 MiB) applies.
    let mut c = Client::new(ServerConfig::default());
    c.up_to_publish("cam");
    c.server.accept().unwrap();
    let err = c.server.push(&header_declaring((8 << 20) + 1)).unwrap_err();
    assert!(
        matches!(err, ServerError::Chunk(ChunkError::MessageOverLimit { .. })),
        "{err}"
    );

    // A configured lower limit; a message at the limit still passes.
    let config = ServerConfig {
        max_message_len: 100_000,
        ..ServerConfig::default()
    };
    let mut c = Client::new(config);
    c.up_to_publish("cam");
    c.server.accept().unwrap();
    let mut body = vec![0x27, 1, 0, 0, 0];
    body.resize(100_000, 7);
    c.media(m::VIDEO, 0, Bytes::from(body)).unwrap();
    assert_eq!(c.events().len(), 1);
    let err = c.media(m::VIDEO, 0, Bytes::from(vec![0x27; 100_001]));
    assert!(matches!(
        err,
        Err(ServerError::Chunk(ChunkError::MessageOverLimit {
            len: 100_001,
            limit: 100_000
        }))
    ));
}

#[test]
fn unfinished_messages_and_waiting_input_are_bounded() {
    // Many half-sent messages on different chunk streams: the sum is
    // capped at twice the message limit.
    let mut c = Client::new(ServerConfig::default());
    c.connect();
    let mut err = None;
    for csid in 10..60u32 {
        let mut wire = BytesMut::new();
        let msg = Message {
            type_id: m::COMMAND_AMF0,
            stream_id: 0,
            timestamp: 0,
            payload: Bytes::from(vec![0u8; 60_000]),
        };
        c.writer.write(csid, &msg, &mut wire).unwrap();
        // Only the first chunk (1-byte basic header, 11-byte header, 4096
        // bytes): 4 KiB held per chunk stream.
        if let Err(e) = c.server.push(&wire[..12 + 4096]) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(
        err,
        Some(ServerError::Chunk(ChunkError::TooMuchPartialData {
            limit: 2 * (64 << 10)
        }))
    );

    // A publisher that does not wait for the answer to `publish` may send
    // only so much before it is one.
    let mut c = Client::new(ServerConfig::default());
    c.up_to_publish("cam");
    let mut result = Ok(());
    for _ in 0..100 {
        result = c.media(m::AUDIO, 0, Bytes::from(vec![0xaf; 4_000]));
        if result.is_err() {
            break;
        }
    }
    assert!(
        matches!(result, Err(ServerError::InputBacklog { .. })),
        "{result:?}"
    );

    // Commands and data stay small even while publishing.
    let mut c = Client::new(ServerConfig::default());
    c.up_to_publish("cam");
    c.server.accept().unwrap();
    let big = Amf0Value::str("x".repeat(70_000));
    let err = c.command(0, "FCPublish", 9.0, &[Amf0Value::Null, big]);
    assert!(
        matches!(
            err,
            Err(ServerError::TooLarge {
                kind: "command",
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn out_of_order_commands_end_the_session() {
    let null = [Amf0Value::Null];
    // createStream before connect.
    let mut c = Client::new(ServerConfig::default());
    let err = c.command(0, "createStream", 2.0, &null).unwrap_err();
    assert_eq!(err.to_string(), "createStream before connect");
    assert!(c.server.is_closed());

    // publish before createStream.
    let mut c = Client::new(ServerConfig::default());
    c.connect();
    let args = [Amf0Value::Null, Amf0Value::str("cam")];
    let err = c.command(1, "publish", 2.0, &args).unwrap_err();
    assert_eq!(err.to_string(), "publish before createStream");

    // connect twice.
    let mut c = Client::new(ServerConfig::default());
    c.connect();
    let props = Amf0Value::object([("app", Amf0Value::str("live"))]);
    assert!(matches!(
        c.command(0, "connect", 2.0, &[props]),
        Err(ServerError::OutOfOrder { .. })
    ));

    // Media before publish; metadata there is only dropped, but not
    // before connect.
    let mut c = Client::new(ServerConfig::default());
    c.connect();
    let meta = encode_all(&[Amf0Value::str("onMetaData"), Amf0Value::Null]);
    c.media(m::DATA_AMF0, 0, Bytes::from(meta.clone())).unwrap();
    assert!(c.events().is_empty());
    assert!(matches!(
        c.media(m::VIDEO, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0])),
        Err(ServerError::OutOfOrder { .. })
    ));
    let mut c = Client::new(ServerConfig::default());
    assert_eq!(
        c.media(m::DATA_AMF0, 0, Bytes::from(meta))
            .map_err(|e| e.to_string()),
        Err("data message before connect".to_owned())
    );

    // A player.
    let mut c = Client::new(ServerConfig::default());
    c.connect();
    c.command(0, "createStream", 2.0, &null).unwrap();
    assert_eq!(
        c.command(1, "play", 3.0, &args),
        Err(ServerError::Unsupported("play".into()))
    );

    // connect without an app, a command without a name, a long name quoted
    // short.
    let mut c = Client::new(ServerConfig::default());
    let props = Amf0Value::object([("tcUrl", Amf0Value::str("rtmp://x/y"))]);
    assert_eq!(
        c.command(0, "connect", 1.0, &[props]),
        Err(ServerError::Protocol("connect without an app"))
    );
    let mut c = Client::new(ServerConfig::default());
    let msg = Message {
        type_id: m::COMMAND_AMF0,
        stream_id: 0,
        timestamp: 0,
        payload: Bytes::from(encode_all(&[Amf0Value::Number(1.0)])),
    };
    assert_eq!(
        c.send(CSID_COMMAND, &msg),
        Err(ServerError::Protocol("command without a name"))
    );
    let mut c = Client::new(ServerConfig::default());
    let err = c.command(0, &"y".repeat(1000), 1.0, &null).unwrap_err();
    assert!(err.to_string().len() < 80, "{err}");
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    // Not RTMP at all.
    let mut s = ServerSession::new(ServerConfig::default());
    assert_eq!(
        s.push(b"GET / HTTP/1.1\r\n"),
        Err(ServerError::Handshake(HandshakeError::Version(b'G')))
    );
    // A compressed header on a chunk stream never opened.
    let mut c = Client::new(ServerConfig::default());
    assert_eq!(
        c.server.push(&[0x45, 0, 0, 0, 0, 0, 1, 20]),
        Err(ServerError::Chunk(ChunkError::NoPreviousHeader {
            csid: 5,
            fmt: 1
        }))
    );
    // AMF garbage in a command.
    let mut c = Client::new(ServerConfig::default());
    let msg = Message {
        type_id: m::COMMAND_AMF0,
        stream_id: 0,
        timestamp: 0,
        payload: Bytes::from_static(&[0x02, 0x00, 0x07, b'c', b'o', 0x11]),
    };
    assert_eq!(
        c.send(CSID_COMMAND, &msg),
        Err(ServerError::Amf0(Amf0Error::Truncated))
    );
    // A truncated video tag while publishing.
    let mut c = Client::new(ServerConfig::default());
    c.up_to_publish("cam");
    c.server.accept().unwrap();
    assert_eq!(
        c.media(m::VIDEO, 0, Bytes::from_static(&[0x17, 1])),
        Err(ServerError::Media(FlvError::Truncated("video")))
    );
    // SetChunkSize 0, short control messages.
    let mut c = Client::new(ServerConfig::default());
    assert_eq!(
        c.send(CSID_CONTROL, &m::set_chunk_size(0)),
        Err(ServerError::Chunk(ChunkError::BadChunkSize(0)))
    );
    let mut c = Client::new(ServerConfig::default());
    let short = Message {
        type_id: m::WINDOW_ACK_SIZE,
        stream_id: 0,
        timestamp: 0,
        payload: Bytes::from_static(&[1]),
    };
    assert_eq!(
        c.send(CSID_CONTROL, &short),
        Err(ServerError::Protocol("short WindowAckSize"))
    );
}

/// A valid publishing conversation as the bytes a client sends, with the
/// owner's answer given whenever asked.
fn valid_conversation() -> Vec<u8> {
    let url = RtmpUrl::parse("rtmp://127.0.0.1/live/cam").unwrap();
    let mut client = Session::new(SessionConfig::new(&url));
    let mut server = ServerSession::new(ServerConfig::default());
    let mut wire = Vec::new();
    for _ in 0..20 {
        while let Some(bytes) = client.poll_output() {
            wire.extend_from_slice(&bytes);
            server.push(&bytes).unwrap();
        }
        while let Some(event) = server.poll_event() {
            if matches!(event, ServerEvent::PublishRequest(_)) {
                server.accept().unwrap();
            }
        }
        while let Some(bytes) = server.poll_output() {
            client.handle_input(&bytes).unwrap();
        }
    }
    client
        .send_video(0, flv::avc_sequence_header(&[1, 2]))
        .unwrap();
    client
        .send_video(33, Bytes::from(vec![0x27; 5000]))
        .unwrap();
    client.send_audio(40, flv::aac_raw_frame(&[1, 2])).unwrap();
    client.close().unwrap();
    while let Some(bytes) = client.poll_output() {
        wire.extend_from_slice(&bytes);
    }
    wire
}

/// Feeds `wire` in random pieces, accepting any request; returns the
/// outcome. Panics are what this is looking for.
fn feed(wire: &[u8], rng: &mut impl Rng) -> Result<(), ServerError> {
    let mut server = ServerSession::new(ServerConfig::default());
    let mut rest = wire;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(3000));
        server.push(&rest[..n])?;
        rest = &rest[n..];
        while let Some(event) = server.poll_event() {
            if matches!(event, ServerEvent::PublishRequest(_)) {
                server.accept()?;
            }
        }
        while server.poll_output().is_some() {}
    }
    Ok(())
}

#[test]
fn mutated_conversations_never_panic() {
    let wire = valid_conversation();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    feed(&wire, &mut rng).expect("the unmutated conversation is valid");
    let handshake = 1 + 2 * PACKET_LEN;
    for _ in 0..2000 {
        let mut bytes = wire.clone();
        for _ in 0..rng.random_range(1..8) {
            // Mostly past the handshake, where the interesting parsing is.
            let i = rng.random_range(handshake.min(bytes.len() - 1)..bytes.len());
            match rng.random_range(0..3) {
                0 => bytes[i] = rng.random(),
                1 => bytes[i] ^= 1 << rng.random_range(0..8),
                _ => {
                    bytes.truncate(i);
                    break;
                }
            }
        }
        let _ = feed(&bytes, &mut rng);
    }
    // And noise after a valid handshake.
    for _ in 0..200 {
        let mut bytes = wire[..handshake].to_vec();
        let len = rng.random_range(1..5000);
        bytes.extend((0..len).map(|_| rng.random::<u8>()));
        let _ = feed(&bytes, &mut rng);
    }
}
