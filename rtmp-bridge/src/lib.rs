//! Frames → FLV over RTMP/RTMPS, and LL-HLS (issue 5).
//!
//! - [`url`]: `rtmp[s]://host[:port]/app/KEY` targets, key redacted in logs;
//! - [`amf0`]: the value encoding of RTMP commands and `onMetaData`;
//! - [`flv`]: FLV tag bodies (AVC/AAC sequence headers and frames, metadata)
//!   and Enhanced RTMP ones (H265/AV1/VP9 video, Opus audio, by FourCC);
//! - [`rtmp`]: our RTMP client, a sans-IO session plus a tokio publisher;
//! - [`hls`]: a sans-IO LL-HLS muxer (fMP4 parts and segments) and the
//!   in-memory store the gateway serves `/hls/{stream}/…` from.

pub mod amf0;
pub mod flv;
pub mod hls;
pub mod rtmp;
pub mod target;
#[cfg(feature = "transcode")]
pub mod transcode;
pub mod url;

pub use rtmp::{PublishError, RtmpPublisher, TlsConfig};
pub use url::{RtmpUrl, UrlError};
