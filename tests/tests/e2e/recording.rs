//! Recording (issue 3): real, decodable media from a publisher, recorded by
//! the real gateway, checked with FFmpeg — and the recordings API.
//!
//! The contract: every stream is recorded by default (`--record`), into
//! `{data_dir}/recordings/{stream}-{YYYYMMDDTHHMMSSZ}.{mp4|webm}`;
//! `GET /api/recordings` lists them newest first; `GET /recordings/{id}`
//! serves a file (with ranges); `DELETE /api/recordings/{id}` removes one;
//! `POST /api/streams/{name}/recording/{start|stop}` controls recording at
//! runtime; `--api-token` guards all of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use whipcord_tests::api::Api;
use whipcord_tests::client::{
    MediaSent, PublishOptions, Publisher, Viewer, WatchOptions, is_keyframe_start,
};
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::probe::{self, Probe};
use whipcord_tests::synth::VideoCodec;

// ---------------------------------------------------------------------------
// Helpers

fn state(item: &Value) -> &str {
    item["state"].as_str().unwrap_or_default()
}

/// The file a catalog item names, under the gateway's recordings folder.
fn file_of(gw: &Gateway, item: &Value) -> Result<PathBuf> {
    let name = item["file_name"]
        .as_str()
        .with_context(|| format!("no file_name: {item}"))?;
    ensure!(
        !name.contains('/') && !name.contains(".."),
        "odd file name {name}"
    );
    Ok(gw.recordings_dir().join(name))
}

/// `{stream}-{YYYYMMDDTHHMMSSZ}.{ext}`
fn check_file_name(name: &str, stream: &str, ext: &str) -> Result<()> {
    let stamp = name
        .strip_prefix(&format!("{stream}-"))
        .and_then(|rest| rest.strip_suffix(&format!(".{ext}")))
        .with_context(|| format!("{name} is not {stream}-<stamp>.{ext}"))?;
    let b = stamp.as_bytes();
    let ok = b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z';
    ensure!(ok, "{name}: timestamp {stamp} is not YYYYMMDDTHHMMSSZ");
    Ok(())
}

/// Connects a clip publisher and waits until it is up.
async fn publisher(gw: &Gateway, stream: &str, options: PublishOptions) -> Result<Arc<Publisher>> {
    Ok(Arc::new(
        Publisher::connect(&gw.base_url(), stream, options).await?,
    ))
}

/// Publishes `options`' clip for `secs`, then unpublishes (WHIP DELETE).
async fn publish_for(
    gw: &Gateway,
    stream: &str,
    options: PublishOptions,
    secs: u64,
) -> Result<(Arc<Publisher>, MediaSent)> {
    let p = publisher(gw, stream, options).await?;
    let sent = tokio::time::timeout(
        Duration::from_secs(secs + 10),
        p.run_media(Duration::from_secs(secs)),
    )
    .await
    .context("publisher fell far behind")??;
    assert_eq!(p.delete().await?, 200, "WHIP DELETE");
    Ok((p, sent))
}

fn codec_name(codec: VideoCodec) -> &'static str {
    match codec {
        VideoCodec::H264 => "H264",
        VideoCodec::Vp8 => "VP8",
        VideoCodec::Vp9 => "VP9",
        VideoCodec::Av1 => "AV1",
    }
}

/// Checks a finished recording: catalog entry, file name, and that FFmpeg
/// decodes it cleanly with the expected length and frame count.
async fn check_recording(
    gw: &Gateway,
    item: &Value,
    stream: &str,
    codec: VideoCodec,
    container: &str,
    sent: &MediaSent,
    seconds: f64,
) -> Result<Probe> {
    assert_eq!(item["stream"], stream, "{item}");
    assert_eq!(item["container"], container, "{item}");
    assert!(
        item["video_codec"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case(codec_name(codec))),
        "{item}"
    );
    assert!(
        item["audio_codec"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("opus")),
        "{item}"
    );
    assert_eq!(item["width"], 640, "{item}");
    assert_eq!(item["height"], 360, "{item}");
    assert!(item["id"].as_u64().is_some(), "{item}");
    assert!(item["started_at"].as_str().is_some(), "{item}");
    assert!(item["ended_at"].as_str().is_some(), "{item}");
    let duration_ms = item["duration_ms"].as_u64().context("duration_ms")?;
    assert!(
        (duration_ms as f64 - seconds * 1000.0).abs() < 500.0,
        "catalog duration {duration_ms} ms for {seconds} s: {item}"
    );
    let path = file_of(gw, item)?;
    check_file_name(
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default(),
        stream,
        container,
    )?;
    let len = std::fs::metadata(&path)
        .with_context(|| format!("{} missing", path.display()))?
        .len();
    assert_eq!(item["size_bytes"], len, "{item}");
    let errors = tokio::task::spawn_blocking({
        let path = path.clone();
        move || probe::decode_errors(&path)
    })
    .await??;
    assert!(
        errors.is_empty(),
        "{} decodes with errors:\n{errors}",
        path.display()
    );
    let info = tokio::task::spawn_blocking({
        let path = path.clone();
        move || probe::probe(&path)
    })
    .await??;
    assert_eq!(
        info.video_codec.as_deref(),
        Some(codec.name()),
        "{}: {info:?}",
        path.display()
    );
    assert_eq!(info.audio_codec.as_deref(), Some("opus"), "{info:?}");
    assert_eq!((info.width, info.height), (640, 360), "{info:?}");
    assert!(
        (info.duration - seconds).abs() <= 0.3,
        "duration {} s, want {seconds} ± 0.3: {info:?}",
        info.duration
    );
    let want = (sent.video_frames as f64 * 0.98).floor() as u64;
    assert!(
        info.video_frames >= want,
        "{} video frames decoded of {} sent: {info:?}",
        info.video_frames,
        sent.video_frames
    );
    Ok(info)
}

async fn records_clip(codec: VideoCodec, container: &str) -> Result<()> {
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    let stream = format!("rec-{}", codec.name());
    let (_p, sent) = publish_for(&gw, &stream, PublishOptions::media(codec), 10).await?;
    assert_eq!(sent.video_frames, 300, "{sent:?}");
    assert_eq!(sent.audio_packets, 500, "{sent:?}");
    let item = api
        .wait_item(&stream, "complete", Duration::from_secs(3), |i| {
            state(i) == "complete"
        })
        .await?;
    check_recording(&gw, &item, &stream, codec, container, &sent, 10.0).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The publisher itself (no recording needed): real media reaches a viewer.

async fn clip_reaches_viewer(codec: VideoCodec) -> Result<()> {
    let gw = Gateway::start().await?;
    let p = publisher(&gw, "clip", PublishOptions::media(codec)).await?;
    let runner = p.spawn_run_media(Duration::from_secs(4));
    let viewer = Viewer::connect(&gw.base_url(), "clip", WatchOptions::av()).await?;
    let tracks = viewer.wait_tracks(2, 20, Duration::from_secs(3)).await?;
    let video = tracks
        .iter()
        .find(|t| t.kind == "video")
        .context("no video track")?;
    assert!(
        is_keyframe_start(codec, &video.first_payload),
        "first video packet does not start a keyframe: {:02x?}",
        &video.first_payload[..video.first_payload.len().min(8)]
    );
    let sent = runner.await??;
    assert_eq!(sent.video_frames, 120, "{sent:?}");
    assert_eq!(sent.audio_packets, 200, "{sent:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in viewer.snapshot() {
        assert_eq!(t.lost(), 0, "{} lost packets on loopback", t.kind);
        let want = if t.kind == "video" {
            sent.video_rtp_packets
        } else {
            sent.audio_rtp_packets
        };
        // The viewer joined a little late, after the first keyframe.
        assert!(
            t.packets > want / 2 && t.packets <= want,
            "{}: {} packets of {want}",
            t.kind,
            t.packets
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_clip_reaches_a_viewer() -> Result<()> {
    clip_reaches_viewer(VideoCodec::H264).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_clip_reaches_a_viewer() -> Result<()> {
    clip_reaches_viewer(VideoCodec::Vp9).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_clip_reaches_a_viewer() -> Result<()> {
    clip_reaches_viewer(VideoCodec::Av1).await
}

// ---------------------------------------------------------------------------
// (a)–(d): each codec in its container, complete and decodable.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_opus_records_to_mp4() -> Result<()> {
    records_clip(VideoCodec::H264, "mp4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_opus_records_to_webm() -> Result<()> {
    records_clip(VideoCodec::Vp8, "webm").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_opus_records_to_webm() -> Result<()> {
    records_clip(VideoCodec::Vp9, "webm").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_opus_records_to_mp4() -> Result<()> {
    records_clip(VideoCodec::Av1, "mp4").await
}

// ---------------------------------------------------------------------------
// (e) A/V sync from Sender Reports, at the start and a minute in.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_keeps_audio_and_video_in_sync_for_a_minute() -> Result<()> {
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    let (_p, sent) = publish_for(&gw, "sync", PublishOptions::media(VideoCodec::H264), 63).await?;
    assert!(sent.loops >= 6, "{sent:?}");
    let item = api
        .wait_item("sync", "complete", Duration::from_secs(3), |i| {
            state(i) == "complete"
        })
        .await?;
    // The timeline came from the publisher's sender reports, not from
    // arrival times (which would hide clock mapping mistakes).
    let log = gw.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("recording started") && l.contains("SenderReports")),
        "recording not timed by sender reports:\n{log}"
    );
    let path = file_of(&gw, &item)?;
    let pairs = tokio::task::spawn_blocking(move || probe::av_offsets(&path)).await??;
    let offsets: Vec<(f64, f64)> = pairs.iter().map(|(f, b)| (*f, (b - f) * 1000.0)).collect();
    eprintln!("flash time, beep - flash (ms): {offsets:.1?}");
    let early: Vec<_> = offsets.iter().take(3).collect();
    let late: Vec<_> = offsets.iter().filter(|(f, _)| *f >= 60.0).collect();
    assert_eq!(early.len(), 3, "too few flash/beep pairs: {offsets:?}");
    assert!(
        !late.is_empty(),
        "no flash/beep pair after 60 s: {offsets:?}"
    );
    for (flash, ms) in early.iter().chain(&late) {
        assert!(
            ms.abs() < 40.0,
            "beep {ms:.1} ms from the flash at {flash:.2} s; all: {offsets:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// (f) A crash mid-recording leaves a playable, recovered file.

async fn survives_kill_9(codec: VideoCodec, container: &str) -> Result<()> {
    let mut gw = Gateway::start().await?;
    let p = publisher(&gw, "crash", PublishOptions::media(codec)).await?;
    let runner = p.spawn_run_media(Duration::from_secs(20));
    let api = Api::new(&gw);
    api.wait_item("crash", "recording", Duration::from_secs(3), |i| {
        state(i) == "recording"
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    gw.kill9()?;
    runner.abort();
    let _ = runner.await;
    drop(p);
    gw.restart().await?;
    let item = api
        .wait_item("crash", "recovered", Duration::from_secs(10), |i| {
            state(i) == "recovered"
        })
        .await?;
    assert_eq!(item["container"], container, "{item}");
    let path = file_of(&gw, &item)?;
    let errors = tokio::task::spawn_blocking({
        let path = path.clone();
        move || probe::decode_errors(&path)
    })
    .await??;
    assert!(errors.is_empty(), "recovered file has errors:\n{errors}");
    let size = std::fs::metadata(&path)?.len();
    assert_eq!(item["size_bytes"], size, "{item}");
    let info = tokio::task::spawn_blocking(move || probe::probe(&path)).await??;
    assert!(info.duration >= 6.0, "recovered only {info:?}");
    assert_eq!(info.video_codec.as_deref(), Some(codec.name()), "{info:?}");
    // The catalog's duration is the repaired file's.
    let catalog_ms = item["duration_ms"].as_f64().context("duration_ms")?;
    assert!(
        (catalog_ms / 1000.0 - info.duration).abs() < 0.5,
        "catalog says {catalog_ms} ms, the file {info:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_survives_kill_9_and_is_recovered() -> Result<()> {
    survives_kill_9(VideoCodec::H264, "mp4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webm_recording_survives_kill_9_and_is_recovered() -> Result<()> {
    survives_kill_9(VideoCodec::Vp8, "webm").await
}

// ---------------------------------------------------------------------------
// (g) Loss the NACKs cannot fully repair: still decodes, and says so.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_under_5_percent_loss_decodes_and_logs_dropped_frames() -> Result<()> {
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    let options = PublishOptions {
        loss: 0.05,
        loss_seed: 7,
        ..PublishOptions::media(VideoCodec::H264)
    };
    let (p, sent) = publish_for(&gw, "lossy", options, 10).await?;
    let dropped = p.dropped_packets();
    let total = sent.video_rtp_packets + sent.audio_rtp_packets;
    if let Some(stats) = &p.loss {
        use std::sync::atomic::Ordering::Relaxed;
        eprintln!(
            "loss injector: {} RTP packets, {} resends, {} dropped ({} of them resends)",
            stats.rtp_packets.load(Relaxed),
            stats.retransmissions.load(Relaxed),
            stats.dropped.load(Relaxed),
            stats.dropped_retransmissions.load(Relaxed)
        );
    }
    assert!(
        dropped as f64 > total as f64 * 0.02,
        "the injector dropped only {dropped} of {total} packets"
    );
    let item = api
        .wait_item("lossy", "complete", Duration::from_secs(3), |i| {
            state(i) == "complete"
        })
        .await?;
    assert!(item["dropped_frames"].as_u64().is_some(), "{item}");
    let path = file_of(&gw, &item)?;
    let errors = tokio::task::spawn_blocking(move || probe::decode_errors(&path)).await??;
    assert!(
        errors.is_empty(),
        "lossy recording decodes with errors:\n{errors}"
    );
    let log = gw.log_text();
    assert!(
        log.lines().any(|l| l.contains("dropped_frames=")),
        "no dropped_frames= line in the log:\n{log}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// (h) Download with ranges, refusal of odd ids, deletion.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_download_with_ranges_and_delete() -> Result<()> {
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    publish_for(&gw, "dl", PublishOptions::media(VideoCodec::H264), 3).await?;
    let item = api
        .wait_item("dl", "complete", Duration::from_secs(3), |i| {
            state(i) == "complete"
        })
        .await?;
    let id = item["id"].as_u64().context("id")?;
    let path = file_of(&gw, &item)?;
    let disk = std::fs::read(&path)?;
    assert!(disk.len() > 4096, "{} bytes", disk.len());

    let full = api.get(&format!("/recordings/{id}")).await?;
    assert_eq!(full.status, 200);
    assert_eq!(full.body, disk, "full download differs from the file");
    assert_eq!(full.header("content-type"), Some("video/mp4"));
    let disposition = full.header("content-disposition").unwrap_or_default();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        disposition.starts_with("attachment") && disposition.contains(name),
        "Content-Disposition: {disposition}"
    );
    assert_eq!(full.header("accept-ranges"), Some("bytes"));

    let (a, b) = (100usize, 1123usize);
    let part = api
        .send(
            reqwest::Method::GET,
            &format!("/recordings/{id}"),
            &[("Range", &format!("bytes={a}-{b}"))],
        )
        .await?;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, disk[a..=b], "range body differs from the file");
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes {a}-{b}/{}", disk.len()).as_str())
    );
    // A suffix range: the last 500 bytes.
    let tail = api
        .send(
            reqwest::Method::GET,
            &format!("/recordings/{id}"),
            &[("Range", "bytes=-500")],
        )
        .await?;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, disk[disk.len() - 500..]);

    for bad in [
        "/recordings/999999",
        "/recordings/..%2F..%2Fetc%2Fpasswd",
        "/recordings/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/recordings/..%5Cgateway.log",
        "/recordings/gateway.log",
    ] {
        let reply = api.get(bad).await?;
        assert_eq!(reply.status, 404, "GET {bad}");
    }

    let del = api
        .send(
            reqwest::Method::DELETE,
            &format!("/api/recordings/{id}"),
            &[],
        )
        .await?;
    assert_eq!(del.status, 204);
    assert!(!path.exists(), "{} still on disk", path.display());
    assert_eq!(api.get(&format!("/recordings/{id}")).await?.status, 404);
    let again = api
        .send(
            reqwest::Method::DELETE,
            &format!("/api/recordings/{id}"),
            &[],
        )
        .await?;
    assert_eq!(again.status, 404);
    let (items, total) = api.list("?stream=dl").await?;
    assert!(items.is_empty() && total == 0, "{items:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// (i) The API token.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_guards_recordings() -> Result<()> {
    let gw =
        Gateway::start_with(GatewayOptions::default().arg("--api-token").arg("s3cret")).await?;
    let open = Api::new(&gw);
    let wrong = Api::with_token(&gw, Some("nope"));
    let right = Api::with_token(&gw, Some("s3cret"));
    publish_for(&gw, "guarded", PublishOptions::media(VideoCodec::H264), 2).await?;
    let item = right
        .wait_item("guarded", "complete", Duration::from_secs(3), |i| {
            state(i) == "complete"
        })
        .await?;
    let id = item["id"].as_u64().context("id")?;
    for path in ["/api/recordings".to_owned(), format!("/recordings/{id}")] {
        assert_eq!(
            open.get(&path).await?.status,
            401,
            "GET {path} without token"
        );
        assert_eq!(
            wrong.get(&path).await?.status,
            401,
            "GET {path} wrong token"
        );
        assert_eq!(
            right.get(&path).await?.status,
            200,
            "GET {path} right token"
        );
    }
    assert_eq!(open.control("guarded", "start").await?, 401);
    let del = format!("/api/recordings/{id}");
    let reply = wrong.send(reqwest::Method::DELETE, &del, &[]).await?;
    assert_eq!(reply.status, 401);
    assert!(file_of(&gw, &item)?.exists());
    let reply = right.send(reqwest::Method::DELETE, &del, &[]).await?;
    assert_eq!(reply.status, 204);
    Ok(())
}

// ---------------------------------------------------------------------------
// (j) Runtime control with recording off by default.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_none_then_start_and_stop_at_runtime() -> Result<()> {
    let gw = Gateway::start_with(GatewayOptions::default().arg("--record").arg("none")).await?;
    let api = Api::new(&gw);
    let p = publisher(&gw, "manual", PublishOptions::media(VideoCodec::H264)).await?;
    let runner = p.spawn_run_media(Duration::from_secs(12));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (items, total) = api.list("?stream=manual").await?;
    assert!(items.is_empty() && total == 0, "recorded anyway: {items:?}");
    let dir = gw.recordings_dir();
    let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, 0, "files in {}", dir.display());

    assert_eq!(api.control("manual", "start").await?, 204);
    api.wait_item("manual", "recording", Duration::from_secs(3), |i| {
        state(i) == "recording"
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(api.control("manual", "stop").await?, 204);
    let item = api
        .wait_item("manual", "complete", Duration::from_secs(3), |i| {
            state(i) == "complete"
        })
        .await?;
    let path = file_of(&gw, &item)?;
    let errors = tokio::task::spawn_blocking({
        let path = path.clone();
        move || probe::decode_errors(&path)
    })
    .await??;
    assert!(errors.is_empty(), "{errors}");
    let info = tokio::task::spawn_blocking(move || probe::probe(&path)).await??;
    // From the cached GOP or the next keyframe (either at most a GOP, 2 s,
    // from the start request) to the stop: the 4 s between, give or take a
    // GOP and the polling.
    assert!(info.duration >= 2.0 && info.duration <= 8.0, "{info:?}");
    // Still publishing, and nothing new is being recorded.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (items, _) = api.list("?stream=manual").await?;
    assert_eq!(items.len(), 1, "{items:?}");
    runner.await??;
    Ok(())
}

// ---------------------------------------------------------------------------
// Listing: filters, paging, newest first.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_list_filters_and_pages_newest_first() -> Result<()> {
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    for stream in ["alpha", "beta", "alpha"] {
        publish_for(&gw, stream, PublishOptions::media(VideoCodec::H264), 2).await?;
        api.wait_item(stream, "complete", Duration::from_secs(3), |i| {
            state(i) == "complete"
        })
        .await?;
        // File names carry whole seconds: keep them distinct.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let (all, total) = api.list("").await?;
    assert_eq!(total, 3, "{all:?}");
    let ids: Vec<u64> = all.iter().filter_map(|i| i["id"].as_u64()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {ids:?}"
    );
    let (alpha, total) = api.list("?stream=alpha").await?;
    assert_eq!((alpha.len(), total), (2, 2), "{alpha:?}");
    assert!(alpha.iter().all(|i| i["stream"] == "alpha"));
    let (page, total) = api.list("?limit=1&offset=1").await?;
    assert_eq!(total, 3);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["id"].as_u64(), Some(ids[1]));
    let (none, total) = api.list("?from=2999-01-01T00:00:00Z").await?;
    assert!(none.is_empty() && total == 0, "{none:?}");
    let (old, _) = api.list("?to=2000-01-01T00:00:00Z").await?;
    assert!(old.is_empty(), "{old:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// The loss injector drops on the wire, below the NACK responder.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_injector_drops_packets_on_the_wire() -> Result<()> {
    let gw = Gateway::start().await?;
    let options = PublishOptions {
        loss: 0.05,
        loss_seed: 11,
        ..PublishOptions::media(VideoCodec::H264)
    };
    let p = publisher(&gw, "drops", options).await?;
    let runner = p.spawn_run_media(Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let viewer = Viewer::connect(&gw.base_url(), "drops", WatchOptions::av()).await?;
    let sent = runner.await??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = p.loss.as_ref().context("loss stats")?;
    let total = sent.video_rtp_packets + sent.audio_rtp_packets;
    let dropped = stats.dropped();
    let snapshot = viewer.snapshot();
    eprintln!(
        "sent {sent:?}; injector saw {} RTP ({} resends), dropped {dropped} ({} resends); viewer {:?}",
        stats.rtp_packets(),
        stats.retransmissions(),
        stats
            .dropped_retransmissions
            .load(std::sync::atomic::Ordering::Relaxed),
        snapshot
            .iter()
            .map(|t| (t.kind.clone(), t.packets, t.lost()))
            .collect::<Vec<_>>()
    );
    assert!(
        stats.rtp_packets() >= total,
        "the injector saw {} of {total} packets",
        stats.rtp_packets()
    );
    let rate = dropped as f64 / stats.rtp_packets() as f64;
    assert!((0.03..0.07).contains(&rate), "dropped {rate:.3}");
    // What the viewer missed is what the gateway could not get back.
    let audio = snapshot
        .iter()
        .find(|t| t.kind == "audio")
        .context("no audio")?;
    assert!(audio.lost() > 0, "audio (not NACKed) lost nothing");
    Ok(())
}

// ---------------------------------------------------------------------------
// Disk trouble: a write that fails ends that recording only.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failure_marks_the_recording_failed_and_viewers_carry_on() -> Result<()> {
    let gw = Gateway::start().await?;
    let pid = gw.pid().context("gateway pid")?;
    // The gateway may write no file beyond 400 kB from now on: the
    // recording (about 0.7 Mbit/s) hits the limit after about five
    // seconds, as it would hit a full disk. The catalog and the log stay
    // below it.
    let limit = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--fsize=400000:400000"])
        .status()
        .context("running prlimit (util-linux)")?;
    ensure!(limit.success(), "prlimit failed: {limit}");
    let api = Api::new(&gw);
    let p = publisher(&gw, "full", PublishOptions::media(VideoCodec::H264)).await?;
    let runner = p.spawn_run_media(Duration::from_secs(10));
    let viewer = Viewer::connect(&gw.base_url(), "full", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 20, Duration::from_secs(3)).await?;
    let item = api
        .wait_item("full", "failed", Duration::from_secs(12), |i| {
            state(i) == "failed"
        })
        .await?;
    let failed_at = Instant::now();
    let error = item["error"].as_str().unwrap_or_default();
    assert!(error.contains("os error 27"), "error not surfaced: {item}");
    let before = viewer
        .snapshot()
        .iter()
        .find(|t| t.kind == "video")
        .map_or(0, |t| t.packets);
    let sent = runner.await??;
    assert!(
        failed_at.elapsed() > Duration::from_secs(1),
        "the recording failed too late to show that viewers carry on"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in viewer.snapshot() {
        assert_eq!(
            t.lost(),
            0,
            "{} lost packets after the write failure",
            t.kind
        );
        if t.kind == "video" {
            assert!(
                t.packets > before,
                "video stopped at the write failure ({before} packets)"
            );
            assert!(t.packets > sent.video_rtp_packets / 2, "{t:?}");
        }
    }
    // What was written before the failure still plays.
    let path = file_of(&gw, &item)?;
    let errors = tokio::task::spawn_blocking({
        let path = path.clone();
        move || probe::decode_errors(&path)
    })
    .await??;
    assert!(errors.is_empty(), "failed recording is torn:\n{errors}");
    let info = tokio::task::spawn_blocking(move || probe::probe(&path)).await??;
    // Fragments close at the keyframes (every 2 s); the failure came after
    // at least two of them.
    assert!(info.duration >= 1.5, "{info:?}");
    let log = gw.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("recording failed")),
        "no error logged:\n{log}"
    );
    let reply = api.get("/api/recordings").await?;
    assert_eq!(reply.status, 200);
    Ok(())
}

// ---------------------------------------------------------------------------
// Retention: beyond the total size, the oldest recordings go first.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_oldest_recordings_beyond_the_size_limit() -> Result<()> {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .arg("--record-max-total-mb")
            .arg("1"),
    )
    .await?;
    let api = Api::new(&gw);
    let mut files = Vec::new();
    for stream in ["old", "new"] {
        publish_for(&gw, stream, PublishOptions::media(VideoCodec::H264), 8).await?;
        let item = api
            .wait_item(stream, "complete", Duration::from_secs(5), |i| {
                state(i) == "complete"
            })
            .await?;
        let size = item["size_bytes"].as_u64().unwrap_or_default();
        assert!(
            (600_000..1_000_000).contains(&size),
            "{stream} is the wrong size to test with: {item}"
        );
        files.push(file_of(&gw, &item)?);
    }
    // Two recordings of ~0.8 MB each exceed 1 MiB; one alone does not: the
    // older one goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (items, total) = api.list("").await?;
        if total == 1 {
            assert_eq!(items[0]["stream"], "new", "{items:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "retention kept {items:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!files[0].exists(), "{} still on disk", files[0].display());
    assert!(files[1].exists(), "{} was deleted", files[1].display());
    let log = gw.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("retention deleted a recording") && l.contains("old-")),
        "deletion not logged:\n{log}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Segmentation: new files at keyframes once a segment is long enough.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_split_at_keyframes_and_add_up() -> Result<()> {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .arg("--record-segment-secs")
            .arg("3"),
    )
    .await?;
    let api = Api::new(&gw);
    // A keyframe every 2 s: segments close at the first keyframe after 3 s.
    publish_for(&gw, "seg", PublishOptions::media(VideoCodec::H264), 10).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let items = loop {
        let (items, _) = api.list("?stream=seg").await?;
        if items.len() >= 3 && items.iter().all(|i| state(i) == "complete") {
            break items;
        }
        ensure!(Instant::now() < deadline, "segments: {items:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut total = 0.0;
    let mut names = std::collections::HashSet::new();
    for item in &items {
        let path = file_of(&gw, item)?;
        assert!(names.insert(path.clone()), "file used twice: {items:?}");
        let errors = tokio::task::spawn_blocking({
            let path = path.clone();
            move || probe::decode_errors(&path)
        })
        .await??;
        assert!(errors.is_empty(), "{}:\n{errors}", path.display());
        let info = tokio::task::spawn_blocking(move || probe::probe(&path)).await??;
        assert!(
            (1.5..=4.5).contains(&info.duration),
            "segment of {} s: {info:?}",
            info.duration
        );
        total += info.duration;
    }
    assert_eq!(items.len(), 3, "{items:?}");
    assert!((total - 10.0).abs() <= 0.5, "segments add up to {total} s");
    Ok(())
}

// ---------------------------------------------------------------------------
// A new publisher taking over: a new file by default, one file with
// `--record-on-reconnect continue`.

async fn takeover_recordings(mode: Option<&str>) -> Result<(Gateway, Vec<Value>)> {
    let mut options = GatewayOptions::default().arg("--publisher-takeover");
    if let Some(mode) = mode {
        options = options.arg("--record-on-reconnect").arg(mode);
    }
    let gw = Gateway::start_with(options).await?;
    let api = Api::new(&gw);
    let first = publisher(&gw, "relay", PublishOptions::media(VideoCodec::H264)).await?;
    first.run_media(Duration::from_secs(4)).await?;
    // The first publisher is still connected when the second arrives.
    publish_for(&gw, "relay", PublishOptions::media(VideoCodec::H264), 4).await?;
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = if mode == Some("continue") { 1 } else { 2 };
    loop {
        let (items, _) = api.list("?stream=relay").await?;
        if items.len() >= want && items.iter().all(|i| state(i) == "complete") {
            for item in &items {
                let path = file_of(&gw, item)?;
                let errors =
                    tokio::task::spawn_blocking(move || probe::decode_errors(&path)).await??;
                assert!(errors.is_empty(), "{item}:\n{errors}");
            }
            return Ok((gw, items));
        }
        ensure!(Instant::now() < deadline, "recordings: {items:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_starts_a_new_file_by_default() -> Result<()> {
    let (gw, items) = takeover_recordings(None).await?;
    assert_eq!(items.len(), 2, "{items:?}");
    for item in &items {
        let path = file_of(&gw, item)?;
        let info = tokio::task::spawn_blocking(move || probe::probe(&path)).await??;
        assert!((3.0..=5.0).contains(&info.duration), "{info:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_continues_the_file_when_configured() -> Result<()> {
    let (gw, items) = takeover_recordings(Some("continue")).await?;
    assert_eq!(items.len(), 1, "{items:?}");
    let path = file_of(&gw, &items[0])?;
    let info = tokio::task::spawn_blocking(move || probe::probe(&path)).await??;
    // Both publishers' four seconds, with the hand-over gap closed.
    assert!((7.5..=8.6).contains(&info.duration), "{info:?}");
    let want = 2 * 120 * 98 / 100;
    assert!(info.video_frames >= want, "{info:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Optional progressive ("faststart") MP4.

/// Top-level box types of an MP4 file, in order.
fn top_level_boxes(data: &[u8]) -> Vec<String> {
    let mut boxes = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let size32 = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let kind = String::from_utf8_lossy(&data[at + 4..at + 8]).into_owned();
        let size = match size32 {
            1 if at + 16 <= data.len() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&data[at + 8..at + 16]);
                u64::from_be_bytes(b) as usize
            }
            0 => data.len() - at,
            n => n as usize,
        };
        boxes.push(kind);
        if size < 8 {
            break;
        }
        at += size;
    }
    boxes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faststart_option_writes_progressive_mp4() -> Result<()> {
    let gw = Gateway::start_with(GatewayOptions::default().arg("--record-faststart")).await?;
    let api = Api::new(&gw);
    let (_p, sent) = publish_for(&gw, "fast", PublishOptions::media(VideoCodec::H264), 10).await?;
    let item = api
        .wait_item("fast", "complete", Duration::from_secs(5), |i| {
            state(i) == "complete"
        })
        .await?;
    let info = check_recording(&gw, &item, "fast", VideoCodec::H264, "mp4", &sent, 10.0).await?;
    let data = std::fs::read(file_of(&gw, &item)?)?;
    let boxes = top_level_boxes(&data);
    let moov = boxes.iter().position(|b| b == "moov");
    let mdat = boxes.iter().position(|b| b == "mdat");
    assert!(
        moov.is_some() && mdat.is_some() && moov < mdat,
        "not faststart: {boxes:?}"
    );
    assert!(
        !boxes.iter().any(|b| b == "moof"),
        "still fragmented: {boxes:?}"
    );
    assert!(info.video_frames > 0);
    Ok(())
}
