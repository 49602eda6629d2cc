//! The parameter sets inside an `avcC` or `hvcC` decoder configuration
//! record: what RTMP sends as its video sequence header and RTSP cameras
//! describe in SDP. WebRTC decoders need them in-band, before every
//! keyframe, and a viewer that joins mid-stream has no other way to get them.

use bytes::Bytes;

use recorder::codec::Codec;

/// Parameter sets and the size of the length prefix of each NAL unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterSets {
    /// VPS (H265), SPS, PPS, in decoding order.
    pub nals: Vec<Bytes>,
    /// Bytes before each NAL unit in a frame (1, 2 or 4).
    pub length_size: usize,
}

impl ParameterSets {
    /// Reads an `avcC` (H264) or `hvcC` (H265) record; `None` if it is
    /// malformed or the codec has no such record.
    pub fn parse(codec: Codec, record: &[u8]) -> Option<Self> {
        match codec {
            Codec::H264 => parse_avcc(record),
            Codec::H265 => parse_hvcc(record),
            _ => None,
        }
    }
}

/// ISO 14496-15 §5.3.3.1.
fn parse_avcc(record: &[u8]) -> Option<ParameterSets> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None;
    }
    r.skip(3)?; // profile, compatibility, level
    let length_size = usize::from(r.u8()? & 0x03) + 1;
    let mut nals = Vec::new();
    let sps_count = r.u8()? & 0x1f;
    for _ in 0..sps_count {
        nals.push(r.nal()?);
    }
    let pps_count = r.u8()?;
    for _ in 0..pps_count {
        nals.push(r.nal()?);
    }
    valid_length_size(length_size)?;
    Some(ParameterSets { nals, length_size })
}

/// ISO 14496-15 §8.3.3.1.
fn parse_hvcc(record: &[u8]) -> Option<ParameterSets> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None;
    }
    r.skip(20)?; // profile, tier, level, flags, formats, frame rate
    let length_size = usize::from(r.u8()? & 0x03) + 1;
    let arrays = r.u8()?;
    let mut nals = Vec::new();
    for _ in 0..arrays {
        r.skip(1)?; // completeness and NAL unit type
        let count = r.u16()?;
        for _ in 0..count {
            nals.push(r.nal()?);
        }
    }
    valid_length_size(length_size)?;
    Some(ParameterSets { nals, length_size })
}

fn valid_length_size(size: usize) -> Option<()> {
    // 3 is reserved by the format.
    (size != 3).then_some(())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.0 = self.0.get(n..)?;
        Some(())
    }

    fn nal(&mut self) -> Option<Bytes> {
        let len = usize::from(self.u16()?);
        let nal = self.0.get(..len)?;
        self.0 = &self.0[len..];
        (!nal.is_empty()).then(|| Bytes::copy_from_slice(nal))
    }
}

/// The NAL units of a frame whose units carry `length_size`-byte length
/// prefixes; stops at the first inconsistent length.
pub fn split_nals(data: &[u8], length_size: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < length_size || length_size == 0 {
            return None;
        }
        let len = rest[..length_size]
            .iter()
            .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        let nal = rest.get(length_size..length_size + len)?;
        rest = &rest[length_size + len..];
        Some(nal)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avcc_gives_sps_and_pps() {
        let record = [
            1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 3, 0x67, 0x64, 0x1f, 1, 0, 2, 0x68, 0xee,
        ];
        let sets = ParameterSets::parse(Codec::H264, &record).expect("valid");
        assert_eq!(sets.length_size, 4);
        assert_eq!(
            sets.nals,
            vec![
                Bytes::from_static(&[0x67, 0x64, 0x1f]),
                Bytes::from_static(&[0x68, 0xee])
            ]
        );
    }

    #[test]
    fn truncated_records_are_refused() {
        let record = [1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 9, 0x67];
        assert_eq!(ParameterSets::parse(Codec::H264, &record), None);
        assert_eq!(ParameterSets::parse(Codec::H265, &[1, 2, 3]), None);
        assert_eq!(ParameterSets::parse(Codec::H264, &[]), None);
    }

    #[test]
    fn hvcc_gives_every_array() {
        let mut record = vec![1u8];
        record.extend_from_slice(&[0; 20]);
        record.push(0x0f); // length size 4
        record.push(2); // arrays
        record.extend_from_slice(&[0x20, 0, 1, 0, 2, 0x40, 0x01]); // VPS
        record.extend_from_slice(&[0x21, 0, 1, 0, 2, 0x42, 0x01]); // SPS
        let sets = ParameterSets::parse(Codec::H265, &record).expect("valid");
        assert_eq!(sets.nals.len(), 2);
        assert_eq!(sets.nals[1][0], 0x42);
    }

    #[test]
    fn nals_split_by_length() {
        let data = [0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x41, 0, 0, 0, 9, 1];
        let nals: Vec<&[u8]> = split_nals(&data, 4).collect();
        assert_eq!(nals, vec![&[0x65, 1][..], &[0x41][..]]);
    }
}
