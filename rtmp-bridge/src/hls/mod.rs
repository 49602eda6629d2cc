//! LL-HLS (issue 5): a stream's frames → a low-latency HLS media playlist
//! with fMP4/CMAF segments and ~200 ms partial segments, held in memory
//! for the gateway's `/hls/{stream}/…` routes.
//!
//! - [`Muxer`] (`segmenter.rs`): sans-IO, fed [`recorder::pipeline::Output`]s
//!   on the stream's worker thread. It decides where parts and segments
//!   end (a part every ~`part_target` of media, a segment at the first
//!   video keyframe after `segment_min`), cuts each part with the
//!   recorder's [`recorder::mp4::Fragmenter`], and hands it to the store.
//! - [`Store`] (`store.rs`): the in-memory window of segments and parts,
//!   shared (`Arc<Mutex>` + a `tokio::sync::watch` bumped on every change)
//!   with the HTTP layer, which may run on another tokio runtime: blocking
//!   playlist reloads and preload-hinted part requests `await` the watch.
//! - `playlist.rs`: the playlist text, rendered once per change.
//!
//! Resource names (`index.m3u8`, `init.mp4`, `seg{msn}.mp4`,
//! `part{msn}.{index}.mp4`) are made and parsed only here ([`Resource`]),
//! so the gateway routes `/hls/{stream}/{name}` with one handler.

mod playlist;
mod segmenter;
mod store;

use std::time::Duration;

pub use segmenter::{Muxer, MuxerState};
pub use store::{Store, StoreStats};

/// How a stream is cut into segments and parts, and how many are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HlsConfig {
    /// A part ends once it holds this much media (`EXT-X-PART-INF`
    /// `PART-TARGET`); parts never run longer, except when frames are
    /// further apart than this.
    pub part_target: Duration,
    /// A segment ends at the first video keyframe after this much media
    /// (audio only: at the first audio frame after it).
    pub segment_min: Duration,
    /// The least `EXT-X-TARGETDURATION`. Segments end only at keyframes,
    /// so a longer GOP makes longer segments and the playlist's target
    /// grows to cover them (see [`Muxer`]).
    pub target_duration_secs: u32,
    /// Complete segments listed in the playlist.
    pub window_segments: usize,
    /// Segments kept after they leave the playlist, for players that read
    /// the playlist just before it moved on.
    pub extra_segments: usize,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            part_target: Duration::from_millis(200),
            segment_min: Duration::from_secs(1),
            target_duration_secs: 2,
            window_segments: 7,
            extra_segments: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the part target must be between 10 ms and the minimum segment length")]
    PartTarget,
    #[error("the minimum segment length must not exceed the target duration")]
    SegmentMin,
    #[error("the target duration must be at least 1 s")]
    TargetDuration,
    #[error("the playlist must list at least one segment")]
    Window,
}

impl HlsConfig {
    /// Whether the settings make a valid playlist.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.target_duration_secs == 0 {
            return Err(ConfigError::TargetDuration);
        }
        if self.segment_min > self.target_duration() {
            return Err(ConfigError::SegmentMin);
        }
        if self.part_target < Duration::from_millis(10) || self.part_target > self.segment_min {
            return Err(ConfigError::PartTarget);
        }
        if self.window_segments == 0 {
            return Err(ConfigError::Window);
        }
        Ok(())
    }

    pub fn target_duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.target_duration_secs))
    }

    /// How far ahead of the newest part a blocking request may ask
    /// (RFC 8216bis §6.2.5.2 "Advance Part Limit"): 3 s worth of parts.
    fn advance_part_limit(&self) -> u64 {
        let part_ms = self.part_target.as_millis().max(1);
        if part_ms < 1000 {
            u64::try_from(3000 / part_ms).unwrap_or(u64::MAX)
        } else {
            3
        }
    }
}

/// Why a request cannot be answered (yet); [`RequestError::status`] is
/// the HTTP status for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `_HLS_part` without `_HLS_msn`, a number that does not parse, or a
    /// segment or part too far ahead to be waited for.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No such segment or part (never made, already dropped, or not the
    /// preload-hinted next part).
    #[error("not found")]
    NotFound,
    /// Still not there when the caller's timeout ran out: 503, so the
    /// player asks again.
    #[error("the stream did not get there in time")]
    Timeout,
    /// The stream ended and its HLS output was closed.
    #[error("the stream has ended")]
    Gone,
    /// The stream carries nothing HLS can carry (VP8 video); the message
    /// says what and what to do.
    #[error("{0}")]
    Unsupported(String),
}

impl RequestError {
    /// The HTTP status a handler answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::NotFound | Self::Gone => 404,
            Self::Unsupported(_) => 415,
            Self::Timeout => 503,
        }
    }
}

/// One name under `/hls/{stream}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `index.m3u8`, the media playlist (the only playlist: one muxed
    /// rendition, so hls.js and FFmpeg take it as the entry point).
    Playlist,
    /// The init segment of a run: `init.mp4` for the first run, then
    /// `init{run}.mp4` (a new run may change codecs or picture size, and
    /// players cache init segments by URI).
    Init { run: u64 },
    /// A complete segment, `seg{msn}.mp4`: its parts' bytes in a row.
    Segment { msn: u64 },
    /// A partial segment, `part{msn}.{index}.mp4`; index 0 is the first.
    Part { msn: u64, index: u64 },
}

impl Resource {
    /// The name as the playlist writes it.
    pub fn uri(&self) -> String {
        match *self {
            Self::Playlist => "index.m3u8".to_owned(),
            Self::Init { run: 0 } => "init.mp4".to_owned(),
            Self::Init { run } => format!("init{run}.mp4"),
            Self::Segment { msn } => format!("seg{msn}.mp4"),
            Self::Part { msn, index } => format!("part{msn}.{index}.mp4"),
        }
    }

    /// The `Content-Type` to serve it with.
    pub fn content_type(&self) -> &'static str {
        match self {
            Self::Playlist => "application/vnd.apple.mpegurl",
            _ => "video/mp4",
        }
    }
}

/// The resource a request path's last component names; `None` for
/// anything we never hand out (so every name has exactly one spelling:
/// no leading zeros, no signs, no `init0.mp4`).
pub fn parse_resource(name: &str) -> Option<Resource> {
    if name == "index.m3u8" {
        return Some(Resource::Playlist);
    }
    let stem = name.strip_suffix(".mp4")?;
    if stem == "init" {
        return Some(Resource::Init { run: 0 });
    }
    if let Some(run) = stem.strip_prefix("init") {
        let run = number(run)?;
        return (run > 0).then_some(Resource::Init { run });
    }
    if let Some(msn) = stem.strip_prefix("seg") {
        return Some(Resource::Segment { msn: number(msn)? });
    }
    let (msn, index) = stem.strip_prefix("part")?.split_once('.')?;
    Some(Resource::Part {
        msn: number(msn)?,
        index: number(index)?,
    })
}

/// A canonical decimal number: digits only, no leading zero.
fn number(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

/// The blocking-reload delivery directives of a playlist request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadRequest {
    pub msn: Option<u64>,
    pub part: Option<u64>,
}

/// Reads `_HLS_msn` and `_HLS_part` from a playlist request's query
/// string (other parameters are ignored: we advertise no `CAN-SKIP-UNTIL`,
/// so `_HLS_skip` must be ignored). A value that is not a decimal
/// integer is a bad request (RFC 8216bis §6.2.5.2 via gohlslib).
pub fn parse_reload_query(query: &str) -> Result<ReloadRequest, RequestError> {
    let mut request = ReloadRequest::default();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "_HLS_msn" => &mut request.msn,
            "_HLS_part" => &mut request.part,
            _ => continue,
        };
        let value: u64 = value
            .parse()
            .map_err(|_| RequestError::BadRequest(format!("{key} must be a decimal integer")))?;
        *slot = Some(value);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        for resource in [
            Resource::Playlist,
            Resource::Init { run: 0 },
            Resource::Init { run: 3 },
            Resource::Segment { msn: 0 },
            Resource::Segment { msn: 41 },
            Resource::Part { msn: 42, index: 0 },
            Resource::Part { msn: 7, index: 12 },
        ] {
            assert_eq!(parse_resource(&resource.uri()), Some(resource));
        }
        for bad in [
            "",
            "index.m3u",
            "init0.mp4",
            "seg.mp4",
            "seg01.mp4",
            "seg+1.mp4",
            "seg-1.mp4",
            "seg1.m4s",
            "part1.mp4",
            "part1..mp4",
            "part1.2.3.mp4",
            "part1.x.mp4",
            "seg99999999999999999999999.mp4",
            "../seg1.mp4",
        ] {
            assert_eq!(parse_resource(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reload_query() {
        assert_eq!(parse_reload_query(""), Ok(ReloadRequest::default()));
        assert_eq!(
            parse_reload_query("_HLS_msn=41&_HLS_part=3&_HLS_skip=YES"),
            Ok(ReloadRequest {
                msn: Some(41),
                part: Some(3)
            })
        );
        assert!(matches!(
            parse_reload_query("_HLS_msn=x"),
            Err(RequestError::BadRequest(_))
        ));
        assert!(matches!(
            parse_reload_query("_HLS_part=-1"),
            Err(RequestError::BadRequest(_))
        ));
    }

    #[test]
    fn config_checks() {
        assert_eq!(HlsConfig::default().check(), Ok(()));
        assert_eq!(HlsConfig::default().advance_part_limit(), 15);
        let bad = HlsConfig {
            segment_min: Duration::from_secs(3),
            ..HlsConfig::default()
        };
        assert_eq!(bad.check(), Err(ConfigError::SegmentMin));
        let bad = HlsConfig {
            part_target: Duration::from_secs(2),
            ..HlsConfig::default()
        };
        assert_eq!(bad.check(), Err(ConfigError::PartTarget));
    }
}
