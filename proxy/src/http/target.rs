//! The request target sent to an endpoint: `http://<endpoint>/<path and query>`, built from the parts the
//! request already has.

use std::net::SocketAddr;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

/// `http://<endpoint>/<path and query>` (the path `/` when the request had none), from the parts already
/// parsed: no string is formatted and parsed again. `None` for a target that is not a path (`*`, an
/// authority), or no endpoint authority.
pub fn uri_to(uri: &Uri, authority: Option<&Authority>) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    match &parts.path_and_query {
        Some(pq) if !pq.as_str().starts_with('/') => return None,
        Some(_) => {}
        None => parts.path_and_query = Some(PathAndQuery::from_static("/")),
    }
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority?.clone());
    Uri::from_parts(parts).ok()
}

/// An endpoint's address as a URI authority.
pub fn authority_of(endpoint: SocketAddr) -> Option<Authority> {
    Authority::try_from(endpoint.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_uri_keeps_path_and_query_and_names_the_endpoint() {
        let pod = Authority::from_static("10.1.0.2:8080");
        let uri = |s: &str| s.parse::<Uri>().expect("a valid URI");
        let up = |s: &str| uri_to(&uri(s), Some(&pod)).map(|u| u.to_string());
        assert_eq!(up("/a/b?x=1&y=%20").as_deref(), Some("http://10.1.0.2:8080/a/b?x=1&y=%20"));
        assert_eq!(up("http://reviews.shop:9080/r?q").as_deref(), Some("http://10.1.0.2:8080/r?q"));
        assert_eq!(up("*"), None);
        assert_eq!(up("reviews.shop:9080").as_deref(), Some("http://10.1.0.2:8080/"));
        assert_eq!(uri_to(&uri("/"), None), None);
        let v6 = authority_of("[fd00::2]:8080".parse().expect("an address"));
        assert_eq!(uri_to(&uri("/x"), v6.as_ref()).map(|u| u.to_string()).as_deref(), Some("http://[fd00::2]:8080/x"));
    }
}
