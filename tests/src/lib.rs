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

/// A fresh directory under the system temp dir, named
/// `whipcord-{what}-{pid}-{random}` so parallel tests never share one.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "whipcord-{what}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
