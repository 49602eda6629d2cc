//! Streams come and go: a publisher that vanishes, a viewer that joins
//! mid-GOP, many publish/unpublish cycles.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use whipcord_tests::client::{PublishOptions, Publisher, Viewer, WatchOptions, is_keyframe_start};
use whipcord_tests::gateway::Gateway;
use whipcord_tests::synth::VideoCodec;

async fn live_streams(gw: &Gateway) -> anyhow::Result<usize> {
    let text = reqwest::get(gw.url("/api/streams")).await?.text().await?;
    let body: serde_json::Value = serde_json::from_str(&text)?;
    Ok(body["streams"].as_array().map_or(0, |a| a.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_publisher_ends_viewers_and_stream_within_35s() -> anyhow::Result<()> {
    let gw = Gateway::start().await?;
    let base = gw.url("");
    let mut child = Command::new(env!("CARGO_BIN_EXE_publish"))
        .args([base.as_str(), "doomed", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().next().and_then(|l| l.ok())
    });
    let line = tokio::time::timeout(Duration::from_secs(20), ready).await??;
    assert_eq!(line.as_deref(), Some("publishing"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut viewer = Viewer::connect(&base, "doomed", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 5, Duration::from_secs(3)).await?;
    assert_eq!(live_streams(&gw).await?, 1);

    // SIGKILL: no DELETE, no DTLS close; the gateway notices the silence.
    child.kill()?;
    child.wait()?;
    let killed_at = Instant::now();
    let ended_after = viewer.wait_ended(Duration::from_secs(35)).await?;
    assert!(ended_after <= Duration::from_secs(35));
    let deadline = killed_at + Duration::from_secs(35);
    while live_streams(&gw).await? != 0 {
        assert!(
            Instant::now() < deadline,
            "stream still listed 35 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Either the media timeout or ICE consent expiry ends it, whichever
    // comes first; both end the stream the same way.
    assert!(gw.log().contains("stream ended"), "{}", gw.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_viewer_starts_on_cached_keyframe_within_300ms() -> anyhow::Result<()> {
    let gw = Gateway::start().await?;
    let base = gw.url("");
    // Keyframe every 4 s, and the synthetic publisher ignores PLI like OBS.
    let publisher = Arc::new(Publisher::connect(&base, "gop", PublishOptions::default()).await?);
    let runner = publisher.spawn_run(Duration::from_secs(7), Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let viewer = Viewer::connect(&base, "gop", WatchOptions::av()).await?;
    let tracks = viewer.wait_tracks(2, 1, Duration::from_secs(2)).await?;
    let video = tracks.iter().find(|t| t.kind == "video").expect("video");
    let first = video.first_at.expect("video arrived");
    let wait = first.saturating_duration_since(viewer.connected_at);
    assert!(
        is_keyframe_start(VideoCodec::H264, &video.first_payload),
        "first packet is not a keyframe: {:02x?}",
        &video.first_payload[..video.first_payload.len().min(4)]
    );
    assert!(
        wait < Duration::from_millis(300),
        "first keyframe {wait:?} after connecting"
    );
    // The whole cached GOP (3 s of frames) came in one burst.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap = viewer.snapshot();
    let video = snap.iter().find(|t| t.kind == "video").expect("video");
    assert!(
        video.packets >= 80,
        "only {} video packets after the replay",
        video.packets
    );
    assert!(
        publisher.pli_count() >= 1,
        "no keyframe request reached the publisher"
    );
    runner.await??;
    Ok(())
}

fn count_entries(path: String) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_publish_cycles_leave_fds_and_threads_flat() -> anyhow::Result<()> {
    let gw = Gateway::start().await?;
    let base = gw.url("");
    let pid = gw.pid().expect("running");
    let mut baseline = None;
    for cycle in 0..100 {
        let publisher = Publisher::connect(&base, "cycle", PublishOptions::default()).await?;
        assert_eq!(publisher.delete().await?, 200, "cycle {cycle}");
        publisher.close().await?;
        if cycle == 9 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            baseline = Some((
                count_entries(format!("/proc/{pid}/fd")),
                count_entries(format!("/proc/{pid}/task")),
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, threads) = baseline.expect("measured");
    let fds_after = count_entries(format!("/proc/{pid}/fd"));
    let threads_after = count_entries(format!("/proc/{pid}/task"));
    assert!(fds_after <= fds + 2, "fds grew from {fds} to {fds_after}");
    assert!(
        threads_after <= threads,
        "threads grew from {threads} to {threads_after}"
    );
    assert_eq!(live_streams(&gw).await?, 0);
    let body = reqwest::get(gw.url("/healthz")).await?.text().await?;
    assert_eq!(body, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_sessions_and_exits_cleanly() -> anyhow::Result<()> {
    let mut gw = Gateway::start().await?;
    let base = gw.url("");
    let publisher = Arc::new(Publisher::connect(&base, "bye", PublishOptions::default()).await?);
    let runner = publisher.spawn_run(Duration::from_secs(4), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut viewer = Viewer::connect(&base, "bye", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 1, Duration::from_secs(2)).await?;
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| gw.terminate())?;
    assert!(status.success(), "gateway exited with {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    // The viewer was told (DTLS close) rather than left to time out.
    let ended = viewer.wait_ended(Duration::from_secs(10)).await?;
    assert!(ended < Duration::from_secs(10));
    assert!(gw.log().contains("server shutting down"), "{}", gw.log());
    let _ = runner.await;
    Ok(())
}
