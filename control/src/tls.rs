//! The control plane's own server certificate, issued from the mesh CA it holds and renewed in place, so a
//! long-running control plane never serves an expired certificate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use strait_certs::rustls::server::{ClientHello, ResolvesServerCert};
use strait_certs::rustls::sign::CertifiedKey;
use strait_certs::{Identity, WorkloadCert};

use crate::signer::Signer;

/// The namespace and service account whose identity the control plane presents.
pub const CONTROL_NAMESPACE: &str = "strait-system";
pub const CONTROL_SERVICE_ACCOUNT: &str = "strait-control";

pub fn control_identity(trust_domain: &str) -> Result<Identity, strait_certs::IdentityError> {
    Identity::new(trust_domain, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT)
}

pub struct ControlCertResolver {
    signer: Arc<Signer>,
    identity: Identity,
    ttl: Duration,
    current: Mutex<Arc<WorkloadCert>>,
}

impl std::fmt::Debug for ControlCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCertResolver").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl ControlCertResolver {
    pub fn new(signer: Arc<Signer>, identity: Identity, ttl: Duration) -> Result<Arc<Self>, strait_certs::CaError> {
        let cert = signer.ca().issue(&identity, ttl)?;
        Ok(Arc::new(ControlCertResolver { signer, identity, ttl, current: Mutex::new(Arc::new(cert)) }))
    }

    fn current(&self) -> Arc<WorkloadCert> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if SystemTime::now() >= current.renew_at() {
            // Signing with the in-process CA takes a millisecond; doing it inline keeps this simple.
            match self.signer.ca().issue(&self.identity, self.ttl) {
                Ok(cert) => *current = Arc::new(cert),
                Err(e) => tracing::error!(error = %e, "cannot renew the control plane's server certificate"),
            }
        }
        current.clone()
    }
}

impl ResolvesServerCert for ControlCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current().certified_key() {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::error!(error = %e, "the control plane's server certificate is unusable");
                None
            }
        }
    }
}
