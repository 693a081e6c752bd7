//! Where a forwarding rule sends requests: weighted destinations (a service, a subset, a port).

use rand::Rng;
use strait_api::{self as api};

use super::*;

/// A relative weight; destinations share traffic in proportion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weight(pub u32);

/// Where a forwarded request goes: a service (and optionally a subset and port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDestination {
    /// The host as written.
    pub host: String,
    /// The host resolved against the route's namespace; `None` if it names no service of this cluster.
    pub service: Option<ServiceRef>,
    pub subset: Option<String>,
    pub port: Option<u16>,
    pub weight: Weight,
}

/// The weighted destinations of a forwarding rule; never empty, total weight never zero.
#[derive(Debug)]
pub struct Split {
    destinations: Vec<RouteDestination>,
    total: u64,
}

impl Split {
    pub(super) fn compile(route: &[api::RouteDestination], namespace: &str) -> Result<Split, String> {
        // No weights at all: equal shares. Some weights: an unweighted destination gets none (as Istio).
        let all_unweighted = route.iter().all(|d| d.weight.is_none());
        let destinations: Vec<RouteDestination> = route
            .iter()
            .map(|d| RouteDestination {
                host: d.destination.host.clone(),
                service: ServiceRef::parse(&d.destination.host, namespace),
                subset: d.destination.subset.clone(),
                port: d.destination.port,
                weight: Weight(if all_unweighted { 1 } else { d.weight.unwrap_or(0) }),
            })
            .collect();
        let total = destinations.iter().map(|d| u64::from(d.weight.0)).sum();
        if total == 0 {
            return Err("route: all weights are zero".into());
        }
        Ok(Split { destinations, total })
    }

    pub fn destinations(&self) -> &[RouteDestination] {
        &self.destinations
    }

    pub fn pick(&self, rng: &mut impl Rng) -> &RouteDestination {
        let mut draw = rng.random_range(0..self.total);
        for destination in &self.destinations {
            let weight = u64::from(destination.weight.0);
            if draw < weight {
                return destination;
            }
            draw -= weight;
        }
        // Unreachable while total is the sum of the weights; the last one is a safe answer regardless.
        &self.destinations[self.destinations.len() - 1]
    }
}
