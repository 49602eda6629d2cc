//! Enhanced RTMP (E-RTMP v2) passthrough: a restream target with
//! `enhanced = true` fed real H265, AV1 and VP9 (and Opus) from FFmpeg's
//! encoders, received by an in-process RTMP server.
//!
//! Neither nginx-rtmp nor Debian's FFmpeg 5.1 reads E-RTMP, so the server
//! here is our own: the server side of the simple handshake, then our
//! chunk reader/writer and AMF0 code (the same the client uses, tested on
//! their own), answering `connect`, `createStream` and `publish` and
//! recording every message. What the target sent is then checked against
//! what it was fed, and the sequence start records against the ones the
//! recorder writes into MP4 init segments. Every wait is bounded.

mod common;
#[path = "../../recorder/tests/common/mod.rs"]
mod media;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{TempDir, h264_frames};
use media::Timed;
use recorder::codec::Codec;
use recorder::mp4::{AudioTrackConfig, Fragmenter};
use recorder::params::{AudioParams, VideoConfig};
use recorder::pipeline::{Output, RunEnd, RunStart, Timing};
use recorder::rtp::Frame;
use rtmp_bridge::RtmpUrl;
use rtmp_bridge::amf0::{Amf0Value, decode_all};
use rtmp_bridge::flv::FourCc;
use rtmp_bridge::rtmp::chunk::{ChunkReader, ChunkWriter, Message};
use rtmp_bridge::rtmp::message as m;
use rtmp_bridge::target::{self, Target, TargetConfig, TargetState, TargetStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const STEREO: AudioParams = AudioParams {
    channels: 2,
    sample_rate: 48_000,
};
/// Bound on every read the server makes and every wait of a test.
const LIMIT: Duration = Duration::from_secs(30);

/// What the server saw on one connection.
#[derive(Debug, Default, Clone)]
struct Connection {
    /// `connect`'s command object.
    connect: Option<Amf0Value>,
    /// Command names in arrival order.
    commands: Vec<String>,
    /// Audio, video and data messages in arrival order.
    media: Vec<Message>,
    /// The client hung up (after unpublishing, or on an error).
    closed: bool,
    /// Why serving it stopped early, if it did.
    error: Option<String>,
}

impl Connection {
    fn of_type(&self, type_id: u8) -> Vec<&Message> {
        self.media.iter().filter(|m| m.type_id == type_id).collect()
    }
}

/// An RTMP server that accepts every publish and records what comes.
struct Sink {
    port: u16,
    connections: Arc<Mutex<Vec<Connection>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let port = listener.local_addr().expect("address").port();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let shared = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let index = {
                    let mut all = shared.lock().unwrap();
                    all.push(Connection::default());
                    all.len() - 1
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let result = serve(stream, &shared, index).await;
                    let mut all = shared.lock().unwrap();
                    all[index].closed = true;
                    all[index].error = result.err();
                });
            }
        });
        Sink {
            port,
            connections,
            task,
        }
    }

    fn url(&self) -> RtmpUrl {
        RtmpUrl::parse(&format!("rtmp://127.0.0.1:{}/live/enhanced", self.port)).unwrap()
    }

    fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }

    /// The first connection, once the client has hung up.
    async fn finished_connection(&self) -> Connection {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(c) = self.connections().first().filter(|c| c.closed) {
                return c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the client did not finish within {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_exact(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), String> {
    timeout(LIMIT, stream.read_exact(buf))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Serves one connection until the client hangs up.
async fn serve(
    mut stream: TcpStream,
    connections: &Mutex<Vec<Connection>>,
    index: usize,
) -> Result<(), String> {
    // Simple handshake, server side: C0+C1 in, S0+S1+S2 out (S2 echoes
    // C1), C2 in, which must echo S1.
    let mut c0c1 = vec![0u8; 1537];
    read_exact(&mut stream, &mut c0c1).await?;
    if c0c1[0] != 3 {
        return Err(format!("client speaks RTMP version {}", c0c1[0]));
    }
    let s1: Vec<u8> = (0..1536u32).map(|i| (i * 31 + 7) as u8).collect();
    let mut hello = vec![3u8];
    hello.extend_from_slice(&s1);
    hello.extend_from_slice(&c0c1[1..]);
    stream.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut c2 = vec![0u8; 1536];
    read_exact(&mut stream, &mut c2).await?;
    if c2 != s1 {
        return Err("C2 does not echo S1".into());
    }

    let mut reader = ChunkReader::default();
    let mut writer = ChunkWriter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = timeout(LIMIT, stream.read(&mut buf))
            .await
            .map_err(|_| "the client went silent".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        reader.push(&buf[..n]);
        let mut out = BytesMut::new();
        while let Some(msg) = reader.next_message().map_err(|e| e.to_string())? {
            for (csid, reply) in handle(msg, &mut reader, connections, index)? {
                writer
                    .write(csid, &reply, &mut out)
                    .map_err(|e| e.to_string())?;
                if reply.type_id == m::SET_CHUNK_SIZE {
                    writer
                        .set_chunk_size(m::read_u32(&reply.payload).unwrap_or(128))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
        }
    }
}

/// Records one message and returns the answers, each with its chunk
/// stream id.
fn handle(
    msg: Message,
    reader: &mut ChunkReader,
    connections: &Mutex<Vec<Connection>>,
    index: usize,
) -> Result<Vec<(u32, Message)>, String> {
    let record = |f: &mut dyn FnMut(&mut Connection)| f(&mut connections.lock().unwrap()[index]);
    let mut replies = Vec::new();
    match msg.type_id {
        m::SET_CHUNK_SIZE => {
            let size = m::read_u32(&msg.payload).ok_or("short SetChunkSize")?;
            reader.set_chunk_size(size).map_err(|e| e.to_string())?;
        }
        m::AUDIO | m::VIDEO | m::DATA_AMF0 => record(&mut |c| c.media.push(msg.clone())),
        m::COMMAND_AMF0 => {
            let values = decode_all(&msg.payload).map_err(|e| e.to_string())?;
            let name = values.first().and_then(Amf0Value::as_str).unwrap_or("");
            let txn = values.get(1).and_then(Amf0Value::as_number).unwrap_or(0.0);
            record(&mut |c| c.commands.push(name.to_owned()));
            match name {
                "connect" => {
                    let object = values.get(2).cloned();
                    record(&mut |c| c.connect = object.clone());
                    replies.push((m::CSID_CONTROL, m::window_ack_size(2_500_000)));
                    replies.push((m::CSID_CONTROL, m::set_chunk_size(4096)));
                    let result = m::command(
                        0,
                        "_result",
                        txn,
                        &[
                            Amf0Value::object([
                                ("fmsVer", Amf0Value::str("FMS/3,0,1,123")),
                                ("capabilities", Amf0Value::Number(31.0)),
                            ]),
                            Amf0Value::object([
                                ("level", Amf0Value::str("status")),
                                ("code", Amf0Value::str("NetConnection.Connect.Success")),
                                ("description", Amf0Value::str("Connection succeeded.")),
                                ("objectEncoding", Amf0Value::Number(0.0)),
                            ]),
                        ],
                    );
                    replies.push((m::CSID_COMMAND, result));
                }
                "createStream" => {
                    let result = m::command(
                        0,
                        "_result",
                        txn,
                        &[Amf0Value::Null, Amf0Value::Number(1.0)],
                    );
                    replies.push((m::CSID_COMMAND, result));
                }
                "publish" => {
                    let status = m::command(
                        msg.stream_id,
                        "onStatus",
                        0.0,
                        &[
                            Amf0Value::Null,
                            Amf0Value::object([
                                ("level", Amf0Value::str("status")),
                                ("code", Amf0Value::str("NetStream.Publish.Start")),
                                ("description", Amf0Value::str("Start publishing")),
                            ]),
                        ],
                    );
                    replies.push((m::CSID_COMMAND, status));
                }
                // releaseStream, FCPublish, FCUnpublish, deleteStream:
                // recorded, nothing to answer.
                _ => {}
            }
        }
        // Acknowledgements, window sizes, pings: nothing to record.
        _ => {}
    }
    Ok(replies)
}

/// Waits (at most `LIMIT`) for a status that satisfies `ok`.
async fn wait_for(target: &Target, what: &str, ok: impl Fn(&TargetStatus) -> bool) -> TargetStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        let status = target.status();
        if ok(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} after {LIMIT:?}; status: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn enhanced_target(sink: &Sink) -> (Target, target::TargetInput) {
    let mut config = TargetConfig::new(sink.url());
    config.enhanced = true;
    // Frames are pushed faster than real time: room for all of them.
    config.queue_frames = 10_000;
    target::spawn(config, &tokio::runtime::Handle::current())
}

/// Pushes one run (video on track 0, audio on track 1, in time order)
/// and waits until the target has sent it and gone idle.
async fn send_run(target: &Target, input: &target::TargetInput, video: &[Timed], audio: &[Timed]) {
    let config = VideoConfig::from_keyframe(&video[0].1).expect("a keyframe first");
    input.push(Output::Start(RunStart {
        video: Some((0, video[0].1.codec, config)),
        audio: Some((1, Codec::Opus, STEREO)),
        timing: Timing::SenderReports,
    }));
    let tagged = video
        .iter()
        .map(|t| (0, t))
        .chain(audio.iter().map(|t| (1, t)));
    let mut all: Vec<(usize, &Timed)> = tagged.collect();
    // Stable: at equal times video comes first, as the interleaver does.
    all.sort_by_key(|(_, (time, _))| *time);
    for (track, (time_ns, frame)) in all {
        input.push(Output::Frame {
            track,
            time_ns: *time_ns as i64,
            frame: frame.clone(),
        });
    }
    input.push(Output::End(RunEnd::Finished));
    let (video_n, audio_n) = (video.len() as u64, audio.len() as u64);
    wait_for(target, "run sent and idle", |s| {
        s.state == TargetState::Idle && s.video_frames_sent == video_n
    })
    .await;
    let status = target.status();
    assert_eq!(status.audio_frames_sent, audio_n, "{status:?}");
    assert_eq!(status.dropped_frames, 0, "{status:?}");
    assert!(status.last_error.is_none(), "{status:?}");
    assert!(status.notes.is_empty(), "{status:?}");
}

/// An E-RTMP video tag body, split into its header fields.
struct ExVideo<'a> {
    frame_type: u8,
    packet_type: u8,
    fourcc: &'a [u8],
    body: &'a [u8],
}

fn ex_video(payload: &[u8]) -> ExVideo<'_> {
    assert!(
        payload.len() >= 5,
        "E-RTMP video tag of {} bytes",
        payload.len()
    );
    assert_eq!(
        payload[0] & 0x80,
        0x80,
        "IsExHeader not set: {:#04x}",
        payload[0]
    );
    ExVideo {
        frame_type: (payload[0] >> 4) & 0x07,
        packet_type: payload[0] & 0x0f,
        fourcc: &payload[1..5],
        body: &payload[5..],
    }
}

/// The payload of the first `kind` box in an MP4 init segment; `None`
/// when it has none.
fn box_payload<'a>(init: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    let at = init.windows(4).position(|w| w == kind)?;
    let size = u32::from_be_bytes(init[at - 4..at].try_into().ok()?) as usize;
    init.get(at + 4..at - 4 + size)
}

/// The configuration record the recorder's MP4 init segment carries for
/// this video (for `vpcC`, after its FullBox version and flags).
fn mp4_record(config: &VideoConfig) -> Vec<u8> {
    let init = Fragmenter::new(Some(config.clone()), Some(AudioTrackConfig::Opus(STEREO)))
        .expect("init segment")
        .init();
    let record = match config.codec {
        Codec::H265 => box_payload(&init, b"hvcC").expect("hvcC").to_vec(),
        Codec::Av1 => box_payload(&init, b"av1C").expect("av1C").to_vec(),
        Codec::Vp9 => {
            let vpcc = box_payload(&init, b"vpcC").expect("vpcC");
            assert_eq!(vpcc[..4], [1, 0, 0, 0], "FullBox version 1, flags 0");
            vpcc[4..].to_vec()
        }
        other => panic!("{other} has no E-RTMP record here"),
    };
    match config.codec {
        // profile, level, depth/chroma/range, colour (3), no init data.
        Codec::Vp9 => assert_eq!(record.len(), 8, "VPCodecConfigurationRecord"),
        // The params builder (WebM's CodecPrivate, FLV's AVC header) agrees.
        _ => assert_eq!(config.decoder_config_record().as_ref(), Some(&record)),
    }
    record
}

/// Everything a test checks about one connection's E-RTMP video and Opus.
fn check_enhanced_connection(
    conn: &Connection,
    fourcc: FourCc,
    record: &[u8],
    video: &[Timed],
    expected_video: &[Bytes],
    audio: &[Timed],
) {
    assert!(conn.error.is_none(), "server: {:?}", conn.error);

    // connect announced E-RTMP.
    let list = conn
        .connect
        .as_ref()
        .and_then(|c| c.get("fourCcList"))
        .expect("fourCcList in connect");
    let names: Vec<&str> = match list {
        Amf0Value::StrictArray(items) => items.iter().filter_map(Amf0Value::as_str).collect(),
        other => panic!("fourCcList is not a strict array: {other:?}"),
    };
    assert_eq!(names, ["av01", "vp09", "hvc1", "avc1", "Opus", "mp4a"]);
    assert_eq!(
        conn.commands,
        [
            "connect",
            "releaseStream",
            "FCPublish",
            "createStream",
            "publish",
            "FCUnpublish",
            "deleteStream"
        ]
    );

    // onMetaData names the codecs by FourCC.
    let data = conn.of_type(m::DATA_AMF0);
    assert_eq!(data.len(), 1);
    let meta = decode_all(&data[0].payload).expect("onMetaData");
    assert_eq!(meta[1].as_str(), Some("onMetaData"));
    let number = |name: &str| meta[2].get(name).and_then(Amf0Value::as_number);
    assert_eq!(number("videocodecid"), Some(f64::from(fourcc.as_u32())));
    assert_eq!(number("audiocodecid"), Some(1_332_770_163.0), "\"Opus\"");
    let config = VideoConfig::from_keyframe(&video[0].1).unwrap();
    assert_eq!(number("width"), Some(f64::from(config.width)));
    assert_eq!(number("height"), Some(f64::from(config.height)));

    // Video: SequenceStart with the MP4 record, every frame, SequenceEnd.
    let messages = conn.of_type(m::VIDEO);
    let tags: Vec<ExVideo> = messages.iter().map(|m| ex_video(&m.payload)).collect();
    assert!(tags.iter().all(|t| t.fourcc == fourcc.0), "FourCC");
    let first = &tags[0];
    assert_eq!(
        (first.frame_type, first.packet_type),
        (1, 0),
        "SequenceStart"
    );
    assert_eq!(first.body, record, "record differs from the MP4 init's");
    let last = tags.last().unwrap();
    assert_eq!((last.packet_type, last.body.len()), (2, 0), "SequenceEnd");
    let starts = tags.iter().filter(|t| t.packet_type == 0).count();
    assert_eq!(starts, 1, "one configuration, one SequenceStart");
    // H265 without B-frames: CodedFramesX (no composition time);
    // AV1 and VP9: CodedFrames, which never carry one.
    let coded_type = if fourcc == FourCc::HEVC { 3 } else { 1 };
    let coded: Vec<(&ExVideo, &Message)> = tags
        .iter()
        .zip(&messages)
        .filter(|(t, _)| t.packet_type == coded_type)
        .map(|(t, m)| (t, *m))
        .collect();
    assert_eq!(coded.len(), video.len(), "every frame sent");
    assert_eq!(coded.len() + 2, tags.len(), "nothing else sent");
    for (n, ((tag, msg), (time_ns, frame))) in coded.iter().zip(video).enumerate() {
        let want_type = if frame.keyframe { 1 } else { 2 };
        assert_eq!(tag.frame_type, want_type, "frame {n} keyframe flag");
        let want = &expected_video[n][..];
        // Not assert_eq: a mismatch would print megabytes.
        assert!(
            tag.body == want,
            "frame {n} data differs: {} bytes starting {:02x?}, want {} starting {:02x?}",
            tag.body.len(),
            &tag.body[..tag.body.len().min(8)],
            want.len(),
            &want[..want.len().min(8)]
        );
        let want_ms = (*time_ns + 500_000) / 1_000_000;
        assert_eq!(u64::from(msg.timestamp), want_ms, "frame {n} timestamp");
    }
    assert!(
        coded
            .windows(2)
            .all(|w| w[0].1.timestamp < w[1].1.timestamp),
        "video timestamps increase"
    );
    assert!(video.iter().filter(|(_, f)| f.keyframe).count() >= 2);
    assert!(messages.iter().all(|m| m.stream_id == 1));

    // Audio: an OpusHead, then every packet as it came.
    let audio_msgs = conn.of_type(m::AUDIO);
    let head = &audio_msgs[0].payload;
    assert_eq!(&head[..5], b"\x90Opus", "audio SequenceStart");
    let opus_head = &head[5..];
    assert_eq!(opus_head.len(), 19, "OpusHead, mapping family 0");
    assert_eq!(&opus_head[..8], b"OpusHead");
    assert_eq!(opus_head[8], 1, "version");
    assert_eq!(opus_head[9], 2, "channels");
    assert_eq!(&opus_head[12..16], 48_000u32.to_le_bytes(), "input rate");
    assert_eq!(opus_head[18], 0, "mapping family");
    let packets = &audio_msgs[1..];
    assert_eq!(packets.len(), audio.len(), "every Opus packet sent");
    for (n, (msg, (_, frame))) in packets.iter().zip(audio).enumerate() {
        assert_eq!(&msg.payload[..5], b"\x91Opus", "packet {n} CodedFrames");
        assert!(
            msg.payload[5..] == frame.data[..],
            "packet {n} data differs"
        );
    }
    assert!(
        packets.windows(2).all(|w| w[0].timestamp < w[1].timestamp),
        "audio timestamps increase"
    );
}

/// One E-RTMP run of `video` + Opus through a target to the sink.
async fn passthrough(video: Vec<Timed>, fed: Vec<Timed>, fourcc: FourCc, dir: &TempDir) {
    let audio = media::opus(dir.path(), 2.0);
    let sink = Sink::start().await;
    let (target, input) = enhanced_target(&sink);
    send_run(&target, &input, &fed, &audio).await;
    let conn = sink.finished_connection().await;
    let config = VideoConfig::from_keyframe(&video[0].1).expect("keyframe");
    let record = mp4_record(&config);
    let expected: Vec<Bytes> = video.iter().map(|(_, f)| f.data.clone()).collect();
    check_enhanced_connection(&conn, fourcc, &record, &fed, &expected, &audio);
    assert_eq!(sink.connections().len(), 1, "no reconnects");
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_and_opus_pass_through_as_enhanced_rtmp() {
    let dir = TempDir::new("ertmp-h265");
    let video = media::h265(dir.path(), "320x240", 2.0, 0);
    passthrough(video.clone(), video, FourCc::HEVC, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_and_opus_pass_through_without_temporal_delimiters() {
    let dir = TempDir::new("ertmp-av1");
    let video = media::av1(dir.path(), "320x240", 2.0, 0);
    // Fed with a temporal delimiter in front of every temporal unit, as
    // encoders write them; E-RTMP (like MP4) leaves them out, so what
    // arrives is the helper's delimiter-free frames.
    let fed: Vec<Timed> = video
        .iter()
        .map(|(t, f)| {
            let mut data = vec![0x12, 0x00];
            data.extend_from_slice(&f.data);
            let frame = Frame {
                data: Bytes::from(data),
                ..f.clone()
            };
            (*t, frame)
        })
        .collect();
    passthrough(video, fed, FourCc::AV1, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_and_opus_pass_through_as_enhanced_rtmp() {
    let dir = TempDir::new("ertmp-vp9");
    let video = media::vp9(dir.path(), "320x240", 2.0, 0);
    passthrough(video.clone(), video, FourCc::VP9, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_target_keeps_h264_legacy_and_sends_opus_enhanced() {
    let dir = TempDir::new("ertmp-h264");
    let video: Vec<Timed> = h264_frames(dir.path(), 1)
        .into_iter()
        .enumerate()
        .map(|(n, f)| (n as u64 * 1_000_000_000 / 30, f))
        .collect();
    let audio = media::opus(dir.path(), 1.0);
    let sink = Sink::start().await;
    let (target, input) = enhanced_target(&sink);
    send_run(&target, &input, &video, &audio).await;
    let conn = sink.finished_connection().await;
    assert!(conn.error.is_none(), "server: {:?}", conn.error);
    assert!(
        conn.connect
            .as_ref()
            .and_then(|c| c.get("fourCcList"))
            .is_some()
    );

    let meta = decode_all(&conn.of_type(m::DATA_AMF0)[0].payload).unwrap();
    let number = |name: &str| meta[2].get(name).and_then(Amf0Value::as_number);
    assert_eq!(number("videocodecid"), Some(7.0), "legacy AVC");
    assert_eq!(number("audiocodecid"), Some(1_332_770_163.0), "\"Opus\"");

    let video_msgs = conn.of_type(m::VIDEO);
    // Legacy AVC: sequence header, then NALU packets; no ExHeader anywhere.
    assert_eq!(&video_msgs[0].payload[..2], [0x17, 0x00]);
    assert!(video_msgs.iter().all(|m| m.payload[0] & 0x80 == 0));
    assert_eq!(video_msgs.len(), video.len() + 1);
    let audio_msgs = conn.of_type(m::AUDIO);
    assert_eq!(&audio_msgs[0].payload[..13], b"\x90OpusOpusHead");
    assert_eq!(audio_msgs.len(), audio.len() + 1);
    assert!(
        audio_msgs[1..]
            .iter()
            .all(|m| m.payload.starts_with(b"\x91Opus"))
    );
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_target_refuses_vp9_naming_both_options() {
    let dir = TempDir::new("ertmp-plain-vp9");
    let video = media::vp9(dir.path(), "320x240", 0.5, 0);
    let sink = Sink::start().await;
    let (target, input) = target::spawn(
        TargetConfig::new(sink.url()),
        &tokio::runtime::Handle::current(),
    );
    let config = VideoConfig::from_keyframe(&video[0].1).expect("keyframe");
    input.push(Output::Start(RunStart {
        video: Some((0, Codec::Vp9, config)),
        audio: Some((1, Codec::Opus, STEREO)),
        timing: Timing::SenderReports,
    }));
    for (time_ns, frame) in &video {
        input.push(Output::Frame {
            track: 0,
            time_ns: *time_ns as i64,
            frame: frame.clone(),
        });
    }
    let status = wait_for(&target, "error state", |s| s.state == TargetState::Error).await;
    let error = status.last_error.expect("an error message");
    assert!(error.contains("VP9"), "{error}");
    assert!(error.contains("transcode = true"), "{error}");
    assert!(error.contains("enhanced = true"), "{error}");
    assert_eq!(status.video_frames_sent, 0);
    // Nothing was even tried: the run was refused before connecting.
    assert!(sink.connections().is_empty());
    target.stop();
}
