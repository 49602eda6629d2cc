//! The HTTP surface: WHIP/WHEP resources, browser pages and the small JSON
//! API, all on one port. Handlers only translate HTTP to [`Command`]s for the
//! media plane; they never touch WebRTC state.

mod cors;
mod hls;
mod pages;
mod recordings;
mod resources;
mod restreams;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use tokio::sync::{mpsc, oneshot};

use crate::bridge::Bridge;
use crate::config::Config;
use crate::recording::Recordings;
use crate::signal::{Command, SignalError};

/// Largest SDP body accepted. Real offers are a few KiB; anything near this
/// is garbage or an attack and is refused with 413 before it is parsed.
pub const MAX_SDP_BYTES: usize = 64 * 1024;

/// How long a handler waits for the media plane before answering 503.
const MEDIA_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends commands to the media plane.
#[derive(Clone)]
pub struct MediaHandle {
    tx: mpsc::Sender<Command>,
}

impl MediaHandle {
    pub fn new(tx: mpsc::Sender<Command>) -> Self {
        Self { tx }
    }

    /// Sends a command that has no reply, waiting while the plane's queue
    /// is full (backpressure on the sender's own connection).
    pub async fn send(&self, command: Command) -> Result<(), SignalError> {
        self.tx
            .send(command)
            .await
            .map_err(|_| SignalError::ShuttingDown)
    }

    /// Sends the command built by `make` and waits for its reply.
    pub async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SignalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| SignalError::ShuttingDown)?;
        match tokio::time::timeout(MEDIA_REPLY_TIMEOUT, rx).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(SignalError::ShuttingDown),
            Err(_) => Err(SignalError::Internal("media plane did not answer".into())),
        }
    }
}

/// Shared state of every handler.
pub struct AppState {
    pub config: Arc<Config>,
    pub media: MediaHandle,
    pub recordings: Recordings,
    pub bridge: Bridge,
    pub admin: Arc<web_admin::Admin>,
}

/// Builds and binds the HTTP server (HTTPS with `tls`); the caller awaits
/// the returned server.
pub fn server(
    state: Arc<AppState>,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<actix_web::dev::Server> {
    let listen = state.config.http_listen;
    let admin = web::Data::from(state.admin.clone());
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(admin.clone())
            .app_data(web::PayloadConfig::new(MAX_SDP_BYTES))
            .wrap(actix_web::middleware::from_fn(cors::add_cors_headers))
            .wrap(actix_web::middleware::from_fn(
                web_admin::metrics::count_requests,
            ))
            .configure(web_admin::configure)
            .configure(resources::routes)
            .configure(pages::routes)
            .configure(recordings::routes)
            .configure(restreams::routes)
            .configure(hls::routes)
    })
    .workers(2)
    .shutdown_timeout(5)
    .disable_signals();
    // The same routes either way: TLS only changes how the port is bound.
    let server = match tls {
        Some(tls) => server.bind_rustls_0_23(listen, tls)?,
        None => server.bind(listen)?,
    }
    .run();
    Ok(server)
}
