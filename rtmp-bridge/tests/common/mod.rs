//! Test parts shared by the RTMP integration tests: real media encoded by
//! FFmpeg (split into the frames the RTP assembler produces), a real nginx
//! with the RTMP module (and the stream module terminating TLS), a test CA,
//! and FFmpeg/FFprobe checks of what nginx recorded.

#![allow(dead_code)] // each test binary uses a part

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use recorder::codec::Codec;
use recorder::rtp::Frame;

/// A temporary directory removed on drop (also when a test panics).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("whipcord-rtmp-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ffmpeg(args: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .expect("ffmpeg must be installed (scripts/test.sh installs it)");
    assert!(status.success(), "ffmpeg could not make {}", out.display());
}

/// `seconds` of 640x360 30 fps H264 (libx264 baseline, a keyframe every
/// second) as the RTP assembler hands it over: one frame per access unit,
/// NAL units with 4-byte lengths, parameter sets in-band, and (as some
/// publishers send) the access unit delimiter kept.
pub fn h264_frames(dir: &Path, seconds: u32) -> Vec<Frame> {
    h264_frames_gop(dir, seconds, 30)
}

/// [`h264_frames`] with a keyframe every `gop` frames.
pub fn h264_frames_gop(dir: &Path, seconds: u32, gop: u32) -> Vec<Frame> {
    let out = dir.join("src.h264");
    let src = format!("testsrc2=size=640x360:rate=30:duration={seconds}");
    let gop = gop.to_string();
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            &src,
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            &gop,
            "-pix_fmt",
            "yuv420p",
            "-x264-params",
            "aud=1",
            "-f",
            "h264",
        ],
        &out,
    );
    let data = std::fs::read(&out).expect("h264");
    let mut frames = Vec::new();
    let mut au: Vec<u8> = Vec::new();
    let mut key = false;
    let mut flush = |au: &mut Vec<u8>, key: &mut bool| {
        if au.is_empty() {
            return;
        }
        let index = frames.len() as i64;
        frames.push(Frame {
            codec: Codec::H264,
            timestamp: index * 3000,
            keyframe: *key,
            data: Bytes::from(std::mem::take(au)),
            composition_offset: 0,
        });
        *key = false;
    };
    for nal in annexb_nals(&data) {
        let Some(&header) = nal.first() else { continue };
        let t = header & 0x1f;
        if t == 9 {
            flush(&mut au, &mut key);
        }
        key |= t == 5;
        au.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        au.extend_from_slice(nal);
    }
    flush(&mut au, &mut key);
    frames
}

/// NAL units of an Annex-B byte stream.
pub fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
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

/// `seconds` of 48 kHz stereo AAC-LC from FFmpeg's encoder: raw frames
/// (ADTS headers stripped), 1024 samples each.
pub fn aac_frames(dir: &Path, seconds: u32) -> Vec<Bytes> {
    let out = dir.join("src.aac");
    let src = format!("sine=frequency=440:sample_rate=48000:duration={seconds}");
    ffmpeg(
        &[
            "-f", "lavfi", "-i", &src, "-ac", "2", "-ar", "48000", "-c:a", "aac", "-b:a", "128k",
            "-f", "adts",
        ],
        &out,
    );
    let data = std::fs::read(&out).expect("aac");
    let mut frames = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 7 {
        assert_eq!(rest[0], 0xff, "ADTS sync");
        assert_eq!(rest[1] & 0xf0, 0xf0, "ADTS sync");
        let header_len = if rest[1] & 1 == 1 { 7 } else { 9 };
        let frame_len = (usize::from(rest[3] & 3) << 11)
            | (usize::from(rest[4]) << 3)
            | (usize::from(rest[5]) >> 5);
        frames.push(Bytes::copy_from_slice(&rest[header_len..frame_len]));
        rest = &rest[frame_len..];
    }
    frames
}

// The nginx harness is shared with the end-to-end tests (not every test
// binary that includes this module starts nginx).
#[allow(unused_imports)]
pub use whipcord_tests::nginx::{Nginx, TlsFiles, free_port, test_pki};

/// A TCP proxy to `127.0.0.1:upstream` that holds each connection for
/// `stall` before relaying it: a destination that accepts but does not
/// answer, then recovers. Returns the port it listens on; its threads
/// live as long as the test process.
pub fn stalling_proxy(upstream: u16, stall: Duration) -> u16 {
    use std::io::copy;
    use std::net::Shutdown;
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
    let port = listener.local_addr().expect("proxy address").port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            std::thread::spawn(move || {
                std::thread::sleep(stall);
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (Ok(mut client_in), Ok(mut server_out)) =
                    (client.try_clone(), server.try_clone())
                else {
                    return;
                };
                let up = std::thread::spawn(move || {
                    let _ = copy(&mut client_in, &mut server_out);
                    let _ = server_out.shutdown(Shutdown::Write);
                });
                let _ = copy(&mut server, &mut client);
                let _ = client.shutdown(Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    port
}

/// Decode-order video packets of an FLV: (pts in ms, keyframe).
pub fn video_packets(path: &Path) -> Vec<(i64, bool)> {
    probe(
        path,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts,flags",
            "-of",
            "csv=p=0",
        ],
    )
    .lines()
    .filter_map(|line| {
        let (pts, flags) = line.split_once(',')?;
        Some((pts.parse().ok()?, flags.starts_with('K')))
    })
    .collect()
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

pub fn probe(path: &Path, args: &[&str]) -> String {
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

/// `codec_name,width,height` (video) or `codec_name,sample_rate,channels`.
pub fn stream_info(path: &Path, stream: &str, entries: &str) -> String {
    probe(
        path,
        &[
            "-select_streams",
            stream,
            "-show_entries",
            &format!("stream={entries}"),
            "-of",
            "csv=p=0",
        ],
    )
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

/// Frames FFmpeg decodes from one stream (`v:0`, `a:0`).
pub fn decoded_frames(path: &Path, stream: &str) -> u64 {
    stream_info_counted(path, stream)
        .parse()
        .expect("frame count")
}

fn stream_info_counted(path: &Path, stream: &str) -> String {
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
}
