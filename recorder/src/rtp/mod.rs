//! RTP → frames: the first stage of every recording and bridge.
//!
//! Packets go through a [`ReorderBuffer`] (sequence order, bounded wait for
//! late or retransmitted packets, explicit gaps) and then a
//! [`FrameAssembler`] (one codec frame per RTP timestamp, depacketized,
//! never emitted broken: after a gap it waits for the next keyframe), and
//! video that reorders frames gets decode times from [`DecodeTimes`].
//!
//! [`packetize`] goes the other way, for media that reaches the gateway as
//! frames (RTMP ingest, RTSP sources once depacketized).

mod aac;
mod assemble;
mod decode_times;
pub mod packetize;
mod reorder;
mod unwrap;

pub use assemble::{AssembleError, Frame, FrameAssembler};
pub use decode_times::{DecodeTimes, UNKNOWN_DEPTH};
pub use reorder::{Released, ReorderBuffer};
pub use unwrap::{SeqUnwrapper, TimestampUnwrapper};
