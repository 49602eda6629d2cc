//! `load`: one real H264 + Opus WHIP publisher and N WHEP viewers in one
//! process, against a gateway on loopback; reports join times, received
//! bitrate, loss, and the gateway's CPU and memory.
//!
//! ```sh
//! cargo build --release -p gateway -p whipcord-tests
//! target/release/load --spawn --viewers 5 --duration 8          # CI smoke test
//! target/release/load --url http://127.0.0.1:8080 --viewers 200 # a running gateway
//! ```
//!
//! Loopback only: it refuses any other target. The publisher sends a real
//! libx264 720p30 stream (encoded once with ffmpeg, cached under
//! `target/load-media/`) in real time, looped, through a
//! `TrackLocalStaticSample` (H264 payloader), plus 20 ms Opus packets.
//! Viewers join `--join-interval-ms` apart; the measurement window
//! (`--duration`) starts `--settle` seconds after the last one joined.
//! Exits 1 if a viewer failed to join, got no video, stalled, or lost more
//! than `--max-loss` percent (not counting packets dropped inside this tool),
//! or if the gateway exited; 2 on a setup error; 3 when the hard time limit
//! is hit. Results and method: BENCHMARKS.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use rtc::ice::{mdns::MulticastDnsMode, network_type::NetworkType};
use rtc::media::Sample;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceConnectionState, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::{
    RTCRtpTransceiverDirection as Dir, RTCRtpTransceiverInit, RtpSender,
};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    default_runtime,
};

use whipcord_tests::bench;
use whipcord_tests::client::{delete, is_keyframe_start, post_offer};
use whipcord_tests::gateway::{self, Gateway, GatewayOptions};
use whipcord_tests::media_file::{AccessUnit, H264Spec, load_access_units};
use whipcord_tests::procstat::{self, proc_cpu};
use whipcord_tests::synth::{VideoCodec, opus_codec};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "load",
    about = "Load-test a Whipcord gateway on loopback: 1 H264+Opus publisher, N WHEP viewers"
)]
struct Args {
    /// Base URL of a running gateway (loopback only). Ignored with --spawn.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Start the gateway binary (WHIPCORD_BIN, else target/release/whipcord)
    /// on free loopback ports and stop it afterwards.
    #[arg(long)]
    spawn: bool,
    /// Gateway process id for CPU/RSS; default: the process listening on the
    /// URL's TCP port, else the only `whipcord` process (pgrep -x).
    #[arg(long)]
    pid: Option<u32>,
    /// Stream name.
    #[arg(long, default_value = "load")]
    stream: String,
    /// Number of WHEP viewers.
    #[arg(long, default_value_t = 1)]
    viewers: usize,
    /// Milliseconds between viewers' POSTs.
    #[arg(long, default_value_t = 20)]
    join_interval_ms: u64,
    /// Measurement window in seconds, after all viewers joined (+ --settle).
    #[arg(long, visible_alias = "window", default_value_t = 20.0)]
    duration: f64,
    /// Seconds of publishing before the first viewer joins.
    #[arg(long, default_value_t = 2.5)]
    warmup: f64,
    /// Seconds between the last join and the start of the window.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Hard limit on the whole run in seconds (default: derived from the
    /// other durations plus 60 s); the tool exits 3 when it is reached.
    #[arg(long)]
    hard_limit: Option<f64>,
    /// A viewer losing more than this percentage of packets fails the run.
    #[arg(long, default_value_t = 5.0)]
    max_loss: f64,
    /// Viewers also open a data channel (as the browser player does).
    #[arg(long)]
    data_channel: bool,
    #[arg(long, env = "WHIPCORD_PUBLISH_TOKEN")]
    publish_token: Option<String>,
    #[arg(long, env = "WHIPCORD_WATCH_TOKEN")]
    watch_token: Option<String>,
    /// Where the encoded H264 file is cached.
    #[arg(long)]
    media_dir: Option<PathBuf>,
    /// Video bitrate of the encoded file, kbit/s.
    #[arg(long, default_value_t = 2500)]
    video_kbps: u32,
    /// SO_RCVBUF for the viewers' UDP sockets in bytes (0: the OS default,
    /// 208 KiB here). Large by default so that the gateway's keyframe-replay
    /// burst at join is not lost in the load tool's own sockets.
    #[arg(long, default_value_t = 4 << 20)]
    client_rcvbuf: usize,
    /// The clients' ICE check interval in ms (default: webrtc's 200 ms, as in
    /// tests/src/client.rs). The first check waits one interval, which puts a
    /// client-side floor under every join time; browsers check sooner.
    #[arg(long)]
    ice_check_interval_ms: Option<u64>,
    /// Worker threads of the load tool's own tokio runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// WHIPCORD_LOG for a spawned gateway.
    #[arg(
        long,
        default_value = "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_sctp=warn"
    )]
    gateway_log: String,
    /// Extra argument for a spawned gateway (repeatable).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
    /// Free-form label copied into the JSON line.
    #[arg(long)]
    label: Option<String>,
}

fn main() {
    let args = Args::parse();
    CLIENT_RCVBUF.store(args.client_rcvbuf as u64, Ordering::Relaxed);
    ICE_CHECK_INTERVAL_MS.store(args.ice_check_interval_ms.unwrap_or(0), Ordering::Relaxed);
    let joins = args.viewers as f64 * args.join_interval_ms as f64 / 1000.0;
    let hard_limit = args
        .hard_limit
        .unwrap_or(args.warmup + joins + args.settle + args.duration + 60.0);
    bench::spawn_watchdog("load", hard_limit);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(bench::exit_code("load", runtime, run(args)));
}

// ---------------------------------------------------------------------------
// Target

fn require_loopback(url: &str) -> Result<(String, u16)> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    if parsed.scheme() != "http" {
        bail!("only http:// loopback URLs are allowed, not {url}");
    }
    let host = parsed.host_str().unwrap_or_default();
    let ip: Option<IpAddr> = host.trim_matches(['[', ']']).parse().ok();
    let ok = host.eq_ignore_ascii_case("localhost") || ip.is_some_and(|ip| ip.is_loopback());
    if !ok {
        bail!("refusing non-loopback target {url}: this tool only loads a gateway on this machine");
    }
    let port = parsed.port_or_known_default().unwrap_or(80);
    Ok((url.trim_end_matches('/').to_owned(), port))
}

fn find_pid(port: u16) -> Result<u32> {
    if let Some(pid) = pid_listening_on(port) {
        return Ok(pid);
    }
    let out = std::process::Command::new("pgrep")
        .args(["-x", "whipcord"])
        .output()
        .context("running pgrep")?;
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    match pids.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no whipcord process found; pass --pid or --spawn"),
        many => bail!("several whipcord processes {many:?}; pass --pid"),
    }
}

/// The process holding the listening TCP socket on `port`.
fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let p = f[1]
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if p == Some(port)
                && let Ok(inode) = f[9].parse::<u64>()
            {
                inodes.insert(inode);
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if socket_inodes(pid).iter().any(|i| inodes.contains(i)) {
            return Some(pid);
        }
    }
    None
}

fn socket_inodes(pid: u32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for fd in dir.flatten() {
        if let Ok(link) = std::fs::read_link(fd.path())
            && let Some(s) = link.to_str()
            && let Some(n) = s.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
            && let Ok(inode) = n.parse()
        {
            out.insert(inode);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// /proc readings

/// Clock ticks per second assumed for /proc's CPU times (Linux's USER_HZ).
const CLK_TCK: f64 = 100.0;

/// The `Udp:` counters of /proc/net/snmp.
fn udp_snmp() -> HashMap<String, u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let mut out = HashMap::new();
    if let [names, values] = lines.as_slice() {
        for (n, v) in names
            .split_whitespace()
            .skip(1)
            .zip(values.split_whitespace().skip(1))
        {
            out.insert(n.to_owned(), v.parse().unwrap_or(0));
        }
    }
    out
}

/// Kernel drop counters (/proc/net/udp "drops") summed over a process's
/// UDP sockets.
fn udp_socket_drops(pid: u32) -> u64 {
    let inodes = socket_inodes(pid);
    let mut total = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 13 && f[9].parse::<u64>().is_ok_and(|i| inodes.contains(&i)) {
                total += f[12].parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------
// Peer connections (same client setup as tests/src/client.rs: loopback,
// udp4, mDNS off, no STUN)

struct Handler {
    gathering: watch::Sender<RTCIceGatheringState>,
    state: watch::Sender<RTCPeerConnectionState>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        let _ = self.gathering.send(s);
    }
    async fn on_ice_connection_state_change(&self, _s: RTCIceConnectionState) {}
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        let _ = self.state.send(s);
    }
    async fn on_track(&self, t: Arc<dyn TrackRemote>) {
        let _ = self.tracks.send(t);
    }
}

struct Conn {
    pc: Arc<dyn PeerConnection>,
    gathering: watch::Receiver<RTCIceGatheringState>,
    state: watch::Receiver<RTCPeerConnectionState>,
    tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
}

/// The default `webrtc` runtime, except that UDP sockets get a larger
/// receive buffer.
#[derive(Debug)]
struct BufferedRuntime {
    inner: Arc<dyn Runtime>,
    rcvbuf: usize,
}

unsafe extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const std::ffi::c_void, len: u32) -> i32;
}

fn set_rcvbuf(socket: &std::net::UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    const SOL_SOCKET: i32 = 1;
    const SO_RCVBUF: i32 = 8;
    const SO_RCVBUFFORCE: i32 = 33;
    let value = i32::try_from(bytes).unwrap_or(i32::MAX);
    for name in [SO_RCVBUFFORCE, SO_RCVBUF] {
        // SAFETY: a valid fd and a pointer to an i32 that outlives the call.
        let rc = unsafe {
            setsockopt(
                socket.as_raw_fd(),
                SOL_SOCKET,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

impl Runtime for BufferedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }
    fn spawn_reactor(
        &self,
        size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(size, future)
    }
    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
        if self.rcvbuf > 0 {
            set_rcvbuf(&socket, self.rcvbuf);
        }
        self.inner.wrap_udp_socket(socket)
    }
    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> std::io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }
    fn connect_tcp<'a>(
        &'a self,
        remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote)
    }
    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }
    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }
    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }
    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }
    fn name(&self) -> &'static str {
        "whipcord-load"
    }
}

static CLIENT_RCVBUF: AtomicU64 = AtomicU64::new(0);
/// 0: the library default.
static ICE_CHECK_INTERVAL_MS: AtomicU64 = AtomicU64::new(0);

fn client_runtime() -> Result<Arc<dyn Runtime>> {
    let inner = default_runtime().context("no webrtc runtime")?;
    let rcvbuf = CLIENT_RCVBUF.load(Ordering::Relaxed) as usize;
    Ok(if rcvbuf == 0 {
        inner
    } else {
        Arc::new(BufferedRuntime { inner, rcvbuf })
    })
}

async fn new_conn() -> Result<Conn> {
    let mut me = MediaEngine::default();
    me.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut me)?;
    let mut se = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_network_types(vec![NetworkType::Udp4]);
    let check_ms = ICE_CHECK_INTERVAL_MS.load(Ordering::Relaxed);
    if let Some(per) = 1400u64.checked_div(check_ms) {
        // Keep ICE's overall patience (~1.4 s) while checking more often.
        let attempts = per.clamp(7, 1000) as u16;
        se = se.with_ice_connection_attempts(Some(Duration::from_millis(check_ms)), Some(attempts));
    }
    let se = se.build();
    let (gtx, gathering) = watch::channel(RTCIceGatheringState::New);
    let (stx, state) = watch::channel(RTCPeerConnectionState::New);
    let (ttx, tracks) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_setting_engine(se)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler {
            gathering: gtx,
            state: stx,
            tracks: ttx,
        }))
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .with_runtime(client_runtime()?)
        .build()
        .await?;
    Ok(Conn {
        pc: Arc::new(pc),
        gathering,
        state,
        tracks,
    })
}

impl Conn {
    async fn local_offer(&mut self) -> Result<String> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        tokio::time::timeout(
            Duration::from_secs(5),
            self.gathering
                .wait_for(|s| *s == RTCIceGatheringState::Complete),
        )
        .await
        .context("ICE gathering timed out")??;
        Ok(self
            .pc
            .local_description()
            .await
            .ok_or_else(|| anyhow!("no local description"))?
            .sdp)
    }

    async fn wait_connected(&mut self, limit: Duration) -> Result<()> {
        use RTCPeerConnectionState::*;
        let state = tokio::time::timeout(
            limit,
            self.state
                .wait_for(|s| matches!(s, Connected | Failed | Closed)),
        )
        .await
        .context("peer connection did not connect in time")??;
        if *state != Connected {
            bail!("peer connection ended in {}", *state);
        }
        Ok(())
    }
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

fn transceiver(direction: Dir) -> Option<RTCRtpTransceiverInit> {
    Some(RTCRtpTransceiverInit {
        direction,
        streams: vec![],
        send_encodings: vec![],
    })
}

async fn negotiated_pt(sender: &Arc<dyn RtpSender>, codec: &RTCRtpCodec) -> Result<u8> {
    let p = sender.get_parameters().await?;
    p.rtp_parameters
        .codecs
        .iter()
        .find(|x| x.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type))
        .map(|x| x.payload_type)
        .ok_or_else(|| anyhow!("{} not negotiated", codec.mime_type))
}

// ---------------------------------------------------------------------------
// Publisher

struct Publisher {
    conn: Conn,
    resource: String,
    video: (Arc<TrackLocalStaticSample>, u32, u8),
    audio: (Arc<TrackLocalStaticSample>, u32, u8),
}

fn sample_track(
    kind: RtpCodecKind,
    id: &str,
    codec: RTCRtpCodec,
    ssrc: u32,
) -> Result<Arc<TrackLocalStaticSample>> {
    let track = MediaStreamTrack::new(
        "whipcord-load".into(),
        id.into(),
        format!("{id}-label"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    );
    Ok(Arc::new(TrackLocalStaticSample::new(
        Instant::now(),
        track,
    )?))
}

impl Publisher {
    async fn connect(base: &str, stream: &str, token: Option<&str>) -> Result<Self> {
        let mut conn = new_conn().await?;
        let assrc = rand::random::<u32>() | 1;
        let atrack = sample_track(RtpCodecKind::Audio, "audio", opus_codec(), assrc)?;
        let atr = conn
            .pc
            .add_transceiver_from_track(atrack.clone(), transceiver(Dir::Sendonly))
            .await?;
        let vssrc = rand::random::<u32>() | 1;
        let vtrack = sample_track(
            RtpCodecKind::Video,
            "video",
            VideoCodec::H264.rtp_codec(),
            vssrc,
        )?;
        let vtr = conn
            .pc
            .add_transceiver_from_track(vtrack.clone(), transceiver(Dir::Sendonly))
            .await?;
        let offer = conn.local_offer().await?;
        let reply = post_offer(&format!("{base}/whip/{stream}"), &offer, token).await?;
        if reply.status != 201 {
            bail!("WHIP POST answered {}: {}", reply.status, reply.body);
        }
        let location = reply.location.clone().context("201 without Location")?;
        conn.pc
            .set_remote_description(RTCSessionDescription::answer(reply.body.clone())?)
            .await?;
        conn.wait_connected(Duration::from_secs(10)).await?;
        let vsender = vtr.sender().await?.context("video sender")?;
        let vpt = negotiated_pt(&vsender, &VideoCodec::H264.rtp_codec()).await?;
        let asender = atr.sender().await?.context("audio sender")?;
        let apt = negotiated_pt(&asender, &opus_codec()).await?;
        Ok(Self {
            conn,
            resource: absolute(base, &location),
            video: (vtrack, vssrc, vpt),
            audio: (atrack, assrc, apt),
        })
    }
}

/// How far behind its schedule the publisher fell (µs), a sign that the
/// load tool itself is out of CPU.
#[derive(Default)]
struct PacingStats {
    frames: AtomicU64,
    max_lag_us: AtomicU64,
    late_frames: AtomicU64,
}

async fn send_video(
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    pt: u8,
    aus: Arc<Vec<AccessUnit>>,
    fps: u32,
    stop: Arc<AtomicBool>,
    pacing: Arc<PacingStats>,
) -> Result<()> {
    let frame = Duration::from_secs(1) / fps;
    let start = tokio::time::Instant::now();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = start + frame * n;
        tokio::time::sleep_until(due).await;
        let lag = tokio::time::Instant::now().saturating_duration_since(due);
        pacing
            .max_lag_us
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
        if lag > frame {
            pacing.late_frames.fetch_add(1, Ordering::Relaxed);
        }
        let au = &aus[n as usize % aus.len()];
        track
            .sample_writer(ssrc, pt)
            .write_sample(&Sample {
                data: au.data.clone(),
                duration: frame,
                ..Sample::new(Instant::now())
            })
            .await?;
        pacing.frames.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    Ok(())
}

async fn send_audio(
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    pt: u8,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    // An Opus silence frame (TOC: CELT FB 20 ms, code 0).
    let silence = Bytes::from_static(&[0xf8, 0xff, 0xfe]);
    let period = Duration::from_millis(20);
    let start = tokio::time::Instant::now();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(start + period * n).await;
        track
            .sample_writer(ssrc, pt)
            .write_sample(&Sample {
                data: silence.clone(),
                duration: period,
                ..Sample::new(Instant::now())
            })
            .await?;
        n += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Viewers

/// Extends 16-bit sequence numbers across wraps.
#[derive(Default)]
struct SeqUnwrap {
    last: Option<u64>,
}

impl SeqUnwrap {
    fn extend(&mut self, seq: u16) -> u64 {
        let Some(last) = self.last else {
            let v = 1u64 << 20 | u64::from(seq);
            self.last = Some(v);
            return v;
        };
        let base = last & !0xffff;
        let mut best = base | u64::from(seq);
        for cand in [best.wrapping_sub(0x1_0000), best + 0x1_0000] {
            if cand.abs_diff(last) < best.abs_diff(last) {
                best = cand;
            }
        }
        if best > last {
            self.last = Some(best);
        }
        best
    }
}

/// Which sequence numbers arrived, as a bitmap from the first one seen.
#[derive(Default, Clone)]
struct SeqSet {
    unwrap_last: Option<u64>,
    base: Option<u64>,
    bits: Vec<u64>,
    unique: u64,
    highest: u64,
    duplicates: u64,
    before_first: u64,
}

impl SeqSet {
    fn insert(&mut self, seq: u16) {
        let mut u = SeqUnwrap {
            last: self.unwrap_last,
        };
        let ext = u.extend(seq);
        self.unwrap_last = u.last;
        let base = *self.base.get_or_insert(ext);
        if ext < base {
            self.before_first += 1;
            return;
        }
        let off = ext - base;
        let (word, bit) = ((off / 64) as usize, off % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        } else {
            self.bits[word] |= 1 << bit;
            self.unique += 1;
        }
        self.highest = self.highest.max(ext);
    }

    fn expected(&self) -> u64 {
        self.base.map_or(0, |b| self.highest - b + 1)
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique)
    }
}

#[derive(Default, Clone)]
struct TrackCount {
    packets: u64,
    bytes: u64,
    seq: SeqSet,
}

#[derive(Default, Clone)]
struct ViewerState {
    first_packet: Option<Instant>,
    first_video: Option<Instant>,
    first_keyframe: Option<Instant>,
    last_packet: Option<Instant>,
    video: TrackCount,
    audio: TrackCount,
}

struct Viewer {
    conn: Conn,
    resource: String,
    posted_at: Instant,
    connected_at: Instant,
    state: Arc<Mutex<ViewerState>>,
}

struct PendingViewer {
    conn: Conn,
    offer: String,
}

async fn prepare_viewer(data_channel: bool) -> Result<PendingViewer> {
    let mut conn = new_conn().await?;
    conn.pc
        .add_transceiver_from_kind(RtpCodecKind::Video, transceiver(Dir::Recvonly))
        .await?;
    conn.pc
        .add_transceiver_from_kind(RtpCodecKind::Audio, transceiver(Dir::Recvonly))
        .await?;
    if data_channel {
        conn.pc.create_data_channel("chat", None).await?;
    }
    let offer = conn.local_offer().await?;
    Ok(PendingViewer { conn, offer })
}

async fn read_track(track: Arc<dyn TrackRemote>, state: Arc<Mutex<ViewerState>>) {
    let video = track.kind().await == RtpCodecKind::Video;
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let now = Instant::now();
                let Ok(mut s) = state.lock() else { return };
                s.first_packet.get_or_insert(now);
                s.last_packet = Some(now);
                let t = if video {
                    s.first_video.get_or_insert(now);
                    if s.first_keyframe.is_none()
                        && is_keyframe_start(VideoCodec::H264, &packet.payload)
                    {
                        s.first_keyframe = Some(now);
                    }
                    &mut s.video
                } else {
                    &mut s.audio
                };
                t.packets += 1;
                t.bytes += packet.payload.len() as u64 + 12;
                t.seq.insert(packet.header.sequence_number);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

async fn connect_viewer(
    base: String,
    stream: String,
    pending: PendingViewer,
    token: Option<String>,
) -> Result<Viewer> {
    let PendingViewer { mut conn, offer } = pending;
    let posted_at = Instant::now();
    let reply = post_offer(&format!("{base}/whep/{stream}"), &offer, token.as_deref()).await?;
    if reply.status != 201 {
        bail!("WHEP POST answered {}: {}", reply.status, reply.body);
    }
    let location = reply.location.clone().context("201 without Location")?;
    conn.pc
        .set_remote_description(RTCSessionDescription::answer(reply.body.clone())?)
        .await?;
    let state = Arc::new(Mutex::new(ViewerState::default()));
    let mut tracks = std::mem::replace(&mut conn.tracks, mpsc::unbounded_channel().1);
    let reader_state = state.clone();
    tokio::spawn(async move {
        while let Some(track) = tracks.recv().await {
            tokio::spawn(read_track(track, reader_state.clone()));
        }
    });
    conn.wait_connected(Duration::from_secs(15)).await?;
    Ok(Viewer {
        connected_at: Instant::now(),
        posted_at,
        resource: absolute(&base, &location),
        conn,
        state,
    })
}

/// Stack-level inbound counters (packets the `webrtc` core received,
/// before its bounded channel to our reader task).
async fn stack_received(pc: &Arc<dyn PeerConnection>) -> u64 {
    let report = pc
        .get_stats(Instant::now(), webrtc::peer_connection::StatsSelector::None)
        .await;
    report
        .inbound_rtp_streams()
        .map(|s| s.received_rtp_stream_stats.packets_received)
        .sum()
}

// ---------------------------------------------------------------------------
// Statistics helpers

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn dist(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    };
    let r = |x: Option<f64>| x.map(|x| (x * 10.0).round() / 10.0);
    json!({
        "n": v.len(),
        "p50": r(percentile(&v, 50.0)),
        "p95": r(percentile(&v, 95.0)),
        "max": r(v.last().copied()),
        "min": r(v.first().copied()),
        "mean": r(mean),
    })
}

fn fmt_dist(d: &serde_json::Value, unit: &str) -> String {
    let g = |k: &str| d[k].as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    format!(
        "p50 {} / p95 {} / max {} {unit} (n={})",
        g("p50"),
        g("p95"),
        g("max"),
        d["n"]
    )
}

// ---------------------------------------------------------------------------
// The run

async fn run(args: Args) -> Result<bool> {
    let started = Instant::now();
    if !args.spawn {
        require_loopback(&args.url)?;
    }
    let media_dir = args.media_dir.clone().unwrap_or_else(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"))
            .join("load-media")
    });
    let spec = H264Spec {
        kbps: args.video_kbps,
        ..H264Spec::default()
    };
    let file = spec.ensure(&media_dir)?;
    let aus = Arc::new(load_access_units(&file)?);
    let keyframes = aus.iter().filter(|a| a.keyframe).count();
    let file_bytes: usize = aus.iter().map(|a| a.data.len()).sum();
    eprintln!(
        "load: {} ({} frames, {} keyframes, {:.0} kbit/s)",
        file.display(),
        aus.len(),
        keyframes,
        file_bytes as f64 * 8.0 / (aus.len() as f64 / f64::from(spec.fps)) / 1000.0
    );

    // Target.
    let mut spawned: Option<Gateway> = None;
    let (base, pid) = if args.spawn {
        let bin = gateway::binary();
        if !bin.exists() {
            bail!(
                "{} not found: build it (cargo build --release -p gateway) or set WHIPCORD_BIN",
                bin.display()
            );
        }
        eprintln!("load: spawning {}", bin.display());
        if bin.components().any(|c| c.as_os_str() == "debug") {
            eprintln!(
                "load: WARNING: that is a debug build (no release build found); CPU figures mean little"
            );
        }
        let options = GatewayOptions {
            args: args.gateway_args.clone(),
            env: vec![("WHIPCORD_LOG".into(), args.gateway_log.clone())],
            ..GatewayOptions::default()
        };
        let gw = Gateway::start_with(options).await?;
        let pid = gw.pid().context("spawned gateway has no pid")?;
        bench::watch_pid(pid);
        bench::register_leftover(&gw.data_dir);
        let base = gw.url("");
        spawned = Some(gw);
        (base, pid)
    } else {
        let (base, port) = require_loopback(&args.url)?;
        let pid = match args.pid {
            Some(p) => p,
            None => find_pid(port)?,
        };
        (base, pid)
    };
    if proc_cpu(pid).is_none() {
        bail!("cannot read /proc/{pid}/stat");
    }
    eprintln!("load: gateway {base} (pid {pid})");

    let result = measure(&args, &base, pid, aus, started).await;

    if let Some(mut gw) = spawned {
        let log = gw.log();
        let status = gw.terminate();
        bench::watch_pid(0);
        let problems: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("panicked"))
            .collect();
        if !problems.is_empty() {
            eprintln!(
                "load: gateway log has {} ERROR/panic lines:",
                problems.len()
            );
            for l in problems.iter().take(10) {
                eprintln!("  {l}");
            }
        }
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("load: gateway exited with {s}"),
            Err(e) => eprintln!("load: stopping the gateway: {e:#}"),
        }
        if result.as_ref().map_or(true, |ok| !ok) {
            let notable: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
                .collect();
            let lines: Vec<&str> = if notable.is_empty() {
                log.lines().collect()
            } else {
                notable
            };
            let tail: Vec<&str> = lines.iter().rev().take(30).copied().collect();
            eprintln!("---- gateway log (last WARN/ERROR lines, else last lines) ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
    result
}

struct Snapshot {
    at: Instant,
    server_ticks: u64,
    server_threads: BTreeMap<String, u64>,
    self_ticks: u64,
    /// Per viewer: packets, bytes, expected (by sequence), unique received.
    per_viewer: Vec<(u64, u64, u64, u64)>,
    snmp: HashMap<String, u64>,
    server_drops: u64,
    client_drops: u64,
}

fn snapshot(pid: u32, viewers: &[Viewer]) -> Snapshot {
    let me = std::process::id();
    Snapshot {
        at: Instant::now(),
        server_ticks: proc_cpu(pid).unwrap_or(0),
        server_threads: procstat::thread_ticks_by_name(pid),
        self_ticks: proc_cpu(me).unwrap_or(0),
        per_viewer: viewers
            .iter()
            .map(|v| {
                let s = v.state.lock().map(|s| s.clone()).unwrap_or_default();
                (
                    s.video.packets + s.audio.packets,
                    s.video.bytes + s.audio.bytes,
                    s.video.seq.expected() + s.audio.seq.expected(),
                    s.video.seq.unique + s.audio.seq.unique,
                )
            })
            .collect(),
        snmp: udp_snmp(),
        server_drops: udp_socket_drops(pid),
        client_drops: udp_socket_drops(me),
    }
}

async fn measure(
    args: &Args,
    base: &str,
    pid: u32,
    aus: Arc<Vec<AccessUnit>>,
    started: Instant,
) -> Result<bool> {
    let snmp_start = udp_snmp();
    let server_drops_start = udp_socket_drops(pid);

    // Publisher.
    let publisher = Publisher::connect(base, &args.stream, args.publish_token.as_deref()).await?;
    eprintln!("load: publishing to {}", publisher.resource);
    let stop = Arc::new(AtomicBool::new(false));
    let pacing = Arc::new(PacingStats::default());
    let video_task = {
        let (t, ssrc, pt) = publisher.video.clone();
        tokio::spawn(send_video(
            t,
            ssrc,
            pt,
            aus.clone(),
            30,
            stop.clone(),
            pacing.clone(),
        ))
    };
    let audio_task = {
        let (t, ssrc, pt) = publisher.audio.clone();
        tokio::spawn(send_audio(t, ssrc, pt, stop.clone()))
    };

    // Viewers: prepare every offer first, then POST them on schedule.
    let mut pending = Vec::with_capacity(args.viewers);
    let prepare_started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    while pending.len() < args.viewers {
        while set.len() < 8 && next < args.viewers {
            let dc = args.data_channel;
            set.spawn(prepare_viewer(dc));
            next += 1;
        }
        match set.join_next().await {
            Some(r) => pending.push(r??),
            None => break,
        }
    }
    let warm_left = Duration::from_secs_f64(args.warmup).saturating_sub(prepare_started.elapsed());
    eprintln!(
        "load: {} viewer offers ready in {:.1} s",
        pending.len(),
        prepare_started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(warm_left).await;

    let join_start = tokio::time::Instant::now();
    let interval = Duration::from_millis(args.join_interval_ms);
    let mut handles = Vec::with_capacity(args.viewers);
    for (i, p) in pending.into_iter().enumerate() {
        tokio::time::sleep_until(join_start + interval * i as u32).await;
        handles.push(tokio::spawn(connect_viewer(
            base.to_owned(),
            args.stream.clone(),
            p,
            args.watch_token.clone(),
        )));
    }
    let mut viewers = Vec::new();
    let mut join_errors = Vec::new();
    for h in handles {
        match h.await {
            Ok(Ok(v)) => viewers.push(v),
            Ok(Err(e)) => join_errors.push(format!("{e:#}")),
            Err(e) => join_errors.push(format!("task: {e}")),
        }
    }
    eprintln!(
        "load: {} viewers connected, {} failed, joins took {:.1} s",
        viewers.len(),
        join_errors.len(),
        join_start.elapsed().as_secs_f64()
    );
    for e in join_errors.iter().take(5) {
        eprintln!("load:   join failed: {e}");
    }

    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    // Measurement window.
    let s0 = snapshot(pid, &viewers);
    let window = Duration::from_secs_f64(args.duration);
    let mut rss_max = 0u64;
    let end = s0.at + window;
    while Instant::now() < end {
        rss_max = rss_max.max(procstat::rss_hwm_kib(pid).0);
        tokio::time::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500)),
        )
        .await;
    }
    let s1 = snapshot(pid, &viewers);
    let gateway_alive = procstat::alive(pid);
    if !gateway_alive {
        eprintln!("load: the gateway (pid {pid}) exited during the run");
    }
    let (rss_end, hwm) = procstat::rss_hwm_kib(pid);
    rss_max = rss_max.max(rss_end);
    let (self_rss, _) = procstat::rss_hwm_kib(std::process::id());
    let secs = s1.at.duration_since(s0.at).as_secs_f64();

    // Per-viewer results, taken before teardown.
    // Reader state first, then the stack's counters, so that packets still
    // arriving make "stack" >= "reader", not the reverse.
    let states: Vec<ViewerState> = viewers
        .iter()
        .map(|v| v.state.lock().map(|s| s.clone()).unwrap_or_default())
        .collect();
    let mut stack = Vec::with_capacity(viewers.len());
    for v in &viewers {
        stack.push(stack_received(&v.conn.pc).await);
    }

    stop.store(true, Ordering::Relaxed);
    let _ = video_task.await;
    let _ = audio_task.await;

    let server_cpu = (s1.server_ticks - s0.server_ticks) as f64 / CLK_TCK / secs;
    let client_cpu = (s1.self_ticks - s0.self_ticks) as f64 / CLK_TCK / secs;
    let mut threads: Vec<(String, f64)> = s1
        .server_threads
        .iter()
        .map(|(name, t)| {
            let before = s0.server_threads.get(name).copied().unwrap_or(0);
            (
                name.clone(),
                t.saturating_sub(before) as f64 / CLK_TCK / secs,
            )
        })
        .filter(|(_, c)| *c > 0.0)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));

    let mut forwarded = 0u64;
    let mut kbps = Vec::new();
    let mut window_expected = 0u64;
    let mut window_lost = 0u64;
    let mut window_worst = 0.0f64;
    for (a, b) in s0.per_viewer.iter().zip(&s1.per_viewer) {
        forwarded += b.0 - a.0;
        kbps.push((b.1 - a.1) as f64 * 8.0 / secs / 1000.0);
        let expected = b.2.saturating_sub(a.2);
        let lost = expected.saturating_sub(b.3.saturating_sub(a.3));
        window_expected += expected;
        window_lost += lost;
        if expected > 0 {
            window_worst = window_worst.max(lost as f64 * 100.0 / expected as f64);
        }
    }
    let window_loss = if window_expected > 0 {
        window_lost as f64 * 100.0 / window_expected as f64
    } else {
        0.0
    };
    let pps = forwarded as f64 / secs;
    let us_per_packet = if pps > 0.0 {
        server_cpu / pps * 1e6
    } else {
        f64::NAN
    };

    let mut join_first = Vec::new();
    let mut join_key = Vec::new();
    let mut connect = Vec::new();
    let mut loss_pct = Vec::new();
    let mut no_video = 0;
    let mut stalled = 0;
    let mut no_keyframe = 0;
    let mut lost_total = 0u64;
    let mut expected_total = 0u64;
    let mut app_received = 0u64;
    let mut worst_loss = 0.0f64;
    let mut gateway_loss_pct = Vec::new();
    let mut worst_gateway_loss = 0.0f64;
    for ((v, s), stack_n) in viewers.iter().zip(&states).zip(&stack) {
        connect.push(v.connected_at.duration_since(v.posted_at).as_secs_f64() * 1e3);
        if let Some(t) = s.first_packet {
            join_first.push(t.duration_since(v.posted_at).as_secs_f64() * 1e3);
        }
        match s.first_keyframe {
            Some(t) => join_key.push(t.duration_since(v.posted_at).as_secs_f64() * 1e3),
            None => no_keyframe += 1,
        }
        if s.video.packets == 0 {
            no_video += 1;
        }
        if s.last_packet
            .is_none_or(|t| s1.at.saturating_duration_since(t) > Duration::from_secs(1))
        {
            stalled += 1;
        }
        let lost = s.video.seq.lost() + s.audio.seq.lost();
        let expected = s.video.seq.expected() + s.audio.seq.expected();
        lost_total += lost;
        expected_total += expected;
        app_received += s.video.packets + s.audio.packets;
        let pct = if expected > 0 {
            lost as f64 * 100.0 / expected as f64
        } else {
            100.0
        };
        worst_loss = worst_loss.max(pct);
        loss_pct.push(pct);
        // Packets the webrtc stack received but its bounded channel to our
        // reader dropped (keyframe-replay bursts): lost inside this tool,
        // not by the gateway.
        let in_client = stack_n.saturating_sub(s.video.packets + s.audio.packets);
        let gw_pct = if expected > 0 {
            lost.saturating_sub(in_client) as f64 * 100.0 / expected as f64
        } else {
            100.0
        };
        worst_gateway_loss = worst_gateway_loss.max(gw_pct);
        gateway_loss_pct.push(gw_pct);
    }
    let stack_total: u64 = stack.iter().sum();
    let video_lost: u64 = states.iter().map(|s| s.video.seq.lost()).sum();
    let audio_lost: u64 = states.iter().map(|s| s.audio.seq.lost()).sum();
    let duplicates: u64 = states
        .iter()
        .map(|s| s.video.seq.duplicates + s.audio.seq.duplicates)
        .sum();

    let snmp_end = udp_snmp();
    let delta = |a: &HashMap<String, u64>, b: &HashMap<String, u64>, k: &str| {
        b.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(a.get(k).copied().unwrap_or(0))
    };

    // Teardown (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for v in &viewers {
            let _ = delete(&v.resource, args.watch_token.as_deref()).await;
        }
        let _ = delete(&publisher.resource, args.publish_token.as_deref()).await;
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for v in viewers {
            let _ = v.conn.pc.close().await;
        }
        let _ = publisher.conn.pc.close().await;
    })
    .await;

    let join_first_d = dist(join_first);
    let join_key_d = dist(join_key);
    let connect_d = dist(connect);
    let kbps_d = dist(kbps);
    let loss_d = dist(loss_pct);
    let gateway_loss_d = dist(gateway_loss_pct);
    let overall_loss = if expected_total > 0 {
        lost_total as f64 * 100.0 / expected_total as f64
    } else {
        0.0
    };

    let ok = gateway_alive
        && stalled == 0
        && join_errors.is_empty()
        && !viewers_empty(&states, args.viewers)
        && no_video == 0
        && worst_gateway_loss <= args.max_loss;

    // Human-readable summary.
    println!(
        "== whipcord load: {} viewers of one H264 720p30 + Opus stream ==",
        args.viewers
    );
    println!(
        "joined            {} ok, {} failed",
        states.len(),
        join_errors.len()
    );
    println!("window            {secs:.1} s");
    println!(
        "server CPU        {server_cpu:.3} CPU-s/s   (pid {pid}; {})",
        threads
            .iter()
            .take(5)
            .map(|(n, c)| format!("{n} {c:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("forwarded         {pps:.0} packets/s -> {us_per_packet:.2} µs/packet");
    println!(
        "server RSS        {:.1} MiB (max in window {:.1}, peak VmHWM {:.1})",
        rss_end as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "load tool CPU     {client_cpu:.3} CPU-s/s, RSS {:.1} MiB (shares the machine)",
        self_rss as f64 / 1024.0
    );
    println!("connect (ICE+DTLS) {}", fmt_dist(&connect_d, "ms"));
    println!("join→first packet {}", fmt_dist(&join_first_d, "ms"));
    println!(
        "join→keyframe     {}  ({no_keyframe} without keyframe)",
        fmt_dist(&join_key_d, "ms")
    );
    println!(
        "bitrate/viewer    mean {} / min {} kbit/s",
        kbps_d["mean"], kbps_d["min"]
    );
    println!(
        "loss              overall {overall_loss:.3} %, per viewer mean {} / max {} % (video {video_lost}, audio {audio_lost} packets; {no_video} viewers without video)",
        loss_d["mean"], loss_d["max"]
    );
    println!(
        "loss w/o client  per viewer mean {} / max {} % (excluding packets dropped inside this tool; --max-loss applies to this)",
        gateway_loss_d["mean"], gateway_loss_d["max"]
    );
    println!(
        "loss in window    {window_loss:.3} % ({window_lost} packets), worst viewer {window_worst:.2} %"
    );
    println!(
        "client stack      {stack_total} packets received by webrtc, {app_received} reached the reader ({} dropped in the client), {duplicates} duplicates",
        stack_total.saturating_sub(app_received)
    );
    println!(
        "UDP               whole run: RcvbufErrors +{} (machine-wide), SndbufErrors +{}, socket drops server +{} / clients +{}; window: RcvbufErrors +{}, server +{} / clients +{}",
        delta(&snmp_start, &snmp_end, "RcvbufErrors"),
        delta(&snmp_start, &snmp_end, "SndbufErrors"),
        s1.server_drops.saturating_sub(server_drops_start),
        s1.client_drops,
        delta(&s0.snmp, &s1.snmp, "RcvbufErrors"),
        s1.server_drops.saturating_sub(s0.server_drops),
        s1.client_drops.saturating_sub(s0.client_drops),
    );
    println!(
        "publisher pacing  {} frames, max lag {:.1} ms, {} frames late by > 1 frame",
        pacing.frames.load(Ordering::Relaxed),
        pacing.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
        pacing.late_frames.load(Ordering::Relaxed)
    );
    if stalled > 0 {
        println!(
            "stalled           {stalled} viewers received nothing in the last second of the window"
        );
    }
    if !gateway_alive {
        println!("gateway           EXITED during the run");
    }
    println!("result            {}", if ok { "OK" } else { "FAIL" });

    let line = json!({
        "tool": "whipcord-load",
        "label": args.label,
        "viewers": args.viewers,
        "joined": states.len(),
        "join_failed": join_errors.len(),
        "window_s": (secs * 100.0).round() / 100.0,
        "server": {
            "pid": pid,
            "cpu_s_per_s": server_cpu,
            "threads": threads.iter().map(|(n, c)| (n.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
            "rss_mib": rss_end as f64 / 1024.0,
            "rss_max_mib": rss_max as f64 / 1024.0,
            "hwm_mib": hwm as f64 / 1024.0,
        },
        "client": {
            "cpu_s_per_s": client_cpu,
            "rss_mib": self_rss as f64 / 1024.0,
            "stack_received": stack_total,
            "app_received": app_received,
            "duplicates": duplicates,
        },
        "forwarded_pps": pps,
        "us_per_packet": us_per_packet,
        "connect_ms": connect_d,
        "join_first_packet_ms": join_first_d,
        "join_keyframe_ms": join_key_d,
        "viewers_without_keyframe": no_keyframe,
        "viewers_without_video": no_video,
        "viewers_stalled": stalled,
        "gateway_alive": gateway_alive,
        "bitrate_kbps": kbps_d,
        "loss_pct": loss_d,
        "loss_window_pct": window_loss,
        "loss_excluding_client_drops_pct": gateway_loss_d,
        "loss_window_worst_viewer_pct": window_worst,
        "loss_overall_pct": overall_loss,
        "lost_packets": {"video": video_lost, "audio": audio_lost},
        "udp": {
            "rcvbuf_errors": delta(&snmp_start, &snmp_end, "RcvbufErrors"),
            "sndbuf_errors": delta(&snmp_start, &snmp_end, "SndbufErrors"),
            "in_errors": delta(&snmp_start, &snmp_end, "InErrors"),
            "window_rcvbuf_errors": delta(&s0.snmp, &s1.snmp, "RcvbufErrors"),
            "server_socket_drops": s1.server_drops.saturating_sub(server_drops_start),
            "client_socket_drops": s1.client_drops,
            "server_socket_drops_window": s1.server_drops.saturating_sub(s0.server_drops),
            "client_socket_drops_window": s1.client_drops.saturating_sub(s0.client_drops),
        },
        "publisher": {
            "frames": pacing.frames.load(Ordering::Relaxed),
            "max_lag_ms": pacing.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
            "late_frames": pacing.late_frames.load(Ordering::Relaxed),
        },
        "elapsed_s": started.elapsed().as_secs_f64(),
        "ok": ok,
    });
    println!("{line}");
    Ok(ok)
}

fn viewers_empty(states: &[ViewerState], wanted: usize) -> bool {
    wanted > 0 && states.is_empty()
}
