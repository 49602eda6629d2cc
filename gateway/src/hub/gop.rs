//! The last group of pictures of one video layer.
//!
//! OBS ignores PLI, so a viewer who joins mid-GOP would see nothing until the
//! publisher's next keyframe (seconds). Instead the hub keeps every packet
//! since the last keyframe and replays them to a new viewer before it goes
//! live: the decoder gets a keyframe first and catches up in one burst.

use std::collections::VecDeque;

use recorder::codec::Codec;
use rtc::rtp::Packet;

/// Bounds that keep a pathological stream (no keyframes, huge GOPs) from
/// growing the cache without limit; past them the cache empties and waits
/// for the next keyframe.
const MAX_PACKETS: usize = 6000;
const MAX_BYTES: usize = 8 * 1024 * 1024;

#[derive(Default)]
pub struct GopCache {
    packets: VecDeque<Packet>,
    bytes: usize,
    /// Index in `packets` where the frame now being received began, so a
    /// keyframe found in a later packet of the same frame (SPS first, IDR in
    /// the next packet) still starts the GOP at the frame's first packet.
    frame_start: usize,
    frame_timestamp: Option<u32>,
    has_keyframe: bool,
    /// Times the bounds were hit.
    pub overflows: u64,
}

impl GopCache {
    /// Records a packet; returns whether it starts a keyframe.
    pub fn push(&mut self, codec: Codec, packet: &Packet) -> bool {
        let ts = packet.header.timestamp;
        if self.frame_timestamp != Some(ts) {
            self.frame_timestamp = Some(ts);
            if !self.has_keyframe {
                // Before the first keyframe only the current frame is worth
                // keeping: it may turn out to be the keyframe's.
                self.packets.clear();
                self.bytes = 0;
            }
            self.frame_start = self.packets.len();
        }
        let keyframe = codec.starts_keyframe(&packet.payload);
        if keyframe && self.frame_start > 0 {
            // A new GOP: drop everything before this frame.
            for old in self.packets.drain(..self.frame_start) {
                self.bytes -= old.payload.len();
            }
            self.frame_start = 0;
        }
        if keyframe {
            self.has_keyframe = true;
        }
        if self.packets.len() >= MAX_PACKETS || self.bytes + packet.payload.len() > MAX_BYTES {
            self.clear();
            self.overflows += 1;
            return keyframe;
        }
        self.bytes += packet.payload.len();
        self.packets.push_back(packet.clone());
        keyframe
    }

    /// Packets from the last keyframe on, oldest first; empty until a
    /// keyframe has been seen.
    pub fn packets(&self) -> impl Iterator<Item = &Packet> {
        self.packets.iter()
    }

    pub fn has_keyframe(&self) -> bool {
        self.has_keyframe && !self.packets.is_empty()
    }

    pub fn clear(&mut self) {
        self.packets.clear();
        self.bytes = 0;
        self.frame_start = 0;
        self.frame_timestamp = None;
        self.has_keyframe = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pkt(seq: u16, ts: u32, payload: &'static [u8]) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.payload = Bytes::from_static(payload);
        p
    }

    #[test]
    fn keeps_from_frame_start_of_last_keyframe() {
        let mut gop = GopCache::default();
        assert!(!gop.push(Codec::H264, &pkt(1, 10, &[0x41])));
        assert!(!gop.has_keyframe(), "nothing before the first keyframe");
        // A frame whose first packet is a PPS, then the IDR.
        gop.push(Codec::H264, &pkt(2, 20, &[0x68]));
        assert!(gop.push(Codec::H264, &pkt(3, 20, &[0x65])));
        gop.push(Codec::H264, &pkt(4, 30, &[0x41]));
        let seqs: Vec<u16> = gop.packets().map(|p| p.header.sequence_number).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        // Next GOP replaces it.
        gop.push(Codec::H264, &pkt(5, 40, &[0x67]));
        gop.push(Codec::H264, &pkt(6, 40, &[0x65]));
        let seqs: Vec<u16> = gop.packets().map(|p| p.header.sequence_number).collect();
        assert_eq!(seqs, vec![5, 6]);
    }
}
