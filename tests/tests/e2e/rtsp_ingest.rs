//! RTSP pull (issue 7): the gateway pulls real RTSP cameras (GStreamer's
//! RTSP server) with `--pull` or `[[source]]`; WebRTC viewers watch them
//! with Opus audio, recordings keep the camera's H264/H265 + AAC in sync,
//! on-demand sources connect only while watched, a camera that goes away
//! comes back by itself, and a broken camera costs nobody else anything.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use whipcord_tests::admin::Client as Admin;
use whipcord_tests::api::Api;
use whipcord_tests::client::{Viewer, WatchOptions, is_keyframe_start};
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::probe;
use whipcord_tests::rtsp::{RtspServer, marks_clip, marks_clip_with};
use whipcord_tests::synth::VideoCodec;

const API_TOKEN: &str = "rtsp-tests-api-token-0123456789";

fn options() -> GatewayOptions {
    GatewayOptions::default().arg("--api-token").arg(API_TOKEN)
}

/// The sources as the API reports them.
async fn sources(gw: &Gateway) -> Result<Vec<Value>> {
    Admin::bearer(gw, API_TOKEN).items("/api/v1/sources").await
}

/// Waits until the source of `stream` is in `state`.
async fn wait_source(gw: &Gateway, stream: &str, state: &str, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let list = sources(gw).await?;
        if let Some(s) = list
            .iter()
            .find(|s| s["stream"] == stream && s["state"] == state)
        {
            return Ok(s.clone());
        }
        ensure!(
            Instant::now() < deadline,
            "source {stream} not {state} within {limit:?}: {list:?}\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the stream's recording and returns its finished file.
async fn finished_recording(gw: &Gateway, stream: &str) -> Result<std::path::PathBuf> {
    let admin = Admin::bearer(gw, API_TOKEN);
    let reply = admin
        .post(
            &format!("/api/v1/streams/{stream}/recording/stop"),
            &json!({}),
        )
        .await?;
    ensure!(
        reply.status < 300,
        "stopping the recording: {}",
        reply.status
    );
    let item = Api::with_token(gw, Some(API_TOKEN))
        .wait_item(stream, "complete", Duration::from_secs(15), |i| {
            i["state"] == "complete"
        })
        .await?;
    let name = item["file_name"].as_str().context("file_name")?;
    Ok(gw.recordings_dir().join(name))
}

/// Decodes every frame; returns ffprobe's view.
async fn decodes_cleanly(path: &Path) -> Result<probe::Probe> {
    let info = probe::probe(path)?;
    let check = path.to_owned();
    let errors = tokio::task::spawn_blocking(move || probe::decode_errors(&check)).await??;
    ensure!(
        errors.trim().is_empty(),
        "decoding {}: {errors}",
        path.display()
    );
    Ok(info)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_camera_is_watched_and_recorded_in_sync() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("whipcord-rtsp-{}", std::process::id()));
    let clip = marks_clip(&dir, 14)?;
    let camera = RtspServer::gstreamer(Some(&clip))?;
    let gw = Gateway::start_with(
        options()
            .arg("--pull")
            .arg(format!("cam={}", camera.url("/marks"))),
    )
    .await?;
    let source = wait_source(&gw, "cam", "live", Duration::from_secs(15)).await?;
    ensure!(
        source["codecs"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "H264")),
        "{source}"
    );

    let viewer = Viewer::connect(&gw.base_url(), "cam", WatchOptions::av()).await?;
    let tracks = viewer.wait_tracks(2, 100, Duration::from_secs(10)).await?;
    let mimes: Vec<String> = tracks.iter().map(|t| t.mime.to_ascii_lowercase()).collect();
    ensure!(
        mimes.iter().any(|m| m == "video/h264") && mimes.iter().any(|m| m == "audio/opus"),
        "viewer got {mimes:?}"
    );
    let video = tracks.iter().find(|t| t.kind == "video").context("video")?;
    ensure!(
        is_keyframe_start(VideoCodec::H264, &video.first_payload),
        "the first video packet does not start a keyframe"
    );

    // Most of the clip, then the recording is finished and checked.
    tokio::time::sleep(Duration::from_secs(8)).await;
    viewer.close().await?;
    let path = finished_recording(&gw, "cam").await?;
    let info = decodes_cleanly(&path).await?;
    eprintln!("recording: {info:?}");
    ensure!(info.video_codec.as_deref() == Some("h264"), "{info:?}");
    ensure!(info.audio_codec.as_deref() == Some("aac"), "{info:?}");
    let offsets =
        tokio::task::spawn_blocking(move || probe::check_av_sync(&path, 5, 40.0)).await??;
    eprintln!("flash time, beep - flash (ms): {offsets:.1?}");
    let log = gw.log_text();
    ensure!(
        log.lines()
            .any(|l| l.contains("recording started") && l.contains("SenderReports")),
        "the recording was not timed by the camera's sender reports:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A camera whose H264 has B-frames (RTP in decoding order, timestamps
/// going back and forth): the recording keeps every frame as sent, decodes
/// cleanly and presents each one at its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_b_frame_camera_is_recorded_intact() -> Result<()> {
    let dir = whipcord_tests::temp_dir("rtsp-bframes");
    let clip = marks_clip_with(&dir, 14, 3)?;
    let camera = RtspServer::gstreamer(Some(&clip))?;
    let gw = Gateway::start_with(
        options()
            .arg("--pull")
            .arg(format!("camb={}", camera.url("/marks"))),
    )
    .await?;
    wait_source(&gw, "camb", "live", Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let path = finished_recording(&gw, "camb").await?;
    let info = decodes_cleanly(&path).await?;
    eprintln!("recording: {info:?}");
    ensure!(info.video_codec.as_deref() == Some("h264"), "{info:?}");
    let check = path.clone();
    let b_frames = tokio::task::spawn_blocking(move || probe::b_frames(&check)).await??;
    ensure!(b_frames > 20, "the recording holds {b_frames} B-frames");
    let offsets =
        tokio::task::spawn_blocking(move || probe::check_av_sync(&path, 5, 40.0)).await??;
    eprintln!("{b_frames} B-frames; flash time, beep - flash (ms): {offsets:.1?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_h265_camera_is_watched_and_recorded() -> Result<()> {
    let camera = RtspServer::gstreamer(None)?;
    let gw = Gateway::start_with(
        options()
            .arg("--pull")
            .arg(format!("cam265={}", camera.url("/cam265"))),
    )
    .await?;
    wait_source(&gw, "cam265", "live", Duration::from_secs(15)).await?;
    let viewer = Viewer::connect(&gw.base_url(), "cam265", WatchOptions::av()).await?;
    let tracks = viewer.wait_tracks(2, 50, Duration::from_secs(10)).await?;
    let mimes: Vec<String> = tracks.iter().map(|t| t.mime.to_ascii_lowercase()).collect();
    ensure!(
        mimes.iter().any(|m| m == "video/h265") && mimes.iter().any(|m| m == "audio/opus"),
        "viewer got {mimes:?}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    viewer.close().await?;
    let path = finished_recording(&gw, "cam265").await?;
    let info = decodes_cleanly(&path).await?;
    ensure!(info.video_codec.as_deref() == Some("hevc"), "{info:?}");
    ensure!(info.audio_codec.as_deref() == Some("aac"), "{info:?}");
    ensure!(info.video_frames >= 60, "{info:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_source_connects_only_while_watched() -> Result<()> {
    let camera = RtspServer::gstreamer(None)?;
    let dir = std::env::temp_dir().join(format!(
        "whipcord-ondemand-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("whipcord.toml");
    std::fs::write(
        &config,
        format!(
            "source_linger_secs = 2\n\n[[source]]\nstream = \"door\"\nurl = \"{}\"\non_demand = true\n",
            camera.url("/cam")
        ),
    )?;
    let gw =
        Gateway::start_with(options().arg("--config").arg(config.display().to_string())).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        camera.count("CLIENT CONNECTED") == 0,
        "the camera was connected before anyone watched"
    );
    wait_source(&gw, "door", "idle", Duration::from_secs(1)).await?;

    // The first viewer's offer waits while the camera connects.
    let viewer = Viewer::connect(&gw.base_url(), "door", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 30, Duration::from_secs(15)).await?;
    camera
        .wait_count("CLIENT CONNECTED", 1, Duration::from_secs(1))
        .await?;

    let left = Instant::now();
    viewer.delete().await?;
    viewer.close().await?;
    camera
        .wait_count("CLIENT CLOSED", 1, Duration::from_secs(8))
        .await?;
    let after = left.elapsed();
    eprintln!("camera disconnected {after:?} after the last viewer left");
    ensure!(
        after >= Duration::from_millis(1500),
        "disconnected before the linger ({after:?})"
    );
    wait_source(&gw, "door", "idle", Duration::from_secs(3)).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_restart_resumes_viewers_without_reconnecting() -> Result<()> {
    let mut camera = RtspServer::gstreamer(None)?;
    let gw = Gateway::start_with(
        options()
            .arg("--pull")
            .arg(format!("cam={}", camera.url("/cam"))),
    )
    .await?;
    wait_source(&gw, "cam", "live", Duration::from_secs(15)).await?;
    let viewer = Viewer::connect(&gw.base_url(), "cam", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 50, Duration::from_secs(10)).await?;

    camera.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = viewer.snapshot().iter().map(|t| t.packets).sum::<u64>();
    camera.restart()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = viewer.snapshot().iter().map(|t| t.packets).sum::<u64>();
        if now > during + 200 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "viewer did not resume: {during} → {now} packets\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        viewer.connection_state() == webrtc::peer_connection::RTCPeerConnectionState::Connected,
        "the viewer's connection did not survive"
    );
    let source = wait_source(&gw, "cam", "live", Duration::from_secs(5)).await?;
    ensure!(source["reconnects"].as_u64() >= Some(1), "{source}");
    ensure!(source["last_error"].is_string(), "{source}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_cameras_end_only_their_own_session() -> Result<()> {
    let good = RtspServer::gstreamer(None)?;
    let modes = ["random", "payload", "ssrc", "junk"];
    let bad: Vec<RtspServer> = modes
        .iter()
        .map(|m| RtspServer::garbage(m))
        .collect::<Result<_>>()?;
    let mut opts = options()
        .arg("--pull")
        .arg(format!("good={}", good.url("/cam")));
    for (mode, camera) in modes.iter().zip(&bad) {
        opts = opts
            .arg("--pull")
            .arg(format!("bad-{mode}={}", camera.url("/x")));
    }
    let gw = Gateway::start_with(opts).await?;
    wait_source(&gw, "good", "live", Duration::from_secs(15)).await?;
    let viewer = Viewer::connect(&gw.base_url(), "good", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 30, Duration::from_secs(10)).await?;
    // Let every broken camera fail a few times.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for mode in modes {
        let list = sources(&gw).await?;
        let source = list
            .iter()
            .find(|s| s["stream"] == format!("bad-{mode}"))
            .context("source missing")?;
        ensure!(
            source["last_error"].is_string() && source["state"] != "live",
            "bad-{mode}: {source}"
        );
    }
    let before = viewer.snapshot().iter().map(|t| t.packets).sum::<u64>();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = viewer.snapshot().iter().map(|t| t.packets).sum::<u64>();
    ensure!(after > before + 50, "the good camera's viewer stalled");
    let log = gw.log_text();
    ensure!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g711_camera_passes_through_to_viewers_that_take_it() -> Result<()> {
    let camera = RtspServer::gstreamer(None)?;
    let gw = Gateway::start_with(
        options()
            .arg("--pull")
            .arg(format!("g711={}", camera.url("/camg711"))),
    )
    .await?;
    wait_source(&gw, "g711", "live", Duration::from_secs(15)).await?;
    // webrtc-rs offers PCMU like a browser: it gets the camera's own audio.
    let viewer = Viewer::connect(&gw.base_url(), "g711", WatchOptions::av()).await?;
    let tracks = viewer.wait_tracks(2, 50, Duration::from_secs(10)).await?;
    let mimes: Vec<String> = tracks.iter().map(|t| t.mime.to_ascii_lowercase()).collect();
    ensure!(
        mimes.iter().any(|m| m == "video/h264") && mimes.iter().any(|m| m == "audio/pcmu"),
        "viewer got {mimes:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    viewer.close().await?;
    // Recordings cannot hold G.711: they take the Opus transcode.
    let path = finished_recording(&gw, "g711").await?;
    let info = decodes_cleanly(&path).await?;
    ensure!(info.video_codec.as_deref() == Some("h264"), "{info:?}");
    ensure!(info.audio_codec.as_deref() == Some("opus"), "{info:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_credentials_never_show() -> Result<()> {
    const GOOD: &str = "s3cret-pass";
    const WRONG: &str = "wr0ng-pass";
    let camera = RtspServer::gstreamer_with_auth("viewer", GOOD)?;
    let url = |password: &str| format!("rtsp://viewer:{password}@127.0.0.1:{}/cam", camera.port);
    let gw = Gateway::start_with(
        options()
            .arg("--pull")
            .arg(format!("cam={}", url(GOOD)))
            .arg("--pull")
            .arg(format!("locked={}", url(WRONG))),
    )
    .await?;
    wait_source(&gw, "cam", "live", Duration::from_secs(15)).await?;
    let locked = wait_source(&gw, "locked", "retrying", Duration::from_secs(15)).await?;
    eprintln!("refused source: {locked}");
    ensure!(locked["last_error"].is_string(), "{locked}");
    let listing = serde_json::to_string(&sources(&gw).await?)?;
    let log = gw.log_text();
    for secret in [GOOD, WRONG] {
        ensure!(
            !listing.contains(secret),
            "the API shows a password: {listing}"
        );
        ensure!(!log.contains(secret), "the log shows a password:\n{log}");
    }
    ensure!(listing.contains("rtsp://127.0.0.1:"), "{listing}");
    Ok(())
}

/// Cameras added over the API: pulled at once with their credentials,
/// shown without them, kept across a restart, removed again (the stream
/// ends, the camera gets its TEARDOWN); bad requests get clear 4xx answers
/// and a configured source cannot be removed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_added_and_removed_over_the_api() -> Result<()> {
    const PASSWORD: &str = "api-s3cret-pass";
    let camera = RtspServer::gstreamer_with_auth("viewer", PASSWORD)?;
    let url = format!("rtsp://viewer:{PASSWORD}@127.0.0.1:{}/cam", camera.port);
    let mut gw =
        Gateway::start_with(options().arg("--pull").arg(format!("configured={url}"))).await?;
    let admin = Admin::bearer(&gw, API_TOKEN);
    let added = admin
        .post(
            "/api/v1/sources",
            &json!({"stream": "door", "url": url, "transport": "tcp"}),
        )
        .await?;
    ensure!(added.status == 201, "adding: {}", added.status);
    let body = String::from_utf8_lossy(&added.body).into_owned();
    ensure!(
        !body.contains(PASSWORD),
        "the answer shows the password: {body}"
    );
    ensure!(body.contains("rtsp://127.0.0.1:"), "{body}");
    wait_source(&gw, "door", "live", Duration::from_secs(15)).await?;
    let viewer = Viewer::connect(&gw.base_url(), "door", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 30, Duration::from_secs(10)).await?;
    viewer.close().await?;

    for (request, status) in [
        (json!({"stream": "door", "url": url}), 409),
        (
            json!({"stream": "tls", "url": "rtsps://127.0.0.1/cam"}),
            400,
        ),
        (
            json!({"stream": "odd", "url": url, "transport": "pigeon"}),
            400,
        ),
        (json!({"stream": "../up", "url": url}), 400),
        (json!({"stream": "nourl", "url": "not a url"}), 400),
    ] {
        let reply = admin.post("/api/v1/sources", &request).await?;
        ensure!(
            reply.status == status,
            "{request}: {} (wanted {status}): {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    let configured = admin.delete("/api/v1/sources/configured").await?;
    ensure!(
        configured.status == 409,
        "configured: {}",
        configured.status
    );

    // Kept across a restart, credentials included.
    gw.terminate()?;
    gw.restart().await?;
    wait_source(&gw, "door", "live", Duration::from_secs(15)).await?;

    let closed_before = camera.count("CLIENT CLOSED");
    let removed = admin.delete("/api/v1/sources/door").await?;
    ensure!(removed.status == 204, "removing: {}", removed.status);
    ensure!(
        sources(&gw).await?.iter().all(|s| s["stream"] != "door"),
        "still listed"
    );
    camera
        .wait_count("CLIENT CLOSED", closed_before + 1, Duration::from_secs(10))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.stream("door").await?.is_some() {
        ensure!(Instant::now() < deadline, "the stream outlived its source");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = admin.delete("/api/v1/sources/door").await?;
    ensure!(again.status == 404, "removing twice: {}", again.status);
    let log = gw.log_text();
    ensure!(
        !log.contains(PASSWORD),
        "the log shows the password:\n{log}"
    );
    Ok(())
}
