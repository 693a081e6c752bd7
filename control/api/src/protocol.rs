//! Messages of the push protocol between node proxies and the control plane (see `control/PROTOCOL.md`).

use serde::{Deserialize, Serialize};

use crate::MeshConfig;

/// The configuration stream: a POST whose response body carries [`ConfigPush`] lines and whose request body
/// carries [`ConfigAck`] lines (see [`crate::frame`]).
pub const STREAM_PATH: &str = "/strait.v1.Config/Stream";
/// Certificate signing: a POST of one [`CertificateRequest`], answered with a [`CertificateResponse`].
pub const SIGN_PATH: &str = "/strait.v1.Certificates/Sign";

/// One version of a node's configuration, pushed by the control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigPush {
    /// Strictly increasing for the lifetime of a control-plane process; proxies echo it in ACK/NACK.
    pub version: u64,
    /// The node this configuration was rendered for.
    pub node: String,
    pub config: MeshConfig,
}

/// A proxy's answer to a [`ConfigPush`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigAck {
    pub version: u64,
    /// `None` is an ACK; `Some(reason)` a NACK: the proxy kept its last good configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A node proxy asks for a workload certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequest {
    /// The SPIFFE identity requested; the CSR's only SAN must be this URI.
    pub identity: String,
    pub csr_pem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// Leaf first.
    pub chain_pem: String,
    pub root_pem: String,
}
