//! Whipcord's end-to-end tests against the real gateway binary, with real
//! peers, FFmpeg, nginx-rtmp and pebble.
//!
//! One test binary for all of them: each would otherwise link webrtc and
//! FFmpeg on its own, which made the release build of the test suite
//! several times slower. A test is named by its module, e.g.
//! `cargo nextest run --release -p whipcord-tests -E 'test(/^recording::/)'`
//! or simply `cargo nextest run --release -p whipcord-tests recording::`.
//! nextest still runs every test in a process of its own.

mod admin_api;
mod fanout;
mod hls;
mod http_conformance;
mod lifecycle;
mod obs_simulcast;
mod recording;
mod restream;
mod rtmp_ingest;
mod rtsp_ingest;
mod tls;
