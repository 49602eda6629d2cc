//! `ingest_bench`: what ingesting a stream costs the gateway. Spawns the
//! real gateway binary with `--record none --hls off` (so that only the
//! ingest is paid for) and N real sources of a 1280×720 30 fps H264 clip at
//! 2.5 Mbit/s, waits until every stream is live, and reads the gateway's
//! utime+stime over a window:
//!
//! - `rtmp`: N FFmpeg processes publish the H264 + AAC clip with
//!   `-re -stream_loop -1 -i clip.mp4 -c copy -f flv rtmp://…/live/sN`, with
//!   no encoding on the client side. Each stream costs the gateway RTMP
//!   parsing, H264 repacketizing into RTP and the AAC→Opus transcode for
//!   WebRTC viewers (always done).
//! - `rtsp`: N `--pull sN=rtsp://…/video` sources from one GStreamer RTSP
//!   server (`tests/rtsp/rtsp_server.py`) serving the clip's video alone,
//!   so nothing is transcoded. `--rtsp-audio` serves H264 + AAC instead
//!   (`/marks`), which adds the AAC→Opus transcode. Each client gets its own
//!   pipeline, playing from the start a file made of enough copies of the
//!   clip (`-stream_loop`, stream copy) to outlast the run.
//!
//! ```sh
//! nice -n 19 cargo build --release -p whipcord-tests --bin ingest_bench
//! target/release/ingest_bench --scenario rtmp --streams 4
//! target/release/ingest_bench --scenario rtsp --streams 4 [--viewers 1]
//! ```
//!
//! The clip (libx264 veryfast, constrained baseline, CBR 2.5 Mbit/s with
//! `maxrate` = bitrate, a keyframe every 2 s, no B-frames; AAC-LC 128 kbit/s
//! 48 kHz stereo; 24 s) is encoded once and cached under
//! `target/ingest-media/`, with its video-only variant. The gateway binary
//! (`--gateway`, else `WHIPCORD_BIN`, else `target/release/whipcord`) is
//! copied to a temporary folder first, so that a concurrent build cannot
//! swap it mid-run. Loopback only.
//!
//! The window opens `--warmup-secs` after every stream is listed by
//! `GET /api/streams` (and every viewer of `--viewers` gets media). It gives
//! the gateway's CPU-s/s from `/proc/<pid>/stat`, by thread name from
//! `/proc/<pid>/task/*/stat`, RSS at its end, the RTP packets and payload
//! bytes the gateway received (`/metrics`, read just outside the window),
//! and, for context, the CPU of the client processes (FFmpeg or the RTSP
//! server), of this process (the viewers) and of the whole machine. After
//! the window every stream must still be listed with an uptime covering the
//! window, every client process alive, and every RTSP source live without
//! a reconnect. Prints a report, a Markdown table row, and one JSON line.
//! Exits 0 on success, 1 when a check after the window failed, 2 on a setup
//! error, 3 at the hard time limit. Every child process is killed on exit,
//! including on an error, a panic, SIGINT, SIGTERM or the hard limit.
//! Should this process be SIGKILLed, `PR_SET_PDEATHSIG` still takes FFmpeg
//! and the RTSP server down, but not the gateway (spawned by the shared
//! `gateway::Gateway` runner). Method and results: BENCHMARKS.md, "Ingest
//! (RTMP, RTSP)".

use std::collections::BTreeMap;
use std::ffi::{c_int, c_ulong};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use whipcord_tests::api::Api;
use whipcord_tests::bench;
use whipcord_tests::client::{Viewer, WatchOptions};
use whipcord_tests::clip;
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::procstat::{self, Rates, Snapshot, clk_tck, cores};

const TOOL: &str = "ingest_bench";
/// The API token the spawned gateway gets, for `GET /api/v1/sources`.
const API_TOKEN: &str = "ingest-bench-api-token-0123456789";
/// Its admin password: without one it generates one and logs it as a
/// warning, which would read as a problem in the report.
const ADMIN_PASSWORD: &str = "ingest-bench-admin-password-0123456789";

#[derive(Parser, Debug, Clone)]
#[command(about = "Gateway CPU per ingested stream: RTMP publishers or RTSP pulls at 2.5 Mbit/s")]
struct Args {
    /// How the streams come in.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Streams ingested at once (0: the idle gateway, for a baseline).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 20.0)]
    window_secs: f64,
    /// Seconds between every stream being live (and every viewer getting
    /// media) and the window.
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// WHEP viewers per stream (in this process), 0 for ingest alone.
    #[arg(long, default_value_t = 0)]
    viewers: usize,
    /// `rtsp`: serve H264 + AAC (transcoded to Opus by the gateway) rather
    /// than the video alone.
    #[arg(long)]
    rtsp_audio: bool,
    /// Video bitrate of the clip, kbit/s.
    #[arg(long, default_value_t = 2500)]
    kbps: u32,
    /// Length of the clip, seconds (a multiple of the 2 s keyframe
    /// interval keeps the loops seamless).
    #[arg(long, default_value_t = 24)]
    clip_secs: u32,
    /// Gateway binary [default: WHIPCORD_BIN, else target/release/whipcord].
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// The spawned gateway's log filter (WHIPCORD_LOG).
    #[arg(long, default_value = "info")]
    gateway_log: String,
    /// Hard time limit, seconds [default: from the run's length].
    #[arg(long)]
    hard_limit: Option<f64>,
    /// Free-form label copied into the JSON line.
    #[arg(long)]
    label: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Rtmp,
    Rtsp,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Rtmp => "rtmp",
            Scenario::Rtsp => "rtsp",
        }
    }
}

impl Args {
    /// Whether the ingested streams carry audio.
    fn audio(&self) -> bool {
        self.scenario == Scenario::Rtmp || self.rtsp_audio
    }

    /// Bound on waiting for every stream to be listed as live.
    fn live_limit(&self) -> Duration {
        Duration::from_secs(30 + 2 * self.streams as u64)
    }

    /// Bound on connecting the viewers and their first media.
    fn viewers_limit(&self) -> Duration {
        Duration::from_secs(20 + 3 * (self.streams * self.viewers) as u64)
    }
}

fn main() {
    let args = Args::parse();
    if args.window_secs <= 0.0 || args.clip_secs < 2 {
        eprintln!("{TOOL}: error: --window-secs and --clip-secs must be positive");
        std::process::exit(2);
    }
    if args.rtsp_audio && args.scenario != Scenario::Rtsp {
        eprintln!("{TOOL}: error: --rtsp-audio goes with --scenario rtsp");
        std::process::exit(2);
    }
    let work = std::env::temp_dir().join(format!("{TOOL}-{}", std::process::id()));
    bench::register_leftover(&work);
    // SAFETY: no other thread exists yet.
    let binary = match unsafe { use_private_copy(args.gateway.as_deref(), &work) } {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("{TOOL}: error: {e:#}");
            bench::cleanup_leftovers(false);
            std::process::exit(2);
        }
    };
    let hard_limit = args.hard_limit.unwrap_or_else(|| default_hard_limit(&args));
    spawn_watchdog(hard_limit);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{TOOL}: error: tokio runtime: {e}");
            bench::cleanup_leftovers(false);
            std::process::exit(2);
        }
    };
    let code = {
        // Also on a panic, which unwinds through here.
        let _cleanup = Cleanup;
        bench::exit_code(TOOL, runtime, run_until_signal(args, binary, work))
    };
    std::process::exit(code);
}

/// Kills what is left of the children and removes the temporary folders
/// (the gateway's copy, the logs, its data directory) when dropped.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_registered();
        bench::cleanup_leftovers(false);
    }
}

/// Seconds the whole invocation may take: encoding the clip once (slow on
/// a busy machine), the waits' own bounds, the window, and shutdown.
fn default_hard_limit(args: &Args) -> f64 {
    240.0
        + args.live_limit().as_secs_f64()
        + if args.viewers > 0 {
            args.viewers_limit().as_secs_f64()
        } else {
            0.0
        }
        + args.warmup_secs
        + args.window_secs
}

/// Copies the gateway binary into `work` (so that a build running beside
/// the benchmark cannot replace it mid-run) and points `WHIPCORD_BIN` at
/// the copy; returns the original's path.
///
/// # Safety
///
/// It sets an environment variable: call it before any other thread
/// exists.
unsafe fn use_private_copy(bin: Option<&Path>, work: &Path) -> Result<PathBuf> {
    let original = bench::resolve_gateway_binary(bin)?;
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let copy = work.join("whipcord");
    std::fs::copy(&original, &copy)
        .with_context(|| format!("copying {} to {}", original.display(), copy.display()))?;
    // SAFETY: the caller promises that no other thread exists yet.
    unsafe { std::env::set_var("WHIPCORD_BIN", &copy) };
    Ok(original)
}

// ---------------------------------------------------------------------------
// Child processes: killed on drop, by the watchdog, or when we die

/// Every child process alive (FFmpeg, the RTSP server, the gateway), for
/// the watchdog to kill.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register_child(pid: u32) {
    if let Ok(mut pids) = CHILDREN.lock() {
        pids.push(pid);
    }
}

fn forget_child(pid: u32) {
    if let Ok(mut pids) = CHILDREN.lock() {
        pids.retain(|p| *p != pid);
    }
}

unsafe extern "C" {
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn prctl(option: c_int, ...) -> c_int;
}

const SIGKILL: c_int = 9;
const PR_SET_PDEATHSIG: c_int = 1;

/// SIGKILLs every registered child.
fn kill_registered() {
    let pids = CHILDREN
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    for pid in pids {
        if let Ok(pid) = c_int::try_from(pid) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped.
            unsafe { kill(pid, SIGKILL) };
        }
    }
}

/// After `limit` seconds, kills every child, removes the temporary
/// folders and exits 3, should the run hang.
fn spawn_watchdog(limit: f64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(limit));
        eprintln!("{TOOL}: hard limit of {limit:.0} s reached, exiting");
        kill_registered();
        bench::cleanup_leftovers(false);
        std::process::exit(3);
    });
}

/// A client process (FFmpeg, the RTSP server): stdin closed, stderr to a
/// log file, SIGKILLed when this process dies, and killed on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // SAFETY: the hook only calls prctl(2), which is async-signal-safe.
        // The death signal fires when the spawning thread ends: children
        // are spawned from the runtime's `block_on` future, which runs on
        // the main thread.
        unsafe {
            command.pre_exec(|| {
                prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong);
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        register_child(child.id());
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails with the process's last log lines if it has exited.
    fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.exited() {
            bail!(
                "{} exited ({status}); its log ends:\n{}",
                self.name,
                self.log_tail(15)
            );
        }
        Ok(())
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        forget_child(self.child.id());
    }
}

// ---------------------------------------------------------------------------
// Media

/// The clip's files under `target/ingest-media/`.
struct Media {
    /// H264 + AAC, `--clip-secs` long.
    av: PathBuf,
    /// What the RTSP server plays (rtsp only): enough copies of the clip's
    /// video (or of the whole clip, with `--rtsp-audio`) to outlast the run.
    rtsp: Option<PathBuf>,
    /// The clip's video bitrate as ffprobe reads it, kbit/s.
    video_kbps: f64,
}

fn media_dir() -> Result<PathBuf> {
    Ok(clip::cache_dir()
        .parent()
        .context("clip cache directory has no parent")?
        .join("ingest-media"))
}

/// Runs `ffmpeg` with `args` + `-f mp4 TMP` and renames TMP to `out`,
/// unless `out` exists already.
fn ffmpeg_once(out: &Path, args: &[String]) -> Result<()> {
    if out.metadata().is_ok_and(|m| m.len() > 0) {
        return Ok(());
    }
    let dir = out.parent().context("output has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = out.file_name().context("output has no name")?;
    let tmp = dir.join(format!(
        "{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    eprintln!("{TOOL}: making {}", out.display());
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(args)
        .args(["-movflags", "+faststart", "-f", "mp4"])
        .arg(&tmp)
        .stdin(Stdio::null())
        .output()
        .context("running ffmpeg (apt-get install -y ffmpeg)")?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "ffmpeg failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Makes (once) the clip, and for `rtsp` the file the server plays.
fn prepare_media(args: &Args) -> Result<Media> {
    let dir = media_dir()?;
    let stem = format!(
        "testsrc2-1280x720-30fps-{}s-{}k-g60-aac128k",
        args.clip_secs, args.kbps
    );
    let av = dir.join(format!("{stem}.mp4"));
    let rate = format!("{}k", args.kbps);
    let buf = format!("{}k", args.kbps / 2);
    let secs = args.clip_secs.to_string();
    let encode = strings(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &secs,
        "-map",
        "0:v",
        "-map",
        "1:a",
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
        "60",
        "-keyint_min",
        "60",
        "-sc_threshold",
        "0",
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-ar",
        "48000",
        "-ac",
        "2",
    ]);
    ffmpeg_once(&av, &encode)?;
    let video = dir.join(format!("{stem}-video.mp4"));
    let av_name = av.display().to_string();
    ffmpeg_once(
        &video,
        &strings(&["-i", &av_name, "-map", "0:v", "-c", "copy"]),
    )?;
    let rtsp = if args.scenario == Scenario::Rtsp {
        // Each client's pipeline plays from the start when the gateway
        // connects: the file must outlast the waits, the warm-up, the
        // window and the checks after it.
        let need = args.live_limit().as_secs_f64()
            + if args.viewers > 0 {
                args.viewers_limit().as_secs_f64()
            } else {
                0.0
            }
            + args.warmup_secs
            + args.window_secs
            + 15.0;
        let copies = (need / f64::from(args.clip_secs)).ceil().max(1.0) as u32;
        let (source, kind) = if args.rtsp_audio {
            (&av, "av")
        } else {
            (&video, "video")
        };
        let long = dir.join(format!("{stem}-{kind}-x{copies}.mp4"));
        let loops = (copies - 1).to_string();
        let source = source.display().to_string();
        ffmpeg_once(
            &long,
            &strings(&["-stream_loop", &loops, "-i", &source, "-c", "copy"]),
        )?;
        Some(long)
    } else {
        None
    };
    let video_kbps = probe_video_kbps(&av).unwrap_or(0.0);
    Ok(Media {
        av,
        rtsp,
        video_kbps,
    })
}

fn probe_video_kbps(path: &Path) -> Option<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=bit_rate", "-of", "csv=p=0"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let bps: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(bps / 1000.0)
}

// ---------------------------------------------------------------------------
// Sources

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// GStreamer's RTSP server with `/video` (or `/marks`) playing `file`.
async fn start_rtsp_server(work: &Path, file: &Path, audio: bool) -> Result<(Proc, String)> {
    let port = free_port()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rtsp")
        .join("rtsp_server.py");
    let (var, mount) = if audio {
        ("MARKS_FILE", "/marks")
    } else {
        ("VIDEO_FILE", "/video")
    };
    // The system python: a virtual environment has no `gi`.
    let mut command = Command::new("/usr/bin/python3");
    command
        .arg(&script)
        .arg(port.to_string())
        .env(var, file)
        .stdout(Stdio::piped());
    let mut server = Proc::spawn("RTSP server", &mut command, work.join("rtsp_server.log"))?;
    let stdout = server.child.stdout.take().context("no stdout")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("READY") {
                let _ = ready_tx.send(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready_rx.try_recv().is_err() {
        server.ensure_running()?;
        ensure!(
            Instant::now() < deadline,
            "the RTSP server was not ready within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((server, format!("rtsp://127.0.0.1:{port}{mount}")))
}

/// An FFmpeg process publishing the clip, looped, in real time, without
/// re-encoding.
fn start_rtmp_publisher(work: &Path, clip: &Path, url: &str, stream: &str) -> Result<Proc> {
    let mut command = Command::new("ffmpeg");
    command
        .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(["-re", "-stream_loop", "-1", "-i"])
        .arg(clip)
        .args(["-c", "copy", "-f", "flv", url])
        .stdout(Stdio::null());
    Proc::spawn(
        &format!("ffmpeg publishing {stream}"),
        &mut command,
        work.join(format!("ffmpeg-{stream}.log")),
    )
}

// ---------------------------------------------------------------------------
// The gateway's API

/// The streams `GET /api/streams` lists: name → uptime_s.
async fn live_streams(api: &Api) -> Result<BTreeMap<String, u64>> {
    let reply = api.get("/api/streams").await?;
    ensure!(reply.status == 200, "GET /api/streams: {}", reply.status);
    let body = reply.json()?;
    Ok(body["streams"]
        .as_array()
        .context("GET /api/streams: no streams array")?
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["uptime_s"].as_u64()?)))
        .collect())
}

/// Waits (bounded) until every stream is listed, failing early when a
/// client process exits.
async fn wait_live(
    api: &Api,
    streams: &[String],
    clients: &mut [Proc],
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        for client in clients.iter_mut() {
            client.ensure_running()?;
        }
        let live = live_streams(api).await.unwrap_or_default();
        let missing: Vec<&String> = streams.iter().filter(|s| !live.contains_key(*s)).collect();
        if missing.is_empty() {
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < limit,
            "{} of {} streams not live within {limit:?}: {missing:?}",
            missing.len(),
            streams.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RTSP sources as `GET /api/v1/sources` lists them: stream → (state,
/// reconnects, last error).
async fn sources(api: &Api) -> Result<BTreeMap<String, (String, u64, Option<String>)>> {
    let reply = api.get("/api/v1/sources").await?;
    ensure!(reply.status == 200, "GET /api/v1/sources: {}", reply.status);
    let body = reply.json()?;
    Ok(body["items"]
        .as_array()
        .context("GET /api/v1/sources: no items array")?
        .iter()
        .filter_map(|s| {
            Some((
                s["stream"].as_str()?.to_owned(),
                (
                    s["state"].as_str().unwrap_or("?").to_owned(),
                    s["reconnects"].as_u64().unwrap_or(0),
                    s["last_error"].as_str().map(str::to_owned),
                ),
            ))
        })
        .collect())
}

/// The gateway's `/metrics` counters, with when they were read.
#[derive(Clone, Debug)]
struct Counters {
    at: Instant,
    values: BTreeMap<String, f64>,
}

impl Counters {
    async fn read(api: &Api) -> Result<Self> {
        let reply = api.get("/metrics").await?;
        let at = Instant::now();
        ensure!(reply.status == 200, "GET /metrics: {}", reply.status);
        let values = String::from_utf8_lossy(&reply.body)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let name = parts.next()?;
                let value = parts.next()?.parse().ok()?;
                Some((name.to_owned(), value))
            })
            .collect();
        Ok(Self { at, values })
    }

    /// The rate of counter `name` per second between `self` and `later`.
    fn rate(&self, later: &Counters, name: &str) -> f64 {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let v = |c: &Counters| c.values.get(name).copied().unwrap_or(0.0);
        (v(later) - v(self)).max(0.0) / secs
    }
}

// ---------------------------------------------------------------------------
// The run

/// utime + stime of the client processes, clock ticks.
fn clients_ticks(clients: &[Proc]) -> u64 {
    clients
        .iter()
        .filter_map(|c| procstat::proc_cpu(c.pid()))
        .sum()
}

/// RTP packets all the viewers received so far.
fn viewer_packets(viewers: &[Viewer]) -> u64 {
    viewers
        .iter()
        .flat_map(|v| v.snapshot())
        .map(|t| t.packets)
        .sum()
}

/// Runs the benchmark, or stops it (dropping, and so killing, every child)
/// on SIGINT or SIGTERM.
async fn run_until_signal(args: Args, binary: PathBuf, work: PathBuf) -> Result<bool> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = run(args, binary, work) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

async fn run(args: Args, binary: PathBuf, work: PathBuf) -> Result<bool> {
    println!("$ {}", command_line());
    let media = tokio::task::spawn_blocking({
        let args = args.clone();
        move || prepare_media(&args)
    })
    .await
    .context("preparing the clip panicked")??;
    let streams: Vec<String> = (0..args.streams).map(|i| format!("s{i}")).collect();
    let mut clients: Vec<Proc> = Vec::new();

    let mut options = GatewayOptions::default()
        .arg("--record")
        .arg("none")
        .arg("--hls")
        .arg("off")
        .arg("--api-token")
        .arg(API_TOKEN);
    options.env = vec![
        ("WHIPCORD_LOG".into(), args.gateway_log.clone()),
        ("WHIPCORD_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
    ];
    if args.scenario == Scenario::Rtsp {
        let file = media.rtsp.as_deref().context("no RTSP file")?;
        let (server, url) = start_rtsp_server(&work, file, args.rtsp_audio).await?;
        clients.push(server);
        for s in &streams {
            options = options.arg("--pull").arg(format!("{s}={url}"));
        }
    }
    // RTSP sources connect as the gateway starts.
    let started = Instant::now();
    let mut gw = Gateway::start_with(options).await?;
    let pid = gw.pid().context("gateway has no pid")?;
    register_child(pid);
    bench::register_leftover(&gw.data_dir);
    let result = drive(&args, &media, &streams, &mut clients, &work, &gw, started).await;
    let log = gw.log();
    if let Err(e) = gw.terminate() {
        eprintln!("{TOOL}: stopping the gateway: {e:#}");
    }
    forget_child(pid);
    let data_dir = gw.data_dir.clone();
    drop(gw);
    bench::forget_leftover(&data_dir);
    let (warnings, errors) = log_problems(&log);
    match result {
        Ok(report) => {
            let ok = report.checks.is_empty();
            print_report(&args, &media, &binary, &report, &warnings, &errors);
            Ok(ok)
        }
        Err(e) => {
            bench::print_log_tail("gateway", &log);
            for client in &clients {
                eprintln!("---- {} log (last 15 lines) ----", client.name);
                eprintln!("{}", client.log_tail(15));
            }
            Err(e)
        }
    }
}

/// What one run measured.
struct Report {
    proc: Rates,
    rss_kib: u64,
    hwm_kib: u64,
    /// CPU-s/s of the client processes together.
    clients_cpu: f64,
    /// Time from the first publisher's start (rtmp) or the gateway's
    /// (rtsp) to every stream being listed.
    live_after: Duration,
    /// RTP packets/s and payload kbit/s the gateway received, all streams.
    in_pps: f64,
    in_kbps: f64,
    /// RTP packets/s the gateway sent (to viewers).
    out_pps: f64,
    /// RTP packets/s the viewers received.
    viewer_pps: f64,
    /// Failed checks after the window (empty: all passed).
    checks: Vec<String>,
}

/// Starts the sources, waits for them, measures the window, and checks.
async fn drive(
    args: &Args,
    media: &Media,
    streams: &[String],
    clients: &mut Vec<Proc>,
    work: &Path,
    gw: &Gateway,
    mut started: Instant,
) -> Result<Report> {
    let pid = gw.pid().context("gateway has no pid")?;
    let api = Api::with_token(gw, Some(API_TOKEN));
    if args.scenario == Scenario::Rtmp {
        started = Instant::now();
        for s in streams {
            let url = format!("rtmp://{}/live/{s}", gw.rtmp_addr());
            clients.push(start_rtmp_publisher(work, &media.av, &url, s)?);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_live(&api, streams, clients, args.live_limit()).await?;
    let live_after = started.elapsed();
    println!(
        "{} {} streams live after {:.1} s",
        streams.len(),
        args.scenario.name(),
        live_after.as_secs_f64()
    );

    let mut viewers = Vec::new();
    if args.viewers > 0 {
        let deadline = Instant::now() + args.viewers_limit();
        let options = WatchOptions {
            audio: args.audio(),
            data_channel: false,
            ..WatchOptions::av()
        };
        let tracks = if args.audio() { 2 } else { 1 };
        for s in streams {
            for _ in 0..args.viewers {
                let left = deadline.saturating_duration_since(Instant::now());
                let viewer =
                    tokio::time::timeout(left, Viewer::connect(&gw.base_url(), s, options.clone()))
                        .await
                        .with_context(|| format!("a viewer of {s} did not connect in time"))?
                        .with_context(|| format!("viewer of {s}"))?;
                viewers.push(viewer);
            }
        }
        for v in &viewers {
            let left = deadline.saturating_duration_since(Instant::now());
            v.wait_tracks(tracks, 30, left.max(Duration::from_secs(1)))
                .await?;
        }
        println!("{} viewers receiving", viewers.len());
    }

    println!("warming up {:.1} s", args.warmup_secs);
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
    for client in clients.iter_mut() {
        client.ensure_running()?;
    }

    // The window. HTTP reads stay outside it, so they cost the measured
    // gateway nothing.
    let m0 = Counters::read(&api).await?;
    let v0 = viewer_packets(&viewers);
    let c0 = clients_ticks(clients);
    let s0 = Snapshot::take(pid).context("the gateway's /proc/<pid>/stat is unreadable")?;
    println!("measuring {:.1} s", args.window_secs);
    tokio::time::sleep(Duration::from_secs_f64(args.window_secs)).await;
    let s1 = Snapshot::take(pid).context("the gateway exited during the window")?;
    let c1 = clients_ticks(clients);
    let v1 = viewer_packets(&viewers);
    let (rss_kib, hwm_kib) = procstat::rss_hwm_kib(pid);
    let m1 = Counters::read(&api).await?;
    let proc = Rates::between(&s0, &s1);
    let window = proc.window;
    let clients_cpu = c1.saturating_sub(c0) as f64 / clk_tck() / window;

    let mut checks = Vec::new();
    let live = live_streams(&api).await?;
    for s in streams {
        match live.get(s) {
            None => checks.push(format!("{s} is no longer live after the window")),
            Some(&uptime) if (uptime as f64) < window.floor() => checks.push(format!(
                "{s} has been live for only {uptime} s, less than the window"
            )),
            Some(_) => {}
        }
    }
    for client in clients.iter_mut() {
        if let Some(status) = client.exited() {
            checks.push(format!(
                "{} exited ({status}): {}",
                client.name,
                client.log_tail(5)
            ));
        }
    }
    if args.scenario == Scenario::Rtsp {
        let list = sources(&api).await?;
        for s in streams {
            match list.get(s) {
                None => checks.push(format!("no source {s} in /api/v1/sources")),
                Some((state, reconnects, error)) if state != "live" || *reconnects > 0 => checks
                    .push(format!(
                        "source {s} is {state} after {reconnects} reconnects (last error: {error:?})"
                    )),
                Some(_) => {}
            }
        }
    }
    let in_pps = m0.rate(&m1, "whipcord_packets_received_total");
    if in_pps <= 0.0 && !streams.is_empty() {
        checks.push("the gateway received no RTP packets in the window".into());
    }
    let viewer_pps = v1.saturating_sub(v0) as f64 / window;
    if !viewers.is_empty() && viewer_pps <= 0.0 {
        checks.push("the viewers received nothing in the window".into());
    }
    for v in viewers {
        let _ = tokio::time::timeout(Duration::from_secs(5), v.delete()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), v.close()).await;
    }
    Ok(Report {
        proc,
        rss_kib,
        hwm_kib,
        clients_cpu,
        live_after,
        in_pps,
        in_kbps: m0.rate(&m1, "whipcord_bytes_received_total") * 8.0 / 1000.0,
        out_pps: m0.rate(&m1, "whipcord_packets_sent_total"),
        viewer_pps,
        checks,
    })
}

/// The gateway log's WARN and ERROR lines.
fn log_problems(log: &str) -> (Vec<String>, Vec<String>) {
    let pick = |level: &str| {
        log.lines()
            .filter(|l| l.contains(level))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    (pick(" WARN "), pick(" ERROR "))
}

// ---------------------------------------------------------------------------
// Report

/// The command line as typed, quoted for a POSIX shell where needed.
fn command_line() -> String {
    let quote = |a: String| {
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    std::env::args().map(quote).collect::<Vec<_>>().join(" ")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// "12 min ago" for the binary's modification time.
fn age(path: &Path) -> String {
    let Some(modified) = path.metadata().and_then(|m| m.modified()).ok() else {
        return "unknown".into();
    };
    let secs = SystemTime::now()
        .duration_since(modified)
        .map_or(0, |d| d.as_secs());
    if secs < 120 {
        format!("{secs} s ago")
    } else if secs < 7200 {
        format!("{} min ago", secs / 60)
    } else {
        format!("{:.1} h ago", secs as f64 / 3600.0)
    }
}

fn print_report(
    args: &Args,
    media: &Media,
    binary: &Path,
    r: &Report,
    warnings: &[String],
    errors: &[String],
) {
    let n = args.streams as f64;
    let p = &r.proc;
    // A figure per stream; "–" with `--streams 0` (an idle gateway).
    let per = |total: f64, scale: f64, decimals: usize| {
        if args.streams == 0 {
            "–".to_owned()
        } else {
            format!("{:.decimals$}", total / n * scale)
        }
    };
    let pct = match args.streams {
        0 => "–".to_owned(),
        _ => format!("{} %", per(p.process, 100.0, 2)),
    };
    let client_kind = match args.scenario {
        Scenario::Rtmp => format!("{} ffmpeg", args.streams),
        Scenario::Rtsp => "GStreamer RTSP server".to_owned(),
    };
    let source = match (args.scenario, args.rtsp_audio) {
        (Scenario::Rtmp, _) => "RTMP H264+AAC (AAC→Opus)",
        (Scenario::Rtsp, false) => "RTSP H264 only",
        (Scenario::Rtsp, true) => "RTSP H264+AAC (AAC→Opus)",
    };
    println!();
    println!(
        "gateway: {} (modified {}), --record none --hls off, log {}",
        binary.display(),
        age(binary),
        args.gateway_log
    );
    println!(
        "clip: {} (1280x720 30 fps H264 {:.0} kbit/s + AAC 128 kbit/s 48 kHz stereo, {} s)",
        media.av.display(),
        media.video_kbps,
        args.clip_secs
    );
    if let Some(file) = &media.rtsp {
        println!("RTSP server plays: {}", file.display());
    }
    println!(
        "{source}: {} streams, {} viewers/stream, live after {:.1} s, window {:.1} s",
        args.streams,
        args.viewers,
        r.live_after.as_secs_f64(),
        p.window
    );
    println!(
        "gateway CPU: {:.3} CPU-s/s in all, {} CPU-s/s = {} of a core per stream",
        p.process,
        per(p.process, 1.0, 4),
        pct
    );
    println!("  by thread: {}", p.thread_list());
    println!(
        "gateway RSS: {:.1} MiB (VmHWM {:.1} MiB)",
        mib(r.rss_kib),
        mib(r.hwm_kib)
    );
    println!(
        "received: {:.0} RTP packets/s, {:.0} kbit/s of payload ({} packets/s, {} kbit/s per stream)",
        r.in_pps,
        r.in_kbps,
        per(r.in_pps, 1.0, 0),
        per(r.in_kbps, 1.0, 0)
    );
    if args.viewers > 0 {
        println!(
            "sent: {:.0} RTP packets/s; the viewers received {:.0} packets/s",
            r.out_pps, r.viewer_pps
        );
    }
    println!(
        "clients: {client_kind} {:.3} CPU-s/s; this process{} {:.3} CPU-s/s; machine busy {:.2} of {} cores (other processes {:.2})",
        r.clients_cpu,
        if args.viewers > 0 { " (viewers)" } else { "" },
        p.own,
        p.machine,
        cores(),
        (p.machine - p.process - p.own - r.clients_cpu).max(0.0)
    );
    println!(
        "gateway log: {} WARN, {} ERROR lines",
        warnings.len(),
        errors.len()
    );
    for line in errors.iter().chain(warnings).take(10) {
        println!("  {line}");
    }
    if r.checks.is_empty() {
        println!("checks: all streams live through the window, every client still running");
    } else {
        println!("CHECKS FAILED:");
        for c in &r.checks {
            println!("  {c}");
        }
    }
    println!();
    println!(
        "| scenario | N | viewers/stream | gateway CPU-s/s | per stream (% of a core) | threads (CPU-s/s) | RSS | in pkt/s per stream | in kbit/s per stream | clients CPU-s/s | machine busy (others) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {source} | {} | {} | {:.3} | {} | {} | {:.1} MiB | {} | {} | {:.3} | {:.2} / {} ({:.2}) |",
        args.streams,
        args.viewers,
        p.process,
        pct,
        p.thread_list(),
        mib(r.rss_kib),
        per(r.in_pps, 1.0, 0),
        per(r.in_kbps, 1.0, 0),
        r.clients_cpu,
        p.machine,
        cores(),
        (p.machine - p.process - p.own - r.clients_cpu).max(0.0)
    );
    let threads: BTreeMap<&String, f64> = p.threads.iter().map(|(k, v)| (k, *v)).collect();
    let line: Value = json!({
        "tool": TOOL,
        "label": args.label,
        "scenario": args.scenario.name(),
        "rtsp_audio": args.rtsp_audio,
        "streams": args.streams,
        "viewers_per_stream": args.viewers,
        "window_s": p.window,
        "warmup_s": args.warmup_secs,
        "clip_video_kbps": media.video_kbps,
        "gateway_cpu": p.process,
        "gateway_cpu_per_stream": (args.streams > 0).then(|| p.process / n),
        "gateway_threads": threads,
        "rss_kib": r.rss_kib,
        "hwm_kib": r.hwm_kib,
        "in_pps": r.in_pps,
        "in_kbps": r.in_kbps,
        "out_pps": r.out_pps,
        "viewer_pps": r.viewer_pps,
        "clients_cpu": r.clients_cpu,
        "own_cpu": p.own,
        "machine_busy": p.machine,
        "cores": cores(),
        "live_after_s": r.live_after.as_secs_f64(),
        "log_warn": warnings.len(),
        "log_error": errors.len(),
        "checks_failed": r.checks,
    });
    println!("{line}");
}
