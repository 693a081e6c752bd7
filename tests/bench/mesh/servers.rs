//! The servers of pod b1 (threads of the benchmark, sockets in b1's namespace): a sink, a short echo, and the
//! same HTTP server on two ports.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_tests::exec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load::block_on_in;
use crate::{BODY, ECHO_BYTES, ECHO_PORT, HTTP_L4_PORT, HTTP_PORT, SINK_PORT};

/// Starts the servers in pod b1 (threads of this process): the sink, the short echo, and the HTTP server on
/// two ports. Returns once all listen.
pub fn start_servers(netns: &str, ip: IpAddr) -> Result<()> {
    let sink = exec::listen_in(netns, SocketAddr::new(ip, SINK_PORT))?;
    std::thread::Builder::new().name("bench-sink".into()).spawn(move || {
        for stream in sink.incoming().flatten() {
            std::thread::spawn(move || sink_connection(stream));
        }
    })?;
    let echo = exec::listen_in(netns, SocketAddr::new(ip, ECHO_PORT))?;
    let http_l7 = exec::listen_in(netns, SocketAddr::new(ip, HTTP_PORT))?;
    let http_l4 = exec::listen_in(netns, SocketAddr::new(ip, HTTP_L4_PORT))?;
    let ns = netns.to_string();
    std::thread::Builder::new().name("bench-servers".into()).spawn(move || {
        let result: Result<()> = block_on_in(&ns, move || async move {
            let echo = tokio::net::TcpListener::from_std(nonblocking(echo)?)?;
            let l7 = tokio::net::TcpListener::from_std(nonblocking(http_l7)?)?;
            let l4 = tokio::net::TcpListener::from_std(nonblocking(http_l4)?)?;
            tokio::spawn(serve_http(l7));
            tokio::spawn(serve_http(l4));
            loop {
                let (stream, _) = echo.accept().await?;
                tokio::spawn(echo_connection(stream));
            }
        });
        if let Err(e) = result {
            eprintln!("bench servers stopped: {e:#}");
        }
    })?;
    Ok(())
}

fn nonblocking(listener: std::net::TcpListener) -> Result<std::net::TcpListener> {
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Reads to EOF, answers the byte count (8 bytes, big-endian) and closes.
fn sink_connection(mut stream: std::net::TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = stream.write_all(&total.to_be_bytes());
}

/// Reads [`ECHO_BYTES`], writes them back and closes first (so TIME_WAIT stays on the server's side).
async fn echo_connection(mut stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; ECHO_BYTES];
    if stream.read_exact(&mut buf).await.is_ok() {
        let _ = stream.write_all(&buf).await;
    }
}

async fn serve_http(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_request: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
