//! Retry delays: exponential backoff with jitter.
//!
//! A pure function of the failure count and a random draw, so it is tested
//! without clocks. The draw comes from the client's one seedable RNG, so a
//! client built with a seed waits the same delays every run. It does not
//! decide *whether* to retry; `client.rs` does.

use std::time::Duration;

use rand::Rng;

/// The delay before the retry that follows failure number `failures` (1-based).
///
/// The ceiling doubles per failure from `base` up to `max`; the delay is drawn
/// in `[ceiling/2, ceiling]` ("equal jitter") from `unit` in `[0, 1)`, so
/// clients that failed together spread out while still backing off.
pub(crate) fn backoff_delay(base: Duration, max: Duration, failures: u32, unit: f64) -> Duration {
    let shift = failures.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << shift).min(max);
    let half = ceiling / 2;
    // NaN would make `mul_f64` panic; treat any non-finite draw as zero.
    let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
    half + half.mul_f64(unit)
}

/// A delay for `failures` drawn from `rng`.
pub(crate) fn jittered(base: Duration, max: Duration, failures: u32, rng: &mut impl Rng) -> Duration {
    backoff_delay(base, max, failures, rng.gen::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_then_caps() {
        let d = |n, u| backoff_delay(10 * MS, 100 * MS, n, u);
        assert_eq!(d(1, 0.0), 5 * MS);
        assert_eq!(d(1, 1.0), 10 * MS);
        assert_eq!(d(2, 1.0), 20 * MS);
        assert_eq!(d(3, 0.5), 30 * MS);
        assert_eq!(d(4, 1.0), 80 * MS);
        assert_eq!(d(5, 1.0), 100 * MS);
        assert_eq!(d(5, 0.0), 50 * MS);
        assert_eq!(d(u32::MAX, 1.0), 100 * MS);
    }

    #[test]
    fn zero_failures_and_odd_draws_stay_in_range() {
        assert_eq!(backoff_delay(8 * MS, 100 * MS, 0, 1.0), 8 * MS);
        assert_eq!(backoff_delay(8 * MS, 100 * MS, 1, 7.0), 8 * MS);
        assert_eq!(backoff_delay(8 * MS, 100 * MS, 1, -1.0), 4 * MS);
        assert_eq!(backoff_delay(8 * MS, 100 * MS, 1, f64::NAN), 4 * MS);
    }
}
