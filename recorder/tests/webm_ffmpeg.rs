//! WebM files written by the recorder, checked by FFmpeg decoding every
//! frame: once finished cleanly, once cut off as a crash would leave it.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use recorder::codec::Codec;
use recorder::rtp::Frame;
use recorder::webm::{VideoParams, WebmRecording, vp8_dimensions};

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("whipcord-webm-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// 3 s of 320x240 VP8 at 30 fps from FFmpeg's test source, as IVF frames.
fn vp8_frames(dir: &Path) -> Vec<(u64, Bytes)> {
    let ivf = dir.join("src.ivf");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
        ])
        .args([
            "-t", "3", "-c:v", "libvpx", "-g", "30", "-b:v", "400k", "-f", "ivf",
        ])
        .arg(&ivf)
        .status()
        .expect("ffmpeg must be installed (scripts/test.sh installs it)");
    assert!(status.success(), "ffmpeg could not encode the test clip");
    let data = std::fs::read(&ivf).expect("ivf");
    let header_len = usize::from(u16::from_le_bytes([data[6], data[7]]));
    let mut frames = Vec::new();
    let mut rest = &data[header_len..];
    while rest.len() >= 12 {
        let size = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let pts = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
        frames.push((pts, Bytes::copy_from_slice(&rest[12..12 + size])));
        rest = &rest[12 + size..];
    }
    frames
}

fn write(path: &Path, frames: &[(u64, Bytes)]) -> WebmRecording<std::fs::File> {
    let (width, height) = vp8_dimensions(&frames[0].1).expect("first frame is a keyframe");
    assert_eq!((width, height), (320, 240));
    let video = VideoParams {
        codec: Codec::Vp8,
        width,
        height,
    };
    let mut recording = WebmRecording::create(path, Some(video), None).expect("create");
    for (pts, data) in frames {
        let frame = Frame {
            codec: Codec::Vp8,
            timestamp: *pts as i64 * 3000,
            keyframe: data[0] & 1 == 0,
            data: data.clone(),
            composition_offset: 0,
        };
        let ns = pts * 1_000_000_000 / 30;
        recording.write(&frame, ns).expect("write");
    }
    recording
}

/// Frames FFmpeg decodes, and whatever it reports as errors.
fn decode(path: &Path) -> (u64, String) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg");
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count() as u64;
    (frames, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn finished_webm_decodes_every_frame() {
    let dir = workdir("finished");
    let frames = vp8_frames(&dir);
    assert_eq!(frames.len(), 90);
    let path = dir.join("rec.webm");
    write(&path, &frames).finish().expect("finish");
    let (decoded, errors) = decode(&path);
    assert_eq!(errors, "", "ffmpeg reported errors");
    assert_eq!(decoded, 90);
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe");
    let duration: f64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .expect("duration");
    assert!((duration - 3.0).abs() < 0.1, "duration {duration}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cut_off_webm_still_decodes() {
    let dir = workdir("crash");
    let frames = vp8_frames(&dir);
    let path = dir.join("rec.webm");
    // No finish: what a kill -9 leaves. Leaking the recording keeps libwebm
    // from writing anything more on drop.
    std::mem::forget(write(&path, &frames));
    let (decoded, errors) = decode(&path);
    assert_eq!(errors, "", "ffmpeg reported errors on the cut-off file");
    // Everything but the last open cluster (at most a couple of seconds).
    assert!(decoded >= 30, "only {decoded} of 90 frames survived");
    eprintln!("{decoded} of 90 frames survived the cut");
    let _ = std::fs::remove_dir_all(&dir);
}
