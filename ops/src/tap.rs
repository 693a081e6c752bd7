//! `strait tap`: the live stream of requests the node proxies serve (their admin `/tap`), filtered, sampled and
//! bounded at each proxy, merged here.

use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::http::Endpoint;
use crate::output::Format;
use crate::status::ControlArg;

#[derive(clap::Args, Debug)]
pub struct TapArgs {
    /// Requests from or to this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Requests to this service (name, or hostname).
    #[arg(long)]
    pub to: Option<String>,
    /// Requests whose path starts with this.
    #[arg(long)]
    pub path: Option<String>,
    /// The share of matching requests shown, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub sample: f64,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 1000)]
    pub limit: u64,
    /// Stop after this many seconds (at most 600).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only this node's proxy (default: every connected proxy).
    #[arg(long)]
    pub node: Option<String>,
    /// Tap this admin address instead of asking the control plane (in a cluster: after `kubectl -n
    /// strait-system port-forward pod/<strait-proxy pod> 15000`, `--admin 127.0.0.1:15000`).
    #[arg(long)]
    pub admin: Vec<Endpoint>,
    #[command(flatten)]
    pub control: ControlArg,
    /// `table`: one readable line per request; `json`: the proxies' JSON lines as they come.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

/// A proxy's line longer than this is not one of its events.
const MAX_LINE: usize = 64 * 1024;

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(args: &TapArgs) -> String {
    let mut q = format!("sample={}&limit={}&seconds={}", args.sample, args.limit, args.seconds);
    for (key, value) in [("namespace", &args.namespace), ("to", &args.to), ("path", &args.path)] {
        if let Some(value) = value {
            q.push_str(&format!("&{key}={}", encode(value)));
        }
    }
    q
}

pub async fn run(args: TapArgs) -> anyhow::Result<bool> {
    let admins = if args.admin.is_empty() {
        let status = crate::status::fetch(&args.control.control).await?;
        let admins: Vec<Endpoint> = status
            .proxies
            .iter()
            .filter(|p| p.connected_streams > 0 && args.node.as_ref().is_none_or(|n| &p.node == n))
            .filter_map(|p| p.admin_address.as_deref()?.parse().ok())
            .collect();
        anyhow::ensure!(
            !admins.is_empty(),
            "no connected proxy{} reported an admin address: pass --admin",
            match &args.node {
                Some(node) => format!(" on {node}"),
                None => String::new(),
            }
        );
        admins
    } else {
        args.admin.clone()
    };
    let path = format!("/tap?{}", query(&args));
    let (tx, mut rx) = mpsc::channel::<String>(256);
    for admin in admins {
        let response = admin.open(&path).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            anyhow::bail!("tap on {admin}: {status}: {}", String::from_utf8_lossy(&body).trim());
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut body = response.into_body();
            let mut buffer: Vec<u8> = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                buffer.extend_from_slice(&data);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    if tx.send(String::from_utf8_lossy(&line).trim_end().to_string()).await.is_err() {
                        return;
                    }
                }
                if buffer.len() > MAX_LINE {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut shown = 0;
    while let Some(line) = rx.recv().await {
        match args.output {
            Format::Json | Format::Yaml => println!("{line}"),
            Format::Table => println!("{}", render(&line)),
        }
        if !line.starts_with("{\"dropped\"") {
            shown += 1;
            if shown >= args.limit {
                break;
            }
        }
    }
    Ok(true)
}

/// `source  demo/client -> demo/reviews-v2 (v2)  GET /  200  3ms  route=canary  subset=v2  upstream=127.0.2.3:9080`
fn render(line: &str) -> String {
    let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else { return line.to_string() };
    if let Some(dropped) = e["dropped"].as_u64() {
        return format!("... {dropped} request(s) not shown: this reader fell behind the proxy");
    }
    let s = |key: &str| e[key].as_str().unwrap_or("-").to_string();
    let flags = match s("flags").as_str() {
        "-" => String::new(),
        flags => format!("  flags={flags}"),
    };
    format!(
        "{:<11} {}/{} -> {}/{} ({})  {} {}  {}  {}ms  route={}  subset={}  upstream={}{flags}",
        s("reporter"),
        s("sourceNamespace"),
        s("sourceWorkload"),
        s("destinationNamespace"),
        s("destinationWorkload"),
        s("destinationVersion"),
        s("method"),
        s("path"),
        e["status"],
        e["durationMs"],
        s("route"),
        s("subset"),
        s("upstream"),
    )
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn a_line_shows_the_route_and_the_subset() {
        let line = r#"{"reporter":"source","sourceNamespace":"demo","sourceWorkload":"client","destinationNamespace":"demo","destinationWorkload":"reviews-v2","destinationVersion":"v2","method":"GET","path":"/","status":200,"durationMs":3,"route":"canary","subset":"v2","upstream":"127.0.2.3:9080","flags":"-"}"#;
        assert_eq!(
            render(line),
            "source      demo/client -> demo/reviews-v2 (v2)  GET /  200  3ms  route=canary  subset=v2  upstream=127.0.2.3:9080"
        );
        let dropped = render(r#"{"dropped":7}"#);
        assert!(dropped.starts_with("... 7 request(s)"), "{dropped}");
    }
}
