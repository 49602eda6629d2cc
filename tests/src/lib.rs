//! Test support for Whipcord's end-to-end tests: run the real gateway
//! binary, and talk to it with real WebRTC peers.

pub mod admin;
pub mod api;
pub mod bench;
pub mod client;
pub mod clip;
pub mod gateway;
pub mod media_file;
pub mod nginx;
pub mod offer;
pub mod probe;
pub mod procstat;
pub mod python;
pub mod rtsp;
pub mod synth;
pub mod tls;
