//! A stand-alone WHIP publisher of synthetic H264 + Opus, for tests that
//! need a publisher in its own process (to kill it without a goodbye).
//!
//! Usage: `publish <gateway base URL> <stream> <seconds> [gop seconds]`

use std::time::Duration;

use anyhow::{Context, bail};
use whipcord_tests::client::{PublishOptions, Publisher};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        bail!("usage: publish <base-url> <stream> <seconds> [gop-seconds]");
    }
    let base = &args[1];
    if !(base.starts_with("http://127.") || base.starts_with("http://localhost")) {
        bail!("refusing a non-loopback gateway: {base}");
    }
    let seconds: u64 = args[3].parse().context("seconds")?;
    let gop: f64 = args.get(4).map(|g| g.parse()).transpose()?.unwrap_or(1.0);
    let publisher = Publisher::connect(base, &args[2], PublishOptions::default()).await?;
    println!("publishing");
    publisher
        .run(Duration::from_secs(seconds), Duration::from_secs_f64(gop))
        .await?;
    publisher.delete().await?;
    Ok(())
}
