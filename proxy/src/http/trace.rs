//! W3C trace context: each proxy hop gets a span of its own so traces join across the mesh. An incoming
//! `traceparent` keeps its trace id and gets a new parent (span) id; a request without one starts a trace.
//! With trace export on (`telemetry::traces`), the hop's span is a real OpenTelemetry span whose id and
//! sampling decision go on in the header; without it, a random span id and the incoming flags (sampled for a
//! new trace) keep the trace joined for whoever else records it.

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::SpanKind;
use rand::Rng;

use crate::telemetry::traces::{put_hex, HopSpan, TraceId};

pub const TRACEPARENT: &str = "traceparent";

/// This hop's trace: the id for the access log and, when traces are exported, the span to end.
pub struct Hop {
    pub trace_id: TraceId,
    pub span: Option<HopSpan>,
}

/// Rewrites (or adds) `traceparent` for this hop and starts its span (`name`, `kind`) when export is on.
pub fn add_hop(headers: &mut HeaderMap, name: &'static str, kind: SpanKind) -> Hop {
    let parsed = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(parse);
    if let Some(span) = HopSpan::start(name, kind, parsed) {
        set(headers, &span.traceparent());
        return Hop { trace_id: span.trace_id(), span: Some(span) };
    }
    let mut rng = rand::rng();
    let span: u64 = rng.random::<u64>().max(1);
    let (trace, flags) = parsed.map(|(t, _, f)| (t, f)).unwrap_or_else(|| (rng.random::<u128>().max(1), 1));
    let value = traceparent(trace, span, flags);
    if let Ok(header) = HeaderValue::from_bytes(&value) {
        headers.insert(TRACEPARENT, header);
    }
    Hop { trace_id: TraceId::new(trace), span: None }
}

/// Where the trace id sits in a version-00 `traceparent`.
const TRACE_ID: std::ops::Range<usize> = 3..35;

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, lowercase, written in place: every request gets one,
/// and `format!` of a u128 in hex stood out in the request path's profile.
fn traceparent(trace: u128, span: u64, flags: u8) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut out[TRACE_ID], trace);
    put_hex(&mut out[36..52], u128::from(span));
    put_hex(&mut out[53..55], u128::from(flags));
    out
}

/// Sets `traceparent` (a try's own span, when export is on).
pub fn set(headers: &mut HeaderMap, traceparent: &str) {
    if let Ok(value) = HeaderValue::from_str(traceparent) {
        headers.insert(TRACEPARENT, value);
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` as (trace, parent, flags); all-zero ids are invalid.
fn parse(value: &str) -> Option<(u128, u64, u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if version != "00" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let parent = u64::from_str_radix(parent, 16).ok().filter(|p| *p != 0)?;
    Some((trace, parent, u8::from_str_radix(flags, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_written_as_format_would() {
        let values: [(u128, u64, u8); 4] = [
            (1, 1, 0),
            (u128::MAX, u64::MAX, 0xff),
            (0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0x00f0_67aa_0ba9_02b7, 1),
            (rand::rng().random(), rand::rng().random(), rand::rng().random()),
        ];
        for (trace, span, flags) in values {
            let written = traceparent(trace, span, flags);
            let expected = format!("00-{trace:032x}-{span:016x}-{flags:02x}");
            assert_eq!(TraceId::new(trace).to_string(), format!("{trace:032x}"));
            assert_eq!(std::str::from_utf8(&written).expect("ascii"), expected);
            assert_eq!(parse(&expected), Some((trace, span, flags)).filter(|_| trace != 0 && span != 0));
        }
    }

    #[test]
    fn keeps_the_trace_and_replaces_the_span() {
        let mut headers = HeaderMap::new();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(TRACEPARENT, HeaderValue::from_static(incoming));
        let hop = add_hop(&mut headers, "hop", SpanKind::Server);
        assert_eq!(hop.trace_id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = headers[TRACEPARENT].to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{out}");
        assert!(out.ends_with("-01"));
        assert_ne!(out, incoming, "the span id changes per hop");
    }

    #[test]
    fn keeps_an_unsampled_decision() {
        let mut headers = HeaderMap::new();
        headers
            .insert(TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        add_hop(&mut headers, "hop", SpanKind::Server);
        assert!(headers[TRACEPARENT].to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn starts_a_trace_when_missing_or_malformed() {
        for bad in [None, Some("garbage"), Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] {
            let mut headers = HeaderMap::new();
            if let Some(b) = bad {
                headers.insert(TRACEPARENT, HeaderValue::from_static(b));
            }
            let hop = add_hop(&mut headers, "hop", SpanKind::Server);
            assert_eq!(hop.trace_id.as_str().len(), 32);
            assert!(headers[TRACEPARENT].to_str().unwrap().contains(hop.trace_id.as_str()));
            assert!(parse(headers[TRACEPARENT].to_str().unwrap()).is_some());
        }
    }
}
