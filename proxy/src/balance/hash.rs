//! Where a consistent-hash key comes from: an HTTP header, a cookie or a query parameter of a request (HTTP
//! ports only), or the calling pod's IP address (any port). A request or connection without the key is
//! balanced at random, as Envoy does.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, COOKIE};
use strait_api::ConsistentHash;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
    /// The parameter's value as written in the query string (not percent-decoded).
    QueryParameter(String),
    SourceIp,
}

impl HashOn {
    /// The key `hash` names (validation has made sure it names exactly one).
    pub fn from_spec(hash: &ConsistentHash) -> Result<HashOn, String> {
        let field = "loadBalancer.consistentHash";
        match hash.keys().as_slice() {
            ["httpHeaderName"] => {
                let header = hash.http_header_name.as_deref().unwrap_or_default();
                HeaderName::try_from(header)
                    .map(HashOn::Header)
                    .map_err(|_| format!("{field}.httpHeaderName: {header:?} is not a header name"))
            }
            ["httpCookie"] => match hash.http_cookie.as_deref() {
                Some(cookie) if !cookie.is_empty() => Ok(HashOn::Cookie(cookie.to_string())),
                _ => Err(format!("{field}.httpCookie: must not be empty")),
            },
            ["httpQueryParameterName"] => match hash.http_query_parameter_name.as_deref() {
                Some(name) if !name.is_empty() => Ok(HashOn::QueryParameter(name.to_string())),
                _ => Err(format!("{field}.httpQueryParameterName: must not be empty")),
            },
            ["useSourceIp"] => Ok(HashOn::SourceIp),
            _ => Err(format!(
                "{field}: set exactly one of httpHeaderName, httpCookie, httpQueryParameterName, useSourceIp"
            )),
        }
    }

    /// The key of an HTTP request with `headers` and `query` from `source` (for a header, its first value).
    pub fn request_key(&self, headers: &HeaderMap, query: Option<&str>, source: IpAddr) -> Option<Vec<u8>> {
        match self {
            HashOn::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()),
            HashOn::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|value| {
                value.as_bytes().split(|b| *b == b';').find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|b| *b == b'=')?;
                    (&pair[..eq] == name.as_bytes()).then(|| pair[eq + 1..].to_vec())
                })
            }),
            HashOn::QueryParameter(name) => query?.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then(|| value.as_bytes().to_vec())
            }),
            HashOn::SourceIp => Some(source_ip_key(source)),
        }
    }

    /// The key of a TCP connection from `source`: only the source address is known there.
    pub fn connection_key(&self, source: IpAddr) -> Option<Vec<u8>> {
        matches!(self, HashOn::SourceIp).then(|| source_ip_key(source))
    }
}

/// The address's bytes; an IPv4-mapped IPv6 address hashes as its IPv4 address.
fn source_ip_key(source: IpAddr) -> Vec<u8> {
    match source.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(f: impl FnOnce(&mut ConsistentHash)) -> ConsistentHash {
        let mut hash = ConsistentHash::default();
        f(&mut hash);
        hash
    }

    #[test]
    fn keys_come_from_a_header_a_cookie_a_query_parameter_or_the_source_address() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().expect("value"));
        headers.append(COOKIE, "theme=dark; session=abc123".parse().expect("value"));
        let source: IpAddr = "10.0.0.7".parse().expect("ip");
        let key = |on: HashOn, query: Option<&str>| on.request_key(&headers, query, source);
        assert_eq!(key(HashOn::Header(HeaderName::from_static("x-user")), None), Some(b"alice".to_vec()));
        assert_eq!(key(HashOn::Cookie("session".into()), None), Some(b"abc123".to_vec()));
        assert_eq!(key(HashOn::Cookie("sess".into()), None), None);
        assert_eq!(key(HashOn::Header(HeaderName::from_static("x-none")), None), None);
        let query = Some("a=1&user=bob%20b&flag");
        assert_eq!(key(HashOn::QueryParameter("user".into()), query), Some(b"bob%20b".to_vec()));
        assert_eq!(key(HashOn::QueryParameter("flag".into()), query), Some(Vec::new()));
        assert_eq!(key(HashOn::QueryParameter("use".into()), query), None);
        assert_eq!(key(HashOn::QueryParameter("user".into()), None), None);
        assert_eq!(key(HashOn::SourceIp, None), Some(vec![10, 0, 0, 7]));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("ip");
        assert_eq!(HashOn::SourceIp.connection_key(mapped), Some(vec![10, 0, 0, 7]));
        // A TCP connection has no headers: only the source address is a key there.
        assert_eq!(HashOn::Header(HeaderName::from_static("x-user")).connection_key(source), None);
    }

    #[test]
    fn the_key_comes_from_the_spec() {
        let header = spec(|h| h.http_header_name = Some("X-User".into()));
        assert_eq!(HashOn::from_spec(&header), Ok(HashOn::Header(HeaderName::from_static("x-user"))));
        let cookie = spec(|h| h.http_cookie = Some("s".into()));
        assert_eq!(HashOn::from_spec(&cookie), Ok(HashOn::Cookie("s".into())));
        let query = spec(|h| h.http_query_parameter_name = Some("user".into()));
        assert_eq!(HashOn::from_spec(&query), Ok(HashOn::QueryParameter("user".into())));
        assert_eq!(HashOn::from_spec(&spec(|h| h.use_source_ip = Some(true))), Ok(HashOn::SourceIp));
        for bad in [
            spec(|_| {}),
            spec(|h| h.use_source_ip = Some(false)),
            spec(|h| h.http_header_name = Some("bad header".into())),
            spec(|h| {
                h.http_header_name = Some("x".into());
                h.use_source_ip = Some(true);
            }),
        ] {
            assert!(HashOn::from_spec(&bad).is_err(), "{bad:?}");
        }
    }
}
