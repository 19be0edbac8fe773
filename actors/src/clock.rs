//! The node's only source of wall-clock time.
//!
//! Timeline ids embed the proposing leader's clock; everything that reads
//! time goes through `Clock` so the simulator can drive it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time for stamping commands.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        // A clock before 1970 is a misconfigured host; 0 still yields increasing ids
        // because the state machine never lets an id go backwards.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}
