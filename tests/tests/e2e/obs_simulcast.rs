//! What OBS sends: an offer without candidates, with session-level ICE
//! attributes and `a=group:LS`, H264 on PT 96 and Opus on PT 111, a Bearer
//! token; and simulcast offers with several rids.

use std::sync::Arc;
use std::time::Duration;

use whipcord_tests::client::{PublishOptions, Publisher, Viewer, WatchOptions, is_keyframe_start};
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::synth::VideoCodec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_shaped_offer_connects_and_flows() -> anyhow::Result<()> {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .arg("--publish-token")
            .arg("obs-secret"),
    )
    .await?;
    let base = gw.url("");
    let options = PublishOptions {
        obs_shape: true,
        token: Some("obs-secret".into()),
        ..PublishOptions::default()
    };
    let publisher = Arc::new(Publisher::connect(&base, "obs", options).await?);
    // The gateway answered the OBS offer with its own candidates and the
    // offered payload types.
    assert!(
        publisher.answer.contains("a=candidate"),
        "answer has no candidates"
    );
    assert!(publisher.answer.contains("H264"), "{}", publisher.answer);
    let video_pt = publisher.video.as_ref().map(|v| v.2);
    let audio_pt = publisher.audio.as_ref().map(|a| a.2);
    assert_eq!((video_pt, audio_pt), (Some(96), Some(111)));

    let runner = publisher.spawn_run(Duration::from_secs(5), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let viewer = Viewer::connect(&base, "obs", WatchOptions::av()).await?;
    let tracks = viewer.wait_tracks(2, 30, Duration::from_secs(3)).await?;
    let video = tracks.iter().find(|t| t.kind == "video").expect("video");
    assert!(is_keyframe_start(VideoCodec::H264, &video.first_payload));
    runner.await??;
    assert_eq!(publisher.delete().await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_offer_gets_every_layer_and_viewers_the_highest() -> anyhow::Result<()> {
    let gw = Gateway::start().await?;
    let base = gw.url("");
    let options = PublishOptions {
        simulcast: vec!["q", "h", "f"],
        ..PublishOptions::default()
    };
    let publisher = Arc::new(Publisher::connect(&base, "sim", options).await?);
    let simulcast_line = publisher
        .answer
        .lines()
        .find(|l| l.starts_with("a=simulcast:"))
        .unwrap_or_default()
        .to_owned();
    for rid in ["q", "h", "f"] {
        assert!(
            publisher.answer.contains(&format!("a=rid:{rid} recv")),
            "answer lacks rid {rid}:\n{}",
            publisher.answer
        );
        assert!(simulcast_line.contains(rid), "{simulcast_line}");
    }
    // OBS counts the accepted layers by the separators in this line.
    assert_eq!(simulcast_line.matches(';').count(), 2, "{simulcast_line}");

    let runner = publisher.spawn_run(Duration::from_secs(7), Duration::from_secs(1));
    // Let the gateway measure the layers, then watch.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let viewer = Viewer::connect(&base, "sim", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 30, Duration::from_secs(3)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snap = viewer.snapshot();
    let video = snap.iter().find(|t| t.kind == "video").expect("video");
    // One layer is forwarded, not all three: ~30 frames/s of one layer.
    let span = video
        .last_at
        .zip(video.first_at)
        .map(|(l, f)| l.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    let per_second = video.packets as f64 / span.max(0.1);
    assert!(
        per_second < 60.0,
        "viewer got {per_second:.0} video packets/s: layers mixed"
    );
    // Layer i pads each payload by i * 180 bytes: the first packet (the
    // STAP-A starting the replayed GOP, 16 bytes unpadded) shows the layer.
    assert!(
        video.first_payload.len() > 16 + 2 * 180 - 1,
        "viewer did not get the highest layer: first payload {} bytes",
        video.first_payload.len()
    );
    let log = gw.log();
    assert!(log.contains("track bound"), "{log}");
    runner.await??;
    Ok(())
}

/// A gateway behind 1:1 NAT advertises the public address, and ICE must
/// accept checks arriving for it. Loopback stands in for the network here:
/// the media socket listens on every address and 127.0.0.2 plays the public
/// address, so candidates and the address ICE matches on are both it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_ip_is_advertised_and_reachable() -> anyhow::Result<()> {
    let options = GatewayOptions {
        media_ip: Some("0.0.0.0".parse()?),
        ..GatewayOptions::default()
    }
    .arg("--public-ip")
    .arg("127.0.0.2");
    let gw = Gateway::start_with(options).await?;
    let base = gw.url("");
    let publisher = Arc::new(Publisher::connect(&base, "nat", PublishOptions::default()).await?);
    let candidates: Vec<&str> = publisher
        .answer
        .lines()
        .filter(|l| l.starts_with("a=candidate"))
        .collect();
    assert!(!candidates.is_empty());
    assert!(
        candidates.iter().all(|c| c.contains(" 127.0.0.2 ")),
        "answer candidates: {candidates:?}"
    );
    let runner = publisher.spawn_run(Duration::from_secs(3), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let viewer = Viewer::connect(&base, "nat", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 10, Duration::from_secs(3)).await?;
    runner.await??;
    Ok(())
}

/// Clients whose networks block UDP connect over ICE-TCP to the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_publisher_and_viewer() -> anyhow::Result<()> {
    use whipcord_tests::client::WatchOptions;
    let gw = Gateway::start().await?;
    let base = gw.url("");
    let options = PublishOptions {
        tcp_only: true,
        ..PublishOptions::default()
    };
    let publisher = match Publisher::connect(&base, "tcp", options).await {
        Ok(p) => Arc::new(p),
        Err(err) => panic!("{err}; log:\n{}", gw.log()),
    };
    assert!(
        publisher.answer.contains(" tcp ") && publisher.answer.contains("tcptype passive"),
        "no passive TCP candidate in the answer:\n{}",
        publisher.answer
    );
    let runner = publisher.spawn_run(Duration::from_secs(4), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let viewer = Viewer::connect(
        &base,
        "tcp",
        WatchOptions {
            tcp_only: true,
            ..WatchOptions::av()
        },
    )
    .await?;
    let tracks = viewer.wait_tracks(2, 30, Duration::from_secs(4)).await?;
    for t in &tracks {
        assert_eq!(t.lost(), 0, "{} lost packets over TCP", t.kind);
    }
    runner.await??;
    Ok(())
}
