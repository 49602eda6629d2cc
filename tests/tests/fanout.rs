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
    let publishing = {
        let p = std::sync::Arc::new(publisher);
        let runner = p.clone();
        (
            p,
            tokio::spawn(async move {
                runner
                    .run(Duration::from_secs(8), Duration::from_secs(1))
                    .await
            }),
        )
    };
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
    let (publisher, runner) = publishing;
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
