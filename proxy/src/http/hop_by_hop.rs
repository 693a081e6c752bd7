//! Hop-by-hop headers: what describes the connection a message arrived on rather than the message.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one HTTP/1.1 connection rather than the message (RFC 9110 7.6.1), forbidden in
/// HTTP/2 (RFC 9113 8.2.2). `te: trailers` is the one form HTTP/2 keeps.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Removes what describes the connection a message arrived on rather than the message (RFC 9110 7.6.1: a
/// proxy must not forward it). Forwarding a client's `Connection: close` would also close the pooled
/// upstream connection after its response: every fresh client connection would cost a new tunnel stream on
/// both proxies and a new connection to the pod.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names, with no hashing, tells.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let trailers = headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // The names the `Connection` header lists are connection-specific too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP.iter() {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn end_to_end_headers_pass_untouched() {
        let mut map = headers(&[("host", "a"), ("accept", "*/*"), ("x-keep", "1"), ("x-keep", "2")]);
        strip_hop_by_hop(&mut map);
        assert_eq!(names(&map), ["accept", "host", "x-keep"]);
        assert_eq!(map.get_all("x-keep").iter().count(), 2);
    }

    #[test]
    fn each_hop_by_hop_header_goes_alone_too() {
        for name in HOP_BY_HOP.iter() {
            let mut map = HeaderMap::new();
            map.insert(name.clone(), http::HeaderValue::from_static("x"));
            map.insert("x-keep", http::HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut map);
            assert_eq!(names(&map), ["x-keep"], "{name}");
        }
    }

    #[test]
    fn names_the_connection_header_lists_go_and_te_trailers_stays() {
        let mut map = headers(&[
            ("connection", "close, X-Session"),
            ("x-session", "s"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(names(&map), ["te", "x-keep"]);
        assert_eq!(map["te"], "trailers");
    }
}
