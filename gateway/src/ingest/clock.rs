//! One source's media clock, made safe to pass on.
//!
//! RTMP timestamps and a camera's RTP clock are the source's own: they
//! can reset (encoder restart, camera reboot behind the same connection) or
//! jump (NTP correction in a camera). Passed through, a jump makes viewers'
//! jitter buffers stall and recordings hold an hour of nothing. The clock
//! here follows the source's time, except that a jump continues the
//! timeline right after the last frame instead; every track of the source
//! shares the one correction, so audio and video stay aligned.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::info;

/// A step back further than this is a reset, not B-frame reordering or
/// audio/video interleaving.
const MAX_BACKWARD_NS: i64 = 1_000_000_000;
/// A step forward longer than this is a jump: sources send a frame at
/// least every few seconds (and are ended after a longer silence).
const MAX_FORWARD_NS: i64 = 10_000_000_000;
/// Where the timeline continues after a jump: one frame after the last.
const JUMP_GAP_NS: i64 = 20_000_000;
/// Seconds from 1900 (NTP) to 1970 (Unix).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

#[derive(Debug)]
pub struct SourceClock {
    /// Added to every source time.
    offset_ns: i64,
    /// Latest corrected decode time.
    last_ns: Option<i64>,
    /// Wall clock (NTP, 32.32) at corrected time zero.
    ntp_origin: u64,
    /// Source time of the first frame: the timeline starts at zero there.
    first_ns: Option<i64>,
}

impl SourceClock {
    pub fn new(now: SystemTime) -> Self {
        let since_unix = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since_unix.as_secs() + NTP_UNIX_OFFSET_SECS;
        let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
        Self {
            offset_ns: 0,
            last_ns: None,
            ntp_origin: (secs << 32) | frac,
            first_ns: None,
        }
    }

    /// Corrects a frame's source decode time (`dts_ns`) and returns the
    /// correction to add to its decode and presentation times.
    pub fn correct(&mut self, dts_ns: i64, stream: &str) -> i64 {
        let first = *self.first_ns.get_or_insert(dts_ns);
        let corrected = dts_ns - first + self.offset_ns;
        if let Some(last) = self.last_ns {
            let step = corrected - last;
            if !(-MAX_BACKWARD_NS..=MAX_FORWARD_NS).contains(&step) {
                // Expected after a camera reconnects (its clock starts
                // over), so not a warning.
                info!(
                    stream,
                    jump_ms = step / 1_000_000,
                    "the source's clock jumped; the timeline continues"
                );
                self.offset_ns += last + JUMP_GAP_NS - corrected;
            }
        }
        let corrected = dts_ns - first + self.offset_ns;
        self.last_ns = Some(self.last_ns.map_or(corrected, |l| l.max(corrected)));
        self.offset_ns - first
    }

    /// What [`SourceClock::correct`] last returned: for times that are not
    /// frames (a source's sender reports).
    pub fn correction(&self) -> i64 {
        self.offset_ns - self.first_ns.unwrap_or(0)
    }

    /// The wall clock (NTP 32.32) at a corrected time: what sender reports
    /// carry, so every track of the source lands on one timeline.
    pub fn ntp_at(&self, time_ns: i64) -> u64 {
        let secs = time_ns.div_euclid(1_000_000_000);
        let nanos = time_ns.rem_euclid(1_000_000_000) as u64;
        let delta = (secs << 32).wrapping_add(((nanos << 32) / 1_000_000_000) as i64);
        self.ntp_origin.wrapping_add_signed(delta)
    }
}

/// A time in ticks of `rate` per second.
pub fn ticks(time_ns: i64, rate: u32) -> i64 {
    (i128::from(time_ns) * i128::from(rate) / 1_000_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_starts_at_zero_and_follows_the_source() {
        let mut clock = SourceClock::new(UNIX_EPOCH);
        let base = 5_000_000_000;
        assert_eq!(base + clock.correct(base, "s"), 0);
        assert_eq!(
            base + 40_000_000 + clock.correct(base + 40_000_000, "s"),
            40_000_000
        );
        // B-frame reordering and A/V interleaving are not jumps.
        assert_eq!(
            base + 20_000_000 + clock.correct(base + 20_000_000, "s"),
            20_000_000
        );
    }

    #[test]
    fn jumps_and_resets_continue_after_the_last_frame() {
        let mut clock = SourceClock::new(UNIX_EPOCH);
        clock.correct(0, "s");
        clock.correct(2_000_000_000, "s");
        // Camera reboot: back to zero.
        let t = clock.correct(0, "s");
        assert_eq!(t, 2_020_000_000);
        // NTP correction: an hour ahead.
        let hour = 3_600_000_000_000;
        let t = hour + clock.correct(hour, "s");
        assert_eq!(t, 2_040_000_000);
    }

    #[test]
    fn ntp_times_advance_with_the_timeline() {
        let clock = SourceClock::new(UNIX_EPOCH + Duration::from_secs(10));
        let origin = clock.ntp_at(0);
        assert_eq!(origin >> 32, 10 + NTP_UNIX_OFFSET_SECS);
        assert_eq!(clock.ntp_at(1_500_000_000) - origin, 3 << 31);
        assert_eq!(ticks(1_000_000_000, 90_000), 90_000);
    }
}
