//! RFC 3640 `mpeg4-generic` AAC in the AAC-hbr mode (`sizelength=13;
//! indexlength=3; indexdeltalength=3`), the one RTSP servers and cameras
//! use: a 16-bit AU-headers-length (in bits), one 16-bit AU header per
//! access unit (13-bit size, 3-bit index or index delta), then the access
//! units back to back. No auxiliary section (AAC-hbr has none).

use bytes::{BufMut, Bytes, BytesMut};

/// The largest access unit a 13-bit AU-size can state.
pub const MAX_AU_SIZE: usize = (1 << 13) - 1;

/// Samples in one AAC access unit: 1024 for AAC-LC, and for HE-AAC when
/// timed at the core rate ([`crate::params::AacConfig`]). The 960-sample
/// variant (DAB+) and AAC-LD would need the stream's config; RTMP and
/// RTSP sources send AAC-LC in practice.
pub const AU_SAMPLES: i64 = 1024;

/// Bits in one AU header.
const AU_HEADER_BITS: usize = 16;

/// One access unit as one payload; `None` for an empty unit or one too
/// large for the 13-bit size field.
pub fn single_au_payload(au: &[u8]) -> Option<Bytes> {
    if au.is_empty() || au.len() > MAX_AU_SIZE {
        return None;
    }
    let mut out = BytesMut::with_capacity(4 + au.len());
    out.put_u16(AU_HEADER_BITS as u16);
    // Size in the upper 13 bits, AU-Index 0 (no interleaving).
    out.put_u16((au.len() as u16) << 3);
    out.put_slice(au);
    Some(out.freeze())
}

/// The access units of one payload, in order, without copying; `None` for
/// anything that is not a whole set of non-interleaved units: a header
/// length that is not whole AU headers, an empty unit, sizes that do not
/// add up to the payload (a fragment of a larger unit, or corruption), or
/// non-zero indices (interleaving, which would deliver units out of
/// order).
pub fn access_units(payload: &Bytes) -> Option<Vec<Bytes>> {
    let header_bits = usize::from(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
    if header_bits == 0 || header_bits % AU_HEADER_BITS != 0 {
        return None;
    }
    let headers_end = 2 + header_bits / 8;
    let headers = payload.get(2..headers_end)?;
    let mut units = Vec::with_capacity(headers.len() / 2);
    let mut offset = headers_end;
    for header in headers.chunks_exact(2) {
        let header = u16::from_be_bytes([header[0], header[1]]);
        let size = usize::from(header >> 3);
        if header & 0x7 != 0 || size == 0 {
            return None;
        }
        let end = offset + size;
        if end > payload.len() {
            return None;
        }
        units.push(payload.slice(offset..end));
        offset = end;
    }
    (offset == payload.len()).then_some(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_unit_layout() {
        let p = single_au_payload(&[0x21, 0x10, 0x05]).expect("fits");
        assert_eq!(p.as_ref(), &[0x00, 0x10, 0x00, 0x18, 0x21, 0x10, 0x05]);
        assert_eq!(
            access_units(&p),
            Some(vec![Bytes::from_static(&[0x21, 0x10, 0x05])])
        );
        assert!(single_au_payload(&[]).is_none());
        assert!(single_au_payload(&[0; MAX_AU_SIZE]).is_some());
        assert!(single_au_payload(&[0; MAX_AU_SIZE + 1]).is_none());
    }

    #[test]
    fn malformed_payloads_are_refused() {
        for payload in [
            &[][..],
            &[0x00][..],
            &[0x00, 0x00][..],                               // no headers
            &[0x00, 0x08, 0x00][..],                         // half a header
            &[0x00, 0x10, 0x00][..],                         // header cut short
            &[0x00, 0x10, 0x00, 0x18, 1, 2][..],             // unit cut short (or fragment)
            &[0x00, 0x10, 0x00, 0x10, 1, 2, 3][..],          // trailing byte
            &[0x00, 0x10, 0x00, 0x11, 1, 2][..],             // AU-Index 1: interleaved
            &[0x00, 0x10, 0x00, 0x00][..],                   // empty unit
            &[0x00, 0x20, 0x00, 0x08, 0x00, 0x09, 1, 2][..], // delta 1
            &[0xff, 0xf0, 0xff, 0xf8][..],                   // huge header section
        ] {
            assert_eq!(
                access_units(&Bytes::copy_from_slice(payload)),
                None,
                "{payload:02x?}"
            );
        }
    }
}
