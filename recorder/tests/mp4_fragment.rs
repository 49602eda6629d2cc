//! The in-memory fragmenter cut the way LL-HLS cuts it (a part every
//! ~200 ms, a new segment at each keyframe), checked by FFmpeg: the init
//! segment plus every part decodes as one file, and each part that starts
//! with a keyframe decodes on its own after the init segment.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Timed, decode_errors, decoded_frames, duration, interleave};
use recorder::codec::MediaKind;
use recorder::mp4::{AudioTrackConfig, FragmentOut, Fragmenter};
use recorder::params::{AudioParams, VideoConfig};
use shiguredo_mp4::Decode;
use shiguredo_mp4::boxes::MoofBox;

const STEREO: AudioParams = AudioParams {
    channels: 2,
    sample_rate: 48_000,
};
const PART: Duration = Duration::from_millis(200);

fn first_config(frames: &[Timed]) -> Option<VideoConfig> {
    frames
        .iter()
        .filter(|(_, f)| f.keyframe)
        .find_map(|(_, f)| VideoConfig::from_keyframe(f))
}

fn assert_clean(path: &Path) {
    assert_eq!(
        decode_errors(path),
        "",
        "ffmpeg reported errors on {}",
        path.display()
    );
}

/// Pushes every frame and cuts a part once 200 ms have passed since the
/// last cut, or right at a video keyframe (a new segment), as an LL-HLS
/// segmenter does; the last part comes from `flush`.
fn cut_parts(fragmenter: &mut Fragmenter, frames: &[Timed]) -> Vec<FragmentOut> {
    let mut parts = Vec::new();
    let mut part_start = 0u64;
    for (ns, frame) in frames {
        assert!(fragmenter.push(frame, *ns).expect("push"));
        let keyframe = frame.codec.kind() == MediaKind::Video && frame.keyframe;
        let elapsed = Duration::from_nanos(ns - part_start);
        if (keyframe && *ns > 0) || elapsed >= PART {
            if let Some(part) = fragmenter.cut().expect("cut") {
                parts.push(part);
            }
            part_start = *ns;
        }
    }
    parts.extend(fragmenter.flush().expect("flush"));
    parts
}

#[test]
fn parts_decode_together_and_from_each_keyframe() {
    let dir = common::workdir("mp4-fragment");
    let video = common::h264(&dir, "320x240", 3.0, 0);
    assert_eq!(video.len(), 90);
    let audio = common::opus(&dir, 3.0);
    let audio_packets = audio.len() as u64;
    let frames = interleave(video, audio);
    let mut fragmenter =
        Fragmenter::new(first_config(&frames), Some(AudioTrackConfig::Opus(STEREO)))
            .expect("fragmenter");
    let init = fragmenter.init();
    let parts = cut_parts(&mut fragmenter, &frames);
    assert!(parts.len() >= 15, "parts: {}", parts.len());

    // One sequence number after another; each track's tfdt where its
    // previous run ended; parts tile the timeline.
    let mut track_ends = std::collections::HashMap::new();
    let mut next_start = 0;
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.sequence_number as usize, i + 1);
        let (moof, _) = MoofBox::decode(&part.data).expect("moof");
        assert_eq!(moof.mfhd_box.sequence_number, part.sequence_number);
        for (traf, run) in moof.traf_boxes.iter().zip(&part.tracks) {
            let tfdt = traf.tfdt_box.as_ref().expect("tfdt").base_media_decode_time;
            assert_eq!(tfdt, run.decode_time);
            if let Some(end) = track_ends.insert(run.track_id, tfdt + run.duration) {
                assert_eq!(tfdt, end, "part {i}: track {} tfdt", run.track_id);
            }
            let first = traf.trun_boxes[0].samples[0].flags.expect("flags");
            assert_eq!(!first.sample_is_non_sync_sample(), run.starts_with_sync);
        }
        assert_eq!(part.start_ns, next_start, "part {i} start");
        next_start = part.start_ns + part.duration_ns;
        assert!(
            part.duration_ns <= 250_000_000,
            "part {i}: {} ns",
            part.duration_ns
        );
    }
    // Keyframes at 0, 1 and 2 s start a part each, and no other part holds one.
    let independent: Vec<u64> = parts
        .iter()
        .filter(|p| p.starts_with_keyframe)
        .map(|p| p.start_ns)
        .collect();
    assert_eq!(independent, vec![0, 1_000_000_000, 2_000_000_000]);
    assert!(
        parts
            .iter()
            .all(|p| p.has_keyframe == p.starts_with_keyframe)
    );

    let whole = dir.join("whole.mp4");
    let mut data = init.to_vec();
    for part in &parts {
        data.extend_from_slice(&part.data);
    }
    std::fs::write(&whole, &data).expect("write");
    assert_clean(&whole);
    assert_eq!(decoded_frames(&whole, "v:0"), 90);
    assert_eq!(decoded_frames(&whole, "a:0"), audio_packets);
    let d = duration(&whole);
    assert!((d - 3.0).abs() < 0.1, "ffprobe duration {d}");

    // A player joining at a segment gets the init segment and that part.
    for (i, part) in parts.iter().enumerate() {
        if !part.starts_with_keyframe {
            continue;
        }
        let alone = dir.join(format!("part-{i}.mp4"));
        let mut data = init.to_vec();
        data.extend_from_slice(&part.data);
        std::fs::write(&alone, &data).expect("write");
        assert_clean(&alone);
        let video_samples = part
            .tracks
            .iter()
            .find(|r| r.kind == MediaKind::Video)
            .map_or(0, |r| u64::from(r.samples));
        assert_eq!(decoded_frames(&alone, "v:0"), video_samples, "part {i}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
