//! Whipcord's recorder: RTP → frames → WebM / MP4.
//!
//! - [`codec`]: what every consumer of RTP needs to know about a codec
//!   (its kind, where a keyframe starts);
//! - [`rtp`]: RTP packets → complete frames (reordering, loss handling,
//!   depacketizing);
//! - [`webm`]: crash-tolerant WebM files (live-mode segments);
//! - MP4 writers and the catalog come next (issue 3).

pub mod codec;
pub mod rtp;
pub mod webm;
