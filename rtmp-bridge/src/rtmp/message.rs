//! RTMP message types and the small protocol-control and command messages
//! the client and the ingest server send.

use bytes::Bytes;

use super::chunk::Message;
use crate::amf0::{Amf0Value, encode_all};

pub const SET_CHUNK_SIZE: u8 = 1;
pub const ABORT: u8 = 2;
pub const ACKNOWLEDGEMENT: u8 = 3;
pub const USER_CONTROL: u8 = 4;
pub const WINDOW_ACK_SIZE: u8 = 5;
pub const SET_PEER_BANDWIDTH: u8 = 6;
pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;
pub const DATA_AMF3: u8 = 15;
pub const COMMAND_AMF3: u8 = 17;
pub const DATA_AMF0: u8 = 18;
pub const COMMAND_AMF0: u8 = 20;
/// Several FLV tags in one message (servers relaying streams send them).
pub const AGGREGATE: u8 = 22;

/// User control event types.
pub const USER_STREAM_BEGIN: u16 = 0;
pub const USER_PING_REQUEST: u16 = 6;
pub const USER_PING_RESPONSE: u16 = 7;

/// Chunk stream ids we send on: protocol control must use 2; the rest are
/// conventions (one per kind so a big video frame never delays a command).
pub const CSID_CONTROL: u32 = 2;
pub const CSID_COMMAND: u32 = 3;
pub const CSID_VIDEO: u32 = 4;
pub const CSID_DATA: u32 = 5;
pub const CSID_AUDIO: u32 = 6;

fn control(type_id: u8, payload: Vec<u8>) -> Message {
    Message {
        type_id,
        stream_id: 0,
        timestamp: 0,
        payload: Bytes::from(payload),
    }
}

pub fn set_chunk_size(size: u32) -> Message {
    control(SET_CHUNK_SIZE, (size & 0x7fff_ffff).to_be_bytes().to_vec())
}

pub fn acknowledgement(bytes_received: u32) -> Message {
    control(ACKNOWLEDGEMENT, bytes_received.to_be_bytes().to_vec())
}

pub fn window_ack_size(size: u32) -> Message {
    control(WINDOW_ACK_SIZE, size.to_be_bytes().to_vec())
}

/// SetPeerBandwidth with limit type 2 (dynamic), what servers send after
/// `connect`.
pub fn set_peer_bandwidth(size: u32) -> Message {
    let mut p = size.to_be_bytes().to_vec();
    p.push(2);
    control(SET_PEER_BANDWIDTH, p)
}

/// User control StreamBegin: the stream is ready (sent before
/// `NetStream.Publish.Start`).
pub fn stream_begin(stream_id: u32) -> Message {
    let mut p = USER_STREAM_BEGIN.to_be_bytes().to_vec();
    p.extend_from_slice(&stream_id.to_be_bytes());
    control(USER_CONTROL, p)
}

pub fn ping_response(timestamp: u32) -> Message {
    let mut p = USER_PING_RESPONSE.to_be_bytes().to_vec();
    p.extend_from_slice(&timestamp.to_be_bytes());
    control(USER_CONTROL, p)
}

/// An AMF0 command: name, transaction id, then the arguments (the first of
/// which is the command object, or null).
pub fn command(stream_id: u32, name: &str, transaction: f64, args: &[Amf0Value]) -> Message {
    let mut values = vec![Amf0Value::str(name), Amf0Value::Number(transaction)];
    values.extend_from_slice(args);
    Message {
        type_id: COMMAND_AMF0,
        stream_id,
        timestamp: 0,
        payload: Bytes::from(encode_all(&values)),
    }
}

/// Reads a big-endian u32 at the start of a control message's payload.
pub fn read_u32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}
