//! Our own RTMP (see ARCHITECTURE.md for why not a crate). Shared
//! sans-IO protocol parts (`handshake`, `chunk`, `message`); the publishing
//! client (`session`, driven over TCP or TLS by `publisher`, `tls`); and the
//! ingest server for one inbound publisher (`server`, driven over TCP by
//! `ingest`).

pub mod chunk;
pub mod handshake;
pub mod ingest;
pub mod message;
pub mod publisher;
pub mod server;
pub mod session;
pub mod tls;

use thiserror::Error;

pub use chunk::{ChunkError, ChunkReader, ChunkWriter, Message, ReaderLimits};
pub use handshake::HandshakeError;
pub use ingest::{IngestConfig, IngestConnection, IngestError};
pub use publisher::{PublishError, RtmpPublisher};
pub use server::{
    PublishRequest, ServerConfig, ServerError, ServerEvent, ServerSession, ServerState,
};
pub use session::{Session, SessionConfig, SessionEvent, SessionState};
pub use tls::{TlsConfig, TlsError};

use crate::amf0::Amf0Error;

impl From<HandshakeError> for SessionError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Version(v) => SessionError::Version(v),
        }
    }
}

/// Why the RTMP session ended.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("handshake: the server speaks RTMP version {0}, not 3")]
    Version(u8),
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("command from the server: {0}")]
    Amf0(#[from] Amf0Error),
    /// The server said no; `code` is its onStatus/_error code, e.g.
    /// `NetStream.Publish.BadName` (stream key in use or wrong).
    #[error("{command} refused by the server: {code}{}", if description.is_empty() { String::new() } else { format!(" ({description})") })]
    Rejected {
        command: &'static str,
        code: String,
        description: String,
    },
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("the server closed the connection")]
    ClosedByServer,
    #[error("media sent before the server accepted the publish")]
    NotPublishing,
}
