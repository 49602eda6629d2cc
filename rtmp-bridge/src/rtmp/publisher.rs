//! The tokio driver around [`Session`]: a TCP or TLS connection, bounded
//! waits, and an async API for one published stream.
//!
//! No background task: each send writes the session's output and, while
//! the socket is not writable, reads what the server sends (acks, pings),
//! so a server that talks while we write cannot deadlock us. Between sends,
//! server messages wait in the kernel buffer; a stream sends many times a
//! second, so pings are answered in time.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::SessionError;
use super::session::{Session, SessionConfig, SessionEvent};
use super::tls::{TlsConfig, TlsError};
use crate::flv::Metadata;
use crate::url::RtmpUrl;

/// Bound on each phase of connecting (TCP, TLS, RTMP up to
/// `NetStream.Publish.Start`) and on each write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RtmpPublisher::close`] waits for the server to hang up
/// after our FIN, which tells us it has finished with the stream (nginx
/// closes its recording then).
const CLOSE_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{target}: cannot connect: {source}")]
    Connect { target: String, source: io::Error },
    #[error("{target}: TLS handshake failed: {source}")]
    TlsHandshake { target: String, source: io::Error },
    #[error("{target}: {host:?} is not a valid TLS server name")]
    ServerName { target: String, host: String },
    #[error("connection error while {context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
    #[error("timed out after {0:?} while {1}")]
    Timeout(Duration, &'static str),
    #[error("the server closed the connection")]
    Eof,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// One stream being published to one RTMP server.
pub struct RtmpPublisher {
    session: Session,
    reader: ReadHalf<Box<dyn Transport>>,
    writer: WriteHalf<Box<dyn Transport>>,
    read_buf: Vec<u8>,
    io_timeout: Duration,
}

impl std::fmt::Debug for RtmpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmpPublisher")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl RtmpPublisher {
    /// Connects, handshakes and publishes `url.key`; returns once the
    /// server has answered `NetStream.Publish.Start`. `tls` applies to
    /// `rtmps://` URLs (`None`: the system's roots only).
    pub async fn connect(url: &RtmpUrl, tls: Option<TlsConfig>) -> Result<Self, PublishError> {
        Self::connect_with_timeout(url, tls, DEFAULT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with another bound on each phase and write.
    pub async fn connect_with_timeout(
        url: &RtmpUrl,
        tls: Option<TlsConfig>,
        limit: Duration,
    ) -> Result<Self, PublishError> {
        Self::connect_with_config(url, tls, limit, SessionConfig::new(url)).await
    }

    /// [`connect_with_timeout`](Self::connect_with_timeout) with the
    /// session's `connect` properties given (e.g. E-RTMP's `fourCcList`).
    pub async fn connect_with_config(
        url: &RtmpUrl,
        tls: Option<TlsConfig>,
        limit: Duration,
        session: SessionConfig,
    ) -> Result<Self, PublishError> {
        let target = url.to_string();
        let tcp = timeout(limit, TcpStream::connect((url.host.as_str(), url.port)))
            .await
            .map_err(|_| PublishError::Timeout(limit, "connecting"))?
            .map_err(|source| PublishError::Connect {
                target: target.clone(),
                source,
            })?;
        // Frames are written whole; Nagle would only add latency.
        tcp.set_nodelay(true).map_err(|source| PublishError::Io {
            context: "configuring the socket",
            source,
        })?;
        let stream: Box<dyn Transport> = if url.tls {
            let config = tls.unwrap_or_default().client_config()?;
            let name =
                ServerName::try_from(url.host.clone()).map_err(|_| PublishError::ServerName {
                    target: target.clone(),
                    host: url.host.clone(),
                })?;
            let tls_stream = timeout(limit, TlsConnector::from(config).connect(name, tcp))
                .await
                .map_err(|_| PublishError::Timeout(limit, "in the TLS handshake"))?
                .map_err(|source| PublishError::TlsHandshake { target, source })?;
            Box::new(tls_stream)
        } else {
            Box::new(tcp)
        };
        let (reader, writer) = tokio::io::split(stream);
        let mut publisher = RtmpPublisher {
            session: Session::new(session),
            reader,
            writer,
            read_buf: vec![0; 16 * 1024],
            io_timeout: limit,
        };
        timeout(limit, publisher.until_publishing())
            .await
            .map_err(|_| {
                PublishError::Timeout(limit, "waiting for the server to accept the publish")
            })??;
        Ok(publisher)
    }

    async fn until_publishing(&mut self) -> Result<(), PublishError> {
        loop {
            self.write_output().await?;
            if self.session.is_publishing() {
                return Ok(());
            }
            let n = self
                .reader
                .read(&mut self.read_buf)
                .await
                .map_err(|source| PublishError::Io {
                    context: "publishing",
                    source,
                })?;
            self.take_input(n)?;
        }
    }

    /// Hands `n` freshly read bytes to the session; 0 means end of stream.
    fn take_input(&mut self, n: usize) -> Result<(), PublishError> {
        if n == 0 {
            return Err(PublishError::Eof);
        }
        self.session.handle_input(&self.read_buf[..n])?;
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::Status {
                    level,
                    code,
                    description,
                } => {
                    tracing::debug!(%level, %code, %description, "RTMP status");
                }
                SessionEvent::Connected | SessionEvent::Publishing { .. } => {
                    tracing::debug!(?event, "RTMP");
                }
            }
        }
        Ok(())
    }

    /// Writes everything the session has queued, reading the server's
    /// messages whenever the socket is not writable.
    async fn write_output(&mut self) -> Result<(), PublishError> {
        let io_err = |source| PublishError::Io {
            context: "sending",
            source,
        };
        while let Some(mut buf) = self.session.poll_output() {
            while buf.has_remaining() {
                tokio::select! {
                    written = self.writer.write(&buf) => {
                        match written.map_err(io_err)? {
                            0 => return Err(io_err(io::ErrorKind::WriteZero.into())),
                            n => buf.advance(n),
                        }
                    }
                    read = self.reader.read(&mut self.read_buf) => {
                        let n = read.map_err(|source| PublishError::Io { context: "receiving", source })?;
                        self.take_input(n)?;
                    }
                }
            }
        }
        self.writer.flush().await.map_err(io_err)
    }

    /// Reads whatever the server has sent without waiting for more.
    async fn read_available(&mut self) -> Result<(), PublishError> {
        loop {
            let read = tokio::select! {
                biased;
                read = self.reader.read(&mut self.read_buf) => read,
                _ = std::future::ready(()) => return Ok(()),
            };
            let n = read.map_err(|source| PublishError::Io {
                context: "receiving",
                source,
            })?;
            self.take_input(n)?;
        }
    }

    async fn pump(&mut self) -> Result<(), PublishError> {
        let limit = self.io_timeout;
        timeout(limit, async {
            self.read_available().await?;
            self.write_output().await
        })
        .await
        .map_err(|_| PublishError::Timeout(limit, "sending (the server stopped reading)"))?
    }

    /// One FLV video tag body (see [`crate::flv`]) at `timestamp_ms`.
    pub async fn send_video(&mut self, timestamp_ms: u32, body: Bytes) -> Result<(), PublishError> {
        self.session.send_video(timestamp_ms, body)?;
        self.pump().await
    }

    /// One FLV audio tag body at `timestamp_ms`.
    pub async fn send_audio(&mut self, timestamp_ms: u32, body: Bytes) -> Result<(), PublishError> {
        self.session.send_audio(timestamp_ms, body)?;
        self.pump().await
    }

    /// `@setDataFrame onMetaData`; send it before the first media.
    pub async fn send_metadata(&mut self, metadata: &Metadata) -> Result<(), PublishError> {
        self.session.send_metadata(metadata)?;
        self.pump().await
    }

    /// Bytes written to the server so far, RTMP framing included.
    pub fn bytes_sent(&self) -> u64 {
        self.session.bytes_sent()
    }

    /// Unpublishes (`FCUnpublish`, `deleteStream`), closes our side, and
    /// waits briefly for the server to hang up, so that when this returns
    /// the server has finished with the stream.
    pub async fn close(mut self) -> Result<(), PublishError> {
        self.session.close()?;
        self.pump().await?;
        let limit = self.io_timeout;
        timeout(limit, self.writer.shutdown())
            .await
            .map_err(|_| PublishError::Timeout(limit, "closing"))?
            .map_err(|source| PublishError::Io {
                context: "closing",
                source,
            })?;
        // Whatever arrives now is of no interest; the end of the stream is.
        let drain = async {
            loop {
                match self.reader.read(&mut self.read_buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        if timeout(CLOSE_WAIT, drain).await.is_err() {
            tracing::debug!("RTMP server did not close the connection after unpublish");
        }
        Ok(())
    }
}
