//! What the benchmark tools (`load`, `record_bench`, `restream_bench`)
//! share besides their `/proc` readings ([`crate::procstat`]): which
//! gateway binary to measure, the exit code of a run, the hard-limit
//! watchdog, the H264 clip of the `load` tool's recipe, and real-time
//! publishers' media tasks.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::task::JoinHandle;

use crate::client::{MediaSent, Publisher};
use crate::clip::{self, Clip, ClipSpec, Frame};
use crate::gateway;
use crate::media_file::{H264Spec, load_access_units};

// ---------------------------------------------------------------------------
// The gateway binary and the run

/// `bin`, else `WHIPCORD_BIN`, else the release build next to the one
/// [`gateway::binary`] would pick (never a debug build).
pub fn resolve_gateway_binary(bin: Option<&Path>) -> Result<PathBuf> {
    let bin = match (bin, std::env::var_os("WHIPCORD_BIN")) {
        (Some(bin), _) => bin.to_owned(),
        (None, Some(env)) => PathBuf::from(env),
        (None, None) => gateway::binary()
            .parent()
            .and_then(Path::parent)
            .context("odd gateway binary path")?
            .join("release")
            .join("whipcord"),
    };
    ensure!(
        bin.is_file(),
        "no gateway binary at {} (cargo build --release -p gateway, or --bin)",
        bin.display()
    );
    Ok(std::fs::canonicalize(&bin)?)
}

/// Sets `WHIPCORD_BIN` to [`resolve_gateway_binary`]`(bin)`, for
/// [`gateway::binary`] and the report; prints `{tool}: error: …` and exits
/// 2 when there is none.
///
/// # Safety
///
/// It sets an environment variable: call it before any other thread
/// exists.
pub unsafe fn use_gateway_binary(tool: &str, bin: Option<&Path>) {
    match resolve_gateway_binary(bin) {
        // SAFETY: the caller promises that no other thread exists yet.
        Ok(bin) => unsafe { std::env::set_var("WHIPCORD_BIN", bin) },
        Err(e) => {
            eprintln!("{tool}: error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Runs a tool's `run` on `runtime` and gives its exit code: 0 when it
/// returns `true`, 1 when `false`, 2 on an error (printed as
/// `{tool}: error: …`). Leaves the runtime's tasks two seconds to wind
/// down.
pub fn exit_code(
    tool: &str,
    runtime: tokio::runtime::Runtime,
    run: impl Future<Output = Result<bool>>,
) -> i32 {
    let code = match runtime.block_on(run) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("{tool}: error: {e:#}");
            2
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

/// Prints the last 30 lines of a log to stderr under a
/// `---- {what} log (last 30 lines) ----` heading.
pub fn print_log_tail(what: &str, log: &str) {
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    eprintln!("---- {what} log (last 30 lines) ----");
    for line in tail.iter().rev() {
        eprintln!("{line}");
    }
}

// ---------------------------------------------------------------------------
// Hard-limit watchdog

/// The process the watchdog kills (0: none), normally the gateway being
/// measured.
static WATCHED_PID: AtomicU32 = AtomicU32::new(0);
/// Directories the watchdog must not leave behind.
static LEFTOVERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Makes `pid` the process the watchdog kills; 0 for none.
pub fn watch_pid(pid: u32) {
    WATCHED_PID.store(pid, Ordering::SeqCst);
}

/// Adds a directory for the watchdog (or [`cleanup_leftovers`]) to remove.
pub fn register_leftover(dir: &Path) {
    if let Ok(mut dirs) = LEFTOVERS.lock() {
        dirs.push(dir.to_owned());
    }
}

/// Takes a directory off that list (it is gone already).
pub fn forget_leftover(dir: &Path) {
    if let Ok(mut dirs) = LEFTOVERS.lock() {
        dirs.retain(|d| d != dir);
    }
}

fn kill_pid(pid: u32) {
    if pid != 0 {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Removes the directories registered with [`register_leftover`]; with
/// `kill_nginx`, first kills the nginx running in one by its `nginx.pid`
/// file. Only the watchdog asks for that: nginx is alive then, whereas
/// after a normal run it was already stopped and the file may name a
/// reused pid.
pub fn cleanup_leftovers(kill_nginx: bool) {
    let Ok(mut dirs) = LEFTOVERS.lock() else {
        return;
    };
    for dir in dirs.drain(..) {
        if let Some(pid) = kill_nginx
            .then(|| std::fs::read_to_string(dir.join("nginx.pid")).ok())
            .flatten()
            .and_then(|s| s.trim().parse().ok())
        {
            kill_pid(pid);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// After `limit` seconds, kills the [`watch_pid`] process, removes the
/// leftovers (and kills an nginx in them), and exits 3, should the run
/// hang.
pub fn spawn_watchdog(tool: &'static str, limit: f64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(limit));
        eprintln!("{tool}: hard limit of {limit:.0} s reached, exiting");
        kill_pid(WATCHED_PID.load(Ordering::SeqCst));
        cleanup_leftovers(true);
        std::process::exit(3);
    });
}

// ---------------------------------------------------------------------------
// Clips and publishers

/// An H264 clip from the `load` tool's recipe (lavfi testsrc2, which
/// libx264 fills to the asked bitrate, unlike the tests' flash clip; cached
/// in `load-media` next to [`clip::cache_dir`]) at `spec`'s picture,
/// frame rate, length, bitrate and keyframe interval, with the Opus track
/// of the tests' clip of the same length.
pub fn testsrc2_clip(spec: &ClipSpec) -> Result<Clip> {
    let audio = Clip::ensure(&ClipSpec {
        video: None,
        ..spec.clone()
    })?;
    let h264 = H264Spec {
        width: spec.width,
        height: spec.height,
        fps: spec.fps,
        seconds: spec.seconds,
        kbps: spec.video_kbps,
        gop: spec.gop(),
    };
    let dir = clip::cache_dir()
        .parent()
        .map(|target| target.join("load-media"))
        .context("clip cache directory has no parent")?;
    let path = h264.ensure(&dir)?;
    let units = load_access_units(&path)?;
    let want = (spec.fps * spec.seconds) as usize;
    ensure!(
        units.len() >= want,
        "{} holds {} frames, want {want}",
        path.display(),
        units.len()
    );
    let frame_ns = 1_000_000_000 / u64::from(spec.fps);
    let video = units
        .into_iter()
        .take(want)
        .enumerate()
        .map(|(i, au)| Frame {
            data: au.data,
            pts: Duration::from_nanos(i as u64 * frame_ns),
            duration: Duration::from_nanos(frame_ns),
            keyframe: au.keyframe,
        })
        .collect();
    Ok(Clip {
        spec: spec.clone(),
        video,
        video_path: Some(path),
        ..audio
    })
}

/// A publisher's media task: what it sent, and when it finished.
pub type MediaTask = JoinHandle<(Result<MediaSent>, Instant)>;

/// Starts `publisher` sending its clip in real time for `len`: when it
/// started, and the task.
pub fn start_media(publisher: &Arc<Publisher>, len: Duration) -> (Instant, MediaTask) {
    let started = Instant::now();
    let sender = publisher.clone();
    let task = tokio::spawn(async move {
        let sent = sender.run_media(len).await;
        (sent, Instant::now())
    });
    (started, task)
}

/// What the publishers sent, summed, and how late the latest one finished
/// its real-time schedule (a sign of a starved machine).
pub struct Sent {
    pub media: MediaSent,
    pub max_late: Duration,
}

/// Lets the media of [`start_media`] tasks run out (each may finish up to
/// 15 s late) and sums what they sent.
pub async fn finish_media(tasks: Vec<(Instant, MediaTask)>, len: Duration) -> Result<Sent> {
    let mut sent = Sent {
        media: MediaSent::default(),
        max_late: Duration::ZERO,
    };
    for (started, task) in tasks {
        let due = started + len;
        let limit = due.saturating_duration_since(Instant::now()) + Duration::from_secs(15);
        let (outcome, finished) = tokio::time::timeout(limit, task)
            .await
            .context("a publisher did not finish its media")?
            .context("a publisher task panicked")?;
        let outcome = outcome.context("a publisher failed")?;
        sent.max_late = sent.max_late.max(finished.saturating_duration_since(due));
        sent.media.video_frames += outcome.video_frames;
        sent.media.audio_packets += outcome.audio_packets;
        sent.media.video_rtp_packets += outcome.video_rtp_packets;
        sent.media.audio_rtp_packets += outcome.audio_rtp_packets;
    }
    Ok(sent)
}
