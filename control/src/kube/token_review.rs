//! Proxies authenticate with their ServiceAccount token; the API server vouches for it (TokenReview), and
//! the token's pod binds the caller to the node that pod runs on, so a proxy can only ever speak for, and
//! get certificates for, its own node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::auth::{AuthError, Caller, TokenVerifier};
use crate::discovery::BoxFuture;

/// Set on projected (bound) ServiceAccount tokens by recent Kubernetes versions.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// A proxy sends its token on every request; a verdict is reused this long to spare the API server. Short,
/// because a bound token stops being valid when its pod is deleted.
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 4096;

/// Verifies bearer tokens with the API server's TokenReview.
#[derive(Clone)]
pub struct TokenReviewVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    audience: String,
    /// `system:serviceaccount:<namespace>:<name>` of the proxies.
    username: String,
    namespace: String,
    cache: Mutex<HashMap<String, (Instant, Caller)>>,
}

impl TokenReviewVerifier {
    /// Accepts only tokens of the ServiceAccount `namespace/service_account`, issued for `audience`.
    pub fn new(client: kube::Client, audience: &str, namespace: &str, service_account: &str) -> Self {
        TokenReviewVerifier {
            inner: Arc::new(Inner {
                client,
                audience: audience.to_string(),
                username: format!("system:serviceaccount:{namespace}:{service_account}"),
                namespace: namespace.to_string(),
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl TokenVerifier for TokenReviewVerifier {
    fn verify(&self, token: &str) -> BoxFuture<Result<Caller, AuthError>> {
        let inner = self.inner.clone();
        let token = token.to_string();
        Box::pin(async move {
            if let Some(caller) = inner.cached(&token) {
                return Ok(caller);
            }
            let caller = inner.review(&token).await?;
            inner.remember(token, caller.clone());
            Ok(caller)
        })
    }
}

impl Inner {
    fn cached(&self, token: &str) -> Option<Caller> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(token).filter(|(at, _)| at.elapsed() < CACHE_TTL).map(|(_, caller)| caller.clone())
    }

    fn remember(&self, token: String, caller: Caller) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token, (Instant::now(), caller));
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answered = api.create(&PostParams::default(), &review).await.map_err(|e| {
            AuthError::Unavailable(format!(
                "TokenReview failed: {e} (may the control plane's ServiceAccount create tokenreviews?)"
            ))
        })?;
        let status = answered.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            tracing::debug!(error = status.error.as_deref().unwrap_or(""), "TokenReview refused a token");
            return Err(AuthError::Invalid);
        }
        if status.audiences.as_ref().is_some_and(|a| !a.contains(&self.audience)) {
            return Err(AuthError::Invalid);
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.clone().unwrap_or_default();
        if username != self.username {
            tracing::warn!(username, expected = self.username, "refused a token that is not the node proxies'");
            return Err(AuthError::Invalid);
        }
        let node = self.node_of(&user).await?;
        Ok(Caller { subject: username, node: Some(node) })
    }

    /// The node the token is bound to: named by the token itself, or the node of the pod it was issued to.
    async fn node_of(&self, user: &UserInfo) -> Result<String, AuthError> {
        let extra = |key: &str| {
            user.extra.as_ref().and_then(|e| e.get(key)).and_then(|v| v.first()).filter(|v| !v.is_empty()).cloned()
        };
        if let Some(node) = extra(NODE_NAME_EXTRA) {
            return Ok(node);
        }
        let Some(pod_name) = extra(POD_NAME_EXTRA) else {
            tracing::warn!("refused a token bound to no pod (a projected ServiceAccount token is required)");
            return Err(AuthError::Invalid);
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let pod = match pods.get_opt(&pod_name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => {
                tracing::warn!(pod = pod_name, "refused a token whose pod no longer exists");
                return Err(AuthError::Invalid);
            }
            Err(e) => return Err(AuthError::Unavailable(format!("reading pod {}/{pod_name}: {e}", self.namespace))),
        };
        // A pod recreated under the same name is another pod; its predecessor's token must not speak for it.
        if let Some(uid) = extra(POD_UID_EXTRA) {
            if pod.metadata.uid.as_deref() != Some(uid.as_str()) {
                tracing::warn!(pod = pod_name, "refused a token issued to an earlier pod of the same name");
                return Err(AuthError::Invalid);
            }
        }
        match pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()) {
            Some(node) => Ok(node),
            None => {
                tracing::warn!(pod = pod_name, "refused a token whose pod is not scheduled on a node");
                Err(AuthError::Invalid)
            }
        }
    }
}
