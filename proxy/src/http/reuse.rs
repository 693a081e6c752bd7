//! `connectionPool.http.maxRequestsPerConnection` and the idle timeout, for the pooled upstream connections
//! of both hops (the source proxy's clients in `upstream`, the destination proxy's towards its pods): a
//! connection counts the requests it carries ([`RequestCount`], which hyper hands back with each response)
//! and [`send`] retires it at the limit.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::client::legacy::Client;

pub use super::settings::ConnectionReuse;
use super::BoxBody;

/// Requests sent on one connection so far; hyper copies it into every response the connection carries.
#[derive(Clone, Debug, Default)]
pub struct RequestCount(Arc<AtomicU32>);

/// Sends `request` on `client` and, when the connection it went out on has now carried
/// `max_requests_per_connection` requests, retires it: hyper's pool never hands a poisoned connection out
/// again, so it closes once its response ends (an HTTP/2 connection, once its streams in flight end; those
/// may take it a few requests past the limit, as they were sent before the count reached it).
pub async fn send<C>(
    client: &Client<C, BoxBody>,
    mut request: http::Request<BoxBody>,
    reuse: ConnectionReuse,
) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let Some(max) = reuse.max_requests_per_connection.filter(|m| *m > 0) else {
        return client.request(request).await;
    };
    let captured = capture_connection(&mut request);
    let response = client.request(request).await?;
    if let Some(count) = response.extensions().get::<RequestCount>() {
        if count.0.fetch_add(1, Ordering::AcqRel).saturating_add(1) >= max {
            if let Some(connected) = captured.connection_metadata().as_ref() {
                connected.poison();
            }
        }
    }
    Ok(response)
}
