//! `strait local --netns`: the operator's way in. The control plane's monitoring port and each node proxy's
//! admin port live inside network namespaces that the host does not route to (the host's network is left
//! alone), so `strait status`, `check`, `config` and `tap` run on the host could reach neither. `strait local`
//! listens on the loopback addresses the mesh on loopback uses (moved by `--base-ip`): the monitoring port on
//! `<base>.0.2:15014`, node i's admin port on `<base>.<i+1>.1:15000`, and carries each connection into the
//! namespace. The proxies advertise the forwarded admin address to the control plane (`--advertise-admin`), so
//! the commands find them as they do on loopback. A forwarded connection reaches the proxy from 127.0.0.1 of
//! its node's namespace: what the admin port keeps for local peers (`/tap`) stays for users of this machine.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections one forward carries at once; one more waits for a free slot.
const MAX_CONNECTIONS: usize = 64;

/// A host loopback address carried to `target` inside `netns`.
pub struct Forward {
    pub listen: SocketAddr,
    pub netns: String,
    pub target: SocketAddr,
    /// For the error when `listen` is taken, e.g. "node-a admin".
    pub what: String,
}

/// Binds `forward.listen` and serves it on the current runtime until the runtime ends.
pub async fn start(forward: Forward) -> anyhow::Result<()> {
    let listener = TcpListener::bind(forward.listen).await.with_context(|| {
        format!(
            "listening on {} (the {} forward into {}): is another `strait local` using these addresses? Pass \
             --base-ip 127.N to move them",
            forward.listen, forward.what, forward.netns
        )
    })?;
    tokio::spawn(serve(listener, forward.netns, forward.target));
    Ok(())
}

async fn serve(listener: TcpListener, netns: String, target: SocketAddr) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let mut inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "netns forward: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match strait_netns::connect_from_async(&netns, target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                // Closing the operator's connection is how the command learns: as if nothing listened.
                Err(e) => tracing::warn!(error = %e, %netns, %target, "netns forward: cannot connect"),
            }
        });
    }
}
