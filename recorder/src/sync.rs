//! Putting a publisher's tracks on one timeline.
//!
//! Each track's RTP timestamps count from a random offset in their own
//! clock rate, so they say nothing about how audio lines up with video.
//! The publisher's RTCP sender reports do: each pairs an RTP timestamp with
//! the sender's NTP wallclock, the same clock for all of its tracks. Mapping
//! every frame through the latest report starts a recording A/V-aligned and
//! follows the sender's clock, so it does not drift over hours (janus-pp-rec
//! users know what happens otherwise). Without reports (some encoders send
//! none) the arrival time of a track's first packet anchors it instead.

use std::collections::BTreeMap;

/// NTP 32.32 fixed point → nanoseconds since the NTP epoch.
pub fn ntp_to_ns(ntp: u64) -> i64 {
    let secs = (ntp >> 32) as i64;
    let frac = ntp & 0xffff_ffff;
    secs * 1_000_000_000 + ((frac * 1_000_000_000) >> 32) as i64
}

/// One track's RTP clock and how it maps to wallclock time.
#[derive(Debug, Clone)]
pub struct TrackClock {
    clock_rate: u32,
    /// Latest sender report: (RTP time, NTP time in ns).
    report: Option<(u32, i64)>,
    /// First frame seen: (unwrapped RTP timestamp, arrival time in ns on
    /// the caller's monotonic clock).
    arrival: Option<(i64, i64)>,
}

impl TrackClock {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            report: None,
            arrival: None,
        }
    }

    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    pub fn on_sender_report(&mut self, rtp_time: u32, ntp_time: u64) {
        self.report = Some((rtp_time, ntp_to_ns(ntp_time)));
    }

    pub fn has_sender_report(&self) -> bool {
        self.report.is_some()
    }

    /// Remembers when the first frame arrived (later calls are ignored).
    pub fn note_arrival(&mut self, timestamp: i64, arrival_ns: i64) {
        if self.arrival.is_none() {
            self.arrival = Some((timestamp, arrival_ns));
        }
    }

    fn ticks_to_ns(&self, ticks: i64) -> i64 {
        ((i128::from(ticks) * 1_000_000_000) / i128::from(self.clock_rate)) as i64
    }

    /// The sender's wallclock (ns) at RTP timestamp `timestamp`, from the
    /// latest sender report. RTP time is compared modulo 2^32, which is
    /// right for frames within hours of the report (reports come every few
    /// seconds).
    pub fn sender_time_ns(&self, timestamp: i64) -> Option<i64> {
        let (rtp, ntp_ns) = self.report?;
        let delta = (timestamp as u32).wrapping_sub(rtp) as i32;
        Some(ntp_ns + self.ticks_to_ns(i64::from(delta)))
    }

    /// Arrival-anchored time (ns on the caller's clock) of `timestamp`.
    pub fn arrival_time_ns(&self, timestamp: i64) -> Option<i64> {
        let (first, arrived) = self.arrival?;
        Some(arrived + self.ticks_to_ns(timestamp - first))
    }
}

/// Merges the frames of several tracks into one time-ordered sequence, as
/// containers need them. A frame is released once every track that has
/// produced anything has reached its time, or once it is `max_hold_ns`
/// older than the newest frame (a track that went quiet must not stall
/// the others).
#[derive(Debug)]
pub struct Interleaver<T> {
    queue: BTreeMap<(i64, u64), (usize, T)>,
    latest: Vec<Option<i64>>,
    newest: Option<i64>,
    max_hold_ns: i64,
    counter: u64,
}

impl<T> Interleaver<T> {
    pub fn new(tracks: usize, max_hold_ns: i64) -> Self {
        Self {
            queue: BTreeMap::new(),
            latest: vec![None; tracks],
            newest: None,
            max_hold_ns,
            counter: 0,
        }
    }

    /// Adds `item` of `track` at `time_ns`.
    pub fn push(&mut self, track: usize, time_ns: i64, item: T) {
        if track >= self.latest.len() {
            self.latest.resize(track + 1, None);
        }
        let latest = &mut self.latest[track];
        *latest = Some(latest.map_or(time_ns, |l| l.max(time_ns)));
        self.newest = Some(self.newest.map_or(time_ns, |n| n.max(time_ns)));
        self.counter += 1;
        self.queue.insert((time_ns, self.counter), (track, item));
    }

    /// The next frame that may be written, if any.
    pub fn pop(&mut self) -> Option<(usize, i64, T)> {
        let (&(time, _), _) = self.queue.iter().next()?;
        let all_reached = self.latest.iter().flatten().all(|&l| l >= time);
        let too_old = self
            .newest
            .is_some_and(|n| n.saturating_sub(time) >= self.max_hold_ns);
        if !(all_reached || too_old) {
            return None;
        }
        let ((time, _), (track, item)) = self.queue.pop_first()?;
        Some((track, time, item))
    }

    /// Everything still queued, in time order (at the end of a recording).
    pub fn drain(&mut self) -> Vec<(usize, i64, T)> {
        std::mem::take(&mut self.queue)
            .into_iter()
            .map(|((time, _), (track, item))| (track, time, item))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_conversion() {
        assert_eq!(ntp_to_ns(5 << 32), 5_000_000_000);
        assert_eq!(ntp_to_ns((5 << 32) | 0x8000_0000), 5_500_000_000);
    }

    #[test]
    fn sender_reports_align_tracks_with_different_offsets() {
        // Same wallclock instant (NTP 100 s), unrelated RTP offsets.
        let mut video = TrackClock::new(90_000);
        let mut audio = TrackClock::new(48_000);
        video.on_sender_report(1_000_000, 100 << 32);
        audio.on_sender_report(4_000_000_000, 100 << 32);
        // One second later on each clock.
        let v = video.sender_time_ns(1_090_000).unwrap();
        let a = audio.sender_time_ns(i64::from(4_000_048_000u32)).unwrap();
        assert_eq!(v, a);
        assert_eq!(v, 101_000_000_000);
    }

    #[test]
    fn sender_time_survives_rtp_wrap() {
        let mut clock = TrackClock::new(90_000);
        clock.on_sender_report(u32::MAX - 44_999, 10 << 32);
        // The unwrapped timestamp has passed 2^32 by 45 000 ticks.
        let unwrapped = (1i64 << 32) + 45_000;
        assert_eq!(clock.sender_time_ns(unwrapped), Some(11_000_000_000));
    }

    #[test]
    fn arrival_anchor() {
        let mut clock = TrackClock::new(48_000);
        clock.note_arrival(480, 7_000);
        clock.note_arrival(960, 9_999_999);
        assert_eq!(clock.arrival_time_ns(480 + 48_000), Some(1_000_007_000));
    }

    #[test]
    fn interleaves_in_time_order_and_waits_for_slow_track() {
        let mut il = Interleaver::new(2, 1_000);
        il.push(0, 10, "v10");
        il.push(0, 40, "v40");
        // Track 1 has produced nothing yet: track 0 alone decides.
        assert_eq!(il.pop().map(|x| x.2), Some("v10"));
        il.push(1, 20, "a20");
        assert_eq!(il.pop().map(|x| x.2), Some("a20"));
        // v40 waits until audio reaches 40.
        assert!(il.pop().is_none());
        il.push(1, 45, "a45");
        assert_eq!(il.pop().map(|x| x.2), Some("v40"));
        assert!(il.pop().is_none());
        // A quiet track does not stall the other beyond max_hold.
        il.push(0, 2_000, "v2000");
        assert_eq!(il.pop().map(|x| x.2), Some("a45"));
        assert!(il.pop().is_none());
        il.push(0, 3_100, "v3100");
        assert_eq!(il.pop().map(|x| x.2), Some("v2000"));
        assert_eq!(il.drain().len(), 1);
    }
}
