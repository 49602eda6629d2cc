//! Whipcord's recorder: RTP → frames → WebM / MP4.
//!
//! - [`codec`]: what every consumer of RTP needs to know about a codec
//!   (its kind, where a keyframe starts);
//! - [`rtp`]: RTP packets → complete frames (reordering, loss handling,
//!   depacketizing);
//! - [`params`]: what a container needs to know about a video stream,
//!   read from its keyframes (dimensions, avcC/hvcC/vpcC/av1C);
//! - [`sync`]: one timeline for all tracks (sender reports), interleaving;
//! - [`pipeline`]: all of the above for one stream: hub RTP in, timed
//!   frames in time order out, in runs that start at a keyframe;
//! - [`webm`]: crash-tolerant WebM files (clusters written as they close);
//! - [`mp4`]: fragmented MP4 files (a fragment per second, flushed) and
//!   their repair after a crash;
//! - [`catalog`]: the SQLite index of recordings.

pub mod catalog;
pub mod codec;
pub mod mp4;
pub mod params;
pub mod pipeline;
pub mod rtp;
pub mod sync;
pub mod webm;
