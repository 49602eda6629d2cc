//! Frames → RTP payloads, for media that reaches the gateway as frames
//! (RTMP ingest, RTSP sources once depacketized): the inverse of what
//! [`super::FrameAssembler`] depacketizes, so a hub fed by these
//! payloaders looks to viewers and sinks like one fed by a WebRTC
//! publisher.
//!
//! Each function turns one access unit into the payloads of its packets;
//! the caller writes the RTP headers: one timestamp for all of them, the
//! marker bit on the last one.
//!
//! `mtu` is the largest payload, in bytes, without the RTP header (about
//! 1200 for WebRTC viewers). Below [`MIN_MTU`] it is raised to it: smaller
//! values are no real network's and would only cut NAL units into slivers.

use bytes::{BufMut, Bytes, BytesMut};

use super::aac;

/// The smallest `mtu` the payloaders honour.
pub const MIN_MTU: usize = 16;

const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;
const H265_FU: u8 = 49;

/// One H264 access unit (NAL units without start codes or lengths, in
/// decoding order) → RFC 6184 payloads: a single NAL unit packet for each
/// NAL unit that fits `mtu`, FU-A fragments for the rest.
///
/// Parameter sets must be in-band, SPS and PPS ahead of an IDR's slices:
/// the hub finds keyframes by them ([`crate::codec::Codec::starts_keyframe`]
/// sees the SPS in the first packet) and recorders and viewers read them
/// from the keyframe. Left out: access unit delimiters and filler data
/// (RTP framing already delimits access units, and filler only pads a
/// constant bitrate that packet networks do not need), empty NAL units,
/// and types 0 and 24..=31, which H264 leaves unspecified and RFC 6184
/// uses for its own packet types. A NAL unit of one or two bytes (end of
/// sequence or stream) goes in a one-unit STAP-A: `rtc`'s depacketizer,
/// which the recorder uses, refuses single NAL unit packets that short.
pub fn h264_payloads<'a>(nals: impl IntoIterator<Item = &'a [u8]>, mtu: usize) -> Vec<Bytes> {
    let mtu = mtu.max(MIN_MTU);
    let mut out = Vec::new();
    for nal in nals {
        let Some(&header) = nal.first() else {
            continue;
        };
        match header & 0x1f {
            // Access unit delimiter, filler data, unspecified types.
            9 | 12 | 0 | 24.. => continue,
            _ => {}
        }
        if nal.len() <= 2 {
            let mut stap = BytesMut::with_capacity(3 + nal.len());
            stap.put_u8((header & 0xe0) | H264_STAP_A);
            stap.put_u16(nal.len() as u16);
            stap.put_slice(nal);
            out.push(stap.freeze());
        } else if nal.len() <= mtu {
            out.push(Bytes::copy_from_slice(nal));
        } else {
            // FU indicator: F and NRI of the NAL unit, type 28; FU header:
            // start, end, the NAL unit's type. The NAL header itself is
            // not sent: the receiver rebuilds it from these two bytes.
            let indicator = (header & 0xe0) | H264_FU_A;
            fragment(&mut out, &nal[1..], mtu - 2, |p, start, end| {
                p.put_u8(indicator);
                p.put_u8(fu_flags(start, end) | (header & 0x1f));
            });
        }
    }
    out
}

/// One H265 access unit (NAL units without start codes or lengths, in
/// decoding order) → RFC 7798 payloads: single NAL unit packets, and
/// fragmentation units (type 49) for NAL units larger than `mtu`. No
/// DONL fields (`sprop-max-don-diff` is 0).
///
/// As for H264, parameter sets must be in-band (VPS first, which is what
/// [`crate::codec::Codec::starts_keyframe`] looks for) and delimiters
/// (35) and filler data (38) are left out, as are NAL units shorter than
/// their 2-byte header and the unspecified types 48..=63, which RFC 7798
/// uses for its own packet types.
pub fn h265_payloads<'a>(nals: impl IntoIterator<Item = &'a [u8]>, mtu: usize) -> Vec<Bytes> {
    let mtu = mtu.max(MIN_MTU);
    let mut out = Vec::new();
    for nal in nals {
        let [h0, h1, ..] = *nal else {
            continue;
        };
        let nal_type = (h0 >> 1) & 0x3f;
        if matches!(nal_type, 35 | 38 | 48..) {
            continue;
        }
        if nal.len() <= mtu {
            out.push(Bytes::copy_from_slice(nal));
        } else {
            // Payload header: the NAL unit's, with type 49 (F bit, layer
            // id and temporal id kept); FU header: start, end, type.
            fragment(&mut out, &nal[2..], mtu - 3, |p, start, end| {
                p.put_u8((h0 & 0x81) | (H265_FU << 1));
                p.put_u8(h1);
                p.put_u8(fu_flags(start, end) | nal_type);
            });
        }
    }
    out
}

/// One AAC access unit (raw, no ADTS header) → an RFC 3640 AAC-hbr
/// payload carrying it alone: AU-headers-length 16, then one AU header
/// (13-bit size, AU-Index 0). `None` for an empty unit, and for one over
/// 8191 bytes, which that header cannot state (fragmenting it is not
/// supported; AAC-LC makes at most 768 bytes per channel).
pub fn aac_payload(au: &[u8]) -> Option<Bytes> {
    aac::single_au_payload(au)
}

/// The start and end bits of an H264/H265 FU header.
fn fu_flags(start: bool, end: bool) -> u8 {
    (u8::from(start) << 7) | (u8::from(end) << 6)
}

/// Cuts `data` into chunks of at most `room` bytes, each behind the
/// header `header(payload, start, end)` writes. Callers pass more data
/// than `room`, so no fragment is both start and end (RFC 6184 and 7798
/// forbid that).
fn fragment(
    out: &mut Vec<Bytes>,
    data: &[u8],
    room: usize,
    header: impl Fn(&mut BytesMut, bool, bool),
) {
    let count = data.len().div_ceil(room);
    for (i, chunk) in data.chunks(room).enumerate() {
        let mut payload = BytesMut::with_capacity(3 + chunk.len());
        header(&mut payload, i == 0, i + 1 == count);
        payload.put_slice(chunk);
        out.push(payload.freeze());
    }
}

#[cfg(test)]
mod tests;
