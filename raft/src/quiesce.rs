//! Quiescence: an idle group goes quiet, and one ping per peer stands in for the heartbeats of
//! all of a node's quiet groups.
//!
//! Without it every group's leader sends a heartbeat to each follower every `heartbeat_ms`, idle
//! or not, and each one wakes the leader's Raft core, a replication task, the peer link and the
//! follower's Raft core: an idle 3-node cluster with 64 shards exchanged about 1,100 datagrams a
//! second (about 100 with quiescence). With it, a group that has been idle for `quiesce_after` stops heartbeating, and its
//! followers stop counting down to an election, for as long as the leader's node keeps saying,
//! in its periodic [`QuietClaim`] ping, that it still leads the group with the same vote and the
//! same last entry.
//!
//! The protocol, per group:
//! - The leader claims the group quiet once, for `quiesce_after`, its vote, last log index, request
//!   activity and replica instance have not changed, everything is applied, every voter has
//!   matched its last entry, and no handover is under way. It sends the claim (vote and last log
//!   id) to each follower in its node's ping.
//! - A follower accepts a claim whose vote is its own current vote and that it has not accepted
//!   before by taking it as a heartbeat from the leader: an `AppendEntries` with no entries,
//!   `prev_log_id` and `leader_commit` both the claimed last entry, delivered to its replica
//!   locally. The claim is what a heartbeat would carry, so this is exactly a (possibly delayed)
//!   heartbeat; if it succeeds the follower's log holds the leader's last entry, it has learned
//!   that entry is committed, and it turns its election timer off. It answers with the groups it
//!   accepted.
//! - The leader turns the group's heartbeats off only once every follower accepted the current
//!   claim in its latest answer. Any change (a request, a new entry, a new vote, a restarted
//!   replica) ends the claim, and an unanswered ping or a refusal withdraws that follower's
//!   acceptance; either way the heartbeats come back at once.
//! - A follower releases a group (election timer on) when a ping from the leader no longer
//!   claims it, after first taking the last accepted claim as a heartbeat again so that it does
//!   not stand before the leader's next heartbeat can reach it; when its replica's vote or
//!   instance changed; or when no ping came from the leader's node for `ping_timeout` (the node
//!   is gone: the follower then stands at its next election tick).
//!
//! Safety does not rest on any of this: a synthesised heartbeat is one the leader could have
//! sent at the time of the ping, and a follower that does not stand for election only delays a
//! new leader. Liveness does: a quiet group whose leader's node keeps pinging while its replica
//! is wedged keeps no election going, as with any scheme that vouches for groups per node.
//!
//! This module is the sans-IO core: it takes views of the replicas, pings, answers and the time,
//! and returns what to do. `plexus_actors::quiesce` runs it against the real replicas and network.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

type NodeId = u64;

/// Claims one node sends another in one ping, at most; a node with more quiet groups in common
/// with a peer claims the lowest-numbered ones and keeps heartbeating the rest.
pub const QUIET_CLAIMS_PER_PING_MAX: usize = 4_096;

/// A leader's word that it leads `group` with `vote` and that `last` is its last entry, all of
/// it committed and applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietClaim {
    /// The group.
    pub group: u32,
    /// The leader's vote (committed, naming the leader).
    pub vote: Vote<NodeId>,
    /// The leader's last log entry.
    pub last: LogId<NodeId>,
}

/// What the leader side needs to know of one group replica this node hosts, each pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    /// The group.
    pub group: u32,
    /// Which start of the group's replica on this node this is (a restart is a new instance).
    pub instance: u64,
    /// Whether the replica leads its group now.
    pub is_leader: bool,
    /// The replica's vote.
    pub vote: Vote<NodeId>,
    /// Index of its last log entry.
    pub last_log_index: Option<u64>,
    /// Its last applied entry.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last entry each voter other than this node is known to hold (`None` for one not
    /// known to hold any); empty for a group with no other voter.
    pub followers_matched: BTreeMap<NodeId, Option<LogId<NodeId>>>,
    /// A counter that moves with every proposal and linearizable read the replica serves.
    pub activity: u64,
    /// A handover is under way (the group must keep its heartbeats).
    pub busy: bool,
}

/// What the follower side needs to know of one group replica this node hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerView {
    /// Which start of the replica this is.
    pub instance: u64,
    /// Whether the replica leads its group now.
    pub is_leader: bool,
    /// The replica's vote.
    pub vote: Vote<NodeId>,
}

/// Where the leader side stands with one group it leads.
#[derive(Clone, Debug)]
struct Track {
    instance: u64,
    vote: Vote<NodeId>,
    last_log_index: Option<u64>,
    activity: u64,
    /// Since when all of the above have been unchanged.
    since: Instant,
    /// The claim made last pass, if any.
    claim: Option<QuietClaim>,
    /// Followers whose latest answer accepted `claim`.
    accepted_by: BTreeSet<NodeId>,
}

/// One pass's decisions for the groups this node leads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderPlan {
    /// The pings to send, with their claims, per peer: every follower of a group this node
    /// leads, and every peer sent claims last pass, gets one (perhaps with no claims, which
    /// releases those it held).
    pub pings: BTreeMap<NodeId, Vec<QuietClaim>>,
    /// Groups whose heartbeats are off from now on (every other hosted group's are on).
    pub quiet: BTreeSet<u32>,
}

/// The leader side of quiescence on one node.
#[derive(Debug)]
pub struct QuietLeaders {
    me: NodeId,
    quiesce_after: Duration,
    tracks: BTreeMap<u32, Track>,
    /// Peers sent at least one claim in the last pass.
    claimed_to: BTreeSet<NodeId>,
}

impl QuietLeaders {
    /// The leader side of node `me`; groups go quiet after `quiesce_after` of idleness.
    pub fn new(me: NodeId, quiesce_after: Duration) -> Self {
        Self {
            me,
            quiesce_after,
            tracks: BTreeMap::new(),
            claimed_to: BTreeSet::new(),
        }
    }

    /// One pass at `now` over every hosted group's view (in any order; groups not in `views`
    /// are forgotten).
    pub fn pass(&mut self, now: Instant, views: &[LeaderView]) -> LeaderPlan {
        let hosted: BTreeSet<u32> = views.iter().map(|v| v.group).collect();
        self.tracks.retain(|g, _| hosted.contains(g));
        let mut plan = LeaderPlan::default();
        let mut sorted: Vec<&LeaderView> = views.iter().collect();
        sorted.sort_by_key(|v| v.group);
        for view in sorted {
            let track = self.tracks.entry(view.group).or_insert_with(|| Track::new(view, now));
            if !track.same_as(view) {
                *track = Track::new(view, now);
            }
            if view.is_leader {
                // Every follower of a group this node leads hears from it each pass, claims or
                // not, so that a claim dropped in a lost ping is dropped again in the next one.
                for follower in view.followers_matched.keys() {
                    plan.pings.entry(*follower).or_default();
                }
            }
            let claim = match claim_for(self.me, self.quiesce_after, view, track, now) {
                Some(claim) => claim,
                None => {
                    track.claim = None;
                    track.accepted_by.clear();
                    continue;
                }
            };
            if track.claim.as_ref() != Some(&claim) {
                track.claim = Some(claim.clone());
                track.accepted_by.clear();
            }
            if view.followers_matched.keys().all(|f| track.accepted_by.contains(f)) {
                plan.quiet.insert(view.group);
            }
            for follower in view.followers_matched.keys() {
                let claims = plan.pings.entry(*follower).or_default();
                if claims.len() < QUIET_CLAIMS_PER_PING_MAX {
                    claims.push(claim.clone());
                } else {
                    // Not claimed to this follower: the group keeps its heartbeats.
                    plan.quiet.remove(&view.group);
                }
            }
        }
        for peer in std::mem::take(&mut self.claimed_to) {
            plan.pings.entry(peer).or_default();
        }
        self.claimed_to = plan
            .pings
            .iter()
            .filter(|(_, claims)| !claims.is_empty())
            .map(|(peer, _)| *peer)
            .collect();
        plan
    }

    /// `peer`'s answer to the ping sent with `sent` claims: the groups it accepted, or `None`
    /// when it did not answer (then it counts as having accepted none).
    pub fn on_answer(&mut self, peer: NodeId, sent: &[QuietClaim], accepted: Option<&[u32]>) {
        let accepted: BTreeSet<u32> = accepted.unwrap_or_default().iter().copied().collect();
        for claim in sent {
            let Some(track) = self.tracks.get_mut(&claim.group) else {
                continue;
            };
            // An answer to an older claim says nothing about the current one.
            if track.claim.as_ref() != Some(claim) {
                continue;
            }
            match accepted.contains(&claim.group) {
                true => track.accepted_by.insert(peer),
                false => track.accepted_by.remove(&peer),
            };
        }
    }
}

/// The claim `view`'s group qualifies for at `now`, if any: led by `me` with a committed vote,
/// everything applied and held by every other voter, no handover, and `track` unchanged for
/// `quiesce_after`.
fn claim_for(
    me: NodeId,
    quiesce_after: Duration,
    view: &LeaderView,
    track: &Track,
    now: Instant,
) -> Option<QuietClaim> {
    let last = view.last_applied?;
    let qualifies = view.is_leader
        && !view.busy
        && view.vote.is_committed()
        && view.vote.leader_id().voted_for() == Some(me)
        && view.last_log_index == Some(last.index)
        && view.followers_matched.values().all(|m| *m == Some(last))
        && now.saturating_duration_since(track.since) >= quiesce_after;
    qualifies.then_some(QuietClaim {
        group: view.group,
        vote: view.vote,
        last,
    })
}

impl Track {
    fn new(view: &LeaderView, now: Instant) -> Self {
        Self {
            instance: view.instance,
            vote: view.vote,
            last_log_index: view.last_log_index,
            activity: view.activity,
            since: now,
            claim: None,
            accepted_by: BTreeSet::new(),
        }
    }

    fn same_as(&self, view: &LeaderView) -> bool {
        self.instance == view.instance
            && self.vote == view.vote
            && self.last_log_index == view.last_log_index
            && self.activity == view.activity
    }
}

/// A claim this node's replica of a group accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Accepted {
    leader: NodeId,
    claim: QuietClaim,
    instance: u64,
}

/// Work the follower side asks for, to be done in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowerAction {
    /// Take `claim` as a heartbeat from its leader (an empty `AppendEntries` delivered to the
    /// local replica of `claim.group`, instance `instance`), then report the outcome with
    /// [`QuietFollowers::on_heartbeat`]; the group is quiet here only if it succeeded.
    Accept {
        /// The leader that sent the claim.
        leader: NodeId,
        /// The claim.
        claim: QuietClaim,
        /// The replica instance it was checked against.
        instance: u64,
    },
    /// The group is no longer quiet here: if `refresh` is set, take it as a heartbeat first,
    /// then turn the replica's election timer back on.
    Release {
        /// The group.
        group: u32,
        /// The last claim accepted, to take as a heartbeat first (the leader's node is alive).
        refresh: Option<QuietClaim>,
    },
}

/// The follower side of quiescence on one node.
#[derive(Debug)]
pub struct QuietFollowers {
    ping_timeout: Duration,
    accepted: BTreeMap<u32, Accepted>,
    last_ping: BTreeMap<NodeId, Instant>,
}

impl QuietFollowers {
    /// The follower side; a leader's node silent for `ping_timeout` no longer vouches for its
    /// groups.
    pub fn new(ping_timeout: Duration) -> Self {
        Self {
            ping_timeout,
            accepted: BTreeMap::new(),
            last_ping: BTreeMap::new(),
        }
    }

    /// Whether `group` is quiet here (its replica's election timer must be off).
    pub fn is_quiet(&self, group: u32) -> bool {
        self.accepted.contains_key(&group)
    }

    /// How many groups are quiet here.
    pub fn quiet_count(&self) -> usize {
        self.accepted.len()
    }

    /// A ping from `from` at `now` with `claims` (at most [`QUIET_CLAIMS_PER_PING_MAX`] are
    /// read); `view` tells what this node hosts. Returns the groups accepted already (to answer
    /// with, after the `Accept` actions that succeed) and the actions to carry out.
    pub fn on_ping(
        &mut self,
        now: Instant,
        from: NodeId,
        claims: &[QuietClaim],
        view: impl Fn(u32) -> Option<FollowerView>,
    ) -> (Vec<u32>, Vec<FollowerAction>) {
        self.last_ping.insert(from, now);
        let claims = &claims[..claims.len().min(QUIET_CLAIMS_PER_PING_MAX)];
        let claimed: BTreeSet<u32> = claims.iter().map(|c| c.group).collect();
        let mut actions = Vec::new();
        // Claims this sender no longer makes.
        let dropped: Vec<u32> = self
            .accepted
            .iter()
            .filter(|(g, a)| a.leader == from && !claimed.contains(g))
            .map(|(g, _)| *g)
            .collect();
        for group in dropped {
            if let Some(a) = self.accepted.remove(&group) {
                actions.push(FollowerAction::Release {
                    group,
                    refresh: Some(a.claim),
                });
            }
        }
        let mut already = Vec::new();
        for claim in claims {
            let Some(v) = view(claim.group) else { continue };
            let fits = !v.is_leader
                && claim.vote.is_committed()
                && claim.vote.leader_id().voted_for() == Some(from)
                && v.vote == claim.vote;
            let held = self.accepted.get(&claim.group);
            if fits && held.is_some_and(|a| a.leader == from && a.claim == *claim && a.instance == v.instance) {
                already.push(claim.group);
                continue;
            }
            if let Some(a) = self.accepted.remove(&claim.group) {
                actions.push(FollowerAction::Release {
                    group: claim.group,
                    refresh: (a.leader == from).then_some(a.claim),
                });
            }
            if fits {
                actions.push(FollowerAction::Accept {
                    leader: from,
                    claim: claim.clone(),
                    instance: v.instance,
                });
            }
        }
        (already, actions)
    }

    /// The outcome of an `Accept`: whether the replica took the claim as a heartbeat.
    pub fn on_heartbeat(&mut self, leader: NodeId, claim: QuietClaim, instance: u64, ok: bool) {
        if ok {
            self.accepted.insert(
                claim.group,
                Accepted {
                    leader,
                    claim,
                    instance,
                },
            );
        }
    }

    /// A periodic pass at `now`: releases groups whose replica changed or whose leader's node
    /// has gone silent.
    pub fn pass(&mut self, now: Instant, view: impl Fn(u32) -> Option<FollowerView>) -> Vec<FollowerAction> {
        let mut actions = Vec::new();
        let groups: Vec<u32> = self.accepted.keys().copied().collect();
        for group in groups {
            let Some(a) = self.accepted.get(&group) else { continue };
            let silent = self
                .last_ping
                .get(&a.leader)
                .is_none_or(|t| now.saturating_duration_since(*t) >= self.ping_timeout);
            let changed = view(group).is_none_or(|v| v.is_leader || v.vote != a.claim.vote || v.instance != a.instance);
            if silent || changed {
                self.accepted.remove(&group);
                actions.push(FollowerAction::Release { group, refresh: None });
            }
        }
        actions
    }
}

#[cfg(test)]
#[path = "quiesce_tests.rs"]
mod tests;
