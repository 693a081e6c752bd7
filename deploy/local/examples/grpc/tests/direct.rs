//! The example's servers and client on their own (no mesh): what the local-mesh test then checks through the
//! proxies. Also makes `cargo test --workspace` build the example's binaries, which that test runs.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `exe` listening on a free loopback port (via STRAIT_LISTEN, as `strait local` starts it).
fn start(exe: &str, version: &str) -> (Server, SocketAddr) {
    let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let child = Command::new(exe)
        .env("STRAIT_LISTEN", addr.to_string())
        .env("STRAIT_VERSION", version)
        .spawn()
        .expect("start the server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{exe} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
    (Server(child), addr)
}

fn client(args: &[&str]) -> (Value, Output) {
    let out = Command::new(env!("CARGO_BIN_EXE_example-client")).args(args).output().expect("run the client");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?} {out:?}"));
    (json, out)
}

#[test]
fn the_greeter_answers_streams_fails_on_request_and_fails_every_other_flagged_call() {
    let (_server, addr) = start(env!("CARGO_BIN_EXE_example-greeter"), "v7");
    let target = addr.to_string();
    let (unary, out) = client(&["unary", "--target", &target, "--name", "you", "--count", "3"]);
    assert!(out.status.success(), "{unary}");
    assert_eq!(unary["statuses"], serde_json::json!({"0": 3}));
    assert_eq!(unary["versions"], serde_json::json!({"v7": 3}));
    assert_eq!(unary["callers"], serde_json::json!({"unknown": 3}), "no proxy, no caller identity");

    let (empty, out) = client(&["unary", "--target", &target, "--name", ""]);
    assert!(!out.status.success());
    assert_eq!(empty["statuses"], serde_json::json!({"3": 1}));
    assert_eq!(empty["messages"], serde_json::json!({"name is required": 1}));

    let (flaky, _) = client(&["unary", "--target", &target, "--count", "6", "--fail-unavailable"]);
    assert_eq!(flaky["statuses"], serde_json::json!({"0": 3, "14": 3}), "every other call fails");

    let (stream, out) = client(&["stream", "--target", &target, "--count", "3"]);
    assert!(out.status.success(), "{stream}");
    assert_eq!(stream["replies"], serde_json::json!(["Hello #1, world", "Hello #2, world", "Hello #3, world"]));
    assert_eq!(stream["trailers"]["x-example-sent"], "3");

    let (over, _) = client(&["stream", "--target", &target, "--count", "12"]);
    assert_eq!(over["replies"].as_array().map(Vec::len), Some(10));
    assert_eq!(over["status"], 8);
    assert_eq!(over["message"], "at most 10 greetings per call");
    assert_eq!(over["trailers"]["x-example-sent"], "10");
}

#[test]
fn the_echo_server_greets_and_echoes_text_and_64_kib_binary_messages() {
    let (_server, addr) = start(env!("CARGO_BIN_EXE_example-ws-echo"), "v1");
    let (ws, out) = client(&["ws", "--target", &addr.to_string(), "--text", "héllo", "--binary", "65536"]);
    assert!(out.status.success(), "{ws}");
    assert_eq!(ws["text_echoed"], true);
    assert_eq!(ws["binary_echoed"], true);
    assert_eq!(ws["greeting"]["caller"], "unknown");
}
