//! What is in a media file, asked of Debian's ffmpeg and ffprobe: decode
//! errors, duration, codecs, frame count, and the A/V offset of the
//! flash/beep marks that [`crate::clip`] clips carry.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Runs a tool with a time limit (coreutils `timeout`, then SIGKILL 5 s
/// later), capturing its output.
pub fn run_tool(program: &str, args: &[String], limit: Duration) -> Result<Output> {
    Command::new("timeout")
        .arg("-k")
        .arg("5")
        .arg(format!("{}", limit.as_secs().max(1)))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (install ffmpeg)"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

const LIMIT: Duration = Duration::from_secs(180);

/// Everything `ffmpeg -v error` says while decoding every frame of every
/// stream; empty for a clean file.
pub fn decode_errors(path: &Path) -> Result<String> {
    let mut args = strings(&["-hide_banner", "-nostdin", "-v", "error", "-i"]);
    args.push(path.display().to_string());
    // Frames keep the file's own times: converted to a constant frame rate,
    // two frames a camera sent closer than its nominal interval land on one
    // tick and the null muxer reports it, though the file is fine. A file
    // whose times really go back is still reported.
    args.extend(strings(&[
        "-enc_time_base",
        "-1",
        "-fps_mode",
        "passthrough",
        "-f",
        "null",
        "-",
    ]));
    let out = run_tool("ffmpeg", &args, LIMIT)?;
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() && text.is_empty() {
        text = format!("ffmpeg exited with {}", out.status);
    }
    Ok(text)
}

/// How many decoded video frames of `path` are B-frames (FFmpeg's
/// `pict_type`): proof that a B-frame source was kept as it was sent,
/// not re-encoded.
pub fn b_frames(path: &Path) -> Result<usize> {
    let mut args = strings(&[
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-show_entries",
        "frame=pict_type",
        "-of",
        "csv=p=0",
    ]);
    args.push(path.display().to_string());
    let out = run_tool("ffprobe", &args, LIMIT)?;
    if !out.status.success() {
        bail!(
            "ffprobe {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == "B")
        .count())
}

/// What ffprobe reports about a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    /// The container's duration, in seconds.
    pub duration: f64,
    /// ffprobe codec names: `h264`, `vp8`, `vp9`, `av1`, `opus`.
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    /// Frames decoded from the first video stream (`-count_frames`).
    pub video_frames: u64,
    pub width: u32,
    pub height: u32,
    pub format_name: String,
}

fn ffprobe_json(path: &Path, extra: &[&str]) -> Result<Value> {
    let mut args = strings(&["-v", "error", "-of", "json"]);
    args.extend(strings(extra));
    args.push(path.display().to_string());
    let out = run_tool("ffprobe", &args, LIMIT)?;
    if !out.status.success() {
        bail!(
            "ffprobe {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub fn probe(path: &Path) -> Result<Probe> {
    let info = ffprobe_json(
        path,
        &[
            "-show_entries",
            "format=duration,format_name:stream=codec_type,codec_name,width,height",
        ],
    )?;
    let mut probe = Probe {
        duration: number(&info["format"]["duration"]).unwrap_or(0.0),
        format_name: info["format"]["format_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        ..Probe::default()
    };
    for stream in info["streams"].as_array().into_iter().flatten() {
        let codec = stream["codec_name"].as_str().map(str::to_owned);
        match stream["codec_type"].as_str() {
            Some("video") if probe.video_codec.is_none() => {
                probe.video_codec = codec;
                probe.width = number(&stream["width"]).unwrap_or(0.0) as u32;
                probe.height = number(&stream["height"]).unwrap_or(0.0) as u32;
            }
            Some("audio") if probe.audio_codec.is_none() => probe.audio_codec = codec,
            _ => {}
        }
    }
    if probe.video_codec.is_some() {
        let counted = ffprobe_json(
            path,
            &[
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=nb_read_frames",
            ],
        )?;
        probe.video_frames = counted["streams"][0]
            .get("nb_read_frames")
            .and_then(number)
            .unwrap_or(0.0) as u64;
    }
    Ok(probe)
}

/// Per-frame values printed by ffmpeg's `metadata`/`ametadata` filters:
/// (pts_time, value of `key`).
fn parse_metadata(text: &str, key: &str) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut time = None;
    for line in text.lines() {
        if let Some(rest) = line.split("pts_time:").nth(1) {
            time = rest.split_whitespace().next().and_then(|t| t.parse().ok());
        } else if let Some((k, v)) = line.split_once('=')
            && k == key
            && let Some(t) = time
        {
            let value = match v.trim() {
                "-inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or(f64::NEG_INFINITY),
            };
            out.push((t, value));
        }
    }
    out
}

/// Average luma (YAVG, 16..235) above which a frame counts as the flash.
pub const FLASH_LUMA: f64 = 180.0;
/// Peak level (dBFS) of a 1 ms audio window above which it counts as beep.
pub const BEEP_DBFS: f64 = -20.0;
/// Quiet time a beep onset must follow.
pub const BEEP_GAP: f64 = 0.3;

/// Per-frame average luma and per-1 ms audio peak level of a file, both on
/// the timeline ffmpeg decodes them on (one run, so one origin).
pub struct MarkSeries {
    pub luma: Vec<(f64, f64)>,
    pub peak_dbfs: Vec<(f64, f64)>,
}

pub fn mark_series(path: &Path) -> Result<MarkSeries> {
    let tmp = std::env::temp_dir().join(format!(
        "whipcord-probe-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&tmp)?;
    let luma_file = tmp.join("luma.txt");
    let peak_file = tmp.join("peak.txt");
    let mut args = strings(&["-hide_banner", "-nostdin", "-v", "error", "-i"]);
    args.push(path.display().to_string());
    args.extend(strings(&["-map", "0:v:0", "-vf"]));
    args.push(format!(
        "signalstats,metadata=print:key=lavfi.signalstats.YAVG:file={}",
        luma_file.display()
    ));
    args.extend(strings(&["-f", "null", "-", "-map", "0:a:0", "-af"]));
    args.push(format!(
        "aformat=channel_layouts=mono,asetnsamples=n=48:p=0,astats=metadata=1:reset=1,\
         ametadata=print:key=lavfi.astats.Overall.Peak_level:file={}",
        peak_file.display()
    ));
    args.extend(strings(&["-f", "null", "-"]));
    let out = run_tool("ffmpeg", &args, LIMIT);
    let luma = std::fs::read_to_string(&luma_file).unwrap_or_default();
    let peak = std::fs::read_to_string(&peak_file).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&tmp);
    let out = out?;
    if !out.status.success() {
        bail!(
            "analysing {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(MarkSeries {
        luma: parse_metadata(&luma, "lavfi.signalstats.YAVG"),
        peak_dbfs: parse_metadata(&peak, "lavfi.astats.Overall.Peak_level"),
    })
}

/// Times of frames whose luma rises above [`FLASH_LUMA`] (the first frame
/// counts when it is bright).
pub fn flash_times(luma: &[(f64, f64)]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut bright = false;
    for &(t, y) in luma {
        let now = y > FLASH_LUMA;
        if now && !bright {
            out.push(t);
        }
        bright = now;
    }
    out
}

/// Times of beep onsets: a loud window after at least [`BEEP_GAP`] of quiet
/// ones. A stream that starts loud has no onset there (it may start
/// mid-beep).
pub fn beep_times(peaks: &[(f64, f64)]) -> Vec<f64> {
    let mut out = Vec::new();
    // Start of the current quiet run, if in one.
    let mut quiet_since: Option<f64> = None;
    for &(t, level) in peaks {
        if level > BEEP_DBFS {
            if quiet_since.is_some_and(|q| t - q >= BEEP_GAP) {
                out.push(t);
            }
            quiet_since = None;
        } else if quiet_since.is_none() {
            quiet_since = Some(t);
        }
    }
    out
}

/// Pairs each flash with the nearest beep onset within half a second:
/// (flash time, beep time), in seconds on the file's timeline.
pub fn pair_marks(flashes: &[f64], beeps: &[f64]) -> Vec<(f64, f64)> {
    flashes
        .iter()
        .filter_map(|&f| {
            beeps
                .iter()
                .copied()
                .min_by(|a, b| (a - f).abs().total_cmp(&(b - f).abs()))
                .filter(|b| (b - f).abs() < 0.5)
                .map(|b| (f, b))
        })
        .collect()
}

/// The flash/beep pairs of a recording of a [`crate::clip`] clip. The A/V
/// offset of a pair is `beep - flash` (positive: audio late).
pub fn av_offsets(path: &Path) -> Result<Vec<(f64, f64)>> {
    let series = mark_series(path)?;
    Ok(pair_marks(
        &flash_times(&series.luma),
        &beep_times(&series.peak_dbfs),
    ))
}

/// Checks that a recording of a [`crate::clip`] pattern has at least
/// `min_pairs` flash/beep pairs, every one within `limit_ms` of A/V offset;
/// returns (flash time, offset in ms) for the log.
pub fn check_av_sync(path: &Path, min_pairs: usize, limit_ms: f64) -> Result<Vec<(f64, f64)>> {
    let offsets: Vec<(f64, f64)> = av_offsets(path)?
        .iter()
        .map(|(f, b)| (*f, (b - f) * 1000.0))
        .collect();
    if offsets.len() < min_pairs {
        bail!("too few flash/beep pairs: {offsets:?}");
    }
    if let Some((flash, ms)) = offsets.iter().find(|(_, ms)| ms.abs() >= limit_ms) {
        bail!("beep {ms:.1} ms from the flash at {flash:.2} s; all: {offsets:?}");
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ClipSpec;

    #[test]
    fn parses_metadata_lines() {
        let text = "frame:0    pts:14      pts_time:0.014\nlavfi.signalstats.YAVG=235\n\
                    frame:1    pts:47      pts_time:0.047\nlavfi.signalstats.YAVG=125.5\n";
        assert_eq!(
            parse_metadata(text, "lavfi.signalstats.YAVG"),
            vec![(0.014, 235.0), (0.047, 125.5)]
        );
        let peaks = "frame:0 pts:0 pts_time:0\nlavfi.astats.Overall.Peak_level=-inf\n";
        assert_eq!(
            parse_metadata(peaks, "lavfi.astats.Overall.Peak_level"),
            vec![(0.0, f64::NEG_INFINITY)]
        );
    }

    #[test]
    fn onsets_need_quiet_before() {
        let mut peaks = Vec::new();
        for ms in 0..2500 {
            let t = f64::from(ms) / 1000.0;
            let loud = ms % 1000 < 50;
            peaks.push((t, if loud { -6.0 } else { f64::NEG_INFINITY }));
        }
        // The stream starts loud: no onset at 0.
        assert_eq!(beep_times(&peaks), vec![1.0, 2.0]);
        let luma = [(0.0, 235.0), (0.033, 120.0), (1.0, 235.0), (1.033, 235.0)];
        assert_eq!(flash_times(&luma), vec![0.0, 1.0]);
        assert_eq!(
            pair_marks(&[0.0, 1.0, 2.0], &[1.02, 2.6]),
            vec![(1.0, 1.02)]
        );
    }

    /// Makes a short flash/beep file directly with ffmpeg, the audio
    /// delayed by `audio_delay` seconds.
    fn make_file(name: &str, audio_delay: f64) -> std::path::PathBuf {
        let spec = ClipSpec {
            width: 320,
            height: 180,
            ..ClipSpec::new(crate::synth::VideoCodec::H264)
        };
        let dir = std::env::temp_dir().join(format!(
            "whipcord-probe-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let mut args = strings(&["-hide_banner", "-loglevel", "error", "-y", "-t", "4"]);
        args.extend(strings(&["-f", "lavfi", "-i"]));
        args.push(spec.video_source());
        if audio_delay != 0.0 {
            args.push("-itsoffset".into());
            args.push(audio_delay.to_string());
        }
        args.extend(strings(&["-t", "4", "-f", "lavfi", "-i"]));
        args.push(ClipSpec::audio_source());
        args.extend(strings(&[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "libopus",
            "-frame_duration",
            "20",
        ]));
        args.push(path.display().to_string());
        let out = run_tool("ffmpeg", &args, Duration::from_secs(60)).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    fn offsets_ms(path: &Path) -> Vec<f64> {
        let pairs = av_offsets(path).unwrap();
        eprintln!("{}: pairs {pairs:?}", path.display());
        pairs.iter().map(|(f, b)| (b - f) * 1000.0).collect()
    }

    #[test]
    fn analyser_sees_aligned_marks() {
        let path = make_file("aligned.mp4", 0.0);
        assert_eq!(decode_errors(&path).unwrap(), "");
        let p = probe(&path).unwrap();
        assert_eq!(p.video_codec.as_deref(), Some("h264"));
        assert_eq!(p.audio_codec.as_deref(), Some("opus"));
        assert_eq!((p.width, p.height), (320, 180));
        assert_eq!(p.video_frames, 120);
        assert!((p.duration - 4.0).abs() < 0.1, "{p:?}");
        let offsets = offsets_ms(&path);
        // The beep at 0 has no quiet before it; 1, 2, 3 s do.
        assert!(offsets.len() >= 3, "{offsets:?}");
        assert!(offsets.iter().all(|o| o.abs() < 10.0), "{offsets:?}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn analyser_measures_a_100ms_audio_delay() {
        let path = make_file("late.mkv", 0.1);
        let offsets = offsets_ms(&path);
        assert!(offsets.len() >= 3, "{offsets:?}");
        assert!(
            offsets.iter().all(|o| (o - 100.0).abs() < 10.0),
            "{offsets:?}"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
