//! Runs the real `whipcord` binary for a test, on free loopback ports with
//! its own data directory, and stops it afterwards.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Path of the gateway binary: `WHIPCORD_BIN`, else the workspace's newest
/// build (release or debug).
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("WHIPCORD_BIN") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    // The most recently built one: a stale release build left over from a
    // benchmark must not shadow the debug build just made.
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("whipcord"))
        .filter_map(|path| {
            let modified = path.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, path))
        })
        .max()
        .map(|(_, path)| path)
        .unwrap_or_else(|| target.join("release").join("whipcord"))
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running gateway.
pub struct Gateway {
    child: Option<Child>,
    pub http: SocketAddr,
    pub media: SocketAddr,
    media_bind: SocketAddr,
    /// The RTMP ingest's address (a free loopback port: the default 1935
    /// would be shared by every gateway of a parallel test run).
    pub rtmp: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    options: GatewayOptions,
    /// Remove `data_dir` on drop (it was made for this gateway).
    owns_data_dir: bool,
}

/// Builder for extra flags.
#[derive(Default, Clone)]
pub struct GatewayOptions {
    pub args: Vec<String>,
    /// Bind the media socket to this IP instead of 127.0.0.1 (the port
    /// stays a free one). Only loopback or wildcard addresses belong here.
    pub media_ip: Option<std::net::IpAddr>,
    pub env: Vec<(String, String)>,
}

impl GatewayOptions {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
}

/// Whether a start failed because one of its ports was taken meanwhile.
fn is_port_race(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("exited with") && text.contains("in use")
}

impl Gateway {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(GatewayOptions::default()).await
    }

    pub async fn start_with(options: GatewayOptions) -> anyhow::Result<Self> {
        let data_dir = std::env::temp_dir().join(format!(
            "whipcord-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut gateway = Self::start_in(&data_dir, options).await?;
        gateway.owns_data_dir = true;
        Ok(gateway)
    }

    /// Starts a gateway on an existing (or new) data directory, which it
    /// leaves in place when dropped. Its log goes to `gateway.log` there,
    /// appended to.
    pub async fn start_in(data_dir: &Path, options: GatewayOptions) -> anyhow::Result<Self> {
        // A port found free can be taken by a parallel test before the
        // gateway binds it: then it exits at once, and new ports are tried.
        const ATTEMPTS: usize = 3;
        for attempt in 1.. {
            match Self::start_once(data_dir, options.clone()).await {
                Err(err) if attempt < ATTEMPTS && is_port_race(&err) => {
                    eprintln!("gateway start, attempt {attempt}: a port was taken; again");
                }
                result => return result,
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn start_once(data_dir: &Path, options: GatewayOptions) -> anyhow::Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let media_port = free_udp_port()?;
        let media = SocketAddr::from(([127, 0, 0, 1], media_port));
        let media_bind = SocketAddr::new(options.media_ip.unwrap_or(media.ip()), media_port);
        let rtmp = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        std::fs::create_dir_all(data_dir)?;
        let log_path = data_dir.join("gateway.log");
        let mut gateway = Self {
            child: None,
            http,
            media,
            media_bind,
            rtmp,
            data_dir: data_dir.to_owned(),
            log_path,
            options,
            owns_data_dir: false,
        };
        gateway.spawn()?;
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    /// Starts the binary again on the same ports, data directory and
    /// options (after [`Gateway::kill9`] or [`Gateway::terminate`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("gateway still running; kill9() or terminate() it first");
        }
        self.spawn()?;
        self.wait_ready().await
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        if log.metadata()?.len() > 0 {
            writeln!(log, "---- whipcord-tests: gateway restarted ----")?;
        }
        let mut command = Command::new(binary());
        command
            .arg("--http-listen")
            .arg(self.http.to_string())
            .arg("--media-listen")
            .arg(self.media_bind.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--rtmp-listen")
            .arg(self.rtmp.to_string())
            .args(&self.options.args)
            .env(
                "WHIPCORD_LOG",
                "info,whipcord=debug,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_sctp=warn",
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.options.env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", binary().display()))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "gateway exited with {status} while starting; log:\n{}",
                    self.log()
                );
            }
            if let Ok(res) = client.get(self.url("/healthz")).send().await
                && res.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("gateway did not become ready; log:\n{}", self.log())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn rtmp_addr(&self) -> SocketAddr {
        self.rtmp
    }

    pub fn base_url(&self) -> String {
        self.url("")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The gateway's log so far (every run of it, for a restarted one).
    pub fn log_text(&self) -> String {
        self.log()
    }

    /// Where recordings go: `{data_dir}/recordings`.
    pub fn recordings_dir(&self) -> PathBuf {
        self.data_dir.join("recordings")
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGKILL (no chance to finish anything) and reaps the process.
    pub fn kill9(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill().context("sending SIGKILL")?;
        Ok(child.wait()?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("gateway did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.log());
        }
        if self.owns_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}
