//! Who is calling: node proxies present a bearer token; a [`TokenVerifier`] says whose it is and which node
//! it may speak for.

use std::path::Path;

use crate::discovery::BoxFuture;

/// What a verified token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject, for logs (e.g. `static-token`, later a service account).
    pub subject: String,
    /// The node the caller is bound to; `None` lets it name any node (the local mesh's one shared token).
    pub node: Option<String>,
}

impl Caller {
    /// The node this request speaks for: the one the token is bound to, which the `x-strait-node` header
    /// must agree with, or the header's when the token is not bound.
    pub fn node_for(&self, claimed: &str) -> Result<String, AuthError> {
        match &self.node {
            None => Ok(claimed.to_string()),
            Some(bound) if bound == claimed => Ok(bound.clone()),
            Some(bound) => Err(AuthError::WrongNode {
                subject: self.subject.clone(),
                bound: bound.clone(),
                claimed: claimed.to_string(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` header")]
    Missing,
    #[error("the bearer token is not valid")]
    Invalid,
    #[error("{subject} may only speak for node {bound:?}, not {claimed:?}")]
    WrongNode { subject: String, bound: String, claimed: String },
    #[error("cannot verify the token: {0}")]
    Unavailable(String),
}

/// Checks bearer tokens. Async because the Kubernetes implementation asks the API server (TokenReview).
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(&self, token: &str) -> BoxFuture<Result<Caller, AuthError>>;
}

/// One shared secret, for the local mesh: whoever holds it may speak for any node.
pub struct StaticTokenVerifier {
    token: String,
}

impl StaticTokenVerifier {
    pub fn new(token: impl Into<String>) -> Result<Self, AuthError> {
        let token = token.into().trim().to_string();
        if token.is_empty() {
            return Err(AuthError::Unavailable("the static token is empty".into()));
        }
        Ok(StaticTokenVerifier { token })
    }

    /// Reads the token from a file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Self::new(text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }
}

impl TokenVerifier for StaticTokenVerifier {
    fn verify(&self, token: &str) -> BoxFuture<Result<Caller, AuthError>> {
        let result = if constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
            Ok(Caller { subject: "static-token".into(), node: None })
        } else {
            Err(AuthError::Invalid)
        };
        Box::pin(std::future::ready(result))
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&http::HeaderValue>) -> Result<&str, AuthError> {
    let value = header.and_then(|h| h.to_str().ok()).ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_tokens() {
        let v = StaticTokenVerifier::new("s3cret\n").expect("token");
        let caller = v.verify("s3cret").await.expect("valid");
        assert_eq!(caller.node_for("node-a"), Ok("node-a".to_string()));
        assert_eq!(v.verify("s3cre").await, Err(AuthError::Invalid));
        assert!(StaticTokenVerifier::new("  ").is_err());
    }

    #[test]
    fn bound_callers_speak_only_for_their_node() {
        let caller = Caller { subject: "sa".into(), node: Some("a".into()) };
        assert!(caller.node_for("a").is_ok());
        assert!(matches!(caller.node_for("b"), Err(AuthError::WrongNode { .. })));
    }

    #[test]
    fn bearer_headers() {
        let h = http::HeaderValue::from_static("Bearer abc");
        assert_eq!(bearer(Some(&h)), Ok("abc"));
        assert_eq!(bearer(Some(&http::HeaderValue::from_static("Basic abc"))), Err(AuthError::Missing));
        assert_eq!(bearer(None), Err(AuthError::Missing));
    }
}
