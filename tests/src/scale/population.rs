//! The simulated cluster in the fake API server: namespaces of 50 services, each service's pods (versions v1
//! and v2 alternating) round-robin over the nodes, one EndpointSlice per service, and a DestinationPolicy and a
//! weighted TrafficRoute for the first `routes` services; a token per node proxy. Also the changes the
//! simulation makes: a route's weights, one pod added, and a rollout replacing pods with new addresses.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use serde_json::json;

use super::options::Size;
use crate::fake_kube::objects::{self, NODE_NAME_EXTRA};
use crate::fake_kube::{FakeKube, TokenUser};

pub const PROXY_NAMESPACE: &str = "strait-system";
const SERVICES_PER_NAMESPACE: usize = 50;
pub const PORT: u16 = 8080;

pub fn node_name(node: usize) -> String {
    format!("node-{node:04}")
}

pub fn token(node: usize) -> String {
    format!("scale-token-{}", node_name(node))
}

fn namespace_of(service: usize) -> String {
    format!("ns-{:03}", service / SERVICES_PER_NAMESPACE)
}

fn service_name(service: usize) -> String {
    format!("svc-{service:05}")
}

/// Pod addresses: 10.0.0.0/8 counted up from 10.1.0.0, `generation` 0 for the first pods and 1.. for
/// replacements (each generation its own /12, so no address is reused while its old pod may still be known).
fn pod_ip(index: usize, generation: usize) -> Ipv4Addr {
    let n = (1u32 << 16) + (generation as u32) * (1 << 20) + index as u32;
    Ipv4Addr::from((10u32 << 24) | n)
}

/// Service addresses in 172.16.0.0/12 (room for [`super::options`]'s bound on services).
fn service_ip(service: usize) -> Ipv4Addr {
    Ipv4Addr::from((172u32 << 24) | (16 << 16) | (1 + service as u32))
}

/// One pod of the simulation.
#[derive(Clone, Debug)]
pub struct SimPod {
    pub service: usize,
    pub name: String,
    pub node: usize,
    pub version: &'static str,
    pub ip: Ipv4Addr,
}

impl SimPod {
    fn object(&self) -> serde_json::Value {
        let service = service_name(self.service);
        objects::pod(
            &namespace_of(self.service),
            &self.name,
            &node_name(self.node),
            &self.ip.to_string(),
            &service,
            json!({"app": service, "version": self.version}),
        )
    }
}

/// What is in the fake API server, so changes can be made consistently.
pub struct Population {
    pub size: Size,
    pub pods: Vec<SimPod>,
    /// Pods added by [`Population::add_pod`] and replacements, for unique names and addresses.
    added: usize,
}

impl Population {
    /// Fills `fake` with the cluster of `size`.
    pub fn create(fake: &FakeKube, size: &Size) -> Result<Population> {
        let put = |object: serde_json::Value| fake.apply(object).map(|_| ()).context("storing an object");
        put(objects::namespace(PROXY_NAMESPACE, false))?;
        for ns in 0..size.services.div_ceil(SERVICES_PER_NAMESPACE) {
            put(objects::namespace(&format!("ns-{ns:03}"), true))?;
        }
        let mut pods = Vec::with_capacity(size.pods);
        for index in 0..size.pods {
            let service = index % size.services;
            let version = if (index / size.services).is_multiple_of(2) { "v1" } else { "v2" };
            let name = format!("{}-{index}", service_name(service));
            pods.push(SimPod { service, name, node: index % size.nodes, version, ip: pod_ip(index, 0) });
        }
        for pod in &pods {
            put(pod.object())?;
        }
        let population = Population { size: size.clone(), pods, added: 0 };
        for service in 0..size.services {
            let (ns, name) = (namespace_of(service), service_name(service));
            put(objects::service_with_port(&ns, &name, &service_ip(service).to_string(), PORT, Some("http")))?;
            put(population.slice(service))?;
        }
        for service in 0..size.routes {
            let (ns, name) = (namespace_of(service), service_name(service));
            put(objects::versioned_policy(&ns, &name))?;
            put(objects::weighted_route(&ns, &name, 90))?;
        }
        for node in 0..size.nodes {
            let user = TokenUser::service_account(PROXY_NAMESPACE, "strait-proxy", "strait-control")
                .with_extra(NODE_NAME_EXTRA, &node_name(node));
            fake.add_token(&token(node), user);
        }
        Ok(population)
    }

    fn slice(&self, service: usize) -> serde_json::Value {
        let addresses: Vec<String> =
            self.pods.iter().filter(|p| p.service == service).map(|p| p.ip.to_string()).collect();
        objects::endpoint_slice(&namespace_of(service), &service_name(service), PORT, &addresses)
    }

    /// What node `node`'s simulated proxy subscribes to in protocol 3: 8 services spread over the mesh (a
    /// fixed pseudo-random pick per node) and the service of one route.
    pub fn interests(&self, node: usize) -> Vec<strait_api::ServiceRef> {
        let services = self.size.services;
        let mut picked: Vec<usize> =
            (0..8u64).map(|k| ((node as u64 * 2_654_435_761 + k * 40_503 + 17) % services as u64) as usize).collect();
        picked.push(node % self.size.routes);
        picked.sort_unstable();
        picked.dedup();
        picked.into_iter().map(|s| strait_api::ServiceRef::new(service_name(s), namespace_of(s))).collect()
    }

    /// Change number `change`: route `change % routes` gets new weights.
    pub fn change_route(&self, fake: &FakeKube, change: usize) -> Result<()> {
        let service = change % self.size.routes;
        let weight = 10 + (change * 7 % 80) as u32;
        fake.apply(objects::weighted_route(&namespace_of(service), &service_name(service), weight))
            .context("changing a route")?;
        Ok(())
    }

    /// A one-workload change: one new pod of service 0 on node 0, and its endpoint.
    pub fn add_pod(&mut self, fake: &FakeKube) -> Result<()> {
        self.added += 1;
        let index = self.pods.len();
        let pod = SimPod {
            service: 0,
            name: format!("{}-added-{}", service_name(0), self.added),
            node: 0,
            version: "v1",
            ip: pod_ip(index, 0),
        };
        fake.apply(pod.object()).context("adding a pod")?;
        self.pods.push(pod);
        fake.apply(self.slice(0)).context("adding its endpoint")?;
        Ok(())
    }

    /// Replaces pod `i` (of the initial ones) as a rollout does: the old pod deleted, a new one created with a
    /// new name and address on the same node, the service's endpoints updated.
    pub fn replace_pod(&mut self, fake: &FakeKube, i: usize) -> Result<()> {
        self.added += 1;
        let old = self.pods.get(i).cloned().context("no such pod to replace")?;
        fake.delete("Pod", &namespace_of(old.service), &old.name).context("deleting a pod")?;
        let new = SimPod { name: format!("{}-r{}", old.name, self.added), ip: pod_ip(i, self.added), ..old };
        fake.apply(new.object()).context("creating its replacement")?;
        let service = new.service;
        self.pods[i] = new;
        fake.apply(self.slice(service)).context("updating the endpoints")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_across_generations_and_services() {
        let mut seen = std::collections::HashSet::new();
        for generation in 0..3 {
            for index in 0..60_000 {
                assert!(seen.insert(pod_ip(index, generation)), "{index} {generation}");
            }
        }
        assert_eq!(pod_ip(0, 0), Ipv4Addr::new(10, 1, 0, 0));
        assert_eq!(service_ip(0), Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(service_ip(19_999), Ipv4Addr::new(172, 16, 78, 32));
    }
}
