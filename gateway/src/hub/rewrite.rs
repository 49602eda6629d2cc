//! Per-viewer RTP header rewriting.
//!
//! Each viewer leg has its own SSRC and payload-type numbers (the answer
//! keeps the viewer's offered numbers), and its sequence numbers and
//! timestamps must stay continuous when the source changes under it: GOP
//! replay, a simulcast layer switch, or a publisher reconnect. The rewriter
//! keeps one offset per source and re-anchors it whenever the source SSRC
//! changes, so the viewer sees one unbroken stream.

use std::time::Instant;

use rtc::rtp::Header;

pub struct Rewriter {
    out_ssrc: u32,
    out_pt: u8,
    clock_rate: u32,
    source: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    last: Option<Sent>,
}

#[derive(Clone, Copy)]
struct Sent {
    seq: u16,
    ts: u32,
    at: Instant,
}

impl Rewriter {
    pub fn new(out_ssrc: u32, out_pt: u8, clock_rate: u32) -> Self {
        Self {
            out_ssrc,
            out_pt,
            clock_rate,
            source: None,
            seq_offset: rand::random(),
            ts_offset: rand::random(),
            last: None,
        }
    }

    /// Rewrites `header` in place for this viewer.
    pub fn rewrite(&mut self, header: &mut Header, now: Instant) {
        if self.source != Some(header.ssrc) {
            self.anchor(header, now);
        }
        header.ssrc = self.out_ssrc;
        header.payload_type = self.out_pt;
        header.sequence_number = header.sequence_number.wrapping_add(self.seq_offset);
        header.timestamp = header.timestamp.wrapping_add(self.ts_offset);
        let newer = self
            .last
            .is_none_or(|l| seq_newer(header.sequence_number, l.seq));
        if newer {
            self.last = Some(Sent {
                seq: header.sequence_number,
                ts: header.timestamp,
                at: now,
            });
        }
    }

    fn anchor(&mut self, header: &Header, now: Instant) {
        self.source = Some(header.ssrc);
        let Some(last) = self.last else {
            return;
        };
        // Continue right after the last packet sent, and advance the clock
        // by the wall time elapsed so the receiver's jitter buffer sees a
        // plausible gap rather than a jump.
        let elapsed = now.saturating_duration_since(last.at);
        let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)) as u64;
        let next_ts = last.ts.wrapping_add((ticks.max(1) & 0xffff_ffff) as u32);
        self.seq_offset = last
            .seq
            .wrapping_add(1)
            .wrapping_sub(header.sequence_number);
        self.ts_offset = next_ts.wrapping_sub(header.timestamp);
    }
}

/// RFC 3550 serial-number comparison.
fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn header(ssrc: u32, seq: u16, ts: u32) -> Header {
        Header {
            ssrc,
            sequence_number: seq,
            timestamp: ts,
            payload_type: 96,
            ..Header::default()
        }
    }

    #[test]
    fn continuous_across_source_change() {
        let t0 = Instant::now();
        let mut rw = Rewriter::new(42, 102, 90_000);
        let mut h = header(1, 100, 1000);
        rw.rewrite(&mut h, t0);
        assert_eq!((h.ssrc, h.payload_type), (42, 102));
        let first = h.sequence_number;
        let mut h2 = header(1, 101, 4000);
        rw.rewrite(&mut h2, t0);
        assert_eq!(h2.sequence_number, first.wrapping_add(1));
        // New source with unrelated numbering, 100 ms later.
        let mut h3 = header(2, 60_000, 7);
        rw.rewrite(&mut h3, t0 + Duration::from_millis(100));
        assert_eq!(h3.sequence_number, first.wrapping_add(2));
        assert_eq!(h3.timestamp.wrapping_sub(h2.timestamp), 9000);
        // Out-of-order packet from the new source keeps its relative place.
        let mut h4 = header(2, 59_999, 7);
        rw.rewrite(&mut h4, t0 + Duration::from_millis(101));
        assert_eq!(h4.sequence_number, first.wrapping_add(1));
    }
}
