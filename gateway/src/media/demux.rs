//! Which peer a datagram belongs to.
//!
//! Every peer shares one socket. A peer is first identified by the ICE
//! username in its STUN binding request (`our-ufrag:their-ufrag`; we chose
//! `our-ufrag`, so it names the session), and from then on by its address.
//! Once ICE has selected a pair, the WebRTC stack accepts any non-STUN
//! datagram it is handed, so this map is the only address filter: an unknown
//! address gets nothing but a STUN lookup.

/// The datagram classes of RFC 7983 §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketClass {
    Stun,
    Dtls,
    Rtp,
    Other,
}

pub fn classify(data: &[u8]) -> PacketClass {
    match data.first() {
        Some(0..=3) => PacketClass::Stun,
        Some(20..=63) => PacketClass::Dtls,
        Some(128..=191) => PacketClass::Rtp,
        _ => PacketClass::Other,
    }
}

const STUN_HEADER: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;

/// The local (our) half of a STUN request's USERNAME, if the datagram is a
/// well-formed STUN message carrying one.
pub fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    if data.len() < STUN_HEADER || data[4..8] != MAGIC_COOKIE {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(STUN_HEADER..STUN_HEADER + body_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn extracts_local_ufrag() {
        let msg = binding_request("srvufrag:cliufrag");
        assert_eq!(classify(&msg), PacketClass::Stun);
        assert_eq!(stun_local_ufrag(&msg), Some("srvufrag"));
    }

    #[test]
    fn garbage_is_not_stun() {
        assert_eq!(stun_local_ufrag(&[0u8; 10]), None);
        let mut msg = binding_request("a:b");
        msg[3] = 200; // length beyond the datagram
        assert_eq!(stun_local_ufrag(&msg), None);
        let mut truncated = binding_request("abcdef:b");
        truncated.truncate(26);
        truncated[3] = 6;
        assert_eq!(stun_local_ufrag(&truncated), None);
    }
}
