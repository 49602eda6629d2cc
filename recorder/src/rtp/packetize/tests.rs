use bytes::Bytes;
use rtc::rtp::Packet;

use super::*;
use crate::codec::Codec;
use crate::params::length_prefixed_nals;
use crate::rtp::{Frame, FrameAssembler, Released};

/// NAL units with 4-byte lengths, as RTMP's AVCC/HVCC and the assembler
/// write them.
fn avcc(nals: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for nal in nals {
        out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        out.extend_from_slice(nal);
    }
    out
}

/// A NAL unit of `len` bytes behind `header`, with a varied body.
fn nal(header: &[u8], len: usize) -> Vec<u8> {
    let mut out = header.to_vec();
    out.extend((0..len - header.len()).map(|i| (i * 7 + 3) as u8));
    out
}

/// Payloads of one access unit as packets: one timestamp, marker last.
fn packets(payloads: &[Bytes], first_seq: u16, ts: u32) -> Vec<Released> {
    let last = payloads.len().saturating_sub(1);
    payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut p = Packet::default();
            p.header.sequence_number = first_seq.wrapping_add(i as u16);
            p.header.timestamp = ts;
            p.header.marker = i == last;
            p.payload = payload.clone();
            Released::Packet(p)
        })
        .collect()
}

fn assemble(codec: Codec, packets: Vec<Released>) -> (FrameAssembler, Vec<Frame>) {
    let mut a = FrameAssembler::new(codec).expect("supported");
    let frames = packets.into_iter().flat_map(|r| a.push(r)).collect();
    (a, frames)
}

#[test]
fn h264_idr_round_trip() {
    let aud = [0x09, 0xf0];
    let sps = nal(&[0x67, 0x64, 0x00, 0x1f], 24);
    let pps = nal(&[0x68], 5);
    let sei = nal(&[0x06, 0x05], 40);
    let idr = nal(&[0x65, 0x88], 5000);
    let eos = [0x0a];
    let input = avcc(&[&aud, &sps, &pps, &sei, &idr, &eos]);
    let payloads = h264_payloads(length_prefixed_nals(&input), 1200);
    assert!(payloads.iter().all(|p| p.len() <= 1200));
    // SPS, PPS, SEI single; the IDR in five FU-A; end of sequence in a
    // STAP-A; no AUD.
    assert_eq!(payloads.len(), 3 + 5 + 1);
    assert!(payloads[3..8].iter().all(|p| p[0] == 0x60 | 28));
    assert_eq!(payloads[3][1], 0x80 | 5, "start bit on the first");
    assert_eq!(payloads[7][1], 0x40 | 5, "end bit on the last");
    assert!(payloads[4..7].iter().all(|p| p[1] == 5));
    assert_eq!(payloads[8].as_ref(), &[24, 0, 1, 0x0a]);

    let (a, frames) = assemble(Codec::H264, packets(&payloads, 100, 9000));
    assert_eq!(
        frames.len(),
        1,
        "dropped {}, malformed {}",
        a.dropped_frames,
        a.malformed_frames
    );
    assert!(frames[0].keyframe);
    assert_eq!(frames[0].data, avcc(&[&sps, &pps, &sei, &idr, &eos]));
}

#[test]
fn h264_keyframe_is_seen_in_first_packet() {
    let sps = nal(&[0x67, 0x42, 0xc0, 0x1e], 12);
    let pps = nal(&[0x68], 4);
    let idr = nal(&[0x65], 3000);
    let payloads = h264_payloads([&sps[..], &pps, &idr], 1200);
    assert!(Codec::H264.starts_keyframe(&payloads[0]));
    // Without in-band parameter sets the IDR's first fragment still is.
    let payloads = h264_payloads([&idr[..]], 1200);
    assert!(Codec::H264.starts_keyframe(&payloads[0]));
    assert!(!payloads[1..].iter().any(|p| Codec::H264.starts_keyframe(p)));
    // A P-frame is not.
    let p_slice = nal(&[0x41, 0x9a], 3000);
    let payloads = h264_payloads([&p_slice[..]], 1200);
    assert!(!payloads.iter().any(|p| Codec::H264.starts_keyframe(p)));
}

#[test]
fn h264_skips_what_rtp_cannot_carry() {
    let filler = [0x0c, 0xff, 0xff, 0x80];
    let stap = [0x18, 0x00, 0x01, 0x41];
    let input: [&[u8]; 5] = [&[], &[0x09, 0xf0], &filler, &stap, &[0x00, 1, 2]];
    assert!(h264_payloads(input, 1200).is_empty());
}

#[test]
fn tiny_mtu_is_raised() {
    let idr = nal(&[0x65], 100);
    let payloads = h264_payloads([&idr[..]], 0);
    assert!(payloads.iter().all(|p| p.len() <= MIN_MTU));
    let (_, frames) = assemble(Codec::H264, packets(&payloads, 1, 0));
    assert_eq!(frames[0].data, avcc(&[&idr]));
    // A NAL unit exactly one byte over still makes two fragments.
    let idr = nal(&[0x65], MIN_MTU + 1);
    assert_eq!(h264_payloads([&idr[..]], MIN_MTU).len(), 2);
}

#[test]
fn h265_idr_round_trip() {
    let aud = [35 << 1, 1, 0x50];
    let vps = nal(&[32 << 1, 1], 24);
    let sps = nal(&[33 << 1, 1], 40);
    let pps = nal(&[34 << 1, 1], 8);
    // IDR_W_RADL, layer 0, TemporalId 0 (nuh_temporal_id_plus1 1).
    let idr = nal(&[19 << 1, 1], 4000);
    let input = avcc(&[&aud, &vps, &sps, &pps, &idr]);
    let payloads = h265_payloads(length_prefixed_nals(&input), 1000);
    assert!(payloads.iter().all(|p| p.len() <= 1000));
    assert_eq!(payloads.len(), 3 + 5);
    assert!(Codec::H265.starts_keyframe(&payloads[0]), "VPS first");
    assert_eq!(&payloads[3][..3], &[49 << 1, 1, 0x80 | 19]);
    assert_eq!(&payloads[7][..3], &[49 << 1, 1, 0x40 | 19]);

    let (a, frames) = assemble(Codec::H265, packets(&payloads, 65534, 3000));
    assert_eq!(
        frames.len(),
        1,
        "dropped {}, malformed {}",
        a.dropped_frames,
        a.malformed_frames
    );
    assert!(frames[0].keyframe);
    assert_eq!(frames[0].data, avcc(&[&vps, &sps, &pps, &idr]));
}

#[test]
fn h265_keeps_layer_bits_and_skips_unsendable() {
    // nuh_layer_id 1 (its high bit in the first byte), temporal id 2.
    let trail = nal(&[(1 << 1) | 0x01, 0x0b], 300);
    let payloads = h265_payloads([&trail[..]], 100);
    assert_eq!(&payloads[0][..3], &[(49 << 1) | 0x01, 0x0b, 0x80 | 1]);
    let (a, frames) = assemble(Codec::H265, {
        let mut p = packets(&h265_payloads([&nal(&[20 << 1, 1], 10)[..]], 100), 1, 0);
        p.extend(packets(&payloads, 2, 3000));
        p
    });
    assert_eq!(a.malformed_frames, 0);
    assert_eq!(frames[1].data, avcc(&[&trail]));
    let input: [&[u8]; 4] = [&[], &[0x40], &[38 << 1, 1, 0xff], &[48 << 1, 1, 0, 1, 2]];
    assert!(h265_payloads(input, 1200).is_empty());
}

#[test]
fn aac_single_units_round_trip() {
    let units: Vec<Vec<u8>> = (0..3)
        .map(|i| nal(&[0x21, i], 200 + usize::from(i)))
        .collect();
    let mut released = Vec::new();
    for (i, unit) in units.iter().enumerate() {
        let payload = aac_payload(unit).expect("fits");
        // Near the 32-bit wrap: timestamps keep counting past it.
        let ts = (u32::MAX - 1023).wrapping_add(i as u32 * 1024);
        released.extend(packets(&[payload], i as u16, ts));
    }
    let (a, frames) = assemble(Codec::Aac, released);
    assert_eq!(a.malformed_frames, 0);
    let got: Vec<&[u8]> = frames.iter().map(|f| f.data.as_ref()).collect();
    let want: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
    assert_eq!(got, want);
    let stamps: Vec<i64> = frames
        .iter()
        .map(|f| f.timestamp - frames[0].timestamp)
        .collect();
    assert_eq!(stamps, vec![0, 1024, 2048]);
    assert!(frames.iter().all(|f| f.codec == Codec::Aac && f.keyframe));
}

#[test]
fn aac_multi_unit_packet() {
    // Three units in one packet, as RTSP servers aggregate them.
    let units: [&[u8]; 3] = [&[1, 2, 3], &[4], &[5, 6]];
    let mut payload = vec![0x00, 48];
    for unit in units {
        payload.extend_from_slice(&((unit.len() as u16) << 3).to_be_bytes());
    }
    for unit in units {
        payload.extend_from_slice(unit);
    }
    let (a, frames) = assemble(Codec::Aac, packets(&[Bytes::from(payload)], 7, 48_000));
    assert_eq!(a.malformed_frames, 0);
    let got: Vec<(i64, &[u8])> = frames
        .iter()
        .map(|f| (f.timestamp, f.data.as_ref()))
        .collect();
    assert_eq!(got[0].1, units[0]);
    let offsets: Vec<i64> = got.iter().map(|(t, _)| t - got[0].0).collect();
    assert_eq!(offsets, vec![0, 1024, 2048]);
    assert_eq!(got.iter().map(|(_, d)| *d).collect::<Vec<_>>(), units);
}

#[test]
fn aac_malformed_and_fragmented_packets_are_counted() {
    let fragment = {
        // The first 1000 bytes of a 3000-byte unit (RFC 3640 §3.2.3: the
        // AU-size is the whole unit's).
        let mut p = vec![0x00, 0x10];
        p.extend_from_slice(&(3000u16 << 3).to_be_bytes());
        p.extend(std::iter::repeat_n(0xaa, 1000));
        p
    };
    let bad: [&[u8]; 5] = [
        &[],
        &[0x00, 0x10],
        &[0x00, 0x0f, 0, 8, 1],
        &[0xff, 0xff],
        &fragment,
    ];
    let mut released = Vec::new();
    for (i, payload) in bad.iter().enumerate() {
        released.extend(packets(&[Bytes::copy_from_slice(payload)], i as u16, 0));
    }
    // A good packet after them still comes through.
    released.extend(packets(&[aac_payload(&[7, 7]).expect("fits")], 9, 1024));
    let (a, frames) = assemble(Codec::Aac, released);
    assert_eq!(a.malformed_frames, bad.len() as u64);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].data.as_ref(), &[7, 7]);
}

#[test]
fn aac_payload_limits() {
    assert_eq!(aac_payload(&[]), None);
    assert_eq!(aac_payload(&[0; 8192]), None);
    assert_eq!(aac_payload(&[0; 8191]).map(|p| p.len()), Some(8195));
    // Audio is never a keyframe to the hub.
    assert!(!Codec::Aac.starts_keyframe(&aac_payload(&[1]).expect("fits")));
}
