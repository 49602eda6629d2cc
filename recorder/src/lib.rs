//! Whipcord's recorder: RTP → frames → WebM / MP4.
//!
//! So far this crate holds the codec knowledge every consumer of RTP needs
//! (which codec a track carries, where a keyframe starts); the depacketizers
//! and container writers build on it.

pub mod codec;
