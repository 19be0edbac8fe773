//! Simulation-only hooks into a replica: deliberate bugs (canaries) that show the simulator's
//! checkers can see what they are for, an observer of every applied log entry, and an observer
//! of every snapshot a replica's state machine builds, installs or loads.
//!
//! What it is: `SimHooks`, carried in `ReplicaOptions`. The deterministic simulator sets it
//! through `plexus_actors::NodeSeams`; each canary is implemented at the real code point it
//! breaks (`log_store` for `AckBeforeFsync`, `replica` and the gateway for `StaleRead`,
//! `state::session` for `DoubleApply`, `state::graph` for `HalfFollow`, `replica` for
//! `LeaseTooLong`, `handover` for `LeaseIgnoresHandover`).
//!
//! What it is not: configuration. No config file, flag or environment variable reaches it; the
//! production node (`plexus_actors::start_node`) always passes `SimHooks::default()`, which
//! turns every hook off, and a hook that is off costs one branch on an `Option`.

use std::fmt;
use std::sync::Arc;

use openraft::{Entry, LogId};

use crate::types::TypeConfig;

/// A deliberate bug the simulator can switch on in its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Canary {
    /// The log store reports appended entries durable before the WAL has fsynced them, so a
    /// crash can lose entries Raft already counted towards a commit.
    AckBeforeFsync,
    /// A linearizable read is served from whatever replica receives it, without a read index
    /// and without the gateway's leadership check.
    StaleRead,
    /// The session table ignores the cached answer of a retried write and applies it again.
    DoubleApply,
    /// A cross-shard follow adds the out-edge but never queues the in-edge for delivery.
    HalfFollow,
    /// The leader's read lease is [`LEASE_TOO_LONG_FACTOR`] times `read_lease_ms`, far past
    /// the election timeout: a leader cut off from its peers goes on answering linearizable
    /// reads from its own state after another replica has been elected and has taken writes.
    LeaseTooLong,
    /// A leader keeps using its read lease while it hands its group over and right after: the
    /// transfer election skips the followers' lease, so the successor can be elected and take
    /// writes while the old leader's lease still runs.
    LeaseIgnoresHandover,
}

/// How many times too long the `LeaseTooLong` canary makes the read lease.
pub const LEASE_TOO_LONG_FACTOR: u64 = 20;

impl Canary {
    /// Every canary, in a fixed order.
    pub const ALL: [Canary; 6] = [
        Canary::AckBeforeFsync,
        Canary::StaleRead,
        Canary::DoubleApply,
        Canary::HalfFollow,
        Canary::LeaseTooLong,
        Canary::LeaseIgnoresHandover,
    ];

    /// The name used on the command line (`plexus sim --canary NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Canary::AckBeforeFsync => "ack-before-fsync",
            Canary::StaleRead => "stale-read",
            Canary::DoubleApply => "double-apply",
            Canary::HalfFollow => "half-follow",
            Canary::LeaseTooLong => "lease-too-long",
            Canary::LeaseIgnoresHandover => "lease-ignores-handover",
        }
    }

    /// The canary called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Canary> {
        Canary::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Canary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
