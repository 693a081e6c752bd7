//! The transparent listeners between binding and listening: `serve` binds them at start (so a port conflict
//! fails at once), `reconcile` makes them listen once the configuration and the node's rules are in place.

use std::sync::Arc;

use crate::context::ProxyContext;
use crate::tcp::socket::listen;

/// Which connection path a transparent listener serves.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Path {
    Outbound,
    Tunnel,
    Plaintext,
}

/// The transparent listeners, bound but not yet listening. A listening socket joins its port's SO_REUSEPORT
/// group at once, and from then on the kernel hands it a share of the node's new connections: a replacement
/// proxy that listened before it had its configuration (from the control plane, with no last good one on
/// disk) would refuse those as coming from unknown pods while the proxy it replaces could still serve them. So
/// the reconcile loop calls [`PendingListeners::listen`] once the configuration and the node's rules are in
/// place, before readiness can turn true.
#[derive(Default)]
pub(crate) struct PendingListeners {
    sockets: Vec<(Path, socket2::Socket)>,
}

impl PendingListeners {
    pub(crate) fn add(&mut self, path: Path, sockets: Vec<socket2::Socket>) {
        self.sockets.extend(sockets.into_iter().map(|s| (path, s)));
    }

    /// Listens on every socket and starts its accept loop.
    pub(crate) fn listen(self, ctx: &Arc<ProxyContext>) -> std::io::Result<()> {
        let mut listeners = Vec::with_capacity(self.sockets.len());
        for (path, socket) in self.sockets {
            listeners.push((path, listen(socket)?));
        }
        for (path, listener) in listeners {
            let ctx = ctx.clone();
            match path {
                Path::Outbound => tokio::spawn(crate::tcp::outbound::serve(listener, ctx)),
                Path::Tunnel => tokio::spawn(crate::tunnel::server::serve(listener, ctx)),
                Path::Plaintext => tokio::spawn(crate::tcp::plaintext::serve(listener, ctx)),
            };
        }
        Ok(())
    }
}
