//! Gateway configuration: defaults, then a TOML file, then `WHIPCORD_*`
//! environment variables, then command-line flags (each layer overrides the
//! one before). Every field has a default so the gateway serves with no
//! configuration at all.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

pub use crate::recording::policy::{ReconnectMode, RecordFormat, RecordPolicy};

/// Command-line flags. Each flag can also be set through the environment
/// variable named in its help text; unset flags fall back to the config file
/// and then to the built-in defaults.
#[derive(Debug, Parser, Default)]
#[command(
    name = "whipcord",
    version,
    about = "Whipcord: WHIP/WHEP live-streaming and recording gateway",
    long_about = "Whipcord accepts WebRTC publishers over WHIP (OBS, browsers) and serves \
                  viewers over WHEP, with browser pages to publish and watch.\n\n\
                  Settings are read from built-in defaults, then the TOML file given by \
                  --config, then WHIPCORD_* environment variables, then flags."
)]
pub struct Cli {
    /// TOML configuration file (see README for every key).
    #[arg(long, short = 'c', env = "WHIPCORD_CONFIG")]
    pub config: Option<PathBuf>,

    /// HTTP listen address for WHIP, WHEP, pages and APIs [default: 0.0.0.0:8080].
    #[arg(long, env = "WHIPCORD_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// UDP listen address shared by every WebRTC peer [default: 0.0.0.0:8189].
    #[arg(long, env = "WHIPCORD_MEDIA_LISTEN")]
    pub media_listen: Option<SocketAddr>,

    /// Directory for recordings and the catalog [default: ./data].
    #[arg(long, env = "WHIPCORD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address to advertise in ICE candidates instead of the local ones
    /// (NAT 1:1, containers). Repeat for several addresses.
    #[arg(long = "public-ip", env = "WHIPCORD_PUBLIC_IP", value_delimiter = ',')]
    pub public_ip: Vec<IpAddr>,

    /// Local addresses to advertise as host candidates when the media socket
    /// listens on a wildcard address [default: every interface address].
    #[arg(
        long = "candidate-ip",
        env = "WHIPCORD_CANDIDATE_IP",
        value_delimiter = ','
    )]
    pub candidate_ip: Vec<IpAddr>,

    /// STUN/TURN server announced to clients in `Link` headers, as a URL
    /// (`stun:host:port`, `turn:host:port?transport=udp`). Repeatable.
    #[arg(
        long = "ice-server",
        env = "WHIPCORD_ICE_SERVER",
        value_delimiter = ','
    )]
    pub ice_server: Vec<String>,

    /// Username for the TURN servers given with --ice-server.
    #[arg(long, env = "WHIPCORD_ICE_USERNAME")]
    pub ice_username: Option<String>,

    /// Credential for the TURN servers given with --ice-server.
    #[arg(long, env = "WHIPCORD_ICE_CREDENTIAL")]
    pub ice_credential: Option<String>,

    /// Bearer token every publisher must present (unless a stream has its own).
    #[arg(long, env = "WHIPCORD_PUBLISH_TOKEN")]
    pub publish_token: Option<String>,

    /// Bearer token every viewer must present (unless a stream has its own).
    #[arg(long, env = "WHIPCORD_WATCH_TOKEN")]
    pub watch_token: Option<String>,

    /// Let a new publisher take over a live stream instead of getting 409.
    #[arg(long, env = "WHIPCORD_PUBLISHER_TAKEOVER", num_args = 0..=1, default_missing_value = "true")]
    pub publisher_takeover: Option<bool>,

    /// Seconds without media after which a publisher is considered gone [default: 30].
    #[arg(long, env = "WHIPCORD_MEDIA_TIMEOUT")]
    pub media_timeout_secs: Option<u64>,

    /// Offer passive ICE-TCP candidates on the media port number, for
    /// clients whose networks block UDP [default: true].
    #[arg(long, env = "WHIPCORD_ICE_TCP", num_args = 0..=1, default_missing_value = "true")]
    pub ice_tcp: Option<bool>,

    /// Kernel receive buffer for the media socket, bytes [default: 8388608].
    #[arg(long, env = "WHIPCORD_UDP_RECV_BUFFER")]
    pub udp_recv_buffer: Option<usize>,

    /// Log filter in `tracing` syntax, e.g. `info,whipcord=debug` [default: info, WebRTC stack at warn].
    #[arg(long, env = "WHIPCORD_LOG")]
    pub log: Option<String>,

    /// Which streams are recorded: `all`, `none`, or comma-separated
    /// stream-name patterns with `*` and `?` [default: all].
    #[arg(long, env = "WHIPCORD_RECORD")]
    pub record: Option<RecordPolicy>,

    /// Container of recordings: `auto` (H264/H265/AV1 → MP4, VP8/VP9 →
    /// WebM), `mp4` or `webm` [default: auto].
    #[arg(long, env = "WHIPCORD_RECORD_FORMAT")]
    pub record_format: Option<RecordFormat>,

    /// When a new publisher takes over a recorded stream: `new-file` or
    /// `continue` (same file, timeline carries on) [default: new-file].
    #[arg(long, env = "WHIPCORD_RECORD_ON_RECONNECT")]
    pub record_on_reconnect: Option<ReconnectMode>,

    /// Rewrite each finished MP4 recording as a progressive ("faststart")
    /// MP4 for editors that handle fragmented MP4 badly [default: false].
    #[arg(long, env = "WHIPCORD_RECORD_FASTSTART", num_args = 0..=1, default_missing_value = "true")]
    pub record_faststart: Option<bool>,

    /// Start a new recording file every this many seconds (0: never) [default: 0].
    #[arg(long, env = "WHIPCORD_RECORD_SEGMENT_SECS")]
    pub record_segment_secs: Option<u64>,

    /// Start a new recording file once a file reaches this many MiB (0: never) [default: 0].
    #[arg(long, env = "WHIPCORD_RECORD_SEGMENT_MB")]
    pub record_segment_mb: Option<u64>,

    /// Delete recordings older than this many hours (0: keep) [default: 0].
    #[arg(long, env = "WHIPCORD_RECORD_MAX_AGE_HOURS")]
    pub record_max_age_hours: Option<u64>,

    /// Delete the oldest recordings while all of them together take more
    /// than this many MiB (0: no limit) [default: 0].
    #[arg(long, env = "WHIPCORD_RECORD_MAX_TOTAL_MB")]
    pub record_max_total_mb: Option<u64>,

    /// Bearer token for the REST API (recordings). Without one, the API
    /// answers loopback clients only.
    #[arg(long, env = "WHIPCORD_API_TOKEN")]
    pub api_token: Option<String>,

    /// Restream a stream to an RTMP(S) destination, as `STREAM=URL`
    /// (e.g. `cam=rtmp://a.rtmp.youtube.com/live2/KEY`). Repeatable; adds
    /// to the config file's `[[restream]]` tables.
    #[arg(long = "restream", env = "WHIPCORD_RESTREAM", value_delimiter = ',')]
    pub restream: Vec<RestreamFlag>,

    /// PEM file of extra CA certificates trusted for `rtmps://` targets,
    /// besides the system's roots.
    #[arg(long, env = "WHIPCORD_RESTREAM_CA_FILE")]
    pub restream_ca_file: Option<PathBuf>,

    /// Bit rate of the AAC audio made from Opus for RTMP and HLS, kbit/s [default: 128].
    #[arg(long, env = "WHIPCORD_AAC_BITRATE_KBPS")]
    pub aac_bitrate_kbps: Option<u32>,

    /// Video transcodes (VP8/VP9/AV1 → H264) allowed at once, server-wide [default: 1].
    #[arg(long, env = "WHIPCORD_TRANSCODE_MAX")]
    pub transcode_max: Option<usize>,

    /// Bit rate of transcoded H264 video, kbit/s [default: 2500].
    #[arg(long, env = "WHIPCORD_TRANSCODE_BITRATE_KBPS")]
    pub transcode_bitrate_kbps: Option<u32>,

    /// When HLS is produced: `on-demand` (from the first playlist request
    /// until a minute without requests), `always` or `off` [default: on-demand].
    #[arg(long, env = "WHIPCORD_HLS")]
    pub hls: Option<HlsMode>,

    /// On-demand HLS stops after this many seconds without a request [default: 60].
    #[arg(long, env = "WHIPCORD_HLS_IDLE_SECS")]
    pub hls_idle_secs: Option<u64>,

    /// Transcode VP8 video to H264 for HLS (HLS has no VP8), taking one of
    /// the `--transcode-max` slots [default: false].
    #[arg(long, env = "WHIPCORD_HLS_TRANSCODE", num_args = 0..=1, default_missing_value = "true")]
    pub hls_transcode: Option<bool>,

    /// Admin panel password. Without one, a password is generated at first
    /// start, printed once to the log, and only its hash is kept.
    #[arg(long, env = "WHIPCORD_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Minutes an admin panel session lasts without a request [default: 60].
    #[arg(long, env = "WHIPCORD_ADMIN_SESSION_IDLE_MINS")]
    pub admin_session_idle_mins: Option<u64>,

    /// Bearer token `/metrics` requires (open without one).
    #[arg(long, env = "WHIPCORD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// TLS certificate chain (PEM) for HTTPS on the HTTP port; reloaded on
    /// SIGHUP or when the file changes. Needs --tls-key.
    #[arg(long, env = "WHIPCORD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) matching --tls-cert.
    #[arg(long, env = "WHIPCORD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// `self-signed`: serve HTTPS with a certificate generated once into the
    /// data directory (its SHA-256 fingerprint is logged).
    #[arg(long, env = "WHIPCORD_TLS")]
    pub tls: Option<TlsMode>,

    /// Get certificates for this domain over ACME (repeatable).
    #[arg(
        long = "acme-domain",
        env = "WHIPCORD_ACME_DOMAIN",
        value_delimiter = ','
    )]
    pub acme_domain: Vec<String>,

    /// Contact e-mail for the ACME account.
    #[arg(long, env = "WHIPCORD_ACME_EMAIL")]
    pub acme_email: Option<String>,

    /// ACME directory URL [default: Let's Encrypt production].
    #[arg(long, env = "WHIPCORD_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,

    /// PEM file of CA certificates trusted for the ACME directory (a
    /// private CA's), besides the system's roots.
    #[arg(long, env = "WHIPCORD_ACME_CA_FILE")]
    pub acme_ca_file: Option<PathBuf>,

    /// Also listen for plain HTTP here and redirect every request to HTTPS.
    #[arg(long, env = "WHIPCORD_HTTP_REDIRECT_LISTEN")]
    pub http_redirect_listen: Option<SocketAddr>,

    /// Accept RTMP publishers (OBS, FFmpeg, hardware encoders) [default: true].
    #[arg(long, env = "WHIPCORD_RTMP", num_args = 0..=1, default_missing_value = "true")]
    pub rtmp: Option<bool>,

    /// TCP listen address of the RTMP ingest [default: 0.0.0.0:1935].
    #[arg(long, env = "WHIPCORD_RTMP_LISTEN")]
    pub rtmp_listen: Option<SocketAddr>,

    /// Pull an RTSP camera as a stream: `STREAM=rtsp://user:pass@host/path`.
    /// Repeatable; adds to the config file's `[[source]]` tables.
    #[arg(long = "pull", env = "WHIPCORD_PULL", value_delimiter = ',')]
    pub pull: Vec<PullFlag>,

    /// Seconds an on-demand source stays connected after its last viewer,
    /// recording or restream leaves [default: 10].
    #[arg(long, env = "WHIPCORD_SOURCE_LINGER_SECS")]
    pub source_linger_secs: Option<u64>,
}

/// `--pull STREAM=URL`.
#[derive(Debug, Clone, PartialEq)]
pub struct PullFlag {
    pub stream: String,
    pub url: String,
}

impl std::str::FromStr for PullFlag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (stream, url) = s
            .split_once('=')
            .ok_or_else(|| "expected STREAM=rtsp://…".to_owned())?;
        Ok(Self {
            stream: stream.trim().to_owned(),
            url: url.trim().to_owned(),
        })
    }
}

/// How an RTSP source's media travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SourceTransport {
    /// Interleaved in the RTSP connection: passes NAT and firewalls, and
    /// loses nothing; what most cameras handle best.
    #[default]
    Tcp,
    /// RTP over UDP: less latency on a clean LAN, losses on a busy one.
    Udp,
    /// UDP, falling back to TCP when the camera refuses it.
    Auto,
}

/// One `[[source]]` table: a stream pulled from an RTSP camera or server.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub stream: String,
    /// `rtsp://[user:pass@]host[:port]/path`.
    pub url: String,
    #[serde(default)]
    pub transport: SourceTransport,
    /// Connect only while a viewer, recording or restream needs the stream.
    #[serde(default)]
    pub on_demand: bool,
}

impl std::fmt::Debug for SourceConfig {
    // The URL may carry the camera's password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("stream", &self.stream)
            .field("transport", &self.transport)
            .field("on_demand", &self.on_demand)
            .finish_non_exhaustive()
    }
}

/// `--tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// A certificate generated once into the data directory.
    SelfSigned,
}

/// `--restream STREAM=URL`.
#[derive(Debug, Clone, PartialEq)]
pub struct RestreamFlag {
    pub stream: String,
    pub url: String,
}

impl std::str::FromStr for RestreamFlag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (stream, url) = s
            .split_once('=')
            .ok_or_else(|| format!("expected STREAM=URL, got {s:?}"))?;
        Ok(Self {
            stream: stream.trim().to_owned(),
            url: url.trim().to_owned(),
        })
    }
}

/// When HLS is produced for a live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HlsMode {
    /// From the first playlist request until a minute without requests:
    /// nobody pays for segments nobody fetches.
    #[default]
    OnDemand,
    /// For every live stream, from its start (players join instantly).
    Always,
    Off,
}

impl std::str::FromStr for HlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on-demand" => Ok(Self::OnDemand),
            "always" => Ok(Self::Always),
            "off" => Ok(Self::Off),
            other => Err(format!("expected on-demand, always or off, got {other:?}")),
        }
    }
}

/// One `[[restream]]` table: where a stream is pushed while it is live.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestreamConfig {
    pub stream: String,
    /// `rtmp://host[:port]/app/KEY` or `rtmps://…`.
    pub url: String,
    /// Transcode VP8/VP9/AV1 video to H264 for this target.
    #[serde(default)]
    pub transcode: bool,
    /// Enhanced RTMP: send H265/AV1/VP9 video and Opus audio as
    /// published, for destinations that accept them.
    #[serde(default)]
    pub enhanced: bool,
    /// Extra CA certificates for this `rtmps://` target.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A STUN or TURN server announced to clients.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

/// Per-stream settings from `[[stream]]` tables.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    #[serde(default)]
    pub publish_token: Option<String>,
    #[serde(default)]
    pub watch_token: Option<String>,
}

/// The effective configuration after all layers are merged.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http_listen: SocketAddr,
    pub media_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub public_ip: Vec<IpAddr>,
    pub candidate_ip: Vec<IpAddr>,
    pub ice_servers: Vec<IceServer>,
    pub publish_token: Option<String>,
    pub watch_token: Option<String>,
    pub publisher_takeover: bool,
    pub media_timeout_secs: u64,
    pub ice_tcp: bool,
    pub udp_recv_buffer: usize,
    pub log: String,
    pub record: RecordPolicy,
    pub record_format: RecordFormat,
    pub record_on_reconnect: ReconnectMode,
    pub record_faststart: bool,
    pub record_segment_secs: u64,
    pub record_segment_mb: u64,
    pub record_max_age_hours: u64,
    pub record_max_total_mb: u64,
    pub api_token: Option<String>,
    #[serde(rename = "restream")]
    pub restreams: Vec<RestreamConfig>,
    pub restream_ca_file: Option<PathBuf>,
    pub aac_bitrate_kbps: u32,
    pub transcode_max: usize,
    pub transcode_bitrate_kbps: u32,
    pub hls: HlsMode,
    pub hls_idle_secs: u64,
    pub hls_transcode: bool,
    pub admin_password: Option<String>,
    pub admin_session_idle_mins: u64,
    pub metrics_token: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls: Option<TlsMode>,
    pub acme_domains: Vec<String>,
    pub acme_email: Option<String>,
    pub acme_directory: Option<String>,
    pub acme_ca_file: Option<PathBuf>,
    pub http_redirect_listen: Option<SocketAddr>,
    pub rtmp: bool,
    pub rtmp_listen: SocketAddr,
    #[serde(rename = "source")]
    pub sources: Vec<SourceConfig>,
    pub source_linger_secs: u64,
    #[serde(rename = "stream")]
    pub streams: Vec<StreamConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            media_listen: SocketAddr::from(([0, 0, 0, 0], 8189)),
            data_dir: PathBuf::from("./data"),
            public_ip: Vec::new(),
            candidate_ip: Vec::new(),
            ice_servers: Vec::new(),
            publish_token: None,
            watch_token: None,
            publisher_takeover: false,
            media_timeout_secs: 30,
            ice_tcp: true,
            udp_recv_buffer: 8 * 1024 * 1024,
            log: DEFAULT_LOG.to_owned(),
            record: RecordPolicy::All,
            record_format: RecordFormat::Auto,
            record_on_reconnect: ReconnectMode::NewFile,
            record_faststart: false,
            record_segment_secs: 0,
            record_segment_mb: 0,
            record_max_age_hours: 0,
            record_max_total_mb: 0,
            api_token: None,
            restreams: Vec::new(),
            restream_ca_file: None,
            aac_bitrate_kbps: 128,
            transcode_max: 1,
            transcode_bitrate_kbps: 2500,
            hls: HlsMode::OnDemand,
            hls_idle_secs: 60,
            hls_transcode: false,
            admin_password: None,
            admin_session_idle_mins: 60,
            metrics_token: None,
            tls_cert: None,
            tls_key: None,
            tls: None,
            acme_domains: Vec::new(),
            acme_email: None,
            acme_directory: None,
            acme_ca_file: None,
            http_redirect_listen: None,
            rtmp: true,
            rtmp_listen: SocketAddr::from(([0, 0, 0, 0], 1935)),
            sources: Vec::new(),
            source_linger_secs: 10,
            streams: Vec::new(),
        }
    }
}

/// Default log filter: our own info lines, and only problems from the
/// WebRTC stack, which logs every browser DTLS extension it skips.
pub const DEFAULT_LOG: &str =
    "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_sctp=warn,rtc_interceptor=warn,retina=error";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Builds the effective configuration from flags (which already carry
    /// environment values) layered over the optional file.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let mut config = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_cli(cli);
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    fn apply_cli(&mut self, cli: &Cli) {
        if let Some(v) = cli.http_listen {
            self.http_listen = v;
        }
        if let Some(v) = cli.media_listen {
            self.media_listen = v;
        }
        if let Some(v) = &cli.data_dir {
            self.data_dir = v.clone();
        }
        if !cli.public_ip.is_empty() {
            self.public_ip = cli.public_ip.clone();
        }
        if !cli.candidate_ip.is_empty() {
            self.candidate_ip = cli.candidate_ip.clone();
        }
        if !cli.ice_server.is_empty() {
            self.ice_servers = cli
                .ice_server
                .iter()
                .map(|url| IceServer {
                    urls: vec![url.clone()],
                    username: cli.ice_username.clone(),
                    credential: cli.ice_credential.clone(),
                })
                .collect();
        }
        if let Some(v) = &cli.publish_token {
            self.publish_token = Some(v.clone());
        }
        if let Some(v) = &cli.watch_token {
            self.watch_token = Some(v.clone());
        }
        if let Some(v) = cli.publisher_takeover {
            self.publisher_takeover = v;
        }
        if let Some(v) = cli.media_timeout_secs {
            self.media_timeout_secs = v;
        }
        if let Some(v) = cli.ice_tcp {
            self.ice_tcp = v;
        }
        if let Some(v) = cli.udp_recv_buffer {
            self.udp_recv_buffer = v;
        }
        if let Some(v) = &cli.log {
            self.log = v.clone();
        }
        if let Some(v) = &cli.record {
            self.record = v.clone();
        }
        if let Some(v) = cli.record_format {
            self.record_format = v;
        }
        if let Some(v) = cli.record_on_reconnect {
            self.record_on_reconnect = v;
        }
        if let Some(v) = cli.record_faststart {
            self.record_faststart = v;
        }
        if let Some(v) = cli.record_segment_secs {
            self.record_segment_secs = v;
        }
        if let Some(v) = cli.record_segment_mb {
            self.record_segment_mb = v;
        }
        if let Some(v) = cli.record_max_age_hours {
            self.record_max_age_hours = v;
        }
        if let Some(v) = cli.record_max_total_mb {
            self.record_max_total_mb = v;
        }
        if let Some(v) = &cli.api_token {
            self.api_token = Some(v.clone());
        }
        self.restreams
            .extend(cli.restream.iter().map(|flag| RestreamConfig {
                stream: flag.stream.clone(),
                url: flag.url.clone(),
                transcode: false,
                enhanced: false,
                ca_file: None,
            }));
        if let Some(v) = cli.rtmp {
            self.rtmp = v;
        }
        if let Some(v) = cli.rtmp_listen {
            self.rtmp_listen = v;
        }
        self.sources
            .extend(cli.pull.iter().map(|flag| SourceConfig {
                stream: flag.stream.clone(),
                url: flag.url.clone(),
                transport: SourceTransport::default(),
                on_demand: false,
            }));
        if let Some(v) = cli.source_linger_secs {
            self.source_linger_secs = v;
        }
        if let Some(v) = &cli.restream_ca_file {
            self.restream_ca_file = Some(v.clone());
        }
        if let Some(v) = cli.aac_bitrate_kbps {
            self.aac_bitrate_kbps = v;
        }
        if let Some(v) = cli.transcode_max {
            self.transcode_max = v;
        }
        if let Some(v) = cli.transcode_bitrate_kbps {
            self.transcode_bitrate_kbps = v;
        }
        if let Some(v) = cli.hls {
            self.hls = v;
        }
        if let Some(v) = cli.hls_idle_secs {
            self.hls_idle_secs = v;
        }
        if let Some(v) = cli.hls_transcode {
            self.hls_transcode = v;
        }
        if let Some(v) = &cli.admin_password {
            self.admin_password = Some(v.clone());
        }
        if let Some(v) = cli.admin_session_idle_mins {
            self.admin_session_idle_mins = v;
        }
        if let Some(v) = &cli.metrics_token {
            self.metrics_token = Some(v.clone());
        }
        if let Some(v) = &cli.tls_cert {
            self.tls_cert = Some(v.clone());
        }
        if let Some(v) = &cli.tls_key {
            self.tls_key = Some(v.clone());
        }
        if let Some(v) = cli.tls {
            self.tls = Some(v);
        }
        if !cli.acme_domain.is_empty() {
            self.acme_domains = cli.acme_domain.clone();
        }
        if let Some(v) = &cli.acme_email {
            self.acme_email = Some(v.clone());
        }
        if let Some(v) = &cli.acme_directory {
            self.acme_directory = Some(v.clone());
        }
        if let Some(v) = &cli.acme_ca_file {
            self.acme_ca_file = Some(v.clone());
        }
        if let Some(v) = cli.http_redirect_listen {
            self.http_redirect_listen = Some(v);
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.media_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "media_timeout_secs must be > 0".into(),
            ));
        }
        for server in &self.ice_servers {
            for url in &server.urls {
                if !(url.starts_with("stun:")
                    || url.starts_with("stuns:")
                    || url.starts_with("turn:")
                    || url.starts_with("turns:"))
                {
                    return Err(ConfigError::Invalid(format!(
                        "ice server URL must start with stun:, stuns:, turn: or turns: ({url})"
                    )));
                }
            }
        }
        for stream in &self.streams {
            if !crate::stream_name::StreamName::is_valid(&stream.name) {
                return Err(ConfigError::Invalid(format!(
                    "invalid stream name in [[stream]]: {:?}",
                    stream.name
                )));
            }
        }
        let mut pulled = std::collections::HashSet::new();
        for source in &self.sources {
            if !crate::stream_name::StreamName::is_valid(&source.stream) {
                return Err(ConfigError::Invalid(format!(
                    "invalid stream name in [[source]]: {:?}",
                    source.stream
                )));
            }
            if !pulled.insert(source.stream.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "stream {:?} has more than one [[source]]",
                    source.stream
                )));
            }
            // Named without the URL: it may hold the camera's password.
            // (retina, the RTSP client, has no RTSP over TLS.)
            let scheme_ok = source
                .url
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("rtsp://"));
            if !scheme_ok {
                return Err(ConfigError::Invalid(format!(
                    "source of stream {:?}: the URL must start with rtsp://",
                    source.stream
                )));
            }
        }
        for restream in &self.restreams {
            if !crate::stream_name::StreamName::is_valid(&restream.stream) {
                return Err(ConfigError::Invalid(format!(
                    "invalid stream name in [[restream]]: {:?}",
                    restream.stream
                )));
            }
            // The error names the problem, never the URL: it holds the key.
            if let Err(err) = rtmp_bridge::RtmpUrl::parse(&restream.url) {
                return Err(ConfigError::Invalid(format!(
                    "restream target of stream {:?}: {err}",
                    restream.stream
                )));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key go together".into(),
            ));
        }
        let tls_sources = usize::from(self.tls_cert.is_some())
            + usize::from(self.tls.is_some())
            + usize::from(!self.acme_domains.is_empty());
        if tls_sources > 1 {
            return Err(ConfigError::Invalid(
                "choose one of tls_cert/tls_key, tls = \"self-signed\" and acme_domains".into(),
            ));
        }
        if self.http_redirect_listen.is_some() && tls_sources == 0 {
            return Err(ConfigError::Invalid(
                "http_redirect_listen needs HTTPS (tls_cert, tls or acme_domains)".into(),
            ));
        }
        if self.admin_session_idle_mins == 0 {
            return Err(ConfigError::Invalid(
                "admin_session_idle_mins must be > 0".into(),
            ));
        }
        if self.hls_idle_secs == 0 {
            return Err(ConfigError::Invalid("hls_idle_secs must be > 0".into()));
        }
        if !(8..=512).contains(&self.aac_bitrate_kbps) {
            return Err(ConfigError::Invalid(
                "aac_bitrate_kbps must be between 8 and 512".into(),
            ));
        }
        if !(100..=50_000).contains(&self.transcode_bitrate_kbps) {
            return Err(ConfigError::Invalid(
                "transcode_bitrate_kbps must be between 100 and 50000".into(),
            ));
        }
        Ok(())
    }

    /// Whether the HTTP port serves HTTPS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls.is_some() || !self.acme_domains.is_empty()
    }

    /// The per-stream table for `name`, if configured.
    pub fn stream(&self, name: &str) -> Option<&StreamConfig> {
        self.streams.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_without_config() {
        let config = Config::load(&Cli::default()).expect("defaults are valid");
        assert_eq!(config.http_listen.port(), 8080);
        assert_eq!(config.media_listen.port(), 8189);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("whipcord-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            r#"
http_listen = "127.0.0.1:9000"
publish_token = "file"
[[ice_servers]]
urls = ["stun:stun.example.org:3478"]
[[stream]]
name = "cam"
publish_token = "cam-secret"
"#,
        )
        .expect("write");
        let cli = Cli {
            config: Some(path),
            publish_token: Some("flag".into()),
            ..Cli::default()
        };
        let config = Config::load(&cli).expect("valid");
        assert_eq!(config.http_listen.port(), 9000);
        assert_eq!(config.publish_token.as_deref(), Some("flag"));
        assert_eq!(config.ice_servers.len(), 1);
        assert_eq!(
            config
                .stream("cam")
                .and_then(|s| s.publish_token.as_deref()),
            Some("cam-secret")
        );
    }

    #[test]
    fn restream_targets_from_file_and_flags() {
        let dir = std::env::temp_dir().join(format!("whipcord-restream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            r#"
hls = "always"
[[restream]]
stream = "cam"
url = "rtmps://live.example.com/app/secret"
transcode = true
"#,
        )
        .expect("write");
        let cli = Cli::try_parse_from([
            "whipcord",
            "--config",
            path.to_str().expect("utf-8 path"),
            "--restream",
            "cam=rtmp://127.0.0.1/live/k2",
        ])
        .expect("flags parse");
        let config = Config::load(&cli).expect("valid");
        assert_eq!(config.hls, HlsMode::Always);
        assert_eq!(config.restreams.len(), 2);
        assert!(config.restreams[0].transcode);
        assert_eq!(config.restreams[1].url, "rtmp://127.0.0.1/live/k2");

        let bad = Cli::try_parse_from(["whipcord", "--restream", "cam=http://x/y/z"])
            .expect("flags parse");
        let err = Config::load(&bad).expect_err("not an RTMP URL");
        assert!(err.to_string().contains("rtmp://"), "{err}");
        assert!(Cli::try_parse_from(["whipcord", "--restream", "no-equals"]).is_err());
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = toml::from_str::<Config>("htp_listen = 1").unwrap_err();
        assert!(err.to_string().contains("unknown field"));
    }
}
