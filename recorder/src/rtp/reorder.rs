//! Puts packets back in sequence order and says plainly when one is lost.
//!
//! A missing packet is waited for (it may be reordered, or on its way as a
//! NACK retransmission) for at most `max_wait`, or until `max_packets` wait
//! behind it; then a [`Released::Gap`] is emitted so the assembler can drop
//! the damaged frame instead of writing it broken.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rtc::rtp::Packet;

use super::unwrap::SeqUnwrapper;

/// What leaves the buffer, in order.
#[derive(Debug)]
pub enum Released {
    Packet(Packet),
    /// This many packets will never come.
    Gap {
        missing: u64,
    },
}

#[derive(Debug)]
pub struct ReorderBuffer {
    unwrap: SeqUnwrapper,
    next: Option<u64>,
    pending: BTreeMap<u64, (Instant, Packet)>,
    max_wait: Duration,
    max_packets: usize,
    /// Packets declared lost.
    pub lost: u64,
    /// Duplicates and packets that arrived after their gap was declared.
    pub discarded: u64,
}

impl ReorderBuffer {
    pub fn new(max_wait: Duration, max_packets: usize) -> Self {
        Self {
            unwrap: SeqUnwrapper::default(),
            next: None,
            pending: BTreeMap::new(),
            max_wait,
            max_packets: max_packets.max(1),
            lost: 0,
            discarded: 0,
        }
    }

    pub fn push(&mut self, packet: Packet, now: Instant) {
        let seq = self.unwrap.unwrap(packet.header.sequence_number);
        if self.next.is_some_and(|next| seq < next) || self.pending.contains_key(&seq) {
            self.discarded += 1;
            return;
        }
        if self.next.is_none() {
            self.next = Some(seq);
        }
        self.pending.insert(seq, (now, packet));
    }

    /// The next packet or gap, if one is due.
    pub fn pop(&mut self, now: Instant) -> Option<Released> {
        let next = self.next?;
        if let Some((_, packet)) = self.pending.remove(&next) {
            self.next = Some(next + 1);
            return Some(Released::Packet(packet));
        }
        let (&first, (arrived, _)) = self.pending.iter().next()?;
        let waited_long = now.saturating_duration_since(*arrived) >= self.max_wait;
        if waited_long || self.pending.len() >= self.max_packets {
            let missing = first - next;
            self.lost += missing;
            self.next = Some(first);
            return Some(Released::Gap { missing });
        }
        None
    }

    /// When `pop` may next have something, if packets are waiting.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .next()
            .map(|(arrived, _)| *arrived + self.max_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p
    }

    fn drain(buffer: &mut ReorderBuffer, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| buffer.pop(now))
            .map(|r| match r {
                Released::Packet(p) => p.header.sequence_number.to_string(),
                Released::Gap { missing } => format!("gap{missing}"),
            })
            .collect()
    }

    #[test]
    fn reorders_then_declares_gap_after_wait() {
        let t0 = Instant::now();
        let mut buffer = ReorderBuffer::new(Duration::from_millis(100), 100);
        buffer.push(packet(65_535), t0);
        buffer.push(packet(1), t0);
        buffer.push(packet(0), t0);
        assert_eq!(drain(&mut buffer, t0), ["65535", "0", "1"]);
        buffer.push(packet(3), t0);
        assert!(drain(&mut buffer, t0).is_empty(), "waits for 2");
        let late = t0 + Duration::from_millis(100);
        assert_eq!(drain(&mut buffer, late), ["gap1", "3"]);
        buffer.push(packet(2), late);
        assert_eq!(buffer.discarded, 1, "2 came after its gap");
        assert_eq!(buffer.lost, 1);
    }

    #[test]
    fn declares_gap_when_too_many_wait() {
        let t0 = Instant::now();
        let mut buffer = ReorderBuffer::new(Duration::from_secs(10), 3);
        buffer.push(packet(10), t0);
        assert_eq!(drain(&mut buffer, t0), ["10"]);
        for seq in 13..16 {
            buffer.push(packet(seq), t0);
        }
        assert_eq!(drain(&mut buffer, t0), ["gap2", "13", "14", "15"]);
    }
}
