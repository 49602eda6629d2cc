//! `record_bench`: what recording costs the gateway. Runs the gateway twice
//! under the same load, N real-time WHIP publishers (a decodable libx264
//! clip, default 720p30 2.5 Mbit/s, plus Opus), once with `--record none`
//! and once with `--record all`, and compares the gateway's CPU over a
//! measurement window.
//!
//! ```sh
//! cargo build --release -p gateway -p whipcord-tests
//! target/release/record_bench --streams 2 --seconds 5     # smoke test
//! target/release/record_bench                             # 20 streams, 30 s window
//! ```
//!
//! Loopback only: each gateway is spawned on free 127.0.0.1 ports with its
//! own temporary data directory, removed afterwards. Per run it prints the
//! gateway's CPU-s/s (utime+stime from `/proc/<pid>/stat`), CPU by thread
//! name, RSS, this process's own CPU and the machine's (`/proc/stat`), and
//! how late the publishers ran. After the `all` run it deletes the
//! publishers, waits for every recording to be `complete` in
//! `GET /api/recordings`, and decodes one or two with `ffmpeg -v error`.
//! The recording cost per stream is (CPU_all − CPU_none) / N, as a share of
//! one core, against the 2 % target. Exits 1 if a check failed or the target
//! was missed, 2 on a setup error, 3 at the hard time limit. Method and
//! results: BENCHMARKS.md, "Recording cost".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::json;

use whipcord_tests::bench::{self, Sent};
use whipcord_tests::client::{MediaSent, PublishOptions, Publisher};
use whipcord_tests::clip::{Clip, ClipSpec};
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::probe;
use whipcord_tests::procstat::{self, Rates, Snapshot, clk_tck, cores};
use whipcord_tests::synth::VideoCodec;

#[derive(Parser, Debug, Clone)]
#[command(about = "CPU cost of recording: the gateway with --record none vs --record all")]
struct Args {
    /// Simultaneous publishers (streams), each recorded in the `all` run.
    #[arg(long, default_value_t = 20)]
    streams: usize,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seconds between the last publisher starting and the window.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Video bitrate of the clip, kbit/s.
    #[arg(long, default_value_t = 2500)]
    kbps: u32,
    #[arg(long, default_value_t = 1280)]
    width: u32,
    #[arg(long, default_value_t = 720)]
    height: u32,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Video codec: h264 (recorded as MP4) or vp8 (WebM).
    #[arg(long, default_value = "h264")]
    codec: String,
    /// Video content: `testsrc2` (the `load` tool's clip: lavfi testsrc2,
    /// which libx264 fills to the asked bitrate; H264 only) or `flash` (the
    /// recording tests' clip, `clip::ClipSpec`: testsrc with a flash every
    /// second; at 720p libx264 gives it only about 1.1 of 2.5 Mbit/s).
    #[arg(long, default_value = "testsrc2")]
    source: String,
    /// Length of the encoded clip each publisher loops, seconds.
    #[arg(long, default_value_t = 10)]
    clip_seconds: u32,
    /// Gateway binary [default: WHIPCORD_BIN, else target/release/whipcord].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Which runs, in order (comma-separated `none`, `all`).
    #[arg(long, default_value = "none,all")]
    runs: String,
    /// The spawned gateways' log filter (WHIPCORD_LOG).
    #[arg(long, default_value = "info")]
    gateway_log: String,
    /// How many recordings to decode with ffmpeg after the `all` run.
    #[arg(long, default_value_t = 2)]
    decode: usize,
    /// Per-stream target, percent of one core.
    #[arg(long, default_value_t = 2.0)]
    target_pct: f64,
    /// Hard time limit, seconds [default: from the run lengths].
    #[arg(long)]
    hard_limit: Option<f64>,
    /// Free-form label copied into the JSON line.
    #[arg(long)]
    label: Option<String>,
}

fn main() {
    let args = Args::parse();
    // SAFETY: no other thread exists yet.
    unsafe { bench::use_gateway_binary("record_bench", args.bin.as_deref()) };
    let runs = args.runs.split(',').count() as f64;
    let per_run = args.warmup + args.seconds + 2.0 + args.streams as f64 + 90.0;
    let hard_limit = args.hard_limit.unwrap_or(60.0 + runs * per_run);
    bench::spawn_watchdog("record_bench", hard_limit);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(bench::exit_code("record_bench", runtime, run(args)));
}

/// The clip every publisher sends, and the spec to connect with (which
/// decides the offered tracks). The clip is loaded once and shared.
fn build_clip(args: &Args, codec: VideoCodec) -> Result<(ClipSpec, Arc<Clip>)> {
    let spec = ClipSpec {
        video: Some(codec),
        audio: true,
        width: args.width,
        height: args.height,
        fps: args.fps,
        seconds: args.clip_seconds,
        video_kbps: args.kbps,
        ..ClipSpec::new(codec)
    };
    match args.source.as_str() {
        "flash" => {
            let clip = Clip::ensure(&spec)?;
            Ok((spec, Arc::new(clip)))
        }
        "testsrc2" => {
            ensure!(
                codec == VideoCodec::H264,
                "--source testsrc2 is H264 only; use --source flash for {}",
                codec.name()
            );
            // Opus from the recording tests' clip (same length), video
            // from the load tool's recipe and cache directory.
            let clip = bench::testsrc2_clip(&spec)?;
            // Connect with the tests' default clip spec (same codecs, small
            // and cached): `Publisher::connect` loads it, then the caller
            // swaps in this clip.
            Ok((ClipSpec::new(codec), Arc::new(clip)))
        }
        other => bail!("--source {other}: use testsrc2 or flash"),
    }
}

// ---------------------------------------------------------------------------
// One run

/// What one run measured.
struct RunResult {
    mode: String,
    /// The gateway's CPU (and this process's, and the machine's).
    proc: Rates,
    rss_kib: u64,
    hwm_kib: u64,
    /// Bytes/s the gateway wrote through write(2) and friends.
    wchar_rate: f64,
    /// How late the publishers finished their real-time schedule, max.
    max_late: Duration,
    sent: MediaSent,
    recordings: Option<RecordingsCheck>,
}

struct RecordingsCheck {
    count: usize,
    complete: usize,
    states: BTreeMap<String, usize>,
    total_bytes: u64,
    dropped_frames: u64,
    min_duration_ms: u64,
    decoded: Vec<(String, String)>,
    /// From the last publisher's DELETE to every recording being final.
    finish_time: Duration,
}

async fn run_once(args: &Args, spec: &ClipSpec, clip: &Arc<Clip>, mode: &str) -> Result<RunResult> {
    let options = GatewayOptions {
        args: vec!["--record".into(), mode.into()],
        env: vec![("WHIPCORD_LOG".into(), args.gateway_log.clone())],
        ..Default::default()
    };
    let mut gw = Gateway::start_with(options).await?;
    let pid = gw.pid().context("gateway has no pid")?;
    bench::watch_pid(pid);
    let data_dir = gw.data_dir.clone();
    bench::register_leftover(&data_dir);
    let result = measure(args, spec, clip, mode, &mut gw, pid).await;
    if let Err(e) = gw.terminate() {
        eprintln!("record_bench: stopping the gateway: {e:#}");
    }
    bench::watch_pid(0);
    if result.is_err() {
        bench::print_log_tail("gateway", &gw.log());
    }
    drop(gw);
    bench::forget_leftover(&data_dir);
    result
}

async fn measure(
    args: &Args,
    spec: &ClipSpec,
    clip: &Arc<Clip>,
    mode: &str,
    gw: &mut Gateway,
    pid: u32,
) -> Result<RunResult> {
    let base = gw.base_url();
    let media_len = Duration::from_secs_f64(args.warmup + args.seconds + 2.0);
    // Connect one by one and start each publisher's media at once, so
    // every stream is recording (from its first keyframe) well before the
    // window opens `warmup` after the last one started.
    let mut publishers = Vec::with_capacity(args.streams);
    let mut tasks = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let options = PublishOptions {
            media: Some(spec.clone()),
            ..PublishOptions::default()
        };
        let mut publisher = Publisher::connect(&base, &format!("rec{i:02}"), options)
            .await
            .with_context(|| format!("publisher {i}"))?;
        // `spec` only shaped the offer (codecs); this is what it sends.
        publisher.clip = Some(clip.clone());
        let publisher = Arc::new(publisher);
        // The task notes when it finished, to tell how late it ran.
        tasks.push(bench::start_media(&publisher, media_len));
        publishers.push(publisher);
    }
    println!(
        "[{mode}] {} publishers sending, warming up {:.1} s",
        args.streams, args.warmup
    );
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let s0 = Snapshot::take_lenient(pid);
    let wchar0 = procstat::io_field(pid, "wchar");
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let s1 = Snapshot::take_lenient(pid);
    let wchar1 = procstat::io_field(pid, "wchar");
    let (rss_kib, hwm_kib) = procstat::rss_hwm_kib(pid);
    ensure!(gw.is_running(), "the gateway exited during the window");
    let proc = Rates::between(&s0, &s1);

    // Let the media run out, then see how late it finished.
    let Sent {
        media: sent,
        max_late,
    } = bench::finish_media(tasks, media_len).await?;

    let delete_started = Instant::now();
    for p in &publishers {
        let status = p.delete().await?;
        ensure!(status == 200, "WHIP DELETE answered {status}");
    }
    let recordings = if mode == "all" {
        Some(check_recordings(args, gw, delete_started).await?)
    } else {
        None
    };
    for p in publishers {
        if let Ok(p) = Arc::try_unwrap(p) {
            let _ = tokio::time::timeout(Duration::from_secs(5), p.close()).await;
        }
    }
    Ok(RunResult {
        mode: mode.to_owned(),
        wchar_rate: wchar1.saturating_sub(wchar0) as f64 / proc.window,
        proc,
        rss_kib,
        hwm_kib,
        max_late,
        sent,
        recordings,
    })
}

/// Waits until the catalog holds `streams` recordings, none still
/// `recording`, then decodes a few.
async fn check_recordings(
    args: &Args,
    gw: &Gateway,
    delete_started: Instant,
) -> Result<RecordingsCheck> {
    let client = reqwest::Client::new();
    let url = gw.url("/api/recordings?limit=1000");
    let deadline = Instant::now() + Duration::from_secs(30);
    let items = loop {
        let text = client
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let body: serde_json::Value = serde_json::from_str(&text)?;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let settled = items.len() >= args.streams
            && items
                .iter()
                .all(|r| r["state"].as_str() != Some("recording"));
        if settled {
            break items;
        }
        if Instant::now() > deadline {
            bail!(
                "recordings not final 30 s after DELETE: {} rows, states {:?}",
                items.len(),
                items
                    .iter()
                    .map(|r| r["state"].as_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let finish_time = delete_started.elapsed();
    let mut states = BTreeMap::new();
    for r in &items {
        *states
            .entry(r["state"].as_str().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    let u64_of = |r: &serde_json::Value, key: &str| r[key].as_u64().unwrap_or(0);
    let files = index_files(&gw.recordings_dir());
    let mut decoded = Vec::new();
    for r in items.iter().take(args.decode) {
        let name = r["file_name"].as_str().unwrap_or_default().to_owned();
        let path = files
            .get(&name)
            .with_context(|| format!("{name} not found under the recordings directory"))?
            .clone();
        let errors = tokio::task::spawn_blocking(move || probe::decode_errors(&path)).await??;
        decoded.push((name, errors));
    }
    Ok(RecordingsCheck {
        count: items.len(),
        complete: states.get("complete").copied().unwrap_or(0),
        states,
        total_bytes: items.iter().map(|r| u64_of(r, "size_bytes")).sum(),
        dropped_frames: items.iter().map(|r| u64_of(r, "dropped_frames")).sum(),
        min_duration_ms: items
            .iter()
            .map(|r| u64_of(r, "duration_ms"))
            .min()
            .unwrap_or(0),
        decoded,
        finish_time,
    })
}

/// File name → path of every file under `dir` (a few levels deep).
fn index_files(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_owned(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                if depth < 6 {
                    stack.push((path, depth + 1));
                }
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                out.insert(name.to_owned(), path.clone());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Report

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_run(r: &RunResult, streams: usize, window: f64) {
    println!(
        "[{}] gateway {:.3} CPU-s/s, RSS {:.1} MiB (peak {:.1}), wrote {:.2} MB/s; \
         bench {:.2} CPU-s/s; machine {:.2} of {} cores busy ({:.2} by other processes); \
         publishers at most {} ms late",
        r.mode,
        r.proc.process,
        mib(r.rss_kib),
        mib(r.hwm_kib),
        r.wchar_rate / 1e6,
        r.proc.own,
        r.proc.machine,
        cores(),
        r.proc.others(),
        r.max_late.as_millis()
    );
    println!(
        "[{}]   by thread (CPU-s/s): {}",
        r.mode,
        r.proc.thread_list()
    );
    let s = &r.sent;
    println!(
        "[{}]   sent: {} video frames, {} video + {} audio RTP packets ({} streams, {:.0} s each)",
        r.mode, s.video_frames, s.video_rtp_packets, s.audio_rtp_packets, streams, window
    );
    if let Some(c) = &r.recordings {
        println!(
            "[{}]   recordings: {} rows {:?}, {:.1} MB total, shortest {:.1} s, \
             {} dropped frames, final {:.1} s after DELETE",
            r.mode,
            c.count,
            c.states,
            c.total_bytes as f64 / 1e6,
            c.min_duration_ms as f64 / 1000.0,
            c.dropped_frames,
            c.finish_time.as_secs_f64()
        );
        for (name, errors) in &c.decoded {
            let verdict = if errors.is_empty() {
                "clean".to_owned()
            } else {
                format!("ERRORS:\n{errors}")
            };
            println!("[{}]   ffmpeg -v error {name}: {verdict}", r.mode);
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    let codec = match args.codec.to_ascii_lowercase().as_str() {
        "h264" => VideoCodec::H264,
        "vp8" => VideoCodec::Vp8,
        other => bail!("--codec {other}: use h264 or vp8"),
    };
    ensure!(args.streams > 0, "--streams must be at least 1");
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    let modes: Vec<String> = args.runs.split(',').map(|m| m.trim().to_owned()).collect();
    ensure!(
        modes.iter().all(|m| m == "none" || m == "all"),
        "--runs takes none and/or all"
    );
    let (connect_spec, clip) = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || build_clip(&args, codec)).await??
    };
    let video_bytes: usize = clip.video.iter().map(|f| f.data.len()).sum();
    let audio_bytes: usize = clip.audio.iter().map(|f| f.data.len()).sum();
    let clip_secs = clip.duration().as_secs_f64();
    let clip_video_kbps = video_bytes as f64 * 8.0 / clip_secs / 1000.0;
    let clip_audio_kbps = audio_bytes as f64 * 8.0 / clip_secs / 1000.0;
    let bin = std::env::var("WHIPCORD_BIN").unwrap_or_default();
    println!(
        "record_bench: {} streams of {} ({}) {}x{} {} fps, {:.0} kbit/s video (asked {}) + {:.0} kbit/s Opus; \
         window {:.0} s after {:.1} s warmup; {} cores; gateway {bin}",
        args.streams,
        codec.name(),
        args.source,
        args.width,
        args.height,
        args.fps,
        clip_video_kbps,
        args.kbps,
        clip_audio_kbps,
        args.seconds,
        args.warmup,
        cores()
    );

    let mut results = Vec::new();
    for mode in &modes {
        let r = run_once(&args, &connect_spec, &clip, mode)
            .await
            .with_context(|| format!("the --record {mode} run"))?;
        print_run(&r, args.streams, args.warmup + args.seconds + 2.0);
        results.push(r);
    }

    let mut ok = true;
    let none = results.iter().find(|r| r.mode == "none");
    let all = results.iter().find(|r| r.mode == "all");
    if let Some(c) = all.and_then(|r| r.recordings.as_ref()) {
        let clean = c.decoded.iter().all(|(_, e)| e.is_empty());
        if c.count != args.streams || c.complete != args.streams || !clean {
            println!(
                "FAIL: want {} complete, cleanly decoding recordings; got {} rows, {} complete{}",
                args.streams,
                c.count,
                c.complete,
                if clean { "" } else { ", decode errors" }
            );
            ok = false;
        }
    }

    println!();
    println!(
        "| run | gateway CPU-s/s | recorder threads CPU-s/s | RSS | written | bench CPU-s/s | machine busy (others) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        let recorder: f64 = r
            .proc
            .threads
            .iter()
            .filter(|(k, _)| k.starts_with("whipcord-rec"))
            .map(|(_, v)| v)
            .sum();
        let written = r.recordings.as_ref().map_or("-".to_owned(), |c| {
            format!("{:.1} MB", c.total_bytes as f64 / 1e6)
        });
        println!(
            "| {} | {:.3} | {:.3} | {:.1} MiB | {} | {:.2} | {:.2} / {} ({:.2}) |",
            r.mode,
            r.proc.process,
            recorder,
            mib(r.rss_kib),
            written,
            r.proc.own,
            r.proc.machine,
            cores(),
            r.proc.others()
        );
    }
    let mut per_stream_pct = None;
    if let (Some(none), Some(all)) = (none, all) {
        let pct = (all.proc.process - none.proc.process) / args.streams as f64 * 100.0;
        per_stream_pct = Some(pct);
        let met = pct < args.target_pct;
        println!(
            "\nrecording cost: ({:.3} - {:.3}) / {} = {:.2} % of one core per stream \
             (target < {} %): {}",
            all.proc.process,
            none.proc.process,
            args.streams,
            pct,
            args.target_pct,
            if met { "ok" } else { "FAIL" }
        );
        ok &= met;
        let saturated = results
            .iter()
            .any(|r| r.proc.machine > 0.9 * cores() as f64);
        if saturated {
            println!(
                "warning: the machine was over 90 % busy in a window; the figures measure contention"
            );
        }
    }

    let line = json!({
        "label": args.label,
        "streams": args.streams,
        "codec": codec.name(),
        "width": args.width,
        "height": args.height,
        "fps": args.fps,
        "kbps_asked": args.kbps,
        "clip_video_kbps": clip_video_kbps,
        "clip_audio_kbps": clip_audio_kbps,
        "window_s": args.seconds,
        "warmup_s": args.warmup,
        "cores": cores(),
        "clk_tck": clk_tck(),
        "per_stream_pct_of_core": per_stream_pct,
        "target_pct": args.target_pct,
        "runs": results.iter().map(|r| json!({
            "mode": r.mode,
            "gateway_cpu_s_per_s": r.proc.process,
            "threads": r.proc.threads,
            "bench_cpu_s_per_s": r.proc.own,
            "machine_busy_cores": r.proc.machine,
            "rss_kib": r.rss_kib,
            "hwm_kib": r.hwm_kib,
            "wchar_bytes_per_s": r.wchar_rate,
            "max_late_ms": r.max_late.as_millis() as u64,
            "video_rtp_packets": r.sent.video_rtp_packets,
            "audio_rtp_packets": r.sent.audio_rtp_packets,
            "recordings": r.recordings.as_ref().map(|c| json!({
                "count": c.count,
                "states": c.states,
                "total_bytes": c.total_bytes,
                "dropped_frames": c.dropped_frames,
                "min_duration_ms": c.min_duration_ms,
                "finish_ms": c.finish_time.as_millis() as u64,
                "decoded": c.decoded.iter().map(|(n, e)| json!({"file": n, "errors": e})).collect::<Vec<_>>(),
            })),
        })).collect::<Vec<_>>(),
    });
    println!("{line}");
    Ok(ok)
}
