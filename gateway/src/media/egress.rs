//! Where a peer's outgoing packets go: the shared UDP socket, or the
//! ICE-TCP connection the peer came in on.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use bytes::Bytes;
use rtc::shared::TransportProtocol;
use tokio::sync::mpsc;

use super::udp::MediaSocket;

/// The transport a datagram arrived on; part of the demux key, since a UDP
/// and a TCP peer may share an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn protocol(self) -> TransportProtocol {
        match self {
            Transport::Udp => TransportProtocol::UDP,
            Transport::Tcp => TransportProtocol::TCP,
        }
    }
}

pub struct Egress {
    pub udp: Rc<MediaSocket>,
    /// Writer of each open ICE-TCP connection, by remote address.
    pub tcp: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
}

impl Egress {
    pub fn new(udp: MediaSocket) -> Self {
        Self {
            udp: Rc::new(udp),
            tcp: HashMap::new(),
        }
    }

    /// Sends without waiting; a full queue drops the packet like a
    /// congested link would.
    pub fn send(
        &self,
        protocol: TransportProtocol,
        to: SocketAddr,
        src_ip: Option<IpAddr>,
        data: &[u8],
    ) -> io::Result<()> {
        match protocol {
            TransportProtocol::TCP => {
                let writer = self
                    .tcp
                    .get(&to)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
                writer
                    .try_send(Bytes::copy_from_slice(data))
                    .map_err(|_| io::Error::from(io::ErrorKind::WouldBlock))
            }
            _ => self.udp.send(to, src_ip, data),
        }
    }
}
