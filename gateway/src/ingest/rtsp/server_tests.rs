//! The client against a real RTSP server: GStreamer's, from
//! `tests/rtsp/rtsp_server.py`. Ignored by default (it needs Debian's
//! GStreamer packages); run with
//! `cargo test -p gateway rtsp::server_tests -- --ignored --test-threads 1`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use recorder::codec::{Codec, MediaKind};
use retina::client::SessionGroup;

use super::pump::{self, MediaSink, Progress};
use super::session::{self, SessionError, TransportPlan};
use super::source_url::SourceUrl;
use super::status::{SourceState, SourceStatus, StatusCell};
use crate::ingest::decoder_config::split_nals;
use crate::ingest::feed::{AudioSetup, FeedError, VideoSetup};
use crate::stream_name::StreamName;

/// The server, stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(credentials: Option<(&str, &str)>) -> Server {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/rtsp/rtsp_server.py");
        let mut command = Command::new("/usr/bin/python3");
        command.arg(script).arg(port.to_string());
        if let Some((user, pass)) = credentials {
            command.arg(user).arg(pass);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        assert!(line.starts_with("READY"), "server said {line:?}");
        Server { child, port }
    }

    fn url(&self, userinfo: &str, path: &str) -> SourceUrl {
        SourceUrl::parse(&format!("rtsp://{userinfo}127.0.0.1:{}{path}", self.port)).expect("valid")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records what a Feed would be given.
#[derive(Default)]
struct Recorded {
    video_setups: Vec<VideoSetup>,
    audio_setups: Vec<AudioSetup>,
    /// (pts_ns, keyframe, data)
    video: Vec<(i64, bool, Vec<u8>)>,
    audio: Vec<(i64, usize)>,
    reports: Vec<(MediaKind, u64, i64)>,
}

impl MediaSink for Recorded {
    fn set_video(&mut self, setup: VideoSetup) {
        self.video_setups.push(setup);
    }

    fn set_audio(&mut self, setup: AudioSetup) -> Result<(), FeedError> {
        self.audio_setups.push(setup);
        Ok(())
    }

    async fn video(
        &mut self,
        _dts_ns: i64,
        pts_ns: i64,
        keyframe: bool,
        data: &[u8],
    ) -> Result<(), FeedError> {
        self.video.push((pts_ns, keyframe, data.to_vec()));
        Ok(())
    }

    async fn audio(&mut self, pts_ns: i64, data: &[u8]) -> Result<(), FeedError> {
        self.audio.push((pts_ns, data.len()));
        Ok(())
    }

    async fn source_report(
        &mut self,
        kind: MediaKind,
        ntp_time: u64,
        source_ns: i64,
    ) -> Result<(), FeedError> {
        self.reports.push((kind, ntp_time, source_ns));
        Ok(())
    }
}

fn status() -> StatusCell {
    StatusCell::new(SourceStatus {
        stream: "cam".into(),
        url: String::new(),
        transport: "tcp",
        on_demand: false,
        state: SourceState::Connecting,
        last_error: None,
        connected_s: None,
        reconnects: 0,
        codecs: Vec::new(),
        from_config: true,
    })
}

/// Plays `url` for `secs` and returns what came.
async fn play(
    url: &SourceUrl,
    plan: TransportPlan,
    secs: u64,
) -> Result<(Recorded, Vec<String>, bool), SessionError> {
    let group = Arc::new(SessionGroup::default());
    let stream = StreamName::parse("cam").expect("valid");
    let mut playing = session::open(url, plan, &group, &stream).await?;
    let codecs = playing.codecs();
    let udp = playing.udp;
    let mut sink = Recorded::default();
    let status = status();
    let mut progress = Progress::default();
    let run = pump::run(
        &mut playing,
        &mut sink,
        url,
        &stream,
        &status,
        &mut progress,
    );
    if let Ok(error) = tokio::time::timeout(Duration::from_secs(secs), run).await {
        return Err(error);
    }
    assert_eq!(status.snapshot().state, SourceState::Live);
    drop(playing);
    let _ = tokio::time::timeout(Duration::from_secs(2), group.await_teardown()).await;
    Ok((sink, codecs, udp))
}

fn check_video(recorded: &Recorded, codec: Codec) {
    let setup = recorded.video_setups.first().expect("video set up");
    assert_eq!(setup.codec, codec);
    assert_eq!(setup.parameter_sets.length_size, 4);
    assert!(setup.parameter_sets.nals.len() >= 2, "SPS and PPS");
    assert!(recorded.video.len() > 60, "{} frames", recorded.video.len());
    assert!(recorded.video.iter().any(|(_, key, _)| *key));
    for (_, _, data) in &recorded.video {
        let total: usize = split_nals(data, 4).map(|nal| nal.len() + 4).sum();
        assert_eq!(total, data.len(), "4-byte length-prefixed NAL units");
    }
    // 30 fps: about 33 ms apart.
    let (first, last) = (
        recorded.video[0].0,
        recorded.video[recorded.video.len() - 1].0,
    );
    let per_frame = (last - first) / (recorded.video.len() as i64 - 1);
    assert!(
        (25_000_000..45_000_000).contains(&per_frame),
        "{per_frame} ns per frame"
    );
}

#[tokio::test]
#[ignore = "needs GStreamer's RTSP server (tests/rtsp/rtsp_server.py)"]
async fn h264_and_aac_over_tcp_and_udp() {
    let server = Server::start(None);
    for plan in [
        TransportPlan::Tcp,
        TransportPlan::Udp,
        TransportPlan::UdpThenTcp,
    ] {
        let (recorded, codecs, udp) = play(&server.url("", "/cam"), plan, 6)
            .await
            .unwrap_or_else(|err| panic!("{plan:?}: {err}"));
        assert_eq!(udp, plan != TransportPlan::Tcp);
        assert_eq!(codecs, ["H264", "AAC"]);
        check_video(&recorded, Codec::H264);
        assert!(
            matches!(recorded.audio_setups.as_slice(), [AudioSetup::Aac { config }] if config.len() >= 2)
        );
        assert!(
            recorded.audio.len() > 100,
            "{} AAC frames",
            recorded.audio.len()
        );
        // GStreamer sends sender reports every few seconds, for both.
        assert!(
            recorded.reports.iter().any(|r| r.0 == MediaKind::Video),
            "{plan:?}"
        );
        assert!(
            recorded.reports.iter().any(|r| r.0 == MediaKind::Audio),
            "{plan:?}"
        );
        // A report's time lies among its track's frames.
        let (_, _, video_report_ns) = recorded
            .reports
            .iter()
            .find(|r| r.0 == MediaKind::Video)
            .expect("video report");
        let last_video = recorded.video.last().expect("frames").0;
        assert!(
            (-1_000_000_000..=last_video + 1_000_000_000).contains(video_report_ns),
            "report at {video_report_ns}, last frame at {last_video}"
        );
    }
}

#[tokio::test]
#[ignore = "needs GStreamer's RTSP server (tests/rtsp/rtsp_server.py)"]
async fn h265_g711_and_b_frames() {
    let server = Server::start(None);
    let (recorded, codecs, _) = play(&server.url("", "/cam265"), TransportPlan::Tcp, 6)
        .await
        .expect("h265");
    assert_eq!(codecs, ["H265", "AAC"]);
    check_video(&recorded, Codec::H265);
    assert!(
        recorded.video_setups[0].parameter_sets.nals.len() >= 3,
        "VPS, SPS, PPS"
    );

    let (recorded, codecs, _) = play(&server.url("", "/camg711"), TransportPlan::Tcp, 4)
        .await
        .expect("g711");
    assert_eq!(codecs, ["H264", "PCMU"]);
    assert!(matches!(
        recorded.audio_setups.as_slice(),
        [AudioSetup::G711u]
    ));
    assert!(recorded.audio.len() > 20);

    let (recorded, _, _) = play(&server.url("", "/camb"), TransportPlan::Tcp, 4)
        .await
        .expect("b-frames");
    let backwards = recorded
        .video
        .windows(2)
        .filter(|w| w[1].0 < w[0].0)
        .count();
    assert!(
        backwards > 0,
        "B-frames show as presentation times going back"
    );
}

#[tokio::test]
#[ignore = "needs GStreamer's RTSP server (tests/rtsp/rtsp_server.py)"]
async fn digest_authentication() {
    let server = Server::start(Some(("admin", "s3cr@t pass")));
    let (recorded, _, _) = play(
        &server.url("admin:s3cr%40t%20pass@", "/cam"),
        TransportPlan::Tcp,
        3,
    )
    .await
    .expect("the right password plays");
    assert!(!recorded.video.is_empty());
    let wrong = play(
        &server.url("admin:nope1234@", "/cam"),
        TransportPlan::Tcp,
        3,
    )
    .await;
    assert_eq!(wrong.err(), Some(SessionError::Unauthorized));
    let none = play(&server.url("", "/cam"), TransportPlan::Tcp, 3).await;
    assert_eq!(none.err(), Some(SessionError::CredentialsNeeded));
}

#[tokio::test]
#[ignore = "needs GStreamer's RTSP server (tests/rtsp/rtsp_server.py)"]
async fn a_missing_path_is_one_line() {
    let server = Server::start(None);
    let err = play(&server.url("", "/nothing"), TransportPlan::Tcp, 3)
        .await
        .err()
        .expect("404");
    let text = err.to_string();
    assert!(text.starts_with("404"), "{text}");
    assert!(!text.contains('\n'));
}
