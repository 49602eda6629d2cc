//! The RTMP ingest server (`rtmp::server` driven by `rtmp::ingest`) on a
//! real socket: FFmpeg publishing H264 + AAC (accepted, and rejected), our
//! own publisher, and hostile or silent peers. Every wait is bounded.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtmp_bridge::RtmpUrl;
use rtmp_bridge::amf0::Amf0Value;
use rtmp_bridge::flv::{self, AudioCodec, AudioTag, Metadata, VideoCodec, VideoTag};
use rtmp_bridge::rtmp::chunk::{ChunkError, MAX_MESSAGE_LEN};
use rtmp_bridge::rtmp::handshake::{PACKET_LEN, client_hello};
use rtmp_bridge::rtmp::{
    IngestConfig, IngestConnection, IngestError, PublishRequest, RtmpPublisher, ServerError,
    ServerEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Bound on every wait of these tests.
const LIMIT: Duration = Duration::from_secs(30);

/// What the server saw on one connection.
#[derive(Debug, Default)]
struct Seen {
    requests: Vec<PublishRequest>,
    events: Vec<ServerEvent>,
    /// How `next_event` ended, if with an error.
    error: Option<String>,
}

/// Serves the first connection on `listener`, answering each publish
/// request with `decide` (`None`: accept; `Some(reason)`: reject).
async fn serve(
    listener: TcpListener,
    config: IngestConfig,
    decide: fn(&PublishRequest) -> Option<&'static str>,
) -> Seen {
    let (stream, _) = timeout(LIMIT, listener.accept())
        .await
        .expect("a connection within the limit")
        .expect("accept");
    let mut conn = IngestConnection::new(stream, config);
    let mut seen = Seen::default();
    let run = async {
        loop {
            match conn.next_event().await {
                Ok(Some(ServerEvent::PublishRequest(request))) => {
                    match decide(&request) {
                        None => conn.accept().await.expect("accept"),
                        Some(reason) => conn.reject(reason).await.expect("reject"),
                    }
                    seen.requests.push(request);
                }
                Ok(Some(event)) => seen.events.push(event),
                Ok(None) => break,
                Err(e) => {
                    seen.error = Some(e.to_string());
                    break;
                }
            }
        }
    };
    timeout(LIMIT, run)
        .await
        .expect("the session ends within the limit");
    seen
}

async fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
    let port = listener.local_addr().expect("address").port();
    (listener, port)
}

/// FFmpeg publishing 3 s of 640x360 30 fps H264 (with B-frames: libx264
/// veryfast) and 48 kHz AAC in real time; returns its exit status and
/// stderr.
async fn ffmpeg_publish(port: u16, key: &str) -> (std::process::ExitStatus, String) {
    let url = format!("rtmp://127.0.0.1:{port}/live/{key}");
    let child = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=f=440:sample_rate=48000"])
        .args([
            "-t", "3", "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
        ])
        .args(["-c:a", "aac", "-f", "flv"])
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg must be installed (scripts/test.sh installs it)");
    let out = timeout(LIMIT, child.wait_with_output())
        .await
        .expect("ffmpeg finishes within the limit")
        .expect("ffmpeg output");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// NAL unit types in a frame of 4-byte length-prefixed NAL units.
fn nal_types(mut data: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let Some(nal) = data.get(4..4 + len) else {
            break;
        };
        if let Some(&h) = nal.first() {
            types.push(h & 0x1f);
        }
        data = &data[4 + len..];
    }
    types
}

#[tokio::test]
async fn ffmpeg_publishes_h264_and_aac() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(serve(listener, IngestConfig::default(), |_| None));
    let (status, stderr) = ffmpeg_publish(port, "cam?token=abc").await;
    let seen = server.await.expect("server task");
    assert!(status.success(), "ffmpeg failed: {status}\n{stderr}");
    assert_eq!(seen.error, None, "the session ends cleanly");

    let [request] = seen.requests.as_slice() else {
        panic!("one publish request expected: {:?}", seen.requests);
    };
    assert_eq!(request.app, "live");
    assert_eq!(request.stream_key, "cam?token=abc");
    assert_eq!(request.stream_name(), "cam");
    assert_eq!(request.tc_url, format!("rtmp://127.0.0.1:{port}/live"));

    // Metadata first, as FFmpeg's FLV muxer writes it.
    match seen.events.first() {
        Some(ServerEvent::Data { name, values, .. }) => {
            assert_eq!(name, "onMetaData");
            let meta = values.first().expect("the metadata array");
            assert_eq!(meta.get("width"), Some(&Amf0Value::Number(640.0)));
            assert_eq!(meta.get("videocodecid"), Some(&Amf0Value::Number(7.0)));
        }
        other => panic!("metadata expected first, got {other:?}"),
    }
    assert_eq!(
        seen.events.last(),
        Some(&ServerEvent::Unpublished),
        "FFmpeg unpublishes before hanging up"
    );

    let video: Vec<(u32, &VideoTag)> = seen
        .events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Video { timestamp, tag, .. } => Some((*timestamp, tag)),
            _ => None,
        })
        .collect();
    let audio: Vec<(u32, &AudioTag)> = seen
        .events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Audio { timestamp, tag, .. } => Some((*timestamp, tag)),
            _ => None,
        })
        .collect();

    // Video: the AVC sequence header, then frames starting with an IDR.
    match video.first() {
        Some((
            0,
            VideoTag::SequenceStart {
                codec: VideoCodec::H264,
                record,
            },
        )) => assert_eq!(record.first(), Some(&1), "avcC version 1"),
        other => panic!("AVC sequence header expected first, got {other:?}"),
    }
    // FFmpeg's FLV muxer ends the stream with an AVC end of sequence.
    assert!(
        matches!(
            video.last(),
            Some((
                _,
                VideoTag::SequenceEnd {
                    codec: VideoCodec::H264
                }
            ))
        ),
        "{:?}",
        video.last()
    );
    let frames: Vec<(u32, bool, i32, &Bytes)> = video[1..video.len() - 1]
        .iter()
        .map(|(ts, tag)| match tag {
            VideoTag::Frame {
                codec: VideoCodec::H264,
                keyframe,
                composition_time,
                data,
            } => (*ts, *keyframe, *composition_time, data),
            other => panic!("an H264 frame expected, got {other:?}"),
        })
        .collect();
    assert!(frames.len() >= 80, "{} video frames in 3 s", frames.len());
    assert!(frames[0].1, "the first frame is a keyframe");
    assert!(
        nal_types(frames[0].3).contains(&5),
        "the first frame has an IDR"
    );
    let keyframes = frames.iter().filter(|f| f.1).count();
    assert!(
        (3..=5).contains(&keyframes),
        "-g 30: a keyframe a second, got {keyframes}"
    );
    for f in frames.iter().filter(|f| f.1) {
        assert!(nal_types(f.3).contains(&5), "keyframes carry IDR NAL units");
    }
    assert!(
        frames.iter().any(|f| f.2 > 0),
        "libx264 veryfast uses B-frames: some composition times are positive"
    );
    assert!(
        frames.windows(2).all(|w| w[1].0 > w[0].0),
        "video decode timestamps increase"
    );
    assert!(frames.last().map_or(0, |f| f.0) >= 2800, "3 s of video");

    // Audio: the AAC sequence header (AudioSpecificConfig: AAC-LC, 48 kHz),
    // then raw frames.
    match audio.first() {
        Some((
            0,
            AudioTag::SequenceStart {
                codec: AudioCodec::Aac,
                config,
            },
        )) => {
            assert_eq!(config.first().map(|b| b >> 3), Some(2), "AAC-LC");
            // Sampling frequency index 3: 48 kHz. (FFmpeg may append a
            // sync extension, so the config can be longer than 2 bytes.)
            let index = config.get(..2).map(|c| ((c[0] & 7) << 1) | (c[1] >> 7));
            assert_eq!(index, Some(3), "48 kHz");
        }
        other => panic!("AAC sequence header expected first, got {other:?}"),
    }
    let audio_frames: Vec<u32> = audio[1..]
        .iter()
        .map(|(ts, tag)| match tag {
            AudioTag::Frame {
                codec: AudioCodec::Aac,
                data,
            } => {
                assert!(!data.is_empty());
                *ts
            }
            other => panic!("an AAC frame expected, got {other:?}"),
        })
        .collect();
    // 3 s at 1024 samples per frame: ~140.
    assert!(
        audio_frames.len() >= 120,
        "{} audio frames",
        audio_frames.len()
    );
    assert!(
        audio_frames.windows(2).all(|w| w[1] > w[0]),
        "audio timestamps increase"
    );
}

#[tokio::test]
async fn rejected_ffmpeg_gets_no_further() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(serve(listener, IngestConfig::default(), |request| {
        (request.query() != Some("token=right")).then_some("bad stream key")
    }));
    let (status, stderr) = ffmpeg_publish(port, "cam?token=wrong").await;
    let seen = server.await.expect("server task");
    assert!(!status.success(), "ffmpeg must fail; stderr:\n{stderr}");
    assert!(
        stderr.contains("bad stream key"),
        "FFmpeg read the reason before the connection closed: {stderr}"
    );
    assert_eq!(seen.requests.len(), 1);
    assert_eq!(seen.requests[0].stream_key, "cam?token=wrong");
    assert!(seen.events.is_empty(), "no media: {:?}", seen.events);
    assert_eq!(seen.error, None);
}

/// A raw client: handshake done, nothing else sent.
async fn handshaken(port: u16) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.write_all(&client_hello(&mut rand::rng()))
        .await
        .expect("C0+C1");
    let mut s012 = vec![0u8; 1 + 2 * PACKET_LEN];
    timeout(LIMIT, tcp.read_exact(&mut s012))
        .await
        .expect("S0+S1+S2 in time")
        .expect("S0+S1+S2");
    assert_eq!(s012[0], 3);
    tcp.write_all(&s012[1..1 + PACKET_LEN]).await.expect("C2");
    tcp
}

#[tokio::test]
async fn a_huge_declared_message_is_refused_at_once() {
    // RTMP lengths are 24 bits: 16 MiB − 1 is the most a header can
    // announce, and far over what an unauthenticated peer may send
    // (64 KiB by default).
    let (listener, port) = listen().await;
    let server = tokio::spawn(serve(listener, IngestConfig::default(), |_| None));
    let mut tcp = handshaken(port).await;
    let started = Instant::now();
    let l = (MAX_MESSAGE_LEN as u32).to_be_bytes();
    tcp.write_all(&[0x04, 0, 0, 0, l[1], l[2], l[3], 9, 1, 0, 0, 0])
        .await
        .expect("chunk header");
    // Then keep sending payload while the server may still be reading.
    let junk = vec![0u8; 64 * 1024];
    for _ in 0..16 {
        if tcp.write_all(&junk).await.is_err() {
            break;
        }
    }
    let seen = server.await.expect("the server task does not panic");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused promptly, not after a timeout"
    );
    let expected = IngestError::Session(ServerError::Chunk(ChunkError::MessageOverLimit {
        len: MAX_MESSAGE_LEN,
        limit: 64 << 10,
    }));
    assert_eq!(seen.error, Some(expected.to_string()));
    assert!(seen.requests.is_empty() && seen.events.is_empty());
    // The server hung up: reading ends (EOF or reset), it does not hang.
    let mut buf = [0u8; 1024];
    let end = timeout(LIMIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the connection was closed");
}

#[tokio::test]
async fn silent_peers_time_out() {
    let config = IngestConfig {
        setup_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..IngestConfig::default()
    };
    // Connected, never says a word.
    let (listener, port) = listen().await;
    let server = tokio::spawn(serve(listener, config.clone(), |_| None));
    let _tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let seen = server.await.expect("server task");
    let error = seen.error.expect("a timeout");
    assert!(error.contains("before the publish request"), "{error}");

    // Handshake only: the setup deadline covers everything up to publish.
    let (listener, port) = listen().await;
    let server = tokio::spawn(serve(listener, config.clone(), |_| None));
    let _tcp = handshaken(port).await;
    let seen = server.await.expect("server task");
    assert!(seen.error.expect("a timeout").contains("timed out"));

    // Accepted, then silent: the idle timeout.
    let (listener, port) = listen().await;
    let server = tokio::spawn(serve(listener, config, |_| None));
    let url = RtmpUrl::parse(&format!("rtmp://127.0.0.1:{port}/live/quiet")).unwrap();
    let publisher = RtmpPublisher::connect(&url, None)
        .await
        .expect("publish accepted");
    let seen = server.await.expect("server task");
    let error = seen.error.expect("a timeout");
    assert!(error.contains("waiting for the publisher"), "{error}");
    assert_eq!(seen.requests.len(), 1);
    drop(publisher);
}

#[tokio::test]
async fn our_publisher_round_trips_through_our_server() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(serve(listener, IngestConfig::default(), |_| None));
    let url = RtmpUrl::parse(&format!("rtmp://127.0.0.1:{port}/live/cam?token=abc")).unwrap();
    let mut publisher = RtmpPublisher::connect(&url, None)
        .await
        .expect("publish accepted");
    publisher
        .send_metadata(&Metadata {
            width: Some(1280),
            height: Some(720),
            ..Default::default()
        })
        .await
        .expect("metadata");
    let record = [1u8, 0x42, 0xc0, 0x1f, 0xff, 0xe1, 0, 0];
    publisher
        .send_video(0, flv::avc_sequence_header(&record))
        .await
        .expect("sequence header");
    publisher
        .send_audio(0, flv::aac_sequence_header(&[0x11, 0x90]))
        .await
        .expect("AAC config");
    // A big keyframe (many chunks) and frames past the 24-bit timestamp
    // (extended timestamps).
    let mut au = BytesMut::new();
    au.extend_from_slice(&200_000u32.to_be_bytes());
    au.extend_from_slice(&[0x65]);
    au.resize(4 + 200_000, 0x11);
    let au = au.freeze();
    let base = 0x00ff_fff0u32;
    for i in 0..30u32 {
        let body = flv::avc_nalu_packet(&au, i % 10 == 0, 0).expect("NALUs");
        publisher
            .send_video(base + i * 33, body)
            .await
            .expect("video");
        publisher
            .send_audio(base + i * 21, flv::aac_raw_frame(&[0x21, i as u8]))
            .await
            .expect("audio");
    }
    publisher.close().await.expect("close");
    let seen = server.await.expect("server task");
    assert_eq!(seen.error, None);
    assert_eq!(seen.requests.len(), 1);
    assert_eq!(seen.requests[0].stream_key, "cam?token=abc");

    let videos: Vec<_> = seen
        .events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Video { timestamp, tag, .. } => Some((*timestamp, tag)),
            _ => None,
        })
        .collect();
    assert_eq!(videos.len(), 31);
    assert!(matches!(videos[0].1, VideoTag::SequenceStart { record: r, .. } if r[..] == record));
    for (i, (ts, tag)) in videos[1..].iter().enumerate() {
        assert_eq!(*ts, base + i as u32 * 33);
        match tag {
            VideoTag::Frame { keyframe, data, .. } => {
                assert_eq!(*keyframe, i % 10 == 0);
                assert_eq!(data.len(), 4 + 200_000);
            }
            other => panic!("{other:?}"),
        }
    }
    let audio = seen
        .events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Audio { .. }))
        .count();
    assert_eq!(audio, 31);
    assert!(matches!(&seen.events[0], ServerEvent::Data { name, .. } if name == "onMetaData"));
    assert_eq!(seen.events.last(), Some(&ServerEvent::Unpublished));
}
