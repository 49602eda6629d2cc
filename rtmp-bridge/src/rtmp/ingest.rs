//! The tokio driver around [`ServerSession`]: one inbound publisher over
//! TCP, with bounded waits.
//!
//! Pull-based, like [`super::publisher`]: the owner loops on
//! [`IngestConnection::next_event`] and answers a
//! [`ServerEvent::PublishRequest`] with [`IngestConnection::accept`] or
//! [`IngestConnection::reject`] before asking for the next event. No task,
//! no channel: while the owner is busy (checking a key, feeding a slow
//! sink) nothing is read, and TCP flow control holds the publisher, so
//! memory stays bounded by the session's limits.
//!
//! ```no_run
//! # async fn serve(stream: tokio::net::TcpStream) -> Result<(), rtmp_bridge::rtmp::IngestError> {
//! use rtmp_bridge::rtmp::{IngestConfig, IngestConnection, ServerEvent};
//! let mut conn = IngestConnection::new(stream, IngestConfig::default());
//! while let Some(event) = conn.next_event().await? {
//!     match event {
//!         ServerEvent::PublishRequest(request) if request.stream_name() == "cam" => {
//!             conn.accept().await?
//!         }
//!         ServerEvent::PublishRequest(_) => return conn.reject("unknown stream").await,
//!         _media => { /* hand on */ }
//!     }
//! }
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::server::{ServerConfig, ServerError, ServerEvent, ServerSession, ServerState};

/// How long [`IngestConnection::reject`] waits for the publisher to hang
/// up after our FIN: closing with its bytes unread would reset the
/// connection, and the reset can destroy the `onStatus` that says why.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
const READ_BUF: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub server: ServerConfig,
    /// From the TCP connection to the publish request: handshake,
    /// `connect`, `createStream`, `publish`. Encoders take milliseconds; a
    /// slow peer only holds a socket.
    pub setup_timeout: Duration,
    /// Longest silence from the publisher once its publish is accepted.
    /// Encoders send audio every ~20 ms and video every frame.
    pub idle_timeout: Duration,
    /// Bound on each write to the publisher.
    pub write_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            server: ServerConfig::default(),
            setup_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Error)]
pub enum IngestError {
    #[error("connection error while {context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
    #[error("timed out after {0:?} {1}")]
    Timeout(Duration, &'static str),
    #[error(transparent)]
    Session(#[from] ServerError),
    /// [`IngestConnection::next_event`] was called with a publish request
    /// unanswered.
    #[error("the publish request was not answered")]
    Unanswered,
}

/// One inbound RTMP connection.
pub struct IngestConnection {
    session: ServerSession,
    stream: TcpStream,
    peer: Option<SocketAddr>,
    config: IngestConfig,
    read_buf: Vec<u8>,
    /// The publish request must have come by then.
    setup_deadline: Instant,
    /// A publish was accepted: the idle timeout applies from now on.
    accepted: bool,
    /// `next_event` has returned the end (or an error).
    finished: bool,
}

impl std::fmt::Debug for IngestConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestConnection")
            .field("peer", &self.peer)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl IngestConnection {
    /// Starts the clock on `setup_timeout`; no I/O until
    /// [`next_event`](Self::next_event).
    pub fn new(stream: TcpStream, config: IngestConfig) -> Self {
        // Our writes are small answers that should leave at once; failing
        // to set the option only costs latency.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an RTMP ingest socket");
        }
        IngestConnection {
            session: ServerSession::new(config.server.clone()),
            peer: stream.peer_addr().ok(),
            stream,
            setup_deadline: Instant::now() + config.setup_timeout,
            config,
            read_buf: vec![0; READ_BUF],
            accepted: false,
            finished: false,
        }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The session, for its state, `app` and byte count.
    pub fn session(&self) -> &ServerSession {
        &self.session
    }

    /// The next event; `Ok(None)` once the publisher has hung up (after
    /// unpublishing or not) or was rejected. After `Ok(None)` or an error,
    /// always `Ok(None)`.
    pub async fn next_event(&mut self) -> Result<Option<ServerEvent>, IngestError> {
        if self.finished {
            return Ok(None);
        }
        let result = self.next_event_inner().await;
        if !matches!(result, Ok(Some(_))) {
            self.finished = true;
        }
        result
    }

    async fn next_event_inner(&mut self) -> Result<Option<ServerEvent>, IngestError> {
        loop {
            // Answers (pongs, acknowledgements) leave before the events
            // that came with them are handed out.
            self.write_output().await?;
            if let Some(event) = self.session.poll_event() {
                return Ok(Some(event));
            }
            match self.session.state() {
                ServerState::Closed => return Ok(None),
                ServerState::PublishRequested => return Err(IngestError::Unanswered),
                _ => {}
            }
            let (limit, what) = if self.accepted {
                (self.config.idle_timeout, "waiting for the publisher")
            } else {
                let left = self
                    .setup_deadline
                    .saturating_duration_since(Instant::now());
                (left, "before the publish request")
            };
            let n = match timeout(limit, self.stream.read(&mut self.read_buf)).await {
                Err(_) => {
                    let limit = if self.accepted {
                        limit
                    } else {
                        self.config.setup_timeout
                    };
                    return Err(IngestError::Timeout(limit, what));
                }
                Ok(Err(source)) => {
                    return Err(IngestError::Io {
                        context: "reading",
                        source,
                    });
                }
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                tracing::debug!(peer = ?self.peer, state = ?self.session.state(), "RTMP publisher hung up");
                return Ok(None);
            }
            self.session.push(&self.read_buf[..n])?;
        }
    }

    /// Accepts the pending publish request (`NetStream.Publish.Start`).
    pub async fn accept(&mut self) -> Result<(), IngestError> {
        self.session.accept()?;
        self.accepted = true;
        self.write_output().await
    }

    /// Refuses the pending publish request with `reason` and closes the
    /// connection once the publisher has read it (or after a short wait).
    pub async fn reject(&mut self, reason: &str) -> Result<(), IngestError> {
        self.session.reject(reason)?;
        self.finished = true;
        self.write_output().await?;
        self.close_gracefully().await;
        Ok(())
    }

    /// Writes what the session has queued. Our output is a few small
    /// messages per megabytes received, so it never fills the socket's send
    /// buffer while the publisher writes to us and we do not read.
    async fn write_output(&mut self) -> Result<(), IngestError> {
        let limit = self.config.write_timeout;
        while let Some(bytes) = self.session.poll_output() {
            timeout(limit, self.stream.write_all(&bytes))
                .await
                .map_err(|_| IngestError::Timeout(limit, "writing to the publisher"))?
                .map_err(|source| IngestError::Io {
                    context: "writing",
                    source,
                })?;
        }
        Ok(())
    }

    /// FIN, then read and drop until the peer closes, for at most
    /// [`CLOSE_WAIT`].
    async fn close_gracefully(&mut self) {
        let drain = async {
            if self.stream.shutdown().await.is_err() {
                return;
            }
            while let Ok(n) = self.stream.read(&mut self.read_buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        if timeout(CLOSE_WAIT, drain).await.is_err() {
            tracing::debug!(peer = ?self.peer, "RTMP publisher did not hang up after the rejection");
        }
    }
}
