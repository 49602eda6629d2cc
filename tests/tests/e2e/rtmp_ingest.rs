//! RTMP ingest (issue 7): FFmpeg publishes to the gateway's RTMP port the
//! way an encoder does (`rtmp://host/live` + key `{stream}?token=…`); WebRTC
//! viewers watch it with Opus audio, and the recording keeps the encoder's
//! own H264 + AAC.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use whipcord_tests::api::Api;
use whipcord_tests::client::{Viewer, WatchOptions, is_keyframe_start};
use whipcord_tests::clip::ClipSpec;
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::nginx::Nginx;
use whipcord_tests::probe;
use whipcord_tests::synth::VideoCodec;

const TOKEN: &str = "rtmp-s3cret";

/// FFmpeg publishing the flash/beep pattern live for `secs`: H264 without
/// B-frames (what browsers play smoothly) and AAC at 44.1 kHz (so the
/// Opus transcode resamples).
fn ffmpeg_publish(url: &str, secs: u32) -> Result<Child> {
    ffmpeg_publish_with(url, secs, 0)
}

/// [`ffmpeg_publish`] with `b_frames` B-frames between references (x264's
/// default is 3: what most RTMP encoders send unless told otherwise).
fn ffmpeg_publish_with(url: &str, secs: u32, b_frames: u32) -> Result<Child> {
    let clip = ClipSpec::new(VideoCodec::H264);
    let tune = if b_frames == 0 { "zerolatency" } else { "film" };
    let args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        &clip.video_source(),
        "-re",
        "-f",
        "lavfi",
        "-i",
        &ClipSpec::audio_source(),
        "-t",
        &secs.to_string(),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        tune,
        "-bf",
        &b_frames.to_string(),
        "-g",
        "60",
        "-pix_fmt",
        "yuv420p",
        "-b:v",
        "1500k",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-ar",
        "44100",
        "-f",
        "flv",
        url,
    ]
    .map(String::from)
    .to_vec();
    Command::new("ffmpeg")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning ffmpeg")
}

/// Waits for FFmpeg to exit; its status and error output.
async fn wait_exit(mut child: Child, limit: Duration) -> Result<(bool, String)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            return Ok((status.success(), err));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ffmpeg still running after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rtmp_url(gw: &Gateway, key: &str) -> String {
    format!("rtmp://{}/live/{key}", gw.rtmp_addr())
}

/// Polls the public stream list until `stream` is live.
async fn wait_live(gw: &Gateway, stream: &str, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    let client = reqwest::Client::new();
    loop {
        if let Ok(res) = client.get(gw.url("/api/streams")).send().await
            && let Ok(body) = res.bytes().await
            && let Ok(list) = serde_json::from_slice::<Value>(&body)
            && let Some(found) = list["streams"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == stream)
        {
            return Ok(found.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "{stream} not live within {limit:?}; log:\n{}",
                gw.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_publisher_is_watched_and_recorded_with_its_aac() -> Result<()> {
    let gw =
        Gateway::start_with(GatewayOptions::default().arg("--publish-token").arg(TOKEN)).await?;
    let ffmpeg = ffmpeg_publish(&rtmp_url(&gw, &format!("cam?token={TOKEN}")), 12)?;
    let listed = wait_live(&gw, "cam", Duration::from_secs(15)).await?;
    eprintln!("listed: {listed}");

    let viewer = Viewer::connect(&gw.base_url(), "cam", WatchOptions::av()).await?;
    let tracks = viewer.wait_tracks(2, 100, Duration::from_secs(10)).await?;
    let mimes: Vec<String> = tracks.iter().map(|t| t.mime.to_ascii_lowercase()).collect();
    ensure!(
        mimes.iter().any(|m| m == "video/h264") && mimes.iter().any(|m| m == "audio/opus"),
        "viewer got {mimes:?}"
    );
    let video = tracks
        .iter()
        .find(|t| t.kind == "video")
        .context("no video track")?;
    ensure!(
        is_keyframe_start(VideoCodec::H264, &video.first_payload),
        "the viewer's first video packet does not start a keyframe"
    );
    let audio = tracks
        .iter()
        .find(|t| t.kind == "audio")
        .context("no audio track")?;
    ensure!(audio.lost() == 0, "audio packets lost: {}", audio.lost());

    let (ok, err) = wait_exit(ffmpeg, Duration::from_secs(30)).await?;
    ensure!(ok, "ffmpeg failed: {err}");
    viewer.close().await?;

    let api = Api::new(&gw);
    let item = api
        .wait_item("cam", "complete", Duration::from_secs(15), |i| {
            i["state"] == "complete"
        })
        .await?;
    let name = item["file_name"].as_str().context("file_name")?;
    let path = gw.recordings_dir().join(name);
    let info = probe::probe(&path)?;
    eprintln!("recording: {info:?}");
    ensure!(info.video_codec.as_deref() == Some("h264"), "{info:?}");
    ensure!(info.audio_codec.as_deref() == Some("aac"), "{info:?}");
    ensure!(info.duration > 8.0, "{info:?}");
    let check = path.clone();
    let errors = tokio::task::spawn_blocking(move || probe::decode_errors(&check)).await??;
    ensure!(errors.trim().is_empty(), "decoding the recording: {errors}");
    let offsets =
        tokio::task::spawn_blocking(move || probe::check_av_sync(&path, 6, 40.0)).await??;
    eprintln!("flash time, beep - flash (ms): {offsets:.1?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_refuses_a_wrong_key_and_a_second_publisher() -> Result<()> {
    let gw =
        Gateway::start_with(GatewayOptions::default().arg("--publish-token").arg(TOKEN)).await?;
    let wrong = ffmpeg_publish(&rtmp_url(&gw, "cam?token=wrong"), 5)?;
    let (ok, err) = wait_exit(wrong, Duration::from_secs(20)).await?;
    ensure!(!ok, "a wrong token was accepted");
    eprintln!("ffmpeg with a wrong token: {err}");
    let log = gw.log_text();
    ensure!(
        log.lines()
            .any(|l| l.contains("RTMP publish refused") && l.contains("unauthorized")),
        "no refusal logged:\n{log}"
    );
    ensure!(!log.contains("wrong"), "the presented token was logged");

    let first = ffmpeg_publish(&rtmp_url(&gw, &format!("cam?token={TOKEN}")), 10)?;
    wait_live(&gw, "cam", Duration::from_secs(15)).await?;
    let second = ffmpeg_publish(&rtmp_url(&gw, &format!("cam?token={TOKEN}")), 5)?;
    let (ok, _) = wait_exit(second, Duration::from_secs(20)).await?;
    ensure!(!ok, "a second publisher was accepted");
    ensure!(
        gw.log_text().contains("already has a publisher"),
        "no 409-style refusal logged"
    );
    let (ok, err) = wait_exit(first, Duration::from_secs(30)).await?;
    ensure!(ok, "the first publisher failed: {err}");
    Ok(())
}

/// An RTMP handshake done by hand (C0/C1, S0/S1/S2, C2), so what follows
/// can be anything.
fn handshake(addr: SocketAddr) -> Result<TcpStream> {
    let mut socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut c1 = vec![0u8; 1536];
    c1[8..].iter_mut().for_each(|b| *b = rand::random());
    socket.write_all(&[3])?;
    socket.write_all(&c1)?;
    let mut s = vec![0u8; 1 + 1536 * 2];
    socket.read_exact(&mut s)?;
    socket.write_all(&s[1..1537])?;
    Ok(socket)
}

/// Whether the gateway closes `socket` within `limit` (reads EOF or an
/// error), reading and discarding what it sends.
fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_garbage_ends_only_that_connection() -> Result<()> {
    let gw = Gateway::start().await?;
    let ffmpeg = ffmpeg_publish(&rtmp_url(&gw, "good"), 14)?;
    wait_live(&gw, "good", Duration::from_secs(15)).await?;
    let viewer = Viewer::connect(&gw.base_url(), "good", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 20, Duration::from_secs(10)).await?;
    let addr = gw.rtmp_addr();

    // RTMP lengths are 24 bits: the largest message a header can announce
    // (16 MiB - 1; "100 MB" cannot be expressed) before any publish.
    let mut huge = handshake(addr)?;
    let mut chunk = vec![0x03, 0, 0, 0, 0xff, 0xff, 0xff, 0x14, 0, 0, 0, 0];
    chunk.extend(std::iter::repeat_n(0u8, 100));
    huge.write_all(&chunk)?;
    ensure!(
        closed_within(&mut huge, Duration::from_secs(5)),
        "a 16 MiB announced message was not refused"
    );

    // Malformed chunks after a good handshake.
    let mut malformed = handshake(addr)?;
    let junk: Vec<u8> = (0..65536).map(|_| rand::random()).collect();
    let _ = malformed.write_all(&junk);
    ensure!(
        closed_within(&mut malformed, Duration::from_secs(15)),
        "malformed chunks did not end the connection"
    );

    // No handshake at all.
    let mut raw = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    raw.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    ensure!(
        closed_within(&mut raw, Duration::from_secs(15)),
        "an HTTP request on the RTMP port was not refused"
    );

    // The good stream never noticed.
    let before = viewer.snapshot().iter().map(|t| t.packets).sum::<u64>();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = viewer.snapshot().iter().map(|t| t.packets).sum::<u64>();
    ensure!(
        after > before + 50,
        "the good stream stalled: {before} → {after}"
    );
    let (ok, err) = wait_exit(ffmpeg, Duration::from_secs(30)).await?;
    ensure!(ok, "the good publisher failed: {err}");
    let log = gw.log_text();
    ensure!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    Ok(())
}

/// Fetches the live playlist's init segment and listed segments of
/// `stream` into one file in `dir`.
async fn hls_capture(api: &Api, stream: &str, dir: &Path) -> Result<PathBuf> {
    let playlist = api.get(&format!("/hls/{stream}/index.m3u8")).await?;
    ensure!(playlist.status == 200, "playlist: {}", playlist.status);
    let text = String::from_utf8_lossy(&playlist.body).into_owned();
    let init = api.get(&format!("/hls/{stream}/init.mp4")).await?;
    ensure!(init.status == 200, "init segment: {}", init.status);
    let mut media = init.body.to_vec();
    let mut segments = 0;
    for uri in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let seg = api.get(&format!("/hls/{stream}/{uri}")).await?;
        ensure!(seg.status == 200, "{uri}: {}", seg.status);
        media.extend_from_slice(&seg.body);
        segments += 1;
    }
    ensure!(segments >= 2, "too few segments:\n{text}");
    let file = dir.join("hls.mp4");
    std::fs::write(&file, media)?;
    Ok(file)
}

/// A file that decodes without a word from FFmpeg, still holds B-frames
/// (kept as sent, not re-encoded), and whose flashes and beeps line up
/// within `limit_ms` (presentation times right).
async fn check_b_frame_copy(what: &str, path: &Path, pairs: usize, limit_ms: f64) -> Result<()> {
    let p = path.to_owned();
    let (errors, b_frames) = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((probe::decode_errors(&p)?, probe::b_frames(&p)?))
    })
    .await??;
    ensure!(
        errors.is_empty(),
        "{what} does not decode cleanly:\n{errors}"
    );
    ensure!(b_frames > 20, "{what} holds {b_frames} B-frames");
    if pairs > 0 {
        let p = path.to_owned();
        let offsets =
            tokio::task::spawn_blocking(move || probe::check_av_sync(&p, pairs, limit_ms))
                .await?
                .with_context(|| format!("A/V sync of {what}"))?;
        eprintln!("{what}: {b_frames} B-frames; flash time, beep - flash (ms): {offsets:.1?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_b_frames_are_reported_and_kept_intact() -> Result<()> {
    const API_TOKEN: &str = "rtmp-tests-api-token-0123456789";
    const KEY: &str = "bframes-out";
    let dir = whipcord_tests::temp_dir("rtmp-bframes");
    let mut nginx = Nginx::start(&dir, None);
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .arg("--api-token")
            .arg(API_TOKEN)
            .arg("--restream")
            .arg(format!(
                "bframes=rtmp://127.0.0.1:{}/live/{KEY}",
                nginx.rtmp_port
            )),
    )
    .await?;
    // x264's default: 3 B-frames with B-pyramid, what most RTMP encoders
    // send unless told otherwise.
    let ffmpeg = ffmpeg_publish_with(&rtmp_url(&gw, "bframes"), 14, 3)?;
    wait_live(&gw, "bframes", Duration::from_secs(15)).await?;

    // The operator is told, in the API and in the log.
    let admin = whipcord_tests::admin::Client::bearer(&gw, API_TOKEN);
    let deadline = Instant::now() + Duration::from_secs(10);
    let publisher = loop {
        let reply = admin.get("/api/v1/streams/bframes").await?;
        let stream: Value = serde_json::from_slice(&reply.body)?;
        let publisher = stream["publisher"].clone();
        if publisher["notice"].is_string() {
            break publisher;
        }
        ensure!(
            Instant::now() < deadline,
            "no notice on the stream: {stream}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("publisher: {publisher}");
    ensure!(publisher["protocol"] == "RTMP", "{publisher}");
    let notice = publisher["notice"].as_str().unwrap_or_default();
    ensure!(
        notice.contains("B-frames") && notice.contains("isable"),
        "the notice does not tell the operator what to do: {notice}"
    );
    let log = gw.log_text();
    ensure!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("B-frames") && l.contains("bframes")),
        "no B-frame warning in the log:\n{log}"
    );

    // HLS keeps them: the first request starts it, a few seconds later
    // the segments decode.
    let api = Api::with_token(&gw, Some(API_TOKEN));
    let first = api.get("/hls/bframes/index.m3u8").await?;
    ensure!(first.status == 200, "HLS did not start: {}", first.status);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let hls = hls_capture(&api, "bframes", &dir).await?;
    check_b_frame_copy("the HLS segments", &hls, 0, 0.0).await?;

    let (ok, err) = wait_exit(ffmpeg, Duration::from_secs(30)).await?;
    ensure!(ok, "ffmpeg failed: {err}");

    // So does the recording, with its presentation times right.
    let item = api
        .wait_item("bframes", "complete", Duration::from_secs(15), |i| {
            i["state"] == "complete"
        })
        .await?;
    let name = item["file_name"].as_str().context("file_name")?;
    let recording = gw.recordings_dir().join(name);
    check_b_frame_copy("the recording", &recording, 6, 40.0).await?;

    // And the restream: FLV composition times.
    tokio::time::sleep(Duration::from_secs(1)).await;
    nginx.stop();
    check_b_frame_copy("the restreamed FLV", &nginx.recording(KEY), 6, 50.0).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
