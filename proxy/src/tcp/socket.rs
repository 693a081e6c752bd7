//! Socket options of a transparent proxy: original destination, transparent listeners, marked sockets.
//! socket2 exposes all of them safely, so this crate needs no unsafe code.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::drain::{Drain, Watch};

/// How the node's rules hand a connection to a listener, which decides where its original destination is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Explicit listeners (the local mesh) or TPROXY: the accepted socket's local address is the destination.
    LocalAddress,
    /// iptables/nftables REDIRECT rewrote the destination; the kernel keeps the original (SO_ORIGINAL_DST).
    OriginalDst,
}

/// The address the client meant to reach.
pub fn original_destination(stream: &TcpStream, capture: Capture) -> io::Result<SocketAddr> {
    match capture {
        Capture::LocalAddress => stream.local_addr().map(canonical),
        Capture::OriginalDst => {
            let sock = SockRef::from(stream);
            let local = stream.local_addr()?;
            let addr = if local.is_ipv4() { sock.original_dst_v4()? } else { sock.original_dst_v6()? };
            let addr = addr.as_socket().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "original destination is not an IP address")
            })?;
            Ok(canonical(addr))
        }
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 workload they name.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Binds a listener; `transparent` lets it accept connections TPROXY hands it for addresses that are not
/// local (needs CAP_NET_ADMIN).
///
/// SO_REUSEPORT lets a replacement proxy bind the same ports while this one drains: the kernel spreads new
/// connections over every socket of the group (TPROXY's socket lookup included), a connection stays with the
/// process that accepted it, and once the draining proxy closes its sockets the replacement gets them all.
/// Only sockets of the same user can share a port this way.
pub fn bind_listener(addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, transparent)?)
}

/// [`bind_listener`] for a std listener (the admin server binds before its runtime exists).
pub fn bind_std(addr: SocketAddr, transparent: bool) -> io::Result<std::net::TcpListener> {
    let socket = bind_socket(addr, transparent)?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A socket bound to `addr` with the listener's options, not yet listening. Binding reports a port conflict at
/// once; only `listen` puts the socket in its SO_REUSEPORT group, where the kernel starts handing it
/// connections.
///
/// TCP_NODELAY is set here, once, rather than on every accepted connection: Linux copies a listener's TCP
/// options to the connections it accepts, which saves a system call per connection (every proxied connection
/// wants it: a proxy writes what it has, it has nothing to coalesce).
pub fn bind_socket(addr: SocketAddr, transparent: bool) -> io::Result<Socket> {
    // Non-blocking from its creation (tokio needs it), without the two fcntl calls `set_nonblocking` makes.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // IPv4 has its own listener (see `bind_dual_stack`); this one takes IPv6 only.
        socket.set_only_v6(true)?;
    }
    if transparent {
        if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Starts listening on a socket from [`bind_socket`].
pub fn listen(socket: Socket) -> io::Result<TcpListener> {
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Binds `addr`, and when it is the IPv4 wildcard also the IPv6 wildcard on the same port, so IPv6 pods are
/// captured too. A node without IPv6 just gets the IPv4 socket. Not listening yet: see [`listen`].
pub fn bind_dual_stack(addr: SocketAddr, transparent: bool) -> io::Result<Vec<Socket>> {
    let mut sockets = vec![bind_socket(addr, transparent)?];
    if addr.ip() == IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) {
        let v6 = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), addr.port());
        match bind_socket(v6, transparent) {
            Ok(socket) => sockets.push(socket),
            Err(e) => tracing::info!(%v6, error = %e, "no IPv6 listener (IPv6 unavailable on this node?)"),
        }
    }
    Ok(sockets)
}

/// Options for the proxy's own outgoing connections.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    /// SO_MARK so the node's rules never capture the proxy's own traffic again.
    pub mark: Option<u32>,
    /// A destination that drops SYNs must not hold a caller for the kernel's two minutes.
    pub connect_timeout: std::time::Duration,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing { mark: None, connect_timeout: std::time::Duration::from_secs(5) }
    }
}

impl Outgoing {
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        match tokio::time::timeout(self.connect_timeout, self.connect_now(addr)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr} timed out"))),
        }
    }

    async fn connect_now(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        // Non-blocking from its creation: one system call per connection, not three (`set_nonblocking` is
        // fcntl F_GETFL then F_SETFL), on the path of every connection the proxy opens.
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        socket.set_tcp_nodelay(true)?;
        let socket = TcpSocket::from_std_stream(socket.into());
        socket.connect(addr).await
    }
}

/// Accepts on `listener` until the drain starts, handing each connection, with a drain watch of its own, to
/// `handle`; then closes the listener.
///
/// Closing a listener resets the connections queued on it that were not accepted yet, and with SO_REUSEPORT the
/// kernel keeps queuing on it until it is closed. So, once signaled, the loop takes everything already queued
/// (those connections are served like any other in flight) and closes at once; what still races in between is
/// handed to a replacement by the kernel when `net.ipv4.tcp_migrate_req` is set (see [`enable_listener_migration`]).
pub(crate) async fn accept_until_drained<F, Fut>(listener: TcpListener, drain: &Drain, handle: F)
where
    F: Fn(TcpStream, SocketAddr, Watch) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut signal = drain.watch();
    loop {
        tokio::select! {
            biased;
            () = signal.signaled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    tokio::spawn(handle(tcp, canonical(peer), drain.watch()));
                }
                Err(e) => accept_error(&e).await,
            },
        }
    }
    let local = listener.local_addr().ok();
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(?local, error = %e, "could not take the queued connections before closing the listener");
            return;
        }
    };
    // Non-blocking (it was bound so): accept until the queue is empty.
    let mut queued = 0usize;
    while let Ok((tcp, peer)) = listener.accept() {
        // accept(2) does not pass the listener's O_NONBLOCK on to the new socket, and tokio needs it: a
        // blocking socket would park a runtime worker in read(2) until the client spoke again.
        match tcp.set_nonblocking(true).and_then(|()| TcpStream::from_std(tcp)) {
            Ok(tcp) => {
                queued += 1;
                tokio::spawn(handle(tcp, canonical(peer), drain.watch()));
            }
            Err(e) => tracing::debug!(error = %e, "a queued connection could not join the runtime"),
        }
    }
    drop(listener);
    tracing::debug!(?local, queued, "listener closed for the drain");
}

/// Asks the kernel to hand the connections queued on a closed listener to another listener of its SO_REUSEPORT
/// group (`net.ipv4.tcp_migrate_req`, Linux 5.14+), so that a draining proxy closing its listeners resets no
/// connection its replacement could take. A node setting, per network namespace; the proxy that installs the
/// node's rules sets it too. Without the permission (a read-only /proc/sys) it only says so.
pub fn enable_listener_migration() {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    match std::fs::read_to_string(PATH) {
        Ok(value) if value.trim() == "1" => {}
        Ok(_) => match std::fs::write(PATH, "1") {
            Ok(()) => tracing::info!(
                "net.ipv4.tcp_migrate_req set to 1: a draining proxy's queued connections go to its replacement"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not set net.ipv4.tcp_migrate_req=1; set it on the node, or a proxy replacement may reset the few connections queued at the moment the old proxy closes its listeners")
            }
        },
        Err(e) => tracing::info!(error = %e, "no net.ipv4.tcp_migrate_req on this kernel (before 5.14?)"),
    }
}

/// Transient accept errors (out of file descriptors, aborted handshakes) must not end the listener.
pub(crate) async fn accept_error(e: &io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Connections still queued on the listener when the drain starts are taken and served like any other,
    /// on non-blocking sockets: accept(2) does not pass O_NONBLOCK on, and a blocking socket under tokio parks a
    /// worker thread in read(2) (under load the client saw no answer, then a reset when the process exited).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_queued_at_the_drain_are_served_on_non_blocking_sockets() {
        let listener = bind_listener(([127, 0, 0, 1], 0).into(), false).expect("bind");
        let addr = listener.local_addr().expect("address");
        // Queued before anything accepts: the kernel completes the handshakes on its own.
        let mut clients = Vec::new();
        for i in 0..8u8 {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            client.write_all(&[i]).await.expect("write");
            clients.push(client);
        }
        let drain = Drain::new();
        drain.start();
        let blocking = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = blocking.clone();
        accept_until_drained(listener, &drain, move |mut tcp, _peer, watch| {
            let seen = seen.clone();
            async move {
                if !SockRef::from(&tcp).nonblocking().expect("socket flags") {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let mut byte = [0u8; 1];
                if tcp.read_exact(&mut byte).await.is_ok() {
                    let _ = tcp.write_all(&[byte[0] + 100]).await;
                }
                drop(watch);
            }
        })
        .await;
        for (i, client) in clients.iter_mut().enumerate() {
            let mut answer = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut answer))
                .await
                .expect("a queued connection is answered")
                .expect("a queued connection is not reset");
            assert_eq!(answer[0], i as u8 + 100);
        }
        assert_eq!(blocking.load(std::sync::atomic::Ordering::Relaxed), 0, "a queued connection was left blocking");
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed once the queue is taken");
    }

    /// Accepted connections get TCP_NODELAY from the listener (no system call of their own), on both address
    /// families, and the proxy's own connections are created non-blocking with TCP_NODELAY.
    #[tokio::test]
    async fn accepted_and_outgoing_connections_have_nodelay() {
        for ip in [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)] {
            let listener = match bind_listener(SocketAddr::new(ip, 0), false) {
                Ok(listener) => listener,
                Err(e) if ip.is_ipv6() => {
                    eprintln!("no IPv6 loopback here ({e}); IPv4 only");
                    continue;
                }
                Err(e) => panic!("bind: {e}"),
            };
            let addr = listener.local_addr().expect("address");
            let client = TcpStream::connect(addr).await.expect("connect");
            assert!(!client.nodelay().expect("client option"), "a plain client starts with Nagle on");
            let (accepted, _) = listener.accept().await.expect("accept");
            assert!(accepted.nodelay().expect("accepted option"), "{ip}: TCP_NODELAY not inherited from the listener");

            let outgoing = Outgoing::default().connect(addr).await.expect("the proxy's own connect");
            assert!(outgoing.nodelay().expect("outgoing option"), "{ip}: the proxy's connection lacks TCP_NODELAY");
            assert!(SockRef::from(&outgoing).nonblocking().expect("flags"), "{ip}: the proxy's connection blocks");
        }
    }
}
