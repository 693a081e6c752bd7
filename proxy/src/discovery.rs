//! On-demand discovery (push protocol 3, `control/PROTOCOL.md`): the control plane sends this node every
//! service's frontend but the endpoints of a service, and the workload at an address, only once the node
//! subscribed to them. Before an outbound connection is planned, [`Discovery::resolve`] makes sure the
//! configuration in place answers for its destination: if not, it subscribes (one request per destination, shared
//! by every connection waiting for it) and waits, bounded, for the pushed version that answers. Without an
//! answer in time, or with no control plane, the connection is refused (fail closed); what the node already
//! knows keeps working.
//!
//! The interest set is bounded, sent again whole on every new stream (the control plane forgets it when a stream
//! ends), and interests unused for `idle` are dropped.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strait_api::protocol::{SubscribeRequest, MAX_ADDRESS_INTERESTS, MAX_SERVICE_INTERESTS};
use strait_api::ServiceRef;

use tokio::sync::{mpsc, oneshot};

use crate::state::{State, StateStore};
use crate::tcp::socket::canonical_ip;
use crate::telemetry::metrics::Metrics;

/// The longest a connection may wait for discovery (`--discovery-timeout`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether this proxy asks for on-demand configuration (protocol 3) or the whole mesh (protocol 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoveryMode {
    OnDemand,
    Full,
}

#[derive(Clone, Copy, Debug)]
pub struct DiscoveryOptions {
    pub mode: DiscoveryMode,
    /// How long a connection waits for the answer to a subscription.
    pub timeout: Duration,
    /// Interests unused for this long are dropped.
    pub idle: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            mode: DiscoveryMode::OnDemand,
            timeout: Duration::from_secs(2),
            idle: Duration::from_secs(600),
        }
    }
}

/// What a connection needs the configuration to answer for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Want {
    Service(ServiceRef),
    Address(IpAddr),
}

impl Want {
    fn answered(&self, state: &State) -> bool {
        match self {
            Want::Service(s) => state.service_by_name(&s.namespace, &s.name).is_some_and(|s| state.answers_service(s)),
            Want::Address(a) => state.workload(*a).is_some() || state.answers_address(*a),
        }
    }
}

/// Why a connection could not wait for its destination to be discovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DiscoveryError {
    #[error("no answer from the control plane within the discovery timeout")]
    Timeout,
    #[error("no control plane connected to ask")]
    Unavailable,
    #[error("the interest set is full ({MAX_SERVICE_INTERESTS} services, {MAX_ADDRESS_INTERESTS} addresses)")]
    Full,
}

impl DiscoveryError {
    fn label(self) -> &'static str {
        match self {
            DiscoveryError::Timeout => "timeout",
            DiscoveryError::Unavailable => "unavailable",
            DiscoveryError::Full => "refused",
        }
    }
}

/// Sends a subscription on the control-plane connection of the current stream (`control_plane.rs`).
pub trait SubscribeLink: Send + Sync {
    fn subscribe(&self, request: SubscribeRequest) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

pub struct Discovery {
    options: DiscoveryOptions,
    /// Whether the configuration in place came on demand (protocol 3): only then can it lack a destination.
    on_demand: AtomicBool,
    inner: Mutex<Interests>,
    metrics: Arc<Metrics>,
}

/// Subscriptions to send on the current stream's connection, in order, one at a time: the control plane
/// handles each request on its own, so a replacing set sent after an addition must not overtake it. With a
/// channel for the answer when a connection waits for it.
type Queue = mpsc::UnboundedSender<(SubscribeRequest, Option<oneshot::Sender<Result<(), String>>>)>;

#[derive(Default)]
struct Interests {
    link: Option<Queue>,
    /// Every interest and when a connection last needed it.
    used: HashMap<Want, Instant>,
    services: usize,
    /// Sent on the current stream: connections wanting these wait for the answer without asking again.
    requested: HashSet<Want>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Discovery {
    pub fn new(options: DiscoveryOptions, metrics: Arc<Metrics>) -> Self {
        Discovery { options, on_demand: AtomicBool::new(false), inner: Mutex::default(), metrics }
    }

    pub fn mode(&self) -> DiscoveryMode {
        self.options.mode
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Interests> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A protocol 3 stream is open on `link`: the whole interest set goes to it first (the control plane knows
    /// none), then each new interest, in order.
    pub fn connected(&self, link: Arc<dyn SubscribeLink>) {
        self.on_demand.store(true, Ordering::Release);
        let (queue, mut requests) = mpsc::unbounded_channel::<(SubscribeRequest, Option<oneshot::Sender<_>>)>();
        tokio::spawn(async move {
            while let Some((request, answer)) = requests.recv().await {
                let result = link.subscribe(request).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "the control plane did not take a subscription");
                }
                if let Some(answer) = answer {
                    let _ = answer.send(result);
                }
            }
        });
        let mut inner = self.lock();
        inner.requested = inner.used.keys().cloned().collect();
        let _ = queue.send((whole_set(&inner), None));
        inner.link = Some(queue);
    }

    /// This proxy takes its configuration from a control plane and asks for on-demand discovery: until a stream
    /// says otherwise, a configuration in place (the last good one from disk) may lack destinations, and one it
    /// lacks is refused, not passed through, while no control plane answers.
    pub fn expect_on_demand(&self) {
        if self.options.mode == DiscoveryMode::OnDemand {
            self.on_demand.store(true, Ordering::Release);
        }
    }

    /// Takes the interests a previous run of this proxy had, from the answers of the configuration it saved: the
    /// first stream asks for them again, so a restart does not make connections wait for what they used.
    pub fn remember(&self, answers: &[strait_api::delta::Answer]) {
        let mut inner = self.lock();
        let now = Instant::now();
        for answer in answers {
            let want = match answer {
                strait_api::delta::Answer::Service { namespace, name } => {
                    Want::Service(ServiceRef::new(name.as_str(), namespace.as_str()))
                }
                strait_api::delta::Answer::Address { address } => match address.parse() {
                    Ok(ip) => Want::Address(ip),
                    Err(_) => continue,
                },
            };
            let full = match want {
                Want::Service(_) => inner.services >= MAX_SERVICE_INTERESTS,
                Want::Address(_) => inner.used.len() - inner.services >= MAX_ADDRESS_INTERESTS,
            };
            if full || inner.used.contains_key(&want) {
                continue;
            }
            if matches!(want, Want::Service(_)) {
                inner.services += 1;
            }
            inner.used.insert(want, now);
        }
    }

    /// A stream of protocol 1 or 2 is open: its configurations are whole, nothing is ever missing.
    pub fn connected_full(&self) {
        self.on_demand.store(false, Ordering::Release);
        let mut inner = self.lock();
        inner.link = None;
        inner.requested.clear();
    }

    /// The stream ended: nothing can be asked until the next one (the configuration in place keeps serving).
    pub fn disconnected(&self) {
        let mut inner = self.lock();
        inner.link = None;
        inner.requested.clear();
    }

    /// Makes sure the configuration answers for an outbound connection from `source` to `original`; `false`
    /// (counted and logged) when the connection must be refused.
    pub(crate) async fn resolve(&self, store: &StateStore, source: SocketAddr, original: SocketAddr) -> bool {
        if !self.on_demand.load(Ordering::Acquire) {
            return true;
        }
        let state = store.current();
        // Only a meshed pod of this node may make the node subscribe; anything else is refused further on.
        if state.local_workload(source.ip()).is_none() {
            return true;
        }
        let want = match state.service(original) {
            Some(target) => Want::Service(ServiceRef::new(&target.service.name, &target.service.namespace)),
            None => Want::Address(original.ip()),
        };
        if want.answered(&state) {
            self.touch(&want);
            return true;
        }
        // Boxed: the wait's state is rare, and every connection's task would otherwise carry it for its lifetime.
        match Box::pin(self.wait_for(store, want.clone())).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(source = %source, destination = %original, wanted = ?want, error = %e, "refused: the destination is not discovered");
                false
            }
        }
    }

    /// The destination side: the caller's pod address, as its proxy names it in `Forwarded` (checked against the
    /// handshake's identity by the tunnel), must be known so that policies on addresses and telemetry see the pod,
    /// not its node. `false` (the stream is refused) when it cannot be discovered: a DENY on an address must not
    /// be skipped for want of an answer.
    pub(crate) async fn resolve_caller(&self, store: &StateStore, headers: &http::HeaderMap) -> bool {
        if !self.on_demand.load(Ordering::Acquire) {
            return true;
        }
        let forwarded = headers.get(http::header::FORWARDED).and_then(|v| v.to_str().ok());
        let Some(caller) = forwarded.and_then(crate::tunnel::parse_forwarded_for).map(canonical_ip) else {
            return true;
        };
        let want = Want::Address(caller);
        if want.answered(&store.current()) {
            self.touch(&want);
            return true;
        }
        match Box::pin(self.wait_for(store, want)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%caller, error = %e, "refused: the calling pod's address is not discovered");
                false
            }
        }
    }

    /// Subscribes to `want` (unless a connection already did) and waits for the version that answers it.
    pub(crate) async fn wait_for(&self, store: &StateStore, want: Want) -> Result<(), DiscoveryError> {
        let result = self.subscribe_and_wait(store, want).await;
        let label = result.as_ref().map_or_else(|e| e.label(), |()| "answered");
        self.metrics.discovery.with_label_values(&[label]).inc();
        result
    }

    async fn subscribe_and_wait(&self, store: &StateStore, want: Want) -> Result<(), DiscoveryError> {
        let mut states = store.subscribe();
        let send = {
            let mut inner = self.lock();
            if !inner.used.contains_key(&want) {
                let full = match want {
                    Want::Service(_) => inner.services >= MAX_SERVICE_INTERESTS,
                    Want::Address(_) => inner.used.len() - inner.services >= MAX_ADDRESS_INTERESTS,
                };
                if full {
                    return Err(DiscoveryError::Full);
                }
                if matches!(want, Want::Service(_)) {
                    inner.services += 1;
                }
            }
            inner.used.insert(want.clone(), Instant::now());
            let queue = inner.link.clone().ok_or(DiscoveryError::Unavailable)?;
            if inner.requested.insert(want.clone()) {
                let (services, addresses) = match &want {
                    Want::Service(s) => (vec![s.clone()], Vec::new()),
                    Want::Address(a) => (Vec::new(), vec![*a]),
                };
                let (tx, rx) = oneshot::channel();
                let request = SubscribeRequest { replace: false, services, addresses };
                queue.send((request, Some(tx))).map_err(|_| DiscoveryError::Unavailable)?;
                Some(rx)
            } else {
                None
            }
        };
        if let Some(sent) = send {
            if !matches!(sent.await, Ok(Ok(()))) {
                self.lock().requested.remove(&want);
                return Err(DiscoveryError::Unavailable);
            }
        }
        let answered = async {
            loop {
                if want.answered(&states.borrow_and_update()) {
                    return;
                }
                if states.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(self.options.timeout, answered).await.map_err(|_| DiscoveryError::Timeout)
    }

    fn touch(&self, want: &Want) {
        if let Some(used) = self.lock().used.get_mut(want) {
            *used = Instant::now();
        }
    }

    /// Drops interests unused for `idle`, forever; the control plane is told the remaining set.
    pub async fn expire(self: Arc<Self>) {
        let period = (self.options.idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::time::sleep(period).await;
            self.drop_unused(Instant::now());
        }
    }

    /// Drops the interests unused since `now - idle` and queues the remaining set for the control plane (the
    /// next stream sends it anyway); the remaining set when any was dropped.
    fn drop_unused(&self, now: Instant) -> Option<SubscribeRequest> {
        let mut inner = self.lock();
        let before = inner.used.len();
        inner.used.retain(|_, used| now.duration_since(*used) < self.options.idle);
        if inner.used.len() == before {
            return None;
        }
        tracing::info!(dropped = before - inner.used.len(), "dropping discovery interests no connection used lately");
        inner.services = inner.used.keys().filter(|w| matches!(w, Want::Service(_))).count();
        let kept: HashSet<Want> = inner.used.keys().cloned().collect();
        inner.requested.retain(|w| kept.contains(w));
        let request = whole_set(&inner);
        if let Some(queue) = &inner.link {
            let _ = queue.send((request.clone(), None));
        }
        Some(request)
    }
}

/// The whole interest set, as a request that replaces the control plane's copy.
fn whole_set(inner: &Interests) -> SubscribeRequest {
    let mut request = SubscribeRequest { replace: true, ..SubscribeRequest::default() };
    for want in inner.used.keys() {
        match want {
            Want::Service(s) => request.services.push(s.clone()),
            Want::Address(a) => request.addresses.push(*a),
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use strait_api::delta::Answer;
    use strait_api::MeshConfig;

    use super::*;

    /// A control plane that records subscriptions and answers each by pushing a configuration that holds it.
    struct Answering {
        store: StateStore,
        requests: Mutex<Vec<SubscribeRequest>>,
        answer: bool,
        versions: AtomicUsize,
    }

    impl SubscribeLink for Answering {
        fn subscribe(
            &self,
            request: SubscribeRequest,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            Box::pin(async move {
                self.requests.lock().expect("lock").push(request.clone());
                if self.answer {
                    let mut config = (*self.store.current().config).clone();
                    config.answers.extend(request.services.iter().map(|s| Answer::service(&s.namespace, &s.name)));
                    config.answers.extend(request.addresses.iter().map(|a| Answer::address(*a)));
                    strait_api::delta::canonicalize(&mut config);
                    let version = self.versions.fetch_add(1, Ordering::Relaxed);
                    let store = self.store.clone();
                    // The answer arrives on the stream, after the subscription's response.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        store.apply(config, format!("v{version}")).expect("valid");
                    });
                }
                Ok(())
            })
        }
    }

    fn setup(answer: bool) -> (StateStore, Arc<Answering>, Arc<Discovery>) {
        let store = StateStore::new("node-a");
        let config: MeshConfig = serde_yaml::from_str(
            "
workloads: [{name: client, namespace: shop, node: node-a, address: 10.1.0.2}]
services: [{name: reviews, namespace: shop, addresses: [10.96.0.1], ports: [{port: 9080}]}]
",
        )
        .expect("test configuration");
        store.apply(config, "v0".into()).expect("valid");
        let link = Arc::new(Answering { store: store.clone(), requests: Mutex::default(), answer, versions: 1.into() });
        let options = DiscoveryOptions { timeout: Duration::from_millis(300), ..DiscoveryOptions::default() };
        let discovery = Arc::new(Discovery::new(options, Arc::new(Metrics::new())));
        (store, link, discovery)
    }

    const CLIENT: &str = "10.1.0.2:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[tokio::test]
    async fn concurrent_connections_share_one_subscription_and_then_need_none() {
        let (store, link, discovery) = setup(true);
        discovery.connected(link.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(link.requests.lock().expect("lock").len(), 1, "the (empty) interest set on connect");
        let vip = addr("10.96.0.1:9080");
        let waits = (0..5).map(|_| discovery.resolve(&store, addr(CLIENT), vip));
        let results = futures_util::future::join_all(waits).await;
        assert!(results.iter().all(|ok| *ok), "every connection waits for the answer");
        let requests = link.requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 2, "one subscription for five connections: {requests:?}");
        assert!(requests[0].replace, "the whole set first, then additions, in order");
        assert_eq!(requests[1].services, [ServiceRef::new("reviews", "shop")]);
        assert!(!requests[1].replace);
        assert!(discovery.resolve(&store, addr(CLIENT), vip).await, "answered: no request");
        // An address of no workload: answered "not in the mesh", so the connection proceeds.
        assert!(discovery.resolve(&store, addr(CLIENT), addr("192.0.2.7:443")).await);
        assert_eq!(link.requests.lock().expect("lock").len(), 3);
        let metrics = &discovery.metrics;
        assert_eq!(metrics.discovery.with_label_values(&["answered"]).get(), 6);

        // A new stream gets the whole set again.
        discovery.connected(link.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let last = link.requests.lock().expect("lock").last().cloned().expect("sent");
        assert!(last.replace);
        assert_eq!((last.services.len(), last.addresses.len()), (1, 1));
    }

    #[tokio::test]
    async fn without_an_answer_or_a_control_plane_the_connection_is_refused() {
        let (store, link, discovery) = setup(false);
        discovery.connected(link.clone());
        let vip = addr("10.96.0.1:9080");
        assert!(!discovery.resolve(&store, addr(CLIENT), vip).await, "no answer within the timeout");
        assert_eq!(discovery.metrics.discovery.with_label_values(&["timeout"]).get(), 1);
        discovery.disconnected();
        assert!(!discovery.resolve(&store, addr(CLIENT), addr("10.2.0.9:80")).await, "nobody to ask");
        assert_eq!(discovery.metrics.discovery.with_label_values(&["unavailable"]).get(), 1);
        // A source that is not a meshed pod of this node does not make the node subscribe.
        assert!(discovery.resolve(&store, addr("10.9.9.9:1"), addr("10.2.0.10:80")).await);
        // A proxy on protocol 2 holds the whole mesh: nothing to wait for.
        discovery.connected_full();
        assert!(discovery.resolve(&store, addr(CLIENT), vip).await);
        // A restarted proxy asks again for what its saved configuration answered.
        let fresh = Discovery::new(DiscoveryOptions::default(), Arc::new(Metrics::new()));
        fresh.remember(&[Answer::service("shop", "reviews"), Answer::address("10.0.0.9".parse().expect("ip"))]);
        let set = whole_set(&fresh.lock());
        assert_eq!((set.services.len(), set.addresses.len(), set.replace), (1, 1, true));
        // Restarted with a control plane configured but not reachable yet: what is missing is refused.
        discovery.expect_on_demand();
        assert!(!discovery.resolve(&store, addr(CLIENT), addr("10.2.0.11:80")).await, "not passed through");
    }

    #[tokio::test]
    async fn an_unknown_caller_address_is_discovered_on_the_destination_side() {
        let (store, link, discovery) = setup(true);
        discovery.connected(link.clone());
        tokio::time::sleep(Duration::from_millis(50)).await; // the (empty) interest set's answer
        let mut headers = http::HeaderMap::new();
        assert!(discovery.resolve_caller(&store, &headers).await, "no Forwarded: the peer proxy is the caller");
        headers.insert(http::header::FORWARDED, http::HeaderValue::from_static("for=10.3.0.7"));
        assert!(discovery.resolve_caller(&store, &headers).await);
        assert!(store.current().answers_address("10.3.0.7".parse().expect("ip")));
        let (store, link, discovery) = setup(false);
        discovery.connected(link);
        assert!(!discovery.resolve_caller(&store, &headers).await, "unanswered: refused");
    }

    #[test]
    fn unused_interests_are_dropped_and_the_rest_sent_whole() {
        let discovery = Discovery::new(DiscoveryOptions::default(), Arc::new(Metrics::new()));
        let now = Instant::now();
        {
            let mut inner = discovery.lock();
            inner.used.insert(Want::Service(ServiceRef::new("old", "shop")), now);
            inner.used.insert(Want::Address("10.0.0.1".parse().expect("ip")), now + Duration::from_secs(500));
            inner.services = 1;
        }
        assert!(discovery.drop_unused(now + Duration::from_secs(599)).is_none(), "nothing idle yet");
        let request = discovery.drop_unused(now + Duration::from_secs(601)).expect("one dropped");
        assert!(request.replace && request.services.is_empty());
        assert_eq!(request.addresses.len(), 1);
        assert_eq!(discovery.lock().services, 0);
    }

    #[tokio::test]
    async fn the_interest_set_is_bounded() {
        let (store, link, discovery) = setup(false);
        discovery.connected(link);
        {
            let mut inner = discovery.lock();
            for i in 0..MAX_SERVICE_INTERESTS {
                inner.used.insert(Want::Service(ServiceRef::new(format!("s{i}"), "shop")), Instant::now());
            }
            inner.services = MAX_SERVICE_INTERESTS;
        }
        let result = discovery.wait_for(&store, Want::Service(ServiceRef::new("reviews", "shop"))).await;
        assert_eq!(result, Err(DiscoveryError::Full));
        assert_eq!(discovery.metrics.discovery.with_label_values(&["refused"]).get(), 1);
    }
}
