//! Real, decodable media for publishers: a clip encoded once with ffmpeg
//! (H264, VP8, VP9 or AV1 video; Opus audio), cached on disk, and split into
//! the frames and packets an encoder would hand to WebRTC.
//!
//! The content is made for checking recordings: lavfi `testsrc` (it draws a
//! frame counter) with a white full-frame flash on the first frame of every
//! second, and audio that is a 1 kHz beep for the first 50 ms of every
//! second and silence otherwise. A flash and a beep start together at every
//! whole second, so [`crate::probe::av_offsets`] can measure A/V sync in a
//! recording.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use rtc::rtp::packetizer::Payloader;

use crate::synth::VideoCodec;

/// Bump when the encoding recipe changes, so stale cached files are not used.
const RECIPE: u32 = 1;

/// What to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipSpec {
    pub video: Option<VideoCodec>,
    /// Opus audio, 48 kHz stereo, 20 ms packets.
    pub audio: bool,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Length of the clip; a publisher loops it. Whole seconds keep the
    /// flash/beep marks on whole seconds across loops.
    pub seconds: u32,
    pub video_kbps: u32,
    pub audio_kbps: u32,
    /// Seconds between keyframes.
    pub keyframe_secs: u32,
}

impl ClipSpec {
    /// 640x360, 30 fps, ~1.5 Mbit/s, a keyframe every 2 s, with Opus audio.
    pub fn new(video: VideoCodec) -> Self {
        Self {
            video: Some(video),
            audio: true,
            width: 640,
            height: 360,
            fps: 30,
            seconds: 10,
            video_kbps: 1500,
            audio_kbps: 64,
            keyframe_secs: 2,
        }
    }

    /// The same clip without audio.
    pub fn video_only(video: VideoCodec) -> Self {
        Self {
            audio: false,
            ..Self::new(video)
        }
    }

    /// Frames between keyframes.
    pub fn gop(&self) -> u32 {
        (self.fps * self.keyframe_secs).max(1)
    }

    fn video_file_name(&self, codec: VideoCodec) -> String {
        let ext = if codec == VideoCodec::H264 {
            "h264"
        } else {
            "ivf"
        };
        format!(
            "flash-r{RECIPE}-{}-{}x{}-{}fps-{}s-{}k-g{}.{ext}",
            codec.name(),
            self.width,
            self.height,
            self.fps,
            self.seconds,
            self.video_kbps,
            self.gop()
        )
    }

    fn audio_file_name(&self) -> String {
        format!(
            "beep-r{RECIPE}-opus-{}s-{}k.ogg",
            self.seconds, self.audio_kbps
        )
    }

    /// The lavfi source of the video: testsrc plus a white frame at the
    /// start of every second.
    pub fn video_source(&self) -> String {
        format!(
            "testsrc=size={}x{}:rate={},\
             drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='eq(mod(n\\,{})\\,0)'",
            self.width, self.height, self.fps, self.fps
        )
    }

    /// The lavfi source of the audio: a 1 kHz beep for the first 50 ms of
    /// every second, silence otherwise.
    pub fn audio_source() -> String {
        let beep = "if(lt(mod(t\\,1)\\,0.05)\\,0.5*sin(2*PI*1000*t)\\,0)";
        format!("aevalsrc='{beep}|{beep}':s=48000:c=stereo")
    }

    /// ffmpeg encoder arguments for `codec` (after the input).
    pub fn video_encoder_args(&self, codec: VideoCodec) -> Result<Vec<String>> {
        let rate = format!("{}k", self.video_kbps);
        let gop = self.gop().to_string();
        let mut args: Vec<String> = match codec {
            // Constrained baseline level 3.1, as the clients' offer says
            // (profile-level-id=42e01f); SPS/PPS repeated at every IDR.
            VideoCodec::H264 => [
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-tune",
                "zerolatency",
                "-profile:v",
                "baseline",
                "-level",
                "3.1",
                "-bf",
                "0",
                "-sc_threshold",
                "0",
                "-x264-params",
                "repeat-headers=1",
            ]
            .map(String::from)
            .to_vec(),
            VideoCodec::Vp8 => [
                "-c:v",
                "libvpx",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-auto-alt-ref",
                "0",
                "-lag-in-frames",
                "0",
            ]
            .map(String::from)
            .to_vec(),
            VideoCodec::Vp9 => [
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-row-mt",
                "1",
                "-auto-alt-ref",
                "0",
                "-lag-in-frames",
                "0",
            ]
            .map(String::from)
            .to_vec(),
            VideoCodec::Av1 => match av1_encoder()? {
                "libaom-av1" => [
                    "-c:v",
                    "libaom-av1",
                    "-usage",
                    "realtime",
                    "-cpu-used",
                    "8",
                    "-lag-in-frames",
                    "0",
                ]
                .map(String::from)
                .to_vec(),
                "libsvtav1" => ["-c:v", "libsvtav1", "-preset", "12"]
                    .map(String::from)
                    .to_vec(),
                other => ["-c:v", other].map(String::from).to_vec(),
            },
        };
        args.extend(
            [
                "-b:v",
                &rate,
                "-maxrate",
                &rate,
                "-bufsize",
                &rate,
                "-g",
                &gop,
                "-keyint_min",
                &gop,
                "-pix_fmt",
                "yuv420p",
                "-f",
                if codec == VideoCodec::H264 {
                    "h264"
                } else {
                    "ivf"
                },
            ]
            .map(String::from),
        );
        Ok(args)
    }
}

/// Which AV1 encoder this ffmpeg has, in order of preference.
fn av1_encoder() -> Result<&'static str> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-encoders"])
        .output()
        .context("running ffmpeg -encoders (install ffmpeg)")?;
    let list = String::from_utf8_lossy(&out.stdout);
    ["libaom-av1", "libsvtav1", "librav1e"]
        .into_iter()
        .find(|name| {
            list.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name))
        })
        .context("this ffmpeg has no AV1 encoder")
}

/// One encoded frame (video) or packet (audio).
#[derive(Debug, Clone)]
pub struct Frame {
    /// H264: an Annex B access unit; VP8/VP9: one IVF frame; AV1: one
    /// temporal unit (OBUs with size fields); Opus: one packet.
    pub data: Bytes,
    /// Media time from the start of the clip.
    pub pts: Duration,
    pub duration: Duration,
    pub keyframe: bool,
}

/// An encoded clip, loaded.
#[derive(Debug, Clone)]
pub struct Clip {
    pub spec: ClipSpec,
    pub video: Vec<Frame>,
    pub audio: Vec<Frame>,
    pub video_path: Option<PathBuf>,
    pub audio_path: Option<PathBuf>,
    /// Samples (48 kHz) the Opus decoder outputs before the first real one.
    pub opus_pre_skip: u16,
}

/// Where clips are cached: `WHIPCORD_CLIP_DIR`, else `target/whipcord-clips`.
pub fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("WHIPCORD_CLIP_DIR") {
        return PathBuf::from(dir);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("whipcord-clips")
}

/// Runs ffmpeg with `args`, writing `out` atomically (a temporary name,
/// then a rename), unless `out` already exists.
fn encode_once(out: &Path, args: impl FnOnce(&Path) -> Result<Vec<String>>) -> Result<()> {
    if out.metadata().map(|m| m.len() > 0).unwrap_or(false) {
        return Ok(());
    }
    let dir = out.parent().context("no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = out.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let args = args(&tmp)?;
    let output = crate::probe::run_tool("ffmpeg", &args, Duration::from_secs(300))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "ffmpeg {} failed: {}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}

impl Clip {
    /// Encodes the clip unless cached, and loads it.
    pub fn ensure(spec: &ClipSpec) -> Result<Self> {
        Self::ensure_in(spec, &cache_dir())
    }

    pub fn ensure_in(spec: &ClipSpec, dir: &Path) -> Result<Self> {
        ensure!(spec.seconds > 0 && spec.fps > 0, "empty clip spec");
        let seconds = spec.seconds.to_string();
        let mut clip = Clip {
            spec: spec.clone(),
            video: Vec::new(),
            audio: Vec::new(),
            video_path: None,
            audio_path: None,
            opus_pre_skip: 0,
        };
        if let Some(codec) = spec.video {
            let path = dir.join(spec.video_file_name(codec));
            encode_once(&path, |tmp| {
                let mut args: Vec<String> = ["-hide_banner", "-loglevel", "error", "-y", "-t"]
                    .map(String::from)
                    .to_vec();
                args.push(seconds.clone());
                args.extend(["-f".into(), "lavfi".into(), "-i".into()]);
                args.push(spec.video_source());
                args.extend(spec.video_encoder_args(codec)?);
                args.push(tmp.display().to_string());
                Ok(args)
            })?;
            clip.video = load_video(codec, &path, spec)?;
            clip.video_path = Some(path);
        }
        if spec.audio {
            let path = dir.join(spec.audio_file_name());
            encode_once(&path, |tmp| {
                let mut args: Vec<String> = ["-hide_banner", "-loglevel", "error", "-y", "-t"]
                    .map(String::from)
                    .to_vec();
                args.push(seconds.clone());
                args.extend(["-f".into(), "lavfi".into(), "-i".into()]);
                args.push(ClipSpec::audio_source());
                args.extend(
                    [
                        "-c:a",
                        "libopus",
                        "-b:a",
                        &format!("{}k", spec.audio_kbps),
                        "-frame_duration",
                        "20",
                        "-application",
                        "lowdelay",
                        "-f",
                        "ogg",
                    ]
                    .map(String::from),
                );
                args.push(tmp.display().to_string());
                Ok(args)
            })?;
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let (pre_skip, packets) = ogg_opus_packets(&data)?;
            clip.opus_pre_skip = pre_skip;
            let mut pts = Duration::ZERO;
            let total = Duration::from_secs(u64::from(spec.seconds));
            for data in packets {
                let duration = opus_packet_duration(&data)
                    .with_context(|| format!("bad Opus packet in {}", path.display()))?;
                // The encoder's padding makes the stream a little longer
                // than the clip; loops must stay exactly `seconds` long.
                if pts + duration > total {
                    break;
                }
                clip.audio.push(Frame {
                    data,
                    pts,
                    duration,
                    keyframe: true,
                });
                pts += duration;
            }
            ensure!(
                pts == total,
                "{} holds {pts:?} of Opus, want {total:?}",
                path.display()
            );
            clip.audio_path = Some(path);
        }
        Ok(clip)
    }

    /// The clip's length: one loop.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.spec.seconds))
    }
}

fn load_video(codec: VideoCodec, path: &Path, spec: &ClipSpec) -> Result<Vec<Frame>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let frames: Vec<(Bytes, bool)> = match codec {
        VideoCodec::H264 => crate::media_file::access_units(&data)
            .into_iter()
            .map(|au| (au.data, au.keyframe))
            .collect(),
        VideoCodec::Vp8 | VideoCodec::Vp9 | VideoCodec::Av1 => {
            let (_, frames) = ivf_frames(&data)?;
            frames
                .into_iter()
                .map(|(_, f)| {
                    let key = match codec {
                        VideoCodec::Vp8 => vp8_is_keyframe(&f),
                        VideoCodec::Vp9 => vp9_is_keyframe(&f),
                        _ => av1_has_sequence_header(&f),
                    };
                    (f, key)
                })
                .collect()
        }
    };
    let want = (spec.fps * spec.seconds) as usize;
    ensure!(
        frames.len() >= want,
        "{} holds {} frames, want {want}",
        path.display(),
        frames.len()
    );
    ensure!(
        frames[0].1,
        "{} does not start with a keyframe",
        path.display()
    );
    let frame_ns = 1_000_000_000 / u64::from(spec.fps);
    Ok(frames
        .into_iter()
        .take(want)
        .enumerate()
        .map(|(i, (data, keyframe))| Frame {
            data,
            pts: Duration::from_nanos(i as u64 * 1_000_000_000 / u64::from(spec.fps)),
            duration: Duration::from_nanos(frame_ns),
            keyframe,
        })
        .collect())
}

/// The IVF file header fields a reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvfHeader {
    pub fourcc: [u8; 4],
    pub width: u16,
    pub height: u16,
    pub timebase_den: u32,
    pub timebase_num: u32,
}

/// Splits an IVF file into (pts, frame).
pub fn ivf_frames(data: &[u8]) -> Result<(IvfHeader, Vec<(u64, Bytes)>)> {
    ensure!(data.len() >= 32 && &data[..4] == b"DKIF", "not an IVF file");
    let u16le = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let u32le = |o: usize| u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
    let header_len = usize::from(u16le(6));
    let header = IvfHeader {
        fourcc: [data[8], data[9], data[10], data[11]],
        width: u16le(12),
        height: u16le(14),
        timebase_den: u32le(16),
        timebase_num: u32le(20),
    };
    let mut frames = Vec::new();
    let mut pos = header_len.max(32);
    while pos + 12 <= data.len() {
        let size = u32le(pos) as usize;
        let pts = u64::from_le_bytes(data[pos + 4..pos + 12].try_into()?);
        let start = pos + 12;
        ensure!(start + size <= data.len(), "IVF frame cut off at {pos}");
        frames.push((pts, Bytes::copy_from_slice(&data[start..start + size])));
        pos = start + size;
    }
    Ok((header, frames))
}

/// Reads an Ogg Opus stream: the pre-skip from `OpusHead`, and the audio
/// packets (without the two header packets).
pub fn ogg_opus_packets(data: &[u8]) -> Result<(u16, Vec<Bytes>)> {
    let mut packets = Vec::new();
    let mut current = Vec::new();
    let mut pos = 0;
    while pos + 27 <= data.len() {
        ensure!(&data[pos..pos + 4] == b"OggS", "no Ogg page at {pos}");
        let segments = usize::from(data[pos + 26]);
        let table_end = pos + 27 + segments;
        ensure!(table_end <= data.len(), "Ogg page cut off at {pos}");
        let mut body = table_end;
        for &lace in &data[pos + 27..table_end] {
            let lace = usize::from(lace);
            ensure!(body + lace <= data.len(), "Ogg segment cut off at {body}");
            current.extend_from_slice(&data[body..body + lace]);
            body += lace;
            if lace < 255 {
                packets.push(Bytes::from(std::mem::take(&mut current)));
            }
        }
        pos = body;
    }
    ensure!(
        packets.len() >= 2 && packets[0].starts_with(b"OpusHead") && packets[0].len() >= 12,
        "not an Ogg Opus stream"
    );
    let pre_skip = u16::from_le_bytes([packets[0][10], packets[0][11]]);
    ensure!(packets[1].starts_with(b"OpusTags"), "no OpusTags packet");
    Ok((pre_skip, packets.split_off(2)))
}

/// How much audio an Opus packet holds (RFC 6716 3.1).
pub fn opus_packet_duration(packet: &[u8]) -> Option<Duration> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame_us: u64 = match config {
        0..=11 => [10_000, 20_000, 40_000, 60_000][usize::from(config % 4)],
        12..=15 => [10_000, 20_000][usize::from(config % 2)],
        _ => [2_500, 5_000, 10_000, 20_000][usize::from(config % 4)],
    };
    let frames: u64 = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3f),
    };
    Some(Duration::from_micros(frame_us * frames))
}

/// VP8 frame tag: bit 0 of the first byte is 0 on a key frame.
pub fn vp8_is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// VP9 uncompressed header: frame_marker(2) profile(2, +1 reserved bit for
/// profile 3) show_existing_frame(1) frame_type(1, 0 = key).
pub fn vp9_is_keyframe(frame: &[u8]) -> bool {
    let Some(&b) = frame.first() else {
        return false;
    };
    if b >> 6 != 0b10 {
        return false;
    }
    let profile = ((b >> 4) & 1) << 1 | ((b >> 5) & 1);
    let mut bit = 4; // index of the next bit, from the MSB
    if profile == 3 {
        bit += 1;
    }
    let read = |i: usize| (b >> (7 - i)) & 1;
    if read(bit) == 1 {
        return false; // show_existing_frame
    }
    read(bit + 1) == 0
}

/// Reads an AV1 leb128 value; returns (value, bytes used).
fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in data.iter().take(8).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The OBU types in an AV1 temporal unit (low-overhead format).
pub fn av1_obu_types(tu: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut pos = 0;
    while pos < tu.len() {
        let header = tu[pos];
        let obu_type = (header >> 3) & 0x0f;
        let mut p = pos + 1 + usize::from(header & 0x04 != 0);
        types.push(obu_type);
        if header & 0x02 == 0 {
            break; // no size field: the OBU runs to the end
        }
        let Some((size, n)) = tu.get(p..).and_then(leb128) else {
            break;
        };
        p += n + size as usize;
        pos = p;
    }
    types
}

/// Whether an AV1 temporal unit starts a coded video sequence (carries a
/// sequence header), which is how encoders mark keyframes for RTP.
pub fn av1_has_sequence_header(tu: &[u8]) -> bool {
    av1_obu_types(tu).contains(&1)
}

/// A VP9 payloader shaped like a browser's (RFC 9628 flexible mode): a
/// 15-bit picture id, P set with one reference (P_DIFF 1) on inter frames,
/// and the scalability structure with the resolution on keyframes. The
/// `rtc` one marks every frame as not inter-predicted, which makes every
/// frame look like a keyframe to a receiver.
#[derive(Debug, Clone)]
pub struct Vp9Payloader {
    pub picture_id: u16,
    pub width: u16,
    pub height: u16,
}

impl Vp9Payloader {
    pub fn new(width: u16, height: u16) -> Self {
        Self {
            picture_id: rand::random::<u16>() & 0x7fff,
            width,
            height,
        }
    }
}

impl Payloader for Vp9Payloader {
    fn payload(&mut self, mtu: usize, frame: &Bytes) -> rtc::shared::error::Result<Vec<Bytes>> {
        if frame.is_empty() || mtu < 16 {
            return Ok(vec![]);
        }
        let key = vp9_is_keyframe(frame);
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < frame.len() {
            let first = offset == 0;
            let mut header = BytesMut::with_capacity(12);
            // I P L F B E V Z
            let mut flags = 0x80 | 0x10;
            if !key {
                flags |= 0x40;
            }
            if first {
                flags |= 0x08;
            }
            let ss = key && first;
            if ss {
                flags |= 0x02;
            }
            header.put_u8(flags);
            header.put_u16(0x8000 | self.picture_id);
            if !key {
                header.put_u8(1 << 1); // P_DIFF 1, N = 0
            }
            if ss {
                // N_S = 0 (one layer), Y = 1 (resolution follows), G = 0.
                header.put_u8(0x10);
                header.put_u16(self.width);
                header.put_u16(self.height);
            }
            let room = mtu.saturating_sub(header.len()).max(1);
            let take = room.min(frame.len() - offset);
            if offset + take == frame.len() {
                header[0] |= 0x04;
            }
            header.put_slice(&frame[offset..offset + take]);
            out.push(header.freeze());
            offset += take;
        }
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        Ok(out)
    }

    fn clone_to(&self) -> Box<dyn Payloader> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_durations() {
        // CELT FB 20 ms, one frame.
        assert_eq!(
            opus_packet_duration(&[0xf8, 0xff]),
            Some(Duration::from_millis(20))
        );
        // SILK NB 60 ms (config 3), two frames.
        assert_eq!(
            opus_packet_duration(&[0x19, 0]),
            Some(Duration::from_millis(120))
        );
        // Code 3 with 3 frames of CELT 2.5 ms (config 16).
        assert_eq!(
            opus_packet_duration(&[0x83, 0x03]),
            Some(Duration::from_micros(7_500))
        );
        assert_eq!(opus_packet_duration(&[]), None);
    }

    #[test]
    fn ogg_pages_and_laced_packets() {
        fn page(segments: &[&[u8]]) -> Vec<u8> {
            let mut p = b"OggS".to_vec();
            p.extend_from_slice(&[0; 22]);
            let mut lacing = Vec::new();
            let mut body = Vec::new();
            for s in segments {
                let mut n = s.len();
                while n >= 255 {
                    lacing.push(255);
                    n -= 255;
                }
                lacing.push(n as u8);
                body.extend_from_slice(s);
            }
            p.push(lacing.len() as u8);
            p.extend(lacing);
            p.extend(body);
            p
        }
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 2, 0x78, 0, 0x80, 0xbb, 0, 0, 0, 0, 0]);
        let big = vec![0xf8u8; 300];
        let mut data = page(&[&head]);
        data.extend(page(&[b"OpusTags...."]));
        data.extend(page(&[&[0xf8, 1, 2], &big]));
        let (pre_skip, packets) = ogg_opus_packets(&data).unwrap();
        assert_eq!(pre_skip, 120);
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[1].len(), 300);
    }

    #[test]
    fn vp9_and_av1_keyframes() {
        // Profile 0, show_existing 0, frame_type 0.
        assert!(vp9_is_keyframe(&[0x82, 0x49]));
        // frame_type 1.
        assert!(!vp9_is_keyframe(&[0x86]));
        // show_existing_frame.
        assert!(!vp9_is_keyframe(&[0x88]));
        // TD (type 2, size 0), sequence header (type 1, size 1), frame.
        let tu = [0x12, 0x00, 0x0a, 0x01, 0xaa, 0x32, 0x01, 0xbb];
        assert_eq!(av1_obu_types(&tu), vec![2, 1, 6]);
        assert!(av1_has_sequence_header(&tu));
        assert!(!av1_has_sequence_header(&[0x12, 0x00, 0x32, 0x01, 0xbb]));
    }

    #[test]
    fn vp9_payloader_marks_inter_frames() {
        let mut p = Vp9Payloader::new(640, 360);
        let key = Bytes::from(vec![0x82u8; 2500]);
        let packets = p.payload(1188, &key).unwrap();
        assert_eq!(packets.len(), 3);
        assert_eq!(packets[0][0], 0x80 | 0x10 | 0x08 | 0x02);
        assert_eq!(&packets[0][3..8], &[0x10, 0x02, 0x80, 0x01, 0x68]);
        assert_eq!(packets[2][0] & 0x04, 0x04);
        assert!(packets.iter().all(|p| p.len() <= 1188));
        let inter = Bytes::from(vec![0x86u8; 100]);
        let packets = p.payload(1188, &inter).unwrap();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0][0], 0x80 | 0x40 | 0x10 | 0x08 | 0x04);
        assert_eq!(packets[0][3], 0x02);
    }
}
