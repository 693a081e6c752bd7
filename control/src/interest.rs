//! Protocol 3 (on-demand discovery): what each node subscribed to. A node's interest set lives as long as its
//! configuration stream on this replica: the stream registers it when it opens and drops it when it ends, and
//! the proxy sends its whole set again on its next stream (to whichever replica). `POST
//! /strait.v1.Config/Subscribe` adds to it or replaces it; the stream renders the node's view from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use strait_api::delta::{Answer, Resource};
use strait_api::protocol::{SubscribeRequest, MAX_ADDRESS_INTERESTS, MAX_SERVICE_INTERESTS};
use strait_api::ServiceRef;
use tokio::sync::watch;

/// Names longer than a Kubernetes name may be are refused (a peer's input).
const MAX_NAME: usize = 253;

/// One node's interests, and the answers its view carries for them.
#[derive(Debug, Default)]
pub struct Interests {
    services: BTreeSet<ServiceRef>,
    addresses: BTreeSet<IpAddr>,
    /// One answer per interest, keyed and ordered as the view holds them (canonical order), shared by every
    /// version rendered from this set.
    answers: BTreeMap<(String, String), Arc<Resource>>,
    /// Whether the proxy sent anything yet on this stream (it sends its whole set first).
    received: bool,
}

impl Interests {
    pub fn services(&self) -> &BTreeSet<ServiceRef> {
        &self.services
    }

    pub fn addresses(&self) -> &BTreeSet<IpAddr> {
        &self.addresses
    }

    /// The answers, in canonical order.
    pub fn answers(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.answers.values()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// Whether the proxy has sent its interests on this stream (its first request, even an empty set).
    pub fn received(&self) -> bool {
        self.received
    }

    /// This set with `request` applied (added, or replacing it), or why the request is refused (the set is then
    /// unchanged).
    pub fn with(&self, request: &SubscribeRequest) -> Result<Interests, SubscribeError> {
        for (i, service) in request.services.iter().enumerate() {
            for (field, value) in [("namespace", &service.namespace), ("name", &service.name)] {
                if value.is_empty() || value.len() > MAX_NAME {
                    return Err(SubscribeError::Name(format!("services[{i}].{field}")));
                }
            }
        }
        let mut services = if request.replace { BTreeSet::new() } else { self.services.clone() };
        services.extend(request.services.iter().cloned());
        let mut addresses = if request.replace { BTreeSet::new() } else { self.addresses.clone() };
        addresses.extend(request.addresses.iter().copied());
        if services.len() > MAX_SERVICE_INTERESTS {
            return Err(SubscribeError::TooMany { what: "services", max: MAX_SERVICE_INTERESTS });
        }
        if addresses.len() > MAX_ADDRESS_INTERESTS {
            return Err(SubscribeError::TooMany { what: "addresses", max: MAX_ADDRESS_INTERESTS });
        }
        let mut answers = BTreeMap::new();
        let mut keep = |answer: Answer| {
            let (namespace, name) = answer.key_parts();
            let key = (namespace.to_string(), name.to_string());
            let resource = self.answers.get(&key).cloned().unwrap_or_else(|| Arc::new(Resource::Answer(answer)));
            answers.insert(key, resource);
        };
        services.iter().for_each(|s| keep(Answer::service(&s.namespace, &s.name)));
        addresses.iter().for_each(|a| keep(Answer::address(*a)));
        Ok(Interests { services, addresses, answers, received: true })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("no protocol 3 configuration stream of node {0} is open on this control plane (open the stream first, on the same connection)")]
    NoStream(String),
    #[error("{what}: a node may subscribe to at most {max} {what}; drop unused interests first")]
    TooMany { what: &'static str, max: usize },
    #[error("{0}: must be 1 to 253 characters")]
    Name(String),
}

/// One HTTP/2 connection from a proxy to this replica (numbered as accepted). A proxy subscribes on the
/// connection its stream runs on, so two proxies of one node (a replacement starting beside the proxy it
/// replaces) each get the answers they asked for.
pub type ConnectionId = u64;

/// Every stream's interest set on this replica, by node name and connection.
#[derive(Debug, Default)]
pub struct Subscriptions {
    nodes: Mutex<HashMap<(String, ConnectionId), InterestSender>>,
}

/// Where a stream's interests are sent, shared by its registration and the subscriptions table.
type InterestSender = Arc<watch::Sender<Arc<Interests>>>;

/// A stream's registration: the node's interests as they change; forgotten when dropped (the stream ended),
/// unless a newer stream of the node registered since.
#[derive(Debug)]
pub struct Registration {
    subscriptions: Arc<Subscriptions>,
    key: (String, ConnectionId),
    sender: Arc<watch::Sender<Arc<Interests>>>,
    pub interests: watch::Receiver<Arc<Interests>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut nodes = self.subscriptions.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if nodes.get(&self.key).is_some_and(|current| Arc::ptr_eq(current, &self.sender)) {
            nodes.remove(&self.key);
        }
    }
}

impl Subscriptions {
    /// Registers a new stream of `node` on `connection`, with an empty interest set (the proxy sends its own
    /// next). A stream the node still had open on that connection no longer receives subscriptions.
    pub fn open(self: &Arc<Self>, node: &str, connection: ConnectionId) -> Registration {
        let (sender, interests) = watch::channel(Arc::new(Interests::default()));
        let sender = Arc::new(sender);
        let key = (node.to_string(), connection);
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), sender.clone());
        Registration { subscriptions: self.clone(), key, sender, interests }
    }

    /// Applies `request` to the interests of `node`'s stream on `connection`; the stream then renders the answer.
    pub fn subscribe(
        &self,
        node: &str,
        connection: ConnectionId,
        request: &SubscribeRequest,
    ) -> Result<(), SubscribeError> {
        let key = (node.to_string(), connection);
        let sender = self.nodes.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let sender = sender.ok_or_else(|| SubscribeError::NoStream(node.to_string()))?;
        let mut result = Ok(());
        sender.send_if_modified(|current| match current.with(request) {
            Ok(next) => {
                let changed = !current.received
                    || next.answers.len() != current.answers.len()
                    || next.answers.keys().zip(current.answers.keys()).any(|(a, b)| a != b);
                *current = Arc::new(next);
                changed
            }
            Err(e) => {
                result = Err(e);
                false
            }
        });
        result
    }

    /// The nodes with a registered interest set (for tests and metrics).
    pub fn nodes(&self) -> usize {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(replace: bool, services: &[&str], addresses: &[&str]) -> SubscribeRequest {
        SubscribeRequest {
            replace,
            services: services.iter().map(|s| ServiceRef::new(*s, "shop")).collect(),
            addresses: addresses.iter().map(|a| a.parse().expect("test address")).collect(),
        }
    }

    #[test]
    fn requests_add_or_replace_and_answers_are_in_canonical_order() {
        let set = Interests::default().with(&request(false, &["reviews"], &["10.0.0.9"])).expect("adds");
        let set = set.with(&request(false, &["details"], &["10.0.0.10"])).expect("adds");
        let keys: Vec<(&str, &str)> = set
            .answers()
            .map(|r| match &**r {
                Resource::Answer(a) => a.key_parts(),
                other => panic!("{other:?}"),
            })
            .collect();
        // Addresses (empty namespace) first, then by text, as the proxy sorts them.
        assert_eq!(keys, [("", "10.0.0.10"), ("", "10.0.0.9"), ("shop", "details"), ("shop", "reviews")]);
        let replaced = set.with(&request(true, &["ratings"], &[])).expect("replaces");
        assert_eq!(replaced.services().len(), 1);
        assert!(replaced.addresses().is_empty());
    }

    #[test]
    fn bounds_refuse_and_leave_the_set_unchanged() {
        let subscriptions = Arc::new(Subscriptions::default());
        let err = subscriptions.subscribe("n1", 1, &request(false, &["a"], &[])).expect_err("no stream");
        assert!(err.to_string().contains("no protocol 3 configuration stream of node n1"), "{err}");
        let registration = subscriptions.open("n1", 1);
        let many: Vec<String> = (0..=MAX_SERVICE_INTERESTS).map(|i| format!("s{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = subscriptions.subscribe("n1", 1, &request(false, &many, &[])).expect_err("too many");
        assert_eq!(err, SubscribeError::TooMany { what: "services", max: MAX_SERVICE_INTERESTS });
        assert!(registration.interests.borrow().is_empty(), "nothing of a refused request is kept");
        let addresses: Vec<String> =
            (0..=MAX_ADDRESS_INTERESTS as u32).map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string()).collect();
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let err = subscriptions.subscribe("n1", 1, &request(false, &[], &addresses)).expect_err("too many");
        assert_eq!(err, SubscribeError::TooMany { what: "addresses", max: MAX_ADDRESS_INTERESTS });
        let long = "x".repeat(254);
        let err = subscriptions.subscribe("n1", 1, &request(false, &[&long], &[])).expect_err("too long");
        assert_eq!(err, SubscribeError::Name("services[0].name".into()));
        subscriptions.subscribe("n1", 1, &request(false, &many[..MAX_SERVICE_INTERESTS], &[])).expect("at the bound");
        assert_eq!(registration.interests.borrow().services().len(), MAX_SERVICE_INTERESTS);
    }

    #[test]
    fn a_node_s_interests_are_forgotten_when_its_stream_ends_but_not_a_newer_stream_s() {
        let subscriptions = Arc::new(Subscriptions::default());
        let old = subscriptions.open("n1", 1);
        let new = subscriptions.open("n1", 1);
        assert!(!new.interests.borrow().received());
        subscriptions.subscribe("n1", 1, &request(false, &["reviews"], &[])).expect("the newer stream takes it");
        assert!(new.interests.borrow().received());
        assert!(old.interests.borrow().is_empty());
        assert_eq!(new.interests.borrow().services().len(), 1);
        drop(old);
        assert_eq!(subscriptions.nodes(), 1, "the newer stream keeps its registration");
        drop(new);
        assert_eq!(subscriptions.nodes(), 0);
    }

    /// A replacement proxy runs beside the one it replaces, each with its own connection and stream: each gets
    /// the answers it asked for, and the old one leaving does not take the new one's registration with it.
    #[test]
    fn two_proxies_of_one_node_subscribe_each_on_its_own_connection() {
        let subscriptions = Arc::new(Subscriptions::default());
        let replaced = subscriptions.open("n1", 1);
        let replacement = subscriptions.open("n1", 2);
        subscriptions.subscribe("n1", 2, &request(false, &["streams"], &[])).expect("the replacement's stream");
        assert_eq!(replacement.interests.borrow().services().len(), 1);
        assert!(replaced.interests.borrow().is_empty(), "not the other proxy's stream");
        subscriptions.subscribe("n1", 1, &request(false, &["reviews"], &[])).expect("the replaced proxy's");
        assert_eq!(replaced.interests.borrow().services().len(), 1);
        drop(replaced);
        subscriptions.subscribe("n1", 2, &request(false, &["ratings"], &[])).expect("still registered");
        assert_eq!(replacement.interests.borrow().services().len(), 2);
        let err = subscriptions.subscribe("n1", 1, &request(false, &["a"], &[])).expect_err("its stream ended");
        assert!(matches!(err, SubscribeError::NoStream(_)), "{err}");
    }
}
