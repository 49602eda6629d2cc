//! One frame per RTP timestamp, depacketized, and never broken.
//!
//! Video packets of one frame share a timestamp and the last carries the
//! marker bit. A frame that lost a packet is dropped, and so is everything
//! after it until the next keyframe: a decoder fed a damaged reference shows
//! corrupt pictures until then anyway, and a recording must decode cleanly.
//! Drops are counted so the caller can log them.
//!
//! Audio packets are frames on their own (Opus), or carry several (AAC,
//! RFC 3640): no loss spreads past the packet it hit.

use bytes::{Bytes, BytesMut};
use rtc::rtp::Packet;
use rtc::rtp::codec::av1::Av1Depacketizer;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::codec::opus::OpusPacket;
use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::codec::vp9::Vp9Packet;
use rtc::rtp::packetizer::Depacketizer;

use super::aac;
use super::reorder::Released;
use super::unwrap::TimestampUnwrapper;
use crate::codec::{Codec, MediaKind};

/// A complete, decodable frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub codec: Codec,
    /// RTP timestamp, unwrapped; in the track's clock rate.
    pub timestamp: i64,
    /// Video: the frame decodes on its own. Audio: always set, every
    /// audio frame decodes on its own (a sync sample in MP4, a key block
    /// in Matroska).
    pub keyframe: bool,
    /// H264/H265: NAL units with 4-byte lengths (AVC/HEVC sample format,
    /// parameter sets in-band); VP8/VP9: the frame; AV1: OBUs with size
    /// fields; Opus: one packet; AAC: one raw access unit (no ADTS
    /// header).
    pub data: Bytes,
    /// How many ticks after its decode time the frame is presented
    /// (`timestamp` is the presentation time): the container's composition
    /// offset. 0 unless the video reorders frames (H264/H265 B-frames); set
    /// by [`super::DecodeTimes`], since RTP carries presentation times only.
    pub composition_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("recording {0} is not supported yet")]
    Unsupported(Codec),
}

/// A frame being collected.
struct Partial {
    timestamp: u32,
    payloads: Vec<Bytes>,
    keyframe: bool,
    broken: bool,
}

pub struct FrameAssembler {
    codec: Codec,
    timestamps: TimestampUnwrapper,
    current: Option<Partial>,
    /// After a loss, frames are dropped until a keyframe.
    need_keyframe: bool,
    /// Frames dropped because of loss (damaged, or waiting for a keyframe).
    pub dropped_frames: u64,
    /// Frames whose payloads the depacketizer rejected; for AAC, packets
    /// (a fragmented access unit counts once per fragment).
    pub malformed_frames: u64,
}

impl FrameAssembler {
    pub fn new(codec: Codec) -> Result<Self, AssembleError> {
        if matches!(codec, Codec::G711u | Codec::G711a) {
            return Err(AssembleError::Unsupported(codec));
        }
        Ok(Self {
            codec,
            timestamps: TimestampUnwrapper::default(),
            current: None,
            need_keyframe: codec.kind() == MediaKind::Video,
            dropped_frames: 0,
            malformed_frames: 0,
        })
    }

    /// Feeds what the reorder buffer released; returns the frames that
    /// completed (video: at most two, the previous one and a one-packet
    /// frame; AAC: the packet's access units).
    pub fn push(&mut self, released: Released) -> Vec<Frame> {
        let mut out = Vec::new();
        match released {
            Released::Gap { .. } => {
                if let Some(partial) = self.current.as_mut() {
                    partial.broken = true;
                }
                if self.codec.kind() == MediaKind::Video {
                    self.need_keyframe = true;
                }
            }
            Released::Packet(packet) => self.push_packet(packet, &mut out),
        }
        out
    }

    fn push_packet(&mut self, packet: Packet, out: &mut Vec<Frame>) {
        if self.codec == Codec::Aac {
            self.push_aac(&packet, out);
            return;
        }
        if self.codec.kind() == MediaKind::Audio {
            // Every audio packet is a frame of its own.
            let timestamp = packet.header.timestamp;
            self.current = Some(Partial {
                timestamp,
                payloads: vec![packet.payload],
                keyframe: true,
                broken: false,
            });
            self.finish(out);
            return;
        }
        let timestamp = packet.header.timestamp;
        if self
            .current
            .as_ref()
            .is_some_and(|p| p.timestamp != timestamp)
        {
            // A new frame began without the last one's marker: the marker
            // packet was lost inside what looked like a contiguous run.
            if let Some(partial) = self.current.as_mut() {
                partial.broken = true;
            }
            self.finish(out);
        }
        let keyframe = self.codec.starts_keyframe(&packet.payload);
        let partial = self.current.get_or_insert_with(|| Partial {
            timestamp,
            payloads: Vec::new(),
            keyframe: false,
            broken: false,
        });
        partial.keyframe |= keyframe;
        partial.payloads.push(packet.payload);
        if packet.header.marker {
            self.finish(out);
        }
    }

    /// RFC 3640 AAC-hbr: each access unit of the packet is a frame, the
    /// first at the packet's timestamp and each next one [`aac::AU_SAMPLES`]
    /// later (the RTP clock is the sampling rate). A packet that is not a
    /// whole set of units, a fragment of a large unit included, is dropped
    /// as malformed: senders fragment only units larger than a packet, and
    /// AAC-LC units are a few hundred bytes at usual bitrates (768 per
    /// channel at most).
    fn push_aac(&mut self, packet: &Packet, out: &mut Vec<Frame>) {
        let Some(units) = aac::access_units(&packet.payload) else {
            self.malformed_frames += 1;
            return;
        };
        let mut timestamp = self.timestamps.unwrap(packet.header.timestamp);
        for data in units {
            out.push(Frame {
                codec: Codec::Aac,
                timestamp,
                keyframe: true,
                data,
                composition_offset: 0,
            });
            timestamp += aac::AU_SAMPLES;
        }
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        let Some(partial) = self.current.take() else {
            return;
        };
        if partial.broken {
            self.dropped_frames += 1;
            if self.codec.kind() == MediaKind::Video {
                self.need_keyframe = true;
            }
            return;
        }
        if self.need_keyframe && !partial.keyframe {
            self.dropped_frames += 1;
            return;
        }
        match depacketize(self.codec, &partial.payloads) {
            Some(data) if !data.is_empty() => {
                self.need_keyframe = false;
                out.push(Frame {
                    codec: self.codec,
                    timestamp: self.timestamps.unwrap(partial.timestamp),
                    keyframe: partial.keyframe,
                    data,
                    composition_offset: 0,
                });
            }
            _ => {
                self.malformed_frames += 1;
                if self.codec.kind() == MediaKind::Video {
                    self.need_keyframe = true;
                }
            }
        }
    }
}

/// Runs one frame's payloads through a fresh depacketizer, so no state
/// leaks from a damaged frame into the next.
fn depacketize(codec: Codec, payloads: &[Bytes]) -> Option<Bytes> {
    fn run(mut d: impl Depacketizer, payloads: &[Bytes]) -> Option<Bytes> {
        let mut data = BytesMut::new();
        for payload in payloads {
            data.extend_from_slice(&d.depacketize(payload).ok()?);
        }
        Some(data.freeze())
    }
    match codec {
        Codec::H264 => {
            if !payloads.iter().all(|p| stap_a_is_whole(p)) {
                return None;
            }
            let mut d = H264Packet::default();
            d.is_avc = true;
            run(d, payloads)
        }
        Codec::Vp8 => run(Vp8Packet::default(), payloads),
        // A fresh depacketizer per packet: `rtc`'s Vp9Packet keeps adding
        // each packet's reference diffs to one list and never clears it, so
        // an inter frame of three or more packets fails as "too many
        // P-diffs" when one instance sees them all.
        Codec::Vp9 => {
            let mut data = BytesMut::new();
            for payload in payloads {
                data.extend_from_slice(&Vp9Packet::default().depacketize(payload).ok()?);
            }
            Some(data.freeze())
        }
        Codec::Av1 => run(Av1Depacketizer::new(), payloads),
        Codec::Opus => run(OpusPacket, payloads),
        Codec::H265 => depacketize_h265(payloads),
        // AAC never gets here: its packets split in `push_aac`.
        Codec::G711u | Codec::G711a | Codec::Aac => None,
    }
}

/// Whether an H264 payload that is a STAP-A (type 24) splits exactly into
/// its (u16 size, NAL unit) entries; other payloads pass. `rtc`'s
/// depacketizer indexes past the end of a STAP-A with one stray trailing
/// byte (rtc-rtp 0.21.1 panics there), so such payloads never reach it.
fn stap_a_is_whole(payload: &[u8]) -> bool {
    if payload.first().is_none_or(|b| b & 0x1f != 24) {
        return true;
    }
    let mut rest = &payload[1..];
    while !rest.is_empty() {
        let [hi, lo, ..] = *rest else {
            return false;
        };
        let size = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(next) = rest.get(2 + size..) else {
            return false;
        };
        rest = next;
    }
    true
}

/// RFC 7798 payloads of one access unit → NAL units with 4-byte lengths.
/// `rtc`'s `H265Packet` parses but does not reassemble, so this is ours:
/// single NAL unit packets, aggregation packets (48) and fragmentation
/// units (49), without DONL fields (WebRTC never negotiates
/// `sprop-max-don-diff`). PACI packets (50) are refused.
fn depacketize_h265(payloads: &[Bytes]) -> Option<Bytes> {
    fn push_nal(out: &mut BytesMut, nal: &[u8]) -> Option<()> {
        if nal.len() < 2 {
            return None;
        }
        out.extend_from_slice(&u32::try_from(nal.len()).ok()?.to_be_bytes());
        out.extend_from_slice(nal);
        Some(())
    }
    let mut out = BytesMut::new();
    let mut fragment: Option<Vec<u8>> = None;
    for payload in payloads {
        let header = payload.get(..2)?;
        match (header[0] >> 1) & 0x3f {
            48 => {
                let mut rest = &payload[2..];
                while !rest.is_empty() {
                    let size = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
                    push_nal(&mut out, rest.get(2..2 + size)?)?;
                    rest = &rest[2 + size..];
                }
            }
            49 => {
                let fu = *payload.get(2)?;
                let data = &payload[3..];
                if fu & 0x80 != 0 {
                    // Start: rebuild the NAL header with the FU's type.
                    let mut nal = vec![(header[0] & 0x81) | ((fu & 0x3f) << 1), header[1]];
                    nal.extend_from_slice(data);
                    fragment = Some(nal);
                } else {
                    fragment.as_mut()?.extend_from_slice(data);
                }
                if fu & 0x40 != 0 {
                    push_nal(&mut out, &fragment.take()?)?;
                }
            }
            50 => return None,
            _ => push_nal(&mut out, payload)?,
        }
    }
    // A fragmented NAL unit without its end is damaged.
    if fragment.is_some() {
        return None;
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Released {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.header.marker = marker;
        p.payload = Bytes::copy_from_slice(payload);
        Released::Packet(p)
    }

    /// SPS + PPS in a STAP-A, then an IDR in two FU-A fragments.
    fn keyframe(seq: u16, ts: u32) -> Vec<Released> {
        vec![
            packet(seq, ts, false, &[0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]),
            packet(seq + 1, ts, false, &[0x7c, 0x85, 0xaa, 0xbb]),
            packet(seq + 2, ts, true, &[0x7c, 0x45, 0xcc]),
        ]
    }

    fn feed(a: &mut FrameAssembler, items: Vec<Released>) -> Vec<Frame> {
        items.into_iter().flat_map(|r| a.push(r)).collect()
    }

    #[test]
    fn h264_keyframe_becomes_avc_access_unit() {
        let mut a = FrameAssembler::new(Codec::H264).expect("supported");
        let frames = feed(&mut a, keyframe(1, 3000));
        assert_eq!(frames.len(), 1);
        let f = &frames[0];
        assert!(f.keyframe);
        assert_eq!(
            f.data.as_ref(),
            &[
                0, 0, 0, 2, 0x67, 0x42, 0, 0, 0, 2, 0x68, 0xce, 0, 0, 0, 4, 0x65, 0xaa, 0xbb, 0xcc
            ]
        );
    }

    #[test]
    fn loss_drops_until_next_keyframe() {
        let mut a = FrameAssembler::new(Codec::H264).expect("supported");
        assert!(
            feed(&mut a, vec![packet(1, 0, true, &[0x41, 1, 1, 1])]).is_empty(),
            "no keyframe yet"
        );
        assert_eq!(feed(&mut a, keyframe(2, 3000)).len(), 1);
        assert_eq!(
            feed(&mut a, vec![packet(5, 6000, true, &[0x41, 2, 2, 2])]).len(),
            1
        );
        // The first packet of the next frame is lost.
        let damaged = vec![
            Released::Gap { missing: 1 },
            packet(7, 9000, true, &[0x41, 3, 3, 3]),
            packet(8, 12000, true, &[0x41, 4, 4, 4]),
        ];
        assert!(feed(&mut a, damaged).is_empty());
        let frames = feed(&mut a, keyframe(9, 15000));
        assert_eq!(frames.len(), 1);
        assert!(frames[0].keyframe);
        assert_eq!(a.dropped_frames, 3);
    }

    #[test]
    fn lost_marker_breaks_the_frame() {
        let mut a = FrameAssembler::new(Codec::Vp8).expect("supported");
        let frames = feed(
            &mut a,
            vec![
                packet(1, 0, false, &[0x10, 0x00, 1, 2]),
                packet(2, 0, true, &[0x00, 3, 3, 3]),
                // Frame at 3000 has no marker; the next timestamp starts.
                packet(3, 3000, false, &[0x10, 0x01, 4, 4]),
                packet(4, 6000, true, &[0x10, 0x00, 5, 5]),
            ],
        );
        let stamps: Vec<i64> = frames.iter().map(|f| f.timestamp).collect();
        assert_eq!(stamps, vec![0, 6000]);
        assert_eq!(frames[0].data.as_ref(), &[0x00, 1, 2, 3, 3, 3]);
    }

    #[test]
    fn h265_aggregation_and_fragments() {
        let mut a = FrameAssembler::new(Codec::H265).expect("supported");
        let vps = [0x40, 0x01, 0xaa];
        let sps = [0x42, 0x01, 0xbb];
        let mut ap = vec![48 << 1, 1];
        for nal in [&vps[..], &sps[..]] {
            ap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            ap.extend_from_slice(nal);
        }
        let frames = feed(
            &mut a,
            vec![
                packet(1, 0, false, &ap),
                packet(2, 0, false, &[0x44, 0x01, 0xcc]), // PPS, single
                // IDR_W_RADL (19) in two fragments.
                packet(3, 0, false, &[49 << 1, 1, 0x80 | 19, 1, 2]),
                packet(4, 0, true, &[49 << 1, 1, 0x40 | 19, 3]),
            ],
        );
        assert_eq!(frames.len(), 1);
        assert!(frames[0].keyframe);
        assert_eq!(
            frames[0].data.as_ref(),
            &[
                0,
                0,
                0,
                3,
                0x40,
                0x01,
                0xaa,
                0,
                0,
                0,
                3,
                0x42,
                0x01,
                0xbb,
                0,
                0,
                0,
                3,
                0x44,
                0x01,
                0xcc,
                0,
                0,
                0,
                5,
                19 << 1,
                1,
                1,
                2,
                3
            ]
        );
        // A fragment without its end is malformed.
        let bad = feed(
            &mut a,
            vec![packet(5, 3000, true, &[49 << 1, 1, 0x80 | 1, 1])],
        );
        assert!(bad.is_empty());
        assert_eq!(a.malformed_frames, 1);
        // Truncated or refused payloads never panic.
        for payload in [
            &[48 << 1, 1, 0, 9, 1][..],
            &[48 << 1, 1, 0][..],
            &[49 << 1, 1][..],
            &[49 << 1, 1, 0x01, 1][..],
            &[50 << 1, 1, 0, 0][..],
            &[0x02][..],
        ] {
            assert_eq!(depacketize_h265(&[Bytes::copy_from_slice(payload)]), None);
        }
    }

    #[test]
    fn h264_broken_stap_a_is_malformed_not_a_panic() {
        for payload in [
            &[0x78, 0x00, 0x01, 0x67, 0x42][..], // one stray trailing byte
            &[0x78, 0x00, 0x05, 0x67][..],       // size past the end
        ] {
            assert!(!stap_a_is_whole(payload));
            assert_eq!(
                depacketize(Codec::H264, &[Bytes::copy_from_slice(payload)]),
                None
            );
        }
        assert!(stap_a_is_whole(&[0x78, 0, 1, 0x67, 0, 1, 0x68]));
        assert!(stap_a_is_whole(&[0x65, 0x88]));
    }

    #[test]
    fn opus_packets_are_frames() {
        let mut a = FrameAssembler::new(Codec::Opus).expect("supported");
        let frames = feed(
            &mut a,
            vec![
                packet(1, 960, true, &[0xfc, 1, 1]),
                packet(2, 1920, false, &[0xfc, 2, 2]),
            ],
        );
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].timestamp - frames[0].timestamp, 960);
    }
}
