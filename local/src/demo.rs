//! `strait demo-backend`: the demo service's workloads. Every request is answered with one line of JSON naming
//! the version, the workload's own identity and the caller's identity, which the destination proxy passes in
//! `x-forwarded-client-cert` (`By=<destination>;URI=<caller>`); "unknown" when the header is absent.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Address to listen on (the workload's address and port).
    #[arg(long)]
    listen: SocketAddr,
    /// Version reported in every answer, e.g. v1.
    #[arg(long)]
    version: String,
    /// The workload's own SPIFFE identity, reported in every answer.
    #[arg(long)]
    identity: String,
    /// The workload's name, reported in every answer.
    #[arg(long, default_value = "")]
    name: String,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::control::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("demo backend: listening on {}", args.listen))?;
        tracing::info!(listen = %args.listen, version = %args.version, "demo backend listening");
        tokio::select! {
            _ = serve(listener, args) => Ok(()),
            result = crate::control::shutdown_signal() => result,
        }
    })
}

async fn serve(listener: tokio::net::TcpListener, args: DemoArgs) {
    let args = std::sync::Arc::new(args);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let args = args.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let args = args.clone();
                async move { Ok::<_, Infallible>(answer(&args, &request)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

fn answer<B>(args: &DemoArgs, request: &Request<B>) -> Response<Full<Bytes>> {
    let caller = request
        .headers()
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .and_then(strait_proxy::xfcc::caller)
        .map_or_else(|| "unknown".to_string(), |identity| identity.uri());
    let body = serde_json::json!({
        "workload": args.name,
        "version": args.version,
        "identity": args.identity,
        "caller": caller,
        "method": request.method().as_str(),
        "path": request.uri().path(),
    });
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
