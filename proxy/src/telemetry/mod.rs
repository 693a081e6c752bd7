//! What the proxy tells operators: Prometheus metrics (`metrics`), the response flags (`flags`) and labels
//! (`labels`) shared by metrics and the access log, one record per TCP connection (`record`), and the log
//! output (`logging`); per-route request and retry counters (`routes`).

pub mod flags;
pub mod labels;
pub(crate) mod logging;
pub mod metrics;
pub(crate) mod record;
pub mod routes;
