//! AAC-LC in MP4 checked by FFmpeg: FFmpeg's AAC encoder writes ADTS, the
//! headers are stripped into raw access units (what a transcoder hands
//! over), and the recording must decode every frame with the right format
//! and duration.

mod common;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use common::{Timed, decode_errors, decoded_frames, duration, interleave};
use recorder::codec::Codec;
use recorder::mp4::{AudioTrackConfig, Mp4Options, Mp4Recording, faststart};
use recorder::params::{AudioParams, VideoConfig};
use recorder::rtp::Frame;

/// `seconds` of a sine encoded by FFmpeg's AAC-LC encoder, as raw access
/// units timed 1024 samples apart.
fn aac(dir: &Path, seconds: f64, sample_rate: u32, channels: u32) -> Vec<Timed> {
    let out = dir.join(format!("src-{sample_rate}-{channels}.aac"));
    let src = format!("sine=frequency=440:sample_rate={sample_rate}:duration={seconds}");
    let status = Command::new("ffmpeg")
        .args([
            "-v", "error", "-y", "-f", "lavfi", "-i", &src, "-c:a", "aac",
        ])
        .args([
            "-ar",
            &sample_rate.to_string(),
            "-ac",
            &channels.to_string(),
        ])
        .args(["-f", "adts"])
        .arg(&out)
        .status()
        .expect("ffmpeg must be installed (scripts/test.sh installs it)");
    assert!(status.success(), "ffmpeg could not encode AAC");
    let data = std::fs::read(&out).expect("adts");
    raw_frames(&data)
        .into_iter()
        .enumerate()
        .map(|(i, unit)| {
            let samples = i as u64 * 1024;
            (
                samples * 1_000_000_000 / u64::from(sample_rate),
                Frame {
                    codec: Codec::Aac,
                    timestamp: samples as i64,
                    keyframe: false,
                    data: Bytes::copy_from_slice(unit),
                    composition_offset: 0,
                },
            )
        })
        .collect()
}

/// The payloads of an ADTS stream: each header is 7 bytes (9 with a CRC)
/// and gives the frame's whole length in 13 bits.
fn raw_frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    while data.len() >= 7 {
        assert_eq!((data[0], data[1] & 0xf0), (0xff, 0xf0), "ADTS sync word");
        let header = if data[1] & 1 == 1 { 7 } else { 9 };
        let len = (usize::from(data[3] & 0x03) << 11)
            | (usize::from(data[4]) << 3)
            | usize::from(data[5] >> 5);
        assert!(len > header && len <= data.len(), "ADTS frame length");
        frames.push(&data[header..len]);
        data = &data[len..];
    }
    frames
}

/// `key=value` lines FFprobe gives for the first audio stream.
fn audio_stream(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .args(["stream=codec_name,profile,sample_rate,channels,codec_tag_string"])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout).into_owned()
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
fn h264_and_aac_decode_with_matching_duration() {
    let dir = common::workdir("mp4-aac");
    let video = common::h264(&dir, "320x240", 3.0, 0);
    let config = video
        .iter()
        .find_map(|(_, f)| VideoConfig::from_keyframe(f))
        .expect("H264 config");
    let audio = aac(&dir, 3.0, 48_000, 2);
    let audio_frames = audio.len() as u64;
    // About 3 s, plus the encoder's priming frame.
    assert!((141..=143).contains(&audio_frames), "{audio_frames} frames");
    let path = dir.join("rec.mp4");
    let format = AudioTrackConfig::Aac(AudioParams {
        channels: 2,
        sample_rate: 48_000,
    });
    let mut rec =
        Mp4Recording::create_with_audio(&path, Some(config), Some(format), Mp4Options::default())
            .expect("create");
    for (ns, frame) in &interleave(video, audio) {
        rec.write(frame, *ns).expect("write");
    }
    let summary = rec.finish().expect("finish");
    assert_clean(&path);
    assert_eq!(common::codec_name(&path, "v:0"), "h264");
    let stream = audio_stream(&path);
    for line in [
        "codec_name=aac",
        "profile=LC",
        "codec_tag_string=mp4a",
        "sample_rate=48000",
        "channels=2",
    ] {
        assert!(stream.contains(line), "{line} in {stream}");
    }
    assert_eq!(decoded_frames(&path, "v:0"), 90);
    assert_eq!(decoded_frames(&path, "a:0"), audio_frames);
    let audio_seconds = audio_frames as f64 * 1024.0 / 48_000.0;
    let d = duration(&path);
    assert!((d - audio_seconds).abs() < 0.05, "ffprobe duration {d}");
    assert!(
        (summary.duration.as_secs_f64() - audio_seconds).abs() < 0.01,
        "summary {summary:?}"
    );

    // The progressive rewrite keeps the sample entry.
    let progressive = dir.join("fast.mp4");
    faststart(&path, &progressive).expect("faststart");
    assert_clean(&progressive);
    assert_eq!(decoded_frames(&progressive, "a:0"), audio_frames);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn aac_mono_at_44100_alone() {
    let dir = common::workdir("mp4-aac-mono");
    let audio = aac(&dir, 2.0, 44_100, 1);
    let n = audio.len() as u64;
    let path = dir.join("rec.mp4");
    let format = AudioTrackConfig::Aac(AudioParams {
        channels: 1,
        sample_rate: 44_100,
    });
    let mut rec = Mp4Recording::create_with_audio(&path, None, Some(format), Mp4Options::default())
        .expect("create");
    for (ns, frame) in &audio {
        rec.write(frame, *ns).expect("write");
    }
    rec.finish().expect("finish");
    assert_clean(&path);
    let stream = audio_stream(&path);
    assert!(stream.contains("sample_rate=44100"), "{stream}");
    assert!(stream.contains("channels=1"), "{stream}");
    assert_eq!(decoded_frames(&path, "a:0"), n);
    let d = duration(&path);
    let expected = n as f64 * 1024.0 / 44_100.0;
    assert!((d - expected).abs() < 0.05, "ffprobe duration {d}");
    let _ = std::fs::remove_dir_all(&dir);
}
