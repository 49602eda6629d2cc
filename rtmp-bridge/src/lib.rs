//! Frames → FLV over RTMP/RTMPS (issue 5). HLS comes later.
//!
//! - [`url`]: `rtmp[s]://host[:port]/app/KEY` targets, key redacted in logs;
//! - [`amf0`]: the value encoding of RTMP commands and `onMetaData`;
//! - [`flv`]: FLV tag bodies (AVC/AAC sequence headers and frames, metadata);
//! - [`rtmp`]: our RTMP client, a sans-IO session plus a tokio publisher.

pub mod amf0;
pub mod flv;
pub mod rtmp;
pub mod target;
pub mod url;

pub use rtmp::{PublishError, RtmpPublisher, TlsConfig};
pub use url::{RtmpUrl, UrlError};
