//! ICE-TCP (RFC 6544): a passive TCP candidate on the media port, for
//! clients whose networks block UDP.
//!
//! Each accepted connection gets a reader and a writer task on the media
//! thread's runtime. Frames (RFC 4571: a 2-byte length, then one ICE, DTLS
//! or SRTP packet) go to the plane as [`TcpEvent`]s and are handled exactly
//! like UDP datagrams; what a peer sends back over TCP is queued to the
//! connection's writer. TCP adds head-of-line blocking, so this is a
//! fallback: UDP candidates have higher priority in every answer.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rtc::shared::tcp_framing::{TcpFrameDecoder, frame_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Connections open at once; more are refused (closed on accept).
const MAX_CONNECTIONS: usize = 4096;
/// Frames queued to a connection's writer before new ones are dropped.
const WRITE_QUEUE: usize = 512;
/// A connection must say something (a STUN check) within this time.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// What connections tell the plane.
pub enum TcpEvent {
    Opened {
        from: SocketAddr,
        writer: mpsc::Sender<Bytes>,
    },
    Frame {
        from: SocketAddr,
        local: SocketAddr,
        data: Vec<u8>,
    },
    Closed {
        from: SocketAddr,
    },
}

/// Accepts connections for as long as the plane listens.
pub async fn accept_loop(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                warn!("ICE-TCP accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(std::sync::atomic::Ordering::Relaxed) >= MAX_CONNECTIONS {
            debug!(%from, "ICE-TCP connection refused: too many open");
            continue;
        }
        debug!(%from, "ICE-TCP connection accepted");
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let events = events.clone();
        let open = open.clone();
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            serve(stream, from, local, events).await;
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

async fn serve(
    stream: TcpStream,
    from: SocketAddr,
    local: SocketAddr,
    events: mpsc::Sender<TcpEvent>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (writer_tx, mut writer_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    if events
        .send(TcpEvent::Opened {
            from,
            writer: writer_tx,
        })
        .await
        .is_err()
    {
        return;
    }
    // The plane drops its sender when no session claims the connection or
    // the session ends; the writer then finishes and the reader stops too.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let write_task = tokio::spawn(async move {
        while let Some(packet) = writer_rx.recv().await {
            if writer.write_all(&frame_packet(&packet)).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
        let _ = done_tx.send(());
    });
    let mut decoder = TcpFrameDecoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut first = true;
    loop {
        let limit = if first {
            FIRST_FRAME_TIMEOUT
        } else {
            Duration::from_secs(24 * 3600)
        };
        let read = tokio::select! {
            result = tokio::time::timeout(limit, reader.read(&mut buf)) => match result {
                Ok(result) => result,
                Err(_) => break,
            },
            _ = &mut done_rx => break,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        first = false;
        decoder.extend_from_slice(&buf[..n]);
        while let Some(data) = decoder.next_packet() {
            if events
                .send(TcpEvent::Frame { from, local, data })
                .await
                .is_err()
            {
                write_task.abort();
                return;
            }
        }
    }
    let _ = events.send(TcpEvent::Closed { from }).await;
    write_task.abort();
}
