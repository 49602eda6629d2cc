//! The simple RTMP handshake. Client side: C0+C1 out, S0+S1+S2 in, C2 (an
//! echo of S1) out. Server side ([`ServerHandshake`]): C0+C1 in, S0+S1+S2
//! (S2 an echo of C1) out, C2 in. The FP9 digest variant is only needed for
//! RTMPE, which nobody we publish to requires; nginx-rtmp, YouTube and
//! Twitch accept the simple form, and FFmpeg, OBS (librtmp) and GStreamer
//! publish with it to a server whose S1 carries a zero version field.

use rand::RngCore;
use thiserror::Error;

/// RTMP protocol version in C0/S0.
pub const VERSION: u8 = 3;
/// Size of C1, S1, C2, S2.
pub const PACKET_LEN: usize = 1536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// 6 is RTMPE, `G`/`P` (71/80) an HTTP request on the RTMP port.
    #[error("the peer speaks RTMP version {0}, not 3")]
    Version(u8),
}

/// C0 + C1: version, 4 bytes time, 4 zero bytes, 1528 random bytes.
pub fn client_hello(rng: &mut impl RngCore) -> Vec<u8> {
    let mut out = vec![0u8; 1 + PACKET_LEN];
    out[0] = VERSION;
    rng.fill_bytes(&mut out[9..]);
    out
}

/// Waits for S0+S1+S2. Once they are all in, returns C2 and how many
/// bytes of `input` the handshake used; whatever follows is chunk data.
pub fn server_response(input: &[u8]) -> Result<Option<(Vec<u8>, usize)>, HandshakeError> {
    let Some(&version) = input.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(HandshakeError::Version(version));
    }
    let total = 1 + 2 * PACKET_LEN;
    if input.len() < total {
        return Ok(None);
    }
    // C2 echoes S1 (its time and random bytes).
    let c2 = input[1..1 + PACKET_LEN].to_vec();
    Ok(Some((c2, total)))
}

/// Where the server side of the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Collecting C0+C1 in `buf`.
    Hello,
    /// S0+S1+S2 produced; skipping this many more bytes of C2.
    Ack(usize),
    Done,
}

/// The server side of the simple handshake, sans-IO. Holds S1 and at most
/// C0+C1 (1537 bytes), whatever the peer sends.
pub struct ServerHandshake {
    stage: Stage,
    buf: Vec<u8>,
    /// S1, made up front so that no random generator is held (the
    /// thread-local one is not `Send`).
    s1: Vec<u8>,
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("stage", &self.stage)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

/// What one [`ServerHandshake::push`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProgress {
    /// Bytes of the input that belonged to the handshake; the rest (only
    /// once `done`) is chunk data.
    pub used: usize,
    /// S0+S1+S2 to send, once C0+C1 are in.
    pub reply: Option<Vec<u8>>,
    /// C2 has been received: RTMP chunks follow.
    pub done: bool,
}

impl ServerHandshake {
    /// S1 is our time (0: the spec allows any epoch), four zero bytes, and
    /// random bytes; the zero version field tells FP9-aware clients that
    /// this server does not do the digest handshake.
    pub fn new(rng: &mut impl RngCore) -> Self {
        let mut s1 = vec![0u8; PACKET_LEN];
        rng.fill_bytes(&mut s1[8..]);
        ServerHandshake {
            stage: Stage::Hello,
            buf: Vec::with_capacity(1 + PACKET_LEN),
            s1,
        }
    }

    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Takes handshake bytes from the front of `input`.
    ///
    /// S2 echoes C1 whole, which librtmp compares byte for byte. C2 is not
    /// checked: clients that attempted the digest variant send something
    /// other than S1, and nothing depends on it.
    pub fn push(&mut self, input: &[u8]) -> Result<ServerProgress, HandshakeError> {
        let mut progress = ServerProgress {
            used: 0,
            reply: None,
            done: false,
        };
        let mut rest = input;
        if self.stage == Stage::Hello {
            let Some(&version) = self.buf.first().or(rest.first()) else {
                return Ok(progress);
            };
            if version != VERSION {
                return Err(HandshakeError::Version(version));
            }
            let n = rest.len().min(1 + PACKET_LEN - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            progress.used += n;
            if self.buf.len() < 1 + PACKET_LEN {
                return Ok(progress);
            }
            let mut reply = Vec::with_capacity(1 + 2 * PACKET_LEN);
            reply.push(VERSION);
            reply.extend_from_slice(&self.s1);
            reply.extend_from_slice(&self.buf[1..]);
            progress.reply = Some(reply);
            self.buf = Vec::new();
            self.s1 = Vec::new();
            self.stage = Stage::Ack(PACKET_LEN);
        }
        if let Stage::Ack(left) = self.stage {
            let n = rest.len().min(left);
            progress.used += n;
            self.stage = if n == left {
                Stage::Done
            } else {
                Stage::Ack(left - n)
            };
        }
        progress.done = self.stage == Stage::Done;
        Ok(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_echo() {
        let hello = client_hello(&mut rand::rng());
        assert_eq!(hello.len(), 1537);
        assert_eq!(hello[0], 3);
        assert_eq!(&hello[5..9], [0, 0, 0, 0]);

        let mut s = vec![3u8];
        s.extend((0..PACKET_LEN).map(|i| i as u8));
        assert!(server_response(&s).unwrap().is_none());
        s.extend(std::iter::repeat_n(7u8, PACKET_LEN));
        s.push(0xaa); // the first chunk byte
        let (c2, used) = server_response(&s).unwrap().unwrap();
        assert_eq!(used, 1 + 2 * PACKET_LEN);
        assert_eq!(c2, s[1..1 + PACKET_LEN]);
        assert!(matches!(
            server_response(&[6]),
            Err(HandshakeError::Version(6))
        ));
    }

    /// C0+C1 as FFmpeg sends them: version, time, a non-zero Flash Player
    /// version (it offers the digest variant), random bytes.
    fn c0c1() -> Vec<u8> {
        let mut c = vec![3u8, 0, 0, 0, 9, 9, 0, 124, 2];
        c.extend((0..PACKET_LEN - 8).map(|i| (i * 13) as u8));
        c
    }

    #[test]
    fn server_answers_c1_and_skips_c2() {
        let c0c1 = c0c1();
        let mut rng = rand::rng();
        // Byte by byte: nothing until C1's last byte, then S0+S1+S2 at once.
        let mut h = ServerHandshake::new(&mut rng);
        for &b in &c0c1[..c0c1.len() - 1] {
            let p = h.push(&[b]).unwrap();
            assert_eq!((p.used, p.reply, p.done), (1, None, false));
        }
        let p = h.push(&c0c1[c0c1.len() - 1..]).unwrap();
        let reply = p.reply.expect("S0+S1+S2");
        assert_eq!(reply.len(), 1 + 2 * PACKET_LEN);
        assert_eq!(reply[0], VERSION);
        assert_eq!(&reply[1..9], [0; 8], "S1: time 0, zero version field");
        assert_eq!(&reply[1 + PACKET_LEN..], &c0c1[1..], "S2 echoes C1");

        // C2 and the first chunk bytes in one piece: the handshake takes
        // exactly C2.
        let mut rest = vec![0x55u8; PACKET_LEN];
        rest.extend_from_slice(&[0x03, 0, 0]);
        let p = h.push(&rest[..1000]).unwrap();
        assert_eq!((p.used, p.done), (1000, false));
        let p = h.push(&rest[1000..]).unwrap();
        assert_eq!((p.used, p.done, p.reply), (PACKET_LEN - 1000, true, None));
        assert!(h.is_done());
        // Done: takes nothing more.
        assert_eq!(h.push(&[1, 2]).unwrap().used, 0);

        // All in one go: C0+C1+C2 and a chunk byte.
        let mut all = c0c1.clone();
        all.extend_from_slice(&rest);
        let mut h = ServerHandshake::new(&mut rng);
        let p = h.push(&all).unwrap();
        assert_eq!((p.used, p.done), (1 + 2 * PACKET_LEN, true));
        assert!(p.reply.is_some());
    }

    #[test]
    fn server_refuses_other_versions() {
        let mut rng = rand::rng();
        // RTMPE, and an HTTP request on the RTMP port.
        for first in [&[6u8][..], &b"GET / HTTP/1.1\r\n"[..]] {
            assert_eq!(
                ServerHandshake::new(&mut rng).push(first),
                Err(HandshakeError::Version(first[0]))
            );
        }
        assert_eq!(
            ServerHandshake::new(&mut rng).push(&[]).unwrap().used,
            0,
            "no bytes, no verdict"
        );
    }
}
