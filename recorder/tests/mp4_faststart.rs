//! Fragmented recordings rewritten with `moov` first by `mp4::faststart`:
//! FFmpeg decodes them without a message, and they hold the same frames,
//! keyframes, start times and duration as the fragmented source.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Timed, decode_errors, decoded_frames, duration, interleave};
use recorder::mp4::{Mp4Options, Mp4Recording, faststart, recover};
use recorder::params::{AudioParams, VideoConfig};

const STEREO: AudioParams = AudioParams {
    channels: 2,
    sample_rate: 48_000,
};

fn record(path: &Path, frames: &[Timed], audio: bool) -> Mp4Recording {
    let video = frames
        .iter()
        .filter(|(_, f)| f.keyframe)
        .find_map(|(_, f)| VideoConfig::from_keyframe(f));
    let audio = audio.then_some(STEREO);
    let mut rec = Mp4Recording::create(path, video, audio, Mp4Options::default()).expect("create");
    for (ns, frame) in frames {
        rec.write(frame, *ns).expect("write");
    }
    rec
}

fn assert_clean(path: &Path) {
    assert_eq!(
        decode_errors(path),
        "",
        "ffmpeg reported errors on {}",
        path.display()
    );
}

/// Top-level box types in file order.
fn top_level_boxes(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).expect("file");
    let mut pos = 0;
    let mut kinds = Vec::new();
    while pos + 8 <= data.len() {
        let mut size = u64::from(u32::from_be_bytes(
            data[pos..pos + 4].try_into().expect("4"),
        ));
        if size == 1 {
            size = u64::from_be_bytes(data[pos + 8..pos + 16].try_into().expect("8"));
        }
        kinds.push(String::from_utf8_lossy(&data[pos + 4..pos + 8]).into_owned());
        if size < 8 {
            break;
        }
        pos += size as usize;
    }
    kinds
}

fn probe(path: &Path, stream: &str, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(["-show_entries", entries, "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Packets FFprobe marks as keyframes.
fn keyframes(path: &Path, stream: &str) -> usize {
    probe(path, stream, "packet=flags")
        .lines()
        .filter(|l| l.starts_with('K'))
        .count()
}

fn start_time(path: &Path, stream: &str) -> f64 {
    probe(path, stream, "stream=start_time")
        .parse()
        .expect("start time")
}

/// The progressive file matches the fragmented one in every way a player
/// sees; its duration is `expected` give or take one video frame.
fn assert_same_media(fragmented: &Path, progressive: &Path, streams: &[&str], expected: f64) {
    assert_clean(progressive);
    let boxes = top_level_boxes(progressive);
    let moov = boxes.iter().position(|b| b == "moov").expect("moov");
    let mdat = boxes.iter().position(|b| b == "mdat").expect("mdat");
    assert!(moov < mdat, "moov after mdat: {boxes:?}");
    assert!(
        !boxes.iter().any(|b| b == "moof"),
        "still fragmented: {boxes:?}"
    );
    for &stream in streams {
        // Same decode and presentation times and keyframes (FFprobe
        // shows no packet durations for the fragmented file).
        let packets = "packet=pts,dts,flags";
        assert_eq!(
            probe(progressive, stream, packets),
            probe(fragmented, stream, packets),
            "{stream} packets"
        );
        assert_eq!(
            decoded_frames(progressive, stream),
            decoded_frames(fragmented, stream),
            "{stream} frames"
        );
        assert_eq!(
            keyframes(progressive, stream),
            keyframes(fragmented, stream),
            "{stream} keyframes"
        );
        let (a, b) = (
            start_time(fragmented, stream),
            start_time(progressive, stream),
        );
        assert!((a - b).abs() < 0.002, "{stream} starts at {a} then {b}");
    }
    let d = duration(progressive);
    assert!(
        (d - expected).abs() <= 1.0 / 30.0 + 0.001,
        "duration {d}, expected {expected}"
    );
}

#[test]
fn h264_and_opus() {
    let dir = common::workdir("faststart-h264");
    let video = common::h264(&dir, "320x240", 3.0, 0);
    let audio = common::opus(&dir, 3.0);
    let src = dir.join("rec.mp4");
    let summary = record(&src, &interleave(video, audio), true)
        .finish()
        .expect("finish");
    let dst = dir.join("fast.mp4");
    let fast = faststart(&src, &dst).expect("faststart");
    assert_eq!(fast.duration, summary.duration);
    assert_eq!(fast.bytes, std::fs::metadata(&dst).expect("file").len());
    assert_same_media(&src, &dst, &["v:0", "a:0"], duration(&src));
    assert_eq!(decoded_frames(&dst, "v:0"), 90);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn av1_and_opus_with_late_video() {
    let dir = common::workdir("faststart-av1");
    // Audio from 0, the first video keyframe 0.4 s later: kept by an
    // edit list.
    let video: Vec<Timed> = common::av1(&dir, "320x240", 2.0, 0)
        .into_iter()
        .map(|(ns, f)| (ns + 400_000_000, f))
        .collect();
    let n = video.len() as u64;
    let audio = common::opus(&dir, 2.4);
    let src = dir.join("rec.mp4");
    let summary = record(&src, &interleave(video, audio), true)
        .finish()
        .expect("finish");
    let dst = dir.join("fast.mp4");
    faststart(&src, &dst).expect("faststart");
    // FFprobe adds the video's start to the fragmented file's duration
    // (2.8 s here); the recording's own end is the reference.
    let expected = summary.duration.as_secs_f64();
    assert_same_media(&src, &dst, &["v:0", "a:0"], expected);
    assert_eq!(decoded_frames(&dst, "v:0"), n);
    let v = start_time(&dst, "v:0");
    assert!((v - 0.4).abs() < 0.002, "video starts at {v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn audio_only() {
    let dir = common::workdir("faststart-opus");
    let audio = common::opus(&dir, 3.0);
    let n = audio.len() as u64;
    let src = dir.join("rec.mp4");
    let mut rec =
        Mp4Recording::create(&src, None, Some(STEREO), Mp4Options::default()).expect("create");
    for (ns, frame) in &audio {
        rec.write(frame, *ns).expect("write");
    }
    rec.finish().expect("finish");
    let dst = dir.join("fast.mp4");
    faststart(&src, &dst).expect("faststart");
    assert_same_media(&src, &dst, &["a:0"], duration(&src));
    assert_eq!(decoded_frames(&dst, "a:0"), n);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recovered_and_torn_recordings() {
    let dir = common::workdir("faststart-recovered");
    let video = common::vp9(&dir, "320x240", 3.0, 0);
    let audio = common::opus(&dir, 3.0);
    let full = dir.join("full.mp4");
    record(&full, &interleave(video, audio), true)
        .finish()
        .expect("finish");
    let data = std::fs::read(&full).expect("file");
    // Cut inside the last fragment, as a crash mid-write would.
    let cut = data.len() * 5 / 6;
    let torn = dir.join("torn.mp4");
    std::fs::write(&torn, &data[..cut]).expect("write");
    // The torn fragment is skipped without recovering first...
    let from_torn = faststart(&torn, &dir.join("fast-torn.mp4")).expect("faststart torn");
    // ...and gives what the recovered file gives.
    let summary = recover(&torn).expect("recover");
    let dst = dir.join("fast.mp4");
    let fast = faststart(&torn, &dst).expect("faststart");
    assert_eq!(fast.duration, summary.duration);
    assert_eq!(from_torn, fast);
    assert_same_media(&torn, &dst, &["v:0", "a:0"], duration(&torn));
    assert!(decoded_frames(&dst, "v:0") >= 60);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn not_a_recording_is_an_error() {
    let dir = common::workdir("faststart-junk");
    let src = dir.join("junk.mp4");
    for data in [&b""[..], b"\0\0\0\x10ftypisom\0\0\0\0", &[0xff; 100]] {
        std::fs::write(&src, data).expect("write");
        assert!(faststart(&src, &dir.join("out.mp4")).is_err());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
