//! `whipcord`: the gateway binary and composition root.

mod auth;
mod bridge;
mod config;
mod control;
#[cfg(test)]
mod database_upgrade;
mod http;
mod hub;
mod ingest;
mod media;
mod recording;
mod sdpfrag;
mod signal;
mod stream_name;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{Cli, Config};
use crate::signal::Command;

fn main() -> anyhow::Result<()> {
    ignore_file_size_signal();
    let cli = Cli::parse();
    let config = Config::load(&cli).context("loading configuration")?;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    // The first certificate is loaded (or made) before anything starts: a
    // bad certificate file stops the gateway here, not at the first client.
    let tls = tls::Tls::from_config(&config).context("setting up HTTPS")?;

    // Recordings run on their own runtime: disk writes never delay the
    // media thread or the HTTP workers.
    let recorder_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("whipcord-recorder")
        .enable_all()
        .build()
        .context("starting the recorder runtime")?;
    let recordings = recording::Recordings::open(config.clone(), recorder_runtime.handle().clone())
        .context("opening the recordings catalog")?;
    // Restream connections get their own runtime too: a destination's
    // network trouble never competes with the recorder's disk writes.
    let bridge_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("whipcord-bridge")
        .enable_all()
        .build()
        .context("starting the bridge runtime")?;
    let bridge = bridge::Bridge::new(config.clone(), bridge_runtime.handle().clone());
    // On-demand RTSP sources connect while the media plane counts
    // consumers for them (sources register as they start).
    let demand = ingest::demand::Demand::default();
    let (media, media_thread, media_addr) = media::start(
        config.clone(),
        recordings.clone(),
        bridge.clone(),
        demand.clone(),
    )
    .context("starting the media plane")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(async {
        let sources = ingest::rtsp::Sources::start(&config, media.clone(), demand);
        let control = Arc::new(control::GatewayControl::new(
            media.clone(),
            recordings.clone(),
            bridge.clone(),
            sources.clone(),
        ));
        let admin = web_admin::Admin::open(
            &config.data_dir.join(recording::CATALOG_FILE),
            web_admin::AdminConfig {
                admin_password: config.admin_password.clone(),
                api_token: config.api_token.clone(),
                metrics_token: config.metrics_token.clone(),
                session_idle: Duration::from_secs(config.admin_session_idle_mins * 60),
                secure_cookies: config.tls_enabled(),
            },
            control,
        )
        .await
        .context("opening the admin database")?;
        let admin = Arc::new(admin);
        let state = Arc::new(http::AppState {
            config: config.clone(),
            media: media.clone(),
            recordings: recordings.clone(),
            bridge: bridge.clone(),
            admin: admin.clone(),
        });
        if config.rtmp {
            start_rtmp_ingest(&config, &media, &admin).await?;
        }
        let tls_config = tls
            .as_ref()
            .map(tls::Tls::server_config)
            .transpose()
            .context("configuring TLS")?;
        let server = http::server(state, tls_config).context("binding the HTTP listener")?;
        let handle = server.handle();
        if let Some(tls) = &tls {
            // Certificate reloads (SIGHUP, changed files) or ACME renewal.
            tls.spawn_tasks();
        }
        let redirect = match config.http_redirect_listen {
            Some(addr) => Some(
                tls::redirect::server(addr, config.http_listen.port())
                    .context("binding the HTTP redirect listener")?,
            ),
            None => None,
        };
        let redirect_handle = redirect.as_ref().map(|r| r.handle());
        if let Some(redirect) = redirect {
            tokio::spawn(redirect);
        }
        info!(http = %config.http_listen, media = %media_addr, "whipcord is serving");
        let server_task = tokio::spawn(server);
        shutdown_signal().await;
        info!("shutting down");
        // Cameras get their TEARDOWN, and their streams end like any
        // publisher's.
        sources.shutdown(Duration::from_secs(3)).await;
        if let Err(err) = media.request(|reply| Command::Shutdown { reply }).await {
            warn!("media plane shutdown: {err}");
        }
        // The streams have ended; let every recording finish its file.
        recordings.wait_idle(Duration::from_secs(10)).await;
        let bridge_done = bridge.clone();
        let _ =
            tokio::task::spawn_blocking(move || bridge_done.shutdown(Duration::from_secs(5))).await;
        if let Some(redirect) = redirect_handle {
            redirect.stop(false).await;
        }
        handle.stop(true).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), server_task).await;
        anyhow::Ok(())
    })?;
    recorder_runtime.shutdown_timeout(Duration::from_secs(2));
    bridge_runtime.shutdown_timeout(Duration::from_secs(2));
    if media_thread.join().is_err() {
        warn!("media thread panicked");
    }
    info!("bye");
    Ok(())
}

/// Listens for RTMP publishers. The default port may be taken by another
/// RTMP server on the machine; that costs only RTMP ingest, said in the
/// log. A port the operator chose must work.
async fn start_rtmp_ingest(
    config: &Arc<Config>,
    media: &http::MediaHandle,
    admin: &Arc<web_admin::Admin>,
) -> anyhow::Result<()> {
    let listener = match tokio::net::TcpListener::bind(config.rtmp_listen).await {
        Ok(listener) => listener,
        Err(err) if config.rtmp_listen == Config::default().rtmp_listen => {
            warn!(address = %config.rtmp_listen, "RTMP ingest disabled: cannot listen: {err}");
            return Ok(());
        }
        Err(err) => {
            return Err(err).with_context(|| format!("binding RTMP on {}", config.rtmp_listen));
        }
    };
    let address = listener.local_addr().context("RTMP listener address")?;
    info!(rtmp = %address, "RTMP ingest listening");
    let ingest = Arc::new(ingest::rtmp::RtmpIngest::new(
        config.clone(),
        media.clone(),
        admin.clone(),
    ));
    tokio::spawn(ingest.serve(listener));
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            warn!("cannot listen for SIGTERM: {err}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A write past the file-size limit (`ulimit -f`, quotas on some systems)
/// raises SIGXFSZ, whose default action kills the process: every stream
/// and every other recording would go down with one full file. Ignored,
/// the write fails with EFBIG instead, and only that recording ends.
fn ignore_file_size_signal() {
    // SAFETY: installs SIG_IGN for one signal before any thread exists;
    // no handler code runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
