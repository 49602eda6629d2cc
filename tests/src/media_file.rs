//! A real H264 elementary stream for load tests: encoded once with ffmpeg
//! (`libx264`, 720p30, ~2.5 Mbit/s, a keyframe every 2 s, no B-frames),
//! cached on disk, and split into access units that a
//! `TrackLocalStaticSample` can packetize one frame at a time.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use bytes::Bytes;

/// What to encode.
#[derive(Debug, Clone)]
pub struct H264Spec {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub seconds: u32,
    pub kbps: u32,
    /// Frames between keyframes.
    pub gop: u32,
}

impl Default for H264Spec {
    fn default() -> Self {
        Self {
            width: 1280,
            height: 720,
            fps: 30,
            seconds: 10,
            kbps: 2500,
            gop: 60,
        }
    }
}

impl H264Spec {
    fn file_name(&self) -> String {
        format!(
            "testsrc2-{}x{}-{}fps-{}s-{}k-g{}.h264",
            self.width, self.height, self.fps, self.seconds, self.kbps, self.gop
        )
    }

    /// The ffmpeg arguments that produce the file (constrained baseline, so
    /// the stream matches the `profile-level-id=42e01f` the clients offer).
    pub fn ffmpeg_args(&self, out: &Path) -> Vec<String> {
        let rate = format!("{}k", self.kbps);
        let buf = format!("{}k", self.kbps / 2);
        [
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &format!(
                "testsrc2=size={}x{}:rate={}",
                self.width, self.height, self.fps
            ),
            "-t",
            &self.seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-profile:v",
            "baseline",
            "-b:v",
            &rate,
            "-maxrate",
            &rate,
            "-bufsize",
            &buf,
            "-g",
            &self.gop.to_string(),
            "-keyint_min",
            &self.gop.to_string(),
            "-sc_threshold",
            "0",
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "h264",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
    }

    /// Returns the cached file under `dir`, encoding it first if missing.
    pub fn ensure(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(self.file_name());
        if path.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            return Ok(path);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!("{}.tmp-{}", self.file_name(), std::process::id()));
        let status = Command::new("ffmpeg")
            .args(self.ffmpeg_args(&tmp))
            .status()
            .context("running ffmpeg (install it: apt-get install -y ffmpeg)")?;
        if !status.success() {
            let _ = std::fs::remove_file(&tmp);
            bail!("ffmpeg failed: {status}");
        }
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

/// One access unit (a frame), Annex B with start codes.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    pub data: Bytes,
    pub keyframe: bool,
}

/// The NAL units of an Annex B stream, without start codes.
pub fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (start-code position, payload position)
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            let sc = if i > 0 && stream[i - 1] == 0 {
                i - 1
            } else {
                i
            };
            starts.push((sc, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &(_, begin)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(stream.len(), |&(sc, _)| sc);
        // Trailing zero bytes belong to no NAL unit.
        let mut e = end;
        while e > begin && stream[e - 1] == 0 {
            e -= 1;
        }
        if e > begin {
            out.push(&stream[begin..e]);
        }
    }
    out
}

/// Groups NAL units into access units (H.264 7.4.1.2.3): a new one begins
/// at an AUD, SPS, PPS, SEI or types 14–18 after a slice, or at a slice
/// whose `first_mb_in_slice` is 0 (x264's `zerolatency` uses several slices
/// per frame).
pub fn access_units(stream: &[u8]) -> Vec<AccessUnit> {
    let mut out = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut has_slice = false;
    let mut keyframe = false;
    for nal in nal_units(stream) {
        let t = nal[0] & 0x1f;
        let is_slice = matches!(t, 1..=5);
        let starts_au = if is_slice {
            // first_mb_in_slice is ue(v); value 0 is the single bit '1'.
            has_slice && nal.get(1).is_some_and(|b| b & 0x80 != 0)
        } else {
            has_slice && matches!(t, 6..=9 | 14..=18)
        };
        if starts_au {
            out.push(AccessUnit {
                data: Bytes::from(std::mem::take(&mut current)),
                keyframe,
            });
            has_slice = false;
            keyframe = false;
        }
        current.extend_from_slice(&[0, 0, 0, 1]);
        current.extend_from_slice(nal);
        if is_slice {
            has_slice = true;
        }
        if t == 5 {
            keyframe = true;
        }
    }
    if has_slice {
        out.push(AccessUnit {
            data: Bytes::from(current),
            keyframe,
        });
    }
    out
}

/// Reads and splits a file.
pub fn load_access_units(path: &Path) -> Result<Vec<AccessUnit>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let aus = access_units(&data);
    if aus.is_empty() {
        bail!("{} holds no H264 access units", path.display());
    }
    if !aus[0].keyframe {
        bail!("{} does not start with a keyframe", path.display());
    }
    Ok(aus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_and_slices() {
        let mut s = Vec::new();
        let mut nal = |bytes: &[u8]| {
            s.extend_from_slice(&[0, 0, 0, 1]);
            s.extend_from_slice(bytes);
        };
        nal(&[0x67, 1, 2]); // SPS
        nal(&[0x68, 3]); // PPS
        nal(&[0x06, 5]); // SEI
        nal(&[0x65, 0x88, 1]); // IDR slice, first_mb = 0
        nal(&[0x65, 0x40, 2]); // IDR slice, first_mb != 0
        nal(&[0x41, 0x9a, 3]); // P slice, first_mb = 0: new AU
        nal(&[0x41, 0x20, 3]); // P slice continued
        nal(&[0x41, 0x9a, 4, 0]); // next P frame (trailing zero dropped)
        let aus = access_units(&s);
        assert_eq!(aus.len(), 3);
        assert!(aus[0].keyframe);
        assert!(!aus[1].keyframe && !aus[2].keyframe);
        assert_eq!(nal_units(&aus[0].data).len(), 5);
        assert_eq!(nal_units(&aus[1].data).len(), 2);
        assert_eq!(nal_units(&aus[2].data), vec![&[0x41, 0x9a, 4][..]]);
    }

    #[test]
    fn three_byte_start_codes() {
        let s = [0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 1, 0x65, 0x88];
        let n = nal_units(&s);
        assert_eq!(n, vec![&[0x67, 1][..], &[0x68, 2][..], &[0x65, 0x88][..]]);
        assert_eq!(access_units(&s).len(), 1);
    }
}
