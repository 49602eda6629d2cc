//! LL-HLS (issue 5): a stream published over WHIP is served at
//! `/hls/{stream}/index.m3u8` on demand, with the LL-HLS tags, blocking
//! playlist reloads, and segments FFmpeg decodes (H264 + AAC made from the
//! publisher's Opus).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use whipcord_tests::api::{Api, Reply};
use whipcord_tests::client::{PublishOptions, Publisher};
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::synth::VideoCodec;

async fn publish(gw: &Gateway, stream: &str, codec: VideoCodec) -> Result<Arc<Publisher>> {
    Ok(Arc::new(
        Publisher::connect(&gw.base_url(), stream, PublishOptions::media(codec)).await?,
    ))
}

/// The URIs a playlist lists (segments), in order.
fn segments(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The media sequence number of the newest complete segment.
fn newest_msn(playlist: &str) -> Result<u64> {
    let first: u64 = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .context("no EXT-X-MEDIA-SEQUENCE")?
        .trim()
        .parse()?;
    let count = segments(playlist).len() as u64;
    ensure!(count > 0, "no segments listed:\n{playlist}");
    Ok(first + count - 1)
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// `ffmpeg -v error` reading `url` for up to `seconds` of media; what it
/// printed (nothing for clean media).
async fn ffmpeg_errors(url: &str, seconds: u32) -> Result<String> {
    let child = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-live_start_index", "0", "-i", url])
        .args(["-t", &seconds.to_string(), "-f", "null", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(
        Duration::from_secs(u64::from(seconds) + 20),
        child.wait_with_output(),
    )
    .await
    .context("ffmpeg did not finish reading the live playlist")??;
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_playlist_has_ll_hls_tags_and_ffmpeg_decodes_its_segments() -> Result<()> {
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    let missing = api.get("/hls/cam/index.m3u8").await?;
    ensure!(missing.status == 404, "not live: {}", missing.status);

    let p = publish(&gw, "cam", VideoCodec::H264).await?;
    let runner = p.spawn_run_media(Duration::from_secs(20));
    // The first request starts HLS and returns once a segment exists.
    let started = Instant::now();
    let first = api.get("/hls/cam/index.m3u8").await?;
    ensure!(first.status == 200, "{}: {}", first.status, text(&first));
    eprintln!("first playlist after {:?}", started.elapsed());
    ensure!(
        first.header("content-type") == Some("application/vnd.apple.mpegurl"),
        "{:?}",
        first.header("content-type")
    );
    ensure!(first.header("cache-control") == Some("no-cache"));

    tokio::time::sleep(Duration::from_secs(6)).await;
    let reply = api.get("/hls/cam/index.m3u8").await?;
    let playlist = text(&reply);
    eprintln!("{playlist}");
    for tag in [
        "#EXTM3U",
        "#EXT-X-TARGETDURATION:",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=",
        "#EXT-X-PART-INF:PART-TARGET=",
        "#EXT-X-MEDIA-SEQUENCE:",
        "#EXT-X-MAP:URI=\"init.mp4\"",
        "#EXT-X-PROGRAM-DATE-TIME:",
        "#EXTINF:",
        "#EXT-X-PART:DURATION=",
        "INDEPENDENT=YES",
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=",
    ] {
        ensure!(playlist.contains(tag), "no {tag} in:\n{playlist}");
    }
    let listed = segments(&playlist);
    ensure!(listed.len() >= 3, "too few segments:\n{playlist}");

    // Every listed segment, after the init segment, decodes as H264 + AAC.
    let dir = std::env::temp_dir().join(format!("whipcord-hls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let init = api.get("/hls/cam/init.mp4").await?;
    ensure!(init.status == 200 && init.header("content-type") == Some("video/mp4"));
    let mut media = init.body.clone();
    for uri in &listed {
        let seg = api.get(&format!("/hls/cam/{uri}")).await?;
        ensure!(seg.status == 200, "{uri}: {}", seg.status);
        ensure!(
            seg.header("cache-control")
                .is_some_and(|c| c.contains("immutable")),
            "{uri}: {:?}",
            seg.header("cache-control")
        );
        media.extend_from_slice(&seg.body);
    }
    let file = dir.join("segments.mp4");
    std::fs::write(&file, &media)?;
    let errors = whipcord_tests::probe::decode_errors(&file)?;
    ensure!(errors.is_empty(), "segments do not decode:\n{errors}");
    let info = whipcord_tests::probe::probe(&file)?;
    ensure!(info.video_codec.as_deref() == Some("h264"), "{info:?}");
    ensure!(info.audio_codec.as_deref() == Some("aac"), "{info:?}");

    // FFmpeg reads the live playlist itself.
    let errors = ffmpeg_errors(&gw.url("/hls/cam/index.m3u8"), 4).await?;
    ensure!(errors.is_empty(), "ffmpeg on the live playlist:\n{errors}");

    runner.await??;
    p.delete().await?;
    // The stream's HLS goes away with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gone = api.get("/hls/cam/index.m3u8").await?;
        if gone.status == 404 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "HLS still served after the stream ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reload_waits_for_the_next_segment_and_refuses_absurd_requests() -> Result<()> {
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    let p = publish(&gw, "cam", VideoCodec::H264).await?;
    let runner = p.spawn_run_media(Duration::from_secs(14));
    let first = api.get("/hls/cam/index.m3u8").await?;
    ensure!(first.status == 200, "{}: {}", first.status, text(&first));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let playlist = text(&api.get("/hls/cam/index.m3u8").await?);
    let newest = newest_msn(&playlist)?;
    let next = newest + 1;
    let asked = Instant::now();
    let reply = api
        .get(&format!("/hls/cam/index.m3u8?_HLS_msn={next}"))
        .await?;
    let waited = asked.elapsed();
    ensure!(reply.status == 200, "{}: {}", reply.status, text(&reply));
    let body = text(&reply);
    ensure!(
        newest_msn(&body)? >= next,
        "returned before segment {next} existed:\n{body}"
    );
    // It blocked (the segment did not exist yet) and came back with it,
    // not after some timeout (segments are 1–2 s).
    ensure!(
        waited > Duration::from_millis(100) && waited < Duration::from_millis(2500),
        "blocking reload took {waited:?}"
    );
    eprintln!("_HLS_msn={next} answered after {waited:?}");

    let absurd = api
        .get(&format!("/hls/cam/index.m3u8?_HLS_msn={}", next + 100))
        .await?;
    ensure!(absurd.status == 400, "absurd msn: {}", absurd.status);
    let part_only = api.get("/hls/cam/index.m3u8?_HLS_part=1").await?;
    ensure!(
        part_only.status == 400,
        "part without msn: {}",
        part_only.status
    );
    let junk = api.get("/hls/cam/seg-1.mp4").await?;
    ensure!(junk.status == 404, "junk name: {}", junk.status);

    runner.await??;
    p.delete().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_has_no_hls_without_transcode() -> Result<()> {
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    let p = publish(&gw, "vp8", VideoCodec::Vp8).await?;
    let runner = p.spawn_run_media(Duration::from_secs(4));
    let reply = api.get("/hls/vp8/index.m3u8").await?;
    ensure!(reply.status == 415, "{}: {}", reply.status, text(&reply));
    ensure!(text(&reply).contains("VP8"), "{}", text(&reply));
    runner.await??;
    p.delete().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_page_and_hls_js_are_served() -> Result<()> {
    let gw = Gateway::start().await?;
    let api = Api::new(&gw);
    let page = api.get("/hls/cam/").await?;
    ensure!(page.status == 200);
    ensure!(text(&page).contains("/assets/vendor/hls.min.js"));
    let redirect = api.get("/hls/cam").await?;
    ensure!(
        redirect.status == 200 || redirect.status == 308,
        "{}",
        redirect.status
    );
    let js = api.get("/assets/vendor/hls.min.js").await?;
    ensure!(js.status == 200 && js.body.len() > 100_000);
    let watch = api.get("/watch/cam").await?;
    ensure!(
        text(&watch).contains("/hls/"),
        "no HLS link on the watch page"
    );
    Ok(())
}

/// `/api/streams`' HLS figures of `stream`.
async fn hls_status(api: &Api, stream: &str) -> Result<serde_json::Value> {
    let streams = api.get("/api/streams").await?.json()?;
    streams["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == stream))
        .map(|s| s["hls"].clone())
        .with_context(|| format!("no {stream} in {streams}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_runs_only_while_requested() -> Result<()> {
    let gw = Gateway::start_with(GatewayOptions::default().arg("--hls-idle-secs").arg("3")).await?;
    let api = Api::new(&gw);
    let p = publish(&gw, "cam", VideoCodec::H264).await?;
    let runner = p.spawn_run_media(Duration::from_secs(14));
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        hls_status(&api, "cam").await?["active"] == false,
        "HLS before any request"
    );
    // The first request starts HLS; on a busy machine the publisher may
    // still be connecting, so allow it a few tries.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = api.get("/hls/cam/index.m3u8").await?;
        if reply.status == 200 {
            break;
        }
        ensure!(Instant::now() < deadline, "{}", reply.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let active = hls_status(&api, "cam").await?;
    ensure!(active["active"] == true, "{active}");
    ensure!(active["playlists_served"].as_u64() >= Some(1), "{active}");
    // No more requests: it stops after the idle time (3 s here).
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        if hls_status(&api, "cam").await?["active"] == false {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "HLS still running without requests"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(gw.log_text().contains("HLS stopped"));
    // And a new request starts it again.
    let again = api.get("/hls/cam/index.m3u8").await?;
    ensure!(again.status == 200, "{}", again.status);
    runner.await??;
    p.delete().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_is_transcoded_for_hls_when_configured() -> Result<()> {
    let gw = Gateway::start_with(GatewayOptions::default().arg("--hls-transcode")).await?;
    let api = Api::new(&gw);
    let p = publish(&gw, "vp8", VideoCodec::Vp8).await?;
    let runner = p.spawn_run_media(Duration::from_secs(12));
    let first = api.get("/hls/vp8/index.m3u8").await?;
    ensure!(first.status == 200, "{}: {}", first.status, text(&first));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let playlist = text(&api.get("/hls/vp8/index.m3u8").await?);
    let listed = segments(&playlist);
    ensure!(!listed.is_empty(), "{playlist}");
    let init_uri = playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .next_back()
        .and_then(|l| l.strip_suffix('"'))
        .context("no EXT-X-MAP")?
        .to_owned();
    let mut media = api.get(&format!("/hls/vp8/{init_uri}")).await?.body;
    let last = listed.last().context("no segment")?;
    media.extend_from_slice(&api.get(&format!("/hls/vp8/{last}")).await?.body);
    let dir = std::env::temp_dir().join(format!("whipcord-hls-vp8-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("segment.mp4");
    std::fs::write(&file, &media)?;
    let errors = whipcord_tests::probe::decode_errors(&file)?;
    ensure!(errors.is_empty(), "{errors}");
    let info = whipcord_tests::probe::probe(&file)?;
    ensure!(info.video_codec.as_deref() == Some("h264"), "{info:?}");
    ensure!(info.audio_codec.as_deref() == Some("aac"), "{info:?}");
    runner.await??;
    p.delete().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
