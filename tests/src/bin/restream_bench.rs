//! `restream_bench`: what restreaming costs the gateway. Spawns the real
//! gateway binary (`--record none`, so recording costs nothing) and
//! in-process WHIP publishers of real encoded clips, pushes to a real
//! nginx-rtmp on loopback, and compares the gateway's CPU with and without
//! restream targets under the same load:
//!
//! - `rtmp`: N H264+Opus publishers (libx264 testsrc2, default 720p30
//!   2.5 Mbit/s, the `load` tool's clip), each restreamed to nginx
//!   (`--restream STREAM=rtmp://…`), against the same N without targets.
//!   (push − base) / N is the cost of one RTMP push, Opus→AAC included.
//!   The transcoders' own thread CPU time (`transcode.audio_cpu_s` in
//!   `GET /api/streams`) gives the Opus→AAC share alone.
//! - `vp8`: VP8+Opus publishers (the tests' flash clip at 720p30; libvpx
//!   makes it only about 1.1 Mbit/s) with a `transcode: true` target
//!   (`POST /api/restreams`), against the same without a target; plus the
//!   video transcoder's thread CPU time (`transcode.video_cpu_s`).
//!
//! ```sh
//! cargo build --release -p gateway -p whipcord-tests
//! target/release/restream_bench --streams 4 --seconds 20 --warmup 5
//! target/release/restream_bench --streams 1 --seconds 3 --warmup 3   # smoke test
//! ```
//!
//! CPU is utime+stime of the gateway process from `/proc/<pid>/stat` over
//! a window that opens `--warmup` seconds after the last publisher started
//! and once every target is live. Each case runs on a fresh gateway;
//! `--rounds` repeats the base/target pairs alternately. Loopback only.
//! Transcoder shares are given twice: over the window, and "at real time"
//! (CPU per output frame × 30 fps or 46.875 AAC frames/s), which a
//! transcoder catching up a backlog on a busy machine does not skew.
//! Prints a report that starts with the exact command line, then one JSON
//! line. Exits 0 when the harness worked (1 if `--target-pct` was given and
//! missed), 2 on a harness or setup failure (a target not live, a
//! transcoder not advancing, the gateway dying), 3 at the hard time limit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use whipcord_tests::api::Api;
use whipcord_tests::bench::{self, MediaTask, Sent};
use whipcord_tests::client::{PublishOptions, Publisher};
use whipcord_tests::clip::{Clip, ClipSpec, Frame};
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::nginx::Nginx;
use whipcord_tests::procstat::{self, Rates, Snapshot, clk_tck, cores};
use whipcord_tests::synth::VideoCodec;

#[derive(Parser, Debug, Clone)]
#[command(about = "CPU cost of RTMP restreaming: Opus→AAC, RTMP push, VP8→H264")]
struct Args {
    /// Which measurements to run.
    #[arg(long, value_enum, default_value_t = Phase::All)]
    phase: Phase,
    /// H264+Opus publishers in the `rtmp` phase, each with one target.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// VP8+Opus publishers in the `vp8` phase, each with a transcode target.
    #[arg(long, default_value_t = 1)]
    vp8_streams: usize,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Seconds between the last publisher starting and the window.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Base/target pairs per phase, run alternately.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Video bitrate asked of the encoder, kbit/s (libx264 fills it; libvpx
    /// on the flash clip does not: the report gives what was sent).
    #[arg(long, default_value_t = 2500)]
    kbps: u32,
    #[arg(long, default_value_t = 1280)]
    width: u32,
    #[arg(long, default_value_t = 720)]
    height: u32,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Length of the encoded clip each publisher loops, seconds.
    #[arg(long, default_value_t = 10)]
    clip_seconds: u32,
    /// Gateway binary [default: WHIPCORD_BIN, else target/release/whipcord].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The spawned gateways' log filter (WHIPCORD_LOG).
    #[arg(long, default_value = "info")]
    gateway_log: String,
    /// Fail (exit 1) when one RTMP push costs this share of a core or more.
    #[arg(long)]
    target_pct: Option<f64>,
    /// Hard time limit, seconds [default: from the run lengths].
    #[arg(long)]
    hard_limit: Option<f64>,
    /// Free-form label copied into the JSON line.
    #[arg(long)]
    label: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Rtmp,
    Vp8,
    All,
}

/// How long targets and transcoders may take to come up after the warm-up
/// (the first keyframe, the RTMP handshake) before the run is a failure.
const READY_GRACE: Duration = Duration::from_secs(5);
/// Bound on every HTTP exchange with the gateway that has no timeout of
/// its own (the WHIP POST and DELETE).
const HTTP_LIMIT: Duration = Duration::from_secs(30);

fn main() {
    let args = Args::parse();
    // SAFETY: no other thread exists yet.
    unsafe { bench::use_gateway_binary("restream_bench", args.bin.as_deref()) };
    let hard_limit = args.hard_limit.unwrap_or_else(|| default_hard_limit(&args));
    bench::spawn_watchdog("restream_bench", hard_limit);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("restream_bench: error: tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = bench::exit_code("restream_bench", runtime, run(args));
    bench::cleanup_leftovers(false);
    std::process::exit(code);
}

/// Seconds the whole invocation may take: every run's media plus generous
/// room for clip encoding, start-up and shutdown.
fn default_hard_limit(args: &Args) -> f64 {
    let runs = args.rounds as f64 * 2.0 * phases(args.phase).len() as f64;
    let per_run = args.warmup + READY_GRACE.as_secs_f64() + args.seconds + 60.0;
    120.0 + runs * (per_run + 2.0 * args.streams.max(args.vp8_streams) as f64)
}

// ---------------------------------------------------------------------------
// Cases

/// One gateway configuration under one load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    H264Base,
    H264Push,
    Vp8Base,
    Vp8Transcode,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::H264Base => "h264-base",
            Case::H264Push => "h264-push",
            Case::Vp8Base => "vp8-base",
            Case::Vp8Transcode => "vp8-transcode",
        }
    }

    fn codec(self) -> VideoCodec {
        match self {
            Case::H264Base | Case::H264Push => VideoCodec::H264,
            Case::Vp8Base | Case::Vp8Transcode => VideoCodec::Vp8,
        }
    }

    fn has_targets(self) -> bool {
        matches!(self, Case::H264Push | Case::Vp8Transcode)
    }
}

/// The (base, with targets) pairs of a phase.
fn phases(phase: Phase) -> Vec<(Case, Case)> {
    let rtmp = (Case::H264Base, Case::H264Push);
    let vp8 = (Case::Vp8Base, Case::Vp8Transcode);
    match phase {
        Phase::Rtmp => vec![rtmp],
        Phase::Vp8 => vec![vp8],
        Phase::All => vec![rtmp, vp8],
    }
}

/// Everything the runs share: the clips and the nginx.
struct Bench {
    args: Args,
    h264: Option<Arc<Clip>>,
    vp8: Option<Arc<Clip>>,
    nginx: Nginx,
}

impl Bench {
    fn streams(&self, case: Case) -> Vec<String> {
        let (prefix, n) = match case.codec() {
            VideoCodec::Vp8 => ("v", self.args.vp8_streams),
            _ => ("s", self.args.streams),
        };
        (0..n).map(|i| format!("{prefix}{i:02}")).collect()
    }

    fn clip(&self, case: Case) -> Result<&Arc<Clip>> {
        match case.codec() {
            VideoCodec::Vp8 => self.vp8.as_ref(),
            _ => self.h264.as_ref(),
        }
        .with_context(|| format!("no clip loaded for {}", case.name()))
    }

    /// A distinct key per run and stream, so nginx's recordings (one FLV
    /// per key) tell how much each run delivered.
    fn target_url(&self, tag: &str, stream: &str) -> String {
        format!(
            "rtmp://127.0.0.1:{}/live/{tag}-{stream}",
            self.nginx.rtmp_port
        )
    }

    /// Bytes nginx recorded for this run's keys.
    fn nginx_bytes(&self, tag: &str, streams: &[String]) -> u64 {
        streams
            .iter()
            .filter_map(|s| self.nginx.recording(&format!("{tag}-{s}")).metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

// ---------------------------------------------------------------------------
// Clips

/// The clip spec of `--width` … `--clip-seconds` for `codec`.
fn clip_spec(args: &Args, codec: VideoCodec) -> ClipSpec {
    ClipSpec {
        width: args.width,
        height: args.height,
        fps: args.fps,
        seconds: args.clip_seconds,
        video_kbps: args.kbps,
        ..ClipSpec::new(codec)
    }
}

/// H264 from the `load` tool's recipe (lavfi testsrc2, which libx264 fills
/// to the asked bitrate, unlike the flash clip) with the recording tests'
/// Opus track of the same length.
fn h264_clip(args: &Args) -> Result<Clip> {
    bench::testsrc2_clip(&clip_spec(args, VideoCodec::H264))
}

/// The recording tests' flash clip in VP8 with Opus.
fn vp8_clip(args: &Args) -> Result<Clip> {
    Clip::ensure(&clip_spec(args, VideoCodec::Vp8))
}

/// Bytes and media time of the first `count` samples of a looped track.
fn sent_totals(frames: &[Frame], count: u64) -> (u64, Duration) {
    let len = frames.len() as u64;
    if len == 0 {
        return (0, Duration::ZERO);
    }
    let sum = |n: usize| -> (u64, Duration) {
        frames
            .iter()
            .take(n)
            .fold((0, Duration::ZERO), |(b, d), f| {
                (b + f.data.len() as u64, d + f.duration)
            })
    };
    let (loop_bytes, loop_time) = sum(frames.len());
    let (part_bytes, part_time) = sum((count % len) as usize);
    let loops = count / len;
    (
        loops * loop_bytes + part_bytes,
        loop_time * loops as u32 + part_time,
    )
}

fn kbps(bytes: u64, time: Duration) -> f64 {
    let secs = time.as_secs_f64();
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1000.0
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------
// The gateway's API

/// One stream's `transcode` object of `GET /api/streams`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Figures {
    audio_cpu_s: f64,
    video_cpu_s: f64,
    aac_frames_out: u64,
    h264_frames_out: u64,
    video_active: bool,
}

/// Streams that have a bridge session, with their transcoder figures.
async fn stream_figures(api: &Api) -> Result<BTreeMap<String, Figures>> {
    let reply = api.get("/api/streams").await?;
    ensure!(reply.status == 200, "GET /api/streams: {}", reply.status);
    let body = reply.json()?;
    let streams = body["streams"]
        .as_array()
        .context("GET /api/streams: no streams array")?;
    let mut out = BTreeMap::new();
    for s in streams {
        let (Some(name), Some(t)) = (s["name"].as_str(), s["transcode"].as_object()) else {
            continue;
        };
        let f = |key: &str| t.get(key).and_then(Value::as_f64).unwrap_or(0.0);
        let n = |key: &str| t.get(key).and_then(Value::as_u64).unwrap_or(0);
        out.insert(
            name.to_owned(),
            Figures {
                audio_cpu_s: f("audio_cpu_s"),
                video_cpu_s: f("video_cpu_s"),
                aac_frames_out: n("aac_frames_out"),
                h264_frames_out: n("h264_frames_out"),
                video_active: t.get("video_active").and_then(Value::as_bool) == Some(true),
            },
        );
    }
    Ok(out)
}

/// Each stream's figures read just after its session refreshed them, with
/// when: sessions publish them once a second, so a plain read can be up to
/// a second stale, a 5 % error on a 20 s window. Polls every 20 ms.
async fn fresh_figures(
    api: &Api,
    streams: &[String],
) -> Result<BTreeMap<String, (Instant, Figures)>> {
    let first = stream_figures(api).await?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut out = BTreeMap::new();
    while out.len() < streams.len() {
        if Instant::now() > deadline {
            let stale: Vec<&String> = streams.iter().filter(|s| !out.contains_key(*s)).collect();
            bail!("transcoder figures of {stale:?} did not change within 3 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = stream_figures(api).await?;
        let at = Instant::now();
        for s in streams {
            if let (Some(before), Some(fig)) = (first.get(s), now.get(s))
                && fig != before
            {
                out.entry(s.clone()).or_insert((at, *fig));
            }
        }
    }
    Ok(out)
}

/// One row of `GET /api/restreams`.
#[derive(Clone, Debug)]
struct TargetRow {
    stream: String,
    state: String,
    bytes_sent: u64,
    dropped_frames: u64,
    last_error: Option<String>,
}

async fn target_rows(api: &Api) -> Result<BTreeMap<String, TargetRow>> {
    let reply = api.get("/api/restreams").await?;
    ensure!(reply.status == 200, "GET /api/restreams: {}", reply.status);
    let body = reply.json()?;
    let rows = body["restreams"]
        .as_array()
        .context("GET /api/restreams: no restreams array")?;
    let mut out = BTreeMap::new();
    for r in rows {
        let stream = r["stream"].as_str().unwrap_or_default().to_owned();
        let row = TargetRow {
            stream: stream.clone(),
            state: r["state"].as_str().unwrap_or("?").to_owned(),
            bytes_sent: r["bytes_sent"].as_u64().unwrap_or(0),
            dropped_frames: r["dropped_frames"].as_u64().unwrap_or(0),
            last_error: r["last_error"].as_str().map(str::to_owned),
        };
        out.insert(stream, row);
    }
    Ok(out)
}

/// Fails unless every stream has a target, and all are `live`.
fn ensure_live(rows: &BTreeMap<String, TargetRow>, streams: &[String], when: &str) -> Result<()> {
    for s in streams {
        let row = rows
            .get(s)
            .with_context(|| format!("{when}: no restream target for {s}"))?;
        ensure!(
            row.state == "live",
            "{when}: target of {} is {} (last error: {:?})",
            row.stream,
            row.state,
            row.last_error
        );
    }
    Ok(())
}

/// Adds a `transcode: true` target per stream at runtime, as an operator
/// would for a VP8 source.
async fn add_transcode_targets(
    bench: &Bench,
    api: &Api,
    tag: &str,
    streams: &[String],
) -> Result<()> {
    for s in streams {
        let body = json!({"stream": s, "url": bench.target_url(tag, s), "transcode": true});
        let reply = api.post_json("/api/restreams", &body).await?;
        ensure!(
            reply.status == 201,
            "POST /api/restreams for {s}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    Ok(())
}

/// Waits (bounded) until the case's streams are live on the gateway and,
/// with targets, every target is live and its transcoders produce output.
async fn wait_ready(api: &Api, case: Case, streams: &[String], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let problem = not_ready(api, case, streams).await?;
        let Some(problem) = problem else {
            return Ok(());
        };
        if Instant::now() > deadline {
            bail!("not ready {limit:?} after the warm-up: {problem}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What still keeps the case from being measured, if anything.
async fn not_ready(api: &Api, case: Case, streams: &[String]) -> Result<Option<String>> {
    let reply = api.get("/api/streams").await?;
    ensure!(reply.status == 200, "GET /api/streams: {}", reply.status);
    let body = reply.json()?;
    let live: Vec<&str> = body["streams"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    if let Some(s) = streams.iter().find(|s| !live.contains(&s.as_str())) {
        return Ok(Some(format!("stream {s} not live")));
    }
    if !case.has_targets() {
        return Ok(None);
    }
    let rows = target_rows(api).await?;
    if let Err(e) = ensure_live(&rows, streams, "warm-up") {
        return Ok(Some(e.to_string()));
    }
    let figures = stream_figures(api).await?;
    for s in streams {
        let Some(f) = figures.get(s) else {
            return Ok(Some(format!("{s} has no transcoder figures")));
        };
        if f.aac_frames_out == 0 {
            return Ok(Some(format!("{s} made no AAC yet")));
        }
        if case == Case::Vp8Transcode && (!f.video_active || f.h264_frames_out == 0) {
            return Ok(Some(format!("{s} made no H264 yet: {f:?}")));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Publishers

/// Publishers sending their clip, each with its task and start time.
struct Load {
    publishers: Vec<Arc<Publisher>>,
    tasks: Vec<(Instant, MediaTask)>,
}

/// Connects one by one and starts each publisher's media at once.
async fn start_publishers(
    base: &str,
    streams: &[String],
    codec: VideoCodec,
    clip: &Arc<Clip>,
    media_len: Duration,
) -> Result<Load> {
    let mut load = Load {
        publishers: Vec::new(),
        tasks: Vec::new(),
    };
    for name in streams {
        // The default spec only shapes the offer (same codecs, small and
        // cached); the shared clip is what is sent.
        let connect = Publisher::connect(base, name, PublishOptions::media(codec));
        let mut publisher = tokio::time::timeout(HTTP_LIMIT, connect)
            .await
            .with_context(|| format!("publisher {name} did not connect in {HTTP_LIMIT:?}"))?
            .with_context(|| format!("publisher {name}"))?;
        publisher.clip = Some(clip.clone());
        let publisher = Arc::new(publisher);
        load.tasks.push(bench::start_media(&publisher, media_len));
        load.publishers.push(publisher);
    }
    Ok(load)
}

/// Lets the media run out, then ends the sessions.
async fn finish_publishers(load: Load, media_len: Duration) -> Result<Sent> {
    let sent = bench::finish_media(load.tasks, media_len).await?;
    for p in &load.publishers {
        let status = tokio::time::timeout(HTTP_LIMIT, p.delete())
            .await
            .context("WHIP DELETE timed out")??;
        ensure!(status == 200, "WHIP DELETE answered {status}");
    }
    for p in load.publishers {
        if let Ok(p) = Arc::try_unwrap(p) {
            let _ = tokio::time::timeout(Duration::from_secs(5), p.close()).await;
        }
    }
    Ok(sent)
}

// ---------------------------------------------------------------------------
// One run

/// AAC frames a second at real time: the gateway's AAC is 48 kHz, 1024
/// samples a frame.
const AAC_FRAMES_PER_S: f64 = 48_000.0 / 1024.0;

/// Per-stream transcoder figures over the window, one entry per stream.
#[derive(Clone, Debug, Default)]
struct TranscodeRates {
    /// Thread CPU time over the window, percent of one core.
    audio_pct: Vec<f64>,
    video_pct: Vec<f64>,
    /// The same at exactly real time: CPU per output frame times the
    /// nominal frame rate. A transcoder catching up a backlog (or falling
    /// behind) on a busy machine makes more (or fewer) frames than real
    /// time in the window, which skews the plain share but not this one.
    audio_rt_pct: Vec<f64>,
    video_rt_pct: Vec<f64>,
    aac_per_s: Vec<f64>,
    h264_per_s: Vec<f64>,
}

/// Share of a core at `nominal` frames/s, from CPU seconds per frame.
fn real_time_pct(cpu_s: f64, frames: u64, nominal: f64) -> f64 {
    if frames == 0 {
        0.0
    } else {
        cpu_s / frames as f64 * nominal * 100.0
    }
}

fn transcode_rates(
    f0: &BTreeMap<String, (Instant, Figures)>,
    f1: &BTreeMap<String, (Instant, Figures)>,
    fps: f64,
) -> Result<TranscodeRates> {
    let mut out = TranscodeRates::default();
    for (stream, (t0, a)) in f0 {
        let (t1, b) = f1
            .get(stream)
            .with_context(|| format!("{stream} lost its transcoder figures in the window"))?;
        let secs = t1.duration_since(*t0).as_secs_f64().max(1e-3);
        let audio_cpu = b.audio_cpu_s - a.audio_cpu_s;
        let video_cpu = b.video_cpu_s - a.video_cpu_s;
        let aac = b.aac_frames_out.saturating_sub(a.aac_frames_out);
        let h264 = b.h264_frames_out.saturating_sub(a.h264_frames_out);
        out.audio_pct.push(audio_cpu / secs * 100.0);
        out.video_pct.push(video_cpu / secs * 100.0);
        out.audio_rt_pct
            .push(real_time_pct(audio_cpu, aac, AAC_FRAMES_PER_S));
        out.video_rt_pct.push(real_time_pct(video_cpu, h264, fps));
        out.aac_per_s.push(aac as f64 / secs);
        out.h264_per_s.push(h264 as f64 / secs);
    }
    Ok(out)
}

/// The RTMP side of a run with targets.
#[derive(Clone, Debug, Default)]
struct RtmpRates {
    /// Mean over targets, kbit/s, from `bytes_sent` over the window.
    out_kbps: f64,
    /// Frames the targets dropped in the window, all together.
    dropped_frames: u64,
    /// FLV bytes nginx recorded for the run, all keys.
    nginx_bytes: u64,
}

/// What one run measured.
struct RunResult {
    case: Case,
    round: usize,
    streams: usize,
    /// The clip's picture, e.g. "1280x720 30 fps", and its frame rate.
    picture: String,
    fps: u32,
    proc: Rates,
    rss_kib: u64,
    sent: Sent,
    video_kbps: f64,
    audio_kbps: f64,
    transcode: Option<TranscodeRates>,
    rtmp: Option<RtmpRates>,
}

async fn run_case(bench: &Bench, case: Case, round: usize) -> Result<RunResult> {
    let tag = format!("{}-r{round}", case.name());
    let streams = bench.streams(case);
    let mut options = GatewayOptions::default()
        .arg("--record")
        .arg("none")
        .arg("--transcode-max")
        .arg(streams.len().to_string());
    options.env = vec![("WHIPCORD_LOG".into(), bench.args.gateway_log.clone())];
    if case == Case::H264Push {
        for s in &streams {
            options = options
                .arg("--restream")
                .arg(format!("{s}={}", bench.target_url(&tag, s)));
        }
    }
    let mut gw = Gateway::start_with(options).await?;
    bench::register_leftover(&gw.data_dir);
    let pid = gw.pid().context("gateway has no pid")?;
    bench::watch_pid(pid);
    let result = drive(bench, case, round, &tag, &streams, &mut gw, pid).await;
    if let Err(e) = gw.terminate() {
        eprintln!("restream_bench: stopping the gateway: {e:#}");
    }
    bench::watch_pid(0);
    if result.is_err() {
        bench::print_log_tail("gateway", &gw.log());
        bench::print_log_tail("nginx", &bench.nginx.error_log());
    }
    result
}

/// Publishes, waits for the targets, measures the window, and winds down.
async fn drive(
    bench: &Bench,
    case: Case,
    round: usize,
    tag: &str,
    streams: &[String],
    gw: &mut Gateway,
    pid: u32,
) -> Result<RunResult> {
    let args = &bench.args;
    let api = Api::new(gw);
    if case == Case::Vp8Transcode {
        add_transcode_targets(bench, &api, tag, streams).await?;
    }
    let clip = bench.clip(case)?;
    // Enough media for the warm-up, the longest wait for the targets, the
    // window and the figure reads around it (up to a second each).
    let media_len = Duration::from_secs_f64(args.warmup + args.seconds + 3.0) + READY_GRACE;
    let load = start_publishers(&gw.base_url(), streams, case.codec(), clip, media_len).await?;
    println!(
        "[{tag}] {} publishers sending, warming up {:.1} s",
        streams.len(),
        args.warmup
    );
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    wait_ready(&api, case, streams, READY_GRACE).await?;

    // Transcoder figures are read outside the /proc window, so that the
    // polling's HTTP requests cost the measured gateway nothing.
    let f0 = if case.has_targets() {
        Some(fresh_figures(&api, streams).await?)
    } else {
        None
    };
    let t0 = target_rows(&api).await?;
    let s0 = gateway_snapshot(pid)?;
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let s1 = gateway_snapshot(pid)?;
    let rss = procstat::rss_hwm_kib(pid).0;
    let t1 = target_rows(&api).await?;
    let f1 = if case.has_targets() {
        Some(fresh_figures(&api, streams).await?)
    } else {
        None
    };
    ensure!(gw.is_running(), "the gateway exited during the window");
    let proc = Rates::between(&s0, &s1);

    let (transcode, rtmp) = match (f0, f1) {
        (Some(f0), Some(f1)) => {
            ensure_live(&t0, streams, "window start")?;
            ensure_live(&t1, streams, "window end")?;
            let rates = transcode_rates(&f0, &f1, f64::from(clip.spec.fps))?;
            check_transcoders(case, &rates)?;
            (Some(rates), Some(rtmp_rates(&t0, &t1, proc.window)))
        }
        _ => (None, None),
    };

    let sent = finish_publishers(load, media_len).await?;
    let (video_bytes, video_time) = sent_totals(&clip.video, sent.media.video_frames);
    let (audio_bytes, audio_time) = sent_totals(&clip.audio, sent.media.audio_packets);
    let rtmp = rtmp.map(|r| RtmpRates {
        nginx_bytes: bench.nginx_bytes(tag, streams),
        ..r
    });
    Ok(RunResult {
        case,
        round,
        streams: streams.len(),
        picture: format!(
            "{}x{} {} fps",
            clip.spec.width, clip.spec.height, clip.spec.fps
        ),
        fps: clip.spec.fps,
        proc,
        rss_kib: rss,
        sent,
        video_kbps: kbps(video_bytes, video_time),
        audio_kbps: kbps(audio_bytes, audio_time),
        transcode,
        rtmp,
    })
}

/// The gateway's CPU figures now; an error when it is gone.
fn gateway_snapshot(pid: u32) -> Result<Snapshot> {
    Snapshot::take(pid).context("cannot read the gateway's /proc stat")
}

/// A transcoder that produced nothing in the window means the figures
/// measure an idle session: the run is void.
fn check_transcoders(case: Case, rates: &TranscodeRates) -> Result<()> {
    ensure!(
        rates.aac_per_s.iter().all(|r| *r > 1.0),
        "an Opus→AAC transcoder stalled in the window: AAC frames/s {:?}",
        rates.aac_per_s
    );
    if case == Case::Vp8Transcode {
        ensure!(
            rates.h264_per_s.iter().all(|r| *r > 1.0),
            "a video transcoder stalled in the window: H264 frames/s {:?}",
            rates.h264_per_s
        );
    }
    Ok(())
}

fn rtmp_rates(
    t0: &BTreeMap<String, TargetRow>,
    t1: &BTreeMap<String, TargetRow>,
    window: f64,
) -> RtmpRates {
    let mut bytes = 0;
    let mut dropped = 0;
    for (stream, end) in t1 {
        if let Some(start) = t0.get(stream) {
            bytes += end.bytes_sent.saturating_sub(start.bytes_sent);
            dropped += end.dropped_frames.saturating_sub(start.dropped_frames);
        }
    }
    let targets = t1.len().max(1) as f64;
    RtmpRates {
        out_kbps: bytes as f64 * 8.0 / window / 1000.0 / targets,
        dropped_frames: dropped,
        nginx_bytes: 0,
    }
}

// ---------------------------------------------------------------------------
// Report

/// The command line as typed, quoted for a POSIX shell where needed.
fn command_line() -> String {
    let quote = |a: String| {
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./=:,@%+-".contains(c));
        if plain {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    std::env::args().map(quote).collect::<Vec<_>>().join(" ")
}

/// `git describe` of the source tree this tool was built from, best effort:
/// the gateway binary may be older, which the header cannot know.
fn tree_version() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn span(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() { (0.0, 0.0) } else { (min, max) }
}

fn print_run(r: &RunResult) {
    let tag = format!("{}-r{}", r.case.name(), r.round);
    let p = &r.proc;
    println!(
        "[{tag}] gateway {:.3} CPU-s/s over {:.1} s, RSS {:.1} MiB; bench {:.2} CPU-s/s; \
         machine {:.2} of {} cores busy ({:.2} by other processes); publishers at most {} ms late",
        p.process,
        p.window,
        r.rss_kib as f64 / 1024.0,
        p.own,
        p.machine,
        cores(),
        p.others(),
        r.sent.max_late.as_millis()
    );
    println!("[{tag}]   by thread (CPU-s/s): {}", p.thread_list());
    println!(
        "[{tag}]   sent per publisher: video {:.0} kbit/s, Opus {:.0} kbit/s ({} publishers, {} video frames, {} RTP packets in all)",
        r.video_kbps,
        r.audio_kbps,
        r.streams,
        r.sent.media.video_frames,
        r.sent.media.video_rtp_packets + r.sent.media.audio_rtp_packets
    );
    if let Some(m) = &r.rtmp {
        println!(
            "[{tag}]   RTMP out per target {:.0} kbit/s, {} frames dropped in the window; nginx recorded {:.1} MB",
            m.out_kbps,
            m.dropped_frames,
            m.nginx_bytes as f64 / 1e6
        );
    }
    if let Some(t) = &r.transcode {
        println!(
            "[{tag}]   transcoder threads per stream (window / at real time): \
             Opus→AAC {:.2} / {:.2} % of a core ({:.1} AAC frames/s), \
             video→H264 {:.1} / {:.1} % ({:.1} frames/s)",
            mean(&t.audio_pct),
            mean(&t.audio_rt_pct),
            mean(&t.aac_per_s),
            mean(&t.video_pct),
            mean(&t.video_rt_pct),
            mean(&t.h264_per_s)
        );
    }
}

/// Mean gateway CPU-s/s of a case over its rounds.
fn case_cpu(results: &[RunResult], case: Case) -> Option<f64> {
    let v: Vec<f64> = results
        .iter()
        .filter(|r| r.case == case)
        .map(|r| r.proc.process)
        .collect();
    (!v.is_empty()).then(|| mean(&v))
}

/// Mean CPU-s/s per thread name of a case over its rounds.
fn case_threads(results: &[RunResult], case: Case) -> BTreeMap<String, f64> {
    let runs: Vec<&RunResult> = results.iter().filter(|r| r.case == case).collect();
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for r in &runs {
        for (name, v) in &r.proc.threads {
            *out.entry(name.clone()).or_insert(0.0) += v / runs.len() as f64;
        }
    }
    out
}

/// Per-stream transcoder shares of a case, every round together.
fn case_transcode(results: &[RunResult], case: Case) -> TranscodeRates {
    let mut out = TranscodeRates::default();
    for t in results
        .iter()
        .filter(|r| r.case == case)
        .filter_map(|r| r.transcode.as_ref())
    {
        out.audio_pct.extend(&t.audio_pct);
        out.video_pct.extend(&t.video_pct);
        out.audio_rt_pct.extend(&t.audio_rt_pct);
        out.video_rt_pct.extend(&t.video_rt_pct);
        out.aac_per_s.extend(&t.aac_per_s);
        out.h264_per_s.extend(&t.h264_per_s);
    }
    out
}

/// Thread names whose CPU grew most from `base` to `with`, as a string.
fn thread_delta(results: &[RunResult], base: Case, with: Case) -> String {
    let a = case_threads(results, base);
    let b = case_threads(results, with);
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    let mut delta: Vec<(&String, f64)> = names
        .into_iter()
        .map(|n| (n, b.get(n).unwrap_or(&0.0) - a.get(n).unwrap_or(&0.0)))
        .filter(|(_, d)| d.abs() >= 0.0005)
        .collect();
    delta.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()));
    delta
        .iter()
        .map(|(n, d)| format!("{n} {d:+.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The headline figures of the `rtmp` phase; returns the per-push share.
fn summarize_rtmp(results: &[RunResult], streams: usize) -> Option<f64> {
    let base = case_cpu(results, Case::H264Base)?;
    let push = case_cpu(results, Case::H264Push)?;
    let pct = (push - base) / streams as f64 * 100.0;
    let sample = results.iter().find(|r| r.case == Case::H264Push)?;
    println!(
        "RTMP push ({streams} × H264 {} {:.0} kbit/s + Opus {:.0} kbit/s → nginx-rtmp, loopback):",
        sample.picture, sample.video_kbps, sample.audio_kbps
    );
    println!(
        "  gateway CPU {push:.3} with targets − {base:.3} without = {:.3} CPU-s/s; / {streams} = \
         {pct:.2} % of one core per RTMP push (incl. Opus→AAC)",
        push - base
    );
    println!(
        "  where it went (CPU-s/s, all streams): {}",
        thread_delta(results, Case::H264Base, Case::H264Push)
    );
    let t = case_transcode(results, Case::H264Push);
    let (lo, hi) = span(&t.audio_pct);
    println!(
        "Opus→AAC (transcoder thread CPU time from /api/streams): {:.2} % of one core per stream \
         over the window ({lo:.2}–{hi:.2} over {} streams, {:.1} AAC frames/s); \
         {:.2} % at real time ({AAC_FRAMES_PER_S} frames/s)",
        mean(&t.audio_pct),
        t.audio_pct.len(),
        mean(&t.aac_per_s),
        mean(&t.audio_rt_pct)
    );
    Some(pct)
}

/// The headline figures of the `vp8` phase; returns the video share.
fn summarize_vp8(results: &[RunResult], streams: usize) -> Option<f64> {
    let base = case_cpu(results, Case::Vp8Base)?;
    let with = case_cpu(results, Case::Vp8Transcode)?;
    let sample = results.iter().find(|r| r.case == Case::Vp8Transcode)?;
    let t = case_transcode(results, Case::Vp8Transcode);
    println!(
        "VP8→H264 ({streams} × VP8 {} {:.0} kbit/s + Opus {:.0} kbit/s, transcode target → nginx-rtmp):",
        sample.picture, sample.video_kbps, sample.audio_kbps
    );
    println!(
        "  video transcoder thread: {:.1} % of one core per stream over the window \
         ({:.1} H264 frames/s); {:.1} % at real time ({} frames/s); Opus→AAC {:.2} % at real time",
        mean(&t.video_pct),
        mean(&t.h264_per_s),
        mean(&t.video_rt_pct),
        sample.fps,
        mean(&t.audio_rt_pct)
    );
    println!(
        "  gateway CPU {with:.3} with the target − {base:.3} without = {:.3} CPU-s/s = \
         {:.1} % of one core per stream (transcode + Opus→AAC + RTMP push)",
        with - base,
        (with - base) / streams as f64 * 100.0
    );
    println!(
        "  where it went (CPU-s/s): {}",
        thread_delta(results, Case::Vp8Base, Case::Vp8Transcode)
    );
    Some(mean(&t.video_rt_pct))
}

fn json_line(
    args: &Args,
    results: &[RunResult],
    rtmp_pct: Option<f64>,
    vp8_pct: Option<f64>,
) -> Value {
    let aac = case_transcode(results, Case::H264Push).audio_rt_pct;
    let aac_rt = (!aac.is_empty()).then(|| mean(&aac));
    json!({
        "label": args.label,
        "command": command_line(),
        "tree": tree_version(),
        "cores": cores(),
        "clk_tck": clk_tck(),
        "window_s": args.seconds,
        "warmup_s": args.warmup,
        "rtmp_push_pct_of_core": rtmp_pct,
        "vp8_video_transcode_real_time_pct_of_core": vp8_pct,
        "opus_aac_real_time_pct_of_core": aac_rt,
        "runs": results.iter().map(|r| json!({
            "case": r.case.name(),
            "round": r.round,
            "streams": r.streams,
            "window_s": r.proc.window,
            "gateway_cpu_s_per_s": r.proc.process,
            "threads": r.proc.threads,
            "bench_cpu_s_per_s": r.proc.own,
            "machine_busy_cores": r.proc.machine,
            "rss_kib": r.rss_kib,
            "max_late_ms": r.sent.max_late.as_millis() as u64,
            "video_kbps_per_publisher": r.video_kbps,
            "audio_kbps_per_publisher": r.audio_kbps,
            "transcode": r.transcode.as_ref().map(|t| json!({
                "audio_pct": t.audio_pct,
                "video_pct": t.video_pct,
                "audio_real_time_pct": t.audio_rt_pct,
                "video_real_time_pct": t.video_rt_pct,
                "aac_frames_per_s": t.aac_per_s,
                "h264_frames_per_s": t.h264_per_s,
            })),
            "rtmp": r.rtmp.as_ref().map(|m| json!({
                "out_kbps_per_target": m.out_kbps,
                "dropped_frames": m.dropped_frames,
                "nginx_bytes": m.nginx_bytes,
            })),
        })).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------

async fn load_clips(args: &Args) -> Result<(Option<Arc<Clip>>, Option<Arc<Clip>>)> {
    let pairs = phases(args.phase);
    let wants = |codec| pairs.iter().any(|(base, _)| base.codec() == codec);
    let (want_h264, want_vp8) = (wants(VideoCodec::H264), wants(VideoCodec::Vp8));
    let args = args.clone();
    // ffmpeg may have to encode the clips first: blocking, minutes at most.
    tokio::task::spawn_blocking(move || -> Result<_> {
        let h264 = want_h264.then(|| h264_clip(&args)).transpose()?;
        let vp8 = want_vp8.then(|| vp8_clip(&args)).transpose()?;
        Ok((h264.map(Arc::new), vp8.map(Arc::new)))
    })
    .await?
}

/// A real nginx-rtmp in a fresh temporary directory (it records every
/// stream to FLV there, which costs nginx, not the gateway).
async fn start_nginx() -> Result<Nginx> {
    let dir = std::env::temp_dir().join(format!(
        "whipcord-restream-bench-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    bench::register_leftover(&dir);
    // `Nginx::start` panics on failure (it is test support); here that
    // becomes an error.
    tokio::task::spawn_blocking(move || Nginx::start(&dir, None))
        .await
        .map_err(|e| anyhow!("nginx did not start: {e}"))
}

fn print_header(args: &Args, bench: &Bench) {
    println!("restream_bench: command: {}", command_line());
    println!(
        "restream_bench: tree {}; gateway {}; {} cores; window {:.0} s after {:.1} s warm-up; \
         {} round(s); gateway --record none; nginx-rtmp on 127.0.0.1:{}",
        tree_version(),
        std::env::var("WHIPCORD_BIN").unwrap_or_default(),
        cores(),
        args.seconds,
        args.warmup,
        args.rounds,
        bench.nginx.rtmp_port
    );
    for (name, clip) in [("h264", &bench.h264), ("vp8", &bench.vp8)] {
        if let Some(c) = clip {
            let (vb, vt) = sent_totals(&c.video, c.video.len() as u64);
            let (ab, at) = sent_totals(&c.audio, c.audio.len() as u64);
            println!(
                "restream_bench: {name} clip {}x{} {} fps, {:.0} kbit/s video (asked {}) + {:.0} kbit/s Opus, {} s looped",
                c.spec.width,
                c.spec.height,
                c.spec.fps,
                kbps(vb, vt),
                args.kbps,
                kbps(ab, at),
                c.spec.seconds
            );
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    ensure!(
        args.streams > 0 && args.vp8_streams > 0,
        "--streams and --vp8-streams must be at least 1"
    );
    ensure!(
        args.seconds > 0.0 && args.warmup >= 0.0,
        "--seconds must be positive"
    );
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let (h264, vp8) = load_clips(&args).await?;
    let nginx = start_nginx().await?;
    let bench = Bench {
        args: args.clone(),
        h264,
        vp8,
        nginx,
    };
    print_header(&args, &bench);

    let mut results = Vec::new();
    for (base, with) in phases(args.phase) {
        for round in 1..=args.rounds {
            for case in [base, with] {
                let r = run_case(&bench, case, round)
                    .await
                    .with_context(|| format!("the {} run, round {round}", case.name()))?;
                print_run(&r);
                results.push(r);
            }
        }
    }

    println!();
    let rtmp_pct = summarize_rtmp(&results, args.streams);
    let vp8_pct = summarize_vp8(&results, args.vp8_streams);
    warn_contention(&results);
    let mut ok = true;
    if let (Some(target), Some(pct)) = (args.target_pct, rtmp_pct) {
        let met = pct < target;
        println!(
            "target: one RTMP push < {target} % of a core: {}",
            if met { "ok" } else { "FAIL" }
        );
        ok = met;
    }
    println!("{}", json_line(&args, &results, rtmp_pct, vp8_pct));
    Ok(ok)
}

/// Whether a transcoder made over 3 % more or fewer frames than real time.
fn off_real_time(t: &TranscodeRates, case: Case, fps: f64) -> bool {
    let off = |rate: &f64, nominal: f64| (rate / nominal - 1.0).abs() > 0.03;
    t.aac_per_s.iter().any(|r| off(r, AAC_FRAMES_PER_S))
        || (case == Case::Vp8Transcode && t.h264_per_s.iter().any(|r| off(r, fps)))
}

/// Differences between runs mean little when the machine was saturated or
/// publishers could not keep real time.
fn warn_contention(results: &[RunResult]) {
    for r in results {
        let tag = format!("{}-r{}", r.case.name(), r.round);
        if r.proc.machine > 0.9 * cores() as f64 {
            println!("warning: [{tag}] the machine was over 90 % busy; figures include contention");
        }
        if r.sent.max_late > Duration::from_millis(200) {
            println!(
                "warning: [{tag}] publishers finished {} ms late; they were starved",
                r.sent.max_late.as_millis()
            );
        }
        if let Some(t) = &r.transcode
            && off_real_time(t, r.case, f64::from(r.fps))
        {
            println!(
                "warning: [{tag}] a transcoder ran off real time in the window (AAC {:.1?}/s, \
                 H264 {:.1?}/s): it was catching up or falling behind, which the gateway CPU \
                 includes and the real-time figures do not",
                t.aac_per_s, t.h264_per_s
            );
        }
        if r.rtmp.as_ref().is_some_and(|m| m.dropped_frames > 0) {
            println!("warning: [{tag}] targets dropped frames in the window");
        }
    }
}
