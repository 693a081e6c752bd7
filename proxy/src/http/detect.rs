//! Is a connection HTTP? For service ports that don't declare a protocol, the first bytes tell: the HTTP/2
//! preface, or an HTTP/1.x request line. Server-first protocols send nothing, so the wait is short.

use std::time::Duration;

use tokio::net::TcpStream;

pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(200);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
const METHODS: &[&[u8]] =
    &[b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Other,
}

/// Classifies what the client has sent so far.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    if bytes.len() >= H2_PREFACE.len() && bytes.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    if METHODS.iter().any(|m| bytes.starts_with(m)) {
        return Some(Detected::Http1);
    }
    let could_still_be = H2_PREFACE.starts_with(&bytes[..bytes.len().min(H2_PREFACE.len())])
        || METHODS.iter().any(|m| m.starts_with(&bytes[..bytes.len().min(m.len())]));
    if could_still_be && bytes.len() < H2_PREFACE.len() {
        None
    } else {
        Some(Detected::Other)
    }
}

/// Peeks (without consuming) until the bytes decide, the client goes quiet, or the timeout passes.
pub async fn sniff(stream: &TcpStream) -> Detected {
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Detected::Other,
        };
        if peeked == 0 {
            return Detected::Other;
        }
        if let Some(d) = classify(&buf[..peeked]) {
            return d;
        }
        // Not enough bytes yet to decide: wait a little for more.
        if tokio::time::timeout_at(deadline, stream.readable()).await.is_err() {
            return Detected::Other;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(Detected::Http2));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Detected::Other));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Other));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Any bytes classify without panicking, and more bytes never change a decision once made (the
            /// sniffer may stop at the first decision).
            #[test]
            fn a_decision_never_changes_with_more_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..64) {
                let cut = cut.min(bytes.len());
                let full = classify(&bytes);
                if let Some(early) = classify(&bytes[..cut]) {
                    prop_assert_eq!(full, Some(early));
                }
            }

            /// A request line of a known method is HTTP/1 whatever follows.
            #[test]
            fn request_lines_are_http1(method in prop::sample::select(METHODS.to_vec()), rest in proptest::collection::vec(any::<u8>(), 0..32)) {
                let mut bytes = method.to_vec();
                bytes.extend(rest);
                prop_assert_eq!(classify(&bytes), Some(Detected::Http1));
            }
        }
    }
}
