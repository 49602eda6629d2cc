//! Restreaming (issue 5): a stream published over WHIP reaches a real
//! nginx-rtmp as FLV with H264 and AAC (Opus transcoded inside the
//! gateway), over `rtmp://` and `rtmps://`, survives the server going away
//! for a while, and reports its state through `/api/restreams`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use whipcord_tests::api::Api;
use whipcord_tests::client::{MediaSent, PublishOptions, Publisher, Viewer, WatchOptions};
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::nginx::{Nginx, test_pki};
use whipcord_tests::probe;
use whipcord_tests::synth::VideoCodec;

const KEY: &str = "s3cretkey";

/// The targets `GET /api/restreams` lists.
async fn targets(api: &Api) -> Result<Vec<Value>> {
    let reply = api.get("/api/restreams").await?;
    ensure!(reply.status == 200, "GET /api/restreams: {}", reply.status);
    let body = reply.json()?;
    ensure!(
        !String::from_utf8_lossy(&reply.body).contains(KEY),
        "the stream key leaked into the API: {body}"
    );
    Ok(body["restreams"]
        .as_array()
        .context("no restreams array")?
        .clone())
}

/// Polls until target `id` is in `state`, or `limit`.
async fn wait_state(api: &Api, id: u64, state: &str, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(t) = targets(api).await?.into_iter().find(|t| t["id"] == id) {
            if t["state"] == state {
                return Ok(t);
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("target {id} not {state} within {limit:?}; last: {last}")
}

async fn publish(gw: &Gateway, stream: &str, codec: VideoCodec) -> Result<Arc<Publisher>> {
    Ok(Arc::new(
        Publisher::connect(&gw.base_url(), stream, PublishOptions::media(codec)).await?,
    ))
}

/// Seconds of media a clip publisher sent (its clips run at 30 fps).
fn published_secs(sent: &MediaSent) -> f64 {
    sent.video_frames as f64 / 30.0
}

/// FLV checks of the issue: H264 + AAC 48 kHz, decodes without a word
/// from FFmpeg, as long as what was published (± 0.6 s).
async fn check_flv(path: &Path, published: f64) -> Result<probe::Probe> {
    check_flv_within(path, published, 0.6).await
}

/// [`check_flv`], allowing the FLV to start up to `late_start` seconds
/// after the publisher (a transcoder begins at the first keyframe it makes).
async fn check_flv_within(path: &Path, published: f64, late_start: f64) -> Result<probe::Probe> {
    let p = path.to_owned();
    let (errors, info) = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((probe::decode_errors(&p)?, probe::probe(&p)?))
    })
    .await??;
    ensure!(
        errors.is_empty(),
        "{} does not decode cleanly:\n{errors}",
        path.display()
    );
    ensure!(info.video_codec.as_deref() == Some("h264"), "{info:?}");
    ensure!(info.audio_codec.as_deref() == Some("aac"), "{info:?}");
    ensure!(
        info.duration >= published - late_start && info.duration <= published + 0.6,
        "FLV lasts {:.2} s, published {published:.2} s",
        info.duration
    );
    Ok(info)
}

/// Beep − flash offsets of a stamped clip in `path`, each under 50 ms.
async fn check_av_sync(path: &Path) -> Result<()> {
    let p = path.to_owned();
    let pairs = tokio::task::spawn_blocking(move || probe::av_offsets(&p)).await??;
    let offsets: Vec<(f64, f64)> = pairs.iter().map(|(f, b)| (*f, (b - f) * 1000.0)).collect();
    eprintln!("flash time, beep - flash (ms): {offsets:.1?}");
    ensure!(offsets.len() >= 5, "too few flash/beep pairs: {offsets:?}");
    for (flash, ms) in &offsets {
        ensure!(
            ms.abs() < 50.0,
            "beep {ms:.1} ms from the flash at {flash:.2} s; all: {offsets:?}"
        );
    }
    Ok(())
}

async fn restream_to(tls: bool) -> Result<()> {
    let dir = whipcord_tests::temp_dir(if tls {
        "restream-rtmps"
    } else {
        "restream-rtmp"
    });
    let (ca, files) = test_pki(&dir);
    let mut nginx = Nginx::start(&dir, tls.then_some(&files));
    let url = match nginx.rtmps_port {
        Some(port) if tls => format!("rtmps://localhost:{port}/live/{KEY}"),
        _ => format!("rtmp://127.0.0.1:{}/live/{KEY}", nginx.rtmp_port),
    };
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .arg("--restream")
            .arg(format!("cam={url}"))
            .arg("--restream-ca-file")
            .arg(ca.display().to_string()),
    )
    .await?;
    let api = Api::new(&gw);
    let listed = targets(&api).await?;
    ensure!(listed.len() == 1, "{listed:?}");
    ensure!(listed[0]["state"] == "idle", "{listed:?}");

    let p = publish(&gw, "cam", VideoCodec::H264).await?;
    let runner = p.spawn_run_media(Duration::from_secs(12));
    let live = wait_state(&api, 1, "live", Duration::from_secs(15)).await?;
    ensure!(
        live["url"].as_str().is_some_and(|u| !u.contains(KEY)),
        "{live}"
    );
    // The stream listing carries the target and the transcoder's figures,
    // for the admin panel.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let streams = api.get("/api/streams").await?.json()?;
    let cam = streams["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "cam"))
        .with_context(|| format!("no cam in {streams}"))?;
    ensure!(cam["restreams"][0]["state"] == "live", "{cam}");
    ensure!(
        cam["restreams"][0]["bitrate_bps"].as_u64() > Some(100_000),
        "{cam}"
    );
    ensure!(
        cam["transcode"]["aac_frames_out"].as_u64() > Some(0),
        "{cam}"
    );
    ensure!(
        cam["transcode"]["audio_cpu_s"].as_f64() > Some(0.0),
        "{cam}"
    );
    let sent = runner.await??;
    assert_eq!(p.delete().await?, 200, "WHIP DELETE");
    let idle = wait_state(&api, 1, "idle", Duration::from_secs(10)).await?;
    eprintln!("target after the run: {idle}");
    ensure!(idle["audio_frames_sent"].as_u64() > Some(400), "{idle}");
    ensure!(idle["video_frames_sent"].as_u64() > Some(300), "{idle}");
    ensure!(idle["last_error"].is_null(), "{idle}");
    nginx.stop();
    let flv = nginx.recording(KEY);
    check_flv(&flv, published_secs(&sent)).await?;
    check_av_sync(&flv).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restreams_h264_opus_to_nginx_as_h264_aac_in_sync() -> Result<()> {
    restream_to(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restreams_over_rtmps_trusting_a_given_ca() -> Result<()> {
    restream_to(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_restarts_and_viewers_see_no_gap() -> Result<()> {
    let dir = whipcord_tests::temp_dir("restream-restart");
    let mut nginx = Nginx::start_with(&dir, None, None, true);
    let port = nginx.rtmp_port;
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .arg("--restream")
            .arg(format!("cam=rtmp://127.0.0.1:{port}/live/{KEY}")),
    )
    .await?;
    let api = Api::new(&gw);
    let p = publish(&gw, "cam", VideoCodec::H264).await?;
    let runner = p.spawn_run_media(Duration::from_secs(22));
    let viewer = Viewer::connect(&gw.base_url(), "cam", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 20, Duration::from_secs(5)).await?;
    wait_state(&api, 1, "live", Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    nginx.stop();
    let outage = Instant::now();
    let mut saw_retrying = false;
    let mut last_packets = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let packets: u64 = viewer.snapshot().iter().map(|t| t.packets).sum();
        ensure!(
            packets > last_packets,
            "the viewer got nothing for 500 ms while the RTMP server was down"
        );
        last_packets = packets;
        let target = &targets(&api).await?[0];
        saw_retrying |= target["state"] == "retrying";
    }
    ensure!(saw_retrying, "the target never reported retrying");
    let mut nginx = Nginx::start_with(&dir, None, Some(port), true);
    let back = wait_state(&api, 1, "live", Duration::from_secs(20)).await?;
    ensure!(back["reconnects"].as_u64() >= Some(1), "{back}");
    ensure!(back["last_error"].is_string(), "{back}");
    runner.await??;
    assert_eq!(p.delete().await?, 200, "WHIP DELETE");
    wait_state(&api, 1, "idle", Duration::from_secs(10)).await?;
    for t in viewer.snapshot() {
        ensure!(t.lost() == 0, "{} lost {} packets", t.kind, t.lost());
    }
    nginx.stop();
    let files = nginx.recordings();
    ensure!(files.len() >= 2, "nginx recorded {files:?}");
    let second = files.last().context("no second FLV")?;
    let p2 = second.clone();
    let errors = tokio::task::spawn_blocking(move || probe::decode_errors(&p2)).await??;
    ensure!(
        errors.is_empty(),
        "{} does not decode:\n{errors}",
        second.display()
    );
    let info = probe::probe(second)?;
    ensure!(info.video_codec.as_deref() == Some("h264"), "{info:?}");
    ensure!(info.duration > 3.0, "second FLV too short: {info:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_needs_transcode_and_transcodes_when_asked() -> Result<()> {
    let dir = whipcord_tests::temp_dir("restream-vp8");
    let mut nginx = Nginx::start(&dir, None);
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    // A plain target, added at runtime.
    let plain = api
        .post_json(
            "/api/restreams",
            &json!({"stream": "vp8", "url": format!("rtmp://127.0.0.1:{}/live/plain", nginx.rtmp_port)}),
        )
        .await?;
    ensure!(plain.status == 201, "POST /api/restreams: {}", plain.status);
    ensure!(!String::from_utf8_lossy(&plain.body).contains("/plain"));
    let viewer_check = {
        let p = publish(&gw, "vp8", VideoCodec::Vp8).await?;
        let runner = p.spawn_run_media(Duration::from_secs(4));
        let error = wait_state(&api, 1, "error", Duration::from_secs(10)).await?;
        let message = error["last_error"].as_str().unwrap_or_default();
        ensure!(
            message.contains("VP8") && message.contains("transcode"),
            "the error should name the codec and the option: {error}"
        );
        runner.await??;
        p.delete().await?
    };
    ensure!(viewer_check == 200);
    // The same stream to a transcode target.
    let tx = api
        .post_json(
            "/api/restreams",
            &json!({"stream": "vp8", "url": format!("rtmp://127.0.0.1:{}/live/{KEY}", nginx.rtmp_port), "transcode": true}),
        )
        .await?;
    ensure!(tx.status == 201, "POST /api/restreams: {}", tx.status);
    let id = tx.json()?["id"].as_u64().context("id")?;
    let p = publish(&gw, "vp8", VideoCodec::Vp8).await?;
    let sent = p.run_media(Duration::from_secs(8)).await?;
    assert_eq!(p.delete().await?, 200);
    wait_state(&api, id, "idle", Duration::from_secs(10)).await?;
    let reply = api
        .send(
            reqwest::Method::DELETE,
            &format!("/api/restreams/{id}"),
            &[],
        )
        .await?;
    ensure!(reply.status == 204, "DELETE: {}", reply.status);
    nginx.stop();
    // The transcoder starts at the first keyframe it can make, so allow
    // for a late start.
    let info = check_flv_within(&nginx.recording(KEY), published_secs(&sent), 1.5).await?;
    eprintln!("transcoded FLV: {info:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_without_audio_gives_a_video_only_flv() -> Result<()> {
    let dir = whipcord_tests::temp_dir("restream-video-only");
    let mut nginx = Nginx::start(&dir, None);
    let gw = Gateway::start_with(GatewayOptions::default().arg("--restream").arg(format!(
        "cam=rtmp://127.0.0.1:{}/live/{KEY}",
        nginx.rtmp_port
    )))
    .await?;
    let api = Api::new(&gw);
    let options = PublishOptions {
        media: Some(whipcord_tests::clip::ClipSpec::video_only(VideoCodec::H264)),
        ..PublishOptions::default()
    };
    let p = Publisher::connect(&gw.base_url(), "cam", options).await?;
    let sent = p.run_media(Duration::from_secs(5)).await?;
    assert_eq!(p.delete().await?, 200);
    let idle = wait_state(&api, 1, "idle", Duration::from_secs(10)).await?;
    ensure!(idle["audio_frames_sent"] == 0, "{idle}");
    ensure!(idle["last_error"].is_null(), "{idle}");
    nginx.stop();
    let flv = nginx.recording(KEY);
    let p2 = flv.clone();
    let errors = tokio::task::spawn_blocking(move || probe::decode_errors(&p2)).await??;
    ensure!(errors.is_empty(), "{errors}");
    let info = probe::probe(&flv)?;
    ensure!(info.video_codec.as_deref() == Some("h264"), "{info:?}");
    ensure!(info.audio_codec.is_none(), "{info:?}");
    ensure!(
        (info.duration - published_secs(&sent)).abs() <= 0.6,
        "{info:?} vs {sent:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
