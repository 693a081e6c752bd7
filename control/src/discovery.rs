//! The seam between where the mesh's inputs come from (files now, Kubernetes later) and the rest of the
//! control plane, which only ever sees [`Discovered`] values.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::model::Discovered;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A source of the mesh's inputs.
///
/// `run` publishes everything it sees, as a whole, each time something changes; a `watch` channel keeps
/// only the newest, so a burst of edits costs one translation. It returns when the receiver is gone.
/// Providers report what they cannot read as [`crate::model::Rejection`]s instead of failing: admission
/// decides what stands in for a broken object.
pub trait Discovery: Send + 'static {
    fn run(self: Box<Self>, out: watch::Sender<Arc<Discovered>>) -> BoxFuture<()>;
}
