//! The simple RTMP handshake, client side: C0+C1 out, S0+S1+S2 in, C2 (an
//! echo of S1) out. The FP9 digest variant is only needed for RTMPE, which
//! nobody we publish to requires; nginx-rtmp, YouTube and Twitch accept the
//! simple form.

use rand::RngCore;

use super::SessionError;

/// RTMP protocol version in C0/S0.
pub const VERSION: u8 = 3;
/// Size of C1, S1, C2, S2.
pub const PACKET_LEN: usize = 1536;

/// C0 + C1: version, 4 bytes time, 4 zero bytes, 1528 random bytes.
pub fn client_hello(rng: &mut impl RngCore) -> Vec<u8> {
    let mut out = vec![0u8; 1 + PACKET_LEN];
    out[0] = VERSION;
    rng.fill_bytes(&mut out[9..]);
    out
}

/// Waits for S0+S1+S2. Once they are all in, returns C2 and how many
/// bytes of `input` the handshake used; whatever follows is chunk data.
pub fn server_response(input: &[u8]) -> Result<Option<(Vec<u8>, usize)>, SessionError> {
    let Some(&version) = input.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(SessionError::Version(version));
    }
    let total = 1 + 2 * PACKET_LEN;
    if input.len() < total {
        return Ok(None);
    }
    // C2 echoes S1 (its time and random bytes).
    let c2 = input[1..1 + PACKET_LEN].to_vec();
    Ok(Some((c2, total)))
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
            Err(SessionError::Version(6))
        ));
    }
}
