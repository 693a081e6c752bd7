//! Authorization that cannot be sidestepped, end to end through both proxies: the classic bypass spellings
//! of a path and a method against DENY and ALLOW rules, non-WebSocket upgrades, forged identity headers and
//! what a 403 tells the caller. Requests are written byte for byte from pod a1 (no client library tidies
//! them up); the `http` backends answer with the path they received, so each case checks both the decision
//! and that the backend got exactly the request the decision was taken on.
//!
//! ```text
//! a1 --> reviews (10.96.0.20:80)  header `x-policy: allow` -> subset v2 (b2), otherwise v1 (b1)
//!          b1: DENY paths [/admin, /admin/*]; DENY methods [DELETE] on /items*
//!          b2: ALLOW GET on [/public, /public/*] (everything else denied)
//! a1 --> web (10.96.0.22:8081, port name `web`: undeclared, sniffed as HTTP) -> b1:8081
//! a1 --> objects (10.96.0.23:80, appProtocol http, TrafficRoute `escapedSlashes: Keep`) -> b1:8082
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use strait_api::{Endpoint, Service, ServicePort};
use strait_tests::backend;
use strait_tests::mesh::NAMESPACE;
use strait_tests::mesh_http::{authorization_policy, reviews_policy, traffic_route, HttpMesh};
use strait_tests::{connect_from, require_root};

const WEB_VIP: &str = "10.96.0.22";
const WEB_PORT: u16 = 8081;
const OBJECTS_VIP: &str = "10.96.0.23";
const OBJECTS_TARGET_PORT: u16 = 8082;

/// The mesh of this file (see the module documentation).
fn start() -> Result<HttpMesh> {
    HttpMesh::start(&[], &[], |config| {
        config.destination_policies.push(reviews_policy(""));
        config.traffic_routes.push(traffic_route(
            "reviews",
            r#"
hosts: [reviews]
http:
- name: allow-side
  match: [{headers: {x-policy: {exact: allow}}}]
  route: [{destination: {host: reviews, subset: v2}}]
- name: deny-side
  route: [{destination: {host: reviews, subset: v1}}]
"#,
        ));
        config.authorization_policies.push(authorization_policy(
            "deny-admin",
            r#"
selector: {matchLabels: {pod: b1}}
action: DENY
rules:
- to: [{operation: {ports: [8080], paths: ["/admin", "/admin/*"]}}]
- to: [{operation: {ports: [8080], methods: [DELETE], paths: ["/items*"]}}]
"#,
        ));
        config.authorization_policies.push(authorization_policy(
            "allow-public",
            r#"
selector: {matchLabels: {pod: b2}}
action: ALLOW
rules:
- to: [{operation: {methods: [GET], paths: ["/public", "/public/*"]}}]
"#,
        ));
        let b1 = config.workloads.iter().find(|w| w.name == "b1").map(|w| w.address);
        config.services.push(Service {
            name: "web".into(),
            namespace: NAMESPACE.into(),
            addresses: vec![WEB_VIP.parse().expect("a valid constant address")],
            ports: vec![ServicePort {
                name: Some("web".into()),
                port: WEB_PORT,
                target_port: None,
                app_protocol: None,
            }],
            endpoints: b1.map(|address| Endpoint { address, ready: true }).into_iter().collect(),
        });
        config.services.push(Service {
            name: "objects".into(),
            namespace: NAMESPACE.into(),
            addresses: vec![OBJECTS_VIP.parse().expect("a valid constant address")],
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(OBJECTS_TARGET_PORT),
                app_protocol: Some("http".into()),
            }],
            endpoints: b1.map(|address| Endpoint { address, ready: true }).into_iter().collect(),
        });
        config.traffic_routes.push(traffic_route("objects", "{hosts: [objects], escapedSlashes: Keep}"));
    })
}

/// One response as read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
    /// The path the backend says it received.
    fn backend_path(&self) -> Option<String> {
        Some(self.json()?.get("path")?.as_str()?.to_string())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `head` (request line and headers, without the final empty line) plus `Connection: close` from a1
/// to `addr`, and reads the response to the end.
fn send_raw(mesh: &HttpMesh, addr: SocketAddr, head: &[u8]) -> Result<Raw> {
    let mut stream = connect_from(mesh.client(), addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = head.to_vec();
    request.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    stream.write_all(&request)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).context("reading the response")?;
    parse(&response)
}

fn parse(response: &[u8]) -> Result<Raw> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").context("no end of the response head")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = response[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    }
    Ok(Raw { status, headers, body })
}

fn dechunk(mut chunked: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = chunked.windows(2).position(|w| w == b"\r\n").context("chunk size line")?;
        let size_text = String::from_utf8_lossy(&chunked[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        chunked = &chunked[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(chunked.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&chunked[..size]);
        chunked = &chunked[size + 2..];
    }
}

/// What must happen to a spelling.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// 403 from the destination proxy.
    Denied,
    /// 400 from a proxy: the spelling is refused before any rule is read.
    Refused,
    /// Allowed, and the backend received exactly this path.
    Reaches(&'static str),
}

/// (method, request target, which side's rules, expected outcome). `allow` sends `x-policy: allow` (b2,
/// ALLOW-only); otherwise b1 (DENY rules).
const CORPUS: &[(&str, &[u8], bool, Want)] = &[
    // The DENY side: every spelling of /admin is /admin.
    ("GET", b"/admin", false, Want::Denied),
    ("GET", b"/admin/", false, Want::Denied),
    ("GET", b"/admin/users", false, Want::Denied),
    ("GET", b"/admin?x=1", false, Want::Denied),
    ("GET", b"/admin#top", false, Want::Denied),
    // Repeated slashes.
    ("GET", b"//admin", false, Want::Denied),
    ("GET", b"///admin///users", false, Want::Denied),
    ("GET", b"/admin//", false, Want::Denied),
    // Dot segments.
    ("GET", b"/./admin", false, Want::Denied),
    ("GET", b"/../admin", false, Want::Denied),
    ("GET", b"/items/../admin", false, Want::Denied),
    ("GET", b"/items/./../admin/users", false, Want::Denied),
    ("GET", b"/admin/.", false, Want::Denied),
    ("GET", b"/admin/users/..", false, Want::Denied),
    // Slashes are merged before dot segments go, so the `..` climbs out of /items (as a file system reads it).
    ("GET", b"/items//../admin", false, Want::Denied),
    // Percent-encoded unreserved characters, any hex case.
    ("GET", b"/%61dmin", false, Want::Denied),
    ("GET", b"/%61%64%6d%69%6E", false, Want::Denied),
    ("GET", b"/%2e/admin", false, Want::Denied),
    ("GET", b"/items/%2e%2e/admin", false, Want::Denied),
    ("GET", b"/items/.%2E/admin", false, Want::Denied),
    // Encoded separators.
    ("GET", b"/admin%2F", false, Want::Refused),
    ("GET", b"/admin%2fusers", false, Want::Refused),
    ("GET", b"/items%2F..%2Fadmin", false, Want::Refused),
    ("GET", b"/items/..%2Fadmin", false, Want::Refused),
    ("GET", b"/admin%5C", false, Want::Refused),
    ("GET", b"/items%5c..%5cadmin", false, Want::Refused),
    ("GET", b"/items\\..\\admin", false, Want::Refused),
    // Path parameters.
    ("GET", b"/admin;x", false, Want::Refused),
    ("GET", b"/admin;jsessionid=1/users", false, Want::Refused),
    ("GET", b"/..;/admin", false, Want::Refused),
    ("GET", b"/items/..;/admin", false, Want::Refused),
    ("GET", b"/admin%3Bx", false, Want::Refused),
    // Double encoding.
    ("GET", b"/%2561dmin", false, Want::Refused),
    ("GET", b"/admin%252F", false, Want::Refused),
    ("GET", b"/items/%252e%252e/admin", false, Want::Refused),
    // Overlong UTF-8, invalid UTF-8, NUL.
    ("GET", b"/%C0%AE%C0%AE/admin", false, Want::Refused),
    ("GET", b"/items/%c0%ae%c0%ae/admin", false, Want::Refused),
    ("GET", b"/%c0%afadmin", false, Want::Refused),
    ("GET", b"/admin%FF", false, Want::Refused),
    ("GET", b"/admin\xff", false, Want::Refused),
    ("GET", b"/admin%00", false, Want::Refused),
    ("GET", b"/admin%00.json", false, Want::Refused),
    // Case: paths are case-sensitive; the backend gets exactly what was allowed.
    ("GET", b"/ADMIN", false, Want::Reaches("/ADMIN")),
    ("GET", b"/%41dmin", false, Want::Reaches("/Admin")),
    // Methods: exact tokens; a lower-case spelling cannot dodge DENY DELETE.
    ("DELETE", b"/items", false, Want::Denied),
    ("delete", b"/items", false, Want::Refused),
    ("Delete", b"/items/1", false, Want::Refused),
    ("GET", b"/items", false, Want::Reaches("/items")),
    ("POST", b"/items", false, Want::Reaches("/items")),
    // Ordinary paths reach the backend normalized.
    ("GET", b"/a//b/./c/../d", false, Want::Reaches("/a/b/d")),
    ("GET", b"/caf%c3%a9", false, Want::Reaches("/caf%C3%A9")),
    // The ALLOW side: only GET /public/* is allowed, whatever it is spelt as.
    ("GET", b"/public/x", true, Want::Reaches("/public/x")),
    ("GET", b"//public/x", true, Want::Reaches("/public/x")),
    ("GET", b"/public/./x", true, Want::Reaches("/public/x")),
    ("GET", b"/%70ublic/x", true, Want::Reaches("/public/x")),
    ("GET", b"/public/../private", true, Want::Denied),
    ("GET", b"/public/x/../../private", true, Want::Denied),
    ("GET", b"/public/%2e%2e/private", true, Want::Denied),
    ("GET", b"/public/..%2Fprivate", true, Want::Refused),
    ("GET", b"/public/..;/private", true, Want::Refused),
    ("GET", b"/public/..\\private", true, Want::Refused),
    ("GET", b"/public/%C0%AE%C0%AE/private", true, Want::Refused),
    ("GET", b"/public/%252e%252e/private", true, Want::Refused),
    ("GET", b"/PUBLIC/x", true, Want::Denied),
    ("get", b"/public/x", true, Want::Refused),
];

/// The whole corpus through both proxies: every spelling is denied, refused, or reaches the backend as
/// exactly the path the decision was taken on. Collects every failure before failing, so one run shows
/// the whole picture.
#[test]
fn path_and_method_bypass_corpus() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    assert!(CORPUS.len() >= 40, "the corpus has {} spellings", CORPUS.len());
    let mesh = start()?;
    let mut failures = Vec::new();
    for (method, target, allow_side, want) in CORPUS {
        let mut head = Vec::new();
        head.extend_from_slice(method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(target);
        head.extend_from_slice(b" HTTP/1.1\r\nhost: reviews");
        if *allow_side {
            head.extend_from_slice(b"\r\nx-policy: allow");
        }
        let shown =
            format!("{method} {}{}", String::from_utf8_lossy(target), if *allow_side { " (ALLOW side)" } else { "" });
        let response = match send_raw(&mesh, HttpMesh::reviews_addr(), &head) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{shown}: no response: {e:#}"));
                continue;
            }
        };
        let from_backend = response.header("x-backend-name").is_some();
        let ok = match want {
            Want::Denied => response.status == 403 && !from_backend,
            Want::Refused => response.status == 400 && !from_backend,
            Want::Reaches(path) => {
                let expected = if *allow_side { "reviews-b2" } else { "reviews-b1" };
                response.status == 200
                    && response.header("x-backend-name") == Some(expected)
                    && response.backend_path().as_deref() == Some(*path)
            }
        };
        if !ok {
            failures.push(format!(
                "{shown}: want {want:?}, got {} from {} (backend saw path {:?}): {}",
                response.status,
                response.header("x-backend-name").unwrap_or("a proxy"),
                response.backend_path(),
                response.text().trim()
            ));
        }
    }
    if !failures.is_empty() {
        bail!("{} of {} spellings went wrong:\n{}\n{}", failures.len(), CORPUS.len(), failures.join("\n"), mesh.logs());
    }
    Ok(())
}

/// A 403 says access was denied and nothing about which policy to work around; the destination's access
/// line and `strait_policy_denials_total` name it.
#[test]
fn a_403_does_not_name_the_policy() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = start()?;
    let response = send_raw(&mesh, HttpMesh::reviews_addr(), b"GET /admin HTTP/1.1\r\nhost: reviews")?;
    ensure!(response.status == 403, "{response:?}\n{}", mesh.logs());
    let body = response.text();
    ensure!(!body.contains("deny-admin") && !body.contains("shop/"), "the 403 body names the policy: {body:?}");
    let denials = mesh.mesh.metric("node-b", "strait_policy_denials_total", &[("policy", "shop/deny-admin")])?;
    ensure!(denials == 1.0, "denials of shop/deny-admin on node-b: {denials}");
    // The access line is written after the response: poll for it rather than race the writer.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logs = mesh.mesh.proxy_logs("node-b");
        let access = logs.lines().find(|l| l.contains("access") && l.contains("status=403")).map(str::to_owned);
        if let Some(line) = access {
            ensure!(line.contains("detail=shop/deny-admin"), "the access line does not name the policy: {line}");
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no access line for the 403 on node-b within 5 s:\n{}",
            mesh.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `Upgrade: h2c` is not spliced: the request goes on as plain HTTP (the backend sees no upgrade and answers
/// 200), so nothing after it can pass as raw bytes behind the policy's back.
#[test]
fn h2c_upgrade_is_not_tunnelled_past_policy() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = start()?;
    let response = send_raw(
        &mesh,
        HttpMesh::reviews_addr(),
        b"GET /upgrade HTTP/1.1\r\nhost: reviews\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA",
    );
    let response = response.map_err(|e| anyhow::anyhow!("{e:#}\n{}", mesh.logs()))?;
    check_plain(&response, &mesh)
}

/// An unknown upgrade token is stripped too; a WebSocket handshake to a denied path is denied before any
/// upgrade.
#[test]
fn unknown_upgrade_is_not_tunnelled_past_policy() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = start()?;
    let response = send_raw(
        &mesh,
        HttpMesh::reviews_addr(),
        b"GET /upgrade HTTP/1.1\r\nhost: reviews\r\nconnection: upgrade\r\nupgrade: raw-tcp/1",
    )?;
    check_plain(&response, &mesh)?;
    let denied = send_raw(
        &mesh,
        HttpMesh::reviews_addr(),
        b"GET /admin/upgrade HTTP/1.1\r\nhost: reviews\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
    )?;
    ensure!(denied.status == 403, "a WebSocket handshake to a denied path: {denied:?}\n{}", mesh.logs());
    Ok(())
}

fn check_plain(response: &Raw, mesh: &HttpMesh) -> Result<()> {
    ensure!(
        response.status == 200,
        "want a plain 200, got {} ({:?})\n{}",
        response.status,
        response.headers,
        mesh.logs()
    );
    let seen = response.json().context("the backend's JSON answer")?;
    ensure!(seen["headers"].get("upgrade").is_none(), "the backend saw an upgrade: {seen}");
    ensure!(seen["headers"].get("http2-settings").is_none(), "the backend saw HTTP2-Settings: {seen}");
    Ok(())
}

/// A client's own `x-forwarded-client-cert` (or `x-strait-*`) never reaches a pod, on a port declared HTTP or
/// on one only sniffed as HTTP, where the destination relays bytes and only the source can strip it.
#[test]
fn forged_identity_headers_are_stripped_on_every_port() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = start()?;
    let b1 = mesh.mesh.cluster.pod("b1");
    let web = backend::http(b1.netns_name(), SocketAddr::new(IpAddr::V4(b1.ip()), WEB_PORT), "web-b1", "v1")?;
    let fake = "By=spiffe://cluster.local/ns/shop/sa/sa-b1;URI=spiffe://cluster.local/ns/shop/sa/admin";
    let web_addr = SocketAddr::new(WEB_VIP.parse()?, WEB_PORT);
    for (addr, host) in [(HttpMesh::reviews_addr(), "reviews"), (web_addr, "web")] {
        let head = format!(
            "GET /whoami HTTP/1.1\r\nhost: {host}\r\nx-forwarded-client-cert: {fake}\r\nx-strait-peer-identity: admin"
        );
        let response = send_raw(&mesh, addr, head.as_bytes())?;
        ensure!(response.status == 200, "{host}: {response:?}\n{}", mesh.logs());
        let seen = response.json().context("the backend's JSON answer")?;
        let xfcc = seen["headers"].get("x-forwarded-client-cert").and_then(|v| v.as_str()).unwrap_or_default();
        ensure!(!xfcc.contains("sa/admin"), "{host}: the pod got the forged identity: {xfcc}");
        ensure!(seen["headers"].get("x-strait-peer-identity").is_none(), "{host}: x-strait-* reached the pod: {seen}");
    }
    drop(web);
    Ok(())
}

/// A host whose TrafficRoute says `escapedSlashes: Keep` gets `%2F` through both proxies as data (object keys),
/// with every other normalization still applied; every other host still refuses it with 400.
#[test]
fn escaped_slashes_pass_only_to_a_host_that_opted_in() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = start()?;
    let b1 = mesh.mesh.cluster.pod("b1");
    let objects =
        backend::http(b1.netns_name(), SocketAddr::new(IpAddr::V4(b1.ip()), OBJECTS_TARGET_PORT), "objects-b1", "v1")?;
    let objects_addr = SocketAddr::new(OBJECTS_VIP.parse()?, 80);
    let cases: [(SocketAddr, &str, &str, Option<&str>); 5] = [
        (objects_addr, "objects", "/objects/a%2fb", Some("/objects/a%2Fb")),
        (objects_addr, "objects", "/objects/a%5Cb//../%61%2F", Some("/objects/a%2F")),
        (objects_addr, "objects", "/objects/a\\b", None),
        (objects_addr, "objects", "/objects/a;b", None),
        (HttpMesh::reviews_addr(), "reviews", "/objects/a%2Fb", None),
    ];
    for (addr, host, path, want) in cases {
        let head = format!("GET {path} HTTP/1.1\r\nhost: {host}");
        let response = send_raw(&mesh, addr, head.as_bytes())?;
        match want {
            Some(expected) => ensure!(
                response.status == 200 && response.backend_path().as_deref() == Some(expected),
                "{host} {path}: want {expected} at the backend, got {response:?}\n{}",
                mesh.logs()
            ),
            None => ensure!(
                response.status == 400 && response.header("x-backend-name").is_none(),
                "{host} {path}: want 400 from a proxy, got {response:?}\n{}",
                mesh.logs()
            ),
        }
    }
    drop(objects);
    Ok(())
}
