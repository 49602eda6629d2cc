//! A playing camera's frames, passed to its Feed.
//!
//! The sink is a trait so the passing can be tried against a real RTSP
//! server without a media plane.

use std::time::{Duration, Instant};

use recorder::codec::MediaKind;
use retina::codec::{CodecItem, ParametersRef};
use tracing::{debug, info, warn};

use super::session::{Playing, SessionError, VideoTrack, from_retina};
use super::source_url::SourceUrl;
use super::status::StatusCell;
use crate::ingest::decoder_config::ParameterSets;
use crate::ingest::feed::{AudioSetup, Feed, FeedError, VideoSetup};
use crate::stream_name::StreamName;

/// A camera that sends no frame for this long is gone (retina would wait
/// forever: over UDP nothing else notices).
pub const NO_MEDIA: Duration = Duration::from_secs(10);
/// Audio waits this long for the video's parameter sets, so viewers get
/// both tracks at once instead of audio alone and then a renegotiation.
const AUDIO_WAITS_FOR_VIDEO: Duration = Duration::from_secs(5);

/// Where frames go: a [`Feed`], or a recorder of calls in tests.
pub trait MediaSink {
    fn set_video(&mut self, setup: VideoSetup);
    fn set_audio(&mut self, setup: AudioSetup) -> Result<(), FeedError>;
    async fn video(
        &mut self,
        dts_ns: i64,
        pts_ns: i64,
        keyframe: bool,
        data: &[u8],
    ) -> Result<(), FeedError>;
    async fn audio(&mut self, pts_ns: i64, data: &[u8]) -> Result<(), FeedError>;
    async fn source_report(
        &mut self,
        kind: MediaKind,
        ntp_time: u64,
        source_ns: i64,
    ) -> Result<(), FeedError>;
}

impl MediaSink for Feed {
    fn set_video(&mut self, setup: VideoSetup) {
        Feed::set_video(self, setup);
    }

    fn set_audio(&mut self, setup: AudioSetup) -> Result<(), FeedError> {
        Feed::set_audio(self, setup)
    }

    async fn video(
        &mut self,
        dts_ns: i64,
        pts_ns: i64,
        keyframe: bool,
        data: &[u8],
    ) -> Result<(), FeedError> {
        Feed::video(self, dts_ns, pts_ns, keyframe, data).await
    }

    async fn audio(&mut self, pts_ns: i64, data: &[u8]) -> Result<(), FeedError> {
        Feed::audio(self, pts_ns, data).await
    }

    async fn source_report(
        &mut self,
        kind: MediaKind,
        ntp_time: u64,
        source_ns: i64,
    ) -> Result<(), FeedError> {
        Feed::source_report(self, kind, ntp_time, source_ns).await
    }
}

/// What the supervisor learns of a connection while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// When the first frame came: the connection carried media from then.
    pub first_frame: Option<Instant>,
}

/// Passes frames until the connection fails or ends; only returns with
/// the reason.
pub async fn run<S: MediaSink>(
    playing: &mut Playing,
    sink: &mut S,
    url: &SourceUrl,
    stream: &StreamName,
    status: &StatusCell,
    progress: &mut Progress,
) -> SessionError {
    let started = Instant::now();
    let video_id = playing.video.as_ref().map(|v| v.stream_id);
    let audio_id = playing.audio.as_ref().map(|a| a.stream_id);
    // Every call with the same codec keeps the Feed's RTP going: viewers
    // of the previous connection see no change.
    let mut video_ready = false;
    let mut unreadable_warned = false;
    if let Some(video) = &playing.video {
        video_ready = set_video(playing, video, sink, stream, &mut unreadable_warned);
    }
    let mut audio_on = false;
    if let Some(audio) = &playing.audio {
        match sink.set_audio(audio.setup.clone()) {
            Ok(()) => audio_on = true,
            // Video alone is still worth having.
            Err(err) => warn!(%stream, "RTSP source audio skipped: {err}"),
        }
    }
    let mut deadline = tokio::time::Instant::now() + NO_MEDIA;
    loop {
        let next = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut playing.demuxed), cx)
        });
        let item = match tokio::time::timeout_at(deadline, next).await {
            Err(_) => return SessionError::NoMedia(NO_MEDIA.as_secs()),
            Ok(None) => return SessionError::Ended,
            Ok(Some(Err(err))) => return from_retina(url, &err),
            Ok(Some(Ok(item))) => item,
        };
        let result = match item {
            CodecItem::VideoFrame(frame) if Some(frame.stream_id()) == video_id => {
                deadline = tokio::time::Instant::now() + NO_MEDIA;
                note_frame(progress, playing, status, url, stream);
                if (frame.has_new_parameters() || !video_ready)
                    && let Some(video) = &playing.video
                {
                    video_ready = set_video(playing, video, sink, stream, &mut unreadable_warned);
                }
                let ns = timestamp_ns(frame.timestamp());
                // Presentation times only: the Feed tells B-frames by
                // their going back.
                sink.video(ns, ns, frame.is_random_access_point(), frame.data())
                    .await
            }
            CodecItem::AudioFrame(frame) if Some(frame.stream_id()) == audio_id => {
                deadline = tokio::time::Instant::now() + NO_MEDIA;
                note_frame(progress, playing, status, url, stream);
                let pass = audio_on
                    && (video_ready
                        || video_id.is_none()
                        || started.elapsed() >= AUDIO_WAITS_FOR_VIDEO);
                if pass {
                    sink.audio(timestamp_ns(frame.timestamp()), frame.data())
                        .await
                } else {
                    Ok(())
                }
            }
            CodecItem::Rtcp(rtcp) => {
                let kind = if Some(rtcp.stream_id()) == video_id {
                    Some(MediaKind::Video)
                } else if Some(rtcp.stream_id()) == audio_id && audio_on {
                    Some(MediaKind::Audio)
                } else {
                    None
                };
                // retina places the report's RTP time on the timeline of
                // that stream's frames: the times given to the sink.
                let report = rtcp.rtp_timestamp().zip(
                    rtcp.pkts()
                        .next()
                        .and_then(|pkt| pkt.as_sender_report().ok().flatten())
                        .map(|sr| sr.ntp_timestamp().0),
                );
                match (kind, report) {
                    (Some(kind), Some((rtp_time, ntp_time))) => {
                        sink.source_report(kind, ntp_time, timestamp_ns(rtp_time))
                            .await
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        };
        if let Err(err) = result {
            return SessionError::Plane(err.to_string());
        }
    }
}

fn note_frame(
    progress: &mut Progress,
    playing: &Playing,
    status: &StatusCell,
    url: &SourceUrl,
    stream: &StreamName,
) {
    if progress.first_frame.is_none() {
        progress.first_frame = Some(Instant::now());
        let codecs = playing.codecs();
        let transport = if playing.udp { "udp" } else { "tcp" };
        info!(%stream, url = %url.public, ?codecs, transport, "RTSP source live");
        status.live(codecs);
    }
}

/// Gives the sink the stream's current parameter sets; false while the
/// camera has sent none (or none readable) yet.
fn set_video<S: MediaSink>(
    playing: &Playing,
    video: &VideoTrack,
    sink: &mut S,
    stream: &StreamName,
    unreadable_warned: &mut bool,
) -> bool {
    let Some(ParametersRef::Video(params)) = playing
        .demuxed
        .streams()
        .get(video.stream_id)
        .and_then(|s| s.parameters())
    else {
        return false;
    };
    let codec = video.codec;
    match ParameterSets::parse(codec, params.extra_data()) {
        Some(parameter_sets) => {
            debug!(%stream, codec = params.rfc6381_codec(), "RTSP source video parameters");
            sink.set_video(VideoSetup {
                codec,
                parameter_sets,
            });
            true
        }
        None => {
            // Tried again at every frame until readable ones come.
            if !std::mem::replace(unreadable_warned, true) {
                warn!(%stream, "RTSP source sent unreadable {codec} parameter sets");
            }
            false
        }
    }
}

/// A retina timestamp (ticks since the stream's start) in nanoseconds.
fn timestamp_ns(timestamp: retina::Timestamp) -> i64 {
    let rate = i128::from(timestamp.clock_rate().get());
    let ns = i128::from(timestamp.elapsed()) * 1_000_000_000 / rate;
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn timestamps_become_nanoseconds() {
        let rate = NonZeroU32::new(90_000).expect("non-zero");
        let ts = retina::Timestamp::new(1_000 + 45_000, rate, 1_000).expect("valid");
        assert_eq!(timestamp_ns(ts), 500_000_000);
        let rate = NonZeroU32::new(8_000).expect("non-zero");
        let ts = retina::Timestamp::new(-80, rate, 0).expect("valid");
        assert_eq!(timestamp_ns(ts), -10_000_000);
    }
}
