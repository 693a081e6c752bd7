//! The consistent-hash ring (Envoy's and Istio's `ringHash`, ketama style). Each endpoint places points on a
//! 64-bit ring at `hash(endpoint, i)`; a key goes to the first point at or after `hash(key)`, walking on past
//! the points of endpoints that may not take it now (ejected, not in the route's subset).
//!
//! An endpoint's points depend only on its own address and `minimumRingSize`, never on the other endpoints:
//! so when an endpoint leaves (or is ejected), only the keys it held move, and every proxy maps a key alike.
//! Envoy instead spreads a fixed total over the endpoints, which moves keys between the endpoints that stay
//! whenever the count changes. The price is memory: `minimumRingSize` points per endpoint, up to
//! [`MAX_RING_SIZE`] points in all (beyond that, each of `n` endpoints gets `MAX_RING_SIZE / n` and the ring is
//! still at least `minimumRingSize` large, since that is bounded by the same number).

use std::net::SocketAddr;

use strait_api::bounds::MAX_RING_SIZE;

#[derive(Debug, Default)]
pub struct Ring {
    /// (position, index into `endpoints`), sorted by position.
    points: Vec<(u64, u32)>,
    endpoints: Vec<SocketAddr>,
}

impl Ring {
    /// A ring of `endpoints` (order does not matter) with at least `minimum_size` points.
    pub fn new(endpoints: &[SocketAddr], minimum_size: u64) -> Ring {
        let mut endpoints = endpoints.to_vec();
        endpoints.sort_unstable();
        endpoints.dedup();
        if endpoints.is_empty() {
            return Ring::default();
        }
        let per_endpoint = minimum_size.clamp(1, MAX_RING_SIZE).min((MAX_RING_SIZE / endpoints.len() as u64).max(1));
        let mut points = Vec::with_capacity(endpoints.len() * per_endpoint as usize);
        for (index, endpoint) in endpoints.iter().enumerate() {
            let base = fnv1a(FNV_OFFSET, &endpoint_bytes(endpoint));
            for i in 0..per_endpoint {
                points.push((mix(fnv1a(base, &i.to_le_bytes())), index as u32));
            }
        }
        // Ties (vanishingly rare) break by endpoint address, the same on every proxy.
        points.sort_unstable();
        Ring { points, endpoints }
    }

    /// The endpoints the ring was built from, sorted.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.points.len()
    }

    /// The endpoint `key` maps to among `candidates`: the owner of the first point from the key's position
    /// on whose endpoint is a candidate. `None` when no candidate is on the ring.
    pub fn get(&self, key: &[u8], candidates: &[SocketAddr]) -> Option<SocketAddr> {
        let position = mix(fnv1a(FNV_OFFSET, key));
        let start = self.points.partition_point(|(p, _)| *p < position);
        let (before, from) = self.points.split_at(start);
        from.iter().chain(before).map(|(_, index)| self.endpoints[*index as usize]).find(|e| candidates.contains(e))
    }
}

fn endpoint_bytes(endpoint: &SocketAddr) -> Vec<u8> {
    let mut bytes = match endpoint.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.extend_from_slice(&endpoint.port().to_be_bytes());
    bytes
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: stable across processes and versions (unlike std's hasher), so every proxy maps a key alike.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// splitmix64's finaliser: FNV alone spreads short inputs poorly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080))).collect()
    }

    fn keys() -> Vec<String> {
        (0..4000).map(|i| format!("user-{i}")).collect()
    }

    #[test]
    fn keys_spread_evenly_and_stick() {
        let eps = addrs(4);
        let ring = Ring::new(&eps, 1024);
        let placed: Vec<Option<SocketAddr>> = keys().iter().map(|k| ring.get(k.as_bytes(), &eps)).collect();
        for e in &eps {
            let n = placed.iter().filter(|p| **p == Some(*e)).count();
            assert!((800..=1200).contains(&n), "{e} got {n} of 4000 keys");
        }
        // Built again, in another order (another proxy, another configuration version): the same mapping.
        let reversed: Vec<SocketAddr> = eps.iter().rev().copied().collect();
        let again = Ring::new(&reversed, 1024);
        assert!(keys().iter().zip(&placed).all(|(k, p)| again.get(k.as_bytes(), &eps) == *p));
    }

    /// Issue 15: stable as endpoints change: removing an endpoint (from the ring, or from the candidates while it
    /// is ejected) moves exactly the keys it held; adding one takes keys only from the others, never swaps them.
    #[test]
    fn only_the_removed_endpoints_keys_move() {
        let eps = addrs(5);
        let ring = Ring::new(&eps, 1024);
        let before: Vec<SocketAddr> =
            keys().iter().map(|k| ring.get(k.as_bytes(), &eps).expect("an endpoint")).collect();
        let removed = eps[2];
        let rest: Vec<SocketAddr> = eps.iter().filter(|e| **e != removed).copied().collect();
        let rebuilt = Ring::new(&rest, 1024);
        let mut moved = 0;
        for (key, old) in keys().iter().zip(&before) {
            let from_rebuilt = rebuilt.get(key.as_bytes(), &rest).expect("an endpoint");
            let while_ejected = ring.get(key.as_bytes(), &rest).expect("an endpoint");
            assert_eq!(from_rebuilt, while_ejected, "{key}: ejection and removal agree");
            if *old == removed {
                moved += 1;
                assert_ne!(from_rebuilt, removed);
            } else {
                assert_eq!(from_rebuilt, *old, "{key} moved although its endpoint stayed");
            }
        }
        assert!(moved > 600, "the removed endpoint held {moved} keys");
        // Adding it back restores the first mapping exactly.
        assert!(keys().iter().zip(&before).all(|(k, old)| ring.get(k.as_bytes(), &eps) == Some(*old)));
    }

    #[test]
    fn minimum_ring_size_is_enforced_and_bounded() {
        assert_eq!(Ring::new(&addrs(3), 1024).len(), 3 * 1024);
        assert_eq!(Ring::new(&addrs(1), 5000).len(), 5000);
        // Each endpoint's points never depend on the others', up to the bound on the whole ring.
        assert_eq!(Ring::new(&addrs(2), MAX_RING_SIZE).len() as u64, MAX_RING_SIZE);
        let many = Ring::new(&addrs(200), 4096);
        assert!(many.len() as u64 <= MAX_RING_SIZE && many.len() as u64 >= 4096, "{}", many.len());
        assert_eq!(Ring::new(&[], 1024).get(b"k", &addrs(1)), None);
        // A candidate the ring does not know is not chosen (the caller falls back).
        assert_eq!(Ring::new(&addrs(2), 16).get(b"k", &[SocketAddr::from(([10, 9, 9, 9], 1))]), None);
    }
}
