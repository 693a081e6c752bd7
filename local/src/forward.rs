//! How a workload's own process reaches the mesh's services as that workload.
//!
//! On loopback, the node proxy knows a caller by its source address, and a process connects from 127.0.0.1
//! unless it binds another. So every process `strait local` starts (`run:`) or runs (`strait local exec --as`)
//! gets, for each service of its namespace, a forwarder: a listener on 127.0.0.1 (a port of its own) that
//! connects on to the service address FROM the workload's address, and the service's address in its
//! environment as Kubernetes gives it to a pod (`REVIEWS_SERVICE_HOST`, `REVIEWS_SERVICE_PORT`,
//! `REVIEWS_SERVICE_PORT_HTTP`, plus `STRAIT_SERVICE_REVIEWS=host:port`). Any client that takes its target from
//! the environment or the command line then calls as the workload, whatever its language, with nothing
//! preloaded. A client that can bind its source address may instead bind `STRAIT_SOURCE_ADDR` and call the
//! service address itself. (Anyone on the machine can bind a loopback address, so a forwarder gives away
//! nothing that was not already there.)
//!
//! In network namespaces (`--netns`) the pod's own address is the identity and the node captures its traffic:
//! the variables name the service addresses directly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use strait_control::model::Service;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Connections one forwarder carries at once; one more waits for a free slot.
const MAX_CONNECTIONS: usize = 1024;

/// `reviews-api` -> `REVIEWS_API`, as Kubernetes names service variables.
pub fn env_name(service: &str) -> String {
    service.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

/// The variables naming `service`, reached at `host` on `ports` ((port name, local port) in declaration order).
fn service_env(service: &Service, host: IpAddr, ports: &[(String, u16)]) -> Vec<(String, String)> {
    let name = env_name(&service.name);
    let mut env = Vec::new();
    let Some((_, first)) = ports.first() else { return env };
    env.push((format!("{name}_SERVICE_HOST"), host.to_string()));
    env.push((format!("{name}_SERVICE_PORT"), first.to_string()));
    env.push((format!("STRAIT_SERVICE_{name}"), SocketAddr::new(host, *first).to_string()));
    for (port_name, port) in ports {
        if !port_name.is_empty() {
            env.push((format!("{name}_SERVICE_PORT_{}", env_name(port_name)), port.to_string()));
        }
    }
    env
}

/// The services of `namespace`, each with its first address.
fn services_of<'a>(services: &'a [Service], namespace: &'a str) -> impl Iterator<Item = (&'a Service, IpAddr)> {
    services.iter().filter(move |s| s.namespace == namespace).filter_map(|s| Some((s, *s.addresses.first()?)))
}

/// `--netns`: the variables for a pod of `namespace`, naming the service addresses themselves.
pub fn direct_env(services: &[Service], namespace: &str) -> Vec<(String, String)> {
    services_of(services, namespace)
        .flat_map(|(s, vip)| {
            let ports: Vec<(String, u16)> =
                s.ports.iter().map(|p| (p.name.clone().unwrap_or_default(), p.port)).collect();
            service_env(s, vip, &ports)
        })
        .collect()
}

/// Starts a forwarder from `source` for every service port of `namespace` (tasks on the current runtime, ended
/// with it); returns the variables naming them.
pub async fn start(source: IpAddr, services: &[Service], namespace: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for (service, vip) in services_of(services, namespace) {
        let mut ports = Vec::new();
        for port in &service.ports {
            let listener = TcpListener::bind((local, 0))
                .await
                .with_context(|| format!("listening for the forwarder to service {}", service.name))?;
            let local_port = listener.local_addr().context("the forwarder's address")?.port();
            tokio::spawn(forward(listener, source, SocketAddr::new(vip, port.port)));
            ports.push((port.name.clone().unwrap_or_default(), local_port));
        }
        env.extend(service_env(service, local, &ports));
    }
    Ok(env)
}

async fn forward(listener: TcpListener, source: IpAddr, target: SocketAddr) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "forwarder: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            match connect_from(source, target).await {
                Ok(outbound) => {
                    let (mut a, mut b) = (inbound, outbound);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                // Closing the client's connection is how it learns: as if the service had refused it.
                Err(e) => tracing::warn!(error = %e, %source, %target, "forwarder: cannot connect"),
            }
        });
    }
}

/// A connection to `target` from `source` (any port).
pub async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn service(text: &str) -> Service {
        serde_yaml::from_str(text).expect("a test service")
    }

    #[test]
    fn variables_are_named_as_kubernetes_names_them() {
        let services = [
            service("{name: reviews-api, namespace: demo, addresses: [10.96.0.10], ports: [{name: grpc, port: 50051}, {name: http-alt, port: 8080}]}"),
            service("{name: other, namespace: elsewhere, addresses: [10.96.0.11], ports: [{port: 80}]}"),
        ];
        let env = direct_env(&services, "demo");
        let expected: Vec<(String, String)> = [
            ("REVIEWS_API_SERVICE_HOST", "10.96.0.10"),
            ("REVIEWS_API_SERVICE_PORT", "50051"),
            ("STRAIT_SERVICE_REVIEWS_API", "10.96.0.10:50051"),
            ("REVIEWS_API_SERVICE_PORT_GRPC", "50051"),
            ("REVIEWS_API_SERVICE_PORT_HTTP_ALT", "8080"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected, "only the namespace's own services");
    }

    #[tokio::test]
    async fn a_forwarder_connects_from_the_workloads_address() {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("target");
        let target_addr = target.local_addr().expect("addr");
        let text = format!(
            "{{name: echo, namespace: demo, addresses: [127.0.0.1], ports: [{{name: tcp, port: {}}}]}}",
            target_addr.port()
        );
        let source: IpAddr = "127.0.77.9".parse().expect("ip");
        let env = start(source, &[service(&text)], "demo").await.expect("forwarders");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).expect(k);
        let mut client = TcpStream::connect(get("STRAIT_SERVICE_ECHO")).await.expect("connect to the forwarder");
        let (mut accepted, peer) = target.accept().await.expect("accept");
        assert_eq!(peer.ip(), source, "the service sees the workload's address");
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        accepted.write_all(b"pong").await.expect("write back");
        client.read_exact(&mut buf).await.expect("read back");
        assert_eq!(&buf, b"pong");
    }
}
