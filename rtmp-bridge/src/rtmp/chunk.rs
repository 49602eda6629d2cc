//! RTMP chunk streams: splitting messages into chunks and putting the
//! peer's chunks back together.
//!
//! The writer always uses a full (fmt 0) header for a message's first chunk
//! and fmt 3 for its continuations. That costs 11 bytes per message and
//! avoids delta timestamps, which break when a track's clock steps back
//! (publisher takeover) or wraps. The reader accepts all four formats.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The chunk size both sides start with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest chunk size we accept from a peer; the protocol allows 2^31 - 1,
/// but nobody needs more than a message's maximum length.
pub const MAX_CHUNK_SIZE: u32 = 0xff_ffff;
/// Messages carry a 24-bit length.
pub const MAX_MESSAGE_LEN: usize = 0xff_ffff;
/// The default bound on bytes held for half-received messages, over all
/// chunk streams together: two maximal messages. Without it a peer could
/// start a 16 MiB message on each of its chunk streams and never end them.
pub const DEFAULT_MAX_PARTIAL_BYTES: usize = 2 * MAX_MESSAGE_LEN;
/// At most this many chunk streams may be in use by the peer; more is an
/// attack on our memory, not RTMP.
const MAX_CHUNK_STREAMS: usize = 64;
const EXTENDED: u32 = 0xff_ffff;

/// One RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message type id (1 SetChunkSize, 8 audio, 9 video, 20 AMF0 command…).
    pub type_id: u8,
    /// Message stream id: 0 for the connection, the `createStream` result
    /// for the published stream.
    pub stream_id: u32,
    /// Milliseconds.
    pub timestamp: u32,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChunkError {
    #[error("message of {0} bytes exceeds RTMP's 16 MiB limit")]
    MessageTooLarge(usize),
    #[error("chunk stream id {0} is outside 2..=65599")]
    BadChunkStreamId(u32),
    #[error("peer continued chunk stream {csid} (fmt {fmt}) that never had a full header")]
    NoPreviousHeader { csid: u32, fmt: u8 },
    #[error("peer uses more than {MAX_CHUNK_STREAMS} chunk streams")]
    TooManyChunkStreams,
    #[error("chunk size {0} is outside 1..=16777215")]
    BadChunkSize(u32),
    #[error("peer announced a message of {len} bytes; the limit is {limit}")]
    MessageOverLimit { len: usize, limit: usize },
    #[error("peer keeps more than {limit} bytes of unfinished messages")]
    TooMuchPartialData { limit: usize },
}

/// What the reader will hold for a peer. The peer chooses the lengths, so
/// these are what bounds our memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderLimits {
    /// Longest message accepted; a header announcing more is an error
    /// before any of its payload is buffered.
    pub max_message_len: usize,
    /// Bytes held for half-received messages, all chunk streams together.
    pub max_partial_bytes: usize,
}

impl Default for ReaderLimits {
    fn default() -> Self {
        ReaderLimits {
            max_message_len: MAX_MESSAGE_LEN,
            max_partial_bytes: DEFAULT_MAX_PARTIAL_BYTES,
        }
    }
}

/// Splits messages into chunks.
#[derive(Debug)]
pub struct ChunkWriter {
    chunk_size: usize,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE as usize,
        }
    }
}

impl ChunkWriter {
    /// Takes effect for the next message; the caller must have sent
    /// SetChunkSize first.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(ChunkError::BadChunkSize(size));
        }
        self.chunk_size = size as usize;
        Ok(())
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size as u32
    }

    /// Appends `msg` on chunk stream `csid` to `out`.
    pub fn write(&self, csid: u32, msg: &Message, out: &mut BytesMut) -> Result<(), ChunkError> {
        let len = msg.payload.len();
        if len > MAX_MESSAGE_LEN {
            return Err(ChunkError::MessageTooLarge(len));
        }
        if !(2..=65599).contains(&csid) {
            return Err(ChunkError::BadChunkStreamId(csid));
        }
        let extended = msg.timestamp >= EXTENDED;
        let chunks = len.div_ceil(self.chunk_size).max(1);
        out.reserve(len + 18 + (chunks - 1) * 8);

        put_basic_header(out, 0, csid);
        out.put_uint(u64::from(msg.timestamp.min(EXTENDED)), 3);
        out.put_uint(len as u64, 3);
        out.put_u8(msg.type_id);
        out.put_u32_le(msg.stream_id);
        if extended {
            out.put_u32(msg.timestamp);
        }
        let mut rest = &msg.payload[..];
        loop {
            let n = rest.len().min(self.chunk_size);
            out.put_slice(&rest[..n]);
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            put_basic_header(out, 3, csid);
            // FFmpeg and nginx-rtmp expect the extended timestamp repeated
            // in every continuation chunk.
            if extended {
                out.put_u32(msg.timestamp);
            }
        }
        Ok(())
    }
}

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    match csid {
        2..=63 => out.put_u8((fmt << 6) | csid as u8),
        64..=319 => out.put_slice(&[fmt << 6, (csid - 64) as u8]),
        _ => {
            let id = csid - 64;
            out.put_slice(&[(fmt << 6) | 1, id as u8, (id >> 8) as u8]);
        }
    }
}

/// What the reader remembers per chunk stream.
#[derive(Debug, Default)]
struct ChunkStream {
    timestamp: u32,
    /// The last header's timestamp field (delta for fmt 1/2, absolute for
    /// fmt 0), which a fmt 3 chunk starting a new message reuses.
    delta: u32,
    length: usize,
    type_id: u8,
    stream_id: u32,
    /// The last header's timestamp field was 0xFFFFFF, so fmt 3 chunks
    /// carry the 4-byte extended timestamp too.
    extended: bool,
    /// A message being reassembled.
    partial: Option<BytesMut>,
}

/// Reassembles messages from the peer's chunks. Sans-IO: feed bytes with
/// [`push`](Self::push), take messages with [`next_message`](Self::next_message).
#[derive(Debug)]
pub struct ChunkReader {
    buf: BytesMut,
    chunk_size: usize,
    streams: HashMap<u32, ChunkStream>,
    limits: ReaderLimits,
    /// Sum of the `partial` lengths in `streams`.
    partial_bytes: usize,
}

impl Default for ChunkReader {
    fn default() -> Self {
        Self::with_limits(ReaderLimits::default())
    }
}

impl ChunkReader {
    pub fn with_limits(limits: ReaderLimits) -> Self {
        Self {
            buf: BytesMut::new(),
            chunk_size: DEFAULT_CHUNK_SIZE as usize,
            streams: HashMap::new(),
            limits,
            partial_bytes: 0,
        }
    }

    /// Takes effect from the next chunk header; messages already started
    /// keep the length they announced.
    pub fn set_limits(&mut self, limits: ReaderLimits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> ReaderLimits {
        self.limits
    }

    /// Bytes pushed but not yet consumed as chunks: at most one incomplete
    /// chunk when [`next_message`](Self::next_message) has returned
    /// `Ok(None)`, more when the caller stopped taking messages.
    pub fn unread_len(&self) -> usize {
        self.buf.len()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The peer's SetChunkSize.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(ChunkError::BadChunkSize(size));
        }
        self.chunk_size = size as usize;
        Ok(())
    }

    /// The peer's Abort message: drop the half-received message on `csid`.
    pub fn abort(&mut self, csid: u32) {
        if let Some(partial) = self.streams.get_mut(&csid).and_then(|s| s.partial.take()) {
            self.partial_bytes -= partial.len();
        }
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, ChunkError> {
        loop {
            let Some(chunk) = self.peek_chunk_header()? else {
                return Ok(None);
            };
            let held = self
                .streams
                .get(&chunk.csid)
                .and_then(|s| s.partial.as_ref())
                .map_or(0, BytesMut::len);
            let have = if chunk.continuation { held } else { 0 };
            let take = chunk.state.length.saturating_sub(have).min(self.chunk_size);
            if self.buf.len() < chunk.header_len + take {
                // Not all here yet: parse this header again when more
                // bytes arrive.
                return Ok(None);
            }
            let done = have + take >= chunk.state.length;
            // A new header abandons a half-received message on its chunk
            // stream (as other implementations do), freeing its bytes.
            let after = self.partial_bytes - held + if done { 0 } else { have + take };
            if after > self.limits.max_partial_bytes {
                return Err(ChunkError::TooMuchPartialData {
                    limit: self.limits.max_partial_bytes,
                });
            }
            let old = self.streams.remove(&chunk.csid);
            let mut partial = match old.and_then(|s| s.partial) {
                Some(p) if chunk.continuation => p,
                // Only what arrived is allocated, never the announced
                // length: that is the peer's claim, not data.
                _ => BytesMut::with_capacity(take),
            };
            self.buf.advance(chunk.header_len);
            partial.extend_from_slice(&self.buf[..take]);
            self.buf.advance(take);
            self.partial_bytes = after;
            let mut state = chunk.state;
            let message = done.then(|| Message {
                type_id: state.type_id,
                stream_id: state.stream_id,
                timestamp: state.timestamp,
                payload: partial.split().freeze(),
            });
            state.partial = (!done).then_some(partial);
            self.streams.insert(chunk.csid, state);
            if message.is_some() {
                return Ok(message);
            }
        }
    }

    /// Parses the chunk header at the front of the buffer without consuming
    /// it: the chunk stream's state as it will be once this chunk is taken.
    fn peek_chunk_header(&self) -> Result<Option<ParsedChunk>, ChunkError> {
        let b = &self.buf[..];
        let Some(&first) = b.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3f {
            0 => match b.get(1) {
                Some(&x) => (64 + u32::from(x), 2),
                None => return Ok(None),
            },
            1 => match (b.get(1), b.get(2)) {
                (Some(&lo), Some(&hi)) => (64 + u32::from(lo) + (u32::from(hi) << 8), 3),
                _ => return Ok(None),
            },
            id => (u32::from(id), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(fmt)];
        let Some(h) = b.get(pos..pos + header_len) else {
            return Ok(None);
        };
        pos += header_len;
        let be24 = |x: &[u8]| (u32::from(x[0]) << 16) | (u32::from(x[1]) << 8) | u32::from(x[2]);

        let old = match self.streams.get(&csid) {
            Some(old) => old,
            None if fmt != 0 => return Err(ChunkError::NoPreviousHeader { csid, fmt }),
            None if self.streams.len() >= MAX_CHUNK_STREAMS => {
                return Err(ChunkError::TooManyChunkStreams);
            }
            None => &ChunkStream::default(),
        };
        let mut new = ChunkStream {
            timestamp: old.timestamp,
            delta: old.delta,
            length: old.length,
            type_id: old.type_id,
            stream_id: old.stream_id,
            extended: old.extended,
            partial: None,
        };
        let ts_field = (fmt < 3).then(|| be24(h));
        if let Some(field) = ts_field {
            new.extended = field == EXTENDED;
        }
        let ext = if new.extended {
            let Some(x) = b.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some(u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        } else {
            None
        };
        // A fmt 3 chunk continues a half-received message; any other header
        // starts a new one (abandoning a half-received one, as other
        // implementations do).
        let continuation = fmt == 3 && old.partial.is_some();
        if fmt < 2 {
            new.length = be24(&h[3..6]) as usize;
            new.type_id = h[6];
        }
        // Checked for every header, so a lowered limit also applies to
        // fmt 2/3 chunks reusing an earlier length.
        if new.length > self.limits.max_message_len && !continuation {
            return Err(ChunkError::MessageOverLimit {
                len: new.length,
                limit: self.limits.max_message_len,
            });
        }
        if fmt == 0 {
            new.stream_id = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
        }
        if !continuation {
            let field = ext.or(ts_field).unwrap_or(old.delta);
            new.timestamp = match fmt {
                0 => field,
                _ => old.timestamp.wrapping_add(field),
            };
            new.delta = field;
        }
        Ok(Some(ParsedChunk {
            csid,
            header_len: pos,
            continuation,
            state: new,
        }))
    }
}

struct ParsedChunk {
    csid: u32,
    header_len: usize,
    continuation: bool,
    state: ChunkStream,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(type_id: u8, timestamp: u32, len: usize) -> Message {
        Message {
            type_id,
            stream_id: 1,
            timestamp,
            payload: Bytes::from((0..len).map(|i| (i * 7) as u8).collect::<Vec<_>>()),
        }
    }

    /// Writes with one writer, reads back byte by byte and in one go.
    fn round_trip(chunk_size: u32, csid: u32, messages: &[Message]) {
        let mut w = ChunkWriter::default();
        w.set_chunk_size(chunk_size).unwrap();
        let mut wire = BytesMut::new();
        for m in messages {
            w.write(csid, m, &mut wire).unwrap();
        }
        for step in [1, 7, wire.len()] {
            let mut r = ChunkReader::default();
            r.set_chunk_size(chunk_size).unwrap();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                r.push(piece);
                while let Some(m) = r.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(
                got, messages,
                "chunk size {chunk_size}, fed {step} at a time"
            );
        }
    }

    #[test]
    fn messages_larger_than_the_chunk_size() {
        round_trip(
            128,
            4,
            &[
                msg(9, 0, 1000),
                msg(9, 33, 128),
                msg(9, 66, 129),
                msg(9, 99, 0),
            ],
        );
        round_trip(4096, 6, &[msg(8, 5, 20_000), msg(8, 26, 3)]);
        round_trip(128, 300, &[msg(20, 0, 300)]); // 3-byte basic header
        round_trip(128, 70, &[msg(20, 0, 300)]); // 2-byte basic header
    }

    #[test]
    fn extended_timestamps_repeat_in_continuations() {
        let big = msg(9, 0x0100_0000, 300);
        round_trip(
            128,
            4,
            &[msg(9, 0xff_fffe, 10), big.clone(), msg(9, 0xff_ffff, 300)],
        );

        let mut wire = BytesMut::new();
        ChunkWriter::default().write(4, &big, &mut wire).unwrap();
        // fmt 0 header with 0xFFFFFF, then the 4-byte timestamp…
        assert_eq!(&wire[..4], [0x04, 0xff, 0xff, 0xff]);
        assert_eq!(&wire[12..16], [0x01, 0, 0, 0]);
        // …and again after each fmt 3 basic header.
        let cont = 16 + 128;
        assert_eq!(&wire[cont..cont + 5], [0xc4, 0x01, 0, 0, 0]);
        assert_eq!(wire.len(), 16 + 300 + 2 * 5);
    }

    #[test]
    fn reads_compressed_headers() {
        // fmt 0 on csid 3, then fmt 1 (new length, delta 10), fmt 2 (delta 5),
        // fmt 3 (new message, same delta 5).
        let mut wire = vec![0x03, 0, 0, 100, 0, 0, 2, 20, 0, 0, 0, 0, 0xaa, 0xbb];
        wire.extend_from_slice(&[0x43, 0, 0, 10, 0, 0, 1, 20, 0xcc]);
        wire.extend_from_slice(&[0x83, 0, 0, 5, 0xdd]);
        wire.extend_from_slice(&[0xc3, 0xee]);
        let mut r = ChunkReader::default();
        r.push(&wire);
        let mut got = Vec::new();
        while let Some(m) = r.next_message().unwrap() {
            got.push((m.timestamp, m.payload.to_vec()));
        }
        assert_eq!(
            got,
            vec![
                (100, vec![0xaa, 0xbb]),
                (110, vec![0xcc]),
                (115, vec![0xdd]),
                (120, vec![0xee]),
            ]
        );
    }

    #[test]
    fn protocol_errors() {
        let mut r = ChunkReader::default();
        r.push(&[0x43, 0, 0, 0, 0, 0, 1, 20, 0]);
        assert_eq!(
            r.next_message(),
            Err(ChunkError::NoPreviousHeader { csid: 3, fmt: 1 })
        );
        assert!(r.set_chunk_size(0).is_err());
        let mut r = ChunkReader::default();
        for csid in 2..=70u32 {
            let mut w = BytesMut::new();
            ChunkWriter::default()
                .write(csid, &msg(20, 0, 200), &mut w)
                .unwrap();
            // Only the first chunk: leaves a partial message per csid.
            let basic_header = if csid < 64 { 1 } else { 2 };
            r.push(&w[..basic_header + 11 + 128]);
        }
        let mut result = Ok(None);
        for _ in 0..70 {
            result = r.next_message();
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ChunkError::TooManyChunkStreams));
        let big = msg(9, 0, MAX_MESSAGE_LEN + 1);
        assert_eq!(
            ChunkWriter::default().write(4, &big, &mut BytesMut::new()),
            Err(ChunkError::MessageTooLarge(MAX_MESSAGE_LEN + 1))
        );
    }

    #[test]
    fn limits_bound_what_the_peer_can_make_us_hold() {
        let limits = ReaderLimits {
            max_message_len: 1000,
            max_partial_bytes: 1500,
        };
        // A header announcing more than the limit is refused before any of
        // the payload has arrived.
        let mut r = ChunkReader::with_limits(limits);
        r.push(&[0x04, 0, 0, 0, 0, 0x03, 0xe9, 9, 1, 0, 0, 0]);
        assert_eq!(
            r.next_message(),
            Err(ChunkError::MessageOverLimit {
                len: 1001,
                limit: 1000
            })
        );

        // The first `n` 128-byte chunks of a 1000-byte message on `csid`.
        let chunks = |csid: u32, n: usize| {
            let mut w = BytesMut::new();
            ChunkWriter::default()
                .write(csid, &msg(9, 0, 1000), &mut w)
                .unwrap();
            w[..12 + 128 + (n - 1) * 129].to_vec()
        };
        let mut r = ChunkReader::with_limits(limits);
        r.push(&chunks(4, 5));
        r.push(&chunks(5, 5));
        assert_eq!(r.next_message(), Ok(None)); // 1280 bytes held
        // Aborting a message frees its bytes…
        r.abort(4);
        r.push(&chunks(6, 5));
        assert_eq!(r.next_message(), Ok(None)); // 1280
        // …and so does a new message abandoning a half-received one.
        r.push(&chunks(5, 2));
        assert_eq!(r.next_message(), Ok(None)); // 640 + 256
        r.push(&chunks(7, 4));
        assert_eq!(r.next_message(), Ok(None)); // 1408
        r.push(&chunks(8, 1));
        assert_eq!(
            r.next_message(),
            Err(ChunkError::TooMuchPartialData { limit: 1500 })
        );
        assert_eq!(ChunkReader::default().limits(), ReaderLimits::default());
    }
}
