//! Whether calls to each peer are getting through, reported once per peer instead of once per
//! failed call: while a node is down, every group on every other node retries its messages to
//! it, and one log line per failure would bury everything else.
//!
//! The first failure after a success is logged at warn, a summary every
//! `PEER_FAILING_REPORT_MS` while failures go on, and the first success after them at info.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::peer_conn::lock;

/// Least time between two "still failing" reports for one peer, in milliseconds.
pub const PEER_FAILING_REPORT_MS: u64 = 10_000;

/// One peer's run of failed calls.
struct Failing {
    since: Instant,
    calls: u64,
    last_report: Instant,
}

/// Failing peers of one node; a peer that is absent is healthy.
#[derive(Default)]
pub(crate) struct PeerHealth {
    failing: Mutex<HashMap<u64, Failing>>,
}

impl PeerHealth {
    /// `calls` calls to `peer` failed with `error`; `stopping` when the peer closed the
    /// connection because it is shutting down (then the first report is at info: expected).
    pub(crate) fn failed(&self, peer: u64, calls: u64, error: &dyn std::fmt::Display, stopping: bool) {
        let now = Instant::now();
        let mut failing = lock(&self.failing);
        match failing.get_mut(&peer) {
            None => {
                if stopping {
                    info!(peer, %error, "peer is shutting down; calls to it fail until it is back");
                } else {
                    warn!(peer, %error, "calls to peer failing; reported again every {PEER_FAILING_REPORT_MS} ms while they do");
                }
                failing.insert(
                    peer,
                    Failing {
                        since: now,
                        calls,
                        last_report: now,
                    },
                );
            }
            Some(f) => {
                f.calls += calls;
                if now - f.last_report >= Duration::from_millis(PEER_FAILING_REPORT_MS) {
                    f.last_report = now;
                    let for_ms = (now - f.since).as_millis() as u64;
                    warn!(peer, failed_calls = f.calls, for_ms, %error, "calls to peer still failing");
                }
            }
        }
    }

    /// A call to `peer` succeeded.
    pub(crate) fn succeeded(&self, peer: u64) {
        let mut failing = lock(&self.failing);
        if failing.is_empty() {
            return;
        }
        if let Some(f) = failing.remove(&peer) {
            let for_ms = (Instant::now() - f.since).as_millis() as u64;
            info!(peer, failed_calls = f.calls, for_ms, "calls to peer succeed again");
        }
    }

    /// Whether calls to `peer` are failing now.
    #[cfg(test)]
    fn is_failing(&self, peer: u64) -> bool {
        lock(&self.failing).contains_key(&peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_counted_until_a_call_succeeds() {
        let health = PeerHealth::default();
        assert!(!health.is_failing(2));
        health.failed(2, 3, &"unreachable", false);
        health.failed(2, 4, &"unreachable", false);
        assert_eq!(lock(&health.failing)[&2].calls, 7);
        assert!(health.is_failing(2));
        assert!(!health.is_failing(3), "another peer is not affected");
        health.succeeded(2);
        assert!(!health.is_failing(2));
        health.failed(2, 1, &"unreachable", true);
        assert_eq!(
            lock(&health.failing)[&2].calls,
            1,
            "a new run starts from its own failures"
        );
    }
}
