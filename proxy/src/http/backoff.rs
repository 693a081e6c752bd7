//! Delay between retries: exponential growth with "full jitter" (a uniform draw between zero and the
//! exponential ceiling). Full jitter spreads the retries of many clients that failed at the same moment, so a
//! briefly overloaded service is not hit again by a synchronised wave.

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    /// Envoy's defaults: 25 ms base, ten times that as the ceiling.
    fn default() -> Self {
        Backoff { base: Duration::from_millis(25), max: Duration::from_millis(250) }
    }
}

impl Backoff {
    /// A `max` below `base` is raised to `base`, so the ceiling never shrinks as attempts grow.
    #[cfg(test)]
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max: max.max(base) }
    }

    #[cfg(test)]
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The ceiling before jitter for the `retry`-th retry (0 = the first): `base * 2^retry`, capped at `max`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        // Past 2^16 the product overflows any sane max anyway; the shift stays in range.
        let factor = 1u32 << retry.min(16);
        self.base.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }

    /// How long to wait before the `retry`-th retry (0 = the first): uniform in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(retry).as_nanos() as u64;
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::default();
        let ms = |n| b.ceiling(n).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3), ms(4), ms(40)], [25, 50, 100, 200, 250, 250]);
    }

    #[test]
    fn delays_stay_within_bounds_and_are_jittered() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let mut rng = StdRng::seed_from_u64(7);
        for retry in 0..8 {
            let draws: Vec<Duration> = (0..1000).map(|_| b.delay(retry, &mut rng)).collect();
            let ceiling = b.ceiling(retry);
            assert!(draws.iter().all(|d| *d <= ceiling), "retry {retry} above {ceiling:?}");
            let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
            // Full jitter: the mean of a uniform draw on [0, c] is c/2.
            let (low, high) = (ceiling.mul_f64(0.4), ceiling.mul_f64(0.6));
            assert!(mean > low && mean < high, "retry {retry}: mean {mean:?} not near {:?}", ceiling / 2);
        }
    }

    #[test]
    fn max_below_base_is_raised() {
        let b = Backoff::new(Duration::from_millis(50), Duration::from_millis(5));
        assert_eq!(b.max(), Duration::from_millis(50));
        assert_eq!(b.ceiling(3), Duration::from_millis(50));
    }
}
