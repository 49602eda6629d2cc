//! Extending RTP's wrapping 16-bit sequence numbers and 32-bit timestamps
//! to 64 bits, so order and durations survive wrap-around (a 90 kHz clock
//! wraps every 13 hours, a sequence number every few minutes).

/// Extends 16-bit sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct SeqUnwrapper {
    last: Option<u64>,
}

impl SeqUnwrapper {
    /// Starts far from zero so early reordered packets stay positive.
    const START: u64 = 1 << 32;

    pub fn unwrap(&mut self, seq: u16) -> u64 {
        let Some(last) = self.last else {
            let value = Self::START + u64::from(seq);
            self.last = Some(value);
            return value;
        };
        let delta = seq.wrapping_sub(last as u16) as i16;
        let value = last.wrapping_add_signed(i64::from(delta));
        if value > last {
            self.last = Some(value);
        }
        value
    }
}

/// Extends 32-bit RTP timestamps.
#[derive(Debug, Default, Clone)]
pub struct TimestampUnwrapper {
    last: Option<i64>,
}

impl TimestampUnwrapper {
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let Some(last) = self.last else {
            let value = i64::from(ts);
            self.last = Some(value);
            return value;
        };
        let delta = ts.wrapping_sub(last as u32) as i32;
        let value = last + i64::from(delta);
        if value > last {
            self.last = Some(value);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_wraps_forward_and_reorders_back() {
        let mut u = SeqUnwrapper::default();
        let a = u.unwrap(65_534);
        let b = u.unwrap(65_535);
        let c = u.unwrap(0);
        let late = u.unwrap(65_533);
        assert_eq!((b - a, c - b), (1, 1));
        assert_eq!(a - late, 1);
    }

    #[test]
    fn timestamp_wraps() {
        let mut u = TimestampUnwrapper::default();
        let a = u.unwrap(u32::MAX - 1499);
        let b = u.unwrap(1500);
        assert_eq!(b - a, 3000);
        let earlier = u.unwrap(u32::MAX - 2999);
        assert_eq!(a - earlier, 1500);
    }
}
