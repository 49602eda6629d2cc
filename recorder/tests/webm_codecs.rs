//! WebM recordings of VP9 and AV1 (with Opus), configured from the first
//! keyframe as the gateway does, and a resolution change mid-stream; FFmpeg
//! must decode every frame without a message.

mod common;

use std::path::Path;

use common::{Timed, decode_errors, decoded_frames, duration, interleave};
use recorder::params::{AudioParams, VideoConfig};
use recorder::webm::WebmRecording;

fn record(path: &Path, frames: &[Timed], audio: bool) {
    let video = frames
        .iter()
        .filter(|(_, f)| f.keyframe)
        .find_map(|(_, f)| VideoConfig::from_keyframe(f));
    let audio = audio.then_some(AudioParams {
        channels: 2,
        sample_rate: 48_000,
    });
    let mut rec = WebmRecording::create(path, video, audio).expect("create");
    for (ns, frame) in frames {
        rec.write(frame, *ns).expect("write");
    }
    rec.finish().expect("finish");
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
fn vp9_and_opus() {
    let dir = common::workdir("webm-vp9");
    let video = common::vp9(&dir, "320x240", 2.0, 0);
    let n = video.len() as u64;
    let audio = common::opus(&dir, 2.0);
    let path = dir.join("rec.webm");
    record(&path, &interleave(video, audio), true);
    assert_clean(&path);
    assert_eq!(common::codec_name(&path, "v:0"), "vp9");
    assert_eq!(decoded_frames(&path, "v:0"), n);
    let d = duration(&path);
    assert!((d - 2.0).abs() < 0.1, "duration {d}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn av1_and_opus_with_codec_private() {
    let dir = common::workdir("webm-av1");
    let video = common::av1(&dir, "320x240", 2.0, 0);
    let n = video.len() as u64;
    let audio = common::opus(&dir, 2.0);
    let path = dir.join("rec.webm");
    record(&path, &interleave(video, audio), true);
    assert_clean(&path);
    assert_eq!(common::codec_name(&path, "v:0"), "av1");
    assert_eq!(decoded_frames(&path, "v:0"), n);
    // The av1C record (marker/version byte 0x81) is the track's
    // CodecPrivate: FFprobe shows it as extradata.
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=extradata_size", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe");
    let size: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("extradata size");
    assert!(size > 4, "av1C CodecPrivate missing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vp9_resolution_change() {
    let dir = common::workdir("webm-vp9-resize");
    let mut video = common::vp9(&dir, "320x240", 1.0, 0);
    let second = common::vp9(&dir, "640x360", 1.0, video.len() as u64);
    video.extend(second);
    let n = video.len() as u64;
    let path = dir.join("rec.webm");
    record(&path, &video, false);
    assert_clean(&path);
    assert_eq!(decoded_frames(&path, "v:0"), n);
    let widths = common::frame_widths(&path);
    assert_eq!(widths.first(), Some(&320));
    assert_eq!(widths.last(), Some(&640));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn av1_resolution_change() {
    let dir = common::workdir("webm-av1-resize");
    let mut video = common::av1(&dir, "320x240", 1.0, 0);
    let second = common::av1(&dir, "640x360", 1.0, video.len() as u64);
    video.extend(second);
    let n = video.len() as u64;
    let path = dir.join("rec.webm");
    record(&path, &video, false);
    assert_clean(&path);
    assert_eq!(decoded_frames(&path, "v:0"), n);
    let widths = common::frame_widths(&path);
    assert_eq!(widths.first(), Some(&320));
    assert_eq!(widths.last(), Some(&640));
    let _ = std::fs::remove_dir_all(&dir);
}
