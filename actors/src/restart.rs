//! Restart policy for supervised actors: exponential backoff and a give-up
//! budget (ractor itself only reports failures; it never restarts).

use std::collections::VecDeque;
use std::time::Duration;

// tokio's clock, not `std::time::Instant`: under the simulator's paused runtime it is virtual
// time, so a restart decision depends only on the seed.
use tokio::time::Instant;

/// How a supervisor restarts a failed child.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// Delay before the first restart.
    pub backoff_initial: Duration,
    /// Largest delay between restarts.
    pub backoff_max: Duration,
    /// Restarts allowed within `window` before the supervisor gives up.
    pub restarts_max: usize,
    /// Sliding window for `restarts_max`.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            restarts_max: 8,
            window: Duration::from_secs(60),
        }
    }
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after this delay.
    After(Duration),
    /// Too many failures in the window: stop trying.
    GiveUp,
}

/// Failures seen recently, to apply a `RestartPolicy`.
#[derive(Debug)]
pub struct RestartBudget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// A fresh budget.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides what to do.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        while let Some(t) = self.recent.front() {
            if now.duration_since(*t) > self.policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.policy.restarts_max {
            return RestartDecision::GiveUp;
        }
        self.recent.push_back(now);
        let exp = (self.recent.len() as u32).saturating_sub(1).min(16);
        let delay = self
            .policy
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.policy.backoff_max);
        RestartDecision::After(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up_and_window_forgets() {
        let policy = RestartPolicy {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(35),
            restarts_max: 3,
            window: Duration::from_secs(10),
        };
        let mut b = RestartBudget::new(policy);
        let t0 = Instant::now();
        assert_eq!(b.on_failure(t0), RestartDecision::After(Duration::from_millis(10)));
        assert_eq!(b.on_failure(t0), RestartDecision::After(Duration::from_millis(20)));
        assert_eq!(b.on_failure(t0), RestartDecision::After(Duration::from_millis(35)));
        assert_eq!(b.on_failure(t0), RestartDecision::GiveUp);
        // After the window, old failures no longer count.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.on_failure(later), RestartDecision::After(Duration::from_millis(10)));
    }
}
