//! Choosing an endpoint of a service, for TCP connections and HTTP requests alike: the strategies
//! (`pick`: peak EWMA, least request, round robin, random, consistent hash), the consistent-hash ring and
//! its keys (`ring`, `hash`), and outlier ejection (`outlier`). Nothing here knows a protocol: a caller says
//! what a key is and whether an attempt failed.

pub mod hash;
pub mod outlier;
pub mod pick;
pub mod ring;

pub use hash::HashOn;
pub use outlier::{Failure, OutlierConfig, OutlierDetector};
pub use pick::{Balancer, Strategy};
