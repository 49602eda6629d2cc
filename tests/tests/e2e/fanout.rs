//! A real publisher, several real viewers, the real gateway binary.

use std::time::Duration;

use whipcord_tests::client::{PublishOptions, Publisher, Viewer, WatchOptions, is_keyframe_start};
use whipcord_tests::gateway::Gateway;
use whipcord_tests::synth::VideoCodec;

async fn three_viewers_get_every_track(codec: VideoCodec) -> anyhow::Result<()> {
    let gw = Gateway::start().await?;
    let base = gw.url("");
    let publisher = Publisher::connect(
        &base,
        "live",
        PublishOptions {
            video: Some(codec),
            ..PublishOptions::default()
        },
    )
    .await?;
    let publisher = std::sync::Arc::new(publisher);
    let runner = publisher.spawn_run(Duration::from_secs(8), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut viewers = Vec::new();
    for _ in 0..3 {
        viewers.push(Viewer::connect(&base, "live", WatchOptions::av()).await?);
    }
    for viewer in &viewers {
        let tracks = viewer.wait_tracks(2, 1, Duration::from_secs(1)).await?;
        let video = tracks
            .iter()
            .find(|t| t.kind == "video")
            .ok_or_else(|| anyhow::anyhow!("no video track: {tracks:?}"))?;
        let audio = tracks.iter().find(|t| t.kind == "audio");
        assert!(audio.is_some(), "no audio track: {tracks:?}");
        eprintln!(
            "VIDEO {:?} lo={:?} hi={:?} n={}",
            &video.first_payload[..4],
            video.lowest_seq,
            video.highest_seq,
            video.packets
        );
        let first = video.first_at.expect("video arrived");
        assert!(
            first.duration_since(viewer.connected_at) < Duration::from_secs(1),
            "first video {:?} after connecting",
            first.duration_since(viewer.connected_at)
        );
        assert!(
            is_keyframe_start(codec, &video.first_payload),
            "first video packet does not start a keyframe: {:02x?}",
            &video.first_payload[..video.first_payload.len().min(4)]
        );
    }
    // Media keeps flowing to everyone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for viewer in &viewers {
        for t in viewer.snapshot() {
            assert!(t.packets > 20, "{} got only {} packets", t.kind, t.packets);
            assert_eq!(t.lost(), 0, "{} lost packets on loopback", t.kind);
        }
    }
    runner.await??;
    assert_eq!(publisher.delete().await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_opus_reaches_three_viewers() -> anyhow::Result<()> {
    three_viewers_get_every_track(VideoCodec::H264).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_opus_reaches_three_viewers() -> anyhow::Result<()> {
    three_viewers_get_every_track(VideoCodec::Vp8).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_chat_reaches_viewers() -> anyhow::Result<()> {
    let gw = Gateway::start().await?;
    let base = gw.url("");
    let publisher = std::sync::Arc::new(
        Publisher::connect(
            &base,
            "chat",
            PublishOptions {
                data_channel: true,
                ..PublishOptions::default()
            },
        )
        .await?,
    );
    let runner = publisher.spawn_run(Duration::from_secs(5), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let viewer = Viewer::connect(&base, "chat", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 1, Duration::from_secs(2)).await?;
    // The viewer's channel opens shortly after the media; keep saying it.
    let mut got = Vec::new();
    for i in 0..20 {
        publisher.send_chat(&format!("hello {i}")).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = viewer
            .messages
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        if !got.is_empty() {
            break;
        }
    }
    assert!(
        got.iter().any(|m| m.starts_with("hello ")),
        "viewer got no chat: {got:?}"
    );
    runner.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_continue_seamlessly_across_publisher_takeover() -> anyhow::Result<()> {
    use whipcord_tests::gateway::GatewayOptions;
    let gw = Gateway::start_with(GatewayOptions::default().arg("--publisher-takeover")).await?;
    let base = gw.url("");
    let first =
        std::sync::Arc::new(Publisher::connect(&base, "relay", PublishOptions::default()).await?);
    let first_run = first.spawn_run(Duration::from_secs(3), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let viewer = Viewer::connect(&base, "relay", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 10, Duration::from_secs(2)).await?;
    // A new encoder (new SSRCs, new sequence numbers) takes over.
    let second =
        std::sync::Arc::new(Publisher::connect(&base, "relay", PublishOptions::default()).await?);
    let before: Vec<u64> = viewer.snapshot().iter().map(|t| t.packets).collect();
    second
        .run(Duration::from_secs(2), Duration::from_secs(1))
        .await?;
    let _ = first_run.await;
    let after = viewer.snapshot();
    for (t, earlier) in after.iter().zip(before) {
        assert!(
            t.packets > earlier + 20,
            "{} stalled after takeover: {} -> {}",
            t.kind,
            earlier,
            t.packets
        );
        // Sequence numbers stayed contiguous for the viewer.
        assert_eq!(
            t.lost(),
            0,
            "{} has a sequence gap across the takeover",
            t.kind
        );
    }
    assert_eq!(viewer.connection_state().to_string(), "connected");
    Ok(())
}
