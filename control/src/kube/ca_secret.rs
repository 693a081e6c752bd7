//! The mesh CA kept in a Secret (`strait-system/strait-ca`, keys `ca.pem` and `ca-key.pem`), so every
//! replica and every restart of the control plane signs with the same root. The first control plane to start
//! creates it; if two race, the loser's create is refused (409) and it uses the winner's.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use strait_certs::{CaError, MeshCa, CA_CERT_FILE, CA_KEY_FILE};

#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error("reading or creating the CA Secret {namespace}/{name}: {source} (may the control plane's ServiceAccount get and create secrets there?)")]
    Api { namespace: String, name: String, source: Box<kube::Error> },
    #[error("the CA Secret {namespace}/{name} has no {key:?} key (it needs {CA_CERT_FILE} and {CA_KEY_FILE})")]
    MissingKey { namespace: String, name: String, key: &'static str },
    #[error("the CA Secret {namespace}/{name} does not hold a usable CA: {source}")]
    Invalid { namespace: String, name: String, source: Box<CaError> },
    #[error("the CA Secret {namespace}/{name} is for trust domain {found:?}, but the control plane runs {wanted:?}")]
    TrustDomain { namespace: String, name: String, found: String, wanted: String },
    #[error("generating a new mesh CA: {0}")]
    Generate(String),
}

/// Loads the CA from the Secret, creating the Secret with a new CA for `trust_domain` if there is none.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> Result<MeshCa, CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_error =
        |source| CaSecretError::Api { namespace: namespace.into(), name: name.into(), source: Box::new(source) };
    // Twice at most: absent, then (after losing a create race) present.
    for _ in 0..2 {
        if let Some(secret) = api.get_opt(name).await.map_err(api_error)? {
            let ca = parse(&secret, namespace, name)?;
            if ca.trust_domain() != trust_domain {
                return Err(CaSecretError::TrustDomain {
                    namespace: namespace.into(),
                    name: name.into(),
                    found: ca.trust_domain().to_string(),
                    wanted: trust_domain.to_string(),
                });
            }
            tracing::info!(namespace, name, "loaded the mesh CA from its Secret");
            return Ok(ca);
        }
        let (ca, cert_pem, key_pem) = generate(trust_domain)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([("app.kubernetes.io/part-of".to_string(), "strait".to_string())])),
                ..Default::default()
            },
            type_: Some("Opaque".to_string()),
            data: Some(BTreeMap::from([
                (CA_CERT_FILE.to_string(), ByteString(cert_pem.into_bytes())),
                (CA_KEY_FILE.to_string(), ByteString(key_pem.into_bytes())),
            ])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(namespace, name, "created the mesh CA and stored it in a new Secret");
                return Ok(ca);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::info!(namespace, name, "another control plane created the CA Secret first; using it");
            }
            Err(e) => return Err(api_error(e)),
        }
    }
    // Created by someone else and gone again before it could be read: not worth a loop.
    Err(CaSecretError::Generate("the CA Secret was created concurrently and then removed; restart to retry".into()))
}

fn parse(secret: &Secret, namespace: &str, name: &str) -> Result<MeshCa, CaSecretError> {
    let field = |key: &'static str| -> Result<String, CaSecretError> {
        let missing = || CaSecretError::MissingKey { namespace: namespace.into(), name: name.into(), key };
        let bytes = secret.data.as_ref().and_then(|d| d.get(key)).ok_or_else(missing)?;
        String::from_utf8(bytes.0.clone()).map_err(|_| missing())
    };
    MeshCa::from_pem(&field(CA_CERT_FILE)?, &field(CA_KEY_FILE)?).map_err(|source| CaSecretError::Invalid {
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    })
}

/// A new CA and its PEM files, made in memory (the control plane runs with a read-only root filesystem).
fn generate(trust_domain: &str) -> Result<(MeshCa, String, String), CaSecretError> {
    let ca = MeshCa::generate(trust_domain).map_err(|e| CaSecretError::Generate(e.to_string()))?;
    let (cert_pem, key_pem) = (ca.root_pem().to_string(), ca.key_pem());
    Ok((ca, cert_pem, key_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_ca_loads_back_for_its_trust_domain() {
        let (ca, cert_pem, key_pem) = generate("mesh.example").expect("generated");
        assert_eq!(ca.trust_domain(), "mesh.example");
        let again = MeshCa::from_pem(&cert_pem, &key_pem).expect("loads");
        assert_eq!(again.root_pem(), ca.root_pem());
    }
}
