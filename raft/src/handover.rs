//! Leadership handover: a leader that is about to stop passes each group it leads to a
//! caught-up follower, so the group does not sit leaderless for an election timeout.
//!
//! openraft 0.9 has no transfer API, so a handover is the Raft thesis's (section 3.10): the
//! leader stops taking proposals ([`Replica::begin_handover`]), waits until some follower's log
//! matches its own, and tells that follower to stand now (`PeerRequest::TimeoutNow`, answered by
//! [`Replica::elect_now`]). The follower marks the election it starts as a transfer, and its vote
//! requests go out as `PeerRequest::TransferVote`, which voters grant without the leader-lease
//! check (our openraft patch, `Raft::vote_transfer`): a follower that heard from the leader a
//! moment ago would otherwise refuse, and so would the leader itself within its lease. Every
//! other voting rule holds (terms, one vote per term, the candidate's log at least as
//! up-to-date), so the candidate wins only with a quorum's votes, whatever the group's size. If
//! any step fails, the group elects a leader after the usual timeout, as after a crash.
//!
//! The same protocol moves single groups off a node that keeps serving, to balance leadership
//! (`plexus_actors::balance`): the replica refuses proposals only from the start of the handover
//! until [`Replica::end_handover`], the time a follower needs to catch up and win one vote.
//!
//! What it is not: a way around a quorum. A handover needs a quorum of voters that answer;
//! without one it fails and the group waits, as any election would.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use plexus_proto::NodeId;
use tokio::time::Instant;

use crate::replica::Replica;
use crate::sim_hooks::Canary;
use crate::wal::lock;

/// How often a handover re-reads the replication progress while a follower catches up.
const CATCH_UP_POLL_MS: u64 = 5;
/// How often a handover waiting for the new leader checks that its target is not stopping.
const LEADER_POLL_MS: u64 = 10;
/// Margin added to the leader's own lease before the balancer counts it as settled.
const LEASE_MARGIN_MS: u64 = 20;
/// Election timeouts (`election_timeout_max`) after a handover ends during which reads go
/// without the read lease: a transfer election started by the handover is over by then.
const LEASE_PAUSE_ELECTIONS: u64 = 2;

/// Why a handover did not complete.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandoverError {
    /// No follower's log caught up with the leader's before the deadline.
    #[error("group {0}: no follower caught up before the deadline")]
    NoCaughtUpFollower(u32),
    /// The leader has not heard from a quorum for longer than its lease, so no follower could
    /// be elected with its help (the other replicas are down or cut off).
    #[error("group {0}: no quorum has answered for {1} ms")]
    NoQuorum(u32, u64),
    /// No other node became leader before the deadline.
    #[error("group {0}: leadership did not move before the deadline")]
    NotMoved(u32),
    /// Every voter the group could go to is stopping (said so, or refused for that reason):
    /// none may be handed the group.
    #[error("group {0}: every voter it could go to is stopping")]
    PeersStopping(u32),
    /// No caught-up voter stood when asked; the reasons, one per voter asked.
    #[error("group {0}: {1}")]
    NoneStood(u32, String),
    /// The Raft instance has stopped.
    #[error("group {0}: raft stopped: {1}")]
    Stopped(u32, String),
}

impl Replica {
    /// Starts handing this replica's leadership over: refuses new proposals and waits (until
    /// `deadline`) for voters whose logs match the leader's. Returns them in id order (a
    /// caught-up voter may since have died: the caller tries them in turn), or `None` when there
    /// is nothing to hand over (not the leader, or the only voter); then the replica keeps taking
    /// proposals. Only voters for which `eligible` holds are returned (it is asked again on
    /// every poll, so a voter that becomes ineligible meanwhile is dropped); when no other voter
    /// is eligible the handover fails at once, before proposals are refused.
    pub async fn begin_handover(
        &self,
        deadline: Instant,
        eligible: &(dyn Fn(NodeId) -> bool + Send + Sync),
    ) -> Result<Option<Vec<NodeId>>, HandoverError> {
        let voters: Vec<NodeId> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader {
                return Ok(None);
            }
            m.membership_config.membership().voter_ids().collect()
        };
        if voters.len() < 2 {
            return Ok(None);
        }
        let any_eligible = || voters.iter().any(|v| *v != self.node_id && eligible(*v));
        if !any_eligible() {
            return Err(HandoverError::PeersStopping(self.group));
        }
        self.handing_over.store(true, Ordering::SeqCst);
        // A write that passed the gate in `Replica::propose` just before it closed may not have
        // reached the log yet. A successor picked before it lands would have a shorter log than
        // ours, and every voter holding that write would refuse it: the group would sit
        // leaderless until an election timeout. So wait for those writes (they return once
        // committed), then make one round trip through the Raft core, which handles its messages
        // in order: a write whose caller gave up waiting has then reached the log as well.
        // Reads that passed the gate may be served by the read lease, which the transfer election
        // below skips: they must be answered before any voter is asked to stand.
        while self.requests_in_flight.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return Err(HandoverError::NoCaughtUpFollower(self.group));
            }
            poll_pause(deadline).await;
        }
        self.raft
            .with_raft_state(|_| ())
            .await
            .map_err(|e| HandoverError::Stopped(self.group, e.to_string()))?;
        loop {
            let (caught_up, quorum_silent_ms) = self.caught_up_followers();
            let caught_up: Vec<NodeId> = caught_up.into_iter().filter(|v| eligible(*v)).collect();
            if !caught_up.is_empty() {
                return Ok(Some(caught_up));
            }
            if !any_eligible() {
                return Err(HandoverError::PeersStopping(self.group));
            }
            if quorum_silent_ms > self.raft.config().election_timeout_max {
                return Err(HandoverError::NoQuorum(self.group, quorum_silent_ms));
            }
            if Instant::now() >= deadline {
                return Err(HandoverError::NoCaughtUpFollower(self.group));
            }
            poll_pause(deadline).await;
        }
    }

    /// The other voters whose replicated logs reach this leader's last log entry, in id order,
    /// and how long ago a quorum last acknowledged this leader, in milliseconds.
    fn caught_up_followers(&self) -> (Vec<NodeId>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let last = m.last_log_index.max(self.log.last_index());
        // `None`: no quorum acknowledged this leader yet, which is how a leader elected a moment
        // ago looks; the handover's deadline bounds the wait for its first acknowledgements.
        let quorum_silent_ms = m.millis_since_quorum_ack.unwrap_or(0);
        let matched = |id: &NodeId| {
            let log_id = m.replication.as_ref().and_then(|r| r.get(id)).copied().flatten();
            log_id.map(|l| l.index)
        };
        let caught_up = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.node_id && matched(id) >= last)
            .collect();
        (caught_up, quorum_silent_ms)
    }

    /// Ends a handover, whether or not leadership moved: the replica takes proposals again
    /// whenever it leads (a replica that handed over and is elected again later must serve).
    /// Reads go without the read lease for `LEASE_PAUSE_ELECTIONS` election timeouts more: a
    /// voter asked to stand may still be winning its transfer election, whose votes skip the
    /// followers' lease, even when this end has given up waiting for it.
    pub fn end_handover(&self) {
        if self.handing_over.swap(false, Ordering::SeqCst) {
            let pause = Duration::from_millis(self.raft.config().election_timeout_max * LEASE_PAUSE_ELECTIONS);
            *lock(&self.lease_paused_until) = Some(Instant::now() + pause);
        }
    }

    /// Whether a linearizable read may rely on the read lease now: no handover under way and
    /// none ended too recently (`end_handover`).
    pub(crate) fn lease_usable(&self) -> bool {
        // The `LeaseIgnoresHandover` canary bug (simulation only) skips both checks.
        if self.canary() == Some(Canary::LeaseIgnoresHandover) {
            return true;
        }
        if self.handing_over.load(Ordering::SeqCst) {
            return false;
        }
        lock(&self.lease_paused_until).is_none_or(|until| Instant::now() >= until)
    }

    /// Whether this replica leads its group and has led it for a whole lease period since its
    /// election. A handover does not need that (transfer votes ignore the lease); the leader
    /// balancer asks it so that it moves only settled leaders and never chases an election.
    pub async fn lease_over(&self) -> bool {
        if !self.is_leader() {
            return false;
        }
        match self.own_lease_end().await {
            Ok(end) => end.is_none_or(|end| end <= Instant::now()),
            Err(_) => false,
        }
    }

    /// When the lease this replica holds since its own election ends, margin included; `None`
    /// when no election happened in this process (restored from disk as leader). openraft's
    /// leader lease is its `election_timeout_max`: followers that heard from the leader this
    /// recently refuse to vote, and so does the leader itself after its election.
    async fn own_lease_end(&self) -> Result<Option<Instant>, HandoverError> {
        let lease = Duration::from_millis(self.raft.config().election_timeout_max + LEASE_MARGIN_MS);
        let elected_at = self
            .raft
            .with_raft_state(|st| st.vote_last_modified())
            .await
            .map_err(|e| HandoverError::Stopped(self.group, e.to_string()))?;
        Ok(elected_at.map(|at| at + lease))
    }

    /// Waits until `deadline` for another node to lead the group; returns it. Gives up early,
    /// with [`HandoverError::PeersStopping`], once `target_stopping` says the node asked to stand
    /// has begun to stop (checked every `LEADER_POLL_MS`).
    pub async fn await_new_leader(
        &self,
        deadline: Instant,
        target_stopping: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<NodeId, HandoverError> {
        let me = self.node_id;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let step = left.min(Duration::from_millis(LEADER_POLL_MS));
            let moved = self
                .raft
                .wait(Some(step))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != me),
                    "leadership moved to another node",
                )
                .await;
            match moved {
                Ok(m) => return m.current_leader.ok_or(HandoverError::NotMoved(self.group)),
                Err(openraft::metrics::WaitError::Timeout(..)) if left > step => {
                    if target_stopping() {
                        return Err(HandoverError::PeersStopping(self.group));
                    }
                }
                Err(openraft::metrics::WaitError::Timeout(..)) => return Err(HandoverError::NotMoved(self.group)),
                Err(e) => return Err(HandoverError::Stopped(self.group, e.to_string())),
            }
        }
    }

    /// Answers `TimeoutNow`: stands for election at once, as a transfer. openraft's election
    /// takes the next term after the vote it holds; that term is marked, so that this election's
    /// vote requests, and no later election's, are sent as `TransferVote`. If another election
    /// moves the vote first, the mark matches no request and this one is an ordinary election.
    pub(crate) async fn elect_now(&self) -> Result<(), String> {
        tracing::info!(group = self.group, "standing for election at the leader's request");
        let term = self
            .raft
            .with_raft_state(|st| st.vote_ref().leader_id().term)
            .await
            .map_err(|e| e.to_string())?;
        self.transfer_term.store(term + 1, Ordering::Release);
        self.raft.trigger().elect().await.map_err(|e| e.to_string())
    }
}

/// Sleeps one `CATCH_UP_POLL_MS`, never past `deadline`.
async fn poll_pause(deadline: Instant) {
    let next = Instant::now() + Duration::from_millis(CATCH_UP_POLL_MS);
    tokio::time::sleep_until(next.min(deadline)).await;
}
