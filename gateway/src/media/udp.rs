//! The one UDP socket every WebRTC peer shares.
//!
//! `quinn-udp` gives us `recvmmsg` batching (and GRO) on receive and, more
//! importantly, each datagram's destination address: ICE pairs a request with
//! the local candidate it was sent to, so with a wildcard bind we must know
//! which of our addresses the peer used.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tracing::{info, warn};

/// Datagrams read per `recvmmsg` call.
pub const BATCH: usize = 32;
/// Largest datagram we accept; WebRTC media stays well under a 1500 MTU, and
/// GRO may coalesce several datagrams into one buffer.
pub const DATAGRAM_BUF: usize = 64 * 1024;

pub struct MediaSocket {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
}

impl MediaSocket {
    /// Binds the socket on the caller's thread, so a busy port is reported
    /// before the gateway claims to be up.
    pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// Wraps a bound socket; must run inside the media thread's runtime.
    pub fn new(std_socket: std::net::UdpSocket, buffer_bytes: usize) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&std_socket))?;
        // A keyframe fanned out to hundreds of viewers is a burst the default
        // 208 KiB queues cannot hold; the kernel caps these at rmem_max /
        // wmem_max unless we are privileged, so report what we actually got.
        for (what, result) in [
            (
                "receive",
                state.set_recv_buffer_size(UdpSockRef::from(&std_socket), buffer_bytes),
            ),
            (
                "send",
                state.set_send_buffer_size(UdpSockRef::from(&std_socket), buffer_bytes),
            ),
        ] {
            if let Err(err) = result {
                warn!("cannot set UDP {what} buffer to {buffer_bytes} bytes: {err}");
            }
        }
        let sock_ref = socket2::SockRef::from(&std_socket);
        if sock_ref.recv_buffer_size().unwrap_or(0) < buffer_bytes {
            // Privileged processes may exceed rmem_max.
            let _ = set_force_buffers(&std_socket, buffer_bytes);
        }
        info!(
            recv = sock_ref.recv_buffer_size().unwrap_or(0),
            send = sock_ref.send_buffer_size().unwrap_or(0),
            "media socket buffers"
        );
        let local = std_socket.local_addr()?;
        let socket = tokio::net::UdpSocket::from_std(std_socket)?;
        Ok(Self {
            socket,
            state,
            local,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits until the socket is readable, then reads up to `bufs.len()`
    /// datagrams into `bufs`/`meta`; returns how many entries were filled.
    /// An entry may hold several GRO-coalesced datagrams of `stride` bytes.
    pub async fn recv_batch(
        &self,
        bufs: &mut [Vec<u8>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        loop {
            self.socket.readable().await?;
            let result = self.socket.try_io(Interest::READABLE, || {
                let mut slices: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                self.state
                    .recv(UdpSockRef::from(&self.socket), &mut slices, meta)
            });
            match result {
                Ok(count) => return Ok(count),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Sends without waiting. A full send queue drops the datagram, exactly
    /// as a congested link would; the caller counts it.
    pub fn send(&self, to: SocketAddr, src_ip: Option<IpAddr>, data: &[u8]) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip,
        };
        self.state
            .try_send(UdpSockRef::from(&self.socket), &transmit)
    }
}

fn set_force_buffers(socket: &std::net::UdpSocket, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc_int(bytes);
    for opt in [SO_RCVBUFFORCE, SO_SNDBUFFORCE] {
        // SAFETY: setsockopt with a valid fd and a pointer to a live c_int.
        let rc = unsafe {
            setsockopt(
                socket.as_raw_fd(),
                SOL_SOCKET,
                opt,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn libc_int(bytes: usize) -> i32 {
    i32::try_from(bytes).unwrap_or(i32::MAX)
}

const SOL_SOCKET: i32 = 1;
const SO_SNDBUFFORCE: i32 = 32;
const SO_RCVBUFFORCE: i32 = 33;

unsafe extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const std::ffi::c_void, len: u32) -> i32;
}
