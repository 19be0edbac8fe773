//! Peers whose last call got no answer, so that requests try the others first.
//!
//! A node that is down or cut off does not refuse a request: it says nothing, and the caller
//! waits out its whole timeout. A read or proposal that has other replicas to try must not pay
//! that on every request while the peer stays silent (the simulator caught home-feed pages that
//! waited two seconds per window on a replica whose disk had failed, and so never finished).
//! A peer whose call failed at the transport level (no answer in time, unreachable), or that
//! had not answered a hedged read when another replica did, is put last in the order peers are
//! tried, until `SILENT_FOR_MS` after that or until it answers.
//! It is still tried last, so a peer that comes back is found again.
//!
//! What it is not: a failure detector for Raft, placement or anything that must be right. It
//! only orders tries; every peer stays eligible.

use std::time::Duration;

use plexus_proto::NodeId;
use tokio::time::Instant;

use crate::deadlines::PeerDeadlines;

/// How long a peer that did not answer is tried after the others, in milliseconds.
pub const SILENT_FOR_MS: u64 = 10_000;

/// Peers that failed to answer, each with the end of its demotion.
#[derive(Debug, Default)]
pub struct SilentPeers {
    until: PeerDeadlines,
}

impl SilentPeers {
    /// Notes that a call to `peer` got no answer at `now`. Expired entries are dropped here, so
    /// the table holds at most the peers that failed within `SILENT_FOR_MS`.
    pub fn failed(&self, peer: NodeId, now: Instant) {
        self.until.hold(peer, now + Duration::from_millis(SILENT_FOR_MS), now);
    }

    /// Notes that `peer` answered.
    pub fn answered(&self, peer: NodeId) {
        self.until.release(peer);
    }

    /// `peers` with those silent at `now` moved to the end, each part in its given order.
    pub fn order(&self, peers: Vec<NodeId>, now: Instant) -> Vec<NodeId> {
        let (quiet, answering): (Vec<NodeId>, Vec<NodeId>) = peers.into_iter().partition(|p| self.until.holds(*p, now));
        answering.into_iter().chain(quiet).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_peers_go_last_until_they_answer_or_their_time_runs_out() {
        let peers = SilentPeers::default();
        let t0 = Instant::now();
        assert_eq!(peers.order(vec![3, 1, 2], t0), vec![3, 1, 2]);
        peers.failed(3, t0);
        peers.failed(1, t0);
        assert_eq!(peers.order(vec![3, 1, 2], t0), vec![2, 3, 1], "stable within each part");
        peers.answered(1);
        assert_eq!(peers.order(vec![3, 1, 2], t0), vec![1, 2, 3]);
        let later = t0 + Duration::from_millis(SILENT_FOR_MS + 1);
        assert_eq!(peers.order(vec![3, 1, 2], later), vec![3, 1, 2], "the demotion ran out");
        peers.failed(2, later);
        assert_eq!(peers.until.len(), 1, "expired entries are dropped");
    }
}
