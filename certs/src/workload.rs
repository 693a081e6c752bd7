//! A workload's certificate: its SPIFFE identity, certificate chain and private key.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::identity::{Identity, IdentityError};

/// Why a certificate chain / key pair is not a usable workload certificate.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("the certificate chain is empty: expected at least the workload (leaf) certificate")]
    EmptyChain,

    #[error(
        "could not parse the certificate chain PEM: {0} (expected one or more \"-----BEGIN CERTIFICATE-----\" blocks)"
    )]
    ChainPem(String),

    #[error("could not parse the private key PEM: {0} (expected a PKCS#8, SEC1 or PKCS#1 \"PRIVATE KEY\" block)")]
    KeyPem(String),

    #[error("the workload certificate is not valid X.509 DER: {0}")]
    Parse(String),

    #[error(
        "the workload certificate has no URI subject alternative name; it must carry exactly one spiffe:// URI SAN"
    )]
    NoUriSan,

    #[error("the workload certificate has {0} URI subject alternative names; it must carry exactly one (the spiffe:// identity)")]
    MultipleUriSans(usize),

    #[error("the workload certificate's URI SAN is not a mesh identity: {0}")]
    BadIdentity(#[from] IdentityError),

    #[error("the workload certificate has an invalid validity period: {0}")]
    Validity(String),

    #[error("the private key is not usable for TLS (unsupported algorithm or corrupt): {0}")]
    UnsupportedKey(rustls::Error),

    #[error("the private key does not belong to the workload certificate: {0}")]
    KeyMismatch(rustls::Error),
}

/// A workload certificate: identity, chain (leaf first), private key and validity.
pub struct WorkloadCert {
    identity: Identity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
    certified: Arc<CertifiedKey>,
}

/// Facts about a leaf certificate, as parsed with x509-parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub identity: Identity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Lower-case hex serial number, without separators.
    pub serial: String,
}

fn to_system_time(t: x509_parser::time::ASN1Time) -> Result<SystemTime, WorkloadError> {
    let secs = t.timestamp();
    if secs < 0 {
        return Err(WorkloadError::Validity(format!("time {t} is before 1970")));
    }
    Ok(UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()))
}

/// Hex-encodes bytes (lower-case, no separators).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses the identity (the single URI SAN), validity and serial of a leaf certificate.
pub fn parse_leaf(der: &[u8]) -> Result<LeafInfo, WorkloadError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| WorkloadError::Parse(e.to_string()))?;
    let identity = identity_from_parsed(&cert)?;
    let validity = cert.validity();
    let not_before = to_system_time(validity.not_before)?;
    let not_after = to_system_time(validity.not_after)?;
    if not_after <= not_before {
        return Err(WorkloadError::Validity(format!(
            "not_after {} is not after not_before {}",
            validity.not_after, validity.not_before
        )));
    }
    Ok(LeafInfo { identity, not_before, not_after, serial: hex(cert.raw_serial()) })
}

/// The mesh identity carried by a certificate: its one and only URI SAN.
pub fn identity_from_cert(der: &[u8]) -> Result<Identity, WorkloadError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| WorkloadError::Parse(e.to_string()))?;
    identity_from_parsed(&cert)
}

fn identity_from_parsed(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Identity, WorkloadError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| WorkloadError::Parse(format!("subject alternative name extension: {e}")))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(WorkloadError::NoUriSan),
        [one] => Ok(Identity::parse(one)?),
        many => Err(WorkloadError::MultipleUriSans(many.len())),
    }
}

/// Encodes certificates as concatenated PEM blocks.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for c in certs {
        out.push_str(&der_to_pem("CERTIFICATE", c.as_ref()));
    }
    out
}

pub(crate) fn der_to_pem(label: &str, der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = match chunk.len() {
            3 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]),
            2 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8),
            _ => u32::from(chunk[0]) << 16,
        };
        let idx = |shift: u32| TABLE[((n >> shift) & 63) as usize] as char;
        b64.push(idx(18));
        b64.push(idx(12));
        b64.push(if chunk.len() > 1 { idx(6) } else { '=' });
        b64.push(if chunk.len() > 2 { idx(0) } else { '=' });
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    let bytes = b64.as_bytes();
    for line in bytes.chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Parses all `CERTIFICATE` blocks in a PEM string.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, WorkloadError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WorkloadError::ChainPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(WorkloadError::ChainPem("no CERTIFICATE block found".to_string()));
    }
    Ok(certs)
}

impl WorkloadCert {
    /// Builds a workload certificate from a DER chain (leaf first) and its private key.
    ///
    /// Checks that the leaf carries exactly one valid mesh identity URI SAN and that the key
    /// matches the leaf's public key.
    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, WorkloadError> {
        let leaf = chain.first().ok_or(WorkloadError::EmptyChain)?;
        let info = parse_leaf(leaf.as_ref())?;
        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(WorkloadError::UnsupportedKey)?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        certified.keys_match().map_err(WorkloadError::KeyMismatch)?;
        Ok(WorkloadCert {
            identity: info.identity,
            chain,
            key,
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial,
            certified: Arc::new(certified),
        })
    }

    /// Builds a workload certificate from a PEM chain (leaf first) and a PEM private key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, WorkloadError> {
        let chain = certs_from_pem(chain_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| WorkloadError::KeyPem(e.to_string()))?;
        Self::from_der(chain, key)
    }

    /// The identity carried by the leaf certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `from_der` refuses an empty chain.
        &self.chain[0]
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// Start of validity (already backdated for clock skew by the issuer).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The serial number, lower-case hex without separators.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The chain as PEM (leaf first).
    pub fn chain_pem(&self) -> String {
        certs_to_pem(&self.chain)
    }

    /// The private key as PEM.
    pub fn key_pem(&self) -> String {
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        der_to_pem(label, self.key.secret_der())
    }

    /// Whether the certificate is outside its validity period at `now` (expired, or not yet valid).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after || now < self.not_before
    }

    /// Total validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before).unwrap_or_default()
    }

    /// When the certificate should be renewed: half-way through its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        self.not_before + self.lifetime() / 2
    }

    /// The key and chain in the form rustls serves. Built (and checked) once, at construction.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, WorkloadError> {
        Ok(self.certified.clone())
    }

    pub(crate) fn certified_key_ref(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

impl Clone for WorkloadCert {
    fn clone(&self) -> Self {
        WorkloadCert {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            not_before: self.not_before,
            not_after: self.not_after,
            serial: self.serial.clone(),
            certified: self.certified.clone(),
        }
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pem_matches_known_vectors() {
        let pem = der_to_pem("X", b"foobar");
        assert_eq!(pem, "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n");
        let pem = der_to_pem("X", b"fooba");
        assert!(pem.contains("\nZm9vYmE=\n"));
        let pem = der_to_pem("X", b"foob");
        assert!(pem.contains("\nZm9vYg==\n"));
        let long = der_to_pem("X", &[0u8; 60]);
        let lines: Vec<&str> = long.lines().collect();
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2].len(), 16);
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(WorkloadCert::from_pem("not pem", "not pem"), Err(WorkloadError::ChainPem(_))));
        assert!(matches!(parse_leaf(b"\x30\x03\x02\x01\x01"), Err(WorkloadError::Parse(_))));
    }
}
