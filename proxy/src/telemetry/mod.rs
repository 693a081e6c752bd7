//! What the proxy tells operators: Prometheus metrics (`metrics`), the response flags (`flags`) and labels
//! (`labels`) shared by metrics and the access log, one record per TCP connection (`record`), an HTTP
//! connection's resolved request series (`series`), per-route request and retry counters (`routes`), the
//! log output (`logging`) and OpenTelemetry trace export (`traces`).

pub mod flags;
pub mod labels;
pub(crate) mod logging;
pub mod metrics;
pub(crate) mod record;
pub mod routes;
pub mod series;
pub mod traces;
