//! Hop-by-hop headers: what describes the connection a message arrived on rather than the message.

/// Headers that describe one HTTP/1.1 connection rather than the message (RFC 9110 7.6.1), forbidden in
/// HTTP/2 (RFC 9113 8.2.2). `te: trailers` is the one form HTTP/2 keeps.
const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"];

/// Removes what describes the connection a message arrived on rather than the message (RFC 9110 7.6.1: a
/// proxy must not forward it). Forwarding a client's `Connection: close` would also close the pooled
/// upstream connection after its response: every fresh client connection would cost a new tunnel stream on
/// both proxies and a new connection to the pod.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let trailers = headers.get(http::header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // The names the `Connection` header lists are connection-specific too.
    let listed: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| http::HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if trailers {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
}
