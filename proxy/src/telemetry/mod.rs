//! What the proxy tells operators: Prometheus metrics (`metrics`), the response flags shared by metrics and the
//! access log (`flags`), and the log output (`logging`).

pub mod flags;
pub mod labels;
pub(crate) mod logging;
pub mod metrics;
