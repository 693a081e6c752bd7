//! Plain TCP: connections from local pods (`outbound`), the destination side of every connection (`inbound`,
//! whether it arrived through the tunnel, from a pod on this node or as plaintext on 15006, `plaintext`), the
//! per-service connection limits, the balancer and outlier state of TCP service ports (`backends`), opening an
//! upstream apart from relaying to it (`connect`), the socket options of a transparent proxy and the byte copy.

pub(crate) mod backends;
pub(crate) mod connect;
pub(crate) mod copy;
pub(crate) mod egress;
pub(crate) mod inbound;
pub(crate) mod limits;
pub(crate) mod outbound;
pub(crate) mod plaintext;
pub(crate) mod socket;
