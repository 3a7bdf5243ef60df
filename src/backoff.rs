//! Capped exponential backoff with jitter, for dialing again: a peer that
//! is not up yet, a broker that went away. One rule for every redial, so
//! the mesh and the broker link back off alike.
//!
//! *Invariant:* no I/O and no clock; the caller supplies the random number,
//! so the rule is tested with fixed draws.

use std::time::Duration;

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Jittered {
    /// The delay after the first failure (before jitter).
    pub base: Duration,
    /// The longest delay (before jitter).
    pub cap: Duration,
}

impl Jittered {
    /// The wait before the next attempt after `failures` failures in a row
    /// (at least 1): `base × 2^(failures−1)`, at most `cap`, then a point in
    /// its upper half chosen by `random`. The jitter spreads the attempts of
    /// peers that started, or lost the same thing, at the same moment.
    pub fn delay(&self, failures: u32, random: u64) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let full = self.base.saturating_mul(1 << doublings).min(self.cap);
        let half = full / 2;
        let nanos = half.as_nanos() as u64;
        let extra = if nanos == 0 { 0 } else { random % (nanos + 1) };
        half + Duration::from_nanos(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_its_cap_and_stays_in_the_upper_half() {
        let b = Jittered {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        };
        for failures in 1..40 {
            let full = (Duration::from_millis(100) * (1 << (failures - 1).min(20)))
                .min(Duration::from_secs(5));
            for random in [0, 1, u64::MAX / 3, u64::MAX] {
                let d = b.delay(failures, random);
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?} of {full:?}");
            }
        }
        assert_eq!(b.delay(1, 0), Duration::from_millis(50));
    }
}
