//! Login rate limiting per client address.
//!
//! A few mistakes are free; after that each further failure locks the
//! address out for twice as long as the last (up to 15 minutes). A
//! success clears the address's record.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before the first lockout.
const FREE_FAILURES: u32 = 5;
const FIRST_LOCKOUT: Duration = Duration::from_secs(30);
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// A record untouched this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Addresses tracked at most (a botnet must not grow this without bound).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

#[derive(Default)]
pub struct LoginLimiter {
    map: Mutex<HashMap<IpAddr, Record>>,
}

impl LoginLimiter {
    /// `Err(wait)` while `client` is locked out.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match map.get(&client).and_then(|r| r.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, client: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_TRACKED {
            map.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
        }
        if map.len() >= MAX_TRACKED {
            return;
        }
        let record = map.entry(client).or_insert(Record {
            failures: 0,
            locked_until: None,
            last: now,
        });
        if now.duration_since(record.last) > FORGET_AFTER {
            record.failures = 0;
        }
        record.failures += 1;
        record.last = now;
        if record.failures > FREE_FAILURES {
            let doublings = (record.failures - FREE_FAILURES - 1).min(10);
            let lockout = (FIRST_LOCKOUT * 2u32.pow(doublings)).min(MAX_LOCKOUT);
            record.locked_until = Some(now + lockout);
        }
    }

    pub fn succeeded(&self, client: IpAddr) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_repeated_failures() {
        let limiter = LoginLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..FREE_FAILURES {
            assert!(limiter.check(a).is_ok());
            limiter.failed(a);
        }
        assert!(limiter.check(a).is_ok());
        limiter.failed(a);
        let wait = limiter.check(a).expect_err("locked");
        assert!(wait <= FIRST_LOCKOUT && wait > FIRST_LOCKOUT / 2);
        assert!(limiter.check(b).is_ok(), "other addresses unaffected");
        limiter.succeeded(a);
        assert!(limiter.check(a).is_ok());
    }
}
