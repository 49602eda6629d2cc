//! How long a source waits before reconnecting.
//!
//! Quick first retries catch a camera's brief hiccup; doubling up to a cap
//! keeps an offline camera from being hammered; jitter keeps the cameras
//! behind one failed switch from all reconnecting in the same instant.

use std::time::Duration;

const INITIAL: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(30);
/// Each delay is within this fraction of its nominal value.
const JITTER: f64 = 0.2;
/// A connection that lasted this long was healthy: the next failure is
/// a new outage, retried quickly again.
const HEALTHY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: INITIAL }
    }
}

impl Backoff {
    /// The wait before the next attempt, nominal times `1 + 0.2 * jitter`
    /// (`jitter` in -1..=1); doubles the following one up to the cap.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(MAX);
        let jitter = if jitter.is_finite() {
            jitter.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        nominal.mul_f64(1.0 + JITTER * jitter)
    }

    /// [`Backoff::next_delay`] with random jitter.
    pub fn next_delay_jittered(&mut self) -> Duration {
        self.next_delay(rand::random_range(-1.0..=1.0))
    }

    /// A connection ended after carrying media for `lasted`; returns
    /// whether it was healthy (and the backoff starts over).
    pub fn connection_lasted(&mut self, lasted: Duration) -> bool {
        let healthy = lasted > HEALTHY;
        if healthy {
            self.reset();
        }
        healthy
    }

    pub fn reset(&mut self) {
        self.next = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_half_a_second_to_the_cap() {
        let mut backoff = Backoff::default();
        let delays: Vec<u128> = (0..10)
            .map(|_| backoff.next_delay(0.0).as_millis())
            .collect();
        assert_eq!(
            delays,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(600));
        assert_eq!(backoff.next_delay(-1.0), Duration::from_millis(800));
        // Out of range or nonsense jitter is bounded too.
        assert_eq!(backoff.next_delay(7.0), Duration::from_millis(2400));
        assert_eq!(backoff.next_delay(f64::NAN), Duration::from_millis(4000));
        while backoff.next_delay(0.0) < MAX {}
        for _ in 0..100 {
            let delay = backoff.next_delay_jittered();
            assert!(delay >= MAX.mul_f64(0.8) - Duration::from_millis(1));
            assert!(delay <= MAX.mul_f64(1.2) + Duration::from_millis(1));
        }
    }

    #[test]
    fn a_healthy_connection_resets_it() {
        let mut backoff = Backoff::default();
        for _ in 0..5 {
            backoff.next_delay(0.0);
        }
        assert!(!backoff.connection_lasted(Duration::from_secs(10)));
        assert_eq!(backoff.next_delay(0.0), Duration::from_secs(16));
        assert!(backoff.connection_lasted(Duration::from_secs(31)));
        assert_eq!(backoff.next_delay(0.0), INITIAL);
    }
}
