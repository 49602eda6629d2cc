//! Real RTSP cameras for the RTSP-pull tests: GStreamer's RTSP server
//! (`tests/rtsp/rtsp_server.py`, through Debian's Python bindings) and a
//! broken camera (`tests/rtsp/garbage_camera.py`), on loopback ports.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::clip::ClipSpec;
use crate::synth::VideoCodec;

/// The folder of the Python scripts.
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rtsp")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One of the test RTSP servers, killed on drop.
pub struct RtspServer {
    child: Option<Child>,
    pub port: u16,
    script: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Everything it printed, in order.
    lines: Arc<Mutex<Vec<String>>>,
}

impl RtspServer {
    /// GStreamer's server: `/cam`, `/cam265`, `/camg711`, `/camb`, and
    /// `/marks` playing `marks` (see [`marks_clip`]) when given.
    pub fn gstreamer(marks: Option<&Path>) -> Result<Self> {
        let env = marks
            .map(|m| vec![("MARKS_FILE".to_owned(), m.display().to_string())])
            .unwrap_or_default();
        Self::start("rtsp_server.py", Vec::new(), env)
    }

    /// GStreamer's server asking for Digest credentials.
    pub fn gstreamer_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::start(
            "rtsp_server.py",
            vec![user.to_owned(), password.to_owned()],
            Vec::new(),
        )
    }

    /// A camera that answers RTSP properly, then sends `mode` garbage
    /// (`random`, `payload`, `ssrc`, `junk`).
    pub fn garbage(mode: &str) -> Result<Self> {
        Self::start("garbage_camera.py", vec![mode.to_owned()], Vec::new())
    }

    fn start(script: &'static str, args: Vec<String>, env: Vec<(String, String)>) -> Result<Self> {
        let mut server = Self {
            child: None,
            port: free_port()?,
            script,
            args,
            env,
            lines: Arc::new(Mutex::new(Vec::new())),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        // The system python: a virtual environment has no `gi`.
        let mut child = Command::new("/usr/bin/python3")
            .arg(scripts().join(self.script))
            .arg(self.port.to_string())
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", self.script))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let lines = self.lines.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("READY") {
                    let _ = ready_tx.send(());
                }
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        self.child = Some(child);
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            self.stop();
            bail!("{} did not become ready", self.script);
        }
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}{path}", self.port)
    }

    /// Kills the server (a camera losing power).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The port may linger a moment after the kill.
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// How many printed lines equal `line` so far.
    pub fn count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.as_str() == line)
            .count()
    }

    /// Waits until `line` has been printed `n` times.
    pub async fn wait_count(&self, line: &str, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.count(line) < n {
            ensure!(
                Instant::now() < deadline,
                "{line:?} printed {} times, not {n}, within {limit:?}",
                self.count(line)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An MP4 of `seconds` of the flash/beep pattern ([`ClipSpec`]): H264
/// (no B-frames, a keyframe a second) and AAC, for `/marks`.
pub fn marks_clip(dir: &Path, seconds: u32) -> Result<PathBuf> {
    marks_clip_with(dir, seconds, 0)
}

/// [`marks_clip`] with up to `b_frames` B-frames between references
/// (x264's B-pyramid on, as encoders in cameras and OBS do it).
pub fn marks_clip_with(dir: &Path, seconds: u32, b_frames: u32) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("marks-{seconds}s-bf{b_frames}.mp4"));
    let b_frames = b_frames.to_string();
    let clip = ClipSpec::new(VideoCodec::H264);
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", &clip.video_source()])
        .args(["-f", "lavfi", "-i", &ClipSpec::audio_source()])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-bf", &b_frames, "-g", "30",
        ])
        .args(["-pix_fmt", "yuv420p", "-b:v", "1500k"])
        .args(["-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"])
        .arg(&path)
        .output()
        .context("running ffmpeg")?;
    ensure!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(path)
}
