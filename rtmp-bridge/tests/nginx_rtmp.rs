//! Publishing to a real nginx-rtmp on loopback, over `rtmp://` and
//! `rtmps://` (nginx's stream module terminating TLS with a test CA), and
//! checking with FFmpeg the FLV that nginx recorded.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::{
    Nginx, TempDir, aac_frames, decode_errors, decoded_frames, duration, h264_frames, stream_info,
    test_pki,
};
use recorder::params::VideoConfig;
use recorder::rtp::Frame;
use rtmp_bridge::flv::{self, AvcTagger, CodecId, Metadata};
use rtmp_bridge::{PublishError, RtmpPublisher, RtmpUrl, TlsConfig};

const SECONDS: u32 = 4;

/// What a publish sent.
struct Sent {
    video_frames: usize,
    audio_frames: usize,
}

/// Publishes H264 (and AAC when given) in time order with millisecond
/// timestamps from the media clocks, as fast as the connection takes it.
async fn publish(
    url: &RtmpUrl,
    tls: Option<TlsConfig>,
    video: &[Frame],
    audio: &[Bytes],
) -> Result<Sent, PublishError> {
    let mut publisher = RtmpPublisher::connect(url, tls).await?;
    let config = VideoConfig::from_keyframe(&video[0]).expect("keyframe first");
    let asc = flv::aac_lc_audio_specific_config(48000, 2).expect("ASC");
    let has_audio = !audio.is_empty();
    publisher
        .send_metadata(&Metadata {
            width: Some(config.width),
            height: Some(config.height),
            frame_rate: Some(30.0),
            video_codec_id: Some(CodecId::Flv(flv::VIDEO_CODEC_AVC)),
            audio_codec_id: has_audio.then_some(CodecId::Flv(flv::AUDIO_CODEC_AAC)),
            audio_sample_rate: has_audio.then_some(48000),
            audio_channels: has_audio.then_some(2),
            encoder: Some("Whipcord test".into()),
            ..Default::default()
        })
        .await?;

    enum Item<'a> {
        Video(&'a Frame),
        Audio(&'a Bytes),
    }
    let first = video[0].timestamp;
    let mut items: Vec<(u32, Item)> = video
        .iter()
        .map(|f| {
            (
                ((f.timestamp - first) * 1000 + 45_000) / 90_000,
                Item::Video(f),
            )
        })
        .map(|(ms, item)| (ms as u32, item))
        .chain(audio.iter().enumerate().map(|(i, a)| {
            (
                ((i as u64 * 1024 * 1000 + 24_000) / 48_000) as u32,
                Item::Audio(a),
            )
        }))
        .collect();
    items.sort_by_key(|(ms, _)| *ms);

    if has_audio {
        publisher
            .send_audio(0, flv::aac_sequence_header(&asc))
            .await?;
    }
    let mut tagger = AvcTagger::new();
    let mut sent = Sent {
        video_frames: 0,
        audio_frames: 0,
    };
    for (ms, item) in items {
        match item {
            Item::Video(frame) => {
                let tags = tagger.push(frame);
                if let Some(header) = tags.sequence_header {
                    publisher.send_video(ms, header).await?;
                }
                if let Some(body) = tags.nalu {
                    publisher.send_video(ms, body).await?;
                    sent.video_frames += 1;
                }
            }
            Item::Audio(frame) => {
                publisher.send_audio(ms, flv::aac_raw_frame(frame)).await?;
                sent.audio_frames += 1;
            }
        }
    }
    assert!(publisher.bytes_sent() > 100_000);
    publisher.close().await?;
    Ok(sent)
}

/// The checks every recording must pass.
fn check_recording(nginx: &Nginx, flv: &Path, sent: &Sent, with_audio: bool) {
    assert!(
        flv.exists(),
        "nginx recorded nothing; its log: {}",
        nginx.error_log()
    );
    assert_eq!(
        decode_errors(flv),
        "",
        "FFmpeg reports errors decoding the FLV"
    );
    assert_eq!(
        stream_info(flv, "v:0", "codec_name,width,height"),
        "h264,640,360"
    );
    let d = duration(flv);
    assert!(
        (d - f64::from(SECONDS)).abs() <= 0.2,
        "duration {d} s, sent {SECONDS} s"
    );
    assert_eq!(
        decoded_frames(flv, "v:0"),
        sent.video_frames as u64,
        "video frames"
    );
    if with_audio {
        assert_eq!(
            stream_info(flv, "a:0", "codec_name,sample_rate,channels"),
            "aac,48000,2"
        );
        let audio = decoded_frames(flv, "a:0");
        assert_eq!(audio, sent.audio_frames as u64, "audio frames");
    } else {
        assert_eq!(
            stream_info(flv, "a", "codec_name"),
            "",
            "no audio stream expected"
        );
    }
}

#[tokio::test]
async fn h264_to_nginx_records_a_clean_flv() {
    let dir = TempDir::new("nginx-h264");
    let video = h264_frames(dir.path(), SECONDS);
    assert_eq!(video.len(), 120);
    let nginx = Nginx::start(dir.path(), None);
    let url = RtmpUrl::parse(&format!(
        "rtmp://127.0.0.1:{}/live/teststream",
        nginx.rtmp_port
    ))
    .unwrap();
    let sent = publish(&url, None, &video, &[]).await.expect("publish");
    assert_eq!(sent.video_frames, 120);
    check_recording(&nginx, &nginx.recording("teststream"), &sent, false);
}

#[tokio::test]
async fn h264_and_aac_to_nginx() {
    let dir = TempDir::new("nginx-av");
    let video = h264_frames(dir.path(), SECONDS);
    let audio = aac_frames(dir.path(), SECONDS);
    let nginx = Nginx::start(dir.path(), None);
    let url = RtmpUrl::parse(&format!(
        "rtmp://127.0.0.1:{}/live/teststream",
        nginx.rtmp_port
    ))
    .unwrap();
    let sent = publish(&url, None, &video, &audio).await.expect("publish");
    check_recording(&nginx, &nginx.recording("teststream"), &sent, true);
}

#[tokio::test]
async fn rtmps_through_nginx_stream_tls() {
    let dir = TempDir::new("nginx-tls");
    let video = h264_frames(dir.path(), SECONDS);
    let audio = aac_frames(dir.path(), SECONDS);
    let (ca, server) = test_pki(dir.path());
    let nginx = Nginx::start(dir.path(), Some(&server));
    let port = nginx.rtmps_port.expect("TLS port");
    let url = RtmpUrl::parse(&format!("rtmps://127.0.0.1:{port}/live/teststream?token=x")).unwrap();
    assert!(url.tls);
    let sent = publish(&url, Some(TlsConfig::with_ca_file(&ca)), &video, &audio)
        .await
        .expect("publish over TLS");
    // The key includes the query; nginx names the file by the stream name.
    check_recording(&nginx, &nginx.recording("teststream"), &sent, true);
}

#[tokio::test]
async fn rtmps_refuses_an_untrusted_server() {
    let dir = TempDir::new("nginx-untrusted");
    let (_, server) = test_pki(dir.path());
    let other = TempDir::new("nginx-other-ca");
    let (other_ca, _) = test_pki(other.path());
    let nginx = Nginx::start(dir.path(), Some(&server));
    let port = nginx.rtmps_port.expect("TLS port");
    let url = RtmpUrl::parse(&format!("rtmps://127.0.0.1:{port}/live/teststream")).unwrap();
    let tls = TlsConfig {
        extra_ca_file: Some(other_ca),
        skip_native_roots: true,
    };
    let err = RtmpPublisher::connect(&url, Some(tls)).await.unwrap_err();
    assert!(matches!(err, PublishError::TlsHandshake { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("certificate"), "{text}");
    assert!(
        !text.contains("teststream"),
        "the key leaked into the error: {text}"
    );
}

#[tokio::test]
async fn nobody_listening_is_a_connect_error() {
    let port = common::free_port();
    let url = RtmpUrl::parse(&format!("rtmp://127.0.0.1:{port}/live/secret")).unwrap();
    let err = RtmpPublisher::connect(&url, None).await.unwrap_err();
    assert!(matches!(err, PublishError::Connect { .. }), "{err}");
    assert!(!err.to_string().contains("secret"));
}
