//! W3C trace context: each proxy hop gets a span of its own so traces join across the mesh. An incoming
//! `traceparent` keeps its trace id and gets a new parent (span) id; a request without one starts a trace.

use http::{HeaderMap, HeaderValue};
use rand::Rng;

pub const TRACEPARENT: &str = "traceparent";

/// Rewrites (or adds) `traceparent` for this hop; returns the trace id for the access log.
pub fn add_hop(headers: &mut HeaderMap) -> String {
    let mut rng = rand::rng();
    let span: u64 = rng.random::<u64>().max(1);
    let parsed = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(parse);
    let (trace, flags) = match parsed {
        Some((trace, flags)) => (trace, flags),
        None => (format!("{:032x}", rng.random::<u128>().max(1)), "01".to_string()),
    };
    if let Ok(value) = HeaderValue::from_str(&format!("00-{trace}-{span:016x}-{flags}")) {
        headers.insert(TRACEPARENT, value);
    }
    trace
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; all-zero ids are invalid.
fn parse(value: &str) -> Option<(String, String)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if version != "00" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace.to_string(), flags.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_trace_and_replaces_the_span() {
        let mut headers = HeaderMap::new();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(TRACEPARENT, HeaderValue::from_static(incoming));
        let trace = add_hop(&mut headers);
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = headers[TRACEPARENT].to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{out}");
        assert!(out.ends_with("-01"));
        assert_ne!(out, incoming, "the span id changes per hop");
    }

    #[test]
    fn starts_a_trace_when_missing_or_malformed() {
        for bad in [None, Some("garbage"), Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] {
            let mut headers = HeaderMap::new();
            if let Some(b) = bad {
                headers.insert(TRACEPARENT, HeaderValue::from_static(b));
            }
            let trace = add_hop(&mut headers);
            assert_eq!(trace.len(), 32);
            assert!(parse(headers[TRACEPARENT].to_str().unwrap()).is_some());
        }
    }
}
