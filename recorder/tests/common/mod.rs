//! Real media for the container tests: short clips encoded by FFmpeg and
//! split into the [`Frame`]s the RTP assembler would produce (H264 as
//! length-prefixed access units without AUDs, AV1 temporal units without
//! temporal delimiters, one Opus packet per frame), and FFmpeg/FFprobe
//! checks of what the writers made.

#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use recorder::codec::Codec;
use recorder::rtp::Frame;

/// A frame and its time on the recording's timeline.
pub type Timed = (u64, Frame);

pub fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("whipcord-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn ffmpeg(args: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .expect("ffmpeg must be installed (scripts/test.sh installs it)");
    assert!(
        status.success(),
        "ffmpeg could not encode {}",
        out.display()
    );
}

fn video_source(size: &str, seconds: f64) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc2=size={size}:rate=30"),
        "-t".into(),
        seconds.to_string(),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `seconds` of H264 (libx264, no B-frames, a keyframe every second) at
/// 30 fps, starting at `start_index` frames.
pub fn h264(dir: &Path, size: &str, seconds: f64, start_index: u64) -> Vec<Timed> {
    let out = dir.join(format!("src-{size}.h264"));
    let mut a = video_source(size, seconds);
    a.extend(
        [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "30",
            "-x264-params",
            "aud=1",
            "-f",
            "h264",
        ]
        .map(String::from),
    );
    ffmpeg(&args(&a), &out);
    let data = std::fs::read(&out).expect("h264");
    // Access unit delimiters (type 9) separate frames; IDR slices are 5.
    access_units(&data, Codec::H264, start_index, |h| {
        let t = h & 0x1f;
        (t == 9, t == 5)
    })
}

/// `seconds` of H265 (libx265, no B-frames, VPS/SPS/PPS before every
/// keyframe as WebRTC senders do) at 30 fps.
pub fn h265(dir: &Path, size: &str, seconds: f64, start_index: u64) -> Vec<Timed> {
    let out = dir.join(format!("src-{size}.h265"));
    let mut a = video_source(size, seconds);
    a.extend(
        [
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=error:aud=1:bframes=0:keyint=30:min-keyint=30:repeat-headers=1",
            "-f",
            "hevc",
        ]
        .map(String::from),
    );
    ffmpeg(&args(&a), &out);
    let data = std::fs::read(&out).expect("h265");
    // Access unit delimiters are type 35; IRAP pictures 16..=21.
    access_units(&data, Codec::H265, start_index, |h| {
        let t = (h >> 1) & 0x3f;
        (t == 35, (16..=21).contains(&t))
    })
}

/// Splits an Annex-B stream written with access unit delimiters into
/// 30 fps frames of 4-byte length-prefixed NAL units. `classify` tells,
/// from a NAL unit's first byte, whether it is a delimiter and whether it
/// makes the frame a keyframe.
fn access_units(
    data: &[u8],
    codec: Codec,
    start_index: u64,
    classify: impl Fn(u8) -> (bool, bool),
) -> Vec<Timed> {
    let mut frames = Vec::new();
    let mut au: Vec<u8> = Vec::new();
    let mut key = false;
    let flush = |au: &mut Vec<u8>, key: &mut bool, frames: &mut Vec<Timed>| {
        if au.is_empty() {
            return;
        }
        let index = start_index + frames.len() as u64;
        frames.push((
            index * 1_000_000_000 / 30,
            Frame {
                codec,
                timestamp: (index * 3000) as i64,
                keyframe: *key,
                data: Bytes::from(std::mem::take(au)),
                composition_offset: 0,
            },
        ));
        *key = false;
    };
    for nal in annexb_nals(data) {
        let Some(&header) = nal.first() else { continue };
        let (delimiter, keyframe) = classify(header);
        if delimiter {
            flush(&mut au, &mut key, &mut frames);
        } else {
            key |= keyframe;
            au.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            au.extend_from_slice(nal);
        }
    }
    flush(&mut au, &mut key, &mut frames);
    frames
}

fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::new();
    for (n, &s) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(data.len(), |next| next - 3);
        // A 4-byte start code leaves a zero at the end of the previous NAL.
        while end > s && data[end - 1] == 0 {
            end -= 1;
        }
        nals.push(&data[s..end]);
    }
    nals
}

/// `seconds` of VP9 (libvpx-vp9, realtime) at 30 fps, from IVF.
pub fn vp9(dir: &Path, size: &str, seconds: f64, start_index: u64) -> Vec<Timed> {
    let out = dir.join(format!("src-{size}.vp9.ivf"));
    let mut a = video_source(size, seconds);
    a.extend(
        [
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "30",
            "-b:v",
            "300k",
            "-f",
            "ivf",
        ]
        .map(String::from),
    );
    ffmpeg(&args(&a), &out);
    ivf_frames(&out, Codec::Vp9, start_index)
}

/// `seconds` of AV1 (libaom, fastest realtime settings) at 30 fps.
pub fn av1(dir: &Path, size: &str, seconds: f64, start_index: u64) -> Vec<Timed> {
    let out = dir.join(format!("src-{size}.av1.ivf"));
    let mut a = video_source(size, seconds);
    a.extend(
        [
            "-c:v",
            "libaom-av1",
            "-usage",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "30",
            "-b:v",
            "300k",
            "-f",
            "ivf",
        ]
        .map(String::from),
    );
    ffmpeg(&args(&a), &out);
    ivf_frames(&out, Codec::Av1, start_index)
}

fn ivf_frames(path: &Path, codec: Codec, start_index: u64) -> Vec<Timed> {
    let data = std::fs::read(path).expect("ivf");
    let header_len = usize::from(u16::from_le_bytes([data[6], data[7]]));
    let mut frames = Vec::new();
    let mut rest = &data[header_len..];
    while rest.len() >= 12 {
        let size = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let pts = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes")) + start_index;
        let mut frame = rest[12..12 + size].to_vec();
        let keyframe = match codec {
            // VP9: frame_type bit of the uncompressed header.
            Codec::Vp9 => frame[0] & 0x04 == 0,
            // AV1: a temporal unit with a sequence header starts a
            // keyframe in these libaom streams.
            _ => {
                frame = strip_av1_temporal_delimiter(&frame);
                frame.first().is_some_and(|b| (b >> 3) & 0x0f == 1)
            }
        };
        frames.push((
            pts * 1_000_000_000 / 30,
            Frame {
                codec,
                timestamp: (pts * 3000) as i64,
                keyframe,
                data: Bytes::from(frame),
                composition_offset: 0,
            },
        ));
        rest = &rest[12 + size..];
    }
    frames
}

/// libaom starts every temporal unit with a 2-byte temporal delimiter OBU
/// (`12 00`); RTP never carries it.
fn strip_av1_temporal_delimiter(tu: &[u8]) -> Vec<u8> {
    match tu {
        [0x12, 0x00, rest @ ..] => rest.to_vec(),
        _ => tu.to_vec(),
    }
}

/// `seconds` of stereo Opus (libopus, 20 ms packets) from a sine, read
/// from Ogg pages.
pub fn opus(dir: &Path, seconds: f64) -> Vec<Timed> {
    let out = dir.join("src.ogg");
    let src = format!("sine=frequency=440:sample_rate=48000:duration={seconds}");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            &src,
            "-ac",
            "2",
            "-c:a",
            "libopus",
            "-b:a",
            "64k",
            "-frame_duration",
            "20",
            "-f",
            "ogg",
        ],
        &out,
    );
    let data = std::fs::read(&out).expect("ogg");
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut current = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 27 && &rest[..4] == b"OggS" {
        let segments = usize::from(rest[26]);
        let table = &rest[27..27 + segments];
        let mut body = &rest[27 + segments..];
        for &lace in table {
            current.extend_from_slice(&body[..usize::from(lace)]);
            body = &body[usize::from(lace)..];
            if lace < 255 {
                packets.push(std::mem::take(&mut current));
            }
        }
        let page_len = 27 + segments + table.iter().map(|&l| usize::from(l)).sum::<usize>();
        rest = &rest[page_len..];
    }
    // OpusHead and OpusTags come first.
    packets
        .into_iter()
        .skip(2)
        .enumerate()
        .map(|(i, p)| {
            let i = i as u64;
            (
                i * 20_000_000,
                Frame {
                    codec: Codec::Opus,
                    timestamp: (i * 960) as i64,
                    keyframe: true,
                    data: Bytes::from(p),
                    composition_offset: 0,
                },
            )
        })
        .collect()
}

/// Both tracks in time order, as the gateway hands them to a writer.
pub fn interleave(a: Vec<Timed>, b: Vec<Timed>) -> Vec<Timed> {
    let mut all: Vec<Timed> = a.into_iter().chain(b).collect();
    all.sort_by_key(|(t, _)| *t);
    all
}

/// What `ffmpeg -v error -i f -f null -` prints: nothing for a clean file.
pub fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn probe(path: &Path, args: &[&str]) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The container's duration in seconds as FFprobe reports it.
pub fn duration(path: &Path) -> f64 {
    probe(
        path,
        &["-show_entries", "format=duration", "-of", "csv=p=0"],
    )
    .parse()
    .expect("duration")
}

/// Frames (or audio packets' frames) FFmpeg decodes from one stream
/// (`v:0`, `a:0`).
pub fn decoded_frames(path: &Path, stream: &str) -> u64 {
    probe(
        path,
        &[
            "-count_frames",
            "-select_streams",
            stream,
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ],
    )
    .parse()
    .expect("frame count")
}

/// The width of every decoded video frame, in order.
pub fn frame_widths(path: &Path) -> Vec<u32> {
    probe(
        path,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=width",
            "-of",
            "csv=p=0",
        ],
    )
    .lines()
    .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
    .collect()
}

/// The codec name FFprobe sees in a stream.
pub fn codec_name(path: &Path, stream: &str) -> String {
    probe(
        path,
        &[
            "-select_streams",
            stream,
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ],
    )
}
