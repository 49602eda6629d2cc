//! LL-HLS from real media: libx264 video with AAC or Opus audio from
//! FFmpeg, split into the frames the RTP assembler hands over, fed to the
//! muxer as pipeline output. FFmpeg must play back what the playlist lists
//! (every frame), the playlist must carry the LL-HLS tags with parts of
//! ~200 ms and `INDEPENDENT=YES` exactly on parts that start with a
//! keyframe, blocking reloads must wait for the segment or part asked for
//! and no longer, and the window must stay bounded.

mod common;
// The recorder's clip makers (H264 access units with times, Opus from
// Ogg): the same splitter the recorder's writers are tested with.
#[path = "../../recorder/tests/common/mod.rs"]
mod media;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{TempDir, aac_frames, h264_frames_gop};
use media::Timed;
use recorder::codec::Codec;
use recorder::params::{AudioParams, VideoConfig, VideoDetail};
use recorder::pipeline::{Output, RunEnd, RunStart, Timing};
use recorder::rtp::Frame;
use rtmp_bridge::hls::{
    HlsConfig, Muxer, MuxerState, RequestError, Resource, Store, parse_resource,
};

/// 2026-11-20T09:30:00Z, the wall clock of the first run's time zero.
const ANCHOR_SECS: u64 = 1_795_167_000;
const STEREO: AudioParams = AudioParams {
    channels: 2,
    sample_rate: 48_000,
};

fn anchor() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(ANCHOR_SECS)
}

/// A run's media: video (track 0) and audio (track 1) with their times.
struct Clip {
    video: Vec<Timed>,
    audio: Vec<Timed>,
    audio_codec: Codec,
}

/// `seconds` of `size` H264 at 30 fps with a keyframe every second, and
/// 48 kHz stereo AAC-LC.
fn h264_aac(dir: &Path, size: &str, seconds: u32) -> Clip {
    let video = media::h264(dir, size, f64::from(seconds), 0);
    let audio = aac_frames(dir, seconds)
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            let i = i as u64;
            (
                i * 1024 * 1_000_000_000 / 48_000,
                Frame {
                    codec: Codec::Aac,
                    timestamp: (i * 1024) as i64,
                    keyframe: true,
                    data,
                    composition_offset: 0,
                },
            )
        })
        .collect();
    Clip {
        video,
        audio,
        audio_codec: Codec::Aac,
    }
}

fn h264_opus(dir: &Path, size: &str, seconds: u32) -> Clip {
    Clip {
        video: media::h264(dir, size, f64::from(seconds), 0),
        audio: media::opus(dir, f64::from(seconds)),
        audio_codec: Codec::Opus,
    }
}

impl Clip {
    fn start(&self) -> Output {
        let video = self.video.first().map(|(_, f)| {
            let config = VideoConfig::from_keyframe(f).expect("the clip starts with a keyframe");
            (0, Codec::H264, config)
        });
        let audio = (!self.audio.is_empty()).then_some((1, self.audio_codec, STEREO));
        Output::Start(RunStart {
            video,
            audio,
            timing: Timing::Arrival,
        })
    }

    /// The frames in time order, the clip repeated `loops` times back to
    /// back (60 s of media from a 6 s encode).
    fn frames(&self, loops: u64) -> Vec<Output> {
        // The times `media::h264` gives frame n: n × 10⁹ / 30 ns.
        let length = self.video.len() as u64 * 1_000_000_000 / 30;
        let mut timed: Vec<(u64, usize, Frame)> = Vec::new();
        for k in 0..loops {
            let shift = k * length;
            timed.extend(self.video.iter().map(|(t, f)| (t + shift, 0, f.clone())));
            // Looped, the audio must not run into the next loop's.
            let audio = self.audio.iter().filter(|(t, _)| loops == 1 || *t < length);
            timed.extend(audio.map(|(t, f)| (t + shift, 1, f.clone())));
        }
        // Stable: at equal times video comes first, as the interleaver
        // gives it.
        timed.sort_by_key(|(t, track, _)| (*t, *track));
        timed
            .into_iter()
            .map(|(t, track, frame)| Output::Frame {
                track,
                time_ns: t as i64,
                frame,
            })
            .collect()
    }

    /// Start, every frame, End.
    fn run(&self) -> Vec<Output> {
        let mut outputs = vec![self.start()];
        outputs.extend(self.frames(1));
        outputs.push(Output::End(RunEnd::Finished));
        outputs
    }
}

fn time_of(output: &Output) -> Option<u64> {
    match output {
        Output::Frame { time_ns, .. } => Some(*time_ns as u64),
        _ => None,
    }
}

fn muxer() -> (Muxer, Store) {
    let muxer = Muxer::new(HlsConfig::default()).expect("default config");
    let store = muxer.store();
    (muxer, store)
}

// --- The playlist as a player reads it -----------------------------------

#[derive(Debug, Clone)]
struct PartLine {
    duration: f64,
    uri: String,
    independent: bool,
}

#[derive(Debug, Clone)]
struct SegmentLine {
    uri: String,
    duration: f64,
    pdt: Option<String>,
    parts: Vec<PartLine>,
    discontinuity: bool,
    map: Option<String>,
}

#[derive(Debug)]
struct Playlist {
    header: Vec<String>,
    media_sequence: u64,
    discontinuity_sequence: u64,
    first_map: String,
    segments: Vec<SegmentLine>,
    open_parts: Vec<PartLine>,
    open_pdt: Option<String>,
    hint: String,
    hints: usize,
    last_line: String,
}

fn attribute<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    list.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.trim_matches('"'))
    })
}

fn parse_playlist(text: &str) -> Playlist {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("#EXTM3U"));
    let mut p = Playlist {
        header: Vec::new(),
        media_sequence: u64::MAX,
        discontinuity_sequence: 0,
        first_map: String::new(),
        segments: Vec::new(),
        open_parts: Vec::new(),
        open_pdt: None,
        hint: String::new(),
        hints: 0,
        last_line: text.lines().last().unwrap_or_default().to_owned(),
    };
    let mut pdt = None;
    let mut parts = Vec::new();
    let mut discontinuity = false;
    let mut map = None;
    let mut duration = None;
    for line in lines {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            p.media_sequence = v.parse().expect("media sequence");
        } else if let Some(v) = line.strip_prefix("#EXT-X-DISCONTINUITY-SEQUENCE:") {
            p.discontinuity_sequence = v.parse().expect("discontinuity sequence");
        } else if let Some(v) = line.strip_prefix("#EXT-X-MAP:") {
            let uri = attribute(v, "URI").expect("map URI").to_owned();
            if p.first_map.is_empty() {
                p.first_map = uri;
            } else {
                map = Some(uri);
            }
        } else if line == "#EXT-X-DISCONTINUITY" {
            discontinuity = true;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            pdt = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            parts.push(PartLine {
                duration: attribute(v, "DURATION")
                    .and_then(|d| d.parse().ok())
                    .expect("part duration"),
                uri: attribute(v, "URI").expect("part URI").to_owned(),
                independent: attribute(v, "INDEPENDENT") == Some("YES"),
            });
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            duration = Some(
                v.trim_end_matches(',')
                    .parse::<f64>()
                    .expect("EXTINF duration"),
            );
        } else if let Some(v) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            assert_eq!(attribute(v, "TYPE"), Some("PART"));
            p.hint = attribute(v, "URI").expect("hint URI").to_owned();
            p.hints += 1;
        } else if line.starts_with('#') {
            assert!(
                p.segments.is_empty() && parts.is_empty(),
                "{line} after media"
            );
            p.header.push(line.to_owned());
        } else {
            p.segments.push(SegmentLine {
                uri: line.to_owned(),
                duration: duration.take().expect("EXTINF before the URI"),
                pdt: pdt.take(),
                parts: std::mem::take(&mut parts),
                discontinuity: std::mem::take(&mut discontinuity),
                map: map.take(),
            });
        }
    }
    p.open_parts = parts;
    p.open_pdt = pdt;
    p
}

fn msn_of(uri: &str) -> u64 {
    match parse_resource(uri) {
        Some(Resource::Segment { msn }) => msn,
        other => panic!("{uri} is not a segment: {other:?}"),
    }
}

/// The checks every playlist must pass.
fn check_playlist(p: &Playlist, store: &Store) {
    let header = p.header.join("\n");
    let target: f64 = header
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .and_then(|t| t.parse().ok())
        .expect("EXT-X-TARGETDURATION");
    assert!(target >= 2.0, "the configured target is the least");
    for tag in [
        "#EXT-X-VERSION:9",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600",
        "#EXT-X-PART-INF:PART-TARGET=0.200",
    ] {
        assert!(header.contains(tag), "{tag} missing from\n{header}");
    }
    assert!(!p.segments.is_empty());
    assert!(p.segments.len() <= 7, "at most the window is listed");
    assert_eq!(msn_of(&p.segments[0].uri), p.media_sequence);
    for (i, s) in p.segments.iter().enumerate() {
        assert_eq!(msn_of(&s.uri), p.media_sequence + i as u64, "consecutive");
        assert!(s.pdt.is_some(), "{} has a PROGRAM-DATE-TIME", s.uri);
        assert!(
            s.duration.round() <= target,
            "{}: EXTINF {} rounds above TARGETDURATION",
            s.uri,
            s.duration
        );
        // Parts only for the last two complete segments.
        let with_parts = i + 2 >= p.segments.len();
        assert_eq!(!s.parts.is_empty(), with_parts, "parts of {}", s.uri);
        if with_parts {
            let sum: f64 = s.parts.iter().map(|p| p.duration).sum();
            assert!((sum - s.duration).abs() < 0.0002, "{}: parts add up", s.uri);
            check_parts(&s.parts, msn_of(&s.uri), true);
        }
    }
    let open_msn = msn_of(&p.segments.last().expect("segments").uri) + 1;
    check_parts(&p.open_parts, open_msn, false);
    assert_eq!(p.open_pdt.is_some(), !p.open_parts.is_empty());
    assert_eq!(p.hints, 1, "exactly one preload hint");
    assert!(p.last_line.starts_with("#EXT-X-PRELOAD-HINT"));
    assert_eq!(
        parse_resource(&p.hint),
        Some(Resource::Part {
            msn: open_msn,
            index: p.open_parts.len() as u64
        })
    );
    // Every listed resource is there.
    let Some(Resource::Init { run }) = parse_resource(&p.first_map) else {
        panic!("map URI {}", p.first_map);
    };
    assert!(
        store.init_of_run(run).is_some(),
        "{} is served",
        p.first_map
    );
    for s in &p.segments {
        assert!(
            store.segment(msn_of(&s.uri)).is_some(),
            "{} is served",
            s.uri
        );
    }
}

/// Parts are at most the part target, at least 85 % of it except a
/// segment's last and independent ones (RFC 8216bis §4.4.4.9), named in
/// order.
fn check_parts(parts: &[PartLine], msn: u64, complete: bool) {
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(
            parse_resource(&part.uri),
            Some(Resource::Part {
                msn,
                index: i as u64
            })
        );
        assert!(
            part.duration <= 0.2 + 1e-9,
            "{} lasts {}",
            part.uri,
            part.duration
        );
        let last = complete && i + 1 == parts.len();
        if !last && !part.independent {
            assert!(
                part.duration >= 0.17,
                "{} lasts {}",
                part.uri,
                part.duration
            );
        }
    }
}

// --- FFmpeg -----------------------------------------------------------------

/// Runs an FFmpeg tool with a time limit: stdout, stderr.
fn tool(program: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("timeout")
        .arg("120")
        .arg(program)
        .args(args)
        .output()
        .expect("ffmpeg must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// Writes the playlist and everything it lists (init segments, segments)
/// as files, with `#EXT-X-ENDLIST` so FFmpeg reads it start to end
/// instead of waiting for more (and without the preload hint, which must
/// not appear with it).
fn write_hls(dir: &Path, store: &Store, text: &str) -> PathBuf {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("#EXT-X-PRELOAD-HINT") {
            continue;
        }
        let uri = if let Some(v) = line.strip_prefix("#EXT-X-MAP:") {
            attribute(v, "URI")
        } else if !line.starts_with('#') {
            Some(line)
        } else {
            None
        };
        if let Some(uri) = uri {
            let data = match parse_resource(uri) {
                Some(Resource::Init { run }) => store.init_of_run(run),
                Some(Resource::Segment { msn }) => store.segment(msn),
                other => panic!("unexpected {uri}: {other:?}"),
            };
            std::fs::write(dir.join(uri), data.expect("listed resources exist")).expect("write");
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("#EXT-X-ENDLIST\n");
    let path = dir.join("index.m3u8");
    std::fs::write(&path, out).expect("playlist");
    path
}

fn decoded_frames(path: &Path, stream: &str) -> u64 {
    let path = path.to_str().expect("utf-8 path");
    let (out, _) = tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            stream,
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
            path,
        ],
    );
    // The HLS demuxer lists each stream twice: under its program and on
    // its own.
    let count = out.lines().last().unwrap_or_default().trim();
    count
        .parse()
        .unwrap_or_else(|e| panic!("frame count {out:?}: {e}"))
}

fn assert_plays(path: &Path) {
    let (_, errors) = tool(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-i",
            path.to_str().expect("utf-8 path"),
            "-f",
            "null",
            "-",
        ],
    );
    assert_eq!(errors, "", "FFmpeg decodes the HLS stream without errors");
}

/// The first video packet of a part (decoded after the init segment):
/// its presentation time in seconds and whether it is a keyframe.
fn first_video_packet(dir: &Path, init: &[u8], part: &[u8]) -> (f64, bool) {
    let path = dir.join("part-probe.mp4");
    std::fs::write(&path, [init, part].concat()).expect("write part");
    let (out, _) = tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "csv=p=0",
            path.to_str().expect("utf-8 path"),
        ],
    );
    let first = out.lines().next().expect("a video packet");
    let (pts, flags) = first.split_once(',').expect("pts_time,flags");
    (pts.parse().expect("pts"), flags.starts_with('K'))
}

// --- Tests ----------------------------------------------------------------

#[test]
fn ffmpeg_plays_every_frame_and_the_playlist_has_the_ll_hls_tags() {
    let dir = TempDir::new("hls-play");
    let clip = h264_aac(dir.path(), "320x240", 6);
    let (mut muxer, store) = muxer();
    let outputs = clip.run();

    // Mid-stream, 3.5 s in: a segment in progress with its parts.
    let mut pushed = 0;
    for output in &outputs {
        if time_of(output).is_some_and(|t| t > 3_500_000_000) {
            break;
        }
        muxer.push_at(output.clone(), anchor());
        pushed += 1;
    }
    assert_eq!(
        *muxer.state(),
        MuxerState::Live {
            video: Some(Codec::H264),
            audio: Some(Codec::Aac)
        }
    );
    let live = store.playlist().expect("segments are complete");
    let p = parse_playlist(&live);
    check_playlist(&p, &store);
    assert_eq!(p.media_sequence, 0);
    assert_eq!(p.first_map, "init.mp4");
    assert_eq!(
        p.segments.len(),
        3,
        "segments 0, 1, 2 are complete:\n{live}"
    );
    assert!(
        !p.open_parts.is_empty(),
        "segment 3 is in progress:\n{live}"
    );
    for (i, s) in p.segments.iter().enumerate() {
        // A keyframe every second and a 1 s minimum: 1 s segments.
        assert!((s.duration - 1.0).abs() < 1e-4, "{}: {}", s.uri, s.duration);
        assert_eq!(
            s.pdt.as_deref(),
            Some(format!("2026-11-20T09:30:0{i}.000Z").as_str())
        );
    }
    assert_eq!(p.open_pdt.as_deref(), Some("2026-11-20T09:30:03.000Z"));

    for output in &outputs[pushed..] {
        muxer.push_at(output.clone(), anchor());
    }
    assert_eq!(*muxer.state(), MuxerState::Idle);
    assert_eq!(muxer.ignored_frames(), 0);
    let text = store.playlist().expect("playlist");
    let p = parse_playlist(&text);
    check_playlist(&p, &store);
    assert_eq!(p.segments.len(), 6, "6 s in 1 s segments:\n{text}");
    assert!(
        p.open_parts.is_empty(),
        "the run's end completed the last segment"
    );
    for s in &p.segments[..5] {
        assert!(
            (1.0..=2.0).contains(&s.duration),
            "{}: {}",
            s.uri,
            s.duration
        );
    }

    // INDEPENDENT=YES exactly on the parts whose first video sample is a
    // keyframe, and those are the source's keyframes (every 30 frames).
    let init = store.init().expect("init segment");
    let listed: Vec<(u64, &PartLine)> = p
        .segments
        .iter()
        .flat_map(|s| s.parts.iter().map(move |part| (msn_of(&s.uri), part)))
        .collect();
    assert!(listed.len() >= 10);
    let mut independent = 0;
    for (_, part) in &listed {
        let Some(Resource::Part { msn, index }) = parse_resource(&part.uri) else {
            panic!("part URI {}", part.uri);
        };
        let data = store.part_now(msn, index).expect("listed part");
        let (pts, keyframe) = first_video_packet(dir.path(), &init, &data);
        assert_eq!(part.independent, keyframe, "{} ({pts} s)", part.uri);
        let on_source_keyframe = (pts - pts.round()).abs() < 1e-3;
        assert_eq!(keyframe, on_source_keyframe, "{} at {pts} s", part.uri);
        independent += usize::from(keyframe);
    }
    assert_eq!(
        independent, 2,
        "each of the two segments with parts starts with one"
    );

    // A segment is its parts in a row.
    let last = p.segments.last().expect("segment");
    let joined: Vec<u8> = last
        .parts
        .iter()
        .flat_map(|part| {
            let Some(Resource::Part { msn, index }) = parse_resource(&part.uri) else {
                panic!("part URI");
            };
            store.part_now(msn, index).expect("part").to_vec()
        })
        .collect();
    assert_eq!(store.segment(msn_of(&last.uri)).expect("segment"), joined);

    // FFmpeg plays what the playlist lists: every frame.
    let path = write_hls(dir.path(), &store, &text);
    assert_plays(&path);
    assert_eq!(decoded_frames(&path, "v:0"), clip.video.len() as u64);
    assert_eq!(decoded_frames(&path, "a:0"), clip.audio.len() as u64);

    let stats = store.stats();
    assert!(stats.segments_served >= 6 && stats.parts_served >= 10);
    assert_eq!(stats.segments_made, 6);
}

#[test]
fn opus_audio_plays_too() {
    let dir = TempDir::new("hls-opus");
    let clip = h264_opus(dir.path(), "320x240", 3);
    let (mut muxer, store) = muxer();
    for output in clip.run() {
        muxer.push_at(output, anchor());
    }
    let text = store.playlist().expect("playlist");
    check_playlist(&parse_playlist(&text), &store);
    let path = write_hls(dir.path(), &store, &text);
    assert_plays(&path);
    assert_eq!(decoded_frames(&path, "v:0"), clip.video.len() as u64);
    assert_eq!(decoded_frames(&path, "a:0"), clip.audio.len() as u64);
}

#[test]
fn audio_only_is_cut_by_time() {
    let dir = TempDir::new("hls-audio");
    let mut clip = h264_aac(dir.path(), "160x120", 4);
    clip.video.clear();
    let (mut muxer, store) = muxer();
    for output in clip.run() {
        muxer.push_at(output, anchor());
    }
    let text = store.playlist().expect("playlist");
    let p = parse_playlist(&text);
    check_playlist(&p, &store);
    for s in &p.segments[..p.segments.len() - 1] {
        // 1024-sample frames: the first part boundary after 1 s.
        assert!(
            (1.0..1.25).contains(&s.duration),
            "{}: {}",
            s.uri,
            s.duration
        );
        assert!(s.parts.iter().all(|part| part.independent));
    }
    let path = write_hls(dir.path(), &store, &text);
    assert_plays(&path);
    assert_eq!(decoded_frames(&path, "a:0"), clip.audio.len() as u64);
}

#[test]
fn a_new_run_follows_a_discontinuity_with_its_own_init_segment() {
    let dir = TempDir::new("hls-runs");
    let first = h264_aac(dir.path(), "320x240", 3);
    let second_dir = dir.path().join("second");
    std::fs::create_dir_all(&second_dir).expect("dir");
    let second = h264_aac(&second_dir, "480x270", 3);
    let (mut muxer, store) = muxer();
    for output in first.run().into_iter().chain(second.run()) {
        muxer.push_at(output, anchor());
    }
    let text = store.playlist().expect("playlist");
    let p = parse_playlist(&text);
    check_playlist(&p, &store);
    assert_eq!(p.first_map, "init.mp4");
    let starts: Vec<&SegmentLine> = p.segments.iter().filter(|s| s.discontinuity).collect();
    assert_eq!(starts.len(), 1, "one discontinuity:\n{text}");
    assert_eq!(starts[0].uri, "seg3.mp4");
    assert_eq!(starts[0].map.as_deref(), Some("init1.mp4"));
    assert_ne!(store.init_of_run(0), store.init_of_run(1));

    let path = write_hls(dir.path(), &store, &text);
    assert_plays(&path);
    assert_eq!(
        decoded_frames(&path, "v:0"),
        (first.video.len() + second.video.len()) as u64
    );
}

#[test]
fn a_resolution_change_mid_run_gets_a_new_init_segment() {
    // Browsers raise their resolution a few seconds in, within one run:
    // the new parameter sets cannot go under the old avcC (MSE stalls).
    let dir = TempDir::new("hls-resize");
    let first = h264_aac(dir.path(), "320x240", 3);
    let second_dir = dir.path().join("second");
    std::fs::create_dir_all(&second_dir).expect("dir");
    let second = h264_aac(&second_dir, "480x270", 3);
    let length = 3_000_000_000u64;
    let mut outputs = vec![first.start()];
    outputs.extend(first.frames(1));
    outputs.extend(second.frames(1).into_iter().map(|o| match o {
        Output::Frame {
            track,
            time_ns,
            frame,
        } => Output::Frame {
            track,
            time_ns: time_ns + length as i64,
            frame,
        },
        other => other,
    }));
    outputs.push(Output::End(RunEnd::Finished));
    let (mut muxer, store) = muxer();
    for output in outputs {
        muxer.push_at(output, anchor());
    }
    let text = store.playlist().expect("playlist");
    let p = parse_playlist(&text);
    check_playlist(&p, &store);
    let starts: Vec<&SegmentLine> = p.segments.iter().filter(|s| s.discontinuity).collect();
    assert_eq!(starts.len(), 1, "one discontinuity:\n{text}");
    assert_eq!(starts[0].map.as_deref(), Some("init1.mp4"));
    let path = write_hls(dir.path(), &store, &text);
    assert_plays(&path);
    assert_eq!(
        decoded_frames(&path, "v:0"),
        (first.video.len() + second.video.len()) as u64
    );
}

#[test]
fn the_window_stays_bounded() {
    let dir = TempDir::new("hls-window");
    let clip = h264_aac(dir.path(), "160x120", 6);
    let (mut muxer, store) = muxer();
    muxer.push_at(clip.start(), anchor());
    // 60 s of media: the 6 s clip ten times over.
    let mut max_bytes = 0;
    for output in clip.frames(10) {
        muxer.push_at(output, anchor());
        max_bytes = max_bytes.max(store.stats().bytes_in_memory);
    }
    let newest = store.newest_segment().expect("segments");
    assert!(
        newest >= 58,
        "about 59 one-second segments, newest {newest}"
    );
    let stats = store.stats();
    assert_eq!(stats.segments_in_memory, 7 + 2, "listed plus kept");
    let p = parse_playlist(&store.playlist().expect("playlist"));
    check_playlist(&p, &store);
    assert_eq!(p.segments.len(), 7);
    assert_eq!(p.media_sequence, newest - 6);
    // Kept for players with a slightly old playlist, then gone.
    assert!(store.segment(newest - 8).is_some());
    assert!(store.segment(newest - 9).is_none());
    assert!(store.part_now(newest - 9, 0).is_none());
    // Memory holds about ten segments, however long the stream runs.
    let largest = (newest - 8..=newest)
        .filter_map(|msn| store.segment(msn))
        .map(|s| s.len())
        .max()
        .expect("segments");
    assert!(
        max_bytes < 12 * largest + 64 * 1024,
        "{max_bytes} bytes held, segments up to {largest}"
    );
}

#[test]
fn gops_longer_than_the_target_duration_make_longer_segments() {
    let dir = TempDir::new("hls-long-gop");
    // A keyframe every 3 s; the configured target duration is 2 s.
    let video: Vec<Timed> = h264_frames_gop(dir.path(), 7, 90)
        .into_iter()
        .enumerate()
        .map(|(i, f)| (i as u64 * 1_000_000_000 / 30, f))
        .collect();
    let keyframes: Vec<usize> = (0..video.len()).filter(|&i| video[i].1.keyframe).collect();
    assert_eq!(keyframes, [0, 90, 180], "x264 keeps to the GOP");
    let clip = Clip {
        video,
        audio: Vec::new(),
        audio_codec: Codec::Aac,
    };
    let (mut muxer, store) = muxer();
    for output in clip.run() {
        muxer.push_at(output, anchor());
    }
    let text = store.playlist().expect("playlist");
    let p = parse_playlist(&text);
    check_playlist(&p, &store);
    let durations: Vec<f64> = p.segments.iter().map(|s| s.duration).collect();
    // Segments start only at keyframes (hls.js stalls on a segment that
    // does not), so they last a GOP, and the target duration covers them.
    let expected = [3.0, 3.0, 1.0];
    assert_eq!(durations.len(), expected.len(), "{text}");
    for (d, e) in durations.iter().zip(expected) {
        assert!((d - e).abs() < 1e-3, "{durations:?}\n{text}");
    }
    assert!(text.contains("#EXT-X-TARGETDURATION:3\n"), "{text}");
    for segment in &p.segments {
        if let Some(first) = segment.parts.first() {
            assert!(first.independent, "{text}");
        }
    }
    let path = write_hls(dir.path(), &store, &text);
    assert_plays(&path);
    assert_eq!(decoded_frames(&path, "v:0"), clip.video.len() as u64);
}

#[test]
fn vp8_makes_nothing_and_says_why() {
    let (mut muxer, store) = muxer();
    let vp8 = VideoConfig {
        codec: Codec::Vp8,
        width: 640,
        height: 360,
        detail: VideoDetail::None,
    };
    muxer.push_at(
        Output::Start(RunStart {
            video: Some((0, Codec::Vp8, vp8)),
            audio: Some((1, Codec::Opus, STEREO)),
            timing: Timing::SenderReports,
        }),
        anchor(),
    );
    let message = "VP8 has no HLS mapping; enable transcode";
    assert_eq!(*muxer.state(), MuxerState::Error(message.into()));
    assert_eq!(store.error().as_deref(), Some(message));
    muxer.push_at(
        Output::Frame {
            track: 0,
            time_ns: 0,
            frame: Frame {
                codec: Codec::Vp8,
                timestamp: 0,
                keyframe: true,
                data: bytes::Bytes::from_static(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]),
                composition_offset: 0,
            },
        },
        anchor(),
    );
    assert_eq!(muxer.ignored_frames(), 1);
    assert!(store.playlist().is_none() && store.init().is_none());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let result = runtime.block_on(store.blocking_playlist(None, None, Duration::from_secs(5)));
    assert_eq!(result, Err(RequestError::Unsupported(message.into())));
    assert_eq!(RequestError::Unsupported(message.into()).status(), 415);
}

/// Splits the outputs before the first frame at or after `t`.
fn split_at(outputs: &[Output], t: u64) -> usize {
    outputs
        .iter()
        .position(|o| time_of(o).is_some_and(|time| time >= t))
        .unwrap_or(outputs.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reloads_wait_for_what_they_ask_and_no_longer() {
    let dir = TempDir::new("hls-blocking");
    let clip = h264_aac(dir.path(), "160x120", 6);
    let outputs = clip.run();
    let (mut muxer, store) = muxer();
    // 2.5 s in: segments 0 and 1 complete, segment 2 in progress.
    let first = split_at(&outputs, 2_500_000_000);
    for output in &outputs[..first] {
        muxer.push_at(output.clone(), anchor());
    }
    assert_eq!(store.newest_segment(), Some(1));
    let wait = Duration::from_secs(5);

    // Too far ahead or malformed: 400 at once.
    for (msn, part) in [
        (Some(12), None),
        (Some(4), None),
        (None, Some(0)),
        (Some(2), Some(40)),
        (Some(3), Some(20)),
    ] {
        let started = Instant::now();
        let result = store.blocking_playlist(msn, part, wait).await;
        assert!(
            matches!(result, Err(RequestError::BadRequest(_))),
            "{msn:?} {part:?}: {result:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    // What is already there comes back at once, the whole playlist.
    let now = store
        .blocking_playlist(Some(0), None, wait)
        .await
        .expect("old segment");
    assert!(now.contains("seg0.mp4") && now.contains("seg1.mp4"));
    let p = parse_playlist(&now);
    let parts_so_far = p.open_parts.len() as u64;
    assert!(parts_so_far >= 1);
    // Nothing comes: 503.
    assert_eq!(
        store
            .blocking_playlist(Some(2), None, Duration::from_millis(200))
            .await,
        Err(RequestError::Timeout)
    );
    assert_eq!(RequestError::Timeout.status(), 503);
    // Two past the newest complete segment may still be waited for.
    assert_eq!(
        store
            .blocking_playlist(Some(3), None, Duration::from_millis(50))
            .await,
        Err(RequestError::Timeout)
    );

    // One ahead of the newest segment, the next part, and the hinted part
    // itself: all wait.
    let segment_wait = tokio::spawn({
        let store = store.clone();
        async move {
            let result = store.blocking_playlist(Some(2), None, wait).await;
            (result, Instant::now())
        }
    });
    let part_wait = tokio::spawn({
        let store = store.clone();
        async move {
            let result = store
                .blocking_playlist(Some(2), Some(parts_so_far), wait)
                .await;
            (result, Instant::now())
        }
    });
    let hinted = tokio::spawn({
        let store = store.clone();
        async move { store.part(2, parts_so_far, wait).await }
    });
    // Not the hint: no waiting.
    assert_eq!(
        store.part(2, parts_so_far + 1, wait).await,
        Err(RequestError::NotFound)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!segment_wait.is_finished() && !part_wait.is_finished() && !hinted.is_finished());

    // Another thread (the stream's worker) goes on, frame by frame, noting
    // when the next part and segment 2 appear.
    let rest = outputs[first..].to_vec();
    let feeder = std::thread::spawn(move || {
        let mut part_at = None;
        let mut segment_at = None;
        for output in rest {
            std::thread::sleep(Duration::from_millis(5));
            muxer.push_at(output, anchor());
            if part_at.is_none() && muxer.store().part_now(2, parts_so_far).is_some() {
                part_at = Some(Instant::now());
            }
            if segment_at.is_none() && muxer.store().newest_segment() >= Some(2) {
                segment_at = Some(Instant::now());
                break;
            }
        }
        (muxer, part_at, segment_at)
    });
    let (segment_result, segment_done) = segment_wait.await.expect("task");
    let (part_result, part_done) = part_wait.await.expect("task");
    let hinted = hinted.await.expect("task");
    let (muxer, part_at, segment_at) = feeder.join().expect("feeder");
    let (part_at, segment_at) = (part_at.expect("next part"), segment_at.expect("segment 2"));

    let text = segment_result.expect("segment 2 arrived");
    assert!(text.contains("\nseg2.mp4\n"), "{text}");
    assert!(
        segment_done.saturating_duration_since(segment_at) < Duration::from_millis(250),
        "answered right after the segment appeared"
    );
    let text = part_result.expect("the part arrived");
    let hint_uri = format!("part2.{parts_so_far}.mp4");
    assert!(text.contains(&format!("URI=\"{hint_uri}\"")), "{text}");
    assert!(part_done.saturating_duration_since(part_at) < Duration::from_millis(250));
    assert!(
        part_done < segment_at,
        "the part came before the segment was done"
    );
    assert_eq!(
        hinted.expect("hinted part"),
        store.part_now(2, parts_so_far).expect("part")
    );

    // The stream ends: waiting requests and later ones get Gone.
    let gone_wait = tokio::spawn({
        let store = store.clone();
        async move { store.blocking_playlist(Some(4), None, wait).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!gone_wait.is_finished());
    let closed = Instant::now();
    drop(muxer);
    assert_eq!(gone_wait.await.expect("task"), Err(RequestError::Gone));
    assert!(closed.elapsed() < Duration::from_millis(250));
    assert!(store.is_closed());
    assert_eq!(
        store.blocking_playlist(None, None, wait).await,
        Err(RequestError::Gone)
    );
    assert_eq!(store.part(3, 0, wait).await, Err(RequestError::Gone));
    assert!(store.playlist().is_none() && store.segment(0).is_none());
    assert_eq!(store.stats().bytes_in_memory, 0);
}
