//! Fragmented MP4 recordings checked by FFmpeg: every frame decodes without
//! a message, the duration and frame counts match what went in, and a file
//! cut off mid-fragment decodes cleanly after `recover`.

mod common;

use std::path::Path;

use common::{Timed, decode_errors, decoded_frames, duration, interleave};
use recorder::mp4::{Mp4Options, Mp4Recording, Mp4Summary, recover};
use recorder::params::{AudioParams, VideoConfig};

const STEREO: AudioParams = AudioParams {
    channels: 2,
    sample_rate: 48_000,
};

fn first_config(frames: &[Timed]) -> Option<VideoConfig> {
    frames
        .iter()
        .filter(|(_, f)| f.keyframe)
        .find_map(|(_, f)| VideoConfig::from_keyframe(f))
}

fn record(path: &Path, frames: &[Timed], audio: bool) -> Mp4Recording {
    let video = first_config(frames);
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

#[test]
fn h264_and_opus_decode_with_matching_duration() {
    let dir = common::workdir("mp4-h264");
    let video = common::h264(&dir, "320x240", 3.0, 0);
    assert_eq!(video.len(), 90);
    let audio = common::opus(&dir, 3.0);
    let audio_packets = audio.len() as u64;
    let path = dir.join("rec.mp4");
    let rec = record(&path, &interleave(video, audio), true);
    let written = rec.bytes_written();
    let summary = rec.finish().expect("finish");
    assert!(summary.bytes > written);
    assert_eq!(summary.bytes, std::fs::metadata(&path).expect("file").len());
    assert_clean(&path);
    assert_eq!(common::codec_name(&path, "v:0"), "h264");
    assert_eq!(common::codec_name(&path, "a:0"), "opus");
    assert_eq!(decoded_frames(&path, "v:0"), 90);
    assert_eq!(decoded_frames(&path, "a:0"), audio_packets);
    let d = duration(&path);
    assert!((d - 3.0).abs() < 0.1, "ffprobe duration {d}");
    assert!(
        (summary.duration.as_secs_f64() - 3.0).abs() < 0.1,
        "summary {summary:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn h265_and_opus_decode() {
    let dir = common::workdir("mp4-h265");
    let video = common::h265(&dir, "320x240", 2.0, 0);
    assert_eq!(video.len(), 60);
    let config = first_config(&video).expect("H265 config from the first keyframe");
    assert_eq!((config.width, config.height), (320, 240));
    let audio = common::opus(&dir, 2.0);
    let path = dir.join("rec.mp4");
    record(&path, &interleave(video, audio), true)
        .finish()
        .expect("finish");
    assert_clean(&path);
    assert_eq!(common::codec_name(&path, "v:0"), "hevc");
    assert_eq!(decoded_frames(&path, "v:0"), 60);
    let d = duration(&path);
    assert!((d - 2.0).abs() < 0.1, "ffprobe duration {d}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vp9_decodes() {
    let dir = common::workdir("mp4-vp9");
    let video = common::vp9(&dir, "320x240", 2.0, 0);
    let n = video.len() as u64;
    let path = dir.join("rec.mp4");
    record(&path, &video, false).finish().expect("finish");
    assert_clean(&path);
    assert_eq!(common::codec_name(&path, "v:0"), "vp9");
    assert_eq!(decoded_frames(&path, "v:0"), n);
    let d = duration(&path);
    assert!((d - 2.0).abs() < 0.1, "ffprobe duration {d}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn av1_and_opus_decode() {
    let dir = common::workdir("mp4-av1");
    let video = common::av1(&dir, "320x240", 2.0, 0);
    let n = video.len() as u64;
    let audio = common::opus(&dir, 2.0);
    let path = dir.join("rec.mp4");
    record(&path, &interleave(video, audio), true)
        .finish()
        .expect("finish");
    assert_clean(&path);
    assert_eq!(common::codec_name(&path, "v:0"), "av1");
    assert_eq!(decoded_frames(&path, "v:0"), n);
    let d = duration(&path);
    assert!((d - 2.0).abs() < 0.1, "ffprobe duration {d}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn audio_only_is_fragmented_by_time() {
    let dir = common::workdir("mp4-opus");
    let audio = common::opus(&dir, 3.0);
    let n = audio.len() as u64;
    let path = dir.join("rec.mp4");
    let mut rec =
        Mp4Recording::create(&path, None, Some(STEREO), Mp4Options::default()).expect("create");
    for (ns, frame) in &audio {
        rec.write(frame, *ns).expect("write");
    }
    rec.finish().expect("finish");
    assert_clean(&path);
    assert_eq!(decoded_frames(&path, "a:0"), n);
    let data = std::fs::read(&path).expect("file");
    assert!(count_boxes(&data, b"moof") >= 3, "one fragment per second");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn h264_resolution_change_decodes() {
    let dir = common::workdir("mp4-resize");
    let mut video = common::h264(&dir, "320x240", 1.5, 0);
    let second = common::h264(&dir, "640x360", 1.5, video.len() as u64);
    video.extend(second);
    let n = video.len() as u64;
    let path = dir.join("rec.mp4");
    record(&path, &video, false).finish().expect("finish");
    assert_clean(&path);
    assert_eq!(decoded_frames(&path, "v:0"), n);
    let widths = common::frame_widths(&path);
    assert_eq!(widths.first(), Some(&320));
    assert_eq!(widths.last(), Some(&640));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn repeated_and_backward_times_do_not_fail() {
    let dir = common::workdir("mp4-times");
    let mut video = common::h264(&dir, "320x240", 1.0, 0);
    // Frame 10 claims the time of frame 9, frame 20 a time before it.
    video[10].0 = video[9].0;
    video[20].0 = video[18].0;
    let path = dir.join("rec.mp4");
    let rec = record(&path, &video, false);
    assert_eq!(rec.retimed_frames, 2);
    rec.finish().expect("finish");
    assert_clean(&path);
    assert_eq!(decoded_frames(&path, "v:0"), 30);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn frames_before_the_first_keyframe_are_skipped() {
    let dir = common::workdir("mp4-skip");
    let video = common::h264(&dir, "320x240", 2.0, 0);
    let path = dir.join("rec.mp4");
    // Start mid-GOP: the config comes from the next keyframe (frame 30).
    let rec = record(&path, &video[5..], false);
    assert_eq!(rec.skipped_frames, 25);
    rec.finish().expect("finish");
    assert_clean(&path);
    assert_eq!(decoded_frames(&path, "v:0"), 30);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Top-level boxes of a type (walks box headers).
fn count_boxes(data: &[u8], kind: &[u8; 4]) -> usize {
    let mut pos = 0;
    let mut count = 0;
    while pos + 8 <= data.len() {
        let size = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4")) as usize;
        if &data[pos + 4..pos + 8] == kind {
            count += 1;
        }
        if size < 8 {
            break;
        }
        pos += size;
    }
    count
}

/// Offsets where each `moof` begins.
fn moof_offsets(data: &[u8]) -> Vec<usize> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos + 8 <= data.len() {
        let size = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4")) as usize;
        if &data[pos + 4..pos + 8] == b"moof" {
            out.push(pos);
        }
        if size < 8 {
            break;
        }
        pos += size;
    }
    out
}

#[test]
fn cut_off_file_decodes_after_recover() {
    let dir = common::workdir("mp4-cut");
    let video = common::h264(&dir, "320x240", 3.0, 0);
    let audio = common::opus(&dir, 3.0);
    let full = dir.join("full.mp4");
    let summary = record(&full, &interleave(video, audio), true)
        .finish()
        .expect("finish");
    let data = std::fs::read(&full).expect("file");
    let moofs = moof_offsets(&data);
    assert!(moofs.len() >= 3, "fragments: {}", moofs.len());

    // A complete file is left alone, finished or not.
    let again = recover(&full).expect("recover complete");
    assert_eq!(again.bytes, summary.bytes);
    assert_eq!(again.duration, summary.duration);

    // Cut in the middle of the third fragment's media data, and inside the
    // third fragment's moof header: both keep the first two fragments.
    for cut in [
        (moofs[2] + moofs[3.min(moofs.len() - 1)]) / 2 + 100,
        moofs[2] + 20,
    ] {
        let cut = cut.min(data.len() - 1);
        let path = dir.join(format!("cut-{cut}.mp4"));
        std::fs::write(&path, &data[..cut]).expect("write cut");
        let Mp4Summary { duration: d, bytes } = recover(&path).expect("recover");
        assert_eq!(bytes, moofs[2] as u64, "cut at {cut}");
        assert_eq!(std::fs::metadata(&path).expect("file").len(), bytes);
        assert_clean(&path);
        assert!(d.as_secs_f64() >= 1.9, "kept {d:?} of two 1 s fragments");
        let probed = duration(&path);
        assert!(
            (probed - d.as_secs_f64()).abs() < 0.1,
            "ffprobe {probed} vs recover {d:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dropped_recording_keeps_complete_fragments() {
    let dir = common::workdir("mp4-drop");
    let video = common::vp9(&dir, "320x240", 3.0, 0);
    let path = dir.join("rec.mp4");
    // No finish: what a kill -9 leaves (fragments go out whole).
    let rec = record(&path, &video, false);
    let written = rec.bytes_written();
    drop(rec);
    assert_eq!(std::fs::metadata(&path).expect("file").len(), written);
    let summary = recover(&path).expect("recover");
    assert_eq!(summary.bytes, written, "nothing to cut");
    assert!(summary.duration.as_secs_f64() >= 1.9, "{summary:?}");
    assert_clean(&path);
    let frames = decoded_frames(&path, "v:0");
    assert!(frames >= 60, "only {frames} frames survived");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Start time of a stream in seconds.
fn start_time(path: &Path, stream: &str) -> f64 {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(["-show_entries", "stream=start_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("start time")
}

#[test]
fn video_starting_late_stays_in_sync() {
    let dir = common::workdir("mp4-late");
    // Audio from 0, the first video keyframe half a second later.
    let video: Vec<Timed> = common::h264(&dir, "320x240", 2.0, 0)
        .into_iter()
        .map(|(ns, f)| (ns + 500_000_000, f))
        .collect();
    let audio = common::opus(&dir, 2.5);
    let path = dir.join("rec.mp4");
    record(&path, &interleave(video, audio), true)
        .finish()
        .expect("finish");
    assert_clean(&path);
    let v = start_time(&path, "v:0");
    let a = start_time(&path, "a:0");
    assert!(
        (v - a - 0.5).abs() < 0.02,
        "video starts at {v}, audio at {a}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
