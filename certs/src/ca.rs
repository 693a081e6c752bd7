//! The mesh certificate authority: a self-signed ECDSA P-256 root that issues workload
//! certificates (directly, or by signing a workload's CSR).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::identity::{validate_trust_domain, Identity, IdentityError, SPIFFE_SCHEME};
use crate::workload::{certs_from_pem, WorkloadCert, WorkloadError};

/// Default lifetime of a workload certificate.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Lifetime of a generated root CA certificate.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Maximum amount by which `not_before` is backdated to tolerate clock skew between nodes.
/// For short lifetimes the backdate is at most a tenth of the lifetime.
pub const MAX_CLOCK_SKEW_BACKDATE: Duration = Duration::from_secs(60);

/// File name of the CA certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid trust domain for the mesh CA: {0}")]
    TrustDomain(#[source] IdentityError),

    #[error("refusing to issue for {identity}: this CA is for trust domain {ca_trust_domain:?}, not {:?}", identity.trust_domain())]
    ForeignTrustDomain { identity: Identity, ca_trust_domain: String },

    #[error("invalid certificate lifetime {ttl:?}: it must be at least one second")]
    InvalidTtl { ttl: Duration },

    #[error("invalid validity period: not_after must be later than not_before")]
    InvalidValidity,

    #[error("generating or signing a certificate failed: {0}")]
    Rcgen(#[from] rcgen::Error),

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the CA directory {dir} has {present} but not {missing}; restore the missing file or remove the directory to generate a new CA")]
    IncompleteCaDir { dir: PathBuf, present: &'static str, missing: &'static str },

    #[error("the CA certificate PEM is invalid: {0}")]
    CertPem(String),

    #[error("the CA private key PEM is invalid: {0}")]
    KeyPem(String),

    #[error("the CA certificate is not a CA (its basic constraints do not allow signing certificates)")]
    NotACa,

    #[error("the CA private key does not match the CA certificate's public key")]
    KeyMismatch,

    #[error("the CA certificate carries no spiffe://<trust-domain> URI SAN, so its trust domain is unknown")]
    NoTrustDomain,

    #[error("the CA in {dir} is for trust domain {found:?}, but {wanted:?} was requested")]
    TrustDomainMismatch { dir: PathBuf, found: String, wanted: String },

    #[error("the certificate signing request could not be parsed or its signature is invalid: {0}")]
    CsrInvalid(String),

    #[error("refusing to sign the CSR: {reason} (the only allowed subject alternative name is the URI {authorized})")]
    CsrUnauthorized { authorized: Identity, reason: String },

    #[error("the issued certificate is unusable: {0}")]
    Workload(#[from] WorkloadError),
}

/// The mesh root CA. Cloning is cheap (the key and certificate are shared).
#[derive(Clone)]
pub struct MeshCa {
    trust_domain: String,
    root_der: CertificateDer<'static>,
    root_pem: String,
    /// The root as rcgen needs it for signing (same subject and key identifier as `root_der`).
    issuer: Arc<rcgen::Certificate>,
    key: Arc<KeyPair>,
    workload_ttl: Duration,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .field("workload_ttl", &self.workload_ttl)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and a non-zero leading byte so the DER encoding is exactly these 16 bytes.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    SerialNumber::from_slice(&bytes)
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CaError + 'a {
    move |source| CaError::Io { action, path: path.to_path_buf(), source }
}

fn check_ttl(ttl: Duration) -> Result<(), CaError> {
    if ttl < Duration::from_secs(1) {
        return Err(CaError::InvalidTtl { ttl });
    }
    Ok(())
}

/// Clock-skew backdate for a certificate with lifetime `ttl`.
fn backdate_for(ttl: Duration) -> Duration {
    (ttl / 10).min(MAX_CLOCK_SKEW_BACKDATE)
}

/// Writes `contents` to `path` with mode 0600, creating the file with that mode (never widening
/// permissions, even momentarily). The file is written to a temporary name and renamed into place.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

/// Generates a P-256 key and a PKCS#10 CSR whose only SAN is the identity's URI.
/// Returns `(csr_pem, key_pem)`.
pub fn generate_csr(identity: &Identity) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

impl MeshCa {
    /// Generates a new self-signed root CA (ECDSA P-256) for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Strait mesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.subject_alt_names = vec![SanType::URI(format!("{SPIFFE_SCHEME}{trust_domain}").try_into()?)];
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + DEFAULT_CA_TTL).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let root_der = cert.der().clone();
        let root_pem = cert.pem();
        Ok(MeshCa {
            trust_domain: trust_domain.to_string(),
            root_der,
            root_pem,
            issuer: Arc::new(cert),
            key: Arc::new(key),
            workload_ttl: DEFAULT_WORKLOAD_TTL,
        })
    }

    /// Loads a CA from its certificate and private key PEM.
    ///
    /// The trust domain is read from the certificate's `spiffe://<trust-domain>` URI SAN.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let certs = certs_from_pem(cert_pem).map_err(|e| CaError::CertPem(e.to_string()))?;
        let root_der = certs.into_iter().next().ok_or_else(|| CaError::CertPem("no certificate".to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::KeyPem(e.to_string()))?;

        let (_, parsed) =
            x509_parser::parse_x509_certificate(root_der.as_ref()).map_err(|e| CaError::CertPem(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(CaError::NotACa);
        }
        if parsed.tbs_certificate.subject_pki.raw != key.public_key_der().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let trust_domain = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(SPIFFE_SCHEME).map(str::to_string),
                    _ => None,
                })
            })
            .ok_or(CaError::NoTrustDomain)?;
        validate_trust_domain(&trust_domain).map_err(CaError::TrustDomain)?;

        let params = CertificateParams::from_ca_cert_der(&root_der)?;
        // Re-signing yields a certificate with the same subject and key identifier, which is all
        // rcgen uses from the issuer; the original DER stays the one we distribute.
        let issuer = params.self_signed(&key)?;
        let root_pem = crate::workload::certs_to_pem(std::slice::from_ref(&root_der));
        Ok(MeshCa {
            trust_domain,
            root_der,
            root_pem,
            issuer: Arc::new(issuer),
            key: Arc::new(key),
            workload_ttl: DEFAULT_WORKLOAD_TTL,
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` (mode 0600) into `dir`, creating it if needed.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
        let key_path = dir.join(CA_KEY_FILE);
        write_private_file(&key_path, self.key.serialize_pem().as_bytes())
            .map_err(io_err("writing CA key", &key_path))?;
        let cert_path = dir.join(CA_CERT_FILE);
        fs::write(&cert_path, self.root_pem.as_bytes()).map_err(io_err("writing CA certificate", &cert_path))?;
        Ok(())
    }

    /// The CA's private key as PEM, for storing the CA somewhere other than a directory (a Kubernetes Secret).
    /// Whoever holds it can mint any identity of the mesh: never log it, never serve it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Loads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err("reading CA certificate", &cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err("reading CA key", &key_path))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Loads the CA from `dir` if it has one, otherwise generates one for `trust_domain` and
    /// saves it there. A loaded CA must be for `trust_domain`.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let cert_exists = dir.join(CA_CERT_FILE).exists();
        let key_exists = dir.join(CA_KEY_FILE).exists();
        match (cert_exists, key_exists) {
            (true, true) => {
                let ca = Self::load(dir)?;
                if ca.trust_domain != trust_domain {
                    return Err(CaError::TrustDomainMismatch {
                        dir: dir.to_path_buf(),
                        found: ca.trust_domain,
                        wanted: trust_domain.to_string(),
                    });
                }
                Ok(ca)
            }
            (false, false) => {
                let ca = Self::generate(trust_domain)?;
                ca.save(dir)?;
                Ok(ca)
            }
            (true, false) => {
                Err(CaError::IncompleteCaDir { dir: dir.to_path_buf(), present: CA_CERT_FILE, missing: CA_KEY_FILE })
            }
            (false, true) => {
                Err(CaError::IncompleteCaDir { dir: dir.to_path_buf(), present: CA_KEY_FILE, missing: CA_CERT_FILE })
            }
        }
    }

    /// Sets the lifetime used when this CA issues through [`crate::CertIssuer`].
    pub fn with_workload_ttl(mut self, ttl: Duration) -> Self {
        self.workload_ttl = ttl;
        self
    }

    /// The lifetime used when this CA issues through [`crate::CertIssuer`].
    pub fn workload_ttl(&self) -> Duration {
        self.workload_ttl
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// Issues a workload certificate (fresh P-256 key) for `identity`, valid for `ttl`
    /// (with `not_before` slightly backdated for clock skew).
    pub fn issue(&self, identity: &Identity, ttl: Duration) -> Result<WorkloadCert, CaError> {
        check_ttl(ttl)?;
        let now = SystemTime::now();
        self.issue_with_validity(identity, now - backdate_for(ttl), now + ttl)
    }

    /// Issues a workload certificate with an explicit validity period. Meant for tests
    /// (e.g. an already expired certificate) and special cases; prefer [`MeshCa::issue`].
    pub fn issue_with_validity(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCert, CaError> {
        self.check_trust_domain(identity)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = self.leaf_params(identity, not_before, not_after)?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(WorkloadCert::from_der(vec![cert.der().clone()], key_der)?)
    }

    /// Signs a PKCS#10 CSR, but only if its one and only SAN is exactly the URI of `authorized`.
    /// Returns the chain (leaf first) for the requester to pair with its private key.
    ///
    /// Nothing else from the CSR is used: subject, key usages and extensions are set by the CA.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        authorized: &Identity,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        check_ttl(ttl)?;
        self.check_trust_domain(authorized)?;
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::CsrInvalid(e.to_string()))?;
        let refuse = |reason: String| CaError::CsrUnauthorized { authorized: authorized.clone(), reason };
        let wanted = authorized.to_string();
        match csr.params.subject_alt_names.as_slice() {
            [] => return Err(refuse("the CSR has no subject alternative name".to_string())),
            [SanType::URI(uri)] if uri.as_str() == wanted => {}
            [SanType::URI(uri)] => return Err(refuse(format!("the CSR asks for the URI {:?}", uri.as_str()))),
            [other] => {
                return Err(refuse(format!(
                    "the CSR asks for a non-URI subject alternative name {}",
                    describe_san(other)
                )))
            }
            many => {
                let names: Vec<String> = many.iter().map(describe_san).collect();
                return Err(refuse(format!(
                    "the CSR has {} subject alternative names ({})",
                    many.len(),
                    names.join(", ")
                )));
            }
        }
        let now = SystemTime::now();
        csr.params = self.leaf_params(authorized, now - backdate_for(ttl), now + ttl)?;
        let cert = csr.signed_by(&self.issuer, &self.key)?;
        let chain = vec![cert.der().clone()];
        // Double-check what we produced before handing it out.
        let info = crate::workload::parse_leaf(chain[0].as_ref())?;
        if &info.identity != authorized {
            return Err(refuse(format!("internal error: issued certificate carries {}", info.identity)));
        }
        Ok(chain)
    }

    fn check_trust_domain(&self, identity: &Identity) -> Result<(), CaError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity: identity.clone(),
                ca_trust_domain: self.trust_domain.clone(),
            });
        }
        Ok(())
    }

    fn leaf_params(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateParams, CaError> {
        if not_after <= not_before {
            return Err(CaError::InvalidValidity);
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.trust_domain.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        Ok(params)
    }
}

fn describe_san(san: &SanType) -> String {
    match san {
        SanType::URI(u) => format!("URI {:?}", u.as_str()),
        SanType::DnsName(d) => format!("DNS {:?}", d.as_str()),
        SanType::Rfc822Name(e) => format!("email {:?}", e.as_str()),
        SanType::IpAddress(ip) => format!("IP {ip}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    #[test]
    fn issues_leaf_with_expected_fields() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let ident = id("spiffe://cluster.local/ns/default/sa/web");
        let ttl = Duration::from_secs(3600);
        let before = SystemTime::now();
        let cert = ca.issue(&ident, ttl).unwrap();
        assert_eq!(cert.identity(), &ident);
        assert_eq!(cert.chain().len(), 1);
        assert_eq!(cert.serial().len(), 32);
        // Backdated by a tenth of the lifetime, capped at a minute; X.509 has second granularity.
        let nb = before.duration_since(cert.not_before()).unwrap();
        assert!(nb >= Duration::from_secs(59) && nb <= Duration::from_secs(61), "{nb:?}");
        let na = cert.not_after().duration_since(before).unwrap();
        assert!(na >= ttl - Duration::from_secs(1) && na <= ttl + Duration::from_secs(1), "{na:?}");
        assert!(!cert.is_expired(SystemTime::now()));
        assert!(cert.is_expired(cert.not_after()));

        let (_, parsed) = x509_parser::parse_x509_certificate(cert.leaf().as_ref()).unwrap();
        assert!(!parsed.is_ca());
        let ku = parsed.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign());
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        let other = ca.issue(&ident, ttl).unwrap();
        assert_ne!(cert.serial(), other.serial(), "serials must be random");
    }

    #[test]
    fn refuses_foreign_trust_domain_and_bad_ttl() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let err = ca.issue(&id("spiffe://other.domain/ns/a/sa/b"), DEFAULT_WORKLOAD_TTL).unwrap_err();
        assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
        assert!(err.to_string().contains("\"cluster.local\""), "{err}");
        let err = ca.issue(&id("spiffe://cluster.local/ns/a/sa/b"), Duration::ZERO).unwrap_err();
        assert!(matches!(err, CaError::InvalidTtl { .. }), "{err}");
    }

    #[test]
    fn rejects_invalid_trust_domain() {
        assert!(matches!(MeshCa::generate("Bad Domain"), Err(CaError::TrustDomain(_))));
    }

    #[test]
    fn pem_round_trip_keeps_root_and_signs_compatible_certs() {
        let ca = MeshCa::generate("example.org").unwrap();
        let cert_pem = ca.root_pem().to_string();
        let key_pem = ca.key.serialize_pem();
        let loaded = MeshCa::from_pem(&cert_pem, &key_pem).unwrap();
        assert_eq!(loaded.trust_domain(), "example.org");
        assert_eq!(loaded.root_der(), ca.root_der());
        // Issuer name of a cert issued by the loaded CA equals the original root's subject.
        let leaf = loaded.issue(&id("spiffe://example.org/ns/a/sa/b"), DEFAULT_WORKLOAD_TTL).unwrap();
        let (_, l) = x509_parser::parse_x509_certificate(leaf.leaf().as_ref()).unwrap();
        let (_, r) = x509_parser::parse_x509_certificate(ca.root_der().as_ref()).unwrap();
        assert_eq!(l.issuer().as_raw(), r.subject().as_raw());

        let other = MeshCa::generate("example.org").unwrap();
        assert!(matches!(MeshCa::from_pem(&cert_pem, &other.key.serialize_pem()), Err(CaError::KeyMismatch)));
        assert!(matches!(MeshCa::from_pem(&leaf.chain_pem(), &leaf.key_pem()), Err(CaError::NotACa)));
    }

    #[test]
    fn csr_for_authorized_identity_is_signed() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let ident = id("spiffe://cluster.local/ns/default/sa/web");
        let (csr, key) = generate_csr(&ident).unwrap();
        let chain = ca.sign_csr(&csr, &ident, DEFAULT_WORKLOAD_TTL).unwrap();
        let wc = WorkloadCert::from_pem(&crate::workload::certs_to_pem(&chain), &key).unwrap();
        assert_eq!(wc.identity(), &ident);
    }

    fn csr_with_sans(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn csr_with_other_sans_is_refused() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let ident = id("spiffe://cluster.local/ns/default/sa/web");
        let uri = |s: &str| SanType::URI(s.try_into().unwrap());
        let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
        let cases: Vec<(Vec<SanType>, &str)> = vec![
            (vec![], "no subject alternative name"),
            (
                vec![uri("spiffe://cluster.local/ns/default/sa/admin")],
                "asks for the URI \"spiffe://cluster.local/ns/default/sa/admin\"",
            ),
            (vec![dns("web.default.svc")], "non-URI subject alternative name DNS \"web.default.svc\""),
            (
                vec![uri("spiffe://cluster.local/ns/default/sa/web"), dns("evil.example")],
                "has 2 subject alternative names",
            ),
            (
                vec![uri("spiffe://cluster.local/ns/default/sa/web"), uri("spiffe://cluster.local/ns/default/sa/web")],
                "has 2 subject alternative names",
            ),
        ];
        for (sans, want) in cases {
            let csr = csr_with_sans(sans);
            let err = ca.sign_csr(&csr, &ident, DEFAULT_WORKLOAD_TTL).unwrap_err();
            assert!(matches!(err, CaError::CsrUnauthorized { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err} should contain {want}");
        }
        let err = ca.sign_csr("garbage", &ident, DEFAULT_WORKLOAD_TTL).unwrap_err();
        assert!(matches!(err, CaError::CsrInvalid(_)), "{err}");
    }
}
