//! Just enough EBML (RFC 8794) to walk a Matroska/WebM file element by
//! element without loading it: element headers, unsigned integers and
//! floats, read at absolute positions through one buffered reader. Nothing
//! here trusts the file: a header that is cut off or malformed reads as
//! `None`, never as a panic.

use std::io::{self, BufReader, Read, Seek, SeekFrom};

pub const EBML: u32 = 0x1A45_DFA3;
pub const DOC_TYPE: u32 = 0x4282;
pub const SEGMENT: u32 = 0x1853_8067;
pub const SEEK_HEAD: u32 = 0x114D_9B74;
pub const SEEK: u32 = 0x4DBB;
pub const SEEK_POSITION: u32 = 0x53AC;
pub const INFO: u32 = 0x1549_A966;
pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
pub const DURATION: u32 = 0x4489;
pub const TRACKS: u32 = 0x1654_AE6B;
pub const CLUSTER: u32 = 0x1F43_B675;
pub const CUES: u32 = 0x1C53_BB6B;
pub const TAGS: u32 = 0x1254_C367;
pub const CHAPTERS: u32 = 0x1043_A770;
pub const ATTACHMENTS: u32 = 0x1941_A469;
pub const VOID: u32 = 0xEC;
pub const CRC32: u32 = 0xBF;
pub const TIMECODE: u32 = 0xE7;
pub const SIMPLE_BLOCK: u32 = 0xA3;
pub const BLOCK_GROUP: u32 = 0xA0;
pub const BLOCK: u32 = 0xA1;
pub const SILENT_TRACKS: u32 = 0x5854;
pub const POSITION: u32 = 0xA7;
pub const PREV_SIZE: u32 = 0xAB;
pub const ENCRYPTED_BLOCK: u32 = 0xAF;

/// The Segment's children: they also end a Cluster of unknown size.
pub const TOP_LEVEL: [u32; 8] = [
    CLUSTER,
    CUES,
    SEEK_HEAD,
    INFO,
    TRACKS,
    TAGS,
    CHAPTERS,
    ATTACHMENTS,
];

/// Children a Cluster may hold (Matroska §5.1.3).
pub const CLUSTER_CHILDREN: [u32; 9] = [
    TIMECODE,
    SILENT_TRACKS,
    POSITION,
    PREV_SIZE,
    SIMPLE_BLOCK,
    BLOCK_GROUP,
    ENCRYPTED_BLOCK,
    VOID,
    CRC32,
];

/// An element header as found in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The ID with its length marker, as the spec writes it (`0x1F43B675`).
    pub id: u32,
    /// Position of the ID's first byte.
    pub start: u64,
    /// Position of the first data byte.
    pub data_start: u64,
    /// Data size; `None` for the "unknown" value (all value bits set).
    pub size: Option<u64>,
    /// Width of the size field in bytes (1 to 8).
    pub size_len: u8,
}

impl Header {
    /// Position of the size field, for patching it in place.
    pub fn size_pos(&self) -> u64 {
        self.data_start - u64::from(self.size_len)
    }

    /// End of the data, when the size is known and does not overflow.
    pub fn end(&self) -> Option<u64> {
        self.data_start.checked_add(self.size?)
    }
}

/// Length of a variable-size integer from its first byte (1 to 8), or
/// `None` for a zero byte, which no valid vint starts with.
fn vint_len(first: u8) -> Option<usize> {
    let n = first.leading_zeros() as usize + 1;
    (n <= 8).then_some(n)
}

/// The encoding of `value` as a size field exactly `width` bytes wide, or
/// `None` if it does not fit (the all-ones value is reserved for
/// "unknown").
pub fn encode_size(value: u64, width: u8) -> Option<Vec<u8>> {
    if !(1..=8).contains(&width) {
        return None;
    }
    let bits = 7 * u32::from(width);
    let max = (1u64 << bits) - 2;
    if value > max {
        return None;
    }
    let marked = value | (1u64 << bits);
    Some(marked.to_be_bytes()[8 - usize::from(width)..].to_vec())
}

/// Reads a file at absolute positions; short reads only happen at its end.
pub struct Reader<R> {
    inner: BufReader<R>,
    /// Where `inner` stands.
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Reader<R> {
    pub fn new(inner: R, len: u64) -> Self {
        Self {
            // Blocks are skipped by seeking; a large buffer turns most of
            // those seeks into moves within it.
            inner: BufReader::with_capacity(64 * 1024, inner),
            pos: u64::MAX,
            len,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    fn seek_to(&mut self, pos: u64) -> io::Result<()> {
        if pos == self.pos {
            return Ok(());
        }
        match i64::try_from(pos.wrapping_sub(self.pos)) {
            Ok(delta) if self.pos != u64::MAX => self.inner.seek_relative(delta)?,
            _ => {
                self.inner.seek(SeekFrom::Start(pos))?;
            }
        }
        self.pos = pos;
        Ok(())
    }

    /// Fills as much of `buf` as the file holds from `pos`; returns how
    /// many bytes that was.
    pub fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let available = usize::try_from(self.len.saturating_sub(pos)).unwrap_or(usize::MAX);
        let n = buf.len().min(available);
        if n == 0 {
            return Ok(0);
        }
        self.seek_to(pos)?;
        self.inner.read_exact(&mut buf[..n])?;
        self.pos = pos + n as u64;
        Ok(n)
    }

    /// The element header at `pos` if it is whole and valid and lies before
    /// `limit`. The data itself may run past `limit`: callers check
    /// [`Header::end`].
    pub fn header(&mut self, pos: u64, limit: u64) -> io::Result<Option<Header>> {
        let mut buf = [0u8; 12];
        let avail = usize::try_from(limit.saturating_sub(pos))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.read_at(pos, &mut buf[..avail])?;
        Ok(parse_header(&buf[..n], pos))
    }

    /// An unsigned integer element's value (0 to 8 bytes, big-endian).
    pub fn uint(&mut self, header: &Header) -> io::Result<Option<u64>> {
        let Some(size) = header.size.filter(|&s| s <= 8) else {
            return Ok(None);
        };
        let mut buf = [0u8; 8];
        let len = size as usize;
        let n = self.read_at(header.data_start, &mut buf[..len])?;
        if n < len {
            return Ok(None);
        }
        Ok(Some(
            buf[..len].iter().fold(0, |v, &b| v << 8 | u64::from(b)),
        ))
    }

    /// The bytes of a small element (at most `max` bytes).
    pub fn bytes(&mut self, header: &Header, max: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(size) = header.size.filter(|&s| s <= max) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
        let n = self.read_at(header.data_start, &mut buf)?;
        Ok((n == buf.len()).then_some(buf))
    }
}

/// Parses an element header from the bytes at `start`.
pub fn parse_header(buf: &[u8], start: u64) -> Option<Header> {
    let id_len = vint_len(*buf.first()?)?;
    if id_len > 4 {
        return None;
    }
    let id = buf
        .get(..id_len)?
        .iter()
        .fold(0u32, |v, &b| v << 8 | u32::from(b));
    let size_first = *buf.get(id_len)?;
    let size_len = vint_len(size_first)?;
    let raw = buf.get(id_len..id_len + size_len)?;
    let mask = if size_len == 8 { 0 } else { 0xFFu8 >> size_len };
    let value = raw
        .iter()
        .skip(1)
        .fold(u64::from(size_first & mask), |v, &b| v << 8 | u64::from(b));
    let unknown = value == (1u64 << (7 * size_len)) - 1;
    Some(Header {
        id,
        start,
        data_start: start + (id_len + size_len) as u64,
        size: (!unknown).then_some(value),
        size_len: size_len as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        // A Segment of unknown size, 8-byte field, as libwebm writes it.
        let h = parse_header(
            &[
                0x18, 0x53, 0x80, 0x67, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            10,
        )
        .expect("header");
        assert_eq!(
            (h.id, h.size, h.size_len, h.data_start),
            (SEGMENT, None, 8, 22)
        );
        let h = parse_header(&[0xEC, 0x81], 0).expect("void");
        assert_eq!((h.id, h.size, h.end()), (VOID, Some(1), Some(3)));
        assert_eq!(parse_header(&[0xEC, 0xFF], 0).expect("unknown").size, None);
        assert_eq!(parse_header(&[0x00, 0x81], 0), None);
        assert_eq!(parse_header(&[0x1F, 0x43, 0xB6], 0), None);
        assert_eq!(parse_header(&[0x08, 0, 0, 0, 0x81], 0), None, "5-byte id");
        assert_eq!(parse_header(&[0xA3, 0x00], 0), None, "zero size byte");
    }

    #[test]
    fn sizes_round_trip() {
        for width in 1..=8u8 {
            for value in [0u64, 1, 126, 127, 300, (1 << (7 * u32::from(width))) - 2] {
                let Some(enc) = encode_size(value, width) else {
                    assert!(value > (1 << (7 * u32::from(width))) - 2);
                    continue;
                };
                let mut buf = vec![0xA3];
                buf.extend_from_slice(&enc);
                let h = parse_header(&buf, 0).expect("header");
                assert_eq!((h.size, h.size_len), (Some(value), width));
            }
        }
        assert_eq!(encode_size(127, 1), None, "all ones means unknown");
        assert_eq!(encode_size(1, 9), None);
    }
}
