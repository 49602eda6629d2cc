//! Restream targets against a real nginx-rtmp: a whole run, a destination
//! that goes away and comes back, a run that cannot be sent (VP8), and a
//! destination too slow for the stream. Every wait is bounded.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Nginx, TempDir, decode_errors, decoded_frames, duration, h264_frames, stalling_proxy,
    stream_info, video_packets,
};
use recorder::codec::Codec;
use recorder::params::{AudioParams, VideoConfig, VideoDetail};
use recorder::pipeline::{Output, RunEnd, RunStart, Timing};
use recorder::rtp::Frame;
use rtmp_bridge::RtmpUrl;
use rtmp_bridge::target::{self, Target, TargetConfig, TargetInput, TargetState, TargetStatus};

const FRAME_NS: i64 = 1_000_000_000 / 30;

fn url(port: u16) -> RtmpUrl {
    RtmpUrl::parse(&format!("rtmp://127.0.0.1:{port}/live/teststream")).unwrap()
}

fn h264_start(first: &Frame, audio: Option<Codec>) -> Output {
    let config = VideoConfig::from_keyframe(first).expect("keyframe first");
    Output::Start(RunStart {
        video: Some((0, Codec::H264, config)),
        audio: audio.map(|codec| {
            let params = AudioParams {
                channels: 2,
                sample_rate: 48000,
            };
            (1, codec, params)
        }),
        timing: Timing::SenderReports,
    })
}

/// Frame `n` of a stream that loops `clip` (each loop starts with an IDR).
fn frame_at(clip: &[Frame], n: usize) -> Output {
    Output::Frame {
        track: 0,
        time_ns: n as i64 * FRAME_NS,
        frame: clip[n % clip.len()].clone(),
    }
}

/// Pushes frames `range` of the looped clip, in real time divided by
/// `speed`, counted from `epoch` (the time of frame 0).
async fn feed(
    input: &TargetInput,
    clip: &[Frame],
    range: std::ops::Range<usize>,
    epoch: tokio::time::Instant,
    speed: u32,
) {
    for n in range {
        let at = epoch + Duration::from_nanos(n as u64 * FRAME_NS as u64) / speed;
        tokio::time::sleep_until(at).await;
        input.push(frame_at(clip, n));
    }
}

/// Every state a target passes through, sampled every 10 ms.
#[derive(Clone)]
struct StateLog(Arc<Mutex<Vec<TargetState>>>);

impl StateLog {
    fn watch(target: &Target) -> StateLog {
        let log = StateLog(Arc::new(Mutex::new(vec![target.status().state])));
        let (target, states) = (target.clone(), log.0.clone());
        tokio::spawn(async move {
            loop {
                let state = target.status().state;
                {
                    let mut states = states.lock().unwrap();
                    if states.last() != Some(&state) {
                        states.push(state);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        log
    }

    fn states(&self) -> Vec<TargetState> {
        self.0.lock().unwrap().clone()
    }

    fn saw(&self, state: TargetState) -> bool {
        self.states().contains(&state)
    }
}

/// Waits (at most `limit`) for a status that satisfies `ok`.
async fn wait_for(
    target: &Target,
    limit: Duration,
    what: &str,
    ok: impl Fn(&TargetStatus) -> bool,
) -> TargetStatus {
    let deadline = Instant::now() + limit;
    loop {
        let status = target.status();
        if ok(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} after {limit:?}; status: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the run to have gone live and then idle again.
async fn wait_idle_after_live(target: &Target, log: &StateLog) -> TargetStatus {
    wait_for(target, Duration::from_secs(20), "idle after live", |s| {
        s.state == TargetState::Idle && log.saw(TargetState::Live)
    })
    .await
}

fn assert_clean(nginx: &Nginx, flv: &std::path::Path) {
    assert!(
        flv.exists(),
        "nothing recorded; nginx: {}",
        nginx.error_log()
    );
    assert_eq!(decode_errors(flv), "", "FFmpeg errors decoding {flv:?}");
    assert_eq!(
        stream_info(flv, "v:0", "codec_name,width,height"),
        "h264,640,360"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reaches_nginx_as_a_clean_flv() {
    let dir = TempDir::new("target-happy");
    let clip = h264_frames(dir.path(), 4);
    assert_eq!(clip.len(), 120);
    let nginx = Nginx::start(dir.path(), None);
    let (target, input) = target::spawn(
        TargetConfig::new(url(nginx.rtmp_port)),
        &tokio::runtime::Handle::current(),
    );
    let log = StateLog::watch(&target);
    assert!(!target.status().url.contains("teststream"), "key leaked");

    input.push(h264_start(&clip[0], Some(Codec::Opus)));
    feed(&input, &clip, 0..120, tokio::time::Instant::now(), 2).await;
    input.push(Output::End(RunEnd::Finished));
    let status = wait_idle_after_live(&target, &log).await;

    let states = log.states();
    assert!(
        // Connecting may be too short for the 10 ms sampler to see, and
        // the final Idle (already seen by `wait_idle_after_live`) may come
        // after its last sample.
        (states.ends_with(&[TargetState::Live, TargetState::Idle])
            || states.ends_with(&[TargetState::Live]))
            && status.state == TargetState::Idle
            && !states.contains(&TargetState::Retrying)
            && !states.contains(&TargetState::Error),
        "{states:?}"
    );
    assert_eq!(status.video_frames_sent, 120);
    assert_eq!(status.audio_frames_sent, 0);
    assert_eq!(status.dropped_frames, 0);
    assert_eq!(status.reconnects, 0);
    assert!(status.bytes_sent > 100_000, "{status:?}");
    assert!(status.last_error.is_none(), "{status:?}");
    assert!(
        status.notes.iter().any(|n| n.contains("Opus")),
        "{status:?}"
    );

    let flv = nginx.recording("teststream");
    assert_clean(&nginx, &flv);
    assert_eq!(decoded_frames(&flv, "v:0"), 120);
    let d = duration(&flv);
    assert!((d - 4.0).abs() <= 0.2, "duration {d} s");
    assert_eq!(stream_info(&flv, "a", "codec_name"), "", "video only");
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_reconnects_after_the_server_restarts() {
    let dir = TempDir::new("target-reconnect");
    let clip = h264_frames(dir.path(), 4);
    let mut nginx = Nginx::start_with(dir.path(), None, None, true);
    let port = nginx.rtmp_port;
    let mut config = TargetConfig::new(url(port));
    // Short delays so the stream outlasts the outage by a few seconds.
    config.backoff_min = Duration::from_millis(250);
    config.backoff_max = Duration::from_secs(1);
    let (target, input) = target::spawn(config, &tokio::runtime::Handle::current());
    let log = StateLog::watch(&target);

    input.push(h264_start(&clip[0], None));
    let epoch = tokio::time::Instant::now();
    feed(&input, &clip, 0..90, epoch, 1).await;
    wait_for(&target, Duration::from_secs(5), "live", |s| {
        s.state == TargetState::Live
    })
    .await;
    tokio::task::block_in_place(|| nginx.stop());
    feed(&input, &clip, 90..180, epoch, 1).await;
    let retrying = wait_for(&target, Duration::from_secs(5), "retrying", |s| {
        s.state == TargetState::Retrying
    })
    .await;
    assert!(retrying.last_error.is_some(), "{retrying:?}");
    let restarted =
        tokio::task::block_in_place(|| Nginx::start_with(dir.path(), None, Some(port), true));
    feed(&input, &clip, 180..300, epoch, 1).await;
    input.push(Output::End(RunEnd::Finished));
    let status = wait_idle_after_live(&target, &log).await;

    let states = log.states();
    let retry_at = states
        .iter()
        .position(|s| *s == TargetState::Retrying)
        .expect("went retrying");
    assert!(
        states[retry_at..].contains(&TargetState::Live),
        "not live again after retrying: {states:?}"
    );
    assert!(status.reconnects >= 1, "{status:?}");
    assert!(status.dropped_frames > 0, "{status:?}");
    assert_eq!(status.video_frames_sent + status.dropped_frames, 300);

    let files = restarted.recordings();
    assert_eq!(
        files.len(),
        2,
        "{files:?}; nginx: {}",
        restarted.error_log()
    );
    let mut recorded = 0;
    for flv in &files {
        assert_clean(&restarted, flv);
        recorded += decoded_frames(flv, "v:0");
        let packets = video_packets(flv);
        assert!(
            packets.first().is_some_and(|p| p.1),
            "{flv:?} starts at a keyframe"
        );
    }
    // Frames written just before the server went away count as sent but
    // never reached the file.
    assert!(
        recorded <= status.video_frames_sent && recorded + 5 >= status.video_frames_sent,
        "recorded {recorded}, sent {}",
        status.video_frames_sent
    );
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_puts_the_target_in_error_until_the_next_run() {
    let port = common::free_port();
    let (target, input) = target::spawn(
        TargetConfig::new(url(port)),
        &tokio::runtime::Handle::current(),
    );
    let log = StateLog::watch(&target);
    let config = VideoConfig {
        codec: Codec::Vp8,
        width: 640,
        height: 360,
        detail: VideoDetail::None,
    };
    input.push(Output::Start(RunStart {
        video: Some((0, Codec::Vp8, config)),
        audio: None,
        timing: Timing::SenderReports,
    }));
    for n in 0..10 {
        input.push(Output::Frame {
            track: 0,
            time_ns: n * FRAME_NS,
            frame: Frame {
                codec: Codec::Vp8,
                timestamp: n * 3000,
                keyframe: n == 0,
                data: bytes::Bytes::from_static(&[0x10, 0, 0]),
                composition_offset: 0,
            },
        });
    }
    input.push(Output::End(RunEnd::Finished));
    let status = wait_for(&target, Duration::from_secs(5), "error", |s| {
        s.state == TargetState::Error
    })
    .await;
    let message = status.last_error.expect("an error message");
    assert!(message.contains("VP8"), "{message}");
    assert!(message.contains("transcode = true"), "{message}");
    assert!(!log.saw(TargetState::Connecting), "no connection attempted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(target.status().state, TargetState::Error, "stays in error");
    assert_eq!(target.status().video_frames_sent, 0);

    // The next run (H264) is sendable: the target tries the (dead) port.
    let dir = TempDir::new("target-vp8");
    let clip = h264_frames(dir.path(), 1);
    input.push(h264_start(&clip[0], None));
    wait_for(&target, Duration::from_secs(5), "retrying", |s| {
        s.state == TargetState::Retrying
    })
    .await;
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_destination_never_blocks_and_resumes_at_a_keyframe() {
    let dir = TempDir::new("target-overflow");
    let clip = h264_frames(dir.path(), 4);
    let nginx = Nginx::start(dir.path(), None);
    // Accepts at once, answers nothing for 3 s (connect timeout is 10 s).
    let proxy = stalling_proxy(nginx.rtmp_port, Duration::from_secs(3));
    let mut config = TargetConfig::new(url(proxy));
    config.queue_frames = 100;
    let (target, input) = target::spawn(config, &tokio::runtime::Handle::current());
    let log = StateLog::watch(&target);

    input.push(h264_start(&clip[0], None));
    wait_for(&target, Duration::from_secs(5), "connecting", |s| {
        s.state == TargetState::Connecting
    })
    .await;
    let began = Instant::now();
    for n in 0..2000 {
        let pushed = Instant::now();
        input.push(frame_at(&clip, n));
        assert!(pushed.elapsed() < Duration::from_millis(50), "push waited");
    }
    let pushing = began.elapsed();
    assert!(
        pushing < Duration::from_secs(1),
        "2000 pushes took {pushing:?}"
    );
    let status = target.status();
    assert_eq!(status.state, TargetState::Connecting, "{status:?}");
    assert_eq!(status.dropped_frames, 1900, "all but the queue's 100");

    // Once live with the queue drained, the stream resumes at the next
    // keyframe (frame 2010; 2000..2010 are dropped).
    wait_for(&target, Duration::from_secs(15), "100 frames sent", |s| {
        s.state == TargetState::Live && s.video_frames_sent == 100
    })
    .await;
    for n in 2000..2120 {
        input.push(frame_at(&clip, n));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    input.push(Output::End(RunEnd::Finished));
    let status = wait_idle_after_live(&target, &log).await;
    assert_eq!(status.video_frames_sent, 100 + 110, "{status:?}");
    assert_eq!(status.dropped_frames, 1900 + 10, "{status:?}");

    let flv = nginx.recording("teststream");
    assert_clean(&nginx, &flv);
    let packets = video_packets(&flv);
    assert_eq!(packets.len(), 210);
    assert!(packets[0].1, "starts at a keyframe");
    for pair in packets.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        if gap > 40 {
            assert!(
                pair[1].1,
                "after a {gap} ms gap at {}: not a keyframe",
                pair[1].0
            );
        }
    }
    assert!(
        packets.windows(2).any(|p| p[1].0 - p[0].0 > 1000),
        "the gap"
    );
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_unpublishes_mid_run() {
    let dir = TempDir::new("target-stop");
    let clip = h264_frames(dir.path(), 2);
    let nginx = Nginx::start(dir.path(), None);
    let (target, input) = target::spawn(
        TargetConfig::new(url(nginx.rtmp_port)),
        &tokio::runtime::Handle::current(),
    );
    let log = StateLog::watch(&target);
    input.push(h264_start(&clip[0], None));
    feed(&input, &clip, 0..60, tokio::time::Instant::now(), 2).await;
    wait_for(&target, Duration::from_secs(5), "60 frames", |s| {
        s.video_frames_sent == 60
    })
    .await;
    target.stop();
    let status = wait_idle_after_live(&target, &log).await;
    // Pushing after stop is harmless.
    input.push(frame_at(&clip, 60));
    assert_eq!(status.video_frames_sent, 60);
    let flv = nginx.recording("teststream");
    // nginx finishes the file once we hang up; the task waits for that.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_clean(&nginx, &flv);
    assert_eq!(decoded_frames(&flv, "v:0"), 60);
}
