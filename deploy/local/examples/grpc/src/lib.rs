//! What the example's gRPC server and client share: the messages of `greeter.proto` in protobuf's wire format
//! and gRPC's message framing, written out by hand so that the example needs no code generator. Real services
//! would use tonic and prost; the bytes on the wire are the same, so `grpcurl -proto greeter.proto` talks to
//! the greeter too.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const SAY_HELLO: &str = "/strait.example.Greeter/SayHello";
pub const SAY_HELLOS: &str = "/strait.example.Greeter/SayHellos";
/// The largest message either side accepts (gRPC's default).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// `SayHellos` sends at most this many replies; asking for more ends the call with RESOURCE_EXHAUSTED in its
/// trailers, after the replies.
pub const MAX_HELLOS: u32 = 10;

/// gRPC status codes used here.
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// `message HelloRequest { string name = 1; uint32 count = 2; }`
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelloRequest {
    pub name: String,
    pub count: u32,
}

/// `message HelloReply { string message = 1; string version = 2; string caller = 3; }`
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelloReply {
    pub message: String,
    pub version: String,
    pub caller: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad protobuf message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn get_varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err(DecodeError("truncated varint"));
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(DecodeError("varint longer than 10 bytes"))
}

fn put_string(out: &mut BytesMut, field: u64, value: &str) {
    if value.is_empty() {
        return;
    }
    put_varint(out, field << 3 | 2);
    put_varint(out, value.len() as u64);
    out.put_slice(value.as_bytes());
}

/// Calls `each(field, wire value)` for every field of a message; unknown fields are skipped, as protobuf
/// requires.
fn fields(mut buf: &[u8], mut each: impl FnMut(u64, Field<'_>) -> Result<(), DecodeError>) -> Result<(), DecodeError> {
    while buf.has_remaining() {
        let key = get_varint(&mut buf)?;
        let field = match key & 7 {
            0 => Field::Varint(get_varint(&mut buf)?),
            1 => Field::Skip(skip(&mut buf, 8)?),
            2 => {
                let len = usize::try_from(get_varint(&mut buf)?).map_err(|_| DecodeError("length too large"))?;
                if buf.remaining() < len {
                    return Err(DecodeError("truncated field"));
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Field::Bytes(bytes)
            }
            5 => Field::Skip(skip(&mut buf, 4)?),
            _ => return Err(DecodeError("unsupported wire type")),
        };
        each(key >> 3, field)?;
    }
    Ok(())
}

fn skip(buf: &mut &[u8], n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        return Err(DecodeError("truncated fixed field"));
    }
    buf.advance(n);
    Ok(())
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skip(()),
}

fn string(field: Field<'_>) -> Result<String, DecodeError> {
    match field {
        Field::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| DecodeError("a string field is not UTF-8")),
        _ => Err(DecodeError("a string field has the wrong wire type")),
    }
}

impl HelloRequest {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        put_string(&mut out, 1, &self.name);
        if self.count != 0 {
            put_varint(&mut out, 2 << 3);
            put_varint(&mut out, u64::from(self.count));
        }
        out.freeze()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut out = HelloRequest::default();
        fields(buf, |number, field| {
            match (number, field) {
                (1, field) => out.name = string(field)?,
                (2, Field::Varint(v)) => out.count = u32::try_from(v).unwrap_or(u32::MAX),
                (2, _) => return Err(DecodeError("count has the wrong wire type")),
                _ => {}
            }
            Ok(())
        })?;
        Ok(out)
    }
}

impl HelloReply {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        put_string(&mut out, 1, &self.message);
        put_string(&mut out, 2, &self.version);
        put_string(&mut out, 3, &self.caller);
        out.freeze()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut out = HelloReply::default();
        fields(buf, |number, field| {
            match number {
                1 => out.message = string(field)?,
                2 => out.version = string(field)?,
                3 => out.caller = string(field)?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// One gRPC length-prefixed message (uncompressed).
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Takes every complete message off the front of `buf`. Errors on a compressed message or one over
/// [`MAX_MESSAGE`].
pub fn unframe(buf: &mut BytesMut) -> Result<Vec<Bytes>, DecodeError> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        if buf[0] != 0 {
            return Err(DecodeError("compressed messages are not supported"));
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(DecodeError("message over 4 MiB"));
        }
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
    Ok(out)
}

/// The caller's SPIFFE identity from the `x-forwarded-client-cert` the destination proxy adds (the `URI` of its
/// last element).
pub fn caller(xfcc: Option<&str>) -> String {
    let element = xfcc.and_then(|v| v.rsplit(',').next()).unwrap_or_default();
    element
        .split(';')
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            key.eq_ignore_ascii_case("uri").then(|| value.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_unknown_fields_are_skipped() {
        let request = HelloRequest { name: "wörld".into(), count: 300 };
        assert_eq!(HelloRequest::decode(&request.encode()), Ok(request.clone()));
        // protoc --encode of {name: "a", count: 1}: 0a 01 61 10 01
        assert_eq!(&HelloRequest { name: "a".into(), count: 1 }.encode()[..], [0x0a, 1, b'a', 0x10, 1]);
        let reply = HelloReply { message: "hi".into(), version: "v2".into(), caller: "spiffe://x".into() };
        let mut with_unknown = BytesMut::from(&reply.encode()[..]);
        with_unknown.extend_from_slice(&[0x20, 0x05, 0x2d, 1, 2, 3, 4, 0x31, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(HelloReply::decode(&with_unknown), Ok(reply));
        assert!(HelloRequest::decode(&[0x0a, 5, b'a']).is_err(), "truncated");
        assert!(HelloRequest::decode(&[0x0a, 1, 0xff]).is_err(), "not UTF-8");
        assert!(HelloRequest::decode(&[0x0b]).is_err(), "wire type 3");
        assert!(HelloRequest::decode(&[0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1]).is_err());
    }

    #[test]
    fn framing_splits_messages_and_refuses_oversized_ones() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(b"one"));
        buf.extend_from_slice(&frame(b""));
        buf.extend_from_slice(&frame(b"three")[..4]);
        assert_eq!(unframe(&mut buf), Ok(vec![Bytes::from_static(b"one"), Bytes::new()]));
        assert_eq!(buf.len(), 4, "the partial message stays");
        let mut big = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(unframe(&mut big).is_err());
    }

    #[test]
    fn the_caller_is_the_last_hops_uri() {
        assert_eq!(caller(Some("By=spiffe://td/ns/a/sa/b;URI=spiffe://td/ns/a/sa/c")), "spiffe://td/ns/a/sa/c");
        assert_eq!(caller(None), "unknown");
    }
}
