//! A source's frames, turned into the RTP the hub carries.
//!
//! The hub speaks RTP because WebRTC does; giving RTMP and RTSP sources the
//! same shape keeps one path to viewers, the GOP cache, recordings and
//! restreams. Video is repacketized (parameter sets ahead of every
//! keyframe, so a viewer joining at any keyframe can decode it). AAC goes
//! to the sinks as sent (RFC 3640), and a transcode to Opus goes to WebRTC
//! viewers, whose browsers cannot play AAC. Sender reports put every track
//! on the source's one clock, which is what A/V sync in recordings needs.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use recorder::codec::{Codec, MediaKind};
use recorder::params::{AacConfig, parse_h264_sps};
use recorder::rtp::packetize;
use rtc::rtp::Packet;
use rtmp_bridge::transcode::{OpusSource, ToOpus};
use tracing::{info, warn};

use super::clock::{SourceClock, ticks};
use super::decoder_config::{ParameterSets, split_nals};
use crate::http::MediaHandle;
use crate::hub::PeerKey;
use crate::hub::subscriber::{Audience, TrackDescription};
use crate::signal::{ClientInfo, Command, IngestCommand, IngestLease, IngestProtocol, SignalError};
use crate::stream_name::StreamName;

/// RTP payload size: fits the path MTU with SRTP and TURN overhead.
const MTU: usize = 1200;
/// How often each track's clock is reported to the hub.
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// AAC timestamps within this many samples of the running count are
/// rounding (RTMP has millisecond times), not a gap.
const AAC_JITTER_SAMPLES: i64 = 960;
/// What the operator is told when video has B-frames.
pub const B_FRAMES_NOTICE: &str = "H264 with B-frames: browsers play it with stutter. \
     Disable B-frames in the encoder (x264 bframes=0, OBS: B-frames 0, or the baseline profile).";

/// The video a source sends.
#[derive(Debug, Clone)]
pub struct VideoSetup {
    pub codec: Codec,
    pub parameter_sets: ParameterSets,
}

/// The audio a source sends.
#[derive(Debug, Clone)]
pub enum AudioSetup {
    /// AAC with its AudioSpecificConfig.
    Aac {
        config: Bytes,
    },
    Opus {
        channels: u16,
    },
    G711u,
    G711a,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the media plane stopped")]
    Closed,
    #[error("unsupported {0}")]
    Unsupported(String),
}

impl From<SignalError> for FeedError {
    fn from(_: SignalError) -> Self {
        FeedError::Closed
    }
}

/// The RTP side of one hub track.
struct RtpOut {
    track: usize,
    ssrc: u32,
    seq: u16,
    base: u32,
    rate: u32,
    payload_type: u8,
}

impl RtpOut {
    fn new(track: usize, rate: u32, payload_type: u8) -> Self {
        Self {
            track,
            ssrc: rand::random(),
            seq: rand::random(),
            base: rand::random(),
            rate,
            payload_type,
        }
    }

    fn rtp_time(&self, ticks: i64) -> u32 {
        self.base.wrapping_add(ticks as u32)
    }

    fn packets(&mut self, timestamp: u32, payloads: Vec<Bytes>, marker: bool) -> Vec<Packet> {
        let count = payloads.len();
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                let mut packet = Packet::default();
                packet.header.version = 2;
                packet.header.payload_type = self.payload_type;
                packet.header.sequence_number = self.seq;
                packet.header.timestamp = timestamp;
                packet.header.ssrc = self.ssrc;
                packet.header.marker = marker && i + 1 == count;
                packet.payload = payload;
                self.seq = self.seq.wrapping_add(1);
                packet
            })
            .collect()
    }
}

struct VideoTrack {
    setup: VideoSetup,
    out: RtpOut,
}

struct AudioTrack {
    setup: AudioSetup,
    /// The source's own audio, for recordings and restreams (and viewers
    /// too when it is Opus).
    sinks: Option<RtpOut>,
    /// Opus for WebRTC viewers, transcoded.
    viewers: Option<(RtpOut, ToOpus)>,
    rate: u32,
    /// The next AAC frame's timestamp by sample count.
    next_ticks: Option<i64>,
}

/// One RTMP publisher's or RTSP source's way into the hub.
pub struct Feed {
    media: MediaHandle,
    key: PeerKey,
    stream: StreamName,
    clock: SourceClock,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    declared: bool,
    last_report: Option<Instant>,
    /// The source sends its own sender reports (RTSP cameras): they are
    /// passed on instead of made up here.
    source_reports: bool,
    /// Corrected time of the latest frame.
    latest_ns: i64,
    /// Latest presentation time of video: one going back means B-frames.
    last_pts: Option<i64>,
    /// The SPS says frames are reordered (told at the next frame).
    sps_reorders: bool,
    b_frames: bool,
}

impl Feed {
    /// Claims `stream` (401/409 rules are the caller's and the plane's);
    /// the lease's receiver completes when the plane ends this publisher.
    pub async fn open(
        media: &MediaHandle,
        stream: StreamName,
        protocol: IngestProtocol,
        client: ClientInfo,
    ) -> Result<(Feed, tokio::sync::oneshot::Receiver<String>), SignalError> {
        let lease: IngestLease = media
            .request(|reply| Command::IngestOpen {
                stream: stream.clone(),
                protocol,
                client,
                reply,
            })
            .await??;
        let feed = Feed {
            media: media.clone(),
            key: lease.key,
            stream,
            clock: SourceClock::new(SystemTime::now()),
            video: None,
            audio: None,
            declared: false,
            last_report: None,
            source_reports: false,
            latest_ns: 0,
            last_pts: None,
            sps_reorders: false,
            b_frames: false,
        };
        Ok((feed, lease.ended))
    }

    pub fn stream(&self) -> &StreamName {
        &self.stream
    }

    /// Sets (or changes) the video; takes effect at the next frame.
    pub fn set_video(&mut self, setup: VideoSetup) {
        self.sps_reorders = setup.codec == Codec::H264
            && setup
                .parameter_sets
                .nals
                .iter()
                .filter(|nal| nal.first().is_some_and(|b| b & 0x1f == 7))
                .filter_map(|nal| parse_h264_sps(nal))
                .any(|sps| sps.reorders_frames() == Some(true));
        if let Some(video) = &mut self.video
            && video.setup.codec == setup.codec
        {
            video.setup = setup;
            return;
        }
        self.video = Some(VideoTrack {
            setup,
            out: RtpOut::new(0, 90_000, 96),
        });
        self.declared = false;
    }

    /// Sets (or changes) the audio; takes effect at the next frame.
    pub fn set_audio(&mut self, setup: AudioSetup) -> Result<(), FeedError> {
        let (rate, transcode) = match &setup {
            AudioSetup::Aac { config } => {
                let parsed = AacConfig::parse(config)
                    .ok_or_else(|| FeedError::Unsupported("AAC configuration".into()))?;
                (
                    parsed.sample_rate,
                    Some(OpusSource::Aac {
                        config: config.clone(),
                    }),
                )
            }
            AudioSetup::Opus { .. } => (48_000, None),
            AudioSetup::G711u => (8_000, Some(OpusSource::G711u)),
            AudioSetup::G711a => (8_000, Some(OpusSource::G711a)),
        };
        let viewers = match transcode {
            Some(source) => {
                let transcoder = ToOpus::new(source)
                    .map_err(|e| FeedError::Unsupported(format!("audio transcode: {e}")))?;
                Some((RtpOut::new(0, 48_000, 111), transcoder))
            }
            None => None,
        };
        let same = self
            .audio
            .as_ref()
            .is_some_and(|a| a.rate == rate && same_kind(&a.setup, &setup));
        // Declared again only if the audio changed: a reconnect with the
        // same audio keeps the hub's tracks (and the GOP cache) as they are.
        if !same {
            self.declared = false;
        }
        let (sinks, viewers) = match (same, self.audio.take()) {
            // The same audio again (a reconnect): the RTP continues, so
            // viewers notice nothing.
            (true, Some(old)) => (
                old.sinks,
                old.viewers
                    .zip(viewers)
                    .map(|((out, _), (_, transcoder))| (out, transcoder)),
            ),
            _ => (Some(RtpOut::new(0, rate, 97)), viewers),
        };
        self.audio = Some(AudioTrack {
            sinks,
            viewers,
            setup,
            rate,
            next_ticks: None,
        });
        Ok(())
    }

    /// The hub tracks for the current setup, numbering each RTP output.
    fn describe(&mut self) -> Vec<TrackDescription> {
        let mut tracks = Vec::new();
        if let Some(video) = &mut self.video {
            video.out.track = tracks.len();
            tracks.push(TrackDescription {
                codec: video.setup.codec,
                clock_rate: 90_000,
                channels: 0,
                fmtp: video_fmtp(&video.setup),
                audience: Audience::Everyone,
            });
        }
        if let Some(audio) = &mut self.audio {
            let (codec, channels, fmtp, audience) = match &audio.setup {
                AudioSetup::Aac { config } => {
                    let channels = AacConfig::parse(config).map_or(2, |c| u16::from(c.channels));
                    (Codec::Aac, channels, aac_fmtp(config), Audience::Sinks)
                }
                AudioSetup::Opus { channels } => (
                    Codec::Opus,
                    (*channels).max(2),
                    "minptime=10;useinbandfec=1".to_owned(),
                    Audience::Everyone,
                ),
                // Browsers play G.711 as it is; recordings cannot hold it
                // and take the Opus transcode instead.
                AudioSetup::G711u => (Codec::G711u, 1, String::new(), Audience::Everyone),
                AudioSetup::G711a => (Codec::G711a, 1, String::new(), Audience::Everyone),
            };
            let transcode_audience = match audio.setup {
                AudioSetup::G711u | AudioSetup::G711a => Audience::Fallback,
                _ => Audience::Viewers,
            };
            if let Some(out) = &mut audio.sinks {
                out.track = tracks.len();
                tracks.push(TrackDescription {
                    codec,
                    clock_rate: audio.rate,
                    channels,
                    fmtp,
                    audience,
                });
            }
            if let Some((out, _)) = &mut audio.viewers {
                out.track = tracks.len();
                tracks.push(TrackDescription {
                    codec: Codec::Opus,
                    clock_rate: 48_000,
                    channels: 2,
                    fmtp: "minptime=10;useinbandfec=1".to_owned(),
                    audience: transcode_audience,
                });
            }
        }
        tracks
    }

    /// Tells the hub the tracks, once something can be sent.
    async fn ensure_declared(&mut self) -> Result<(), FeedError> {
        if self.declared {
            return Ok(());
        }
        let tracks = self.describe();
        info!(
            stream = %self.stream,
            tracks = ?tracks.iter().map(|t| t.codec.to_string()).collect::<Vec<_>>(),
            "source tracks"
        );
        self.send(IngestCommand::Tracks(tracks)).await?;
        self.declared = true;
        self.last_report = None;
        Ok(())
    }

    // `&mut self`: a `&Feed` held across the await would need `Feed: Sync`,
    // which FFmpeg's contexts inside the transcoder are not.
    async fn send(&mut self, command: IngestCommand) -> Result<(), FeedError> {
        self.media
            .send(Command::Ingest {
                key: self.key,
                command,
            })
            .await?;
        Ok(())
    }

    /// One video frame: `dts_ns`/`pts_ns` on the source's clock, `data`
    /// NAL units with the length prefixes of the parameter sets' record.
    pub async fn video(
        &mut self,
        dts_ns: i64,
        pts_ns: i64,
        keyframe: bool,
        data: &[u8],
    ) -> Result<(), FeedError> {
        let Some(video) = &self.video else {
            return Ok(()); // frames before their sequence header
        };
        // Proof of B-frames: the SPS says so, a composition offset (RTMP),
        // or presentation times going back (RTSP).
        let reordered = pts_ns != dts_ns
            || self
                .last_pts
                .is_some_and(|last| (1..1_000_000_000).contains(&(last - pts_ns)));
        self.last_pts = Some(pts_ns);
        if video.setup.codec == Codec::H264 && (reordered || self.sps_reorders) && !self.b_frames {
            self.note_b_frames().await?;
        }
        self.ensure_declared().await?;
        let correction = self.clock.correct(dts_ns, self.stream.as_str());
        let pts = pts_ns + correction;
        self.latest_ns = self.latest_ns.max(dts_ns + correction);
        let Some(video) = &mut self.video else {
            return Ok(());
        };
        let length_size = video.setup.parameter_sets.length_size;
        let codec = video.setup.codec;
        let nals: Vec<&[u8]> = split_nals(data, length_size)
            .filter(|nal| !is_delimiter(codec, nal))
            .collect();
        let carries_sets = nals.iter().any(|nal| is_parameter_set(codec, nal));
        let sets = &video.setup.parameter_sets.nals;
        let prefix: Vec<&[u8]> = if keyframe && !carries_sets {
            sets.iter().map(|n| n.as_ref()).collect()
        } else {
            Vec::new()
        };
        let all = prefix.into_iter().chain(nals);
        let payloads = match codec {
            Codec::H265 => packetize::h265_payloads(all, MTU),
            _ => packetize::h264_payloads(all, MTU),
        };
        if payloads.is_empty() {
            return Ok(());
        }
        let timestamp = video.out.rtp_time(ticks(pts, 90_000));
        let packets = video.out.packets(timestamp, payloads, true);
        let track = video.out.track;
        self.send(IngestCommand::Media { track, packets }).await?;
        self.report_due().await
    }

    /// One audio frame at `pts_ns` on the source's clock.
    pub async fn audio(&mut self, pts_ns: i64, data: &[u8]) -> Result<(), FeedError> {
        if self.audio.is_none() {
            return Ok(());
        }
        self.ensure_declared().await?;
        let time = pts_ns + self.clock.correct(pts_ns, self.stream.as_str());
        self.latest_ns = self.latest_ns.max(time);
        let Some(audio) = &mut self.audio else {
            return Ok(());
        };
        let mut frame_ticks = ticks(time, audio.rate);
        if matches!(audio.setup, AudioSetup::Aac { .. }) {
            // Count samples: millisecond timestamps would make every AAC
            // frame a little longer or shorter than its 1024 samples.
            if let Some(next) = audio.next_ticks
                && (frame_ticks - next).abs() < AAC_JITTER_SAMPLES
            {
                frame_ticks = next;
            }
            audio.next_ticks = Some(frame_ticks + 1024);
        }
        let mut outgoing = Vec::new();
        if let Some(out) = &mut audio.sinks {
            let payload = match audio.setup {
                AudioSetup::Aac { .. } => packetize::aac_payload(data),
                _ => Some(Bytes::copy_from_slice(data)),
            };
            if let Some(payload) = payload {
                let timestamp = out.rtp_time(frame_ticks);
                outgoing.push((out.track, out.packets(timestamp, vec![payload], true)));
            }
        }
        if let Some((out, transcoder)) = &mut audio.viewers {
            let mut opus = Vec::new();
            // Undecodable frames are counted and logged by the transcoder.
            transcoder.push(data, frame_ticks, &mut opus);
            let mut packets = Vec::with_capacity(opus.len());
            for packet in opus {
                let timestamp = out.rtp_time(packet.timestamp);
                packets.extend(out.packets(timestamp, vec![packet.data], false));
            }
            if !packets.is_empty() {
                outgoing.push((out.track, packets));
            }
        }
        for (track, packets) in outgoing {
            self.send(IngestCommand::Media { track, packets }).await?;
        }
        self.report_due().await
    }

    /// A sender report of the source itself for its `kind` track: the
    /// wall clock `ntp_time` at `source_ns` on that track's timeline (as
    /// given to [`Feed::video`] / [`Feed::audio`]). From the first one on,
    /// the source's reports replace the ones made up here, so recordings
    /// are aligned as the camera captured them.
    pub async fn source_report(
        &mut self,
        kind: MediaKind,
        ntp_time: u64,
        source_ns: i64,
    ) -> Result<(), FeedError> {
        if !self.declared {
            return Ok(());
        }
        self.source_reports = true;
        let time = source_ns + self.clock.correction();
        self.send_reports(Some(kind), ntp_time, time).await
    }

    /// Sender reports for every track, once a second: the hub's sinks time
    /// frames by them.
    async fn report_due(&mut self) -> Result<(), FeedError> {
        if self.source_reports {
            return Ok(());
        }
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|at| now.duration_since(at) < SENDER_REPORT_INTERVAL)
        {
            return Ok(());
        }
        self.last_report = Some(now);
        let time = self.latest_ns;
        let ntp_time = self.clock.ntp_at(time);
        self.send_reports(None, ntp_time, time).await
    }

    /// Sender reports saying `ntp_time` is `time` on the timeline, for the
    /// tracks of `kind` (every track for `None`), each in its own clock.
    async fn send_reports(
        &mut self,
        kind: Option<MediaKind>,
        ntp_time: u64,
        time: i64,
    ) -> Result<(), FeedError> {
        let mut outs: Vec<&RtpOut> = Vec::new();
        if kind != Some(MediaKind::Audio)
            && let Some(video) = &self.video
        {
            outs.push(&video.out);
        }
        if kind != Some(MediaKind::Video)
            && let Some(audio) = &self.audio
        {
            outs.extend(audio.sinks.as_ref());
            outs.extend(audio.viewers.as_ref().map(|(out, _)| out));
        }
        let reports: Vec<IngestCommand> = outs
            .into_iter()
            .map(|out| IngestCommand::SenderReport {
                track: out.track,
                ssrc: out.ssrc,
                ntp_time,
                rtp_time: out.rtp_time(ticks(time, out.rate)),
            })
            .collect();
        for report in reports {
            self.send(report).await?;
        }
        Ok(())
    }

    /// Video with B-frames: said once in the log and on the stream.
    pub async fn note_b_frames(&mut self) -> Result<(), FeedError> {
        if self.b_frames {
            return Ok(());
        }
        self.b_frames = true;
        warn!(stream = %self.stream, "{B_FRAMES_NOTICE}");
        self.send(IngestCommand::Notice(Some(B_FRAMES_NOTICE.to_owned())))
            .await
    }

    pub async fn close(mut self, why: &str) {
        let _ = self
            .send(IngestCommand::Close {
                why: why.to_owned(),
            })
            .await;
    }
}

fn same_kind(a: &AudioSetup, b: &AudioSetup) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn is_delimiter(codec: Codec, nal: &[u8]) -> bool {
    let Some(&first) = nal.first() else {
        return true;
    };
    match codec {
        Codec::H264 => first & 0x1f == 9,
        Codec::H265 => (first >> 1) & 0x3f == 35,
        _ => false,
    }
}

fn is_parameter_set(codec: Codec, nal: &[u8]) -> bool {
    let Some(&first) = nal.first() else {
        return false;
    };
    match codec {
        Codec::H264 => first & 0x1f == 7,
        Codec::H265 => matches!((first >> 1) & 0x3f, 32..=34),
        _ => false,
    }
}

/// The SDP format parameters a viewer's answer needs for this video.
fn video_fmtp(setup: &VideoSetup) -> String {
    match setup.codec {
        Codec::H264 => {
            let profile = setup
                .parameter_sets
                .nals
                .iter()
                .find(|nal| nal.first().is_some_and(|b| b & 0x1f == 7))
                .and_then(|sps| sps.get(1..4))
                .map_or_else(
                    || "42e01f".to_owned(),
                    |p| format!("{:02x}{:02x}{:02x}", p[0], p[1], p[2]),
                );
            format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}")
        }
        _ => String::new(),
    }
}

/// RFC 3640 AAC-hbr, as the recorder's depacketizer reads it.
fn aac_fmtp(config: &[u8]) -> String {
    let hex: String = config.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config={hex}"
    )
}
