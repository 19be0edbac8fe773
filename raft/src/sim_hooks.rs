//! Simulation-only hooks into a replica: deliberate bugs (canaries) that show the simulator's
//! checkers can see what they are for, an observer of every applied log entry, and an observer
//! of every snapshot a replica's state machine builds, installs or loads.
//!
//! What it is: `SimHooks`, carried in `ReplicaOptions`. The deterministic simulator sets it
//! through `plexus_actors::NodeSeams`; each canary is implemented at the real code point it
//! breaks (`log_store` for `AckBeforeFsync`, `replica` and the gateway for `StaleRead`,
//! `state::session` for `DoubleApply`, `state::graph` for `HalfFollow`, `state::feed` for
//! `FanoutSkipsShard`, `replica` for
//! `LeaseTooLong`, `handover` for `LeaseIgnoresHandover`).
//!
//! What it is not: configuration. No config file, flag or environment variable reaches it; the
//! production node (`plexus_actors::start_node`) always passes `SimHooks::default()`, which
//! turns every hook off, and a hook that is off costs one branch on an `Option`.

use std::fmt;
use std::sync::Arc;

use openraft::{Entry, LogId};

use crate::types::TypeConfig;

pub use plexus_core::canary::{Canary, LEASE_TOO_LONG_FACTOR};

/// Called with `(group, entry)` for every log entry a replica's state machine applies, before
/// it is applied. It runs inside the apply loop, so it must be quick and must not block.
pub type ApplyObserver = Arc<dyn Fn(u32, &Entry<TypeConfig>) + Send + Sync>;

/// How a state machine came to hold a snapshot's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SnapshotEvent {
    /// It built the snapshot from the entries it applied.
    Built,
    /// It installed the snapshot, received from a leader, in place of its state.
    Installed,
    /// It loaded the snapshot from its own disk when the replica opened (a restart).
    Loaded,
}

/// Called with `(group, event, the snapshot's last log id, the hash of the state it holds)`
/// (`ShardState::state_hash`) for every snapshot a replica's state machine builds, installs or
/// loads. It must be quick and must not block.
pub type SnapshotObserver = Arc<dyn Fn(u32, SnapshotEvent, Option<LogId<u64>>, u64) + Send + Sync>;

/// The hooks of one node's replicas; the default switches everything off.
#[derive(Clone, Default)]
pub struct SimHooks {
    /// The deliberate bug to run with, if any.
    pub canary: Option<Canary>,
    /// Sees every applied entry, if set.
    pub on_apply: Option<ApplyObserver>,
    /// Sees every snapshot built, installed or loaded, if set.
    pub on_snapshot: Option<SnapshotObserver>,
}

impl SimHooks {
    /// Whether `canary` is switched on.
    pub fn has(&self, canary: Canary) -> bool {
        self.canary == Some(canary)
    }
}

impl fmt::Debug for SimHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHooks")
            .field("canary", &self.canary)
            .field("on_apply", &self.on_apply.is_some())
            .field("on_snapshot", &self.on_snapshot.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for c in Canary::ALL {
            assert_eq!(Canary::from_name(c.name()), Some(c));
        }
        assert_eq!(Canary::from_name("stale-read"), Some(Canary::StaleRead));
        assert_eq!(Canary::from_name("no-such-bug"), None);
        assert!(!SimHooks::default().has(Canary::DoubleApply));
    }
}
