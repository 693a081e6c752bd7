//! CSR signing for node proxies: a node gets certificates only for the meshed workloads scheduled on it, so
//! a compromised node cannot obtain any other workload's identity.

use std::time::Duration;

use strait_api::protocol::{CertificateRequest, CertificateResponse};
use strait_certs::{certs_to_pem, CaError, Identity, MeshCa};

use crate::model::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0:?} is not a SPIFFE identity: {1}")]
    BadIdentity(String, String),
    #[error("node {node:?} has no meshed workload with identity {identity}; certificates are issued only for workloads on the asking node")]
    NotOnNode { identity: String, node: String },
    #[error("{0}")]
    Refused(CaError),
    #[error("{0}")]
    BadCsr(CaError),
    #[error("the CA failed: {0}")]
    Ca(CaError),
}

impl SignError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            SignError::BadIdentity(..) | SignError::BadCsr(_) => http::StatusCode::BAD_REQUEST,
            SignError::NotOnNode { .. } | SignError::Refused(_) => http::StatusCode::FORBIDDEN,
            SignError::Ca(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

pub struct Signer {
    ca: MeshCa,
    ttl: Duration,
}

impl Signer {
    pub fn new(ca: MeshCa, ttl: Duration) -> Self {
        Signer { ca, ttl }
    }

    pub fn ca(&self) -> &MeshCa {
        &self.ca
    }

    /// Signs `request` if its identity belongs to a meshed workload on `node` in `snapshot`.
    pub fn sign(
        &self,
        snapshot: &Snapshot,
        node: &str,
        request: &CertificateRequest,
    ) -> Result<CertificateResponse, SignError> {
        let identity: Identity = request.identity.parse().map_err(|e: strait_certs::IdentityError| {
            SignError::BadIdentity(request.identity.clone(), e.to_string())
        })?;
        let trust_domain = self.ca.trust_domain();
        let wanted = identity.to_string();
        let authorized = snapshot
            .workloads
            .iter()
            .any(|w| w.node == node && snapshot.is_meshed(w) && spiffe_id(trust_domain, w) == wanted);
        if !authorized {
            return Err(SignError::NotOnNode { identity: wanted, node: node.to_string() });
        }
        let chain = self.ca.sign_csr(&request.csr_pem, &identity, self.ttl).map_err(|e| match e {
            CaError::CsrUnauthorized { .. } | CaError::ForeignTrustDomain { .. } => SignError::Refused(e),
            CaError::CsrInvalid(_) => SignError::BadCsr(e),
            other => SignError::Ca(other),
        })?;
        Ok(CertificateResponse { chain_pem: certs_to_pem(&chain), root_pem: self.ca.root_pem().to_string() })
    }
}

fn spiffe_id(trust_domain: &str, w: &crate::model::Workload) -> String {
    format!("spiffe://{trust_domain}/ns/{}/sa/{}", w.namespace, w.service_account)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Workload;

    fn snapshot() -> Snapshot {
        let w = |name: &str, node: &str, meshed: Option<bool>, ip: &str| Workload {
            name: name.into(),
            namespace: "shop".into(),
            service_account: name.into(),
            node: node.into(),
            address: ip.parse().expect("ip"),
            labels: Default::default(),
            meshed,
            tunnel_port: 15008,
        };
        Snapshot {
            workloads: vec![
                w("local", "a", None, "10.0.0.1"),
                w("remote", "b", None, "10.0.0.2"),
                w("plain", "a", Some(false), "10.0.0.3"),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn signs_only_for_meshed_workloads_on_the_node() {
        let signer = Signer::new(MeshCa::generate("cluster.local").expect("ca"), Duration::from_secs(3600));
        let request = |sa: &str| {
            let id = Identity::new("cluster.local", "shop", sa).expect("id");
            let (csr_pem, _key) = strait_certs::generate_csr(&id).expect("csr");
            CertificateRequest { identity: id.to_string(), csr_pem }
        };
        let ok = signer.sign(&snapshot(), "a", &request("local")).expect("signed");
        assert!(ok.chain_pem.contains("BEGIN CERTIFICATE"));
        for sa in ["remote", "plain", "nobody"] {
            let err = signer.sign(&snapshot(), "a", &request(sa)).expect_err(sa);
            assert_eq!(err.status(), http::StatusCode::FORBIDDEN, "{sa}: {err}");
        }
        // A CSR for another identity than the one asked for.
        let mut mismatched = request("local");
        mismatched.csr_pem = request("remote").csr_pem;
        assert_eq!(
            signer.sign(&snapshot(), "a", &mismatched).expect_err("mismatch").status(),
            http::StatusCode::FORBIDDEN
        );
    }
}
