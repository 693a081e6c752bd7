//! rustls configurations for mesh mTLS: TLS 1.3 only, ALPN `h2`, the ring provider, and
//! verifiers that authenticate peers by their SPIFFE identity (never by DNS name).
//!
//! Failure signalling is consistent on both sides of a handshake so that
//! [`classify_tls_error`] gives the same [`TlsFailureReason`] to the side that rejected the
//! peer and to the side that was rejected (which only sees the alert):
//!
//! | reason          | rejecting side (`rustls::Error`)                          | rejected side (alert)  |
//! |-----------------|-----------------------------------------------------------|------------------------|
//! | `WrongIdentity` | `InvalidCertificate(Other(PeerIdentityError))`            | `certificate_unknown`  |
//! | `UnknownCa`     | `InvalidCertificate(UnknownIssuer)`                       | `unknown_ca`           |
//! | `Expired`       | `InvalidCertificate(Expired*/NotValidYet*)`               | `certificate_expired`  |
//! | `NoClientCert`  | `NoCertificatesPresented`                                 | `certificate_required` |

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::ca::MeshCa;
use crate::identity::{validate_trust_domain, Identity, IdentityError};
use crate::workload::{certs_from_pem, identity_from_cert, WorkloadCert};

/// The ALPN protocol mesh connections negotiate.
pub const ALPN_H2: &[u8] = b"h2";

/// The server name mesh clients put in their ClientHello. Mesh certificates carry no DNS
/// names and the verifiers here ignore the server name; any valid name would do.
pub const MESH_SERVER_NAME: &str = "strait.mesh";

/// [`MESH_SERVER_NAME`] as a rustls `ServerName`.
pub fn mesh_server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from(MESH_SERVER_NAME)
            .expect("MESH_SERVER_NAME is a valid DNS name")
            .to_owned(),
    )
}

/// Why building a trust bundle or reading a peer identity failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid trust domain for the trust bundle: {0}")]
    TrustDomain(#[source] IdentityError),

    #[error("the trust bundle PEM is invalid: {0}")]
    BundlePem(String),

    #[error("the trust bundle has no usable root certificate: {0}")]
    NoRoots(String),

    #[error("the connection has no peer certificate (handshake not complete, or the peer did not authenticate)")]
    NoPeerCertificate,

    #[error("the peer certificate carries no usable mesh identity: {0}")]
    PeerIdentity(String),
}

/// Why a peer's identity was not acceptable. Carried inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))` by the verifiers here.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer presented identity {presented} but {expected} was expected")]
    Mismatch { expected: Identity, presented: Identity },

    #[error("peer identity {presented} is not in the mesh trust domain {trust_domain:?}")]
    ForeignTrustDomain { trust_domain: String, presented: Identity },

    #[error("peer certificate carries no valid mesh identity: {0}")]
    Missing(String),
}

// rustls renders `CertificateError::Other` with `Debug`; make that the readable message.
impl fmt::Debug for PeerIdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PeerIdentityError {
    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// The mesh trust anchors (root certificates) and the trust domain they vouch for.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl TrustBundle {
    /// The bundle of a CA: its root and trust domain.
    pub fn from_ca(ca: &MeshCa) -> Self {
        let root = ca.root_der().clone();
        let mut store = RootCertStore::empty();
        // The CA's own root was produced (or validated) when the CA was built.
        let (_added, _ignored) = store.add_parsable_certificates([root.clone()]);
        TrustBundle { trust_domain: ca.trust_domain().to_string(), roots: vec![root], store: Arc::new(store) }
    }

    /// A bundle from root certificates in PEM (one or more blocks).
    pub fn from_pem(trust_domain: &str, roots_pem: &str) -> Result<Self, TlsError> {
        let roots = certs_from_pem(roots_pem).map_err(|e| TlsError::BundlePem(e.to_string()))?;
        Self::from_der(trust_domain, roots)
    }

    /// A bundle from DER root certificates.
    pub fn from_der(trust_domain: &str, roots: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        validate_trust_domain(trust_domain).map_err(TlsError::TrustDomain)?;
        let mut store = RootCertStore::empty();
        for root in &roots {
            store.add(root.clone()).map_err(|e| TlsError::NoRoots(e.to_string()))?;
        }
        if store.is_empty() {
            return Err(TlsError::NoRoots("no certificates given".to_string()));
        }
        Ok(TrustBundle { trust_domain: trust_domain.to_string(), roots, store: Arc::new(store) })
    }

    /// The trust domain peers must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as PEM.
    pub fn roots_pem(&self) -> String {
        crate::workload::certs_to_pem(&self.roots)
    }

    /// The roots as a rustls store.
    pub fn root_store(&self) -> Arc<RootCertStore> {
        self.store.clone()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Maps chain-verification errors onto the small set of errors (and so alerts) this crate uses.
fn normalize_chain_error(err: rustls::Error) -> rustls::Error {
    match err {
        rustls::Error::InvalidCertificate(ref ce) => {
            #[allow(deprecated)]
            let unknown_ca = matches!(
                ce,
                CertificateError::BadSignature
                    | CertificateError::UnsupportedSignatureAlgorithm
                    | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
                    | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. }
            );
            if unknown_ca {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            } else {
                err
            }
        }
        other => other,
    }
}

/// Client-side verifier: chain to the mesh root, then the URI SAN must equal `expected`.
/// The server name is deliberately not checked.
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier").field("expected", &self.expected.to_string()).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )
        .map_err(normalize_chain_error)?;
        let presented = identity_from_cert(end_entity.as_ref())
            .map_err(|e| PeerIdentityError::Missing(e.to_string()).into_rustls())?;
        if presented != self.expected {
            tracing::debug!(expected = %self.expected, %presented, "server identity mismatch");
            return Err(PeerIdentityError::Mismatch { expected: self.expected.clone(), presented }.into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server-side verifier: webpki client verification against the mesh root, then the client
/// must carry a valid SPIFFE identity in the mesh trust domain.
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now).map_err(normalize_chain_error)?;
        let presented = identity_from_cert(end_entity.as_ref())
            .map_err(|e| PeerIdentityError::Missing(e.to_string()).into_rustls())?;
        if presented.trust_domain() != self.trust_domain {
            return Err(PeerIdentityError::ForeignTrustDomain { trust_domain: self.trust_domain.clone(), presented }
                .into_rustls());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn server_builder() -> rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
}

fn client_builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
}

fn finish_server(cfg: &mut ServerConfig) {
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No session resumption (see `client_config`): no tickets, no session cache.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
}

/// Server configuration for mesh mTLS: the client must present a certificate that chains to
/// the mesh root and carries a SPIFFE identity in the bundle's trust domain.
/// The server certificate comes from `resolver` at each handshake.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>, bundle: &TrustBundle) -> Arc<ServerConfig> {
    let provider = provider();
    // Only fails without roots, which a `TrustBundle` always has.
    let inner = WebPkiClientVerifier::builder_with_provider(bundle.root_store(), provider)
        .build()
        .expect("a TrustBundle always has at least one root");
    let verifier = Arc::new(SpiffeClientVerifier { inner, trust_domain: bundle.trust_domain().to_string() });
    let mut cfg = server_builder().with_client_cert_verifier(verifier).with_cert_resolver(resolver);
    finish_server(&mut cfg);
    Arc::new(cfg)
}

/// Server configuration that does not ask clients for a certificate (e.g. the control plane's
/// endpoint that node proxies call before they have one). TLS 1.3, ALPN `h2`.
pub fn server_config_without_client_auth(resolver: Arc<dyn ResolvesServerCert>) -> Arc<ServerConfig> {
    let mut cfg = server_builder().with_no_client_auth().with_cert_resolver(resolver);
    finish_server(&mut cfg);
    Arc::new(cfg)
}

/// Client configuration for mesh mTLS: the server must chain to the mesh root and its URI SAN
/// must be exactly `expected`; the server name is ignored. With `resolver` `None` the client
/// presents no certificate.
pub fn client_config(
    resolver: Option<Arc<dyn ResolvesClientCert>>,
    bundle: &TrustBundle,
    expected: Identity,
) -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: bundle.root_store(),
        expected,
        algs: provider.signature_verification_algorithms,
    });
    let builder = client_builder().dangerous().with_custom_certificate_verifier(verifier);
    let mut cfg = match resolver {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Every connection does a full handshake: a resumed session would skip certificate
    // verification and keep presenting the identity and certificates of the original
    // handshake, even after they were rotated or expired.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// Client configuration that authenticates the server (as `expected`) but presents no
/// client certificate.
pub fn client_config_without_client_auth(bundle: &TrustBundle, expected: Identity) -> Arc<ClientConfig> {
    client_config(None, bundle, expected)
}

/// A resolver that always serves one workload certificate (client and server side), and
/// nothing once it has expired.
#[derive(Debug, Clone)]
pub struct StaticCertResolver {
    cert: Arc<WorkloadCert>,
}

impl StaticCertResolver {
    pub fn new(cert: Arc<WorkloadCert>) -> Arc<Self> {
        Arc::new(StaticCertResolver { cert })
    }
}

/// The certified key of `cert` unless it is outside its validity period.
pub(crate) fn servable(cert: &WorkloadCert) -> Option<Arc<CertifiedKey>> {
    if cert.is_expired(SystemTime::now()) {
        tracing::warn!(identity = %cert.identity(), serial = cert.serial(), "not serving an expired certificate");
        return None;
    }
    Some(cert.certified_key_ref().clone())
}

impl ResolvesServerCert for StaticCertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        servable(&self.cert)
    }
}

impl ResolvesClientCert for StaticCertResolver {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        servable(&self.cert)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The verified identity of the peer of an established connection. For tokio-rustls streams
/// pass `stream.get_ref().1` (client and server streams alike).
pub fn peer_identity(conn: &CommonState) -> Result<Identity, TlsError> {
    let certs = conn.peer_certificates().ok_or(TlsError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    identity_from_cert(leaf.as_ref()).map_err(|e| TlsError::PeerIdentity(e.to_string()))
}

/// Why a TLS handshake failed, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsFailureReason {
    /// The peer's certificate is valid but its identity is not the expected one (or not in the
    /// trust domain, or missing).
    WrongIdentity,
    /// The peer's certificate does not chain to the mesh root.
    UnknownCa,
    /// The peer's certificate is expired or not yet valid.
    Expired,
    /// The client presented no certificate but one is required.
    NoClientCert,
    /// Anything else.
    Other,
}

impl TlsFailureReason {
    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailureReason::WrongIdentity => "wrong_identity",
            TlsFailureReason::UnknownCa => "unknown_ca",
            TlsFailureReason::Expired => "expired",
            TlsFailureReason::NoClientCert => "no_client_cert",
            TlsFailureReason::Other => "other",
        }
    }
}

impl fmt::Display for TlsFailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn classify_rustls(err: &rustls::Error) -> TlsFailureReason {
    use TlsFailureReason::*;
    match err {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Expired,
            CertificateError::UnknownIssuer => UnknownCa,
            #[allow(deprecated)]
            CertificateError::BadSignature => UnknownCa,
            CertificateError::ApplicationVerificationFailure => WrongIdentity,
            CertificateError::Other(OtherError(inner)) => {
                if inner.downcast_ref::<PeerIdentityError>().is_some() {
                    WrongIdentity
                } else {
                    Other
                }
            }
            _ => Other,
        },
        rustls::Error::NoCertificatesPresented => NoClientCert,
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateUnknown | AlertDescription::AccessDenied => WrongIdentity,
            AlertDescription::UnknownCA => UnknownCa,
            AlertDescription::CertificateExpired => Expired,
            AlertDescription::CertificateRequired => NoClientCert,
            _ => Other,
        },
        _ => Other,
    }
}

/// Classifies a handshake failure. Accepts a `rustls::Error`, a `std::io::Error` as returned by
/// tokio-rustls, or any error whose source chain contains one of those.
pub fn classify_tls_error(err: &(dyn std::error::Error + 'static)) -> TlsFailureReason {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return classify_rustls(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // `io::Error::source` skips the wrapped error itself, so look at it directly.
            if let Some(inner) = io.get_ref() {
                let inner: &(dyn std::error::Error + 'static) = inner;
                let r = classify_tls_error(inner);
                if r != TlsFailureReason::Other {
                    return r;
                }
            }
        }
        cur = e.source();
    }
    TlsFailureReason::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        use TlsFailureReason::*;
        let cases: Vec<(rustls::Error, TlsFailureReason)> = vec![
            (CertificateError::UnknownIssuer.into(), UnknownCa),
            (CertificateError::Expired.into(), Expired),
            (CertificateError::NotValidYet.into(), Expired),
            (CertificateError::ApplicationVerificationFailure.into(), WrongIdentity),
            (PeerIdentityError::Missing("x".into()).into_rustls(), WrongIdentity),
            (rustls::Error::NoCertificatesPresented, NoClientCert),
            (rustls::Error::AlertReceived(AlertDescription::UnknownCA), UnknownCa),
            (rustls::Error::AlertReceived(AlertDescription::CertificateExpired), Expired),
            (rustls::Error::AlertReceived(AlertDescription::CertificateUnknown), WrongIdentity),
            (rustls::Error::AlertReceived(AlertDescription::CertificateRequired), NoClientCert),
            (rustls::Error::AlertReceived(AlertDescription::HandshakeFailure), Other),
            (rustls::Error::DecryptError, Other),
        ];
        for (err, want) in cases {
            assert_eq!(classify_tls_error(&err), want, "{err:?}");
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err.clone());
            assert_eq!(classify_tls_error(&io), want, "io-wrapped {err:?}");
            // Every error the verifiers produce maps to an alert that classifies the same way.
            if let rustls::Error::InvalidCertificate(ce) = &err {
                let alert: AlertDescription = ce.clone().into();
                let remote = rustls::Error::AlertReceived(alert);
                assert_eq!(classify_tls_error(&remote), want, "alert for {err:?}");
            }
        }
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(classify_tls_error(&plain), Other);
    }

    #[test]
    fn bundle_requires_roots_and_valid_trust_domain() {
        assert!(matches!(TrustBundle::from_pem("cluster.local", "nothing"), Err(TlsError::BundlePem(_))));
        let ca = MeshCa::generate("cluster.local").unwrap();
        assert!(matches!(TrustBundle::from_pem("Not Valid", ca.root_pem()), Err(TlsError::TrustDomain(_))));
        let b = TrustBundle::from_pem("cluster.local", ca.root_pem()).unwrap();
        assert_eq!(b.roots().len(), 1);
        assert_eq!(b.roots()[0], *ca.root_der());
        assert_eq!(b.trust_domain(), "cluster.local");
    }
}
