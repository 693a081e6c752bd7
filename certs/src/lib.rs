//! Strait mesh identity: SPIFFE identities, the mesh CA, workload certificates, rustls
//! configurations that authenticate peers by identity, and certificate rotation.
#![forbid(unsafe_code)]

pub mod ca;
pub mod identity;
pub mod store;
pub mod tls;
pub mod workload;

pub use ca::{generate_csr, write_private_file, CaError, MeshCa, CA_CERT_FILE, CA_KEY_FILE, DEFAULT_WORKLOAD_TTL};
pub use identity::{Identity, IdentityError};
pub use store::{CertError, CertIssuer, CertStore, RetryPolicy};
pub use tls::{
    classify_tls_error, client_config, client_config_without_client_auth, mesh_server_name, peer_identity,
    server_config, server_config_without_client_auth, PeerIdentityError, StaticCertResolver, TlsError,
    TlsFailureReason, TrustBundle, ALPN_H2, MESH_SERVER_NAME,
};
pub use workload::{certs_from_pem, certs_to_pem, WorkloadCert, WorkloadError};

// Re-exported so dependents use the same versions.
pub use rustls;
pub use tokio_rustls;
