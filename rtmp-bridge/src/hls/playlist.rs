//! The media playlist text (RFC 8216bis with the Low-Latency extensions),
//! rendered from the store's segments after every change:
//!
//! ```text
//! #EXTM3U
//! #EXT-X-VERSION:9
//! #EXT-X-TARGETDURATION:2
//! #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600
//! #EXT-X-PART-INF:PART-TARGET=0.200
//! #EXT-X-MEDIA-SEQUENCE:41
//! #EXT-X-MAP:URI="init.mp4"
//! #EXT-X-PROGRAM-DATE-TIME:2026-11-20T10:00:00.000Z
//! #EXTINF:1.00000,
//! seg41.mp4
//! #EXT-X-PROGRAM-DATE-TIME:2026-11-20T10:00:01.000Z
//! #EXT-X-PART:DURATION=0.20000,URI="part42.0.mp4",INDEPENDENT=YES
//! …
//! #EXTINF:1.00000,
//! seg42.mp4
//! #EXT-X-PROGRAM-DATE-TIME:2026-11-20T10:00:02.000Z
//! #EXT-X-PART:DURATION=0.20000,URI="part43.0.mp4",INDEPENDENT=YES
//! #EXT-X-PRELOAD-HINT:TYPE=PART,URI="part43.1.mp4"
//! ```
//!
//! Rules followed (gohlslib/MediaMTX do the same):
//! - `EXT-X-PART` lines only for the last [`PART_SEGMENTS`] complete
//!   segments and the segment in progress (the spec asks to drop them
//!   beyond three target durations; players need only the live edge);
//! - always one `EXT-X-PRELOAD-HINT` for the next part: without it hls.js
//!   keeps reloading in a tight loop;
//! - `PART-HOLD-BACK` is three part targets (the spec's SHOULD; 2× is
//!   its MUST);
//! - a new run starts with `EXT-X-DISCONTINUITY` and its own `EXT-X-MAP`;
//!   `EXT-X-DISCONTINUITY-SEQUENCE` counts the discontinuities that have
//!   left the playlist.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use super::store::{OpenSegment, Part, Segment};
use super::{HlsConfig, Resource};

/// Complete segments whose parts are listed, besides the one in progress.
const PART_SEGMENTS: usize = 2;

/// `EXT-X-VERSION`: 9 is what gohlslib and MediaMTX send with LL-HLS; the
/// tags used need at most 6 (`EXT-X-MAP` without I-frames-only).
const VERSION: u32 = 9;

/// The playlist text, or `None` while no segment is complete.
pub(crate) fn render(
    config: &HlsConfig,
    target_secs: u32,
    segments: &VecDeque<Segment>,
    open: &OpenSegment,
) -> Option<String> {
    let listed = segments.len().saturating_sub(config.window_segments.max(1));
    let first = segments.get(listed)?;
    let part_target_ms = ceil_millis(config.part_target);
    let mut out = String::with_capacity(2048);
    // `write!` to a String cannot fail.
    let _ = write!(
        out,
        "#EXTM3U\n\
         #EXT-X-VERSION:{VERSION}\n\
         #EXT-X-TARGETDURATION:{target}\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={hold}\n\
         #EXT-X-PART-INF:PART-TARGET={part}\n\
         #EXT-X-MEDIA-SEQUENCE:{msn}\n",
        target = target_secs,
        hold = millis(part_target_ms * 3),
        part = millis(part_target_ms),
        msn = first.msn,
    );
    if first.discontinuity > 0 {
        let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", first.discontinuity);
    }
    let _ = writeln!(
        out,
        "#EXT-X-MAP:URI=\"{}\"",
        Resource::Init { run: first.run }.uri()
    );

    let with_parts = segments.len().saturating_sub(PART_SEGMENTS);
    let mut previous = first.discontinuity;
    for (i, segment) in segments.iter().enumerate().skip(listed) {
        if segment.discontinuity != previous {
            discontinuity(&mut out, segment.run);
            previous = segment.discontinuity;
        }
        let _ = writeln!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            rfc3339_millis(segment.wall_clock)
        );
        if i >= with_parts {
            parts(&mut out, segment.msn, &segment.parts);
        }
        let _ = write!(
            out,
            "#EXTINF:{},\n{}\n",
            seconds(segment.duration_ns),
            Resource::Segment { msn: segment.msn }.uri()
        );
    }
    if !open.parts.is_empty() {
        if open.discontinuity != previous {
            discontinuity(&mut out, open.run);
        }
        let _ = writeln!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            rfc3339_millis(open.wall_clock)
        );
        parts(&mut out, open.msn, &open.parts);
    }
    let hint = Resource::Part {
        msn: open.msn,
        index: u64::try_from(open.parts.len()).unwrap_or(u64::MAX),
    };
    let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"", hint.uri());
    Some(out)
}

/// A new run: players reset their decoders and fetch its init segment.
fn discontinuity(out: &mut String, run: u64) {
    let _ = write!(
        out,
        "#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"{}\"\n",
        Resource::Init { run }.uri()
    );
}

fn parts(out: &mut String, msn: u64, parts: &[Part]) {
    for (index, part) in (0..).zip(parts) {
        let _ = writeln!(
            out,
            "#EXT-X-PART:DURATION={},URI=\"{}\"{}",
            seconds(part.duration_ns),
            Resource::Part { msn, index }.uri(),
            if part.independent {
                ",INDEPENDENT=YES"
            } else {
                ""
            }
        );
    }
}

/// Seconds with five decimals (10 µs: finer than a 90 kHz tick needs).
fn seconds(ns: u64) -> String {
    format!(
        "{}.{:05}",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 10_000
    )
}

fn ceil_millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Milliseconds as seconds with three decimals.
fn millis(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `2026-11-20T10:00:00.000Z`: RFC 3339 in UTC with milliseconds, as
/// `EXT-X-PROGRAM-DATE-TIME` wants (ISO 8601 with a time zone). Times
/// before 1970 print as 1970-01-01.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let at = |secs: u64, ms: u64| {
            rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_210_096, 789), "2024-02-29T12:34:56.789Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(seconds(1_966_666_666), "1.96666");
        assert_eq!(seconds(200_000_000), "0.20000");
        assert_eq!(millis(600), "0.600");
        assert_eq!(
            millis(ceil_millis(Duration::from_nanos(333_333_333))),
            "0.334"
        );
    }
}
