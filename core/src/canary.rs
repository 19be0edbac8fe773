//! The simulator's deliberate bugs (canaries), named here so that the state machines can carry
//! the ones implemented inside them. Only the simulator switches one on; see
//! `plexus_raft::sim_hooks` for how they reach a node.

use std::fmt;

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
    /// A post's fan-out skips the first shard other than the author's that it should reach, so
    /// followers there never get it in their home timelines.
    FanoutSkipsShard,
    /// An EMPI put that moves a stored record to another identity never sends the record's
    /// `MemberJoin`, so the new identity's members and change events miss it.
    EmpiSkipsMemberJoin,
}

/// How many times too long the `LeaseTooLong` canary makes the read lease.
pub const LEASE_TOO_LONG_FACTOR: u64 = 20;

impl Canary {
    /// Every canary, in a fixed order.
    pub const ALL: [Canary; 8] = [
        Canary::AckBeforeFsync,
        Canary::StaleRead,
        Canary::DoubleApply,
        Canary::HalfFollow,
        Canary::LeaseTooLong,
        Canary::LeaseIgnoresHandover,
        Canary::FanoutSkipsShard,
        Canary::EmpiSkipsMemberJoin,
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
            Canary::FanoutSkipsShard => "fanout-skips-shard",
            Canary::EmpiSkipsMemberJoin => "empi-skips-member-join",
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
