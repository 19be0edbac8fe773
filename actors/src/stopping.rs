//! Which peers have announced a graceful stop, and until when.
//!
//! A stopping node tells its peers (`PeerRequest::Stopping`) before it hands its groups over.
//! A node that knows a peer is stopping does not hand it a group: in a whole-cluster stop every
//! node gets its signal within a millisecond or so, and a group handed to a node that is about
//! to stop must be handed on again, which finds every other voter stopping and so waits out
//! timeouts. Knowing it, a handover whose other voters are all stopping ends at once.
//!
//! What it is not: a failure detector. A notice is believed for a bounded time only, since a
//! node that restarts must become a handover target again, and nothing else (reads, writes,
//! replication) looks at it.

use std::time::Duration;

use plexus_proto::NodeId;
use tokio::time::Instant;

use crate::deadlines::PeerDeadlines;

/// Longest a peer's stop notice is believed, in milliseconds. The notice is peer input; a
/// larger value is cut to this.
pub const STOP_NOTICE_MS_MAX: u64 = 60_000;

/// The peers that said they are stopping, each with the end of its notice.
#[derive(Debug, Default)]
pub struct StoppingPeers {
    until: PeerDeadlines,
}

impl StoppingPeers {
    /// Notes that `peer` is stopping for the next `for_ms` (at most [`STOP_NOTICE_MS_MAX`]).
    /// Expired notices are dropped here, so the table never holds more than the peers whose
    /// notices are live; the caller passes only cluster members.
    pub fn note(&self, peer: NodeId, for_ms: u64, now: Instant) {
        let until = now + Duration::from_millis(for_ms.min(STOP_NOTICE_MS_MAX));
        self.until.hold(peer, until, now);
    }

    /// Whether `peer` said it is stopping and its notice has not run out at `now`.
    pub fn is_stopping(&self, peer: NodeId, now: Instant) -> bool {
        self.until.holds(peer, now)
    }

    /// Peers with a live notice (for tests and status).
    pub fn live(&self, now: Instant) -> Vec<NodeId> {
        self.until.live(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_holds_for_its_time_and_then_runs_out() {
        let peers = StoppingPeers::default();
        let t0 = Instant::now();
        peers.note(2, 1_000, t0);
        assert!(peers.is_stopping(2, t0));
        assert!(peers.is_stopping(2, t0 + Duration::from_millis(999)));
        assert!(!peers.is_stopping(2, t0 + Duration::from_millis(1_000)));
        assert!(!peers.is_stopping(3, t0), "a peer that sent nothing is not stopping");
    }

    #[test]
    fn a_notice_is_cut_to_the_maximum() {
        let peers = StoppingPeers::default();
        let t0 = Instant::now();
        peers.note(2, u64::MAX, t0);
        assert!(peers.is_stopping(2, t0 + Duration::from_millis(STOP_NOTICE_MS_MAX - 1)));
        assert!(!peers.is_stopping(2, t0 + Duration::from_millis(STOP_NOTICE_MS_MAX)));
    }

    #[test]
    fn a_shorter_second_notice_does_not_shorten_the_first_and_expired_ones_are_dropped() {
        let peers = StoppingPeers::default();
        let t0 = Instant::now();
        peers.note(2, 5_000, t0);
        peers.note(2, 10, t0);
        assert!(peers.is_stopping(2, t0 + Duration::from_millis(4_000)));
        peers.note(3, 100, t0);
        assert_eq!(peers.live(t0), vec![2, 3]);
        // Noting anything after 3's notice ran out drops it from the table.
        peers.note(4, 100, t0 + Duration::from_millis(200));
        assert_eq!(peers.until.len(), 2);
        assert_eq!(peers.live(t0 + Duration::from_millis(200)), vec![2, 4]);
    }
}
