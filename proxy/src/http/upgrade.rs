//! Protocol upgrades. Once a connection is spliced the proxy sees bytes, not requests, so nothing after the
//! upgrade is routed or authorized: only WebSocket, whose handshake request has itself been routed and
//! authorized, is spliced. Any other upgrade (`h2c`, unknown tokens) is stripped from the request, which then
//! goes on as plain HTTP; a 101 the proxy did not ask for is not passed on.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request};
use tracing::debug;

tokio::task_local! {
    /// The drain handle of the HTTP connection whose request is being handled (set by
    /// [`super::serve_connection`]). A spliced connection outlives the HTTP connection it came from (hyper hands
    /// the socket over and the connection task ends), so it must keep the drain waiting on its own: without it a
    /// draining proxy counted no WebSocket in flight and exited at once, cutting every one of them.
    pub static CONNECTION_DRAIN: crate::drain::Watch;
}

/// A drain handle of its own for a spliced connection, when the request is handled on a served connection.
fn spliced_watch() -> Option<crate::drain::Watch> {
    CONNECTION_DRAIN.try_with(|watch| watch.clone()).ok()
}

/// The upgrade token the proxies splice.
const WEBSOCKET: &str = "websocket";
/// Sent with `Upgrade: h2c`; meaningless once the upgrade is stripped.
const HTTP2_SETTINGS: &str = "http2-settings";

/// True for an HTTP/1.x request whose `Connection` has the `upgrade` option.
fn asks_upgrade<B>(request: &Request<B>) -> bool {
    request.version() <= http::Version::HTTP_11
        && request.headers().contains_key(UPGRADE)
        && request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// An HTTP/1.x request asking to switch to WebSocket, and to nothing else (`Upgrade` holds exactly one
/// token, compared case-insensitively as RFC 9110 7.8 says).
pub fn wants_websocket<B>(request: &Request<B>) -> bool {
    let mut upgrades = request.headers().get_all(UPGRADE).iter();
    let only = match (upgrades.next(), upgrades.next()) {
        (Some(value), None) => value.to_str().ok().map(str::trim),
        _ => None,
    };
    asks_upgrade(request) && only.is_some_and(|token| token.eq_ignore_ascii_case(WEBSOCKET))
}

/// Removes an upgrade the proxies do not splice: `Upgrade`, `HTTP2-Settings` and their `Connection` options.
pub fn strip_unsupported<B>(request: &mut Request<B>) {
    let headers = request.headers();
    if !headers.contains_key(UPGRADE) && !headers.contains_key(HTTP2_SETTINGS) {
        return;
    }
    if wants_websocket(request) {
        return;
    }
    debug!(upgrade = ?request.headers().get(UPGRADE), "upgrade stripped: only websocket is spliced");
    let headers = request.headers_mut();
    headers.remove(UPGRADE);
    headers.remove(HTTP2_SETTINGS);
    let options: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("upgrade") && !t.eq_ignore_ascii_case(HTTP2_SETTINGS))
        .map(str::to_string)
        .collect();
    headers.remove(CONNECTION);
    if !options.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&options.join(", ")) {
            headers.insert(CONNECTION, value);
        }
    }
}

/// After a 101, the bytes of both upgraded connections are copied to each other.
pub fn splice(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let watch = spliced_watch();
    tokio::spawn(async move {
        // Held until the spliced connection ends, so a draining proxy waits for it (up to its grace).
        let _watch = watch;
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        if let Err(e) = crate::tcp::copy::bidirectional(&mut down, &mut up).await {
            debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/upgrade");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("a valid request")
    }

    #[tokio::test]
    async fn a_spliced_connection_keeps_the_drain_waiting_until_it_ends() {
        let drain = crate::drain::Drain::new();
        let held = CONNECTION_DRAIN.scope(drain.watch(), async { spliced_watch() }).await;
        assert!(held.is_some(), "taken from the served connection's scope");
        assert_eq!(drain.in_flight(), 1, "the HTTP connection's handle is gone, the spliced one counts");
        drop(held);
        assert_eq!(drain.in_flight(), 0);
        assert!(spliced_watch().is_none(), "outside a served connection there is nothing to hold");
    }

    #[test]
    fn websocket_is_the_only_upgrade_spliced() {
        assert!(wants_websocket(&request(&[("connection", "Upgrade"), ("upgrade", "WebSocket")])));
        assert!(wants_websocket(&request(&[("connection", "keep-alive, upgrade"), ("upgrade", "websocket")])));
        assert!(!wants_websocket(&request(&[("connection", "upgrade"), ("upgrade", "h2c")])));
        assert!(!wants_websocket(&request(&[("connection", "upgrade"), ("upgrade", "websocket, h2c")])));
        assert!(!wants_websocket(&request(&[("upgrade", "websocket")])));
    }

    #[test]
    fn h2c_upgrade_is_stripped_to_plain_http() {
        let mut r = request(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ]);
        strip_unsupported(&mut r);
        assert!(r.headers().get(UPGRADE).is_none());
        assert!(r.headers().get(HTTP2_SETTINGS).is_none());
        assert!(r.headers().get(CONNECTION).is_none());
    }

    #[test]
    fn unknown_upgrade_is_stripped_and_other_connection_options_kept() {
        let mut r = request(&[("connection", "keep-alive, upgrade"), ("upgrade", "tls/1.3")]);
        strip_unsupported(&mut r);
        assert!(r.headers().get(UPGRADE).is_none());
        assert_eq!(r.headers().get(CONNECTION).and_then(|v| v.to_str().ok()), Some("keep-alive"));
    }

    #[test]
    fn websocket_upgrade_is_kept() {
        let mut r = request(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        strip_unsupported(&mut r);
        assert_eq!(r.headers().get(UPGRADE).and_then(|v| v.to_str().ok()), Some("websocket"));
    }
}
