//! RTP → frames: the first stage of every recording and bridge.
//!
//! Packets go through a [`ReorderBuffer`] (sequence order, bounded wait for
//! late or retransmitted packets, explicit gaps) and then a
//! [`FrameAssembler`] (one codec frame per RTP timestamp, depacketized,
//! never emitted broken: after a gap it waits for the next keyframe).

mod assemble;
mod reorder;
mod unwrap;

pub use assemble::{AssembleError, Frame, FrameAssembler};
pub use reorder::{Released, ReorderBuffer};
pub use unwrap::{SeqUnwrapper, TimestampUnwrapper};
