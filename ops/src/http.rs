//! Plain HTTP/1.1 to the control plane's monitoring port and the proxies' admin ports: one connection per
//! request, every wait bounded, every body size-limited.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole mesh's configuration dump fits; nothing legitimate comes near.
const MAX_BODY: usize = 64 << 20;

/// An admin or monitoring address: `host:port`, or `http://host:port` (a path, if any, is ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    authority: String,
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let with_scheme = if s.contains("://") { s.to_string() } else { format!("http://{s}") };
        let uri: http::Uri =
            with_scheme.parse().map_err(|e| format!("{s:?} is not host:port or an http:// URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{s:?}: only plain http is served on the monitoring and admin ports"));
        }
        let authority = uri.authority().ok_or_else(|| format!("{s:?} names no host"))?;
        if authority.port_u16().is_none() {
            return Err(format!("{s:?} names no port (the monitoring port is 15014, the admin port 15000)"));
        }
        Ok(Endpoint { authority: authority.to_string() })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.authority)
    }
}

impl Endpoint {
    /// Sends `GET path` and returns the response head with its streaming body.
    pub async fn open(&self, path: &str) -> anyhow::Result<http::Response<Incoming>> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.authority))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {} timed out", self.authority))?
            .with_context(|| format!("connecting to {}", self.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .with_context(|| format!("HTTP with {}", self.authority))?;
        tokio::spawn(conn);
        let request = Request::get(path)
            .header(http::header::HOST, &self.authority)
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| anyhow::anyhow!("{} did not answer GET {path} within {RESPONSE_TIMEOUT:?}", self.authority))?
            .with_context(|| format!("GET http://{}{path}", self.authority))
    }

    /// `GET path`: the status and the whole body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let response = self.open(path).await?;
        let status = response.status();
        let body = tokio::time::timeout(RESPONSE_TIMEOUT, Limited::new(response.into_body(), MAX_BODY).collect())
            .await
            .map_err(|_| anyhow::anyhow!("reading GET {path} from {} timed out", self.authority))?
            .map_err(|e| anyhow::anyhow!("reading GET {path} from {}: {e}", self.authority))?
            .to_bytes();
        Ok((status, body))
    }

    /// `GET path`, which must answer 200 with JSON of type `T`.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let (status, body) = self.get(path).await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "GET http://{}{path}: {status}: {}",
            self.authority,
            String::from_utf8_lossy(&body).trim()
        );
        serde_json::from_slice(&body)
            .with_context(|| format!("GET http://{}{path}: not the expected JSON", self.authority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_port_or_http_urls() {
        let e: Endpoint = "127.0.0.2:15014".parse().expect("host:port");
        assert_eq!(e.to_string(), "127.0.0.2:15014");
        let e: Endpoint = "http://localhost:15014/".parse().expect("a URL");
        assert_eq!(e.to_string(), "localhost:15014");
        assert!("https://x:1".parse::<Endpoint>().is_err_and(|e| e.contains("plain http")));
        assert!("x".parse::<Endpoint>().is_err_and(|e| e.contains("no port")));
    }
}
