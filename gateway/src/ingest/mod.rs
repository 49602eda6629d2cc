//! Streams that arrive by RTMP (encoders push to us) or RTSP (we pull from
//! cameras). Each becomes a publisher in the media plane's hub like a WHIP
//! one: viewers, recordings, restreams and the admin panel see a stream
//! like any other.

pub mod clock;
pub mod decoder_config;
pub mod demand;
pub mod feed;
pub mod rtmp;
pub mod rtsp;
