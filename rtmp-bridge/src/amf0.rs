//! AMF0 (Action Message Format 0), the value encoding of RTMP commands and
//! of FLV script data (`onMetaData`). Only the types RTMP servers send in
//! practice are decoded; anything else is an error rather than a guess,
//! since a misread length would desynchronise everything after it.

use thiserror::Error;

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0a;
const DATE: u8 = 0x0b;
const LONG_STRING: u8 = 0x0c;

/// Objects nest at most this deep when decoding: a hostile peer cannot
/// exhaust the stack.
const MAX_DEPTH: usize = 32;

/// One AMF0 value. Objects and ECMA arrays keep their properties in order,
/// because some servers read `connect` properties positionally.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    /// A string; encoded as a long string when over 65535 bytes.
    String(String),
    Object(Vec<(String, Amf0Value)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    /// Milliseconds since the Unix epoch (the time-zone field is ignored,
    /// as the specification asks).
    Date(f64),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Amf0Error {
    #[error("AMF0 data ends in the middle of a value")]
    Truncated,
    #[error("AMF0 type marker {0:#04x} is not supported")]
    UnsupportedType(u8),
    #[error("AMF0 string is not UTF-8")]
    InvalidUtf8,
    #[error("AMF0 values nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl Amf0Value {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Self {
        Amf0Value::String(s.into())
    }

    /// An object from `(name, value)` pairs.
    pub fn object<K: Into<String>>(props: impl IntoIterator<Item = (K, Amf0Value)>) -> Self {
        Amf0Value::Object(props.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// A property of an object or ECMA array.
    pub fn get(&self, name: &str) -> Option<&Amf0Value> {
        match self {
            Amf0Value::Object(props) | Amf0Value::EcmaArray(props) => {
                props.iter().find(|(k, _)| k == name).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// Appends the encoding of this value.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Amf0Value::Number(n) => {
                out.push(NUMBER);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Amf0Value::Boolean(b) => out.extend_from_slice(&[BOOLEAN, u8::from(*b)]),
            Amf0Value::String(s) => {
                if s.len() > usize::from(u16::MAX) {
                    out.push(LONG_STRING);
                    // Longer than 4 GiB cannot be sent in RTMP anyway (24-bit lengths).
                    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&s.as_bytes()[..len as usize]);
                } else {
                    out.push(STRING);
                    put_short_string(out, s);
                }
            }
            Amf0Value::Object(props) => {
                out.push(OBJECT);
                put_properties(out, props);
            }
            Amf0Value::Null => out.push(NULL),
            Amf0Value::Undefined => out.push(UNDEFINED),
            Amf0Value::EcmaArray(props) => {
                out.push(ECMA_ARRAY);
                let count = u32::try_from(props.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                put_properties(out, props);
            }
            Amf0Value::StrictArray(items) => {
                out.push(STRICT_ARRAY);
                let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                for item in items.iter().take(count as usize) {
                    item.encode(out);
                }
            }
            Amf0Value::Date(ms) => {
                out.push(DATE);
                out.extend_from_slice(&ms.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
        }
    }

    /// Decodes one value from the front of `input`, advancing it.
    pub fn decode(input: &mut &[u8]) -> Result<Amf0Value, Amf0Error> {
        decode_value(input, 0)
    }
}

/// Encodes values back to back, as in a command message.
pub fn encode_all(values: &[Amf0Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        v.encode(&mut out);
    }
    out
}

/// Decodes values until `input` is empty.
pub fn decode_all(mut input: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut values = Vec::new();
    while !input.is_empty() {
        values.push(Amf0Value::decode(&mut input)?);
    }
    Ok(values)
}

fn put_short_string(out: &mut Vec<u8>, s: &str) {
    // Property names and short strings: truncated at a char boundary if
    // someone passes more than 64 KiB.
    let mut len = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

fn put_properties(out: &mut Vec<u8>, props: &[(String, Amf0Value)]) {
    for (name, value) in props {
        put_short_string(out, name);
        value.encode(out);
    }
    out.extend_from_slice(&[0, 0, OBJECT_END]);
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], Amf0Error> {
    if input.len() < n {
        return Err(Amf0Error::Truncated);
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn take_u16(input: &mut &[u8]) -> Result<u16, Amf0Error> {
    let b = take(input, 2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn take_u32(input: &mut &[u8]) -> Result<u32, Amf0Error> {
    let b = take(input, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn take_f64(input: &mut &[u8]) -> Result<f64, Amf0Error> {
    let b = take(input, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(f64::from_be_bytes(a))
}

fn take_string(input: &mut &[u8], len: usize) -> Result<String, Amf0Error> {
    let bytes = take(input, len)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| Amf0Error::InvalidUtf8)
}

fn decode_value(input: &mut &[u8], depth: usize) -> Result<Amf0Value, Amf0Error> {
    if depth > MAX_DEPTH {
        return Err(Amf0Error::TooDeep);
    }
    let marker = take(input, 1)?[0];
    Ok(match marker {
        NUMBER => Amf0Value::Number(take_f64(input)?),
        BOOLEAN => Amf0Value::Boolean(take(input, 1)?[0] != 0),
        STRING => {
            let len = take_u16(input)?;
            Amf0Value::String(take_string(input, usize::from(len))?)
        }
        LONG_STRING => {
            let len = take_u32(input)?;
            Amf0Value::String(take_string(input, len as usize)?)
        }
        OBJECT => Amf0Value::Object(decode_properties(input, depth)?),
        NULL => Amf0Value::Null,
        UNDEFINED => Amf0Value::Undefined,
        ECMA_ARRAY => {
            // The count is a hint only; the end marker terminates the list.
            take_u32(input)?;
            Amf0Value::EcmaArray(decode_properties(input, depth)?)
        }
        STRICT_ARRAY => {
            let count = take_u32(input)?;
            let mut items = Vec::new();
            for _ in 0..count {
                items.push(decode_value(input, depth + 1)?);
            }
            Amf0Value::StrictArray(items)
        }
        DATE => {
            let ms = take_f64(input)?;
            take(input, 2)?;
            Amf0Value::Date(ms)
        }
        other => return Err(Amf0Error::UnsupportedType(other)),
    })
}

fn decode_properties(
    input: &mut &[u8],
    depth: usize,
) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
    let mut props = Vec::new();
    loop {
        let len = take_u16(input)?;
        if len == 0 && input.first() == Some(&OBJECT_END) {
            take(input, 1)?;
            return Ok(props);
        }
        let name = take_string(input, usize::from(len))?;
        props.push((name, decode_value(input, depth + 1)?));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: Amf0Value) {
        let mut out = Vec::new();
        v.encode(&mut out);
        let mut slice = &out[..];
        assert_eq!(Amf0Value::decode(&mut slice).unwrap(), v);
        assert!(slice.is_empty(), "decoder left {} bytes", slice.len());
    }

    #[test]
    fn every_type_round_trips() {
        round_trip(Amf0Value::Number(1.5));
        round_trip(Amf0Value::Number(-0.0));
        round_trip(Amf0Value::Boolean(true));
        round_trip(Amf0Value::Boolean(false));
        round_trip(Amf0Value::str(""));
        round_trip(Amf0Value::str("héllo"));
        round_trip(Amf0Value::str("x".repeat(70_000)));
        round_trip(Amf0Value::Null);
        round_trip(Amf0Value::Undefined);
        round_trip(Amf0Value::Date(1.7e12));
        round_trip(Amf0Value::StrictArray(vec![
            Amf0Value::str("avc1"),
            Amf0Value::Number(7.0),
        ]));
        round_trip(Amf0Value::EcmaArray(vec![
            ("width".into(), Amf0Value::Number(640.0)),
            ("stereo".into(), Amf0Value::Boolean(true)),
        ]));
        round_trip(Amf0Value::object([
            ("app", Amf0Value::str("live")),
            (
                "nested",
                Amf0Value::object([("code", Amf0Value::str("NetStream.Publish.Start"))]),
            ),
            ("empty", Amf0Value::Object(vec![])),
        ]));
    }

    #[test]
    fn known_bytes() {
        // "connect", 1.0, null — as FFmpeg and OBS send the command start.
        let bytes = encode_all(&[
            Amf0Value::str("connect"),
            Amf0Value::Number(1.0),
            Amf0Value::Null,
        ]);
        assert_eq!(
            bytes,
            [
                0x02, 0x00, 0x07, b'c', b'o', b'n', b'n', b'e', b'c', b't', 0x00, 0x3f, 0xf0, 0, 0,
                0, 0, 0, 0, 0x05
            ]
        );
        let mut obj = Vec::new();
        Amf0Value::object([("a", Amf0Value::Boolean(true))]).encode(&mut obj);
        assert_eq!(obj, [0x03, 0x00, 0x01, b'a', 0x01, 0x01, 0x00, 0x00, 0x09]);
    }

    #[test]
    fn long_string_marker_decodes() {
        let data = [0x0c, 0, 0, 0, 2, b'o', b'k'];
        assert_eq!(decode_all(&data).unwrap(), vec![Amf0Value::str("ok")]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(decode_all(&[0x00, 1, 2]), Err(Amf0Error::Truncated));
        assert_eq!(decode_all(&[0x02, 0, 5, b'a']), Err(Amf0Error::Truncated));
        assert_eq!(
            decode_all(&[0x11, 0]),
            Err(Amf0Error::UnsupportedType(0x11))
        );
        assert_eq!(decode_all(&[0x02, 0, 1, 0xff]), Err(Amf0Error::InvalidUtf8));
        // An object that never ends.
        assert_eq!(
            decode_all(&[0x03, 0, 1, b'a', 0x05]),
            Err(Amf0Error::Truncated)
        );
        // A strict array claiming 4 billion items ends at the data's end.
        assert_eq!(
            decode_all(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x05]),
            Err(Amf0Error::Truncated)
        );
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend_from_slice(&[0x03, 0, 1, b'a']);
        }
        assert_eq!(decode_all(&deep), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn get_finds_properties() {
        let v = Amf0Value::object([("code", Amf0Value::str("X")), ("n", Amf0Value::Number(2.0))]);
        assert_eq!(v.get("code").and_then(Amf0Value::as_str), Some("X"));
        assert_eq!(v.get("n").and_then(Amf0Value::as_number), Some(2.0));
        assert_eq!(v.get("missing"), None);
    }
}
