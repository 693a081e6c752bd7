//! The vocabulary the Strait control plane and node proxies share.
//!
//! [`MeshConfig`] is what a node proxy runs on, whether it was read from a YAML file or pushed by the control
//! plane; [`protocol`] holds the push protocol's messages. The resource specs in [`resources`] are the shapes
//! users write (the `spec` of the CRDs), reused as-is inside the pushed configuration so that nothing is
//! translated twice.
#![forbid(unsafe_code)]

pub mod bounds;
pub mod config;
pub mod delta;
pub mod egress;
pub mod frame;
pub mod host;
pub mod peer_auth;
pub mod protocol;
pub mod resources;
pub mod status;
mod validate;

pub use config::*;
pub use egress::{ExternalEndpoint, ExternalPort, ExternalService, OutboundTrafficPolicy, Resolution};
pub use host::{canonical_host, ServiceRef, CLUSTER_DOMAIN};
pub use peer_auth::{MtlsSource, PeerAuthentication};
pub use resources::*;
pub use validate::{check_retry_on, ValidationError, MAGLEV_REFUSED, RETRY_ON_CONDITIONS};

/// The Kubernetes custom resources (`strait.dev/v1alpha1`) wrapping the specs, with their status types and
/// the CRD generator's post-processing. Only with the `kube` feature (the control plane's).
#[cfg(feature = "kube")]
pub mod crd;

#[cfg(test)]
mod proptests;
