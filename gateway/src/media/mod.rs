//! The media plane: one UDP socket, every peer connection, the hub.
//!
//! It runs on its own OS thread with a single-threaded tokio runtime, so the
//! per-packet path (socket → publisher peer → hub → each viewer peer →
//! socket) takes no locks and crosses no channels. HTTP handlers talk to it
//! through [`crate::signal::Command`]s.

mod demux;
mod egress;
mod peer;
mod plane;
mod rtcp_tap;
mod sdp_scan;
mod tcp;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tracing::info;

use crate::bridge::Bridge;
use crate::config::Config;
use crate::http::MediaHandle;
use crate::ingest::demand::Demand;
use crate::recording::Recordings;
use crate::signal::Command;

/// Starts the media thread; returns its command handle and the thread.
pub fn start(
    config: Arc<Config>,
    recordings: Recordings,
    bridge: Bridge,
    demand: Demand,
) -> anyhow::Result<(MediaHandle, JoinHandle<()>, SocketAddr)> {
    let socket_addr = config.media_listen;
    let std_socket = udp::MediaSocket::bind_std(socket_addr)?;
    let bound = std_socket.local_addr()?;
    let candidates = candidate_addresses(&config, bound);
    // ICE-TCP listens on the same port number as the media socket.
    let tcp_listener = if config.ice_tcp {
        match std::net::TcpListener::bind(bound).and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        }) {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::warn!(%bound, "ICE-TCP disabled: cannot listen on TCP: {err}");
                None
            }
        }
    } else {
        None
    };
    info!(%bound, ?candidates, "media socket ready");
    let (tx, rx) = mpsc::channel::<Command>(1024);
    let thread = std::thread::Builder::new()
        .name("whipcord-media".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    tracing::error!("cannot start media runtime: {err}");
                    return;
                }
            };
            runtime.block_on(async move {
                match plane::Plane::new(
                    config,
                    recordings,
                    bridge,
                    demand,
                    std_socket,
                    tcp_listener,
                    candidates,
                ) {
                    Ok(plane) => plane.run(rx).await,
                    Err(err) => tracing::error!("media plane failed to start: {err}"),
                }
            });
        })?;
    Ok((MediaHandle::new(tx), thread, bound))
}

/// The addresses put in our ICE candidates.
fn candidate_addresses(config: &Config, bound: SocketAddr) -> Vec<SocketAddr> {
    let port = bound.port();
    if !config.public_ip.is_empty() {
        return config
            .public_ip
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
    }
    if !config.candidate_ip.is_empty() {
        return config
            .candidate_ip
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
    }
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let want_v4 = bound.is_ipv4();
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    ips.retain(|ip| ip.is_ipv4() == want_v4 && !ip.is_multicast());
    // Routable addresses first: ICE tries candidates in priority order, and
    // remote browsers cannot reach our loopback address anyway.
    ips.sort_by_key(|ip| ip.is_loopback());
    ips.dedup();
    if ips.is_empty() {
        ips.push(if want_v4 {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}
